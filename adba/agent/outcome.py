"""What a channel of the agent says about a product: an :class:`Outcome` (activated, or the
final word), or :class:`TryNext` (this channel did not activate it: the next one may)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import AdbaError

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Outcome", "TryNext", "stable_code"]


# eq/repr/frozen off: each generated method costs ~0.1 ms of import at every boot
@dataclass(eq=False)
class Outcome:
    edition: str
    activated: bool
    code: str
    message: str
    #: still licensed by an earlier activation (not renewed this time)
    licensed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TryNext(Exception):
    """This channel did not activate the product: why (a stable code and a message), and
    when to retry if no later channel does (``retry_at``; None: the retry interval)."""

    def __init__(self, code: str, message: str, retry_at: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_at = code, message, retry_at


def stable_code(exc: AdbaError) -> str:
    """The error's class code: a stable string, never the LDAP result code that
    :func:`raise_for_result` keeps in ``exc.code`` as context."""
    code = getattr(type(exc), "code", None)
    return code if isinstance(code, str) else AdbaError.code
