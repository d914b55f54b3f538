"""SensorThings API 1.1 query options (查询参数): parsed to a tree, compiled to SQLAlchemy.

OGC 18-088 section 9.3 borrows OData 4: `$filter`, `$orderby`, `$select`, `$expand` (nested, its
options in parentheses separated by `;`), `$top`, `$skip`, `$count`, `$resultFormat`. Parsing is
pure and names the option and the character of every mistake; compiling needs a resolver that maps
a property path to a column and one of a few storage kinds, and emits the same meaning on SQLite
and PostgreSQL (ms-epoch times, JSON properties, GeoJSON geometries).

Choices the standard leaves open:
- a date without a time (`2026-11-21`) is a `date` literal; against an instant it means midnight
  UTC; a time of day (`10:00:00`) is a `time` literal, for `time(...)`;
- a datetime must carry its zone; `2026-11-21T10:00:00 08:00` (a `+` decoded to a space by a
  careless client) reads as `+08:00`; values are kept in UTC, so `totaloffsetminutes` is 0;
- durations take days, hours, minutes and seconds only (years and months have no fixed length);
- `geography'...'` and `geometry'...'` are both planar WGS 84 (SRID 4326), as in FROST-Server,
  so `geo.distance` and `geo.length` are in degrees;
- `contains(s, sub)` (OData 4) is accepted beside `substringof(sub, s)` (STA);
- string matching is case-sensitive on both databases (GLOB on SQLite, whose LIKE is not).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import shapely.wkt
from shapely.geometry.base import BaseGeometry
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Integer,
    Numeric,
    Text,
    Time,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    true,
    type_coerce,
)
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from cityos.core.errors import FieldError, Invalid

# -- errors -----------------------------------------------------------------------------------------


class StaQueryError(Invalid):
    """A query option that cannot be used; the field is the option (`$filter`, ...), 400 as in STA."""

    def __init__(self, field_name: str, reason: str, *more: FieldError, position: int | None = None) -> None:
        super().__init__(field_name, reason, *more)
        self.status, self.title, self.type_slug = 400, "Invalid query option", "invalid-query"
        if position is not None:
            self.extra = {"position": position}


@dataclass(frozen=True)
class _Ctx:
    """Where a text being parsed sits: its option, its offset in that option, a prefix for nesting."""

    field: str
    offset: int = 0
    where: str = ""

    def value_error(self, reason: str) -> StaQueryError:
        return self.error(0 if self.where else -1, reason)

    def error(self, pos: int, reason: str) -> StaQueryError:
        if pos < 0:  # a whole top-level value is wrong; its position says nothing
            return StaQueryError(self.field, reason)
        n = self.offset + pos + 1
        return StaQueryError(self.field, f"{self.where}{reason} (at character {n} / 位于第 {n} 个字符)",
                             position=n)


# -- the tree ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """A constant; kind is number|string|bool|null|datetime|date|time|duration|geometry."""

    value: Any
    kind: str


@dataclass(frozen=True)
class Path:
    """A property path, `/` between segments: ("Datastream", "Thing", "name")."""

    parts: tuple[str, ...]


@dataclass(frozen=True)
class Call:
    """A function call; the name is lower-cased ("substringof", "geo.intersects")."""

    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class BinOp:
    """eq ne gt ge lt le and or add sub mul div mod."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class Neg:
    """Unary minus on anything but a number or duration literal (those are folded)."""

    operand: Node


Node = Literal | Path | Call | BinOp | Not | Neg

COMPARE = ("eq", "ne", "gt", "ge", "lt", "le")
_ADDITIVE = ("add", "sub")
_MULTIPLICATIVE = ("mul", "div", "mod")
_OPERATORS = frozenset(("and", "or", "not", *COMPARE, *_ADDITIVE, *_MULTIPLICATIVE))
_PRECEDENCE = {"or": 1, "and": 2, **dict.fromkeys(COMPARE, 4), "add": 5, "sub": 5,
               "mul": 6, "div": 6, "mod": 6}
_MAX_DEPTH = 40  # each level costs ~10 Python frames while parsing
_INT64 = 2**63 - 1

# Functions of OGC 18-088 table 25 (and OData's contains): name -> (least, most) arguments.
GEO_PREDICATES = {"geo.intersects": "intersects", "st_equals": "equals", "st_disjoint": "disjoint",
                  "st_touches": "touches", "st_within": "within", "st_overlaps": "overlaps",
                  "st_crosses": "crosses", "st_intersects": "intersects", "st_contains": "contains"}
DATE_PARTS = {"year": "%Y", "month": "%m", "day": "%d", "hour": "%H", "minute": "%M", "second": "%S"}
FUNCTIONS: dict[str, tuple[int, int]] = {
    "substringof": (2, 2), "contains": (2, 2), "endswith": (2, 2), "startswith": (2, 2),
    "length": (1, 1), "indexof": (2, 2), "substring": (2, 3), "tolower": (1, 1), "toupper": (1, 1),
    "trim": (1, 1), "concat": (2, 2),
    **dict.fromkeys(DATE_PARTS, (1, 1)), "fractionalseconds": (1, 1), "date": (1, 1), "time": (1, 1),
    "totaloffsetminutes": (1, 1), "now": (0, 0), "mindatetime": (0, 0), "maxdatetime": (0, 0),
    "round": (1, 1), "floor": (1, 1), "ceiling": (1, 1),
    "geo.distance": (2, 2), "geo.length": (1, 1), **dict.fromkeys(GEO_PREDICATES, (2, 2)),
    "st_relate": (3, 3),
}

# -- literals ---------------------------------------------------------------------------------------

_DATETIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(?:\.(\d+))?)?"
                       r"(Z|[+-]\d\d:\d\d|\ \d\d:\d\d(?![\d:]))?")
_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?![\w:])")
_TIME = re.compile(r"(\d\d):(\d\d)(?::(\d\d)(?:\.(\d+))?)?(?![\w:.])")
_NUMBER = re.compile(r"\d+(\.\d+)?([eE][+-]?\d+)?")
_IDENT = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*")
_NAME = re.compile(r"[^\W\d]\w*")
_STRING = re.compile(r"'(?:[^']|'')*'")
_DURATION = re.compile(r"(-)?P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")
_SRID = re.compile(r"\s*SRID=(\d+)\s*;", re.IGNORECASE)
_TYPED = ("duration", "geography", "geometry")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MIN_DATETIME = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
MAX_DATETIME = dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)


def _micros(fraction: str | None) -> int:
    return int((fraction or "0")[:6].ljust(6, "0"))


def _datetime_literal(m: re.Match[str]) -> dt.datetime:
    """An aware datetime in UTC from a `_DATETIME` match that has a zone."""
    y, mo, d, h, mi, s, frac, zone = m.groups()
    if zone == "Z":
        tz = dt.UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    value = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0), _micros(frac), tzinfo=tz)
    return value.astimezone(dt.UTC)


def _duration_literal(text: str) -> dt.timedelta:
    m = _DURATION.fullmatch(text)
    if not m or not any(m.groups()[1:]) or text.endswith("T"):
        if re.fullmatch(r"-?P.*\d[YM].*", text) and "T" not in text.split("M")[0]:
            raise ValueError("years and months have no fixed length; use days / 年和月长度不固定，请用天数")
        raise ValueError(f"malformed duration {text!r}, e.g. P1DT2H / 时长格式错误，例如 P1DT2H")
    neg, weeks, days, hours, minutes, seconds = m.groups()
    value = dt.timedelta(weeks=int(weeks or 0), days=int(days or 0), hours=int(hours or 0),
                         minutes=int(minutes or 0), seconds=float(seconds or 0))
    return -value if neg else value


def _geometry_literal(text: str) -> BaseGeometry:
    m = _SRID.match(text)
    if m:
        if m.group(1) != "4326":
            raise ValueError(f"only SRID 4326 is supported, not {m.group(1)} / 仅支持 SRID 4326")
        text = text[m.end():]
    try:
        with np.errstate(all="ignore"):  # 1e400 overflows; the finite check below reports it
            geom = shapely.wkt.loads(text)
    except Exception as exc:  # shapely raises several types for bad WKT
        raise ValueError(f"malformed WKT: {exc} / WKT 格式错误") from None
    if geom.is_empty:
        raise ValueError("empty geometry / 空几何")
    if not all(math.isfinite(b) for b in geom.bounds):
        raise ValueError("coordinates must be finite numbers / 坐标须为有限数值")
    if not geom.is_valid:
        raise ValueError(f"invalid geometry: {shapely.is_valid_reason(geom)} / 几何无效")
    return geom


# -- lexer ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tok:
    kind: str  # lit ident op ( ) , / - eof
    text: str
    pos: int
    value: Any = None


_CHAR_HINTS = {
    "=": " (use eq, ne, gt, ge, lt, le / 请用 eq、ne 等)", "<": " (use lt or le / 请用 lt 或 le)",
    ">": " (use gt or ge / 请用 gt 或 ge)", '"': " (strings use single quotes / 字符串用单引号)",
    "&": " (use and / 请用 and)", "|": " (use or / 请用 or)", "!": " (use ne or not / 请用 ne 或 not)",
}


def _lex(text: str, ctx: _Ctx) -> list[_Tok]:
    """Tokens of a `$filter` or `$orderby` text, literals already read."""
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in "(),/-":
            toks.append(_Tok(c, c, i))
            i += 1
            continue
        if c == "'":
            m = _STRING.match(text, i)
            if not m:
                raise ctx.error(i, "unterminated string / 字符串缺少结尾引号")
            toks.append(_Tok("lit", m.group(), i, Literal(m.group()[1:-1].replace("''", "'"), "string")))
            i = m.end()
            continue
        if c.isdecimal():  # what \d matches: isdigit() also takes "²", which no pattern reads
            tok = _lex_digits(text, i, ctx)
            toks.append(tok)
            i = tok.pos + len(tok.text)
            if i < n and (text[i].isalnum() or text[i] in "_.:'"):
                raise ctx.error(tok.pos, f"malformed value {text[tok.pos:i + 1]!r} / 值格式错误")
            continue
        m = _IDENT.match(text, i)
        if not m:
            hint = _CHAR_HINTS.get(c, "")
            raise ctx.error(i, f"unexpected character {c!r}{hint} / 意外的字符 {c!r}")
        word, i = m.group(), m.end()
        if i < n and text[i] == "'":
            toks.append(_typed_literal(text, m.start(), word, ctx))
            i = toks[-1].pos + len(toks[-1].text)
        elif word in _OPERATORS:
            toks.append(_Tok("op", word, m.start()))
        elif word in ("true", "false", "null"):
            value = {"true": True, "false": False, "null": None}[word]
            toks.append(_Tok("lit", word, m.start(), Literal(value, "null" if value is None else "bool")))
        else:
            toks.append(_Tok("ident", word, m.start()))
    toks.append(_Tok("eof", "", n))
    return toks


def _lex_digits(text: str, i: int, ctx: _Ctx) -> _Tok:
    """A datetime, date, time of day or number starting at i."""
    if (m := _DATETIME.match(text, i)) is None and re.match(r"\d{4}-\d\d-\d\dT", text[i:i + 11]):
        raise ctx.error(i, "malformed datetime, e.g. 2026-11-21T10:00:00Z / 日期时间格式错误")
    if m:
        if not m.group(8):
            raise ctx.error(i, "a datetime needs a time zone, e.g. Z or +08:00 "
                               "/ 日期时间须带时区，如 Z 或 +08:00")
        kind, read = "datetime", _datetime_literal
    elif m := _DATE.match(text, i):
        kind, read = "date", lambda m: dt.date(*map(int, m.groups()))
    elif m := _TIME.match(text, i):
        kind, read = "time", lambda m: dt.time(int(m[1]), int(m[2]), int(m[3] or 0), _micros(m[4]))
    else:
        m = _NUMBER.match(text, i)
        assert m is not None  # text[i] is a digit
        if m.group(1) or m.group(2):
            number: int | float = float(m.group())
            if not math.isfinite(number):
                raise ctx.error(i, "number out of range / 数值超出范围")
        elif len(m.group()) > 19 or int(m.group()) > _INT64:
            raise ctx.error(i, "integer out of range / 整数超出范围")
        else:
            number = int(m.group())
        return _Tok("lit", m.group(), i, Literal(number, "number"))
    try:
        return _Tok("lit", m.group(), i, Literal(read(m), kind))
    except (ValueError, OverflowError) as exc:
        raise ctx.error(i, f"invalid {kind} {m.group()!r}: {exc} / 无效的日期或时间") from None


def _typed_literal(text: str, start: int, word: str, ctx: _Ctx) -> _Tok:
    """duration'P1D', geography'POINT(1 2)', geometry'...'."""
    if word.lower() not in _TYPED:
        raise ctx.error(start, f"unknown literal prefix {word}'…' (dates are written unquoted) "
                               f"/ 未知的字面量前缀 {word}（日期时间不加引号）")
    m = _STRING.match(text, start + len(word))
    if not m:
        raise ctx.error(start + len(word), "unterminated string / 字符串缺少结尾引号")
    body = m.group()[1:-1].replace("''", "'")
    try:
        if word.lower() == "duration":
            lit = Literal(_duration_literal(body), "duration")
        else:
            lit = Literal(_geometry_literal(body), "geometry")
    except (ValueError, OverflowError) as exc:
        raise ctx.error(start, f"{word}'…': {exc}") from None
    return _Tok("lit", text[start:m.end()], start, lit)


# -- parser -----------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the OData precedence: or < and < not < comparison < add < mul < unary."""

    def __init__(self, text: str, ctx: _Ctx) -> None:
        self.ctx, self.toks, self.i, self.depth = ctx, _lex(text, ctx), 0, 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text in ops

    def fail(self, tok: _Tok, reason: str) -> StaQueryError:
        return self.ctx.error(tok.pos, reason)

    def unexpected(self, tok: _Tok, wanted: str) -> StaQueryError:
        if tok.kind == "eof":
            return self.fail(tok, f"expected {wanted}, found the end / 缺少{wanted}")
        hint = ""
        if tok.kind == "ident" and tok.text.lower() in _OPERATORS | {"true", "false", "null"}:
            hint = f" (keywords are lowercase: {tok.text.lower()} / 关键字须小写)"
        return self.fail(tok, f"expected {wanted}, found {tok.text!r}{hint} / 此处应为{wanted}")

    def nest(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail(tok, f"expression nested more than {_MAX_DEPTH} levels / 表达式嵌套过深")

    def expression(self) -> Node:
        left = self._and()
        while self.at_op("or"):
            self.take()
            left = BinOp("or", left, self._and())
        return left

    def _and(self) -> Node:
        left = self._not()
        while self.at_op("and"):
            self.take()
            left = BinOp("and", left, self._not())
        return left

    def _not(self) -> Node:
        if not self.at_op("not"):
            return self._binary(COMPARE, self._binary_add)
        tok = self.take()
        self.nest(tok)
        node = Not(self._not())
        self.depth -= 1
        return node

    def _binary(self, ops: tuple[str, ...], below: Callable[[], Node]) -> Node:
        left = below()
        while self.at_op(*ops):
            left = BinOp(self.take().text, left, below())
        return left

    def _binary_add(self) -> Node:
        return self._binary(_ADDITIVE, self._binary_mul)

    def _binary_mul(self) -> Node:
        return self._binary(_MULTIPLICATIVE, self._unary)

    def _unary(self) -> Node:
        if self.peek().kind != "-":
            return self._primary()
        tok = self.take()
        self.nest(tok)
        operand = self._unary()
        self.depth -= 1
        if isinstance(operand, Literal) and operand.kind in ("number", "duration"):
            return Literal(-operand.value, operand.kind)
        return Neg(operand)

    def _primary(self) -> Node:
        tok = self.take()
        if tok.kind == "lit":
            return tok.value  # type: ignore[no-any-return]
        if tok.kind == "(":
            self.nest(tok)
            node = self.expression()
            self.depth -= 1
            if self.take().kind != ")":
                raise self.unexpected(self.toks[self.i - 1], "')'")
            return node
        if tok.kind == "ident":
            if self.peek().kind == "(":
                return self._call(tok)
            return self._path(tok)
        raise self.unexpected(tok, "a value / 值")

    def _call(self, name_tok: _Tok) -> Call:
        name = name_tok.text.lower()
        if name not in FUNCTIONS:
            raise self.fail(name_tok, f"unknown function {name_tok.text} / 未知函数 {name_tok.text}")
        self.nest(self.take())
        args: list[Node] = []
        if self.peek().kind != ")":
            args.append(self.expression())
            while self.peek().kind == ",":
                self.take()
                args.append(self.expression())
        if self.peek().kind != ")":
            raise self.unexpected(self.peek(), "',' or ')'")
        self.take()
        self.depth -= 1
        least, most = FUNCTIONS[name]
        if not least <= len(args) <= most:
            want = str(least) if least == most else f"{least}-{most}"
            raise self.fail(name_tok, f"function {name} takes {want} argument(s), got {len(args)} "
                                      f"/ 函数 {name} 需要 {want} 个参数，实际 {len(args)} 个")
        return Call(name, tuple(args))

    def _path(self, first: _Tok) -> Path:
        parts, tok = [first], first
        while self.peek().kind == "/":
            self.take()
            tok = self.take()
            # after a slash, words like `add` or `null` are property names, not keywords
            if tok.kind not in ("ident", "op") and not (tok.kind == "lit" and _NAME.fullmatch(tok.text)):
                raise self.unexpected(tok, "a property name / 属性名")
            parts.append(tok)
        for part in parts:
            if not _NAME.fullmatch(part.text):
                raise self.fail(part, f"{part.text!r} is not a property name / 不是属性名")
        if self.peek().kind == "(":
            raise self.fail(tok, f"{tok.text!r} is not a function here / 此处不能调用函数")
        return Path(tuple(p.text for p in parts))

    def finish(self, node: Node) -> Node:
        if _depth(node) > _MAX_DEPTH:
            raise self.ctx.error(0, f"expression nested more than {_MAX_DEPTH} levels / 表达式嵌套过深")
        return node


def _chain(node: Node, op: str) -> list[Node]:
    """Operands of a run of one and/or, in order, without recursion (long `or` lists are common)."""
    out: list[Node] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, BinOp) and n.op == op:
            stack += (n.right, n.left)
        else:
            out.append(n)
    return out


def _depth(node: Node) -> int:
    """Nesting depth, a run of one and/or counting once (the compiler flattens it)."""
    best, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        if isinstance(n, BinOp):
            flat = n.op in ("and", "or")
            stack += [(c, d if flat and isinstance(c, BinOp) and c.op == n.op else d + 1)
                      for c in (n.left, n.right)]
        elif isinstance(n, Not | Neg):
            stack.append((n.operand, d + 1))
        elif isinstance(n, Call):
            stack += [(a, d + 1) for a in n.args]
    return best


def _parse_filter(text: str, ctx: _Ctx) -> Node:
    if not text.strip():
        raise ctx.error(0, "empty expression / 表达式为空")
    p = _Parser(text, ctx)
    node = p.expression()
    if p.peek().kind != "eof":
        raise p.unexpected(p.peek(), "an operator or the end / 运算符或结尾")
    return p.finish(node)


def parse_filter(text: str) -> Node:
    """The tree of a `$filter` expression."""
    return _parse_filter(text, _Ctx("$filter"))


def _parse_orderby(text: str, ctx: _Ctx) -> list[tuple[Node, bool]]:
    if not text.strip():
        raise ctx.error(0, "empty $orderby / 排序为空")
    p = _Parser(text, ctx)
    out: list[tuple[Node, bool]] = []
    while True:
        if p.peek().kind in (",", "eof"):
            raise p.unexpected(p.peek(), "an expression / 表达式")
        node = p.finish(p.expression())
        descending = False
        if p.peek().kind == "ident" and p.peek().text in ("asc", "desc"):
            descending = p.take().text == "desc"
        out.append((node, descending))
        tok = p.take()
        if tok.kind == "eof":
            return out
        if tok.kind != ",":
            raise p.unexpected(tok, "asc, desc, ',' or the end / asc、desc、逗号或结尾")


def parse_orderby(text: str) -> list[tuple[Node, bool]]:
    """`$orderby` as (expression, descending) pairs."""
    return _parse_orderby(text, _Ctx("$orderby"))


def _parse_select(text: str, ctx: _Ctx) -> list[str]:
    names: list[str] = []
    pos = 0
    for item in text.split(","):
        name = item.strip()
        at = pos + len(item) - len(item.lstrip())
        pos += len(item) + 1
        if name == "@iot.id":
            name = "id"
        if name == "*":
            return []  # everything, as in OData
        if not _NAME.fullmatch(name):
            what = "empty item (two commas?)" if not name else f"{name!r} is not a property name"
            raise ctx.error(at, f"{what} / 不是有效的属性名")
        if name not in names:
            names.append(name)
    return names


def parse_select(text: str) -> list[str]:
    """`$select` property names, in order, without repeats; `*` (all) gives []."""
    return _parse_select(text, _Ctx("$select"))


# -- $expand and the option set ---------------------------------------------------------------------


@dataclass(frozen=True)
class Expand:
    """One `$expand` item: "Datastreams/Observations" -> ("Datastreams", "Observations")."""

    path: tuple[str, ...]
    options: QueryOptions


@dataclass(frozen=True)
class QueryOptions:
    filter: Node | None = None
    orderby: tuple[tuple[Node, bool], ...] = ()
    select: tuple[str, ...] = ()
    expand: tuple[Expand, ...] = ()
    top: int | None = None
    skip: int = 0
    count: bool = False
    result_format: str | None = None


OPTIONS = ("$filter", "$orderby", "$select", "$expand", "$top", "$skip", "$count", "$resultFormat")
_MAX_EXPAND = 10


def _split_top(text: str, sep: str, ctx: _Ctx) -> list[tuple[int, str]]:
    """Split on sep outside parentheses and quotes: (start, piece) pairs."""
    out: list[tuple[int, str]] = []
    depth, quote, start, opened = 0, -1, 0, []
    for i, c in enumerate(text):
        if c == "'":
            quote = i if quote < 0 else -1  # '' inside a string closes and reopens: same state
        elif quote >= 0:
            continue
        elif c == "(":
            depth += 1
            opened.append(i)
        elif c == ")":
            if not depth:
                raise ctx.error(i, "unbalanced ')' / 括号不匹配")
            depth -= 1
            opened.pop()
        elif c == sep and not depth:
            out.append((start, text[start:i]))
            start = i + 1
    if quote >= 0:
        raise ctx.error(quote, "unterminated string / 字符串缺少结尾引号")
    if depth:
        raise ctx.error(opened[-1], "unbalanced '(' / 括号不匹配")
    out.append((start, text[start:]))
    return out


def _expand(text: str, ctx: _Ctx, max_top: int, level: int) -> tuple[Expand, ...]:
    if level > _MAX_EXPAND:
        raise ctx.error(0, f"$expand nested more than {_MAX_EXPAND} levels / 展开嵌套过深")
    items: list[Expand] = []
    for start, piece in _split_top(text, ",", ctx):
        at = start + len(piece) - len(piece.lstrip())
        item = piece.strip()
        if not item:
            raise ctx.error(at, "empty $expand item (two commas?) / 展开项为空")
        paren = item.find("(")
        path_text = (item if paren < 0 else item[:paren]).rstrip()
        segments = path_text.split("/")
        pos = at
        for seg in segments:
            if not _NAME.fullmatch(seg):
                raise ctx.error(pos, f"{seg!r} is not an entity name / 不是实体名")
            pos += len(seg) + 1
        path = tuple(segments)
        if any(e.path == path for e in items):
            raise ctx.error(at, f"{path_text} is expanded twice / {path_text} 重复展开")
        options = QueryOptions()
        if paren >= 0:
            close = _matching(item, paren)
            if close != len(item) - 1:
                raise ctx.error(at + close + 1,
                                f"unexpected {item[close + 1:]!r} after ')' / ')' 后有多余内容")
            options = _expand_options(item[paren + 1:close], at + paren + 1, ctx, path_text, max_top, level)
        items.append(Expand(path, options))
    return tuple(items)


def _matching(text: str, open_at: int) -> int:
    """Index of the ')' closing the '(' at open_at (the text is known balanced)."""
    depth, quoted = 0, False
    for i in range(open_at, len(text)):
        c = text[i]
        if c == "'":
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
            if not depth:
                return i
    return len(text) - 1


def _expand_options(text: str, offset: int, ctx: _Ctx, path_text: str, max_top: int,
                    level: int) -> QueryOptions:
    here = _Ctx(ctx.field, ctx.offset + offset, ctx.where)
    items: list[tuple[str, str, _Ctx]] = []
    for start, piece in _split_top(text, ";", here):
        at = start + len(piece) - len(piece.lstrip())
        key, eq, value = piece.strip().partition("=")
        key = key.strip()
        if not eq or not key.startswith("$"):
            raise here.error(at, f"expected $option=value, found {piece.strip()!r} / 应为 $参数=值")
        if key == "$resultFormat":
            raise here.error(at, "$resultFormat is not allowed inside $expand "
                                 "/ $expand 内不能用 $resultFormat")
        if any(k == key for k, _, _ in items):
            raise here.error(at, f"{key} given twice / {key} 重复")
        value_at = at + piece.strip().index("=") + 1
        where = f"{ctx.where}{path_text}({key}): "
        items.append((key, value, _Ctx(ctx.field, here.offset + value_at, where)))
    return _build_options(items, max_top, level + 1)


def parse_expand(text: str, *, max_top: int = 10000) -> tuple[Expand, ...]:
    """`$expand` items with their nested options, e.g. "Datastreams($top=5;$expand=Thing)"."""
    return _expand(text, _Ctx("$expand"), max_top, 0)


def _whole(value: str, ctx: _Ctx, name: str, most: int) -> int:
    text = value.strip()
    if not re.fullmatch(r"\d{1,19}", text) or int(text) > most:
        raise ctx.value_error(f"{name} must be a whole number from 0 to {most}, not {value!r} "
                           f"/ {name} 须为 0 到 {most} 的整数")
    return int(text)


def _build_options(items: list[tuple[str, str, _Ctx]], max_top: int, level: int) -> QueryOptions:
    """QueryOptions from ($key, value, where-the-value-is) triples; every error is collected."""
    found: dict[str, Any] = {}
    errors: list[StaQueryError] = []
    for key, value, ctx in items:
        try:
            found[key] = _read_option(key, value, ctx, max_top, level)
        except StaQueryError as exc:
            errors.append(exc)
    if errors:
        first, *rest = errors
        raise StaQueryError(first.errors[0].field, first.errors[0].reason,
                            *(e.errors[0] for e in rest), position=first.extra.get("position"))
    return QueryOptions(
        filter=found.get("$filter"), orderby=tuple(found.get("$orderby", ())),
        select=tuple(found.get("$select", ())), expand=found.get("$expand", ()),
        top=found.get("$top"), skip=found.get("$skip", 0), count=found.get("$count", False),
        result_format=found.get("$resultFormat"))


def _read_option(key: str, value: str, ctx: _Ctx, max_top: int, level: int) -> Any:
    if key == "$filter":
        return _parse_filter(value, ctx)
    if key == "$orderby":
        return _parse_orderby(value, ctx)
    if key == "$select":
        return _parse_select(value, ctx)
    if key == "$expand":
        if not value.strip():
            raise ctx.error(0, "empty $expand / 展开为空")
        return _expand(value, ctx, max_top, level)
    if key == "$top":
        return _whole(value, ctx, "$top", max_top)
    if key == "$skip":
        return _whole(value, ctx, "$skip", _INT64)
    if key == "$count":
        if value not in ("true", "false"):
            raise ctx.value_error(f"$count must be true or false, not {value!r} / $count 须为 true 或 false")
        return value == "true"
    if key == "$resultFormat":
        if value != "dataArray":
            raise ctx.value_error(f"only $resultFormat=dataArray is supported, not {value!r} "
                               "/ 仅支持 $resultFormat=dataArray")
        return value
    close = [o for o in OPTIONS if o.lower() == key.lower()]
    hint = f"did you mean {close[0]}? / 是否应为 {close[0]}？" if close else f"known: {', '.join(OPTIONS)}"
    raise ctx.value_error(f"unknown query option {key} ({hint}) / 未知查询参数 {key}")


def parse_options(params: Mapping[str, str], max_top: int = 10000) -> QueryOptions:
    """The STA options of a query string; keys not starting with `$` are left to the caller."""
    items = [(k, v, _Ctx(k)) for k, v in params.items() if k.startswith("$")]
    return _build_options(items, max_top, 0)


# -- back to text -----------------------------------------------------------------------------------


def _duration_text(value: dt.timedelta) -> str:
    sign, value = ("-", -value) if value < dt.timedelta(0) else ("", value)
    seconds = value.seconds + value.microseconds / 1e6
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    secs = f"{s:.6f}".rstrip("0").rstrip(".")
    units = ((int(h), "H"), (int(m), "M"), (secs, "S"))
    clock = "".join(f"{n}{unit}" for n, unit in units if n not in (0, "0"))
    days = f"{value.days}D" if value.days else ""
    return f"{sign}P{days}T{clock}" if clock else f"{sign}P{days or '0D'}"


def _literal_text(lit: Literal) -> str:
    v = lit.value
    if lit.kind == "string":
        return "'" + v.replace("'", "''") + "'"
    if lit.kind in ("bool", "null"):
        return {True: "true", False: "false", None: "null"}[v]
    if lit.kind == "datetime":
        return str(v.isoformat().replace("+00:00", "Z"))
    if lit.kind in ("date", "time"):
        return str(v.isoformat())
    if lit.kind == "duration":
        return f"duration'{_duration_text(v)}'"
    if lit.kind == "geometry":
        return f"geography'{shapely.to_wkt(v, rounding_precision=-1)}'"
    return repr(v)


def to_text(node: Node) -> str:
    """The node as `$filter` text, parenthesised where precedence needs it (for links and errors)."""
    if isinstance(node, Literal):
        return _literal_text(node)
    if isinstance(node, Path):
        return "/".join(node.parts)
    if isinstance(node, Call):
        return f"{node.name}({', '.join(to_text(a) for a in node.args)})"
    if isinstance(node, Not):
        inner = to_text(node.operand)
        return f"not ({inner})" if isinstance(node.operand, BinOp) and node.operand.op in ("and", "or") \
            else f"not {inner}"
    if isinstance(node, Neg):
        inner = to_text(node.operand)
        return f"-({inner})" if isinstance(node.operand, BinOp | Neg) else f"-{inner}"
    prec = _PRECEDENCE[node.op]
    if node.op in ("and", "or"):
        parts = _chain(node, node.op)
    else:
        parts = [node.left, node.right]
    texts = []
    for i, part in enumerate(parts):
        text = to_text(part)
        tight = prec if i == 0 else prec + 1  # left-associative: a right operand of equal rank needs ()
        if (isinstance(part, BinOp) and _PRECEDENCE[part.op] < tight) or (isinstance(part, Not) and prec > 3):
            text = f"({text})"
        texts.append(text)
    return f" {node.op} ".join(texts)


# -- compiling to SQL -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """What a property path stands for in SQL; kind: number|string|bool|time_ms|datetime|json|geojson."""

    expr: ColumnElement[Any]
    kind: str


Resolver = Callable[[tuple[str, ...]], Field]
FIELD_KINDS = frozenset(("number", "string", "bool", "time_ms", "datetime", "json", "geojson"))
_CMP = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "ge": operator.ge,
        "lt": operator.lt, "le": operator.le}
_ARITH_SQL = {"add": "+", "sub": "-", "mul": "*"}
_SRID_SQL = literal_column("4326", Integer())
_JSON_NUMBER = r"^\s*-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\s*$"


@dataclass(frozen=True)
class _V:
    """A compiled value: a kind and either SQL (expr) or a Python constant (const=True)."""

    kind: str
    src: Node
    expr: Any = None
    value: Any = None
    const: bool = False


def _integral(e: Any) -> bool:
    """Whether SQL holds a whole number: integer columns, year(), length(), 7 (but not floor(x))."""
    if isinstance(e, BindParameter):
        return isinstance(e.value, int) and not isinstance(e.value, bool)
    return isinstance(e.type, Integer)


def _ms(value: dt.datetime | dt.date) -> int:
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return (value - EPOCH) // dt.timedelta(milliseconds=1)


def _midnight(value: dt.datetime | dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)


def _check_number(value: int | float, src: Node, field: str) -> int | float:
    if abs(value) > _INT64 if isinstance(value, int) else not math.isfinite(value):
        raise StaQueryError(field, f"{to_text(src)} is out of range / 数值超出范围")
    return value


def _round_half_away(x: float) -> float:
    return math.copysign(math.floor(abs(x) + 0.5), x)


class _Compiler:
    def __init__(self, resolve: Resolver, dialect: str, field: str) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"dialect must be sqlite or postgresql, not {dialect!r}")
        self.resolve, self.pg, self.field = resolve, dialect == "postgresql", field
        self.now = dt.datetime.now(dt.UTC)

    def fail(self, reason: str) -> StaQueryError:
        return StaQueryError(self.field, reason)

    @staticmethod
    def show(v: _V) -> str:
        return f"{to_text(v.src)} ({'geometry' if v.kind == 'geojson' else v.kind})"

    # values -------------------------------------------------------------------------------------

    def value(self, node: Node) -> _V:
        if isinstance(node, Literal):
            return _V(node.kind, node, value=node.value, const=True)
        if isinstance(node, Path):
            f = self.resolve(node.parts)
            if f.kind not in FIELD_KINDS:
                raise ValueError(f"resolver gave kind {f.kind!r} for {node.parts}; use one of {FIELD_KINDS}")
            expr = f.expr
            if f.kind == "bool" and not isinstance(expr.type, Boolean):
                expr = type_coerce(expr, Boolean()).self_group()  # so that not_() applies to it
            return _V(f.kind, node, expr=expr)
        if isinstance(node, Not):
            inner = self.condition(node.operand)
            return _V("bool", node, expr=not_(inner))
        if isinstance(node, Neg):
            v = self.value(node.operand)
            if v.kind in ("number", "json", "duration"):
                if v.const:
                    return _V(v.kind, node, value=-v.value, const=True)
                return _V("duration" if v.kind == "duration" else "number", node,
                          expr=-(self.number(v) if v.kind != "duration" else v.expr))
            raise self.fail(f"cannot negate {self.show(v)} / 不能取负")
        if isinstance(node, Call):
            return self.call(node)
        if node.op in ("and", "or"):
            join = and_ if node.op == "and" else or_
            return _V("bool", node, expr=join(*(self.condition(p) for p in _chain(node, node.op))))
        a, b = self.value(node.left), self.value(node.right)
        if node.op in _CMP:
            return self.compare(node, a, b)
        return self.arith(node, a, b)

    def condition(self, node: Node) -> ColumnElement[bool]:
        v = self.value(node)
        if v.kind == "bool":
            if v.const:
                return true() if v.value else false()
            return v.expr  # type: ignore[no-any-return]
        if v.kind == "json" and not v.const:
            return self.json_bool(v.expr) == true()
        raise self.fail(f"{self.show(v)} is not a condition; compare it with something / 不是条件表达式")

    def sql(self, v: _V) -> Any:
        """SQL for a value in its own type."""
        if not v.const:
            return v.expr
        x = v.value
        if v.kind == "number":
            return literal(x, BigInteger() if isinstance(x, int) else Float())
        if v.kind == "string":
            return self.text_param(x)
        if v.kind == "bool":
            return true() if x else false()
        if v.kind == "datetime":
            return literal(x, DateTime(timezone=True))
        if v.kind == "date":
            return literal(x, Date()) if self.pg else literal(x.isoformat(), Text())
        if v.kind == "time":
            return literal(x, Time()) if self.pg else literal(x.strftime("%H:%M:%S"), Text())
        if v.kind == "duration":
            return literal(x // dt.timedelta(milliseconds=1), BigInteger())
        if v.kind == "geometry":
            return self.text_param(shapely.to_wkt(x, rounding_precision=-1))
        return literal(None)

    def text_param(self, text: str) -> Any:
        # psycopg sends str as "unknown"; PostgreSQL then cannot pick lower(), || or strpos()
        return cast(literal(text, Text()), Text()) if self.pg else literal(text, Text())

    def number(self, v: _V) -> Any:
        if v.kind == "json" and not v.const:
            if self.pg:
                t = cast(v.expr, Text())
                return case((t.op("~")(literal(_JSON_NUMBER)), cast(t, Float())))
            # PostgreSQL's ->> cannot tell 5 from "5", so a JSON string that is a number counts as one
            # on SQLite too (by GLOB, an approximation of the regular expression above)
            e, t = type_coerce(v.expr, Float()), func.trim(type_coerce(v.expr, Text()))
            numeric_text = and_(func.typeof(v.expr) == "text", t.op("GLOB")("*[0-9]*"),
                                not_(t.op("GLOB")("*[^0-9eE.+-]*")))
            return case((func.typeof(e).in_(["integer", "real"]), e), (numeric_text, cast(t, Float())))
        if v.kind != "number":
            raise self.fail(f"{self.show(v)} is not a number / 不是数值")
        return self.sql(v)

    def text(self, v: _V) -> Any:
        if v.kind == "json" and not v.const:
            return cast(v.expr, Text())
        if v.kind != "string":
            raise self.fail(f"{self.show(v)} is not a string / 不是字符串")
        return self.sql(v)

    def json_bool(self, e: Any) -> Any:
        if self.pg:
            t = cast(e, Text())
            return case((t == "true", true()), (t == "false", false()))
        # SQLite's json_extract gives 1/0 for true/false; a text resolver gives 'true'/'false'
        yes = or_(e == literal(1, Integer()), e == literal("true", Text()))
        no = or_(e == literal(0, Integer()), e == literal("false", Text()))
        return case((yes, 1), (no, 0))

    def millis(self, v: _V) -> Any:
        """An instant or a duration as epoch (or plain) milliseconds."""
        if v.const:
            if v.kind == "duration":
                return literal(v.value // dt.timedelta(milliseconds=1), BigInteger())
            return literal(_ms(v.value), BigInteger())
        if v.kind in ("time_ms", "duration"):
            return v.expr
        if self.pg:
            return cast(func.round(extract("epoch", v.expr) * 1000), BigInteger())
        return cast(func.round((func.julianday(v.expr) - 2440587.5) * 86400000.0), BigInteger())

    @staticmethod
    def instant(v: _V) -> bool:
        return v.kind in ("time_ms", "datetime") or (v.const and v.kind == "date")

    # comparison and arithmetic ------------------------------------------------------------------

    def compare(self, node: BinOp, a: _V, b: _V) -> _V:
        op = _CMP[node.op]
        if a.kind == "null" or b.kind == "null":
            if node.op not in ("eq", "ne"):
                raise self.fail(f"only eq and ne compare with null: {to_text(node)} "
                                "/ null 只能用 eq 或 ne 比较")
            other = b if a.kind == "null" else a
            if other.const:
                return _V("bool", node, value=(other.kind == "null") == (node.op == "eq"), const=True)
            expr = other.expr
            return _V("bool", node, expr=expr.is_(None) if node.op == "eq" else expr.is_not(None))
        if "geometry" in (a.kind, b.kind) or "geojson" in (a.kind, b.kind):
            raise self.fail(f"geometries are compared with st_equals, not {node.op} "
                            "/ 几何请用 st_equals 比较")
        if a.const and b.const:
            return _V("bool", node, value=self.fold_compare(node, a, b), const=True)
        left, right = self.pair(node, a, b)
        return _V("bool", node, expr=op(left, right))

    def fold_compare(self, node: BinOp, a: _V, b: _V) -> bool:
        x, y = a.value, b.value
        if self.instant(a) and self.instant(b):
            x, y = _midnight(x), _midnight(y)
        elif not (a.kind == b.kind and a.kind in ("number", "string", "bool", "date", "time", "duration")):
            raise self.fail(f"cannot compare {self.show(a)} with {self.show(b)} / 无法比较")
        if node.op not in ("eq", "ne") and a.kind == "bool":
            raise self.fail(f"booleans have no order: {to_text(node)} / 布尔值不能比较大小")
        return bool(_CMP[node.op](x, y))

    def pair(self, node: BinOp, a: _V, b: _V) -> tuple[Any, Any]:
        """Both sides of a comparison in one SQL type, or Invalid."""
        if "json" in (a.kind, b.kind):
            j, o = (a, b) if a.kind == "json" else (b, a)
            if o.kind == "json" or o.kind == "string":
                sides = (self.text(j), self.text(o))
            elif o.kind == "number":
                sides = (self.number(j), self.number(o))
            elif o.kind == "bool":
                if node.op not in ("eq", "ne"):
                    raise self.fail(f"booleans have no order: {to_text(node)} / 布尔值不能比较大小")
                sides = (self.json_bool(j.expr), self.sql(o))
            elif o.const and o.kind in ("datetime", "date"):
                iso = o.value.isoformat().replace("+00:00", "Z")
                sides = (self.text(j), self.text_param(iso))
            else:
                raise self.fail(f"cannot compare {self.show(a)} with {self.show(b)} / 无法比较")
            return sides if j is a else (sides[1], sides[0])
        if a.kind == b.kind and a.kind in ("number", "string", "bool"):
            if a.kind == "bool" and node.op not in ("eq", "ne"):
                raise self.fail(f"booleans have no order: {to_text(node)} / 布尔值不能比较大小")
            return self.sql(a), self.sql(b)
        if self.instant(a) and self.instant(b):
            kinds = {a.kind, b.kind}
            if "time_ms" not in kinds:  # a timestamp column against a constant or another column
                col = a if not a.const else b
                bound = [literal(_midnight(v.value), col.expr.type if isinstance(col.expr.type, DateTime)
                                 else DateTime(timezone=True)) if v.const else v.expr for v in (a, b)]
                return bound[0], bound[1]
            return self.millis(a), self.millis(b)
        if a.kind == b.kind and a.kind in ("date", "time"):
            return self.sql(a), self.sql(b)
        if a.kind == b.kind == "duration":
            return self.millis(a), self.millis(b)
        raise self.fail(f"cannot compare {self.show(a)} with {self.show(b)} / 无法比较")

    def arith(self, node: BinOp, a: _V, b: _V) -> _V:
        op = node.op
        numeric = ("number", "json")
        if a.kind in numeric and b.kind in numeric:
            if b.const and op in ("div", "mod") and b.value == 0:
                raise self.fail(f"division by zero: {to_text(node)} / 除数为零")
            if a.const and b.const:
                return _V("number", node, value=self.fold_arith(node, a.value, b.value), const=True)
            x, y = self.number(a), self.number(b)
            # Whole numbers divide as whole numbers (OData); anything else as floats. Decided by the
            # SQL type, not by what the database happens to hold: SQLite's floor() may give 3, not 3.0.
            whole = _integral(x) and _integral(y)
            kind: Any = Integer() if whole else Float()
            if op in _ARITH_SQL:
                return _V("number", node, expr=x.op(_ARITH_SQL[op], return_type=kind)(y))
            y = func.nullif(y, 0, type_=kind)  # NULL, not an error, on both databases
            if whole:
                return _V("number", node, expr=x.op("/", return_type=kind)(y) if op == "div" else x % y)
            x = cast(x, Float())
            if op == "div":
                return _V("number", node, expr=x.op("/", return_type=kind)(y))
            if self.pg:
                return _V("number", node, expr=func.mod(cast(x, Numeric()), cast(y, Numeric())))
            # SQLite's % truncates reals to integers first; this keeps the fraction, like PostgreSQL
            quotient = cast(x.op("/")(y), Integer())
            return _V("number", node, expr=x.op("-", return_type=kind)(y.op("*")(quotient)))
        return self.time_arith(node, a, b)

    def fold_arith(self, node: BinOp, x: int | float, y: int | float) -> int | float:
        op = node.op
        try:
            r = self._fold(op, x, y)
        except OverflowError:
            raise self.fail(f"{to_text(node)} is out of range / 数值超出范围") from None
        return _check_number(r, node, self.field)

    @staticmethod
    def _fold(op: str, x: int | float, y: int | float) -> int | float:
        if op in ("add", "sub", "mul"):
            r = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}[op](x, y)
        elif isinstance(x, int) and isinstance(y, int):  # SQL truncates integer division
            q = abs(x) // abs(y) * (1 if (x >= 0) == (y >= 0) else -1)
            r = q if op == "div" else x - y * q
        else:
            r = x / y if op == "div" else math.fmod(x, y)
        return r

    def time_arith(self, node: BinOp, a: _V, b: _V) -> _V:
        op, dur = node.op, ("duration",)
        try:
            if op in ("add", "sub") and self.instant(a) and b.kind in dur or \
                    op == "add" and a.kind in dur and self.instant(b):
                if a.const and b.const:
                    t, d = (a, b) if b.kind in dur else (b, a)
                    value = _midnight(t.value) + (d.value if op == "add" else -d.value)
                    return _V("datetime", node, value=value, const=True)
                return _V("time_ms", node, expr=self.millis(a).op(_ARITH_SQL[op])(self.millis(b)))
            if op == "sub" and self.instant(a) and self.instant(b) or \
                    op in ("add", "sub") and a.kind in dur and b.kind in dur:
                if a.const and b.const:
                    x, y = a.value, b.value
                    if a.kind != "duration":
                        x, y = _midnight(x), _midnight(y)
                    value = x - y if op == "sub" else x + y
                    return _V("duration", node, value=value, const=True)
                return _V("duration", node, expr=self.millis(a).op(_ARITH_SQL[op])(self.millis(b)))
        except OverflowError:
            raise self.fail(f"{to_text(node)} is out of range / 超出范围") from None
        hint = " (use concat / 请用 concat)" if "string" in (a.kind, b.kind) else ""
        raise self.fail(f"cannot {op} {self.show(a)} and {self.show(b)}{hint} / 无法计算 {op}")

    # functions --------------------------------------------------------------------------------------

    def call(self, node: Call) -> _V:
        args = [self.value(a) for a in node.args]
        name = node.name
        if name in DATE_PARTS:
            return self.date_part(node, args[0])
        if name in GEO_PREDICATES:
            return self.geo(node, GEO_PREDICATES[name], args)
        handler: Callable[..., _V] = getattr(self, "fn_" + name.replace(".", "_"))
        return handler(node, *args)

    def fn_now(self, node: Call) -> _V:
        return _V("datetime", node, value=self.now, const=True)

    def fn_mindatetime(self, node: Call) -> _V:
        return _V("datetime", node, value=MIN_DATETIME, const=True)

    def fn_maxdatetime(self, node: Call) -> _V:
        return _V("datetime", node, value=MAX_DATETIME, const=True)

    def temporal(self, node: Call, v: _V, dates: bool = False) -> None:
        ok = v.kind in ("time_ms", "datetime") or (v.kind == "date" and dates)
        if not ok:
            raise self.fail(f"{node.name}() needs a date and time, not {self.show(v)} "
                            f"/ {node.name}() 需要日期时间")

    def ts_pg(self, v: _V) -> Any:
        """A PostgreSQL timestamp in UTC (without zone) for a time_ms or datetime value."""
        if v.kind == "time_ms":
            return func.timezone("UTC", func.to_timestamp(v.expr.op("/")(literal(1000.0))))
        if v.kind == "datetime":
            return func.timezone("UTC", v.expr)
        return v.expr  # a date

    def ts_sqlite(self, v: _V) -> tuple[Any, ...]:
        """Arguments of SQLite's date functions for a time_ms, datetime or date value."""
        if v.kind == "time_ms":
            return (v.expr.op("/")(literal(1000.0)), "unixepoch")
        return (v.expr,)

    def date_part(self, node: Call, v: _V) -> _V:
        self.temporal(node, v, dates=node.name in ("year", "month", "day"))
        if v.const:
            return _V("number", node, value=getattr(v.value, node.name), const=True)
        if self.pg:
            expr = cast(func.floor(extract(node.name, self.ts_pg(v))), Integer())
        else:
            expr = cast(func.strftime(DATE_PARTS[node.name], *self.ts_sqlite(v)), Integer())
        return _V("number", node, expr=expr)

    def fn_fractionalseconds(self, node: Call, v: _V) -> _V:
        self.temporal(node, v)
        if v.const:
            return _V("number", node, value=v.value.microsecond / 1e6, const=True)
        if v.kind == "time_ms":
            ms = (v.expr % 1000 + 1000) % 1000  # Python's %, so the driver's % escaping applies
            return _V("number", node, expr=ms.op("/", return_type=Float())(literal(1000.0)))
        if self.pg:
            sec = extract("second", self.ts_pg(v))
            return _V("number", node, expr=sec - func.floor(sec))
        return _V("number", node, expr=cast(func.strftime("%f", v.expr), Float())
                  - cast(func.strftime("%S", v.expr), Float()))

    def fn_date(self, node: Call, v: _V) -> _V:
        self.temporal(node, v, dates=True)
        if v.const:
            return _V("date", node, value=v.value.date() if isinstance(v.value, dt.datetime) else v.value,
                      const=True)
        if v.kind == "date":
            return v
        expr = cast(self.ts_pg(v), Date()) if self.pg else func.date(*self.ts_sqlite(v))
        return _V("date", node, expr=expr)

    def fn_time(self, node: Call, v: _V) -> _V:
        self.temporal(node, v)
        if v.const:
            return _V("time", node, value=v.value.time().replace(microsecond=0), const=True)
        if self.pg:
            return _V("time", node, expr=cast(func.date_trunc("second", self.ts_pg(v)), Time()))
        return _V("time", node, expr=func.time(*self.ts_sqlite(v)))

    def fn_totaloffsetminutes(self, node: Call, v: _V) -> _V:
        self.temporal(node, v)
        if v.const:
            return _V("number", node, value=0, const=True)  # literals are kept in UTC
        return _V("number", node, expr=self.millis(v) * 0)  # so is storage; NULL stays NULL

    def math_fn(self, node: Call, v: _V, fold: Callable[[float], float]) -> _V:
        x = self.number(v)
        if v.const:
            return _V("number", node, value=_check_number(int(fold(v.value)), node, self.field), const=True)
        name = node.name
        if self.pg:
            pg = {"round": lambda: func.round(cast(x, Numeric())), "floor": lambda: func.floor(x),
                  "ceiling": lambda: func.ceiling(x)}[name]
            return _V("number", node, expr=pg())
        if name == "round":
            return _V("number", node, expr=func.round(x))
        whole = cast(x, Integer())  # SQLite may lack floor() and ceil()
        step = case((x < whole, whole - 1), else_=whole) if name == "floor" else \
            case((x > whole, whole + 1), else_=whole)
        return _V("number", node, expr=type_coerce(step, Float()))  # a float, as on PostgreSQL

    def fn_round(self, node: Call, v: _V) -> _V:
        return self.math_fn(node, v, _round_half_away)

    def fn_floor(self, node: Call, v: _V) -> _V:
        return self.math_fn(node, v, math.floor)

    def fn_ceiling(self, node: Call, v: _V) -> _V:
        return self.math_fn(node, v, math.ceil)

    def string_arg(self, node: Call, v: _V) -> Any:
        if v.kind not in ("string", "json") or (v.kind == "json" and v.const):
            raise self.fail(f"{node.name}() needs a string, not {self.show(v)} / {node.name}() 需要字符串")
        return self.text(v)

    def fn_tolower(self, node: Call, v: _V) -> _V:
        return _V("string", node, expr=func.lower(self.string_arg(node, v), type_=Text()))

    def fn_toupper(self, node: Call, v: _V) -> _V:
        return _V("string", node, expr=func.upper(self.string_arg(node, v), type_=Text()))

    def fn_trim(self, node: Call, v: _V) -> _V:
        return _V("string", node, expr=func.trim(self.string_arg(node, v), type_=Text()))

    def fn_length(self, node: Call, v: _V) -> _V:
        return _V("number", node, expr=func.length(self.string_arg(node, v), type_=Integer()))

    def fn_concat(self, node: Call, a: _V, b: _V) -> _V:
        x, y = self.string_arg(node, a), self.string_arg(node, b)
        return _V("string", node, expr=type_coerce(x.op("||")(y), Text()))

    def fn_indexof(self, node: Call, a: _V, b: _V) -> _V:
        s, sub = self.string_arg(node, a), self.string_arg(node, b)
        found = func.strpos(s, sub) if self.pg else func.instr(s, sub)
        return _V("number", node, expr=found.op("-", return_type=Integer())(1))

    def whole_arg(self, node: Call, v: _V, plus: int = 0) -> Any:
        """An int4 argument (PostgreSQL's substr takes nothing wider), plus one for 1-based SQL."""
        if v.const:
            if v.kind != "number" or not isinstance(v.value, int) or not 0 <= v.value < 2**31 - 1:
                raise self.fail(f"{node.name}() needs a whole number >= 0, not {self.show(v)} "
                                f"/ {node.name}() 需要非负整数")
            return literal(v.value + plus, Integer())
        whole = cast(self.number(v), Integer())
        return cast(whole + plus, Integer()) if plus else whole

    def fn_substring(self, node: Call, s: _V, start: _V, length: _V | None = None) -> _V:
        text, first = self.string_arg(node, s), self.whole_arg(node, start, plus=1)
        args = [text, first] if length is None else [text, first, self.whole_arg(node, length)]
        return _V("string", node, expr=func.substr(*args, type_=Text()))

    def match(self, node: Call, s: _V, part: _V, where: str) -> _V:
        """substringof/startswith/endswith: LIKE (GLOB on SQLite) for a literal, else functions."""
        text, sub = self.string_arg(node, s), self.string_arg(node, part)
        if part.const:
            if self.pg:
                esc = re.sub(r"([%_\\])", r"\\\1", part.value)
                pattern = {"in": f"%{esc}%", "start": f"{esc}%", "end": f"%{esc}"}[where]
                return _V("bool", node, expr=text.like(literal(pattern, Text()), escape="\\"))
            esc = re.sub(r"([*?\[])", r"[\1]", part.value)
            pattern = {"in": f"*{esc}*", "start": f"{esc}*", "end": f"*{esc}"}[where]
            return _V("bool", node, expr=text.op("GLOB", is_comparison=True)(literal(pattern, Text())))
        if where == "in":
            found = func.strpos(text, sub) if self.pg else func.instr(text, sub)
            return _V("bool", node, expr=found > 0)
        if where == "start":
            return _V("bool", node, expr=func.substr(text, 1, func.length(sub)) == sub)
        if self.pg:
            return _V("bool", node, expr=func.right(text, func.length(sub)) == sub)
        tail = func.substr(text, func.length(text) - func.length(sub) + 1)
        return _V("bool", node, expr=and_(func.length(sub) <= func.length(text), tail == sub))

    def fn_substringof(self, node: Call, sub: _V, s: _V) -> _V:
        return self.match(node, s, sub, "in")

    def fn_contains(self, node: Call, s: _V, sub: _V) -> _V:
        return self.match(node, s, sub, "in")

    def fn_startswith(self, node: Call, s: _V, prefix: _V) -> _V:
        return self.match(node, s, prefix, "start")

    def fn_endswith(self, node: Call, s: _V, suffix: _V) -> _V:
        return self.match(node, s, suffix, "end")

    # geometry ---------------------------------------------------------------------------------------

    def geom(self, node: Call, v: _V) -> Any:
        if v.kind == "geometry" and v.const:
            wkt = self.text_param(shapely.to_wkt(v.value, rounding_precision=-1))
            return func.ST_GeomFromText(wkt, _SRID_SQL) if self.pg else wkt
        if v.kind == "geojson" and not v.const:
            if self.pg:
                return func.ST_SetSRID(func.ST_GeomFromGeoJSON(cast(v.expr, Text())), _SRID_SQL)
            return type_coerce(v.expr, Text())
        raise self.fail(f"{node.name}() needs a geometry, not {self.show(v)} / {node.name}() 需要几何")

    def geo(self, node: Call, op: str, args: list[_V], pattern: str | None = None) -> _V:
        a, b = (self.geom(node, v) for v in args[:2])
        if all(v.const for v in args[:2]):
            x, y = args[0].value, args[1].value
            hit = shapely.relate_pattern(x, y, pattern) if pattern else getattr(shapely, op)(x, y)
            return _V("bool", node, value=bool(hit), const=True)
        if self.pg:
            if pattern:
                return _V("bool", node, expr=func.ST_Relate(a, b, self.text_param(pattern), type_=Boolean()))
            return _V("bool", node, expr=getattr(func, "ST_" + op.capitalize())(a, b, type_=Boolean()))
        if pattern:
            return _V("bool", node, expr=func.sta_geo_relate(a, b, literal(pattern), type_=Boolean()))
        return _V("bool", node, expr=func.sta_geo(literal(op), a, b, type_=Boolean()))

    def fn_st_relate(self, node: Call, a: _V, b: _V, p: _V) -> _V:
        if not (p.const and p.kind == "string" and re.fullmatch(r"[012TF*]{9}", p.value.upper())):
            raise self.fail(f"st_relate() needs a DE-9IM pattern like 'T*T***FF*', not {self.show(p)} "
                            "/ st_relate() 需要 DE-9IM 模式串")
        return self.geo(node, "relate", [a, b], p.value.upper())

    def fn_geo_distance(self, node: Call, a: _V, b: _V) -> _V:
        x, y = self.geom(node, a), self.geom(node, b)
        if a.const and b.const:
            return _V("number", node, value=float(shapely.distance(a.value, b.value)), const=True)
        fn = func.ST_Distance if self.pg else func.sta_geo_distance
        expr = fn(x, y, type_=Float())
        return _V("number", node, expr=expr)

    def fn_geo_length(self, node: Call, a: _V) -> _V:
        x = self.geom(node, a)
        if a.const:
            return _V("number", node, value=_length(a.value), const=True)
        expr = (func.ST_Length if self.pg else func.sta_geo_length)(x, type_=Float())
        return _V("number", node, expr=expr)


def compile_filter(node: Node, resolve: Resolver, dialect: str) -> ColumnElement[bool]:
    """A `$filter` tree as a WHERE clause for dialect "sqlite" or "postgresql"."""
    return _Compiler(resolve, dialect, "$filter").condition(node)


def compile_expr(node: Node, resolve: Resolver, dialect: str) -> ColumnElement[Any]:
    """An expression (of `$orderby`) as SQL."""
    c = _Compiler(resolve, dialect, "$orderby")
    v = c.value(node)
    return v.expr if not v.const else c.sql(v)  # type: ignore[no-any-return]


# -- SQLite: geometry functions in Python ----------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _shape(text: str) -> BaseGeometry | None:
    """GeoJSON (geometry or Feature) or WKT; None when unreadable, so one bad row is no match."""
    try:
        geom = shapely.from_geojson(text) if text.lstrip().startswith("{") else shapely.wkt.loads(text)
    except Exception:  # shapely raises several types; a bad stored value must not fail the query
        return None
    if geom is None or geom.is_empty:
        return None
    shapely.prepare(geom)
    return geom


_SHAPELY_OPS = frozenset(GEO_PREDICATES.values())


def _length(geom: BaseGeometry) -> float:
    """Length of the lines only: PostGIS's ST_Length gives 0 for polygons (their perimeter is not it)."""
    return float(sum(shapely.length(g) for g in shapely.get_parts(geom)
                     if g.geom_type in ("LineString", "LinearRing", "MultiLineString")))


def sta_geo(op: str, a: str | None, b: str | None) -> int | None:
    """SQLite `sta_geo(op, geojson_or_wkt, geojson_or_wkt)`: a spatial predicate, 1/0/NULL."""
    if a is None or b is None or op not in _SHAPELY_OPS:
        return None
    x, y = _shape(str(a)), _shape(str(b))
    if x is None or y is None:
        return None
    try:
        return int(bool(getattr(shapely, op)(x, y)))
    except Exception:  # GEOS topology errors on invalid stored geometries
        return None


def sta_geo_relate(a: str | None, b: str | None, pattern: str | None) -> int | None:
    """SQLite `sta_geo_relate(a, b, de9im_pattern)`."""
    x, y = _shape(str(a)) if a is not None else None, _shape(str(b)) if b is not None else None
    if x is None or y is None or pattern is None:
        return None
    try:
        return int(bool(shapely.relate_pattern(x, y, str(pattern))))
    except Exception:
        return None


def sta_geo_distance(a: str | None, b: str | None) -> float | None:
    """SQLite `sta_geo_distance(a, b)`: planar distance in the units of the coordinates."""
    x, y = _shape(str(a)) if a is not None else None, _shape(str(b)) if b is not None else None
    return None if x is None or y is None else float(shapely.distance(x, y))


def sta_geo_length(a: str | None) -> float | None:
    """SQLite `sta_geo_length(a)`."""
    x = _shape(str(a)) if a is not None else None
    return None if x is None else _length(x)


def register_sqlite_functions(dbapi_conn: Any) -> None:
    """Register the sta_geo* functions; hook on the engine's "connect" event."""
    dbapi_conn.create_function("sta_geo", 3, sta_geo, deterministic=True)
    dbapi_conn.create_function("sta_geo_relate", 3, sta_geo_relate, deterministic=True)
    dbapi_conn.create_function("sta_geo_distance", 2, sta_geo_distance, deterministic=True)
    dbapi_conn.create_function("sta_geo_length", 1, sta_geo_length, deterministic=True)
