"""Sharing (共享): requests, decisions and grants.

A department asks for another's resource with a purpose, a legal basis, the fields and rows it
needs and until when. The catalog's share type decides the path: unconditional (无条件共享) is
granted at once, conditional (有条件共享) waits for the provider's decision within 10 working
days (tracked, reminded, marked overdue), not shared (不予共享) is refused with the catalog's
reason. Reads through a grant are `hub.exchange`'s, webhooks `hub.webhooks`'; both are
re-exported here, so callers need this module only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Select, and_, not_, select
from sqlalchemy.orm import Session, selectinload

from cityos.core import access, audit, workdays
from cityos.core.access import Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.service import Paged, paginate
from cityos.hub import filters, store
from cityos.hub.exchange import ReadResult, RequestMeta, request_hash, rows_read
from cityos.hub.models import Grant, Resource, ShareRequest
from cityos.hub.service import keyring, layout_of, resource_by_code, resource_target
from cityos.hub.webhooks import deliveries_run, notify_change, subscription_create, verify_signature

__all__ = [
    "ReadResult", "RequestMeta", "deliveries_run", "grant_active", "grant_by_id", "grant_ids", "grant_list",
    "grant_revoke", "is_overdue", "notify_change", "request_by_id", "request_create", "request_decide",
    "request_get", "request_hash", "request_list", "request_remind", "rows_read", "subscription_create",
    "verify_signature",
]

DECISION_DAYS = 10  # working days a provider has to decide (10 个工作日内答复)
REMIND_DAYS = 2  # remind when the deadline is this many working days away
STATES = ("pending", "granted", "refused", "withdrawn")
SYSTEM_NAME = "system"


def _dept_target(actor: Actor, kind: str) -> Target:
    return Target(kind, None, actor.department_id, actor.department_path)


def _check_fields(res: Resource, fields: Sequence[str], name: str = "fields") -> list[str]:
    known = [i.name for i in res.items]
    if not fields:
        raise Invalid(name, "name at least one item / 至少列出一个信息项")
    for f in fields:
        if f not in known:
            raise Invalid(name, f"no such item {f!r} / 无此信息项")
    if len(set(fields)) != len(fields):
        raise Invalid(name, "an item is listed twice / 信息项重复")
    return [n for n in known if n in set(fields)]


def _check_filter(res: Resource, row_filter: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate a grant's row filter and return it typed as JSON ({field, op, value})."""
    items = {i.name: i for i in res.items}
    conds = []
    for n, raw in enumerate(row_filter):
        if not isinstance(raw, dict) or not isinstance(raw.get("field"), str) or "op" not in raw:
            raise Invalid(f"row_filter[{n}]", "needs field, op and value / 须含 field、op、value")
        cond = filters.typed(items, store.Cond(raw["field"], str(raw["op"]), raw.get("value")))
        if items[cond.field].encrypted:
            # A grant's filter is stored in clear text; a sensitive value must not be.
            raise Invalid(cond.field,
                          "a sensitive item cannot limit a grant's rows / 敏感信息项不能作为授权行条件")
        conds.append(cond)
    store.where(layout_of(res), keyring(), conds)  # operators fit the types: checked in one place
    return [{"field": c.field, "op": c.op, "value": filters.jsonable(c.value)} for c in conds]


def _city_today() -> dt.date:
    return dt.datetime.now(workdays.CITY_TZ).date()


def request_create(
    session: Session, actor: Actor, code: str, *, purpose: str, legal_basis: str | None,
    fields: Sequence[str], row_filter: Sequence[dict[str, Any]] = (), valid_until: dt.date | None = None,
) -> ShareRequest:
    """Ask for another department's resource (共享申请); granted, queued or refused by its share type."""
    access.require(actor, "hub.request.create", _dept_target(actor, "hub.request"), session)
    res = resource_by_code(session, code)
    if actor.department_id is None:
        raise Invalid("department", "only a department may ask / 须以部门身份申请")
    if res.department_id == actor.department_id:
        raise Invalid("resource", "this is your own department's resource / 本部门资源无需申请")
    if not (purpose or "").strip():
        raise Invalid("purpose", "state the purpose of use / 须说明用途")
    if valid_until is not None and valid_until < _city_today():
        raise Invalid("valid_until", "lies in the past / 不能早于今天")
    names = _check_fields(res, fields)
    typed_filter = _check_filter(res, row_filter)
    if session.scalar(select(ShareRequest.id).where(
            ShareRequest.resource_id == res.id, ShareRequest.department_id == actor.department_id,
            ShareRequest.state == "pending")):
        raise Conflict("a request for this resource is already pending / 已有待审核的申请", "resource")
    now = utcnow()
    req = ShareRequest(
        resource_id=res.id, department_id=actor.department_id, requested_by=actor.name,
        purpose=purpose.strip(), legal_basis=(legal_basis or "").strip() or None, fields=names,
        row_filter=typed_filter, valid_until=valid_until, created_at=now,
    )
    req.resource = res
    if res.share_type == "none" or res.secret:
        req.state, req.decided_by, req.decided_at = "refused", SYSTEM_NAME, now
        req.reason = ("classified: not shared through the platform / 涉密资源不通过平台共享" if res.secret
                      else res.share_condition or "not shared (不予共享)")
    elif res.share_type == "unconditional":
        req.state, req.decided_by, req.decided_at = "granted", SYSTEM_NAME, now
    else:
        req.state = "pending"
        req.due_at = workdays.add_working_days(workdays.current(session), now, DECISION_DAYS).at
    session.add(req)
    session.flush()
    grant = _grant_from(session, req, SYSTEM_NAME) if req.state == "granted" else None
    audit.append(session, actor=actor.name, action="hub.request.create", department=actor.department_code,
                 object_type="hub.request", object_id=req.id, purpose=req.purpose,
                 detail={"resource": res.code, "state": req.state, "fields": names,
                         "filter": filters.summary({i.name: i for i in res.items},
                                                   [store.Cond(**c) for c in typed_filter]),
                         "grant": grant.id if grant else None,
                         "due_at": req.due_at.isoformat() if req.due_at else None})
    return req


def _grant_from(session: Session, req: ShareRequest, by: str, fields: list[str] | None = None,
                row_filter: list[dict[str, Any]] | None = None,
                valid_until: dt.date | None = None) -> Grant:
    grant = Grant(resource_id=req.resource_id, department_id=req.department_id, request_id=req.id,
                  purpose=req.purpose, fields=fields or req.fields,
                  row_filter=req.row_filter if row_filter is None else row_filter,
                  valid_until=valid_until or req.valid_until, granted_by=by)
    session.add(grant)
    session.flush()
    return grant


def request_by_id(session: Session, request_id: int) -> ShareRequest:
    req = session.scalar(select(ShareRequest).where(ShareRequest.id == request_id).options(
        selectinload(ShareRequest.resource).selectinload(Resource.items),
        selectinload(ShareRequest.resource).selectinload(Resource.department),
        selectinload(ShareRequest.department)))
    if req is None:
        raise NotFound("request", request_id)
    return req


def grant_ids(session: Session, request_ids: Sequence[int]) -> dict[int, int]:
    """The grant each of these requests led to, by request id."""
    if not request_ids:
        return {}
    rows = session.execute(select(Grant.request_id, Grant.id).where(Grant.request_id.in_(list(request_ids))))
    return {int(r): int(g) for r, g in rows if r is not None}


def request_get(session: Session, actor: Actor, request_id: int) -> ShareRequest:
    """One request, seen by the requesting or the providing department."""
    req = request_by_id(session, request_id)
    asker = Target("hub.request", req.id, req.department_id, req.department.path)
    provider = Target("hub.request", req.id, req.resource.department_id, req.resource.department.path)
    # Either side may look: the requester's check decides if it passes, the provider's otherwise.
    target = asker if access.decide(actor, "hub.request.read", asker, session).allowed else provider
    access.require(actor, "hub.request.read", target, session)
    return req


def request_decide(
    session: Session, actor: Actor, request_id: int, *, approve: bool, reason: str | None = None,
    fields: Sequence[str] | None = None, row_filter: Sequence[dict[str, Any]] | None = None,
    valid_until: dt.date | None = None,
) -> ShareRequest:
    """The provider approves (审核通过, possibly narrower) or refuses (不予共享, with a reason)."""
    req = request_by_id(session, request_id)
    res = req.resource
    access.require(actor, "hub.request.decide", resource_target(res), session)
    if req.state != "pending":
        raise Conflict(f"the request is already {req.state} / 申请已处理", "state")
    reason = (reason or "").strip() or None
    grant: Grant | None = None
    if not approve:
        if reason is None:
            raise Invalid("reason", "a refusal needs a reason / 不予共享须说明理由")
        req.state = "refused"
    else:
        names = req.fields if fields is None else _check_fields(res, fields)
        wider = [f for f in names if f not in req.fields]
        if wider:
            raise Invalid("fields",
                          f"{wider[0]} was not asked for: a grant may only narrow / 授权不能超出申请范围")
        typed = req.row_filter if row_filter is None else _check_filter(res, row_filter)
        kept = {orjson.dumps(c, option=orjson.OPT_SORT_KEYS) for c in typed}
        if any(orjson.dumps(c, option=orjson.OPT_SORT_KEYS) not in kept for c in req.row_filter):
            raise Invalid("row_filter", "keep every condition of the request: a grant may only narrow "
                          "/ 须保留申请的全部行条件，授权只能收窄")
        if valid_until is not None and req.valid_until is not None and valid_until > req.valid_until:
            raise Invalid("valid_until", "later than asked for / 不能晚于申请的期限")
        if valid_until is not None and valid_until < _city_today():
            raise Invalid("valid_until", "lies in the past / 不能早于今天")
        req.state = "granted"
        grant = _grant_from(session, req, actor.name, names, typed, valid_until)
    req.decided_by, req.decided_at, req.reason = actor.name, utcnow(), reason
    audit.append(session, actor=actor.name, action="hub.request.decide", department=actor.department_code,
                 object_type="hub.request", object_id=req.id,
                 detail={"resource": res.code, "state": req.state, "reason": reason,
                         "grant": grant.id if grant else None,
                         "fields": grant.fields if grant else None})
    return req


def _overdue_clause(now: dt.datetime) -> Any:
    return and_(ShareRequest.state == "pending", ShareRequest.due_at.is_not(None), ShareRequest.due_at < now)


def is_overdue(req: ShareRequest, now: dt.datetime | None = None) -> bool:
    """Still pending after its deadline (超期)."""
    return req.state == "pending" and req.due_at is not None and req.due_at < (now or utcnow())


def _in_box(stmt: Select[Any], model: Any, box: str, actor: Actor) -> Select[Any]:
    """Incoming: on my department's resources; outgoing: asked for or held by my department."""
    if box == "incoming":
        return stmt.join(Resource, Resource.id == model.resource_id).where(
            Resource.department_id == actor.department_id)
    if box == "outgoing":
        return stmt.where(model.department_id == actor.department_id)
    raise Invalid("box", "incoming or outgoing / 须为 incoming 或 outgoing")


def request_list(
    session: Session, actor: Actor, *, box: str = "outgoing", state: str | None = None,
    overdue: bool | None = None, limit: int = 50, offset: int = 0,
) -> Paged:
    """Requests to my department's resources (incoming) or from my department (outgoing)."""
    access.require(actor, "hub.request.read", _dept_target(actor, "hub.request"), session)
    stmt: Select[Any] = select(ShareRequest).options(
        selectinload(ShareRequest.resource).selectinload(Resource.department),
        selectinload(ShareRequest.department))
    stmt = _in_box(stmt, ShareRequest, box, actor)
    if state is not None:
        if state not in STATES:
            raise Invalid("state", f"one of {', '.join(STATES)} / 状态不合法")
        stmt = stmt.where(ShareRequest.state == state)
    if overdue is not None:
        clause = _overdue_clause(utcnow())
        stmt = stmt.where(clause if overdue else not_(clause))
    return paginate(session, stmt.order_by(ShareRequest.id.desc()), limit, offset)


def request_remind(session: Session, now: dt.datetime | None = None) -> list[ShareRequest]:
    """Mark pending requests within 2 working days of their deadline (催办); for a scheduler."""
    now = now or utcnow()
    cal = workdays.current(session)
    due = session.scalars(select(ShareRequest).where(
        ShareRequest.state == "pending", ShareRequest.due_at.is_not(None),
        ShareRequest.reminded_at.is_(None)).options(
        selectinload(ShareRequest.resource).selectinload(Resource.department))).all()
    marked = []
    for req in due:
        assert req.due_at is not None
        if workdays.working_days_between(cal, now, req.due_at) <= REMIND_DAYS:
            req.reminded_at = now
            marked.append(req)
            audit.append(session, actor=SYSTEM_NAME, action="hub.request.remind",
                         department=req.resource.department.code, object_type="hub.request",
                         object_id=req.id, detail={"due_at": req.due_at.isoformat(),
                                                   "overdue": is_overdue(req, now)})
    return marked


# -- grants ---------------------------------------------------------------------------------------

def grant_by_id(session: Session, grant_id: int) -> Grant:
    grant = session.scalar(select(Grant).where(Grant.id == grant_id).options(
        selectinload(Grant.resource).selectinload(Resource.department),
        selectinload(Grant.department)))
    if grant is None:
        raise NotFound("grant", grant_id)
    return grant


def grant_active(grant: Grant, today: dt.date | None = None) -> bool:
    """Not revoked, not expired."""
    today = today or _city_today()
    return grant.revoked_at is None and (grant.valid_until is None or grant.valid_until >= today)


def grant_list(session: Session, actor: Actor, *, box: str = "outgoing", active: bool | None = None,
               limit: int = 50, offset: int = 0) -> Paged:
    """Grants on my department's resources (incoming) or held by my department (outgoing)."""
    access.require(actor, "hub.request.read", _dept_target(actor, "hub.grant"), session)
    stmt: Select[Any] = select(Grant).options(
        selectinload(Grant.resource).selectinload(Resource.department), selectinload(Grant.department))
    stmt = _in_box(stmt, Grant, box, actor)
    if active is not None:
        today = _city_today()
        live = and_(Grant.revoked_at.is_(None),
                    (Grant.valid_until.is_(None)) | (Grant.valid_until >= today))
        stmt = stmt.where(live if active else not_(live))
    return paginate(session, stmt.order_by(Grant.id.desc()), limit, offset)


def grant_revoke(session: Session, actor: Actor, grant_id: int, reason: str) -> Grant:
    """Withdraw a grant (撤销授权); the grantee's next read is refused."""
    grant = grant_by_id(session, grant_id)
    access.require(actor, "hub.request.decide", resource_target(grant.resource), session)
    if grant.revoked_at is not None:
        raise Conflict("the grant is already revoked / 授权已撤销", "grant")
    if not (reason or "").strip():
        raise Invalid("reason", "a revocation needs a reason / 撤销须说明理由")
    grant.revoked_at, grant.revoked_by, grant.revoke_reason = utcnow(), actor.name, reason.strip()
    audit.append(session, actor=actor.name, action="hub.grant.revoke", department=actor.department_code,
                 object_type="hub.grant", object_id=grant.id,
                 detail={"resource": grant.resource.code, "grantee": grant.department.code,
                         "reason": grant.revoke_reason})
    return grant
