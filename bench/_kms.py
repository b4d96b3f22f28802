"""KMS bench helpers: a real host process, a bare asyncio baseline, client load processes.

Everything started here is a child process the caller ends with :meth:`Work.close` (the benchmarks
do it in ``finally``, and turn SIGTERM/SIGHUP into SystemExit so that ``finally`` runs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, precompile

PY = sys.executable
#: the worktree first; a PYTHONPATH given to the bench (e.g. where uvloop is) after it
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
}

#: the floor: a bare asyncio Protocol (on uvloop when it is installed, as the host is) that
#: reads until EOF (at most 201 bytes), writes a fixed 244-byte reply and closes -- the cost
#: of the event loop's accept/read/write/close alone, the least any Python host can spend.
BASELINE_SERVER = r"""
import asyncio, sys
REPLY = b"ADBR\x01\x00" + bytes(238)
assert len(REPLY) == 244

class Floor(asyncio.Protocol):
    __slots__ = ("t", "n")
    def connection_made(self, t):
        self.t, self.n = t, 0
    def data_received(self, data):
        self.n += len(data)
        if self.n > 201:
            self.t.abort()
    def eof_received(self):
        self.t.write(REPLY)
        self.t.close()
        return True

async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Floor, "127.0.0.1", int(sys.argv[1]), backlog=1024,
                                   reuse_address=True)
    async with srv:
        await srv.serve_forever()

if sys.argv[2:] == ["asyncio"]:
    asyncio.run(main())
else:
    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
"""

#: the cryptography floor: the host's own listener (adba/kms/listener.py: the same accept,
#: batches, read, write and close) answering each complete request with one X25519 exchange
#: and one Ed25519 signature over it (the host's own engines: libsodium's with the ``fast``
#: extra) and a fixed 244-byte reply -- what the two operations protocol v2 requires cost per connection,
#: with nothing else of the host (no parsing, HKDF, AEAD, counting or saving).
CRYPTO_FLOOR_SERVER = r"""
import asyncio, hashlib, os, sys
from adba.kms.admission import RejectLog, Slots
from adba.kms.listener import Listener, listen
from adba.kms.host import run_loop

REPLY = b"ADBR\x01\x00" + bytes(238)
# the host's own engines: its Opener's exchange and its signer (libsodium's C functions with
# the fast extra, else cryptography's)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from adba.kms.envelope import Opener
from adba.kms.host import signer
KEY = Ed25519PrivateKey.generate()
X, SIGN = Opener(KEY)._exchange, signer(KEY)
POINT = X25519PrivateKey.generate().public_key().public_bytes_raw()
def exchange():
    X(POINT)
def sign(data):
    SIGN(data)

class Metrics:
    rejected = refused = refused_source = evicted = 0

class Host:
    first_byte, deadline, forward, served = 1.0, 5.0, None, 0
    def __init__(self):
        self.slots, self.metrics, self.rejects = Slots(512, 64), Metrics(), RejectLog(10)
    # the listener's three passes: open (X25519), decide (nothing), sign (Ed25519)
    def ask(self, data):
        exchange()
        return (2, 0, b"", b"", b"", 0, b"", "", 0)
    def decide(self, asked):
        return 0, 0, False
    def reply(self, data, version, status, nonce, count):
        sign(data)
        return REPLY

async def main():
    Listener(Host(), asyncio.get_running_loop(), listen("127.0.0.1", int(sys.argv[1])))
    await asyncio.Event().wait()

run_loop(main())
"""

#: one load process: THREADS threads, each a loop of new-connection requests (blocking
#: sockets: the cheapest client per request in CPython). It prints "ready", waits for a line
#: on stdin, runs, and prints one JSON line of results.
#:
#: Requests: one Request(...).encode() template; each request splices a fresh CMID and nonce
#: into it (bytes 8..24 and 64..80), which is exactly what encode() would produce for them.
#: Version 2 ("version": 2, "cert": the host certificate in hex): requests sealed before
#: "ready" (a pool of "pool" per process, each its own CMID, nonce and ephemeral key), so
#: the clients' sealing is not in the measured window; past the pool they seal as they go.
LOAD = r"""
import json, os, socket, sys, threading, time, uuid
from adba.kms.protocol import KIND_CLIENT, HostCertificate, Request, parse_request

cfg = json.loads(sys.argv[1])
addr = ("127.0.0.1", cfg["port"])
template = Request(KIND_CLIENT, uuid.uuid4(), uuid.UUID(cfg["sku"]), uuid.UUID(cfg["kms_id"]),
                   int(time.time()), bytes(16), "bench-pc").encode()
head, mid, tail = template[:8], template[24:64], template[80:]
assert parse_request(head + os.urandom(16) + mid + os.urandom(16) + tail).machine == "bench-pc"
mode = cfg["mode"]  # "time": random CMIDs for cfg["seconds"]; "count": CMIDs from indices
base = cfg.get("cmid_base", 0)
sealed = []
v2 = cfg.get("version", 1) == 2
if v2:
    from adba.kms.envelope import seal
    cert = HostCertificate.from_bytes(bytes.fromhex(cfg["cert"]))
    sku, kms_id = uuid.UUID(cfg["sku"]), uuid.UUID(cfg["kms_id"])
    def sealed_one():
        r = Request(KIND_CLIENT, uuid.uuid4(), sku, kms_id, int(time.time()), os.urandom(16),
                    "bench-pc")
        return r.nonce, seal(r, cert)
    sealed = [sealed_one() for _ in range(cfg.get("pool", 10000))]
lock = threading.Lock()

def one(cmid, out):
    if v2:
        with lock:
            item = sealed.pop() if sealed else None
        if item is None:  # the pool ran out: sealed in the measured window (counted)
            out["live"] += 1
            item = sealed_one()
        nonce, req = item
    else:
        nonce = os.urandom(16)
        req = head + cmid + mid + nonce + tail
    t0 = time.perf_counter()
    s = socket.socket()
    buf = b""
    try:
        s.settimeout(10)
        s.connect(addr)
        s.sendall(req)
        s.shutdown(socket.SHUT_WR)
        while len(buf) <= 244:
            chunk = s.recv(512)
            if not chunk:
                break
            buf += chunk
    except OSError as exc:
        out["fail"][type(exc).__name__] = out["fail"].get(type(exc).__name__, 0) + 1
        return None
    finally:
        s.close()
    t1 = time.perf_counter()
    if len(buf) != 244 or buf[:4] != b"ADBR":
        key = "short-reply" if len(buf) < 244 else "bad-reply"
        out["fail"][key] = out["fail"].get(key, 0) + 1
        return None
    if cfg["check"] and (buf[5] != 0 or buf[6:22] != nonce):
        out["fail"]["wrong-status-or-nonce"] = out["fail"].get("wrong-status-or-nonce", 0) + 1
        return None
    out["lat"].append(round((t1 - t0) * 1e6))
    return buf

def worker(k, out):
    if mode == "time":
        end = time.monotonic() + cfg["seconds"]
        while time.monotonic() < end:
            one(os.urandom(16), out)
    else:
        for i in cfg["indices"][k]:
            buf = one(uuid.UUID(int=base + i).bytes, out)
            if buf is not None:
                out["answers"].append((i, int.from_bytes(buf[22:24], "big"), time.monotonic()))

outs = [{"fail": {}, "lat": [], "answers": [], "live": 0} for _ in range(cfg["threads"])]
threads = [threading.Thread(target=worker, args=(k, outs[k])) for k in range(cfg["threads"])]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.monotonic() - t0
fail = {}
for o in outs:
    for k, v in o["fail"].items():
        fail[k] = fail.get(k, 0) + v
print(json.dumps({
    "elapsed": elapsed,
    "cpu": sum(os.times()[:2]),
    "ok": sum(len(o["lat"]) for o in outs),
    "fail": fail,
    "lat": [x for o in outs for x in o["lat"]],
    "answers": [a for o in outs for a in o["answers"]],
    "live": sum(o["live"] for o in outs),
}), flush=True)
"""


#: a pool of sealed v2 requests for the C load generator: records of nonce (16) + request
SEAL_POOL = r"""
import json, os, sys, time, uuid
from adba.kms.envelope import seal
from adba.kms.protocol import KIND_CLIENT, HostCertificate, Request

cfg = json.loads(sys.argv[1])
cert = HostCertificate.from_bytes(bytes.fromhex(cfg["cert"]))
sku, kms_id = uuid.UUID(cfg["sku"]), uuid.UUID(cfg["kms_id"])
with open(cfg["path"], "wb") as fh:
    for _ in range(cfg["n"]):
        r = Request(KIND_CLIENT, uuid.uuid4(), sku, kms_id, int(time.time()), os.urandom(16),
                    "bench-pc")
        fh.write(r.nonce + seal(r, cert))
"""


def build_c_load(work: Work) -> str | None:
    """bench/kms_load.c compiled into the work dir with the system's cc (None: no compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = work.dir / "kms_load"
    res = subprocess.run(
        [cc, "-O2", "-pthread", "-o", str(out), str(ROOT / "bench" / "kms_load.c")],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        print(f"kms_load.c did not build (Python clients instead): {res.stderr.strip()[:300]}")
        return None
    return str(out)


def c_load_argvs(work: Work, loader: str, cfgs: list[dict[str, object]]) -> list[list[str]]:
    """The C load generator's command lines for ``cfgs`` (the Python load's configs), its
    request files written first: a v1 template, or v2 pools sealed in parallel processes."""
    import uuid

    from adba.kms.protocol import KIND_CLIENT, Request

    argvs, sealers = [], []
    for k, cfg in enumerate(cfgs):
        path = work.dir / f"load-{k}.bin"
        if cfg.get("version", 1) == 2:
            job = {"cert": cfg["cert"], "sku": cfg["sku"], "kms_id": cfg["kms_id"]}
            job.update(n=cfg["pool"], path=str(path))
            sealers.append(work.popen([PY, "-c", SEAL_POOL, json.dumps(job)]))
            mode, size = "pool", "200"
        else:
            template = Request(
                KIND_CLIENT,
                uuid.uuid4(),
                uuid.UUID(str(cfg["sku"])),
                uuid.UUID(str(cfg["kms_id"])),
                int(time.time()),
                bytes(16),
                "bench-pc",
            ).encode()
            path.write_bytes(template)
            mode, size = "v1", "144"
        argvs.append(
            [
                loader,
                str(cfg["port"]),
                str(cfg["threads"]),
                str(cfg["seconds"]),
                mode,
                str(path),
                size,
                "1" if cfg.get("check") else "0",
            ]
        )
    for proc in sealers:
        if proc.wait(600) != 0:
            raise RuntimeError("sealing the v2 pool failed")
        work.procs.remove(proc)
    return argvs


def exit_on_signals() -> None:
    """SIGTERM/SIGHUP raise SystemExit so every ``finally`` (process and temp-dir cleanup) runs."""

    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{what} is not listening on port {port}")


class Work:
    """A temp dir and the processes started in it; :meth:`close` ends them all."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="adba-bench-kms-", dir="/tmp"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def popen(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=ENV, cwd=ROOT, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as exc:  # keep cleaning up the rest
                print(f"cleanup: pid {proc.pid}: {exc}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_baseline(work: Work, loop: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """The floor server on a free port: on uvloop when it is installed, or with ``loop``
    "asyncio" on asyncio's own event loop (the anchor the KMS goals name)."""
    port = free_port()
    argv = [PY, "-c", BASELINE_SERVER, str(port), *([loop] if loop else [])]
    proc = work.popen(argv, stdin=subprocess.DEVNULL)
    wait_listening(proc, port, "baseline server")
    return proc, port


def start_crypto_floor(work: Work) -> tuple[subprocess.Popen[bytes], int]:
    """The cryptography floor (:data:`CRYPTO_FLOOR_SERVER`) on a free port."""
    port = free_port()
    proc = work.popen([PY, "-c", CRYPTO_FLOOR_SERVER, str(port)], stdin=subprocess.DEVNULL)
    wait_listening(proc, port, "cryptography floor")
    return proc, port


def install_host(work: Work) -> tuple[Path, dict[str, str]]:
    """A local authority, a minted CSVLK, and `adba kms install-key` into a fresh state dir.

    Returns the state dir and the SKU / KMS ID the load should ask for (a client edition the
    CSVLK covers)."""
    precompile()
    from adba.authority import LocalAuthority
    from adba.catalog import load_catalog
    from adba.keys import KeyType

    now = int(time.time())
    cat = load_catalog()
    auth = LocalAuthority.init(work.dir / "authority", now=now)
    key = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", cat, now=now).text
    state = work.dir / "kms"
    subprocess.run(
        [
            PY,
            "-m",
            "adba",
            "kms",
            "install-key",
            "--state-dir",
            str(state),
            "--key",
            key,
            "--authority",
            str(work.dir / "authority"),
            "--host-id",
            "bench-host",
        ],
        check=True,
        capture_output=True,
        env=ENV,
        cwd=ROOT,
    )
    edition = cat.edition("Nimbus Workstation Enterprise")
    return state, {"sku": str(edition.sku), "kms_id": str(edition.group)}


def start_host(work: Work, state: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = open(state / "kms.log", "ab")  # noqa: SIM115 - owned by the process
    proc = work.popen(
        [
            PY,
            "-m",
            "adba",
            "kms",
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--deadline",
            "5",
            "-q",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    wait_listening(proc, port, "kms host")
    return proc, port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its live children (a host's ``--workers``)."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def proc_status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def time_wait_sockets() -> int:
    """TCP sockets in TIME_WAIT (state 06) on this machine, IPv4 and IPv6."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as fh:
                next(fh, None)
                n += sum(1 for line in fh if line.split(None, 4)[3] == "06")
        except OSError:
            pass
    return n


def loopback_settings() -> str:
    def read(p: str) -> str:
        try:
            return Path(p).read_text().split("\n")[0].replace("\t", "-")
        except OSError:
            return "?"

    return (
        f"tcp_tw_reuse={read('/proc/sys/net/ipv4/tcp_tw_reuse')} (2 = loopback only), "
        f"ip_local_port_range={read('/proc/sys/net/ipv4/ip_local_port_range')}, "
        f"tcp_max_tw_buckets={read('/proc/sys/net/ipv4/tcp_max_tw_buckets')}, "
        f"TIME_WAIT sockets now: {time_wait_sockets()}"
    )


def run_load(
    work: Work,
    server_pid: int,
    cfgs: list[dict[str, object]],
    argvs: list[list[str]] | None = None,
) -> dict[str, object]:
    """Start one load process per config (or per command line of ``argvs``: the C load
    generator), let them get ready, release them together.

    Returns the merged results and the server's CPU seconds over the run (its live children
    included: a host's workers)."""
    if argvs is None:
        argvs = [[PY, "-c", LOAD, json.dumps(cfg)] for cfg in cfgs]
    procs = [work.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for argv in argvs]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"load process {p.pid} failed to start ({line!r})")
    cpu0 = tree_cpu_seconds(server_pid)
    t0 = time.monotonic()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        results.append(json.loads(out.splitlines()[-1]))
        work.procs.remove(p)
    wall = time.monotonic() - t0
    cpu = tree_cpu_seconds(server_pid) - cpu0
    fail: dict[str, int] = {}
    for r in results:
        for k, v in r["fail"].items():
            fail[k] = fail.get(k, 0) + v
    return {
        "ok": sum(r["ok"] for r in results),
        "fail": fail,
        "lat": sorted(x for r in results for x in r["lat"]),
        "answers": [a for r in results for a in r["answers"]],
        "elapsed": max(r["elapsed"] for r in results),
        "wall": wall,
        "cpu": cpu,
        "client_cpu": sum(r["cpu"] for r in results),
        "live": sum(r.get("live", 0) for r in results),
        "pool_empty": sum(r.get("pool_empty", 0) for r in results),
    }


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1000
