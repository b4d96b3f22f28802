"""The agent's channels as one chain: ADBA (the directory), KMS, MAK, AVMA.

Each channel is a module with the same small interface (:class:`Channel`): ``NAME``; ``takes``
(does it take this product: yes, no, or no with the reason that stands if no later channel
activates it); ``attempt`` (one attempt for a batch of products: per product an
:class:`~adba.agent.outcome.Outcome`, or :class:`~adba.agent.outcome.TryNext` with its
reason). :func:`adba.agent.run.run_pass` only walks the chain. A pinned activation type
(``act_type``, like slmgr's ``/act-type``) is a filter on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ProductSettings, Settings

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any, Protocol

    from .outcome import Outcome, TryNext

    class Channel(Protocol):
        NAME: str

        def takes(self, product: ProductSettings, settings: Settings) -> bool | TryNext: ...

        def attempt(
            self, p: Pass, batch: list[tuple[ProductSettings, TryNext]]
        ) -> list[Outcome | TryNext]: ...


__all__ = ["ACT_TYPES", "Pass", "channels"]

#: the channels' names, in the order the chain tries them (the values act_type may pin)
ACT_TYPES = ("ADBA", "KMS", "MAK", "AVMA")


@dataclass(eq=False, repr=False)
class Pass:
    """One pass of the agent: what every channel reads and writes."""

    settings: Settings
    state: dict[str, Any]
    now: int
    #: the domain controller the ADBA channel remembered (None: it asked none)
    dc: str | None = None


def channels() -> list[Channel]:
    """The chain, in order (each module imports only the standard library at import)."""
    from . import avma, directory, kms, mak

    return [directory, kms, mak, avma]


def pinned(product: ProductSettings, settings: Settings) -> str | None:
    """The activation type pinned for ``product`` (its own, else the agent's), or None."""
    return product.act_type or settings.act_type
