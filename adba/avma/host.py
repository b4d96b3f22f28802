"""The AVMA host: its certified key, whether it may activate guests now, and the server.

A host activates guests only while its own agent state says an edition entitled to AVMA
(the certificate's edition) is licensed -- by any channel, ADBA, KMS or MAK; the state is read
again whenever it changes, so a host whose activation lapses refuses from the next request
(status "host not licensed"). Every answer, refusals included, is signed by the host's
certified key. Every request is recorded (:mod:`adba.avma.store`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AvmaError, AvmaHostNotReady
from .protocol import (
    HOST_NOT_ENTITLED,
    HOST_UNLICENSED,
    NOT_COVERED,
    OK,
    STATUS_CODES,
    Answer,
    AvmaHostCertificate,
    parse_request,
    signed_part,
)
from .store import GUESTS_DB, GuestStore
from .transport import Address, frame, listen, read_frame

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..authority.client import RemoteAuthority
    from ..authority.local import LocalAuthority
    from ..catalog import Catalog

__all__ = ["AvmaHost", "HostIdentity", "Metrics", "init_host"]

log = logging.getLogger(__name__)

HOST_KEY, HOST_JSON = "avma-host.key", "avma-host.json"
#: what a guest's activation lasts unless renewed, and when it renews (Windows: 7 days)
DEFAULT_VALIDITY = 7 * 86400
DEFAULT_RENEWAL = 86400
MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class HostIdentity:
    private: Ed25519PrivateKey
    certificate: AvmaHostCertificate
    host_id: str

    @classmethod
    def load(cls, state_dir: str | Path) -> HostIdentity:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        d = Path(state_dir)
        try:
            info = json.loads((d / HOST_JSON).read_text())
            private = serialization.load_pem_private_key((d / HOST_KEY).read_bytes(), None)
        except FileNotFoundError as exc:
            raise AvmaHostNotReady(
                f"no certified AVMA host key in {d}: run `adba avma init` first"
            ) from exc
        except (OSError, ValueError) as exc:
            raise AvmaError(f"cannot read the AVMA host identity in {d}: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise AvmaError(f"{d / HOST_KEY} is not an Ed25519 key")
        cert = AvmaHostCertificate.from_bytes(bytes.fromhex(info["certificate"]))
        return cls(private, cert, str(info["host_id"]))


def init_host(
    state_dir: str | Path,
    authority: LocalAuthority | RemoteAuthority,
    edition: str | None,
    catalog: Catalog,
    *,
    host_id: str | None = None,
    now: int | None = None,
    key: str | None = None,
) -> HostIdentity:
    """A new host key, certified by the authority as an AVMA host of ``edition``: a local
    authority (the vendor's own host), or online, where the host's own AVMA-entitled
    ``key`` (its Datacenter MAK, a CSVLK covering Datacenter) proves the entitlement and
    names the edition when ``edition`` is None."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    now = int(time.time()) if now is None else now
    host_id = host_id or socket.gethostname()
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    cert = authority.certify_avma_host(public, host_id, edition, catalog, now=now, key=key)
    if cert.public_key != public:
        raise AvmaError("the authority certified another key than this host's: nothing kept")
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(d / HOST_KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    info = {"certificate": cert.to_bytes().hex(), "host_id": host_id, "certified_at": now}
    (d / HOST_JSON).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return HostIdentity.load(d)


@contextlib.contextmanager
def _released(slots: threading.BoundedSemaphore) -> Iterator[None]:
    try:
        yield
    finally:
        slots.release()


class Metrics:
    """Counters on the request path, exported for Prometheus at scrape time."""

    def __init__(self) -> None:
        self.requests = 0
        self.malformed = 0
        self.answers: dict[str, int] = {}

    def start_exporter(self, host: AvmaHost, address: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        metrics = self

        class _Collector:
            def collect(self) -> Any:
                req = CounterMetricFamily("adba_avma_requests", "AVMA requests received")
                req.add_metric([], metrics.requests)
                yield req
                bad = CounterMetricFamily("adba_avma_malformed", "AVMA requests refused unread")
                bad.add_metric([], metrics.malformed)
                yield bad
                ans = CounterMetricFamily(
                    "adba_avma_answers", "AVMA answers by result", labels=["result"]
                )
                for result, n in sorted(metrics.answers.items()):
                    ans.add_metric([result], n)
                yield ans
                rows = host.store.rows()
                now = int(time.time())
                guests = GaugeMetricFamily("adba_avma_guests", "guests recorded")
                guests.add_metric([], len(rows))
                yield guests
                lic = GaugeMetricFamily("adba_avma_guests_licensed", "guests licensed now")
                lic.add_metric([], sum(1 for r in rows if r[4] and now < r[4]))
                yield lic
                status, _ = host.entitlement(now)
                ok = GaugeMetricFamily("adba_avma_host_serving", "1 if the host activates guests")
                ok.add_metric([], 1 if status == OK else 0)
                yield ok

        registry = CollectorRegistry()
        registry.register(_Collector())
        start_http_server(port, addr=address, registry=registry)


class AvmaHost:
    """Answers guests: entitlement from the host's agent state, records in ``state_dir``."""

    def __init__(
        self,
        state_dir: str | Path,
        agent_state: str,
        catalog: Catalog,
        *,
        validity: int = DEFAULT_VALIDITY,
        renewal: int = DEFAULT_RENEWAL,
        timeout: float = 2.0,
    ) -> None:
        self.identity = HostIdentity.load(state_dir)
        self.store = GuestStore(Path(state_dir) / GUESTS_DB)
        self.agent_state, self.catalog = agent_state, catalog
        self.validity, self.renewal, self.timeout = validity, renewal, timeout
        self.metrics = Metrics()
        self._seen: tuple[int, int] | None = None
        self._products: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        #: connections answered at once; one more is closed unanswered (the guest retries)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def _host_products(self) -> dict[str, Any]:
        """The host agent's product records, read again only when the state file changed."""
        from ..agent.state import read_state

        try:
            info = os.stat(self.agent_state)
            seen = (info.st_mtime_ns, info.st_size)
        except OSError:
            return {}
        with self._lock:
            if seen != self._seen:
                try:
                    self._products = dict(read_state(self.agent_state, recover=False)["products"])
                except Exception as exc:  # an unreadable state: licensed by nothing
                    log.warning("cannot read the host's agent state %s: %s", self.agent_state, exc)
                    self._products = {}
                self._seen = seen
            return self._products

    def entitlement(self, now: int) -> tuple[int, str]:
        """(OK, "") when the host activates guests now, else (refusal status, why)."""
        from ..agent._status import derive

        products = self._host_products()
        cert = self.identity.certificate
        if now >= cert.not_after:
            return HOST_UNLICENSED, "the host's AVMA certificate expired"
        entitled = {s: r for s, r in products.items() if self._entitled(s)}
        if not entitled:
            editions = ", ".join(str(r.get("edition", s)) for s, r in products.items()) or "none"
            return HOST_NOT_ENTITLED, f"the host runs no edition entitled to AVMA ({editions})"
        rec = entitled.get(str(cert.edition_sku))
        if rec is None:
            return HOST_NOT_ENTITLED, "the host does not run the edition its certificate names"
        status, _ = derive(rec, now)
        if status != "licensed":
            return HOST_UNLICENSED, f"the host's own {rec.get('edition')} is {status}"
        return OK, ""

    def _entitled(self, sku: str) -> bool:
        try:
            return self.catalog.avma_host(uuid.UUID(sku)) is not None
        except ValueError:
            return False

    def prepare(self, payload: bytes, now: int | None = None) -> tuple[bytes, Callable[[], None]]:
        """The signed answer to one request, and what records it (called once it was sent:
        nothing is recorded that did not happen)."""
        now = int(time.time()) if now is None else now
        self.metrics.requests += 1
        try:
            req = parse_request(payload)
        except AvmaError:
            self.metrics.malformed += 1
            raise
        status, why = self.entitlement(now)
        cert = self.identity.certificate
        if status == OK and not self.catalog.avma_covers(cert.edition_sku, req.edition_sku):
            status, why = NOT_COVERED, "this host's version does not activate that edition"
        validity = self.validity if status == OK else 0
        body = Answer(status, req.nonce, now, validity, self.renewal, cert).body()
        signature = self.identity.private.sign(signed_part(payload, body))
        result = "activated" if status == OK else STATUS_CODES[status]
        edition = self.catalog.sku_name(req.edition_sku) or str(req.edition_sku)

        def record() -> None:
            self.metrics.answers[result] = self.metrics.answers.get(result, 0) + 1
            self.store.record(
                str(req.guest_id),
                req.name,
                str(req.edition_sku),
                result,
                now,
                now + validity if status == OK else None,
            )
            if status == OK:
                log.info("activated guest %s (%s)", req.name or req.guest_id, edition)
            else:
                log.warning("refused guest %s (%s): %s", req.name or req.guest_id, edition, why)

        return body + signature, record

    # -- serving ------------------------------------------------------------------------
    def _handle(self, conn: socket.socket) -> None:
        with conn, _released(self._slots):
            try:
                payload = read_frame(conn, time.monotonic() + self.timeout)
                reply, record = self.prepare(payload)
                conn.sendall(frame(reply))
                record()
            except (AvmaError, OSError, TimeoutError) as exc:
                log.warning("AVMA request dropped: %s", getattr(exc, "message", exc))

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                log.warning("AVMA: %d connections at once: one closed unanswered", MAX_CONNECTIONS)
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def serve(self, addresses: list[Address], *, ready: Any = None) -> None:
        """Listen on every address until :meth:`stop` (each in its own thread)."""
        self._sockets = [listen(a) for a in addresses]
        threads = [
            threading.Thread(target=self._accept, args=(s,), daemon=True) for s in self._sockets
        ]
        for t in threads:
            t.start()
        if ready:
            ready()
        self._stop.wait()
        for s in self._sockets:
            s.close()

    def stop(self) -> None:
        self._stop.set()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
