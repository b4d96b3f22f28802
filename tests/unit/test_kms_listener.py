"""The KMS listener's framing rule: a request's size follows from its first 6 bytes, so the
host answers a complete request without waiting for the client's half-close -- and anything
that cannot become a request is known as such as early as its bytes tell."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from adba.kms.envelope import seal
from adba.kms.listener import expected_size
from adba.kms.protocol import (
    HELLO_SIZE,
    KIND_CLIENT,
    REQUEST2_SIZE,
    REQUEST_SIZE,
    HostCertificate,
    Request,
    pack_hello,
)


def _v1() -> bytes:
    return Request(
        KIND_CLIENT,
        uuid.uuid4(),
        uuid.uuid4(),
        uuid.uuid4(),
        int(time.time()),
        os.urandom(16),
        "pc",
    ).encode()


def _v2() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    cert = HostCertificate(public, "00000-0000000000-0000000", uuid.uuid4(), 2**31, bytes(64))
    request = Request(
        KIND_CLIENT,
        uuid.uuid4(),
        uuid.uuid4(),
        uuid.uuid4(),
        int(time.time()),
        os.urandom(16),
        "pc",
    )
    return seal(request, cert)


@pytest.mark.parametrize(
    ("make", "size"),
    [(_v1, REQUEST_SIZE), (_v2, REQUEST2_SIZE), (lambda: pack_hello(0, bytes(16)), HELLO_SIZE)],
    ids=["v1", "v2", "hello"],
)
def test_every_prefix_of_a_request_waits_and_the_whole_is_its_size(make, size) -> None:  # type: ignore[no-untyped-def]
    data = make()
    assert len(data) == size
    for n in range(1, 6):
        assert expected_size(data[:n]) == 0, n  # not known yet: wait for more
    for n in range(6, size + 1):
        assert expected_size(data[:n]) == size, n  # known: complete exactly at its size
    assert expected_size(bytearray(data)) == size
    assert expected_size(data + b"x") == size  # longer than its size: the caller refuses it


@pytest.mark.parametrize(
    "data",
    [
        b"X",
        b"AB",
        b"ADBX",
        b"ADBR",
        b"ADBK\x00",
        b"ADBK\x03",
        b"ADBK\xff\x00",
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_bytes_that_begin_no_request_are_known_at_once(data: bytes) -> None:
    assert expected_size(data) == -1


def test_random_bytes_are_refused_as_early_as_their_bytes_tell() -> None:
    for _ in range(2000):
        data = os.urandom(8)
        want = expected_size(data)
        if data[:4] != b"ADBK":
            assert want == -1
        else:
            assert want in (-1, REQUEST_SIZE, REQUEST2_SIZE, HELLO_SIZE)
