"""The command tree read back from the parser: what the man page, the shell completion files
and the tests are generated from (never a second list kept by hand)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["Command", "commands", "full_parser", "subcommands"]


@dataclass(frozen=True)
class Command:
    """One noun, or one noun and verb: ``path`` is ``("ao", "publish")``."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str

    @property
    def options(self) -> list[argparse.Action]:
        return [
            a
            for a in self.parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)
        ]

    @property
    def positionals(self) -> list[argparse.Action]:
        return [
            a
            for a in self.parser._actions
            if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
        ]

    @property
    def is_leaf(self) -> bool:
        return not subcommands(self.parser)


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, help) of the parser's sub-commands, in help order."""
    out: list[tuple[str, argparse.ArgumentParser, str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            out += [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return out


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Command]:
    """Every noun and every noun-verb below ``parser``, depth first, in help order."""
    out: list[Command] = []
    for name, sub, help_text in subcommands(parser):
        out.append(Command((*path, name), sub, help_text))
        out += commands(sub, (*path, name))
    return out


def full_parser() -> argparse.ArgumentParser:
    """The parser with every noun, at a fixed width (generated files do not depend on the
    terminal they were made in)."""
    import os

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        from . import build_parser

        return build_parser()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
