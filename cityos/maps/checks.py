"""Checks on features before they are stored (要素校验): geometry kind, coordinates, validity
(repaired where that is safe), typed properties and time spans. All of a write's problems are
reported together, each naming the feature, and nothing is stored unless every feature passes.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from cityos.core import values
from cityos.core.errors import FieldError, Invalid
from cityos.core.workdays import CITY_TZ
from cityos.maps.store import NewFeature

# GEOS type ids → geometry family (2 is a LinearRing, 7 a GeometryCollection).
FAMILY = {0: "point", 4: "point", 1: "line", 2: "line", 5: "line", 3: "polygon", 6: "polygon", 7: "any"}
AREA_TOLERANCE = 0.01  # a repair may change a polygon's area by less than this fraction
REPORT_LIMIT = 100
FID_MAX = 128


_integer, _number, _boolean = values.to_integer, values.to_finite_number, values.to_boolean
_date, _datetime = values.to_date, values.to_datetime


_TYPED: dict[str, Callable[[Any], Any]] = {
    "string": str, "integer": _integer, "number": _number, "boolean": _boolean, "date": _date,
    "datetime": _datetime}


def typed_value(kind: str, value: Any) -> Any:
    """A value as the Python type of its attribute (for filters); ValueError if it is not one."""
    if value is None:
        raise ValueError("a value is required / 须给出取值")
    return _TYPED[kind](value)


def stored_value(kind: str, value: Any) -> Any:
    """A property as stored in JSON: dates as ISO text, date-times as ISO text with their offset."""
    if value is None or value == "" and kind != "string":
        return None
    typed = _TYPED[kind](value)
    return typed.isoformat() if kind in ("date", "datetime") else typed


def _instant(kind: str, value: Any, end: bool) -> dt.datetime:
    """A time attribute as a UTC instant; a date covers its whole day in the city."""
    if kind == "date":
        day = _date(value)
        at = dt.time.max if end else dt.time.min
        return dt.datetime.combine(day, at, CITY_TZ).astimezone(dt.UTC)
    return _datetime(value).astimezone(dt.UTC)


def _repair(geom: BaseGeometry, family: str) -> tuple[BaseGeometry | None, str]:
    """make_valid's result if it keeps the kind and (for polygons) the area within 1%."""
    fixed = shapely.make_valid(geom)
    if family == "polygon" and shapely.get_type_id(fixed) == 7:  # keep the polygons, drop slivers
        parts = [p for p in shapely.get_parts(fixed) if shapely.get_type_id(p) in (3, 6)]
        fixed = shapely.union_all(parts) if parts else shapely.Polygon()
    if fixed.is_empty or (family != "any" and FAMILY.get(int(shapely.get_type_id(fixed))) != family):
        return None, f"it would become a {fixed.geom_type}"
    if family == "polygon":
        before, after = geom.area, fixed.area
        change = abs(after - before) / before if before > 0 else math.inf
        if change >= AREA_TOLERANCE:
            return None, "the area would change by " + ("more than 100%" if change > 1 else f"{change:.1%}")
        return fixed, f"area change {change:.2%}"
    return fixed, "shape kept"


def _indexes(mask: Any) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]


def check_features(
    geometry_type: str, attributes: Sequence[Mapping[str, str]], time_field: str | None,
    time_end_field: str | None, features: Sequence[tuple[Any, Any, Any]], new_fid: Callable[[], str],
) -> tuple[list[NewFeature], list[tuple[str, str]]]:
    """Check and normalise (fid, geometry, properties) triples; Invalid lists every problem
    (the first REPORT_LIMIT), each under `features[i]` with the feature's id."""
    kinds = {a["name"]: a["type"] for a in attributes}
    errors: list[FieldError] = []
    fids = [new_fid() if f[0] is None or f[0] == "" else str(f[0]) for f in features]

    def fail(i: int, reason: str) -> None:
        errors.append(FieldError(f"features[{i}]", f"fid {fids[i]!r}: {reason}"))

    geoms = np.empty(len(features), dtype=object)
    geoms[:] = [f[1] for f in features]
    alive = np.array([isinstance(g, BaseGeometry) for g in geoms], dtype=bool)
    for i in _indexes(~alive):
        fail(i, "no geometry / 缺少几何")
    geoms[alive] = shapely.force_2d(geoms[alive])
    empty = np.zeros(len(geoms), dtype=bool)
    empty[alive] = shapely.is_empty(geoms[alive])
    for i in _indexes(empty):
        fail(i, "empty geometry / 几何为空")
    alive &= ~empty
    bounds = np.full((len(geoms), 4), np.nan)
    if alive.any():
        bounds[alive] = shapely.bounds(geoms[alive])
    in_range = (np.isfinite(bounds).all(axis=1) & (bounds[:, 0] >= -180) & (bounds[:, 2] <= 180)
                & (bounds[:, 1] >= -90) & (bounds[:, 3] <= 90))
    for i in _indexes(alive & ~in_range):
        fail(i, "coordinates outside longitude -180..180, latitude -90..90 (is this CRS84?) "
                     "/ 坐标超出经纬度范围，请确认为 CRS84 经纬度")
    alive &= in_range
    families = np.array([FAMILY.get(int(t), "any") if t >= 0 else "" for t in shapely.get_type_id(geoms)],
                        dtype=object)
    if geometry_type != "any":
        for i in _indexes(alive & (families != geometry_type)):
            fail(i, f"expected a {geometry_type}, got a {geoms[i].geom_type} / 几何类型与图层不符")
        alive &= families == geometry_type
    repaired: list[tuple[str, str]] = []
    invalid = np.zeros(len(geoms), dtype=bool)
    invalid[alive] = ~shapely.is_valid(geoms[alive])
    for i in _indexes(invalid):
        reason = shapely.is_valid_reason(geoms[i])
        fixed, change = _repair(geoms[i], str(families[i]))
        if fixed is None:
            fail(i, f"invalid geometry ({reason}), cannot be repaired safely: {change} "
                         "/ 几何无效且无法安全修复")
        else:
            geoms[i] = fixed
            repaired.append((fids[i], f"{reason} repaired ({change}) / 已修复"))
    seen: set[str] = set()
    out: list[NewFeature] = []
    for i, (_fid, _geom, raw) in enumerate(features):
        fid = fids[i]
        if len(fid) > FID_MAX:
            fail(i, f"fid longer than {FID_MAX} characters / 要素标识过长")
        if fid in seen:
            fail(i, "fid appears twice / 要素标识重复")
        seen.add(fid)
        props: dict[str, Any] = {}
        for name, value in (raw or {}).items():
            if name not in kinds:
                fail(i, f"unknown property {name!r} / 图层没有此属性")
                continue
            try:
                props[name] = stored_value(kinds[name], value)
            except (TypeError, ValueError) as exc:
                fail(i, f"{name}: {exc}")
        t0 = t1 = None
        try:
            if time_field and props.get(time_field) is not None:
                t0 = _instant(kinds[time_field], props[time_field], end=False)
                t1 = t0 if not time_end_field else None
            if time_end_field and props.get(time_end_field) is not None:
                t1 = _instant(kinds[time_end_field], props[time_end_field], end=True)
                if t0 is not None and t1 < t0:
                    fail(i, f"{time_end_field} is before {time_field} / 结束时间早于开始时间")
        except ValueError as exc:
            fail(i, str(exc))
        if alive[i]:
            out.append((fid, geoms[i], props, t0, t1))
        if len(errors) >= REPORT_LIMIT:
            break
    if errors:
        raise Invalid.many(errors[:REPORT_LIMIT])
    return out, repaired
