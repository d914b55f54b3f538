"""Supervision and ranking (督查督办、考核问责): the figures of case handling per department,
district, grid cell or category, the monthly ranking of departments (月度考核排名), and the
map's hotspots (热点).

Every figure is one GROUP BY over `cases` (the columns the steps keep: deadlines, reply and
close times, returns, escalations, the callback's satisfaction), so a month of a million-case
store is one indexed range scan and the workflow engine is never loaded. Overdue cases are
escalated by `steps.sweep`; here they are only counted.

A case counts in the period it was received (`created_at`, periods and months in city time).
Merged cases (已合并) are duplicates of another and do not count.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import Float, Integer, and_, case, func, literal_column, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from cityos.cases.models import LINES, Case, CaseCategory, CaseWorkflow
from cityos.cases.service import category_by_code
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.errors import Invalid
from cityos.core.models import Department
from cityos.core.service import scope_filter
from cityos.core.workdays import CITY_TZ

By = Literal["department", "district", "grid", "category"]
BY: dict[str, tuple[str, str]] = {"department": ("主办部门", "Lead department"),
                                  "district": ("区县", "District"), "grid": ("网格", "Grid cell"),
                                  "category": ("事项类别", "Category")}
HANDLING = ("dispatched", "handling")  # at the department (待签收、办理中): what can be overdue there
GOOD = ("satisfied", "basic")  # 满意 + 基本满意
CITY_OFFSET_S = 8 * 3600  # Asia/Shanghai has kept UTC+8 all year since 1991
EPOCH_MONDAY = dt.date(1969, 12, 29)  # the Monday before 1970-01-01: week 0 of the week index
MONTH_RE, WEEK_RE = re.compile(r"^(\d{4})-(\d{2})$"), re.compile(r"^(\d{4})-W(\d{2})$")
DEGREE_M = 111_320.0  # metres in a degree of latitude


# -- SQL the two databases spell differently (the one adapter of this module) ------------------


class epoch_seconds(FunctionElement[float]):  # noqa: N801 - a SQL function, named like one
    """Seconds since 1970-01-01 UTC of a UTC datetime column."""

    type = Float()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds)
def _epoch_pg(element: epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    return f"EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


class floor_int(FunctionElement[int]):  # noqa: N801
    """The integer floor of a number (PostgreSQL's CAST rounds; SQLite may lack FLOOR)."""

    type = Integer()
    inherit_cache = True
    name = "floor_int"


@compiles(floor_int)
def _floor_pg(element: floor_int, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(FLOOR({compiler.process(element.clauses, **kw)}) AS BIGINT)"


@compiles(floor_int, "sqlite")
def _floor_sqlite(element: floor_int, compiler: SQLCompiler, **kw: Any) -> str:
    x = compiler.process(element.clauses, **kw)
    return f"(CAST({x} AS INTEGER) - (({x}) < CAST({x} AS INTEGER)))"


# -- periods in city time -----------------------------------------------------------------------


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), CITY_TZ).astimezone(dt.UTC)


def month_bounds(month: str, field: str = "month") -> tuple[dt.datetime, dt.datetime]:
    """A month "YYYY-MM" of the city's calendar as a UTC [start, end)."""
    m = MONTH_RE.match(month or "")
    if not m or not 1 <= int(m[2]) <= 12 or int(m[1]) < 1970:
        raise Invalid(field, f"{month!r} is not a month YYYY-MM / 月份格式应为 YYYY-MM，如 2025-03")
    year, mon = int(m[1]), int(m[2])
    nxt = dt.date(year + mon // 12, mon % 12 + 1, 1)
    return _midnight(dt.date(year, mon, 1)), _midnight(nxt)


def week_bounds(week: str, field: str = "week") -> tuple[dt.datetime, dt.datetime]:
    """An ISO week "YYYY-Www" of the city's calendar as a UTC [start, end)."""
    m = WEEK_RE.match(week or "")
    try:
        if not m or int(m[1]) < 1970:
            raise ValueError
        monday = dt.date.fromisocalendar(int(m[1]), int(m[2]), 1)
    except ValueError:
        raise Invalid(field, f"{week!r} is not an ISO week YYYY-Www / 周格式应为 YYYY-Www，如 2025-W09") \
            from None
    return _midnight(monday), _midnight(monday + dt.timedelta(days=7))


def current_month(now: dt.datetime | None = None) -> str:
    return f"{(now or utcnow()).astimezone(CITY_TZ):%Y-%m}"


def current_week(now: dt.datetime | None = None) -> str:
    iso = (now or utcnow()).astimezone(CITY_TZ).date().isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def day_bounds(since: dt.date, until: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """City days `since` to `until`, both included, as a UTC [start, end)."""
    if until < since:
        raise Invalid("until", "must not be before since / 结束日期不能早于开始日期")
    return _midnight(since), _midnight(until + dt.timedelta(days=1))


def _week_label(index: int) -> str:
    iso = (EPOCH_MONDAY + dt.timedelta(weeks=index)).isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def _week_index() -> Any:
    """The city-time ISO week a case was received in, as weeks since EPOCH_MONDAY."""
    local = epoch_seconds(Case.created_at) + (CITY_OFFSET_S + 3 * 86400)
    return floor_int(local / 604800.0)


# -- who sees what ------------------------------------------------------------------------------


def _scope(actor: Actor) -> Any:
    """The cases whose figures `actor` may see (`cases.read`): led by a department within its
    reach, or held by a centre within it — a centre supervises every department it sends to.
    No reach at all is refused (401/403), not answered with an empty report."""
    where = scope_filter(actor, "cases.read", Department.id, Department.path)
    if where is True:
        return None
    depts = select(Department.id).where(where)
    return or_(Case.department_id.in_(depts), Case.dispatch_department_id.in_(depts))


def _check_line(line: str | None) -> None:
    if line is not None and line not in LINES:
        raise Invalid("line", f"one of {', '.join(LINES)} / 业务线无效")


# -- the report (考核报表) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """The figures of one group. Rates are None where nothing counts towards them yet."""

    key: str | None  # department, district, grid or category code; None: not dispatched/placed
    name: str
    name_en: str
    received: int  # 受理量
    closed: int  # 办结量
    due: int  # 应办结: with a deadline that has come, or answered already
    on_time: int  # 按时办结: replied or closed by the deadline
    rated: int  # 回访量
    satisfied: int  # 满意 + 基本满意
    dispatched: int  # 派遣量
    returned: int  # 退单件: returned at least once
    overdue_open: int  # 超期未办: at the department past the deadline
    escalations: int  # 督办次数
    mean_hours: float | None  # 平均办理时长: dispatch to reply

    @property
    def on_time_rate(self) -> float | None:
        return _rate(self.on_time, self.due)

    @property
    def resolution_rate(self) -> float | None:
        return _rate(self.closed, self.received)

    @property
    def satisfaction_rate(self) -> float | None:
        return _rate(self.satisfied, self.rated)

    @property
    def return_rate(self) -> float | None:
        return _rate(self.returned, self.dispatched)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in RATES:
            out[name] = getattr(self, name)
        return out


RATES = ("on_time_rate", "resolution_rate", "satisfaction_rate", "return_rate")


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _count(cond: Any) -> Any:
    return func.sum(case((cond, 1), else_=0))


def _figures(now: dt.datetime) -> list[Any]:
    answered = or_(Case.replied_at.is_not(None), Case.closed_at.is_not(None))
    handled = and_(Case.replied_at.is_not(None), Case.dispatched_at.is_not(None))
    hours = (epoch_seconds(Case.replied_at) - epoch_seconds(Case.dispatched_at)) / 3600.0
    return [
        func.count().label("received"),
        _count(Case.status == "closed").label("closed"),
        _count(and_(Case.due_at.is_not(None), or_(answered, Case.due_at <= now))).label("due"),
        _count(and_(Case.due_at.is_not(None), or_(Case.replied_at <= Case.due_at,
                                                   Case.closed_at <= Case.due_at))).label("on_time"),
        _count(Case.satisfaction.is_not(None)).label("rated"),
        _count(Case.satisfaction.in_(GOOD)).label("satisfied"),
        _count(Case.dispatched_at.is_not(None)).label("dispatched"),
        _count(Case.returns > 0).label("returned"),
        _count(and_(Case.status.in_(HANDLING), Case.due_at <= now)).label("overdue_open"),
        func.sum(Case.escalations).label("escalations"),
        func.avg(case((handled, hours))).label("mean_hours"),
    ]


GROUP_COLUMNS = {"department": Case.department_id, "district": Case.district, "grid": Case.grid,
                 "category": Case.category_id}
UNNAMED = {"department": ("（未派遣）", "(not dispatched)"), "district": ("（未落点）", "(no place)"),
           "grid": ("（未落点）", "(no place)"), "category": ("（未分类）", "(no category)")}


def _names(session: Session, by: str, keys: list[Any]) -> dict[Any, tuple[str, str, str]]:
    """Group key -> (code, name, name_en)."""
    keys = [k for k in keys if k is not None]
    if not keys:
        return {}
    if by == "department":
        got = session.execute(select(Department.id, Department.code, Department.name, Department.name_en)
                              .where(Department.id.in_(keys)))
    elif by == "category":
        got = session.execute(select(CaseCategory.id, CaseCategory.code, CaseCategory.name,
                                     CaseCategory.name_en).where(CaseCategory.id.in_(keys)))
    elif by == "district":
        got = session.execute(select(Department.admin_code, Department.admin_code, Department.name,
                                     Department.name_en).where(Department.admin_code.in_(keys),
                                                               Department.kind == "district"))
    else:
        return {k: (k, k, k) for k in keys}
    out = {k: (str(k), str(k), str(k)) for k in keys}
    for key, code, name, name_en in got:
        out[key] = (code, name, name_en or name)
    return out


def _rows(session: Session, by: str, since: dt.datetime, until: dt.datetime, line: str | None,
          scope: Any, now: dt.datetime) -> list[Row]:
    if by not in GROUP_COLUMNS:
        raise Invalid("by", f"one of {', '.join(GROUP_COLUMNS)} / 分组方式无效")
    _check_line(line)
    for name, value in (("since", since), ("until", until)):
        if value.tzinfo is None:
            raise Invalid(name, "a time with its zone is required / 须带时区")
    if until <= since:
        raise Invalid("until", "must be after since / 结束时间须晚于开始时间")
    key = GROUP_COLUMNS[by]
    stmt = select(key.label("key"), *_figures(now)).where(
        Case.created_at >= since, Case.created_at < until, Case.status != "merged").group_by(key)
    if line:
        stmt = stmt.where(Case.line == line)
    if scope is not None:
        stmt = stmt.where(scope)
    got = session.execute(stmt).all()
    names = _names(session, by, [r.key for r in got])
    rows = []
    for r in got:
        code, name, name_en = names[r.key] if r.key is not None else (None, *UNNAMED[by])
        rows.append(Row(key=code, name=name, name_en=name_en, received=int(r.received), closed=int(r.closed),
                        due=int(r.due), on_time=int(r.on_time), rated=int(r.rated),
                        satisfied=int(r.satisfied), dispatched=int(r.dispatched), returned=int(r.returned),
                        overdue_open=int(r.overdue_open), escalations=int(r.escalations or 0),
                        mean_hours=round(float(r.mean_hours), 2) if r.mean_hours is not None else None))
    rows.sort(key=lambda x: (-x.received, x.key is None, x.key or ""))
    return rows


def report(session: Session, actor: Actor, *, by: By, since: dt.datetime, until: dt.datetime,
           line: str | None = None, now: dt.datetime | None = None) -> list[Row]:
    """The handling figures of the cases received in [since, until), per lead department,
    district, grid cell or category (考核统计), over the cases the actor may see.

    On time (按时办结率) = replied or closed by the deadline, among the cases whose deadline has
    come or that were answered (应办结); resolution = closed / received; satisfaction =
    (satisfied + basic) / called back; return rate = cases returned at least once / dispatched
    (counted against the case's lead department as it stands); mean hours = dispatch to reply."""
    return _rows(session, by, since, until, line, _scope(actor), now or utcnow())


# -- the monthly ranking (月度考核排名) ------------------------------------------------------------


@dataclass(frozen=True)
class Weight:
    """One part of the composite score: a rate of `Row` and its share. A negative share scores
    the complement (1 - rate), so fewer returns score more and a perfect month scores 100."""

    metric: str
    share: float
    zh: str
    en: str


WEIGHTS: tuple[Weight, ...] = (
    Weight("on_time_rate", 0.4, "按时办结率", "On-time rate"),
    Weight("resolution_rate", 0.3, "办结率", "Resolution rate"),
    Weight("satisfaction_rate", 0.2, "满意率", "Satisfaction rate"),
    Weight("return_rate", -0.1, "退单率", "Return rate"),
)


def score(row: Row, weights: Sequence[Weight] = WEIGHTS) -> float | None:
    """The composite score out of 100; a rate with nothing to count is left out and the other
    shares are scaled up to fill its place (a department with no callbacks is not marked down)."""
    got = whole = 0.0
    for w in weights:
        rate = getattr(row, w.metric)
        if rate is None:
            continue
        whole += abs(w.share)
        got += abs(w.share) * (rate if w.share > 0 else 1.0 - rate)
    return round(100.0 * got / whole, 2) if whole else None


@dataclass(frozen=True)
class RankRow:
    """A department's place in the month's ranking."""

    rank: int
    score: float | None
    row: Row

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, **self.row.as_dict()}


def ranking(session: Session, actor: Actor, month: str, line: str | None = None, *,
            now: dt.datetime | None = None, weights: Sequence[Weight] = WEIGHTS) -> list[RankRow]:
    """The month's ranking of lead departments by composite score (ties share a rank). The
    ranking is the city's, over every case; the actor is shown the rows of the departments it
    may see, or all of them when it may see a centre (the centres run the assessment)."""
    since, until = month_bounds(month)
    where = scope_filter(actor, "cases.read", Department.id, Department.path)
    rows = [r for r in _rows(session, "department", since, until, line, None, now or utcnow())
            if r.key is not None]
    scored = sorted(((score(r, weights), r) for r in rows),
                    key=lambda p: (p[0] is None, -(p[0] or 0.0), -p[1].received, p[1].key or ""))
    out: list[RankRow] = []
    for i, (s, r) in enumerate(scored):
        same = out and out[-1].score == s
        out.append(RankRow(out[-1].rank if same else i + 1, s, r))
    if where is True:
        return out
    mine = set(session.scalars(select(Department.code).where(where)))
    centre = session.scalar(select(CaseWorkflow.id).join(Department, CaseWorkflow.department_id ==
                                                          Department.id).where(where).limit(1))
    return out if centre is not None else [r for r in out if r.row.key in mine]


# -- hotspots (热点分布) --------------------------------------------------------------------------


def hotspots(session: Session, actor: Actor, *, category: str | None = None, week: str | None = None,
             cell_m: int = 500, by: Literal["cell", "grid"] = "cell", since: dt.datetime | None = None,
             until: dt.datetime | None = None, split: bool = True) -> dict[str, Any]:
    """Cases per category and ISO week on square cells of about `cell_m` metres (lon and lat
    binned by the same step of latitude degrees, so cells are narrower east-west in the north),
    or per grid cell code (网格): a GeoJSON FeatureCollection of points with a `count`, for the
    map's heat layer. `week` None: every week (of [since, until) if given), each its own feature;
    `split` False: one feature per cell, categories and weeks together (a dashboard's map)."""
    if not 50 <= cell_m <= 50_000:
        raise Invalid("cell_m", "50-50000 metres / 网格边长须为 50-50000 米")
    if by not in ("cell", "grid"):
        raise Invalid("by", "cell or grid / 分组方式须为 cell 或 grid")
    scope = _scope(actor)
    step = cell_m / DEGREE_M
    keys: list[Any] = [Case.category_id.label("cat"), _week_index().label("week_ix")] if split else []
    if by == "cell":
        step_sql = literal_column(repr(step))
        place = [floor_int(Case.lon / step_sql).label("ix"), floor_int(Case.lat / step_sql).label("iy")]
        stmt = select(*keys, *place, func.count().label("n")).where(Case.lon.is_not(None),
                                                                    Case.lat.is_not(None))
    else:
        place = [Case.grid]
        stmt = select(*keys, *place, func.count().label("n"), func.avg(Case.lon).label("lon"),
                      func.avg(Case.lat).label("lat")).where(Case.grid.is_not(None))
    stmt = stmt.where(Case.status != "merged").group_by(*keys, *place)
    if scope is not None:
        stmt = stmt.where(scope)
    if category:
        stmt = stmt.where(Case.category_id == category_by_code(session, category).id)
    bounds = [week_bounds(week) if week else (None, None), (since, until)]
    for start, end in bounds:
        stmt = stmt.where(Case.created_at >= start) if start else stmt
        stmt = stmt.where(Case.created_at < end) if end else stmt
    got = [r._mapping for r in session.execute(stmt)]
    cats = _names(session, "category", list({r["cat"] for r in got})) if split else {}
    features = []
    for r in sorted(got, key=lambda r: -r["n"]):
        props: dict[str, Any] = {"category": None, "category_name": None, "week": None, "count": int(r["n"])}
        if split:
            code, name, _ = cats.get(r["cat"], (None, *UNNAMED["category"]))
            props.update(category=code, category_name=name, week=_week_label(int(r["week_ix"])))
        if by == "cell":
            x0, y0 = r["ix"] * step, r["iy"] * step
            props["cell"] = f"{r['ix']}:{r['iy']}"
            centre = [round(x0 + step / 2, 6), round(y0 + step / 2, 6)]
            geometry: dict[str, Any] | None = {"type": "Point", "coordinates": centre}
            bbox = [round(x0, 6), round(y0, 6), round(x0 + step, 6), round(y0 + step, 6)]
            features.append({"type": "Feature", "bbox": bbox, "geometry": geometry, "properties": props})
            continue
        props["grid"] = r["grid"]
        geometry = {"type": "Point", "coordinates": [round(float(r["lon"]), 6), round(float(r["lat"]), 6)]} \
            if r["lon"] is not None and r["lat"] is not None else None
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return {"type": "FeatureCollection", "features": features,
            "week": week, "category": category, "cell_m": cell_m if by == "cell" else None, "by": by}


# -- Excel (导出) ---------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, str, str], ...] = (  # attribute, zh, en
    ("key", "代码", "Code"), ("name", "名称", "Name"), ("received", "受理量", "Received"),
    ("closed", "办结量", "Closed"), ("due", "应办结量", "Due"), ("on_time", "按时办结量", "On time"),
    ("on_time_rate", "按时办结率", "On-time rate"), ("resolution_rate", "办结率", "Resolution rate"),
    ("rated", "回访量", "Rated"), ("satisfied", "满意量（含基本满意）", "Satisfied (incl. basic)"),
    ("satisfaction_rate", "满意率", "Satisfaction rate"), ("dispatched", "派遣量", "Dispatched"),
    ("returned", "退单件", "Returned"), ("return_rate", "退单率", "Return rate"),
    ("mean_hours", "平均办理时长（小时）", "Mean handling time (h)"),
    ("overdue_open", "超期未办", "Overdue open"), ("escalations", "督办次数", "Escalations"),
)
RANK_COLUMNS = (("rank", "排名", "Rank"), ("score", "综合得分", "Score"), *COLUMNS)


Sheet = tuple[str, Sequence[Row] | Sequence[RankRow], bool]  # title, rows, a ranking?


def export_xlsx(rows: Sequence[Row] | Sequence[RankRow], *, sheet: str = "考核报表", ranked: bool = False,
                more: Sequence[Sheet] = ()) -> bytes:
    """A workbook of reports, one sheet each (`sheet` first, then `more`): a row of Chinese
    headers, a row of English ones, then the figures, rates as percentages."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    wb = Workbook(write_only=True)
    for title, items, ranking_sheet in ((sheet, rows, ranked), *more):
        ws = wb.create_sheet(re.sub(r"[\\/*?:\[\]]", "-", title)[:31])
        cols = RANK_COLUMNS if ranking_sheet else COLUMNS
        for lang in (1, 2):
            header = []
            for col in cols:
                cell = WriteOnlyCell(ws, value=col[lang])
                cell.font = Font(bold=True)
                header.append(cell)
            ws.append(header)
        for item in items:
            values = item.as_dict()
            line = []
            for attr, _, _ in cols:
                cell = WriteOnlyCell(ws, value=values[attr])
                if attr in RATES and values[attr] is not None:
                    cell.number_format = "0.0%"
                line.append(cell)
            ws.append(line)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
