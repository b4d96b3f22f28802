"""The local activation authority: the vendor's keys, secret and records in one directory.

Layout of an authority directory (mode 0700)::

    root.key        PEM PKCS#8 Ed25519, 0600 -- the root key; certifies signing keys
    root.pub        PEM SubjectPublicKeyInfo, 0644 -- the file clients pin
    signing.key     PEM PKCS#8 Ed25519, 0600 -- signs licenses
    signing.cert    DER SignedCertificate (see adba.license) for signing.key
    tag.secret      32 random bytes, 0600 -- the HMAC secret in every CSVLK and MAK tag
    records.sqlite  minted keys (their SHA-256, never the key) and activations

:class:`Activator` is the seam between callers (the CLI, the agent) and an authority:
:class:`LocalAuthority` answers in-process; an online client (HTTP) or a phone/offline flow
(installation ID in, confirmation ID out) implements the same protocol later.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adba.catalog import Catalog

if TYPE_CHECKING:
    from adba.kms.protocol import HostCertificate
from adba.errors import (
    ActivationLimitReached,
    AuthorityError,
    AuthorityNotInitialised,
    InvalidInput,
    MalformedLicense,
)
from adba.keys import KeyType, ProductKey, authority_tag, make_key, parse_key, verify_tag
from adba.license import (
    ForestIdentity,
    SigningCertificate,
    decode_certificate,
    dump_public_key_pem,
    issue_certificate,
    key_id,
    make_pid,
    sign_license,
)

__all__ = ["Activator", "CsvlkActivation", "LocalAuthority"]

log = logging.getLogger(__name__)

ROOT_KEY = "root.key"
ROOT_PUB = "root.pub"
SIGNING_KEY = "signing.key"
SIGNING_CERT = "signing.cert"
TAG_SECRET = "tag.secret"
RECORDS = "records.sqlite"
_SECRET_FILES = (ROOT_KEY, SIGNING_KEY, TAG_SECRET)
_ALL_FILES = (ROOT_KEY, ROOT_PUB, SIGNING_KEY, SIGNING_CERT, TAG_SECRET, RECORDS)
_MAX_SERIAL = 0xFFFFFFFF
_SCHEMA_VERSION = 2
#: schema upgrades, applied in order by :meth:`LocalAuthority.open` (records are kept)
_MIGRATIONS = {
    2: """
CREATE TABLE IF NOT EXISTS kms_keys (
    key_sha256  TEXT PRIMARY KEY,
    host_limit  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kms_hosts (
    key_sha256  TEXT NOT NULL,
    host_id     TEXT NOT NULL,
    activations INTEGER NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    epid        TEXT NOT NULL,
    PRIMARY KEY (key_sha256, host_id)
);
""",
}
#: a KMS key activates at most this many distinct hosts, each at most 1 + 9 times (the seed)
KMS_HOST_LIMIT = 6
KMS_REACTIVATIONS = 9

_SCHEMA = """
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE minted_keys (
    id           INTEGER PRIMARY KEY,
    type         INTEGER NOT NULL,   -- adba.keys.KeyType
    product_code INTEGER NOT NULL,
    serial       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,   -- Unix seconds
    key_sha256   TEXT NOT NULL UNIQUE, -- hex SHA-256 of the dashed key text; never the key
    UNIQUE (type, product_code, serial)
);
CREATE TABLE activations (
    id          INTEGER PRIMARY KEY,
    key_sha256  TEXT NOT NULL,
    forest_dn   TEXT NOT NULL,
    forest_guid TEXT,
    pid         TEXT NOT NULL,
    issued_at   INTEGER NOT NULL
);
CREATE INDEX activations_by_key ON activations (key_sha256);
"""


@dataclass(frozen=True)
class CsvlkActivation:
    """A CSVLK activated for a forest: what an activation object in the directory carries."""

    csvlk_sku: uuid.UUID
    csvlk_name: str
    kms_ids: tuple[uuid.UUID, ...]
    partial_key: str
    pid: str
    license_der: bytes = field(repr=False)
    issued_at: int


@dataclass(frozen=True)
class KmsHostActivation:
    """A KMS host key activated on one host: the certificate the host presents to clients."""

    certificate: HostCertificate
    csvlk_name: str
    kms_ids: tuple[uuid.UUID, ...]


def make_kms_epid(code: int, serial: int, now: int) -> str:
    """A KMS host's ePID: product code, key serial, activation day (24 characters)."""
    day = time.gmtime(now)
    return f"{code:05d}-{serial:010d}-{day.tm_year:04d}{day.tm_yday:03d}"


class Activator(Protocol):
    """Something that activates CSVLKs for a forest: the local authority today, later an online
    client of the authority's HTTP API or the phone (installation ID / confirmation ID) flow.

    Raises :class:`~adba.errors.InvalidKey` for a key that does not parse and
    :class:`~adba.errors.AuthorityError` when the authority refuses.
    """

    def activate_csvlk(
        self, key: str, forest: ForestIdentity, catalog: Catalog, *, now: int
    ) -> CsvlkActivation: ...


def key_sha256(key: ProductKey) -> str:
    """How records name a key: hex SHA-256 of its canonical dashed text."""
    return hashlib.sha256(key.text.encode("ascii")).hexdigest()


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class LocalAuthority:
    """An activation authority whose keys and records live in a local directory."""

    def __init__(
        self,
        path: Path,
        *,
        root_key: Ed25519PrivateKey,
        signing_key: Ed25519PrivateKey,
        certificate: SigningCertificate,
        tag_secret: bytes,
    ) -> None:
        """Use :meth:`init` or :meth:`open`."""
        self._path = path
        self._root_key = root_key
        self._signing_key = signing_key
        self._certificate = certificate
        self._tag_secret = tag_secret
        self._root_public = _raw_public(root_key)

    def __repr__(self) -> str:
        return f"LocalAuthority({str(self._path)!r}, root key {key_id(self._root_public).hex()})"

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def init(
        cls, path: str | os.PathLike[str], *, now: int, cert_days: int = 3650
    ) -> LocalAuthority:
        """Create a new authority in ``path`` (created 0700 if missing, else must be empty)."""
        directory = Path(path)
        if cert_days < 1:
            raise InvalidInput("cert_days must be at least 1")
        if directory.exists():
            if not directory.is_dir():
                raise AuthorityError(f"{directory} exists and is not a directory")
            if any((directory / name).exists() for name in _ALL_FILES):
                raise AuthorityError(
                    f"{directory} already holds an activation authority: refusing to overwrite it"
                )
            if any(directory.iterdir()):
                raise AuthorityError(f"{directory} is not empty: choose a new directory")
            os.chmod(directory, 0o700)
        else:
            directory.mkdir(mode=0o700, parents=True)
            os.chmod(directory, 0o700)

        root_key = Ed25519PrivateKey.generate()
        signing_key = Ed25519PrivateKey.generate()
        certificate = issue_certificate(
            root_key, _raw_public(signing_key), now, now + cert_days * 86400
        )
        tag_secret = secrets.token_bytes(32)
        _write(directory / ROOT_KEY, _private_pem(root_key), 0o600)
        _write(directory / SIGNING_KEY, _private_pem(signing_key), 0o600)
        _write(directory / TAG_SECRET, tag_secret, 0o600)
        _write(directory / SIGNING_CERT, certificate.der, 0o644)
        _write(directory / ROOT_PUB, dump_public_key_pem(_raw_public(root_key)).encode(), 0o644)
        with contextlib.closing(sqlite3.connect(directory / RECORDS)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                db.executescript(_SCHEMA)
                for step in sorted(_MIGRATIONS):
                    db.executescript(_MIGRATIONS[step])
                db.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema_version', ?)",
                    (str(_SCHEMA_VERSION),),
                )
        os.chmod(directory / RECORDS, 0o600)
        authority = cls(
            directory,
            root_key=root_key,
            signing_key=signing_key,
            certificate=certificate,
            tag_secret=tag_secret,
        )
        log.info("created activation authority %s", authority)
        return authority

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LocalAuthority:
        """Open an authority made by :meth:`init`; refuses private files others can read."""
        directory = Path(path)
        missing = [name for name in _ALL_FILES if not (directory / name).is_file()]
        if missing:
            raise AuthorityNotInitialised(
                f"no activation authority in {directory} (missing {', '.join(missing)}): "
                "run `adba authority init` first",
                path=str(directory),
            )
        for name in _SECRET_FILES:
            file = directory / name
            if stat.S_IMODE(file.stat().st_mode) & 0o077:
                raise AuthorityError(
                    f"{file} is readable by group or others: run `chmod 600 {file}`",
                    path=str(file),
                )
        root_key = cls._load_private(directory / ROOT_KEY)
        signing_key = cls._load_private(directory / SIGNING_KEY)
        tag_secret = (directory / TAG_SECRET).read_bytes()
        if len(tag_secret) != 32:
            raise AuthorityError(f"{directory / TAG_SECRET} is not a 32-byte secret")
        try:
            certificate = decode_certificate((directory / SIGNING_CERT).read_bytes())
        except MalformedLicense as exc:
            raise AuthorityError(
                f"{directory / SIGNING_CERT} is not a signing certificate"
            ) from exc
        if certificate.public_key != _raw_public(
            signing_key
        ) or certificate.issuer_key_id != key_id(_raw_public(root_key)):
            raise AuthorityError(
                f"{directory / SIGNING_CERT} does not certify {SIGNING_KEY} under {ROOT_KEY}"
            )
        authority = cls(
            directory,
            root_key=root_key,
            signing_key=signing_key,
            certificate=certificate,
            tag_secret=tag_secret,
        )
        authority._migrate()
        return authority

    def _migrate(self) -> None:
        with self._records() as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            version = int(row[0]) if row else 1
            if version > _SCHEMA_VERSION:
                raise AuthorityError(
                    f"{self._path / RECORDS} was written by a newer adba (schema {version})"
                )
            for step in sorted(_MIGRATIONS):
                if step > version:
                    for statement in _MIGRATIONS[step].split(";"):
                        if statement.strip():
                            db.execute(statement)
                    log.info("upgraded %s to schema %d", self._path / RECORDS, step)
            db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema_version', ?)",
                (str(_SCHEMA_VERSION),),
            )

    @staticmethod
    def _load_private(file: Path) -> Ed25519PrivateKey:
        try:
            key = serialization.load_pem_private_key(file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise AuthorityError(f"{file} is not an unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise AuthorityError(f"{file} is not an Ed25519 private key")
        return key

    @contextlib.contextmanager
    def _records(self) -> Iterator[sqlite3.Connection]:
        """A connection per operation: one transaction, committed on success."""
        db = sqlite3.connect(self._path / RECORDS, timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- properties ----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def root_public_key(self) -> bytes:
        """The raw root public key (32 bytes): what clients pin."""
        return self._root_public

    @property
    def root_public_key_pem(self) -> str:
        return dump_public_key_pem(self._root_public)

    @property
    def certificate(self) -> SigningCertificate:
        """The signing key's certificate."""
        return self._certificate

    # -- operations ----------------------------------------------------------------------------
    def mint(self, key_type: KeyType, product: str, catalog: Catalog, *, now: int) -> ProductKey:
        """Mint the next CSVLK (``product``: a CSVLK product) or MAK (``product``: an edition).

        Serials count from 1 per key type and product code.
        """
        if key_type is KeyType.GVLK:
            raise InvalidInput("GVLKs are public: see the catalogue")
        if key_type is KeyType.CSVLK:
            code = catalog.csvlk(product).code
        elif key_type is KeyType.MAK:
            code = catalog.edition(product).code
        else:
            raise InvalidInput(f"cannot mint keys of type {key_type!r}")
        with self._records() as db:
            (last,) = db.execute(
                "SELECT COALESCE(MAX(serial), 0) FROM minted_keys"
                " WHERE type = ? AND product_code = ?",
                (int(key_type), code),
            ).fetchone()
            serial = int(last) + 1
            if serial > _MAX_SERIAL:
                raise AuthorityError(f"no serials left for {key_type.name} product code {code}")
            key = make_key(
                key_type, code, serial, authority_tag(self._tag_secret, key_type, code, serial)
            )
            db.execute(
                "INSERT INTO minted_keys (type, product_code, serial, created_at, key_sha256)"
                " VALUES (?, ?, ?, ?, ?)",
                (int(key_type), code, serial, now, key_sha256(key)),
            )
        log.info("minted %s %s for product code %d (serial %d)", key_type.name, key, code, serial)
        return key

    def activate_csvlk(
        self, key: str, forest: ForestIdentity, catalog: Catalog, *, now: int
    ) -> CsvlkActivation:
        """Activate a CSVLK for a forest: sign an issuance license binding them."""
        parsed = parse_key(key)
        if parsed.type is not KeyType.CSVLK:
            raise AuthorityError(f"this is a {parsed.type.name}, not a CSVLK", key_type=parsed.type)
        if not verify_tag(parsed, self._tag_secret):
            raise AuthorityError(
                f"the CSVLK {parsed} was not issued by this authority", partial_key=parsed.partial
            )
        product = catalog.csvlk_by_code(parsed.code)
        if not self._certificate.valid_at(now):
            raise AuthorityError(
                "the authority's signing certificate is not valid now: renew it or check the clock"
            )
        pid = make_pid(parsed.code, parsed.serial, now)
        license_der = sign_license(
            signing_private_key=self._signing_key,
            certificate=self._certificate,
            csvlk_sku=product.sku,
            csvlk_pid=pid,
            partial_key=parsed.partial,
            kms_ids=product.kms_ids,
            forest=forest,
            issued_at=now,
        )
        with self._records() as db:
            db.execute(
                "INSERT INTO activations (key_sha256, forest_dn, forest_guid, pid, issued_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    key_sha256(parsed),
                    forest.dn,
                    str(forest.guid) if forest.guid else None,
                    pid,
                    now,
                ),
            )
        log.info("activated %s %s for forest %s (PID %s)", product.name, parsed, forest, pid)
        return CsvlkActivation(
            csvlk_sku=product.sku,
            csvlk_name=product.name,
            kms_ids=product.kms_ids,
            partial_key=parsed.partial,
            pid=pid,
            license_der=license_der,
            issued_at=now,
        )

    def activate_kms_host(
        self,
        key: str,
        host_public_key: bytes,
        host_id: str,
        catalog: Catalog,
        *,
        now: int,
        cert_days: int = 365,
    ) -> KmsHostActivation:
        """Activate a KMS host key on one host: certify the host's own key for the CSVLK.

        A key activates at most :data:`KMS_HOST_LIMIT` distinct hosts (more if granted), and
        each host at most 1 + :data:`KMS_REACTIVATIONS` times.
        """
        from adba.kms.protocol import HostCertificate, certificate_message

        parsed = parse_key(key)
        if parsed.type is not KeyType.CSVLK:
            raise AuthorityError(f"this is a {parsed.type.name}, not a KMS host key (CSVLK)")
        if not verify_tag(parsed, self._tag_secret):
            raise AuthorityError(f"the CSVLK {parsed} was not issued by this authority")
        if len(host_public_key) != 32 or not host_id or len(host_id) > 255:
            raise InvalidInput("a host needs a 32-byte Ed25519 public key and an id")
        product = catalog.csvlk_by_code(parsed.code)
        digest = key_sha256(parsed)
        epid = make_kms_epid(parsed.code, parsed.serial, now)
        with self._records() as db:
            row = db.execute(
                "SELECT host_limit FROM kms_keys WHERE key_sha256 = ?", (digest,)
            ).fetchone()
            limit = int(row[0]) if row else KMS_HOST_LIMIT
            hosts = db.execute(
                "SELECT host_id, activations FROM kms_hosts WHERE key_sha256 = ?", (digest,)
            ).fetchall()
            mine = {str(h): int(n) for h, n in hosts}
            if host_id not in mine and len(mine) >= limit:
                raise ActivationLimitReached(
                    f"the KMS key {parsed} is already activated on {len(mine)} hosts (its limit "
                    f"is {limit}): ask the vendor for more activations "
                    "(`adba authority grant-hosts`)"
                )
            if mine.get(host_id, 0) >= 1 + KMS_REACTIVATIONS:
                raise ActivationLimitReached(
                    f"host {host_id} has used its {KMS_REACTIVATIONS} reactivations of the KMS "
                    f"key {parsed}: ask the vendor for more activations"
                )
            db.execute(
                "INSERT INTO kms_hosts VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT (key_sha256, host_id)"
                " DO UPDATE SET activations = activations + 1, last_at = ?, epid = ?",
                (digest, host_id, now, now, epid, now, epid),
            )
        not_after = now + cert_days * 86400
        signature = self._root_key.sign(
            certificate_message(host_public_key, epid, product.sku, not_after)
        )
        log.info("activated KMS host %s with %s (ePID %s)", host_id, parsed, epid)
        return KmsHostActivation(
            HostCertificate(host_public_key, epid, product.sku, not_after, signature),
            product.name,
            product.kms_ids,
        )

    # -- records -------------------------------------------------------------------------------
    def minted(self) -> list[tuple[KeyType, int, int, int]]:
        """Minted keys as (type, product code, serial, created_at), oldest first."""
        with self._records() as db:
            rows = db.execute(
                "SELECT type, product_code, serial, created_at FROM minted_keys ORDER BY id"
            ).fetchall()
        return [(KeyType(t), int(c), int(s), int(at)) for t, c, s, at in rows]

    def activations(self, key: str | None = None) -> list[tuple[str, str | None, str, int]]:
        """Activations as (forest DN, forest GUID, PID, issued_at), of one key if given."""
        query = "SELECT forest_dn, forest_guid, pid, issued_at FROM activations"
        params: tuple[str, ...] = ()
        if key is not None:
            query += " WHERE key_sha256 = ?"
            params = (key_sha256(parse_key(key)),)
        with self._records() as db:
            rows = db.execute(query + " ORDER BY id", params).fetchall()
        return [(str(dn), guid, str(pid), int(at)) for dn, guid, pid, at in rows]
