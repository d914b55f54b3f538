"""Tables of cases (工单): one case engine behind the 12345 hotline, city management
(数字城管, GB/T 30428) and approvals.

A case runs a BPMN 2.0 workflow (`CaseWorkflow`, executed by SpiffWorkflow); the engine's state
is kept with the case (`engine_state`), and every user task the engine makes ready is mirrored
as a `CaseTask` row, so that queues, deadlines and KPIs are plain indexed queries that never
load the engine. The timeline (`CaseEvent`) records every step with who, when and why.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cityos.core.db import Base, UTCDateTime, utcnow
from cityos.core.models import Department

BIGID = BigInteger().with_variant(Integer(), "sqlite")

LINES = {"hotline": ("12345热线", "12345 hotline"), "citymgmt": ("数字城管", "City management"),
         "approval": ("审批", "Approval"), "emergency": ("应急处置", "Emergency response")}
KINDS = {  # the hotline's five types (诉求类型), the standard's two classes, and approvals
    "consultation": ("咨询", "Consultation"), "help": ("求助", "Help"), "complaint": ("投诉", "Complaint"),
    "report": ("举报", "Report"), "suggestion": ("建议", "Suggestion"),
    "component": ("部件", "Component"), "event": ("事件", "Event"), "approval": ("审批", "Approval"),
}
CHANNELS = {"web": ("网站", "Web portal"), "phone": ("电话", "Phone"), "api": ("接口", "API"),
            "open311": ("Open311", "Open311"), "inspector": ("监督员", "Inspector"),
            "camera": ("视频", "Camera"), "sensing": ("感知告警", "Sensor alert"), "ops": ("运行中心", "Ops")}
STATUSES = {  # case.status, in the order a case moves through them
    "new": ("待派遣", "New"), "dispatched": ("待签收", "Dispatched"), "handling": ("办理中", "Handling"),
    "replied": ("待回访", "Replied"), "closed": ("已办结", "Closed"), "cancelled": ("已作废", "Cancelled"),
    "merged": ("已合并", "Merged"),
}
OPEN_STATUSES = ("new", "dispatched", "handling", "replied")
SATISFACTION = {"satisfied": ("满意", "Satisfied"), "basic": ("基本满意", "Basically satisfied"),
                "unsatisfied": ("不满意", "Unsatisfied")}


class CaseWorkflow(Base):
    """A workflow (流程) as data: one version of a BPMN 2.0 process definition."""

    __tablename__ = "case_workflows"
    __table_args__ = (UniqueConstraint("code", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    process_id: Mapped[str] = mapped_column(String(100))
    bpmn: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    created_by: Mapped[str] = mapped_column(String(64), default="system")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CaseCategory(Base):
    """A category (事项类别), which Open311 calls a service: what is reported and who handles it.

    City-management categories carry the GB/T 30428 class (`kind` component or event, and the
    major + minor code `gbt_code`)."""

    __tablename__ = "case_categories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    group: Mapped[str] = mapped_column(String(100), default="")
    line: Mapped[str] = mapped_column(String(16), default="hotline")
    kind: Mapped[str | None] = mapped_column(String(16))  # component|event for city management
    gbt_code: Mapped[str | None] = mapped_column(String(8))  # GB/T 30428 major + minor class
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    workflow_code: Mapped[str] = mapped_column(String(64), default="hotline")
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    attributes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # Open311 attributes
    zones: Mapped[list[str]] = mapped_column(JSON, default=list)  # map layers: a point inside is ours
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    sort: Mapped[int] = mapped_column(Integer, default=0)

    department: Mapped[Department | None] = relationship(lazy="joined")


class Case(Base):
    """A case (工单): what was reported, where, by whom, and where it stands."""

    __tablename__ = "cases"
    __table_args__ = (
        Index("ix_cases_department_status", "department_id", "status"),
        Index("ix_cases_dispatch_status", "dispatch_department_id", "status"),
        Index("ix_cases_status_due", "status", "due_at"),
        Index("ix_cases_category_created", "category_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    number: Mapped[str | None] = mapped_column(String(32), unique=True)
    token: Mapped[str] = mapped_column(String(40), unique=True)  # Open311 token, before a number
    line: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    category_id: Mapped[int | None] = mapped_column(ForeignKey("case_categories.id"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="new", index=True)
    step: Mapped[str] = mapped_column(String(100), default="")  # the open steps, for display
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    address: Mapped[str] = mapped_column(String(300), default="")
    district: Mapped[str | None] = mapped_column(String(32), index=True)
    street: Mapped[str | None] = mapped_column(String(32))
    community: Mapped[str | None] = mapped_column(String(32))
    grid: Mapped[str | None] = mapped_column(String(32), index=True)
    component_id: Mapped[str | None] = mapped_column(String(16))  # GB/T 30428 部件标识码
    reporter_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reporter_name: Mapped[str] = mapped_column(String(64), default="")
    reporter_phone_enc: Mapped[str | None] = mapped_column(Text)
    reporter_phone_idx: Mapped[str | None] = mapped_column(String(64), index=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    dispatch_department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))  # lead handler
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    warn_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    due_note: Mapped[str] = mapped_column(String(300), default="")
    overdue: Mapped[bool] = mapped_column(Boolean, default=False)
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    returns: Mapped[int] = mapped_column(Integer, default=0)
    reopens: Mapped[int] = mapped_column(Integer, default=0)
    extended_days: Mapped[int] = mapped_column(Integer, default=0)
    satisfaction: Mapped[str | None] = mapped_column(String(16))
    reply: Mapped[str] = mapped_column(Text, default="")  # the answer the resident sees
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # Open311 attribute values
    suggestion: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # smart dispatch's guess, kept
    extension_pending: Mapped[int | None] = mapped_column(Integer)  # working days asked for (延期申请)
    evaluation: Mapped[str | None] = mapped_column(String(16))  # the reporter's own rating (评价)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    workflow_id: Mapped[int] = mapped_column(ForeignKey("case_workflows.id"))
    engine_state: Mapped[bytes | None] = mapped_column(LargeBinary)  # zlib'd SpiffWorkflow JSON
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    replied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revision: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": revision}  # two people acting at once: one wins

    category: Mapped[CaseCategory | None] = relationship(lazy="joined")
    department: Mapped[Department | None] = relationship(foreign_keys=[department_id], lazy="joined")
    dispatch_department: Mapped[Department] = relationship(foreign_keys=[dispatch_department_id],
                                                           lazy="joined")
    workflow: Mapped[CaseWorkflow] = relationship()


class CaseTask(Base):
    """A step someone must take (待办): one ready user task of the case's workflow."""

    __tablename__ = "case_tasks"
    __table_args__ = (Index("ix_case_tasks_queue", "department_id", "state", "due_at"),)

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    engine_task: Mapped[str] = mapped_column(String(36))  # SpiffWorkflow task id
    step: Mapped[str] = mapped_column(String(32))  # file|dispatch|handle|callback|verify|review|decide
    name: Mapped[str] = mapped_column(String(100))
    lane: Mapped[str] = mapped_column(String(32), default="")
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str | None] = mapped_column(String(8))  # lead|co for handling
    state: Mapped[str] = mapped_column(String(16), default="open")  # open|accepted|done|cancelled
    outcome: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    accepted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    warn_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    overdue: Mapped[bool] = mapped_column(Boolean, default=False)
    warned: Mapped[bool] = mapped_column(Boolean, default=False)

    department: Mapped[Department] = relationship(lazy="joined")


class CaseEvent(Base):
    """One entry of a case's timeline (办理过程)."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    action: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    public: Mapped[bool] = mapped_column(Boolean, default=True)  # shown to the reporter

    department: Mapped[Department | None] = relationship(lazy="joined")


class CaseAttachment(Base):
    """A photo or document of a case (附件), checked by its content, not its name."""

    __tablename__ = "case_attachments"

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    url: Mapped[str | None] = mapped_column(String(500))  # an Open311 media_url, kept as given
    stage: Mapped[str] = mapped_column(String(16), default="report")  # report|handle|verify
    uploaded_by: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CaseModel(Base):
    """A trained dispatch model (智能派单模型): the newest one suggests; older ones are history."""

    __tablename__ = "case_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trained_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    trained_by: Mapped[str] = mapped_column(String(64), default="system")
    cases: Mapped[int] = mapped_column(Integer)  # closed cases it learnt from
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # held-out accuracy, top-3, ...
    blob: Mapped[bytes] = mapped_column(LargeBinary)  # the fitted pipeline; written only by CityOS
