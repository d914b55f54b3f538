"""CQL2 filters (CQL2 过滤条件) for OGC API - Features Part 3: parse, check, compile to SQL.

CQL2 text and CQL2 JSON are parsed by the ``cql2`` package (developmentseed/cql2-rs, which
follows OGC 21-065r2 and its JSON schema). Its output, CQL2 JSON, is checked here against the
layer's queryables and turned into a small typed tree (`Node`); `to_sql` compiles that tree for
the storage adapter (`SqlTarget`) with every literal bound as a parameter. pygeofilter 0.4 was
tried first, but its CQL2 text grammar still has the pre-standard syntax (``a T_INTERSECTS b``
instead of ``T_INTERSECTS(a, b)``, no ``INTERVAL('..', ...)``, no ``NOT (a AND b)``, no ``''``
escape, ``.`` as LIKE's single-character wildcard).

Conformance classes of OGC 21-065r2 covered: CQL2 Text, CQL2 JSON, Basic CQL2, Advanced
Comparison Operators, Case-insensitive Comparison, Property-Property Comparisons, Basic Spatial
Functions, Basic Spatial Functions with additional Spatial Literals, Spatial Functions,
Temporal Functions, and Arithmetic Expressions for ``+ - * /`` (not ``%``, ``div``, ``^``).
Not covered: Accent-insensitive Comparison, Array Functions, Functions (custom functions).

What the standard leaves to the implementation:

- NULL follows SQL's three-valued logic: a missing property is NULL, a comparison with NULL is
  unknown and so is its negation; ``NOT height > 3`` does not match a feature without height.
- The feature's own time (the queryable with ``is_time``) is the interval [t_start, t_end]; an
  instant has t_end = t_start, a NULL end (or start) is open (``..``), both NULL means no time.
  In comparisons (``=``, ``<``, ``BETWEEN``, ``IN``) it stands for t_start.
- A DATE literal against timestamps is the whole UTC day (00:00:00 to 23:59:59.999999) in the
  temporal functions and INTERVAL ends, and midnight UTC in comparisons.
- LIKE is case-sensitive (``%`` any run, ``_`` one character, ``\\`` escapes). CASEI lowers ASCII
  letters on SQLite and all letters on PostgreSQL (the databases' ``lower``).
- The geometry queryable is the feature geometry; literals are CRS84 lon/lat unless
  ``filter-crs`` names another CRS, in whose own axis order they are then read.

The superset rule. A spatial test may be exact in SQL (PostGIS) or only a prefilter that the
adapter completes with a Python test (SQLite: box overlap, then shapely). `to_sql` then returns
SQL that selects a superset of the matching rows plus a `PostFilter` that evaluates the *whole*
filter exactly on each fetched row. For every sub-filter it builds an upper bound (true whenever
the exact filter is true) and a lower bound (true only when it is); an inexact spatial test has
the prefilter as upper bound and FALSE as lower bound, and NOT swaps the two, so
``NOT S_INTERSECTS(...)`` costs a full scan in SQL while ``S_INTERSECTS(...) AND x = 1`` keeps
both the box prefilter and the property test.

This module holds the public face (errors, queryables, the tree, `parse`, `to_sql`) and the
exact evaluation in Python; `cql2_parse` checks parser output against the queryables and
`cql2_sql` compiles the tree to SQL.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

import shapely
from sqlalchemy.sql.elements import ColumnElement

from cityos.core.errors import Invalid

__all__ = [
    "FilterError", "Queryable", "SqlTarget", "PostFilter", "Node", "parse", "to_sql", "matches",
]

QueryableType = Literal["string", "integer", "number", "boolean", "date", "datetime", "geometry"]
SpatialOp = Literal["intersects", "within", "contains", "disjoint", "touches", "crosses", "overlaps",
                    "equals"]
ToCanonical = Callable[[shapely.Geometry, str], shapely.Geometry]


class FilterError(Invalid):
    """A filter that cannot be used: bad syntax, unknown queryable, mismatched types (HTTP 400)."""

    status = 400  # OGC API - Features Part 3 answers a bad filter with 400, not CityOS's 422

    def __init__(self, reason: str, *, field_name: str = "filter", **where: Any) -> None:
        super().__init__(field_name, reason)
        self.status, self.title, self.type_slug = 400, "Invalid filter", "invalid-filter"
        self.extra = {k: v for k, v in where.items() if v is not None}  # line, column, token


@dataclass(frozen=True)
class Queryable:
    """A name a filter may use (可查询属性): a key of `props`, the feature time or its geometry."""

    name: str
    type: QueryableType
    title: str = ""
    is_time: bool = False  # the feature's own time: t_start/t_end, not a key of props


class SqlTarget(Protocol):
    """What the storage adapter gives `to_sql`: SQL expressions over one row of map_features.

    Every literal is bound as ``literal(value, type_=expr.type)`` against the expression it is
    compared with when it is a date or datetime (else with its own Python type), so the
    expressions' SQLAlchemy types must bind Python values into what the expressions yield:
    aware UTC datetimes for "datetime" (e.g. ``UTCDateTime``), `datetime.date` for "date".
    """

    def prop(self, name: str, type: str) -> ColumnElement[Any]:
        """props[name] as SQL of the queryable's type; NULL when missing or of another JSON type.

        type is the queryable's (string, integer, number, boolean, date, datetime). name is
        always a declared queryable, never raw user text, but bind it as a parameter all the
        same. Strings should compare by code point (PostgreSQL: ``COLLATE "C"``) and numbers
        as double precision, so that SQL and the Python post-filter agree.
        """
        ...

    def time(self) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        """(t_start, t_end): NULL end (start) means open, both NULL means the feature has no time."""
        ...

    def spatial(self, op: str, geom: shapely.Geometry) -> tuple[
            ColumnElement[bool], Callable[[shapely.Geometry], bool] | None]:
        """(SQL, exact test) for ``feature_geometry <op> geom``, geom in CRS84.

        op is one of intersects, within, contains, disjoint, touches, crosses, overlaps, equals
        (DE-9IM, as PostGIS and shapely define them). Either the SQL is exact and the test None
        (PostGIS), or the SQL is true for every row whose exact answer is true (a superset, e.g. a
        box-overlap prefilter; for disjoint on SQLite just "has a geometry") and the test gives
        the exact answer for a fetched geometry.
        """
        ...


# --- the tree --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prop:
    """A queryable used in the filter."""

    q: Queryable


@dataclass(frozen=True)
class Lit:
    """A literal: string, number, boolean, date or (UTC) datetime."""

    value: Any
    type: Literal["string", "number", "boolean", "date", "datetime"]


@dataclass(frozen=True)
class TimeBound:
    """t_start (end=False) or t_end of the feature; NULL there means open."""

    end: bool


@dataclass(frozen=True)
class CaseI:
    """CASEI(x): case-insensitive comparison by lowering both sides."""

    arg: Expr


@dataclass(frozen=True)
class Arith:
    """lhs op rhs on numbers; division is true division and x / 0 is NULL."""

    op: Literal["+", "-", "*", "/"]
    lhs: Expr
    rhs: Expr


Expr: TypeAlias = Prop | Lit | TimeBound | CaseI | Arith


@dataclass(frozen=True)
class Period:
    """A temporal operand [start, end]; None is an open end ('..'); an instant has start == end."""

    start: Expr | None
    end: Expr | None


@dataclass(frozen=True)
class Compare:
    op: Literal["=", "<>", "<", "<=", ">", ">="]
    lhs: Expr
    rhs: Expr


@dataclass(frozen=True)
class Between:
    value: Expr
    low: Expr
    high: Expr


@dataclass(frozen=True)
class Like:
    value: Expr
    pattern: str
    casei: bool  # the pattern was CASEI('...')


@dataclass(frozen=True)
class In:
    value: Expr
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class IsNull:
    value: Expr


@dataclass(frozen=True)
class Not:
    arg: Node


@dataclass(frozen=True)
class And:
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Const:
    value: bool | None


@dataclass(frozen=True, eq=False)  # compared by identity: the post-filter keys its tests by node
class Spatial:
    """feature_geometry <op> geometry (the literal already in CRS84)."""

    op: SpatialOp
    geometry: shapely.Geometry


@dataclass(frozen=True)
class Temporal:
    op: str  # t_intersects, t_before, ... (lower case)
    lhs: Period
    rhs: Period


Node: TypeAlias = Compare | Between | Like | In | IsNull | Not | And | Or | Const | Spatial | Temporal

# Each temporal function as a conjunction of end-point comparisons (OGC 21-065r2, after Allen):
# s1/e1 are the start/end of the first argument, s2/e2 of the second; t_disjoint is NOT t_intersects.
TEMPORAL: dict[str, tuple[tuple[str, str, str], ...]] = {
    "t_intersects": (("s1", "<=", "e2"), ("e1", ">=", "s2")),
    "t_before": (("e1", "<", "s2"),),
    "t_after": (("s1", ">", "e2"),),
    "t_meets": (("e1", "=", "s2"),),
    "t_metby": (("s1", "=", "e2"),),
    "t_overlaps": (("s1", "<", "s2"), ("e1", ">", "s2"), ("e1", "<", "e2")),
    "t_overlappedby": (("s2", "<", "s1"), ("e2", ">", "s1"), ("e2", "<", "e1")),
    "t_starts": (("s1", "=", "s2"), ("e1", "<", "e2")),
    "t_startedby": (("s1", "=", "s2"), ("e1", ">", "e2")),
    "t_during": (("s1", ">", "s2"), ("e1", "<", "e2")),
    "t_contains": (("s1", "<", "s2"), ("e1", ">", "e2")),
    "t_finishes": (("s1", ">", "s2"), ("e1", "=", "e2")),
    "t_finishedby": (("s1", "<", "s2"), ("e1", "=", "e2")),
    "t_equals": (("s1", "=", "s2"), ("e1", "=", "e2")),
}
COMPARE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "<>": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge,
}


def parse(text: str | Mapping[str, Any], queryables: Mapping[str, Queryable], *,
          lang: Literal["cql2-text", "cql2-json"] = "cql2-text", filter_crs: str | None = None,
          to_canonical: ToCanonical | None = None) -> Node:
    """Parse and check a CQL2 filter against the queryables; FilterError names what is wrong.

    Geometry literals are in filter_crs (its own axis order) when given, else CRS84; they come
    back in CRS84 through to_canonical(geom, filter_crs), by default `cityos.maps.crs`.
    """
    from cityos.maps.cql2_parse import build

    return build(text, queryables, lang=lang, filter_crs=filter_crs, to_canonical=to_canonical)


def to_sql(node: Node, target: SqlTarget) -> tuple[ColumnElement[bool], PostFilter | None]:
    """(SQL, post-filter): the SQL alone is exact when the post-filter is None; else it selects a
    superset and the post-filter, called as post(geometry, props, t_start, t_end), decides."""
    from cityos.maps.cql2_sql import compile_filter

    return compile_filter(node, target)


# --- evaluation in Python (the post-filter and `matches`) -------------------------------------

class Row(NamedTuple):
    geometry: shapely.Geometry | None
    props: Mapping[str, Any]
    t_start: dt.datetime | None
    t_end: dt.datetime | None


class OpenEnd:
    """An open end of an interval: below (rank -1) or above (rank 1) every instant."""

    def __init__(self, rank: int) -> None:
        self.rank = rank


NEG, POS = OpenEnd(-1), OpenEnd(1)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
SpatialTest = Callable[[Spatial, shapely.Geometry], bool]


def shapely_test(node: Spatial, geometry: shapely.Geometry) -> bool:
    return bool(getattr(shapely, node.op)(geometry, node.geometry))


def _utc(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return value


def _prop_value(q: Queryable, raw: Any) -> Any:
    """props[name] as the queryable's Python type; None (NULL) when missing or of another type."""
    try:
        if q.type == "string":
            return raw if isinstance(raw, str) else None
        if q.type in ("integer", "number"):
            return raw if isinstance(raw, int | float) and not isinstance(raw, bool) else None
        if q.type == "boolean":
            return raw if isinstance(raw, bool) else None
        if q.type == "date" and isinstance(raw, str):
            return dt.date.fromisoformat(raw[:10])
        if q.type == "datetime" and isinstance(raw, str):
            return _utc(dt.datetime.fromisoformat(raw))
    except ValueError:
        return None
    return None


def _value(e: Expr, row: Row) -> Any:
    if isinstance(e, Lit):
        return e.value
    if isinstance(e, Prop):
        return row.t_start if e.q.is_time else _prop_value(e.q, row.props.get(e.q.name))
    if isinstance(e, TimeBound):
        return row.t_end if e.end else row.t_start
    if isinstance(e, CaseI):
        s = _value(e.arg, row)
        return None if s is None else s.translate(_ASCII_LOWER)
    a, b = _value(e.lhs, row), _value(e.rhs, row)
    if a is None or b is None or (e.op == "/" and b == 0):
        return None
    return {"+": operator.add, "-": operator.sub, "*": operator.mul}.get(e.op, operator.truediv)(a, b)


def compare3(op: str, a: Any, b: Any) -> bool | None:
    """Three-valued comparison; open interval ends order below/above every instant."""
    if a is None or b is None:
        return None
    ra, rb = getattr(a, "rank", 0), getattr(b, "rank", 0)
    return bool(COMPARE_OPS[op](ra, rb) if ra or rb else COMPARE_OPS[op](a, b))


def _and3(values: Any) -> bool | None:
    result: bool | None = True
    for v in values:
        if v is False:
            return False
        if v is None:
            result = None
    return result


def _or3(values: Any) -> bool | None:
    result: bool | None = False
    for v in values:
        if v is True:
            return True
        if v is None:
            result = None
    return result


def like_tokens(pattern: str) -> list[tuple[str, str]]:
    """CQL2 LIKE pattern -> [("any"|"one"|"char", c)]: % and _ wildcards, backslash escapes."""
    out, chars = [], iter(pattern)
    for c in chars:
        if c == "\\":
            out.append(("char", next(chars, "\\")))
        else:
            out.append(({"%": "any", "_": "one"}.get(c, "char"), c))
    return out


def like_translate(pattern: str, any_run: str, one: str, char: Callable[[str], str]) -> str:
    """The pattern in another wildcard syntax: SQL LIKE, SQLite GLOB or a regular expression."""
    return "".join(any_run if kind == "any" else one if kind == "one" else char(c)
                   for kind, c in like_tokens(pattern))


def _like_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(like_translate(pattern, ".*", ".", re.escape), re.DOTALL)


def evaluate(node: Node, row: Row, test: SpatialTest) -> bool | None:
    """The filter on one feature, in SQL's three-valued logic (None = unknown)."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Not):
        inner = evaluate(node.arg, row, test)
        return None if inner is None else not inner
    if isinstance(node, And):
        return _and3(evaluate(a, row, test) for a in node.args)
    if isinstance(node, Or):
        return _or3(evaluate(a, row, test) for a in node.args)
    if isinstance(node, Compare):
        return compare3(node.op, _value(node.lhs, row), _value(node.rhs, row))
    if isinstance(node, Between):
        v = _value(node.value, row)
        return _and3((compare3(">=", v, _value(node.low, row)), compare3("<=", v, _value(node.high, row))))
    if isinstance(node, Like):
        v = _value(node.value, row)
        if v is None:
            return None
        pattern = node.pattern.translate(_ASCII_LOWER) if node.casei else node.pattern
        return _like_regex(pattern).fullmatch(v) is not None
    if isinstance(node, In):
        v = _value(node.value, row)
        return _or3(compare3("=", v, _value(item, row)) for item in node.items)
    if isinstance(node, IsNull):
        if isinstance(node.value, Prop) and node.value.q.is_time:
            return row.t_start is None and row.t_end is None
        return _value(node.value, row) is None
    if isinstance(node, Spatial):
        return None if row.geometry is None else bool(test(node, row.geometry))
    return _evaluate_temporal(node, row)


def _evaluate_temporal(node: Temporal, row: Row) -> bool | None:
    if has_feature_time(node) and row.t_start is None and row.t_end is None:
        return None

    def end_value(e: Expr | None, side: str) -> Any:
        v = None if e is None else _value(e, row)
        if v is None and (e is None or isinstance(e, TimeBound)):
            return NEG if side == "s" else POS
        return v

    ends = {"s1": node.lhs.start, "e1": node.lhs.end, "s2": node.rhs.start, "e2": node.rhs.end}
    return _and3(compare3(op, end_value(ends[a], a[0]), end_value(ends[b], b[0]))
                 for a, op, b in TEMPORAL[node.op])


def has_feature_time(node: Temporal) -> bool:
    return any(isinstance(p.start, TimeBound) for p in (node.lhs, node.rhs))


def matches(node: Node, geometry: shapely.Geometry | None, props: Mapping[str, Any],
            t_start: dt.datetime | None = None, t_end: dt.datetime | None = None) -> bool:
    """Does one feature match the filter? (Python only; spatial tests by shapely.)"""
    return evaluate(node, Row(geometry, props, _utc(t_start), _utc(t_end)), shapely_test) is True


class PostFilter:
    """The whole filter evaluated exactly on one fetched row (see the superset rule above)."""

    def __init__(self, node: Node, tests: dict[int, Callable[[shapely.Geometry], bool]]) -> None:
        self.node, self._tests = node, tests

    def _test(self, node: Spatial, geometry: shapely.Geometry) -> bool:
        exact = self._tests.get(id(node))
        return exact(geometry) if exact is not None else shapely_test(node, geometry)

    def __call__(self, geometry: shapely.Geometry | None, props: Mapping[str, Any],
                 t_start: dt.datetime | None, t_end: dt.datetime | None) -> bool:
        """True when the row matches: call with the row's geometry, props, t_start and t_end."""
        return evaluate(self.node, Row(geometry, props, _utc(t_start), _utc(t_end)), self._test) is True
