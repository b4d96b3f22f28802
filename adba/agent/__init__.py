"""The client agent: activate at boot, re-check when due, report status.

``run_agent()`` is what ``adba agent run`` calls; ``status()`` is what ``adba agent status``
and ``adba.status()`` call. Importing this package costs nothing heavy: ldap3 is imported
only when a domain controller is asked, dnspython only when DNS must be, pydantic only when
the configuration changed, and cryptography only when an object was not verified before.
"""

from __future__ import annotations

import logging
import os
import time

from ..errors import AdbaError
from .config import (
    DEFAULT_CONFIG,
    Settings,
    guess_state_path,
    load_settings,
    read_raw,
    state_path_for,
)
from .run import Outcome, RunReport, run_pass
from .state import DEFAULT_STATE, read_state, write_state

log = logging.getLogger("adba.agent")

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any

    from ._status import ProductStatus

#: version of ``adba agent status --json``; fields are only ever added
STATUS_SCHEMA = 1

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_STATE",
    "STATUS_SCHEMA",
    "Outcome",
    "ProductStatus",
    "RunReport",
    "resolve_state_path",
    "run_agent",
    "status",
]


def run_agent(
    config_path: str = DEFAULT_CONFIG,
    *,
    env: dict[str, str] | None = None,
    now: int | None = None,
    due_only: bool = False,
) -> RunReport:
    """One pass: load config and state, activate what can be, write the state atomically."""
    settings, state, state_path = load_settings_and_state(config_path, env=env)
    now = int(time.time()) if now is None else now
    report = run_pass(settings, state, now=now, due_only=due_only)
    try:
        save_state(state_path, report.state)
    except AdbaError as exc:
        _log_unsaved(report, state_path, now)
        exc.context["report"] = report  # `agent run --json` still prints what the pass did
        raise
    if settings.report_textfile:  # imported only when configured
        from .report import write_textfile

        try:
            write_textfile(settings.report_textfile, report.state, now)
        except OSError as exc:  # the pass is done and saved: a report that fails is a warning
            log.warning("cannot write the report %s: %s", settings.report_textfile, exc)
    return report


def _log_unsaved(report: RunReport, state_path: str, now: int) -> None:
    """What the pass learned, one WARNING line per product, for the log (journald) when the
    state file cannot keep it: status, channel, expiry and the outcome."""
    from ._status import derive

    records = {rec.get("edition"): rec for rec in report.state["products"].values()}
    for o in report.outcomes:
        rec = records.get(o.edition, {})
        status, _left = derive(rec, now)
        expires = rec.get("expires_at")
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires)) if expires else "-"
        channel = rec.get("channel") if status == "licensed" else None
        log.warning(
            "%s: %s, channel %s, expires %s: %s (not saved to %s)",
            o.edition,
            status,
            channel or "-",
            until,
            o.message,
            state_path,
        )


def save_state(state_path: str, state: dict[str, Any]) -> None:
    """:func:`write_state`, with a failure as :class:`StateNotSaved` naming the path."""
    from ..errors import StateNotSaved

    try:
        write_state(state_path, state)
    except OSError as exc:
        # the reason, never the temporary file's name (.state.json.<hex>) the error carries
        parent = os.path.dirname(os.path.abspath(state_path))
        blocked = next(
            (p for p in _parents(parent) if os.path.lexists(p) and not os.path.isdir(p)), None
        )
        reason = f"{blocked} is not a directory" if blocked else exc.strerror or str(exc)
        raise StateNotSaved(
            f"cannot save the agent state to {state_path}: {reason}; check state_path "
            "(ADBA_STATE) and that its directory is writable",
            path=state_path,
        ) from exc


def _parents(path: str) -> list[str]:
    """``path`` and each directory above it, nearest first."""
    out = [path]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out


def load_settings_and_state(
    config_path: str = DEFAULT_CONFIG, *, env: dict[str, str] | None = None
) -> tuple[Settings, dict[str, Any], str]:
    """Settings, state and state path: the configuration cache is used when the config is
    unchanged; a changed configuration forgets what was learnt under the old one."""
    env = dict(os.environ) if env is None else env
    state_path = guess_state_path(config_path, env)
    state = read_state(state_path)
    settings, cache = load_settings(
        config_path, env=env, cache=state["config"], state_path=state_path
    )
    if settings.state_path != state_path:
        state_path = settings.state_path
        state = read_state(state_path)
    if state["config"].get("digest") != cache["digest"]:
        state.update(config=cache, directory={}, verified={})
    return settings, state, state_path


def installation_ids(config_path: str = DEFAULT_CONFIG) -> dict[str, Any]:
    """``adba agent get-iid``: this machine's installation ID for each MAK product."""
    import socket

    from .mak import cmid_of, installation_for

    settings, state, state_path = load_settings_and_state(config_path)
    products = []
    for product in settings.products:
        if product.mak_partial:
            products.append(
                {
                    "edition": product.edition,
                    "sku": product.sku,
                    "installation_id": installation_for(settings, state, product).text(),
                }
            )
    save_state(state_path, state)  # the CMID must stay the one the IDs were made with
    return {
        "machine": settings.machine_name or socket.gethostname(),
        "cmid": str(cmid_of(state)),
        "products": products,
    }


def apply_confirmations(
    pairs: list[tuple[str | None, str]], config_path: str = DEFAULT_CONFIG
) -> list[str]:
    """``adba agent apply-cid``: (edition or None, confirmation ID) -> what happened."""
    from ..confirmation import Confirmation
    from ..errors import InvalidInput
    from .mak import apply_confirmation

    settings, state, state_path = load_settings_and_state(config_path)
    maks = [p for p in settings.products if p.mak_partial]
    done = []
    for edition, text in pairs:
        matches = [p for p in maks if edition is None or p.edition.lower() == edition.lower()]
        if len(matches) != 1:
            raise InvalidInput(
                f"say which product ({', '.join(p.edition for p in maks) or 'no MAK products'}) "
                "the confirmation ID is for: --edition"
            )
        message = apply_confirmation(settings, state, matches[0], Confirmation.parse(text))
        done.append(f"{matches[0].edition}: {message}")
    save_state(state_path, state)
    return done


def resolve_state_path(
    state_path: str | None = None, config_path: str | None = None, env: dict[str, str] | None = None
) -> str:
    """``state_path`` if given, else ADBA_STATE, else the config's state_path, else the default."""
    env = dict(os.environ) if env is None else env
    if state_path:
        return state_path
    if env.get("ADBA_STATE"):
        return env["ADBA_STATE"]
    try:
        return state_path_for(read_raw(config_path or DEFAULT_CONFIG, env))
    except Exception:
        return DEFAULT_STATE


def status(
    state_path: str | None = None, *, config_path: str | None = None, now: int | None = None
) -> list[ProductStatus]:
    """Is each installed product licensed? Typed results; no root, no network."""
    from ._status import read_status

    return read_status(resolve_state_path(state_path, config_path), now=now)


def __getattr__(name: str) -> object:
    if name == "ProductStatus":  # typed status results, imported only when asked for
        from ._status import ProductStatus

        return ProductStatus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
