"""``adba kms install-key|serve|status|clients|publish|unpublish`` -- the KMS host."""

from __future__ import annotations

import argparse
import time

from ._common import add_json, emit_json, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATE = "/var/lib/adba/kms"

INSTALL = f"""\
Installs a KMS host key (a CSVLK) on this host and activates it with the activation
authority, which certifies a new host key pair for it (at most 6 hosts per KMS key, 9
reactivations per host). The CSVLK is kept in STATE/csvlk.key, mode 0600.

example:
  adba kms install-key --state-dir {STATE} --key-file csvlk.txt --authority /var/lib/adba/authority
"""
SERVE = f"""\
Answers KMS activation requests (TCP, one request and one response per connection) on
IPv4 and IPv6, port 1688 by default. Logs one key=value line per event on stdout. With
--publish, registers the _vlmcs._tcp SRV record (and the host's A/AAAA records) by DNS
dynamic update (RFC 2136, TSIG) at start and daily.

example:
  adba kms serve --state-dir {STATE} --metrics-port 9688 \\
      --publish example.test --publish branch.example.test,10,50 \\
      --dns-server 192.0.2.53 --tsig-key-file /etc/adba/kms-update.key --host-name kms1.example.test
"""
PROBE = """\
Sends one well-formed request for an activation group no host covers and waits for the
signed answer: a real round trip through the host's event loop, counted nowhere. Exit 0 when
the host answers, 19 when it does not (a health check).

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
domain by DNS dynamic update with TSIG. When the server refuses, publish the records by hand
or configure clients with a static KMS host (kms_host in agent.toml).

example:
  adba kms publish --publish example.test,0,100 --dns-server 192.0.2.53 \\
      --tsig-key-file /etc/adba/kms-update.key --host-name kms1.example.test --address 192.0.2.10
"""


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
    add_json(inst)
    inst.set_defaults(func=cmd_install)

    serve = verbs.add_parser("serve", help="answer activation requests", description=SERVE)
    _state(serve)
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="address to listen on (repeatable; default 0.0.0.0 and ::)",
    )
    serve.add_argument("--port", type=int, default=1688, help="TCP port (default 1688)")
    serve.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port"
    )
    serve.add_argument(
        "--deadline",
        type=float,
        default=5.0,
        metavar="S",
        help="per-connection deadline (default 5 s)",
    )
    serve.add_argument(
        "--max-connections", type=int, default=512, help="connections served at once (default 512)"
    )
    serve.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings only (not every request)"
    )
    _publish_options(serve, required=False)
    serve.set_defaults(func=cmd_serve)

    probe = verbs.add_parser(
        "probe", help="is a KMS host answering? (counts nothing)", description=PROBE
    )
    probe.add_argument("address", nargs="?", default="127.0.0.1:1688", help="host[:port]")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
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
        pub.add_argument("--port", type=int, default=1688, help="the port clients should use")
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
        help="a domain to publish the SRV record in (repeatable)",
    )
    g.add_argument(
        "--dns-server", metavar="IP[:PORT]", help="the DNS server that takes the updates"
    )
    g.add_argument(
        "--tsig-key-file", metavar="FILE", help="BIND key file (tsig-keygen) allowed to update"
    )
    g.add_argument("--host-name", metavar="FQDN", help="this host's DNS name (default: its FQDN)")
    g.add_argument(
        "--address",
        action="append",
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


def _publisher(args: argparse.Namespace, port: int) -> Any:
    """A function that publishes (or unpublishes) per the options, or None without --publish."""
    from ..discovery import load_tsig_key, parse_publish_entry, publish_kms, unpublish_kms
    from ..errors import InvalidInput

    if not args.publish:
        return None
    if not args.dns_server or not args.tsig_key_file:
        raise InvalidInput("--publish needs --dns-server and --tsig-key-file")
    entries = [parse_publish_entry(e) for e in args.publish]
    key = load_tsig_key(args.tsig_key_file)
    host = (args.host_name or _hostname()).rstrip(".")
    addresses = args.address or []

    def run(remove: bool = False) -> Any:
        fn = unpublish_kms if remove else publish_kms
        return fn(
            entries, host=host, port=port, addresses=addresses, server=args.dns_server, key=key
        )

    return run


def _record_publication(state_dir: str, results: Any) -> None:
    from pathlib import Path

    from ..kms.store import KmsStore

    store = KmsStore(Path(state_dir) / "kms.sqlite")
    try:
        store.set_meta("published", _published_json(results))
    finally:
        store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys
    from pathlib import Path

    from ..errors import AdbaError
    from ..kms.host import RECORDS, HostIdentity, KmsHost, default_addresses
    from ..kms.store import KmsStore

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("adba")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if args.quiet else logging.INFO)
    identity = HostIdentity.load(args.state_dir)
    publish = _publisher(args, args.port)
    store = KmsStore(Path(args.state_dir) / RECORDS)
    host = KmsHost(identity, store, deadline=args.deadline, max_connections=args.max_connections)
    log = logging.getLogger("adba.kms")

    async def publisher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                results = await loop.run_in_executor(None, publish)
                host.store.set_meta("published", _published_json(results))
                log.info("event=published %s", " ".join(f"domain={r.domain}" for r in results))
            except AdbaError as exc:
                log.error("event=publish-failed reason=%s", exc.message)
            await asyncio.sleep(86400)

    async def main() -> None:
        task = asyncio.create_task(publisher()) if publish else None
        try:
            await host.serve(
                args.listen or default_addresses(), args.port, metrics_port=args.metrics_port
            )
        finally:
            if task:
                task.cancel()

    try:
        asyncio.run(main())
    finally:
        store.close()
    return 0


def _published_json(results: Any) -> str:
    import json

    return json.dumps(
        [
            {"domain": r.domain, "server": r.server, "records": r.records, "at": int(time.time())}
            for r in results
        ]
    )


def cmd_publish(args: argparse.Namespace) -> int:
    return _publish(args, remove=False)


def cmd_unpublish(args: argparse.Namespace) -> int:
    return _publish(args, remove=True)


def _publish(args: argparse.Namespace, *, remove: bool) -> int:
    from pathlib import Path

    run = _publisher(args, args.port)
    results = run(remove)
    if Path(args.state_dir, "kms.sqlite").exists() or Path(args.state_dir).is_dir():
        _record_publication(args.state_dir, [] if remove else results)
    for r in results:
        print(
            f"{'removed from' if remove else 'published in'} {r.domain} via {r.server}: "
            + "; ".join(r.records)
        )
    return 0


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def cmd_status(args: argparse.Namespace) -> int:
    from ..catalog import load_catalog
    from ..kms.host import status_view

    view = status_view(args.state_dir)
    cat = load_catalog()
    import uuid

    for g in view["groups"]:
        g["name"] = cat.group_name(uuid.UUID(g["kms_id"]))
    if args.json:
        emit_json(view)
        return 0
    if not view["activated"]:
        print(f"no activated KMS host key in {args.state_dir}: run `adba kms install-key`")
    else:
        print(f"host ePID {view['epid']} ({view['csvlk']})")
    th = view["thresholds"]
    print(
        f"count {view['count']} (thresholds: {th['client']} for clients, {th['server']} for "
        f"servers), cache holds {view['cache_capacity']}"
    )
    rows = [
        [g["name"], str(g["machines"]), f"{g['clients']}/{g['servers']}"] for g in view["groups"]
    ]
    print(
        table(rows, ["ACTIVATION GROUP", "MACHINES", "CLIENTS/SERVERS"])
        if rows
        else "no requests yet"
    )
    published = view["published"]
    print(
        "SRV published in: "
        + (
            ", ".join(f"{p['domain']} (via {p['server']})" for p in published)
            if published
            else "nowhere"
        )
    )
    return 0


def cmd_clients(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..catalog import load_catalog
    from ..kms.store import KmsStore

    store = KmsStore(Path(args.state_dir) / "kms.sqlite", readonly=True)
    try:
        clients = store.clients()
    finally:
        store.close()
    cat = load_catalog()
    rows = [
        {
            "machine": c.machine,
            "cmid": str(c.cmid),
            "edition": cat.sku_name(c.sku) or str(c.sku),
            "kind": "server" if c.kind else "client",
            "activation_group": cat.group_name(c.kms_id),
            "first_seen": c.first_seen,
            "last_seen": c.last_seen,
            "state": "activated" if c.activated else "waiting",
        }
        for c in clients
    ]
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
    import os
    import uuid

    from ..discovery import parse_nameserver
    from ..errors import KmsError
    from ..kms.client import _exchange, hostport
    from ..kms.protocol import STATUS_NOT_COVERED, Request, parse_response

    host, port = parse_nameserver(args.address, default_port=1688)
    probe = Request(
        1,
        uuid.UUID(int=1),
        uuid.UUID(int=0),
        uuid.UUID(int=0),
        int(time.time()),
        os.urandom(16),
        "adba-probe",
    )
    response = parse_response(_exchange(host, port, probe.encode(), args.timeout))
    if response.status != STATUS_NOT_COVERED or response.nonce != probe.nonce:
        raise KmsError(f"{hostport(host, port)} answered oddly")
    print(f"{hostport(host, port)} answers (ePID {response.certificate.epid})")
    return 0
