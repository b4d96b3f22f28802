"""The agent's lookup as a cold process: adba's library vs a minimal ldap3 script.

Both bind as the computer, search the container for one KMS ID, and unbind, over plain
ldap:// on 127.0.0.1 (the transport is the same for both; TLS cost is not what is compared).
Prints median wall times, the ratio (goal <= 1.15x) and the LDAP messages each sent, counted
from slapd's stats log (goal: 3 -- bind, search, unbind).

    .venv/bin/python bench/ao_lookup.py [runs]
"""

from __future__ import annotations

import sys
import uuid

from _common import BASELINE_LOOKUP, messages_per_connection, prepared_slapd, side_by_side

from adba.catalog import load_catalog
from adba.directory import store
from adba.directory.connection import session

ADBA = """
import sys, uuid
from adba.directory.connection import ConnectionOptions, session
from adba.directory.store import search_objects
uri, dn, pw, base, kms = sys.argv[1:6]
opts = ConnectionOptions(uri=uri, bind_dn=dn, password=pw, insecure=True)
with session(opts) as conn:
    found = search_objects(conn, base, uuid.UUID(kms))
assert len(found) == 1, found
"""


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    lab = prepared_slapd(debug_level=256)
    try:
        edition = load_catalog().edition("Nimbus Server Standard")
        with session(lab.options(lab.admin)) as conn:
            store.publish(
                conn,
                lab.container,
                store.ActivationObject.build(
                    cn="bench",
                    kms_ids=[edition.group],
                    csvlk_sku=uuid.uuid4(),
                    partial_key="3V66T",
                    pid="ADBA-00002-0000000001-2026328",
                    issuance_license=b"\x30" * 400,
                ),
            )
        args = [lab.uri, lab.computer.dn, lab.computer.password, lab.container, str(edition.group)]
        py = sys.executable
        for name, code in (("adba", ADBA), ("ldap3", BASELINE_LOOKUP)):
            start = lab.log_file.stat().st_size
            import subprocess

            subprocess.run([py, "-c", code, *args], check=True)
            text = lab.log_file.read_bytes()[start:].decode(errors="replace")
            msgs = messages_per_connection(text)
            print(
                f"{name:6} LDAP messages client->server: {[dict(m) for m in msgs]} "
                f"= {sum(sum(m.values()) for m in msgs)}"
            )
        times = side_by_side(
            {"adba": [py, "-c", ADBA, *args], "ldap3": [py, "-c", BASELINE_LOOKUP, *args]}, runs
        )
        print(
            f"cold process, median of {runs}: adba {times['adba'] * 1000:.1f} ms, "
            f"minimal ldap3 {times['ldap3'] * 1000:.1f} ms, "
            f"ratio {times['adba'] / times['ldap3']:.3f} (goal <= 1.15)"
        )
    finally:
        lab.destroy()


if __name__ == "__main__":
    main()
