"""``adba``: one command, noun then verb. A thin layer: parse, call one library function per
verb, format, map errors to exit codes. ``main(argv) -> int`` so tests run it in-process.

argparse (stdlib) is the CLI framework on purpose: the agent runs at every boot, and click
costs ~40 ms of imports against argparse's ~13 ms.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ..errors import EXIT_CODES, AdbaError, exit_code_for
from ._common import Formatter, Parser

__all__ = ["build_parser", "main", "run"]

_EXIT_TABLE = "\n".join(
    f"  {code:>3}  {meaning}" + (f" ({family})" if family else "")
    for code, (family, meaning) in EXIT_CODES.items()
)


#: noun -> module that registers it, in help order
NOUNS = {
    "directory": "adba.cli.directory",
    "ao": "adba.cli.ao",
    "acl": "adba.cli.acl",
    "authority": "adba.cli.authority",
    "agent": "adba.cli.agent",
    "kms": "adba.cli.kms",
    "mak": "adba.cli.mak",
    "demo": "adba.cli.demo",
}


def _asked_noun(argv: Sequence[str] | None) -> str | None:
    for token in argv or ():
        if not token.startswith("-"):
            return token if token in NOUNS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the noun asked for is built (and imported), so
    ``adba agent run`` at boot does not load the admin commands."""
    parser = Parser(
        prog="adba",
        formatter_class=Formatter,
        description="Active Directory-based activation: directory, activation objects, authority.",
        epilog=(
            "example:\n"
            "  adba demo                        # the whole path on throwaway local servers\n"
            "  adba ao list -H ldaps://dc1.example.test --ca-file ca.pem \\\n"
            "      -D uid=admin,ou=People,dc=example,dc=test --password-file pw\n\n"
            "exit codes:\n" + _EXIT_TABLE
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )
    nouns = parser.add_subparsers(dest="noun", metavar="NOUN", required=True)
    asked = _asked_noun(argv)
    for noun, module in NOUNS.items():
        if asked is None or noun == asked:
            importlib.import_module(module).register(nouns)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("adba")
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or usage error (2)
        return int(exc.code or 0)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except AdbaError as exc:
        print(f"adba: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("adba: interrupted", file=sys.stderr)
        return exit_code_for(KeyboardInterrupt())


def run() -> None:
    sys.exit(main())
