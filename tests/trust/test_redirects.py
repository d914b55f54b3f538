"""Open redirects (trust, issue 9 item 3): every place the app redirects to a place the request names
keeps the visitor on this site.

Those places: the sign-in's `next` (the form's hidden field, the redirect after signing in, the
redirect of a visitor already signed in), a case step's `next` (back to the list it came from), and
htmx's HX-Current-URL, which the console's sign-in redirect sends back. Each refuses absolute URLs,
`//evil.example`, `/\\evil.example`, `javascript:` and their disguises; a Location (or HX-Redirect) is
on-site when a browser, which reads a backslash as a slash and drops tabs and newlines, would stay on
this host. Finally every page is asked with the usual redirect parameter names set to another site,
so a page that starts honouring one cannot escape. Where a redirect goes is the pages' business, not
the database's: once, on SQLite.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import PASSWORD
from tests.trust.helpers_abuse import Refs, build_city, console_login, fill, hidden
from tests.trust.test_permission_matrix import api_routes, is_page

ELSEWHERE = [
    "https://evil.example/x", "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example",
    "javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)", "http:evil.example",
    "/\t/evil.example", "/\n/evil.example", "//evil.example/%2F..", "data:text/html,<script>alert(1)</script>",
    "evil.example", "https:/\\evil.example", "/\\/evil.example",
]
pytestmark = pytest.mark.usefixtures("sqlite_only")
REDIRECT_NAMES = ("next", "return", "return_to", "returnUrl", "redirect", "redirect_uri", "url", "back",
                  "continue", "goto", "target", "dest", "destination")


def on_site(location: str) -> bool:
    """Whether a browser following `location` stays on this host."""
    seen = re.sub(r"[\t\r\n]", "", location).replace("\\", "/").lstrip(" ")
    parts = urlsplit(seen)
    return seen.startswith("/") and not seen.startswith("//") and not parts.scheme and not parts.netloc


def test_on_site_judges_like_a_browser() -> None:
    assert on_site("/console") and on_site("/console/cases?done=file") and on_site("/%2F%2Fevil.example")
    for target in ELSEWHERE:
        assert not on_site(target), target


def login(client: TestClient, next_path: str) -> Any:
    form = client.get("/console/login", params={"next": next_path})
    assert form.status_code == 200
    assert on_site(hidden(form.text, "next")), "the form carries the target on"
    return client.post("/console/login", follow_redirects=False, data={
        "username": "admin", "password": PASSWORD, "csrf_token": hidden(form.text, "csrf_token"),
        "next": next_path})


def test_sign_in_next_stays_on_site(city: Any, client: TestClient) -> None:
    for target in ELSEWHERE:
        client.cookies.clear()
        r = login(client, target)
        assert r.status_code == 303 and r.headers["location"] == "/console", target
        r = client.get("/console/login", params={"next": target}, follow_redirects=False)  # signed in already
        assert r.status_code == 303 and r.headers["location"] == "/console", target


def test_sign_in_next_brings_you_back_on_site(city: Any, client: TestClient) -> None:
    r = login(client, "/console/users?role=auditor")
    assert r.headers["location"] == "/console/users?role=auditor"


@pytest.fixture
def refs(city: Any, sessions: Any) -> Refs:
    return build_city(city, sessions)


def test_case_step_next_stays_on_site(refs: Refs, client: TestClient) -> None:
    number = refs.values["number"]
    r = client.post(f"/api/cases/{number}/actions/dispatch", headers=refs.headers("hotline_agent"),
                    json={"department": "220200-gaj"})
    assert r.status_code == 200, r.text
    csrf = console_login(client, "hotline_agent")
    for target in [*ELSEWHERE, "/console/cases?which=overdue"]:
        r = client.post(f"/console/cases/{number}/act/escalate", follow_redirects=False,
                        data={"note": "请加快办理", "next": target, "csrf_token": csrf})
        assert r.status_code == 303, r.text
        location = r.headers["location"]
        assert on_site(location), (target, location)
        expected = "/console/cases?which=overdue&" if target.startswith("/console") else f"/console/cases/{number}?"
        assert location == expected + "done=escalate", (target, location)


def test_htmx_sign_in_redirect_stays_on_site(city: Any, client: TestClient) -> None:
    """A signed-out htmx request is sent to sign in with HX-Redirect, built from HX-Current-URL."""
    for target in ELSEWHERE:
        current = target if "://" in target else f"http://testserver{target}"
        r = client.get("/console/users", headers={"HX-Request": "true", "HX-Current-URL": current},
                       follow_redirects=False)
        location = r.headers.get("HX-Redirect") or r.headers.get("location", "")
        assert on_site(location), (target, location)
        back = parse_qs(urlsplit(location).query).get("next", ["/console"])[0]
        assert on_site(back), (target, back)


def test_no_page_redirects_off_site(app: FastAPI, refs: Refs, client: TestClient) -> None:
    """Every page, signed in and not, with the usual redirect parameters set to another site."""
    query = urlencode({name: ELSEWHERE[n % len(ELSEWHERE)] for n, name in enumerate(REDIRECT_NAMES)})
    console_login(client, "admin")
    anonymous = TestClient(app)
    pages = [fill(p, refs) for m, p, _ in api_routes(app) if m == "GET" and is_page(p) and p != "/docs"]
    assert len(pages) > 50
    for c in (client, anonymous):
        for url in pages:
            r = c.get(f"{url}?{query}", headers={"Accept": "text/html"}, follow_redirects=False)
            assert r.status_code < 500, (url, r.status_code)
            for header in ("location", "hx-redirect"):
                if header in r.headers:
                    location = r.headers[header]
                    assert on_site(location), (url, location)
                    back = parse_qs(urlsplit(location).query).get("next", ["/"])[0]
                    assert on_site(back.split("?")[0]), (url, back)
