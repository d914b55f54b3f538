"""Data hub console (数据共享交换平台 控制台): the catalog browser (资源目录), the negative list
(负面清单), a resource's page — its elements, items, versions, quality, grants and usage, the
upload with its progress bar, the request form — and version diffs.

Thin over `hub.service`, `hub.loading`, `hub.sharing` and `hub.stats`: each page calls the
service functions (which check access and audit), commits what they wrote, and renders. The
request and approval inbox, registry search and discrepancies are in `pages_sharing`.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import access, i18n
from cityos.core import service as core_service
from cityos.core.access import Actor
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.models import Department
from cityos.core.pages_base import (
    PAGE_SIZE,
    ConsoleActor,
    ConsoleRoute,
    Pager,
    field_errors,
    is_htmx,
    page_number,
    pager,
    parse_form,
    redirect,
    render,
)
from cityos.core.service import MAX_PAGE, Paged
from cityos.core.web import SessionDep, language
from cityos.hub import api_loading, loading, pages_sharing, service, sharing, stats, store
from cityos.hub.models import Resource
from cityos.hub.schemas_sharing import RequestIn

TEMPLATES = Path(__file__).resolve().parent / "templates"
console = APIRouter(prefix="/console/hub", route_class=ConsoleRoute, include_in_schema=False)
FormStr = Annotated[str, Form()]
FORM_ERRORS = (ValidationError, Invalid, Conflict, NotFound)
# The catalog's code lists, each shown through the locale keys hub.<kind>.<code>.
VOCABULARIES: dict[str, Any] = {
    "category": service.CATEGORIES, "base_branch": service.BASE_BRANCHES,
    "share_type": service.SHARE_TYPES, "open_type": service.OPEN_TYPES,
    "update_cycle": service.UPDATE_CYCLES, "sensitivity": service.SENSITIVITIES,
    "format": service.FORMATS, "share_method": service.SHARE_METHODS, "type": store.TYPES,
}
FACETS = ("category", "base_branch", "department", "share_type", "open_type", "update_cycle")
EXPORTS = ("json", "csv", "xlsx")
VERSIONS_SHOWN = 20
REPORT_SHOWN = 50  # row errors on the page; the CSV has them all


def status_of(exc: Exception) -> int:
    return 422 if isinstance(exc, ValidationError) else int(getattr(exc, "status", 422))


def choices(kind: str, lang: str) -> list[tuple[str, str]]:
    """A code list as (code, caption) pairs for a pick list, in the visitor's language."""
    return [(k, i18n.t(f"hub.{kind}.{k}", lang)) for k in VOCABULARIES[kind]]


def departments_choice(session: Session, actor: Actor) -> list[tuple[str, str]]:
    """Departments for pick lists: (code, "name (code)"), the first 500 in tree order."""
    paged = core_service.department_list(session, actor, limit=MAX_PAGE)
    return [(d.code, f"{d.name} ({d.code})") for d in paged.items]


def can(actor: Actor, action: str, res: Resource, session: Session) -> bool:
    """Whether the page should offer an action on this resource (the service checks again)."""
    return access.decide(actor, action, service.resource_target(res), session).allowed


# -- the catalog ------------------------------------------------------------------------------


@console.get("", response_class=HTMLResponse)
def catalog(
    request: Request, session: SessionDep, actor: ConsoleActor, q: str = "", category: str = "",
    base_branch: str = "", department: str = "", share_type: str = "", open_type: str = "",
    update_cycle: str = "", page: str = "1",
) -> Response:
    """Search and browse the catalog (资源目录检索), with facets, paging and exports."""
    lang = language(request)
    filters = {"q": q.strip()[:100], "category": category[:32], "base_branch": base_branch[:32],
               "department": department[:32], "share_type": share_type[:32],
               "open_type": open_type[:32], "update_cycle": update_cycle[:32]}
    n = page_number(page)
    try:
        paged = service.resource_list(session, actor, **{k: v or None for k, v in filters.items()},
                                      limit=PAGE_SIZE, offset=(n - 1) * PAGE_SIZE)
        errors: dict[str, str] = {}
    except (Invalid, NotFound) as exc:
        paged, errors = Paged([], 0, PAGE_SIZE, 0), field_errors(exc, lang)
    query = urlencode({k: filters[k] for k in ("q", "department", "category") if filters[k]})
    exports = [(fmt, f"/api/hub/resources/export?{urlencode({'format': fmt})}"
                + (f"&{query}" if query else "")) for fmt in EXPORTS]
    options = {kind: choices(kind, lang) for kind in FACETS if kind != "department"}
    options["department"] = departments_choice(session, actor)
    return render(request, "console/hub/catalog.html", actor=actor, paged=paged, filters=filters,
                  errors=errors, pager=pager(request, paged.total, n), options=options,
                  exports=exports, tab="catalog", current="hub")


@console.get("/negative", response_class=HTMLResponse)
def negative(request: Request, session: SessionDep, actor: ConsoleActor, department: str = "",
             page: str = "1") -> Response:
    """The negative list (负面清单): what departments do not share, and why."""
    n = page_number(page)
    filters = {"department": department[:32]}
    try:
        paged = service.negative_list(session, actor, department=filters["department"] or None,
                                      limit=PAGE_SIZE, offset=(n - 1) * PAGE_SIZE)
        errors: dict[str, str] = {}
    except NotFound as exc:
        paged, errors = Paged([], 0, PAGE_SIZE, 0), field_errors(exc, language(request))
    return render(request, "console/hub/negative.html", actor=actor, paged=paged, filters=filters,
                  errors=errors, pager=pager(request, paged.total, n),
                  departments=departments_choice(session, actor), tab="negative", current="hub")


# -- a resource -------------------------------------------------------------------------------


def _authorities(session: Session, res: Resource) -> dict[int, Department]:
    """The departments named as items' one source (一数一源), by id."""
    ids = {i.authority_department_id for i in res.items if i.authority_department_id}
    if not ids:
        return {}
    return {d.id: d for d in session.scalars(select(Department).where(Department.id.in_(ids)))}


def _grants(session: Session, actor: Actor, res: Resource, provider: bool) -> list[Any]:
    """Grants on this resource: all of them for its provider, one's own for anyone else."""
    if access.reach_of(actor, "hub.request.read") is None:
        return []
    paged = sharing.grant_list(session, actor, box="incoming" if provider else "outgoing",
                               limit=MAX_PAGE)
    return [g for g in paged.items if g.resource_id == res.id]


def _usage(session: Session, actor: Actor, res: Resource) -> list[dict[str, Any]] | None:
    """Reads of this resource per day over the last 30 days, from the audit log (None: the
    viewer may not see the sharing figures)."""
    if access.reach_of(actor, "hub.stats.read") is None:
        return None
    today = dt.datetime.now(stats.CITY_TZ).date()
    days = [today - dt.timedelta(days=n) for n in range(stats.READ_DAYS - 1, -1, -1)]
    # stats.figures counts reads per department; the per-resource counts are its _reads.
    reads = stats._reads(session, days).get(res.code, Counter())
    return [{"day": d.isoformat(), "reads": reads[d]} for d in days]


def versions_pager(code: str, total: int, page: int) -> Pager:
    """The versions' pager; its links lead to the resource page, also from the fragment."""
    pages = max(1, -(-total // VERSIONS_SHOWN))

    def url(n: int) -> str:
        return f"/console/hub/resources/{quote(code)}?page={n}#versions"

    return Pager(page, pages, total, url(page - 1) if page > 1 else None,
                 url(page + 1) if page * VERSIONS_SHOWN < total else None)


def data_context(session: Session, actor: Actor, res: Resource, page: int) -> dict[str, Any]:
    """Quality and versions: the part of the page an upload refreshes."""
    versions = service.version_list(session, actor, res.code, limit=VERSIONS_SHOWN,
                                    offset=(page - 1) * VERSIONS_SHOWN)
    return dict(res=res, versions=versions, pager=versions_pager(res.code, versions.total, page),
                quality=service.quality(session, actor, res.code),
                can_load=can(actor, "hub.data.load", res, session))


def resource_page(request: Request, session: Session, actor: Actor, code: str, *, page: int = 1,
                  status: int = 200, **context: Any) -> Response:
    """The resource page; also re-rendered with a form's errors after a failed post."""
    res = service.resource_get(session, actor, code)
    provider = actor.department_id == res.department_id
    ctx: dict[str, Any] = dict(
        pub=service.resource_public(res), authorities=_authorities(session, res), provider=provider,
        can_decide=can(actor, "hub.request.decide", res, session),
        can_request=not provider and actor.department_id is not None
        and access.reach_of(actor, "hub.request.create") is not None,
        grants=_grants(session, actor, res, provider), usage=_usage(session, actor, res),
        grant_active=sharing.grant_active, request_form={"fields": [i.name for i in res.items]},
        request_errors={}, revoke_errors={}, current="hub", **data_context(session, actor, res, page),
    )
    ctx.update(context)
    return render(request, "console/hub/resource.html", actor=actor, status=status, **ctx)


@console.get("/resources/{code}", response_class=HTMLResponse)
def resource(request: Request, session: SessionDep, actor: ConsoleActor, code: str,
             page: str = "1", rolled: str = "", revoked: str = "") -> Response:
    """A resource (信息资源): elements, items, versions, quality, grants and usage."""
    return resource_page(request, session, actor, code, page=page_number(page),
                         rolled=rolled[:12], revoked=revoked[:12])


@console.get("/resources/{code}/data", response_class=HTMLResponse)
def resource_data(request: Request, session: SessionDep, actor: ConsoleActor, code: str) -> Response:
    """Quality and versions as a fragment, for htmx to refresh after an upload."""
    if not is_htmx(request):
        return redirect(f"/console/hub/resources/{quote(code)}")
    res = service.resource_get(session, actor, code)
    return render(request, "console/hub/_data.html", actor=actor,
                  **data_context(session, actor, res, 1))


@console.post("/resources/{code}/rollback")
def resource_rollback(session: SessionDep, actor: ConsoleActor, code: str,
                      to_version: FormStr = "", note: FormStr = "") -> Response:
    """Make an earlier version current again (回滚), as a new version."""
    if not to_version.isdecimal() or len(to_version) > 18:  # int() refuses 4,300 digits
        raise Invalid("to_version", "a version number / 须为版本号")
    version = loading.rollback(session, actor, code, int(to_version), note=note.strip() or None)
    session.commit()
    return redirect(f"/console/hub/resources/{quote(code)}?{urlencode({'rolled': version.number})}")


@console.get("/resources/{code}/diff", response_class=HTMLResponse)
def resource_diff(request: Request, session: SessionDep, actor: ConsoleActor, code: str,
                  start: Annotated[str, Query(alias="from")] = "",
                  end: Annotated[str, Query(alias="to")] = "") -> Response:
    """What changed between two versions (版本比对): the provider's view."""
    res = service.resource_get(session, actor, code)
    start, end = start[:12], end[:12]
    diff, errors = None, {}
    try:
        if not (start.isdecimal() and end.isdecimal()):
            raise Invalid("from", "two version numbers / 须给出两个版本号")
        diff = loading.version_diff(session, actor, code, int(start), int(end))
    except Invalid as exc:
        errors = field_errors(exc, language(request))
    return render(request, "console/hub/diff.html", actor=actor, res=res, diff=diff, errors=errors,
                  fields=list(res.items), start=start, end=end, current="hub")


@console.post("/resources/{code}/requests", response_class=HTMLResponse)
def resource_request(
    request: Request, session: SessionDep, actor: ConsoleActor, code: str,
    purpose: FormStr = "", legal_basis: FormStr = "", valid_until: FormStr = "",
    fields: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Ask the provider for this resource (共享申请)."""
    form: dict[str, Any] = dict(resource=code, purpose=purpose, legal_basis=legal_basis,
                                valid_until=valid_until, fields=fields or [])
    try:
        body = parse_form(RequestIn, form)
        req = sharing.request_create(session, actor, code, purpose=body.purpose,
                                     legal_basis=body.legal_basis, fields=body.fields,
                                     valid_until=body.valid_until)
    except FORM_ERRORS as exc:
        session.rollback()
        return resource_page(request, session, actor, code, status=status_of(exc), request_form=form,
                             request_errors=field_errors(exc, language(request)))
    session.commit()
    return redirect("/console/hub/requests?" + urlencode({"box": "outgoing", "created": req.id}))


@console.post("/grants/{grant_id}/revoke", response_class=HTMLResponse)
def grant_revoke(request: Request, session: SessionDep, actor: ConsoleActor, grant_id: int,
                 reason: FormStr = "") -> Response:
    """Withdraw a grant (撤销授权), with the reason."""
    try:
        grant = sharing.grant_revoke(session, actor, grant_id, reason)
    except (Invalid, Conflict) as exc:
        session.rollback()
        code = sharing.grant_by_id(session, grant_id).resource.code
        return resource_page(request, session, actor, code, status=status_of(exc),
                             revoke_errors={grant_id: field_errors(exc, language(request))})
    code = grant.resource.code
    session.commit()
    return redirect(f"/console/hub/resources/{quote(code)}?{urlencode({'revoked': grant_id})}")


# -- uploads ----------------------------------------------------------------------------------


@console.get("/uploads/{job_id}", response_class=HTMLResponse)
def upload_progress(request: Request, actor: ConsoleActor, job_id: str) -> Response:
    """An upload's progress bar, polled every second until the load ends; then its result or
    its row error report. A finished load tells the page (HX-Trigger) to refresh its data."""
    job = api_loading.job_for(request, actor, job_id[:64])
    body = job.public()
    headers = {"HX-Trigger": "hub-loaded"} if body["state"] == "done" else None
    report = job.report.as_dicts()[:REPORT_SHOWN] if job.report is not None else []
    return render(request, "console/hub/_upload.html", actor=actor, job=body, report=report,
                  report_total=job.report.total if job.report is not None else 0,
                  titles=job.titles, headers=headers)


# The app mounts this one router: the pages above and the sharing pages.
router = APIRouter(include_in_schema=False)
router.include_router(console)
router.include_router(pages_sharing.router)
