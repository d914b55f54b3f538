"""The plan's indicators (表1): computed values match hand counts on a small seeded city, manual
entry follows its rules, and the progress page shows the computed values."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from shapely.geometry import Point
from sqlalchemy import func, select

from cityos.cases import service as cases
from cityos.core.access import SYSTEM
from cityos.core.models import AuditRecord, Department
from cityos.hub import service as hub
from cityos.hub.models import Grant
from cityos.maps import service as maps
from cityos.ops import plan
from cityos.ops.models import PlanIndicator
from cityos.sensing.models import Thing
from tests.conftest import people_spec
from tests.core.test_pages import signed_in

PARKS = "220200-ylj"


def _seed_city(s) -> dict[str, float | None]:  # noqa: ANN001
    """A handful of resources, a layer, cases and monitors whose rates are easy to count by hand."""
    hub.resource_create(s, SYSTEM, people_spec(name="共享资源"))  # conditional: shared
    none1 = hub.resource_create(s, SYSTEM, people_spec(name="不共享资源", share_type="none",
                                                       open_type="open"))
    none2 = hub.resource_create(s, SYSTEM, people_spec(name="授权共享资源", share_type="none"))
    hub.resource_create(s, SYSTEM, people_spec(name="涉密资源", share_type="none", secret=True))
    s.flush()
    park = s.scalar(select(Department).where(Department.code == PARKS))
    s.add(Grant(resource_id=none2.id, department_id=park.id, purpose="测试", fields=["name"], granted_by="t"))
    maps.layer_create(s, SYSTEM, {
        "code": "shelters_t", "title": "避难场所", "department": PARKS, "geometry_type": "point",
        "open_type": "closed", "update_cycle": "yearly",
        "attributes": [{"name": "name", "title": "名称", "type": "string"}]})
    maps.features_write(s, SYSTEM, "shelters_t", [("a", Point(126.55, 43.84), {"name": "北山"})])
    cases.case_intake(s, SYSTEM, {"category": "permit", "description": "申请设置户外广告牌一块",
                                  "reporter_name": "张三", "reporter_phone": "13800000000"}, channel="web")
    cases.case_intake(s, SYSTEM, {"category": "manhole", "description": "井盖破损有危险", "lon": 126.55,
                                  "lat": 43.84}, channel="inspector")
    now = int(time.time() * 1000)
    for i, seen in enumerate([now - 60_000, now - 7_200_000, None]):
        s.add(Thing(department_id=park.id, name=f"污染源{i}", kind="pollution_source", last_seen_at=seen))
    s.commit()
    assert none1.share_type == "none"
    return {}


def test_computed_values_match_hand_counts(ops_city):
    with ops_city.sessions() as s:
        _seed_city(s)
        assert plan.load(s) == len(plan.rows_of())
        assert plan.load(s) == 0  # idempotent
        assert plan.refresh(s) == len(plan.COMPUTED)
        s.commit()
        rows = {r["code"]: r for r in plan.progress(s, SYSTEM)}
        # hub: 3 non-secret resources (+ the shelters layer's own, which the maps engine catalogs).
        layer_res = hub.resource_by_code(s, maps.layer_by_code(s, "shelters_t").resource_code)
        extra_shared = 1 if layer_res.share_type != "none" else 0
        sharing = rows["gov_data_sharing"]
        assert sharing["detail"]["denominator"] == 4
        assert sharing["detail"]["numerator"] == 2 + extra_shared
        assert sharing["detail"]["by_grant_only"] == 1
        assert sharing["value"] == pytest.approx(100 * (2 + extra_shared) / 4, abs=0.01)
        # open data: one open-able resource (open type "open"), nothing published.
        assert rows["public_data_open"]["detail"] == {**rows["public_data_open"]["detail"],
                                                      "numerator": 0, "denominator": 1}
        assert rows["public_data_open"]["value"] == 0
        # one map: parks owns a layer; parks also holds the grant, on a non-layer resource.
        bureaus = s.scalar(select(func.count()).select_from(Department).where(Department.kind == "bureau"))
        assert rows["one_map_usage"]["detail"]["numerator"] == 1
        assert rows["one_map_usage"]["detail"]["denominator"] == bureaus
        assert rows["one_map_usage"]["value"] == pytest.approx(100 / bureaus, abs=0.01)
        # approvals: the one approval case runs the parallel-approval workflow.
        assert rows["parallel_approval"]["value"] == 100.0
        assert rows["parallel_approval"]["detail"]["denominator"] == 1
        # city management: parks owns the manhole category, the centre dispatches its case.
        assert rows["citymgmt_departments"]["value"] == 2.0
        # pollution sources: 3 monitors, 1 reported within the hour.
        assert rows["pollution_sources_online"]["value"] == pytest.approx(33.33, abs=0.01)
        assert plan.compute(s, "pollution_sources_online") == pytest.approx(33.33, abs=0.01)
        for code in plan.COMPUTED:
            assert rows[code]["computed"] and rows[code]["value_source"].startswith("computed:")
            assert rows[code]["value_as_of"] == plan.city_today().isoformat()
        # met / gap against the target
        assert rows["parallel_approval"]["status"] == "met"
        assert rows["citymgmt_departments"]["status"] == "gap"
        assert rows["citymgmt_departments"]["gap"] == 18
        assert rows["evaluation_score"]["status"] == "unknown"


def test_no_data_is_none_not_a_crash(ops_city):
    with ops_city.sessions() as s:
        plan.load(s)
        plan.refresh(s)
        rows = {r["code"]: r for r in plan.progress(s, SYSTEM)}
        assert rows["gov_data_sharing"]["value"] is None  # no resources at all
        assert rows["pollution_sources_online"]["value"] is None
        assert "no pollution-source" in rows["pollution_sources_online"]["detail"]["reason"]
        with pytest.raises(Exception) as e:
            plan.compute(s, "nope")
        assert getattr(e.value, "status", None) == 404


def _put(ops_city, code, body, user="ops_staff"):
    return ops_city.client.put(f"/api/ops/plan-indicators/{code}", json=body, headers=ops_city.headers(user))


def test_manual_entry_rules(ops_city):
    with ops_city.sessions() as s:
        plan.load(s)
        s.commit()
    good = {"value": 87.5, "source": "市统计局 2021年统计公报", "as_of": "2021-12-31"}
    r = _put(ops_city, "emr_coverage", good)
    assert r.status_code == 200, r.text
    assert r.json()["value"] == 87.5 and r.json()["status"] == "gap"
    assert r.json()["value_source"] == good["source"] and r.json()["value_as_of"] == "2021-12-31"
    # computed rows refuse manual values
    r = _put(ops_city, "gov_data_sharing", good)
    assert r.status_code == 409
    # bad value, missing source, bad date: 422 naming the fields; nothing changes
    r = _put(ops_city, "emr_coverage", {"value": "lots", "source": " ", "as_of": "2021-13-01"})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"value", "source", "as_of"}
    r = _put(ops_city, "emr_coverage", {**good, "value": 120})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "value"
    future = (plan.city_today() + dt.timedelta(days=3)).isoformat()
    r = _put(ops_city, "emr_coverage", {**good, "as_of": future})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "as_of"
    # others may not write; unknown code is 404
    assert _put(ops_city, "emr_coverage", good, user="parks_staff").status_code == 403
    assert _put(ops_city, "nope", good).status_code == 404
    with ops_city.sessions() as s:
        row = s.scalar(select(PlanIndicator).where(PlanIndicator.code == "emr_coverage"))
        assert row.value == 87.5 and row.updated_by == "ops_staff"
        assert s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action == "ops.plan.enter")) == 1
    # every member of staff reads the progress
    r = ops_city.client.get("/api/ops/plan-indicators", headers=ops_city.headers("parks_staff"))
    assert r.status_code == 200 and len(r.json()) == len(plan.rows_of())


def _login(client, username):
    client.cookies.clear()
    return signed_in(client, username)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_progress_page_shows_computed_values(ops_city):
    with ops_city.sessions() as s:
        _seed_city(s)
        plan.load(s)
        s.commit()
    client = ops_city.client
    _login(client, "ops_staff")
    page = client.get("/ops/plan")
    assert page.status_code == 200
    # refresh from the page, then the computed value appears in its row
    r = client.post("/ops/plan/refresh", data={"csrf_token": _csrf(page.text)}, follow_redirects=True)
    assert r.status_code == 200
    m = re.search(r'<tr id="row-parallel_approval" data-code="parallel_approval" data-value="([^"]*)"', r.text)
    assert m and float(m.group(1)) == 100.0
    m = re.search(r'data-code="citymgmt_departments" data-value="([^"]*)"', r.text)
    assert m and float(m.group(1)) == 2.0
    assert 'data-source="computed"' in r.text and 'data-source="manual"' in r.text
    # a manual value through the form; a bad one comes back with the error, nothing saved
    bad = client.post("/ops/plan/one_card_coverage", data={"csrf_token": _csrf(r.text), "value": "x",
                                                             "source": "", "as_of": "2021-12-31"})
    assert bad.status_code == 422 and 'data-error-for="value"' in bad.text
    ok = client.post("/ops/plan/one_card_coverage", data={"csrf_token": _csrf(r.text), "value": "91",
                                                            "source": "市人社局", "as_of": "2021-12-31"},
                     follow_redirects=True)
    assert ok.status_code == 200
    m = re.search(r'data-code="one_card_coverage" data-value="([^"]*)" data-status="([a-z]+)"', ok.text)
    assert m and float(m.group(1)) == 91.0 and m.group(2) == "met"
    # a reader without ops.write sees the page without forms
    _login(client, "parks_staff")
    page = client.get("/ops/plan")
    assert page.status_code == 200 and "data-enter=" not in page.text and 'data-code="emr_coverage"' in page.text
