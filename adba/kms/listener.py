"""How the KMS host takes its connections: straight off the listening socket.

A request is at most 200 bytes and its client has sent all of it before it reads anything,
so most connections need no event-loop machinery at all. The listening socket has
``TCP_DEFER_ACCEPT`` (the kernel hands a connection over only once its first bytes are
there) and ``TCP_CORK``, which every accepted socket inherits (the answer and the FIN leave
in one segment at the close: the client is woken once, not twice). When the listening
socket is readable, :class:`Listener` accepts what is queued (up to :data:`BATCH`), then
works in phases over the batch: read each connection once without blocking, answer each
complete request, send and close each. That is the **fast path** (accept, one fcntl, read,
write, close: no transport, no protocol object, no timer); doing each step for the whole
batch keeps its code hot in the caches (measured: X25519 + Ed25519 per connection cost a
third less that way than one connection at a time). A connection takes the fast path only
while it would not be refused or evicted (below), so the limits hold.

Everything else is **held** (:class:`Held`): the connection takes one of the host's slots
(:class:`~adba.kms.admission.Slots`: refused at once when its source is over its share or
every slot is taken and nobody gives way), the loop watches it for more bytes, and two timers
cut it off -- no first byte within ``first_byte`` of the accept (1 s), no whole request within
``deadline`` (2 s). A held connection is answered as soon as its request is complete, at the
client's half-close at the latest: a request's size follows from its first 6 bytes
(:func:`expected_size`: 144 for v1, 32 for a v2 hello, 200 for a sealed v2 request), so the
host does not wait for the FIN. Bytes that cannot start a request, a request longer than its
size, a half-close before the end: closed without an answer, counted, logged in aggregate.

In a worker of ``kms serve --workers`` a complete request whose decision belongs to the owner
process is held too (no timer, no slot: it is answered in the same loop iteration or the
next) until the owner's answer comes back (:mod:`adba.kms.workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ..errors import KmsError, ProtocolError
from .admission import source_of
from .protocol import (
    HELLO_SIZE,
    KIND_HELLO,
    MAX_REQUEST,
    REQUEST2_SIZE,
    REQUEST_MAGIC,
    REQUEST_SIZE,
    VERSION,
    VERSION_2,
)

if TYPE_CHECKING:
    from .host import Ask, KmsHost

__all__ = ["BATCH", "Held", "Listener", "expected_size", "listen"]

log = logging.getLogger("adba.kms.host")

#: connections accepted per wake-up of the listening socket, at most (then the loop runs the
#: rest of its work: held connections, the owner's answers, the store's saves)
BATCH = 64
#: seconds the kernel may keep a connected client that has sent nothing before handing it
#: over anyway (``TCP_DEFER_ACCEPT``; then the first-byte timer runs as for any other)
DEFER_ACCEPT = 1
_SETFL = fcntl.F_SETFL
_NONBLOCKING = os.O_RDWR | os.O_NONBLOCK
#: read one byte more than the longest request: a longer one is seen as such at once
_READ = MAX_REQUEST + 1
#: accept errors that mean "out of file descriptors or memory": stop accepting for a moment
_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PAUSE = 0.1


def expected_size(data: bytes | bytearray) -> int:
    """The size of the request ``data`` begins: 0 while that is not known yet (fewer than 6
    bytes of what may still be one), -1 when ``data`` begins no request of ours."""
    n = len(data)
    if n < 6:
        head = bytes(data[:4])
        if not REQUEST_MAGIC.startswith(head):
            return -1
        if n == 5 and data[4] not in (VERSION, VERSION_2):
            return -1
        return 0
    if data[:4] != REQUEST_MAGIC:
        return -1
    version = data[4]
    if version == VERSION:
        return REQUEST_SIZE
    if version == VERSION_2:
        return HELLO_SIZE if data[5] == KIND_HELLO else REQUEST2_SIZE
    return -1


def _not_a_request(data: bytes | bytearray) -> str:
    if len(data) >= 5 and data[:4] == REQUEST_MAGIC:
        return f"unsupported protocol version {data[4]}"
    return "not an ADBA KMS request"


def listen(
    address: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> list[socket.socket]:
    """Non-blocking listening sockets for ``address`` (each address it resolves to, as
    asyncio's ``create_server`` does: IPv6 ones v6-only), ``SO_REUSEADDR``, ``SO_REUSEPORT``
    if asked, ``TCP_DEFER_ACCEPT`` where the system has it; :class:`OSError` if none binds."""
    infos = socket.getaddrinfo(
        address or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _name, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
            with contextlib.suppress(AttributeError, OSError):  # inherited by each accept
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise OSError(errno.EADDRNOTAVAIL, f"{address} resolves to no address")
    return socks


def _accept_of(sock: socket.socket) -> Callable[[], tuple[int, Any]]:
    """The socket's own accept, which gives the descriptor and the peer's address and builds
    no socket object (``socket.accept`` wraps it in one, which the fast path never needs)."""
    accept: Callable[[], tuple[int, Any]] = cast("Any", sock)._accept
    return accept


class Held:
    """A connection the host keeps for a while: an incomplete request (watched for more
    bytes, in a slot, under the two deadlines), or, in a worker, a complete one waiting for
    the owner's decision. ``fd`` is -1 once it is closed."""

    __slots__ = ("buf", "counted", "fd", "listener", "peer", "source", "timer")

    def __init__(self, listener: Listener, fd: int, peer: Any, source: str) -> None:
        self.listener = listener
        self.fd = fd
        self.peer = peer
        self.source = source
        self.buf = bytearray()
        self.counted = False
        self.timer: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return self.fd >= 0

    def answer(self, reply: bytes) -> None:
        """Send ``reply`` and close (what the listener does on the fast path)."""
        fd = self.fd
        if fd < 0:
            return
        with contextlib.suppress(OSError):  # the client gave up meanwhile: nothing to do
            os.write(fd, reply)
        self.close()
        self.listener.host.served += 1

    def reject(self, reason: str, detail: str = "") -> None:
        """Close without an answer, counted and logged in aggregate."""
        if self.fd < 0:
            return
        host = self.listener.host
        host.metrics.rejected += 1
        host.rejects.note(reason, self.peer, detail)
        self.close()

    def close(self) -> None:
        fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        listener = self.listener
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if listener.held.pop(fd, None) is not None:  # it was being read
            listener.loop.remove_reader(fd)
        if self.counted:
            self.counted = False
            listener.host.slots.release(self, self.source)
        os.close(fd)

    # -- while it is read ----------------------------------------------------------------------
    def _first_byte(self) -> None:
        if self.fd < 0:
            return
        if not self.buf:
            self.reject("idle")
            return
        host = self.listener.host
        self.timer = self.listener.loop.call_later(host.deadline - host.first_byte, self._late)

    def _late(self) -> None:
        self.timer = None
        self.reject("deadline")

    def _readable(self) -> None:
        fd = self.fd
        if fd < 0:
            return
        try:
            data = os.read(fd, _READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the client
            self.close()
            return
        listener = self.listener
        if not data:  # the client half-closed: whatever it sent is all there is
            if not self.buf:  # a health check's probe: connected, sent nothing, closed
                log.debug("event=probe peer=%s", self.peer)
                self.close()
                return
            listener.complete(self, bytes(self.buf), eof=True)
            return
        buf = self.buf
        buf += data
        want = expected_size(buf)
        if want == len(buf) and want:
            listener.complete(self, bytes(buf))
        elif want < 0:
            self.reject("malformed", _not_a_request(buf))
        elif want and len(buf) > want:
            self.reject("too-long")


class Listener:
    """Accepts on ``socks`` and answers through ``host`` (:class:`~adba.kms.host.KmsHost`:
    its ``respond``/``ask``/``forward``, its slots, deadlines, metrics and reject log)."""

    def __init__(
        self, host: KmsHost, loop: asyncio.AbstractEventLoop, socks: list[socket.socket]
    ) -> None:
        self.host = host
        self.loop = loop
        self.socks = socks
        #: connections being read, by file descriptor
        self.held: dict[int, Held] = {}
        self._paused: set[int] = set()
        for sock in socks:
            loop.add_reader(sock.fileno(), self._ready, _accept_of(sock))  # (fd, peer) pairs

    @property
    def bound(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self.socks]

    def close(self) -> None:
        """Stop accepting (connections already held carry on)."""
        for sock in self.socks:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.socks = []

    def abort_all(self) -> None:
        """Close every held connection (at the very end: nothing may be left open)."""
        for held in list(self.held.values()):
            held.close()

    # -- accepting -----------------------------------------------------------------------------
    def _ready(self, accept: Callable[[], tuple[int, Any]]) -> None:
        """Accept what is queued, then work in phases over the batch -- read every request,
        answer every complete one, send and close -- so that each step's code (the kernel's
        TCP paths, the X25519 and Ed25519 code) stays hot in the caches across the batch."""
        batch: list[tuple[int, Any]] = []
        for _ in range(BATCH):
            try:
                batch.append(accept())
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._accept_failed(accept, exc)
                break
        if not batch:
            return
        complete: list[tuple[int, Any, str, bytes]] = []
        take = self._take
        for fd, peer in batch:
            try:
                take(fd, peer, complete)
            except Exception:  # never lose the descriptor, never stop accepting
                self._failed(fd, peer)
        if not complete:
            return
        if self.host.forward is None:
            answers = self._answer_all(complete)
        else:
            answers = []
            answer = self._answer
            for item in complete:
                try:
                    reply = answer(*item)
                except Exception:
                    self._failed(item[0], item[1])
                    continue
                if reply is not None:
                    answers.append((item[0], reply))
        write, close = os.write, os.close
        for fd, reply in answers:
            try:  # noqa: SIM105 (the hot path: a try costs less than contextlib.suppress)
                write(fd, reply)
            except OSError:  # the client gave up meanwhile
                pass
            close(fd)
        self.host.served += len(answers)

    def _failed(self, fd: int, peer: Any) -> None:
        log.exception("event=connection-failed peer=%s", peer)
        held = self.held.get(fd)
        if held is not None:
            held.close()
        else:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _accept_failed(self, accept: Callable[[], tuple[int, Any]], exc: OSError) -> None:
        if exc.errno == errno.ECONNABORTED:
            return
        self.host.rejects.note("accept-failed", None, exc.strerror or str(exc))
        if exc.errno in _PAUSE_ERRNOS:  # out of descriptors: let the held ones finish first
            for sock in self.socks:
                if _accept_of(sock) == accept and sock.fileno() not in self._paused:
                    self._paused.add(sock.fileno())
                    self.loop.remove_reader(sock.fileno())
                    self.loop.call_later(_PAUSE, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        self._paused.discard(fd)
        if fd >= 0 and sock in self.socks:
            self.loop.add_reader(fd, self._ready, _accept_of(sock))

    def _take(self, fd: int, peer: Any, complete: list[tuple[int, Any, str, bytes]]) -> None:
        """Read a new connection once: a complete request goes to ``complete``."""
        source = peer[0] if len(peer) == 2 else source_of(peer)
        slots = self.host.slots
        mine = slots.by_source.get(source)
        if slots.open >= slots.max_connections or (
            mine is not None and len(mine) >= slots.max_per_source
        ):  # it could not be held: it goes through admission (refused, or someone gives way)
            self._hold(fd, peer, source, b"")
            return
        fcntl.fcntl(fd, _SETFL, _NONBLOCKING)
        try:
            data = os.read(fd, _READ)
        except (BlockingIOError, InterruptedError):  # connected, nothing sent yet
            self._hold(fd, peer, source, b"")
            return
        except OSError:  # reset before anything
            os.close(fd)
            return
        want = expected_size(data)
        if want == len(data) and want:
            complete.append((fd, peer, source, data))
        elif not data:
            log.debug("event=probe peer=%s", peer)
            os.close(fd)
        elif want < 0 or (want and len(data) > want) or len(data) > MAX_REQUEST:
            self._reject_fd(fd, peer, "malformed" if want < 0 else "too-long", data)
        else:
            self._hold(fd, peer, source, data)

    def _reject_fd(self, fd: int, peer: Any, reason: str, data: bytes) -> None:
        host = self.host
        host.metrics.rejected += 1
        host.rejects.note(reason, peer, _not_a_request(data) if reason == "malformed" else "")
        os.close(fd)

    def _hold(self, fd: int, peer: Any, source: str, data: bytes) -> None:
        host = self.host
        held = Held(self, fd, peer, source)
        refusal, victim = host.slots.admit(held, source)
        if refusal is not None:
            if refusal == "full":
                host.metrics.refused += 1
            else:
                host.metrics.refused_source += 1
            host.rejects.note(refusal, peer)
            os.close(fd)
            return
        held.counted = True
        if victim is not None:
            host.metrics.evicted += 1
            victim.counted = False  # its slot went to the newcomer
            host.rejects.note("evicted", victim.peer)
            victim.close()
        if not data:
            fcntl.fcntl(fd, _SETFL, _NONBLOCKING)
        held.buf += data
        self.held[fd] = held
        self.loop.add_reader(fd, held._readable)
        if host.first_byte < host.deadline:
            held.timer = self.loop.call_later(host.first_byte, held._first_byte)
        else:
            held.timer = self.loop.call_later(host.deadline, held._late)

    # -- answering -----------------------------------------------------------------------------
    def complete(self, held: Held, data: bytes, *, eof: bool = False) -> None:
        """A held connection's request is all there (or the client said so): answer it."""
        if held.fd in self.held:  # stop watching it
            del self.held[held.fd]
            self.loop.remove_reader(held.fd)
        want = expected_size(data)
        if want <= 0 or want != len(data):
            if want < 0:
                held.reject("malformed", _not_a_request(data))
            else:
                held.reject("malformed", f"request is {len(data)} bytes, expected {want or 'more'}")
            return
        host = self.host
        try:
            if host.forward is None:
                reply = host.respond(data)
            else:
                asked = host.ask(data)
                if not isinstance(asked, bytes):
                    host.forward(held, data, asked)
                    return
                reply = asked
        except ProtocolError as exc:
            held.reject("malformed", exc.message)
            return
        held.answer(reply)

    def _answer_all(self, complete: list[tuple[int, Any, str, bytes]]) -> list[tuple[int, bytes]]:
        """The answers to a batch of complete requests, in three passes -- open and check
        them all (X25519), count them all, sign them all (Ed25519) -- so that each library's
        code stays in the caches for the whole batch; a refused request's descriptor is
        closed here."""
        host = self.host
        answers: list[tuple[int, bytes]] = []
        opened: list[tuple[int, Any, bytes, Ask]] = []
        ask = host.ask
        for fd, peer, _source, data in complete:
            try:
                asked = ask(data)
            except ProtocolError as exc:
                host.metrics.rejected += 1
                host.rejects.note("malformed", peer, exc.message)
                os.close(fd)
                continue
            except Exception:
                self._failed(fd, peer)
                continue
            if isinstance(asked, bytes):
                answers.append((fd, asked))
            else:
                opened.append((fd, peer, data, asked))
        decided: list[tuple[int, Any, bytes, int, int, bytes, int]] = []
        decide = host.decide
        for fd, peer, data, asked in opened:
            try:
                status, count, _activated = decide(asked)
            except Exception:
                self._failed(fd, peer)
                continue
            decided.append((fd, peer, data, asked[0], status, asked[6], count))
        reply = host.reply
        for fd, peer, data, version, status, nonce, count in decided:
            try:
                answers.append((fd, reply(data, version, status, nonce, count)))
            except Exception:
                self._failed(fd, peer)
        return answers

    def _answer(self, fd: int, peer: Any, source: str, data: bytes) -> bytes | None:
        """The fast path's answer to send on ``fd``; None when there is none to send (the
        request was refused and ``fd`` closed, or a worker holds it for the owner)."""
        host = self.host
        try:
            if host.forward is None:
                return host.respond(data)
            asked = host.ask(data)
            if isinstance(asked, bytes):
                return asked
            host.forward(Held(self, fd, peer, source), data, asked)
            return None
        except ProtocolError as exc:
            host.metrics.rejected += 1
            host.rejects.note("malformed", peer, exc.message)
            os.close(fd)
            return None


def listen_all(
    addresses: list[str], port: int, *, reuse_port: bool = False, who: str = ""
) -> list[socket.socket]:
    """Listening sockets for every address that binds (a warning for each one that does
    not); :class:`KmsError` when none does, or when the only one asked for does not."""
    socks: list[socket.socket] = []
    for address in addresses:
        try:
            socks += listen(address, port, reuse_port=reuse_port)
        except OSError as exc:
            if len(addresses) == 1:
                raise KmsError(f"cannot listen on {address} port {port}: {exc.strerror}") from exc
            log.warning(
                "event=listen-failed%s address=%s port=%d reason=%s",
                who,
                address,
                port,
                exc.strerror,
            )
    if not socks:
        raise KmsError(f"cannot listen on any of {addresses} port {port}")
    return socks
