"""Reading a 5 MiB license: adba's store (ldap3 with a 1 MiB receive buffer) vs ldapsearch,
and vs ldap3 with its default 4 KiB buffer (quadratic), all in the same run.

    .venv/bin/python bench/license_read.py [runs]
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid

from _common import prepared_slapd, side_by_side

from adba.directory import store
from adba.directory.connection import session
from adba.directory.schema import MAX_LICENSE_BYTES

ADBA = """
import sys
from adba.directory.connection import ConnectionOptions, session
from adba.directory.store import show
uri, dn, pw, target, size = sys.argv[1:6]
with session(ConnectionOptions(uri=uri, bind_dn=dn, password=pw, insecure=True)) as conn:
    assert len(show(conn, target).issuance_license) == int(size)
"""

DEFAULT_LDAP3 = """
import sys, ldap3
uri, dn, pw, target, size = sys.argv[1:6]
conn = ldap3.Connection(ldap3.Server(uri, get_info=ldap3.NONE), dn, pw, auto_bind=True)
conn.search(target, "(objectClass=*)", ldap3.BASE, attributes=["msSPP-IssuanceLicense"])
assert len(conn.response[0]["raw_attributes"]["msSPP-IssuanceLicense"][0]) == int(size)
conn.unbind()
"""


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    lab = prepared_slapd()
    try:
        blob = hashlib.shake_256(b"adba").digest(MAX_LICENSE_BYTES)
        with session(lab.options(lab.admin)) as conn:
            dn = store.publish(
                conn,
                lab.container,
                store.ActivationObject.build(
                    cn="big",
                    kms_ids=[uuid.uuid4()],
                    csvlk_sku=uuid.uuid4(),
                    partial_key="3V66T",
                    pid="p",
                    issuance_license=blob,
                ),
            )
        who = [lab.uri, lab.computer.dn, lab.computer.password, dn, str(len(blob))]
        env = dict(os.environ, LDAPNOINIT="1")
        ldapsearch = [
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            lab.uri,
            "-D",
            lab.computer.dn,
            "-w",
            lab.computer.password,
            "-b",
            dn,
            "-s",
            "base",
            "msSPP-IssuanceLicense",
        ]
        subprocess.run(ldapsearch, check=True, stdout=subprocess.DEVNULL, env=env)
        py = sys.executable
        times = side_by_side({"adba": [py, "-c", ADBA, *who], "ldapsearch": ldapsearch}, runs)
        print(
            f"5 MiB license, cold process, median of {runs}: adba {times['adba'] * 1000:.0f} ms, "
            f"ldapsearch {times['ldapsearch'] * 1000:.0f} ms, "
            f"ratio {times['adba'] / times['ldapsearch']:.2f}"
        )
        warm = []
        for _ in range(runs):
            t = time.perf_counter()
            with session(lab.options(lab.computer, insecure=True)) as conn:
                assert store.show(conn, dn).issuance_license == blob
            warm.append(time.perf_counter() - t)
        read = sorted(warm)[len(warm) // 2]
        print(
            f"in-process (imports paid once), median: adba bind+read+unbind {read * 1000:.0f} ms, "
            f"ratio to the whole ldapsearch process {read / times['ldapsearch']:.2f}"
        )
        t = time.perf_counter()
        subprocess.run([py, "-c", DEFAULT_LDAP3, *who], check=True)
        slow = time.perf_counter() - t
        print(
            f"ldap3 with its default 4 KiB SOCKET_SIZE, one run: {slow * 1000:.0f} ms "
            f"({slow / times['adba']:.1f}x adba)"
        )
    finally:
        lab.destroy()


if __name__ == "__main__":
    main()
