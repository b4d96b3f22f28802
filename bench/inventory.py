"""Machines collected per second by ``adba inventory collect`` at concurrency 1, 16 and 64,
against OpenSSH's own ``ssh`` client run the same way (one process per machine, the same
concurrency): the baseline an admin's shell loop would get.

Setup: SSHD real sshd processes on 127.0.0.1 (Debian's openssh-server, ed25519 host keys),
each answering with a fixed ``adba agent status --json`` document (``cat``), MACHINES machine
names spread over them, host keys verified against a known_hosts file in both cases. Each
run is measured in the same process, one after the other (collector, baseline).

How to read it: "machines/s" is the collection rate; "vs ssh" the collector's rate over the
baseline's at the same concurrency (above 1: the asyncio collector costs less than a process
per machine). On 2 shared cores the sshd side (a fork and re-exec per connection) bounds both.

    python bench/inventory.py [machines] [sshd-count]
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adba.inventory.collect import SshOptions, collect  # noqa: E402
from tests.servers import TestSshd  # noqa: E402


def baseline(machines: list[dict[str, str]], key: Path, known: Path, concurrency: int) -> int:
    """OpenSSH's client, one process per machine, ``concurrency`` at once; returns the ok."""

    async def one(gate: asyncio.Semaphore, address: str) -> bool:
        host, port = address.rsplit(":", 1)
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                "ssh",
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-i",
                str(key),
                "-p",
                port,
                host,
                "adba agent status --json",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            out, _ = await proc.communicate()
            return proc.returncode == 0 and json.loads(out)["schema"] == 1

    async def run() -> int:
        gate = asyncio.Semaphore(concurrency)
        return sum(await asyncio.gather(*(one(gate, m["address"]) for m in machines)))

    return asyncio.run(run())


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    servers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    tmp = Path(tempfile.mkdtemp(prefix="adba-bench-inv-"))
    key = tmp / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    doc = tmp / "status.json"
    doc.write_text(json.dumps({"schema": 1, "state": "x", "products": [{"status": "licensed"}]}))
    fleet = [TestSshd(f"{key}.pub", f"cat {doc}") for _ in range(servers)]
    known = tmp / "known_hosts"
    known.write_text("".join(s.known_hosts_line for s in fleet))
    try:
        for s in fleet:
            s.start()
        machines = [
            {"name": f"pc{i:05d}", "address": f"127.0.0.1:{fleet[i % servers].port}"}
            for i in range(count)
        ]
        print(f"{count} machines over {servers} sshd processes")
        print(f"{'concurrency':>11}  {'adba/s':>8}  {'ok':>5}  {'ssh/s':>8}  {'ok':>5}  vs ssh")
        for concurrency in (1, 16, 64):
            opts = SshOptions(
                str(known), identities=(str(key),), timeout=60, concurrency=concurrency
            )
            started = time.monotonic()
            results = collect(machines, opts)
            ours = count / (time.monotonic() - started)
            ok = sum(r.ok for r in results)
            failures: dict[str, int] = {}
            for r in results:
                if not r.ok:
                    failures[str(r.error_code)] = failures.get(str(r.error_code), 0) + 1
            started = time.monotonic()
            base_ok = baseline(machines, key, known, concurrency)
            theirs = count / (time.monotonic() - started)
            print(
                f"{concurrency:>11}  {ours:>8.1f}  {ok:>5}  {theirs:>8.1f}  {base_ok:>5}"
                f"  {ours / theirs:.2f}  {failures or ''}"
            )
    finally:
        for s in fleet:
            s.destroy()


if __name__ == "__main__":
    main()
