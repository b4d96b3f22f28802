"""Activations per second and server CPU per activation of the real KMS host, v1 and v2,
against the bare event-loop floor -- and against vlmcsd when it is on this machine.

Servers, each a process of its own on 127.0.0.1, measured one after the other in one run, at
N = 1, 4 and 16 concurrent clients (1x1, 2x2, 4x4 processes x threads):

- floor: a bare asyncio Protocol on asyncio's own event loop that reads to EOF and writes a
  fixed 244-byte reply (the issue's anchor: "the bare asyncio floor"); floor-uv: the same
  on uvloop, when it is installed -- what an asyncio Protocol costs at best;
- floor-crypto: the host's own listener (adba/kms/listener.py) answering each request with
  one X25519 exchange and one Ed25519 signature and nothing else -- the two operations
  protocol v2 needs per activation; with vlmcsd, its CPU per activation against vlmcsd's is
  printed as the bound the host v2 ratio cannot go below;
- host v1: ``adba kms serve -q`` in a fresh state dir (its CSVLK minted by a local authority
  and installed with ``adba kms install-key``), 144-byte requests in clear: parse, count,
  sign (Ed25519), save once a second;
- host v2: the same process, 200-byte sealed requests: the same plus the X25519 exchange,
  HKDF and ChaCha20-Poly1305 opening, the clock rule and the replay cache;
- host v2 wK: ``adba kms serve --workers K`` (``--workers``, default 2; 0: not measured):
  K processes on the port with SO_REUSEPORT and the parent owning the count, v2 requests;
- vlmcsd, when ``vlmcsd`` and ``vlmcs`` are on PATH or given (``--vlmcsd``, ``--vlmcs``, or
  the ``VLMCSD`` / ``VLMCS`` environment variables): vlmcsd serving (no logging, as the host
  runs ``-q``), N ``vlmcs`` processes asking it over a new TCP connection per request
  (``--vlmcs-args``, a template); nothing is built or fetched (bench/README.md: how to build
  it with threads by hand).

Load for the ADBA servers: bench/kms_load.c (built here with cc; ``--load python`` or no
compiler: blocking-socket Python threads), so that ADBA's clients cost about what vlmcs costs
vlmcsd -- a NEW TCP connection per request (connect, send, shutdown(SHUT_WR), read to EOF),
each a client-kind request with its own CMID and nonce; v2 requests are sealed before the
measured window (a pool per process). Replies are checked (244 bytes, magic, status OK, our
nonce); signatures are not verified.

How to read it: "req/s" is answered requests per second; "CPU/1000" is the server process's
utime+stime (its threads, its live workers, and the children of a forking vlmcsd) per
1,000 answers, the number that does not depend on how much of the 2 cores the clients take. Ratios: host/floor throughput (goal >=
0.8; host/floor-uv printed beside it) and, with vlmcsd, host/vlmcsd throughput (goal >= 1.0) and CPU (goal <= 1.0). The
clients share the cores, so compare servers within a run, not runs on different days.

    python bench/kms_throughput.py [--seconds 5] [--n 1,4,16] [--workers 2]
        [--vlmcsd PATH --vlmcs PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from _kms import (
    ENV,
    PY,
    Work,
    build_c_load,
    c_load_argvs,
    exit_on_signals,
    free_port,
    install_host,
    loopback_settings,
    percentile,
    run_load,
    start_baseline,
    start_crypto_floor,
    start_host,
    wait_listening,
)

SHAPES = {1: (1, 1), 4: (2, 2), 16: (4, 4)}
VLMCS_ARGS = "-n {count} -T {host}:{port}"


def _row(name: str, n: int, r: dict[str, Any]) -> dict[str, Any]:
    ok = r["ok"]
    out = {
        "name": name,
        "n": n,
        "ok": ok,
        "rate": ok / max(r["elapsed"], 1e-9),
        "cpu": 1000 * r["cpu"] / max(ok, 1),
        "p50": percentile(r["lat"], 0.5),
        "p99": percentile(r["lat"], 0.99),
        "failed": sum(r["fail"].values()),
        "live": r.get("live", 0),
        "client_cpu": r["client_cpu"],
    }
    print(
        f"N={n:<2} {name:8} {ok:6d} ok = {out['rate']:7.0f} req/s | CPU/1000 "
        f"{out['cpu']:.3f} s | p50 {out['p50']:.2f} p99 {out['p99']:.2f} ms | failed "
        f"{out['failed']} {r['fail'] or ''}"
        + (f" | sealed in window {out['live']}" if out["live"] else "")
        + (f" | pool ran out ({r['pool_empty']} threads)" if r.get("pool_empty") else "")
        + f" | clients CPU {r['client_cpu']:.1f} s",
        flush=True,
    )
    return out


def measure(
    work: Work,
    pid: int,
    port: int,
    n: int,
    seconds: float,
    extra: dict[str, Any],
    loader: str | None,
    rate_hint: float,
) -> dict[str, Any]:
    procs, threads = SHAPES[n]
    cfg = {"mode": "time", "port": port, "threads": threads, "seconds": seconds, **extra}
    if loader is None:
        return run_load(work, pid, [cfg] * procs)
    if extra.get("version") == 2:  # enough sealed requests for the window, with a margin
        cfg["pool"] = max(2000, int(2.5 * rate_hint * seconds / procs))
    return run_load(work, pid, [cfg] * procs, c_load_argvs(work, loader, [cfg] * procs))


def _cpu_with_children(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def measure_vlmcsd(
    work: Work, vlmcsd: str, vlmcs: str, n: int, seconds: float, rate_hint: float, template: str
) -> dict[str, Any]:
    """N vlmcs processes, each asking ``count`` times (sized from the host's rate so that the
    run lasts about ``seconds``); the answered count is what they asked minus failures."""
    port = free_port()
    server = work.popen(
        [vlmcsd, "-D", "-L", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_listening(server, port, "vlmcsd")
        count = max(50, int(rate_hint * seconds / n))
        argv = [vlmcs, *shlex.split(template.format(count=count, host="127.0.0.1", port=port))]
        cpu0, t0 = _cpu_with_children(server.pid), time.monotonic()
        clients = [
            work.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)
        ]
        failed = 0
        for c in clients:
            failed += c.wait(600) != 0
            work.procs.remove(c)
        elapsed = time.monotonic() - t0
        cpu = _cpu_with_children(server.pid) - cpu0
    finally:
        work.stop(server)
    ok = count * (n - failed)
    return {
        "ok": ok,
        "elapsed": elapsed,
        "cpu": cpu,
        "lat": [],
        "fail": {"vlmcs-exit": failed} if failed else {},
        "client_cpu": float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per server and N (5)")
    ap.add_argument("--n", default="1,4,16", help="concurrent clients (1,4,16)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds, interleaved; medians are compared (3)"
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="also the host with --workers K (2; 0: not)"
    )
    ap.add_argument(
        "--vlmcsd",
        default=os.environ.get("VLMCSD") or shutil.which("vlmcsd"),
        help="vlmcsd binary ($VLMCSD, else PATH)",
    )
    ap.add_argument(
        "--vlmcs",
        default=os.environ.get("VLMCS") or shutil.which("vlmcs"),
        help="vlmcs binary ($VLMCS, else PATH)",
    )
    ap.add_argument("--vlmcs-args", default=VLMCS_ARGS, help=f"template ({VLMCS_ARGS!r})")
    ap.add_argument(
        "--load",
        choices=("c", "python"),
        default="c",
        help="ADBA's load generator: bench/kms_load.c built with cc (c, the default; Python "
        "when there is no compiler) or Python threads",
    )
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    if any(n not in SHAPES for n in ns):
        ap.error(f"N is one of {sorted(SHAPES)}")
    exit_on_signals()
    work = Work()
    try:
        loop = subprocess.run(
            [PY, "-c", "from adba.kms.host import loop_name; print(loop_name())"],
            capture_output=True,
            text=True,
            env=ENV,
            check=True,
        ).stdout.strip()
        print(f"loopback: {loopback_settings()}")
        print(f"event loop: host and floor-uv {loop}, floor asyncio")
        loader = build_c_load(work) if args.load == "c" else None
        print(
            "load generator: "
            + ("bench/kms_load.c (C threads)" if loader else "Python threads (blocking sockets)")
        )
        state, ids = install_host(work)
        cert = json.loads((state / "host.json").read_text())["certificate"]
        if args.workers:  # the same identity in a state dir of its own (one host per dir)
            state_w = work.dir / "kms-workers"
            state_w.mkdir(mode=0o700)
            for name in ("host.key", "host.json", "csvlk.key"):
                shutil.copy2(state / name, state_w / name)
        base_proc, base_port = start_baseline(work, "asyncio")
        crypto_proc, crypto_port = start_crypto_floor(work)
        uv = loop == "uvloop"
        if uv:
            uv_proc, uv_port = start_baseline(work)
        host_proc, host_port = start_host(work, state)
        wname = f"host-v2-w{args.workers}"
        if args.workers:
            work_proc, work_port = start_host(work, state_w, "--workers", str(args.workers))
        anchors = bool(args.vlmcsd and args.vlmcs)
        print(
            "vlmcsd: "
            + (f"{args.vlmcsd} with {args.vlmcs}" if anchors else "not found (floor ratio only)")
        )
        rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for n in ns:
            # v2, sealed and checked: the one load both v2 hosts get (one process, workers)
            v2 = {"check": True, "version": 2, "cert": cert, "pool": 12000 // SHAPES[n][0], **ids}
            runs: list[tuple[str, int, int, dict[str, Any]]] = [
                ("floor", base_proc.pid, base_port, {"check": False, **ids}),
                *([("floor-uv", uv_proc.pid, uv_port, {"check": False, **ids})] if uv else []),
                ("floor-crypto", crypto_proc.pid, crypto_port, {"check": False, **ids}),
                ("host-v1", host_proc.pid, host_port, {"check": True, **ids}),
                ("host-v2", host_proc.pid, host_port, v2),
            ]
            if args.workers:
                runs.append((wname, work_proc.pid, work_port, v2))
            for _round in range(args.repeat):
                for name, pid, port, extra in runs:
                    hint = rows[(name, n)][-1]["rate"] if (name, n) in rows else 10000.0
                    r = measure(work, pid, port, n, args.seconds, extra, loader, hint)
                    rows.setdefault((name, n), []).append(_row(name, n, r))
                if anchors:
                    r = measure_vlmcsd(
                        work,
                        args.vlmcsd,
                        args.vlmcs,
                        n,
                        args.seconds,
                        max(r[-1]["rate"] for k, r in rows.items() if k[1] == n),
                        args.vlmcs_args,
                    )
                    rows.setdefault(("vlmcsd", n), []).append(_row("vlmcsd", n, r))
        for proc in [host_proc] + ([work_proc] if args.workers else []):
            if proc.poll() is not None:
                print(f"host {proc.pid} exited with {proc.returncode} during the run")
        log = (state / "kms.log").read_text(errors="replace").splitlines()
        warnings = [line for line in log if " WARNING " in line or " ERROR " in line]
        print(
            f"host log: {len(warnings)} warnings/errors"
            + (f", last: {warnings[-1]}" if warnings else "")
        )
        med = {
            k: {f: statistics.median(r[f] for r in v) for f in ("rate", "cpu")}
            for k, v in rows.items()
        }
        print(f"\nmedians of {args.repeat} rounds: req/s and server CPU s per 1,000 activations")
        hosts = ["host-v2"] + ([wname] if args.workers else [])
        names = ["floor", *(["floor-uv"] if uv else []), "floor-crypto", "host-v1", *hosts] + (
            ["vlmcsd"] if anchors else []
        )
        print("N   " + "".join(f"{name:>20}" for name in names))
        for n in ns:
            print(
                f"{n:<4}"
                + "".join(
                    f"{med[(name, n)]['rate']:10.0f} {med[(name, n)]['cpu']:8.3f} "
                    for name in names
                )
            )
        print("\nratios (v2: the host on protocol v2, one process; " + wname + ": with workers)")
        print(
            "N   server      v2/floor  v2/floor-uv  v2/vlmcsd-threads rate  "
            "v2/vlmcsd-threads CPU per 1,000"
        )
        for n in ns:
            f = med[("floor", n)]
            fu = med.get(("floor-uv", n))
            for name in hosts:
                h = med[(name, n)]
                line = f"{n:<3} {name:11} {h['rate'] / f['rate']:8.2f}"
                line += f"  {h['rate'] / fu['rate']:11.2f}" if fu else "  " + " " * 11
                if anchors:
                    c = med[("vlmcsd", n)]
                    line += f"  {h['rate'] / c['rate']:22.2f}  {h['cpu'] / c['cpu']:31.2f}"
                print(line)
        print("goals: v2/floor (asyncio) >= 0.8; v2/vlmcsd-threads rate >= 1.0, CPU <= 1.0")
        if anchors:
            print(
                "floor-crypto / vlmcsd-threads CPU per 1,000 (X25519 + Ed25519 alone on the "
                "host's listener): "
                + ", ".join(
                    f"N={n} {med[('floor-crypto', n)]['cpu'] / med[('vlmcsd', n)]['cpu']:.2f}"
                    for n in ns
                )
            )
        total_failed = sum(r["failed"] for v in rows.values() for r in v)
        print(f"failed requests, all runs: {total_failed}")
    finally:
        work.close()


if __name__ == "__main__":
    main()
