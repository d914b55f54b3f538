"""Row conditions (行条件) of shared reads and grants: values typed by their item, and summed up
for the audit log without the values of sensitive items."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from cityos.core import values
from cityos.core.errors import Invalid
from cityos.hub import store


def _text(v: Any) -> str:
    return str(v)


_integer, _number, _boolean = values.to_integer, values.to_number, values.to_boolean
_date, _datetime = values.to_date, values.to_datetime


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
