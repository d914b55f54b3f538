"""The permission matrix, generated from the app itself (trust, issue 9).

Every JSON route `create_app()` mounts must be classified in EXPECTED below — a new route that is
not FAILS `test_every_route_is_classified`, and an entry matching no route is stale and fails too.
Then every route is called by a caller of every role (anonymous, a resident, staff and the admin of
an unrelated bureau, the auditor, the platform admin) with placeholder path parameters and a minimal body built from the route's own
OpenAPI schema, and the answers are checked against the route's class:

    public       anyone; anonymous is never refused (401/403)
    signed-in    anonymous gets 401; any signed-in user may call it (a resident is not refused)
    staff        anonymous gets 401; a resident never gets a 2xx; the admin is never refused
    admin        platform admins only: anonymous 401; resident, department staff and admins and the
                 auditor never a 2xx; admin never refused
    filtered     anyone may ask, the answer holds only what the caller may see: an anonymous 2xx
                 must be empty; the admin is never refused (the small city holds no data, so what a
                 resident's list holds is not checked here)
    device       only the device itself (HTTP Basic with its key): every user, even the admin, is
                 refused; anonymous 401
    open311-key  Open311 writes need an api_key: anonymous is refused (401/403, Open311's own format)
    login        credential exchange itself (POST /api/auth/token): anyone may try (401 for wrong ones)
    stream       Server-Sent Events: only the anonymous refusal is checked (a signed-in call would
                 stream forever and hang the test client)

An anonymous caller of a private route must get 401 before anything is looked up or validated
(`cityos.core.web.SignedInDep`): a 404 or 422 would tell a stranger whether an object exists or
what a body must look like.
Nobody may ever get a 5xx. Surprises are collected and reported in one assertion per test.
The table is the source of truth, reviewed by hand: derive, do not copy, what the code does.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from cityos.opendata import ckan_api

PUBLIC, SIGNED_IN, STAFF, ADMIN, FILTERED, DEVICE, OPEN311_KEY, LOGIN, STREAM = (
    "public", "signed-in", "staff", "admin", "filtered", "device", "open311-key", "login", "stream")
CLASSES = {PUBLIC, SIGNED_IN, STAFF, ADMIN, FILTERED, DEVICE, OPEN311_KEY, LOGIN, STREAM}

# (method, path as mounted) -> class. One line per route; keep it sorted by engine.
EXPECTED: dict[tuple[str, str], str] = {
    # -- core -------------------------------------------------------------------------------------
    ("GET", "/docs"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("POST", "/api/auth/token"): LOGIN,
    ("POST", "/api/auth/revoke"): SIGNED_IN,
    ("GET", "/api/me"): SIGNED_IN,
    ("GET", "/api/departments"): PUBLIC,  # the government directory is public (department.read)
    ("GET", "/api/departments/{code}"): PUBLIC,
    ("POST", "/api/departments"): ADMIN,
    ("GET", "/api/users"): FILTERED,  # a resident sees only themselves
    ("POST", "/api/users/lookup"): STAFF,
    ("GET", "/api/users/{username}"): STAFF,
    ("POST", "/api/users"): STAFF,  # department admins create their own users
    ("PATCH", "/api/users/{username}"): STAFF,
    ("GET", "/api/apikeys"): STAFF,
    ("POST", "/api/apikeys"): STAFF,
    ("DELETE", "/api/apikeys/{prefix}"): STAFF,
    ("GET", "/api/audit"): STAFF,  # auditors and admins
    ("POST", "/api/audit/verify"): STAFF,
    # -- data hub ---------------------------------------------------------------------------------
    ("POST", "/api/hub/requests"): STAFF,
    ("GET", "/api/hub/requests"): STAFF,
    ("GET", "/api/hub/requests/{request_id}"): STAFF,
    ("POST", "/api/hub/requests/{request_id}/decision"): STAFF,
    ("GET", "/api/hub/grants"): STAFF,
    ("POST", "/api/hub/grants/{grant_id}/revoke"): STAFF,
    ("POST", "/api/hub/grants/{grant_id}/subscriptions"): STAFF,
    ("GET", "/api/hub/resources/{code}/rows"): STAFF,
    ("POST", "/api/hub/registries/population/lookup"): STAFF,
    ("PATCH", "/api/hub/registries/{code}/records"): STAFF,
    ("POST", "/api/hub/registries/{code}/crosscheck"): STAFF,
    ("GET", "/api/hub/discrepancies"): STAFF,
    ("POST", "/api/hub/discrepancies/{id}/resolve"): STAFF,
    ("POST", "/api/hub/licences"): STAFF,
    ("POST", "/api/hub/licences/verify"): PUBLIC,  # hub.licence.verify is public
    ("POST", "/api/hub/licences/{licence_no}/revoke"): STAFF,
    ("GET", "/api/hub/stats"): STAFF,
    ("POST", "/api/hub/resources/{code}/uploads"): STAFF,
    ("GET", "/api/hub/uploads/{job_id}"): STAFF,
    ("GET", "/api/hub/uploads/{job_id}/errors.csv"): STAFF,
    ("POST", "/api/hub/resources/{code}/rows"): STAFF,
    ("GET", "/api/hub/resources/{code}/schema"): STAFF,
    ("GET", "/api/hub/resources/{code}/versions/diff"): STAFF,
    ("POST", "/api/hub/resources/{code}/rollback"): STAFF,
    ("POST", "/api/hub/resources/{code}/pulls"): STAFF,
    ("GET", "/api/hub/resources/{code}/pulls"): STAFF,
    ("DELETE", "/api/hub/pulls/{pull_id}"): STAFF,
    ("GET", "/api/hub/vocabulary"): PUBLIC,  # code lists only; no actor at all
    ("GET", "/api/hub/resources"): STAFF,
    ("POST", "/api/hub/resources"): STAFF,
    ("GET", "/api/hub/resources/export"): STAFF,
    ("GET", "/api/hub/resources/{code}"): STAFF,
    ("PATCH", "/api/hub/resources/{code}"): STAFF,
    ("GET", "/api/hub/resources/{code}/versions"): STAFF,
    ("GET", "/api/hub/resources/{code}/quality"): STAFF,
    ("GET", "/api/hub/negative-list"): STAFF,
    ("POST", "/api/hub/negative-list"): STAFF,
    # -- open data --------------------------------------------------------------------------------
    ("GET", "/api/opendata/topics"): PUBLIC,
    ("POST", "/api/opendata/topics"): ADMIN,  # opendata.topic.write: platform admins only
    ("GET", "/api/opendata/plan"): STAFF,
    ("PUT", "/api/opendata/plan/{resource}"): STAFF,
    ("GET", "/api/opendata/datasets"): STAFF,  # the preparers' list; the portal /data is public
    ("POST", "/api/opendata/datasets"): STAFF,
    ("GET", "/api/opendata/datasets/{name}"): PUBLIC,
    ("PATCH", "/api/opendata/datasets/{name}"): STAFF,
    ("POST", "/api/opendata/datasets/{name}/check"): STAFF,
    ("POST", "/api/opendata/datasets/{name}/submit"): STAFF,
    ("POST", "/api/opendata/datasets/{name}/approve"): STAFF,
    ("POST", "/api/opendata/datasets/{name}/refuse"): STAFF,
    ("POST", "/api/opendata/datasets/{name}/withdraw"): STAFF,
    ("GET", "/api/opendata/applications"): STAFF,  # deciders' list; residents use /data/applications
    ("POST", "/api/opendata/applications"): SIGNED_IN,  # residents apply for conditional data
    ("POST", "/api/opendata/applications/{app_id}/decision"): STAFF,
    ("POST", "/api/opendata/applications/{app_id}/revoke"): STAFF,
    ("GET", "/api/opendata/stats"): STAFF,
    ("GET", "/api/action/{name}"): PUBLIC,  # CKAN: expanded per action below
    ("POST", "/api/action/{name}"): PUBLIC,
    ("GET", "/api/3/action/{name}"): PUBLIC,
    ("POST", "/api/3/action/{name}"): PUBLIC,
    ("GET", "/api/3"): PUBLIC,
    ("GET", "/catalog.{fmt}"): PUBLIC,  # DCAT-AP
    ("GET", "/dataset/{name}.{fmt}"): PUBLIC,
    ("GET", "/data/dataset/{name}/chart.json"): PUBLIC,  # the portal's chart of a published dataset
    ("GET", "/data/dataset/{name}/points.geojson"): PUBLIC,
    # -- maps -------------------------------------------------------------------------------------
    ("GET", "/api/maps/layers"): PUBLIC,  # public layers for anyone, the rest for staff
    ("POST", "/api/maps/layers"): STAFF,
    ("GET", "/api/maps/layers/{code}"): PUBLIC,
    ("PUT", "/api/maps/layers/{code}/public"): STAFF,
    ("POST", "/api/maps/layers/{code}/features"): STAFF,
    ("GET", "/api/maps/layers/{code}/features"): PUBLIC,
    ("GET", "/api/maps/layers/{code}/features/{fid}"): PUBLIC,
    ("GET", "/api/maps/layers/{code}/nearest"): PUBLIC,
    ("POST", "/api/maps/layers/{code}/within"): PUBLIC,
    ("GET", "/api/maps/locate"): PUBLIC,
    ("POST", "/api/maps/locate"): PUBLIC,
    ("POST", "/api/maps/measure"): PUBLIC,
    ("GET", "/api/maps/reference"): PUBLIC,
    ("PUT", "/api/maps/reference/{role}"): ADMIN,  # maps.reference.write
    ("GET", "/ogc"): PUBLIC,
    ("GET", "/ogc/"): PUBLIC,
    ("GET", "/ogc/conformance"): PUBLIC,
    ("GET", "/ogc/api"): PUBLIC,
    ("GET", "/ogc/collections"): PUBLIC,
    ("GET", "/ogc/collections/{collection_id}"): PUBLIC,
    ("GET", "/ogc/collections/{collection_id}/queryables"): PUBLIC,
    ("GET", "/ogc/collections/{collection_id}/items"): PUBLIC,
    ("GET", "/ogc/collections/{collection_id}/items/{feature_id}"): PUBLIC,
    ("GET", "/api/maps/networks"): FILTERED,  # pipe networks one may read
    ("POST", "/api/maps/networks/dig-check"): STAFF,
    ("GET", "/api/maps/networks/{code}"): STAFF,
    ("POST", "/api/maps/networks/{code}/burst"): STAFF,
    ("GET", "/api/maps/networks/{code}/check"): STAFF,
    # -- sensing ----------------------------------------------------------------------------------
    ("POST", "/api/sensing/observations"): FILTERED,  # each reading checked against its stream; [] is "accepted 0"
    ("POST", "/api/sensing/devices/{device_key}/readings"): DEVICE,
    ("POST", "/api/sensing/things/{thing_id}/credentials"): STAFF,
    ("GET", "/api/sensing/ingest/stats"): STAFF,
    ("GET", "/api/sensing/things"): STAFF,
    ("GET", "/api/sensing/things/status"): STAFF,
    ("GET", "/api/sensing/datastreams/{datastream_id}/series"): STAFF,
    ("PATCH", "/api/sensing/datastreams/{datastream_id}"): STAFF,
    ("GET", "/api/sensing/latest"): STAFF,
    ("GET", "/api/sensing/datastreams/{datastream_id}/export.csv"): STAFF,
    ("GET", "/api/sensing/datastreams/{datastream_id}/export.parquet"): STAFF,
    ("GET", "/api/sensing/rules"): FILTERED,
    ("POST", "/api/sensing/rules"): STAFF,
    ("GET", "/api/sensing/rules/{rule_id}"): STAFF,
    ("PATCH", "/api/sensing/rules/{rule_id}"): STAFF,
    ("DELETE", "/api/sensing/rules/{rule_id}"): STAFF,
    ("GET", "/api/sensing/groups"): FILTERED,
    ("POST", "/api/sensing/groups"): STAFF,
    ("PUT", "/api/sensing/groups/{group_id}/things"): STAFF,
    ("GET", "/api/sensing/alerts"): FILTERED,
    ("GET", "/api/sensing/alerts/stream"): STREAM,
    ("GET", "/api/sensing/alerts/{alert_id}"): STAFF,
    ("POST", "/api/sensing/alerts/{alert_id}/acknowledge"): STAFF,
    ("POST", "/api/sensing/alerts/{alert_id}/resolve"): STAFF,
    ("GET", "/api/sensing/webhooks"): FILTERED,
    ("POST", "/api/sensing/webhooks"): STAFF,
    ("DELETE", "/api/sensing/webhooks/{webhook_id}"): STAFF,
    ("GET", "/sta/v1.1"): SIGNED_IN,  # SensorThings asks for HTTP Basic even for the service root
    ("GET", "/sta/v1.1/"): SIGNED_IN,
    ("POST", "/sta/v1.1/CreateObservations"): FILTERED,  # devices or users; each reading checked
    ("GET", "/sta/v1.1/{path:path}"): STAFF,
    ("POST", "/sta/v1.1/{path:path}"): STAFF,
    ("PATCH", "/sta/v1.1/{path:path}"): STAFF,
    ("PUT", "/sta/v1.1/{path:path}"): STAFF,
    ("DELETE", "/sta/v1.1/{path:path}"): STAFF,
    # -- cases ------------------------------------------------------------------------------------
    ("GET", "/api/cases/kpi"): STAFF,
    ("GET", "/api/cases/kpi.xlsx"): STAFF,
    ("GET", "/api/cases/kpi/ranking"): STAFF,
    ("GET", "/api/cases/kpi/ranking.xlsx"): STAFF,
    ("GET", "/api/cases/kpi/hotspots"): STAFF,
    ("GET", "/api/cases/categories"): PUBLIC,  # residents choose a category when reporting
    ("PUT", "/api/cases/categories/{code}"): STAFF,
    ("GET", "/api/cases/workflows"): PUBLIC,  # no actor at all: workflow definitions are open (reported)
    ("GET", "/api/cases/workflows/{code}/bpmn"): PUBLIC,  # likewise
    ("GET", "/api/cases/workflows/{code}"): PUBLIC,  # likewise
    ("POST", "/api/cases/workflows/{code}"): STAFF,
    ("GET", "/api/cases/queues/{department}"): STAFF,
    ("GET", "/api/cases/track/{key}"): PUBLIC,  # a tracking key is the capability
    ("POST", "/api/cases/sweep"): ADMIN,
    ("POST", "/api/cases"): PUBLIC,  # cases.report is public
    ("GET", "/api/cases"): STAFF,
    ("GET", "/api/cases/{number}"): STAFF,
    ("POST", "/api/cases/{number}/actions/{action}"): STAFF,
    ("POST", "/api/cases/{number}/evaluate"): PUBLIC,  # the reporter rates with the tracking key
    ("GET", "/api/cases/{number}/reporter"): STAFF,
    ("GET", "/api/cases/{number}/duplicates"): STAFF,
    ("POST", "/api/cases/{number}/attachments"): PUBLIC,  # the reporter adds photos with the key
    ("GET", "/api/cases/{number}/attachments/{attachment_id}"): PUBLIC,  # report photos are public
    ("GET", "/open311/v2/discovery.{fmt}"): PUBLIC,
    ("GET", "/open311/v2/services.{fmt}"): PUBLIC,
    ("GET", "/open311/v2/services/{service_code}.{fmt}"): PUBLIC,
    ("POST", "/open311/v2/requests.{fmt}"): OPEN311_KEY,
    ("GET", "/open311/v2/requests.{fmt}"): PUBLIC,
    ("GET", "/open311/v2/requests/{service_request_id}.{fmt}"): PUBLIC,
    ("GET", "/open311/v2/tokens/{token}.{fmt}"): PUBLIC,
    # -- operations centre ------------------------------------------------------------------------
    ("GET", "/api/ops/screen"): STAFF,
    ("GET", "/api/ops/stream"): STREAM,
    ("GET", "/api/ops/indicators"): STAFF,
    ("GET", "/api/ops/indicators/{code}"): STAFF,
    ("PUT", "/api/ops/indicators/{code}"): STAFF,
    ("GET", "/api/ops/indicators/{code}/history"): STAFF,
    ("POST", "/api/ops/indicators/{code}/refresh"): STAFF,
    ("GET", "/api/ops/warning-rules"): STAFF,
    ("PUT", "/api/ops/warning-rules/{code}"): STAFF,
    ("POST", "/api/ops/warning-rules/{code}/raise"): STAFF,
    ("GET", "/api/ops/warnings"): STAFF,
    ("POST", "/api/ops/warnings/{warning_id}/acknowledge"): STAFF,
    ("POST", "/api/ops/warnings/{warning_id}/close"): STAFF,
    ("GET", "/api/ops/incident-types"): STAFF,
    ("PUT", "/api/ops/incident-types/{code}"): STAFF,
    ("GET", "/api/ops/plans"): STAFF,
    ("PUT", "/api/ops/plans/{code}"): STAFF,
    ("GET", "/api/ops/incidents"): STAFF,
    ("POST", "/api/ops/incidents"): STAFF,
    ("GET", "/api/ops/incidents/{number}"): STAFF,
    ("GET", "/api/ops/incidents/{number}/resources"): STAFF,
    ("POST", "/api/ops/incidents/{number}/activate"): STAFF,
    ("POST", "/api/ops/incidents/{number}/level"): STAFF,
    ("POST", "/api/ops/incidents/{number}/notes"): STAFF,
    ("POST", "/api/ops/incidents/{number}/close"): STAFF,
    ("GET", "/api/ops/plan-indicators"): STAFF,
    ("POST", "/api/ops/plan-indicators/refresh"): STAFF,
    ("PUT", "/api/ops/plan-indicators/{code}"): STAFF,
    ("GET", "/api/ops/projects"): STAFF,
    ("GET", "/api/ops/projects/gantt"): STAFF,
    ("GET", "/api/ops/projects/graph"): STAFF,
    ("GET", "/api/ops/projects/{code}"): STAFF,
    ("PATCH", "/api/ops/projects/{code}"): STAFF,
    ("POST", "/api/ops/projects/{code}/notes"): STAFF,
}


# Known bugs the matrix found, to fix later: (method, path, caller) -> why. Reported, not hidden:
# the test xfails naming them while they persist and fails once they are fixed (remove the line).
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}

# Routes that are pages, not JSON APIs: HTML for browsers, checked separately (no 5xx; anonymous
# on the console is sent to the login page). A route is a page when its path starts with these.
PAGE_PREFIXES = ("/console", "/ops/", "/data/", "/cases/")
PAGE_EXACT = {"/", "/ops", "/data", "/map"}
FEED_SUFFIXES = (".json", ".geojson")  # JSON feeds under page paths are APIs

# Placeholder path parameters: values that exist nowhere, except where a real value is needed to
# reach the code at all (a format, a CKAN action name).
PLACEHOLDER_INT = 999999
PLACEHOLDER_STR = "no-such-code"
PARAM_VALUES = {"fmt": "json", "path": "Things(999999)"}
CALLERS = ("anonymous", "resident", "other_staff", "other_admin", "auditor", "admin")
USERS = {"resident": "resident", "other_staff": "env_staff", "other_admin": "env_admin", "auditor": "auditor",
         "admin": "admin"}  # one caller of every role


@dataclass(frozen=True)
class Call:
    method: str
    template: str  # the mounted path, the key into EXPECTED
    url: str
    json: Any = None
    form: dict[str, str] | None = None
    label: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.template)


def api_routes(app: FastAPI) -> Iterator[tuple[str, str, APIRoute | Any]]:
    """(method, path, route) for every API route the app mounts, however deeply included."""
    from fastapi.routing import _IncludedRouter  # FastAPI 0.16x keeps included routers lazily

    def walk(routes: list[Any]) -> Iterator[tuple[str, str, Any]]:
        for r in routes:
            if isinstance(r, _IncludedRouter):
                yield from walk(r.effective_candidates())
                yield from walk(r.effective_low_priority_routes())
            elif isinstance(r, APIRoute) or hasattr(r, "original_route"):
                for m in sorted(r.methods or ()):
                    if m not in ("HEAD", "OPTIONS"):
                        yield m, r.path, r

    seen: set[tuple[str, str]] = set()
    for method, path, route in walk(list(app.routes)):
        if (method, path) not in seen:
            seen.add((method, path))
            yield method, path, route


def is_page(path: str) -> bool:
    return (path in PAGE_EXACT or path.startswith(PAGE_PREFIXES)) and not path.endswith(FEED_SUFFIXES)


# -- minimal bodies from the app's own OpenAPI schema -----------------------------------------------


def _sample(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    if depth > 6:
        return None
    for union in ("anyOf", "oneOf"):
        if union in schema:
            options = [s for s in schema[union] if s.get("type") != "null"] or schema[union]
            return _sample(options[0], components, depth + 1)
    if "allOf" in schema:
        return _sample(schema["allOf"][0], components, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: _sample(props.get(k, {}), components, depth + 1) for k in schema.get("required", [])}
    if kind == "array":
        n = schema.get("minItems", 0)
        return [_sample(schema.get("items", {}), components, depth + 1) for _ in range(n)]
    if kind == "integer":
        return int(schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return False
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2030-01-01T00:00:00+08:00"
        if fmt == "date":
            return "2030-01-01"
        return "x" * max(1, int(schema.get("minLength", 1)))
    return None


def _query_and_body(app: FastAPI, method: str, path: str) -> tuple[dict[str, str], Any, dict[str, str] | None]:
    spec = app.openapi()
    op = spec.get("paths", {}).get(path, {}).get(method.lower())
    if op is None:
        return {}, None, None
    components = spec.get("components", {}).get("schemas", {})
    query = {p["name"]: str(_sample(p.get("schema", {}), components))
             for p in op.get("parameters", []) if p.get("in") == "query" and p.get("required")}
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        return query, _sample(content["application/json"].get("schema", {}), components), None
    for kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        if kind in content:
            body = _sample(content[kind].get("schema", {}), components) or {}
            return query, None, {k: str(v) for k, v in body.items()}
    return query, None, None


def build_calls(app: FastAPI) -> list[Call]:
    calls = []
    for method, path, route in api_routes(app):
        if is_page(path):
            continue
        params = re.findall(r"{([^}:]+)(?::[^}]*)?}", path)
        url = path
        convertors = getattr(route, "param_convertors", {})
        for name in params:
            if name in PARAM_VALUES:
                value: Any = PARAM_VALUES[name]
            elif type(convertors.get(name)).__name__ == "IntegerConvertor" or name.endswith("_id") \
                    or name in ("id", "number"):
                value = PLACEHOLDER_INT
            else:
                value = PLACEHOLDER_STR
            url = re.sub(r"{" + name + r"(?::[^}]*)?}", str(value), url)
        query, body, form = _query_and_body(app, method, path)
        if query:
            url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        if "{name}" in path and "/action/" in path:  # CKAN: every action is its own route
            for action in sorted(ckan_api.ACTIONS):
                calls.append(Call(method, path, path.replace("{name}", action), body, form, action))
            continue
        calls.append(Call(method, path, url, body, form))
    # Revoking a token logs its holder out: last.
    return sorted(calls, key=lambda c: c.key == ("POST", "/api/auth/revoke"))


# -- the tests --------------------------------------------------------------------------------------


def test_every_route_is_classified(app: FastAPI) -> None:
    mounted = {(m, p) for m, p, _ in api_routes(app) if not is_page(p)}
    missing = sorted(mounted - EXPECTED.keys())
    stale = sorted(EXPECTED.keys() - mounted)
    problems = [f"new route {m} {p}: add it to EXPECTED in tests/trust/test_permission_matrix.py"
                for m, p in missing]
    problems += [f"stale entry {m} {p}: no such route any more; remove it from EXPECTED" for m, p in stale]
    assert not problems, "\n".join(problems)
    assert set(EXPECTED.values()) <= CLASSES


def _send(client: Any, call: Call, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": {**headers, "Accept": "application/json"}}
    if call.json is not None:
        kwargs["json"] = call.json
    elif call.form is not None:
        kwargs["data"] = call.form
    return client.request(call.method, call.url, **kwargs)


def _empty(body: str) -> bool:
    """Whether a 2xx body holds nothing: an empty list, or a page/collection with no items."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if isinstance(data, list):
        return not data
    if isinstance(data, dict):
        for key in ("items", "value", "features", "result"):
            if key in data:
                return not data[key]
        return data.get("accepted") == 0 or data.get("total") == 0
    return False


def _judge(kind: str, caller: str, status: int, body: str) -> str | None:
    """What is wrong with this answer for this caller on a route of this kind (None: nothing)."""
    if status >= 500:
        return "server error"
    refused, ok = status in (401, 403), 200 <= status < 300
    if caller == "anonymous":
        if kind == PUBLIC:
            return "anonymous refused on a public route" if refused else None
        if kind == LOGIN:
            return "anonymous forbidden to log in" if status == 403 else None
        if kind == OPEN311_KEY:
            return None if refused else "anonymous not refused"
        if kind == FILTERED:
            return "anonymous got a non-empty 2xx" if ok and not _empty(body) else None
        return None if status == 401 else "anonymous not refused with 401"
    if kind == SIGNED_IN and refused:
        return "signed-in caller refused"
    if caller == "resident" and kind in (STAFF, ADMIN) and ok:
        return "resident got a 2xx on a staff route"
    if kind == DEVICE and ok:
        return "a user got a 2xx on a device's own route"
    if caller in ("other_staff", "other_admin", "auditor") and kind == ADMIN and ok:
        return f"{caller} got a 2xx on a platform admin's route"
    if caller == "admin" and kind in (STAFF, ADMIN, FILTERED, SIGNED_IN) and refused:
        return "platform admin refused"
    return None


def _run_matrix(city: Any, app: FastAPI) -> tuple[int, float, list[tuple[Call, str, Any]]]:
    """Every route x caller; returns (calls made, seconds, [(call, caller, response)])."""
    client = city.client
    headers = {c: (city.headers(u) if u else {}) for c, u in {"anonymous": None, **USERS}.items()}
    answers = []
    started = time.monotonic()
    for call in build_calls(app):
        kind = EXPECTED.get(call.key)
        if kind is None:
            continue  # test_every_route_is_classified reports it
        for caller in CALLERS:
            if kind == STREAM and caller != "anonymous":
                continue  # a signed-in caller would get an endless event stream
            if call.key == ("POST", "/api/auth/revoke") and caller != "anonymous":
                continue  # would log the caller out for the rest of the test; core tests cover it
            answers.append((call, caller, _send(client, call, headers[caller])))
    return len(answers), time.monotonic() - started, answers


def _line(call: Call, caller: str, r: Any, what: str) -> str:
    return (f"{call.method} {call.url} as {caller} ({EXPECTED[call.key]}): {what}: "
            f"{r.status_code} {r.text[:160]!r}")


def test_permission_matrix(city: Any, app: FastAPI) -> None:
    counted, elapsed, answers = _run_matrix(city, app)
    assert counted > 500, f"only {counted} calls made: the route walk is broken"
    surprises, known, still = [], [], set()
    for call, caller, r in answers:
        wrong = _judge(EXPECTED[call.key], caller, r.status_code, r.text)
        if wrong is None:
            continue
        bug = KNOWN_BUGS.get((call.method, call.template, caller))
        if bug is None:
            surprises.append(_line(call, caller, r, wrong))
        else:
            still.add((call.method, call.template, caller))
            known.append(f"{_line(call, caller, r, wrong)} [known: {bug}]")
    surprises += [f"KNOWN_BUGS entry {k} no longer fails: remove it" for k in sorted(KNOWN_BUGS.keys() - still)]
    assert not surprises, f"{len(surprises)} surprises in {counted} calls ({elapsed:.1f}s):\n" + "\n".join(surprises)
    if known:
        pytest.xfail(f"{len(known)} known bugs:\n" + "\n".join(known))
