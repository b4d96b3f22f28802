"""The agent's second step: a KMS host, when ADBA did not activate a GVLK product.

Where to ask (the seed's "client discovery"): the static host if one is configured (like
``slmgr /skms``; then only it), else the host that answered last time, else DNS SRV
``_vlmcs._tcp`` in the machine's domain and in each lookup domain (like ``/skms-domain``),
in RFC 2782 order (lowest priority first, weighted random within a priority). A host that
does not answer is dropped for this pass and the next one is tried; a host whose answer does
not verify is a rogue host: logged and never used (the walk is the library's
:class:`adba.kms.client.KmsHosts` and :func:`~adba.kms.client.ask_first`). The host that
answers is cached for the renewals; if it fails later, DNS is asked again.

Licensed when the host's count reaches the threshold for the product's kind (25 for clients,
5 for servers); renewed every 7 days; while the count is short or no host answers, retried
every 2 hours (the intervals the host sends win over the local ones).
"""

from __future__ import annotations

import logging
import time
import uuid

from ..errors import KmsError
from .config import ProductSettings, Settings
from .outcome import Outcome, TryNext

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .chain import Pass

__all__ = ["NAME", "attempt", "takes"]

NAME = "KMS"

log = logging.getLogger("adba.agent")
DEFAULT_PORT = 1688


def _hosts(settings: Settings, state: dict[str, Any]) -> Any:
    """The candidate hosts of this pass (:class:`adba.kms.client.KmsHosts`)."""
    from ..discovery import parse_nameserver
    from ..kms.client import Candidate, KmsHosts

    s = settings
    cached = state.get("kms") or {}
    return KmsHosts(
        static=parse_nameserver(s.kms_host, default_port=DEFAULT_PORT) if s.kms_host else None,
        cached=Candidate(cached["address"], int(cached["port"]), cached.get("name") or "cached")
        if cached.get("address")
        else None,
        domains=[d for d in (s.domain, *s.kms_domains) if d],
        dns_servers=s.dns_servers,
        timeout=s.connect_timeout,
    )


def _kept_certificate(state: dict[str, Any], address: str, port: int, cls: Any) -> Any:
    """The certificate the host at (address, port) answered with last time, if any (the
    client verifies it again under the root key before sealing to it)."""
    kept = state.get("kms") or {}
    if kept.get("address") != address or int(kept.get("port") or 0) != port:
        return None
    try:
        return cls.from_bytes(bytes.fromhex(kept.get("certificate") or ""))
    except (ValueError, KmsError):
        return None


def takes(product: ProductSettings, settings: Settings) -> bool:
    """A GVLK product (after ADBA, or instead of it)."""
    return product.key_type == "GVLK"


def attempt(p: Pass, batch: list[tuple[ProductSettings, TryNext]]) -> list[Outcome | TryNext]:
    """Each product of ``batch`` asks the hosts in turn; an outcome per product, in order."""
    import socket

    from ..kms.cache import Thresholds
    from ..kms.client import ask_first
    from ..kms.protocol import KIND_CLIENT, KIND_SERVER, HostCertificate

    settings, state, now = p.settings, p.state, p.now
    hosts = _hosts(settings, state)
    cmid = uuid.UUID(state.setdefault("cmid", str(uuid.uuid4())))
    machine = (settings.machine_name or socket.gethostname())[:63]
    root = bytes.fromhex(settings.root_key)
    thresholds = Thresholds()
    outcomes: list[Outcome | TryNext] = []
    for product, reason in batch:
        adba_code, adba_message = reason.code, reason.message
        rec = state["products"][product.sku]
        kind = KIND_SERVER if product.kind == "server" else KIND_CLIENT
        threshold = thresholds.for_kind(kind)
        asked = ask_first(
            hosts,
            certificate_for=lambda a, p: _kept_certificate(state, a, p, HostCertificate),
            cmid=cmid,
            sku=uuid.UUID(product.sku),
            kms_id=uuid.UUID(product.group),
            kind=kind,
            machine=machine,
            now=now,
            root_public_key=root,
            csvlk_skus=product.csvlk_skus,
            timeout=settings.connect_timeout,
        )
        for message in asked.rogues:
            log.warning("%s: rogue KMS host rejected: %s", product.edition, message)
        answer, problems, skewed = asked.answer, asked.problems, asked.skewed
        code = asked.code or adba_code
        if answer is not None and asked.candidate is not None:
            address, port, label = asked.candidate
            state["kms"] = {
                "address": address,
                "port": port,
                "name": label,
                # the key the next request is sealed to (no hello needed while it holds)
                "certificate": answer.response.certificate.to_bytes().hex(),
            }
        if answer is None and skewed:
            detail = "; ".join(problems) + " (set this machine's clock)"
            outcomes.append(TryNext("kms-clock-skew", f"{adba_message}; {detail}"))
            continue
        if answer is None:
            if not hosts.any:  # nothing to try: the ADBA reason stays the one that matters
                where = ", ".join(hosts.searched) or "none configured"
                detail = f"no KMS host found (static host, cache, DNS: {where})"
                code = adba_code
            else:
                detail = "; ".join(problems)
            outcomes.append(TryNext(code, f"{adba_message}; {detail}"))
            continue
        resp = answer.response
        where = answer.where
        rec.update(
            kms_host=where, kms_count=resp.count, kms_epid=resp.certificate.epid, last_attempt=now
        )
        if resp.count >= threshold:
            expires = now + settings.validity
            rec.update(
                channel=NAME,
                object_dn=None,
                csvlk_pid=resp.certificate.epid,
                dc=None,
                activated_at=now,
                expires_at=expires,
                next_attempt=now + resp.renewal_minutes * 60,
                last_error=None,
            )
            until = time.strftime("%Y-%m-%d", time.gmtime(expires))
            message = (
                f"activated by KMS host {where} (ePID {resp.certificate.epid}, count "
                f"{resp.count}), valid until {until}"
            )
            log.info("%s: %s", product.edition, message)
            outcomes.append(Outcome(product.edition, True, "activated", message, True))
        else:
            message = (
                f"{adba_message}; KMS host {where}: count {resp.count}, "
                f"{threshold} needed to activate a {product.kind}"
            )
            retry_at = now + resp.retry_minutes * 60
            outcomes.append(TryNext("kms-count-low", message, retry_at))
    return outcomes
