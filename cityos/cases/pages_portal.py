"""The residents' side of the case engine on the portal: report a problem (市民诉求) at
/cases/report — anonymously or signed in — and follow it (进度查询) at /cases/track, where the
reporter rates the answer once the case is closed (评价).

A reporter who is not signed in gets the case's token once, in the link of the page the report
leads to: that link is how they follow and rate it later. Photos go through
`attachments.attach`, which checks what each file really is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from cityos.cases import service, steps
from cityos.cases.pages import (
    FORM_ERRORS,
    FormDep,
    attach_photos,
    category_options,
    map_config,
    photos_of,
    show,
)
from cityos.core import access, crypto
from cityos.core.access import ANONYMOUS, Actor
from cityos.core.errors import CityOSError, Invalid, NotFound
from cityos.core.pages_base import field_errors, redirect
from cityos.core.web import SESSION_COOKIE, ActorDep, SessionDep, language, platform_of

portal = APIRouter(prefix="/cases", include_in_schema=False)
REPORT_LINES = ("hotline", "citymgmt")  # what residents report; approvals are applied for elsewhere
REPORT_FIELDS = ("category", "description", "address", "lon", "lat", "reporter_name", "reporter_phone")
MAX_PHOTOS = 9
NO_STORE = {"Cache-Control": "no-store"}  # a page with a token in it stays out of caches


def viewer(request: Request, actor: Actor) -> Actor | None:
    """The signed-in person of a portal page (by the session cookie), or None for the public."""
    return actor if actor.kind == "user" and request.cookies.get(SESSION_COOKIE) else None


def reporter_of(me: Actor | None) -> Actor:
    """Who reports: a signed-in resident as themself; anyone else as a member of the public."""
    return me if me is not None and me.role == access.RESIDENT else ANONYMOUS


# -- report (市民诉求) ----------------------------------------------------------------------------


def _report(request: Request, session: Session, me: Actor | None, *, form: dict[str, Any] | None = None,
            errors: dict[str, str] | None = None, status: int = 200) -> Response:
    lang = language(request)
    options = {line: category_options(session, lang, line=line) for line in REPORT_LINES}
    form = form or {}
    point = None
    try:
        point = [float(form["lon"]), float(form["lat"])] if form.get("lon") and form.get("lat") else None
    except ValueError:
        point = None
    config = map_config(request, session, ANONYMOUS, point=point, pick=True)
    return show(request, "cases/report.html", me, status=status, here="report", form=form,
                errors=errors or {}, options=options, config=config, max_photos=MAX_PHOTOS,
                resident=me is not None and reporter_of(me) is me, headers=NO_STORE)


@portal.get("/report", response_class=HTMLResponse)
def report_form(request: Request, session: SessionDep, actor: ActorDep) -> Response:
    """The report form: what, where (a pin on the map or an address), photos, how to call back."""
    return _report(request, session, viewer(request, actor))


@portal.post("/report", response_class=HTMLResponse)
def report_submit(request: Request, session: SessionDep, actor: ActorDep, form: FormDep) -> Response:
    """Register the report (channel web) and its photos; then show its number and the link to it."""
    me = viewer(request, actor)
    who = reporter_of(me)
    raw = {k: str(form.get(k) or "").strip() for k in REPORT_FIELDS}
    spec: dict[str, Any] = {k: v for k, v in raw.items() if v}
    photos = photos_of(form)
    try:
        if len(photos) > MAX_PHOTOS:
            raise Invalid("photos", f"at most {MAX_PHOTOS} photos / 最多上传 {MAX_PHOTOS} 张照片")
        got = service.case_intake(session, who, spec, channel="web", settings=platform_of(request).settings)
        case = got.case
        attach_photos(session, who, case, photos, "report", token=case.token)
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        errors = field_errors(exc, language(request))
        return _report(request, session, me, form=raw, errors=errors, status=exc.status)
    number, token = case.number or "", case.token
    session.commit()
    return redirect("/cases/track?" + urlencode({"number": number, "token": token, "reported": 1}))


# -- follow and rate (进度查询与评价) --------------------------------------------------------------


def _track(request: Request, session: Session, me: Actor | None, number: str, token: str, *,
           reported: bool = False, rated: bool = False, errors: dict[str, str] | None = None,
           form: dict[str, str] | None = None, status: int = 200) -> Response:
    case = None
    if number:
        try:
            case = service.case_track(session, number)
        except NotFound:
            status = 404
    token_ok = bool(case is not None and token and crypto.constant_time_equal(token, case.token))
    own = bool(case is not None and me is not None and me.user_id is not None
               and me.user_id == case.reporter_user_id)
    may_rate = bool(case is not None and case.status == "closed" and case.evaluation is None
                    and (token_ok or own))
    events = service.timeline(session, case, public_only=True) if case is not None else []
    pub = service.case_public(case, lang=language(request)) if case is not None else None
    return show(request, "cases/track.html", me, status=status, here="track", number=number,
                token=token if token_ok else "", case=case, pub=pub, events=events, may_rate=may_rate,
                reported=reported and token_ok, rated=rated, errors=errors or {}, form=form or {},
                headers=NO_STORE)


@portal.get("/track", response_class=HTMLResponse)
def track_page(request: Request, session: SessionDep, actor: ActorDep, number: str = "", token: str = "",
               reported: str = "", rated: str = "") -> Response:
    """A case as its reporter follows it: status, the public timeline, the answer."""
    return _track(request, session, viewer(request, actor), number.strip()[:40], token.strip()[:64],
                  reported=reported == "1", rated=rated == "1")


@portal.post("/track/rate", response_class=HTMLResponse)
def track_rate(request: Request, session: SessionDep, actor: ActorDep, form: FormDep) -> Response:
    """The reporter rates the closed case (评价): signed in as the reporter, or with the token."""
    me = viewer(request, actor)
    number = str(form.get("number") or "").strip()[:40]
    token = str(form.get("token") or "").strip()[:64]
    raw = {"satisfaction": str(form.get("satisfaction") or ""), "note": str(form.get("note") or "")}
    try:
        case = service.case_track(session, number)
        steps.case_evaluate(session, me or ANONYMOUS, case.number or "", raw["satisfaction"],
                            token=token or None, note=raw["note"].strip())
    except NotFound:
        raise
    except CityOSError as exc:
        session.rollback()
        return _track(request, session, me, number, token, errors=field_errors(exc, language(request)),
                      form=raw, status=exc.status)
    session.commit()
    return redirect("/cases/track?" + urlencode({k: v for k, v in (("number", number), ("token", token),
                                                                   ("rated", "1")) if v}))
