"""The KMS host's activation-count cache, as the seed describes it. No I/O: the host feeds it
requests and a clock; :mod:`adba.kms.store` persists what changed.

One cache per host, for every activation group its key covers:

- the count is the number of distinct CMIDs in the cache (the requester included);
- a client kind needs 25, a server kind 5 (thresholds configurable);
- the cache holds twice the highest threshold seen: 10 while only servers asked, 50 once a
  client asks; it never shrinks; when full, the least recently seen CMID leaves;
- a CMID not seen for 30 days leaves; a renewal replaces the client's record (its 30 days
  start again).

The cache is the truth; the store saves a snapshot of it (:meth:`KmsCache.snapshot`) whenever
:attr:`KmsCache.version` moved, so the saved table holds exactly what the cache holds (never
more than its capacity) and a failed save loses nothing: the next snapshot carries it.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass

from .protocol import KIND_CLIENT, Request

__all__ = ["DAY", "ClientRecord", "KmsCache", "Thresholds"]

DAY = 86400


@dataclass(frozen=True)
class Thresholds:
    client: int = 25
    server: int = 5
    expiry: int = 30 * DAY

    def for_kind(self, kind: int) -> int:
        return self.client if kind == KIND_CLIENT else self.server


@dataclass(slots=True)
class ClientRecord:
    kms_id: uuid.UUID
    cmid: uuid.UUID
    sku: uuid.UUID
    kind: int
    machine: str
    first_seen: int
    last_seen: int
    #: the count it was given reached the threshold for its kind
    activated: bool = False

    def row(self) -> tuple[str, str, str, int, str, int, int, int]:
        """The record as the store saves it (an immutable copy, safe to hand to a thread)."""
        return (
            str(self.cmid),
            str(self.kms_id),
            str(self.sku),
            self.kind,
            self.machine,
            self.first_seen,
            self.last_seen,
            int(self.activated),
        )


class KmsCache:
    """One host's cache: CMID -> record, least recently seen first, shared by every
    activation group the host's key covers (the count is cumulative, as in the seed:
    three clients then a server, and the server's count is 4)."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.capacity = 0
        self.entries: OrderedDict[uuid.UUID, ClientRecord] = OrderedDict()
        #: moves on every change (a request, an expiry, a new capacity): the store saves a
        #: snapshot when it differs from the version it saved last
        self.version = 0

    def load(self, records: list[ClientRecord], capacity: int, now: int) -> int:
        """Restore saved records (any order): only what the cache would hold now -- the
        most recently seen ``capacity`` machines of the last 30 days. Returns how many of
        ``records`` were left out (stale rows the next save deletes)."""
        self.capacity = max(self.capacity, capacity)
        fresh = sorted(
            (r for r in records if r.last_seen > now - self.thresholds.expiry),
            key=lambda r: r.last_seen,
        )
        kept = fresh[max(0, len(fresh) - self.capacity) :] if self.capacity else []
        for rec in kept:
            self.entries.pop(rec.cmid, None)
            self.entries[rec.cmid] = rec
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        left_out = len(records) - len(kept)
        if left_out:
            self.version += 1
        return left_out

    def expire(self, now: int) -> int:
        """Drop the CMIDs not seen for 30 days; returns how many left."""
        n = 0
        entries, horizon = self.entries, now - self.thresholds.expiry
        while entries:
            oldest = next(iter(entries.values()))
            if oldest.last_seen > horizon:
                break
            entries.popitem(last=False)
            n += 1
        if n:
            self.version += 1
        return n

    def observe(self, request: Request, now: int) -> tuple[int, bool]:
        """Record one request; returns (count, activated) to answer with."""
        return self.see(
            request.cmid, request.kms_id, request.sku, request.kind, request.machine, now
        )

    def see(
        self,
        cmid: uuid.UUID,
        kms_id: uuid.UUID,
        sku: uuid.UUID,
        kind: int,
        machine: str,
        now: int,
    ) -> tuple[int, bool]:
        """:meth:`observe` from the request's fields (the host's path: no request object)."""
        threshold = self.thresholds.client if kind == KIND_CLIENT else self.thresholds.server
        if 2 * threshold > self.capacity:  # 10, then 50 once a client asks; never shrinks
            self.capacity = 2 * threshold
        entries = self.entries
        if entries:
            oldest = next(iter(entries.values()))
            if oldest.last_seen <= now - self.thresholds.expiry:
                self.expire(now)
        rec = entries.pop(cmid, None)
        if rec is None:
            rec = ClientRecord(kms_id, cmid, sku, kind, machine, now, now)
        else:  # a renewal replaces the client's record: its 30 days start again
            rec.kms_id, rec.sku, rec.kind = kms_id, sku, kind
            rec.machine, rec.last_seen = machine, now
        entries[cmid] = rec
        while len(entries) > self.capacity:
            entries.popitem(last=False)
        count = len(entries)
        rec.activated = activated = count >= threshold
        self.version += 1
        return count, activated

    def count(self, now: int) -> int:
        self.expire(now)
        return len(self.entries)

    def snapshot(self) -> tuple[int, int, list[tuple[str, str, str, int, str, int, int, int]]]:
        """(version, capacity, rows) -- what the store saves; least recently seen first."""
        return self.version, self.capacity, [r.row() for r in self.entries.values()]
