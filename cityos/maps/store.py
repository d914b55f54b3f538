"""Spatial storage (空间存储): the one entry to the map's database adapters.

`adapter(session_or_connection)` picks `spatial_sqlite` (WKB + R*Tree + Shapely) or `spatial_pg`
(PostGIS); both implement `SpatialAdapter` below, and all SQLite-only or PostGIS-only SQL lives in
those two modules. Geometries in and out are Shapely 2 geometries in the canonical CRS (OGC
CRS84: longitude, latitude on WGS-84); distances are geodesic metres on the WGS-84 ellipsoid.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Geod, Transformer
from shapely.geometry.base import BaseGeometry
from sqlalchemy import ColumnElement, Connection, Table, and_, or_, select
from sqlalchemy.orm import Session

from cityos.maps.models import Feature, Layer

FEATURES: Table = Feature.__table__  # type: ignore[assignment]
LAYERS: Table = Layer.__table__  # type: ignore[assignment]
GEOD = Geod(ellps="WGS84")

# A new feature: (fid, geometry, properties, time start, time end), geometry already canonical.
NewFeature = tuple[str, BaseGeometry, dict[str, Any], dt.datetime | None, dt.datetime | None]
BBox = tuple[float, float, float, float]  # minx, miny, maxx, maxy (lon, lat)
ExactTest = Callable[[NDArray[Any]], NDArray[np.bool_]]
PREDICATES = ("intersects", "equals", "disjoint", "touches", "within", "overlaps", "crosses", "contains")
PROP_TYPES = ("string", "integer", "number", "boolean", "date", "datetime")


@dataclass
class StoredFeature:
    """A feature as read back: row id, feature id, properties, geometry, time span."""

    id: int
    fid: str
    props: dict[str, Any]
    geom: BaseGeometry
    t_start: dt.datetime | None = None
    t_end: dt.datetime | None = None
    distance: float | None = None  # metres, for nearest and within-distance answers


# -- geodesy shared by both adapters --------------------------------------------------------------

# Metres per degree, bounded so that a box built from them always covers the distance asked
# (a degree of latitude is 110.57 km at the equator and 111.69 km at the poles).
_M_PER_DEG_LAT_MIN = 110_000.0
_M_PER_DEG_LON_EQ = 111_700.0


def expand_bbox(bbox: BBox, metres: float) -> BBox:
    """A lon/lat box grown by at least `metres` on every side (never too small)."""
    minx, miny, maxx, maxy = bbox
    dlat = metres / _M_PER_DEG_LAT_MIN
    lat_far = min(90.0, max(abs(miny - dlat), abs(maxy + dlat)))
    cos = np.cos(np.radians(lat_far))
    dlon = 180.0 if cos < 1e-6 else min(180.0, metres / (_M_PER_DEG_LON_EQ * cos * 0.995))
    return (max(-180.0, minx - dlon), max(-90.0, miny - dlat), min(180.0, maxx + dlon),
            min(90.0, maxy + dlat))


@functools.lru_cache(maxsize=256)
def _aeqd(lon: float, lat: float) -> Transformer:
    return Transformer.from_crs("OGC:CRS84", f"+proj=aeqd +lat_0={lat} +lon_0={lon} +ellps=WGS84 +units=m",
                                always_xy=True)


def geodesic_distances(origin: BaseGeometry, geoms: Sequence[BaseGeometry] | NDArray[Any]
                       ) -> NDArray[np.float64]:
    """Geodesic metres from `origin` to each geometry.

    Points to points are exact (Karney's geodesics via pyproj.Geod). Anything else goes through
    an azimuthal equidistant projection centred on the origin's centroid, which keeps distances
    from that centre exact and, at city scale, all others within a few millimetres per km."""
    arr = np.asarray(geoms, dtype=object)
    if len(arr) == 0:
        return np.zeros(0)
    centre = origin if origin.geom_type == "Point" else origin.centroid
    types = shapely.get_type_id(arr)
    out = np.empty(len(arr))
    points = types == 0
    if origin.geom_type == "Point" and points.any():
        xs, ys = shapely.get_x(arr[points]), shapely.get_y(arr[points])
        _, _, d = GEOD.inv(np.full(len(xs), centre.x), np.full(len(xs), centre.y), xs, ys)
        out[points] = d
        rest = ~points
    else:
        rest = np.ones(len(arr), dtype=bool)
    if rest.any():
        tr = _aeqd(round(centre.x, 7), round(centre.y, 7))
        projected = shapely.transform(arr[rest], lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))
        local = shapely.transform(origin, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))
        out[rest] = shapely.distance(local, projected)
    return out


def area_m2(geom: BaseGeometry) -> float:
    """Geodesic area in square metres (面积) on WGS-84."""
    return abs(float(GEOD.geometry_area_perimeter(geom)[0]))


def length_m(geom: BaseGeometry) -> float:
    """Geodesic length in metres (长度) on WGS-84; a polygon's is its perimeter."""
    return float(GEOD.geometry_length(geom))


# -- SQL shared by both adapters ------------------------------------------------------------------

F = FEATURES.c
ROW_COLUMNS = (F.id, F.fid, F.props, F.t_start, F.t_end, F.geom)


def bbox_overlaps(bbox: BBox) -> ColumnElement[bool]:
    """The stored box overlaps `bbox` (exact, on the float64 columns)."""
    minx, miny, maxx, maxy = bbox
    return and_(F.minx <= maxx, F.maxx >= minx, F.miny <= maxy, F.maxy >= miny)


def bbox_inside(bbox: BBox) -> ColumnElement[bool]:
    """The stored box lies inside `bbox`: the feature intersects it without any geometry test."""
    minx, miny, maxx, maxy = bbox
    return and_(F.minx >= minx, F.maxx <= maxx, F.miny >= miny, F.maxy <= maxy)


def time_overlaps(start: dt.datetime | None, end: dt.datetime | None) -> ColumnElement[bool]:
    """The feature's time span [t_start, t_end] meets [start, end] (either end open). A feature
    with an instant has t_end = t_start; one with an end attribute left empty is still going."""
    conds: list[ColumnElement[bool]] = [F.t_start.is_not(None)]
    if end is not None:
        conds.append(F.t_start <= end)
    if start is not None:
        conds.append(or_(F.t_end >= start, F.t_end.is_(None)))
    return and_(*conds)


def to_features(rows: Sequence[Any], distances: Sequence[float] | None = None) -> list[StoredFeature]:
    """Rows of ROW_COLUMNS as StoredFeatures, geometries decoded in one vectorized call."""
    if not rows:
        return []
    geoms = shapely.from_wkb([r[5] for r in rows])
    return [StoredFeature(int(r[0]), r[1], r[2] or {}, g, r[3], r[4],
                          None if distances is None else float(distances[i]))
            for i, (r, g) in enumerate(zip(rows, geoms, strict=True))]


def spatial_order(bounds: NDArray[np.float64]) -> NDArray[np.intp]:
    """An order of boxes along a Z-order (Morton) curve of their centres.

    Writing a batch in this order keeps neighbours in neighbouring pages: box queries touch few
    pages on both databases, and the R*Tree grows node by node instead of all over."""
    if len(bounds) < 2:
        return np.arange(len(bounds))
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    code = np.zeros(len(bounds), dtype=np.uint64)
    for axis, values in enumerate((cx, cy)):
        lo, hi = float(values.min()), float(values.max())
        cells = ((values - lo) / ((hi - lo) or 1.0) * 65535).astype(np.uint64)
        for bit in range(16):
            code |= ((cells >> np.uint64(bit)) & np.uint64(1)) << np.uint64(2 * bit + axis)
    return np.argsort(code, kind="stable")


def wkb_hex_ewkb(geoms: Sequence[BaseGeometry]) -> list[str]:
    """Hex EWKB with SRID 4326, what PostGIS's text input (COPY) reads."""
    with_srid = shapely.set_srid(np.asarray(geoms, dtype=object), 4326)
    return list(shapely.to_wkb(with_srid, hex=True, include_srid=True))


def boxes(geoms: Sequence[BaseGeometry]) -> NDArray[np.float64]:
    """Bounds (n × 4) of many geometries at once."""
    out: NDArray[np.float64] = shapely.bounds(np.asarray(geoms, dtype=object))
    return out


class SpatialAdapter:
    """What both databases offer the map. Construct with `adapter(...)`."""

    dialect = ""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # writes
    def insert(self, layer_id: int, features: Sequence[NewFeature]) -> int:
        """Bulk insert; returns the number written."""
        raise NotImplementedError

    def delete_layer_features(self, layer_id: int) -> int:
        """Remove every feature of a layer; returns how many."""
        raise NotImplementedError

    def delete_features(self, layer_id: int, fids: Sequence[str]) -> int:
        """Remove the named features of a layer."""
        raise NotImplementedError

    # reads
    def bbox_query(self, layer_id: int, bbox: BBox | None = None, *, limit: int = 100, offset: int = 0,
                   where: Sequence[ColumnElement[bool]] = (), exact: bool = True) -> list[StoredFeature]:
        """Features of a layer meeting `bbox` (exactly, unless exact=False) and `where`, one page."""
        raise NotImplementedError

    def count(self, layer_id: int, bbox: BBox | None = None, *, where: Sequence[ColumnElement[bool]] = (),
              exact: bool = True) -> int:
        """How many features `bbox_query` would page through."""
        raise NotImplementedError

    def feature_get(self, layer_id: int, fid: str) -> StoredFeature | None:
        rows = self.conn.execute(select(*ROW_COLUMNS).where(F.layer_id == layer_id, F.fid == fid)).all()
        found = to_features(rows)
        return found[0] if found else None

    def layer_extent(self, layer_id: int) -> tuple[int, BBox | None]:
        """Feature count and bounding box of a layer."""
        from sqlalchemy import func

        n, a, b, c, d = self.conn.execute(
            select(func.count(), func.min(F.minx), func.min(F.miny), func.max(F.maxx), func.max(F.maxy))
            .where(F.layer_id == layer_id)).one()
        return int(n), (None if not n else (float(a), float(b), float(c), float(d)))

    def nearest(self, layer_id: int, point: BaseGeometry, k: int = 1, *,
                where: Sequence[ColumnElement[bool]] = ()) -> list[StoredFeature]:
        """The k features nearest to a point, geodesically, nearest first (distance in metres)."""
        raise NotImplementedError

    def within_distance(self, layer_id: int, geom: BaseGeometry, metres: float, *, limit: int = 1000,
                        where: Sequence[ColumnElement[bool]] = ()) -> list[StoredFeature]:
        """Features within `metres` (geodesic) of a geometry, nearest first."""
        raise NotImplementedError

    def assign(self, lons: Any, lats: Any, polygon_layer_id: int, attribute: str) -> NDArray[Any]:
        """For each point, the `attribute` of the layer's polygon covering it, or None.

        A point on a border shared by two polygons goes to the one stored first (lowest id)."""
        raise NotImplementedError

    def spatial_clause(self, predicate: str, geom: BaseGeometry
                       ) -> tuple[ColumnElement[bool], ExactTest | None]:
        """A WHERE clause `predicate(feature.geom, geom)` for CQL2's S_* functions.

        Returns (clause, exact test): both adapters answer exactly in SQL, so the test is None;
        the pair leaves room for an adapter whose SQL can only prefilter."""
        raise NotImplementedError

    def prop(self, name: str, type_: str) -> ColumnElement[Any]:
        """A property as a typed SQL expression (compare it to Python values of that type)."""
        raise NotImplementedError


def check_predicate(predicate: str) -> str:
    p = predicate.lower().removeprefix("s_")
    if p not in PREDICATES:
        raise ValueError(f"unknown spatial predicate {predicate!r}")
    return p


def adapter(bind: Session | Connection) -> SpatialAdapter:
    """The spatial adapter for this session's or connection's database."""
    conn = bind.connection() if isinstance(bind, Session) else bind
    if conn.dialect.name == "postgresql":
        from cityos.maps.spatial_pg import PostGISAdapter

        return PostGISAdapter(conn)
    from cityos.maps.spatial_sqlite import SQLiteAdapter

    return SQLiteAdapter(conn)
