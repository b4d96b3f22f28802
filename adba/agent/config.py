"""Agent configuration: ``/etc/adba/agent.toml`` (or ``--config``), then ``ADBA_*`` variables.

The agent runs at every boot, so validation is paid only when something changed: the TOML
is parsed (tomllib, ~2 ms), the ``ADBA_*`` overrides applied, and a digest taken of that plus
the files it names (root key, catalogue). If the digest matches the one cached in the state
file, the cached, already-validated settings are used; otherwise pydantic validates
everything (``_schema.py``), the catalogue resolves each product, and the result is cached.

Example ``agent.toml``::

    domain = "example.test"                 # DC location via DNS SRV
    # dc_uris = ["ldap://dc1.example.test"] # or explicit DCs, tried in order
    # dns_servers = ["192.0.2.53"]          # DNS servers for SRV lookups (default: system)
    base = "dc=example,dc=test"             # forest root (default: from the root DSE)
    ca_file = "/etc/adba/ca.pem"
    root_key = "/etc/adba/root.pub"         # the activation authority's pinned root key
    state_path = "/var/lib/adba/agent-state.json"

    [machine]                               # the computer account the agent binds as
    dn = "cn=HOST1,ou=Computers,dc=example,dc=test"
    password_file = "/etc/adba/machine.password"   # mode 0600, owned by root
    # keytab = "/etc/krb5.keytab"           # reserved: Kerberos (GSSAPI) bind, not yet built

    [intervals]                             # like slmgr /sai /sri
    validity_days = 180
    renewal_days = 7
    retry_minutes = 120
    grace_days = 30
    connect_timeout = 2.0

    [[products]]
    edition = "Nimbus Server Standard"
    # key = "..."                           # default: the edition's GVLK
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigError
from .state import DEFAULT_STATE

__all__ = [
    "DEFAULT_CONFIG",
    "ENV",
    "ProductSettings",
    "Settings",
    "load_settings",
    "read_raw",
    "state_path_for",
]

DEFAULT_CONFIG = "/etc/adba/agent.toml"

#: ADBA_* variable -> (table or "", key); lists are comma-separated
ENV: dict[str, tuple[str, str]] = {
    "ADBA_DOMAIN": ("", "domain"),
    "ADBA_DC_URIS": ("", "dc_uris"),
    "ADBA_DNS_SERVERS": ("", "dns_servers"),
    "ADBA_BASE": ("", "base"),
    "ADBA_CA_FILE": ("", "ca_file"),
    "ADBA_ROOT_KEY": ("", "root_key"),
    "ADBA_CATALOG": ("", "catalog"),
    "ADBA_STATE": ("", "state_path"),
    "ADBA_INSECURE": ("", "insecure"),
    "ADBA_MACHINE_DN": ("machine", "dn"),
    "ADBA_MACHINE_PASSWORD_FILE": ("machine", "password_file"),
}
_LISTS = {"dc_uris", "dns_servers"}


class ProductSettings(NamedTuple):
    edition: str
    sku: str
    group: str
    group_name: str
    kind: str
    #: "GVLK", "CSVLK", "MAK", or None when the key is unusable (then key_error says why)
    key_type: str | None
    partial: str | None
    key_error: str | None
    #: SKUs of the CSVLKs whose activation objects may activate this edition
    csvlk_skus: tuple[str, ...]


class Settings(NamedTuple):
    source: str
    domain: str | None
    dc_uris: tuple[str, ...]
    dns_servers: tuple[str, ...]
    base: str | None
    ca_file: str | None
    insecure: bool
    machine_dn: str | None
    password_file: str | None
    root_key: str  # hex of the raw Ed25519 public key
    state_path: str
    validity: int  # seconds
    renewal: int
    retry: int
    grace: int
    connect_timeout: float
    products: tuple[ProductSettings, ...]

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()
        data["products"] = [p._asdict() for p in self.products]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        products = tuple(
            ProductSettings(**{**p, "csvlk_skus": tuple(p["csvlk_skus"])}) for p in data["products"]
        )
        return cls(
            **{
                **data,
                "dc_uris": tuple(data["dc_uris"]),
                "dns_servers": tuple(data["dns_servers"]),
                "products": products,
            }
        )


def read_raw(path: str, env: dict[str, str]) -> dict[str, Any]:
    """The TOML with the ``ADBA_*`` overrides applied (not validated)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no agent configuration at {path}: create it (see `adba agent --help`) or give --config"
        ) from exc
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for var, (table, key) in ENV.items():
        if var not in env:
            continue
        value: Any = env[var]
        if key in _LISTS:
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif key == "insecure":
            value = value.lower() in ("1", "true", "yes")
        target = data.setdefault(table, {}) if table else data
        if not isinstance(target, dict):
            raise ConfigError(f"{path}: [{table}] must be a table")
        target[key] = value
    return data


def state_path_for(raw: dict[str, Any]) -> str:
    value = raw.get("state_path", DEFAULT_STATE)
    return value if isinstance(value, str) and value else DEFAULT_STATE


def _digest(raw: dict[str, Any]) -> str:
    from .. import __version__

    h = hashlib.sha256(__version__.encode())
    h.update(json.dumps(raw, sort_keys=True, default=str).encode())
    for key in ("root_key", "catalog"):
        name = raw.get(key)
        if isinstance(name, str) and name:
            try:
                h.update(Path(name).read_bytes())
            except OSError:
                h.update(b"\0missing")
    return h.hexdigest()


def load_settings(
    path: str = DEFAULT_CONFIG,
    *,
    env: dict[str, str] | None = None,
    cache: dict[str, Any] | None = None,
) -> tuple[Settings, dict[str, Any]]:
    """Settings, and the cache entry to keep in the state file (``{"digest", "settings"}``).

    ``cache`` is the entry from the last run; when the digest is unchanged it is used as is.
    """
    raw = read_raw(path, dict(os.environ) if env is None else env)
    digest = _digest(raw)
    if cache and cache.get("digest") == digest:
        try:
            return Settings.from_json(cache["settings"]), cache
        except (KeyError, TypeError):
            pass  # an older layout: validate again
    from ._schema import validate

    settings = validate(raw, source=path)
    return settings, {"digest": digest, "settings": settings.to_json()}
