"""Running the authority's ASGI app under uvicorn, hardened against slow and many clients.

uvicorn has a keep-alive timeout but no deadline for a request to arrive: a client that
opens a connection and trickles its head (or body) holds a file descriptor for ever, and a
thousand of them exhaust the process. Here each connection is an :class:`h11` protocol with:

- a **request deadline**: the request head and body must be complete within
  ``request_timeout`` seconds of the connection (or of its first byte after a keep-alive
  pause), else the connection is dropped;
- a **connection cap** below the file-descriptor limit (``max_connections``) and a **cap per
  source address** (``max_per_source``), so one address cannot starve the others; a
  connection over a cap is closed at once;
- a small **accept backlog**, so a burst of queued connections cannot take every descriptor
  before the caps see them;
- **quiet logs**: dropped connections, refused ones and event-loop errors are counted and
  logged as one line at most every :data:`LOG_EVERY` seconds, never with a traceback.

:func:`serve` returns the exit code: 130 after SIGINT, 0 after SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import AuthorityError, InvalidInput

__all__ = ["LOG_EVERY", "Limits", "serve"]

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Limits:
    request_timeout: float = 10.0
    keep_alive: int = 5
    max_connections: int = 0  #: 0: from the file-descriptor limit
    max_per_source: int = 0  #: 0: an eighth of max_connections (4 to 64)

    def resolved(self) -> tuple[int, int, int]:
        """(max connections, max per source, accept backlog) for this process."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft <= 0:
            soft = 65536
        reserve = max(64, soft // 8)  # sqlite, log, listener, the accept burst
        room = max(16, min(4096, soft - reserve))
        total = min(self.max_connections, room) if self.max_connections else room
        per_source = self.max_per_source or max(4, min(64, total // 8))
        backlog = max(8, min(128, reserve // 2))
        return total, min(per_source, total), backlog


class _Quiet:
    """Counts noisy events by kind and logs each kind at most once per LOG_EVERY seconds."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.sample: dict[str, str] = {}

    def note(self, kind: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.sample[kind] = detail
        now = time.monotonic()
        if now - self.last.get(kind, -1e9) >= self.every:
            n = self.counts.pop(kind)
            self.last[kind] = now
            log.warning("%s: %d in the last %.0f s (latest: %s)", kind, n, self.every, detail)


def _protocol(limits: Limits, total: int, per_source: int, quiet: _Quiet) -> type[H11Protocol]:
    open_by_source: dict[str, int] = {}
    live: set[Any] = set()
    waiting = (h11.IDLE, h11.SEND_BODY)

    class Guarded(H11Protocol):
        _source: str | None = None
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            source = self.client[0] if self.client else "?"
            held = open_by_source.get(source, 0)
            if len(live) >= total or held >= per_source:
                why = "the connection cap" if len(live) >= total else "the cap per address"
                quiet.note("connections refused", f"{source} over {why}")
                transport.abort()
                return
            self._source = source
            open_by_source[source] = held + 1
            live.add(self)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._source is not None:
                left = open_by_source.get(self._source, 1) - 1
                if left > 0:
                    open_by_source[self._source] = left
                else:
                    open_by_source.pop(self._source, None)
                self._source = None
                live.discard(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state not in waiting:
                self._disarm()  # the whole request is in

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.request_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def send_400_response(self, msg: str) -> None:
            """Not HTTP at all: a 400 in our format too (uvicorn's is plain text)."""
            body = b'{"error":"bad-request","message":"not a valid HTTP/1.1 request"}'
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            try:
                out = self.conn.send(h11.Response(status_code=400, headers=headers))
                out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
                out += self.conn.send(h11.EndOfMessage()) or b""
                self.transport.write(out)
            except h11.LocalProtocolError:
                pass  # too late in the exchange for an answer
            self.transport.close()

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state in waiting and not self.transport.is_closing():
                quiet.note(
                    "slow connections dropped",
                    f"{self._source} sent no complete request in {limits.request_timeout:g} s",
                )
                self.transport.abort()

    return Guarded


class _QuietLog(logging.Filter):
    """uvicorn's own per-connection warnings ("Invalid HTTP request received.") folded into
    one line per LOG_EVERY seconds, and no traceback from uvicorn ever."""

    def __init__(self, quiet: _Quiet) -> None:
        super().__init__()
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            text = record.getMessage().splitlines()[0][:200]
            if record.exc_info and record.exc_info[1] is not None:
                text = f"{text} ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.quiet.note("server warnings", text)
            return False
        return True


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, quiet: _Quiet) -> None:
        super().__init__(config)
        self.quiet = quiet
        self.signals: list[int] = []

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.signals.append(sig)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the server gracefully; unlike uvicorn's, the signal is not
        raised again afterwards: :func:`serve` turns it into the exit code."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: Any = None) -> None:
        quiet = self.quiet

        def on_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            what = str(context.get("message", "event loop error")).splitlines()[0][:120]
            quiet.note("event loop errors", f"{what}: {type(exc).__name__ if exc else ''} {exc}")

        asyncio.get_running_loop().set_exception_handler(on_loop_error)
        await super().startup(sockets)


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    limits: Limits | None = None,
) -> int:
    """Serve ``app`` until SIGINT (returns 130) or SIGTERM (returns 0)."""
    limits = limits or Limits()
    total, per_source, backlog = limits.resolved()
    quiet = _Quiet()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        http=_protocol(limits, total, per_source, quiet),
        lifespan="off",
        backlog=backlog,
        timeout_keep_alive=limits.keep_alive,
        log_level="info",
        access_log=True,
        server_header=False,
    )
    _load(config, ssl_certfile, ssl_keyfile)
    sock = _listen(host, port)
    server = _Server(config, quiet)
    for name in ("uvicorn.error", "asyncio"):
        logging.getLogger(name).addFilter(_QuietLog(quiet))
    log.info(
        "serving on %s:%d: at most %d connections, %d per address, %g s to send a request",
        host,
        port,
        total,
        per_source,
        limits.request_timeout,
    )
    bound = sock.getsockname()
    logging.getLogger("uvicorn.error").info(
        "serving on %s://%s:%d (Ctrl-C to quit)",
        "https" if ssl_certfile else "http",
        f"[{bound[0]}]" if ":" in bound[0] else bound[0],
        bound[1],
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 130 if signal.SIGINT in server.signals else 0


def _load(config: uvicorn.Config, certfile: str | None, keyfile: str | None) -> None:
    """The TLS files read (uvicorn would exit with a traceback): a bad one is bad input."""
    import ssl

    for flag, name in (("--tls-cert", certfile), ("--tls-key", keyfile)):
        if name is not None:
            try:
                with open(name, "rb"):
                    pass
            except OSError as exc:
                raise InvalidInput(f"{flag} {name}: {exc.strerror or exc}", path=name) from exc
    try:
        config.load()
    except ssl.SSLError as exc:
        raise InvalidInput(
            f"--tls-cert {certfile} / --tls-key {keyfile}: not a PEM certificate chain and its "
            f"private key ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        name = exc.filename or f"{certfile} or {keyfile}"
        raise InvalidInput(
            f"--tls-cert/--tls-key: {name}: {exc.strerror or exc}", path=str(name)
        ) from exc


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts: a name that does not resolve is
    bad input (2), an address in use or not ours is :class:`AuthorityError` (13), each one
    line (uvicorn would log it and exit 1 or 3)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise InvalidInput(f"--listen {host!r}: not an address to listen on ({reason})") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise AuthorityError(
            f"the authority cannot listen on {host} port {port}: {exc.strerror or exc}"
        ) from exc
    sock.set_inheritable(True)
    return sock
