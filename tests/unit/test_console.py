"""The console's parts without servers: sessions and their expiry, the sign-in rate limit,
names to DNs, the machine page's query, the chart (escaped, labelled)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adba.console.app import user_dn
from adba.console.chart import status_chart
from adba.console.sessions import RateLimiter, SessionTable, same_token
from adba.directory.connection import ConnectionOptions
from adba.errors import InvalidDN, InvalidInput
from adba.inventory.db import Collection, InventoryDB

OPTS = ConnectionOptions(uri="ldaps://dc1.example.test", bind_dn="uid=a", password="secret")


def test_sessions_expire_when_idle_and_when_old() -> None:
    table = SessionTable(idle_timeout=100, max_age=1000)
    s = table.create("uid=a", OPTS, root="dc=x", source="10.0.0.1", now=0)
    assert len(s.id) >= 40 and s.id != s.csrf
    assert "secret" not in repr(s)
    assert table.get(s.id, now=99) is s  # each request restarts the idle clock
    assert table.get(s.id, now=198) is s
    assert table.get(s.id, now=299) is None  # idle 101 s
    assert table.get(s.id, now=300) is None  # and gone for good
    old = table.create("uid=a", OPTS, root="dc=x", source="10.0.0.1", now=0)
    for t in range(90, 1000, 90):
        assert table.get(old.id, now=t) is old
    assert table.get(old.id, now=1001) is None  # never longer than max_age
    assert table.get(None, now=0) is None and table.get("", now=0) is None


def test_sessions_are_distinct_and_dropped() -> None:
    table = SessionTable()
    a = table.create("uid=a", OPTS, root="dc=x", source="s", now=0)
    b = table.create("uid=b", OPTS, root="dc=x", source="s", now=0)
    assert a.id != b.id and a.csrf != b.csrf
    assert not same_token(a.csrf, b.csrf) and same_token(a.csrf, a.csrf)
    assert not same_token(None, a.csrf) and not same_token("", a.csrf)
    table.drop(a.id)
    assert table.get(a.id, now=1) is None and table.get(b.id, now=1) is b


def test_rate_limit_per_key_and_window() -> None:
    limiter = RateLimiter(limit=3, window=60)
    keys = ["addr:1", "user:a"]
    for t in (0, 10, 20):
        assert limiter.retry_after(keys, now=t) == 0
        limiter.fail(keys, now=t)
    assert limiter.retry_after(keys, now=21) == 40  # until the first failure is 60 s old
    assert limiter.retry_after(["addr:1", "user:b"], now=21) == 40  # the address is limited
    assert limiter.retry_after(["addr:2", "user:b"], now=21) == 0  # another pair is not
    assert limiter.retry_after(keys, now=60.5) == 0  # one failure left the window


def test_rate_limit_memory_is_bounded() -> None:
    limiter = RateLimiter(limit=2, window=60, max_keys=100)
    for i in range(1000):
        limiter.fail([f"addr:{i}"], now=float(i))
    assert len(limiter._failures) <= 100


def test_user_names_become_dns() -> None:
    template = "uid={},ou=People,dc=example,dc=test"
    assert user_dn("alice", template) == "uid=alice,ou=People,dc=example,dc=test"
    assert user_dn("uid=bob,ou=People,dc=example,dc=test", template).startswith("uid=bob")
    assert user_dn("alice@EXAMPLE.TEST", None) == "alice@EXAMPLE.TEST"
    # a name cannot add RDNs or change the template's meaning
    assert user_dn("a+cn", template) == r"uid=a\+cn,ou=People,dc=example,dc=test"
    with pytest.raises(InvalidInput, match="full DN"):
        user_dn("alice", None)
    with pytest.raises(InvalidInput):
        user_dn("", template)
    with pytest.raises(InvalidInput):
        user_dn("a\nb", template)
    with pytest.raises(InvalidDN):
        user_dn("uid=,,=", template)


def _db(tmp_path: Path, n: int = 300) -> InventoryDB:
    db = InventoryDB(tmp_path / "i.sqlite")
    names = [f"pc{i:03d}" for i in range(n)]
    db.add_machines(
        [(m, f"10.0.{i // 250}.{i % 250}", None) for i, m in enumerate(names)], source="manual"
    )
    db.add_machines([("odd_name%", None, None)], source="manual")
    scan = db.start_scan("collect")
    statuses = ("licensed", "grace", "unlicensed")
    db.record(
        scan,
        [
            Collection(
                m,
                1000,
                True,
                status=statuses[i % 3],
                channel="ADBA,KMS" if i % 2 else "MAK",
                expires_at=5000 + i,
            )
            for i, m in enumerate(names)
        ],
    )
    return db


def test_machine_page_filters_sorts_and_pages_in_the_database(tmp_path: Path) -> None:
    with _db(tmp_path) as db:
        rows, total = db.machine_page(limit=50)
        assert total == 301 and len(rows) == 50 and rows[0]["name"] == "odd_name%"
        rows, total = db.machine_page(status="grace", channel="KMS", limit=500)
        assert total == len(rows) == len([i for i in range(300) if i % 3 == 1 and i % 2])
        assert {r["status"] for r in rows} == {"grace"}
        assert all("KMS" in r["channel"].split(",") for r in rows)
        rows, total = db.machine_page(channel="ADBA", sort="expires_at", descending=True, limit=3)
        assert [r["name"] for r in rows] == ["pc299", "pc297", "pc295"]
        assert db.machine_page(status="unknown")[1] == 1
        # LIKE's wildcards in a search are literal
        assert db.machine_page(search="%")[1] == 1
        assert db.machine_page(search="_")[1] == 1
        assert db.machine_page(search="PC01")[1] == 10
        assert db.machine_page(search="10.0.1.")[1] == 50  # the address too
        last, _ = db.machine_page(limit=50, offset=300)
        assert [r["name"] for r in last] == ["pc299"]
        with pytest.raises(InvalidInput):
            db.machine_page(sort="name; DROP TABLE machines")
        with pytest.raises(InvalidInput):
            db.machine_page(limit=0)
        plan = " ".join(
            str(r)
            for r in db.db.execute(
                "EXPLAIN QUERY PLAN SELECT name FROM machines ORDER BY expires_at, name LIMIT 50"
            )
        )
        assert "machines_by_expiry_name" in plan  # sorted by an index, not in memory


def test_chart_labels_every_status_and_escapes() -> None:
    runs = [
        {"scan": "b", "at": int(time.time()), "counts": {"licensed": 3, "grace": 1}},
        {"scan": "a", "at": int(time.time()) - 86400, "counts": {"<script>": 2}},
    ]
    svg = str(status_chart(runs))
    assert "<script>" not in svg
    assert "licensed 3" in svg and "grace 1" in svg  # each bar's title says it in words
    for status in ("licensed", "grace", "unlicensed", "unreachable", "notification", "unknown"):
        assert f"</svg> {status}</li>" in svg  # the legend: text beside each swatch
    assert "No collection yet" in str(status_chart([]))
