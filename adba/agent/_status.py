"""Is this machine licensed? Read from the state file; needs no root and no network.

The ``slmgr /dli /dlv /xpr`` of this system, and the typed result of ``adba.status()``.
Status is derived at read time (time passes between runs):

- ``licensed``: activated, and the activation has not expired;
- ``grace``: never activated, within the grace period after the product was first seen (or
  an AVMA guest whose activation ran out, within the grace period after it did);
- ``notification``: the grace period or the activation has run out;
- ``unlicensed``: the configured product key cannot be used at all.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from . import STATUS_SCHEMA
from .state import read_state

__all__ = ["STATUS_SCHEMA", "ProductStatus", "derive", "read_status"]


class ProductStatus(NamedTuple):
    edition: str
    sku: str
    status: str
    channel: str | None
    object_dn: str | None
    csvlk_pid: str | None
    dc: str | None
    partial_key: str | None
    activated_at: int | None
    expires_at: int | None
    next_attempt: int | None
    last_attempt: int | None
    last_error_code: str | None
    last_error_message: str | None
    remaining_seconds: int
    kms_host: str | None = None
    kms_count: int | None = None
    avma_host: str | None = None

    @property
    def licensed(self) -> bool:
        return self.status == "licensed"

    def to_dict(self) -> dict[str, Any]:
        out = self._asdict()
        if out["avma_host"] is None:  # only AVMA products have the field
            del out["avma_host"]
        return out


def derive(rec: dict[str, Any], now: int) -> tuple[str, int]:
    """(status, seconds left in that status) for one product record."""
    error = rec.get("last_error") or {}
    expires = rec.get("expires_at")
    if rec.get("mak_confirmed"):  # a MAK activation does not expire
        return "licensed", 0
    if expires and now < expires:
        return "licensed", expires - now
    if error.get("code") == "invalid-key" and not expires:
        return "unlicensed", 0
    grace = rec.get("grace_until") or 0
    if not expires and now < grace:
        return "grace", grace - now
    lapsed = rec.get("lapse_grace_until") or 0  # an AVMA guest whose host stopped renewing
    if expires and rec.get("channel") == "AVMA" and now < lapsed:
        return "grace", lapsed - now
    return "notification", 0


def read_status(state_path: str, *, now: int | None = None) -> list[ProductStatus]:
    now = int(time.time()) if now is None else now
    state = read_state(state_path, recover=False)
    out = []
    for sku, rec in sorted(state["products"].items(), key=lambda kv: kv[1].get("edition", "")):
        status, remaining = derive(rec, now)
        error = rec.get("last_error") or {}
        out.append(
            ProductStatus(
                edition=rec.get("edition", sku),
                sku=sku,
                status=status,
                channel=rec.get("channel") if status == "licensed" else None,
                object_dn=rec.get("object_dn"),
                csvlk_pid=rec.get("csvlk_pid"),
                dc=rec.get("dc"),
                partial_key=rec.get("partial_key"),
                activated_at=rec.get("activated_at"),
                expires_at=rec.get("expires_at"),
                next_attempt=rec.get("next_attempt"),
                last_attempt=rec.get("last_attempt"),
                last_error_code=error.get("code"),
                last_error_message=error.get("message"),
                remaining_seconds=remaining,
                kms_host=rec.get("kms_host"),
                kms_count=rec.get("kms_count"),
                avma_host=rec.get("avma_host"),
            )
        )
    return out
