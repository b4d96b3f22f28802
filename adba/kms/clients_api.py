"""A read-only, authenticated view of the KMS host's client table over HTTP(S), for the
admin's inventory (``adba inventory import --kms``): ``kms serve --clients-api PORT
--clients-token-file FILE [--clients-tls-cert PEM --clients-tls-key PEM]``.

One route, ``GET /v1/clients`` with ``Authorization: Bearer <token>``: the machines the host's
records hold (what ``adba kms clients --json`` prints) and the host's ePID. A missing or wrong
token is 401, another path 404, another method 405; every answer is JSON
``{"error": code, "message": ...}`` when refused. It reads the host's files (the same view as
``kms clients``), never the request path of the KMS protocol, and changes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

__all__ = ["ClientsApi", "clients_document", "read_token"]

log = logging.getLogger(__name__)

MIN_TOKEN = 16


def read_token(path: str) -> str:
    """The token: the file's first line, at least :data:`MIN_TOKEN` characters."""
    try:
        text = Path(path).read_text().strip().splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read the token file {path}: {exc.strerror or exc}") from exc
    token = text[0].strip() if text else ""
    if len(token) < MIN_TOKEN:
        raise InvalidInput(f"{path}: the token must be at least {MIN_TOKEN} characters")
    return token


def clients_document(state_dir: str) -> dict[str, Any]:
    from .host import client_rows, status_view

    view = status_view(state_dir)
    clients = client_rows(state_dir)
    return {"epid": view["epid"], "count": view["count"], "clients": clients}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "adba-kms-clients"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("clients-api %s " + format, self.client_address[0], *args)

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _refuse_method(self) -> None:
        self._send(
            405,
            {"error": "method-not-allowed", "message": "read-only: GET /v1/clients"},
            {"Allow": "GET"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method

    def do_GET(self) -> None:
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.server.token.encode()
        ):
            log.warning("event=clients-api-refused source=%s", self.client_address[0])
            self._send(
                401,
                {"error": "unauthorized", "message": "send Authorization: Bearer <token>"},
                {"WWW-Authenticate": 'Bearer realm="adba-kms"'},
            )
            return
        if self.path.split("?")[0] != "/v1/clients":
            self._send(404, {"error": "not-found", "message": "the only route is /v1/clients"})
            return
        try:
            body = clients_document(self.server.state_dir)
        except Exception as exc:  # the host's files could not be read: say so, keep serving
            log.error("event=clients-api-failed reason=%s", exc)
            self._send(500, {"error": "internal-error", "message": "cannot read the records"})
            return
        self._send(200, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    token: str
    state_dir: str
    context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: the TLS handshake (a slow client holds only its
        thread), every read bounded by a timeout."""
        request.settimeout(10)
        if self.context is not None:
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("clients-api TLS handshake failed: %s", exc)
                return
        super().finish_request(request, client_address)


class ClientsApi:
    """The listener, in a thread of its own: :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        state_dir: str,
        address: str,
        port: int,
        token: str,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        try:
            self.server = _Server((address, port), _Handler)
        except OSError as exc:
            raise InvalidInput(
                f"cannot listen on {address} port {port} for the clients API: {exc.strerror}"
            ) from exc
        self.server.token, self.server.state_dir = token, state_dir
        if tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls_cert, tls_key)
            self.server.context = context
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="kms-clients-api", daemon=True
        )

    def start(self) -> ClientsApi:
        self.thread.start()
        log.info("event=clients-api port=%d", self.port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
