"""The plan's progress page (/ops/plan) and the programme office (/ops/projects): table 1 of the
master plan against its 2021 targets, and the 43 key projects as a Gantt chart, a dependency
graph and a table, each with its detail page."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from cityos.core import access
from cityos.core.access import Actor
from cityos.core.errors import Conflict, Forbidden, Invalid, NotFound
from cityos.core.pages_base import ConsoleActor, ConsoleRoute, field_errors, redirect, render
from cityos.core.web import SessionDep, language
from cityos.ops import plan, projects
from cityos.ops.models import PROJECT_STATUSES

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
FORM_ERRORS = (Invalid, Conflict, Forbidden, NotFound)
STATUS = {"met": ("已达标", "Met"), "gap": ("未达标", "Gap"), "unknown": ("暂无数据", "No data")}
TEXT = {"critical": ("关键路径", "Critical path"), "today": ("今天", "Today"),
        "failed": ("图表加载失败", "The chart could not load")}


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: str(v) for k, v in form.items() if k != "csrf_token"}


def _plan_page(request: Request, session: Session, actor: Actor, *, status: int = 200,
               errors: dict[str, dict[str, str]] | None = None, form: dict[str, dict[str, str]] | None = None,
               done: str = "") -> Response:
    rows = plan.progress(session, actor)
    computed = [r for r in rows if r["computed"]]
    return render(request, "ops/plan.html", actor=actor, status=status, current="ops", rows=rows,
                  STATUS=STATUS, can_write=plan.can_write(session, actor), errors=errors or {},
                  form=form or {}, done=done, today=plan.city_today().isoformat(),
                  counts={"total": len(rows), "met": sum(r["status"] == "met" for r in rows),
                          "computed": len(computed), "unknown": sum(r["status"] == "unknown" for r in rows)})


@router.get("/ops/plan", response_class=HTMLResponse)
def plan_page(request: Request, session: SessionDep, actor: ConsoleActor, done: str = "") -> Response:
    """Table 1 of the plan (规划主要指标进展): value, target, progress, how it is known."""
    return _plan_page(request, session, actor, done=done[:64])


@router.post("/ops/plan/refresh", response_class=HTMLResponse)
async def plan_refresh(request: Request, session: SessionDep, actor: ConsoleActor) -> Response:
    plan.require_write(session, actor)
    plan.refresh(session)
    session.commit()
    return redirect("/ops/plan?done=refresh")


@router.post("/ops/plan/{code}", response_class=HTMLResponse)
async def plan_enter(request: Request, session: SessionDep, actor: ConsoleActor, code: str) -> Response:
    """Enter a manual value (手工填报) with its source and date."""
    raw = await _form(request)
    try:
        plan.enter(session, actor, code, raw.get("value", ""), raw.get("source", ""), raw.get("as_of", ""))
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        return _plan_page(request, session, actor, status=exc.status,
                          errors={code: field_errors(exc, language(request))}, form={code: raw})
    session.commit()
    return redirect(f"/ops/plan?{urlencode({'done': code})}#row-{quote(code)}")


@router.get("/ops/projects", response_class=HTMLResponse)
def projects_page(request: Request, session: SessionDep, actor: ConsoleActor) -> Response:
    """The programme office (项目管理办公室): Gantt chart, dependency graph, the table."""
    rows = [projects.project_dict(p) for p in projects.project_list(session, actor)]
    config: dict[str, Any] = {"gantt": projects.gantt(session, actor),
                              "graph": projects.dependency_graph(session, actor),
                              "lang": language(request), "statuses": PROJECT_STATUSES, "text": TEXT}
    return render(request, "ops/projects.html", actor=actor, current="ops", rows=rows, config=config,
                  STATUSES=PROJECT_STATUSES, critical=config["graph"]["critical_path"])


def _project_page(request: Request, session: Session, actor: Actor, code: str, *, status: int = 200,
                  errors: dict[str, str] | None = None, form: dict[str, str] | None = None,
                  done: str = "") -> Response:
    p = projects.project_get(session, actor, code)
    return render(request, "ops/projects_detail.html", actor=actor, status=status, current="ops",
                  p=projects.project_dict(p), STATUSES=PROJECT_STATUSES,
                  can_write=projects.can_write(session, actor), errors=errors or {}, form=form or {},
                  done=done)


@router.get("/ops/projects/{code}", response_class=HTMLResponse)
def project_page(request: Request, session: SessionDep, actor: ConsoleActor, code: str,
                 done: str = "") -> Response:
    return _project_page(request, session, actor, code, done=done[:16])


@router.post("/ops/projects/{code}", response_class=HTMLResponse)
async def project_update(request: Request, session: SessionDep, actor: ConsoleActor, code: str) -> Response:
    """Update status, progress, dates, predecessors from the form."""
    raw = await _form(request)
    spec: dict[str, Any] = {k: raw[k] for k in ("status", "progress", "start", "end") if raw.get(k, "") != ""}
    if "predecessors" in raw:
        spec["predecessors"] = raw["predecessors"]
    try:
        projects.project_update(session, actor, code, spec)
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        return _project_page(request, session, actor, code, status=exc.status,
                             errors=field_errors(exc, language(request)), form=raw)
    session.commit()
    return redirect(f"/ops/projects/{quote(code)}?done=update")


@router.post("/ops/projects/{code}/notes", response_class=HTMLResponse)
async def project_note(request: Request, session: SessionDep, actor: ConsoleActor, code: str) -> Response:
    raw = await _form(request)
    try:
        projects.project_note(session, actor, code, raw.get("text", ""))
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        return _project_page(request, session, actor, code, status=exc.status,
                             errors=field_errors(exc, language(request)), form=raw)
    session.commit()
    return redirect(f"/ops/projects/{quote(code)}?done=note")
