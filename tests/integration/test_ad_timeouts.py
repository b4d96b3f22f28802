"""A directory server that accepts the TCP connection and never answers costs about the
connect timeout (``--timeout``, the agent's ``connect_timeout``), not ldap3's 30 s receive
timeout: for ldap:// (the bind), StartTLS (its answer) and ldaps:// (the handshake)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adba.directory.connection import ConnectionOptions, connect
from adba.errors import ServerUnavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: generous slack for a busy 2-core machine; the old cost was 30 s
BUDGET = 12.0


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts every connection on 127.0.0.1 and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for sock in held:
            sock.close()
        listener.close()


@pytest.mark.parametrize("scheme", ["ldap", "ldaps", "starttls"])
def test_the_cli_gives_up_after_its_timeout(
    silent_server: int, tmp_path: Path, scheme: str
) -> None:
    uri = f"{'ldaps' if scheme == 'ldaps' else 'ldap'}://127.0.0.1:{silent_server}"
    argv = [sys.executable, "-m", "adba", "ao", "list", "-H", uri, "-b", "dc=x", "--timeout", "2"]
    if scheme == "starttls":  # a password bind on ldap:// starts TLS first
        (tmp_path / "pw").write_text("secret\n")
        argv += ["-D", "cn=admin,dc=x", "--password-file", str(tmp_path / "pw")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert res.returncode == 6, res.stderr
    assert elapsed < BUDGET, f"{elapsed:.1f} s"
    assert "accepted the connection but did not" in res.stderr and "within 2 s" in res.stderr
    if scheme == "ldaps":
        assert "finish TLS" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("scheme", ["ldap", "ldaps"])
def test_the_library_connect_is_bounded_by_connect_timeout(silent_server: int, scheme: str) -> None:
    """The agent's path: the same connect(), bounded by its connect_timeout."""
    opts = ConnectionOptions(uri=f"{scheme}://127.0.0.1:{silent_server}", connect_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        connect(opts)
    assert time.monotonic() - start < BUDGET / 2
    assert "within 1 s" in str(info.value)
