"""China's official working-day calendar (工作日历): public holidays (法定节假日) and make-up
working days (调休上班), built in from `chinese-calendar` and extended year by year from the
State Council's schedule (国务院办公厅关于部分节假日安排的通知) that an admin imports.

A year the calendar does not know falls back to the Monday-to-Friday rule, and a deadline
counted through such a year says so (`Deadline.beyond_calendar`).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from cityos.core import access, audit
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, FieldError, Invalid
from cityos.core.models import CalendarDay, CalendarYear

CITY_TZ = ZoneInfo("Asia/Shanghai")
DAY_END = dt.time(17, 30)
WORKING_PERIODS: tuple[tuple[dt.time, dt.time], ...] = (
    (dt.time(9, 0), dt.time(12, 0)), (dt.time(13, 30), dt.time(17, 30)),
)
# chinese-calendar names holidays in English; these are the names the State Council's notice uses.
_OFFICIAL_NAMES = {
    "New Year's Day": "元旦", "Spring Festival": "春节", "Tomb-sweeping Day": "清明节",
    "Labour Day": "劳动节", "Dragon Boat Festival": "端午节", "National Day": "国庆节",
    "Mid-autumn Festival": "中秋节", "Anti-Fascist 70th Day": "抗战胜利70周年纪念日",
}
_WEEKDAYS = "一二三四五六日"
_MAX_SCAN_DAYS = 366 * 20  # a guard: no deadline looks further ahead than this

access.define("calendar.import", "Import the State Council's holiday schedule (导入工作日历)")

Override = tuple[bool, str]  # (workday, name)


@dataclass(frozen=True)
class Calendar:
    """The known years and the days that differ from the Monday-to-Friday rule (read-only:
    one instance is cached and shared)."""

    years: frozenset[int]
    overrides: Mapping[dt.date, Override] = field(hash=False)
    sources: Mapping[int, str] = field(hash=False, compare=False)  # year -> where it came from

    @classmethod
    def builtin(cls) -> Calendar:
        """The years `chinese-calendar` covers (2004 to its last published year)."""
        return _builtin()

    @classmethod
    def load(cls, session: Session) -> Calendar:
        """Built-in years plus imported ones; an imported year replaces the built-in one."""
        base = _builtin()
        imported = {y.year: y for y in session.scalars(select(CalendarYear))}
        if not imported:
            return base
        overrides = {d: o for d, o in base.overrides.items() if d.year not in imported}
        rows = session.scalars(select(CalendarDay).where(CalendarDay.year.in_(list(imported))))
        overrides.update({r.day: (r.workday, r.name) for r in rows})
        sources = dict(base.sources)
        for y in imported.values():
            sources[y.year] = (f"imported: {y.source or '-'} ({y.imported_by}, "
                               f"{y.imported_at.astimezone(CITY_TZ):%Y-%m-%d %H:%M})")
        return cls(base.years | frozenset(imported), MappingProxyType(overrides), MappingProxyType(sources))

    def knows(self, day: dt.date) -> bool:
        """Whether the official schedule of `day`'s year is known."""
        return day.year in self.years

    def year_days(self, year: int) -> list[tuple[dt.date, bool, str]]:
        """The year's holidays on weekdays and make-up working days, in date order."""
        return sorted((d, w, n) for d, (w, n) in self.overrides.items() if d.year == year)


@functools.cache
def _builtin() -> Calendar:
    from chinese_calendar.constants import holidays, workdays  # type: ignore[import-untyped]

    overrides: dict[dt.date, Override] = {}
    for day, name in holidays.items():
        if day.weekday() < 5:  # a holiday on a weekend is a rest day anyway
            overrides[day] = (False, _OFFICIAL_NAMES.get(name, name))
    for day, name in workdays.items():
        if day.weekday() >= 5:
            overrides[day] = (True, f"{_OFFICIAL_NAMES.get(name, name)}调休")
    years = frozenset(range(min(holidays).year, max(holidays).year + 1))
    label = f"built in (chinese-calendar {version('chinese-calendar')})"
    return Calendar(years, MappingProxyType(overrides), MappingProxyType(dict.fromkeys(years, label)))


_cache: dict[str, tuple[tuple[int, Any], Calendar]] = {}


def current(session: Session) -> Calendar:
    """The calendar for this database, cached until an import changes it (in any process)."""
    # One tiny query tells whether any process imported since: years counted, newest import.
    stamp = session.execute(
        select(func.count(), func.max(CalendarYear.imported_at)).select_from(CalendarYear)).one()
    key, now = str(session.get_bind().engine.url), (int(stamp[0]), stamp[1])
    hit = _cache.get(key)
    if hit is None or hit[0] != now:
        hit = _cache[key] = (now, Calendar.load(session))
    return hit[1]


def invalidate() -> None:
    """Forget cached calendars (after an import)."""
    _cache.clear()


def is_workday(cal: Calendar, day: dt.date) -> bool:
    """Whether `day` is a working day (工作日); unknown years follow the Monday-to-Friday rule."""
    override = cal.overrides.get(day)
    return override[0] if override is not None else day.weekday() < 5


@dataclass(frozen=True)
class Deadline:
    """A deadline (办理时限) and whether counting it went past the known calendar."""

    at: dt.datetime  # aware, UTC
    beyond_calendar: bool = False
    unknown_years: tuple[int, ...] = ()

    @property
    def note(self) -> str:
        """Empty, or a bilingual warning that the deadline rests on an assumed calendar."""
        if not self.beyond_calendar:
            return ""
        ys = ", ".join(map(str, self.unknown_years))
        return (f"counted past the known official calendar: {ys} not imported, Monday to Friday "
                f"assumed / 超出已知工作日历：{ys} 年节假日安排尚未导入，按周一至周五推算")


def _local(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime: give a timezone-aware one")
    return value.astimezone(CITY_TZ)


def _deadline(cal: Calendar, at: dt.datetime, seen: Iterable[int]) -> Deadline:
    unknown = tuple(sorted(y for y in set(seen) if y not in cal.years))
    return Deadline(at.astimezone(dt.UTC), bool(unknown), unknown)


def add_working_days(cal: Calendar, start: dt.datetime, days: int,
                     day_end: dt.time = DAY_END) -> Deadline:
    """The end (`day_end`, city time) of the `days`-th working day after `start`'s city date.

    The day of receipt is not counted (期间开始的日不计算在内): counting begins on the next
    working day, so a request received on Friday evening before a holiday, or on the holiday
    itself, counts from the first working day after it. `days=0` means by the end of the
    receipt day if it is a working day, else of the next working day.
    """
    if days < 0:
        raise ValueError("days must be >= 0")
    day, years = _local(start).date(), set[int]()
    if days == 0:
        years.add(day.year)
        days, day = 1, day - dt.timedelta(days=1)
    for _ in range(_MAX_SCAN_DAYS):
        day += dt.timedelta(days=1)
        years.add(day.year)
        if is_workday(cal, day):
            days -= 1
            if days == 0:
                return _deadline(cal, dt.datetime.combine(day, day_end, CITY_TZ), years)
    raise ValueError("deadline too far ahead")


def add_working_hours(cal: Calendar, start: dt.datetime, hours: float,
                      periods: tuple[tuple[dt.time, dt.time], ...] = WORKING_PERIODS) -> Deadline:
    """`hours` of working time (工作时间) after `start`, counting only the working periods of
    working days (default 09:00-12:00 and 13:30-17:30 city time)."""
    if hours < 0:
        raise ValueError("hours must be >= 0")
    if not periods or any(a >= b for a, b in periods) or any(
            p[1] > q[0] for p, q in zip(periods, periods[1:], strict=False)):
        raise ValueError("periods must be non-empty, ordered and non-overlapping")
    local, remaining = _local(start), dt.timedelta(hours=hours)
    day, years = local.date(), set[int]()
    for _ in range(_MAX_SCAN_DAYS):
        years.add(day.year)
        if is_workday(cal, day):
            for a, b in periods:
                begin = max(dt.datetime.combine(day, a, CITY_TZ), local)
                end = dt.datetime.combine(day, b, CITY_TZ)
                if begin >= end:
                    continue
                if remaining <= end - begin:
                    return _deadline(cal, begin + remaining, years)
                remaining -= end - begin
        day += dt.timedelta(days=1)
    raise ValueError("deadline too far ahead")


def working_days_between(cal: Calendar, start: dt.datetime, end: dt.datetime) -> int:
    """Working days after `start`'s city date up to and including `end`'s (negative if earlier):
    how many working days late (超期工作日数) an answer given at `end` is for a deadline `start`."""
    a, b = _local(start).date(), _local(end).date()
    sign, (a, b) = (1, (a, b)) if a <= b else (-1, (b, a))
    return sign * sum(is_workday(cal, a + dt.timedelta(days=i)) for i in range(1, (b - a).days + 1))


# ---- import (导入): the State Council publishes next year's schedule every autumn ----

@dataclass(frozen=True)
class Schedule:
    """One year's official schedule: the days that differ from the Monday-to-Friday rule."""

    year: int
    days: list[tuple[dt.date, bool, str]]
    source: str = ""


Entry = tuple[dt.date, bool, str, str]  # (day, workday, name, where it was given)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TYPES = {"holiday": False, "休": False, "workday": True, "班": True}


def _date(value: object, where: str, errors: list[FieldError]) -> dt.date | None:
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    errors.append(FieldError(where, f"not a date YYYY-MM-DD: {value!r} / 不是有效日期"))
    return None


def _check(year: object, entries: list[Entry], errors: list[FieldError]) -> list[tuple[dt.date, bool, str]]:
    """Validate a year's entries; keep those that differ from the Monday-to-Friday rule."""
    if not isinstance(year, int) or isinstance(year, bool) or not 2000 <= year <= 2100:
        errors.append(FieldError("year", f"not a year 2000-2100: {year!r} / 年份无效"))
        return []
    seen: dict[dt.date, str] = {}
    days: list[tuple[dt.date, bool, str]] = []
    for day, workday, name, where in entries:
        if not name.strip() or len(name) > 64:
            errors.append(FieldError(where, "a name of 1-64 characters is required / 名称必填，至多 64 字"))
        if day.year != year:
            errors.append(FieldError(where, f"{day} is outside year {year} / 日期不在 {year} 年内"))
        elif day in seen:
            errors.append(FieldError(where, f"{day} given twice (also at {seen[day]}) / 日期重复"))
        elif workday and day.weekday() < 5:
            errors.append(FieldError(where, f"{day} is a 周{_WEEKDAYS[day.weekday()]}, a working day "
                                            "already / 该日本为工作日，无需调休上班"))
        elif workday or day.weekday() < 5:  # a holiday on a weekend is a rest day anyway
            days.append((day, workday, name.strip()))
        seen.setdefault(day, where)
    if not errors and not any(not w for _, w, _ in days):
        errors.append(FieldError("holidays", "no holiday on a weekday / 没有工作日上的节假日"))
    return sorted(days)


def _json_entries(text: str, errors: list[FieldError]) -> tuple[object, str, list[Entry]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid("file", f"not JSON: {exc} / 不是有效的 JSON") from None
    if not isinstance(doc, dict):
        raise Invalid("file", "expected a JSON object / 应为 JSON 对象")
    for key in sorted(set(doc) - {"year", "source", "holidays", "workdays", "comment"}):
        errors.append(FieldError(key, "unknown field / 未知字段"))
    source = doc.get("source", "")
    if not isinstance(source, str) or len(source) > 200:
        errors.append(FieldError("source", "text of at most 200 characters / 至多 200 字"))
        source = ""
    entries: list[Entry] = []
    for kind, workday in (("holidays", False), ("workdays", True)):
        items = doc.get(kind, [])
        if not isinstance(items, list):
            errors.append(FieldError(kind, "expected a list / 应为列表"))
            continue
        for i, item in enumerate(items):
            where = f"{kind}[{i}]"
            one_day = workday or (isinstance(item, dict) and "date" in item)
            keys = ("date", "date") if one_day else ("from", "to")
            if not isinstance(item, dict) or set(item) != {"name", *keys}:
                errors.append(FieldError(where, f"expected the fields name, {', '.join(dict.fromkeys(keys))}"
                                                " / 字段有误"))
                continue
            name = item["name"] if isinstance(item["name"], str) else ""
            first = _date(item[keys[0]], f"{where}.{keys[0]}", errors)
            last = first if one_day else _date(item[keys[1]], f"{where}.{keys[1]}", errors)
            if first is None or last is None:
                continue
            if not 0 <= (last - first).days <= 31:
                errors.append(FieldError(where, f"from {first} to {last} is not a holiday of 1-32 "
                                                "days / 起止日期有误"))
                continue
            entries += [(first + dt.timedelta(days=n), workday, name, where)
                        for n in range((last - first).days + 1)]
    return doc.get("year"), source, entries


def _csv_entries(text: str, errors: list[FieldError]) -> tuple[object, str, list[Entry]]:
    entries: list[Entry] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#") or (not entries and cells[0] == "date"):
            continue
        where = f"line {lineno}"
        if len(cells) != 3 or cells[1].lower() not in _TYPES:
            errors.append(FieldError(where, "expected date,type,name with type holiday|workday|休|班 "
                                            "/ 每行应为 日期,类型,名称"))
            continue
        day = _date(cells[0], where, errors)
        if day is not None:
            entries.append((day, _TYPES[cells[1].lower()], cells[2], where))
    if not entries and not errors:
        raise Invalid("file", "no days in the file / 文件中没有日期")
    return (entries[0][0].year if entries else None), "", entries


def parse_schedule(text: str, fmt: Literal["json", "csv"]) -> Schedule:
    """Read a year's official schedule (节假日安排) from JSON or CSV; every mistake is named."""
    if fmt not in ("json", "csv"):
        raise Invalid("format", f"unknown format {fmt!r}: json or csv / 格式应为 json 或 csv")
    errors: list[FieldError] = []
    year, source, entries = (_json_entries if fmt == "json" else _csv_entries)(text, errors)
    days = _check(year, entries, errors)
    if errors:
        raise Invalid.many(errors)
    assert isinstance(year, int)
    return Schedule(year, days, source)


def import_schedule(session: Session, actor: Actor, year: int, days: Iterable[tuple[dt.date, bool, str]],
                    source: str = "", replace: bool = False) -> CalendarYear:
    """Make `year`'s schedule known, all or nothing (导入工作日历); a year imported before is kept
    unless `replace`. The caller's transaction commits it."""
    access.require(actor, "calendar.import")
    errors: list[FieldError] = []
    checked = _check(year, [(d, w, n, f"days[{i}]") for i, (d, w, n) in enumerate(days)], errors)
    if errors:
        raise Invalid.many(errors)
    row = session.get(CalendarYear, year)
    if row is not None and not replace:
        raise Conflict(f"the {year} calendar was imported before ({row.source or '-'}); replace it "
                       f"to change it / {year} 年工作日历已导入，如需覆盖请选择替换", "year")
    if row is None:
        row = CalendarYear(year=year)
        session.add(row)
    session.execute(delete(CalendarDay).where(CalendarDay.year == year))
    now = utcnow()
    row.source, row.imported_by, row.imported_at = source[:200], actor.name[:64], now
    session.add_all(CalendarDay(day=d, workday=w, name=n, year=year, source=source[:200],
                                imported_at=now) for d, w, n in checked)
    session.flush()
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="calendar.import", object_type="calendar_year", object_id=year,
                 detail={"source": source, "replace": replace,
                         "holidays": sum(not w for _, w, _ in checked),
                         "workdays": sum(w for _, w, _ in checked)})
    invalidate()
    return row
