"""The AVMA host's records of its guests (SQLite): one row per guest, its latest state, and
the history of its requests; kept across restarts. :func:`guest_rows` is what ``adba avma
guests`` and the console list."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["GUESTS_DB", "GuestStore", "guest_rows"]

GUESTS_DB = "avma-guests.sqlite"
#: requests kept per guest in the history (the oldest go first)
HISTORY_PER_GUEST = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS guests (
    guest_id       TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    edition_sku    TEXT NOT NULL,
    status         TEXT NOT NULL,   -- the last answer: activated, or the refusal's code
    licensed_until INTEGER,         -- end of the last activation the host gave
    first_at       INTEGER NOT NULL,
    last_at        INTEGER NOT NULL,
    requests       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    guest_id    TEXT NOT NULL,
    at          INTEGER NOT NULL,
    edition_sku TEXT NOT NULL,
    status      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_guest ON history (guest_id, at);
"""


class GuestStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:
                yield db
        finally:
            db.close()

    def record(
        self,
        guest_id: str,
        name: str,
        edition_sku: str,
        status: str,
        now: int,
        licensed_until: int | None,
    ) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO guests VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (guest_id) DO"
                " UPDATE SET name = excluded.name, edition_sku = excluded.edition_sku,"
                " status = excluded.status, last_at = excluded.last_at, requests = requests + 1,"
                " licensed_until = COALESCE(excluded.licensed_until, licensed_until)",
                (guest_id, name, edition_sku, status, licensed_until, now, now),
            )
            db.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?)", (guest_id, now, edition_sku, status)
            )
            db.execute(
                "DELETE FROM history WHERE guest_id = ? AND rowid NOT IN (SELECT rowid FROM"
                " history WHERE guest_id = ? ORDER BY at DESC, rowid DESC LIMIT ?)",
                (guest_id, guest_id, HISTORY_PER_GUEST),
            )

    def rows(self) -> list[tuple[Any, ...]]:
        with self._db() as db:
            return db.execute(
                "SELECT g.guest_id, g.name, g.edition_sku, g.status, g.licensed_until,"
                " g.first_at, g.last_at, g.requests,"
                " (SELECT COUNT(*) FROM history h WHERE h.guest_id = g.guest_id)"
                " FROM guests g ORDER BY g.name, g.guest_id"
            ).fetchall()

    def history(self, guest_id: str) -> list[tuple[int, str, str]]:
        with self._db() as db:
            return db.execute(
                "SELECT at, edition_sku, status FROM history WHERE guest_id = ? ORDER BY at, rowid",
                (guest_id,),
            ).fetchall()


def guest_rows(
    state_dir: str | Path, *, now: int | None = None, catalog: Any = None
) -> list[dict[str, Any]]:
    """One dict per guest the AVMA host in ``state_dir`` has answered: id, name, edition,
    the last answer, whether it is licensed now, until when, first and last seen, requests,
    and how many of them the history keeps."""
    from ..catalog import load_catalog

    now = int(time.time()) if now is None else now
    catalog = catalog or load_catalog(None)
    path = Path(state_dir) / GUESTS_DB
    if not path.exists():
        return []
    out = []
    for gid, name, sku, status, until, first, last, requests, kept in GuestStore(path).rows():
        import uuid

        out.append(
            {
                "guest_id": gid,
                "name": name,
                "edition": catalog.sku_name(uuid.UUID(sku)) or sku,
                "edition_sku": sku,
                "last_answer": status,
                "licensed": bool(until and now < until),
                "licensed_until": until,
                "first_seen": first,
                "last_seen": last,
                "requests": requests,
                "history": kept,
            }
        )
    return out
