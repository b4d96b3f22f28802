"""One suite, two directories: the same bodies against OpenLDAP and a real Samba AD DC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ldap3
import pytest

from adba.cli import main
from adba.directory import store
from adba.directory.connection import connect, session
from adba.errors import AccessDenied
from tests.conftest import NOW
from tests.integration.test_agent import Agent

pytestmark = pytest.mark.integration

SERVER_CSVLK = "Nimbus Server 2026 CSVLK"
#: what each backend answers an anonymous search (OpenLDAP hides the tree: 32; AD: 1)
ANONYMOUS_SEARCH = {"TestSlapd": 32, "DockerSlapd": 32, "TestSambaDC": 1}


def _kind(directory: Any) -> str:
    return type(directory).__name__


def test_publish_agent_list_delete(
    directory: Any,
    authority_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ao_name: str,
) -> None:
    dn = directory.publish_csvlk(authority_dir, SERVER_CSVLK, ao_name, NOW)
    try:
        [outcome] = Agent(tmp_path, directory, authority_dir).run().outcomes
        assert outcome.activated, outcome
        code = main(
            [
                "ao",
                "list",
                "--json",
                "--root-key",
                str(authority_dir / "root.pub"),
                *directory.cli_args("computer"),
            ]
        )
        views = {v["cn"]: v for v in json.loads(capsys.readouterr().out)}
        assert code == 0 and views[ao_name]["license"] == "verified"
        assert main(["ao", "delete", "--yes", dn, *directory.cli_args("admin")]) == 0
        capsys.readouterr()
        assert ao_name not in {o.cn for o in _objects(directory)}
    finally:
        with session(directory.options(directory.root)) as conn:
            conn.delete(dn)


def _objects(directory: Any) -> list[store.ActivationObject]:
    with session(directory.options(directory.admin)) as conn:
        return store.list_objects(conn, directory.container)


def _sample(name: str) -> store.ActivationObject:
    import uuid

    return store.ActivationObject.build(
        cn=name,
        kms_ids=[uuid.uuid4()],
        csvlk_sku=uuid.uuid4(),
        partial_key="3V66T",
        pid="ADBA-TEST",
    )


@pytest.mark.parametrize("who", ["computer", "user"])
def test_computers_and_plain_users_cannot_add_modify_or_delete(
    directory: Any, who: str, ao_name: str
) -> None:
    with session(directory.options(directory.admin)) as conn:
        dn = store.publish(conn, directory.container, _sample(ao_name))
    try:
        with session(directory.options(getattr(directory, who))) as conn:
            with pytest.raises(AccessDenied) as info:
                store.publish(conn, directory.container, _sample(ao_name + "-x"))
            assert info.value.code == 50
            conn.modify(dn, {"description": [(ldap3.MODIFY_REPLACE, ["x"])]})
            assert conn.result["result"] == 50
            conn.delete(dn)
            assert conn.result["result"] == 50
    finally:
        with session(directory.options(directory.root)) as conn:
            conn.delete(dn)


def test_the_delegated_admin_group_adds_and_deletes_but_never_modifies(
    directory: Any, ao_name: str
) -> None:
    with session(directory.options(directory.admin)) as conn:
        dn = store.publish(conn, directory.container, _sample(ao_name))
        conn.modify(dn, {"description": [(ldap3.MODIFY_REPLACE, ["x"])]})
        assert conn.result["result"] == 50
        conn.delete(dn)
        assert conn.result["result"] == 0


def test_anonymous_gets_nothing(directory: Any) -> None:
    opts = directory.options()
    conn = connect(opts)
    try:
        conn.search(directory.container, "(objectClass=*)", ldap3.LEVEL)
        assert conn.result["result"] == ANONYMOUS_SEARCH[_kind(directory)]
        assert not [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
    finally:
        conn.unbind()


def test_domain_admins_can_do_everything_on_ad(samba: Any, ao_name: str) -> None:
    with session(samba.options(samba.root)) as conn:
        dn = store.publish(conn, samba.container, _sample(ao_name))
        conn.modify(dn, {"description": [(ldap3.MODIFY_REPLACE, ["x"])]})
        assert conn.result["result"] == 0
        conn.delete(dn)
        assert conn.result["result"] == 0


def test_acl_show_grant_revoke_on_ad(
    samba: Any, capsys: pytest.CaptureFixture[str], ao_name: str
) -> None:
    root = samba.cli_args("root")
    assert main(["acl", "show", "--json", *root]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert any(e["name"] == "ADBA Admins" and e["rights"] == "CCDC" for e in entries)
    assert any(e["name"] == "Authenticated Users" and "RP" in e["rights"] for e in entries)
    assert main(["acl", "revoke", "ADBA Admins", *root]) == 0
    capsys.readouterr()
    try:
        with session(samba.options(samba.admin)) as conn, pytest.raises(AccessDenied):
            store.publish(conn, samba.container, _sample(ao_name))
    finally:
        assert main(["acl", "grant", "ADBA Admins", *root]) == 0
        assert "granted ADBA Admins" in capsys.readouterr().out
    with session(samba.options(samba.admin)) as conn:
        dn = store.publish(conn, samba.container, _sample(ao_name))
        conn.delete(dn)
        assert conn.result["result"] == 0


def test_directory_check_passes_on_a_prepared_ad(
    samba: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["directory", "check", "--json", *samba.cli_args("admin")]) == 0
    items = {i["name"]: i["ok"] for i in json.loads(capsys.readouterr().out)["items"]}
    assert items == {
        "schema": True,
        "container": True,
        "read-grant": True,
        "owner-rights": True,
        "tls": True,
    }
    assert (
        main(
            [
                "directory",
                "init",
                "--admin-group",
                "x=y",
                "--computers",
                "x=y",
                *samba.cli_args("root"),
            ]
        )
        == 2
    )
    assert "never extends it" in capsys.readouterr().err


def test_a_windows_object_is_listed_but_never_used(
    samba: Any,
    authority_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ao_name: str,
) -> None:
    from adba.catalog import load_catalog

    catalog = load_catalog()
    edition, csvlk = catalog.edition("Nimbus Server Standard"), catalog.csvlk(SERVER_CSVLK)
    xrml = b'<?xml version="1.0" encoding="utf-8"?><r:license xmlns:r="urn:x">' + b"A" * 400
    foreign = store.ActivationObject.build(
        cn=ao_name,
        kms_ids=[edition.group],
        csvlk_sku=csvlk.sku,
        partial_key="3V66T",
        pid="06401-02061-000-000001-03-1033-9600.0000-0012024",
        issuance_license=xrml,
    )
    with session(samba.options(samba.root)) as conn:
        dn = store.publish(conn, samba.container, foreign)
    try:
        main(
            [
                "ao",
                "list",
                "--json",
                "--root-key",
                str(authority_dir / "root.pub"),
                *samba.cli_args("computer"),
            ]
        )
        [view] = [v for v in json.loads(capsys.readouterr().out) if v["cn"] == ao_name]
        assert view["license"] == "foreign" and "Windows object, not ours" in view["license_detail"]
        [outcome] = Agent(tmp_path, samba, authority_dir).run().outcomes
        assert not outcome.activated and outcome.code == "objects-rejected"
        assert "no license of ours" in outcome.message
    finally:
        with session(samba.options(samba.root)) as conn:
            conn.delete(dn)


def test_check_finds_the_missing_container_then_samba_s_lost_grant_and_acl_fixes_it(
    samba: Any, authority_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stock DC: no forest preparation, Samba's unparseable msSPP default descriptor."""
    from tests.servers import TestSambaDC

    stock = TestSambaDC("127.0.0.3", forest_prep=False, fix_sd=False)
    try:
        stock.start()
        assert main(["directory", "check", "--json", *stock.cli_args("root")]) == 8
        items = {i["name"]: i for i in json.loads(capsys.readouterr().out)["items"]}
        assert not items["container"]["ok"]
        assert "samba-tool domain functionalprep --forest-prep" in items["container"]["fix"]
        stock.stop()
        stock._tool(
            "samba-tool",
            "domain",
            "functionalprep",
            "-s",
            str(stock.conf),
            "-H",
            str(stock.sam),
            "--function-level=2012_R2",
            "--forest-prep",
        )
        stock.start()
        assert main(["directory", "check", "--json", *stock.cli_args("root")]) == 8
        items = {i["name"]: i for i in json.loads(capsys.readouterr().out)["items"]}
        assert items["container"]["ok"] and not items["read-grant"]["ok"]
        assert "Samba's lost grant" in items["read-grant"]["detail"]
        assert "adba acl grant 'Authenticated Users' --read" in items["read-grant"]["fix"]
        # the symptom: a computer cannot see an object published now (by the delegated group)
        assert main(["acl", "grant", "ADBA Admins", *stock.cli_args("root")]) == 0
        dn = stock.publish_csvlk(authority_dir, SERVER_CSVLK, "lost-grant", NOW)
        [outcome] = (
            Agent(tmp_path / "a", stock, authority_dir).run().outcomes
            if (tmp_path / "a").mkdir() is None
            else [None]
        )
        assert outcome is not None and outcome.code == "no-object"
        assert main(["acl", "grant", "Authenticated Users", "--read", *stock.cli_args("root")]) == 0
        capsys.readouterr()
        assert main(["directory", "check", *stock.cli_args("root")]) == 0
        capsys.readouterr()
        with session(stock.options(stock.root)) as conn:
            conn.delete(dn)
        stock.publish_csvlk(authority_dir, SERVER_CSVLK, "after-fix", NOW)
        (tmp_path / "b").mkdir()
        [outcome] = Agent(tmp_path / "b", stock, authority_dir).run().outcomes
        assert outcome.activated, outcome
    finally:
        stock.destroy()


def test_ad_binds_starttls_and_the_computer_account_by_its_account_name(
    samba: Any,
    authority_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ao_name: str,
) -> None:
    dn = samba.publish_csvlk(authority_dir, SERVER_CSVLK, ao_name, NOW)
    try:
        upn = f"KMSCLIENT1$@{samba.realm}"
        argv = [
            "ao",
            "list",
            "--json",
            "-H",
            f"ldap://{samba.ip}",
            "--ca-file",
            samba.ca_file,
            "--tls-name",
            samba.tls_name,
            "-b",
            samba.suffix,
            "-D",
            upn,
            "--password-file",
            samba.computer.password_file,
        ]
        assert main(argv) == 0  # StartTLS on 389, bound as HOST$@REALM
        assert ao_name in capsys.readouterr().out
        assert main([*argv, "--insecure"]) == 7  # AD refuses a simple bind in clear
        assert "requires TLS" in capsys.readouterr().err
        agent = Agent(tmp_path, samba, authority_dir, dc_uris=[f"ldap://{samba.ip}"])
        agent.path.write_text(agent.path.read_text().replace(samba.computer.dn, upn))
        [outcome] = agent.run().outcomes
        assert outcome.activated, outcome
    finally:
        with session(samba.options(samba.root)) as conn:
            conn.delete(dn)


def test_the_agent_binds_with_the_machine_keytab(
    samba: Any, authority_dir: Path, tmp_path: Path, ao_name: str
) -> None:
    """Kerberos (GSSAPI) inside TLS, from the computer's keytab, as domain-joined Linux does."""
    dn = samba.publish_csvlk(authority_dir, SERVER_CSVLK, ao_name, NOW)
    try:
        keytab = samba.export_keytab("KMSCLIENT1$", tmp_path / "machine.keytab")
        krb5 = samba.krb5_conf(tmp_path / "krb5.conf")
        agent = Agent(tmp_path, samba, authority_dir)
        text = agent.path.read_text()
        machine = text[text.index("[machine]") : text.index("[intervals]")]
        kerberos = (
            f'[machine]\nkeytab = "{keytab}"\nprincipal = "KMSCLIENT1$@{samba.realm}"\n'
            f'krb5_config = "{krb5}"\n'
        )
        agent.path.write_text(text.replace(machine, kerberos))
        [outcome] = agent.run().outcomes
        assert outcome.activated, outcome
        # another machine's keytab does not get this principal a ticket
        other = samba.export_keytab("plainuser", tmp_path / "other.keytab")
        agent.path.write_text(agent.path.read_text().replace(keytab, other))
        [outcome] = agent.run(now=NOW + 60).outcomes
        assert (outcome.activated, outcome.code) == (False, "auth-failed"), outcome
    finally:
        with session(samba.options(samba.root)) as conn:
            conn.delete(dn)
