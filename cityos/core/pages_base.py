"""What every page needs (页面基础): rendering in the visitor's language, the console session and
its CSRF token, safe redirects, form errors, paging, and the console's navigation.

The core's pages and, later, every engine's `pages.py` build on these, so sign-in, language and
CSRF behave the same on every screen.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from fastapi import Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from cityos.core import access, auth, i18n
from cityos.core.access import Actor
from cityos.core.errors import CityOSError, FieldError, Unauthorized
from cityos.core.web import LANG_COOKIE, SESSION_COOKIE, ActorDep, language, platform_of

CITY_TZ = ZoneInfo("Asia/Shanghai")
PAGE_SIZE = 50
LOGIN_PATH = "/console/login"
HOME = "/console"
YEAR = 365 * 24 * 3600
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Section:
    """One entry of the console's navigation: a live page, or an engine still being built."""

    key: str  # catalog key under nav.
    path: str | None = None
    action: str | None = None  # the permission that opens it (reach_of is not None)


SECTIONS = (
    Section("departments", "/console/departments", "department.read"),
    Section("users", "/console/users", "user.read"),
    Section("apikeys", "/console/apikeys", "apikey.read"),
    Section("audit", "/console/audit", "audit.read"),
)
# The engines of the build plan still to land, shown greyed out (建设中); landed ones have their
# own entries in the console's navigation. Every engine of the plan has landed.
ENGINES: tuple[Section, ...] = ()


def sections_for(actor: Actor) -> list[Section]:
    """The live sections this actor's role opens (the pages' services check again)."""
    return [s for s in SECTIONS if s.action and access.reach_of(actor, s.action) is not None]


# -- safe redirects ---------------------------------------------------------------------------


def safe_next(value: str | None, default: str = HOME) -> str:
    """A local path to go to after sign-in, never another site (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    if any(c in value for c in "\\\r\n\t") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def login_url(next_path: str) -> str:
    return f"{LOGIN_PATH}?{urlencode({'next': safe_next(next_path)})}"


def to_login(request: Request) -> Response:
    """Send a visitor who is not signed in to the login page, then back where they were."""
    if is_htmx(request):
        # An htmx fragment would land inside the page; make the whole page go instead.
        current = urlsplit(request.headers.get("hx-current-url", ""))
        here = current.path + (f"?{current.query}" if current.query else "")
        return Response(status_code=204, headers={"HX-Redirect": login_url(here or HOME)})
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(login_url(here), status_code=303)


class ConsoleRoute(APIRoute):
    """A console route: a visitor who is not signed in (or whose session ended) is redirected
    to the login page instead of getting a 401 problem document; answers are never cached."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except Unauthorized:
                return to_login(request)
            # Console pages show personal data: keep them out of shared and back-button caches.
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return route


def console_actor(request: Request, actor: ActorDep) -> Actor:
    """The signed-in staff member of a console page (by the session cookie)."""
    if actor.kind != "user" or not request.cookies.get(SESSION_COOKIE):
        raise Unauthorized()
    return actor


ConsoleActor = Annotated[Actor, Depends(console_actor)]


# -- cookies ----------------------------------------------------------------------------------


def cookie_secure(request: Request) -> bool:
    return platform_of(request).settings.cookie_secure or request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int,
               path: str = "/", samesite: str = "lax") -> None:
    """Set an HttpOnly cookie, Secure whenever the site is served over HTTPS."""
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        samesite=samesite,  # type: ignore[arg-type]
                        secure=cookie_secure(request))


def csrf_of(request: Request) -> str:
    """The console session's CSRF token, for forms (csrf_token) and htmx (X-CSRF-Token)."""
    raw = request.cookies.get(SESSION_COOKIE)
    return auth.csrf_token(platform_of(request).settings.secret_key, raw) if raw else ""


# -- rendering --------------------------------------------------------------------------------


def is_htmx(request: Request) -> bool:
    """An htmx request for a fragment (not a boosted navigation or a history restore, which
    want the whole page)."""
    headers = request.headers
    return (headers.get("hx-request") == "true" and "hx-boosted" not in headers
            and "hx-history-restore-request" not in headers)


def local_time(value: dt.datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A stored UTC time as the city's wall-clock time (Asia/Shanghai)."""
    return value.astimezone(CITY_TZ).strftime(fmt) if value else ""


def as_json(value: Any) -> str:
    """A stored JSON detail as one readable line (Chinese kept as is)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def render(request: Request, template: str, *, actor: Actor | None = None, status: int = 200,
           headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    """Render a page (or fragment) in the visitor's language; remember a language just chosen."""
    lang = language(request)
    ctx: dict[str, Any] = {
        "lang": lang, "actor": actor, "csrf": csrf_of(request) if actor else "",
        "sections": sections_for(actor) if actor else [], "engines": ENGINES,
        "label": lambda pair: pair[0] if lang == "zh-CN" else pair[1],
        "local_time": local_time, "as_json": as_json, **context,
    }
    response = platform_of(request).templates.TemplateResponse(
        request, template, ctx, status_code=status, headers=headers)
    chosen = request.query_params.get("lang")
    if chosen in i18n.LANGUAGES and chosen != request.cookies.get(LANG_COOKIE):
        set_cookie(request, response, LANG_COOKIE, chosen, max_age=YEAR)
    return response


def redirect(url: str) -> RedirectResponse:
    """After a successful form post: see the result with GET (post/redirect/get)."""
    return RedirectResponse(url, status_code=303)


# -- forms ------------------------------------------------------------------------------------


def field_errors(exc: ValidationError | CityOSError, lang: str) -> dict[str, str]:
    """Errors by form field ("_" for the form as a whole), in the visitor's language."""
    if isinstance(exc, ValidationError):
        out: dict[str, str] = {}
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "_"
            key = f"form.err.{err['type']}"
            text = i18n.t(key, lang, **err.get("ctx", {}))
            out.setdefault(name, err["msg"] if text == key else text)
        return out
    errors: list[FieldError] = exc.errors or [FieldError("_", exc.detail or exc.title)]
    return {e.field: e.reason for e in errors}


def parse_form(model: type[M], data: dict[str, Any]) -> M:
    """Validate a submitted form with the API's request shape. A blank optional field takes the
    shape's default; a blank required one is validated as empty, so its message says so."""
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    cleaned = {}
    for name, value in data.items():
        if isinstance(value, str):
            value = value.strip()
        if value in ("", None) and name not in required:
            continue
        cleaned[name] = value
    return model.model_validate(cleaned)


# -- paging -----------------------------------------------------------------------------------


def page_number(raw: str | None) -> int:
    """The 1-based page asked for; anything odd means the first page."""
    return int(raw) if raw and raw.isdecimal() and len(raw) < 7 and 0 < int(raw) < 1_000_000 else 1


@dataclass
class Pager:
    """Where the previous and next pages of a list are (50 a page)."""

    page: int
    pages: int
    total: int
    prev_url: str | None
    next_url: str | None


def pager(request: Request, total: int, page: int, size: int = PAGE_SIZE) -> Pager:
    pages = max(1, -(-total // size))

    def url(n: int) -> str:
        query = {k: v for k, v in request.query_params.items() if v and k not in ("page", "lang")}
        query["page"] = str(n)
        return f"{request.url.path}?{urlencode(query)}"

    return Pager(page, pages, total, url(page - 1) if page > 1 else None,
                 url(page + 1) if page * size < total else None)
