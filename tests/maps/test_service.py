"""Layers as catalog resources and the sharing rules on their features, on both databases:
own department, grants (fields and rows), public layers, audited shared reads, all-or-nothing
writes with the bad feature named, and the spatial services (locate, nearest, within, measure)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import shapely
from sqlalchemy import select

import cityos.hub.service as hub
from cityos.core import access
from cityos.core.access import ANONYMOUS, SYSTEM
from cityos.core.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from cityos.core.models import AuditRecord
from cityos.hub import sharing
from cityos.hub.models import Grant
from cityos.maps import service
from tests.maps.conftest import grid_polygons, new_layer, random_points

UTC = dt.UTC
EVENTS = [{"name": "name", "title": "名称", "type": "string"},
          {"name": "n", "title": "序号", "type": "integer"},
          {"name": "kind", "title": "类别", "type": "string"},
          {"name": "at", "title": "时间", "type": "datetime"}]


def last_audit(session, action):
    return session.scalar(select(AuditRecord).where(AuditRecord.action == action)
                          .order_by(AuditRecord.seq.desc()).limit(1))


def points(n=20, t0=dt.datetime(2024, 6, 1, tzinfo=UTC)):
    return [(f"e{i}", shapely.Point(126.50 + i / 1000, 43.80 + i / 1000),
             {"name": f"事件{i}", "n": i, "kind": "a" if i % 2 else "b",
              "at": (t0 + dt.timedelta(hours=i)).isoformat()}) for i in range(n)]


@pytest.fixture
def events(seeded, actors):
    """An environment bureau layer of 20 timed points, written by its own staff."""
    layer = new_layer(seeded, "env-events", "point", actor=actors["env_staff"], attributes=EVENTS,
                      time_field="at")
    service.features_write(seeded, actors["env_staff"], "env-events", points())
    seeded.commit()
    return layer


def test_a_layer_is_a_catalog_resource(seeded, actors, events):
    res = hub.resource_by_code(seeded, events.resource_code)
    assert res.format == "geo" and res.department.code == "220200-hbj"
    assert [i.name for i in res.items] == ["fid", "name", "n", "kind", "at"]
    assert [i.type for i in res.items] == ["string", "string", "integer", "string", "datetime"]
    assert res.share_type == "unconditional" and res.open_type == "closed"
    assert last_audit(seeded, "maps.layer.create").detail["resource"] == res.code
    assert events.feature_count == 20 and events.bbox == pytest.approx([126.5, 43.8, 126.519, 43.819])
    assert events.source_crs == "OGC:CRS84"
    shown = service.layer_public(events)
    assert shown["storage_crs"] == "OGC:CRS84" and shown["resource"] == res.code


def test_layer_create_checks_its_input_and_access(seeded, actors):
    env = actors["env_staff"]
    with pytest.raises(Invalid) as err:
        new_layer(seeded, "Bad Code", actor=env)
    assert err.value.errors[0].field == "code"
    bad = [({"attributes": [{"name": "fid"}]}, "attributes[0].name"),
           ({"attributes": [{"name": "a", "type": "blob"}]}, "attributes[0].type"),
           ({"time_field": "name"}, "time_field"), ({"geometry_type": "curve"}, "geometry_type"),
           ({"public": True}, "public"), ({"source_crs": "EPSG:9999"}, "source_crs")]
    for override, where in bad:
        with pytest.raises(Invalid) as err:
            new_layer(seeded, "x1", actor=env, **override)
        assert err.value.errors[0].field == where
    layer = new_layer(seeded, "cgcs", actor=env, source_crs="EPSG:4490")
    assert layer.source_crs == "EPSG:4490"
    with pytest.raises(Conflict):
        new_layer(seeded, "cgcs", actor=env)
    with pytest.raises(Forbidden):  # staff write their own department's layers only
        new_layer(seeded, "theirs", actor=actors["police_staff"], department="220200-hbj")
    with pytest.raises(Unauthorized):
        new_layer(seeded, "anon", actor=ANONYMOUS)


def test_own_department_reads_others_are_refused(seeded, actors, events):
    feats, matched = service.features_query(seeded, actors["env_staff"], "env-events", limit=5)
    assert len(feats) == 5 and matched == 20
    assert set(feats[0].props) == {"name", "n", "kind", "at"}
    for who in ("police_staff", "auditor", "resident"):
        with pytest.raises(Forbidden):
            service.features_query(seeded, actors[who], "env-events")
        with pytest.raises(Forbidden):
            service.layer_get(seeded, actors[who], "env-events")
    with pytest.raises(Unauthorized):
        service.features_query(seeded, ANONYMOUS, "env-events")
    assert [la.code for la in service.layer_list(seeded, actors["env_admin"])] == ["env-events"]
    assert service.layer_list(seeded, actors["police_staff"]) == []
    assert last_audit(seeded, "hub.data.read") is None  # own reads are not shared reads


def test_filters_by_box_time_and_properties(seeded, actors, events):
    env = actors["env_staff"]
    feats, matched = service.features_query(seeded, env, "env-events", bbox=(126.5, 43.8, 126.5045, 43.8045))
    assert sorted(f.fid for f in feats) == ["e0", "e1", "e2", "e3", "e4"] and matched == 5
    t0 = dt.datetime(2024, 6, 1, tzinfo=UTC)
    feats, matched = service.features_query(
        seeded, env, "env-events", datetime=(t0 + dt.timedelta(hours=3), t0 + dt.timedelta(hours=5)))
    assert sorted(f.fid for f in feats) == ["e3", "e4", "e5"]
    feats, _ = service.features_query(seeded, env, "env-events", props={"kind": "a", "n": "7"})
    assert [f.fid for f in feats] == ["e7"]
    feats, matched = service.features_query(seeded, env, "env-events", limit=3, offset=18, count=False)
    assert [f.fid for f in feats] == ["e18", "e19"] and matched is None
    with pytest.raises(Invalid):
        service.features_query(seeded, env, "env-events", props={"nope": 1})
    with pytest.raises(Invalid):
        service.features_query(seeded, env, "env-events", bbox=(127, 44, 126, 43))
    with pytest.raises(Invalid):
        service.features_query(seeded, env, "env-events", limit=0)
    assert service.feature_get(seeded, env, "env-events", "e3").props["n"] == 3
    with pytest.raises(NotFound):
        service.feature_get(seeded, env, "env-events", "e99")


def _grant(seeded, actors, fields, row_filter=()):
    code = service.layer_by_code(seeded, "env-events").resource_code
    req = sharing.request_create(seeded, actors["police_staff"], code, purpose="治安巡查点位核对", legal_basis=None, fields=fields, row_filter=list(row_filter))
    assert req.state == "granted"  # the layer's catalog entry shares unconditionally
    return seeded.scalar(select(Grant).where(Grant.request_id == req.id))


def test_a_grant_limits_fields_and_rows_and_each_read_is_audited(seeded, actors, events):
    police = actors["police_staff"]
    grant = _grant(seeded, actors, ["name", "n"], [{"field": "n", "op": "gte", "value": 15}])
    feats, matched = service.features_query(seeded, police, "env-events", purpose="巡查")
    assert matched == 5 and sorted(f.fid for f in feats) == ["e15", "e16", "e17", "e18", "e19"]
    assert all(set(f.props) == {"name", "n"} for f in feats)
    rec = last_audit(seeded, "hub.data.read")
    assert rec.department == "220200-hbj"  # filed under the provider
    assert rec.object_type == "hub.resource" and rec.object_id == events.resource_code
    assert rec.detail["reader_department"] == "220200-gaj" and rec.detail["grant"] == grant.id
    assert rec.detail["layer"] == "env-events" and rec.detail["returned"] == 5
    assert rec.purpose == "巡查" and rec.actor == "police_staff"
    # What the grant leaves out cannot be filtered on either.
    with pytest.raises(Forbidden):
        service.features_query(seeded, police, "env-events", props={"kind": "a"})
    with pytest.raises(Forbidden):
        service.features_query(seeded, police, "env-events", datetime=(None, dt.datetime.now(UTC)))
    with pytest.raises(NotFound):  # outside the granted rows
        service.feature_get(seeded, police, "env-events", "e3")
    near = service.nearest(seeded, police, "env-events", 126.5, 43.8, k=2)
    assert [f.fid for f in near] == ["e15", "e16"] and set(near[0].props) == {"name", "n"}
    assert last_audit(seeded, "hub.data.read").detail["operation"] == "nearest"
    assert [la.code for la in service.layer_list(seeded, police)] == ["env-events"]
    # A row condition the map cannot apply refuses the read rather than leaking rows.
    grant.row_filter = [{"field": "n", "op": "regex", "value": ".*"}]
    seeded.flush()
    with pytest.raises(Forbidden):
        service.features_query(seeded, police, "env-events")
    # Revoked: refused at once.
    sharing.grant_revoke(seeded, actors["env_admin"], grant.id, "巡查结束")
    with pytest.raises(Forbidden):
        service.features_query(seeded, police, "env-events")


def test_public_layers_are_read_without_signing_in(seeded, actors, events):
    with pytest.raises(Invalid):  # the catalog entry is closed to the public
        service.layer_set_public(seeded, actors["env_admin"], "env-events", True)
    park = new_layer(seeded, "parks", "polygon", actor=actors["env_admin"], open_type="open", public=True)
    service.features_write(seeded, actors["env_admin"], "parks",
                           [("p1", shapely.box(126.5, 43.8, 126.51, 43.81), {"name": "北山公园"})])
    feats, matched = service.features_query(seeded, ANONYMOUS, "parks")
    assert matched == 1 and feats[0].props == {"name": "北山公园"}
    assert service.layer_get(seeded, ANONYMOUS, "parks").code == "parks"
    assert [la.code for la in service.layer_list(seeded, ANONYMOUS)] == ["parks"]
    with pytest.raises(Forbidden):
        service.layer_set_public(seeded, actors["police_admin"], "parks", False)
    service.layer_set_public(seeded, actors["env_staff"], "parks", False)
    rec = last_audit(seeded, "maps.layer.public")
    assert rec.detail == {"from": True, "to": False} and rec.department == "220200-hbj"
    assert park.public is False
    with pytest.raises(Unauthorized):
        service.features_query(seeded, ANONYMOUS, "parks")


def test_bad_features_are_named_and_nothing_is_half_written(seeded, actors, events):
    env = actors["env_staff"]
    new_layer(seeded, "zones", "polygon", actor=env, attributes=EVENTS)
    good = [("z1", shapely.box(126.5, 43.8, 126.6, 43.9), {"name": "一区"})]
    service.features_write(seeded, env, "zones", good)
    seeded.commit()
    bowtie = shapely.Polygon([(126.5, 43.8), (126.6, 43.9), (126.6, 43.8), (126.5, 43.9)])
    batch = [("ok", shapely.box(126.6, 43.8, 126.7, 43.9), {"n": 1}),
             ("bow", bowtie, {}),
             ("pt", shapely.Point(126.5, 43.8), {}),
             ("far", shapely.box(300, 43, 301, 44), {}),
             ("typed", shapely.box(126.5, 43.8, 126.6, 43.9), {"n": "many"}),
             ("extra", shapely.box(126.5, 43.8, 126.6, 43.9), {"colour": "red"}),
             ("none", None, {}),
             ("ok", shapely.box(126.6, 43.8, 126.7, 43.9), {})]
    with pytest.raises(Invalid) as err:
        service.features_write(seeded, env, "zones", batch, mode="replace")
    reasons = {e.field: e.reason for e in err.value.errors}
    assert "'bow'" in reasons["features[1]"] and "Self-intersection" in reasons["features[1]"]
    assert "'pt'" in reasons["features[2]"] and "expected a polygon" in reasons["features[2]"]
    assert "'far'" in reasons["features[3]"]
    assert "'typed'" in reasons["features[4]"] and "not an integer" in reasons["features[4]"]
    assert "'extra'" in reasons["features[5]"] and "colour" in reasons["features[5]"]
    assert "'none'" in reasons["features[6]"]
    assert "twice" in reasons["features[7]"]
    seeded.rollback()
    feats, matched = service.features_query(seeded, env, "zones")
    assert matched == 1 and feats[0].fid == "z1"
    assert service.layer_by_code(seeded, "zones").feature_count == 1
    # Safe repairs go through and are reported; appending an existing fid does not.
    spike = shapely.Polygon([(126.5, 43.8), (126.6, 43.8), (126.6, 43.9), (126.55, 43.9), (126.55, 43.95),
                             (126.55, 43.9), (126.5, 43.9)])
    result = service.features_write(seeded, env, "zones", [("z2", spike, {"name": "二区"})], mode="append")
    assert result.written == 1 and result.feature_count == 2 and result.repaired[0][0] == "z2"
    assert service.feature_get(seeded, env, "zones", "z2").geom.is_valid
    with pytest.raises(Invalid) as err:
        service.features_write(seeded, env, "zones", [("z1", shapely.box(0, 0, 1, 1), {})], mode="append")
    assert "already" in err.value.errors[0].reason
    result = service.features_write(seeded, env, "zones", [(None, shapely.box(0, 0, 1, 1), {})])
    assert result.removed == 2 and result.feature_count == 1
    assert last_audit(seeded, "maps.features.write").detail["mode"] == "replace"
    with pytest.raises(Forbidden):
        service.features_write(seeded, actors["police_admin"], "zones", [])


def test_time_attributes_set_the_span(seeded, actors):
    env = actors["env_staff"]
    new_layer(seeded, "works", "line", actor=env, time_field="start", time_end_field="end",
              attributes=[{"name": "start", "type": "date"}, {"name": "end", "type": "date"}])
    line = shapely.LineString([(126.5, 43.8), (126.6, 43.9)])
    with pytest.raises(Invalid) as err:
        service.features_write(seeded, env, "works", [("w", line, {"start": "2024-05-02", "end": "2024-05-01"})])
    assert "before" in err.value.errors[0].reason
    service.features_write(seeded, env, "works", [("w1", line, {"start": "2024-05-01", "end": "2024-05-03"}),
                                                  ("w2", line, {"start": "2024-06-01"})])
    day = dt.datetime(2024, 5, 3, 20, tzinfo=dt.timezone(dt.timedelta(hours=8)))  # city evening
    feats, _ = service.features_query(seeded, env, "works", datetime=(day, day))
    assert [f.fid for f in feats] == ["w1"]
    feats, _ = service.features_query(seeded, env, "works", datetime=(dt.datetime(2030, 1, 1, tzinfo=UTC), None))
    assert [f.fid for f in feats] == ["w2"]  # no end: still going


def test_locate_points_through_the_reference_layers(seeded, actors):
    admin = actors["admin"]
    new_layer(seeded, "districts", "polygon", actor=admin, department="220200", open_type="open",
              public=True, attributes=[{"name": "code", "type": "string"}])
    service.features_write(seeded, admin, "districts", [
        ("cy", shapely.box(126.40, 43.70, 126.575, 44.00), {"code": "220202"}),
        ("cyy", shapely.box(126.575, 43.70, 126.75, 44.00), {"code": "220204"})])
    new_layer(seeded, "grid", "polygon", actor=admin, department="220200", open_type="open", public=True,
              attributes=[{"name": "code", "type": "string"}])
    service.features_write(seeded, admin, "grid", [(f"g{i}", c, {"code": f"G{i:03d}"})
                                                   for i, c in enumerate(grid_polygons(10))])
    with pytest.raises(Forbidden):
        service.reference_set(seeded, actors["env_admin"], "district", "districts", "code")
    service.reference_set(seeded, admin, "district", "districts", "code")
    service.reference_set(seeded, admin, "grid", "grid", "code")
    with pytest.raises(Invalid):
        service.reference_set(seeded, admin, "street", "grid", "nope")
    assert service.reference_layers(seeded) == {"district": ("districts", "code"), "grid": ("grid", "code")}
    assert service.locate(seeded, ANONYMOUS, 126.41, 43.71) == {"district": "220202", "grid": "G000"}
    assert service.locate(seeded, ANONYMOUS, 120.0, 30.0) == {"district": None, "grid": None}
    xs, ys = random_points(2000, seed=5)
    many = service.locate_many(seeded, actors["police_staff"], xs, ys)
    assert many["district"][:3] == [service.locate(seeded, ANONYMOUS, x, y)["district"] for x, y in
                                    zip(xs[:3], ys[:3], strict=True)]
    inside = (xs >= 126.40) & (xs <= 126.75) & (ys >= 43.70) & (ys <= 44.00)
    assert all((v is not None) == bool(i) for v, i in zip(many["grid"], inside, strict=True))
    with pytest.raises(Invalid):
        service.locate(seeded, ANONYMOUS, 200.0, 43.0)
    with pytest.raises(Invalid):
        service.locate_many(seeded, ANONYMOUS, np.zeros(3), np.zeros(2))
    # A reference layer the caller may not read refuses the whole answer.
    service.layer_set_public(seeded, admin, "grid", False)
    with pytest.raises(Unauthorized):
        service.locate(seeded, ANONYMOUS, 126.41, 43.71)
    values = service.assign(seeded, admin, "districts", [126.5, 126.7], [43.8, 43.8], "code")
    assert list(values) == ["220202", "220204"]


def test_within_distance_and_measures(seeded, actors, events):
    env = actors["env_staff"]
    near = service.within_distance(seeded, env, "env-events", shapely.Point(126.5, 43.8), 300)
    assert [f.fid for f in near] == ["e0", "e1", "e2"]
    assert near[0].distance == pytest.approx(0) and near[2].distance < 300
    with pytest.raises(Invalid):
        service.within_distance(seeded, env, "env-events", shapely.Point(126.5, 43.8), -1)
    with pytest.raises(Forbidden):
        service.within_distance(seeded, actors["police_staff"], "env-events", shapely.Point(126.5, 43.8), 300)
    # One degree along the equator, and a 1° × 1° cell there, on WGS-84.
    assert service.length_m(shapely.LineString([(0, 0), (1, 0)])) == pytest.approx(111_319.49, abs=0.01)
    assert service.area_m2(shapely.box(0, 0, 1, 1)) == pytest.approx(12_308_778_361, rel=1e-6)
    assert service.area_m2(shapely.box(0, 0, 1, 1).reverse()) == pytest.approx(12_308_778_361, rel=1e-6)
    assert service.area_m2(shapely.LineString([(0, 0), (1, 0)])) == 0.0


def test_access_decision_matches_the_hub(seeded, actors, events):
    """The layer's read rule is the catalog resource's: the hub's own check agrees."""
    res = hub.resource_by_code(seeded, events.resource_code)
    for who in ("env_staff", "env_admin", "police_staff", "district_admin"):
        hub_says = access.decide(actors[who], "hub.data.read", hub.resource_target(res), seeded).allowed
        try:
            service.layer_get(seeded, actors[who], "env-events")
            maps_says = True
        except Forbidden:
            maps_says = False
        assert hub_says == maps_says, who
    # As in the hub, data is its own department's: even the platform's system actor needs a grant.
    with pytest.raises(Forbidden):
        service.layer_get(seeded, SYSTEM, "env-events")
