from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from adba.authority import Activator, CsvlkActivation, LocalAuthority
from adba.catalog import Catalog, load_catalog
from adba.errors import (
    AuthorityError,
    AuthorityNotInitialised,
    InvalidInput,
    InvalidKey,
    UnknownProduct,
    WrongForest,
)
from adba.keys import KeyType, make_key, parse_key, verify_tag
from adba.license import ForestIdentity, load_root_public_key, verify_license

NOW = 1_790_000_000
FOREST = ForestIdentity.of("DC=Example,DC=Test", uuid.UUID("3f2504e0-4f89-11d3-9a0c-0305e82c3301"))


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def authority(tmp_path: Path) -> LocalAuthority:
    return LocalAuthority.init(tmp_path / "authority", now=NOW)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_lays_out_the_directory(authority: LocalAuthority) -> None:
    path = authority.path
    assert _mode(path) == 0o700
    for name in ("root.key", "signing.key", "tag.secret"):
        assert _mode(path / name) == 0o600, name
    assert _mode(path / "root.pub") == 0o644
    assert len((path / "tag.secret").read_bytes()) == 32
    assert b"BEGIN PRIVATE KEY" in (path / "root.key").read_bytes()
    assert load_root_public_key(path / "root.pub") == authority.root_public_key
    assert authority.root_public_key_pem == (path / "root.pub").read_text()
    with contextlib.closing(sqlite3.connect(path / "records.sqlite")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    certificate = authority.certificate
    assert certificate.not_before == NOW
    assert certificate.not_after == NOW + 730 * 86400


def test_open(authority: LocalAuthority) -> None:
    reopened = LocalAuthority.open(authority.path)
    assert reopened.root_public_key == authority.root_public_key
    assert reopened.certificate == authority.certificate


def test_refuses_reinit(authority: LocalAuthority) -> None:
    with pytest.raises(AuthorityError, match="already holds an activation authority"):
        LocalAuthority.init(authority.path, now=NOW)


def test_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    with pytest.raises(AuthorityError, match="not empty"):
        LocalAuthority.init(tmp_path, now=NOW)


def test_open_missing(tmp_path: Path) -> None:
    with pytest.raises(AuthorityNotInitialised, match="adba authority init"):
        LocalAuthority.open(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["root.key", "signing.key", "tag.secret"])
def test_refuses_readable_private_files(authority: LocalAuthority, name: str) -> None:
    file = authority.path / name
    os.chmod(file, 0o644)
    with pytest.raises(AuthorityError, match=f"chmod 600 {file}"):
        LocalAuthority.open(authority.path)


def test_mint_csvlk_and_mak(authority: LocalAuthority, catalog: Catalog) -> None:
    server = catalog.csvlk("Nimbus Server 2026 CSVLK")
    first = authority.mint(KeyType.CSVLK, server.name, catalog, now=NOW)
    second = authority.mint(KeyType.CSVLK, str(server.sku), catalog, now=NOW + 1)
    other = authority.mint(KeyType.CSVLK, "Nimbus Client 2026 CSVLK", catalog, now=NOW + 2)
    mak = authority.mint(KeyType.MAK, "Nimbus Workstation Education", catalog, now=NOW + 3)
    mak2 = authority.mint(KeyType.MAK, "nimbus workstation education", catalog, now=NOW + 4)
    assert (first.type, first.code, first.serial) == (KeyType.CSVLK, server.code, 1)
    assert second.serial == 2
    assert other.serial == 1 and other.code == catalog.csvlk("Nimbus Client 2026 CSVLK").code
    assert (mak.type, mak.code, mak.serial, mak2.serial) == (
        KeyType.MAK,
        catalog.edition("Nimbus Workstation Education").code,
        1,
        2,
    )
    for key in (first, second, other, mak, mak2):
        assert parse_key(key.text) == key
        assert verify_tag(key, (authority.path / "tag.secret").read_bytes())
    assert len({k.partial for k in (first, second, other, mak, mak2)}) == 5


def test_mint_refuses_gvlk_and_unknown_products(
    authority: LocalAuthority, catalog: Catalog
) -> None:
    with pytest.raises(InvalidInput, match="GVLKs are public"):
        authority.mint(KeyType.GVLK, "Nimbus Server Standard", catalog, now=NOW)
    with pytest.raises(UnknownProduct):
        authority.mint(KeyType.CSVLK, "Nimbus Server Standard", catalog, now=NOW)
    with pytest.raises(UnknownProduct):
        authority.mint(KeyType.MAK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)


def test_records_never_hold_the_key(authority: LocalAuthority, catalog: Catalog) -> None:
    key = authority.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    authority.activate_csvlk(key.text, FOREST, catalog, now=NOW)
    with contextlib.closing(sqlite3.connect(authority.path / "records.sqlite")) as db:
        dump = "\n".join(db.iterdump())
    assert key.text not in dump
    assert key.text.replace("-", "") not in dump


def test_activate_csvlk(authority: LocalAuthority, catalog: Catalog) -> None:
    key = authority.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    activation = authority.activate_csvlk(key.text.lower(), FOREST, catalog, now=NOW + 60)
    product = catalog.csvlk("Nimbus Server 2026 CSVLK")
    assert activation == CsvlkActivation(
        csvlk_sku=product.sku,
        csvlk_name=product.name,
        kms_ids=product.kms_ids,
        partial_key=key.partial,
        pid=f"ADBA-{product.code:05d}-0000000001-2026264",
        license_der=activation.license_der,
        issued_at=NOW + 60,
    )
    root = load_root_public_key(authority.path / "root.pub")
    lic = verify_license(activation.license_der, root_public_key=root, forest=FOREST, now=NOW + 120)
    assert lic.csvlk_sku == product.sku
    assert lic.partial_key == key.partial
    assert lic.csvlk_pid == activation.pid
    assert lic.kms_ids == product.kms_ids
    assert lic.forest == FOREST
    with pytest.raises(WrongForest):
        verify_license(
            activation.license_der,
            root_public_key=root,
            forest=ForestIdentity.of("dc=elsewhere,dc=test"),
            now=NOW + 120,
        )


def test_activation_refuses_gvlk_and_mak(authority: LocalAuthority, catalog: Catalog) -> None:
    gvlk = catalog.edition("Nimbus Server Standard").gvlk
    with pytest.raises(AuthorityError, match="this is a GVLK, not a CSVLK"):
        authority.activate_csvlk(gvlk, FOREST, catalog, now=NOW)
    mak = authority.mint(KeyType.MAK, "Nimbus Server Standard", catalog, now=NOW)
    with pytest.raises(AuthorityError, match="this is a MAK, not a CSVLK"):
        authority.activate_csvlk(mak.text, FOREST, catalog, now=NOW)


def test_activation_refuses_forged_and_foreign_keys(
    authority: LocalAuthority, catalog: Catalog, tmp_path: Path
) -> None:
    code = catalog.csvlk("Nimbus Server 2026 CSVLK").code
    forged = make_key(KeyType.CSVLK, code, 1, 0x123456789ABC)
    with pytest.raises(AuthorityError, match="not issued by this authority") as exc:
        authority.activate_csvlk(forged.text, FOREST, catalog, now=NOW)
    assert forged.text[:-5] not in exc.value.message
    other = LocalAuthority.init(tmp_path / "other", now=NOW)
    foreign = other.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    with pytest.raises(AuthorityError, match="not issued by this authority"):
        authority.activate_csvlk(foreign.text, FOREST, catalog, now=NOW)
    with pytest.raises(InvalidKey):
        authority.activate_csvlk("BCDFG-BCDFG-BCDFG-BCDFG-BCDFG", FOREST, catalog, now=NOW)


def test_activation_after_certificate_expiry_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    authority = LocalAuthority.init(tmp_path / "a", now=NOW, cert_days=1)
    key = authority.mint(KeyType.CSVLK, "Nimbus Client 2026 CSVLK", catalog, now=NOW)
    with pytest.raises(AuthorityError, match="signing certificate"):
        authority.activate_csvlk(key.text, FOREST, catalog, now=NOW + 2 * 86400)


def test_records_persist_across_reopen(authority: LocalAuthority, catalog: Catalog) -> None:
    key = authority.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    authority.activate_csvlk(key.text, FOREST, catalog, now=NOW + 5)
    reopened = LocalAuthority.open(authority.path)
    assert reopened.minted() == [(KeyType.CSVLK, key.code, 1, NOW)]
    assert reopened.activations(key.text) == [
        ("dc=example,dc=test", str(FOREST.guid), f"ADBA-{key.code:05d}-0000000001-2026264", NOW + 5)
    ]
    assert reopened.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW).serial == 2
    # a reopened authority activates keys minted before
    other = ForestIdentity.of("dc=other,dc=test", uuid.uuid4())
    reopened.activate_csvlk(key.text, other, catalog, now=NOW + 6)
    assert len(reopened.activations()) == 2


def test_local_authority_is_an_activator(authority: LocalAuthority) -> None:
    activator: Activator = authority
    assert callable(activator.activate_csvlk)


def test_kms_host_activation_limits_survive_reopen(
    authority: LocalAuthority, catalog: Catalog
) -> None:
    from adba.errors import ActivationLimitReached
    from adba.kms.protocol import certificate_message

    key = authority.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW).text
    for i in range(6):
        act = authority.activate_kms_host(key, os.urandom(32), f"host-{i}", catalog, now=NOW)
        cert = act.certificate
        Ed25519PublicKey.from_public_bytes(authority.root_public_key).verify(
            cert.signature,
            certificate_message(cert.public_key, cert.epid, cert.csvlk_sku, cert.not_after),
        )
    with pytest.raises(
        ActivationLimitReached, match=r"already activated on 6 hosts.*ask the vendor"
    ):
        authority.activate_kms_host(key, os.urandom(32), "host-6", catalog, now=NOW)
    reopened = LocalAuthority.open(authority.path)
    with pytest.raises(ActivationLimitReached):
        reopened.activate_kms_host(key, os.urandom(32), "host-7", catalog, now=NOW)
    for _ in range(9):  # host-0 was activated once: 9 reactivations are allowed
        reopened.activate_kms_host(key, os.urandom(32), "host-0", catalog, now=NOW)
    with pytest.raises(ActivationLimitReached, match="9 reactivations"):
        LocalAuthority.open(authority.path).activate_kms_host(
            key, os.urandom(32), "host-0", catalog, now=NOW
        )
    with pytest.raises(AuthorityError, match="not a KMS host key"):
        gvlk = catalog.edition("Nimbus Server Standard").gvlk
        reopened.activate_kms_host(gvlk, os.urandom(32), "x", catalog, now=NOW)


def test_records_of_a_schema_1_authority_are_upgraded(tmp_path: Path, catalog: Catalog) -> None:
    auth = LocalAuthority.init(tmp_path / "a", now=NOW)
    key = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", catalog, now=NOW)
    db = sqlite3.connect(tmp_path / "a" / "records.sqlite")
    db.executescript(
        "DROP TABLE kms_hosts; DROP TABLE kms_keys; DROP TABLE schema_migrations;"
        "UPDATE meta SET value = '1' WHERE name = 'schema_version';"
    )
    db.commit()
    db.close()
    upgraded = LocalAuthority.open(tmp_path / "a")
    assert len(upgraded.minted()) == 1  # records kept
    upgraded.activate_kms_host(key.text, bytes(32), "h", catalog, now=NOW)
