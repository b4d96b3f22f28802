"""The inventory against real servers: several real sshd (each its own port, host key and
machine state), slapd for discovery, a real KMS host and authority for import."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adba.cli import main
from adba.inventory.db import InventoryDB
from tests.conftest import NOW
from tests.servers import TestAuthority, TestKmsHost, TestSlapd, TestSshd, dead_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400
SERVER = "Nimbus Server Standard"
SERVER_SKU = "1e804406-284d-45d3-b919-cb08ca26e71d"


def _state(path: Path, **product: Any) -> Path:
    rec = {"edition": SERVER, "sku": SERVER_SKU, **product}
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "config": {},
                "directory": {},
                "verified": {},
                "products": {SERVER_SKU: rec},
            }
        )
    )
    return path


def _agent_status(state: Path) -> str:
    """The real `adba agent status --json` of this checkout, on a given state file."""
    return f"env PYTHONPATH={ROOT} {sys.executable} -m adba agent status --json --state {state}"


class Fleet:
    """sshd processes standing for machines: licensed, in grace (both real `adba agent
    status`), a fast fake status, hanging, one whose key changed, one nobody knows."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = tmp / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
            check=True,
            capture_output=True,
        )
        now = int(time.time())
        licensed = _state(
            tmp / "licensed.json",
            channel="ADBA",
            activated_at=now - DAY,
            expires_at=now + 100 * DAY,
            object_dn="cn=obj,cn=Activation Objects",
        )
        grace = _state(
            tmp / "grace.json",
            first_seen=now - DAY,
            grace_until=now + 10 * DAY,
            last_error={"code": "no-object", "message": "no activation object"},
        )
        fake = tmp / "fake.json"
        fake.write_text(
            json.dumps(
                {
                    "schema": 1,
                    "state": "x",
                    "products": [{"edition": SERVER, "status": "licensed", "channel": "KMS"}],
                }
            )
        )
        pub = f"{self.key}.pub"
        self.sshd = {
            "licensed": TestSshd(pub, _agent_status(licensed)),
            "grace": TestSshd(pub, _agent_status(grace)),
            "fake": TestSshd(pub, f"cat {fake}"),
            "fake2": TestSshd(pub, f"cat {fake}"),
            "fake3": TestSshd(pub, f"cat {fake}"),
            # never finishes; a dot a second, so it ends once the client has gone (SIGPIPE)
            "hanging": TestSshd(pub, "while sleep 1; do echo .; done"),
            "changed": TestSshd(pub, f"cat {fake}"),
            "unknown": TestSshd(pub, f"cat {fake}"),
            "failing": TestSshd(pub, "echo broken >&2; exit 3"),
            "garbage": TestSshd(pub, "echo not-json"),
        }
        self.known_hosts = tmp / "known_hosts"
        other = tmp / "other_host_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
            check=True,
            capture_output=True,
        )
        lines = []
        for name, server in self.sshd.items():
            if name == "unknown":
                continue
            line = server.known_hosts_line
            if name == "changed":  # the entry holds the key the machine had before
                line = (
                    f"[127.0.0.1]:{server.port} "
                    + " ".join(other.with_suffix(".pub").read_text().split()[:2])
                    + "\n"
                )
            lines.append(line)
        self.known_hosts.write_text("".join(lines))
        self.dead = dead_port()

    def start(self) -> Fleet:
        for server in self.sshd.values():
            server.start()
        return self

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.dead if name == 'dead' else self.sshd[name].port}"

    def ssh_args(self, *extra: str) -> list[str]:
        return ["--known-hosts", str(self.known_hosts), "--identity", str(self.key), *extra]

    def destroy(self, keep: bool) -> None:
        for server in self.sshd.values():
            server.keep = keep
            server.destroy()


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        yield f.start()
    finally:
        f.destroy(request.session.testsfailed > 0)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_collect_records_each_machine_and_one_bad_machine_never_stops_the_scan(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "inv.sqlite")
    names = ["licensed", "grace", "hanging", "changed", "unknown", "failing", "garbage", "dead"]
    for name in names:
        assert (
            _run(capsys, "inventory", "add", "--db", db, name, "--address", fleet.address(name))[0]
            == 0
        )
    started = time.monotonic()
    code, out, err = _run(
        capsys, "inventory", "collect", "--db", db, *fleet.ssh_args("--timeout", "5"), "--json"
    )
    elapsed = time.monotonic() - started
    assert code == 0, err
    summary = json.loads(out)
    assert summary["machines"] == 8 and summary["collected"] == 2 and summary["failed"] == 6
    assert elapsed < 5 + 30  # the hanging machine is bounded by the timeout (slack: busy CI)
    assert err.count("\n") == 8 and "[8/8]" in err  # progress, one line per machine
    with InventoryDB(db) as inv:
        got = {m["name"]: m for m in inv.machines()}
    assert got["licensed"]["status"] == "licensed" and got["licensed"]["channel"] == "ADBA"
    assert got["licensed"]["expires_at"] > time.time() + 99 * DAY
    assert got["grace"]["status"] == "grace" and got["grace"]["error_code"] == "no-object"
    assert {n: got[n]["error_code"] for n in names[2:]} == {
        "hanging": "timeout",
        "changed": "host-key-changed",
        "unknown": "host-key-unknown",
        "failing": "command-failed",
        "garbage": "bad-output",
        "dead": "unreachable",
    }
    assert "refused" in got["changed"]["error_message"]
    assert "exited 3: broken" in got["failing"]["error_message"]
    # a second scan: both kept as history, newest first
    assert (
        _run(
            capsys,
            "inventory",
            "collect",
            "--db",
            db,
            *fleet.ssh_args("--timeout", "5"),
            "licensed",
            "-q",
        )[0]
        == 0
    )
    code, out, _ = _run(capsys, "inventory", "history", "--db", db, "licensed", "--json")
    history = json.loads(out)
    assert len(history) == 2 and all(h["status"] == "licensed" for h in history)
    assert history[0]["products"][0]["edition"] == SERVER
    code, out, _ = _run(capsys, "inventory", "history", "--db", db, "--by-status", "--json")
    assert [r["counts"] for r in json.loads(out)] == [
        {"licensed": 1},
        {"licensed": 1, "grace": 1, "unreachable": 6},
    ]
    code, out, _ = _run(capsys, "inventory", "summary", "--db", db, "--json")
    view = json.loads(out)
    assert view["by_status"] == {"licensed": 1, "grace": 1, "unreachable": 6}
    assert view["by_channel"] == {"ADBA": 1} and view["expiring_within_30_days"] == 0
    code, out, _ = _run(capsys, "inventory", "list", "--db", db, "--what", "scans", "--json")
    assert [s["failed"] for s in json.loads(out)] == [0, 6]


def test_concurrency_bounds_how_many_machines_are_asked_at_once(fleet: Fleet) -> None:
    """4 hanging machines, 2 at a time, 2 s each: two rounds, so at least 4 s (never less)."""
    from adba.inventory.collect import SshOptions, collect

    machines = [{"name": f"h{i}", "address": fleet.address("hanging")} for i in range(4)]
    opts = SshOptions(str(fleet.known_hosts), identities=(str(fleet.key),), timeout=2)
    started = time.monotonic()
    results = collect(machines, SshOptions(**{**opts.__dict__, "concurrency": 2}))
    elapsed = time.monotonic() - started
    assert [r.error_code for r in results] == ["timeout"] * 4
    assert 4.0 <= elapsed < 4.0 + 30, elapsed


def test_list_and_export_csv_and_json(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import io

    db = str(tmp_path / "inv.sqlite")
    for name in ("licensed", "dead"):
        _run(capsys, "inventory", "add", "--db", db, name, "--address", fleet.address(name))
    _run(capsys, "inventory", "collect", "--db", db, *fleet.ssh_args("--timeout", "5"), "-q")
    code, out, _ = _run(capsys, "inventory", "list", "--db", db, "--status", "licensed", "--json")
    assert code == 0
    assert [m["name"] for m in json.loads(out)] == ["licensed"]
    _code, out, _ = _run(capsys, "inventory", "export", "--db", db, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["name"], r["status"], r["error_code"]) for r in rows] == [
        ("dead", "unreachable", "unreachable"),
        ("licensed", "licensed", ""),
    ]
    assert 98 <= int(rows[1]["days_left"]) <= 100
    target = tmp_path / "machines.json"
    assert (
        _run(capsys, "inventory", "export", "--db", db, "--format", "json", "-o", str(target))[0]
        == 0
    )
    assert [m["channel"] for m in json.loads(target.read_text())] == [None, "ADBA"]


def test_an_unreadable_known_hosts_file_is_refused_before_any_connection(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "inv.sqlite")
    _run(capsys, "inventory", "add", "--db", db, "m1", "--address", fleet.address("fake"))
    code, _out, err = _run(
        capsys,
        "inventory",
        "collect",
        "--db",
        db,
        "--known-hosts",
        str(tmp_path / "missing"),
        "--identity",
        str(fleet.key),
    )
    assert code == 2 and "known_hosts" in err
    with InventoryDB(db) as inv:
        assert inv.history() == [] and inv.machines()[0]["last_collected"] is None


def test_a_scan_of_1000_machines_finishes_bounded(
    fleet: Fleet, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """1,000 machine names mapped onto a few sshd processes (one hanging, one down)."""
    from adba.inventory.collect import SshOptions, collect

    targets = ["fake", "fake2", "fake3"] * 6 + ["hanging", "dead"]
    machines = [
        {"name": f"pc{i:04d}", "address": fleet.address(targets[i % len(targets)])}
        for i in range(1000)
    ]
    started = time.monotonic()
    results = collect(
        machines,
        SshOptions(
            str(fleet.known_hosts), identities=(str(fleet.key),), timeout=15, concurrency=32
        ),
    )
    elapsed = time.monotonic() - started
    assert [r.machine for r in results] == [m["name"] for m in machines]
    by_target: dict[str, list[str | None]] = {}
    for i, r in enumerate(results):
        by_target.setdefault(targets[i % len(targets)], []).append(r.error_code)
    assert set(by_target["hanging"]) == {"timeout"} and len(by_target["hanging"]) == 50
    assert set(by_target["dead"]) == {"unreachable"}
    healthy = [c for t in ("fake", "fake2", "fake3") for c in by_target[t]]
    assert healthy.count(None) >= 0.8 * len(healthy), set(healthy)  # slack: a busy 2-core CI
    assert elapsed < 480, elapsed


# -- discovery ------------------------------------------------------------------------------
def test_discover_adds_the_computer_objects(
    slapd: TestSlapd, tmp_path: Path, capsys: pytest.CaptureFixture[str], janitor: list[str]
) -> None:
    import ldap3

    conn = ldap3.Connection(
        ldap3.Server(slapd.uri, get_info=ldap3.NONE),
        slapd.root.dn,
        slapd.root.password,
        auto_bind=True,
    )
    for name, dns in (("WS17", "ws17.example.test"), ("WS18", None)):
        dn = f"cn={name},{slapd.computers}"
        attrs: dict[str, Any] = {"cn": name}
        classes = ["device"]
        if dns:
            classes.append("domainRelatedObject")
            attrs["associatedDomain"] = dns
        assert conn.add(dn, classes, attrs), conn.result
        janitor.append(dn)
    conn.unbind()
    db = str(tmp_path / "inv.sqlite")
    where = ["--computers", slapd.computers, "--json"]
    # what the directory grants the identity, nothing more: this admin may not read them
    code, _out, err = _run(
        capsys, "inventory", "discover", "--db", db, *slapd.cli_args("admin"), *where
    )
    assert code == 3 and "may not read it" in err
    code, out, err = _run(
        capsys, "inventory", "discover", "--db", db, *slapd.cli_args("root"), *where
    )
    assert code == 0, err
    assert {"kmsclient1", "ws17.example.test", "ws18"} <= set(json.loads(out)["machines"])
    with InventoryDB(db) as inv:
        got = {m["name"]: m for m in inv.machines()}
    assert got["ws17.example.test"]["address"] == "ws17.example.test"
    assert got["ws18"]["dn"] == f"cn=WS18,{slapd.computers}"
    assert got["ws18"]["source"] == "directory"
    # a second discovery adds nothing new
    code, out, _ = _run(
        capsys, "inventory", "discover", "--db", db, *slapd.cli_args("root"), "--json"
    )
    assert code == 0 and json.loads(out)["new"] == 0


def test_discover_on_samba_ad(
    samba: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AD: objectClass=computer, named by dNSHostName (the SSH address too), else the
    account's cn; the DC itself is a computer of the domain."""
    from adba.directory.connection import session

    name = f"WS{int(time.time() * 1000) % 10**6}"
    dn = f"CN={name},{samba.computers}"
    with session(samba.options(samba.root)) as conn:
        assert conn.add(
            dn,
            ["computer"],
            {"sAMAccountName": f"{name}$", "dNSHostName": f"{name.lower()}.lab.example.test"},
        ), conn.result
    try:
        db = str(tmp_path / "inv.sqlite")
        code, out, err = _run(
            capsys,
            "inventory",
            "discover",
            "--db",
            db,
            *samba.cli_args("admin"),
            "--computers",
            samba.suffix,
            "--json",
        )
        assert code == 0, err
        found = set(json.loads(out)["machines"])
        assert f"{name.lower()}.lab.example.test" in found
        assert f"{samba.host_name}.{samba.realm.lower()}" in found  # the DC
        assert "kmsclient1" in found or "kmsclient1.lab.example.test" in found
        with InventoryDB(db) as inv:
            got = {m["name"]: m for m in inv.machines()}
        mine = got[f"{name.lower()}.lab.example.test"]
        assert mine["address"] == f"{name.lower()}.lab.example.test"
        assert mine["dn"].lower() == dn.lower() and mine["source"] == "directory"
        # a base that is not there: the directory's answer, named
        code, _out, err = _run(
            capsys,
            "inventory",
            "discover",
            "--db",
            db,
            *samba.cli_args("admin"),
            "--computers",
            f"OU=Nowhere,{samba.suffix}",
        )
        assert code == 3 and "OU=Nowhere" in err
    finally:
        with session(samba.options(samba.root)) as conn:
            conn.delete(dn)


# -- import ---------------------------------------------------------------------------------
@pytest.fixture
def kms_with_api(
    authority_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[TestKmsHost, str, Path]]:
    from adba.lab import free_port

    token = tmp_path / "kms.token"
    token.write_text("s3cret-token-for-the-inventory\n")
    host = TestKmsHost(authority_dir)
    port = free_port()
    try:
        host.start("--clients-api", str(port), "--clients-token-file", str(token))
        yield host, f"http://127.0.0.1:{port}", token
    finally:
        host.keep = request.session.testsfailed > 0
        host.destroy()


def _kms_client(tmp: Path, authority: Path, host: TestKmsHost, name: str, extra: str = "") -> Any:
    from adba.agent import run_agent

    config = tmp / f"{name}.toml"
    config.write_text(
        f'root_key = "{authority / "root.pub"}"\nstate_path = "{tmp / name}.json"\n'
        f'machine_name = "{name}"\nkms_host = "{host.address}"\n'
        '[intervals]\nconnect_timeout = 1.0\n[[products]]\nedition = "Nimbus Server Standard"\n'
        + extra
    )
    return run_agent(str(config), env={}, now=int(time.time()))


def test_the_agent_writes_its_textfile_after_each_pass(
    kms_with_api: tuple[TestKmsHost, str, Path], authority_dir: Path, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    host, _url, _token = kms_with_api
    prom = tmp_path / "textfile" / "adba.prom"
    prom.parent.mkdir()
    report = _kms_client(
        tmp_path, authority_dir, host, "pc-prom", f'[report]\ntextfile = "{prom}"\n'
    )
    assert [o.code for o in report.outcomes] != []
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    status = {s.labels["status"]: s.value for s in families["adba_product_status"].samples}
    # one KMS client is below the threshold: not activated yet, in grace, with the reason
    assert status == {"licensed": 0, "grace": 1, "notification": 0, "unlicensed": 0}
    [error] = families["adba_product_last_error"].samples
    assert error.labels["edition"] == SERVER and error.labels["code"]
    assert [p.name for p in prom.parent.iterdir()] == ["adba.prom"]
    # without [report], a pass imports nothing of it
    _kms_client(tmp_path, authority_dir, host, "pc-plain")
    code = (
        "import sys; from adba.cli import main; "
        f"main(['agent', 'run', '--config', {str(tmp_path / 'pc-plain.toml')!r}]); "
        "print('adba.agent.report' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False", out.stderr
    # a relative path (or one not ending in .prom) is a configuration error
    from adba.errors import ConfigError

    with pytest.raises(ConfigError, match=r"report\.textfile"):
        _kms_client(tmp_path, authority_dir, host, "pc-bad", '[report]\ntextfile = "adba.txt"\n')


def test_import_a_kms_hosts_clients_with_its_token_only(
    kms_with_api: tuple[TestKmsHost, str, Path],
    authority_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host, url, token = kms_with_api
    for name in ("srv-a", "srv-b"):
        _kms_client(tmp_path, authority_dir, host, name)
    deadline = time.monotonic() + 10
    while len(host.clients()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the host saves its records once a second
    # refusals: no token, a wrong token, another method, another path
    assert httpx.get(url + "/v1/clients").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert httpx.get(url + "/v1/clients", headers=wrong).status_code == 401
    good = {"Authorization": f"Bearer {token.read_text().strip()}"}
    assert httpx.post(url + "/v1/clients", headers=good).status_code == 405
    assert httpx.get(url + "/v1/other", headers=good).status_code == 404
    db = str(tmp_path / "inv.sqlite")
    bad = tmp_path / "bad.token"
    bad.write_text("0123456789abcdef-wrong\n")
    code, _out, err = _run(
        capsys, "inventory", "import", "--db", db, "--kms", url, "--kms-token-file", str(bad)
    )
    assert code == 19 and "refused the token (401)" in err
    code, out, err = _run(
        capsys,
        "inventory",
        "import",
        "--db",
        db,
        "--kms",
        url,
        "--kms-token-file",
        str(token),
        "--json",
    )
    assert code == 0, err and json.loads(out)["clients"] == 2
    code, out, _ = _run(capsys, "inventory", "list", "--db", db, "--what", "kms-clients", "--json")
    rows = json.loads(out)
    assert sorted(r["machine"] for r in rows) == ["srv-a", "srv-b"]
    assert {r["edition"] for r in rows} == {SERVER} and rows[0]["host"] == host.status()["epid"]


def test_the_clients_api_over_tls_is_verified_against_the_ca(
    authority_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adba.lab import free_port
    from tests.servers import TestCA

    ca = TestCA(tmp_path)
    cert, key = tmp_path / "kms.pem", tmp_path / "kms.key"
    ca.issue(cert, key, "127.0.0.1")
    token = tmp_path / "kms.token"
    token.write_text("another-token-16-chars-or-more\n")
    host = TestKmsHost(authority_dir)
    port = free_port()
    tls = ["--clients-tls-cert", str(cert), "--clients-tls-key", str(key)]
    try:
        host.start("--clients-api", str(port), "--clients-token-file", str(token), *tls)
        url = f"https://127.0.0.1:{port}"
        db = str(tmp_path / "inv.sqlite")
        args = ["inventory", "import", "--db", db, "--kms", url, "--kms-token-file", str(token)]
        code, _out, err = _run(capsys, *args)  # the system CAs do not know the lab CA
        assert code == 19 and "CERTIFICATE_VERIFY_FAILED" in err
        code, out, err = _run(capsys, *args, "--ca-file", str(ca.cert_file), "--json")
        assert code == 0 and json.loads(out)["clients"] == 0, err
    finally:
        host.destroy()


def test_import_key_status_from_the_authority(
    authority_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adba.authority import LocalAuthority
    from adba.catalog import load_catalog
    from adba.keys import KeyType

    auth = LocalAuthority.open(str(authority_dir))
    cat = load_catalog()
    mak = auth.mint(KeyType.MAK, SERVER, cat, now=NOW, mak_count=5)
    csvlk = auth.mint(KeyType.CSVLK, "Nimbus Server 2026 CSVLK", cat, now=NOW)
    other = tmp_path / "other-authority"
    LocalAuthority.init(other, now=NOW)
    foreign = LocalAuthority.open(str(other)).mint(KeyType.MAK, SERVER, cat, now=NOW, mak_count=5)
    files = {}
    for name, key in (("mak", mak.text), ("csvlk", csvlk.text), ("foreign", foreign.text)):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text(key + "\n")
    files["gvlk"] = tmp_path / "gvlk.txt"
    files["gvlk"].write_text(cat.edition(SERVER).gvlk + "\n")
    server = TestAuthority(authority_dir).start()
    try:
        db = str(tmp_path / "inv.sqlite")
        code, out, err = _run(
            capsys,
            "inventory",
            "import",
            "--db",
            db,
            "--authority",
            server.url,
            "--key-file",
            str(files["mak"]),
            "--key-file",
            str(files["csvlk"]),
            "--json",
        )
        assert code == 0, err
        got = {s["type"]: s for s in json.loads(out)}
        assert got["MAK"]["mak_left"] == 5 and got["MAK"]["mak_used"] == 0
        assert got["CSVLK"]["kms_hosts_left"] == 6 and got["CSVLK"]["kms_host_limit"] == 6
        assert mak.text not in out  # never the key itself
        # refusals: a key this authority did not issue (403), a GVLK (400)
        r = httpx.post(server.url + "/v1/keys/status", json={"key": foreign.text})
        assert r.status_code == 403 and r.json()["error"] == "authority-refused"
        r = httpx.post(server.url + "/v1/keys/status", json={"key": cat.edition(SERVER).gvlk})
        assert r.status_code == 400
        code, _out, err = _run(
            capsys,
            "inventory",
            "import",
            "--db",
            db,
            "--authority",
            server.url,
            "--key-file",
            str(files["foreign"]),
        )
        assert code == 13 and "403" in err
        code, out, _ = _run(capsys, "inventory", "list", "--db", db, "--what", "keys", "--json")
        assert sorted(k["type"] for k in json.loads(out)) == ["CSVLK", "MAK"]
    finally:
        server.stop()
