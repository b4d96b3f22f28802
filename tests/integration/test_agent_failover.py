"""Every wait of the agent is bounded: domain controllers that accept and never answer (at
connect, or in the middle of the search), refuse, or come first in SRV order cost about the
configured timeout each, and the agent activates through the good one; a silent KMS host is
skipped within its timeout. A silent DC is reported as *not answering*, not as unreachable."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adba.directory.connection import ConnectionOptions, connect, operation_error, session
from adba.errors import ServerNotAnswering, ServerUnavailable
from tests.conftest import NOW
from tests.integration.test_agent import SERVER_CSVLK, Agent, publish
from tests.servers import SilentServer, StallingProxy, TestNamed, TestSlapd, dead_port

pytestmark = pytest.mark.integration

TIMEOUT = 1.0  # the agent's [intervals] timeout in these tests
SLACK = 6.0  # seconds of slack for a busy 2-core machine (the old cost was 30 s per silent DC)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    with SilentServer() as server:
        yield server


def _agent(tmp: Path, lab: TestSlapd, authority: Path, **overrides: object) -> Agent:
    agent = Agent(tmp, lab, authority, **overrides)
    text = agent.path.read_text().replace("connect_timeout = 1.0", f"timeout = {TIMEOUT}")
    agent.path.write_text(text)
    return agent


def _timed(agent: Agent, **kw: object) -> tuple[object, float]:
    start = time.monotonic()
    report = agent.run(**kw)
    return report, time.monotonic() - start


# -- the library: each answer, not only the bind ----------------------------------------------
def test_a_dc_silent_after_the_bind_is_not_answering_within_the_timeout(slapd: TestSlapd) -> None:
    """Bind answered, the search never: bounded by the timeout, not ldap3's 30 s."""
    proxy = StallingProxy(slapd.port, answered=1)
    try:
        opts = ConnectionOptions(
            uri=f"ldap://127.0.0.1:{proxy.port}",
            bind_dn=slapd.computer.dn,
            password=slapd.computer.password,
            insecure=True,
            connect_timeout=TIMEOUT,
        )
        conn = connect(opts)
        start = time.monotonic()
        with pytest.raises(ServerNotAnswering) as info:
            try:
                conn.search(slapd.suffix, "(objectClass=*)", "BASE", attributes=["1.1"])
            except Exception as exc:
                raise operation_error(exc, opts, conn) from exc
        assert time.monotonic() - start < TIMEOUT + SLACK
        assert info.value.code == "not-answering" and "no answer to a request" in info.value.message
        # the same through session(): what every CLI command uses
        start = time.monotonic()
        with pytest.raises(ServerNotAnswering), session(opts) as conn2:
            conn2.search(slapd.suffix, "(objectClass=*)", "BASE", attributes=["1.1"])
        assert time.monotonic() - start < TIMEOUT + SLACK
    finally:
        proxy.close()


def test_refused_is_unreachable_and_silent_is_not_answering(silent: SilentServer) -> None:
    with pytest.raises(ServerUnavailable) as refused:
        connect(ConnectionOptions(uri=f"ldap://127.0.0.1:{dead_port()}", connect_timeout=TIMEOUT))
    assert not isinstance(refused.value, ServerNotAnswering)
    assert refused.value.code == "unavailable"
    with pytest.raises(ServerNotAnswering) as hung:
        connect(ConnectionOptions(uri=f"ldap://127.0.0.1:{silent.port}", connect_timeout=TIMEOUT))
    assert hung.value.code == "not-answering" and hung.value.exit_code == 6


# -- the agent: [unresponsive, refusing, good] ---------------------------------------------------
def test_agent_by_dc_uris_activates_through_the_good_one_in_bounded_time(
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
    silent: SilentServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    silent_uri = f"ldap://127.0.0.1:{silent.port}"
    refused_uri = f"ldap://127.0.0.1:{dead_port()}"
    agent = _agent(tmp_path, slapd, authority_dir, dc_uris=[silent_uri, refused_uri, slapd.uri])
    caplog.set_level(logging.WARNING, logger="adba.agent")
    report, elapsed = _timed(agent)
    assert report.outcomes[0].activated, report.outcomes[0].message
    assert report.dc == slapd.uri
    # one silent DC costs one timeout (the StartTLS answer); a refused one nothing
    assert elapsed < 1 * TIMEOUT + SLACK, f"{elapsed:.1f} s"
    text = caplog.text
    assert f"{silent_uri} failed: {silent_uri} is not answering" in text
    assert f"{refused_uri} failed: cannot reach {refused_uri}" in text


def test_agent_fails_over_when_a_dc_goes_silent_mid_search(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    proxy = StallingProxy(slapd.port, answered=1)
    try:
        stalled = f"ldap://127.0.0.1:{proxy.port}"
        agent = _agent(
            tmp_path, slapd, authority_dir, dc_uris=[stalled, slapd.ldaps_uri], insecure=True
        )
        report, elapsed = _timed(agent)
    finally:
        proxy.close()
    assert report.outcomes[0].activated, report.outcomes[0].message
    assert report.dc == slapd.ldaps_uri
    assert elapsed < TIMEOUT + SLACK, f"{elapsed:.1f} s"


def test_agent_by_srv_activates_through_the_good_one_in_bounded_time(
    slapd: TestSlapd,
    named: TestNamed,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
    silent: SilentServer,
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    zone = named.zone
    named.update(
        "_ldap._tcp.dc._msdcs",
        "SRV",
        [
            f"0 100 {silent.port} dc1.{zone}.",
            f"10 100 {dead_port()} dc2.{zone}.",
            f"20 100 {slapd.port} dc3.{zone}.",
        ],
    )
    for host in ("dc1", "dc2", "dc3"):
        named.update(host, "A", ["127.0.0.1"])
    try:
        agent = _agent(
            tmp_path,
            slapd,
            authority_dir,
            dc_uris=None,
            domain=zone,
            dns_servers=[named.nameserver],
        )
        report, elapsed = _timed(agent)
    finally:
        named.update("_ldap._tcp.dc._msdcs", "SRV", [])
    assert report.outcomes[0].activated, report.outcomes[0].message
    assert report.dc == f"ldap://127.0.0.1:{slapd.port}"
    assert elapsed < 1 * TIMEOUT + SLACK, f"{elapsed:.1f} s"


# -- KMS --------------------------------------------------------------------------------------
@pytest.mark.parametrize("trickle", [None, 0.3], ids=["silent", "trickling"])
def test_an_unresponsive_kms_host_is_skipped_within_its_timeout(
    slapd: TestSlapd,
    named: TestNamed,
    authority_dir: Path,
    tmp_path: Path,
    trickle: float | None,
) -> None:
    """Not a domain member: KMS only. A silent host and one sending a byte every 0.3 s (each
    read would wait less than the timeout) both end within one timeout; the next is tried."""
    zone = named.zone
    with SilentServer(trickle=trickle) as hung:
        named.update(
            "_vlmcs._tcp",
            "SRV",
            [f"0 100 {hung.port} kms1.{zone}.", f"10 100 {dead_port()} kms2.{zone}."],
        )
        named.update("kms1", "A", ["127.0.0.1"])
        named.update("kms2", "A", ["127.0.0.1"])
        try:
            agent = _agent(
                tmp_path,
                slapd,
                authority_dir,
                dc_uris=None,
                kms_domains=[zone],
                dns_servers=[named.nameserver],
            )
            report, elapsed = _timed(agent)
        finally:
            named.update("_vlmcs._tcp", "SRV", [])
    [outcome] = report.outcomes
    assert (outcome.activated, outcome.code) == (False, "kms-unreachable")
    assert f"127.0.0.1:{hung.port} is not answering" in outcome.message
    assert elapsed < TIMEOUT + SLACK, f"{elapsed:.1f} s"


def test_three_silent_dcs_and_a_silent_kms_host_end_well_inside_the_boot_unit(
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    silent: SilentServer,
) -> None:
    """With the default timeout (no [intervals] timeout): 3 x 2 s + 2 s, under the 60 s of
    TimeoutStartSec in adba-agent.service."""
    unit = (Path(__file__).parents[2] / "adba/data/systemd/adba-agent.service").read_text()
    assert "TimeoutStartSec=60" in unit
    with SilentServer() as dc2, SilentServer() as dc3:
        agent = Agent(
            tmp_path,
            slapd,
            authority_dir,
            dc_uris=[f"ldap://127.0.0.1:{s.port}" for s in (silent, dc2, dc3)],
            kms_host=f"127.0.0.1:{silent.port}",
        )
        agent.path.write_text(agent.path.read_text().replace("connect_timeout = 1.0\n", ""))
        report, elapsed = _timed(agent, now=NOW)
    [outcome] = report.outcomes
    assert not outcome.activated and outcome.code == "kms-unreachable"
    assert outcome.message.count("not answering") == 4, outcome.message
    assert elapsed < 30, f"{elapsed:.1f} s"
