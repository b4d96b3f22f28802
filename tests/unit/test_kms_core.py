"""KMS protocol parsing and the counting cache (pure: no sockets, injected clock)."""

from __future__ import annotations

import os
import uuid

import pytest

from adba.errors import ProtocolError
from adba.kms.cache import DAY, KmsCache
from adba.kms.protocol import (
    KIND_CLIENT,
    KIND_SERVER,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    Request,
    parse_request,
)

GROUP = uuid.uuid4()
NOW = 1_800_000_000


def req(kind: int = KIND_CLIENT, cmid: uuid.UUID | None = None, name: str = "pc") -> Request:
    return Request(kind, cmid or uuid.uuid4(), uuid.uuid4(), GROUP, NOW, os.urandom(16), name)


def test_sizes_fit_the_seed() -> None:
    assert REQUEST_SIZE <= 250 and RESPONSE_SIZE <= 250


def test_request_round_trip() -> None:
    r = req(KIND_SERVER, name="büro-7")
    assert parse_request(r.encode()) == r


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b + b"\0",  # oversized
        lambda b: b"XDBK" + b[4:],  # magic
        lambda b: b[:4] + b"\x02" + b[5:],  # version
        lambda b: b[:5] + b"\x07" + b[6:],  # kind
        lambda b: b[:6] + b"\x00\x01" + b[8:],  # flags
        lambda b: b[:80] + b"\x40" + b[81:],  # name length > 63
        lambda b: b[:80] + b"\x01" + b"\x07" + b[82:],  # control character in the name
        lambda b: b[:-1] + b"x",  # garbage in the padding
        lambda b: b[:8] + bytes(16) + b[24:],  # empty CMID
        lambda _b: os.urandom(REQUEST_SIZE),  # random bytes
    ],
)
def test_malformed_requests_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError):
        parse_request(mangle(req(name="x").encode()))


def test_count_is_distinct_cmids_and_cumulative_across_kinds() -> None:
    cache = KmsCache()
    for i in range(3):
        assert cache.observe(req(KIND_CLIENT), NOW)[0] == i + 1
    count, activated = cache.observe(req(KIND_SERVER), NOW)
    assert (count, activated) == (4, False)  # the seed's example: the server gets 4
    count, activated = cache.observe(req(KIND_SERVER), NOW)
    assert (count, activated) == (5, True)  # 5 is enough for a server


def test_same_cmid_twice_counts_once_and_renewal_replaces_the_record() -> None:
    cache = KmsCache()
    me = uuid.uuid4()
    assert cache.observe(req(cmid=me), NOW)[0] == 1
    assert cache.observe(req(cmid=me), NOW + DAY)[0] == 1
    assert cache.entries[me].last_seen == NOW + DAY and cache.entries[me].first_seen == NOW


def test_capacity_is_10_for_servers_then_50_and_never_shrinks() -> None:
    cache = KmsCache()
    for _ in range(12):
        cache.observe(req(KIND_SERVER), NOW)
    assert cache.capacity == 10 and cache.count(NOW) == 10  # the oldest two left
    cache.observe(req(KIND_CLIENT), NOW)
    assert cache.capacity == 50
    for _ in range(60):
        cache.observe(req(KIND_SERVER), NOW)
    assert cache.capacity == 50 and cache.count(NOW) == 50


def test_an_entry_older_than_30_days_drops_out() -> None:
    cache = KmsCache()
    old = uuid.uuid4()
    cache.observe(req(cmid=old), NOW)
    for rec in cache.take_changes()[0]:  # as the store does when it saves
        rec.persisted = True
    cache.observe(req(), NOW + 29 * DAY)
    assert cache.count(NOW + 30 * DAY - 1) == 2
    assert cache.count(NOW + 30 * DAY) == 1
    assert old not in cache.entries
    _saved, removed, _cap = cache.take_changes()
    assert [r.cmid for r in removed] == [old]


def test_25_clients_activate_the_25th() -> None:
    cache = KmsCache()
    results = [cache.observe(req(KIND_CLIENT), NOW) for _ in range(25)]
    assert [a for _c, a in results] == [False] * 24 + [True]


def test_a_record_evicted_before_it_was_saved_needs_no_delete() -> None:
    cache = KmsCache()
    for _ in range(12):  # capacity 10: two leave before any save
        cache.observe(req(KIND_SERVER), NOW)
    saved, removed, capacity = cache.take_changes()
    assert len(saved) == 10 and removed == [] and capacity == 10
