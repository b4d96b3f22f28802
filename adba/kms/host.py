"""The KMS host: its activated identity, and the asyncio server that answers requests.

A host answers only after its KMS host key (a CSVLK) was installed and activated by the
authority (``adba kms install-key``): the authority certifies the host's own Ed25519 key for
that CSVLK, and every response carries that certificate and a signature over the request.

The server reads one request per connection until the client half-closes (so a short, long
or slow request is told apart from a good one exactly): its first byte within ``first_byte``
(1 s) and the whole of it within ``deadline`` (2 s). At most ``max_connections`` (512) are
served at once and at most ``max_per_source`` (64) from one source, with the fullest source
giving way when all slots are taken (:mod:`adba.kms.admission`), so memory is bounded and no
address can starve the others; rejections are logged in aggregate. Counting is
:class:`~adba.kms.cache.KmsCache`; saving is batched (:mod:`adba.kms.store`) in a thread of
its own, off the request path, and retried with a backoff when it fails.

One host per state dir: :class:`StateLock` (``flock`` on ``kms.lock``) refuses a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KmsError, KmsHostNotReady
from .admission import RejectLog, Slots
from .cache import KmsCache, Thresholds
from .envelope import Opener
from .listener import Held, Listener, listen_all
from .protocol import (
    _RESP_HEAD,
    MAX_SKEW,
    REQUEST2_SIZE,
    RESPONSE_MAGIC,
    STATUS_CLOCK_SKEW,
    STATUS_KEY,
    STATUS_NOT_COVERED,
    STATUS_OK,
    STATUS_REPLAYED,
    VERSION,
    VERSION_2,
    HostCertificate,
    parse_sealed_header,
    plaintext_fields,
    request_fields,
    response_body,
    response_message,
    sealed_fields,
    uuid_of,
)
from .replay import CAPACITY as REPLAY_CAPACITY
from .replay import ReplayCache
from .store import KmsStore, Row

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..catalog import Catalog
    from .workers import Worker

__all__ = [
    "HostIdentity",
    "KmsHost",
    "Metrics",
    "StateLock",
    "cache_view",
    "client_rows",
    "loop_name",
    "run_loop",
    "serving",
    "signer",
    "status_view",
]

log = logging.getLogger(__name__)

#: what :meth:`KmsHost.ask` hands to :meth:`KmsHost.decide`: version, kind, CMID, SKU,
#: KMS ID (16 bytes each), client time, nonce, machine name, the host's clock when asked
Ask = tuple[int, int, bytes, bytes, bytes, int, bytes, str, int]
_RESP_PREFIX = response_message(b"", b"")

HOST_KEY, HOST_JSON, CSVLK_FILE, RECORDS = "host.key", "host.json", "csvlk.key", "kms.sqlite"
PENDING_KEY, LOCK = "host.key.pending", "kms.lock"

#: the whole request within DEADLINE seconds of connecting, its first byte within FIRST_BYTE
DEADLINE, FIRST_BYTE = 2.0, 1.0
#: connections served at once, and what one source (address or IPv6 /64) may hold of them
MAX_CONNECTIONS, MAX_PER_SOURCE = 512, 64


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
        self.refused_source = 0
        self.evicted = 0
        self.activated = 0
        #: the other processes' connection counters (with --workers: rejected, refused,
        #: refused_source, evicted, open), as they last reported them (once a second)
        self.others: Callable[[], tuple[int, int, int, int, int]] = lambda: (0, 0, 0, 0, 0)

    def connection_counters(self, open_now: int) -> tuple[int, int, int, int, int]:
        """(rejected, refused, refused_source, evicted, open) of this process."""
        return self.rejected, self.refused, self.refused_source, self.evicted, open_now

    def start_exporter(self, cache: KmsCache, slots: Slots[Any], address: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        metrics = self

        class _Collector:
            def collect(self) -> Any:
                rejected, refused, refused_source, evicted, open_elsewhere = metrics.others()
                for name, text, value in (
                    ("adba_kms_requests", "Valid activation requests answered.", metrics.requests),
                    (
                        "adba_kms_rejected",
                        "Connections closed: malformed or late request.",
                        metrics.rejected + rejected,
                    ),
                    (
                        "adba_kms_refused",
                        "Connections refused at the connection limit.",
                        metrics.refused + refused,
                    ),
                    (
                        "adba_kms_refused_per_source",
                        "Connections refused: their source held its share of the slots.",
                        metrics.refused_source + refused_source,
                    ),
                    (
                        "adba_kms_evicted",
                        "Connections dropped to make room (from the source holding the most).",
                        metrics.evicted + evicted,
                    ),
                    (
                        "adba_kms_activated",
                        "Answers whose count met the threshold.",
                        metrics.activated,
                    ),
                ):
                    yield CounterMetricFamily(name, text, value=value)
                yield GaugeMetricFamily(
                    "adba_kms_open_connections",
                    "Connections being served.",
                    value=slots.open + open_elsewhere,
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
        deadline: float = DEADLINE,
        first_byte: float = FIRST_BYTE,
        max_connections: int = MAX_CONNECTIONS,
        max_per_source: int = MAX_PER_SOURCE,
        flush_interval: float = 1.0,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
        wall: Callable[[], float] = time.time,
        replay_capacity: int = REPLAY_CAPACITY,
    ) -> None:
        self.identity = identity
        self.store = store
        self.clock = clock
        #: the real clock: v2's 4-hour rule compares it with the client's, and the replay
        #: cache keys on it (``clock``, the calendar the cache counts in, may be injected)
        self.wall = wall
        self.cache = KmsCache(thresholds)
        loaded, left_out = store.load(self.cache, int(clock()))
        log.info(
            "event=start clients_loaded=%d stale_rows=%d capacity=%d epid=%s",
            loaded,
            left_out,
            self.cache.capacity,
            identity.certificate.epid,
        )
        self.renewal_minutes = renewal_minutes
        self.retry_minutes = retry_minutes
        self.deadline = deadline
        self.first_byte = min(first_byte, deadline)
        self.slots: Slots[Held] = Slots(max_connections, max_per_source)
        self.flush_interval = flush_interval
        self.metrics = Metrics()
        self.rejects = RejectLog(log_interval)
        self._sign = signer(identity.private_key)
        self._opener = Opener(identity.private_key)
        self._open = self._opener.open
        self._key_id = self._opener.key_id
        self._kms_ids = frozenset(k.bytes for k in identity.kms_ids)
        self._ids: dict[bytes, uuid.UUID] = {}
        self._certificate = identity.certificate.to_bytes()
        self.replay = ReplayCache(MAX_SKEW, replay_capacity)
        self._stop: asyncio.Event | None = None
        #: the signal that stopped :meth:`serve` (SIGINT: the CLI exits 130)
        self.signal: int | None = None
        #: the cache version the table holds (-1: save at once -- stale rows or unsaved file)
        self._saved_version = -1 if left_out or store.has_unsaved() else self.cache.version
        self._failures = 0
        self._saver: concurrent.futures.ThreadPoolExecutor | None = None
        #: in a worker (``--workers``): hands a request's fields to the owner of the cache
        self.forward: Callable[[Held, bytes, Ask], None] | None = None
        #: why the host stopped on its own (a worker died), for the caller to raise
        self.failure: str | None = None
        #: answers this process sent (with --workers: its own share of the connections)
        self.served = 0

    @property
    def max_connections(self) -> int:
        return self.slots.max_connections

    # -- the request path (no I/O) -------------------------------------------------------------
    #
    # Three steps, so that several processes can share one cache (``kms serve --workers``):
    # :meth:`ask` (parse, open, the clock rule; no shared state), :meth:`decide` (the replay
    # cache and the count: the one owner of the shared state) and :meth:`reply` (sign). No
    # request object on the way: the fields travel as a tuple, UUIDs are built once.
    def respond(self, data: bytes) -> bytes:
        """Answer one request of either version (raises :class:`ProtocolError` for anything
        malformed, and for a v2 request that does not open)."""
        asked = self.ask(data)
        if type(asked) is bytes:
            return asked
        assert isinstance(asked, tuple)
        status, count, _activated = self.decide(asked)
        return self.reply(data, asked[0], status, asked[6], count)

    def ask(self, data: bytes) -> bytes | Ask:
        """A refusal to send as it is (hello, clock skew, old key), or the request's fields
        for :meth:`decide`; :class:`ProtocolError` for anything malformed."""
        if len(data) <= 4 or data[4] != VERSION_2:
            kind, cmid, sku, kms, when, nonce, machine = request_fields(data)
            return (VERSION, kind, cmid, sku, kms, when, nonce, machine, 0)
        if len(data) != REQUEST2_SIZE:
            header = parse_sealed_header(data)  # a hello (anything else raises)
            return self._refuse(data, STATUS_KEY, header.nonce, int(self.wall()), "hello")
        kind, when, nonce, key_id = sealed_fields(data)
        wall = int(self.wall())
        if abs(when - wall) > MAX_SKEW:
            return self._refuse(data, STATUS_CLOCK_SKEW, nonce, wall, "clock-skew")
        if key_id != self._key_id:
            return self._refuse(data, STATUS_KEY, nonce, wall, "old-key")
        cmid, sku, kms, machine = plaintext_fields(self._open(data))
        return (VERSION_2, kind, cmid, sku, kms, when, nonce, machine, wall)

    def decide(self, asked: Ask) -> tuple[int, int, bool]:
        """(status, count, activated) for a request :meth:`ask` let through: the replay
        cache (v2) and the count -- the only step that reads or changes shared state."""
        version, kind, cmid, sku, kms, when, nonce, machine, wall = asked
        if version == VERSION_2 and not self.replay.admit(nonce, when, wall):
            self.rejects.note("replayed", None, "")
            return STATUS_REPLAYED, 0, False
        now = int(self.clock())
        if kms in self._kms_ids:
            kms_id = self._ids.get(kms) or self._intern(kms)
            sku_id = self._ids.get(sku) or self._intern(sku)
            count, activated = self.cache.see(uuid_of(cmid), kms_id, sku_id, kind, machine, now)
            status = STATUS_OK
        else:
            count, activated, status = 0, False, STATUS_NOT_COVERED
        metrics = self.metrics
        metrics.requests += 1
        if activated:
            metrics.activated += 1
        level = logging.INFO if status == STATUS_OK else logging.DEBUG  # probes ask uncovered IDs
        if log.isEnabledFor(level):
            log.log(
                level,
                "event=request machine=%s cmid=%s kms_id=%s kind=%s count=%d activated=%s "
                "status=%d version=%d",
                machine,
                uuid_of(cmid),
                uuid_of(kms),
                "server" if kind else "client",
                count,
                activated,
                status,
                version,
            )
        return status, count, activated

    def _intern(self, raw: bytes) -> uuid.UUID:
        """One UUID object per SKU / KMS ID seen (a few dozen at most; bounded anyway)."""
        if len(self._ids) >= 4096:
            self._ids.clear()
        u = self._ids[raw] = uuid_of(raw)
        return u

    def reply(self, data: bytes, version: int, status: int, nonce: bytes, count: int) -> bytes:
        """The signed response to ``data`` (its host time: now)."""
        body = (
            _RESP_HEAD.pack(
                RESPONSE_MAGIC,
                version,
                status,
                nonce,
                count if count < 0xFFFF else 0xFFFF,
                self.renewal_minutes,
                self.retry_minutes,
                int(self.clock()),
            )
            + self._certificate
        )
        return body + self._sign(_RESP_PREFIX + data + body)

    def _refuse(self, data: bytes, status: int, nonce: bytes, now: int, why: str) -> bytes:
        """A signed answer that counts nobody: the key (a hello), clock skew, an old key; its
        host time is the real clock the client's was judged against."""
        body = response_body(
            VERSION_2,
            status,
            nonce,
            0,
            self.renewal_minutes,
            self.retry_minutes,
            now,
            self._certificate,
        )
        if why != "hello":
            self.rejects.note(why, None, "")
        return body + self._sign(response_message(data, body))

    # -- the server ----------------------------------------------------------------------------
    async def _flusher(self) -> None:
        assert self._stop is not None
        delay = self.flush_interval
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            self.rejects.tick()
            if self._stop.is_set():
                break
            if await self._save_in_thread():
                delay = self.flush_interval
            else:  # back off: 2, 4, 8 ... 30 s; the cache keeps every machine meanwhile
                delay = min(max(delay, self.flush_interval) * 2, 30.0)

    def _snapshot(self) -> tuple[int, int, list[Row]] | None:
        self.cache.expire(int(self.clock()))
        version, capacity, rows = self.cache.snapshot()
        return None if version == self._saved_version else (version, capacity, rows)

    def _saved(self, version: int, n: int) -> None:
        self._saved_version = version
        if self._failures:
            log.warning("event=flush-recovered failures=%d rows=%d", self._failures, n)
            self._failures = 0
        elif n:
            log.debug("event=flush rows=%d", n)

    def _failed(self, rows: int, exc: BaseException) -> None:
        self._failures += 1
        log.error(
            "event=flush-failed unsaved_machines=%d failures=%d reason=%s (kept in memory, "
            "retried)",
            rows,
            self._failures,
            exc,
        )

    async def _save_in_thread(self) -> bool:
        """Save what changed in the store's own thread: the event loop never waits for SQLite."""
        snap = self._snapshot()
        if snap is None:
            return True
        version, capacity, rows = snap
        assert self._saver is not None
        loop = asyncio.get_running_loop()
        try:
            n = await loop.run_in_executor(self._saver, self.store.save, capacity, rows)
        except (sqlite3.Error, OSError) as exc:
            self._failed(len(rows), exc)
            return False
        self._saved(version, n)
        return True

    def flush(self, *, attempts: int = 1, pause: float = 0.5) -> bool:
        """Save now, in this thread (at shutdown); after ``attempts`` failures the snapshot
        goes to the unsaved file so that the next start has it."""
        snap = self._snapshot()
        if snap is None:
            return True
        version, capacity, rows = snap
        for attempt in range(attempts):
            try:
                n = self.store.save(capacity, rows)
            except (sqlite3.Error, OSError) as exc:
                self._failed(len(rows), exc)
                if attempt + 1 < attempts:
                    time.sleep(pause)
                continue
            self._saved(version, n)
            return True
        try:
            self.store.write_unsaved(capacity, rows)
            log.error(
                "event=unsaved machines=%d file=%s (loaded at the next start)",
                len(rows),
                self.store.unsaved_path,
            )
        except OSError as exc:
            log.critical("event=unsaved-lost machines=%d reason=%s", len(rows), exc)
        return False

    async def record_meta(self, name: str, value: str) -> None:
        """Write a metadata row in the store's thread (never blocks the event loop)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._saver, self.store.set_meta, name, value)

    def _signalled(self, signum: int) -> None:
        self.signal = signum
        if self._stop is not None:
            self._stop.set()

    async def serve(
        self,
        addresses: list[str],
        port: int,
        *,
        metrics_port: int | None = None,
        ready: Callable[[list[tuple[str, int]]], None] | None = None,
        workers: list[Worker] | None = None,
    ) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`stop`); saves the records on the way out.
        With ``workers`` (:func:`~adba.kms.workers.fork_workers`), they listen and this
        process owns the cache, the replay cache and the store (:mod:`adba.kms.workers`)."""
        self._stop = asyncio.Event()
        self._saver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kms-store")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._signalled, sig)
        try:
            if workers:
                await self._own(loop, workers, addresses, port, metrics_port, ready)
            else:
                await self._serve(loop, addresses, port, metrics_port, ready)
        finally:
            self._saver.shutdown(wait=True)
            self.flush(attempts=6)
            self.rejects.summary()
            log.info("event=stop")

    async def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        addresses: list[str],
        port: int,
        metrics_port: int | None,
        ready: Callable[[list[tuple[str, int]]], None] | None,
    ) -> None:
        assert self._stop is not None
        listener = Listener(self, loop, listen_all(addresses, port))
        if metrics_port is not None:
            self.metrics.start_exporter(self.cache, self.slots, addresses[0], metrics_port)
            log.info("event=metrics address=%s port=%d", addresses[0], metrics_port)
        bound = listener.bound
        log.info(
            "event=listening addresses=%s max_connections=%d max_per_source=%d deadline=%g "
            "first_byte=%g loop=%s sign=%s aead=%s",
            " ".join(f"{h}:{p}" for h, p in bound),
            self.slots.max_connections,
            self.slots.max_per_source,
            self.deadline,
            self.first_byte,
            type(loop).__module__.split(".")[0],
            signer_name(self._sign),
            self._opener.engine,
        )
        if ready is not None:
            ready(bound)
        flusher = asyncio.create_task(self._flusher())
        try:
            await self._stop.wait()
        finally:
            listener.close()
            await self._drain(listener)
            self._stop.set()
            await flusher

    async def _own(
        self,
        loop: asyncio.AbstractEventLoop,
        workers: list[Worker],
        addresses: list[str],
        port: int,
        metrics_port: int | None,
        ready: Callable[[list[tuple[str, int]]], None] | None,
    ) -> None:
        """The owner's side of ``--workers``: answer the workers' channels until stopped."""
        from .workers import OwnerLink

        assert self._stop is not None
        for w in workers:
            w.ready, w.lost = loop.create_future(), loop.create_future()
            await loop.connect_accepted_socket(functools.partial(OwnerLink, self, w), w.channel)
        flusher = asyncio.create_task(self._flusher())
        listener: Listener | None = None
        try:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(w.ready for w in workers if w.ready is not None)), 20.0
                )
            except TimeoutError:
                raise KmsError("the KMS workers did not start listening within 20 s") from None
            with contextlib.suppress(KmsError):  # the workers listen there already
                # the owner answers too (worker 0), deciding locally
                listener = Listener(self, loop, listen_all(addresses, port, reuse_port=True))
            if metrics_port is not None:
                self.metrics.others = lambda: _sums(w.counters for w in workers)
                self.metrics.start_exporter(self.cache, self.slots, addresses[0], metrics_port)
            log.info(
                "event=listening addresses=%s workers=%d pids=%s max_connections=%d "
                "max_per_source=%d deadline=%g first_byte=%g loop=%s sign=%s aead=%s",
                " ".join(f"{a}:{port}" for a in addresses),
                len(workers) + (listener is not None),
                ",".join(str(w.pid) for w in workers),
                self.slots.max_connections * (len(workers) + 1),
                self.slots.max_per_source * (len(workers) + 1),
                self.deadline,
                self.first_byte,
                type(loop).__module__.split(".")[0],
                signer_name(self._sign),
                self._opener.engine,
            )
            if ready is not None:
                ready([(a, port) for a in addresses])
            lost: list[asyncio.Future[Any]] = [w.lost for w in workers if w.lost is not None]
            stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait([stopped, *lost], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if stopped not in done:
                gone = [w for w in workers if w.lost is not None and w.lost.done()]
                self.failure = f"KMS worker {gone[0].index} (pid {gone[0].pid}) exited"
                log.critical("event=worker-lost worker=%d pid=%d", gone[0].index, gone[0].pid)
        finally:
            if listener is not None:
                listener.close()
            await self._stop_workers(workers)
            if listener is not None:
                await self._drain(listener)
            self._stop.set()
            await flusher
            log.info(
                "event=worker-stop worker=0 pid=%d requests=%d rejected=%d",
                os.getpid(),
                self.served,
                self.metrics.rejected,
            )

    async def _drain(self, listener: Listener) -> None:
        """Let the held connections finish (each has its deadline), then close what is left."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline + 0.5
        while listener.held and loop.time() < end:
            await asyncio.sleep(0.02)
        listener.abort_all()

    async def _stop_workers(self, workers: list[Worker]) -> None:
        """SIGTERM, then wait for each to answer what it holds and close its channel (the
        owner answers meanwhile); SIGKILL what is still there after the deadline."""
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)
        lost = [w.lost for w in workers if w.lost is not None and not w.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=self.deadline + 5.0)
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        for w in workers:
            while w.exit_code is None:
                pid, status = os.waitpid(w.pid, os.WNOHANG)
                if pid:
                    w.exit_code = os.waitstatus_to_exitcode(status)
                    break
                if loop.time() > end:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                    end += 5.0
                await asyncio.sleep(0.02)
            w.channel.close()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def _sums(rows: Any) -> tuple[int, int, int, int, int]:
    a = b = c = d = e = 0
    for r in rows:
        a, b, c, d, e = a + r[0], b + r[1], c + r[2], d + r[3], e + r[4]
    return a, b, c, d, e


def signer(private_key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    """The host's Ed25519 signing function: libsodium's (PyNaCl, in the ``fast`` extra; on
    these machines about 47 us a signature against OpenSSL's 77) where it is installed, called
    straight through its C binding (no length checks, no copy of the message back), else
    ``cryptography``'s. Ed25519 is deterministic: both give the very same bytes, which is
    checked once here (a mismatch keeps ``cryptography``'s). The output buffer is new on
    each call, so any thread may sign."""
    try:
        from nacl._sodium import ffi, lib
    except ImportError:
        return private_key.sign
    secret = private_key.private_bytes_raw() + private_key.public_key().public_bytes_raw()
    c_sign, new, buffer, null = lib.crypto_sign, ffi.new, ffi.buffer, ffi.NULL
    out_type = ffi.typeof("unsigned char[]")

    def sign(message: bytes) -> bytes:
        n = len(message)
        out = new(out_type, n + 64)  # signature || message
        c_sign(out, null, message, n, secret)
        signature: bytes = buffer(out, 64)[:]
        return signature

    probe = b"ADBA-KMS-SIGNER\0" + os.urandom(16)
    return sign if sign(probe) == private_key.sign(probe) else private_key.sign


def signer_name(sign: Callable[[bytes], bytes]) -> str:
    return "openssl" if getattr(sign, "__self__", None) is not None else "libsodium"


def loop_name() -> str:
    """The event loop the host runs on: uvloop where it is installed, else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the host's coroutine on uvloop when it is installed (the ``fast`` extra; about
    twice less CPU per connection), else on asyncio's own loop."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def default_addresses() -> list[str]:
    """IPv4 and, where the machine has it, IPv6."""
    return ["0.0.0.0", "::"] if socket.has_ipv6 else ["0.0.0.0"]


class StateLock:
    """An exclusive ``flock`` on STATE/kms.lock for as long as the host serves: a second
    host on the same state dir is refused (its pid is in the file, for the message)."""

    def __init__(self, state_dir: str | Path, *, wait: float = 2.0) -> None:
        import fcntl

        path = Path(state_dir) / LOCK
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise KmsError(f"cannot open {path}: {exc.strerror}") from exc
        deadline = time.monotonic() + wait  # `kms status` may hold a shared lock briefly
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(self.fd)
                raise KmsError(
                    f"another KMS host (pid {holder}) is serving {Path(state_dir)}: "
                    "one host per state dir"
                ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock
            self.fd = -1


def serving(state_dir: str | Path) -> bool:
    """Is a host serving this state dir now (it holds the lock)?"""
    import fcntl

    try:
        fd = os.open(Path(state_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _read_state(
    d: Path, now: int, thresholds: Thresholds
) -> tuple[dict[str, Any], bool, KmsCache, dict[str, Any]]:
    """(host.json, records exist, the cache as the host would load it, metadata)."""
    try:
        if not d.is_dir():
            raise KmsHostNotReady(f"no KMS host in {d}: no such directory")
        info = json.loads((d / HOST_JSON).read_text()) if (d / HOST_JSON).is_file() else {}
        served = (d / RECORDS).is_file()
        if not info and not served:
            raise KmsHostNotReady(
                f"no KMS host in {d}: no host key and no records "
                f"(run `adba kms install-key --state-dir {d} ...`)"
            )
    except PermissionError as exc:
        raise KmsError(f"cannot read the KMS host's files in {d}: permission denied") from exc
    except (OSError, ValueError) as exc:
        raise KmsError(f"cannot read the KMS host's files in {d}: {exc}") from exc
    cache = KmsCache(thresholds)
    meta: dict[str, Any] = {"published": None, "saved_at": None, "unsaved": False}
    if served:
        try:
            store = KmsStore(d / RECORDS, readonly=True)
            try:
                cache.load(store.clients(), store.capacity(), now)
                meta["published"] = store.meta("published")
                meta["saved_at"] = store.meta("saved_at")
                meta["unsaved"] = store.has_unsaved()
            finally:
                store.close()
        except sqlite3.Error as exc:
            raise KmsError(f"cannot read the KMS records {d / RECORDS}: {exc}") from exc
        except PermissionError as exc:
            raise KmsError(f"cannot read the KMS records in {d}: permission denied") from exc
    return info, served, cache, meta


def cache_view(
    state_dir: str | Path, *, now: int | None = None, thresholds: Thresholds | None = None
) -> KmsCache:
    """The host's cache as its files hold it (what ``adba kms clients`` lists)."""
    now = int(time.time()) if now is None else now
    return _read_state(Path(state_dir), now, thresholds or Thresholds())[2]


def client_rows(state_dir: str | Path) -> list[dict[str, Any]]:
    """The machines the host counts, as ``kms clients --json`` and the clients API show them."""
    from ..catalog import load_catalog

    cat = load_catalog()
    return [
        {
            "machine": c.machine,
            "cmid": str(c.cmid),
            "edition": cat.sku_name(c.sku) or str(c.sku),
            "kind": "server" if c.kind else "client",
            "activation_group": cat.group_name(c.kms_id),
            "first_seen": c.first_seen,
            "last_seen": c.last_seen,
            "state": "activated" if c.activated else "waiting",
        }
        for c in cache_view(state_dir).entries.values()
    ]


def status_view(
    state_dir: str | Path, *, now: int | None = None, thresholds: Thresholds | None = None
) -> dict[str, Any]:
    """What ``adba kms status`` shows, read from the host's files (the host may be running;
    its records lag by at most the flush interval). The count and the capacity are the
    cache's, as the host would load it: the newest ``capacity`` machines of the last 30 days."""
    d = Path(state_dir)
    now = int(time.time()) if now is None else now
    thresholds = thresholds or Thresholds()
    info, _records, cache, meta = _read_state(d, now, thresholds)
    served = (d / LOCK).exists()  # created by the first `kms serve` (not by publish)
    published, saved_at, unsaved = meta["published"], meta["saved_at"], meta["unsaved"]
    clients = list(cache.entries.values())
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
        "served": served,
        "serving": serving(d),
        "saved_at": int(saved_at) if saved_at else None,
        "unsaved": unsaved,
        "count": len(clients),
        "cache_capacity": cache.capacity,
        "groups": groups,
        "machines": [  # the cache's contents, most recently seen first
            {
                "machine": c.machine,
                "cmid": str(c.cmid),
                "kind": "server" if c.kind else "client",
                "kms_id": str(c.kms_id),
                "last_seen": c.last_seen,
                "activated": c.activated,
            }
            for c in reversed(clients)
        ],
        "published": json.loads(published) if published else [],
        "thresholds": {"client": thresholds.client, "server": thresholds.server},
    }
