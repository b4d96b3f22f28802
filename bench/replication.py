"""Publish-to-visible latency across a replicating OpenLDAP group.

Three providers and one consumer (TLS, the replication identity, as ``adba directory
replicate`` sets them up). N activation objects are added on provider 1, one at a time; after
each add returns, every other server is polled (a base search per server, persistent
connections) until the object is there. Baseline in the same run: the same poll on provider 1
itself, which sees the object at once (it measures the poll's own cost).

usage: python bench/replication.py [N]   (default 100)
"""

from __future__ import annotations

import statistics
import sys
import time

from _common import ROOT  # noqa: F401 - puts the checkout on sys.path

from adba.directory.connection import connect
from tests.conftest import NOW
from tests.servers import TestSlapdCluster


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(n: int) -> None:
    import tempfile
    from pathlib import Path

    import ldap3

    from adba.authority import LocalAuthority

    auth_dir = Path(tempfile.mkdtemp(prefix="adba-bench-auth-", dir="/tmp")) / "auth"
    LocalAuthority.init(auth_dir, now=NOW - 86400)
    cluster = TestSlapdCluster(providers=3, consumers=1)
    try:
        t = time.perf_counter()
        cluster.start()
        print(
            f"cluster of {len(cluster.servers)} up and replicating in {time.perf_counter() - t:.1f} s"
        )
        p1 = cluster.providers[0]
        template = p1.publish_csvlk(auth_dir, "Nimbus Server 2026 CSVLK", "bench-template", NOW)
        writer = connect(p1.options(p1.root))
        writer.search(template, "(objectClass=*)", ldap3.BASE, attributes=["*"])
        attrs = {
            k: v
            for k, v in writer.response[0]["raw_attributes"].items()
            if k not in ("cn", "displayName")
        }
        readers = {node.uri: connect(node.options(node.root)) for node in cluster.servers}
        lat: dict[str, list[float]] = {uri: [] for uri in readers}
        dns = []
        for i in range(n):
            dn = f"cn=bench-{i},{p1.container}"
            t0 = time.perf_counter()
            writer.add(dn, attributes={**attrs, "cn": f"bench-{i}"})
            assert writer.result["result"] == 0, writer.result
            t_add = time.perf_counter()
            pending = dict(readers)
            while pending:
                for uri, conn in list(pending.items()):
                    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["1.1"])
                    if conn.result["result"] == 0:
                        lat[uri].append(time.perf_counter() - t_add)
                        del pending[uri]
                if time.perf_counter() - t0 > 10:
                    raise SystemExit(f"{dn} not visible on {list(pending)} after 10 s")
            dns.append(dn)
        print(f"\n{n} objects published on {p1.uri}; latency from the add's response to visible:")
        print(f"{'server':44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        base = statistics.median(lat[p1.uri])
        for node in cluster.servers:
            values = lat[node.uri]
            role = (
                "provider 1 (baseline)"
                if node is p1
                else ("consumer" if node in cluster.consumers else "provider")
            )
            print(
                f"{node.uri + ' ' + role:44} {1000 * statistics.median(values):8.2f} "
                f"{1000 * pct(values, 99):8.2f} {1000 * max(values):8.2f}"
            )
        peers = [v for uri, vs in lat.items() if uri != p1.uri for v in vs]
        print(
            f"\npeers: p50 {1000 * statistics.median(peers):.2f} ms, p99 {1000 * pct(peers, 99):.2f} ms;"
            f" p50 ratio to the baseline poll: {statistics.median(peers) / base:.1f}x"
        )
        for dn in [*dns, template]:
            writer.delete(dn)
        writer.unbind()
        for conn in readers.values():
            conn.unbind()
    finally:
        cluster.destroy()
        import shutil

        shutil.rmtree(auth_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
