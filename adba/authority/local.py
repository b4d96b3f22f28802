"""The local activation authority: the vendor's keys, secret and records in one directory.

Layout of an authority directory (mode 0700)::

    root.key        PEM PKCS#8 Ed25519, 0600 -- the root key; certifies signing keys
    root.pub        PEM SubjectPublicKeyInfo, 0644 -- the file clients pin
    signing.key     PEM PKCS#8 Ed25519, 0600 -- signs licenses
    signing.cert    DER SignedCertificate (see adba.license) for signing.key
    tag.secret      32 random bytes, 0600 -- the HMAC secret in every CSVLK and MAK tag
    records.sqlite  minted keys (their SHA-256, never the key) and activations -- or, with
                    records on PostgreSQL, records.url (0600): the database's URL
    signing-ID.cert the certificate of a rotated-out signing key (its key beside it as
                    signing-ID.key until the key is retired, then deleted)
    retired.pem     0644, once a key is retired -- the root-signed list of retired signing
                    keys, for clients to pin beside root.pub (adba.license.load_retired_keys)

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
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adba.catalog import Catalog, Edition

if TYPE_CHECKING:
    from adba.avma.protocol import AvmaHostCertificate
    from adba.confirmation import Confirmation, Installation
    from adba.kms.protocol import HostCertificate
from adba.authority.records import Records, Transaction, open_records
from adba.errors import (
    ActivationLimitReached,
    AuthorityError,
    AuthorityNotInitialised,
    AvmaNotEntitled,
    ForestGuidMissing,
    InvalidInput,
    MalformedLicense,
)
from adba.keys import KeyType, ProductKey, authority_tag, make_key, parse_key, verify_tag
from adba.license import (
    ForestIdentity,
    SigningCertificate,
    decode_certificate,
    decode_license,
    dump_public_key_pem,
    dump_retirement_pem,
    issue_certificate,
    key_id,
    make_pid,
    sign_license,
)

__all__ = ["Activator", "CsvlkActivation", "LocalAuthority"]

log = logging.getLogger(__name__)

T = TypeVar("T")

ROOT_KEY = "root.key"
ROOT_PUB = "root.pub"
SIGNING_KEY = "signing.key"
SIGNING_CERT = "signing.cert"
TAG_SECRET = "tag.secret"
RECORDS = "records.sqlite"
RECORDS_URL = "records.url"
RETIRED_PEM = "retired.pem"
_SECRET_FILES = (ROOT_KEY, SIGNING_KEY, TAG_SECRET)
_KEY_FILES = (ROOT_KEY, ROOT_PUB, SIGNING_KEY, SIGNING_CERT, TAG_SECRET)
_ALL_FILES = (*_KEY_FILES, RECORDS)
_MAX_SERIAL = 0xFFFFFFFF
#: a CSVLK (volume licensing) certifies at most this many AVMA hosts; a MAK its count
AVMA_CSVLK_HOST_LIMIT = 100
#: a KMS key activates at most this many distinct hosts, each at most 1 + 9 times (the seed)
KMS_HOST_LIMIT = 6
KMS_REACTIVATIONS = 9
KMS_CERT_DAYS = 365
#: default validity of a signing certificate: licenses stop verifying when it ends, so the
#: vendor rotates before then (``authority rotate``) and forests activate again (free)
SIGNING_CERT_DAYS = 730


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


def _destroy(path: Path) -> None:
    """Overwrite a private key file, then delete it (missing: nothing to do)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.write(fd, bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def _check_days(days: int) -> None:
    if not isinstance(days, int) or not 1 <= days <= 36500:
        raise InvalidInput(f"a certificate lasts 1 to 36500 days, not {days!r}")


def _check_mak_count(count: int) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1_000_000:
        raise InvalidInput(f"a MAK activates 1 to 1000000 machines, not {count!r}")


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
        records: Records | None = None,
    ) -> None:
        """Use :meth:`init` or :meth:`open`."""
        self._path = path
        self._root_key = root_key
        self._signing_key = signing_key
        self._certificate = certificate
        self._tag_secret = tag_secret
        self._root_public = _raw_public(root_key)
        self._db = records if records is not None else open_records(None, path)

    def __repr__(self) -> str:
        return f"LocalAuthority({str(self._path)!r}, root key {key_id(self._root_public).hex()})"

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        now: int,
        cert_days: int = SIGNING_CERT_DAYS,
        database: str | None = None,
    ) -> LocalAuthority:
        """Create a new authority in ``path`` (created 0700 if missing, else must be empty).
        Its records go to ``database`` (a ``postgresql://`` URL, kept in ``records.url``) or,
        without one, to ``records.sqlite`` beside the keys."""
        directory = Path(path)
        _check_days(cert_days)
        try:
            return cls._init(directory, now, cert_days, database)
        except PermissionError as exc:
            raise AuthorityError(
                f"cannot create an authority in {directory}: permission denied "
                f"({exc.filename or directory}); choose a directory you may write",
                path=str(directory),
            ) from exc
        except OSError as exc:
            raise AuthorityError(
                f"cannot create an authority in {directory}: {exc.strerror or exc}",
                path=str(directory),
            ) from exc

    @classmethod
    def _init(
        cls, directory: Path, now: int, cert_days: int, database: str | None
    ) -> LocalAuthority:
        if directory.exists():
            if not directory.is_dir():
                raise AuthorityError(f"{directory} exists and is not a directory")
            if any((directory / name).exists() for name in (*_ALL_FILES, RECORDS_URL)):
                raise AuthorityError(
                    f"{directory} already holds an activation authority: refusing to overwrite it"
                )
            if any(directory.iterdir()):
                raise AuthorityError(f"{directory} is not empty: choose a new directory")
        records = open_records(database, directory) if database else None
        if records is not None:  # reachable and holding no other authority, before any file
            records.migrate(now=now)
            with records.transaction() as tx:
                owner = tx.execute("SELECT value FROM meta WHERE name = 'root_key_id'").fetchone()
            if owner is not None:
                raise AuthorityError(
                    f"the records at {records.where} already belong to the authority with root "
                    f"key {owner[0]}: give an empty database"
                )
        if directory.exists():
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
        if records is None:
            _write(directory / RECORDS, b"", 0o600)
            sqlite = open_records(None, directory)
            sqlite.create()  # type: ignore[attr-defined]
            records = sqlite
        else:
            _write(directory / RECORDS_URL, (database or "").encode() + b"\n", 0o600)
        authority = cls(
            directory,
            root_key=root_key,
            signing_key=signing_key,
            certificate=certificate,
            tag_secret=tag_secret,
            records=records,
        )
        authority._migrate(now)
        log.info("created activation authority %s (records: %s)", authority, records.where)
        return authority

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, database: str | None = None) -> LocalAuthority:
        """Open an authority made by :meth:`init`; refuses private files others can read.
        Its records are ``database`` if given, else the database named in ``records.url``,
        else ``records.sqlite``; they are migrated to this release's schema."""
        directory = Path(path)
        if not database and (directory / RECORDS_URL).is_file():
            database = (directory / RECORDS_URL).read_text().strip()
        wanted = _KEY_FILES if database else _ALL_FILES
        missing = [name for name in wanted if not (directory / name).is_file()]
        if missing:
            raise AuthorityNotInitialised(
                f"no activation authority in {directory} (missing {', '.join(missing)}): "
                "run `adba authority init` first",
                path=str(directory),
            )
        for name in (*_SECRET_FILES, RECORDS_URL):
            file = directory / name
            if file.is_file() and stat.S_IMODE(file.stat().st_mode) & 0o077:
                raise AuthorityError(
                    f"{file} is readable by group or others: run `chmod 600 {file}`",
                    path=str(file),
                )
        root_key = cls._load_private(directory / ROOT_KEY)
        tag_secret = (directory / TAG_SECRET).read_bytes()
        if len(tag_secret) != 32:
            raise AuthorityError(f"{directory / TAG_SECRET} is not a 32-byte secret")
        signing_key, certificate = cls._load_signing(directory, _raw_public(root_key))
        authority = cls(
            directory,
            root_key=root_key,
            signing_key=signing_key,
            certificate=certificate,
            tag_secret=tag_secret,
            records=open_records(database, directory),
        )
        authority._migrate(int(time.time()))
        if certificate.key_id in authority.retired_keys():
            raise AuthorityError(
                f"{directory / SIGNING_KEY} is the retired signing key "
                f"{certificate.key_id.hex()}: it never signs again (restore the current key)"
            )
        return authority

    def _migrate(self, now: int) -> None:
        """The records up to this release's schema, and bound to this root key: records of
        another authority are refused (their keys' tags would not verify here)."""
        self._db.migrate(now=now)
        mine = key_id(self._root_public).hex()
        with self._records() as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'root_key_id'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (name, value) VALUES ('root_key_id', ?)", (mine,))
            elif row[0] != mine:
                raise AuthorityError(
                    f"the records at {self._db.where} belong to the authority with root key "
                    f"{row[0]}, not to {self._path} (root key {mine})"
                )

    @classmethod
    def _load_signing(
        cls, directory: Path, root_public: bytes
    ) -> tuple[Ed25519PrivateKey, SigningCertificate]:
        """The signing key and its certificate from the directory (no records read)."""
        signing_key = cls._load_private(directory / SIGNING_KEY)
        try:
            certificate = decode_certificate((directory / SIGNING_CERT).read_bytes())
        except MalformedLicense as exc:
            raise AuthorityError(
                f"{directory / SIGNING_CERT} is not a signing certificate"
            ) from exc
        if certificate.public_key != _raw_public(
            signing_key
        ) or certificate.issuer_key_id != key_id(root_public):
            raise AuthorityError(
                f"{directory / SIGNING_CERT} does not certify {SIGNING_KEY} under {ROOT_KEY}"
            )
        return signing_key, certificate

    @staticmethod
    def _load_private(file: Path) -> Ed25519PrivateKey:
        try:
            key = serialization.load_pem_private_key(file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise AuthorityError(f"{file} is not an unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise AuthorityError(f"{file} is not an Ed25519 private key")
        return key

    def _records(self) -> contextlib.AbstractContextManager[Transaction]:
        """One transaction (joined by the operations called inside it), committed on success."""
        return self._db.transaction()

    @property
    def records(self) -> Records:
        """Where the records are kept."""
        return self._db

    def atomic(self, fn: Callable[[], T]) -> T:
        """``fn()`` as one transaction of the records, run again after a conflict (see
        :meth:`Records.atomic`): every operation called inside joins it."""
        return self._db.atomic(fn)

    def ping(self) -> None:
        """Raise :class:`~adba.errors.RecordsUnavailable` unless the records answer now."""
        self._db.ping()

    def close(self) -> None:
        self._db.close()

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
    def mint(
        self,
        key_type: KeyType,
        product: str,
        catalog: Catalog,
        *,
        now: int,
        mak_count: int | None = None,
    ) -> ProductKey:
        """Mint the next CSVLK (``product``: a CSVLK product) or MAK (``product``: an edition;
        ``mak_count``: how many machines it activates, default 1).

        Serials count from 1 per key type and product code. Everything is checked before
        anything is recorded: a refused mint uses no serial.
        """
        if key_type is KeyType.GVLK:
            raise InvalidInput("GVLKs are public: see the catalogue")
        if key_type is KeyType.CSVLK:
            if mak_count is not None:
                raise InvalidInput("an activation count is for MAKs only (a CSVLK has none)")
            code = catalog.csvlk(product).code
        elif key_type is KeyType.MAK:
            mak_count = 1 if mak_count is None else mak_count
            _check_mak_count(mak_count)
            code = catalog.edition(product).code
        else:
            raise InvalidInput(f"cannot mint keys of type {key_type!r}")
        with self._records() as db:
            db.lock_table("minted_keys")  # serials one after the other, on every replica
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
            if mak_count is not None:
                db.execute("INSERT INTO mak_keys VALUES (?, ?)", (key_sha256(key), mak_count))
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
        if forest.guid is None:
            raise ForestGuidMissing(
                f"the forest {forest.dn} has no GUID: a license is bound to one forest's GUID, "
                "never to any forest with that name"
            )
        product = catalog.csvlk_by_code(parsed.code)
        signing_key, certificate = self._signer()
        if not certificate.valid_at(now):
            raise AuthorityError(
                "the authority's signing certificate is not valid now: renew it or check the clock"
            )
        digest, guid = key_sha256(parsed), str(forest.guid)
        with self._records() as db:
            db.lock_key(digest)
            row = db.execute(
                "SELECT id, pid, issued_at, license FROM activations WHERE key_sha256 = ?"
                " AND forest_dn = ? AND forest_guid = ? ORDER BY id DESC LIMIT 1",
                (digest, forest.dn, guid),
            ).fetchone()
            again = self._still_good(row[3], now) if row else None
            if row and again is not None:
                pid, issued_at, license_der = str(row[1]), int(row[2]), again
            else:
                pid, issued_at = make_pid(parsed.code, parsed.serial, now), now
                license_der = sign_license(
                    signing_private_key=signing_key,
                    certificate=certificate,
                    csvlk_sku=product.sku,
                    csvlk_pid=pid,
                    partial_key=parsed.partial,
                    kms_ids=product.kms_ids,
                    forest=forest,
                    issued_at=now,
                )
                if row:  # the same forest again: a new license, not another activation
                    db.execute(
                        "UPDATE activations SET pid = ?, issued_at = ?, license = ? WHERE id = ?",
                        (pid, now, license_der, row[0]),
                    )
                else:
                    db.execute(
                        "INSERT INTO activations (key_sha256, forest_dn, forest_guid, pid,"
                        " issued_at, license) VALUES (?, ?, ?, ?, ?, ?)",
                        (digest, forest.dn, guid, pid, now, license_der),
                    )
        log.info(
            "%s %s %s for forest %s (PID %s)",
            "activated" if not row else "re-sent the activation of",
            product.name,
            parsed,
            forest,
            pid,
        )
        return CsvlkActivation(
            csvlk_sku=product.sku,
            csvlk_name=product.name,
            kms_ids=product.kms_ids,
            partial_key=parsed.partial,
            pid=pid,
            license_der=license_der,
            issued_at=issued_at,
        )

    def _still_good(self, license_der: bytes | None, now: int) -> bytes | None:
        """A license issued before that can be sent again: it carries the current signing
        certificate (so a repeat after a retirement carries the new statement), valid now."""
        if not license_der:
            return None
        try:
            lic = decode_license(bytes(license_der))
        except MalformedLicense:
            return None
        cert = lic.certificate
        if cert.der != self._certificate.der or not cert.valid_at(now):
            return None
        return bytes(license_der)

    def _tagged(self, key: ProductKey | str, want: KeyType, what: str) -> ProductKey:
        parsed = parse_key(key) if isinstance(key, str) else key
        if parsed.type is not want:
            raise AuthorityError(f"this is a {parsed.type.name}, not a {what}")
        if not verify_tag(parsed, self._tag_secret):
            raise AuthorityError(
                f"the {parsed.type.name} {parsed} was not issued by this authority"
            )
        return parsed

    def _grant_host(
        self,
        parsed: ProductKey,
        subject: bytes,
        name: str | None,
        epid: str,
        now: int,
        host_key: bytes,
    ) -> None:
        """Count a KMS host activation. The same host id with the same host key pair again is
        not counted (a repeat); a new key pair for a known host id is a reactivation."""
        digest, host = key_sha256(parsed), subject.hex()
        label = name or f"host {host}"
        with self._records() as db:
            db.lock_key(digest)  # this key's decisions one at a time, on every replica
            row = db.execute(
                "SELECT host_limit FROM kms_keys WHERE key_sha256 = ?", (digest,)
            ).fetchone()
            limit = int(row[0]) if row else KMS_HOST_LIMIT
            mine = {
                str(h): int(n)
                for h, n in db.execute(
                    "SELECT host_id, activations FROM kms_hosts WHERE key_sha256 = ?", (digest,)
                )
            }
            (same,) = db.execute(
                "SELECT COUNT(*) FROM kms_hosts WHERE key_sha256 = ? AND host_id = ?"
                " AND host_key = ?",
                (digest, host, host_key.hex()),
            ).fetchone()
            if same:
                db.execute(
                    "UPDATE kms_hosts SET last_at = ?, epid = ?, host_name = COALESCE(?, host_name)"
                    " WHERE key_sha256 = ? AND host_id = ?",
                    (now, epid, name, digest, host),
                )
                log.info("%s asked again with the same host key: not counted", label)
                return
            if host not in mine and len(mine) >= limit:
                raise ActivationLimitReached(
                    f"the KMS key {parsed} is already activated on {len(mine)} hosts (its limit "
                    f"is {limit}): ask the vendor for more activations "
                    "(`adba authority grant-hosts`)"
                )
            if mine.get(host, 0) >= 1 + KMS_REACTIVATIONS:
                raise ActivationLimitReached(
                    f"{label} has used its {KMS_REACTIVATIONS} reactivations of the KMS "
                    f"key {parsed}: ask the vendor for more activations"
                )
            db.execute(
                "INSERT INTO kms_hosts (key_sha256, host_id, host_name, activations, first_at,"
                " last_at, epid, host_key) VALUES (?, ?, ?, 1, ?, ?, ?, ?)"
                " ON CONFLICT (key_sha256, host_id)"
                " DO UPDATE SET activations = kms_hosts.activations + 1, last_at = ?, epid = ?,"
                " host_name = COALESCE(?, kms_hosts.host_name), host_key = ?",
                (
                    digest,
                    host,
                    name,
                    now,
                    now,
                    epid,
                    host_key.hex(),
                    now,
                    epid,
                    name,
                    host_key.hex(),
                ),
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
        from adba.confirmation import host_binding, host_subject
        from adba.kms.protocol import HostCertificate, certificate_message

        parsed = self._tagged(key, KeyType.CSVLK, "KMS host key (CSVLK)")
        if len(host_public_key) != 32 or not host_id or len(host_id) > 255:
            raise InvalidInput("a host needs a 32-byte Ed25519 public key and an id")
        product = catalog.csvlk_by_code(parsed.code)
        epid = make_kms_epid(parsed.code, parsed.serial, now)
        self._grant_host(
            parsed, host_subject(host_id), host_id, epid, now, host_binding(host_public_key)
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

    def certify_avma_host(
        self,
        host_public_key: bytes,
        host_id: str,
        edition: str | None,
        catalog: Catalog,
        *,
        now: int,
        key: str | None = None,
        cert_days: int = KMS_CERT_DAYS,
    ) -> AvmaHostCertificate:
        """Certify a host's own key as an AVMA host of ``edition`` (an edition the catalogue
        entitles to activate guests), as :meth:`activate_kms_host` certifies KMS hosts; the
        certificate's purpose differs, so a KMS host certificate is never an AVMA one.

        Without ``key`` the vendor certifies its own host (a local authority directory).
        With ``key`` (online: ``POST /v1/avma-hosts/certifications``) the key proves the
        entitlement, and each key certifies a bounded number of hosts (:meth:`_avma_grant`):
        a MAK of an entitled edition at most as many hosts as its activation count, a CSVLK
        whose KMS IDs cover an entitled edition at most :data:`AVMA_CSVLK_HOST_LIMIT`; a host
        id certified again with the same key pair is not counted, with a new key pair it is a
        reactivation (at most :data:`KMS_REACTIVATIONS`). GVLKs and AVMA keys are public and
        prove nothing."""
        from adba.avma.protocol import AvmaHostCertificate, certificate_message

        if len(host_public_key) != 32 or not host_id or len(host_id) > 255:
            raise InvalidInput("a host needs a 32-byte Ed25519 public key and an id")
        parsed: ProductKey | None = None
        if key is None:
            if not edition:
                raise InvalidInput("name the host's edition (a Datacenter-class edition)")
            product = catalog.edition(edition)
        else:
            parsed, product = self._avma_entitlement(key, edition, catalog)
        if catalog.avma_host(product.sku) is None:
            raise AvmaNotEntitled(
                f"{product.name} is not entitled to activate virtual machines (AVMA): "
                "a Datacenter-class edition is"
            )
        not_after = now + cert_days * 86400
        signature = self._root_key.sign(
            certificate_message(host_public_key, product.sku, not_after)
        )
        with self._records() as db:
            if parsed is not None:
                self._avma_grant(db, parsed, host_id, host_public_key, now)
            db.execute(
                "INSERT INTO avma_hosts VALUES (?, ?, ?, ?, ?) ON CONFLICT (host_id, host_key)"
                " DO UPDATE SET last_at = ?, edition_sku = ?",
                (host_id, host_public_key.hex(), str(product.sku), now, now, now, str(product.sku)),
            )
        log.info("certified AVMA host %s (%s)", host_id, product.name)
        return AvmaHostCertificate(host_public_key, product.sku, not_after, signature)

    def _avma_entitlement(
        self, key: str, edition: str | None, catalog: Catalog
    ) -> tuple[ProductKey, Edition]:
        """The key that proves an AVMA entitlement and the edition it entitles."""
        parsed = parse_key(key)
        if parsed.type in (KeyType.GVLK, KeyType.AVMA):
            raise AvmaNotEntitled(
                f"a {parsed.type.name} is public and proves no entitlement: give the host's "
                "own key (the MAK of its Datacenter edition, or a CSVLK that covers it)"
            )
        wanted = catalog.edition(edition) if edition else None
        if parsed.type is KeyType.MAK:
            parsed = self._tagged(parsed, KeyType.MAK, "MAK")
            product = catalog.edition_by_code(parsed.code)
            if wanted is not None and wanted != product:
                raise AvmaNotEntitled(f"this MAK is for {product.name}, not {wanted.name}")
            return parsed, product
        parsed = self._tagged(parsed, KeyType.CSVLK, "CSVLK")
        csvlk = catalog.csvlk_by_code(parsed.code)
        entitled = [
            e
            for e in catalog.editions
            if catalog.csvlk_covers(csvlk, e) and catalog.avma_host(e.sku) is not None
        ]
        if wanted is not None:
            if wanted not in entitled:
                raise AvmaNotEntitled(
                    f"{csvlk.name} does not entitle {wanted.name} to AVMA: it covers "
                    f"{', '.join(e.name for e in entitled) or 'no AVMA-entitled edition'}"
                )
            return parsed, wanted
        if not entitled:
            raise AvmaNotEntitled(
                f"{csvlk.name} covers no edition entitled to activate virtual machines (AVMA)"
            )
        if len(entitled) > 1:
            raise InvalidInput(
                f"{csvlk.name} covers several AVMA editions: name one "
                f"({', '.join(e.name for e in entitled)})"
            )
        return parsed, entitled[0]

    def _avma_grant(
        self, db: Any, parsed: ProductKey, host_id: str, host_public_key: bytes, now: int
    ) -> None:
        """Count an AVMA host certified with ``parsed`` (in the caller's transaction)."""
        digest, host_key = key_sha256(parsed), host_public_key.hex()
        db.lock_key(digest)  # this key's decisions one at a time, on every replica
        if parsed.type is KeyType.MAK:
            row = db.execute(
                "SELECT allowed FROM mak_keys WHERE key_sha256 = ?", (digest,)
            ).fetchone()
            limit = int(row[0]) if row else 0
        else:
            limit = AVMA_CSVLK_HOST_LIMIT
        row = db.execute(
            "SELECT host_key, certifications FROM avma_grants WHERE key_sha256 = ? AND host_id = ?",
            (digest, host_id),
        ).fetchone()
        if row is not None and row[0] == host_key:
            db.execute(
                "UPDATE avma_grants SET last_at = ? WHERE key_sha256 = ? AND host_id = ?",
                (now, digest, host_id),
            )
            log.info("AVMA host %s asked again with the same host key: not counted", host_id)
            return
        if row is None:
            (hosts,) = db.execute(
                "SELECT COUNT(*) FROM avma_grants WHERE key_sha256 = ?", (digest,)
            ).fetchone()
            if int(hosts) >= limit:
                raise ActivationLimitReached(
                    f"the {parsed.type.name} {parsed} has certified {hosts} AVMA hosts (its "
                    f"limit is {limit}): ask the vendor for more activations"
                )
            db.execute(
                "INSERT INTO avma_grants (key_sha256, host_id, host_key, certifications,"
                " first_at, last_at) VALUES (?, ?, ?, 1, ?, ?)",
                (digest, host_id, host_key, now, now),
            )
            return
        if int(row[1]) >= 1 + KMS_REACTIVATIONS:
            raise ActivationLimitReached(
                f"AVMA host {host_id} has used its {KMS_REACTIVATIONS} reactivations of the "
                f"{parsed.type.name} {parsed}: ask the vendor for more activations"
            )
        db.execute(
            "UPDATE avma_grants SET host_key = ?, certifications = certifications + 1,"
            " last_at = ? WHERE key_sha256 = ? AND host_id = ?",
            (host_key, now, digest, host_id),
        )

    def confirm(self, installation: Installation, catalog: Catalog, *, now: int) -> Confirmation:
        """Answer an installation ID with a confirmation ID (offline / telephone activation,
        and what online MAK activation does too). Enforces the same limits as online."""
        from adba.confirmation import (
            KIND_CSVLK_FOREST,
            KIND_KMS_HOST,
            Confirmation,
            signed_message,
        )
        from adba.kms.protocol import binding_certificate_message

        if installation.kind == KIND_CSVLK_FOREST:
            parsed = self._tagged(installation.key, KeyType.CSVLK, "CSVLK")
            product = catalog.csvlk_by_code(parsed.code)
            with self._records() as db:
                db.lock_key(key_sha256(parsed))
                where = (key_sha256(parsed), f"phone:{installation.binding.hex()}")
                known = db.execute(
                    "SELECT 1 FROM activations WHERE key_sha256 = ? AND forest_dn = ?", where
                ).fetchone()
                if not known:  # the same forest by phone again is not another activation
                    db.execute(
                        "INSERT INTO activations (key_sha256, forest_dn, forest_guid, pid,"
                        " issued_at) VALUES (?, ?, NULL, ?, ?)",
                        (*where, make_pid(parsed.code, parsed.serial, now), now),
                    )
            message = signed_message(installation, now)
            log.info("confirmed %s %s for a forest by installation ID", product.name, parsed)
        elif installation.kind == KIND_KMS_HOST:
            parsed = self._tagged(installation.key, KeyType.CSVLK, "KMS host key (CSVLK)")
            product = catalog.csvlk_by_code(parsed.code)
            epid = make_kms_epid(parsed.code, parsed.serial, now)
            self._grant_host(parsed, installation.subject, None, epid, now, installation.binding)
            message = binding_certificate_message(
                installation.binding, epid, product.sku, now + KMS_CERT_DAYS * 86400
            )
        else:
            parsed = self._tagged(installation.key, KeyType.MAK, "MAK")
            self._use_mak(parsed, installation.binding, now)
            message = signed_message(installation, now)
        return Confirmation(now, self._root_key.sign(message))

    def _use_mak(self, parsed: ProductKey, binding: bytes, now: int) -> None:
        digest = key_sha256(parsed)
        with self._records() as db:
            db.lock_key(digest)  # this key's decisions one at a time, on every replica
            row = db.execute(
                "SELECT allowed FROM mak_keys WHERE key_sha256 = ?", (digest,)
            ).fetchone()
            allowed = int(row[0]) if row else 0
            known = db.execute(
                "SELECT 1 FROM mak_activations WHERE key_sha256 = ? AND binding = ?",
                (digest, binding.hex()),
            ).fetchone()
            (used,) = db.execute(
                "SELECT COUNT(*) FROM mak_activations WHERE key_sha256 = ?", (digest,)
            ).fetchone()
            if not known and used >= allowed:
                raise ActivationLimitReached(
                    f"the MAK {parsed} has no activations left ({used} of {allowed} used): "
                    "ask the vendor for more"
                )
            db.execute(
                "INSERT INTO mak_activations VALUES (?, ?, ?, ?) ON CONFLICT (key_sha256, binding)"
                " DO UPDATE SET last_at = ?",
                (digest, binding.hex(), now, now, now),
            )

    def set_mak_count(self, key: ProductKey, count: int) -> None:
        _check_mak_count(count)
        with self._records() as db:
            db.lock_key(key_sha256(key))
            db.execute(
                "INSERT INTO mak_keys (key_sha256, allowed) VALUES (?, ?)"
                " ON CONFLICT (key_sha256) DO UPDATE SET allowed = excluded.allowed",
                (key_sha256(key), count),
            )

    def grant_hosts(self, key: str, hosts: int) -> int:
        """Raise a KMS key's host limit by ``hosts``; returns the new limit."""
        parsed = self._tagged(key, KeyType.CSVLK, "KMS host key (CSVLK)")
        if hosts < 1:
            raise InvalidInput("grant at least 1 more host")
        digest = key_sha256(parsed)
        with self._records() as db:
            db.lock_key(digest)
            row = db.execute(
                "SELECT host_limit FROM kms_keys WHERE key_sha256 = ?", (digest,)
            ).fetchone()
            limit = (int(row[0]) if row else KMS_HOST_LIMIT) + hosts
            db.execute(
                "INSERT INTO kms_keys (key_sha256, host_limit) VALUES (?, ?)"
                " ON CONFLICT (key_sha256) DO UPDATE SET host_limit = excluded.host_limit",
                (digest, limit),
            )
        log.info("KMS key %s may now activate %d hosts", parsed, limit)
        return limit

    def recall_request(self, request_id: str) -> tuple[str | None, str | None] | None:
        """What an online request id was used for: (digest of its endpoint and body, the
        answer sent), or None for an id not seen. Ids of refused requests are never kept."""
        with self._records() as db:
            row = db.execute(
                "SELECT digest, response FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def remember_request(self, request_id: str, digest: str, response: str, now: int) -> None:
        """Keep an answered request, so that a retry with the same id and body gets the same
        answer (and another body under that id is refused)."""
        with self._records() as db:
            db.execute(
                "INSERT INTO requests (request_id, at, digest, response) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (request_id) DO NOTHING",
                (request_id, now, digest, response),
            )

    def claim_request(
        self, request_id: str, digest: str, now: int
    ) -> tuple[str | None, str | None] | None:
        """Take an online request id for the request being answered, inside the transaction
        that answers it (run both in :meth:`atomic`): kept only if that transaction commits,
        so a refused request does not use its id up. None: the id is this request's now.
        Else (digest, answer) of the request that has it -- on PostgreSQL a replica answering
        the same id at the same moment is waited for, so exactly one of them takes it."""
        with self._records() as db:
            taken = db.execute(
                "INSERT INTO requests (request_id, at, digest, response) VALUES (?, ?, ?, NULL)"
                " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                (request_id, now, digest),
            ).fetchone()
            if taken is not None:
                return None
            row = db.execute(
                "SELECT digest, response FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def answer_request(self, request_id: str, response: str) -> None:
        """Keep the answer to a request id taken by :meth:`claim_request` (same transaction)."""
        with self._records() as db:
            db.execute(
                "UPDATE requests SET response = ? WHERE request_id = ?", (response, request_id)
            )

    def _signer(self) -> tuple[Ed25519PrivateKey, SigningCertificate]:
        """The signing pair on disk now. ``authority rotate`` or ``retire`` run beside a
        running ``authority serve`` take effect at its next license (the certificate file is
        compared, a few hundred bytes), and a retired key never signs again."""
        try:
            der = (self._path / SIGNING_CERT).read_bytes()
        except OSError as exc:
            raise AuthorityError(
                f"cannot read {self._path / SIGNING_CERT}: {exc.strerror or exc}"
            ) from exc
        if der != self._certificate.der:
            signing_key, certificate = self._load_signing(self._path, self._root_public)
            log.info(
                "signing key changed on disk: %s -> %s",
                self._certificate.key_id.hex(),
                certificate.key_id.hex(),
            )
            self._signing_key, self._certificate = signing_key, certificate
        if self._certificate.key_id in self.retired_keys():
            raise AuthorityError(
                f"the signing key {self._certificate.key_id.hex()} is retired: it never signs "
                "again (run `adba authority rotate`)"
            )
        return self._signing_key, self._certificate

    def retired_keys(self) -> frozenset[bytes]:
        """Ids of the signing keys this authority has retired."""
        with self._records() as db:
            rows = db.execute("SELECT key_id FROM retired_keys").fetchall()
        return frozenset(bytes.fromhex(str(r[0])) for r in rows)

    def rotate(
        self, *, now: int, cert_days: int = SIGNING_CERT_DAYS, retire: bool = False
    ) -> SigningCertificate:
        """A new signing key under the same root. Without ``retire``, objects signed before
        keep verifying (their licenses carry the old certificate, valid until it ends) and the
        old key is kept as ``signing-ID.key``. With ``retire``, the old private key is deleted
        and the new certificate states it retired: see :meth:`retire`."""
        _check_days(cert_days)
        old = self._certificate
        retired = self.retired_keys() | ({old.key_id} if retire else set())
        signing_key = Ed25519PrivateKey.generate()
        certificate = issue_certificate(
            self._root_key,
            _raw_public(signing_key),
            now,
            now + cert_days * 86400,
            retired=retired,
        )
        archive = self._path / f"signing-{old.key_id.hex()}"
        # the new pair first (a crash leaves the old pair in place), then the swap
        _write(self._path / (SIGNING_KEY + ".new"), _private_pem(signing_key), 0o600)
        _write(self._path / (SIGNING_CERT + ".new"), certificate.der, 0o644)
        os.replace(self._path / SIGNING_CERT, archive.with_suffix(".cert"))
        if retire:
            _destroy(self._path / SIGNING_KEY)
        else:
            os.replace(self._path / SIGNING_KEY, archive.with_suffix(".key"))
        os.replace(self._path / (SIGNING_KEY + ".new"), self._path / SIGNING_KEY)
        os.replace(self._path / (SIGNING_CERT + ".new"), self._path / SIGNING_CERT)
        self._signing_key, self._certificate = signing_key, certificate
        if retire:
            self._record_retired(old.key_id, now)
        log.info(
            "rotated the signing key: %s -> %s%s",
            old.key_id.hex(),
            certificate.key_id.hex(),
            " (the old key is retired)" if retire else "",
        )
        return certificate

    def retire(self, key: str, *, now: int) -> SigningCertificate:
        """Retire a rotated-out signing key (``key``: its hex id): delete its private key,
        re-certify the current signing key with a certificate naming every retired key
        (every license issued from now on carries that statement), and write ``retired.pem``
        for clients to pin. The current key cannot be retired: rotate with ``retire``."""
        try:
            kid = bytes.fromhex(key)
        except ValueError:
            kid = b""
        if len(kid) != 8:
            raise InvalidInput(f"not a signing-key id (16 hex digits): {key!r}")
        if kid == self._certificate.key_id:
            raise InvalidInput(
                f"{key} is the current signing key: use `adba authority rotate --retire`"
            )
        archive = self._path / f"signing-{kid.hex()}"
        retired = self.retired_keys()
        if kid not in retired and not archive.with_suffix(".cert").is_file():
            raise InvalidInput(f"this authority never rotated out a signing key {key}")
        current = self._certificate
        if not current.valid_at(now):
            raise AuthorityError("the current signing certificate is not valid now: rotate")
        certificate = issue_certificate(
            self._root_key,
            current.public_key,
            now,
            current.not_after,
            retired=retired | {kid},
        )
        _destroy(archive.with_suffix(".key"))
        _write(self._path / (SIGNING_CERT + ".new"), certificate.der, 0o644)
        os.replace(self._path / (SIGNING_CERT + ".new"), self._path / SIGNING_CERT)
        self._certificate = certificate
        self._record_retired(kid, now)
        log.info("retired the signing key %s", kid.hex())
        return certificate

    def _record_retired(self, kid: bytes, now: int) -> None:
        with self._records() as db:
            db.execute(
                "INSERT INTO retired_keys (key_id, retired_at) VALUES (?, ?)"
                " ON CONFLICT (key_id) DO NOTHING",
                (kid.hex(), now),
            )
        pem = self._path / RETIRED_PEM
        tmp = self._path / (RETIRED_PEM + ".new")
        tmp.unlink(missing_ok=True)
        _write(tmp, dump_retirement_pem(self._certificate).encode(), 0o644)
        os.replace(tmp, pem)

    def report(self, catalog: Catalog) -> dict[str, Any]:
        """Keys, activations per key, KMS hosts, remaining counts (no key text)."""
        with self._records() as db:
            keys = db.execute(
                "SELECT type, product_code, serial, created_at, key_sha256 FROM minted_keys ORDER BY id"
            ).fetchall()
            activations = dict(
                db.execute(
                    "SELECT key_sha256, COUNT(*) FROM activations GROUP BY key_sha256"
                ).fetchall()
            )
            hosts = db.execute(
                "SELECT key_sha256, host_id, host_name, activations, last_at, epid FROM kms_hosts"
            ).fetchall()
            limits = dict(db.execute("SELECT key_sha256, host_limit FROM kms_keys").fetchall())
            mak_allowed = dict(db.execute("SELECT key_sha256, allowed FROM mak_keys").fetchall())
            mak_used = dict(
                db.execute(
                    "SELECT key_sha256, COUNT(*) FROM mak_activations GROUP BY key_sha256"
                ).fetchall()
            )
        out = []
        for key_type, code, serial, created, digest in keys:
            kt = KeyType(key_type)
            product = (
                catalog.csvlk_by_code(code)
                if kt is KeyType.CSVLK
                else catalog.edition_by_code(code)
            ).name
            entry: dict[str, Any] = {
                "type": kt.name,
                "product": product,
                "serial": serial,
                "created_at": created,
                "key_sha256": digest,
            }
            if kt is KeyType.CSVLK:
                mine = [h for h in hosts if h[0] == digest]
                limit = int(limits.get(digest, KMS_HOST_LIMIT))
                entry.update(
                    forest_activations=int(activations.get(digest, 0)),
                    kms_hosts=[
                        {
                            "host": name or host_id,
                            "activations": n,
                            "reactivations_left": 1 + KMS_REACTIVATIONS - n,
                            "last_at": last,
                            "epid": epid,
                        }
                        for _d, host_id, name, n, last, epid in mine
                    ],
                    kms_host_limit=limit,
                    kms_hosts_left=max(0, limit - len(mine)),
                )
            else:
                allowed, used = int(mak_allowed.get(digest, 0)), int(mak_used.get(digest, 0))
                entry.update(mak_allowed=allowed, mak_used=used, mak_left=max(0, allowed - used))
            out.append(entry)
        return {
            "root_key_id": key_id(self._root_public).hex(),
            "signing_key_id": self._certificate.key_id.hex(),
            "signing_not_after": self._certificate.not_after,
            "retired_key_ids": sorted(k.hex() for k in self.retired_keys()),
            "keys": out,
        }

    def key_status(self, key: str, catalog: Catalog) -> dict[str, Any]:
        """What the owner of ``key`` may know about it (the key proves ownership): a MAK's
        activations left, a KMS host key's host slots left. Records nothing."""
        parsed = parse_key(key)
        if parsed.type not in (KeyType.MAK, KeyType.CSVLK):
            raise InvalidInput(
                f"a {parsed.type.name} has no activation count: give a MAK or a CSVLK"
            )
        parsed = self._tagged(parsed, parsed.type, parsed.type.name)
        digest = key_sha256(parsed)
        status: dict[str, Any] = {
            "key_sha256": digest,
            "partial_key": parsed.partial,
            "type": parsed.type.name,
        }
        with self._records() as db:
            if parsed.type is KeyType.MAK:
                row = db.execute(
                    "SELECT allowed FROM mak_keys WHERE key_sha256 = ?", (digest,)
                ).fetchone()
                (used,) = db.execute(
                    "SELECT COUNT(*) FROM mak_activations WHERE key_sha256 = ?", (digest,)
                ).fetchone()
                allowed = int(row[0]) if row else 0
                status.update(
                    product=catalog.edition_by_code(parsed.code).name,
                    mak_allowed=allowed,
                    mak_used=int(used),
                    mak_left=max(0, allowed - int(used)),
                )
            else:
                row = db.execute(
                    "SELECT host_limit FROM kms_keys WHERE key_sha256 = ?", (digest,)
                ).fetchone()
                (hosts,) = db.execute(
                    "SELECT COUNT(*) FROM kms_hosts WHERE key_sha256 = ?", (digest,)
                ).fetchone()
                limit = int(row[0]) if row else KMS_HOST_LIMIT
                status.update(
                    product=catalog.csvlk_by_code(parsed.code).name,
                    kms_host_limit=limit,
                    kms_hosts_used=int(hosts),
                    kms_hosts_left=max(0, limit - int(hosts)),
                )
        return status

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
