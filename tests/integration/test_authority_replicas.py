"""Several ``adba authority serve`` processes on one real PostgreSQL enforce every limit and
the replay guard exactly, as one service would; a database that goes away gives 503 (never
500, never a grant it does not hold) and the replicas serve again once it is back. And the
SQLite records of the release before (schema 3, no ``schema_migrations``) open and migrate."""

from __future__ import annotations

import secrets
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adba.authority import LocalAuthority
from adba.authority.client import RemoteAuthority
from adba.catalog import load_catalog
from adba.confirmation import KIND_MAK_MACHINE, Installation, machine_binding
from adba.keys import KeyType, parse_key
from tests.conftest import NOW
from tests.servers import TestAuthority, TestPostgres, postgres_unavailable

pytestmark = pytest.mark.integration

SERVER = "Nimbus Server Standard"
SERVER_CSVLK = "Nimbus Server 2026 CSVLK"
DATA = Path(__file__).parent.parent / "data" / "authority-schema3"


def _replicas(path: Path, url: str, n: int = 3) -> list[TestAuthority]:
    LocalAuthority.init(path, now=NOW - 86400, database=url)
    started: list[TestAuthority] = []
    try:
        for i in range(n):
            started.append(TestAuthority(path, name=f"replica-{i}").start())
    except BaseException:
        for r in started:
            r.stop()
        raise
    return started


@pytest.fixture
def replicas(tmp_path: Path, postgres: TestPostgres) -> Iterator[list[TestAuthority]]:
    """Three authority processes, one directory of keys, one PostgreSQL database."""
    servers = _replicas(tmp_path / "authority", postgres.new_database())
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _mak(path: Path, count: int) -> str:
    auth = LocalAuthority.open(path)
    try:
        return auth.mint(
            KeyType.MAK, SERVER, load_catalog(), now=int(time.time()), mak_count=count
        ).text
    finally:
        auth.close()


def _machine(mak: str) -> tuple[str, str]:
    """(installation ID of a new machine, its binding as the records keep it)."""
    binding = machine_binding(uuid.uuid4(), load_catalog().edition(SERVER).sku)
    return Installation.of(KIND_MAK_MACHINE, parse_key(mak), binding).text(), binding.hex()


def _report_key(path: Path, kind: str) -> dict[str, Any]:
    auth = LocalAuthority.open(path)
    try:
        keys = [k for k in auth.report(load_catalog())["keys"] if k["type"] == kind]
    finally:
        auth.close()
    assert len(keys) == 1, keys
    return keys[0]


def _post(client: httpx.Client, url: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(url, json=body)


def test_200_machines_race_for_a_mak_of_50_over_three_replicas(
    replicas: list[TestAuthority],
) -> None:
    path = replicas[0].path
    mak = _mak(path, 50)
    machines = [_machine(mak) for _ in range(200)]
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(48) as pool:
        answers = list(
            pool.map(
                lambda i: _post(
                    client,
                    f"{replicas[i % 3].url}/v1/confirmations",
                    {"request_id": secrets.token_hex(12), "installation_id": machines[i][0]},
                ),
                range(200),
            )
        )
    codes = Counter(r.status_code for r in answers)
    assert codes == {200: 50, 409: 150}, codes
    refused = {r.json()["error"] for r in answers if r.status_code == 409}
    assert refused == {"activation-limit"}
    served = Counter(i % 3 for i, r in enumerate(answers) if r.status_code == 200)
    assert len(served) >= 2, served  # the grants did come from several replicas
    key = _report_key(path, "MAK")
    assert (key["mak_allowed"], key["mak_used"], key["mak_left"]) == (50, 50, 0)


def test_a_kms_host_key_holds_6_hosts_and_9_reactivations_across_replicas(
    replicas: list[TestAuthority],
) -> None:
    """12 hosts each ask 15 times with a new key pair (a reactivation each), all at once:
    exactly 6 hosts get in, each exactly 1 + 9 times."""
    path = replicas[0].path
    auth = LocalAuthority.open(path)
    csvlk = auth.mint(KeyType.CSVLK, SERVER_CSVLK, load_catalog(), now=int(time.time())).text
    auth.close()
    asks = [
        (f"kms-{h:02d}.example.test", secrets.token_hex(32)) for h in range(12) for _ in range(15)
    ]
    order = list(range(len(asks)))
    secrets.SystemRandom().shuffle(order)

    def ask(i: int) -> tuple[str, httpx.Response]:
        host, public = asks[i]
        body = {
            "request_id": secrets.token_hex(12),
            "key": csvlk,
            "host_public_key": public,
            "host_id": host,
        }
        return host, client.post(f"{replicas[i % 3].url}/v1/kms-hosts/activations", json=body)

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(ask, order))
    codes = Counter(r.status_code for _h, r in answers)
    assert codes == {200: 60, 409: 120}, codes
    assert {r.json()["error"] for _h, r in answers if r.status_code == 409} == {"activation-limit"}
    granted = Counter(h for h, r in answers if r.status_code == 200)
    assert len(granted) == 6 and set(granted.values()) == {10}, granted
    key = _report_key(path, "CSVLK")
    assert key["kms_hosts_left"] == 0
    assert sorted(
        (h["host"], h["activations"], h["reactivations_left"]) for h in key["kms_hosts"]
    ) == sorted((h, 10, 0) for h in granted)


def test_one_request_id_sent_to_three_replicas_at_once_is_taken_once(
    replicas: list[TestAuthority],
) -> None:
    """Each round, one id goes to all three replicas at the same moment: with three different
    machines, one is answered and two get 409 replayed-request; with one body, all three get
    the one answer. Either way one activation is counted."""
    path = replicas[0].path
    mak = _mak(path, 100)
    rounds = 8
    with httpx.Client(timeout=60) as client:
        for same_body in (False, True):
            for _ in range(rounds):
                rid = secrets.token_hex(12)
                shared = _machine(mak)[0]
                bodies = [
                    {
                        "request_id": rid,
                        "installation_id": shared if same_body else _machine(mak)[0],
                    }
                    for _ in replicas
                ]
                barrier = threading.Barrier(3)

                def send(
                    i: int, barrier: threading.Barrier = barrier, bodies: list[Any] = bodies
                ) -> httpx.Response:
                    barrier.wait()
                    return client.post(f"{replicas[i].url}/v1/confirmations", json=bodies[i])

                with ThreadPoolExecutor(3) as pool:
                    answers = list(pool.map(send, range(3)))
                codes = sorted(r.status_code for r in answers)
                if same_body:
                    assert codes == [200, 200, 200], [r.text for r in answers]
                    assert len({r.json()["confirmation_id"] for r in answers}) == 1
                else:
                    assert codes == [200, 409, 409], [r.text for r in answers]
                    assert [r.json()["error"] for r in answers if r.status_code == 409] == [
                        "replayed-request"
                    ] * 2
    assert _report_key(path, "MAK")["mak_used"] == 2 * rounds


def test_a_replica_killed_mid_burst_loses_nothing_it_announced(
    replicas: list[TestAuthority], postgres: TestPostgres
) -> None:
    """SIGKILL one replica in a burst: every 200 is in the database, and a request whose
    answer was lost, sent again with its id to another replica, is answered (once)."""
    path = replicas[0].path
    mak = _mak(path, 1000)
    machines = [_machine(mak) for _ in range(240)]
    ids = [secrets.token_hex(12) for _ in machines]
    codes = [-1] * len(machines)
    answered = Counter[str]()

    def one(i: int) -> None:
        body = {"request_id": ids[i], "installation_id": machines[i][0]}
        try:
            codes[i] = client.post(f"{replicas[i % 3].url}/v1/confirmations", json=body).status_code
        except httpx.HTTPError:
            codes[i] = 0  # the replica died under this request
        answered["n"] += 1

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(one, i) for i in range(len(machines))]
        deadline = time.monotonic() + 60
        while answered["n"] < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert replicas[2].proc is not None
        replicas[2].proc.kill()
        for f in futures:
            f.result()
        assert set(codes) <= {0, 200}, Counter(codes)
        assert codes.count(0) > 0, "the kill came too late to cut any request"
        database = str(_records_url(path)).rsplit("/", 1)[1]
        held = {str(b) for (b,) in postgres.query("SELECT binding FROM mak_activations", database)}
        told = {machines[i][1] for i, c in enumerate(codes) if c == 200}
        assert told <= held
        for i, c in enumerate(codes):  # the client's retry, same id, to a live replica
            if c == 0:
                body = {"request_id": ids[i], "installation_id": machines[i][0]}
                r = client.post(f"{replicas[i % 2].url}/v1/confirmations", json=body)
                assert r.status_code == 200, r.text
    assert _report_key(path, "MAK")["mak_used"] == len(machines)


def _records_url(path: Path) -> str:
    return (path / "records.url").read_text().strip()


@pytest.mark.skipif(postgres_unavailable() is not None, reason=str(postgres_unavailable()))
def test_postgres_stopped_in_a_burst_gives_503_never_500_and_the_replicas_recover(
    tmp_path: Path,
) -> None:
    pg = TestPostgres()
    servers: list[TestAuthority] = []
    try:
        pg.start()
        url = pg.new_database()
        servers = _replicas(tmp_path / "authority", url)
        path = servers[0].path
        mak = _mak(path, 1000)
        machines = [_machine(mak) for _ in range(300)]
        answers: list[tuple[int, httpx.Response | None]] = [(-1, None)] * len(machines)
        progress = Counter[str]()

        def one(i: int) -> None:
            body = {"request_id": secrets.token_hex(12), "installation_id": machines[i][0]}
            try:
                r = client.post(f"{servers[i % 3].url}/v1/confirmations", json=body)
            except httpx.HTTPError:
                answers[i] = (0, None)
                return
            answers[i] = (r.status_code, r)
            progress["answered"] += 1

        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(one, i) for i in range(len(machines))]
            deadline = time.monotonic() + 60
            while progress["answered"] < 60 and time.monotonic() < deadline:
                time.sleep(0.01)
            pg.stop()  # fast shutdown: sessions ended mid-transaction
            down = [client.get(f"{s.url}/v1/health") for s in servers]
            # a client asking while the database is away: it waits out Retry-After, retries
            # with the same request id, and is answered once it is back
            remote = RemoteAuthority(servers[1].url, retries=6, pause=0.3)
            waiting = Installation.parse(_machine(mak)[0])
            patient: list[Any] = []
            asker = threading.Thread(target=lambda: patient.append(remote.confirm(waiting)))
            asker.start()
            time.sleep(1.0)
            pg.start()
            asker.join(60)
            assert len(patient) == 1, "the client's own retries did not get an answer"
            for f in futures:
                f.result()
            codes = Counter(code for code, _r in answers)
            assert set(codes) <= {200, 503}, codes  # never a 500, never a dropped connection
            assert codes[503] > 0 and codes[200] > 0, codes
            for code, r in answers:
                if code == 503:
                    assert r is not None and r.json()["error"] == "records-unavailable", r.text
                    assert int(r.headers["retry-after"]) >= 1
            assert [r.status_code for r in down] == [503, 503, 503]
            assert {r.json()["error"] for r in down} == {"records-unavailable"}
            assert all("retry-after" in r.headers for r in down)

            # every grant an answer announced is held by the database
            held = {
                str(b)
                for (b,) in pg.query(
                    "SELECT binding FROM mak_activations", database=url.rsplit("/", 1)[1]
                )
            }
            told = {machines[i][1] for i, (code, _r) in enumerate(answers) if code == 200}
            assert told <= held, len(told - held)

            # back without a restart of any replica: health, then a new grant on each
            for server in servers:
                deadline = time.monotonic() + 20
                while client.get(f"{server.url}/v1/health").status_code != 200:
                    assert time.monotonic() < deadline, server.log_tail()
                    time.sleep(0.1)
                assert server.proc is not None and server.proc.poll() is None
                r = client.post(
                    f"{server.url}/v1/confirmations",
                    json={"request_id": secrets.token_hex(12), "installation_id": _machine(mak)[0]},
                )
                assert r.status_code == 200, r.text
            for server in servers:
                assert "Traceback" not in server.log_text(), server.log_tail(40)
    finally:
        for server in servers:
            server.stop()
        pg.destroy()


def _old_release(tmp_path: Path) -> Path:
    """A copy of the authority made by the release before (tests/data/authority-schema3)."""
    path = tmp_path / "old"
    shutil.copytree(DATA, path)
    path.chmod(0o700)
    for name in ("root.key", "signing.key", "tag.secret", "records.sqlite"):
        (path / name).chmod(0o600)
    return path


def test_sqlite_records_of_the_release_before_open_and_migrate(tmp_path: Path) -> None:
    import sqlite3

    path = _old_release(tmp_path)
    csvlk, mak = (path / "keys.txt").read_text().split()
    db = sqlite3.connect(path / "records.sqlite")
    assert (
        db.execute("SELECT name FROM sqlite_master WHERE name = 'schema_migrations'").fetchone()
        is None
    )
    db.close()
    cat = load_catalog()
    auth = LocalAuthority.open(path)
    report = {k["type"]: k for k in auth.report(cat)["keys"]}
    assert report["MAK"]["mak_used"] == 2 and report["MAK"]["mak_allowed"] == 5
    assert report["CSVLK"]["forest_activations"] == 1
    assert [h["host"] for h in report["CSVLK"]["kms_hosts"]] == ["kms-old.old.test"]
    # the records carry on: the old request id is still refused, new grants count on
    assert auth.claim_request("old-request-0001", "f" * 64, NOW) == ("0" * 64, '{"x":1}')
    iid = Installation.parse(_machine(mak)[0])
    auth.confirm(iid, cat, now=NOW)
    assert auth.key_status(mak, cat)["mak_used"] == 3
    auth.close()
    db = sqlite3.connect(path / "records.sqlite")
    versions = [v for (v,) in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    db.close()
    assert versions == [1, 2, 3, 4]
    assert meta["schema_version"] == "4" and meta["root_key_id"] == report_root(path)
    assert LocalAuthority.open(path).key_status(csvlk, cat)["kms_hosts_used"] == 1


def report_root(path: Path) -> str:
    return str(LocalAuthority.open(path).report(load_catalog())["root_key_id"])


def test_records_belong_to_one_authority(tmp_path: Path, postgres: TestPostgres) -> None:
    """A database that holds one authority's records is refused to another (its keys' tags
    would not verify there): at init, before any file is written, and at open."""
    from adba.errors import AuthorityError

    url = postgres.new_database()
    LocalAuthority.init(tmp_path / "a", now=NOW, database=url)
    with pytest.raises(AuthorityError, match="already belong to the authority"):
        LocalAuthority.init(tmp_path / "b", now=NOW, database=url)
    assert not (tmp_path / "b").exists()
    LocalAuthority.init(tmp_path / "c", now=NOW)
    with pytest.raises(AuthorityError, match="belong to the authority with root key"):
        LocalAuthority.open(tmp_path / "c", database=url)
    versions = postgres.query(
        "SELECT version FROM schema_migrations ORDER BY version", database=url.rsplit("/", 1)[1]
    )
    assert [v for (v,) in versions] == [1, 2, 3, 4]


def test_the_cli_keeps_the_records_where_init_was_told(
    tmp_path: Path,
    postgres: TestPostgres,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from adba.cli import main

    url = postgres.new_database()
    path = str(tmp_path / "a")
    assert main(["authority", "init", "--path", path, "--database", url]) == 0
    assert (tmp_path / "a" / "records.url").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "a" / "records.sqlite").exists()
    mint = ["authority", "mint", "--path", path, "--type", "mak", "--product", SERVER]
    assert main([*mint, "--count", "3"]) == 0
    capsys.readouterr()
    assert main(["authority", "report", "--path", path, "--json"]) == 0
    (key,) = json.loads(capsys.readouterr().out)["keys"]
    assert key["mak_allowed"] == 3
    # without records.url: the variable names the database; without either, no records
    (tmp_path / "a" / "records.url").unlink()
    assert main(["authority", "report", "--path", path]) == 13
    assert "missing records.sqlite" in capsys.readouterr().err
    monkeypatch.setenv("ADBA_AUTHORITY_DATABASE", url)
    assert main(["authority", "report", "--path", path, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["keys"]) == 1
    assert main(["authority", "report", "--path", path, "--database", "mysql://x/y"]) == 2
    assert "postgresql://" in capsys.readouterr().err
    # a database that is not there: one line, exit 13, nothing created
    dead = f"postgresql://adba@127.0.0.1:{postgres.port}/no_such_db"
    assert main(["authority", "init", "--path", str(tmp_path / "b"), "--database", dead]) == 13
    assert "unavailable" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
