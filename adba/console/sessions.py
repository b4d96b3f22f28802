"""Console sessions: a table in server memory keyed by a random id (the only thing the
cookie holds), each with its CSRF token and the user's directory credentials; idle expiry;
failed sign-ins rate-limited per source address and per user name."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..directory.connection import ConnectionOptions

__all__ = ["RateLimiter", "Session", "SessionTable", "same_token"]


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing token never matches."""
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


@dataclass(eq=False)
class Session:
    id: str
    user: str  #: the bind DN (or AD account name) the directory accepted
    options: ConnectionOptions = field(repr=False)  #: carries the password: never logged
    root: str  #: the forest root DN
    csrf: str = field(repr=False)
    source: str
    created: float
    last_seen: float


class SessionTable:
    """Sessions by id; one idle longer than ``idle_timeout`` or older than ``max_age``
    seconds is gone (and its credentials with it)."""

    def __init__(self, *, idle_timeout: float = 900.0, max_age: float = 12 * 3600.0) -> None:
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(
        self, user: str, options: ConnectionOptions, *, root: str, source: str, now: float
    ) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            user=user,
            options=options,
            root=root,
            csrf=secrets.token_urlsafe(32),
            source=source,
            created=now,
            last_seen=now,
        )
        with self._lock:
            self._expire(now)
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None, *, now: float) -> Session | None:
        """The live session with this id, its idle clock restarted; None if unknown or
        expired."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if self._expired(session, now):
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen > self.idle_timeout or now - session.created > self.max_age

    def _expire(self, now: float) -> None:
        for sid in [s for s, v in self._sessions.items() if self._expired(v, now)]:
            del self._sessions[sid]


class RateLimiter:
    """At most ``limit`` failures per key within ``window`` seconds; then refused until the
    oldest leaves the window. Keys are the source address and the user name, so neither many
    names from one address nor one name from many addresses gets more tries."""

    def __init__(self, *, limit: int = 5, window: float = 60.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: list[str], *, now: float) -> int:
        """Seconds until every one of ``keys`` may try again (0: now)."""
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._prune(key, now)
                if times is not None and len(times) >= self.limit:
                    wait = max(wait, times[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def fail(self, keys: list[str], *, now: float) -> None:
        with self._lock:
            if len(self._failures) >= self.max_keys:  # bounded memory under a spray
                for key in list(self._failures):
                    self._prune(key, now)
                if len(self._failures) >= self.max_keys:
                    self._failures.pop(next(iter(self._failures)))
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

    def _prune(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times
