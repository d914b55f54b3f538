"""Request and response shapes of the base registries API (基础库). Requests forbid unknown fields."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from cityos.core.schemas import Strict


class PersonLookupIn(Strict):
    """An ID number travels in the body, never in a URL that gets logged."""

    id_number: str = Field(min_length=1, max_length=32)
    purpose: str = Field(min_length=2, max_length=200, description="why you look this person up")


class RecordOut(BaseModel):
    resource: str
    fields: list[str]
    record: dict[str, Any]


class RecordWriteIn(Strict):
    key: dict[str, Any] = Field(min_length=1, description="the record's key items")
    changes: dict[str, Any] = Field(min_length=1, max_length=100, description="items to write")
    note: str | None = Field(None, max_length=500)


class RecordWriteOut(BaseModel):
    resource: str
    version: int | None = Field(description="the new version; null when nothing changed")
    changed: list[str]
    created: bool


class CrosscheckIn(Strict):
    records: list[dict[str, Any]] = Field(min_length=1, max_length=1000,
                                          description="key items and the values you hold")


class DiscrepancyOut(BaseModel):
    id: int
    resource: str
    registry: str | None
    record: str = Field(description="the record's key, masked")
    field: str
    state: str
    registry_value: str | None = Field(description="shown to the authoritative department only")
    reported_value: str | None
    authority: str
    reported_by_department: str
    reported_by: str
    resolved_by: str | None
    note: str | None
    created_at: dt.datetime
    resolved_at: dt.datetime | None


class CrosscheckOut(BaseModel):
    checked: int
    discrepancies: list[DiscrepancyOut]


class ResolveIn(Strict):
    action: Literal["confirm", "correct", "reject"]
    note: str | None = Field(None, max_length=1000)
    value: Any = Field(None, description="correct: the right value (default: the reported one); "
                                         "for a missing record, its items with the key")


class LicenceIn(Strict):
    licence_no: str | None = Field(None, min_length=4, max_length=64, pattern=r"^[0-9A-Za-z][0-9A-Za-z-]*$",
                                   description="empty: numbered by the platform")
    type: str = Field(min_length=1, max_length=32)
    holder_type: Literal["person", "org"] | None = None
    holder_id: str = Field(min_length=1, max_length=32, description="ID number or credit code")
    holder_name: str = Field(min_length=1, max_length=200)
    valid_from: dt.date | None = None
    valid_to: dt.date | None = Field(None, description="empty: long-term (长期)")


class LicenceOut(BaseModel):
    licence_no: str
    type: str
    holder_type: str
    holder_id: str | None = Field(description="masked when it is an ID number")
    holder_name: str
    issuer: str
    valid_from: dt.date
    valid_to: dt.date | None
    status: str
    revoked_on: dt.date | None = None
    revoked_reason: str | None = None


class RevokeIn(Strict):
    reason: str = Field(min_length=2, max_length=500)


class VerifyIn(Strict):
    licence_no: str = Field(min_length=1, max_length=64)
    holder_id: str = Field(min_length=1, max_length=32)


class VerifyOut(BaseModel):
    valid: bool


class RequestFigures(BaseModel):
    total: int
    answered: int
    on_time: int
    pending: int
    overdue: int
    on_time_rate: float | None


class DayReads(BaseModel):
    day: dt.date
    reads: int


class Figures(BaseModel):
    resources: int
    shared: int
    non_secret: int
    shared_non_secret: int
    sharing_rate: float | None = Field(description="shared non-secret / all non-secret resources")
    requests: RequestFigures
    grants_in_force: int
    reads_per_day: list[DayReads]
    reads_total: int


class DepartmentFigures(Figures):
    department: str
    department_name: str


class FiguresOut(BaseModel):
    as_of: dt.date
    days: int
    city: Figures
    departments: list[DepartmentFigures]
