"""CQL2 to SQL (CQL2 转 SQL): the checked tree compiled over a `cql2.SqlTarget`.

Literals are bound parameters; property names reach SQL only through the target. Each condition
compiles to an upper and a lower bound (the superset rule in `cql2`), LIKE to GLOB on SQLite so
that it stays case-sensitive, and the temporal functions to end-point comparisons in which the
feature's NULL start or end counts as open.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import shapely
from sqlalchemy import Boolean, Date, DateTime, Float, and_, case, false, func, literal, not_, null, or_, true
from sqlalchemy import type_coerce as _coerce
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType

from cityos.maps.cql2 import (
    COMPARE_OPS,
    NEG,
    POS,
    TEMPORAL,
    And,
    Between,
    CaseI,
    Compare,
    Const,
    Expr,
    In,
    IsNull,
    Like,
    Lit,
    Node,
    Not,
    OpenEnd,
    Or,
    PostFilter,
    Prop,
    Spatial,
    SqlTarget,
    Temporal,
    TimeBound,
    compare3,
    has_feature_time,
    like_translate,
)


class _CqlLike(ColumnElement[bool]):
    """CQL2 LIKE, case-sensitive everywhere: GLOB on SQLite (whose LIKE ignores ASCII case)."""

    inherit_cache = False
    type = Boolean()

    def __init__(self, value: ColumnElement[Any], pattern: str, casei: bool) -> None:
        self.value, self.pattern, self.casei = value, pattern, casei


def _render_like(element: _CqlLike, compiler: SQLCompiler, *, glob: bool, **kw: Any) -> str:
    if glob:
        pattern = like_translate(element.pattern, "*", "?", lambda c: f"[{c}]" if c in "*?[" else c)
    else:
        pattern = like_translate(element.pattern, "%", "_", lambda c: "\\" + c if c in "%_\\" else c)
    param: ColumnElement[Any] = literal(pattern)
    if element.casei:
        param = func.lower(param)
    clause = element.value.op("GLOB")(param) if glob else element.value.like(param, escape="\\")
    return f"({compiler.process(clause, **kw)})"


@compiles(_CqlLike)
def _like_default(element: _CqlLike, compiler: SQLCompiler, **kw: Any) -> str:
    return _render_like(element, compiler, glob=False, **kw)


@compiles(_CqlLike, "sqlite")
def _like_sqlite(element: _CqlLike, compiler: SQLCompiler, **kw: Any) -> str:
    return _render_like(element, compiler, glob=True, **kw)


class _Bounds(NamedTuple):
    """SQL true whenever the exact condition is (upper), true only when it is (lower)."""

    upper: ColumnElement[Any]
    lower: ColumnElement[Any]
    exact: bool


def compile_filter(node: Node, target: SqlTarget) -> tuple[ColumnElement[bool], PostFilter | None]:
    """`cql2.to_sql`: (SQL, None) when the SQL is exact, else (superset SQL, post-filter)."""
    compiler = _SqlCompiler(target)
    bounds = compiler.condition(node)
    return bounds.upper, (None if bounds.exact else PostFilter(node, compiler.tests))


class _SqlCompiler:
    def __init__(self, target: SqlTarget) -> None:
        self.target = target
        self.tests: dict[int, Callable[[shapely.Geometry], bool]] = {}
        self._time: tuple[ColumnElement[Any], ColumnElement[Any]] | None = None

    def time(self) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        if self._time is None:
            self._time = self.target.time()
        return self._time

    def condition(self, node: Node, positive: bool = True) -> _Bounds:
        """Upper and lower bound of node; positive: under an even number of NOTs."""
        if isinstance(node, Not):
            inner = self.condition(node.arg, not positive)
            return _Bounds(not_(inner.lower), not_(inner.upper), inner.exact)
        if isinstance(node, And | Or):
            parts = [self.condition(a, positive) for a in node.args]
            join = and_ if isinstance(node, And) else or_
            return _Bounds(join(*(p.upper for p in parts)), join(*(p.lower for p in parts)),
                           all(p.exact for p in parts))
        if isinstance(node, Spatial):
            clause, exact_test = self.target.spatial(node.op, node.geometry)
            if exact_test is None:
                return _Bounds(clause, clause, True)
            self.tests[id(node)] = exact_test
            return _Bounds(clause, false(), False)
        clause = self.exact(node, positive)
        return _Bounds(clause, clause, True)

    def exact(self, node: Node, positive: bool) -> ColumnElement[Any]:
        if isinstance(node, Const):
            return null() if node.value is None else (true() if node.value else false())
        if isinstance(node, Compare):
            lhs, rhs = self.pair(node.lhs, node.rhs)
            return COMPARE_OPS[node.op](lhs, rhs)  # type: ignore[no-any-return]
        if isinstance(node, Between):
            value = self.expr(node.value)
            return value.between(self.expr(node.low, value), self.expr(node.high, value))
        if isinstance(node, Like):
            return _CqlLike(self.expr(node.value), node.pattern, node.casei)
        if isinstance(node, In):
            value = self.expr(node.value)
            if all(isinstance(item, Lit) for item in node.items):
                return value.in_([self.expr(item, value) for item in node.items])
            return or_(*(value == self.expr(item, value) for item in node.items))
        if isinstance(node, IsNull):
            if isinstance(node.value, Prop) and node.value.q.is_time:
                start, end = self.time()
                return and_(start.is_(None), end.is_(None))
            return self.expr(node.value).is_(None)
        if isinstance(node, Temporal):
            return self.temporal(node, positive)
        raise TypeError(f"not a condition: {node!r}")  # Not/And/Or/Spatial go through condition()

    def pair(self, a: Expr, b: Expr) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        """Both sides; a literal takes the other side's SQL type (for dates and times)."""
        if isinstance(a, Lit):
            right = self.expr(b)
            return self.expr(a, right), right
        left = self.expr(a)
        return left, self.expr(b, left)

    def expr(self, e: Expr, like: ColumnElement[Any] | None = None) -> ColumnElement[Any]:
        if isinstance(e, Lit):
            return _bind(e, like)
        if isinstance(e, Prop):
            return self.time()[0] if e.q.is_time else self.target.prop(e.q.name, e.q.type)
        if isinstance(e, TimeBound):
            return self.time()[int(e.end)]
        if isinstance(e, CaseI):
            return func.lower(self.expr(e.arg))
        lhs, rhs = _coerce(self.expr(e.lhs), Float), _coerce(self.expr(e.rhs), Float)
        if e.op == "/":  # true division (Float), NULL instead of PostgreSQL's division-by-zero error
            return _coerce(lhs / _coerce(func.nullif(rhs, 0), Float), Float)
        return {"+": operator.add, "-": operator.sub, "*": operator.mul}[e.op](lhs, rhs)  # type: ignore[no-any-return]

    def temporal(self, node: Temporal, positive: bool) -> ColumnElement[Any]:
        ends = {"s1": node.lhs.start, "e1": node.lhs.end, "s2": node.rhs.start, "e2": node.rhs.end}
        clause = and_(*(self.compare_ends(op, ends[a], a[0], ends[b], b[0])
                        for a, op, b in TEMPORAL[node.op]))
        if not has_feature_time(node):
            return clause
        # A feature without time makes the predicate unknown, as a NULL property would. Where no
        # NOT is above, unknown and false select the same rows (Kleene logic is monotone), so the
        # plain AND form, which the (layer_id, t_start, t_end) index can serve, is enough.
        start, end = self.time()
        if positive:
            return and_(or_(start.is_not(None), end.is_not(None)), clause)
        return case((and_(start.is_(None), end.is_(None)), null()), else_=clause)

    def end_cases(self, e: Expr | None, side: str) -> list[tuple[ColumnElement[Any] | None, Any, bool]]:
        """[(condition, end, may be NULL)]: an end is SQL, a Lit or an open end (NEG/POS)."""
        open_end = NEG if side == "s" else POS
        if e is None:
            return [(None, open_end, False)]
        if isinstance(e, TimeBound):  # the feature's NULL start/end is open
            column = self.time()[int(e.end)]
            return [(column.is_not(None), column, False), (column.is_(None), open_end, False)]
        return [(None, e, False) if isinstance(e, Lit) else (None, self.expr(e), True)]

    def compare_ends(self, op: str, a: Expr | None, side_a: str, b: Expr | None, side_b: str
                     ) -> ColumnElement[Any]:
        terms = []
        for cond_a, end_a, null_a in self.end_cases(a, side_a):
            for cond_b, end_b, null_b in self.end_cases(b, side_b):
                conds = [c for c in (cond_a, cond_b) if c is not None]
                value = self.compare_end_values(op, end_a, end_b, null_a or null_b)
                terms.append(and_(*conds, value))
        return terms[0] if len(terms) == 1 else or_(*terms)

    def compare_end_values(self, op: str, a: Any, b: Any, may_be_null: bool) -> ColumnElement[Any]:
        if isinstance(a, OpenEnd | Lit) and isinstance(b, OpenEnd | Lit):
            known = compare3(op, a.value if isinstance(a, Lit) else a, b.value if isinstance(b, Lit) else b)
            return true() if known else false()
        if isinstance(a, OpenEnd) or isinstance(b, OpenEnd):
            # SQL against an open end: decided by the ranks, but unknown when the SQL is NULL
            by_rank = COMPARE_OPS[op](getattr(a, "rank", 0), getattr(b, "rank", 0))
            decided: ColumnElement[Any] = true() if by_rank else false()
            column = b if isinstance(a, OpenEnd) else a
            return case((column.is_(None), null()), else_=decided) if may_be_null else decided
        left = _bind(a, b) if isinstance(a, Lit) else a
        right = _bind(b, left) if isinstance(b, Lit) else b
        return COMPARE_OPS[op](left, right)  # type: ignore[no-any-return]


def _bind(e: Lit, like: ColumnElement[Any] | None) -> ColumnElement[Any]:
    """A literal as a bound parameter; dates and times bind through the other side's type."""
    if e.type in ("date", "datetime"):
        if like is not None and not isinstance(like.type, NullType):
            return literal(e.value, type_=like.type)
        return literal(e.value, type_=Date() if e.type == "date" else DateTime(timezone=True))
    return literal(e.value)
