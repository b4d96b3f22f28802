"""The agent's side of KMS: which hosts to ask, in what order; one request to one host and
the verification of its answer.

Where to ask (:class:`KmsHosts`, like Windows' client): the static host if one is configured
(``slmgr /skms``; then only it), else the host that answered last time (the cache), and only
when that one does not do, DNS SRV ``_vlmcs._tcp`` in each domain in RFC 2782 order (lowest
priority first, weighted random within a priority: :func:`adba.discovery.order_targets`).
:func:`ask_first` walks that order: a host that does not answer within the timeout, or whose
answer does not verify, is dropped for the pass and the next one is asked.

Version 2 by default (the request sealed to the host's certified key, see
:mod:`adba.kms.protocol`): with the certificate the caller kept from an earlier answer, else
after a hello that returns it. A response is trusted only when the host certificate verifies under the pinned root key and
has not expired, the host signature over (request, response) verifies under the certified
key, the nonce is ours, and the host's CSVLK covers the product. Anything else is a rogue
host (:class:`RogueHost`): rejected and logged by the caller, and the next host is tried.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from ..errors import KmsError
from .protocol import (
    KIND_SERVER,
    MAX_SKEW,
    RESPONSE_SIZE,
    STATUS_CLOCK_SKEW,
    STATUS_KEY,
    STATUS_NOT_COVERED,
    STATUS_OK,
    STATUS_REPLAYED,
    VERSION,
    VERSION_2,
    HostCertificate,
    Request,
    Response,
    certificate_message,
    pack_hello,
    parse_response,
    response_message,
)

__all__ = [
    "Attempt",
    "Candidate",
    "KmsAnswer",
    "KmsClockSkew",
    "KmsHosts",
    "KmsUnreachable",
    "RogueHost",
    "ask",
    "ask_first",
    "hello",
    "hostport",
    "probe",
]


log = logging.getLogger(__name__)


class KmsUnreachable(KmsError):
    """The KMS host did not answer."""

    code = "kms-unreachable"


class RogueHost(KmsError):
    """The KMS host's answer does not verify: not a host activated by our authority."""

    code = "kms-rogue-host"


class KmsClockSkew(KmsError):
    """The KMS host refused the request: our clock is more than 4 hours from its own."""

    code = "kms-clock-skew"


def hostport(address: str, port: int) -> str:
    """``192.0.2.1:1688`` or ``[2001:db8::1]:1688``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class KmsAnswer:
    response: Response
    address: str
    port: int

    @property
    def where(self) -> str:
        return hostport(self.address, self.port)


def _exchange(address: str, port: int, payload: bytes, timeout: float) -> bytes:
    """Send ``payload`` and read the answer: the connect waits at most ``timeout``, and so does
    the whole answer (a deadline, not per read: a host trickling bytes gains nothing)."""
    import time

    where = hostport(address, port)
    connected = False
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            connected = True
            deadline = time.monotonic() + timeout
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while len(data) <= RESPONSE_SIZE:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(RESPONSE_SIZE + 1 - len(data))
                if not chunk:
                    break
                data += chunk
            return data
    except TimeoutError as exc:
        text = "is not answering: no answer" if connected else "did not accept a connection"
        raise KmsUnreachable(f"KMS host {where} {text} within {timeout:g} s") from exc
    except OSError as exc:
        raise KmsUnreachable(f"KMS host {where} did not answer ({exc.strerror or exc})") from exc


def _verify(
    where: str, payload: bytes, data: bytes, nonce: bytes, version: int, root_public_key: bytes
) -> Response:
    """Parse and verify one answer to ``payload``: certificate under the root, host
    signature over (request, response), our nonce, the version we spoke."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        response = parse_response(data)
    except KmsError as exc:
        raise RogueHost(f"KMS host {where} sent a malformed answer: {exc.message}") from exc
    cert = response.certificate
    try:
        Ed25519PublicKey.from_public_bytes(root_public_key).verify(
            cert.signature,
            certificate_message(cert.public_key, cert.epid, cert.csvlk_sku, cert.not_after),
        )
    except (InvalidSignature, ValueError) as exc:
        raise RogueHost(f"KMS host {where} is not certified by the pinned authority") from exc
    try:
        Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
            response.signature, response_message(payload, data[:-64])
        )
    except (InvalidSignature, ValueError) as exc:
        raise RogueHost(f"KMS host {where} sent an answer its key did not sign") from exc
    if response.nonce != nonce:
        raise RogueHost(f"KMS host {where} replayed an old answer (nonce mismatch)")
    if response.version != version:
        raise RogueHost(f"KMS host {where} answered in protocol version {response.version}")
    return response


def _certified(cert: HostCertificate, root_public_key: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(root_public_key).verify(
            cert.signature,
            certificate_message(cert.public_key, cert.epid, cert.csvlk_sku, cert.not_after),
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _skew(where: str, sent_at: int, response: Response) -> KmsClockSkew:
    off = sent_at - response.host_time
    return KmsClockSkew(
        f"KMS host {where} refused our clock: it is {abs(off)} s "
        f"{'ahead of' if off > 0 else 'behind'} the host's (more than {MAX_SKEW // 3600} h)"
    )


def hello(
    address: str,
    port: int,
    *,
    root_public_key: bytes,
    sent_at: int | None = None,
    timeout: float = 2.0,
) -> HostCertificate:
    """Ask a host for its certificate (the key v2 requests are sealed to), verified."""
    sent_at = int(time.time()) if sent_at is None else sent_at
    nonce = os.urandom(16)
    payload = pack_hello(sent_at, nonce)
    where = hostport(address, port)
    response = _verify(
        where,
        payload,
        _exchange(address, port, payload, timeout),
        nonce,
        VERSION_2,
        root_public_key,
    )
    if response.status != STATUS_KEY:
        raise RogueHost(f"KMS host {where} answered a hello with status {response.status}")
    if abs(sent_at - response.host_time) > MAX_SKEW:
        raise _skew(where, sent_at, response)
    return response.certificate


def probe(address: str, port: int, *, timeout: float = 2.0) -> Response:
    """A health check's round trip in protocol v2 that counts nothing: a hello for the host's
    certificate, then a request sealed to it for an activation group no host covers (KMS ID
    0), which the host opens, judges (clock, replay cache: with ``--workers``, through the
    owner of the count) and answers with status 1, signed. Both answers' host signatures are
    checked under the certificate they carry (whether the host is *trusted* is the agent's
    question: no root key here). Returns the sealed request's answer; raises
    :class:`KmsUnreachable` when the host does not answer, :class:`KmsError` when it answers
    anything else."""
    from .envelope import seal

    where = hostport(address, port)
    sent_at, nonce = int(time.time()), os.urandom(16)
    payload = pack_hello(sent_at, nonce)
    key = _self_signed(where, payload, _exchange(address, port, payload, timeout), nonce)
    if key.status != STATUS_KEY:
        raise KmsError(f"{where} answered a hello with status {key.status}")
    request = Request(
        KIND_SERVER,
        uuid.UUID(int=1),
        uuid.UUID(int=0),
        uuid.UUID(int=0),
        sent_at,
        os.urandom(16),
        "adba-probe",
    )
    payload = seal(request, key.certificate)
    answer = _self_signed(where, payload, _exchange(address, port, payload, timeout), request.nonce)
    if answer.status != STATUS_NOT_COVERED:
        raise KmsError(f"{where} answered the probe with status {answer.status} (expected 1)")
    return answer


def _self_signed(where: str, payload: bytes, data: bytes, nonce: bytes) -> Response:
    """A v2 answer to ``payload`` signed by the key of the certificate it carries."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        response = parse_response(data)
        Ed25519PublicKey.from_public_bytes(response.certificate.public_key).verify(
            response.signature, response_message(payload, data[:-64])
        )
    except KmsError as exc:
        raise KmsError(f"{where} answered oddly: {exc.message}") from exc
    except (InvalidSignature, ValueError) as exc:
        raise KmsError(f"{where} sent an answer its own key did not sign") from exc
    if response.nonce != nonce or response.version != VERSION_2:
        raise KmsError(f"{where} answered oddly (not our nonce, or not protocol v2)")
    return response


def ask(
    address: str,
    port: int,
    *,
    cmid: uuid.UUID,
    sku: uuid.UUID,
    kms_id: uuid.UUID,
    kind: int,
    machine: str,
    now: int,
    root_public_key: bytes,
    csvlk_skus: frozenset[str] | tuple[str, ...],
    timeout: float = 2.0,
    version: int = VERSION_2,
    certificate: HostCertificate | None = None,
    sent_at: int | None = None,
) -> KmsAnswer:
    """One activation request; returns the verified answer or raises
    :class:`KmsUnreachable`, :class:`RogueHost`, :class:`KmsClockSkew` or :class:`KmsError`.

    Version 2 (the default) seals the request to ``certificate`` (a certificate the caller
    kept from an earlier answer), else to the one a hello returns; ``sent_at`` is the client
    time the request carries (default: this machine's clock, which the host judges; ``now``
    is the caller's time for the certificate's expiry). Version 1 sends in clear."""
    where = hostport(address, port)
    sent_at = int(time.time()) if sent_at is None else sent_at
    request = Request(kind, cmid, sku, kms_id, sent_at, os.urandom(16), machine[:63])
    if version == VERSION:
        payload = request.encode()
        data = _exchange(address, port, payload, timeout)
        response = _verify(where, payload, data, request.nonce, VERSION, root_public_key)
    else:
        from .envelope import seal

        if certificate is None or not _certified(certificate, root_public_key):
            certificate = hello(
                address, port, root_public_key=root_public_key, sent_at=sent_at, timeout=timeout
            )
        for attempt in range(2):
            payload = seal(request, certificate)
            data = _exchange(address, port, payload, timeout)
            response = _verify(where, payload, data, request.nonce, VERSION_2, root_public_key)
            if response.status != STATUS_KEY or attempt:
                break
            # sealed to a key the host no longer has: its answer carries the one it has now
            certificate = response.certificate
            request = replace(request, nonce=os.urandom(16))
        if response.status == STATUS_CLOCK_SKEW:
            raise _skew(where, sent_at, response)
        if response.status == STATUS_REPLAYED:
            raise KmsError(f"KMS host {where} refused our request as a replay")
        if response.status == STATUS_KEY:
            raise RogueHost(f"KMS host {where} refused the key it certified")
    cert = response.certificate
    if cert.not_after < now:
        raise RogueHost(f"KMS host {where} presents an expired certificate")
    if response.status != STATUS_OK:
        raise KmsError(f"KMS host {where} cannot activate this product (its key does not cover it)")
    if str(cert.csvlk_sku) not in csvlk_skus:
        raise KmsError(
            f"KMS host {where} has a key ({cert.csvlk_sku}) that does not cover this product"
        )
    return KmsAnswer(response, address, port)


# -- which hosts, in which order ----------------------------------------------------------------


class Candidate(NamedTuple):
    """One address of a host to ask, and where it came from (its DNS name, ``static`` or
    ``cached``)."""

    address: str
    port: int
    label: str


class KmsHosts:
    """Candidate hosts in the order to try: ``static`` (then only it), else ``cached`` (the
    host that answered last time), and only when that one does not do, the SRV records of
    ``domains`` asked of ``dns_servers`` (the system's resolver when empty) -- a dead DNS
    server costs nothing while the cached host answers.

    The SRV order is drawn with ``rng`` (RFC 2782; a seeded ``random.Random`` makes it
    repeatable); each lookup ends within ``timeout``. Iterating skips the candidates in
    :attr:`dead` (marked by :func:`ask_first`), so one instance serves a whole pass."""

    def __init__(
        self,
        *,
        static: tuple[str, int] | None = None,
        cached: Candidate | None = None,
        domains: Sequence[str] = (),
        dns_servers: Sequence[str] = (),
        timeout: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.static, self.cached = static, cached
        self.domains = [d for d in domains if d]
        self.dns_servers, self.timeout, self.rng = tuple(dns_servers), timeout, rng
        self.dead: set[tuple[str, int]] = set()
        self.searched: list[str] = []
        self._first: list[Candidate] | None = None
        self._srv: list[Candidate] | None = None

    def _known(self) -> list[Candidate]:
        if self.static:
            return [Candidate(*self.static, "static")]
        return [self.cached] if self.cached else []

    def _discover(self) -> list[Candidate]:
        found: list[Candidate] = []
        if self.static or not self.domains:
            return found
        from ..discovery import kms_srv_names, locate, make_resolver
        from ..errors import AdbaError

        known = {(c.address, c.port) for c in self._first or ()}
        resolver = make_resolver(self.dns_servers, timeout=self.timeout)
        for domain in self.domains:
            names = kms_srv_names(domain)
            self.searched += names
            try:
                targets = locate(names, resolver, rng=self.rng)
            except AdbaError as exc:
                log.warning("KMS discovery in %s failed: %s", domain, exc.message)
                continue
            for t in targets:
                for address in t.addresses:
                    if (address, t.port) not in known:
                        known.add((address, t.port))
                        found.append(Candidate(address, t.port, t.host))
        return found

    def __iter__(self) -> Iterator[Candidate]:
        if self._first is None:
            self._first = self._known()
        for c in self._first:
            if (c.address, c.port) not in self.dead:
                yield c
        if self._srv is None:
            self._srv = self._discover()
        for c in self._srv:
            if (c.address, c.port) not in self.dead:
                yield c

    @property
    def any(self) -> bool:
        """Whether there was any host to ask (static, cached or found in DNS)."""
        return bool(self._first) or bool(self._srv)


@dataclass
class Attempt:
    """What :func:`ask_first` came to: the first verified answer (or None), the candidate
    that gave it, and why the hosts before it did not do."""

    answer: KmsAnswer | None = None
    candidate: Candidate | None = None
    #: one message per host that did not do, in the order asked
    problems: list[str] = field(default_factory=list)
    #: the error code of the last host that did not do (None: none failed, or only our clock)
    code: str | None = None
    #: the messages of hosts whose answers did not verify (rogue hosts)
    rogues: list[str] = field(default_factory=list)
    #: a host refused our clock
    skewed: bool = False


def ask_first(
    hosts: KmsHosts,
    *,
    certificate_for: Callable[[str, int], HostCertificate | None] | None = None,
    **request: Any,
) -> Attempt:
    """Ask the candidates of ``hosts`` in order until one answers with a verified response.

    ``request`` are :func:`ask`'s keyword arguments (cmid, sku, kms_id, kind, machine, now,
    root_public_key, csvlk_skus, timeout, ...); ``certificate_for(address, port)`` gives the
    certificate kept from that host's last answer, if any. A host that does not answer
    (within ``timeout``) or that answers as a rogue is marked dead in ``hosts`` (not asked
    again this pass); one that refuses our clock or cannot activate the product is passed
    over for this request only."""
    attempt = Attempt()
    for candidate in hosts:
        address, port, _label = candidate
        certificate = certificate_for(address, port) if certificate_for else None
        try:
            answer = ask(address, port, certificate=certificate, **request)
        except (KmsUnreachable, RogueHost) as exc:
            hosts.dead.add((address, port))
            attempt.problems.append(exc.message)
            attempt.code = exc.code
            if isinstance(exc, RogueHost):
                attempt.rogues.append(exc.message)
            continue
        except KmsClockSkew as exc:  # our clock: another host may judge it so too
            attempt.problems.append(exc.message)
            attempt.skewed = True
            continue
        except KmsError as exc:  # this host cannot activate this product: try the next
            attempt.problems.append(exc.message)
            attempt.code = exc.code
            continue
        attempt.answer, attempt.candidate = answer, candidate
        break
    return attempt
