"""Retiring a signing key: its private key is gone, the authority never signs with it again,
and a verifier that knows the retirement (a newer license, or the pinned retired.pem) refuses
every license it signed, forged later or not."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adba.authority import LocalAuthority
from adba.catalog import Catalog, load_catalog
from adba.cli import main
from adba.errors import (
    AuthorityError,
    InvalidInput,
    MalformedLicense,
    SignerRetired,
    UntrustedSigner,
)
from adba.keys import KeyType
from adba.license import (
    ForestIdentity,
    decode_certificate,
    decode_license,
    dump_retirement_pem,
    issue_certificate,
    load_retired_keys,
    make_pid,
    sign_license,
    verify_license,
)

NOW = 1_790_000_000
DAY = 86_400
FOREST = ForestIdentity.of("dc=example,dc=test", uuid.UUID("3f2504e0-4f89-11d3-9a0c-0305e82c3301"))
ELSEWHERE = ForestIdentity.of("dc=victim,dc=test", uuid.uuid4())


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog()


def _forge(path: Path, old_key_pem: bytes, old_cert_der: bytes, forest: ForestIdentity) -> bytes:
    """What a thief of the old signing key can still make: a license for any forest."""
    key = serialization.load_pem_private_key(old_key_pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    cat = load_catalog()
    product = cat.csvlk("Nimbus Server 2026 CSVLK")
    return sign_license(
        signing_private_key=key,
        certificate=decode_certificate(old_cert_der),
        csvlk_sku=product.sku,
        csvlk_pid=make_pid(product.code, 999, NOW + 2 * DAY),
        partial_key="QMJWW",
        kms_ids=product.kms_ids,
        forest=forest,
        issued_at=NOW + 2 * DAY,
    )


def test_rotate_retire_deletes_the_key_and_voids_what_it_signed(
    tmp_path: Path, catalog: Catalog
) -> None:
    auth = LocalAuthority.init(tmp_path / "a", now=NOW)
    key = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    before = auth.activate_csvlk(key.text, FOREST, catalog, now=NOW + 1)
    old_id = auth.certificate.key_id
    stolen = ((auth.path / "signing.key").read_bytes(), (auth.path / "signing.cert").read_bytes())

    new_cert = auth.rotate(now=NOW + DAY, retire=True)
    assert new_cert.retired == (old_id,) and new_cert.key_id != old_id
    assert not list(auth.path.glob("signing-*.key"))  # the private key is gone
    assert (auth.path / f"signing-{old_id.hex()}.cert").is_file()
    assert auth.retired_keys() == {old_id}
    assert LocalAuthority.open(auth.path).report(catalog)["retired_key_ids"] == [old_id.hex()]

    root = auth.root_public_key
    forged = _forge(auth.path, *stolen, ELSEWHERE)
    # without knowing of the retirement the forgery verifies: that is what retirement is for
    verify_license(forged, root_public_key=root, forest=ELSEWHERE, now=NOW + 3 * DAY)
    # the pinned retired.pem
    pinned = load_retired_keys(auth.path / "retired.pem", root_public_key=root)
    assert pinned == {old_id}
    for der in (forged, before.license_der):
        with pytest.raises(SignerRetired) as info:
            verify_license(
                der, root_public_key=root, forest=None, now=NOW + 3 * DAY, retired=pinned
            )
        assert info.value.code == "license-signer-retired" and info.value.exit_code == 9
    # what an agent learns from any license issued after the retirement
    after = auth.activate_csvlk(key.text, FOREST, catalog, now=NOW + 2 * DAY)
    learned = verify_license(
        after.license_der, root_public_key=root, forest=FOREST, now=NOW + 3 * DAY
    ).certificate.retired
    with pytest.raises(SignerRetired):
        verify_license(
            forged, root_public_key=root, forest=ELSEWHERE, now=NOW + 3 * DAY, retired=learned
        )
    # the same forest again: a license from the current key, not another activation
    assert decode_license(after.license_der).certificate.key_id == new_cert.key_id
    assert len(auth.activations(key.text)) == 1


def test_the_authority_refuses_to_sign_with_a_retired_key(tmp_path: Path) -> None:
    auth = LocalAuthority.init(tmp_path / "a", now=NOW)
    old_key = (auth.path / "signing.key").read_bytes()
    old_cert = (auth.path / "signing.cert").read_bytes()
    auth.rotate(now=NOW + DAY, retire=True)
    # someone restores the old pair from a backup
    (auth.path / "signing.key").write_bytes(old_key)
    (auth.path / "signing.cert").write_bytes(old_cert)
    with pytest.raises(AuthorityError, match="retired signing key"):
        LocalAuthority.open(auth.path)


def test_a_running_authority_follows_a_rotation_made_beside_it(
    tmp_path: Path, catalog: Catalog
) -> None:
    """`authority serve` holds its authority open; `authority rotate --retire` runs in another
    process. The serving one must sign its next license with the new key, never the old."""
    serving = LocalAuthority.init(tmp_path / "a", now=NOW)
    key = serving.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    old_id = serving.certificate.key_id
    new_cert = LocalAuthority.open(serving.path).rotate(now=NOW + DAY, retire=True)
    act = serving.activate_csvlk(key.text, FOREST, catalog, now=NOW + DAY + 1)
    signer = decode_license(act.license_der).certificate
    assert signer.key_id == new_cert.key_id != old_id
    assert serving.certificate.key_id == new_cert.key_id
    # and it stays on the new key: one more license, same signer, no second activation
    again = serving.activate_csvlk(key.text, FOREST, catalog, now=NOW + DAY + 2)
    assert decode_license(again.license_der).certificate.key_id == new_cert.key_id
    assert len(serving.activations(key.text)) == 1


def test_retire_a_key_rotated_out_before(tmp_path: Path, catalog: Catalog) -> None:
    auth = LocalAuthority.init(tmp_path / "a", now=NOW)
    first = auth.certificate.key_id
    auth.rotate(now=NOW + DAY)  # kept: objects it signed still verify
    assert (auth.path / f"signing-{first.hex()}.key").is_file()
    current = auth.certificate
    early = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    auth.activate_csvlk(early.text, FOREST, catalog, now=NOW + DAY + 1)
    with pytest.raises(InvalidInput, match="rotate --retire"):
        auth.retire(current.key_id.hex(), now=NOW + 2 * DAY)
    with pytest.raises(InvalidInput, match="never rotated out"):
        auth.retire("00" * 8, now=NOW + 2 * DAY)
    with pytest.raises(InvalidInput, match="16 hex digits"):
        auth.retire("zz", now=NOW + 2 * DAY)
    assert not (auth.path / "retired.pem").exists()
    cert = auth.retire(first.hex(), now=NOW + 2 * DAY)
    assert not (auth.path / f"signing-{first.hex()}.key").exists()
    assert cert.public_key == current.public_key and cert.retired == (first,)
    assert cert.not_after == current.not_after
    reopened = LocalAuthority.open(auth.path)  # the re-certified key opens and signs
    # a repeat activation after the retirement carries the new statement
    repeat = reopened.activate_csvlk(early.text, FOREST, catalog, now=NOW + 3 * DAY)
    assert decode_license(repeat.license_der).certificate.retired == (first,)
    assert len(reopened.activations(early.text)) == 1
    assert reopened.certificate == cert
    key = reopened.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    lic = reopened.activate_csvlk(key.text, FOREST, catalog, now=NOW + 3 * DAY)
    assert decode_license(lic.license_der).certificate.retired == (first,)
    pinned = load_retired_keys(auth.path / "retired.pem", root_public_key=auth.root_public_key)
    assert pinned == {first}
    # a second rotation with retire keeps the earlier retirement in the statement
    again = reopened.rotate(now=NOW + 4 * DAY, retire=True)
    assert set(again.retired) == {first, current.key_id}


def test_the_retirement_file_must_be_signed_by_the_pinned_root(tmp_path: Path) -> None:
    auth = LocalAuthority.init(tmp_path / "a", now=NOW)
    auth.rotate(now=NOW + DAY, retire=True)
    pem = auth.path / "retired.pem"
    assert (
        load_retired_keys(tmp_path / "missing.pem", root_public_key=auth.root_public_key) == set()
    )
    other = LocalAuthority.init(tmp_path / "b", now=NOW)
    with pytest.raises(UntrustedSigner):
        load_retired_keys(pem, root_public_key=other.root_public_key)
    # a thief's own statement (or an emptied list) under another root does not count either
    impostor = Ed25519PrivateKey.generate()
    fake = issue_certificate(impostor, bytes(32), NOW, NOW + DAY)
    (tmp_path / "fake.pem").write_text(dump_retirement_pem(fake))
    with pytest.raises(UntrustedSigner):
        load_retired_keys(tmp_path / "fake.pem", root_public_key=auth.root_public_key)
    lines = pem.read_text().splitlines()
    lines[1] = lines[1][:10] + ("A" if lines[1][10] != "A" else "B") + lines[1][11:]
    (tmp_path / "tampered.pem").write_text("\n".join(lines) + "\n")
    with pytest.raises((InvalidInput, UntrustedSigner)):
        load_retired_keys(tmp_path / "tampered.pem", root_public_key=auth.root_public_key)
    (tmp_path / "junk.pem").write_text("hello\n")
    with pytest.raises(InvalidInput):
        load_retired_keys(tmp_path / "junk.pem", root_public_key=auth.root_public_key)


def test_certificate_versions_are_strict() -> None:
    from pyasn1.codec.der import decoder, encoder

    from adba import license as mod

    root = Ed25519PrivateKey.generate()
    signing = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    plain = issue_certificate(root, signing, NOW, NOW + DAY)
    retiring = issue_certificate(root, signing, NOW, NOW + DAY, retired=[b"\x01" * 8])
    assert decode_certificate(plain.der).retired == ()
    assert decode_certificate(retiring.der).retired == (b"\x01" * 8,)
    for der, version in ((plain.der, 2), (retiring.der, 1)):  # field and version disagree
        value, _ = decoder.decode(der, asn1Spec=mod._SignedCertificate())
        value["tbs"]["version"] = version
        with pytest.raises(MalformedLicense, match="version 2"):
            decode_certificate(encoder.encode(value))
    with pytest.raises(InvalidInput, match="retired"):
        issue_certificate(root, signing, NOW, NOW + DAY, retired=[mod.key_id(signing)])


def test_cli_rotate_retire_and_retire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a"
    assert main(["authority", "init", "--path", str(path), "--cert-days", "365"]) == 0
    auth = LocalAuthority.open(path)
    assert auth.certificate.not_after - auth.certificate.not_before == 365 * DAY
    first = auth.certificate.key_id.hex()
    assert main(["authority", "rotate", "--path", str(path)]) == 0
    assert f"authority retire {first}" in capsys.readouterr().out
    assert main(["authority", "retire", "--path", str(path), first]) == 0
    assert "retired.pem" in capsys.readouterr().out
    second = LocalAuthority.open(path).certificate.key_id.hex()
    assert main(["authority", "rotate", "--path", str(path), "--retire"]) == 0
    out = capsys.readouterr().out
    assert f"old key {second} is retired" in out
    assert main(["authority", "report", "--path", str(path)]) == 0
    report = capsys.readouterr().out
    assert first in report and second in report and "retired signing keys" in report
    assert main(["authority", "retire", "--path", str(path), "nothex"]) == 2
    assert main(["authority", "rotate", "--path", str(path), "--cert-days", "0"]) == 2
    shutil.rmtree(path)
