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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyExists, InvalidInput, LicenseError, MalformedLicense, WrongForest
from . import schema, store
from .connection import ConnectionOptions, session

if TYPE_CHECKING:
    from ..authority import Activator
    from ..catalog import Catalog
    from ..license import ForestIdentity

__all__ = [
    "ObjectView",
    "Verified",
    "check_name",
    "delete_object",
    "forest_identity",
    "forest_installation",
    "list_views",
    "publish_confirmed",
    "publish_csvlk",
    "retirements",
    "show_view",
    "verify_object",
]

log = logging.getLogger(__name__)


def forest_identity(conn: Any, root: str) -> ForestIdentity:
    from ..license import ForestIdentity

    return ForestIdentity.of(root, store.read_forest_guid(conn, root))


@dataclass(frozen=True)
class Verified:
    """What a verified object's license says about its own validity window."""

    kind: str  # "issuance" (online) or "phone" (installation + confirmation ID)
    not_before: int
    not_after: int
    #: id of the signing key that signed the issuance license (None: a phone license,
    #: which the root key signs itself)
    signer: bytes | None = None
    #: signing keys the license's root-signed certificate states are retired
    retired: tuple[bytes, ...] = ()


def verify_object(
    ao: store.ActivationObject,
    *,
    root_public_key: bytes,
    forest: ForestIdentity | None,
    now: int,
    sku_for_code: Callable[[int], uuid.UUID | None] | None = None,
    retired: Iterable[bytes] = (),
) -> Verified:
    """The license chain, the forest binding, and that the object's own attributes agree
    with what the authority signed. Raises a :class:`LicenseError` naming the first problem.

    An object activated online carries an issuance license (signed by the authority's
    signing key, certified by the root); one activated by telephone carries a phone license
    (the installation ID and the root's confirmation), whose SKU follows from the key's
    product code (``sku_for_code``, from the catalogue). ``retired``: ids of retired signing
    keys (see :func:`retirements`): an issuance license one of them signed is refused
    (:class:`~adba.errors.SignerRetired`)."""
    from ..license import make_pid, verify_license

    der = ao.issuance_license
    phone = ao.licenses.get("msSPP-PhoneLicense")
    if not any(_ours(blob) for blob in (der, phone) if blob is not None):
        raise MalformedLicense("object carries no license of ours (a Windows object?)")
    if forest is None or forest.guid is None:
        # never a wildcard: without this forest's GUID no license can be bound to it
        raise WrongForest(
            "cannot check the forest binding: the directory gave no forest GUID for "
            f"{forest.dn if forest else 'this forest'}"
        )
    if der is not None:
        lic = verify_license(
            der, root_public_key=root_public_key, forest=forest, now=now, retired=retired
        )
        if lic.forest.guid is None:  # a license that names no GUID is for no forest
            raise WrongForest(
                f"the license names no forest GUID (issued for {lic.forest.dn}, any forest "
                "with that root DN): refused"
            )
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
        cert = lic.certificate
        return Verified("issuance", cert.not_before, cert.not_after, cert.key_id, cert.retired)
    if phone is not None:
        from ..confirmation import verify_phone_license

        installation, confirmation = verify_phone_license(
            phone, root_public_key=root_public_key, forest_dn=forest.dn, forest_guid=forest.guid
        )
        key = installation.key
        if confirmation.issued_at > now + 300:
            raise LicenseError("the phone license was confirmed in the future")
        if key.partial != ao.partial_key:
            raise LicenseError(
                f"partial key {ao.partial_key} disagrees with the phone license ({key.partial})"
            )
        if make_pid(key.code, key.serial, confirmation.issued_at) != ao.pid:
            raise LicenseError("PID disagrees with the phone license")
        if sku_for_code is not None:
            sku = sku_for_code(key.code)
            if sku is None or sku.bytes_le != ao.csvlk_sku:
                raise LicenseError("CSVLK SKU disagrees with the phone license's key")
        return Verified("phone", confirmation.issued_at, 2**62)
    raise MalformedLicense("object carries no license of ours (a Windows object?)")


def retirements(
    objects: Iterable[store.ActivationObject], *, root_public_key: bytes
) -> frozenset[bytes]:
    """Every signing key the root-signed certificates carried by ``objects`` state retired.
    Read from all candidates before any is verified: a license of a retired key is then
    refused even when it comes before the newer object that carries the retirement."""
    from ..license import stated_retirements

    found: set[bytes] = set()
    for ao in objects:
        if ao.issuance_license is not None and _ours(ao.issuance_license):
            found |= stated_retirements(ao.issuance_license, root_public_key=root_public_key)
    return frozenset(found)


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


def _ours(blob: bytes) -> bool:
    """Does this look like an ADBA license at all (a DER sequence, or a phone license)?
    Windows' own licenses are XrML documents."""
    from ..confirmation import PHONE_MAGIC

    return blob[:1] == b"\x30" or blob.startswith(PHONE_MAGIC)


def _csvlk_sku(catalog: Catalog, code: int) -> uuid.UUID | None:
    from ..errors import AdbaError

    try:
        return catalog.csvlk_by_code(code).sku
    except AdbaError:
        return None


def _uuid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)) if len(raw) == 16 else raw.hex()


def _view(
    ao: store.ActivationObject,
    catalog: Catalog,
    root_public_key: bytes | None,
    forest: ForestIdentity | None,
    now: int,
    retired: Iterable[bytes] = (),
) -> ObjectView:
    der = ao.issuance_license or ao.licenses.get("msSPP-PhoneLicense")
    if der is None:
        status, detail = "absent", "no license"
    elif root_public_key is None:
        status, detail = "present", "not verified: no pinned root key (--root-key)"
    else:
        try:
            verify_object(
                ao,
                root_public_key=root_public_key,
                forest=forest,
                now=now,
                sku_for_code=lambda code: _csvlk_sku(catalog, code),
                retired=retired,
            )
            status, detail = "verified", "signed by the pinned authority for this forest"
        except MalformedLicense as exc:
            if _ours(der):  # our format, altered
                status, detail = "invalid", exc.message
            else:
                status, detail = "foreign", "Windows object, not ours (never used by the agent)"
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


#: why a GVLK or MAK is refused (InvalidKey, exit 11) where a forest's key is expected
_NEEDS_CSVLK = "activation objects need a CSVLK (a KMS host key), not a client key"


def check_name(name: str) -> str:
    """An object name (cn) the directory will take: 1-64 characters, no control characters,
    no '?' or '%'."""
    if not 1 <= len(name) <= 64:
        raise InvalidInput(f"object name (--name) must be 1-64 characters, not {len(name)}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidInput("object name (--name) must not hold control characters")
    if name != name.strip():
        raise InvalidInput("object name (--name) must not start or end with a space")
    if "?" in name or "%" in name:
        # OpenLDAP's rules tell a stored object by a lookup of an LDAP URL holding its DN
        # (schema.STORED): with these the admin group could publish it but never delete it
        raise InvalidInput("object name (--name) must not hold '?' or '%'")
    return name


def _free_dn(conn: Any, container: str, name: str) -> str:
    """Before anything is recorded anywhere: the container exists (and is visible) and no
    object of that name is in it. Returns the DN the object will have."""
    from ldap3.utils.dn import escape_rdn

    from ..errors import ObjectNotFound

    store.validate_dn(container)
    conn.search(container, "(objectClass=*)", "BASE", attributes=["1.1"])
    if conn.result.get("result") == 32 or not [
        e for e in conn.response or [] if e.get("type") == "searchResEntry"
    ]:
        raise ObjectNotFound(
            f"no container {container} (or it is not visible to this identity): "
            "run `adba directory init`, or bind as an ADBA admin",
            dn=container,
        )
    dn = f"cn={escape_rdn(check_name(name))},{container}"
    conn.search(dn, "(objectClass=*)", "BASE", attributes=["1.1"])
    if conn.result.get("result") == 0 and [
        e for e in conn.response or [] if e.get("type") == "searchResEntry"
    ]:
        raise AlreadyExists(f"an object {dn} already exists: choose another --name", dn=dn)
    return dn


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
    parsed = parse_key(key, expect=KeyType.CSVLK, purpose=_NEEDS_CSVLK)
    now = int(time.time()) if now is None else now
    product = catalog.csvlk_by_code(parsed.code)
    cn = check_name(name if name is not None else f"{product.name} {parsed.partial}")
    with session(opts) as conn:
        # validate everything first, then act: the authority records an activation
        _free_dn(conn, schema.container_dn(root), cn)
        say("reading the forest identity")
        forest = forest_identity(conn, root)
        say(f"activating {parsed.masked()} for {forest.dn}")
        act = activator.activate_csvlk(parsed.text, forest, catalog, now=now)
        ao = store.ActivationObject.build(
            cn=cn,
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


def forest_installation(opts: ConnectionOptions, *, root: str, key: str) -> Any:
    """The installation ID for activating ``key`` (a CSVLK) for this forest by telephone."""
    from ..confirmation import KIND_CSVLK_FOREST, Installation, forest_binding
    from ..keys import KeyType, parse_key

    parsed = parse_key(key, expect=KeyType.CSVLK, purpose=_NEEDS_CSVLK)
    with session(opts) as conn:
        forest = forest_identity(conn, root)
    return Installation.of(KIND_CSVLK_FOREST, parsed, forest_binding(forest.dn, forest.guid))


def publish_confirmed(
    opts: ConnectionOptions,
    *,
    root: str,
    key: str,
    confirmation_id: str,
    catalog: Catalog,
    root_public_key: bytes,
    name: str | None = None,
) -> tuple[str, ObjectView]:
    """Publish an object activated by telephone: the confirmation ID must answer this
    forest's installation ID for ``key`` (checked with the pinned root key before anything is
    written); the object records both IDs and carries the phone license."""
    from ..confirmation import (
        KIND_CSVLK_FOREST,
        Confirmation,
        Installation,
        forest_binding,
        phone_license,
        signed_message,
        verify_root_signature,
    )
    from ..keys import KeyType, parse_key
    from ..license import make_pid

    parsed = parse_key(key, expect=KeyType.CSVLK, purpose=_NEEDS_CSVLK)
    confirmation = Confirmation.parse(confirmation_id)
    product = catalog.csvlk_by_code(parsed.code)
    cn = check_name(name if name is not None else f"{product.name} {parsed.partial}")
    with session(opts) as conn:
        _free_dn(conn, schema.container_dn(root), cn)
        forest = forest_identity(conn, root)
        installation = Installation.of(
            KIND_CSVLK_FOREST, parsed, forest_binding(forest.dn, forest.guid)
        )
        if not verify_root_signature(
            root_public_key,
            confirmation.signature,
            signed_message(installation, confirmation.issued_at),
        ):
            raise LicenseError(
                "the confirmation ID does not answer this installation ID (another key, "
                "another forest, or not from the pinned authority)"
            )
        ao = store.ActivationObject.build(
            cn=cn,
            kms_ids=tuple(product.kms_ids),
            csvlk_sku=product.sku,
            partial_key=parsed.partial,
            pid=make_pid(parsed.code, parsed.serial, confirmation.issued_at),
            installation_id=installation.text(),
            confirmation_id=confirmation.text(),
        )
        ao = dataclasses.replace(
            ao, licenses={"msSPP-PhoneLicense": phone_license(installation, confirmation)}
        )
        dn = store.publish(conn, schema.container_dn(root), ao)
        published = dataclasses.replace(ao, dn=dn)
        return dn, _view(published, catalog, root_public_key, forest, int(time.time()))


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
    retired = retirements(objects, root_public_key=root_public_key) if root_public_key else ()
    return [_view(o, catalog, root_public_key, forest, now, retired) for o in objects]


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
