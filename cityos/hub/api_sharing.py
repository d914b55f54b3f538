"""Sharing API (共享交换): requests and decisions, grants, webhooks, and the consumer read
`GET /api/hub/resources/{code}/rows`. Thin over `hub.sharing`.

Filters of the read are query parameters `field=value` or `field__op=value` (op one of eq, ne,
gt, gte, lt, lte, in, contains, startswith, isnull); values are typed by their item and bound,
never spliced into SQL. An item named like a reserved parameter (purpose, fields, sort, limit,
offset, count, format, lang) is filtered with `name__eq=`.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from cityos.core.errors import Invalid
from cityos.core.service import MAX_OFFSET, MAX_PAGE
from cityos.core.web import SessionDep, SignedInDep
from cityos.hub import sharing, store
from cityos.hub.exchange import MAX_READ_LIMIT
from cityos.hub.models import Grant, ShareRequest
from cityos.hub.schemas_sharing import (
    DecisionIn,
    GrantOut,
    RequestIn,
    RequestOut,
    RevokeIn,
    RowsOut,
    SubscriptionIn,
    SubscriptionOut,
)

router = APIRouter(prefix="/api/hub", tags=["hub sharing"])
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size (1-500)")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
Box = Annotated[str, Query(pattern="^(incoming|outgoing)$",
                           description="incoming: on my department's resources; outgoing: my department's")]
RESERVED = {"purpose", "fields", "sort", "limit", "offset", "count", "format", "lang"}


def page_of(paged: Any, shape: Any) -> dict[str, Any]:
    return {"items": [shape(i) for i in paged.items], "total": paged.total,
            "limit": paged.limit, "offset": paged.offset, "next_offset": paged.next_offset}


def request_out(req: ShareRequest, grant_id: int | None = None) -> dict[str, Any]:
    res = req.resource
    return {
        "id": req.id, "resource": res.code, "resource_name": res.name, "provider": res.department.code,
        "requester": req.department.code, "requested_by": req.requested_by, "purpose": req.purpose,
        "legal_basis": req.legal_basis, "fields": req.fields, "row_filter": req.row_filter,
        "valid_until": req.valid_until, "state": req.state, "due_at": req.due_at,
        "overdue": sharing.is_overdue(req), "reminded_at": req.reminded_at, "decided_by": req.decided_by,
        "decided_at": req.decided_at, "reason": req.reason, "grant_id": grant_id,
        "created_at": req.created_at,
    }


def grant_out(g: Grant) -> dict[str, Any]:
    return {
        "id": g.id, "resource": g.resource.code, "resource_name": g.resource.name,
        "provider": g.resource.department.code, "grantee": g.department.code, "request_id": g.request_id,
        "purpose": g.purpose, "fields": g.fields, "row_filter": g.row_filter, "valid_until": g.valid_until,
        "granted_by": g.granted_by, "created_at": g.created_at, "active": sharing.grant_active(g),
        "revoked_at": g.revoked_at, "revoked_by": g.revoked_by, "revoke_reason": g.revoke_reason,
    }


def _with_grant(session: SessionDep, req: ShareRequest) -> dict[str, Any]:
    return request_out(req, sharing.grant_ids(session, [req.id]).get(req.id))


# -- requests and decisions -----------------------------------------------------------------------


@router.post("/requests", response_model=RequestOut, status_code=201,
             summary="Ask for a resource (共享申请): granted at once, pending, or refused with the reason")
def requests_create(body: RequestIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    req = sharing.request_create(
        session, actor, body.resource, purpose=body.purpose, legal_basis=body.legal_basis,
        fields=body.fields, row_filter=[c.model_dump() for c in body.row_filter],
        valid_until=body.valid_until)
    session.commit()
    return _with_grant(session, req)


@router.get("/requests", summary="Requests to (incoming) or from (outgoing) my department")
def requests_list(
    session: SessionDep, actor: SignedInDep, box: Box = "outgoing",
    state: Annotated[str | None, Query(pattern="^(pending|granted|refused|withdrawn)$")] = None,
    overdue: bool | None = None, limit: Limit = 50, offset: Offset = 0,
) -> dict[str, Any]:
    paged = sharing.request_list(session, actor, box=box, state=state, overdue=overdue, limit=limit,
                                 offset=offset)
    grants = sharing.grant_ids(session, [r.id for r in paged.items])
    return page_of(paged, lambda r: request_out(r, grants.get(r.id)))


@router.get("/requests/{request_id}", response_model=RequestOut)
def requests_get(request_id: int, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return _with_grant(session, sharing.request_get(session, actor, request_id))


@router.post("/requests/{request_id}/decision", response_model=RequestOut,
             summary="Approve (possibly narrower) or refuse with a reason (审核)")
def requests_decide(request_id: int, body: DecisionIn, session: SessionDep,
                    actor: SignedInDep) -> dict[str, Any]:
    req = sharing.request_decide(
        session, actor, request_id, approve=body.approve, reason=body.reason, fields=body.fields,
        row_filter=None if body.row_filter is None else [c.model_dump() for c in body.row_filter],
        valid_until=body.valid_until)
    session.commit()
    return _with_grant(session, req)


# -- grants and subscriptions ---------------------------------------------------------------------


@router.get("/grants", summary="Grants on my department's resources (incoming) or held by it (outgoing)")
def grants_list(session: SessionDep, actor: SignedInDep, box: Box = "outgoing", active: bool | None = None,
                limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    paged = sharing.grant_list(session, actor, box=box, active=active, limit=limit, offset=offset)
    return page_of(paged, grant_out)


@router.post("/grants/{grant_id}/revoke", response_model=GrantOut,
             summary="Revoke a grant (撤销授权); the grantee's next read is refused")
def grants_revoke(grant_id: int, body: RevokeIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    grant = sharing.grant_revoke(session, actor, grant_id, body.reason)
    session.commit()
    return grant_out(grant)


@router.post("/grants/{grant_id}/subscriptions", response_model=SubscriptionOut, status_code=201,
             summary="Subscribe a webhook to the resource's changes; the signing secret is shown once")
def subscriptions_create(grant_id: int, body: SubscriptionIn, session: SessionDep,
                         actor: SignedInDep) -> dict[str, Any]:
    secret, sub = sharing.subscription_create(session, actor, grant_id, body.url)
    session.commit()
    return {"id": sub.id, "grant_id": sub.grant_id, "url": sub.url, "active": sub.active,
            "created_at": sub.created_at, "secret": secret}


# -- the consumer read ----------------------------------------------------------------------------


def _conds(pairs: list[tuple[str, str]]) -> list[store.Cond]:
    """`field=value` and `field__op=value` parameters as conditions (values typed later)."""
    out = []
    for name, value in pairs:
        if name in RESERVED:
            continue
        field, op = name, "eq"
        if "__" in name:
            head, tail = name.rsplit("__", 1)
            if tail not in store.OPS:
                raise Invalid(head, f"unknown operator {tail!r} / 未知运算符")
            field, op = head, tail
        out.append(store.Cond(field, op, value))
    return out


def _sort(text: str | None) -> list[tuple[str, bool]]:
    return [(s.strip().lstrip("-"), s.strip().startswith("-")) for s in (text or "").split(",") if s.strip()]


@router.get(
    "/resources/{code}/rows", response_model=RowsOut,
    responses={200: {"content": {"text/csv": {}}}, 403: {"description": "outside your grant"}},
    summary="Read shared rows (共享数据查询): filter, sort, page, project; JSON or CSV; audited",
    description="Filters: `field=value` or `field__op=value` with op in eq, ne, gt, gte, lt, lte, "
                "in (comma-separated), contains, startswith, isnull (true|false). Every answer carries "
                "`X-Request-Hash` (SHA-256 of method, path, query, caller, purpose, `X-Request-Time` and "
                "the body's SHA-256) and `X-Audit-Record` (the hash of its audit record).",
)
async def rows_read(
    code: str, request: Request, session: SessionDep, actor: SignedInDep,
    purpose: Annotated[str | None, Query(max_length=500, description="why you read (用途); required")] = None,
    x_purpose: Annotated[str | None, Header(max_length=1500,
                                            description="or here, percent-encoded UTF-8")] = None,
    fields: Annotated[str | None, Query(max_length=4000, description="items, e.g. name,district")] = None,
    sort: Annotated[str | None, Query(max_length=500, description="e.g. district,-birth_date")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_READ_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    count: Annotated[bool, Query(description="include the total")] = False,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Response:
    pairs = request.query_params.multi_items()
    names = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    meta = sharing.RequestMeta(method=request.method, path=request.url.path, query=pairs,
                               base_url=str(request.base_url).rstrip("/"))
    result = await run_in_threadpool(partial(
        sharing.rows_read, session, actor, code, purpose=purpose or unquote(x_purpose or ""), fields=names,
        conds=_conds(pairs), sort=_sort(sort), limit=limit, offset=offset, with_total=count, fmt=format,
        request_meta=meta, group_commit=True))
    # Answered only once its audit record is committed; awaited here, so no worker thread waits.
    audit_hash = await asyncio.wrap_future(result.committed) if result.committed else result.audit_hash
    headers = {"X-Request-Hash": result.request_hash, "X-Audit-Record": audit_hash,
               "X-Request-Time": result.time}
    if format == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{code.replace("/", "-")}.csv"'
    return Response(result.body, media_type=result.media_type, headers=headers)
