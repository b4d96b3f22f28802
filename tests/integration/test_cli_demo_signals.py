"""Ctrl-C in the middle of `adba demo`: exit 130, servers stopped, temp files removed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _ours() -> set[str]:
    return {
        p.name for p in Path("/tmp").iterdir() if p.name.startswith(("adba-demo-", "adba-lab-"))
    }


@pytest.mark.parametrize("at", ["[5]", "[14]"])
def test_demo_interrupted_exits_130_and_cleans_up(at: str) -> None:
    before = _ours()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adba", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # a step is running (in-process, or its server is up)
        seen.append(line)
        if line.startswith(at):
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + out
    assert "Traceback" not in out
    assert "exited with 130" not in out
    time.sleep(0.2)
    assert _ours() == before
