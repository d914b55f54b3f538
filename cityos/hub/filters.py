"""Row conditions (行条件) of shared reads and grants: values typed by their item, and summed up
for the audit log without the values of sensitive items."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from cityos.core import workdays
from cityos.core.errors import Invalid
from cityos.hub import store


def _text(v: Any) -> str:
    return str(v)


def _integer(v: Any) -> int:
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


def _number(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("not a number / 不是数值")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError("not a number / 不是数值") from None


def _boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "是"):
        return True
    if s in ("false", "0", "no", "否"):
        return False
    raise ValueError("not true or false / 须为 true 或 false")


def _date(v: Any) -> dt.date:
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v
    try:
        return dt.date.fromisoformat(str(v).strip())
    except ValueError:
        raise ValueError("not a date (YYYY-MM-DD) / 日期格式应为 YYYY-MM-DD") from None


def _datetime(v: Any) -> dt.datetime:
    if isinstance(v, dt.datetime):
        out = v
    else:
        try:
            out = dt.datetime.fromisoformat(str(v).strip())
        except ValueError:
            raise ValueError("not a date-time (ISO 8601) / 时间格式应为 ISO 8601") from None
    # A time without a zone is the city's local time.
    return out if out.tzinfo else out.replace(tzinfo=workdays.CITY_TZ)


def _upper(v: Any) -> str:
    return str(v).strip().upper()


# Filter values are typed only, not checked against the item's range or choices: a filter
# `household_size__lt=0` is a fair question even if no row may hold 0. (hub.validate checks rows.)
_CONVERT: dict[str, Any] = {
    "string": _text, "integer": _integer, "number": _number, "boolean": _boolean, "date": _date,
    "datetime": _datetime, "citizen_id": _upper, "credit_code": _upper, "phone": _text,
}


class Typed(Protocol):
    """An item as filters see it: `hub.models.Item` or `hub.store.Field`."""

    @property
    def type(self) -> str: ...

    @property
    def encrypted(self) -> bool: ...


def typed(items: Mapping[str, Typed], cond: store.Cond) -> store.Cond:
    """A condition with its value converted to the item's type; Invalid names the field."""
    item = items.get(cond.field)
    if item is None:
        raise Invalid(cond.field, f"no such item {cond.field!r} / 无此信息项")
    if cond.op not in store.OPS:
        raise Invalid(cond.field, f"unknown operator {cond.op!r} / 未知运算符")
    try:
        if cond.op == "isnull":
            return store.Cond(cond.field, cond.op, _boolean(cond.value))
        convert = _CONVERT[item.type]
        if cond.op == "in":
            values = cond.value.split(",") if isinstance(cond.value, str) else cond.value
            if not isinstance(values, list | tuple) or not values:
                raise ValueError("a non-empty list of values / 须为非空取值列表")
            return store.Cond(cond.field, cond.op, [convert(v) for v in values])
        if cond.value is None:
            raise ValueError("a value is required / 须给出取值")
        return store.Cond(cond.field, cond.op, convert(cond.value))
    except ValueError as exc:
        raise Invalid(cond.field, str(exc)) from None


def jsonable(v: Any) -> Any:
    """A typed value as JSON keeps it (dates as ISO text)."""
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v.isoformat() if isinstance(v, dt.date | dt.datetime) else v


def summary(items: Mapping[str, Typed], conds: Sequence[store.Cond]) -> list[str]:
    """Conditions as text for the audit log; values of sensitive items never appear."""
    out = []
    for c in conds:
        sensitive = items[c.field].encrypted if c.field in items else False
        shown = "***" if sensitive and c.op != "isnull" else orjson.dumps(jsonable(c.value)).decode()
        out.append(f"{c.field} {c.op} {shown}")
    return out
