"""The KMS host: its activated identity, and the asyncio server that answers requests.

A host answers only after its KMS host key (a CSVLK) was installed and activated by the
authority (``adba kms install-key``): the authority certifies the host's own Ed25519 key for
that CSVLK, and every response carries that certificate and a signature over the request.

The server reads one request per connection until the client half-closes (so a short, long
or slow request is told apart from a good one exactly), within a per-connection deadline;
at most ``max_connections`` are served at once (more are closed at once), so memory is
bounded. Counting is :class:`~adba.kms.cache.KmsCache`; saving is batched
(:mod:`adba.kms.store`) off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KmsError, KmsHostNotReady, ProtocolError
from .cache import KmsCache, Thresholds
from .protocol import (
    REQUEST_SIZE,
    STATUS_NOT_COVERED,
    STATUS_OK,
    HostCertificate,
    Response,
    parse_request,
    response_message,
)
from .store import KmsStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..catalog import Catalog

__all__ = ["HostIdentity", "KmsHost", "Metrics"]

log = logging.getLogger(__name__)

HOST_KEY, HOST_JSON, CSVLK_FILE, RECORDS = "host.key", "host.json", "csvlk.key", "kms.sqlite"
PENDING_KEY = "host.key.pending"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class HostIdentity:
    private_key: Ed25519PrivateKey
    certificate: HostCertificate
    csvlk_name: str
    kms_ids: frozenset[uuid.UUID]

    @classmethod
    def load(cls, state_dir: str | Path) -> HostIdentity:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        d = Path(state_dir)
        if not (d / HOST_JSON).is_file() or not (d / HOST_KEY).is_file():
            raise KmsHostNotReady(
                f"no activated KMS host key in {d}: run `adba kms install-key --state-dir {d} ...`"
            )
        if (d / HOST_KEY).stat().st_mode & 0o077:
            raise KmsError(f"{d / HOST_KEY} is readable by others: chmod 600 {d / HOST_KEY}")
        info = json.loads((d / HOST_JSON).read_text())
        key = serialization.load_pem_private_key((d / HOST_KEY).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KmsError(f"{d / HOST_KEY} is not an Ed25519 key")
        return cls(
            key,
            HostCertificate.from_bytes(bytes.fromhex(info["certificate"])),
            info["csvlk_name"],
            frozenset(uuid.UUID(k) for k in info["kms_ids"]),
        )

    @classmethod
    def install(
        cls,
        state_dir: str | Path,
        key: str,
        authority: Any,
        catalog: Catalog,
        *,
        host_id: str,
        now: int,
    ) -> HostIdentity:
        """Install a KMS host key and activate it online (``authority``: a local authority or
        a :class:`~adba.authority.client.RemoteAuthority`) with a new host key pair."""
        private = _new_key()
        act = authority.activate_kms_host(key, _public(private), host_id, catalog, now=now)
        return cls._save(
            state_dir, private, key, act.certificate, act.csvlk_name, act.kms_ids, host_id, now
        )

    @classmethod
    def _save(
        cls,
        state_dir: str | Path,
        private: Ed25519PrivateKey,
        key: str,
        cert: HostCertificate,
        csvlk_name: str,
        kms_ids: Any,
        host_id: str,
        now: int,
    ) -> HostIdentity:
        from cryptography.hazmat.primitives import serialization

        d = Path(state_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(
            d / HOST_KEY,
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _write_private(d / CSVLK_FILE, key.encode() + b"\n")
        info = {
            "certificate": cert.to_bytes().hex(),
            "epid": cert.epid,
            "csvlk_sku": str(cert.csvlk_sku),
            "csvlk_name": csvlk_name,
            "kms_ids": [str(k) for k in kms_ids],
            "host_id": host_id,
            "activated_at": now,
        }
        (d / HOST_JSON).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        (d / PENDING_KEY).unlink(missing_ok=True)
        return cls.load(d)

    @classmethod
    def begin_phone(cls, state_dir: str | Path, key: str, *, host_id: str) -> Any:
        """Telephone activation, step 1: a new host key pair (kept pending in the state dir)
        and the installation ID to read out to the authority."""
        from cryptography.hazmat.primitives import serialization

        from ..confirmation import KIND_KMS_HOST, Installation, host_binding, host_subject
        from ..keys import parse_key

        parsed = parse_key(key)
        d = Path(state_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = _new_key()
        _write_private(
            d / PENDING_KEY,
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return Installation.of(
            KIND_KMS_HOST, parsed, host_binding(_public(private)), host_subject(host_id)
        )

    @classmethod
    def finish_phone(
        cls,
        state_dir: str | Path,
        key: str,
        confirmation_id: str,
        catalog: Catalog,
        *,
        root_key: bytes,
        host_id: str,
    ) -> HostIdentity:
        """Telephone activation, step 2: the confirmation ID is the authority's signature on
        the host certificate; everything else in the certificate follows from the key and
        the time, so the host rebuilds it and checks it under the pinned root key."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from ..authority.local import KMS_CERT_DAYS, make_kms_epid
        from ..confirmation import Confirmation, verify_root_signature
        from ..keys import parse_key
        from .protocol import certificate_message

        d = Path(state_dir)
        if not (d / PENDING_KEY).is_file():
            raise KmsError(
                f"no pending host key in {d}: run `adba kms install-key --get-iid` first"
            )
        private = serialization.load_pem_private_key((d / PENDING_KEY).read_bytes(), password=None)
        assert isinstance(private, Ed25519PrivateKey)
        parsed = parse_key(key)
        confirmation = Confirmation.parse(confirmation_id)
        product = catalog.csvlk_by_code(parsed.code)
        epid = make_kms_epid(parsed.code, parsed.serial, confirmation.issued_at)
        not_after = confirmation.issued_at + KMS_CERT_DAYS * 86400
        public = _public(private)
        if not verify_root_signature(
            root_key,
            confirmation.signature,
            certificate_message(public, epid, product.sku, not_after),
        ):
            raise KmsError(
                "the confirmation ID does not answer this host's installation ID (another key "
                "or host, or not from the pinned authority)"
            )
        cert = HostCertificate(public, epid, product.sku, not_after, confirmation.signature)
        return cls._save(
            d, private, key, cert, product.name, product.kms_ids, host_id, confirmation.issued_at
        )


def _new_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def _public(private: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


class Metrics:
    """Plain counters on the request path; exported for Prometheus (``--metrics-port``) by a
    prometheus_client collector that reads them at scrape time, in its own thread."""

    def __init__(self) -> None:
        self.requests = 0
        self.rejected = 0
        self.refused = 0
        self.activated = 0
        self.open = 0

    def start_exporter(self, cache: KmsCache, address: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        metrics = self

        class _Collector:
            def collect(self) -> Any:
                for name, text, value in (
                    ("adba_kms_requests", "Valid activation requests answered.", metrics.requests),
                    (
                        "adba_kms_rejected",
                        "Connections closed: malformed or late request.",
                        metrics.rejected,
                    ),
                    (
                        "adba_kms_refused",
                        "Connections refused at the connection limit.",
                        metrics.refused,
                    ),
                    (
                        "adba_kms_activated",
                        "Answers whose count met the threshold.",
                        metrics.activated,
                    ),
                ):
                    yield CounterMetricFamily(name, text, value=value)
                yield GaugeMetricFamily(
                    "adba_kms_open_connections", "Connections being served.", value=metrics.open
                )
                yield GaugeMetricFamily(
                    "adba_kms_count",
                    "Distinct machines in the cache (the count).",
                    value=len(cache.entries),
                )
                yield GaugeMetricFamily(
                    "adba_kms_cache_capacity",
                    "How many machines the cache holds.",
                    value=cache.capacity,
                )

        registry = CollectorRegistry()
        registry.register(_Collector())
        start_http_server(port, addr=address, registry=registry)


class KmsHost:
    def __init__(
        self,
        identity: HostIdentity,
        store: KmsStore,
        *,
        thresholds: Thresholds | None = None,
        renewal_minutes: int = 7 * 24 * 60,
        retry_minutes: int = 120,
        deadline: float = 5.0,
        max_connections: int = 512,
        flush_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.store = store
        self.cache = KmsCache(thresholds)
        loaded = store.load(self.cache)
        log.info("event=start clients_loaded=%d epid=%s", loaded, identity.certificate.epid)
        self.renewal_minutes = renewal_minutes
        self.retry_minutes = retry_minutes
        self.deadline = deadline
        self.max_connections = max_connections
        self.flush_interval = flush_interval
        self.clock = clock
        self.metrics = Metrics()
        self._sign = identity.private_key.sign
        self._stop: asyncio.Event | None = None

    # -- the request path (no I/O) -------------------------------------------------------------
    def respond(self, data: bytes) -> bytes:
        """Answer one request (raises :class:`ProtocolError` for anything malformed)."""
        request = parse_request(data)
        now = int(self.clock())
        if request.kms_id in self.identity.kms_ids:
            count, activated = self.cache.observe(request, now)
            status = STATUS_OK
        else:
            count, activated, status = 0, False, STATUS_NOT_COVERED
        body = Response(
            status,
            request.nonce,
            min(count, 0xFFFF),
            self.renewal_minutes,
            self.retry_minutes,
            now,
            self.identity.certificate,
        ).body()
        self.metrics.requests += 1
        self.metrics.activated += activated
        level = logging.INFO if status == STATUS_OK else logging.DEBUG  # probes ask uncovered IDs
        if log.isEnabledFor(level):
            log.log(
                level,
                "event=request machine=%s cmid=%s kms_id=%s kind=%s count=%d activated=%s "
                "status=%d",
                request.machine,
                request.cmid,
                request.kms_id,
                "server" if request.kind else "client",
                count,
                activated,
                status,
            )
        return body + self._sign(response_message(data, body))

    # -- the server ----------------------------------------------------------------------------
    def _reject(self, transport: asyncio.BaseTransport, reason: str) -> None:
        self.metrics.rejected += 1
        log.warning(
            "event=rejected peer=%s reason=%s", transport.get_extra_info("peername"), reason
        )
        transport.abort()  # type: ignore[attr-defined]

    async def _flusher(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.flush_interval)
            self.flush()

    def flush(self) -> None:
        try:
            n = self.store.save(self.cache)
        except Exception as exc:
            log.error("event=flush-failed reason=%s", exc)
            return
        if n:
            log.debug("event=flush rows=%d", n)

    async def serve(
        self,
        addresses: list[str],
        port: int,
        *,
        metrics_port: int | None = None,
        ready: Callable[[list[tuple[str, int]]], None] | None = None,
    ) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`stop`); saves the records on the way out."""
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        servers = []
        for address in addresses:
            try:
                servers.append(
                    await loop.create_server(
                        lambda: _Connection(self),
                        host=address,
                        port=port,
                        reuse_address=True,
                        backlog=1024,
                    )
                )
            except OSError as exc:
                if len(addresses) == 1:
                    raise KmsError(
                        f"cannot listen on {address} port {port}: {exc.strerror}"
                    ) from exc
                log.warning(
                    "event=listen-failed address=%s port=%d reason=%s", address, port, exc.strerror
                )
        if not servers:
            raise KmsError(f"cannot listen on any of {addresses} port {port}")
        if metrics_port is not None:
            self.metrics.start_exporter(self.cache, addresses[0], metrics_port)
            log.info("event=metrics address=%s port=%d", addresses[0], metrics_port)
        bound = [s.getsockname()[:2] for srv in servers for s in srv.sockets]
        log.info("event=listening addresses=%s", " ".join(f"{h}:{p}" for h, p in bound))
        if ready is not None:
            ready(bound)
        flusher = asyncio.create_task(self._flusher())
        await self._stop.wait()
        for srv in servers:
            srv.close()
        await flusher
        self.flush()
        log.info("event=stop")

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


class _Connection(asyncio.Protocol):
    """One client connection: collect at most one request until the client half-closes,
    answer, close. A plain protocol (no stream objects, no task per connection): the host
    spends its time on the request, not on the event-loop machinery. The deadline timer runs
    until the connection is gone, so a client that neither sends nor reads is cut off too."""

    __slots__ = ("buf", "counted", "host", "timer", "transport")

    def __init__(self, host: KmsHost) -> None:
        self.host = host
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        host = self.host
        if host.metrics.open >= host.max_connections:
            host.metrics.refused += 1
            transport.abort()
            return
        host.metrics.open += 1
        self.counted = True
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(host.deadline, self._late)

    def _late(self) -> None:
        if self.transport is not None:
            self.host._reject(self.transport, "deadline")
            self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.buf += data
        if len(self.buf) > REQUEST_SIZE:
            self.host._reject(self.transport, "request too long")
            self.transport = None

    def eof_received(self) -> bool:
        transport = self.transport
        if transport is None:
            return False
        if not self.buf:  # a health check's probe: connected, sent nothing, closed
            log.debug("event=probe peer=%s", transport.get_extra_info("peername"))
            transport.close()
            self.transport = None
            return False
        try:
            reply = self.host.respond(bytes(self.buf))
        except ProtocolError as exc:
            self.host._reject(transport, exc.message)
            self.transport = None
            return False
        transport.write(reply)
        transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.counted:
            self.host.metrics.open -= 1
            self.counted = False
        self.transport = None


def default_addresses() -> list[str]:
    """IPv4 and, where the machine has it, IPv6."""
    return ["0.0.0.0", "::"] if socket.has_ipv6 else ["0.0.0.0"]


def status_view(
    state_dir: str | Path, *, now: int | None = None, thresholds: Thresholds | None = None
) -> dict[str, Any]:
    """What ``adba kms status`` shows, read from the host's files (the host may be running;
    its records lag by at most the flush interval)."""
    d = Path(state_dir)
    now = int(time.time()) if now is None else now
    thresholds = thresholds or Thresholds()
    info = json.loads((d / HOST_JSON).read_text()) if (d / HOST_JSON).is_file() else {}
    store = KmsStore(d / RECORDS, readonly=True)
    try:
        capacity = store.capacity()
        clients = [c for c in store.clients() if c.last_seen > now - thresholds.expiry]
        published = store.meta("published")
    finally:
        store.close()
    groups = []
    for kms_id in sorted({c.kms_id for c in clients}, key=str):
        members = [c for c in clients if c.kms_id == kms_id]
        groups.append(
            {
                "kms_id": str(kms_id),
                "machines": len(members),
                "clients": sum(1 for c in members if c.kind == 0),
                "servers": sum(1 for c in members if c.kind == 1),
            }
        )
    return {
        "epid": info.get("epid"),
        "csvlk": info.get("csvlk_name"),
        "kms_ids": info.get("kms_ids", []),
        "activated": bool(info),
        "count": len(clients),
        "cache_capacity": capacity,
        "groups": groups,
        "published": json.loads(published) if published else [],
        "thresholds": {"client": thresholds.client, "server": thresholds.server},
    }
