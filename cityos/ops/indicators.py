"""Vital-sign indicators (运行体征指标): what each measures, how it is computed, when to worry.

Indicators are data (`Indicator` rows). `source` names a computation in `SOURCES` — a function
`(session, params, district) -> float | None` over the engines' `service` modules — and `params`
its arguments, checked when the indicator is saved. `refresh` computes one indicator within a
time budget (params "timeout_s", default 2 s): PostgreSQL cancels the query itself
(`SET LOCAL statement_timeout` inside a savepoint), SQLite interrupts it from its progress
handler, and a computation that overran in Python is reported as timed out too. A failing or
slow computation never raises out of `refresh`: the indicator shows "no data" with the reason,
and the others refresh as usual.

History: the live value is updated on every refresh, but a row of `IndicatorValue` is appended
only when the last one is older than the history grain (params "history_s", default 60 s), so a
1-second indicator writes 1,440 rows a day, not 86,400. The forecast is recomputed when a row is
appended.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import cityos.cases.service as cases
import cityos.maps.service as maps
import cityos.sensing.service as sensing
from cityos.core import access, audit
from cityos.core.access import SYSTEM, Actor
from cityos.core.db import utcnow
from cityos.core.errors import FieldError, Invalid, NotFound
from cityos.core.models import Department
from cityos.ops import forecast as fc
from cityos.ops.models import LEVELS, EarlyWarning, Incident, Indicator, IndicatorValue
from cityos.ops.service import department_of, require_read, target, text_of

log = logging.getLogger("cityos.ops.indicators")

LEVEL_ORDER = ("normal", "attention", "warning", "critical")
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_HISTORY_S = 60
DEFAULT_HORIZON_S = 3600
FORECAST_DAYS = 7
THEMES = {
    "environment": ("生态环境", "Environment"), "traffic": ("交通出行", "Traffic"),
    "hotline": ("12345 热线", "Hotline"), "alerts": ("感知告警", "Alerts"),
    "sharing": ("数据共享", "Data sharing"), "incidents": ("应急事件", "Incidents"),
    "city": ("城市运行", "City"), "plan": ("规划指标", "Plan"),
}


class SourceError(Exception):
    """A computation could not give a value; the message is shown as the reason for "no data"."""


# -- the computations (数据来源) ---------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    kind: str  # str | number | int | choice
    required: bool = False
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Source:
    name: str
    fn: Callable[[Session, Mapping[str, Any], str | None], float | None]
    description: str
    params: dict[str, Param] = field(default_factory=dict)


COMMON = {  # every source accepts these
    "timeout_s": Param("number", low=0.01, high=60), "history_s": Param("int", low=1, high=86_400),
    "horizon_s": Param("int", low=60, high=7 * 86_400),
}
FNS = ("mean", "max", "min", "sum", "count")
SEVERITIES = ("info", "warning", "critical")


def _things_in(session: Session, district: str | None) -> list[int] | None:
    """The sensing things located in a district (by their first location, placed on the one map's
    district layer in one batch); None for the whole city."""
    if not district:
        return None
    points = sensing.thing_points(session)
    if not points:
        return []
    ids = list(points)
    placed = maps.locate_many(session, SYSTEM, [points[i][0] for i in ids], [points[i][1] for i in ids])
    return [i for i, d in zip(ids, placed.get("district") or [None] * len(ids), strict=True) if d == district]


def _sensing_latest(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    values = sensing.latest_values(session, params["property"], kind=params.get("kind"),
                                   max_age_s=float(params.get("max_age_s", 900)),
                                   thing_ids=_things_in(session, district))
    fn = params.get("fn", "mean")
    if fn == "count":
        return float(len(values))
    if not values:
        return None
    if fn == "max":
        return max(values)
    if fn == "min":
        return min(values)
    if fn == "sum":
        return sum(values)
    return sum(values) / len(values)


def _sensing_alerts_open(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    things = _things_in(session, district)
    return float(sensing.alerts_open_count(session, params.get("severity"), thing_ids=things))


def _sensing_online_rate(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    return sensing.online_rate(session, float(params.get("minutes", 15)), params.get("kind"),
                               thing_ids=_things_in(session, district))


def _cases_backlog(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    return float(cases.backlog_count(session, params.get("line"), district))


def _cases_created_today(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    return float(cases.created_today_count(session, params.get("line"), district))


def _cases_on_time_rate(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    return cases.on_time_rate_month(session, params.get("line"), district)


def _incidents_active(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    q = select(func.count()).select_from(Incident).where(Incident.status == "active")
    if district:
        q = q.where(Incident.district_code == district)
    return float(session.scalar(q) or 0)


def _warnings_open(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    q = select(func.count()).select_from(EarlyWarning).where(EarlyWarning.state == "open")
    if params.get("level"):
        q = q.where(EarlyWarning.level == params["level"])
    return float(session.scalar(q) or 0)


def _plan(session: Session, params: Mapping[str, Any], district: str | None) -> float | None:
    try:
        from cityos.ops import plan
    except ImportError as exc:  # H4's module not there (yet)
        raise SourceError(f"规划指标计算不可用 / plan indicators unavailable: {exc}") from exc
    compute = getattr(plan, "compute", None)
    if compute is None:
        raise SourceError("规划指标计算不可用 / plan indicators unavailable: cityos.ops.plan.compute missing")
    value = compute(session, params["code"])
    return float(value) if value is not None else None


LINES = tuple(cases.LINES)
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("sensing.latest", _sensing_latest,
           "最新读数的均值/最大值 / mean (or max, min, sum, count) of the latest reading of the streams "
           "of an observed property",
           {"property": Param("str", required=True), "kind": Param("str"), "fn": Param("choice", choices=FNS),
            "max_age_s": Param("number", low=1, high=30 * 86_400)}),
    Source("sensing.alerts_open", _sensing_alerts_open, "未解除的感知告警数 / open sensing alerts",
           {"severity": Param("choice", choices=SEVERITIES)}),
    Source("sensing.online_rate", _sensing_online_rate,
           "设备在线率 % / percent of things that reported within `minutes`",
           {"kind": Param("str"), "minutes": Param("number", low=0.1, high=7 * 1440)}),
    Source("cases.backlog", _cases_backlog, "在办工单数 / open cases",
           {"line": Param("choice", choices=LINES)}),
    Source("cases.created_today", _cases_created_today, "今日受理工单数 / cases received today",
           {"line": Param("choice", choices=LINES)}),
    Source("cases.on_time_rate", _cases_on_time_rate,
           "本月按时办结率 % / percent of this month's closed cases closed within their deadline",
           {"line": Param("choice", choices=LINES)}),
    Source("ops.incidents_active", _incidents_active, "处置中的突发事件数 / incidents under command"),
    Source("ops.warnings_open", _warnings_open, "未关闭的预警数 / open early warnings",
           {"level": Param("choice", choices=LEVEL_ORDER)}),
    Source("plan", _plan, "规划主要指标 / a plan indicator (table 1)", {"code": Param("str", required=True)}),
)}


def check_params(source: str, params: Any) -> dict[str, Any]:
    """The params of `source`, checked; unknown source → Invalid("source"), bad params →
    Invalid("params") naming the parameter."""
    src = SOURCES.get(source)
    if src is None:
        raise Invalid("source", f"unknown source {str(source)[:64]!r}; one of {', '.join(sorted(SOURCES))} / "
                                "未知的数据来源")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise Invalid("params", "an object / 应为对象")
    allowed = {**COMMON, **src.params}
    errors = []
    for key in params:
        if key not in allowed:
            errors.append(FieldError("params", f"{key}: unknown parameter of {source} / 未知参数"))
    for key, p in allowed.items():
        if key not in params or params[key] is None:
            if p.required:
                errors.append(FieldError("params", f"{key}: required by {source} / 必填"))
            continue
        v = params[key]
        if p.kind in ("str", "choice"):
            if not isinstance(v, str) or not v or len(v) > 200:
                errors.append(FieldError("params", f"{key}: a non-empty text / 应为非空文本"))
            elif p.kind == "choice" and v not in p.choices:
                errors.append(FieldError("params", f"{key}: one of {', '.join(p.choices)} / 取值无效"))
        else:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if ok and p.kind == "int" and not float(v).is_integer():
                ok = False
            if ok and ((p.low is not None and v < p.low) or (p.high is not None and v > p.high)):
                ok = False
            if not ok:
                errors.append(FieldError("params", f"{key}: a number from {p.low:g} to {p.high:g} / "
                                                   f"应为 {p.low:g} 至 {p.high:g} 之间的数"))
    if errors:
        raise Invalid.many(errors)
    return {k: v for k, v in params.items() if v is not None}


# -- thresholds and levels (阈值与等级) -------------------------------------------------------


def check_thresholds(thresholds: Any) -> dict[str, Any]:
    """{"direction": "up"|"down", "attention", "warning", "critical"}: the levels given must be
    numbers, strictly worse in the direction ("up": rising is worse). {} has no levels."""
    if thresholds is None or thresholds == {}:
        return {}
    if not isinstance(thresholds, Mapping):
        raise Invalid("thresholds", "an object / 应为对象")
    unknown = set(thresholds) - {"direction", *LEVEL_ORDER[1:]}
    if unknown:
        raise Invalid("thresholds", f"unknown key {sorted(unknown)[0]} / 未知字段")
    direction = thresholds.get("direction", "up")
    if direction not in ("up", "down"):
        raise Invalid("thresholds", "direction is up or down / direction 须为 up 或 down")
    out: dict[str, Any] = {"direction": direction}
    last: tuple[str, float] | None = None
    for name in LEVEL_ORDER[1:]:
        v = thresholds.get(name)
        if v is None:
            continue
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise Invalid("thresholds", f"{name}: a number / 应为数值")
        if last is not None and not (v > last[1] if direction == "up" else v < last[1]):
            raise Invalid("thresholds", f"{name} ({v:g}) must be {'above' if direction == 'up' else 'below'} "
                                        f"{last[0]} ({last[1]:g}) / 阈值须单调"
                                        f"{'递增' if direction == 'up' else '递减'}")
        out[name] = float(v)
        last = (name, float(v))
    if last is None:
        raise Invalid("thresholds", "at least one of attention, warning, critical / 至少设一个阈值")
    return out


def level_of(thresholds: Mapping[str, Any] | None, value: float | None) -> str | None:
    """The level of `value`: the gravest threshold it reached (None without a value)."""
    if value is None:
        return None
    thresholds = thresholds or {}
    up = thresholds.get("direction", "up") != "down"
    for name in reversed(LEVEL_ORDER[1:]):
        limit = thresholds.get(name)
        if limit is not None and (value >= limit if up else value <= limit):
            return name
    return "normal"


def level_rank(level: str | None) -> int:
    return LEVEL_ORDER.index(level) if level in LEVEL_ORDER else -1


# -- districts ------------------------------------------------------------------------------------


def district_code(session: Session, code: str | None) -> str | None:
    """A district's administrative code, given it or its department code; unknown → Invalid."""
    if code is None or code == "":
        return None
    dept = session.scalar(select(Department).where(
        Department.kind == "district", (Department.admin_code == str(code)) | (Department.code == str(code))))
    if dept is None:
        raise Invalid("district", f"unknown district {str(code)[:32]!r} / 区县不存在")
    return dept.admin_code or dept.code


# -- indicators -----------------------------------------------------------------------------------


_text = text_of


def indicator_upsert(session: Session, actor: Actor, spec: Mapping[str, Any]) -> Indicator:
    """Create or replace an indicator by code (ops.write on its department)."""
    errors: list[FieldError] = []
    code = _text(spec, "code", errors, required=True, limit=64)
    if code and not code.replace("-", "").replace("_", "").replace(".", "").isalnum():
        errors.append(FieldError("code", "letters, digits, - _ . / 代码只能含字母、数字、- _ ."))
    name = _text(spec, "name", errors, required=True)
    name_en = _text(spec, "name_en", errors)
    unit = _text(spec, "unit", errors, limit=32)
    theme = _text(spec, "theme", errors, limit=32) or "city"
    refresh = spec.get("refresh_seconds", 60)
    if not isinstance(refresh, int) or isinstance(refresh, bool) or not 1 <= refresh <= 86_400:
        errors.append(FieldError("refresh_seconds", "an integer from 1 to 86400 / 应为 1 至 86400 的整数"))
    params: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}
    try:
        params = check_params(str(spec.get("source") or ""), spec.get("params"))
    except Invalid as exc:
        errors.extend(exc.errors)
    try:
        thresholds = check_thresholds(spec.get("thresholds"))
    except Invalid as exc:
        errors.extend(exc.errors)
    try:
        district = district_code(session, spec.get("district"))
    except Invalid as exc:
        errors.extend(exc.errors)
    try:
        dept = department_of(session, spec.get("department") or actor.department_code)
    except Invalid as exc:
        errors.extend(exc.errors)
    if errors:
        raise Invalid.many(errors)
    access.require(actor, "ops.write", target("ops.indicator", dept, code), session)
    ind = session.scalar(select(Indicator).where(Indicator.code == code))
    if ind is not None and ind.department_id != dept.id:  # moving it: the old owner must agree too
        access.require(actor, "ops.write", target("ops.indicator", ind.department, code), session)
    created = ind is None
    if ind is None:
        ind = Indicator(code=code)
        session.add(ind)
    changed = ind.source != spec["source"] or (ind.params or {}) != params
    ind.name, ind.name_en, ind.unit, ind.theme = name, name_en, unit, theme
    ind.department_id, ind.department = dept.id, dept
    ind.source, ind.params, ind.refresh_seconds = str(spec["source"]), params, refresh
    ind.thresholds, ind.district_code = thresholds, district
    ind.active = bool(spec.get("active", True))
    if changed:  # a new computation: the old value says nothing about it
        ind.value = ind.level = ind.computed_at = ind.error = None
        ind.forecast = None
    elif ind.value is not None:
        ind.level = level_of(thresholds, ind.value)
    session.flush()
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="ops.indicator.create" if created else "ops.indicator.update",
                 object_type="ops.indicator", object_id=code,
                 detail={"source": ind.source, "params": params, "thresholds": thresholds})
    return ind


def indicator_list(session: Session, actor: Actor, theme: str | None = None) -> list[Indicator]:
    require_read(session, actor)
    q = select(Indicator).where(Indicator.active.is_(True))
    if theme:
        q = q.where(Indicator.theme == theme)
    return list(session.scalars(q.order_by(Indicator.theme, Indicator.code)))


def indicator_get(session: Session, actor: Actor, code: str) -> Indicator:
    require_read(session, actor)
    ind = session.scalar(select(Indicator).where(Indicator.code == code))
    if ind is None:
        raise NotFound("indicator / 指标", code)
    return ind


# -- computing (计算) -----------------------------------------------------------------------------


def _timeout_reason(seconds: float) -> str:
    return f"查询超时 / query timed out after {seconds:g} s"


def compute(session: Session, source: str, params: Mapping[str, Any], district: str | None,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> float | None:
    """Run a source within its time budget; raises SourceError with the reason when it fails."""
    src = SOURCES.get(source)
    if src is None:
        raise SourceError(f"未知的数据来源 / unknown source {source}")
    started = time.monotonic()
    conn = session.connection()
    try:
        if conn.dialect.name == "postgresql":
            nested = session.begin_nested()  # SET LOCAL ends with it; a cancelled query does not
            try:                              # poison the caller's transaction
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
                value = src.fn(session, params, district)
            finally:
                nested.rollback()  # sources only read: nothing to keep
        else:
            raw = conn.connection.driver_connection
            deadline = started + timeout_s
            if isinstance(raw, sqlite3.Connection):
                raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            try:
                value = src.fn(session, params, district)
            finally:
                if isinstance(raw, sqlite3.Connection):
                    raw.set_progress_handler(None, 0)
    except SourceError:
        raise
    except Exception as exc:
        text = str(exc).lower()
        if "interrupt" in text or "statement timeout" in text or "canceling statement" in text:
            raise SourceError(_timeout_reason(timeout_s)) from exc
        if isinstance(exc, Invalid):
            raise SourceError(f"参数错误 / bad parameters: {exc}") from exc
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise SourceError(f"{type(exc).__name__}: {first}") from exc
    if time.monotonic() - started > timeout_s:
        raise SourceError(_timeout_reason(timeout_s))
    if value is not None:
        value = float(value)
        if not math.isfinite(value):
            raise SourceError("结果不是有限数 / the result is not a finite number")
    return value


def _aware(at: dt.datetime | None) -> dt.datetime | None:
    return at.replace(tzinfo=dt.UTC) if at is not None and at.tzinfo is None else at


def history_rows(session: Session, indicator_id: int, since: dt.datetime,
                 until: dt.datetime | None = None) -> list[tuple[dt.datetime, float]]:
    q = select(IndicatorValue.at, IndicatorValue.value).where(
        IndicatorValue.indicator_id == indicator_id, IndicatorValue.at >= since)
    if until is not None:
        q = q.where(IndicatorValue.at <= until)
    return [(_aware(at), float(v)) for at, v in session.execute(q.order_by(IndicatorValue.at))]  # type: ignore[misc]


FORECAST_EVERY_S = 900  # the seasonal baseline moves by the hour: a quarter-hourly forecast is fresh
# (indicator id, created) -> when this process last forecast it; `created` tells a new indicator
# that reuses an id (a test's fresh database) from the one before it.
_forecast_made: dict[tuple[int, Any], dt.datetime] = {}


def _forecast_due(ind: Indicator, now: dt.datetime) -> bool:
    """Forecast again only every FORECAST_EVERY_S: it reads a week of history (10,000 rows at a
    minute's grain), which on every one-second refresh would hold up the live tiles."""
    made = _forecast_made.get((ind.id, ind.created_at))
    return made is None or ind.forecast is None and (now - made).total_seconds() >= 60 or \
        (now - made).total_seconds() >= FORECAST_EVERY_S or now < made


def update_forecast(session: Session, ind: Indicator, now: dt.datetime) -> None:
    _forecast_made[(ind.id, ind.created_at)] = now
    params = ind.params or {}
    horizon = int(params.get("horizon_s", DEFAULT_HORIZON_S))
    hist = history_rows(session, ind.id, now - dt.timedelta(days=FORECAST_DAYS + 1))
    value, mape = fc.forecast(hist, horizon, now=now, days=FORECAST_DAYS)
    if value is None:
        ind.forecast = None
        return
    at = now + dt.timedelta(seconds=horizon)
    ind.forecast = {"at": _iso(at), "value": value, "level": level_of(ind.thresholds, value),
                    "mape": mape, "horizon_s": horizon}


def refresh(session: Session, indicator: Indicator, now: dt.datetime | None = None) -> Indicator:
    """Compute one indicator now; a failure becomes "no data" with its reason, never an exception
    (the evaluation of its warning rules follows, each rule's action on its own)."""
    now = now or utcnow()
    params = indicator.params or {}
    try:
        value = compute(session, indicator.source, params, indicator.district_code,
                        float(params.get("timeout_s", DEFAULT_TIMEOUT_S)))
        error = None
    except SourceError as exc:
        value, error = None, str(exc)[:500]
    except Exception as exc:  # noqa: BLE001 - a broken source must not stop the clock
        log.exception("indicator %s failed", indicator.code)
        value, error = None, f"{type(exc).__name__}: {exc}"[:500]
    if value is None and error is None:
        error = "暂无数据 / no data yet"
    indicator.value, indicator.error, indicator.computed_at = value, error, now
    indicator.level = level_of(indicator.thresholds, value)
    if value is not None:
        grain = int(params.get("history_s", DEFAULT_HISTORY_S))
        last = _aware(session.scalar(select(func.max(IndicatorValue.at))
                                     .where(IndicatorValue.indicator_id == indicator.id)))
        if last is None or (now - last).total_seconds() >= grain:
            session.add(IndicatorValue(indicator_id=indicator.id, at=now, value=value))
            session.flush()
        if _forecast_due(indicator, now):
            update_forecast(session, indicator, now)
    session.flush()
    from cityos.ops import warnings  # warnings reads indicators' levels

    try:
        warnings.evaluate(session, indicator, now=now)
    except Exception:  # noqa: BLE001 - warnings keep their own errors; the value stands
        log.exception("warning rules of indicator %s failed", indicator.code)
    return indicator


def is_due(ind: Indicator, now: dt.datetime) -> bool:
    at = _aware(ind.computed_at)
    return at is None or (now - at).total_seconds() >= ind.refresh_seconds - 0.05


def refresh_due(session: Session, now: dt.datetime | None = None) -> list[Indicator]:
    """Refresh every active indicator whose interval has passed; one failing does not stop the rest."""
    now = now or utcnow()
    done = []
    for ind in session.scalars(select(Indicator).where(Indicator.active.is_(True)).order_by(Indicator.id)):
        if not is_due(ind, now):
            continue
        try:
            refresh(session, ind, now)
            done.append(ind)
        except Exception:  # noqa: BLE001
            log.exception("refreshing indicator %s failed", ind.code)
    return done


def history(session: Session, actor: Actor, code: str, since: dt.datetime | None = None,
            until: dt.datetime | None = None) -> list[tuple[dt.datetime, float]]:
    """The recorded values of an indicator in [since, until] (default: the last 24 hours)."""
    ind = indicator_get(session, actor, code)
    until = _aware(until)
    since = _aware(since) or (until or utcnow()) - dt.timedelta(days=1)
    if until is not None and until < since:
        raise Invalid("until", "must not be before since / 结束时间不能早于开始时间")
    if until is not None and (until - since).days > 400:
        raise Invalid("since", "at most 400 days at once / 一次最多查询 400 天")
    return history_rows(session, ind.id, since, until)


def _iso(at: dt.datetime | None) -> str | None:
    at = _aware(at)
    return at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if at else None


def indicator_public(ind: Indicator) -> dict[str, Any]:
    """An indicator as the API and the big screen show it."""
    dept = ind.department
    level = ind.level
    return {
        "code": ind.code, "name": ind.name, "name_en": ind.name_en, "unit": ind.unit, "theme": ind.theme,
        "department": dept.code if dept else None, "department_name": dept.name if dept else None,
        "source": ind.source, "params": dict(ind.params or {}), "refresh_seconds": ind.refresh_seconds,
        "value": ind.value, "level": level, "level_name": list(LEVELS[level]) if level in LEVELS else None,
        "computed_at": _iso(ind.computed_at), "error": ind.error, "forecast": ind.forecast,
        "thresholds": dict(ind.thresholds or {}), "district": ind.district_code, "active": ind.active,
    }


# -- the demo city's indicators (演示指标) ----------------------------------------------------------



def _t(direction: str, attention: float, warning: float, critical: float) -> dict[str, Any]:
    return {"direction": direction, "attention": attention, "warning": warning, "critical": critical}


AQI_T = _t("up", 100, 150, 200)
PM25_T = _t("up", 75, 115, 150)


def _d(code: str, name: str, name_en: str, unit: str | None, theme: str, source: str,
       params: dict[str, Any], refresh: int, thresholds: dict[str, Any]) -> dict[str, Any]:
    return {"code": code, "name": name, "name_en": name_en, "unit": unit, "theme": theme, "source": source,
            "params": params, "refresh_seconds": refresh, "thresholds": thresholds}


DEFAULTS: tuple[dict[str, Any], ...] = (
    # environment: live tiles, every second
    _d("env.aqi", "空气质量指数 AQI", "Air quality index", "AQI", "environment", "sensing.latest",
       {"property": "aqi"}, 1, AQI_T),
    _d("env.aqi_max", "AQI 最高站点", "Highest station AQI", "AQI", "environment", "sensing.latest",
       {"property": "aqi", "fn": "max"}, 1, AQI_T),
    _d("env.pm25", "PM2.5 平均浓度", "PM2.5 mean", "µg/m³", "environment", "sensing.latest",
       {"property": "pm25"}, 1, PM25_T),
    _d("env.pm25_max", "PM2.5 最高浓度", "PM2.5 highest", "µg/m³", "environment", "sensing.latest",
       {"property": "pm25", "fn": "max"}, 1, PM25_T),
    _d("env.pm10", "PM10 平均浓度", "PM10 mean", "µg/m³", "environment", "sensing.latest",
       {"property": "pm10"}, 1, _t("up", 150, 250, 350)),
    _d("env.no2", "NO2 平均浓度", "NO2 mean", "µg/m³", "environment", "sensing.latest",
       {"property": "no2"}, 1, _t("up", 100, 200, 700)),
    _d("env.o3", "O3 平均浓度", "O3 mean", "µg/m³", "environment", "sensing.latest",
       {"property": "o3"}, 1, _t("up", 160, 215, 265)),
    _d("env.do", "松花江溶解氧", "Songhua dissolved oxygen", "mg/L", "environment", "sensing.latest",
       {"property": "do", "fn": "min"}, 1, _t("down", 6, 5, 3)),
    _d("env.cod", "松花江化学需氧量", "Songhua COD", "mg/L", "environment", "sensing.latest",
       {"property": "cod", "fn": "max"}, 1, _t("up", 15, 20, 30)),
    _d("env.air_temp", "气温", "Air temperature", "°C", "environment", "sensing.latest",
       {"property": "air_temp", "kind": "air"}, 1, _t("up", 32, 35, 40)),
    _d("env.pipe_pressure", "供水管网最低压力", "Lowest water pipe pressure", "MPa", "environment",
       "sensing.latest", {"property": "pressure", "fn": "min", "max_age_s": 300}, 1,
       _t("down", 0.28, 0.2, 0.15)),
    _d("env.air_online", "空气监测站在线率", "Air stations online", "%", "environment", "sensing.online_rate",
       {"kind": "air", "minutes": 10}, 30, _t("down", 95, 80, 50)),
    # traffic
    _d("traffic.speed", "路网平均车速", "Mean road speed", "km/h", "traffic", "sensing.latest",
       {"property": "speed", "kind": "traffic"}, 10, _t("down", 30, 20, 12)),
    _d("traffic.occupancy", "路网平均占有率", "Mean occupancy", "%", "traffic", "sensing.latest",
       {"property": "occupancy"}, 10, _t("up", 30, 50, 70)),
    _d("traffic.volume", "断面车流量", "Traffic volume", "veh/min", "traffic", "sensing.latest",
       {"property": "traffic_volume", "fn": "sum"}, 10, {}),
    _d("traffic.bus_speed", "公交平均车速", "Mean bus speed", "km/h", "traffic", "sensing.latest",
       {"property": "speed", "kind": "bus"}, 10, _t("down", 18, 12, 8)),
    _d("traffic.online", "交通检测器在线率", "Traffic detectors online", "%", "traffic",
       "sensing.online_rate",
       {"kind": "traffic", "minutes": 10}, 60, _t("down", 95, 80, 50)),
    _d("traffic.visitors", "景区入园人次", "Scenic visitors", "人次/min", "traffic", "sensing.latest",
       {"property": "visitors", "fn": "sum"}, 30, _t("up", 200, 400, 600)),
    # hotline
    _d("hotline.backlog", "12345 在办工单", "Hotline open cases", "件", "hotline", "cases.backlog",
       {"line": "hotline"}, 30, _t("up", 200, 500, 1000)),
    _d("hotline.today", "12345 今日受理", "Hotline cases today", "件", "hotline", "cases.created_today",
       {"line": "hotline"}, 30, {}),
    _d("hotline.on_time", "12345 本月按时办结率", "Hotline on-time rate (month)", "%", "hotline",
       "cases.on_time_rate", {"line": "hotline"}, 300, _t("down", 95, 90, 80)),
    _d("citymgmt.backlog", "数字城管在办案件", "City management open cases", "件", "hotline", "cases.backlog",
       {"line": "citymgmt"}, 30, _t("up", 200, 500, 1000)),
    _d("citymgmt.on_time", "数字城管本月按时结案率", "City management on-time rate", "%", "hotline",
       "cases.on_time_rate", {"line": "citymgmt"}, 300, _t("down", 95, 90, 80)),
    # alerts
    _d("alerts.open", "未解除感知告警", "Open sensing alerts", "条", "alerts", "sensing.alerts_open", {}, 10,
       _t("up", 10, 30, 100)),
    _d("alerts.critical", "严重告警", "Critical alerts", "条", "alerts", "sensing.alerts_open",
       {"severity": "critical"}, 10, _t("up", 1, 3, 10)),
    _d("alerts.home_gas", "居家燃气最高浓度", "Highest home gas", "%LEL", "alerts", "sensing.latest",
       {"property": "gas", "fn": "max"}, 10, _t("up", 10, 20, 50)),
    _d("alerts.wearable_online", "智能手环在线率", "Wearables online", "%", "alerts", "sensing.online_rate",
       {"kind": "wearable", "minutes": 10}, 60, _t("down", 90, 70, 50)),
    # data sharing and opening (table 1 of the plan, computed from the hub, open data and the map)
    _d("sharing.gov_rate", "政务数据共享率", "Government data sharing rate", "%", "sharing", "plan",
       {"code": "gov_data_sharing"}, 300, _t("down", 95, 85, 70)),
    _d("sharing.open_rate", "非涉密公共数据开放率", "Non-secret public data open rate", "%", "sharing",
       "plan", {"code": "public_data_open"}, 300, _t("down", 80, 60, 40)),
    _d("sharing.one_map", "一张图部门使用率", "One-map department usage", "%", "sharing", "plan",
       {"code": "one_map_usage"}, 300, _t("down", 75, 50, 30)),
    # the city's sensing network itself
    _d("city.devices_online", "感知设备在线率", "Devices online", "%", "city", "sensing.online_rate",
       {"minutes": 15}, 60, _t("down", 90, 75, 50)),
    _d("city.pipe_online", "管网监测点在线率", "Pipe monitors online", "%", "city",
       "sensing.online_rate",
       {"kind": "pipe", "minutes": 10}, 60, _t("down", 95, 80, 50)),
    # incidents
    _d("incidents.active", "处置中突发事件", "Incidents under command", "起", "incidents",
       "ops.incidents_active", {}, 10, _t("up", 1, 3, 5)),
    _d("incidents.warnings", "未关闭预警", "Open early warnings", "条", "incidents", "ops.warnings_open", {},
       10, _t("up", 1, 5, 10)),
)


def seed_defaults(session: Session, department_code: str) -> list[Indicator]:
    """The demo city's ~30 indicators, owned by `department_code`; those already there are kept."""
    from cityos.core.access import SYSTEM

    have = set(session.scalars(select(Indicator.code)))
    made = []
    for spec in DEFAULTS:
        if spec["code"] not in have:
            made.append(indicator_upsert(session, SYSTEM, {**spec, "department": department_code}))
    return made
