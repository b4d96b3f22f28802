"""The owner of an activation object gains no write: refusals with exact LDAP codes on a real
Samba AD DC that gives a new object's ownership to its creator, as Windows does.

The DC here is stock Samba 4.17 (forest prepared, its msSPP default descriptor left
unparseable), set up as the README says: ``acl grant "ADBA Admins"`` and
``acl grant "Authenticated Users" --read``, both without ``-b``. Without ADBA's countermeasure
the ADBA Admins member that published an object owns it, rewrites its DACL (WRITE_DAC is an
owner's implicit right) and then modifies it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest

from adba.cli import main
from adba.directory import store
from adba.directory.connection import session
from tests.integration.test_ad_cli import mint, no_base, run

pytestmark = pytest.mark.integration

SD_FLAGS_OWNER_GROUP_DACL = 0x07
INSUFFICIENT_ACCESS_RIGHTS = 50


@pytest.fixture(scope="module")
def creator_owned_dc(request: pytest.FixtureRequest) -> Iterator[Any]:
    from tests.conftest import _samba_unavailable

    reason = _samba_unavailable()
    if reason:
        pytest.skip(reason)
    from tests.servers import TestSambaDC

    dc = TestSambaDC("127.0.0.3", forest_prep=True, fix_sd=False)
    try:
        dc.start()
        for argv in (["ADBA Admins"], ["Authenticated Users", "--read"]):
            assert main(["acl", "grant", *argv, *no_base(dc, "root")]) == 0
        yield dc
    finally:
        dc.keep = request.session.testsfailed > 0
        dc.destroy()


def _sd(conn: ldap3.Connection, dn: str) -> Any:
    from ldap3.protocol.microsoft import security_descriptor_control
    from winacl.dtyp.security_descriptor import SECURITY_DESCRIPTOR

    conn.search(
        dn,
        "(objectClass=*)",
        ldap3.BASE,
        attributes=["nTSecurityDescriptor"],
        controls=security_descriptor_control(sdflags=SD_FLAGS_OWNER_GROUP_DACL),
    )
    assert conn.result["result"] == 0, conn.result
    return SECURITY_DESCRIPTOR.from_bytes(
        conn.response[0]["raw_attributes"]["nTSecurityDescriptor"][0]
    )


def _sid(conn: ldap3.Connection, dn: str) -> str:
    from winacl.dtyp.sid import SID

    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
    return str(SID.from_bytes(conn.response[0]["raw_attributes"]["objectSid"][0]))


def _publish(how: str, dc: Any, authority: Path, tmp_path: Path, capsys: Any, name: str) -> str:
    if how == "cli":
        key = mint(capsys, authority, tmp_path)
        code, out, err = run(
            capsys, "ao", "publish", "--key-file", key, "--authority", str(authority),
            "--name", name, "--json", *no_base(dc, "admin"),
        )  # fmt: skip
        assert code == 0, err
        return str(json.loads(out)["dn"])
    from tests.integration.test_backends import _sample

    with session(dc.options(dc.admin)) as conn:
        return store.publish(conn, dc.container, _sample(name))


@pytest.mark.parametrize("how", ["cli", "library"])
def test_the_publisher_cannot_rewrite_the_descriptor_nor_modify_but_still_deletes(
    creator_owned_dc: Any,
    authority_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ao_name: str,
    how: str,
) -> None:
    from ldap3.protocol.microsoft import security_descriptor_control
    from winacl.dtyp.ace import ACE

    dc = creator_owned_dc
    dn = _publish(how, dc, authority_dir, tmp_path, capsys, ao_name)
    try:
        with session(dc.options(dc.admin)) as conn:
            me = _sid(conn, dc.admin.dn)
            sd = _sd(conn, dn)  # the publisher may read the descriptor
            # 1. rewrite the DACL: grant itself read and write of every property
            sd.Dacl.aces.append(ACE.from_sddl(f"(A;;0x30;;;{me})"))
            conn.modify(
                dn,
                {"nTSecurityDescriptor": [(ldap3.MODIFY_REPLACE, [sd.to_bytes()])]},
                controls=security_descriptor_control(sdflags=0x04),
            )
            assert conn.result["result"] == INSUFFICIENT_ACCESS_RIGHTS, conn.result
            # 2. modify attributes (ADBA's and a plain one)
            for attribute, value in (("msSPP-CSVLKPid", "FORGED"), ("description", "x")):
                conn.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [value])]})
                assert conn.result["result"] == INSUFFICIENT_ACCESS_RIGHTS, (attribute, conn.result)
            # 3. take ownership back
            sd.Owner = __import__("winacl.dtyp.sid", fromlist=["SID"]).SID.from_string(me)
            conn.modify(
                dn,
                {"nTSecurityDescriptor": [(ldap3.MODIFY_REPLACE, [sd.to_bytes()])]},
                controls=security_descriptor_control(sdflags=0x01),
            )
            assert conn.result["result"] == INSUFFICIENT_ACCESS_RIGHTS, conn.result
        with session(dc.options(dc.root)) as conn:
            owner = str(_sd(conn, dn).Owner)
            assert owner != me, "the publisher owns what it published"
            assert owner == "S-1-5-32-544"  # BUILTIN\Administrators
            assert store.show(conn, dn).pid != "FORGED"
        # computers still read it (the inherited Authenticated Users grant)
        with session(dc.options(dc.computer)) as conn:
            assert store.show(conn, dn).cn == ao_name
        # create/delete still work
        code, _out, err = run(capsys, "ao", "delete", "--yes", dn, *no_base(dc, "admin"))
        assert code == 0, err
        dn = ""
    finally:
        if dn:
            with session(dc.options(dc.root)) as conn:
                conn.delete(dn)


def test_check_names_a_missing_owner_rights_entry_and_acl_grant_restores_it(
    creator_owned_dc: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A forest delegated before ADBA knew of OWNER RIGHTS: `directory check` fails (8) and
    names the fix; `acl grant` adds only that entry."""
    root = no_base(creator_owned_dc, "root")
    code, out, err = run(capsys, "acl", "revoke", "S-1-3-4", *root)
    assert code == 0 and "(OA;CIIO;RC;;" in out, err
    try:
        code, out, err = run(capsys, "directory", "check", "--json", *root)
        assert code == 8, err
        items = {i["name"]: i for i in json.loads(out)["items"]}
        assert not items["owner-rights"]["ok"]
        assert items["owner-rights"]["fix"] == "re-run `adba acl grant` for 'ADBA Admins'"
        assert all(i["ok"] for n, i in items.items() if n != "owner-rights")
    finally:
        code, out, err = run(capsys, "acl", "grant", "ADBA Admins", *root)
    assert code == 0, err
    assert out.strip().endswith(";S-1-3-4)") and out.count("(") == 1, out
    code, out, err = run(capsys, "directory", "check", *root)
    assert code == 0, err
    assert "[ok  ] owner-rights: the owner of an activation object gains no write" in out
