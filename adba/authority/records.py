"""Where the authority keeps its records: one interface, two engines.

- :class:`SqliteRecords` -- ``records.sqlite`` in the authority directory (the default; one
  process, or several on one machine: ``BEGIN IMMEDIATE`` makes every decision exclusive);
- :class:`PostgresRecords` -- a PostgreSQL database (``postgresql://...``) that several
  ``authority serve`` replicas share. psycopg 3 is imported here only.

Every decision runs in one transaction (:meth:`Records.transaction`; nested calls join the
open one). On PostgreSQL a decision first locks its key's row
(:meth:`Transaction.lock_key`, ``SELECT ... FOR UPDATE`` at READ COMMITTED), so the reads that
follow see every grant committed before and none can be interleaved into an over-grant; the
unique keys (request id, machine, host) back that up. :meth:`Records.atomic` runs a function
in one transaction and runs it again after a conflict the database resolved by aborting it
(deadlock, serialisation failure, a unique key taken meanwhile).

A database that cannot be reached raises :class:`~adba.errors.RecordsUnavailable` (HTTP 503
with ``Retry-After``); nothing is answered from a transaction that did not commit.

Migrations are versioned (:data:`MIGRATIONS`, SQL for each dialect) and recorded in
``schema_migrations``; both engines run the same list. Records made before that table existed
(``meta.schema_version``) are upgraded in place.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from ..errors import AuthorityError, InvalidInput, RecordsUnavailable

__all__ = [
    "MIGRATIONS",
    "Migration",
    "PostgresRecords",
    "Records",
    "SqliteRecords",
    "Transaction",
    "open_records",
    "redact",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    version: int
    sqlite: str
    postgresql: str

    def sql(self, dialect: str) -> str:
        return self.sqlite if dialect == "sqlite" else self.postgresql


_V1_SQLITE = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS minted_keys (
    id           INTEGER PRIMARY KEY,
    type         INTEGER NOT NULL,   -- adba.keys.KeyType
    product_code INTEGER NOT NULL,
    serial       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,   -- Unix seconds
    key_sha256   TEXT NOT NULL UNIQUE, -- hex SHA-256 of the dashed key text; never the key
    UNIQUE (type, product_code, serial)
);
CREATE TABLE IF NOT EXISTS activations (
    id          INTEGER PRIMARY KEY,
    key_sha256  TEXT NOT NULL,
    forest_dn   TEXT NOT NULL,
    forest_guid TEXT,
    pid         TEXT NOT NULL,
    issued_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS activations_by_key ON activations (key_sha256);
"""
_V2 = """
CREATE TABLE IF NOT EXISTS kms_keys (
    key_sha256  TEXT PRIMARY KEY,
    host_limit  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kms_hosts (
    key_sha256  TEXT NOT NULL,
    host_id     TEXT NOT NULL,     -- hex hash of the host id (all an installation ID carries)
    host_name   TEXT,              -- the host id itself, when activated online
    activations INTEGER NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    epid        TEXT NOT NULL,
    PRIMARY KEY (key_sha256, host_id)
);
CREATE TABLE IF NOT EXISTS mak_keys (
    key_sha256  TEXT PRIMARY KEY,
    allowed     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mak_activations (
    key_sha256  TEXT NOT NULL,
    binding     TEXT NOT NULL,     -- hex hash of the machine (CMID and edition)
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    PRIMARY KEY (key_sha256, binding)
);
CREATE TABLE IF NOT EXISTS requests (
    request_id  TEXT PRIMARY KEY,  -- online requests carry a unique id: a replay is refused
    at          INTEGER NOT NULL
);
"""
_V3_SQLITE = """
ALTER TABLE requests ADD COLUMN digest TEXT;      -- SHA-256 of the endpoint and the body
ALTER TABLE requests ADD COLUMN response TEXT;    -- the answer, for an idempotent retry
ALTER TABLE activations ADD COLUMN license BLOB;  -- the license issued (re-sent on a repeat)
ALTER TABLE kms_hosts ADD COLUMN host_key TEXT;   -- hex hash of the host's public key
CREATE TABLE IF NOT EXISTS retired_keys (
    key_id      TEXT PRIMARY KEY,  -- hex id of a retired signing key: never signs again
    retired_at  INTEGER NOT NULL
);
"""
_V4 = """
CREATE TABLE IF NOT EXISTS avma_hosts (
    host_id     TEXT NOT NULL,
    host_key    TEXT NOT NULL,     -- hex of the host's Ed25519 public key
    edition_sku TEXT NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    PRIMARY KEY (host_id, host_key)
);
CREATE TABLE IF NOT EXISTS avma_grants (  -- which key certified which AVMA host online
    key_sha256     TEXT NOT NULL,
    host_id        TEXT NOT NULL,
    host_key       TEXT NOT NULL,  -- hex of the host's current Ed25519 public key
    certifications INTEGER NOT NULL,
    first_at       INTEGER NOT NULL,
    last_at        INTEGER NOT NULL,
    PRIMARY KEY (key_sha256, host_id)
);
"""


def _pg(sql: str) -> str:
    """The SQLite text of a migration in PostgreSQL's words: 64-bit integers everywhere
    (serials reach 2^32, times pass 2038), identity keys, BYTEA, idempotent ADD COLUMN."""
    sql = sql.replace("INTEGER PRIMARY KEY", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = sql.replace(" BLOB", " BYTEA").replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS")
    return sql


#: every schema step, in order; each engine runs the ones its records have not had
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, _V1_SQLITE, _pg(_V1_SQLITE)),
    Migration(2, _V2, _pg(_V2)),
    Migration(3, _V3_SQLITE, _pg(_V3_SQLITE)),
    Migration(4, _V4, _pg(_V4)),  # the AVMA hosts the authority certified
)
LATEST = MIGRATIONS[-1].version

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  INTEGER NOT NULL
)
"""


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def redact(url: str) -> str:
    """A database URL fit for a log line or a message: no password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Transaction:
    """One open transaction: ``execute`` takes ``?`` placeholders on both engines."""

    dialect = "sqlite"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, tuple(params))  # type: ignore[no-any-return]

    def lock_key(self, digest: str) -> None:
        """Make this transaction the only one deciding for this key until it ends (SQLite:
        the whole database already is, from ``BEGIN IMMEDIATE``)."""

    def lock_table(self, table: str) -> None:
        """Make this transaction the only writer of ``table`` until it ends."""


class _PgTransaction(Transaction):
    dialect = "postgresql"
    _cache: ClassVar[dict[str, str]] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        text = self._cache.get(sql)
        if text is None:
            text = self._cache[sql] = sql.replace("%", "%%").replace("?", "%s")
        return self.conn.execute(text, tuple(params))  # type: ignore[no-any-return]

    def lock_key(self, digest: str) -> None:
        self.conn.execute("SELECT 1 FROM minted_keys WHERE key_sha256 = %s FOR UPDATE", (digest,))

    def lock_table(self, table: str) -> None:
        if not re.fullmatch(r"[a-z_]+", table):
            raise ValueError(table)
        self.conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")


class _Conflict(RecordsUnavailable):
    """The database aborted the transaction to keep it exact: :meth:`Records.atomic` runs
    it again; elsewhere the client is told to (503)."""


class Records:
    """The authority's records (see the module docstring)."""

    dialect = "sqlite"
    #: several threads of one process should take turns (SQLite: one writer at a time)
    one_writer = True

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def where(self) -> str:
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction, committed when the block ends without an exception; inside an
        open one (same thread), the block joins it."""
        current: Transaction | None = getattr(self._local, "tx", None)
        if current is not None:
            yield current
            return
        with self._begin() as tx:
            self._local.tx = tx
            try:
                yield tx
            finally:
                self._local.tx = None

    def atomic(self, fn: Callable[[], T], *, attempts: int = 8) -> T:
        """``fn()`` in one transaction, run again (at most ``attempts`` times) when the
        database aborted it for a conflict with another transaction."""
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction():
                    return fn()
            except _Conflict as exc:
                if attempt == attempts:
                    raise RecordsUnavailable(
                        f"the records at {self.where} are too busy: try again",
                        retry_after=1,
                    ) from exc
                log.info("transaction conflict (%s): attempt %d again", exc, attempt + 1)
                time.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    def _begin(self) -> contextlib.AbstractContextManager[Transaction]:
        raise NotImplementedError

    def ping(self) -> None:
        """Raise :class:`RecordsUnavailable` unless the records answer a query now."""
        with self.transaction() as tx:
            tx.execute("SELECT 1").fetchone()

    def has_table(self, tx: Transaction, name: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of any connection kept open."""

    # -- migrations ----------------------------------------------------------------------------
    def migrate(self, *, now: int) -> list[int]:
        """Run the migrations these records have not had; returns their versions."""
        with self.transaction() as tx:
            self._serialise_migrations(tx)
            legacy = self.has_table(tx, "meta")
            had_table = self.has_table(tx, "schema_migrations")
            tx.execute(_MIGRATIONS_TABLE)
            applied = {int(r[0]) for r in tx.execute("SELECT version FROM schema_migrations")}
            if not had_table and legacy:  # records made before schema_migrations existed
                row = tx.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
                before = int(row[0]) if row else 1
                if before > LATEST:
                    applied = {before}
                else:
                    for version in range(1, before + 1):
                        tx.execute(
                            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                            (version, now),
                        )
                        applied.add(version)
            if applied and max(applied) > LATEST:
                raise AuthorityError(
                    f"the records at {self.where} were written by a newer adba "
                    f"(schema {max(applied)}; this one knows {LATEST})"
                )
            done = []
            for step in MIGRATIONS:
                if step.version in applied:
                    continue
                for statement in _statements(step.sql(self.dialect)):
                    self._run_ddl(tx, statement)
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (step.version, now),
                )
                done.append(step.version)
                log.info("upgraded the records at %s to schema %d", self.where, step.version)
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (str(LATEST),),
            )
        return done

    def _serialise_migrations(self, tx: Transaction) -> None:
        """Replicas starting at once migrate one after the other."""

    def _run_ddl(self, tx: Transaction, statement: str) -> None:
        tx.execute(statement)


class SqliteRecords(Records):
    """``records.sqlite``: a connection per transaction, ``BEGIN IMMEDIATE``."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        super().__init__()
        self.path = path
        self.timeout = timeout  #: how long a transaction waits for another process's

    @property
    def where(self) -> str:
        return str(self.path)

    def create(self) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.execute("PRAGMA journal_mode=WAL")

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Transaction]:
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise RecordsUnavailable(
                f"cannot open the records {self.path}: {exc}", retry_after=1
            ) from exc
        try:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise RecordsUnavailable(
                    f"the records {self.path} are busy or unreadable: {exc}", retry_after=1
                ) from exc
            try:
                yield Transaction(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise RecordsUnavailable(
                    f"the records {self.path} could not be written: {exc}", retry_after=1
                ) from exc
        finally:
            db.close()

    def has_table(self, tx: Transaction, name: str) -> bool:
        row = tx.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def _run_ddl(self, tx: Transaction, statement: str) -> None:
        try:
            tx.execute(statement)
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise  # (a column added before: that step was half done)


class PostgresRecords(Records):
    """A PostgreSQL database shared by every replica: a small pool of connections per
    process, READ COMMITTED, decisions serialised per key by row locks."""

    dialect = "postgresql"
    one_writer = False

    def __init__(self, url: str, *, pool_size: int = 10, wait: float = 30.0) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as exc:  # the `postgres` extra
            raise InvalidInput(
                "records on PostgreSQL need psycopg 3: pip install 'adba[postgres]'"
            ) from exc
        self._psycopg = psycopg
        self.url = url
        self.pool_size = pool_size
        self.wait = wait
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)

    @property
    def where(self) -> str:
        return redact(self.url)

    def _unavailable(self, exc: BaseException) -> RecordsUnavailable:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RecordsUnavailable(
            f"the records database {self.where} is unavailable: {first}", retry_after=2
        )

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(
                self.url,
                connect_timeout=3,
                autocommit=False,
                options="-c statement_timeout=15000 -c idle_in_transaction_session_timeout=30000",
                application_name="adba-authority",
            )
        except self._psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    def _checkout(self) -> Any:
        """A connection for one transaction: an idle one, else a new one; at most
        ``pool_size`` in use, a caller over that waits up to ``wait`` seconds."""
        if not self._slots.acquire(timeout=self.wait):
            raise RecordsUnavailable(
                f"every connection to {self.where} is busy: try again", retry_after=1
            )
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        try:
            return self._connect()
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, conn: Any, healthy: bool) -> None:
        if healthy and not conn.closed and not conn.broken:
            self._idle.put(conn)
        else:
            with contextlib.suppress(Exception):
                conn.close()
        self._slots.release()

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Transaction]:
        errors = self._psycopg.errors
        conn = self._checkout()
        healthy = False
        try:
            try:
                yield _PgTransaction(conn)
                conn.commit()
            except BaseException:
                if not conn.closed and not conn.broken:
                    conn.rollback()  # a refusal (or a conflict): the connection stays good
                raise
            finally:
                healthy = not conn.closed and not conn.broken
        except (errors.TransactionRollback, errors.UniqueViolation, errors.LockNotAvailable) as exc:
            raise _Conflict(
                f"a concurrent transaction on {self.where} won ({type(exc).__name__}): try again",
                retry_after=1,
            ) from exc
        except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
            healthy = False
            self.close()  # the server went away: its other idle connections went with it
            raise self._unavailable(exc) from exc
        finally:
            self._checkin(conn, healthy)

    def ping(self) -> None:
        """A round trip on a connection of its own: a health check is not queued behind busy
        requests, and a replica whose pool is full but whose database answers is healthy."""
        try:
            with self._connect() as conn:
                conn.execute("SELECT 1").fetchone()
        except self._psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    def has_table(self, tx: Transaction, name: str) -> bool:
        row = tx.execute("SELECT to_regclass(CAST(? AS text)) IS NOT NULL", (name,)).fetchone()
        return bool(row[0])

    def _serialise_migrations(self, tx: Transaction) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (0x616462610001,))

    def __del__(self) -> None:  # an authority opened for one command: its pool goes with it
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Close the idle connections (those in use are closed when they come back bad)."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()


def open_records(database: str | None, directory: Path) -> Records:
    """The records named by ``database`` (a ``postgresql://`` URL) or, without one, the
    SQLite file in the authority directory."""
    if not database:
        from .local import RECORDS

        return SqliteRecords(directory / RECORDS)
    if database.startswith(("postgresql://", "postgres://")):
        return PostgresRecords(database)
    if database.startswith("sqlite:"):
        return SqliteRecords(Path(database.removeprefix("sqlite:").removeprefix("//")))
    raise InvalidInput(
        f"--database {redact(database)!r}: give a postgresql://USER@HOST/NAME URL "
        "(or none: records.sqlite in the authority directory)"
    )
