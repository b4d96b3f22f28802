"""Issuance licenses and signing-key certificates: DER, signed with Ed25519.

The authority's root key is pinned by clients. It certifies a signing key (so the signing key
can rotate), and the signing key signs issuance licenses, which bind a CSVLK to a directory
forest. The ASN.1 module (all times are INTEGER seconds since the Unix epoch, UTC)::

    ADBA-License-1 DEFINITIONS IMPLICIT TAGS ::= BEGIN

    TBSCertificate ::= SEQUENCE {
        version       INTEGER (1 | 2),            -- 2 exactly when retiredKeyIds is present
        keyId         OCTET STRING (SIZE (8)),    -- SHA-256(publicKey)[0..8]
        publicKey     OCTET STRING (SIZE (32)),   -- raw Ed25519 public key
        notBefore     INTEGER,
        notAfter      INTEGER,
        issuerKeyId   OCTET STRING (SIZE (8)),    -- keyId of the root key
        retiredKeyIds [0] SEQUENCE SIZE (0..32) OF OCTET STRING (SIZE (8)) OPTIONAL }
                                                  -- signing keys the root has retired

    SignedCertificate ::= SEQUENCE {
        tbs           TBSCertificate,
        signature     OCTET STRING (SIZE (64)) }  -- root key signs DER(tbs)

    TBSIssuanceLicense ::= SEQUENCE {
        version       INTEGER (1),
        csvlkSku      OCTET STRING (SIZE (16)),   -- UUID, RFC 4122 byte order
        csvlkPid      UTF8String (SIZE (1..512)),
        partialKey    UTF8String (SIZE (5)),
        kmsIds        SEQUENCE SIZE (1..64) OF OCTET STRING (SIZE (16)),
        forestDn      UTF8String (SIZE (1..1024)), -- normalise_dn() form
        forestGuid    [0] OCTET STRING (SIZE (16)) OPTIONAL,
        issuedAt      INTEGER,
        installationId [1] UTF8String (SIZE (1..256)) OPTIONAL,
        confirmationId [2] UTF8String (SIZE (1..256)) OPTIONAL,
        signer        SignedCertificate }

    SignedIssuanceLicense ::= SEQUENCE {
        tbs           TBSIssuanceLicense,
        signature     OCTET STRING (SIZE (64)) }  -- signing key signs DER(tbs)

    END

A certificate's ``retiredKeyIds`` is the root's statement that licenses signed by those keys
are void (``adba authority rotate --retire``). Every license carries its signer's certificate,
so every license issued after a retirement carries the statement; :func:`verify_license`
refuses a license whose signer is in it or in the ``retired`` set the caller passes (what an
agent remembers from newer licenses, or the pinned ``retired.pem``: :func:`load_retired_keys`).

Decoding is strict: the input must be the exact DER encoding of a value of this module (decode
then re-encode gives the same bytes), with nothing after it, and every size above holds.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyasn1.codec.der import decoder as _der_decoder
from pyasn1.codec.der import encoder as _der_encoder
from pyasn1.type import char, namedtype, tag, univ

from adba.errors import (
    CertificateExpired,
    InvalidDN,
    InvalidInput,
    MalformedLicense,
    SignatureInvalid,
    SignerRetired,
    UntrustedSigner,
    WrongForest,
)
from adba.keys import ALPHABET

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "FORMAT_VERSION",
    "MAX_LICENSE_SIZE",
    "ForestIdentity",
    "IssuanceLicense",
    "SigningCertificate",
    "decode_certificate",
    "decode_license",
    "dump_public_key_pem",
    "dump_retirement_pem",
    "issue_certificate",
    "key_id",
    "load_retired_keys",
    "load_root_public_key",
    "make_pid",
    "normalise_dn",
    "sign_license",
    "stated_retirements",
    "verify_license",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: the certificate version that carries ``retiredKeyIds``
CERT_VERSION_RETIRING = 2
MAX_RETIRED = 32
RETIRED_PEM_LABEL = "ADBA RETIRED SIGNING KEYS"
MAX_LICENSE_SIZE = 5 * 1024 * 1024
_MAX_PID = 512
_MAX_DN = 1024
_MAX_ID_TEXT = 256  # installation and confirmation IDs
_MAX_KMS_IDS = 64
_MAX_ELEMENTS = 256  # TLV elements in one license: bounds the decoder's work before pyasn1 runs
_MAX_TIME = (1 << 63) - 1
_MAX_PEM_SIZE = 64 * 1024


# -- ASN.1 specification -----------------------------------------------------------------------
def _implicit(number: int) -> tag.Tag:
    return tag.Tag(tag.tagClassContext, tag.tagFormatSimple, number)


class _KeyIds(univ.SequenceOf):  # type: ignore[misc]
    componentType = univ.OctetString()


class _TBSCertificate(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("keyId", univ.OctetString()),
        namedtype.NamedType("publicKey", univ.OctetString()),
        namedtype.NamedType("notBefore", univ.Integer()),
        namedtype.NamedType("notAfter", univ.Integer()),
        namedtype.NamedType("issuerKeyId", univ.OctetString()),
        namedtype.OptionalNamedType(
            "retiredKeyIds",
            _KeyIds().subtype(
                implicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 0)
            ),
        ),
    )


class _SignedCertificate(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("tbs", _TBSCertificate()),
        namedtype.NamedType("signature", univ.OctetString()),
    )


class _KmsIds(univ.SequenceOf):  # type: ignore[misc]
    componentType = univ.OctetString()


class _TBSIssuanceLicense(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("csvlkSku", univ.OctetString()),
        namedtype.NamedType("csvlkPid", char.UTF8String()),
        namedtype.NamedType("partialKey", char.UTF8String()),
        namedtype.NamedType("kmsIds", _KmsIds()),
        namedtype.NamedType("forestDn", char.UTF8String()),
        namedtype.OptionalNamedType(
            "forestGuid", univ.OctetString().subtype(implicitTag=_implicit(0))
        ),
        namedtype.NamedType("issuedAt", univ.Integer()),
        namedtype.OptionalNamedType(
            "installationId", char.UTF8String().subtype(implicitTag=_implicit(1))
        ),
        namedtype.OptionalNamedType(
            "confirmationId", char.UTF8String().subtype(implicitTag=_implicit(2))
        ),
        namedtype.NamedType("signer", _SignedCertificate()),
    )


class _SignedIssuanceLicense(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("tbs", _TBSIssuanceLicense()),
        namedtype.NamedType("signature", univ.OctetString()),
    )


# -- value types -------------------------------------------------------------------------------
def normalise_dn(dn: str) -> str:
    """Compare-ready DN: lower case, no spaces around ``,`` or ``=``.

    ``DC=Example, DC=COM`` becomes ``dc=example,dc=com``. Escaped commas (``\\,``) are kept.
    Raises :class:`~adba.errors.InvalidDN` for an empty DN or an RDN without ``=``.
    """
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char_ in dn:
        if escaped:
            current.append(char_)
            escaped = False
        elif char_ == "\\":
            current.append(char_)
            escaped = True
        elif char_ == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char_)
    parts.append("".join(current))
    rdns = []
    for part in parts:
        attr, sep, value = part.partition("=")
        attr, value = attr.strip(), value.lstrip()
        stripped = value.rstrip()
        # keep an escaped trailing space ("\ ")
        trailing = len(stripped) - len(stripped.rstrip("\\"))
        value = stripped + " " if trailing % 2 and len(stripped) < len(value) else stripped
        if not sep or not attr or not value:
            raise InvalidDN(f"not a distinguished name: {dn!r}", dn=dn)
        rdns.append(f"{attr}={value}".lower())
    return ",".join(rdns)


@dataclass(frozen=True)
class ForestIdentity:
    """A directory forest: its root DN (normalised) and, where the directory has one, its GUID.

    Use :meth:`of`; the constructor normalises too.
    """

    dn: str
    guid: uuid.UUID | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dn", normalise_dn(self.dn))

    @classmethod
    def of(cls, dn: str, guid: uuid.UUID | str | None = None) -> ForestIdentity:
        if isinstance(guid, str):
            try:
                guid = uuid.UUID(guid)
            except ValueError:
                raise InvalidInput(f"not a GUID: {guid!r}") from None
        return cls(dn, guid)

    def __str__(self) -> str:
        return f"{self.dn} (GUID {self.guid})" if self.guid else self.dn

    def matches(self, other: ForestIdentity) -> bool:
        """Same DN and the same GUID. Never a wildcard: a license without a GUID, or a
        directory that does not tell its GUID, matches no forest."""
        if self.dn != other.dn or self.guid is None or other.guid is None:
            return False
        return self.guid == other.guid


@dataclass(frozen=True)
class SigningCertificate:
    """The root key's certificate for a signing key."""

    key_id: bytes
    public_key: bytes
    not_before: int
    not_after: int
    issuer_key_id: bytes
    signature: bytes = field(repr=False)
    der: bytes = field(repr=False)  #: DER of the SignedCertificate
    #: key ids of signing keys the root had retired when it issued this certificate
    retired: tuple[bytes, ...] = ()

    def valid_at(self, when: int) -> bool:
        return self.not_before <= when <= self.not_after


@dataclass(frozen=True)
class IssuanceLicense:
    """A decoded issuance license (verified only if it came from :func:`verify_license`)."""

    csvlk_sku: uuid.UUID
    csvlk_pid: str
    partial_key: str
    kms_ids: tuple[uuid.UUID, ...]
    forest: ForestIdentity
    issued_at: int
    installation_id: str | None
    confirmation_id: str | None
    certificate: SigningCertificate
    der: bytes = field(repr=False)  #: DER of the SignedIssuanceLicense


def key_id(public_key: bytes) -> bytes:
    """The 8-byte id of a raw Ed25519 public key: SHA-256 of it, first 8 bytes."""
    return hashlib.sha256(public_key).digest()[:8]


def make_pid(code: int, serial: int, issued_at: int) -> str:
    """The product ID of an activated CSVLK, e.g. ``ADBA-00002-0000000042-2026328``.

    Product code, serial and the UTC issue date as year and day of year.
    """
    day = _dt.datetime.fromtimestamp(issued_at, _dt.UTC)
    return f"ADBA-{code:05d}-{serial:010d}-{day.year:04d}{day.timetuple().tm_yday:03d}"


def _when(seconds: int) -> str:
    try:
        return _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (Unix time)"


# -- encoding ----------------------------------------------------------------------------------
def _raw_public(private_key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _check_time(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= _MAX_TIME:
        raise InvalidInput(f"{name} must be a Unix time in seconds, not {value!r}")


def _certificate_tbs(
    public_key: bytes,
    not_before: int,
    not_after: int,
    issuer: bytes,
    retired: tuple[bytes, ...] | None,
) -> _TBSCertificate:
    tbs = _TBSCertificate()
    tbs["version"] = FORMAT_VERSION if retired is None else CERT_VERSION_RETIRING
    tbs["keyId"] = key_id(public_key)
    tbs["publicKey"] = public_key
    tbs["notBefore"] = not_before
    tbs["notAfter"] = not_after
    tbs["issuerKeyId"] = issuer
    if retired is not None:
        tbs["retiredKeyIds"].extend(list(retired))
    return tbs


def issue_certificate(
    root_private_key: Ed25519PrivateKey,
    signing_public_key: bytes,
    not_before: int,
    not_after: int,
    *,
    retired: Iterable[bytes] = (),
) -> SigningCertificate:
    """Certify ``signing_public_key`` (raw, 32 bytes) under the root key, stating that the
    signing keys ``retired`` (8-byte key ids) are void (then the certificate is version 2)."""
    if len(signing_public_key) != 32:
        raise InvalidInput("a signing public key is 32 raw Ed25519 bytes")
    _check_time("not_before", not_before)
    _check_time("not_after", not_after)
    if not_after < not_before:
        raise InvalidInput("the certificate would expire before it starts")
    retired_ids = tuple(sorted(set(retired)))
    if any(len(k) != 8 for k in retired_ids):
        raise InvalidInput("a retired key id is 8 bytes")
    if len(retired_ids) > MAX_RETIRED:
        raise InvalidInput(f"a certificate names at most {MAX_RETIRED} retired keys")
    if key_id(signing_public_key) in retired_ids:
        raise InvalidInput("cannot certify a signing key that is retired")
    tbs = _certificate_tbs(
        signing_public_key,
        not_before,
        not_after,
        key_id(_raw_public(root_private_key)),
        retired_ids or None,
    )
    signed = _SignedCertificate()
    signed["tbs"] = tbs
    signed["signature"] = root_private_key.sign(_der_encoder.encode(tbs))
    return decode_certificate(_der_encoder.encode(signed))


def sign_license(
    *,
    signing_private_key: Ed25519PrivateKey,
    certificate: SigningCertificate,
    csvlk_sku: uuid.UUID,
    csvlk_pid: str,
    partial_key: str,
    kms_ids: tuple[uuid.UUID, ...] | list[uuid.UUID],
    forest: ForestIdentity,
    issued_at: int,
    installation_id: str | None = None,
    confirmation_id: str | None = None,
) -> bytes:
    """Sign an issuance license; returns its DER. Refuses (InvalidInput) what would not decode."""
    if _raw_public(signing_private_key) != certificate.public_key:
        raise InvalidInput("the signing key does not match its certificate")
    if not 1 <= len(csvlk_pid) <= _MAX_PID:
        raise InvalidInput(f"a PID has 1 to {_MAX_PID} characters")
    if len(partial_key) != 5 or any(c not in ALPHABET for c in partial_key):
        raise InvalidInput("a partial product key is 5 product-key characters")
    if not 1 <= len(kms_ids) <= _MAX_KMS_IDS:
        raise InvalidInput(f"a license names 1 to {_MAX_KMS_IDS} KMS IDs")
    if len(forest.dn) > _MAX_DN:
        raise InvalidInput(f"the forest DN is longer than {_MAX_DN} characters")
    for name, value in (("installation_id", installation_id), ("confirmation_id", confirmation_id)):
        if value is not None and not 1 <= len(value) <= _MAX_ID_TEXT:
            raise InvalidInput(f"{name} has 1 to {_MAX_ID_TEXT} characters")
    _check_time("issued_at", issued_at)

    tbs = _TBSIssuanceLicense()
    tbs["version"] = FORMAT_VERSION
    tbs["csvlkSku"] = csvlk_sku.bytes
    tbs["csvlkPid"] = csvlk_pid
    tbs["partialKey"] = partial_key
    tbs["kmsIds"].extend([kms_id.bytes for kms_id in kms_ids])
    tbs["forestDn"] = forest.dn
    if forest.guid is not None:
        tbs["forestGuid"] = forest.guid.bytes
    tbs["issuedAt"] = issued_at
    if installation_id is not None:
        tbs["installationId"] = installation_id
    if confirmation_id is not None:
        tbs["confirmationId"] = confirmation_id
    tbs["signer"] = _decode_strict(certificate.der, _SignedCertificate(), "signing certificate")
    signed = _SignedIssuanceLicense()
    signed["tbs"] = tbs
    signed["signature"] = signing_private_key.sign(_der_encoder.encode(tbs))
    der: bytes = _der_encoder.encode(signed)
    decode_license(der)  # what we sign, we can read back
    return der


# -- decoding ----------------------------------------------------------------------------------
def _walk_der(data: bytes, what: str) -> None:
    """Walk the TLVs of ``data``: one element, definite lengths, a bounded number of elements.

    pyasn1 would happily build a million objects from a 5 MiB SEQUENCE OF; this walk is cheap
    and runs first. The full canonical-form check is the re-encoding in :func:`_decode_strict`.
    """
    stack = [(0, len(data))]
    count = 0
    while stack:
        pos, end = stack.pop()
        while pos < end:
            count += 1
            if count > _MAX_ELEMENTS:
                raise MalformedLicense(f"the {what} has more than {_MAX_ELEMENTS} ASN.1 elements")
            if end - pos < 2:
                raise MalformedLicense(f"the {what} is truncated")
            identifier, first = data[pos], data[pos + 1]
            if identifier & 0x1F == 0x1F:
                raise MalformedLicense(f"the {what} has an unexpected high-number ASN.1 tag")
            pos += 2
            if first & 0x80:
                octets = first & 0x7F
                if octets == 0 or octets > 4 or end - pos < octets:
                    raise MalformedLicense(f"the {what} has a bad ASN.1 length")
                length = int.from_bytes(data[pos : pos + octets], "big")
                pos += octets
            else:
                length = first
            if end - pos < length:
                raise MalformedLicense(f"the {what} is truncated")
            if identifier & 0x20:  # constructed
                stack.append((pos, pos + length))
            pos += length
            if count == 1 and pos < end:
                raise MalformedLicense(f"{end - pos} trailing bytes after the {what}")


def _decode_strict(der: bytes, spec: Any, what: str) -> Any:
    if not isinstance(der, bytes | bytearray | memoryview):
        raise MalformedLicense(f"a {what} is bytes, not {type(der).__name__}")
    der = bytes(der)
    if len(der) > MAX_LICENSE_SIZE:
        raise MalformedLicense(f"the {what} is larger than {MAX_LICENSE_SIZE} bytes")
    if not der:
        raise MalformedLicense(f"the {what} is empty")
    _walk_der(der, what)
    try:
        value, rest = _der_decoder.decode(der, asn1Spec=spec)
        if rest:
            raise MalformedLicense(f"{len(rest)} trailing bytes after the {what}")
        again = _der_encoder.encode(value)
    except MalformedLicense:
        raise
    except Exception as exc:
        # pyasn1 raises PyAsn1Error for most bad input but not for all of it (ValueError,
        # TypeError, UnicodeError from value classes): all of them mean "not ours".
        raise MalformedLicense(f"the {what} is not valid DER: {exc}".splitlines()[0]) from exc
    if again != der:
        raise MalformedLicense(f"the {what} is not in canonical DER form")
    return value


def _octets(value: Any, name: str, size: int) -> bytes:
    raw = bytes(value)
    if len(raw) != size:
        raise MalformedLicense(f"{name} has {len(raw)} bytes, not {size}")
    return raw


def _text(value: Any, name: str, low: int, high: int) -> str:
    try:
        text = str(value)
    except Exception as exc:  # pyasn1 decodes lazily; bad UTF-8 surfaces here
        raise MalformedLicense(f"{name} is not valid UTF-8") from exc
    if not low <= len(text) <= high:
        raise MalformedLicense(f"{name} has {len(text)} characters, not {low} to {high}")
    return text


def _time(value: Any, name: str) -> int:
    number = int(value)
    if not 0 <= number <= _MAX_TIME:
        raise MalformedLicense(f"{name} is not a Unix time: {number}")
    return number


def _version(value: Any, what: str) -> None:
    if int(value) != FORMAT_VERSION:
        raise MalformedLicense(f"unsupported {what} version {int(value)}")


def _certificate_from(value: Any) -> tuple[SigningCertificate, bytes]:
    tbs = value["tbs"]
    version = int(tbs["version"])
    listed = tbs["retiredKeyIds"]
    if version not in (FORMAT_VERSION, CERT_VERSION_RETIRING):
        raise MalformedLicense(f"unsupported certificate version {version}")
    if listed.isValue != (version == CERT_VERSION_RETIRING):
        raise MalformedLicense("a certificate has retiredKeyIds exactly when it is version 2")
    retired: tuple[bytes, ...] = ()
    if listed.isValue:
        if len(listed) > MAX_RETIRED:
            raise MalformedLicense(f"a certificate names at most {MAX_RETIRED} retired keys")
        retired = tuple(_octets(k, "certificate retiredKeyIds", 8) for k in listed)
    public_key = _octets(tbs["publicKey"], "certificate publicKey", 32)
    certificate = SigningCertificate(
        key_id=_octets(tbs["keyId"], "certificate keyId", 8),
        public_key=public_key,
        not_before=_time(tbs["notBefore"], "certificate notBefore"),
        not_after=_time(tbs["notAfter"], "certificate notAfter"),
        issuer_key_id=_octets(tbs["issuerKeyId"], "certificate issuerKeyId", 8),
        signature=_octets(value["signature"], "certificate signature", 64),
        der=_der_encoder.encode(value),
        retired=retired,
    )
    if certificate.key_id != key_id(public_key):
        raise MalformedLicense("the certificate keyId is not the id of its public key")
    if certificate.key_id in retired:
        raise MalformedLicense("the certificate retires its own key")
    return certificate, _der_encoder.encode(tbs)


def decode_certificate(der: bytes) -> SigningCertificate:
    """Parse a SignedCertificate (no signature check). MalformedLicense if anything is wrong."""
    return _certificate_from(_decode_strict(der, _SignedCertificate(), "signing certificate"))[0]


@dataclass(frozen=True)
class _Decoded:
    license: IssuanceLicense
    tbs_der: bytes  #: what the signing key signed
    signature: bytes
    certificate_tbs_der: bytes  #: what the root key signed


def _decode(der: bytes) -> _Decoded:
    value = _decode_strict(der, _SignedIssuanceLicense(), "license")
    signature = _octets(value["signature"], "license signature", 64)
    tbs = value["tbs"]
    _version(tbs["version"], "license")
    certificate, certificate_tbs = _certificate_from(tbs["signer"])
    if len(tbs["kmsIds"]) > _MAX_KMS_IDS or not len(tbs["kmsIds"]):
        raise MalformedLicense(f"a license names 1 to {_MAX_KMS_IDS} KMS IDs")
    guid = tbs["forestGuid"]
    forest_dn = _text(tbs["forestDn"], "forestDn", 1, _MAX_DN)
    try:
        forest = ForestIdentity(
            forest_dn, uuid.UUID(bytes=_octets(guid, "forestGuid", 16)) if guid.isValue else None
        )
    except InvalidDN as exc:
        raise MalformedLicense("forestDn is not a distinguished name") from exc
    if forest.dn != forest_dn:
        raise MalformedLicense("forestDn is not in normalised form")
    optional = {}
    for name in ("installationId", "confirmationId"):
        optional[name] = _text(tbs[name], name, 1, _MAX_ID_TEXT) if tbs[name].isValue else None
    partial_key = _text(tbs["partialKey"], "partialKey", 5, 5)
    if any(c not in ALPHABET for c in partial_key):
        raise MalformedLicense("partialKey is not 5 product-key characters")
    license_ = IssuanceLicense(
        csvlk_sku=uuid.UUID(bytes=_octets(tbs["csvlkSku"], "csvlkSku", 16)),
        csvlk_pid=_text(tbs["csvlkPid"], "csvlkPid", 1, _MAX_PID),
        partial_key=partial_key,
        kms_ids=tuple(uuid.UUID(bytes=_octets(k, "kmsIds", 16)) for k in tbs["kmsIds"]),
        forest=forest,
        issued_at=_time(tbs["issuedAt"], "issuedAt"),
        installation_id=optional["installationId"],
        confirmation_id=optional["confirmationId"],
        certificate=certificate,
        der=bytes(der),
    )
    return _Decoded(license_, _der_encoder.encode(tbs), signature, certificate_tbs)


def decode_license(der: bytes) -> IssuanceLicense:
    """Parse a license without checking signatures. MalformedLicense if anything is wrong."""
    return _decode(der).license


# -- verification ------------------------------------------------------------------------------
def _ed25519_verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_license(
    der: bytes,
    *,
    root_public_key: bytes,
    forest: ForestIdentity | None,
    now: int,
    retired: Iterable[bytes] = (),
) -> IssuanceLicense:
    """Decode and verify a license against the pinned root key and, if given, the forest.

    ``retired``: key ids of signing keys known to be retired (remembered from the
    ``certificate.retired`` of newer licenses, or :func:`load_retired_keys`).

    Raises, in this order of checks: MalformedLicense, UntrustedSigner (certificate not from
    the pinned root), SignerRetired (its signing key is in ``retired``), CertificateExpired
    (certificate not valid now, or license issued outside it), SignatureInvalid, WrongForest
    (also for a license or a forest without a GUID: never a wildcard).
    """
    decoded = _decode(der)
    license_ = decoded.license
    certificate = license_.certificate
    root_id = key_id(root_public_key)
    if certificate.issuer_key_id != root_id:
        raise UntrustedSigner(
            f"the license's signing certificate was issued by key {certificate.issuer_key_id.hex()}"
            f", not by the pinned root key {root_id.hex()}",
        )
    if not _ed25519_verifies(root_public_key, certificate.signature, decoded.certificate_tbs_der):
        raise UntrustedSigner(
            "the license's signing certificate is not signed under the pinned root key"
        )
    if certificate.key_id in set(retired):
        raise SignerRetired(
            f"the license was signed by key {certificate.key_id.hex()}, which the authority "
            "has retired: activate the forest again to get a license from the current key",
            key_id=certificate.key_id.hex(),
        )
    if not certificate.valid_at(now):
        raise CertificateExpired(
            f"the license's signing certificate is valid from {_when(certificate.not_before)} "
            f"to {_when(certificate.not_after)}, not now ({_when(now)}): check the clock",
        )
    if not certificate.valid_at(license_.issued_at):
        raise CertificateExpired(
            f"the license was issued at {_when(license_.issued_at)}, outside its signing "
            f"certificate's validity ({_when(certificate.not_before)} to "
            f"{_when(certificate.not_after)})",
        )
    if not _ed25519_verifies(certificate.public_key, decoded.signature, decoded.tbs_der):
        raise SignatureInvalid("the license signature does not verify: it was altered or forged")
    if forest is not None and not license_.forest.matches(forest):
        raise WrongForest(
            f"the license was issued for forest {license_.forest}, not for this forest {forest}",
            license_forest=str(license_.forest),
            forest=str(forest),
        )
    log.debug("license for %s verified (PID %s)", license_.forest, license_.csvlk_pid)
    return license_


def stated_retirements(der: bytes, *, root_public_key: bytes) -> frozenset[bytes]:
    """The signing keys a license's certificate states are retired, if the pinned root
    signed that certificate; empty for a license that does not decode or whose certificate
    is not the root's. Neither the license's own signature nor any time is checked: the
    root's statement holds whatever carries it (a verifier reads it from every candidate
    before it accepts any, so a forged license of a retired key cannot come first)."""
    try:
        decoded = _decode(der)
    except MalformedLicense:
        return frozenset()
    certificate = decoded.license.certificate
    if not certificate.retired or certificate.issuer_key_id != key_id(root_public_key):
        return frozenset()
    if not _ed25519_verifies(root_public_key, certificate.signature, decoded.certificate_tbs_der):
        return frozenset()
    return frozenset(certificate.retired)


# -- the pinned retirement statement -----------------------------------------------------------
def dump_retirement_pem(certificate: SigningCertificate) -> str:
    """The pin file ``retired.pem``: a root-signed certificate whose ``retiredKeyIds`` list
    the retired signing keys (safe to ship over any channel: the root signature covers it)."""
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(certificate.der).decode(), 64))
    return f"-----BEGIN {RETIRED_PEM_LABEL}-----\n{body}\n-----END {RETIRED_PEM_LABEL}-----\n"


def load_retired_keys(path: str | os.PathLike[str], *, root_public_key: bytes) -> frozenset[bytes]:
    """Read ``retired.pem`` (see :func:`dump_retirement_pem`) and check it is signed by the
    pinned root; returns the retired signing-key ids. A file that is missing is no
    retirement (an empty set); one that is unreadable or not signed by the root is refused."""
    import base64
    import binascii

    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read(_MAX_PEM_SIZE + 1)
    except FileNotFoundError:
        return frozenset()
    except OSError as exc:
        raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}", path=name) from exc
    begin, end = f"-----BEGIN {RETIRED_PEM_LABEL}-----", f"-----END {RETIRED_PEM_LABEL}-----"
    text = data.decode("ascii", "replace")
    if len(data) > _MAX_PEM_SIZE or begin not in text or end not in text:
        raise InvalidInput(f"{name} is not a retirement file ({begin})", path=name)
    try:
        der = base64.b64decode(text.split(begin, 1)[1].split(end, 1)[0], validate=False)
        certificate, tbs_der = _certificate_from(
            _decode_strict(der, _SignedCertificate(), "retirement file")
        )
    except (binascii.Error, ValueError, MalformedLicense) as exc:
        raise InvalidInput(f"{name} is not a valid retirement file", path=name) from exc
    if certificate.issuer_key_id != key_id(root_public_key) or not _ed25519_verifies(
        root_public_key, certificate.signature, tbs_der
    ):
        raise UntrustedSigner(f"{name} is not signed by the pinned root key", path=name)
    return frozenset(certificate.retired)


# -- PEM files for the pinned root key ---------------------------------------------------------
def dump_public_key_pem(raw: bytes) -> str:
    """A raw Ed25519 public key as a PEM SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(raw) != 32:
        raise InvalidInput("an Ed25519 public key is 32 bytes")
    pem = Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode("ascii")


def load_root_public_key(path: str | os.PathLike[str]) -> bytes:
    """Read the pinned root key (PEM SubjectPublicKeyInfo, Ed25519); returns its 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read(_MAX_PEM_SIZE + 1)
    except OSError as exc:
        raise InvalidInput(
            f"cannot read the root public key {name}: {exc.strerror or exc}", path=name
        ) from exc
    if len(data) > _MAX_PEM_SIZE:
        raise InvalidInput(f"{name} is too large to be a public key file", path=name)
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as exc:  # ValueError, UnsupportedAlgorithm, ...: all mean "not a key"
        raise InvalidInput(
            f"{name} is not a PEM public key file (BEGIN PUBLIC KEY)", path=name
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{name} holds a public key that is not Ed25519", path=name)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
