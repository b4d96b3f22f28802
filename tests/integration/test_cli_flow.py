"""The admin path through the CLI, in-process (``main(argv)``), against a real slapd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adba.cli import main
from tests.servers import TestSlapd

pytestmark = pytest.mark.integration

SERVER_CSVLK = "Nimbus Server 2026 CSVLK"


def conn_args(lab: TestSlapd, who: str) -> list[str]:
    return lab.cli_args(who)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mint(capsys: pytest.CaptureFixture[str], authority: Path, product: str = SERVER_CSVLK) -> str:
    code, out, err = run(
        capsys,
        "authority",
        "mint",
        "--path",
        str(authority),
        "--type",
        "csvlk",
        "--product",
        product,
    )
    assert code == 0, err
    return out.strip()


def key_file(tmp_path: Path, key: str) -> str:
    path = tmp_path / "csvlk.txt"
    path.write_text(key + "\n")
    return str(path)


@pytest.mark.skipif(
    __import__("tests.conftest").conftest.docker_backend(),
    reason="needs ldapi to slapd's cn=config, which stays inside the container",
)
def test_init_is_harmless_to_rerun_and_check_passes(
    slapd: TestSlapd, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "directory",
        "init",
        "--config-uri",
        slapd.ldapi_uri,
        "--admin-group",
        slapd.admin_group,
        "--computers",
        slapd.computers,
        "--json",
        *conn_args(slapd, "root"),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    details = {i["name"]: i["detail"] for i in report["items"]}
    assert "already" in details["schema"]
    assert "already" in details["acl"]
    assert "already" in details["container"]
    assert "already" in details["index"]

    code, out, err = run(
        capsys,
        "directory",
        "check",
        "--config-uri",
        slapd.ldapi_uri,
        "--admin-group",
        slapd.admin_group,
        "--computers",
        slapd.computers,
        "--json",
        *conn_args(slapd, "admin"),
    )
    assert code == 0, err
    assert {i["name"] for i in json.loads(out)["items"]} >= {
        "schema",
        "content-rule",
        "container",
        "index",
        "limits",
        "acl",
    }


def test_check_reports_a_missing_container(capsys: pytest.CaptureFixture[str]) -> None:
    with TestSlapd() as bare:  # a plain slapd: no schema, no container
        code, out, err = run(capsys, "directory", "check", "--json", *conn_args(bare, "root"))
    assert code == 8
    report = json.loads(out)
    failed = {i["name"] for i in report["items"] if not i["ok"]}
    assert failed == {"schema", "content-rule", "container"}
    assert "adba directory init" in report["items"][0]["fix"]
    assert err.startswith("adba: error: directory not ready") and err.count("\n") == 1


def test_publish_list_show_delete(
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    janitor: list[str],
) -> None:
    key = mint(capsys, authority_dir)
    admin, computer = conn_args(slapd, "admin"), conn_args(slapd, "computer")
    code, out, err = run(
        capsys,
        "ao",
        "publish",
        "--key-file",
        key_file(tmp_path, key),
        "--authority",
        str(authority_dir),
        "--name",
        "flow",
        *admin,
    )
    assert code == 0, err
    dn = f"cn=flow,{slapd.container}"
    janitor.append(dn)
    assert out.strip() == f"published {dn}"
    assert key not in out + err  # the secret is never echoed

    root_key = str(authority_dir / "root.pub")
    code, out, err = run(capsys, "ao", "list", "--root-key", root_key, *computer)
    assert code == 0, err
    assert "flow" in out and SERVER_CSVLK in out and "verified" in out
    assert "Nimbus Server 2026" in out and "Nimbus Client 2026" in out  # KMS ID names

    code, out, err = run(capsys, "ao", "list", "--root-key", root_key, "--json", *computer)
    assert code == 0, err
    [view] = [v for v in json.loads(out) if v["dn"] == dn]
    assert view["csvlk_name"] == SERVER_CSVLK
    assert view["partial_key"] == key[-5:]
    assert view["license"] == "verified"
    assert sorted(view["kms_names"]) == ["Nimbus Client 2026", "Nimbus Server 2026"]

    code, out, err = run(
        capsys, "ao", "list", "--edition", "Nimbus Workstation Enterprise", "--json", *computer
    )
    assert code == 0 and [v["dn"] for v in json.loads(out)] == [dn]

    code, out, err = run(capsys, "ao", "show", dn, "--root-key", root_key, "--json", *computer)
    assert code == 0, err
    assert json.loads(out)["pid"] == view["pid"]
    code, out, err = run(capsys, "ao", "show", dn, *computer)
    assert code == 0 and "not verified" in out

    code, out, err = run(capsys, "ao", "delete", dn, *computer, "--yes")
    assert code == 5, err  # computers read, never delete
    code, out, err = run(capsys, "ao", "delete", dn, *admin)  # stdin is not a tty, no --yes
    assert code == 2 and "--yes" in err
    code, out, err = run(capsys, "ao", "delete", "--yes", dn, *admin)
    assert code == 0, err
    code, out, err = run(capsys, "ao", "list", "--json", *admin)
    assert code == 0 and dn not in out


def test_delete_refuses_what_is_not_an_activation_object(
    slapd: TestSlapd, capsys: pytest.CaptureFixture[str]
) -> None:
    root = conn_args(slapd, "root")
    for dn in (slapd.computer.dn, slapd.container, f"cn=nothing-here,{slapd.container}"):
        code, _out, err = run(capsys, "ao", "delete", "--yes", dn, *root)
        assert code in (14, 3), (dn, err)
        assert err.count("\n") == 1
    # the entries are still there
    code, _out, _err = run(capsys, "directory", "check", *root)
    assert code == 0


def _list(capsys: pytest.CaptureFixture[str], lab: TestSlapd) -> str:
    code, out, err = run(capsys, "ao", "list", "--json", *conn_args(lab, "admin"))
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("malformed-dn", 2),
        ("unknown-edition", 12),
        ("typo-in-key", 11),
        ("unreachable", 6),
        ("wrong-password", 4),
        ("untrusted-certificate", 7),
    ],
)
def test_bad_input_is_one_line_with_a_distinct_code_and_changes_nothing(
    case: str,
    expected: int,
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = _list(capsys, slapd)
    key = mint(capsys, authority_dir)
    admin = conn_args(slapd, "admin")
    publish = ["ao", "publish", "--authority", str(authority_dir), "--name", "bad-" + case]
    if case == "malformed-dn":
        argv = ["ao", "show", "cn=x,,=bad", *admin]
    elif case == "unknown-edition":
        argv = ["ao", "list", "--edition", "Nimbus Toaster", *admin]
    elif case == "typo-in-key":
        typo = key[:3] + ("B" if key[3] != "B" else "C") + key[4:]
        argv = [*publish, "--key-file", key_file(tmp_path, typo), *admin]
    elif case == "unreachable":
        from tests.servers import dead_port

        argv = [*publish, "--key-file", key_file(tmp_path, key), *admin, "--timeout", "1"]
        argv[argv.index(slapd.uri)] = f"ldap://127.0.0.1:{dead_port()}"
    elif case == "wrong-password":
        wrong = tmp_path / "wrong.pw"
        wrong.write_text("not-the-password\n")
        argv = [*publish, "--key-file", key_file(tmp_path, key), *admin]
        argv[argv.index(slapd.admin.password_file)] = str(wrong)
    else:
        argv = [*publish, "--key-file", key_file(tmp_path, key), *admin]
        i = argv.index("--ca-file")
        del argv[i : i + 2]
        argv[argv.index(slapd.uri)] = slapd.ldaps_uri
    code, _out, err = run(capsys, *argv)
    assert code == expected, err
    assert err.startswith("adba: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert _list(capsys, slapd) == before


@pytest.mark.skipif(
    __import__("tests.conftest").conftest.docker_backend(),
    reason="needs ldapi to slapd's cn=config, which stays inside the container",
)
def test_acl_show_on_openldap_lists_the_adba_rules_first(
    slapd: TestSlapd, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "acl", "show", "--json", "--config-uri", slapd.ldapi_uri, *conn_args(slapd, "admin")
    )
    assert code == 0, err
    rules = json.loads(out)["olcAccess"]
    assert rules[0].startswith('{0}to dn.base="cn=Activation Objects')
    code, _out, err = run(capsys, "acl", "grant", "x", *conn_args(slapd, "admin"))
    assert code == 2 and "directory init --admin-group" in err
