"""The agent's side of KMS: send one request to one host and verify the answer.

A response is trusted only when the host certificate verifies under the pinned root key and
has not expired, the host signature over (request, response) verifies under the certified
key, the nonce is ours, and the host's CSVLK covers the product. Anything else is a rogue
host (:class:`RogueHost`): rejected and logged by the caller, and the next host is tried.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from ..errors import KmsError
from .protocol import (
    RESPONSE_SIZE,
    STATUS_OK,
    Request,
    Response,
    certificate_message,
    parse_response,
    response_message,
)

__all__ = ["KmsAnswer", "KmsUnreachable", "RogueHost", "ask", "hostport"]


class KmsUnreachable(KmsError):
    """The KMS host did not answer."""

    code = "kms-unreachable"


class RogueHost(KmsError):
    """The KMS host's answer does not verify: not a host activated by our authority."""

    code = "kms-rogue-host"


def hostport(address: str, port: int) -> str:
    """``192.0.2.1:1688`` or ``[2001:db8::1]:1688``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class KmsAnswer:
    response: Response
    address: str
    port: int

    @property
    def where(self) -> str:
        return hostport(self.address, self.port)


def _exchange(address: str, port: int, payload: bytes, timeout: float) -> bytes:
    """Send ``payload`` and read the answer: the connect waits at most ``timeout``, and so does
    the whole answer (a deadline, not per read: a host trickling bytes gains nothing)."""
    import time

    where = hostport(address, port)
    connected = False
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            connected = True
            deadline = time.monotonic() + timeout
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while len(data) <= RESPONSE_SIZE:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(RESPONSE_SIZE + 1 - len(data))
                if not chunk:
                    break
                data += chunk
            return data
    except TimeoutError as exc:
        text = "is not answering: no answer" if connected else "did not accept a connection"
        raise KmsUnreachable(f"KMS host {where} {text} within {timeout:g} s") from exc
    except OSError as exc:
        raise KmsUnreachable(f"KMS host {where} did not answer ({exc.strerror or exc})") from exc


def ask(
    address: str,
    port: int,
    *,
    cmid: uuid.UUID,
    sku: uuid.UUID,
    kms_id: uuid.UUID,
    kind: int,
    machine: str,
    now: int,
    root_public_key: bytes,
    csvlk_skus: frozenset[str] | tuple[str, ...],
    timeout: float = 2.0,
) -> KmsAnswer:
    """One activation request; returns the verified answer or raises
    :class:`KmsUnreachable`, :class:`RogueHost` or :class:`KmsError`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    request = Request(kind, cmid, sku, kms_id, now, os.urandom(16), machine[:63])
    payload = request.encode()
    data = _exchange(address, port, payload, timeout)
    where = hostport(address, port)
    try:
        response = parse_response(data)
    except KmsError as exc:
        raise RogueHost(f"KMS host {where} sent a malformed answer: {exc.message}") from exc
    cert = response.certificate
    try:
        Ed25519PublicKey.from_public_bytes(root_public_key).verify(
            cert.signature,
            certificate_message(cert.public_key, cert.epid, cert.csvlk_sku, cert.not_after),
        )
    except (InvalidSignature, ValueError) as exc:
        raise RogueHost(f"KMS host {where} is not certified by the pinned authority") from exc
    try:
        Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
            response.signature, response_message(payload, data[:-64])
        )
    except (InvalidSignature, ValueError) as exc:
        raise RogueHost(f"KMS host {where} sent an answer its key did not sign") from exc
    if response.nonce != request.nonce:
        raise RogueHost(f"KMS host {where} replayed an old answer (nonce mismatch)")
    if cert.not_after < now:
        raise RogueHost(f"KMS host {where} presents an expired certificate")
    if response.status != STATUS_OK:
        raise KmsError(f"KMS host {where} cannot activate this product (its key does not cover it)")
    if str(cert.csvlk_sku) not in csvlk_skus:
        raise KmsError(
            f"KMS host {where} has a key ({cert.csvlk_sku}) that does not cover this product"
        )
    return KmsAnswer(response, address, port)
