"""Sealing a v2 request to the host's certified key (layout: :mod:`adba.kms.protocol`).

The host's X25519 key is its certified Ed25519 key in Montgomery form, so the authority's
certificate covers it: the client maps the certified public key (u = (1+y)/(1-y) mod p), the
host expands its Ed25519 seed (SHA-512, first half: the X25519 scalar). Each request has an
ephemeral X25519 key of its own; the shared secret goes through HKDF-SHA256 into a
ChaCha20-Poly1305 key used for that one message (so its nonce is zero), with the clear header
as associated data.

:class:`Opener` is the host's side, built once per host: the private key object and the
constants live as long as the host, a request costs one exchange, two HMACs and one AEAD.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag

from ..errors import ProtocolError
from .protocol import (
    PLAINTEXT_SIZE,
    REQUEST2_SIZE,
    SEALED_HEADER_SIZE,
    HostCertificate,
    Request,
    pack_sealed_header,
    plaintext_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

__all__ = ["Opener", "key_id", "seal", "x25519_public_of"]

_P = 2**255 - 19
_SALT = b"ADBA-KMS-V2"
_ZERO_NONCE = bytes(12)
_NOT_OPENED = "the sealed request does not open (altered or not for us)"
_hmac = hmac.digest


def key_id(ed25519_public: bytes) -> bytes:
    """Which host key a request is sealed to: the first 8 bytes of the certified key."""
    return ed25519_public[:8]


def x25519_public_of(ed25519_public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key (the birational map to Montgomery)."""
    if len(ed25519_public) != 32:
        raise ProtocolError("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise ProtocolError("not a usable Ed25519 public key")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def _public_key_loader(cls: Any) -> Callable[[bytes], X25519PublicKey]:
    """The X25519 public-key loader without the per-call backend check of the public
    classmethod (the binding it ends in; the classmethod where the binding is not there)."""
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        loader: Callable[[bytes], X25519PublicKey] = rust_openssl.x25519.from_public_bytes
        return loader
    except (ImportError, AttributeError):  # pragma: no cover - another cryptography layout
        fallback: Callable[[bytes], X25519PublicKey] = cls.from_public_bytes
        return fallback


def _aead_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869), 32 bytes: one extract, one expand block."""
    prk = hmac.digest(_SALT, shared, "sha256")
    return hmac.digest(prk, ephemeral + recipient + b"\x01", "sha256")


def seal(request: Request, certificate: HostCertificate) -> bytes:
    """The 200-byte v2 request for ``request``, readable only by the certificate's host."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    recipient = x25519_public_of(certificate.public_key)
    ephemeral = X25519PrivateKey.generate()
    eph_public = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    except ValueError as exc:  # a low-order point: no certified key maps to one
        raise ProtocolError("the host key cannot be sealed to") from exc
    header = pack_sealed_header(
        request.kind, request.time, request.nonce, key_id(certificate.public_key), eph_public
    )
    sealed = ChaCha20Poly1305(_aead_key(shared, eph_public, recipient)).encrypt(
        _ZERO_NONCE, plaintext_of(request), header
    )
    return header + sealed


def _cryptography_engine(
    x_private: X25519PrivateKey,
) -> tuple[Callable[[bytes], bytes], Callable[[bytes, bytes], bytes]]:
    """(exchange, decrypt) through ``cryptography`` (OpenSSL): the engine that is always
    there. The exchange raises ValueError for a low-order point; decrypt, ProtocolError."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    load, agree = _public_key_loader(X25519PublicKey), x_private.exchange

    def exchange(point: bytes) -> bytes:
        return agree(load(point))

    def decrypt(key: bytes, data: bytes) -> bytes:
        try:
            return ChaCha20Poly1305(key).decrypt(
                _ZERO_NONCE, data[SEALED_HEADER_SIZE:], data[:SEALED_HEADER_SIZE]
            )
        except InvalidTag as exc:
            raise ProtocolError(_NOT_OPENED) from exc

    return exchange, decrypt


def _sodium_decrypt() -> Callable[[bytes, bytes], bytes] | None:
    """The AEAD decrypt straight through libsodium's C function (PyNaCl, the ``fast`` extra)
    where it is installed and agrees with ``cryptography`` (checked once: a probe sealed by
    ``cryptography`` opened, and refused once altered). No cipher object per request, no
    argument checks beyond the sizes. Output buffers are new on each call, so any thread may
    use it. The exchange is not taken from libsodium: the copy PyNaCl bundles uses the
    portable ref10 field arithmetic, measured at about 105 us an exchange against OpenSSL's
    70 us on these machines (bench/README.md)."""
    try:
        from nacl._sodium import ffi, lib
    except ImportError:
        return None
    c_decrypt = lib.crypto_aead_chacha20poly1305_ietf_decrypt
    new, buffer, null = ffi.new, ffi.buffer, ffi.NULL
    out_type = ffi.typeof("unsigned char[]")
    sealed_size, plain_size = REQUEST2_SIZE - SEALED_HEADER_SIZE, PLAINTEXT_SIZE

    def decrypt(key: bytes, data: bytes) -> bytes:
        if len(data) != REQUEST2_SIZE or len(key) != 32:
            raise ProtocolError(_NOT_OPENED)
        out = new(out_type, plain_size)
        if c_decrypt(
            out,
            null,
            null,
            data[SEALED_HEADER_SIZE:],
            sealed_size,
            data,  # its first SEALED_HEADER_SIZE bytes: the associated data
            SEALED_HEADER_SIZE,
            _ZERO_NONCE,
            key,
        ):
            raise ProtocolError(_NOT_OPENED)
        plaintext: bytes = buffer(out)[:]
        return plaintext

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    key = hashlib.sha256(b"ADBA-KMS-V2 probe").digest()
    header = bytes(range(SEALED_HEADER_SIZE))
    plain = bytes(range(plain_size))
    probe = header + ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plain, header)
    try:
        if decrypt(key, probe) != plain:
            return None
    except ProtocolError:
        return None
    try:
        decrypt(key, probe[:-1] + bytes([probe[-1] ^ 1]))
    except ProtocolError:
        return decrypt  # it opened the probe, and refused it altered
    return None


class Opener:
    """The host's side: opens requests sealed to its key (one per host, reused)."""

    __slots__ = ("_decrypt", "_exchange", "_info_tail", "engine", "key_id", "public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        seed = private_key.private_bytes_raw()
        scalar = hashlib.sha512(seed).digest()[:32]
        x_private = X25519PrivateKey.from_private_bytes(scalar)
        ed_public = private_key.public_key().public_bytes_raw()
        self.public = x_private.public_key().public_bytes_raw()
        if self.public != x25519_public_of(ed_public):  # the map and the expansion agree
            raise ProtocolError("the host's X25519 key does not match its certified key")
        self.key_id = key_id(ed_public)
        self._exchange, self._decrypt = _cryptography_engine(x_private)
        fast = _sodium_decrypt()
        if fast is not None:
            self._decrypt = fast
        #: which library decrypts requests ("libsodium" or "openssl"), for the log; the
        #: exchange is OpenSSL's either way
        self.engine = "openssl" if fast is None else "libsodium"
        self._info_tail = self.public + b"\x01"

    def open(self, data: bytes) -> bytes:
        """The plaintext of a 200-byte v2 request; :class:`ProtocolError` if it does not
        open (wrong key, any byte changed, a low-order ephemeral key)."""
        if len(data) != REQUEST2_SIZE:
            raise ProtocolError(_NOT_OPENED)
        ephemeral = data[40:72]
        try:
            shared = self._exchange(ephemeral)
        except ValueError as exc:  # a low-order point: an all-zero secret
            raise ProtocolError(_NOT_OPENED) from exc
        prk = _hmac(_SALT, shared, "sha256")
        return self._decrypt(_hmac(prk, ephemeral + self._info_tail, "sha256"), data)
