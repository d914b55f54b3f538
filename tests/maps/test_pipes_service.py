"""Pipe networks stored as layers, on both databases: a burst over a stored network answers as
`pipes.Network` does over the same pipes; the analysis is audited; other departments are refused
without a grant and audited with one; the topology check, "before you dig", the cache per layer
version, and the JSON API."""

from __future__ import annotations

import pytest
import shapely
from sqlalchemy import select

from cityos.core.access import ANONYMOUS
from cityos.core.errors import Forbidden, Invalid, NotFound, Unauthorized
from cityos.core.models import AuditRecord
from cityos.hub import sharing
from cityos.hub.models import Grant
from cityos.maps import pipes, pipes_service, service
from tests.maps.conftest import actor_of

NET = "water-test"
CENTRE = (126.55, 43.87)


def generated():
    return pipes.generate_network(*CENTRE, size_m=800, spacing_m=200, seed=5)


@pytest.fixture
def network(seeded, actors):
    """A water network of 市环保局 (standing in for the utility in the small city), 40 pipes."""
    ps, vs, cs, ss = generated()
    pipes_service.network_create(seeded, actors["env_admin"], NET, "测试供水管网", department="220200-hbj")
    pipes_service.network_write(seeded, actors["env_staff"], NET,
                                 {"pipes": ps, "valves": vs, "customers": cs, "sources": ss})
    seeded.commit()
    return ps, vs, cs, ss


def last(session, action):
    return session.scalar(select(AuditRecord).where(AuditRecord.action == action)
                          .order_by(AuditRecord.seq.desc()).limit(1))


def ids(collection):
    return sorted(f["id"] for f in collection["features"])


def test_a_network_is_its_layers(seeded, actors, network):
    spec = pipes_service.network_spec(seeded, NET)
    assert spec.layers == {r: f"{NET}-{r}" for r in ("pipes", "valves", "customers", "sources")}
    pipe_layer = service.layer_by_code(seeded, f"{NET}-pipes")
    assert pipe_layer.geometry_type == "line" and pipe_layer.feature_count == len(network[0]) == 40
    assert [a["name"] for a in pipe_layer.attributes] == ["kind", "material", "diameter_mm", "depth_m",
                                                          "year", "owner"]
    listed = pipes_service.network_list(seeded, actors["env_staff"])
    assert [n["code"] for n in listed] == [NET] and listed[0]["title"] == "测试供水管网"
    assert listed[0]["pipes"] == 40 and listed[0]["layers"] == spec.layers
    assert pipes_service.network_list(seeded, actors["police_staff"]) == []
    with pytest.raises(NotFound):
        pipes_service.network_spec(seeded, "nothing")
    with pytest.raises(Invalid):
        pipes_service.network_write(seeded, actors["env_staff"], NET, {"terminals": []})


def test_burst_over_the_stored_network_matches_the_model(seeded, actors, network):
    ps, vs, cs, ss = network
    direct = pipes.Network.build(ps, vs, cs, ss)
    env = actors["env_staff"]
    for pipe_id in ("W000000", "W000013", "W000027", ps[-1].id):
        want = direct.burst(pipe_id)
        got = pipes_service.burst(seeded, env, NET, pipe_id)
        assert ids(got["valves_to_close"]) == sorted(v.id for v in want.valves_to_close)
        assert ids(got["isolated_pipes"]) == sorted(want.isolated_pipe_ids)
        assert ids(got["unsupplied_pipes"]) == sorted(want.unsupplied_pipe_ids)
        assert ids(got["customers_cut_off"]) == sorted(c.id for c in want.customers_cut_off)
        s = got["summary"]
        assert s["isolated_length_m"] == pytest.approx(want.isolated_length_m, abs=0.1)
        assert s["valves_to_close"] == len(want.valves_to_close)
        assert s["customers_cut_off"] == len(want.customers_cut_off)
        assert s["area_m2"] == pytest.approx(service.area_m2(want.area), abs=0.1)
        assert shapely.geometry.shape(got["area"]).equals_exact(want.area, 1e-9)
        assert got["valves_to_close"]["features"][0]["geometry"]["type"] == "Point"
    # A break at a point: the piece of the pipe between its nearest cut points.
    at = ps[13].geom.interpolate(0.9, normalized=True)
    got = pipes_service.burst(seeded, env, NET, "W000013", [at.x, at.y])
    want = direct.burst("W000013", at)
    assert ids(got["valves_to_close"]) == sorted(v.id for v in want.valves_to_close)
    assert got["at"] == [at.x, at.y]
    with pytest.raises(NotFound):
        pipes_service.burst(seeded, env, NET, "W999999")
    with pytest.raises(Invalid):
        pipes_service.burst(seeded, env, NET, "W000013", [500, 43])


def test_a_burst_is_audited_under_the_network_owner(seeded, actors, network):
    result = pipes_service.burst(seeded, actors["env_staff"], NET, "W000013", purpose="12345 报修爆管")
    rec = last(seeded, "maps.network.burst")
    assert rec.actor == "env_staff" and rec.department == "220200-hbj" and rec.purpose == "12345 报修爆管"
    assert rec.object_type == "maps.network" and rec.object_id == NET
    assert rec.detail["pipe"] == "W000013" and sorted(rec.detail["valves"]) == ids(result["valves_to_close"])
    assert rec.detail["customers_cut_off"] == result["summary"]["customers_cut_off"]


def test_other_departments_are_refused_without_a_grant(seeded, actors, network):
    police = actors["police_staff"]
    for call in (lambda a: pipes_service.burst(seeded, a, NET, "W000013"),
                 lambda a: pipes_service.network_load(seeded, a, NET),
                 lambda a: pipes_service.network_check(seeded, a, NET),
                 lambda a: pipes_service.network_get(seeded, a, NET)):
        with pytest.raises(Forbidden):
            call(police)
        with pytest.raises(Unauthorized):
            call(ANONYMOUS)
    assert last(seeded, "maps.network.burst") is None
    dug = pipes_service.dig_check(seeded, police, ps_mid(network), 50)
    assert dug["layers"] == [] and dug["features"] == []


def ps_mid(network):
    return network[0][13].geom.interpolate(0.5, normalized=True)


def _grant_all(seeded, actors):
    """市公安局 asks for every part of the network; the catalog shares unconditionally."""
    grants = []
    for role in ("pipes", "valves", "customers", "sources"):
        layer = service.layer_by_code(seeded, f"{NET}-{role}")
        fields = ["fid", *[a["name"] for a in layer.attributes]]
        req = sharing.request_create(seeded, actors["police_staff"], layer.resource_code,
                                     purpose="爆管应急处置", legal_basis=None, fields=fields)
        assert req.state == "granted"
        grants.append(seeded.scalar(select(Grant).where(Grant.request_id == req.id)))
    return grants


def test_with_a_grant_the_network_is_read_and_every_read_audited(seeded, actors, network):
    grants = _grant_all(seeded, actors)
    police = actors["police_staff"]
    before = len(list(seeded.scalars(select(AuditRecord.id).where(AuditRecord.action == "hub.data.read"))))
    got = pipes_service.burst(seeded, police, NET, "W000013", purpose="应急演练")
    direct = pipes.Network.build(*network).burst("W000013")
    assert ids(got["valves_to_close"]) == sorted(v.id for v in direct.valves_to_close)
    reads = list(seeded.scalars(select(AuditRecord).where(AuditRecord.action == "hub.data.read")
                                .order_by(AuditRecord.seq)))[before:]
    assert {r.detail["layer"] for r in reads} == {f"{NET}-{r}" for r in ("pipes", "valves", "customers",
                                                                          "sources")}
    assert all(r.department == "220200-hbj" and r.purpose == "应急演练" for r in reads)
    assert last(seeded, "maps.network.burst").detail["reader_department"] == "220200-gaj"
    # Served from the cache the second time: still one audited read per layer.
    n = len(reads)
    pipes_service.burst(seeded, police, NET, "W000014", purpose="应急演练")
    again = list(seeded.scalars(select(AuditRecord).where(AuditRecord.action == "hub.data.read")
                                .order_by(AuditRecord.seq)))[before + n:]
    assert len(again) == 4 and all(r.detail["cached"] for r in again)
    dug = pipes_service.dig_check(seeded, police, ps_mid(network), 5)
    assert dug["layers"] == [f"{NET}-pipes"] and "W000013" in ids(dug)
    sharing.grant_revoke(seeded, actors["env_admin"], grants[0].id, "演练结束")
    with pytest.raises(Forbidden):
        pipes_service.burst(seeded, police, NET, "W000013")


def test_the_network_is_cached_per_layer_version(seeded, actors, network):
    env = actors["env_staff"]
    first = pipes_service.network_load(seeded, env, NET)
    assert pipes_service.network_load(seeded, env, NET) is first
    ps, vs, cs, ss = network
    closed = [pipes.Valve(v.id, v.kind, v.geom, "closed" if i == 0 else "open") for i, v in enumerate(vs)]
    pipes_service.network_write(seeded, env, NET, {"valves": closed})
    seeded.commit()
    second = pipes_service.network_load(seeded, env, NET)
    assert second is not first
    assert {v.id: v.status for v in second.valves}[vs[0].id] == "closed"


def test_the_topology_check_finds_what_the_model_finds(seeded, actors, network):
    env = actors["env_staff"]
    clean = pipes_service.network_check(seeded, env, NET)
    assert clean["features"] == [] and clean["counts"] == {} and clean["pipes"] == 40
    ps, vs, cs, ss = network
    a = ps[0].geom.coords[0]
    stray = pipes.Pipe("W-STRAY", "water", shapely.LineString([(a[0] - 0.003, a[1] - 0.003),
                                                               (a[0] - 0.002, a[1] - 0.002)]))
    pipes_service.network_write(seeded, env, NET, {"pipes": [*ps, stray]})
    found = pipes_service.network_check(seeded, env, NET)
    want = pipes.Network.build([*ps, stray], vs, cs, ss).check()
    assert found["counts"] == {k: sum(1 for i in want if i.kind == k) for k in {i.kind for i in want}}
    assert found["counts"]["dangling_end"] == 2 and found["counts"]["disconnected_part"] == 1
    assert {f["properties"]["id"] for f in found["features"]} >= {"W-STRAY"}
    assert all(" / " in f["properties"]["message"] for f in found["features"])


def test_before_you_dig_lists_nearby_pipes_with_depths(seeded, actors, network):
    env = actors["env_staff"]
    ps = network[0]
    where = ps_mid(network)
    found = pipes_service.dig_check(seeded, env, where, 5)
    assert ids(found) == ["W000013"] and found["layers"] == [f"{NET}-pipes"]
    hit = found["features"][0]["properties"]
    assert hit["depth_m"] == ps[13].depth_m and hit["kind_zh"] == "给水" and hit["distance_m"] < 0.01
    assert found["kinds"]["water"]["count"] == 1 and found["kinds"]["water"]["min_depth_m"] == ps[13].depth_m
    wide = pipes_service.dig_check(seeded, env, where, 250)
    distances = [f["properties"]["distance_m"] for f in wide["features"]]
    assert len(distances) > 5 and distances == sorted(distances) and max(distances) <= 250
    assert pipes_service.dig_check(seeded, env, where, 250, kinds=["gas"])["features"] == []
    with pytest.raises(Invalid):
        pipes_service.dig_check(seeded, env, where, 5000)
    with pytest.raises(Invalid):
        pipes_service.dig_check(seeded, env, where, 5, kinds=["oil"])


def test_the_json_api(sessions, city, client):
    with sessions() as s:
        env_admin = actor_of(s, "env_admin")
        ps, vs, cs, ss = generated()
        pipes_service.network_create(s, env_admin, NET, "测试供水管网", department="220200-hbj")
        pipes_service.network_write(s, env_admin, NET, {"pipes": ps, "valves": vs, "customers": cs,
                                                         "sources": ss})
        s.commit()
    env, police = city.headers("env_staff"), city.headers("police_staff")
    r = client.get("/api/maps/networks", headers=env)
    assert r.status_code == 200 and [n["code"] for n in r.json()["items"]] == [NET]
    assert client.get("/api/maps/networks", headers=police).json()["items"] == []
    assert client.get(f"/api/maps/networks/{NET}", headers=env).json()["pipes"] == 40
    assert client.get(f"/api/maps/networks/{NET}", headers=police).status_code == 403
    r = client.post(f"/api/maps/networks/{NET}/burst", json={"pipe_id": "W000013"}, headers=env)
    assert r.status_code == 200, r.text
    body = r.json()
    want = pipes.Network.build(ps, vs, cs, ss).burst("W000013")
    assert ids(body["valves_to_close"]) == sorted(v.id for v in want.valves_to_close)
    assert body["area"]["type"] in ("Polygon", "MultiPolygon")
    assert client.post(f"/api/maps/networks/{NET}/burst", json={"pipe_id": "W000013"},
                       headers=police).status_code == 403
    assert client.post(f"/api/maps/networks/{NET}/burst", json={"pipe_id": "nope"},
                       headers=env).status_code == 404
    assert client.post(f"/api/maps/networks/{NET}/burst", json={"pipe_id": "W000013", "extra": 1},
                       headers=env).status_code == 422
    mid = ps[13].geom.interpolate(0.5, normalized=True)
    r = client.post("/api/maps/networks/dig-check", headers=env,
                    json={"geometry": {"type": "Point", "coordinates": [mid.x, mid.y]}, "metres": 5})
    assert r.status_code == 200 and ids(r.json()) == ["W000013"]
    assert client.post("/api/maps/networks/dig-check", headers=env, json={
        "geometry": {"type": "Point", "coordinates": [mid.x, mid.y]}, "metres": 900}).status_code == 422
    for bad in ({"metres": 5}, {"geometry": None, "metres": 5}, {"geometry": {"coordinates": [1, 2]}, "metres": 5}):
        r = client.post("/api/maps/networks/dig-check", headers=env, json=bad)  # what a geometry is,
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "geometry", r.text  # not Python's words
        assert "NoneType" not in r.text and "attribute" not in r.text
    r = client.get(f"/api/maps/networks/{NET}/check", headers=env)
    assert r.status_code == 200 and r.json()["counts"] == {}
    with sessions() as s:
        assert last(s, "maps.network.burst").actor == "env_staff"


def test_network_create_checks_its_parts(seeded, actors):
    with pytest.raises(Invalid):
        pipes_service.network_create(seeded, actors["env_admin"], "w", "管网", roles=["pumps"])
    with pytest.raises(Forbidden):
        pipes_service.network_create(seeded, actors["police_staff"], "w", "管网", department="220200-hbj")
    spec = pipes_service.network_create(seeded, actors["env_admin"], "gas-a", "燃气管网",
                                        roles=["valves", "terminals"])
    assert set(spec.layers) == {"pipes", "valves", "terminals"}
    assert pipes_service.network_of("gas-a-terminals") == "gas-a" and pipes_service.network_of("roads") is None

