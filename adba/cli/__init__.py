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

from ..errors import EXIT_CODES, AdbaError, exit_code_for, from_exception
from ._common import Formatter, Parser, UsageError, emit_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["BROKEN_PIPE", "build_parser", "main", "run", "version"]

#: exit status when stdout is closed early (as a shell shows a SIGPIPE kill: 128 + 13)
BROKEN_PIPE = 141

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
    "avma": "adba.cli.avma",
    "inventory": "adba.cli.inventory",
    "console": "adba.cli.console",
    "demo": "adba.cli.demo",
    "completion": "adba.cli.completion",
}


def _asked_noun(argv: Sequence[str] | None) -> str | None:
    for token in argv or ():
        if not token.startswith("-"):
            return token if token in NOUNS else None
    return None


class _Version(argparse.Action):
    """``--version``: read from the installed package's metadata only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        print(f"adba {version()}")
        parser.exit()


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("adba")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """``-v`` after the noun or verb too (``adba agent run --once -v``), without resetting a
    ``-v`` given before it (the sub-parsers' default is SUPPRESS)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--verbose" in a.option_strings for a in sub._actions):
                    sub.add_argument(
                        "-v",
                        "--verbose",
                        action="count",
                        default=argparse.SUPPRESS,
                        help="log to stderr (-vv: debug, with tracebacks)",
                    )
                _verbose_everywhere(sub)


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
            "exit codes:\n" + _EXIT_TABLE + "\n\nsee also: man adba"
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    nouns = parser.add_subparsers(dest="noun", metavar="NOUN", required=True)
    asked = _asked_noun(argv)
    for noun, module in NOUNS.items():
        if asked is None or noun == asked:
            importlib.import_module(module).register(nouns)
    _verbose_everywhere(parser)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("adba")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (``adba ... | head -1``)."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poll.poll(0))


def _quiet_broken_pipe() -> int:
    """The Python documentation's recipe: point stdout at /dev/null so the interpreter's own
    flush at exit does not complain, and exit like a process killed by SIGPIPE would show."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE


def _report(err: AdbaError, as_json: bool, written: int = 0) -> int:
    """The one error printer: one line on stderr; with ``--json`` also an object on stdout,
    unless the verb already wrote its JSON answer (``written``: documents before it ran)."""
    from . import _common

    if as_json and _common.json_written == written:
        try:
            emit_json(err.to_dict())
            sys.stdout.flush()
        except BrokenPipeError:
            pass
    print(f"adba: error: {err.message}", file=sys.stderr, flush=True)
    return err.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except BrokenPipeError:  # --help or output piped into `head`
        if _stdout_closed():
            return _quiet_broken_pipe()
        raise


def _main(argv: list[str]) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:  # already printed with the usage line
        if "--json" in argv:
            emit_json({"error": "usage", "message": exc.message, "exit_code": 2})
        return 2
    except SystemExit as exc:  # --help, --version
        sys.stdout.flush()
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    verbose = int(getattr(args, "verbose", 0))
    _setup_logging(verbose)
    as_json = bool(getattr(args, "json", False))
    from . import _common

    written = _common.json_written
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        if as_json:
            emit_json({"error": "interrupted", "message": "interrupted", "exit_code": 130})
        print("adba: interrupted", file=sys.stderr)
        return exit_code_for(KeyboardInterrupt())
    except BrokenPipeError as exc:
        if _stdout_closed():
            raise
        return _report_unexpected(exc, verbose, as_json, written)
    except Exception as exc:
        return _report_unexpected(exc, verbose, as_json, written)


def _report_unexpected(exc: Exception, verbose: int, as_json: bool, written: int) -> int:
    err = from_exception(exc)
    if verbose >= 2:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    return _report(err, as_json, written)


def run() -> None:
    sys.exit(main())
