"""Request and response shapes of the sharing API (共享交换). Requests forbid unknown fields."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from cityos.core.schemas import Strict


class CondIn(Strict):
    """One row condition: `field op value`, e.g. {"field": "district", "op": "eq", "value": "昌邑区"}."""

    field: str = Field(min_length=1, max_length=63)
    op: str = Field("eq", description="eq|ne|gt|gte|lt|lte|in|contains|startswith|isnull")
    value: Any = None


class RequestIn(Strict):
    """A sharing request (共享申请)."""

    resource: str = Field(min_length=1, max_length=64, description="resource code, e.g. 301001/000001")
    purpose: str = Field(min_length=1, max_length=2000, description="用途")
    legal_basis: str | None = Field(None, max_length=2000, description="依据")
    fields: list[str] = Field(min_length=1, max_length=500, description="items asked for")
    row_filter: list[CondIn] = Field(default_factory=list, max_length=20, description="rows asked for")
    valid_until: dt.date | None = Field(None, description="last day of use (使用期限)")


class DecisionIn(Strict):
    """The provider's decision (审核): approve, possibly narrower, or refuse with a reason."""

    approve: bool
    reason: str | None = Field(None, max_length=2000)
    fields: list[str] | None = Field(None, min_length=1, max_length=500)
    row_filter: list[CondIn] | None = Field(None, max_length=20)
    valid_until: dt.date | None = None


class RevokeIn(Strict):
    reason: str = Field(min_length=1, max_length=2000)


class SubscriptionIn(Strict):
    url: str = Field(min_length=8, max_length=1000, description="http(s) URL that receives signed POSTs")


class RequestOut(BaseModel):
    id: int
    resource: str
    resource_name: str
    provider: str
    requester: str
    requested_by: str
    purpose: str
    legal_basis: str | None
    fields: list[str]
    row_filter: list[dict[str, Any]]
    valid_until: dt.date | None
    state: str
    due_at: dt.datetime | None
    overdue: bool
    reminded_at: dt.datetime | None
    decided_by: str | None
    decided_at: dt.datetime | None
    reason: str | None
    grant_id: int | None
    created_at: dt.datetime


class GrantOut(BaseModel):
    id: int
    resource: str
    resource_name: str
    provider: str
    grantee: str
    request_id: int | None
    purpose: str
    fields: list[str]
    row_filter: list[dict[str, Any]]
    valid_until: dt.date | None
    granted_by: str
    created_at: dt.datetime
    active: bool
    revoked_at: dt.datetime | None
    revoked_by: str | None
    revoke_reason: str | None


class SubscriptionOut(BaseModel):
    id: int
    grant_id: int
    url: str
    active: bool
    created_at: dt.datetime
    secret: str | None = Field(None, description="signing secret: shown once, at creation")


class RowsOut(BaseModel):
    """A page of shared rows (JSON format); the CSV format has the same rows with a header row."""

    resource: str
    version: int
    fields: list[str]
    rows: list[dict[str, Any]]
    limit: int
    offset: int
    next: str | None
    total: int | None = None
