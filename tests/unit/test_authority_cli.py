"""``adba authority`` as a user meets it: invalid options change nothing, records are printed
safely, a directory that cannot be written gets a clean error."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adba.authority import LocalAuthority
from adba.catalog import load_catalog
from adba.cli import main
from adba.keys import KeyType

NOW = 1_790_000_000


def _dump(path: Path) -> str:
    db = sqlite3.connect(path / "records.sqlite")
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    LocalAuthority.init(tmp_path / "a", now=NOW)
    return tmp_path / "a"


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--type", "mak", "--product", "Nimbus Server Standard", "--count", "0"], 2),
        (["--type", "mak", "--product", "Nimbus Server Standard", "--count", "-3"], 2),
        (["--type", "mak", "--product", "Nimbus Server Standard", "--count", "10000000"], 2),
        (["--type", "mak", "--product", "Nimbus Server Standard", "--count", "x"], 2),
        (["--type", "csvlk", "--product", "Nimbus Server 2026 CSVLK", "--count", "5"], 2),
        (["--type", "csvlk", "--product", "No Such Product"], 12),
        (["--type", "mak", "--product", "Nimbus Server 2026 CSVLK"], 12),
        (["--type", "gvlk", "--product", "Nimbus Server Standard"], 2),
        (["--type", "mak", "--product", "Nimbus Server Standard", "--catalog", "/nonexistent"], 12),
    ],
)
def test_an_invalid_mint_records_nothing_and_uses_no_serial(
    path: Path, argv: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _dump(path)
    assert main(["authority", "mint", "--path", str(path), *argv]) == code
    _out, err = capsys.readouterr()
    assert "Traceback" not in err and err.strip()
    assert _dump(path) == before
    assert main(["authority", "report", "--path", str(path), "--json"]) == 0
    assert '"keys": []' in capsys.readouterr().out
    auth = LocalAuthority.open(path)
    mak = auth.mint(KeyType.MAK, "Nimbus Server Standard", load_catalog(), now=NOW)
    assert mak.serial == 1  # the refused mint used no serial
    assert auth.report(load_catalog())["keys"][0]["mak_allowed"] == 1


def test_mint_a_mak_with_a_count(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--type", "mak", "--product", "Nimbus Server Standard", "--count", "7"]
    assert main(["authority", "mint", "--path", str(path), *args]) == 0
    capsys.readouterr()
    [entry] = LocalAuthority.open(path).report(load_catalog())["keys"]
    assert (entry["serial"], entry["mak_allowed"], entry["mak_left"]) == (1, 7, 7)


def test_report_escapes_terminal_control_sequences(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = load_catalog()
    auth = LocalAuthority.open(path)
    key = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", cat, now=NOW)
    hostile = "\x1b[2J\x1b]0;owned\x07evil\r\nhost\u202e\x9b31m"
    auth.activate_kms_host(key.text, os.urandom(32), hostile, cat, now=NOW)
    assert main(["authority", "report", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\u202e\x9b")
    assert "\\x1b[2J" in out and "evil" in out
    assert out.count("\n") == 3  # the host's line is one line
    assert main(["authority", "report", "--path", str(path), "--json"]) == 0
    assert "\x1b" not in capsys.readouterr().out  # JSON escapes them too


def test_init_where_the_user_may_not_write() -> None:
    """A clean one-line error and the authority exit code, no traceback (run as a user)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="adba-init-"))  # under /tmp: searchable by all
    try:
        os.chmod(base, 0o755)
        locked = base / "locked"
        locked.mkdir()
        os.chmod(locked, 0o555)
        target = locked / "authority"
        if os.geteuid() == 0:  # root may write anywhere but in sysfs
            target = Path(f"/sys/adba-test-{os.getpid()}/authority")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        argv = [sys.executable, "-m", "adba", "authority", "init", "--path", str(target)]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 13, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "permission denied" in result.stderr and str(target) in result.stderr
        assert not target.exists()
    finally:
        shutil.rmtree(base)


def _serve_cases() -> list[object]:
    return [
        pytest.param(lambda t: ["--path", str(t / "missing" / "x")], 13, id="missing-path"),
        pytest.param(lambda t: ["--path", str(t / "empty")], 13, id="empty-dir"),
        pytest.param(lambda t: ["--path", str(t / "a-file" / "x")], 13, id="path-under-a-file"),
        pytest.param(
            lambda t: ["--tls-cert", str(t / "no.pem"), "--tls-key", str(t / "a-file")],
            2,
            id="tls-file-missing",
        ),
        pytest.param(
            lambda t: ["--tls-cert", str(t / "a-file"), "--tls-key", str(t / "a-file")],
            2,
            id="tls-file-not-pem",
        ),
        pytest.param(lambda t: ["--listen", "999.1.1.1"], 2, id="listen-no-address"),
        pytest.param(lambda t: ["--listen", "192.0.2.1"], 13, id="listen-not-ours"),
        pytest.param(lambda t: ["--port", "@BUSY@"], 13, id="port-in-use"),
    ]


@pytest.mark.parametrize(("extra", "code"), _serve_cases())
def test_serve_refuses_before_it_binds(path: Path, tmp_path: Path, extra: Any, code: int) -> None:
    """Every bad option of `authority serve` is one line and a table code, before anything
    listens (uvicorn would exit 1 or 3, or serve a path that is no authority)."""
    import socket

    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not PEM\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [str(busy.getsockname()[1]) if a == "@BUSY@" else a for a in extra(tmp_path)]
        if "--path" not in args:
            args += ["--path", str(path)]
        if "--port" not in args:  # a port nobody listens on (a bug that served would hang)
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                args += ["--port", str(free.getsockname()[1])]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        argv = [sys.executable, "-m", "adba", "authority", "serve", *args]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("adba: error: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )
    assert "serving on" not in result.stderr
