"""Talking to a remote activation authority (``adba authority serve``) over HTTPS, with httpx.

:class:`RemoteAuthority` is an :class:`~adba.authority.Activator` like the local one, so every
command that activates takes either. Transient failures (connection refused, timeouts, 5xx)
are retried a few times with a growing pause; then the caller is told the authority is down
and how to carry on (try later, or activate by telephone with an installation ID). A TLS
failure (a plain-HTTP server behind an https:// URL, an untrusted certificate, another host
name) is not transient: it is reported at once, saying which.

Every retry of one call sends the same ``request_id`` and body: if the first answer was
lost, the authority sends it again instead of counting a second activation.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import (
    ActivationLimitReached,
    AuthorityError,
    AuthorityUnavailable,
    AvmaNotEntitled,
    InvalidInput,
)
from .local import CsvlkActivation, KmsHostActivation

if TYPE_CHECKING:
    from ..avma.protocol import AvmaHostCertificate
    from ..catalog import Catalog
    from ..confirmation import Confirmation, Installation
    from ..license import ForestIdentity

__all__ = ["RemoteAuthority"]

log = logging.getLogger(__name__)


class RemoteAuthority:
    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        pause: float = 0.5,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise InvalidInput(
                f"authority URL {url!r} must start with https:// (or http:// for a lab)"
            )
        self.url = url.rstrip("/")
        self.ca_file, self.timeout, self.retries, self.pause = ca_file, timeout, retries, pause

    def __repr__(self) -> str:
        return f"RemoteAuthority({self.url!r})"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        body = {"request_id": secrets.token_hex(16), **body}
        import ssl

        verify: Any = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        last, wait = "", 0.0
        for attempt in range(1, self.retries + 1):
            try:
                with httpx.Client(verify=verify, timeout=self.timeout) as client:
                    response = client.post(self.url + path, json=body)
            except httpx.TransportError as exc:
                tls = _tls_problem(exc)
                if tls and self.url.startswith("https://"):
                    raise AuthorityUnavailable(
                        f"the activation authority at {self.url}: {tls}", reason="tls"
                    ) from exc
                last = type(exc).__name__
                log.warning(
                    "authority %s: %s (attempt %d of %d)", self.url, last, attempt, self.retries
                )
            else:
                if response.status_code < 500:
                    return self._result(response)
                last = f"HTTP {response.status_code}"
                log.warning(
                    "authority %s: %s (attempt %d of %d)", self.url, last, attempt, self.retries
                )
                wait = _retry_after(response)  # 503: its records are away for a moment
            if attempt < self.retries:
                time.sleep(max(self.pause * attempt, wait))
            wait = 0.0
        raise AuthorityUnavailable(
            f"the activation authority at {self.url} is not answering ({last}, {self.retries} "
            "tries): try again later, or activate by telephone with an installation ID (--get-iid)"
        )

    def _result(self, response: Any) -> dict[str, Any]:
        if response.status_code == 409 and _json_error(response) == "replayed-request":
            raise AuthorityError(
                f"the authority at {self.url} refused a reused request id", status=409
            )
        try:
            data: dict[str, Any] = response.json()
        except ValueError as exc:
            raise AuthorityError(
                f"the authority at {self.url} sent a reply that is not JSON"
            ) from exc
        if response.status_code == 200:
            return data
        message = str(data.get("message") or f"HTTP {response.status_code}")
        if response.status_code == 409 and data.get("error") == "activation-limit":
            raise ActivationLimitReached(message)
        if response.status_code == 403 and data.get("error") == AvmaNotEntitled.code:
            raise AvmaNotEntitled(f"the authority refused: {message}")
        if response.status_code == 400:
            raise InvalidInput(f"the authority refused the request: {message}")
        raise AuthorityError(f"the authority refused: {message}", status=response.status_code)

    # -- the Activator seam -------------------------------------------------------------------
    def activate_csvlk(
        self, key: str, forest: ForestIdentity, catalog: Catalog, *, now: int
    ) -> CsvlkActivation:
        data = self._post(
            "/v1/csvlk/activations",
            {
                "key": key,
                "forest_dn": forest.dn,
                "forest_guid": str(forest.guid) if forest.guid else None,
            },
        )
        return CsvlkActivation(
            csvlk_sku=uuid.UUID(data["csvlk_sku"]),
            csvlk_name=data["csvlk_name"],
            kms_ids=tuple(uuid.UUID(k) for k in data["kms_ids"]),
            partial_key=data["partial_key"],
            pid=data["pid"],
            license_der=base64.b64decode(data["license"]),
            issued_at=int(data["issued_at"]),
        )

    def activate_kms_host(
        self, key: str, host_public_key: bytes, host_id: str, catalog: Catalog, *, now: int
    ) -> KmsHostActivation:
        from ..kms.protocol import HostCertificate

        data = self._post(
            "/v1/kms-hosts/activations",
            {"key": key, "host_public_key": host_public_key.hex(), "host_id": host_id},
        )
        return KmsHostActivation(
            HostCertificate.from_bytes(bytes.fromhex(data["certificate"])),
            data["csvlk_name"],
            tuple(uuid.UUID(k) for k in data["kms_ids"]),
        )

    def certify_avma_host(
        self,
        host_public_key: bytes,
        host_id: str,
        edition: str | None,
        catalog: Catalog,
        *,
        now: int,
        key: str | None = None,
    ) -> AvmaHostCertificate:
        """Online, the host's own AVMA-entitled key (``key``) proves the entitlement."""
        from ..avma.protocol import AvmaHostCertificate

        if not key:
            raise InvalidInput(
                "certifying an AVMA host online takes the host's own key (--key-file): its "
                "Datacenter MAK, or a CSVLK that covers Datacenter"
            )
        body: dict[str, Any] = {
            "key": key,
            "host_public_key": host_public_key.hex(),
            "host_id": host_id,
        }
        if edition:
            body["edition"] = edition
        data = self._post("/v1/avma-hosts/certifications", body)
        return AvmaHostCertificate.from_bytes(bytes.fromhex(data["certificate"]))

    def confirm(
        self, installation: Installation, catalog: Catalog | None = None, *, now: int = 0
    ) -> Confirmation:
        from ..confirmation import Confirmation

        data = self._post("/v1/confirmations", {"installation_id": installation.text()})
        return Confirmation.parse(data["confirmation_id"])

    def proxy(self, installation_ids: list[str]) -> list[dict[str, Any]]:
        data = self._post("/v1/mak/proxy", {"installation_ids": installation_ids})
        results: list[dict[str, Any]] = data["results"]
        return results


def _retry_after(response: Any) -> float:
    """The seconds a 503's ``Retry-After`` asks for (at most 10; 0 when none or not a number)."""
    try:
        return min(10.0, max(0.0, float(response.headers.get("retry-after", 0))))
    except (TypeError, ValueError):
        return 0.0


def _json_error(response: Any) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return str(data.get("error")) if isinstance(data, dict) else None


def _tls_problem(exc: BaseException) -> str | None:
    """What went wrong in TLS, if anything did (the SSL error is in the exception chain)."""
    import ssl

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            detail = (seen.verify_message or "").lower()
            if "hostname" in detail or "ip address mismatch" in detail:
                return (
                    "its TLS certificate is not for this host name: use the name it was issued for"
                )
            return (
                "its TLS certificate is not trusted: give the CA that issued it "
                "(--authority-ca-file) or check the URL"
            )
        if isinstance(seen, ssl.SSLError):
            reason = f"{seen.reason or ''} {seen}".lower()
            if any(
                word in reason
                for word in (
                    "wrong_version",
                    "wrong version",
                    "record layer",
                    "http request",
                    "packet length",
                    "unknown protocol",
                )
            ):
                return "the server did not speak TLS (is it a plain http:// service?)"
            return f"the TLS handshake failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    return None
