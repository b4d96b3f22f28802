"""Admins cannot edit objects, publish validates before the authority, init refuses names that
do not exist, and the messages say what happened (issues 11 and 12), against a real slapd."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest

from adba.authority import LocalAuthority
from adba.cli import main
from adba.directory import schema
from tests.conftest import NOW, docker_backend
from tests.integration.test_acl import ao_attrs, bind, code
from tests.integration.test_agent import SERVER_CSVLK, Agent, publish
from tests.servers import TestNamed, TestSlapd, dead_port

pytestmark = pytest.mark.integration

needs_ldapi = pytest.mark.skipif(
    docker_backend(), reason="needs ldapi to slapd's cn=config, which stays inside the container"
)

#: a value for each attribute an activation object may hold (what an admin could try to add)
VALUES: dict[str, object] = {
    "cn": "second-name",
    "description": "added",
    "displayName": "added",
    "msSPP-KMSIds": uuid.uuid4().bytes_le,
    "msSPP-CSVLKSkuId": uuid.uuid4().bytes_le,
    "msSPP-CSVLKPartialProductKey": "AAAAA",
    "msSPP-CSVLKPid": "ADBA-OTHER",
    "msSPP-InstallationId": "1234567",
    "msSPP-ConfirmationId": "7654321",
    **{name: b"\x30\x00" for name in schema.LICENSE_ATTRIBUTES},
}
#: what the object below already holds (so delete/replace have something to act on)
PRESENT = {"cn", "msSPP-KMSIds", "msSPP-CSVLKSkuId", "msSPP-CSVLKPartialProductKey"}


@pytest.fixture
def existing(slapd: TestSlapd, ao_name: str) -> Iterator[str]:
    dn = f"cn={ao_name},{slapd.container}"
    admin = bind(slapd, "admin")
    assert admin.add(dn, attributes=ao_attrs()), admin.result
    admin.unbind()
    yield dn
    root = bind(slapd, "root")
    root.search(slapd.container, "(msSPP-CSVLKPid=ADBA-TEST-PID)", ldap3.LEVEL)
    for entry in root.response:
        if entry["type"] == "searchResEntry":
            root.delete(entry["dn"])
    root.unbind()


@pytest.mark.parametrize("op", [ldap3.MODIFY_ADD, ldap3.MODIFY_REPLACE, ldap3.MODIFY_DELETE])
@pytest.mark.parametrize("attr", sorted(VALUES))
def test_admin_modify_of_any_attribute_is_50(
    slapd: TestSlapd, existing: str, attr: str, op: str
) -> None:
    admin = bind(slapd, "admin")
    values = [] if op == ldap3.MODIFY_DELETE else [VALUES[attr]]
    admin.modify(existing, {attr: [(op, values)]})
    assert code(admin) == 50, (attr, op, admin.result)
    admin.unbind()


def _rdn(attr: str) -> str:
    value = VALUES[attr]
    if isinstance(value, bytes):
        return f"{attr}=#04{len(value):02x}{value.hex()}"
    return f"{attr}={value}"


def _snapshot(slapd: TestSlapd, dn: str) -> dict[str, list[object]] | None:
    root = bind(slapd, "root")
    try:
        root.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["*"])
        found = [e for e in root.response if e["type"] == "searchResEntry"]
        if not found:
            return None
        return {k.lower(): sorted(map(repr, v)) for k, v in found[0]["raw_attributes"].items()}
    finally:
        root.unbind()


@pytest.mark.parametrize("delete_old", [True, False], ids=["deleteoldrdn1", "deleteoldrdn0"])
@pytest.mark.parametrize(
    "new_superior", [None, "container", "parent"], ids=["same-parent", "to-itself", "elsewhere"]
)
@pytest.mark.parametrize("attr", sorted(VALUES))
def test_admin_rename_of_any_kind_is_50_and_changes_nothing(
    slapd: TestSlapd, existing: str, attr: str, new_superior: str | None, delete_old: bool
) -> None:
    """modrdn needs write (add and delete) on the stored entry; the admin group has only
    delete there (add is for entries not yet stored): every rename is refused, whatever it
    would add or keep, and the object is left exactly as it was."""
    before = _snapshot(slapd, existing)
    superior = {
        None: None,
        "container": slapd.container,
        "parent": slapd.container.split(",", 1)[1],
    }[new_superior]
    admin = bind(slapd, "admin")
    try:
        admin.modify_dn(existing, _rdn(attr), delete_old_dn=delete_old, new_superior=superior)
    finally:
        admin.unbind()
    assert code(admin) == 50, (attr, new_superior, delete_old, admin.result)
    assert _snapshot(slapd, existing) == before
    renamed = f"{_rdn(attr)},{superior or slapd.container}"
    assert _snapshot(slapd, renamed) is None, renamed


def test_admin_rename_of_a_name_an_url_cannot_carry_is_still_50(
    slapd: TestSlapd, ao_name: str
) -> None:
    """The stored-entry lookup cannot find a name with '?' or '%' (an LDAP URL splits or
    unescapes it): then the admin gets add only, so the rename is still refused; only the
    delete of such a name is lost (which is why `ao publish` refuses these names)."""
    dn = f"cn={ao_name}%3F?x,{slapd.container}"
    admin = bind(slapd, "admin")
    try:
        assert admin.add(dn, attributes=ao_attrs()), admin.result
        for delete_old in (False, True):
            admin.modify_dn(dn, "cn=renamed", delete_old_dn=delete_old)
            assert code(admin) == 50, admin.result
        admin.delete(dn)
        assert code(admin) == 50, admin.result
    finally:
        admin.unbind()
        root = bind(slapd, "root")
        root.delete(dn)
        root.delete(f"cn=renamed,{slapd.container}")
        root.unbind()


def test_the_agent_rejects_an_object_renamed_with_a_new_kms_id(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    """What the rename above can do is still caught where it matters."""
    dn = publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    admin = bind(slapd, "admin")
    extra = uuid.uuid4().bytes_le
    admin.modify_dn(dn, f"msSPP-KMSIds=#0410{extra.hex()}", delete_old_dn=False)
    renamed = f"msSPP-KMSIds=#0410{extra.hex()},{slapd.container}"
    if code(admin) == 0:
        janitor[janitor.index(dn)] = renamed
    admin.unbind()
    [outcome] = Agent(tmp_path, slapd, authority_dir).run().outcomes
    assert outcome.activated is (code(admin) != 0), outcome


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _csvlk(authority: Path) -> str:
    from adba.catalog import load_catalog
    from adba.keys import KeyType

    return (
        LocalAuthority.open(authority)
        .mint(KeyType.CSVLK, SERVER_CSVLK, load_catalog(), now=NOW)
        .text
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [("x" * 65, 2), ("", 2), ("bad\nname", 2), (" padded", 2), ("duplicate", 10)],
    ids=["too-long", "empty", "control-char", "space", "duplicate"],
)
def test_publish_checks_its_inputs_before_the_authority_records_anything(
    name: str,
    expected: int,
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    if name == "duplicate":
        janitor.append(publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor))
        name = ao_name
    key = _csvlk(authority_dir)
    key_file = tmp_path / "k"
    key_file.write_text(key + "\n")
    rc, _out, err = _run(
        capsys,
        "ao",
        "publish",
        "--key-file",
        str(key_file),
        "--authority",
        str(authority_dir),
        "--name",
        name,
        *slapd.cli_args("admin"),
    )
    assert rc == expected, err
    assert err.startswith("adba: error: ") and err.count("\n") == 1, err
    assert LocalAuthority.open(authority_dir).activations(key) == []  # nothing recorded


def test_publish_into_a_missing_container_records_nothing(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _csvlk(authority_dir)
    key_file = tmp_path / "k"
    key_file.write_text(key + "\n")
    args = slapd.cli_args("admin")
    args[args.index("-b") + 1] = "dc=elsewhere,dc=test"
    rc, _out, err = _run(
        capsys,
        "ao",
        "publish",
        "--key-file",
        str(key_file),
        "--authority",
        str(authority_dir),
        *args,
    )
    assert rc == 3 and "no container" in err, err
    assert LocalAuthority.open(authority_dir).activations(key) == []


@needs_ldapi
@pytest.mark.parametrize("which", ["--admin-group", "--computers"])
def test_init_refuses_a_group_or_subtree_that_does_not_exist(
    which: str, slapd: TestSlapd, capsys: pytest.CaptureFixture[str]
) -> None:
    def acl() -> list[str]:
        conn = ldap3.Connection(
            ldap3.Server(slapd.ldapi_uri, get_info=ldap3.NONE),
            authentication=ldap3.SASL,
            sasl_mechanism=ldap3.EXTERNAL,
            sasl_credentials="",
            auto_bind=True,
        )
        conn.search(
            "cn=config", "(olcSuffix=*)", ldap3.LEVEL, attributes=["olcAccess", "olcLimits"]
        )
        values = sorted(map(str, conn.response[0]["attributes"]["olcAccess"]))
        values += sorted(map(str, conn.response[0]["attributes"]["olcLimits"]))
        conn.unbind()
        return values

    before = acl()
    names = {"--admin-group": slapd.admin_group, "--computers": slapd.computers}
    names[which] = f"cn=Nobody Here,{slapd.groups}"
    rc, out, err = _run(
        capsys,
        "directory",
        "init",
        "--config-uri",
        slapd.ldapi_uri,
        "--admin-group",
        names["--admin-group"],
        "--computers",
        names["--computers"],
        *slapd.cli_args("root"),
    )
    assert rc == 3, out + err
    assert "[ok]" not in out and "cn=Nobody Here" in err and "nothing was changed" in err
    assert acl() == before


def test_check_without_config_uri_says_what_it_skipped(
    slapd: TestSlapd, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _run(capsys, "directory", "check", "--json", *slapd.cli_args("admin"))
    assert rc == 0, err
    items = {i["name"]: i for i in json.loads(out)["items"]}
    skipped = {n for n, i in items.items() if i["skipped"]}
    assert skipped == {"index", "limits", "size-limits", "acl", "audit"}
    assert all("--config-uri" in items[n]["detail"] for n in skipped)
    rc, out, err = _run(capsys, "directory", "check", *slapd.cli_args("admin"))
    assert rc == 0 and out.count("[skip]") == 5, out


def test_list_as_a_user_who_may_not_read_gets_the_hint(
    slapd: TestSlapd, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _out, err = _run(capsys, "ao", "list", *slapd.cli_args("user"))
    assert rc == 3, err
    assert "not visible to this identity" in err and err.count("\n") == 1, err


def test_list_fits_the_terminal_and_json_is_whole(
    slapd: TestSlapd,
    authority_dir: Path,
    ao_name: str,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dn = publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, err = _run(capsys, "ao", "list", *slapd.cli_args("admin"))
    assert rc == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "\u2026" in out  # the long DN / KMS ID names were cut
    rc, out, err = _run(capsys, "ao", "list", "--json", *slapd.cli_args("admin"))
    assert dn in [v["dn"] for v in json.loads(out)]


def test_a_srv_target_without_an_address_is_logged(
    slapd: TestSlapd,
    named: TestNamed,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    named.update(
        "_ldap._tcp.dc._msdcs",
        "SRV",
        [f"0 100 {dead_port()} ghost.{named.zone}.", f"10 100 {slapd.port} dc2.{named.zone}."],
    )
    named.update("dc2", "A", ["127.0.0.1"])
    agent = Agent(
        tmp_path,
        slapd,
        authority_dir,
        dc_uris=None,
        domain=named.zone,
        dns_servers=[named.nameserver],
    )
    try:
        with caplog.at_level("WARNING", logger="adba"):
            assert agent.run().outcomes[0].activated
    finally:
        named.update("_ldap._tcp.dc._msdcs", "SRV", [])
    assert any(
        r.levelname == "WARNING"
        and f"ghost.{named.zone}" in r.getMessage()
        and "A/AAAA" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def _config(slapd: TestSlapd) -> ldap3.Connection:
    return ldap3.Connection(
        ldap3.Server(slapd.ldapi_uri, get_info=ldap3.NONE),
        authentication=ldap3.SASL,
        sasl_mechanism=ldap3.EXTERNAL,
        sasl_credentials="",
        auto_bind=True,
    )


def _rules_of(slapd: TestSlapd) -> tuple[str, list[str]]:
    """The data database's cn=config DN and its olcAccess values (read over ldapi as root)."""
    conn = _config(slapd)
    try:
        flt = f"(olcSuffix={slapd.suffix})"  # not the audit log's database
        conn.search("cn=config", flt, ldap3.LEVEL, attributes=["olcAccess"])
        [entry] = [e for e in conn.response if e["type"] == "searchResEntry"]
        return entry["dn"], [str(v) for v in entry["attributes"]["olcAccess"]]
    finally:
        conn.unbind()


@needs_ldapi
def test_init_replaces_the_rules_that_let_admins_rename_and_check_tells_them_apart(
    slapd: TestSlapd, ao_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server initialised before the fix (its entry rule gave the admin group add and delete
    on stored objects alike): `directory check` fails on it, a rename that keeps the old name
    succeeds there, and `directory init` puts the new rule in place of the old one."""
    db, original = _rules_of(slapd)
    conn = _config(slapd)
    new = schema.acl_rules(slapd.suffix, slapd.admin_group, slapd.computers)[1]
    old = (  # the rule as ADBA installed it before (one grant of add and delete)
        f'to dn.one="{slapd.container}" filter=(objectClass=msSPP-ActivationObject) attrs=entry'
        f' by group.exact="{slapd.admin_group}" =azrscd'
        f' by dn.children="{slapd.computers}" read by * none'
    )
    [at] = [i for i, v in enumerate(original) if v.split("}", 1)[1] == new]
    prefix = original[at].split("}", 1)[0] + "}"
    args = ["--admin-group", slapd.admin_group, "--computers", slapd.computers]
    dn = f"cn={ao_name},{slapd.container}"
    try:
        assert conn.modify(
            db,
            {
                "olcAccess": [
                    (ldap3.MODIFY_DELETE, [original[at]]),
                    (ldap3.MODIFY_ADD, [prefix + old]),
                ]
            },
        ), conn.result
        rc, out, _ = _run(
            capsys,
            "directory",
            "check",
            "--json",
            "--config-uri",
            slapd.ldapi_uri,
            *args,
            *slapd.cli_args("root"),
        )
        items = {i["name"]: i for i in json.loads(out)["items"]}
        assert rc != 0 and not items["acl"]["ok"], out
        admin = bind(slapd, "admin")
        assert admin.add(dn, attributes=ao_attrs()), admin.result
        admin.modify_dn(dn, "description=kept-the-old-name", delete_old_dn=False)
        assert code(admin) == 0, admin.result  # the hole, on the old rule
        dn = f"description=kept-the-old-name,{slapd.container}"

        rc, out, err = _run(
            capsys,
            "directory",
            "init",
            "--config-uri",
            slapd.ldapi_uri,
            *args,
            *slapd.cli_args("root"),
        )
        assert rc == 0, out + err
        assert _rules_of(slapd)[1] == original
        rc, out, err = _run(
            capsys,
            "directory",
            "check",
            "--json",
            "--config-uri",
            slapd.ldapi_uri,
            *args,
            *slapd.cli_args("root"),
        )
        assert rc == 0 and {i["name"]: i for i in json.loads(out)["items"]}["acl"]["ok"], out
        admin.modify_dn(dn, f"cn={ao_name}", delete_old_dn=False)
        assert code(admin) == 50, admin.result
        admin.delete(dn)
        assert code(admin) == 0, admin.result
        admin.unbind()
    finally:
        if _rules_of(slapd)[1] != original:
            conn.modify(db, {"olcAccess": [(ldap3.MODIFY_REPLACE, original)]})
        conn.unbind()
        root = bind(slapd, "root")
        root.delete(dn)
        root.unbind()
