"""The plan's indicators and the programme office over HTTP (/api/ops/plan-indicators, /api/ops/projects)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from cityos.core.web import SessionDep, SignedInDep
from cityos.ops import plan, projects

router = APIRouter(prefix="/api/ops", tags=["ops"])


@router.get("/plan-indicators")
def plan_indicators(session: SessionDep, actor: SignedInDep) -> list[dict[str, Any]]:
    """Table 1 of the plan against its 2021 targets (规划主要指标进展)."""
    return plan.progress(session, actor)


@router.post("/plan-indicators/refresh")
def plan_refresh(session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    """Recompute the indicators CityOS computes (ops.write)."""
    plan.require_write(session, actor)
    n = plan.refresh(session)
    session.commit()
    return {"refreshed": n, "indicators": plan.progress(session, actor)}


@router.put("/plan-indicators/{code}")
def plan_enter(session: SessionDep, actor: SignedInDep, code: str,
               body: dict[str, Any] = Body(..., examples=[{"value": 87.5, "source": "市统计局 2021年统计公报",
                                                           "as_of": "2021-12-31"}])) -> dict[str, Any]:
    """Enter a manual indicator's value with its source and date (ops.write)."""
    row = plan.enter(session, actor, code, body.get("value"), body.get("source"), body.get("as_of"))
    session.commit()
    return plan.row_dict(row)


@router.get("/projects")
def project_list(session: SessionDep, actor: SignedInDep, category: str | None = None,
                 status: str | None = None) -> list[dict[str, Any]]:
    """The plan's 43 key projects (重点工程)."""
    return [projects.project_dict(p) for p in projects.project_list(session, actor, category=category,
                                                                   status=status)]


@router.get("/projects/gantt")
def project_gantt(session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    """Bars for the Gantt chart (甘特图)."""
    return projects.gantt(session, actor)


@router.get("/projects/graph")
def project_graph(session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    """The dependency graph (前向工程依赖) with its critical path."""
    return projects.dependency_graph(session, actor)


@router.get("/projects/{code}")
def project_get(session: SessionDep, actor: SignedInDep, code: str) -> dict[str, Any]:
    return projects.project_dict(projects.project_get(session, actor, code))


@router.patch("/projects/{code}")
def project_update(session: SessionDep, actor: SignedInDep, code: str,
                   body: dict[str, Any] = Body(..., examples=[{"status": "running", "progress": 40}])
                   ) -> dict[str, Any]:
    """Change a project's status, progress, dates or predecessors (ops.write)."""
    p = projects.project_update(session, actor, code, body)
    session.commit()
    return projects.project_dict(p)


@router.post("/projects/{code}/notes", status_code=201)
def project_note(session: SessionDep, actor: SignedInDep, code: str,
                 body: dict[str, Any] = Body(..., examples=[{"text": "完成招标 / tender done"}])
                 ) -> dict[str, Any]:
    p = projects.project_note(session, actor, code, body.get("text"))  # type: ignore[arg-type]
    session.commit()
    return projects.project_dict(p)

