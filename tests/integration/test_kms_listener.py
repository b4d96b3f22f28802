"""How the real KMS host takes connections (adba/kms/listener.py): a complete request is
answered at once, without waiting for the client's half-close; a request in pieces is held
and answered; a silent connection is cut off; one bad request in a batch costs only itself;
and a host out of file descriptors stops accepting for a moment instead of spinning, then
serves again."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from adba.kms.protocol import RESPONSE_SIZE
from adba.lab import free_port
from tests.integration.test_kms_hostile import activate, exchange, request
from tests.servers import TestKmsHost

pytestmark = pytest.mark.integration


@pytest.fixture
def hosts(request: pytest.FixtureRequest) -> Iterator[list[TestKmsHost]]:
    made: list[TestKmsHost] = []
    yield made
    for host in made:
        host.keep = request.session.testsfailed > 0
        host.destroy()


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except OSError:
        pass
    return data


def test_a_complete_request_is_answered_without_the_half_close_and_pieces_are_held(
    hosts: list[TestKmsHost], authority_dir: Path
) -> None:
    host = TestKmsHost(authority_dir, deadline=2.0).start()
    hosts.append(host)
    # the whole request, no shutdown(SHUT_WR): the host knows its size and answers
    with socket.create_connection(("127.0.0.1", host.port), timeout=3) as s:
        s.sendall(request().encode())
        started = time.monotonic()
        data = _read_all(s)
    assert len(data) == RESPONSE_SIZE and time.monotonic() - started < 1.0
    # in three pieces 0.2 s apart (held: it waits for the rest), then answered, no FIN either
    payload = request().encode()
    with socket.create_connection(("127.0.0.1", host.port), timeout=3) as s:
        for i in (0, 5, 60):
            s.sendall(payload[i : {0: 5, 5: 60, 60: len(payload)}[i]])
            time.sleep(0.2)
        data = _read_all(s)
    assert len(data) == RESPONSE_SIZE
    # the held path checks as the fast path does: one byte too many is refused
    with socket.create_connection(("127.0.0.1", host.port), timeout=3) as s:
        s.sendall(payload[:10])
        time.sleep(0.2)
        s.sendall(request().encode()[10:] + b"x")
        assert _read_all(s) == b""
    assert activate(host.port, request()) >= 1  # and it still serves


def test_a_connection_that_sends_nothing_is_cut_off(
    hosts: list[TestKmsHost], authority_dir: Path
) -> None:
    host = TestKmsHost(authority_dir, deadline=1.0).start()
    hosts.append(host)
    with socket.create_connection(("127.0.0.1", host.port), timeout=15) as s:
        started = time.monotonic()
        assert _read_all(s) == b""
        took = time.monotonic() - started
    # the kernel keeps it up to the defer-accept time (1 s, then its SYN-ACK retries), then
    # the host's own deadline (1 s) runs
    assert took < 10.0, took
    assert activate(host.port, request()) >= 1


def test_one_bad_request_in_a_batch_costs_only_itself(
    hosts: list[TestKmsHost], authority_dir: Path
) -> None:
    metrics = free_port()
    host = TestKmsHost(authority_dir, deadline=2.0).start("--metrics-port", str(metrics))
    hosts.append(host)
    good = [request() for _ in range(48)]
    bad = [
        request().encode()[:5] + b"\x07" + request().encode()[6:],  # a kind that does not exist
        b"ADBK\x01" + os.urandom(139),  # the right size, garbage fields
        b"ADBK\x09" + bytes(139),  # a version that does not exist
        b"GET / HTTP/1.1\r\n\r\n",  # not ours at all
    ] * 4
    gate = threading.Barrier(len(good) + len(bad) + 1)
    counts: list[int] = []
    answers: list[bytes] = []
    errors: list[BaseException] = []

    def ask_good(req: object) -> None:
        gate.wait()
        try:
            counts.append(activate(host.port, req, timeout=5.0))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    def ask_bad(payload: bytes) -> None:
        gate.wait()
        answers.append(exchange(host.port, payload, timeout=5.0))

    threads = [threading.Thread(target=ask_good, args=(r,)) for r in good]
    threads += [threading.Thread(target=ask_bad, args=(p,)) for p in bad]
    for t in threads:
        t.start()
    gate.wait()  # all at once: they reach the host as a few batches
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert len(counts) == len(good)  # every good one answered, signed, its own nonce
    assert answers == [b""] * len(bad)  # every bad one closed without an answer
    assert _metric(metrics, "adba_kms_rejected_total") == len(bad)
    assert _metric(metrics, "adba_kms_requests_total") == len(good)


def test_out_of_file_descriptors_the_host_pauses_accepting_then_serves_again(
    hosts: list[TestKmsHost], authority_dir: Path
) -> None:
    host = TestKmsHost(authority_dir, deadline=3.0)
    hosts.append(host)
    host.start("--first-byte-deadline", "3", nofile=64)
    held: list[socket.socket] = []
    try:
        for k in range(80):  # more than the host can open: the last ones wait in its backlog
            s = socket.create_connection(
                ("127.0.0.1", host.port), source_address=(f"127.0.0.{2 + k % 8}", 0)
            )
            s.sendall(b"ADBK")  # held: a request's first bytes
            held.append(s)
        time.sleep(1.0)
        assert host.proc is not None and host.proc.poll() is None
        log = host.log_text()
        assert "accept-failed" in log, log[-2000:]
        cpu = _cpu_seconds(host.proc.pid)
        time.sleep(1.0)
        assert _cpu_seconds(host.proc.pid) - cpu < 0.5  # paused, not spinning on the backlog
    finally:
        for s in held:
            s.close()
    # the held ones are gone (closed by their clients): the host accepts and serves again
    deadline = time.monotonic() + 10
    while True:
        try:
            assert activate(host.port, request(), timeout=3.0) >= 1
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
