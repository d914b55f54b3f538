"""Deny by default: one department cannot see or change another's objects, and refusals are
audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cityos.core import access
from cityos.core.access import Actor, Target
from cityos.core.models import AuditRecord


def test_staff_sees_only_own_department_users(client, city):
    r = client.get("/api/users", headers=city.headers("police_staff"))
    assert r.status_code == 200
    departments = {u["department_code"] for u in r.json()["items"]}
    assert departments == {"220200-gaj"}


def test_staff_cannot_read_other_department_user(client, city, sessions):
    r = client.get("/api/users/env_staff", headers=city.headers("police_staff"))
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    with sessions() as s:
        rec = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "denied")).first()
        assert rec is not None
        assert (rec.actor, rec.action, rec.object_id) == ("police_staff", "user.read", "env_staff")


def test_department_admin_cannot_create_user_elsewhere(client, city):
    r = client.post("/api/users", headers=city.headers("police_admin"), json={
        "username": "intruder", "password": "long-enough-1", "department_code": "220200-hbj",
        "role": "department_staff"})
    assert r.status_code == 403
    assert client.get("/api/users/intruder", headers=city.headers("admin")).status_code == 404


def test_district_admin_reaches_its_streets(client, city):
    r = client.post("/api/users", headers=city.headers("district_admin"), json={
        "username": "street_new", "password": "long-enough-1", "department_code": "220202001",
        "role": "department_staff"})
    assert r.status_code == 201, r.text
    r = client.post("/api/users", headers=city.headers("district_admin"), json={
        "username": "other_district", "password": "long-enough-1", "department_code": "220204",
        "role": "department_staff"})
    assert r.status_code == 403


def test_department_admin_cannot_mint_platform_admins(client, city):
    r = client.post("/api/users", headers=city.headers("police_admin"), json={
        "username": "boss", "password": "long-enough-1", "department_code": "220200-gaj",
        "role": "platform_admin"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "role"


def test_resident_sees_only_self(client, city):
    r = client.get("/api/users", headers=city.headers("resident"))
    assert [u["username"] for u in r.json()["items"]] == ["resident"]
    assert client.get("/api/users/street_staff", headers=city.headers("resident")).status_code == 403


def test_auditor_reads_audit_log_staff_does_not(client, city):
    assert client.get("/api/audit", headers=city.headers("auditor")).status_code == 200
    assert client.get("/api/audit", headers=city.headers("police_staff")).status_code == 403
    assert client.post("/api/audit/verify", headers=city.headers("police_admin")).status_code == 403


def test_anonymous_gets_401_not_data(client, city):
    for path in ("/api/users", "/api/audit", "/api/apikeys", "/api/users/admin"):
        r = client.get(path)
        assert r.status_code == 401, path


def test_department_directory_is_public_but_writing_is_not(client, city):
    assert client.get("/api/departments/220200-gaj").json()["name"] == "市公安局"
    assert client.get("/api/departments").json()["total"] == len(city.departments)
    r = client.post("/api/departments", json={"code": "x1", "name": "X", "kind": "bureau",
                                               "parent_code": "220200"})
    assert r.status_code == 401


def test_undeclared_action_is_denied():
    admin = Actor(kind="user", name="a", role=access.PLATFORM_ADMIN, department_id=1,
                  department_path="/1/")
    assert not access.decide(admin, "nuclear.launch").allowed


def test_grant_resolver_opens_a_cross_department_read():
    """The data hub's sharing grants plug in here; the core alone denies."""
    staff = Actor(kind="user", name="s", role=access.DEPARTMENT_STAFF, department_id=2,
                  department_path="/1/2/")
    target = Target("user", "x", department_id=3, department_path="/1/3/")
    assert not access.decide(staff, "user.read", target).allowed

    def grant(_session, actor, action, tgt):
        return "grant-7" if (actor.department_id, action, tgt.department_id) == (2, "user.read", 3) else None

    access.register_grant_resolver(grant)
    try:
        decision = access.decide(staff, "user.read", target)
        assert decision.allowed and decision.grant == "grant-7"
        assert not access.decide(staff, "user.write", target).allowed
    finally:
        access._GRANT_RESOLVERS.remove(grant)


@pytest.mark.parametrize("role", sorted(access.ROLES))
def test_every_role_has_a_decision_for_every_core_action(role):
    actor = Actor(kind="user", name="x", role=role, department_id=1, department_path="/1/")
    for action in access.PERMISSIONS:
        decision = access.decide(actor, action, Target("t", department_id=9, department_path="/9/"))
        assert decision.reason  # allow or deny, always with a reason


def test_admin_cannot_deactivate_self(client, city):
    r = client.patch("/api/users/police_admin", json={"is_active": False},
                     headers=city.headers("police_admin"))
    assert r.status_code == 422
    assert client.get("/api/me", headers=city.headers("police_admin")).status_code == 200
