"""``adba kms install-key|serve|status|clients|publish|unpublish`` -- the KMS host."""

from __future__ import annotations

import argparse
import time

from ._common import add_json, emit_json, table, timeout
from ._common import port as port_type

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATE = "/var/lib/adba/kms"

INSTALL = f"""\
Installs a KMS host key (a CSVLK) on this host and activates it with the activation
authority, which certifies a new host key pair for it (at most 6 hosts per KMS key, 9
reactivations per host). The CSVLK is kept in STATE/csvlk.key, mode 0600. Run again with
the key the host is activated with, it does nothing and says so; --reactivate activates it
again (and spends one of the host's reactivations).

example:
  adba kms install-key --state-dir {STATE} --key-file csvlk.txt --authority /var/lib/adba/authority
"""
SERVE = f"""\
Answers KMS activation requests (TCP, one request and one response per connection) on
IPv4 and IPv6, port 1688 by default. At most 512 connections at once, 64 from one address
(or IPv6 /64); a request's first byte within 1 s, all of it within 2 s. One host per state
dir. Logs one key=value line per event on stdout (rejections in aggregate). With
--publish, registers the _vlmcs._tcp SRV record (and the host's A/AAAA records) by DNS
dynamic update (RFC 2136, TSIG) at start and daily, with --priority and --weight (default
0 and 0, as Windows). Several hosts publish into one domain side by side: each update
touches only this host's own records. Each host keeps its own counts. --workers N: N
processes answer on the port (SO_REUSEPORT; the limits are shared out among them), this one
among them, and this one keeps the count, the replay cache and the records, so counts are
exactly one process's.

example:
  adba kms serve --state-dir {STATE} --metrics-port 9688 --weight 60 \\
      --publish example.test --publish branch.example.test,10,50 \\
      --dns-server 192.0.2.53 --tsig-key-file /etc/adba/kms-update.key --host-name kms1.example.test
"""
PROBE = """\
A protocol v2 round trip that counts nothing: a hello for the host's certificate, then a
request sealed to it for an activation group no host covers, which the host opens, judges
and answers, signed (both signatures are checked). Through the host's event loop, its
decryption and, with --workers, the owner of the count. Exit 0 when the host answers, 19
when it does not (a health check).

example:
  adba kms probe 127.0.0.1:1688
"""
STATUS = f"""\
Counts per activation group, cache size, host ePID, where the SRV record was published.
Reads the host's records; works while the host runs.

example:
  adba kms status --state-dir {STATE} --json
"""
CLIENTS = f"""\
The machines in the host's cache: name, CMID, edition, first and last seen, activated or
still waiting for the threshold.

example:
  adba kms clients --state-dir {STATE}
"""
PUBLISH = """\
Publishes (or removes) this host's _vlmcs._tcp SRV record and its A/AAAA records in each
domain by DNS dynamic update with TSIG, with its priority and weight (--priority, --weight,
or per domain DOMAIN,PRIO,WEIGHT; default 0 and 0). Other hosts' records in the domain stay
as they are. When the server refuses, publish the records by hand or configure clients with
a static KMS host (kms_host in agent.toml).

example:
  adba kms publish --publish example.test --priority 0 --weight 60 --dns-server 192.0.2.53 \\
      --tsig-key-file /etc/adba/kms-update.key --host-name kms1.example.test --address 192.0.2.10
"""


# -- option types: a bad number or address is a one-line usage error (exit 2) -----------------
def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: expected 1..1000000") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: expected 1..1000000")
    return value


def _ip(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid IP address {text!r}") from None


def _srv_value(text: str) -> int:
    """An SRV priority or weight: 0..65535."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid SRV value {text!r}: expected 0..65535")
    return int(text)


def _hostport(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` (port 1688 when absent)."""
    from ..discovery import parse_nameserver

    try:
        host, port = parse_nameserver(text, default_port=1688)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r}: expected host[:port]"
        ) from None
    if not host or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected host[:port]")
    port_type(str(port))
    return host, port


def _dns_server(text: str) -> str:
    """``IP`` or ``IP:PORT`` / ``[IPv6]:PORT``, kept as given."""
    host, _port_number = _hostport(text) if text.strip() else ("", 0)
    _ip(host)
    return text.strip()


def register(nouns: Any) -> None:
    p = nouns.add_parser("kms", help="the KMS host: install its key, serve, status, DNS")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    inst = verbs.add_parser(
        "install-key", help="install and activate a KMS host key", description=INSTALL
    )
    _state(inst)
    key = inst.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-file", metavar="FILE", help="file holding the CSVLK ('-' for stdin)")
    key.add_argument("--key", help="the CSVLK itself (visible in the process list)")
    how = inst.add_argument_group("activation (one of)")
    how.add_argument("--online", metavar="URL", help="activate online with the authority at URL")
    how.add_argument("--authority", metavar="DIR", help="local activation authority")
    how.add_argument(
        "--get-iid", action="store_true", help="print the installation ID for telephone activation"
    )
    how.add_argument("--apply-cid", metavar="CID", help="finish with the confirmation ID")
    inst.add_argument(
        "--authority-ca-file", metavar="PEM", help="CA of the authority's TLS certificate"
    )
    inst.add_argument(
        "--root-key", metavar="PEM", help="pinned root key (checks a confirmation ID)"
    )
    inst.add_argument(
        "--host-id", help="this host's identity for the authority (default: machine id)"
    )
    inst.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    inst.add_argument(
        "--reactivate",
        action="store_true",
        help="activate again although this host is activated with this key "
        "(spends one of its 9 reactivations)",
    )
    add_json(inst)
    inst.set_defaults(func=cmd_install)

    serve = verbs.add_parser("serve", help="answer activation requests", description=SERVE)
    _state(serve)
    serve.add_argument(
        "--listen",
        action="append",
        type=_ip,
        metavar="ADDR",
        help="address to listen on (repeatable; default 0.0.0.0 and ::)",
    )
    serve.add_argument("--port", type=port_type, default=1688, help="TCP port (default 1688)")
    serve.add_argument(
        "--workers",
        type=_count,
        default=1,
        metavar="N",
        help="N processes answering on the port (SO_REUSEPORT), one owner of the count and "
        "the records (default 1: one process; measured on 2 cores, 2 processes spend 1.4-2 "
        "times the CPU per v2 activation: README, KMS)",
    )
    serve.add_argument(
        "--metrics-port",
        type=port_type,
        metavar="PORT",
        help="serve Prometheus metrics on this port",
    )
    limits = serve.add_argument_group("limits (one source cannot starve the others)")
    limits.add_argument(
        "--deadline",
        type=timeout,
        default=2.0,
        metavar="S",
        help="the whole request within S seconds of connecting (default 2)",
    )
    limits.add_argument(
        "--first-byte-deadline",
        type=timeout,
        metavar="S",
        help="its first byte within S seconds (default 1, at most --deadline)",
    )
    limits.add_argument(
        "--max-connections",
        type=_count,
        default=512,
        metavar="N",
        help="connections served at once (default 512)",
    )
    limits.add_argument(
        "--max-per-source",
        type=_count,
        metavar="N",
        help="of those, from one IPv4 address or IPv6 /64 (default 64, at most "
        "--max-connections); when all are taken "
        "the source holding the most gives way",
    )
    limits.add_argument(
        "--log-interval",
        type=timeout,
        default=10.0,
        metavar="S",
        help="rejected connections: one warning, then one summary line per S seconds (default 10)",
    )
    serve.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings only (not every request)"
    )
    _publish_options(serve, required=False)
    api = serve.add_argument_group("clients API (read-only, for `adba inventory import --kms`)")
    api.add_argument(
        "--clients-api", type=port_type, metavar="PORT", help="serve GET /v1/clients on this port"
    )
    api.add_argument(
        "--clients-token-file", metavar="FILE", help="bearer token clients must send (first line)"
    )
    api.add_argument("--clients-tls-cert", metavar="PEM", help="certificate chain (TLS)")
    api.add_argument("--clients-tls-key", metavar="PEM", help="its private key")
    serve.set_defaults(func=cmd_serve)

    probe = verbs.add_parser(
        "probe", help="is a KMS host answering? (counts nothing)", description=PROBE
    )
    probe.add_argument(
        "address", nargs="?", type=_hostport, default=("127.0.0.1", 1688), help="host[:port]"
    )
    probe.add_argument("--timeout", type=timeout, default=2.0, help="seconds (default 2)")
    probe.set_defaults(func=cmd_probe)

    st = verbs.add_parser("status", help="counts, cache, ePID, publication", description=STATUS)
    _state(st)
    add_json(st)
    st.set_defaults(func=cmd_status)

    cl = verbs.add_parser("clients", help="the machines in the cache", description=CLIENTS)
    _state(cl)
    add_json(cl)
    cl.set_defaults(func=cmd_clients)

    for verb, func in (("publish", cmd_publish), ("unpublish", cmd_unpublish)):
        pub = verbs.add_parser(
            verb, help=f"{verb} the SRV record by DNS update", description=PUBLISH
        )
        _state(pub)
        pub.add_argument("--port", type=port_type, default=1688, help="the port clients should use")
        _publish_options(pub, required=True)
        pub.set_defaults(func=func)


def _state(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir", default=STATE, metavar="DIR", help=f"the host's files (default {STATE})"
    )


def _publish_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("DNS publication (like DnsDomainPublishList)")
    g.add_argument(
        "--publish",
        action="append",
        metavar="DOMAIN[,PRIO[,WEIGHT]]",
        required=required,
        help="a domain to publish the SRV record in (repeatable); PRIO and WEIGHT default "
        "to --priority and --weight",
    )
    g.add_argument(
        "--priority",
        type=_srv_value,
        default=0,
        metavar="N",
        help="SRV priority, 0..65535: clients try the lowest first (default 0, as Windows)",
    )
    g.add_argument(
        "--weight",
        type=_srv_value,
        default=0,
        metavar="N",
        help="SRV weight, 0..65535: the share of clients among hosts of one priority "
        "(default 0, as Windows)",
    )
    g.add_argument(
        "--dns-server",
        type=_dns_server,
        metavar="IP[:PORT]",
        help="the DNS server that takes the updates",
    )
    g.add_argument(
        "--tsig-key-file", metavar="FILE", help="BIND key file (tsig-keygen) allowed to update"
    )
    g.add_argument("--host-name", metavar="FQDN", help="this host's DNS name (default: its FQDN)")
    g.add_argument(
        "--address",
        action="append",
        type=_ip,
        metavar="IP",
        help="this host's address(es) for A/AAAA records",
    )


def _host_id() -> str:
    from pathlib import Path

    try:
        return Path("/etc/machine-id").read_text().strip() or _hostname()
    except OSError:
        return _hostname()


def _hostname() -> str:
    import socket

    return socket.getfqdn()


def cmd_install(args: argparse.Namespace) -> int:
    from ..catalog import load_catalog
    from ..errors import InvalidInput
    from ..keys import parse_key
    from ..kms.host import HostIdentity
    from ._common import root_public_key
    from .ao import _activator, _read_key

    key = _read_key(args)
    parse_key(key)
    host_id = args.host_id or _host_id()
    if sum([bool(args.online), bool(args.authority), args.get_iid, bool(args.apply_cid)]) != 1:
        raise InvalidInput(
            "choose one of --online URL, --authority DIR, --get-iid, --apply-cid CID"
        )
    current = _installed(args.state_dir, key)
    if current is not None and not args.reactivate and not args.apply_cid:
        cert = current.certificate
        if args.json:
            emit_json(
                {
                    "already_activated": True,
                    "epid": cert.epid,
                    "csvlk": current.csvlk_name,
                    "not_after": cert.not_after,
                    "kms_ids": sorted(str(k) for k in current.kms_ids),
                }
            )
        else:
            print(
                f"this host is already activated with this KMS host key ({current.csvlk_name}, "
                f"ePID {cert.epid}); nothing done. To activate it again (spends one of the "
                "host's 9 reactivations) add --reactivate"
            )
        return 0
    if args.get_iid:
        installation = HostIdentity.begin_phone(args.state_dir, key, host_id=host_id)
        if args.json:
            emit_json({"installation_id": installation.text(), "host_id": host_id})
        else:
            print(installation.text())
        return 0
    if args.apply_cid:
        root = root_public_key(args)
        if root is None:
            raise InvalidInput("--apply-cid needs the pinned root key (--root-key)")
        identity = HostIdentity.finish_phone(
            args.state_dir,
            key,
            args.apply_cid,
            load_catalog(args.catalog),
            root_key=root,
            host_id=host_id,
        )
    else:
        identity = HostIdentity.install(
            args.state_dir,
            key,
            _activator(args),
            load_catalog(args.catalog),
            host_id=host_id,
            now=int(time.time()),
        )
    cert = identity.certificate
    if args.json:
        emit_json(
            {
                "epid": cert.epid,
                "csvlk": identity.csvlk_name,
                "not_after": cert.not_after,
                "kms_ids": sorted(str(k) for k in identity.kms_ids),
            }
        )
    else:
        print(
            f"KMS host key {identity.csvlk_name} activated: ePID {cert.epid}, "
            f"certificate valid until {time.strftime('%Y-%m-%d', time.gmtime(cert.not_after))}"
        )
    return 0


def _installed(state_dir: str, key: str) -> Any:
    """The host's identity when it is activated with this very key and its certificate is
    still valid, else None (a first install, another key, or an identity to repair)."""
    from pathlib import Path

    from ..errors import AdbaError
    from ..keys import parse_key
    from ..kms.host import CSVLK_FILE, HostIdentity

    try:
        installed = Path(state_dir, CSVLK_FILE).read_text().strip()
        if parse_key(installed).text != parse_key(key).text:
            return None
        identity = HostIdentity.load(state_dir)
    except (OSError, ValueError, KeyError, AdbaError):
        return None
    return identity if identity.certificate.not_after > time.time() else None


def _publication(args: argparse.Namespace, port: int) -> Any:
    """The :class:`~adba.kms.publication.Publication` the options ask for, or None without
    --publish."""
    from ..discovery import load_tsig_key, parse_publish_entry
    from ..errors import InvalidInput
    from ..kms.publication import Publication

    if not args.publish:
        return None
    if not args.dns_server or not args.tsig_key_file:
        raise InvalidInput("--publish needs --dns-server and --tsig-key-file")
    entries = tuple(
        parse_publish_entry(e, priority=args.priority, weight=args.weight) for e in args.publish
    )
    return Publication(
        entries,
        host=(args.host_name or _hostname()).rstrip("."),
        port=port,
        addresses=tuple(args.address or ()),
        server=args.dns_server,
        key=load_tsig_key(args.tsig_key_file),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys
    from pathlib import Path

    from ..errors import InvalidInput
    from ..kms.host import RECORDS, HostIdentity, KmsHost, StateLock
    from ..kms.store import KmsStore

    if args.max_per_source is None:
        args.max_per_source = min(64, args.max_connections)
    if args.first_byte_deadline is None:
        args.first_byte_deadline = min(1.0, args.deadline)
    if args.max_per_source > args.max_connections:
        raise InvalidInput(
            f"--max-per-source {args.max_per_source} is more than --max-connections "
            f"{args.max_connections}"
        )
    if args.first_byte_deadline > args.deadline:
        raise InvalidInput(
            f"--first-byte-deadline {args.first_byte_deadline:g} is longer than --deadline "
            f"{args.deadline:g}"
        )
    if args.workers > 64:
        raise InvalidInput(f"--workers {args.workers}: at most 64")
    share = -(-args.max_connections // args.workers), -(-args.max_per_source // args.workers)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("adba")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if args.quiet else logging.INFO)
    identity = HostIdentity.load(args.state_dir)
    publication = _publication(args, args.port)
    api = _clients_api(args)
    lock = StateLock(args.state_dir)
    try:
        store = KmsStore(Path(args.state_dir) / RECORDS)
        try:
            host = KmsHost(
                identity,
                store,
                deadline=args.deadline,
                first_byte=args.first_byte_deadline,
                max_connections=share[0],
                max_per_source=share[1],
                log_interval=args.log_interval,
            )
            workers = None
            if args.workers > 1:  # before any thread or event loop: the workers are forked
                from ..kms.host import default_addresses
                from ..kms.workers import fork_workers

                workers = fork_workers(  # and this process is worker 0
                    host, args.workers - 1, args.listen or default_addresses(), args.port
                )
            if api is not None:
                api.start()
            _run_host(host, args, publication, workers)
        finally:
            if api is not None:
                api.stop()
            store.close()
    finally:
        lock.release()
    return 130 if host.signal == signal.SIGINT else 0


def _clients_api(args: argparse.Namespace) -> Any:
    """The read-only clients API the options ask for (not started), or None."""
    from ..errors import InvalidInput

    if args.clients_api is None:
        if args.clients_token_file or args.clients_tls_cert or args.clients_tls_key:
            raise InvalidInput("--clients-token-file and --clients-tls-* need --clients-api PORT")
        return None
    if not args.clients_token_file:
        raise InvalidInput("--clients-api needs --clients-token-file (the API is authenticated)")
    if bool(args.clients_tls_cert) != bool(args.clients_tls_key):
        raise InvalidInput("give both --clients-tls-cert and --clients-tls-key (or neither)")
    from ..kms.clients_api import ClientsApi, read_token

    address = (args.listen or ["0.0.0.0"])[0]
    return ClientsApi(
        args.state_dir,
        address,
        args.clients_api,
        read_token(args.clients_token_file),
        tls_cert=args.clients_tls_cert,
        tls_key=args.clients_tls_key,
    )


def _run_host(host: Any, args: argparse.Namespace, publication: Any, workers: Any = None) -> None:
    import asyncio

    from ..kms.host import default_addresses, run_loop
    from ..kms.publication import keep_published

    async def main() -> None:
        task = (
            asyncio.create_task(keep_published(publication, host.record_meta))
            if publication
            else None
        )
        try:
            await host.serve(
                args.listen or default_addresses(),
                args.port,
                metrics_port=args.metrics_port,
                workers=workers,
            )
        finally:
            if task:
                task.cancel()

    run_loop(main())
    if host.failure:
        from ..errors import KmsError

        raise KmsError(host.failure)


def cmd_publish(args: argparse.Namespace) -> int:
    return _publish(args, remove=False)


def cmd_unpublish(args: argparse.Namespace) -> int:
    return _publish(args, remove=True)


def _publish(args: argparse.Namespace, *, remove: bool) -> int:
    from pathlib import Path

    from ..kms.publication import record_publication

    publication = _publication(args, args.port)
    results = publication.unpublish() if remove else publication.publish()
    if Path(args.state_dir, "kms.sqlite").exists() or Path(args.state_dir).is_dir():
        record_publication(args.state_dir, [] if remove else results)
    for r in results:
        print(
            f"{'removed from' if remove else 'published in'} {r.domain} via {r.server}: "
            + "; ".join(r.records)
        )
    return 0


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def cmd_status(args: argparse.Namespace) -> int:
    import uuid

    from ..catalog import load_catalog
    from ..kms.host import status_view

    view = status_view(args.state_dir)
    cat = load_catalog()
    for g in view["groups"]:
        g["name"] = cat.group_name(uuid.UUID(g["kms_id"]))
    if args.json:
        emit_json(view)
        return 0
    if not view["activated"]:
        print(f"no activated KMS host key in {args.state_dir}: run `adba kms install-key`")
    else:
        print(f"host ePID {view['epid']} ({view['csvlk']}): activated")
    if view["serving"]:
        state = "serving now"
    elif view["served"]:
        state = "not serving now"
    else:
        state = "not served yet (start it with `adba kms serve`)"
    saved = f", records saved {_when(view['saved_at'])} UTC" if view["saved_at"] else ""
    unsaved = (
        ", some records wait in kms.unsaved.json (the database refused them)"
        if view["unsaved"]
        else ""
    )
    print(f"host: {state}{saved}{unsaved}")
    th = view["thresholds"]
    print(
        f"count {view['count']}: the cache holds {view['count']} of {view['cache_capacity']} "
        f"machines (thresholds: {th['client']} for clients, {th['server']} for servers)"
    )
    rows = [
        [g["name"], str(g["machines"]), f"{g['clients']}/{g['servers']}"] for g in view["groups"]
    ]
    print(
        table(rows, ["ACTIVATION GROUP", "MACHINES", "CLIENTS/SERVERS"])
        if rows
        else "no requests yet"
    )
    machines = [
        [
            m["machine"] or "-",
            m["kind"],
            _when(int(m["last_seen"])),
            "activated" if m["activated"] else "waiting",
        ]
        for m in view["machines"]
    ]
    if machines:
        print(table(machines, ["MACHINE", "KIND", "LAST SEEN", "STATE"]))
    published = view["published"]
    print(
        "SRV published in: "
        + (
            ", ".join(f"{p['domain']} ({_srv_of(p)}via {p['server']})" for p in published)
            if published
            else "nowhere"
        )
    )
    return 0


def _srv_of(published: dict[str, Any]) -> str:
    """``"priority 0, weight 60, "`` from a publication's records (empty if none is SRV)."""
    for record in published.get("records", ()):
        fields = str(record).split()  # "<name>. <ttl> SRV <priority> <weight> <port> <target>"
        if len(fields) == 7 and fields[2] == "SRV":
            return f"priority {fields[3]}, weight {fields[4]}, "
    return ""


def cmd_clients(args: argparse.Namespace) -> int:
    from ..kms.host import client_rows

    rows = client_rows(args.state_dir)
    if args.json:
        emit_json(rows)
    elif rows:
        print(
            table(
                [
                    [
                        str(r["machine"]),
                        str(r["cmid"]),
                        str(r["edition"]),
                        _when(int(r["first_seen"])),
                        _when(int(r["last_seen"])),
                        str(r["state"]),
                    ]
                    for r in rows
                ],
                ["MACHINE", "CMID", "EDITION", "FIRST SEEN", "LAST SEEN", "STATE"],
            )
        )
    else:
        print("no clients yet")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from ..kms.client import hostport, probe

    host, port = args.address
    response = probe(host, port, timeout=args.timeout)
    print(f"{hostport(host, port)} answers (protocol v2, ePID {response.certificate.epid})")
    return 0
