"""Data hub console, sharing side (共享交换): the request and approval inbox (共享申请/审核), the
population registry search for those entitled (人口基础库查询), and the discrepancy inbox of
cross-checks (多元校核).

Thin over `hub.sharing`, `hub.registries` and `hub.discrepancies`, like `hub.pages`.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from cityos.core import access
from cityos.core.access import Actor
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.identifiers import mask_citizen_id
from cityos.core.pages_base import (
    PAGE_SIZE,
    ConsoleActor,
    ConsoleRoute,
    field_errors,
    page_number,
    pager,
    parse_form,
    redirect,
    render,
)
from cityos.core.service import Paged
from cityos.core.web import SessionDep, language
from cityos.hub import discrepancies, registries, service, sharing
from cityos.hub.schemas_sharing import DecisionIn

router = APIRouter(prefix="/console/hub", route_class=ConsoleRoute, include_in_schema=False)
FormStr = Annotated[str, Form()]
FORM_ERRORS = (ValidationError, Invalid, Conflict, NotFound)
BOXES = ("incoming", "outgoing")


def _status(exc: Exception) -> int:
    return 422 if isinstance(exc, ValidationError) else int(getattr(exc, "status", 422))


# -- requests and approvals -------------------------------------------------------------------


def _requests(request: Request, session: Session, actor: Actor, *, box: str, state: str,
              overdue: str, page: int, status: int = 200, **context: Any) -> Response:
    lang = language(request)
    try:
        paged = sharing.request_list(
            session, actor, box=box, state=state or None,
            overdue={"yes": True, "no": False}.get(overdue), limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE)
        errors: dict[str, str] = {}
    except Invalid as exc:
        paged, errors = Paged([], 0, PAGE_SIZE, 0), field_errors(exc, lang)
    grants = sharing.grant_ids(session, [r.id for r in paged.items])
    rows = [{
        "req": r, "overdue": sharing.is_overdue(r), "grant": grants.get(r.id),
        "titles": {i.name: i.title for i in r.resource.items},
        "can_decide": box == "incoming" and r.state == "pending" and access.decide(
            actor, "hub.request.decide", service.resource_target(r.resource), session).allowed,
    } for r in paged.items]
    ctx: dict[str, Any] = dict(decide_errors={}, decide_form={})
    ctx.update(context)
    return render(request, "console/hub/requests.html", status=status, actor=actor, rows=rows,
                  box=box, filters={"state": state, "overdue": overdue}, errors=errors,
                  states=sharing.STATES, pager=pager(request, paged.total, page), tab="requests",
                  current="hub", **ctx)


@router.get("/requests", response_class=HTMLResponse)
def requests(request: Request, session: SessionDep, actor: ConsoleActor, box: str = "",
             state: str = "", overdue: str = "", page: str = "1", created: str = "",
             decided: str = "") -> Response:
    """Requests to my department's resources (incoming, to approve) or from it (outgoing)."""
    if box not in BOXES:  # those who decide start with what waits for them
        box = "incoming" if access.reach_of(actor, "hub.request.decide") else "outgoing"
    return _requests(request, session, actor, box=box, state=state[:16], overdue=overdue[:4],
                     page=page_number(page), created=created[:12], decided=decided[:12])


@router.post("/requests/{request_id}/decision", response_class=HTMLResponse)
def requests_decide(
    request: Request, session: SessionDep, actor: ConsoleActor, request_id: int,
    approve: FormStr = "", reason: FormStr = "", valid_until: FormStr = "",
    fields: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Approve — possibly for fewer items or a shorter time — or refuse with a reason (审核)."""
    yes = approve == "1"
    form: dict[str, Any] = {"approve": yes, "reason": reason}
    if yes:
        form.update(fields=fields or [], valid_until=valid_until)
    try:
        body = parse_form(DecisionIn, form)
        sharing.request_decide(session, actor, request_id, approve=body.approve, reason=body.reason,
                               fields=body.fields, valid_until=body.valid_until)
    except FORM_ERRORS as exc:
        session.rollback()
        return _requests(request, session, actor, box="incoming", state="", overdue="", page=1,
                         status=_status(exc), decide_form={request_id: form},
                         decide_errors={request_id: field_errors(exc, language(request))})
    session.commit()
    return redirect("/console/hub/requests?" + urlencode({"box": "incoming", "decided": request_id}))


# -- registry search --------------------------------------------------------------------------


def _registry(request: Request, session: Session, actor: Actor, *, status: int = 200,
              **context: Any) -> Response:
    try:
        res = registries.registry_resource(session, "population")
    except NotFound:
        res = None
    entitled = res is not None and access.decide(
        actor, "hub.data.read", service.resource_target(res), session).allowed
    ctx: dict[str, Any] = dict(form={}, errors={}, result=None, searched=None)
    ctx.update(context)
    return render(request, "console/hub/registries.html", status=status, actor=actor, res=res,
                  entitled=entitled, tab="registries", current="hub", **ctx)


@router.get("/registries", response_class=HTMLResponse)
def registry_search(request: Request, session: SessionDep, actor: ConsoleActor) -> Response:
    """Look a person up in the population registry (人口基础库) by ID number, with a purpose;
    for the registry's provider and departments it granted, refused clearly to others."""
    return _registry(request, session, actor)


@router.post("/registries", response_class=HTMLResponse)
def registry_lookup(request: Request, session: SessionDep, actor: ConsoleActor,
                    id_number: FormStr = "", purpose: FormStr = "") -> Response:
    """The lookup itself: a POST, so the ID number is never in a URL, a log or the history."""
    try:
        row = registries.person_lookup(session, actor, id_number.strip(), purpose=purpose)
    except Invalid as exc:
        session.rollback()
        return _registry(request, session, actor, status=422, form={"purpose": purpose},
                         errors=field_errors(exc, language(request)))
    session.commit()  # the lookup is audited with its purpose
    res = registries.registry_resource(session, "population")
    titles = {i.name: (i.title, i.type) for i in res.items}
    shown = [(titles[k][0], mask_citizen_id(str(v)) if titles[k][1] == "citizen_id" and v else v)
             for k, v in (row or {}).items() if k in titles]
    return _registry(request, session, actor, form={"purpose": purpose}, result=shown,
                     searched=mask_citizen_id(id_number.strip().upper()))


# -- discrepancies ----------------------------------------------------------------------------


def _discrepancies(request: Request, session: Session, actor: Actor, *, state: str, page: int,
                   status: int = 200, **context: Any) -> Response:
    lang = language(request)
    try:
        paged = discrepancies.discrepancy_list(session, actor, state=state or None,
                                               limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        errors: dict[str, str] = {}
    except Invalid as exc:
        paged, errors = Paged([], 0, PAGE_SIZE, 0), field_errors(exc, lang)
    resolver = access.reach_of(actor, "hub.discrepancy.resolve") is not None
    rows = []
    for d in paged.items:
        row = discrepancies.discrepancy_public(session, actor, d)
        # Offered to the item's authority; discrepancy_resolve decides again.
        row["can_resolve"] = resolver and d.state == "open" and row["authority"] == actor.department_code
        rows.append(row)
    ctx: dict[str, Any] = dict(resolve_errors={})
    ctx.update(context)
    return render(request, "console/hub/discrepancies.html", status=status, actor=actor, rows=rows,
                  filters={"state": state}, errors=errors, states=discrepancies.STATES,
                  actions=discrepancies.RESOLUTIONS, pager=pager(request, paged.total, page),
                  tab="discrepancies", current="hub", **ctx)


@router.get("/discrepancies", response_class=HTMLResponse)
def discrepancy_inbox(request: Request, session: SessionDep, actor: ConsoleActor,
                      state: str = "open", page: str = "1", resolved: str = "") -> Response:
    """Discrepancies of cross-checks (多元校核) sent to my department, or reported by it."""
    return _discrepancies(request, session, actor, state=state[:16], page=page_number(page),
                          resolved=resolved[:12])


@router.post("/discrepancies/{discrepancy_id}", response_class=HTMLResponse)
def discrepancy_resolve(request: Request, session: SessionDep, actor: ConsoleActor,
                        discrepancy_id: int, action: FormStr = "", note: FormStr = "",
                        value: FormStr = "") -> Response:
    """Confirm the registry, correct it (by default to the reported value), or reject."""
    try:
        discrepancies.discrepancy_resolve(session, actor, discrepancy_id, action=action,
                                          note=note.strip() or None,
                                          value=value.strip() or None)
    except (Invalid, Conflict) as exc:
        session.rollback()
        return _discrepancies(request, session, actor, state="open", page=1, status=_status(exc),
                              resolve_errors={discrepancy_id: field_errors(exc, language(request))})
    session.commit()
    return redirect("/console/hub/discrepancies?" + urlencode({"state": "", "resolved": discrepancy_id}))
