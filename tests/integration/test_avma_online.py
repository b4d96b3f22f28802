"""AVMA hosts certified online: a real `adba authority serve` process, the host's own key
proving its entitlement (`adba avma init --online URL --key-file FILE`), a real `adba avma
serve` and a guest agent activating against the host certified that way."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adba.agent import run_agent, status
from adba.authority import LocalAuthority
from adba.avma.protocol import AvmaHostCertificate
from adba.catalog import load_catalog
from adba.keys import KeyType, make_key
from tests.integration.test_avma import DATACENTER, STANDARD, Host, guest, host_agent
from tests.servers import TestAuthority

pytestmark = pytest.mark.integration

CATALOG = load_catalog()
ENDPOINT = "/v1/avma-hosts/certifications"


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[TestAuthority]:
    path = tmp_path / "authority"
    LocalAuthority.init(path, now=int(time.time()) - 86400)
    server = TestAuthority(path)
    try:
        yield server.start()
    finally:
        server.stop()


def _auth(authority: TestAuthority) -> LocalAuthority:
    return LocalAuthority.open(authority.path)


def mint(authority: TestAuthority, kind: KeyType, product: str, count: int = 1) -> str:
    n = count if kind is KeyType.MAK else None
    return _auth(authority).mint(kind, product, CATALOG, now=int(time.time()), mak_count=n).text


def adba(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADBA_")}
    return subprocess.run(
        [sys.executable, "-m", "adba", *argv], capture_output=True, text=True, env=env, timeout=60
    )


def init_online(tmp: Path, authority: TestAuthority, key: str, name: str, *extra: str) -> Any:
    key_file = tmp / f"{name}-key.txt"
    key_file.write_text(key + "\n")
    return adba(
        "avma", "init", "--state-dir", str(tmp / name), "--online", authority.url,
        "--key-file", str(key_file), "--host-id", name, "--json", *extra,
    )  # fmt: skip


def post(authority: TestAuthority, body: dict[str, Any]) -> httpx.Response:
    body = {"request_id": secrets.token_hex(8), "host_id": "hv", **body}
    body.setdefault("host_public_key", secrets.token_hex(32))
    with httpx.Client(timeout=10) as client:
        return client.post(authority.url + ENDPOINT, json=body)


def test_a_host_certified_online_with_its_mak_activates_its_guests(
    tmp_path: Path, authority: TestAuthority
) -> None:
    auth = _auth(authority)
    mak = mint(authority, KeyType.MAK, DATACENTER)
    res = init_online(tmp_path, authority, mak, "hv1")
    assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads(res.stdout)
    assert info["edition"] == DATACENTER and info["host_id"] == "hv1"
    saved = json.loads((tmp_path / "hv1" / "avma-host.json").read_text())
    cert = AvmaHostCertificate.from_bytes(bytes.fromhex(saved["certificate"]))
    assert cert.public_key.hex() == info["host_key"]
    assert mak not in (tmp_path / "hv1" / "avma-host.json").read_text()  # the key is not kept
    # the host is a real process, the guest a real agent run; the root is the authority's
    host = Host(
        tmp_path / "hv1",
        host_agent(tmp_path, auth, DATACENTER, licensed=True),
        tmp_path / "hv1.sock",
    ).start()
    try:
        config = guest(tmp_path, auth, host.sock, "vm1", STANDARD)
        [outcome] = run_agent(config, env={}).outcomes
        assert outcome.activated, outcome.message
        [s] = status(config_path=config)
        assert (s.status, s.channel) == ("licensed", "AVMA")
        assert s.avma_host and cert.public_key[:8].hex() in s.avma_host
    finally:
        host.stop()


def test_a_csvlk_covering_datacenter_certifies_a_host(
    tmp_path: Path, authority: TestAuthority
) -> None:
    csvlk = mint(authority, KeyType.CSVLK, "Nimbus Server 2026 CSVLK")
    res = init_online(tmp_path, authority, csvlk, "hv2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["edition"] == DATACENTER


@pytest.mark.parametrize(
    "case, status_code, error",
    [
        ("standard-mak", 403, "avma-not-entitled"),
        ("gvlk", 403, "avma-not-entitled"),
        ("avma-key", 403, "avma-not-entitled"),
        ("client-csvlk", 403, "avma-not-entitled"),
        ("mak-for-another-edition", 403, "avma-not-entitled"),
        ("typo", 400, "invalid-key"),
        ("recoded-standard-mak", 403, "authority-refused"),
        ("another-authoritys-mak", 403, "authority-refused"),
        ("unknown-edition", 400, "unknown-product"),
        ("bad-host-key", 400, "invalid-request"),
    ],
)
def test_a_key_that_proves_no_entitlement_is_refused_with_its_code(
    tmp_path: Path, authority: TestAuthority, case: str, status_code: int, error: str
) -> None:
    datacenter_mak = mint(authority, KeyType.MAK, DATACENTER)
    body: dict[str, Any] = {"key": datacenter_mak}
    if case == "standard-mak":
        body["key"] = mint(authority, KeyType.MAK, STANDARD)
    elif case == "gvlk":
        body["key"] = CATALOG.edition(DATACENTER).gvlk
    elif case == "avma-key":
        body["key"] = next(g.key for g in CATALOG.avma_guests)
    elif case == "client-csvlk":
        body["key"] = mint(authority, KeyType.CSVLK, "Nimbus Client 2026 CSVLK")
    elif case == "mak-for-another-edition":
        body["edition"] = STANDARD
    elif case == "typo":
        last = "B" if datacenter_mak[-1] != "B" else "C"
        body["key"] = datacenter_mak[:-1] + last
    elif case == "recoded-standard-mak":  # a valid checksum, the tag of another key
        from adba.keys import parse_key

        std = parse_key(mint(authority, KeyType.MAK, STANDARD))
        body["key"] = make_key(
            KeyType.MAK, CATALOG.edition(DATACENTER).code, std.serial, std.tag
        ).text
    elif case == "another-authoritys-mak":
        other = LocalAuthority.init(tmp_path / "other", now=int(time.time()))
        body["key"] = other.mint(KeyType.MAK, DATACENTER, CATALOG, now=int(time.time())).text
    elif case == "unknown-edition":
        body["edition"] = "Nimbus Server Ultimate"
    elif case == "bad-host-key":
        body["host_public_key"] = "00" * 31
    response = post(authority, body)
    assert response.status_code == status_code, response.text
    data = response.json()
    assert data["error"] == error and data["message"], data
    # nothing was recorded: the Datacenter MAK still certifies its one host
    ok = post(authority, {"key": datacenter_mak})
    assert ok.status_code == 200, ok.text


def test_the_cli_says_why_a_standard_mak_is_refused(
    tmp_path: Path, authority: TestAuthority
) -> None:
    res = init_online(tmp_path, authority, mint(authority, KeyType.MAK, STANDARD), "hv3")
    assert res.returncode == 13, res.stdout + res.stderr
    err = json.loads(res.stdout or res.stderr)
    assert err["error"] == "avma-not-entitled", err
    assert "not entitled to activate virtual machines" in err["message"]
    assert not (tmp_path / "hv3" / "avma-host.json").exists()


def test_a_mak_certifies_at_most_its_activation_count_of_hosts(
    authority: TestAuthority,
) -> None:
    mak = mint(authority, KeyType.MAK, DATACENTER, count=2)
    keys = {name: secrets.token_hex(32) for name in ("hv1", "hv2", "hv3")}
    for name in ("hv1", "hv2"):
        res = post(authority, {"key": mak, "host_id": name, "host_public_key": keys[name]})
        assert res.status_code == 200, res.text
    third = post(authority, {"key": mak, "host_id": "hv3", "host_public_key": keys["hv3"]})
    assert (third.status_code, third.json()["error"]) == (409, "activation-limit"), third.text
    # a certified host asking again with its key pair is not counted; a new pair is a
    # reactivation of the same host, not a third host
    again = post(authority, {"key": mak, "host_id": "hv1", "host_public_key": keys["hv1"]})
    assert again.status_code == 200, again.text
    rekeyed = post(authority, {"key": mak, "host_id": "hv2", "host_public_key": "ab" * 32})
    assert rekeyed.status_code == 200, rekeyed.text
    cert = AvmaHostCertificate.from_bytes(bytes.fromhex(rekeyed.json()["certificate"]))
    assert cert.public_key == bytes.fromhex("ab" * 32)
    assert rekeyed.json()["edition"] == DATACENTER


def test_a_request_id_is_answered_once(authority: TestAuthority) -> None:
    mak = mint(authority, KeyType.MAK, DATACENTER)
    body = {
        "request_id": secrets.token_hex(8),
        "key": mak,
        "host_id": "hv1",
        "host_public_key": secrets.token_hex(32),
    }
    refused = post(authority, {**body, "key": mint(authority, KeyType.MAK, STANDARD)})
    assert refused.status_code == 403  # ... and its id is not used up:
    first, retry = post(authority, body), post(authority, body)
    assert first.status_code == retry.status_code == 200
    assert first.json() == retry.json()  # the same certificate again, not a new one
    other = post(authority, {**body, "host_id": "hv2"})
    assert (other.status_code, other.json()["error"]) == (409, "replayed-request")
