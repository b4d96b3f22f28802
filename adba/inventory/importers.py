"""What others know, into the inventory: a KMS host's client table (its read-only clients API,
bearer token, TLS optional) and the authority's status of the customer's own keys (MAK
activations left, KMS host slots left: the key itself proves ownership), and the guests an
AVMA host on this machine has answered (its state directory, read-only)."""

from __future__ import annotations

import logging
import sqlite3
import ssl
from typing import Any

from ..errors import AuthorityError, AuthorityUnavailable, InvalidInput, KmsError

__all__ = ["fetch_key_status", "fetch_kms_clients", "read_avma_guests"]

log = logging.getLogger(__name__)


def _verify(url: str, ca_file: str | None) -> Any:
    if not url.startswith(("https://", "http://")):
        raise InvalidInput(f"{url!r} must start with https:// (or http:// for a lab)")
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def fetch_kms_clients(
    url: str, token: str, *, ca_file: str | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """``GET <url>/v1/clients``: {"epid", "count", "clients": [...]}."""
    import httpx

    verify = _verify(url, ca_file)
    try:
        with httpx.Client(verify=verify, timeout=timeout) as client:
            response = client.get(
                url.rstrip("/") + "/v1/clients", headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as exc:
        raise KmsError(f"the KMS host's clients API at {url}: {exc}") from exc
    if response.status_code == 401:
        raise KmsError(f"the KMS host at {url} refused the token (401)")
    if response.status_code != 200:
        raise KmsError(f"the KMS host at {url} answered {response.status_code}")
    try:
        data = response.json()
        clients = data["clients"]
        if not isinstance(clients, list) or not all(
            isinstance(c, dict) and "cmid" in c for c in clients
        ):
            raise ValueError("no client list")
    except (ValueError, KeyError, TypeError) as exc:
        raise KmsError(f"the KMS host at {url} sent an unreadable client table: {exc}") from exc
    return dict(data)


def fetch_key_status(
    url: str, key: str, *, ca_file: str | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """``POST <url>/v1/keys/status`` with the key: its activations / host slots left."""
    import httpx

    verify = _verify(url, ca_file)
    try:
        with httpx.Client(verify=verify, timeout=timeout) as client:
            response = client.post(url.rstrip("/") + "/v1/keys/status", json={"key": key})
    except httpx.HTTPError as exc:
        raise AuthorityUnavailable(f"the activation authority at {url}: {exc}") from exc
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code != 200:
        message = data.get("message") if isinstance(data, dict) else None
        raise AuthorityError(
            f"the authority at {url} refused ({response.status_code}): {message or 'no reason'}"
        )
    if not isinstance(data, dict) or "key_sha256" not in data:
        raise AuthorityError(f"the authority at {url} sent an unreadable key status")
    return data


def read_avma_guests(state_dir: str) -> dict[str, Any]:
    """The AVMA host in ``state_dir`` (``adba avma init``'s directory): {"host": its host id,
    "guests": :func:`adba.avma.store.guest_rows`}. Reads only; the host may be serving."""
    import json
    from pathlib import Path

    from ..avma.host import HOST_JSON
    from ..avma.store import guest_rows

    d = Path(state_dir)
    try:
        info = json.loads((d / HOST_JSON).read_text())
        host = str(info["host_id"])
    except FileNotFoundError as exc:
        raise InvalidInput(
            f"{d} is not an AVMA host's state directory (no {HOST_JSON}: `adba avma init`)",
            path=str(d),
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"cannot read the AVMA host in {d}: {exc}", path=str(d)) from exc
    try:
        guests = guest_rows(d)
    except sqlite3.Error as exc:
        raise InvalidInput(f"cannot read the AVMA host's guests in {d}: {exc}") from exc
    return {"host": host, "guests": guests}
