"""Query parameters of OGC API - Features (OGC API 查询参数): bbox with bbox-crs, datetime, crs,
limit/offset, CQL2 filters, queryables — read into what `maps.service` takes.

Framework-free: plain functions over strings that raise `Invalid` (or `cql2.FilterError`) naming
the parameter, which /ogc answers with 400.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import shapely
from sqlalchemy import ColumnElement

from cityos.core.errors import Invalid
from cityos.core.workdays import CITY_TZ
from cityos.maps import cql2, store
from cityos.maps import crs as crs_mod
from cityos.maps.crs import Crs
from cityos.maps.models import Layer
from cityos.maps.store import BBox, SpatialAdapter

DEFAULT_LIMIT = 10
CRS84 = crs_mod.parse(crs_mod.CANONICAL)
FILTER_LANGS = ("cql2-text", "cql2-json")

# JSON Schema of each attribute type (Part 3 queryables), and the CQL2 type it compares as.
_SCHEMA: dict[str, dict[str, str]] = {
    "string": {"type": "string"}, "integer": {"type": "integer"}, "number": {"type": "number"},
    "boolean": {"type": "boolean"}, "date": {"type": "string", "format": "date"},
    "datetime": {"type": "string", "format": "date-time"},
}
_GEOMETRY_SCHEMA = {
    "point": ("geometry-point-or-multipoint", "Geometry"),
    "line": ("geometry-linestring-or-multilinestring", "Geometry"),
    "polygon": ("geometry-polygon-or-multipolygon", "Geometry"),
    "any": ("geometry-any", "Geometry"),
}
GEOMETRY = "geometry"


def crs_param(value: str | None, name: str = "crs") -> Crs:
    """A CRS parameter (crs, bbox-crs, filter-crs): one of `crs.SUPPORTED`, CRS84 when absent."""
    if not value:
        return CRS84
    try:
        return crs_mod.parse(value)
    except Invalid as exc:
        raise Invalid(name, exc.errors[0].reason) from None


def int_param(value: str | None, name: str, default: int, low: int, high: int | None = None) -> int:
    """A whole-number parameter; above `high` it is clamped (Part 1: a too large limit is no error)."""
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise Invalid(name, "a whole number / 须为整数") from None
    if n < low:
        raise Invalid(name, f"at least {low} / 不能小于{low}")
    return n if high is None else min(n, high)


def bbox_param(value: str, bbox_crs: Crs) -> BBox:
    """`bbox` (4 or 6 numbers, in bbox-crs's own axis order) as a CRS84 lon/lat box."""
    try:
        nums = [float(v) for v in value.split(",")]
    except ValueError:
        raise Invalid("bbox", "4 or 6 comma-separated numbers / 须为4个或6个逗号分隔的数") from None
    if len(nums) not in (4, 6) or not all(math.isfinite(v) for v in nums):
        raise Invalid("bbox", "4 or 6 comma-separated numbers / 须为4个或6个逗号分隔的数")
    a0, a1, b0, b1 = (nums[0], nums[1], nums[3], nums[4]) if len(nums) == 6 else nums
    if bbox_crs.lat_first:  # (lat, lon) or (northing, easting): back to x, y
        a0, a1, b0, b1 = a1, a0, b1, b0
    if a0 > b0 or a1 > b1:
        raise Invalid("bbox", "the lower corner comes first / 须先写最小值")
    if bbox_crs.key == CRS84.key:
        return (a0, a1, b0, b1)
    # The box's edges, densified, in CRS84: its extent covers the curved image of the box.
    t = np.linspace(0.0, 1.0, 33)
    xs = np.concatenate([a0 + (b0 - a0) * t, np.full(33, b0), b0 - (b0 - a0) * t, np.full(33, a0)])
    ys = np.concatenate([np.full(33, a1), a1 + (b1 - a1) * t, np.full(33, b1), b1 - (b1 - a1) * t])
    lon, lat = crs_mod.to_canonical(xs, ys, bbox_crs)
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        raise Invalid("bbox", f"outside the area of {bbox_crs.key} / 超出坐标系范围")
    return (float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()))


def _instant(text: str, end: bool) -> dt.datetime | None:
    if text in ("", ".."):
        return None
    if len(text) == 10:  # a date: its whole day in the city, as date attributes are stored
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise Invalid("datetime", "an RFC 3339 date or date-time / 须为 RFC 3339 日期或时间") from None
        return dt.datetime.combine(day, dt.time.max if end else dt.time.min, CITY_TZ).astimezone(dt.UTC)
    try:
        at = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("datetime", "an RFC 3339 date or date-time / 须为 RFC 3339 日期或时间") from None
    if at.tzinfo is None:
        raise Invalid("datetime", "a date-time needs its zone (Z or +08:00) / 时间须带时区")
    return at.astimezone(dt.UTC)


def datetime_param(value: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """`datetime`: an instant, or `start/end` with `..` (or nothing) for an open end."""
    if "/" in value:
        start_text, end_text = value.split("/", 1)
        start, end = _instant(start_text.strip(), False), _instant(end_text.strip(), True)
        if start is not None and end is not None and start > end:
            raise Invalid("datetime", "the start is after the end / 开始晚于结束")
        return start, end
    text = value.strip()
    if text in ("", ".."):
        raise Invalid("datetime", "an instant or an interval / 须为时刻或区间")
    return _instant(text, False), _instant(text, True)


# -- queryables (Part 3) --------------------------------------------------------------------------


def queryables(layer: Layer, fields: list[str] | None) -> dict[str, cql2.Queryable]:
    """What a filter on this layer may name: its attributes (those a grant allows) and geometry.

    The layer's time attribute is the feature's own time (t_start/t_end, indexed), so temporal
    functions on it see the feature's whole span."""
    out: dict[str, cql2.Queryable] = {}
    for a in layer.attributes:
        name = a["name"]
        if fields is not None and name not in fields:
            continue
        if name == layer.time_field:
            out[name] = cql2.Queryable(name, "datetime", a.get("title", name), is_time=True)
        else:
            out[name] = cql2.Queryable(name, a["type"], a.get("title", name))
    out[GEOMETRY] = cql2.Queryable(GEOMETRY, "geometry", "几何 / geometry")
    return out


def queryables_schema(layer: Layer, fields: list[str] | None, self_url: str) -> dict[str, Any]:
    """The queryables as the JSON Schema that Part 3 publishes."""
    props: dict[str, Any] = {}
    kinds = {a["name"]: a for a in layer.attributes}
    for name, q in queryables(layer, fields).items():
        if q.type == "geometry":
            fmt, ref = _GEOMETRY_SCHEMA.get(layer.geometry_type, _GEOMETRY_SCHEMA["any"])
            props[name] = {"title": q.title, "format": fmt, "x-ogc-role": "primary-geometry",
                           "$ref": f"https://geojson.org/schema/{ref}.json"}
            continue
        entry: dict[str, Any] = {"title": q.title, **_SCHEMA[kinds[name]["type"]]}
        if q.is_time:
            entry["x-ogc-role"] = "primary-interval-start" if layer.time_end_field else "primary-instant"
        elif name == layer.time_end_field:
            entry["x-ogc-role"] = "primary-interval-end"
        props[name] = entry
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": self_url, "type": "object",
            "title": layer.title, "properties": props, "additionalProperties": False}


class SqlTarget:
    """`cql2.SqlTarget` over the storage adapter: both adapters answer spatial tests exactly in SQL."""

    def __init__(self, adapter: SpatialAdapter) -> None:
        self.adapter = adapter

    def prop(self, name: str, type: str) -> ColumnElement[Any]:
        expr = self.adapter.prop(name, type)
        if type == "string" and self.adapter.dialect == "postgresql":
            expr = expr.collate("C")  # code-point order, as the Python evaluation compares
        return expr

    def time(self) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        return store.FEATURES.c.t_start, store.FEATURES.c.t_end

    def spatial(self, op: str, geom: shapely.Geometry) -> tuple[ColumnElement[bool], None]:
        clause, exact = self.adapter.spatial_clause(op, geom)
        if exact is not None:  # a row-wise test would need a post-filter, which would break paging
            raise cql2.FilterError(f"S_{op.upper()} cannot be evaluated in this database")
        return clause, None


def filter_clause(text: str, lang: str | None, filter_crs: str | None, qs: Mapping[str, cql2.Queryable],
                  adapter: SpatialAdapter) -> ColumnElement[bool]:
    """A CQL2 filter (text or JSON) checked against the queryables, as one SQL condition."""
    lang = lang or "cql2-text"
    if lang not in FILTER_LANGS:
        raise cql2.FilterError(f"filter-lang must be one of {', '.join(FILTER_LANGS)}",
                               field_name="filter-lang")
    if filter_crs:
        crs_param(filter_crs, "filter-crs")
    node = cql2.parse(text, qs, lang=lang, filter_crs=filter_crs or None)  # type: ignore[arg-type]
    clause, post = cql2.to_sql(node, SqlTarget(adapter))
    if post is not None:
        raise cql2.FilterError("this filter cannot be evaluated in the database / 无法在数据库中执行")
    return clause


# -- output ---------------------------------------------------------------------------------------


def geometries_geojson(geoms: list[Any], target: Crs) -> list[str]:
    """GeoJSON text of many CRS84 geometries, in `target` and its own axis order (vectorized)."""
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = geoms
    if target.key != CRS84.key:
        def move(c: Any) -> Any:
            x, y = crs_mod.from_canonical(c[:, 0], c[:, 1], target)
            return np.column_stack(crs_mod.swap_if_lat_first(x, y, target))

        arr = shapely.transform(arr, move)
    return [str(s) for s in shapely.to_geojson(arr)]


def estimate_matches(layer: Layer, box: BBox | None) -> float:
    """Features of the layer expected in a box, assuming they spread evenly over its extent."""
    if not layer.feature_count or not layer.bbox:
        return 0.0
    if box is None:
        return float(layer.feature_count)
    lx0, ly0, lx1, ly1 = layer.bbox
    w, h = min(box[2], lx1) - max(box[0], lx0), min(box[3], ly1) - max(box[1], ly0)
    if w < 0 or h < 0:
        return 0.0
    area = (lx1 - lx0) * (ly1 - ly0)
    return float(layer.feature_count) * (1.0 if area <= 0 else min(1.0, max(w, 1e-12) * max(h, 1e-12) / area))

