"""``adba authority init|mint`` -- the vendor's local activation authority."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..errors import InvalidInput
from ._common import Formatter, add_json, catalog, emit_json, pick

INIT = """\
Creates an activation authority in DIR: an Ed25519 root key, a signing key with a
certificate under the root, the secret that tags CSVLKs and MAKs, and its records.
DIR/root.pub is the public root key that clients pin (ship it beside the catalogue).

example:
  adba authority init --path /var/lib/adba/authority
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
    add_json(init)
    init.set_defaults(func=cmd_init)

    mint = verbs.add_parser(
        "mint", help="issue a CSVLK or MAK", description=MINT, formatter_class=Formatter
    )
    mint.add_argument("--path", metavar="DIR", help="the authority directory (ADBA_AUTHORITY)")
    mint.add_argument("--type", required=True, choices=["csvlk", "mak"], help="key type")
    mint.add_argument("--product", required=True, help="CSVLK product (csvlk) or edition (mak)")
    mint.add_argument("--catalog", metavar="FILE", help="product catalogue (default: built-in)")
    add_json(mint)
    mint.set_defaults(func=cmd_mint)


def _path(args: argparse.Namespace) -> str:
    path = pick(args, "path", "authority")
    if not path:
        raise InvalidInput("give --path DIR (or ADBA_AUTHORITY)")
    return str(path)


def cmd_init(args: argparse.Namespace) -> int:
    from ..authority import LocalAuthority

    auth = LocalAuthority.init(_path(args), now=int(time.time()))
    root_pub = f"{auth.path}/root.pub"
    if args.json:
        emit_json({"path": str(auth.path), "root_public_key": root_pub})
    else:
        print(f"authority created in {auth.path}; clients pin {root_pub}")
    return 0


def cmd_mint(args: argparse.Namespace) -> int:
    from ..authority import LocalAuthority
    from ..keys import KeyType

    cat = catalog(args)
    auth = LocalAuthority.open(_path(args))
    key = auth.mint(KeyType[args.type.upper()], args.product, cat, now=int(time.time()))
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
