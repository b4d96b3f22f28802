"""The activation authority over HTTP: a versioned JSON API on FastAPI (ASGI), served by
uvicorn (TLS supported) -- ``adba authority serve``.

Routes (all POST bodies ``application/json``, each with a ``request_id``: a retry with the
same id and the same body gets the first answer again; the same id with another body gets
409; a refused request does not use its id up):

- ``POST /v1/csvlk/activations``   CSVLK for a forest -> issuance license (activation object)
- ``POST /v1/kms-hosts/activations`` KMS host key on a host -> host certificate
- ``POST /v1/avma-hosts/certifications`` a host's AVMA-entitled key (its Datacenter MAK, or a
  CSVLK covering Datacenter) and the host's public key -> AVMA host certificate (a MAK
  certifies at most its activation count of hosts, a CSVLK at most 100; 403
  ``avma-not-entitled`` for a key that entitles no AVMA host)
- ``POST /v1/confirmations``        installation ID -> confirmation ID (MAK, or any offline kind)
- ``POST /v1/mak/proxy``            many installation IDs in one request -> a result for each
- ``POST /v1/keys/status``         a MAK or CSVLK -> activations / KMS host slots left (the key
  proves ownership; read-only: no ``request_id``, nothing recorded)
- ``GET  /v1/health``                200 when this replica reaches its records, else 503

Every error, whatever produced it, is ``{"error": <stable code>, "message": <what to do>}``:
400 bad input (``malformed-json``, ``invalid-request``, ``forest-guid-missing`` ...), 403 a key
this authority did not issue, 404 ``not-found``, 405 ``method-not-allowed``, 409
``replayed-request`` or ``activation-limit``, 413 ``too-large``, 415
``unsupported-media-type``, 503 ``records-unavailable`` with ``Retry-After`` (the records'
database cannot be reached: nothing was recorded, the client retries), 500 ``internal-error``
(logged as one line). Nothing is recorded
for a refused request. Bodies are read (at most 256 KiB, declared or chunked) before they are
parsed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from ..catalog import Catalog
from ..confirmation import Installation
from ..errors import (
    ActivationLimitReached,
    AdbaError,
    AuthorityError,
    ForestGuidMissing,
    InvalidInput,
    InvalidKey,
    RecordsUnavailable,
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


class AvmaHostCertificationIn(_In):
    key: str = Field(max_length=64)
    host_public_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    host_id: str = Field(min_length=1, max_length=255)
    edition: str | None = Field(default=None, min_length=1, max_length=255)


class AvmaHostCertificationOut(BaseModel):
    certificate: str  # hex
    edition: str
    edition_sku: uuid.UUID
    not_after: int


class ConfirmationIn(_In):
    installation_id: str = Field(max_length=400)


class ConfirmationOut(BaseModel):
    installation_id: str
    confirmation_id: str
    issued_at: int


class ProxyIn(_In):
    installation_ids: list[str] = Field(min_length=1, max_length=1000)


class KeyStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = Field(max_length=64)


class ProxyResult(BaseModel):
    installation_id: str
    confirmation_id: str | None = None
    error: str | None = None
    message: str | None = None


class ProxyOut(BaseModel):
    results: list[ProxyResult]


def _status(exc: AdbaError) -> int:
    if isinstance(exc, RecordsUnavailable):
        return 503
    if isinstance(exc, ActivationLimitReached):
        return 409
    if isinstance(exc, AuthorityError):
        return 403
    if isinstance(exc, InvalidInput | InvalidKey | UnknownProduct):
        return 400
    return 500


def _error(status: int, code: str, message: str, headers: Any = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "too-large",
    415: "unsupported-media-type",
}
_POST_PATHS = frozenset(
    f"{API}/{p}"
    for p in (
        "csvlk/activations",
        "kms-hosts/activations",
        "avma-hosts/certifications",
        "confirmations",
        "mak/proxy",
        "keys/status",
    )
)


class _Guard:
    """Pure ASGI middleware around the app: on the POST routes, refuse non-JSON (415) and
    bodies over the cap (413, declared or chunked) and read the whole body before the app
    sees it; whatever fails inside becomes a 500 in our format and one log line."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit
        self.too_large = f"request bodies are limited to {limit} bytes"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if scope["method"] == "POST" and scope["path"] in _POST_PATHS:
                body = await self._body(scope, receive, tracked)
                if body is None:
                    return
                sent = False

                async def replay() -> Any:
                    nonlocal sent
                    if sent:
                        return await receive()  # the app waits for a disconnect
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}

                await self.app(scope, replay, tracked)
            else:
                await self.app(scope, receive, tracked)
        except Exception as exc:  # the client must still get our format, the log one line
            log.error(
                "%s %s failed: %s: %s", scope["method"], scope["path"], type(exc).__name__, exc
            )
            if not started:
                await _error(500, "internal-error", "the authority failed: try again later")(
                    scope, receive, send
                )

    async def _body(self, scope: Any, receive: Any, send: Any) -> bytes | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            await _error(415, "unsupported-media-type", "send the request as application/json")(
                scope, receive, send
            )
            return None
        declared = headers.get("content-length", "").strip()
        if declared and (not declared.isdigit() or int(declared) > self.limit):
            status, code = (413, "too-large") if declared.isdigit() else (400, "bad-request")
            message = self.too_large if status == 413 else "bad Content-Length"
            await _error(status, code, message)(scope, receive, send)
            return None
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await _error(413, "too-large", self.too_large, {"connection": "close"})(
                    scope, receive, send
                )
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body.strip():
            await _error(400, "invalid-request", "send a JSON object as the body")(
                scope, receive, send
            )
            return None
        try:
            json.loads(body)
        except ValueError:  # bad JSON, bad UTF-8: one answer for all of them
            await _error(400, "malformed-json", "the request body is not valid JSON")(
                scope, receive, send
            )
            return None
        return body


def _digest(path: str, body: BaseModel) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


def create_app(
    authority: LocalAuthority, catalog: Catalog, *, clock: Any = time.time, max_body: int = MAX_BODY
) -> Any:
    app = FastAPI(title="ADBA activation authority", version="1", docs_url=None, redoc_url=None)
    # a request id is taken, answered and kept in one transaction (Records.atomic); SQLite
    # has one writer at a time anyway, so this process's threads take turns before it
    one_at_a_time = threading.Lock() if authority.records.one_writer else None

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        err = errors[0] if errors else {}
        if err.get("type") == "json_invalid":
            return _error(400, "malformed-json", "the request body is not valid JSON")
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return _error(400, "invalid-request", f"{where or 'body'}: {err.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http-{exc.status_code}")
        if exc.status_code == 404:
            message = f"no such endpoint {request.url.path[:200]!r}: see /v1/health"
        elif exc.status_code == 405:
            message = f"{request.method[:16]} is not allowed on {request.url.path[:200]!r}"
        else:
            message = str(exc.detail)[:300]
        return _error(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(AdbaError)
    async def _refused(_request: Request, exc: AdbaError) -> JSONResponse:
        status = _status(exc)
        if status == 503:
            log.warning("refused with 503: %s", exc.message)
            return _error(status, exc.code, exc.message, _retry_after(exc))
        return _error(status, exc.code, exc.message)

    @app.exception_handler(_Replay)
    async def _replayed(_request: Request, _exc: Exception) -> JSONResponse:
        return _error(
            409,
            "replayed-request",
            "this request id was used before for another request: send a new one",
        )

    def _once(path: str, body: _In, answer: Callable[[int], BaseModel]) -> Any:
        """Answer a request once per request id: a retry with the same body gets the same
        answer; another body under a used id is refused; a refused request keeps no id."""
        digest = _digest(path, body)

        def decide() -> Any:
            now = int(clock())
            prior = authority.claim_request(body.request_id, digest, now)
            if prior is not None:
                if prior[0] != digest or prior[1] is None:
                    raise _Replay
                log.info("request %s again: the first answer is sent again", body.request_id)
                return JSONResponse(json.loads(prior[1]))
            result = answer(now)
            authority.answer_request(body.request_id, result.model_dump_json())
            return result

        if one_at_a_time is None:
            return authority.atomic(decide)
        with one_at_a_time:
            return authority.atomic(decide)

    @app.get(f"{API}/health")
    def health() -> Any:
        """200 when this replica reaches its records (a load balancer's health check), else
        503 ``records-unavailable`` with ``Retry-After``."""
        try:
            authority.ping()
        except RecordsUnavailable as exc:
            return _error(503, exc.code, exc.message, _retry_after(exc))
        return {
            "status": "ok",
            "root_key": authority.root_public_key.hex(),
            "records": authority.records.dialect,
        }

    @app.post(f"{API}/csvlk/activations", response_model=CsvlkActivationOut)
    def csvlk(body: CsvlkActivationIn) -> Any:
        from ..keys import parse_key

        parse_key(body.key)  # bad input is refused before anything is recorded
        if body.forest_guid is None:
            raise ForestGuidMissing(
                "forest_guid is required: a license is bound to one forest, never to any "
                "forest with that name"
            )
        forest = ForestIdentity.of(body.forest_dn, body.forest_guid)

        def answer(now: int) -> BaseModel:
            act = authority.activate_csvlk(body.key, forest, catalog, now=now)
            return CsvlkActivationOut(
                csvlk_sku=act.csvlk_sku,
                csvlk_name=act.csvlk_name,
                kms_ids=list(act.kms_ids),
                partial_key=act.partial_key,
                pid=act.pid,
                license=base64.b64encode(act.license_der).decode(),
                issued_at=act.issued_at,
            )

        return _once("csvlk", body, answer)

    @app.post(f"{API}/kms-hosts/activations", response_model=KmsHostActivationOut)
    def kms_host(body: KmsHostActivationIn) -> Any:
        from ..keys import parse_key

        parse_key(body.key)

        def answer(now: int) -> BaseModel:
            act = authority.activate_kms_host(
                body.key, bytes.fromhex(body.host_public_key), body.host_id, catalog, now=now
            )
            return KmsHostActivationOut(
                certificate=act.certificate.to_bytes().hex(),
                csvlk_name=act.csvlk_name,
                kms_ids=list(act.kms_ids),
            )

        return _once("kms-host", body, answer)

    @app.post(f"{API}/avma-hosts/certifications", response_model=AvmaHostCertificationOut)
    def avma_host(body: AvmaHostCertificationIn) -> Any:
        from ..keys import parse_key

        parse_key(body.key)
        if body.edition:
            catalog.edition(body.edition)  # an unknown edition is bad input, refused first

        def answer(now: int) -> BaseModel:
            cert = authority.certify_avma_host(
                bytes.fromhex(body.host_public_key),
                body.host_id,
                body.edition,
                catalog,
                now=now,
                key=body.key,
            )
            return AvmaHostCertificationOut(
                certificate=cert.to_bytes().hex(),
                edition=catalog.sku_name(cert.edition_sku) or str(cert.edition_sku),
                edition_sku=cert.edition_sku,
                not_after=cert.not_after,
            )

        return _once("avma-host", body, answer)

    @app.post(f"{API}/confirmations", response_model=ConfirmationOut)
    def confirm(body: ConfirmationIn) -> Any:
        installation = Installation.parse(body.installation_id)

        def answer(now: int) -> BaseModel:
            cid = authority.confirm(installation, catalog, now=now)
            return ConfirmationOut(
                installation_id=installation.text(),
                confirmation_id=cid.text(),
                issued_at=cid.issued_at,
            )

        return _once("confirm", body, answer)

    @app.post(f"{API}/mak/proxy", response_model=ProxyOut)
    def proxy(body: ProxyIn) -> Any:
        def answer(now: int) -> BaseModel:
            results = []
            for text in body.installation_ids:
                try:
                    installation = Installation.parse(text)
                    cid = authority.confirm(installation, catalog, now=now)
                    results.append(ProxyResult(installation_id=text, confirmation_id=cid.text()))
                except RecordsUnavailable:
                    raise  # the whole request is answered again later, not half of it
                except AdbaError as exc:
                    results.append(
                        ProxyResult(installation_id=text, error=exc.code, message=exc.message)
                    )
            return ProxyOut(results=results)

        return _once("proxy", body, answer)

    @app.post(f"{API}/keys/status")
    def key_status(body: KeyStatusIn) -> Any:
        return authority.key_status(body.key, catalog)

    return _Guard(app, max_body)


class _Replay(Exception):
    pass


def _retry_after(exc: AdbaError) -> dict[str, str]:
    return {"retry-after": str(int(getattr(exc, "retry_after", 1) or 1))}
