"""Publish-to-visible latency across a replicating OpenLDAP group.

Three providers and one consumer (TLS, the replication identity, as ``adba directory
replicate`` sets them up). N activation objects are added on provider 1, one at a time; after
each add returns, every other server is polled (a base search per server, persistent
connections) until the object is there. Baseline in the same run: the same poll on provider 1
itself, which sees the object at once (it measures the poll's own cost).

Then the agent's boot (one warm pass, in process) against the group: all DCs up vs the first DC
unresponsive (accepts, never answers), by ``dc_uris`` (tried in order: every boot pays the
timeout) and by SRV (the DC that answered is cached and tried first: only the cold boot pays).

usage: python bench/replication.py [N] [BOOTS]   (defaults 100, 20)
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
        boots(cluster, auth_dir, int(sys.argv[2]) if len(sys.argv) > 2 else 20)
        for dn in [*dns, template]:
            writer.delete(dn)
        writer.unbind()
        for conn in readers.values():
            conn.unbind()
    finally:
        cluster.destroy()
        import shutil

        shutil.rmtree(auth_dir.parent, ignore_errors=True)


def boots(cluster: TestSlapdCluster, auth_dir: object, runs: int) -> None:
    """Median wall time of a warm agent pass: all DCs up vs the first one silent."""
    import logging
    import tempfile
    from pathlib import Path

    from tests.integration.test_agent import Agent
    from tests.servers import SilentServer, TestNamed

    logging.getLogger("adba").setLevel(logging.ERROR)  # one "not answering" warning per pass
    timeout = 1.0
    p = cluster.providers
    tmp = Path(tempfile.mkdtemp(prefix="adba-bench-boot-", dir="/tmp"))
    named = TestNamed().start()
    silent = SilentServer()
    try:

        def srv(first_port: int) -> None:
            named.update(
                "_ldap._tcp.dc._msdcs",
                "SRV",
                [
                    f"{10 * i} 100 {port} dc{i}.{named.zone}."
                    for i, port in enumerate([first_port, p[1].port, p[2].port])
                ],
            )
            for i in range(3):
                named.update(f"dc{i}", "A", ["127.0.0.1"])

        def time_boots(name: str, **overrides: object) -> tuple[float, float]:
            where = tmp / name
            where.mkdir()
            agent = Agent(where, p[0], Path(str(auth_dir)), **overrides)
            text = agent.path.read_text().replace("connect_timeout = 1.0", f"timeout = {timeout}")
            agent.path.write_text(text)
            t = time.perf_counter()
            assert agent.run().outcomes[0].activated  # cold: learns the forest and the DC
            cold = time.perf_counter() - t
            walls = []
            for i in range(runs):
                t = time.perf_counter()
                assert agent.run(now=NOW + 60 * (i + 1)).outcomes[0].activated
                walls.append(time.perf_counter() - t)
            return cold, statistics.median(walls)

        dead = f"ldap://127.0.0.1:{silent.port}"
        rows = {
            "dc_uris, all up": time_boots("u-up", dc_uris=[p[0].uri, p[1].uri, p[2].uri]),
            "dc_uris, first silent": time_boots("u-silent", dc_uris=[dead, p[1].uri, p[2].uri]),
        }
        srv(p[0].port)
        by_srv = {"domain": named.zone, "dns_servers": [named.nameserver], "dc_uris": None}
        rows["SRV, all up"] = time_boots("s-up", **by_srv)
        srv(silent.port)
        rows["SRV, first silent"] = time_boots("s-silent", **by_srv)
        print(f"\nagent boot (timeout {timeout:g} s, {runs} warm passes each; median ms):")
        print(f"{'DCs':24} {'cold':>9} {'warm':>9} {'warm ratio':>11}")
        for label, (cold, warm) in rows.items():
            base = rows[label.split(",")[0] + ", all up"][1]
            print(f"{label:24} {1000 * cold:9.1f} {1000 * warm:9.1f} {warm / base:10.1f}x")
    finally:
        silent.close()
        named.destroy()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
