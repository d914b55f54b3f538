"""The demo city's one map, built after its open data: reference and base layers of the right
departments (public), locate answers with 昌邑区's code, a water network of 市供水公司 (not
public) with no topology issues on which a burst analysis runs, and a second build creates
nothing. Built at the tiny scale the other demo tests use."""

from __future__ import annotations

import shapely
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cityos.core import auth
from cityos.core.access import ANONYMOUS
from cityos.core.models import User
from cityos.core.settings import Settings
from cityos.demo import cases_seed, geography, maps_seed, ops_seed, seed
from cityos.maps import pipes, pipes_service, service
from cityos.maps.grids import parse_code

SCALE = 0.0005  # as tests/demo/test_hub_demo.py
OWNERS = {"districts": "220200-mzj", "streets": "220200-mzj", "communities": "220200-mzj",
          "roads": "220200-ghj", "river": "220200-ghj", "grid-cells": "220200-xzzfj",
          "road-works": "220200-jtj"}


def actor(s: Session, username: str):
    return auth.user_actor(s.scalar(select(User).where(User.username == username)))


def test_the_demo_builds_the_map_and_locate_and_burst_work(settings: Settings,
                                                           sessions: sessionmaker[Session]) -> None:
    report = seed.build(settings, scale=SCALE)
    maps = report.maps
    assert maps is not None and maps.layers_created == len(OWNERS) + 4 and maps.references_set == 4
    assert maps.issues == 0 and maps.network == {"pipes": 60, "valves": 41, "customers": 85, "sources": 1}
    assert maps.departments_created == 1 and maps.users_created == 2

    with sessions() as s:
        layers = {la.code: la for la in service.layer_list(s, ANONYMOUS, limit=100)}
        # Later steps add their own layers: the parks of the cases' dispatch rule, the operations
        # center's emergency resources (tests/demo/test_ops_demo.py covers those).
        assert layers.pop(cases_seed.PARKS_LAYER).department.code == cases_seed.SLUGS["parks"]
        assert {layers.pop(code).department.code for code in ops_seed.LAYERS} == {ops_seed.OPS}
        assert set(layers) == set(OWNERS)  # public: everything but the network
        assert {c: la.department.code for c, la in layers.items()} == OWNERS
        counts = {c: la.feature_count for c, la in layers.items()}
        assert counts["districts"] == 9 and counts["streets"] == 17 and counts["communities"] == 8
        assert counts["river"] == 2 and counts["roads"] > 100 and counts["grid-cells"] > 1000
        assert counts["road-works"] == maps_seed.ROAD_WORKS and layers["road-works"].time_field == "start_date"
        assert service.reference_layers(s) == {"district": ("districts", "code"), "street": ("streets", "code"),
                                               "community": ("communities", "code"),
                                               "grid": ("grid-cells", "code")}

        # A point in 昌邑区 (the seed its area was grown from), located by anyone.
        assert service.locate(s, ANONYMOUS, 126.44, 43.95)["district"] == "220202"
        lon, lat = maps_seed.network_centre()
        where = service.locate(s, ANONYMOUS, lon, lat)
        assert where["district"] == "220202" and where["street"] == maps_seed.NETWORK_STREET
        grid = parse_code(where["grid"])
        assert grid.community_code == where["community"] and where["community"].startswith("220202001")
        names = {c: p["name"] for c, _g, p in geography.districts()}
        feats, _ = service.features_query(s, ANONYMOUS, "districts", props={"code": "220202"})
        assert feats[0].props["name"] == names["220202"] == "昌邑区"

        # The network: 市供水公司's, read by its staff, refused to others, free of topology issues.
        water = actor(s, "water_staff")
        assert water.department_code == maps_seed.WATER[0]
        found = pipes_service.network_list(s, water)
        assert [n["code"] for n in found] == [maps_seed.NETWORK] and found[0]["pipes"] == 60
        checked = pipes_service.network_check(s, water, maps_seed.NETWORK)
        assert checked["features"] == [] and checked["pipes"] == 60 and checked["sources"] == 1
        result = pipes_service.burst(s, water, maps_seed.NETWORK, "W000030")
        want = pipes.Network.build(*maps_seed.network(SCALE)).burst("W000030")
        assert sorted(f["id"] for f in result["valves_to_close"]["features"]) == sorted(
            v.id for v in want.valves_to_close)
        assert pipes_service.network_list(s, actor(s, "police_staff")) == []
        box = shapely.box(*layers["districts"].bbox)
        assert box.contains(shapely.Point(lon, lat))
        s.rollback()

    again = seed.build(settings, scale=SCALE)
    assert again.maps is not None and again.maps.created == 0
    assert again.maps.layers_skipped == len(OWNERS) + 4


def test_the_network_lies_in_the_middle_of_xinghua() -> None:
    street = next(g for c, g, _p in geography.streets() if c == maps_seed.NETWORK_STREET)
    ps, vs, cs, ss = maps_seed.network(SCALE)
    assert street.contains(shapely.Point(maps_seed.network_centre()))
    assert all(street.contains(p.geom) for p in ps) and len(ps) == 60
    assert pipes.Network.build(ps, vs, cs, ss).check() == []
    assert maps_seed.network(SCALE)[0][7].geom.equals(ps[7].geom)  # the same on every build
    big = maps_seed.network(1.0)[0]
    assert 500 < len(big) < 600
