"""Protocol v2 pieces without I/O: the seal, the key map, strict parsing, the replay cache."""

from __future__ import annotations

import os
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adba.errors import ProtocolError
from adba.kms.client import KmsClockSkew
from adba.kms.envelope import Opener, seal, x25519_public_of
from adba.kms.protocol import (
    HELLO_SIZE,
    KIND_CLIENT,
    REQUEST2_SIZE,
    RESPONSE_SIZE,
    HostCertificate,
    Request,
    pack_hello,
    parse_sealed_header,
    request_of_plaintext,
)
from adba.kms.replay import ReplayCache


def _cert(key: Ed25519PrivateKey) -> HostCertificate:
    pub = key.public_key().public_bytes_raw()
    return HostCertificate(pub, "epid", uuid.uuid4(), 2**31, bytes(64))


def _request(name: str = "secret-pc") -> Request:
    return Request(
        KIND_CLIENT, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), 1_790_000_000, os.urandom(16), name
    )


def test_sizes_stay_under_250_bytes_each_way() -> None:
    assert HELLO_SIZE == 32 and REQUEST2_SIZE == 200 and RESPONSE_SIZE == 244


def test_the_clock_skew_code_is_stable() -> None:
    assert KmsClockSkew.code == "kms-clock-skew"


@pytest.mark.parametrize("_", range(16))
def test_the_certified_key_maps_to_the_hosts_x25519_key(_: int) -> None:
    key = Ed25519PrivateKey.generate()
    opener = Opener(key)  # raises if the host's expansion and the client's map disagree
    assert opener.public == x25519_public_of(key.public_key().public_bytes_raw())


def test_seal_open_round_trip_and_a_fresh_key_each_time() -> None:
    key = Ed25519PrivateKey.generate()
    opener, cert, req = Opener(key), _cert(key), _request()
    a, b = seal(req, cert), seal(req, cert)
    assert len(a) == REQUEST2_SIZE and a[40:72] != b[40:72] and a[72:] != b[72:]
    for sealed in (a, b):
        header = parse_sealed_header(sealed)
        assert header.key_id == opener.key_id
        assert request_of_plaintext(header, opener.open(sealed)) == req
    assert req.cmid.bytes not in a and b"secret-pc" not in a


def test_every_flipped_byte_of_a_sealed_request_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    opener, sealed = Opener(key), seal(_request(), _cert(key))
    for at in range(REQUEST2_SIZE):
        bad = sealed[:at] + bytes([sealed[at] ^ 0x80]) + sealed[at + 1 :]
        with pytest.raises(ProtocolError):
            parse_sealed_header(bad)
            opener.open(bad)


def test_another_hosts_key_does_not_open_it() -> None:
    sealed = seal(_request(), _cert(Ed25519PrivateKey.generate()))
    with pytest.raises(ProtocolError):
        Opener(Ed25519PrivateKey.generate()).open(sealed)


@pytest.mark.parametrize("engine", ["libsodium", "openssl"])
def test_a_low_order_ephemeral_key_is_refused(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from adba.kms import envelope

    if engine == "openssl":
        monkeypatch.setattr(envelope, "_sodium_decrypt", lambda: None)
    key = Ed25519PrivateKey.generate()
    sealed = seal(_request(), _cert(key))
    # u = 0, u = 1 and a point of order 8: each gives an all-zero shared secret
    order8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    for point in (bytes(32), b"\x01" + bytes(31), order8):
        with pytest.raises(ProtocolError):
            Opener(key).open(sealed[:40] + point + sealed[72:])


def test_libsodium_and_openssl_open_the_same_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    from adba.kms import envelope

    key = Ed25519PrivateKey.generate()
    fast = Opener(key)
    assert fast.engine == "libsodium"
    monkeypatch.setattr(envelope, "_sodium_decrypt", lambda: None)
    slow = Opener(key)
    assert slow.engine == "openssl"
    for _ in range(50):
        sealed = seal(_request(), _cert(key))
        assert fast.open(sealed) == slow.open(sealed)
        for at in (0, 39, 72, 150, REQUEST2_SIZE - 1):  # header, ciphertext, tag
            bad = sealed[:at] + bytes([sealed[at] ^ 1]) + sealed[at + 1 :]
            for opener in (fast, slow):
                with pytest.raises(ProtocolError):
                    opener.open(bad)
        for short in (sealed[:-1], sealed + b"\0"):
            for opener in (fast, slow):
                with pytest.raises(ProtocolError):
                    opener.open(short)


def _assert_opens_its_request(key: Ed25519PrivateKey, engine: str) -> None:
    """An Opener built now uses ``engine`` and opens a request sealed to ``key``."""
    opener = Opener(key)
    assert opener.engine == engine
    req = _request()
    sealed = seal(req, _cert(key))
    assert request_of_plaintext(parse_sealed_header(sealed), opener.open(sealed)) == req


def test_a_libsodium_that_disagrees_with_cryptography_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast AEAD is checked once against cryptography's: one that claims to open the
    probe without writing it, refuses it, or opens it altered, is left out."""
    from nacl import _sodium

    real = _sodium.lib

    class Lib:
        def __init__(self, decrypt: int | None) -> None:
            self.decrypt = decrypt

        def crypto_aead_chacha20poly1305_ietf_decrypt(self, *args: object) -> int:
            if self.decrypt is None:
                return int(real.crypto_aead_chacha20poly1305_ietf_decrypt(*args))
            return self.decrypt  # claims success (or failure) for anything

    key = Ed25519PrivateKey.generate()
    assert Opener(key).engine == "libsodium"
    monkeypatch.setattr(_sodium, "lib", Lib(None))
    assert Opener(key).engine == "libsodium"  # the fake passes through: it is used
    for decrypt in (0, -1):
        monkeypatch.setattr(_sodium, "lib", Lib(decrypt))
        assert Opener(key).engine == "openssl", decrypt


def test_pynacls_exchange_is_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyNaCl's bundled X25519 is its portable ref10 code, slower than OpenSSL's: the
    host never calls it (a libsodium whose scalar multiplication fails is not noticed)."""
    from nacl import _sodium

    real = _sodium.lib

    class Lib:
        def __getattr__(self, name: str) -> object:
            if name.startswith("crypto_scalarmult"):
                raise AssertionError(f"{name} called")
            return getattr(real, name)

    monkeypatch.setattr(_sodium, "lib", Lib())
    key = Ed25519PrivateKey.generate()
    _assert_opens_its_request(key, "libsodium")


def test_without_pynacl_requests_open_through_cryptography(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nacl._sodium", None)  # import fails
    key = Ed25519PrivateKey.generate()
    _assert_opens_its_request(key, "openssl")


@pytest.mark.parametrize(
    "data",
    [
        pack_hello(0, bytes(16))[:-1],
        pack_hello(0, bytes(16)) + b"\0",
        b"ADBK\x02\x00" + bytes(26),  # a hello with a request's kind
        b"ADBK\x02\x03" + bytes(194),  # unknown kind
        b"ADBK\x02\x00\x00\x01" + bytes(192),  # flags
    ],
)
def test_v2_headers_are_parsed_strictly(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_sealed_header(data)


def test_replay_cache_refuses_a_nonce_twice_and_forgets_it_past_the_window() -> None:
    cache = ReplayCache(window=100)
    assert cache.admit(b"a" * 16, 1000, 1000)
    assert not cache.admit(b"a" * 16, 1000, 1050)
    assert cache.admit(b"b" * 16, 1000, 1050)
    assert cache.admit(b"c" * 16, 1200, 1200)  # 1000 + 100 < 1200: that second is gone
    assert cache.size == 1 and cache.floor < 0


def test_replay_cache_is_bounded_and_never_lets_a_replay_through() -> None:
    cache = ReplayCache(window=10_000, capacity=100)
    sent = [(os.urandom(16), 5000 + i // 10) for i in range(1000)]
    for nonce, t in sent:
        assert cache.admit(nonce, t, 5000)
        assert cache.size <= 100
    assert cache.floor > 5000  # dropped early: the floor rose
    for nonce, t in sent:  # every one of them, again: all refused
        assert not cache.admit(nonce, t, 5000)
    assert cache.admit(os.urandom(16), 5100, 5000)  # fresh and above the floor
