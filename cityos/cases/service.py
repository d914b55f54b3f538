"""Cases (工单): intake, queues and reading, over one workflow engine. Other packages import
this module only; the steps a case goes through are in `steps.py`.

A case is held by a centre — the 12345 hotline, the city-management supervision and command
centre (数字城管监督指挥中心), the approval hall — which is the department owning the case's
workflow. The centre classifies and dispatches; the departments it sends a case to handle
it. A department sees a case when it holds or held a task on it, or when it is the centre.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session

import cityos.maps.service as maps
from cityos.cases import engine
from cityos.cases.models import (
    CHANNELS,
    KINDS,
    LINES,
    OPEN_STATUSES,
    Case,
    CaseCategory,
    CaseEvent,
    CaseTask,
    CaseWorkflow,
)
from cityos.core import access, audit, crypto, events, workdays
from cityos.core.access import OWN, SUBTREE, SYSTEM, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import FieldError, Invalid, NotFound
from cityos.core.models import Department, User
from cityos.core.service import Paged, department_by_code, paginate
from cityos.core.settings import Settings, load_settings

access.define("cases.report", "Report a problem to the city (市民诉求上报)", public=True)
access.define("cases.read", "See cases one's department holds or held (查看工单)",
              department_admin=SUBTREE, department_staff=OWN, auditor=SUBTREE)
access.define("cases.intake", "Register cases for callers: the agent screen (坐席受理)",
              department_admin=SUBTREE, department_staff=OWN)
access.define("cases.dispatch", "Act as the centre: file, dispatch, verify, call back, close (派遣与督办)",
              department_admin=SUBTREE, department_staff=OWN)
access.define("cases.handle", "Handle cases sent to one's department: accept, return, reply (办理)",
              department_admin=SUBTREE, department_staff=OWN)
access.define("cases.workflow.write", "Publish workflows and categories, train dispatch (流程与类别维护)",
              department_admin=SUBTREE)

crypto.register_encrypted(crypto.EncryptedField(Case, "reporter_phone_enc", "reporter_phone_idx",
                                                "cases.reporter_phone"))

NUMBER_PREFIX = {"hotline": "RX", "citymgmt": "CG", "approval": "SP", "emergency": "YJ"}
DUPLICATE_METRES = 100.0
DUPLICATE_HOURS = 48
MAX_TITLE, MAX_TEXT = 200, 5000
NO_LOCATION_KINDS = {"consultation", "suggestion", "approval"}  # may come without a place
LON_RANGE, LAT_RANGE = (73.0, 136.0), (3.0, 54.0)  # China, roughly: anything else is a typo


@functools.cache
def default_settings() -> Settings:
    """Settings for callers that pass none (the CLI, tests); the web passes the platform's own."""
    return load_settings()


# -- workflows and categories -----------------------------------------------------------------


def workflow_publish(session: Session, actor: Actor, code: str, bpmn: str, *, name: str,
                     name_en: str | None = None, department: str | None = None) -> CaseWorkflow:
    """Publish a new version of a workflow (流程发布); running cases keep the version they began."""
    if not code or len(code) > 64 or not code.replace("-", "").replace("_", "").isalnum():
        raise Invalid("code", "1-64 letters, digits, - or _ / 流程代码无效")
    prev = session.scalar(select(CaseWorkflow).where(CaseWorkflow.code == code, CaseWorkflow.active))
    dept = department_of(session, department, "department") if department else (
        session.get(Department, prev.department_id) if prev is not None and prev.department_id else None)
    access.require(actor, "cases.workflow.write",
                   Target("case_workflow", code, dept.id if dept else None, dept.path if dept else None),
                   session)
    process_id = _process_id(bpmn)
    engine.check(bpmn, process_id)
    latest = session.scalar(select(func.max(CaseWorkflow.version)).where(CaseWorkflow.code == code)) or 0
    if prev is not None:
        prev.active = False
    wf = CaseWorkflow(code=code, version=latest + 1, name=name, name_en=name_en, process_id=process_id,
                      bpmn=bpmn, active=True, department_id=dept.id if dept else None,
                      created_by=actor.name[:64])
    session.add(wf)
    session.flush()
    audit.append(session, actor=actor.name, department=actor.department_code, action="cases.workflow.publish",
                 object_type="case_workflow", object_id=f"{code}@{wf.version}")
    return wf


def _process_id(bpmn: str) -> str:
    from lxml import etree

    try:
        root = etree.fromstring(bpmn.encode(), etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise Invalid("bpmn", f"not XML: {exc} / 不是有效的 XML") from None
    procs = root.findall("{http://www.omg.org/spec/BPMN/20100524/MODEL}process")
    executable = [p for p in procs if p.get("isExecutable") == "true"] or procs
    if len(executable) != 1 or not executable[0].get("id"):
        raise Invalid("bpmn", "exactly one executable process is needed / 须有且仅有一个可执行流程")
    return str(executable[0].get("id"))


def department_of(session: Session, code: str, field: str) -> Department:
    """A department named in a request: unknown is the request's mistake (422), not a 404."""
    dept = session.scalar(select(Department).where(Department.code == code))
    if dept is None:
        raise Invalid(field, f"no department {code!r} / 部门不存在")
    return dept


def workflow_active(session: Session, code: str) -> CaseWorkflow:
    wf = session.scalar(select(CaseWorkflow).where(CaseWorkflow.code == code, CaseWorkflow.active))
    if wf is None:
        raise NotFound("workflow", code)
    return wf


def workflow_list(session: Session) -> list[CaseWorkflow]:
    """Every workflow version, newest first per code (public: residents may see how cases go)."""
    stmt = select(CaseWorkflow).order_by(CaseWorkflow.code, CaseWorkflow.version.desc())
    return list(session.scalars(stmt))


def category_upsert(session: Session, actor: Actor, spec: Mapping[str, Any]) -> CaseCategory:
    """Create or change a category (事项类别) — what Open311 calls a service."""
    access.require(actor, "cases.workflow.write", Target("case_category", spec.get("code")), session)
    errors: list[FieldError] = []
    code = str(spec.get("code") or "")
    if not code or len(code) > 32:
        errors.append(FieldError("code", "1-32 characters / 类别代码须为 1-32 个字符"))
    if not str(spec.get("name") or "").strip():
        errors.append(FieldError("name", "required / 必填"))
    existing = session.scalar(select(CaseCategory).where(CaseCategory.code == code)) if code else None
    line = spec.get("line", existing.line if existing else "hotline")
    if line not in LINES:
        errors.append(FieldError("line", f"one of {', '.join(LINES)} / 业务线无效"))
    kind = spec.get("kind")
    if kind is not None and kind not in KINDS:
        errors.append(FieldError("kind", f"one of {', '.join(KINDS)} / 类型无效"))
    attributes = spec.get("attributes")
    if attributes is not None:
        errors.extend(_check_attributes(attributes))
    if spec.get("gbt_code") and not errors:
        from cityos.cases import gbt30428

        try:
            gbt30428.get(str(spec["gbt_code"]), kind)
        except Invalid as exc:
            errors.extend(exc.errors)
    workflow = str(spec.get("workflow") or (existing.workflow_code if existing else line))
    if session.scalar(select(CaseWorkflow.id).where(CaseWorkflow.code == workflow)) is None:
        errors.append(FieldError("workflow", f"no workflow {workflow!r} / 流程不存在"))
    dept = None
    if spec.get("department"):
        try:
            dept = department_of(session, str(spec["department"]), "department")
        except Invalid as exc:
            errors.extend(exc.errors)
    if errors:
        raise Invalid.many(errors)
    cat = existing or CaseCategory(code=code)
    for key in ("name", "name_en", "description", "group", "kind", "gbt_code", "keywords", "attributes",
                "zones", "sort", "active"):
        if key in spec:
            setattr(cat, key, spec[key])
    cat.line = line
    cat.workflow_code = workflow
    cat.department_id = dept.id if dept else cat.department_id
    session.add(cat)
    session.flush()
    return cat


OPEN311_TYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")


def _check_attributes(attributes: Any) -> list[FieldError]:
    """A category's Open311 attributes (服务属性): code, datatype, and keyed values for lists."""
    if not isinstance(attributes, list):
        return [FieldError("attributes", "a list / 须为列表")]
    errors: list[FieldError] = []
    for i, a in enumerate(attributes):
        where = f"attributes[{i}]"
        if not isinstance(a, dict) or not str(a.get("code") or "").strip():
            errors.append(FieldError(where, "an object with a code / 须有属性代码"))
            continue
        if a.get("datatype", "string") not in OPEN311_TYPES:
            errors.append(FieldError(f"{where}.datatype", f"one of {', '.join(OPEN311_TYPES)} / 类型无效"))
        if str(a.get("datatype", "")).endswith("valuelist") and not (
                isinstance(a.get("values"), list) and a["values"]
                and all(isinstance(v, dict) and v.get("key") is not None for v in a["values"])):
            errors.append(FieldError(f"{where}.values", "a list of {key, name} / 须为取值列表"))
    return errors


def categories(session: Session, *, line: str | None = None, active: bool = True) -> list[CaseCategory]:
    stmt = select(CaseCategory).order_by(CaseCategory.line, CaseCategory.sort, CaseCategory.code)
    if line:
        stmt = stmt.where(CaseCategory.line == line)
    if active:
        stmt = stmt.where(CaseCategory.active)
    return list(session.scalars(stmt))


def category_by_code(session: Session, code: str, field: str = "category") -> CaseCategory:
    cat = session.scalar(select(CaseCategory).where(CaseCategory.code == code, CaseCategory.active))
    if cat is None:
        raise Invalid(field, f"unknown category {code!r} / 未知的事项类别")
    return cat


def dispatch_suggest(session: Session, text: str, lon: float | None, lat: float | None) -> Any:
    """Suggest a category and department (智能派单): a category's zone (a map layer such as the
    parks) always wins where the point falls inside it; otherwise the trained model's best guess."""
    from cityos.cases import dispatching

    cats = categories(session)
    rules = [dispatching.Rule(layer, c.code, c.department.code,
                              f"inside {layer} / 位于{layer}范围内，由{c.department.name}办理")
             for c in cats if c.department is not None for layer in (c.zones or [])]
    return dispatching.suggest(session, text, lon, lat, rules=rules,
                               categories={c.code: c.department.code if c.department else None for c in cats})


# -- intake (受理) ------------------------------------------------------------------------------


@dataclass
class Intake:
    """A new case and what the engine noticed about it."""

    case: Case
    duplicates: list[Case]


def _check_text(spec: Mapping[str, Any], errors: list[FieldError]) -> tuple[str, str]:
    description = str(spec.get("description") or "").strip()
    title = str(spec.get("title") or "").strip() or description[:40]
    if not description and not title:
        errors.append(FieldError("description", "say what happened / 请描述问题"))
    if len(title) > MAX_TITLE:
        errors.append(FieldError("title", f"at most {MAX_TITLE} characters / 标题过长"))
    if len(description) > MAX_TEXT:
        errors.append(FieldError("description", f"at most {MAX_TEXT} characters / 描述过长"))
    return title, description


def _check_point(spec: Mapping[str, Any], errors: list[FieldError]) -> tuple[float, float] | None:
    lon, lat = spec.get("lon"), spec.get("lat")
    if lon is None and lat is None:
        return None
    out: list[float] = []
    for name, value, (lo, hi) in (("lon", lon, LON_RANGE), ("lat", lat, LAT_RANGE)):
        try:
            v = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit JSON integer
            errors.append(FieldError(name, "a number is required / 须为数字"))
            continue
        if not math.isfinite(v) or not lo <= v <= hi:
            errors.append(FieldError(name, f"{v} is not within {lo}..{hi} / 坐标超出范围"))
        out.append(v)
    return (out[0], out[1]) if len(out) == 2 else None


def locate(session: Session, lon: float, lat: float) -> dict[str, str | None]:
    """District, street, community and grid cell of a point (落点), as the one map knows them."""
    try:
        found = maps.locate(session, SYSTEM, lon, lat)
    except NotFound:
        return {}
    return {k: (str(v) if v is not None else None) for k, v in found.items()}


def case_intake(session: Session, actor: Actor, spec: Mapping[str, Any], *, channel: str = "web",
                settings: Settings | None = None) -> Intake:
    """Register a case (受理登记): check it, place it on the map, start its workflow, and offer
    duplicates for merging. Anyone may report (`cases.report`); the agent screen and machine
    channels register for callers under `cases.intake`."""
    settings = settings or default_settings()
    if channel not in CHANNELS:
        raise Invalid("channel", f"one of {', '.join(CHANNELS)} / 渠道无效")
    errors: list[FieldError] = []
    cat = None
    if spec.get("category"):
        try:
            cat = category_by_code(session, str(spec["category"]))
        except Invalid as exc:
            errors.extend(exc.errors)
    line = cat.line if cat else str(spec.get("line") or "hotline")
    if line not in LINES:
        errors.append(FieldError("line", f"one of {', '.join(LINES)} / 业务线无效"))
    kind = str(spec.get("kind") or (cat.kind if cat and cat.kind else "") or
               ("event" if line == "citymgmt" else "complaint"))
    if kind not in KINDS:
        errors.append(FieldError("kind", f"one of {', '.join(KINDS)} / 诉求类型无效"))
    title, description = _check_text(spec, errors)
    point = _check_point(spec, errors)
    address = str(spec.get("address") or "").strip()[:300]
    if point is None and not address and kind not in NO_LOCATION_KINDS and not any(
            e.field in ("lon", "lat") for e in errors):
        errors.append(FieldError("location", "a map point (lon, lat) or an address is required / "
                                             "请在地图上标注位置或填写地址"))
    place: dict[str, str | None] = {}
    if point is not None and not errors:
        place = locate(session, *point)
        if place and not place.get("district"):
            errors.append(FieldError("lat", "the point is outside the city / 该位置不在本市范围内"))
    phone = str(spec.get("reporter_phone") or "").strip()
    if phone and (len(phone) > 20 or not phone.replace("-", "").replace("+", "").isdigit()):
        errors.append(FieldError("reporter_phone", "digits only / 电话号码格式不正确"))
    if errors:
        raise Invalid.many(errors)
    suggestion = None
    if cat is None and line == "hotline":
        suggestion = dispatch_suggest(session, f"{title}\n{description}", *(point or (None, None)))
        if suggestion.category and suggestion.confident(settings.cases_dispatch_threshold):
            cat = category_by_code(session, suggestion.category)  # pre-filled; the centre still decides
            line = cat.line
            kind = str(spec.get("kind") or cat.kind or kind)
    wf = workflow_active(session, cat.workflow_code if cat else line)
    centre = session.get(Department, wf.department_id) if wf.department_id else None
    if centre is None:
        raise Invalid("category", f"workflow {wf.code} has no centre department / 流程未指定受理中心")
    public = channel in ("web", "open311")  # the front doors anyone may use
    if public:
        access.require(actor, "cases.report")
    else:
        access.require(actor, "cases.intake", Target("case", None, centre.id, centre.path), session)
    case = Case(line=line, kind=kind, channel=channel, category_id=cat.id if cat else None, title=title,
                description=description, urgent=bool(spec.get("urgent")), status="new",
                lon=point[0] if point else None, lat=point[1] if point else None, address=address,
                district=place.get("district"), street=place.get("street"),
                community=place.get("community"), grid=place.get("grid"),
                reporter_user_id=actor.user_id if public and actor.kind == "user" else None,
                reporter_name=str(spec.get("reporter_name") or "").strip()[:64],
                api_key_id=actor.token_id if actor.kind == "apikey" else None,
                dispatch_department_id=centre.id, workflow_id=wf.id,
                attributes=dict(spec.get("attributes") or {}), token=secrets.token_hex(16),
                component_id=spec.get("component_id"))
    if phone:
        ring = crypto.keyring()
        case.reporter_phone_enc = ring.encrypt(phone, "cases.reporter_phone")
        case.reporter_phone_idx = ring.blind_index(phone, "cases.reporter_phone")
    if suggestion is not None:
        case.suggestion = suggestion.as_dict()
    session.add(case)
    session.flush()
    case.number = f"{NUMBER_PREFIX.get(line, 'GD')}{_local_date(case.created_at):%Y%m%d}{case.id:08d}"
    flow = engine.start(engine.parse(wf.bpmn, wf.process_id))
    from cityos.cases import steps  # steps imports this module

    steps.sync(session, case, flow)
    event_add(session, case, actor, "receive", description[:200], detail={"channel": channel})
    audit.append(session, actor=actor.name, department=actor.department_code, action="cases.intake",
                 object_type="case", object_id=case.number, detail={"channel": channel, "line": line})
    dups = duplicates_of(session, case)
    if dups:
        event_add(session, case, SYSTEM, "duplicate", "possible duplicates / 疑似重复工单",
                  detail={"cases": [d.number for d in dups]}, public=False)
    events.publish(events.CASES_CREATED, session=session, case=case)
    return Intake(case, dups)


def _local_date(at: dt.datetime) -> dt.date:
    return at.astimezone(workdays.CITY_TZ).date()


def duplicates_of(session: Session, case: Case) -> list[Case]:
    """Open cases of the same category within 100 m and 48 h (疑似重复), nearest first."""
    if case.category_id is None or case.lon is None or case.lat is None:
        return []
    since = case.created_at - dt.timedelta(hours=DUPLICATE_HOURS)
    dlat = DUPLICATE_METRES / 111_320.0
    dlon = dlat / max(math.cos(math.radians(case.lat)), 0.01)
    near = session.scalars(select(Case).where(
        Case.category_id == case.category_id, Case.id != case.id, Case.status.in_(OPEN_STATUSES),
        Case.created_at >= since, Case.lon.between(case.lon - dlon, case.lon + dlon),
        Case.lat.between(case.lat - dlat, case.lat + dlat)).limit(50))
    scored = [(metres(case, c), c) for c in near]
    return [c for d, c in sorted(scored, key=lambda x: x[0]) if d <= DUPLICATE_METRES]


def metres(a: Case, b: Case) -> float:
    """Great-circle distance between two cases' points, in metres."""
    assert a.lon is not None and a.lat is not None and b.lon is not None and b.lat is not None
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


# -- the timeline (办理过程) ----------------------------------------------------------------------


def event_add(session: Session, case: Case, actor: Actor, action: str, note: str = "", *,
              detail: dict[str, Any] | None = None, public: bool = True) -> CaseEvent:
    ev = CaseEvent(case_id=case.id, at=utcnow(), actor=actor.name[:64], department_id=actor.department_id,
                   action=action, note=note, detail=detail or {}, public=public)
    session.add(ev)
    return ev


def timeline(session: Session, case: Case, *, public_only: bool = False) -> list[CaseEvent]:
    stmt = select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.at, CaseEvent.id)
    if public_only:
        stmt = stmt.where(CaseEvent.public)
    return list(session.scalars(stmt))


def tasks_of(session: Session, case: Case) -> list[CaseTask]:
    return list(session.scalars(select(CaseTask).where(CaseTask.case_id == case.id).order_by(CaseTask.id)))


# -- reading ------------------------------------------------------------------------------------


def case_by_number(session: Session, number: str) -> Case:
    case = session.scalar(select(Case).where(Case.number == number))
    if case is None:
        raise NotFound("case", number)
    return case


def _visible(actor: Actor) -> Any:
    """The cases `actor` may see: held by its centre, or with a task of its department's."""
    reach = access.reach_of(actor, "cases.read")
    if reach is None:
        access.require(actor, "cases.read")
    if reach == access.ALL:
        return True
    if reach == SUBTREE and actor.department_path:
        depts = select(Department.id).where(Department.path.startswith(actor.department_path))
    elif reach == OWN and actor.department_id is not None:
        depts = select(Department.id).where(Department.id == actor.department_id)
    else:
        return False
    held = exists().where(CaseTask.case_id == Case.id, CaseTask.department_id.in_(depts))
    return or_(Case.dispatch_department_id.in_(depts), held)


def case_get(session: Session, actor: Actor, number: str) -> Case:
    """A case, for staff who may see it (deny by default: 404 rather than a hint it exists)."""
    case = session.scalar(select(Case).where(Case.number == number, _visible(actor)))
    if case is None:
        raise NotFound("case", number)
    return case


def case_track(session: Session, number_or_token: str) -> Case:
    """A case as the reporter follows it (查询进度), by number or Open311 token: public view."""
    case = session.scalar(select(Case).where(or_(Case.number == number_or_token,
                                                 Case.token == number_or_token)))
    if case is None:
        raise NotFound("case", number_or_token)
    return case


QUEUES = {"new": ("待处理", "New"), "due_soon": ("即将超期", "Due soon"), "overdue": ("已超期", "Overdue"),
          "all": ("全部待办", "All open")}


def queue(session: Session, actor: Actor, department: str | None = None, which: str = "all", *,
          limit: int = 50, offset: int = 0, now: dt.datetime | None = None) -> Paged:
    """A department's open tasks (待办队列): new, due soon, overdue, or all, most urgent first."""
    if which not in QUEUES:
        raise Invalid("queue", f"one of {', '.join(QUEUES)} / 队列无效")
    dept = department_by_code(session, department) if department else (
        session.get(Department, actor.department_id) if actor.department_id else None)
    if dept is None:
        raise Invalid("department", "which department's queue? / 请指定部门")
    access.require(actor, "cases.read", Target("case_queue", dept.code, dept.id, dept.path), session)
    now = now or utcnow()
    stmt: Select[Any] = select(CaseTask).where(CaseTask.department_id == dept.id,
                                               CaseTask.state.in_(("open", "accepted")))
    if which == "new":
        stmt = stmt.where(CaseTask.state == "open")
    elif which == "due_soon":
        stmt = stmt.where(CaseTask.warn_at <= now, CaseTask.due_at > now)
    elif which == "overdue":
        stmt = stmt.where(CaseTask.due_at <= now)
    stmt = stmt.order_by(CaseTask.due_at.is_(None), CaseTask.due_at, CaseTask.id)
    return paginate(session, stmt, limit, offset)


def case_list(session: Session, actor: Actor, *, status: str | None = None, category: str | None = None,
              line: str | None = None, district: str | None = None, q: str | None = None,
              since: dt.datetime | None = None, until: dt.datetime | None = None,
              limit: int = 50, offset: int = 0) -> Paged:
    """Cases the actor may see, newest first, filtered."""
    stmt = select(Case).where(_visible(actor))
    if status:
        stmt = stmt.where(Case.status == status)
    if category:
        stmt = stmt.where(Case.category_id == category_by_code(session, category).id)
    if line:
        stmt = stmt.where(Case.line == line)
    if district:
        stmt = stmt.where(Case.district == district)
    if q:
        like = f"%{q.replace('%', '').replace('_', '')}%"
        stmt = stmt.where(or_(Case.title.like(like), Case.number == q, Case.address.like(like)))
    if since:
        stmt = stmt.where(Case.created_at >= since)
    if until:
        stmt = stmt.where(Case.created_at < until)
    return paginate(session, stmt.order_by(Case.created_at.desc(), Case.id.desc()), limit, offset)


def public_cases(session: Session, *, category: str | None = None, status: str | None = None,
                 since: dt.datetime | None = None, until: dt.datetime | None = None,
                 numbers: list[str] | None = None, limit: int = 50) -> list[Case]:
    """Cases anyone may list (as Open311 GET requests does): no reporter details are ever shown."""
    stmt = select(Case).where(Case.status != "merged" if status is None else Case.status == status)
    if category:
        stmt = stmt.where(Case.category_id == category_by_code(session, category, "service_code").id)
    if since:
        stmt = stmt.where(Case.created_at >= since)
    if until:
        stmt = stmt.where(Case.created_at <= until)
    if numbers:
        stmt = stmt.where(or_(Case.number.in_(numbers), Case.token.in_(numbers)))
    return list(session.scalars(stmt.order_by(Case.created_at.desc(), Case.id.desc()).limit(limit)))


def reporter_phone(case: Case) -> str | None:
    """The reporter's phone, for the centre's callback only (never logged)."""
    if not case.reporter_phone_enc:
        return None
    return crypto.keyring().decrypt(case.reporter_phone_enc, "cases.reporter_phone")


def case_reporter(session: Session, actor: Actor, number: str) -> dict[str, Any]:
    """The reporter's name and full phone, for the centre's callback (回访); every reveal is audited
    and the phone never goes into the log itself."""
    case = case_by_number(session, number)
    centre = case.dispatch_department
    access.require(actor, "cases.dispatch", Target("case", case.number, centre.id, centre.path), session)
    audit.append(session, actor=actor.name, department=actor.department_code, action="cases.reporter.read",
                 object_type="case", object_id=case.number, purpose="callback / 回访")
    return {"name": case.reporter_name, "phone": reporter_phone(case)}


def masked_phone(case: Case) -> str:
    phone = reporter_phone(case) or ""
    return f"{phone[:3]}****{phone[-4:]}" if len(phone) >= 7 else ("****" if phone else "")


def case_public(case: Case, *, lang: str = "zh-CN") -> dict[str, Any]:
    """The shape every API returns for a case; the reporter's identity is never in it."""
    zh = lang != "en"
    from cityos.cases.models import STATUSES

    def pick(pair: tuple[str, str]) -> str:
        return pair[0] if zh else pair[1]

    return {
        "number": case.number, "line": case.line, "kind": case.kind, "kind_name": pick(KINDS[case.kind]),
        "channel": case.channel, "category": case.category.code if case.category else None,
        "category_name": (case.category.name if zh else case.category.name_en or case.category.name)
        if case.category else None,
        "title": case.title, "description": case.description, "urgent": case.urgent,
        "status": case.status, "status_name": pick(STATUSES[case.status]), "step": case.step,
        "lon": case.lon, "lat": case.lat, "address": case.address, "district": case.district,
        "street": case.street, "community": case.community, "grid": case.grid,
        "component_id": case.component_id,
        "centre": case.dispatch_department.code, "centre_name": case.dispatch_department.name,
        "department": case.department.code if case.department else None,
        "department_name": case.department.name if case.department else None,
        "due_at": _iso(case.due_at), "due_note": case.due_note, "overdue": case.overdue,
        "escalations": case.escalations, "returns": case.returns, "reopens": case.reopens,
        "extended_days": case.extended_days, "extension_pending": case.extension_pending,
        "satisfaction": case.satisfaction, "evaluation": case.evaluation, "reply": case.reply,
        "attributes": case.attributes, "suggestion": case.suggestion,
        "merged_into": _merged_number(case),
        "created_at": _iso(case.created_at), "updated_at": _iso(case.updated_at),
        "dispatched_at": _iso(case.dispatched_at), "replied_at": _iso(case.replied_at),
        "closed_at": _iso(case.closed_at),
    }


def _merged_number(case: Case) -> str | None:
    if case.merged_into_id is None:
        return None
    from sqlalchemy.orm import object_session

    s = object_session(case)
    return s.scalar(select(Case.number).where(Case.id == case.merged_into_id)) if s else None


def task_public(task: CaseTask) -> dict[str, Any]:
    return {"id": task.id, "step": task.step, "name": task.name, "lane": task.lane,
            "department": task.department.code, "department_name": task.department.name,
            "role": task.role, "state": task.state, "outcome": task.outcome, "note": task.note,
            "opened_at": _iso(task.opened_at), "accepted_at": _iso(task.accepted_at),
            "due_at": _iso(task.due_at), "warn_at": _iso(task.warn_at), "done_at": _iso(task.done_at),
            "overdue": task.overdue}


def event_public(ev: CaseEvent) -> dict[str, Any]:
    return {"at": _iso(ev.at), "action": ev.action, "note": ev.note, "actor": ev.actor,
            "department": ev.department.code if ev.department else None,
            "department_name": ev.department.name if ev.department else None,
            "detail": ev.detail, "public": ev.public}


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


def reporter_of(session: Session, case: Case) -> User | None:
    return session.get(User, case.reporter_user_id) if case.reporter_user_id else None


def open_tasks(session: Session, case: Case, *, step: str | None = None,
               department_id: int | None = None) -> list[CaseTask]:
    stmt = select(CaseTask).where(CaseTask.case_id == case.id, CaseTask.state.in_(("open", "accepted")))
    if step:
        stmt = stmt.where(CaseTask.step == step)
    if department_id is not None:
        stmt = stmt.where(CaseTask.department_id == department_id)
    return list(session.scalars(stmt.order_by(CaseTask.id)))


def open_in_range(session: Session, since: dt.datetime) -> Any:
    return and_(Case.status.in_(OPEN_STATUSES), Case.created_at >= since)


# -- the workflows CityOS ships (内置流程) ---------------------------------------------------------

BUILTIN = {  # code -> (file, name, name_en)
    "hotline": ("hotline.bpmn", "12345 热线工单", "12345 hotline case"),
    "citymgmt": ("citymgmt.bpmn", "数字城管案件（GB/T 30428）", "City management case (GB/T 30428)"),
    "approval": ("approval.bpmn", "并联审批", "Parallel approval"),
}


def builtin_bpmn(code: str) -> str:
    """The BPMN file of a workflow CityOS ships."""
    from importlib.resources import files

    return files("cityos.cases").joinpath("workflows", BUILTIN[code][0]).read_text(encoding="utf-8")


def workflows_install(session: Session, actor: Actor, centres: Mapping[str, str]) -> list[CaseWorkflow]:
    """Publish the shipped workflows whose code has no version yet, each held by its centre
    (`centres`: workflow code -> department code)."""
    out = []
    for code, dept in centres.items():
        if session.scalar(select(CaseWorkflow.id).where(CaseWorkflow.code == code)) is None:
            _, name, name_en = BUILTIN[code]
            out.append(workflow_publish(session, actor, code, builtin_bpmn(code), name=name, name_en=name_en,
                                        department=dept))
    return out


# -- for the operations center (indicators) --------------------------------------------------
# City-wide case figures for the operations center's vital signs (运行体征); `district` is the
# district's administrative code, as cases keep it.


def _ops_where(line: str | None, district: str | None) -> list[Any]:
    if line is not None and line not in LINES:
        raise Invalid("line", f"one of {', '.join(LINES)} / 业务线无效")
    where: list[Any] = [Case.status != "merged"]
    if line:
        where.append(Case.line == line)
    if district:
        where.append(Case.district == district)
    return where


def backlog_count(session: Session, line: str | None = None, district: str | None = None) -> int:
    """Open cases (在办工单): received and not yet closed, cancelled or merged."""
    return int(session.scalar(select(func.count()).select_from(Case).where(
        Case.status.in_(OPEN_STATUSES), *_ops_where(line, district))) or 0)


def created_today_count(session: Session, line: str | None = None, district: str | None = None,
                        now: dt.datetime | None = None) -> int:
    """Cases received since midnight, city time (今日受理)."""
    from cityos.cases import kpi

    today = (now or utcnow()).astimezone(workdays.CITY_TZ).date()
    since, _ = kpi.day_bounds(today, today)
    return int(session.scalar(select(func.count()).select_from(Case).where(
        Case.created_at >= since, *_ops_where(line, district))) or 0)


def on_time_rate_month(session: Session, line: str | None = None, district: str | None = None,
                       now: dt.datetime | None = None) -> float | None:
    """Percent of the cases closed this month (city time) that were answered or closed by their
    deadline (按时办结率); None when no case with a deadline was closed this month."""
    from sqlalchemy import case as case_  # `case` here is a Case

    from cityos.cases import kpi

    since, until = kpi.month_bounds(kpi.current_month(now))
    row = session.execute(select(
        func.count(),
        func.sum(case_((or_(Case.replied_at <= Case.due_at, Case.closed_at <= Case.due_at), 1), else_=0)))
        .where(Case.status == "closed", Case.closed_at >= since, Case.closed_at < until,
               Case.due_at.is_not(None), *_ops_where(line, district))).one()
    total, on_time = int(row[0] or 0), int(row[1] or 0)
    return 100.0 * on_time / total if total else None



# -- for the operations center (emergency) ---------------------------------------------------
# A response plan's tasks (应急处置任务) run as cases on the "emergency" workflow: the commanding
# centre issues and dispatches each at once, the department accepts and replies in its queue like
# any case, and the centre confirms (close). Deadlines are clock hours, not working days.

EMERGENCY = "emergency"
BUILTIN[EMERGENCY] = ("emergency.bpmn", "应急处置任务", "Emergency response task")


def emergency_workflow(session: Session) -> CaseWorkflow:
    """The active emergency workflow, published (as the system) the first time it is needed. It has
    no centre of its own — each task's centre is the incident's commanding department — so the
    agent screen never offers it."""
    wf = session.scalar(select(CaseWorkflow).where(CaseWorkflow.code == EMERGENCY, CaseWorkflow.active))
    if wf is None:
        _, name, name_en = BUILTIN[EMERGENCY]
        wf = workflow_publish(session, SYSTEM, EMERGENCY, builtin_bpmn(EMERGENCY), name=name, name_en=name_en)
    return wf


def task_issue(session: Session, actor: Actor, *, centre: str, department: str, title: str,
               description: str, due_hours: float, reference: str, lon: float | None = None,
               lat: float | None = None, district: str | None = None,
               settings: Settings | None = None) -> Case:
    """Issue one emergency task (下达处置任务) as a case held by `centre` (the commanding
    department) and dispatch it at once to `department`, due `due_hours` clock hours from now.
    The actor needs `cases.dispatch` on the centre. Nothing is committed here."""
    from cityos.cases import steps

    settings = settings or default_settings()
    hub = department_of(session, centre, "centre")
    access.require(actor, "cases.dispatch", Target("case", None, hub.id, hub.path), session)
    dept = department_of(session, department, "department")
    if not 0 < float(due_hours) <= 24 * 60:
        raise Invalid("hours", "more than 0 and at most 1440 hours / 时限须为 0-1440 小时")
    title = title.strip()[:MAX_TITLE] or reference
    wf = emergency_workflow(session)
    now = utcnow()
    case = Case(line=EMERGENCY, kind="event", channel="ops", title=title,
                description=description.strip()[:MAX_TEXT] or title, urgent=True, status="new",
                lon=lon, lat=lat, address=reference[:300], district=district,
                dispatch_department_id=hub.id, workflow_id=wf.id, attributes={"reference": reference},
                token=secrets.token_hex(16), reporter_name="")
    session.add(case)
    session.flush()
    case.number = f"{NUMBER_PREFIX[EMERGENCY]}{_local_date(case.created_at):%Y%m%d}{case.id:08d}"
    flow = engine.start(engine.parse(wf.bpmn, wf.process_id))
    steps.sync(session, case, flow)
    event_add(session, case, actor, "receive", f"{reference}: {title}"[:200], detail={"channel": "ops"})
    case.department = dept
    case.dispatched_at = now
    case.due_at = now + dt.timedelta(hours=float(due_hours))
    case.warn_at = now + (case.due_at - now) * settings.cases_warn_fraction
    case.due_note = f"{due_hours:g} hours from activation / 预案启动后 {due_hours:g} 小时"
    task = open_tasks(session, case, step="dispatch")[0]
    engine.complete(flow, task.engine_task, {"handlers": [dept.code], "due_at": engine.iso(case.due_at)})
    task.state, task.outcome, task.done_at = "done", "dispatched", now
    steps.sync(session, case, flow)
    event_add(session, case, actor, "dispatch", reference, detail={
        "department": dept.code, "department_name": dept.name, "co": [], "due_at": _iso(case.due_at),
        "due_note": case.due_note})
    audit.append(session, actor=actor.name, department=actor.department_code, action="cases.intake",
                 object_type="case", object_id=case.number, detail={"channel": "ops", "line": EMERGENCY,
                                                                    "reference": reference})
    events.publish(events.CASES_CREATED, session=session, case=case)
    events.publish(events.CASES_DISPATCHED, session=session, case=case)
    return case


def tasks_by_numbers(session: Session, numbers: list[str],
                     now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The emergency tasks behind these case numbers, in that order (for the command's own reading:
    the caller checks its own permission): department, title, status, step, due, overdue, reply."""
    if not numbers:
        return []
    now = now or utcnow()
    found = {c.number: c for c in session.scalars(select(Case).where(Case.number.in_(numbers)))}
    out = []
    for n in numbers:
        c = found.get(n)
        if c is None:
            continue
        late = c.due_at is not None and (c.closed_at or c.replied_at or now) > c.due_at
        out.append({"number": c.number, "title": c.title, "status": c.status, "step": c.step,
                    "department": c.department.code if c.department else None,
                    "department_name": c.department.name if c.department else None,
                    "due_at": c.due_at, "replied_at": c.replied_at, "closed_at": c.closed_at,
                    "reply": c.reply, "overdue": bool(late or c.overdue), "returns": c.returns})
    return out


def task_confirm(session: Session, actor: Actor, number: str, note: str = "") -> bool:
    """The centre confirms a replied emergency task (close); False when it is not waiting for that."""
    from cityos.cases import steps

    case = case_by_number(session, number)
    if case.line != EMERGENCY or "close" not in (case.step or "").split(","):
        return False
    steps.case_act(session, actor, number, "close", {"note": note[:2000]})
    return True
