"""``adba``: one command, noun then verb. A thin layer: parse, call one library function per
verb, format, map errors to exit codes. ``main(argv) -> int`` so tests run it in-process.

argparse (stdlib) is the CLI framework on purpose: the agent runs at every boot, and click
costs ~40 ms of imports against argparse's ~13 ms.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import EXIT_CODES, AdbaError, exit_code_for
from . import agent, ao, authority, demo, directory
from ._common import Formatter

__all__ = ["build_parser", "main", "run"]

_EXIT_TABLE = "\n".join(
    f"  {code:>3}  {meaning}" + (f" ({family})" if family else "")
    for code, (family, meaning) in EXIT_CODES.items()
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    directory.register(nouns)
    ao.register(nouns)
    authority.register(nouns)
    agent.register(nouns)
    demo.register(nouns)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("adba")
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
