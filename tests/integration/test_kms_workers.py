"""``adba kms serve --workers N`` against real processes: one port, N processes (SO_REUSEPORT),
one owner of the count, the replay cache and the records.

Counting is exact: 10,000 distinct machines (half v1, half v2), spread over the workers by
the kernel, get exactly the counts one process gives -- 1, 2, ... 49 once each, then 50 (the
cache's capacity) -- and one process, run the same way, gives the same multiset. Separate
caches would hand out a small count twice. A v2 request replayed on new connections (which
land on different workers) is answered once. A stop loses nothing acknowledged; a kill of
the owner loses nothing older than the documented second, and takes its workers with it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from adba.authority import LocalAuthority
from adba.catalog import load_catalog
from adba.kms.client import ask
from adba.kms.envelope import seal
from adba.kms.protocol import (
    KIND_CLIENT,
    RESPONSE_SIZE,
    STATUS_OK,
    STATUS_REPLAYED,
    HostCertificate,
    Request,
)
from adba.lab import free_port
from tests.integration.test_kms import CLIENT
from tests.servers import TestKmsHost

pytestmark = pytest.mark.integration

_EDITION = load_catalog().edition(CLIENT)
SKU, GROUP = uuid.UUID(str(_EDITION.sku)), uuid.UUID(str(_EDITION.group))
MACHINES, CAPACITY, WORKERS = 10_000, 50, 3


class _AnySku(tuple[str, ...]):
    def __contains__(self, item: object) -> bool:  # the CSVLK check is not under test here
        return True


def _start(host: TestKmsHost, workers: int) -> list[int]:
    """Start the host; wait until every worker listens. Returns the workers' pids."""
    mark = host.log_path.read_text().count("event=listening") if host.log_path.exists() else 0
    host.start(*(("--workers", str(workers)) if workers > 1 else ()))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = [ln for ln in host.log_path.read_text().splitlines() if "event=listening" in ln]
        if len(lines) > mark:
            found = re.search(r"pids=([\d,]+)", lines[-1])
            return [int(p) for p in found.group(1).split(",")] if found else []
        assert host.proc is not None and host.proc.poll() is None, host.log_tail()
        time.sleep(0.05)
    raise AssertionError(f"the host did not log event=listening: {host.log_tail()}")


@pytest.fixture
def host(authority_dir: Path, request: pytest.FixtureRequest) -> Iterator[TestKmsHost]:
    h = TestKmsHost(authority_dir, deadline=5.0)
    h.port = free_port()
    try:
        yield h
    finally:
        h.keep = request.session.testsfailed > 0
        h.destroy()


def _certificate(host: TestKmsHost) -> HostCertificate:
    import json

    info = json.loads((host.dir / "host.json").read_text())
    return HostCertificate.from_bytes(bytes.fromhex(info["certificate"]))


def _wire(cert: HostCertificate, base: int, n: int) -> list[tuple[bytes, bytes]]:
    """(nonce, request bytes) for machines base+0 .. base+n-1: even ones v1, odd ones v2."""
    now = int(time.time())
    out = []
    for i in range(n):
        req = Request(
            KIND_CLIENT, uuid.UUID(int=base + i), SKU, GROUP, now, os.urandom(16), f"pc{i}"
        )
        out.append((req.nonce, req.encode() if i % 2 == 0 else seal(req, cert)))
    return out


def _exchange(port: int, item: tuple[bytes, bytes]) -> tuple[int, int]:
    """One request on a new connection: (status, count), the nonce checked."""
    nonce, data = item
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(512):
            buf += chunk
    assert len(buf) == RESPONSE_SIZE and buf[6:22] == nonce, buf[:8]
    return buf[5], int.from_bytes(buf[22:24], "big")


def _counts(port: int, items: list[tuple[bytes, bytes]]) -> Counter[int]:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda it: _exchange(port, it), items, chunksize=64))
    assert {status for status, _ in answers} == {STATUS_OK}
    return Counter(count for _, count in answers)


def _ask(port: int, root: bytes, cmid: uuid.UUID, cert: HostCertificate) -> Any:
    return ask(
        "127.0.0.1",
        port,
        cmid=cmid,
        sku=SKU,
        kms_id=GROUP,
        kind=KIND_CLIENT,
        machine=f"seq-{cmid.int}",
        now=int(time.time()),
        root_public_key=root,
        csvlk_skus=_AnySku(),
        certificate=cert,
    )


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet is gone: it serves nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _saved(host: TestKmsHost) -> set[str]:
    return {str(c["cmid"]) for c in host.clients()}


def _worker_requests(host: TestKmsHost) -> list[int]:
    text = host.log_path.read_text()
    return [
        int(m) for m in re.findall(r"event=worker-stop worker=\d+ pid=\d+ requests=(\d+)", text)
    ]


def test_workers_count_exactly_as_one_process(
    host: TestKmsHost, authority_dir: Path, tmp_path: Path
) -> None:
    cert = _certificate(host)
    expected = Counter({c: 1 for c in range(1, CAPACITY)})
    expected[CAPACITY] = MACHINES - (CAPACITY - 1)
    results = {}
    for workers, base in ((WORKERS, 1 << 64), (1, 2 << 64)):
        (host.dir / "kms.sqlite").unlink(missing_ok=True)  # each run from an empty cache
        for extra in ("-wal", "-shm"):
            (host.dir / f"kms.sqlite{extra}").unlink(missing_ok=True)
        pids = _start(host, workers)
        assert len(pids) == (workers - 1 if workers > 1 else 0)  # the owner is worker 0
        results[workers] = _counts(host.port, _wire(cert, base, MACHINES))
        host.stop()
    assert results[WORKERS] == expected
    assert results[1] == expected  # one process: the very same multiset
    served = _worker_requests(host)
    assert len(served) == WORKERS and sum(served) == MACHINES, served
    assert all(n > 0 for n in served), f"the kernel sent no connection to a worker: {served}"


def test_a_replay_is_refused_whichever_worker_it_reaches(
    host: TestKmsHost, capsys: pytest.CaptureFixture[str]
) -> None:
    from adba.cli import main

    cert = _certificate(host)
    _start(host, WORKERS)
    for _ in range(4):  # the health check's v2 round trip, through a worker and the owner
        assert main(["kms", "probe", host.address]) == 0
    assert "answers (protocol v2" in capsys.readouterr().out
    [(nonce, data)] = _wire(cert, 3 << 64, 2)[1:]  # a v2 request
    answers = [_exchange(host.port, (nonce, data)) for _ in range(30)]
    assert answers[0] == (STATUS_OK, 1)  # the probes counted nothing
    assert answers[1:] == [(STATUS_REPLAYED, 0)] * 29
    assert host.proc is not None
    host.proc.send_signal(signal.SIGINT)  # Ctrl-C: the workers first, then the save; 130
    assert host.proc.wait(15) == 130
    host.proc = None
    served = _worker_requests(host)
    assert sum(1 for n in served if n) >= 2, f"all 30 connections reached one worker: {served}"


def test_restart_keeps_every_acknowledged_machine(host: TestKmsHost, authority_dir: Path) -> None:
    root = LocalAuthority.open(authority_dir).root_public_key
    cert = _certificate(host)
    pids = _start(host, WORKERS)
    first = [uuid.UUID(int=(4 << 64) + i) for i in range(CAPACITY + 10)]
    counts = [_ask(host.port, root, cmid, cert).response.count for cmid in first]
    assert counts == list(range(1, CAPACITY)) + [CAPACITY] * 11
    host.stop()  # SIGTERM at once: well inside the flush interval
    assert _saved(host) == {str(c) for c in first[-CAPACITY:]}
    assert not [pid for pid in pids if _alive(pid)], "workers outlived their host"

    pids = _start(host, WORKERS)
    again = _ask(host.port, root, first[-1], cert)  # a renewal: counted once, not twice
    assert again.response.count == CAPACITY
    second = [uuid.UUID(int=(5 << 64) + i) for i in range(CAPACITY)]
    assert {_ask(host.port, root, cmid, cert).response.count for cmid in second} == {CAPACITY}
    time.sleep(2.5)  # past the documented second (and a busy machine's slack)
    assert host.proc is not None
    host.proc.send_signal(signal.SIGKILL)  # the owner dies without saving on the way out
    host.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [pid for pid in pids if _alive(pid)]
    assert not alive, f"workers {alive} outlived their killed owner"
    host.proc = None
    assert _saved(host) == {str(c) for c in second}


def test_a_dead_worker_stops_the_host_with_a_kms_error(host: TestKmsHost) -> None:
    pids = _start(host, WORKERS)
    os.kill(pids[0], signal.SIGKILL)
    assert host.proc is not None
    assert host.proc.wait(20) == 19  # KmsError: for the supervisor to restart it whole
    host.proc = None
    text = host.log_path.read_text()
    assert f"event=worker-lost worker=1 pid={pids[0]}" in text
    assert f"KMS worker 1 (pid {pids[0]}) exited" in text
    assert not [pid for pid in pids if _alive(pid)]


def test_the_metrics_add_up_every_process(host: TestKmsHost) -> None:
    import urllib.request

    cert = _certificate(host)
    metrics_port = free_port()
    host.start("--workers", str(WORKERS), "--metrics-port", str(metrics_port))
    _start_wait = time.monotonic() + 20
    while "event=listening" not in host.log_path.read_text():
        assert time.monotonic() < _start_wait, host.log_tail()
        time.sleep(0.05)
    for _ in range(40):  # malformed: each process that gets one rejects it
        with socket.create_connection(("127.0.0.1", host.port), timeout=5) as s:
            s.sendall(b"ADBK\x01nonsense")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(512) == b""
    assert _counts(host.port, _wire(cert, 6 << 64, 60)) == Counter(
        {**{c: 1 for c in range(1, CAPACITY)}, CAPACITY: 11}
    )
    time.sleep(2.5)  # the workers report once a second
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "adba_kms_requests_total 60.0" in text
    assert "adba_kms_rejected_total 40.0" in text  # the sum over the processes
    assert f"adba_kms_count {CAPACITY}.0" in text
    host.stop()
    served = _worker_requests(host)
    assert sum(1 for n in served if n) >= 2, served
