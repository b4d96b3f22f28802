"""Activations per second of the real KMS host process against a bare asyncio server.

Two servers, each a process of its own on 127.0.0.1, under the same client load, measured one
after the other in the same run (baseline, host, baseline again, SECONDS each):

- the host: ``adba kms serve -q`` in a fresh temp state dir, its CSVLK minted by a local
  authority and installed with ``adba kms install-key``; it parses each request, counts the
  CMID in its cache (50 entries once a client kind asks), signs the answer (Ed25519) and
  saves the cache to SQLite once a second;
- the baseline: ``asyncio.start_server``, read until EOF (at most 145 bytes), write a fixed
  244-byte reply, close -- the cost of Python asyncio's accept/read/write/close alone.

Load: 4 client processes x 4 threads, blocking sockets, a NEW TCP connection per request
(connect, send the 144-byte request, shutdown(SHUT_WR), read to EOF), each request a valid
client-kind protocol Request with a random CMID and nonce. The host's replies are checked
(244 bytes, magic, status OK, our nonce); signatures are not verified (client cost).

How to read it: "req/s" is answered requests per second (the host's is activations/s);
"host/baseline" compares the host with the mean of the two baseline runs (goal >= 0.6: the
host's own work costs less than the bare connection handling). p50/p99 are per-request
latencies, connect to EOF, seen by the clients. "server CPU s/1000" is utime+stime of the
server process per 1,000 answered requests (/proc/<pid>/stat): it is the number that does
not depend on how much of the 2 cores the clients take. "failed" counts connect errors,
resets, timeouts and short replies -- any non-zero number is a finding, not noise. The
clients and servers share 2 noisy cores, so the absolute rate is bounded by the clients too
(their CPU is printed); compare the two servers, not runs on different days.

    /tmp/venv/bin/python bench/kms_throughput.py [seconds-per-run]
"""

from __future__ import annotations

import statistics
import sys
import time

from _kms import (
    Work,
    exit_on_signals,
    install_host,
    loopback_settings,
    percentile,
    run_load,
    start_baseline,
    start_host,
    time_wait_sockets,
)

PROCESSES, THREADS = 4, 4
C_EMULATOR = (
    "a C KMS emulator does 1,400-2,600 new-connection activations/s on these 2-core machines"
)


def measure(work: Work, name: str, pid: int, port: int, seconds: float, ids: dict[str, str]):  # type: ignore[no-untyped-def]
    cfg = {"mode": "time", "port": port, "threads": THREADS, "seconds": seconds, "check": True}
    cfg.update(ids)
    if name.startswith("baseline"):
        cfg["check"] = False  # its fixed reply has no nonce
    r = run_load(work, pid, [cfg] * PROCESSES)
    rate = r["ok"] / r["elapsed"]
    failed = sum(r["fail"].values())
    print(
        f"{name:11} {r['ok']:6d} ok in {r['elapsed']:.1f} s = {rate:7.0f} req/s | "
        f"p50 {percentile(r['lat'], 0.5):6.2f} ms  p99 {percentile(r['lat'], 0.99):6.2f} ms | "
        f"server CPU {1000 * r['cpu'] / max(r['ok'], 1):.3f} s/1000 "
        f"({r['cpu']:.1f} s), clients CPU {r['client_cpu']:.1f} s | "
        f"failed {failed} {r['fail'] or ''} | TIME_WAIT after {time_wait_sockets()}",
        flush=True,
    )
    return rate, r


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    exit_on_signals()
    work = Work()
    try:
        print(f"loopback: {loopback_settings()}")
        state, ids = install_host(work)
        base_proc, base_port = start_baseline(work)
        host_proc, host_port = start_host(work, state)
        time.sleep(0.3)  # let the readiness probe's warning (a 0-byte request) reach the log
        log_start = (state / "kms.log").stat().st_size
        print(
            f"load: {PROCESSES} processes x {THREADS} threads, new connection per request, "
            f"{seconds:g} s per run"
        )
        rates: dict[str, float] = {}
        results = {}
        for name, proc, port in (
            ("baseline#1", base_proc, base_port),
            ("host", host_proc, host_port),
            ("baseline#2", base_proc, base_port),
        ):
            rates[name], results[name] = measure(work, name, proc.pid, port, seconds, ids)
        if host_proc.poll() is not None:
            print(f"host exited with {host_proc.returncode} during the run")
        log = (state / "kms.log").read_bytes()[log_start:].decode(errors="replace").splitlines()
        warnings = [line for line in log if " WARNING " in line or " ERROR " in line]
        print(
            f"host log: {len(warnings)} warnings/errors"
            + (f", last: {warnings[-1]}" if warnings else "")
        )
        base = statistics.mean([rates["baseline#1"], rates["baseline#2"]])
        h, b1 = results["host"], results["baseline#1"]
        b_cpu = statistics.mean(
            [
                1000 * results[n]["cpu"] / max(results[n]["ok"], 1)
                for n in ("baseline#1", "baseline#2")
            ]
        )
        h_cpu = 1000 * h["cpu"] / max(h["ok"], 1)
        print(
            f"host {rates['host']:.0f} activations/s vs baseline {base:.0f} req/s (mean of 2): "
            f"ratio host/baseline {rates['host'] / base:.2f} (goal >= 0.6)"
        )
        print(
            f"latency p50/p99: host {percentile(h['lat'], 0.5):.2f}/{percentile(h['lat'], 0.99):.2f} ms, "
            f"baseline#1 {percentile(b1['lat'], 0.5):.2f}/{percentile(b1['lat'], 0.99):.2f} ms"
        )
        print(
            f"server CPU per 1,000: host {h_cpu:.3f} s, baseline {b_cpu:.3f} s "
            f"(host's own work {h_cpu - b_cpu:.3f} s/1000 = {h_cpu - b_cpu:.3f} ms per activation)"
        )
        total_failed = sum(sum(results[n]["fail"].values()) for n in results)
        print(f"failed requests, all runs: {total_failed}")
        print(f"reference: {C_EMULATOR}")
    finally:
        work.close()


if __name__ == "__main__":
    main()
