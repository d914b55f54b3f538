"""Bounded queries (有界查询): no caller can ask for an unbounded page or hold a database worker.

Page sizes and offsets are taken from the app's own OpenAPI document, so a new route cannot
escape: each declares a maximum, and one more than it is refused (422 naming the parameter). The
standards, which read their query strings themselves, are probed by name: OGC API Features clamps
`limit` (Part 1: a too large limit is no error), CKAN caps `rows` at 1,000 (ckan.search.rows_max),
SensorThings refuses a `$top` over 10,000. On PostgreSQL every statement of an API request runs
under `statement_timeout`: a statement that runs longer (or waits on a lock) is cancelled and
answered 503, while background work on the same engine is not limited.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import shapely
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from cityos.app import create_app
from cityos.core.service import MAX_OFFSET
from cityos.core.settings import Settings
from cityos.core.web import SessionDep
from cityos.maps import service as maps
from tests.conftest import City
from tests.maps.conftest import actor_of, new_layer

PAGE_SIZES = {"limit", "rows", "top", "$top", "per_page", "page_size", "size", "max_points", "max_results"}
OFFSETS = {"offset", "skip", "$skip", "start", "page"}
MOST = 10_000
# A time series answers columns of numbers (about 15 bytes a point): sensing allows 100,000 points.
LARGER = {("/api/sensing/datastreams/{datastream_id}/series", "limit"): 100_000,
          ("/api/sensing/datastreams/{datastream_id}/series", "max_points"): 100_000}
HUGE = 10**30  # past every database's integers: must be a 4xx, never a 500


def only_on(backend: str) -> Any:
    """Run a test on one database only; the other is skipped before it is emptied and seeded."""
    def mark(fn: Any) -> Any:
        fn.only_on = backend
        return fn
    return mark


@pytest.fixture(autouse=True)
def _one_backend(request: pytest.FixtureRequest) -> None:
    wanted = getattr(request.function, "only_on", None)
    if wanted is not None and request.node.callspec.params.get("db_url") != wanted:
        pytest.skip(f"runs on {wanted} only")


def _integer(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The integer schema of a parameter (through FastAPI's anyOf for optional ones), if it is one."""
    return next((o for o in [schema, *schema.get("anyOf", [])] if o.get("type") == "integer"), None)


def _paged_parameters(app: FastAPI) -> list[tuple[str, str, str, int | None]]:
    """(path filled in, template, parameter, declared maximum) of every GET query parameter that
    sizes or skips into a page."""
    found = []
    for template, ops in app.openapi()["paths"].items():
        op = ops.get("get")
        if op is None:
            continue
        path = template
        for p in op.get("parameters", []):
            if p["in"] == "path":
                filler = "1" if p["schema"].get("type") == "integer" else "json" if p["name"] == "fmt" else "x"
                path = path.replace("{" + p["name"] + "}", filler)
        for p in op.get("parameters", []):
            number = _integer(p["schema"])
            if p["in"] == "query" and p["name"] in PAGE_SIZES | OFFSETS and number is not None:
                found.append((path, template, p["name"], number.get("maximum")))
    return found


@only_on("sqlite")  # refused by validation before any query runs
def test_every_page_size_and_offset_declares_a_maximum_and_keeps_it(city: City, app: FastAPI) -> None:
    params = _paged_parameters(app)
    assert len(params) >= 40, params  # the walk really walked
    headers = city.headers("admin")
    c = city.client
    assert c is not None
    over: dict[tuple[str, str], dict[str, int]] = {}
    for path, template, name, most in params:
        assert most is not None, f"{template} ?{name} declares no maximum"
        if name in PAGE_SIZES:
            assert most <= LARGER.get((template, name), MOST), f"{template} ?{name} allows {most}"
        over.setdefault((path, template), {})[name] = most + 1
    for (path, template), query in over.items():  # all of a route's at once: each is named
        r = c.get(path, params=query, headers=headers)
        assert r.status_code == 422, (template, query, r.status_code, r.text[:200])
        assert set(query) <= {e["field"] for e in r.json()["errors"]}, (template, r.text[:300])
    r = c.get("/api/audit", params={"offset": HUGE}, headers=headers)  # past int64: refused, not a 500
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "offset"
    for (template, name), most in LARGER.items():  # the exceptions are still true, not stale
        assert (template, name, most) in {(t, n, m) for _, t, n, m in params}


@pytest.fixture
def stations(city: City, sessions: Any) -> City:
    """A public layer of three stations (OGC API Features)."""
    with sessions() as s:
        env = actor_of(s, "env_staff")
        new_layer(s, "stations", "point", actor=env, open_type="open", public=True)
        maps.features_write(s, env, "stations", [
            (f"s{i}", shapely.Point(126.5 + i * 0.01, 43.8), {"name": f"站{i}", "n": i}) for i in range(3)])
        s.commit()
    return city


def test_standard_apis_bound_their_pages_their_own_way(stations: City) -> None:
    c, h = stations.client, stations.headers("admin")
    assert c is not None
    items = "/ogc/collections/stations/items"
    r = c.get(items, params={"limit": HUGE})  # OGC Part 1: clamped to the maximum, not an error
    assert r.status_code == 200 and r.json()["numberReturned"] == 3
    for bad in ({"limit": 0}, {"offset": MAX_OFFSET + 1}, {"offset": HUGE}):
        r = c.get(items, params=bad)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] in bad, (bad, r.text)
    r = c.get("/sta/v1.1/Things", params={"$top": MOST + 1}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "$top"
    r = c.get("/sta/v1.1/Things", params={"$skip": HUGE}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "$skip"
    r = c.get("/sta/v1.1/Things", params={"$skip": 2**63 - 1}, headers=h)  # the largest reaches SQL: empty
    assert r.status_code == 200 and r.json()["value"] == []
    r = c.get("/api/3/action/package_search", params={"rows": HUGE})  # CKAN: capped at rows_max
    assert r.status_code == 200 and r.json()["success"] is True
    for action, bad in (("package_search", "start"), ("package_list", "offset"),
                        ("current_package_list_with_resources", "offset")):
        r = c.get(f"/api/3/action/{action}", params={bad: HUGE})
        assert r.status_code == 409 and r.json()["error"]["__type"] == "Validation Error", (action, r.text)
        assert bad in r.json()["error"]
    for action in ("package_list", "organization_list", "group_list"):
        r = c.get(f"/api/3/action/{action}", params={"limit": HUGE})
        assert r.status_code == 200 and r.json()["success"] is True, (action, r.text)


# -- statement timeout (PostgreSQL) ----------------------------------------------------------------


_SLOW_APPS: dict[str, FastAPI] = {}


@pytest.fixture
def slow_app(settings: Settings, engine: Engine) -> FastAPI:
    """The app with a 300 ms statement timeout and a route that runs a 5 s query; built once per
    database, since FastAPI sets up every route on an app's first request (seconds)."""
    if settings.database_url not in _SLOW_APPS:
        app = create_app(settings.model_copy(update={"statement_timeout_ms": 300}), engine=engine)

        @app.get("/api/test/slow")
        def slow(session: SessionDep) -> dict[str, Any]:
            session.execute(text("SELECT pg_sleep(5)"))
            return {"slept": True}

        with TestClient(app) as c:  # matching the last route sets every route up
            assert c.get("/api/test/slow").status_code == 503
        _SLOW_APPS[settings.database_url] = app
    return _SLOW_APPS[settings.database_url]


def _timed(c: TestClient, path: str, **kw: Any) -> tuple[Any, float]:
    start = time.monotonic()
    r = c.get(path, **kw)
    return r, time.monotonic() - start


@only_on("postgresql")  # statement_timeout is PostgreSQL's; SQLite is the one-machine tier
def test_a_slow_statement_is_cancelled_and_answered_503(slow_app: FastAPI, city: City) -> None:
    with TestClient(slow_app) as c:
        r, took = _timed(c, "/api/test/slow")
        assert r.status_code == 503 and took < 3, (r.status_code, took)
        assert r.headers["content-type"].startswith("application/problem+json")
        body = r.json()
        assert body["type"] == "/problems/timeout" and "0.3 s" in body["detail"] and "超时" in body["detail"]
        assert r.headers["retry-after"] == "5"
        # The same engine's other sessions (background jobs, the CLI) are not limited.
        with slow_app.state.platform.sessions() as s:
            assert s.execute(text("SELECT pg_sleep(0.5), 1")).one()[1] == 1


@only_on("postgresql")
def test_a_request_waiting_on_a_lock_is_cancelled_and_the_pool_recovers(
        slow_app: FastAPI, stations: City, engine: Engine) -> None:
    headers = stations.headers("admin")  # signed in before the tables are locked
    with TestClient(slow_app) as c:
        with engine.connect() as locker:
            locker.execute(text("LOCK TABLE departments, od_datasets, map_features IN ACCESS EXCLUSIVE MODE"))
            r, took = _timed(c, "/api/departments", headers=headers)
            assert r.status_code == 503 and took < 3 and r.json()["type"] == "/problems/timeout"
            r, took = _timed(c, "/api/3/action/package_search")  # CKAN answers in its own shape
            assert r.status_code == 503 and took < 3 and r.json()["success"] is False
            assert r.json()["error"]["__type"] == "Service Unavailable"
            r, took = _timed(c, "/ogc/collections/stations/items")  # OGC: a problem document
            assert r.status_code == 503 and took < 3 and r.json()["status"] == 503
            locker.rollback()
        for _ in range(3):  # the cancelled connections went back to the pool in a usable state
            assert c.get("/api/departments", headers=headers).status_code == 200
        assert c.get("/ogc/collections/stations/items").json()["numberReturned"] == 3
