"""Console administration pages (系统管理): departments, users, API keys, the audit log.

Thin over `core.service`: each page parses the form with the API's request shape, calls one
service function (which checks access and audits), commits, and shows the result. Validation
errors are shown beside the form, not as an error page.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from cityos.core import access, audit, service
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.pages_base import (
    CITY_TZ,
    PAGE_SIZE,
    ConsoleActor,
    ConsoleRoute,
    field_errors,
    is_htmx,
    page_number,
    pager,
    parse_form,
    redirect,
    render,
)
from cityos.core.schemas import ApiKeyIn, DepartmentIn, UserIn
from cityos.core.web import SessionDep, language

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
FormStr = Annotated[str, Form()]
FORM_ERRORS = (ValidationError, Invalid, Conflict, NotFound)
USER_OPS = {  # the status actions of the users page, as service.user_update changes
    "unlock": {"unlock": True},
    "deactivate": {"is_active": False},
    "activate": {"is_active": True},
}


def _status(exc: Exception) -> int:
    return 422 if isinstance(exc, ValidationError) else int(getattr(exc, "status", 422))


def _departments_choice(session: SessionDep, actor: ConsoleActor) -> list[tuple[str, str]]:
    """Departments for the forms' pick lists: (code, "name (code)"), the first 500 in tree order."""
    paged = service.department_list(session, actor, limit=service.MAX_PAGE)
    return [(d.code, f"{d.name} ({d.code})") for d in paged.items]


# -- departments ------------------------------------------------------------------------------


def _departments(request: Request, session: SessionDep, actor: ConsoleActor, *, q: str,
                 page: int, status: int = 200, **context: Any) -> Response:
    paged = service.department_list(session, actor, q=q or None, limit=PAGE_SIZE,
                                    offset=(page - 1) * PAGE_SIZE)
    ctx = dict(actor=actor, paged=paged, pager=pager(request, paged.total, page), q=q,
               kinds=service.DEPARTMENT_KINDS, current="departments", **context)
    if is_htmx(request):
        return render(request, "console/_departments_table.html", **ctx)
    can_write = access.reach_of(actor, "department.write") is not None
    return render(request, "console/departments.html", status=status, can_write=can_write,
                  **ctx)


@router.get("/departments", response_class=HTMLResponse)
def departments(request: Request, session: SessionDep, actor: ConsoleActor, q: str = "",
                page: str = "1", created: str = "") -> Response:
    """Departments (部门), 50 a page, with live search."""
    return _departments(request, session, actor, q=q[:100], page=page_number(page),
                        created=created[:32], form={}, errors={})


@router.post("/departments", response_class=HTMLResponse)
def departments_create(
    request: Request, session: SessionDep, actor: ConsoleActor, code: FormStr = "",
    name: FormStr = "", name_en: FormStr = "", kind: FormStr = "", parent_code: FormStr = "",
    admin_code: FormStr = "", credit_code: FormStr = "",
) -> Response:
    """Create a department (service.department_create checks department.write)."""
    form = dict(code=code, name=name, name_en=name_en, kind=kind, parent_code=parent_code,
                admin_code=admin_code, credit_code=credit_code)
    try:
        body = parse_form(DepartmentIn, form)
        dept = service.department_create(session, actor, **body.model_dump())
    except FORM_ERRORS as exc:
        session.rollback()
        return _departments(request, session, actor, q="", page=1, status=_status(exc),
                            form=form, errors=field_errors(exc, language(request)))
    session.commit()
    return redirect("/console/departments?" + urlencode({"q": dept.code, "created": dept.code}))


# -- users ------------------------------------------------------------------------------------


def _users(request: Request, session: SessionDep, actor: ConsoleActor, *, filters: dict[str, str],
           page: int, status: int = 200, **context: Any) -> Response:
    lang = language(request)
    try:
        paged = service.user_list(
            session, actor, department_code=filters["department"] or None,
            role=filters["role"] or None, q=filters["q"] or None, limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE)
        filter_errors: dict[str, str] = {}
    except (Invalid, NotFound) as exc:
        paged, filter_errors = service.Paged([], 0, PAGE_SIZE, 0), field_errors(exc, lang)
    rows = [{**service.user_public(u), "can_write": u.id != actor.user_id and access.decide(
        actor, "user.write", service.user_target(u), session).allowed} for u in paged.items]
    can_write = access.reach_of(actor, "user.write") is not None
    roles = [r for r in access.ROLES if actor.role == access.PLATFORM_ADMIN
             or r != access.PLATFORM_ADMIN]
    return render(request, "console/users.html", status=status, actor=actor, rows=rows,
                  pager=pager(request, paged.total, page), filters=filters,
                  filter_errors=filter_errors, can_write=can_write, role_choices=roles,
                  departments=_departments_choice(session, actor), current="users", **context)


@router.get("/users", response_class=HTMLResponse)
def users(request: Request, session: SessionDep, actor: ConsoleActor, department: str = "",
          role: str = "", q: str = "", page: str = "1", created: str = "",
          changed: str = "") -> Response:
    """Users (用户) the signed-in staff may see, with masked ID and phone numbers."""
    filters = {"department": department[:32], "role": role[:32], "q": q[:64]}
    return _users(request, session, actor, filters=filters, page=page_number(page),
                  created=created[:64], changed=changed[:64], form={}, errors={})


@router.post("/users", response_class=HTMLResponse)
def users_create(
    request: Request, session: SessionDep, actor: ConsoleActor, username: FormStr = "",
    password: FormStr = "", department_code: FormStr = "", role: FormStr = "",
    display_name: FormStr = "", id_number: FormStr = "", phone: FormStr = "",
) -> Response:
    """Create a user (service.user_create checks user.write and encrypts ID and phone)."""
    form = dict(username=username, password=password, department_code=department_code, role=role,
                display_name=display_name, id_number=id_number, phone=phone)
    try:
        body = parse_form(UserIn, form)
        user = service.user_create(session, actor, **body.model_dump())
    except FORM_ERRORS as exc:
        session.rollback()
        form.pop("password")  # never echo a password back into the page
        filters = {"department": "", "role": "", "q": ""}
        return _users(request, session, actor, filters=filters, page=1, status=_status(exc),
                      form=form, errors=field_errors(exc, language(request)))
    session.commit()
    return redirect("/console/users?" + urlencode({"q": user.username, "created": user.username}))


@router.post("/users/{username}/status")
def users_status(request: Request, session: SessionDep, actor: ConsoleActor, username: str,
                 op: FormStr = "") -> Response:
    """Unlock, deactivate or reactivate an account (service.user_update)."""
    if op not in USER_OPS:
        raise Invalid("op", f"one of {', '.join(USER_OPS)}")
    user = service.user_update(session, actor, username, USER_OPS[op])
    session.commit()
    return redirect("/console/users?" + urlencode({"q": user.username, "changed": user.username}))


# -- API keys ---------------------------------------------------------------------------------


def _apikeys(request: Request, session: SessionDep, actor: ConsoleActor, *, page: int,
             status: int = 200, headers: dict[str, str] | None = None,
             **context: Any) -> Response:
    paged = service.apikey_list(session, actor, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    can_write = access.reach_of(actor, "apikey.write") is not None
    return render(request, "console/apikeys.html", status=status, headers=headers, actor=actor,
                  rows=[service.apikey_public(k) for k in paged.items],
                  pager=pager(request, paged.total, page), can_write=can_write,
                  permissions=access.PERMISSIONS, current="apikeys",
                  departments=_departments_choice(session, actor) if can_write else [],
                  **context)


@router.get("/apikeys", response_class=HTMLResponse)
def apikeys(request: Request, session: SessionDep, actor: ConsoleActor, page: str = "1",
            revoked: str = "") -> Response:
    """API keys (接口密钥) of the departments the signed-in admin manages."""
    return _apikeys(request, session, actor, page=page_number(page), revoked=revoked[:16],
                    form={"department_code": actor.department_code}, errors={})


@router.post("/apikeys", response_class=HTMLResponse)
def apikeys_create(
    request: Request, session: SessionDep, actor: ConsoleActor, name: FormStr = "",
    department_code: FormStr = "", expires_days: FormStr = "",
    scopes: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Issue a key; it is shown on this one answer and never again (so: no-store)."""
    form: dict[str, Any] = dict(name=name, department_code=department_code,
                                expires_days=expires_days, scopes=scopes or [])
    try:
        body = parse_form(ApiKeyIn, form)
        raw, key = service.apikey_create(session, actor, **body.model_dump())
    except FORM_ERRORS as exc:
        session.rollback()
        return _apikeys(request, session, actor, page=1, status=_status(exc), form=form,
                        errors=field_errors(exc, language(request)))
    session.commit()
    return _apikeys(request, session, actor, page=1, status=201,
                    headers={"Cache-Control": "no-store"},
                    issued=service.apikey_public(key, raw), form={}, errors={})


@router.post("/apikeys/{prefix}/revoke")
def apikeys_revoke(session: SessionDep, actor: ConsoleActor, prefix: str) -> Response:
    """Revoke a key at once (service.apikey_revoke checks apikey.write)."""
    key = service.apikey_revoke(session, actor, prefix)
    session.commit()
    return redirect("/console/apikeys?" + urlencode({"revoked": key.prefix}))


# -- audit log --------------------------------------------------------------------------------


def _day(value: str, field: str, *, end: bool = False) -> dt.datetime | None:
    """A date from the filter form as the city's midnight (the day after it, for `until`)."""
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise Invalid(field, "YYYY-MM-DD") from None
    return dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time(), CITY_TZ)


def _audit(request: Request, session: SessionDep, actor: ConsoleActor, filters: dict[str, str],
           page: int, status: int = 200, **context: Any) -> Response:
    try:
        paged = service.audit_list(
            session, actor, actor_name=filters["actor"] or None,
            action=filters["action"] or None, outcome=filters["outcome"] or None,
            department_code=filters["department"] or None,
            since=_day(filters["since"], "since"), until=_day(filters["until"], "until", end=True),
            limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        errors: dict[str, str] = {}
    except Invalid as exc:
        paged, errors = service.Paged([], 0, PAGE_SIZE, 0), field_errors(exc, language(request))
    can_verify = access.reach_of(actor, "audit.verify") is not None
    return render(request, "console/audit.html", status=status, actor=actor, paged=paged,
                  pager=pager(request, paged.total, page), filters=filters, errors=errors,
                  outcomes=audit.OUTCOMES, can_verify=can_verify, current="audit", **context)


@router.get("/audit", response_class=HTMLResponse)
def audit_log(
    request: Request, session: SessionDep, actor: ConsoleActor,
    actor_name: Annotated[str, Query(alias="actor")] = "", action: str = "", outcome: str = "",
    department: str = "", since: str = "", until: str = "", page: str = "1",
) -> Response:
    """The audit log (审计日志), newest first, for auditors."""
    filters = {"actor": actor_name[:64], "action": action[:64], "outcome": outcome[:16],
               "department": department[:32], "since": since[:10], "until": until[:10]}
    return _audit(request, session, actor, filters, page_number(page))


@router.post("/audit/verify", response_class=HTMLResponse)
def audit_verify(request: Request, session: SessionDep, actor: ConsoleActor) -> Response:
    """Walk the hash chain (校验审计链) and say whether it is intact or where it breaks."""
    result = service.audit_verify(session, actor)
    if is_htmx(request):
        return render(request, "console/_verify.html", actor=actor, result=result)
    filters = dict.fromkeys(("actor", "action", "outcome", "department", "since", "until"), "")
    return _audit(request, session, actor, filters, 1, result=result)


@router.get("/audit/verify")
def audit_verify_again(request: Request, actor: ConsoleActor) -> Response:
    """Where the language switch of a verify result leads: back to the log."""
    lang = request.query_params.get("lang")
    return redirect("/console/audit" + (f"?{urlencode({'lang': lang})}" if lang else ""))
