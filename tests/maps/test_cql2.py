"""CQL2 filters: parsing and errors, and the same ids as brute force on SQLite and PostGIS.

Each database gets a small map_features-like table and a minimal `SqlTarget` written here, the
way the storage adapter implements it: json_extract / props->> with type guards, a box-overlap
prefilter plus shapely on SQLite, exact ST_* functions on PostGIS.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import shapely
import shapely.affinity
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    case,
    cast,
    create_engine,
    func,
    inspect,
    literal,
    null,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.engine import make_url
from sqlalchemy.sql.elements import ColumnElement

from cityos.core.db import UTCDateTime
from cityos.core.errors import Invalid
from cityos.maps import cql2
from cityos.maps.cql2 import FilterError, Queryable
from tests.conftest import IN_CI, PG_URL

UTC = dt.UTC
Q = {q.name: q for q in [
    Queryable("name", "string", "名称"),
    Queryable("kind", "string", "类别"),
    Queryable("height", "integer", "高度"),
    Queryable("area", "number", "面积"),
    Queryable("active", "boolean", "在用"),
    Queryable("built", "date", "建成日期"),
    Queryable("inspected", "datetime", "巡检时间"),
    Queryable("observed", "datetime", "观测时间", is_time=True),
    Queryable("geometry", "geometry", "几何"),
    Queryable("o'neil", "string", "a key with a quote"),
]}


def T(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).astimezone(UTC)


L_SHAPE = "POLYGON((113.6 23.6, 113.9 23.6, 113.9 23.7, 113.7 23.7, 113.7 23.9, 113.6 23.9, 113.6 23.6))"
# id, geometry (WKT), props, t_start, t_end
FEATURES: list[tuple[int, str | None, dict[str, Any], dt.datetime | None, dt.datetime | None]] = [
    (1, "POINT(113.1 23.1)", {"name": "中山路", "kind": "road", "height": 10, "area": 1.5, "active": True,
                              "built": "2020-01-01", "inspected": "2024-05-01T08:00:00+08:00"},
     T("2024-05-01T00:00:00Z"), T("2024-05-01T00:00:00Z")),
    (2, "POINT(113.9 23.9)", {"name": "Main St", "kind": "road", "height": 25, "area": 2.25, "active": False,
                              "built": "2019-06-30", "inspected": "2024-05-02T12:00:00Z"},
     T("2024-04-01T00:00:00Z"), T("2024-04-30T23:59:59Z")),
    (3, "LINESTRING(113.0 23.0, 114.0 24.0)", {"name": "100% pure_x", "kind": "pipe", "height": 5},
     T("2024-06-01T00:00:00Z"), None),
    (4, "POLYGON((113.2 23.2, 113.4 23.2, 113.4 23.4, 113.2 23.4, 113.2 23.2))",
     {"name": "Park \\ Lake", "kind": "park", "area": 10.0, "active": True}, None, None),
    (5, "POLYGON((113.45 23.45, 113.55 23.45, 113.55 23.55, 113.45 23.55, 113.45 23.45))",
     {"name": "O'Brien", "kind": "park", "height": 40, "area": 0.01, "inspected": "2023-01-01T00:00:00Z"},
     None, T("2023-12-31T23:59:59Z")),
    (6, L_SHAPE, {"name": "L-block", "kind": "building", "height": 12, "built": "2021-03-01"},
     T("2024-05-01T00:00:00Z"), T("2024-05-31T00:00:00Z")),
    (7, None, {"name": "no geometry", "kind": "event", "height": 7}, T("2024-05-15T00:00:00Z"),
     T("2024-05-15T00:00:00Z")),
    (8, "POINT(116.4 39.9)", {"name": "Beijing", "kind": "road", "height": 100, "area": 3.0, "active": False,
                              "built": "2000-02-29"}, T("2020-01-01T00:00:00Z"), T("2020-01-01T00:00:00Z")),
    (9, "POINT(113.3 23.3)", {"name": "main st", "kind": "Road", "height": 25, "active": True,
                              "inspected": "2024-05-01T00:00:00.5Z"},
     T("2024-05-01T12:00:00Z"), T("2024-05-01T12:00:00Z")),
    (10, "POINT(113.05 23.95)", {"name": "ÄBC", "kind": "road", "height": 3, "o'neil": "quoted key"},
     T("2024-05-31T23:59:59.999999Z"), T("2024-05-31T23:59:59.999999Z")),
    (11, "POINT(113.15 23.85)", {"name": "star*[1]?", "kind": "sign", "height": "tall", "area": None},
     T("2024-07-01T00:00:00Z"), T("2024-07-02T00:00:00Z")),
    (12, "MULTIPOLYGON(((113.0 23.5, 113.1 23.5, 113.1 23.6, 113.0 23.5)),((113.8 23.0, 113.9 23.0, 113.9 23.1, 113.8 23.0)))",
     {"name": "a_b", "kind": "zone", "height": 0, "area": 2.5}, T("2023-06-01T00:00:00Z"), T("2024-06-01T00:00:00Z")),
    (13, "POLYGON((113.4 23.2, 113.5 23.2, 113.5 23.3, 113.4 23.3, 113.4 23.2))",
     {"name": "a%b", "kind": "park", "height": 30, "area": 1.0}, T("2024-05-01T00:00:00Z"), T("2024-05-01T00:00:00Z")),
]


@dataclass(frozen=True)
class F:
    """A feature as brute force sees it."""

    id: int
    g: shapely.Geometry | None
    p: dict[str, Any]
    s: dt.datetime | None
    e: dt.datetime | None

    def num(self, key: str) -> float | None:
        v = self.p.get(key)
        return v if isinstance(v, int | float) and not isinstance(v, bool) else None

    def str(self, key: str) -> str | None:
        v = self.p.get(key)
        return v if isinstance(v, str) else None

    def span(self) -> tuple[dt.datetime, dt.datetime] | None:
        if self.s is None and self.e is None:
            return None
        return (self.s or dt.datetime.min.replace(tzinfo=UTC), self.e or dt.datetime.max.replace(tzinfo=UTC))


ROWS = [F(i, shapely.from_wkt(w) if w else None, p, s, e) for i, w, p, s, e in FEATURES]
BOX = shapely.box(113.0, 23.0, 113.5, 23.5)
PARK = shapely.box(113.2, 23.2, 113.4, 23.4)
DAY0, DAY1 = T("2024-05-01T00:00:00Z"), T("2024-05-01T23:59:59.999999Z")


def geo(f: F, op: str, other: shapely.Geometry) -> bool:
    return f.g is not None and bool(getattr(shapely, op)(f.g, other))


def tspan(f: F, test: Callable[[dt.datetime, dt.datetime], bool]) -> bool:
    span = f.span()
    return span is not None and test(*span)


def inspected(f: F) -> dt.datetime | None:
    v = f.str("inspected")
    return T(v) if v else None


# Each filter with its brute-force answer; NULLs follow SQL (a NOT over a missing value is unknown).
CASES: list[tuple[str, Callable[[F], bool]]] = [
    ("height = 25", lambda f: f.num("height") == 25),
    ("height <> 25", lambda f: f.num("height") is not None and f.num("height") != 25),
    ("height > 10 AND height <= 40", lambda f: (h := f.num("height")) is not None and 10 < h <= 40),
    ("area >= 2.25", lambda f: (a := f.num("area")) is not None and a >= 2.25),
    ("name = 'O''Brien'", lambda f: f.p["name"] == "O'Brien"),
    ("name < 'M'", lambda f: f.p["name"] < "M"),
    ("name = '中山路'", lambda f: f.p["name"] == "中山路"),
    ("active", lambda f: f.p.get("active") is True),
    ("NOT active", lambda f: f.p.get("active") is False),
    ("active = FALSE OR height > 90", lambda f: f.p.get("active") is False or (f.num("height") or 0) > 90),
    ("height BETWEEN 5 AND 12", lambda f: (h := f.num("height")) is not None and 5 <= h <= 12),
    ("height NOT BETWEEN 5 AND 12", lambda f: (h := f.num("height")) is not None and not 5 <= h <= 12),
    ("name LIKE 'Main%'", lambda f: f.p["name"].startswith("Main")),
    ("name NOT LIKE '%a%'", lambda f: "a" not in f.p["name"]),
    ("name LIKE '100\\%%'", lambda f: f.p["name"].startswith("100%")),
    ("name LIKE '%\\_x'", lambda f: f.p["name"].endswith("_x")),
    ("name LIKE 'a_b'", lambda f: len(f.p["name"]) == 3 and f.p["name"][0] == "a" and f.p["name"][2] == "b"),
    ("name LIKE 'a\\_b'", lambda f: f.p["name"] == "a_b"),
    ("name LIKE '_ain St'", lambda f: f.p["name"] in ("Main St",)),
    ("name LIKE 'Park \\\\%'", lambda f: f.p["name"].startswith("Park \\")),
    ("name LIKE 'star*[1]?'", lambda f: f.p["name"] == "star*[1]?"),
    ("name LIKE '%[1]_'", lambda f: f.p["name"].endswith("[1]?")),
    ("CASEI(name) = CASEI('MAIN ST')", lambda f: f.p["name"].lower() == "main st"),
    ("CASEI(name) LIKE CASEI('main%')", lambda f: f.p["name"].lower().startswith("main")),
    ("kind IN ('road', 'park')", lambda f: f.p["kind"] in ("road", "park")),
    ("kind NOT IN ('road', 'park', 'Road')", lambda f: f.p["kind"] not in ("road", "park", "Road")),
    ("height IN (5, 10, 25)", lambda f: f.num("height") in (5, 10, 25)),
    ("height IS NULL", lambda f: f.num("height") is None),
    ("area IS NOT NULL AND height IS NOT NULL", lambda f: f.num("area") is not None and f.num("height") is not None),
    ("height * 2 > area + 40", lambda f: None not in (f.num("height"), f.num("area"))
     and f.num("height") * 2 > f.num("area") + 40),  # type: ignore[operator]
    ("height / 2 = 12.5", lambda f: f.num("height") == 25),
    ("height / 0 = 1 OR NOT height / 0 = 1", lambda f: False),
    ("height - 1 < 0", lambda f: (h := f.num("height")) is not None and h - 1 < 0),
    ("height > area", lambda f: None not in (f.num("height"), f.num("area")) and f.num("height") > f.num("area")),  # type: ignore[operator]
    ("built < DATE('2020-01-01')", lambda f: f.str("built") is not None and f.p["built"] < "2020-01-01"),
    ("built = DATE('2020-01-01')", lambda f: f.p.get("built") == "2020-01-01"),
    ("inspected = TIMESTAMP('2024-05-01T00:00:00Z')", lambda f: inspected(f) == DAY0),
    ("inspected >= TIMESTAMP('2024-05-01T00:00:00Z')", lambda f: (i := inspected(f)) is not None and i >= DAY0),
    ("inspected > DATE('2024-05-01')", lambda f: (i := inspected(f)) is not None and i > DAY0),
    ("inspected < TIMESTAMP('2024-05-01T08:00:00+08:00')", lambda f: (i := inspected(f)) is not None and i < DAY0),
    ("observed > TIMESTAMP('2024-05-01T00:00:00Z')", lambda f: f.s is not None and f.s > DAY0),
    ("observed IS NULL", lambda f: f.s is None and f.e is None),
    ("T_INTERSECTS(observed, INTERVAL('2024-05-01T00:00:00Z', '2024-05-31T23:59:59Z'))",
     lambda f: tspan(f, lambda s, e: s <= T("2024-05-31T23:59:59Z") and e >= DAY0)),
    ("T_INTERSECTS(observed, INTERVAL('..', '2023-12-31'))",
     lambda f: tspan(f, lambda s, e: s <= T("2023-12-31T23:59:59.999999Z"))),
    ("T_INTERSECTS(observed, INTERVAL('2024-06-15', '..'))", lambda f: tspan(f, lambda s, e: e >= T("2024-06-15T00:00:00Z"))),
    ("T_INTERSECTS(observed, DATE('2024-05-01'))", lambda f: tspan(f, lambda s, e: s <= DAY1 and e >= DAY0)),
    ("T_INTERSECTS(observed, INTERVAL('..', '..'))", lambda f: f.span() is not None),
    ("T_BEFORE(observed, DATE('2024-05-01'))", lambda f: tspan(f, lambda s, e: e < DAY0)),
    ("T_AFTER(observed, TIMESTAMP('2024-05-01T00:00:00Z'))", lambda f: tspan(f, lambda s, e: s > DAY0)),
    ("T_DURING(observed, INTERVAL('2024-04-01', '2024-06-30'))",
     lambda f: tspan(f, lambda s, e: s > T("2024-04-01T00:00:00Z") and e < T("2024-06-30T23:59:59.999999Z"))),
    ("T_CONTAINS(observed, TIMESTAMP('2024-05-10T00:00:00Z'))",
     lambda f: tspan(f, lambda s, e: s < T("2024-05-10T00:00:00Z") < e)),
    ("T_EQUALS(observed, TIMESTAMP('2024-05-01T00:00:00Z'))", lambda f: tspan(f, lambda s, e: s == e == DAY0)),
    ("T_STARTS(observed, INTERVAL('2024-05-01T00:00:00Z', '..'))", lambda f: tspan(f, lambda s, e: s == DAY0 and f.e is not None)),
    ("T_FINISHES(observed, INTERVAL('..', '2023-12-31T23:59:59Z'))", lambda f: False),
    ("T_OVERLAPS(observed, INTERVAL('2024-05-15', '2024-06-30'))",
     lambda f: tspan(f, lambda s, e: s < T("2024-05-15T00:00:00Z") < e < T("2024-06-30T23:59:59.999999Z"))),
    ("NOT T_INTERSECTS(observed, INTERVAL('2024-05-01', '2024-05-01'))",
     lambda f: tspan(f, lambda s, e: not (s <= DAY1 and e >= DAY0))),
    ("T_DISJOINT(observed, INTERVAL('2024-05-01', '..'))", lambda f: tspan(f, lambda s, e: e < DAY0)),
    ("T_INTERSECTS(INTERVAL(built, built), INTERVAL('2019-01-01', '2020-12-31'))",
     lambda f: f.str("built") is not None and "2019-01-01" <= f.p["built"] <= "2020-12-31"),
    ("T_BEFORE(inspected, observed)", lambda f: (i := inspected(f)) is not None and tspan(f, lambda s, e: i < s)),
    ("S_INTERSECTS(geometry, POLYGON((113.15 23.15, 113.45 23.15, 113.45 23.45, 113.15 23.45, 113.15 23.15)))",
     lambda f: geo(f, "intersects", shapely.box(113.15, 23.15, 113.45, 23.45))),
    ("S_INTERSECTS(geometry, POINT(113.85 23.8))", lambda f: geo(f, "intersects", shapely.Point(113.85, 23.8))),
    ("S_WITHIN(geometry, BBOX(113.0, 23.0, 113.5, 23.5))", lambda f: geo(f, "within", BOX)),
    ("S_CONTAINS(geometry, POINT(113.3 23.25))", lambda f: geo(f, "contains", shapely.Point(113.3, 23.25))),
    ("S_DISJOINT(geometry, BBOX(113.0, 23.0, 113.5, 23.5))", lambda f: geo(f, "disjoint", BOX)),
    ("S_TOUCHES(geometry, POLYGON((113.2 23.2, 113.4 23.2, 113.4 23.4, 113.2 23.4, 113.2 23.2)))",
     lambda f: geo(f, "touches", PARK)),
    ("S_CROSSES(geometry, LINESTRING(113.0 23.5, 114.0 23.5))",
     lambda f: geo(f, "crosses", shapely.LineString([(113.0, 23.5), (114.0, 23.5)]))),
    ("S_OVERLAPS(geometry, BBOX(113.3, 23.1, 113.45, 23.3))", lambda f: geo(f, "overlaps", shapely.box(113.3, 23.1, 113.45, 23.3))),
    ("S_EQUALS(geometry, POINT(113.1 23.1))", lambda f: geo(f, "equals", shapely.Point(113.1, 23.1))),
    ("S_INTERSECTS(POINT(113.3 23.3), geometry)", lambda f: geo(f, "intersects", shapely.Point(113.3, 23.3))),
    ("S_WITHIN(BBOX(113.25, 23.25, 113.3, 23.3), geometry)", lambda f: geo(f, "contains", shapely.box(113.25, 23.25, 113.3, 23.3))),
    ("S_INTERSECTS(geometry, MULTIPOINT((113.1 23.1), (116.4 39.9)))",
     lambda f: geo(f, "intersects", shapely.MultiPoint([(113.1, 23.1), (116.4, 39.9)]))),
    ("S_INTERSECTS(geometry, BBOX(170, -10, -170, 10))", lambda f: False),
    ("S_INTERSECTS(geometry, BBOX(113.0, 23.0, 113.5, 23.5)) OR height > 30",
     lambda f: geo(f, "intersects", BOX) or (f.num("height") or 0) > 30),
    ("NOT S_INTERSECTS(geometry, BBOX(113.0, 23.0, 113.5, 23.5))", lambda f: f.g is not None and not geo(f, "intersects", BOX)),
    ("NOT (S_INTERSECTS(geometry, POINT(113.85 23.8)) OR kind = 'road')",
     lambda f: f.g is not None and not geo(f, "intersects", shapely.Point(113.85, 23.8)) and f.p["kind"] != "road"),
    ("kind = 'park' AND NOT S_WITHIN(geometry, BBOX(113.0, 23.0, 113.42, 23.42))",
     lambda f: f.p["kind"] == "park" and f.g is not None and not geo(f, "within", shapely.box(113.0, 23.0, 113.42, 23.42))),
    ("NOT (S_WITHIN(geometry, BBOX(113.0, 23.0, 113.5, 23.5)) AND NOT height < 10)",
     lambda f: (f.g is not None and not geo(f, "within", BOX)) or ((h := f.num("height")) is not None and h < 10)),
    ("S_INTERSECTS(geometry, BBOX(113.0, 23.0, 113.5, 23.5)) AND T_INTERSECTS(observed, INTERVAL('2024-05-01', '..'))",
     lambda f: geo(f, "intersects", BOX) and tspan(f, lambda s, e: e >= DAY0)),
    ("\"o'neil\" = 'quoted key'", lambda f: f.p.get("o'neil") == "quoted key"),
    ("name = 'x''; DROP TABLE map_features; --'", lambda f: False),
    ("TRUE", lambda f: True),
    ("1 = 2", lambda f: False),
    ("S_INTERSECTS(POINT(0 0), POINT(0 0)) AND height = 10", lambda f: f.num("height") == 10),
]


# --- the two databases and their SqlTargets ----------------------------------------------------

def _table(metadata: MetaData, pg: bool) -> Table:
    return Table(
        "map_features", metadata,
        Column("id", Integer, primary_key=True),
        Column("props", JSONB if pg else JSON),
        Column("t_start", UTCDateTime), Column("t_end", UTCDateTime),
        Column("minx", Float), Column("miny", Float), Column("maxx", Float), Column("maxy", Float),
        Column("geom", LargeBinary),  # on PostgreSQL the DDL below makes it geometry(Geometry,4326)
    )


class SqliteTarget:
    """json_extract with json_type guards; box prefilter in SQL, shapely for the exact answer."""

    def __init__(self, table: Table) -> None:
        self.t = table

    def prop(self, name: str, type: str) -> ColumnElement[Any]:
        path = literal('$."' + name + '"')
        value, kind = func.json_extract(self.t.c.props, path), func.json_type(self.t.c.props, path)
        if type == "string":
            return type_coerce(case((kind == "text", value), else_=null()), String)
        if type in ("integer", "number"):
            return type_coerce(case((kind.in_(["integer", "real"]), value), else_=null()), Float)
        if type == "boolean":
            return type_coerce(case((kind.in_(["true", "false"]), value), else_=null()), Boolean)
        if type == "date":
            return type_coerce(case((kind == "text", func.date(value)), else_=null()), Date)
        # the same text UTCDateTime stores: 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
        stamp = type_coerce(func.strftime("%Y-%m-%d %H:%M:%f", value), String).concat("000")
        return type_coerce(case((kind == "text", stamp), else_=null()), UTCDateTime)

    def time(self) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        return self.t.c.t_start, self.t.c.t_end

    def spatial(self, op: str, geom: shapely.Geometry) -> tuple[ColumnElement[bool], Callable[[shapely.Geometry], bool]]:
        c = self.t.c
        minx, miny, maxx, maxy = geom.bounds
        clause = {
            "within": and_(c.minx >= minx, c.maxx <= maxx, c.miny >= miny, c.maxy <= maxy),
            "contains": and_(c.minx <= minx, c.maxx >= maxx, c.miny <= miny, c.maxy >= maxy),
            "disjoint": c.geom.is_not(None),
        }.get(op, and_(c.minx <= maxx, c.maxx >= minx, c.miny <= maxy, c.maxy >= miny))
        shapely.prepare(geom)
        test = getattr(shapely, op)
        return clause, lambda g: bool(test(g, geom))


class PgTarget:
    """props -> key with jsonb_typeof guards and casts; exact PostGIS predicates."""

    def __init__(self, table: Table) -> None:
        self.t = table

    def prop(self, name: str, type: str) -> ColumnElement[Any]:
        node = self.t.c.props[name]
        kind, value = func.jsonb_typeof(node), node.astext
        if type == "string":
            return case((kind == "string", value), else_=null()).collate("C")
        if type in ("integer", "number"):
            return case((kind == "number", cast(value, Float)), else_=null())
        if type == "boolean":
            return case((kind == "boolean", cast(value, Boolean)), else_=null())
        if type == "date":
            return case((kind == "string", cast(value, Date)), else_=null())
        stamp = case((kind == "string", cast(value, TIMESTAMP(timezone=True))), else_=null())
        return type_coerce(stamp, UTCDateTime)

    def time(self) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        return self.t.c.t_start, self.t.c.t_end

    def spatial(self, op: str, geom: shapely.Geometry) -> tuple[ColumnElement[bool], None]:
        literal_geom = func.ST_GeomFromWKB(literal(shapely.to_wkb(geom), LargeBinary), 4326)
        return getattr(func, f"ST_{op.capitalize()}")(self.t.c.geom, literal_geom), None


@dataclass
class Db:
    engine: Engine
    table: Table
    target: Any

    @property
    def pg(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def geometry_sql(self) -> ColumnElement[Any]:
        return func.ST_AsBinary(self.table.c.geom) if self.pg else self.table.c.geom

    def query(self, filter_text: str, **kw: Any) -> tuple[set[int], set[int], cql2.PostFilter | None]:
        """(ids matching, ids the SQL alone selected, post-filter)."""
        node = cql2.parse(filter_text, Q, **kw)
        clause, post = cql2.to_sql(node, self.target)
        c = self.table.c
        stmt = select(c.id, self.geometry_sql().label("wkb"), c.props, c.t_start, c.t_end).where(clause)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        sql_ids = {r.id for r in rows}
        if post is None:
            return sql_ids, sql_ids, post
        kept = {r.id for r in rows
                if post(shapely.from_wkb(r.wkb) if r.wkb is not None else None, r.props, r.t_start, r.t_end)}
        return kept, sql_ids, post


def _fill(db: Db) -> None:
    with db.engine.begin() as conn:
        for f in ROWS:
            box = f.g.bounds if f.g is not None else (None,) * 4
            wkb: Any = shapely.to_wkb(f.g) if f.g is not None else None
            if db.pg and wkb is not None:
                wkb = func.ST_GeomFromWKB(literal(wkb, LargeBinary), 4326)
            conn.execute(db.table.insert().values(
                id=f.id, props=f.p, t_start=f.s, t_end=f.e, minx=box[0], miny=box[1], maxx=box[2],
                maxy=box[3], geom=wkb))


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('cql2') / 'features.db'}")
    metadata = MetaData()
    table = _table(metadata, pg=False)
    metadata.create_all(engine)
    db = Db(engine, table, SqliteTarget(table))
    _fill(db)
    yield db
    engine.dispose()


@pytest.fixture(scope="module")
def pg_db() -> Iterator[Db]:
    name = f"cityos_cql2_{os.getpid()}"
    admin_url = make_url(PG_URL).set(database="postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI but unreachable at {PG_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {exc}")
    engine = create_engine(make_url(PG_URL).set(database=name))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
        metadata = MetaData()
        table = _table(metadata, pg=True)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE map_features ALTER COLUMN geom TYPE geometry(Geometry, 4326) "
                              "USING NULL"))
        db = Db(engine, table, PgTarget(table))
        _fill(db)
        yield db
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite_db", "pg_db"], ids=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest) -> Db:
    db: Db = request.getfixturevalue(request.param)
    return db


# --- same answers as brute force --------------------------------------------------------------

@pytest.mark.parametrize(("filter_text", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_filter_matches_brute_force(any_db: Db, filter_text: str, expected: Callable[[F], bool]) -> None:
    want = {f.id for f in ROWS if expected(f)}
    got, sql_ids, post = any_db.query(filter_text)
    assert got == want
    assert sql_ids >= want  # the SQL alone never loses a match (the superset rule)
    if any_db.pg:
        assert post is None  # PostGIS answers exactly in SQL
    node = cql2.parse(filter_text, Q)
    assert {f.id for f in ROWS if cql2.matches(node, f.g, f.p, f.s, f.e)} == want


def test_cases_cover_the_data() -> None:
    assert len(CASES) >= 30
    # every case is discriminating or deliberately empty/full, not accidentally trivial
    sizes = [len({f.id for f in ROWS if expected(f)}) for _, expected in CASES]
    assert sum(0 < n < len(ROWS) for n in sizes) >= 50


def test_sqlite_post_filters_only_spatial(sqlite_db: Db) -> None:
    _, _, post = sqlite_db.query("height > 3 AND T_INTERSECTS(observed, INTERVAL('..', '..'))")
    assert post is None
    got, sql_ids, post = sqlite_db.query("S_INTERSECTS(geometry, POINT(113.85 23.8))")
    assert post is not None and got == set() and sql_ids == {3, 6}  # boxes overlap, shapes don't
    # under NOT the prefilter cannot narrow anything: every row goes to the exact test
    _, sql_ids, post = sqlite_db.query("NOT S_INTERSECTS(geometry, POINT(113.85 23.8))")
    assert post is not None and sql_ids == {f.id for f in ROWS}


def test_injection_probes_are_inert(any_db: Db) -> None:
    got, _, _ = any_db.query("name = 'x''; DROP TABLE map_features; --' OR kind = 'road'' OR ''1''=''1'")
    assert got == set()
    with pytest.raises(FilterError, match="unknown queryable"):
        any_db.query("\"x'; DROP TABLE map_features; --\" = 1")
    node = cql2.parse("name = 'a''); DELETE FROM map_features; --' AND \"o'neil\" LIKE '%''%'", Q)
    clause, _ = cql2.to_sql(node, any_db.target)
    sql = str(select(any_db.table.c.id).where(clause).compile(any_db.engine))
    assert "DELETE" not in sql and "o'neil" not in sql  # values and the JSON key travel as parameters
    assert any_db.query("TRUE")[0] == {f.id for f in ROWS}
    assert "map_features" in inspect(any_db.engine).get_table_names()


def test_filter_crs_reads_literals_in_that_crs(any_db: Db) -> None:
    want, _, _ = any_db.query("S_WITHIN(geometry, BBOX(113.0, 23.0, 113.52, 23.52))")
    # EPSG:4326 is latitude first in OGC API - Features Part 2
    lat_first, _, _ = any_db.query("S_WITHIN(geometry, BBOX(23.0, 113.0, 23.52, 113.52))", filter_crs="EPSG:4326")
    assert lat_first == want == {1, 4, 9, 13}
    web = shapely.transform(shapely.box(113.0, 23.0, 113.52, 23.52), _to_web_mercator)
    minx, miny, maxx, maxy = web.bounds
    mercator, _, _ = any_db.query(f"S_WITHIN(geometry, BBOX({minx}, {miny}, {maxx}, {maxy}))",
                                  filter_crs="http://www.opengis.net/def/crs/EPSG/0/3857")
    assert mercator == want


def _to_web_mercator(xy: Any) -> Any:
    from pyproj import Transformer
    x, y = Transformer.from_crs("OGC:CRS84", "EPSG:3857", always_xy=True).transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


# --- parsing and errors -----------------------------------------------------------------------

def _error(filter_text: str, **kw: Any) -> FilterError:
    with pytest.raises(FilterError) as info:
        cql2.parse(filter_text, Q, **kw)
    return info.value


def test_filter_error_is_a_400_invalid_on_the_filter_field() -> None:
    err = _error("height = 1 AN name = 'x'")
    assert isinstance(err, Invalid)
    assert err.status == 400 == FilterError.status
    assert err.errors[0].field == "filter"
    assert err.extra == {"line": 1, "column": 12, "token": "AN"}
    assert "unexpected token 'AN' at column 12" in str(err)
    assert "expected" in str(err) and "AND" in str(err)


@pytest.mark.parametrize(("filter_text", "message"), [
    ("height = 1 AN name = 'x'", "unexpected token 'AN' at column 12"),
    ("height = 1 AND", "unexpected end of filter at column 15"),
    ("height == 1", "unexpected token '=' at column 9"),
    ("name = 'unterminated", "unterminated string \"'unterminated\" at column 8"),
    ("height = 1 AND\n  名称 == 2", "at line 2, column 7"),
    ("名称 = 'x' AN kind = 'y'", "unexpected token 'AN' at column 10"),
    ("(height = 1", "unexpected end of filter at column 12"),
    ("height = 1)", "unexpected token ')' at column 11"),
    ("", "unexpected end of filter at column 1"),
    ("height = 1; DROP TABLE map_features", "unexpected token ';' at column 11"),
    ("S_INTERSECTS(geometry, POINT(1))", "unknown function 'point'"),
    ("S_INTERSECTS(geometry, POINT EMPTY)", "malformed filter"),
])
def test_malformed_filters_point_at_the_token(filter_text: str, message: str) -> None:
    assert message in str(_error(filter_text))


@pytest.mark.parametrize(("filter_text", "message"), [
    ("foo = 1", "unknown queryable 'foo' at column 1; known: active, area, built, geometry, height, inspected, "
                "kind, name, o'neil, observed"),
    ("height = 1 OR \"bar baz\" > 2", "unknown queryable 'bar baz' at column 15"),
    ("height = 'abc'", "cannot compare integer property 'height' with string 'abc'"),
    ("name > 5", "cannot compare string property 'name' with number 5"),
    ("active < TRUE", "needs values with an order"),
    ("name = height", "cannot compare string property 'name' with integer property 'height'"),
    ("built = TIMESTAMP('2024-01-01T00:00:00Z')", "cannot compare date property 'built' with a timestamp"),
    ("height LIKE '1%'", "LIKE needs a string"),
    ("name LIKE name", "the LIKE pattern must be a string literal"),
    ("height IN (1, 'two')", "cannot compare integer property 'height' with string 'two'"),
    ("S_INTERSECTS(name, POINT(113 23))", "string property 'name' is not one"),
    ("S_INTERSECTS(geometry, geometry)", "needs a geometry literal on one side"),
    ("geometry = 1", "can only be used in a spatial function"),
    ("T_INTERSECTS(height, DATE('2024-01-01'))", "integer property 'height' is not one"),
    ("T_INTERSECTS(built, TIMESTAMP('2024-01-01T00:00:00Z'))", "mixes date property 'built' with timestamps"),
    ("T_INTERSECTS(observed, INTERVAL('2024-02-01', '2024-01-01'))", "INTERVAL ends before it starts"),
    ("observed = TIMESTAMP('2024-13-01T00:00:00Z')", "invalid TIMESTAMP"),
    ("height", "integer property 'height' is not a condition"),
    ("height = NULL", "use IS NULL"),
    ("height + 'a' > 1", "'+' needs numbers"),
    ("ACCENTI(name) = 'a'", "ACCENTI"),
    ("height div 2 = 1", "'div' is not supported"),
    ("A_CONTAINS(kind, ('a'))", "array function A_CONTAINS is not supported"),
    ("S_DWITHIN(geometry, POINT(113 23), 10, 'meters')", "unknown function 's_dwithin'"),
    ("S_INTERSECTS(geometry, POLYGON((113 23, 114 24, 114 23, 113 24, 113 23)))", "invalid geometry literal"),
    ("S_INTERSECTS(geometry, POINT(23 113))", "outside CRS84"),
    ("S_INTERSECTS(geometry, BBOX(113, 24, 114, 23))", "wrong way round"),
    ("CASEI(height) = 'a'", "CASEI needs a string"),
    ("height = 1e400", "number out of range"),
])
def test_checks_against_the_queryables(filter_text: str, message: str) -> None:
    assert message in str(_error(filter_text))


def test_nesting_is_bounded_before_the_parser_sees_it() -> None:
    # cql2-rs recurses on the native stack; a few thousand levels would crash the process
    for deep in ["(" * 5000 + "height = 1" + ")" * 5000, "NOT " * 5000 + "active", "height = " + "-" * 5000 + "1"]:
        assert "nested more than" in str(_error(deep))
    assert cql2.parse("(" * 20 + "height = 1" + ")" * 20, Q) == cql2.parse("height = 1", Q)
    assert "nested" not in str(_error("name = '" + "(" * 200 + "' AND foo = 1"))  # strings don't count


def test_filter_crs_errors_name_the_parameter() -> None:
    err = _error("S_INTERSECTS(geometry, POINT(1 2))", filter_crs="EPSG:99999")
    assert err.errors[0].field == "filter-crs"

    def broken(geom: shapely.Geometry, crs: str) -> shapely.Geometry:
        raise ValueError("no such CRS")

    err = _error("S_INTERSECTS(geometry, POINT(1 2))", filter_crs="X:1", to_canonical=broken)
    assert err.errors[0].field == "filter-crs" and "no such CRS" in str(err)


def test_to_canonical_callable_is_used_for_every_literal() -> None:
    seen: list[str] = []

    def shift(geom: shapely.Geometry, crs: str) -> shapely.Geometry:
        seen.append(crs)
        return shapely.affinity.translate(geom, 100, 20)

    node = cql2.parse("S_INTERSECTS(geometry, POINT(13.1 3.1)) OR S_WITHIN(geometry, BBOX(13, 3, 13.5, 3.5))", Q,
                      filter_crs="LOCAL:1", to_canonical=shift)
    assert seen == ["LOCAL:1", "LOCAL:1"]
    assert {f.id for f in ROWS if cql2.matches(node, f.g, f.p, f.s, f.e)} == {1, 4, 9, 13}


def test_cql2_json_is_accepted_too() -> None:
    doc = {"op": "and", "args": [
        {"op": ">", "args": [{"property": "height"}, 10]},
        {"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [113.0, 23.0, 113.5, 23.5]}]},
        {"op": "t_intersects", "args": [{"property": "observed"}, {"interval": ["2024-01-01", ".."]}]},
    ]}
    text_node = cql2.parse("height > 10 AND S_INTERSECTS(geometry, BBOX(113.0, 23.0, 113.5, 23.5)) "
                           "AND T_INTERSECTS(observed, INTERVAL('2024-01-01', '..'))", Q)
    json_node = cql2.parse(doc, Q, lang="cql2-json")
    ids = {f.id for f in ROWS if cql2.matches(json_node, f.g, f.p, f.s, f.e)}
    assert ids == {f.id for f in ROWS if cql2.matches(text_node, f.g, f.p, f.s, f.e)} == {9, 13}
    assert "unknown queryable 'nope'" in str(_error('{"op": "=", "args": [{"property": "nope"}, 1]}', lang="cql2-json"))
    assert "column" in str(_error('{"op": "=", "args": [', lang="cql2-json"))


def test_constant_conditions_fold() -> None:
    assert cql2.parse("1 = 1", Q) == cql2.Const(True)
    assert cql2.parse("NOT DATE('2020-01-01') < DATE('2021-01-01')", Q) == cql2.Const(False)
    assert cql2.parse("S_INTERSECTS(POINT(1 1), BBOX(0, 0, 2, 2))", Q) == cql2.Const(True)
    assert isinstance(cql2.parse("1 = 1 AND height = 2", Q), cql2.And)


def test_crs84_as_filter_crs_keeps_lon_lat_and_antimeridian_boxes() -> None:
    uri = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
    node = cql2.parse("S_INTERSECTS(geometry, BBOX(170, -10, -170, 10))", Q, filter_crs=uri)
    assert isinstance(node, cql2.Spatial) and node.geometry.geom_type == "MultiPolygon"
    assert cql2.parse("S_WITHIN(geometry, BBOX(113, 23, 113.5, 23.5))", Q, filter_crs=uri).geometry.bounds == (
        113, 23, 113.5, 23.5)


def test_casei_folds_ascii_on_sqlite_and_the_post_filter_agrees(sqlite_db: Db) -> None:
    # SQLite's lower() folds ASCII only; the Python evaluation must not find more than SQL does
    for filter_text in ["CASEI(name) = CASEI('äbc')", "S_INTERSECTS(geometry, BBOX(113, 23, 114, 24)) AND CASEI(name) = CASEI('äbc')"]:
        got, _, _ = sqlite_db.query(filter_text)
        node = cql2.parse(filter_text, Q)
        assert got == set() == {f.id for f in ROWS if cql2.matches(node, f.g, f.p, f.s, f.e)}
    assert sqlite_db.query("CASEI(name) = CASEI('Äbc')")[0] == {10}
