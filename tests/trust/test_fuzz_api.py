"""Fuzzing every API (trust, issue 9): no 5xx, every error in its API's format, 2xx bodies on schema.

- the app's own OpenAPI document (core, hub, open data, maps, sensing, cases, ops, and the CKAN,
  DCAT and Open311 routes it lists) through schemathesis, as the platform admin (so the fuzz
  reaches past authorization) and, for the first cases of each operation, anonymously;
- OGC API - Features through its own OpenAPI 3.0 document at /ogc/api, and a grammar of CQL2
  text/JSON, bbox, datetime, crs and paging;
- SensorThings, which publishes no OpenAPI: a grammar of resource paths and `$filter`, `$orderby`,
  `$expand`, `$select`, `$top`, `$skip`, `$count`, `$resultFormat`;
- CKAN's Action API and Open311 GeoReport v2, whose parameters the app's document does not spell
  out: every action with data dicts near and far from what it reads; requests posted and searched.

A small city is seeded first (a published dataset, a public layer, a thing with readings, case
categories and a channel key) and every other case's path parameters name those objects, so the
fuzz does not stop at 404 (rate limits are off, as in every test). Errors: RFC 9457 problem
documents, or the standard's own format (CKAN `{"success": false, "error"}`, Open311
`[{"code", "description"}]`, OGC `code`/`description` and STA `message` inside the problem document). A finding not in KNOWN fails the test; a KNOWN
entry that no longer happens fails it too (remove it); only KNOWN findings make it xfail, naming them.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import pytest
import shapely
from fastapi import FastAPI
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from cityos.core import service as core
from cityos.core.access import SYSTEM
from cityos.hub import loading
from cityos.hub import service as hub
from cityos.maps import service as maps
from cityos.opendata import ckan_api
from cityos.opendata import service as od
from tests.cases.conftest import HOTLINE, seed_cases
from tests.maps.conftest import actor_of, new_layer
from tests.opendata.conftest import AIR_DATASET, air_row, air_spec, publish
from tests.sensing.conftest import make_thing
from tests.trust import fuzzing

# Cases per operation of the app's document, sent as the admin; anonymous sends the first of them.
# Bounded by time: the SQLite run of this module stays under 90 s of CPU, the PostgreSQL one 60 s.
EXAMPLES = {"sqlite": 3, "postgresql": 1}
ANONYMOUS_EXAMPLES = 1
# Findings still open: (test's suite, "METHOD /path: kind") -> why it is not fixed yet. Empty is the goal.
KNOWN: dict[tuple[str, str], str] = {}


@dataclass
class FuzzCity:
    """What the fuzz aims at: objects that exist, and who may use them."""

    client: Any
    admin: dict[str, str]
    resource: str  # hub resource code of the published air-quality data
    dataset: str  # its open dataset name
    layer: str  # a public map layer of stations
    thing: int
    datastream: int
    open311_key: str
    ids: dict[str, int]  # STA entity set -> an id that exists

    def pins(self, path: str) -> dict[str, Any]:
        """Path parameters of `path` that name one of the seeded objects."""
        by_name: dict[str, Any] = {
            "collection_id": self.layer, "datastream_id": self.datastream, "thing_id": self.thing,
            "service_code": "tree", "department": HOTLINE, "path": "Things", "role": "district",
        }
        if path.startswith(("/api/hub/resources/{code}", "/api/hub/registries/{code}")):
            by_name["code"] = self.resource
        elif path.startswith("/api/maps/layers/{code}"):
            by_name["code"] = self.layer
        elif path.startswith("/api/cases/categories/{code}"):
            by_name["code"] = "tree"
        if path.startswith(("/api/opendata/datasets/{name}", "/dataset/{name}")):
            by_name["name"] = self.dataset
        elif path.startswith("/api/opendata/plan/{resource}"):
            by_name["resource"] = self.resource
        by_name["fmt"] = "json" if path.startswith("/open311/") else "jsonld"
        return {k: v for k, v in by_name.items() if "{" + k + "}" in path or "{" + k + ":" in path}


def seed(sessions: sessionmaker[Session], city: Any) -> FuzzCity:
    """A published dataset, a public layer, a thing with readings, case categories and a key."""
    with sessions() as s:
        seed_cases(s)
        od.topic_create(s, SYSTEM, name="environment", title="生态环境", title_en="Environment")
        env = actor_of(s, "env_staff")
        air = hub.resource_create(s, env, air_spec())
        loading.rows_write(s, env, air.code, [air_row(n) for n in range(24)])
        s.commit()
        publish(s, air.code, dict(AIR_DATASET), "env_staff", "env_admin")
        new_layer(s, "stations", "point", actor=env, time_field="at", open_type="open", public=True,
                  attributes=[{"name": "name", "type": "string"}, {"name": "aqi", "type": "integer"},
                              {"name": "kind", "type": "string"}, {"name": "at", "type": "datetime"}])
        t0 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
        maps.features_write(s, env, "stations", [
            (f"s{i}", shapely.Point(126.5 + i * 0.01, 43.8 + i * 0.01),
             {"name": f"站{i}", "aqi": 20 + i, "kind": "ab"[i % 2], "at": (t0 + dt.timedelta(hours=i)).isoformat()})
            for i in range(6)])
        thing, streams = make_thing(s, "220200-hbj", streams=2)
        key, _ = core.apikey_create(s, actor_of(s, "hotline_admin"), name="fuzz", department_code=HOTLINE,
                                    scopes=["cases.report"])
        s.commit()
        air_code, thing_id, ds_id = air.code, thing.id, streams[0].id
    admin = city.headers("admin")
    for i, result in enumerate([3.5, 12, -1, 0, 40]):
        r = city.client.post(f"/sta/v1.1/Datastreams({ds_id})/Observations", headers=admin,
                             json={"phenomenonTime": f"2026-01-01T00:0{i}:00Z", "result": result})
        assert r.status_code == 201, r.text
    ids = {}
    for entity_set in fuzzing.STA_SETS:
        r = city.client.get(f"/sta/v1.1/{entity_set}?$top=1&$select=id", headers=admin)
        assert r.status_code == 200, r.text
        if r.json()["value"]:
            ids[entity_set] = r.json()["value"][0]["@iot.id"]
    return FuzzCity(city.client, admin, air_code, AIR_DATASET["name"], "stations", thing_id, ds_id, key, ids)


@pytest.fixture
def fuzz_city(city: Any, sessions: sessionmaker[Session]) -> FuzzCity:
    return seed(sessions, city)


def report(findings: fuzzing.Findings, minimum_calls: int, suite: str, minimum_ok: float) -> None:
    """Fail on any finding not in KNOWN, and on a KNOWN entry of `suite` that no longer happens;
    xfail naming the KNOWN findings that remain. The fuzz must have run, and gone deep enough:
    `minimum_ok` of its calls answered 2xx (not all refused at the door)."""
    statuses = sorted(findings.statuses.items())
    assert findings.calls >= minimum_calls, f"only {findings.calls} calls: the fuzz did not run"
    assert findings.ok() >= minimum_ok * findings.calls, f"too shallow: statuses {statuses}"
    found = {(suite, key): f for key, f in findings.found.items()}
    problems = [str(f) for key, f in sorted(found.items()) if key not in KNOWN]
    problems += [f"KNOWN entry {k!r} no longer happens: remove it" for k in sorted(KNOWN.keys() - found.keys())
                 if k[0] == suite]
    assert not problems, f"{len(problems)} findings in {findings.calls} calls:\n" + "\n".join(problems)
    known = [f"{f} [known: {KNOWN[key]}]" for key, f in sorted(found.items()) if key in KNOWN]
    if known:
        pytest.xfail(f"{len(known)} known findings:\n" + "\n".join(known))


# -- the app's own OpenAPI document -----------------------------------------------------------------------


def test_openapi_document(fuzz_city: FuzzCity, app: FastAPI, backend: str) -> None:
    """Every operation of /openapi.json as the admin, and its first cases anonymously."""
    schema = fuzzing.load(app.openapi())
    findings = fuzzing.Findings()
    callers = [("admin", fuzz_city.admin, EXAMPLES[backend]), ("anonymous", {}, ANONYMOUS_EXAMPLES)]
    ops = fuzzing.operations(schema)
    assert len(ops) > 150, "the app's document lost its operations"
    for op in ops:
        fuzzing.fuzz_operation(op, callers, fuzz_city.client, findings, max_examples=EXAMPLES[backend],
                               path_parameters=fuzz_city.pins(op.path))
    report(findings, len(ops) * 2, "openapi", 0.15)


# -- OGC API - Features ---------------------------------------------------------------------------------


def _ogc_judgement(response: Any, path: str) -> list[tuple[str, str]]:
    wrong = fuzzing.basic_judgement(path, response)
    if not wrong and response.status_code == 200 and path.endswith("/items"):
        doc = response.json()
        if doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
            wrong.append(("schema", "items answer is not a GeoJSON FeatureCollection"))
    return wrong


def test_ogc_features(fuzz_city: FuzzCity, backend: str) -> None:
    """/ogc through its own OpenAPI 3.0 document, then a CQL2/bbox/datetime/crs grammar on items."""
    client, findings = fuzz_city.client, fuzzing.Findings()
    document = client.get("/ogc/api").json()
    schema = fuzzing.load(document)
    pins = {"collectionId": fuzz_city.layer, "featureId": "s1"}
    for op in fuzzing.operations(schema):
        wanted = {k: v for k, v in pins.items() if "{" + k + "}" in op.path}
        fuzzing.fuzz_operation(op, [("anonymous", {}, 4)], client, findings, max_examples=4,
                               path_parameters=wanted)
    items = f"/ogc/collections/{fuzz_city.layer}/items"
    label = "GET /ogc/collections/{collectionId}/items"

    def test(query: dict[str, str]) -> None:
        r = findings.call(label, f"GET {items} {query}",
                          lambda: client.get(items, params=query, headers={"Accept": "application/geo+json"}))
        if r is not None:
            findings.check(label, fuzzing.describe("GET", r), r, _ogc_judgement(r, items))

    n = 100 if backend == "sqlite" else 40
    nul = [{"filter": "name = 'a\x00'"}, {"datetime": "2024-06-01\x00"}]
    fuzzing.run_strategy(fuzzing.ogc_items_query(), test, n, examples=nul)
    report(findings, n, "ogc", 0.25)


# -- SensorThings -----------------------------------------------------------------------------------------


def _sta_judgement(response: Any, path: str) -> list[tuple[str, str]]:
    wrong = fuzzing.basic_judgement(f"/sta/v1.1/{path}", response)
    if not wrong and response.status_code == 200 and response.headers["content-type"].startswith("application/json"):
        doc = response.json()
        collection = path.split("?")[0].rstrip(")").split("/")[-1] in fuzzing.STA_SETS or path.endswith("$ref")
        if not isinstance(doc, dict) or (collection and "value" in doc and not isinstance(doc["value"], list)):
            wrong.append(("schema", "not an entity or a collection with a 'value' list"))
    return wrong


def test_sensorthings(fuzz_city: FuzzCity, backend: str) -> None:
    """SensorThings reads: resource paths and every query option from a grammar, as the admin."""
    client, findings = fuzz_city.client, fuzzing.Findings()

    def test(request: tuple[str, dict[str, str]]) -> None:
        path, query = request
        label = "GET /sta/v1.1/{path}"
        r = findings.call(label, f"GET /sta/v1.1/{path} {query}",
                          lambda: client.get(f"/sta/v1.1/{path}", params=query, headers=fuzz_city.admin))
        if r is not None:
            findings.check(label, fuzzing.describe("GET", r), r, _sta_judgement(r, path))

    n = 120 if backend == "sqlite" else 50
    nul = [("Things", {"$filter": "name eq 'a\x00'"}), ("Things(1)", {"$expand": "Datastreams\x00"})]
    fuzzing.run_strategy(fuzzing.sta_request(fuzz_city.ids), test, n, examples=nul)
    report(findings, n, "sta", 0.25)


# -- CKAN Action API ------------------------------------------------------------------------------------


def _ckan_judgement(response: Any, path: str) -> list[tuple[str, str]]:
    wrong = fuzzing.basic_judgement(path, response)
    if response.status_code == 409:  # CKAN answers validation and search errors with 409
        what = fuzzing.ckan_error(409, response.headers.get("content-type", ""), response.text)
        wrong += [("error format", f"409: {what}")] if what else []
    if not wrong and response.status_code == 200:
        doc = response.json()
        if doc.get("success") is not True or "result" not in doc:
            wrong.append(("schema", "a 200 without 'success': true and 'result'"))
    return wrong


def _as_query(data: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def test_ckan_actions(fuzz_city: FuzzCity, backend: str) -> None:
    """Every CKAN action, by GET parameters and POSTed JSON, anonymously and as the admin."""
    client, findings = fuzz_city.client, fuzzing.Findings()
    per_action = 8 if backend == "sqlite" else 4
    for action in sorted(ckan_api.ACTIONS):
        path = f"/api/3/action/{action}"

        def test(value: tuple[dict[str, Any], bool, bool], path: str = path) -> None:
            data, post, admin = value
            headers = fuzz_city.admin if admin else {}
            method = "POST" if post else "GET"
            label = f"{method} /api/3/action/{{name}}"
            r = findings.call(label, f"{method} {path} {data}", lambda: client.post(path, json=data, headers=headers)
                              if post else client.get(path, params=_as_query(data), headers=headers))
            if r is not None:
                findings.check(label, fuzzing.describe(method, r), r, _ckan_judgement(r, path))

        strategy = st.tuples(fuzzing.ckan_data(fuzz_city.resource, fuzz_city.dataset), st.booleans(), st.booleans())
        nul = [({"q": "a\x00", "id": "a\x00"}, post, False) for post in (False, True)]
        fuzzing.run_strategy(strategy, test, per_action, examples=nul)
    report(findings, len(ckan_api.ACTIONS) * per_action, "ckan", 0.2)


# -- Open311 GeoReport v2 ---------------------------------------------------------------------------------


def open311_post(key: str) -> st.SearchStrategy[dict[str, Any]]:
    coordinate = st.one_of(fuzzing.numbers(), st.sampled_from(["43.84", "126.55", "", "north"]))
    return st.fixed_dictionaries({}, optional={
        "api_key": st.sampled_from([key, key, "", "cos_000000000000_nope"]),
        "service_code": st.sampled_from(["tree", "noise", "permit", "nope", ""]), "lat": coordinate,
        "long": coordinate, "address_string": st.text(max_size=30), "address_id": st.text(max_size=5),
        "description": st.text(max_size=60), "media_url": st.sampled_from(
            ["https://example.org/a.jpg", "javascript:alert(1)", "ftp://x", "http://", "x" * 3000]),
        "email": st.sampled_from(["a@example.org", "nope"]), "phone": st.text(max_size=15),
        "first_name": st.text(max_size=10), "last_name": st.text(max_size=10),
        "attribute[blocking]": st.sampled_from(["yes", "no", "maybe", ""]),
        "attribute[nope][]": st.text(max_size=4), "jurisdiction_id": st.text(max_size=4)})


def open311_search() -> st.SearchStrategy[dict[str, str]]:
    date = st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01", "2026-01-01T00:00:00+08:00", "junk", "",
                            "9999-12-31T23:59:59Z", "0001-01-01", "2026-02-30", "1e9"])
    return st.fixed_dictionaries({}, optional={
        "service_request_id": st.one_of(st.text(max_size=12), st.just("1,2,x")), "service_code": st.sampled_from(
            ["tree", "tree,noise", "nope", ""]), "start_date": date, "end_date": date,
        "status": st.sampled_from(["open", "closed", "open,closed", "nope", ""]),
        "jurisdiction_id": st.text(max_size=4)})


def test_open311(fuzz_city: FuzzCity, backend: str) -> None:
    """Service requests posted (form or JSON, with a channel key or without) and searched, in JSON and XML."""
    client, findings = fuzz_city.client, fuzzing.Findings()
    n = 60 if backend == "sqlite" else 24

    def post(value: tuple[dict[str, Any], str, bool]) -> None:
        fields, fmt, as_json = value
        path, label = f"/open311/v2/requests.{fmt}", "POST /open311/v2/requests.{fmt}"
        r = findings.call(label, f"POST {path} {fields}",
                          lambda: client.post(path, json=fields) if as_json else client.post(path, data=fields))
        if r is None:
            return
        wrong = fuzzing.basic_judgement(path, r)
        if r.status_code == 201 and fields.get("api_key") != fuzz_city.open311_key:
            wrong.append(("accepted", "a request without the channel's key was accepted"))
        findings.check(label, fuzzing.describe("POST", r), r, wrong)

    def search(value: tuple[dict[str, str], str]) -> None:
        query, fmt = value
        path, label = f"/open311/v2/requests.{fmt}", "GET /open311/v2/requests.{fmt}"
        r = findings.call(label, f"GET {path} {query}", lambda: client.get(path, params=query))
        if r is not None:
            findings.check(label, fuzzing.describe("GET", r), r, fuzzing.basic_judgement(path, r))

    fmt = st.sampled_from(["json", "xml"])
    good = {"api_key": fuzz_city.open311_key, "service_code": "tree", "lat": "43.84", "long": "126.55",
            "attribute[blocking]": "no", "description": "树倒了"}
    nul = good | {"description": "a\x00b", "first_name": "\x00"}
    fuzzing.run_strategy(st.tuples(open311_post(fuzz_city.open311_key), fmt, st.booleans()), post, n,
                         examples=[(good, "xml", False), (nul, "json", True), (nul, "xml", False)])
    fuzzing.run_strategy(st.tuples(open311_search(), fmt), search, n // 2,
                         examples=[({"status": "\x00"}, "json"), ({"service_code": "\x00"}, "xml")])
    assert findings.statuses[201] >= 1, "not even the well-formed request was accepted"
    report(findings, n, "open311", 0.15)


# -- the judge itself --------------------------------------------------------------------------------------


def test_the_judge_reports_what_it_must(app: FastAPI) -> None:
    """The harness can fail: a 5xx, a 4xx out of its API's format and a 2xx off its schema are each
    reported, and right answers are not (a schemathesis upgrade must not make the checks vacuous)."""
    import httpx

    op = fuzzing.load(app.openapi())["/api/departments/{code}"]["GET"]
    case = op.Case(path_parameters={"code": "x"})
    request = httpx.Request("GET", "http://testserver/api/departments/x")

    def kinds(status: int, body: Any, ctype: str = "application/json") -> list[str]:
        response = httpx.Response(status, content=json.dumps(body).encode(), headers={"content-type": ctype},
                                  request=request)
        response.elapsed = dt.timedelta(milliseconds=1)  # set by a client; schemathesis reads it
        return [kind for kind, _ in fuzzing.judge_case(case, response)]

    problem = {"type": "/problems/not-found", "title": "Not found", "status": 404, "detail": "x"}
    department = {"id": 1, "code": "x", "name": "吉林市", "name_en": None, "kind": "city", "admin_code": None,
                  "credit_code": None}
    assert kinds(500, problem | {"status": 500}, fuzzing.PROBLEM) == ["server error"]
    assert kinds(404, {"detail": "Not Found"}) == ["error format"]
    assert kinds(404, problem | {"status": 400}, fuzzing.PROBLEM) == ["error format"]
    assert kinds(404, problem, fuzzing.PROBLEM) == []
    assert kinds(200, {"code": "x"}) == ["schema"]
    assert kinds(200, department) == []
    # the standards' own formats
    assert fuzzing.error_format("/api/3/action/package_show", 404, "application/json",
                                '{"help": "h", "success": false, "error": {"__type": "Not Found Error"}}') is None
    assert fuzzing.error_format("/api/3/action/package_show", 404, fuzzing.PROBLEM, json.dumps(problem))
    assert fuzzing.error_format("/open311/v2/requests.json", 400, "application/json",
                                '[{"code": 400, "description": "service_code: required"}]') is None
    assert fuzzing.error_format("/open311/v2/requests.xml", 400, "text/xml",
                                "<errors><error><code>400</code><description>x</description></error></errors>") is None
    assert fuzzing.error_format("/open311/v2/requests.xml", 400, "application/json", '[{"code": 400}]')
    ogc = problem | {"status": 400, "code": "InvalidParameterValue", "description": "x"}
    assert fuzzing.error_format("/ogc/collections/x/items", 400, fuzzing.PROBLEM, json.dumps(ogc)) is None
    assert fuzzing.error_format("/ogc/collections/x/items", 422, fuzzing.PROBLEM, json.dumps(ogc | {"status": 422}))
    assert fuzzing.error_format("/sta/v1.1/Things", 400, fuzzing.PROBLEM, json.dumps(ogc))
    assert fuzzing.error_format("/sta/v1.1/Things", 400, fuzzing.PROBLEM,
                                json.dumps(problem | {"status": 400, "message": "x"})) is None
