"""Underground pipes (地下管线): topology checks, burst analysis and "before you dig" on real geometry."""

from __future__ import annotations

import random
import time

import pytest
from pyproj import CRS, Geod, Transformer
from shapely.geometry import LineString, Point

from cityos.core.errors import Invalid, NotFound
from cityos.maps.pipes import (
    ISSUE_KINDS,
    PIPE_KINDS,
    Customer,
    Network,
    Pipe,
    Source,
    Terminal,
    Valve,
    generate_network,
)

# The test draws in metres on its own Transverse Mercator at Jilin and converts to lon/lat, so the
# network's own projection (centred elsewhere) is checked against an independent one.
_TO_LONLAT = Transformer.from_crs(
    CRS.from_proj4("+proj=tmerc +lat_0=43.84 +lon_0=126.55 +k=1 +ellps=WGS84 +units=m"), "EPSG:4326",
    always_xy=True,
)
GEOD = Geod(ellps="WGS84")


def ll(x: float, y: float) -> tuple[float, float]:
    return _TO_LONLAT.transform(x, y)


def pt(x: float, y: float) -> Point:
    return Point(ll(x, y))


def line(*xy: tuple[float, float]) -> LineString:
    return LineString([ll(x, y) for x, y in xy])


# S ── M1 (V1) ── A ── L1 ── B ── BR1 (V3) ── E ── BR2 (V4) ── F (plug)
#                 │          │ L2 (V5 near B, V6 near C)  └ BR5 ── hydrant
#                 L4         │
#                 D ── L3 ── C ── BR4 ── H
#                 │ BR3 (V2, closed)
#                 G (plug)
A, B, C, D = (200, 0), (400, 0), (400, 200), (200, 200)
E, F, G, H = (600, 0), (800, 0), (200, 400), (600, 200)
PIPES = {
    "M1": ((0, 0), A), "L1": (A, B), "L2": (B, C), "L3": (C, D), "L4": (D, A),
    "BR1": (B, E), "BR2": (E, F), "BR5": (E, (600, -150)), "BR3": (D, G), "BR4": (C, H),
}
VALVES = {
    "V1": ((100, 0), "open"), "V2": ((200, 210), "closed"), "V3": ((410, 0), "open"),
    "V4": ((610, 0), "open"), "V5": ((400, 10), "open"), "V6": ((400, 190), "open"),
}
CUSTOMERS = {  # customer: (position, the pipe it hangs on)
    "c01": (50, 15), "c02": (300, -15), "c03": (185, 100), "c04": (300, 215), "c05": (415, 100),
    "c06": (500, 215), "c07": (500, 15), "c08": (615, -75), "c09": (700, 15), "c10": (780, -15),
    "c11": (215, 300), "c12": (620, 200),  # c11 lies behind the closed V2; c12 past the end of BR4
}


def water(extra_pipes=(), extra_valves=(), extra_customers=()):
    pipes = [Pipe(k, "water", line(a, b), "ductile_iron", 200, 2.0, 2005, "市供水公司") for k, (a, b) in PIPES.items()]
    valves = [Valve(k, "water", pt(*xy), status) for k, (xy, status) in VALVES.items()]
    customers = [Customer(k, pt(*xy), f"用户 {k}") for k, xy in CUSTOMERS.items()]
    terminals = [Terminal("T1", "plug", pt(*F)), Terminal("T2", "hydrant", pt(600, -150)), Terminal("T3", "plug", pt(*G))]
    return Network.build(
        [*pipes, *extra_pipes], [*valves, *extra_valves], [*customers, *extra_customers],
        [Source("S1", "water", pt(0, 0), "水厂")], terminals,
    )


@pytest.fixture(scope="module")
def net() -> Network:
    return water()


def ids(items) -> list[str]:
    return [i.id for i in items]


def test_kinds_are_data():
    assert {k: (v.zh, v.supplied) for k, v in PIPE_KINDS.items()} == {
        "water": ("给水", True), "drainage": ("排水", False), "gas": ("燃气", True),
        "heat": ("热力", True), "power": ("电力", False), "telecom": ("通信", False),
    }
    assert all(k.colour.startswith("#") and k.depth_m[0] < k.depth_m[1] for k in PIPE_KINDS.values())
    assert all(k.zh and k.en for k in ISSUE_KINDS.values())


def test_burst_on_a_branch_closes_its_two_valves(net):
    r = net.burst("BR1")
    assert ids(r.valves_to_close) == ["V3", "V4"]
    assert r.valves_already_closed == () and r.warnings == ()
    assert r.isolated_pipe_ids == ("BR1", "BR2", "BR5")
    assert r.isolated_length_m == pytest.approx(190 + 10 + 150, abs=0.01)
    assert ids(r.customers_in_zone) == ["c07", "c08"]
    assert ids(r.customers_downstream) == ["c09", "c10"]  # beyond V4, with no other way to the source
    assert ids(r.customers_cut_off) == ["c07", "c08", "c09", "c10"]
    assert r.unsupplied_pipe_ids == ("BR2",)
    assert r.segment.length > 0 and GEOD.geometry_length(r.segment) == pytest.approx(190, abs=0.05)
    assert r.area.geom_type in ("Polygon", "MultiPolygon")
    for pid in ("BR1", "BR5", "BR2"):
        assert r.area.contains(line(*PIPES[pid]))
    assert r.area.contains(pt(500, 45)) and not r.area.contains(pt(500, 55))  # a 50 m buffer, in metres


def test_burst_on_the_loop_keeps_supply_round_the_other_side(net):
    r = net.burst("L2")
    assert ids(r.valves_to_close) == ["V5", "V6"]
    assert r.isolated_pipe_ids == ("L2",)
    assert r.isolated_length_m == pytest.approx(180, abs=0.01)
    assert ids(r.customers_in_zone) == ["c05"]
    assert r.customers_downstream == ()  # C, L3, BR4 still fed from A through D
    assert not {"c04", "c06", "c12", "c07"} & set(ids(r.customers_cut_off))
    assert r.area.contains(line((400, 10), (400, 190)))


def test_burst_at_a_point_picks_the_piece_between_cut_points(net):
    r = net.burst("L2", at=pt(400, 5))
    assert GEOD.geometry_length(r.segment) == pytest.approx(10, abs=0.05)
    assert "V5" in ids(r.valves_to_close)


def test_burst_next_to_an_already_closed_valve(net):
    r = net.burst("BR4")
    assert ids(r.valves_to_close) == ["V1", "V3", "V5", "V6"]
    assert ids(r.valves_already_closed) == ["V2"]
    assert [(w.kind, w.id) for w in r.warnings] == [("valve_already_closed", "V2")]
    assert "已处于关闭状态" in r.warnings[0].message and "already closed" in r.warnings[0].message
    assert r.isolated_pipe_ids == ("M1", "L1", "L2", "L3", "L4", "BR1", "BR3", "BR4")  # input order
    assert ids(r.customers_in_zone) == ["c02", "c03", "c04", "c06", "c12"]
    # c11 behind V2 had no supply before the break, so the break does not cut it off.
    assert ids(r.customers_downstream) == ["c05", "c07", "c08", "c09", "c10"]
    assert "c01" not in ids(r.customers_cut_off)

    behind = net.burst("BR3")  # the dry stretch beyond V2: nothing to close
    assert behind.valves_to_close == () and ids(behind.valves_already_closed) == ["V2"]
    assert [w.kind for w in behind.warnings] == ["valve_already_closed"]
    assert ids(behind.customers_in_zone) == ["c11"] and behind.customers_downstream == ()


def test_burst_without_any_valve_isolates_the_whole_part():
    net = Network.build(
        [Pipe("P1", "gas", line((0, 0), (100, 0))), Pipe("P2", "gas", line((100, 0), (100, 100)))],
        customers=[Customer("k1", pt(50, 10), kind="gas"), Customer("k2", pt(110, 90), kind="gas")],
        sources=[Source("G1", "gas", pt(0, 0), "门站")],
    )
    r = net.burst("P2")
    assert r.valves_to_close == () and r.isolated_pipe_ids == ("P1", "P2")
    assert ids(r.customers_in_zone) == ["k1", "k2"]
    assert {w.kind for w in r.warnings} == {"no_valve", "source_in_zone"}


def test_a_tee_drawn_without_splitting_the_main_still_connects():
    net = Network.build(
        [Pipe("P1", "heat", line((0, 0), (200, 0))), Pipe("P2", "heat", line((100, 0.3), (100, 100)))],
        [Valve("Va", "heat", pt(150, 0)), Valve("Vb", "heat", pt(100, 10))],
        [Customer("k1", pt(110, 90), kind="heat"), Customer("k2", pt(190, 10), kind="heat")],
        [Source("H1", "heat", pt(0, 0), "热源厂")],
        [Terminal("T1", "plug", pt(200, 0)), Terminal("T2", "plug", pt(100, 100))],
    )
    assert net.check() == []  # P2's foot sits 30 cm off P1's interior: a tee, not a dangling end
    r = net.burst("P1", at=pt(50, 0))
    assert ids(r.valves_to_close) == ["Va", "Vb"]
    assert ids(r.customers_downstream) == ["k1", "k2"] and r.customers_in_zone == ()
    assert ids(net.burst("P2").customers_in_zone) == ["k1"]


def test_an_empty_network_is_fine():
    net = Network.build([])
    assert net.check() == [] and net.near(pt(0, 0), 10) == []


def test_burst_refuses_unknown_and_unpressurized_pipes(net):
    with pytest.raises(NotFound):
        net.burst("nope")
    drains = Network.build([Pipe("D1", "drainage", line((0, 0), (50, 0)))])
    with pytest.raises(Invalid):
        drains.burst("D1")


def test_check_of_the_clean_network_finds_only_the_closed_off_branch(net):
    issues = net.check()
    assert [(i.kind, i.id) for i in issues] == [("closed_off_part", "BR3")]
    assert "190 m" in issues[0].message and "关闭的阀门" in issues[0].message


def test_check_finds_the_faults():
    net = water(
        extra_pipes=[
            Pipe("X1", "water", line(C, (400, 300))),  # a stub to nowhere
            Pipe("Y1", "water", line((1000, 1000), (1100, 1000))),  # an island
            Pipe("Y2", "water", line((1100, 1000), (1100, 1100))),
            Pipe("Z0", "water", line(F, (800.1, 0))),  # 10 cm
            Pipe("L1dup", "water", line(B, A)),  # L1 drawn twice
            Pipe("GAS1", "gas", line(A, (200, -100))),  # shares A but is another utility
        ],
        extra_valves=[Valve("V9", "water", pt(300, 100))],
        extra_customers=[Customer("c99", pt(300, 90))],
    )
    found = {(i.kind, i.id) for i in net.check()}
    assert found == {
        ("dangling_end", "X1"), ("dangling_end", "Y1"), ("dangling_end", "Y2"),
        ("dangling_end", "GAS1"), ("disconnected_part", "GAS1"),
        ("unconnected_valve", "V9"), ("unattached_customer", "c99"),
        ("disconnected_part", "Y1"), ("closed_off_part", "BR3"),
        ("zero_length", "Z0"), ("duplicate_pipe", "L1dup"),
    }
    dangling = {i.id: i.geom for i in net.check() if i.kind == "dangling_end"}
    assert GEOD.inv(*dangling["X1"].coords[0], *ll(400, 300))[2] < 0.01


def _geodesic_distance(p: Point, seg: LineString) -> float:
    """Distance from p to a densified geodesic (1 cm steps): the yardstick for near()."""
    (x1, y1), (x2, y2) = seg.coords
    n = int(GEOD.inv(x1, y1, x2, y2)[2] / 0.01)
    pts = [(x1, y1), *GEOD.npts(x1, y1, x2, y2, n), (x2, y2)]
    return min(GEOD.inv(p.x, p.y, x, y)[2] for x, y in pts)


def test_near_lists_pipes_with_distances(net):
    here = pt(203, 3)  # just off junction A
    hits = net.near(here, 5)
    assert [p.id for p, _ in hits] in (["L1", "L4", "M1"], ["L4", "L1", "M1"])
    for pipe, d in hits:
        assert d == pytest.approx(_geodesic_distance(here, pipe.geom), abs=0.1)
        assert pipe.depth_m == 2.0
    assert dict((p.id, d) for p, d in hits)["M1"] == pytest.approx(18**0.5, abs=0.1)
    assert [(p.id, round(d, 1)) for p, d in net.near(pt(300, 4.5), 5)] == [("L1", 4.5)]
    assert net.near(pt(300, 5.5), 5) == []
    trench = LineString([ll(300, -4), ll(300, 4)])  # a trench across L1
    assert [(p.id, d) for p, d in net.near(trench, 5)] == [("L1", 0.0)]
    assert net.near(here, 5, kinds=["gas"]) == []


def test_generated_network_is_deterministic_and_clean():
    a = generate_network(126.55, 43.84, 1000, 100, seed=7)
    assert a == generate_network(126.55, 43.84, 1000, 100, seed=7)
    assert a != generate_network(126.55, 43.84, 1000, 100, seed=8)
    pipes, valves, customers, sources = a
    assert len(pipes) == 2 * 11 * 10 and len(sources) == 1 and len(valves) > 0.6 * len(pipes)
    assert all(p.diameter_mm and p.depth_m and p.material for p in pipes)
    net = Network.build(pipes, valves, customers, sources)
    assert net.check() == []
    r = net.burst(pipes[57].id)
    assert r.valves_to_close and not r.warnings


def test_twenty_thousand_segments_build_and_burst_fast():
    pipes, valves, customers, sources = generate_network(126.55, 43.84, 10_000, 100, seed=1)
    assert len(pipes) >= 20_000
    t0 = time.perf_counter()
    net = Network.build(pipes, valves, customers, sources)
    built = time.perf_counter() - t0
    times = []
    for pid in random.Random(3).sample([p.id for p in pipes], 20):
        t0 = time.perf_counter()
        r = net.burst(pid)
        times.append(time.perf_counter() - t0)
        assert r.valves_to_close or r.warnings
    print(f"\n{len(pipes)} pipes, {len(valves)} valves, {len(customers)} customers: build {built:.2f} s, "
          f"burst max {max(times) * 1000:.1f} ms, mean {sum(times) / len(times) * 1000:.1f} ms")
    assert built < 10 and max(times) < 1
