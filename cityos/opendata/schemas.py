"""Request and response shapes of the open-data staff API (公共数据开放). Requests forbid
unknown fields; de-identification rules are checked against the source items by the service
(`opendata.deid.parse_rules`), which names the rule and parameter at fault."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from cityos.core.errors import FieldError, Invalid
from cityos.core.schemas import Page, Strict

NAME = r"^[a-z0-9][a-z0-9_-]{1,99}$"
COLUMN = r"^[a-z][a-z0-9_]{0,62}$"


class TopicIn(Strict):
    """A topic (主题; CKAN's group)."""

    name: str = Field(pattern=NAME, description="URL name, e.g. environment")
    title: str = Field(min_length=1, max_length=100, description="中文名称")
    title_en: str | None = Field(None, max_length=100)
    description: str = Field("", max_length=2000)


class TopicOut(BaseModel):
    name: str
    title: str
    title_en: str | None
    description: str


class PlanIn(Strict):
    """One line of the opening plan (开放计划): the resource opens by this date at this level."""

    open_level: str = Field(pattern="^(open|conditional)$", description="open|conditional (无条件/有条件)")
    planned_on: dt.date = Field(description="due date of the opening (计划开放日期)")
    note: str | None = Field(None, max_length=2000)


class PlanOut(BaseModel):
    resource: str
    resource_name: str
    department: str
    department_name: str
    open_level: str
    planned_on: dt.date
    note: str | None
    status: str = Field(description="planned | overdue (date passed, not open: 逾期) | published")
    created_by: str
    created_at: dt.datetime


class RuleIn(Strict):
    """One de-identification rule (脱敏规则) on one source item; parameters by action:
    mask: kind (id_number|phone|name|plate|generic), keep_start, keep_end, char;
    generalize: to (year|month|age_band|community|prefix|range|region|birth_year), width, top,
    length; round: decimals or step; suppress: none. `name` renames the output column."""

    field: str = Field(pattern=COLUMN, description="source item")
    action: str = Field(description="mask|generalize|round|suppress (掩码/泛化/取整/删除)")
    kind: str | None = None
    keep_start: int | None = None
    keep_end: int | None = None
    char: str | None = None
    to: str | None = None
    width: int | float | None = None
    top: int | None = None
    length: int | None = None
    decimals: int | None = None
    step: int | float | None = None
    name: str | None = Field(None, pattern=COLUMN, description="output column name")


# Columns a patch may clear with null; lists are cleared to []; the rest must have a value.
NULLABLE = {"title_en", "description", "spatial", "temporal_start", "temporal_end", "lon_field",
            "lat_field"}
LISTS = {"topics", "tags", "rules", "quasi_identifiers"}


class _Metadata(Strict):
    title: str | None = Field(None, min_length=1, max_length=200)
    title_en: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=8000)
    topics: list[str] | None = Field(None, max_length=20)
    tags: list[str] | None = Field(None, max_length=50)
    licence: str | None = Field(None, description="CC-BY-4.0|CC0-1.0|ODC-BY-1.0|CN-GOV-OPEN")
    update_cycle: str | None = Field(None, description="as the catalog's update cycles")
    open_level: str | None = Field(None, pattern="^(open|conditional)$")
    spatial: str | None = Field(None, max_length=200, description="place covered, e.g. 吉林市")
    temporal_start: dt.date | None = None
    temporal_end: dt.date | None = None
    lon_field: str | None = Field(None, pattern=COLUMN)
    lat_field: str | None = Field(None, pattern=COLUMN)
    rules: list[RuleIn] | None = Field(None, max_length=500)
    quasi_identifiers: list[str] | None = Field(None, max_length=20, description="准标识符 (output fields)")
    k: int | None = Field(None, ge=1, le=1000, description="k of k-anonymity (k-匿名)")

    def spec(self) -> dict[str, Any]:
        """The fields sent, as the service takes them (rules as plain dicts, without nulls)."""
        data = self.model_dump(exclude_unset=True, exclude={"rules", "resource"})
        if "rules" in self.model_fields_set:
            data["rules"] = None if self.rules is None else [
                r.model_dump(exclude_none=True) for r in self.rules]
        errors = []
        for key, value in list(data.items()):
            if value is not None:
                continue
            if key in LISTS:
                data[key] = []
            elif key == "description":
                data[key] = ""
            elif key not in NULLABLE:
                errors.append(FieldError(key, "cannot be empty / 不能为空"))
        if errors:
            raise Invalid.many(errors)
        return data


class DatasetIn(_Metadata):
    """Start a publication (发布申请) from a catalog resource of one's department."""

    resource: str = Field(min_length=1, max_length=64, description="catalog resource code")
    name: str | None = Field(None, pattern=NAME, description="URL name; the resource code if omitted")

    def spec(self) -> dict[str, Any]:
        """What was given; anything omitted takes the resource's value or the default."""
        data = self.model_dump(exclude_none=True, exclude={"rules", "resource"})
        if self.rules is not None:
            data["rules"] = [r.model_dump(exclude_none=True) for r in self.rules]
        return data


class DatasetPatch(_Metadata):
    """Change a dataset; its name only before it is published."""

    name: str | None = Field(None, pattern=NAME)


class NoteIn(Strict):
    note: str | None = Field(None, max_length=2000, description="审核意见 (optional)")


class ReasonIn(Strict):
    reason: str = Field(min_length=1, max_length=2000, description="理由 (required)")


class ReviewOut(BaseModel):
    step: str
    by: str
    note: str | None
    at: dt.datetime


class FieldOut(BaseModel):
    id: str
    title: str
    type: str
    source: str
    rule: str | None


class DatasetOut(BaseModel):
    name: str
    uid: str
    title: str
    title_en: str | None
    description: str
    resource: str
    resource_name: str
    department: str
    department_name: str
    topics: list[str]
    tags: list[str]
    licence: str
    update_cycle: str
    open_level: str
    spatial: str | None
    bbox: list[float] | None
    temporal_start: dt.date | None
    temporal_end: dt.date | None
    lon_field: str | None
    lat_field: str | None
    rules: list[dict[str, Any]]
    quasi_identifiers: list[str]
    k: int
    state: str
    state_name: str
    held_reason: str | None = Field(description="why the latest source version was held back")
    source_version: int
    row_count: int
    fields: list[FieldOut]
    created_by: str
    created_at: dt.datetime
    published_at: dt.datetime | None
    data_updated_at: dt.datetime | None
    modified_at: dt.datetime
    views: int
    downloads: int
    api_calls: int
    actions: list[str] = Field(description="review steps the caller may take now")


class DatasetDetail(DatasetOut):
    reviews: list[ReviewOut]


class KAnonOut(BaseModel):
    ok: bool
    k: int
    smallest: int = Field(description="size of the smallest group of quasi-identifier values")
    classes: int
    offending: list[dict[str, Any]] = Field(description="combinations below k: {values, rows}")
    offending_rows: int


class CheckOut(BaseModel):
    """A passed publication check (dry run): nothing was written."""

    ok: bool
    rows: int
    fields: list[FieldOut]
    kanon: KAnonOut | None = Field(description="null when no quasi-identifiers are declared")


class ApplicationIn(Strict):
    """Apply for a conditional dataset (有条件开放申请)."""

    dataset: str = Field(min_length=1, max_length=100)
    applicant: str = Field(min_length=1, max_length=200, description="company or person")
    credit_code: str | None = Field(None, max_length=18, description="统一社会信用代码 of a company")
    contact: str = Field(min_length=1, max_length=200)
    purpose: str = Field(min_length=1, max_length=4000)


class ApplicationDecisionIn(Strict):
    approve: bool
    reason: str | None = Field(None, max_length=2000, description="required to refuse")
    valid_days: int = Field(366, ge=1, le=3 * 366, description="how long the key reads the dataset")


class ApplicationOut(BaseModel):
    id: int
    dataset: str
    dataset_title: str
    department: str
    applicant: str
    credit_code: str | None
    contact: str
    purpose: str
    state: str
    decided_by: str | None
    decided_at: dt.datetime | None
    reason: str | None
    valid_until: dt.date | None
    created_at: dt.datetime
    key: str | None = Field(None, description="the access key, in the approving answer only; "
                                              "it is never shown again")


class RevokedOut(BaseModel):
    application: int
    revoked: int = Field(description="keys revoked by this call")


class DatasetPage(Page[DatasetOut]):
    pass


class PlanPage(Page[PlanOut]):
    pass


class ApplicationPage(Page[ApplicationOut]):
    pass


class Figures(BaseModel):
    """Open-data figures of a department or the city (definitions: `StatsOut.definitions`)."""

    resources: int
    non_secret: int
    openable: int
    published: int
    published_openable: int
    open_rate: float | None = Field(description="非涉密数据开放率: published_openable / openable")
    planned: int
    plan_published: int
    plan_overdue: int
    stale: int
    held: int
    views: int
    downloads: int
    api_calls: int


class DepartmentFigures(Figures):
    department: str
    department_name: str


class DayUsage(BaseModel):
    day: dt.date
    views: int
    downloads: int
    api_calls: int


class DatasetFigures(BaseModel):
    name: str
    title: str
    department: str
    department_name: str
    open_level: str
    update_cycle: str
    data_updated_at: dt.datetime | None
    due_at: dt.datetime | None = Field(description="data_updated_at + the update cycle's days")
    stale: bool
    overdue_days: int
    held: bool
    row_count: int
    views: int
    downloads: int
    api_calls: int
    series: list[DayUsage]


class StatsOut(BaseModel):
    as_of: dt.date
    now: dt.datetime
    days: int
    definitions: dict[str, str]
    city: Figures
    departments: list[DepartmentFigures]
    datasets: list[DatasetFigures]
    series: list[DayUsage] = Field(description="the city's usage per day")
