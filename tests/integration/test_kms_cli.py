"""`adba kms` as a user meets it: every bad number or address a clear one-line error (exit 2),
unreadable state dirs, a second install-key that spends nothing, status before the first
serve, one host per state dir, signals; and the agent asking its cached host before DNS."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adba.cli import main
from tests.integration.test_kms import SERVER, Machine
from tests.servers import TestKmsHost

pytestmark = pytest.mark.integration

BAD_PORTS = ["99999", "0", "-1", "abc", "1e3", "65536", ""]
BAD_SECONDS = ["0", "-1", "nan", "inf", "abc", "1e9", ""]
BAD_COUNTS = ["0", "-5", "abc", "1.5", "10000000", ""]
BAD_IPS = ["not-an-ip", "999.1.1.1", "1.2.3", ""]

#: (argv before the bad value, the option, bad values)
SWEEP: list[tuple[list[str], str, list[str]]] = [
    (["kms", "serve"], "--port", BAD_PORTS),
    (["kms", "serve"], "--metrics-port", BAD_PORTS),
    (["kms", "serve"], "--deadline", BAD_SECONDS),
    (["kms", "serve"], "--first-byte-deadline", BAD_SECONDS),
    (["kms", "serve"], "--log-interval", BAD_SECONDS),
    (["kms", "serve"], "--max-connections", BAD_COUNTS),
    (["kms", "serve"], "--max-per-source", BAD_COUNTS),
    (["kms", "serve"], "--workers", BAD_COUNTS),
    (["kms", "serve"], "--listen", BAD_IPS),
    (["kms", "serve"], "--address", BAD_IPS),
    (["kms", "serve"], "--dns-server", [*BAD_IPS, "127.0.0.1:99999", "[::1]:0"]),
    (["kms", "probe", "127.0.0.1"], "--timeout", BAD_SECONDS),
    (["kms", "probe"], "", ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:x", "[::1]:", "a b"]),
    (["kms", "publish", "--publish", "example.test"], "--port", BAD_PORTS),
    (["kms", "unpublish", "--publish", "example.test"], "--port", BAD_PORTS),
    (["kms", "publish", "--publish", "example.test"], "--dns-server", ["1.2.3.4:99999", "x"]),
    (["kms", "publish", "--publish", "example.test"], "--address", BAD_IPS),
]


def one_line_error(err: str) -> str:
    """The error is one line, the last, and no traceback came with it."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and err.rstrip().splitlines()[-1] == lines[0], err
    return lines[0]


def test_every_bad_number_or_address_of_a_kms_verb_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = 0
    for argv, option, values in SWEEP:
        for value in values:
            args = [*argv, *([option, value] if option else [value])]
            args += ["--state-dir", str(tmp_path)] if argv[1] != "probe" else []
            code = main(args)
            out = capsys.readouterr()
            line = one_line_error(out.err)
            assert code == 2, (args, code, line)
            assert option in line or "address" in line or "argument" in line, (args, line)
            cases += 1
    assert cases > 80
    # limits that contradict each other: refused before anything happens
    for extra in (
        ["--max-connections", "8", "--max-per-source", "9"],
        ["--deadline", "1", "--first-byte-deadline", "2"],
        ["--workers", "65"],
    ):
        assert main(["kms", "serve", "--state-dir", str(tmp_path), *extra]) == 2
        one_line_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # nothing was written


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run `adba argv` in a forked child that dropped to uid/gid 65534 (the tests run as
    root, who may read anything)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        sys.stderr = sys.stdout = open(write, "w", closefd=False)  # noqa: SIM115
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(argv)
        except BaseException as exc:
            print(f"Traceback: {exc!r}", file=sys.stderr)
            code = 99
        sys.stderr.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as fh:
        err = fh.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


def test_status_on_a_missing_or_unreadable_state_dir_is_a_clean_error(
    authority_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["kms", "status", "--state-dir", str(tmp_path / "nope")])
    line = one_line_error(capsys.readouterr().err)
    assert code == 19 and "no such directory" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    for verb in ("status", "clients"):
        assert main(["kms", verb, "--state-dir", str(empty)]) == 19
        assert "no KMS host in" in one_line_error(capsys.readouterr().err)
    host = TestKmsHost(authority_dir)
    try:
        host.dir.chmod(0o700)  # root's: another user may not enter it
        for verb in ("status", "clients"):
            code, err = _as_nobody(["kms", verb, "--state-dir", str(host.dir)])
            line = one_line_error(err)
            assert code == 19 and "permission denied" in line, (verb, err)
    finally:
        host.destroy()


def test_status_after_install_key_says_activated_not_yet_served(
    authority_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = TestKmsHost(authority_dir)  # installed, never served
    try:
        assert main(["kms", "status", "--state-dir", str(host.dir)]) == 0
        out = capsys.readouterr()
        assert out.err == ""
        assert "activated" in out.out and "not served yet" in out.out
        assert "state-dir" not in out.out and "count 0" in out.out
        assert main(["kms", "status", "--state-dir", str(host.dir), "--json"]) == 0
        view = json.loads(capsys.readouterr().out)
        assert (view["activated"], view["served"], view["serving"]) == (True, False, False)
        assert main(["kms", "clients", "--state-dir", str(host.dir)]) == 0
        assert "no clients yet" in capsys.readouterr().out
    finally:
        host.destroy()


def test_install_key_again_with_the_same_key_spends_nothing_without_reactivate(
    authority_dir: Path,
) -> None:
    host = TestKmsHost(authority_dir)
    try:
        before = {n: (host.dir / n).read_bytes() for n in ("host.json", "host.key")}
        again = host.install(authority_dir, host.dir.name)
        assert again.returncode == 0 and "already activated" in again.stdout
        assert "--reactivate" in again.stdout
        assert {n: (host.dir / n).read_bytes() for n in before} == before  # nothing done
        # the authority was not asked: all 9 reactivations are still there
        spent = 0
        for _ in range(9):
            r = host.adba(
                "kms", "install-key", "--state-dir", str(host.dir), "--key", host.key,
                "--authority", str(authority_dir), "--host-id", host.dir.name, "--reactivate",
                check=False,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            spent += 1
        assert (host.dir / "host.key").read_bytes() != before["host.key"]  # a new host key
        tenth = host.adba(
            "kms", "install-key", "--state-dir", str(host.dir), "--key", host.key,
            "--authority", str(authority_dir), "--host-id", host.dir.name, "--reactivate",
            check=False,
        )  # fmt: skip
        assert spent == 9 and tenth.returncode == 13, tenth.stderr  # the limit is the 10th
        # and the plain re-run is still a no-op, not a refusal
        assert host.install(authority_dir, host.dir.name).returncode == 0
    finally:
        host.destroy()


def test_a_second_host_on_the_same_state_dir_is_refused(authority_dir: Path) -> None:
    host = TestKmsHost(authority_dir).start()
    try:
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "adba", "kms", "serve", "--state-dir", str(host.dir),
             "--listen", "127.0.0.1", "--port", str(host.port + 1 if host.port < 65535 else 1)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        line = one_line_error(second.stderr)
        assert second.returncode == 19 and "another KMS host" in line
        assert f"pid {host.proc.pid}" in line  # type: ignore[union-attr]
        assert time.monotonic() - started < 15
        assert host.status()["serving"] is True
        host.stop()  # the lock goes with the process: a new host may serve
        assert TestKmsHost.status(host)["serving"] is False
        host.start()
    finally:
        host.destroy()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_serve_exits_130_on_sigint_and_0_on_sigterm(
    authority_dir: Path, sig: int, code: int
) -> None:
    host = TestKmsHost(authority_dir).start()
    try:
        assert host.proc is not None
        host.proc.send_signal(sig)
        assert host.proc.wait(15) == code
        assert "event=stop" in host.log_text() and "Traceback" not in host.log_text()
    finally:
        host.destroy()


class BlackHoleDns:
    """A UDP port that takes DNS queries and never answers (a dead DNS server)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def queries(self) -> int:
        n = 0
        while True:
            try:
                self.sock.recv(4096)
                n += 1
            except BlockingIOError:
                return n

    def close(self) -> None:
        self.sock.close()


def test_the_agent_asks_the_cached_host_before_a_dead_dns_server(
    authority_dir: Path, tmp_path: Path
) -> None:
    host = TestKmsHost(authority_dir).start()
    dns = BlackHoleDns()
    try:
        first = Machine(tmp_path, "pc", authority_dir, SERVER, kms_host=host.address)
        assert first.run().code == "kms-count-low"  # the answer is cached in the state
        # the same machine, now configured for KMS discovery by DNS only (no static host),
        # with a dead DNS server
        again = Machine(
            tmp_path / "dns", "pc", authority_dir, SERVER, kms_domains=["example.test"],
            dns_servers=[dns.address],
        )  # fmt: skip
        again.config.write_text(
            again.config.read_text().replace(str(again.state), str(first.state))
        )
        started = time.monotonic()
        outcome = again.run()
        took = time.monotonic() - started
        assert outcome.code == "kms-count-low" and host.address in outcome.message
        assert dns.queries() == 0  # DNS was never asked
        assert took < 0.9  # a DNS query would have cost its 1-s timeout
        # the cached host is gone: now DNS is asked (and, dead, answers nothing)
        host.stop()
        outcome = again.run()
        assert outcome.code == "kms-unreachable" and dns.queries() > 0
    finally:
        dns.close()
        host.destroy()
