"""Activation objects in the directory: validate, publish, list, show, delete, and the lookup.

Objects are never edited, only published and deleted. OpenLDAP does not enforce the schema's
length bounds, so every attribute is validated here before anything is sent. Filter values
and RDNs go through ldap3's escaping helpers, never through string concatenation of input.
GUID-valued attributes are the 16 raw bytes in Windows order (``uuid.bytes_le``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import ldap3
from ldap3.core import exceptions as lexc
from ldap3.utils.conv import escape_bytes
from ldap3.utils.dn import escape_rdn, parse_dn

from ..errors import DirectoryError, InvalidDN, InvalidInput, NotAnActivationObject, ObjectNotFound
from . import schema
from .connection import raise_for_result

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any


__all__ = [
    "AGENT_ATTRIBUTES",
    "OBJECT_CLASS",
    "PAGE_SIZE",
    "ActivationObject",
    "delete",
    "list_objects",
    "object_filter",
    "pages",
    "publish",
    "read_forest_guid",
    "read_forest_root",
    "search_objects",
    "show",
    "validate_dn",
    "value_too_big",
]

log = logging.getLogger(__name__)

OBJECT_CLASS = "msSPP-ActivationObject"
_MAX_STRING = 512
_MAX_KMS_IDS = 64
#: what ``ao list`` / ``ao show`` read: every attribute the class allows
READ_ATTRIBUTES = ["objectClass", *schema.ACTIVATION_OBJECT.must, *schema.ACTIVATION_OBJECT.may]
#: what the agent reads: only what it verifies (never the online and config licenses)
AGENT_ATTRIBUTES = [
    "msSPP-KMSIds",
    "msSPP-CSVLKSkuId",
    "msSPP-CSVLKPartialProductKey",
    "msSPP-CSVLKPid",
    "msSPP-IssuanceLicense",
    "msSPP-PhoneLicense",
]
#: objects per page of a paged search (RFC 2696): a container with fewer costs one search
PAGE_SIZE = 100
_PAGED_OID = "1.2.840.113556.1.4.319"
_SIZE_LIMIT = 4  # sizeLimitExceeded


# eq/repr/frozen off: each generated method costs ~0.1 ms of import at every boot
@dataclass(eq=False, repr=False)
class ActivationObject:
    """One ``msSPP-ActivationObject``: raw values, exactly as they are stored."""

    cn: str
    kms_ids: tuple[bytes, ...]
    csvlk_sku: bytes
    partial_key: str
    pid: str
    installation_id: str | None = None
    confirmation_id: str | None = None
    licenses: Mapping[str, bytes] = field(default_factory=dict)
    display_name: str | None = None
    description: str | None = None
    dn: str | None = None

    def __repr__(self) -> str:  # no license blobs
        return f"ActivationObject(dn={self.dn!r}, cn={self.cn!r}, partial_key={self.partial_key!r})"

    @property
    def kms_uuids(self) -> tuple[uuid.UUID, ...]:
        return tuple(uuid.UUID(bytes_le=k) for k in self.kms_ids)

    @property
    def sku_uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes_le=self.csvlk_sku)

    @property
    def issuance_license(self) -> bytes | None:
        return self.licenses.get("msSPP-IssuanceLicense")

    @classmethod
    def build(
        cls,
        *,
        cn: str,
        kms_ids: tuple[uuid.UUID, ...] | list[uuid.UUID],
        csvlk_sku: uuid.UUID,
        partial_key: str,
        pid: str,
        issuance_license: bytes | None = None,
        **extra: Any,
    ) -> ActivationObject:
        licenses = {"msSPP-IssuanceLicense": issuance_license} if issuance_license else {}
        return cls(
            cn=cn,
            kms_ids=tuple(k.bytes_le for k in kms_ids),
            csvlk_sku=csvlk_sku.bytes_le,
            partial_key=partial_key,
            pid=pid,
            licenses=licenses,
            **extra,
        )

    def validate(self) -> None:
        """Check every bound of the AD schema (OpenLDAP enforces none of them)."""
        if not self.cn or len(self.cn) > 64:
            raise InvalidInput("object name (cn) must be 1-64 characters")
        if not self.kms_ids:
            raise InvalidInput("msSPP-KMSIds needs at least one KMS ID")
        if len(self.kms_ids) > _MAX_KMS_IDS:
            raise InvalidInput(f"msSPP-KMSIds holds at most {_MAX_KMS_IDS} values")
        if len(set(self.kms_ids)) != len(self.kms_ids):
            raise InvalidInput("msSPP-KMSIds has a value twice")
        for value in self.kms_ids:
            if len(value) != 16:
                raise InvalidInput(f"msSPP-KMSIds value is {len(value)} bytes, must be 16")
        if len(self.csvlk_sku) != 16:
            raise InvalidInput(f"msSPP-CSVLKSkuId is {len(self.csvlk_sku)} bytes, must be 16")
        if len(self.partial_key) != 5:
            raise InvalidInput(
                f"msSPP-CSVLKPartialProductKey is {len(self.partial_key)} characters, must be 5"
            )
        for name, text in (
            ("msSPP-CSVLKPid", self.pid),
            ("msSPP-InstallationId", self.installation_id),
            ("msSPP-ConfirmationId", self.confirmation_id),
        ):
            if text is not None and not 1 <= len(text) <= _MAX_STRING:
                raise InvalidInput(f"{name} is {len(text)} characters, must be 1-{_MAX_STRING}")
        for name, blob in self.licenses.items():
            if name not in schema.LICENSE_ATTRIBUTES:
                raise InvalidInput(f"{name} is not a license attribute")
            if len(blob) > schema.MAX_LICENSE_BYTES:
                raise InvalidInput(
                    f"{name} is {len(blob)} bytes, the limit is {schema.MAX_LICENSE_BYTES} (5 MiB)"
                )

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "objectClass": [OBJECT_CLASS],
            "cn": self.cn,
            "msSPP-KMSIds": list(self.kms_ids),
            "msSPP-CSVLKSkuId": self.csvlk_sku,
            "msSPP-CSVLKPartialProductKey": self.partial_key,
            "msSPP-CSVLKPid": self.pid,
        }
        optional = {
            "msSPP-InstallationId": self.installation_id,
            "msSPP-ConfirmationId": self.confirmation_id,
            "displayName": self.display_name,
            "description": self.description,
        }
        attrs.update({k: v for k, v in optional.items() if v is not None})
        attrs.update(self.licenses)
        return attrs

    @classmethod
    def from_entry(cls, dn: str, raw: Mapping[str, list[bytes]]) -> ActivationObject:
        low = {k.lower(): v for k, v in raw.items()}

        def one(name: str) -> bytes | None:
            values = low.get(name.lower()) or []
            return values[0] if values else None

        def text(name: str) -> str | None:
            value = one(name)
            return value.decode("utf-8", "replace") if value is not None else None

        licenses = {n: v for n in schema.LICENSE_ATTRIBUTES if (v := one(n)) is not None}
        return cls(
            cn=text("cn") or "",
            kms_ids=tuple(low.get("msspp-kmsids", [])),
            csvlk_sku=one("msSPP-CSVLKSkuId") or b"",
            partial_key=text("msSPP-CSVLKPartialProductKey") or "",
            pid=text("msSPP-CSVLKPid") or "",
            installation_id=text("msSPP-InstallationId"),
            confirmation_id=text("msSPP-ConfirmationId"),
            licenses=licenses,
            display_name=text("displayName"),
            description=text("description"),
            dn=dn,
        )


def validate_dn(dn: str) -> list[tuple[str, str, str]]:
    try:
        parts: list[tuple[str, str, str]] = parse_dn(dn)
    except (lexc.LDAPInvalidDnError, lexc.LDAPExceptionError, ValueError) as exc:
        raise InvalidDN(f"malformed DN: {dn!r}") from exc
    if not parts:
        raise InvalidDN("empty DN")
    return parts


def _norm(dn: str) -> str:
    return ",".join(f"{a.lower()}={v.lower()}" for a, v, _sep in validate_dn(dn))


def _entries(conn: ldap3.Connection) -> list[dict[str, Any]]:
    return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]


def publish(conn: ldap3.Connection, container: str, ao: ActivationObject) -> str:
    """Add the object directly under the container; returns its DN."""
    ao.validate()
    validate_dn(container)
    dn = f"cn={escape_rdn(ao.cn)},{container}"
    attrs, controls = ao.attributes(), None
    from .ad import creation_descriptor  # the publisher must not own it (Samba AD)

    creation = creation_descriptor(conn)
    if creation is not None:
        attrs["nTSecurityDescriptor"], controls = creation
    conn.add(dn, attributes=attrs, controls=controls)
    raise_for_result(conn.result, what=f"publish {dn}", dn=dn)
    log.info("published %s", dn)
    return dn


def object_filter(kms_ids: list[uuid.UUID] | None = None) -> str:
    """Activation objects, or those holding any of ``kms_ids`` (escaped, never concatenated)."""
    wanted = list(kms_ids or [])
    flt = f"(objectClass={OBJECT_CLASS})"
    if wanted:
        terms = "".join(f"(msSPP-KMSIds={escape_bytes(k.bytes_le)})" for k in wanted)
        flt = f"(&{flt}{terms if len(wanted) == 1 else f'(|{terms})'})"
    return flt


def pages(
    conn: ldap3.Connection,
    container: str,
    flt: str,
    attributes: list[str],
    *,
    page_size: int = PAGE_SIZE,
) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """A one-level paged search (RFC 2696): yields (entries of one page, size limit hit).

    A container with at most ``page_size`` matching objects costs one search request. When the
    server's size limit for this identity stops the search (``sizeLimitExceeded``, slapd's
    default 500 without ``olcLimits``), the entries it sent are yielded with ``True`` and the
    search ends; every other error raises. The caller may stop iterating at any page.
    """
    cookie: bytes | None = None
    while True:
        conn.search(
            container,
            flt,
            ldap3.LEVEL,
            attributes=attributes,
            paged_size=page_size,
            paged_cookie=cookie,
        )
        if conn.result.get("result") == _SIZE_LIMIT:
            yield _entries(conn), True
            return
        raise_for_result(conn.result, what=f"search {container}", dn=container)
        yield _entries(conn), False
        control = (conn.result.get("controls") or {}).get(_PAGED_OID) or {}
        cookie = (control.get("value") or {}).get("cookie") or None
        if not cookie:
            return


def search_objects(
    conn: ldap3.Connection,
    container: str,
    kms_id: uuid.UUID | None = None,
    *,
    kms_ids: list[uuid.UUID] | None = None,
    attributes: list[str] | None = None,
) -> list[ActivationObject]:
    """A paged one-level search of the container: all objects, or those holding ``kms_id`` (or
    any of ``kms_ids``). A size limit that stops it is an error naming the fix: a partial list
    would look complete."""
    wanted = [kms_id] if kms_id is not None else list(kms_ids or [])
    found: list[ActivationObject] = []
    try:
        yielded = list(_list_pages(conn, container, wanted, attributes))
    except ObjectNotFound as exc:
        raise ObjectNotFound(
            f"no container {container} (or it is not visible to this identity: list as an "
            "ADBA admin or a computer account)",
            dn=container,
        ) from exc
    for entries, limited in yielded:
        found += [ActivationObject.from_entry(e["dn"], e["raw_attributes"]) for e in entries]
        if limited:
            raise DirectoryError(
                f"search {container}: the server's size limit stopped the search after "
                f"{len(found)} objects: run `adba directory init` (it sets olcLimits for the "
                "admin group and the computers)",
                dn=container,
            )
    return found


def _list_pages(
    conn: ldap3.Connection,
    container: str,
    wanted: list[uuid.UUID],
    attributes: list[str] | None,
) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    for entries, limited in pages(
        conn, container, object_filter(wanted), attributes or READ_ATTRIBUTES
    ):
        yield list(entries), limited


def value_too_big(
    raw: Mapping[str, list[bytes]], limit: int = schema.MAX_LICENSE_BYTES
) -> str | None:
    """The first attribute of an entry with a value over ``limit`` bytes (the schema's 5 MiB
    bound, which OpenLDAP does not enforce), as a reason; None when every value fits."""
    for name, values in raw.items():
        for value in values:
            if len(value) > limit:
                return f"{name} holds {len(value)} bytes, over the {limit}-byte limit"
    return None


def list_objects(
    conn: ldap3.Connection, container: str, kms_id: uuid.UUID | None = None
) -> list[ActivationObject]:
    return sorted(search_objects(conn, container, kms_id), key=lambda o: (o.dn or "").lower())


def _read(conn: ldap3.Connection, dn: str) -> ActivationObject:
    validate_dn(dn)
    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=READ_ATTRIBUTES)
    if conn.result["result"] == 32 or (conn.result["result"] == 0 and not _entries(conn)):
        raise ObjectNotFound(f"no object {dn} (or it is not visible to this identity)", dn=dn)
    raise_for_result(conn.result, what=f"read {dn}", dn=dn)
    entry = _entries(conn)[0]
    classes = [c.decode().lower() for c in entry["raw_attributes"].get("objectClass", [])]
    if OBJECT_CLASS.lower() not in classes:
        raise NotAnActivationObject(f"{dn} is not an activation object", dn=dn)
    return ActivationObject.from_entry(entry["dn"], entry["raw_attributes"])


def show(conn: ldap3.Connection, dn: str) -> ActivationObject:
    return _read(conn, dn)


def delete(conn: ldap3.Connection, container: str, dn: str) -> None:
    """Delete one activation object; anything else (or anywhere else) is refused."""
    parts = validate_dn(dn)
    if _norm(",".join(f"{a}={v}" for a, v, _ in parts[1:])) != _norm(container):
        raise NotAnActivationObject(f"{dn} is not directly under {container}", dn=dn)
    _read(conn, dn)
    conn.delete(dn)
    raise_for_result(conn.result, what=f"delete {dn}", dn=dn)
    log.info("deleted %s", dn)


def read_forest_root(conn: ldap3.Connection) -> str:
    """The forest root DN from the root DSE: AD's rootDomainNamingContext, else the single
    naming context an OpenLDAP server announces (besides ADBA's audit log database)."""
    conn.search(
        "", "(objectClass=*)", ldap3.BASE, attributes=["namingContexts", "rootDomainNamingContext"]
    )
    raise_for_result(conn.result, what="read the root DSE")
    for entry in _entries(conn):
        raw = {k.lower(): v for k, v in entry["raw_attributes"].items()}
        if raw.get("rootdomainnamingcontext"):
            return str(raw["rootdomainnamingcontext"][0].decode())
        skip = schema.ACCESSLOG_SUFFIX  # the audit trail's database, not a forest
        contexts = [
            c.decode() for c in raw.get("namingcontexts", []) if c and c.decode().lower() != skip
        ]
        if len(contexts) == 1:
            return str(contexts[0])
        raise DirectoryError(
            f"cannot tell the forest root from the root DSE ({contexts}): give the base DN "
            "(-b/--base, or base in the configuration)"
        )
    raise DirectoryError(
        "the root DSE is not readable: give the base DN (-b/--base, or base in the configuration)"
    )


def read_forest_guid(conn: ldap3.Connection, root: str) -> uuid.UUID | None:
    """GUID of the configuration container: objectGUID on AD, entryUUID on OpenLDAP."""
    base = schema.config_dn(root)
    conn.search(base, "(objectClass=*)", ldap3.BASE, attributes=["entryUUID", "objectGUID"])
    raise_for_result(conn.result, what=f"read {base}", dn=base)
    for entry in _entries(conn):
        raw = {k.lower(): v for k, v in entry["raw_attributes"].items()}
        if raw.get("objectguid"):
            return uuid.UUID(bytes_le=raw["objectguid"][0])
        if raw.get("entryuuid"):
            return uuid.UUID(raw["entryuuid"][0].decode())
    return None
