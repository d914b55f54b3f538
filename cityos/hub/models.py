"""Data hub tables: the catalog (资源目录), versions of loaded data, sharing requests and grants
(共享申请/授权), webhooks, the negative list (负面清单) and registry discrepancies (多元校核).

A resource's rows do not live here: each resource gets its own typed table, built from its
information items by `hub.store` (like CKAN's DataStore), so filters and sorts run on real,
indexed columns on both databases.
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
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cityos.core.db import Base, UTCDateTime, utcnow
from cityos.core.models import Department


class Resource(Base):
    """A data resource of the catalog, with the elements of GB/T 21063 and its 2017 guide."""

    __tablename__ = "hub_resources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Resource code (信息资源代码): "<class><item><entry>-<sequence>", e.g. "301001-000123"
    # (GB/T 21063.4 separates the two parts with "/"; "-" keeps the code URL-safe).
    code: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    name_en: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(16))  # base|theme|department (基础/主题/部门)
    class_code: Mapped[str] = mapped_column(String(8))  # 类
    item_code: Mapped[str] = mapped_column(String(8))  # 项
    entry_code: Mapped[str] = mapped_column(String(8))  # 目
    sequence: Mapped[int] = mapped_column(Integer)  # 顺序码
    # Base branches (基础信息资源): population|legal_person|geo|credit|licence
    base_branch: Mapped[str | None] = mapped_column(String(16), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    provider_credit_code: Mapped[str | None] = mapped_column(String(18))
    abstract: Mapped[str] = mapped_column(Text, default="")
    format: Mapped[str] = mapped_column(String(16), default="table")  # table|file|api|geo
    share_type: Mapped[str] = mapped_column(String(16))  # unconditional|conditional|none
    share_condition: Mapped[str | None] = mapped_column(Text)
    share_basis: Mapped[str | None] = mapped_column(Text)  # legal basis (依据)
    share_methods: Mapped[list[str]] = mapped_column(JSON, default=list)  # api|query|download
    open_type: Mapped[str] = mapped_column(String(16))  # open|conditional|closed
    update_cycle: Mapped[str] = mapped_column(String(16))  # realtime|daily|weekly|monthly|...
    released_on: Mapped[dt.date | None] = mapped_column(Date)
    related: Mapped[list[str]] = mapped_column(JSON, default=list)  # codes of related resources
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret: Mapped[bool] = mapped_column(Boolean, default=False)  # 涉密: outside the sharing rate
    key_fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Rows: the physical table's name, the current version and its row count.
    table_name: Mapped[str | None] = mapped_column(String(64))
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_loaded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    validity: Mapped[float | None] = mapped_column(Float)  # valid share of the last load
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    department: Mapped[Department] = relationship()
    items: Mapped[list[Item]] = relationship(
        back_populates="resource", order_by="Item.position", cascade="all, delete-orphan")


class Item(Base):
    """An information item (信息项): one field of a resource, with its type and checks."""

    __tablename__ = "hub_items"
    __table_args__ = (UniqueConstraint("resource_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("hub_resources.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(63))  # column name: [a-z][a-z0-9_]*
    title: Mapped[str] = mapped_column(String(100))  # 中文名称
    type: Mapped[str] = mapped_column(String(16))  # see hub.store.TYPES
    unit: Mapped[str | None] = mapped_column(String(32))
    sensitivity: Mapped[str] = mapped_column(String(16), default="public")  # public|internal|sensitive
    required: Mapped[bool] = mapped_column(Boolean, default=False)
    is_key: Mapped[bool] = mapped_column(Boolean, default=False)
    indexed: Mapped[bool] = mapped_column(Boolean, default=False)
    minimum: Mapped[float | None] = mapped_column(Float)
    maximum: Mapped[float | None] = mapped_column(Float)
    max_length: Mapped[int | None] = mapped_column(Integer)
    pattern: Mapped[str | None] = mapped_column(String(200))
    choices: Mapped[list[str] | None] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(Text)
    # One source per item (一数一源): only this department may write the field.
    authority_department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))

    resource: Mapped[Resource] = relationship(back_populates="items")

    @property
    def encrypted(self) -> bool:
        """Sensitive items are stored encrypted, with a blind index for equality lookups."""
        return self.sensitivity == "sensitive"


class NegativeEntry(Base):
    """An entry of the negative list (负面清单): data a department does not share, and why."""

    __tablename__ = "hub_negative_list"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    resource_id: Mapped[int | None] = mapped_column(ForeignKey("hub_resources.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    basis: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    department: Mapped[Department] = relationship()
    resource: Mapped[Resource | None] = relationship()


class Version(Base):
    """One load of a resource (数据版本): what came in, what changed, and who did it."""

    __tablename__ = "hub_versions"
    __table_args__ = (UniqueConstraint("resource_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("hub_resources.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # upload|push|pull|rollback
    mode: Mapped[str] = mapped_column(String(16))  # replace|upsert
    filename: Mapped[str | None] = mapped_column(String(255))
    request_key: Mapped[str | None] = mapped_column(String(128), index=True)  # push idempotency
    rows_in: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    added: Mapped[int] = mapped_column(BigInteger, default=0)
    changed: Mapped[int] = mapped_column(BigInteger, default=0)
    removed: Mapped[int] = mapped_column(BigInteger, default=0)
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)  # rows current after the load
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # first rejected rows
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PullSchedule(Base):
    """A scheduled pull (定时采集) of a resource's data from a URL."""

    __tablename__ = "hub_pulls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("hub_resources.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(1000))
    format: Mapped[str] = mapped_column(String(8))  # csv|xlsx|json
    mode: Mapped[str] = mapped_column(String(16), default="replace")
    every_minutes: Mapped[int] = mapped_column(Integer)
    next_run_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64))


class ShareRequest(Base):
    """A department's request (共享申请) for another's resource, with purpose and basis."""

    __tablename__ = "hub_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("hub_resources.id", ondelete="CASCADE"), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)  # requester
    requested_by: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str | None] = mapped_column(Text)
    fields: Mapped[list[str]] = mapped_column(JSON)
    row_filter: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    valid_until: Mapped[dt.date | None] = mapped_column(Date)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending|granted|refused|withdrawn
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # 10 working days
    reminded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    resource: Mapped[Resource] = relationship()
    department: Mapped[Department] = relationship()


class Grant(Base):
    """A sharing grant (共享授权): which fields and rows a department may read, until when."""

    __tablename__ = "hub_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("hub_resources.id", ondelete="CASCADE"), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)  # grantee
    request_id: Mapped[int | None] = mapped_column(ForeignKey("hub_requests.id"))
    purpose: Mapped[str] = mapped_column(Text)
    fields: Mapped[list[str]] = mapped_column(JSON)
    row_filter: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    valid_until: Mapped[dt.date | None] = mapped_column(Date)
    granted_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(64))
    revoke_reason: Mapped[str | None] = mapped_column(Text)

    resource: Mapped[Resource] = relationship()
    department: Mapped[Department] = relationship()


class Subscription(Base):
    """A webhook (变更订阅) that receives a grant's changes, signed with its own secret."""

    __tablename__ = "hub_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("hub_grants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(1000))
    secret_enc: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """An outbox entry: one change notice to one subscription, retried until delivered."""

    __tablename__ = "hub_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("hub_subscriptions.id", ondelete="CASCADE"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Discrepancy(Base):
    """A cross-check finding (多元校核): another department's value disagrees with the registry."""

    __tablename__ = "hub_discrepancies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("hub_resources.id", ondelete="CASCADE"), index=True)
    row_key: Mapped[str] = mapped_column(String(255), index=True)  # stored key (blind index if sensitive)
    key_display: Mapped[str] = mapped_column(String(64))  # masked, for people
    field: Mapped[str] = mapped_column(String(63))
    registry_value: Mapped[str | None] = mapped_column(Text)  # ciphertext when the item is sensitive
    reported_value: Mapped[str | None] = mapped_column(Text)
    reported_by_department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    authority_department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # open|confirmed|corrected|rejected
    note: Mapped[str | None] = mapped_column(Text)
    reported_by: Mapped[str] = mapped_column(String(64))
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
