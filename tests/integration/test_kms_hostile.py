"""The KMS host under hostile input and faults, as real processes: slowloris from one address
while another activates, a flood of bad packets against a bounded log, a locked database
during saves, more machines than the cache holds, and a bounded fuzz run."""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adba.catalog import load_catalog
from adba.kms.protocol import (
    KIND_SERVER,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    STATUS_OK,
    Request,
    parse_response,
    response_message,
)
from tests.integration.test_kms import SERVER, Machine, fleet, wait_status
from tests.servers import TestKmsHost

pytestmark = pytest.mark.integration

_SERVER_EDITION = load_catalog().edition(SERVER)
_CLIENT_EDITION = load_catalog().edition("Nimbus Workstation Enterprise")


def request(cmid: uuid.UUID | None = None, *, kind: int = KIND_SERVER, name: str = "pc") -> Request:
    edition = _SERVER_EDITION if kind == KIND_SERVER else _CLIENT_EDITION
    return Request(
        kind,
        cmid or uuid.uuid4(),
        uuid.UUID(str(edition.sku)),
        uuid.UUID(str(edition.group)),
        int(time.time()),
        os.urandom(16),
        name,
    )


def exchange(
    port: int, payload: bytes, *, source: str = "127.0.0.1", timeout: float = 3.0
) -> bytes:
    """One connection from ``source`` (any 127/8 address works on Linux): send, half-close,
    read to EOF. Any socket error means the host hung up: returns what came."""
    data = b""
    with socket.socket() as s:
        s.settimeout(timeout)
        try:
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            pass
    return data


def activate(port: int, req: Request, *, source: str = "127.0.0.1", timeout: float = 3.0) -> int:
    """A real activation: the answer must be complete, ours (nonce) and signed by the host's
    certified key over our request. Returns the count; raises AssertionError otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    payload = req.encode()
    data = exchange(port, payload, source=source, timeout=timeout)
    assert len(data) == RESPONSE_SIZE, f"{len(data)} bytes"
    resp = parse_response(data)
    assert resp.status == STATUS_OK and resp.nonce == req.nonce
    Ed25519PublicKey.from_public_bytes(resp.certificate.public_key).verify(
        resp.signature, response_message(payload, data[:-64])
    )
    return resp.count


def table_rows(host: TestKmsHost) -> int:
    db = sqlite3.connect(f"file:{host.dir / 'kms.sqlite'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM clients").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def hosts(authority_dir: Path, request: pytest.FixtureRequest) -> Iterator[list[TestKmsHost]]:
    """Hosts a test creates (append); destroyed afterwards, kept when a test failed."""
    made: list[TestKmsHost] = []
    yield made
    for host in made:
        host.keep = request.session.testsfailed > 0
        host.destroy()


def new_host(hosts: list[TestKmsHost], authority: Path, *extra: str, **kw: object) -> TestKmsHost:
    host = TestKmsHost(authority, **kw)  # type: ignore[arg-type]
    hosts.append(host)
    return host.start(*extra)


# -- slowloris -------------------------------------------------------------------------------
class Trickler:
    """One address holding ``n`` connections open, each sending a byte every ``every`` s and
    reconnecting at once when the host closes it: the slowloris of the review."""

    def __init__(self, port: int, n: int, *, source: str = "127.0.0.1", every: float = 0.3):
        self.port, self.n, self.source, self.every = port, n, source, every
        self.stop = threading.Event()
        self.connects = 0
        self.closed_by_host = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        s.bind((self.source, 0))
        s.connect_ex(("127.0.0.1", self.port))
        self.connects += 1
        return s

    def _run(self) -> None:
        socks = [self._open() for _ in range(self.n)]
        try:
            while not self.stop.is_set():
                for i, s in enumerate(socks):
                    try:
                        if s.send(b"A") != 1:
                            raise OSError("not sent")
                    except (BlockingIOError, InterruptedError):
                        continue  # still connecting
                    except OSError:
                        self.closed_by_host += 1
                        s.close()
                        socks[i] = self._open()
                self.stop.wait(self.every)
        finally:
            for s in socks:
                s.close()

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_slowloris_from_one_address_does_not_starve_another(
    hosts: list[TestKmsHost], authority_dir: Path
) -> None:
    host = new_host(hosts, authority_dir, deadline=2.0)  # defaults: 512 slots, 64 per source
    ok, tries, slow = 0, 120, []
    with Trickler(host.port, 600) as attack:
        time.sleep(1.5)  # the attack is in full swing: 600 trickling connections
        for _ in range(tries):
            started = time.monotonic()
            try:
                activate(host.port, request(), source="127.0.0.2", timeout=3.0)
                ok += 1
            except AssertionError:
                pass
            slow.append(time.monotonic() - started)
            time.sleep(0.02)
        assert attack.connects > 600 and attack.closed_by_host > 50  # it really attacked
    assert ok / tries >= 0.95, f"{ok}/{tries} activations, slowest {max(slow):.2f} s"
    assert host.proc is not None and host.proc.poll() is None
    log = host.log_text()
    assert "reason=source-limit" in log or "source-limit=" in log


def test_when_every_slot_is_taken_the_fullest_source_gives_way(
    hosts: list[TestKmsHost], authority_dir: Path
) -> None:
    host = new_host(
        hosts,
        authority_dir,
        "--max-connections",
        "20",
        "--max-per-source",
        "16",
        "--first-byte-deadline",
        "5",
        deadline=5.0,
    )
    held: dict[str, list[socket.socket]] = {"127.0.0.1": [], "127.0.0.3": []}
    try:
        for source, n in (("127.0.0.1", 16), ("127.0.0.3", 4)):
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", host.port), source_address=(source, 0))
                s.sendall(b"ADBK")
                held[source].append(s)

        def closed(s: socket.socket) -> bool:
            s.setblocking(False)
            try:
                return s.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        def hold(source: str) -> None:
            s = socket.create_connection(("127.0.0.1", host.port), source_address=(source, 0))
            s.sendall(b"ADBK")
            held[source].append(s)
            time.sleep(0.2)

        time.sleep(0.3)  # all 20 slots are held
        # a newcomer gets in: the source holding 16 gives one up (not the one holding 4)
        assert activate(host.port, request(), source="127.0.0.2") == 1
        assert sum(map(closed, held["127.0.0.1"])) == 1
        hold("127.0.0.3")  # full again: 15 + 5
        assert activate(host.port, request(), source="127.0.0.3") == 2  # 15 >= 5 + 2
        assert sum(map(closed, held["127.0.0.1"])) == 2
        assert not any(map(closed, held["127.0.0.3"]))
        hold("127.0.0.3")  # full again: 14 + 6
        # the fullest source gains nothing by asking again: refused at once
        started = time.monotonic()
        assert exchange(host.port, request().encode(), source="127.0.0.1") == b""
        assert time.monotonic() - started < 1.0
        assert sum(map(closed, held["127.0.0.1"])) == 2
        assert not any(map(closed, held["127.0.0.3"]))
    finally:
        for socks in held.values():
            for s in socks:
                s.close()


# -- log flooding ----------------------------------------------------------------------------
def test_a_flood_of_bad_packets_leaves_a_bounded_log_that_counts_them_all(
    hosts: list[TestKmsHost], authority_dir: Path
) -> None:
    host = new_host(hosts, authority_dir, "--log-interval", "1")
    good = request().encode()
    kinds = [
        os.urandom(REQUEST_SIZE),  # malformed
        good[:100],  # short: malformed
        good + b"x" * 64,  # too long
        b"XDBK" + good[4:],  # malformed
    ]
    sent = [0]
    lock = threading.Lock()

    def flood(k: int) -> None:
        for i in range(750):
            exchange(host.port, kinds[(i + k) % len(kinds)], timeout=2.0)
            with lock:
                sent[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=flood, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    time.sleep(2.5)  # the last interval's summary
    assert activate(host.port, request()) == 1  # and it still serves
    lines = [line for line in host.log_text().splitlines() if "event=rejected" in line]
    # at most two lines per 1-s interval (the first rejection, then a summary)
    assert len(lines) <= 2 * (took + 3) + 2, (len(lines), took)
    firsts = sum(1 for line in lines if "event=rejected " in line)
    suppressed = sum(
        int(line.split("suppressed=")[1].split()[0]) for line in lines if "suppressed=" in line
    )
    assert firsts + suppressed == sent[0] == 3000  # every one counted, none logged alone


# -- a locked database -----------------------------------------------------------------------
LOCKER = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


class Locker:
    """Another process holding an exclusive lock on the host's database."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def test_a_locked_database_loses_no_acknowledged_machine_and_stalls_nothing(
    hosts: list[TestKmsHost], authority_dir: Path, tmp_path: Path
) -> None:
    host = new_host(hosts, authority_dir)
    db = host.dir / "kms.sqlite"
    locker = Locker(db)
    try:
        machines = fleet(tmp_path / "a", authority_dir, SERVER, 8, kms_host=host.address)
        slowest = 0.0
        for i, m in enumerate(machines):
            started = time.monotonic()
            outcome = m.run()
            slowest = max(slowest, time.monotonic() - started)
            assert f"count {i + 1}" in outcome.message or outcome.activated
            time.sleep(0.3)  # saves are tried (and fail) meanwhile
        assert slowest < 1.0, slowest  # SQLite's lock never stalls an answer
        assert "event=flush-failed" in host.log_text()
        assert table_rows(host) == 0
    finally:
        locker.release()
    st = wait_status(host, "count", 8, timeout=20)  # the retry (with backoff) saved them all
    assert st["count"] == 8 and table_rows(host) == 8
    assert "event=flush-recovered" in host.log_text()
    host.restart()
    assert host.status()["count"] == 8
    assert {c["machine"] for c in host.clients()} == {m.dir.name for m in machines}

    # the host stops while the database is still locked: the snapshot goes to a side file
    locker = Locker(db)
    try:
        late = Machine(tmp_path, "late", authority_dir, SERVER, kms_host=host.address)
        assert late.run().activated  # count 9 >= 5
        host.stop()
        assert (host.dir / "kms.unsaved.json").is_file()
        st = host.status()
        assert st["count"] == 9 and st["unsaved"] is True  # status merges it
    finally:
        locker.release()
    host.start()
    st = wait_status(host, "unsaved", False, timeout=10)
    assert st["count"] == 9 and table_rows(host) == 9
    assert not (host.dir / "kms.unsaved.json").exists()
    assert "late" in {c["machine"] for c in host.clients()}


# -- saved records do not drift --------------------------------------------------------------
def test_the_table_mirrors_the_cache_with_more_machines_than_it_holds(
    hosts: list[TestKmsHost], authority_dir: Path
) -> None:
    host = new_host(hosts, authority_dir)
    cmids = [uuid.uuid4() for _ in range(200)]  # unauthenticated: anyone can send CMIDs

    def ask_all(part: list[uuid.UUID]) -> None:
        for c in part:
            activate(host.port, request(c))

    threads = [threading.Thread(target=ask_all, args=(cmids[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the evicted ones ask again: each comes back in, another leaves
    counts = [activate(host.port, request(c)) for c in cmids[:15]]
    assert counts == [10] * 15  # a cache of 10 (servers only)
    st = wait_status(host, "count", 10)
    time.sleep(1.5)  # one more save interval: nothing pending
    assert (st["count"], st["cache_capacity"], table_rows(host)) == (10, 10, 10)
    assert {m["cmid"] for m in host.status()["machines"]} == {str(c) for c in cmids[5:15]}
    assert len(host.clients()) == 10

    host.restart()
    st = host.status()
    assert (st["count"], st["cache_capacity"]) == (10, 10)
    assert activate(host.port, request(cmids[14])) == 10  # known: counted once
    assert activate(host.port, request()) == 10  # new: the oldest leaves

    # a table an older version left drifting (stale, expired, beyond the capacity)
    host.stop()
    db = sqlite3.connect(host.dir / "kms.sqlite")
    now = int(time.time())
    with db:
        for i in range(60):
            seen = now - (40 * 86400 if i % 3 == 0 else 3600 + i)
            db.execute(
                "INSERT INTO clients VALUES (?, ?, ?, 1, 'stale', ?, ?, 0)",
                (
                    str(uuid.uuid4()),
                    str(_SERVER_EDITION.group),
                    str(_SERVER_EDITION.sku),
                    seen,
                    seen,
                ),
            )
    db.close()
    assert host.status()["count"] == 10  # status counts what the cache would hold
    host.start()
    assert activate(host.port, request(cmids[14])) == 10
    time.sleep(1.5)
    assert table_rows(host) == 10 and host.status()["count"] == 10
    assert "stale" not in {c["machine"] for c in host.clients()}


# -- fuzz ------------------------------------------------------------------------------------
def _mutate(rng: random.Random, good: bytes) -> bytes:
    how = rng.randrange(6)
    data = bytearray(good)
    if how == 0:
        return rng.randbytes(rng.randrange(0, 400))
    if how == 1:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if how == 2:
        return bytes(data[: rng.randrange(len(data))])
    if how == 3:
        return bytes(data) + rng.randbytes(rng.randrange(1, 40))
    if how == 4:  # one field set to a random value
        start = rng.choice([0, 4, 5, 6, 8, 24, 40, 56, 64, 80, 81])
        end = min(len(data), start + rng.choice([1, 2, 4, 16]))
        data[start:end] = rng.randbytes(end - start)
        return bytes(data)
    return bytes(data[:80]) + bytes([rng.randrange(256)]) + rng.randbytes(63)  # the name


def test_fuzzed_packets_never_crash_the_host_or_get_a_wrong_answer(
    hosts: list[TestKmsHost], authority_dir: Path, tmp_path: Path
) -> None:
    host = new_host(hosts, authority_dir, "-q")
    stop = threading.Event()
    stats = {"sent": 0, "answered": 0, "wrong": 0}
    lock = threading.Lock()

    def fuzz(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            good = request(name=rng.choice(["pc", "büro", "x" * 63])).encode()
            payload = _mutate(rng, good)
            data = exchange(host.port, payload, timeout=3.0)
            wrong = False
            if data:
                try:
                    resp = parse_response(data)
                    wrong = resp.nonce != payload[64:80] or len(payload) != REQUEST_SIZE
                except Exception:
                    wrong = True
            with lock:
                stats["sent"] += 1
                stats["answered"] += bool(data)
                stats["wrong"] += wrong

    seed = random.randrange(1 << 30)
    threads = [threading.Thread(target=fuzz, args=(seed + k,)) for k in range(3)]
    for t in threads:
        t.start()
    outcomes = []
    try:
        machine = Machine(tmp_path, "honest", authority_dir, SERVER, kms_host=host.address)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # a real agent keeps activating meanwhile
            outcomes.append(machine.run())
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert stats["sent"] > 300, stats
    assert stats["wrong"] == 0, (seed, stats)
    assert outcomes and all(o.code in ("kms-count-low", "activated") for o in outcomes), seed
    assert host.proc is not None and host.proc.poll() is None  # never crashed
    after = Machine(tmp_path, "after", authority_dir, SERVER, kms_host=host.address).run()
    assert after.code in ("kms-count-low", "activated")
    assert "Traceback" not in host.log_text()
    assert json.loads(json.dumps(host.status()))["count"] >= 2
