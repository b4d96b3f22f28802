"""What the README, the man page, the completion scripts, every ``--help`` example and the
systemd units say matches what the code does."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from adba import errors
from adba.cli import main
from adba.cli._tree import commands, full_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_exit_table_is_the_code_table() -> None:
    section = README.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.MULTILINE)
    assert {int(c): m for c, m in rows} == {c: m for c, (_f, m) in errors.EXIT_CODES.items()}


def _agent_codes() -> set[str]:
    """The stable codes the agent records in last_error: the literals its modules pass to
    TryNext / _fail / Outcome, and the KMS client's errors."""
    found: set[str] = set()
    for name in sorted(p.name for p in (ROOT / "adba" / "agent").glob("*.py")):
        tree = ast.parse((ROOT / "adba" / "agent" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                position = {"TryNext": 0, "fail": 3, "_fail": 3, "Outcome": 2}.get(fname)
                args = node.args
                if fname == "append" and args and isinstance(args[0], ast.Tuple):
                    position, args = 1, args[0].elts
                if position is not None and len(args) > position:
                    arg = args[position]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.add(arg.value)
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                    ):
                        found.add(value.value)
    from adba.kms.client import KmsUnreachable, RogueHost

    found |= {KmsUnreachable.code, RogueHost.code}
    return {c for c in found if re.fullmatch(r"[a-z]+(-[a-z]+)+", c)} - {"activated"}


def test_readme_lists_every_agent_error_code() -> None:
    section = README.split("### The agent on a client", 1)[1].split("\n### ", 1)[0]
    listed = set(
        re.findall(
            r"`([a-z]+(?:-[a-z]+)+)`", re.split(r"stable (?:string )?code", section, maxsplit=1)[1]
        )
    )
    codes = _agent_codes()
    assert {"no-credentials", "kms-count-low", "kms-unreachable", "kms-rogue-host"} <= codes
    assert codes <= listed, f"README misses {sorted(codes - listed)}"


def _examples(text: str) -> list[str]:
    """``adba ...`` command lines in a help text or a README sh block, continuations joined."""
    lines = text.replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        line = line.strip().removeprefix("$ ").removeprefix("sudo ")
        for part in re.split(r"&&|\||;|\$\(", line):
            part = part.strip().removeprefix("sudo ")
            if part.startswith("adba ") and "..." not in part and "<" not in part:
                out.append(part.split(" #", 1)[0].split(" >", 1)[0].strip())
    return out


def _help_examples() -> list[tuple[str, str]]:
    out = []
    for cmd in commands(full_parser()):
        text = (cmd.parser.description or "").split("example:", 1)[-1]
        out += [(" ".join(cmd.path), e) for e in _examples(text)]
    return out


def _readme_examples() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    return [e for block in blocks for e in _examples(block)]


@pytest.mark.parametrize(("verb", "example"), _help_examples())
def test_every_help_example_parses(verb: str, example: str) -> None:
    parser = full_parser()
    argv = shlex.split(example)[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`adba {verb} --help` example does not parse ({exc.code}): {example}")
    assert args.func


@pytest.mark.parametrize("example", _readme_examples())
def test_every_readme_example_parses(example: str) -> None:
    try:
        full_parser().parse_args(shlex.split(example)[1:])
    except SystemExit as exc:
        pytest.fail(f"README example does not parse ({exc.code}): {example}")


def test_man_page_is_generated_from_the_parser() -> None:
    """Regenerate with `python -m adba.cli.manpage > adba/data/adba.1`."""
    from adba.cli.manpage import PAGE, render

    assert PAGE.read_text() == render()
    page = PAGE.read_text()
    for cmd in commands(full_parser()):
        assert f'.SS "adba {" ".join(cmd.path)}'.replace("-", "\\-") in page
    for code in errors.EXIT_CODES:
        assert f"\\fB{code}\\fR" in page


def test_man_page_renders_without_warnings() -> None:
    from adba.cli.manpage import PAGE

    man = subprocess.run(
        ["man", "--warnings", "-l", str(PAGE)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"},
        check=False,
    )
    if man.returncode == 127 or ("not found" in man.stderr and not man.stdout):
        pytest.skip("no man(1) here")
    assert man.returncode == 0 and "adba agent install-units" in man.stdout
    assert not man.stderr.strip(), man.stderr


def test_completion_files_are_generated_from_the_parser() -> None:
    """Regenerate with `python -m adba.cli.completion --write adba/data/completion`."""
    from adba.cli.completion import DATA, FILES, render

    for shell, name in FILES.items():
        assert (DATA / name).read_text() == render(shell), f"{name} is out of date"


def test_bash_completion_completes_nouns_verbs_options_and_choices() -> None:
    script = ROOT / "adba" / "data" / "completion" / "adba.bash"

    def complete(*words: str) -> list[str]:
        line = " ".join(shlex.quote(w) for w in words)
        code = (
            f"source {shlex.quote(str(script))}; COMP_WORDS=(adba {line}); "
            f"COMP_CWORD={len(words)}; _adba; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        res = subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True)
        return res.stdout.split()

    assert "agent" in complete("ag") and "authority" not in complete("ag")
    assert complete("ao", "pu") == ["publish"]
    assert complete("-v", "agent", "r") == ["run"]
    assert complete("authority", "mint", "--type", "") == ["csvlk", "mak"]
    assert "--strict" in complete("agent", "run", "--s")
    assert complete("agent", "run", "--config", "") == []  # bash then completes file names


def test_completion_prints_the_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    from adba.cli.completion import DATA

    assert main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == (DATA / "adba.bash").read_text()
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("#compdef adba")


def test_completion_and_man_page_are_package_data() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"data/adba.1"' in text and '"data/completion/*"' in text


def test_boot_path_does_not_load_completion_or_man_page() -> None:
    code = (
        "import sys; from adba.cli import build_parser; build_parser(['agent', 'run']); "
        "print(sorted(m for m in sys.modules if m.startswith('adba.cli')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "completion" not in out.stdout and "manpage" not in out.stdout
    assert "importlib.metadata" not in out.stdout


def test_units_document_the_man_page() -> None:
    for unit in (ROOT / "adba" / "data" / "systemd").iterdir():
        lines = unit.read_text().splitlines()
        assert "Documentation=man:adba(1)" in lines, unit.name
