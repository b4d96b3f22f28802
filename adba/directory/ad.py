"""Active Directory (and Samba AD): the native path.

On AD the msSPP schema (Windows Server 2012 and later) and the activation-objects container
(created by forest preparation) already exist; ADBA never extends the schema there. Who may do
what is the container's security descriptor, read here through the ``nTSecurityDescriptor``
attribute with the SD-flags control (owner, group and DACL) and changed with it (DACL only).
The binary descriptor is parsed and rebuilt with winacl; it is shown to people as SDDL.

The owner of an object may always read and rewrite its DACL (implicit READ_CONTROL and
WRITE_DAC), so a delegated publisher that owns what it published could grant itself writes.
Two layers stop that: ``grant`` puts an inheritable OWNER RIGHTS (S-1-3-4) entry with only
READ_CONTROL on the container, which takes the implicit rights away on Windows Server 2008 and
later; Samba 4.17 ignores OWNER RIGHTS but takes the owner a new object names, so on Samba
:func:`creation_descriptor` makes BUILTIN\\Administrators (the owner of the msSPP classes'
default descriptor, ``O:BAG:BA``) the owner of every object ADBA publishes.

Samba 4.17 ships an unparseable ``defaultSecurityDescriptor`` for the msSPP classes (a space
after ``D:``), so new activation objects get no Authenticated Users read ACE and computers
cannot see them. ``check`` detects it; ``grant_read`` fixes it without touching the schema by
putting an inheritable read ACE for Authenticated Users on the container.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import ldap3

from ..errors import DirectoryError, InvalidInput, ObjectNotFound
from . import schema
from .connection import ConnectionOptions, raise_for_result, session
from .openldap import Report

__all__ = [
    "AD_CAPABILITY",
    "FOREST_PREP",
    "OWNER_RIGHTS",
    "AclEntry",
    "check",
    "creation_descriptor",
    "grant",
    "is_active_directory",
    "revoke",
    "show",
]

log = logging.getLogger(__name__)

#: LDAP_CAP_ACTIVE_DIRECTORY_OID in the root DSE's supportedCapabilities
AD_CAPABILITY = "1.2.840.113556.1.4.800"
AUTHENTICATED_USERS = "S-1-5-11"
#: the well-known SID whose ACEs replace an owner's implicit READ_CONTROL|WRITE_DAC
OWNER_RIGHTS = "S-1-3-4"
ADMINISTRATORS = "S-1-5-32-544"
FOREST_PREP = (
    "prepare the forest: on Windows `adprep /forestprep` (or promote a Windows Server 2012+ "
    "DC); on Samba `samba-tool domain functionalprep --forest-prep --function-level=2012_R2`"
)
#: Windows Server 2012's schema (Sch56) is the first with the msSPP classes
MIN_SCHEMA_VERSION = 56
#: SD-flags control bits (LDAP_SERVER_SD_FLAGS_OID 1.2.840.113556.1.4.801)
_OWNER, _GROUP, _DACL = 0x01, 0x02, 0x04

#: AD access-right bits and their SDDL tokens, in SDDL's usual order
_RIGHTS = [
    (0x00000001, "CC"),
    (0x00000002, "DC"),
    (0x00000004, "LC"),
    (0x00000008, "SW"),
    (0x00000010, "RP"),
    (0x00000020, "WP"),
    (0x00000040, "DT"),
    (0x00000080, "LO"),
    (0x00000100, "CR"),
    (0x00010000, "SD"),
    (0x00020000, "RC"),
    (0x00040000, "WD"),
    (0x00080000, "WO"),
]
READ = 0x00020094  # RPLCLORC
READ_CONTROL = 0x00020000  # RC
_WRITE_DAC = 0x00040000  # WD
CREATE_DELETE = 0x00000003  # CCDC
_FLAGS = [(0x01, "OI"), (0x02, "CI"), (0x04, "NP"), (0x08, "IO"), (0x10, "ID")]
_WELL_KNOWN = {
    "S-1-5-11": "Authenticated Users",
    "S-1-5-18": "SYSTEM",
    "S-1-1-0": "Everyone",
    "S-1-5-9": "Enterprise Domain Controllers",
    "S-1-3-0": "Creator Owner",
    OWNER_RIGHTS: "Owner Rights",
    ADMINISTRATORS: "Administrators",
}


def is_active_directory(conn: ldap3.Connection) -> bool:
    conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["supportedCapabilities"])
    raise_for_result(conn.result, what="read the root DSE")
    for entry in conn.response or []:
        if entry.get("type") == "searchResEntry":
            caps = [c.decode() for c in entry["raw_attributes"].get("supportedCapabilities", [])]
            return AD_CAPABILITY in caps
    return False


def _controls(flags: int = _OWNER | _GROUP | _DACL) -> list[Any]:
    from ldap3.protocol.microsoft import security_descriptor_control

    return list(security_descriptor_control(sdflags=flags))


def is_samba(conn: ldap3.Connection) -> bool:
    """Samba AD announces itself in the root DSE's vendorName; Windows has none."""
    conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["vendorName"])
    for entry in conn.response or []:
        if entry.get("type") == "searchResEntry":
            vendor = entry["raw_attributes"].get("vendorName") or [b""]
            return bool(vendor[0].decode(errors="replace").lower().startswith("samba"))
    return False


def creation_descriptor(conn: ldap3.Connection) -> tuple[bytes, list[Any]] | None:
    """What a new activation object must carry so its publisher does not own it: on Samba AD
    (which ignores OWNER RIGHTS) a descriptor naming BUILTIN\\Administrators owner and group,
    sent with the SD-flags control for owner and group only, so the DACL is still the class
    default plus the container's inheritable entries; elsewhere nothing (Windows honours the
    OWNER RIGHTS entry ``grant`` puts on the container; OpenLDAP has no descriptors)."""
    if not is_samba(conn):
        return None
    from winacl.dtyp.security_descriptor import SE_SACL, SECURITY_DESCRIPTOR
    from winacl.dtyp.sid import SID

    sd = SECURITY_DESCRIPTOR()
    sd.Control = SE_SACL.SE_SELF_RELATIVE
    sd.Owner = SID.from_string(ADMINISTRATORS)
    sd.Group = SID.from_string(ADMINISTRATORS)
    return sd.to_bytes(), _controls(_OWNER | _GROUP)


def _read_sd(conn: ldap3.Connection, dn: str) -> Any:
    from winacl.dtyp.security_descriptor import SECURITY_DESCRIPTOR

    conn.search(
        dn, "(objectClass=*)", ldap3.BASE, attributes=["nTSecurityDescriptor"], controls=_controls()
    )
    if conn.result["result"] == 32:
        raise ObjectNotFound(f"{dn} does not exist: {FOREST_PREP}", dn=dn)
    raise_for_result(conn.result, what=f"read the security descriptor of {dn}", dn=dn)
    for entry in conn.response or []:
        if entry.get("type") == "searchResEntry":
            raw = entry["raw_attributes"].get("nTSecurityDescriptor") or []
            if raw:
                return SECURITY_DESCRIPTOR.from_bytes(raw[0])
    raise DirectoryError(f"the security descriptor of {dn} is not readable with this identity")


def _write_sd(conn: ldap3.Connection, dn: str, sd: Any) -> None:
    conn.modify(
        dn,
        {"nTSecurityDescriptor": [(ldap3.MODIFY_REPLACE, [sd.to_bytes()])]},
        controls=_controls(_DACL),
    )
    raise_for_result(conn.result, what=f"change the security descriptor of {dn}", dn=dn)


def _rights(mask: int) -> str:
    out, rest = "", mask
    for bit, token in _RIGHTS:
        if mask & bit:
            out += token
            rest &= ~bit
    return out + (f"0x{rest:x}" if rest else "")


class AclEntry:
    """One ACE of the container, for people (SDDL) and scripts (fields)."""

    def __init__(self, ace: Any, names: dict[str, str]) -> None:
        self.sid = str(ace.Sid)
        self.name = names.get(self.sid) or _WELL_KNOWN.get(self.sid) or self.sid
        self.allow = "DENIED" not in type(ace).__name__
        self.mask = int(ace.Mask)
        self.flags = int(ace.AceFlags or 0)
        self.object_type = str(getattr(ace, "ObjectType", None) or "") or None
        self.inherited_object_type = str(getattr(ace, "InheritedObjectType", None) or "") or None
        self.inherited = bool(self.flags & 0x10)

    @property
    def sddl(self) -> str:
        kind = ("O" if self.object_type or self.inherited_object_type else "") + (
            "A" if self.allow else "D"
        )
        flags = "".join(t for bit, t in _FLAGS if self.flags & bit)
        return (
            f"({kind};{flags};{_rights(self.mask)};{self.object_type or ''};"
            f"{self.inherited_object_type or ''};{self.sid})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sddl": self.sddl,
            "sid": self.sid,
            "name": self.name,
            "allow": self.allow,
            "rights": _rights(self.mask),
            "object_type": self.object_type,
            "inherited_object_type": self.inherited_object_type,
            "inherited": self.inherited,
        }


def _names(conn: ldap3.Connection, root: str, sids: set[str]) -> dict[str, str]:
    from ldap3.utils.conv import escape_filter_chars

    names = {}
    for sid in sids:
        if sid in _WELL_KNOWN:
            continue
        conn.search(
            root,
            f"(objectSid={escape_filter_chars(sid)})",
            ldap3.SUBTREE,
            attributes=["sAMAccountName"],
            size_limit=1,
        )
        for entry in conn.response or []:
            if entry.get("type") == "searchResEntry":
                value = entry["raw_attributes"].get("sAMAccountName") or [b""]
                names[sid] = value[0].decode()
    return names


def show(opts: ConnectionOptions, *, root: str) -> dict[str, Any]:
    container = schema.container_dn(root)
    with session(opts) as conn:
        sd = _read_sd(conn, container)
        aces = list(sd.Dacl.aces) if sd.Dacl else []
        owner = str(sd.Owner) if sd.Owner else None
        names = _names(conn, root, {str(a.Sid) for a in aces} | ({owner} if owner else set()))
        entries = [AclEntry(a, names) for a in aces]
    return {
        "container": container,
        "owner": owner,
        "owner_name": (names.get(owner) or _WELL_KNOWN.get(owner) or owner) if owner else None,
        "entries": [e.to_dict() for e in entries],
    }


def _sid_of(conn: ldap3.Connection, root: str, who: str) -> str:
    from ldap3.utils.conv import escape_filter_chars

    if who.upper().startswith("S-1-"):
        return who.upper()
    if who.lower() in ("authenticated users", "au"):
        return AUTHENTICATED_USERS
    if "=" in who:
        conn.search(who, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
    else:
        conn.search(
            root,
            f"(sAMAccountName={escape_filter_chars(who)})",
            ldap3.SUBTREE,
            attributes=["objectSid"],
            size_limit=2,
        )
    hits = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
    if len(hits) != 1 or not hits[0]["raw_attributes"].get("objectSid"):
        raise InvalidInput(f"no single group or account {who!r} in the directory")
    from winacl.dtyp.sid import SID

    return str(SID.from_bytes(hits[0]["raw_attributes"]["objectSid"][0]))


def _class_guid(conn: ldap3.Connection, root: str) -> uuid.UUID:
    base = f"CN=Schema,{schema.config_dn(root)}"
    conn.search(
        base, "(lDAPDisplayName=msSPP-ActivationObject)", ldap3.LEVEL, attributes=["schemaIDGUID"]
    )
    for entry in conn.response or []:
        if entry.get("type") == "searchResEntry":
            return uuid.UUID(bytes_le=entry["raw_attributes"]["schemaIDGUID"][0])
    raise DirectoryError("this directory's schema has no msSPP-ActivationObject class")


def grant(opts: ConnectionOptions, *, root: str, who: str, read_only: bool = False) -> list[str]:
    """Let ``who`` create and delete activation objects under the container (and read them),
    without any write to their attributes -- the objects' owner included: an inheritable
    OWNER RIGHTS entry with READ_CONTROL only; with ``read_only``, only read (inherited by the
    objects). Returns the SDDL of the ACEs added."""
    from winacl.dtyp.ace import ACE

    container = schema.container_dn(root)
    with session(opts) as conn:
        sid = _sid_of(conn, root, who)
        sd = _read_sd(conn, container)
        wanted = [f"(A;CI;0x{READ:x};;;{sid})"]
        if not read_only:
            guid = _class_guid(conn, root)
            wanted.append(f"(OA;;0x{CREATE_DELETE:x};{guid};;{sid})")
            wanted.append(f"(OA;CIIO;0x{READ_CONTROL:x};;{guid};{OWNER_RIGHTS})")
        present = {AclEntry(a, {}).sddl for a in sd.Dacl.aces}
        added = []
        for text in wanted:
            ace = ACE.from_sddl(text)
            if AclEntry(ace, {}).sddl not in present:
                sd.Dacl.aces.append(ace)
                added.append(AclEntry(ace, {}).sddl)
        if added:
            _write_sd(conn, container, sd)
    log.info("granted %s on %s: %s", who, container, " ".join(added) or "nothing new")
    return added


def revoke(opts: ConnectionOptions, *, root: str, who: str) -> list[str]:
    """Remove the container's own (not inherited) ACEs for ``who``."""
    container = schema.container_dn(root)
    with session(opts) as conn:
        sid = _sid_of(conn, root, who)
        sd = _read_sd(conn, container)
        keep, removed = [], []
        for ace in sd.Dacl.aces:
            entry = AclEntry(ace, {})
            if entry.sid == sid and not entry.inherited:
                removed.append(entry.sddl)
            else:
                keep.append(ace)
        if removed:
            sd.Dacl.aces = keep
            _write_sd(conn, container, sd)
    return removed


def _check_owner_rights(report: Report, aces: list[AclEntry]) -> None:
    """Delegated publishers (object-specific create/delete entries of the container's own)
    need the OWNER RIGHTS entry, else they may rewrite what they published (Windows)."""
    delegated = sorted(
        {e.name for e in aces if e.allow and not e.inherited and e.object_type and e.mask & 1}
    )
    limited = any(
        e.sid == OWNER_RIGHTS and e.allow and not e.mask & _WRITE_DAC and e.flags & 0x02
        for e in aces
    )
    if not delegated or limited:
        detail = (
            "the owner of an activation object gains no write (OWNER RIGHTS: read-control)"
            if delegated
            else "no delegated publishers"
        )
        report.add("owner-rights", True, detail)
        return
    report.add(
        "owner-rights",
        False,
        "no OWNER RIGHTS entry: a delegated publisher that owns an object may rewrite its DACL",
        f"re-run `adba acl grant` for {', '.join(repr(n) for n in delegated)}",
    )


def check(opts: ConnectionOptions, *, root: str) -> Report:
    """Schema version, container, the Authenticated Users read grant (and Samba's bug), the
    OWNER RIGHTS entry delegated publishers need, TLS."""
    from ..errors import CheckFailed

    report = Report(root, schema.container_dn(root))
    config = schema.config_dn(root)
    with session(opts) as conn:
        conn.search(
            f"CN=Schema,{config}", "(objectClass=*)", ldap3.BASE, attributes=["objectVersion"]
        )
        raise_for_result(conn.result, what="read the schema version")
        version = 0
        for entry in conn.response or []:
            if entry.get("type") == "searchResEntry":
                version = int((entry["raw_attributes"].get("objectVersion") or [b"0"])[0])
        ok = version >= MIN_SCHEMA_VERSION
        report.add(
            "schema",
            ok,
            f"schema objectVersion {version} (Windows Server 2012 is 56)",
            "" if ok else "raise the schema to Windows Server 2012 or later (adprep)",
        )
        conn.search(
            f"CN=Schema,{config}",
            "(lDAPDisplayName=msSPP-ActivationObject)",
            ldap3.LEVEL,
            attributes=["defaultSecurityDescriptor"],
        )
        default_sd = ""
        for entry in conn.response or []:
            if entry.get("type") == "searchResEntry":
                default_sd = (entry["raw_attributes"].get("defaultSecurityDescriptor") or [b""])[
                    0
                ].decode()
        try:
            sd = _read_sd(conn, report.container)
        except ObjectNotFound:
            report.add("container", False, f"{report.container} missing", FOREST_PREP)
            sd = None
        if sd is not None:
            report.add("container", True, f"{report.container} present")
            names = _names(conn, root, {str(a.Sid) for a in sd.Dacl.aces})
            aces = [AclEntry(a, names) for a in sd.Dacl.aces]
            inheritable_read = any(
                e.sid == AUTHENTICATED_USERS
                and e.allow
                and e.mask & READ == READ
                and e.flags & 0x02
                for e in aces
            )
            container_read = any(
                e.sid == AUTHENTICATED_USERS and e.allow and e.mask & READ == READ for e in aces
            )
            broken_default = "D: (" in default_sd or "AU)" not in default_sd
            fix = f"run `adba acl grant 'Authenticated Users' --read` (an inheritable read on {report.container})"
            if broken_default and not inheritable_read:
                report.add(
                    "read-grant",
                    False,
                    "the msSPP-ActivationObject default security descriptor does not parse "
                    "(Samba's lost grant): new objects are not readable by computers",
                    fix,
                )
            elif not container_read:
                report.add(
                    "read-grant", False, "Authenticated Users cannot read the container", fix
                )
            else:
                report.add(
                    "read-grant", True, "Authenticated Users read the container and its objects"
                )
            _check_owner_rights(report, aces)
    secure = opts.scheme == "ldaps" or (opts.scheme == "ldap" and not opts.insecure)
    report.add(
        "tls",
        secure,
        "TLS in use" if secure else "no TLS: AD refuses simple binds in clear",
        "" if secure else "use ldaps:// or StartTLS with --ca-file",
    )
    if not report.ok:
        raise CheckFailed(
            "directory not ready for ADBA: "
            + "; ".join(i.detail for i in report.items if not i.ok),
            report=report,
        )
    return report
