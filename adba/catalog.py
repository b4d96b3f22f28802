"""The product catalogue: activation groups (KMS IDs), editions and CSVLK products.

The catalogue is data. A built-in demo catalogue for a fictional vendor ships in
``adba/data/catalog.json``; a vendor points ``catalog =`` at its own file. The file is JSON::

    {
      "version": 1,
      "activation_groups": [                 # KMS IDs
        {"id": "<GUID>", "name": "Nimbus Client 2026"}
      ],
      "editions": [
        {"sku": "<GUID>",                    # the edition's SKU ID
         "name": "Nimbus Workstation Enterprise",
         "code": 101,                        # uint16, unique among editions; encoded in keys
         "group": "<GUID>",                  # an activation_groups id
         "kind": "client",                   # "client" or "server"
         "gvlk": "XXXXX-XXXXX-XXXXX-XXXXX-XXXXX"}   # a GVLK for this code, with the public tag
      ],
      "csvlks": [
        {"sku": "<GUID>",
         "name": "Nimbus Client 2026 CSVLK",
         "code": 1,                          # uint16, unique among CSVLK products
         "kms_ids": ["<GUID>", "..."]}       # activation groups this CSVLK activates (1..64)
      ],
      "avma": {                              # optional: automatic virtual machine activation
        "hosts": [{"sku": "<GUID>",          # a server edition entitled to activate guests
                   "version": 2026}],        # it activates guests of this version or older
        "guests": [{"sku": "<GUID>",         # a server edition a host may activate
                    "version": 2026,
                    "key": "XXXXX-..."}]     # its public AVMA key (public tag, like a GVLK)
      }
    }

Unknown fields are refused. Names are unique (case-insensitively) and SKUs are unique across
editions and CSVLK products; a server CSVLK usually lists the client group too, as in Windows.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from adba.errors import CatalogError, InvalidKey, UnknownProduct
from adba.keys import KeyType, parse_key, verify_tag

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "ActivationGroup",
    "AvmaGuest",
    "AvmaHost",
    "Catalog",
    "CsvlkProduct",
    "Edition",
    "load_catalog",
]

log = logging.getLogger(__name__)

_BUILTIN = Path(__file__).parent / "data" / "catalog.json"
_MAX_FILE_SIZE = 16 * 1024 * 1024
_MAX_KMS_IDS = 64  # licenses carry at most 64 KMS IDs


@dataclass(frozen=True)
class ActivationGroup:
    """A KMS ID: editions in one group are activated by the same CSVLKs."""

    id: uuid.UUID
    name: str


@dataclass(frozen=True)
class Edition:
    """A volume edition (SKU) and its public GVLK."""

    sku: uuid.UUID
    name: str
    code: int
    group: uuid.UUID
    kind: Literal["client", "server"]
    gvlk: str


@dataclass(frozen=True)
class CsvlkProduct:
    """A CSVLK product and the activation groups (KMS IDs) it activates."""

    sku: uuid.UUID
    name: str
    code: int
    kms_ids: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class AvmaHost:
    """A server edition whose activation entitles its host to activate guests (AVMA)."""

    sku: uuid.UUID
    version: int


@dataclass(frozen=True)
class AvmaGuest:
    """A server edition an AVMA host of ``version`` or newer activates, and its AVMA key."""

    sku: uuid.UUID
    version: int
    key: str


_Product = TypeVar("_Product", Edition, CsvlkProduct)


def _as_uuid(value: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class Catalog:
    """A validated catalogue; build it with :func:`load_catalog`."""

    groups: tuple[ActivationGroup, ...]
    editions: tuple[Edition, ...]
    csvlks: tuple[CsvlkProduct, ...]
    source: str  #: the file it came from
    avma_hosts: tuple[AvmaHost, ...] = ()
    avma_guests: tuple[AvmaGuest, ...] = ()

    def avma_host(self, sku: uuid.UUID) -> AvmaHost | None:
        """The AVMA entitlement of the edition ``sku``, or None (it activates no guests)."""
        return next((h for h in self.avma_hosts if h.sku == sku), None)

    def avma_guest(self, sku: uuid.UUID) -> AvmaGuest | None:
        return next((g for g in self.avma_guests if g.sku == sku), None)

    def avma_covers(self, host_sku: uuid.UUID, guest_sku: uuid.UUID) -> bool:
        """Whether a host of edition ``host_sku`` may activate a guest of ``guest_sku``: the
        host is entitled and its version is the guest's or newer."""
        host, guest = self.avma_host(host_sku), self.avma_guest(guest_sku)
        return host is not None and guest is not None and guest.version <= host.version

    def edition(self, name_or_sku: str | uuid.UUID) -> Edition:
        """The edition with this name (case-insensitive) or SKU GUID."""
        return self._find(self.editions, name_or_sku, "edition")

    def csvlk(self, name_or_sku: str | uuid.UUID) -> CsvlkProduct:
        """The CSVLK product with this name (case-insensitive) or SKU GUID."""
        return self._find(self.csvlks, name_or_sku, "CSVLK product")

    def _find(
        self, items: tuple[_Product, ...], name_or_sku: str | uuid.UUID, what: str
    ) -> _Product:
        sku = _as_uuid(name_or_sku)
        wanted = str(name_or_sku).strip().casefold()
        for item in items:
            if item.sku == sku or item.name.casefold() == wanted:
                return item
        names = ", ".join(repr(item.name) for item in items) or "none"
        raise UnknownProduct(
            f"no {what} {str(name_or_sku)!r} in the catalogue {self.source}; "
            f"known {what}s: {names}",
            product=str(name_or_sku),
        )

    def edition_by_code(self, code: int) -> Edition:
        for edition in self.editions:
            if edition.code == code:
                return edition
        raise UnknownProduct(
            f"no edition with product code {code} in the catalogue {self.source}",
            product_code=code,
        )

    def csvlk_by_code(self, code: int) -> CsvlkProduct:
        for product in self.csvlks:
            if product.code == code:
                return product
        raise UnknownProduct(
            f"no CSVLK product with product code {code} in the catalogue {self.source}",
            product_code=code,
        )

    def group(self, id: uuid.UUID) -> ActivationGroup:
        for group in self.groups:
            if group.id == id:
                return group
        raise UnknownProduct(
            f"no activation group (KMS ID) {id} in the catalogue {self.source}", product=str(id)
        )

    def group_name(self, id: uuid.UUID) -> str:
        """The group's name, or the GUID itself for a group this catalogue does not know."""
        for group in self.groups:
            if group.id == id:
                return group.name
        return str(id)

    def sku_name(self, sku: uuid.UUID) -> str | None:
        """The name of the edition or CSVLK product with this SKU, if any."""
        for item in self.products():
            if item.sku == sku:
                return item.name
        return None

    def products(self) -> tuple[Edition | CsvlkProduct, ...]:
        """Editions then CSVLK products."""
        return (*self.editions, *self.csvlks)

    def csvlk_covers(self, csvlk: CsvlkProduct, edition: Edition) -> bool:
        """Whether a host activated with ``csvlk`` may activate ``edition``."""
        return edition.group in csvlk.kms_ids


# -- loading -----------------------------------------------------------------------------------
@functools.cache
def _document_adapter() -> Any:
    """The pydantic validator for the JSON file, built on first use (pydantic is slow to import)."""
    from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

    class _Model(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    class _Group(_Model):
        id: uuid.UUID
        name: str = Field(min_length=1, max_length=256)

    class _Edition(_Model):
        sku: uuid.UUID
        name: str = Field(min_length=1, max_length=256)
        code: int = Field(ge=0, le=0xFFFF)
        group: uuid.UUID
        kind: Literal["client", "server"]
        gvlk: str = Field(max_length=64)

    class _Csvlk(_Model):
        sku: uuid.UUID
        name: str = Field(min_length=1, max_length=256)
        code: int = Field(ge=0, le=0xFFFF)
        kms_ids: tuple[uuid.UUID, ...] = Field(min_length=1, max_length=_MAX_KMS_IDS)

    class _AvmaHost(_Model):
        sku: uuid.UUID
        version: int = Field(ge=0, le=0xFFFF)

    class _AvmaGuest(_Model):
        sku: uuid.UUID
        version: int = Field(ge=0, le=0xFFFF)
        key: str = Field(max_length=64)

    class _Avma(_Model):
        hosts: tuple[_AvmaHost, ...] = ()
        guests: tuple[_AvmaGuest, ...] = ()

    class _Document(_Model):
        version: Literal[1]
        activation_groups: tuple[_Group, ...] = Field(min_length=1)
        editions: tuple[_Edition, ...]
        csvlks: tuple[_Csvlk, ...]
        avma: _Avma = _Avma()

    return TypeAdapter(_Document)


def _location(loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _duplicates(what: str, values: Iterable[object]) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise CatalogError(f"duplicate {what} {value}")
        seen.add(value)


def _cross_check(catalog: Catalog) -> None:
    _duplicates("activation group id", (g.id for g in catalog.groups))
    _duplicates("activation group name", (g.name.casefold() for g in catalog.groups))
    _duplicates("edition code", (e.code for e in catalog.editions))
    _duplicates("CSVLK product code", (c.code for c in catalog.csvlks))
    _duplicates("SKU", (p.sku for p in catalog.products()))
    _duplicates("product name", (p.name.casefold() for p in catalog.products()))
    group_ids = {g.id for g in catalog.groups}
    for i, edition in enumerate(catalog.editions):
        where = f"editions[{i}] ({edition.name!r})"
        if edition.group not in group_ids:
            raise CatalogError(f"{where}.group: no activation group {edition.group}")
        try:
            gvlk = parse_key(edition.gvlk)
        except InvalidKey as exc:
            raise CatalogError(f"{where}.gvlk: {exc.message}") from exc
        if gvlk.type is not KeyType.GVLK:
            raise CatalogError(f"{where}.gvlk: this is a {gvlk.type.name}, not a GVLK")
        if gvlk.code != edition.code:
            raise CatalogError(
                f"{where}.gvlk: the key is for product code {gvlk.code}, not {edition.code}"
            )
        if not verify_tag(gvlk, b""):
            raise CatalogError(f"{where}.gvlk: the key does not carry the public GVLK tag")
    for i, product in enumerate(catalog.csvlks):
        where = f"csvlks[{i}] ({product.name!r})"
        _duplicates(f"{where}.kms_ids: KMS ID", product.kms_ids)
        for kms_id in product.kms_ids:
            if kms_id not in group_ids:
                raise CatalogError(f"{where}.kms_ids: no activation group {kms_id}")
    _check_avma(catalog)


def _check_avma(catalog: Catalog) -> None:
    servers = {e.sku: e for e in catalog.editions if e.kind == "server"}
    _duplicates("avma.hosts SKU", (h.sku for h in catalog.avma_hosts))
    _duplicates("avma.guests SKU", (g.sku for g in catalog.avma_guests))
    for i, host in enumerate(catalog.avma_hosts):
        if host.sku not in servers:
            raise CatalogError(f"avma.hosts[{i}].sku: no server edition {host.sku}")
    for i, guest in enumerate(catalog.avma_guests):
        where = f"avma.guests[{i}]"
        edition = servers.get(guest.sku)
        if edition is None:
            raise CatalogError(f"{where}.sku: no server edition {guest.sku}")
        try:
            key = parse_key(guest.key)
        except InvalidKey as exc:
            raise CatalogError(f"{where}.key: {exc.message}") from exc
        if key.type is not KeyType.AVMA or key.code != edition.code:
            raise CatalogError(f"{where}.key: not an AVMA key for {edition.name}")
        if not verify_tag(key, b""):
            raise CatalogError(f"{where}.key: the key does not carry the public tag")


def _load(path: Path) -> Catalog:
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise CatalogError(
            f"cannot read the catalogue {path}: {exc.strerror or exc}", path=str(path)
        ) from exc
    if len(data) > _MAX_FILE_SIZE:
        raise CatalogError(f"catalogue {path}: larger than 16 MiB", path=str(path))
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogError(f"catalogue {path}: not valid JSON: {exc}", path=str(path)) from exc

    from pydantic import ValidationError

    try:
        # through JSON again so strict mode takes GUIDs as strings, as they are in the file
        doc = _document_adapter().validate_json(json.dumps(document))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        extra = exc.error_count() - 1
        more = f" (and {extra} more problem{'s' if extra > 1 else ''})" if extra else ""
        raise CatalogError(
            f"catalogue {path}: {_location(first['loc'])}: {first['msg']}{more}",
            path=str(path),
        ) from exc
    catalog = Catalog(
        groups=tuple(ActivationGroup(g.id, g.name) for g in doc.activation_groups),
        editions=tuple(
            Edition(e.sku, e.name, e.code, e.group, e.kind, _canonical_key(e.gvlk))
            for e in doc.editions
        ),
        csvlks=tuple(CsvlkProduct(c.sku, c.name, c.code, tuple(c.kms_ids)) for c in doc.csvlks),
        source=str(path),
        avma_hosts=tuple(AvmaHost(h.sku, h.version) for h in doc.avma.hosts),
        avma_guests=tuple(
            AvmaGuest(g.sku, g.version, _canonical_key(g.key)) for g in doc.avma.guests
        ),
    )
    try:
        _cross_check(catalog)
    except CatalogError as exc:
        raise CatalogError(f"catalogue {path}: {exc.message}", path=str(path)) from exc
    log.debug(
        "loaded catalogue %s: %d groups, %d editions, %d CSVLK products",
        path,
        len(catalog.groups),
        len(catalog.editions),
        len(catalog.csvlks),
    )
    return catalog


def _canonical_key(text: str) -> str:
    """The dashed upper-case form; an invalid key is kept as written for the cross check."""
    try:
        return parse_key(text).text
    except InvalidKey:
        return text


@functools.cache
def _builtin() -> Catalog:
    return _load(_BUILTIN)


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load and validate a catalogue file; ``None`` is the built-in demo catalogue (cached).

    Raises :class:`~adba.errors.CatalogError` naming the file and the offending field.
    """
    if path is None:
        return _builtin()
    return _load(Path(path))
