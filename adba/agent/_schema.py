"""Validation of the agent configuration with pydantic (imported only when it changed)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import AdbaError, CatalogError, ConfigError
from .config import ProductSettings, Settings, state_path_for

#: the channels a product may be pinned to (adba.agent.chain.ACT_TYPES)
ActType = Literal["ADBA", "KMS", "MAK", "AVMA"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Machine(_Model):
    dn: str | None = None
    password_file: str | None = None
    #: Kerberos (GSSAPI) bind from the machine keytab instead of dn + password_file
    keytab: str | None = None
    principal: str | None = None  # HOST$@REALM
    krb5_config: str | None = None  # default: the system's /etc/krb5.conf


class Intervals(_Model):
    validity_days: Annotated[float, Field(gt=0, le=3650)] = 180
    renewal_days: Annotated[float, Field(gt=0, le=365)] = 7
    retry_minutes: Annotated[float, Field(ge=1, le=60 * 24 * 30)] = 120
    grace_days: Annotated[float, Field(ge=0, le=365)] = 30
    #: every wait of the agent: each connect and each answer (LDAP, DNS, KMS); its older name
    #: connect_timeout is still read
    timeout: Annotated[float, Field(gt=0, le=60)] | None = None
    connect_timeout: Annotated[float, Field(gt=0, le=60)] = 2.0


class Product(_Model):
    edition: str
    key: str | None = None
    mak_key: str | None = None
    act_type: ActType | None = None


class Report(_Model):
    #: node_exporter textfile collector file, written atomically after each pass
    textfile: str | None = Field(default=None, min_length=1, pattern=r"^/.*\.prom$")


class AgentFile(_Model):
    domain: str | None = None
    dc_uris: list[str] = []
    dns_servers: list[str] = []
    base: str | None = None
    ca_file: str | None = None
    root_key: str
    retired_keys: str | None = None
    catalog: str | None = None
    state_path: str | None = None
    insecure: bool = False
    kms_host: str | None = None
    kms_domains: list[str] = []
    authority_url: str | None = Field(None, pattern=r"^https?://")
    authority_ca_file: str | None = None
    tls_name: str | None = None
    machine_name: str | None = Field(None, max_length=63)
    machine: Machine = Machine()
    intervals: Intervals = Intervals()
    report: Report = Report()
    act_type: ActType | None = None
    avma_host: str = "vsock:2:1690"
    products: list[Product] = Field(min_length=1)

    @field_validator("avma_host")
    @classmethod
    def _avma_host(cls, value: str) -> str:
        from ..avma.transport import Address

        try:
            return str(Address.parse(value))
        except AdbaError as exc:
            raise ValueError(exc.message) from exc

    @field_validator("kms_host")
    @classmethod
    def _kms_host(cls, value: str | None) -> str | None:
        if value is not None:
            from ..addresses import host_port

            host_port(value, default_port=1688)
        return value

    @field_validator("dc_uris")
    @classmethod
    def _uris(cls, values: list[str]) -> list[str]:
        from ..addresses import ldap_uri

        for uri in values:
            ldap_uri(uri, schemes=("ldap", "ldaps"))
        return values

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers(cls, values: list[str]) -> list[str]:
        from ..addresses import dns_server

        for server in values:
            dns_server(server)
        return values

    @field_validator("domain", "kms_domains", "tls_name")
    @classmethod
    def _names(cls, value: str | list[str] | None) -> str | list[str] | None:
        from ..addresses import host_name

        for name in [value] if isinstance(value, str) else value or []:
            host_name(name)
        return value


class _Source:
    """Where the settings came from: the file, and which keys ADBA_* variables set."""

    def __init__(self, path: str, from_env: dict[str, str]) -> None:
        self.path = path
        self.from_env = from_env

    def fail(self, where: str, message: str) -> ConfigError:
        """A configuration error naming its source: the file and key, or the variable."""
        parts = where.split(".")
        top = ".".join(parts[:2]) if parts[0] == "machine" else parts[0]
        var = self.from_env.get(top)
        return ConfigError(f"{var}: {message}" if var else f"{self.path}: {where}: {message}")


def _product(product: Product, index: int, catalog: Any, source: _Source) -> ProductSettings:
    from ..keys import KeyType, parse_key

    try:
        edition = catalog.edition(product.edition)
    except CatalogError as exc:  # an unknown edition keeps its own exit code (12)
        raise type(exc)(f"{source.path}: products[{index}].edition: {exc.message}") from exc
    key_type = partial = key_error = None
    try:
        key = parse_key(product.key or edition.gvlk)
        key_type, partial = key.type.name, key.partial
        if key.type is KeyType.CSVLK:
            key_error = "a CSVLK is a host key, not a product key for a client"
        elif key.code != edition.code:
            key_error = f"the {key.type.name} is for another edition, not {edition.name}"
        elif key.type is KeyType.AVMA and catalog.avma_guest(edition.sku) is None:
            key_error = f"{edition.name} is not activated by AVMA hosts"
    except AdbaError as exc:
        key_error = exc.message
    mak_partial = None
    if key_type == "MAK" and not key_error:
        mak_partial = partial
    if product.mak_key:
        try:
            mak = parse_key(product.mak_key)
        except AdbaError as exc:
            raise source.fail(f"products[{index}].mak_key", exc.message) from exc
        if mak.type is not KeyType.MAK or mak.code != edition.code:
            raise source.fail(f"products[{index}].mak_key", f"not a MAK for {edition.name}")
        mak_partial = mak.partial
    covering_products = [c for c in catalog.csvlks if catalog.csvlk_covers(c, edition)]
    covering = tuple(str(c.sku) for c in covering_products)
    return ProductSettings(
        edition=edition.name,
        sku=str(edition.sku),
        group=str(edition.group),
        group_name=catalog.group_name(edition.group),
        kind=edition.kind,
        key_type=key_type,
        partial=partial,
        key_error=key_error,
        csvlk_skus=covering,
        csvlk_codes=tuple((c.code, str(c.sku)) for c in covering_products),
        mak_partial=mak_partial,
        index=index,
        act_type=product.act_type,
        avma_hosts=tuple(
            str(h.sku) for h in catalog.avma_hosts if catalog.avma_covers(h.sku, edition.sku)
        ),
    )


def validate(
    raw: dict[str, Any], *, source: str, from_env: dict[str, str] | None = None
) -> Settings:
    """``from_env``: key -> the ADBA_* variable that set it (errors then name the variable)."""
    src = _Source(source, from_env or {})
    try:
        model = AgentFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        raise src.fail(where, str(err["msg"]).removeprefix("Value error, ")) from exc
    m = model.machine
    if m.keytab:
        if not m.principal:
            raise src.fail("machine.principal", "a keytab needs the principal (HOST$@REALM)")
        if m.password_file:
            raise src.fail("machine", "give a keytab or a password_file, not both")
    elif bool(m.dn) != bool(m.password_file):
        raise src.fail("machine", "give both dn and password_file (or neither)")
    from ..catalog import load_catalog
    from ..license import load_root_public_key

    try:
        root = load_root_public_key(model.root_key)
    except AdbaError as exc:
        raise src.fail("root_key", exc.message) from exc
    retired = _retired(raw, root, src)
    try:
        catalog = load_catalog(model.catalog)
    except AdbaError as exc:
        raise src.fail("catalog", exc.message) from exc
    products = tuple(_product(p, i, catalog, src) for i, p in enumerate(model.products))
    if len({p.sku for p in products}) != len(products):
        raise src.fail("products", "an edition is listed twice")
    iv = model.intervals
    return Settings(
        source=source,
        domain=model.domain,
        dc_uris=tuple(model.dc_uris),
        dns_servers=tuple(model.dns_servers),
        base=model.base,
        ca_file=model.ca_file,
        insecure=model.insecure,
        machine_dn=model.machine.dn,
        password_file=model.machine.password_file,
        root_key=root.hex(),
        state_path=state_path_for(raw),
        validity=int(iv.validity_days * 86400),
        renewal=int(iv.renewal_days * 86400),
        retry=int(iv.retry_minutes * 60),
        grace=int(iv.grace_days * 86400),
        connect_timeout=iv.timeout if iv.timeout is not None else iv.connect_timeout,
        products=products,
        kms_host=model.kms_host,
        kms_domains=tuple(model.kms_domains),
        machine_name=model.machine_name,
        authority_url=model.authority_url,
        authority_ca_file=model.authority_ca_file,
        tls_name=model.tls_name,
        keytab=m.keytab,
        principal=m.principal,
        krb5_config=m.krb5_config,
        retired_keys=retired,
        from_env=dict(src.from_env),
        report_textfile=model.report.textfile,
        act_type=model.act_type,
        avma_host=model.avma_host,
    )


def _retired(raw: dict[str, Any], root: bytes, src: _Source) -> tuple[str, ...]:
    """The pinned retirement file, checked under the root key: one that is named but
    missing, unreadable, or not signed by the pinned root is a configuration error."""
    import os

    from ..license import load_retired_keys
    from .config import retired_path

    path, named = retired_path(raw)
    if path is None or not (named or os.path.lexists(path)):
        return ()
    if named and not os.path.lexists(path):
        raise src.fail("retired_keys", f"no retirement file {path}")
    try:
        keys = load_retired_keys(path, root_public_key=root)
    except AdbaError as exc:
        raise src.fail("retired_keys", exc.message) from exc
    return tuple(sorted(k.hex() for k in keys))
