"""Installation IDs and confirmation IDs: activation without a network path to the authority.

The requester turns what it wants activated into an **installation ID** (IID): the product
key and a hash of what the activation is bound to (the forest, the KMS host's key, or the
machine), typed in groups of digits (:mod:`adba.digits`). The authority (online, or a phone
operator running ``adba authority confirm``) answers with a **confirmation ID** (CID): the
issue time and the authority root key's signature. Applying the CID rebuilds the signed proof
locally; nothing else needs to travel.

IID payload, 39 bytes: version (1), kind (1), key type (1), product code (2), key serial (4),
key tag (6), binding hash (16 = SHA-256 of the binding, truncated), subject (8: for a KMS host,
the hash of its host id, so the authority can count hosts and reactivations; else zeros). CID payload, 69 bytes:
issue time (5, seconds) and a 64-byte Ed25519 signature by the authority's root key over:

- a CSVLK for a forest: ``"ADBA-PHONE-1\\0" + IID + time`` -- stored in the activation object
  as ``msSPP-PhoneLicense`` (IID + time + signature, 100 bytes) and verified by every agent;
- a KMS host: the host certificate itself (:func:`adba.kms.protocol.certificate_message`),
  whose fields all follow from the IID and the time;
- a MAK on a machine: ``"ADBA-MAK-1\\0" + IID + time`` -- kept in the agent's state.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from .errors import InvalidInput, LicenseError, MalformedLicense, WrongForest
from .keys import KeyType, ProductKey, make_key

__all__ = [
    "CID_SIZE",
    "IID_SIZE",
    "KIND_CSVLK_FOREST",
    "KIND_KMS_HOST",
    "KIND_MAK_MACHINE",
    "Confirmation",
    "Installation",
    "forest_binding",
    "host_binding",
    "host_subject",
    "machine_binding",
    "parse_phone_license",
    "phone_license",
    "signed_message",
    "verify_phone_license",
]

VERSION = 1
KIND_CSVLK_FOREST, KIND_KMS_HOST, KIND_MAK_MACHINE = 1, 2, 3
_KINDS = {
    KIND_CSVLK_FOREST: "CSVLK for a forest",
    KIND_KMS_HOST: "KMS host",
    KIND_MAK_MACHINE: "MAK",
}
_IID = struct.Struct(">BBBHI6s16s8s")
IID_SIZE = _IID.size
CID_SIZE = 5 + 64
PHONE_MAGIC = b"ADBA-PL1"


def _hash(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()[:16]


def forest_binding(dn: str, guid: uuid.UUID | None) -> bytes:
    from .license import normalise_dn

    return _hash(b"forest", normalise_dn(dn).encode(), str(guid or "").encode())


def host_binding(public_key: bytes) -> bytes:
    return _hash(b"kms-host", public_key)


def host_subject(host_id: str) -> bytes:
    return hashlib.sha256(b"kms-host-id\0" + host_id.encode()).digest()[:8]


def machine_binding(cmid: uuid.UUID, edition_sku: uuid.UUID) -> bytes:
    return _hash(b"machine", cmid.bytes, edition_sku.bytes)


@dataclass(frozen=True)
class Installation:
    kind: int
    key: ProductKey
    binding: bytes
    subject: bytes = bytes(8)

    @classmethod
    def of(
        cls, kind: int, key: ProductKey, binding: bytes, subject: bytes = bytes(8)
    ) -> Installation:
        expected = {
            KIND_CSVLK_FOREST: KeyType.CSVLK,
            KIND_KMS_HOST: KeyType.CSVLK,
            KIND_MAK_MACHINE: KeyType.MAK,
        }[kind]
        if key.type is not expected:
            raise InvalidInput(f"a {_KINDS[kind]} needs a {expected.name}, not a {key.type.name}")
        if len(binding) != 16 or len(subject) != 8:
            raise InvalidInput("bad installation binding")
        return cls(kind, key, binding, subject)

    def payload(self) -> bytes:
        return _IID.pack(
            VERSION,
            self.kind,
            int(self.key.type),
            self.key.code,
            self.key.serial,
            self.key.tag.to_bytes(6, "big"),
            self.binding,
            self.subject,
        )

    def text(self) -> str:
        from .digits import encode_digits

        return encode_digits(self.payload())

    @classmethod
    def from_payload(cls, data: bytes) -> Installation:
        if len(data) != IID_SIZE:
            raise InvalidInput("not an ADBA installation ID (wrong length)")
        version, kind, key_type, code, serial, tag, binding, subject = _IID.unpack(data)
        if version != VERSION or kind not in _KINDS:
            raise InvalidInput("not an ADBA installation ID (unknown version or kind)")
        try:
            key = make_key(KeyType(key_type), code, serial, int.from_bytes(tag, "big"))
        except (ValueError, InvalidInput) as exc:
            raise InvalidInput("not an ADBA installation ID (bad key fields)") from exc
        return cls.of(kind, key, binding, subject)

    @classmethod
    def parse(cls, text: str) -> Installation:
        from .digits import decode_digits

        return cls.from_payload(decode_digits(text, kind="installation ID"))

    @property
    def kind_name(self) -> str:
        return _KINDS[self.kind]


@dataclass(frozen=True)
class Confirmation:
    issued_at: int
    signature: bytes

    def payload(self) -> bytes:
        return self.issued_at.to_bytes(5, "big") + self.signature

    def text(self) -> str:
        from .digits import encode_digits

        return encode_digits(self.payload())

    @classmethod
    def parse(cls, text: str) -> Confirmation:
        from .digits import decode_digits

        data = decode_digits(text, kind="confirmation ID")
        if len(data) != CID_SIZE:
            raise InvalidInput("not an ADBA confirmation ID (wrong length)")
        return cls(int.from_bytes(data[:5], "big"), data[5:])


def signed_message(
    installation: Installation, issued_at: int, *, host_public_key: bytes = b""
) -> bytes:
    """What the root key signs for this installation at this time (see the module doc)."""
    stamp = issued_at.to_bytes(5, "big")
    if installation.kind == KIND_CSVLK_FOREST:
        return b"ADBA-PHONE-1\0" + installation.payload() + stamp
    if installation.kind == KIND_MAK_MACHINE:
        return b"ADBA-MAK-1\0" + installation.payload() + stamp
    raise InvalidInput("KMS host confirmations sign the host certificate instead")


def verify_root_signature(root_public_key: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(root_public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def phone_license(installation: Installation, confirmation: Confirmation) -> bytes:
    """The ``msSPP-PhoneLicense`` value of an activation object activated by phone."""
    return PHONE_MAGIC + installation.payload() + confirmation.payload()


def parse_phone_license(data: bytes) -> tuple[Installation, Confirmation]:
    if len(data) != len(PHONE_MAGIC) + IID_SIZE + CID_SIZE or not data.startswith(PHONE_MAGIC):
        raise MalformedLicense("the phone license is malformed")
    body = data[len(PHONE_MAGIC) :]
    try:
        installation = Installation.from_payload(body[:IID_SIZE])
    except InvalidInput as exc:
        raise MalformedLicense(f"the phone license is malformed: {exc.message}") from exc
    rest = body[IID_SIZE:]
    return installation, Confirmation(int.from_bytes(rest[:5], "big"), rest[5:])


def verify_phone_license(
    data: bytes, *, root_public_key: bytes, forest_dn: str, forest_guid: uuid.UUID | None
) -> tuple[Installation, Confirmation]:
    """Root signature and forest binding of a phone license; the caller checks the object's
    attributes against what the installation implies (partial key, PID, SKU)."""
    installation, confirmation = parse_phone_license(data)
    if installation.kind != KIND_CSVLK_FOREST:
        raise LicenseError("the phone license is not for a forest")
    if not verify_root_signature(
        root_public_key,
        confirmation.signature,
        signed_message(installation, confirmation.issued_at),
    ):
        raise LicenseError("the phone license is not signed by the pinned authority")
    if installation.binding != forest_binding(forest_dn, forest_guid):
        raise WrongForest("the phone license was confirmed for another forest")
    return installation, confirmation
