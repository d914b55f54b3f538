"""Emergency command (应急指挥): incident types, response plans as data, incidents from report to
close-out, and the tasks a plan gives departments.

A plan's tasks run THROUGH THE CASE ENGINE: activating a plan issues one case per task on the
"emergency" workflow (`cases.service.task_issue`), held by the incident's commanding department
and dispatched at once to the task's department, due `hours` clock hours later. The department
accepts and replies in its own queue (/console/cases) like any case; the command reads the
cases back (`incident_tasks`). Resources near an incident come from the one map
(`maps.service.features_near`) over the incident type's resource layers.

Plain functions `(session, actor, ...)`: reading is `ops.read` (all staff); opening,
commanding and closing is `ops.command` on the commanding department; types and plans are
`ops.write` (types have no owner, so only platform administrators change them).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, object_session

import cityos.cases.service as cases
import cityos.maps.service as maps
from cityos.core import access, audit
from cityos.core.access import SYSTEM, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, FieldError, Invalid, NotFound
from cityos.core.models import Department
from cityos.ops.models import (
    INCIDENT_LEVELS,
    INCIDENT_STATUSES,
    Incident,
    IncidentEvent,
    IncidentType,
    PlanActivation,
    ResponsePlan,
)
from cityos.ops.service import department_of, require_read, target

CITY_TZ = dt.timezone(dt.timedelta(hours=8))  # Asia/Shanghai has no daylight saving
CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LEVEL_RANK = {"I": 1, "II": 2, "III": 3, "IV": 4}  # I is the gravest
MAX_TITLE, MAX_TEXT = 300, 5000
MAX_HOURS = 720
MAX_RADIUS_M, MAX_RESOURCES = 50_000, 500
LON_RANGE, LAT_RANGE = (73.0, 136.0), (3.0, 54.0)
EVENTS = {  # the timeline's actions (处置时间线)
    "open": ("接报立案", "Opened"), "level": ("调整响应级别", "Level changed"),
    "activate": ("启动预案", "Plan activated"), "note": ("处置记录", "Note"),
    "task": ("任务反馈", "Task update"), "close": ("响应结束", "Closed"),
}


# -- small helpers ----------------------------------------------------------------------------


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


def _text(value: Any, field: str, limit: int, *, required: bool = True) -> str:
    text = str(value or "").strip()
    if required and not text:
        raise Invalid(field, "required / 必填")
    if len(text) > limit:
        raise Invalid(field, f"at most {limit} characters / 内容过长")
    return text


def _level(value: Any, field: str = "level") -> str:
    level = str(value or "").strip().upper()
    if level not in INCIDENT_LEVELS:
        raise Invalid(field, f"one of {', '.join(INCIDENT_LEVELS)} / 响应级别须为 I、II、III 或 IV 级")
    return level


def _event(session: Session, inc: Incident, actor: Actor, action: str, note: str | None = None,
           detail: dict[str, Any] | None = None) -> IncidentEvent:
    ev = IncidentEvent(incident_id=inc.id, at=utcnow(), actor=actor.name[:64], action=action,
                       note=note, detail=detail or {})
    session.add(ev)
    session.flush()
    return ev


def _department(session: Session, inc: Incident) -> Department:
    dept = session.get(Department, inc.department_id)
    assert dept is not None
    return dept


def _command(session: Session, actor: Actor, inc: Incident) -> Department:
    dept = _department(session, inc)
    access.require(actor, "ops.command", target("ops_incident", dept, inc.number), session)
    return dept


def _active(inc: Incident) -> None:
    if inc.status != "active":
        raise Conflict(f"incident {inc.number} is closed / 该事件已结束处置", "status")


def _audit(session: Session, actor: Actor, action: str, object_type: str, object_id: str,
           detail: dict[str, Any] | None = None) -> None:
    audit.append(session, actor=actor.name, department=actor.department_code, action=action,
                 object_type=object_type, object_id=object_id, detail=detail or {})


# -- incident types and response plans (事件类型与应急预案) ---------------------------------------


def incident_type_upsert(session: Session, actor: Actor, spec: Mapping[str, Any]) -> IncidentType:
    """Create or change a kind of emergency: code, name, name_en, resource_layers (map layer codes)."""
    code = str(spec.get("code") or "")
    access.require(actor, "ops.write", Target("ops_incident_type", code or None), session)
    errors: list[FieldError] = []
    if not CODE_RE.match(code):
        errors.append(FieldError("code", "1-64 lowercase letters, digits, - or _ / 类型代码无效"))
    name = str(spec.get("name") or "").strip()
    if not name or len(name) > 200:
        errors.append(FieldError("name", "1-200 characters / 名称须为 1-200 个字符"))
    layers = spec.get("resource_layers", [])
    if not isinstance(layers, list) or not all(isinstance(x, str) and 0 < len(x) <= 64 for x in layers):
        errors.append(FieldError("resource_layers", "a list of map layer codes / 须为图层代码列表"))
    if errors:
        raise Invalid.many(errors)
    row = session.scalar(select(IncidentType).where(IncidentType.code == code)) or IncidentType(code=code)
    row.name, row.name_en = name, (str(spec.get("name_en") or "").strip()[:200] or None)
    row.resource_layers = list(dict.fromkeys(layers))
    session.add(row)
    session.flush()
    _audit(session, actor, "ops.incident_type.upsert", "ops_incident_type", code,
           {"resource_layers": row.resource_layers})
    return row


def incident_types(session: Session, actor: Actor) -> list[IncidentType]:
    require_read(session, actor)
    return list(session.scalars(select(IncidentType).order_by(IncidentType.code)))


def _type_by_code(session: Session, code: Any, field: str) -> IncidentType:
    row = session.scalar(select(IncidentType).where(IncidentType.code == str(code or "")))
    if row is None:
        raise Invalid(field, f"unknown incident type {code!r} / 未知的事件类型")
    return row


def plan_upsert(session: Session, actor: Actor, spec: Mapping[str, Any]) -> ResponsePlan:
    """Create or change a response plan (应急预案): code, name, name_en, incident_type, min_level,
    department (who owns it), tasks [{department, title, title_en, hours}], active."""
    code = str(spec.get("code") or "")
    existing = session.scalar(select(ResponsePlan).where(ResponsePlan.code == code)) if code else None
    errors: list[FieldError] = []
    owner: Department | None = None
    prev = session.get(Department, existing.department_id) if existing is not None else None
    dept_code = spec.get("department") or (prev.code if prev is not None else None)
    dept_code = dept_code or actor.department_code
    try:
        owner = department_of(session, dept_code, "department")
    except Invalid as exc:
        errors.extend(exc.errors)
    if owner is not None:
        access.require(actor, "ops.write", target("ops_plan", owner, code), session)
    if existing is not None:
        before = session.get(Department, existing.department_id)
        access.require(actor, "ops.write", target("ops_plan", before, code), session)
    if not CODE_RE.match(code):
        errors.append(FieldError("code", "1-64 lowercase letters, digits, - or _ / 预案代码无效"))
    name = str(spec.get("name") or "").strip()
    if not name or len(name) > 200:
        errors.append(FieldError("name", "1-200 characters / 名称须为 1-200 个字符"))
    kind = None
    try:
        kind = _type_by_code(session, spec.get("incident_type"), "incident_type")
    except Invalid as exc:
        errors.extend(exc.errors)
    min_level = str(spec.get("min_level") or "IV").upper()
    if min_level not in INCIDENT_LEVELS:
        errors.append(FieldError("min_level", "one of I, II, III, IV / 起始级别须为 I-IV 级"))
    tasks = spec.get("tasks")
    clean: list[dict[str, Any]] = []
    if not isinstance(tasks, list) or not tasks:
        errors.append(FieldError("tasks", "at least one task / 预案至少须有一项任务"))
    else:
        known = {d for d in session.scalars(select(Department.code).where(
            Department.code.in_([str(t.get("department")) for t in tasks if isinstance(t, dict)])))}
        for i, t in enumerate(tasks):
            where = f"tasks[{i}]"
            if not isinstance(t, dict):
                errors.append(FieldError(where, "an object {department, title, hours} / 须为任务对象"))
                continue
            dept = str(t.get("department") or "")
            if dept not in known:
                errors.append(FieldError(f"{where}.department", f"unknown department {dept!r} / 部门不存在"))
            title = str(t.get("title") or "").strip()
            if not title or len(title) > 200:
                errors.append(FieldError(f"{where}.title", "1-200 characters / 任务名称须为 1-200 个字符"))
            hours = t.get("hours")
            if isinstance(hours, str) and hours.strip().isdecimal() and len(hours) <= 18:
                hours = int(hours)
            if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= MAX_HOURS:
                errors.append(FieldError(f"{where}.hours",
                                         f"whole hours 1-{MAX_HOURS} / 时限须为 1-{MAX_HOURS} 小时"))
            clean.append({"department": dept, "title": title,
                          "title_en": str(t.get("title_en") or "").strip()[:200] or None, "hours": hours})
    if errors:
        raise Invalid.many(errors)
    assert owner is not None and kind is not None
    plan = existing or ResponsePlan(code=code)
    plan.name, plan.name_en = name, (str(spec.get("name_en") or "").strip()[:200] or None)
    plan.incident_type_id, plan.min_level, plan.tasks = kind.id, min_level, clean
    plan.department_id = owner.id
    plan.active = bool(spec.get("active", True if existing is None else existing.active))
    session.add(plan)
    session.flush()
    _audit(session, actor, "ops.plan.upsert", "ops_plan", code,
           {"incident_type": kind.code, "min_level": min_level, "tasks": len(clean)})
    return plan


def plan_list(session: Session, actor: Actor, incident_type: str | None = None) -> list[ResponsePlan]:
    require_read(session, actor)
    stmt = select(ResponsePlan).order_by(ResponsePlan.code)
    if incident_type:
        stmt = stmt.where(ResponsePlan.incident_type_id == _type_by_code(session, incident_type,
                                                                           "incident_type").id)
    return list(session.scalars(stmt))


def plan_public(session: Session, plan: ResponsePlan) -> dict[str, Any]:
    kind = session.get(IncidentType, plan.incident_type_id)
    dept = session.get(Department, plan.department_id)
    names = {d.code: d.name for d in session.scalars(select(Department).where(
        Department.code.in_([t["department"] for t in plan.tasks])))}
    return {"code": plan.code, "name": plan.name, "name_en": plan.name_en,
            "incident_type": kind.code if kind else None, "min_level": plan.min_level,
            "department": dept.code if dept else None, "department_name": dept.name if dept else None,
            "active": plan.active,
            "tasks": [{**t, "department_name": names.get(t["department"])} for t in plan.tasks]}


def plans_for(session: Session, incident: Incident) -> list[ResponsePlan]:
    """The active plans that fit an incident: its type, and its level at least the plan's."""
    rank = LEVEL_RANK[incident.level]
    rows = session.scalars(select(ResponsePlan).where(ResponsePlan.incident_type_id == incident.type_id,
                                                      ResponsePlan.active).order_by(ResponsePlan.code))
    return [p for p in rows if rank <= LEVEL_RANK.get(p.min_level, 4)]


# -- incidents (突发事件) --------------------------------------------------------------------------


def _point(lon: Any, lat: Any) -> tuple[float, float] | None:
    if lon is None and lat is None:
        return None
    errors: list[FieldError] = []
    out: list[float] = []
    for name, value, (lo, hi) in (("lon", lon, LON_RANGE), ("lat", lat, LAT_RANGE)):
        try:
            v = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit JSON integer
            errors.append(FieldError(name, "a number is required / 须为数字"))
            continue
        if not math.isfinite(v) or not lo <= v <= hi:
            errors.append(FieldError(name, f"{v} is not within {lo}..{hi} / 坐标超出范围"))
        out.append(v)
    if errors:
        raise Invalid.many(errors)
    return out[0], out[1]


def district_known(session: Session, code: str) -> bool:
    """A district (区县) the city has: a department of kind district, by code or division code."""
    found = session.scalar(select(Department.id).where(
        Department.kind == "district", or_(Department.admin_code == code, Department.code == code)))
    return found is not None


def _locate(session: Session, lon: float, lat: float) -> str | None:
    try:
        found = maps.locate(session, SYSTEM, lon, lat)
    except (NotFound, Invalid):
        return None
    value = found.get("district")
    return str(value) if value is not None else None


def _number(session: Session, now: dt.datetime) -> str:
    prefix = f"YJ{now.astimezone(CITY_TZ):%Y%m%d}"
    last = session.scalar(select(func.max(Incident.number)).where(Incident.number.like(f"{prefix}%")))
    seq = int(last[len(prefix):]) + 1 if last and last[len(prefix):].isdigit() else 1
    return f"{prefix}{seq:04d}"


def incident_open(session: Session, actor: Actor, *, type_code: str, level: str, title: str,
                  description: str | None = None, lon: float | None = None, lat: float | None = None,
                  district: str | None = None, department: str | None = None,
                  warning_id: int | None = None) -> Incident:
    """Open an incident (接报立案) commanded by `department` (default: the actor's)."""
    errors: list[FieldError] = []
    dept: Department | None = None
    try:
        dept = department_of(session, department or actor.department_code, "department")
    except Invalid as exc:
        errors.extend(exc.errors)
    if dept is not None:
        access.require(actor, "ops.command", target("ops_incident", dept), session)
    kind = point = None
    try:
        kind = _type_by_code(session, type_code, "type")
    except Invalid as exc:
        errors.extend(exc.errors)
    for check in ((lambda: _level(level)), (lambda: _text(title, "title", MAX_TITLE)),
                  (lambda: _text(description, "description", MAX_TEXT, required=False))):
        try:
            check()
        except Invalid as exc:
            errors.extend(exc.errors)
    try:
        point = _point(lon, lat)
    except Invalid as exc:
        errors.extend(exc.errors)
    district = (str(district).strip() or None) if district is not None else None
    if district is not None and not district_known(session, district):
        errors.append(FieldError("district", f"unknown district {district!r} / 区县不存在"))
    if errors:
        raise Invalid.many(errors)
    assert dept is not None and kind is not None
    if district is None and point is not None:
        district = _locate(session, *point)
    now = utcnow()
    inc = Incident(number=_number(session, now), type_id=kind.id, level=_level(level),
                   title=_text(title, "title", MAX_TITLE),
                   description=_text(description, "description", MAX_TEXT, required=False) or None,
                   status="active", lon=point[0] if point else None, lat=point[1] if point else None,
                   district_code=district, department_id=dept.id, warning_id=warning_id,
                   opened_by=actor.name[:64], opened_at=now)
    session.add(inc)
    session.flush()
    _event(session, inc, actor, "open", inc.title, {"type": kind.code, "level": inc.level,
                                                    "warning_id": warning_id, "district": district})
    _audit(session, actor, "ops.incident.open", "ops_incident", inc.number,
           {"type": kind.code, "level": inc.level, "department": dept.code})
    return inc


def incident_get(session: Session, actor: Actor, number: str) -> Incident:
    require_read(session, actor)
    inc = session.scalar(select(Incident).where(Incident.number == number))
    if inc is None:
        raise NotFound("incident", number)
    return inc


def incident_list(session: Session, actor: Actor, status: str | None = None, *,
                  limit: int = 200) -> list[Incident]:
    """Incidents, newest first; `status` active or closed."""
    require_read(session, actor)
    stmt = select(Incident).order_by(Incident.opened_at.desc(), Incident.id.desc()).limit(limit)
    if status:
        if status not in INCIDENT_STATUSES:
            raise Invalid("status", "active or closed / 状态须为 active 或 closed")
        stmt = stmt.where(Incident.status == status)
    return list(session.scalars(stmt))


def incident_public(inc: Incident) -> dict[str, Any]:
    """An incident as the API and the big screen show it."""
    session = object_session(inc)
    dept = session.get(Department, inc.department_id) if session is not None else None
    return {
        "number": inc.number, "type": inc.type.code, "type_name": inc.type.name,
        "type_name_en": inc.type.name_en, "level": inc.level, "level_name": INCIDENT_LEVELS[inc.level][0],
        "level_name_en": INCIDENT_LEVELS[inc.level][1], "title": inc.title, "description": inc.description,
        "status": inc.status, "status_name": INCIDENT_STATUSES[inc.status][0],
        "status_name_en": INCIDENT_STATUSES[inc.status][1], "lon": inc.lon, "lat": inc.lat,
        "district": inc.district_code, "department": dept.code if dept else None,
        "department_name": dept.name if dept else None, "warning_id": inc.warning_id,
        "opened_by": inc.opened_by, "opened_at": _iso(inc.opened_at), "closed_at": _iso(inc.closed_at),
        "report": inc.report,
    }


def event_public(ev: IncidentEvent) -> dict[str, Any]:
    names = EVENTS.get(ev.action, (ev.action, ev.action))
    return {"at": _iso(ev.at), "actor": ev.actor, "action": ev.action, "action_name": names[0],
            "action_name_en": names[1], "note": ev.note, "detail": ev.detail}


def incident_level(session: Session, actor: Actor, number: str, level: str,
                   note: str | None = None) -> Incident:
    """Raise or lower the response level (调整响应级别)."""
    inc = incident_get(session, actor, number)
    _command(session, actor, inc)
    _active(inc)
    new = _level(level)
    text = _text(note, "note", 2000, required=False)
    old, inc.level = inc.level, new
    _event(session, inc, actor, "level", text or None, {"from": old, "to": new})
    _audit(session, actor, "ops.incident.level", "ops_incident", inc.number, {"from": old, "to": new})
    return inc


def incident_note(session: Session, actor: Actor, number: str, note: str) -> IncidentEvent:
    """Add a line to the timeline (处置记录)."""
    inc = incident_get(session, actor, number)
    _command(session, actor, inc)
    _active(inc)
    ev = _event(session, inc, actor, "note", _text(note, "note", 2000))
    _audit(session, actor, "ops.incident.note", "ops_incident", inc.number)
    return ev


def incident_timeline(session: Session, actor: Actor, number: str) -> list[IncidentEvent]:
    inc = incident_get(session, actor, number)
    return _timeline(session, inc)


def _timeline(session: Session, inc: Incident) -> list[IncidentEvent]:
    return list(session.scalars(select(IncidentEvent).where(IncidentEvent.incident_id == inc.id)
                                .order_by(IncidentEvent.at, IncidentEvent.id)))


# -- plans in action (预案启动) ---------------------------------------------------------------------


def activations(session: Session, inc: Incident) -> list[PlanActivation]:
    return list(session.scalars(select(PlanActivation).where(PlanActivation.incident_id == inc.id)
                                .order_by(PlanActivation.activated_at, PlanActivation.id)))


def plan_activate(session: Session, actor: Actor, number: str, plan_code: str) -> PlanActivation:
    """Activate a response plan (启动预案): one case per task, in each department's queue. All or
    nothing: every task is checked before any case is issued; the caller commits or rolls back."""
    inc = incident_get(session, actor, number)
    dept = _command(session, actor, inc)
    _active(inc)
    plan = session.scalar(select(ResponsePlan).where(ResponsePlan.code == str(plan_code or "")))
    if plan is None or not plan.active:
        raise Invalid("plan", f"no active plan {plan_code!r} / 预案不存在或已停用")
    if plan.id not in {p.id for p in plans_for(session, inc)}:
        raise Invalid("plan", f"plan {plan.code} is for another incident type or a graver level "
                              f"(from level {plan.min_level}) / 预案与事件类型或响应级别不符")
    if session.scalar(select(PlanActivation.id).where(PlanActivation.incident_id == inc.id,
                                                      PlanActivation.plan_id == plan.id)) is not None:
        raise Conflict(f"plan {plan.code} already activated for {inc.number} / 预案已启动", "plan")
    # A plan sends tasks to other departments in its owner's name: only those who may command for
    # the owner (the operations center, platform admins) may start it, whoever commands the incident.
    owner = session.get(Department, plan.department_id)
    access.require(actor, "ops.command", target("ops_plan", owner, plan.code), session)
    known = set(session.scalars(select(Department.code).where(
        Department.code.in_([t["department"] for t in plan.tasks]))))
    missing = [FieldError(f"plan.tasks[{i}].department",
                          f"unknown department {t['department']!r} / 部门不存在")
               for i, t in enumerate(plan.tasks) if t["department"] not in known]
    if missing:
        raise Invalid.many(missing)
    if not plan.tasks:
        raise Invalid("plan", "the plan has no tasks / 预案没有任务")
    numbers: list[str] = []
    for t in plan.tasks:
        description = (f"{inc.title}\n{inc.description or ''}\n"
                       f"预案 / plan: {plan.name} ({plan.code}) · 事件 / incident: {inc.number} "
                       f"{INCIDENT_LEVELS[inc.level][0]}（{inc.level}级）").strip()
        case = cases.task_issue(session, actor, centre=dept.code, department=t["department"],
                                title=f"{t['title']}（{inc.number}）", description=description,
                                due_hours=float(t["hours"]), reference=inc.number, lon=inc.lon, lat=inc.lat,
                                district=inc.district_code)
        numbers.append(str(case.number))
    act = PlanActivation(incident_id=inc.id, plan_id=plan.id, activated_by=actor.name[:64],
                         activated_at=utcnow(), case_numbers=numbers)
    session.add(act)
    session.flush()
    _event(session, inc, actor, "activate", plan.name, {"plan": plan.code, "cases": numbers})
    _audit(session, actor, "ops.plan.activate", "ops_incident", inc.number,
           {"plan": plan.code, "cases": numbers})
    return act


def incident_tasks(session: Session, actor: Actor, number: str) -> list[dict[str, Any]]:
    """The departments' tasks of every activated plan, read back from the case engine."""
    inc = incident_get(session, actor, number)
    return _tasks(session, inc)


def _tasks(session: Session, inc: Incident, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    plans = {p.id: p for p in session.scalars(select(ResponsePlan))}
    for act in activations(session, inc):
        plan = plans.get(act.plan_id)
        for row in cases.tasks_by_numbers(session, list(act.case_numbers), now):
            done_at = row["replied_at"] or row["closed_at"]
            due = row["due_at"]
            done = row["status"] in ("replied", "closed")
            on_time = (done_at <= due) if (done and done_at and due) else (
                False if due is not None and (now or utcnow()) > due else None)
            out.append({"plan": plan.code if plan else None, "plan_name": plan.name if plan else None,
                        "case": row["number"], "department": row["department"],
                        "department_name": row["department_name"], "title": row["title"],
                        "status": row["status"], "step": row["step"], "due_at": _iso(row["due_at"]),
                        "replied_at": _iso(row["replied_at"]), "closed_at": _iso(row["closed_at"]),
                        "reply": row["reply"], "overdue": row["overdue"], "done": done, "on_time": on_time,
                        "activated_at": _iso(act.activated_at)})
    return out


TASK_STATUS = {"new": ("待派遣", "New"), "dispatched": ("待签收", "Dispatched"),
               "handling": ("处置中", "Responding"), "replied": ("已反馈", "Reported back"),
               "closed": ("已完成", "Done"), "cancelled": ("已作废", "Cancelled"),
               "merged": ("已合并", "Merged")}


# -- resources near (周边资源) -----------------------------------------------------------------------


def resources_near(session: Session, actor: Actor, number: str, radius_m: float = 3000,
                   limit: int = 50) -> list[dict[str, Any]]:
    """Features of the incident type's resource layers near the incident, nearest first."""
    inc = incident_get(session, actor, number)
    try:
        radius = float(radius_m)
    except (TypeError, ValueError):
        raise Invalid("radius_m", "a number of metres / 须为米数") from None
    if not math.isfinite(radius) or not 0 < radius <= MAX_RADIUS_M:
        raise Invalid("radius_m", f"more than 0 and at most {MAX_RADIUS_M} m / 半径须为 0-{MAX_RADIUS_M} 米")
    if not isinstance(limit, int) or not 1 <= limit <= MAX_RESOURCES:
        raise Invalid("limit", f"1-{MAX_RESOURCES} / 条数须为 1-{MAX_RESOURCES}")
    if inc.lon is None or inc.lat is None or not inc.type.resource_layers:
        return []
    return maps.features_near(session, actor, list(inc.type.resource_layers), inc.lon, inc.lat, radius, limit)


# -- close-out (总结报告) ----------------------------------------------------------------------------


def incident_close(session: Session, actor: Actor, number: str, summary: str) -> dict[str, Any]:
    """End the response and write the close-out report (总结报告): type, level, times, the tasks with
    their outcome and whether on time, the timeline and the summary. Tasks a department has
    reported back on are confirmed (closed) in the case engine; open ones stay in the queues and
    show as not done."""
    inc = incident_get(session, actor, number)
    _command(session, actor, inc)
    _active(inc)
    text = _text(summary, "summary", MAX_TEXT)
    for act in activations(session, inc):
        for n in act.case_numbers:
            cases.task_confirm(session, actor, n, f"事件 {inc.number} 处置结束 / incident closed")
    now = utcnow()
    inc.status, inc.closed_at = "closed", now
    _event(session, inc, actor, "close", text)
    acts = activations(session, inc)
    tasks = _tasks(session, inc, now)
    for t in tasks:
        t["outcome"] = TASK_STATUS.get(t["status"], (t["status"], t["status"]))[0]
    first = min((a.activated_at for a in acts), default=None)
    report = {
        "number": inc.number, "title": inc.title, "type": inc.type.code, "type_name": inc.type.name,
        "level": inc.level, "level_name": INCIDENT_LEVELS[inc.level][0],
        "department": _department(session, inc).code, "district": inc.district_code,
        "opened_at": _iso(inc.opened_at), "activated_at": _iso(first), "closed_at": _iso(now),
        "duration_minutes": round((now - inc.opened_at).total_seconds() / 60, 1),
        "response_minutes": round((first - inc.opened_at).total_seconds() / 60, 1) if first else None,
        "plans": [session.get(ResponsePlan, a.plan_id).code for a in acts],  # type: ignore[union-attr]
        "tasks": tasks, "tasks_total": len(tasks), "tasks_done": sum(1 for t in tasks if t["done"]),
        "tasks_on_time": sum(1 for t in tasks if t["on_time"]),
        "timeline": [event_public(e) for e in _timeline(session, inc)],
        "summary": text, "closed_by": actor.name,
    }
    inc.report = report
    session.flush()
    _audit(session, actor, "ops.incident.close", "ops_incident", inc.number,
           {"tasks": len(tasks), "done": report["tasks_done"]})
    return report


# -- the defaults a city starts with (默认事件类型与预案) ---------------------------------------------

VALVES = "water-changyi-valves"  # the demo water network's valves (maps_seed.NETWORK + "-valves")
DEFAULT_TYPES: list[dict[str, Any]] = [
    {"code": "heavy-pollution", "name": "重污染天气", "name_en": "Heavy air pollution",
     "resource_layers": ["hospitals", "cameras"]},
    {"code": "pipe-burst", "name": "供水管网爆管", "name_en": "Water main burst",
     "resource_layers": [VALVES, "cameras", "hospitals"]},
    {"code": "flood", "name": "城市内涝", "name_en": "Urban flooding",
     "resource_layers": ["shelters", "hospitals", "cameras"]},
    {"code": "gas-leak", "name": "燃气泄漏", "name_en": "Gas leak",
     "resource_layers": ["shelters", "hospitals", "cameras"]},
    {"code": "traffic-accident", "name": "重大交通事故", "name_en": "Major traffic accident",
     "resource_layers": ["hospitals", "cameras"]},
    {"code": "fire", "name": "火灾", "name_en": "Fire",
     "resource_layers": ["shelters", "hospitals", "cameras"]},
]
# (plan code, type, min level, name, name_en, [(department suffix, title, title_en, hours)])
DEFAULT_PLANS: list[tuple[str, str, str, str, str, list[tuple[str, str, str, int]]]] = [
    ("pollution-orange", "heavy-pollution", "III", "重污染天气橙色预警应急预案",
     "Heavy pollution, orange alert",
     [("hbj", "加密监测并发布预警信息", "Monitor more often and publish the alert", 2),
      ("jtj", "实施机动车限行", "Restrict vehicle traffic", 6),
      ("jyj", "中小学停止户外活动", "Stop outdoor activities at schools", 4),
      ("xzzfj", "巡查工地扬尘与露天焚烧", "Patrol building sites for dust and open burning", 8)]),
    ("pollution-red", "heavy-pollution", "II", "重污染天气红色预警应急预案", "Heavy pollution, red alert",
     [("wjw", "医院增设呼吸科门诊", "Open extra respiratory clinics", 12),
      ("jyj", "中小学、幼儿园停课", "Close schools and kindergartens", 12)]),
    ("pipe-burst-response", "pipe-burst", "IV", "供水管网爆管抢修预案", "Water main burst repair",
     [("gsgs", "关闭上游阀门并抢修管道", "Close upstream valves and repair the main", 6),
      ("gaj", "现场交通管制", "Control traffic on site", 1),
      ("rx", "向受影响用户发布停水通知", "Tell affected customers about the outage", 2)]),
    ("flood-response", "flood", "IV", "城市内涝应急预案", "Urban flooding response",
     [("szgy", "开启排涝泵站、疏通雨水口", "Run the drainage pumps and clear the inlets", 2),
      ("gaj", "积水路段交通管制", "Close flooded roads to traffic", 1),
      ("mzj", "开放避难场所并安置群众", "Open shelters and house residents", 4)]),
    ("flood-major", "flood", "II", "城市内涝重大响应预案", "Urban flooding, major response",
     [("wjw", "组织医疗救护队待命", "Put medical teams on standby", 2),
      ("zjw", "排查危旧房屋", "Inspect old and unsafe buildings", 12)]),
    ("gas-leak-response", "gas-leak", "IV", "燃气泄漏应急预案", "Gas leak response",
     [("rq", "切断气源并抢修", "Shut off the gas and repair", 2),
      ("gaj", "疏散群众并设置警戒区", "Evacuate residents and cordon off the area", 1),
      ("wjw", "医疗救护待命", "Ambulances on standby", 1)]),
    ("traffic-accident-response", "traffic-accident", "IV", "重大交通事故应急预案",
     "Major traffic accident response",
     [("gaj", "现场处置与交通疏导", "Handle the scene and divert traffic", 1),
      ("wjw", "伤员救治", "Treat the injured", 1),
      ("jtj", "发布绕行信息", "Publish detours", 2)]),
    ("fire-response", "fire", "IV", "火灾事故应急预案", "Fire response",
     [("gaj", "现场警戒与疏散", "Cordon and evacuate", 1),
      ("wjw", "医疗救护", "Medical rescue", 1),
      ("mzj", "受灾群众临时安置", "House those affected", 6)]),
]


def seed_defaults(session: Session, department_code: str) -> dict[str, int]:
    """Create the default incident types and their plans, owned by `department_code` (the operations
    center), with tasks for the departments the city has (a task for a department it lacks is left
    out). Idempotent: what exists already is left as it is."""
    city = department_code.split("-")[0]
    have_types = set(session.scalars(select(IncidentType.code)))
    made = {"types": 0, "plans": 0}
    for spec in DEFAULT_TYPES:
        if spec["code"] not in have_types:
            incident_type_upsert(session, SYSTEM, spec)
            made["types"] += 1
    have_plans = set(session.scalars(select(ResponsePlan.code)))
    depts = set(session.scalars(select(Department.code)))
    for code, kind, level, name, name_en, tasks in DEFAULT_PLANS:
        if code in have_plans:
            continue
        rows = [{"department": f"{city}-{suffix}", "title": title, "title_en": title_en, "hours": hours}
                for suffix, title, title_en, hours in tasks if f"{city}-{suffix}" in depts]
        if not rows:
            continue
        plan_upsert(session, SYSTEM, {"code": code, "name": name, "name_en": name_en, "incident_type": kind,
                                      "min_level": level, "department": department_code, "tasks": rows})
        made["plans"] += 1
    session.flush()
    return made
