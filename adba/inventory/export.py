"""The machine list (VAMT's computer information list) as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["COLUMNS", "to_csv", "to_json"]

COLUMNS = (
    "name",
    "address",
    "dn",
    "source",
    "status",
    "channel",
    "expires_at",
    "days_left",
    "last_collected",
    "error_code",
    "error_message",
)


def _row(machine: dict[str, Any], now: int) -> dict[str, Any]:
    expires = machine.get("expires_at")
    left = max(0, (int(expires) - now) // 86400) if expires else None
    return {c: (left if c == "days_left" else machine.get(c)) for c in COLUMNS}


def to_csv(machines: Sequence[dict[str, Any]], now: int) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for m in machines:
        row = _row(m, now)
        # a cell a spreadsheet would run as a formula is kept as text
        writer.writerow(
            {
                k: ("'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@") else v)
                for k, v in row.items()
            }
        )
    return out.getvalue()


def to_json(machines: Sequence[dict[str, Any]], now: int) -> str:
    return json.dumps([_row(m, now) for m in machines], indent=2, sort_keys=True) + "\n"
