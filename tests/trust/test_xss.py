"""Stored and reflected XSS, and the strict CSP on every page (trust, issue 9 item 3).

Stored: a payload goes through the APIs into every text field a user can set that a page shows —
department and user names, hub resources and their rows, dataset titles and descriptions, open-data
application purposes, layer titles and feature properties, case descriptions, addresses and notes,
incident titles and notes, sensing Things and their sensors' links — then every page the app mounts
is fetched (console as the admin, portal anonymously). The payload must show, escaped, and never as
live markup: no event handler attribute, no inline script, no javascript: URL anywhere (the pages have
none of their own, so any found was injected). Reflected: every page's query parameters and path
parameters carry a payload, with the same check. Every HTML answer carries the strict CSP
(core.web.CSP: script-src 'self', no 'unsafe-inline'; only /docs is looser).

One short check in Debian's Chromium: the stored payloads on a console page and a portal page raise no
dialog (alert) when the page is loaded. Escaping happens in the templates, after the database has
answered: these run once, on SQLite.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cityos.core import access
from cityos.core.web import CSP
from tests.cases.conftest import POINT
from tests.conftest import PASSWORD
from tests.opendata.conftest import air_row, air_spec
from tests.sensing.helpers_sta import thing_body
from tests.trust.helpers_abuse import Refs, build_city, console_login, fill, live_markup
from tests.trust.test_permission_matrix import api_routes, is_page

SCRIPT = "<script>alert(1)</script>"
ATTR = '"><img src=x onerror=alert(1)>'
JS_URL = "javascript:alert(1)"
# What a field shows once escaped by Jinja (" is &#34;).
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"
REFLECT = f"{JS_URL}//{ATTR}{SCRIPT}"
SKIP = {"/docs"}
# `lang` (core.web.language) and `page` (core.pages_base.page_number) are read the same way by every
# page: probed on a portal page, a console page and a page of each kind of engine.
SHARED_PARAMS_ON = {"/", "/data", "/console/departments", "/console/hub", "/console/cases", "/ops/incidents",
                    "/console/sensing", "/map"}


def mark(tag: str) -> str:
    """A payload that names its field, so each field is shown to be displayed (and escaped)."""
    return f"{tag}{SCRIPT}{ATTR}"


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}"
    return r.json()


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()}


def store_payloads(refs: Refs, client: TestClient) -> dict[str, str]:
    """Write a payload into every user-set text field that pages show, through the APIs; return the
    tags written and the path parameters of the objects made."""
    h = refs.headers
    ok(client.post("/api/departments", headers=h("admin"), json={
        "code": "220200-xss", "name": mark("dept"), "kind": "bureau", "parent_code": "220200"}), 201)
    ok(client.post("/api/users", headers=h("admin"), json={
        "username": "xss_user", "password": PASSWORD, "department_code": "220200-hbj",
        "role": access.DEPARTMENT_STAFF, "display_name": mark("user")}), 201)

    res = ok(client.post("/api/hub/resources", headers=h("env_staff"), json=air_spec(
        name=mark("resname"), abstract=mark("resabs"))), 201)
    code = res["code"]
    rows = [air_row(n) for n in range(8)]
    rows[0] = {**rows[0], "site_name": mark("cell"), "day": str(rows[0]["day"])}
    ok(client.post(f"/api/hub/resources/{code}/rows", headers=h("env_staff"), json={
        "rows": [{**r, "day": str(r["day"])} for r in rows], "mode": "replace"}))
    ok(client.post("/api/opendata/datasets", headers=h("env_staff"), json={
        "resource": code, "name": "xss-data", "title": mark("dstitle"), "description": mark("dsdesc"),
        "topics": ["environment"], "tags": ["空气"], "lon_field": "lon", "lat_field": "lat"}), 201)
    ok(client.post("/api/opendata/datasets/xss-data/submit", headers=h("env_staff")))
    ok(client.post("/api/opendata/datasets/xss-data/approve", headers=h("env_admin")))
    ok(client.post("/api/opendata/datasets/xss-data/approve", headers=h("admin")))
    ok(client.post("/api/opendata/applications", headers=h("resident"), json={
        "dataset": refs.values["conditional"], "applicant": mark("applicant"), "contact": "data@example.cn",
        "purpose": mark("purpose") + "研究各区户籍人口结构，用于养老服务设施规划"}), 201)

    ok(client.post("/api/maps/layers", headers=h("env_staff"), json={
        "code": "xss-layer", "title": mark("layer"), "department": "220200-hbj", "geometry_type": "point",
        "attributes": [{"name": "name", "type": "string"}], "public": True, "open_type": "open"}), 201)
    ok(client.post("/api/maps/layers/xss-layer/features", headers=h("env_staff"), json={
        "type": "FeatureCollection", "features": [{
            "type": "Feature", "id": "f1", "geometry": {"type": "Point", "coordinates": [126.55, 43.84]},
            "properties": {"name": mark("feature")}}]}))

    case = ok(client.post("/api/cases", headers=h("resident"), json={
        "category": "noise", "description": mark("casedesc"), "address": mark("caseaddr"), **POINT}), 201)
    number = case["number"]
    ok(client.post(f"/api/cases/{number}/actions/dispatch", headers=h("hotline_agent"),
                   json={"department": "220200-gaj", "note": mark("casenote")}))

    inc = ok(client.post("/api/ops/incidents", headers=h("ops_staff"), json={
        "type": "flood", "level": "III", "title": mark("inctitle"), "description": mark("incdesc"), **POINT}),
        201)
    ok(client.post(f"/api/ops/incidents/{inc['number']}/notes", headers=h("ops_staff"),
                   json={"note": mark("incnote")}), 201)

    body = thing_body(name=mark("thing"), description=mark("thingdesc"))
    body["Datastreams"][0]["Sensor"]["metadata"] = JS_URL
    r = client.post("/sta/v1.1/Things", headers=basic("env_staff"), json=body)
    assert r.status_code == 201, r.text
    thing_id = re.search(r"Things\((\d+)\)", r.headers["location"]).group(1)  # type: ignore[union-attr]
    return {"resource": code, "dataset": "xss-data", "layer": "xss-layer", "collection": "xss-layer",
            "number": number, "key": case["token"], "token": case["token"], "incident": inc["number"],
            "thing_id": thing_id}


TAGS = ["dept", "user", "resname", "resabs", "cell", "dstitle", "dsdesc", "applicant", "purpose", "layer",
        "feature", "casedesc", "caseaddr", "casenote", "inctitle", "incdesc", "incnote", "thing", "thingdesc"]


def page_paths(app: FastAPI) -> list[str]:
    """Every GET page the app mounts (HTML for browsers), as mounted."""
    return [path for method, path, _ in api_routes(app)
            if method == "GET" and is_page(path) and not path.endswith((".json", ".geojson")) and path not in SKIP]


# Pages that take what they show from the query (a case followed by its token), and the OGC pages,
# which are HTML only when asked.
EXTRA_PUBLIC = ["/cases/track?number={number}&token={token}", "/ogc/collections?f=html",
                "/ogc/collections/{collection_id}?f=html", "/ogc/collections/{collection_id}/items?f=html",
                "/ogc/collections/{collection_id}/items/f1?f=html", "/data/dataset/{name}/api"]


def check_html(r: Any, where: str) -> list[str]:
    """What is wrong with one answer: a 5xx, live markup, an unescaped payload, a weak CSP."""
    problems = []
    if r.status_code >= 500:
        return [f"{where}: {r.status_code}"]
    if "text/html" not in r.headers.get("content-type", ""):
        return []
    csp = r.headers.get("content-security-policy")
    if csp != CSP:
        problems.append(f"{where}: CSP {csp!r}")
    problems += [f"{where}: {m}" for m in live_markup(r.text)]
    for raw in ("<script>alert", "<img src=x"):
        if raw in r.text.lower():
            problems.append(f"{where}: unescaped {raw!r}")
    return problems


@pytest.fixture
def refs(backend: str, city: Any, sessions: Any) -> Refs:
    """The seeded city. Escaping is the templates' business, after the database has answered: these
    tests run once, on SQLite."""
    if backend != "sqlite":
        pytest.skip("escaping happens in the templates, whatever the database: once, on SQLite")
    return build_city(city, sessions)


def test_stored_payloads_show_escaped_on_every_page(app: FastAPI, refs: Refs, client: TestClient) -> None:
    refs.values.update(store_payloads(refs, client))
    console_login(client, "admin")
    anonymous = TestClient(app)
    shown: set[str] = set()
    problems: list[str] = []
    urls = [fill(p, refs) for p in page_paths(app)]
    public = [fill(p.replace("{number}", "{n}").replace("{token}", "{t}"), refs)
              .replace("{n}", refs.values["number"]).replace("{t}", refs.values["token"]) for p in EXTRA_PUBLIC]
    portal = [u for u in urls if not u.startswith(("/console", "/ops"))]  # the console sends strangers away
    fetched = 0
    for who, c, paths in (("admin", client, urls), ("anonymous", anonymous, portal + public)):
        for url in paths:
            r = c.get(url, headers={"Accept": "text/html"}, follow_redirects=False)
            fetched += 1
            problems += check_html(r, f"{who} GET {url}")
            shown |= {tag for tag in TAGS if f"{tag}{ESCAPED}" in r.text}
    assert not problems, f"{len(problems)} problems on {fetched} pages:\n" + "\n".join(problems)
    assert shown == set(TAGS), f"fields no page showed (escaped): {sorted(set(TAGS) - shown)}"


def test_reflected_parameters_are_escaped(app: FastAPI, refs: Refs, client: TestClient) -> None:
    """Every declared query parameter of every page, and every path parameter, echoed back safely. A
    page gets all its parameters at once; if that is refused (a number that is not one), one at a time."""
    from fastapi.dependencies.utils import get_flat_params
    from fastapi.params import Query

    console_login(client, "admin")
    problems: list[str] = []
    sent = probed = 0
    for method, path, route in api_routes(app):
        if method != "GET" or not is_page(path) or path in SKIP:
            continue
        base = fill(path, refs)
        params = [f.alias for f in get_flat_params(route.dependant) if isinstance(f.field_info, Query)]
        params += ["lang", "page"] if path in SHARED_PARAMS_ON else []  # read by core for every page
        queries = [dict.fromkeys(params, REFLECT)] if params else []
        names = re.findall(r"{([^}:]+)(?::[^}]*)?}", path)
        if names:  # every path parameter at once
            queries.append({})
            for name in names:
                path = re.sub(r"{" + name + r"(?::[^}]*)?}", quote(REFLECT, safe=""), path)
        while queries:
            query = queries.pop()
            url = f"{base}?{urlencode(query)}" if query else fill(path, refs)
            r = client.get(url, headers={"Accept": "text/html"}, follow_redirects=False)
            sent, probed = sent + 1, probed + len(query)
            if len(query) > 1 and 400 <= r.status_code < 500:
                queries += [{k: v} for k, v in query.items()]
                continue
            problems += check_html(r, f"GET {url}")
    assert probed > 110 and sent > 50
    assert not problems, f"{len(problems)} problems in {sent} requests:\n" + "\n".join(problems)


def test_only_docs_loosens_the_csp(client: TestClient) -> None:
    docs = client.get("/docs")
    assert "'unsafe-inline'" in docs.headers["content-security-policy"]
    assert "script-src 'self';" in CSP and "unsafe" not in CSP
    for path in ("/", "/console/login", "/data", "/cases/report", "/map", "/ogc?f=html"):
        r = client.get(path, headers={"Accept": "text/html"})
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"


# -- in a browser -------------------------------------------------------------------------------------


@pytest.mark.browser
def test_stored_payloads_do_not_run_in_chromium(page: Any, refs: Refs, client: TestClient,
                                                live_server: str) -> None:
    from playwright.sync_api import expect

    values = store_payloads(refs, client)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{live_server}/console/login")
    page.get_by_label("用户名").fill("admin")
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(r"/console$"))
    page.goto(f"{live_server}/console/departments?q=dept")
    expect(page.locator("main")).to_contain_text(mark("dept"))  # shown as text, not parsed
    page.goto(f"{live_server}/cases/track?{urlencode({'number': values['number'], 'token': values['token']})}")
    expect(page.locator("main")).to_contain_text(f"casedesc{SCRIPT}")  # the portal shortens it
    page.goto(f"{live_server}/data/dataset/xss-data")
    expect(page.locator("main")).to_contain_text(mark("dstitle"))
    page.wait_for_timeout(300)  # an injected script would have run by now
    assert dialogs == []
    assert page.locator("img[src=x]").count() == 0
