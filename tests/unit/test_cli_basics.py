"""The CLI without servers: help with examples, the exit-code table, config errors."""

from __future__ import annotations

import pytest

from adba import errors
from adba.cli import main

VERBS = [
    ["acl", "show"],
    ["acl", "grant"],
    ["acl", "revoke"],
    ["agent", "get-iid"],
    ["agent", "apply-cid"],
    ["authority", "serve"],
    ["authority", "confirm"],
    ["authority", "grant-hosts"],
    ["authority", "rotate"],
    ["authority", "report"],
    ["kms", "install-key"],
    ["kms", "serve"],
    ["kms", "probe"],
    ["kms", "status"],
    ["kms", "clients"],
    ["kms", "publish"],
    ["kms", "unpublish"],
    ["mak", "proxy"],
    ["agent", "run"],
    ["agent", "status"],
    ["agent", "install-units"],
    ["directory", "init"],
    ["directory", "check"],
    ["ao", "publish"],
    ["ao", "list"],
    ["ao", "show"],
    ["ao", "delete"],
    ["authority", "init"],
    ["authority", "mint"],
    ["demo"],
    ["completion", "bash"],
    ["completion", "zsh"],
]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help_with_an_example(
    verb: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out
    assert "adba " + " ".join(verb) in out


def test_top_level_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in errors.EXIT_CODES:
        assert f"  {code:>3}  " in out


def test_usage_error_is_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ao", "frobnicate"]) == 2


def _families() -> list[type[errors.AdbaError]]:
    return [
        obj
        for name in errors.__all__
        if isinstance(obj := getattr(errors, name), type) and issubclass(obj, errors.AdbaError)
    ]


@pytest.mark.parametrize("cls", _families(), ids=lambda c: c.__name__)
def test_each_error_family_has_a_documented_stable_exit_code(cls: type[errors.AdbaError]) -> None:
    assert cls.exit_code in errors.EXIT_CODES
    assert errors.exit_code_for(cls()) == cls.exit_code
    assert cls().message  # the docstring is the default message


def test_exit_codes_are_fixed() -> None:
    """Scripts rely on these numbers: changing one is a breaking change."""
    got = {
        c.__name__: c.exit_code
        for c in _families()
        if c.__name__
        in [
            "InvalidInput",
            "InvalidDN",
            "ObjectNotFound",
            "AuthenticationFailed",
            "AccessDenied",
            "ServerUnavailable",
            "TlsError",
            "SchemaMissing",
            "CheckFailed",
            "LicenseError",
            "AlreadyExists",
            "InvalidKey",
            "UnknownProduct",
            "AuthorityError",
            "NotAnActivationObject",
            "ConfigError",
        ]
    }
    assert got == {
        "InvalidInput": 2,
        "InvalidDN": 2,
        "ObjectNotFound": 3,
        "AuthenticationFailed": 4,
        "AccessDenied": 5,
        "ServerUnavailable": 6,
        "TlsError": 7,
        "SchemaMissing": 8,
        "CheckFailed": 8,
        "LicenseError": 9,
        "AlreadyExists": 10,
        "InvalidKey": 11,
        "UnknownProduct": 12,
        "AuthorityError": 13,
        "NotAnActivationObject": 14,
        "ConfigError": 15,
    }


def test_missing_uri_says_what_to_do(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("ADBA_URI", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert main(["ao", "list"]) == 2
    assert "--uri" in capsys.readouterr().err


def test_bad_config_variable_names_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    import pathlib

    cfg = pathlib.Path(str(tmp_path)) / "adba" / "adba.toml"
    cfg.parent.mkdir()
    cfg.write_text('[directory]\nuri = "ldap://x"\nbogus = 1\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert main(["ao", "list"]) == 15
    err = capsys.readouterr().err
    assert "directory.bogus" in err and str(cfg) in err


def test_parser_builds_without_importing_ldap3() -> None:
    import subprocess
    import sys

    code = "import sys, adba.cli; adba.cli.build_parser(); print('ldap3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_install_units_writes_the_three_units(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import pathlib

    target = pathlib.Path(str(tmp_path))
    assert (
        main(["agent", "install-units", "--dir", str(target), "--adba", "/usr/local/bin/adba"]) == 0
    )
    out = capsys.readouterr()
    assert "warning" not in out.err
    assert "/usr/local/share/man/man1/adba.1" in out.out  # how to install the man page
    names = sorted(p.name for p in target.iterdir())
    assert names == ["adba-agent-check.service", "adba-agent.service", "adba-agent.timer"]
    boot = (target / "adba-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/adba agent run --once" in boot
    assert "After=network-online.target" in boot and "Type=oneshot" in boot
    check = (target / "adba-agent-check.service").read_text()
    assert "agent run --if-due" in check
    assert "OnUnitActiveSec=1h" in (target / "adba-agent.timer").read_text()
    assert "@ADBA@" not in boot + check


def test_the_avma_unit_serves_vsock_and_is_a_valid_unit(tmp_path: object) -> None:
    """adba-avma.service: its command line is a valid `avma serve` (the parser says so),
    vsock is not filtered out by its sandbox, systemd reads it without a complaint; the
    agent's install-units leaves it out (it is for virtualization hosts only)."""
    import pathlib
    import shlex
    import shutil
    import subprocess

    from adba.cli import build_parser

    root = pathlib.Path(__file__).resolve().parents[2] / "adba" / "data" / "systemd"
    text = (root / "adba-avma.service").read_text()
    lines = text.splitlines()
    [start] = [line for line in lines if line.startswith("ExecStart=@ADBA@ ")]
    args = build_parser().parse_args(shlex.split(start.removeprefix("ExecStart=@ADBA@ ")))
    assert (args.noun, args.verb, args.listen) == ("avma", "serve", ["vsock:any:1690"])
    [families] = [line for line in lines if line.startswith("RestrictAddressFamilies=")]
    assert "AF_VSOCK" in families.split("=", 1)[1].split()
    assert "Documentation=man:adba(1)" in lines
    target = pathlib.Path(str(tmp_path))
    assert main(["agent", "install-units", "--dir", str(target), "--adba", "/usr/bin/adba"]) == 0
    assert not (target / "adba-avma.service").exists()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = target / "adba-avma.service"
    unit.write_text(text.replace("@ADBA@", shutil.which("true") or "/bin/true"))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    complaints = [line for line in res.stderr.splitlines() if "adba-avma.service" in line]
    assert res.returncode == 0 and not complaints, res.stderr


def test_packaging_units_are_the_shipped_ones() -> None:
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    assert (root / "packaging" / "systemd").resolve() == (
        root / "adba" / "data" / "systemd"
    ).resolve()


def test_install_units_warns_when_the_sandbox_hides_adba(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import pathlib

    target = pathlib.Path(str(tmp_path))
    for path, setting in (
        ("/home/alice/.venv/bin/adba", "ProtectHome=yes"),
        ("/root/adba/.venv/bin/adba", "ProtectHome=yes"),
        ("/run/user/1000/adba", "ProtectHome=yes"),
        ("/tmp/venv/bin/adba", "PrivateTmp=yes"),
        ("/var/tmp/adba", "PrivateTmp=yes"),
    ):
        assert main(["agent", "install-units", "--dir", str(target), "--adba", path]) == 0
        err = capsys.readouterr().err
        assert err.startswith(f"adba: warning: {path} is under ") and setting in err
    assert main(["agent", "install-units", "--dir", str(target), "--adba", "/homer/adba"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_install_units_warns_about_the_interpreter_too(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """An adba in /usr/local/bin whose #! names a venv under /home still cannot start."""
    import pathlib

    target = pathlib.Path(str(tmp_path))
    script = target / "adba"
    script.write_text("#!/home/bob/.venv/bin/python\nimport adba.cli\n")
    (target / "units").mkdir()
    argv = ["agent", "install-units", "--dir", str(target / "units"), "--adba", str(script)]
    assert main(argv) == 0
    assert "/home/bob/.venv/bin/python is under /home" in capsys.readouterr().err


def test_install_units_as_a_normal_user_is_a_clean_error(
    tmp_path: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root may write anywhere here, so the refusal is faked at the one place it happens."""
    import os
    import pathlib

    target = pathlib.Path(str(tmp_path))
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)
    assert main(["agent", "install-units", "--dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"adba: error: {target}: permission denied: run it as root "
        "(sudo adba agent install-units) or give --dir\n"
    )
    assert list(target.iterdir()) == []  # nothing written


def test_install_units_into_etc_as_a_normal_user(capsys: pytest.CaptureFixture[str]) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("runs as root here: /etc/systemd/system is writable")
    assert main(["agent", "install-units"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "permission denied: run it as root" in err
