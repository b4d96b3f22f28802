"""AVMA pieces without a host process: vsock and Unix addresses, framing, the fixed
layouts, the certificate's purpose, the catalogue's entitlement and version rule."""

from __future__ import annotations

import copy
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from adba.avma.protocol import (
    ANSWER_SIZE,
    REQUEST_SIZE,
    Answer,
    AvmaHostCertificate,
    Request,
    certificate_message,
    parse_answer,
    parse_request,
)
from adba.avma.transport import (
    DEFAULT_PORT,
    MAX_FRAME,
    Address,
    exchange,
    frame,
    listen,
    read_frame,
)
from adba.catalog import load_catalog
from adba.errors import AvmaError, CatalogError, InvalidInput
from adba.keys import KeyType, make_key, parse_key, public_tag, verify_tag

BUILTIN = Path(__file__).resolve().parents[2] / "adba" / "data" / "catalog.json"


# -- addresses -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "family", "cid", "port", "path"),
    [
        ("unix:/run/adba/avma.sock", "unix", 0, 0, "/run/adba/avma.sock"),
        ("vsock:2:1690", "vsock", 2, 1690, ""),
        ("vsock:host", "vsock", 2, DEFAULT_PORT, ""),
        ("vsock:any:5000", "vsock", 0xFFFFFFFF, 5000, ""),
        (" vsock:3 ", "vsock", 3, DEFAULT_PORT, ""),
    ],
)
def test_addresses_parse_and_print_back(
    text: str, family: str, cid: int, port: int, path: str
) -> None:
    a = Address.parse(text)
    assert (a.family, a.cid, a.port, a.path) == (family, cid, port, path)
    assert Address.parse(str(a)) == a
    assert a.sockaddr() == (path if family == "unix" else (cid, port))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "vsock",
        "vsock:",
        "tcp:127.0.0.1:1690",
        "vsock:two",
        "vsock:2:port",
        "vsock:-1:1690",
        "vsock:2:0",
        "vsock:4294967296:1",
        "vsock:2:4294967295",
        "unix:" + "x" * 108,
        "unix:/a\0b",
    ],
)
def test_bad_addresses_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"AVMA address|vsock|Unix|transport"):
        Address.parse(text)


def test_vsock_listens_here() -> None:
    """Binding works on these machines (connecting over loopback does not: no VMs)."""
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK in this Python")
    try:
        sock = listen(Address.parse(f"vsock:any:{40000 + os.getpid() % 20000}"))
    except AvmaError as exc:
        pytest.skip(f"no vsock here: {exc.message}")
    with sock:
        assert sock.getsockname()[0] == 0xFFFFFFFF


# -- framing ---------------------------------------------------------------------------------
def test_frames_round_trip_and_are_bounded() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame(b"hello") + frame(b""))
        deadline = time.monotonic() + 2
        assert read_frame(b, deadline) == b"hello"
        assert read_frame(b, deadline) == b""
        a.sendall((MAX_FRAME + 1).to_bytes(2, "big"))
        with pytest.raises(AvmaError, match="announced"):
            read_frame(b, deadline)
    with pytest.raises(AvmaError, match="at most"):
        frame(bytes(MAX_FRAME + 1))


def test_a_short_frame_or_a_silent_peer_is_not_an_answer() -> None:
    a, b = socket.socketpair()
    with b:
        a.sendall(b"\x00\x05abc")
        a.close()
        with pytest.raises(AvmaError, match="closed the connection after 3 of 5"):
            read_frame(b, time.monotonic() + 2)
    a, b = socket.socketpair()
    with a, b, pytest.raises(TimeoutError):
        read_frame(b, time.monotonic() + 0.2)


def test_exchange_over_a_unix_socket(tmp_path: Path) -> None:
    address = Address.parse(f"unix:{tmp_path / 's'}")
    server = listen(address)
    (tmp_path / "s").chmod(0o600)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(frame(read_frame(conn, time.monotonic() + 2)[::-1]))

    threading.Thread(target=answer, daemon=True).start()
    with server:
        assert exchange(address, b"abc", timeout=2) == b"cba"
    listen(address).close()  # a stale socket file is replaced


# -- layouts ---------------------------------------------------------------------------------
def _cert() -> AvmaHostCertificate:
    return AvmaHostCertificate(bytes(range(32)), uuid.uuid4(), 2_000_000_000, bytes(64))


def test_sizes_stay_inside_the_kms_budget() -> None:
    assert REQUEST_SIZE == 96 and ANSWER_SIZE == 218 <= 250
    answer = Answer(0, bytes(16), 1, 604800, 86400, _cert())
    assert len(answer.to_bytes()) == ANSWER_SIZE
    assert parse_answer(answer.to_bytes()) == answer


def test_requests_round_trip_and_malformed_ones_are_refused() -> None:
    req = Request(uuid.uuid4(), uuid.uuid4(), -5, os.urandom(16), "vm-é1")
    raw = req.to_bytes()
    assert len(raw) == REQUEST_SIZE and parse_request(raw) == req
    for bad in (
        raw[:-1],
        b"ADBK" + raw[4:],  # a KMS request's magic
        raw[:4] + b"\x02" + raw[5:],  # version
        raw[:5] + b"\x01" + raw[6:],  # the zero bytes
        raw[:64] + b"\x20" + raw[65:],  # name length over 31
        raw[:-1] + b"x",  # bytes after the name
        raw[:64] + b"\x01\x07" + raw[66:],  # not printable
    ):
        with pytest.raises(AvmaError):
            parse_request(bad)


def test_unknown_status_and_wrong_size_answers_are_refused() -> None:
    raw = Answer(0, bytes(16), 1, 2, 3, _cert()).to_bytes()
    with pytest.raises(AvmaError, match="status 9"):
        parse_answer(raw[:5] + b"\x09" + raw[6:])
    with pytest.raises(AvmaError, match="218 bytes"):
        parse_answer(raw + b"\0")


def test_a_kms_host_certificate_is_not_an_avma_host_certificate(tmp_path: Path) -> None:
    from adba.authority import LocalAuthority
    from adba.kms.protocol import certificate_message as kms_message

    auth = LocalAuthority.init(tmp_path / "auth", now=int(time.time()))
    root = (auth.path / "root.pub").read_text()
    from adba.license import load_root_public_key

    root_key = load_root_public_key(auth.path / "root.pub")
    assert root
    catalog = load_catalog()
    key, sku = bytes(range(32)), catalog.edition("Nimbus Server Datacenter").sku
    cert = auth.certify_avma_host(key, "h1", "Nimbus Server Datacenter", catalog, now=1)
    assert cert.verify(root_key) and cert.edition_sku == sku
    assert cert.signature == auth._root_key.sign(certificate_message(key, sku, cert.not_after))
    # the root's signature for the same key as a KMS host (its purpose) does not pass
    kms_signature = auth._root_key.sign(kms_message(key, "", sku, cert.not_after))
    forged = AvmaHostCertificate(key, sku, cert.not_after, kms_signature)
    assert not forged.verify(root_key)
    assert not AvmaHostCertificate(key, uuid.uuid4(), cert.not_after, cert.signature).verify(
        root_key
    )


# -- the catalogue ---------------------------------------------------------------------------
def test_the_builtin_catalogue_entitles_datacenter_only() -> None:
    c = load_catalog()
    dc, std = c.edition("Nimbus Server Datacenter").sku, c.edition("Nimbus Server Standard").sku
    client = c.edition("Nimbus Workstation Enterprise").sku
    assert c.avma_host(dc) and not c.avma_host(std)
    assert c.avma_covers(dc, std) and c.avma_covers(dc, dc)
    assert not c.avma_covers(std, std) and not c.avma_covers(dc, client)
    for g in c.avma_guests:  # public keys in our format, with the public tag
        key = parse_key(g.key)
        assert key.type is KeyType.AVMA and key.code == c.edition(g.sku).code
        assert verify_tag(key, b"")


def _with_avma(tmp: Path, avma: dict[str, Any]) -> Path:
    doc = copy.deepcopy(json.loads(BUILTIN.read_text()))
    doc["avma"] = avma
    path = tmp / "catalog.json"
    path.write_text(json.dumps(doc))
    return path


def test_the_host_version_decides_the_guest_editions(tmp_path: Path) -> None:
    base = load_catalog()
    dc, std = base.edition("Nimbus Server Datacenter"), base.edition("Nimbus Server Standard")
    key = make_key(KeyType.AVMA, std.code, 1, public_tag(KeyType.AVMA, std.code, 1)).text
    dc_key = make_key(KeyType.AVMA, dc.code, 1, public_tag(KeyType.AVMA, dc.code, 1)).text
    c = load_catalog(
        _with_avma(
            tmp_path,
            {
                "hosts": [{"sku": str(dc.sku), "version": 2026}],
                "guests": [
                    {"sku": str(std.sku), "version": 2028, "key": key},  # newer than the host
                    {"sku": str(dc.sku), "version": 2024, "key": dc_key},
                ],
            },
        )
    )
    assert not c.avma_covers(dc.sku, std.sku) and c.avma_covers(dc.sku, dc.sku)


@pytest.mark.parametrize(
    ("avma", "match"),
    [
        ({"hosts": [{"sku": "0cf4c426-801c-4fd3-bf64-494f56343650", "version": 1}]}, "server"),
        (
            {
                "guests": [
                    {
                        "sku": "1e804406-284d-45d3-b919-cb08ca26e71d",
                        "version": 1,
                        "key": "BFJ7R-K34JM-8RXQ7-GQKQ7-PB943",  # the GVLK
                    }
                ]
            },
            "not an AVMA key",
        ),
        (
            {
                "guests": [
                    {
                        "sku": "1e804406-284d-45d3-b919-cb08ca26e71d",
                        "version": 1,
                        "key": make_key(KeyType.AVMA, 201, 1, 0).text,  # no public tag
                    }
                ]
            },
            "public tag",
        ),
    ],
)
def test_a_bad_avma_section_is_refused(tmp_path: Path, avma: dict[str, Any], match: str) -> None:
    with pytest.raises(CatalogError, match=match):
        load_catalog(_with_avma(tmp_path, avma))


def test_an_avma_key_for_an_edition_no_host_activates_is_an_invalid_key(tmp_path: Path) -> None:
    from adba.agent import run_agent
    from adba.authority import LocalAuthority

    auth = LocalAuthority.init(tmp_path / "auth", now=int(time.time()))
    key = make_key(KeyType.AVMA, 101, 1, public_tag(KeyType.AVMA, 101, 1)).text  # a client
    config = tmp_path / "agent.toml"
    config.write_text(
        f'root_key = "{auth.path / "root.pub"}"\nstate_path = "{tmp_path / "s.json"}"\n'
        f'[[products]]\nedition = "Nimbus Workstation Enterprise"\nkey = "{key}"\n'
    )
    [outcome] = run_agent(str(config), env={}).outcomes
    assert outcome.code == "invalid-key" and "not activated by AVMA" in outcome.message
