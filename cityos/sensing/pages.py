"""The sensing console (城市感知 工作台) at /console/sensing: the device registry with its map, a
device's page with live charts, the alert rules and their editor, and the alerts.

Thin like `api.py`: the registry and the counts come from `timeseries`, a device from
`service.thing_get`, rules and alerts from their modules; each checks what the signed-in person
may read. Pages are rendered on the server; what moves (the map, the charts, live readings, the
rule editor, acknowledging an alert) is page JS under /static/sensing/ talking to the JSON API
(the CSP forbids inline script), fed by the JSON in each page's data-config.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

import cityos.hub.service as hub
import cityos.maps.service as maps
from cityos.core import access
from cityos.core.access import Actor
from cityos.core.errors import CityOSError, Forbidden
from cityos.core.i18n import t
from cityos.core.models import Department
from cityos.core.pages_base import CITY_TZ, PAGE_SIZE, ConsoleActor, ConsoleRoute, page_number, pager, render
from cityos.core.web import SessionDep, language, platform_of
from cityos.sensing import alerts, ingest, rules, service, timeseries
from cityos.sensing.models import Datastream, ObservedProperty, Thing

TEMPLATES = Path(__file__).resolve().parent / "templates"
console = APIRouter(prefix="/console/sensing", route_class=ConsoleRoute, include_in_schema=False)

STATUSES = ("online", "offline", "alerting")
NUMERIC = (ingest.MEASUREMENT, ingest.COUNT)  # the streams drawn as line charts
RECENT_ALERTS = 10  # on a device's page
MAP_LAYERS = ("district", "street")  # reference layers drawn under the devices
BASE_TAG, WATER_TAG, ROAD_TAG = "底图", "水系", "道路"  # catalog keywords of the city's base map
JS_TEXT = ("failed", "value", "mean", "range", "no_data", "live_on", "live_off", "new_alert")
# Served by CityOS from the npm package (`make assets`); without it the pages show numbers only.
ECHARTS = Path(__file__).resolve().parents[1] / "core" / "static" / "vendor" / "echarts" / "echarts.min.js"


def ms_time(ms: int | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Epoch milliseconds as the city's wall-clock time (Asia/Shanghai)."""
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).astimezone(CITY_TZ).strftime(fmt)


def iso_time(value: str | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An ISO 8601 time of the API as the city's wall-clock time."""
    if not value:
        return ""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(CITY_TZ).strftime(fmt)


def number(value: float | None) -> str:
    """A reading as people read it: no float noise, a dash when there is none."""
    if value is None:
        return "—"
    return f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def _reader(actor: Actor) -> None:
    """Deny at once who may read no device at all (residents): an empty registry would mislead."""
    if access.reach_of(actor, "sensing.read") is None:
        raise Forbidden("you may not read sensing data / 无权查看感知数据")


def _text(lang: str) -> dict[str, Any]:
    words: dict[str, Any] = {key: t(f"sense.js.{key}", lang) for key in JS_TEXT}
    words["status"] = {s: t(f"sense.status.{s}", lang) for s in STATUSES}
    return words


def _page(request: Request, template: str, actor: Actor, **context: Any) -> HTMLResponse:
    return render(request, template, actor=actor, current="sensing", ms_time=ms_time, iso_time=iso_time,
                  number=number, **context)


# -- the device registry (设备台账) ------------------------------------------------------------


def base_layers(session: Session, actor: Actor, lang: str) -> tuple[list[dict[str, Any]], list[float] | None]:
    """The city's own layers under the devices (district and street borders, the layers tagged
    as base map), and the first view (the districts' extent); never internet tiles."""
    roles = {code: role for role, (code, _attr) in maps.reference_layers(session).items()}
    out, view = [], None
    for la in maps.layer_list(session, actor, limit=maps.MAX_LIMIT):
        role = roles.get(la.code)
        tags = set(hub.resource_by_code(session, la.resource_code).keywords or [])
        if role not in MAP_LAYERS and BASE_TAG not in tags:
            continue
        if role == "district" and la.bbox:
            view = list(la.bbox)
        look = "water" if WATER_TAG in tags else "road" if ROAD_TAG in tags else None
        out.append({"code": la.code, "title": (la.title_en or la.title) if lang == "en" else la.title,
                    "role": role, "look": look})
    return out, view


@console.get("", response_class=HTMLResponse)
def things_page(request: Request, session: SessionDep, actor: ConsoleActor, status: str = "", kind: str = "",
                q: str = "", department: str = "", page: str | None = None) -> Response:
    """The device registry: counts by status, the filtered table, the map of the same devices."""
    _reader(actor)
    lang = language(request)
    departments = _departments(session, actor)
    filters = {"status": status if status in STATUSES else "", "kind": kind.strip()[:32],
               "q": q.strip()[:100], "department": department if department in dict(departments) else ""}
    n = page_number(page)
    found = timeseries.things_overview(session, actor, status=filters["status"] or None,
                                       kind=filters["kind"] or None, q=filters["q"] or None,
                                       department=filters["department"] or None,
                                       limit=PAGE_SIZE, offset=(n - 1) * PAGE_SIZE)
    counts = timeseries.status_counts(session, actor)
    layers, view = base_layers(session, actor, lang)
    query = urlencode({k: v for k, v in filters.items() if v})
    config = {"base": layers, "view": view, "tile_url": platform_of(request).settings.map_tile_url,
              "things_url": "/api/sensing/things" + (f"?{query}" if query else ""), "text": _text(lang)}
    return _page(request, "sensing/things.html", actor, tab="things", items=found["items"],
                 pager=pager(request, found["total"], n), counts=counts, filters=filters,
                 kinds=_kinds(session, actor, filters["kind"]), departments=departments, statuses=STATUSES,
                 config=config)


def _kinds(session: Session, actor: Actor, chosen: str) -> list[str]:
    """The kinds of device the actor can see, for the filter."""
    depts = service.readable_departments(session, actor)
    stmt = select(Thing.kind).where(Thing.kind.is_not(None)).distinct()
    if depts is not None:
        stmt = stmt.where(Thing.department_id.in_(depts))
    return sorted({k for k in session.scalars(stmt) if k} | ({chosen} if chosen else set()))


def _departments(session: Session, actor: Actor) -> list[tuple[str, str]]:
    """The departments with devices the actor can see, for the filter (code, name)."""
    depts = service.readable_departments(session, actor)
    stmt = (select(Department.code, Department.name).where(Department.id.in_(select(Thing.department_id)))
            .order_by(Department.path))
    if depts is not None:
        stmt = stmt.where(Department.id.in_(depts))
    return [(code, name) for code, name in session.execute(stmt)]


# -- a device (设备详情) -------------------------------------------------------------------------


def stream_view(ds: Datastream) -> dict[str, Any]:
    """What a datastream's card and chart need."""
    unit = ds.unit_of_measurement if isinstance(ds.unit_of_measurement, dict) else {}
    prop = ds.observed_property
    return {
        "id": ds.id, "name": ds.name, "kind": ds.kind, "description": ds.description,
        "property": prop.name if prop else None, "unit": unit.get("symbol") or unit.get("name") or "",
        "observation_type": ds.observation_type.rsplit("/", 1)[-1], "interval": ds.interval_seconds,
        "last_time": ds.last_time, "last_value": ds.last_value, "retention_days": ds.retention_days,
        "chart": ds.kind == "single" and ds.observation_type in NUMERIC,
        "start": ds.phenomenon_start, "end": ds.phenomenon_end or ds.last_time,
    }


@console.get("/things/{thing_id}", response_class=HTMLResponse)
def thing_page(request: Request, session: SessionDep, actor: ConsoleActor, thing_id: int) -> Response:
    """A device: its properties and location, a chart per datastream, live readings."""
    thing = service.thing_get(session, actor, thing_id)
    lang = language(request)
    may_write = access.decide(actor, "sensing.write", service.thing_target(thing, thing.department.path),
                              session).allowed
    streams = [stream_view(ds) for ds in sorted(thing.datastreams, key=lambda d: d.id)]
    state = _status_of(session, actor, thing)
    recent, _total = alerts.alert_list(session, actor, thing=thing.id, limit=RECENT_ALERTS)
    config = {"thing": thing.id, "text": _text(lang)}
    return _page(request, "sensing/thing.html", actor, tab="things", thing=thing, streams=streams,
                 thing_status=state, may_write=may_write, config=config, recent=recent,
                 echarts=ECHARTS.is_file())


def _status_of(session: Session, actor: Actor, thing: Thing) -> str | None:
    """The device's status as the registry shows it (found by its name in its department)."""
    try:
        found = timeseries.things_overview(session, actor, q=thing.name, department=thing.department.code,
                                           limit=500)
    except CityOSError:
        return None
    return next((str(item["status"]) for item in found["items"] if item["id"] == thing.id), None)


# -- rules (告警规则) ---------------------------------------------------------------------------

# How each parameter type of `rules.KINDS` is entered: an input type, or the choices of a select.
PARAM_INPUTS = {"number": "number", "nonneg": "number", "positive": "number", "count": "integer",
                "id": "integer", "polygon": "geojson"}
MAX_OPTIONS = 1000  # targets offered per kind in the editor's selects


def param_fields(kind: str) -> list[dict[str, Any]]:
    """The editor's fields of a rule kind, straight from `rules.KINDS` (and the common ones)."""
    out = []
    for p in (*rules.KINDS[kind], *rules._COMMON):
        choices = (tuple(rules.OPS) if p.type == "op" else tuple(rules.EXPRS) if p.type == "expr"
                   else p.choices)
        out.append({"name": p.name, "type": p.type, "input": "choice" if choices else PARAM_INPUTS[p.type],
                    "required": p.required, "default": p.default, "choices": list(choices)})
    return out


def target_options(session: Session, actor: Actor) -> dict[str, list[tuple[int, str]]]:
    """What a rule may be attached to, by target type: observed properties (city-wide), and the
    things, groups and datastreams of the departments the actor may read."""
    depts = service.readable_departments(session, actor)

    def scoped(stmt: Any, column: Any) -> Any:
        return (stmt if depts is None else stmt.where(column.in_(depts))).limit(MAX_OPTIONS)

    props = session.execute(select(ObservedProperty.id, ObservedProperty.name)
                            .order_by(ObservedProperty.name, ObservedProperty.id).limit(MAX_OPTIONS))
    things = session.execute(scoped(select(Thing.id, Thing.name).order_by(Thing.name, Thing.id),
                                    Thing.department_id))
    streams = session.execute(scoped(select(Datastream.id, Datastream.name, Thing.name)
                                     .join(Thing, Thing.id == Datastream.thing_id)
                                     .order_by(Thing.name, Datastream.id), Datastream.department_id))
    return {"property": [(i, n) for i, n in props], "thing": [(i, n) for i, n in things],
            "group": [(g.id, g.name) for g in rules.group_list(session, actor)][:MAX_OPTIONS],
            "datastream": [(i, f"{tn} · {n}") for i, n, tn in streams]}


@console.get("/rules", response_class=HTMLResponse)
def rules_page(request: Request, session: SessionDep, actor: ConsoleActor, edit: str | None = None,
               saved: str | None = None, page: str | None = None) -> Response:
    """The rules, and the editor: a new rule, or the one being edited (?edit=<id>)."""
    _reader(actor)
    lang = language(request)
    n = page_number(page)
    items, total = rules.rule_list(session, actor, PAGE_SIZE, (n - 1) * PAGE_SIZE)
    wanted = int(edit) if edit and edit.isdecimal() and len(edit) <= 18 else None
    editing = rules.rule_get(session, actor, wanted) if wanted is not None else None
    options = target_options(session, actor)
    names = {kind: dict(opts) for kind, opts in options.items()}
    may_write = access.reach_of(actor, "sensing.rule.write") is not None
    config = {"rule": rules.rule_public(editing) if editing else None, "text": _text(lang)}
    return _page(request, "sensing/rules.html", actor, tab="rules", items=items,
                 pager=pager(request, total, n), editing=editing, targets=rules.TARGETS,
                 kinds={k: param_fields(k) for k in rules.KINDS}, options=options, names=names,
                 severities=alerts.SEVERITIES, may_write=may_write, config=config,
                 saved=int(saved) if saved and saved.isdecimal() and len(saved) <= 18 else None)


# -- alerts (告警) ----------------------------------------------------------------------------


def _thing_names(session: Session, actor: Actor, ids: set[int]) -> dict[int, str]:
    """Names of the devices of the listed alerts, and of the first devices the actor can read
    (for alerts that arrive live)."""
    depts = service.readable_departments(session, actor)
    readable = select(Thing.id, Thing.name).order_by(Thing.id).limit(MAX_OPTIONS)
    if depts is not None:
        readable = readable.where(Thing.department_id.in_(depts))
    names = {i: name for i, name in session.execute(readable)}
    missing = ids - names.keys()
    if missing:
        names.update((i, name) for i, name in session.execute(select(Thing.id, Thing.name)
                                                              .where(Thing.id.in_(missing))))
    return names


@console.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, session: SessionDep, actor: ConsoleActor, state: str = "",
                severity: str = "", page: str | None = None) -> Response:
    """The alerts, newest first, with acknowledge and resolve; new ones arrive live (SSE)."""
    _reader(actor)
    lang = language(request)
    filters = {"state": state if state in alerts.STATES else "",
               "severity": severity if severity in alerts.SEVERITIES else ""}
    n = page_number(page)
    items, total = alerts.alert_list(session, actor, state=filters["state"] or None,
                                     severity=filters["severity"] or None, limit=PAGE_SIZE,
                                     offset=(n - 1) * PAGE_SIZE)
    things = _thing_names(session, actor, {a.thing_id for a in items})
    may_handle = access.reach_of(actor, "sensing.alert.handle") is not None
    words = _text(lang)
    words.update(states={s: t(f"sense.state.{s}", lang) for s in alerts.STATES},
                 severities={s: t(f"sense.severity.{s}", lang) for s in alerts.SEVERITIES},
                 actions={a: t(f"sense.alert.{a}", lang) for a in ("acknowledge", "resolve")},
                 done={a: t(f"sense.alert.done.{a}", lang) for a in ("acknowledge", "resolve")})
    config = {"stream": "/api/sensing/alerts/stream", "filters": filters, "first_page": n == 1,
              "may_handle": may_handle, "things": things,
              "rules": {r.id: r.name for r in rules.rule_list(session, actor, MAX_OPTIONS)[0]}, "text": words}
    return _page(request, "sensing/alerts.html", actor, tab="alerts", items=items, things=things,
                 pager=pager(request, total, n), filters=filters, states=alerts.STATES,
                 severities=alerts.SEVERITIES, may_handle=may_handle, config=config)


router = APIRouter()
router.include_router(console)
