"""The spatial adapter on both databases: round trips, exact box queries that keep pages full,
the SQLite R*Tree in step, nearest and within-distance against brute force, points to polygons."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import shapely
from pyproj import Geod
from sqlalchemy import and_, not_, or_, text

from cityos.maps import store
from tests.maps.conftest import CITY_BOX, grid_polygons, new_layer, random_points

GEOD = Geod(ellps="WGS84")
UTC = dt.UTC


@pytest.fixture
def layer(seeded):
    return new_layer(seeded, "things", attributes=[
        {"name": "name", "type": "string"}, {"name": "n", "type": "integer"},
        {"name": "x", "type": "number"}, {"name": "ok", "type": "boolean"},
        {"name": "day", "type": "date"}, {"name": "at", "type": "datetime"}])


def shapes():
    poly_with_hole = shapely.Polygon(
        [(126.50, 43.80), (126.60, 43.80), (126.60, 43.90), (126.50, 43.90)],
        [[(126.52, 43.82), (126.58, 43.82), (126.58, 43.88), (126.52, 43.88)]])
    return {
        "pt": shapely.Point(126.56, 43.84),  # in the hole, off the line
        "line": shapely.LineString([(126.40, 43.70), (126.70, 44.00)]),
        "poly": shapely.box(126.45, 43.75, 126.48, 43.78),
        "holed": poly_with_hole,
        "multi": shapely.MultiPoint([(126.41, 43.71), (126.42, 43.72)]),
    }


def test_round_trip_keeps_geometry_properties_and_times(seeded, layer):
    spatial = store.adapter(seeded)
    at = dt.datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    feats = [(fid, g, {"name": fid, "n": i}, at + dt.timedelta(hours=i), None)
             for i, (fid, g) in enumerate(shapes().items())]
    assert spatial.insert(layer.id, feats) == 5
    got = {f.fid: f for f in spatial.bbox_query(layer.id, None, limit=10)}
    assert set(got) == set(shapes())
    for fid, g in shapes().items():
        assert got[fid].geom.equals_exact(g, 0), fid
        assert got[fid].props["name"] == fid
    assert len(got["holed"].geom.interiors) == 1
    assert got["line"].t_start == at + dt.timedelta(hours=1)
    assert spatial.feature_get(layer.id, "holed").geom.equals_exact(shapes()["holed"], 0)
    assert spatial.feature_get(layer.id, "nope") is None
    n, box = spatial.layer_extent(layer.id)
    assert n == 5 and box == pytest.approx((126.40, 43.70, 126.70, 44.00))


def test_box_query_is_exact_for_lines_and_polygons(seeded, layer):
    spatial = store.adapter(seeded)
    spatial.insert(layer.id, [(fid, g, {}, None, None) for fid, g in shapes().items()])
    # Inside the hole: the holed polygon's box covers it, the polygon does not; the diagonal line's
    # box covers it too, the line passes elsewhere.
    in_hole = (126.53, 43.86, 126.54, 43.87)
    assert [f.fid for f in spatial.bbox_query(layer.id, in_hole)] == []
    assert spatial.count(layer.id, in_hole) == 0
    assert {f.fid for f in spatial.bbox_query(layer.id, in_hole, exact=False)} == {"holed", "line"}
    # Touching the point exactly on the box's edge counts (ST_Intersects includes the boundary).
    assert [f.fid for f in spatial.bbox_query(layer.id, (126.56, 43.839, 126.561, 43.8395))] == []
    assert {f.fid for f in spatial.bbox_query(layer.id, (126.559, 43.839, 126.561, 43.841))} == {"pt"}
    assert {f.fid for f in spatial.bbox_query(layer.id, (126.56, 43.84, 126.57, 43.85))} == {"pt"}
    # The ring of the holed polygon and the line both cross this box.
    ring = (126.505, 43.805, 126.515, 43.815)
    assert {f.fid for f in spatial.bbox_query(layer.id, ring)} == {"holed", "line"}


def test_pages_stay_full_when_many_boxes_overlap_but_geometries_miss(seeded, layer):
    spatial = store.adapter(seeded)
    # 60 diagonal lines whose boxes all cover the query box, half of them passing through it.
    query = (126.55, 43.85, 126.56, 43.86)
    feats = []
    for i in range(60):
        if i % 2:
            g = shapely.LineString([(126.40, 43.70 + i * 1e-4), (126.70, 44.00 + i * 1e-4)])  # misses
            g = shapely.LineString([(126.40, 43.99 - i * 1e-4), (126.70, 43.70 - i * 1e-4)])
        else:
            g = shapely.LineString([(126.40, 43.70), (126.70, 44.00 - i * 1e-5)])  # crosses the box
        feats.append((f"f{i:02d}", g, {"n": i}, None, None))
    spatial.insert(layer.id, feats)
    expected = {fid for fid, g, *_ in feats if g.intersects(shapely.box(*query))}
    assert 20 < len(expected) < 60
    pages = [spatial.bbox_query(layer.id, query, limit=7, offset=o) for o in range(0, 70, 7)]
    sizes = [len(p) for p in pages]
    assert sizes[: len(expected) // 7] == [7] * (len(expected) // 7)
    seen = [f.fid for p in pages for f in p]
    assert len(seen) == len(set(seen)) and set(seen) == expected
    assert spatial.count(layer.id, query) == len(expected)


def test_rtree_follows_inserts_updates_and_deletes(seeded, layer, backend):
    if backend != "sqlite":
        pytest.skip("the R*Tree exists on SQLite only")
    spatial = store.adapter(seeded)
    spatial.insert(layer.id, [(fid, g, {}, None, None) for fid, g in shapes().items()])
    conn = seeded.connection()

    def tree() -> dict[int, tuple[float, ...]]:
        return {r[0]: tuple(r[1:]) for r in conn.execute(text("SELECT * FROM map_features_rtree"))}

    ids = dict(conn.execute(text("SELECT fid, id FROM map_features")).all())
    assert set(tree()) == set(ids.values())
    assert tree()[ids["pt"]][4] == layer.id
    # Move the point: the tree moves with it, and box queries find it at its new place.
    moved = shapely.Point(126.70, 43.72)
    conn.execute(text("UPDATE map_features SET geom = :g, minx = :x, maxx = :x, miny = :y, maxy = :y "
                      "WHERE fid = 'pt'"), {"g": shapely.to_wkb(moved), "x": moved.x, "y": moved.y})
    assert tree()[ids["pt"]][0] == pytest.approx(126.70, abs=1e-4)
    assert [f.fid for f in spatial.bbox_query(layer.id, (126.69, 43.71, 126.71, 43.73))] == ["pt"]
    assert spatial.delete_features(layer.id, ["pt", "line"]) == 2
    assert set(tree()) == {ids[f] for f in ("poly", "holed", "multi")}
    assert spatial.delete_layer_features(layer.id) == 3
    assert tree() == {}


def test_layers_do_not_see_each_other(seeded, layer):
    other = new_layer(seeded, "others")
    spatial = store.adapter(seeded)
    spatial.insert(layer.id, [("a", shapely.Point(126.5, 43.8), {}, None, None)])
    spatial.insert(other.id, [("b", shapely.Point(126.5, 43.8), {}, None, None)])
    assert [f.fid for f in spatial.bbox_query(other.id, CITY_BOX)] == ["b"]
    assert [f.fid for f in spatial.nearest(layer.id, shapely.Point(126.5, 43.8), 5)] == ["a"]


def test_properties_as_typed_sql(seeded, layer):
    spatial = store.adapter(seeded)
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    feats = []
    for i in range(10):
        at = (base + dt.timedelta(hours=i)).astimezone(dt.timezone(dt.timedelta(hours=8 if i % 2 else 0)))
        feats.append((f"f{i}", shapely.Point(126.5 + i / 100, 43.8), {
            "name": f"站点{i}", "n": i, "x": i / 2, "ok": i % 3 == 0, "day": f"2024-01-{i + 1:02d}",
            "at": at.isoformat()}, None, None))
    spatial.insert(layer.id, feats)

    def fids(*where):
        return sorted(f.fid for f in spatial.bbox_query(layer.id, None, where=list(where), limit=100))

    p = spatial.prop
    assert fids(p("n", "integer") >= 7) == ["f7", "f8", "f9"]
    assert fids(p("x", "number") < 1.0) == ["f0", "f1"]
    assert fids(p("ok", "boolean").is_(True)) == ["f0", "f3", "f6", "f9"]
    assert fids(p("day", "date") == dt.date(2024, 1, 5)) == ["f4"]
    assert fids(p("name", "string").startswith("站点1")) == ["f1"]
    # Offsets differ from feature to feature; comparisons are between instants.
    assert fids(p("at", "datetime") > base + dt.timedelta(hours=6, minutes=30)) == ["f7", "f8", "f9"]
    assert fids(p("at", "datetime") == base + dt.timedelta(hours=3)) == ["f3"]
    assert fids(p("n", "integer").in_([1, 2])) == ["f1", "f2"]


def test_time_spans(seeded, layer):
    spatial = store.adapter(seeded)
    t = dt.datetime(2024, 3, 1, tzinfo=UTC)
    h = dt.timedelta(hours=1)
    spatial.insert(layer.id, [
        ("instant", shapely.Point(126.5, 43.8), {}, t, t),
        ("span", shapely.Point(126.5, 43.8), {}, t - 5 * h, t - 2 * h),
        ("open", shapely.Point(126.5, 43.8), {}, t + 2 * h, None),
        ("none", shapely.Point(126.5, 43.8), {}, None, None)])

    def fids(start, end):
        return sorted(f.fid for f in spatial.bbox_query(layer.id, None, where=[store.time_overlaps(start, end)]))

    assert fids(t - h, t + h) == ["instant"]
    assert fids(t - 3 * h, t) == ["instant", "span"]
    assert fids(t + 10 * h, None) == ["open"]
    assert fids(None, t - 4 * h) == ["span"]


def test_spatial_clauses_compose_under_or_and_not(seeded, layer):
    spatial = store.adapter(seeded)
    spatial.insert(layer.id, [(fid, g, {"n": i}, None, None) for i, (fid, g) in enumerate(shapes().items())])
    area = shapely.box(126.49, 43.79, 126.61, 43.91)

    def fids(clause):
        return sorted(f.fid for f in spatial.bbox_query(layer.id, None, where=[clause], limit=100))

    within, _ = spatial.spatial_clause("S_WITHIN", area)
    intersects, _ = spatial.spatial_clause("s_intersects", area)
    disjoint, _ = spatial.spatial_clause("S_DISJOINT", area)
    contains, _ = spatial.spatial_clause("S_CONTAINS", shapely.Point(126.51, 43.85))
    assert fids(within) == ["holed", "pt"]
    assert fids(intersects) == ["holed", "line", "pt"]
    assert fids(disjoint) == ["multi", "poly"]
    assert fids(contains) == ["holed"]
    assert fids(or_(within, spatial.prop("n", "integer") == 2)) == ["holed", "poly", "pt"]
    assert fids(not_(intersects)) == ["multi", "poly"]
    assert fids(and_(intersects, not_(within))) == ["line"]
    with pytest.raises(ValueError):
        spatial.spatial_clause("S_NEAR", area)


def _brute(points, origin):
    _, _, d = GEOD.inv(np.full(len(points), origin.x), np.full(len(points), origin.y),
                       np.array([p.x for p in points]), np.array([p.y for p in points]))
    return np.asarray(d)


def test_nearest_and_within_match_brute_force_geodesics(seeded, layer):
    spatial = store.adapter(seeded)
    xs, ys = random_points(400, seed=3, margin=0)
    pts = [shapely.Point(x, y) for x, y in zip(xs, ys, strict=True)]
    spatial.insert(layer.id, [(f"p{i}", p, {"n": i}, None, None) for i, p in enumerate(pts)])
    for origin in (shapely.Point(126.55, 43.85), shapely.Point(126.40, 43.70), shapely.Point(127.2, 44.3)):
        d = _brute(pts, origin)
        order = np.argsort(d)
        found = spatial.nearest(layer.id, origin, 7)
        assert [f.fid for f in found] == [f"p{i}" for i in order[:7]]
        assert [f.distance for f in found] == pytest.approx(d[order[:7]], abs=0.01)
        near = spatial.within_distance(layer.id, origin, 3000)
        assert [f.fid for f in near] == [f"p{i}" for i in order if d[i] <= 3000]
    assert len(spatial.nearest(layer.id, shapely.Point(126.5, 43.8), 1000)) == 400
    # Non-point features: distance to the nearest edge, zero inside.
    poly = new_layer(seeded, "polys", "polygon")
    cells = grid_polygons(4)
    spatial.insert(poly.id, [(f"c{i}", c, {}, None, None) for i, c in enumerate(cells)])
    inside = spatial.nearest(poly.id, shapely.Point(126.45, 43.74), 1)[0]
    assert inside.fid == "c0" and inside.distance == pytest.approx(0, abs=1e-6)
    west = shapely.Point(126.30, 43.71)
    first = spatial.nearest(poly.id, west, 1)[0]
    assert first.fid == "c0"
    _, _, edge = GEOD.inv(west.x, west.y, CITY_BOX[0], west.y)
    assert first.distance == pytest.approx(edge, rel=1e-4)


def test_assign_matches_brute_force_on_a_grid(seeded):
    grid = new_layer(seeded, "grid", "polygon", attributes=[{"name": "code", "type": "string"}])
    spatial = store.adapter(seeded)
    cells = grid_polygons(10)
    spatial.insert(grid.id, [(f"g{i}", c, {"code": f"G{i:03d}"}, None, None) for i, c in enumerate(cells)])
    xs, ys = random_points(10_000, seed=11)
    got = spatial.assign(xs, ys, grid.id, "code")
    expected = np.full(len(xs), None, dtype=object)
    for i, c in enumerate(cells):
        hit = shapely.intersects_xy(c, xs, ys) & (expected == None)  # noqa: E711 - elementwise
        expected[hit] = f"G{i:03d}"
    assert (got == expected).all()
    assert (got == None).sum() > 100  # noqa: E711 - some points fall outside the grid
    # A point on a shared border goes to the first cell; few points take the tree path.
    corner = grid_polygons(10)[0].bounds
    few = spatial.assign([corner[2], 0.0], [(corner[1] + corner[3]) / 2, 0.0], grid.id, "code")
    assert list(few) == ["G000", None]
    assert list(spatial.assign([], [], grid.id, "code")) == []
