"""Prepare and check an OpenLDAP server for ADBA (``adba directory init|check``).

The cn=config part goes over ldapi with SASL EXTERNAL (the uid that manages slapd's config,
usually root); the container chain is created in the data tree with an identity that may write
there (the database's root DN or an admin). Every step is idempotent: ``init`` run twice
changes nothing the second time and says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import ldap3
from ldap3.utils.conv import escape_filter_chars

from ..errors import AccessDenied, CheckFailed, DirectoryError, ObjectNotFound
from . import replication, schema
from .connection import ConnectionOptions, raise_for_result, session

__all__ = [
    "DEFAULT_LDAPI",
    "MIN_DB_MAXSIZE",
    "MIN_SOCKBUF",
    "CheckItem",
    "Report",
    "access_rules",
    "check",
    "discover_root",
    "init",
]

log = logging.getLogger(__name__)

DEFAULT_LDAPI = "ldapi://%2Fvar%2Frun%2Fslapd%2Fldapi"
#: four 5 MiB licenses in one add, plus the rest of the entry
MIN_SOCKBUF = 33554431
MIN_DB_MAXSIZE = 4 * 1024**3
INDEX = "msSPP-KMSIds eq"
_PREFIX = re.compile(r"^\{\d+\}")


@dataclass
class CheckItem:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: not checked (``detail`` says why); counts as ok
    skipped: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
            "skipped": self.skipped,
        }


@dataclass
class Report:
    """What ``init`` did or what ``check`` found, step by step."""

    root: str
    container: str
    items: list[CheckItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.items)

    def add(self, name: str, ok: bool, detail: str, fix: str = "", skipped: bool = False) -> None:
        self.items.append(CheckItem(name, ok, detail, fix, skipped))
        log.info("%s: %s", name, detail)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "root": self.root,
            "container": self.container,
            "items": [i.to_dict() for i in self.items],
        }


def _first(
    conn: ldap3.Connection, base: str, flt: str, scope: str, attrs: list[str]
) -> dict | None:  # type: ignore[type-arg]
    conn.search(base, flt, scope, attributes=attrs)
    if conn.result["result"] == 32:
        return None
    raise_for_result(conn.result, what=f"search {base}")
    for entry in conn.response or []:
        if entry.get("type") == "searchResEntry":
            return dict(entry)
    return None


def discover_root(opts: ConnectionOptions) -> str:
    """The forest root from the root DSE, by the agent's own rule (:func:`store.read_forest_root`:
    AD's rootDomainNamingContext, else the one naming context an OpenLDAP server announces)."""
    from .store import read_forest_root

    with session(opts) as conn:
        return read_forest_root(conn)


def _database(conn: ldap3.Connection, root: str) -> dict:  # type: ignore[type-arg]
    flt = f"(olcSuffix={escape_filter_chars(root)})"
    conn.search(
        "cn=config",
        flt,
        ldap3.LEVEL,
        attributes=[
            "olcAccess",
            "olcDbIndex",
            "olcDbMaxSize",
            "olcLimits",
            "olcSizeLimit",
            "olcRootDN",
        ],
    )
    if conn.result["result"] in (32, 50) or (conn.result["result"] == 0 and not conn.response):
        if conn.result["result"] == 0:
            raise ObjectNotFound(f"no database with suffix {root} in cn=config")
        raise AccessDenied(
            "cn=config is not readable with this identity: run as the user that manages "
            "slapd's configuration (usually root) over ldapi"
        )
    raise_for_result(conn.result, what="search cn=config")
    return dict(conn.response[0])


def load_schema(conn: ldap3.Connection) -> bool:
    """Load the msSPP schema into cn=config unless it is there; whether it was loaded."""
    if _schema_dn(conn) is not None:
        return False
    conn.add(
        f"cn={schema.SCHEMA_CN},cn=schema,cn=config",
        attributes={
            "objectClass": ["olcSchemaConfig"],
            "cn": schema.SCHEMA_CN,
            "olcAttributeTypes": [a.definition() for a in schema.ATTRIBUTES],
            "olcObjectClasses": [c.definition() for c in schema.CLASSES],
            "olcDitContentRules": [schema.CONTENT_RULE],
        },
    )
    raise_for_result(conn.result, what="load the msSPP schema")
    return True


def _schema_dn(conn: ldap3.Connection) -> str | None:
    conn.search(
        "cn=schema,cn=config", "(objectClass=olcSchemaConfig)", ldap3.LEVEL, attributes=["cn"]
    )
    raise_for_result(conn.result, what="search cn=schema,cn=config")
    for entry in conn.response:
        if _PREFIX.sub("", entry["dn"].split(",")[0].split("=", 1)[1]) == schema.SCHEMA_CN:
            return str(entry["dn"])
    return None


def _strip(values: list[str]) -> list[str]:
    return [_PREFIX.sub("", v) for v in values]


def _is_adba_rule(rule: str, root: str) -> bool:
    low = rule.lower()
    return (
        f'"{schema.config_dn(root).lower()}"' in low
        or f'"{schema.container_dn(root).lower()}"' in low
    )


def _int(values: object) -> int:
    if isinstance(values, list):
        values = values[0] if values else 0
    try:
        return int(str(values or 0))
    except ValueError:
        return 0


def _norm_limit(rule: str) -> str:
    return " ".join(rule.lower().split())


def _has_limits(current: list[str], wanted: list[str]) -> bool:
    have = {_norm_limit(r) for r in current}
    return all(_norm_limit(r) in have for r in wanted)


def _is_adba_limit(rule: str, admin_group: str, computers: str) -> bool:
    low = rule.lower()
    return f'"{admin_group.lower()}"' in low or f'"{computers.lower()}"' in low


def _count_objects(conn: ldap3.Connection, container: str) -> tuple[int, bool]:
    """(activation objects this identity can page through, whether a size limit stopped it)."""
    from .store import object_filter, pages

    count = 0
    for entries, limited in pages(conn, container, object_filter(), ["1.1"], page_size=500):
        count += len(entries)
        if limited:
            return count, True
    return count, False


def access_rules(conn: ldap3.Connection, root: str) -> list[str]:
    """The database's olcAccess rules, in order, with their {n} index."""
    return [str(r) for r in _database(conn, root)["attributes"].get("olcAccess", [])]


def init(
    config: ConnectionOptions,
    data: ConnectionOptions,
    *,
    root: str,
    admin_group: str,
    computers: str,
    progress: Callable[[str], None] | None = None,
    audit: bool = True,
) -> Report:
    """Load the schema, index, limits and ACLs into cn=config, the audit trail (unless
    ``audit`` is False), then create the container chain."""
    say = progress or (lambda _msg: None)
    report = Report(root, schema.container_dn(root))
    say("names")
    with session(data) as conn:  # nothing is changed for a group or subtree that is not there
        for what, dn in (("--admin-group", admin_group), ("--computers", computers)):
            if _first(conn, dn, "(objectClass=*)", ldap3.BASE, ["1.1"]) is None:
                raise ObjectNotFound(
                    f"{what} {dn}: no such entry (or not visible to "
                    f"{data.bind_dn or 'this identity'}); nothing was changed",
                    dn=dn,
                )
    with session(config) as conn:
        db = _database(conn, root)
        db_dn = db["dn"]
        attrs = db["attributes"]

        say("schema")
        if load_schema(conn):
            report.add("schema", True, "msSPP schema loaded")
        else:
            report.add("schema", True, "msSPP schema already loaded")

        say("index")
        if any(v.split()[0] == "msSPP-KMSIds" for v in attrs.get("olcDbIndex", [])):
            report.add("index", True, "msSPP-KMSIds equality index already present")
        else:
            conn.modify(db_dn, {"olcDbIndex": [(ldap3.MODIFY_ADD, [INDEX])]})
            raise_for_result(conn.result, what="add the msSPP-KMSIds index")
            report.add("index", True, "msSPP-KMSIds equality index added")

        say("limits")
        changed = []
        if _int(attrs.get("olcDbMaxSize")) < MIN_DB_MAXSIZE:
            conn.modify(db_dn, {"olcDbMaxSize": [(ldap3.MODIFY_REPLACE, [str(MIN_DB_MAXSIZE)])]})
            raise_for_result(conn.result, what="raise olcDbMaxSize")
            changed.append(f"olcDbMaxSize={MIN_DB_MAXSIZE}")
        glob = _first(
            conn, "cn=config", "(objectClass=*)", ldap3.BASE, ["olcSockbufMaxIncomingAuth"]
        )
        current = _int((glob or {}).get("attributes", {}).get("olcSockbufMaxIncomingAuth"))
        if current < MIN_SOCKBUF:
            conn.modify(
                "cn=config",
                {"olcSockbufMaxIncomingAuth": [(ldap3.MODIFY_REPLACE, [str(MIN_SOCKBUF)])]},
            )
            raise_for_result(conn.result, what="raise olcSockbufMaxIncomingAuth")
            changed.append(f"olcSockbufMaxIncomingAuth={MIN_SOCKBUF}")
        wanted_limits = schema.limit_rules(admin_group, computers)
        current_limits = _strip(list(attrs.get("olcLimits", [])))
        if _has_limits(current_limits, wanted_limits):
            pass
        else:
            others = [
                r
                for r in current_limits
                if r not in wanted_limits and not _is_adba_limit(r, admin_group, computers)
            ]
            values = [f"{{{i}}}{r}" for i, r in enumerate(wanted_limits + others)]
            conn.modify(db_dn, {"olcLimits": [(ldap3.MODIFY_REPLACE, values)]})
            raise_for_result(conn.result, what="set olcLimits for the admin group and computers")
            changed.append("olcLimits (paged searches of the container need no size limit)")
        report.add(
            "limits",
            True,
            "raised " + ", ".join(changed) if changed else "size limits already raised",
        )

        say("acl")
        wanted = schema.acl_rules(root, admin_group, computers)
        # the replication identity's rules stay in front of ADBA's (else replicas lack licenses)
        lead, current_rules = replication.split_rules(_strip(list(attrs.get("olcAccess", []))))
        if current_rules[: len(wanted)] == wanted:
            report.add("acl", True, "ADBA access rules already in place")
        else:
            others = [r for r in current_rules if not _is_adba_rule(r, root)]
            values = [f"{{{i}}}{r}" for i, r in enumerate(lead + wanted + others)]
            conn.modify(db_dn, {"olcAccess": [(ldap3.MODIFY_REPLACE, values)]})
            raise_for_result(conn.result, what="install the ADBA access rules")
            report.add(
                "acl", True, f"ADBA access rules installed for {admin_group} and {computers}"
            )
        say("audit")
        from . import audit as trail

        if audit:
            root_dns = attrs.get("olcRootDN") or []
            root_dn = str(root_dns[0] if isinstance(root_dns, list) else root_dns) or None
            report.add(
                "audit",
                True,
                trail.configure(conn, db_dn, root=root, root_dn=root_dn, admin_group=admin_group),
            )
        else:
            report.add("audit", True, "not configured (--no-audit)", skipped=True)
        shadow = replication.shadow_of(conn, db_dn)

    if shadow is not None:  # a read-only consumer: the data tree is the providers' to write
        report.add("container", True, f"left to the provider ({', '.join(shadow)}): replicated")
        return report
    say("container")
    with session(data) as conn:
        dn = root
        created = []
        for rdn in schema.CONTAINER_RDNS:
            dn = f"{rdn},{dn}"
            cls = (
                "msSPP-ActivationObjectsContainer"
                if rdn == schema.CONTAINER_RDNS[-1]
                else "container"
            )
            conn.add(dn, attributes={"objectClass": [cls], "cn": rdn.split("=", 1)[1]})
            if conn.result["result"] == 68:
                continue
            raise_for_result(conn.result, what=f"create {dn}", dn=dn)
            created.append(rdn)
        report.add(
            "container",
            True,
            f"created {', '.join(created)}" if created else "container chain already present",
        )
    return report


def check(
    data: ConnectionOptions,
    *,
    root: str,
    config: ConnectionOptions | None = None,
    admin_group: str | None = None,
    computers: str | None = None,
) -> Report:
    """Report what is missing or wrong; raise :class:`CheckFailed` (with the report) if any."""
    report = Report(root, schema.container_dn(root))
    fix_init = "run `adba directory init`"
    with session(data) as conn:
        sub = _first(
            conn,
            "cn=Subschema",
            "(objectClass=subschema)",
            ldap3.BASE,
            ["attributeTypes", "objectClasses", "dITContentRules"],
        )
        defs = " ".join(
            str(v)
            for values in (sub or {}).get("attributes", {}).values()
            for v in (values if isinstance(values, list) else [values])
        )
        missing = [a.name for a in schema.ATTRIBUTES if f"NAME '{a.name}'" not in defs]
        missing += [c.name for c in schema.CLASSES if f"NAME '{c.name}'" not in defs]
        report.add(
            "schema",
            not missing,
            "msSPP attributes and classes present"
            if not missing
            else "missing: " + ", ".join(missing),
            "" if not missing else fix_init,
        )
        rule = "msSPP-ActivationObjectContentRule" in defs
        report.add(
            "content-rule",
            rule,
            "auxiliary classes forbidden on activation objects"
            if rule
            else "no DIT content rule: admins could create bindable activation objects",
            "" if rule else fix_init,
        )
        entry = _first(conn, report.container, "(objectClass=*)", ldap3.BASE, ["objectClass"])
        classes = [c.lower() for c in (entry or {}).get("attributes", {}).get("objectClass", [])]
        present = "msspp-activationobjectscontainer" in classes
        report.add(
            "container",
            present,
            f"{report.container} present"
            if present
            else f"{report.container} missing or not readable",
            "" if present else fix_init + " (or bind as an identity that may read it)",
        )
        if present:
            count, limited = _count_objects(conn, report.container)
            report.add(
                "objects",
                not limited,
                f"{count} activation objects"
                if not limited
                else f"the size limit stopped a paged search at {count} objects: the agent "
                "would not see every object",
                "" if not limited else fix_init + " (it sets olcLimits)",
            )

    if config is not None:
        try:
            with session(config) as conn:
                db = _database(conn, root)
                attrs = db["attributes"]
                idx = any(v.split()[0] == "msSPP-KMSIds" for v in attrs.get("olcDbIndex", []))
                report.add(
                    "index",
                    idx,
                    "msSPP-KMSIds equality index present" if idx else "msSPP-KMSIds is not indexed",
                    "" if idx else fix_init,
                )
                glob = _first(
                    conn, "cn=config", "(objectClass=*)", ldap3.BASE, ["olcSockbufMaxIncomingAuth"]
                )
                sockbuf = _int((glob or {}).get("attributes", {}).get("olcSockbufMaxIncomingAuth"))
                maxsize = _int(attrs.get("olcDbMaxSize"))
                limits = sockbuf >= MIN_SOCKBUF and maxsize >= MIN_DB_MAXSIZE
                report.add(
                    "limits",
                    limits,
                    f"olcSockbufMaxIncomingAuth={sockbuf or 'default'}, olcDbMaxSize={maxsize or 'default'}",
                    "" if limits else fix_init + " (5 MiB licenses need raised limits)",
                )
                limit_values = _strip(list(attrs.get("olcLimits", [])))
                size_limit = _int(attrs.get("olcSizeLimit")) or 500
                counted = next((i for i in report.items if i.name == "objects"), None)
                if admin_group and computers:
                    paged = all(
                        r in limit_values for r in schema.limit_rules(admin_group, computers)
                    )
                else:
                    paged = any("size.prtotal=unlimited" in r for r in limit_values)
                if paged:
                    detail = "olcLimits let the computers and admins page through every object"
                else:
                    detail = (
                        "no olcLimits for the computers and admins: a search stops at "
                        f"{size_limit} objects"
                    )
                report.add(
                    "size-limits",
                    paged,
                    detail + (f" ({counted.detail})" if counted else ""),
                    "" if paged else fix_init,
                )
                rules = replication.split_rules(_strip(list(attrs.get("olcAccess", []))))[1]
                if admin_group and computers:
                    wanted = schema.acl_rules(root, admin_group, computers)
                    acl_ok = rules[: len(wanted)] == wanted
                    detail = (
                        "ADBA access rules first"
                        if acl_ok
                        else "ADBA access rules missing or not first"
                    )
                else:
                    acl_ok = any(_is_adba_rule(r, root) for r in rules)
                    detail = "ADBA access rules present" if acl_ok else "no ADBA access rules"
                report.add("acl", acl_ok, detail, "" if acl_ok else fix_init)
                from . import audit as trail

                trail.report(report, conn, db["dn"], root=root)
            replication.report(report, config, data, root=root)
        except DirectoryError as exc:
            report.add(
                "config", False, f"cn=config not checked: {exc.message}", "run as root over ldapi"
            )
    else:
        for name in ("index", "limits", "size-limits", "acl", "audit"):
            report.add(
                name,
                True,
                "skipped: it is in slapd's cn=config, which needs --config-uri (ldapi, as the "
                "user that manages slapd, usually root)",
                skipped=True,
            )
    if not report.ok:
        raise CheckFailed(
            "directory not ready for ADBA: "
            + "; ".join(i.detail for i in report.items if not i.ok),
            report=report,
        )
    return report
