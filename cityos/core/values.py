"""Typed values from what callers send (取值类型转换): text, JSON numbers or booleans become the
Python type of an item or attribute, or a ValueError whose message says why (English / 中文).
One home for the data hub's filters and the map's feature properties alike."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from cityos.core.workdays import CITY_TZ


def to_integer(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("not an integer / 不是整数")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    s = str(v).strip()
    if not s.lstrip("+-").isdigit():
        raise ValueError("not an integer / 不是整数")
    return int(s)


def to_number(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("not a number / 不是数值")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError("not a number / 不是数值") from None


def to_finite_number(v: Any) -> float:
    """A number that is neither infinite nor NaN (what JSON and a stored property can hold)."""
    out = to_number(v)
    if not math.isfinite(out):
        raise ValueError("not a finite number / 不是有限数值")
    return out


def to_boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "是"):
        return True
    if s in ("false", "0", "no", "否"):
        return False
    raise ValueError("not true or false / 须为 true 或 false")


def to_date(v: Any) -> dt.date:
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v
    try:
        return dt.date.fromisoformat(str(v).strip())
    except ValueError:
        raise ValueError("not a date (YYYY-MM-DD) / 日期格式应为 YYYY-MM-DD") from None


def to_datetime(v: Any) -> dt.datetime:
    """An ISO 8601 date-time; one without a zone is the city's local time."""
    if isinstance(v, dt.datetime):
        out = v
    else:
        try:
            out = dt.datetime.fromisoformat(str(v).strip())
        except ValueError:
            raise ValueError("not a date-time (ISO 8601) / 时间格式应为 ISO 8601") from None
    return out if out.tzinfo else out.replace(tzinfo=CITY_TZ)
