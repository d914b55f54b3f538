"""Portal (市民门户) and console (工作台) pages: server-rendered Jinja2 + htmx, thin over service.

This module holds the public portal, sign-in and sign-out, and the console's home; the
administration pages (departments, users, API keys, audit log) are in `pages_admin`.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse

from cityos.core import audit, auth, pages_admin, service
from cityos.core.pages_base import (
    HOME,
    LOGIN_PATH,
    ConsoleActor,
    ConsoleRoute,
    redirect,
    render,
    safe_next,
    set_cookie,
)
from cityos.core.web import SESSION_COOKIE, ActorDep, SessionDep, platform_of

LOGIN_CSRF_COOKIE = "cityos_login_csrf"
router = APIRouter(include_in_schema=False)
console = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
FormStr = Annotated[str, Form()]


@router.get("/", response_class=HTMLResponse)
def portal(request: Request) -> HTMLResponse:
    """The residents' portal (市民门户): what the platform offers, and the way to the console."""
    return render(request, "portal.html")


# -- sign-in ----------------------------------------------------------------------------------


def _login_page(request: Request, next_path: str, *, status: int = 200, error: str | None = None,
                username: str = "", **params: object) -> Response:
    """The sign-in form, with a fresh double-submit token against login CSRF."""
    token = secrets.token_urlsafe(32)
    response = render(request, "console/login.html", status=status, next=safe_next(next_path),
                      login_csrf=token, error=error, error_params=params, username=username,
                      headers={"Cache-Control": "no-store"})
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600, path=LOGIN_PATH,
               samesite="strict")
    return response


@router.get(LOGIN_PATH, response_class=HTMLResponse)
def login_form(request: Request, actor: ActorDep, next: str = HOME) -> Response:
    """The sign-in form (already signed in: straight on)."""
    if actor.kind == "user" and request.cookies.get(SESSION_COOKIE):
        return redirect(safe_next(next))
    return _login_page(request, next)


@router.post(LOGIN_PATH)
def login_submit(
    request: Request, session: SessionDep, username: FormStr = "", password: FormStr = "",
    csrf_token: FormStr = "", next: FormStr = HOME,
) -> Response:
    """Check the password like the API's token endpoint does, then start a console session."""
    presented, expected = csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not (presented and expected and hmac.compare_digest(presented, expected)):
        return _login_page(request, next, status=403, error="login.err.csrf", username=username)
    username = username.strip()
    if not username or not password:
        return _login_page(request, next, status=400, error="login.err.missing", username=username)
    settings = platform_of(request).settings
    result = auth.login_check(session, username, password, threshold=settings.lockout_threshold,
                              lock_seconds=settings.lockout_seconds, channel="web")
    raw = None
    if result.error is None and result.user is not None:
        raw, _ = auth.token_issue(session, result.user, "web", settings.session_ttl_seconds)
        if old := request.cookies.get(SESSION_COOKIE):
            auth.token_revoke(session, raw=old)  # a new sign-in ends the browser's old session
    session.commit()  # the attempt is audited and counted whatever the outcome
    if result.error == "locked":
        minutes = max(1, -(-result.retry_after // 60))
        return _login_page(request, next, status=423, error="login.err.locked",
                           username=username, minutes=minutes)
    if raw is None:
        return _login_page(request, next, status=400, error="login.err.bad", username=username)
    response = redirect(safe_next(next))
    set_cookie(request, response, SESSION_COOKIE, raw, max_age=settings.session_ttl_seconds)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=LOGIN_PATH)
    return response


@router.post("/console/logout")
def logout(request: Request, session: SessionDep, actor: ActorDep) -> Response:
    """End the console session: revoke its token and clear the cookie (CSRF-checked)."""
    raw = request.cookies.get(SESSION_COOKIE)
    if raw and actor.kind == "user":
        auth.token_revoke(session, raw=raw)
        audit.append(session, actor=actor.name, department=actor.department_code,
                     action="auth.logout", object_type="token", object_id=actor.token_id)
        session.commit()
    response = redirect(LOGIN_PATH)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- the console's home -----------------------------------------------------------------------


@console.get("", response_class=HTMLResponse)
def dashboard(request: Request, session: SessionDep, actor: ConsoleActor) -> Response:
    """The console's home (工作台首页): who is signed in, and the sections their role opens."""
    user = service.user_get(session, actor, actor.name)
    return render(request, "console/dashboard.html", actor=actor, me=service.user_public(user),
                  current="home")


router.include_router(console)
router.include_router(pages_admin.router)
