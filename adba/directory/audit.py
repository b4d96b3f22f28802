"""The audit trail: who published or deleted which activation object, when (``adba ao history``).

OpenLDAP: ``directory init`` puts slapo-accesslog on the main database, logging the successful
writes under the activation-objects container (``olcAccessLogBase``: nothing else, so no
password change elsewhere ever lands in a log the admin group reads) into a second mdb database,
:data:`schema.ACCESSLOG_SUFFIX`, in a directory next to the main one, purged after
:data:`RETENTION`. Only the main database's root DN and the admin group read it; its own root
DN has no password (nobody binds as it: only the purge, run inside slapd, writes there). Each
record names the bound identity (``reqAuthzID``), the object (``reqDN``), the operation, its
start and end and the session (``reqSession``, slapd's connection number: slapd 2.5 records no
client address; ``conn=N`` in slapd's stats log has it).

AD and Samba AD keep no such log over LDAP: a live object says when it was made
(``whenCreated``) and who owns it (the owner SID of ``nTSecurityDescriptor``: on Windows the
publisher; on Samba ADBA names BUILTIN\\Administrators owner, see :mod:`.ad`); a deleted one
survives as a tombstone in the Deleted Objects container, found with the show-deleted control
by ``lastKnownParent`` (deleted at ``whenChanged``; AD does not record by whom).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ldap3
from ldap3.utils.conv import escape_filter_chars

from ..errors import DirectoryError, InvalidInput, ObjectNotFound
from . import schema
from .connection import ConnectionOptions, raise_for_result, session

__all__ = [
    "RETENTION",
    "Event",
    "configure",
    "history",
    "log_database",
    "log_overlay",
    "parse_since",
    "report",
]

log = logging.getLogger(__name__)

#: keep records 90 days, purge once a day (slapo-accesslog's logpurge)
RETENTION = "90+00:00 1+00:00"
SHOW_DELETED = "1.2.840.113556.1.4.417"
_PREFIX = re.compile(r"^\{-?\d+\}")
_RELATIVE = re.compile(r"^(\d+)([dhm])$")
_LOG_DIRNAME = "adba-accesslog"


@dataclass(eq=False, repr=False)
class Event:
    """One publish or delete of an activation object."""

    action: str  # "publish" | "delete"
    dn: str
    when: str  # ISO 8601, UTC
    #: who did it: the bound DN (OpenLDAP), the owner's name (AD publish); None if not recorded
    who: str | None
    #: where it comes from: "accesslog", "object" (AD whenCreated/owner), "deleted-objects"
    source: str
    session: str | None = None
    owner_sid: str | None = None
    end: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "dn": self.dn,
            "when": self.when,
            "who": self.who,
            "source": self.source,
            "session": self.session,
            "owner_sid": self.owner_sid,
            "end": self.end,
        }


def parse_since(text: str | None, *, now: datetime | None = None) -> datetime | None:
    """``--since``: an ISO date or time (UTC unless it says), or ``7d`` / ``12h`` / ``30m``."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    rel = _RELATIVE.match(text.strip().lower())
    if rel:
        n, unit = int(rel.group(1)), rel.group(2)
        return now - timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[unit]: n})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput(
            f"--since {text!r}: give an ISO date or time (2026-09-21, 2026-09-21T12:00Z) "
            "or a span (7d, 12h, 30m)"
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# -- OpenLDAP: configuration (directory init / check) --------------------------------------------
def log_database(root_dn: str | None, admin_group: str, directory: str) -> dict[str, Any]:
    """The attributes of the log database's cn=config entry."""
    return {
        "objectClass": ["olcDatabaseConfig", "olcMdbConfig"],
        "olcDatabase": "mdb",
        "olcSuffix": schema.ACCESSLOG_SUFFIX,
        "olcDbDirectory": directory,
        # no password: nobody binds as it; slapd's purge runs as it
        "olcRootDN": schema.ACCESSLOG_SUFFIX,
        "olcDbIndex": ["objectClass eq", "reqStart eq", "reqDN eq"],
        "olcDbMaxSize": "4294967296",
        "olcAccess": log_access(root_dn, admin_group),
        "olcLimits": [f'group/groupOfNames/member="{admin_group}" size.prtotal=unlimited'],
    }


def log_access(root_dn: str | None, admin_group: str) -> list[str]:
    """Who reads the log: the main database's root DN and the admin group; nobody else sees it
    (not even that it exists: searches get noSuchObject, 32). Nobody writes it."""
    root = f'by dn.exact="{root_dn}" read ' if root_dn else ""
    return [f'{{0}}to * {root}by group.exact="{admin_group}" read by * none']


def log_overlay(root: str) -> dict[str, Any]:
    """The accesslog overlay on the main database: successful writes under the container."""
    return {
        "objectClass": ["olcOverlayConfig", "olcAccessLogConfig"],
        "olcOverlay": "accesslog",
        "olcAccessLogDB": schema.ACCESSLOG_SUFFIX,
        "olcAccessLogBase": f'writes "{schema.container_dn(root)}"',
        "olcAccessLogSuccess": "TRUE",
        "olcAccessLogPurge": RETENTION,
    }


def _values(entry: dict[str, Any] | None, name: str) -> list[str]:
    for key, values in ((entry or {}).get("attributes") or {}).items():
        if key.lower() == name.lower():
            return [str(v) for v in (values if isinstance(values, list) else [values])]
    return []


def _entries(conn: ldap3.Connection) -> list[dict[str, Any]]:
    return [dict(e) for e in conn.response or [] if e.get("type") == "searchResEntry"]


def _search(
    conn: ldap3.Connection, base: str, flt: str, scope: str, attrs: list[str]
) -> list[dict[str, Any]]:
    conn.search(base, flt, scope, attributes=attrs)
    if conn.result["result"] == 32:
        return []
    raise_for_result(conn.result, what=f"search {base}")
    return _entries(conn)


def _log_db(conn: ldap3.Connection) -> dict[str, Any] | None:
    flt = f"(olcSuffix={escape_filter_chars(schema.ACCESSLOG_SUFFIX)})"
    found = _search(
        conn, "cn=config", flt, ldap3.LEVEL, ["olcAccess", "olcLimits", "olcDbDirectory"]
    )
    return found[0] if found else None


def _overlay(conn: ldap3.Connection, db_dn: str) -> dict[str, Any] | None:
    found = _search(
        conn, db_dn, "(objectClass=olcAccessLogConfig)", ldap3.LEVEL, list(log_overlay("x"))
    )
    return found[0] if found else None


def _strip(values: list[str]) -> list[str]:
    return [" ".join(_PREFIX.sub("", v).split()).lower() for v in values]


def _load_module(conn: ldap3.Connection) -> str:
    lists = _search(
        conn, "cn=config", "(objectClass=olcModuleList)", ldap3.LEVEL, ["olcModuleLoad"]
    )
    for entry in lists:
        if any("accesslog" in v.lower() for v in _values(entry, "olcModuleLoad")):
            return "accesslog module already loaded"
    if not lists:
        conn.add(
            "cn=module,cn=config",
            attributes={
                "objectClass": ["olcModuleList"],
                "cn": "module",
                "olcModuleLoad": "accesslog",
            },
        )
    else:
        conn.modify(str(lists[0]["dn"]), {"olcModuleLoad": [(ldap3.MODIFY_ADD, ["accesslog"])]})
    raise_for_result(conn.result, what="load the accesslog module")
    return "accesslog module loaded"


def _log_directory(conn: ldap3.Connection, db_dn: str) -> str:
    """A directory next to the main database's (created, owned like it, mode 0700)."""
    main = _values(
        next(iter(_search(conn, db_dn, "(objectClass=*)", ldap3.BASE, ["olcDbDirectory"])), None),
        "olcDbDirectory",
    )
    if not main:
        raise DirectoryError(f"{db_dn} has no olcDbDirectory: not an mdb database")
    parent = Path(main[0]).resolve()
    if not parent.is_dir():
        raise DirectoryError(
            f"the database directory {parent} is not on this machine: run `directory init` "
            "where slapd runs (or give --no-audit)"
        )
    target = parent.parent / _LOG_DIRNAME
    try:
        target.mkdir(mode=0o700, exist_ok=True)
        st = parent.stat()
        if os.geteuid() == 0 and (target.stat().st_uid, target.stat().st_gid) != (
            st.st_uid,
            st.st_gid,
        ):
            os.chown(target, st.st_uid, st.st_gid)
    except OSError as exc:
        raise DirectoryError(
            f"cannot create the audit log's directory {target}: {exc.strerror}"
        ) from exc
    return str(target)


def configure(
    conn: ldap3.Connection, db_dn: str, *, root: str, root_dn: str | None, admin_group: str
) -> str:
    """Make sure the log database and the overlay are there as wanted (``init``); idempotent.
    Returns what was done, for the report."""
    done = []
    module = _load_module(conn)
    if module.endswith(" loaded") and "already" not in module:
        done.append("module loaded")
    wanted_db = log_database(root_dn, admin_group, "")
    have = _log_db(conn)
    if have is None:
        attrs = dict(wanted_db, olcDbDirectory=_log_directory(conn, db_dn))
        conn.add("olcDatabase=mdb,cn=config", attributes=attrs)
        raise_for_result(conn.result, what=f"add the {schema.ACCESSLOG_SUFFIX} database")
        done.append(f"log database {schema.ACCESSLOG_SUFFIX} added in {attrs['olcDbDirectory']}")
    else:
        mods: dict[str, Any] = {}
        for name in ("olcAccess", "olcLimits"):
            if _strip(_values(have, name)) != _strip(list(wanted_db[name])):
                mods[name] = [(ldap3.MODIFY_REPLACE, list(wanted_db[name]))]
        if mods:
            conn.modify(str(have["dn"]), mods)
            raise_for_result(conn.result, what="set who reads the audit log")
            done.append("log database access set")
    wanted = log_overlay(root)
    overlay = _overlay(conn, db_dn)
    if overlay is None:
        conn.add(f"olcOverlay=accesslog,{db_dn}", attributes=wanted)
        raise_for_result(conn.result, what="add the accesslog overlay")
        done.append("accesslog overlay added")
    else:
        mods = {
            name: [(ldap3.MODIFY_REPLACE, [value])]
            for name, value in wanted.items()
            if name.startswith("olcAccessLog") and _strip(_values(overlay, name)) != _strip([value])
        }
        if mods:
            conn.modify(str(overlay["dn"]), mods)
            raise_for_result(conn.result, what="set the accesslog overlay")
            done.append("accesslog overlay settings " + ", ".join(sorted(mods)))
    if not done:
        return f"writes under the container logged to {schema.ACCESSLOG_SUFFIX} already"
    return "; ".join(done)


def report(rep: Any, conn: ldap3.Connection, db_dn: str, *, root: str) -> None:
    """``check``: is the accesslog overlay there, logging the container's writes to a
    database only the admin group and the root DN read, with bounded retention."""
    overlay = _overlay(conn, db_dn)
    if overlay is None:
        rep.add(
            "audit",
            True,
            "no audit trail (accesslog overlay off): who publishes and deletes is not recorded",
            "run `adba directory init` without --no-audit to record it",
        )
        return
    wanted = log_overlay(root)
    wrong = [
        name
        for name, value in wanted.items()
        if name.startswith("olcAccessLog") and _strip(_values(overlay, name)) != _strip([value])
    ]
    db = _log_db(conn)
    access = _strip(_values(db, "olcAccess"))
    if db is None:
        wrong.append(f"no {schema.ACCESSLOG_SUFFIX} database")
    elif len(access) != 1 or not access[0].endswith("by * none"):
        wrong.append("olcAccess of the log database")
    rep.add(
        "audit",
        not wrong,
        f"writes under the container logged to {schema.ACCESSLOG_SUFFIX} (purge "
        f"{(_values(overlay, 'olcAccessLogPurge') or ['never'])[0]})"
        if not wrong
        else "audit trail misconfigured: " + ", ".join(wrong),
        "" if not wrong else "run `adba directory init`",
    )


# -- reading the trail -----------------------------------------------------------------------------
def _generalized(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S.0Z")


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    text = str(value)
    m = re.match(r"^(\d{14})(?:[.,](\d+))?Z$", text)
    if m:
        stamp = datetime.strptime(m.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        micro = int((m.group(2) or "0")[:6].ljust(6, "0"))
        return _iso(stamp.replace(microsecond=micro))
    return text


def _norm(dn: str) -> str:
    return ",".join(p.strip().lower() for p in dn.split(","))


def _child_of(dn: str, container: str) -> bool:
    n, c = _norm(dn), _norm(container)
    return n.endswith("," + c) and "," not in n[: -len(c) - 1].replace("\\,", "")


def _openldap(conn: ldap3.Connection, root: str, since: datetime | None) -> list[Event]:
    container = schema.container_dn(root)
    flt = "(&(objectClass=auditWriteObject)(|(reqType=add)(reqType=delete))"
    flt += f"(reqStart>={_generalized(since)}))" if since else ")"
    attrs = ["reqStart", "reqEnd", "reqType", "reqDN", "reqAuthzID", "reqSession"]
    events = []
    for entry in conn.extend.standard.paged_search(
        schema.ACCESSLOG_SUFFIX,
        flt,
        ldap3.SUBTREE,
        attributes=attrs,
        paged_size=500,
        generator=True,
    ):
        if entry.get("type") != "searchResEntry":
            continue
        raw = {k.lower(): v for k, v in entry["raw_attributes"].items()}

        def one(name: str, raw: dict[str, Any] = raw) -> str | None:
            values = raw.get(name.lower()) or []
            return values[0].decode("utf-8", "replace") if values else None

        dn = one("reqDN") or ""
        if not _child_of(dn, container):
            continue
        who = one("reqAuthzID") or ""
        events.append(
            Event(
                action="publish" if one("reqType") == "add" else "delete",
                dn=dn,
                when=_iso(one("reqStart")),
                end=_iso(one("reqEnd")) if one("reqEnd") else None,
                who=who[3:] if who.startswith("dn:") else (who or None),
                source="accesslog",
                session=one("reqSession"),
            )
        )
    result = conn.result or {}
    if result.get("result") == 32:
        raise ObjectNotFound(
            f"no audit trail here ({schema.ACCESSLOG_SUFFIX} missing or not readable by this "
            "identity: `adba directory init` configures it; the admin group reads it)",
            dn=schema.ACCESSLOG_SUFFIX,
        )
    raise_for_result(result, what=f"search {schema.ACCESSLOG_SUFFIX}")
    return events


def _owner(raw: list[bytes]) -> str | None:
    if not raw:
        return None
    from winacl.dtyp.security_descriptor import SECURITY_DESCRIPTOR

    sd = SECURITY_DESCRIPTOR.from_bytes(raw[0])
    return str(sd.Owner) if sd.Owner else None


def _ad(conn: ldap3.Connection, root: str, since: datetime | None) -> list[Event]:
    from ldap3.protocol.microsoft import security_descriptor_control

    from . import ad

    container = schema.container_dn(root)
    after = f"(whenCreated>={_generalized(since)})" if since else ""
    conn.search(
        container,
        f"(&(objectClass=msSPP-ActivationObject){after})",
        ldap3.LEVEL,
        attributes=["whenCreated", "nTSecurityDescriptor"],
        controls=list(security_descriptor_control(sdflags=0x01)),
    )
    raise_for_result(conn.result, what=f"search {container}", dn=container)
    live = [(e["dn"], e) for e in _entries(conn)]
    changed = f"(whenChanged>={_generalized(since)})" if since else ""
    conn.search(
        schema.config_dn(root),
        f"(&(isDeleted=TRUE)(objectClass=msSPP-ActivationObject){changed})",
        ldap3.SUBTREE,
        attributes=["whenChanged", "whenCreated", "lastKnownParent", "nTSecurityDescriptor"],
        controls=[(SHOW_DELETED, True, None), *security_descriptor_control(sdflags=0x01)],
    )
    raise_for_result(conn.result, what="search the deleted objects")
    # tombstones: readable by Domain Admins (as on Windows); others see none of them
    gone = [e for e in _entries(conn) if _norm(_raw(e, "lastKnownParent")) == _norm(container)]
    sids = {s for _dn, e in live if (s := _owner(e["raw_attributes"].get("nTSecurityDescriptor")))}
    sids |= {s for e in gone if (s := _owner(e["raw_attributes"].get("nTSecurityDescriptor")))}
    names = ad._names(conn, root, sids)

    def named(sid: str | None) -> str | None:
        return (names.get(sid) or ad._WELL_KNOWN.get(sid) or sid) if sid else None

    events = []
    for dn, e in live:
        sid = _owner(e["raw_attributes"].get("nTSecurityDescriptor"))
        created = _raw(e, "whenCreated")
        events.append(Event("publish", str(dn), _iso(created), named(sid), "object", owner_sid=sid))
    for e in gone:
        # a tombstone's RDN is the old one, "\\0ADEL:" and its GUID (no recycle bin needed)
        rdn = str(e["dn"]).split(",", 1)[0].split("\\0A", 1)[0]
        dn = f"{rdn},{container}"
        sid = _owner(e["raw_attributes"].get("nTSecurityDescriptor"))
        created = _raw(e, "whenCreated")
        if created and (since is None or created[:14] >= _generalized(since)[:14]):
            events.append(
                Event("publish", dn, _iso(created), named(sid), "deleted-objects", owner_sid=sid)
            )
        # AD does not record who deleted an object: who stays None
        when = _iso(_raw(e, "whenChanged"))
        events.append(Event("delete", dn, when, None, "deleted-objects", owner_sid=sid))
    return events


def _raw(entry: dict[str, Any], name: str) -> str:
    for key, values in (entry.get("raw_attributes") or {}).items():
        if key.lower() == name.lower() and values:
            return str(values[0].decode("utf-8", "replace"))
    return ""


def history(opts: ConnectionOptions, *, root: str, since: datetime | None = None) -> list[Event]:
    """Every publish and delete of an activation object the directory recorded, oldest first."""
    from . import ad

    with session(opts) as conn:
        events = (
            _ad(conn, root, since) if ad.is_active_directory(conn) else _openldap(conn, root, since)
        )
    return sorted(events, key=lambda e: (e.when, e.action != "publish", e.dn.lower()))
