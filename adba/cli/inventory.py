"""``adba inventory discover|add|collect|import|list|history|export`` -- the admin's fleet."""

from __future__ import annotations

import argparse
import sys
import time

from ._common import (
    Formatter,
    add_connection_options,
    add_json,
    emit_json,
    port,
    positive_int,
    table,
    timeout,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..inventory.db import InventoryDB

DISCOVER = """\
Adds the directory's computer objects to the inventory (like VAMT's directory search): AD
objectClass=computer (dNSHostName), OpenLDAP device/computer entries, under --computers
(default: the forest root). Machines already known are kept; their address is refreshed.

example:
  adba inventory discover -H ldaps://dc1.example.test --ca-file ca.pem \\
      -D uid=admin,ou=People,dc=example,dc=test --password-file pw --computers ou=Computers,dc=example,dc=test
"""
COLLECT = """\
Runs `adba agent status --json` on each machine over SSH with your key, host keys checked
against --known-hosts (an unknown or changed key is refused for that machine), at most
--concurrency machines at once, each within --timeout seconds. A machine that is down,
hangs or refuses is recorded with the reason and never stops the scan. Progress on stderr,
a summary line at the end; every collection is kept (adba inventory history).

example:
  adba inventory collect --known-hosts ~/.ssh/known_hosts --user admin --identity ~/.ssh/id_ed25519 \\
      --concurrency 32 --timeout 20
"""
IMPORT = """\
Imports what a KMS host knows (its client table, through its read-only clients API: `adba kms
serve --clients-api PORT --clients-token-file F`), or what the activation authority tells you
about your own keys (MAK activations left, KMS host slots left; the key proves ownership), or
the guests an AVMA host on this machine activates (its `adba avma init` state directory; each
import replaces that host's guests).

example:
  adba inventory import --kms https://kms1.example.test:9689 --kms-token-file kms.token --ca-file ca.pem
  adba inventory import --authority https://activation.example.com --key-file mak.txt
  adba inventory import --avma-state /var/lib/adba/avma
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("inventory", help="the fleet: discover, collect over SSH, report")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help_: str, description: str | None = None) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = verbs.add_parser(
            name, help=help_, description=description or help_, formatter_class=Formatter
        )
        v.add_argument(
            "--db", metavar="PATH", help="inventory database (default: under /var/lib/adba or ~)"
        )
        return v

    disc = verb("discover", "add the directory's computer objects", DISCOVER)
    add_connection_options(disc)
    disc.add_argument("--computers", metavar="DN", help="where to search (default: the root)")
    add_json(disc)
    disc.set_defaults(func=cmd_discover)

    add = verb("add", "add machines by name (and address for SSH)")
    add.add_argument("names", nargs="+", metavar="NAME")
    add.add_argument("--address", metavar="HOST[:PORT]", help="SSH address (one name only)")
    add.set_defaults(func=cmd_add)

    col = verb("collect", "collect each machine's status over SSH", COLLECT)
    col.add_argument("names", nargs="*", metavar="NAME", help="only these machines")
    col.add_argument(
        "--known-hosts",
        metavar="FILE",
        default="~/.ssh/known_hosts",
        help="host keys to verify against (default ~/.ssh/known_hosts)",
    )
    col.add_argument("--user", help="SSH user (default: yours)")
    col.add_argument(
        "--identity", action="append", metavar="KEY", help="private key file (repeatable)"
    )
    col.add_argument("--ssh-config", metavar="FILE", help="an OpenSSH client config to apply")
    col.add_argument("--port", type=port, default=22, help="SSH port (default 22)")
    col.add_argument(
        "--command",
        default="adba agent status --json",
        help="what to run on each machine (default: adba agent status --json)",
    )
    col.add_argument(
        "--timeout", type=timeout, default=30.0, metavar="S", help="per machine (default 30)"
    )
    col.add_argument(
        "--concurrency", type=positive_int, default=16, metavar="N", help="at once (default 16)"
    )
    col.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_json(col)
    col.set_defaults(func=cmd_collect)

    imp = verb(
        "import", "import a KMS host's clients, an AVMA host's guests or your keys' status", IMPORT
    )
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--kms", metavar="URL", help="a KMS host's clients API")
    src.add_argument("--authority", metavar="URL", help="the activation authority")
    src.add_argument(
        "--avma-state",
        action="append",
        metavar="DIR",
        help="an AVMA host's state directory (repeatable)",
    )
    imp.add_argument("--kms-token-file", metavar="FILE", help="the clients API token")
    imp.add_argument(
        "--key-file", action="append", metavar="FILE", help="a MAK or CSVLK (repeatable)"
    )
    imp.add_argument("--ca-file", metavar="PEM", help="CA of the server's TLS certificate")
    add_json(imp)
    imp.set_defaults(func=cmd_import)

    ls = verb("list", "the machines and their last status")
    ls.add_argument("--status", help="only machines with this status")
    ls.add_argument(
        "--what",
        choices=("machines", "kms-clients", "avma-guests", "keys", "scans"),
        default="machines",
        help="which list (default machines)",
    )
    add_json(ls)
    ls.set_defaults(func=cmd_list)

    summ = verb("summary", "machines by status and channel, expiring soon")
    add_json(summ)
    summ.set_defaults(func=cmd_summary)

    hist = verb("history", "every collection, newest first")
    hist.add_argument("name", nargs="?", metavar="NAME", help="one machine")
    hist.add_argument("--limit", type=positive_int, default=100, help="at most (default 100)")
    hist.add_argument("--by-status", action="store_true", help="each collect run counted by status")
    add_json(hist)
    hist.set_defaults(func=cmd_history)

    exp = verb("export", "the machine list as CSV or JSON")
    exp.add_argument("--format", choices=("csv", "json"), default="csv")
    exp.add_argument("--output", "-o", metavar="FILE", help="write here (default stdout)")
    exp.set_defaults(func=cmd_export)


def _db(args: argparse.Namespace) -> InventoryDB:
    from ..inventory import default_db_path
    from ..inventory.db import InventoryDB

    if args.db is not None:
        return InventoryDB(args.db)
    return InventoryDB(default_db_path(), create_parent=True)


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def cmd_discover(args: argparse.Namespace) -> int:
    from ..inventory.discover import discover
    from ._common import connection_options, root_dn

    opts = connection_options(args)
    base = args.computers or root_dn(args, opts)
    found = discover(opts, base)
    with _db(args) as db:
        scan = db.start_scan("discover", source=opts.uri)
        new = db.add_machines(found, source="directory")
        db.finish_scan(scan, total=len(found), failed=0)
    if args.json:
        emit_json({"found": len(found), "new": new, "machines": [n for n, _a, _d in found]})
    else:
        print(f"{len(found)} computer objects under {base}: {new} new")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from ..errors import InvalidInput

    if args.address is not None:
        from ..addresses import host_port

        if len(args.names) != 1:
            raise InvalidInput("--address goes with one name")
        try:
            host_port(args.address, default_port=22)
        except ValueError as exc:
            raise InvalidInput(f"--address: {exc}") from exc
    with _db(args) as db:
        new = db.add_machines([(n, args.address, None) for n in args.names], source="manual")
    print(f"{len(args.names)} machines: {new} new")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    import os

    from ..errors import InvalidInput
    from ..inventory.collect import SshOptions, collect

    opts = SshOptions(
        known_hosts=os.path.expanduser(args.known_hosts),
        user=args.user,
        identities=tuple(os.path.expanduser(i) for i in args.identity or ()),
        command=args.command,
        port=args.port,
        timeout=args.timeout,
        concurrency=args.concurrency,
        ssh_config=args.ssh_config,
    )
    with _db(args) as db:
        machines = db.machines(args.names or None)
        if not machines:
            raise InvalidInput(
                "no machines to collect: `adba inventory discover` or `add` first"
                + (f" (none named {', '.join(args.names)})" if args.names else "")
            )

        def progress(result: Any, done: int, total: int) -> None:
            if args.quiet:
                return
            what = result.status if result.ok else f"{result.error_code}: {result.error_message}"
            print(f"[{done}/{total}] {result.machine}: {what}", file=sys.stderr, flush=True)

        started = time.monotonic()
        scan = db.start_scan("collect")
        results = collect(machines, opts, progress=progress)
        failed = sum(1 for r in results if not r.ok)
        db.record(scan, results)
        db.finish_scan(scan, total=len(results), failed=failed)
    seconds = time.monotonic() - started
    counts: dict[str, int] = {}
    for r in results:
        key = str(r.status) if r.ok else str(r.error_code)
        counts[key] = counts.get(key, 0) + 1
    if args.json:
        emit_json(
            {
                "scan": scan,
                "machines": len(results),
                "collected": len(results) - failed,
                "failed": failed,
                "seconds": round(seconds, 3),
                "counts": counts,
            }
        )
    else:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(
            f"collected {len(results) - failed} of {len(results)} machines in {seconds:.1f} s"
            f" ({failed} failed): {detail}"
        )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import InvalidInput
    from ..inventory import importers

    with _db(args) as db:
        if args.kms is not None:
            if not args.kms_token_file:
                raise InvalidInput("--kms needs --kms-token-file")
            from ..kms.clients_api import read_token

            data = importers.fetch_kms_clients(
                args.kms, read_token(args.kms_token_file), ca_file=args.ca_file
            )
            host = str(data.get("epid") or args.kms)
            scan = db.start_scan("import-kms", source=args.kms)
            db.replace_kms_clients(host, data["clients"])
            db.finish_scan(scan, total=len(data["clients"]), failed=0)
            if args.json:
                emit_json({"host": host, "clients": len(data["clients"])})
            else:
                print(f"{len(data['clients'])} clients imported from the KMS host {host}")
            return 0
        if args.avma_state:
            found = [importers.read_avma_guests(d) for d in args.avma_state]  # all read first
            for d, got in zip(args.avma_state, found, strict=True):
                scan = db.start_scan("import-avma", source=str(d))
                db.replace_avma_guests(got["host"], got["guests"])
                db.finish_scan(scan, total=len(got["guests"]), failed=0)
            if args.json:
                emit_json([{"host": h["host"], "guests": len(h["guests"])} for h in found])
            else:
                for h in found:
                    print(f"{len(h['guests'])} guests imported from the AVMA host {h['host']}")
            return 0
        if not args.key_file:
            raise InvalidInput("--authority needs --key-file (the key proves it is yours)")
        statuses = []
        for path in args.key_file:
            try:
                key = Path(path).read_text().strip()
            except OSError as exc:
                raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
            statuses.append(importers.fetch_key_status(args.authority, key, ca_file=args.ca_file))
        for status in statuses:
            db.put_key(status)
    if args.json:
        emit_json(statuses)
    else:
        for s in statuses:
            print(_key_line(s))
    return 0


def _key_line(s: dict[str, Any]) -> str:
    if s["type"] == "MAK":
        left = f"{s['mak_left']} of {s['mak_allowed']} activations left"
    else:
        left = f"{s['kms_hosts_left']} of {s['kms_host_limit']} KMS host slots left"
    return f"{s['type']} *****-{s['partial_key']} ({s.get('product')}): {left}"


def cmd_list(args: argparse.Namespace) -> int:
    with _db(args) as db:
        if args.what == "kms-clients":
            rows: list[dict[str, Any]] = db.kms_clients()
        elif args.what == "avma-guests":
            rows = db.avma_guests()
        elif args.what == "keys":
            rows = db.keys()
        elif args.what == "scans":
            rows = db.scans()
        else:
            rows = db.machines()
            if args.status:
                rows = [m for m in rows if m["status"] == args.status]
    if args.json:
        emit_json(rows)
        return 0
    if args.what == "machines":
        print(
            table(
                [
                    [
                        m["name"],
                        m["status"] or "-",
                        m["channel"] or "-",
                        _when(m["expires_at"]),
                        _when(m["last_collected"]),
                        m["error_code"] or "-",
                    ]
                    for m in rows
                ],
                ["MACHINE", "STATUS", "CHANNEL", "EXPIRES", "COLLECTED", "ERROR"],
            )
        )
    elif args.what == "keys":
        for s in rows:
            print(_key_line(s))
    else:
        headers = list(rows[0]) if rows else []
        print(table([[str(r[h]) for h in headers] for r in rows], headers) if rows else "none")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    with _db(args) as db:
        view = db.overview(int(time.time()))
    if args.json:
        emit_json(view)
        return 0
    print(f"{view['machines']} machines")
    for title, key in (("by status", "by_status"), ("by channel", "by_channel")):
        counts = view[key]
        print(f"  {title}: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"))
    print(f"  expiring within 30 days: {view['expiring_within_30_days']}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    if args.by_status:
        with _db(args) as db:
            runs = db.status_over_time(limit=args.limit)
        if args.json:
            emit_json(runs)
        else:
            for run in runs:
                counts = ", ".join(f"{k} {v}" for k, v in sorted(run["counts"].items()))
                print(f"{_when(run['at'])}  {counts}")
        return 0
    with _db(args) as db:
        rows = db.history(args.name, limit=args.limit)
    if args.json:
        emit_json(rows)
        return 0
    print(
        table(
            [
                [
                    _when(r["at"]),
                    r["machine"],
                    r["status"] or "-",
                    r["channel"] or "-",
                    r["error_code"] or "-",
                ]
                for r in rows
            ],
            ["WHEN", "MACHINE", "STATUS", "CHANNEL", "ERROR"],
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..inventory.export import to_csv, to_json

    with _db(args) as db:
        machines = db.machines()
    now = int(time.time())
    text = to_csv(machines, now) if args.format == "csv" else to_json(machines, now)
    if args.output:
        from pathlib import Path

        from ..errors import FileAccessError

        try:
            Path(args.output).write_text(text)
        except (OSError, ValueError) as exc:
            raise FileAccessError(f"cannot write {args.output}: {exc}", path=args.output) from exc
        print(f"{len(machines)} machines written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
