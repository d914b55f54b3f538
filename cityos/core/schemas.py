"""Request and response shapes of the core API. Requests forbid unknown fields."""

from __future__ import annotations

import datetime as dt
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Page(BaseModel, Generic[T]):
    """One page of a list: items, the total, and where the next page starts."""

    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None = None


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class DepartmentIn(Strict):
    code: str = Field(min_length=2, max_length=32, pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
    name: str = Field(min_length=1, max_length=100)
    name_en: str | None = Field(None, max_length=200)
    kind: str = Field(pattern="^(city|district|street|community|bureau)$")
    parent_code: str | None = None
    admin_code: str | None = Field(None, pattern=r"^\d{6}(\d{3}){0,2}$")
    credit_code: str | None = None


class DepartmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    code: str
    name: str
    name_en: str | None
    kind: str
    parent_code: str | None = None
    admin_code: str | None
    credit_code: str | None


class UserIn(Strict):
    username: str = Field(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    password: str = Field(min_length=8, max_length=200)
    department_code: str
    role: str
    display_name: str = Field("", max_length=100)
    id_number: str | None = None
    phone: str | None = Field(None, pattern=r"^1[3-9]\d{9}$")


class UserPatch(Strict):
    display_name: str | None = Field(None, max_length=100)
    role: str | None = None
    is_active: bool | None = None
    password: str | None = Field(None, min_length=8, max_length=200)
    phone: str | None = Field(None, pattern=r"^1[3-9]\d{9}$")
    unlock: bool | None = None


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str
    department_code: str
    department_name: str
    role: str
    is_active: bool
    locked: bool
    id_number_masked: str | None = None
    phone_masked: str | None = None
    created_at: dt.datetime


class ApiKeyIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    department_code: str
    scopes: list[str] = Field(min_length=1)
    expires_days: int | None = Field(None, ge=1, le=3650)


class ApiKeyOut(BaseModel):
    id: int
    prefix: str
    name: str
    department_code: str
    scopes: list[str]
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked: bool
    key: str | None = Field(None, description="the key itself, shown only once at creation")


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    seq: int
    at: dt.datetime
    actor: str
    department: str | None
    action: str
    object_type: str | None
    object_id: str | None
    purpose: str | None
    outcome: str
    detail: dict[str, Any] | None
    algo: str
    prev_hash: str
    hash: str


class VerifyOut(BaseModel):
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    message: str
