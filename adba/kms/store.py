"""The KMS host's records in SQLite (WAL): the client table, each group's cache capacity, and
a little metadata (where the SRV record was published).

The host never writes on the request path: the cache collects changes and the host saves them
in one transaction every ``flush_interval`` (1 s by default) and at shutdown. A crash (kill -9,
power loss) therefore loses at most the last interval's new or renewed clients; those clients
are counted again on their next request. ``synchronous=NORMAL`` in WAL mode keeps every saved
transaction across a process crash and loses at most the last ones on power loss.
``adba kms status`` / ``clients`` read the same file from another process while the host runs.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from ..errors import KmsError
from .cache import ClientRecord, KmsCache

__all__ = ["SCHEMA_VERSION", "KmsStore"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    cmid       TEXT PRIMARY KEY,
    kms_id     TEXT NOT NULL,
    sku        TEXT NOT NULL,
    kind       INTEGER NOT NULL,
    machine    TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    activated  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS clients_by_age ON clients (last_seen);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class KmsStore:
    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.is_file():
                    raise KmsError(
                        f"no KMS host records at {self.path}: is this the host's --state-dir?"
                    )
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            else:
                self.db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise KmsError(f"{self.path} was written by a newer adba (schema {version})")
                self.db.executescript(_SCHEMA)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise KmsError(f"cannot open the KMS records {self.path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def load(self, cache: KmsCache) -> int:
        cache.capacity = max(cache.capacity, self.capacity())
        n = 0
        for rec in self.clients():
            cache.load(rec)
            n += 1
        return n

    def save(self, cache: KmsCache) -> int:
        saved, removed, capacity = cache.take_changes()
        if not (saved or removed or capacity):
            return 0
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO clients (cmid, kms_id, sku, kind, machine, first_seen,"
                " last_seen, activated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        str(r.cmid),
                        str(r.kms_id),
                        str(r.sku),
                        r.kind,
                        r.machine,
                        r.first_seen,
                        r.last_seen,
                        int(r.activated),
                    )
                    for r in saved
                ],
            )
            db.executemany("DELETE FROM clients WHERE cmid = ?", [(str(r.cmid),) for r in removed])
            if capacity:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('capacity', ?)", (str(capacity),))
            db.execute("COMMIT")
            for r in saved:
                r.persisted = True
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(saved) + len(removed)

    # -- metadata and read-only views ----------------------------------------------------------
    def set_meta(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def clients(self) -> list[ClientRecord]:
        """Every record, least recently seen first."""
        return [
            ClientRecord(
                uuid.UUID(r[0]),
                uuid.UUID(r[1]),
                uuid.UUID(r[2]),
                int(r[3]),
                str(r[4]),
                int(r[5]),
                int(r[6]),
                bool(r[7]),
            )
            for r in self.db.execute(
                "SELECT kms_id, cmid, sku, kind, machine, first_seen, last_seen, activated "
                "FROM clients ORDER BY last_seen, rowid"
            )
        ]

    def capacity(self) -> int:
        value = self.meta("capacity")
        return int(value) if value else 0
