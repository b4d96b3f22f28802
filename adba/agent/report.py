"""The agent reports itself to Prometheus: a textfile for node_exporter's textfile collector
(``[report] textfile = "/var/lib/node_exporter/textfile/adba.prom"``), written atomically after
each pass (temp file in the same directory, fsync, rename), so the collector never reads half
a file. Imported only when configured: no cost on the boot path otherwise.

Metrics, one series per product (labels ``edition``, ``sku``)::

    adba_product_status{status="licensed|grace|notification|unlicensed"}  1 for the current one
    adba_product_channel{channel="ADBA|KMS|MAK"}                            1 while licensed
    adba_product_days_left                                                  days left in that status
    adba_product_expires_timestamp_seconds                                  when the activation ends
    adba_product_last_error{code="..."}                                     1 when the last attempt failed
    adba_report_timestamp_seconds                                           when this file was written
"""

from __future__ import annotations

import os

from ._status import derive

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["STATUSES", "render", "write_textfile"]

STATUSES = ("licensed", "grace", "notification", "unlicensed")


def _label(value: object) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(state: dict[str, Any], now: int) -> str:
    """The textfile for the products in ``state`` (the Prometheus text format 0.0.4)."""
    series: dict[str, list[str]] = {
        "adba_product_status": [],
        "adba_product_channel": [],
        "adba_product_days_left": [],
        "adba_product_expires_timestamp_seconds": [],
        "adba_product_last_error": [],
    }
    products = state.get("products", {})
    for sku, rec in sorted(products.items(), key=lambda kv: str(kv[1].get("edition", kv[0]))):
        status, remaining = derive(rec, now)
        base = f'edition="{_label(rec.get("edition", sku))}",sku="{_label(sku)}"'
        for s in STATUSES:
            series["adba_product_status"].append(
                f'adba_product_status{{{base},status="{s}"}} {int(s == status)}'
            )
        if status == "licensed" and rec.get("channel"):
            series["adba_product_channel"].append(
                f'adba_product_channel{{{base},channel="{_label(rec["channel"])}"}} 1'
            )
        series["adba_product_days_left"].append(
            f"adba_product_days_left{{{base}}} {remaining / 86400:.3f}"
        )
        if rec.get("expires_at"):
            series["adba_product_expires_timestamp_seconds"].append(
                f"adba_product_expires_timestamp_seconds{{{base}}} {int(rec['expires_at'])}"
            )
        error = rec.get("last_error") or {}
        if error.get("code"):
            series["adba_product_last_error"].append(
                f'adba_product_last_error{{{base},code="{_label(error["code"])}"}} 1'
            )
    helps = {
        "adba_product_status": "License status of the product (1 for the current status).",
        "adba_product_channel": "How the product is licensed (1 for the channel, while licensed).",
        "adba_product_days_left": "Days left in the current status (0 when it does not end).",
        "adba_product_expires_timestamp_seconds": "When the product's activation ends.",
        "adba_product_last_error": "The last activation attempt failed with this code.",
    }
    lines: list[str] = []
    for name, rows in series.items():
        lines += [f"# HELP {name} {helps[name]}", f"# TYPE {name} gauge", *rows]
    lines += [
        "# HELP adba_report_timestamp_seconds When the agent wrote this file.",
        "# TYPE adba_report_timestamp_seconds gauge",
        f"adba_report_timestamp_seconds {now}",
    ]
    return "\n".join(lines) + "\n"


def write_textfile(path: str, state: dict[str, Any], now: int) -> None:
    """Replace ``path`` atomically (the collector reads the old file or the new, never a mix).
    The temp file is hidden and does not end in ``.prom``, so the collector never reads it."""
    from pathlib import Path

    from .state import replace_file

    replace_file(Path(os.path.abspath(path)), render(state, now).encode(), temp_suffix=".tmp")
