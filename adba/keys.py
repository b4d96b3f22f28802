"""Product keys: 25 characters in 5 groups of 5 over a 24-symbol alphabet.

Layout (symbols are indices into :data:`ALPHABET`)::

    position   1 ........................ 23   24   25
               payload, base 24, big-endian     check
                                                (hi, lo)

The 23 payload symbols encode one integer (24**23 > 2**105) holding, from the top::

    bits 100..98  format version (3 bits, = 1)
    bits  97..96  key type (2 bits, KeyType)
    bits  95..80  product code (16 bits: edition code for GVLK/MAK, CSVLK product code)
    bits  79..48  serial (32 bits, per type and product code)
    bits  47..0   tag (48 bits: HMAC of the fields above under the authority's secret)
    bits 105..101 must be zero

The tag sits in the lowest bits, so the last payload symbols, and with them the partial product
key (the last 5 characters), differ between keys.

Check value: ``sum((i + 1) * d[i] for i in 0..22) mod 571``, written as two base-24 symbols
(hi = c // 24, lo = c % 24). 571 is the largest prime below 24**2 = 576. It catches:

* a substitution in the payload at position i: ``(i + 1) * delta`` with ``0 < |delta| < 24``
  is never 0 mod a prime > 24;
* a substitution in a check symbol: the written value changes while the computed one does not;
* a transposition of payload symbols i and j: ``(j - i) * (d[j] - d[i])`` is never 0 mod 571;
* a transposition of payload symbol i with the hi check symbol: it goes unnoticed only when
  ``(24 + i + 1) == 0 mod 571``, which no i in 0..22 satisfies;
* a transposition of the two check symbols: ``24 * hi + lo != 24 * lo + hi`` unless equal.

``tests/unit/test_keys.py`` checks every single substitution and adjacent transposition
exhaustively on sample keys.

The tag makes CSVLKs and MAKs unforgeable without the authority's secret; GVLKs and AVMA keys
are public and carry :func:`public_tag`. CSVLKs and MAKs are secrets: ``repr()`` and ``str()`` of a
:class:`ProductKey` show only the partial key; use ``.text`` explicitly for the whole key.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from adba.errors import InvalidInput, InvalidKey

__all__ = [
    "ALPHABET",
    "KEY_FORMAT_VERSION",
    "PUBLIC_TAG_SECRET",
    "KeyType",
    "ProductKey",
    "authority_tag",
    "make_key",
    "parse_key",
    "public_tag",
    "verify_tag",
]

ALPHABET = "BCDFGHJKMPQRTVWXY2346789"
KEY_FORMAT_VERSION = 1
#: the fixed, public "secret" GVLK tags are computed with: GVLKs are published in the catalogue
PUBLIC_TAG_SECRET = b"adba-gvlk"

_BASE = len(ALPHABET)  # 24
_KEY_LENGTH = 25
_PAYLOAD_LENGTH = 23
_CHECK_PRIME = 571  # largest prime below 24 ** 2
_WEIGHTS = tuple(range(1, _PAYLOAD_LENGTH + 1))
_INDEX = {symbol: index for index, symbol in enumerate(ALPHABET)}

_TAG_BITS = 48
_SERIAL_BITS = 32
_CODE_BITS = 16
_TYPE_BITS = 2
_VERSION_BITS = 3
_PAYLOAD_BITS = _TAG_BITS + _SERIAL_BITS + _CODE_BITS + _TYPE_BITS + _VERSION_BITS  # 101
_MAX_CODE = (1 << _CODE_BITS) - 1
_MAX_SERIAL = (1 << _SERIAL_BITS) - 1
_MAX_TAG = (1 << _TAG_BITS) - 1


class KeyType(enum.IntEnum):
    """What a product key is for."""

    GVLK = 0  #: generic volume license key: public, one per edition, activates against KMS/ADBA
    CSVLK = 1  #: customer-specific volume license key: activates a forest or a KMS host
    MAK = 2  #: multiple activation key: activates one machine with the authority
    AVMA = 3  #: automatic VM activation key: public, per guest edition, activates on an AVMA host


@dataclass(frozen=True)
class ProductKey:
    """A parsed product key. ``repr()``/``str()`` never show a CSVLK or MAK whole."""

    text: str = field(repr=False)  #: canonical form, ``XXXXX-XXXXX-XXXXX-XXXXX-XXXXX``
    type: KeyType
    code: int
    serial: int
    tag: int = field(repr=False)

    @property
    def partial(self) -> str:
        """The partial product key: the last 5 characters."""
        return self.text[-5:]

    @property
    def is_secret(self) -> bool:
        return self.type is not KeyType.GVLK

    def masked(self) -> str:
        """``*****-*****-*****-*****-XXXXX``: safe to log and show."""
        return "*****-*****-*****-*****-" + self.partial

    def __str__(self) -> str:
        return self.masked() if self.is_secret else self.text

    def __repr__(self) -> str:
        return (
            f"ProductKey({str(self)!r}, type={self.type.name}, code={self.code}, "
            f"serial={self.serial})"
        )


def _check_value(payload: list[int]) -> int:
    return sum(w * d for w, d in zip(_WEIGHTS, payload, strict=True)) % _CHECK_PRIME


def _format(symbols: list[int]) -> str:
    chars = "".join(ALPHABET[s] for s in symbols)
    return "-".join(chars[i : i + 5] for i in range(0, _KEY_LENGTH, 5))


def _normalise(text: str) -> str:
    compact = "".join(text.split()).replace("-", "").upper()
    for position, char in enumerate(compact, start=1):
        if char not in _INDEX:
            raise InvalidKey(
                f"character {position} {char!r} is not allowed in product keys "
                f"(allowed: {ALPHABET})",
                position=position,
                character=char,
            )
    if len(compact) != _KEY_LENGTH:
        raise InvalidKey(
            f"a product key has 25 characters (5 groups of 5), this one has {len(compact)}",
            length=len(compact),
        )
    return compact


def parse_key(text: str, *, expect: KeyType | None = None, purpose: str = "") -> ProductKey:
    """Parse and check a product key; case, spaces and dashes do not matter.

    Raises :class:`~adba.errors.InvalidKey` with a message that says what is wrong; the message
    never contains the key. With ``expect``, a well-formed key of another type is an
    :class:`~adba.errors.InvalidKey` too (a GVLK or MAK where a CSVLK is needed: exit 11),
    its message naming ``purpose``.
    """
    key = _parse_key(text)
    if expect is not None and key.type is not expect:
        need = purpose or f"this needs a {expect.name}"
        raise InvalidKey(
            f"this is a {key.type.name} ({key.masked()}): {need}", key_type=key.type.name
        )
    return key


def _parse_key(text: str) -> ProductKey:
    compact = _normalise(text)
    symbols = [_INDEX[c] for c in compact]
    payload = symbols[:_PAYLOAD_LENGTH]
    written = symbols[_PAYLOAD_LENGTH] * _BASE + symbols[_PAYLOAD_LENGTH + 1]
    if written != _check_value(payload):
        raise InvalidKey("product key checksum does not match: check for a typo")
    value = 0
    for digit in payload:
        value = value * _BASE + digit
    if value >> _PAYLOAD_BITS:
        raise InvalidKey("not an ADBA product key (reserved bits are set)")
    tag = value & _MAX_TAG
    value >>= _TAG_BITS
    serial = value & _MAX_SERIAL
    value >>= _SERIAL_BITS
    code = value & _MAX_CODE
    value >>= _CODE_BITS
    type_bits = value & ((1 << _TYPE_BITS) - 1)
    version = value >> _TYPE_BITS
    if version != KEY_FORMAT_VERSION:
        raise InvalidKey(f"unsupported product key format version {version}", version=version)
    try:
        key_type = KeyType(type_bits)
    except ValueError:
        raise InvalidKey(f"unknown product key type {type_bits}") from None
    return ProductKey(_format(symbols), key_type, code, serial, tag)


def _check_fields(key_type: int, code: int, serial: int) -> KeyType:
    try:
        kt = KeyType(key_type)
    except ValueError:
        raise InvalidInput(f"unknown key type {key_type!r}") from None
    if not isinstance(code, int) or not 0 <= code <= _MAX_CODE:
        raise InvalidInput(f"product code must be 0..{_MAX_CODE}, not {code!r}")
    if not isinstance(serial, int) or not 0 <= serial <= _MAX_SERIAL:
        raise InvalidInput(f"serial must be 0..{_MAX_SERIAL}, not {serial!r}")
    return kt


def make_key(key_type: KeyType, code: int, serial: int, tag: int) -> ProductKey:
    """Build the key for these fields (the caller computes the tag)."""
    kt = _check_fields(key_type, code, serial)
    if not isinstance(tag, int) or not 0 <= tag <= _MAX_TAG:
        raise InvalidInput(f"tag must be 0..2**48-1, not {tag!r}")
    value = (
        ((((KEY_FORMAT_VERSION << _TYPE_BITS) | kt) << _CODE_BITS | code) << _SERIAL_BITS | serial)
        << _TAG_BITS
    ) | tag
    payload = [0] * _PAYLOAD_LENGTH
    for i in range(_PAYLOAD_LENGTH - 1, -1, -1):
        value, payload[i] = divmod(value, _BASE)
    check = _check_value(payload)
    symbols = [*payload, check // _BASE, check % _BASE]
    return ProductKey(_format(symbols), kt, code, serial, tag)


def _tag_message(key_type: KeyType, code: int, serial: int) -> bytes:
    return b"adba-key-tag\x00" + struct.pack(">BBHI", KEY_FORMAT_VERSION, key_type, code, serial)


def authority_tag(secret: bytes, key_type: KeyType, code: int, serial: int) -> int:
    """HMAC-SHA256 under ``secret`` of (version, type, code, serial), truncated to 48 bits."""
    kt = _check_fields(key_type, code, serial)
    digest = hmac.new(secret, _tag_message(kt, code, serial), hashlib.sha256).digest()
    return int.from_bytes(digest[: _TAG_BITS // 8], "big")


def public_tag(key_type: KeyType, code: int, serial: int) -> int:
    """The tag of a public key (a GVLK): :func:`authority_tag` under :data:`PUBLIC_TAG_SECRET`."""
    return authority_tag(PUBLIC_TAG_SECRET, key_type, code, serial)


def verify_tag(key: ProductKey, secret: bytes) -> bool:
    """Whether ``key`` was made with ``secret`` (GVLKs: with the public tag), in constant time."""
    if key.type in (KeyType.GVLK, KeyType.AVMA):
        secret = PUBLIC_TAG_SECRET
    expected = authority_tag(secret, key.type, key.code, key.serial)
    return hmac.compare_digest(expected.to_bytes(6, "big"), key.tag.to_bytes(6, "big"))
