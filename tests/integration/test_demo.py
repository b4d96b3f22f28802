"""`adba demo` runs the whole path as a new user would, and leaves nothing behind."""

from __future__ import annotations

import os
import re
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
    # a second provider joins, receives the tree, and serves the client while the first is down
    assert res.stdout.count("$ adba directory replicate --server-id") == 2
    assert "replication-lag: 2 servers agree on every contextCSN" in res.stdout
    ldap2 = re.search(r"ldap2: a second slapd (ldap://\S+) ", res.stdout)
    assert ldap2, res.stdout
    assert re.search(r"\(on ldap2 \d+ ms after ldap1 acknowledged it\)", res.stdout)
    assert f"via {ldap2.group(1)}, valid until" in res.stdout
    assert re.search(r"the delete reached it \d+ ms after it answered", res.stdout)
    assert "$ adba kms serve" in res.stdout and "activated by KMS host" in res.stdout
    assert "--publish lab.example.test --weight 2" in res.stdout  # several hosts, in DNS
    assert "(priority 0, weight 2, via" in res.stdout and "DNS gives kms" in res.stdout
    assert "--workers 2" in res.stdout and "answers (protocol v2" in res.stdout
    assert "$ adba authority serve" in res.stdout and "activated by MAK" in res.stdout
    assert "$ adba avma serve" in res.stdout and "licensed (AVMA)" in res.stdout
    assert res.stdout.count("activated by AVMA host") == 2  # two guests
    # the host certified online, its own MAK proving the entitlement
    assert re.search(
        r"\$ adba avma init --state-dir \S+ --online http://127\.0\.0\.1:\d+ --key-file", res.stdout
    )
    assert "2 guests imported from the AVMA host HV1" in res.stdout
    assert "its AVMA hosts page lists 2 guests" in res.stdout
    assert "no activation objects" in res.stdout
    assert (
        "$ adba authority rotate" in res.stdout and "which the authority has retired" in res.stdout
    )
    # the admin's inventory and console, with the demo's machines in it
    assert "5 clients imported from the KMS host" in res.stdout
    assert "1 of 2 activations left" in res.stdout
    assert "$ adba console serve" in res.stdout
    assert "the console answered its overview page: 7 machines" in res.stdout
    assert "adba demo --console" in res.stdout
    assert _ours() == before


def test_demo_console_keeps_running_until_ctrl_c() -> None:
    import re
    import ssl

    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "adba", "demo", "--console"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "running until Ctrl-C" in line:
            break
    text = "".join(seen)
    url = re.search(r"console:  (https://\S+)/  \(certificate: the lab's own, (\S+)\)", text)
    assert url, text
    # still answering after the demo's own check: a user could open it now
    verify = ssl.create_default_context(cafile=url.group(2))
    assert httpx.get(url.group(1) + "/signin", verify=verify, timeout=10).status_code == 200
    os.kill(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, text + rest
    assert "demo finished" in rest
    # its own directories (by name: other demos may be running on this machine)
    made = set(re.findall(r"/tmp/adba-(?:demo|lab)-[A-Za-z0-9_]+", text))
    # (a demo dir, the lab's slapd dir and the lab's named dir)
    assert len({d.split("-")[1] for d in made}) == 2, made
    assert not [d for d in made if Path(d).exists()], made


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
