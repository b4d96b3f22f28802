"""TLS failures say which check failed (exit 7 each, a different message each), against the
real test slapd (its own self-signed CA) and a real TLS listener for the expired case."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adba.cli import main

pytestmark = pytest.mark.integration


def _self_signed(path: Path, *, days: int, expired: bool = False) -> tuple[str, str]:
    """A self-signed CA certificate for 127.0.0.1 (and its key): valid now, or expired."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other-ca")])
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=days + 1 if expired else 1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path / "cert.pem"), str(path / "key.pem")


@pytest.fixture
def expired_tls_server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A TLS listener on 127.0.0.1 whose certificate expired yesterday."""
    cert, key = _self_signed(tmp_path / "expired", days=30, expired=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                continue
            sock.settimeout(5)
            try:
                with context.wrap_socket(sock, server_side=True):
                    pass
            except OSError:
                pass  # the client refuses the certificate: the handshake fails here too

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], cert
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _args(slapd: Any, **override: str) -> list[str]:
    args = slapd.cli_args("admin")
    for flag, value in override.items():
        flag = "--" + flag.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def _fail(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(["ao", "list", *argv])
    err = capsys.readouterr().err
    assert code == 7, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_each_tls_failure_says_what_failed(
    slapd: Any,
    tmp_path: Path,
    expired_tls_server: tuple[int, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    host_port = slapd.ldaps_uri.split("://", 1)[1]
    ldaps = {"uri": slapd.ldaps_uri}
    other_ca, _ = _self_signed(tmp_path / "other", days=30)
    port, expired_cert = expired_tls_server
    plain_port = slapd.uri.rsplit(":", 1)[1]
    messages = {
        "name": _fail(capsys, _args(slapd, **ldaps, tls_name="dc9.nowhere.test")),
        "name-starttls": _fail(capsys, _args(slapd, tls_name="dc9.nowhere.test")),
        "ca": _fail(capsys, _args(slapd, **ldaps, ca_file=other_ca)),
        "ca-starttls": _fail(capsys, _args(slapd, ca_file=other_ca)),
        "expired": _fail(
            capsys, _args(slapd, uri=f"ldaps://127.0.0.1:{port}", ca_file=expired_cert)
        ),
        "no-tls": _fail(
            capsys, _args(slapd, uri=f"ldaps://{host_port.rsplit(':', 1)[0]}:{plain_port}")
        ),
    }
    assert "name mismatch" in messages["name"] and "dc9.nowhere.test" in messages["name"]
    assert "name mismatch" in messages["name-starttls"]
    assert "untrusted certificate" in messages["ca"] and other_ca in messages["ca"]
    assert "untrusted certificate" in messages["ca-starttls"]
    assert "has expired" in messages["expired"]
    assert "does not speak TLS on that port" in messages["no-tls"]
    kinds = {"name mismatch", "untrusted certificate", "has expired", "does not speak TLS"}
    for kind in kinds:  # each message names one failure, never another's
        assert (
            sum(kind in m for m in messages.values())
            == {
                "name mismatch": 2,
                "untrusted certificate": 2,
                "has expired": 1,
                "does not speak TLS": 1,
            }[kind]
        ), kind
