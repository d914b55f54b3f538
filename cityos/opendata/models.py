"""Open data tables (公共数据开放): the opening plan (开放计划), published datasets with their
de-identification rules, review steps, topics, applications for conditional data and their
keys, usage counts, and the search index.

A published dataset's rows live in their own table `od_rows_<id>` (built by
`opendata.snapshot`): a de-identified copy of the source resource's current version, rebuilt
when the source gets a new version. Nothing raw is ever read by a public route.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
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


class PlanEntry(Base):
    """One line of the opening plan (开放计划): this resource opens on this date at this level."""

    __tablename__ = "od_plan"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("hub_resources.id", ondelete="CASCADE"), unique=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    open_level: Mapped[str] = mapped_column(String(16))  # open|conditional (无条件开放/有条件开放)
    planned_on: Mapped[dt.date] = mapped_column(Date)  # due date of the opening
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    # The hub's catalog entry, by its mapped class name: opendata does not import hub models.
    resource: Mapped[Any] = relationship("Resource")
    department: Mapped[Department] = relationship()


class Topic(Base):
    """A topic (主题; CKAN's group): environment, transport, health..."""

    __tablename__ = "od_topics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # URL name, e.g. "environment"
    title: Mapped[str] = mapped_column(String(100))  # 中文
    title_en: Mapped[str | None] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Dataset(Base):
    """A public dataset (开放数据集) made from one catalog resource, and its publication state."""

    __tablename__ = "od_datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)  # CKAN's package `id` (a UUID)
    # CKAN's package `name`: lowercase letters, digits, "-" and "_"; stable once published.
    name: Mapped[str] = mapped_column(String(100), unique=True, index=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("hub_resources.id"), unique=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    title_en: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    topics: Mapped[list[str]] = mapped_column(JSON, default=list)  # Topic.name values
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    licence: Mapped[str] = mapped_column(String(32))  # key of opendata.service.LICENCES
    update_cycle: Mapped[str] = mapped_column(String(16))  # hub.service.UPDATE_CYCLES
    open_level: Mapped[str] = mapped_column(String(16))  # open|conditional
    spatial: Mapped[str | None] = mapped_column(String(200))  # place name, e.g. 吉林市昌邑区
    # [west, south, east, north] in WGS-84, computed from the rows when they carry coordinates.
    bbox: Mapped[list[float] | None] = mapped_column(JSON)
    temporal_start: Mapped[dt.date | None] = mapped_column(Date)
    temporal_end: Mapped[dt.date | None] = mapped_column(Date)
    # Geo data: which (output) fields hold longitude and latitude (WGS-84), for map and GeoJSON.
    lon_field: Mapped[str | None] = mapped_column(String(63))
    lat_field: Mapped[str | None] = mapped_column(String(63))
    # De-identification (脱敏): [{"field", "action", ...params}] (see opendata.deid.ACTIONS and parse_rules),
    # the quasi-identifiers (准标识符) checked for k-anonymity, and k.
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    quasi_identifiers: Mapped[list[str]] = mapped_column(JSON, default=list)
    k: Mapped[int] = mapped_column(Integer, default=5)
    # draft → submitted → provider_approved → published; refused; withdrawn (撤回)
    state: Mapped[str] = mapped_column(String(20), index=True, default="draft")
    # A new source version that fails a check is held back; the last good snapshot stays.
    held_reason: Mapped[str | None] = mapped_column(Text)
    source_version: Mapped[int] = mapped_column(Integer, default=0)  # snapshot's source version
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # output columns
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    data_updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    modified_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, index=True)
    views: Mapped[int] = mapped_column(BigInteger, default=0)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    api_calls: Mapped[int] = mapped_column(BigInteger, default=0)

    # The hub's catalog entry, by its mapped class name: opendata does not import hub models.
    resource: Mapped[Any] = relationship("Resource")
    department: Mapped[Department] = relationship()

    @property
    def table_name(self) -> str:
        return f"od_rows_{self.id}"

    @property
    def public(self) -> bool:
        return self.state == "published"


class Review(Base):
    """One step of a dataset's publication review (发布审核), kept as its history."""

    __tablename__ = "od_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("od_datasets.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(20))  # submit|provider_approve|office_approve|refuse|withdraw
    by: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Application(Base):
    """An application (开放申请) by a company or person for a conditional dataset."""

    __tablename__ = "od_applications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("od_datasets.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    applicant: Mapped[str] = mapped_column(String(200))  # company or person name
    credit_code: Mapped[str | None] = mapped_column(String(18))  # a company's 统一社会信用代码
    contact: Mapped[str] = mapped_column(String(200))  # email or phone (stored as given)
    purpose: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True, default="pending")  # pending|approved|refused
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    valid_until: Mapped[dt.date | None] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    dataset: Mapped[Dataset] = relationship()


class AccessKey(Base):
    """The API key issued for an approved application: reads one conditional dataset.
    Raw form "odk_<prefix>_<secret>"; only the secret's SHA-256 is kept."""

    __tablename__ = "od_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    application_id: Mapped[int] = mapped_column(
        ForeignKey("od_applications.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("od_datasets.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Usage(Base):
    """Daily usage of a dataset (访问统计): page views, downloads, API calls."""

    __tablename__ = "od_usage"
    __table_args__ = (UniqueConstraint("dataset_id", "day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("od_datasets.id", ondelete="CASCADE"), index=True)
    day: Mapped[dt.date] = mapped_column(Date, index=True)
    views: Mapped[int] = mapped_column(BigInteger, default=0)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    api_calls: Mapped[int] = mapped_column(BigInteger, default=0)


class SearchTerm(Base):
    """The search index (检索索引): one row per (term, dataset), written in the same transaction
    as the dataset, so search is never stale. Terms are jieba words and character bigrams."""

    __tablename__ = "od_terms"
    # The covering index answers a term lookup from the index alone (no table pages).
    __table_args__ = (Index("ix_od_terms_dataset", "dataset_id"),
                      Index("ix_od_terms_cover", "term", "dataset_id", "weight"))

    term: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("od_datasets.id", ondelete="CASCADE"), primary_key=True)
    weight: Mapped[int] = mapped_column(Integer, default=1)  # title hits count more than text
