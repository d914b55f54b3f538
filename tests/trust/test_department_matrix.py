"""The department half of the permission matrix (trust, issue 9): own department × other department
× with and without a sharing grant, on real objects, generated from the app's routes.

市公安局 (police) owns one of each kind of department data: a catalog resource with rows, a private
map layer with a feature, a sensor with a datastream, its users. Every API route whose path names
such an object is called with the real object by police's own staff and admin, and by staff and the
admin of 市环保局 (env) — first without, then with a sharing grant. What each route shows another
department is declared once in ACROSS below; a route with a path parameter that is neither resolved
to a seeded object nor listed in ELSEWHERE (with the test that covers it) fails
`test_every_object_route_is_covered`, so a new route cannot escape.

    own staff / admin     never refused (401/403) nor told "not found" on a read
    other department      a read answers 2xx only where ACROSS says the object is visible city-wide
                          (the catalog describes every department's resources); every write is
                          refused (never a 2xx)
    other, with a grant   the granted reads (rows, the layer's features) answer 2xx with only the
                          granted fields; everything else stays as without the grant
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import quote

import pytest
import shapely
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityos.core import auth
from cityos.core.models import AuditRecord, User
from cityos.hub import service as hub
from cityos.hub import sharing
from cityos.maps import service as maps
from tests.conftest import people_spec, person_row
from tests.sensing.conftest import make_thing
from tests.trust.test_permission_matrix import EXPECTED, PUBLIC, _query_and_body, api_routes, is_page

OWNER, OTHER = "220200-gaj", "220200-hbj"
OWN_CALLERS = ("police_staff", "police_admin")
OTHER_CALLERS = ("env_staff", "env_admin")
GRANTEE = "env_staff"
GRANTED_FIELDS = ["name", "district"]
PURPOSE = "治安与环境联合执法核验"
# Bodies for routes whose minimal schema sample would be refused before the permission check.
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/maps/layers/{code}/within"): {"geometry": {"type": "Point", "coordinates": [126.55, 43.84]},
                                                  "metres": 100},
}

# (path prefix, parameter) -> which seeded object fills it.
OBJECTS: dict[tuple[str, str], str] = {
    ("/api/hub/resources/", "code"): "resource",
    ("/api/maps/layers/", "code"): "layer",
    ("/api/maps/layers/", "fid"): "feature",
    ("/ogc/collections/", "collection_id"): "layer",
    ("/ogc/collections/", "feature_id"): "feature",
    ("/api/sensing/datastreams/", "datastream_id"): "datastream",
    ("/api/sensing/things/", "thing_id"): "thing",
    ("/api/users/", "username"): "user",
    ("/api/cases/queues/", "department"): "department",
    ("/api/opendata/plan/", "resource"): "resource",
}

# SensorThings is one catch-all route; these are the entity paths it is called with.
STA_PATHS = ("Things({thing})", "Datastreams({datastream})", "Datastreams({datastream})/Observations",
             "Things({thing})/Locations")

# Reads another department may make of police's objects without a grant, and why.
ACROSS: dict[tuple[str, str], str] = {
    ("GET", "/api/hub/resources/{code}"): "the catalog (资源目录) describes every department's data",
    ("GET", "/api/hub/resources/{code}/schema"): "the catalog: the resource's items, no rows",
    ("GET", "/api/hub/resources/{code}/quality"): "the catalog: the quality score, no rows",
    ("GET", "/api/hub/resources/{code}/versions"): "the catalog: the load history, no rows",
}

# Reads a grant opens (GET, path template): checked to answer 2xx with only the granted fields.
GRANTED = {("GET", "/api/hub/resources/{code}/rows"), ("GET", "/api/maps/layers/{code}/features"),
           ("GET", "/api/maps/layers/{code}/features/{fid}"), ("GET", "/api/maps/layers/{code}"),
           ("GET", "/api/maps/layers/{code}/nearest"), ("GET", "/ogc/collections/{collection_id}"),
           ("GET", "/ogc/collections/{collection_id}/items"),
           ("GET", "/ogc/collections/{collection_id}/items/{feature_id}"),
           ("GET", "/ogc/collections/{collection_id}/queryables"), ("POST", "/api/maps/layers/{code}/within")}

# Routes with a path parameter that is not a department's object here, and where that is tested.
ELSEWHERE: dict[str, str] = {
    "/api/3/action/": "CKAN actions: public open data (tests/opendata/test_ckan_*)",
    "/api/action/": "CKAN actions: public open data (tests/opendata/test_ckan_*)",
    "/open311/": "Open311: public requests, keyed writes (tests/cases/test_open311*)",
    "/catalog.": "the open-data catalog: public (tests/opendata)",
    "/dataset/": "open datasets: public (tests/opendata)",
    "/data/dataset/": "open datasets' chart feeds: public (tests/opendata)",
    "/api/opendata/": "datasets and applications: the data office's workflow (tests/opendata/test_workflow*)",
    "/api/cases/": "cases belong to whoever holds them along the workflow (tests/cases/test_access*)",
    "/api/ops/": "the operations center is city-wide, not one department's (tests/ops)",
    "/api/hub/requests/": "sharing requests: the two departments' own (tests/hub/test_sharing*)",
    "/api/hub/grants/": "grants: the two departments' own (tests/hub/test_sharing*)",
    "/api/hub/uploads/": "upload jobs: their loader's own (tests/hub/test_upload*)",
    "/api/hub/pulls/": "scheduled pulls: the loader's own (tests/hub/test_pull*)",
    "/api/hub/registries/": "base registries: per authoritative department (tests/hub/test_registries*)",
    "/api/hub/discrepancies/": "discrepancies: reporter and authority (tests/hub/test_discrepancies*)",
    "/api/hub/licences/": "licences: the issuer's (tests/hub/test_licences*)",
    "/api/maps/networks/": "pipe networks: per network owner (tests/maps/test_pipes*)",
    "/api/maps/reference/": "reference layers: platform admins (the permission matrix)",
    "/api/sensing/rules/": "alert rules: per department (tests/sensing/test_rules*)",
    "/api/sensing/alerts/": "alerts: per department (tests/sensing/test_rules*)",
    "/api/sensing/groups/": "device groups: per department (tests/sensing/test_rules*)",
    "/api/sensing/webhooks/": "webhooks: per department (tests/sensing/test_rules*)",
    "/api/sensing/devices/": "a device's own ingest (tests/sensing/test_ingest*)",
    "/api/apikeys/": "API keys: department admins (tests/core/test_access*)",
    "/api/departments/": "the department directory is public (the permission matrix)",
}


def _object_routes(app: FastAPI) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in api_routes(app) if "{" in p and not is_page(p)]


def _resolve(path: str, objects: dict[str, str]) -> str | None:
    """The URL for `path` with every parameter filled from the seeded objects, or None."""
    url = path
    for name in re.findall(r"{([^}:]+)(?::[^}]*)?}", path):
        prefix = next((p for (p, n) in OBJECTS if n == name and path.startswith(p)), None)
        if prefix is None:
            return None
        url = re.sub(r"{" + name + r"(?::[^}]*)?}", objects[OBJECTS[(prefix, name)]], url)
    return url


def test_every_object_route_is_covered(app: FastAPI) -> None:
    missing = []
    for method, path in _object_routes(app):
        if path.startswith("/sta/") or _resolve(path, _dummy_objects()) is not None:
            continue
        if EXPECTED.get((method, path)) == PUBLIC and not path.startswith(("/api/maps/", "/ogc/")):
            continue  # no department's data behind it
        if not any(path.startswith(p) for p in ELSEWHERE):
            missing.append(f"{method} {path}")
    assert not missing, ("routes naming an object that neither the department matrix seeds nor "
                         "ELSEWHERE points to a test for: " + ", ".join(missing))


def _dummy_objects() -> dict[str, str]:
    return dict.fromkeys(set(OBJECTS.values()), "x")


# -- the seeded objects of 市公安局 ------------------------------------------------------------------


def _actor(session: Session, username: str) -> Any:
    return auth.user_actor(session.scalar(select(User).where(User.username == username)))


@pytest.fixture
def police(city: Any, sessions: Any) -> dict[str, str]:
    with sessions() as s:
        admin = _actor(s, "police_admin")
        res = hub.resource_create(s, admin, people_spec())
        s.commit()
        layer = maps.layer_create(s, admin, {
            "code": "police_posts", "title": "警务站点", "department": OWNER, "geometry_type": "point",
            "attributes": [{"name": "name", "title": "名称", "type": "string"},
                           {"name": "officer", "title": "值班民警", "type": "string"}]})
        maps.features_write(s, admin, layer.code, [
            ("p1", shapely.Point(126.55, 43.84), {"name": "江北警务站", "officer": "张警官"})])
        thing, streams = make_thing(s, OWNER, name="卡口")
        s.commit()
        objects = {"resource": res.code, "layer": layer.code, "feature": "p1", "thing": str(thing.id),
                   "datastream": str(streams[0].id), "user": "police_staff", "department": OWNER}
    rows = [{k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in person_row(n).items()}
            for n in range(5)]
    r = city.client.post(f"/api/hub/resources/{res.code}/rows", json={"rows": rows},
                         headers=city.headers("police_admin"))
    assert r.status_code in (200, 201), r.text
    return objects


def _grant(sessions: Any, code: str, fields: list[str]) -> None:
    with sessions() as s:
        req = sharing.request_create(s, _actor(s, GRANTEE), code, purpose=PURPOSE,
                                     legal_basis="《吉林市政务信息资源共享管理办法》", fields=fields,
                                     row_filter=[], valid_until=None)
        if req.state != "granted":
            sharing.request_decide(s, _actor(s, "police_admin"), req.id, approve=True)
        s.commit()


# -- the calls -----------------------------------------------------------------------------------


def _calls(app: FastAPI, objects: dict[str, str]) -> list[tuple[str, str, str, Any, Any]]:
    """(method, template, url, json, form) for every object route, with the seeded objects."""
    calls = []
    for method, path in _object_routes(app):
        if path.startswith("/sta/"):
            for entity in STA_PATHS:
                url = "/sta/v1.1/" + entity.format(**objects)
                body = {"name": "x"} if method in ("PATCH", "PUT", "POST") else None
                calls.append((method, path, url, body, None))
            continue
        url = _resolve(path, objects)
        if url is None:
            continue
        query, body, form = _query_and_body(app, method, path)
        body = BODIES.get((method, path), body)
        if query:
            url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        calls.append((method, path, url, body, form))
    # deletes last: the other callers are refused, but if one were not, it would hide later rows
    return sorted(calls, key=lambda c: c[0] == "DELETE")


def _send(city: Any, call: tuple[str, str, str, Any, Any], user: str) -> Any:
    method, _, url, body, form = call
    kwargs: dict[str, Any] = {"headers": {**city.headers(user), "Accept": "application/json",
                                          "X-Purpose": quote(PURPOSE)}}
    if body is not None:
        kwargs["json"] = body
    elif form is not None:
        kwargs["data"] = form
    return city.client.request(method, url, **kwargs)


def _fields_of(body: Any) -> set[str]:
    """The field names in a rows or features answer."""
    if isinstance(body, dict) and "features" in body:
        return {k for f in body["features"] for k in (f.get("properties") or {})}
    if isinstance(body, dict) and "properties" in body and body.get("type") == "Feature":
        return set(body["properties"] or {})
    items = body.get("items", body.get("rows", [])) if isinstance(body, dict) else body
    return {k for row in items or [] if isinstance(row, dict) for k in row}


def _counts(sessions: Any) -> dict[str, int]:
    from cityos.hub.models import Resource
    from cityos.maps.models import Layer
    from cityos.sensing.models import Datastream, Thing

    with sessions() as s:
        return {m.__name__: s.scalar(select(func.count()).select_from(m))
                for m in (Resource, Layer, Thing, Datastream, User)}


def test_own_department_reads_its_objects(city: Any, app: FastAPI, police: dict[str, str]) -> None:
    surprises = []
    for call in _calls(app, police):
        if call[0] != "GET":
            continue
        for user in OWN_CALLERS:
            r = _send(city, call, user)
            if r.status_code >= 500 or r.status_code in (401, 403, 404):
                surprises.append(f"{user} GET {call[2]}: {r.status_code} {r.text[:160]!r}")
    assert not surprises, "own department refused its own objects:\n" + "\n".join(surprises)


def test_other_department_sees_only_the_catalog(city: Any, app: FastAPI, sessions: Any,
                                                 police: dict[str, str]) -> None:
    before = _counts(sessions)
    surprises, reads = [], 0
    for call in _calls(app, police):
        method, template, url = call[:3]
        for user in OTHER_CALLERS:
            r = _send(city, call, user)
            ok = 200 <= r.status_code < 300
            if r.status_code >= 500:
                surprises.append(f"{user} {method} {url}: server error {r.status_code}")
            elif method == "GET":
                reads += 1
                if ok and (method, template) not in ACROSS:
                    surprises.append(f"{user} read another department's object: {method} {url}: "
                                     f"{r.status_code} {r.text[:160]!r}")
                if not ok and (method, template) in ACROSS:
                    surprises.append(f"{user} refused a catalog read: {method} {url}: {r.status_code}")
            elif ok:
                surprises.append(f"{user} changed another department's object: {method} {url}: "
                                 f"{r.status_code} {r.text[:160]!r}")
    assert reads > 40, f"only {reads} reads made: the route walk is broken"
    assert not surprises, f"{len(surprises)} surprises:\n" + "\n".join(surprises)
    assert _counts(sessions) == before


def test_a_grant_opens_exactly_the_granted_reads(city: Any, app: FastAPI, sessions: Any,
                                                   police: dict[str, str]) -> None:
    with sessions() as s:
        layer_res = maps.layer_by_code(s, police["layer"]).resource_code
        layer_fields = [i.name for i in hub.resource_by_code(s, layer_res).items]
    _grant(sessions, police["resource"], GRANTED_FIELDS)
    _grant(sessions, layer_res, [f for f in layer_fields if f != "officer"])
    surprises, opened = [], 0
    for call in _calls(app, police):
        method, template, url = call[:3]
        r = _send(city, call, GRANTEE)
        ok = 200 <= r.status_code < 300
        if (method, template) in GRANTED:
            opened += 1
            if not ok:
                surprises.append(f"granted read refused: {method} {url}: {r.status_code} {r.text[:160]!r}")
                continue
            if method != "GET" or "json" not in r.headers.get("content-type", ""):
                continue
            shown = _fields_of(r.json())
            if template.startswith("/api/hub/") and not shown <= set(GRANTED_FIELDS):
                surprises.append(f"{url} shows fields beyond the grant: {sorted(shown)}")
            if "officer" in shown:
                surprises.append(f"{url} shows the layer's ungranted field 'officer'")
        elif ok and method != "GET":
            surprises.append(f"a grant allowed a write: {method} {url}: {r.status_code}")
        elif ok and (method, template) not in ACROSS:
            surprises.append(f"a grant opened an ungranted read: {method} {url}: {r.status_code}")
    assert opened >= 5, f"only {opened} granted reads made"
    assert not surprises, f"{len(surprises)} surprises:\n" + "\n".join(surprises)
    with sessions() as s:  # every granted read is in the audit log, with its purpose
        reads = s.scalars(select(AuditRecord).where(AuditRecord.actor == GRANTEE,
                                                    AuditRecord.action.like("%read%"))).all()
    assert reads and all(a.purpose for a in reads if a.detail and a.detail.get("grant"))
