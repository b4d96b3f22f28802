from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adba.errors import (
    CertificateExpired,
    InvalidDN,
    InvalidInput,
    LicenseError,
    MalformedLicense,
    SignatureInvalid,
    UntrustedSigner,
    WrongForest,
)
from adba.license import (
    ForestIdentity,
    SigningCertificate,
    decode_certificate,
    decode_license,
    dump_public_key_pem,
    issue_certificate,
    key_id,
    load_root_public_key,
    make_pid,
    normalise_dn,
    sign_license,
    verify_license,
)

NOW = 1_790_000_000  # 2026-09-21
DAY = 86_400
FOREST_GUID = uuid.UUID("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
SKU = uuid.UUID("56ed8476-1253-4a36-82b3-57101e87ff3e")
KMS_IDS = (
    uuid.UUID("a50eb54c-ffc6-435b-9c1b-f43a9473ef99"),
    uuid.UUID("e9ff4de9-1d89-4850-ad0b-060206066634"),
)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class Setup:
    root: Ed25519PrivateKey
    signing: Ed25519PrivateKey
    certificate: SigningCertificate
    forest: ForestIdentity

    @property
    def root_public(self) -> bytes:
        return _raw(self.root)

    def sign(self, **overrides: Any) -> bytes:
        fields: dict[str, Any] = {
            "signing_private_key": self.signing,
            "certificate": self.certificate,
            "csvlk_sku": SKU,
            "csvlk_pid": make_pid(2, 42, NOW),
            "partial_key": "QMJWW",
            "kms_ids": KMS_IDS,
            "forest": self.forest,
            "issued_at": NOW,
        }
        fields.update(overrides)
        return sign_license(**fields)


@pytest.fixture(scope="module")
def setup() -> Setup:
    root = Ed25519PrivateKey.generate()
    signing = Ed25519PrivateKey.generate()
    certificate = issue_certificate(root, _raw(signing), NOW - DAY, NOW + 365 * DAY)
    return Setup(root, signing, certificate, ForestIdentity.of("DC=Example, DC=Test", FOREST_GUID))


def test_round_trip(setup: Setup) -> None:
    der = setup.sign(installation_id="123456-789012", confirmation_id="654321")
    lic = verify_license(
        der, root_public_key=setup.root_public, forest=setup.forest, now=NOW + 10 * DAY
    )
    assert lic.csvlk_sku == SKU
    assert lic.csvlk_pid == "ADBA-00002-0000000042-2026264"
    assert lic.partial_key == "QMJWW"
    assert lic.kms_ids == KMS_IDS
    assert lic.forest == ForestIdentity("dc=example,dc=test", FOREST_GUID)
    assert lic.issued_at == NOW
    assert (lic.installation_id, lic.confirmation_id) == ("123456-789012", "654321")
    assert lic.certificate == setup.certificate
    assert lic.certificate.issuer_key_id == key_id(setup.root_public)
    assert lic.der == der
    assert decode_license(der) == lic


def test_optional_fields_absent(setup: Setup) -> None:
    der = setup.sign()
    lic = verify_license(der, root_public_key=setup.root_public, forest=setup.forest, now=NOW)
    assert lic.installation_id is None and lic.confirmation_id is None


def test_a_license_without_a_forest_guid_matches_no_forest(setup: Setup) -> None:
    """Never a wildcard: a GUID-less license is refused in the forest whose DN it names,
    whatever GUID that forest has, and a directory without a GUID matches no license."""
    der = setup.sign(forest=ForestIdentity.of("dc=example,dc=test"))
    assert decode_license(der).forest.guid is None  # old licenses still parse
    for forest in (setup.forest, ForestIdentity.of("dc=example,dc=test", uuid.uuid4())):
        with pytest.raises(WrongForest) as info:
            verify_license(der, root_public_key=setup.root_public, forest=forest, now=NOW)
        assert info.value.code == "license-wrong-forest"
    with pytest.raises(WrongForest):
        verify_license(
            der,
            root_public_key=setup.root_public,
            forest=ForestIdentity.of("dc=example,dc=test"),
            now=NOW,
        )
    assert not ForestIdentity.of("dc=a").matches(ForestIdentity.of("dc=a"))


def test_forest_none_skips_the_binding(setup: Setup) -> None:
    der = setup.sign()
    verify_license(der, root_public_key=setup.root_public, forest=None, now=NOW)


def test_every_byte_flip_is_rejected(setup: Setup) -> None:
    der = setup.sign(installation_id="1234", confirmation_id="5678")
    started = time.monotonic()
    seen: set[type[LicenseError]] = set()
    for position in range(len(der)):
        altered = bytearray(der)
        altered[position] ^= 0xFF
        with pytest.raises(LicenseError) as exc:
            verify_license(
                bytes(altered), root_public_key=setup.root_public, forest=setup.forest, now=NOW
            )
        seen.add(type(exc.value))
    assert time.monotonic() - started < 3
    assert {MalformedLicense, SignatureInvalid, UntrustedSigner} <= seen


def test_single_bit_flips_in_payload_break_the_signature(setup: Setup) -> None:
    der = setup.sign()
    start = der.index(b"QMJWW")
    altered = der[:start] + b"QMJWX" + der[start + 5 :]
    with pytest.raises(SignatureInvalid, match="altered or forged"):
        verify_license(altered, root_public_key=setup.root_public, forest=None, now=NOW)


def test_wrong_root(setup: Setup) -> None:
    der = setup.sign()
    other = _raw(Ed25519PrivateKey.generate())
    with pytest.raises(UntrustedSigner, match="pinned root key"):
        verify_license(der, root_public_key=other, forest=None, now=NOW)


def test_certificate_signed_by_an_impostor_claiming_the_root_id(setup: Setup) -> None:
    impostor = Ed25519PrivateKey.generate()
    signing = Ed25519PrivateKey.generate()
    forged = issue_certificate(impostor, _raw(signing), NOW - DAY, NOW + DAY)
    # re-sign a TBS that names the real root as issuer
    from pyasn1.codec.der import decoder, encoder

    from adba import license as mod

    value, _ = decoder.decode(forged.der, asn1Spec=mod._SignedCertificate())
    value["tbs"]["issuerKeyId"] = key_id(setup.root_public)
    value["signature"] = impostor.sign(encoder.encode(value["tbs"]))
    certificate = decode_certificate(encoder.encode(value))
    der = setup.sign(signing_private_key=signing, certificate=certificate)
    with pytest.raises(UntrustedSigner, match="not signed under the pinned root key"):
        verify_license(der, root_public_key=setup.root_public, forest=None, now=NOW)


def test_wrong_forest_dn(setup: Setup) -> None:
    der = setup.sign()
    other = ForestIdentity.of("dc=other,dc=test", FOREST_GUID)
    with pytest.raises(WrongForest, match=r"dc=example,dc=test.*not for this forest dc=other"):
        verify_license(der, root_public_key=setup.root_public, forest=other, now=NOW)


def test_wrong_forest_guid(setup: Setup) -> None:
    der = setup.sign()
    other = ForestIdentity.of("dc=example,dc=test", uuid.uuid4())
    with pytest.raises(WrongForest, match="GUID"):
        verify_license(der, root_public_key=setup.root_public, forest=other, now=NOW)
    # a directory that does not tell its GUID matches nothing (never on the DN alone)
    same_dn = ForestIdentity.of("DC=EXAMPLE,DC=TEST")
    with pytest.raises(WrongForest):
        verify_license(der, root_public_key=setup.root_public, forest=same_dn, now=NOW)


def test_expired_certificate(setup: Setup) -> None:
    der = setup.sign()
    later = setup.certificate.not_after + 1
    with pytest.raises(CertificateExpired, match="check the clock"):
        verify_license(der, root_public_key=setup.root_public, forest=None, now=later)
    earlier = setup.certificate.not_before - 1
    with pytest.raises(CertificateExpired):
        verify_license(der, root_public_key=setup.root_public, forest=None, now=earlier)


def test_license_issued_after_certificate_expiry(setup: Setup) -> None:
    short = issue_certificate(setup.root, _raw(setup.signing), NOW - 10 * DAY, NOW - DAY)
    der = setup.sign(certificate=short, issued_at=NOW)
    long = setup.certificate
    assert long.valid_at(NOW)
    with pytest.raises(CertificateExpired):
        verify_license(der, root_public_key=setup.root_public, forest=None, now=NOW - 2 * DAY)
    with pytest.raises(CertificateExpired, match="outside its signing certificate"):
        verify_license(der, root_public_key=setup.root_public, forest=None, now=NOW - 2 * DAY + 1)


def test_trailing_and_truncated(setup: Setup) -> None:
    der = setup.sign()
    with pytest.raises(MalformedLicense, match="trailing"):
        decode_license(der + b"\x00")
    for cut in (1, 10, len(der) // 2, len(der) - 1):
        with pytest.raises(MalformedLicense):
            verify_license(der[:cut], root_public_key=setup.root_public, forest=None, now=NOW)
    with pytest.raises(MalformedLicense):
        decode_license(b"")


def test_non_canonical_encoding_is_refused(setup: Setup) -> None:
    der = setup.sign()
    # long-form length for the outer SEQUENCE: same value, not DER
    assert der[1] == 0x82
    body = der[4:]
    padded = bytes([0x30, 0x83, 0]) + der[2:4] + body
    with pytest.raises(MalformedLicense):
        decode_license(padded)


def test_oversized_input_is_refused() -> None:
    with pytest.raises(MalformedLicense, match="larger than"):
        decode_license(b"\x30" + b"\x00" * (5 * 1024 * 1024 + 1))


def test_too_many_elements_is_refused_cheaply() -> None:
    items = b"\x04\x10" + b"\x00" * 16
    content = items * 10_000
    length = len(content).to_bytes(3, "big")
    blob = b"\x30\x83" + length + content
    started = time.monotonic()
    with pytest.raises(MalformedLicense, match="elements"):
        decode_license(blob)
    assert time.monotonic() - started < 0.5


def test_normalise_dn() -> None:
    assert normalise_dn("DC=Example, DC=Test") == "dc=example,dc=test"
    assert normalise_dn(" dc = example ,dc=test ") == "dc=example,dc=test"
    assert normalise_dn(r"O=Smith\, Jones, DC=Test") == r"o=smith\, jones,dc=test"
    for bad in ("", "example.test", "dc=example,", "=x"):
        with pytest.raises(InvalidDN):
            normalise_dn(bad)
    assert ForestIdentity("DC=A, DC=B").dn == "dc=a,dc=b"
    assert ForestIdentity.of("dc=a", str(FOREST_GUID)).guid == FOREST_GUID
    with pytest.raises(InvalidInput):
        ForestIdentity.of("dc=a", "not-a-guid")


def test_make_pid() -> None:
    assert make_pid(1, 42, 1_795_478_400) == "ADBA-00001-0000000042-2026328"
    assert len(make_pid(0xFFFF, 0xFFFFFFFF, NOW)) <= 512


def test_sign_refuses_bad_input(setup: Setup) -> None:
    with pytest.raises(InvalidInput, match="does not match its certificate"):
        setup.sign(signing_private_key=Ed25519PrivateKey.generate())
    with pytest.raises(InvalidInput):
        setup.sign(partial_key="AAAAA")
    with pytest.raises(InvalidInput):
        setup.sign(kms_ids=())
    with pytest.raises(InvalidInput):
        setup.sign(kms_ids=tuple(uuid.uuid4() for _ in range(65)))
    with pytest.raises(InvalidInput):
        setup.sign(csvlk_pid="x" * 513)
    with pytest.raises(InvalidInput):
        setup.sign(issued_at=-1)


def test_certificate_round_trip(setup: Setup) -> None:
    assert decode_certificate(setup.certificate.der) == setup.certificate
    with pytest.raises(MalformedLicense):
        decode_certificate(setup.certificate.der + b"\x00")


def test_root_public_key_file(setup: Setup, tmp_path: Path) -> None:
    pem = dump_public_key_pem(setup.root_public)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    path = tmp_path / "root.pub"
    path.write_text(pem)
    assert load_root_public_key(path) == setup.root_public
    bad = tmp_path / "bad.pub"
    bad.write_text("hello")
    with pytest.raises(InvalidInput, match=re.escape(str(bad))):
        load_root_public_key(bad)
    with pytest.raises(InvalidInput, match=r"missing\.pub"):
        load_root_public_key(tmp_path / "missing.pub")
