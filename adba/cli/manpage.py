"""The ``adba(1)`` man page, generated from the parser (``python -m adba.cli.manpage``).

The page ships as ``adba/data/adba.1``; a test keeps it in step with the parser. Install it
with ``install -Dm644 "$(python -c 'import adba, os; print(os.path.dirname(adba.__file__))')/data/adba.1"
/usr/local/share/man/man1/adba.1`` (``adba agent install-units`` prints the exact line).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._tree import Command

__all__ = ["PAGE", "render"]

PAGE = Path(__file__).resolve().parents[1] / "data" / "adba.1"


def _esc(text: str) -> str:
    """Text safe for roff: backslashes and hyphens escaped, no line starting with . or '."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def _option(action: argparse.Action) -> str:
    flags = ", ".join(f"\\fB{_esc(s)}\\fR" for s in action.option_strings)
    if action.nargs == 0:
        return flags
    metavar = action.metavar or (
        "{" + ",".join(str(c) for c in action.choices) + "}"
        if action.choices
        else action.dest.upper()
    )
    return f"{flags} \\fI{_esc(str(metavar))}\\fR"


def _positional(action: argparse.Action) -> str:
    return f"\\fI{_esc(str(action.metavar or action.dest))}\\fR"


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own formatting: %(default)s, %% ...
        params = {**vars(action), "prog": "adba"}
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % params
    return _esc(text)


def _description(text: str) -> list[str]:
    """Prose filled, the lines after ``example:`` kept as written."""
    out: list[str] = []
    prose: list[str] = []
    lines = text.strip("\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "example:":
            if prose:
                out += [".PP", _esc(" ".join(prose))]
                prose = []
            block = []
            i += 1
            while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                block.append(lines[i].rstrip())
                i += 1
            while block and not block[-1]:
                block.pop()
            out += [
                ".PP",
                "Example:",
                ".PP",
                ".nf",
                ".RS 4",
                *(_esc(b) for b in block),
                ".RE",
                ".fi",
            ]
            continue
        if line.strip():
            prose.append(line.strip())
        elif prose:
            out += [".PP", _esc(" ".join(prose))]
            prose = []
        i += 1
    if prose:
        out += [".PP", _esc(" ".join(prose))]
    return out


def _command(cmd: Command) -> list[str]:
    name = " ".join(cmd.path)
    synopsis = " ".join(_positional(a) for a in cmd.positionals)
    out = [f'.SS "adba {_esc(name)}"', f"{_esc(cmd.help)}." if cmd.help else ""]
    out += [".PP", f"\\fBadba {_esc(name)}\\fR [\\fIoptions\\fR] {synopsis}".rstrip()]
    out += _description(cmd.parser.description or "")
    for action in cmd.positionals:
        out += [".TP", _positional(action), _help(action)]
    for action in cmd.options:
        if "--verbose" in action.option_strings or action.help == argparse.SUPPRESS:
            continue
        out += [".TP", _option(action), _help(action)]
    return [line for line in out if line != ""]


def render() -> str:
    from .. import errors
    from ..agent.config import ENV as AGENT_ENV
    from ..config import ENV as ADMIN_ENV
    from ._tree import commands, full_parser

    parser = full_parser()
    cmds = commands(parser)
    out = [
        '.TH ADBA 1 "" "adba" "User Commands"',
        ".SH NAME",
        "adba \\- Active Directory\\-based activation: directory, activation objects, "
        "authority, KMS, agent",
        ".SH SYNOPSIS",
        "\\fBadba\\fR [\\fB\\-v\\fR] [\\fB\\-\\-version\\fR] \\fINOUN\\fR \\fIVERB\\fR "
        "[\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        _esc(
            "adba is one command, noun then verb. Every verb has --help with an example; read "
            "verbs take --json (sorted keys, stable names; an error is then also a JSON object "
            "with error, message and exit_code on standard output). -v (info) or -vv (debug, "
            "with tracebacks) may follow the noun or the verb too."
        ),
        ".SH COMMANDS",
    ]
    for cmd in cmds:
        if len(cmd.path) == 1 and not cmd.is_leaf:
            verbs = "|".join(c.path[-1] for c in cmds if c.path[:-1] == cmd.path)
            out += [f'.SS "adba {_esc(cmd.path[0])} {_esc(verbs)}"', f"{_esc(cmd.help)}."]
            continue
        out += _command(cmd)
    out += [".SH EXIT STATUS", ".TP 6"]
    for i, (code, (_family, meaning)) in enumerate(errors.EXIT_CODES.items()):
        out += ([] if i == 0 else [".TP"]) + [f"\\fB{code}\\fR", _esc(meaning)]
    out += [".SH ENVIRONMENT", "Admin commands (adba.toml keys):"]
    for var, (section, key) in ADMIN_ENV.items():
        out += [".TP", f"\\fB{var}\\fR", _esc(f"[{section}] {key}")]
    out += [".PP", "The agent (agent.toml keys):"]
    for var, (table, key) in AGENT_ENV.items():
        out += [".TP", f"\\fB{var}\\fR", _esc(f"[{table}] {key}" if table else key)]
    out += [
        ".SH FILES",
        ".TP",
        "\\fI/etc/adba/adba.toml\\fR, \\fI~/.config/adba/adba.toml\\fR",
        "Admin configuration ([directory], [authority]); flags and ADBA_* variables win.",
        ".TP",
        "\\fI/etc/adba/agent.toml\\fR",
        "The agent's configuration (\\fBadba agent run \\-\\-help\\fR).",
        ".TP",
        "\\fI/var/lib/adba/agent\\-state.json\\fR",
        "The agent's state, read by \\fBadba agent status\\fR.",
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBsystemd.unit\\fR(5); the units adba\\-agent.service, "
        "adba\\-agent.timer and adba\\-agent\\-check.service "
        "(\\fBadba agent install\\-units\\fR).",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
