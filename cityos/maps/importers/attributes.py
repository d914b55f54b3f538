"""Attributes (属性字段): names made identifiers ([a-z][a-z0-9_]*, the original kept as title) and
types inferred: integer, number, boolean, date, datetime or string. Dates and datetimes travel
as ISO 8601 text, as in GeoJSON; a datetime without offset is the city's wall-clock time."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from cityos.maps.importers.source import Source

CITY_TZ = ZoneInfo("Asia/Shanghai")


def normal_names(titles: list[str]) -> list[str]:
    """Names as [a-z][a-z0-9_]*, unique; a name that is not ASCII becomes field_N (title keeps it)."""
    used: set[str] = set()
    out = []
    for i, title in enumerate(titles, start=1):
        text = unicodedata.normalize("NFKC", title).strip().lower()
        base = re.sub(r"[^a-z0-9]+", "_", text).strip("_")[:60] if text.isascii() else ""
        base = base if base[:1].isalpha() else (f"f_{base}" if base else f"field_{i}")
        name, k = base, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        out.append(name)
    return out


def typed_attributes(src: Source, keep: list[int]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """The attributes ({name, title, type}) and each kept feature's properties, typed."""
    titles = list(src.columns)
    names = normal_names(titles)
    attributes, typed = [], []
    for name, title in zip(names, titles, strict=True):
        col = src.columns[title]
        values = [col[i] for i in keep]
        kind, values = _typed(values, src.kinds.get(title, "json"))
        attributes.append({"name": name, "title": title, "type": kind})
        typed.append(values)
    rows = [dict(zip(names, vals, strict=True)) for vals in zip(*typed, strict=True)] if typed else \
        [{} for _ in keep]
    return attributes, rows


# -- attribute types -------------------------------------------------------------------------------

# No leading zeros (0101 is a code, not a number) and at most 15 digits: longer runs are ID card
# or account numbers, and past 2**53 a browser's JSON.parse would change them.
_INT = re.compile(r"[+-]?(?:0|[1-9]\d{0,14})")
_NUMBER = re.compile(r"[+-]?(?:(?:0|[1-9]\d*)(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_BOOL = {"true": True, "false": False, "yes": True, "no": False, "是": True, "否": False}
_DATE = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?")
_DATETIME = re.compile(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?"
                       r"\s*(Z|[+-]\d{2}:?\d{2})?")


def _to_int(v: str) -> int:
    if not _INT.fullmatch(v):
        raise ValueError(v)
    return int(v)


def _to_number(v: str) -> float:
    digits = v.lstrip("+-")
    if not _NUMBER.fullmatch(v) or (len(digits) > 15 and digits.isdigit()):  # a long code, as above
        raise ValueError(v)
    return float(v)


def _to_bool(v: str) -> bool:
    return _BOOL[v.lower()]  # KeyError is a LookupError, caught with ValueError below


def _to_date(v: str) -> str:
    m = _DATE.fullmatch(v)
    if not m:
        raise ValueError(v)
    return dt.date(int(m[1]), int(m[2]), int(m[3])).isoformat()


def _to_datetime(v: str) -> str:
    m = _DATETIME.fullmatch(v)
    if not m:
        raise ValueError(v)
    micro = int((m[7] or "0").ljust(6, "0"))
    tz: dt.tzinfo = CITY_TZ
    if m[8] == "Z":
        tz = dt.UTC
    elif m[8]:
        sign = -1 if m[8][0] == "-" else 1
        hh, mm = int(m[8][1:3]), int(m[8][-2:])
        tz = dt.timezone(sign * dt.timedelta(hours=hh, minutes=mm))
    return dt.datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6] or 0), micro,
                       tzinfo=tz).isoformat()


_FROM_TEXT: tuple[tuple[str, Callable[[str], Any]], ...] = (
    ("integer", _to_int), ("number", _to_number), ("boolean", _to_bool), ("date", _to_date),
    ("datetime", _to_datetime))


def _from_text(values: list[Any], kinds: Iterable[tuple[str, Callable[[str], Any]]]) -> tuple[str, list[Any]]:
    if all(v is None for v in values):
        return "string", values
    for kind, convert in kinds:
        try:
            return kind, [None if v is None else convert(v) for v in values]
        except (ValueError, LookupError, OverflowError):
            continue
    return "string", values


def _aware(v: dt.datetime) -> dt.datetime:
    return v if v.tzinfo else v.replace(tzinfo=CITY_TZ)  # a file's wall-clock time is the city's


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return orjson.dumps(v).decode()
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    return str(v)


def _typed(values: list[Any], source: str) -> tuple[str, list[Any]]:
    """The attribute's type and its values as that type; dates as ISO 8601 text (JSON has no date)."""
    if source == "text":
        return _from_text(values, _FROM_TEXT)
    if source.startswith("arrow:"):
        kind = source[6:]
        if kind.startswith(("int", "uint")):
            return "integer", values
        if kind.startswith(("double", "float", "decimal", "halffloat")):
            return "number", [None if v is None else float(v) for v in values]
        if kind == "bool":
            return "boolean", values
        if kind.startswith("date"):
            return "date", [None if v is None else v.isoformat() for v in values]
        if kind.startswith("timestamp"):
            return "datetime", [None if v is None else _aware(v).isoformat() for v in values]
        return "string", [None if v is None or v == "" else _text(v) for v in values]
    classes = {v.__class__ for v in values if v is not None}
    if not classes:
        return "string", values
    if classes == {bool}:
        return "boolean", values
    if classes == {int} and all(-(1 << 63) <= v < (1 << 63) for v in values if v is not None):
        return "integer", values
    if classes <= {int, float}:
        return "number", [None if v is None else float(v) for v in values]
    if classes == {str}:  # JSON has no date type: dates travel as text
        kind, out = _from_text(values, _FROM_TEXT[3:])
        return kind, out
    return "string", [None if v is None else _text(v) for v in values]
