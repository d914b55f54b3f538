"""Core JSON API: sign-in tokens, departments, users, API keys, audit log. Thin over service."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response
from pydantic import Field

from cityos.core import audit, auth, service
from cityos.core.errors import Invalid, Locked, Unauthorized
from cityos.core.schemas import (
    ApiKeyIn,
    ApiKeyOut,
    AuditOut,
    DepartmentIn,
    DepartmentOut,
    Page,
    Strict,
    TokenOut,
    UserIn,
    UserOut,
    UserPatch,
    VerifyOut,
)
from cityos.core.web import ActorDep, SessionDep, SignedInDep, platform_of

router = APIRouter(prefix="/api")
Limit = Annotated[int, Query(ge=1, le=service.MAX_PAGE, description="page size (1-500)")]
Offset = Annotated[int, Query(ge=0, le=service.MAX_OFFSET, description="items to skip")]


def page_of(paged: service.Paged, shape: Any) -> dict[str, Any]:
    return {"items": [shape(i) for i in paged.items], "total": paged.total,
            "limit": paged.limit, "offset": paged.offset, "next_offset": paged.next_offset}


def dept_out(d: Any) -> dict[str, Any]:
    return {"id": d.id, "code": d.code, "name": d.name, "name_en": d.name_en, "kind": d.kind,
            "parent_code": d.parent.code if d.parent else None, "admin_code": d.admin_code,
            "credit_code": d.credit_code}


# -- auth -------------------------------------------------------------------------------------


@router.post("/auth/token", response_model=TokenOut, tags=["auth"],
             summary="OAuth2 password flow: trade a username and password for a bearer token")
def token_create(
    request: Request, session: SessionDep,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=1, max_length=200)],
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
) -> dict[str, Any]:
    settings = platform_of(request).settings
    result = auth.login_check(session, username, password, threshold=settings.lockout_threshold,
                              lock_seconds=settings.lockout_seconds, channel="api")
    if result.error is None and result.user is not None:
        raw, _ = auth.token_issue(session, result.user, "api", settings.token_ttl_seconds)
    session.commit()  # the attempt is audited and counted whatever the outcome
    if result.error == "locked":
        raise Locked("account locked after repeated failures / 账户已锁定，请稍后再试",
                     result.retry_after)
    if result.error is not None:
        raise Unauthorized("wrong username or password / 用户名或密码错误")
    return {"access_token": raw, "token_type": "bearer", "expires_in": settings.token_ttl_seconds}


@router.post("/auth/revoke", status_code=204, tags=["auth"], summary="Revoke the token in use")
def token_revoke(session: SessionDep, actor: SignedInDep) -> Response:
    if actor.token_id is None:
        raise Unauthorized("a bearer token is needed to revoke it / 需要令牌")
    auth.token_revoke(session, token_id=actor.token_id)
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="auth.revoke", object_type="token", object_id=actor.token_id)
    session.commit()
    return Response(status_code=204)


@router.get("/me", response_model=UserOut, tags=["auth"], summary="The signed-in user")
def me(session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    if actor.kind != "user" or actor.user_id is None:
        raise Unauthorized()
    user = service.user_get(session, actor, actor.name)
    return service.user_public(user)


# -- departments ------------------------------------------------------------------------------


@router.get("/departments", response_model=Page[DepartmentOut], tags=["departments"])
def departments_list(
    session: SessionDep, actor: ActorDep, limit: Limit = 50, offset: Offset = 0,
    q: Annotated[str | None, Query(max_length=100)] = None,
    parent: Annotated[str | None, Query(max_length=32)] = None,
    kind: Annotated[str | None, Query(pattern="^(city|district|street|community|bureau)$")] = None,
) -> dict[str, Any]:
    paged = service.department_list(session, actor, q=q, parent_code=parent, kind=kind,
                                    limit=limit, offset=offset)
    return page_of(paged, dept_out)


@router.get("/departments/{code}", response_model=DepartmentOut, tags=["departments"])
def departments_get(code: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return dept_out(service.department_get(session, actor, code))


@router.post("/departments", response_model=DepartmentOut, status_code=201, tags=["departments"])
def departments_create(body: DepartmentIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    dept = service.department_create(session, actor, **body.model_dump())
    session.commit()
    return dept_out(dept)


# -- users ------------------------------------------------------------------------------------


@router.get("/users", response_model=Page[UserOut], tags=["users"])
def users_list(
    session: SessionDep, actor: ActorDep, limit: Limit = 50, offset: Offset = 0,
    department: Annotated[str | None, Query(max_length=32)] = None,
    role: Annotated[str | None, Query(max_length=32)] = None,
    q: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    paged = service.user_list(session, actor, department_code=department, role=role, q=q,
                              limit=limit, offset=offset)
    return page_of(paged, service.user_public)


class IdLookup(Strict):
    id_number: str = Field(min_length=1, max_length=32)


@router.post("/users/lookup", response_model=Page[UserOut], tags=["users"],
             summary="Find users by ID number (blind index; the number travels in the body, "
                     "never in a URL)")
def users_lookup(body: IdLookup, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    paged = service.user_list(session, actor, id_number=body.id_number, limit=50, offset=0)
    session.commit()  # the lookup is audited
    return page_of(paged, service.user_public)


@router.get("/users/{username}", response_model=UserOut, tags=["users"])
def users_get(
    username: str, session: SessionDep, actor: SignedInDep,
    purpose: Annotated[str | None, Query(max_length=200, description="why you read it")] = None,
) -> dict[str, Any]:
    user = service.user_get(session, actor, username, purpose)
    session.commit()  # the read of personal data is audited
    return service.user_public(user)


@router.post("/users", response_model=UserOut, status_code=201, tags=["users"])
def users_create(body: UserIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    user = service.user_create(session, actor, **body.model_dump())
    session.commit()
    return service.user_public(user)


@router.patch("/users/{username}", response_model=UserOut, tags=["users"])
def users_update(username: str, body: UserPatch, session: SessionDep,
                 actor: SignedInDep) -> dict[str, Any]:
    user = service.user_update(session, actor, username, body.model_dump(exclude_unset=True))
    session.commit()
    return service.user_public(user)


# -- API keys ---------------------------------------------------------------------------------


@router.get("/apikeys", response_model=Page[ApiKeyOut], tags=["apikeys"])
def apikeys_list(session: SessionDep, actor: SignedInDep, limit: Limit = 50,
                 offset: Offset = 0) -> dict[str, Any]:
    return page_of(service.apikey_list(session, actor, limit=limit, offset=offset),
                   service.apikey_public)


@router.post("/apikeys", response_model=ApiKeyOut, status_code=201, tags=["apikeys"],
             summary="Issue an API key; the key is in the answer once and never again")
def apikeys_create(body: ApiKeyIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    raw, key = service.apikey_create(session, actor, **body.model_dump())
    session.commit()
    return service.apikey_public(key, raw)


@router.delete("/apikeys/{prefix}", status_code=204, tags=["apikeys"])
def apikeys_revoke(prefix: str, session: SessionDep, actor: SignedInDep) -> Response:
    service.apikey_revoke(session, actor, prefix)
    session.commit()
    return Response(status_code=204)


# -- audit ------------------------------------------------------------------------------------


@router.get("/audit", response_model=Page[AuditOut], tags=["audit"])
def audit_list(
    session: SessionDep, actor: SignedInDep, limit: Limit = 50, offset: Offset = 0,
    actor_name: Annotated[str | None, Query(alias="actor", max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Annotated[str | None, Query(pattern="^(success|denied|failure)$")] = None,
    department: Annotated[str | None, Query(max_length=32)] = None,
    since: dt.datetime | None = None, until: dt.datetime | None = None,
) -> dict[str, Any]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise Invalid(name, "needs a time zone, e.g. 2026-01-01T00:00:00+08:00")
    paged = service.audit_list(session, actor, actor_name=actor_name, action=action,
                               outcome=outcome, department_code=department, since=since,
                               until=until, limit=limit, offset=offset)
    return page_of(paged, lambda r: AuditOut.model_validate(r).model_dump())


@router.post("/audit/verify", response_model=VerifyOut, tags=["audit"],
             summary="Walk the hash chain and name the first record that was tampered with")
def audit_verify(session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    result = service.audit_verify(session, actor)
    return {"ok": result.ok, "checked": result.checked, "first_bad_seq": result.first_bad_seq,
            "reason": result.reason, "message": result.message()}
