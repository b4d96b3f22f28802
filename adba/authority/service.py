"""The activation authority over HTTP: a versioned JSON API on FastAPI (ASGI), served by
uvicorn (TLS supported) -- ``adba authority serve``.

Routes (all POST bodies ``application/json``, each with a unique ``request_id``; a request id
seen before is a replay and gets 409):

- ``POST /v1/csvlk/activations``   CSVLK for a forest -> issuance license (activation object)
- ``POST /v1/kms-hosts/activations`` KMS host key on a host -> host certificate
- ``POST /v1/confirmations``        installation ID -> confirmation ID (MAK, or any offline kind)
- ``POST /v1/mak/proxy``            many installation IDs in one request -> a result for each
- ``GET  /v1/health``

Errors are ``{"error": <stable code>, "message": <what to do>}`` with a 4xx status: 400 bad
input, 403 a key this authority did not issue, 409 replay or no activations left, 413 body too
large, 415 not JSON. Nothing is recorded for a refused request. Bodies are capped at 256 KiB
before they are parsed.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..catalog import Catalog
from ..confirmation import Installation
from ..errors import (
    ActivationLimitReached,
    AdbaError,
    AuthorityError,
    InvalidInput,
    InvalidKey,
    UnknownProduct,
)
from ..license import ForestIdentity
from .local import LocalAuthority

__all__ = ["MAX_BODY", "create_app"]

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024
API = "/v1"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


class CsvlkActivationIn(_In):
    key: str = Field(max_length=64)
    forest_dn: str = Field(min_length=1, max_length=1024)
    forest_guid: uuid.UUID | None = None


class CsvlkActivationOut(BaseModel):
    csvlk_sku: uuid.UUID
    csvlk_name: str
    kms_ids: list[uuid.UUID]
    partial_key: str
    pid: str
    license: str  # base64 DER
    issued_at: int


class KmsHostActivationIn(_In):
    key: str = Field(max_length=64)
    host_public_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    host_id: str = Field(min_length=1, max_length=255)


class KmsHostActivationOut(BaseModel):
    certificate: str  # hex
    csvlk_name: str
    kms_ids: list[uuid.UUID]


class ConfirmationIn(_In):
    installation_id: str = Field(max_length=400)


class ConfirmationOut(BaseModel):
    installation_id: str
    confirmation_id: str
    issued_at: int


class ProxyIn(_In):
    installation_ids: list[str] = Field(min_length=1, max_length=1000)


class ProxyResult(BaseModel):
    installation_id: str
    confirmation_id: str | None = None
    error: str | None = None
    message: str | None = None


class ProxyOut(BaseModel):
    results: list[ProxyResult]


def _status(exc: AdbaError) -> int:
    if isinstance(exc, ActivationLimitReached):
        return 409
    if isinstance(exc, AuthorityError):
        return 403
    if isinstance(exc, InvalidInput | InvalidKey | UnknownProduct):
        return 400
    return 500


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class _BodyLimit:
    """Pure ASGI middleware: refuse non-JSON POSTs (415) and bodies over the cap (413)
    before anything reads them."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            await _error(415, "unsupported-media-type", "send the request as application/json")(
                scope, receive, send
            )
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _error(413, "too-large", f"request bodies are limited to {self.limit} bytes")(
                scope, receive, send
            )
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _error(413, "too-large", f"request bodies are limited to {self.limit} bytes")(
                scope, receive, send
            )


class _TooLarge(Exception):
    pass


def create_app(
    authority: LocalAuthority, catalog: Catalog, *, clock: Any = time.time, max_body: int = MAX_BODY
) -> Any:
    app = FastAPI(title="ADBA activation authority", version="1", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        if err.get("type") == "json_invalid":
            return _error(400, "malformed-json", "the request body is not valid JSON")
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return _error(400, "invalid-request", f"{where or 'body'}: {err.get('msg', 'invalid')}")

    @app.exception_handler(AdbaError)
    async def _refused(_request: Request, exc: AdbaError) -> JSONResponse:
        return _error(_status(exc), exc.code, exc.message)

    def _fresh(request_id: str) -> int:
        now = int(clock())
        if authority.seen_request(request_id, now):
            raise _Replay
        return now

    @app.exception_handler(_Replay)
    async def _replayed(_request: Request, _exc: Exception) -> JSONResponse:
        return _error(409, "replayed-request", "this request id was used before: send a new one")

    @app.get(f"{API}/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "root_key": authority.root_public_key.hex()}

    @app.post(f"{API}/csvlk/activations")
    def csvlk(body: CsvlkActivationIn) -> CsvlkActivationOut:
        from ..keys import parse_key

        parse_key(body.key)  # bad input is refused before anything is recorded
        now = _fresh(body.request_id)
        act = authority.activate_csvlk(
            body.key, ForestIdentity.of(body.forest_dn, body.forest_guid), catalog, now=now
        )
        return CsvlkActivationOut(
            csvlk_sku=act.csvlk_sku,
            csvlk_name=act.csvlk_name,
            kms_ids=list(act.kms_ids),
            partial_key=act.partial_key,
            pid=act.pid,
            license=base64.b64encode(act.license_der).decode(),
            issued_at=act.issued_at,
        )

    @app.post(f"{API}/kms-hosts/activations")
    def kms_host(body: KmsHostActivationIn) -> KmsHostActivationOut:
        from ..keys import parse_key

        parse_key(body.key)
        now = _fresh(body.request_id)
        act = authority.activate_kms_host(
            body.key, bytes.fromhex(body.host_public_key), body.host_id, catalog, now=now
        )
        return KmsHostActivationOut(
            certificate=act.certificate.to_bytes().hex(),
            csvlk_name=act.csvlk_name,
            kms_ids=list(act.kms_ids),
        )

    @app.post(f"{API}/confirmations")
    def confirm(body: ConfirmationIn) -> ConfirmationOut:
        installation = Installation.parse(body.installation_id)
        now = _fresh(body.request_id)
        cid = authority.confirm(installation, catalog, now=now)
        return ConfirmationOut(
            installation_id=installation.text(), confirmation_id=cid.text(), issued_at=cid.issued_at
        )

    @app.post(f"{API}/mak/proxy")
    def proxy(body: ProxyIn) -> ProxyOut:
        now = _fresh(body.request_id)
        results = []
        for text in body.installation_ids:
            try:
                installation = Installation.parse(text)
                cid = authority.confirm(installation, catalog, now=now)
                results.append(ProxyResult(installation_id=text, confirmation_id=cid.text()))
            except AdbaError as exc:
                results.append(
                    ProxyResult(installation_id=text, error=exc.code, message=exc.message)
                )
        return ProxyOut(results=results)

    return _BodyLimit(app, max_body)


class _Replay(Exception):
    pass
