"""``adba authority ...`` -- the vendor's activation authority: keys, records, the service."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..errors import InvalidInput
from ._common import (
    Formatter,
    add_json,
    catalog,
    emit_json,
    non_negative_int,
    pick,
    port,
    positive_int,
    timeout,
)

INIT = """\
Creates an activation authority in DIR: an Ed25519 root key, a signing key with a
certificate under the root, the secret that tags CSVLKs and MAKs, and its records.
DIR/root.pub is the public root key that clients pin (ship it beside the catalogue).

With --database postgresql://..., the records go to that (empty) PostgreSQL database and
DIR keeps the keys and the database's URL (DIR/records.url); else DIR/records.sqlite.

example:
  adba authority init --path /var/lib/adba/authority
  adba authority init --path /var/lib/adba/authority --database postgresql://adba@db/adba
"""
MINT = """\
Issues a new CSVLK (for a CSVLK product of the catalogue) or MAK (for an edition).
The key is printed once, on stdout; keep it secret.

example:
  adba authority mint --path /var/lib/adba/authority --type csvlk --product "Nimbus Server 2026 CSVLK"
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("authority", help="the activation authority (vendor side)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    init = verbs.add_parser(
        "init", help="create an authority", description=INIT, formatter_class=Formatter
    )
    init.add_argument("--path", metavar="DIR", help="where the authority lives (ADBA_AUTHORITY)")
    _database_arg(init)
    _cert_days_arg(init)
    add_json(init)
    init.set_defaults(func=cmd_init)

    mint = verbs.add_parser(
        "mint", help="issue a CSVLK or MAK", description=MINT, formatter_class=Formatter
    )
    mint.add_argument("--path", metavar="DIR", help="the authority directory (ADBA_AUTHORITY)")
    _database_arg(mint)
    mint.add_argument("--type", required=True, choices=["csvlk", "mak"], help="key type")
    mint.add_argument("--product", required=True, help="CSVLK product (csvlk) or edition (mak)")
    mint.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    mint.add_argument(
        "--count",
        type=positive_int,
        metavar="N",
        help="machines a MAK activates (MAKs only; default 1)",
    )
    add_json(mint)
    mint.set_defaults(func=cmd_mint)

    serve = verbs.add_parser("serve", help="serve the authority over HTTP(S)", description=SERVE)
    _path_arg(serve)
    serve.add_argument(
        "--listen", default="127.0.0.1", metavar="ADDR", help="address (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=port, default=8443, help="TCP port (default 8443)")
    serve.add_argument("--tls-cert", metavar="PEM", help="certificate chain (TLS)")
    serve.add_argument("--tls-key", metavar="PEM", help="private key of the certificate")
    serve.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    serve.add_argument(
        "--request-timeout",
        type=timeout,
        default=10.0,
        metavar="S",
        help="seconds a client has to send a whole request (default 10)",
    )
    serve.add_argument(
        "--max-connections",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="open connections at most (default: from the file-descriptor limit)",
    )
    serve.add_argument(
        "--max-per-address",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="open connections per client address (default: an eighth of the maximum)",
    )
    serve.set_defaults(func=cmd_serve)

    confirm = verbs.add_parser(
        "confirm", help="installation ID -> confirmation ID", description=CONFIRM
    )
    _path_arg(confirm)
    confirm.add_argument(
        "installation_id", metavar="IID", help="the digits, with or without dashes"
    )
    confirm.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    add_json(confirm)
    confirm.set_defaults(func=cmd_confirm)

    grant = verbs.add_parser("grant-hosts", help="raise a KMS key's host limit", description=GRANT)
    _path_arg(grant)
    key = grant.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-file", metavar="FILE", help="file holding the KMS key (CSVLK)")
    key.add_argument("--key", help="the KMS key itself")
    grant.add_argument("--hosts", type=positive_int, required=True, help="how many more hosts")
    grant.set_defaults(func=cmd_grant)

    rotate = verbs.add_parser(
        "rotate", help="new signing key under the same root", description=ROTATE
    )
    _path_arg(rotate)
    _cert_days_arg(rotate)
    rotate.add_argument(
        "--retire",
        action="store_true",
        help="retire the old key: delete it; agents refuse what it signed",
    )
    rotate.set_defaults(func=cmd_rotate)

    retire = verbs.add_parser("retire", help="retire a rotated-out signing key", description=RETIRE)
    _path_arg(retire)
    retire.add_argument("key_id", metavar="KEYID", help="the key id (16 hex digits)")
    retire.set_defaults(func=cmd_retire)

    report = verbs.add_parser(
        "report", help="keys, activations, hosts, counts left", description=REPORT
    )
    _path_arg(report)
    report.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    add_json(report)
    report.set_defaults(func=cmd_report)


def _cert_days_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cert-days",
        type=positive_int,
        default=730,
        metavar="DAYS",
        help="validity of the signing certificate (default 730); rotate before it ends",
    )


def _path_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", metavar="DIR", help="the authority directory (ADBA_AUTHORITY)")
    _database_arg(p)


def _database_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database",
        metavar="URL",
        help="the records on PostgreSQL, postgresql://USER@HOST/NAME (ADBA_AUTHORITY_DATABASE; "
        "default: the one given at init, else DIR/records.sqlite)",
    )


def _database(args: argparse.Namespace) -> str | None:
    value = pick(args, "database", "authority")
    return str(value) if value else None


def _open(args: argparse.Namespace) -> Any:
    from ..authority import LocalAuthority

    return LocalAuthority.open(_path(args), database=_database(args))


def _path(args: argparse.Namespace) -> str:
    path = pick(args, "path", "authority")
    if not path:
        raise InvalidInput("give --path DIR (or ADBA_AUTHORITY)")
    return str(path)


def cmd_init(args: argparse.Namespace) -> int:
    from ..authority import LocalAuthority

    auth = LocalAuthority.init(
        _path(args), now=int(time.time()), cert_days=args.cert_days, database=_database(args)
    )
    root_pub = f"{auth.path}/root.pub"
    if args.json:
        emit_json({"path": str(auth.path), "root_public_key": root_pub})
    else:
        print(f"authority created in {auth.path}; clients pin {root_pub}")
    return 0


def cmd_mint(args: argparse.Namespace) -> int:
    from ..keys import KeyType

    cat = catalog(args)
    auth = _open(args)
    # every option is checked by mint before anything is recorded or a serial used
    key = auth.mint(
        KeyType[args.type.upper()], args.product, cat, now=int(time.time()), mak_count=args.count
    )
    if args.json:
        emit_json(
            {
                "key": key.text,
                "type": key.type.name,
                "serial": key.serial,
                "partial_key": key.partial,
            }
        )
    else:
        print(key.text)
    return 0


SERVE = """\
Serves the authority's JSON API (versioned: /v1/...) with uvicorn; TLS with --tls-cert and
--tls-key. Bodies over 256 KiB, non-JSON bodies, malformed JSON, unknown keys and a reused
request id with another body are refused with a 4xx and {"error", "message"}; nothing is
recorded for them. A client must send its whole request within --request-timeout; open
connections are capped, in all and per client address. Ctrl-C exits 130, SIGTERM 0.
With --database, the records are on PostgreSQL and several replicas (each with a copy of
DIR's key files) serve one vendor: every limit and request id holds across them. A database
that cannot be reached gives 503 with Retry-After; /v1/health says so too.

example:
  adba authority serve --path /var/lib/adba/authority --listen 0.0.0.0 --port 8443 \\
      --tls-cert /etc/adba/authority.pem --tls-key /etc/adba/authority.key
  adba authority serve --path /etc/adba/authority-keys --database postgresql://adba@db/adba
"""
CONFIRM = """\
Answers an installation ID (read out by a customer, or from `adba ... --get-iid`) with a
confirmation ID to type back in. Limits apply as online.

example:
  adba authority confirm --path /var/lib/adba/authority 1234567-2345678-...
"""
GRANT = """\
Raises the number of hosts a KMS key may activate (6 by default).

example:
  adba authority grant-hosts --path /var/lib/adba/authority --key-file kms.txt --hosts 2
"""
ROTATE = """\
Issues a new signing key under the pinned root. Objects published before keep verifying
(their licenses carry the old certificate, until it ends); new ones use the new key.
With --retire the old private key is deleted and the new certificate states it retired:
agents that pin DIR/retired.pem, or have seen a newer license, refuse what it signed.

example:
  adba authority rotate --path /var/lib/adba/authority --retire
"""
RETIRE = """\
Retires a signing key rotated out before (`authority report` lists the ids): deletes its
private key, re-certifies the current key with the list of retired keys (carried by every
license from now on) and writes DIR/retired.pem for clients to pin beside root.pub.
Forests whose objects were signed by it activate again (no activation is counted).

example:
  adba authority retire --path /var/lib/adba/authority 0123456789abcdef
"""
REPORT = """\
Lists the keys (never their text), activations per key, KMS hosts and reactivations left,
MAK activations left.

example:
  adba authority report --path /var/lib/adba/authority --json
"""


def cmd_serve(args: argparse.Namespace) -> int:
    from ..authority.server import Limits, serve
    from ..authority.service import create_app

    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidInput("give both --tls-cert and --tls-key (or neither)")
    if args.request_timeout < 0.1:
        raise InvalidInput("--request-timeout must be 0.1 to 3600 seconds")
    app = create_app(_open(args), catalog(args))
    return serve(
        app,
        host=args.listen,
        port=args.port,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        limits=Limits(
            request_timeout=args.request_timeout,
            max_connections=args.max_connections,
            max_per_source=args.max_per_address,
        ),
    )


def cmd_confirm(args: argparse.Namespace) -> int:
    from ..confirmation import Installation

    installation = Installation.parse(args.installation_id)
    cid = _open(args).confirm(installation, catalog(args), now=int(time.time()))
    if args.json:
        emit_json(
            {
                "installation_id": installation.text(),
                "confirmation_id": cid.text(),
                "kind": installation.kind_name,
            }
        )
    else:
        print(cid.text())
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    from .ao import _read_key

    limit = _open(args).grant_hosts(_read_key(args), args.hosts)
    print(f"the KMS key may now activate {limit} hosts")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:

    auth = _open(args)
    old = auth.certificate.key_id.hex()
    cert = auth.rotate(now=int(time.time()), cert_days=args.cert_days, retire=args.retire)
    if args.retire:
        print(
            f"new signing key {cert.key_id.hex()}; the old key {old} is retired and deleted: "
            f"ship {auth.path}/retired.pem beside root.pub"
        )
    else:
        print(
            f"new signing key {cert.key_id.hex()} under the same root; earlier objects still "
            f"verify (retire the old key with `adba authority retire {old}`)"
        )
    return 0


def cmd_retire(args: argparse.Namespace) -> int:

    auth = _open(args)
    auth.retire(args.key_id.strip().lower(), now=int(time.time()))
    print(
        f"signing key {args.key_id} is retired and deleted: ship {auth.path}/retired.pem "
        "beside root.pub"
    )
    return 0


def _clean(value: object) -> str:
    """A field from the records as printable text: control characters (terminal escape
    sequences) and other non-printables are shown escaped, never sent to the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cmd_report(args: argparse.Namespace) -> int:

    report = _open(args).report(catalog(args))
    if args.json:
        emit_json(report)
        return 0
    c = _clean
    print(f"root key {c(report['root_key_id'])}, signing key {c(report['signing_key_id'])}")
    if report["retired_key_ids"]:
        print(f"retired signing keys: {', '.join(c(k) for k in report['retired_key_ids'])}")
    for k in report["keys"]:
        head = f"{c(k['type'])} {c(k['product'])} #{c(k['serial'])}"
        if k["type"] == "CSVLK":
            print(
                f"{head}: {c(k['forest_activations'])} forest activation(s), "
                f"{len(k['kms_hosts'])} of {c(k['kms_host_limit'])} KMS hosts"
            )
            for h in k["kms_hosts"]:
                print(
                    f"    host {c(h['host'])}: {c(h['activations'])} activation(s), "
                    f"{c(h['reactivations_left'])} reactivation(s) left"
                )
        else:
            print(f"{head}: {c(k['mak_used'])} of {c(k['mak_allowed'])} activations used")
    return 0
