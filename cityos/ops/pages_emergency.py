"""Emergency command pages (应急指挥) at /ops/incidents: the list of incidents with a form to open
one, and an incident's command page — its map with the resources near it, the plans that fit,
the departments' tasks (read back from the case engine, refreshed every few seconds by htmx),
the timeline, notes, the response level and the close-out report.

Thin over `cityos.ops.emergency`; every form posts here with the console's CSRF token and goes
back to the page (post/redirect/get); a refusal is shown beside the form that caused it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

import cityos.maps.service as maps
from cityos.core import access
from cityos.core.access import Actor
from cityos.core.errors import CityOSError, Conflict, Forbidden, Invalid, NotFound
from cityos.core.models import Department
from cityos.core.pages_base import ConsoleActor, ConsoleRoute, field_errors, local_time, redirect, render
from cityos.core.web import SessionDep, language
from cityos.ops import emergency
from cityos.ops.models import INCIDENT_LEVELS, INCIDENT_STATUSES, Incident
from cityos.ops.service import target

router = APIRouter(prefix="/ops/incidents", route_class=ConsoleRoute, include_in_schema=False)
FORM_ERRORS = (Invalid, Conflict, Forbidden, NotFound)
OPEN_FIELDS = ("type", "level", "title", "description", "lon", "lat", "district")
POLL_SECONDS = 5


async def posted(request: Request) -> FormData:
    return await request.form()


FormDep = Annotated[FormData, Depends(posted)]


def _words() -> dict[str, Any]:
    return {"LEVELS": INCIDENT_LEVELS, "STATUSES": INCIDENT_STATUSES, "EVENTS": emergency.EVENTS,
            "TASK_STATUS": emergency.TASK_STATUS, "POLL_SECONDS": POLL_SECONDS}


def _show(request: Request, template: str, actor: Actor, status: int = 200, **context: Any) -> HTMLResponse:
    return render(request, template, actor=actor, status=status, current="ops", **_words(), **context)


# -- the list (突发事件列表) ----------------------------------------------------------------------------


def _list(request: Request, session: Session, actor: Actor, status: str, *,
          form: dict[str, str] | None = None, errors: dict[str, str] | None = None,
          code: int = 200) -> HTMLResponse:
    status = status if status in INCIDENT_STATUSES else ""
    incidents = emergency.incident_list(session, actor, status or None)
    types = emergency.incident_types(session, actor)
    lang = language(request)
    may_command = access.reach_of(actor, "ops.command") is not None
    return _show(request, "ops/incidents.html", actor, status=code, incidents=incidents, types=types,
                 filter=status, form=form or {"level": "IV"}, errors=errors or {}, may_command=may_command,
                 type_name=lambda t: t.name if lang == "zh-CN" else (t.name_en or t.name))


@router.get("", response_class=HTMLResponse)
def incidents_page(request: Request, session: SessionDep, actor: ConsoleActor, status: str = "") -> Response:
    return _list(request, session, actor, status[:16])


@router.post("", response_class=HTMLResponse)
def incidents_open(request: Request, session: SessionDep, actor: ConsoleActor, form: FormDep) -> Response:
    raw = {k: str(form.get(k) or "").strip() for k in OPEN_FIELDS}
    try:
        inc = emergency.incident_open(session, actor, type_code=raw["type"], level=raw["level"],
                                      title=raw["title"], description=raw["description"] or None,
                                      lon=raw["lon"] or None, lat=raw["lat"] or None,  # type: ignore[arg-type]
                                      district=raw["district"] or None)
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        return _list(request, session, actor, "", form=raw, errors=field_errors(exc, language(request)),
                     code=exc.status)
    number = inc.number
    session.commit()
    return redirect(f"/ops/incidents/{number}")


# -- one incident (应急指挥) ------------------------------------------------------------------------


def _live(session: Session, actor: Actor, inc: Incident) -> dict[str, Any]:
    tasks = emergency.incident_tasks(session, actor, inc.number)
    for t in tasks:
        due = dt.datetime.fromisoformat(t["due_at"].replace("Z", "+00:00")) if t["due_at"] else None
        t["due_local"] = local_time(due, "%m-%d %H:%M")
    return {"inc": inc, "tasks": tasks, "events": emergency.incident_timeline(session, actor, inc.number)}


def _detail(request: Request, session: Session, actor: Actor, number: str, *,
            errors: dict[str, dict[str, str]] | None = None, code: int = 200, done: str = "") -> HTMLResponse:
    inc = emergency.incident_get(session, actor, number)
    lang = language(request)
    zh = lang == "zh-CN"
    try:
        resources = emergency.resources_near(session, actor, number)
    except CityOSError:
        resources = []
    refs = maps.reference_layers(session)
    config = {"point": [inc.lon, inc.lat] if inc.lon is not None and inc.lat is not None else None,
              "resources": [{k: r[k] for k in ("layer", "name", "lon", "lat", "distance_m")}
                            for r in resources],
              "districts": refs["district"][0] if "district" in refs else None,
              "text": {"incident": "事发地点" if zh else "Incident", "m": "米" if zh else "m",
                       "failed": "地图加载失败" if zh else "The map could not load"}}
    plans = emergency.plans_for(session, inc)
    activated = {a.plan_id for a in emergency.activations(session, inc)}
    dept = session.get(Department, inc.department_id)
    may_command = dept is not None and access.decide(
        actor, "ops.command", target("ops_incident", dept, inc.number), session).allowed
    return _show(request, "ops/incident.html", actor, status=code, **_live(session, actor, inc),
                 department=dept, resources=resources, config=config, done=done,
                 plans=[p for p in plans if p.id not in activated],
                 activated_plans=[p for p in plans if p.id in activated], may_command=may_command,
                 errors=errors or {}, type_name=(inc.type.name if zh else inc.type.name_en or inc.type.name),
                 plan_name=lambda p: p.name if zh else (p.name_en or p.name))


@router.get("/{number}", response_class=HTMLResponse)
def incident_page(request: Request, session: SessionDep, actor: ConsoleActor, number: str,
                  done: str = "") -> Response:
    return _detail(request, session, actor, number[:32], done=done[:16])


@router.get("/{number}/live", response_class=HTMLResponse)
def incident_live(request: Request, session: SessionDep, actor: ConsoleActor, number: str) -> Response:
    """The tasks and the timeline, for htmx to refresh in place."""
    inc = emergency.incident_get(session, actor, number[:32])
    return _show(request, "ops/incident_live.html", actor, **_live(session, actor, inc))


def _step(request: Request, session: Session, actor: Actor, number: str, name: str, run: Any) -> Response:
    try:
        run()
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        return _detail(request, session, actor, number, errors={name: field_errors(exc, language(request))},
                       code=exc.status)
    session.commit()
    return redirect(f"/ops/incidents/{number}?{urlencode({'done': name})}")


@router.post("/{number}/activate", response_class=HTMLResponse)
def incident_activate(request: Request, session: SessionDep, actor: ConsoleActor, number: str,
                      form: FormDep) -> Response:
    plan = str(form.get("plan") or "")
    return _step(request, session, actor, number[:32], "activate",
                 lambda: emergency.plan_activate(session, actor, number[:32], plan))


@router.post("/{number}/level", response_class=HTMLResponse)
def incident_level(request: Request, session: SessionDep, actor: ConsoleActor, number: str,
                   form: FormDep) -> Response:
    level, note = str(form.get("level") or ""), str(form.get("note") or "")
    return _step(request, session, actor, number[:32], "level",
                 lambda: emergency.incident_level(session, actor, number[:32], level, note))


@router.post("/{number}/notes", response_class=HTMLResponse)
def incident_note(request: Request, session: SessionDep, actor: ConsoleActor, number: str,
                  form: FormDep) -> Response:
    note = str(form.get("note") or "")
    return _step(request, session, actor, number[:32], "note",
                 lambda: emergency.incident_note(session, actor, number[:32], note))


@router.post("/{number}/close", response_class=HTMLResponse)
def incident_close(request: Request, session: SessionDep, actor: ConsoleActor, number: str,
                   form: FormDep) -> Response:
    summary = str(form.get("summary") or "")
    return _step(request, session, actor, number[:32], "close",
                 lambda: emergency.incident_close(session, actor, number[:32], summary))


# -- early warnings (预警信息): who was told, who has signed ---------------------------------------

warnings_router = APIRouter(prefix="/ops/warnings", route_class=ConsoleRoute, include_in_schema=False)
WARNING_STATES = {"open": ("未解除", "Open"), "all": ("全部", "All")}


def _warnings(request: Request, session: Session, actor: Actor, state: str, mine: bool, *,
              errors: dict[int, str] | None = None, code: int = 200) -> HTMLResponse:
    from cityos.ops import warnings as warn
    from cityos.ops.models import LEVELS

    state = state if state in WARNING_STATES else "open"
    told = actor.department_code if mine else None
    rows = [warn.warning_public(w) for w in warn.warning_list(session, actor, state, told=told)]
    codes = {c for r in rows for c in r["notify"]}
    names = dict(session.execute(select(Department.code, Department.name).where(Department.code.in_(codes)))
                 .tuples().all())
    return _show(request, "ops/warnings.html", actor, status=code, rows=rows, state=state, mine=mine,
                 STATES_W=WARNING_STATES, LEVELS_W=LEVELS, names=names, errors=errors or {},
                 own=actor.department_code)


@warnings_router.get("", response_class=HTMLResponse)
def warnings_page(request: Request, session: SessionDep, actor: ConsoleActor, state: str = "open",
                  mine: str = "") -> Response:
    return _warnings(request, session, actor, state, bool(mine))


@warnings_router.post("/{warning_id}/acknowledge", response_class=HTMLResponse)
def warning_acknowledge(request: Request, session: SessionDep, actor: ConsoleActor, warning_id: int,
                        form: FormDep) -> Response:
    from cityos.ops import warnings as warn

    try:
        warn.warning_acknowledge(session, actor, warning_id, str(form.get("note") or ""))
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        reason = "; ".join(field_errors(exc, language(request)).values()) or exc.detail
        return _warnings(request, session, actor, "all", False, errors={warning_id: reason}, code=exc.status)
    session.commit()
    return redirect("/ops/warnings?mine=1")
