"""Request and response shapes of the catalog API (资源目录). Requests forbid unknown fields."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from cityos.core.schemas import Strict

NAME = r"^[a-z][a-z0-9_]{0,62}$"


class ItemIn(Strict):
    """An information item (信息项)."""

    name: str = Field(pattern=NAME, description="column name, e.g. id_number")
    title: str = Field(min_length=1, max_length=100, description="中文名称, e.g. 身份证号")
    type: str = Field(description="string|integer|number|boolean|date|datetime|citizen_id|credit_code|phone")
    unit: str | None = Field(None, max_length=32)
    sensitivity: str = Field("public", description="public|internal|sensitive (敏感: encrypted at rest)")
    required: bool = False
    is_key: bool = False
    indexed: bool = False
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = Field(None, ge=1, le=100_000)
    pattern: str | None = Field(None, max_length=200)
    choices: list[str] | None = None
    description: str | None = Field(None, max_length=2000)
    authority: str | None = Field(None, description="department code of the item's one source (一数一源)")


class ResourceIn(Strict):
    """A catalog entry with the elements of GB/T 21063 and its 2017 compilation guide."""

    name: str = Field(min_length=1, max_length=200)
    name_en: str | None = Field(None, max_length=200)
    category: str = Field(description="base|theme|department (基础/主题/部门)")
    base_branch: str | None = Field(None, description="population|legal_person|geo|credit|licence")
    item_code: str | None = Field(None, pattern=r"^\d{2}$", description="项 (2 digits)")
    entry_code: str | None = Field(None, pattern=r"^\d{3}$", description="目 (3 digits)")
    sequence: int | None = Field(None, ge=1, le=999_999, description="顺序码; next free if omitted")
    department: str | None = Field(None, description="provider department code; yours if omitted")
    provider_credit_code: str | None = None
    abstract: str = Field("", max_length=4000)
    format: str = "table"
    share_type: str = Field(description="unconditional|conditional|none (无条件/有条件/不予共享)")
    share_condition: str | None = Field(None, max_length=2000)
    share_basis: str | None = Field(None, max_length=2000)
    share_methods: list[str] = Field(default_factory=lambda: ["api"])
    open_type: str = Field(description="open|conditional|closed (无条件/有条件/不予开放)")
    update_cycle: str = Field(description="realtime|daily|weekly|monthly|quarterly|yearly|irregular")
    released_on: dt.date | None = None
    related: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    secret: bool = False
    key_fields: list[str] | None = None
    items: list[ItemIn] = Field(min_length=1, max_length=500)


class ResourcePatch(Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    name_en: str | None = None
    abstract: str | None = Field(None, max_length=4000)
    format: str | None = None
    share_type: str | None = None
    share_condition: str | None = None
    share_basis: str | None = None
    share_methods: list[str] | None = None
    open_type: str | None = None
    update_cycle: str | None = None
    released_on: dt.date | None = None
    related: list[str] | None = None
    keywords: list[str] | None = None
    secret: bool | None = None
    provider_credit_code: str | None = None


class ItemOut(BaseModel):
    name: str
    title: str
    type: str
    unit: str | None
    sensitivity: str
    required: bool
    is_key: bool
    indexed: bool
    minimum: float | None
    maximum: float | None
    max_length: int | None
    pattern: str | None
    choices: list[str] | None
    description: str | None
    authority_department_id: int | None


class ResourceOut(BaseModel):
    code: str
    catalog_code: str
    name: str
    name_en: str | None
    category: str
    class_code: str
    item_code: str
    entry_code: str
    sequence: int
    base_branch: str | None
    department: str
    department_name: str
    provider_credit_code: str | None
    abstract: str
    format: str
    share_type: str
    share_condition: str | None
    share_basis: str | None
    share_methods: list[str]
    open_type: str
    update_cycle: str
    released_on: str | None
    related: list[str]
    keywords: list[str]
    secret: bool
    key_fields: list[str]
    current_version: int
    row_count: int
    last_loaded_at: str | None
    items: list[ItemOut]


class NegativeIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)
    basis: str | None = Field(None, max_length=2000)
    department: str | None = None


class NegativeOut(BaseModel):
    id: int
    department: str
    department_name: str
    resource_code: str | None
    name: str
    reason: str
    basis: str | None


class VersionOut(BaseModel):
    number: int
    source: str
    mode: str
    filename: str | None
    rows_in: int
    rows_rejected: int
    added: int
    changed: int
    removed: int
    row_count: int
    note: str | None
    created_by: str
    created_at: dt.datetime


class QualityOut(BaseModel):
    completeness: float | None
    validity: float | None
    timeliness: float | None
    score: float | None


class Vocabulary(BaseModel):
    """The catalog's code lists, zh-CN first with English beside it."""

    categories: dict[str, Any]
    base_branches: dict[str, Any]
    share_types: dict[str, str]
    open_types: dict[str, str]
    share_methods: dict[str, str]
    formats: dict[str, str]
    update_cycles: dict[str, Any]
    sensitivities: dict[str, str]
    item_types: list[str]
