"""The agent's third step: MAK activation with the vendor's authority (the seed's "MAK").

A product configured with a MAK (``key``), or a GVLK product with a MAK to fall back to
(``mak_key``) whose ADBA and KMS attempts both failed, activates once with the authority:

- **independent, online**: the agent sends this machine's installation ID (the MAK and a hash
  of the machine's CMID and edition) to ``authority_url`` and gets the confirmation back;
- **independent, offline**: ``adba agent get-iid`` prints the installation ID, someone gets the
  confirmation ID (``adba authority confirm``, or by telephone), ``adba agent apply-cid`` applies
  it;
- **proxy**: an admin gathers ``adba agent get-iid --json`` from many machines, ``adba mak
  proxy`` sends them in one request and writes a confirmation file per machine to apply.

A MAK activation is checked under the pinned root key and does not expire. The MAK itself is
read from the (root-only) configuration file when needed and never written to the state.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from ..errors import ActivationLimitReached, AdbaError, ConfigError, InvalidInput, LicenseError
from .config import ProductSettings, Settings
from .outcome import Outcome, TryNext, stable_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..confirmation import Confirmation, Installation
    from ..keys import ProductKey
    from .chain import Pass

__all__ = ["NAME", "apply_confirmation", "attempt", "installation_for", "takes"]

NAME = "MAK"

log = logging.getLogger("adba.agent")


def _mak_key(settings: Settings, product: ProductSettings) -> ProductKey:
    import os

    from ..keys import KeyType, parse_key
    from .config import read_raw

    raw = read_raw(settings.source, dict(os.environ))
    entry = raw.get("products", [])[product.index]
    text = entry.get("mak_key") or entry.get("key")
    key = parse_key(text) if text else None
    if key is None or key.type is not KeyType.MAK:
        raise ConfigError(f"{settings.source}: products[{product.index}] has no MAK")
    return key


def cmid_of(state: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(state.setdefault("cmid", str(uuid.uuid4())))


def installation_for(
    settings: Settings, state: dict[str, Any], product: ProductSettings
) -> Installation:
    from ..confirmation import KIND_MAK_MACHINE, Installation, machine_binding

    key = _mak_key(settings, product)
    return Installation.of(
        KIND_MAK_MACHINE, key, machine_binding(cmid_of(state), uuid.UUID(product.sku))
    )


def apply_confirmation(
    settings: Settings, state: dict[str, Any], product: ProductSettings, confirmation: Confirmation
) -> str:
    """Check a confirmation under the pinned root key and record the MAK activation."""
    from ..confirmation import signed_message, verify_root_signature

    installation = installation_for(settings, state, product)
    if not verify_root_signature(
        bytes.fromhex(settings.root_key),
        confirmation.signature,
        signed_message(installation, confirmation.issued_at),
    ):
        raise LicenseError(
            f"the confirmation ID does not answer {product.edition}'s installation ID on this "
            "machine (another machine, another key, or not from the pinned authority)"
        )
    rec = state["products"].setdefault(
        product.sku, {"edition": product.edition, "sku": product.sku}
    )
    rec.update(
        channel=NAME,
        mak_confirmed=True,
        activated_at=confirmation.issued_at,
        expires_at=None,
        object_dn=None,
        csvlk_pid=None,
        partial_key=product.mak_partial,
        last_error=None,
        mak={"installation_id": installation.text(), "confirmation_id": confirmation.text()},
    )
    return f"activated by MAK *****-*****-*****-*****-{product.mak_partial} (does not expire)"


def takes(product: ProductSettings, settings: Settings) -> bool:
    """A product configured with a MAK, or a GVLK product with a MAK to fall back to."""
    return product.key_type == "MAK" or (
        product.key_type == "GVLK" and product.mak_partial is not None
    )


def attempt(p: Pass, batch: list[tuple[ProductSettings, TryNext]]) -> list[Outcome | TryNext]:
    settings, state, now = p.settings, p.state, p.now
    outcomes: list[Outcome | TryNext] = []
    for product, reason in batch:
        message = reason.message
        rec = state["products"][product.sku]
        if rec.get("mak_confirmed"):
            outcomes.append(
                Outcome(product.edition, True, "activated", "activated by MAK earlier", True)
            )
            continue
        if not settings.authority_url:
            outcomes.append(
                TryNext(
                    "mak-offline",
                    f"{message}; MAK activation needs the authority: set authority_url, or run "
                    "`adba agent get-iid` and then `adba agent apply-cid`",
                )
            )
            continue
        from ..authority.client import RemoteAuthority

        try:
            installation = installation_for(settings, state, product)
            confirmation = RemoteAuthority(
                settings.authority_url,
                ca_file=settings.authority_ca_file,
                timeout=settings.connect_timeout * 5,
            ).confirm(installation)
            done = apply_confirmation(settings, state, product, confirmation)
        except ActivationLimitReached as exc:
            outcomes.append(TryNext("mak-exhausted", f"{message}; {exc.message}"))
            continue
        except (AdbaError, InvalidInput) as exc:
            outcomes.append(TryNext(stable_code(exc), f"{message}; MAK: {exc.message}"))
            continue
        rec.update(last_attempt=now, next_attempt=now + settings.renewal)
        log.info("%s: %s", product.edition, done)
        outcomes.append(Outcome(product.edition, True, "activated", done, True))
    return outcomes


def read_confirmations(path: str) -> list[tuple[str, str]]:
    """(edition, confirmation ID) pairs from an ``adba mak proxy`` output file."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read confirmations from {path}: {exc}") from exc
    pairs = []
    for entry in data.get("products", []):
        if entry.get("confirmation_id"):
            pairs.append((str(entry["edition"]), str(entry["confirmation_id"])))
        else:
            log.warning(
                "%s: no confirmation in %s: %s", entry.get("edition"), path, entry.get("message")
            )
    return pairs
