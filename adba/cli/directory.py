"""``adba directory init|check``."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    Formatter,
    add_connection_options,
    add_json,
    emit_json,
    ldap_uri,
    ldapi_uri,
    pick,
    positive_int,
    say,
)

INIT_EXAMPLE = """\
Loads the msSPP schema into a running slapd over ldapi (SASL EXTERNAL, as root), indexes
msSPP-KMSIds, raises the size limits for 5 MiB licenses, installs the access rules, records
who publishes and deletes activation objects (the accesslog overlay, 90 days; --no-audit:
not) and creates the activation-objects container. Safe to run again.

example:
  sudo adba directory init -b dc=example,dc=test \\
      --admin-group "cn=ADBA Admins,ou=Groups,dc=example,dc=test" \\
      --computers ou=Computers,dc=example,dc=test \\
      -H ldap://127.0.0.1 -D cn=admin,dc=example,dc=test --password-file /root/ldap.pw
"""

CHECK_EXAMPLE = """\
Reports what is missing or wrong (exit code 8 if anything is).

example:
  adba directory check -H ldaps://ldap.example.test --ca-file ca.pem \\
      -D uid=adbaadmin,ou=People,dc=example,dc=test --password-file pw --json
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("directory", help="prepare and check a directory for ADBA")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    init = verbs.add_parser(
        "init",
        help="load schema, index, limits, ACLs, container",
        description=INIT_EXAMPLE,
        formatter_class=Formatter,
    )
    _config_options(init)
    init.add_argument(
        "--no-audit",
        action="store_true",
        help="do not record who publishes and deletes objects (the accesslog overlay)",
    )
    add_connection_options(init)
    add_json(init)
    init.set_defaults(func=cmd_init)

    check = verbs.add_parser(
        "check",
        help="report what is missing or wrong",
        description=CHECK_EXAMPLE,
        formatter_class=Formatter,
    )
    _config_options(check)
    add_connection_options(check)
    add_json(check)
    check.set_defaults(func=cmd_check)
    _register_replicate(verbs)


def _config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("slapd configuration")
    g.add_argument(
        "--config-uri",
        type=ldapi_uri,
        metavar="LDAPI",
        help="ldapi:// URI of slapd's cn=config (default ldapi://%%2Fvar%%2Frun%%2Fslapd%%2Fldapi)",
    )
    g.add_argument(
        "--admin-group", metavar="DN", help="group whose members publish and delete objects"
    )
    g.add_argument("--computers", metavar="DN", help="subtree holding the computer accounts")


def _config_opts(args: argparse.Namespace) -> Any:
    from ..directory.connection import ConnectionOptions
    from ..directory.openldap import DEFAULT_LDAPI

    return ConnectionOptions(
        uri=pick(args, "config_uri") or DEFAULT_LDAPI, connect_timeout=args.timeout
    )


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
        return
    print(f"container {report.container}")
    for item in report.items:
        mark = "skip" if getattr(item, "skipped", False) else "ok  " if item.ok else "FAIL"
        fix = f"  -> {item.fix}" if item.fix else ""
        print(f"  [{mark}] {item.name}: {item.detail}{fix}")


def cmd_init(args: argparse.Namespace) -> int:
    from ..directory import openldap
    from ..directory.store import validate_dn
    from ..errors import InvalidInput
    from ._common import connection_options, root_dn

    data = connection_options(args)
    admin_group, computers = pick(args, "admin_group"), pick(args, "computers")
    if not admin_group or not computers:
        raise InvalidInput("give --admin-group DN and --computers DN (who may publish, who reads)")
    validate_dn(admin_group)
    validate_dn(computers)
    root = root_dn(args, data)
    from ..directory import ad
    from ..directory.connection import session

    with session(data) as conn:
        if ad.is_active_directory(conn):
            raise InvalidInput(
                "this is Active Directory: its schema already has the msSPP classes and ADBA never "
                f"extends it; if `adba directory check` reports the container missing, {ad.FOREST_PREP}"
            )
    report = openldap.init(
        _config_opts(args),
        data,
        root=root,
        admin_group=admin_group,
        computers=computers,
        progress=None if args.json else (lambda step: say(f"init: {step}")),
        audit=not args.no_audit,
    )
    _print_report(report, args.json)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..directory import ad, openldap
    from ..directory.connection import session
    from ..errors import CheckFailed
    from ._common import connection_options, root_dn

    data = connection_options(args)
    root = root_dn(args, data)
    with session(data) as conn:
        active_directory = ad.is_active_directory(conn)
    config = _config_opts(args) if pick(args, "config_uri") else None
    try:
        if active_directory:
            report = ad.check(data, root=root)
        else:
            report = openldap.check(
                data,
                root=root,
                config=config,
                admin_group=pick(args, "admin_group"),
                computers=pick(args, "computers"),
            )
    except CheckFailed as exc:
        _print_report(exc.context["report"], args.json)
        raise
    _print_report(report, args.json)
    return 0


# -- replicate ---------------------------------------------------------------------------------
REPLICATE_EXAMPLE = """\
Makes this slapd replicate: as one provider of a multi-provider group (syncprov, a unique
server ID, one syncrepl per peer, multi-provider on), or as a read-only consumer of the
providers (one syncrepl each, writes referred to the first). Every link is TLS with the peer's
certificate checked (--peer-ca-file, as slapd reads it) and binds as a dedicated replication
identity that reads the whole suffix and writes nothing; it is created on the server that holds
the tree. Run it on each server over ldapi as root, the server holding the tree first; a
server joins with an empty database. Safe to run again. `directory check --config-uri` then
reports the peers, their contextCSN agreement and the identity's rights.

example:
  sudo adba directory replicate --server-id 1 \\
      --peer ldaps://ldap2.example.test --peer ldaps://ldap3.example.test \\
      --replicator-password-file /root/replicator.pw --peer-ca-file /etc/ldap/ca.pem \\
      -H ldap://127.0.0.1 -D cn=admin,dc=example,dc=test --password-file /root/ldap.pw
  sudo adba directory replicate --role consumer \\
      --peer ldaps://ldap1.example.test --peer ldaps://ldap2.example.test \\
      --replicator-password-file /root/replicator.pw --peer-ca-file /etc/ldap/ca.pem \\
      -H ldap://127.0.0.1 -D cn=admin,dc=example,dc=test --password-file /root/ldap.pw
"""


def _register_replicate(verbs: Any) -> None:
    # literals, not replication's constants: building the parser must not import ldap3
    rep = verbs.add_parser(
        "replicate",
        help="make this slapd a replicating provider or a read-only consumer",
        description=REPLICATE_EXAMPLE,
        formatter_class=Formatter,
    )
    g = rep.add_argument_group("replication")
    g.add_argument(
        "--role", choices=["provider", "consumer"], default="provider", help="default provider"
    )
    g.add_argument(
        "--server-id", type=positive_int, metavar="N", help="provider: unique in the group, 1-4095"
    )
    g.add_argument(
        "--peer",
        action="append",
        type=ldap_uri,
        metavar="URI",
        help="provider: each other provider; consumer: each provider (repeat; ldaps:// or ldap://)",
    )
    g.add_argument(
        "--replicator-dn",
        metavar="DN",
        help="replication identity (default cn=adba-replicator,BASE)",
    )
    g.add_argument(
        "--replicator-password-file",
        metavar="FILE",
        required=True,
        help="its password (first line)",
    )
    g.add_argument(
        "--peer-ca-file",
        metavar="PEM",
        required=True,
        help="CA slapd checks its peers' certificates with",
    )
    g.add_argument(
        "--retry", help='retry schedule (default "5 10 60 +": 10 tries 5 s apart, then each minute)'
    )
    g.add_argument(
        "--update-ref", type=ldap_uri, metavar="URI", help="consumer: where writes are referred"
    )
    rep.add_argument(
        "--config-uri",
        type=ldapi_uri,
        metavar="LDAPI",
        help="ldapi:// URI of slapd's cn=config (default ldapi://%%2Fvar%%2Frun%%2Fslapd%%2Fldapi)",
    )
    add_connection_options(rep)
    add_json(rep)
    rep.set_defaults(func=cmd_replicate)


def cmd_replicate(args: argparse.Namespace) -> int:
    from ..directory import ad, replication
    from ..directory.connection import read_password_file, session
    from ..directory.store import validate_dn
    from ..errors import InvalidInput
    from ._common import connection_options, root_dn

    data = connection_options(args)
    root = root_dn(args, data)
    replicator = args.replicator_dn or f"cn=adba-replicator,{root}"
    validate_dn(replicator)
    want = replication.Replication(
        role=args.role,
        peers=tuple(args.peer or ()),
        replicator_dn=replicator,
        replicator_password=read_password_file(args.replicator_password_file),
        peer_ca_file=args.peer_ca_file,
        server_id=args.server_id,
        retry=args.retry or replication.DEFAULT_RETRY,
        update_ref=args.update_ref,
        timeout=max(1, int(args.timeout)),
    )
    want.validate(root)
    with session(data) as conn:
        if ad.is_active_directory(conn):
            raise InvalidInput(
                "this is Active Directory: its domain controllers replicate by themselves"
            )
    report = replication.replicate(
        _config_opts(args),
        data,
        root=root,
        want=want,
        progress=None if args.json else (lambda step: say(f"replicate: {step}")),
    )
    _print_report(report, args.json)
    return 0
