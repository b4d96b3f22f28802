"""Replication of an OpenLDAP directory: multi-provider groups and read-only consumers.

``adba directory replicate`` configures one server at a time, over ldapi as the uid that
manages cn=config (like ``init``), and is idempotent: run twice, it changes nothing the second
time. What it sets up, per server:

* a dedicated replication identity (never the root DN) that may read the whole suffix --
  license attributes included -- and write nothing: two olcAccess rules placed *before*
  ADBA's own rules (``init`` keeps them there), and an olcLimits entry lifting the size and
  time limits for it (a refresh of more than 500 entries must not be cut);
* providers: the ``syncprov`` module and overlay, a unique ``olcServerID``, one
  ``olcSyncrepl`` per peer and ``olcMultiProvider: TRUE``, set in one modification so the
  database is never a read-only shadow in between;
* consumers: one ``olcSyncrepl`` per provider and an ``olcUpdateRef``.

Every ``olcSyncrepl`` is ``type=refreshAndPersist`` with a retry schedule, binds with the
replication identity inside TLS (``ldaps://``, or ``starttls=critical`` on ``ldap://``) and
checks the peer's certificate (``tls_reqcert=demand`` against ``tls_cacert``).

The identity's entry is created on the server that holds the tree. A server that joins with an
empty database receives it (and everything else) from its peers; one whose tree differs from a
peer's (another entryUUID for the suffix) is refused: two trees cannot be merged.

:func:`report` adds what ``directory check`` says about replication; :func:`shadow_of` and
:func:`split_rules` are the two hooks ``init`` uses.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ldap3
from ldap3.utils.conv import escape_filter_chars

from ..errors import AdbaError, DirectoryError, InvalidInput, ObjectNotFound
from . import schema
from .connection import ConnectionOptions, raise_for_result, session

__all__ = [
    "CONSUMER",
    "DEFAULT_RETRY",
    "PROVIDER",
    "Replication",
    "parse_csn",
    "parse_syncrepl",
    "replicate",
    "replicator_rules",
    "report",
    "shadow_of",
    "split_rules",
]

log = logging.getLogger(__name__)

PROVIDER = "provider"
CONSUMER = "consumer"
#: 10 tries 5 s apart, then one a minute, for ever
DEFAULT_RETRY = "5 10 60 +"
#: how long ``check`` lets replication settle before it calls a server behind
SETTLE_SECONDS = 3.0
_PREFIX = re.compile(r"^\{-?\d+\}")
_KV = re.compile(r'([A-Za-z_-]+)=(?:"((?:[^"\\]|\\.)*)"|(\S+))')
_RETRY = re.compile(r"^(\d+ (\d+|\+))( \d+ (\d+|\+))*$")
_RULES = (
    re.compile(r'^to dn\.base="[^"]+" attrs=userPassword by anonymous auth by \* break$', re.I),
    re.compile(r'^to \* by dn\.exact="[^"]+" read by \* break$', re.I),
)
_LIMITS = "time.soft=unlimited time.hard=unlimited size.soft=unlimited size.hard=unlimited"


@dataclass(eq=False, repr=False)
class Replication:
    """What one server should replicate with, and as whom."""

    role: str
    #: provider: the other providers; consumer: the providers it reads from
    peers: tuple[str, ...]
    replicator_dn: str
    replicator_password: str
    #: CA file *as slapd sees it*, which it checks its peers' certificates with
    peer_ca_file: str
    server_id: int | None = None
    retry: str = DEFAULT_RETRY
    #: consumer: where writes are referred (default: the first provider)
    update_ref: str | None = None
    timeout: int = 5

    def __repr__(self) -> str:  # never the password
        return f"Replication({self.role}, peers={self.peers!r}, as {self.replicator_dn})"

    def validate(self, root: str) -> None:
        from .store import validate_dn

        if self.role not in (PROVIDER, CONSUMER):
            raise InvalidInput(f"role must be {PROVIDER} or {CONSUMER}, not {self.role!r}")
        if not self.peers:
            raise InvalidInput("give at least one --peer URI (a provider to replicate with)")
        for uri in (*self.peers, *([self.update_ref] if self.update_ref else [])):
            scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
            if scheme not in ("ldap", "ldaps") or any(c in uri for c in ' "\\'):
                raise InvalidInput(f"peer {uri!r} is not an ldaps:// or ldap:// URI")
        if len({p.lower() for p in self.peers}) != len(self.peers):
            raise InvalidInput("the same peer is given twice")
        if self.role == PROVIDER and (self.server_id is None or not 1 <= self.server_id <= 4095):
            raise InvalidInput("a provider needs --server-id N, unique in the group (1-4095)")
        parts = validate_dn(self.replicator_dn)
        if parts[0][0].lower() not in ("cn", "uid"):
            raise InvalidInput(f"the replication identity's RDN must be cn= or uid=: {parts[0]}")
        if not _norm(self.replicator_dn).endswith("," + _norm(root)):
            raise InvalidInput(f"the replication identity must be under {root}")
        if any(c in self.replicator_password for c in '"\\\n\r') or not self.replicator_password:
            raise InvalidInput(
                'the replication password must not be empty or hold " \\ or newlines'
            )
        if not _RETRY.match(self.retry):
            raise InvalidInput(f"retry schedule {self.retry!r} is not like '5 10 60 +'")
        if not Path(self.peer_ca_file).is_file():
            raise InvalidInput(f"CA file {self.peer_ca_file} does not exist")


def _norm(dn: str) -> str:
    return ",".join(part.strip() for part in dn.lower().split(","))


def replicator_rules(dn: str) -> list[str]:
    """The olcAccess rules for the replication identity, placed before every other rule: it
    reads everything (``read`` stops evaluation: it can write nothing), everyone else goes on
    to the next rules; anonymous may authenticate as it."""
    return [
        f'to dn.base="{dn}" attrs=userPassword by anonymous auth by * break',
        f'to * by dn.exact="{dn}" read by * break',
    ]


def split_rules(rules: list[str]) -> tuple[list[str], list[str]]:
    """(the replication rules, the others), both in order; ``init`` keeps the first first."""
    lead = [r for r in rules if any(p.match(r) for p in _RULES)]
    return lead, [r for r in rules if r not in lead]


def parse_syncrepl(value: str) -> dict[str, str]:
    """``rid=001 provider=ldaps://... binddn="..."`` as a dict (keys lower-case)."""
    text = _PREFIX.sub("", value)
    return {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _KV.finditer(text)
    }


def _syncrepl(rid: int, peer: str, want: Replication, root: str) -> str:
    parts = [
        f"rid={rid:03d}",
        f"provider={peer}",
        "bindmethod=simple",
        f'binddn="{want.replicator_dn}"',
        f'credentials="{want.replicator_password}"',
        f'searchbase="{root}"',
        "type=refreshAndPersist",
        f'retry="{want.retry}"',
        f"timeout={want.timeout}",
        f"network-timeout={want.timeout}",
        "keepalive=240:10:30",
        f'tls_cacert="{want.peer_ca_file}"',
        "tls_reqcert=demand",
    ]
    if peer.lower().startswith("ldap://"):
        parts.append("starttls=critical")
    return " ".join(parts)


def _same_syncrepl(current: dict[str, str], wanted: dict[str, str]) -> bool:
    dns = ("binddn", "searchbase")
    for key, value in wanted.items():
        have = current.get(key, "")
        if key in dns:
            if _norm(have) != _norm(value):
                return False
        elif key == "rid":
            if int(have or -1) != int(value):
                return False
        elif have != value:
            return False
    return len([k for k in current if k == "starttls"]) == len(
        [k for k in wanted if k == "starttls"]
    )


def _values(entry: dict[str, Any], name: str) -> list[str]:
    attrs = entry.get("attributes", {})
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return [str(v) for v in (values if isinstance(values, list) else [values])]
    return []


def _database(conn: ldap3.Connection, root: str) -> dict[str, Any]:
    flt = f"(olcSuffix={escape_filter_chars(root)})"
    attrs = ["olcAccess", "olcLimits", "olcSyncrepl", "olcMultiProvider", "olcUpdateRef"]
    conn.search("cn=config", flt, ldap3.LEVEL, attributes=attrs)
    if conn.result["result"] == 0 and not conn.response:
        raise ObjectNotFound(f"no database with suffix {root} in cn=config")
    raise_for_result(conn.result, what="search cn=config")
    return dict(conn.response[0])


def shadow_of(conn: ldap3.Connection, db_dn: str) -> list[str] | None:
    """For ``init``: where a read-only consumer sends writes (its update referral, else its
    providers), or None when the database takes writes itself."""
    conn.search(
        db_dn,
        "(objectClass=*)",
        ldap3.BASE,
        attributes=["olcSyncrepl", "olcMultiProvider", "olcUpdateRef"],
    )
    raise_for_result(conn.result, what=f"read {db_dn}")
    entry = dict(conn.response[0]) if conn.response else {}
    syncrepl = _values(entry, "olcSyncrepl")
    if not syncrepl or [v.upper() for v in _values(entry, "olcMultiProvider")] == ["TRUE"]:
        return None
    return _values(entry, "olcUpdateRef") or [
        parse_syncrepl(v).get("provider", "") for v in syncrepl
    ]


def _ssha(password: str) -> str:
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # slapd's {SSHA}
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _suffix_uuid(opts: ConnectionOptions, root: str) -> str | None:
    with session(opts) as conn:
        conn.search(root, "(objectClass=*)", ldap3.BASE, attributes=["entryUUID"])
        if conn.result["result"] in (32, 50):
            return None
        raise_for_result(conn.result, what=f"read {root}")
        for entry in conn.response or []:
            if entry.get("type") == "searchResEntry":
                values = _values(dict(entry), "entryUUID")
                return values[0].lower() if values else None
    return None


def _as_replicator(uri: str, want: Replication, data: ConnectionOptions) -> ConnectionOptions:
    return ConnectionOptions(
        uri=uri,
        bind_dn=want.replicator_dn,
        password=want.replicator_password,
        ca_file=want.peer_ca_file,
        connect_timeout=data.connect_timeout,
        receive_timeout=data.receive_timeout,
    )


def _local(data: ConnectionOptions, dn: str, password: str) -> ConnectionOptions:
    """This server, as the replication identity, under the TLS rules of ``data``."""
    return ConnectionOptions(
        uri=data.uri,
        bind_dn=dn,
        password=password,
        ca_file=data.ca_file,
        insecure=data.insecure,
        tls_name=data.tls_name,
        connect_timeout=data.connect_timeout,
        receive_timeout=data.receive_timeout,
    )


def _same_tree(data: ConnectionOptions, root: str, want: Replication) -> str:
    """Refuse to join peers whose tree is another one (another entryUUID for the suffix)."""
    mine = _suffix_uuid(data, root)
    if mine is None:
        return "this server's database is empty: it receives the tree from its peers"
    for peer in want.peers:
        try:
            theirs = _suffix_uuid(_as_replicator(peer, want, data), root)
        except AdbaError as exc:  # a peer not set up yet, or down: the retry schedule copes
            log.info("peer %s not compared: %s", peer, exc.message)
            continue
        if theirs is not None and theirs != mine:
            raise DirectoryError(
                f"{peer} holds another tree under {root} (entryUUID {theirs}, here {mine}): "
                "trees cannot be merged; a server joins a replication group with an empty "
                "database",
                uri=peer,
            )
    return "this server holds the tree (no peer holds a different one)"


def replicate(
    config: ConnectionOptions,
    data: ConnectionOptions,
    *,
    root: str,
    want: Replication,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Configure this server as a provider of a multi-provider group, or as a consumer."""
    from .openldap import Report

    say = progress or (lambda _msg: None)
    want.validate(root)
    report = Report(root, schema.container_dn(root))
    provider = want.role == PROVIDER
    with session(config) as conn:
        db = _database(conn, root)
        db_dn = str(db["dn"])
        shadow = shadow_of(conn, db_dn)
        if provider and shadow is not None:
            raise InvalidInput(f"{data.uri} is a read-only consumer: it cannot become a provider")
        glob = _first(conn, "cn=config", ["olcServerID"])
        ids = [_PREFIX.sub("", v).split()[0] for v in _values(glob, "olcServerID")]
        if provider and ids and [int(i, 0) for i in ids] != [want.server_id]:
            raise InvalidInput(
                f"this server already has server ID {', '.join(ids)}, not {want.server_id}: "
                "server IDs never change once set"
            )

    say("tree")
    report.add("tree", True, _same_tree(data, root, want))

    with session(config) as conn:
        if provider:
            say("syncprov")
            report.add("syncprov", True, _module(conn))
            if not ids:
                conn.modify(
                    "cn=config", {"olcServerID": [(ldap3.MODIFY_ADD, [str(want.server_id)])]}
                )
                raise_for_result(conn.result, what="set olcServerID")
                report.add("server-id", True, f"server ID {want.server_id} set")
            else:
                report.add("server-id", True, f"server ID {want.server_id} already set")
            report.add("overlay", True, _overlay(conn, db_dn))

        say("schema")
        report.add("schema", True, _schema(conn, db_dn))
        say("identity")
        report.add("limits", True, _limits(conn, db_dn, db, want.replicator_dn))
        report.add("access", True, _access(conn, db_dn, db, want.replicator_dn))

    report.add("identity", True, _identity(data, root, want, consumer=not provider))

    say("syncrepl")
    with session(config) as conn:
        report.add("syncrepl", True, _syncrepls(conn, db_dn, db, want, root))
    return report


def _first(conn: ldap3.Connection, dn: str, attrs: list[str]) -> dict[str, Any]:
    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=attrs)
    raise_for_result(conn.result, what=f"read {dn}")
    return dict(conn.response[0]) if conn.response else {}


def _schema(conn: ldap3.Connection, db_dn: str) -> str:
    """A replica stores what its peers send only with the msSPP schema and a database large
    enough for 5 MiB licenses: load and raise them before the first syncrepl (``init``, run
    afterwards, finds them done and does the rest)."""
    from . import openldap

    done = []
    if openldap.load_schema(conn):
        done.append("msSPP schema loaded")
    size = _first(conn, db_dn, ["olcDbMaxSize"])
    if openldap._int(_values(size, "olcDbMaxSize")) < openldap.MIN_DB_MAXSIZE:
        conn.modify(
            db_dn, {"olcDbMaxSize": [(ldap3.MODIFY_REPLACE, [str(openldap.MIN_DB_MAXSIZE)])]}
        )
        raise_for_result(conn.result, what="raise olcDbMaxSize")
        done.append(f"olcDbMaxSize={openldap.MIN_DB_MAXSIZE}")
    return ", ".join(done) if done else "msSPP schema and database size already ready for replicas"


def _module(conn: ldap3.Connection) -> str:
    conn.search(
        "cn=config", "(objectClass=olcModuleList)", ldap3.LEVEL, attributes=["olcModuleLoad"]
    )
    raise_for_result(conn.result, what="search the module lists")
    lists = [dict(e) for e in conn.response or [] if e.get("type") == "searchResEntry"]
    for entry in lists:
        if any("syncprov" in v.lower() for v in _values(entry, "olcModuleLoad")):
            return "syncprov module already loaded"
    if lists:
        conn.modify(str(lists[0]["dn"]), {"olcModuleLoad": [(ldap3.MODIFY_ADD, ["syncprov"])]})
    else:
        conn.add(
            "cn=module,cn=config",
            attributes={
                "objectClass": ["olcModuleList"],
                "cn": "module",
                "olcModuleLoad": "syncprov",
            },
        )
    raise_for_result(conn.result, what="load the syncprov module")
    return "syncprov module loaded"


def _overlay(conn: ldap3.Connection, db_dn: str) -> str:
    conn.search(db_dn, "(objectClass=olcSyncProvConfig)", ldap3.LEVEL, attributes=["olcOverlay"])
    raise_for_result(conn.result, what=f"search the overlays of {db_dn}")
    if any(e.get("type") == "searchResEntry" for e in conn.response or []):
        return "syncprov overlay already on the database"
    conn.add(
        f"olcOverlay=syncprov,{db_dn}",
        attributes={
            "objectClass": ["olcOverlayConfig", "olcSyncProvConfig"],
            "olcOverlay": "syncprov",
            "olcSpCheckpoint": "100 10",
        },
    )
    raise_for_result(conn.result, what="add the syncprov overlay")
    return "syncprov overlay added to the database"


def _limits(conn: ldap3.Connection, db_dn: str, db: dict[str, Any], dn: str) -> str:
    wanted = f'dn.exact="{dn}" {_LIMITS}'
    values = _values(db, "olcLimits")
    mine = [v for v in values if _PREFIX.sub("", v).lower().startswith(f'dn.exact="{dn.lower()}"')]
    if any(" ".join(_PREFIX.sub("", v).split()).lower() == wanted.lower() for v in mine):
        return f"no size or time limit for {dn} already"
    changes: list[tuple[Any, list[str]]] = []
    if mine:
        changes.append((ldap3.MODIFY_DELETE, mine))
    changes.append((ldap3.MODIFY_ADD, [wanted]))
    conn.modify(db_dn, {"olcLimits": changes})
    raise_for_result(conn.result, what="lift the limits for the replication identity")
    return f"no size or time limit for {dn}"


def _access(conn: ldap3.Connection, db_dn: str, db: dict[str, Any], dn: str) -> str:
    rules = [_PREFIX.sub("", v) for v in _values(db, "olcAccess")]
    wanted = replicator_rules(dn)
    if [r.lower() for r in rules[:2]] == [r.lower() for r in wanted]:
        return f"{dn} reads the whole suffix, writes nothing (first access rules already)"
    _lead, others = split_rules(rules)
    values = [f"{{{i}}}{r}" for i, r in enumerate(wanted + others)]
    conn.modify(db_dn, {"olcAccess": [(ldap3.MODIFY_REPLACE, values)]})
    raise_for_result(conn.result, what="install the replication access rules")
    return f"{dn} reads the whole suffix, writes nothing (first access rules)"


def _identity(data: ConnectionOptions, root: str, want: Replication, *, consumer: bool) -> str:
    dn = want.replicator_dn
    if consumer:
        return f"{dn} comes from the providers"
    rdn_attr, rdn_value = dn.split(",", 1)[0].split("=", 1)
    cls = "applicationProcess" if rdn_attr.strip().lower() == "cn" else "account"
    with session(data) as conn:
        conn.add(
            dn,
            attributes={
                "objectClass": [cls, "simpleSecurityObject"],
                rdn_attr.strip(): rdn_value.strip(),
                "description": "ADBA replication identity: reads the suffix, writes nothing",
                "userPassword": _ssha(want.replicator_password),
            },
        )
        code = conn.result["result"]
        if code == 32 and _suffix_uuid(data, root) is None:
            return f"{dn} comes from the peers with the tree (empty database here)"
        if code not in (0, 68):
            raise_for_result(conn.result, what=f"create {dn}", dn=dn)
    try:  # it exists: the password given must be its password
        with session(_local(data, want.replicator_dn, want.replicator_password)):
            pass
    except AdbaError as exc:
        raise InvalidInput(
            f"{dn} exists but does not bind with the password given ({exc.message})"
        ) from exc
    return f"{dn} created" if code == 0 else f"{dn} already present"


def _syncrepls(
    conn: ldap3.Connection, db_dn: str, db: dict[str, Any], want: Replication, root: str
) -> str:
    current = {
        parse_syncrepl(v).get("provider", "").lower(): parse_syncrepl(v)
        for v in _values(db, "olcSyncrepl")
    }
    used = {int(p["rid"]) for p in current.values() if p.get("rid", "").isdigit()}
    values, changed = [], False
    for peer in want.peers:
        have = current.pop(peer.lower(), None)
        if have is not None and have.get("rid", "").isdigit():
            rid = int(have["rid"])
        else:
            rid = min(set(range(1, 1000)) - used)
            used.add(rid)
        value = _syncrepl(rid, peer, want, root)
        changed = changed or have is None or not _same_syncrepl(have, parse_syncrepl(value))
        values.append(value)
    changed = changed or bool(current)  # a peer that is no longer one
    mods: dict[str, list[tuple[Any, list[str]]]] = {}
    if changed:
        mods["olcSyncrepl"] = [(ldap3.MODIFY_REPLACE, values)]
    done = []
    if want.role == PROVIDER:
        if [v.upper() for v in _values(db, "olcMultiProvider")] != ["TRUE"]:
            mods["olcMultiProvider"] = [(ldap3.MODIFY_REPLACE, ["TRUE"])]
            done.append("multi-provider on")
    else:
        ref = want.update_ref or want.peers[0]
        if _values(db, "olcUpdateRef") != [ref]:
            mods["olcUpdateRef"] = [(ldap3.MODIFY_REPLACE, [ref])]
            done.append(f"writes referred to {ref}")
    peers = ", ".join(want.peers)
    if not mods:
        return f"replicating with {peers} already"
    conn.modify(db_dn, mods)
    raise_for_result(conn.result, what="configure syncrepl")
    return f"replicating with {peers}" + (f" ({', '.join(done)})" if done else "")


# -- directory check ---------------------------------------------------------------------------
def parse_csn(csn: str) -> tuple[int, float]:
    """(server ID, time) of a CSN such as ``20260921120000.123456Z#000000#001#000000``."""
    try:
        stamp, _count, sid, _mod = csn.split("#")
        when = datetime.strptime(stamp, "%Y%m%d%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()
        return int(sid, 16), when
    except ValueError as exc:
        raise DirectoryError(f"malformed contextCSN {csn!r}") from exc


def _context_csns(opts: ConnectionOptions, root: str) -> dict[int, str]:
    """The newest CSN of each server ID this server has seen (its contextCSN values)."""
    with session(opts) as conn:
        conn.search(root, "(objectClass=*)", ldap3.BASE, attributes=["contextCSN"])
        if conn.result["result"] == 32:
            return {}
        raise_for_result(conn.result, what=f"read the contextCSN of {root}")
        entries = [dict(e) for e in conn.response or [] if e.get("type") == "searchResEntry"]
    out: dict[int, str] = {}
    for csn in _values(entries[0], "contextCSN") if entries else []:
        sid, _when = parse_csn(csn)
        out[sid] = max(out.get(sid, ""), csn)
    return out


def _behind(csns: dict[str, dict[int, str]]) -> list[str]:
    """What each server lacks, against the newest change any of them has per server ID."""
    newest: dict[int, str] = {}
    for seen in csns.values():
        for sid, csn in seen.items():
            newest[sid] = max(newest.get(sid, ""), csn)
    out = []
    for label, seen in csns.items():
        lags = []
        for sid, csn in sorted(newest.items()):
            have = seen.get(sid)
            if have == csn:
                continue
            if have is None:
                lags.append(f"nothing yet from server ID {sid}")
            else:
                lag = parse_csn(csn)[1] - parse_csn(have)[1]
                lags.append(f"{lag:.3f} s behind server ID {sid}")
        if lags:
            out.append(f"{label} is {'; '.join(lags)}")
    return out


def _visible(opts: ConnectionOptions, container: str) -> set[tuple[str, str]]:
    """(object DN, attribute) pairs ``opts`` can read under the container."""
    attrs = ["cn", "msSPP-KMSIds", *schema.LICENSE_ATTRIBUTES]
    with session(opts) as conn:
        conn.search(
            container, "(objectClass=msSPP-ActivationObject)", ldap3.LEVEL, attributes=attrs
        )
        if conn.result["result"] == 32:
            return set()
        raise_for_result(conn.result, what=f"search {container}")
        return {
            (_norm(str(e["dn"])), name.lower())
            for e in conn.response or []
            if e.get("type") == "searchResEntry"
            for name, values in e.get("raw_attributes", {}).items()
            if values
        }


def report(
    rep: Any,
    config: ConnectionOptions,
    data: ConnectionOptions,
    *,
    root: str,
    settle: float = SETTLE_SECONDS,
) -> None:
    """Add replication's items to a ``check`` report (nothing when the server does not
    replicate): every peer reachable as the replication identity, contextCSNs in agreement
    (else who lags, by how much), that identity's read rights on activation objects, and a
    consumer's update referral."""
    with session(config) as conn:
        db = _database(conn, root)
    syncrepl = [parse_syncrepl(v) for v in _values(db, "olcSyncrepl")]
    if not syncrepl:
        return
    provider = [v.upper() for v in _values(db, "olcMultiProvider")] == ["TRUE"]
    dn, password = syncrepl[0].get("binddn", ""), syncrepl[0].get("credentials", "")
    here = f"{data.uri} (this server)"
    servers = {here: _local(data, dn, password)}
    for s in syncrepl:
        servers[s.get("provider", "")] = ConnectionOptions(
            uri=s.get("provider", ""),
            bind_dn=s.get("binddn"),
            password=s.get("credentials"),
            ca_file=s.get("tls_cacert"),
            start_tls=s.get("starttls", "no").lower() in ("yes", "critical"),
            connect_timeout=data.connect_timeout,
            receive_timeout=data.receive_timeout,
        )
    fix_peer = "start it, or check its address, its certificate and the replication identity"
    csns: dict[str, dict[int, str]] = {}
    for label, opts in servers.items():
        try:
            csns[label] = _context_csns(opts, root)
        except AdbaError as exc:
            rep.add(
                "replication-peer", False, f"{label} not reachable as {dn}: {exc.message}", fix_peer
            )
            continue
        if label != here:
            rep.add("replication-peer", True, f"{label} answers as {dn}")

    deadline = time.monotonic() + settle
    behind = _behind(csns)
    while behind and time.monotonic() < deadline:
        time.sleep(0.25)
        for label in list(csns):
            try:
                csns[label] = _context_csns(servers[label], root)
            except AdbaError as exc:  # went away meanwhile: keep what it had
                log.info("re-reading %s: %s", label, exc.message)
        behind = _behind(csns)
    for line in behind:
        rep.add("replication-lag", False, line, "wait, or look at that server's slapd log")
    if not behind and len(csns) > 1:
        rep.add("replication-lag", True, f"{len(csns)} servers agree on every contextCSN")

    rules = [_PREFIX.sub("", v) for v in _values(db, "olcAccess")]
    first = [r.lower() for r in rules[:2]] == [r.lower() for r in replicator_rules(dn)]
    rep.add(
        "replication-identity",
        first,
        f"{dn} reads the whole suffix (first access rules)"
        if first
        else f"{dn} is not granted read first: replicas get objects without their licenses",
        "" if first else "run `adba directory replicate` again",
    )
    try:
        missing = _visible(data, rep.container) - _visible(servers[here], rep.container)
    except AdbaError as exc:
        rep.add("replication-read", False, f"activation objects not readable: {exc.message}")
    else:
        rep.add(
            "replication-read",
            not missing,
            f"{dn} reads every activation object, licenses included"
            if not missing
            else f"{dn} cannot read {len(missing)} attribute(s) of activation objects, e.g. "
            f"{sorted(missing)[0][1]} of {sorted(missing)[0][0]}",
            "" if not missing else "run `adba directory replicate` again",
        )
    if not provider:
        refs = _values(db, "olcUpdateRef")
        providers = {s.get("provider", "").lower() for s in syncrepl}
        rep.add(
            "update-referral",
            bool(refs),
            (
                f"writes referred to {', '.join(refs)}"
                + (
                    ""
                    if any(r.lower() in providers for r in refs)
                    else " (not one of its providers)"
                )
            )
            if refs
            else "no update referral: writes get unwillingToPerform (53)",
            "" if refs else "run `adba directory replicate --role consumer` again",
        )
