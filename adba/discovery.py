"""Finding services through DNS SRV records (RFC 2782), with dnspython.

Used by the agent to locate domain controllers (``_ldap._tcp.dc._msdcs.<domain>``, then
``_ldap._tcp.<domain>``) and, later, KMS hosts (``_vlmcs._tcp``). Targets come back in RFC
2782 order: lowest priority first, weighted random within a priority. Addresses of the
targets are resolved with the same resolver (the answer's additional section is used when
the server sent one), so a test or a site can point ADBA at its own DNS server without
touching the system's resolver. dnspython is imported here only, and only when needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import DiscoveryError

if TYPE_CHECKING:
    import dns.resolver

__all__ = [
    "DiscoveryError",
    "ServiceTarget",
    "dc_srv_names",
    "locate",
    "make_resolver",
    "parse_nameserver",
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


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"`` or ``"[2001:db8::1]:5353"``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


def make_resolver(
    nameservers: Sequence[str] | None = None, *, timeout: float = 2.0
) -> dns.resolver.Resolver:
    """The system resolver, or one that asks only ``nameservers`` (``host[:port]``)."""
    import dns.resolver

    if not nameservers:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        parsed = [parse_nameserver(n) for n in nameservers]
        resolver.nameservers = [h for h, _p in parsed]
        resolver.port = parsed[0][1]
    resolver.timeout = timeout
    resolver.lifetime = timeout * 2
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


def locate(names: Sequence[str], resolver: dns.resolver.Resolver) -> list[ServiceTarget]:
    """Targets of the first name that has SRV records, in RFC 2782 order.

    A name with no records (NXDOMAIN, no answer) moves on to the next; a single ``.``
    target means "decidedly not available here" (RFC 2782) and yields nothing.
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
        records: list[Any] = answer.rrset.processing_order()
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
        log.info("%s: %s", name, ", ".join(t.describe() for t in targets))
        return targets
    return []
