"""Finding services through DNS SRV records (RFC 2782), with dnspython.

Used by the agent to locate domain controllers (``_ldap._tcp.dc._msdcs.<domain>``, then
``_ldap._tcp.<domain>``) and KMS hosts (``_vlmcs._tcp.<domain>``). Targets come back in RFC
2782 order: lowest priority first, weighted random within a priority. Addresses of the
targets are resolved with the same resolver (the answer's additional section is used when
the server sent one), so a test or a site can point ADBA at its own DNS server without
touching the system's resolver. dnspython is imported here only, and only when needed.

The KMS host publishes itself (like Windows' ``DnsDomainPublishList``) with RFC 2136 dynamic
updates signed with a TSIG key (RFC 8945): :func:`publish_kms` and :func:`unpublish_kms`
touch only this host's own SRV record and addresses, never other hosts' records.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import DiscoveryError, InvalidInput

if TYPE_CHECKING:
    import socket

    import dns.message
    import dns.name
    import dns.resolver

__all__ = [
    "DiscoveryError",
    "PublishEntry",
    "PublishResult",
    "ServiceTarget",
    "TsigKey",
    "dc_srv_names",
    "kms_srv_names",
    "load_tsig_key",
    "locate",
    "make_resolver",
    "order_targets",
    "parse_nameserver",
    "parse_publish_entry",
    "publish_kms",
    "unpublish_kms",
]

log = logging.getLogger(__name__)


class ServiceTarget(NamedTuple):
    host: str
    port: int
    priority: int
    weight: int
    addresses: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.host}:{self.port} (priority {self.priority}, weight {self.weight})"


def dc_srv_names(domain: str) -> list[str]:
    """Where domain controllers are published: AD's name first, then the generic one."""
    domain = domain.strip(".")
    return [f"_ldap._tcp.dc._msdcs.{domain}", f"_ldap._tcp.{domain}"]


def kms_srv_names(domain: str) -> list[str]:
    """Where KMS hosts are published (the name Windows clients query)."""
    return [f"_vlmcs._tcp.{domain.strip('.')}"]


def parse_nameserver(text: str, *, default_port: int = 53) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"[2001:db8::1]:5353"`` or ``"host:port"``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def make_resolver(
    nameservers: Sequence[str] | None = None, *, timeout: float = 2.0
) -> dns.resolver.Resolver:
    """The system resolver, or one that asks only ``nameservers`` (``host[:port]``).

    Every query ends within ``timeout`` (the resolver's lifetime: all servers and retries
    included), so a DNS server that never answers costs one ``timeout`` per lookup."""
    import dns.resolver

    if not nameservers:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        parsed = [parse_nameserver(n) for n in nameservers]
        resolver.nameservers = [h for h, _p in parsed]
        resolver.port = parsed[0][1]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def _addresses(resolver: dns.resolver.Resolver, host: str, glue: dict[str, list[str]]) -> list[str]:
    import dns.exception
    import dns.resolver

    if host in glue:
        return glue[host]
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(host, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            continue
        except dns.exception.Timeout as exc:
            raise DiscoveryError(f"DNS timed out resolving {host}") from exc
        found += [r.to_text() for r in answer]
    return found


def order_targets(
    targets: Sequence[ServiceTarget], rng: random.Random | None = None
) -> list[ServiceTarget]:
    """RFC 2782 order: by priority, lowest first; within a priority, the RFC's weighted draw
    without replacement, repeated until the priority's records are all ordered.

    Each draw arranges the records not yet ordered with those of weight 0 first (in random
    order), picks an integer ``n`` uniformly in ``0..W`` (``W`` the sum of their weights)
    and takes the first record whose running sum of weights is ``>= n``. A weight-0 record
    is thus taken only when ``n`` is 0 -- chance ``1/(W + 1)``, RFC 2782's "very small
    chance" -- and when all weights are 0 the order is uniformly random. With no record of
    weight 0, ``n`` is drawn from ``1..W``: a 0 would give whichever record the arrangement
    put first an extra ``1/(W + 1)`` (weights 3 and 1 would share 70/30, not 75/25), so a
    record of weight ``w`` comes first with a chance of exactly ``w/W``.

    Pure, so the order can be drawn repeatedly from one answer; ``rng`` makes it repeatable.
    """
    rng = rng if rng is not None else random.Random()
    ordered: list[ServiceTarget] = []
    for priority in sorted({t.priority for t in targets}):
        pool = [t for t in targets if t.priority == priority]
        while pool:
            zeros = [t for t in pool if t.weight == 0]
            rng.shuffle(zeros)
            pool = zeros + [t for t in pool if t.weight != 0]
            total = sum(t.weight for t in pool)
            point = rng.randint(0 if zeros else 1, total)
            running = 0
            for i, target in enumerate(pool):
                running += target.weight
                if running >= point:
                    ordered.append(pool.pop(i))
                    break
    return ordered


def locate(
    names: Sequence[str],
    resolver: dns.resolver.Resolver,
    *,
    rng: random.Random | None = None,
) -> list[ServiceTarget]:
    """Targets of the first name that has SRV records, in RFC 2782 order.

    A name with no records (NXDOMAIN, no answer) moves on to the next; a single ``.``
    target means "decidedly not available here" (RFC 2782) and yields nothing. ``rng`` draws
    the weighted order (see :func:`order_targets`).
    """
    import dns.exception
    import dns.rdatatype
    import dns.resolver

    for name in names:
        try:
            answer = resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            log.debug("no SRV records at %s", name)
            continue
        except dns.resolver.NoNameservers as exc:
            raise DiscoveryError(f"no DNS server answered for {name}") from exc
        except dns.exception.Timeout as exc:
            raise DiscoveryError(f"DNS timed out looking up {name}") from exc
        if answer.rrset is None:
            continue
        records: list[Any] = list(answer.rrset)
        if len(records) == 1 and records[0].target.to_text() == ".":
            log.info("%s says the service is not available", name)
            return []
        glue: dict[str, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(rrset.name.to_text().rstrip("."), []).extend(
                    r.to_text() for r in rrset
                )
        targets = []
        for rec in records:
            host = rec.target.to_text().rstrip(".")
            targets.append(
                ServiceTarget(
                    host,
                    int(rec.port),
                    int(rec.priority),
                    int(rec.weight),
                    tuple(_addresses(resolver, host, glue)),
                )
            )
        for target in targets:
            if not target.addresses:
                log.warning("%s: target %s has no A/AAAA record: skipped", name, target.host)
        targets = order_targets(targets, rng)
        log.info("%s: %s", name, ", ".join(t.describe() for t in targets))
        return targets
    return []


# -- publication (RFC 2136 dynamic update, TSIG-signed) ----------------------------------------

#: key algorithms as named in BIND key files -> dnspython's algorithm names
_TSIG_ALGORITHMS = {
    "hmac-md5": "hmac-md5.sig-alg.reg.int.",
    "hmac-sha1": "hmac-sha1.",
    "hmac-sha224": "hmac-sha224.",
    "hmac-sha256": "hmac-sha256.",
    "hmac-sha256-128": "hmac-sha256-128.",
    "hmac-sha384": "hmac-sha384.",
    "hmac-sha384-192": "hmac-sha384-192.",
    "hmac-sha512": "hmac-sha512.",
    "hmac-sha512-256": "hmac-sha512-256.",
}
_BIND_TOKEN = re.compile(r'"[^"]*"|//[^\n]*|#[^\n]*|/\*.*?\*/|[{};]|[^\s{};"]+', re.DOTALL)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class TsigKey(NamedTuple):
    """A TSIG key: its name (absolute, with the trailing dot), algorithm, base64 secret."""

    name: str
    algorithm: str
    secret: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"TsigKey(name={self.name!r}, algorithm={self.algorithm!r}, secret=...)"


class PublishEntry(NamedTuple):
    """One domain of the publish list, with the SRV priority and weight to publish there
    (by default 0 and 0, as Windows' ``SrvPriority`` and ``SrvWeight``)."""

    domain: str
    priority: int = 0
    weight: int = 0


class PublishResult(NamedTuple):
    """What one update did: the records written (publish: ``"<name>. <ttl> <type> <rdata>"``)
    or removed (unpublish: ``"<name>. <type> <rdata>"``); removing nothing gives ``[]``."""

    domain: str
    server: str
    records: list[str]


def load_tsig_key(path: str) -> TsigKey:
    """The key in a BIND key file, as written by ``tsig-keygen`` or ``ddns-confgen``::

        key "adba-update." { algorithm hmac-sha256; secret "base64=="; };

    Comments (``#``, ``//``, ``/* */``) and other statements around it are ignored; the file
    must hold exactly one ``key`` statement.
    """
    import base64
    import binascii

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the TSIG key file {path}: {exc}", path=path) from exc

    def bad(why: str) -> InvalidInput:
        return InvalidInput(
            f"{path} is not a BIND TSIG key file ({why}): "
            'expected key "name" { algorithm hmac-sha256; secret "..."; };',
            path=path,
        )

    tokens = [t for t in _BIND_TOKEN.findall(text) if not t.startswith(("#", "//", "/*"))]
    keys: list[tuple[str, dict[str, str]]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] != "key" or i + 2 >= len(tokens) or tokens[i + 2] != "{":
            i += 1
            continue
        name = tokens[i + 1].strip('"')
        fields: dict[str, str] = {}
        i += 3
        while i < len(tokens) and tokens[i] != "}":
            if i + 2 >= len(tokens) or tokens[i + 2] != ";":
                raise bad(f"cannot parse the statement of key {name!r} at {tokens[i]!r}")
            fields[tokens[i].lower()] = tokens[i + 1]
            i += 3
        if i >= len(tokens):
            raise bad(f"key {name!r} is not closed with }};")
        keys.append((name, fields))
        i += 1
    if len(keys) != 1:
        raise bad("no key statement" if not keys else f"{len(keys)} key statements, expected 1")
    name, fields = keys[0]
    algorithm = fields.get("algorithm", "").strip('"').lower()
    secret = fields.get("secret", "")
    if algorithm not in _TSIG_ALGORITHMS:
        raise bad(f"unsupported algorithm {algorithm or '(none)'!r}")
    if not (secret.startswith('"') and secret.endswith('"') and len(secret) > 2):
        raise bad("no quoted secret")
    secret = secret[1:-1]
    try:
        base64.b64decode(secret, validate=True)
    except binascii.Error as exc:
        raise bad("the secret is not base64") from exc
    labels = name.rstrip(".").split(".")
    if not name or not all(_LABEL.fullmatch(label) for label in labels):
        raise bad(f"invalid key name {name!r}")
    return TsigKey(name.rstrip(".") + ".", algorithm, secret)


def _check_domain(text: str, what: str) -> str:
    domain = text.strip().rstrip(".")
    labels = domain.split(".")
    if not domain or len(domain) > 253 or not all(_LABEL.fullmatch(lb) for lb in labels):
        raise InvalidInput(f"invalid {what} {text!r}: expected a DNS name like example.test")
    return domain


def parse_publish_entry(text: str, *, priority: int = 0, weight: int = 0) -> PublishEntry:
    """``"example.test"`` or ``"example.test,10,50"`` (domain[,priority[,weight]]); the
    values an entry does not give are ``priority`` and ``weight``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 3:
        raise InvalidInput(f"invalid publish entry {text!r}: expected domain[,priority[,weight]]")
    domain = _check_domain(parts[0], "publish domain")
    numbers: list[int] = []
    for label, part in zip(("priority", "weight"), parts[1:], strict=False):
        if not part.isdigit() or int(part) > 65535:
            raise InvalidInput(
                f"invalid {label} {part!r} in publish entry {text!r}: expected 0..65535"
            )
        numbers.append(int(part))
    for label, value in (("priority", priority), ("weight", weight)):
        if not 0 <= value <= 65535:
            raise InvalidInput(f"invalid SRV {label} {value}: expected 0..65535")
    return PublishEntry(domain, *numbers, *(priority, weight)[len(numbers) :])


def publish_kms(
    entries: Sequence[PublishEntry],
    *,
    host: str,
    port: int,
    addresses: Sequence[str],
    server: str,
    key: TsigKey,
    ttl: int = 300,
    timeout: float = 5.0,
) -> list[PublishResult]:
    """Publish this KMS host into each domain of ``entries``, one signed UPDATE per domain.

    Replaces this host's own SRV record at ``_vlmcs._tcp.<domain>`` (the one with the same
    target and port) with ``<priority> <weight> <port> <host>.``, leaving other hosts'
    records alone; when ``host`` lies inside the domain and ``addresses`` is not empty, its
    A and AAAA RRsets become exactly ``addresses``. Each domain is taken to be a zone apex.
    Stops at the first domain that fails (earlier domains stay published).
    """
    return [
        _update(e, host, port, addresses, server, key, ttl, timeout, publish=True) for e in entries
    ]


def unpublish_kms(
    entries: Sequence[PublishEntry],
    *,
    host: str,
    port: int,
    addresses: Sequence[str],
    server: str,
    key: TsigKey,
    timeout: float = 5.0,
) -> list[PublishResult]:
    """Remove this host's SRV record (same target and port) from each domain of ``entries``
    and, when ``host`` lies inside the domain, its A/AAAA records listed in ``addresses``
    (after :func:`publish_kms` these are the whole RRsets). Other hosts' records stay."""
    return [
        _update(e, host, port, addresses, server, key, 0, timeout, publish=False) for e in entries
    ]


class _Peer:
    """One TCP connection to the DNS server to update, with the error mapping."""

    def __init__(self, server: str, key: TsigKey, timeout: float) -> None:
        import dns.tsigkeyring

        try:
            ip, self.port = parse_nameserver(server)
            ipaddress.ip_address(ip)
        except ValueError as exc:
            raise InvalidInput(
                f"invalid DNS server {server!r}: expected ip or ip:port", server=server
            ) from exc
        self.ip, self.server, self.key, self.timeout = ip, server, key, timeout
        self.keyring = dns.tsigkeyring.from_text(
            {key.name: (_TSIG_ALGORITHMS[key.algorithm], key.secret)}
        )
        self.algorithm = _TSIG_ALGORITHMS[key.algorithm]
        self.sock: socket.socket | None = None

    def __enter__(self) -> _Peer:
        import socket

        try:
            self.sock = socket.create_connection((self.ip, self.port), timeout=self.timeout)
        except OSError as exc:
            raise self._unreachable(exc) from exc
        self.sock.setblocking(False)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _unreachable(self, exc: BaseException) -> DiscoveryError:
        import dns.exception

        why = "timed out" if isinstance(exc, dns.exception.Timeout | TimeoutError) else exc
        return DiscoveryError(
            f"cannot reach the DNS server {self.server} ({why}): "
            "check its address and port, and that it accepts DNS over TCP",
            server=self.server,
        )

    def exchange(self, message: dns.message.Message) -> dns.message.Message:
        import dns.exception
        import dns.query
        import dns.tsig

        try:
            return dns.query.tcp(message, self.ip, timeout=self.timeout, sock=self.sock)
        except (dns.tsig.PeerBadTime, dns.tsig.BadTime) as exc:
            raise DiscoveryError(
                f"the DNS server {self.server} rejected the time of the TSIG key "
                f"{self.key.name} signature: synchronise this host's clock",
                server=self.server,
                key=self.key.name,
            ) from exc
        except (
            dns.tsig.PeerError,
            dns.tsig.BadSignature,
            dns.tsig.BadKey,
            dns.tsig.BadAlgorithm,
        ) as exc:
            raise DiscoveryError(
                f"the DNS server {self.server} rejected the TSIG key {self.key.name} "
                "(bad key or secret): check the key file",
                server=self.server,
                key=self.key.name,
            ) from exc
        except (dns.exception.Timeout, OSError, EOFError) as exc:
            raise self._unreachable(exc) from exc
        except dns.exception.DNSException as exc:
            raise DiscoveryError(
                f"the DNS server {self.server} sent an invalid answer ({exc}): "
                "check that it is a DNS server",
                server=self.server,
            ) from exc

    def read(self, zone: dns.name.Name, name: dns.name.Name, rdtype: str) -> list[Any]:
        """The rdatas at ``name``/``rdtype``, asked of the server itself (signed, over TCP)."""
        import dns.message
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype

        query = dns.message.make_query(name, rdtype)
        query.use_tsig(self.keyring, self.key.name, algorithm=self.algorithm)
        response = self.exchange(query)
        self.check(response, zone, "read")
        if response.rcode() == dns.rcode.NXDOMAIN:
            return []
        try:
            rrset = response.find_rrset(
                response.answer, name, dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
            )
        except KeyError:
            return []
        return list(rrset)

    def zone_of(self, name: dns.name.Name) -> dns.name.Name:
        """The apex of the zone this server serves that holds ``name`` (RFC 2136 §4: the
        client finds the zone with an SOA query), asked of the server itself."""
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdatatype

        query = dns.message.make_query(name, "SOA")
        query.use_tsig(self.keyring, self.key.name, algorithm=self.algorithm)
        response = self.exchange(query)
        if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and (
            response.flags & dns.flags.AA
        ):
            for rrset in (*response.answer, *response.authority):
                if rrset.rdtype == dns.rdatatype.SOA and name.is_subdomain(rrset.name):
                    return rrset.name
        domain = name.to_text(omit_final_dot=True)
        raise DiscoveryError(
            f"the DNS server {self.server} does not serve a zone holding "
            f"{kms_srv_names(domain)[0]} (it answered {dns.rcode.to_text(response.rcode())}, "
            f"{'authoritative' if response.flags & dns.flags.AA else 'not authoritative'}): "
            f"give the primary server of {domain}'s zone (--dns-server), or publish the SRV "
            "record manually",
            server=self.server,
            domain=domain,
            rcode=dns.rcode.to_text(response.rcode()),
        )

    def check(self, response: dns.message.Message, zone: dns.name.Name, what: str) -> None:
        import dns.rcode

        rcode = response.rcode()
        domain = zone.to_text(omit_final_dot=True)
        if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
            log.debug("%s of %s: %s", what, domain, dns.rcode.to_text(rcode))
            raise DiscoveryError(
                f"the DNS server {self.server} serves the zone {domain} but refused the "
                f"{what} of its records by the key {self.key.name} (no rights for this key: "
                "see the zone's update-policy): publish the SRV record manually or configure "
                "clients with a static KMS host (kms_host)",
                server=self.server,
                domain=domain,
                rcode=dns.rcode.to_text(rcode),
            )
        allowed = (
            (dns.rcode.NOERROR,) if what == "update" else (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
        )
        if rcode not in allowed:
            raise DiscoveryError(
                f"the DNS server {self.server} answered {dns.rcode.to_text(rcode)} to the "
                f"{what} of {kms_srv_names(domain)[0]}: see the DNS server's log",
                server=self.server,
                domain=domain,
                rcode=dns.rcode.to_text(rcode),
            )


def _update(
    entry: PublishEntry,
    host: str,
    port: int,
    addresses: Sequence[str],
    server: str,
    key: TsigKey,
    ttl: int,
    timeout: float,
    *,
    publish: bool,
) -> PublishResult:
    import dns.name
    import dns.update

    domain = _check_domain(entry.domain, "publish domain")
    hostname = dns.name.from_text(_check_domain(host, "KMS host name"))
    if not (1 <= port <= 65535 and 0 <= entry.priority <= 65535 and 0 <= entry.weight <= 65535):
        raise InvalidInput(
            f"invalid SRV values for {domain}: port {port}, priority {entry.priority}, "
            f"weight {entry.weight} (port 1..65535, the others 0..65535)"
        )
    try:
        ips = [ipaddress.ip_address(a.strip()) for a in addresses]
    except ValueError as exc:
        raise InvalidInput(f"invalid KMS host address in {list(addresses)}: {exc}") from exc
    if key.algorithm not in _TSIG_ALGORITHMS:
        raise InvalidInput(f"unsupported TSIG algorithm {key.algorithm!r}")
    srv_name = dns.name.from_text(kms_srv_names(domain)[0])
    done: list[str] = []

    with _Peer(server, key, timeout) as peer:
        zone = peer.zone_of(dns.name.from_text(domain))
        own_addresses = hostname.is_subdomain(zone) and bool(ips)
        upd = dns.update.UpdateMessage(
            zone,
            keyring=peer.keyring,
            keyname=dns.name.from_text(key.name),
            keyalgorithm=peer.algorithm,
        )
        for rd in peer.read(zone, srv_name, "SRV"):
            if rd.target == hostname and rd.port == port:
                upd.delete(srv_name, rd)
                if not publish:
                    done.append(f"{srv_name} SRV {rd}")
        if publish:
            value = f"{entry.priority} {entry.weight} {port} {hostname}"
            upd.add(srv_name, ttl, "SRV", value)
            done.append(f"{srv_name} {ttl} SRV {value}")
        if own_addresses:
            for rdtype, version in (("A", 4), ("AAAA", 6)):
                mine = [str(ip) for ip in ips if ip.version == version]
                if publish and mine:
                    upd.replace(hostname, ttl, rdtype, *mine)
                    done += [f"{hostname} {ttl} {rdtype} {ip}" for ip in mine]
                elif publish:
                    upd.delete(hostname, rdtype)
                elif mine:
                    present = {
                        str(ipaddress.ip_address(rd.address))
                        for rd in peer.read(zone, hostname, rdtype)
                    }
                    gone = [ip for ip in mine if ip in present]
                    if gone:
                        upd.delete(hostname, rdtype, *gone)
                        done += [f"{hostname} {rdtype} {ip}" for ip in gone]
        peer.check(peer.exchange(upd), zone, "update")
    log.info(
        "%s %s on %s: %s",
        "published" if publish else "unpublished",
        domain,
        server,
        "; ".join(done) or "nothing to remove",
    )
    return PublishResult(domain, server, done)
