"""One pass of the agent: each installed product walks the chain of channels
(:mod:`adba.agent.chain`: ADBA, KMS, MAK) until one activates it; the last reason a channel
gave stands when none does, and the product is retried after the retry interval (2 hours,
unless the channel said when)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..errors import AdbaError
from .chain import Pass, channels, pinned
from .config import ProductSettings, Settings
from .directory import _forget_retired, learn_retired
from .outcome import Outcome, TryNext, stable_code

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any

    from .chain import Channel

__all__ = [
    "Outcome",
    "RunReport",
    "_forget_retired",
    "learn_retired",
    "next_step",
    "run_pass",
    "stable_code",
]

log = logging.getLogger("adba.agent")


@dataclass(eq=False, repr=False)
class RunReport:
    outcomes: list[Outcome]
    dc: str | None
    state: dict[str, Any]


def next_step(product: ProductSettings, code: str, message: str) -> tuple[str, str]:
    """The code and message recorded when no channel activated ``product``."""
    if product.key_type == "MAK":
        return code, f"{message}; MAK activation next"
    return code, message


def _record(
    state: dict[str, Any], product: ProductSettings, settings: Settings, now: int
) -> dict[str, Any]:
    rec: dict[str, Any] = state["products"].setdefault(product.sku, {})
    rec.setdefault("first_seen", now)
    rec.update(
        edition=product.edition,
        sku=product.sku,
        kind=product.kind,
        key_type=product.key_type,
        partial_key=product.partial,
        grace_until=rec["first_seen"] + settings.grace,
    )
    return rec


def _fail(
    rec: dict[str, Any],
    product: ProductSettings,
    settings: Settings,
    code: str,
    message: str,
    now: int,
) -> Outcome:
    code, message = next_step(product, code, message)
    if not isinstance(code, str) or not code:  # a stable string, whatever the caller passed
        code = AdbaError.code
    licensed = bool(rec.get("expires_at")) and now < rec["expires_at"]
    if licensed:
        until = time.strftime("%Y-%m-%d", time.gmtime(rec["expires_at"]))
        message = f"{message}; still licensed until {until}"
    rec.update(
        last_attempt=now,
        next_attempt=now + settings.retry,
        last_error={"code": code, "message": message},
    )
    return Outcome(product.edition, False, code, message, licensed)


def _takes(channel: Channel, product: ProductSettings, settings: Settings) -> bool | TryNext:
    """The channel's answer, filtered by the pinned activation type."""
    took = channel.takes(product, settings)
    pin = pinned(product, settings)
    if pin and pin != channel.NAME and took is True:
        return TryNext("act-type-pinned", f"{channel.NAME} not tried (act_type = {pin})")
    return took


def run_pass(
    settings: Settings, state: dict[str, Any], *, now: int | None = None, due_only: bool = False
) -> RunReport:
    """One pass over the installed products; updates ``state`` in place (the caller writes it)."""
    now = int(time.time()) if now is None else now
    learn_retired(state, settings.retired_keys)  # the pinned file: remembered even if it goes
    state["products"] = {
        sku: rec
        for sku, rec in state["products"].items()
        if sku in {p.sku for p in settings.products}
    }
    p = Pass(settings, state, now)
    chain = channels()
    outcomes: list[Outcome] = []
    #: product -> the reason that stands so far (None: no channel gave one yet)
    pending: dict[str, tuple[ProductSettings, TryNext | None]] = {}
    for product in settings.products:
        rec = _record(state, product, settings, now)
        if due_only and rec.get("next_attempt", 0) > now:
            continue
        if product.key_error:
            rec.update(
                last_attempt=now,
                next_attempt=now + settings.retry,
                last_error={"code": "invalid-key", "message": product.key_error},
            )
            outcomes.append(Outcome(product.edition, False, "invalid-key", product.key_error))
        else:
            pending[product.sku] = (product, None)

    def settle(position: int, skus: list[str]) -> None:
        """Give the final word to each of ``skus`` that no channel after ``position`` takes."""
        for sku in skus:
            product, reason = pending[sku]
            later = False
            for channel in chain[position:]:
                took = _takes(channel, product, settings)
                if took is True:
                    later = True
                    break
                if isinstance(took, TryNext) and reason is None:
                    reason = took
            if later:
                pending[sku] = (product, reason)
                continue
            del pending[sku]
            reason = reason or TryNext("not-activated", "no channel takes this product")
            rec = state["products"][sku]
            outcomes.append(_fail(rec, product, settings, reason.code, reason.message, now))
            if reason.retry_at is not None:
                rec["next_attempt"] = reason.retry_at

    settle(0, list(pending))
    for position, channel in enumerate(chain):
        batch: list[tuple[ProductSettings, TryNext]] = []
        for product, reason in pending.values():
            took = _takes(channel, product, settings)
            if took is True:
                batch.append((product, reason or TryNext("not-activated", "not activated")))
            elif isinstance(took, TryNext) and reason is None:
                pending[product.sku] = (product, took)
        if not batch:
            continue
        results = channel.attempt(p, batch)
        tried: list[str] = []
        for (product, _reason), result in zip(batch, results, strict=True):
            if isinstance(result, Outcome):
                del pending[product.sku]
                outcomes.append(result)
            else:
                pending[product.sku] = (product, result)
                tried.append(product.sku)
        settle(position + 1, tried)
    for outcome in outcomes:
        if not outcome.activated:
            log.info("%s: not activated: %s", outcome.edition, outcome.message)
    return RunReport(outcomes, p.dc, state)
