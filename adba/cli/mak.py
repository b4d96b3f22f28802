"""``adba mak proxy`` -- MAK proxy activation: many machines' installation IDs in one request."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InvalidInput
from ._common import add_json, emit_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROXY = """\\
Sends the installation IDs collected from many machines (`adba agent get-iid --json` output
files) to the authority in one request, and writes one confirmation file per machine
(<machine>.cids.json) for `adba agent apply-cid --file` on that machine.

example:
  adba mak proxy --online https://activation.example.com --out cids/ iids/*.iid.json
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("mak", help="MAK proxy activation")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    proxy = verbs.add_parser(
        "proxy", help="activate many machines in one request", description=PROXY
    )
    proxy.add_argument(
        "files", nargs="+", metavar="IID.json", help="`adba agent get-iid --json` files"
    )
    proxy.add_argument("--online", metavar="URL", required=True, help="the authority's URL")
    proxy.add_argument(
        "--authority-ca-file", metavar="PEM", help="CA of the authority's TLS certificate"
    )
    proxy.add_argument(
        "--out", metavar="DIR", required=True, help="where to write the confirmation files"
    )
    add_json(proxy)
    proxy.set_defaults(func=cmd_proxy)


def cmd_proxy(args: argparse.Namespace) -> int:
    from ..authority.client import RemoteAuthority

    machines = []
    for name in args.files:
        try:
            machines.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read {name}: {exc}") from exc
    iids = [p["installation_id"] for m in machines for p in m.get("products", [])]
    if not iids:
        raise InvalidInput("no installation IDs in those files")
    results = {
        r["installation_id"]: r
        for r in RemoteAuthority(args.online, ca_file=args.authority_ca_file).proxy(iids)
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for m in machines:
        products = []
        for p in m.get("products", []):
            r = results.get(p["installation_id"], {})
            products.append(
                {
                    "edition": p["edition"],
                    "installation_id": p["installation_id"],
                    "confirmation_id": r.get("confirmation_id"),
                    "error": r.get("error"),
                    "message": r.get("message"),
                }
            )
        target = out / f"{m.get('machine', 'machine')}.cids.json"
        target.write_text(
            json.dumps(
                {"machine": m.get("machine"), "cmid": m.get("cmid"), "products": products},
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
        ok = sum(1 for p in products if p["confirmation_id"])
        summary.append(
            {
                "machine": m.get("machine"),
                "file": str(target),
                "confirmed": ok,
                "refused": len(products) - ok,
            }
        )
    if args.json:
        emit_json(summary)
    else:
        for s in summary:
            print(
                f"{s['machine']}: {s['confirmed']} confirmed, {s['refused']} refused -> {s['file']}"
            )
    return 0
