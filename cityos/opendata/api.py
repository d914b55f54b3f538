"""Open-data staff API (公共数据开放 管理接口): topics, the opening plan (开放计划), publication
by review (发布审核), applications for conditional data and their keys, and the figures.

Thin over `opendata.service`, `opendata.applications` and `opendata.stats`: parse, call, shape
the answer. Every write commits before it answers; refusals are RFC 9457 problem documents
(a failed publication check is a 422 naming `rules.<item>` or the small quasi-identifier
groups). The public reads are the CKAN API (`opendata.ckan_api`) and the portal.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from cityos.core import access
from cityos.core.access import Actor
from cityos.core.service import MAX_OFFSET, MAX_PAGE, Paged
from cityos.core.web import ActorDep, SessionDep, SignedInDep
from cityos.opendata import applications, service, stats
from cityos.opendata.models import Application, Dataset, PlanEntry, Topic
from cityos.opendata.schemas import (
    ApplicationDecisionIn,
    ApplicationIn,
    ApplicationOut,
    ApplicationPage,
    CheckOut,
    DatasetDetail,
    DatasetIn,
    DatasetPage,
    DatasetPatch,
    NoteIn,
    PlanIn,
    PlanOut,
    PlanPage,
    ReasonIn,
    RevokedOut,
    StatsOut,
    TopicIn,
    TopicOut,
)
from cityos.opendata.snapshot import Built

router = APIRouter(prefix="/api/opendata", tags=["opendata"])
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size (1-500)")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
Code = Annotated[str | None, Query(max_length=32, description="department code")]


def page_of(paged: Paged, shape: Any) -> dict[str, Any]:
    return {"items": [shape(i) for i in paged.items], "total": paged.total,
            "limit": paged.limit, "offset": paged.offset, "next_offset": paged.next_offset}


# -- shapes ---------------------------------------------------------------------------------------


def topic_out(t: Topic) -> dict[str, Any]:
    return {"name": t.name, "title": t.title, "title_en": t.title_en, "description": t.description}


def plan_out(session: Session, e: PlanEntry) -> dict[str, Any]:
    return {"resource": e.resource.code, "resource_name": e.resource.name,
            "department": e.department.code, "department_name": e.department.name,
            "open_level": e.open_level, "planned_on": e.planned_on, "note": e.note,
            "status": service.plan_status(session, e), "created_by": e.created_by,
            "created_at": e.created_at}


def dataset_actions(session: Session, actor: Actor, ds: Dataset) -> list[str]:
    """What the caller may do with this dataset now, for the console's buttons (the service
    checks again): update, check, submit, approve, refuse, withdraw."""
    target = service.dataset_target(ds)

    def may(action: str) -> bool:
        return access.decide(actor, f"opendata.dataset.{action}", target, session).allowed

    out: list[str] = []
    if may("prepare"):
        out += ["update", "check"]
        if ds.state in ("draft", "refused", "withdrawn"):
            out.append("submit")
    reviewer = {"submitted": "provider_review", "provider_approved": "office_review"}.get(ds.state)
    if reviewer and may(reviewer):
        out += ["approve", "refuse"]
    if ds.state == "published" and may("provider_review"):
        out.append("withdraw")
    return out


def dataset_out(session: Session, actor: Actor, ds: Dataset, *, reviews: bool = False) -> dict[str, Any]:
    out = {c: getattr(ds, c) for c in (
        "name", "uid", "title", "title_en", "description", "topics", "tags", "licence", "update_cycle",
        "open_level", "spatial", "bbox", "temporal_start", "temporal_end", "lon_field", "lat_field",
        "rules", "quasi_identifiers", "k", "state", "held_reason", "source_version", "row_count",
        "created_by", "created_at", "published_at", "data_updated_at", "modified_at", "views",
        "downloads", "api_calls")}
    out.update(resource=ds.resource.code, resource_name=ds.resource.name, department=ds.department.code,
               department_name=ds.department.name, state_name=service.STATES[ds.state],
               fields=_fields(ds.fields),
               actions=dataset_actions(session, actor, ds))
    if reviews:
        out["reviews"] = [{"step": r.step, "by": r.by, "note": r.note, "at": r.at}
                          for r in service.reviews(session, ds)]
    return out


def _fields(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{c: f.get(c) for c in ("id", "title", "type", "source", "rule")} for f in fields]


def check_out(built: Built) -> dict[str, Any]:
    k = built.kanon
    return {"ok": built.ok, "rows": built.rows, "fields": _fields(built.fields),
            "kanon": None if k is None else {
                "ok": k.ok, "k": k.k, "smallest": k.smallest, "classes": k.classes,
                "offending": [{"values": combo, "rows": n} for combo, n in k.offending],
                "offending_rows": k.offending_rows}}


def application_out(app: Application, key: str | None = None) -> dict[str, Any]:
    ds = app.dataset
    return {"id": app.id, "dataset": ds.name, "dataset_title": ds.title, "department": ds.department.code,
            "applicant": app.applicant, "credit_code": app.credit_code, "contact": app.contact,
            "purpose": app.purpose, "state": app.state, "decided_by": app.decided_by,
            "decided_at": app.decided_at, "reason": app.reason, "valid_until": app.valid_until,
            "created_at": app.created_at, "key": key}


def _detail(session: Session, actor: Actor, ds: Dataset) -> dict[str, Any]:
    return dataset_out(session, actor, ds, reviews=True)


# -- topics ---------------------------------------------------------------------------------------


@router.get("/topics", response_model=list[TopicOut], summary="Topics (主题) datasets are filed under")
def topics_list(session: SessionDep) -> list[dict[str, Any]]:
    return [topic_out(t) for t in service.topics(session)]


@router.post("/topics", response_model=TopicOut, status_code=201, summary="Define a topic (data office)")
def topics_create(body: TopicIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    topic = service.topic_create(session, actor, **body.model_dump())
    session.commit()
    return topic_out(topic)


# -- the opening plan -----------------------------------------------------------------------------


@router.get("/plan", response_model=PlanPage,
            summary="The opening plan (开放计划), each entry with its status: planned, overdue, published")
def plan_list(session: SessionDep, actor: SignedInDep, department: Code = None, limit: Limit = 50,
              offset: Offset = 0) -> dict[str, Any]:
    paged = service.plan_list(session, actor, department=department, limit=limit, offset=offset)
    return page_of(paged, lambda e: plan_out(session, e))


@router.put("/plan/{resource}", response_model=PlanOut,
            summary="Put a resource on the plan, or move its date or level (department admins)")
def plan_put(resource: str, body: PlanIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    entry = service.plan_add(session, actor, resource=resource, **body.model_dump())
    session.commit()
    session.refresh(entry, ["resource", "department"])
    return plan_out(session, entry)


# -- datasets and their review --------------------------------------------------------------------


@router.get("/datasets", response_model=DatasetPage,
            summary="Datasets of the departments one prepares for (all of them for the data office)")
def datasets_list(
    session: SessionDep, actor: SignedInDep, limit: Limit = 50, offset: Offset = 0, department: Code = None,
    state: Annotated[str | None, Query(pattern="^(draft|submitted|provider_approved|published|refused|"
                                               "withdrawn)$")] = None,
) -> dict[str, Any]:
    paged = service.dataset_list(session, actor, state=state, department=department, limit=limit,
                                 offset=offset)
    return page_of(paged, lambda ds: dataset_out(session, actor, ds))


@router.post("/datasets", response_model=DatasetDetail, status_code=201,
             summary="Start a publication (发布申请) from a catalog resource: a draft")
def datasets_create(body: DatasetIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    ds = service.dataset_draft(session, actor, resource=body.resource, spec=body.spec())
    session.commit()
    return _detail(session, actor, ds)


@router.get("/datasets/{name}", response_model=DatasetDetail,
            summary="A dataset in any state: metadata, rules, review history, held-back reason")
def datasets_get(name: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return _detail(session, actor, service.dataset_get(session, actor, name))


@router.patch("/datasets/{name}", response_model=DatasetDetail,
              summary="Change metadata or rules; changed rules send a dataset under review back to draft")
def datasets_update(name: str, body: DatasetPatch, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    ds = service.dataset_update(session, actor, name, body.spec())
    session.commit()
    return _detail(session, actor, ds)


@router.post("/datasets/{name}/check", response_model=CheckOut,
             summary="Dry run of the publication check (脱敏与k-匿名检查); writes nothing",
             responses={422: {"description": "a sensitive item has no rule (`rules.<item>`), or "
                                             "quasi-identifier groups are smaller than k"}})
def datasets_check(name: str, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    ds = service.dataset_get(session, actor, name)
    return check_out(service.publication_check(session, ds))


@router.post("/datasets/{name}/submit", response_model=DatasetDetail,
             summary="Submit for review (提交审核): the provider's staff, once the check passes")
def datasets_submit(name: str, session: SessionDep, actor: SignedInDep,
                    body: NoteIn | None = None) -> dict[str, Any]:
    ds = service.dataset_submit(session, actor, name, note=body.note if body else None)
    session.commit()
    return _detail(session, actor, ds)


@router.post("/datasets/{name}/approve", response_model=DatasetDetail,
             summary="Approve the next step: the provider department's admin, then the data office "
                     "(which publishes)")
def datasets_approve(name: str, session: SessionDep, actor: SignedInDep,
                     body: NoteIn | None = None) -> dict[str, Any]:
    ds = service.dataset_approve(session, actor, name, note=body.note if body else None)
    session.commit()
    return _detail(session, actor, ds)


@router.post("/datasets/{name}/refuse", response_model=DatasetDetail,
             summary="Send a submission back (退回) with the reason")
def datasets_refuse(name: str, body: ReasonIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    ds = service.dataset_refuse(session, actor, name, body.reason)
    session.commit()
    return _detail(session, actor, ds)


@router.post("/datasets/{name}/withdraw", response_model=DatasetDetail,
             summary="Take a published dataset down (撤回) with the reason")
def datasets_withdraw(name: str, body: ReasonIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    ds = service.dataset_withdraw(session, actor, name, body.reason)
    session.commit()
    return _detail(session, actor, ds)


# -- applications for conditional datasets -------------------------------------------------------


@router.get("/applications", response_model=ApplicationPage,
            summary="Applications to decide (one's department's datasets), or one's own with mine=true")
def applications_list(
    session: SessionDep, actor: SignedInDep, mine: bool = False, limit: Limit = 50, offset: Offset = 0,
    state: Annotated[str | None, Query(pattern="^(pending|approved|refused)$")] = None,
) -> dict[str, Any]:
    paged = applications.application_list(session, actor, state=state, mine=mine, limit=limit,
                                          offset=offset)
    return page_of(paged, application_out)


@router.post("/applications", response_model=ApplicationOut, status_code=201,
             summary="Apply for a published conditional dataset (有条件开放申请)")
def applications_create(body: ApplicationIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    ds = service.published(session, body.dataset)
    app = applications.application_create(session, actor, ds, applicant=body.applicant,
                                          contact=body.contact, purpose=body.purpose,
                                          credit_code=body.credit_code)
    session.commit()
    return application_out(app)


@router.post("/applications/{app_id}/decision", response_model=ApplicationOut,
             summary="Approve (the answer carries the access key, once) or refuse with a reason")
def applications_decide(app_id: int, body: ApplicationDecisionIn, session: SessionDep,
                        actor: SignedInDep) -> dict[str, Any]:
    app, key = applications.application_decide(session, actor, app_id, approve=body.approve,
                                               reason=body.reason, valid_days=body.valid_days)
    session.commit()
    return application_out(app, key)


@router.post("/applications/{app_id}/revoke", response_model=RevokedOut,
             summary="Revoke the application's keys (吊销密钥); the next read with them is refused")
def applications_revoke(app_id: int, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    n = applications.key_revoke(session, actor, app_id)
    session.commit()
    return {"application": app_id, "revoked": n}


# -- figures --------------------------------------------------------------------------------------


@router.get("/stats", response_model=StatsOut, description=stats.__doc__,
            summary="Open-data figures (开放数据统计): open rate against the plan, freshness, usage")
def stats_get(session: SessionDep, actor: SignedInDep, department: Code = None) -> dict[str, Any]:
    return stats.figures(session, actor, department=department)
