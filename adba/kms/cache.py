"""The KMS host's activation-count cache, as the seed describes it. No I/O: the host feeds it
requests and a clock; :mod:`adba.kms.store` persists what changed.

One cache per host, for every activation group its key covers:

- the count is the number of distinct CMIDs in the cache (the requester included);
- a client kind needs 25, a server kind 5 (thresholds configurable);
- the cache holds twice the highest threshold seen: 10 while only servers asked, 50 once a
  client asks; it never shrinks; when full, the least recently seen CMID leaves;
- a CMID not seen for 30 days leaves; a renewal replaces the client's record (its 30 days
  start again).
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


@dataclass
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
    #: the store holds a row for it (a record added and evicted between two saves never does)
    persisted: bool = False


class KmsCache:
    """One host's cache: CMID -> record, least recently seen first, shared by every
    activation group the host's key covers (the count is cumulative, as in the seed:
    three clients then a server, and the server's count is 4)."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.capacity = 0
        self.entries: OrderedDict[uuid.UUID, ClientRecord] = OrderedDict()
        #: what changed since the store last saved
        self.dirty: dict[uuid.UUID, ClientRecord] = {}
        self.removed: dict[uuid.UUID, ClientRecord] = {}
        self.grown = False

    def load(self, record: ClientRecord) -> None:
        """Restore a persisted record (records must come least recently seen first)."""
        record.persisted = True
        self.entries[record.cmid] = record

    def _expire(self, now: int) -> list[ClientRecord]:
        gone = []
        while self.entries:
            oldest = next(iter(self.entries.values()))
            if oldest.last_seen > now - self.thresholds.expiry:
                break
            gone.append(self.entries.popitem(last=False)[1])
        return gone

    def _drop(self, gone: list[ClientRecord]) -> None:
        for rec in gone:
            self.dirty.pop(rec.cmid, None)
            if rec.persisted:
                self.removed[rec.cmid] = rec

    def observe(self, request: Request, now: int) -> tuple[int, bool]:
        """Record one request; returns (count, activated) to answer with."""
        threshold = self.thresholds.for_kind(request.kind)
        if 2 * threshold > self.capacity:  # 10, then 50 once a client asks; never shrinks
            self.capacity = 2 * threshold
            self.grown = True
        gone = self._expire(now)
        rec = self.entries.pop(request.cmid, None)
        if rec is None:
            rec = ClientRecord(
                request.kms_id, request.cmid, request.sku, request.kind, request.machine, now, now
            )
        else:  # a renewal replaces the client's record: its 30 days start again
            rec.kms_id, rec.sku, rec.kind = request.kms_id, request.sku, request.kind
            rec.machine, rec.last_seen = request.machine, now
        self.entries[request.cmid] = rec
        while len(self.entries) > self.capacity:
            gone.append(self.entries.popitem(last=False)[1])
        self._drop(gone)
        count = len(self.entries)
        rec.activated = count >= threshold
        self.removed.pop(rec.cmid, None)
        self.dirty[rec.cmid] = rec
        return count, rec.activated

    def count(self, now: int) -> int:
        self._drop(self._expire(now))
        return len(self.entries)

    def take_changes(self) -> tuple[list[ClientRecord], list[ClientRecord], int | None]:
        """(records to save, records to delete, new capacity or None) since the last call."""
        saved, removed = list(self.dirty.values()), list(self.removed.values())
        grown = self.capacity if self.grown else None
        self.dirty, self.removed, self.grown = {}, {}, False
        return saved, removed, grown
