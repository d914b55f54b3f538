"""CSRF on every form, and the session cookie's flags (trust, issue 9 item 3).

Every state-changing route of the console and the portal (POST, PUT, PATCH, DELETE on a page path),
taken from the app's routes so a new form cannot escape, is sent by a signed-in browser without the
CSRF token, with a made-up one and with another session's: each is refused 403, the refusal is
audited as `csrf`, and nothing else in the database changes (once, on SQLite: the check runs before
any route does). A sample of forms with the right token goes through, on both databases. The console's sign-in form, which has no session yet, has its own double-submit token.

Cookies: the session cookie is HttpOnly and SameSite=Lax, Secure over HTTPS or with cookie_secure;
`cityos serve` does not believe X-Forwarded-Proto (a header any client can send), so behind a TLS
proxy the operator sets cookie_secure — checked against the server `cityos serve` really runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from cityos.core.models import AuditRecord
from cityos.core.settings import Settings
from cityos.core.web import SESSION_COOKIE
from tests.conftest import PASSWORD, _free_port
from tests.trust.helpers_abuse import Refs, build_city, console_login, fill, hidden, row_counts
from tests.trust.test_permission_matrix import api_routes, is_page

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
LOGIN = "/console/login"  # no session yet: its own double-submit token (test below)
SCOPE = "department.read"
FORM = {"name": "x", "note": "x", "title": "x", "reason": "x", "summary": "x", "level": "II", "approve": "1"}


def form_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every state-changing page route."""
    return sorted((m, p) for m, p, _ in api_routes(app) if m in UNSAFE and is_page(p) and p != LOGIN)


def csrf_denials(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action == "csrf", AuditRecord.outcome == "denied")) or 0


@pytest.fixture
def refs(city: Any, sessions: Any) -> Refs:
    return build_city(city, sessions)


def test_every_form_refuses_a_missing_or_wrong_token(app: FastAPI, refs: Refs, client: TestClient,
                                                     sessions: sessionmaker[Session], engine: Engine,
                                                     backend: str) -> None:
    """The check runs before any route does (core.web.get_actor): once, on SQLite; the samples below
    run on both databases."""
    if backend != "sqlite":
        pytest.skip("refused before the route runs, whatever the database: once, on SQLite")
    routes = form_routes(app)
    assert len(routes) >= 35, routes
    console_login(client, "admin")
    other = TestClient(app)
    foreign = console_login(other, "env_admin")  # a real token, of another session
    before, denials = row_counts(engine), csrf_denials(sessions)
    surprises, sent = [], 0
    for method, path in routes:
        url = fill(path, refs)
        # The form field and htmx's header are read by the same check (core.web.get_actor).
        for label, token, where in (("no", None, ""), ("a made-up", "0" * 64, "form"),
                                    ("another session's", foreign, "header")):
            data = {**FORM, "csrf_token": token} if where == "form" else dict(FORM)
            headers = {"Accept": "text/html"} | ({"X-CSRF-Token": foreign} if where == "header" else {})
            r = client.request(method, url, data=data, headers=headers, follow_redirects=False)
            sent += 1
            if r.status_code != 403:
                surprises.append(f"{method} {url} with {label} token {where}: {r.status_code}")
    after = row_counts(engine)
    changed = {t: (before.get(t), after.get(t)) for t in set(before) | set(after)
               if before.get(t) != after.get(t) and t != "audit_log"}
    assert not surprises, f"{len(surprises)} of {sent}:\n" + "\n".join(surprises)
    assert not changed, f"refused forms changed tables: {changed}"
    assert csrf_denials(sessions) - denials == sent, "every refusal is audited as a CSRF denial"
    assert after["audit_log"] - before["audit_log"] == sent, "and nothing else was audited"


def test_the_right_token_goes_through(refs: Refs, client: TestClient, sessions: sessionmaker[Session],
                                      engine: Engine) -> None:
    csrf = console_login(client, "admin")
    before = row_counts(engine)
    r = client.post("/console/departments", data={"code": "220200-jtj", "name": "市交通局", "kind": "bureau",
                                                  "parent_code": "220200", "csrf_token": csrf},
                    follow_redirects=False)
    assert r.status_code == 303 and "created=220200-jtj" in r.headers["location"], r.text
    r = client.post("/console/apikeys", headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
                    data={"name": "etl", "department_code": "220200-hbj", "scopes": SCOPE}, follow_redirects=False)
    assert r.status_code == 201, r.text
    ops = TestClient(client.app)
    token = console_login(ops, "ops_staff")
    r = ops.post("/ops/incidents", data={"type": "flood", "level": "IV", "title": "积水", "csrf_token": token,
                                          "lon": "126.55", "lat": "43.84"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ops/incidents/"), r.text
    after = row_counts(engine)
    assert after["departments"] == before["departments"] + 1
    assert after["api_keys"] == before["api_keys"] + 1
    assert after["ops_incidents"] == before["ops_incidents"] + 1
    assert csrf_denials(sessions) == 0


def test_a_session_cookie_on_the_json_api_needs_the_token_too(refs: Refs, client: TestClient,
                                                               engine: Engine) -> None:
    """The API accepts the console's cookie (the pages' htmx calls it): the cookie alone is not enough."""
    csrf = console_login(client, "admin")
    body = {"code": "220200-jtj", "name": "市交通局", "kind": "bureau", "parent_code": "220200"}
    before = row_counts(engine)["departments"]
    r = client.post("/api/departments", json=body)
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    assert row_counts(engine)["departments"] == before
    assert client.post("/api/departments", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201


def test_sign_in_form_has_its_own_double_submit_token(city: Any, client: TestClient) -> None:
    form = client.get(LOGIN)
    token = hidden(form.text, "csrf_token")
    for sent in ("", "forged"):
        r = client.post(LOGIN, data={"username": "admin", "password": PASSWORD, "csrf_token": sent},
                        follow_redirects=False)
        assert r.status_code == 403 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    fresh = TestClient(client.app)  # the token without its cookie (another browser) is refused
    r = fresh.post(LOGIN, data={"username": "admin", "password": PASSWORD, "csrf_token": token},
                   follow_redirects=False)
    assert r.status_code == 403
    client.get(LOGIN)  # the refused attempts re-issued the pair: take the newest
    token = hidden(client.get(LOGIN).text, "csrf_token")
    r = client.post(LOGIN, data={"username": "admin", "password": PASSWORD, "csrf_token": token},
                    follow_redirects=False)
    assert r.status_code == 303


# -- cookie flags ---------------------------------------------------------------------------------------


def cookie(r: Any, name: str) -> str:
    found = [c for c in r.headers.get_list("set-cookie") if c.startswith(f"{name}=")]
    assert found, f"no {name} cookie set"
    return found[0].lower()


def test_cookie_flags_over_http_and_https(city: Any, app: FastAPI, client: TestClient) -> None:
    form = client.get(LOGIN)
    login_cookie = cookie(form, "cityos_login_csrf")
    assert "httponly" in login_cookie and "samesite=strict" in login_cookie and "path=/console/login" in login_cookie
    r = client.post(LOGIN, data={"username": "admin", "password": PASSWORD,
                                 "csrf_token": hidden(form.text, "csrf_token")}, follow_redirects=False)
    session = cookie(r, SESSION_COOKIE)
    assert "httponly" in session and "samesite=lax" in session and "path=/" in session
    assert "secure" not in session  # plain http, cookie_secure off: a Secure cookie would never come back
    assert "httponly" in cookie(client.get("/?lang=en"), "cityos_lang")
    with TestClient(app, base_url="https://testserver") as https:
        form = https.get(LOGIN)
        assert "secure" in cookie(form, "cityos_login_csrf")
        r = https.post(LOGIN, data={"username": "admin", "password": PASSWORD,
                                    "csrf_token": hidden(form.text, "csrf_token")}, follow_redirects=False)
        assert "secure" in cookie(r, SESSION_COOKIE)


@pytest.fixture
def served(settings: Settings, monkeypatch: pytest.MonkeyPatch, backend: str) -> Iterator[tuple[str, Any]]:
    """The app and uvicorn options `cityos serve` really uses (uvicorn.run is caught, then run here on a
    free port), and its settings. HTTP's business, not the database's: once, on SQLite."""
    import uvicorn

    if backend != "sqlite":
        pytest.skip("the server's handling of a header: once, on SQLite")

    from cityos import cli

    caught: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: caught.update(app=app, **kw))
    monkeypatch.setattr(cli.core_cli, "settings_or_exit", lambda: settings)
    monkeypatch.setattr("cityos.core.logs.setup", lambda level: None)
    cli.serve(host="127.0.0.1", port=1)
    application = caught.pop("app")
    caught.update(port=_free_port(), log_level="warning")
    server = uvicorn.Server(uvicorn.Config(application, **caught))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{caught['port']}", application.state.platform.settings
    server.should_exit = True
    thread.join(timeout=10)
    application.state.platform.engine.dispose()


def test_cityos_serve_does_not_believe_x_forwarded_proto(city: Any, served: tuple[str, Any]) -> None:
    url, settings = served
    settings.rate_limit_enabled = False

    def sign_in(c: httpx.Client) -> str:
        form = c.get(f"{url}{LOGIN}")
        r = c.post(f"{url}{LOGIN}", data={"username": "admin", "password": PASSWORD,
                                          "csrf_token": hidden(form.text, "csrf_token")},
                   headers={"X-Forwarded-Proto": "https"})
        assert r.status_code == 303, r.text
        return cookie(r, SESSION_COOKIE)

    with httpx.Client(headers={"X-Forwarded-Proto": "https"}) as c:
        assert "secure" not in sign_in(c)  # any client can send the header; it does not make https
    settings.cookie_secure = True  # what an operator behind a TLS proxy sets
    with httpx.Client() as c:
        # The sign-in form's own cookie is Secure now, so a client on plain http does not send it back:
        # send it by hand, as a browser behind the TLS proxy would.
        form = c.get(f"{url}{LOGIN}")
        assert "secure" in cookie(form, "cityos_login_csrf")
        token = hidden(form.text, "csrf_token")
        r = c.post(f"{url}{LOGIN}", data={"username": "admin", "password": PASSWORD, "csrf_token": token},
                   headers={"Cookie": f"cityos_login_csrf={token}"})
        assert r.status_code == 303 and "secure" in cookie(r, SESSION_COOKIE)
