"""The host's memory of v2 nonces, so that a recorded request is not answered twice.

A v2 request is accepted only while its client time is within ``window`` (4 h) of the host's
clock, so a nonce needs remembering only until the host's clock passes its client time plus
the window: nonces are kept in one bucket per client-time second and a bucket is dropped as
soon as no request of that second can be accepted any more.

Memory is bounded: beyond ``capacity`` nonces the oldest bucket is dropped early and the
*floor* rises to its end -- a request whose client time is at or below the floor is refused
as a possible replay (it can no longer be told apart). Under a load that fills the capacity
within the window, the accepted window's past edge narrows (at 6,000 requests/s and the
default capacity, to about 40 s behind the host's clock); it never lets a replay through.
"""

from __future__ import annotations

__all__ = ["ReplayCache"]

#: about 80 bytes a nonce: 1 M nonces are ~80 MB (256 Ki by default: ~20 MB)
CAPACITY = 1 << 18


class ReplayCache:
    __slots__ = ("_buckets", "_oldest", "capacity", "floor", "size", "window")

    def __init__(self, window: int, capacity: int = CAPACITY) -> None:
        self.window = window
        self.capacity = capacity
        self._buckets: dict[int, set[bytes]] = {}
        self._oldest: int | None = None  # the lowest bucket key, None when empty
        self.size = 0
        #: client times at or below this are refused (raised only by an early drop)
        self.floor = -(1 << 63)

    def admit(self, nonce: bytes, client_time: int, now: int) -> bool:
        """True (and remembered) for a nonce not seen in the window; False for a replay or
        a client time at or below the floor. The caller checked the time window already."""
        if client_time <= self.floor:
            return False
        bucket = self._buckets.get(client_time)
        if bucket is None:
            bucket = self._buckets[client_time] = set()
            if self._oldest is None or client_time < self._oldest:
                self._oldest = client_time
        elif nonce in bucket:
            return False
        bucket.add(nonce)
        self.size += 1
        self._expire(now)
        return True

    def _expire(self, now: int) -> None:
        # a bucket whose second plus the window is past can never be accepted again
        while self._oldest is not None and (
            self._oldest + self.window < now or self.size > self.capacity
        ):
            second = self._oldest
            dropped = self._buckets.pop(second)
            self.size -= len(dropped)
            if second + self.window >= now:  # dropped early: raise the floor
                self.floor = max(self.floor, second)
            self._oldest = min(self._buckets) if self._buckets else None
