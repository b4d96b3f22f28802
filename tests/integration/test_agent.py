"""The agent at boot, against a real slapd (and a real named for DC location)."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from adba.agent import run_agent, status
from adba.authority import LocalAuthority
from adba.catalog import load_catalog
from adba.cli import main
from adba.directory import store
from adba.directory.connection import session
from adba.keys import KeyType
from adba.license import ForestIdentity
from tests.conftest import NOW
from tests.servers import TestNamed, TestSlapd, dead_port

pytestmark = pytest.mark.integration

DAY = 86400
SERVER = "Nimbus Server Standard"
CLIENT = "Nimbus Workstation Enterprise"


class Agent:
    """An agent configuration in a temp dir, pointed at the lab."""

    def __init__(self, tmp: Path, lab: TestSlapd, authority: Path, **overrides: Any) -> None:
        self.path = tmp / "agent.toml"
        self.state = tmp / "state.json"
        products = overrides.pop("products", [{"edition": SERVER}])
        settings: dict[str, Any] = {
            "dc_uris": [lab.uri],
            "base": lab.suffix,
            "ca_file": lab.ca_file,
            "root_key": str(authority / "root.pub"),
            "state_path": str(self.state),
            "tls_name": getattr(lab, "tls_name", None),
        }
        settings.update(overrides)
        lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items() if v is not None]
        lines += [
            "[machine]",
            f'dn = "{lab.computer.dn}"',
            f'password_file = "{lab.computer.password_file}"',
        ]
        lines += ["[intervals]", "connect_timeout = 1.0"]
        for p in products:
            lines.append("[[products]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
        self.path.write_text("\n".join(lines) + "\n")

    def run(self, now: int = NOW, **kw: Any) -> Any:
        return run_agent(str(self.path), env={}, now=now, **kw)

    def status(self, now: int = NOW) -> dict[str, Any]:
        [product] = status(str(self.state), now=now)
        return product._asdict()


def publish(lab: TestSlapd, authority: Path, product: str, name: str, janitor: list[str]) -> str:
    dn = lab.publish_csvlk(authority, product, name, NOW)
    janitor.append(dn)
    return dn


SERVER_CSVLK = "Nimbus Server 2026 CSVLK"
CLIENT_CSVLK = "Nimbus Client 2026 CSVLK"


def test_object_for_the_edition_activates_for_180_days(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    dn = publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    agent = Agent(tmp_path, slapd, authority_dir)
    report = agent.run()
    assert [o.activated for o in report.outcomes] == [True]
    st = agent.status()
    assert st["status"] == "licensed" and st["channel"] == "ADBA"
    assert st["object_dn"] == dn
    assert st["expires_at"] == NOW + 180 * DAY
    assert st["next_attempt"] == NOW + 7 * DAY
    assert st["csvlk_pid"].startswith("ADBA-")
    # a client edition is covered by the server CSVLK too (as in Windows)
    (tmp_path / "c").mkdir()
    client = Agent(tmp_path / "c", slapd, authority_dir, products=[{"edition": CLIENT}])
    assert client.run().outcomes[0].activated


def test_no_object_and_another_group_are_not_activated_with_the_reason(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    agent = Agent(tmp_path, slapd, authority_dir)
    [outcome] = agent.run().outcomes
    assert (outcome.activated, outcome.code) == (False, "no-object")
    assert outcome.message.startswith("no activation object for Nimbus Server 2026; no KMS host")
    publish(slapd, authority_dir, CLIENT_CSVLK, ao_name, janitor)  # covers clients only
    [outcome] = agent.run().outcomes
    assert (outcome.activated, outcome.code) == (False, "no-object")
    st = agent.status()
    assert st["status"] == "grace" and st["next_attempt"] == NOW + 2 * 3600


def test_a_product_with_a_mak_does_not_try_adba(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    mak = LocalAuthority.open(authority_dir).mint(KeyType.MAK, SERVER, load_catalog(), now=NOW)
    agent = Agent(tmp_path, slapd, authority_dir, products=[{"edition": SERVER, "key": mak.text}])
    [outcome] = agent.run().outcomes
    assert (outcome.activated, outcome.code) == (False, "mak-offline")  # no authority_url here
    assert outcome.message.startswith("configured with a MAK: ADBA and KMS not tried")
    assert "adba agent get-iid" in outcome.message
    assert mak.text not in agent.state.read_text()  # secrets never reach the state file


def _raw_copy(lab: TestSlapd, dn: str, name: str, **changes: Any) -> str:
    with session(lab.options(lab.admin)) as conn:
        original = store.show(conn, dn)
        return store.publish(conn, lab.container, dataclasses.replace(original, cn=name, **changes))


def _flip(der: bytes) -> bytes:
    b = bytearray(der)
    b[len(b) // 3] ^= 0x40
    return bytes(b)


@pytest.mark.parametrize(
    "tamper",
    ["byte-flipped", "other-forest", "unknown-authority", "expired-certificate", "partial-key"],
)
def test_each_tamper_is_rejected_and_a_good_object_is_still_used(
    tamper: str,
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    janitor: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cat = load_catalog()
    good = publish(slapd, authority_dir, SERVER_CSVLK, f"b-good-{tamper}", janitor)
    forged_name = f"a-forged-{tamper}"  # sorts first: the agent meets it before the good one
    if tamper == "byte-flipped":
        with session(slapd.options(slapd.admin)) as conn:
            lic = store.show(conn, good).issuance_license or b""
        forged = _raw_copy(slapd, good, forged_name, licenses={"msSPP-IssuanceLicense": _flip(lic)})
    elif tamper == "partial-key":
        forged = _raw_copy(slapd, good, forged_name, partial_key="BBBBB")
    else:
        if tamper == "unknown-authority":
            auth = LocalAuthority.init(tmp_path / "rogue", now=NOW - DAY)
        elif tamper == "expired-certificate":
            auth = LocalAuthority.init(tmp_path / "old", now=NOW - 400 * DAY, cert_days=365)
        else:
            auth = LocalAuthority.open(authority_dir)
        with session(slapd.options(slapd.admin)) as conn:
            here = store.read_forest_guid(conn, slapd.suffix)
        forest = ForestIdentity.of(slapd.suffix, uuid.uuid4() if tamper == "other-forest" else here)
        when = NOW - 300 * DAY if tamper == "expired-certificate" else NOW
        key = auth.mint(KeyType.CSVLK, SERVER_CSVLK, cat, now=when)
        act = auth.activate_csvlk(key.text, forest, cat, now=when)
        ao = store.ActivationObject.build(
            cn=forged_name,
            kms_ids=list(act.kms_ids),
            csvlk_sku=act.csvlk_sku,
            partial_key=act.partial_key,
            pid=act.pid,
            issuance_license=act.license_der,
        )
        with session(slapd.options(slapd.admin)) as conn:
            forged = store.publish(conn, slapd.container, ao)
    janitor.append(forged)

    agent = Agent(tmp_path, slapd, authority_dir)
    with caplog.at_level("WARNING", logger="adba"):
        [outcome] = agent.run().outcomes
    assert outcome.activated, outcome
    assert agent.status()["object_dn"] == good
    assert any(forged in r.getMessage() and "rejected" in r.getMessage() for r in caplog.records)

    # without the good object, the forged one alone activates nothing
    with session(slapd.options(slapd.admin)) as conn:
        store.delete(conn, slapd.container, good)
    janitor.remove(good)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    [outcome] = Agent(fresh, slapd, authority_dir).run().outcomes
    assert (outcome.activated, outcome.code) == (False, "objects-rejected"), outcome


def test_object_deleted_after_activation_stays_licensed_until_expiry(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    dn = publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    agent = Agent(tmp_path, slapd, authority_dir)
    assert agent.run().outcomes[0].activated
    with session(slapd.options(slapd.admin)) as conn:
        store.delete(conn, slapd.container, dn)
    janitor.remove(dn)
    later = NOW + 10 * DAY
    [outcome] = agent.run(now=later).outcomes
    assert not outcome.activated and "still licensed until" in outcome.message
    st = agent.status(now=later)
    assert st["status"] == "licensed" and st["expires_at"] == NOW + 180 * DAY
    assert st["last_error_code"] == "no-object"
    assert agent.status(now=NOW + 180 * DAY + 1)["status"] == "notification"


@pytest.mark.parametrize("reply", ["unknown-op", "cut-short", "noise"])
def test_a_dc_that_does_not_answer_in_ldap_fails_over_to_the_next(
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
    caplog: pytest.LogCaptureFixture,
    reply: str,
) -> None:
    """A first DC that answers garbage (ldap3's decoder raised KeyError/IndexError out of
    the pass) is skipped with a warning naming it; the second activates."""
    from tests.servers import NOT_LDAP, GarbageServer

    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    with GarbageServer([NOT_LDAP[reply]] * 3) as port:
        garbage = f"ldap://127.0.0.1:{port}"
        agent = Agent(tmp_path, slapd, authority_dir, dc_uris=[garbage, slapd.uri])
        with caplog.at_level("WARNING", logger="adba.agent.run"):
            report = agent.run()
    assert report.outcomes[0].activated
    assert report.dc == slapd.uri
    # noise has no complete message in it: ldap3 waits for the rest, then the timeout says so
    words = "did not answer within" if reply == "noise" else "did not answer in LDAP"
    assert any(
        f"domain controller {garbage} failed" in r.getMessage() and words in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_dc_located_by_srv_fails_over_to_the_second(
    slapd: TestSlapd,
    named: TestNamed,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    dead = dead_port()
    named.update(
        "_ldap._tcp.dc._msdcs",
        "SRV",
        [f"0 100 {dead} dc1.{named.zone}.", f"10 100 {slapd.port} dc2.{named.zone}."],
    )
    named.update("dc1", "A", ["127.0.0.1"])
    named.update("dc2", "A", ["127.0.0.1"])
    agent = Agent(
        tmp_path,
        slapd,
        authority_dir,
        dc_uris=None,
        domain=named.zone,
        dns_servers=[named.nameserver],
    )
    started = time.monotonic()
    report = agent.run()
    assert (
        time.monotonic() - started < 2.0
    )  # refused is immediate; the connect timeout (1 s) bounds a silent DC; slack for a busy CI
    assert report.outcomes[0].activated
    assert report.dc == f"ldap://127.0.0.1:{slapd.port}"
    assert agent.status()["dc"] == report.dc

    # all DCs down: not activated, retry in 2 h, the earlier activation kept
    named.update("_ldap._tcp.dc._msdcs", "SRV", [f"0 100 {dead} dc1.{named.zone}."])
    state = json.loads(agent.state.read_text())
    state["directory"]["dc"] = f"ldap://127.0.0.1:{dead_port()}"  # the cached DC is gone too
    agent.state.write_text(json.dumps(state))
    later = NOW + 3600
    [outcome] = agent.run(now=later).outcomes
    assert (outcome.activated, outcome.code) == (False, "no-dc")
    st = agent.status(now=later)
    assert st["status"] == "licensed" and st["next_attempt"] == later + 2 * 3600
    assert st["expires_at"] == NOW + 180 * DAY
    named.update("_ldap._tcp.dc._msdcs", "SRV", [])


def test_srv_falls_back_to_the_generic_name(
    slapd: TestSlapd,
    named: TestNamed,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    named.update("_ldap._tcp", "SRV", [f"0 100 {slapd.port} dc2.{named.zone}."])
    named.update("dc2", "A", ["127.0.0.1"])
    agent = Agent(
        tmp_path,
        slapd,
        authority_dir,
        dc_uris=None,
        domain=named.zone,
        dns_servers=[named.nameserver],
    )
    try:
        assert agent.run().outcomes[0].activated
    finally:
        named.update("_ldap._tcp", "SRV", [])


def test_warm_boot_sends_bind_search_unbind(
    authority_dir: Path, tmp_path: Path, janitor: list[str]
) -> None:
    import re

    with TestSlapd() as lab:
        lab.debug_level = 256
        lab.restart()
        lab.adba_init()
        publish(lab, authority_dir, SERVER_CSVLK, "warm", [])
        # LDAPS: TLS before LDAP, so no StartTLS request (which would be a 4th message)
        agent = Agent(tmp_path, lab, authority_dir, dc_uris=[lab.ldaps_uri])
        assert agent.run().outcomes[0].activated  # cold: learns the forest
        mark = lab.log_file.stat().st_size
        assert agent.run(now=NOW + 60).outcomes[0].activated
        log = lab.log_file.read_bytes()[mark:].decode(errors="replace")
    ops = {
        (m[0], m[1]): m[2]
        for m in re.findall(r"conn=(\d+) op=(\d+) (BIND|SRCH|UNBIND|ADD|MOD|DEL|EXT)", log)
    }
    assert sorted(ops.values()) == ["BIND", "SRCH", "UNBIND"], log


def test_corrupt_state_is_recovered_with_a_warning(
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    agent = Agent(tmp_path, slapd, authority_dir)
    agent.state.write_bytes(b'{"version": 1, "products": [tru')
    with caplog.at_level("WARNING", logger="adba"):
        assert agent.run().outcomes[0].activated
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("state.json.corrupt-*"))
    assert agent.status()["status"] == "licensed"


def test_cli_run_and_status_json(
    slapd: TestSlapd,
    authority_dir: Path,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = Agent(tmp_path, slapd, authority_dir)
    for var in ("ADBA_STATE", "ADBA_DOMAIN", "ADBA_DC_URIS"):
        monkeypatch.delenv(var, raising=False)
    assert main(["agent", "run", "--once", "--config", str(agent.path)]) == 0
    assert "not activated" in capsys.readouterr().out
    assert main(["agent", "run", "--strict", "--config", str(agent.path)]) == 17
    capsys.readouterr()
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    assert main(["agent", "run", "--strict", "--config", str(agent.path)]) == 0
    capsys.readouterr()
    assert main(["agent", "run", "--if-due", "--config", str(agent.path)]) == 0
    assert "nothing due" in capsys.readouterr().out
    assert main(["agent", "status", "--json", "--config", str(agent.path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == 1
    [product] = doc["products"]
    assert set(product) == {
        "edition",
        "sku",
        "status",
        "channel",
        "object_dn",
        "csvlk_pid",
        "dc",
        "partial_key",
        "activated_at",
        "expires_at",
        "next_attempt",
        "last_attempt",
        "last_error_code",
        "last_error_message",
        "remaining_seconds",
        "kms_host",
        "kms_count",
    }
    assert product["status"] == "licensed" and product["channel"] == "ADBA"
    assert main(["agent", "status", "--state", str(agent.state)]) == 0
    assert "licensed (ADBA)" in capsys.readouterr().out


def test_config_errors_name_the_key(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = Agent(tmp_path, slapd, authority_dir, products=[{"edition": "Nimbus Toaster"}])
    assert main(["agent", "run", "--config", str(agent.path)]) == 12  # unknown edition
    assert "products[0].edition" in capsys.readouterr().err
    agent = Agent(tmp_path, slapd, authority_dir, dc_uris=["http://x"])
    assert main(["agent", "run", "--config", str(agent.path)]) == 15
    assert "dc_uris" in capsys.readouterr().err


def test_machine_password_readable_by_others_is_refused(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = Agent(tmp_path, slapd, authority_dir)
    loose = tmp_path / "machine.password"
    loose.write_text(slapd.computer.password + "\n")
    loose.chmod(0o644)
    agent.path.write_text(agent.path.read_text().replace(slapd.computer.password_file, str(loose)))
    assert main(["agent", "run", "--config", str(agent.path)]) == 15
    err = capsys.readouterr().err
    assert f"chmod 600 {loose}" in err and err.count("\n") == 1


def test_adba_variables_override_the_file_and_a_change_revalidates(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    agent = Agent(tmp_path, slapd, authority_dir, dc_uris=["ldap://127.0.0.1:1"])
    env = {"ADBA_DC_URIS": slapd.uri}
    assert run_agent(str(agent.path), env=env, now=NOW).outcomes[0].activated
    # the file changes: a second product appears without any cache getting in the way
    agent.path.write_text(
        agent.path.read_text() + '[[products]]\nedition = "Nimbus Workstation Education"\n'
    )
    report = run_agent(str(agent.path), env=env, now=NOW + 60)
    assert sorted(o.edition for o in report.outcomes if o.activated) == [
        "Nimbus Server Standard",
        "Nimbus Workstation Education",
    ]


def test_a_warm_boot_imports_neither_pydantic_nor_cryptography(
    slapd: TestSlapd, authority_dir: Path, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    import subprocess
    import sys

    publish(slapd, authority_dir, SERVER_CSVLK, ao_name, janitor)
    agent = Agent(tmp_path, slapd, authority_dir)
    code = (
        "import sys; from adba.cli import main; "
        f"rc = main(['agent', 'run', '--once', '--config', {str(agent.path)!r}]); "
        "print(rc, *(m in sys.modules for m in ('pydantic', 'cryptography', 'dns', 'tomllib')))"
    )
    cold = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    warm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert cold.stdout.split()[-5:] == ["0", "True", "True", "False", "True"], cold.stdout
    assert warm.stdout.split()[-5:] == ["0", "False", "False", "False", "False"], warm.stdout
