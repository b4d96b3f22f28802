"""`adba agent run --once` as a cold process on an ADBA hit, against a minimal ldap3 script.

Both bind as the computer, search the container for the edition's activation group, and
unbind, over plain ldap:// on 127.0.0.1 (same transport for both). The agent's state is warm
(the forest and the verified object are cached, as on every boot after the first), so it
also parses its config, checks the object against the cache and writes its state atomically.
Then the same with 100,000 computer entries and 20,000 other activation objects loaded.

Prints median wall times, the ratio (goal <= 1.15x), the LDAP messages the agent sent
(goal 3), and the ratio of the big directory to the empty one (goal <= 1.1x).

    .venv/bin/python bench/agent_boot.py [runs]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import BASELINE_LOOKUP, messages_per_connection, prepared_slapd, side_by_side

from adba.authority import LocalAuthority
from adba.catalog import load_catalog
from adba.directory.objects import publish_csvlk
from adba.keys import KeyType


def _bulk_ldif(path: Path, lab, computers: int, objects: int) -> None:  # type: ignore[no-untyped-def]
    import base64

    with path.open("w") as fh:
        for i in range(computers):
            fh.write(f"dn: cn=PC{i:06d},{lab.computers}\nobjectClass: device\ncn: PC{i:06d}\n\n")
        for i in range(objects):
            kms = base64.b64encode(uuid.uuid4().bytes_le).decode()
            sku = base64.b64encode(uuid.uuid4().bytes_le).decode()
            fh.write(
                f"dn: cn=bulk-{i:05d},{lab.container}\nobjectClass: msSPP-ActivationObject\n"
                f"cn: bulk-{i:05d}\nmsSPP-KMSIds:: {kms}\nmsSPP-CSVLKSkuId:: {sku}\n"
                f"msSPP-CSVLKPartialProductKey: BBBBB\nmsSPP-CSVLKPid: bulk-{i}\n\n"
            )


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    work = Path(tempfile.mkdtemp(prefix="adba-bench-"))
    lab = prepared_slapd(debug_level=256)
    try:
        cat = load_catalog()
        now = int(time.time())  # the publish and the agent read the real clock
        auth = LocalAuthority.init(work / "authority", now=now)
        key = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", cat, now=now)
        publish_csvlk(
            lab.options(lab.admin),
            root=lab.suffix,
            key=key.text,
            activator=auth,
            catalog=cat,
            name="bench",
        )
        edition = cat.edition("Nimbus Server Standard")
        config = work / "agent.toml"
        config.write_text(
            f'dc_uris = ["{lab.uri}"]\nbase = "{lab.suffix}"\ninsecure = true\n'
            f'root_key = "{work / "authority" / "root.pub"}"\n'
            f'state_path = "{work / "state.json"}"\n'
            f'[machine]\ndn = "{lab.computer.dn}"\npassword_file = "{lab.computer.password_file}"\n'
            f'[[products]]\nedition = "{edition.name}"\n'
        )
        adba = [
            str(Path(sys.executable).with_name("adba")),
            "agent",
            "run",
            "--once",
            "--config",
            str(config),
        ]
        base = [
            sys.executable,
            "-c",
            BASELINE_LOOKUP,
            lab.uri,
            lab.computer.dn,
            lab.computer.password,
            lab.container,
            str(edition.group),
        ]
        env_clean = {k: v for k, v in os.environ.items() if not k.startswith("ADBA_")}
        os.environ.clear()
        os.environ.update(env_clean)
        import subprocess

        subprocess.run(adba, check=True, stdout=subprocess.DEVNULL)  # first boot: cold state
        mark = lab.log_file.stat().st_size
        subprocess.run(adba, check=True, stdout=subprocess.DEVNULL)  # a warm boot
        msgs = messages_per_connection(lab.log_file.read_bytes()[mark:].decode(errors="replace"))
        print(f"agent warm boot, LDAP messages client->server: {[dict(m) for m in msgs]}")

        small = side_by_side({"agent": adba, "ldap3": base}, runs)
        print(
            f"empty directory, median of {runs}: agent {small['agent'] * 1000:.1f} ms, "
            f"minimal ldap3 {small['ldap3'] * 1000:.1f} ms, "
            f"ratio {small['agent'] / small['ldap3']:.3f} (goal <= 1.15)"
        )

        ldif = work / "bulk.ldif"
        _bulk_ldif(ldif, lab, 100_000, 20_000)
        lab.stop()
        lab.slapadd(ldif)
        lab.restart()
        big = side_by_side({"agent": adba, "ldap3": base}, runs)
        print(
            f"100,000 computers + 20,000 objects, median of {runs}: "
            f"agent {big['agent'] * 1000:.1f} ms, minimal ldap3 {big['ldap3'] * 1000:.1f} ms, "
            f"ratio {big['agent'] / big['ldap3']:.3f}; "
            f"agent big/empty {big['agent'] / small['agent']:.3f} (goal <= 1.1)"
        )
    finally:
        lab.destroy()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
