"""Admin workflows over activation objects: activate a CSVLK for this forest and publish the
object, and list / show objects with their license verified against the pinned root key.

These are the library calls behind ``adba ao publish|list|show|delete``; each takes
:class:`ConnectionOptions` and returns data, never prints.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, LicenseError
from . import schema, store
from .connection import ConnectionOptions, session

if TYPE_CHECKING:
    from ..authority import Activator
    from ..catalog import Catalog
    from ..license import ForestIdentity, IssuanceLicense

__all__ = [
    "ObjectView",
    "delete_object",
    "forest_identity",
    "list_views",
    "publish_csvlk",
    "show_view",
    "verify_object",
]

log = logging.getLogger(__name__)


def forest_identity(conn: Any, root: str) -> ForestIdentity:
    from ..license import ForestIdentity

    return ForestIdentity.of(root, store.read_forest_guid(conn, root))


def verify_object(
    ao: store.ActivationObject,
    *,
    root_public_key: bytes,
    forest: ForestIdentity | None,
    now: int,
) -> IssuanceLicense:
    """The license chain, the forest binding, and that the object's own attributes agree
    with what the authority signed. Raises a :class:`LicenseError` naming the first problem."""
    from ..license import verify_license

    der = ao.issuance_license
    if der is None:
        raise LicenseError("object carries no issuance license")
    lic = verify_license(der, root_public_key=root_public_key, forest=forest, now=now)
    if lic.partial_key != ao.partial_key:
        raise LicenseError(
            f"partial key {ao.partial_key} disagrees with the license ({lic.partial_key})"
        )
    if lic.csvlk_pid != ao.pid:
        raise LicenseError("PID disagrees with the license")
    if lic.csvlk_sku.bytes_le != ao.csvlk_sku:
        raise LicenseError("CSVLK SKU disagrees with the license")
    if {k.bytes_le for k in lic.kms_ids} != set(ao.kms_ids):
        raise LicenseError("KMS IDs disagree with the license")
    return lic


@dataclass(frozen=True)
class ObjectView:
    """What ``ao list`` / ``ao show`` print for one object."""

    dn: str
    cn: str
    csvlk_sku: str
    csvlk_name: str | None
    partial_key: str
    pid: str
    kms_ids: list[str]
    kms_names: list[str]
    license: str  # "verified" | "present" | "absent" | "invalid"
    license_detail: str
    license_bytes: int
    installation_id: str | None
    confirmation_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _uuid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)) if len(raw) == 16 else raw.hex()


def _view(
    ao: store.ActivationObject,
    catalog: Catalog,
    root_public_key: bytes | None,
    forest: ForestIdentity | None,
    now: int,
) -> ObjectView:
    der = ao.issuance_license
    if der is None:
        status, detail = "absent", "no issuance license"
    elif root_public_key is None:
        status, detail = "present", "not verified: no pinned root key (--root-key)"
    else:
        try:
            verify_object(ao, root_public_key=root_public_key, forest=forest, now=now)
            status, detail = "verified", "signed by the pinned authority for this forest"
        except LicenseError as exc:
            status, detail = "invalid", exc.message
    kms = [_uuid_text(k) for k in ao.kms_ids]
    names = []
    for k in ao.kms_ids:
        try:
            names.append(catalog.group_name(uuid.UUID(bytes_le=k)))
        except ValueError:
            names.append(k.hex())
    sku_name = catalog.sku_name(ao.sku_uuid) if len(ao.csvlk_sku) == 16 else None
    return ObjectView(
        dn=ao.dn or "",
        cn=ao.cn,
        csvlk_sku=_uuid_text(ao.csvlk_sku),
        csvlk_name=sku_name,
        partial_key=ao.partial_key,
        pid=ao.pid,
        kms_ids=kms,
        kms_names=names,
        license=status,
        license_detail=detail,
        license_bytes=len(der or b""),
        installation_id=ao.installation_id,
        confirmation_id=ao.confirmation_id,
    )


def publish_csvlk(
    opts: ConnectionOptions,
    *,
    root: str,
    key: str,
    activator: Activator,
    catalog: Catalog,
    name: str | None = None,
    now: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[str, ObjectView]:
    """Activate ``key`` (a CSVLK) for this forest and publish the activation object.

    Nothing is written unless the key is valid and the authority agreed.
    """
    from ..keys import KeyType, parse_key

    say = progress or (lambda _m: None)
    parsed = parse_key(key)
    if parsed.type is not KeyType.CSVLK:
        raise InvalidInput(
            f"{parsed.type.name} keys are not published: activation objects need a CSVLK"
        )
    now = int(time.time()) if now is None else now
    with session(opts) as conn:
        say("reading the forest identity")
        forest = forest_identity(conn, root)
        say(f"activating {parsed.masked()} for {forest.dn}")
        act = activator.activate_csvlk(parsed.text, forest, catalog, now=now)
        ao = store.ActivationObject.build(
            cn=name or f"{act.csvlk_name} {act.partial_key}",
            kms_ids=tuple(act.kms_ids),
            csvlk_sku=act.csvlk_sku,
            partial_key=act.partial_key,
            pid=act.pid,
            issuance_license=act.license_der,
        )
        say("publishing")
        dn = store.publish(conn, schema.container_dn(root), ao)
        published = dataclasses.replace(ao, dn=dn)
        return dn, _view(published, catalog, None, forest, now)


def list_views(
    opts: ConnectionOptions,
    *,
    root: str,
    catalog: Catalog,
    root_public_key: bytes | None,
    kms_id: uuid.UUID | None = None,
    now: int | None = None,
) -> list[ObjectView]:
    now = int(time.time()) if now is None else now
    with session(opts) as conn:
        objects = store.list_objects(conn, schema.container_dn(root), kms_id)
        forest = forest_identity(conn, root) if root_public_key and objects else None
    return [_view(o, catalog, root_public_key, forest, now) for o in objects]


def show_view(
    opts: ConnectionOptions,
    *,
    root: str,
    dn: str,
    catalog: Catalog,
    root_public_key: bytes | None,
    now: int | None = None,
) -> ObjectView:
    now = int(time.time()) if now is None else now
    with session(opts) as conn:
        ao = store.show(conn, dn)
        forest = forest_identity(conn, root) if root_public_key else None
    return _view(ao, catalog, root_public_key, forest, now)


def delete_object(opts: ConnectionOptions, *, root: str, dn: str) -> None:
    with session(opts) as conn:
        store.delete(conn, schema.container_dn(root), dn)
