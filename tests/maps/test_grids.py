"""Unit grids (单元网格): GB/T 30428.1 codes, generating cells over communities, checking them, and
assigning records to cells."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, Polygon, box

from cityos.core.errors import Invalid
from cityos.maps import grids
from cityos.maps.grids import GridCode, generate_cells, parse_code

CENTRE = (126.5, 43.8)  # the lattice's projection centre in these tests
TO_M, TO_DEG = grids.local_projection([], centre=CENTRE)


def deg(geom: shapely.Geometry) -> shapely.Geometry:
    """A shape drawn in metres around CENTRE, in WGS-84 longitude/latitude."""
    return shapely.transform(geom, TO_DEG)


def m2(geom: shapely.Geometry) -> float:
    """Area in m², edges taken as straight in longitude/latitude (as the cells take them)."""
    return float(shapely.area(shapely.transform(shapely.segmentize(geom, grids.SEGMENT_DEG), TO_M)))


@pytest.fixture(scope="module")
def communities() -> dict[str, shapely.Geometry]:
    """Fourteen communities of one street: a seeded Voronoi over 3 km x 2.5 km, an L-shaped
    community with a courtyard hole, and one smaller than a tenth of a cell."""
    rng = np.random.default_rng(30428)
    frame = box(-1500, -1250, 1500, 1250)
    seeds = shapely.multipoints(rng.uniform((-1500, -1250), (1500, 1250), (12, 2)))
    parts = shapely.intersection(shapely.get_parts(shapely.voronoi_polygons(seeds, extend_to=frame)), frame)
    shapes = list(parts) + [
        Polygon([(2000, 0), (2530, 0), (2530, 170), (2170, 170), (2170, 610), (2000, 610)],
                holes=[[(2050, 40), (2120, 40), (2120, 110), (2050, 110)]]),
        box(2600, 0, 2625, 30),  # 750 m²
    ]
    return {f"220202001{k:03d}": deg(g) for k, g in enumerate(shapes, start=1)}


@pytest.fixture(scope="module")
def cells(communities: dict[str, shapely.Geometry]) -> list[grids.Cell]:
    return generate_cells(communities, 100.0, centre=CENTRE)


# -- codes -----------------------------------------------------------------------------------


def test_code_round_trip():
    code = GridCode("220202", "001", "002", 37)
    assert str(code) == "2202020010020037"
    assert len(str(code)) == grids.CODE_LENGTH == 16
    assert parse_code("2202020010020037") == code
    assert parse_code(" 2202020010020037\n") == code
    assert code.community_code == "220202001002" and code.street_code == "220202001"
    assert GridCode.of("220202001002", 9999) == parse_code("2202020010029999")


@pytest.mark.parametrize("bad", ["220202001002003", "22020200100200371", "22020200100200a7",
                                 "2202020010020000", "", "２２０２０２００１００２００３７", None])
def test_parse_refuses_malformed_codes(bad):
    with pytest.raises(Invalid) as err:
        parse_code(bad)
    assert err.value.errors[0].field == "code"
    assert "/" in err.value.errors[0].reason  # English / Chinese


@pytest.mark.parametrize("parts", [("22020", "001", "002", 1), ("220202", "01", "002", 1),
                                   ("220202", "001", "0002", 1), ("220202", "001", "002", 10000),
                                   ("220202", "001", "002", 0), ("220202", "001", "00x", 1)])
def test_code_parts_are_validated(parts):
    with pytest.raises(Invalid) as err:
        GridCode(*parts)
    assert err.value.errors[0].field == "code"


# -- generation ------------------------------------------------------------------------------


def test_cells_cover_each_community_exactly(communities, cells):
    by_community: dict[str, list[shapely.Geometry]] = {}
    for code, geom in cells:
        by_community.setdefault(code.community_code, []).append(geom)
    assert set(by_community) == set(communities)
    for name, poly in communities.items():
        union = shapely.union_all(by_community[name])
        assert m2(union) == pytest.approx(m2(poly), rel=1e-3)
        assert m2(shapely.symmetric_difference(union, poly)) < 1e-3 * m2(poly)
        assert sum(m2(g) for g in by_community[name]) == pytest.approx(m2(poly), rel=1e-6)  # no overlap
    assert grids.check_cells(cells, communities) == []


def test_every_cell_lies_in_its_community(communities, cells):
    for code, geom in cells:
        assert geom.geom_type == "Polygon" and geom.is_valid
        assert communities[code.community_code].buffer(1e-8).contains(geom)  # 1e-8 degree ≈ 1 mm


def test_codes_unique_and_numbered_from_one(cells):
    codes = [str(c) for c, _g in cells]
    assert len(codes) == len(set(codes))
    seqs: dict[str, list[int]] = {}
    for code, _g in cells:
        seqs.setdefault(code.community_code, []).append(code.seq)
    for numbers in seqs.values():
        assert numbers == list(range(1, len(numbers) + 1))


def test_cells_are_about_a_cell_and_slivers_are_merged(communities, cells):
    areas = {str(c): m2(g) for c, g in cells}
    tiny = "220202001014"
    assert [c for c in areas if c.startswith(tiny)] == [tiny + "0001"]  # the whole community
    assert areas[tiny + "0001"] == pytest.approx(750, rel=1e-3)
    others = [a for c, a in areas.items() if not c.startswith(tiny)]
    assert min(others) >= 0.1 * 100 * 100
    assert max(others) <= 2.0 * 100 * 100
    # The L-shaped community (0.27 km² less its courtyard) gets about 27 cells, not 27 + slivers.
    l_cells = [c for c in areas if c.startswith("220202001013")]
    assert 20 <= len(l_cells) <= 30


def test_sequence_runs_west_to_east_in_rows_from_north():
    """A 300 m x 200 m community on the lattice: six full cells, numbered like text is read."""
    block = {"220202001001": deg(box(0, 0, 300, 200))}
    out = generate_cells(block, 100.0, centre=CENTRE)
    centres = [shapely.transform(g, TO_M).centroid for _c, g in out]
    assert [c.seq for c, _g in out] == [1, 2, 3, 4, 5, 6]
    assert [(round(p.x), round(p.y)) for p in centres] == [
        (50, 150), (150, 150), (250, 150), (50, 50), (150, 50), (250, 50)]
    # Edges straight in lon/lat bow by millimetres in metres: the outer cells differ by under 1 m².
    assert all(m2(g) == pytest.approx(10_000, abs=1) for _c, g in out)


def test_generation_is_stable(communities, cells):
    shuffled = dict(reversed(list(communities.items())))
    again = generate_cells(shuffled, 100.0, centre=CENTRE)
    assert [str(c) for c, _g in again] == [str(c) for c, _g in cells]
    assert all(a.equals_exact(b, 0) for (_c, a), (_d, b) in zip(again, cells, strict=True))


def test_default_centre_gives_the_same_cover(communities):
    out = generate_cells(communities, 200.0)
    assert grids.check_cells(out, communities) == []


def test_generation_refuses_bad_input():
    square = deg(box(0, 0, 100, 100))
    with pytest.raises(Invalid) as err:
        generate_cells({"22020200100": square})
    assert err.value.errors[0].field == "community"
    with pytest.raises(Invalid):
        generate_cells({"220202001001": Point(CENTRE)})
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(Invalid) as err:
            generate_cells({"220202001001": square}, bad)
        assert err.value.errors[0].field == "cell_m"
    with pytest.raises(Invalid, match="9999"):
        generate_cells({"220202001001": deg(box(0, 0, 2000, 2000))}, 15.0, centre=CENTRE)
    with pytest.raises(Invalid, match="9999"):  # refused before building 10^8 squares
        generate_cells({"220202001001": deg(box(0, 0, 10_000, 10_000))}, 1.0, centre=CENTRE)
    assert generate_cells({}) == []


# -- checks and assignment -------------------------------------------------------------------


def test_check_finds_overlaps_gaps_crossings_and_duplicates(communities, cells):
    (c1, g1), (c2, g2), *rest = cells
    wrong = GridCode.of("220202001005", 999)
    broken = [(c1, g1), (c1, g2), (wrong, g1), *rest[1:]]
    problems = grids.check_cells(broken, communities)
    text = "\n".join(problems)
    assert f"duplicate code {c1}" in text
    assert f"cells {c1} and {wrong} overlap" in text
    assert f"cell {wrong} extends" in text and "outside community 220202001005" in text
    assert "community 220202001001:" in text and "not covered" in text  # rest[0] was dropped
    unknown = [(GridCode.of("220202009001", 1), g1)]
    assert "community 220202009001 unknown" in "\n".join(grids.check_cells(unknown, communities))
    assert grids.check_cells([]) == []


def test_assign_records_to_cells(cells):
    sample = cells[::25]
    points = [shapely.point_on_surface(g) for _c, g in sample]
    assert grids.assign_cells(points, cells) == [c for c, _g in sample]
    facility = sample[0][1].buffer(-1e-5)  # a shape: assigned by its point on surface
    far = Point(120.0, 30.0)
    assert grids.assign_cells([facility, far], cells) == [sample[0][0], None]
    assert grids.assign_cells([], cells) == []
    assert grids.assign_cells([far], []) == [None]
