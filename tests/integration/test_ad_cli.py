"""The admin CLI on a real Samba AD DC as the README shows it: no ``-b`` anywhere (the forest
root comes from the root DSE's rootDomainNamingContext, as the agent finds it), the owner of
the container shown by name, and the README's own AD example commands run as written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from adba.cli import main

pytestmark = pytest.mark.integration

SERVER_CSVLK = "Nimbus Server 2026 CSVLK"
README = Path(__file__).resolve().parents[2] / "README.md"


def no_base(dc: Any, who: str) -> list[str]:
    """The fixture's connection flags for ``who`` without ``-b``."""
    args = dc.cli_args(who)
    i = args.index("-b")
    return args[:i] + args[i + 2 :]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mint(capsys: pytest.CaptureFixture[str], authority: Path, tmp_path: Path) -> str:
    code, out, err = run(
        capsys, "authority", "mint", "--path", str(authority), "--type", "csvlk",
        "--product", SERVER_CSVLK,
    )  # fmt: skip
    assert code == 0, err
    path = tmp_path / "csvlk.txt"
    path.write_text(out.strip() + "\n")
    return str(path)


def test_every_admin_command_finds_the_forest_root_without_base(
    samba: Any,
    authority_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ao_name: str,
) -> None:
    admin = no_base(samba, "admin")
    key = mint(capsys, authority_dir, tmp_path)
    code, out, err = run(
        capsys, "ao", "publish", "--key-file", key, "--authority", str(authority_dir),
        "--name", ao_name, "--json", *admin,
    )  # fmt: skip
    assert code == 0, err
    dn = json.loads(out)["dn"]
    assert dn.lower() == f"cn={ao_name},{samba.container}".lower()
    try:
        code, out, err = run(capsys, "ao", "list", "--json", *no_base(samba, "computer"))
        assert code == 0, err
        assert ao_name in {v["cn"] for v in json.loads(out)}
        code, out, err = run(capsys, "ao", "show", "--json", dn, *admin)
        assert (code, json.loads(out)["cn"] if code == 0 else err) == (0, ao_name)
        code, out, err = run(capsys, "acl", "show", "--json", *admin)
        assert code == 0, err
        assert json.loads(out)["container"].lower() == samba.container.lower()
        code, out, err = run(capsys, "directory", "check", "--json", *admin)
        assert code == 0, err
        assert json.loads(out)["root"] == samba.suffix
    finally:
        code, out, err = run(capsys, "ao", "delete", "--yes", dn, *admin)
    assert code == 0, err
    code, out, err = run(capsys, "ao", "list", "--json", *admin)
    assert ao_name not in {v["cn"] for v in json.loads(out)}


def _readme_ad_commands() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Active Directory and Samba AD") :]
    section = section[: section.index("\n### ", 1)]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's AD section has no example block"
    lines, current = [], ""
    for raw in block.group(1).splitlines():
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            lines.append(current.split(" #", 1)[0].strip())
            current = ""
    return [line for line in lines if line]


def test_the_readme_s_ad_examples_run_as_written(
    samba: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """Every command in the README's AD block, with its file names in the current directory
    and ``...`` standing for the first command's connection flags."""
    commands = _readme_ad_commands()
    assert len(commands) >= 4 and all(c.startswith("adba ") for c in commands)
    shutil.copy(samba.ca_file, tmp_path / "ca.pem")
    shutil.copy(samba.root.password_file, tmp_path / "admin.pw")
    monkeypatch.chdir(tmp_path)
    first = shlex.split(commands[0])
    assert "-b" not in first and "--base" not in first
    connection = first[first.index("-H") :]
    for command in commands:
        argv = shlex.split(command)[1:]
        if "..." in argv:
            i = argv.index("...")
            argv[i : i + 1] = connection
        code, _out, err = run(capsys, *argv)
        assert code == 0, (command, err)
        assert "Traceback" not in err


def test_acl_show_names_the_owner(samba: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "acl", "show", "--json", *no_base(samba, "root"))
    assert code == 0, err
    view = json.loads(out)
    # forest preparation makes Enterprise Admins the container's owner
    assert view["owner"].startswith("S-1-5-21-") and view["owner"].endswith("-519")
    assert view["owner_name"] == "Enterprise Admins"
    code, out, err = run(capsys, "acl", "show", *no_base(samba, "root"))
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.endswith(f"(owner Enterprise Admins {view['owner']})"), first
    assert "None" not in first


def test_acl_grant_takes_the_owner_s_implicit_rights_away(
    samba: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The OWNER RIGHTS entry: inheritable to activation objects only, read-control only."""
    code, out, err = run(capsys, "acl", "show", "--json", *no_base(samba, "root"))
    assert code == 0, err
    [entry] = [e for e in json.loads(out)["entries"] if e["sid"] == "S-1-3-4"]
    assert (entry["name"], entry["rights"], entry["allow"]) == ("Owner Rights", "RC", True)
    assert entry["sddl"].startswith("(OA;CIIO;RC;;") and entry["inherited_object_type"]
    code, out, err = run(capsys, "acl", "grant", "ADBA Admins", *no_base(samba, "root"))
    assert (code, out.strip()) == (0, "granted ADBA Admins: already in place"), err
