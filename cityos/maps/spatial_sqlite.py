"""The SQLite side of the map's storage: WKB geometries, an R*Tree of boxes, Shapely for the rest.

`map_features_rtree(id, minx, maxx, miny, maxy, +layer_id)` is created by migration 0005 and
kept in step with `map_features` by triggers. The layer is an auxiliary column, read from the
tree itself, so entries of other layers are skipped without a table lookup (but still walked: a
small layer under a big one pays for the big one's entries in the box). R*Tree coordinates are
32-bit floats rounded outwards, so the tree only prefilters; the float64 box columns of
`map_features` make the box test exact, and a Shapely test, registered as SQL functions on the
connection, decides the rest in SQL. Keeping every decision in SQL keeps pages full, counts
exact, and lets CQL2 nest spatial tests under OR and NOT.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Date,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    delete,
    func,
    literal,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.types import BigInteger, TypeDecorator

from cityos.maps import store
from cityos.maps.store import (
    FEATURES,
    LAYERS,
    ROW_COLUMNS,
    BBox,
    ExactTest,
    F,
    NewFeature,
    SpatialAdapter,
    StoredFeature,
)

RTREE = Table(
    "map_features_rtree", MetaData(),
    Column("id", Integer, primary_key=True), Column("minx", Float), Column("maxx", Float),
    Column("miny", Float), Column("maxy", Float), Column("layer_id", Integer),
)
R = RTREE.c

# -- Shapely as SQL functions ---------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _prepared(wkb: bytes) -> BaseGeometry:
    """The query geometry of a statement, decoded and prepared once for all its rows."""
    geom = shapely.from_wkb(wkb)
    shapely.prepare(geom)
    return geom


@functools.lru_cache(maxsize=64)
def _box(minx: float, miny: float, maxx: float, maxy: float) -> BaseGeometry:
    geom = shapely.box(minx, miny, maxx, maxy)
    shapely.prepare(geom)
    return geom


def _sql_intersects_box(wkb: bytes | None, minx: float, miny: float, maxx: float, maxy: float) -> int:
    if wkb is None:
        return 0
    return int(shapely.intersects(_box(minx, miny, maxx, maxy), shapely.from_wkb(wkb)))


# predicate(feature, query) evaluated with the prepared query geometry first where GEOS can.
_SWAPPED = {"intersects": shapely.intersects, "disjoint": shapely.disjoint, "touches": shapely.touches,
            "overlaps": shapely.overlaps, "crosses": shapely.crosses, "within": shapely.contains,
            "contains": shapely.within}


def _sql_spatial(predicate: str, wkb: bytes | None, other: bytes) -> int:
    if wkb is None:
        return 0
    query = _prepared(other)
    geom = shapely.from_wkb(wkb)
    if predicate == "equals":
        return int(shapely.equals(geom, query))
    return int(_SWAPPED[predicate](query, geom))


def register_functions(conn: Connection) -> None:
    """Add the Shapely SQL functions to this connection (cheap; repeated on every adapter)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.create_function("cityos_intersects_box", 5, _sql_intersects_box, deterministic=True)
    raw.create_function("cityos_spatial", 3, _sql_spatial, deterministic=True)


# -- properties -----------------------------------------------------------------------------------

_JULIAN_EPOCH_MS = 210_866_760_000_000  # 1970-01-01T00:00Z as milliseconds of the Julian day count


class JulianDay(TypeDecorator[dt.datetime]):
    """A datetime as SQLite's julianday(): ISO texts with any offset compare as instants."""

    impl = Float
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> float | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise ValueError("an aware datetime is required")
        ms = round(value.timestamp() * 1000)
        return (ms + _JULIAN_EPOCH_MS) / 86_400_000.0  # as SQLite computes it, bit for bit

    def process_result_value(self, value: Any, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        ms = round(float(value) * 86_400_000.0) - _JULIAN_EPOCH_MS
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


_PROP_TYPES: dict[str, Any] = {"string": String(), "integer": BigInteger(), "number": Float(),
                               "boolean": Boolean(), "date": Date()}


def _raw_time(value: dt.datetime | None) -> str | None:
    """What SQLAlchemy's DateTime stores on SQLite: naive UTC text."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


# -- the adapter ----------------------------------------------------------------------------------

_INSERT = ("INSERT INTO map_features (layer_id, fid, props, t_start, t_end, minx, miny, maxx, maxy, geom)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_CACHE: dict[tuple[Any, ...], PolygonIndex] = {}
_CACHE_LOCK = threading.Lock()


def _forget(layer_id: int) -> None:
    """Drop this process's prepared polygons of a layer it writes (other processes see the
    layer's updated_at change, which the service sets on every write)."""
    with _CACHE_LOCK:
        for key in [k for k in _CACHE if k[1] == layer_id]:
            del _CACHE[key]


class SQLiteAdapter(SpatialAdapter):
    dialect = "sqlite"

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        register_functions(conn)

    # -- writes

    def insert(self, layer_id: int, features: Sequence[NewFeature]) -> int:
        if not features:
            return 0
        bounds = store.boxes([f[1] for f in features])
        order = store.spatial_order(bounds)
        features, bounds = [features[i] for i in order], bounds[order]
        wkbs = shapely.to_wkb(np.asarray([f[1] for f in features], dtype=object))
        rows = [
            (layer_id, fid, orjson.dumps(props).decode(), _raw_time(t0), _raw_time(t1),
             float(b[0]), float(b[1]), float(b[2]), float(b[3]), w)
            for (fid, _g, props, t0, t1), b, w in zip(features, bounds, wkbs, strict=True)
        ]
        self.conn.exec_driver_sql(_INSERT, rows)
        _forget(layer_id)
        return len(rows)

    def delete_layer_features(self, layer_id: int) -> int:
        # The delete trigger takes each entry out of the R*Tree.
        _forget(layer_id)
        return int(self.conn.execute(delete(FEATURES).where(F.layer_id == layer_id)).rowcount)

    def delete_features(self, layer_id: int, fids: Sequence[str]) -> int:
        _forget(layer_id)
        n = 0
        for i in range(0, len(fids), 500):
            n += self.conn.execute(delete(FEATURES).where(
                F.layer_id == layer_id, F.fid.in_(list(fids[i:i + 500])))).rowcount
        return n

    # -- reads

    def _filtered(self, cols: Sequence[Any], layer_id: int, bbox: BBox | None, where: Sequence[Any],
                  exact: bool) -> Any:
        if bbox is None:
            return select(*cols).where(F.layer_id == layer_id, *where)
        minx, miny, maxx, maxy = bbox
        conds: list[Any] = [
            R.minx <= maxx, R.maxx >= minx, R.miny <= maxy, R.maxy >= miny, R.layer_id == layer_id,
            store.bbox_overlaps(bbox),
        ]
        if exact:
            # Boxes inside the query box need no geometry test; SQLite's OR stops there for them.
            conds.append(or_(store.bbox_inside(bbox),
                             func.cityos_intersects_box(F.geom, minx, miny, maxx, maxy) == 1))
        # The R*Tree drives the scan (rtree first, features looked up by rowid): the pages come
        # in the tree's order, which is stable while the layer does not change.
        return select(*cols).select_from(RTREE.join(FEATURES, F.id == R.id)).where(*conds, *where)

    def bbox_query(self, layer_id: int, bbox: BBox | None = None, *, limit: int = 100, offset: int = 0,
                   where: Sequence[ColumnElement[bool]] = (), exact: bool = True) -> list[StoredFeature]:
        stmt = self._filtered(ROW_COLUMNS, layer_id, bbox, where, exact)
        if bbox is None:
            stmt = stmt.order_by(F.id)
        return store.to_features(self.conn.execute(stmt.limit(limit).offset(offset)).all())

    def count(self, layer_id: int, bbox: BBox | None = None, *, where: Sequence[ColumnElement[bool]] = (),
              exact: bool = True) -> int:
        stmt = self._filtered([func.count()], layer_id, bbox, where, exact)
        return int(self.conn.execute(stmt).scalar_one())

    def _extent(self, layer_id: int) -> tuple[int, BBox | None]:
        row = self.conn.execute(select(LAYERS.c.feature_count, LAYERS.c.bbox)
                                .where(LAYERS.c.id == layer_id)).first()
        if row is None or not row[0] or not row[1]:
            return self.layer_extent(layer_id)
        a, b, c, d = row[1]
        return int(row[0]), (float(a), float(b), float(c), float(d))

    def _in_box(self, layer_id: int, bbox: BBox, where: Sequence[Any]) -> list[StoredFeature]:
        stmt = self._filtered(ROW_COLUMNS, layer_id, bbox, where, exact=False)
        return store.to_features(self.conn.execute(stmt).all())

    def nearest(self, layer_id: int, point: BaseGeometry, k: int = 1, *,
                where: Sequence[ColumnElement[bool]] = ()) -> list[StoredFeature]:
        n, extent = self._extent(layer_id)
        if n == 0 or extent is None or k < 1:
            return []
        # Start with a box expected to hold a few times k features, grow it until it holds k,
        # then make sure it reaches as far as the k-th nearest: nothing outside can be nearer.
        w, h = extent[2] - extent[0], extent[3] - extent[1]
        per = max(w * h, 1e-10) / n
        radius = max(50.0, float(np.sqrt(per * max(k, 4) * 4)) * 111_000.0 / 2)
        reach = float(np.hypot(w, h)) * 111_700.0 + 2 * float(
            store.geodesic_distances(point, [shapely.box(*extent)])[0]) + 1.0
        origin = (point.x, point.y, point.x, point.y)
        while True:
            found = self._in_box(layer_id, store.expand_bbox(origin, radius), where)
            if len(found) >= k or radius >= reach:
                dist = store.geodesic_distances(point, [f.geom for f in found])
                order = np.argsort(dist, kind="stable")
                if len(found) < k or dist[order[k - 1]] <= radius:
                    out = [found[i] for i in order[:k]]
                    for f, i in zip(out, order[:k], strict=True):
                        f.distance = float(dist[i])
                    return out
                radius = float(dist[order[k - 1]]) * 1.0001 + 0.01
                continue
            radius *= 4

    def within_distance(self, layer_id: int, geom: BaseGeometry, metres: float, *, limit: int = 1000,
                        where: Sequence[ColumnElement[bool]] = ()) -> list[StoredFeature]:
        found = self._in_box(layer_id, store.expand_bbox(geom.bounds, metres), where)
        dist = store.geodesic_distances(geom, [f.geom for f in found])
        keep = [i for i in np.argsort(dist, kind="stable") if dist[i] <= metres][:limit]
        out = [found[i] for i in keep]
        for f, i in zip(out, keep, strict=True):
            f.distance = float(dist[i])
        return out

    def _polygons(self, layer_id: int, attribute: str) -> PolygonIndex:
        """The layer's polygons, prepared, with their attribute values, kept while the layer is
        unchanged (its updated_at and feature count are part of the key)."""
        stamp = self.conn.execute(select(LAYERS.c.updated_at, LAYERS.c.feature_count)
                                  .where(LAYERS.c.id == layer_id)).first()
        key = (str(self.conn.engine.url), layer_id, attribute, tuple(stamp) if stamp else None)
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
        if hit is not None:
            return hit
        rows = self.conn.execute(select(self.prop(attribute, "string"), F.geom)
                                 .where(F.layer_id == layer_id).order_by(F.id)).all()
        index = PolygonIndex([r[1] for r in rows], [r[0] for r in rows])
        with _CACHE_LOCK:
            if len(_CACHE) > 32:
                _CACHE.clear()
            _CACHE[key] = index
        return index

    def assign(self, lons: Any, lats: Any, polygon_layer_id: int, attribute: str) -> NDArray[Any]:
        return self._polygons(polygon_layer_id, attribute).assign(lons, lats)

    def spatial_clause(self, predicate: str, geom: BaseGeometry
                       ) -> tuple[ColumnElement[bool], ExactTest | None]:
        p = store.check_predicate(predicate)
        test = func.cityos_spatial(literal(p), F.geom, literal(shapely.to_wkb(geom))) == 1
        if p == "disjoint":
            return test, None
        minx, miny, maxx, maxy = geom.bounds
        prefilter = F.id.in_(select(R.id).where(R.minx <= maxx, R.maxx >= minx, R.miny <= maxy,
                                                R.maxy >= miny))
        return and_(prefilter, store.bbox_overlaps(geom.bounds), test), None

    def prop(self, name: str, type_: str) -> ColumnElement[Any]:
        if type_ not in store.PROP_TYPES:
            raise ValueError(f"unknown property type {type_!r}")
        value = func.json_extract(F.props, f"$.{name}")
        if type_ == "datetime":
            return type_coerce(func.julianday(value), JulianDay())
        return type_coerce(value, _PROP_TYPES[type_])


class PolygonIndex:
    """Point-in-polygon for many points at once (批量落点), Shapely 2 and NumPy only.

    Few points: an STRtree query of Shapely points. Many points: the points are bucketed on a
    regular grid of about half a polygon's size (one argsort), and each polygon tests only the
    points of the cells under its box with `intersects_xy` on its prepared geometry — no point
    objects are built, which is where the tree spends most of its time. Both give a point on a
    shared border to the polygon stored first (lowest id)."""

    def __init__(self, wkbs: Sequence[bytes], values: Sequence[Any]) -> None:
        self.geoms = shapely.from_wkb(list(wkbs)) if wkbs else np.empty(0, dtype=object)
        shapely.prepare(self.geoms)
        self.values = np.empty(len(values), dtype=object)
        self.values[:] = list(values)
        self.bounds = shapely.bounds(self.geoms) if len(self.geoms) else np.empty((0, 4))
        self.tree = shapely.STRtree(self.geoms)

    def assign(self, lons: Any, lats: Any) -> NDArray[Any]:
        xs = np.asarray(lons, dtype=np.float64)
        ys = np.asarray(lats, dtype=np.float64)
        if xs.shape != ys.shape or xs.ndim != 1:
            raise ValueError("lons and lats must be 1-d arrays of one length")
        if len(xs) == 0 or len(self.geoms) == 0:
            return np.full(len(xs), None, dtype=object)
        # A polygon's loop costs about 15 point lookups of the tree.
        if len(xs) < 15 * len(self.geoms):
            return self._by_tree(xs, ys)
        return self._by_buckets(xs, ys)

    def _by_tree(self, xs: NDArray[np.float64], ys: NDArray[np.float64]) -> NDArray[Any]:
        out = np.full(len(xs), None, dtype=object)
        pts, polys = self.tree.query(shapely.points(xs, ys), predicate="intersects")
        if len(pts):
            order = np.lexsort((polys, pts))
            pts, polys = pts[order], polys[order]
            first = np.ones(len(pts), dtype=bool)
            first[1:] = pts[1:] != pts[:-1]
            out[pts[first]] = self.values[polys[first]]
        return out

    def _by_buckets(self, xs: NDArray[np.float64], ys: NDArray[np.float64]) -> NDArray[Any]:
        out = np.full(len(xs), None, dtype=object)
        b = self.bounds
        x0, y0 = float(b[:, 0].min()), float(b[:, 1].min())
        x1, y1 = float(b[:, 2].max()), float(b[:, 3].max())
        half_w = float(np.median(b[:, 2] - b[:, 0])) / 2
        half_h = float(np.median(b[:, 3] - b[:, 1])) / 2
        nx = max(1, min(2048, int(np.ceil((x1 - x0) / half_w)) if half_w > 0 else 1))
        ny = max(1, min(2048, int(np.ceil((y1 - y0) / half_h)) if half_h > 0 else 1))
        cw, ch = ((x1 - x0) / nx) or 1.0, ((y1 - y0) / ny) or 1.0
        idx = np.flatnonzero((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1))
        gx = np.minimum(((xs[idx] - x0) / cw).astype(np.int64), nx - 1)
        gy = np.minimum(((ys[idx] - y0) / ch).astype(np.int64), ny - 1)
        cell = gy * nx + gx
        order = idx[np.argsort(cell, kind="stable")]
        offsets = np.zeros(nx * ny + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell, minlength=nx * ny), out=offsets[1:])
        sx, sy = xs[order], ys[order]
        done = np.zeros(len(order), dtype=bool)
        cx0 = np.clip(((b[:, 0] - x0) / cw).astype(np.int64), 0, nx - 1)
        cx1 = np.clip(((b[:, 2] - x0) / cw).astype(np.int64), 0, nx - 1) + 1
        cy0 = np.clip(((b[:, 1] - y0) / ch).astype(np.int64), 0, ny - 1)
        cy1 = np.clip(((b[:, 3] - y0) / ch).astype(np.int64), 0, ny - 1) + 1
        for p in range(len(self.geoms)):  # in id order: the first polygon to take a point keeps it
            rows = [np.arange(offsets[r * nx + cx0[p]], offsets[r * nx + cx1[p]])
                    for r in range(cy0[p], cy1[p])]
            cand = rows[0] if len(rows) == 1 else np.concatenate(rows)
            cand = cand[~done[cand]]
            if not len(cand):
                continue
            px, py = sx[cand], sy[cand]
            cand = cand[(px >= b[p, 0]) & (px <= b[p, 2]) & (py >= b[p, 1]) & (py <= b[p, 3])]
            if not len(cand):
                continue
            cand = cand[shapely.intersects_xy(self.geoms[p], sx[cand], sy[cand])]
            done[cand] = True
            out[order[cand]] = self.values[p]
        return out
