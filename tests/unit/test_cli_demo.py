"""The demo's step runner checks each step's real outcome and passes Ctrl-C on as 130."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import adba.cli.agent
from adba.cli.demo import _Background, _Step
from adba.errors import AdbaError


def test_a_step_interrupted_by_ctrl_c_interrupts_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(adba.cli.agent, "cmd_status", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _Step()("ask", ["agent", "status"])


def test_a_step_must_show_what_its_title_claims(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step = _Step()
    state = str(tmp_path / "state.json")
    with pytest.raises(AdbaError, match=r"did not show 'licensed \(MAK\)'"):
        step(
            "... and is licensed for good",
            ["agent", "status", "--state", state],
            require="licensed (MAK)",
        )
    assert step("no products", ["agent", "status", "--state", state], require="no products")


def test_a_step_exit_code_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AdbaError, match="exited with 15, expected 0"):
        _Step()("boot", ["agent", "run", "--config", str(tmp_path / "none.toml")])


def test_no_step_runs_over_a_dead_background_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step = _Step()
    dead = object.__new__(_Background)  # what __init__ leaves once its server answered
    dead.step, dead.name, dead.log_path = step, "authority serve", tmp_path / "authority.log"
    dead.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.proc.wait(20)
    step.background.append(dead)
    with pytest.raises(AdbaError, match=r"`adba authority serve` exited with 3"):
        step("the laptop boots", ["agent", "status", "--state", str(tmp_path / "s.json")])
    assert "the laptop boots" not in capsys.readouterr().out  # nothing claimed
