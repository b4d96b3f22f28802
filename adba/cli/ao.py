"""``adba ao publish|list|show|delete|history`` -- activation objects."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ._common import (
    Formatter,
    add_connection_options,
    add_json,
    catalog,
    confirm,
    connection_options,
    emit_json,
    pick,
    root_dn,
    root_public_key,
    say,
    table,
)

ADMIN = "-H ldaps://ldap.example.test --ca-file ca.pem -D uid=adbaadmin,ou=People,dc=example,dc=test --password-file pw"

PUBLISH = f"""\
Activates a CSVLK for this forest with the activation authority and publishes the
activation object under cn=Activation Objects. The key is read from a file (or stdin with
--key-file -) so it does not show in the process list; it is never logged whole.

example:
  adba ao publish --key-file csvlk.txt --authority /var/lib/adba/authority \\
      {ADMIN}
"""
LIST = f"""\
Lists activation objects: DN, CSVLK SKU, partial key, PID, KMS IDs, license status.
With --root-key (the authority's pinned root public key) each license is verified.

example:
  adba ao list --root-key /etc/adba/root.pub --json {ADMIN}
"""
SHOW = f"""\
example:
  adba ao show "cn=Nimbus Server 2026 CSVLK 7QX2K,cn=Activation Objects,cn=Microsoft SPP,cn=Services,cn=Configuration,dc=example,dc=test" {ADMIN}
"""
DELETE = f"""\
Deletes one activation object (asks first unless --yes). Refuses anything that is not an
activation object directly under the container.

example:
  adba ao delete --yes "cn=...,cn=Activation Objects,cn=Microsoft SPP,cn=Services,cn=Configuration,dc=example,dc=test" {ADMIN}
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("ao", help="activation objects: publish, list, show, delete, history")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    pub = verbs.add_parser(
        "publish",
        help="activate a CSVLK and publish its object",
        description=PUBLISH,
        formatter_class=Formatter,
    )
    key = pub.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-file", metavar="FILE", help="file holding the CSVLK ('-' for stdin)")
    key.add_argument(
        "--key", help="the CSVLK itself (visible in the process list: prefer --key-file)"
    )
    pub.add_argument("--name", help="object name (cn); default: CSVLK product and partial key")
    how = pub.add_argument_group("activation (one of)")
    how.add_argument(
        "--online", metavar="URL", help="activate online with the authority at URL (https://...)"
    )
    how.add_argument(
        "--authority", metavar="DIR", help="local activation authority directory (ADBA_AUTHORITY)"
    )
    how.add_argument(
        "--get-iid",
        action="store_true",
        help="print this forest's installation ID for telephone activation, publish nothing",
    )
    how.add_argument(
        "--apply-cid", metavar="CID", help="publish with the confirmation ID the authority gave"
    )
    pub.add_argument(
        "--authority-ca-file", metavar="PEM", help="CA of the authority's TLS certificate"
    )
    pub.add_argument("--root-key", metavar="PEM", help="pinned root key (checks a confirmation ID)")
    pub.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    add_connection_options(pub)
    add_json(pub)
    pub.set_defaults(func=cmd_publish)

    lst = verbs.add_parser(
        "list", help="list activation objects", description=LIST, formatter_class=Formatter
    )
    lst.add_argument("--edition", help="only objects that activate this edition (name or SKU)")
    _read_options(lst)
    lst.set_defaults(func=cmd_list)

    show = verbs.add_parser(
        "show", help="show one activation object", description=SHOW, formatter_class=Formatter
    )
    show.add_argument("dn")
    _read_options(show)
    show.set_defaults(func=cmd_show)

    delete = verbs.add_parser(
        "delete", help="delete one activation object", description=DELETE, formatter_class=Formatter
    )
    delete.add_argument("dn")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_connection_options(delete)
    delete.set_defaults(func=cmd_delete)
    _register_history(verbs)


def _read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root-key", metavar="PEM", help="pinned authority root public key (verifies licenses)"
    )
    p.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    add_connection_options(p)
    add_json(p)


def _read_key(args: argparse.Namespace) -> str:
    if args.key is not None:
        return str(args.key)
    import sys

    try:
        text = sys.stdin.read() if args.key_file == "-" else Path(args.key_file).read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read key file {args.key_file}: {exc.strerror}") from exc
    return text.strip()


def _rows(views: list[Any]) -> list[list[str]]:
    return [
        [
            v.dn,
            v.csvlk_name or v.csvlk_sku,
            v.partial_key,
            v.pid,
            ", ".join(v.kms_names),
            v.license,
        ]
        for v in views
    ]


HEADERS = ["DN", "CSVLK SKU", "PARTIAL", "PID", "KMS IDS", "LICENSE"]
#: columns that give way (in this order) when the table is wider than the terminal
_SHRINK = (4, 1, 3, 0)
_MIN_WIDTH = 10


def fit(rows: list[list[str]], headers: list[str], width: int) -> list[list[str]]:
    """Cut cells (KMS IDs, then SKU, PID, DN) with an ellipsis so that each line of the
    table fits ``width`` columns (two spaces between columns)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    for col in _SHRINK:
        if excess <= 0:
            break
        give = min(excess, max(0, widths[col] - _MIN_WIDTH))
        widths[col] -= give
        excess -= give

    def cut(text: str, limit: int) -> str:
        return text if len(text) <= limit else text[: max(1, limit - 1)] + "\u2026"

    return [[cut(c, w) for c, w in zip(r, widths, strict=True)] for r in rows]


def _terminal_width() -> int | None:
    """The terminal's width (or COLUMNS); None when the output is not a terminal (a pipe or a
    file gets whole lines)."""
    import os
    import shutil
    import sys

    if not os.environ.get("COLUMNS") and not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((100, 24)).columns


def cmd_publish(args: argparse.Namespace) -> int:
    from ..directory.objects import (
        check_name,
        forest_installation,
        publish_confirmed,
        publish_csvlk,
    )
    from ..keys import KeyType, parse_key

    # every input is checked before anything is asked or recorded anywhere
    key = _read_key(args)
    # a typo or a GVLK/MAK (exit 11) is reported before anything else happens
    parse_key(key, expect=KeyType.CSVLK, purpose="activation objects need a CSVLK")
    if args.name is not None:
        check_name(args.name)
    cat = catalog(args)
    chosen = [bool(args.online), bool(args.get_iid), bool(args.apply_cid)]
    if sum(chosen) > 1:
        raise InvalidInput("choose one of --online, --get-iid, --apply-cid")
    if args.authority and (args.online or args.get_iid or args.apply_cid):
        raise InvalidInput(
            "--authority activates locally: do not combine it with --online, "
            "--get-iid or --apply-cid"
        )
    opts = connection_options(args)
    root = root_dn(args, opts)
    if args.get_iid:
        installation = forest_installation(opts, root=root, key=key)
        if args.json:
            emit_json({"installation_id": installation.text(), "forest": root})
        else:
            print(installation.text())
        return 0
    if args.apply_cid:
        root_key = root_public_key(args)
        if root_key is None:
            raise InvalidInput(
                "--apply-cid needs the pinned root key (--root-key or ADBA_ROOT_KEY)"
            )
        dn, view = publish_confirmed(
            opts,
            root=root,
            key=key,
            confirmation_id=args.apply_cid,
            catalog=cat,
            root_public_key=root_key,
            name=args.name,
        )
    else:
        activator = _activator(args)
        dn, view = publish_csvlk(
            opts,
            root=root,
            key=key,
            activator=activator,
            catalog=cat,
            name=args.name,
            progress=None if args.json else (lambda m: say(m)),
        )
    if args.json:
        emit_json(view.to_dict())
    else:
        print(f"published {dn}")
    return 0


def _activator(args: argparse.Namespace) -> Any:
    """The authority to activate with: --online URL, else --authority DIR (local)."""
    if getattr(args, "online", None):
        from ..authority.client import RemoteAuthority

        return RemoteAuthority(args.online, ca_file=getattr(args, "authority_ca_file", None))
    path = pick(args, "authority") or pick(args, "path", "authority")
    if not path:
        raise InvalidInput(
            "no activation authority: give --online URL, --authority DIR (or ADBA_AUTHORITY), "
            "or activate by telephone (--get-iid, then --apply-cid)"
        )
    from ..authority import LocalAuthority

    return LocalAuthority.open(path)


def cmd_list(args: argparse.Namespace) -> int:
    from ..directory.objects import list_views

    cat = catalog(args)
    kms_id = cat.edition(args.edition).group if args.edition else None
    opts = connection_options(args)
    views = list_views(
        opts,
        root=root_dn(args, opts),
        catalog=cat,
        root_public_key=root_public_key(args),
        kms_id=kms_id,
    )
    if args.json:
        emit_json([v.to_dict() for v in views])
    elif views:
        width = _terminal_width()
        rows = _rows(views) if width is None else fit(_rows(views), HEADERS, width)
        print(table(rows, HEADERS))
    else:
        print("no activation objects")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..directory.objects import show_view
    from ..directory.store import validate_dn

    validate_dn(args.dn)
    cat = catalog(args)
    opts = connection_options(args)
    view = show_view(
        opts,
        root=root_dn(args, opts),
        dn=args.dn,
        catalog=cat,
        root_public_key=root_public_key(args),
    )
    if args.json:
        emit_json(view.to_dict())
        return 0
    fields = [
        ("dn", view.dn),
        ("name", view.cn),
        ("CSVLK SKU", f"{view.csvlk_name or '(not in catalogue)'} {{{view.csvlk_sku}}}"),
        ("partial key", view.partial_key),
        ("PID", view.pid),
        (
            "KMS IDs",
            "; ".join(f"{n} {{{i}}}" for n, i in zip(view.kms_names, view.kms_ids, strict=True)),
        ),
        ("license", f"{view.license} ({view.license_detail}), {view.license_bytes} bytes"),
        ("installation ID", view.installation_id or "-"),
        ("confirmation ID", view.confirmation_id or "-"),
    ]
    for name, value in fields:
        print(f"{name + ':':<17}{value}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from ..directory.objects import delete_object
    from ..directory.store import validate_dn

    validate_dn(args.dn)
    opts = connection_options(args)
    root = root_dn(args, opts)
    confirm(f"Delete activation object {args.dn}?", args.yes)
    delete_object(opts, root=root, dn=args.dn)
    print(f"deleted {args.dn}")
    return 0


# -- history -----------------------------------------------------------------------------------
HISTORY = f"""\
Who published or deleted which activation object, and when. OpenLDAP: from the audit log
`directory init` sets up (the bound DN, the times, slapd's connection number; the admin group
and the root DN may read it). AD / Samba AD: each object's creation time and owner, and the
deleted objects (tombstones) that were under the container; AD does not record who deleted.

example:
  adba ao history --since 7d --json {ADMIN}
"""


def _register_history(verbs: Any) -> None:
    hist = verbs.add_parser(
        "history",
        help="who published or deleted which object, when",
        description=HISTORY,
        formatter_class=Formatter,
    )
    hist.add_argument(
        "--since", metavar="WHEN", help="from this ISO date or time, or a span back (7d, 12h, 30m)"
    )
    add_connection_options(hist)
    add_json(hist)
    hist.set_defaults(func=cmd_history)


def cmd_history(args: argparse.Namespace) -> int:
    from ..directory.audit import history, parse_since

    since = parse_since(args.since)
    opts = connection_options(args)
    events = history(opts, root=root_dn(args, opts), since=since)
    if args.json:
        emit_json([e.to_dict() for e in events])
    elif events:
        rows = [[e.when, e.action, e.dn, e.who or "(not recorded)", e.source] for e in events]
        print(table(rows, ["WHEN", "ACTION", "DN", "WHO", "SOURCE"]))
    else:
        print("no publish or delete recorded")
    return 0
