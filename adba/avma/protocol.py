"""The AVMA wire protocol between a guest and its host: one request, one answer, fixed
layouts, parsed strictly; no I/O here (the transports are in :mod:`adba.avma.transport`).

Not Microsoft's protocol (nor the KMS one): our own, versioned. Request, 96 bytes
(integers big-endian)::

    0   4  magic "ADBV"
    4   1  version (1)
    5   3  zero
    8  16  guest ID (the guest agent's CMID)
   24  16  guest edition SKU
   40   8  guest time, seconds since the epoch (signed)
   48  16  nonce (random, fresh for each request)
   64   1  guest name length (0..31)
   65  31  guest name, UTF-8, zero-padded

Answer, 218 bytes (inside the 250-byte budget of the KMS answer)::

    0   4  magic "ADBX"
    4   1  version (1)
    5   1  status: 0 activated, 1 the host is not licensed, 2 the host's edition is not
           entitled to activate guests, 3 the host may not activate the guest's edition
    6  16  nonce (echo of the request's)
   22   8  host time
   30   4  validity, seconds: the guest is licensed this long unless it renews
   34   4  renewal, seconds: when the guest asks again
   38  32  host public key (Ed25519)                 -+ the AVMA host certificate: the
   70  16  host edition SKU                           | authority's root key signs these
   86   4  certificate expiry (unsigned)              | (purpose "ADBA-AVMA-HOST-1": a KMS
   90  64  authority signature                       -+ host certificate is not one)
  154  64  host signature over the request and answer bytes 0..154

A guest trusts an answer only if the certificate verifies under its pinned root key and has
not expired, the host signature verifies under the certified key, and the nonce is its own.
Refusals are signed too: a guest knows why, and no one else can make it believe so.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..errors import AvmaError

__all__ = [
    "ANSWER_SIZE",
    "REQUEST_SIZE",
    "STATUS_CODES",
    "Answer",
    "AvmaHostCertificate",
    "Request",
    "certificate_message",
    "parse_answer",
    "parse_request",
]

REQUEST_MAGIC, ANSWER_MAGIC, VERSION = b"ADBV", b"ADBX", 1
NAME_SIZE = 31
OK, HOST_UNLICENSED, HOST_NOT_ENTITLED, NOT_COVERED = 0, 1, 2, 3
#: an answer's status -> the stable code a guest records
STATUS_CODES = {
    HOST_UNLICENSED: "avma-host-unlicensed",
    HOST_NOT_ENTITLED: "avma-host-not-entitled",
    NOT_COVERED: "avma-not-covered",
}
_REQ = struct.Struct(">4sB3x16s16sq16sB31s")
_HEAD = struct.Struct(">4sBB16sqII")
_CERT = struct.Struct(">32s16sI64s")
REQUEST_SIZE = _REQ.size
ANSWER_SIZE = _HEAD.size + _CERT.size + 64
CERT_PURPOSE = b"ADBA-AVMA-HOST-1\0"


@dataclass(frozen=True)
class AvmaHostCertificate:
    """The authority's statement: this key is an AVMA host of this (entitled) edition."""

    public_key: bytes
    edition_sku: uuid.UUID
    not_after: int
    signature: bytes

    def to_bytes(self) -> bytes:
        return _CERT.pack(self.public_key, self.edition_sku.bytes, self.not_after, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> AvmaHostCertificate:
        if len(data) != _CERT.size:
            raise AvmaError("AVMA host certificate has the wrong size")
        key, sku, not_after, sig = _CERT.unpack(data)
        return cls(key, uuid.UUID(bytes=sku), not_after, sig)

    def verify(self, root_public_key: bytes) -> bool:
        """Signed by the root for this purpose (a KMS host certificate never verifies)."""
        from ..confirmation import verify_root_signature

        message = certificate_message(self.public_key, self.edition_sku, self.not_after)
        return verify_root_signature(root_public_key, self.signature, message)


def certificate_message(public_key: bytes, edition_sku: uuid.UUID, not_after: int) -> bytes:
    """What the authority's root key signs in an AVMA host certificate."""
    from ..confirmation import host_binding

    return (
        CERT_PURPOSE + host_binding(public_key) + edition_sku.bytes + struct.pack(">I", not_after)
    )


@dataclass(frozen=True)
class Request:
    guest_id: uuid.UUID
    edition_sku: uuid.UUID
    sent_at: int
    nonce: bytes
    name: str = ""

    def to_bytes(self) -> bytes:
        raw = self.name.encode()[:NAME_SIZE]
        return _REQ.pack(
            REQUEST_MAGIC,
            VERSION,
            self.guest_id.bytes,
            self.edition_sku.bytes,
            self.sent_at,
            self.nonce,
            len(raw),
            raw,
        )


def parse_request(data: bytes) -> Request:
    if len(data) != REQUEST_SIZE:
        raise AvmaError(f"an AVMA request has {REQUEST_SIZE} bytes, not {len(data)}")
    magic, version, guest, sku, sent_at, nonce, size, raw = _REQ.unpack(data)
    if magic != REQUEST_MAGIC or version != VERSION:
        raise AvmaError("not an AVMA request of version 1")
    if data[5:8] != bytes(3) or size > NAME_SIZE or raw[size:].strip(b"\0"):
        raise AvmaError("malformed AVMA request")
    try:
        name = raw[:size].decode()
    except UnicodeDecodeError as exc:
        raise AvmaError("the guest name is not UTF-8") from exc
    if not name.isprintable():
        raise AvmaError("the guest name is not printable")
    return Request(uuid.UUID(bytes=guest), uuid.UUID(bytes=sku), sent_at, nonce, name)


@dataclass(frozen=True)
class Answer:
    status: int
    nonce: bytes
    host_time: int
    validity: int
    renewal: int
    certificate: AvmaHostCertificate
    signature: bytes = bytes(64)

    def body(self) -> bytes:
        return (
            _HEAD.pack(
                ANSWER_MAGIC,
                VERSION,
                self.status,
                self.nonce,
                self.host_time,
                self.validity,
                self.renewal,
            )
            + self.certificate.to_bytes()
        )

    def to_bytes(self) -> bytes:
        return self.body() + self.signature


def signed_part(request: bytes, body: bytes) -> bytes:
    """What the host signs: the request it answers and its answer's body."""
    return b"ADBA-AVMA-ANSWER-1\0" + request + body


def parse_answer(data: bytes) -> Answer:
    if len(data) != ANSWER_SIZE:
        raise AvmaError(f"an AVMA answer has {ANSWER_SIZE} bytes, not {len(data)}")
    magic, version, status, nonce, host_time, validity, renewal = _HEAD.unpack_from(data)
    if magic != ANSWER_MAGIC or version != VERSION:
        raise AvmaError("not an AVMA answer of version 1")
    if status not in (OK, *STATUS_CODES):
        raise AvmaError(f"unknown AVMA answer status {status}")
    cert = AvmaHostCertificate.from_bytes(data[_HEAD.size : _HEAD.size + _CERT.size])
    return Answer(status, nonce, host_time, validity, renewal, cert, data[-64:])
