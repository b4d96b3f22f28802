"""The console's machine page with 100,000 machines in the inventory: p50/p99 of a real
``adba console serve`` answering ``GET /machines`` over HTTPS (signed in, one keep-alive
connection), against the same query made straight on the database in this process
(:meth:`InventoryDB.machine_page` with the same filters, sort and page).

Setup: a lab slapd for the sign-in, an SQLite inventory of MACHINES machines (statuses and
channels spread, one collection each), the console on 127.0.0.1. Cases: the first page as it
opens; a filtered and sorted page (grace, KMS, by expiry newest first); a deep page (offset
near the end: LIMIT/OFFSET walks the index up to it); a name search (a substring: a scan).

How to read it: "page" is the time to the whole HTML page (TLS, the session lookup, the
query in a worker thread, the template); "db" the query alone; "x" page p50 over db p50, the
cost of serving it. What matters for "stays fast": the page p99 in milliseconds.

    python bench/console.py [machines] [requests-per-case]
"""

from __future__ import annotations

import re
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from adba.inventory.db import Collection, InventoryDB  # noqa: E402
from bench._common import prepared_slapd  # noqa: E402
from tests.servers import TestConsole  # noqa: E402

STATUSES = ("licensed", "grace", "notification", "unlicensed", "unreachable")
CHANNELS = ("ADBA", "KMS", "MAK", "ADBA,KMS")


def fill(path: Path, count: int) -> None:
    now = int(time.time())
    with InventoryDB(path) as db:
        names = [f"pc{i:06d}.corp.example.test" for i in range(count)]
        db.add_machines(
            [(n, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", None) for i, n in enumerate(names)],
            source="directory",
        )
        scan = db.start_scan("collect", now=now)
        db.record(
            scan,
            [
                Collection(
                    n,
                    now,
                    True,
                    status=STATUSES[i % 5],
                    channel=CHANNELS[i % 4],
                    expires_at=now + 86400 * (i % 180),
                )
                for i, n in enumerate(names)
            ],
        )
        db.finish_scan(scan, total=count, failed=0, now=now)


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    tmp = Path(tempfile.mkdtemp(prefix="adba-bench-console-"))
    db_path = tmp / "inventory.sqlite"
    started = time.monotonic()
    fill(db_path, count)
    print(f"{count} machines written in {time.monotonic() - started:.1f} s")
    lab = prepared_slapd()
    console = TestConsole(lab, db_path, tmp)
    last_page = (count - 1) // 50 + 1
    cases = {
        "first page": ({}, {}),
        "grace+KMS by expiry desc": (
            {"status": "grace", "channel": "KMS", "sort": "expires_at", "order": "desc"},
            {"status": "grace", "channel": "KMS", "sort": "expires_at", "descending": True},
        ),
        f"deep page {last_page - 10}": (
            {"page": str(last_page - 10)},
            {"offset": (last_page - 11) * 50},
        ),
        "search 'pc0123'": ({"q": "pc0123"}, {"search": "pc0123"}),
    }
    try:
        console.start()
        verify = ssl.create_default_context(cafile=lab.ca_file)
        with httpx.Client(base_url=console.url, verify=verify, timeout=30) as client:
            form = client.get("/signin").text
            token = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            answer = client.post(
                "/signin",
                data={"csrf": token, "user": "adbaadmin", "password": lab.admin.password},
            )
            assert answer.status_code == 303, answer.text
            with InventoryDB(db_path) as db:
                print(f"{'case':<26} {'page p50':>9} {'p99':>8} {'db p50':>8} {'p99':>8} {'x':>6}")
                for name, (params, query) in cases.items():
                    page: list[float] = []
                    direct: list[float] = []
                    for _ in range(5):  # warm both
                        client.get("/machines", params=params)
                        db.machine_page(**query)  # type: ignore[arg-type]
                    for _ in range(runs):  # interleaved: noise hits both alike
                        t = time.perf_counter()
                        r = client.get("/machines", params=params)
                        page.append(time.perf_counter() - t)
                        assert r.status_code == 200, r.text[:500]
                        t = time.perf_counter()
                        db.machine_page(**query)  # type: ignore[arg-type]
                        direct.append(time.perf_counter() - t)
                    print(
                        f"{name:<26} {pct(page, 50):>7.2f}ms {pct(page, 99):>6.2f}ms"
                        f" {pct(direct, 50):>6.2f}ms {pct(direct, 99):>6.2f}ms"
                        f" {statistics.median(page) / statistics.median(direct):>6.1f}"
                    )
    finally:
        console.stop()
        lab.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
