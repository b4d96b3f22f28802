"""The host's object-free parsers (``request_fields``, ``sealed_fields``, ``plaintext_fields``,
``uuid_of``): every byte of every field changed, each parser either refuses with
ProtocolError or returns exactly what the bytes say -- never another exception (which would
drop a connection unlogged) and never a field the checks should have refused."""

from __future__ import annotations

import os
import uuid

import pytest

from adba.errors import ProtocolError
from adba.kms.protocol import (
    KIND_CLIENT,
    KIND_SERVER,
    NAME_MAX,
    PLAINTEXT_SIZE,
    REQUEST2_SIZE,
    Request,
    pack_sealed_header,
    plaintext_fields,
    plaintext_of,
    request_fields,
    sealed_fields,
    uuid_of,
)

REQ = Request(
    KIND_SERVER, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), 1_800_000_000, b"n" * 16, "pc-7"
)
VALUES = (0x00, 0x01, 0x02, 0x20, 0x7F, 0x80, 0xC3, 0xFF)


def _mutations(data: bytes) -> list[bytes]:
    out = []
    for i in range(len(data)):
        for v in VALUES:
            if data[i] != v:
                out.append(data[:i] + bytes([v]) + data[i + 1 :])
    return out


def _name_ok(nlen: int, name: bytes) -> bool:
    try:
        text = name[:nlen].decode()
    except UnicodeDecodeError:
        return False
    return nlen <= NAME_MAX and not any(name[nlen:]) and text.isprintable()


def test_uuid_of_is_the_checked_uuid() -> None:
    for raw in [bytes(16), b"\xff" * 16, *(os.urandom(16) for _ in range(500))]:
        fast, checked = uuid_of(raw), uuid.UUID(bytes=raw)
        assert fast == checked and hash(fast) == hash(checked) and str(fast) == str(checked)
        assert {checked: 1}[fast] == 1 and fast.bytes == raw and fast.version == checked.version


def test_every_byte_of_a_v1_request_refused_or_read_exactly() -> None:
    good = REQ.encode()
    assert request_fields(good) == (
        KIND_SERVER,
        REQ.cmid.bytes,
        REQ.sku.bytes,
        REQ.kms_id.bytes,
        REQ.time,
        REQ.nonce,
        "pc-7",
    )
    refused = 0
    for data in [*_mutations(good), good[:-1], good + b"\0", b""]:
        try:
            kind, cmid, sku, kms, when, nonce, machine = request_fields(data)
        except ProtocolError:
            refused += 1
            continue
        assert (
            data[:5] == b"ADBK\x01" and kind in (KIND_CLIENT, KIND_SERVER) and data[6:8] == b"\0\0"
        )
        assert (cmid, sku, kms, nonce) == (data[8:24], data[24:40], data[40:56], data[64:80])
        assert when == int.from_bytes(data[56:64], "big", signed=True)
        assert cmid != bytes(16) and _name_ok(data[80], data[81:144])
        assert machine == data[81 : 81 + data[80]].decode()
    assert refused > 200  # magic, version, kind, flags, name length, padding, UTF-8 ...


def test_every_byte_of_a_v2_header_and_plaintext_refused_or_read_exactly() -> None:
    header = pack_sealed_header(KIND_CLIENT, REQ.time, REQ.nonce, b"k" * 8, b"e" * 32)
    good = header + bytes(REQUEST2_SIZE - len(header))
    refused = 0
    headers = [m + good[40:] for m in _mutations(good[:40])]  # the clear part: bytes 0..40
    for data in [*headers, good[:-1], good + b"\0"]:
        try:
            kind, when, nonce, key_id = sealed_fields(data)
        except ProtocolError:
            refused += 1
            continue
        assert len(data) == REQUEST2_SIZE and data[:5] == b"ADBK\x02" and data[6:8] == b"\0\0"
        assert kind in (KIND_CLIENT, KIND_SERVER)
        assert (when, nonce, key_id) == (
            int.from_bytes(data[8:16], "big", signed=True),
            data[16:32],
            data[32:40],
        )
    assert refused > 40
    plain = plaintext_of(REQ)
    assert plaintext_fields(plain) == (REQ.cmid.bytes, REQ.sku.bytes, REQ.kms_id.bytes, "pc-7")
    refused = 0
    for data in [*_mutations(plain), plain[:-1], plain + b"\0"]:
        try:
            cmid, sku, kms, machine = plaintext_fields(data)
        except ProtocolError:
            refused += 1
            continue
        assert len(data) == PLAINTEXT_SIZE and cmid != bytes(16) and _name_ok(data[48], data[49:])
        assert (cmid, sku, kms, machine) == (
            data[:16],
            data[16:32],
            data[32:48],
            data[49 : 49 + data[48]].decode(),
        )
    assert refused > 200


@pytest.mark.parametrize("bad", [b"ADBK\x02" + bytes(27), b"ADBK\x01" + bytes(139)])
def test_a_request_of_the_other_shape_is_refused(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        sealed_fields(bad)
    with pytest.raises(ProtocolError):
        request_fields(bad if bad[4] == 2 else bad[:-1])
