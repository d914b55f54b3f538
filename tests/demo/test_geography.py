"""The demo city's geography: districts partition the outline, streets their districts,
communities their streets; roads, river and grid cells stay where they belong; same every run."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import shapely

from cityos.demo import data, geography
from cityos.maps import grids

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-6  # relative area tolerance: edges meet to the millimetre


def area(geom: shapely.Geometry) -> float:
    return float(shapely.area(geom))


def assert_partition(parts: list[shapely.Geometry], whole: shapely.Geometry) -> None:
    """The parts are valid, do not overlap, lie in the whole and together cover it."""
    assert all(p.is_valid and not p.is_empty for p in parts)
    for a, b in itertools.combinations(parts, 2):
        assert area(shapely.intersection(a, b)) < TOL * min(area(a), area(b))
    for p in parts:
        assert area(shapely.difference(p, whole)) < TOL * area(p)
    assert area(shapely.union_all(parts)) == pytest.approx(area(whole), rel=TOL)


def layer_digest(features: list[geography.Feature]) -> str:
    h = hashlib.sha256()
    for fid, geom, props in features:
        h.update(fid.encode() + shapely.to_wkb(geom) + repr(sorted(props.items())).encode())
    return h.hexdigest()


def test_nine_districts_with_their_codes_partition_the_outline():
    features = geography.districts()
    assert [(f, p["name"]) for f, _g, p in features] == [(c, n) for c, n, _e in data.DISTRICTS]
    assert [f for f, *_ in features] == ["220202", "220203", "220204", "220211", "220221",
                                         "220281", "220282", "220283", "220284"]
    assert_partition([g for _f, g, _p in features], geography.outline())
    kinds = {f: p["kind"] for f, _g, p in features}
    assert kinds["220202"] == "district" and kinds["220221"] == "county"
    assert kinds["220281"] == "county-level city"
    for _f, geom, props in features:
        assert geom.geom_type == "Polygon"
        assert geom.contains(shapely.Point(props["seed_point"]))
    urban = [p["area_km2"] for f, _g, p in features if kinds[f] == "district"]
    rural = [p["area_km2"] for f, _g, p in features if kinds[f] != "district"]
    assert max(urban) < min(rural)
    assert 20_000 < sum(urban + rural) < 40_000  # the real prefecture: about 27,000 km²


def test_counties_lie_around_their_real_seats():
    by_code = {f: g for f, g, _p in geography.districts()}
    seats = {"220281": (127.34, 43.72), "220282": (126.75, 42.97), "220283": (126.96, 44.41),
             "220284": (126.06, 42.95), "220221": (126.50, 43.67)}
    for code, seat in seats.items():
        assert by_code[code].contains(shapely.Point(seat))
    centre = shapely.Point(126.55, 43.84)
    assert any(by_code[c].contains(centre) for c in ("220202", "220203", "220204", "220211"))


def test_streets_partition_their_districts():
    features = geography.streets()
    expected = [f"{d}{i:03d}" for d, names in data.STREETS.items() for i in range(1, len(names) + 1)]
    assert [f for f, *_ in features] == expected
    districts = {f: g for f, g, _p in geography.districts()}
    for district in data.STREETS:
        mine = [g for f, g, p in features if p["district"] == district]
        assert_partition(mine, districts[district])
    kinds = {p["name"]: p["kind"] for _f, _g, p in features}
    assert kinds["兴华街道"] == "subdistrict" and kinds["孤店子镇"] == "town"


def test_communities_partition_their_streets():
    features = geography.communities()
    expected = [f"{s}{j:03d}" for s, names in data.COMMUNITIES.items() for j in range(1, len(names) + 1)]
    assert [f for f, *_ in features] == expected
    codes = {d.code for d in data.territory() if d.kind == "community"}
    assert {f for f, *_ in features} == codes
    streets = {f: g for f, g, _p in geography.streets()}
    districts = {f: g for f, g, _p in geography.districts()}
    for street in data.COMMUNITIES:
        mine = [g for _f, g, p in features if p["street"] == street]
        assert_partition(mine, streets[street])
    for _f, geom, props in features:
        assert area(shapely.difference(geom, districts[props["district"]])) < TOL * area(geom)


def test_roads_and_river_lie_in_the_city():
    outline = geography.outline()
    roads = geography.roads()
    assert len(roads) > 50
    assert {p["class"] for *_x, p in roads} == {"主干路", "次干路", "支路"}
    assert len({f for f, *_ in roads}) == len(roads)
    for _f, geom, props in roads:
        assert geom.geom_type == "LineString" and props["name"]
        assert outline.contains(geom)
    names = {p["name"] for *_x, p in roads}
    assert {"吉林大街", "解放大路", "松江路"} <= names
    # Only main roads cross the Songhua (on bridges).
    assert {p["class"] for *_x, p in roads if p["crosses_river"]} == {"主干路"}
    water, line = geography.river()
    assert water[1].geom_type == "Polygon" and line[1].geom_type == "LineString"
    assert water[2]["name"] == "松花江"
    assert area(shapely.difference(water[1], outline)) < TOL * area(water[1])


def test_grid_cells_cover_the_communities():
    cells = geography.grid_cells()
    communities = {f: g for f, g, _p in geography.communities()}
    assert len(cells) > 500
    parsed = [(grids.parse_code(f), g) for f, g, _p in cells]
    assert grids.check_cells(parsed, communities) == []
    assert {p["community"] for *_x, p in cells} == set(communities)
    for fid, _g, props in cells:
        assert fid == props["code"] and fid.startswith(props["community"])
        assert props["area_m2"] <= 2 * 200 * 200
    total = sum(p["area_m2"] for *_x, p in cells) / 1e6
    assert total == pytest.approx(sum(p["area_km2"] for *_x, p in geography.communities()), rel=1e-3)
    finer = geography.grid_cells(cell_m=100)
    assert 3 * len(cells) < len(finer) < 5 * len(cells)


def test_the_same_geography_on_every_call_and_run():
    layers = {"districts": geography.districts, "streets": geography.streets,
              "communities": geography.communities, "roads": geography.roads,
              "river": geography.river, "grid_cells": geography.grid_cells}
    here = {name: layer_digest(fn()) for name, fn in layers.items()}
    assert here == {name: layer_digest(fn()) for name, fn in layers.items()}
    first = geography.districts()
    first[0][2]["name"] = "changed"  # callers get their own copies
    assert geography.districts()[0][2]["name"] == "昌邑区"
    script = ("from tests.demo.test_geography import layer_digest\n"
              "from cityos.demo import geography as g\n"
              f"print({{n: layer_digest(getattr(g, n)()) for n in {sorted(layers)!r}}})")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == repr({n: here[n] for n in sorted(layers)})
