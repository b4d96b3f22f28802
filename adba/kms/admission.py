"""Who gets one of the KMS host's connection slots, and how refusals are logged.

:class:`Slots` bounds the connections served at once (``max_connections``, 512) and what one
source may hold of them (``max_per_source``, 64): a source is an IPv4 address or an IPv6 /64
(one machine's whole prefix). A source over its share is refused at once; when every slot is
taken, the newest connection of the source holding the most is dropped to make room, if that
source holds at least two more than the newcomer's; otherwise the newcomer is refused. With
the two deadlines of the host (the first byte soon, the whole request soon after) one address
trickling bytes over hundreds of connections cannot starve the others.

:class:`RejectLog` aggregates the warnings: the first rejection of an interval is logged with
its peer, the others only counted by reason, and one summary line per interval gives the
counts ("suppressed N"), so a flood of bad packets cannot flood the log.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RejectLog", "Slots", "source_of"]

log = logging.getLogger("adba.kms.host")

C = TypeVar("C")


def source_of(peername: object) -> str:
    """The accounting key of a peer: the IPv4 address, or the IPv6 /64 prefix."""
    if not isinstance(peername, tuple) or not peername:
        return "?"
    address = str(peername[0])
    if ":" not in address:
        return address
    if address.startswith("::ffff:") and "." in address:  # IPv4-mapped
        return address[7:]
    try:
        return socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])[:8].hex() + "::/64"
    except OSError:
        return address


class Slots(Generic[C]):
    """Connections held, per source, oldest first (plain dicts: O(1) on the request path)."""

    def __init__(self, max_connections: int, max_per_source: int) -> None:
        self.max_connections = max_connections
        self.max_per_source = min(max_per_source, max_connections)
        self.open = 0
        self.by_source: dict[str, dict[C, None]] = {}

    def admit(self, conn: C, source: str) -> tuple[str | None, C | None]:
        """(refusal reason or None, a connection to drop to make room or None)."""
        held = self.by_source.get(source)
        n = len(held) if held is not None else 0
        if n >= self.max_per_source:
            return "source-limit", None
        victim = None
        if self.open >= self.max_connections:
            fullest_source, fullest = max(self.by_source.items(), key=lambda kv: len(kv[1]))
            if len(fullest) < n + 2:
                return "full", None
            victim = next(reversed(fullest))  # its newest: the oldest may be about to finish
            self.release(victim, fullest_source)
        if held is None:
            held = self.by_source[source] = {}
        held[conn] = None
        self.open += 1
        return None, victim

    def release(self, conn: C, source: str) -> bool:
        held = self.by_source.get(source)
        if held is None or conn not in held:
            return False
        del held[conn]
        if not held:
            del self.by_source[source]
        self.open -= 1
        return True


class RejectLog:
    """At most two warning lines per ``interval``: the first rejection, then a summary."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.window_end = 0.0
        self.counts: dict[str, int] = {}

    def note(self, reason: str, peer: object, detail: str = "") -> None:
        now = self.clock()
        if now < self.window_end:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            return
        self.summary()
        self.window_end = now + self.interval
        log.warning(
            "event=rejected peer=%s reason=%s%s (more are counted for %gs)",
            peer,
            reason,
            f" detail={detail!r}" if detail else "",
            self.interval,
        )

    def tick(self) -> None:
        """Called about once a second: close the window when its time is up."""
        if self.window_end and self.clock() >= self.window_end:
            self.summary()
            self.window_end = 0.0

    def summary(self) -> None:
        if not self.counts:
            return
        total = sum(self.counts.values())
        log.warning(
            "event=rejected-summary suppressed=%d seconds=%g %s",
            total,
            self.interval,
            " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())),
        )
        self.counts = {}
