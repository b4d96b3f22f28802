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
    SEALED_HEADER_SIZE,
    HostCertificate,
    Request,
    pack_sealed_header,
    plaintext_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

__all__ = ["Opener", "key_id", "seal", "x25519_public_of"]

_P = 2**255 - 19
_SALT = b"ADBA-KMS-V2"
_ZERO_NONCE = bytes(12)
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


def _same(data: bytes) -> bytes:
    return data


def _sodium_exchange(
    scalar: bytes, reference: Callable[[Any], bytes]
) -> Callable[[bytes], bytes] | None:
    """libsodium's X25519 (PyNaCl, the ``fast`` extra) for ``scalar``, where it is installed
    and gives what ``cryptography``'s gives (checked once on a fresh point): on the host it
    runs beside libsodium's Ed25519 signing, so the two share their field arithmetic in the
    caches, and it builds no key object per request. Raises ValueError for a low-order
    point, as ``cryptography`` does."""
    try:
        from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
        from nacl.exceptions import CryptoError
    except ImportError:
        return None
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    def exchange(point: bytes) -> bytes:
        try:
            return crypto_scalarmult(scalar, point)
        except CryptoError as exc:  # all-zero output: a low-order point
            raise ValueError("low-order X25519 point") from exc

    probe = crypto_scalarmult_base(hashlib.sha256(scalar + b"probe").digest())
    if exchange(probe) != reference(X25519PublicKey.from_public_bytes(probe)):
        return None
    return exchange


class Opener:
    """The host's side: opens requests sealed to its key (one per host, reused)."""

    __slots__ = ("_chacha", "_exchange", "_info_tail", "_public_of", "key_id", "public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import (
            X25519PrivateKey,
            X25519PublicKey,
        )
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        seed = private_key.private_bytes_raw()
        x_private = X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])
        ed_public = private_key.public_key().public_bytes_raw()
        self.public = x_private.public_key().public_bytes_raw()
        if self.public != x25519_public_of(ed_public):  # the map and the expansion agree
            raise ProtocolError("the host's X25519 key does not match its certified key")
        self.key_id = key_id(ed_public)
        self._exchange: Callable[[Any], bytes] = x_private.exchange
        self._public_of: Callable[[bytes], Any] = _public_key_loader(X25519PublicKey)
        fast = _sodium_exchange(hashlib.sha512(seed).digest()[:32], x_private.exchange)
        if fast is not None:
            self._exchange, self._public_of = fast, _same
        self._chacha = ChaCha20Poly1305
        self._info_tail = self.public + b"\x01"

    def open(self, data: bytes) -> bytes:
        """The plaintext of a 200-byte v2 request; :class:`ProtocolError` if it does not
        open (wrong key, any byte changed, a low-order ephemeral key)."""
        ephemeral = data[40:72]
        try:
            shared = self._exchange(self._public_of(ephemeral))
            prk = _hmac(_SALT, shared, "sha256")
            key = _hmac(prk, ephemeral + self._info_tail, "sha256")  # == _aead_key(...)
            return self._chacha(key).decrypt(
                _ZERO_NONCE, data[SEALED_HEADER_SIZE:], data[:SEALED_HEADER_SIZE]
            )
        except (InvalidTag, ValueError) as exc:
            raise ProtocolError("the sealed request does not open (altered or not for us)") from exc
