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

Version 2: the CMID, SKU, KMS ID and machine name sealed to the host
---------------------------------------------------------------------

Version 1 sends the CMID and the machine name in clear. Version 2 seals them to the host the
client addresses, so a passive observer learns neither (nor the edition).

The key sealed to is the host's certified key itself: its Ed25519 key, mapped to its X25519
form (the Edwards-to-Montgomery map u = (1+y)/(1-y); the host's X25519 private scalar is the
one its Ed25519 seed expands to, as in libsodium's ``crypto_sign_ed25519_*_to_curve25519``).
The root key certifies the Ed25519 key, so it certifies the X25519 key with it: certificates
are unchanged (v1 and phone-activated ones included).

How the client learns the key before its first request: it asks. A **hello** (32 bytes: the
v2 header up to the nonce, kind 2) is answered with a signed v2 response of status 4 ("key":
count 0) that carries the host certificate, as every response does; the client verifies it
as any response (root, host signature, nonce) and keeps the certificate (the agent saves it
with the host in its state) so that the renewals skip the hello. A host that was re-keyed
answers a request sealed to an old key (key ID mismatch) with status 4 and its new
certificate; the client retries once. A v2 client never falls back to v1 (no downgrade).

Request, v2, 200 bytes::

    0   4  magic "ADBK"
    4   1  version (2)
    5   1  kind: 0 client, 1 server, 2 hello (a hello is bytes 0..32 only)
    6   2  flags (0)
    8   8  client time, seconds since the epoch (signed)
   16  16  nonce (random)
   32   8  key ID: the first 8 bytes of the host's certified Ed25519 key
   40  32  ephemeral X25519 public key, fresh for each request
   72 128  sealed: ChaCha20-Poly1305, associated data bytes 0..72, 12-byte zero nonce,
           key HKDF-SHA256(salt "ADBA-KMS-V2", X25519(ephemeral, host),
           info ephemeral public || host X25519 public) -- a key used once
           plaintext (112): CMID 16, SKU 16, KMS ID 16, name length 1, name 63 (as in v1)

Any change to a byte of the header or of the ciphertext fails the tag: the host closes the
connection without an answer. The response is v1's layout with version 2 and more statuses:
2 clock skew (the client time is more than 4 hours from the host's, checked before anything
else; the host time in the response tells by how much), 3 replayed (the nonce was seen
within the time window: :class:`~adba.kms.replay.ReplayCache`), 4 key (above). The host
signature covers the exact request bytes, ciphertext included.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..errors import KmsError, ProtocolError

__all__ = [
    "HELLO_SIZE",
    "KIND_CLIENT",
    "KIND_HELLO",
    "KIND_SERVER",
    "MAX_SKEW",
    "REQUEST2_SIZE",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "SEALED_HEADER_SIZE",
    "STATUS_CLOCK_SKEW",
    "STATUS_KEY",
    "STATUS_NOT_COVERED",
    "STATUS_OK",
    "STATUS_REPLAYED",
    "HostCertificate",
    "Request",
    "Response",
    "SealedHeader",
    "binding_certificate_message",
    "certificate_message",
    "pack_hello",
    "pack_sealed_header",
    "parse_request",
    "parse_response",
    "parse_sealed_header",
    "plaintext_fields",
    "plaintext_of",
    "request_fields",
    "request_of_plaintext",
    "response_body",
    "response_message",
    "sealed_fields",
    "uuid_of",
]

VERSION = 1
VERSION_2 = 2
REQUEST_MAGIC = b"ADBK"
RESPONSE_MAGIC = b"ADBR"
KIND_CLIENT, KIND_SERVER, KIND_HELLO = 0, 1, 2
STATUS_OK, STATUS_NOT_COVERED = 0, 1
STATUS_CLOCK_SKEW, STATUS_REPLAYED, STATUS_KEY = 2, 3, 4  # version 2 only
#: the host refuses a v2 request whose client time is further than this from its own
MAX_SKEW = 4 * 3600
NAME_MAX = 63
_NO_CMID = bytes(16)
EPID_SIZE = 24

_REQ = struct.Struct(">4sBBH16s16s16sq16sB63s")
_RESP_BODY = struct.Struct(">4sBB16sHIIq32s24s16sI64s")
REQUEST_SIZE = _REQ.size
RESPONSE_SIZE = _RESP_BODY.size + 64
assert REQUEST_SIZE == 144 and RESPONSE_SIZE == 244

_HELLO = struct.Struct(">4sBBHq16s")
_SEALED_HEAD = struct.Struct(">4sBBHq16s8s32s")
_PLAIN = struct.Struct(">16s16s16sB63s")
TAG_SIZE = 16
HELLO_SIZE = _HELLO.size
SEALED_HEADER_SIZE = _SEALED_HEAD.size
PLAINTEXT_SIZE = _PLAIN.size
REQUEST2_SIZE = SEALED_HEADER_SIZE + PLAINTEXT_SIZE + TAG_SIZE
#: the longest request of any version (the host cuts a connection sending more)
MAX_REQUEST = max(REQUEST_SIZE, REQUEST2_SIZE)
assert HELLO_SIZE == 32 and SEALED_HEADER_SIZE == 72 and REQUEST2_SIZE == 200


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
        name = _name_bytes(self.machine)
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
    """Strict: anything but a well-formed version-1 request raises :class:`ProtocolError`
    (the checks are :func:`request_fields`', which the host uses without this object)."""
    kind, cmid, sku, kms, when, nonce, machine = request_fields(data)
    return Request(
        kind,
        uuid.UUID(bytes=cmid),
        uuid.UUID(bytes=sku),
        uuid.UUID(bytes=kms),
        when,
        nonce,
        machine,
    )


def _name_bytes(machine: str) -> bytes:
    name = machine.encode()
    if len(name) > NAME_MAX or not machine.isprintable():
        raise ProtocolError("machine name must be printable and at most 63 bytes")
    return name


def _machine_of(nlen: int, name: bytes) -> str:
    if nlen > NAME_MAX or any(name[nlen:]):
        raise ProtocolError("bad machine name length or padding")
    try:
        machine = name[:nlen].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("machine name is not UTF-8") from exc
    if not machine.isprintable():
        raise ProtocolError("machine name is not printable")
    return machine


@dataclass(frozen=True)
class SealedHeader:
    """The clear part of a v2 request (a hello is all header: no key ID, no ephemeral)."""

    kind: int
    time: int
    nonce: bytes
    key_id: bytes = b""
    ephemeral: bytes = b""


def pack_hello(time: int, nonce: bytes) -> bytes:
    if len(nonce) != 16:
        raise ProtocolError("bad hello fields")
    return _HELLO.pack(REQUEST_MAGIC, VERSION_2, KIND_HELLO, 0, time, nonce)


def pack_sealed_header(
    kind: int, time: int, nonce: bytes, key_id: bytes, ephemeral: bytes
) -> bytes:
    if kind not in (KIND_CLIENT, KIND_SERVER) or len(nonce) != 16:
        raise ProtocolError("bad request fields")
    if len(key_id) != 8 or len(ephemeral) != 32:
        raise ProtocolError("bad key ID or ephemeral key")
    return _SEALED_HEAD.pack(REQUEST_MAGIC, VERSION_2, kind, 0, time, nonce, key_id, ephemeral)


def parse_sealed_header(data: bytes) -> SealedHeader:
    """Strict: a hello of exactly 32 bytes or a sealed request of exactly 200."""
    if len(data) == HELLO_SIZE:
        magic, version, kind, flags, when, nonce = _HELLO.unpack(data)
        if magic != REQUEST_MAGIC or version != VERSION_2 or kind != KIND_HELLO or flags:
            raise ProtocolError("not an ADBA KMS hello")
        return SealedHeader(kind, when, nonce)
    kind, when, nonce, key_id = sealed_fields(data)  # the host's checks, one copy
    return SealedHeader(kind, when, nonce, key_id, data[40:72])


def sealed_fields(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(kind, client time, nonce, key ID) of a 200-byte v2 request, checked as
    :func:`parse_sealed_header` checks it (the host's path: no header object)."""
    if len(data) != REQUEST2_SIZE:
        raise ProtocolError(f"v2 request is {len(data)} bytes, expected {REQUEST2_SIZE}")
    magic, version, kind, flags, when, nonce, key_id, _eph = _SEALED_HEAD.unpack_from(data)
    if magic != REQUEST_MAGIC or version != VERSION_2:
        raise ProtocolError("not an ADBA KMS v2 request")
    if (kind != KIND_CLIENT and kind != KIND_SERVER) or flags != 0:
        raise ProtocolError("bad kind or flags")
    return kind, when, nonce, key_id


def plaintext_fields(plain: bytes) -> tuple[bytes, bytes, bytes, str]:
    """(CMID, SKU, KMS ID as 16 bytes each, machine name) of an opened v2 plaintext,
    validated as :func:`request_of_plaintext` validates it."""
    if len(plain) != PLAINTEXT_SIZE:
        raise ProtocolError("bad sealed plaintext size")
    cmid, sku, kms, nlen, name = _PLAIN.unpack(plain)
    machine = _machine_of(nlen, name)
    if cmid == _NO_CMID:
        raise ProtocolError("empty CMID")
    return cmid, sku, kms, machine


def request_fields(data: bytes) -> tuple[int, bytes, bytes, bytes, int, bytes, str]:
    """(kind, CMID, SKU, KMS ID, client time, nonce, machine) of a v1 request, checked as
    :func:`parse_request` checks it (the host's path: no request object)."""
    if len(data) != REQUEST_SIZE:
        raise ProtocolError(f"request is {len(data)} bytes, expected {REQUEST_SIZE}")
    magic, version, kind, flags, cmid, sku, kms, when, nonce, nlen, name = _REQ.unpack(data)
    if magic != REQUEST_MAGIC:
        raise ProtocolError("not an ADBA KMS request")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    if (kind != KIND_CLIENT and kind != KIND_SERVER) or flags != 0:
        raise ProtocolError("bad kind or flags")
    machine = _machine_of(nlen, name)
    if cmid == _NO_CMID:
        raise ProtocolError("empty CMID")
    return kind, cmid, sku, kms, when, nonce, machine


_new_object = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def uuid_of(raw: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=raw)`` for 16 bytes, without its argument checks (the host's path:
    the caller unpacked exactly 16 bytes). Equal to, and hashing as, the checked one."""
    u: uuid.UUID = _new_object(uuid.UUID)
    _set(u, "int", int.from_bytes(raw, "big"))
    _set(u, "is_safe", _UNKNOWN)
    return u


def plaintext_of(request: Request) -> bytes:
    """What a v2 request seals: the 112 bytes that identify the machine and the product."""
    name = _name_bytes(request.machine)
    return _PLAIN.pack(request.cmid.bytes, request.sku.bytes, request.kms_id.bytes, len(name), name)


def request_of_plaintext(header: SealedHeader, plain: bytes) -> Request:
    """The request a v2 header and its opened plaintext make (validated as v1's fields, by
    :func:`plaintext_fields`)."""
    cmid, sku, kms, machine = plaintext_fields(plain)
    return Request(
        header.kind,
        uuid.UUID(bytes=cmid),
        uuid.UUID(bytes=sku),
        uuid.UUID(bytes=kms),
        header.time,
        header.nonce,
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
    version: int = VERSION

    def body(self) -> bytes:
        c = self.certificate
        return _RESP_BODY.pack(
            RESPONSE_MAGIC,
            self.version,
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


_RESP_HEAD = struct.Struct(">4sBB16sHIIq")
assert _RESP_HEAD.size + 140 == _RESP_BODY.size


def response_body(
    version: int,
    status: int,
    nonce: bytes,
    count: int,
    renewal_minutes: int,
    retry_minutes: int,
    host_time: int,
    certificate_bytes: bytes,
) -> bytes:
    """:meth:`Response.body` for a host that packed its certificate once (the hot path)."""
    return (
        _RESP_HEAD.pack(
            RESPONSE_MAGIC,
            version,
            status,
            nonce,
            count,
            renewal_minutes,
            retry_minutes,
            host_time,
        )
        + certificate_bytes
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
    if magic != RESPONSE_MAGIC or version not in (VERSION, VERSION_2):
        raise ProtocolError("not an ADBA KMS response of version 1 or 2")
    if status > (STATUS_NOT_COVERED if version == VERSION else STATUS_KEY):
        raise ProtocolError(f"unknown status {status}")
    try:
        epid_text = epid.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("ePID is not ASCII") from exc
    cert = HostCertificate(pub, epid_text, uuid.UUID(bytes=sku), not_after, cert_sig)
    return Response(status, nonce, count, renewal, retry, host_time, cert, signature, version)
