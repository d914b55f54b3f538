"""Unit grids (单元网格) of GB/T 30428.1: cell codes, generating cells over communities, checking
them, and assigning geo-tagged records (cases, devices, facilities) to their cell.

The code. GB/T 30428.1-2013 (数字化城市管理信息系统 第1部分：单元网格), which replaced
CJ/T 213-2005 (城市市政综合监管信息系统 单元网格划分与编码规则), codes a unit cell by the
administrative units it lies in followed by its number inside its community:

| digits | part | source |
|---|---|---|
| 1-6   | county-level division (县级及县级以上行政区划代码) | GB/T 2260, e.g. 220202 昌邑区 |
| 7-9   | street or town (街道（乡镇）代码)                  | GB/T 10114, e.g. 001 |
| 10-12 | community (社区代码)                             | the statistical code (统计用区划代码) |
| 13-16 | cell sequence number (单元网格顺序码)              | 0001-9999 inside the community |

16 digits in all. We recall the 4-digit sequence from the 2013 standard but could not check its
text here (no network); CJ/T 213-2005 numbered cells with fewer digits, and local standards
vary (Beijing's DB11 uses 3, for 15 digits), so imports of other widths need converting. Four
digits is what a community needs: at the standard's typical cell of about 100 m x 100 m
(10,000 m²), a 1 km² community already has about 100 cells. The first 12 digits are exactly the
12-digit statistical code of the community, so a cell code also names its community and street.

The cells. The standard bounds cells by streets, lanes, rivers and property lines; every cell lies
inside one community, and cells cover their community without gaps or overlaps. Lacking
parcel data, `generate_cells` covers each community with a square lattice of `cell_m` (100 m by
default) in a local transverse Mercator projection, clips it to the community, and merges each
sliver under 10 % of a cell into the neighbour it shares the longest edge with. Sequence numbers
run in rows from north to south, each row from west to east (the order local rules such as
DB11 spell out: 从西向东、由北至南), so the numbering is stable for the same input.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from cityos.core.errors import Invalid

# The parts of a code: (field, width, Chinese name), read by GridCode and parse_code.
PARTS: tuple[tuple[str, int, str], ...] = (
    ("county", 6, "县级行政区划代码"),
    ("street", 3, "街道代码"),
    ("community", 3, "社区代码"),
    ("seq", 4, "单元网格顺序码"),
)
CODE_LENGTH = sum(width for _f, width, _zh in PARTS)  # 16
COMMUNITY_LENGTH = CODE_LENGTH - PARTS[-1][1]  # 12: the community's statistical code
MAX_SEQ = 10 ** PARTS[-1][1] - 1
SLIVER = 0.10  # pieces under this share of a full cell merge into a neighbour
# Overlays snap to a 2^-20 m (about 1 µm) grid: neighbouring cells then share their edges exactly,
# and a power of two keeps lattice coordinates and GEOS's snapping in exact agreement.
GRID = 2.0**-20
# Edges are straight in longitude/latitude, but the metric projection bends them (by millimetres
# over kilometres): densifying inputs to ~10 m segments first keeps cells inside the community.
SEGMENT_DEG = 1e-4
_DIGITS = re.compile(r"[0-9]+")

Floats = NDArray[np.float64]
Geoms = NDArray[np.object_]
Cell = tuple["GridCode", BaseGeometry]


@dataclass(frozen=True)
class GridCode:
    """A unit cell's code (单元网格代码): county 6 + street 3 + community 3 + sequence 4 digits."""

    county: str
    street: str
    community: str
    seq: int

    def __post_init__(self) -> None:
        for name, width, zh in PARTS[:-1]:
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) != width or not _DIGITS.fullmatch(value):
                raise Invalid("code", f"{name} must be {width} digits / {zh}须为{width}位数字")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or not 1 <= self.seq <= MAX_SEQ:
            raise Invalid("code", f"seq must be 1-{MAX_SEQ} / 单元网格顺序码须在1至{MAX_SEQ}之间")

    def __str__(self) -> str:
        return f"{self.community_code}{self.seq:0{PARTS[-1][1]}d}"

    @property
    def street_code(self) -> str:
        """The street's 9-digit code (county + street)."""
        return self.county + self.street

    @property
    def community_code(self) -> str:
        """The community's 12-digit statistical code (county + street + community)."""
        return self.county + self.street + self.community

    @classmethod
    def of(cls, community_code: str, seq: int) -> GridCode:
        """The code of the seq-th cell of a community given by its 12-digit code."""
        if len(community_code) != COMMUNITY_LENGTH or not _DIGITS.fullmatch(community_code):
            raise Invalid("community", f"must be {COMMUNITY_LENGTH} digits / 社区代码须为"
                                       f"{COMMUNITY_LENGTH}位数字")
        return cls(community_code[:6], community_code[6:9], community_code[9:12], seq)


def parse_code(s: str) -> GridCode:
    """Parse a 16-digit unit cell code (单元网格代码), refusing any other width or character."""
    text = s.strip() if isinstance(s, str) else ""
    if len(text) != CODE_LENGTH or not _DIGITS.fullmatch(text):
        raise Invalid("code", f"a unit cell code is {CODE_LENGTH} digits (county 6 + street 3 + "
                              f"community 3 + sequence 4) / 单元网格代码须为{CODE_LENGTH}位数字"
                              "（县级行政区划6位+街道3位+社区3位+顺序码4位）")
    return GridCode.of(text[:COMMUNITY_LENGTH], int(text[COMMUNITY_LENGTH:]))


# -- projection ------------------------------------------------------------------------------

Transform = Callable[[Floats], Floats]


def local_projection(geoms: Iterable[BaseGeometry],
                     centre: tuple[float, float] | None = None) -> tuple[Transform, Transform]:
    """To and from a transverse Mercator in metres centred on the geometries (WGS-84 lon/lat).

    The centre is rounded to 0.1 degree so that nearby inputs share one lattice."""
    if centre is None:
        minx, miny, maxx, maxy = shapely.total_bounds(np.asarray(list(geoms), dtype=object))
        centre = (round((minx + maxx) / 2, 1), round((miny + maxy) / 2, 1))
    lon0, lat0 = centre
    tm = f"+proj=tmerc +lat_0={lat0} +lon_0={lon0} +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
    fwd = Transformer.from_crs("EPSG:4326", tm, always_xy=True)
    inv = Transformer.from_crs(tm, "EPSG:4326", always_xy=True)

    def apply(t: Transformer) -> Transform:
        def run(xy: Floats) -> Floats:
            x, y = t.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])
        return run

    return apply(fwd), apply(inv)


# -- generation ------------------------------------------------------------------------------


@dataclass
class _Piece:
    """A cell in the making: its lattice row and column and its (metric) geometry."""

    row: int
    col: int
    geom: BaseGeometry | None  # None once merged into a neighbour

    @property
    def order(self) -> tuple[int, int, float, float]:
        assert self.geom is not None
        p = shapely.point_on_surface(self.geom)
        return (-self.row, self.col, -round(p.y, 3), round(p.x, 3))


def _cover(poly: BaseGeometry, cell_m: float) -> list[_Piece]:
    """The lattice squares over a metric polygon, clipped to it, one piece per connected part."""
    minx, miny, maxx, maxy = poly.bounds
    cols = np.arange(math.floor(minx / cell_m), math.ceil(maxx / cell_m))
    rows = np.arange(math.floor(miny / cell_m), math.ceil(maxy / cell_m))
    cc, rr = (a.ravel() for a in np.meshgrid(cols, rows))

    def snap(v: Floats) -> Floats:
        return np.round(v / GRID) * GRID

    boxes = shapely.box(snap(cc * cell_m), snap(rr * cell_m), snap((cc + 1) * cell_m),
                        snap((rr + 1) * cell_m))
    shapely.prepare(poly)
    inside = shapely.contains_properly(poly, boxes)
    edge = np.flatnonzero(shapely.intersects(poly, boxes) & ~inside)
    clipped = shapely.intersection(boxes[edge], poly, grid_size=GRID)
    parts, src = shapely.get_parts(clipped, return_index=True)
    polygonal = (shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)
    pieces = [_Piece(int(rr[k]), int(cc[k]), boxes[k]) for k in np.flatnonzero(inside)]
    pieces += [_Piece(int(rr[edge[s]]), int(cc[edge[s]]), g)
               for g, s in zip(parts[polygonal], src[polygonal], strict=True)]
    return pieces


def _merge_pass(pieces: list[_Piece], small: list[bool], into_small: bool) -> bool:
    """Merge each small piece into the neighbour it shares the longest edge with; True if any."""
    tree = shapely.STRtree([p.geom for p in pieces])
    merged = False
    for k, piece in enumerate(pieces):
        if not small[k] or piece.geom is None:
            continue
        cands = [m for m in tree.query(piece.geom, predicate="intersects")
                 if m != k and pieces[m].geom is not None and (into_small or not small[m])]
        if not cands:
            continue
        shared = shapely.length(shapely.intersection(
            piece.geom, np.asarray([pieces[m].geom for m in cands], dtype=object), grid_size=GRID))
        best = int(np.argmax(shared))
        if shared[best] <= 0:
            continue  # touching at a point only: a union would not be one polygon
        target = pieces[cands[best]]
        union = shapely.union(target.geom, piece.geom, grid_size=GRID)
        if union.geom_type != "Polygon":
            continue
        target.geom = union
        piece.geom = None
        merged = True
    return merged


def _merge_slivers(pieces: list[_Piece], min_area: float) -> list[_Piece]:
    """Fold slivers into full neighbours, then into any neighbour; isolated ones stay cells."""
    for into_small in (False, True):
        while True:
            pieces = [p for p in pieces if p.geom is not None]
            small = [bool(shapely.area(p.geom) < min_area) for p in pieces]
            if not any(small) or not _merge_pass(pieces, small, into_small):
                break
    return [p for p in pieces if p.geom is not None]


def generate_cells(community_polygons: Mapping[str, BaseGeometry], cell_m: float = 100.0,
                   centre: tuple[float, float] | None = None) -> list[Cell]:
    """Cover each community (12-digit code -> WGS-84 polygon) with unit cells of about cell_m.

    Cells are squares of a lattice in a local metric projection (around `centre`, by default the
    inputs' centre), clipped to their community; slivers under 10 % of a cell join a neighbour.
    Returns (code, polygon) pairs, communities in code order, cells in sequence order."""
    if not cell_m > 0 or not math.isfinite(cell_m):
        raise Invalid("cell_m", "must be a positive number of metres / 网格边长须为正数（米）")
    codes = sorted(community_polygons)
    for code in codes:
        GridCode.of(code, 1)  # validates the community code
        if not isinstance(community_polygons[code], BaseGeometry) or \
                community_polygons[code].geom_type not in ("Polygon", "MultiPolygon"):
            raise Invalid("community", f"{code}: not a polygon / 社区范围须为多边形")
    if not codes:
        return []
    lonlat = np.asarray([community_polygons[c] for c in codes], dtype=object)
    to_m, to_deg = local_projection(lonlat, centre)
    metric = shapely.set_precision(shapely.transform(shapely.segmentize(lonlat, SEGMENT_DEG), to_m), GRID)
    min_area = SLIVER * cell_m * cell_m
    out_codes: list[GridCode] = []
    out_geoms: list[BaseGeometry] = []
    for code, poly in zip(codes, metric, strict=True):
        if poly.is_empty:
            continue
        # Merged cells stay under 2 full cells, so this refuses before building millions of boxes.
        n = poly.area / (cell_m * cell_m) / 2
        if n <= MAX_SEQ:
            pieces = sorted(_merge_slivers(_cover(poly, cell_m), min_area), key=lambda p: p.order)
            n = len(pieces)
        if n > MAX_SEQ:
            raise Invalid("cell_m", f"community {code} would have over {MAX_SEQ} cells / "
                                    f"社区{code}网格数超过{MAX_SEQ}，请加大网格边长")
        out_codes += [GridCode.of(code, seq) for seq in range(1, len(pieces) + 1)]
        out_geoms += [p.geom for p in pieces]
    geoms = shapely.transform(np.asarray(out_geoms, dtype=object), to_deg)
    return list(zip(out_codes, geoms.tolist(), strict=True))


# -- checks and assignment -------------------------------------------------------------------


def check_cells(cells: Sequence[Cell], communities: Mapping[str, BaseGeometry] | None = None,
                tolerance_m2: float = 0.01) -> list[str]:
    """Problems of a cell set: duplicate codes, invalid shapes, overlaps, and, given the
    communities (12-digit code -> polygon), cells outside their community and gaps in it.

    Areas are measured in a local metric projection; differences up to tolerance_m2 pass."""
    problems = [f"duplicate code {code} ({n} cells) / 网格代码重复"
                for code, n in sorted(Counter(str(c) for c, _g in cells).items()) if n > 1]
    if not cells:
        return problems
    codes = [str(c) for c, _g in cells]
    lonlat = np.asarray([g for _c, g in cells], dtype=object)
    to_m, _ = local_projection(lonlat)
    geoms = shapely.transform(lonlat, to_m)
    problems += [f"cell {codes[k]}: invalid geometry / 网格几何无效"
                 for k in np.flatnonzero(~shapely.is_valid(geoms))]
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    overlap = shapely.area(shapely.intersection(geoms[a], geoms[b]))
    problems += [f"cells {codes[i]} and {codes[j]} overlap by {o:.2f} m² / 网格重叠"
                 for i, j, o in zip(a, b, overlap, strict=True) if o > tolerance_m2]
    if communities is None:
        return problems
    names = sorted(communities)
    polys = shapely.segmentize(np.asarray([communities[n] for n in names], dtype=object), SEGMENT_DEG)
    known = dict(zip(names, shapely.transform(polys, to_m).tolist(), strict=True))
    by_community: dict[str, list[int]] = {}
    for k, (code, _g) in enumerate(cells):
        by_community.setdefault(code.community_code, []).append(k)
    for name, idx in sorted(by_community.items()):
        if name not in known:
            problems.append(f"cells {codes[idx[0]]}...: community {name} unknown / 社区不存在")
            continue
        outside = shapely.area(shapely.difference(geoms[idx], known[name]))
        problems += [f"cell {codes[k]} extends {o:.2f} m² outside community {name} / 网格越出社区"
                     for k, o in zip(idx, outside, strict=True) if o > tolerance_m2]
    for name, poly in known.items():
        covered = shapely.union_all(geoms[by_community.get(name, [])])
        gap = shapely.area(shapely.difference(poly, covered))
        if gap > tolerance_m2:
            problems.append(f"community {name}: {gap:.2f} m² not covered by cells / 社区存在未覆盖区域")
    return problems


def assign_cells(geoms: Sequence[BaseGeometry] | Geoms, cells: Sequence[Cell]) -> list[GridCode | None]:
    """The cell each geo-tagged record lies in (a point, or a shape's point on surface), or None.

    A point on the edge between cells goes to the cell listed first."""
    if not len(geoms):
        return []
    points = shapely.point_on_surface(np.asarray(geoms, dtype=object))
    found: list[GridCode | None] = [None] * len(points)
    if not cells:
        return found
    tree = shapely.STRtree([g for _c, g in cells])
    pt, cell = tree.query(points, predicate="intersects")
    for p, c in sorted(zip(pt.tolist(), cell.tolist(), strict=True), reverse=True):
        found[p] = cells[c][0]  # reverse order: the lowest cell index is written last and wins
    return found
