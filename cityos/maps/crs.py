"""Coordinate reference systems (坐标系): parse, advertise and transform.

Every layer keeps the CRS its data came in; storage is in one canonical CRS, OGC CRS84
(WGS-84 longitude, latitude; PostGIS SRID 4326 with x = longitude). The functions here take and
return coordinates in "xy" order (x = longitude or easting, y = latitude or northing) whatever
the CRS defines; `Crs.lat_first` and `swap_if_lat_first` handle the axis order that OGC URIs and
GML imply (EPSG:4326 and EPSG:4490 are latitude first, the Gauss-Krüger grids northing first).

EPSG systems go through pyproj. GCJ-02 (国测局/火星坐标) and BD-09 (百度坐标) are not geodetic
systems but published obfuscations of WGS-84; their forward formulas are the public ones (the
same as in eviltransform, coordtransform, gcoord), vectorised with NumPy, and their inverses are
fixed-point iterations to within 1e-8 degrees (~1 mm). Outside China (the formulas' own rectangle
test, `out_of_china`) all three coincide with WGS-84, as Baidu documents for its maps abroad.

CGCS2000 Gauss-Krüger grids (高斯-克吕格投影), all EPSG codes 4491-4554, by family:

| EPSG | grid | false easting |
|---|---|---|
| 4491-4501 | 6° zones 13-23 (central meridians 75°E-135°E) | zone × 1,000,000 + 500,000 m |
| 4502-4512 | 6° by central meridian, 75°E-135°E | 500,000 m |
| 4513-4533 | 3° zones 25-45 (central meridians 75°E-135°E) | zone × 1,000,000 + 500,000 m |
| 4534-4554 | 3° by central meridian, 75°E-135°E | 500,000 m |

The issue's "EPSG:4526-4554" is the tail of the 3° families: zones 38-45 (114°E-135°E) with
the zone-number prefix and all 21 central-meridian grids. All four families are supported so that
cities west of 112.5°E have their grid too. The axes of all of them are X = northing,
Y = easting (northing first).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from pyproj import Transformer

from cityos.core.errors import Invalid

Floats = NDArray[np.float64]

CANONICAL = "OGC:CRS84"
GCJ02 = "GCJ-02"
BD09 = "BD-09"

_OGC_DEF = "http://www.opengis.net/def/crs"
# GCJ-02 and BD-09 have no EPSG code and no OGC URI; this unregistered URN names them in our
# OGC API responses (the OGC API Features Part 2 `crs` lists take any URI).
_CITYOS_URN = "urn:cityos:crs:"


@dataclass(frozen=True)
class Crs:
    """One coordinate reference system CityOS accepts and returns."""

    key: str  # "EPSG:4490", "OGC:CRS84", "GCJ-02", "BD-09"
    uri: str  # OGC URI as used by OGC API Features (`crs`, `bbox-crs`, `Content-Crs`)
    title: str  # "中文 / English"
    lat_first: bool  # first axis is latitude or northing, as the CRS defines it
    geographic: bool  # degrees (True) or metres on a projection (False)

    @property
    def epsg(self) -> int | None:
        """The EPSG code, or None for CRS84 (use 4326 with x = lon), GCJ-02 and BD-09."""
        return int(self.key[5:]) if self.key.startswith("EPSG:") else None

    @property
    def offset(self) -> bool:
        """True for the Chinese obfuscated systems that pyproj does not know (GCJ-02, BD-09)."""
        return self.key in (GCJ02, BD09)


def _epsg(code: int, title: str, *, lat_first: bool, geographic: bool) -> Crs:
    return Crs(f"EPSG:{code}", f"{_OGC_DEF}/EPSG/0/{code}", title, lat_first, geographic)


def _gauss_kruger() -> list[Crs]:
    """The CGCS2000 Gauss-Krüger table of the module docstring, as Crs entries."""
    out = []
    for i in range(11):
        out.append(_epsg(4491 + i, f"CGCS2000 6度带高斯-克吕格 第{13 + i}带 / "
                         f"CGCS2000 / Gauss-Kruger zone {13 + i}", lat_first=True, geographic=False))
    for i in range(11):
        out.append(_epsg(4502 + i, f"CGCS2000 6度带高斯-克吕格 中央经线{75 + 6 * i}°E / "
                         f"CGCS2000 / Gauss-Kruger CM {75 + 6 * i}E", lat_first=True, geographic=False))
    for i in range(21):
        out.append(_epsg(4513 + i, f"CGCS2000 3度带高斯-克吕格 第{25 + i}带 / "
                         f"CGCS2000 / 3-degree Gauss-Kruger zone {25 + i}",
                         lat_first=True, geographic=False))
    for i in range(21):
        out.append(_epsg(4534 + i, f"CGCS2000 3度带高斯-克吕格 中央经线{75 + 3 * i}°E / "
                         f"CGCS2000 / 3-degree Gauss-Kruger CM {75 + 3 * i}E",
                         lat_first=True, geographic=False))
    return out


SUPPORTED: list[Crs] = [
    Crs(CANONICAL, f"{_OGC_DEF}/OGC/1.3/CRS84", "WGS-84 经纬度(经度在前) / WGS 84 (CRS84, lon/lat)",
        lat_first=False, geographic=True),
    _epsg(4326, "WGS-84 / WGS 84", lat_first=True, geographic=True),
    _epsg(4490, "2000国家大地坐标系 / CGCS2000", lat_first=True, geographic=True),
    _epsg(3857, "Web墨卡托 / WGS 84 / Pseudo-Mercator", lat_first=False, geographic=False),
    *_gauss_kruger(),
    Crs(GCJ02, f"{_CITYOS_URN}{GCJ02}", "国测局坐标(火星坐标) / GCJ-02 (lon/lat)",
        lat_first=False, geographic=True),
    Crs(BD09, f"{_CITYOS_URN}{BD09}", "百度坐标 / BD-09 (lon/lat)", lat_first=False, geographic=True),
]
_BY_KEY = {c.key: c for c in SUPPORTED}

# Names people type, squeezed (upper case, no spaces, dashes, underscores or dots) → key.
# "WGS84" means lon/lat CRS84 here: that is what Chinese map APIs and GPS logs mean by it.
_ALIASES = {
    "CRS84": CANONICAL, "OGCCRS84": CANONICAL, "WGS84": CANONICAL, "WGS84LL": CANONICAL,
    "CGCS2000": "EPSG:4490", "WEBMERCATOR": "EPSG:3857", "PSEUDOMERCATOR": "EPSG:3857",
    "GCJ02": GCJ02, "GCJ02LL": GCJ02, "BD09": BD09, "BD09LL": BD09,
}
_EPSG_FORMS = [
    re.compile(r"^(?:EPSG:{1,2})?(\d{4,5})$", re.IGNORECASE),
    re.compile(r"^https?://www\.opengis\.net/def/crs/EPSG/[^/]+/(\d{4,5})/?$", re.IGNORECASE),
    re.compile(r"^urn:ogc:def:crs:EPSG:[^:]*:(\d{4,5})$", re.IGNORECASE),
]
_OTHER_FORMS = [
    re.compile(r"^https?://www\.opengis\.net/def/crs/OGC/[^/]+/(CRS84)/?$", re.IGNORECASE),
    re.compile(r"^urn:ogc:def:crs:OGC:[^:]*:(CRS84)$", re.IGNORECASE),
    re.compile(r"^urn:cityos:crs:(.+)$", re.IGNORECASE),
]


def parse(value: str | Crs) -> Crs:
    """Read a CRS from any spelling we accept (code, OGC URI or URN, alias); Invalid("crs") else."""
    if isinstance(value, Crs):
        return value
    text = str(value).strip()
    for form in _EPSG_FORMS:
        m = form.match(text)
        if m and (found := _BY_KEY.get(f"EPSG:{int(m.group(1))}")):
            return found
    for form in _OTHER_FORMS:
        if m := form.match(text):
            text = m.group(1)
            break
    squeezed = re.sub(r"[\s_.:-]", "", text).upper()
    key = _ALIASES.get(squeezed)
    if key is None:
        raise Invalid(
            "crs",
            f"unsupported coordinate reference system {text[:80]!r}: use CRS84, EPSG:4326, EPSG:4490, "
            "EPSG:3857, EPSG:4491-4554 (CGCS2000 Gauss-Krüger), GCJ-02 or BD-09 / "
            "不支持的坐标系,可用 CRS84、EPSG:4326、EPSG:4490、EPSG:3857、"
            "EPSG:4491-4554(CGCS2000 高斯-克吕格)、GCJ-02 或 BD-09",
        )
    return _BY_KEY[key]


def gk_zone(lon: float, *, degrees: int = 3, zone_prefix: bool = False) -> Crs:
    """The CGCS2000 Gauss-Krüger grid (高斯-克吕格投影带) whose zone holds this longitude."""
    if degrees == 3:
        zone = int(np.clip(np.floor(lon / 3 + 0.5), 25, 45))  # 3° zones are centred on 3n°
        return _BY_KEY[f"EPSG:{4513 + zone - 25 if zone_prefix else 4534 + zone - 25}"]
    if degrees == 6:
        zone = int(np.clip(np.floor(lon / 6) + 1, 13, 23))  # 6° zones start at 0°
        return _BY_KEY[f"EPSG:{4491 + zone - 13 if zone_prefix else 4502 + zone - 13}"]
    raise Invalid("degrees", "Gauss-Krüger zones are 3 or 6 degrees wide / 分带宽度为3度或6度")


# --- axis order and sanity checks --------------------------------------------------------------

# The rectangle of the public GCJ-02 formula: inside it the offsets apply.
_GCJ_BOX = (72.004, 137.8347, 0.8293, 55.8271)
# A tighter box around China's territory for validating input (73.5°E-135.1°E, 3.8°N-53.6°N).
_CHINA_BOX = (73.5, 135.1, 3.8, 53.6)


def _in_box(lon: ArrayLike, lat: ArrayLike, box: tuple[float, float, float, float]) -> NDArray[np.bool_]:
    x = np.asarray(lon, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)
    result: NDArray[np.bool_] = (x >= box[0]) & (x <= box[1]) & (y >= box[2]) & (y <= box[3])
    return result


def out_of_china(lon: ArrayLike, lat: ArrayLike) -> NDArray[np.bool_]:
    """True where the GCJ-02/BD-09 offsets do not apply (the public formula's rectangle test)."""
    return ~_in_box(lon, lat, _GCJ_BOX)


def in_china_bbox(lon: ArrayLike, lat: ArrayLike) -> NDArray[np.bool_]:
    """True where a lon/lat lies in the tight box around China, for validating input (境内校验)."""
    return _in_box(lon, lat, _CHINA_BOX)


def looks_swapped(xs: ArrayLike, ys: ArrayLike) -> bool:
    """True when every point makes sense only read as (lat, lon) in China: axis order got swapped."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size == 0:
        return False
    return bool(np.all(in_china_bbox(y, x) & ~in_china_bbox(x, y)))


def swap_if_lat_first(xs: Any, ys: Any, crs: Crs | str) -> tuple[Any, Any]:
    """Between xy order and the CRS's own axis order (its own inverse): swap when lat comes first."""
    return (ys, xs) if parse(crs).lat_first else (xs, ys)


# --- GCJ-02 and BD-09 (public formulas) --------------------------------------------------------

_KRASOVSKY_A = 6378245.0  # the formula's ellipsoid: Krasovsky 1940
_KRASOVSKY_EE = 0.00669342162296594323
_BD_PER_DEGREE = 3000.0 / 180.0  # BD-09's wobble: sin/cos(π · 3000/180 · degrees)
_TOLERANCE = 1e-8  # degrees (~1 mm): the error the inverse iterations may leave
_MAX_ROUNDS = 12
_CHUNK = 1 << 16  # points per pass: the temporaries stay in cache, about 1.5x faster than whole


def _multiple_sines(v: Floats, *, more: bool) -> tuple[Floats, ...]:
    """sin(πv/30), sin(πv/12), sin(πv/3), sin(πv) and, if more, sin(2πv), sin(6πv).

    All are multiples of t = πv/60, so one sine and one cosine of a small angle give them through
    exact multiple-angle identities: five times fewer, and faster, calls than the textbook form.
    """
    t = v * (np.pi / 60.0)
    s = np.sin(t)
    c = np.cos(t)
    ss = s * s
    cc = c * c
    s5 = s * ((16.0 * ss - 20.0) * ss + 5.0)  # sin 5t = sin(πv/12)
    c5 = c * ((16.0 * cc - 20.0) * cc + 5.0)
    s10 = 2.0 * s5 * c5
    c10 = 1.0 - 2.0 * s5 * s5
    s20 = 2.0 * s10 * c10  # sin 20t = sin(πv/3)
    s60 = s20 * (3.0 - 4.0 * s20 * s20)  # sin 60t = sin(πv)
    if not more:
        return 2.0 * s * c, s5, s20, s60
    c20 = 1.0 - 2.0 * s10 * s10
    c60 = c20 * (4.0 * c20 * c20 - 3.0)
    s120 = 2.0 * s60 * c60  # sin(2πv)
    return 2.0 * s * c, s5, s20, s60, s120, s120 * (3.0 - 4.0 * s120 * s120)


def _gcj_offset(lon: Floats, lat: Floats) -> tuple[Floats, Floats]:
    """GCJ-02 minus WGS-84 at a WGS-84 point, in degrees, without the rectangle test."""
    x = lon - 105.0
    y = lat - 35.0
    x30, x12, x3, x1, x2, x6 = _multiple_sines(x, more=True)
    y30, y12, y3, y1 = _multiple_sines(y, more=False)
    both = 20.0 * x6 + 20.0 * x2
    xy = 0.1 * x * y
    root = np.sqrt(np.abs(x))
    dlat = (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + xy + 0.2 * root
            + (both + 20.0 * y1 + 40.0 * y3 + 160.0 * y12 + 320.0 * y30) * (2.0 / 3.0))
    dlon = (300.0 + x + 2.0 * y + 0.1 * x * x + xy + 0.1 * root
            + (both + 20.0 * x1 + 40.0 * x3 + 150.0 * x12 + 300.0 * x30) * (2.0 / 3.0))
    s = np.sin(lat * (np.pi / 180.0))
    magic = 1.0 - _KRASOVSKY_EE * s * s
    sqrt_magic = np.sqrt(magic)
    cos_lat = np.sqrt(1.0 - s * s)
    dlat *= (180.0 / np.pi) * magic * sqrt_magic / (_KRASOVSKY_A * (1.0 - _KRASOVSKY_EE))
    dlon *= (180.0 / np.pi) * sqrt_magic / (_KRASOVSKY_A * cos_lat)
    return dlon, dlat


def _sinpi(u: Floats) -> Floats:
    """sin(πu) after reducing u to [-1, 1]: numpy's sine is twice as slow on large angles."""
    return np.sin(np.pi * (u - 2.0 * np.rint(0.5 * u)))


def _bd_wobble(x: Floats, y: Floats, dz: float, dtheta: float) -> tuple[Floats, Floats]:
    """Scale (x, y) to length r + dz·sin(k·y) and turn it by dtheta·cos(k·x), k = π·3000/180.

    The turn is below 3e-6 rad, so cos δ = 1 - δ²/2 and sin δ = δ (next terms < 1e-17) replace
    atan2 and two more sines of the published form.
    """
    r = np.hypot(x, y)
    z = r + dz * _sinpi(y * _BD_PER_DEGREE)
    delta = dtheta * _sinpi(x * _BD_PER_DEGREE + 0.5)
    cos_d = 1.0 - 0.5 * delta * delta
    zx = z * x / r
    zy = z * y / r
    return zx * cos_d - zy * delta, zy * cos_d + zx * delta


def _bd_forward(lon: Floats, lat: Floats) -> tuple[Floats, Floats]:
    x, y = _bd_wobble(lon, lat, 0.00002, 0.000003)
    return x + 0.0065, y + 0.006


def _iterate(forward: Callable[[Floats, Floats], tuple[Floats, Floats]], contraction: float,
             x: Floats, y: Floats, target_x: Floats, target_y: Floats) -> tuple[Floats, Floats]:
    """Solve forward(x, y) = target by fixed-point steps x -= forward(x) - target.

    The offset changes by at most `contraction` times a step (the largest row sum of its
    Jacobian over the rectangle is 0.0073 for GCJ-02 and 0.022 for BD-09), so the error left
    after a step is at most that fraction of the step: stop once that is below _TOLERANCE. From
    their first guesses both need two steps.
    """
    for _ in range(_MAX_ROUNDS):
        fx, fy = forward(x, y)
        dx = fx - target_x
        dy = fy - target_y
        x = x - dx
        y = y - dy
        step = max(float(np.max(np.abs(dx), initial=0.0)), float(np.max(np.abs(dy), initial=0.0)))
        if step * contraction < _TOLERANCE:
            break
    return x, y


def _wgs_to_gcj(lon: Floats, lat: Floats) -> tuple[Floats, Floats]:
    dlon, dlat = _gcj_offset(lon, lat)
    return lon + dlon, lat + dlat


def _gcj_to_wgs(lon: Floats, lat: Floats) -> tuple[Floats, Floats]:
    dlon, dlat = _gcj_offset(lon, lat)
    return _iterate(_wgs_to_gcj, 0.01, lon - dlon, lat - dlat, lon, lat)


def _bd_to_gcj(lon: Floats, lat: Floats) -> tuple[Floats, Floats]:
    # The published closed-form inverse is only a first guess: it is off by up to 2e-6° (~0.25 m).
    x, y = _bd_wobble(lon - 0.0065, lat - 0.006, -0.00002, -0.000003)
    return _iterate(_bd_forward, 0.03, x, y, lon, lat)


def _floats(xs: ArrayLike, ys: ArrayLike) -> tuple[Floats, Floats]:
    """Fresh float64 arrays of one shape (callers write into them)."""
    x, y = np.broadcast_arrays(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))
    return np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)


def _inside_only(fn: Callable[[Floats, Floats], tuple[Floats, Floats]],
                 lon: ArrayLike, lat: ArrayLike) -> tuple[Floats, Floats]:
    """Apply fn where the input lies in the GCJ rectangle, a chunk at a time; pass the rest through."""
    x, y = _floats(lon, lat)
    inside = ~out_of_china(x, y)
    if not inside.all():
        if inside.any():
            x[inside], y[inside] = _inside_only(fn, x[inside], y[inside])
        return x, y
    flat_x = x.reshape(-1)
    flat_y = y.reshape(-1)
    for i in range(0, flat_x.size, _CHUNK):
        part = slice(i, i + _CHUNK)
        flat_x[part], flat_y[part] = fn(flat_x[part], flat_y[part])
    return x, y


def wgs84_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[Floats, Floats]:
    """WGS-84 → GCJ-02 (火星坐标), closed form; unchanged outside China."""
    return _inside_only(_wgs_to_gcj, lon, lat)


def gcj02_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[Floats, Floats]:
    """GCJ-02 → WGS-84, iterated to within 1e-8° (~1 mm); unchanged outside China."""
    return _inside_only(_gcj_to_wgs, lon, lat)


def gcj02_to_bd09(lon: ArrayLike, lat: ArrayLike) -> tuple[Floats, Floats]:
    """GCJ-02 → BD-09 (百度坐标), closed form; unchanged outside China (Baidu uses WGS-84 there)."""
    return _inside_only(_bd_forward, lon, lat)


def bd09_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[Floats, Floats]:
    """BD-09 → GCJ-02, iterated to within 1e-8° (~1 mm); unchanged outside China."""
    return _inside_only(_bd_to_gcj, lon, lat)


def wgs84_to_bd09(lon: ArrayLike, lat: ArrayLike) -> tuple[Floats, Floats]:
    """WGS-84 → BD-09 through GCJ-02; unchanged outside China."""
    return _inside_only(lambda x, y: _bd_forward(*_wgs_to_gcj(x, y)), lon, lat)


def bd09_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[Floats, Floats]:
    """BD-09 → WGS-84 through GCJ-02; unchanged outside China."""
    return _inside_only(lambda x, y: _gcj_to_wgs(*_bd_to_gcj(x, y)), lon, lat)


# --- transforms between any two supported systems ----------------------------------------------

_TO_CRS84 = {GCJ02: gcj02_to_wgs84, BD09: bd09_to_wgs84}
_FROM_CRS84 = {GCJ02: wgs84_to_gcj02, BD09: wgs84_to_bd09}
# Same lon/lat as CRS84, in xy order. CGCS2000 is taken as WGS-84: the two agree to centimetres,
# EPSG publishes no transformation between them, and PROJ itself applies a null ("ballpark")
# shift, but only after a 0.4 s search of its database for every new pair.
_SAME_AS_CRS84 = {CANONICAL, "EPSG:4326", "EPSG:4490"}
# Grids on CGCS2000 go to and from lon/lat through EPSG:4490: a pure conversion in PROJ.
_ON_CGCS2000 = {c.key for c in SUPPORTED if c.epsg and 4490 <= c.epsg <= 4554}


@functools.cache
def _transformer(src: str, dst: str) -> Transformer:
    # One per pair; pyproj (>= 3.1) makes each safe to share across threads.
    return Transformer.from_crs(src, dst, always_xy=True)


def _pyproj(xs: Floats, ys: Floats, src: str, dst: str) -> tuple[Floats, Floats]:
    ox, oy = _transformer(src, dst).transform(xs, ys)
    return np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)


def _lonlat_crs(key: str) -> str:
    """The geographic CRS a projected one is defined on, whose lon/lat we take as CRS84."""
    return "EPSG:4490" if key in _ON_CGCS2000 else CANONICAL


def to_canonical(xs: ArrayLike, ys: ArrayLike, src: Crs | str) -> tuple[Floats, Floats]:
    """From src (xy order) to CRS84 lon/lat, the storage CRS (入库统一为 CRS84)."""
    crs = parse(src)
    x, y = _floats(xs, ys)
    if crs.key in _SAME_AS_CRS84:
        return x, y
    if crs.key in _TO_CRS84:
        return _TO_CRS84[crs.key](x, y)
    return _pyproj(x, y, crs.key, _lonlat_crs(crs.key))


def from_canonical(lon: ArrayLike, lat: ArrayLike, dst: Crs | str) -> tuple[Floats, Floats]:
    """From CRS84 lon/lat to dst, in xy order."""
    crs = parse(dst)
    x, y = _floats(lon, lat)
    if crs.key in _SAME_AS_CRS84:
        return x, y
    if crs.key in _FROM_CRS84:
        return _FROM_CRS84[crs.key](x, y)
    return _pyproj(x, y, _lonlat_crs(crs.key), crs.key)


def transform(xs: ArrayLike, ys: ArrayLike, src: Crs | str, dst: Crs | str) -> tuple[Floats, Floats]:
    """From src to dst, both in xy order: one pyproj step on one datum, else through CRS84."""
    a, b = parse(src), parse(dst)
    if a.key == b.key:
        return _floats(xs, ys)
    if a.offset or b.offset or _lonlat_crs(a.key) != _lonlat_crs(b.key):
        return from_canonical(*to_canonical(xs, ys, a), b)
    return _pyproj(*_floats(xs, ys), a.key, b.key)


def transform_geometry(geom: shapely.Geometry, src: Crs | str, dst: Crs | str) -> shapely.Geometry:
    """The same geometry in dst (xy order); Z values ride along unchanged."""
    a, b = parse(src), parse(dst)
    if a.key == b.key:
        return geom

    def move(coords: Floats) -> Floats:
        out = np.array(coords, dtype=np.float64)
        out[:, 0], out[:, 1] = transform(coords[:, 0], coords[:, 1], a, b)
        return out

    return shapely.transform(geom, move, include_z=None)
