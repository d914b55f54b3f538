"""Coordinate input (坐标输入), property-tested: GCJ-02/BD-09/WGS-84 and CGCS2000 Gauss-Krüger
round trips within a stated tolerance, CRS names and `bbox` text either read or refused with
Invalid naming the parameter, CSV coordinate imports that keep every point they accept inside
China and account for every row, and the point checks of cases and emergencies."""

from __future__ import annotations

import csv
import io
import math
import warnings

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cityos.cases.service import _check_point
from cityos.core.errors import FieldError, Invalid
from cityos.maps import crs, importers, ogc_params
from cityos.ops.emergency import _point


def examples(n: int) -> settings:
    """Reproducible in CI (derandomized), no example database in the repo."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


ROUND_TRIP = 1e-7  # degrees, about 1 cm; the iterated inverses promise 1e-8
lons, lats = st.floats(73.5, 135.1), st.floats(3.8, 53.6)  # crs._CHINA_BOX
KEYS = [c.key for c in crs.SUPPORTED]
# Every system that is not a grid, and the 3° and 6° grids (with and without the zone prefix) of
# Jilin's zones: 3° zone 42 (126°E), 6° zones 21 (123°E) and 22 (129°E).
NEAR_JILIN = [c.key for c in crs.SUPPORTED if not c.epsg or c.epsg < 4491] + [
    "EPSG:4530", "EPSG:4551", "EPSG:4499", "EPSG:4510", "EPSG:4500", "EPSG:4511"]
OBFUSCATED = [(crs.wgs84_to_gcj02, crs.gcj02_to_wgs84), (crs.wgs84_to_bd09, crs.bd09_to_wgs84),
              (crs.gcj02_to_bd09, crs.bd09_to_gcj02)]


@examples(100)
@given(lons, lats)
def test_gcj02_and_bd09_round_trip_inside_china(lon: float, lat: float) -> None:
    for forward, back in OBFUSCATED:
        x, y = forward(lon, lat)
        assert 1e-5 < math.hypot(x - lon, y - lat) < 0.03  # a real offset of metres to a few km
        bx, by = back(x, y)
        assert abs(bx - lon) < ROUND_TRIP and abs(by - lat) < ROUND_TRIP


@examples(50)
@given(st.floats(-180, 180), st.floats(-90, 90))
def test_outside_china_the_obfuscations_are_the_identity(lon: float, lat: float) -> None:
    assume(bool(crs.out_of_china(lon, lat)))
    for forward, back in OBFUSCATED:
        assert (float(forward(lon, lat)[0]), float(forward(lon, lat)[1])) == (lon, lat)
        assert (float(back(lon, lat)[0]), float(back(lon, lat)[1])) == (lon, lat)


@examples(60)
@given(lons, lats, st.sampled_from([3, 6]), st.booleans())
def test_gauss_kruger_zone_holds_the_point_and_round_trips(lon: float, lat: float, degrees: int,
                                                            prefix: bool) -> None:
    grid = crs.gk_zone(lon, degrees=degrees, zone_prefix=prefix)
    easting, northing = (float(v) for v in crs.from_canonical(lon, lat, grid))
    offset = easting % 1_000_000 if prefix else easting
    # within half a zone of the central meridian: |Δlon| ≤ 1.5° (3°) or 3° (6°), ≤ 340 km east-west
    assert abs(offset - 500_000) <= 340_000 * degrees / 3
    if prefix:  # the zone number leads the easting
        zone = int(easting // 1_000_000)
        centre = zone * 3 if degrees == 3 else zone * 6 - 3
        assert abs(lon - centre) <= degrees / 2 + 1e-9
    back = crs.to_canonical(easting, northing, grid)
    assert abs(float(back[0]) - lon) < 1e-8 and abs(float(back[1]) - lat) < 1e-8
    assert 0 < northing < 6_000_000


@examples(40)
@given(st.floats(124.0, 128.0), st.floats(42.0, 45.5), st.sampled_from(NEAR_JILIN), st.sampled_from(NEAR_JILIN))
def test_any_two_systems_round_trip_near_the_city(lon: float, lat: float, a: str, b: str) -> None:
    """src → dst → src, through whatever path `transform` takes, comes back within tolerance (the
    grids are those of Jilin's zones: a grid far from its zone leaves the projection's domain)."""
    x, y = crs.from_canonical(lon, lat, a)
    there = crs.transform(x, y, a, b)
    back = crs.transform(*there, b, a)
    tolerance = 1e-3 if not crs.parse(a).geographic else ROUND_TRIP  # metres on a grid, else degrees
    assert abs(float(back[0]) - float(x)) < tolerance and abs(float(back[1]) - float(y)) < tolerance


# -- names of systems and bbox text ---------------------------------------------------------------

@examples(60)
@given(st.one_of(st.text(max_size=40), st.sampled_from(KEYS).map(str.lower),
                 st.from_regex(r"(EPSG:{1,2}|urn:ogc:def:crs:EPSG::|http://www.opengis.net/def/crs/EPSG/0/)?"
                               r"\d{1,6}", fullmatch=True)))
def test_crs_names_are_read_or_refused_as_invalid_crs(text: str) -> None:
    try:
        found = crs.parse(text)
    except Invalid as exc:
        assert exc.errors[0].field == "crs" and " / " in exc.errors[0].reason
        return
    assert found in crs.SUPPORTED
    assert crs.parse(found.uri) is found and crs.parse(found.key) is found


numbers = st.one_of(st.floats(), st.integers(-10**20, 10**20),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "", " ", "0x10", "1_0", "١٢", "²", "--1"]))


@examples(100)
@given(st.one_of(st.lists(numbers.map(str), max_size=7).map(",".join), st.text(max_size=40)),
       st.sampled_from(KEYS))
def test_bbox_text_is_read_or_refused_as_invalid_bbox(text: str, key: str) -> None:
    try:
        box = ogc_params.bbox_param(text, crs.parse(key))
    except Invalid as exc:
        assert exc.errors[0].field == "bbox"
        return
    assert all(math.isfinite(v) for v in box) and box[0] <= box[2] and box[1] <= box[3]


@examples(50)
@given(lons, lats, st.floats(0, 2), st.floats(0, 2), st.booleans())
def test_a_lon_lat_bbox_reads_back_in_each_axis_order(lon: float, lat: float, w: float, h: float,
                                                       six: bool) -> None:
    lon2, lat2 = lon + w, lat + h
    z = ",0" if six else ""
    xy = f"{lon!r},{lat!r}{z},{lon2!r},{lat2!r}{z}"
    yx = f"{lat!r},{lon!r}{z},{lat2!r},{lon2!r}{z}"
    assert ogc_params.bbox_param(xy, crs.parse("CRS84")) == (lon, lat, lon2, lat2)
    assert ogc_params.bbox_param(yx, crs.parse("EPSG:4326")) == (lon, lat, lon2, lat2)  # lat first
    with pytest.raises(Invalid):  # upper corner first
        ogc_params.bbox_param(f"{lon2!r},{lat2!r},{lon - 1!r},{lat - 1!r}", crs.parse("CRS84"))


# -- CSV coordinates ----------------------------------------------------------------------------

cells = st.one_of(st.floats(), st.floats(73.0, 136.0), st.floats(3.0, 54.0), st.integers(),
                  st.sampled_from(["nan", "inf", "", "١٢", "²", "1e999", "POINT(1 2)", "-1e308"]),
                  st.text(max_size=6)).map(str)
wkts = st.one_of(st.text(max_size=30), st.sampled_from([
    "POINT(126 43)", "POLYGON((126 43,127 43,127 44,126 43))", "POINT(1e400 2)", "LINESTRING(126 43, 126 43)",
    "POLYGON((126 43,127 44,127 43,126 44,126 43))", "POINT EMPTY", "GEOMETRYCOLLECTION(POINT(126 43))",
    "POINT Z(126 43 5)", "POINT(43 126)"]))


def _table(header: list[str], rows: list[list[str]], encoding: str) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])
    return out.getvalue().encode(encoding, "replace")


@examples(60)
@given(st.one_of(
    st.binary(max_size=200).map(lambda b: (b, None)),
    st.lists(st.lists(cells, min_size=3, max_size=3), max_size=6).map(
        lambda rows: (_table(["lon", "lat", "名称"], rows, "gb18030"), len(rows))),
    st.lists(st.lists(wkts, min_size=1, max_size=1), max_size=5).map(
        lambda rows: (_table(["wkt"], rows, "utf-8"), len(rows)))),
    st.sampled_from([None, "CRS84", "EPSG:4490", "EPSG:3857", "EPSG:4547", "GCJ-02", "BD-09", "no-such"]),
    st.booleans())
def test_csv_coordinates_import_or_fail_as_invalid(file: tuple[bytes, int | None], given_crs: str | None,
                                                   swap: bool) -> None:
    """Every row becomes a feature in China with finite coordinates, or a rejected row; the file
    as a whole fails only as Invalid."""
    data, rows = file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # GEOS overflow on 1e400 in WKT
            result = importers.read(io.BytesIO(data), "csv", crs=given_crs, swap=swap)
    except Invalid as exc:
        assert exc.errors[0].field in ("file", "crs", "x", "swap") and exc.errors[0].reason
        return
    if rows is not None:
        assert len(result.features) + result.rejected_total == rows
    for _, geom, _ in result.features:
        xy = shapely.get_coordinates(geom)
        assert np.isfinite(xy).all() and crs.in_china_bbox(xy[:, 0], xy[:, 1]).all()


@examples(25)
@given(st.lists(st.tuples(st.floats(100.0, 130.0), st.floats(20.0, 50.0)), min_size=1, max_size=8, unique=True),
       st.sampled_from(["GCJ-02", "BD-09", "EPSG:4490", "EPSG:3857", "3-degree zone", "6-degree zone"]))
def test_csv_points_in_any_system_import_to_the_same_wgs84(points: list[tuple[float, float]], system: str) -> None:
    lon0 = points[0][0]
    target = {"3-degree zone": crs.gk_zone(lon0, degrees=3, zone_prefix=True).key,
              "6-degree zone": crs.gk_zone(lon0, degrees=6, zone_prefix=True).key}.get(system, system)
    if "zone" in system:
        points = [(lon, lat) for lon, lat in points if abs(lon - lon0) < 1]  # one zone
    xs, ys = crs.from_canonical([p[0] for p in points], [p[1] for p in points], target)
    rows = [[repr(float(x)), repr(float(y)), str(i)] for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
    result = importers.read(io.BytesIO(_table(["x", "y", "n"], rows, "utf-8")), "csv", crs=target)
    assert result.rejected_total == 0 and len(result.features) == len(points)
    for (_, geom, props), (lon, lat) in zip(result.features, points, strict=True):
        assert props["n"] in (int(props["n"]), str(props["n"]))
        assert abs(geom.x - lon) < ROUND_TRIP and abs(geom.y - lat) < ROUND_TRIP


# -- the point of a case or an incident -----------------------------------------------------------

values = st.one_of(st.none(), st.floats(), st.integers(-10**400, 10**400), st.text(max_size=12),
                   st.booleans(), st.lists(st.integers(), max_size=2), st.floats(73, 136).map(str))


@examples(100)
@given(values, values)
def test_case_and_incident_points_are_read_or_refused_per_field(lon: object, lat: object) -> None:
    errors: list[FieldError] = []
    point = _check_point({"lon": lon, "lat": lat}, errors)
    try:
        incident = _point(lon, lat)
    except Invalid as exc:
        assert {e.field for e in exc.errors} <= {"lon", "lat"} and errors
        assert {e.field for e in exc.errors} == {e.field for e in errors}
        return
    assert not errors and point == incident
    if point is not None:
        assert 73 <= point[0] <= 136 and 3 <= point[1] <= 54
