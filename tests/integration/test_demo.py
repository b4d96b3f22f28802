"""`adba demo` runs the whole path as a new user would, and leaves nothing behind."""

from __future__ import annotations

import os
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


def _slapd_children(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return out.stdout.split()


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    before = _ours()
    res = subprocess.run(
        [sys.executable, "-m", "adba", "demo"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for step in (
        "directory init",
        "authority mint",
        "ao publish",
        "ao list",
        "ao delete",
        "agent run",
        "agent status",
    ):
        assert f"$ adba {step}" in res.stdout
    assert "verified" in res.stdout
    assert "licensed (ADBA)" in res.stdout
    assert "not renewed" in res.stdout and "still licensed until" in res.stdout
    assert "$ adba kms serve" in res.stdout and "activated by KMS host" in res.stdout
    assert "--workers 2" in res.stdout and "answers (protocol v2" in res.stdout
    assert "$ adba authority serve" in res.stdout and "activated by MAK" in res.stdout
    assert "no activation objects" in res.stdout
    assert (
        "$ adba authority rotate" in res.stdout and "which the authority has retired" in res.stdout
    )
    assert _ours() == before


def test_demo_cleans_up_on_sigterm() -> None:
    before = _ours()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adba", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until slapd is up and the demo is mid-way
        if line.startswith("[3]"):
            break
    children = _slapd_children(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    time.sleep(0.1)
    for child in children:
        assert not Path(f"/proc/{child}").exists(), "slapd left running"
    assert _ours() == before
