"""Boot storm: N distinct machines (10,000 by default) ask one real KMS host at once.

One ``adba kms serve -q`` process in a fresh temp state dir (CSVLK minted by a local
authority, installed with ``adba kms install-key``). Each machine is one client-kind request
with its own CMID on a NEW TCP connection. The first PRELUDE (20) machines ask one after the
other (a single sequential client); the rest are sent as fast as 4 client processes x 4
threads can (blocking sockets), each reply checked (244 bytes, magic, status OK, our nonce).

What "exact" means for the count. A fresh host's cache holds 50 machines once a client kind
asks, and every CMID here is new, so the k-th request the HOST PROCESSES is answered with
count min(k, 50) -- exactly, no more and no less:

- sequential prelude: the i-th answer (1-based) must be exactly min(i, 50), in order;
- concurrent storm: the order in which the host processes concurrent requests is not the order
  they were sent, so each answer is not compared with a position; instead the multiset of the
  storm's counts must be exactly {min(k, 50) : k = PRELUDE+1 .. N} (21, 22, ..., 49 once
  each, then 50 for every other answer). A lost, doubled or miscounted machine breaks it.
- the answers received last carry count 50, and once the host has flushed (it saves once a
  second) ``adba kms status --json`` shows count 50 and cache_capacity 50, and the 50 machines
  it stored (``adba kms clients --json``) are machines we sent -- and, as the cache keeps the
  most recently seen, they should be among the last 50 + 16 (in-flight window) answered.

Also printed: failures (goal 0: connect errors, resets, timeouts, short or wrong replies),
elapsed time and rate of the storm, and the host's peak RSS (VmHWM, /proc/<pid>/status)
before and after the storm.

    /tmp/venv/bin/python bench/boot_storm.py [machines]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter

from _common import ROOT
from _kms import (
    ENV,
    PY,
    Work,
    exit_on_signals,
    install_host,
    loopback_settings,
    percentile,
    proc_status,
    run_load,
    start_host,
)

PROCESSES, THREADS, PRELUDE, CAPACITY = 4, 4, 20, 50


def adba_json(*argv: str) -> object:
    out = subprocess.run(
        [PY, "-m", "adba", *argv, "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    return json.loads(out.stdout)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    exit_on_signals()
    work = Work()
    ok_all = True

    def check(what: str, good: bool, detail: str = "") -> None:
        nonlocal ok_all
        ok_all &= good
        print(f"  [{'ok' if good else 'FAIL'}] {what}" + (f": {detail}" if detail else ""))

    try:
        print(f"loopback: {loopback_settings()}")
        state, ids = install_host(work)
        host, port = start_host(work, state)
        time.sleep(0.3)  # the readiness probe's warning (a 0-byte request) reaches the log
        log_start = (state / "kms.log").stat().st_size
        print(
            f"host pid {host.pid} started: VmRSS {proc_status(host.pid, 'VmRSS')}, "
            f"VmHWM {proc_status(host.pid, 'VmHWM')}"
        )
        base = (0xB007 << 112) | (int(time.time()) << 32)  # CMID = UUID(int=base + i)
        first = min(PRELUDE, n)
        cfg = {"mode": "count", "port": port, "cmid_base": base, "check": True, **ids}

        # the sequential prelude: one client, one request at a time
        pre = run_load(work, host.pid, [{**cfg, "threads": 1, "indices": [list(range(first))]}])
        counts = [c for _, c, _ in sorted(pre["answers"], key=lambda a: a[2])]
        expected = [min(i, CAPACITY) for i in range(1, first + 1)]
        print(f"sequential prelude: {first} machines, failures {sum(pre['fail'].values())}")
        check(
            "each sequential answer's count == min(i, 50)",
            counts == expected,
            "" if counts == expected else f"got {counts}",
        )

        # the storm: the rest, as fast as the clients go
        rest = list(range(first, n))
        workers = PROCESSES * THREADS
        slices = [rest[k::workers] for k in range(workers)]
        cfgs = [
            {**cfg, "threads": THREADS, "indices": slices[p * THREADS : (p + 1) * THREADS]}
            for p in range(PROCESSES)
        ]
        r = run_load(work, host.pid, cfgs) if rest else pre
        failed = sum(r["fail"].values())
        print(
            f"storm: {len(rest)} machines from {PROCESSES} processes x {THREADS} threads in "
            f"{r['elapsed']:.2f} s = {len(rest) / r['elapsed']:.0f} activations/s | "
            f"p50 {percentile(r['lat'], 0.5):.2f} ms p99 {percentile(r['lat'], 0.99):.2f} ms | "
            f"host CPU {r['cpu']:.2f} s ({1000 * r['cpu'] / max(r['ok'], 1):.3f} s/1000)"
        )
        check("failures", failed == 0, f"{failed} {r['fail'] or ''}")
        check("every machine answered", r["ok"] == len(rest), f"{r['ok']} of {len(rest)}")
        got = sorted(c for _, c, _ in r["answers"])
        want = sorted(min(k, CAPACITY) for k in range(first + 1, n + 1))
        check(
            f"storm counts == {{min(k, 50) : k = {first + 1}..{n}}} as a multiset",
            got == want,
            ""
            if got == want
            else f"off by {dict((Counter(got) - Counter(want)) or {})} / "
            f"missing {dict(Counter(want) - Counter(got))}",
        )
        by_time = sorted(r["answers"], key=lambda a: a[2])
        last = [c for _, c, _ in by_time[-5:]]
        final = min(n, CAPACITY)
        check(f"the last 5 answers' count == {final}", all(c == final for c in last), f"{last}")
        hwm = proc_status(host.pid, "VmHWM")

        # the host saves once a second: give it two flush intervals after the last answer,
        # then read its records (and poll a little longer should a flush be late)
        time.sleep(max(0.0, by_time[-1][2] + 2.0 - time.monotonic()) if by_time else 2.0)
        deadline = time.monotonic() + 10
        while True:
            view = adba_json("kms", "status", "--state-dir", str(state))
            assert isinstance(view, dict)
            if view["count"] == final or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        check(
            "`adba kms status --json` after the flush",
            view["count"] == final and view["cache_capacity"] == CAPACITY,
            f"count {view['count']}, cache_capacity {view['cache_capacity']}, "
            f"groups {view['groups']}",
        )
        stored = adba_json("kms", "clients", "--state-dir", str(state))
        assert isinstance(stored, list)
        sent = {str(uuid.UUID(int=base + i)) for i in range(n)}
        stored_ids = {row["cmid"] for row in stored}
        recent = {str(uuid.UUID(int=base + i)) for i, _, _ in by_time[-(CAPACITY + workers) :]}
        check("stored machines are machines we sent", stored_ids <= sent, f"{len(stored_ids)}")
        check(
            f"stored machines are among the last {CAPACITY + workers} answered",
            stored_ids <= recent,
            f"{len(stored_ids & recent)} of {len(stored_ids)}",
        )
        log = (state / "kms.log").read_bytes()[log_start:].decode(errors="replace").splitlines()
        warnings = [line for line in log if " WARNING " in line or " ERROR " in line]
        check("host log has no warnings", not warnings, warnings[-1] if warnings else "")
        print(
            f"host peak RSS (VmHWM) {hwm} after {n} machines; VmRSS now "
            f"{proc_status(host.pid, 'VmRSS')}"
        )
        print(f"result: {'all checks passed' if ok_all else 'SOME CHECKS FAILED'}")
    finally:
        work.close()
    sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
