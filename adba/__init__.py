"""ADBA: Active Directory-based activation with KMS and MAK fallbacks.

The package root stays light (the agent imports it at every boot): the error family and
:func:`status` are here; everything else lives in its module (``adba.catalog``, ``adba.keys``,
``adba.license``, ``adba.authority``, ``adba.directory``, ``adba.agent`` ...).

>>> import adba
>>> for product in adba.status():          # doctest: +SKIP
...     print(product.edition, product.status, product.expires_at)
"""

from __future__ import annotations

from adba.errors import EXIT_CODES, AdbaError

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy

if TYPE_CHECKING:
    from adba.agent._status import ProductStatus

__version__ = "0.1.0"
__all__ = ["EXIT_CODES", "AdbaError", "__version__", "status"]


def status(state_path: str | None = None, *, now: int | None = None) -> list[ProductStatus]:
    """Whether each installed product is licensed, from the agent's state (no root needed)."""
    from adba.agent import status as _status

    return _status(state_path, now=now)
