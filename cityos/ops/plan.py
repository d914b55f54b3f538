"""The plan's own indicators (表1 主要指标): their 2021 targets and how far the city has come.

Each row of table 1 is data (`data/plan_indicators.toml`). Where CityOS holds the data its value
is computed (`COMPUTED`, read through the engines' service modules); elsewhere someone enters it
by hand with where it came from and as of when (`enter`). `progress` sets value against target.

How each computed value is defined:
- gov_data_sharing: non-secret catalog resources shared (share type other than "none", or a
  sharing grant in force) over all non-secret resources of the hub's catalog.
- public_data_open: open-able resources (non-secret, open type not "closed") published as an open
  dataset over all open-able resources.
- one_map_usage: bureaus (委办局) that own a map layer or hold a grant in force on one, over all
  bureaus.
- parallel_approval: cases of the approval line run by the parallel-approval workflow (its
  department reviews run in parallel) over all approval cases (line or kind "approval").
- citymgmt_departments: departments that own a city-management category or hold (lead or
  dispatch) a city-management case.
- pollution_sources_online: things of the pollution-source kind that reported in the last hour
  over all such things.
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

import cityos.cases.service as cases
import cityos.hub.service as hub
import cityos.maps.service as maps
import cityos.opendata.service as opendata
import cityos.sensing.service as sensing
from cityos.core import access, audit
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, FieldError, Invalid, NotFound
from cityos.core.models import Department
from cityos.core.workdays import CITY_TZ
from cityos.ops.models import PlanIndicator
from cityos.ops.service import require_read, target

DATA = Path(__file__).parent / "data" / "plan_indicators.toml"
OPS_DEPARTMENT = "220200-yxzx"  # the operations center keeps the plan's figures
POLLUTION_KINDS = ["pollution_source"]  # Thing.kind of key pollution-source monitors
ONLINE_MS = 3_600_000  # "online": reported within the last hour
META = ("area", "basis", "binding", "note")  # table columns kept in `detail`

Computed = Callable[[Session], tuple[float | None, dict[str, Any]]]


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _sharing(session: Session) -> tuple[float | None, dict[str, Any]]:
    c = hub.sharing_counts(session)
    return _pct(c["shared"], c["non_secret"]), {
        "numerator": c["shared"], "denominator": c["non_secret"],
        "how": "共享(共享类型非“不予共享”或有有效授权)的非涉密资源 / 全部非涉密资源; shared non-secret "
               "resources (share type not none, or a grant in force) / all non-secret resources",
        "by_share_type": c["by_share_type"], "by_grant_only": c["by_grant_only"]}


def _open(session: Session) -> tuple[float | None, dict[str, Any]]:
    c = opendata.open_counts(session)
    return _pct(c["published"], c["openable"]), {
        "numerator": c["published"], "denominator": c["openable"],
        "how": "已发布开放数据集的可开放资源 / 可开放(非涉密、开放类型非“不予开放”)资源; open-able "
               "resources published as open datasets / non-secret resources not closed to the public"}


def _one_map(session: Session) -> tuple[float | None, dict[str, Any]]:
    c = maps.department_usage(session)
    return _pct(c["using"], c["bureaus"]), {
        "numerator": c["using"], "denominator": c["bureaus"], "owners": c["owners"], "layers": c["layers"],
        "how": "拥有图层或持有图层共享授权的委办局 / 全部委办局; bureaus owning a map layer or holding a "
               "grant on one / all bureaus"}


def _parallel(session: Session) -> tuple[float | None, dict[str, Any]]:
    approval = or_(cases.Case.line == "approval", cases.Case.kind == "approval")
    rows = session.execute(select(cases.CaseWorkflow.code).join(
        cases.Case, cases.Case.workflow_id == cases.CaseWorkflow.id).where(approval)).all()
    parallel = sum(1 for (code,) in rows if code == "approval")
    return _pct(parallel, len(rows)), {
        "numerator": parallel, "denominator": len(rows),
        "how": "按并联审批流程(各部门并行会审)办理的审批件 / 全部审批件; approval cases run by the "
               "parallel-approval workflow (department reviews in parallel) / all approval cases"}


def _citymgmt(session: Session) -> tuple[float | None, dict[str, Any]]:
    depts: set[int] = set(session.scalars(select(cases.CaseCategory.department_id).where(
        cases.CaseCategory.line == "citymgmt", cases.CaseCategory.department_id.is_not(None))))
    for lead, dispatch in session.execute(select(cases.Case.department_id, cases.Case.dispatch_department_id)
                                          .where(cases.Case.line == "citymgmt").distinct()):
        depts.update(d for d in (lead, dispatch) if d is not None)
    return float(len(depts)), {
        "numerator": len(depts), "denominator": None,
        "how": "拥有数字城管事项类别或办理/派遣数字城管工单的部门数; departments owning a city-management "
               "category or holding (lead or dispatch) a city-management case"}


def _pollution(session: Session) -> tuple[float | None, dict[str, Any]]:
    c = sensing.things_online(session, POLLUTION_KINDS, ONLINE_MS)
    detail: dict[str, Any] = {
        "numerator": c["online"], "denominator": c["things"],
        "how": "近1小时有上报的重点污染源监测设备 / 全部重点污染源监测设备; pollution-source monitors that "
               f"reported in the last hour / all of them (Thing.kind in {POLLUTION_KINDS})"}
    if not c["things"]:
        detail["reason"] = "no pollution-source monitors registered / 尚无重点污染源监测设备"
    return _pct(c["online"], c["things"]), detail


COMPUTED: dict[str, Computed] = {
    "gov_data_sharing": _sharing,
    "public_data_open": _open,
    "one_map_usage": _one_map,
    "parallel_approval": _parallel,
    "citymgmt_departments": _citymgmt,
    "pollution_sources_online": _pollution,
}


def compute(session: Session, code: str) -> float | None:
    """The value of a computed plan indicator now (None: no data); for the "plan" indicator source."""
    fn = COMPUTED.get(code)
    if fn is None:
        row = session.scalar(select(PlanIndicator).where(PlanIndicator.code == code))
        if row is None:
            raise NotFound("plan indicator", code)
        return row.value  # a manual row: the value last entered
    return fn(session)[0]


def rows_of(path: Path | None = None) -> list[dict[str, Any]]:
    with open(path or DATA, "rb") as f:
        return tomllib.load(f)["indicator"]


def load(session: Session, path: Path | None = None) -> int:
    """Upsert table 1's rows from the TOML (idempotent); values already known are kept."""
    have = {r.code: r for r in session.scalars(select(PlanIndicator))}
    n = 0
    for pos, spec in enumerate(rows_of(path)):
        source = spec.get("source", "manual")
        if source != "manual" and source not in COMPUTED:
            raise Invalid("source", f"unknown computation {source} / 未知计算方式")
        row = have.get(spec["code"])
        if row is None:
            row = PlanIndicator(code=spec["code"], detail={})
            session.add(row)
            n += 1
        row.name, row.name_en = spec["name"], spec.get("name_en")
        row.unit, row.target = spec.get("unit", "%"), float(spec["target"])
        row.target_year, row.comparison = int(spec.get("target_year", 2021)), spec.get("comparison", ">=")
        row.source, row.position = source, pos
        row.detail = {**(row.detail or {}), **{k: spec.get(k) for k in META}}
    session.flush()
    return n


def city_today() -> dt.date:
    return utcnow().astimezone(CITY_TZ).date()


def refresh(session: Session) -> int:
    """Recompute every computed row: value, how it was computed, as of today, its detail."""
    n = 0
    for row in session.scalars(select(PlanIndicator).where(PlanIndicator.source != "manual")):
        fn = COMPUTED.get(row.source)
        if fn is None:
            continue
        value, detail = fn(session)
        meta = {k: (row.detail or {}).get(k) for k in META}
        row.value = value
        row.value_source = f"computed: {row.source} (CityOS)"
        row.value_as_of = city_today()
        row.detail = {**meta, **detail}
        row.updated_by, row.updated_at = "system", utcnow()
        n += 1
    session.flush()
    return n


def _ops_department(session: Session) -> Department | None:
    return session.scalar(select(Department).where(Department.code == OPS_DEPARTMENT))


def get(session: Session, code: str) -> PlanIndicator:
    row = session.scalar(select(PlanIndicator).where(PlanIndicator.code == code))
    if row is None:
        raise NotFound("plan indicator", code)
    return row


def require_write(session: Session, actor: Actor, code: str | None = None) -> None:
    """ops.write on the plan's figures: the operations center's staff, platform admins."""
    access.require(actor, "ops.write", target("ops.plan", _ops_department(session), code), session)


def enter(session: Session, actor: Actor, code: str, value: Any, source: Any, as_of: Any) -> PlanIndicator:
    """Enter a manual row's value by hand, with where it came from and as of when (ops.write)."""
    require_write(session, actor, code)
    row = get(session, code)
    if row.source != "manual":
        raise Conflict(f"{code} is computed by CityOS, not entered by hand / 该指标由系统计算,不可手工填报",
                       "value")
    errors: list[FieldError] = []
    number: float | None = None
    try:
        number = float(value)
        if isinstance(value, bool) or not math.isfinite(number) or number < 0:
            raise ValueError
        if row.unit == "%" and number > 100:
            errors.append(FieldError("value", "a percentage is at most 100 / 百分比不超过100"))
    except (TypeError, ValueError):
        errors.append(FieldError("value", "a non-negative number / 须为非负数"))
    text = source.strip() if isinstance(source, str) else ""
    if not text:
        errors.append(FieldError("source", "where the figure comes from is required / 须注明数据来源"))
    elif len(text) > 250:
        errors.append(FieldError("source", "at most 250 characters / 不超过250字"))
    day: dt.date | None = None
    try:
        day = as_of if isinstance(as_of, dt.date) else dt.date.fromisoformat(str(as_of))
        if day > city_today():
            errors.append(FieldError("as_of", "not in the future / 不能晚于今天"))
    except (TypeError, ValueError):
        errors.append(FieldError("as_of", "a date YYYY-MM-DD / 日期格式 YYYY-MM-DD"))
    if errors:
        raise Invalid.many(errors)
    row.value, row.value_source, row.value_as_of = number, text, day
    row.updated_by, row.updated_at = actor.name, utcnow()
    audit.append(session, actor=actor.name, department=actor.department_code, action="ops.plan.enter",
                 object_type="ops.plan_indicator", object_id=code,
                 detail={"value": number, "source": text, "as_of": day.isoformat() if day else None})
    session.flush()
    return row


def _status(row: PlanIndicator) -> tuple[str, float | None]:
    if row.value is None:
        return "unknown", None
    if row.comparison == "<=":
        met = row.value <= row.target
        ratio = (row.target / row.value) if row.value else 1.0
    else:
        met = row.value >= row.target
        ratio = row.value / row.target if row.target else 1.0
    return ("met" if met else "gap"), round(min(ratio, 1.0) if not met else ratio, 4)


def row_dict(row: PlanIndicator) -> dict[str, Any]:
    status, ratio = _status(row)
    detail = row.detail or {}
    gap = None
    if row.value is not None and status == "gap":
        gap = round(abs(row.target - row.value), 4)
    return {
        "code": row.code, "name": row.name, "name_en": row.name_en, "unit": row.unit, "target": row.target,
        "target_year": row.target_year, "comparison": row.comparison, "source": row.source,
        "computed": row.source != "manual", "value": row.value, "value_source": row.value_source,
        "value_as_of": row.value_as_of.isoformat() if row.value_as_of else None,
        "status": status, "ratio": ratio, "gap": gap,
        "area": detail.get("area"), "basis": detail.get("basis"), "binding": detail.get("binding"),
        "note": detail.get("note"), "detail": {k: v for k, v in detail.items() if k not in META},
        "updated_by": row.updated_by,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


def progress(session: Session, actor: Actor) -> list[dict[str, Any]]:
    """Table 1 against its targets: value, met or gap, ratio, and how each value was known."""
    require_read(session, actor)
    rows = session.scalars(select(PlanIndicator).order_by(PlanIndicator.position, PlanIndicator.code))
    return [row_dict(r) for r in rows]


def can_write(session: Session, actor: Actor) -> bool:
    """May this actor enter manual values (ops.write on the operations center's plan)?"""
    return access.decide(actor, "ops.write", target("ops.plan", _ops_department(session)), session).allowed
