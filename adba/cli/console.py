"""``adba console serve`` -- the admin's web console."""

from __future__ import annotations

import argparse

from ._common import Formatter, add_connection_options, catalog, pick, port, root_public_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SERVE = """\
Serves the web console over HTTPS (--tls-cert/--tls-key; its cookies are Secure): the
inventory (overview, machines with filter, sort, search and CSV/JSON export, KMS hosts, keys)
and the directory (activation objects with delete, the audit trail). Users sign in with their
own directory account: a DN, an AD account name (user@realm), or a plain name put into
--user-template. The console binds as them over verified TLS (ldaps://, or StartTLS on
ldap://, checked against --ca-file) and reads and writes the directory with that bind only,
so each user sees and may do what the directory grants them. Credentials stay in the
server's memory; the cookie holds a random session id. Failed sign-ins: at most 5 a minute
per address and per user, then 429.

example:
  adba console serve -H ldaps://dc1.example.test --ca-file ca.pem \\
      --user-template 'uid={},ou=People,dc=example,dc=test' \\
      --tls-cert /etc/adba/console.pem --tls-key /etc/adba/console.key --port 8443
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("console", help="the web console: inventory, objects, audit trail")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    serve = verbs.add_parser(
        "serve", help="serve the web console (HTTPS)", description=SERVE, formatter_class=Formatter
    )
    add_connection_options(serve)
    serve.add_argument(
        "--db", metavar="PATH", help="inventory database (default: under /var/lib/adba or ~)"
    )
    serve.add_argument(
        "--listen", default="127.0.0.1", metavar="ADDR", help="address (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=port, default=8443, help="port (default 8443)")
    serve.add_argument("--tls-cert", metavar="PEM", required=True, help="certificate chain")
    serve.add_argument("--tls-key", metavar="PEM", required=True, help="its private key")
    serve.add_argument(
        "--user-template",
        metavar="DN",
        help="bind DN for a plain user name, {} standing for the name "
        "(e.g. 'uid={},ou=People,dc=example,dc=test'); default: users give a DN",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="a session ends after this long without a request (default 900)",
    )
    serve.add_argument(
        "--root-key", metavar="PEM", help="pinned authority root public key (verifies objects)"
    )
    serve.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    serve.set_defaults(func=cmd_serve)


def settings(args: argparse.Namespace) -> Any:
    """The console's settings from the command line (and adba.toml / ADBA_* for the
    directory)."""
    from ..console.app import ConsoleSettings
    from ..errors import InvalidInput
    from ..inventory import default_db_path
    from ._common import _checked_dn

    uri = pick(args, "uri")
    if not uri:
        raise InvalidInput("no directory URI: give --uri (or ADBA_URI, or uri in adba.toml)")
    if pick(args, "insecure"):
        raise InvalidInput("the console signs users in over TLS only: drop --insecure")
    if args.bind_dn or args.password_file:
        raise InvalidInput("the console binds as each user who signs in: drop -D/--password-file")
    if not 10 <= args.idle_timeout <= 86400:
        raise InvalidInput("--idle-timeout is 10 to 86400 seconds")
    if args.user_template is not None and args.user_template.count("{}") != 1:
        raise InvalidInput("--user-template needs one {} (where the user name goes)")
    db = args.db
    if db is None:
        import os

        db = default_db_path()
        os.makedirs(os.path.dirname(db), exist_ok=True)
    return ConsoleSettings(
        uri=uri,
        db_path=db,
        ca_file=pick(args, "ca_file"),
        tls_name=args.tls_name,
        base=_checked_dn(args, "base", "--base"),
        user_template=args.user_template,
        catalog=catalog(args),
        root_public_key=root_public_key(args),
        connect_timeout=args.timeout,
        idle_timeout=args.idle_timeout,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from ..authority.server import serve
    from ..console.app import create_app

    app = create_app(settings(args))
    return serve(
        app, host=args.listen, port=args.port, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key
    )
