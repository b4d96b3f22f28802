"""KMS protocol v2 against a real host: sealed requests, refusals, v1 still answered."""

from __future__ import annotations

import asyncio
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

from adba.catalog import load_catalog
from adba.kms.client import KmsClockSkew, ask, hello
from adba.kms.envelope import seal
from adba.kms.protocol import (
    KIND_SERVER,
    MAX_SKEW,
    REQUEST2_SIZE,
    RESPONSE_SIZE,
    STATUS_CLOCK_SKEW,
    STATUS_KEY,
    STATUS_OK,
    STATUS_REPLAYED,
    HostCertificate,
    Request,
    parse_response,
)
from adba.lab import free_port
from tests.conftest import NOW
from tests.integration.test_kms import SERVER, Machine
from tests.servers import TestKmsHost

pytestmark = pytest.mark.integration

_EDITION = load_catalog().edition(SERVER)
SKU, GROUP = uuid.UUID(str(_EDITION.sku)), uuid.UUID(str(_EDITION.group))


@pytest.fixture
def kms(authority_dir: Path, request: pytest.FixtureRequest) -> Iterator[TestKmsHost]:
    host = TestKmsHost(authority_dir)
    try:
        yield host.start()
    finally:
        host.keep = request.session.testsfailed > 0
        host.destroy()


@pytest.fixture
def root(authority_dir: Path) -> bytes:
    from adba.authority import LocalAuthority

    return LocalAuthority.open(authority_dir).root_public_key


def _ask(port: int, root: bytes, cmid: uuid.UUID, **kw: Any) -> Any:
    return ask(
        "127.0.0.1",
        port,
        cmid=cmid,
        sku=SKU,
        kms_id=GROUP,
        kind=KIND_SERVER,
        machine=kw.pop("machine", "pc-v2"),
        now=NOW,
        root_public_key=root,
        csvlk_skus=_AnySku(),
        **kw,
    )


class _AnySku(tuple[str, ...]):
    def __contains__(self, item: object) -> bool:  # the CSVLK check is not under test here
        return True


def exchange(port: int, payload: bytes) -> bytes:
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            pass
    return data


class Recorder:
    """A TCP relay in front of the host that records every byte, both ways."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.seen = bytearray()
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                self.seen += data
                reply = exchange(self.target, data)
                self.seen += reply
                conn.sendall(reply)

    def close(self) -> None:
        self.sock.close()


def _sealed(cert: HostCertificate, cmid: uuid.UUID | None = None, when: int | None = None) -> bytes:
    when = int(time.time()) if when is None else when
    req = Request(KIND_SERVER, cmid or uuid.uuid4(), SKU, GROUP, when, os.urandom(16), "pc")
    return seal(req, cert)


def test_v2_round_trip_then_the_kept_certificate_skips_the_hello(
    kms: TestKmsHost, root: bytes
) -> None:
    relay = Recorder(kms.port)
    try:
        cmid = uuid.uuid4()
        first = _ask(relay.port, root, cmid)
        assert first.response.status == STATUS_OK and first.response.version == 2
        assert first.response.count == 1
        assert relay.connections == 2  # hello, then the sealed request
        again = _ask(relay.port, root, cmid, certificate=first.response.certificate)
        assert again.response.count == 1  # the same machine, counted once
        assert relay.connections == 3  # one exchange: no hello
        other = _ask(relay.port, root, uuid.uuid4(), certificate=first.response.certificate)
        assert other.response.count == 2
    finally:
        relay.close()


def test_a_passive_capture_of_v2_holds_neither_the_cmid_nor_the_machine_name(
    kms: TestKmsHost, authority_dir: Path, tmp_path: Path, root: bytes
) -> None:
    relay = Recorder(kms.port)
    try:
        machine = Machine(
            tmp_path, "secret-pc-name", authority_dir, SERVER, kms_host=f"127.0.0.1:{relay.port}"
        )
        assert machine.run().code == "kms-count-low"  # answered: count 1 of 5
        assert machine.run().code == "kms-count-low"  # a renewal, sealed to the kept key
        cmid = uuid.UUID(json.loads(machine.state.read_text())["cmid"])
        seen = bytes(relay.seen)
        assert len(seen) > 3 * 200  # hello + two requests and their answers were recorded
        for needle in (cmid.bytes, str(cmid).encode(), cmid.hex.encode(), b"secret-pc-name"):
            assert needle not in seen, needle
        # the control: version 1 through the same relay does show both
        _ask(relay.port, root, cmid, version=1, machine="secret-pc-name")
        assert cmid.bytes in relay.seen and b"secret-pc-name" in relay.seen
    finally:
        relay.close()


def test_a_tampered_v2_request_is_closed_unanswered_and_counts_nobody(
    kms: TestKmsHost, root: bytes
) -> None:
    cert = hello("127.0.0.1", kms.port, root_public_key=root)
    good = _sealed(cert)
    assert len(good) == REQUEST2_SIZE
    # a flipped bit anywhere in the header's authenticated fields or in the ciphertext
    offsets = {
        "kind": 5,
        "flags": 7,
        "time": 15,
        "nonce": 20,
        "ephemeral": 50,
        "ciphertext": 100,
        "tag": REQUEST2_SIZE - 1,
    }
    for name, at in offsets.items():
        bad = good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1 :]
        assert exchange(kms.port, bad) == b"", name
    # a request sealed to another key ID is answered "key" (with the real certificate), uncounted
    other = good[:32] + bytes([good[32] ^ 0xFF]) + good[33:]
    resp = parse_response(exchange(kms.port, other))
    assert resp.status == STATUS_KEY and resp.count == 0
    assert resp.certificate.public_key == cert.public_key
    # the good one, sent after all those, is the first machine counted
    reply = exchange(kms.port, good)
    assert len(reply) == RESPONSE_SIZE and parse_response(reply).count == 1
    assert "malformed" in kms.log_text()


def test_a_replayed_v2_request_is_refused(kms: TestKmsHost, root: bytes) -> None:
    cert = hello("127.0.0.1", kms.port, root_public_key=root)
    payload = _sealed(cert)
    first = parse_response(exchange(kms.port, payload))
    assert first.status == STATUS_OK and first.count == 1
    for _ in range(2):
        again = parse_response(exchange(kms.port, payload))
        assert again.status == STATUS_REPLAYED and again.count == 0
    # a fresh request from the same sender is answered
    assert parse_response(exchange(kms.port, _sealed(cert))).count == 2


def test_a_v1_client_still_works(kms: TestKmsHost, root: bytes) -> None:
    answer = _ask(kms.port, root, uuid.uuid4(), version=1)
    assert answer.response.version == 1 and answer.response.status == STATUS_OK
    assert answer.response.count == 1


def test_clock_skew_against_the_real_host_process(kms: TestKmsHost, root: bytes) -> None:
    now = int(time.time())
    with pytest.raises(KmsClockSkew) as caught:  # behind by 4 h + 1 s: always more than 4 h
        _ask(kms.port, root, uuid.uuid4(), sent_at=now - MAX_SKEW - 1)
    assert caught.value.code == "kms-clock-skew" and "behind" in caught.value.message
    ok = _ask(kms.port, root, uuid.uuid4(), sent_at=now + MAX_SKEW - 1)  # ahead 4 h - 1 s
    assert ok.response.status == STATUS_OK and ok.response.count == 1


@pytest.fixture
def inproc(authority_dir: Path, tmp_path: Path) -> Iterator[tuple[int, list[float]]]:
    """The real asyncio server in this process with its real clock injected (wall)."""
    from adba.authority import LocalAuthority
    from adba.keys import KeyType
    from adba.kms.host import HostIdentity, KmsHost
    from adba.kms.store import KmsStore

    auth = LocalAuthority.open(authority_dir)
    key = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", load_catalog(), now=NOW).text
    state = tmp_path / "host"
    identity = HostIdentity.install(state, key, auth, load_catalog(), host_id="skew", now=NOW)
    wall = [float(NOW)]
    host = KmsHost(
        identity, KmsStore(state / "kms.sqlite"), clock=lambda: wall[0], wall=lambda: wall[0]
    )
    port = free_port()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(host.serve(["127.0.0.1"], port),), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.02)
    try:
        yield port, wall
    finally:
        loop.call_soon_threadsafe(host.stop)
        thread.join(10)
        loop.close()
        host.store.close()


@pytest.mark.parametrize(
    ("offset", "refused"),
    [
        (MAX_SKEW + 1, True),
        (-(MAX_SKEW + 1), True),
        (MAX_SKEW - 1, False),
        (-(MAX_SKEW - 1), False),
        (MAX_SKEW, False),
    ],
)
def test_clock_skew_4h_plus_1s_refused_4h_minus_1s_accepted(
    inproc: tuple[int, list[float]], root: bytes, offset: int, refused: bool
) -> None:
    port, _wall = inproc
    cert = hello("127.0.0.1", port, root_public_key=root, sent_at=NOW)
    raw = parse_response(exchange(port, _sealed(cert, when=NOW + offset)))
    assert raw.status == (STATUS_CLOCK_SKEW if refused else STATUS_OK)
    assert raw.host_time == NOW and raw.count == (0 if refused else 1)
    if refused:
        with pytest.raises(KmsClockSkew) as caught:
            _ask(port, root, uuid.uuid4(), certificate=cert, sent_at=NOW + offset)
        assert caught.value.code == "kms-clock-skew"
        assert f"{MAX_SKEW + 1} s" in caught.value.message
    else:
        assert _ask(port, root, uuid.uuid4(), certificate=cert, sent_at=NOW + offset)


def test_the_agent_records_kms_clock_skew(
    inproc: tuple[int, list[float]], authority_dir: Path, tmp_path: Path
) -> None:
    port, wall = inproc
    wall[0] = time.time() + MAX_SKEW + 60  # the host's clock is 4 h 1 min ahead of ours
    m = Machine(tmp_path, "late-pc", authority_dir, SERVER, kms_host=f"127.0.0.1:{port}")
    outcome = m.run()
    assert outcome.code == "kms-clock-skew" and not outcome.activated
    assert "refused our clock" in outcome.message and "ahead" not in outcome.message


def test_the_host_serves_v1_and_v2_on_uvloop(
    authority_dir: Path, tmp_path: Path, root: bytes
) -> None:
    """`kms serve` runs on uvloop when it is installed: the same answers on its transports."""
    uvloop = pytest.importorskip("uvloop")
    from adba.authority import LocalAuthority
    from adba.keys import KeyType
    from adba.kms.host import HostIdentity, KmsHost
    from adba.kms.store import KmsStore

    auth = LocalAuthority.open(authority_dir)
    key = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", load_catalog(), now=NOW).text
    state = tmp_path / "host"
    identity = HostIdentity.install(state, key, auth, load_catalog(), host_id="uv", now=NOW)
    host = KmsHost(identity, KmsStore(state / "kms.sqlite"))
    port = free_port()
    loop = uvloop.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(host.serve(["127.0.0.1"], port),), daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        assert _ask(port, root, uuid.uuid4()).response.count == 1
        assert _ask(port, root, uuid.uuid4(), version=1).response.count == 2
        assert exchange(port, b"x" * 300) == b""  # too long: cut
    finally:
        loop.call_soon_threadsafe(host.stop)
        thread.join(10)
        loop.close()
        host.store.close()
