"""Forged, altered and copied objects are shown as invalid; passwords never travel in clear."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import ldap3
import pytest

from adba.authority import LocalAuthority
from adba.cli import main
from adba.directory import store
from adba.directory.connection import session
from adba.directory.objects import forest_identity
from tests.conftest import NOW
from tests.servers import TestSlapd

pytestmark = pytest.mark.integration


def _published(lab: TestSlapd, authority: Path, name: str) -> str:
    return lab.publish_csvlk(authority, "Nimbus Client 2026 CSVLK", name, NOW)


def _license_status(
    lab: TestSlapd, authority: Path, dn: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, str]:
    code = main(
        [
            "ao",
            "show",
            dn,
            "--json",
            "--root-key",
            str(authority / "root.pub"),
            "-H",
            lab.uri,
            "--ca-file",
            lab.ca_file,
            "-b",
            lab.suffix,
            "-D",
            lab.computer.dn,
            "--password-file",
            lab.computer.password_file,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    view = json.loads(out)
    return {"license": view["license"], "detail": view["license_detail"]}


def test_object_copied_to_another_forest_is_invalid_there(
    slapd: TestSlapd,
    authority_dir: Path,
    ao_name: str,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dn = _published(slapd, authority_dir, ao_name)
    janitor.append(dn)
    assert _license_status(slapd, authority_dir, dn, capsys)["license"] == "verified"
    with session(slapd.options(slapd.admin)) as conn:
        original = store.show(conn, dn)
        here = forest_identity(conn, slapd.suffix)
    # another forest with the very same root DN: only its GUID differs
    with TestSlapd() as other:
        other.adba_init()
        with session(other.options(other.admin)) as conn:
            assert forest_identity(conn, other.suffix).guid != here.guid
            copied = store.publish(conn, other.container, original)
        status = _license_status(other, authority_dir, copied, capsys)
    assert status["license"] == "invalid"
    assert "forest" in status["detail"]


def test_altered_license_and_disagreeing_attributes_are_invalid(
    slapd: TestSlapd,
    authority_dir: Path,
    ao_name: str,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dn = _published(slapd, authority_dir, ao_name)
    janitor.append(dn)
    with session(slapd.options(slapd.admin)) as conn:
        good = store.show(conn, dn)
    der = bytearray(good.issuance_license or b"")
    der[len(der) // 2] ^= 0x01
    forged = [
        dataclasses.replace(
            good, cn=ao_name + "-flip", licenses={"msSPP-IssuanceLicense": bytes(der)}
        ),
        dataclasses.replace(good, cn=ao_name + "-pkey", partial_key="BBBBB"),
        dataclasses.replace(good, cn=ao_name + "-kms", kms_ids=(uuid.uuid4().bytes_le,)),
    ]
    with session(slapd.options(slapd.admin)) as conn:
        dns = [store.publish(conn, slapd.container, f) for f in forged]
    janitor.extend(dns)
    for forged_dn in dns:
        status = _license_status(slapd, authority_dir, forged_dn, capsys)
        assert status["license"] == "invalid", (forged_dn, status)


def test_unknown_authority_is_invalid(
    slapd: TestSlapd,
    tmp_path: Path,
    authority_dir: Path,
    ao_name: str,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rogue = tmp_path / "rogue"
    LocalAuthority.init(rogue, now=NOW - 86400)
    dn = _published(slapd, rogue, ao_name)
    janitor.append(dn)
    status = _license_status(slapd, authority_dir, dn, capsys)  # pinned: the real authority
    assert status["license"] == "invalid"
    assert "root" in status["detail"]


def test_a_password_bind_on_ldap_uses_starttls_unless_insecure(
    slapd: TestSlapd, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "ao",
        "list",
        "-H",
        slapd.uri,
        "-b",
        slapd.suffix,
        "-D",
        slapd.admin.dn,
        "--password-file",
        slapd.admin.password_file,
    ]
    assert main(argv) == 7  # StartTLS attempted; the lab's self-signed CA is not trusted
    assert "--ca-file" in capsys.readouterr().err
    assert main([*argv, "--insecure"]) == 0
    capsys.readouterr()


def test_anonymous_ldap3_cannot_read_the_container(slapd: TestSlapd) -> None:
    conn = ldap3.Connection(ldap3.Server(slapd.uri, get_info=ldap3.NONE), auto_bind=True)
    conn.search(slapd.container, "(objectClass=*)", ldap3.LEVEL)
    assert conn.result["result"] == 32
    conn.unbind()
