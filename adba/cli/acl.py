"""``adba acl show|grant|revoke`` -- who may publish and delete activation objects."""

from __future__ import annotations

import argparse

from ..errors import InvalidInput
from ._common import (
    add_connection_options,
    add_json,
    connection_options,
    emit_json,
    ldapi_uri,
    pick,
    root_dn,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SHOW = """\\
Shows the security descriptor of the activation-objects container (Active Directory / Samba
AD): its owner by name and SID, then the DACL as SDDL, one entry per line with the account's
name. On OpenLDAP: the olcAccess rules of
the database (read from cn=config over ldapi, as root).

example:
  adba acl show -H ldaps://dc1.example.test --ca-file ca.pem -D "CN=Administrator,CN=Users,DC=example,DC=test" --password-file pw
"""
GRANT = """\\
Lets a group create and delete activation objects (and read them), without any write to
their attributes: an object-specific CC/DC entry for msSPP-ActivationObject, an inheritable
read entry on the container, and an inheritable OWNER RIGHTS (S-1-3-4) entry with read-control
only, so a member that owns what it published cannot rewrite its security descriptor (Samba,
which ignores OWNER RIGHTS, gets objects owned by Administrators from `ao publish` instead). With --read, only the read (fixes Samba's lost Authenticated
Users grant: `adba acl grant "Authenticated Users" --read`).

example:
  adba acl grant "ADBA Admins" -H ldaps://dc1.example.test --ca-file ca.pem -D ... --password-file pw
"""
REVOKE = """\\
Removes the container's own entries for a group or account.

example:
  adba acl revoke "ADBA Admins" -H ldaps://dc1.example.test --ca-file ca.pem -D ... --password-file pw
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("acl", help="who may publish and delete activation objects (AD)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    show = verbs.add_parser("show", help="the container's security descriptor", description=SHOW)
    show.add_argument(
        "--config-uri",
        type=ldapi_uri,
        metavar="LDAPI",
        help="OpenLDAP: ldapi:// of cn=config (ADBA_CONFIG_URI)",
    )
    add_connection_options(show)
    add_json(show)
    show.set_defaults(func=cmd_show)
    for verb, text, func in (("grant", GRANT, cmd_grant), ("revoke", REVOKE, cmd_revoke)):
        v = verbs.add_parser(verb, help=f"{verb} a group's rights", description=text)
        v.add_argument(
            "who", help="group or account: sAMAccountName, DN, SID or 'Authenticated Users'"
        )
        if verb == "grant":
            v.add_argument(
                "--read", action="store_true", help="read only (inherited by the objects)"
            )
        add_connection_options(v)
        v.set_defaults(func=func)


def _openldap_rules(args: argparse.Namespace, opts: Any, root: str) -> int:
    """On OpenLDAP, `acl show` lists ADBA's olcAccess rules (read over ldapi, as root)."""
    from ..directory import openldap
    from ..directory.connection import ConnectionOptions, session

    uri = pick(args, "config_uri") or openldap.DEFAULT_LDAPI
    with session(ConnectionOptions(uri=uri)) as conn:
        rules = openldap.access_rules(conn, root)
    if args.json:
        emit_json({"database_suffix": root, "olcAccess": rules})
    else:
        for rule in rules:
            print(rule)
    return 0


def _ad(args: argparse.Namespace) -> tuple[Any, str]:
    from ..directory import ad
    from ..directory.connection import session

    opts = connection_options(args)
    root = root_dn(args, opts)
    with session(opts) as conn:
        if not ad.is_active_directory(conn):
            raise InvalidInput(
                "on OpenLDAP the rights are olcAccess rules: set the admin group with "
                "`adba directory init --admin-group DN` (re-running it replaces ADBA's rules)"
            )
    return opts, root


def cmd_show(args: argparse.Namespace) -> int:
    from ..directory import ad
    from ..directory.connection import session

    opts = connection_options(args)
    root = root_dn(args, opts)
    with session(opts) as conn:
        active_directory = ad.is_active_directory(conn)
    if not active_directory:
        return _openldap_rules(args, opts, root)
    view = ad.show(opts, root=root)
    if args.json:
        emit_json(view)
        return 0
    owner = view["owner_name"] or "unknown"
    if view["owner"] and view["owner"] != owner:
        owner += f" {view['owner']}"
    print(f"{view['container']}  (owner {owner})")
    for e in view["entries"]:
        print(f"  {e['sddl']:<60} {e['name']}{'  (inherited)' if e['inherited'] else ''}")
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    from ..directory import ad

    opts, root = _ad(args)
    added = ad.grant(opts, root=root, who=args.who, read_only=args.read)
    print(f"granted {args.who}: " + (" ".join(added) if added else "already in place"))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from ..directory import ad

    opts, root = _ad(args)
    removed = ad.revoke(opts, root=root, who=args.who)
    print(f"revoked {args.who}: " + (" ".join(removed) if removed else "had no entries"))
    return 0
