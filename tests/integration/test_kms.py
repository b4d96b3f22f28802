"""KMS end to end: real `adba kms serve` processes, real agents, a real named for SRV."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adba.agent import run_agent, status
from adba.cli import main
from adba.kms.protocol import HELLO_SIZE, REQUEST_SIZE, Request
from adba.lab import free_port
from tests.conftest import NOW
from tests.servers import TestKmsHost, TestNamed, dead_port

pytestmark = pytest.mark.integration

CLIENT = "Nimbus Workstation Enterprise"
SERVER = "Nimbus Server Standard"


@pytest.fixture
def kms(authority_dir: Path, request: pytest.FixtureRequest) -> Iterator[TestKmsHost]:
    host = TestKmsHost(authority_dir)
    try:
        yield host.start()
    finally:
        host.keep = request.session.testsfailed > 0
        host.destroy()


class Machine:
    """One client machine: its own agent config and state (so its own CMID)."""

    def __init__(
        self, tmp: Path, name: str, authority: Path, edition: str, **settings: Any
    ) -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True)
        self.config = self.dir / "agent.toml"
        self.state = self.dir / "state.json"
        values = {
            "root_key": str(authority / "root.pub"),
            "state_path": str(self.state),
            "machine_name": name,
            **settings,
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
        lines += ["[intervals]", "connect_timeout = 1.0", "[[products]]", f'edition = "{edition}"']
        self.config.write_text("\n".join(lines) + "\n")

    def run(self, now: int = NOW) -> Any:
        [outcome] = run_agent(str(self.config), env={}, now=now).outcomes
        return outcome

    def status(self, now: int = NOW) -> dict[str, Any]:
        [st] = status(str(self.state), now=now)
        return st._asdict()


def fleet(tmp: Path, authority: Path, edition: str, n: int, **settings: Any) -> list[Machine]:
    return [Machine(tmp, f"pc{i:03d}", authority, edition, **settings) for i in range(n)]


def wait_status(host: TestKmsHost, key: str, value: object, timeout: float = 5.0) -> dict[str, Any]:
    """The host saves its records once a second: wait until `kms status` shows the value."""
    deadline = time.monotonic() + timeout
    while True:
        st = host.status()
        if st.get(key) == value or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def test_24_clients_wait_the_25th_activates_then_all_do(
    kms: TestKmsHost, authority_dir: Path, tmp_path: Path
) -> None:
    machines = fleet(tmp_path, authority_dir, CLIENT, 25, kms_host=kms.address)
    first = [m.run() for m in machines[:24]]
    assert not any(o.activated for o in first)
    assert first[0].code == "kms-count-low" and "count 1, 25 needed" in first[0].message
    assert "count 24, 25 needed" in first[-1].message
    st = machines[0].status()
    assert st["status"] == "grace" and st["next_attempt"] == NOW + 2 * 3600
    assert st["kms_host"] == kms.address and st["kms_count"] == 1
    assert machines[24].run().activated
    again = [m.run(now=NOW + 2 * 3600) for m in machines[:24]]
    assert all(o.activated for o in again)
    st = machines[0].status(now=NOW + 2 * 3600)
    assert (st["status"], st["channel"], st["kms_count"]) == ("licensed", "KMS", 25)
    assert st["expires_at"] == NOW + 2 * 3600 + 180 * 86400
    assert st["next_attempt"] == NOW + 2 * 3600 + 7 * 86400
    view = wait_status(kms, "count", 25)
    assert view["count"] == 25 and view["cache_capacity"] == 50
    clients = kms.clients()
    assert {c["machine"] for c in clients} == {m.dir.name for m in machines}
    assert all(c["state"] == "activated" for c in clients)  # each one's last answer was >= 25


def test_servers_at_5_cache_10_then_50_survives_restart(
    kms: TestKmsHost, authority_dir: Path, tmp_path: Path
) -> None:
    servers = fleet(tmp_path / "s", authority_dir, SERVER, 5, kms_host=kms.address)
    outcomes = [m.run() for m in servers]
    assert [o.activated for o in outcomes] == [False] * 4 + [True]
    assert servers[0].run().code == "activated"  # count 5 now: the first one activates too
    assert servers[0].run().activated  # the same CMID again: still 5, counted once
    st = wait_status(kms, "count", 5)
    assert st["cache_capacity"] == 10
    clients = fleet(tmp_path / "c", authority_dir, CLIENT, 1, kms_host=kms.address)
    assert not clients[0].run().activated  # count 6 < 25
    st = wait_status(kms, "cache_capacity", 50)
    assert st["count"] == 6 and st["cache_capacity"] == 50
    kms.restart()
    st = kms.status()
    assert (st["count"], st["cache_capacity"]) == (6, 50)
    assert len(kms.clients()) == 6
    assert servers[1].run(now=NOW + 60).activated  # counts kept across the restart


def test_a_host_whose_key_does_not_cover_the_product_is_not_used(
    authority_dir: Path, tmp_path: Path
) -> None:
    host = TestKmsHost(authority_dir, product="Nimbus Client 2026 CSVLK").start()
    try:
        [m] = fleet(tmp_path, authority_dir, SERVER, 1, kms_host=host.address)
        outcome = m.run()
        assert not outcome.activated and "cannot activate this product" in outcome.message
    finally:
        host.destroy()


@pytest.fixture
def two_hosts(authority_dir: Path) -> Iterator[list[TestKmsHost]]:
    hosts = [TestKmsHost(authority_dir) for _ in range(2)]
    try:
        yield [h.start() for h in hosts]
    finally:
        for h in hosts:
            h.destroy()


def test_discovery_skips_a_dead_host_caches_the_answer_and_static_wins(
    two_hosts: list[TestKmsHost], named: TestNamed, authority_dir: Path, tmp_path: Path
) -> None:
    a, b = two_hosts
    dead = dead_port()
    zone = named.zone
    named.update(
        "_vlmcs._tcp",
        "SRV",
        [
            f"0 100 {dead} kms-dead.{zone}.",
            f"10 50 {a.port} kms-a.{zone}.",
            f"10 50 {b.port} kms-b.{zone}.",
        ],
    )
    for name in ("kms-dead", "kms-a", "kms-b"):
        named.update(name, "A", ["127.0.0.1"])
    try:
        [m] = fleet(tmp_path, authority_dir, SERVER, 1, domain=zone, dns_servers=[named.nameserver])
        started = time.monotonic()
        outcome = m.run()
        assert (
            time.monotonic() - started < 2.0
        )  # the dead host refuses at once; slack for a busy CI
        assert outcome.code == "kms-count-low"  # an answer (count 1): the dead host was skipped
        used = m.status()["kms_host"]
        assert used in (a.address, b.address)
        # the cached host is asked first next time, even with DNS pointing elsewhere
        named.update("_vlmcs._tcp", "SRV", [f"0 100 {dead} kms-dead.{zone}."])
        assert m.run(now=NOW + 7200).code == "kms-count-low"
        assert m.status(now=NOW + 7200)["kms_host"] == used
        # a static host wins over both
        other = b if used == a.address else a
        static = Machine(
            tmp_path,
            "static",
            authority_dir,
            SERVER,
            kms_host=other.address,
            domain=zone,
            dns_servers=[named.nameserver],
        )
        static.run()
        assert static.status()["kms_host"] == other.address
        # the cached host dies: DNS is asked again (it now names only the dead one)
        (a if used == a.address else b).stop()
        outcome = m.run(now=NOW + 14400)
        assert outcome.code == "kms-unreachable" and not outcome.activated
    finally:
        named.update("_vlmcs._tcp", "SRV", [])


class Proxy:
    """A TCP relay in front of a real host that tampers with what comes back."""

    def __init__(self, target: int, mode: str) -> None:
        self.target, self.mode = target, mode
        self.recorded: bytes | None = None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                with socket.create_connection(("127.0.0.1", self.target)) as up:
                    up.sendall(data)
                    up.shutdown(socket.SHUT_WR)
                    reply = b""
                    while chunk := up.recv(4096):
                        reply += chunk
                if self.mode == "alter":
                    reply = reply[:22] + bytes([reply[22] ^ 0xFF]) + reply[23:]  # the count
                elif self.mode == "replay":  # the first answer to a request (not a hello)
                    if len(data) != HELLO_SIZE:
                        self.recorded = self.recorded or reply
                    reply = self.recorded or reply
                conn.sendall(reply)

    def close(self) -> None:
        self.sock.close()


def test_rogue_hosts_never_activate_anyone(
    kms: TestKmsHost, authority_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the real host has enough servers: any verified answer would activate
    for m in fleet(tmp_path / "real", authority_dir, SERVER, 5, kms_host=kms.address):
        m.run()
    rogue_authority = tmp_path / "rogue-authority"
    from adba.authority import LocalAuthority

    LocalAuthority.init(rogue_authority, now=NOW - 86400)
    rogue = TestKmsHost(rogue_authority).start()  # activated by an authority we do not pin
    for m in fleet(tmp_path / "rogue", rogue_authority, SERVER, 5, kms_host=rogue.address):
        m.run()
    alter, replay = Proxy(kms.port, "alter"), Proxy(kms.port, "replay")
    try:
        replay_seed = Machine(
            tmp_path, "seed", authority_dir, SERVER, kms_host=f"127.0.0.1:{replay.port}"
        )
        assert replay_seed.run().activated  # the first answer through the relay is genuine
        cases = {
            "own-key": rogue.address,
            "altered": f"127.0.0.1:{alter.port}",
            "replayed": f"127.0.0.1:{replay.port}",
        }
        with caplog.at_level("WARNING", logger="adba"):
            for name, address in cases.items():
                victim = Machine(
                    tmp_path, f"victim-{name}", authority_dir, SERVER, kms_host=address
                )
                outcome = victim.run()
                assert not outcome.activated and outcome.code == "kms-rogue-host", (name, outcome)
                assert victim.status()["status"] != "licensed"
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "not certified by the pinned authority" in messages
        assert "did not sign" in messages
        assert "replayed" in messages or "did not sign" in messages
    finally:
        alter.close()
        replay.close()
        rogue.destroy()


def _send(
    port: int, payload: bytes, *, half_close: bool = True, pause: float = 0
) -> tuple[bytes, float]:
    """Send (slowly, in 16-byte pieces, if ``pause``); returns (reply, seconds until closed)."""
    started = time.monotonic()
    step = 16 if pause else max(len(payload), 1)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            for i in range(0, len(payload), step):
                s.sendall(payload[i : i + step])
                if pause:
                    time.sleep(pause)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # broken pipe, reset, not connected: the host hung up, as it should
            pass
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except OSError:  # reset or timed out: the host closed it
            pass
    return data, time.monotonic() - started


def test_malformed_input_is_closed_within_the_deadline_and_nothing_is_stored(
    kms: TestKmsHost, authority_dir: Path, tmp_path: Path
) -> None:
    good = Request(1, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), NOW, os.urandom(16), "x").encode()
    cases = {
        "truncated": good[:-10],
        "oversized": good + b"\0" * 10,
        "wrong-version": good[:4] + b"\x09" + good[5:],
        "random": os.urandom(REQUEST_SIZE),
        "huge": os.urandom(1 << 20),
    }
    for name, payload in cases.items():
        data, took = _send(kms.port, payload)
        assert data == b"", name
        assert took < kms.deadline + 1.5, name
    # a slow sender and one that never finishes: cut at the deadline (1 s)
    data, took = _send(kms.port, good, pause=0.2)
    assert data == b"" and took < kms.deadline + 2.0
    data, took = _send(kms.port, good[:50], half_close=False)
    assert data == b"" and kms.deadline - 0.2 < took < kms.deadline + 2.0
    # the host still serves others, and stored nothing from the above
    [m] = fleet(tmp_path, authority_dir, SERVER, 1, kms_host=kms.address)
    assert m.run().code == "kms-count-low"
    st = wait_status(kms, "count", 1)
    assert st["count"] == 1
    assert "event=rejected" in kms.log_text()


def test_publish_srv_with_the_host_and_refusals(
    authority_dir: Path, named: TestNamed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "tsig.key"
    key.write_text(
        f'key "{named.keyname}" {{ algorithm hmac-sha256; secret "{named.secret}"; }};\n'
    )
    host = TestKmsHost(authority_dir)
    try:
        host.start(
            "--publish",
            f"{named.zone},10,60",
            "--dns-server",
            named.nameserver,
            "--tsig-key-file",
            str(key),
            "--host-name",
            f"kms-pub.{named.zone}",
            "--address",
            "127.0.0.1",
        )
        from adba.discovery import kms_srv_names, locate, make_resolver

        deadline = time.monotonic() + 5
        targets = []
        while time.monotonic() < deadline and not targets:
            targets = locate(kms_srv_names(named.zone), make_resolver([named.nameserver]))
            time.sleep(0.1)
        assert [(t.host, t.port, t.priority, t.weight, t.addresses) for t in targets] == [
            (f"kms-pub.{named.zone}", host.port, 10, 60, ("127.0.0.1",))
        ]
        assert wait_status(host, "published", host.status()["published"])["published"]
        # an agent finds it through DNS alone
        [m] = fleet(
            tmp_path, authority_dir, SERVER, 1, domain=named.zone, dns_servers=[named.nameserver]
        )
        assert m.run().code == "kms-count-low" and m.status()["kms_host"] == host.address
        # by hand, with a key the server rejects: a clear error, exit 18
        bad = tmp_path / "bad.key"
        bad.write_text(
            f'key "{named.keyname}" {{ algorithm hmac-sha256; secret "' + "QUJD" * 11 + '"; };\n'
        )
        code = main(
            [
                "kms",
                "publish",
                "--state-dir",
                str(host.dir),
                "--port",
                str(host.port),
                "--publish",
                named.zone,
                "--dns-server",
                named.nameserver,
                "--tsig-key-file",
                str(bad),
                "--host-name",
                f"kms-pub.{named.zone}",
            ]
        )
        err = capsys.readouterr().err
        assert code == 18 and "TSIG key" in err and err.count("\n") == 1
        # by hand, with the right key: unpublish removes this host's record
        code = main(
            [
                "kms",
                "unpublish",
                "--state-dir",
                str(host.dir),
                "--port",
                str(host.port),
                "--publish",
                f"{named.zone},10,60",
                "--dns-server",
                named.nameserver,
                "--tsig-key-file",
                str(key),
                "--host-name",
                f"kms-pub.{named.zone}",
                "--address",
                "127.0.0.1",
            ]
        )
        assert code == 0 and "removed from" in capsys.readouterr().out
        assert locate(kms_srv_names(named.zone), make_resolver([named.nameserver])) == []
    finally:
        host.destroy()
        named.update("_vlmcs._tcp", "SRV", [])
        named.update("kms-pub", "A", [])


def test_the_host_serves_ipv6_too(authority_dir: Path, tmp_path: Path) -> None:
    host = TestKmsHost(authority_dir)
    try:
        host.start("--listen", "::1")
        [m] = fleet(tmp_path, authority_dir, SERVER, 1, kms_host=f"[::1]:{host.port}")
        assert m.run().code == "kms-count-low"
        assert m.status()["kms_host"] == f"[::1]:{host.port}"
        assert f"::1:{host.port}" in host.log_text()
    finally:
        host.destroy()


def test_connection_limit_and_metrics(authority_dir: Path, tmp_path: Path) -> None:
    import urllib.request

    metrics_port = free_port()
    host = TestKmsHost(authority_dir, deadline=3.0)
    idle: list[socket.socket] = []
    try:
        host.start("--max-connections", "2", "--metrics-port", str(metrics_port))
        for _ in range(2):  # two slow clients hold the two slots
            s = socket.create_connection(("127.0.0.1", host.port))
            s.sendall(b"ADBK")
            idle.append(s)
        time.sleep(0.2)
        data, took = _send(host.port, b"x" * REQUEST_SIZE)
        assert data == b"" and took < 1.0  # refused at once, not after the deadline
        for s in idle:
            s.close()
        time.sleep(0.2)
        [m] = fleet(tmp_path, authority_dir, SERVER, 1, kms_host=host.address)
        assert m.run().code == "kms-count-low"  # slots free again
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "adba_kms_requests_total 1.0" in text
        # one address held both slots: the third from it is over its share (2 of 2)
        assert "adba_kms_refused_per_source_total 1.0" in text
        assert "adba_kms_count 1.0" in text and "adba_kms_cache_capacity 10.0" in text
    finally:
        for s in idle:
            s.close()
        host.destroy()


def test_a_served_entry_older_than_30_days_drops_out_with_an_injected_clock(
    authority_dir: Path, tmp_path: Path
) -> None:
    """The real asyncio server (in this process, on a real socket) with a fake clock."""
    import asyncio

    from adba.kms.host import HostIdentity, KmsHost
    from adba.kms.store import KmsStore

    state = tmp_path / "host"
    from adba.authority import LocalAuthority
    from adba.catalog import load_catalog
    from adba.keys import KeyType

    auth = LocalAuthority.open(authority_dir)
    key = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", load_catalog(), now=NOW).text
    identity = HostIdentity.install(state, key, auth, load_catalog(), host_id="clock", now=NOW)
    clock = [float(NOW)]
    host = KmsHost(identity, KmsStore(state / "kms.sqlite"), clock=lambda: clock[0])
    port = free_port()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete,
        args=(host.serve(["127.0.0.1"], port),),
        daemon=True,
    )
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        old = Machine(tmp_path, "old", authority_dir, SERVER, kms_host=f"127.0.0.1:{port}")
        assert "count 1," in old.run().message
        clock[0] += 29 * 86400
        new = Machine(tmp_path, "new", authority_dir, SERVER, kms_host=f"127.0.0.1:{port}")
        assert "count 2," in new.run(now=int(clock[0])).message
        clock[0] += 2 * 86400  # "old" is now 31 days old: it drops out of the count
        later = Machine(tmp_path, "later", authority_dir, SERVER, kms_host=f"127.0.0.1:{port}")
        assert "count 2," in later.run(now=int(clock[0])).message
        assert old.dir.name not in {r.machine for r in host.cache.entries.values()}
    finally:
        loop.call_soon_threadsafe(host.stop)
        thread.join(10)
        loop.close()
        host.store.close()


def test_probe_answers_without_counting(
    kms: TestKmsHost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kms", "probe", kms.address]) == 0
    assert "answers (protocol v2" in capsys.readouterr().out
    assert main(["kms", "probe", f"127.0.0.1:{dead_port()}", "--timeout", "1"]) == 19
    capsys.readouterr()
    time.sleep(1.2)
    assert kms.status()["count"] == 0
