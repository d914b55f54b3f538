"""The base registries API: authority refusals audited, lookups in the body, public verification."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from cityos.core import identifiers
from cityos.hub import registries
from cityos.hub.schemas_registry import CrosscheckOut, DiscrepancyOut, FiguresOut, LicenceOut, RecordOut
from tests.hub.test_registries import person, seed_people, seed_registries

H = "/api/hub"


@pytest.fixture
def reg_city(city, sessions):
    with sessions() as s:
        seed_registries(s)
        people = seed_people(s, 2)
        code = registries.registry_resource(s, "population").code
    city.people, city.population = people, code
    return city


def _audit(sessions, sql: str) -> list:
    with sessions() as s:
        return s.execute(text(sql)).all()


def _audit_dump(sessions) -> str:
    return "\n".join(str(tuple(r)) for r in _audit(sessions, "SELECT actor, object_id, purpose, detail FROM audit_log"))


def test_authority_refusal_is_audited_as_denied(reg_city, sessions):
    c, p = reg_city.client, reg_city.people[0]
    body = {"key": {"id_number": p["id_number"]}, "changes": {"marital_status": "已婚"}}
    r = c.patch(f"{H}/registries/population/records", json=body, headers=reg_city.headers("police_staff"))
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    denied = _audit(sessions, "SELECT actor, action, object_id FROM audit_log WHERE outcome = 'denied'")
    assert [(d.actor, d.action) for d in denied] == [("police_staff", "hub.registry.write")]
    assert denied[0].object_id.endswith("#marital_status")
    r = c.patch(f"{H}/registries/{reg_city.population}/records", json=body,
                headers=reg_city.headers("civil_staff"))
    assert r.status_code == 200, r.text
    assert r.json() == {"resource": reg_city.population, "version": 3, "changed": ["marital_status"],
                        "created": False}
    r = c.patch(f"{H}/registries/population/records", json={**body, "extra": 1},
                headers=reg_city.headers("civil_staff"))
    assert r.status_code == 422
    r = c.patch(f"{H}/registries/population/records", json={"key": body["key"], "changes": {"marital_status": "x"}},
                headers=reg_city.headers("civil_staff"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "changes.marital_status"


def test_person_lookup_travels_in_the_body(reg_city, sessions):
    c, p = reg_city.client, reg_city.people[0]
    r = c.post(f"{H}/registries/population/lookup", json={"id_number": p["id_number"], "purpose": "户籍核验"},
               headers=reg_city.headers("police_staff"))
    assert r.status_code == 200, r.text
    out = RecordOut.model_validate(r.json())
    assert out.record["name"] == "居民1" and out.record["birth_date"] == p["birth_date"].isoformat()
    missing = person(50)["id_number"]
    r = c.post(f"{H}/registries/population/lookup", json={"id_number": missing, "purpose": "户籍核验"},
               headers=reg_city.headers("police_staff"))
    assert r.status_code == 404 and missing not in r.text
    r = c.post(f"{H}/registries/population/lookup", json={"id_number": p["id_number"], "purpose": "核验"},
               headers=reg_city.headers("env_staff"))
    assert r.status_code == 403
    r = c.post(f"{H}/registries/population/lookup", json={"id_number": p["id_number"], "purpose": "核验"})
    assert r.status_code == 401
    r = c.post(f"{H}/registries/population/lookup", json={"id_number": p["id_number"]},
               headers=reg_city.headers("police_staff"))
    assert r.status_code == 422
    reads = _audit(sessions, "SELECT outcome FROM audit_log WHERE action = 'hub.data.read'")
    assert sorted(x.outcome for x in reads) == ["denied", "success", "success"]
    dump = _audit_dump(sessions)
    assert p["id_number"] not in dump and missing not in dump


def test_crosscheck_inbox_and_resolve(reg_city, sessions):
    c, (p1, p2) = reg_city.client, reg_city.people
    r = c.post(f"{H}/registries/population/crosscheck", headers=reg_city.headers("env_staff"),
               json={"records": [{"id_number": p1["id_number"], "marital_status": "离婚"},
                                 {"id_number": p2["id_number"], "name": p2["name"]}]})
    assert r.status_code == 200, r.text
    out = CrosscheckOut.model_validate(r.json())
    assert out.checked == 2 and [d.field for d in out.discrepancies] == ["marital_status"]
    d = out.discrepancies[0]
    assert d.authority == "220200-mzj" and d.reported_by_department == "220200-hbj"
    assert d.record == identifiers.mask_citizen_id(p1["id_number"]) and d.registry_value is None
    r = c.get(f"{H}/discrepancies", headers=reg_city.headers("civil_staff"))
    assert r.status_code == 200 and r.json()["total"] == 1
    assert DiscrepancyOut.model_validate(r.json()["items"][0]).reported_value == "离婚"
    assert c.get(f"{H}/discrepancies", headers=reg_city.headers("police_staff")).json()["total"] == 0
    r = c.post(f"{H}/discrepancies/{d.id}/resolve", json={"action": "correct"},
               headers=reg_city.headers("env_staff"))
    assert r.status_code == 403
    r = c.post(f"{H}/discrepancies/{d.id}/resolve", json={"action": "correct", "note": "已核实"},
               headers=reg_city.headers("civil_staff"))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "corrected" and r.json()["resolved_by"] == "civil_staff"
    assert r.json()["registry_value"] is None  # the registry held no marital status before
    with sessions() as s:
        row = registries.current_row(s, registries.registry_resource(s, "population"),
                                     {"id_number": p1["id_number"]})
    assert row["marital_status"] == "离婚"
    r = c.get(f"{H}/discrepancies?state=corrected", headers=reg_city.headers("env_staff"))
    assert r.json()["total"] == 1
    r = c.post(f"{H}/discrepancies/{d.id}/resolve", json={"action": "undo"}, headers=reg_city.headers("civil_staff"))
    assert r.status_code == 422
    assert p1["id_number"] not in _audit_dump(sessions)


def test_licence_issue_verify_revoke_over_http(reg_city, sessions):
    c = reg_city.client
    holder = person(8)["id_number"]
    r = c.post(f"{H}/licences", headers=reg_city.headers("police_staff"),
               json={"type": "机动车驾驶证", "holder_id": holder, "holder_name": "居民8", "valid_from": "2020-01-01"})
    assert r.status_code == 201, r.text
    lic = LicenceOut.model_validate(r.json())
    assert lic.holder_id == identifiers.mask_citizen_id(holder) and lic.status == "valid"
    verify = f"{H}/licences/verify"
    ok = c.post(verify, json={"licence_no": lic.licence_no, "holder_id": holder})  # no sign-in
    assert ok.status_code == 200 and ok.json() == {"valid": True}
    wrong = c.post(verify, json={"licence_no": lic.licence_no, "holder_id": person(9)["id_number"]})
    unknown = c.post(verify, json={"licence_no": "NO-SUCH-0001", "holder_id": holder})
    assert wrong.status_code == unknown.status_code == 200
    assert wrong.content == unknown.content == b'{"valid":false}'
    assert c.post(verify, json={"licence_no": lic.licence_no, "holder_id": holder, "x": 1}).status_code == 422
    r = c.post(f"{H}/licences/{lic.licence_no}/revoke", json={"reason": "吊销"}, headers=reg_city.headers("env_staff"))
    assert r.status_code == 403
    r = c.post(f"{H}/licences/{lic.licence_no}/revoke", json={"reason": "吊销"},
               headers=reg_city.headers("police_staff"))
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert c.post(verify, json={"licence_no": lic.licence_no, "holder_id": holder}).json() == {"valid": False}
    r = c.post(f"{H}/licences", headers=reg_city.headers("resident"),
               json={"type": "机动车驾驶证", "holder_id": holder, "holder_name": "x"})
    assert r.status_code == 403
    verifies = _audit(sessions, "SELECT actor FROM audit_log WHERE action = 'hub.licence.verify'")
    assert len(verifies) == 4
    assert holder not in _audit_dump(sessions)


def test_stats_endpoint(reg_city, sessions):
    c = reg_city.client
    r = c.get(f"{H}/stats", headers=reg_city.headers("env_staff"))
    assert r.status_code == 200, r.text
    out = FiguresOut.model_validate(r.json())
    assert out.city.resources == 3  # the three registries
    assert {d.department for d in out.departments} == {"220200-gaj", "220200-zjj", "220200-zwb"}
    r = c.get(f"{H}/stats?department=220200-gaj", headers=reg_city.headers("auditor"))
    assert [d["department"] for d in r.json()["departments"]] == ["220200-gaj"]
    assert c.get(f"{H}/stats", headers=reg_city.headers("resident")).status_code == 403
    assert c.get(f"{H}/stats").status_code == 401

