"""The KMS wire protocol: one request, one response on one TCP connection; fixed layouts.

Not Microsoft's protocol: our own, versioned, each message well under 250 bytes, parsed
strictly (exact length, magic, version, every field in range) with no I/O here so the
asyncio host and the synchronous client share it.

Request, 144 bytes (integers big-endian)::

    0   4  magic "ADBK"
    4   1  version (1)
    5   1  kind: 0 client, 1 server
    6   2  flags (0)
    8  16  CMID, the client machine ID (UUID bytes)
   24  16  edition SKU
   40  16  KMS ID (activation group)
   56   8  client time, seconds since the epoch (signed)
   64  16  nonce (random)
   80   1  machine-name length (0..63)
   81  63  machine name, UTF-8, zero-padded, printable

Response, 244 bytes::

    0   4  magic "ADBR"
    4   1  version (1)
    5   1  status: 0 ok, 1 this host cannot activate that KMS ID
    6  16  nonce (echo of the request's)
   22   2  count: distinct machines in the host's cache for that KMS ID
   24   4  renewal interval, minutes
   28   4  retry interval, minutes
   32   8  host time, seconds since the epoch
   40  32  host public key (Ed25519)
   72  24  host ePID, ASCII, zero-padded          -+
   96  16  SKU of the host's CSVLK                  | the host certificate: the authority's
  112   4  certificate expiry, seconds (unsigned)  | root key signs these with the key above
  116  64  authority signature                    -+
  180  64  host signature over the request and response bytes 0..180

A client trusts a response only if the certificate verifies under the pinned root key, the
host signature verifies under the certified key, and the nonce is its own: a rogue host (own
key, altered or replayed response) activates nobody.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..errors import KmsError, ProtocolError

__all__ = [
    "KIND_CLIENT",
    "KIND_SERVER",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "STATUS_NOT_COVERED",
    "STATUS_OK",
    "HostCertificate",
    "Request",
    "Response",
    "binding_certificate_message",
    "certificate_message",
    "parse_request",
    "parse_response",
    "response_message",
]

VERSION = 1
REQUEST_MAGIC = b"ADBK"
RESPONSE_MAGIC = b"ADBR"
KIND_CLIENT, KIND_SERVER = 0, 1
STATUS_OK, STATUS_NOT_COVERED = 0, 1
NAME_MAX = 63
EPID_SIZE = 24

_REQ = struct.Struct(">4sBBH16s16s16sq16sB63s")
_RESP_BODY = struct.Struct(">4sBB16sHIIq32s24s16sI64s")
REQUEST_SIZE = _REQ.size
RESPONSE_SIZE = _RESP_BODY.size + 64
assert REQUEST_SIZE == 144 and RESPONSE_SIZE == 244


@dataclass(frozen=True)
class Request:
    kind: int
    cmid: uuid.UUID
    sku: uuid.UUID
    kms_id: uuid.UUID
    time: int
    nonce: bytes
    machine: str

    def encode(self) -> bytes:
        name = self.machine.encode()
        if len(name) > NAME_MAX or not self.machine.isprintable():
            raise ProtocolError("machine name must be printable and at most 63 bytes")
        if self.kind not in (KIND_CLIENT, KIND_SERVER) or len(self.nonce) != 16:
            raise ProtocolError("bad request fields")
        return _REQ.pack(
            REQUEST_MAGIC,
            VERSION,
            self.kind,
            0,
            self.cmid.bytes,
            self.sku.bytes,
            self.kms_id.bytes,
            self.time,
            self.nonce,
            len(name),
            name,
        )


def parse_request(data: bytes) -> Request:
    """Strict: anything but a well-formed version-1 request raises :class:`ProtocolError`."""
    if len(data) != REQUEST_SIZE:
        raise ProtocolError(f"request is {len(data)} bytes, expected {REQUEST_SIZE}")
    magic, version, kind, flags, cmid, sku, kms, when, nonce, nlen, name = _REQ.unpack(data)
    if magic != REQUEST_MAGIC:
        raise ProtocolError("not an ADBA KMS request")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    if kind not in (KIND_CLIENT, KIND_SERVER) or flags != 0:
        raise ProtocolError("bad kind or flags")
    if nlen > NAME_MAX or any(name[nlen:]):
        raise ProtocolError("bad machine name length or padding")
    try:
        machine = name[:nlen].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("machine name is not UTF-8") from exc
    if not machine.isprintable():
        raise ProtocolError("machine name is not printable")
    if cmid == bytes(16):
        raise ProtocolError("empty CMID")
    return Request(
        kind,
        uuid.UUID(bytes=cmid),
        uuid.UUID(bytes=sku),
        uuid.UUID(bytes=kms),
        when,
        nonce,
        machine,
    )


@dataclass(frozen=True)
class HostCertificate:
    """The authority's statement: this key is an activated KMS host for this CSVLK."""

    public_key: bytes
    epid: str
    csvlk_sku: uuid.UUID
    not_after: int
    signature: bytes

    def to_bytes(self) -> bytes:
        return (
            self.public_key
            + _epid(self.epid)
            + self.csvlk_sku.bytes
            + struct.pack(">I", self.not_after)
            + self.signature
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> HostCertificate:
        if len(data) != 32 + EPID_SIZE + 16 + 4 + 64:
            raise KmsError("host certificate has the wrong size")
        epid = data[32 : 32 + EPID_SIZE].rstrip(b"\0").decode("ascii", "replace")
        sku = uuid.UUID(bytes=data[56:72])
        (not_after,) = struct.unpack(">I", data[72:76])
        return cls(data[:32], epid, sku, not_after, data[76:])


def _epid(epid: str) -> bytes:
    raw = epid.encode("ascii")
    if len(raw) > EPID_SIZE:
        raise KmsError(f"ePID longer than {EPID_SIZE} characters")
    return raw.ljust(EPID_SIZE, b"\0")


def certificate_message(
    public_key: bytes, epid: str, csvlk_sku: uuid.UUID, not_after: int
) -> bytes:
    """What the authority's root key signs in a host certificate."""
    from ..confirmation import host_binding

    return binding_certificate_message(host_binding(public_key), epid, csvlk_sku, not_after)


def binding_certificate_message(
    binding: bytes, epid: str, csvlk_sku: uuid.UUID, not_after: int
) -> bytes:
    """The same, from the hash of the host key (all an installation ID carries), so a host
    activated by telephone gets the very certificate an online activation would give."""
    return (
        b"ADBA-KMS-HOST-2\0"
        + binding
        + _epid(epid)
        + csvlk_sku.bytes
        + struct.pack(">I", not_after)
    )


@dataclass(frozen=True)
class Response:
    status: int
    nonce: bytes
    count: int
    renewal_minutes: int
    retry_minutes: int
    host_time: int
    certificate: HostCertificate
    signature: bytes = b""

    def body(self) -> bytes:
        c = self.certificate
        return _RESP_BODY.pack(
            RESPONSE_MAGIC,
            VERSION,
            self.status,
            self.nonce,
            self.count,
            self.renewal_minutes,
            self.retry_minutes,
            self.host_time,
            c.public_key,
            _epid(c.epid),
            c.csvlk_sku.bytes,
            c.not_after,
            c.signature,
        )


def response_message(request: bytes, body: bytes) -> bytes:
    """What the host key signs: the exact request bytes and the response body."""
    return b"ADBA-KMS-RESP-1\0" + request + body


def parse_response(data: bytes) -> Response:
    """Parse (not verify) a response; :mod:`adba.kms.client` verifies it."""
    if len(data) != RESPONSE_SIZE:
        raise ProtocolError(f"response is {len(data)} bytes, expected {RESPONSE_SIZE}")
    body, signature = data[:-64], data[-64:]
    (
        magic,
        version,
        status,
        nonce,
        count,
        renewal,
        retry,
        host_time,
        pub,
        epid,
        sku,
        not_after,
        cert_sig,
    ) = _RESP_BODY.unpack(body)
    if magic != RESPONSE_MAGIC or version != VERSION:
        raise ProtocolError("not an ADBA KMS response of version 1")
    if status not in (STATUS_OK, STATUS_NOT_COVERED):
        raise ProtocolError(f"unknown status {status}")
    try:
        epid_text = epid.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("ePID is not ASCII") from exc
    cert = HostCertificate(pub, epid_text, uuid.UUID(bytes=sku), not_after, cert_sig)
    return Response(status, nonce, count, renewal, retry, host_time, cert, signature)
