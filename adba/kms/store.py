"""The KMS host's records in SQLite (WAL): the client table, the cache capacity, and a little
metadata (where the SRV record was published, when the host last saved).

The table mirrors the cache: the host saves a snapshot of the cache (at most its capacity,
50 machines) whenever it changed, once per ``flush_interval`` (1 s) and at shutdown, in a
thread of its own, never on the request path. A save writes the difference from the last
saved snapshot (new or renewed machines upserted, machines that left the cache deleted), so
the table never holds more than the cache and unauthenticated clients cannot grow it.

A save that fails (the file locked by another process, a full disk, any SQLite error) loses
nothing: the cache still holds every acknowledged machine and the next save, retried with a
backoff, writes them. Writers wait at most ``busy_timeout`` for the lock. If the host stops
while it still cannot save, it writes the snapshot to ``kms.unsaved.json`` beside the
database; the next start (and ``kms status``) merges it, and the first good save removes it.

A crash (kill -9, power loss) loses at most the last interval's new or renewed clients; they
are counted again on their next request. ``synchronous=NORMAL`` in WAL mode keeps every saved
transaction across a process crash and loses at most the last ones on power loss.
``adba kms status`` / ``clients`` read the same file from another process while the host runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import KmsError
from .cache import ClientRecord, KmsCache

__all__ = ["SCHEMA_VERSION", "KmsStore", "Row"]

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
_COLUMNS = "cmid, kms_id, sku, kind, machine, first_seen, last_seen, activated"

#: (cmid, kms_id, sku, kind, machine, first_seen, last_seen, activated), as in the table
Row = tuple[str, str, str, int, str, int, int, int]


def _row(r: Any) -> Row:
    """A row from SQLite or JSON, each field its type (raises ValueError/TypeError/IndexError)."""
    return (
        str(r[0]),
        str(r[1]),
        str(r[2]),
        int(r[3]),
        str(r[4]),
        int(r[5]),
        int(r[6]),
        int(r[7]),
    )


def _record(r: Row) -> ClientRecord:
    return ClientRecord(
        uuid.UUID(r[1]),
        uuid.UUID(r[0]),
        uuid.UUID(r[2]),
        int(r[3]),
        str(r[4]),
        int(r[5]),
        int(r[6]),
        bool(r[7]),
    )


class KmsStore:
    def __init__(
        self, path: str | Path, *, readonly: bool = False, busy_timeout: float = 0.2
    ) -> None:
        self.path = Path(path)
        self.unsaved_path = self.path.with_name(self.path.stem + ".unsaved.json")
        #: the rows and capacity the table holds (as last read or saved): what a save diffs
        self._saved: dict[str, Row] = {}
        self._saved_capacity = 0
        self._lock = threading.Lock()
        try:
            if readonly:
                if not self.path.is_file():
                    raise KmsError(
                        f"no KMS host records at {self.path}: is this the host's --state-dir?"
                    )
                self.db = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False
                )
            else:  # opening may wait for a lock (before serving); saving waits busy_timeout
                self.db = sqlite3.connect(
                    self.path, timeout=5, isolation_level=None, check_same_thread=False
                )
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise KmsError(f"{self.path} was written by a newer adba (schema {version})")
                self.db.executescript(_SCHEMA)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self.db.execute(f"PRAGMA busy_timeout={max(1, int(busy_timeout * 1000))}")
        except sqlite3.Error as exc:
            raise KmsError(f"cannot open the KMS records {self.path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    # -- the host's side -----------------------------------------------------------------------
    def load(self, cache: KmsCache, now: int) -> tuple[int, int]:
        """Fill ``cache`` with what it would hold now (the newest ``capacity`` machines of the
        last 30 days, the unsaved file merged in); returns (loaded, left out). The rows left
        out (stale: expired, evicted, beyond the capacity) are deleted by the next save."""
        rows, capacity = self._rows()
        self._saved = dict(rows)
        self._saved_capacity = capacity
        unsaved, unsaved_capacity = self._unsaved()
        merged = dict(rows)
        for cmid, row in unsaved.items():
            if cmid not in merged or merged[cmid][6] <= row[6]:
                merged[cmid] = row
        records = [_record(r) for r in merged.values()]
        left_out = cache.load(records, max(capacity, unsaved_capacity), now)
        if unsaved:
            cache.version += 1  # save the merged snapshot (and so remove the unsaved file)
        return len(cache.entries), left_out

    def save(self, capacity: int, rows: list[Row], *, now: int | None = None) -> int:
        """Make the table hold exactly ``rows`` (a cache snapshot) and ``capacity``; returns
        the rows written or deleted. Raises :class:`sqlite3.Error` (the table unchanged, the
        next call retries everything) when the file is locked or the disk refuses."""
        new = {r[0]: r for r in rows}
        upserts = [r for cmid, r in new.items() if self._saved.get(cmid) != r]
        deletes = [(cmid,) for cmid in self._saved if cmid not in new]
        grown = capacity != self._saved_capacity
        pending = self.unsaved_path.exists()
        if not (upserts or deletes or grown or pending):
            return 0
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")  # take the write lock first: busy fails fast
            try:
                db.executemany(
                    f"INSERT OR REPLACE INTO clients ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    upserts,
                )
                db.executemany("DELETE FROM clients WHERE cmid = ?", deletes)
                if grown:
                    db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('capacity', ?)", (str(capacity),)
                    )
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('saved_at', ?)",
                    (str(int(time.time()) if now is None else now),),
                )
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        self._saved, self._saved_capacity = new, capacity
        if pending:
            self.unsaved_path.unlink(missing_ok=True)
        return len(upserts) + len(deletes)

    def write_unsaved(self, capacity: int, rows: list[Row]) -> None:
        """Keep a snapshot the database refused, for the next start (atomic, fsynced)."""
        tmp = self.unsaved_path.with_name(self.unsaved_path.name + ".tmp")
        data = json.dumps({"capacity": capacity, "rows": rows}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.unsaved_path)

    def _unsaved(self) -> tuple[dict[str, Row], int]:
        try:
            data = json.loads(self.unsaved_path.read_text())
            rows: dict[str, Row] = {}
            for r in data["rows"]:
                row = _row(r)
                _record(row)  # every field parses
                rows[row[0]] = row
            return rows, int(data["capacity"])
        except FileNotFoundError:
            return {}, 0
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise KmsError(f"cannot read {self.unsaved_path}: {exc}") from exc

    def _rows(self) -> tuple[dict[str, Row], int]:
        with self._lock:
            rows = {str(r[0]): _row(r) for r in self.db.execute(f"SELECT {_COLUMNS} FROM clients")}
        return rows, self.capacity()

    # -- metadata and read-only views ----------------------------------------------------------
    def set_meta(self, name: str, value: str) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def clients(self) -> list[ClientRecord]:
        """Every saved record (the unsaved file merged in), least recently seen first."""
        rows, _ = self._rows()
        for cmid, row in self._unsaved()[0].items():
            if cmid not in rows or rows[cmid][6] <= row[6]:
                rows[cmid] = row
        return sorted((_record(r) for r in rows.values()), key=lambda c: c.last_seen)

    def capacity(self) -> int:
        value = self.meta("capacity")
        stored = int(value) if value else 0
        return max(stored, self._unsaved()[1])

    def has_unsaved(self) -> bool:
        return self.unsaved_path.exists()
