"""Samba AD with two DCs: publish on one, the agent activates through the other after DRS
replication; a delete on the second reaches the first. Real DCs: a provisioned one on
127.0.0.6 and one joined to its domain on 127.0.0.5 (``samba-tool domain join ... DC``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adba.cli import main
from adba.directory.connection import session
from tests.conftest import NOW, _samba_unavailable
from tests.integration.test_agent import Agent

pytestmark = pytest.mark.integration

SERVER_CSVLK = "Nimbus Server 2026 CSVLK"
PRIMARY_IP, REPLICA_IP = "127.0.0.6", "127.0.0.5"
#: how long a change may take to reach the other DC (change notification: 2-7 s measured)
REPLICATION_BUDGET = 90.0


def _unavailable() -> str | None:
    reason = _samba_unavailable()
    if reason:
        return reason
    if not shutil.which("unshare"):
        return "unshare (util-linux) missing: the DCs need a private /etc/hosts"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"no mount namespace here (unshare -m: {probe.stderr.decode().strip()})"
    return None


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    from adba.directory import ad
    from tests.servers import TestSambaDC, TestSambaReplica

    reason = _unavailable()
    if reason:
        if os.environ.get("ADBA_CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    dc1 = TestSambaDC(PRIMARY_IP, replication=True)
    dc2 = TestSambaReplica(dc1, REPLICA_IP)
    try:
        dc1.start()
        ad.grant(dc1.options(dc1.root), root=dc1.suffix, who="ADBA Admins")
        dc2.start()
        print(f"join {dc2.join_seconds:.1f} s")
        yield dc1, dc2
    finally:
        keep = request.session.testsfailed > 0
        for dc in (dc2, dc1):
            dc.keep = keep
            dc.destroy()


def _present(dc: Any, dn: str) -> bool:
    with session(dc.options(dc.root)) as conn:
        conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=["cn"])
        return bool(conn.entries)


def _wait(dc: Any, dn: str, *, present: bool, source: Any) -> float:
    """Seconds until ``dn`` is (or is no longer) on ``dc``. The DCs replicate by themselves
    (change notification); when that has not happened within half the budget (Samba's
    notification is sometimes late on a busy machine), ``dc`` is asked once to pull from
    ``source`` now (`samba-tool drs replicate`, a real DRS replication; the source is named by
    its server name, which samba-tool looks up -- an address is not found) and said so."""
    t0 = time.monotonic()
    next_ask = REPLICATION_BUDGET / 2
    while time.monotonic() - t0 < REPLICATION_BUDGET:
        if _present(dc, dn) is present:
            return time.monotonic() - t0
        if time.monotonic() - t0 > next_ask:
            print(f"not replicated by itself in {next_ask:.0f} s: drs replicate")
            try:
                dc._tool(
                    "samba-tool", "drs", "replicate", dc.ip, source.host_name,
                    f"CN=Configuration,{dc.suffix}", "-s", str(dc.conf),
                    f"-U{dc.domain}\\Administrator%{dc.admin_password}",
                )  # fmt: skip
                next_ask = REPLICATION_BUDGET
            except RuntimeError as exc:  # a busy DC can time out: ask again shortly
                print(exc)
                next_ask += 10
        time.sleep(0.5)
    raise AssertionError(f"{dn} {'absent' if present else 'still there'} on {dc.uri}")


def test_publish_on_one_dc_activate_through_the_other(
    pair: tuple[Any, Any], authority_dir: Path, tmp_path: Path, ao_name: str
) -> None:
    dc1, dc2 = pair
    dn = dc1.publish_csvlk(authority_dir, SERVER_CSVLK, ao_name, NOW)
    try:
        print(f"DC1 -> DC2 {_wait(dc2, dn, present=True, source=dc1):.1f} s")
        agent = Agent(tmp_path, dc2, authority_dir)  # dc_uris = [DC2] only
        [outcome] = agent.run().outcomes
        assert outcome.activated, outcome
        st = agent.status()
        assert st["channel"] == "ADBA" and st["object_dn"].lower() == dn.lower()
        assert main(["ao", "delete", "--yes", dn, *dc2.cli_args("admin")]) == 0
        assert not _present(dc2, dn)
        print(f"delete DC2 -> DC1 {_wait(dc1, dn, present=False, source=dc2):.1f} s")
    finally:
        with session(dc1.options(dc1.root)) as conn:
            conn.delete(dn)
