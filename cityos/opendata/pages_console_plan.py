"""Open-data console, the rest: the opening plan (开放计划), applications for conditional data
(有条件开放申请; an approval shows its key once), and the figures (开放数据统计) with ECharts
when it is installed, tables always. Thin like `opendata.pages_console`."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

import cityos.hub.service as hub
from cityos.core import access
from cityos.core.access import Actor
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.pages_base import (
    PAGE_SIZE,
    ConsoleActor,
    ConsoleRoute,
    field_errors,
    page_number,
    pager,
    parse_form,
    redirect,
    render,
)
from cityos.core.service import MAX_PAGE, Paged
from cityos.core.web import HERE, SessionDep, language
from cityos.opendata import applications, service, stats
from cityos.opendata.models import AccessKey
from cityos.opendata.schemas import ApplicationDecisionIn, PlanIn

router = APIRouter(prefix="/console/opendata", route_class=ConsoleRoute, include_in_schema=False)
FormStr = Annotated[str, Form()]
FORM_ERRORS = (ValidationError, Invalid, Conflict, NotFound)
ECHARTS = HERE / "static" / "vendor" / "echarts" / "echarts.min.js"
APP_STATES = ("pending", "approved", "refused")


def _status(exc: Exception) -> int:
    return 422 if isinstance(exc, ValidationError) else int(getattr(exc, "status", 422))


# -- the opening plan -----------------------------------------------------------------------------


def _plan(request: Request, session: Session, actor: Actor, *, department: str, page: int,
          status: int = 200, **context: Any) -> Response:
    paged = service.plan_list(session, actor, department=department or None, limit=PAGE_SIZE,
                              offset=(page - 1) * PAGE_SIZE)
    rows = [{"e": e, "status": service.plan_status(session, e)} for e in paged.items]
    planner = access.reach_of(actor, "opendata.plan.write") is not None
    resources = []
    if planner:  # the resources one may plan: openable ones of one's department (all: the office)
        everywhere = access.reach_of(actor, "opendata.plan.write") == access.ALL
        listed = hub.resource_list(session, actor, limit=MAX_PAGE,
                                   department=None if everywhere else actor.department_code).items
        resources = [r for r in listed if not r.secret and r.open_type != "closed"]
    ctx: dict[str, Any] = dict(form={}, errors={}, saved="")
    ctx.update(context)
    return render(request, "console/opendata/plan.html", actor=actor, status=status, rows=rows,
                  filters={"department": department}, pager=pager(request, paged.total, page),
                  planner=planner, resources=resources, levels=service.OPEN_LEVELS, tab="plan",
                  current="opendata", **ctx)


@router.get("/plan", response_class=HTMLResponse)
def plan(request: Request, session: SessionDep, actor: ConsoleActor, department: str = "",
         page: str = "1", saved: str = "") -> Response:
    """The opening plan: which resources open when, at which level, and whether they did."""
    return _plan(request, session, actor, department=department[:32], page=page_number(page),
                 saved=saved[:64])


@router.post("/plan", response_class=HTMLResponse)
def plan_set(request: Request, session: SessionDep, actor: ConsoleActor, resource: FormStr = "",
             open_level: FormStr = "", planned_on: FormStr = "", note: FormStr = "") -> Response:
    """Put a resource on the plan, or move its date or level (department admins)."""
    form = {"resource": resource, "open_level": open_level, "planned_on": planned_on, "note": note}
    try:
        body = parse_form(PlanIn, {k: v for k, v in form.items() if k != "resource"})
        service.plan_add(session, actor, resource=resource[:64], **body.model_dump())
    except FORM_ERRORS as exc:
        session.rollback()
        return _plan(request, session, actor, department="", page=1, status=_status(exc), form=form,
                     errors=field_errors(exc, language(request)))
    session.commit()
    return redirect("/console/opendata/plan?" + urlencode({"saved": resource}))


# -- applications ---------------------------------------------------------------------------------


def _applications(request: Request, session: Session, actor: Actor, *, state: str, page: int,
                  status: int = 200, **context: Any) -> Response:
    decider = access.reach_of(actor, "opendata.application.decide") is not None
    if decider or access.reach_of(actor, "opendata.dataset.prepare") is None:
        # Those who neither decide nor prepare data are refused (and audited) by the service.
        paged = applications.application_list(session, actor, state=state or None, limit=PAGE_SIZE,
                                              offset=(page - 1) * PAGE_SIZE)
    else:  # the provider's staff: applications are their admins' to decide
        paged = Paged([], 0, PAGE_SIZE, 0)
    ids = [a.id for a in paged.items]
    live = set(session.scalars(select(AccessKey.application_id).where(
        AccessKey.application_id.in_(ids), AccessKey.revoked_at.is_(None)))) if ids else set()
    ctx: dict[str, Any] = dict(issued=None, decide_errors={}, decide_form={}, decided="", revoked="")
    ctx.update(context)
    return render(request, "console/opendata/applications.html", actor=actor, status=status,
                  paged=paged, live=live, decider=decider, filters={"state": state}, states=APP_STATES,
                  pager=pager(request, paged.total, page), tab="applications", current="opendata", **ctx)


@router.get("/applications", response_class=HTMLResponse)
def applications_page(request: Request, session: SessionDep, actor: ConsoleActor, state: str = "",
                      page: str = "1", decided: str = "", revoked: str = "") -> Response:
    """Applications for the department's conditional datasets, to approve or refuse."""
    return _applications(request, session, actor, state=state if state in APP_STATES else "",
                         page=page_number(page), decided=decided[:12], revoked=revoked[:12])


@router.post("/applications/{app_id}/decision", response_class=HTMLResponse)
def applications_decide(request: Request, session: SessionDep, actor: ConsoleActor, app_id: int,
                        approve: FormStr = "", reason: FormStr = "", valid_days: FormStr = "") -> Response:
    """Approve — the key is shown on this answer only — or refuse with a reason."""
    form = {"approve": approve == "1", "reason": reason, "valid_days": valid_days}
    try:
        body = parse_form(ApplicationDecisionIn, form)
        app, key = applications.application_decide(session, actor, app_id, approve=body.approve,
                                                   reason=body.reason, valid_days=body.valid_days)
    except FORM_ERRORS as exc:
        session.rollback()
        return _applications(request, session, actor, state="", page=1, status=_status(exc),
                             decide_form={app_id: form},
                             decide_errors={app_id: field_errors(exc, language(request))})
    session.commit()
    if key is None:
        return redirect("/console/opendata/applications?" + urlencode({"decided": app_id}))
    # Not a redirect: the key must not travel in a URL, and it is never shown again.
    return _applications(request, session, actor, state="", page=1,
                         issued={"key": key, "app": app}, decided=str(app_id))


@router.post("/applications/{app_id}/revoke")
def applications_revoke(session: SessionDep, actor: ConsoleActor, app_id: int) -> Response:
    """Revoke the keys of an application (吊销密钥) at once."""
    applications.key_revoke(session, actor, app_id)
    session.commit()
    return redirect("/console/opendata/applications?" + urlencode({"revoked": app_id}))


# -- figures --------------------------------------------------------------------------------------


@router.get("/stats", response_class=HTMLResponse)
def stats_page(request: Request, session: SessionDep, actor: ConsoleActor) -> Response:
    """Open rate against the plan per department, freshness, and usage (开放数据统计)."""
    figures = stats.figures(session, actor)
    chart = {"days": [d["day"][5:] for d in figures["series"]],
             "views": [d["views"] for d in figures["series"]],
             "downloads": [d["downloads"] for d in figures["series"]],
             "api_calls": [d["api_calls"] for d in figures["series"]],
             "departments": [d["department_name"] for d in figures["departments"]],
             "open_rate": [round((d["open_rate"] or 0) * 100, 1) for d in figures["departments"]]}
    return render(request, "console/opendata/stats.html", actor=actor, f=figures, chart=chart,
                  echarts=ECHARTS.is_file(), cycles=hub.UPDATE_CYCLES, tab="stats", current="opendata")
