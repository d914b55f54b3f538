"""The one map's pages (一张图): the console map at /console/maps for staff and the public map at
/map, for anyone.

Both are one Leaflet map drawn by /static/maps/map.js (and map-tools.js) from the JSON in the
map's data-config (the CSP forbids inline script), with no tiles by default: the base map is the
city's own layers (district borders, roads, river, grid cells) read as GeoJSON from /api/maps.
`map_tile_url`, when a city has its own tile server, adds tiles under them. The console lists
every layer the signed-in person may read (own department, granted, public) and adds the pipe
networks' tools: burst analysis (爆管分析) and "before you dig" (开挖前查询); the portal shows
public layers only.

Thin over `maps.service` and `maps.pipes_service`: which layers, and what each is for (a
reference layer of locate, a part of a pipe network, a base layer by its catalog keywords).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

import cityos.hub.service as hub
from cityos.core.access import ANONYMOUS, Actor
from cityos.core.i18n import t
from cityos.core.pages_base import ConsoleActor, ConsoleRoute, render
from cityos.core.web import SESSION_COOKIE, ActorDep, SessionDep, language, platform_of
from cityos.maps import pipes, pipes_service, service
from cityos.maps.models import Layer
from cityos.maps.ogc_features import time_extent

TEMPLATES = Path(__file__).resolve().parent / "templates"
console = APIRouter(prefix="/console/maps", route_class=ConsoleRoute, include_in_schema=False)
portal = APIRouter(include_in_schema=False)

# Catalog keywords that say how a layer is drawn: a base layer (on when the map opens), water
# (河流水系) and roads (道路) get their own look.
BASE_TAG, WATER_TAG, ROAD_TAG = "底图", "水系", "道路"
# Which reference layer frames the first view: the most detailed there is.
VIEW_ROLES = ("grid", "community", "street", "district")
# Network parts drawn when the console map opens (customers are many: on request).
NETWORK_ON = ("pipes", "valves", "sources")
JS_TEXT = (
    "loading", "failed", "features", "none", "location", "locate_refused", "outside", "query_hint",
    "box_hint", "burst_hint", "dig_hint", "no_pipe", "burst_title", "valves_to_close",
    "valves_already_closed", "isolated_pipes", "unsupplied_pipes", "customers_cut_off",
    "customers_in_zone", "customers_downstream", "area", "warnings", "clear", "zoom", "dig_title",
    "dig_none", "distance", "depth", "diameter", "material", "kind", "network", "box_title", "matched",
    "shown", "metres", "square_metres", "time_all", "pipe", "year", "owner", "more",
)


def _title(layer: Layer, lang: str) -> str:
    return (layer.title_en or layer.title) if lang == "en" else layer.title


def layer_views(session: Session, layers: list[Layer], lang: str, *, console: bool) -> list[dict[str, Any]]:
    """What the map needs of each layer: how to fetch, draw and label it, and whether it is on."""
    roles = {code: role for role, (code, _attr) in service.reference_layers(session).items()}
    out = []
    keywords = hub.keywords_by_code(session, [la.resource_code for la in layers])
    for la in layers:
        tags = keywords.get(la.resource_code, [])
        network = pipes_service.network_of(la.code)
        part = la.code.removeprefix(f"{network}-") if network else None
        role = roles.get(la.code)
        on = role == "district" or BASE_TAG in tags or (console and part in NETWORK_ON)
        order = (0, list(service.ROLES).index(role)) if role else (1, 0) if BASE_TAG in tags else (
            (3, list(pipes_service.NETWORK_LAYERS).index(part)) if part else (2, 0))
        out.append({
            "order": order, "code": la.code, "title": _title(la, lang), "geometry_type": la.geometry_type,
            "department": la.department.name, "feature_count": la.feature_count, "bbox": la.bbox,
            "role": role, "network": network, "part": part, "on": on, "public": la.public,
            "look": "water" if WATER_TAG in tags else "road" if ROAD_TAG in tags else None,
            "attributes": {a["name"]: a["title"] for a in la.attributes},
            "time": time_extent(session, la) if la.time_field else None,
        })
    # Reference layers first (district to grid), then the base map, the rest, the networks.
    out.sort(key=lambda v: (v["order"], v["network"] or "", v["code"]))
    return [{k: v for k, v in view.items() if k != "order"} for view in out]


def _view(layers: list[dict[str, Any]]) -> list[float] | None:
    """The first view: the extent of the most detailed reference layer, else of what is on."""
    for role in VIEW_ROLES:
        for la in layers:
            if la["role"] == role and la["bbox"]:
                return list(la["bbox"])
    boxes = [la["bbox"] for la in layers if la["on"] and la["bbox"]] or [la["bbox"] for la in layers
                                                                        if la["bbox"]]
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes)]


def map_config(request: Request, session: Session, layers: list[Layer], *, console: bool,
               networks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What map.js reads (the map's data-config): layers, reference roles, networks, words, tiles."""
    lang = language(request)
    views = layer_views(session, layers, lang, console=console)
    refs = {role: {"layer": code, "attribute": attr}
            for role, (code, attr) in service.reference_layers(session).items()}
    return {
        "lang": lang, "console": console, "layers": views, "view": _view(views), "reference": refs,
        "roles": {role: t(f"map.role.{role}", lang) for role in service.ROLES},
        "networks": networks or [],
        "pipe_kinds": {k.code: {"colour": k.colour, "name": k.zh if lang == "zh-CN" else k.en}
                       for k in pipes.PIPE_KINDS.values()},
        "tile_url": platform_of(request).settings.map_tile_url,
        "text": {key: t(f"map.js.{key}", lang) for key in JS_TEXT},
        "dig_max_m": pipes_service.DIG_MAX_M,
        "now": dt.datetime.now(dt.UTC).isoformat(),
    }


@console.get("", response_class=HTMLResponse)
def console_map(request: Request, session: SessionDep, actor: ConsoleActor) -> Response:
    """The console map: every layer one may read, burst analysis and "before you dig"."""
    layers = service.layer_list(session, actor, limit=service.MAX_LIMIT)
    networks = pipes_service.network_list(session, actor)
    config = map_config(request, session, layers, console=True, networks=networks)
    return render(request, "console/maps/map.html", actor=actor, current="maps", config=config,
                  networks=networks)


@portal.get("/map", response_class=HTMLResponse)
def public_map(request: Request, session: SessionDep, actor: ActorDep) -> Response:
    """The public map (公众地图): the city's public layers, for anyone, no sign-in."""
    layers = service.layer_list(session, ANONYMOUS, limit=service.MAX_LIMIT)
    config = map_config(request, session, layers, console=False)
    signed_in: Actor | None = actor if actor.kind == "user" and request.cookies.get(SESSION_COOKIE) else None
    return render(request, "portal/maps/map.html", actor=signed_in, config=config)


router = APIRouter()
router.include_router(console)
router.include_router(portal)
