"""The activation authority as a real process: online and telephone activation of CSVLKs,
KMS hosts and MAKs, limits, bad input, downtime, key rotation."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adba.authority import LocalAuthority
from adba.authority.client import RemoteAuthority
from adba.catalog import load_catalog
from adba.cli import main
from adba.errors import ActivationLimitReached, AuthorityUnavailable
from adba.keys import KeyType
from adba.kms.host import HostIdentity
from tests.conftest import NOW
from tests.integration.test_agent import Agent
from tests.integration.test_kms import Machine
from tests.servers import TestAuthority, TestKmsHost, TestSlapd

pytestmark = pytest.mark.integration

SERVER_CSVLK = "Nimbus Server 2026 CSVLK"
SERVER = "Nimbus Server Standard"


@pytest.fixture
def authority(tmp_path: Path, records_database: str | None) -> Iterator[TestAuthority]:
    """A served authority, its records on SQLite or on PostgreSQL (every test runs on both)."""
    path = tmp_path / "authority"
    LocalAuthority.init(path, now=NOW - 86400, database=records_database)
    server = TestAuthority(path)
    try:
        yield server.start()
    finally:
        server.stop()


def mint(
    authority: TestAuthority,
    kind: KeyType = KeyType.CSVLK,
    product: str = SERVER_CSVLK,
    count: int = 1,
) -> str:
    auth = LocalAuthority.open(authority.path)
    key = auth.mint(kind, product, load_catalog(), now=int(time.time()))
    if kind is KeyType.MAK:
        auth.set_mak_count(key, count)
    return key.text


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def key_file(tmp_path: Path, key: str) -> str:
    path = tmp_path / f"key-{secrets.token_hex(4)}.txt"
    path.write_text(key + "\n")
    return str(path)


def test_online_activation_publishes_an_object_the_agent_accepts(
    authority: TestAuthority,
    slapd: TestSlapd,
    tmp_path: Path,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
    ao_name: str,
) -> None:
    key = mint(authority)
    code, _out, err = cli(
        capsys,
        "ao",
        "publish",
        "--key-file",
        key_file(tmp_path, key),
        "--online",
        authority.url,
        "--name",
        ao_name,
        *slapd.cli_args("admin"),
    )
    assert code == 0, err
    janitor.append(f"cn={ao_name},{slapd.container}")
    agent = Agent(tmp_path, slapd, authority.path)
    [outcome] = agent.run().outcomes
    assert outcome.activated and ao_name in outcome.message


def test_telephone_activation_and_mistyped_or_foreign_confirmations(
    authority: TestAuthority,
    slapd: TestSlapd,
    tmp_path: Path,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
    ao_name: str,
) -> None:
    key, other = mint(authority), mint(authority)
    conn = slapd.cli_args("admin")
    code, iid, err = cli(
        capsys, "ao", "publish", "--key-file", key_file(tmp_path, key), "--get-iid", *conn
    )
    assert code == 0, err
    iid = iid.strip()
    assert all(len(g) == 7 and g.isdigit() for g in iid.split("-"))
    # the vendor's phone operator
    code, cid, err = cli(capsys, "authority", "confirm", "--path", str(authority.path), iid)
    assert code == 0, err
    cid = cid.strip()
    root = str(authority.path / "root.pub")
    publish = [
        "ao",
        "publish",
        "--key-file",
        key_file(tmp_path, key),
        "--root-key",
        root,
        "--name",
        ao_name,
        *conn,
    ]
    # one digit wrong: refused, naming the group, nothing published
    groups = cid.split("-")
    groups[3] = groups[3][:2] + str((int(groups[3][2]) + 1) % 10) + groups[3][3:]
    code, _out, err = cli(capsys, *publish, "--apply-cid", "-".join(groups))
    assert code == 2 and "group 4" in err, err
    # a confirmation for another installation ID (another key): refused
    code, other_iid, _ = cli(
        capsys, "ao", "publish", "--key-file", key_file(tmp_path, other), "--get-iid", *conn
    )
    code, other_cid, _ = cli(
        capsys, "authority", "confirm", "--path", str(authority.path), other_iid.strip()
    )
    code, _out, err = cli(capsys, *publish, "--apply-cid", other_cid.strip())
    assert code == 9 and "does not answer this installation ID" in err, err
    code, out, err = cli(capsys, "ao", "list", "--json", *conn)
    assert ao_name not in out
    # the right one: published with both IDs, accepted by the agent
    code, out, err = cli(capsys, *publish, "--apply-cid", cid)
    assert code == 0, err
    dn = f"cn={ao_name},{slapd.container}"
    janitor.append(dn)
    code, out, err = cli(
        capsys, "ao", "show", dn, "--json", "--root-key", root, *slapd.cli_args("computer")
    )
    view = json.loads(out)
    assert view["license"] == "verified", view
    assert view["installation_id"] == iid and view["confirmation_id"] == cid
    [outcome] = Agent(tmp_path, slapd, authority.path).run(now=int(time.time())).outcomes
    assert outcome.activated, outcome


def test_kms_host_limits_online_and_across_a_restart(
    authority: TestAuthority, tmp_path: Path
) -> None:
    key = mint(authority)
    remote = RemoteAuthority(authority.url)
    cat = load_catalog()
    now = int(time.time())
    for i in range(6):
        HostIdentity.install(tmp_path / f"h{i}", key, remote, cat, host_id=f"host-{i}", now=now)
    with pytest.raises(ActivationLimitReached, match=r"already activated on 6 hosts.*vendor"):
        HostIdentity.install(tmp_path / "h6", key, remote, cat, host_id="host-6", now=now)
    authority.restart()
    with pytest.raises(ActivationLimitReached):
        HostIdentity.install(tmp_path / "h6", key, remote, cat, host_id="host-6", now=now)
    for _ in range(9):
        HostIdentity.install(tmp_path / "h0", key, remote, cat, host_id="host-0", now=now)
    with pytest.raises(ActivationLimitReached, match="9 reactivations"):
        HostIdentity.install(tmp_path / "h0", key, remote, cat, host_id="host-0", now=now)
    # the vendor grants more hosts
    code = main(
        ["authority", "grant-hosts", "--path", str(authority.path), "--key", key, "--hosts", "1"]
    )
    assert code == 0
    HostIdentity.install(tmp_path / "h6", key, remote, cat, host_id="host-6", now=now)


def test_kms_host_by_telephone_serves_verified_answers(
    authority: TestAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = TestKmsHost(authority.path)  # installed online; now reinstall by telephone
    try:
        state = str(host.dir)
        for f in ("host.json", "host.key"):
            (host.dir / f).unlink()
        code, iid, err = cli(
            capsys,
            "kms",
            "install-key",
            "--state-dir",
            state,
            "--key",
            host.key,
            "--get-iid",
            "--host-id",
            "phone-host",
        )
        assert code == 0, err
        code, cid, err = cli(
            capsys, "authority", "confirm", "--path", str(authority.path), iid.strip()
        )
        assert code == 0, err
        code, out, err = cli(
            capsys,
            "kms",
            "install-key",
            "--state-dir",
            state,
            "--key",
            host.key,
            "--apply-cid",
            cid.strip(),
            "--host-id",
            "phone-host",
            "--root-key",
            str(authority.path / "root.pub"),
        )
        assert code == 0 and "activated" in out, err
        host.start()
        [m] = [Machine(tmp_path, "m1", authority.path, SERVER, kms_host=host.address)]
        assert m.run().code == "kms-count-low"  # a verified answer from the phone-activated host
    finally:
        host.destroy()


def mak_machine(
    tmp_path: Path, name: str, authority: TestAuthority, mak: str, **extra: Any
) -> Machine:
    m = Machine(tmp_path, name, authority.path, SERVER, **extra)
    m.config.write_text(m.config.read_text() + f'key = "{mak}"\n')
    return m


def test_mak_count_3_and_the_4th_is_refused(authority: TestAuthority, tmp_path: Path) -> None:
    mak = mint(authority, KeyType.MAK, SERVER, count=3)
    machines = [
        mak_machine(tmp_path, f"pc{i}", authority, mak, authority_url=authority.url)
        for i in range(4)
    ]
    outcomes = [m.run() for m in machines]
    assert [o.activated for o in outcomes] == [True, True, True, False]
    assert outcomes[3].code == "mak-exhausted" and "ask the vendor" in outcomes[3].message
    st = machines[0].status()
    assert (st["status"], st["channel"]) == ("licensed", "MAK")
    assert machines[0].run(now=NOW + 86400).activated  # no second activation needed
    assert mak not in machines[0].state.read_text()


def test_mak_proxy_activates_three_machines_in_one_request(
    authority: TestAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mak = mint(authority, KeyType.MAK, SERVER, count=3)
    machines = [mak_machine(tmp_path, f"pc{i}", authority, mak) for i in range(3)]
    files = []
    for m in machines:
        code, out, err = cli(capsys, "agent", "get-iid", "--json", "--config", str(m.config))
        assert code == 0, err
        path = tmp_path / f"{m.dir.name}.iid.json"
        path.write_text(out)
        files.append(str(path))
    code, out, err = cli(
        capsys, "mak", "proxy", "--online", authority.url, "--out", str(tmp_path / "cids"), *files
    )
    assert code == 0, err
    assert out.count("1 confirmed, 0 refused") == 3
    for m in machines:
        code, out, err = cli(
            capsys,
            "agent",
            "apply-cid",
            "--file",
            str(tmp_path / "cids" / f"{m.dir.name}.cids.json"),
            "--config",
            str(m.config),
        )
        assert code == 0 and "activated by MAK" in out, err
        assert m.status()["status"] == "licensed"
    # a confirmation applied on the wrong machine is refused
    code, _out, err = cli(
        capsys,
        "agent",
        "apply-cid",
        "--file",
        str(tmp_path / "cids" / "pc0.cids.json"),
        "--config",
        str(mak_machine(tmp_path, "pc9", authority, mak).config),
    )
    assert code == 9 and "another machine" in err


def test_the_agent_falls_to_the_mak_only_when_adba_and_kms_both_fail(
    authority: TestAuthority, tmp_path: Path
) -> None:
    mak = mint(authority, KeyType.MAK, SERVER, count=5)
    host = TestKmsHost(authority.path).start()
    try:
        for i in range(4):  # the host counts 4 servers
            Machine(tmp_path / "fill", f"s{i}", authority.path, SERVER, kms_host=host.address).run()
        m = Machine(
            tmp_path,
            "both",
            authority.path,
            SERVER,
            kms_host=host.address,
            authority_url=authority.url,
        )
        m.config.write_text(m.config.read_text() + f'mak_key = "{mak}"\n')
        outcome = m.run()  # KMS answers with count 5: activated by KMS, the MAK is kept
        assert outcome.activated and m.status()["channel"] == "KMS"
        report = LocalAuthority.open(authority.path).report(load_catalog())
        assert [k["mak_used"] for k in report["keys"] if k["type"] == "MAK"] == [0]
        host.stop()
        m2 = Machine(
            tmp_path,
            "fallback",
            authority.path,
            SERVER,
            kms_host=host.address,
            authority_url=authority.url,
        )
        m2.config.write_text(m2.config.read_text() + f'mak_key = "{mak}"\n')
        outcome = m2.run()  # no KMS host answers: the MAK activates
        assert outcome.activated and m2.status()["channel"] == "MAK"
    finally:
        host.destroy()


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("oversized", 413, "too-large"),
        ("content-type", 415, "unsupported-media-type"),
        ("malformed", 400, "malformed-json"),
        ("unknown-key", 403, "authority-refused"),
        ("reused-id", 409, "replayed-request"),
        ("extra-field", 400, "invalid-request"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_nothing_is_recorded(
    authority: TestAuthority, case: str, status: int, error: str
) -> None:
    from adba.keys import make_key

    before = LocalAuthority.open(authority.path).report(load_catalog())
    url = f"{authority.url}/v1/csvlk/activations"
    body: dict[str, Any] = {
        "request_id": secrets.token_hex(8),
        "key": mint(authority),
        "forest_dn": "dc=x,dc=test",
        "forest_guid": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    }
    with httpx.Client(timeout=10) as client:
        if case == "oversized":
            r = client.post(
                url,
                content=b"{" + b" " * (300 * 1024) + b"}",
                headers={"content-type": "application/json"},
            )
        elif case == "content-type":
            r = client.post(url, content=json.dumps(body), headers={"content-type": "text/plain"})
        elif case == "malformed":
            r = client.post(
                url, content=b'{"request_id": ', headers={"content-type": "application/json"}
            )
        elif case == "unknown-key":
            body["key"] = make_key(KeyType.CSVLK, 2, 77, 12345).text  # a tag we never issued
            r = client.post(url, json=body)
        elif case == "reused-id":  # the same id with another body (the same body: a retry)
            assert client.post(url, json=body).status_code == 200
            before = LocalAuthority.open(authority.path).report(load_catalog())
            r = client.post(url, json={**body, "forest_dn": "dc=y,dc=test"})
        else:
            r = client.post(url, json={**body, "admin": True})
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["message"]
    after = LocalAuthority.open(authority.path).report(load_catalog())
    assert [k.get("forest_activations") for k in after["keys"]][: len(before["keys"])] == [
        k.get("forest_activations") for k in before["keys"]
    ]


def test_authority_down_is_reported_after_retries(caplog: pytest.LogCaptureFixture) -> None:
    from tests.servers import dead_port

    remote = RemoteAuthority(f"http://127.0.0.1:{dead_port()}", retries=3, pause=0.05, timeout=1)
    with caplog.at_level("WARNING", logger="adba"), pytest.raises(AuthorityUnavailable) as info:
        remote.proxy(["0"])
    assert "not answering" in info.value.message and "telephone" in info.value.message
    assert sum("attempt" in r.getMessage() for r in caplog.records) == 3


def test_rotation_keeps_old_objects_valid_and_signs_new_ones_with_the_new_key(
    authority: TestAuthority,
    slapd: TestSlapd,
    tmp_path: Path,
    janitor: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from adba.license import decode_license

    def publish(name: str) -> dict[str, Any]:
        code, out, err = cli(
            capsys,
            "ao",
            "publish",
            "--key-file",
            key_file(tmp_path, mint(authority)),
            "--online",
            authority.url,
            "--name",
            name,
            "--json",
            *slapd.cli_args("admin"),
        )
        assert code == 0, err
        janitor.append(f"cn={name},{slapd.container}")
        return dict(json.loads(out))

    publish("before-rotation")
    code, out, err = cli(capsys, "authority", "rotate", "--path", str(authority.path))
    assert code == 0, err
    authority.restart()
    publish("after-rotation")
    root = str(authority.path / "root.pub")
    code, out, err = cli(
        capsys, "ao", "list", "--json", "--root-key", root, *slapd.cli_args("computer")
    )
    views = {v["cn"]: v for v in json.loads(out)}
    assert views["before-rotation"]["license"] == "verified"
    assert views["after-rotation"]["license"] == "verified"
    from adba.directory import store
    from adba.directory.connection import session

    with session(slapd.options(slapd.admin)) as conn:
        signers = {
            name: decode_license(
                store.show(conn, f"cn={name},{slapd.container}").issuance_license or b""
            ).certificate.key_id
            for name in ("before-rotation", "after-rotation")
        }
    assert signers["before-rotation"] != signers["after-rotation"]


def test_the_service_speaks_tls(slapd: TestSlapd, tmp_path: Path) -> None:
    path = tmp_path / "tls-authority"
    LocalAuthority.init(path, now=NOW - 86400)
    server = TestAuthority(path, tls=(slapd.ca_file, str(slapd.dir / "tls" / "key.pem")))
    try:
        server.start()
        mak = LocalAuthority.open(path).mint(KeyType.MAK, SERVER, load_catalog(), now=NOW)
        LocalAuthority.open(path).set_mak_count(mak, 1)
        from adba.confirmation import KIND_MAK_MACHINE, Installation, machine_binding

        installation = Installation.of(
            KIND_MAK_MACHINE,
            mak,
            machine_binding(__import__("uuid").uuid4(), load_catalog().edition(SERVER).sku),
        )
        trusted = RemoteAuthority(server.url, ca_file=slapd.ca_file)
        assert trusted.confirm(installation).issued_at > 0
        untrusted = RemoteAuthority(server.url, retries=1)  # the system CAs do not know it
        with pytest.raises(AuthorityUnavailable, match="certificate is not trusted"):
            untrusted.proxy(["0"])
    finally:
        server.stop()
