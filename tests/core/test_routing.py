"""Routing: the per-router prefilter (`web.prefilter_routes`) picks the same route as FastAPI's own
walk through every route, for every route's path and its trailing-slash twin."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI, routing
from starlette.routing import Match

pytestmark = pytest.mark.usefixtures("sqlite_only")

INCLUDED = getattr(routing, "_IncludedRouter", None)


def _sample(path_format: str) -> str:
    """A concrete path for a route: each {param} or {param:conv} becomes a value it accepts."""
    return re.sub(r"{[^}:]+(:[a-z]+)?}", lambda m: "7" if m.group(1) in (":int", ":float") else "x-1",
                  path_format)


def _paths(app: FastAPI) -> list[str]:
    out = set()
    for route in app.router.routes:
        contexts = route.effective_route_contexts() if INCLUDED and isinstance(route, INCLUDED) else [route]
        for ctx in contexts:
            fmt = getattr(ctx, "path_format", None)
            if fmt:
                out |= {_sample(fmt), _sample(fmt).rstrip("/") or "/", _sample(fmt) + "/"}
    return sorted(out | {"/nowhere", "/api/nowhere", "/sta/v1.1/Nothing"})


def _scope(path: str, method: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
            "headers": []}


@pytest.mark.skipif(INCLUDED is None, reason="this FastAPI keeps no included-router objects")
def test_every_route_is_matched_as_without_the_prefilter(app: FastAPI) -> None:
    routers = [r for r in app.router.routes if isinstance(r, INCLUDED)]
    assert routers and all("matches" in vars(r) for r in routers)  # the prefilter is in place
    checked = 0
    for path in _paths(app):
        for method in ("GET", "POST"):
            for router in routers:
                filtered = router.matches(_scope(path, method))
                plain = type(router).matches(router, _scope(path, method))
                assert filtered[0] == plain[0], (path, method)
                if plain[0] != Match.NONE:
                    checked += 1
    assert checked > 250  # most routes were reached, not only refused


def test_a_late_route_is_still_served(client: Any) -> None:
    assert client.get("/sta/v1.1").status_code == 401  # reached: it asks who is calling
    assert client.get("/open311/v2/services.json").status_code == 200
    assert client.get("/no/such/page").status_code == 404


@pytest.mark.skipif(INCLUDED is None, reason="this FastAPI keeps no included-router objects")
def test_a_route_added_after_the_app_is_built_is_reached() -> None:
    """The prefilter rebuilds its pattern when a router, or one included in it, gains a route."""
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    from cityos.core import web

    inner, outer = APIRouter(), APIRouter(prefix="/outer")
    inner.add_api_route("/first", lambda: "first")
    outer.include_router(inner, prefix="/inner")
    app = FastAPI()
    app.include_router(outer)
    web.prefilter_routes(app)
    client = TestClient(app)
    assert client.get("/outer/inner/first").json() == "first"
    assert client.get("/outer/inner/later").status_code == 404
    inner.add_api_route("/later", lambda: "later")
    outer.add_api_route("/direct", lambda: "direct")
    assert client.get("/outer/inner/later").json() == "later"
    assert client.get("/outer/direct").json() == "direct"
