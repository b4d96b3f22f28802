"""The agent's AVMA channel: a product configured with its edition's AVMA key asks the host
it runs on (``avma_host``: vsock CID 2 by default, or a Unix socket) -- no DC, DNS or KMS
traffic. Licensed for the validity the host gives (short: it renews at the host's renewal
interval while it runs); a guest whose host stops activating it keeps its activation until it
runs out, then falls into grace (``grace_days``) with the host's reason."""

from __future__ import annotations

import logging
import time
import uuid

from ..errors import AdbaError
from .config import ProductSettings, Settings
from .outcome import Outcome, TryNext, stable_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .chain import Pass

__all__ = ["NAME", "attempt", "takes"]

NAME = "AVMA"

log = logging.getLogger("adba.agent")


def takes(product: ProductSettings, settings: Settings) -> bool:
    """A product configured with an AVMA key, and only it."""
    return product.key_type == "AVMA"


def attempt(p: Pass, batch: list[tuple[ProductSettings, TryNext]]) -> list[Outcome | TryNext]:
    import socket

    from ..avma.client import ask
    from ..avma.transport import Address

    settings, state, now = p.settings, p.state, p.now
    address = Address.parse(settings.avma_host)
    guest = uuid.UUID(state.setdefault("cmid", str(uuid.uuid4())))
    name = (settings.machine_name or socket.gethostname())[:31]
    out: list[Outcome | TryNext] = []
    for product, _reason in batch:
        rec = state["products"][product.sku]
        try:
            answer = ask(
                address,
                guest_id=guest,
                edition_sku=uuid.UUID(product.sku),
                name=name,
                now=now,
                root_public_key=bytes.fromhex(settings.root_key),
                host_editions=product.avma_hosts,
                timeout=settings.connect_timeout,
            )
        except AdbaError as exc:
            log.warning("%s: AVMA: %s", product.edition, exc.message)
            out.append(TryNext(stable_code(exc), exc.message))
            continue
        host_key = answer.certificate.public_key[:8].hex()
        expires = now + answer.validity
        rec.update(
            channel=NAME,
            object_dn=None,
            csvlk_pid=None,
            dc=None,
            avma_host=f"{address} (host key {host_key})",
            activated_at=now,
            expires_at=expires,
            lapse_grace_until=expires + settings.grace,
            last_attempt=now,
            next_attempt=now + answer.renewal,
            last_error=None,
        )
        until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(expires))
        message = f"activated by AVMA host {address} (host key {host_key}), valid until {until}"
        log.info("%s: %s", product.edition, message)
        out.append(Outcome(product.edition, True, "activated", message, True))
    return out
