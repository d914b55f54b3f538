"""The PostgreSQL side of the map's storage: PostGIS geometry (SRID 4326) with a GiST index.

Bulk writes are COPY with hex EWKB; box queries are `geom && envelope` (the index) plus
ST_Intersects (exact); geodesic distances use the geography type (WGS-84 spheroid).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry
from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Date,
    Float,
    LargeBinary,
    String,
    bindparam,
    cast,
    delete,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION
from sqlalchemy.types import UserDefinedType

from cityos.core.db import UTCDateTime
from cityos.maps import store
from cityos.maps.store import (
    FEATURES,
    ROW_COLUMNS,
    BBox,
    ExactTest,
    F,
    NewFeature,
    SpatialAdapter,
    StoredFeature,
)

_FUNCS = {"intersects": func.ST_Intersects, "equals": func.ST_Equals, "disjoint": func.ST_Disjoint,
          "touches": func.ST_Touches, "within": func.ST_Within, "overlaps": func.ST_Overlaps,
          "crosses": func.ST_Crosses, "contains": func.ST_Contains}
_CASTS: dict[str, Any] = {"integer": BigInteger(), "number": DOUBLE_PRECISION(), "boolean": Boolean(),
                          "date": Date(), "datetime": UTCDateTime()}
_COPY = ("COPY map_features (layer_id, fid, props, t_start, t_end, minx, miny, maxx, maxy, geom)"
         " FROM STDIN")
ASSIGN_JOIN_FROM = 5000  # points; below this, one index probe per point costs less than a join
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_XY_ROW = np.dtype([("n", ">i2"), ("li", ">i4"), ("i", ">i4"), ("lx", ">i4"), ("x", ">f8"),
                    ("ly", ">i4"), ("y", ">f8")])


def _binary_copy(xs: NDArray[np.float64], ys: NDArray[np.float64]) -> bytes:
    """(i, x, y) rows in PostgreSQL's binary COPY format, built by NumPy in one pass."""
    rows = np.empty(len(xs), dtype=_XY_ROW)
    rows["n"], rows["li"], rows["lx"], rows["ly"] = 3, 4, 8, 8
    rows["i"] = np.arange(len(xs), dtype=np.int32)
    rows["x"], rows["y"] = xs, ys
    return _COPY_HEADER + rows.tobytes() + b"\xff\xff"


class _Geography(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "geography"


def _geom(value: BaseGeometry) -> Any:
    return func.ST_GeomFromWKB(literal(shapely.to_wkb(value), LargeBinary()), 4326)


def _envelope(bbox: BBox) -> Any:
    # Inlined, not bound: with bound values a prepared statement's generic plan cannot tell a
    # street-sized box from the whole city, and one plan does not fit both.
    return func.ST_MakeEnvelope(*[bindparam(None, float(v), Float(), literal_execute=True) for v in bbox],
                                4326)


def _geog(value: Any) -> Any:
    return cast(value, _Geography())


class PostGISAdapter(SpatialAdapter):
    dialect = "postgresql"

    # -- writes

    def insert(self, layer_id: int, features: Sequence[NewFeature]) -> int:
        if not features:
            return 0
        bounds = store.boxes([f[1] for f in features])
        order = store.spatial_order(bounds)
        features, bounds = [features[i] for i in order], bounds[order]
        hexes = store.wkb_hex_ewkb([f[1] for f in features])
        dbapi = self.conn.connection.driver_connection
        assert dbapi is not None
        with dbapi.cursor() as cur, cur.copy(_COPY) as copy:
            write = copy.write_row
            for (fid, _g, props, t0, t1), b, h in zip(features, bounds, hexes, strict=True):
                write((layer_id, fid, orjson.dumps(props).decode(), t0, t1,
                       float(b[0]), float(b[1]), float(b[2]), float(b[3]), h))
        return len(features)

    def delete_layer_features(self, layer_id: int) -> int:
        return int(self.conn.execute(delete(FEATURES).where(F.layer_id == layer_id)).rowcount)

    def delete_features(self, layer_id: int, fids: Sequence[str]) -> int:
        return int(self.conn.execute(delete(FEATURES).where(
            F.layer_id == layer_id, F.fid == func.any(bindparam("fids", list(fids), ARRAY(String())))
        )).rowcount)

    # -- reads

    def _filtered(self, cols: Sequence[Any], layer_id: int, bbox: BBox | None, where: Sequence[Any],
                  exact: bool) -> Any:
        conds: list[Any] = [F.layer_id == layer_id]
        if bbox is not None:
            env = _envelope(bbox)
            # ST_Intersects uses the GiST index itself; adding `geom && env` beside it makes the
            # planner underestimate matches tenfold and pick a slow plan.
            conds.append(func.ST_Intersects(F.geom, env) if exact else F.geom.op("&&")(env))
        return select(*cols).where(*conds, *where)

    def bbox_query(self, layer_id: int, bbox: BBox | None = None, *, limit: int = 100, offset: int = 0,
                   where: Sequence[ColumnElement[bool]] = (), exact: bool = True) -> list[StoredFeature]:
        stmt = self._filtered(ROW_COLUMNS, layer_id, bbox, where, exact).order_by(F.id)
        return store.to_features(self.conn.execute(stmt.limit(limit).offset(offset)).all())

    def count(self, layer_id: int, bbox: BBox | None = None, *, where: Sequence[ColumnElement[bool]] = (),
              exact: bool = True) -> int:
        stmt = self._filtered([func.count()], layer_id, bbox, where, exact)
        return int(self.conn.execute(stmt).scalar_one())

    def _ranked(self, layer_id: int, origin: BaseGeometry, metres: float, limit: int,
                where: Sequence[Any]) -> list[StoredFeature]:
        """Features within `metres` of `origin` on the spheroid, nearest first."""
        g = _geom(origin)
        dist = func.ST_Distance(_geog(F.geom), _geog(g))
        stmt = (select(*ROW_COLUMNS, dist.label("d"))
                .where(F.layer_id == layer_id,
                       F.geom.op("&&")(_envelope(store.expand_bbox(origin.bounds, metres))),
                       func.ST_DWithin(_geog(F.geom), _geog(g), metres), *where)
                .order_by(text("d"), F.id).limit(limit))
        rows = self.conn.execute(stmt).all()
        return store.to_features([r[:6] for r in rows], [float(r[6]) for r in rows])

    def nearest(self, layer_id: int, point: BaseGeometry, k: int = 1, *,
                where: Sequence[ColumnElement[bool]] = ()) -> list[StoredFeature]:
        if k < 1:
            return []
        # KNN (<->) orders by planar degrees, not metres: take its k nearest, measure the farthest
        # of them on the spheroid, and rank everything within that distance properly.
        g = _geom(point)
        knn = (select(func.ST_Distance(_geog(F.geom), _geog(g)))
               .where(F.layer_id == layer_id, *where).order_by(F.geom.op("<->")(g)).limit(k))
        dists = [float(d) for d in self.conn.execute(knn).scalars()]
        if not dists:
            return []
        return self._ranked(layer_id, point, max(dists) * 1.0001 + 0.01, k, where)

    def within_distance(self, layer_id: int, geom: BaseGeometry, metres: float, *, limit: int = 1000,
                        where: Sequence[ColumnElement[bool]] = ()) -> list[StoredFeature]:
        return self._ranked(layer_id, geom, metres, limit, where)

    def assign(self, lons: Any, lats: Any, polygon_layer_id: int, attribute: str) -> NDArray[Any]:
        xs = np.asarray(lons, dtype=np.float64)
        ys = np.asarray(lats, dtype=np.float64)
        if len(xs) < ASSIGN_JOIN_FROM:
            return self._assign_each(xs, ys, polygon_layer_id, attribute)
        return self._assign_join(xs, ys, polygon_layer_id, attribute)

    def _assign_each(self, xs: NDArray[np.float64], ys: NDArray[np.float64], layer_id: int,
                     attribute: str) -> NDArray[Any]:
        """Few points: each finds its polygon through the GiST index (lowest id on a border)."""
        out = np.full(len(xs), None, dtype=object)
        sql = text("""
            SELECT p.i, (SELECT f.props ->> :attr FROM map_features f
                         WHERE f.layer_id = :layer
                           AND ST_Intersects(f.geom, ST_SetSRID(ST_MakePoint(p.x, p.y), 4326))
                         ORDER BY f.id LIMIT 1)
            FROM unnest(CAST(:xs AS float8[]), CAST(:ys AS float8[])) WITH ORDINALITY AS p(x, y, i)
        """)
        rows = self.conn.execute(sql, {"attr": attribute, "layer": layer_id, "xs": xs.tolist(),
                                       "ys": ys.tolist()}).all()
        for i, v in rows:
            out[i - 1] = v
        return out

    def _assign_join(self, xs: NDArray[np.float64], ys: NDArray[np.float64], layer_id: int,
                     attribute: str) -> NDArray[Any]:
        """Many points: one binary COPY into a temporary table with its own GiST index, then one
        join in which each polygon (prepared once by PostGIS) collects its points."""
        out = np.full(len(xs), None, dtype=object)
        conn = self.conn
        conn.exec_driver_sql("CREATE TEMP TABLE map_assign_xy (i int4, x float8, y float8)")
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        with dbapi.cursor() as cur, cur.copy("COPY map_assign_xy FROM STDIN (FORMAT binary)") as copy:
            copy.write(_binary_copy(xs, ys))
        conn.exec_driver_sql(
            "CREATE TEMP TABLE map_assign_pts AS SELECT i, ST_SetSRID(ST_MakePoint(x, y), 4326) AS geom"
            " FROM map_assign_xy")
        conn.exec_driver_sql("CREATE INDEX ON map_assign_pts USING gist (geom)")
        conn.exec_driver_sql("ANALYZE map_assign_pts")
        # Two arrays, not a million rows: building Row objects would cost more than the join.
        pts, polys = conn.execute(text(
            "SELECT array_agg(p.i), array_agg(f.id) FROM map_features f"
            " JOIN map_assign_pts p ON ST_Intersects(f.geom, p.geom) WHERE f.layer_id = :layer"),
            {"layer": layer_id}).one()
        conn.exec_driver_sql("DROP TABLE map_assign_xy, map_assign_pts")
        if not pts:
            return out
        rows = conn.execute(select(F.id, self.prop(attribute, "string"))
                            .where(F.layer_id == layer_id).order_by(F.id)).all()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.empty(len(rows), dtype=object)
        values[:] = [r[1] for r in rows]
        p, g = np.asarray(pts, dtype=np.int64), np.asarray(polys, dtype=np.int64)
        order = np.lexsort((g, p))  # by point, then polygon id: the lowest id wins a border
        p, g = p[order], g[order]
        first = np.ones(len(p), dtype=bool)
        first[1:] = p[1:] != p[:-1]
        out[p[first]] = values[np.searchsorted(ids, g[first])]
        return out

    def spatial_clause(self, predicate: str, geom: BaseGeometry
                       ) -> tuple[ColumnElement[bool], ExactTest | None]:
        p = store.check_predicate(predicate)
        return _FUNCS[p](F.geom, _geom(geom)), None

    def prop(self, name: str, type_: str) -> ColumnElement[Any]:
        if type_ not in store.PROP_TYPES:
            raise ValueError(f"unknown property type {type_!r}")
        value = F.props.op("->>", return_type=String())(literal(name, String()))
        return value if type_ == "string" else cast(value, _CASTS[type_])
