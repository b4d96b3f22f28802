"""The agent's state file: atomic under SIGKILL, recovered when corrupt; status derivation."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adba.agent._status import derive, read_status
from adba.agent.state import empty_state, read_state, write_state

WRITER = """
import sys
from adba.agent.state import write_state
path = sys.argv[1]
n = 0
print("ready", flush=True)
while True:
    n += 1
    # a big record so a write takes long enough to be interrupted
    write_state(path, {"version": 1, "config": {}, "directory": {}, "verified": {},
                       "products": {"p": {"n": n, "pad": "x" * 200000}}})
"""


def test_sigkill_during_writes_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state(path, {**empty_state(), "products": {"p": {"n": 0, "pad": ""}}})
    rng = random.Random(1)
    seen = set()
    for i in range(300):  # 60 kills, more while the kills have not yet landed at 6 points
        if i >= 60 and len(seen) > 5:
            break
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(rng.uniform(0, 0.03))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        data = json.loads(path.read_bytes())  # always complete JSON
        assert data["version"] == 1
        seen.add(data["products"]["p"]["n"])
    assert len(seen) > 5  # the kills landed at many different points
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "state.json"]
    assert all(name.startswith(".state.json.") for name in leftovers)  # only orphan temp files


def test_missing_state_is_empty(tmp_path: Path) -> None:
    assert read_state(tmp_path / "none.json") == empty_state()


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"version": 99}', b"\xff\xfe"])
def test_corrupt_state_is_moved_aside(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level("WARNING"):
        assert read_state(path) == empty_state()
    assert "corrupt" in caplog.text
    assert not path.exists() and list(tmp_path.glob("state.json.corrupt-*"))


def test_state_file_is_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state(path, empty_state())
    assert path.stat().st_mode & 0o777 == 0o644


NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("rec", "expected"),
    [
        ({"expires_at": NOW + 10}, ("licensed", 10)),
        ({"expires_at": NOW - 1, "activated_at": NOW - 100}, ("notification", 0)),
        ({"grace_until": NOW + 5}, ("grace", 5)),
        ({"grace_until": NOW - 5}, ("notification", 0)),
        ({"last_error": {"code": "invalid-key", "message": "x"}}, ("unlicensed", 0)),
        ({"expires_at": NOW + 10, "last_error": {"code": "no-object"}}, ("licensed", 10)),
    ],
)
def test_derive_status(rec: dict[str, object], expected: tuple[str, int]) -> None:
    assert derive(rec, NOW) == expected


def test_read_status_is_typed(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    state = empty_state()
    state["products"]["sku-1"] = {"edition": "E", "expires_at": NOW + 86400, "channel": "ADBA"}
    write_state(path, state)
    [st] = read_status(str(path), now=NOW)
    assert st.licensed and st.channel == "ADBA" and st.remaining_seconds == 86400
