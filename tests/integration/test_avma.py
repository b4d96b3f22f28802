"""AVMA with real processes: `adba avma serve` on a Unix socket, guests running the agent.

The host's own activation comes from its real agent (MAK, by installation and confirmation
ID); a host agent with nothing activated is a host whose activation lapsed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adba.agent import apply_confirmations, installation_ids, run_agent, status
from adba.authority import LocalAuthority
from adba.avma.host import init_host
from adba.avma.protocol import ANSWER_SIZE
from adba.avma.store import guest_rows
from adba.avma.transport import Address, frame, listen, read_frame
from adba.catalog import load_catalog
from adba.confirmation import Installation
from adba.errors import AuthorityError
from adba.keys import KeyType
from tests.servers import stop_process

pytestmark = pytest.mark.integration

CATALOG = load_catalog()
DATACENTER, STANDARD = "Nimbus Server Datacenter", "Nimbus Server Standard"
AVMA_KEY = {g.sku: g.key for g in CATALOG.avma_guests}
DAY = 86400


def _avma_key(edition: str) -> str:
    return AVMA_KEY[CATALOG.edition(edition).sku]


@pytest.fixture
def auth(tmp_path: Path) -> LocalAuthority:
    return LocalAuthority.init(tmp_path / "auth", now=int(time.time()) - 60)


def host_agent(tmp: Path, auth: LocalAuthority, edition: str, *, licensed: bool) -> Path:
    """The host's own agent state: ``edition`` activated by MAK (or not activated at all)."""
    d = tmp / f"host-agent-{len(list(tmp.glob('host-agent-*')))}"
    d.mkdir()
    key = ""
    if licensed:
        mak = auth.mint(KeyType.MAK, edition, CATALOG, now=int(time.time()))
        auth.set_mak_count(mak, 1)
        key = f'key = "{mak.text}"\n'
    config = d / "agent.toml"
    config.write_text(
        f'root_key = "{auth.path / "root.pub"}"\nstate_path = "{d / "state.json"}"\n'
        f'[[products]]\nedition = "{edition}"\n{key}'
    )
    if licensed:
        [iid] = installation_ids(str(config))["products"]
        cid = auth.confirm(
            Installation.parse(iid["installation_id"]), CATALOG, now=int(time.time())
        )
        apply_confirmations([(None, cid.text())], str(config))
    else:
        run_agent(str(config), env={})  # a GVLK with nowhere to go: not activated
    return d / "state.json"


class Host:
    """`adba avma serve` as a process on a Unix socket."""

    def __init__(self, state_dir: Path, agent_state: Path, sock: Path, *extra: str) -> None:
        self.state_dir, self.agent_state, self.sock = state_dir, agent_state, sock
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Host:
        cmd = [sys.executable, "-m", "adba", "avma", "serve", "--state-dir", str(self.state_dir)]
        cmd += ["--listen", f"unix:{self.sock}", "--agent-state", str(self.agent_state)]
        cmd += self.extra
        log = self.state_dir / "serve.log"
        starts = log.read_text().count("serving AVMA guests") if log.exists() else 0
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while log.read_text().count("serving AVMA guests") == starts:
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for h in started:
        h.stop()


def start_host(
    tmp: Path,
    auth: LocalAuthority,
    hosts: list[Host],
    name: str,
    agent_state: Path,
    sock: Path | None = None,
) -> Host:
    d = tmp / name
    init_host(d, auth, DATACENTER, CATALOG, host_id=name)
    host = Host(d, agent_state, sock or tmp / f"{name}.sock").start()
    hosts.append(host)
    return host


def guest(tmp: Path, auth: LocalAuthority, sock: Path, name: str, edition: str = STANDARD) -> str:
    d = tmp / name
    d.mkdir(exist_ok=True)
    config = d / "agent.toml"
    config.write_text(
        f'root_key = "{auth.path / "root.pub"}"\nstate_path = "{d / "state.json"}"\n'
        f'avma_host = "unix:{sock}"\nmachine_name = "{name}"\n'
        f'[[products]]\nedition = "{edition}"\nkey = "{_avma_key(edition)}"\n'
    )
    return str(config)


def test_an_entitled_licensed_host_activates_its_guests(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    host = start_host(
        tmp_path, auth, hosts, "hv1", host_agent(tmp_path, auth, DATACENTER, licensed=True)
    )
    g1 = guest(tmp_path, auth, host.sock, "vm1")
    g2 = guest(tmp_path, auth, host.sock, "vm2", DATACENTER)
    [o1] = run_agent(g1, env={}).outcomes
    assert o1.activated and "activated by AVMA host unix:" in o1.message, o1.message
    # the second guest as its own process, through the CLI, and its status
    res = subprocess.run(
        [sys.executable, "-m", "adba", "agent", "run", "--once", "--config", g2, "--strict"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ADBA_")},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    [s2] = status(config_path=g2)
    assert (s2.status, s2.channel) == ("licensed", "AVMA")
    assert s2.avma_host and s2.avma_host.startswith(f"unix:{host.sock} (host key ")
    assert s2.dc is None and s2.kms_host is None  # no DC, DNS or KMS for an AVMA product
    assert 6 * DAY < s2.remaining_seconds <= 7 * DAY  # short: the guest renews
    out = subprocess.run(
        [sys.executable, "-m", "adba", "agent", "status", "--config", g2],
        capture_output=True,
        text=True,
    ).stdout
    assert "AVMA host:" in out and "licensed (AVMA)" in out
    rows = {r["name"]: r for r in guest_rows(host.state_dir)}
    assert set(rows) == {"vm1", "vm2"}
    assert rows["vm1"]["licensed"] and rows["vm1"]["edition"] == STANDARD
    assert rows["vm2"]["last_answer"] == "activated"


def _refused(config: str, code: str) -> str:
    [outcome] = run_agent(config, env={}).outcomes
    assert (outcome.activated, outcome.code) == (False, code), outcome.message
    return outcome.message


def test_a_host_not_licensed_activates_nobody(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    state = host_agent(tmp_path, auth, DATACENTER, licensed=False)
    host = start_host(tmp_path, auth, hosts, "hv1", state)
    message = _refused(guest(tmp_path, auth, host.sock, "vm1"), "avma-host-unlicensed")
    assert "its own activation is not licensed" in message
    [row] = guest_rows(host.state_dir)
    assert (row["last_answer"], row["licensed"]) == ("avma-host-unlicensed", False)


def test_a_host_on_a_non_entitled_edition_activates_nobody(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    state = host_agent(tmp_path, auth, STANDARD, licensed=True)  # licensed, but Standard
    host = start_host(tmp_path, auth, hosts, "hv1", state)
    _refused(guest(tmp_path, auth, host.sock, "vm1"), "avma-host-not-entitled")
    with pytest.raises(AuthorityError, match="not entitled to activate virtual machines"):
        init_host(tmp_path / "std", auth, STANDARD, CATALOG, host_id="std")


def test_a_host_the_pinned_root_did_not_certify_activates_nobody(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    other = LocalAuthority.init(tmp_path / "other", now=int(time.time()) - 60)
    state = host_agent(tmp_path, auth, DATACENTER, licensed=True)
    d = tmp_path / "rogue"
    init_host(d, other, DATACENTER, CATALOG, host_id="rogue")  # certified by another root
    host = Host(d, state, tmp_path / "rogue.sock").start()
    hosts.append(host)
    _refused(guest(tmp_path, auth, host.sock, "vm1"), "avma-host-uncertified")


class Proxy:
    """A man in the middle on a Unix socket: forwards each request to the real host and
    hands back ``alter(answer)``."""

    def __init__(self, path: Path, target: Path, alter: Callable[[bytes], bytes]) -> None:
        self.sock = listen(Address.parse(f"unix:{path}"))
        self.target, self.alter = Address.parse(f"unix:{target}"), alter
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from adba.avma.transport import exchange

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = read_frame(conn, time.monotonic() + 2)
                conn.sendall(frame(self.alter(exchange(self.target, request, timeout=2))))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("attack", ["tampered", "replayed"])
def test_a_tampered_or_replayed_answer_activates_nobody(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host], attack: str
) -> None:
    host = start_host(
        tmp_path, auth, hosts, "hv1", host_agent(tmp_path, auth, DATACENTER, licensed=True)
    )
    kept: list[bytes] = []

    def alter(answer: bytes) -> bytes:
        assert len(answer) == ANSWER_SIZE <= 250  # the same budget as the KMS answer
        if attack == "tampered":
            return answer[:30] + bytes([answer[30] ^ 0x01]) + answer[31:]  # the validity
        if not kept:
            kept.append(answer)
        return kept[0]  # the first answer, again

    proxy = Proxy(tmp_path / "mitm.sock", host.sock, alter)
    try:
        config = guest(tmp_path, auth, tmp_path / "mitm.sock", "vm1")
        if attack == "tampered":
            _refused(config, "avma-tampered")
        else:
            assert run_agent(config, env={}).outcomes[0].activated  # the genuine first answer
            _refused(config, "avma-replayed")
    finally:
        proxy.close()


def test_migration_keeps_the_guest_licensed_and_a_lapsed_host_means_grace(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    sock = tmp_path / "host.sock"  # the guest's one address: vsock CID 2 is always "the host"
    a = start_host(
        tmp_path, auth, hosts, "hv1", host_agent(tmp_path, auth, DATACENTER, licensed=True), sock
    )
    config = guest(tmp_path, auth, sock, "vm1")
    now = int(time.time())
    assert run_agent(config, env={}, now=now).outcomes[0].activated
    [before] = status(config_path=config, now=now)
    a.stop()
    # live migration to another entitled, licensed host
    b = start_host(
        tmp_path, auth, hosts, "hv2", host_agent(tmp_path, auth, DATACENTER, licensed=True), sock
    )
    assert run_agent(config, env={}, now=now + DAY).outcomes[0].activated
    [after] = status(config_path=config, now=now + DAY)
    assert after.licensed and after.avma_host != before.avma_host  # another host's key
    b.stop()
    # then to a host whose own activation lapsed
    start_host(
        tmp_path, auth, hosts, "hv3", host_agent(tmp_path, auth, DATACENTER, licensed=False), sock
    )
    message = _refused(config, "avma-host-unlicensed")
    assert "still licensed until" in message
    later = now + 9 * DAY  # past the 7 days of the last activation
    [outcome] = run_agent(config, env={}, now=later).outcomes
    assert outcome.code == "avma-host-unlicensed"
    [lapsed] = status(config_path=config, now=later)
    assert lapsed.status == "grace" and lapsed.last_error_code == "avma-host-unlicensed"
    assert "not licensed" in (lapsed.last_error_message or "")
    [gone] = status(config_path=config, now=now + 8 * DAY + 31 * DAY)
    assert gone.status == "notification"


def test_a_host_restart_keeps_its_guest_records(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    host = start_host(
        tmp_path, auth, hosts, "hv1", host_agent(tmp_path, auth, DATACENTER, licensed=True)
    )
    config = guest(tmp_path, auth, host.sock, "vm1")
    assert run_agent(config, env={}).outcomes[0].activated
    host.stop()
    host.start()
    assert run_agent(config, env={}).outcomes[0].activated
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "adba",
            "avma",
            "guests",
            "--state-dir",
            str(host.state_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    [row] = json.loads(res.stdout)["guests"]
    assert (row["name"], row["requests"], row["history"], row["licensed"]) == ("vm1", 2, 2, True)


def test_a_malformed_request_gets_no_answer(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    host = start_host(
        tmp_path, auth, hosts, "hv1", host_agent(tmp_path, auth, DATACENTER, licensed=True)
    )
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(host.sock))
        s.sendall(frame(b"ADBV" + bytes(92)))  # version 0
        assert s.recv(10) == b""  # closed, unanswered
    assert guest_rows(host.state_dir) == []


def test_the_host_exports_prometheus_metrics(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    import urllib.request

    from adba.lab import free_port

    port = free_port()
    d = tmp_path / "hv1"
    init_host(d, auth, DATACENTER, CATALOG, host_id="hv1")
    state = host_agent(tmp_path, auth, DATACENTER, licensed=True)
    extra = ["--metrics-port", str(port)]
    if hasattr(socket, "AF_VSOCK"):  # binding works here (no VMs: nobody connects)
        try:
            with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as probe:
                probe.bind((0xFFFFFFFF, port))
            extra += ["--listen", f"vsock:any:{port}"]
        except OSError:
            pass
    host = Host(d, state, tmp_path / "hv1.sock", *extra).start()
    hosts.append(host)
    assert run_agent(guest(tmp_path, auth, host.sock, "vm1"), env={}).outcomes[0].activated
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in (
        "adba_avma_requests_total 1.0",
        'adba_avma_answers_total{result="activated"} 1.0',
        "adba_avma_guests 1.0",
        "adba_avma_guests_licensed 1.0",
        "adba_avma_host_serving 1.0",
    ):
        assert line in text, text


def test_a_host_activates_only_guest_editions_of_its_version_or_older(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    """A catalogue whose Standard guests are of a version newer than the Datacenter host."""
    doc = json.loads((Path(__file__).parents[2] / "adba/data/catalog.json").read_text())
    for g in doc["avma"]["guests"]:
        if g["sku"] == str(CATALOG.edition(STANDARD).sku):
            g["version"] = 2028
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    state = host_agent(tmp_path, auth, DATACENTER, licensed=True)
    d = tmp_path / "hv1"
    init_host(d, auth, DATACENTER, load_catalog(path), host_id="hv1")
    host = Host(d, state, tmp_path / "hv1.sock", "--catalog", str(path)).start()
    hosts.append(host)
    for edition, activated in ((STANDARD, False), (DATACENTER, True)):
        config = guest(tmp_path, auth, host.sock, f"vm-{edition.split()[-1]}", edition)
        text = Path(config).read_text()  # the guest's catalogue says the same
        Path(config).write_text(f'catalog = "{path}"\n' + text)
        [outcome] = run_agent(config, env={}).outcomes
        assert outcome.activated is activated, outcome.message
        if not activated:
            assert outcome.code == "avma-not-covered"


def test_an_avma_product_sends_nothing_to_dcs_dns_or_kms(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    """The guest is a domain member with a DC, DNS servers and a KMS host configured: they
    hear nothing from an AVMA product."""
    state = host_agent(tmp_path, auth, DATACENTER, licensed=True)
    host = start_host(tmp_path, auth, hosts, "hv1", state)
    tcp = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]  # a DC, a KMS host
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    config = guest(tmp_path, auth, host.sock, "vm1")
    text = Path(config).read_text()
    dc, kms = (s.getsockname()[1] for s in tcp)
    Path(config).write_text(
        f'domain = "example.test"\ndc_uris = ["ldap://127.0.0.1:{dc}"]\n'
        f'dns_servers = ["127.0.0.1:{udp.getsockname()[1]}"]\nkms_host = "127.0.0.1:{kms}"\n'
        + text.replace(
            "[[products]]", f'[machine]\ndn = "cn=VM1,dc=x"\npassword_file = "{pw}"\n[[products]]'
        )
    )
    try:
        assert run_agent(config, env={}).outcomes[0].activated
        for s in (*tcp, udp):
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.accept() if s.type == socket.SOCK_STREAM else s.recv(1)
    finally:
        for s in (*tcp, udp):
            s.close()


def test_silent_connections_hold_at_most_the_host_slots(
    tmp_path: Path, auth: LocalAuthority, hosts: list[Host]
) -> None:
    """64 connections that say nothing fill the host; the next guest is closed unanswered
    (it says so), and once they time out (2 s) the host answers again."""
    from adba.avma.host import MAX_CONNECTIONS

    state = host_agent(tmp_path, auth, DATACENTER, licensed=True)
    host = start_host(tmp_path, auth, hosts, "hv1", state)
    config = guest(tmp_path, auth, host.sock, "vm1")
    silent = []
    for _ in range(MAX_CONNECTIONS):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(host.sock))
        silent.append(s)
    try:
        time.sleep(0.3)
        _refused(config, "avma-unreachable")
        time.sleep(2.5)
        assert run_agent(config, env={}).outcomes[0].activated
    finally:
        for s in silent:
            s.close()
