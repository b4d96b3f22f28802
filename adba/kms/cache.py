"""The KMS host's activation-count cache, as the seed describes it. No I/O: the host feeds it
requests and a clock; :mod:`adba.kms.store` persists what changed.

Per activation group (KMS ID):

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

__all__ = ["DAY", "ClientRecord", "GroupCache", "KmsCache", "Thresholds"]

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


class GroupCache:
    """One activation group: CMID -> record, least recently seen first."""

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[uuid.UUID, ClientRecord] = OrderedDict()

    def expire(self, now: int, expiry: int, gone: list[ClientRecord]) -> None:
        while self.entries:
            oldest = next(iter(self.entries.values()))
            if oldest.last_seen > now - expiry:
                break
            gone.append(self.entries.popitem(last=False)[1])


class KmsCache:
    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.groups: dict[uuid.UUID, GroupCache] = {}
        #: what changed since the store last saved: records to write, records to delete,
        #: groups whose capacity grew
        self.dirty: dict[tuple[uuid.UUID, uuid.UUID], ClientRecord] = {}
        self.removed: dict[tuple[uuid.UUID, uuid.UUID], ClientRecord] = {}
        self.grown: set[uuid.UUID] = set()

    def group(self, kms_id: uuid.UUID) -> GroupCache:
        group = self.groups.get(kms_id)
        if group is None:
            group = self.groups[kms_id] = GroupCache()
        return group

    def load(self, record: ClientRecord, capacity: int) -> None:
        """Restore a persisted record (records must come least recently seen first)."""
        group = self.group(record.kms_id)
        group.capacity = max(group.capacity, capacity)
        group.entries[record.cmid] = record

    def _drop(self, gone: list[ClientRecord]) -> None:
        for rec in gone:
            key = (rec.kms_id, rec.cmid)
            self.dirty.pop(key, None)
            self.removed[key] = rec

    def observe(self, request: Request, now: int) -> tuple[int, bool]:
        """Record one request; returns (count, activated) to answer with."""
        threshold = self.thresholds.for_kind(request.kind)
        group = self.group(request.kms_id)
        if 2 * threshold > group.capacity:
            group.capacity = 2 * threshold
            self.grown.add(request.kms_id)
        gone: list[ClientRecord] = []
        group.expire(now, self.thresholds.expiry, gone)
        rec = group.entries.pop(request.cmid, None)
        if rec is None:
            rec = ClientRecord(
                request.kms_id, request.cmid, request.sku, request.kind, request.machine, now, now
            )
        else:  # a renewal replaces the client's record
            rec.sku, rec.kind, rec.machine, rec.last_seen = (
                request.sku,
                request.kind,
                request.machine,
                now,
            )
        group.entries[request.cmid] = rec
        while len(group.entries) > group.capacity:
            gone.append(group.entries.popitem(last=False)[1])
        self._drop(gone)
        count = len(group.entries)
        rec.activated = count >= threshold
        key = (rec.kms_id, rec.cmid)
        self.removed.pop(key, None)
        self.dirty[key] = rec
        return count, rec.activated

    def count(self, kms_id: uuid.UUID, now: int) -> int:
        group = self.groups.get(kms_id)
        if group is None:
            return 0
        gone: list[ClientRecord] = []
        group.expire(now, self.thresholds.expiry, gone)
        self._drop(gone)
        return len(group.entries)

    def take_changes(
        self,
    ) -> tuple[list[ClientRecord], list[ClientRecord], dict[uuid.UUID, int]]:
        """(records to save, records to delete, grown capacities) since the last call."""
        saved, removed = list(self.dirty.values()), list(self.removed.values())
        grown = {k: self.groups[k].capacity for k in self.grown}
        self.dirty, self.removed, self.grown = {}, {}, set()
        return saved, removed, grown
