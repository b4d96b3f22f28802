"""Where a KMS host says it serves: its own ``_vlmcs._tcp`` SRV record in each domain of its
publish list (like Windows' ``DnsDomainPublishList``), with its own priority and weight.

:class:`Publication` is what to publish (the domains, this host's name, port and addresses,
the DNS server that takes the updates and the TSIG key); :func:`keep_published` is the host's
publishing loop: publish at start, then once a day (as Windows does), and record where in the
host's store so ``adba kms status`` shows it. Several hosts publish into one zone without
touching each other's records: each update deletes and adds only this host's own SRV rdata
(same target and port), see :func:`adba.discovery.publish_kms`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..discovery import PublishEntry, PublishResult, TsigKey, publish_kms, unpublish_kms
from ..errors import AdbaError

__all__ = ["DAY", "Publication", "keep_published", "published_json", "record_publication"]

log = logging.getLogger(__name__)

#: how often the host publishes again (Windows: every 24 hours)
DAY = 86400.0


@dataclass(frozen=True)
class Publication:
    """This host's SRV record (and A/AAAA records, for a name inside the zone) in each domain
    of ``entries``, written to ``server`` by updates signed with ``key``."""

    entries: tuple[PublishEntry, ...]
    host: str
    port: int
    addresses: tuple[str, ...]
    server: str
    key: TsigKey
    ttl: int = 300
    timeout: float = 5.0

    def publish(self) -> list[PublishResult]:
        return publish_kms(
            self.entries,
            host=self.host,
            port=self.port,
            addresses=self.addresses,
            server=self.server,
            key=self.key,
            ttl=self.ttl,
            timeout=self.timeout,
        )

    def unpublish(self) -> list[PublishResult]:
        return unpublish_kms(
            self.entries,
            host=self.host,
            port=self.port,
            addresses=self.addresses,
            server=self.server,
            key=self.key,
            timeout=self.timeout,
        )


def published_json(results: Sequence[PublishResult], now: int | None = None) -> str:
    """The ``published`` metadata row of the host's store (what ``kms status`` shows)."""
    at = int(time.time()) if now is None else now
    return json.dumps(
        [{"domain": r.domain, "server": r.server, "records": r.records, "at": at} for r in results]
    )


def record_publication(state_dir: str | Path, results: Sequence[PublishResult]) -> None:
    """Write where the host is published into its store (for ``adba kms publish`` run by
    hand; the serving host records through :func:`keep_published`)."""
    from .store import KmsStore

    store = KmsStore(Path(state_dir) / "kms.sqlite")
    try:
        store.set_meta("published", published_json(results))
    finally:
        store.close()


async def keep_published(
    publication: Publication,
    record: Callable[[str, str], Awaitable[None]],
    *,
    interval: float = DAY,
) -> None:
    """Publish now, then every ``interval`` seconds, until cancelled. Each success is handed
    to ``record`` (``KmsHost.record_meta``) as the ``published`` row; a failure is logged
    and the host keeps serving (the next round tries again)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            results = await loop.run_in_executor(None, publication.publish)
            await record("published", published_json(results))
            log.info("event=published %s", " ".join(f"domain={r.domain}" for r in results))
        except AdbaError as exc:
            log.error("event=publish-failed reason=%s", exc.message)
        except Exception as exc:  # the DNS or the records failed: keep serving
            log.error("event=publish-failed reason=%s", exc)
        await asyncio.sleep(interval)
