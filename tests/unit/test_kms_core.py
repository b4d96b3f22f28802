"""KMS protocol parsing and the counting cache (pure: no sockets, injected clock)."""

from __future__ import annotations

import os
import uuid

import pytest

from adba.errors import ProtocolError
from adba.kms.admission import RejectLog, Slots, source_of
from adba.kms.cache import DAY, ClientRecord, KmsCache
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
    cache.observe(req(), NOW + 29 * DAY)
    version = cache.version
    assert cache.count(NOW + 30 * DAY - 1) == 2 and cache.version == version
    assert cache.count(NOW + 30 * DAY) == 1
    assert old not in cache.entries
    assert cache.version > version  # the store saves the snapshot without it
    assert [r[0] for r in cache.snapshot()[2]] == [str(c) for c in cache.entries]


def test_25_clients_activate_the_25th() -> None:
    cache = KmsCache()
    results = [cache.observe(req(KIND_CLIENT), NOW) for _ in range(25)]
    assert [a for _c, a in results] == [False] * 24 + [True]


def test_the_snapshot_is_the_cache_and_load_keeps_only_what_the_cache_would_hold() -> None:
    cache = KmsCache()
    for i in range(12):  # capacity 10: two leave
        cache.observe(req(KIND_SERVER), NOW + i)
    _version, capacity, rows = cache.snapshot()
    assert capacity == 10 and len(rows) == 10
    assert [r[0] for r in rows] == [str(c) for c in cache.entries]  # least recently seen first
    records = list(cache.entries.values())
    stale = [  # rows an older version left behind: expired ones and more than the capacity
        ClientRecord(GROUP, uuid.uuid4(), uuid.uuid4(), 1, "old", NOW - 40 * DAY, NOW - 40 * DAY),
        *(
            ClientRecord(GROUP, uuid.uuid4(), uuid.uuid4(), 1, "x", NOW - 5, NOW - 5)
            for _ in range(7)
        ),
    ]
    again = KmsCache()
    left_out = again.load(stale + records, 10, NOW + 20)
    assert left_out == 8 and again.version > 0  # so the next save deletes them
    assert list(again.entries) == list(cache.entries)
    assert again.count(NOW + 20) == 10 and again.capacity == 10
    fewer = KmsCache()
    assert fewer.load(records[:4], 10, NOW + 20) == 0 and len(fewer.entries) == 4


def test_slots_per_source_and_the_fullest_source_gives_way() -> None:
    slots: Slots[int] = Slots(max_connections=6, max_per_source=4)
    assert [slots.admit(i, "a")[0] for i in range(5)] == [None] * 4 + ["source-limit"]
    assert slots.admit(10, "b") == (None, None) and slots.admit(11, "b") == (None, None)
    assert slots.open == 6
    assert slots.admit(20, "c") == (None, 3)  # full: a (4) gives its newest up for c (0)
    assert slots.admit(21, "c") == (None, 2)  # a 3, c 1: still fairer to take from a
    assert slots.admit(22, "c")[0] == "full"  # a 2, b 2, c 2: nobody gives way
    assert slots.open == 6 and sum(map(len, slots.by_source.values())) == 6
    assert slots.release(3, "a") is False  # already handed on
    assert slots.release(0, "a") and slots.open == 5
    assert source_of(("2001:db8:1:2::5", 1, 0, 0)) == source_of(("2001:db8:1:2:ff::9", 2, 0, 0))
    assert source_of(("2001:db8:1:2::5", 1, 0, 0)) != source_of(("2001:db8:1:3::5", 1, 0, 0))
    assert source_of(("192.0.2.7", 1688)) == "192.0.2.7"


def test_reject_log_is_one_line_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [100.0]
    rejects = RejectLog(10.0, clock=lambda: clock[0])
    with caplog.at_level("WARNING", logger="adba.kms"):
        for i in range(1000):
            rejects.note("malformed" if i % 2 else "deadline", ("192.0.2.1", i))
        clock[0] += 5
        rejects.tick()
        assert len(caplog.records) == 1
        clock[0] += 5
        rejects.tick()
        rejects.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "suppressed=999" in lines[1] and "deadline=499 malformed=500" in lines[1]
