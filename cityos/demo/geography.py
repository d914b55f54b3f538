"""The demo city's geography (演示城市地理): districts, streets, communities, roads, river, grid.

There is no survey data to ship, so the geometry is grown, deterministically, from the rough
inputs of `geography.toml` and the territory of `data.py` (names and codes):

- the nine districts and counties (区县) partition a hand-drawn outline of the prefecture: the
  four urban districts split a wobbly ellipse around the city by a Voronoi of points set out
  around the centre, the five counties and county-level cities split the rest by a Voronoi of
  their seats. They are approximations, NOT survey or official boundaries;
- in each urban district, its subdistricts (街道) split the district's part of the built-up core
  (a seeded Voronoi with Lloyd relaxation) and its towns (镇) the rest of the district;
- a street's communities (社区) split the street the same way; communities partition streets,
  streets partition districts;
- the roads are a turned, wavy lattice over the core, classed 主干路/次干路/支路; the Songhua is a
  smoothed centreline and a water surface;
- unit grid cells (单元网格) cover the communities through `cityos.maps.grids`.

Geometry is built in metres (a transverse Mercator at the city centre) and returned in WGS-84
longitude/latitude. Every layer is a list of features (id, shapely geometry, properties), and
every call returns the same features: randomness comes from string-seeded generators.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPoint, Point, Polygon
from shapely.geometry.base import BaseGeometry

from cityos.demo import data
from cityos.maps import grids

Feature = tuple[str, BaseGeometry, dict[str, Any]]

DATA = Path(__file__).with_name("geography.toml")
GRID = 2.0**-10  # overlays snap to about 1 mm, so that neighbours share their edges exactly
# A straight edge in metres is a curve in degrees: densified to 100 m before the conversion, the
# edges of neighbours built with different vertices still meet to a tenth of a millimetre.
SEGMENT_M = 100.0
LLOYD_ROUNDS = 6

# What the last character of a unit's name says it is (GB/T 2260 / GB/T 10114 kinds).
UNIT_KINDS: dict[str, tuple[str, str]] = {
    "区": ("市辖区", "district"), "县": ("县", "county"), "市": ("县级市", "county-level city"),
}
STREET_KINDS: dict[str, tuple[str, str]] = {
    "街道": ("街道", "subdistrict"), "镇": ("镇", "town"), "乡": ("乡", "township"),
}
ROAD_CLASSES: dict[str, tuple[str, str, int]] = {  # class -> Chinese, English, typical width (m)
    "main": ("主干路", "main road", 40), "secondary": ("次干路", "secondary road", 24),
    "branch": ("支路", "branch road", 14),
}


@functools.cache
def _config() -> dict[str, Any]:
    return tomllib.loads(DATA.read_text(encoding="utf-8"))


@functools.cache
def _projection() -> tuple[grids.Transform, grids.Transform]:
    lon, lat = _config()["city"]["centre"]
    return grids.local_projection([], centre=(lon, lat))


def _to_m(geom: BaseGeometry) -> BaseGeometry:
    return shapely.set_precision(shapely.transform(geom, _projection()[0]), GRID)


def _to_deg(geoms: Sequence[BaseGeometry]) -> list[BaseGeometry]:
    dense = shapely.segmentize(np.asarray(geoms, dtype=object), SEGMENT_M)
    out = shapely.transform(dense, _projection()[1])
    return list(out.tolist())


def _point_m(lonlat: Sequence[float]) -> Point:
    return _to_m(Point(lonlat))


def _rng(*key: object) -> random.Random:
    """A generator seeded by the demo's seed and a key (str seeds hash the same on every run)."""
    return random.Random(":".join(str(k) for k in (data.SEED, *key)))


def _kind(name: str, kinds: dict[str, tuple[str, str]]) -> tuple[str, str]:
    return next(v for suffix, v in kinds.items() if name.endswith(suffix))


# -- shapes ----------------------------------------------------------------------------------


def _wobbly_ellipse(centre: Point, rx: float, ry: float, wobble: float, rng: random.Random) -> Polygon:
    """An ellipse whose radius wavers smoothly (a few seeded harmonics) by about `wobble`."""
    harmonics = [(k, rng.uniform(0.4, 1.0) / k, rng.uniform(0, 2 * math.pi)) for k in range(2, 6)]
    scale = wobble / sum(a for _k, a, _p in harmonics)
    theta = np.linspace(0, 2 * math.pi, 180, endpoint=False)
    r = 1 + scale * sum(a * np.sin(k * theta + p) for k, a, p in harmonics)
    return Polygon(np.column_stack([centre.x + rx * r * np.cos(theta), centre.y + ry * r * np.sin(theta)]))


def _voronoi(points: Sequence[Point], frame: BaseGeometry) -> list[BaseGeometry]:
    """The Voronoi cells of the points (in their order), clipped to the frame."""
    cells = shapely.get_parts(shapely.voronoi_polygons(MultiPoint(points), extend_to=frame, ordered=True))
    return list(shapely.intersection(cells, frame, grid_size=GRID).tolist())


def _nw_first(geoms: list[BaseGeometry]) -> list[BaseGeometry]:
    """Pieces ordered in rows of 1 km from north to south, each row west to east."""
    def key(g: BaseGeometry) -> tuple[int, float]:
        p = g.point_on_surface()
        return (-round(p.y / 1000), p.x)
    return sorted(geoms, key=key)


def _split(poly: BaseGeometry, n: int, rng: random.Random) -> list[BaseGeometry]:
    """Split a polygon into n parts of similar size (seeded points, Lloyd-relaxed Voronoi)."""
    if n <= 1:
        return [poly]
    minx, miny, maxx, maxy = poly.bounds
    shapely.prepare(poly)
    points: list[Point] = []
    while len(points) < n:
        p = Point(rng.uniform(minx, maxx), rng.uniform(miny, maxy))
        if poly.contains(p):
            points.append(p)
    for _ in range(LLOYD_ROUNDS):
        cells = _voronoi(points, poly)
        points = [c.centroid if poly.contains(c.centroid) else c.point_on_surface() for c in cells]
    return _nw_first(_voronoi(points, poly))


# -- areas -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Areas:
    """The polygons of every level, in metres, by code; the core and the river."""

    outline: BaseGeometry
    core: BaseGeometry
    districts: dict[str, BaseGeometry]
    streets: dict[str, BaseGeometry]
    communities: dict[str, BaseGeometry]
    river_line: LineString
    river_water: BaseGeometry


def _chaikin(coords: np.ndarray[Any, Any], rounds: int = 4) -> np.ndarray[Any, Any]:
    """Chaikin's corner cutting: a smooth open curve through the course's bends."""
    for _ in range(rounds):
        a, b = coords[:-1], coords[1:]
        cut = np.empty((2 * len(a), 2))
        cut[0::2], cut[1::2] = 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b
        coords = np.vstack([coords[:1], cut, coords[-1:]])
    return coords


def _districts(outline: BaseGeometry, urban: BaseGeometry) -> dict[str, BaseGeometry]:
    units = _config()["units"]
    urban_codes = [c for c, name, _en in data.DISTRICTS if _kind(name, UNIT_KINDS)[1] == "district"]
    rural_codes = [c for c, _n, _en in data.DISTRICTS if c not in urban_codes]
    out: dict[str, BaseGeometry] = {}
    for codes, frame in ((urban_codes, urban),
                         (rural_codes, shapely.difference(outline, urban, grid_size=GRID))):
        cells = _voronoi([_point_m(units[c]) for c in codes], frame)
        out.update(zip(codes, cells, strict=True))
    return out


@functools.cache
def _areas() -> _Areas:
    cfg = _config()
    outline = _to_m(Polygon(cfg["city"]["outline"]))
    centre = _point_m(cfg["city"]["centre"])
    u = cfg["urban"]
    rx, ry = (r * 1000 for r in u["radii_km"])
    urban = shapely.intersection(
        _wobbly_ellipse(_point_m(u["centre"]), rx, ry, u["wobble"], _rng("urban")), outline, grid_size=GRID)
    radius = u["core_radius_km"] * 1000
    core = shapely.set_precision(
        _wobbly_ellipse(centre, radius, radius, u["core_wobble"], _rng("core")), GRID)
    districts = _districts(outline, urban)
    streets: dict[str, BaseGeometry] = {}
    for district, names in data.STREETS.items():
        codes = [f"{district}{i:03d}" for i in range(1, len(names) + 1)]
        in_core = [_kind(name, STREET_KINDS)[1] == "subdistrict" for name, _en in names]
        core_part = shapely.intersection(districts[district], core, grid_size=GRID)
        rest = shapely.difference(districts[district], core, grid_size=GRID)
        for inside, frame in ((True, core_part), (False, rest)):
            mine = [c for c, flag in zip(codes, in_core, strict=True) if flag is inside]
            parts = _split(frame, len(mine), _rng("streets", district, inside))
            streets.update(zip(mine, parts, strict=True))
    communities: dict[str, BaseGeometry] = {}
    for street, names in data.COMMUNITIES.items():
        codes = [f"{street}{j:03d}" for j in range(1, len(names) + 1)]
        communities.update(zip(codes, _split(streets[street], len(codes), _rng("communities", street)),
                               strict=True))
    r = cfg["river"]
    line = LineString(_chaikin(np.asarray(shapely.get_coordinates(_to_m(LineString(r["course"]))))))
    water = shapely.intersection(line.buffer(r["width_m"] / 2, cap_style="flat"), outline, grid_size=GRID)
    return _Areas(outline, core, districts, streets, communities, line, water)


# -- roads -----------------------------------------------------------------------------------


def _road_lines() -> list[tuple[str, LineString]]:
    """The wavy lattice over the core: (class, line) in metres, before clipping."""
    cfg, core = _config()["roads"], _areas().core
    spacing = cfg["spacing_m"]
    centre = core.centroid
    reach = float(shapely.hausdorff_distance(centre, core.exterior)) + spacing
    steps = int(reach // spacing)
    angle = math.radians(cfg["rotation_deg"])
    rng = _rng("roads")
    t = np.arange(-reach, reach + 1, 100.0)
    lines: list[tuple[str, LineString]] = []
    for direction in (0.0, math.pi / 2):
        along = np.array([math.cos(angle + direction), math.sin(angle + direction)])
        across = np.array([-along[1], along[0]])
        for i in range(-steps, steps + 1):
            cls = "main" if i % 4 == 0 else "secondary" if i % 2 == 0 else "branch"
            amp, wavelength = rng.uniform(*cfg["wave_m"]), rng.uniform(*cfg["wavelength_m"])
            wave = amp * np.sin(2 * math.pi * t / wavelength + rng.uniform(0, 2 * math.pi))
            xy = np.array([centre.x, centre.y]) + t[:, None] * along + (i * spacing + wave)[:, None] * across
            lines.append((cls, LineString(xy)))
    return lines


def _road_names() -> dict[str, Iterator[str]]:
    """Endless name sources per class: the lists of geography.toml, then again with 二, 三..."""
    cfg = _config()["roads"]
    branch = [w + s for s in cfg["branch_suffixes"] for w in cfg["branch_words"]]
    lists = {"main": cfg["main"], "secondary": cfg["secondary"], "branch": branch}
    again = "一二三四五六七八九"

    def names(base: list[str]) -> Iterator[str]:
        for round_ in itertools.count():
            tag = again[round_ % len(again)] if round_ else ""
            yield from (f"{name}{tag}" for name in base)

    return {cls: names(base) for cls, base in lists.items()}


@functools.cache
def _roads() -> tuple[tuple[str, str, bool, BaseGeometry], ...]:
    areas, min_length = _areas(), _config()["roads"]["min_length_m"]
    shapely.prepare(areas.river_water)
    names = _road_names()
    pieces: list[tuple[str, str, bool, BaseGeometry]] = []
    for cls, line in _road_lines():
        clipped = shapely.intersection(line, areas.core)
        if cls != "main":  # only main roads cross the river, on bridges
            clipped = shapely.difference(clipped, areas.river_water)
        parts = [p for p in shapely.get_parts(clipped).tolist()
                 if p.geom_type == "LineString" and p.length >= min_length]
        if parts:
            name = next(names[cls])
            on_water = shapely.length(shapely.intersection(parts, areas.river_water))
            pieces += [(name, cls, bool(w > 1.0), p) for p, w in zip(parts, on_water, strict=True)]
    return tuple(pieces)


# -- layers ----------------------------------------------------------------------------------


def _area_km2(geom: BaseGeometry) -> float:
    return round(float(shapely.area(geom)) / 1e6, 3)


def districts() -> list[Feature]:
    """The nine districts and counties (区县), with GB/T 2260 codes; approximate boundaries."""
    areas, units = _areas(), _config()["units"]
    codes = [c for c, _n, _e in data.DISTRICTS]
    geoms = _to_deg([areas.districts[c] for c in codes])
    out: list[Feature] = []
    for (code, name, name_en), geom in zip(data.DISTRICTS, geoms, strict=True):
        kind_zh, kind = _kind(name, UNIT_KINDS)
        out.append((code, geom, {"code": code, "name": name, "name_en": name_en, "kind": kind,
                                 "kind_zh": kind_zh, "seed_point": list(units[code]),
                                 "area_km2": _area_km2(areas.districts[code])}))
    return out


def streets() -> list[Feature]:
    """The streets and towns (街道/乡镇) of the four urban districts, with their data.py codes."""
    areas = _areas()
    rows = [(f"{d}{i:03d}", d, name, name_en) for d, names in data.STREETS.items()
            for i, (name, name_en) in enumerate(names, start=1)]
    geoms = _to_deg([areas.streets[code] for code, *_ in rows])
    out: list[Feature] = []
    for (code, district, name, name_en), geom in zip(rows, geoms, strict=True):
        kind_zh, kind = _kind(name, STREET_KINDS)
        out.append((code, geom, {"code": code, "district": district, "name": name, "name_en": name_en,
                                 "kind": kind, "kind_zh": kind_zh,
                                 "area_km2": _area_km2(areas.streets[code])}))
    return out


def _community_rows() -> list[tuple[str, str, str, str]]:
    return [(f"{s}{j:03d}", s, name, name_en) for s, names in data.COMMUNITIES.items()
            for j, (name, name_en) in enumerate(names, start=1)]


def communities() -> list[Feature]:
    """The communities (社区) data.py defines, each a part of its street."""
    areas = _areas()
    rows = _community_rows()
    geoms = _to_deg([areas.communities[code] for code, *_ in rows])
    return [(code, geom, {"code": code, "street": street, "district": code[:6], "name": name,
                          "name_en": name_en, "area_km2": _area_km2(areas.communities[code])})
            for (code, street, name, name_en), geom in zip(rows, geoms, strict=True)]


def roads() -> list[Feature]:
    """The street network (道路) over the core: named roads classed 主干路/次干路/支路."""
    pieces = _roads()
    geoms = _to_deg([g for *_x, g in pieces])
    out: list[Feature] = []
    for n, ((name, cls, crosses, metric), geom) in enumerate(zip(pieces, geoms, strict=True), start=1):
        zh, en, width = ROAD_CLASSES[cls]
        out.append((f"road-{n:04d}", geom, {"name": name, "class": zh, "class_en": en, "width_m": width,
                                            "length_m": round(metric.length, 1),
                                            "crosses_river": crosses}))
    return out


def river() -> list[Feature]:
    """The Songhua (松花江): its water surface (a polygon) and its centreline (a line)."""
    areas, r = _areas(), _config()["river"]
    water, line = _to_deg([areas.river_water, areas.river_line])
    props = {"name": r["name"], "name_en": r["name_en"]}
    return [("songhua-water", water, {**props, "kind": "water", "area_km2": _area_km2(areas.river_water)}),
            ("songhua-centreline", line, {**props, "kind": "centreline",
                                          "length_km": round(areas.river_line.length / 1000, 2)})]


def outline() -> BaseGeometry:
    """The city's (approximate) outline, which the nine districts partition."""
    return _to_deg([_areas().outline])[0]


@functools.cache
def _cells(cell_m: float) -> tuple[grids.Cell, ...]:
    polygons = {code: geom for code, geom, _p in communities()}
    return tuple(grids.generate_cells(polygons, cell_m, centre=tuple(_config()["city"]["centre"])))


def grid_cells(cell_m: float = 200.0) -> list[Feature]:
    """Unit grid cells (单元网格) of about cell_m x cell_m over the communities."""
    names = {code: name for code, _s, name, _e in _community_rows()}
    cells = _cells(float(cell_m))
    metric = shapely.transform(np.asarray([g for _c, g in cells], dtype=object), _projection()[0])
    return [(str(code), geom, {"code": str(code), "community": code.community_code,
                               "community_name": names[code.community_code], "street": code.street_code,
                               "district": code.county, "seq": code.seq, "area_m2": round(float(a), 1)})
            for (code, geom), a in zip(cells, shapely.area(metric), strict=True)]
