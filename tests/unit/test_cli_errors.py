"""The one error printer in main(): every exception a one-line message and a code of the
table, ``--json`` errors on stdout, Ctrl-C 130, a closed stdout quiet, tracebacks only with
-vv; configuration errors name their source; ``-v`` after the verb; ``--version``."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import adba.cli.agent
from adba.cli import BROKEN_PIPE, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for var in list(os.environ):
        if var.startswith("ADBA_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def _raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """`adba agent status` raises ``exc`` (the verb is looked up when the parser is built)."""

    def boom(_args: object) -> int:
        raise exc

    monkeypatch.setattr(adba.cli.agent, "cmd_status", boom)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("adba: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("exc", "code", "words"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/etc/x.json"), 2, "/etc/x.json"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"), 2, "/nope"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), 2, "/tmp: Is a directory"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), 2, "No such file"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), 6, "refused"),
        (TimeoutError("timed out"), 6, "timed out"),
        (ValueError("nameserver is not a valid IP"), 2, "invalid value: nameserver"),
        (OverflowError("bind(): port must be 0-65535."), 2, "port must be"),
        (RuntimeError("boom\nsecond line"), 1, "unexpected failure: RuntimeError: boom second"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "No space left"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_every_exception_is_one_line_and_a_table_code(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exc: BaseException,
    code: int,
    words: str,
) -> None:
    _raising(monkeypatch, exc)
    assert main(["agent", "status"]) == code
    assert words in _one_error_line(capsys.readouterr().err)


def test_traceback_only_with_vv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _raising(monkeypatch, RuntimeError("boom"))
    assert main(["agent", "status", "-v"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert main(["agent", "status", "-vv"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("RuntimeError: boom")


def test_json_error_is_an_object_on_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from adba.errors import AccessDenied

    _raising(monkeypatch, AccessDenied("no rights here"))
    assert main(["agent", "status", "--json"]) == 5
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "error": "access-denied",
        "message": "no rights here",
        "exit_code": 5,
    }
    assert _one_error_line(err) == "adba: error: no rights here"
    # a foreign exception too, and a usage error
    _raising(monkeypatch, PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert main(["agent", "status", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "file-access"
    assert main(["ao", "list", "--json", "-H", "ldap://127.0.0.1:99999"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["error"] == "usage" and "1-65535" in data["message"]
    # without --json, stdout stays empty
    assert main(["agent", "status", "--state", str(tmp_path)]) != 0
    assert capsys.readouterr().out == ""


def test_ctrl_c_is_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _raising(monkeypatch, KeyboardInterrupt())
    assert main(["agent", "status"]) == 130
    assert capsys.readouterr().err == "adba: interrupted\n"


def test_sigint_to_a_real_process_is_130(tmp_path: Path) -> None:
    """A process blocked reading the CSVLK from stdin, interrupted by SIGINT."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "adba", "ao", "publish", "--key-file", "-", "-H", "ldap://x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "adba: interrupted"


def test_closed_stdout_is_quiet(tmp_path: Path) -> None:
    """`adba ... | head -1`: no traceback, no "Exception ignored", exit 141 like SIGPIPE."""
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "adba", "completion", "bash"],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        proc.stdout.close()  # the reader is gone before adba writes
        assert proc.wait(timeout=20) == BROKEN_PIPE
    assert (tmp_path / "err").read_bytes() == b""


def test_verbose_after_the_verb(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = str(tmp_path / "none.json")
    assert main(["agent", "status", "--state", state, "-v"]) == 0
    assert logging.getLogger("adba").level == logging.INFO
    assert main(["-vv", "agent", "status", "--state", state]) == 0
    assert logging.getLogger("adba").level == logging.DEBUG  # not reset by the verb's default
    assert main(["agent", "run", "--help"]) == 0
    assert "--strict -v" in capsys.readouterr().out  # the example the help gives ...
    assert main(["agent", "run", "--once", "--strict", "-v", "--config", state]) == 15  # parses


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"adba {version('adba')}\n"


# -- configuration errors name their source ----------------------------------------------------
@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("ADBA_URI", "ldap://127.0.0.1:99999", "port must be 1-65535"),
        ("ADBA_URI", "http://dc1", "not an LDAP URI"),
        ("ADBA_BASE", "dc=x,,", "malformed DN"),
        ("ADBA_BIND_DN", "not a dn", "malformed DN"),
        ("ADBA_INSECURE", "maybe", "is not one of"),
        ("ADBA_CONFIG_URI", "ldap://127.0.0.1", "not an ldapi URI"),
    ],
)
def test_admin_variables_are_named(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    var: str,
    value: str,
    words: str,
) -> None:
    monkeypatch.setenv(var, value)
    if var != "ADBA_URI":
        monkeypatch.setenv("ADBA_URI", "ldap://127.0.0.1:1")
    assert main(["ao", "list", "--timeout", "0.5"]) == 15
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"adba: error: {var}: ") and words in line


def test_admin_file_key_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "xdg" / "adba" / "adba.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[directory]\nuri = "ldaps://dc1:0"\n')
    assert main(["ao", "list"]) == 15
    line = _one_error_line(capsys.readouterr().err)
    assert str(cfg) in line and "directory.uri" in line and "1-65535" in line
    cfg.write_text('[directory]\nuri = "ldap://127.0.0.1:1"\nbase = "nonsense"\n')
    assert main(["ao", "list", "--timeout", "0.5"]) == 15
    line = _one_error_line(capsys.readouterr().err)
    assert f"{cfg}: key directory.base" in line


def _agent_toml(tmp_path: Path, extra: str, edition: str = "Nimbus Server Standard") -> Path:
    from adba.lab import Slapd  # noqa: F401 - only to be sure the package imports

    root = tmp_path / "root.pub"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    root.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'{extra}\nroot_key = "{root}"\nstate_path = "{tmp_path / "state.json"}"\n'
        f'[[products]]\nedition = "{edition}"\n'
    )
    return cfg


@pytest.mark.parametrize(
    ("extra", "where", "words"),
    [
        ('dns_servers = ["dns.example.test"]', "dns_servers", "must be an IP address"),
        ('dns_servers = ["192.0.2.1:99999"]', "dns_servers", "1-65535"),
        ('dc_uris = ["ldap://dc1:70000"]', "dc_uris", "1-65535"),
        ('kms_host = "kms1:0"', "kms_host", "1-65535"),
        ('domain = "bad domain"', "domain", "not a host name"),
    ],
)
def test_agent_file_key_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, where: str, words: str
) -> None:
    cfg = _agent_toml(tmp_path, extra)
    assert main(["agent", "run", "--once", "--config", str(cfg)]) == 15
    line = _one_error_line(capsys.readouterr().err)
    assert f"{cfg}: {where}" in line and words in line


def test_agent_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _agent_toml(tmp_path, "")
    monkeypatch.setenv("ADBA_DNS_SERVERS", "192.0.2.1,not-an-ip")
    assert main(["agent", "run", "--once", "--config", str(cfg)]) == 15
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("adba: error: ADBA_DNS_SERVERS: ") and "not-an-ip" in line


@pytest.mark.parametrize("problem", ["missing", "readable-by-others", "empty"])
@pytest.mark.parametrize("by_variable", [False, True], ids=["file", "variable"])
def test_machine_password_file_errors_name_their_source(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    problem: str,
    by_variable: bool,
) -> None:
    """The agent's password file errors name agent.toml and the key, or the variable."""
    cfg = _agent_toml(tmp_path, 'dc_uris = ["ldap://127.0.0.1:1"]')
    password = tmp_path / "machine.password"
    if problem != "missing":
        password.write_text("" if problem == "empty" else "secret\n")
        password.chmod(0o644 if problem == "readable-by-others" else 0o600)
    if by_variable:
        monkeypatch.setenv("ADBA_MACHINE_PASSWORD_FILE", str(password))
        cfg.write_text(cfg.read_text() + '[machine]\ndn = "cn=pc1,dc=x"\n')
    else:
        cfg.write_text(
            cfg.read_text() + f'[machine]\ndn = "cn=pc1,dc=x"\npassword_file = "{password}"\n'
        )
    assert main(["agent", "run", "--once", "--config", str(cfg)]) == 15
    line = _one_error_line(capsys.readouterr().err)
    where = "ADBA_MACHINE_PASSWORD_FILE: " if by_variable else f"{cfg}: machine.password_file: "
    assert line.startswith(f"adba: error: {where}"), line
    assert str(password) in line


def test_unknown_edition_in_agent_toml_is_12(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _agent_toml(tmp_path, "", edition="Nimbus Toaster")
    assert main(["agent", "run", "--once", "--config", str(cfg)]) == 12
    line = _one_error_line(capsys.readouterr().err)
    assert f"{cfg}: products[0].edition" in line


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["ao", "list", "-H", "ldap://127.0.0.1:99999"], "port must be 1-65535"),
        (["ao", "list", "-H", "ldap://"], "names no host"),
        (["ao", "list", "-H", "https://dc1"], "not an LDAP URI"),
        (["ao", "list", "-H", "ldap://a b"], "no spaces"),
        (["ao", "list", "-H", "ldap://127.0.0.1", "--timeout", "0"], "more than 0"),
        (["ao", "list", "-H", "ldap://127.0.0.1", "--timeout", "nan"], "finite"),
        (["directory", "check", "--config-uri", "ldap://127.0.0.1"], "not an ldapi URI"),
        (["directory", "init", "--config-uri", "/var/run/ldapi"], "not an ldapi URI"),
        (["directory", "replicate", "--config-uri", "ldaps://x"], "not an ldapi URI"),
        (["acl", "show", "--config-uri", "ldap://127.0.0.1"], "not an ldapi URI"),
        (["directory", "replicate", "--peer", "ldaps://x:0"], "port must be 1-65535"),
        (["directory", "replicate", "--update-ref", "http://x"], "not an LDAP URI"),
        (["directory", "replicate", "--server-id", "0"], "must be 1 or more"),
        (["authority", "mint", "--count", "0"], "must be 1 or more"),
        (["authority", "grant-hosts", "--hosts", "-1"], "must be 1 or more"),
        (["authority", "init", "--cert-days", "0"], "must be 1 or more"),
        (["authority", "serve", "--port", "99999"], "port must be 1-65535"),
        (["authority", "serve", "--request-timeout", "inf"], "finite"),
        (["authority", "serve", "--max-connections", "-1"], "must be 0 or more"),
    ],
)
def test_addresses_and_numbers_are_checked_where_parsed(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and words in err.splitlines()[-1]


@pytest.mark.parametrize("kind", ["GVLK", "MAK"])
def test_ao_publish_with_a_gvlk_or_mak_is_invalid_key(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adba.catalog import load_catalog
    from adba.keys import KeyType, make_key

    edition = load_catalog(None).edition("Nimbus Server Standard")
    key = edition.gvlk if kind == "GVLK" else make_key(KeyType.MAK, edition.code, 1, 0).text
    key_file = tmp_path / "key.txt"
    key_file.write_text(key + "\n")
    argv = ["ao", "publish", "--key-file", str(key_file), "-H", "ldap://127.0.0.1:1"]
    assert main(argv) == 11
    line = _one_error_line(capsys.readouterr().err)
    assert f"this is a {kind}" in line and "need a CSVLK" in line


@pytest.mark.parametrize("kind", ["GVLK", "MAK"])
@pytest.mark.parametrize("workflow", ["publish_csvlk", "forest_installation", "publish_confirmed"])
def test_the_library_refuses_a_gvlk_or_mak_as_invalid_key(kind: str, workflow: str) -> None:
    """Every workflow taking a forest's key: InvalidKey (11) before any connection (the
    directory here refuses connections: reaching it would be ServerUnavailable)."""
    from adba.catalog import load_catalog
    from adba.directory import objects
    from adba.directory.connection import ConnectionOptions
    from adba.errors import InvalidKey
    from adba.keys import KeyType, make_key

    cat = load_catalog(None)
    edition = cat.edition("Nimbus Server Standard")
    key = edition.gvlk if kind == "GVLK" else make_key(KeyType.MAK, edition.code, 1, 0).text
    opts = ConnectionOptions(uri="ldap://127.0.0.1:1", connect_timeout=0.5)
    extra: dict[str, object] = {
        "publish_csvlk": {"activator": None, "catalog": cat},
        "forest_installation": {},
        "publish_confirmed": {
            "confirmation_id": "0" * 7,
            "catalog": cat,
            "root_public_key": b"\0" * 32,
        },
    }[workflow]
    with pytest.raises(InvalidKey, match=f"this is a {kind}.*need a CSVLK") as caught:
        getattr(objects, workflow)(opts, root="dc=example,dc=test", key=key, **extra)
    assert caught.value.exit_code == 11


@pytest.mark.parametrize("bound", [False, True], ids=["at-bind", "at-search"])
@pytest.mark.parametrize("reply", ["unknown-op", "cut-short", "noise"])
def test_a_server_that_is_not_ldap_is_named_and_exit_6(
    capsys: pytest.CaptureFixture[str], reply: str, bound: bool
) -> None:
    """ldap3's decoder raising KeyError/IndexError on garbage was "unexpected failure", 1."""
    from tests.servers import LDAP_BIND_OK, NOT_LDAP, GarbageServer

    replies = [LDAP_BIND_OK, NOT_LDAP[reply]] if bound else [NOT_LDAP[reply]]
    with GarbageServer(replies) as port:
        uri = f"ldap://127.0.0.1:{port}"
        code = main(["ao", "list", "-H", uri, "--insecure", "-b", "dc=x", "--timeout", "2"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 6, line
    assert f"{uri} did not answer in LDAP" in line
