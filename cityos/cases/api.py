"""The case API (工单接口) at /api/cases: intake, lists and queues, the steps of a case, the
reporter's follow-up and rating, categories, workflows and photos. Thin over `service`, `steps`
and `attachments`; every rule is checked there.

Static paths (`/categories`, `/workflows`, `/queues`, `/track`, `/sweep`) are declared before
`/{number}`, so that they are never read as a case number.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, File, Form, Path, Query, Request, Response, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from cityos.cases import attachments, engine, steps
from cityos.cases import service as svc
from cityos.cases.models import Case, CaseCategory, CaseWorkflow
from cityos.cases.schemas import (
    AttachmentOut,
    CaseDetailOut,
    CaseIn,
    CaseOut,
    CategoryIn,
    CategoryOut,
    EvaluateIn,
    IntakeOut,
    PublicEventOut,
    QueueItemOut,
    SweepOut,
    TrackOut,
    WorkflowDetailOut,
    WorkflowIn,
    WorkflowOut,
)
from cityos.core import access, workdays
from cityos.core.access import Actor, Target
from cityos.core.errors import Conflict, NotFound
from cityos.core.models import Department
from cityos.core.schemas import Page
from cityos.core.service import MAX_OFFSET
from cityos.core.web import ActorDep, SessionDep, SignedInDep, language, platform_of

router = APIRouter(prefix="/api/cases", tags=["cases"])
MAX_LIST = 200
Limit = Annotated[int, Query(ge=1, le=MAX_LIST, description="page size (1-200) / 每页条数")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip / 跳过条数")]
Filter = Annotated[str | None, Query(max_length=32)]
Number = Annotated[str, Path(max_length=40, description="工单编号 / case number, e.g. RX2024060100000001")]
Code = Annotated[str, Path(max_length=64)]
Stage = Literal["report", "handle", "verify"]


def _page(paged: Any, shape: Any) -> dict[str, Any]:
    return {"items": [shape(i) for i in paged.items], "total": paged.total, "limit": paged.limit,
            "offset": paged.offset, "next_offset": paged.next_offset}


@contextmanager
def _one_at_a_time(session: Session) -> Iterator[None]:
    """Two people stepping the same case at once: the second one is told, not given a 500."""
    try:
        yield
        session.commit()
    except StaleDataError:
        session.rollback()
        raise Conflict("the case was changed meanwhile; reload and try again / "
                       "工单已被他人更新，请刷新后重试", "revision") from None


def _default_channel(actor: Actor) -> str:
    """Staff register calls (phone); machines send through the API; residents and anyone else report
    on the web."""
    if actor.kind == "apikey":
        return "api"
    return "phone" if _staff(actor) else "web"


def _staff(actor: Actor) -> bool:
    return actor.kind == "user" and actor.role != access.RESIDENT


def _local(at: dt.datetime | None) -> dt.datetime | None:
    """A time without a zone is the city's (Asia/Shanghai)."""
    return at.replace(tzinfo=workdays.CITY_TZ) if at is not None and at.tzinfo is None else at


# -- shapes ---------------------------------------------------------------------------------------


def _detail(session: Session, actor: Actor, case: Case, lang: str) -> dict[str, Any]:
    """A case with everything staff who may read it need; the phone only masked."""
    out = svc.case_public(case, lang=lang)
    out["reporter"] = {"name": case.reporter_name, "phone": svc.masked_phone(case),
                       "signed_in": case.reporter_user_id is not None}
    out["tasks"] = [svc.task_public(t) for t in svc.tasks_of(session, case)]
    out["timeline"] = [svc.event_public(e) for e in svc.timeline(session, case)]
    out["attachments"] = [attachments.attachment_public(a, case.number, staff=True)
                          for a in attachments.attachments_of(session, case)]
    out["actions"] = steps.actions_for(session, actor, case)
    return out


def _track(session: Session, case: Case, lang: str) -> dict[str, Any]:
    """A case as anyone following it sees it: public fields, public timeline, report photos."""
    public = {k: v for k, v in svc.case_public(case, lang=lang).items() if k in TrackOut.model_fields}
    events = [{k: v for k, v in svc.event_public(e).items() if k in PublicEventOut.model_fields}
              for e in svc.timeline(session, case, public_only=True)]
    photos = [attachments.attachment_public(a, case.number)
              for a in attachments.attachments_of(session, case, public_only=True)]
    return {**public, "timeline": events, "attachments": photos}


def _category_out(cat: CaseCategory) -> dict[str, Any]:
    dept = cat.department
    return {"code": cat.code, "name": cat.name, "name_en": cat.name_en, "description": cat.description,
            "group": cat.group, "line": cat.line, "kind": cat.kind, "gbt_code": cat.gbt_code,
            "department": dept.code if dept else None, "department_name": dept.name if dept else None,
            "workflow": cat.workflow_code, "keywords": list(cat.keywords or []),
            "attributes": list(cat.attributes or []), "sort": cat.sort, "active": cat.active}


def _workflow_out(session: Session, wf: CaseWorkflow) -> dict[str, Any]:
    dept = session.get(Department, wf.department_id) if wf.department_id else None
    return {"code": wf.code, "version": wf.version, "name": wf.name, "name_en": wf.name_en,
            "process_id": wf.process_id, "active": wf.active, "department": dept.code if dept else None,
            "created_by": wf.created_by, "created_at": svc._iso(wf.created_at)}


def _workflow_detail(session: Session, wf: CaseWorkflow) -> dict[str, Any]:
    names = engine.STEPS
    return {**_workflow_out(session, wf),
            "steps": [{"step": s, "name": names[s][0], "name_en": names[s][1]}
                      for s in engine.check(wf.bpmn, wf.process_id)]}


def _disposition(name: str) -> str:
    """`inline` with an ASCII fallback name and the real one (RFC 6266 / RFC 5987)."""
    ascii_name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "photo"
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


# -- categories and workflows (public to read) ------------------------------------------------------


@router.get("/categories", response_model=list[CategoryOut], summary="Categories one may report (事项类别)")
def categories_list(session: SessionDep, line: Filter = None) -> list[dict[str, Any]]:
    return [_category_out(c) for c in svc.categories(session, line=line)]


@router.put("/categories/{code}", response_model=CategoryOut,
            summary="Create or replace a category (事项类别维护); workflow admins only")
def categories_put(code: Code, body: CategoryIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    keep = ("department", "workflow")  # omitted: the category keeps its own
    spec = {k: v for k, v in body.model_dump().items() if v is not None or k not in keep}
    cat = svc.category_upsert(session, actor, {**spec, "code": code})
    session.commit()
    return _category_out(cat)


@router.get("/workflows", response_model=list[WorkflowOut], summary="Workflows, every version (流程)")
def workflows_list(session: SessionDep) -> list[dict[str, Any]]:
    return [_workflow_out(session, wf) for wf in svc.workflow_list(session)]


@router.get("/workflows/{code}/bpmn", summary="A workflow's BPMN 2.0 XML (流程定义)",
            response_class=Response, responses={200: {"content": {"application/xml": {}}}})
def workflows_bpmn(code: Code, session: SessionDep,
                   version: Annotated[int | None, Query(ge=1, description="a version; the active one "
                                                                          "if omitted")] = None) -> Response:
    if version is None:
        wf = svc.workflow_active(session, code)
    else:
        wf = next((w for w in svc.workflow_list(session) if w.code == code and w.version == version), None)
        if wf is None:
            raise NotFound("workflow", f"{code}@{version}")
    return Response(wf.bpmn.encode(), media_type="application/xml",
                    headers={"Content-Disposition": f'attachment; filename="{code}-v{wf.version}.bpmn"'})


@router.get("/workflows/{code}", response_model=WorkflowDetailOut,
            summary="A workflow's active version and its steps (流程环节)")
def workflows_get(code: Code, session: SessionDep) -> dict[str, Any]:
    return _workflow_detail(session, svc.workflow_active(session, code))


@router.post("/workflows/{code}", response_model=WorkflowDetailOut, status_code=201,
             summary="Publish a new version of a workflow (流程发布); running cases keep theirs")
def workflows_publish(code: Code, body: WorkflowIn, response: Response, session: SessionDep,
                      actor: SignedInDep) -> dict[str, Any]:
    wf = svc.workflow_publish(session, actor, code, body.bpmn, name=body.name, name_en=body.name_en,
                              department=body.department)
    session.commit()
    response.headers["Location"] = f"/api/cases/workflows/{code}"
    return _workflow_detail(session, wf)


# -- queues, follow-up and the clock ------------------------------------------------------------------


@router.get("/queues/{department}", response_model=Page[QueueItemOut],
            summary="A department's open tasks (待办队列), most urgent first")
def queues_get(department: Code, request: Request, session: SessionDep, actor: SignedInDep,
               which: Annotated[Literal["new", "due_soon", "overdue", "all"], Query(
                   description="new 待处理 | due_soon 即将超期 | overdue 已超期 | all")] = "all",
               limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    paged = svc.queue(session, actor, department, which, limit=limit, offset=offset)
    ids = {t.case_id for t in paged.items}
    cases = {c.id: c for c in session.scalars(select(Case).where(Case.id.in_(ids)))} if ids else {}
    zh = language(request) != "en"

    def item(task: Any) -> dict[str, Any]:
        case, cat = cases[task.case_id], cases[task.case_id].category
        return {**svc.task_public(task), "number": case.number, "title": case.title,
                "category": cat.code if cat else None,
                "category_name": (cat.name if zh else cat.name_en or cat.name) if cat else None,
                "urgent": case.urgent, "case_status": case.status}

    return _page(paged, item)


@router.get("/track/{key}", response_model=TrackOut,
            summary="Follow a case by its number or token (查询进度): public, nothing personal")
def cases_track(key: Annotated[str, Path(max_length=64)], request: Request,
                session: SessionDep) -> dict[str, Any]:
    return _track(session, svc.case_track(session, key), language(request))


@router.post("/sweep", response_model=SweepOut,
             summary="Mark due-soon and overdue tasks and escalate (时限监控); platform admins only")
def cases_sweep(session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    # A target with no department needs city-wide reach: platform admins only.
    access.require(actor, "cases.workflow.write", Target("case_sweep"), session)
    report = steps.sweep(session)
    session.commit()
    return {"warned": report.warned, "overdue": report.overdue, "escalated": report.escalated}


# -- cases ----------------------------------------------------------------------------------------------


@router.post("", response_model=IntakeOut, status_code=201,
             summary="Report a problem or register a call (诉求上报/受理登记)")
def cases_create(body: CaseIn, request: Request, response: Response, session: SessionDep,
                 actor: ActorDep) -> dict[str, Any]:
    spec = body.model_dump(exclude={"channel"}, exclude_none=True)
    got = svc.case_intake(session, actor, spec, channel=body.channel or _default_channel(actor),
                          settings=platform_of(request).settings)
    case = got.case
    duplicates = [{"number": d.number, "distance_m": round(svc.metres(case, d), 1)} for d in got.duplicates]
    session.commit()
    response.headers["Location"] = f"/api/cases/{case.number}"
    # The token lets its holder follow, add photos to and rate the case: for the reporter, not an agent.
    return {**svc.case_public(case, lang=language(request)), "duplicates": duplicates,
            "token": None if _staff(actor) else case.token}


@router.get("", response_model=Page[CaseOut], summary="Cases you may see, newest first (工单列表)")
def cases_list(
    request: Request, session: SessionDep, actor: SignedInDep, status: Filter = None, category: Filter = None,
    line: Filter = None, district: Filter = None,
    q: Annotated[str | None, Query(max_length=100, description="words of the title or address, or a "
                                                               "number / 标题、地址或编号")] = None,
    since: Annotated[dt.datetime | None, Query(description="reported at or after (ISO 8601)")] = None,
    until: Annotated[dt.datetime | None, Query(description="reported before (ISO 8601)")] = None,
    limit: Limit = 50, offset: Offset = 0,
) -> dict[str, Any]:
    paged = svc.case_list(session, actor, status=status, category=category, line=line, district=district, q=q,
                          since=_local(since), until=_local(until), limit=limit, offset=offset)
    lang = language(request)
    return _page(paged, lambda c: svc.case_public(c, lang=lang))


@router.get("/{number}", response_model=CaseDetailOut,
            summary="A case with its tasks, timeline, photos and the steps you may take (工单详情)")
def cases_get(number: Number, request: Request, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return _detail(session, actor, svc.case_get(session, actor, number), language(request))


@router.post("/{number}/actions/{action}", response_model=CaseDetailOut,
             summary="Take a step on a case (办理): dispatch, accept, reply, verify, callback, ...")
def cases_act(
    number: Number, action: Annotated[str, Path(max_length=32)], request: Request, session: SessionDep,
    actor: SignedInDep,
    params: Annotated[dict[str, Any] | None, Body(description="the step's parameters, e.g. dispatch "
                                                               "{department, co, days, note}")] = None,
) -> dict[str, Any]:
    with _one_at_a_time(session):
        steps.case_act(session, actor, number, action, params or {}, settings=platform_of(request).settings)
    return _detail(session, actor, svc.case_get(session, actor, number), language(request))


@router.post("/{number}/evaluate", response_model=TrackOut,
             summary="The reporter rates a closed case (评价), signed in or with the case's token")
def cases_evaluate(number: Number, body: EvaluateIn, request: Request, session: SessionDep,
                   actor: ActorDep) -> dict[str, Any]:
    with _one_at_a_time(session):
        case = steps.case_evaluate(session, actor, number, body.satisfaction, token=body.token,
                                   note=body.note)
    return _track(session, case, language(request))


@router.get("/{number}/reporter", summary="The reporter's name and full phone, for the centre's callback "
                                           "(回访); every reveal is audited")
def cases_reporter(number: Number, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return svc.case_reporter(session, actor, number)


@router.get("/{number}/duplicates", summary="Possible duplicates of a case (疑似重复): same category, "
                                             "within 100 m and 48 h")
def cases_duplicates(number: Number, session: SessionDep, actor: SignedInDep) -> list[dict[str, Any]]:
    case = svc.case_get(session, actor, number)
    return [{"number": d.number, "distance_m": round(svc.metres(case, d), 1), "title": d.title,
             "status": d.status, "created_at": svc._iso(d.created_at)}
            for d in svc.duplicates_of(session, case)]


# -- photos (附件) -----------------------------------------------------------------------------------


@router.post("/{number}/attachments", response_model=AttachmentOut, status_code=201,
             summary="Add a photo (上传照片): JPEG, PNG, WebP or GIF, at most 5 MB and 9 per case")
def attachments_create(
    number: Number, response: Response, session: SessionDep, actor: ActorDep,
    file: Annotated[UploadFile, File(description="the image; its type is read from its content")],
    stage: Annotated[Stage, Form(description="report 上报 | handle 处置 | verify 核查")] = "report",
    token: Annotated[str | None, Form(max_length=64, description="the case's token, for a reporter "
                                                                 "who is not signed in")] = None,
) -> dict[str, Any]:
    case = svc.case_by_number(session, number)
    data = file.file.read(attachments.MAX_BYTES + 1)  # one byte over is enough to refuse
    att = attachments.attach(session, actor, case, file.filename, data, stage=stage, token=token)
    session.commit()
    response.headers["Location"] = f"/api/cases/{number}/attachments/{att.id}"
    return attachments.attachment_public(att, number)


@router.get("/{number}/attachments/{attachment_id}", response_class=Response,
            summary="A photo (下载照片): report photos for anyone, others for staff who may read the case",
            responses={200: {"content": {t: {} for t, _ in attachments.TYPES.values()}}})
def attachments_get(number: Number, attachment_id: int, session: SessionDep, actor: ActorDep) -> Response:
    att = attachments.attachment_get(session, actor, number, attachment_id)
    assert att.data is not None
    # The sniffed type, never the client's; X-Content-Type-Options: nosniff comes with every response
    # (core.web.SecurityHeaders), so a browser never second-guesses it.
    public = att.stage in attachments.PUBLIC_STAGES
    return Response(att.data, media_type=att.content_type, headers={
        "Content-Disposition": _disposition(att.name), "ETag": f'"{att.sha256}"',
        "Cache-Control": "public, max-age=86400" if public else "private, no-store"})
