"""Machines from the directory's computer objects, like VAMT's directory search.

AD: ``(objectClass=computer)``, named by ``dNSHostName`` (else ``cn``). OpenLDAP: ``device``
or ``computer`` entries, named by ``associatedDomain`` or ``ipHostNumber`` when present (else
``cn``). A subtree search under ``computers`` (default: the forest root), paged.
"""

from __future__ import annotations

import logging
from typing import Any

from ..directory.connection import ConnectionOptions, raise_for_result, session
from ..errors import ObjectNotFound

__all__ = ["FILTER", "Computer", "discover"]

log = logging.getLogger(__name__)

FILTER = "(|(objectClass=computer)(objectClass=device))"
_ATTRIBUTES = ["cn", "dNSHostName", "associatedDomain", "ipHostNumber", "objectClass"]
_PAGED_OID = "1.2.840.113556.1.4.319"

#: (name, address for SSH, DN)
Computer = tuple[str, str | None, str]


def _first(attributes: dict[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value).strip() if value else None


def _computer(dn: str, attributes: dict[str, Any]) -> Computer | None:
    dns = _first(attributes, "dNSHostName") or _first(attributes, "associatedDomain")
    cn = _first(attributes, "cn")
    address = dns or _first(attributes, "ipHostNumber")
    name = (dns or cn or "").rstrip("$").lower()
    if not name or any(c.isspace() for c in name):
        log.warning("skipped %s: no usable machine name", dn)
        return None
    return name, address, dn


def discover(opts: ConnectionOptions, base: str, *, page_size: int = 500) -> list[Computer]:
    """Every computer object under ``base`` as (name, address, DN), sorted by name."""
    import ldap3

    found: dict[str, Computer] = {}
    with session(opts) as conn:
        cookie: bytes | None = None
        while True:
            conn.search(
                base,
                FILTER,
                ldap3.SUBTREE,
                attributes=_ATTRIBUTES,
                paged_size=page_size,
                paged_cookie=cookie,
            )
            try:
                raise_for_result(conn.result, what=f"search {base}", dn=base)
            except ObjectNotFound as exc:
                raise ObjectNotFound(
                    f"no {base}, or this identity may not read it: discovery reads the "
                    "computer objects, so bind as an identity the directory lets read them",
                    dn=base,
                ) from exc
            for entry in conn.response or ():
                if entry.get("type") != "searchResEntry":
                    continue
                computer = _computer(entry["dn"], entry.get("attributes") or {})
                if computer:
                    found.setdefault(computer[0], computer)
            control = (conn.result.get("controls") or {}).get(_PAGED_OID) or {}
            cookie = (control.get("value") or {}).get("cookie") or None
            if not cookie:
                break
    return sorted(found.values())
