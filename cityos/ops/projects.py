"""The programme office (项目管理办公室): the master plan's 43 key projects as data.

Projects come from `data/projects.toml` (annex 1 of the plan). The office tracks their status,
progress and dates, keeps notes, and draws them as a Gantt chart and a dependency graph; the
critical path is the chain of predecessors whose periods add up to the longest.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import access, audit
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.errors import FieldError, Invalid, NotFound
from cityos.core.models import Department
from cityos.core.workdays import CITY_TZ
from cityos.ops.models import PROJECT_STATUSES, Project
from cityos.ops.service import require_read, target

DATA = Path(__file__).parent / "data" / "projects.toml"
OPS_DEPARTMENT = "220200-yxzx"
ANNEX = "annex 1 / 附件一"
NOTE_MAX = 2000


def rows_of(path: Path | None = None) -> list[dict[str, Any]]:
    with open(path or DATA, "rb") as f:
        return tomllib.load(f)["project"]


def project_load(session: Session, path: Path | None = None) -> int:
    """Create the projects of the TOML not yet there (idempotent: tracked ones are left alone)."""
    have = set(session.scalars(select(Project.code)))
    depts = {d.code: d for d in session.scalars(select(Department))}
    n = 0
    for spec in rows_of(path):
        if spec["code"] in have:
            continue
        lead = depts.get(spec.get("lead") or "")
        text = (f"牵头单位 Lead: {spec.get('lead_name', '')}; "
                f"参与单位 Partners: {spec.get('partners_text', '')}; "
                f"建设周期 Period: {spec.get('period', '')}")
        if spec.get("inferred"):
            text += f"; 推定前向项目 Inferred predecessors (not in the annex): {', '.join(spec['inferred'])}"
        if spec.get("lead") and lead is None:
            text += f"; lead department {spec['lead']} not in this city"
        session.add(Project(
            code=spec["code"], name=spec["name"], name_en=spec.get("name_en"), category=spec.get("category"),
            lead_department_id=lead.id if lead else None, partners=list(spec.get("partners", [])),
            start=spec["start"], end=spec["end"], predecessors=list(spec.get("predecessors", [])),
            status="planned", progress=0, scope=spec.get("scope"),
            notes=[{"at": utcnow().isoformat(), "by": ANNEX, "text": text}]))
        n += 1
    session.flush()
    return n


def _ops_department(session: Session) -> Department | None:
    return session.scalar(select(Department).where(Department.code == OPS_DEPARTMENT))


def _require_write(session: Session, actor: Actor, code: str) -> None:
    access.require(actor, "ops.write", target("ops.project", _ops_department(session), code), session)


def can_write(session: Session, actor: Actor) -> bool:
    return access.decide(actor, "ops.write", target("ops.project", _ops_department(session)), session).allowed


def _all(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.code)))


def project_list(session: Session, actor: Actor, *, category: str | None = None,
                 status: str | None = None) -> list[Project]:
    require_read(session, actor)
    if status is not None and status not in PROJECT_STATUSES:
        raise Invalid("status", f"one of {', '.join(PROJECT_STATUSES)} / 状态无效")
    rows = _all(session)
    return [p for p in rows
            if (category is None or p.category == category) and (status is None or p.status == status)]


def _get(session: Session, code: str) -> Project:
    p = session.scalar(select(Project).where(Project.code == code))
    if p is None:
        raise NotFound("project", code)
    return p


def project_get(session: Session, actor: Actor, code: str) -> Project:
    require_read(session, actor)
    return _get(session, code)


def _date(value: Any, field: str, errors: list[FieldError]) -> dt.date | None:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except (TypeError, ValueError):
        errors.append(FieldError(field, "a date YYYY-MM-DD / 日期格式 YYYY-MM-DD"))
        return None


def _cycle(graph: dict[str, list[str]], start: str) -> list[str] | None:
    """A path from `start` back to itself through predecessors, if there is one."""
    stack: list[tuple[str, list[str]]] = [(p, [start, p]) for p in graph.get(start, [])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        if node == start:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack.extend((p, [*path, p]) for p in graph.get(node, []))
    return None


UPDATABLE = {"status", "progress", "start", "end", "predecessors"}


def project_update(session: Session, actor: Actor, code: str, spec: dict[str, Any]) -> Project:
    """Change status, progress (0–100), dates or predecessors; nothing changes on any error."""
    _require_write(session, actor, code)
    p = _get(session, code)
    errors: list[FieldError] = []
    unknown = set(spec) - UPDATABLE
    for k in sorted(unknown):
        errors.append(FieldError(k, f"not updatable; one of {', '.join(sorted(UPDATABLE))} / 不可修改"))
    changes: dict[str, Any] = {}
    if "status" in spec:
        if spec["status"] not in PROJECT_STATUSES:
            errors.append(FieldError("status", f"one of {', '.join(PROJECT_STATUSES)} / 状态无效"))
        else:
            changes["status"] = spec["status"]
    if "progress" in spec:
        v = spec["progress"]
        try:
            if isinstance(v, bool) or float(v) != int(float(v)):
                raise ValueError
            iv = int(float(v))
            if not 0 <= iv <= 100:
                raise ValueError
            changes["progress"] = iv
        except (TypeError, ValueError):
            errors.append(FieldError("progress", "a whole number 0–100 / 须为0到100的整数"))
    start = _date(spec["start"], "start", errors) if "start" in spec else p.start
    end = _date(spec["end"], "end", errors) if "end" in spec else p.end
    if start and end and end < start:
        errors.append(FieldError("end", "ends before it starts / 结束日期早于开始日期"))
    if "predecessors" in spec:
        preds = spec["predecessors"]
        if isinstance(preds, str):
            preds = [x.strip() for x in preds.replace("，", ",").split(",") if x.strip()]
        if not isinstance(preds, list) or not all(isinstance(x, str) for x in preds):
            errors.append(FieldError("predecessors", "a list of project codes / 须为项目编号列表"))
        else:
            preds = list(dict.fromkeys(x.strip().upper() for x in preds))
            codes = {c for c in session.scalars(select(Project.code))}
            bad = [x for x in preds if x not in codes]
            if bad:
                errors.append(FieldError("predecessors", f"unknown project {', '.join(bad)} / 项目不存在"))
            elif code in preds:
                errors.append(FieldError("predecessors", "a project cannot precede itself / 不能依赖自身"))
            else:
                graph = {c: list(ps) for c, ps in session.execute(select(Project.code, Project.predecessors))}
                graph[code] = preds
                loop = _cycle(graph, code)
                if loop:
                    errors.append(FieldError("predecessors",
                                             f"dependency cycle {' → '.join(loop)} / 依赖成环"))
                else:
                    changes["predecessors"] = preds
    if errors:
        raise Invalid.many(errors)
    if "start" in spec:
        changes["start"] = start
    if "end" in spec:
        changes["end"] = end
    before = {k: _plain(getattr(p, k)) for k in changes}
    for k, v in changes.items():
        setattr(p, k, v)
    p.updated_at = utcnow()
    audit.append(session, actor=actor.name, department=actor.department_code, action="ops.project.update",
                 object_type="ops.project", object_id=code,
                 detail={"before": before, "after": {k: _plain(v) for k, v in changes.items()}})
    session.flush()
    return p


def _plain(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.date) else v


def project_note(session: Session, actor: Actor, code: str, text: str) -> Project:
    """Add a note (进展说明) to a project."""
    _require_write(session, actor, code)
    p = _get(session, code)
    body = text.strip() if isinstance(text, str) else ""
    if not body:
        raise Invalid("text", "required / 必填")
    if len(body) > NOTE_MAX:
        raise Invalid("text", f"at most {NOTE_MAX} characters / 不超过{NOTE_MAX}字")
    p.notes = [*(p.notes or []), {"at": utcnow().isoformat(), "by": actor.name, "text": body}]
    p.updated_at = utcnow()
    audit.append(session, actor=actor.name, department=actor.department_code, action="ops.project.note",
                 object_type="ops.project", object_id=code, detail={"length": len(body)})
    session.flush()
    return p


def project_dict(p: Project) -> dict[str, Any]:
    status = PROJECT_STATUSES.get(p.status, (p.status, p.status))
    return {
        "code": p.code, "name": p.name, "name_en": p.name_en, "category": p.category,
        "lead": p.lead_department.code if p.lead_department else None,
        "lead_name": p.lead_department.name if p.lead_department else None,
        "partners": list(p.partners or []), "start": p.start.isoformat(), "end": p.end.isoformat(),
        "predecessors": list(p.predecessors or []), "status": p.status, "status_name": status[0],
        "status_name_en": status[1], "progress": p.progress, "scope": p.scope,
        "notes": list(p.notes or []), "updated_at": p.updated_at.isoformat() if p.updated_at else None,
    }


def _days(p: Project) -> int:
    return (p.end - p.start).days + 1


def critical_path(rows: list[Project]) -> list[str]:
    """The chain of predecessors with the longest total duration (days), first to last."""
    by = {p.code: p for p in rows}
    best: dict[str, tuple[int, str | None]] = {}

    def longest(code: str, trail: frozenset[str]) -> int:
        if code in best:
            return best[code][0]
        p = by[code]
        top, via = 0, None
        for pred in p.predecessors or []:
            if pred in by and pred not in trail:
                v = longest(pred, trail | {code})
                if v > top:
                    top, via = v, pred
        best[code] = (top + _days(p), via)
        return best[code][0]

    if not rows:
        return []
    end = max(by, key=lambda c: (longest(c, frozenset()), c))
    path = [end]
    while (via := best[path[-1]][1]) is not None:
        path.append(via)
    return path[::-1]


def gantt(session: Session, actor: Actor) -> dict[str, Any]:
    """Rows for a Gantt chart: one bar per project, grouped by the annex's groups."""
    require_read(session, actor)
    rows = _all(session)
    critical = set(critical_path(rows))
    bars = [{**{k: v for k, v in project_dict(p).items() if k != "notes"}, "critical": p.code in critical}
            for p in rows]
    starts = [p.start for p in rows] or [dt.date(2017, 1, 1)]
    ends = [p.end for p in rows] or [dt.date(2021, 12, 31)]
    categories = list(dict.fromkeys(p.category or "" for p in rows))
    return {"from": min(starts).isoformat(), "to": max(ends).isoformat(), "categories": categories,
            "today": utcnow().astimezone(CITY_TZ).date().isoformat(), "rows": bars}


def dependency_graph(session: Session, actor: Actor) -> dict[str, Any]:
    """Nodes (projects) and edges (predecessor → project), with the critical path."""
    require_read(session, actor)
    rows = _all(session)
    path = critical_path(rows)
    on_path = set(zip(path, path[1:], strict=False))
    nodes = [{"id": p.code, "name": p.name, "name_en": p.name_en, "category": p.category, "status": p.status,
              "progress": p.progress, "critical": p.code in path} for p in rows]
    codes = {p.code for p in rows}
    edges = [{"source": pred, "target": p.code, "critical": (pred, p.code) in on_path}
             for p in rows for pred in (p.predecessors or []) if pred in codes]
    return {"nodes": nodes, "edges": edges, "critical_path": path}
