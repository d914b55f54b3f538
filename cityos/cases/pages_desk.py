"""The centre's desk (受理与考核): the 12345 agent screen (坐席受理) where a call becomes a case,
with smart dispatch's suggestion (智能派单) filled in as the agent types, and the KPI dashboard
(考核看板): figures per department, the monthly ranking, the hotspot map, Excel exports.

Thin over `service.case_intake`, `dispatching.suggest` and `kpi`; the last two are imported
when a page needs them, and a page without them shows a note instead of the widget.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from cityos.cases import service
from cityos.cases.models import KINDS, LINES
from cityos.cases.pages import FORM_ERRORS, FormDep, category_options, map_config, reader, show
from cityos.core import access
from cityos.core.access import Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import CityOSError, Invalid
from cityos.core.models import Department
from cityos.core.pages_base import ConsoleActor, ConsoleRoute, field_errors, local_time, redirect
from cityos.core.web import SessionDep, language, platform_of

console = APIRouter(prefix="/console/cases", route_class=ConsoleRoute, include_in_schema=False)
AGENT_FIELDS = ("reporter_name", "reporter_phone", "category", "kind", "title", "description", "address",
                "lon", "lat", "urgent")
SUGGEST_MIN_TEXT = 4  # characters before a suggestion is worth asking for
KPI_BY = ("department", "district", "grid", "category")


# -- the agent screen (坐席受理) -----------------------------------------------------------------


def intake_lines(session: Session, actor: Actor) -> list[str]:
    """The lines whose centre the actor may register cases for (its own centre's, usually)."""
    out = []
    for wf in service.workflow_list(session):
        if not wf.active or wf.department_id is None or wf.code not in LINES:
            continue
        centre = session.get(Department, wf.department_id)
        if centre is not None and access.decide(actor, "cases.intake", Target("case", None, centre.id,
                                                                              centre.path), session).allowed:
            out.append(wf.code)
    return out


def _agent(request: Request, session: Session, actor: Actor, *, form: dict[str, Any] | None = None,
           errors: dict[str, str] | None = None, status: int = 200, created: str = "") -> Response:
    if access.reach_of(actor, "cases.intake") is None:
        raise access.Denied(actor, "cases.intake", None, f"role {actor.role} may not register cases")
    lang = language(request)
    lines = intake_lines(session, actor)
    options = {line: category_options(session, lang, line=line) for line in lines or list(LINES)}
    new = duplicates = None
    if created:
        new = service.case_get(session, actor, created)
        duplicates = service.duplicates_of(session, new) if new.status in service.OPEN_STATUSES else []
    form = form or {}
    point = [float(form["lon"]), float(form["lat"])] if _number(form.get("lon")) and _number(
        form.get("lat")) else None
    config = map_config(request, session, actor, point=point, pick=True)
    config["suggest_url"] = "/console/cases/agent/suggest"
    config["suggest_min"] = SUGGEST_MIN_TEXT
    config["text"].update(_suggest_text(lang))
    return show(request, "cases/agent.html", actor, status=status, tab="agent", form=form,
                errors=errors or {}, options=options, kinds=list(KINDS.items()), new=new,
                duplicates=duplicates, config=config)


def _suggest_text(lang: str) -> dict[str, str]:
    pairs = {"suggested": ("智能派单建议", "Suggested"), "confidence": ("置信度", "confidence"),
             "department": ("承办部门", "department"), "none": ("暂无建议", "No suggestion yet"),
             "applied": ("已按建议填入类别", "Category filled in from the suggestion")}
    return {k: v[0] if lang == "zh-CN" else v[1] for k, v in pairs.items()}


def _number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@console.get("/agent", response_class=HTMLResponse)
def agent_page(request: Request, session: SessionDep, actor: ConsoleActor, created: str = "") -> Response:
    """The agent screen: the caller's report as a form; after it, the number and any duplicates."""
    return _agent(request, session, actor, created=created[:32])


@console.post("/agent", response_class=HTMLResponse)
def agent_submit(request: Request, session: SessionDep, actor: ConsoleActor, form: FormDep) -> Response:
    """Register the call as a case (受理登记, channel phone)."""
    raw = {k: str(form.get(k) or "").strip() for k in AGENT_FIELDS}
    spec: dict[str, Any] = {k: v for k, v in raw.items() if v and k not in ("lon", "lat", "urgent")}
    spec["urgent"] = raw["urgent"] in ("on", "true", "1")
    for key in ("lon", "lat"):
        if raw[key]:
            spec[key] = raw[key]  # the service says what is wrong with it
    try:
        got = service.case_intake(session, actor, spec, channel="phone",
                                  settings=platform_of(request).settings)
    except access.Denied:
        raise
    except FORM_ERRORS as exc:
        session.rollback()
        return _agent(request, session, actor, form=raw, errors=field_errors(exc, language(request)),
                      status=exc.status)
    number = got.case.number or ""
    session.commit()
    return redirect(f"/console/cases/agent?{urlencode({'created': number})}")


@console.get("/agent/suggest")
def agent_suggest(request: Request, session: SessionDep, actor: ConsoleActor, text: str = "",
                  lon: str = "", lat: str = "") -> Response:
    """Smart dispatch's guess (智能派单) for what the caller said: category, department, confidence.
    {"available": false} while there is no model or module to ask."""
    if access.reach_of(actor, "cases.intake") is None:
        raise access.Denied(actor, "cases.intake", None, f"role {actor.role} may not register cases")
    text = text.strip()[:2000]
    if len(text) < SUGGEST_MIN_TEXT:
        return JSONResponse({"available": False, "reason": "text too short / 描述过短"})
    lang = language(request)
    cats = service.categories(session)
    names = {c.code: c.name if lang == "zh-CN" else c.name_en or c.name for c in cats}
    try:  # the category zones' rules first, then the trained model (service.dispatch_suggest)
        got = service.dispatch_suggest(session, text, float(lon) if _number(lon) else None,
                                       float(lat) if _number(lat) else None)
    except ImportError:
        return JSONResponse({"available": False,
                             "reason": "smart dispatch is not installed / 智能派单未启用"})
    except (CityOSError, LookupError, ValueError) as exc:
        return JSONResponse({"available": False, "reason": str(exc)})
    if not got.category:
        return JSONResponse({"available": False, "reason": got.reason})
    dept_names = {c.department.code: c.department.name for c in cats if c.department is not None}
    threshold = platform_of(request).settings.cases_dispatch_threshold
    top3 = [{"category": code, "name": names.get(code, code), "confidence": p} for code, p in got.top3]
    return JSONResponse({
        "available": True, "category": got.category, "category_name": names.get(got.category, got.category),
        "department": got.department, "department_name": dept_names.get(got.department or "", got.department),
        "confidence": got.confidence, "top3": top3, "source": got.source, "reason": got.reason,
        "confident": bool(got.confident(threshold)), "threshold": threshold})


# -- the KPI dashboard (考核看板) ----------------------------------------------------------------


def _kpi(session: Session, actor: Actor, month: str, by: str, line: str | None, lang: str) -> dict[str, Any]:
    from cityos.cases import kpi

    since, until = kpi.month_bounds(month)
    rows = kpi.report(session, actor, by=by, since=since, until=until, line=line)  # type: ignore[arg-type]
    ranked = kpi.ranking(session, actor, month, line)
    spots = kpi.hotspots(session, actor, since=since, until=until, split=False)
    cells: dict[tuple[float, float], int] = {}
    for f in spots.get("features", []):
        if f.get("geometry"):
            lon, lat = f["geometry"]["coordinates"]
            cells[(lon, lat)] = cells.get((lon, lat), 0) + int(f["properties"].get("count", 0))
    chart = [{"name": r.name if lang == "zh-CN" else r.name_en, "on_time": _pct(r.on_time_rate),
              "satisfaction": _pct(r.satisfaction_rate), "received": r.received, "closed": r.closed}
             for r in rows if r.key is not None]
    total = {k: sum(getattr(r, k) for r in rows) for k in ("received", "closed", "due", "on_time", "rated",
                                                         "satisfied", "overdue_open")}
    total["on_time_rate"] = _pct(total["on_time"] / total["due"] if total["due"] else None)
    total["satisfaction_rate"] = _pct(total["satisfied"] / total["rated"] if total["rated"] else None)
    return {"rows": rows, "ranked": ranked, "chart": chart, "weights": kpi.WEIGHTS, "total": total,
            "hotspots": [{"lon": lon, "lat": lat, "count": n} for (lon, lat), n in cells.items()],
            "cell_m": spots.get("cell_m")}


def _pct(rate: float | None) -> float | None:
    return round(rate * 100, 1) if rate is not None else None


def _month_days(month: str) -> tuple[str, str]:
    """The first and last day of a month "YYYY-MM", as the KPI API's since and until take them."""
    year, mon = int(month[:4]), int(month[5:7])
    last = (dt.date(year + mon // 12, mon % 12 + 1, 1) - dt.timedelta(days=1)).day
    return f"{month}-01", f"{month}-{last:02d}"


def _month(value: str) -> str:
    """The month asked for, or this month (in city time)."""
    try:
        from cityos.cases import kpi
    except ImportError:
        return local_time(utcnow(), "%Y-%m")
    try:
        kpi.month_bounds(value)
    except Invalid:
        return kpi.current_month()
    return value


@console.get("/kpi", response_class=HTMLResponse)
def kpi_page(request: Request, session: SessionDep, actor: ConsoleActor, month: str = "",
             by: str = "department", line: str = "") -> Response:
    """The KPI dashboard (考核看板): figures of the month's cases, the ranking, the hotspots."""
    reader(actor)
    lang = language(request)
    month = _month(month.strip()[:7])
    by = by if by in KPI_BY else "department"
    line_or_none = line if line in LINES else None
    figures: dict[str, Any] | None = None
    missing = ""
    try:
        figures = _kpi(session, actor, month, by, line_or_none, lang)
    except ImportError:
        missing = "kpi"
    since, until = _month_days(month)
    query = urlencode({k: v for k, v in (("by", by), ("since", since), ("until", until),
                                         ("line", line_or_none or "")) if v})
    config = map_config(request, session, actor)
    config.update(chart=figures["chart"] if figures else [], hotspots=figures["hotspots"] if figures else [],
                  cell_m=figures["cell_m"] if figures else None,
                  labels={"on_time": "按时办结率 %" if lang == "zh-CN" else "On-time rate %",
                          "satisfaction": "满意率 %" if lang == "zh-CN" else "Satisfaction rate %",
                          "cases": "件" if lang == "zh-CN" else "cases"})
    ranking_query = urlencode({k: v for k, v in (("month", month), ("line", line_or_none or "")) if v})
    exports = {"report": f"/api/cases/kpi.xlsx?{query}",
               "ranking": f"/api/cases/kpi/ranking.xlsx?{ranking_query}"}
    return show(request, "cases/kpi.html", actor, tab="kpi", month=month, by=by, line=line_or_none or "",
                figures=figures, missing=missing, config=config, exports=exports, by_choices=KPI_BY,
                quote=quote)
