"""Tables of the operations center (城市运行管理中心): vital-sign indicators and their history,
early-warning rules and the warnings they raise, emergency incidents with their response plans
and timeline, the plan's own indicators (table 1 of the master plan) and its 43 projects.

Indicators are data: `source` names a computation in `cityos.ops.indicators.SOURCES` and
`params` its arguments, so a city adds an indicator without writing code.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cityos.core.db import Base, UTCDateTime, utcnow
from cityos.core.models import Department

BIGID = BigInteger().with_variant(Integer(), "sqlite")

LEVELS = {  # an indicator's state against its thresholds, and a warning's level (预警级别)
    "normal": ("正常", "Normal"), "attention": ("关注", "Attention"),
    "warning": ("预警", "Warning"), "critical": ("严重", "Critical"),
}
INCIDENT_LEVELS = {  # 突发事件分级: I is the gravest
    "I": ("特别重大", "Extraordinarily serious"), "II": ("重大", "Serious"),
    "III": ("较大", "Relatively serious"), "IV": ("一般", "Ordinary"),
}
INCIDENT_STATUSES = {"active": ("处置中", "Responding"), "closed": ("已结束", "Closed")}
PROJECT_STATUSES = {"planned": ("未开始", "Planned"), "running": ("建设中", "Under way"),
                    "done": ("已完成", "Done"), "delayed": ("滞后", "Delayed"),
                    "suspended": ("暂停", "Suspended")}


class Indicator(Base):
    """A vital sign (运行体征指标): what it measures, how it is computed and when to worry."""

    __tablename__ = "ops_indicators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    unit: Mapped[str | None] = mapped_column(String(32))
    # environment, traffic, hotline, alerts, sharing, incidents: the screen's tiles
    theme: Mapped[str] = mapped_column(String(32), default="city")
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    source: Mapped[str] = mapped_column(String(64))  # a key of cityos.ops.indicators.SOURCES
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    refresh_seconds: Mapped[int] = mapped_column(Integer, default=60)
    # {"direction": "up"|"down", "attention": x, "warning": y, "critical": z}: "up" worries as it rises
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    district_code: Mapped[str | None] = mapped_column(String(12))  # None: the whole city
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The latest computation, so the screen never waits for a query.
    value: Mapped[float | None] = mapped_column(Float)
    level: Mapped[str | None] = mapped_column(String(16))
    computed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(String(500))  # why there is no value ("no data")
    forecast: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {"at", "value", "level", "mape"}
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    department: Mapped[Department] = relationship(lazy="joined")


class IndicatorValue(Base):
    """One computed value of an indicator (历史值)."""

    __tablename__ = "ops_indicator_values"
    __table_args__ = (Index("ix_ops_values_indicator_at", "indicator_id", "at"),)

    id: Mapped[int] = mapped_column(BIGID, primary_key=True)
    indicator_id: Mapped[int] = mapped_column(ForeignKey("ops_indicators.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    value: Mapped[float] = mapped_column(Float)


class WarningRule(Base):
    """An early-warning rule (预警规则): on an indicator's level or forecast, or on sensing alerts.

    `on` is "indicator" (fires when the indicator reaches `min_level`), "forecast" (when its
    forecast will), or "alert" (when a sensing alert of `match` opens: severity, rule code,
    department). `action` is "notify", "incident" (opens an incident of `incident_type`) or
    "case" (registers a case of `case_category`)."""

    __tablename__ = "ops_warning_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    on: Mapped[str] = mapped_column(String(16))
    indicator_id: Mapped[int | None] = mapped_column(ForeignKey("ops_indicators.id", ondelete="CASCADE"))
    min_level: Mapped[str] = mapped_column(String(16), default="warning")
    match: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    level: Mapped[str] = mapped_column(String(16), default="warning")  # the warning's level
    notify: Mapped[list[str]] = mapped_column(JSON, default=list)  # department codes told (通知)
    action: Mapped[str] = mapped_column(String(16), default="notify")
    incident_type: Mapped[str | None] = mapped_column(String(64))
    incident_level: Mapped[str | None] = mapped_column(String(4))
    case_category: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class EarlyWarning(Base):
    """A warning raised (预警信息); open until its cause clears or someone closes it."""

    __tablename__ = "ops_warnings"
    __table_args__ = (Index("ix_ops_warnings_state", "state", "raised_at"),)

    id: Mapped[int] = mapped_column(BIGID, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("ops_warning_rules.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    title: Mapped[str] = mapped_column(String(300))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # value, forecast, alert id...
    # indicator:<id>, alert:<id> or manual:<rule id>: one open warning per cause
    source_key: Mapped[str] = mapped_column(String(100))
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("ops_incidents.id"))
    case_number: Mapped[str | None] = mapped_column(String(32))
    raised_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class IncidentType(Base):
    """A kind of emergency (突发事件类型): flood, gas leak, pipe burst, heavy pollution..."""

    __tablename__ = "ops_incident_types"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    # Map layer codes whose features are resources for this kind (shelters, hospitals, valves...).
    resource_layers: Mapped[list[str]] = mapped_column(JSON, default=list)


class ResponsePlan(Base):
    """A response plan (应急预案) as data: the tasks each department takes on activation.

    `tasks` is a list of {"department": code, "title", "title_en", "hours"}: each becomes a
    case in that department's queue, due `hours` after activation."""

    __tablename__ = "ops_response_plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    incident_type_id: Mapped[int] = mapped_column(ForeignKey("ops_incident_types.id"), index=True)
    min_level: Mapped[str] = mapped_column(String(4), default="IV")  # applies at this level and graver
    tasks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Incident(Base):
    """An emergency incident (突发事件) under command, from report to close-out."""

    __tablename__ = "ops_incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)  # YJ + yyyymmdd + 4 digits
    type_id: Mapped[int] = mapped_column(ForeignKey("ops_incident_types.id"), index=True)
    level: Mapped[str] = mapped_column(String(4))
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    district_code: Mapped[str | None] = mapped_column(String(12))
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))  # who commands
    warning_id: Mapped[int | None] = mapped_column(BIGID)  # the warning that opened it, if any
    opened_by: Mapped[str] = mapped_column(String(64))
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the close-out report (总结报告)

    type: Mapped[IncidentType] = relationship(lazy="joined")


class PlanActivation(Base):
    """A plan activated for an incident (预案启动); a plan runs at most once per incident."""

    __tablename__ = "ops_plan_activations"
    __table_args__ = (UniqueConstraint("incident_id", "plan_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("ops_incidents.id", ondelete="CASCADE"), index=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("ops_response_plans.id"))
    activated_by: Mapped[str] = mapped_column(String(64))
    activated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    case_numbers: Mapped[list[str]] = mapped_column(JSON, default=list)  # one case per task


class IncidentEvent(Base):
    """The response timeline (处置时间线): every step, who, when."""

    __tablename__ = "ops_incident_events"

    id: Mapped[int] = mapped_column(BIGID, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("ops_incidents.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))  # open, level, activate, note, task, close
    note: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class PlanIndicator(Base):
    """One row of the plan's table 1 (主要指标): its 2021 target, and how its value is known.

    `source` names a computation in `cityos.ops.plan.COMPUTED` or is "manual": then the value is
    entered by hand with where it came from and as of when."""

    __tablename__ = "ops_plan_indicators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(16), default="%")
    target: Mapped[float] = mapped_column(Float)
    target_year: Mapped[int] = mapped_column(Integer, default=2021)
    comparison: Mapped[str] = mapped_column(String(4), default=">=")  # >= or <=
    source: Mapped[str] = mapped_column(String(64), default="manual")
    position: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[float | None] = mapped_column(Float)
    value_source: Mapped[str | None] = mapped_column(String(300))  # how it was computed, or who said so
    value_as_of: Mapped[dt.date | None] = mapped_column(Date)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # numerator, denominator...
    updated_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Project(Base):
    """One of the plan's 43 key projects (重点建设项目), tracked by the programme office."""

    __tablename__ = "ops_projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(8), unique=True)  # P01..P43
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(64))  # the annex's group
    lead_department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    partners: Mapped[list[str]] = mapped_column(JSON, default=list)  # department codes
    start: Mapped[dt.date] = mapped_column(Date)
    end: Mapped[dt.date] = mapped_column(Date)
    predecessors: Mapped[list[str]] = mapped_column(JSON, default=list)  # project codes
    status: Mapped[str] = mapped_column(String(16), default="planned")
    progress: Mapped[int] = mapped_column(Integer, default=0)  # percent
    notes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # [{"at", "by", "text"}]
    scope: Mapped[str | None] = mapped_column(Text)  # what CityOS builds for it
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    lead_department: Mapped[Department | None] = relationship(lazy="joined")
