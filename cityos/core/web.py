"""The web shell (Web 外壳): app factory, request dependencies, problem documents, middleware.

`build_app` is called by `cityos.app.create_app` with the routers of every package; nothing
here opens a database or reads settings at import time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
import fastapi.routing
import orjson
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import cityos
from cityos.core import access, audit, auth, crypto, db, i18n, ratelimit
from cityos.core.access import ANONYMOUS, Actor
from cityos.core.errors import BadRequest, CityOSError, FieldError, Invalid, TooLarge, Unauthorized
from cityos.core.settings import Settings

log = logging.getLogger("cityos.web")
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "cityos_session"
LANG_COOKIE = "cityos_lang"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PROBLEM = "application/problem+json"
# Data hub file uploads may be far larger than any other request body (settings.hub_max_upload_bytes).
UPLOAD_PATH = r"/api/hub/resources/[^/]+/uploads"
# A resident's report carries up to nine photos of 5 MB each (cases.attachments).
CASE_REPORT_PATH, CASE_REPORT_BYTES = r"/cases/report", 46 * 1024 * 1024


@dataclass
class Platform:
    """What every request needs: settings, the database, the keyring, the templates."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keyring: crypto.Keyring
    templates: Jinja2Templates


def platform_of(request: Request) -> Platform:
    return request.app.state.platform  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request. Routes that write call `session.commit()` before answering, so a
    2xx is only sent for what is durable; anything uncommitted is rolled back here. Made on the
    event loop (no I/O until first used) and closed there when no transaction is left to roll
    back: a sync generator would cost two trips to a worker thread on every request."""
    platform = platform_of(request)
    session = platform.sessions()
    db.bound_statements(session, platform.settings.statement_timeout_ms)
    try:
        yield session
    finally:
        if session.in_transaction():  # a ROLLBACK on the database: not on the loop
            await anyio.to_thread.run_sync(session.close, limiter=_closing_threads())
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_CLOSING: RunVar[anyio.CapacityLimiter] = RunVar("cityos_closing_threads")


def _closing_threads() -> anyio.CapacityLimiter:
    """Threads of their own for closing request sessions. Closed with the route's threads, a
    session that still holds a pooled connection could wait for a thread held by a route that waits
    for a pooled connection: with more requests than connections, every one stalls until the pool
    times out (seen with 8 route threads and 15 SQLite connections)."""
    try:
        return _CLOSING.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(8)
        _CLOSING.set(limiter)
        return limiter


def _credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        raw = header[7:].strip()
        return ("apikey" if raw.startswith(auth.API_KEY_PREFIX + "_") else "api", raw)
    if key := request.headers.get("x-api-key"):
        return ("apikey", key.strip())
    if cookie := request.cookies.get(SESSION_COOKIE):
        return ("web", cookie)
    return None


# Declared so that /docs offers "Authorize" with the password flow and API keys; the actual
# parsing is `_credentials`, which also accepts the console cookie.
_oauth2 = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


async def get_actor(
    request: Request, session: SessionDep,
    _bearer: Annotated[str | None, Depends(_oauth2)] = None,
    _key: Annotated[str | None, Depends(_api_key)] = None,
) -> Actor:
    """Who sent this request. Bearer tokens and API keys for the API, the session cookie for the
    console (with its CSRF token on every unsafe method). Bad credentials are 401, not anonymous."""
    cached = getattr(request.state, "actor", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    creds = _credentials(request)
    actor: Actor = ANONYMOUS
    if creds is not None:
        kind, raw = creds
        # A token or key seen a moment ago is answered here, without a trip to a worker thread.
        found = auth.cached_actor(platform_of(request).engine, raw, kind)
        if found is None and kind == "apikey":
            found = await run_in_threadpool(auth.apikey_actor, session, raw)
        elif found is None:
            found = await run_in_threadpool(auth.token_actor, session, raw, kind)
        if found is None and kind != "web":  # an expired console session just means "sign in"
            raise Unauthorized("invalid, expired or revoked credentials / 凭证无效、过期或已吊销")
        actor = found or ANONYMOUS
        if found is not None and kind == "web" and request.method not in SAFE_METHODS:
            presented = request.headers.get(CSRF_HEADER)
            if presented is None and "form" in request.headers.get("content-type", ""):
                form = await request.form()
                value = form.get("csrf_token")
                presented = value if isinstance(value, str) else None
            secret = platform_of(request).settings.secret_key
            if not auth.csrf_ok(secret, raw, presented):
                raise access.Denied(actor, "csrf", None, "missing or wrong CSRF token")
    request.state.actor = actor
    return actor


ActorDep = Annotated[Actor, Depends(get_actor)]


async def signed_in(actor: ActorDep) -> Actor:
    """Who sent this request, who must be signed in: a private route refuses an anonymous caller
    (401) before it looks anything up or validates the body, so it tells a stranger nothing —
    not even whether an object exists or what a body must look like."""
    if not actor.authenticated:
        raise Unauthorized()
    return actor


SignedInDep = Annotated[Actor, Depends(signed_in)]


def language(request: Request) -> str:
    settings = platform_of(request).settings
    return i18n.pick(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE),
                     request.headers.get("accept-language"), settings.default_language)


# -- problem documents (RFC 9457) ------------------------------------------------------------


def problem(
    request: Request, status: int, title: str, detail: str, slug: str,
    errors: list[FieldError] | None = None, headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors:
        body["errors"] = [e.as_dict() for e in errors]
    for key, value in (extra or {}).items():  # RFC 9457 extension members, e.g. row_errors
        body.setdefault(key, value)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM, headers=headers)


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api", "/healthz", "/docs", "/openapi")):
        return False
    return "text/html" in request.headers.get("accept", "")


def _html_error(request: Request, status: int, title: str, detail: str) -> Response:
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)
    templates = platform_of(request).templates
    return templates.TemplateResponse(
        request, "error.html",
        {"status": status, "title": title, "detail": detail, "lang": language(request)},
        status_code=status,
    )


def _audit_denial(request: Request, exc: access.Denied) -> None:
    """Refusals are recorded in their own transaction: the request's own one was rolled back."""
    try:
        with db.session_scope(platform_of(request).sessions) as session:
            target = exc.target
            audit.append(
                session, actor=exc.actor.name, department=exc.actor.department_code,
                action=exc.action, object_type=target.kind if target else None,
                object_id=target.id if target else None, outcome="denied",
                detail={"path": request.url.path, "method": request.method},
            )
    except Exception:  # the refusal stands even if the audit write fails; log it loudly
        log.exception("could not audit a denial")


async def _cityos_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CityOSError)
    if isinstance(exc, access.Denied):
        await run_in_threadpool(_audit_denial, request, exc)
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="cityos"'
    if "retry_after" in exc.extra:
        headers["Retry-After"] = str(exc.extra["retry_after"])
    if _wants_html(request):
        return _html_error(request, exc.status, exc.title, exc.detail)
    return problem(request, exc.status, exc.title, exc.detail, exc.type_slug, exc.errors, headers,
                   exc.extra)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return problem(request, 400, "Malformed JSON", "the body is not valid JSON / JSON 格式错误",
                       "malformed-json", [FieldError("body", str(errs[0].get("msg")))])
    fields = []
    for e in errs:
        reason = str(e.get("msg"))
        if e.get("type") == "extra_forbidden":
            reason = "unknown field / 未知字段"
        elif e.get("type") == "missing":
            reason = "required / 必填"
        fields.append(FieldError(_field_name(tuple(e.get("loc", ()))), reason))
    detail = "; ".join(f"{f.field}: {f.reason}" for f in fields)
    return problem(request, 422, "Invalid input", detail, "invalid", fields)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, CityOSError):  # FastAPI wraps errors raised while reading the body
        return await _cityos_error(request, exc.__cause__)
    titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}
    title = titles.get(exc.status_code, "HTTP error")
    detail = str(exc.detail) if exc.detail else title
    if _wants_html(request):
        return _html_error(request, exc.status_code, title, detail)
    return problem(request, exc.status_code, title, detail, title.lower().replace(" ", "-"),
                   headers=getattr(exc, "headers", None))


async def _db_error(request: Request, exc: Exception) -> Response:
    """A statement cancelled by the request's statement_timeout is 503, not a crash or a hang; so
    is a database that is away (restarting): the pool reconnects by itself once it is back."""
    if db.is_unavailable(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    str(getattr(exc, "orig", exc)).partition("\n")[0][:200])
        return problem(request, 503, "Service unavailable", "the database is unavailable; retry in a "
                       "moment / 数据库暂时不可用，请稍后重试", "unavailable", headers={"Retry-After": "5"})
    if not db.is_timeout(exc):
        return await _crash(request, exc)
    seconds = platform_of(request).settings.statement_timeout_ms / 1000
    log.warning("statement timeout on %s %s", request.method, request.url.path)
    return problem(request, 503, "Service unavailable",
                   f"the database took longer than {seconds:g} s and the query was cancelled; nothing was "
                   f"changed / 数据库查询超时，已取消，未做任何更改", "timeout", headers={"Retry-After": "5"})


async def _crash(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(request, 500, "Internal error", "the server failed; nothing was changed / 服务器错误",
                   "internal")


async def standard_problem(request: Request, exc: CityOSError, members: dict[str, Any],
                           realm: str = 'Basic realm="CityOS"') -> Response:
    """A problem document for clients of a standard (OGC API, SensorThings): bad input is 400, as
    those standards say, a 401 asks for HTTP Basic, and `members` are the standard's own fields."""
    if isinstance(exc, access.Denied):
        await run_in_threadpool(_audit_denial, request, exc)
    status = 400 if exc.status == 422 else exc.status
    headers = {"WWW-Authenticate": realm} if status == 401 else {}
    if "retry_after" in exc.extra:
        headers["Retry-After"] = str(exc.extra["retry_after"])
    return problem(request, status, exc.title, exc.detail, exc.type_slug, exc.errors, headers,
                   {**members, **exc.extra})


def answering_errors_with(answer: Callable[[Request, CityOSError], Awaitable[Response]]) -> type[APIRoute]:
    """A route class whose errors — from the handler or its dependencies, such as HTTP Basic —
    are answered by `answer`, in the shape a standard's clients expect (OGC, SensorThings)."""

    class Route(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except CityOSError as exc:
                    return await answer(request, exc)
                except RequestValidationError as exc:
                    return await answer(request, Invalid("request", str(exc.errors()[0].get("msg"))))

            return guarded

    return Route


# -- middleware -------------------------------------------------------------------------------


MIN_BODY_RATE = 1024  # bytes a second a request body must average once its grace is over


class BodyLimit:
    """Refuse request bodies over the configured limit, by header or while streaming (413), and bodies
    that come too slowly (408): after `grace` seconds a body must keep arriving at MIN_BODY_RATE on
    average, so a client trickling a byte at a time cannot hold a request open for ever (uvicorn
    itself waits as long as the client likes).

    `paths` gives a few routes their own limit (`{path regex: bytes}`, e.g. the data hub's file
    uploads), so one large-file endpoint does not raise the limit of every other one."""

    def __init__(self, app: ASGIApp, limit: int, paths: dict[str, int] | None = None,
                 grace: float = 30.0) -> None:
        self.app, self.limit, self.grace = app, limit, grace
        self.paths = [(re.compile(p), n) for p, n in (paths or {}).items()]

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.paths:
            if pattern.fullmatch(path):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._refuse(scope, send, limit)
            return
        # Only a body is timed: a GET's stream (server-sent events) waits for a disconnect for hours.
        has_body = (length is not None and length != b"0") or b"transfer-encoding" in dict(scope["headers"])
        seen, started, complete = 0, asyncio.get_running_loop().time(), not has_body

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in; what follows is waiting for a disconnect
                return await receive()
            try:
                async with asyncio.timeout_at(started + self.grace + seen / MIN_BODY_RATE):
                    message = await receive()
            except TimeoutError:
                raise CityOSError(f"the request body came slower than {MIN_BODY_RATE // 1024} KiB/s / "
                                  "请求体发送过慢", status=408, title="Request timeout",
                                  type_slug="request-timeout") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > limit:
                    raise TooLarge(limit)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        err = TooLarge(limit)
        body = (
            b'{"type":"/problems/too-large","title":"Payload too large","status":413,"detail":"'
            + err.detail.encode() + b'","instance":"' + scope["path"].encode() + b'"}'
        )
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


ErrorAnswer = Callable[[Request, CityOSError], Awaitable[Response]]
ERROR_ANSWERS: list[tuple[str, ErrorAnswer]] = []


def answer_errors_in(prefix: str, answer: ErrorAnswer) -> None:
    """Answer errors found before routing (a NUL in the URL) under `prefix` with `answer`, the
    standard's own error shape (CKAN, Open311, OGC API, SensorThings), as its routes do."""
    ERROR_ANSWERS.append((prefix, answer))


class RefuseNul:
    """Refuse a NUL character anywhere in the URL (400, naming the parameter) before any route sees
    it: no name, code or search term holds one, SQLite cuts a value short at it (a search for
    "x%00' OR 1=1" finds every "x") and PostgreSQL refuses such text outright (a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        field = self.nul_in(scope) if scope["type"] == "http" else None
        if field is None:
            await self.app(scope, receive, send)
            return
        reason = "a NUL character (%00) is not allowed / 不允许包含空字符"
        for prefix, answer in ERROR_ANSWERS:
            if scope["path"].startswith(prefix):  # a standard's clients read their own error shape
                clean = {**scope, "path": scope["path"].replace("\x00", ""), "query_string": b""}
                refusal = BadRequest(f"{field}: {reason}")
                refusal.errors = [FieldError(field, reason)]
                response = await answer(Request(clean, receive), refusal)
                await response(scope, receive, send)
                return
        body = orjson.dumps({"type": "/problems/bad-request", "title": "Bad request", "status": 400,
                             "detail": f"{field}: {reason}", "instance": scope["path"].replace("\x00", ""),
                             "errors": [{"field": field, "reason": reason}]})
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", PROBLEM.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def nul_in(scope: Scope) -> str | None:
        """The parameter holding a NUL ("path" for the path), or None."""
        if "\x00" in scope["path"]:
            return "path"
        raw: bytes = scope.get("query_string", b"")
        if b"%00" not in raw and b"\x00" not in raw:
            return None
        for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
            if "\x00" in key or "\x00" in value:
                return key.replace("\x00", "") or "query"
        return None  # only an escaped "%2500", which is no NUL


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'"
)
# Swagger UI's page bootstraps with one inline script; only /docs gets this looser policy.
CSP_DOCS = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'")


class SecurityHeaders:
    """Security headers on every response (a strict CSP: no inline script)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = (CSP_DOCS if scope["path"] == "/docs" else CSP).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", csp),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


# -- the app ----------------------------------------------------------------------------------


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness and database status")
    def healthz(request: Request) -> Response:
        platform = platform_of(request)
        status: dict[str, Any] = {"backend": platform.engine.dialect.name}
        try:
            with platform.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            status["ok"] = True
            status["revision"] = db.current_revision(platform.engine)
        except Exception as exc:  # report, don't crash: this is what monitoring polls
            status["ok"], status["error"] = False, type(exc).__name__
        body = {"status": "ok" if status["ok"] else "degraded", "version": cityos.__version__,
                "database": status}
        return JSONResponse(body, status_code=200 if status["ok"] else 503)

    return router


def build_app(
    settings: Settings, routers: list[APIRouter], template_dirs: list[Path],
    engine: Engine | None = None, check_migrated: bool = True,
) -> FastAPI:
    """Assemble the FastAPI app for `settings`; refuse an un-migrated database."""
    engine = engine or db.make_engine(settings.database_url)
    if check_migrated:
        db.ensure_migrated(engine)
    ring = crypto.activate(crypto.Keyring.load(Path(settings.data_dir) / "keys.json"))
    templates = Jinja2Templates(directory=[HERE / "templates", *template_dirs])
    templates.env.globals.update(t=i18n.t, roles=access.ROLES, version=cityos.__version__)
    platform = Platform(settings, engine, db.make_sessionmaker(engine), ring, templates)

    app = FastAPI(
        title="CityOS API",
        version=cityos.__version__,
        description="CityOS smart-city platform — 智慧城市平台. Errors are RFC 9457 problem documents.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.platform = platform
    app.add_exception_handler(CityOSError, _cityos_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _db_error)
    app.add_exception_handler(Exception, _crash)
    if settings.rate_limit_enabled:  # inside SecurityHeaders, so a 429 has them too
        app.add_middleware(ratelimit.RateLimit, settings=settings)
    app.add_middleware(RefuseNul)  # inside SecurityHeaders, so its 400 has them too
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       paths={UPLOAD_PATH: settings.hub_max_upload_bytes,
                              CASE_REPORT_PATH: CASE_REPORT_BYTES}, grace=settings.body_timeout_seconds)
    app.add_middleware(AccessLog)

    static = HERE / "static"
    app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="CityOS API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    app.include_router(health_router())
    for router in routers:
        app.include_router(router)
    prefilter_routes(app)
    return app


def prefilter_routes(app: FastAPI) -> None:
    """Let each included router refuse at once a path that none of its routes can match.

    FastAPI (0.16x) matches a request by trying every route of every included router in turn,
    ~1.8 µs each: with some 300 routes a late one (/open311, /sta) cost 300-550 µs of routing per
    request. Each included router gets one regular expression, the union of its routes' paths;
    a path it does not match is answered NONE without trying the routes one by one, anything else
    is matched exactly as before. Where FastAPI keeps no included-router objects (older
    releases) this does nothing."""
    included = getattr(fastapi.routing, "_IncludedRouter", None)
    if included is None or not hasattr(app.router, "_routes_version"):
        return
    for route in app.router.routes:
        if isinstance(route, included):
            object.__setattr__(route, "matches", _prefiltered(route))


_GROUP = re.compile(r"\(\?P<\w+>")


def _routers_under(router: Any) -> list[Any]:
    """`router` and every router included in it, at any depth."""
    found, todo = [], [router]
    while todo:
        current = todo.pop()
        if any(current is f for f in found):
            continue
        found.append(current)
        todo += [r.original_router for r in current.routes if isinstance(r, fastapi.routing._IncludedRouter)]
    return found


def _prefiltered(route: Any) -> Callable[..., Any]:
    original = route.matches
    state: dict[str, Any] = {"routers": _routers_under(route.original_router)}

    def union() -> re.Pattern[str] | None:
        # FastAPI's own _get_routes_version walks every route on each call (~40 µs a request over
        # all routers); the routers under this one are known, so their counters are read directly.
        version = tuple(r._routes_version for r in state["routers"])
        if state.get("version") != version:  # routes were added since: rebuild
            state["routers"] = _routers_under(route.original_router)
            patterns = [getattr(c, "path_regex", None) for c in route.effective_route_contexts()]
            state["regex"] = None if not patterns or None in patterns else re.compile(
                "|".join(f"(?:{_GROUP.sub('(?:', p.pattern)})" for p in patterns))
            state["version"] = tuple(r._routes_version for r in state["routers"])
        return state["regex"]  # type: ignore[no-any-return]

    def matches(scope: Scope) -> tuple[Any, Scope]:
        if scope["type"] == "http":
            regex = union()
            if regex is not None and not regex.match(get_route_path(scope)):
                return Match.NONE, {}
        return original(scope)  # type: ignore[no-any-return]

    return matches


# Path segments that look like tokens (an Open311 request token, 32+ hex digits) are not logged.
_SECRETISH = re.compile(r"[0-9A-Fa-f]{32,}")


class AccessLog:
    """One line per request: method, path, status, time. Never the query string: it can carry
    ID numbers or keys."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("cityos.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if self.log.isEnabledFor(logging.INFO):
                path = _SECRETISH.sub("***", scope["path"])
                self.log.info("%s %s %s %.1fms", scope["method"], path, status[0],
                              (time.perf_counter() - start) * 1000)
