"""The open-data staff API over HTTP: the whole review with the right people (and 403 for the
wrong ones), the de-identification and k-anonymity refusals as problem documents, the opening
plan's status, applications that earn a key for one dataset, and the audit trail of each step."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from cityos.core.access import ANONYMOUS
from cityos.core.models import AuditRecord
from cityos.hub import loading
from cityos.hub import service as hub
from cityos.opendata import rows, service
from cityos.opendata.schemas import ApplicationOut, CheckOut, DatasetDetail, DatasetPage, PlanPage, StatsOut
from tests.conftest import City, people_spec, person_row
from tests.opendata.conftest import actor_of, publish

RULES = [{"field": "id_number", "action": "mask"}, {"field": "name", "action": "suppress"},
         {"field": "birth_date", "action": "generalize", "to": "year"}]


@pytest.fixture
def od(open_city, client):
    """The open city (already seeded) with an API client that signs its users in."""
    city = City(client)
    city.open = open_city  # type: ignore[attr-defined]
    return city


def call(city, method, who, path, body=None, **params):
    headers = city.headers(who) if who else {}
    return city.client.request(method, f"/api/opendata{path}", json=body, params=params, headers=headers)


def ok(r, status=200):
    assert r.status_code == status, r.text
    return r.json()


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()


def draft_residents(od, **spec):
    body = {"resource": od.open.people.code, "name": "residents", "title": "户籍人口统计",
            "topics": ["population"], "tags": ["人口"], "spatial": "吉林市", **spec}
    return ok(call(od, "POST", "police_staff", "/datasets", body), 201)


# -- the review -----------------------------------------------------------------------------------


def test_the_whole_review_over_the_api(od, session):
    ds = DatasetDetail.model_validate(draft_residents(od))
    assert ds.state == "draft" and ds.department == "220200-gaj" and ds.open_level == "conditional"
    assert ds.actions == ["update", "check", "submit"] and [r.step for r in ds.reviews] == ["draft"]
    assert ds.description == "户籍人口基本信息" and ds.update_cycle == "daily"  # from the catalog

    # Another department's staff may neither see nor submit it.
    problem(call(od, "GET", "env_staff", "/datasets/residents"), 403)
    problem(call(od, "POST", "env_staff", "/datasets/residents/submit"), 403)

    # Raw ID numbers: the dry run and the submission both name the item.
    for step in ("check", "submit"):
        body = problem(call(od, "POST", "police_staff", f"/datasets/residents/{step}"), 422)
        assert "rules.id_number" in {e["field"] for e in body["errors"]}, body

    # Rules, but quasi-identifiers that single people out: the small groups are named.
    ok(call(od, "PATCH", "police_staff", "/datasets/residents",
            {"rules": RULES, "quasi_identifiers": ["birth_date", "gender"], "k": 5}))
    body = problem(call(od, "POST", "police_staff", "/datasets/residents/check"), 422)
    err = body["errors"][0]
    assert err["field"] == "quasi_identifiers" and "birth_date=" in err["reason"] and "gender=" in err["reason"]
    problem(call(od, "POST", "police_staff", "/datasets/residents/submit"), 422)

    # Fixed: districts of 20 people each.
    ok(call(od, "PATCH", "police_staff", "/datasets/residents", {"quasi_identifiers": ["district"]}))
    check = CheckOut.model_validate(ok(call(od, "POST", "police_staff", "/datasets/residents/check")))
    assert check.ok and check.rows == 40 and check.kanon is not None
    assert (check.kanon.smallest, check.kanon.classes, check.kanon.offending) == (20, 2, [])
    assert [f.id for f in check.fields] == ["id_number", "gender", "birth_date", "district", "household_size"]

    ds = DatasetDetail.model_validate(ok(call(od, "POST", "police_staff", "/datasets/residents/submit",
                                              {"note": "请审核"})))
    assert ds.state == "submitted" and ds.reviews[-1].note == "请审核"
    problem(call(od, "POST", "police_staff", "/datasets/residents/approve"), 403)  # staff
    problem(call(od, "POST", "env_admin", "/datasets/residents/approve"), 403)  # another provider
    ds = DatasetDetail.model_validate(ok(call(od, "POST", "police_admin", "/datasets/residents/approve")))
    assert ds.state == "provider_approved" and "approve" not in ds.actions
    problem(call(od, "POST", "police_admin", "/datasets/residents/approve"), 403)  # not the data office
    office = DatasetDetail.model_validate(ok(call(od, "GET", "admin", "/datasets/residents")))
    assert {"approve", "refuse"} <= set(office.actions)
    ds = DatasetDetail.model_validate(ok(call(od, "POST", "admin", "/datasets/residents/approve",
                                              {"note": "同意开放"})))
    assert ds.state == "published" and ds.row_count == 40 and ds.published_at is not None
    assert [r.step for r in ds.reviews] == ["draft", "submit", "provider_approve", "office_approve"]
    assert ds.held_reason is None and ds.source_version == 1

    # The published copy is de-identified.
    got = rows.search(session, service.dataset_by_name(session, "residents"), limit=5)["records"]
    assert all("*" in r["id_number"] and "name" not in r and isinstance(r["birth_date"], int) for r in got)

    # Every step is in the audit log, the refusals too.
    records = session.scalars(select(AuditRecord).where(AuditRecord.object_id == "residents")
                              .order_by(AuditRecord.seq)).all()
    done = [r.action for r in records if r.outcome == "success"]
    assert done == ["opendata.dataset.draft", "opendata.dataset.update", "opendata.dataset.update",
                    "opendata.dataset.submit", "opendata.dataset.provider_approve",
                    "opendata.dataset.office_approve"]
    denied = {(r.actor, r.action) for r in session.scalars(select(AuditRecord).where(
        AuditRecord.outcome == "denied", AuditRecord.object_type == "opendata.dataset"))}
    assert denied == {("env_staff", "opendata.dataset.prepare"),
                      ("police_staff", "opendata.dataset.provider_review"),
                      ("env_admin", "opendata.dataset.provider_review"),
                      ("police_admin", "opendata.dataset.office_review")}


def test_refuse_resubmit_and_withdraw(od, session):
    draft_residents(od, rules=RULES, quasi_identifiers=["district"])
    ok(call(od, "POST", "police_staff", "/datasets/residents/submit"))
    problem(call(od, "POST", "police_admin", "/datasets/residents/refuse", {}), 422)  # no reason
    problem(call(od, "POST", "police_admin", "/datasets/residents/refuse", {"reason": ""}), 422)
    ds = ok(call(od, "POST", "police_admin", "/datasets/residents/refuse", {"reason": "字段说明不完整"}))
    assert ds["state"] == "refused" and ds["reviews"][-1] == {**ds["reviews"][-1], "step": "refuse",
                                                            "note": "字段说明不完整", "by": "police_admin"}
    assert "submit" in ok(call(od, "GET", "police_staff", "/datasets/residents"))["actions"]
    ok(call(od, "POST", "police_staff", "/datasets/residents/submit"))
    ok(call(od, "POST", "police_admin", "/datasets/residents/approve"))
    ds = ok(call(od, "POST", "admin", "/datasets/residents/refuse", {"reason": "需说明更新频率"}))
    assert ds["state"] == "refused"
    problem(call(od, "POST", "admin", "/datasets/residents/approve"), 409)  # nothing to approve

    # Withdrawing: only a published dataset, by the provider's admin, with a reason.
    problem(call(od, "POST", "police_admin", "/datasets/residents/withdraw", {"reason": "x"}), 409)
    problem(call(od, "POST", "env_staff", "/datasets/air-quality-daily/withdraw", {"reason": "x"}), 403)
    ds = ok(call(od, "POST", "env_admin", "/datasets/air-quality-daily/withdraw", {"reason": "数据口径调整"}))
    assert ds["state"] == "withdrawn" and ds["reviews"][-1]["step"] == "withdraw"
    actions = session.scalars(select(AuditRecord.action).where(AuditRecord.outcome == "success")
                              .order_by(AuditRecord.seq)).all()
    assert actions.count("opendata.dataset.refuse") == 2 and "opendata.dataset.withdraw" in actions

    # A withdrawn dataset may open again through the same review.
    assert "submit" in ok(call(od, "GET", "env_staff", "/datasets/air-quality-daily"))["actions"]
    ok(call(od, "POST", "env_staff", "/datasets/air-quality-daily/submit"))
    ok(call(od, "POST", "env_admin", "/datasets/air-quality-daily/approve"))
    ds = ok(call(od, "POST", "admin", "/datasets/air-quality-daily/approve"))
    assert ds["state"] == "published" and ds["row_count"] == 80
    assert rows.search(session, service.dataset_by_name(session, "air-quality-daily"), limit=1)["total"] == 80


def test_quasi_identifiers_must_name_published_columns(od):
    """A quasi-identifier naming no output column would silently drop out of k-anonymity."""
    renamed = [*RULES[:2], {"field": "birth_date", "action": "generalize", "to": "year", "name": "birth_year"}]
    draft_residents(od, rules=renamed)
    body = problem(call(od, "PATCH", "police_staff", "/datasets/residents",
                        {"quasi_identifiers": ["birth_date", "gender"]}), 422)
    assert body["errors"] == [{"field": "quasi_identifiers",
                               "reason": "'birth_date' is not a published field / 不是开放字段"}]
    ok(call(od, "PATCH", "police_staff", "/datasets/residents", {"quasi_identifiers": ["birth_year", "gender"]}))
    body = problem(call(od, "PATCH", "police_staff", "/datasets/residents", {"rules": RULES[:2] + [
        {"field": "birth_date", "action": "suppress"}]}), 422)  # the rules would drop a quasi-identifier
    assert body["errors"][0]["field"] == "quasi_identifiers"
    body = problem(call(od, "POST", "police_staff", "/datasets/residents/check"), 422)
    assert "birth_year=" in body["errors"][0]["reason"]


def test_drafts_are_checked_as_they_are_made(od):
    people = od.open.people.code
    body = problem(call(od, "POST", "police_staff", "/datasets", {"resource": people, "colour": "red"}), 422)
    assert body["errors"] == [{"field": "colour", "reason": "unknown field / 未知字段"}]
    body = problem(call(od, "POST", "police_staff", "/datasets", {
        "resource": people, "rules": [{"field": "id_number", "action": "shred"}]}), 422)
    assert body["errors"][0]["field"] == "rules[0].action"
    body = problem(call(od, "POST", "police_staff", "/datasets", {
        "resource": people, "licence": "WTFPL", "topics": ["sports"]}), 422)
    assert {e["field"] for e in body["errors"]} == {"licence", "topics"}
    problem(call(od, "POST", "police_staff", "/datasets", {"resource": od.open.air.code}), 403)
    problem(call(od, "POST", "resident", "/datasets", {"resource": people}), 403)
    problem(call(od, "POST", None, "/datasets", {"resource": people}), 401)
    problem(call(od, "POST", "env_staff", "/datasets", {"resource": od.open.air.code}), 409)  # has one
    draft_residents(od)
    body = problem(call(od, "PATCH", "police_staff", "/datasets/residents", {"licence": None}), 422)
    assert body["errors"] == [{"field": "licence", "reason": "cannot be empty / 不能为空"}]
    ds = ok(call(od, "PATCH", "police_staff", "/datasets/residents", {"tags": None, "spatial": None,
                                                                       "name": "residents-2026"}))
    assert ds["tags"] == [] and ds["spatial"] is None and ds["name"] == "residents-2026"
    body = problem(call(od, "PATCH", "env_staff", "/datasets/air-quality-daily", {"name": "air"}), 422)
    assert body["errors"][0]["field"] == "name"  # fixed once published


def test_closed_resources_cannot_be_drafted_or_planned(od, sessions):
    with sessions() as s:
        closed = hub.resource_create(s, actor_of(s, "police_staff"), people_spec(name="在逃人员"))
        s.commit()
        code = closed.code
    body = problem(call(od, "POST", "police_staff", "/datasets", {"resource": code}), 422)
    assert body["errors"][0]["field"] == "resource"
    problem(call(od, "PUT", "police_admin", f"/plan/{code}", {"open_level": "open",
                                                            "planned_on": "2026-12-01"}), 422)


def test_list_by_state_department_and_page(od):
    draft_residents(od)
    page = DatasetPage.model_validate(ok(call(od, "GET", "admin", "/datasets", limit=1)))
    assert page.total == 2 and len(page.items) == 1 and page.next_offset == 1
    names = {d.name for d in DatasetPage.model_validate(ok(call(od, "GET", "admin", "/datasets"))).items}
    assert names == {"residents", "air-quality-daily"}
    assert [d["name"] for d in ok(call(od, "GET", "admin", "/datasets", state="draft"))["items"]] == ["residents"]
    assert [d["name"] for d in ok(call(od, "GET", "env_staff", "/datasets"))["items"]] == ["air-quality-daily"]
    assert ok(call(od, "GET", "police_admin", "/datasets", state="published"))["total"] == 0
    assert ok(call(od, "GET", "admin", "/datasets", department="220200-gaj"))["total"] == 1
    problem(call(od, "GET", "admin", "/datasets", state="lost"), 422)
    problem(call(od, "GET", "resident", "/datasets"), 403)
    problem(call(od, "GET", "admin", "/datasets/nothing"), 404)


def test_topics(od):
    assert [t["name"] for t in ok(call(od, "GET", None, "/topics"))] == ["environment", "population"]
    problem(call(od, "POST", "env_admin", "/topics", {"name": "transport", "title": "交通"}), 403)
    assert ok(call(od, "POST", "admin", "/topics", {"name": "transport", "title": "交通出行"}), 201)["title"] == "交通出行"
    problem(call(od, "POST", "admin", "/topics", {"name": "transport", "title": "交通"}), 409)
    problem(call(od, "POST", "admin", "/topics", {"name": "Transport!", "title": "交通"}), 422)


# -- the plan -------------------------------------------------------------------------------------


def test_plan_entries_say_planned_overdue_or_published(od):
    today = hub.city_today()
    people, air = od.open.people.code, od.open.air.code
    past, later = (today - dt.timedelta(days=3)).isoformat(), (today + dt.timedelta(days=30)).isoformat()
    problem(call(od, "PUT", "police_staff", f"/plan/{people}", {"open_level": "open", "planned_on": past}), 403)
    problem(call(od, "PUT", "env_admin", f"/plan/{people}", {"open_level": "open", "planned_on": past}), 403)
    entry = ok(call(od, "PUT", "police_admin", f"/plan/{people}", {"open_level": "conditional",
                                                                   "planned_on": later}))
    assert entry["status"] == "planned" and entry["department"] == "220200-gaj"
    entry = ok(call(od, "PUT", "police_admin", f"/plan/{people}", {"open_level": "conditional",
                                                                   "planned_on": past, "note": "推迟"}))
    assert entry["status"] == "overdue" and entry["note"] == "推迟"
    ok(call(od, "PUT", "env_admin", f"/plan/{air}", {"open_level": "open", "planned_on": past}))
    problem(call(od, "PUT", "env_admin", f"/plan/{air}", {"open_level": "sometimes", "planned_on": past}), 422)
    plan = PlanPage.model_validate(ok(call(od, "GET", "auditor", "/plan")))
    assert plan.total == 2
    assert {(e.resource, e.status) for e in plan.items} == {(people, "overdue"), (air, "published")}
    assert [e["resource"] for e in ok(call(od, "GET", "env_staff", "/plan", department="220200-hbj"))["items"]] == [air]
    problem(call(od, "GET", "resident", "/plan"), 403)


# -- applications and keys ------------------------------------------------------------------------


def _publish_conditional(session, name, resource_name, district):
    staff = actor_of(session, "police_staff")
    res = hub.resource_create(session, staff, people_spec(name=resource_name, open_type="conditional"))
    loading.rows_write(session, staff, res.code, [person_row(n, district) for n in range(12)])
    session.commit()
    return publish(session, res.code, {"name": name, "rules": RULES}, "police_staff", "police_admin")


def test_an_approved_application_earns_a_key_for_that_dataset_only(od, session):
    draft_residents(od, rules=RULES)
    for who in ("police_staff", "police_admin", "admin"):
        ok(call(od, "POST", who, f"/datasets/residents/{'submit' if who == 'police_staff' else 'approve'}"))
    other = _publish_conditional(session, "migrants", "流动人口", "船营区")

    apply = {"dataset": "residents", "applicant": "吉林市某某数据科技有限公司", "contact": "data@example.cn",
             "purpose": "研究各区户籍人口结构，用于养老服务设施规划"}
    problem(call(od, "POST", "resident", "/applications", {**apply, "dataset": "air-quality-daily"}), 422)
    problem(call(od, "POST", "resident", "/applications", {**apply, "purpose": "看看"}), 422)
    problem(call(od, "POST", None, "/applications", apply), 401)
    app = ApplicationOut.model_validate(ok(call(od, "POST", "resident", "/applications", apply), 201))
    assert app.state == "pending" and app.key is None and app.department == "220200-gaj"

    assert ok(call(od, "GET", "resident", "/applications", mine="true"))["total"] == 1
    problem(call(od, "GET", "resident", "/applications"), 403)  # residents decide nothing
    problem(call(od, "GET", "police_staff", "/applications"), 403)
    assert ok(call(od, "GET", "env_admin", "/applications"))["total"] == 0  # not their datasets
    assert ok(call(od, "GET", "police_admin", "/applications", state="pending"))["total"] == 1
    assert ok(call(od, "GET", "admin", "/applications"))["total"] == 1

    problem(call(od, "POST", "env_admin", f"/applications/{app.id}/decision", {"approve": True}), 403)
    problem(call(od, "POST", "police_admin", f"/applications/{app.id}/decision", {"approve": False}), 422)
    problem(call(od, "POST", "police_admin", f"/applications/{app.id}/decision",
                 {"approve": True, "valid_days": 0}), 422)
    decided = ApplicationOut.model_validate(ok(call(od, "POST", "police_admin", f"/applications/{app.id}/decision",
                                                    {"approve": True, "valid_days": 30})))
    assert decided.state == "approved" and decided.decided_by == "police_admin"
    assert decided.valid_until == hub.city_today() + dt.timedelta(days=30)
    key = decided.key
    assert key and key.startswith("odk_")
    again = ok(call(od, "GET", "police_admin", "/applications"))["items"][0]
    assert again["key"] is None and again["state"] == "approved"  # shown once
    problem(call(od, "POST", "police_admin", f"/applications/{app.id}/decision", {"approve": True}), 409)

    residents = service.dataset_by_name(session, "residents")
    assert rows.may_read(session, residents, ANONYMOUS, key)
    assert not rows.may_read(session, other, ANONYMOUS, key)  # another conditional dataset
    assert not rows.may_read(session, residents, ANONYMOUS, None)
    assert not rows.may_read(session, residents, ANONYMOUS, key[:-2] + "xx")

    problem(call(od, "POST", "police_staff", f"/applications/{app.id}/revoke"), 403)
    assert ok(call(od, "POST", "police_admin", f"/applications/{app.id}/revoke")) == {"application": app.id,
                                                                                       "revoked": 1}
    session.expire_all()
    assert not rows.may_read(session, residents, ANONYMOUS, key)
    actions = session.scalars(select(AuditRecord.action).where(AuditRecord.object_type == "opendata.application",
                                                               AuditRecord.outcome == "success")
                              .order_by(AuditRecord.seq)).all()  # PostgreSQL keeps no order unasked
    assert actions == ["opendata.application.create", "opendata.application.approved", "opendata.key.revoke"]


def test_refused_application_issues_no_key(od, session):
    draft_residents(od, rules=RULES)
    for who in ("police_staff", "police_admin", "admin"):
        ok(call(od, "POST", who, f"/datasets/residents/{'submit' if who == 'police_staff' else 'approve'}"))
    app = ok(call(od, "POST", "resident", "/applications", {
        "dataset": "residents", "applicant": "张三", "contact": "13800000000",
        "purpose": "个人研究户籍人口年龄结构变化"}), 201)
    out = ok(call(od, "POST", "police_admin", f"/applications/{app['id']}/decision",
                  {"approve": False, "reason": "用途与数据无关"}))
    assert out["state"] == "refused" and out["key"] is None and out["reason"] == "用途与数据无关"
    assert ok(call(od, "GET", "resident", "/applications", mine="true"))["items"][0]["state"] == "refused"


# -- figures --------------------------------------------------------------------------------------


def test_stats_over_the_api(od):
    body = StatsOut.model_validate(ok(call(od, "GET", "auditor", "/stats")))
    assert body.city.published == 1 and body.city.open_rate == 0.5
    assert [d.department for d in body.departments] == ["220200-gaj", "220200-hbj"]
    assert [d.name for d in body.datasets] == ["air-quality-daily"] and len(body.series) == 30
    assert "open_rate" in body.definitions
    only = ok(call(od, "GET", "env_staff", "/stats", department="220200-hbj"))
    assert [d["department"] for d in only["departments"]] == ["220200-hbj"]
    problem(call(od, "GET", "resident", "/stats"), 403)
    problem(call(od, "GET", "admin", "/stats", department="nowhere"), 404)
