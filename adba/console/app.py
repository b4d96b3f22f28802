"""The console's ASGI application: Starlette routes rendering Jinja2 templates.

Security in one place: the cookie holds only a random session id (``__Host-`` prefixed,
Secure, HttpOnly, SameSite=Strict); the credentials stay in :class:`SessionTable`; every POST
carries the session's CSRF token in a hidden field (sign-in: a double-submitted pre-session
token); failed sign-ins are rate-limited per address and per user (429 with Retry-After);
pages are sent with a Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..catalog import Catalog
from ..directory.connection import ConnectionOptions
from ..errors import (
    AccessDenied,
    AdbaError,
    AuthenticationFailed,
    InvalidInput,
    NotAnActivationObject,
    ObjectNotFound,
    ServerUnavailable,
    TlsError,
)
from ..inventory.db import SORTS, STATUS_ORDER, InventoryDB
from .chart import STATUSES, status_chart
from .sessions import RateLimiter, Session, SessionTable, same_token

__all__ = ["COOKIE", "ConsoleSettings", "create_app", "user_dn"]

log = logging.getLogger(__name__)

COOKIE = "__Host-adba_session"
SIGNIN_COOKIE = "__Host-adba_signin"
MAX_FORM = 16 * 1024
CHANNELS = ("ADBA", "KMS", "MAK")
#: what an imported license status is called on the objects page
LICENSE_LABELS = {
    "verified": "verified",
    "foreign": "foreign",
    "invalid": "rejected",
    "present": "not verified",
    "absent": "no license",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Strict-Transport-Security": "max-age=31536000",
    "Cache-Control": "no-store",
}


@dataclass
class ConsoleSettings:
    uri: str
    db_path: str
    ca_file: str | None = None
    tls_name: str | None = None
    #: the forest root; None: read from the root DSE at each sign-in
    base: str | None = None
    #: how a plain name becomes a bind DN, e.g. ``uid={},ou=People,dc=example,dc=test``
    user_template: str | None = None
    catalog: Catalog | None = None
    root_public_key: bytes | None = None
    connect_timeout: float = 5.0
    idle_timeout: float = 900.0
    max_failures: int = 5
    failure_window: float = 60.0
    page_size: int = 50
    #: the clock (tests); sessions and the rate limit use time.monotonic
    now: Callable[[], float] = field(default=time.time)


_ESCAPE_DN = re.compile(r'([,+"\\<>;=#])')


def user_dn(name: str, template: str | None) -> str:
    """What the sign-in form's name is bound as: a DN as given (it has ``=``), an AD account
    name as given (``user@realm``, ``DOMAIN\\user``), else the name put into ``template``
    (escaped as an RDN value)."""
    from ..directory.store import validate_dn

    name = name.strip()
    if not name or len(name) > 1024 or any(ord(c) < 32 for c in name):
        raise InvalidInput("give your user name or DN")
    if "=" in name:
        validate_dn(name)
        return name
    if "@" in name or "\\" in name:
        return name
    if not template:
        raise InvalidInput("give your full DN (this console maps no plain names)")
    dn = template.replace("{}", _ESCAPE_DN.sub(r"\\\1", name))
    validate_dn(dn)
    return dn


def _norm(dn: str) -> str:
    return ",".join(part.strip() for part in dn.lower().split(","))


def _status_code(err: AdbaError) -> int:
    if isinstance(err, AuthenticationFailed):
        return 401
    if isinstance(err, AccessDenied):
        return 403
    if isinstance(err, ObjectNotFound | NotAnActivationObject):
        return 404
    if isinstance(err, InvalidInput):
        return 400
    if isinstance(err, ServerUnavailable | TlsError):
        return 502
    return 500


class _Databases(threading.local):
    db: InventoryDB | None = None


class Console:
    """The pages; one per process, holding the session table and the rate limiter."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.sessions = SessionTable(idle_timeout=settings.idle_timeout)
        self.limiter = RateLimiter(limit=settings.max_failures, window=settings.failure_window)
        self.env = Environment(
            loader=PackageLoader("adba.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            when=_when, status_label=_status_label, statuses=list(STATUSES), url=_url
        )
        self.css = (resources.files("adba.console") / "templates" / "console.css").read_bytes()
        self._local = _Databases()
        InventoryDB(settings.db_path).close()  # migrated, or an error now rather than later

    # -- plumbing ------------------------------------------------------------------------
    def db(self) -> InventoryDB:
        """This thread's connection to the inventory (SQLite connections stay in one
        thread)."""
        if self._local.db is None:
            self._local.db = InventoryDB(self.settings.db_path)
        return self._local.db

    def page(
        self,
        template: str,
        session: Session | None,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else None, **context
        )
        return HTMLResponse(html, status_code=status_code, headers={**_HEADERS, **(headers or {})})

    def error(
        self, session: Session | None, status_code: int, message: str, **headers: str
    ) -> HTMLResponse:
        return self.page(
            "error.html",
            session,
            status_code=status_code,
            headers=headers,
            message=message,
            title={
                401: "Not signed in",
                403: "Refused",
                404: "Not found",
                429: "Too many tries",
            }.get(status_code, "Error"),
        )

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), now=time.monotonic())

    async def form(self, request: Request) -> dict[str, str]:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                raise InvalidInput("form too large")
        try:
            fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"unreadable form: {exc}") from exc
        return {k: v[0] for k, v in fields.items()}

    async def directory(self, session: Session, fn: Callable[..., Any], **kw: Any) -> Any:
        """``fn(session's options, root=..., **kw)`` with the user's own bind, in a thread."""
        return await run_in_threadpool(fn, session.options, root=session.root, **kw)

    # -- sign-in ---------------------------------------------------------------------------
    async def signin_form(self, request: Request) -> Response:
        if self.session(request):
            return _redirect("/")
        return self._signin_page(request, 200, None)

    def _signin_page(
        self, request: Request, status_code: int, message: str | None, **headers: str
    ) -> Response:
        token = secrets.token_urlsafe(32)
        response = self.page(
            "signin.html",
            None,
            status_code=status_code,
            headers=headers,
            title="Sign in",
            signin_token=token,
            message=message,
            expired=request.query_params.get("expired") == "1",
            plain_names=bool(self.settings.user_template),
        )
        _cookie(response, SIGNIN_COOKIE, token, max_age=900)
        return response

    async def signin(self, request: Request) -> Response:
        form = await self.form(request)
        if not same_token(form.get("csrf"), request.cookies.get(SIGNIN_COOKIE) or "\0"):
            return self.error(
                None,
                403,
                "The sign-in form expired or was not sent by this "
                "console (CSRF token missing or wrong): reload the page.",
            )
        source = request.client.host if request.client else "?"
        name = form.get("user", "").strip()
        try:
            dn: str | None = user_dn(name, self.settings.user_template)
        except InvalidInput as exc:
            dn, refusal = None, exc.message
        # one user however the name is written (plain name, DN, other case or spacing)
        keys = [f"addr:{source}", f"user:{_norm(dn or name)}"]
        now = time.monotonic()
        wait = self.limiter.retry_after(keys, now=now)
        if wait:
            log.warning("sign-in refused (rate limit): %r from %s", name, source)
            return self._signin_page(
                request,
                429,
                f"Too many failed sign-ins: try again in {wait} seconds.",
                **{"Retry-After": str(wait)},
            )
        if dn is None:
            return self._signin_page(request, 400, refusal)
        password = form.get("password", "")
        if not password:  # an empty password is an anonymous bind to LDAP: never a sign-in
            self.limiter.fail(keys, now=now)
            return self._signin_page(request, 401, "Wrong name or password.")
        opts = ConnectionOptions(
            uri=self.settings.uri,
            bind_dn=dn,
            password=password,
            ca_file=self.settings.ca_file,
            tls_name=self.settings.tls_name,
            connect_timeout=self.settings.connect_timeout,
        )
        try:
            root = await run_in_threadpool(self._bind, opts)
        except AuthenticationFailed:
            self.limiter.fail(keys, now=now)
            log.warning("sign-in failed: %r from %s", name, source)
            return self._signin_page(request, 401, "Wrong name or password.")
        except AdbaError as exc:
            return self._signin_page(
                request, _status_code(exc), f"The directory could not be used: {exc.message}"
            )
        session = self.sessions.create(dn, opts, root=root, source=source, now=now)
        log.info("signed in: %s from %s", dn, source)
        response = _redirect("/")
        _cookie(response, COOKIE, session.id)
        response.delete_cookie(
            SIGNIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict"
        )
        return response

    def _bind(self, opts: ConnectionOptions) -> str:
        from ..directory.connection import session

        with session(opts) as conn:
            if self.settings.base:
                return self.settings.base
            from ..directory.store import read_forest_root

            return read_forest_root(conn)

    async def signout(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return _redirect("/signin")
        form = await self.form(request)
        if not same_token(form.get("csrf"), session.csrf):
            return self.error(
                session,
                403,
                "Refused: the form's CSRF token is missing or belongs to another session.",
            )
        self.sessions.drop(session.id)
        log.info("signed out: %s", session.user)
        response = _redirect("/signin")
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    # -- inventory pages -------------------------------------------------------------------
    async def overview(self, request: Request, session: Session) -> Response:
        def read() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            db = self.db()
            return db.overview(int(self.settings.now())), db.status_over_time(limit=30)

        view, runs = await run_in_threadpool(read)
        by_status = [(s, view["by_status"].get(s, 0)) for s in (*STATUS_ORDER, "unknown")]
        return self.page(
            "overview.html",
            session,
            title="Overview",
            nav="overview",
            view=view,
            by_status=by_status,
            by_channel=[(c, view["by_channel"].get(c, 0)) for c in CHANNELS],
            expiring=view["expiring_within_30_days"],
            chart=status_chart(runs),
            runs=runs,
        )

    def _filters(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        status = q.get("status") or None
        if status and status not in (*STATUS_ORDER, "unknown"):
            raise InvalidInput(f"no status {status!r}")
        channel = q.get("channel") or None
        if channel and channel not in CHANNELS:
            raise InvalidInput(f"no channel {channel!r}")
        sort = q.get("sort") or "name"
        if sort not in SORTS:
            raise InvalidInput(f"cannot sort by {sort!r}")
        search = (q.get("q") or "").strip()[:255] or None
        order = q.get("order") or "asc"
        if order not in ("asc", "desc"):
            raise InvalidInput("order is asc or desc")
        return {
            "status": status,
            "channel": channel,
            "search": search,
            "sort": sort,
            "descending": order == "desc",
        }

    async def machines(self, request: Request, session: Session) -> Response:
        filters = self._filters(request)
        try:
            number = int(request.query_params.get("page") or 1)
        except ValueError:
            raise InvalidInput("page is a number") from None
        if number < 1:
            raise InvalidInput("page is 1 or more")
        size = self.settings.page_size

        def read() -> tuple[list[dict[str, Any]], int]:
            return self.db().machine_page(**filters, limit=size, offset=(number - 1) * size)

        rows, total = await run_in_threadpool(read)
        pages = max(1, -(-total // size))
        query = {
            "status": filters["status"] or "",
            "channel": filters["channel"] or "",
            "q": filters["search"] or "",
            "sort": filters["sort"],
            "order": "desc" if filters["descending"] else "asc",
        }
        return self.page(
            "machines.html",
            session,
            title="Machines",
            nav="machines",
            rows=rows,
            total=total,
            number=number,
            pages=pages,
            query=query,
            sorts=SORTS,
            channels=CHANNELS,
            all_statuses=(*STATUS_ORDER, "unknown"),
            now=int(self.settings.now()),
        )

    async def export(self, request: Request, session: Session) -> Response:
        from ..inventory.export import to_csv, to_json

        filters = self._filters(request)
        fmt = request.query_params.get("format") or "csv"
        if fmt not in ("csv", "json"):
            raise InvalidInput("format is csv or json")

        def read() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            while True:
                rows, total = self.db().machine_page(**filters, limit=10_000, offset=len(out))
                out += rows
                if not rows or len(out) >= total:
                    return out

        machines = await run_in_threadpool(read)
        now = int(self.settings.now())
        text = to_csv(machines, now) if fmt == "csv" else to_json(machines, now)
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        log.info("%s exported %d machines as %s", session.user, len(machines), fmt)
        return Response(
            text,
            media_type=media,
            headers={
                **_HEADERS,
                "Content-Disposition": f'attachment; filename="machines.{fmt}"',
            },
        )

    async def kms(self, request: Request, session: Session) -> Response:
        from ..kms.cache import Thresholds

        clients = await run_in_threadpool(lambda: self.db().kms_clients())
        limits = Thresholds()
        hosts: dict[str, dict[str, Any]] = {}
        for c in clients:
            host = hosts.setdefault(
                c["host"],
                {"host": c["host"], "client": 0, "server": 0, "clients": [], "imported": 0},
            )
            host["server" if c["kind"] == "server" else "client"] += 1
            host["clients"].append(c)
            host["imported"] = max(host["imported"], int(c["imported"] or 0))
        for host in hosts.values():
            host["client_ok"] = host["client"] >= limits.client
            host["server_ok"] = host["server"] >= limits.server
        return self.page(
            "kms.html",
            session,
            title="KMS hosts",
            nav="kms",
            hosts=list(hosts.values()),
            limits=limits,
            cache=2 * limits.client,
        )

    async def avma(self, request: Request, session: Session) -> Response:
        guests = await run_in_threadpool(lambda: self.db().avma_guests())
        hosts: dict[str, dict[str, Any]] = {}
        for g in guests:
            host = hosts.setdefault(
                g["host"], {"host": g["host"], "guests": [], "licensed": 0, "imported": 0}
            )
            host["guests"].append(g)
            host["licensed"] += 1 if g["licensed"] else 0
            host["imported"] = max(host["imported"], int(g["imported"] or 0))
        return self.page(
            "avma.html", session, title="AVMA hosts", nav="avma", hosts=list(hosts.values())
        )

    async def keys(self, request: Request, session: Session) -> Response:
        keys = await run_in_threadpool(lambda: self.db().keys())
        return self.page("keys.html", session, title="Keys", nav="keys", keys=keys)

    # -- directory pages (the user's own bind) ------------------------------------------------
    async def objects(self, request: Request, session: Session) -> Response:
        from ..catalog import load_catalog
        from ..directory.objects import list_views

        views = await self.directory(
            session,
            list_views,
            catalog=self.settings.catalog or load_catalog(),
            root_public_key=self.settings.root_public_key,
        )
        return self.page(
            "objects.html",
            session,
            title="Activation objects",
            nav="objects",
            views=views,
            labels=LICENSE_LABELS,
            deleted=request.query_params.get("deleted"),
        )

    async def confirm_delete(self, request: Request, session: Session) -> Response:
        from ..catalog import load_catalog
        from ..directory.objects import show_view
        from ..directory.store import validate_dn

        dn = request.query_params.get("dn") or ""
        validate_dn(dn)
        view = await self.directory(
            session,
            show_view,
            dn=dn,
            catalog=self.settings.catalog or load_catalog(),
            root_public_key=self.settings.root_public_key,
        )
        return self.page(
            "delete.html",
            session,
            title="Delete?",
            nav="objects",
            view=view,
            labels=LICENSE_LABELS,
        )

    async def delete(self, request: Request, session: Session) -> Response:
        from ..directory.objects import delete_object
        from ..directory.store import validate_dn

        form = await self.form(request)
        if not same_token(form.get("csrf"), session.csrf):
            log.warning("CSRF refused: %s deleting %r", session.user, form.get("dn"))
            return self.error(
                session,
                403,
                "Refused: the form's CSRF token is missing or "
                "belongs to another session. Nothing was deleted.",
            )
        dn = form.get("dn", "")
        validate_dn(dn)
        if form.get("confirm") != "yes":
            raise InvalidInput("not confirmed; nothing deleted")
        try:
            await self.directory(session, delete_object, dn=dn)
        except AccessDenied as exc:
            log.warning("delete refused by the directory: %s on %s", session.user, dn)
            return self.error(
                session,
                403,
                f"The directory refused to let {session.user} delete {dn}: {exc.message}. "
                "Nothing was deleted.",
            )
        log.info("deleted %s as %s", dn, session.user)
        return _redirect("/objects?" + urlencode({"deleted": dn}))

    async def audit(self, request: Request, session: Session) -> Response:
        from ..directory.audit import history, parse_since

        since_text = request.query_params.get("since") or "30d"
        events = await self.directory(session, history, since=parse_since(since_text))
        return self.page(
            "audit.html",
            session,
            title="Audit trail",
            nav="audit",
            events=events,
            since=since_text,
        )

    async def whoami(self, request: Request, session: Session) -> Response:
        return self.page(
            "session.html",
            session,
            title="Your session",
            nav="session",
            idle=int(self.settings.idle_timeout),
            signed_in=time.strftime(
                "%Y-%m-%d %H:%M:%S UTC",
                time.gmtime(time.time() - (time.monotonic() - session.created)),
            ),
        )

    async def css_file(self, request: Request) -> Response:
        return Response(
            self.css,
            media_type="text/css",
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )


Handler = Callable[[Request, Session], Awaitable[Response]]


def _signed_in(console: Console, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for signed-in users: no live session is the sign-in page (GET) or 403 (POST);
    library errors become a page with the right HTTP code."""

    async def endpoint(request: Request) -> Response:
        session = console.session(request)
        if session is None:
            if request.method != "GET":
                return console.error(None, 403, "Not signed in (or the session expired).")
            expired = "?expired=1" if request.cookies.get(COOKIE) else ""
            return _redirect("/signin" + expired)
        try:
            return await handler(request, session)
        except AdbaError as exc:
            code = _status_code(exc)
            if isinstance(exc, AuthenticationFailed):  # the password changed: sign in again
                console.sessions.drop(session.id)
            return console.error(session, code, exc.message)

    return endpoint


def create_app(settings: ConsoleSettings) -> Starlette:
    console = Console(settings)

    async def plain(
        handler: Callable[[Request], Awaitable[Response]], request: Request
    ) -> Response:
        try:
            return await handler(request)
        except AdbaError as exc:
            return console.error(None, _status_code(exc), exc.message)

    def public(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await plain(handler, request)

        return endpoint

    routes = [
        Route("/console.css", console.css_file),
        Route("/signin", public(console.signin_form), methods=["GET"]),
        Route("/signin", public(console.signin), methods=["POST"]),
        Route("/signout", public(console.signout), methods=["POST"]),
        Route("/", _signed_in(console, console.overview)),
        Route("/machines", _signed_in(console, console.machines)),
        Route("/machines/export", _signed_in(console, console.export)),
        Route("/objects", _signed_in(console, console.objects)),
        Route("/objects/delete", _signed_in(console, console.confirm_delete), methods=["GET"]),
        Route("/objects/delete", _signed_in(console, console.delete), methods=["POST"]),
        Route("/kms", _signed_in(console, console.kms)),
        Route("/avma", _signed_in(console, console.avma)),
        Route("/keys", _signed_in(console, console.keys)),
        Route("/audit", _signed_in(console, console.audit)),
        Route("/session", _signed_in(console, console.whoami)),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    return app


def _cookie(response: Response, name: str, value: str, *, max_age: int | None = None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=_HEADERS)


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def _status_label(status: str | None) -> str:
    return status or "unknown"


def _url(path: str, query: dict[str, Any], **changes: Any) -> str:
    merged = {**query, **changes}
    return path + "?" + urlencode({k: v for k, v in merged.items() if v not in ("", None)})
