"""Supervision and ranking API (督查督办、考核问责) at /api/cases/kpi: the handling figures per
department, district, grid cell or category, the monthly ranking, both also as Excel, and the
hotspots of the map's heat layer (GeoJSON). Thin over `cases.kpi`.

Periods are the city's days (Asia/Shanghai), both ends included; by default, the current month.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from cityos.cases import kpi
from cityos.cases.models import LINES
from cityos.core.db import utcnow
from cityos.core.web import ActorDep, SessionDep, SignedInDep
from cityos.core.workdays import CITY_TZ

router = APIRouter(prefix="/api/cases/kpi", tags=["cases kpi"])
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
GEOJSON = "application/geo+json"
By = Annotated[Literal["department", "district", "grid", "category"],
               Query(description="group by: department (lead) | district | grid | category")]
Day = Annotated[dt.date | None, Query(description="YYYY-MM-DD, city time, included; default: this month")]
Line = Annotated[str | None, Query(max_length=16, description=f"one of {', '.join(LINES)}")]
Month = Annotated[str | None, Query(max_length=16, description="YYYY-MM; default: this month")]


def _period(since: dt.date | None, until: dt.date | None) -> tuple[dt.datetime, dt.datetime, str, str]:
    """The days asked for; a missing end is taken from the month of the other, or this month."""
    first = since or (until or utcnow().astimezone(CITY_TZ).date()).replace(day=1)
    last = until or (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    lo, hi = kpi.day_bounds(first, last)
    return lo, hi, first.isoformat(), last.isoformat()


def _report(session: SessionDep, actor: ActorDep, by: kpi.By, since: dt.date | None, until: dt.date | None,
            line: str | None) -> tuple[list[kpi.Row], str, str]:
    lo, hi, first, last = _period(since, until)
    rows = kpi.report(session, actor, by=by, since=lo, until=hi, line=line)
    return rows, first, last


def _xlsx(body: bytes, name: str) -> Response:
    return Response(body, media_type=XLSX,
                    headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'})


@router.get("", summary="Handling figures per department, district, grid or category (考核统计)")
def report(session: SessionDep, actor: SignedInDep, by: By = "department", since: Day = None,
           until: Day = None, line: Line = None) -> dict[str, Any]:
    rows, first, last = _report(session, actor, by, since, until, line)
    return {"by": by, "by_name": kpi.BY[by], "since": first, "until": last, "line": line,
            "rows": [r.as_dict() for r in rows]}


@router.get(".xlsx", summary="The same as an Excel workbook (导出考核报表)")
def report_xlsx(session: SessionDep, actor: SignedInDep, by: By = "department", since: Day = None,
                until: Day = None, line: Line = None) -> Response:
    rows, first, last = _report(session, actor, by, since, until, line)
    title = f"{kpi.BY[by][0]}考核 {first}至{last}"
    return _xlsx(kpi.export_xlsx(rows, sheet=title), f"cases-kpi-{by}-{first}-{last}")


def _ranking(session: SessionDep, actor: ActorDep, month: str | None,
             line: str | None) -> tuple[list[kpi.RankRow], str]:
    month = month or kpi.current_month()
    return kpi.ranking(session, actor, month, line), month


@router.get("/ranking", summary="The month's ranking of departments (月度考核排名)")
def ranking(session: SessionDep, actor: SignedInDep, month: Month = None,
            line: Line = None) -> dict[str, Any]:
    rows, month = _ranking(session, actor, month, line)
    return {"month": month, "line": line,
            "weights": [{"metric": w.metric, "share": w.share, "zh": w.zh, "en": w.en} for w in kpi.WEIGHTS],
            "rows": [r.as_dict() for r in rows]}


@router.get("/ranking.xlsx", summary="The ranking as an Excel workbook (导出考核排名)")
def ranking_xlsx(session: SessionDep, actor: SignedInDep, month: Month = None, line: Line = None) -> Response:
    rows, month = _ranking(session, actor, month, line)
    return _xlsx(kpi.export_xlsx(rows, sheet=f"排名 {month}", ranked=True), f"cases-ranking-{month}")


@router.get("/hotspots", summary="Cases per map cell and week, for the heat layer (热点分布, GeoJSON)")
def hotspots(session: SessionDep, actor: SignedInDep,
             category: Annotated[str | None, Query(max_length=32)] = None,
             week: Annotated[str | None, Query(max_length=16, description="YYYY-Www; all: every week; "
                                                                          "default: this week")] = None,
             cell_m: Annotated[int, Query(ge=50, le=50_000, description="cell side, metres")] = 500,
             by: Annotated[Literal["cell", "grid"], Query(description="map cells or grid codes")] = "cell",
             ) -> Response:
    chosen = None if week == "all" else (week or kpi.current_week())
    body = kpi.hotspots(session, actor, category=category, week=chosen, cell_m=cell_m, by=by)
    return JSONResponse(body, media_type=GEOJSON)
