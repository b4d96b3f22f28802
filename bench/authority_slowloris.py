"""Slow clients against the authority service: ``adba.authority.server.serve`` (request
deadline, connection caps, quiet logs) vs plain ``uvicorn.run`` of the same app, in the same
run. Each server runs with a 256 file-descriptor limit; one address (127.0.0.2) holds N
connections that trickle a request head; another (127.0.0.1) asks /v1/health 5 times a second.

    .venv/bin/python bench/authority_slowloris.py [connections] [seconds]
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import ROOT

from adba.authority import LocalAuthority
from adba.lab import free_port

SERVE = """
import sys
from adba.authority import LocalAuthority
from adba.authority.service import create_app
from adba.catalog import load_catalog
path, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = create_app(LocalAuthority.open(path), load_catalog())
if kind == "adba":
    from adba.authority.server import Limits, serve
    serve(app, host="127.0.0.1", port=port, limits=Limits(request_timeout=2))
else:
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info")
"""


def run(kind: str, path: Path, connections: int, seconds: float) -> dict[str, float]:
    port = free_port()
    log = path / f"{kind}.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(path), str(port), kind],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}/v1/health"
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    slow = []
    for _ in range(connections):
        s = socket.socket()
        s.setblocking(False)
        s.bind(("127.0.0.2", 0))
        s.connect_ex(("127.0.0.1", port))
        slow.append(s)
    ok = asked = 0
    latencies = []
    started = time.monotonic()
    with httpx.Client(timeout=3) as client:
        while time.monotonic() - started < seconds:
            for s in slow:
                with contextlib.suppress(OSError):
                    s.send(b"G")
            t0 = time.monotonic()
            asked += 1
            with contextlib.suppress(httpx.HTTPError):
                ok += client.get(url, headers={"connection": "close"}).status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.2)
    for s in slow:
        s.close()
    proc.terminate()
    proc.wait(timeout=20)
    latencies.sort()
    return {
        "health_ok": ok / asked,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "max_ms": 1000 * latencies[-1],
        "log_kib": log.stat().st_size / 1024,
        "tracebacks": float(log.read_text(errors="replace").count("Traceback")),
    }


def main() -> None:
    connections = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "authority"
        LocalAuthority.init(path, now=int(time.time()))
        results = {kind: run(kind, path, connections, seconds) for kind in ("adba", "uvicorn")}
    print(f"{connections} trickling connections from one address, {seconds:g} s, nofile 256")
    print(f"{'':10}{'health ok':>10}{'p50 ms':>9}{'max ms':>9}{'log KiB':>10}{'tracebacks':>11}")
    for kind, r in results.items():
        print(
            f"{kind:10}{r['health_ok']:>10.0%}{r['p50_ms']:>9.1f}{r['max_ms']:>9.1f}"
            f"{r['log_kib']:>10.1f}{r['tracebacks']:>11.0f}"
        )


if __name__ == "__main__":
    main()
