"""Emergency command (应急指挥): open an incident, activate a plan whose tasks land in the
departments' case queues, handle one, close out with a report; the refusals on the way."""

from __future__ import annotations

import shapely
from sqlalchemy import func, select

from cityos.cases import service as cases
from cityos.cases.models import Case
from cityos.core.access import SYSTEM
from cityos.core.auth import user_actor
from cityos.core.service import user_by_name
from cityos.maps import service as maps
from cityos.ops import emergency
from cityos.ops.models import Incident, IncidentEvent
from tests.cases.conftest import PARKS, POINT, POLICE
from tests.ops.conftest import OPS, OpsCity

ENV = "220200-hbj"


def seed_command(oc: OpsCity, *, shelters: bool = True) -> None:
    """A flood type with shelters (and a layer that does not exist), two plans, one for grave levels."""
    with oc.sessions() as s:
        emergency.incident_type_upsert(s, SYSTEM, {"code": "flood", "name": "城市内涝", "name_en": "Flood",
                                                   "resource_layers": ["shelters", "no-such-layer"]})
        emergency.incident_type_upsert(s, SYSTEM, {"code": "fire", "name": "火灾", "resource_layers": []})
        emergency.plan_upsert(s, SYSTEM, {
            "code": "flood-response", "name": "城市内涝应急预案", "incident_type": "flood", "min_level": "IV",
            "department": OPS, "tasks": [
                {"department": PARKS, "title": "清理倒伏树木", "title_en": "Clear fallen trees", "hours": 4},
                {"department": POLICE, "title": "积水路段交通管制", "hours": 1}]})
        emergency.plan_upsert(s, SYSTEM, {
            "code": "flood-major", "name": "城市内涝重大响应", "incident_type": "flood", "min_level": "II",
            "department": OPS, "tasks": [{"department": ENV, "title": "水质监测", "hours": 12}]})
        if shelters:
            maps.layer_create(s, SYSTEM, {
                "code": "shelters", "title": "避难场所", "department": OPS, "geometry_type": "point",
                "attributes": [{"name": "name", "type": "string"}], "public": True, "open_type": "open"})
            lon, lat = POINT["lon"], POINT["lat"]
            maps.features_write(s, SYSTEM, "shelters", [
                ("far", shapely.Point(lon + 0.02, lat), {"name": "远处避难所"}),      # ~1.6 km
                ("near", shapely.Point(lon + 0.002, lat), {"name": "近处避难所"}),    # ~160 m
                ("out", shapely.Point(lon + 0.2, lat), {"name": "太远的避难所"})])     # ~16 km
        s.commit()


def actor(s, username: str):
    return user_actor(user_by_name(s, username))


def open_incident(oc: OpsCity, username: str = "ops_staff", **kw) -> str:
    body = {"type": "flood", "level": "III", "title": "解放大路积水", "description": "暴雨致路面积水 40 厘米",
            **POINT, **kw}
    r = oc.client.post("/api/ops/incidents", json=body, headers=oc.headers(username))
    assert r.status_code == 201, r.text
    return r.json()["number"]


def test_open_activate_handle_close(ops_city: OpsCity) -> None:
    oc = ops_city
    seed_command(oc)
    number = open_incident(oc)
    assert number.startswith("YJ") and len(number) == 14
    h = oc.headers("ops_staff")
    got = oc.client.get(f"/api/ops/incidents/{number}", headers=h).json()
    assert got["status"] == "active" and got["level"] == "III" and got["department"] == OPS
    assert [p["code"] for p in got["plans"]] == ["flood-response"]  # flood-major needs level II
    assert [e["action"] for e in got["timeline"]] == ["open"]

    r = oc.client.post(f"/api/ops/incidents/{number}/activate", json={"plan": "flood-response"}, headers=h)
    assert r.status_code == 200, r.text
    tasks = r.json()["tasks"]
    assert [(t["department"], t["status"]) for t in tasks] == [(PARKS, "dispatched"), (POLICE, "dispatched")]
    parks_case, police_case = tasks[0]["case"], tasks[1]["case"]
    assert parks_case.startswith("YJ") and r.json()["timeline"][-1]["detail"]["cases"] == [parks_case, police_case]

    # The tasks are in each department's queue, due `hours` after activation.
    q = oc.client.get(f"/api/cases/queues/{PARKS}", headers=oc.headers("parks_staff")).json()
    assert [i["number"] for i in q["items"]] == [parks_case]
    item = q["items"][0]
    assert item["state"] == "open" and item["due_at"] is not None
    with oc.sessions() as s:
        case = cases.case_by_number(s, parks_case)
        hours = (case.due_at - case.dispatched_at).total_seconds() / 3600
        assert abs(hours - 4) < 0.01 and case.line == "emergency" and case.dispatch_department.code == OPS
    police_q = oc.client.get(f"/api/cases/queues/{POLICE}", headers=oc.headers("police_admin")).json()
    assert [i["number"] for i in police_q["items"]] == [police_case]

    # Parks handles its task like any case: accept, reply.
    ph = oc.headers("parks_staff")
    assert oc.client.post(f"/api/cases/{parks_case}/actions/accept", headers=ph).status_code == 200
    r = oc.client.post(f"/api/cases/{parks_case}/actions/reply", json={"reply": "已清理 3 棵倒伏树木"}, headers=ph)
    assert r.status_code == 200, r.text
    tasks = oc.client.get(f"/api/ops/incidents/{number}", headers=h).json()["tasks"]
    assert {t["case"]: t["status"] for t in tasks} == {parks_case: "replied", police_case: "dispatched"}

    # Level up: now the major plan fits.
    r = oc.client.post(f"/api/ops/incidents/{number}/level", json={"level": "II", "note": "积水扩大"}, headers=h)
    assert r.status_code == 200 and r.json()["level"] == "II"
    assert oc.client.post(f"/api/ops/incidents/{number}/notes", json={"note": "现场指挥部已设立"},
                          headers=h).status_code == 201

    r = oc.client.post(f"/api/ops/incidents/{number}/close", json={"summary": "积水已排除，交通恢复"}, headers=h)
    assert r.status_code == 200, r.text
    report = r.json()["report"]
    assert report["type"] == "flood" and report["level"] == "II" and report["plans"] == ["flood-response"]
    assert report["tasks_total"] == 2 and report["tasks_done"] == 1 and report["tasks_on_time"] == 1
    by_case = {t["case"]: t for t in report["tasks"]}
    assert by_case[parks_case]["status"] == "closed" and by_case[parks_case]["on_time"] is True
    assert by_case[police_case]["done"] is False
    assert [e["action"] for e in report["timeline"]] == ["open", "activate", "level", "note", "close"]
    assert report["summary"] == "积水已排除，交通恢复" and report["closed_at"] and report["activated_at"]
    with oc.sessions() as s:
        assert cases.case_by_number(s, parks_case).status == "closed"  # confirmed by the command
        inc = s.scalar(select(Incident).where(Incident.number == number))
        assert inc.status == "closed" and inc.report["number"] == number

    # Closing twice, or acting on a closed incident: 409, nothing changes.
    assert oc.client.post(f"/api/ops/incidents/{number}/close", json={"summary": "again"},
                          headers=h).status_code == 409
    assert oc.client.post(f"/api/ops/incidents/{number}/activate", json={"plan": "flood-major"},
                          headers=h).status_code == 409


def test_activating_twice_and_a_plan_that_does_not_fit(ops_city: OpsCity) -> None:
    oc = ops_city
    seed_command(oc)
    number = open_incident(oc, level="IV")
    h = oc.headers("ops_staff")
    assert oc.client.post(f"/api/ops/incidents/{number}/activate", json={"plan": "flood-response"},
                          headers=h).status_code == 200
    with oc.sessions() as s:
        before = s.scalar(select(func.count()).select_from(Case))
    r = oc.client.post(f"/api/ops/incidents/{number}/activate", json={"plan": "flood-response"}, headers=h)
    assert r.status_code == 409 and "预案已启动" in r.text
    r = oc.client.post(f"/api/ops/incidents/{number}/activate", json={"plan": "flood-major"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "plan"  # level IV < II
    r = oc.client.post(f"/api/ops/incidents/{number}/activate", json={"plan": "no-such"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "plan"
    fire = open_incident(oc, type="fire", level="I")
    r = oc.client.post(f"/api/ops/incidents/{fire}/activate", json={"plan": "flood-response"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "plan"  # another type
    with oc.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == before


def test_all_or_nothing_when_a_task_department_is_gone(ops_city: OpsCity) -> None:
    oc = ops_city
    seed_command(oc)
    number = open_incident(oc)
    with oc.sessions() as s:  # a plan edited behind the service's back: its last department is gone
        from cityos.ops.models import ResponsePlan

        plan = s.scalar(select(ResponsePlan).where(ResponsePlan.code == "flood-response"))
        plan.tasks = [*plan.tasks, {"department": "220200-gone", "title": "x", "hours": 1}]
        s.commit()
    r = oc.client.post(f"/api/ops/incidents/{number}/activate", json={"plan": "flood-response"},
                       headers=oc.headers("ops_staff"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "plan.tasks[2].department"
    with oc.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 0
        assert [e.action for e in s.scalars(select(IncidentEvent))] == ["open"]


def test_bad_input_names_the_field(ops_city: OpsCity) -> None:
    oc = ops_city
    seed_command(oc)
    h = oc.headers("ops_staff")
    base = {"type": "flood", "level": "III", "title": "积水"}
    for change, field in (({"type": "volcano"}, "type"), ({"level": "V"}, "level"),
                          ({"district": "999999"}, "district"), ({"title": ""}, "title"),
                          ({"lon": 200.0, "lat": 43.8}, "lon")):
        r = oc.client.post("/api/ops/incidents", json={**base, **change}, headers=h)
        assert r.status_code == 422, (change, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], (change, r.json())
    r = oc.client.post("/api/ops/incidents", json={**base, "district": "220202"}, headers=h)
    assert r.status_code == 201 and r.json()["district"] == "220202"
    with oc.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Incident)) == 1
    # Numbers count up within the day.
    second = open_incident(oc)
    assert int(second[-4:]) == int(r.json()["number"][-4:]) + 1
    # Plans: every field named.
    r = oc.client.put("/api/ops/plans/bad-plan", json={
        "name": "", "incident_type": "volcano", "min_level": "VI", "department": OPS,
        "tasks": [{"department": PARKS, "title": "ok", "hours": 2},
                  {"department": "nowhere", "title": "", "hours": 0}]}, headers=oc.headers("ops_admin"))
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"name", "incident_type", "min_level", "tasks[1].department", "tasks[1].title",
            "tasks[1].hours"} <= fields
    r = oc.client.put("/api/ops/plans/empty", json={"name": "空预案", "incident_type": "flood", "tasks": []},
                      headers=oc.headers("ops_admin"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tasks"


def test_resources_near_nearest_first(ops_city: OpsCity) -> None:
    oc = ops_city
    seed_command(oc)
    number = open_incident(oc)
    got = oc.client.get(f"/api/ops/incidents/{number}/resources?radius_m=3000",
                        headers=oc.headers("parks_staff")).json()
    assert [r["fid"] for r in got] == ["near", "far"]  # the missing layer is skipped; "out" is too far
    assert got[0]["layer"] == "shelters" and got[0]["name"] == "近处避难所"
    assert 100 < got[0]["distance_m"] < 250 < got[1]["distance_m"] < 2500
    detail = oc.client.get(f"/api/ops/incidents/{number}", headers=oc.headers("ops_staff")).json()
    assert [r["fid"] for r in detail["resources"]] == ["near", "far"]
    assert oc.client.get(f"/api/ops/incidents/{number}/resources?radius_m=0",
                         headers=oc.headers("ops_staff")).status_code == 422
    no_point = open_incident(oc, lon=None, lat=None)
    assert oc.client.get(f"/api/ops/incidents/{no_point}/resources",
                         headers=oc.headers("ops_staff")).json() == []


def test_permissions(ops_city: OpsCity) -> None:
    oc = ops_city
    seed_command(oc)
    number = open_incident(oc)
    parks = oc.headers("parks_staff")
    # Another department may not open an incident under the operations center, nor command its incident.
    r = oc.client.post("/api/ops/incidents", json={"type": "flood", "level": "IV", "title": "x",
                                                   "department": OPS}, headers=parks)
    assert r.status_code == 403
    for path, body in (("activate", {"plan": "flood-response"}), ("level", {"level": "I"}),
                       ("notes", {"note": "x"}), ("close", {"summary": "x"})):
        assert oc.client.post(f"/api/ops/incidents/{number}/{path}", json=body, headers=parks).status_code == 403
    # A department commanding its own incident may not start the operations center's plan: that would
    # send tasks to other departments in the center's name. Nothing is issued.
    own = open_incident(oc, "parks_staff", department=PARKS)
    r = oc.client.post(f"/api/ops/incidents/{own}/activate", json={"plan": "flood-response"}, headers=parks)
    assert r.status_code == 403, r.text
    assert oc.client.get(f"/api/ops/incidents/{own}", headers=parks).json()["tasks"] == []
    # Staff may read.
    assert oc.client.get(f"/api/ops/incidents/{number}", headers=parks).status_code == 200
    assert number in [i["number"] for i in oc.client.get("/api/ops/incidents?status=active", headers=parks).json()]
    assert oc.client.get("/api/ops/incidents?status=bogus", headers=parks).status_code == 422
    assert oc.client.get("/api/ops/incidents").status_code == 401
    # Plans belong to their department; types to the platform.
    spec = {"name": "改", "incident_type": "flood", "department": OPS,
            "tasks": [{"department": PARKS, "title": "t", "hours": 1}]}
    assert oc.client.put("/api/ops/plans/flood-response", json=spec, headers=parks).status_code == 403
    assert oc.client.put("/api/ops/plans/flood-response", json=spec,
                         headers=oc.headers("ops_admin")).status_code == 200
    assert oc.client.put("/api/ops/incident-types/quake", json={"name": "地震"},
                         headers=oc.headers("ops_admin")).status_code == 403
    assert oc.client.put("/api/ops/incident-types/quake", json={"name": "地震"},
                         headers=oc.headers("admin")).status_code == 200
    with oc.sessions() as s:
        assert [e.action for e in s.scalars(select(IncidentEvent).order_by(IncidentEvent.id))] == ["open", "open"]


def test_seed_defaults_is_idempotent(ops_city: OpsCity) -> None:
    with ops_city.sessions() as s:
        first = emergency.seed_defaults(s, OPS)
        s.commit()
        again = emergency.seed_defaults(s, OPS)
        s.commit()
        assert first["types"] == 6 and first["plans"] >= 4 and again == {"types": 0, "plans": 0}
        gas = next(p for p in emergency.plan_list(s, SYSTEM) if p.code == "traffic-accident-response")
        assert {t["department"] for t in gas.tasks} == {POLICE}  # the small city has only the police of those
        kinds = {t.code: t.resource_layers for t in emergency.incident_types(s, SYSTEM)}
        assert "water-changyi-valves" in kinds["pipe-burst"] and "shelters" in kinds["flood"]
        # An incident opened by the system for a warning (as the warning rules do).
        inc = emergency.incident_open(s, SYSTEM, type_code="gas-leak", level="III", title="燃气泄漏",
                                      department=OPS, warning_id=7, **POINT)
        assert inc.warning_id == 7 and [p.code for p in emergency.plans_for(s, inc)] == ["gas-leak-response"]
        s.commit()
