"""Admin-side configuration: ``/etc/adba/adba.toml``, ``~/.config/adba/adba.toml``, ``ADBA_*``
variables, then command-line flags, each overriding the one before. Validated by pydantic,
with messages that name the file and the key.

Example ``adba.toml``::

    [directory]
    uri = "ldaps://dc1.example.test"
    base = "dc=example,dc=test"
    bind_dn = "uid=adbaadmin,ou=People,dc=example,dc=test"
    password_file = "/etc/adba/admin.password"
    ca_file = "/etc/adba/ca.pem"

    [authority]
    path = "/var/lib/adba/authority"
    root_key = "/etc/adba/root.pub"
    # database = "postgresql://adba@db.example.test/adba"   # records on PostgreSQL
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator

from .errors import ConfigError

__all__ = ["ENV", "AdminConfig", "AuthoritySection", "DirectorySection", "load_admin_config"]

SYSTEM_FILE = Path("/etc/adba/adba.toml")

#: ADBA_* variable -> (section, key)
ENV: dict[str, tuple[str, str]] = {
    "ADBA_URI": ("directory", "uri"),
    "ADBA_CONFIG_URI": ("directory", "config_uri"),
    "ADBA_BASE": ("directory", "base"),
    "ADBA_BIND_DN": ("directory", "bind_dn"),
    "ADBA_PASSWORD_FILE": ("directory", "password_file"),
    "ADBA_CA_FILE": ("directory", "ca_file"),
    "ADBA_INSECURE": ("directory", "insecure"),
    "ADBA_CATALOG": ("directory", "catalog"),
    "ADBA_AUTHORITY": ("authority", "path"),
    "ADBA_ROOT_KEY": ("authority", "root_key"),
    "ADBA_AUTHORITY_DATABASE": ("authority", "database"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DirectorySection(_Section):
    uri: str | None = None
    config_uri: str | None = None
    base: str | None = None
    bind_dn: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    catalog: str | None = None
    admin_group: str | None = None
    computers: str | None = None

    @field_validator("uri")
    @classmethod
    def _ldap_uri(cls, value: str | None) -> str | None:
        if value is not None:
            from .addresses import ldap_uri

            ldap_uri(value)
        return value

    @field_validator("config_uri")
    @classmethod
    def _ldapi_uri(cls, value: str | None) -> str | None:
        """slapd's cn=config is read over ldapi only (as root, SASL EXTERNAL)."""
        if value is not None:
            from .addresses import ldap_uri

            ldap_uri(value, schemes=("ldapi",))
        return value


class AuthoritySection(_Section):
    path: str | None = None
    root_key: str | None = None
    #: the records on PostgreSQL (postgresql://...); none: DIR/records.sqlite
    database: str | None = None


class AdminConfig(_Section):
    directory: DirectorySection = DirectorySection()
    authority: AuthoritySection = AuthoritySection()
    #: (section, key) -> where its value came from: a file path or an ADBA_* variable
    _origins: dict[tuple[str, str], str] = PrivateAttr(default_factory=dict)

    def origin(self, section: str, key: str) -> str | None:
        """The file or variable that set ``[section] key`` (None: the default)."""
        return self._origins.get((section, key))


def _user_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "adba" / "adba.toml"


def _merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _describe(source: str, section: str, key: str) -> str:
    if source.startswith("ADBA_"):
        return source
    return f"{source}: key {section}.{key}" if key else f"{source}: [{section}]"


def load_admin_config(
    files: list[Path] | None = None, env: dict[str, str] | None = None
) -> AdminConfig:
    """Every error names where the bad value came from: the file and key, or the variable."""
    env = dict(os.environ) if env is None else env
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, str], str] = {}
    for path in files if files is not None else [SYSTEM_FILE, _user_file()]:
        if not path.is_file():
            continue
        try:
            layer = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        _merge(merged, layer)
        for section, table in layer.items():
            if isinstance(table, dict):
                for key in table:
                    origins[(section, str(key))] = str(path)
            else:
                origins[(section, "")] = str(path)
    for var, (section, key) in ENV.items():
        if var in env:
            value: Any = env[var]
            if key == "insecure":
                if value.lower() not in ("1", "true", "yes", "0", "false", "no", ""):
                    raise ConfigError(f"{var}: {value!r} is not one of 1, true, yes, 0, false, no")
                value = value.lower() in ("1", "true", "yes")
            elif not value:
                raise ConfigError(f"{var} is set but empty: unset it or give a value")
            target = merged.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(
                    f"{_describe(origins[(section, '')], section, '')} must be a table"
                )
            target[key] = value
            origins[(section, key)] = var
    try:
        config = AdminConfig.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        section, key = ([*loc, "", ""])[:2]
        source = origins.get((section, key)) or origins.get((section, "")) or "the configuration"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if source.startswith("ADBA_"):
            raise ConfigError(f"{source}: {msg}") from exc
        raise ConfigError(f"{source}: key {'.'.join(loc)!r}: {msg}") from exc
    config._origins.update(origins)
    return config
