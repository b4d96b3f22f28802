"""The authority service under hostile clients, as a real ``adba authority serve`` process:
slow and many connections, bad requests of every kind, retries, signals."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adba.authority import LocalAuthority
from adba.authority.client import RemoteAuthority
from adba.catalog import load_catalog
from adba.keys import KeyType
from adba.license import decode_license
from tests.conftest import NOW
from tests.servers import TestAuthority, stop_process, wait_for_port

pytestmark = pytest.mark.integration

SERVER_CSVLK = "Nimbus Server 2026 CSVLK"
GUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


class Authority(TestAuthority):
    """``adba authority serve`` with extra options and, if asked, a lower descriptor limit."""

    __test__ = False

    def __init__(self, path: Path, *extra: str, nofile: int | None = None) -> None:
        super().__init__(path)
        self.extra, self.nofile = extra, nofile

    def start(self) -> Authority:
        """Start, and make sure the process answering is ours: on a busy machine another
        test's server may take the port between free_port and bind (then: a new port)."""
        from adba.lab import free_port

        root = LocalAuthority.open(self.path).root_public_key.hex()
        for _ in range(3):
            try:
                self._start()
            except RuntimeError:  # exited before it listened: the port was taken
                self.port = free_port()
                continue
            assert self.proc is not None
            deadline = time.monotonic() + 20
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    r = httpx.get(f"{self.url}/v1/health", timeout=2)
                    if r.status_code == 200 and r.json().get("root_key") == root:
                        return self
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.05)
            stop_process(self.proc)
            self.port = free_port()
        raise RuntimeError(f"authority did not start: {self.log_tail()}")

    def _start(self) -> None:
        from adba.lab import free_port

        self.port = self.port or free_port()
        argv = [sys.executable, "-m", "adba", "authority", "serve", "--path", str(self.path)]
        argv += ["--listen", "127.0.0.1", "--port", str(self.port), *self.extra]
        nofile = self.nofile

        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.path / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=limit,
            )
        wait_for_port(self.port, self.proc, "authority", self.log_tail)


#: the tests of request ids and counting run on both engines of the records
BOTH_ENGINES = pytest.mark.parametrize("engine", ["sqlite", "postgresql"])


@pytest.fixture
def authority_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / "authority"
    callspec = getattr(request.node, "callspec", None)
    engine = callspec.params.get("engine") if callspec else None
    database = (
        request.getfixturevalue("postgres").new_database() if engine == "postgresql" else None
    )
    LocalAuthority.init(path, now=NOW - 86400, database=database)
    return path


@pytest.fixture
def authority(authority_dir: Path) -> Iterator[Authority]:
    server = Authority(authority_dir)
    try:
        yield server.start()
    finally:
        server.stop()


def mint(path: Path, kind: KeyType = KeyType.CSVLK, product: str = SERVER_CSVLK) -> str:
    return LocalAuthority.open(path).mint(kind, product, load_catalog(), now=int(time.time())).text


def records(path: Path) -> str:
    import sqlite3

    db = sqlite3.connect(path / "records.sqlite")
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


# -- slow and many clients ---------------------------------------------------------------------
def test_slow_clients_from_one_address_cannot_starve_the_authority(authority_dir: Path) -> None:
    """400 connections from 127.0.0.2 trickle a request head, against a server whose
    descriptor limit is 256: the health check from 127.0.0.1 keeps answering, the slow
    connections are dropped at the deadline, and the log stays small and traceback-free."""
    server = Authority(authority_dir, "--request-timeout", "2", nofile=256).start()
    slow: list[socket.socket] = []
    try:
        for _ in range(400):
            s = socket.socket()
            s.setblocking(False)
            s.bind(("127.0.0.2", 0))
            s.connect_ex(("127.0.0.1", server.port))
            slow.append(s)
        latencies, failures = [], 0
        started = time.monotonic()
        with httpx.Client(timeout=5) as client:
            while time.monotonic() - started < 8:
                for s in slow:  # trickle: one byte of a request head that never ends
                    with contextlib.suppress(OSError):
                        s.send(b"G")
                t0 = time.monotonic()
                try:
                    r = client.get(f"{server.url}/v1/health", headers={"connection": "close"})
                    ok = r.status_code == 200 and r.json()["status"] == "ok"
                except httpx.HTTPError:
                    ok = False
                failures += not ok
                latencies.append(time.monotonic() - t0)
                time.sleep(0.2)
        assert failures == 0, (failures, server.log_tail())
        assert max(latencies) < 2.5, sorted(latencies)[-5:]
        # every slow connection was dropped: refused over the caps, or at the deadline
        dropped = 0
        for s in slow:
            s.setblocking(True)
            s.settimeout(0.5)
            try:
                dropped += s.recv(1) == b""
            except ConnectionResetError:
                dropped += 1
            except (TimeoutError, OSError):
                pass
        assert dropped == len(slow)
        assert server.proc is not None and server.proc.poll() is None
    finally:
        for s in slow:
            s.close()
        server.stop()
    log = server.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert len(log) < 20_000, len(log)
    assert "slow connections dropped" in log and "connections refused" in log


def test_a_trickled_body_is_dropped_at_the_deadline(authority_dir: Path) -> None:
    server = Authority(authority_dir, "--request-timeout", "1.5").start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(
                b"POST /v1/confirmations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                b"\r\ncontent-length: 1000\r\n\r\n{"
            )
            s.settimeout(1)
            t0, closed = time.monotonic(), False
            while time.monotonic() - t0 < 6 and not closed:
                try:
                    s.send(b" ")
                    closed = s.recv(1) == b""
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
            assert closed and 1.0 < time.monotonic() - t0 < 5
    finally:
        server.stop()


# -- errors in our format, for every endpoint and every kind of bad request ---------------------
POSTS = [
    "/v1/csvlk/activations",
    "/v1/kms-hosts/activations",
    "/v1/avma-hosts/certifications",
    "/v1/confirmations",
    "/v1/mak/proxy",
]
JSON = {"content-type": "application/json"}


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 16384):
        yield data[i : i + 16384]


BAD: dict[str, tuple[int, str, dict[str, Any]]] = {
    "no body": (400, "invalid-request", {"content": b"", "headers": JSON}),
    "bad json": (400, "malformed-json", {"content": b'{"request_id": ', "headers": JSON}),
    "json not an object": (400, "invalid-request", {"content": b"[1, 2]", "headers": JSON}),
    "not utf-8": (400, "malformed-json", {"content": b'{"a": "\xff"}', "headers": JSON}),
    "wrong content-type": (
        415,
        "unsupported-media-type",
        {"content": b"{}", "headers": {"content-type": "text/plain"}},
    ),
    "no content-type": (415, "unsupported-media-type", {"content": b"{}"}),
    "oversized": (413, "too-large", {"content": b"{" + b" " * 300_000 + b"}", "headers": JSON}),
    "chunked oversized": (
        413,
        "too-large",
        {"content": _chunks(b"[" + b"0," * 200_000 + b"0]"), "headers": JSON},
    ),
    "unknown field": (400, "invalid-request", {"json": {"request_id": "x" * 16, "admin": 1}}),
}


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_request_gets_our_error_format(
    authority: Authority, path: str, case: str
) -> None:
    status, code, request = BAD[case]
    if callable(getattr(request.get("content"), "__next__", None)):
        request = {**request, "content": _chunks(b"[" + b"0," * 200_000 + b"0]")}
    before = records(authority.path)
    with httpx.Client(timeout=10) as client:
        r = client.post(authority.url + path, **request)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"} and body["error"] == code and body["message"]
    assert records(authority.path) == before


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nothing-here", 404, "not-found"),
        ("POST", "/v1/nothing-here", 404, "not-found"),
        ("GET", "/", 404, "not-found"),
        ("GET", "/docs", 404, "not-found"),
        ("DELETE", "/v1/health", 405, "method-not-allowed"),
        ("POST", "/v1/health", 405, "method-not-allowed"),
        *[("GET", p, 405, "method-not-allowed") for p in POSTS],
        *[("PUT", p, 405, "method-not-allowed") for p in POSTS],
    ],
)
def test_unknown_paths_and_wrong_methods_get_our_error_format(
    authority: Authority, method: str, path: str, status: int, code: str
) -> None:
    with httpx.Client(timeout=10) as client:
        r = client.request(method, authority.url + path, json={})
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["message"] and len(r.json()) == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /v1/confirmations HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\n" + b"x-long: " + b"a" * 100_000 + b"\r\n\r\n",
    ],
)
def test_what_is_not_http_gets_our_error_format(authority: Authority, raw: bytes) -> None:
    with socket.create_connection(("127.0.0.1", authority.port), timeout=5) as s:
        s.sendall(raw)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:200]
    assert json.loads(body) == {"error": "bad-request", "message": "not a valid HTTP/1.1 request"}
    assert "Traceback" not in authority.log_text()


# -- never a wildcard forest --------------------------------------------------------------------
def test_a_forest_activation_without_a_guid_is_refused(authority: Authority) -> None:
    key = mint(authority.path)
    before = records(authority.path)
    body = {"request_id": secrets.token_hex(8), "key": key, "forest_dn": "dc=x,dc=test"}
    with httpx.Client(timeout=10) as client:
        for extra in ({}, {"forest_guid": None}):
            r = client.post(f"{authority.url}/v1/csvlk/activations", json={**body, **extra})
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "forest-guid-missing"
    assert records(authority.path) == before
    # the same request id, now with a GUID, is answered: the refusal did not use it up
    with httpx.Client(timeout=10) as client:
        r = client.post(f"{authority.url}/v1/csvlk/activations", json={**body, "forest_guid": GUID})
    assert r.status_code == 200, r.text
    assert (
        str(decode_license(__import__("base64").b64decode(r.json()["license"])).forest.guid) == GUID
    )


# -- idempotent retries ------------------------------------------------------------------------
def _activations(path: Path) -> int:
    report = LocalAuthority.open(path).report(load_catalog())
    return sum(k.get("forest_activations", 0) for k in report["keys"])


@BOTH_ENGINES
def test_a_retry_gets_the_first_answer_and_a_reused_id_is_refused(
    authority: Authority, engine: str
) -> None:
    key = mint(authority.path)
    url = f"{authority.url}/v1/csvlk/activations"
    body = {
        "request_id": secrets.token_hex(8),
        "key": key,
        "forest_dn": "dc=x,dc=test",
        "forest_guid": GUID,
    }
    with httpx.Client(timeout=10) as client:
        first = client.post(url, json=body)
        assert first.status_code == 200, first.text
        again = client.post(url, json=body)
        assert again.status_code == 200 and again.json() == first.json()
        authority.restart()
        after_restart = client.post(url, json=body)
        assert after_restart.json() == first.json()
        other = client.post(url, json={**body, "forest_dn": "dc=y,dc=test"})
        assert other.status_code == 409 and other.json()["error"] == "replayed-request"
        elsewhere = client.post(
            f"{authority.url}/v1/confirmations",
            json={"request_id": body["request_id"], "installation_id": "0"},
        )
        assert elsewhere.status_code in (400, 409)
    assert _activations(authority.path) == 1


@BOTH_ENGINES
def test_a_refused_request_does_not_use_up_its_id(authority: Authority, engine: str) -> None:
    from adba.keys import make_key

    url = f"{authority.url}/v1/csvlk/activations"
    rid = secrets.token_hex(8)
    forged = make_key(KeyType.CSVLK, 2, 77, 12345).text
    body = {"request_id": rid, "forest_dn": "dc=x,dc=test", "forest_guid": GUID}
    with httpx.Client(timeout=10) as client:
        refused = client.post(url, json={**body, "key": forged})
        assert refused.status_code == 403 and refused.json()["error"] == "authority-refused"
        ok = client.post(url, json={**body, "key": mint(authority.path)})
        assert ok.status_code == 200, ok.text


class _LoseFirstAnswer:
    """A TCP proxy in front of the authority: the first request reaches it, but its answer
    is thrown away (the connection is closed); later connections pass through."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _message(sock: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with client, socket.create_connection(("127.0.0.1", self.upstream)) as up:
                request = self._message(client)
                up.sendall(request)
                answer = self._message(up)  # the authority has answered (and recorded)
                if self.connections > 1:
                    client.sendall(answer)

    def close(self) -> None:
        self.listener.close()


@BOTH_ENGINES
def test_the_clients_own_retry_after_a_lost_answer_gets_the_original_answer(
    authority: Authority,
    engine: str,
) -> None:
    from adba.license import ForestIdentity

    proxy = _LoseFirstAnswer(authority.port)
    try:
        remote = RemoteAuthority(f"http://127.0.0.1:{proxy.port}", retries=3, pause=0.05)
        forest = ForestIdentity.of("dc=x,dc=test", GUID)
        act = remote.activate_csvlk(mint(authority.path), forest, load_catalog(), now=0)
        assert proxy.connections == 2  # the lost answer, then the retry
        assert decode_license(act.license_der).forest == forest
    finally:
        proxy.close()
    assert _activations(authority.path) == 1


@BOTH_ENGINES
def test_a_second_activation_of_a_forest_or_kms_host_is_not_counted(
    authority: Authority,
    engine: str,
) -> None:
    from adba.license import ForestIdentity

    remote = RemoteAuthority(authority.url)
    key, cat = mint(authority.path), load_catalog()
    forest = ForestIdentity.of("dc=x,dc=test", GUID)
    first = remote.activate_csvlk(key, forest, cat, now=0)
    second = remote.activate_csvlk(key, forest, cat, now=0)  # another request id
    assert second.license_der == first.license_der and second.pid == first.pid
    assert _activations(authority.path) == 1
    host_key = os.urandom(32)
    certs = [remote.activate_kms_host(key, host_key, "kms-1", cat, now=0) for _ in range(12)]
    assert {c.certificate.public_key for c in certs} == {host_key}
    [entry] = [k for k in LocalAuthority.open(authority.path).report(cat)["keys"]]
    [host] = entry["kms_hosts"]
    assert host["activations"] == 1 and host["reactivations_left"] == 9
    remote.activate_kms_host(key, os.urandom(32), "kms-1", cat, now=0)  # a new host key pair
    [host] = LocalAuthority.open(authority.path).report(cat)["keys"][0]["kms_hosts"]
    assert host["activations"] == 2


# -- TLS and signals ---------------------------------------------------------------------------
def test_https_against_a_plain_http_authority_says_so_at_once(authority: Authority) -> None:
    from adba.errors import AuthorityUnavailable

    remote = RemoteAuthority(f"https://127.0.0.1:{authority.port}", retries=3, pause=1)
    t0 = time.monotonic()
    with pytest.raises(AuthorityUnavailable) as info:
        remote.proxy(["0"])
    assert "did not speak TLS" in info.value.message, info.value.message
    assert "not answering" not in info.value.message
    assert time.monotonic() - t0 < 1  # no retries


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_serve_exits_130_on_sigint_and_0_on_sigterm(
    authority_dir: Path, sig: signal.Signals, code: int
) -> None:
    server = Authority(authority_dir).start()
    assert server.proc is not None
    server.proc.send_signal(sig)
    try:
        assert server.proc.wait(timeout=15) == code, server.log_tail()
    finally:
        stop_process(server.proc)
    assert "Traceback" not in server.log_text()


def test_request_ids_kept_before_the_upgrade_are_refused_not_answered(
    authority: Authority,
) -> None:
    """An id kept by schema 2 (no body digest, no answer) gets 409; nothing is counted."""
    import sqlite3

    from adba.confirmation import KIND_MAK_MACHINE, Installation, machine_binding

    cat = load_catalog()
    auth = LocalAuthority.open(authority.path)
    mak = auth.mint(KeyType.MAK, "Nimbus Server Standard", cat, now=NOW, mak_count=1)
    iid = Installation.of(
        KIND_MAK_MACHINE,
        mak,
        machine_binding(uuid.uuid4(), cat.edition("Nimbus Server Standard").sku),
    ).text()
    db = sqlite3.connect(authority.path / "records.sqlite")
    db.execute("INSERT INTO requests (request_id, at) VALUES ('old-request-1', 1)")
    db.commit()
    db.close()
    with httpx.Client(timeout=10) as client:
        url = f"{authority.url}/v1/confirmations"
        r = client.post(url, json={"request_id": "old-request-1", "installation_id": iid})
        assert r.status_code == 409 and r.json()["error"] == "replayed-request", r.text
        assert LocalAuthority.open(authority.path).report(cat)["keys"][0]["mak_used"] == 0
        r = client.post(url, json={"request_id": "new-request-1", "installation_id": iid})
        assert r.status_code == 200, r.text
    _ = json
