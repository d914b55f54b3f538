"""Row validation (数据校验) for loads: each information item is compiled once into a converter,
so checking a row costs one call per cell.

A converter turns a raw cell (a string from CSV or JSON, or what openpyxl gives for XLSX) into
the item's Python value or raises `ValueError` with a bilingual reason. Values that may be ID or
phone numbers never appear in a reason unmasked.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from stdnum import numdb
from stdnum.cn import ric

from cityos.core.audit import scrub
from cityos.core.errors import Invalid
from cityos.core.identifiers import valid_credit_code, validate_citizen_id, validate_credit_code
from cityos.hub.parsing import RowFault

TYPES = ("string", "integer", "number", "boolean", "date", "datetime", "citizen_id", "credit_code", "phone")
CITY_TZ = ZoneInfo("Asia/Shanghai")
REQUIRED = "required / 必填"
_HIDDEN_TYPES = frozenset({"citizen_id", "credit_code", "phone"})
_NUM = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # 1,234.5 as Excel shows it
_DATE = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?(?:[ T]+0{1,2}:00(?::00)?)?")
_DATETIME = re.compile(
    r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?")
_MOBILE = re.compile(r"1[3-9]\d{9}")
_LANDLINE = re.compile(r"(0\d{2,3})-(\d{7,8})(?:-(\d{1,6}))?")
_LANDLINE_BARE = re.compile(r"0(?:[12]\d|\d{3})\d{7,8}")
_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
               "y": True, "n": False, "是": True, "否": False}
# Exact spellings first, so the common case is one dict lookup without strip() or lower().
_BOOLS = {**{w.upper(): b for w, b in _BOOL_WORDS.items()}, **{w.title(): b for w, b in _BOOL_WORDS.items()},
          **_BOOL_WORDS}

Converter = Callable[[Any], Any]
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class ItemRule:
    """What a load checks of one information item (信息项): its type and constraints."""

    name: str
    title: str
    type: str
    required: bool = False
    is_key: bool = False
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    sensitive: bool = False  # its values are never shown in a reason

    @classmethod
    def of(cls, item: Any) -> ItemRule:
        """Build from an ORM `Item`, a dict with the same keys, or another rule."""
        if isinstance(item, ItemRule):
            return item
        def get(key: str) -> Any:
            return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)
        if get("type") not in TYPES:
            raise ValueError(f"item {get('name')!r}: unknown type {get('type')!r}")
        choices = get("choices")
        return cls(
            name=get("name"), title=get("title") or get("name"), type=get("type"),
            required=bool(get("required")), is_key=bool(get("is_key")),
            minimum=get("minimum"), maximum=get("maximum"), max_length=get("max_length"),
            pattern=get("pattern") or None,
            choices=tuple(str(c) for c in choices) if choices else None,
            sensitive=get("sensitivity") == "sensitive" or bool(get("sensitive")),
        )


@dataclass(frozen=True, slots=True)
class RowError:
    """One thing wrong with one row (行错误): the row's line, the item (None: whole row), why."""

    row: int
    field: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The error as JSON-ready data."""
        return {"row": self.row, "field": self.field, "reason": self.reason}

    def __str__(self) -> str:
        return f"row {self.row}{f' {self.field}' if self.field else ''}: {self.reason}"


def _fail(rule: ItemRule, en: str, zh: str, value: Any = None) -> ValueError:
    """A bilingual reason, quoting the value unless it may be personal data (then masked)."""
    if value is None or rule.sensitive or rule.type in _HIDDEN_TYPES:
        return ValueError(f"{en} / {zh}")
    text = scrub(str(value))  # mask before cutting, so no half number escapes the mask
    return ValueError(f"{en} / {zh}: {text if len(text) <= 40 else text[:40] + '…'!r}")


def _empty(required: bool) -> None:
    """Refuse an empty cell if the item is required (an empty cell is otherwise None)."""
    if required:
        raise ValueError(REQUIRED)


def _text(v: Any) -> str:
    """A cell as stripped text; an XLSX or JSON value as written: 12.0 → "12", True → "true"."""
    if v.__class__ is str:
        return str(v).strip()
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, dt.datetime) and v.time() == dt.time():
        return v.date().isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, dict | list):
        raise ValueError("a nested JSON value, not a cell / 不是单个值")
    return str(v).strip()


def _string(rule: ItemRule) -> Converter:
    required, limit, pattern = rule.required or rule.is_key, rule.max_length, _pattern(rule)
    choices = frozenset(rule.choices) if rule.choices else None
    shown = ", ".join((rule.choices or ())[:10])

    def convert(v: Any) -> str | None:
        s = _text(v)
        if not s:
            _empty(required)
            return None
        if limit is not None and len(s) > limit:
            raise _fail(rule, f"longer than {limit} characters", f"超过{limit}个字符", s)
        if pattern is not None and pattern(s) is None:
            raise _fail(rule, f"does not match the pattern {rule.pattern}", "格式不符合要求", s)
        if choices is not None and s not in choices:
            raise _fail(rule, f"not one of: {shown}", f"不是可选值（{shown}）之一", s)
        return s
    return convert


def _pattern(rule: ItemRule) -> Callable[[str], Any] | None:
    try:
        return re.compile(rule.pattern).fullmatch if rule.pattern else None
    except re.error as exc:
        raise ValueError(f"item {rule.name!r}: bad pattern {rule.pattern!r}: {exc}") from None


def _bounds(rule: ItemRule, lo: float, hi: float) -> tuple[float, float, Callable[[Any], Any]]:
    """The item's range (the type's when it has none) and what to raise outside it."""
    lo = lo if rule.minimum is None else rule.minimum
    hi = hi if rule.maximum is None else rule.maximum

    def out_of_range(n: Any) -> Any:
        if n < lo:
            raise _fail(rule, f"less than the minimum {_plain(lo)}", f"小于最小值{_plain(lo)}", n)
        raise _fail(rule, f"more than the maximum {_plain(hi)}", f"大于最大值{_plain(hi)}", n)
    return lo, hi, out_of_range


def _plain(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _integer(rule: ItemRule) -> Converter:
    required = rule.required or rule.is_key
    lo, hi, out_of_range = _bounds(rule, -(2**63), 2**63 - 1)  # what a BIGINT column holds

    def whole(s: str) -> int:
        try:
            return int(s)
        except ValueError:
            pass
        try:  # "12.0", "1,234", "1e3"; bounded, as int("1e999999999") would fill the memory
            d = Decimal(s.replace(",", "") if _NUM.fullmatch(s) else s)
            if d.is_finite() and d == d.to_integral_value() and d.adjusted() < 30:
                return int(d)
        except InvalidOperation:
            pass
        raise _fail(rule, "not a whole number", "不是整数", s)

    def convert(v: Any) -> int | None:
        if v.__class__ is int or (v.__class__ is float and v.is_integer()):
            n = int(v)
        elif s := _text(v):
            n = whole(s)
        else:
            _empty(required)
            return None
        return n if lo <= n <= hi else out_of_range(n)
    return convert


def _number(rule: ItemRule) -> Converter:
    required = rule.required or rule.is_key
    lo, hi, out_of_range = _bounds(rule, -math.inf, math.inf)

    def convert(v: Any) -> float | None:
        s = "" if v.__class__ is float or v.__class__ is int else _text(v)
        if not s and v.__class__ is not float and v.__class__ is not int:
            _empty(required)
            return None
        try:
            x = float(s.replace(",", "") if _NUM.fullmatch(s) else s) if s else float(v)
        except (ValueError, OverflowError):
            raise _fail(rule, "not a number", "不是数字", v) from None
        if x - x != 0:  # nan or ±inf
            raise _fail(rule, "not a finite number", "不是有限数值", v)
        return x if lo <= x <= hi else out_of_range(x)
    return convert


def _boolean(rule: ItemRule) -> Converter:
    required = rule.required or rule.is_key

    def convert(v: Any) -> bool | None:
        if isinstance(v, bool):
            return v
        if v.__class__ in (int, float) and v in (0, 1):
            return bool(v)
        if not (s := _text(v)):
            _empty(required)
            return None
        if (b := _BOOL_WORDS.get(s.casefold())) is None:
            raise _fail(rule, "not yes/no (use 是/否, true/false or 1/0)", "不是“是/否”值", v)
        return b
    return convert


def _date(rule: ItemRule) -> Converter:
    required = rule.required or rule.is_key

    def convert(v: Any) -> dt.date | None:
        if isinstance(v, dt.datetime):
            if v.time() != dt.time():
                raise _fail(rule, "a date and time, expected a date only", "应为日期，不含时间", v)
            return v.date()
        if isinstance(v, dt.date):
            return v
        if v is not None and v.__class__ is not str:
            raise _fail(rule, "a number, not a date: format the column as date", "是数字不是日期", v)
        if not (s := _text(v)):
            _empty(required)
            return None
        try:
            m = _DATE.fullmatch(s)
            return dt.date(int(m[1]), int(m[2]), int(m[3])) if m else dt.date.fromisoformat(s)
        except ValueError:
            raise _fail(rule, "not a date (use YYYY-MM-DD)", "不是日期（应为 年-月-日）", v) from None
    return convert


def _datetime(rule: ItemRule) -> Converter:
    required = rule.required or rule.is_key

    def convert(v: Any) -> dt.datetime | None:
        if isinstance(v, dt.datetime):
            d = v
        elif isinstance(v, dt.date):
            d = dt.datetime.combine(v, dt.time(tzinfo=CITY_TZ))
        elif v is not None and v.__class__ is not str:
            raise _fail(rule, "a number, not a date and time", "是数字不是日期时间", v)
        elif not (s := _text(v)):
            _empty(required)
            return None
        else:
            try:
                d = dt.datetime.fromisoformat(s)
            except ValueError:
                d = excel_style(s)
        try:
            return (d if d.tzinfo else d.replace(tzinfo=CITY_TZ)).astimezone(dt.UTC)
        except OverflowError:  # 0001-01-01 in the city is still year 0 in UTC
            raise _fail(rule, "outside the years 1-9999 in UTC", "超出可表示的时间范围", v) from None

    def excel_style(s: str) -> dt.datetime:
        try:
            m = _DATETIME.fullmatch(s)
            if m:
                y, mo, d, h, mi, sec = (int(p) for p in m.groups("0")[:6])
                micro = int(m[7].ljust(6, "0")) if m[7] else 0
                return dt.datetime(y, mo, d, h, mi, sec, micro, tzinfo=CITY_TZ)
        except ValueError:
            pass
        raise _fail(rule, "not a date and time (use ISO 8601, e.g. 2024-05-01T08:30:00)",
                    "不是日期时间（如 2024-05-01 08:30:00）", s)
    return convert


class _Memo(dict[str, _V]):
    """A dict that computes a missing key's value on first use, up to `limit` keys."""

    def __init__(self, compute: Callable[[str], _V], limit: int = 100_000) -> None:
        super().__init__()
        self.compute, self.limit = compute, limit

    def __missing__(self, key: str) -> _V:
        value = self.compute(key)
        if len(self) < self.limit:
            self[key] = value
        return value


def _region_known(region: str) -> bool:
    # Whether GB/T 2260 has (or had) this code, in any period. stdnum's own check also wants the
    # code to exist in the birth year, which rejects everyone born before their county was
    # re-coded (e.g. 220202 dates from 1983), though such IDs are real: a code is given at
    # registration, not at birth. The lookup takes ~40 µs, hence the memo.
    return any("county" in props for _, props in numdb.get("cn/loc").info(region))


_REGIONS = _Memo(_region_known)


@lru_cache(maxsize=2)
def _births_until(today: dt.date) -> _Memo[bool]:
    """Whether YYYYMMDD is a real date no later than `today`, remembered for that day."""
    def born_ok(digits: str) -> bool:
        try:
            return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:])) <= today
        except ValueError:
            return False
    return _Memo(born_ok)


def _code_text(rule: ItemRule, v: Any) -> str:
    """An ID or code cell as upper-case text; refused when Excel turned it into a float."""
    if isinstance(v, float):
        raise _fail(rule, "stored by Excel as a number, its last digits lost: format the column as text",
                    "被Excel存为数字，末几位已丢失，请将该列设为文本格式")
    return _text(v).upper()


def _citizen_id(rule: ItemRule) -> Converter:
    required = rule.required or rule.is_key
    today = dt.datetime.now(CITY_TZ).date()
    check_digit, regions, births = ric.calc_check_digit, _REGIONS, _births_until(today)

    def convert(v: Any) -> str | None:
        s = v.strip().upper() if v.__class__ is str else _code_text(rule, v)
        if (len(s) == 18 and s.isascii() and s[:17].isdigit() and check_digit(s) == s[17]
                and regions[s[:6]] and births[s[6:14]]):
            return s
        if not s:
            _empty(required)
            return None
        try:  # core's check, which is stricter than ours, for its precise reason
            validate_citizen_id(s, rule.name)
        except Invalid as exc:
            raise ValueError(exc.errors[0].reason) from None
        except Exception:  # stdnum fails with KeyError on some unknown regions (220299)
            pass
        raise _fail(rule, "ID number: a component is impossible (region, date or code)",
                    "身份证号码组成部分无效")
    return convert


def _credit_code(rule: ItemRule) -> Converter:
    required = rule.required or rule.is_key

    def convert(v: Any) -> str | None:
        if not (s := _code_text(rule, v)):
            _empty(required)
            return None
        if (valid := valid_credit_code(s)) is not None:  # remembered: codes repeat down a column
            return valid
        try:  # for core's precise reason
            return validate_credit_code(s, rule.name)
        except Invalid as exc:
            raise ValueError(exc.errors[0].reason) from None
    return convert


def _phone(rule: ItemRule) -> Converter:
    required = rule.required or rule.is_key

    def convert(v: Any) -> str | None:
        if not (s := _text(v)):
            _empty(required)
            return None
        s = re.sub(r"[\s()（）]", "", s).replace("—", "-")
        bare = s.replace("-", "").removeprefix("+86")
        if len(bare) == 13 and bare.startswith("86"):
            bare = bare[2:]
        if _MOBILE.fullmatch(bare):
            return bare
        if m := _LANDLINE.fullmatch(s):
            return "-".join(p for p in m.groups() if p)
        if _LANDLINE_BARE.fullmatch(bare):
            cut = 3 if bare[1] in "12" else 4  # 010 and 02x are the three-digit area codes
            return f"{bare[:cut]}-{bare[cut:]}"
        raise _fail(rule, "not a phone number (mobile 1xxxxxxxxxx or landline 0432-12345678)",
                    "不是有效的电话号码（手机号或如 0432-12345678 的固定电话）")
    return convert


_BUILDERS: dict[str, Callable[[ItemRule], Converter]] = {
    "string": _string, "integer": _integer, "number": _number, "boolean": _boolean, "date": _date,
    "datetime": _datetime, "citizen_id": _citizen_id, "credit_code": _credit_code, "phone": _phone,
}


def converter(rule: ItemRule) -> Converter:
    """The function that turns a raw cell into the item's value or raises ValueError(reason)."""
    return _BUILDERS[rule.type](rule)


# The check of a row is generated as one function per file layout, as dataclasses writes __init__:
# a million-row load runs it a million times, and a loop calling one converter per cell costs
# twice as much. For the common types the cell's fast path is written inline; whenever it does
# not plainly succeed it calls the converter, so a value is always the converter's value, and an
# exception anywhere sends the row to `_slow`, which runs the converters one by one.
_NUMERIC = """\
if v{i}.__class__ is str and v{i}:
    try:
        r{i} = {parse}(v{i})
    except ValueError:
        r{i} = c{i}(v{i})
    if {finite}not lo{i} <= r{i} <= hi{i}:
        r{i} = c{i}(v{i})
else:
    r{i} = c{i}(v{i})
"""
_INLINE = {
    "string": """\
if not (v{i}.__class__ is str and (r{i} := v{i}.strip()){tests}):
    r{i} = c{i}(v{i})
""",
    "integer": _NUMERIC.replace("{parse}", "int").replace("{finite}", ""),
    "number": _NUMERIC.replace("{parse}", "float").replace("{finite}", "r{i} - r{i} != 0 or "),
    "boolean": """\
r{i} = BOOLS.get(v{i}) if v{i}.__class__ is str else None
if r{i} is None:
    r{i} = c{i}(v{i})
""",
    # The converter's test, with the memos read by get(): a miss or a failure calls the converter.
    "citizen_id": """\
if not (v{i}.__class__ is str and len(r{i} := v{i}.strip()) == 18 and r{i}.isascii()
        and (r{i}.isdigit() or r{i}[17] == "X" and r{i}[:17].isdigit()) and CHECK_DIGIT(r{i}) == r{i}[17]
        and REGIONS.get(r{i}[:6]) and BIRTHS.get(r{i}[6:14])):
    r{i} = c{i}(v{i})
""",
    "date": """\
if v{i}.__class__ is str and v{i}:
    try:
        r{i} = DATE(v{i})
    except ValueError:
        r{i} = c{i}(v{i})
else:
    r{i} = c{i}(v{i})
""",
}


def _inline(i: int, rule: ItemRule) -> tuple[str, dict[str, Any]]:
    """The statements that set r{i} from cell v{i}, and the constants they name."""
    consts: dict[str, Any] = {}
    tests = ""
    if rule.type == "string":
        if rule.max_length is not None:
            tests, consts[f"n{i}"] = f" and len(r{i}) <= n{i}", rule.max_length
        if rule.choices:
            tests, consts[f"choices{i}"] = tests + f" and r{i} in choices{i}", frozenset(rule.choices)
        if rule.pattern:
            tests += f" and match{i}(r{i}) is not None"
            consts[f"match{i}"] = re.compile(rule.pattern).fullmatch
    elif rule.type in ("integer", "number"):
        lo, hi = (-(2**63), 2**63 - 1) if rule.type == "integer" else (-math.inf, math.inf)
        consts[f"lo{i}"], consts[f"hi{i}"], _ = _bounds(rule, lo, hi)
    template = _INLINE.get(rule.type, "r{i} = c{i}(v{i})\n")
    return template.replace("{tests}", tests).replace("{i}", str(i)), consts


CheckResult = tuple[dict[str, Any] | None, list[RowError]]


class RowValidator:
    """A compiled check of rows laid out as a file's columns (see `compile_rows`).

    `check(line_no, values)` returns the typed row keyed by item name and no errors, or None and
    every error of the row; a `RowFault` from the parser becomes that row's error.
    """

    def __init__(self, rules: Sequence[ItemRule], columns: Sequence[str | None]) -> None:
        by_name = {r.name: r for r in rules}
        unknown = [c for c in columns if c is not None and c not in by_name]
        if unknown:
            raise ValueError(f"columns without a rule: {unknown}")
        self.width = len(columns)
        self._cells = [(i, c, converter(by_name[c])) for i, c in enumerate(columns) if c is not None]
        self.names: tuple[str, ...] = tuple(name for _, name, _ in self._cells)
        namespace: dict[str, Any] = {
            "slow": self._slow, "BOOLS": _BOOLS, "DATE": dt.date.fromisoformat,
            "CHECK_DIGIT": ric.calc_check_digit,
            "REGIONS": _REGIONS, "BIRTHS": _births_until(dt.datetime.now(CITY_TZ).date())}
        body = f"({''.join(f'v{i}, ' for i in range(self.width))}) = values\n"
        for i, name, conv in self._cells:
            source, consts = _inline(i, by_name[name])
            body += source
            namespace.update(consts, **{f"c{i}": conv})
        body += f"return {{{', '.join(f'{name!r}: r{i}' for i, name, _ in self._cells)}}}, []\n"
        self.source = ("def check(line_no, values):\n    try:\n" + textwrap.indent(body, " " * 8)
                       + "    except Exception:\n        return slow(line_no, values)\n")
        exec(self.source, namespace)
        self.check: Callable[[int, Sequence[Any] | RowFault], CheckResult] = namespace["check"]

    def _slow(self, line_no: int, values: Sequence[Any] | RowFault) -> CheckResult:
        """The row cell by cell: its value, or every error with its reason."""
        if isinstance(values, RowFault):
            return None, [RowError(line_no, None, values.reason)]
        if len(values) != self.width:
            n, width = len(values), self.width
            reason = f"expected {width} fields, got {n} / 应有{width}列，实际{n}列"
            return None, [RowError(line_no, None, reason)]
        row: dict[str, Any] = {}
        errors: list[RowError] = []
        for i, name, conv in self._cells:
            try:
                row[name] = conv(values[i])
            except ValueError as exc:
                errors.append(RowError(line_no, name, str(exc)))
            except Exception as exc:  # a cell we cannot read is a row error, not a crash
                reason = f"cannot read this value ({type(exc).__name__}) / 无法识别该值"
                errors.append(RowError(line_no, name, reason))
        return (None, errors) if errors else (row, [])


def compile_rows(rules: Sequence[ItemRule], columns: Sequence[str | None]) -> RowValidator:
    """Compile the rules for a file whose columns map to these item names (None: ignored)."""
    return RowValidator([ItemRule.of(r) for r in rules], columns)


class ErrorReport:
    """The errors of a load: the first `limit` kept, all counted (错误报告)."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.total = 0  # errors seen
        self.rows = 0  # rows with at least one error
        self.errors: list[RowError] = []

    def add(self, errors: Iterable[RowError]) -> None:
        """Record the errors of one row (nothing if the list is empty)."""
        errors = list(errors)
        if errors:
            self.rows += 1
            self.total += len(errors)
            self.errors.extend(errors[: max(0, self.limit - len(self.errors))])

    @property
    def truncated(self) -> bool:
        """Whether some errors were counted but not kept."""
        return self.total > len(self.errors)

    def as_dicts(self) -> list[dict[str, Any]]:
        """The kept errors as JSON-ready data."""
        return [e.as_dict() for e in self.errors]

    def to_csv(self, titles: Mapping[str, str] | None = None) -> bytes:
        """The kept errors as CSV (UTF-8 with BOM, so Excel opens it); `titles` names the items."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["行号/row", "字段/field", "原因/reason"])
        for e in self.errors:
            field = e.field or ""
            if titles and field in titles:
                field = f"{titles[field]} ({field})"
            writer.writerow([e.row, field, _no_formula(e.reason)])
        if self.truncated:
            more = self.total - len(self.errors)
            writer.writerow(["", "", f"{more} more errors not listed / 另有{more}条错误未列出"])
        return b"\xef\xbb\xbf" + out.getvalue().encode("utf-8")


def _no_formula(text: str) -> str:
    # A cell starting with = + - @ is a formula to Excel; a reason must stay text.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
