"""Agent configuration: ``/etc/adba/agent.toml`` (or ``--config``), then ``ADBA_*`` variables.

The agent runs at every boot, so validation is paid only when something changed: the TOML
is parsed (tomllib, ~2 ms), the ``ADBA_*`` overrides applied, and a digest taken of that plus
the files it names (root key, catalogue). If the digest matches the one cached in the state
file, the cached, already-validated settings are used; otherwise pydantic validates
everything (``_schema.py``), the catalogue resolves each product, and the result is cached.

Example ``agent.toml``::

    domain = "example.test"                 # DC location via DNS SRV
    # dc_uris = ["ldap://dc1.example.test"] # or explicit DCs, tried in order
    # tls_name = "dc1.example.test"         # certificate name, if dc_uris give addresses
    # dns_servers = ["192.0.2.53"]          # DNS servers for SRV lookups (default: system)
    # kms_host = "kms1.example.test:1688"   # static KMS host (else cached, else _vlmcs._tcp SRV)
    # kms_domains = ["branch.example.test"] # more domains to look for KMS hosts in
    # machine_name = "host1"                # name shown on KMS hosts (default: hostname)
    # authority_url = "https://activation.example.com"  # for MAK activation online
    # authority_ca_file = "/etc/adba/authority-ca.pem"
    # avma_host = "vsock:2:1690"            # AVMA products ask their host here (or unix:PATH)
    # act_type = "KMS"                      # pin one channel: ADBA, KMS, MAK, AVMA (default: the
    #                                       # chain; per product too, like slmgr /act-type)
    base = "dc=example,dc=test"             # forest root (default: from the root DSE)
    ca_file = "/etc/adba/ca.pem"
    root_key = "/etc/adba/root.pub"         # the activation authority's pinned root key
    # retired_keys = "/etc/adba/retired.pem" # the authority's retired signing keys (root-
    #                                       # signed; default: retired.pem beside root_key)
    state_path = "/var/lib/adba/agent-state.json"

    [machine]                               # the computer account the agent binds as
    dn = "cn=HOST1,ou=Computers,dc=example,dc=test"
    password_file = "/etc/adba/machine.password"   # mode 0600, owned by root
    # or Kerberos (GSSAPI) from the machine keytab, as domain-joined Linux machines do:
    # keytab = "/etc/krb5.keytab"
    # principal = "HOST1$@EXAMPLE.TEST"
    # krb5_config = "/etc/krb5.conf"

    [intervals]                             # like slmgr /sai /sri
    validity_days = 180
    renewal_days = 7
    retry_minutes = 120
    grace_days = 30
    timeout = 2.0                           # s, every wait: each connect and each answer
                                            # of LDAP, DNS and KMS (older name: connect_timeout)

    [[products]]
    edition = "Nimbus Server Standard"
    # key = "..."                           # default: the edition's GVLK (or a MAK)
    # mak_key = "..."                       # a MAK to fall back to after ADBA and KMS

    # [report]                              # for node_exporter's textfile collector
    # textfile = "/var/lib/node_exporter/textfile/adba.prom"
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .state import DEFAULT_STATE

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_CONFIG",
    "ENV",
    "ProductSettings",
    "Settings",
    "guess_state_path",
    "load_settings",
    "read_raw",
    "retired_path",
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
    "ADBA_RETIRED_KEYS": ("", "retired_keys"),
    "ADBA_CATALOG": ("", "catalog"),
    "ADBA_STATE": ("", "state_path"),
    "ADBA_KMS_HOST": ("", "kms_host"),
    "ADBA_KMS_DOMAINS": ("", "kms_domains"),
    "ADBA_AUTHORITY_URL": ("", "authority_url"),
    "ADBA_AVMA_HOST": ("", "avma_host"),
    "ADBA_INSECURE": ("", "insecure"),
    "ADBA_MACHINE_DN": ("machine", "dn"),
    "ADBA_MACHINE_PASSWORD_FILE": ("machine", "password_file"),
}
_LISTS = {"dc_uris", "dns_servers", "kms_domains"}


# eq/repr/frozen off: each generated method costs ~0.1 ms of import at every boot
@dataclass(eq=False, repr=False)
class ProductSettings:
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
    #: (product code, SKU) of those CSVLKs: a phone-activated object names only the code
    csvlk_codes: tuple[tuple[int, str], ...] = ()
    #: partial key of the MAK to fall back to (the key itself stays in the config file)
    mak_partial: str | None = None
    #: position in the config's products list (to read the MAK from the file when needed)
    index: int = 0
    #: the only channel this product may use (``act_type``, like slmgr /act-type); None: all
    act_type: str | None = None
    #: AVMA keys: SKUs of the host editions whose hosts may activate this edition
    avma_hosts: tuple[str, ...] = ()


@dataclass(eq=False, repr=False)
class Settings:
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
    #: static KMS host "host[:port]" (like slmgr /skms): the only one tried when set
    kms_host: str | None = None
    #: more DNS domains to look for _vlmcs._tcp in (like slmgr /skms-domain)
    kms_domains: tuple[str, ...] = ()
    machine_name: str | None = None
    #: the activation authority, for MAK activation online
    authority_url: str | None = None
    authority_ca_file: str | None = None
    #: the name DC certificates must carry when dc_uris give addresses
    tls_name: str | None = None
    #: Kerberos bind from the machine keytab (instead of machine_dn + password_file)
    keytab: str | None = None
    principal: str | None = None
    krb5_config: str | None = None
    #: hex ids of the signing keys the pinned retirement file (``retired_keys``) retires
    retired_keys: tuple[str, ...] = ()
    #: key ("machine.password_file") -> the ADBA_* variable that set it
    from_env: dict[str, str] = field(default_factory=dict)
    #: ``[report] textfile``: a Prometheus textfile written after each pass (None: off)
    report_textfile: str | None = None
    #: the only channel the products may use unless one pins its own (``act_type``)
    act_type: str | None = None
    #: where AVMA products ask their host: ``vsock:CID[:PORT]`` or ``unix:PATH``
    avma_host: str = "vsock:2:1690"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def where(self, key: str) -> str:
        """Where ``key`` was set, for an error: the variable, or the file and key."""
        var = self.from_env.get(key)
        return var if var else f"{self.source}: {key}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        products = tuple(
            ProductSettings(
                **{
                    **p,
                    "csvlk_skus": tuple(p["csvlk_skus"]),
                    "csvlk_codes": tuple((int(c), str(s)) for c, s in p.get("csvlk_codes", ())),
                    "avma_hosts": tuple(p.get("avma_hosts", ())),
                }
            )
            for p in data["products"]
        )
        return cls(
            **{
                **data,
                "dc_uris": tuple(data["dc_uris"]),
                "dns_servers": tuple(data["dns_servers"]),
                "kms_domains": tuple(data.get("kms_domains", ())),
                "retired_keys": tuple(data.get("retired_keys", ())),
                "products": products,
            }
        )


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no agent configuration at {path}: create it (see `adba agent run --help`) "
            "or give --config"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc


def _parse(path: str, text: bytes, env: dict[str, str]) -> dict[str, Any]:
    """The TOML with the ``ADBA_*`` overrides applied (not validated)."""
    import tomllib

    try:
        data: dict[str, Any] = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for var, (table, key) in ENV.items():
        if var not in env:
            continue
        value: Any = env[var]
        if key in _LISTS:
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif key == "insecure":
            if value.lower() not in ("1", "true", "yes", "0", "false", "no", ""):
                raise ConfigError(f"{var}: {value!r} is not one of 1, true, yes, 0, false, no")
            value = value.lower() in ("1", "true", "yes")
        target = data.setdefault(table, {}) if table else data
        if not isinstance(target, dict):
            raise ConfigError(f"{path}: [{table}] must be a table")
        target[key] = value
    return data


def read_raw(path: str, env: dict[str, str]) -> dict[str, Any]:
    return _parse(path, _read_bytes(path), env)


RETIRED_PEM = "retired.pem"


def retired_path(raw: dict[str, Any]) -> tuple[str | None, bool]:
    """The pinned retirement file and whether the config names it (``retired_keys``):
    else ``retired.pem`` beside ``root_key``, used only if it exists."""
    value = raw.get("retired_keys")
    if isinstance(value, str) and value:
        return value, True
    root = raw.get("root_key")
    if isinstance(root, str) and root:
        return os.path.join(os.path.dirname(root), RETIRED_PEM), False
    return None, False


def state_path_for(raw: dict[str, Any]) -> str:
    value = raw.get("state_path", DEFAULT_STATE)
    return value if isinstance(value, str) and value else DEFAULT_STATE


_STATE_LINE = re.compile(rb'^\s*state_path\s*=\s*"([^"\\]+)"\s*(?:#.*)?$', re.MULTILINE)


def guess_state_path(path: str, env: dict[str, str]) -> str:
    """Where the state (and so the config cache) most likely is, without parsing the TOML.

    Only a guess used to find the cache: the cache is used only if its digest covers these
    exact bytes and the state path it records is this one; otherwise the TOML is parsed.
    """
    if env.get("ADBA_STATE"):
        return env["ADBA_STATE"]
    try:
        m = _STATE_LINE.search(Path(path).read_bytes())
    except OSError:
        return DEFAULT_STATE
    return m.group(1).decode() if m else DEFAULT_STATE


def _digest(text: bytes, env: dict[str, str], deps: list[str]) -> str:
    from .. import __version__

    h = hashlib.sha256(__version__.encode() + b"\0" + text)
    for var in sorted(ENV):
        if var in env:
            h.update(f"\0{var}={env[var]}".encode())
    for name in deps:
        h.update(b"\0" + name.encode() + b"\0")
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
    state_path: str | None = None,
) -> tuple[Settings, dict[str, Any]]:
    """Settings, and the cache entry to keep in the state file.

    ``cache`` is the entry from the state file at ``state_path``; when the digest of the
    config bytes, the ADBA_* variables and the files the config names is unchanged (and the
    cache belongs to that state file), it is used as is: no TOML parsing, no pydantic.
    """
    env = dict(os.environ) if env is None else env
    text = _read_bytes(path)
    if (
        cache
        and cache.get("settings", {}).get("state_path") == state_path
        and cache.get("digest") == _digest(text, env, list(cache.get("deps", [])))
    ):
        try:
            return Settings.from_json(cache["settings"]), cache
        except (KeyError, TypeError):
            pass  # an older layout: validate again
    raw = _parse(path, text, env)
    from ._schema import validate

    from_env = {f"{t}.{k}" if t else k: var for var, (t, k) in ENV.items() if var in env}
    settings = validate(raw, source=path, from_env=from_env)
    deps = [str(raw[k]) for k in ("root_key", "catalog") if isinstance(raw.get(k), str) and raw[k]]
    retired, _named = retired_path(raw)
    if retired:  # a retirement file that appears, changes or goes is a changed configuration
        deps.append(retired)
    entry = {"digest": _digest(text, env, deps), "deps": deps, "settings": settings.to_json()}
    return settings, entry
