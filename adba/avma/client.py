"""The guest side of AVMA: one request to the host, its answer verified (the host certificate
under the pinned root, unexpired and for an edition that covers ours; the host's signature
over our request and its answer; our nonce), each refusal a typed error with its code."""

from __future__ import annotations

import os
import uuid

from ..errors import AvmaError
from .protocol import (
    HOST_NOT_ENTITLED,
    HOST_UNLICENSED,
    NOT_COVERED,
    OK,
    Answer,
    Request,
    parse_answer,
    signed_part,
)
from .transport import Address, exchange

__all__ = [
    "AvmaHostNotEntitled",
    "AvmaHostUncertified",
    "AvmaHostUnlicensed",
    "AvmaNotCovered",
    "AvmaReplayed",
    "AvmaTampered",
    "AvmaUnreachable",
    "ask",
]


class AvmaUnreachable(AvmaError):
    """No AVMA host answered on the transport."""

    code = "avma-unreachable"


class AvmaHostUncertified(AvmaError):
    """The host's certificate is not the pinned authority's AVMA host certificate."""

    code = "avma-host-uncertified"


class AvmaTampered(AvmaError):
    """The answer is malformed or its host signature does not verify."""

    code = "avma-tampered"


class AvmaReplayed(AvmaError):
    """The answer is signed but not for our request (not our nonce)."""

    code = "avma-replayed"


class AvmaHostUnlicensed(AvmaError):
    """The host refused: its own activation is not licensed (lapsed, or never)."""

    code = "avma-host-unlicensed"


class AvmaHostNotEntitled(AvmaError):
    """The host refused: it does not run an edition entitled to activate guests."""

    code = "avma-host-not-entitled"


class AvmaNotCovered(AvmaError):
    """The host may not activate this guest's edition (its version is older)."""

    code = "avma-not-covered"


_REFUSALS: dict[int, tuple[type[AvmaError], str]] = {
    HOST_UNLICENSED: (AvmaHostUnlicensed, "its own activation is not licensed (lapsed, or never)"),
    HOST_NOT_ENTITLED: (AvmaHostNotEntitled, "it runs no edition entitled to activate guests"),
    NOT_COVERED: (AvmaNotCovered, "it may not activate this edition (its version is older)"),
}


def verify(
    where: str,
    request: bytes,
    data: bytes,
    nonce: bytes,
    *,
    root_public_key: bytes,
    host_editions: tuple[str, ...],
    now: int,
) -> Answer:
    """The verified answer to ``request``; raises the refusal's typed error."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        answer = parse_answer(data)
    except AvmaError as exc:
        raise AvmaTampered(f"AVMA host {where} sent a malformed answer: {exc.message}") from exc
    cert = answer.certificate
    if not cert.verify(root_public_key):
        raise AvmaHostUncertified(
            f"AVMA host {where} is not certified as an AVMA host by the pinned authority"
        )
    if now >= cert.not_after:
        raise AvmaHostUncertified(f"AVMA host {where}: its AVMA host certificate expired")
    if answer.nonce != nonce:  # an answer to another request (its signature covers that one)
        raise AvmaReplayed(f"AVMA host {where} replayed an old answer (not our nonce)")
    try:
        Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
            answer.signature, signed_part(request, data[:-64])
        )
    except (InvalidSignature, ValueError) as exc:
        raise AvmaTampered(f"AVMA host {where} sent an answer its key did not sign") from exc
    if answer.status != OK:
        cls, why = _REFUSALS[answer.status]
        raise cls(f"AVMA host {where} refused: {why}")
    if str(cert.edition_sku) not in host_editions:
        raise AvmaNotCovered(
            f"AVMA host {where} is certified for an edition that does not activate ours"
        )
    return answer


def ask(
    address: Address,
    *,
    guest_id: uuid.UUID,
    edition_sku: uuid.UUID,
    name: str,
    now: int,
    root_public_key: bytes,
    host_editions: tuple[str, ...],
    timeout: float = 2.0,
) -> Answer:
    nonce = os.urandom(16)
    request = Request(guest_id, edition_sku, now, nonce, name).to_bytes()
    try:
        data = exchange(address, request, timeout=timeout)
    except TimeoutError as exc:
        raise AvmaUnreachable(f"AVMA host {address} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise AvmaUnreachable(
            f"AVMA host {address} did not answer ({exc.strerror or exc})"
        ) from exc
    except AvmaError as exc:
        raise AvmaUnreachable(f"AVMA host {address}: {exc.message}") from exc
    return verify(
        str(address),
        request,
        data,
        nonce,
        root_public_key=root_public_key,
        host_editions=host_editions,
        now=now,
    )
