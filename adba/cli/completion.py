"""``adba completion bash|zsh`` -- print the shell completion script.

The scripts are static files in ``adba/data/completion/``, generated from the parser
(``python -m adba.cli.completion --write adba/data/completion``; a test keeps them in step),
so completing costs the shell no Python start-up and the agent's boot nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import Formatter

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any

    from ._tree import Command

DATA = Path(__file__).resolve().parents[1] / "data" / "completion"
#: shell -> file name in DATA
FILES = {"bash": "adba.bash", "zsh": "_adba"}

BASH = """\
Prints the bash completion script for adba.

example:
  adba completion bash | sudo tee /etc/bash_completion.d/adba >/dev/null
  source <(adba completion bash)          # this shell only
"""
ZSH = """\
Prints the zsh completion script for adba (a #compdef file named _adba).

example:
  adba completion zsh > ~/.zfunc/_adba    # with fpath+=(~/.zfunc) before compinit
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("completion", help="shell completion scripts (bash, zsh)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for shell, text in (("bash", BASH), ("zsh", ZSH)):
        v = verbs.add_parser(
            shell,
            help=f"print the {shell} completion script",
            description=text,
            formatter_class=Formatter,
        )
        v.set_defaults(func=cmd_print, shell=shell)


def cmd_print(args: argparse.Namespace) -> int:
    sys.stdout.write((DATA / FILES[args.shell]).read_text())
    return 0


# -- generation ---------------------------------------------------------------------------------
def _words(items: list[str]) -> str:
    return " ".join(items)


def _valued(cmd: Command) -> list[argparse.Action]:
    return [a for a in cmd.options if a.nargs != 0]


def _leaf_data(cmd: Command) -> tuple[str, str, list[tuple[str, str]]]:
    flags = [s for a in cmd.options for s in a.option_strings] + ["--help"]
    valued = [s for a in _valued(cmd) for s in a.option_strings]
    choices = [
        (s, _words([str(c) for c in a.choices]))
        for a in _valued(cmd)
        if a.choices
        for s in a.option_strings
    ]
    return _words(sorted(set(flags))), _words(valued), choices


def render_bash(commands: list[Command], top: list[str]) -> str:
    nouns = [c for c in commands if len(c.path) == 1]
    lines = [
        "# bash completion for adba; generated from its parser by",
        "# `python -m adba.cli.completion --write adba/data/completion`: do not edit.",
        "_adba() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local noun="" verb="" i w opts="" valued="" subs=""',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        "        [[ $w == -* ]] && continue",
        "        if [[ -z $noun ]]; then noun=$w; elif [[ -z $verb ]]; then verb=$w; break; fi",
        "    done",
        '    case "$noun" in',
        f'        "") COMPREPLY=($(compgen -W "{_words([c.path[0] for c in nouns] + top)}" -- "$cur")); return ;;',
        "    esac",
        '    case "$noun/$verb" in',
    ]
    for c in commands:
        if not c.is_leaf:
            verbs = [x.path[-1] for x in commands if x.path[:-1] == c.path]
            lines.append(f'        "{c.path[0]}/") subs="{_words(verbs)}" ;;')
            continue
        key = "/".join(c.path) if len(c.path) == 2 else f"{c.path[0]}/*"
        flags, valued, choices = _leaf_data(c)
        lines.append(f'        "{key}")')
        lines.append(f'            opts="{flags}"; valued="{valued}"')
        if choices:
            lines.append('            case "$prev" in')
            for flag, words in choices:
                lines.append(
                    f'                {flag}) COMPREPLY=($(compgen -W "{words}" -- "$cur")); return ;;'
                )
            lines.append("            esac")
        lines.append("            ;;")
    lines += [
        "    esac",
        '    if [[ -n $subs ]]; then COMPREPLY=($(compgen -W "$subs" -- "$cur")); return; fi',
        '    if [[ " $valued " == *" $prev "* ]]; then COMPREPLY=(); return; fi  # files (-o default)',
        '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "}",
        "complete -o default -F _adba adba",
        "",
    ]
    return "\n".join(lines)


def render_zsh(commands: list[Command], top: list[str]) -> str:
    nouns = [c for c in commands if len(c.path) == 1]
    lines = [
        "#compdef adba",
        "# zsh completion for adba; generated from its parser by",
        "# `python -m adba.cli.completion --write adba/data/completion`: do not edit.",
        "_adba() {",
        '  local noun="" verb="" i w prev="${words[CURRENT-1]}"',
        "  local -a opts valued subs",
        "  for ((i = 2; i < CURRENT; i++)); do",
        '    w="${words[i]}"',
        "    [[ $w == -* ]] && continue",
        "    if [[ -z $noun ]]; then noun=$w; elif [[ -z $verb ]]; then verb=$w; break; fi",
        "  done",
        f"  if [[ -z $noun ]]; then compadd -- {_words([c.path[0] for c in nouns] + top)}; return; fi",
        '  case "$noun/$verb" in',
    ]
    for c in commands:
        if not c.is_leaf:
            verbs = [x.path[-1] for x in commands if x.path[:-1] == c.path]
            lines.append(f'    "{c.path[0]}/") subs=({_words(verbs)}) ;;')
            continue
        key = "/".join(c.path) if len(c.path) == 2 else f"{c.path[0]}/*"
        flags, valued, choices = _leaf_data(c)
        lines.append(f'    "{key}")')
        lines.append(f"      opts=({flags}); valued=({valued})")
        if choices:
            lines.append('      case "$prev" in')
            for flag, words in choices:
                lines.append(f"        {flag}) compadd -- {words}; return ;;")
            lines.append("      esac")
        lines.append("      ;;")
    lines += [
        "  esac",
        "  if (( ${#subs} )); then compadd -- $subs; return; fi",
        "  if (( ${valued[(Ie)$prev]} )); then _files; return; fi",
        "  if [[ ${words[CURRENT]} == -* ]]; then compadd -- $opts; else _files; fi",
        "}",
        '_adba "$@"',
        "",
    ]
    return "\n".join(lines)


def render(shell: str) -> str:
    from ._tree import commands, full_parser

    parser = full_parser()
    cmds = commands(parser)
    top = sorted(s for a in parser._actions for s in a.option_strings)
    return (render_bash if shell == "bash" else render_zsh)(cmds, top)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, name in FILES.items():
        path = directory / name
        path.write_text(render(shell))
        written.append(path)
    return written


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        for path in write(Path(sys.argv[2])):
            print(f"wrote {path}")
    elif len(sys.argv) == 2 and sys.argv[1] in FILES:
        sys.stdout.write(render(sys.argv[1]))
    else:
        sys.exit("usage: python -m adba.cli.completion --write DIR | bash | zsh")
