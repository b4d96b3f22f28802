"""The agent's one state file: JSON, written atomically, readable by everyone, never fatal.

Writing is temp file in the same directory -> write -> fsync -> rename over the old file ->
fsync the directory, so a crash or SIGKILL at any point leaves either the old or the new file,
never a mix. A missing file starts empty; an unreadable or corrupt one is moved aside
(``<name>.corrupt-<time>``) with a warning and the agent starts afresh. The file holds no
secret (no password, no whole product key) and is mode 0644 so ``adba agent status`` needs
no root.

Layout (``version`` 1)::

    {"version": 1,
     "config": {"digest": "...", "settings": {...}},        # validated configuration cache
     "directory": {"dc": "ldap://...", "tls_name": "...", "root": "dc=...",
                   "container": "cn=Activation Objects,...", "forest_guid": "..."},
     "verified": {"<sha256 of what was verified>": {"not_before": 0, "not_after": 0,
                                                     "checked": 0, "signer": "<key id>"}},
     "retired": ["<hex id of a retired signing key>", ...],  # only grows; absent: none
     "scanned": ["<digest of a license whose retirement statement was read>", ...],
     "products": {"<edition SKU>": {ProductRecord fields}}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_STATE",
    "STATE_VERSION",
    "empty_state",
    "read_state",
    "remove_stale_temps",
    "write_state",
]

log = logging.getLogger(__name__)

DEFAULT_STATE = "/var/lib/adba/agent-state.json"
STATE_VERSION = 1


def empty_state() -> dict[str, Any]:
    return {"version": STATE_VERSION, "config": {}, "directory": {}, "verified": {}, "products": {}}


def _valid(data: object) -> bool:
    return (
        isinstance(data, dict)
        and data.get("version") == STATE_VERSION
        and all(
            isinstance(data.get(k), dict) for k in ("config", "directory", "verified", "products")
        )
    )


def read_state(path: str | os.PathLike[str], *, recover: bool = True) -> dict[str, Any]:
    """The state, or an empty one. A corrupt file is moved aside (if ``recover``) and logged."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return empty_state()
    except OSError as exc:
        log.warning(
            "cannot read state file %s (%s): starting with an empty state", path, exc.strerror
        )
        return empty_state()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if _valid(data):
        assert isinstance(data, dict)
        return data
    log.warning("state file %s is corrupt: recovered with an empty state", path)
    if recover:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        try:
            path.replace(aside)
            log.warning("the corrupt file was kept as %s", aside)
        except OSError:
            pass
    return empty_state()


#: a temp file older than this is a leftover of a writer that died (a write takes milliseconds)
STALE_TEMP_SECONDS = 600


def _temp_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}")


def remove_stale_temps(path: str | os.PathLike[str], *, now: float | None = None) -> int:
    """Remove this state file's own temp files (``.<name>.<12 hex>``) left by a writer that
    died inside :func:`write_state`; only those older than :data:`STALE_TEMP_SECONDS`, so a
    concurrent writer's file is never touched. Returns how many were removed."""
    path = Path(path)
    pattern = _temp_pattern(path)
    now = time.time() if now is None else now
    removed = 0
    try:
        names = os.listdir(path.parent)
    except OSError:
        return 0
    for name in names:
        if not pattern.fullmatch(name):
            continue
        stale = path.parent / name
        try:
            info = stale.lstat()
            if not os.path.isfile(stale) or now - info.st_mtime < STALE_TEMP_SECONDS:
                continue
            stale.unlink()
            removed += 1
        except OSError:
            continue
    if removed:
        log.warning("removed %d stale temp file(s) of %s", removed, path)
    return removed


def write_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Replace the state file atomically (old or new, never a mix, whatever happens)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    replace_file(path, json.dumps(state, sort_keys=True, indent=1).encode() + b"\n")


def replace_file(path: Path, data: bytes, *, temp_suffix: str = "") -> None:
    """Write ``data`` to a hidden temp file beside ``path`` (``.NAME.HEX`` + ``temp_suffix``),
    fsync it, make it 0644, rename it over ``path`` and fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}{temp_suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
