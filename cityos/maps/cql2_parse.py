"""CQL2 parsing (CQL2 解析): cql2-rs output checked against the queryables, as a `cql2.Node`.

cql2-rs parses CQL2 text and JSON into CQL2 JSON; `build` walks that JSON once, resolving each
property to its queryable, checking that both sides of every operator have compatible types,
reading literals (timestamps to UTC, geometries to CRS84 through filter-crs) and deciding
conditions on literals alone. Parser errors are rewritten to point at the offending token.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import cql2 as cql2_rs
import shapely
from shapely.geometry import shape as geojson_shape

from cityos.core.errors import Invalid
from cityos.maps import crs
from cityos.maps.cql2 import (
    COMPARE_OPS,
    TEMPORAL,
    And,
    Arith,
    Between,
    CaseI,
    Compare,
    Const,
    Expr,
    FilterError,
    In,
    IsNull,
    Like,
    Lit,
    Node,
    Not,
    Or,
    Period,
    Prop,
    Queryable,
    Row,
    Spatial,
    SpatialOp,
    Temporal,
    TimeBound,
    ToCanonical,
    evaluate,
    shapely_test,
)

_FAMILY = {"integer": "number"}  # types that compare with each other share a family
_ORDERED = {"string", "number", "date", "datetime"}
_SWAP: dict[SpatialOp, SpatialOp] = {"within": "contains", "contains": "within"}
_SPATIAL_OPS = ("intersects", "within", "contains", "disjoint", "touches", "crosses", "overlaps", "equals")
_UNSUPPORTED = {
    "accenti": "ACCENTI (accent-insensitive comparison) is not supported",
    "div": "integer division 'div' is not supported; use '/'",
    "%": "'%' (modulo) is not supported", "^": "'^' (power) is not supported",
}
_KNOWN_OPS = {"and", "or", "not", "between", "like", "in", "isnull", "t_disjoint", "casei",
              *(f"s_{op}" for op in _SPATIAL_OPS)}
_MAX_DEPTH = 64  # cql2-rs recurses on the native stack: ~2,000 nested parentheses crash the process


def build(text: str | Mapping[str, Any], queryables: Mapping[str, Queryable], *, lang: str,
          filter_crs: str | None, to_canonical: ToCanonical | None) -> Node:
    """The checked tree of a CQL2 text or JSON filter (see `cql2.parse`)."""
    raw = _parse_raw(text, lang)
    source = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    transform = None if filter_crs is None else _checked_transform(filter_crs, to_canonical)
    return _Builder(source, queryables, transform).condition(raw)


def _parse_raw(text: str | Mapping[str, Any], lang: str) -> Any:
    """cql2-rs: text or JSON to CQL2 JSON, its errors turned into FilterError at the token."""
    try:
        if lang == "cql2-json":
            doc = text if isinstance(text, str) else json.dumps(text)
            return cql2_rs.parse_json(doc).to_json()
        if not isinstance(text, str):
            raise FilterError("a cql2-text filter must be a string")
        _check_nesting(text)
        return cql2_rs.parse_text(text).to_json()
    except cql2_rs.ParseError as exc:
        raise _syntax_error(text if isinstance(text, str) else "", str(exc)) from None
    except FilterError:
        raise
    except Exception as exc:  # the parser raises a bare Exception for some literals (POINT EMPTY)
        raise FilterError(f"malformed filter: {exc} / 过滤条件格式错误") from None


_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_UNARY_RUN = re.compile(rf"(?:(?:\bNOT\b|-)\s*){{{_MAX_DEPTH},}}", re.IGNORECASE)


def _check_nesting(text: str) -> None:
    bare = _QUOTED.sub("''", text)
    depth = deepest = 0
    for ch in bare:
        depth += (ch == "(") - (ch == ")")
        deepest = max(deepest, depth)
    if deepest > _MAX_DEPTH or _UNARY_RUN.search(bare):
        raise FilterError(f"filter nested more than {_MAX_DEPTH} levels deep / 过滤条件嵌套过深")


_PEST_AT = re.compile(r"-->\s*(\d+):(\d+)")
_JSON_AT = re.compile(r"line (\d+) column (\d+)")
_PEST_EXPECTED = re.compile(r"=\s*expected (.+)$", re.MULTILINE)
_EXPECTED_WORDS = {
    "EOI": "end of filter", "And": "AND", "Or": "OR", "NotFlag": "NOT", "UnaryNot": "NOT",
    "Identifier": "a property name", "SingleQuotedString": "a string", "DECIMAL": "a number",
    "Double": "a number", "True": "TRUE", "False": "FALSE", "GEOMETRY": "a geometry",
    "ExpressionInParentheses": "'('", "Expr": "a condition", "BetweenOperand": "a value",
    "Array": "a list", "Negative": "a number",
}
_OPERATOR_WORDS = {"Add", "Subtract", "Multiply", "Divide", "Modulo", "Power", "Eq", "Gt", "GtEq",
                   "Lt", "LtEq", "NotEq", "IsNullPostfix"}
_TOKEN = re.compile(r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|\w+|[<>!=]+|\S")


def _syntax_error(text: str, message: str) -> FilterError:
    """'unexpected token 'AN' at column 8; expected AND, OR, ...' from a cql2-rs error."""
    found = _PEST_AT.search(message) or _JSON_AT.search(message)
    if not found:
        return FilterError(f"malformed filter: {message.strip().splitlines()[0]} / 过滤条件语法错误")
    line, column = int(found.group(1)), int(found.group(2))
    lines = text.split("\n")
    rest = lines[line - 1][column - 1:] if 0 < line <= len(lines) else ""
    token_match = _TOKEN.match(rest.lstrip())
    token = token_match.group(0) if token_match else None
    where = f"line {line}, column {column}" if len(lines) > 1 else f"column {column}"
    if token is None:
        what = "unexpected end of filter"
    elif token[0] in "'\"" and (len(token) == 1 or token[-1] != token[0]):
        what = f"unterminated string {token[:20]!r}"
    else:
        what = f"unexpected token {token!r}"
    reason = f"{what} at {where}"
    if expected := _PEST_EXPECTED.search(message):
        words: list[str] = []
        for name in re.split(r",\s*(?:or\s+)?|\s+or\s+", expected.group(1).strip()):
            word = "an operator" if name in _OPERATOR_WORDS else _EXPECTED_WORDS.get(name)
            if word and word not in words:
                words.append(word)
        if words:
            reason += "; expected " + (", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1
                                       else words[0])
    return FilterError(f"{reason} / 第 {line} 行第 {column} 列语法错误", line=line, column=column,
                       token=token)


def _checked_transform(filter_crs: str, to_canonical: ToCanonical | None
                       ) -> Callable[[shapely.Geometry], shapely.Geometry] | None:
    """filter-crs -> CRS84 for each geometry literal; None when the literals are CRS84 already."""
    fn = to_canonical or _crs_to_canonical
    if to_canonical is None:
        try:
            if crs.parse(filter_crs).key == crs.CANONICAL:
                return None
        except Invalid as exc:
            raise FilterError(exc.errors[0].reason, field_name="filter-crs") from None

    def transform(geom: shapely.Geometry) -> shapely.Geometry:
        try:
            return fn(geom, filter_crs)
        except Exception as exc:
            raise FilterError(f"cannot transform a geometry from {filter_crs}: {exc}",
                              field_name="filter-crs") from None

    return transform


def _crs_to_canonical(geom: shapely.Geometry, filter_crs: str) -> shapely.Geometry:
    """Literal in filter_crs's own axis order -> CRS84 lon/lat."""
    source = crs.parse(filter_crs)
    if source.lat_first:
        geom = shapely.transform(geom, lambda xy: xy[:, ::-1])
    return crs.transform_geometry(geom, source, crs.CANONICAL)


class _Builder:
    """CQL2 JSON (from cql2-rs) -> checked Node."""

    def __init__(self, text: str, queryables: Mapping[str, Queryable],
                 transform: Callable[[shapely.Geometry], shapely.Geometry] | None) -> None:
        self.text, self.queryables, self.transform = text, queryables, transform
        self.crs84 = transform is None  # literals are lon/lat: a BBOX may cross the antimeridian

    # conditions

    def condition(self, j: Any) -> Node:
        if isinstance(j, bool):
            return Const(j)
        if isinstance(j, dict) and "property" in j:
            e = self.expr(j)
            if _type(e) == "boolean":
                return Compare("=", e, Lit(True, "boolean"))
            raise FilterError(f"{_describe(e)} is not a condition; compare it with something")
        if not (isinstance(j, dict) and isinstance(j.get("op"), str)):
            raise FilterError(f"{_show(j)} is not a condition / 不是条件表达式")
        op, args = j["op"].lower(), list(j.get("args") or [])
        if op in ("and", "or") and len(args) >= 2:
            parts = tuple(self.condition(a) for a in args)
            return And(parts) if op == "and" else Or(parts)
        if op == "not" and len(args) == 1:
            inner = self.condition(args[0])
            return Const(None if inner.value is None else not inner.value) \
                if isinstance(inner, Const) else Not(inner)
        if op in COMPARE_OPS and len(args) == 2:
            lhs, rhs = self._unify(self.expr(args[0]), self.expr(args[1]), op)
            return _fold(Compare(op, lhs, rhs))
        if op == "between" and len(args) == 3:
            value = self.expr(args[0])
            value, low = self._unify(value, self.expr(args[1]), "BETWEEN")
            value, high = self._unify(value, self.expr(args[2]), "BETWEEN")
            return _fold(Between(value, low, high))
        if op == "like" and len(args) == 2:
            return self._like(args[0], args[1])
        if op == "in" and len(args) == 2 and isinstance(args[1], list) and args[1]:
            value = self.expr(args[0])
            items = tuple(self._unify(value, self.expr(a), "IN")[1] for a in args[1])
            return _fold(In(value, items))
        if op == "isnull" and len(args) == 1:
            e = self.expr(args[0], geometry_ok=True)
            if isinstance(e, Prop) and e.q.type == "geometry":
                raise FilterError("IS NULL on the geometry is not supported")
            return _fold(IsNull(e))
        if op.startswith("s_") and op[2:] in _SPATIAL_OPS and len(args) == 2:
            return self._spatial(op[2:], args[0], args[1])
        if (op in TEMPORAL or op == "t_disjoint") and len(args) == 2:
            return self._temporal(op, args[0], args[1])
        raise FilterError(self._unsupported(op, len(args)))

    def _unsupported(self, op: str, n_args: int) -> str:
        if op in _UNSUPPORTED:
            return _UNSUPPORTED[op]
        if op.startswith("a_"):
            return f"array function {op.upper()} is not supported"
        if op in _KNOWN_OPS or op in COMPARE_OPS or op in TEMPORAL:
            return f"{op.upper()} with {n_args} argument(s) is not a valid condition"
        return f"unknown function {op!r} / 不支持的函数"

    def _like(self, value_j: Any, pattern_j: Any) -> Node:
        value = self.expr(value_j)
        if _type(value) != "string":
            raise FilterError(f"LIKE needs a string; {_describe(value)} is not one")
        casei = isinstance(pattern_j, dict) and str(pattern_j.get("op", "")).lower() == "casei"
        pattern = pattern_j["args"][0] if casei and len(pattern_j.get("args") or []) == 1 else pattern_j
        if not isinstance(pattern, str):
            raise FilterError(f"the LIKE pattern must be a string literal, not {_show(pattern)}")
        return _fold(Like(value, pattern, casei))

    def _spatial(self, op: SpatialOp, a: Any, b: Any) -> Node:
        lhs, rhs = self._spatial_arg(a), self._spatial_arg(b)
        if isinstance(lhs, Prop) and isinstance(rhs, Prop):
            raise FilterError(f"S_{op.upper()} needs a geometry literal on one side")
        if isinstance(lhs, Prop):
            return Spatial(op, rhs)
        if isinstance(rhs, Prop):
            return Spatial(_SWAP.get(op, op), lhs)
        return Const(bool(getattr(shapely, op)(lhs, rhs)))

    def _spatial_arg(self, j: Any) -> Prop | shapely.Geometry:
        if isinstance(j, dict) and ("bbox" in j or "coordinates" in j or "geometries" in j):
            return self._geometry(j)
        e = self.expr(j, geometry_ok=True)
        if isinstance(e, Prop) and e.q.type == "geometry":
            return e
        raise FilterError(f"spatial functions compare geometries; {_describe(e)} is not one")

    def _geometry(self, j: dict[str, Any]) -> shapely.Geometry:
        try:
            if "bbox" in j:
                geom = self._bbox([float(v) for v in j["bbox"]])
            else:
                geom = shapely.force_2d(geojson_shape(j))
        except FilterError:
            raise
        except Exception as exc:
            raise FilterError(f"malformed geometry literal: {exc}") from None
        if self.transform is not None:
            geom = self.transform(geom)
        if geom.is_empty:
            raise FilterError("empty geometry literal")
        if not shapely.is_valid(geom):
            raise FilterError(f"invalid geometry literal: {shapely.is_valid_reason(geom)}")
        minx, miny, maxx, maxy = geom.bounds
        if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
            raise FilterError(
                "geometry literal outside CRS84 (lon -180..180, lat -90..90): coordinates are "
                "longitude first unless filter-crs says otherwise / 坐标超出经纬度范围,经度在前")
        return geom

    def _bbox(self, b: list[float]) -> shapely.Geometry:
        if len(b) not in (4, 6):
            raise FilterError("BBOX needs 4 (or 6) numbers")
        minx, miny, maxx, maxy = (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
        if miny > maxy or (minx > maxx and not self.crs84):
            raise FilterError("BBOX corners are the wrong way round (minx, miny, maxx, maxy)")
        if minx > maxx:  # CRS84 box across the antimeridian
            return shapely.MultiPolygon([shapely.box(minx, miny, 180, maxy),
                                         shapely.box(-180, miny, maxx, maxy)])
        return shapely.box(minx, miny, maxx, maxy)

    def _temporal(self, op: str, a: Any, b: Any) -> Node:
        lhs, rhs = self._period(a), self._period(b)
        ends = [e for p in (lhs, rhs) for e in (p.start, p.end) if e is not None]
        if any(_type(e) == "datetime" for e in ends):  # compare as timestamps
            for e in ends:
                if _type(e) == "date" and not isinstance(e, Lit):
                    raise FilterError(f"{op.upper()} mixes {_describe(e)} with timestamps")
            lhs, rhs = _as_datetimes(lhs), _as_datetimes(rhs)
        if op == "t_disjoint":
            return _fold(Not(Temporal("t_intersects", lhs, rhs)))
        return _fold(Temporal(op, lhs, rhs))

    def _period(self, j: Any) -> Period:
        if isinstance(j, dict) and "interval" in j:
            pair = j["interval"]
            if not (isinstance(pair, list) and len(pair) == 2):
                raise FilterError("INTERVAL needs two ends")
            start, end = (self._instant(x) for x in pair)
            if isinstance(start, Lit) and isinstance(end, Lit) and start.type == end.type \
                    and start.value > end.value:
                raise FilterError("INTERVAL ends before it starts")
            return Period(start, end)
        e = self.expr(j)
        if isinstance(e, Prop) and e.q.is_time:
            return Period(TimeBound(False), TimeBound(True))
        if _type(e) not in ("date", "datetime"):
            raise FilterError(f"temporal functions compare times; {_describe(e)} is not one")
        return Period(e, e)

    def _instant(self, x: Any) -> Expr | None:
        if x == "..":
            return None
        e = self._literal_time(x, "date" if len(x) == 10 else "timestamp") if isinstance(x, str) \
            else self.expr(x)
        if _type(e) not in ("date", "datetime") or (isinstance(e, Prop) and e.q.is_time):
            raise FilterError(f"an INTERVAL end must be a date, a timestamp or '..', not {_describe(e)}")
        return e

    # expressions

    def expr(self, j: Any, *, geometry_ok: bool = False) -> Expr:
        if isinstance(j, bool):
            return Lit(j, "boolean")
        if isinstance(j, int | float):
            if not math.isfinite(j):
                raise FilterError("number out of range")
            return Lit(int(j) if float(j).is_integer() and abs(j) < 2**53 else float(j), "number")
        if isinstance(j, str):
            return Lit(j, "string")
        if isinstance(j, dict) and "property" in j:
            return self._prop(str(j["property"]), geometry_ok)
        if isinstance(j, dict) and "timestamp" in j:
            return self._literal_time(j["timestamp"], "timestamp")
        if isinstance(j, dict) and "date" in j:
            return self._literal_time(j["date"], "date")
        if isinstance(j, dict) and isinstance(j.get("op"), str):
            op, args = j["op"].lower(), list(j.get("args") or [])
            if op == "casei" and len(args) == 1:
                arg = self.expr(args[0])
                if _type(arg) != "string":
                    raise FilterError(f"CASEI needs a string; {_describe(arg)} is not one")
                return CaseI(arg)
            if op in ("+", "-", "*", "/") and len(args) == 2:
                lhs, rhs = self.expr(args[0]), self.expr(args[1])
                for side in (lhs, rhs):
                    if _type(side) != "number":
                        raise FilterError(f"'{op}' needs numbers; {_describe(side)} is not one")
                return Arith(op, lhs, rhs)
            raise FilterError(self._unsupported(op, len(args)))
        if j is None:
            raise FilterError("NULL is not a value to compare with; use IS NULL")
        if isinstance(j, dict) and ("bbox" in j or "coordinates" in j or "geometries" in j):
            raise FilterError("a geometry can only be used in a spatial function (S_INTERSECTS, ...)")
        if isinstance(j, dict) and "interval" in j:
            raise FilterError("an INTERVAL can only be used in a temporal function (T_INTERSECTS, ...)")
        raise FilterError(f"{_show(j)} is not a value")

    def _prop(self, name: str, geometry_ok: bool) -> Prop:
        q = self.queryables.get(name)
        if q is None:
            found = re.search(r'(?<![\w"])' + re.escape(name) + r'(?!\w)|"' + re.escape(name) + '"',
                              self.text)
            at = f" at column {found.start() + 1}" if found and "\n" not in self.text else ""
            known = ", ".join(sorted(self.queryables)) or "none"
            raise FilterError(f"unknown queryable {name!r}{at}; known: {known} / 未知的可查询属性",
                              column=found.start() + 1 if found else None, token=name)
        if q.type == "geometry" and not geometry_ok:
            raise FilterError(f"the geometry {name!r} can only be used in a spatial function")
        return Prop(q)

    def _literal_time(self, s: Any, kind: str) -> Lit:
        try:
            if kind == "date":
                return Lit(dt.date.fromisoformat(str(s)), "date")
            value = dt.datetime.fromisoformat(str(s))
        except ValueError:
            raise FilterError(f"invalid {kind.upper()} {str(s)[:40]!r}") from None
        value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return Lit(value, "datetime")

    def _unify(self, a: Expr, b: Expr, op: str) -> tuple[Expr, Expr]:
        """Both sides of a comparison in one type family; a DATE literal meets a timestamp."""
        ta, tb = _type(a), _type(b)
        if {ta, tb} == {"date", "datetime"}:
            a, b = (_midnight(a) if ta == "date" else a), (_midnight(b) if tb == "date" else b)
            ta, tb = _type(a), _type(b)
        if ta != tb:
            raise FilterError(f"cannot compare {_describe(a)} with {_describe(b)} / 类型不匹配")
        if op not in ("=", "<>", "IN") and ta not in _ORDERED:
            raise FilterError(f"'{op}' needs values with an order; {_describe(a)} has none")
        return a, b


def _type(e: Expr) -> str:
    if isinstance(e, Prop):
        return "datetime" if e.q.is_time else _FAMILY.get(e.q.type, e.q.type)
    if isinstance(e, Lit):
        return e.type
    if isinstance(e, TimeBound):
        return "datetime"
    return "string" if isinstance(e, CaseI) else "number"


def _describe(e: Expr) -> str:
    if isinstance(e, Prop):
        return f"{'time' if e.q.is_time else e.q.type} property {e.q.name!r}"
    if isinstance(e, Lit):
        shown = e.value.isoformat() if isinstance(e.value, dt.date) else e.value
        return f"{e.type} {shown!r}"
    return {TimeBound: "the feature time", CaseI: "CASEI(...)"}.get(type(e), "an arithmetic expression")


def _show(j: Any) -> str:
    text = json.dumps(j, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _midnight(e: Expr) -> Expr:
    if isinstance(e, Lit) and e.type == "date":
        return Lit(dt.datetime.combine(e.value, dt.time(), dt.UTC), "datetime")
    raise FilterError(f"cannot compare {_describe(e)} with a timestamp")


def _as_datetimes(p: Period) -> Period:
    """DATE literals as the whole UTC day: midnight as a start, the last microsecond as an end."""
    def convert(e: Expr | None, *, end: bool) -> Expr | None:
        if not (isinstance(e, Lit) and e.type == "date"):
            return e
        at = dt.time.max if end else dt.time()
        return Lit(dt.datetime.combine(e.value, at, dt.UTC), "datetime")

    return Period(convert(p.start, end=False), convert(p.end, end=True))


def _uses_data(node: Node | Expr | Period | None) -> bool:
    if node is None or isinstance(node, Lit | Const):
        return False
    if isinstance(node, Prop | TimeBound | Spatial):
        return True
    return any(_uses_data(v) for v in _children(node))


def _children(node: Any) -> list[Any]:
    out: list[Any] = []
    for value in vars(node).values():
        out.extend(value if isinstance(value, tuple) else [value])
    return [v for v in out if isinstance(v, Prop | Lit | TimeBound | CaseI | Arith | Period | Compare
                                         | Between | Like | In | IsNull | Not | And | Or | Const
                                         | Spatial | Temporal)]


def _fold(node: Node) -> Node:
    """A condition on literals alone is decided now (`1 = 1`, `DATE('2020-01-01') < ...`)."""
    return node if _uses_data(node) else Const(evaluate(node, Row(None, {}, None, None), shapely_test))
