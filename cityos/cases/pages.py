"""The case engine's console (工单工作台) at /console/cases: a department's queues, a case's page
with the steps one may take now, and the workflows as diagrams. The agent screen (坐席受理) and
the KPI dashboard are in `pages_desk`, the residents' pages (市民诉求, 进度查询) in `pages_portal`.

Thin like `api.py`: every read and every step goes through `service` and `steps`, which check
who may do what. A step's form posts to this module, which calls `steps.case_act` and goes back
to the case (post/redirect/get); a refusal is shown in that form. Maps, diagrams and charts are
page JS under /static/cases/ (the CSP forbids inline script), fed by each page's data-config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

import cityos.hub.service as hub
import cityos.maps.service as maps
from cityos.cases import service, steps
from cityos.cases.models import CHANNELS, KINDS, LINES, SATISFACTION, STATUSES, Case
from cityos.core import access
from cityos.core.access import Actor
from cityos.core.errors import CityOSError, Conflict, FieldError, Forbidden, Invalid, NotFound, TooLarge
from cityos.core.models import Department
from cityos.core.pages_base import (
    PAGE_SIZE,
    ConsoleActor,
    ConsoleRoute,
    field_errors,
    page_number,
    pager,
    redirect,
    render,
    safe_next,
)
from cityos.core.web import SessionDep, language, platform_of

TEMPLATES = Path(__file__).resolve().parent / "templates"
console = APIRouter(prefix="/console/cases", route_class=ConsoleRoute, include_in_schema=False)

BASE_TAG, WATER_TAG, ROAD_TAG = "底图", "水系", "道路"  # catalog keywords of the city's base map
MAP_ROLES = ("district", "street")  # reference layers drawn under a case's point
FORM_ERRORS = (Invalid, Conflict, Forbidden, NotFound, TooLarge)
MAP_TEXT = {"failed": ("地图加载失败", "The map could not load"),
            "pin": ("点击地图标注位置", "Click the map to mark the place"),
            "picked": ("已标注位置", "Place marked")}
# What each timeline entry (办理过程) is called.
EVENTS = {
    "receive": ("受理", "Received"), "duplicate": ("疑似重复", "Possible duplicate"),
    "file": ("立案", "Filed"), "reject": ("不予立案", "Not filed"), "dispatch": ("派遣", "Dispatched"),
    "reassign": ("改派", "Reassigned"), "accept": ("签收", "Accepted"), "return": ("退单", "Returned"),
    "extend": ("申请延期", "Extension asked"), "extension_approved": ("同意延期", "Extension approved"),
    "extension_refused": ("不同意延期", "Extension refused"), "escalate": ("督办", "Escalated"),
    "reply": ("答复", "Replied"), "verify": ("核查通过", "Verified"),
    "verify_failed": ("核查未通过", "Not fixed"), "callback": ("回访", "Called back"),
    "close": ("结案", "Closed"), "reopen": ("重办", "Reopened"), "merge": ("合并", "Merged"),
    "merged_in": ("并入", "Merged in"), "approve": ("批准", "Approved"), "refuse": ("不予批准", "Refused"),
    "evaluate": ("评价", "Rated"), "attach": ("上传附件", "Attachment"),
}
QUEUE_TABS = ("new", "due_soon", "overdue", "all")
TASK_STATES = {"open": ("待办", "Open"), "accepted": ("已签收", "Accepted"), "done": ("已完成", "Done"),
               "cancelled": ("已取消", "Cancelled")}


async def posted(request: Request) -> FormData:
    """The submitted form (read once: the CSRF check has read it already)."""
    return await request.form()


FormDep = Annotated[FormData, Depends(posted)]


# -- what every case page shares ----------------------------------------------------------------


def words() -> dict[str, Any]:
    """The case vocabularies, for the templates' `label()`."""
    return {"STATUSES": STATUSES, "KINDS": KINDS, "CHANNELS": CHANNELS, "LINES": LINES,
            "SATISFACTION": SATISFACTION, "EVENTS": EVENTS, "TASK_STATES": TASK_STATES,
            "STEPS": {k: (s.zh, s.en) for k, s in steps.STEPS.items()}, "QUEUES": service.QUEUES}


def show(request: Request, template: str, actor: Actor | None, status: int = 200, **context: Any) -> Response:
    return render(request, template, actor=actor, status=status, current="cases", **words(), **context)


def reader(actor: Actor) -> None:
    """Deny at once who may read no case at all (residents): an empty queue would mislead."""
    if access.reach_of(actor, "cases.read") is None:
        raise access.Denied(actor, "cases.read", None, f"role {actor.role} may not read cases")


def map_config(request: Request, session: Session, actor: Actor, *, point: list[float] | None = None,
               pick: bool = False) -> dict[str, Any]:
    """What cases.js needs to draw a map: the city's own base layers (never internet tiles unless
    the city has a tile server), the first view, a point, and whether a click picks the place."""
    lang = language(request)
    layers: list[dict[str, Any]] = []
    view = None
    try:
        roles = {code: role for role, (code, _attr) in maps.reference_layers(session).items()}
        readable = maps.layer_list(session, actor, limit=maps.MAX_LIMIT)
        keywords = hub.keywords_by_code(session, [la.resource_code for la in readable])
        for la in readable:
            role = roles.get(la.code)
            tags = set(keywords.get(la.resource_code, []))
            if role not in MAP_ROLES and BASE_TAG not in tags:
                continue
            if role == "district" and la.bbox:
                view = list(la.bbox)
            look = "water" if WATER_TAG in tags else "road" if ROAD_TAG in tags else None
            layers.append({"code": la.code, "role": role, "look": look,
                           "title": (la.title_en or la.title) if lang == "en" else la.title})
    except CityOSError:  # the point still shows without the city's layers
        layers, view = [], None
    return {"base": layers, "view": view, "point": point, "pick": pick,
            "tile_url": platform_of(request).settings.map_tile_url,
            "text": {k: v[0] if lang == "zh-CN" else v[1] for k, v in MAP_TEXT.items()}}


def departments(session: Session, *, exclude: int | None = None) -> list[tuple[str, str]]:
    """Every department as (code, name), in the city's tree order: where a case may go."""
    rows = session.execute(select(Department.id, Department.code, Department.name).order_by(Department.path))
    return [(code, name) for i, code, name in rows if i != exclude]


def category_options(session: Session, lang: str, *, line: str | None = None) -> list[tuple[str, str]]:
    return [(c.code, f"{c.name if lang == 'zh-CN' else c.name_en or c.name}（{c.group}）" if c.group else
             (c.name if lang == "zh-CN" else c.name_en or c.name))
            for c in service.categories(session, line=line)]


# -- queues (待办队列) ----------------------------------------------------------------------------


def readable_departments(session: Session, actor: Actor) -> list[tuple[str, str]]:
    """The departments whose queue the actor may open (code, name): own, subtree or all."""
    reach = access.reach_of(actor, "cases.read")
    stmt = select(Department.code, Department.name).order_by(Department.path)
    if reach == access.OWN:
        stmt = stmt.where(Department.id == actor.department_id)
    elif reach == access.SUBTREE:
        stmt = stmt.where(Department.path.startswith(actor.department_path or "/-"))
    elif reach != access.ALL:
        return []
    return [(code, name) for code, name in session.execute(stmt)]


def cases_by_id(session: Session, ids: set[int]) -> dict[int, Case]:
    if not ids:
        return {}
    return {c.id: c for c in session.scalars(select(Case).where(Case.id.in_(ids)))}


def is_centre(session: Session, department_code: str) -> bool:
    """Whether the department holds a workflow: a centre (受理中心) that dispatches cases."""
    dept_id = session.scalar(select(Department.id).where(Department.code == department_code))
    return any(wf.active and wf.department_id == dept_id for wf in service.workflow_list(session))


@console.get("", response_class=HTMLResponse)
def queues_page(request: Request, session: SessionDep, actor: ConsoleActor, which: str = "new",
                department: str = "", status: str = "", line: str = "", q: str = "",
                page: str | None = None) -> Response:
    """My department's queues (待办): new, due soon, overdue, all — and a search over its cases."""
    reader(actor)
    choices = readable_departments(session, actor)
    dept = department if department in dict(choices) else (actor.department_code or "")
    which = which if which in (*QUEUE_TABS, "cases") else "new"
    n = page_number(page)
    counts: dict[str, int] = {}
    tasks, found, total = [], [], 0
    if dept:
        for tab in QUEUE_TABS:
            counts[tab] = service.queue(session, actor, dept, tab, limit=1).total
    filters = {"status": status if status in STATUSES else "", "line": line if line in LINES else "",
               "q": q.strip()[:100]}
    if which == "cases":
        paged = service.case_list(session, actor, status=filters["status"] or None,
                                  line=filters["line"] or None, q=filters["q"] or None, limit=PAGE_SIZE,
                                  offset=(n - 1) * PAGE_SIZE)
        found, total = paged.items, paged.total
    elif dept:
        paged = service.queue(session, actor, dept, which, limit=PAGE_SIZE, offset=(n - 1) * PAGE_SIZE)
        tasks, total = paged.items, paged.total
    held = cases_by_id(session, {t.case_id for t in tasks})
    centre_new = None
    if dept and is_centre(session, dept):
        centre_new = service.case_list(session, actor, status="new", limit=1).total
    return show(request, "cases/queues.html", actor, tab="queues", which=which, department=dept,
                choices=choices, counts=counts, tasks=tasks, held=held, found=found,
                pager=pager(request, total, n), filters=filters, centre_new=centre_new)


# -- workflows (流程) ---------------------------------------------------------------------------


@console.get("/workflows", response_class=HTMLResponse)
def workflows_page(request: Request, session: SessionDep, actor: ConsoleActor) -> Response:
    """Every workflow and its versions (流程管理): which is active, which centre holds it."""
    flows = service.workflow_list(session)
    names = dict(session.execute(select(Department.id, Department.name)).all())
    return show(request, "cases/workflows.html", actor, tab="workflows", flows=flows, names=names)


def _version(session: Session, code: str, version: str) -> Any:
    versions = [wf for wf in service.workflow_list(session) if wf.code == code]
    if not versions:
        raise NotFound("workflow", code)
    if version.isdecimal() and len(version) <= 18:
        chosen = next((wf for wf in versions if wf.version == int(version)), None)
        if chosen is None:
            raise NotFound("workflow", f"{code}@{version}")
        return chosen, versions
    return next((wf for wf in versions if wf.active), versions[0]), versions


@console.get("/workflows/{code}", response_class=HTMLResponse)
def workflow_page(request: Request, session: SessionDep, actor: ConsoleActor, code: str,
                  version: str = "") -> Response:
    """A workflow drawn as its BPMN diagram (流程图), by bpmn-js in the browser."""
    wf, versions = _version(session, code, version)
    lang = language(request)
    config = {"bpmn_url": f"/console/cases/workflows/{quote(code)}/bpmn?version={wf.version}",
              "text": {"failed": "流程图加载失败" if lang == "zh-CN" else "The diagram could not load"}}
    return show(request, "cases/workflow.html", actor, tab="workflows", wf=wf, versions=versions,
                config=config)


@console.get("/workflows/{code}/bpmn")
def workflow_bpmn(session: SessionDep, actor: ConsoleActor, code: str, version: str = "") -> Response:
    """The BPMN 2.0 XML of a workflow version, for the diagram."""
    wf, _ = _version(session, code, version)
    return Response(wf.bpmn, media_type="application/xml")


# -- a case (工单详情) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """One field of a step's form, and how its text becomes the step's parameter."""

    name: str
    kind: str  # text|textarea|int|bool|choice|department|departments|category|kind
    zh: str
    en: str
    required: bool = False
    choices: tuple[tuple[str, tuple[str, str]], ...] = ()


def _yes_no(yes: tuple[str, str], no: tuple[str, str]) -> tuple[tuple[str, tuple[str, str]], ...]:
    return (("true", yes), ("false", no))


NOTE = Input("note", "textarea", "说明", "Note")
NEEDED_NOTE = Input("note", "textarea", "说明", "Note", required=True)
FORMS: dict[str, tuple[Input, ...]] = {  # the steps of steps.STEPS as forms
    "accept": (),
    "dispatch": (Input("department", "department", "主办部门", "Lead department", True),
                 Input("co", "departments", "协办部门", "Co-handling departments"),
                 Input("category", "category", "事项类别", "Category"),
                 Input("kind", "kind", "诉求类型", "Kind"),
                 Input("days", "int", "办理时限（工作日）", "Time limit (working days)"), NOTE),
    "reassign": (Input("department", "department", "改派至", "Reassign to", True), NEEDED_NOTE),
    "decide_extension": (Input("approved", "bool", "延期审批", "Extension", True,
                               _yes_no(("同意", "Approve"), ("不同意", "Refuse"))), NOTE),
    "escalate": (NEEDED_NOTE,),
    "verify": (Input("fixed", "bool", "核查结果", "Result", True,
                     _yes_no(("已解决", "Fixed"), ("未解决", "Not fixed"))), NOTE),
    "close": (NOTE,),
    "callback": (Input("satisfaction", "choice", "满意度", "Satisfaction", True,
                       tuple(SATISFACTION.items())), NOTE),
    "decide": (Input("approved", "bool", "审批决定", "Decision", True,
                     _yes_no(("批准", "Approve"), ("不予批准", "Refuse"))), NOTE),
    "reopen": (NEEDED_NOTE,),
    "merge": (Input("into", "text", "合并到工单号", "Merge into case number", True),),
    "file": (Input("valid", "bool", "立案审核", "Filing", True,
                   _yes_no(("立案", "File"), ("不予立案", "Do not file"))),
             Input("category", "category", "部件/事件类别", "Category"),
             Input("component_id", "text", "部件标识码", "Component id"), NOTE),
    "return": (Input("reason", "textarea", "退单理由", "Reason", True),),
    "extend": (Input("days", "int", "延期天数（工作日）", "Days (working days)", True),
               Input("reason", "textarea", "延期理由", "Reason", True)),
    "reply": (Input("reply", "textarea", "办理答复", "Answer to the resident", True),
              Input("photos", "photos", "处置照片", "Photos of the work")),
}
FORMS["verify"] += (Input("photos", "photos", "核查照片", "Photos of the check"),)
PHOTO_STAGES = {"reply": "handle", "verify": "verify"}  # the stage of the photos a step's form takes


def step_params(action: str, form: FormData) -> dict[str, Any]:
    """A step's parameters from its form: blanks are left out (the step says what it needs),
    yes/no becomes true/false, days a whole number."""
    params: dict[str, Any] = {}
    for f in FORMS.get(action, ()):
        if f.kind == "photos":
            continue
        if f.kind == "departments":
            codes = [str(v).strip() for v in form.getlist(f.name) if str(v).strip()]
            if codes:
                params[f.name] = codes
            continue
        raw = str(form.get(f.name) or "").strip()
        if not raw:
            continue
        if f.kind == "bool":
            if raw not in ("true", "false"):
                raise Invalid(f.name, "choose one / 请选择")
            params[f.name] = raw == "true"
        elif f.kind == "int":
            if not raw.isdecimal() or len(raw) > 18:
                raise Invalid(f.name, "a whole number of working days / 须为整数个工作日")
            params[f.name] = int(raw)
        else:
            params[f.name] = raw
    return params


def attachments_of(session: Session, case: Case) -> list[dict[str, Any]]:
    """The case's photos (without their bytes), each with its download URL of the API."""
    try:
        from cityos.cases import attachments
    except ImportError:
        return []
    return [attachments.attachment_public(a, case.number, staff=True)
            for a in attachments.attachments_of(session, case)]


def photos_of(form: FormData) -> list[UploadFile]:
    """The files chosen (a file input left empty still sends one nameless, empty part)."""
    return [f for f in form.getlist("photos") if isinstance(f, UploadFile) and f.filename]


def attach_photos(session: Session, actor: Actor, case: Case, photos: list[UploadFile], stage: str,
                  token: str | None = None) -> None:
    """Keep each photo with the case, checked by `attachments.attach` (what it really is, how big,
    how many, who sends it); its refusals name the form's `photos` field."""
    if not photos:
        return
    try:
        from cityos.cases import attachments
    except ImportError:
        raise Invalid("photos", "photos cannot be accepted yet / 暂不支持上传照片") from None
    try:
        for upload in photos:
            attachments.attach(session, actor, case, upload.filename or "photo", upload.file.read(),
                               stage=stage, token=token)
    except (Invalid, Conflict) as exc:
        exc.errors = [FieldError("photos", e.reason) if e.field == "file" else e for e in exc.errors]
        raise
    except TooLarge as exc:
        raise Invalid("photos", exc.detail) from None


def case_view(request: Request, session: Session, actor: Actor, case: Case, *, status: int = 200,
              errors: dict[str, dict[str, str]] | None = None, form: dict[str, Any] | None = None,
              done: str = "") -> Response:
    """The case page: summary, deadline, map, photos, timeline, and the forms of the steps open now."""
    lang = language(request)
    actions = [a for a in steps.actions_for(session, actor, case) if a in FORMS]
    point = [case.lon, case.lat] if case.lon is not None and case.lat is not None else None
    pub = service.case_public(case, lang=lang)
    phone = service.reporter_phone(case) if "callback" in actions else service.masked_phone(case)
    return show(request, "cases/case.html", actor, status=status, tab="queues", case=case, pub=pub,
                tasks=service.tasks_of(session, case), events=service.timeline(session, case),
                actions=actions, forms=FORMS, errors=errors or {}, form=form or {},
                done=done if done in steps.STEPS else "", phone=phone,
                departments=departments(session, exclude=case.dispatch_department_id),
                categories=category_options(session, lang, line=case.line),
                duplicates=service.duplicates_of(session, case) if "merge" in actions else [],
                attachments=attachments_of(session, case), kinds=list(KINDS.items()),
                merged_into=pub["merged_into"], config=map_config(request, session, actor, point=point))


@console.get("/{number}", response_class=HTMLResponse)
def case_page(request: Request, session: SessionDep, actor: ConsoleActor, number: str,
              done: str = "") -> Response:
    """A case (工单): what, where, who holds it, its deadline, its timeline, what to do next."""
    return case_view(request, session, actor, service.case_get(session, actor, number), done=done)


@console.post("/{number}/act/{action}", response_class=HTMLResponse)
def case_act(request: Request, session: SessionDep, actor: ConsoleActor, form: FormDep, number: str,
             action: str) -> Response:
    """Take one step (办理一步) from its form; a refusal is shown in that form, nothing changes."""
    case = service.case_get(session, actor, number)  # 404 for a case one may not see
    back = safe_next(str(form.get("next") or ""), f"/console/cases/{quote(number)}")
    try:
        if action not in FORMS:
            raise Invalid("action", f"unknown step {action!r} / 未知的办理环节")
        params = step_params(action, form)
        photos = photos_of(form) if action in PHOTO_STAGES else []
        if photos:  # before the step: the handling task must still be open to add to it
            attach_photos(session, actor, case, photos, PHOTO_STAGES[action])
        steps.case_act(session, actor, number, action, params, settings=platform_of(request).settings)
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        raw = {k: (form.getlist(k) if k == "co" else str(v)) for k, v in form.items()
               if k not in ("csrf_token", "photos")}
        case = service.case_get(session, actor, number)
        return case_view(request, session, actor, case, status=exc.status,
                         errors={action: field_errors(exc, language(request))}, form={action: raw})
    session.commit()
    sep = "&" if "?" in back else "?"
    return redirect(f"{back}{sep}{urlencode({'done': action})}")


def _router() -> APIRouter:
    """Every case page; the desk's fixed paths (/agent, /kpi) before /{number}, which takes only
    case numbers."""
    from cityos.cases import pages_desk, pages_portal

    out = APIRouter()
    out.include_router(pages_desk.console)
    out.include_router(console)
    out.include_router(pages_portal.portal)
    return out


router = _router()
