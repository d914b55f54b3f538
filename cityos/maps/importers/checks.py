"""Checks on the features of a file (要素校验): ids, Z, lat/lon swap, the move to CRS84, inside
China, geometry type, and repair of invalid shapes where that keeps the shape."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import shapely

from cityos.core.errors import Invalid
from cityos.maps import crs as crs_mod
from cityos.maps.importers.attributes import normal_names, typed_attributes
from cityos.maps.importers.source import REPORT_LIMIT, ImportResult, Rejected, Source, fid_text

GEOMETRY_TYPES = ("point", "line", "polygon", "any")
AREA_TOLERANCE = 0.01  # a repair may change a polygon's area by less than this fraction
# GEOS type ids → geometry family (2 is a LinearRing, 7 a GeometryCollection).
FAMILY = {0: "point", 4: "point", 1: "line", 2: "line", 5: "line", 3: "polygon", 6: "polygon", 7: "any"}
# GEOS validity messages in Chinese, for the bilingual reason.
VALIDITY_ZH = {
    "self-intersection": "自相交", "ring self-intersection": "环自相交", "too few points": "点数不足",
    "hole lies outside shell": "内环位于外环之外", "nested shells": "外环嵌套", "nested holes": "内环嵌套",
    "interior is disconnected": "内部不连通", "invalid coordinate": "坐标无效",
    "ring is not closed": "环未闭合", "duplicate rings": "重复的环",
}
_VALIDITY = re.compile(r"(.*?)\s*\[\s*(\S+)\s+(\S+)\s*\]")


class _Report:
    def __init__(self, fids: list[str | None]) -> None:
        self.fids = fids
        self.rejected: list[Rejected] = []
        self.total = 0
        self.out: set[int] = set()

    def alive(self, n: int) -> np.ndarray:
        """A mask of the features not rejected so far."""
        mask = np.ones(n, dtype=bool)
        mask[list(self.out)] = False
        return mask

    def reject(self, i: int, reason: str) -> None:
        if i in self.out:
            return
        self.out.add(i)
        self.total += 1
        if len(self.rejected) < REPORT_LIMIT:
            self.rejected.append(Rejected(i, self.fids[i], reason))


def finish(src: Source, expected: str | None, fid_field: str | None, swap: bool) -> ImportResult:
    """Check, move to CRS84 and repair what `src` holds; type its attributes (校验与入库准备)."""
    n = len(src.geoms)
    geoms = np.empty(n, dtype=object)
    geoms[:] = src.geoms
    fids, warnings = _resolve_fids(src, fid_field)
    report = _Report(fids)

    def where(i: int) -> str:
        return f"line {src.lines[i]}: " if src.lines else ""

    for i, reason in sorted(src.bad.items()):
        report.reject(i, reason)
    for i, reason in _fid_problems(fid_field, fids):
        report.reject(i, where(i) + reason)
    alive = report.alive(n)
    has_z = alive & shapely.has_z(geoms)
    if has_z.any():
        geoms[has_z] = shapely.force_2d(geoms[has_z])
        warnings.append(f"3D coordinates: Z dropped from {int(has_z.sum()):,} features / 已去除高程（Z）坐标")
    empty = alive & shapely.is_empty(geoms)
    for i in np.flatnonzero(empty).tolist():
        report.reject(i, where(i) + "empty geometry / 几何为空")
    live = np.flatnonzero(alive & ~empty)
    coords, index = shapely.get_coordinates(geoms[live], return_index=True)
    for k in np.unique(index[~np.isfinite(coords).all(axis=1)]).tolist():
        i = int(live[k])
        report.reject(i, where(i) + "coordinates are not finite numbers / 坐标含非数值")
    alive = report.alive(n)
    if swap:
        geoms[alive] = shapely.transform(geoms[alive], lambda c: c[:, ::-1])
    _check_placement(geoms[alive], src.crs, swap)
    if not _is_canonical(src.crs):
        geoms[alive] = shapely.transform(geoms[alive], lambda c: _canonical(c, src.crs))
    inside = _inside(geoms, alive)
    for i in np.flatnonzero(alive & ~inside).tolist():
        c = shapely.get_coordinates(geoms[i])
        x, y = c[~_in_china(c[:, 0], c[:, 1])][0]  # one vertex that is outside
        report.reject(i, where(i) + f"outside China after transform to CRS84, e.g. ({x:.6f}, {y:.6f}) / "
                                    "坐标超出中国范围")
    repaired = _check_shapes(geoms, alive & inside, expected, report, fids, where)
    keep = np.flatnonzero(report.alive(n)).tolist()
    families = {FAMILY.get(t, "any") for t in shapely.get_type_id(geoms[keep]).tolist()}
    attributes, rows = typed_attributes(src, keep)
    features = [(str(fids[i]), geoms[i], row) for i, row in zip(keep, rows, strict=True)]
    return ImportResult(
        features=features, rejected=report.rejected, repaired=repaired, source_crs=src.crs.key,
        geometry_type=expected or (families.pop() if len(families) == 1 else "any"),
        attributes=attributes, swapped=swap, rejected_total=report.total, warnings=warnings)


def _resolve_fids(src: Source, fid_field: str | None) -> tuple[list[str | None], list[str]]:
    n = len(src.geoms)
    if fid_field is not None:
        col = _find_column(src, fid_field)
        return [None if v is None or v == "" else fid_text(v) for v in src.columns[col]], []
    native = [f for i, f in enumerate(src.fids) if i not in src.bad]  # a broken feature's id does not count
    if native and None not in native and len(set(native)) == len(native):
        return list(src.fids), []
    warnings = []
    if any(f is not None for f in native):
        warnings.append("feature ids are missing or repeat: features numbered 1, 2, … instead / "
                        "要素编号缺失或重复，已按顺序编号")
    return [str(i + 1) for i in range(n)], warnings


def _find_column(src: Source, name: str) -> str:
    if name in src.columns:
        return name
    normal = dict(zip(normal_names(list(src.columns)), src.columns, strict=True))
    if name in normal:
        return normal[name]
    raise Invalid("fid_field", f"no attribute {name!r}; there are {', '.join(src.columns)} / 没有该属性")


def _fid_problems(fid_field: str | None, fids: list[str | None]) -> Iterator[tuple[int, str]]:
    if fid_field is None:
        return
    first: dict[str, int] = {}
    for i, fid in enumerate(fids):
        if fid is None:
            yield i, f"no {fid_field} / 缺少要素编号"
        elif fid in first:
            yield i, f"{fid_field} {fid[:40]!r} repeats feature {first[fid]} / 要素编号重复"
        else:
            first[fid] = i


def _is_canonical(crs: crs_mod.Crs) -> bool:
    return crs.key in (crs_mod.CANONICAL, "EPSG:4326")  # x = longitude in both, as files write them


def _canonical(coords: np.ndarray, crs: crs_mod.Crs) -> np.ndarray:
    lon, lat = crs_mod.to_canonical(coords[:, 0], coords[:, 1], crs)
    return np.column_stack([np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)])


def _in_china(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    inside: np.ndarray = crs_mod.in_china_bbox(lon, lat) & np.isfinite(lon) & np.isfinite(lat)
    return inside


def _inside(geoms: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Whether each feature lies in China's box: both corners of its bounds do (a box is convex)."""
    inside = np.zeros(len(geoms), dtype=bool)
    if alive.any():
        b = shapely.bounds(geoms[alive])
        inside[alive] = _in_china(b[:, 0], b[:, 1]) & _in_china(b[:, 2], b[:, 3])
    return inside


def _check_placement(geoms: np.ndarray, crs: crs_mod.Crs, swapped: bool) -> None:
    """Refuse a file whose points mostly fall outside China: lat/lon swapped, or the wrong CRS."""
    if not len(geoms):
        return
    sample = geoms[:: max(1, len(geoms) // 10_000)]
    b = shapely.bounds(sample)
    xs, ys = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    share = float(_in_china(*_canonical(np.column_stack([xs, ys]), crs).T).mean())
    if share >= 0.5:
        return
    if not swapped:
        flipped = float(_in_china(*_canonical(np.column_stack([ys, xs]), crs).T).mean())
        if flipped >= 0.5:
            raise Invalid("swap", f"latitude and longitude look swapped: {flipped:.0%} of the features "
                                  "fall in China only with x and y exchanged; import with swap=true to "
                                  "exchange them / 经纬度疑似颠倒，确认后请选择“交换经纬度”重新导入")
    raise Invalid("crs", f"{1 - share:.0%} of the features fall outside China in {crs.key}: is the "
                         "coordinate system right? / 大部分要素落在中国范围以外，请检查坐标系")


def _check_shapes(geoms: np.ndarray, ok: np.ndarray, expected: str | None, report: _Report,
                  fids: list[str | None], where: Callable[[int], str]) -> list[tuple[str, str]]:
    """Reject the wrong geometry type; repair invalid shapes where that is safe (make_valid)."""
    families = np.array([FAMILY.get(t, "any") for t in shapely.get_type_id(geoms).tolist()], dtype=object)
    if expected not in (None, "any"):
        for i in np.flatnonzero(ok & (families != expected)).tolist():
            report.reject(i, where(i) + f"expected a {expected}, got a {families[i]} / 几何类型不符")
        ok = ok & (families == expected)
    repaired: list[tuple[str, str]] = []
    for i in np.flatnonzero(ok & ~shapely.is_valid(geoms)).tolist():
        geom = geoms[i]
        what = _validity(shapely.is_valid_reason(geom))
        fixed, change = _repair(geom, families[i])
        if fixed is None:
            report.reject(i, where(i) + f"{what[0]}, cannot be repaired safely ({change}) / "
                                        f"{what[1]}，无法安全修复")
        else:
            geoms[i] = fixed
            repaired.append((str(fids[i]), f"{what[0]} repaired ({change}) / 已修复{what[1]}"))
    return repaired


def _validity(reason: str) -> tuple[str, str]:
    m = _VALIDITY.fullmatch(reason.strip())
    what, at = (m.group(1), f" at ({float(m.group(2)):.6f}, {float(m.group(3)):.6f})") if m else (reason, "")
    zh = VALIDITY_ZH.get(what.strip().lower(), "几何无效")
    return f"{what.strip().lower() or 'invalid geometry'}{at}", zh


def _repair(geom: Any, family: str) -> tuple[Any, str]:
    """make_valid's result if it keeps the type and (for polygons) the area within 1%, else None."""
    fixed = shapely.make_valid(geom)
    if family == "polygon" and shapely.get_type_id(fixed) == 7:  # keep the polygons, drop slivers
        parts = [p for p in shapely.get_parts(fixed) if shapely.get_type_id(p) in (3, 6)]
        fixed = shapely.union_all(parts) if parts else shapely.Polygon()
    if fixed.is_empty or FAMILY.get(int(shapely.get_type_id(fixed))) != family:
        return None, f"it would become a {fixed.geom_type}"
    if family == "polygon":
        before, after = geom.area, fixed.area
        change = abs(after - before) / before if before > 0 else math.inf
        if change >= AREA_TOLERANCE:
            return None, "area would change by " + ("more than 100%" if change > 1 else f"{change:.1%}")
        return fixed, f"area change {change:.2%}"
    if family == "line" and abs(fixed.length - geom.length) > AREA_TOLERANCE * geom.length:
        return None, "length would change"
    return fixed, "shape kept"

