"""The agent's boot path imports only what it needs."""

from __future__ import annotations

import subprocess
import sys


def _modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_status_imports_no_heavy_library() -> None:
    mods = _modules("import adba\nfrom adba.agent import status")
    assert not {"ldap3", "dns", "pydantic", "cryptography", "pyasn1"} & mods


def test_cli_parser_imports_no_heavy_library() -> None:
    mods = _modules("from adba.cli import build_parser; build_parser()")
    assert not {"ldap3", "dns", "pydantic", "cryptography"} & mods
    # the servers' and the console's libraries load only when their verb runs
    assert not {"jinja2", "markupsafe", "starlette", "fastapi", "uvicorn", "httpx"} & mods
