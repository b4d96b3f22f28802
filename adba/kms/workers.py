"""Several host processes on one port (``adba kms serve --workers N``), one cache, one store.

The count a client gets must be the one a single process would give for the same requests,
and a replayed v2 request must be refused whichever process it reaches, so the shared state
(the cache, the replay cache, the store) has ONE owner: the parent process. It forks N - 1
workers before it starts anything else (no thread, no event loop yet); they and the parent
(worker 0) listen on the port with ``SO_REUSEPORT`` (the kernel spreads the connections over
them). A worker does everything that needs no shared state -- the connection limits and
deadlines, parsing, the v2 opening (X25519, HKDF, ChaCha20-Poly1305), the clock rule, the
Ed25519 signature -- and hands the owner, over a Unix socket pair, the fields
:meth:`~adba.kms.host.KmsHost.decide` needs (150 bytes); the owner answers with the status
and the count (8 bytes) and the worker signs and sends the response. Both ends batch: what
one loop iteration forwards goes in one write, what one read brings is answered in one
write. The owner answers its own share of the connections as a single host does (deciding
in place), and saves (once a second, in its own thread), publishes, and exports the metrics
(the workers report their connection counters once a second).
Measured on 2 cores shared with the clients (bench/kms_throughput.py, sealed v2 requests),
two processes answer 0.68-0.79 times what one does at N = 1 and 4 concurrent clients and 1.07
times at N = 16, at 1.4-1.6 times its CPU per activation: the round trip to the owner wakes
both processes for each request a worker takes.

Nothing acknowledged is lost on a stop: the parent stops the workers first (they answer what
they hold), then saves. A worker that dies stops the host (exit code of a KMS error) for its
supervisor to restart: a host running on fewer processes than it was told is not hidden.
Each worker holds ``ceil(limit / N)`` of the connection limits (``--max-connections``,
``--max-per-source``): a source's connections spread over the workers as the kernel hashes
them, so the totals stay about what they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import KmsError

if TYPE_CHECKING:
    from .host import Ask, KmsHost
    from .listener import Held

__all__ = ["OwnerLink", "Worker", "WorkerLink", "fork_workers"]

log = logging.getLogger(__name__)

#: worker -> owner: seq, version, kind, client time, nonce, CMID, SKU, KMS ID, name length,
#: name (UTF-8, checked by the worker), the worker's clock when asked
ASK = struct.Struct(">IBBq16s16s16s16sB63sq")
#: owner -> worker: seq, status, count, activated
ANSWER = struct.Struct(">IBHB")
#: control records (version 0): the worker listens / could not listen / its connection
#: counters (rejected, refused, refused per source, evicted, open: 5 x 8 bytes in the
#: CMID, SKU and KMS ID fields), sent once a second for the owner's metrics
READY, FAILED, COUNTERS = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
_COUNTERS = struct.Struct(">5Q8x")
assert ASK.size == 150 and ANSWER.size == 8


@dataclass
class Worker:
    """A forked worker, as the parent sees it."""

    index: int
    pid: int
    channel: socket.socket
    ready: asyncio.Future[None] | None = None
    lost: asyncio.Future[None] | None = None
    exit_code: int | None = field(default=None)
    #: its connection counters as it last reported them (rejected, refused, refused per
    #: source, evicted, open)
    counters: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)


def fork_workers(host: KmsHost, n: int, addresses: list[str], port: int) -> list[Worker]:
    """Fork ``n`` workers, numbered 1..n (call before any thread or event loop exists); in
    each child this never returns (it serves, then ``os._exit``)."""
    workers: list[Worker] = []
    for index in range(1, n + 1):
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 70
            try:
                parent_end.close()
                for w in workers:
                    w.channel.close()
                code = _worker_main(host, index, child_end, addresses, port)
            except BaseException:
                log.exception("event=worker-crashed index=%d", index)
            finally:
                logging.shutdown()
                os._exit(code)
        child_end.close()
        workers.append(Worker(index, pid, parent_end))
    return workers


def _worker_main(
    host: KmsHost, index: int, channel: socket.socket, addresses: list[str], port: int
) -> int:
    from .host import run_loop

    # the parent stops its workers (SIGTERM) once it is told to stop: a Ctrl-C, which reaches
    # the whole process group, is the parent's to handle (in order: workers, then the save)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the worker's loop installs its own
    result = [0]
    run_loop(_serve_worker(host, index, channel, addresses, port, result))
    return result[0]


async def _serve_worker(
    host: KmsHost,
    index: int,
    channel: socket.socket,
    addresses: list[str],
    port: int,
    result: list[int],
) -> None:
    from .listener import Listener, listen_all

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    link = WorkerLink(host, loop)
    transport, _ = await loop.connect_accepted_socket(lambda: link, channel)
    host.forward = link.forward
    try:
        listener = Listener(
            host, loop, listen_all(addresses, port, reuse_port=True, who=f" worker={index}")
        )
    except KmsError as exc:
        log.warning("event=listen-failed worker=%d reason=%s", index, exc)
        link.control(FAILED)
        transport.close()
        result[0] = 1
        return
    link.control(READY)
    flusher = asyncio.ensure_future(_ticks(host, link, stop))
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()), link.lost]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    listener.close()
    # answer what is in flight (the owner is still there unless it was lost)
    deadline = loop.time() + host.deadline + 1.0
    while link.pending and not link.lost.done() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    while listener.held and loop.time() < deadline:  # let the held connections finish
        await asyncio.sleep(0.01)
    listener.abort_all()
    stop.set()
    await flusher
    for w in waiters:
        w.cancel()
    transport.close()
    host.rejects.summary()
    log.info(
        "event=worker-stop worker=%d pid=%d requests=%d rejected=%d",
        index,
        os.getpid(),
        link.answered,
        host.metrics.rejected,
    )


async def _ticks(host: KmsHost, link: WorkerLink, stop: asyncio.Event) -> None:
    """Once a second: the worker's rejection log closes its windows (as the host's does) and
    its connection counters go to the owner (for the metrics)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        host.rejects.tick()
        if link.transport is not None:
            blob = _COUNTERS.pack(*host.metrics.connection_counters(host.slots.open))
            link.transport.write(
                ASK.pack(COUNTERS, 0, 0, 0, b"", blob[:16], blob[16:32], blob[32:], 0, b"", 0)
            )


class WorkerLink(asyncio.Protocol):
    """The worker's end: forwards what :meth:`KmsHost.ask` let through, answers on return."""

    def __init__(self, host: KmsHost, loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.seq = 0
        self.pending: dict[int, tuple[Held, bytes, int, bytes]] = {}
        self.lost: asyncio.Future[None] = loop.create_future()
        self.answered = 0
        self.loop = loop
        #: what this loop iteration forwards, written in one go at its end (one syscall for
        #: all the requests that became ready together)
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def control(self, what: int, detail: int = 0) -> None:
        assert self.transport is not None
        self.transport.write(ASK.pack(what, 0, detail, 0, b"", b"", b"", b"", 0, b"", 0))

    def forward(self, conn: Held, data: bytes, asked: Ask) -> None:
        transport = self.transport
        if transport is None or self.lost.done():
            conn.reject("owner-gone")
            return
        version, kind, cmid, sku, kms, when, nonce, machine, wall = asked
        name = machine.encode()
        seq = self.seq = (self.seq + 1) & 0x7FFFFFFF
        self.pending[seq] = (conn, data, version, nonce)
        out = self.out
        if not out:
            self.loop.call_soon(self._flush)
        out.append(ASK.pack(seq, version, kind, when, nonce, cmid, sku, kms, len(name), name, wall))

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and out:
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        size, n = ANSWER.size, len(buf) // ANSWER.size
        if not n:
            return
        pending, reply = self.pending, self.host.reply
        for seq, status, count, _activated in ANSWER.iter_unpack(memoryview(buf)[: n * size]):
            item = pending.pop(seq, None)
            if item is None:
                continue
            conn, request, version, nonce = item
            if conn.fd < 0:  # cut off meanwhile (deadline): counted, not answered
                continue
            conn.answer(reply(request, version, status, nonce, count))
            self.answered += 1
        del buf[: n * size]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for conn, _data, _version, _nonce in self.pending.values():
            conn.reject("owner-gone")
        self.pending.clear()
        if not self.lost.done():
            self.lost.set_result(None)


class OwnerLink(asyncio.Protocol):
    """The owner's end of one worker's channel: decides, in order, what the worker asks."""

    def __init__(self, host: KmsHost, worker: Worker) -> None:
        self.host = host
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        size = ASK.size
        n = len(buf) // size
        if not n:
            return
        decide, out = self.host.decide, []
        for rec in ASK.iter_unpack(memoryview(buf)[: n * size]):
            seq, version, kind, when, nonce, cmid, sku, kms, nlen, name, wall = rec
            if version == 0:
                if seq == COUNTERS:
                    a, b, c, d, e = _COUNTERS.unpack(cmid + sku + kms)
                    self.worker.counters = (a, b, c, d, e)
                else:
                    self._control(seq, kind)
                continue
            machine = name[:nlen].decode()
            status, count, activated = decide(
                (version, kind, cmid, sku, kms, when, nonce, machine, wall)
            )
            out.append(ANSWER.pack(seq, status, count if count < 0xFFFF else 0xFFFF, activated))
        del buf[: n * size]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _control(self, what: int, detail: int) -> None:
        ready = self.worker.ready
        if ready is None or ready.done():
            return
        if what == READY:
            ready.set_result(None)
        else:
            ready.set_exception(
                KmsError(f"KMS worker {self.worker.index} could not listen on any address")
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        w = self.worker
        if w.ready is not None and not w.ready.done():
            w.ready.set_exception(KmsError(f"KMS worker {w.index} exited before listening"))
        if w.lost is not None and not w.lost.done():
            w.lost.set_result(None)
