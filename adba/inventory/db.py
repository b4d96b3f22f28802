"""The inventory database: SQLite (WAL) by default, schema versioned by small migrations.

The SQL is kept engine-neutral (TEXT, INTEGER, BIGINT; ``INSERT ... ON CONFLICT ... DO
UPDATE``; no AUTOINCREMENT, no SQLite-only functions) so a PostgreSQL engine needs only
another connection and placeholder style. Tables:

- ``machines``: one row per machine (name is the key), where it came from, its address for
  SSH and the summary of its last collection;
- ``scans``: one row per discover / collect / import run (when, how many, how many failed);
- ``collections``: every collection of every machine (the history), products as JSON;
- ``kms_clients``: the client table of each KMS host imported (latest import per host);
- ``keys``: what the authority said about each key (MAK activations left, KMS host slots);
- ``avma_guests``: the guests of each AVMA host imported (latest import per host).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FileAccessError, InvalidInput

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Collection", "InventoryDB"]

log = logging.getLogger(__name__)

#: version -> statements; applied in order, each version in one transaction
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE machines (
            name            TEXT PRIMARY KEY,
            address         TEXT,
            dn              TEXT,
            source          TEXT NOT NULL,
            first_seen      BIGINT NOT NULL,
            last_discovered BIGINT,
            last_collected  BIGINT,
            status          TEXT,
            channel         TEXT,
            expires_at      BIGINT,
            error_code      TEXT,
            error_message   TEXT
        )""",
        "CREATE INDEX machines_by_status ON machines (status)",
        """CREATE TABLE scans (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL,
            started_at  BIGINT NOT NULL,
            finished_at BIGINT,
            total       INTEGER NOT NULL DEFAULT 0,
            failed      INTEGER NOT NULL DEFAULT 0,
            source      TEXT
        )""",
        """CREATE TABLE collections (
            scan          TEXT NOT NULL,
            machine       TEXT NOT NULL,
            at            BIGINT NOT NULL,
            ok            INTEGER NOT NULL,
            status        TEXT,
            channel       TEXT,
            expires_at    BIGINT,
            error_code    TEXT,
            error_message TEXT,
            products      TEXT,
            PRIMARY KEY (scan, machine)
        )""",
        "CREATE INDEX collections_by_machine ON collections (machine, at)",
        """CREATE TABLE kms_clients (
            host       TEXT NOT NULL,
            cmid       TEXT NOT NULL,
            machine    TEXT NOT NULL,
            edition    TEXT,
            kind       TEXT,
            first_seen BIGINT,
            last_seen  BIGINT,
            state      TEXT,
            imported   BIGINT NOT NULL,
            PRIMARY KEY (host, cmid)
        )""",
        """CREATE TABLE keys (
            key_sha256     TEXT PRIMARY KEY,
            partial_key    TEXT NOT NULL,
            type           TEXT NOT NULL,
            product        TEXT,
            mak_allowed    INTEGER,
            mak_used       INTEGER,
            mak_left       INTEGER,
            kms_host_limit INTEGER,
            kms_hosts_used INTEGER,
            kms_hosts_left INTEGER,
            imported       BIGINT NOT NULL
        )""",
    ),
    # the console's machine page: each sort order reads an index, never sorts the table
    2: (
        "CREATE INDEX machines_by_status_name ON machines (status, name)",
        "CREATE INDEX machines_by_channel_name ON machines (channel, name)",
        "CREATE INDEX machines_by_expiry_name ON machines (expires_at, name)",
        "CREATE INDEX machines_by_collected_name ON machines (last_collected, name)",
        "CREATE INDEX machines_by_status_channel ON machines (status, channel)",
        "CREATE INDEX machines_by_status_expiry ON machines (status, expires_at, name)",
    ),
    # the guests an AVMA host activates (``adba inventory import --avma-state DIR``)
    3: (
        """CREATE TABLE avma_guests (
            host           TEXT NOT NULL,
            guest_id       TEXT NOT NULL,
            name           TEXT NOT NULL,
            edition        TEXT,
            last_answer    TEXT NOT NULL,
            licensed       INTEGER NOT NULL,
            licensed_until BIGINT,
            first_seen     BIGINT,
            last_seen      BIGINT,
            requests       INTEGER NOT NULL,
            imported       BIGINT NOT NULL,
            PRIMARY KEY (host, guest_id)
        )""",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)

#: the channels a machine's summary names (sorted, comma-joined: ``ADBA,KMS``)
CHANNELS = ("ADBA", "KMS", "MAK")

#: what the machine page may sort by (a column name is never taken from a request as is)
SORTS = ("name", "status", "channel", "expires_at", "last_collected")

#: worst first: a machine's summary is the worst status among its products
STATUS_ORDER = ("unreachable", "unlicensed", "notification", "grace", "licensed")

_MACHINE_COLUMNS = (
    "name",
    "address",
    "dn",
    "source",
    "first_seen",
    "last_discovered",
    "last_collected",
    "status",
    "channel",
    "expires_at",
    "error_code",
    "error_message",
)


@dataclass
class Collection:
    """One machine's answer (or why there was none) in one collect run."""

    machine: str
    at: int
    ok: bool
    status: str | None = None
    channel: str | None = None
    expires_at: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    products: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "at": self.at,
            "ok": self.ok,
            "status": self.status,
            "channel": self.channel,
            "expires_at": self.expires_at,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "products": self.products,
        }


def _combinations_with(channel: str) -> list[str]:
    """Every summary (sorted, comma-joined subset of :data:`CHANNELS`) naming ``channel``."""
    from itertools import combinations

    return [
        ",".join(c)
        for n in range(1, len(CHANNELS) + 1)
        for c in combinations(CHANNELS, n)
        if channel in c
    ]


def _like(text: str) -> str:
    """``text`` matched literally inside a LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class InventoryDB:
    """``with InventoryDB(path) as db:`` -- opened, migrated to :data:`SCHEMA_VERSION`."""

    def __init__(self, path: str | os.PathLike[str], *, create_parent: bool = False) -> None:
        """``create_parent``: make the directory (for the default path; a path the admin
        gives must be in a directory that exists)."""
        self.path = Path(path)
        try:
            if create_parent:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if not str(path) or self.path.is_dir() or not self.path.parent.is_dir():
                raise OSError(f"{self.path.parent} is not a directory" if str(path) else "no path")
            self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        except (OSError, ValueError, sqlite3.Error) as exc:
            raise FileAccessError(
                f"cannot open the inventory {self.path}: {exc}", path=str(self.path)
            ) from exc
        self.migrate()

    def __enter__(self) -> InventoryDB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # -- schema ------------------------------------------------------------------------------
    def version(self) -> int:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def migrate(self) -> int:
        """Apply the migrations this file lacks; returns the version it is at."""
        current = self.version()
        if current > SCHEMA_VERSION:
            raise InvalidInput(
                f"{self.path} was written by a newer adba (inventory schema {current}, this "
                f"one knows {SCHEMA_VERSION}): upgrade adba"
            )
        for version in sorted(v for v in MIGRATIONS if v > current):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version]:
                    self.db.execute(statement)
                self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            log.info("inventory %s: schema %d", self.path, version)
        return max(current, SCHEMA_VERSION)

    # -- machines ----------------------------------------------------------------------------
    def add_machines(
        self,
        machines: Iterable[tuple[str, str | None, str | None]],
        *,
        source: str,
        now: int | None = None,
    ) -> int:
        """Add or refresh (name, address, DN) rows; returns how many were new."""
        now = int(time.time()) if now is None else now
        rows = [(n.lower(), a, d) for n, a, d in machines]
        for name, _a, _d in rows:
            if not name or len(name) > 255 or any(c.isspace() for c in name):
                raise InvalidInput(f"not a machine name: {name!r}")
        before = self.count()
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT INTO machines (name, address, dn, source, first_seen, last_discovered)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " address = COALESCE(excluded.address, machines.address),"
                " dn = COALESCE(excluded.dn, machines.dn),"
                " last_discovered = excluded.last_discovered",
                [(n, a, d, source, now, now) for n, a, d in rows],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.count() - before

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM machines").fetchone()[0])

    def machines(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query = f"SELECT {', '.join(_MACHINE_COLUMNS)} FROM machines"
        rows = self.db.execute(query + " ORDER BY name").fetchall()
        out = [dict(zip(_MACHINE_COLUMNS, r, strict=True)) for r in rows]
        if names:
            wanted = {n.lower() for n in names}
            out = [m for m in out if m["name"] in wanted]
        return out

    def machine_page(
        self,
        *,
        status: str | None = None,
        channel: str | None = None,
        search: str | None = None,
        sort: str = "name",
        descending: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of machines, filtered and sorted in the database, and how many match.

        ``status`` "unknown" is a machine never collected; ``channel`` matches one of a
        machine's channels (``ADBA,KMS``); ``search`` is a substring of the name or address."""
        if sort not in SORTS:
            raise InvalidInput(f"cannot sort by {sort!r}: one of {', '.join(SORTS)}")
        if not (0 < limit <= 10_000 and offset >= 0):
            raise InvalidInput("a page is 1 to 10000 rows from offset 0 or more")
        where: list[str] = []
        params: list[Any] = []
        if status == "unknown":
            where.append("status IS NULL")
        elif status:
            where.append("status = ?")
            params.append(status)
        if channel in CHANNELS:  # each summary holding it, so the index answers
            combos = _combinations_with(channel)
            where.append(f"channel IN ({', '.join('?' for _ in combos)})")
            params += combos
        elif channel:
            where.append("(',' || channel || ',') LIKE ?")
            params.append(f"%,{_like(channel)},%")
        if search:
            where.append("(name LIKE ? ESCAPE '\\' OR address LIKE ? ESCAPE '\\')")
            params += [f"%{_like(search.lower())}%", f"%{_like(search)}%"]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        (total,) = self.db.execute(f"SELECT COUNT(*) FROM machines{clause}", params).fetchone()
        order = "DESC" if descending else "ASC"
        rows = self.db.execute(
            f"SELECT {', '.join(_MACHINE_COLUMNS)} FROM machines{clause}"
            f" ORDER BY {sort} {order}"
            + ("" if sort == "name" else f", name {order}")
            + " LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        return [dict(zip(_MACHINE_COLUMNS, r, strict=True)) for r in rows], int(total)

    # -- scans and history -------------------------------------------------------------------
    def start_scan(self, kind: str, *, source: str | None = None, now: int | None = None) -> str:
        scan = uuid.uuid4().hex
        self.db.execute(
            "INSERT INTO scans (id, kind, started_at, source) VALUES (?, ?, ?, ?)",
            (scan, kind, int(time.time()) if now is None else now, source),
        )
        return scan

    def finish_scan(self, scan: str, *, total: int, failed: int, now: int | None = None) -> None:
        self.db.execute(
            "UPDATE scans SET finished_at = ?, total = ?, failed = ? WHERE id = ?",
            (int(time.time()) if now is None else now, total, failed, scan),
        )

    def record(self, scan: str, collections: Sequence[Collection]) -> None:
        """Keep every collection and update each machine's summary, in one transaction."""
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT INTO collections (scan, machine, at, ok, status, channel, expires_at,"
                " error_code, error_message, products) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        scan,
                        c.machine,
                        c.at,
                        int(c.ok),
                        c.status,
                        c.channel,
                        c.expires_at,
                        c.error_code,
                        c.error_message,
                        json.dumps(c.products, sort_keys=True),
                    )
                    for c in collections
                ],
            )
            self.db.executemany(
                "UPDATE machines SET last_collected = ?, status = ?, channel = ?, expires_at = ?,"
                " error_code = ?, error_message = ? WHERE name = ?",
                [
                    (
                        c.at,
                        c.status,
                        c.channel,
                        c.expires_at,
                        c.error_code,
                        c.error_message,
                        c.machine,
                    )
                    for c in collections
                ],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def history(self, machine: str | None = None, *, limit: int = 1000) -> list[dict[str, Any]]:
        columns = (
            "scan",
            "machine",
            "at",
            "ok",
            "status",
            "channel",
            "expires_at",
            "error_code",
            "error_message",
            "products",
        )
        query = f"SELECT {', '.join(columns)} FROM collections"
        params: tuple[Any, ...] = ()
        if machine:
            query += " WHERE machine = ?"
            params = (machine.lower(),)
        rows = self.db.execute(query + " ORDER BY at DESC, machine LIMIT ?", (*params, limit))
        out = []
        for r in rows.fetchall():
            entry = dict(zip(columns, r, strict=True))
            entry["ok"] = bool(entry["ok"])
            entry["products"] = json.loads(entry["products"] or "[]")
            out.append(entry)
        return out

    def overview(self, now: int, *, expiring_days: int = 30) -> dict[str, Any]:
        """Machines by status and by channel, and how many expire within ``expiring_days``."""
        by_status: dict[str, int] = {}
        by_channel: dict[str, int] = {}
        for status, channel, n in self.db.execute(
            "SELECT status, channel, COUNT(*) FROM machines GROUP BY status, channel"
        ).fetchall():
            by_status[status or "unknown"] = by_status.get(status or "unknown", 0) + int(n)
            for c in (channel or "").split(",") if channel else ():
                by_channel[c] = by_channel.get(c, 0) + int(n)
        (expiring,) = self.db.execute(
            "SELECT COUNT(*) FROM machines WHERE status = 'licensed' AND expires_at IS NOT NULL"
            " AND expires_at < ?",
            (now + expiring_days * 86400,),
        ).fetchone()
        return {
            "machines": self.count(),
            "by_status": by_status,
            "by_channel": by_channel,
            f"expiring_within_{expiring_days}_days": int(expiring),
        }

    def status_over_time(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Each collect run, newest first, with its machines counted by status."""
        out = []
        for scan in [s for s in self.scans(limit=limit) if s["kind"] == "collect"]:
            rows = self.db.execute(
                "SELECT status, COUNT(*) FROM collections WHERE scan = ? GROUP BY status",
                (scan["id"],),
            ).fetchall()
            counts = {str(status or "unknown"): int(n) for status, n in rows}
            out.append({"scan": scan["id"], "at": scan["started_at"], "counts": counts})
        return out

    def scans(self, *, limit: int = 100) -> list[dict[str, Any]]:
        columns = ("id", "kind", "started_at", "finished_at", "total", "failed", "source")
        rows = self.db.execute(
            f"SELECT {', '.join(columns)} FROM scans ORDER BY started_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(zip(columns, r, strict=True)) for r in rows]

    # -- imports -----------------------------------------------------------------------------
    def replace_kms_clients(
        self, host: str, clients: Sequence[dict[str, Any]], *, now: int | None = None
    ) -> None:
        """The host's client table as it is now (what left its cache is gone here too)."""
        now = int(time.time()) if now is None else now
        self.db.execute("BEGIN")
        try:
            self.db.execute("DELETE FROM kms_clients WHERE host = ?", (host,))
            self.db.executemany(
                "INSERT INTO kms_clients (host, cmid, machine, edition, kind, first_seen,"
                " last_seen, state, imported) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        host,
                        str(c["cmid"]),
                        str(c.get("machine") or ""),
                        c.get("edition"),
                        c.get("kind"),
                        c.get("first_seen"),
                        c.get("last_seen"),
                        c.get("state"),
                        now,
                    )
                    for c in clients
                ],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def kms_clients(self) -> list[dict[str, Any]]:
        columns = (
            "host",
            "cmid",
            "machine",
            "edition",
            "kind",
            "first_seen",
            "last_seen",
            "state",
            "imported",
        )
        rows = self.db.execute(
            f"SELECT {', '.join(columns)} FROM kms_clients ORDER BY host, machine"
        ).fetchall()
        return [dict(zip(columns, r, strict=True)) for r in rows]

    _AVMA_COLUMNS = (
        "host",
        "guest_id",
        "name",
        "edition",
        "last_answer",
        "licensed",
        "licensed_until",
        "first_seen",
        "last_seen",
        "requests",
        "imported",
    )

    def replace_avma_guests(
        self, host: str, guests: Sequence[dict[str, Any]], *, now: int | None = None
    ) -> None:
        """The AVMA host's guests as it knows them now (rows of
        :func:`adba.avma.store.guest_rows`); a guest it no longer lists is gone here too."""
        now = int(time.time()) if now is None else now
        rows = []
        for g in guests:
            if not g.get("guest_id") or g.get("last_answer") is None:
                raise InvalidInput(f"an AVMA guest row without an id or answer: {g!r:.200}")
            rows.append(
                (
                    host,
                    str(g["guest_id"]),
                    str(g.get("name") or ""),
                    g.get("edition"),
                    str(g["last_answer"]),
                    1 if g.get("licensed") else 0,
                    g.get("licensed_until"),
                    g.get("first_seen"),
                    g.get("last_seen"),
                    int(g.get("requests") or 0),
                    now,
                )
            )
        self.db.execute("BEGIN")
        try:
            self.db.execute("DELETE FROM avma_guests WHERE host = ?", (host,))
            self.db.executemany(
                f"INSERT INTO avma_guests ({', '.join(self._AVMA_COLUMNS)}) VALUES"
                f" ({', '.join('?' for _ in self._AVMA_COLUMNS)})",
                rows,
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def avma_guests(self) -> list[dict[str, Any]]:
        """Every imported AVMA guest, by host then guest name."""
        rows = self.db.execute(
            f"SELECT {', '.join(self._AVMA_COLUMNS)} FROM avma_guests ORDER BY host, name, guest_id"
        ).fetchall()
        out = [dict(zip(self._AVMA_COLUMNS, r, strict=True)) for r in rows]
        for g in out:
            g["licensed"] = bool(g["licensed"])
        return out

    _KEY_COLUMNS = (
        "key_sha256",
        "partial_key",
        "type",
        "product",
        "mak_allowed",
        "mak_used",
        "mak_left",
        "kms_host_limit",
        "kms_hosts_used",
        "kms_hosts_left",
        "imported",
    )

    def put_key(self, status: dict[str, Any], *, now: int | None = None) -> None:
        now = int(time.time()) if now is None else now
        values = [status.get(c) for c in self._KEY_COLUMNS[:-1]] + [now]
        updates = ", ".join(f"{c} = excluded.{c}" for c in self._KEY_COLUMNS[1:])
        self.db.execute(
            f"INSERT INTO keys ({', '.join(self._KEY_COLUMNS)}) VALUES"
            f" ({', '.join('?' for _ in self._KEY_COLUMNS)})"
            f" ON CONFLICT (key_sha256) DO UPDATE SET {updates}",
            values,
        )

    def keys(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            f"SELECT {', '.join(self._KEY_COLUMNS)} FROM keys ORDER BY type, product"
        ).fetchall()
        return [dict(zip(self._KEY_COLUMNS, r, strict=True)) for r in rows]
