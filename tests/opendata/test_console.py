"""Open-data console pages: access (staff in, residents out, strangers to sign in), CSRF on every
form, publishing a resource through the rules editor, the check, each reviewer's buttons, the
plan, an application's key shown once, the figures, and both languages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from cityos.core import i18n
from cityos.core.models import AuditRecord
from cityos.opendata import applications, deid, pages_console, service
from cityos.opendata.models import Dataset
from tests.core.test_pages import HTML
from tests.core.test_pages import signed_in as sign_in
from tests.opendata.conftest import actor_of

TEMPLATES = Path(pages_console.__file__).resolve().parent / "templates" / "console" / "opendata"
PAGES = ["/console/opendata", "/console/opendata/new", "/console/opendata/plan",
         "/console/opendata/applications", "/console/opendata/stats",
         "/console/opendata/datasets/air-quality-daily"]


def signed_in(client, username: str) -> str:
    """Sign in afresh as `username`; the CSRF token."""
    client.cookies.clear()
    return sign_in(client, username)


def form_of(people_items, **rules):
    """The rules editor's rows for the people resource: {item: (action, how, params)}."""
    data = {"rule_field": [], "rule_action": [], "rule_how": [], "rule_params": []}
    for item in people_items:
        action, how, params = rules.get(item, ("", "", ""))
        data["rule_field"].append(item)
        data["rule_action"].append(action)
        data["rule_how"].append(how)
        data["rule_params"].append(params)
    return data


ITEMS = ["id_number", "name", "gender", "birth_date", "district", "household_size"]


@pytest.fixture
def od(open_city, client):
    client.open = open_city  # type: ignore[attr-defined]
    return client


# -- access -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_strangers_are_sent_to_sign_in(od, path):
    r = od.get(path, headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=")


def test_every_page_renders_for_staff_and_none_for_residents(od):
    for who in ("env_staff", "env_admin", "admin"):
        signed_in(od, who)
        for path in PAGES:
            r = od.get(path)
            assert r.status_code == 200, (who, path, r.text)
            assert r.headers["cache-control"] == "no-store"
            assert "<script>" not in r.text and "style=" not in r.text  # the CSP allows neither
    assert 'href="/console/opendata"' in od.get("/console").text
    signed_in(od, "resident")
    assert 'href="/console/opendata"' not in od.get("/console").text
    for path in PAGES:
        assert od.get(path, headers=HTML).status_code == 403, path
    signed_in(od, "auditor")  # auditors read the plan and the figures, not the drafts
    assert od.get("/console/opendata/plan").status_code == 200
    assert od.get("/console/opendata/stats").status_code == 200
    assert od.get("/console/opendata", headers=HTML).status_code == 403
    signed_in(od, "police_staff")  # another department's dataset
    assert od.get("/console/opendata/datasets/air-quality-daily", headers=HTML).status_code == 403


def test_forms_need_the_csrf_token(od, session):
    signed_in(od, "police_staff")
    people = od.open.people.code
    for data in ({}, {"csrf_token": "0" * 64}):
        r = od.post("/console/opendata/new", data={"resource": people, "title": "x", **data},
                    headers=HTML, follow_redirects=False)
        assert r.status_code == 403
    csrf = signed_in(od, "env_admin")
    for path in ("/console/opendata/datasets/air-quality-daily/withdraw", "/console/opendata/plan",
                 "/console/opendata/datasets/air-quality-daily/check"):
        assert od.post(path, data={"reason": "x"}, headers=HTML).status_code == 403, path
    assert session.scalar(select(Dataset.id).where(Dataset.resource_id == od.open.people.id)) is None
    assert od.get("/console/opendata/datasets/air-quality-daily").status_code == 200
    assert "csrf_token" in od.get("/console/opendata/plan").text and csrf


# -- publishing through the pages -------------------------------------------------------------


def test_publish_a_resource_through_the_console(od, session):
    people = od.open.people.code
    csrf = signed_in(od, "police_staff")
    picker = od.get("/console/opendata/new").text
    assert f"/console/opendata/new?resource={people}" in picker
    page = od.get(f"/console/opendata/new?resource={people}")
    assert page.status_code == 200
    for item in ITEMS:
        assert f'name="rule_field" value="{item}"' in page.text
    assert 'value="households"' not in page.text and 'name="quasi"' in page.text

    # A broken parameter and a generalization without its target are shown in their rows.
    bad = form_of(ITEMS, household_size=("round", "", "step"), birth_date=("generalize", "", ""))
    r = od.post("/console/opendata/new", data={"csrf_token": csrf, "resource": people, "name": "residents",
                                               "title": "户籍人口统计", "licence": "CC-BY-4.0",
                                               "update_cycle": "daily", "open_level": "conditional",
                                               "k": "5", **bad})
    assert r.status_code == 422
    assert re.search(r'id="rule-household_size" class="has-error"', r.text)
    assert "名称=值" in r.text
    bad = form_of(ITEMS, birth_date=("generalize", "", ""))
    r = od.post("/console/opendata/new", data={"csrf_token": csrf, "resource": people, "name": "residents",
                                               "title": "户籍人口统计", **bad})
    assert r.status_code == 422 and 'id="rule-birth_date" class="has-error"' in r.text

    # A draft with no rule for the ID numbers: saved, but the check names the item.
    r = od.post("/console/opendata/new", follow_redirects=False, data={
        "csrf_token": csrf, "resource": people, "name": "residents", "title": "户籍人口统计",
        "tags": "人口、户籍", "topics": ["population"], "licence": "CC-BY-4.0", "update_cycle": "daily",
        "open_level": "conditional", "k": "5", **form_of(ITEMS)})
    assert r.status_code == 303 and r.headers["location"] == "/console/opendata/datasets/residents?done=draft"
    ds = service.dataset_by_name(session, "residents")
    assert ds.tags == ["人口", "户籍"] and ds.topics == ["population"] and ds.rules == []
    check = od.post("/console/opendata/datasets/residents/check", headers={"HX-Request": "true"},
                    data={"csrf_token": csrf})
    assert check.status_code == 200 and "<html" not in check.text
    assert "<code>id_number</code>" in check.text and "alert error" in check.text
    full = od.post("/console/opendata/datasets/residents/check", data={"csrf_token": csrf})
    assert full.status_code == 422 and "<html" in full.text and "<code>id_number</code>" in full.text

    # Rules through the edit form; the check then passes with its figures.
    edit = od.get("/console/opendata/datasets/residents/edit")
    assert edit.status_code == 200 and 'value="residents"' in edit.text
    rules = form_of(ITEMS, id_number=("mask", "id_number", ""), name=("suppress", "", ""),
                    birth_date=("generalize", "age_band", "width=20, top=80"))
    r = od.post("/console/opendata/datasets/residents/edit", follow_redirects=False, data={
        "csrf_token": csrf, "name": "residents", "title": "户籍人口统计", "tags": "人口、户籍",
        "topics": ["population"], "licence": "CC-BY-4.0", "update_cycle": "daily",
        "open_level": "conditional", "k": "5", "quasi": ["district"], **rules})
    assert r.status_code == 303, r.text
    session.expire_all()
    ds = service.dataset_by_name(session, "residents")
    assert ds.rules == [{"field": "id_number", "action": "mask", "kind": "id_number"},
                        {"field": "name", "action": "suppress"},
                        {"field": "birth_date", "action": "generalize", "to": "age_band", "width": 20, "top": 80}]
    assert ds.quasi_identifiers == ["district"]
    again = od.get("/console/opendata/datasets/residents/edit").text  # the editor shows them again
    assert 'value="width=20, top=80"' in again and '<option value="age_band" selected>' in again
    check = od.post("/console/opendata/datasets/residents/check", headers={"HX-Request": "true"},
                    data={"csrf_token": csrf})
    assert "alert ok" in check.text and "40" in check.text

    # The review, each reviewer with their button.
    page = od.get("/console/opendata/datasets/residents").text
    assert 'action="/console/opendata/datasets/residents/submit"' in page
    assert 'action="/console/opendata/datasets/residents/approve"' not in page
    r = od.post("/console/opendata/datasets/residents/submit", data={"csrf_token": csrf, "note": "请审核"},
                follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("?done=submit")
    csrf = signed_in(od, "police_admin")
    page = od.get("/console/opendata/datasets/residents").text
    assert 'action="/console/opendata/datasets/residents/approve"' in page and "请审核" in page
    r = od.post("/console/opendata/datasets/residents/refuse", data={"csrf_token": csrf, "reason": ""})
    assert r.status_code == 422 and 'class="error"' in r.text
    assert od.post("/console/opendata/datasets/residents/approve", data={"csrf_token": csrf},
                   follow_redirects=False).status_code == 303
    assert od.post("/console/opendata/datasets/residents/approve", data={"csrf_token": csrf},
                   headers=HTML).status_code == 403  # the data office's step
    csrf = signed_in(od, "admin")
    assert od.post("/console/opendata/datasets/residents/approve", data={"csrf_token": csrf},
                   follow_redirects=False).status_code == 303
    page = od.get("/console/opendata/datasets/residents?done=approve").text
    assert "office_approve" not in page and "已开放" in page and "/data/dataset/residents" in page
    assert od.post("/console/opendata/datasets/residents/nonsense", data={"csrf_token": csrf},
                   headers=HTML).status_code == 404
    steps = session.scalars(select(AuditRecord.action).where(
        AuditRecord.object_id == "residents", AuditRecord.outcome == "success")
        .order_by(AuditRecord.seq)).all()  # PostgreSQL keeps no order unasked
    assert steps == ["opendata.dataset.draft", "opendata.dataset.update", "opendata.dataset.submit",
                     "opendata.dataset.provider_approve", "opendata.dataset.office_approve"]


def test_the_rules_editor_reads_rows_and_names(od):
    rows = pages_console.rules_from_form(
        ["a", "b", "c", "d"], ["", "mask", "round", "generalize"], ["", "name", "", "range"],
        ["", "char=#", "step=0.5", "width=10 top=100 name=c_band"])
    assert rows == [{"field": "b", "action": "mask", "kind": "name", "char": "#"},
                    {"field": "c", "action": "round", "step": 0.5},
                    {"field": "d", "action": "generalize", "to": "range", "width": 10, "top": 100,
                     "name": "c_band"}]
    assert pages_console.rule_rows(rows)["d"] == {"action": "generalize", "how": "range",
                                                   "params": "width=10, top=100, name=c_band"}
    assert pages_console._quasi_sources(rows, ["c_band", "a"]) == ["d", "a"]
    assert pages_console.row_errors({"rules[1].step": "bad", "rules.a": "raw", "k": "x"}, rows) == {
        "rule.c": "step bad", "rule.a": "raw", "k": "x"}


# -- plan, applications, figures --------------------------------------------------------------


def test_plan_through_the_console(od):
    csrf = signed_in(od, "police_staff")
    assert "plan-add" not in od.get("/console/opendata/plan").text  # staff do not plan
    csrf = signed_in(od, "police_admin")
    page = od.get("/console/opendata/plan").text
    assert "plan-add" in page and od.open.people.code in page
    r = od.post("/console/opendata/plan", data={"csrf_token": csrf, "resource": od.open.people.code,
                                                "open_level": "conditional", "planned_on": ""})
    assert r.status_code == 422
    r = od.post("/console/opendata/plan", follow_redirects=False, data={
        "csrf_token": csrf, "resource": od.open.people.code, "open_level": "conditional",
        "planned_on": "2020-01-01", "note": "延期"})
    assert r.status_code == 303
    page = od.get(r.headers["location"]).text
    assert 'class="overdue"' in page and "延期" in page


def test_an_approval_shows_the_key_once(od, session):
    police = actor_of(session, "police_staff")
    ds = service.dataset_draft(session, police, resource=od.open.people.code, spec={
        "name": "residents", "rules": [{"field": "id_number", "action": "suppress"},
                                       {"field": "name", "action": "suppress"}]})
    service.dataset_submit(session, police, ds.name)
    service.dataset_approve(session, actor_of(session, "police_admin"), ds.name)
    service.dataset_approve(session, actor_of(session, "admin"), ds.name)
    app = applications.application_create(session, actor_of(session, "resident"), ds, applicant="某某科技公司",
                                          contact="data@example.cn", purpose="研究户籍人口的区县分布情况")
    session.commit()

    signed_in(od, "police_staff")
    assert "alert warn" in od.get("/console/opendata/applications").text  # their admins decide
    csrf = signed_in(od, "police_admin")
    page = od.get("/console/opendata/applications").text
    assert f'action="/console/opendata/applications/{app.id}/decision"' in page
    r = od.post(f"/console/opendata/applications/{app.id}/decision",
                data={"csrf_token": csrf, "approve": "0", "reason": ""})
    assert r.status_code == 422
    r = od.post(f"/console/opendata/applications/{app.id}/decision",
                data={"csrf_token": csrf, "approve": "1", "valid_days": "90"}, follow_redirects=False)
    assert r.status_code == 200  # not a redirect: the key is on this page only
    key = re.search(r'<code id="od-key">(odk_[^<]+)</code>', r.text).group(1)
    assert "data@example.cn" in r.text
    assert applications.key_valid(session, key, ds.id)
    page = od.get("/console/opendata/applications").text
    assert key not in page and "odk_" not in page
    r = od.post(f"/console/opendata/applications/{app.id}/revoke", data={"csrf_token": csrf},
                follow_redirects=False)
    assert r.status_code == 303
    assert not applications.key_valid(session, key, ds.id)
    assert f'action="/console/opendata/applications/{app.id}/revoke"' not in od.get(r.headers["location"]).text


def test_figures_page(od):
    signed_in(od, "env_staff")
    page = od.get("/console/opendata/stats").text
    assert "/static/vendor/echarts/echarts.min.js" in page and "/static/opendata/console.js" in page
    assert "data-od-chart=\"usage\"" in page and "50.0%" in page  # 1 of 2 openable resources
    assert "市环保局" in page and "环境空气质量日报" in page
    assert od.get("/static/opendata/console.js").status_code == 200
    en = od.get("/console/opendata/stats?lang=en").text
    assert "Open rate" in en


def test_english_pages(od):
    signed_in(od, "env_admin")
    for path in PAGES:
        r = od.get(path + ("&" if "?" in path else "?") + "lang=en")
        assert r.status_code == 200 and "odc." not in r.text, path


def test_every_console_key_is_in_both_catalogs():
    zh, en = i18n.catalog("zh-CN"), i18n.catalog("en")
    used = set()
    for path in TEMPLATES.rglob("*.html"):
        used |= set(re.findall(r"\bt\('([\w.-]+)'\s*[,)]", path.read_text(encoding="utf-8")))
    used |= {f"odc.tab.{t}" for t in ("datasets", "new", "plan", "applications", "stats")}
    used |= {f"odc.state.{s}" for s in service.STATES} | {f"odc.level.{x}" for x in service.OPEN_LEVELS}
    used |= {f"odc.review.lead.{s}" for s in service.STATES}
    used |= {f"odc.done.{s}" for s in (*pages_console.STEPS, "draft", "edit")}
    used |= {f"odc.step.{s}" for s in pages_console.STEPS}
    used |= {f"odc.history.{s}" for s in ("draft", "submit", "provider_approve", "office_approve", "refuse",
                                          "withdraw")}
    used |= {f"odc.action.{a}" for a in deid.ACTIONS} | {f"odc.how.{h}" for h in (*deid.MASK_KINDS, *deid.GENERALIZE)}
    used |= {f"odc.plan.status.{s}" for s in ("planned", "overdue", "published")}
    used |= {f"odc.app.state.{s}" for s in ("pending", "approved", "refused")}
    keys = ("resources", "openable", "published", "open_rate", "planned", "plan_overdue", "stale", "held",
            "views", "downloads", "api_calls")
    used |= {f"odc.stats.{k}" for k in keys} | {f"odc.stats.def.{k}" for k in keys}
    missing = sorted(k for k in used if k not in zh or k not in en)
    assert not missing, missing
