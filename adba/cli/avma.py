"""``adba avma init|serve|guests`` -- automatic virtual machine activation on a host."""

from __future__ import annotations

import argparse

from ._common import add_json, emit_json, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INIT = """\
Makes this host's AVMA key and has the authority certify it as an AVMA host of an edition
entitled to activate guests (a Datacenter-class server edition): the certificate is what
guests verify under their pinned root key. Online (--online URL), the host's own key proves
the entitlement (--key-file: its Datacenter MAK, or a CSVLK covering Datacenter); a MAK
certifies at most as many hosts as its activation count.

examples:
  adba avma init --state-dir /var/lib/adba/avma --online https://authority.example \\
      --key-file /root/datacenter-mak.txt
  adba avma init --state-dir /var/lib/adba/avma --authority /srv/authority \\
      --edition "Nimbus Server Datacenter"
"""

SERVE = """\
Activates the guests of this host over vsock (every guest reaches its host at CID 2) and/or
a Unix socket, while the host's own agent state says its entitled edition is licensed (by
any channel); refuses them, signed, with the reason otherwise. Records every guest.

example:
  adba avma serve --state-dir /var/lib/adba/avma --listen vsock:any:1690 \\
      --listen unix:/run/adba/avma.sock --agent-state /var/lib/adba/agent-state.json
"""

GUESTS = """\
The guests this host has answered: edition, last answer, licensed now or not, until when,
first and last seen, requests (the history of each is kept).

example:
  adba avma guests --state-dir /var/lib/adba/avma --json
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("avma", help="automatic virtual machine activation (host side)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    init = verbs.add_parser("init", help="certify this host as an AVMA host", description=INIT)
    init.add_argument("--state-dir", required=True, metavar="DIR", help="the host's AVMA state")
    how = init.add_mutually_exclusive_group(required=True)
    how.add_argument("--online", metavar="URL", help="certify online with the authority at URL")
    how.add_argument("--authority", metavar="DIR", help="the (vendor's) authority directory")
    init.add_argument(
        "--key-file",
        metavar="FILE",
        help="with --online: the host's AVMA-entitled MAK or CSVLK ('-' for stdin)",
    )
    init.add_argument(
        "--authority-ca-file", metavar="PEM", help="CA of the authority's TLS certificate"
    )
    init.add_argument(
        "--edition",
        help="the host's (entitled) edition (required with --authority; online: the key's)",
    )
    init.add_argument("--host-id", help="the host's name (default: the hostname)")
    init.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    add_json(init)
    init.set_defaults(func=cmd_init)

    serve = verbs.add_parser("serve", help="activate this host's guests", description=SERVE)
    serve.add_argument("--state-dir", required=True, metavar="DIR", help="the host's AVMA state")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="vsock:CID[:PORT] or unix:PATH, repeatable (default: vsock:any:1690)",
    )
    serve.add_argument(
        "--agent-state",
        metavar="FILE",
        help="the host agent's state (default: ADBA_STATE, else "
        "the agent configuration's state_path)",
    )
    serve.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    serve.add_argument(
        "--validity-hours", type=float, default=168, help="a guest's activation (default: 168)"
    )
    serve.add_argument(
        "--renewal-hours", type=float, default=24, help="when guests renew (default: 24)"
    )
    serve.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus metrics")
    serve.add_argument("--metrics-address", default="127.0.0.1", help="(default: 127.0.0.1)")
    serve.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    serve.set_defaults(func=cmd_serve)

    guests = verbs.add_parser("guests", help="list this host's guests", description=GUESTS)
    guests.add_argument("--state-dir", required=True, metavar="DIR", help="the host's AVMA state")
    add_json(guests)
    guests.set_defaults(func=cmd_guests)


def cmd_init(args: argparse.Namespace) -> int:
    import time

    from ..avma.host import init_host
    from ..catalog import load_catalog
    from ..errors import InvalidInput
    from .ao import _activator, _read_key

    catalog = load_catalog(args.catalog)
    key = None
    if args.online:
        if not args.key_file:
            raise InvalidInput(
                "--online needs the host's own key (--key-file): its Datacenter MAK, or a "
                "CSVLK that covers Datacenter; it proves the entitlement"
            )
        args.key = None
        key = _read_key(args)
    elif args.key_file:
        raise InvalidInput("--key-file goes with --online (a local authority needs no key)")
    elif not args.edition:
        raise InvalidInput("--authority DIR needs the host's --edition")
    identity = init_host(
        args.state_dir, _activator(args), args.edition, catalog, host_id=args.host_id, key=key
    )
    cert = identity.certificate
    info = {
        "host_id": identity.host_id,
        "edition": catalog.sku_name(cert.edition_sku),
        "host_key": cert.public_key.hex(),
        "certificate_expires": cert.not_after,
    }
    if args.json:
        emit_json(info)
    else:
        until = time.strftime("%Y-%m-%d", time.gmtime(cert.not_after))
        print(
            f"certified AVMA host {identity.host_id} ({info['edition']}), host key "
            f"{cert.public_key[:8].hex()}, until {until}"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys

    from ..agent import resolve_state_path
    from ..avma.host import AvmaHost
    from ..avma.transport import Address
    from ..catalog import load_catalog
    from ..errors import InvalidInput

    addresses = [Address.parse(a) for a in args.listen or ["vsock:any:1690"]]
    if args.validity_hours <= 0 or not 0 < args.renewal_hours <= args.validity_hours:
        raise InvalidInput("--renewal-hours must be positive and at most --validity-hours")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("adba")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if args.quiet else logging.INFO)
    host = AvmaHost(
        args.state_dir,
        args.agent_state or resolve_state_path(),
        load_catalog(args.catalog),
        validity=int(args.validity_hours * 3600),
        renewal=int(args.renewal_hours * 3600),
    )
    stopped: list[int] = []

    def _stop(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        host.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.metrics_port is not None:
        host.metrics.start_exporter(host, args.metrics_address, args.metrics_port)

    def ready() -> None:
        print(f"serving AVMA guests on {', '.join(map(str, addresses))}", flush=True)

    host.serve(addresses, ready=ready)
    return 130 if stopped and stopped[0] == signal.SIGINT else 0


def cmd_guests(args: argparse.Namespace) -> int:
    import time

    from ..avma.store import guest_rows

    rows = guest_rows(args.state_dir)
    if args.json:
        emit_json({"guests": rows})
        return 0

    def day(t: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "-"

    print(
        table(
            [
                [
                    r["name"] or r["guest_id"][:8],
                    r["edition"],
                    "licensed" if r["licensed"] else "not licensed",
                    r["last_answer"],
                    day(r["licensed_until"]),
                    day(r["last_seen"]),
                    str(r["requests"]),
                ]
                for r in rows
            ],
            ["GUEST", "EDITION", "STATE", "LAST ANSWER", "UNTIL", "LAST SEEN", "REQUESTS"],
        )
    )
    return 0
