"""Activations per second of the authority service, SQLite vs PostgreSQL records, one
replica vs three (``adba authority serve`` processes on one directory of keys, round-robin),
in the same run; latency p50/p99. Baseline: SQLite, one replica.

The work is online MAK activation (``POST /v1/confirmations``) of distinct machines, spread
over ``--keys`` MAKs (each key's decisions are serialised: a row lock on PostgreSQL, the
whole database on SQLite), from ``--clients`` concurrent HTTP clients. Both engines are
durable (PostgreSQL with fsync on, SQLite in WAL mode with its default sync). On this shared
2-core machine three replicas compete with the database and the clients for the same cores:
read the ratios, not the absolute numbers.

    PYTHONPATH=$PWD python bench/authority.py [--requests 600] [--clients 16] [--keys 4]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import ROOT  # noqa: F401  (puts the worktree on sys.path)

from adba.authority import LocalAuthority
from adba.catalog import load_catalog
from adba.confirmation import KIND_MAK_MACHINE, Installation, machine_binding
from adba.keys import KeyType
from tests.servers import TestAuthority, TestPostgres

EDITION = "Nimbus Server Standard"


def run(
    engine: str, replicas: int, pg: TestPostgres | None, args: argparse.Namespace
) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="adba-bench-auth-"))
    path = base / "authority"
    database = pg.new_database() if pg is not None and engine == "postgresql" else None
    auth = LocalAuthority.init(path, now=int(time.time()) - 86400, database=database)
    cat = load_catalog()
    keys = [
        auth.mint(KeyType.MAK, EDITION, cat, now=int(time.time()), mak_count=1_000_000)
        for _ in range(args.keys)
    ]
    auth.close()
    sku = cat.edition(EDITION).sku
    bodies = [
        {
            "request_id": secrets.token_hex(12),
            "installation_id": Installation.of(
                KIND_MAK_MACHINE, keys[i % len(keys)], machine_binding(uuid.uuid4(), sku)
            ).text(),
        }
        for i in range(args.requests + args.warmup)
    ]
    servers = [TestAuthority(path, name=f"replica-{i}").start() for i in range(replicas)]
    latencies: list[float] = []
    errors: dict[int, int] = {}
    lock = threading.Lock()
    try:
        with httpx.Client(timeout=60) as client:

            def one(i: int) -> None:
                t = time.perf_counter()
                r = client.post(f"{servers[i % replicas].url}/v1/confirmations", json=bodies[i])
                took = time.perf_counter() - t
                with lock:
                    if r.status_code != 200:
                        errors[r.status_code] = errors.get(r.status_code, 0) + 1
                    elif i >= args.warmup:
                        latencies.append(took)

            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, range(args.warmup)))
                start = time.perf_counter()
                list(pool.map(one, range(args.warmup, len(bodies))))
                wall = time.perf_counter() - start
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    latencies.sort()
    return {
        "rate": len(latencies) / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": float(sum(errors.values())),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--keys", type=int, default=4)
    args = p.parse_args()
    pg = TestPostgres(durable=True)
    pg.start()
    try:
        cases = [("sqlite", 1), ("sqlite", 3), ("postgresql", 1), ("postgresql", 3)]
        results = {case: run(case[0], case[1], pg, args) for case in cases}
    finally:
        pg.destroy()
    base = results[("sqlite", 1)]["rate"]
    print(
        f"{args.requests} MAK activations, {args.clients} clients, {args.keys} keys "
        "(baseline: sqlite, 1 replica)"
    )
    print(
        f"{'records':<11} {'replicas':>8} {'act/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
    )
    for (engine, n), r in results.items():
        print(
            f"{engine:<11} {n:>8} {r['rate']:>8.1f} {r['rate'] / base:>6.2f} "
            f"{r['p50']:>7.1f} {r['p99']:>7.1f} {int(r['errors']):>6}"
        )


if __name__ == "__main__":
    main()
