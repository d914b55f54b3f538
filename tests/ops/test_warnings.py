"""Early warning: one open warning per rule and cause, closing when the indicator recovers; the
incident and case actions (a failing action is recorded, nothing breaks); a real sensing alert
raising a warning that registers a case; the manual trigger and who may use it (both databases)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

import cityos.ops.warnings as warn
from cityos.core.access import SYSTEM
from cityos.core.models import AuditRecord
from cityos.ops import emergency
from cityos.ops import indicators as ind
from cityos.ops.models import EarlyWarning, Incident
from cityos.sensing import alerts, ingest
from tests.core.test_pages import signed_in
from tests.ops.conftest import OPS
from tests.sensing.conftest import T0, make_thing, row
from tests.sensing.helpers_rules import Harness

VALUE: dict[str, float | None] = {"v": None}


@pytest.fixture(autouse=True)
def test_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ind, "SOURCES", {**ind.SOURCES, "test.value": ind.Source(
        "test.value", lambda s, p, d: VALUE["v"], "set by the test")})


def _indicator(s: Any, code: str = "aqi") -> Any:
    return ind.indicator_upsert(s, SYSTEM, {
        "code": code, "name": "AQI", "department": OPS, "source": "test.value", "refresh_seconds": 1,
        "thresholds": {"direction": "up", "attention": 100, "warning": 150, "critical": 200}})


def _refresh(s: Any, i: Any, value: float | None) -> None:
    VALUE["v"] = value
    ind.refresh(s, i)
    s.commit()


def test_one_open_warning_per_cause_closing_when_back_under(ops_city):
    with ops_city.sessions() as s:
        i = _indicator(s)
        warn.rule_upsert(s, SYSTEM, {"code": "aqi-w", "name": "AQI 预警", "on": "indicator", "indicator": "aqi",
                                     "min_level": "warning", "level": "warning", "department": OPS,
                                     "notify": ["220200-hbj"]})
        s.commit()
        _refresh(s, i, 120)  # attention: below the rule's level
        assert warn.warning_list(s, SYSTEM) == []
        _refresh(s, i, 160)
        _refresh(s, i, 210)  # still the same cause: no second warning
        (w,) = warn.warning_list(s, SYSTEM)
        assert w.level == "warning" and w.detail["notified"] == ["220200-hbj"] and w.detail["value"] == 160
        _refresh(s, i, None)  # no data neither raises nor closes
        assert [x.id for x in warn.warning_list(s, SYSTEM)] == [w.id]
        _refresh(s, i, 90)
        assert warn.warning_list(s, SYSTEM) == [] and w.state == "closed" and w.closed_at is not None
        _refresh(s, i, 155)
        assert len(warn.warning_list(s, SYSTEM)) == 1
        assert len(warn.warning_list(s, SYSTEM, "all")) == 2


def test_incident_action_and_a_failing_action(ops_city):
    with ops_city.sessions() as s:
        emergency.incident_type_upsert(s, SYSTEM, {"code": "heavy-pollution", "name": "重污染天气"})
        i = _indicator(s)
        base = {"on": "indicator", "indicator": "aqi", "min_level": "critical", "level": "critical",
                "department": OPS, "action": "incident", "incident_level": "IV"}
        warn.rule_upsert(s, SYSTEM, {**base, "code": "good", "name": "启动应急", "incident_type": "heavy-pollution"})
        warn.rule_upsert(s, SYSTEM, {**base, "code": "bad", "name": "类型未知", "incident_type": "meteor"})
        s.commit()
        _refresh(s, i, 250)
        got = {s.get(warn.WarningRule, w.rule_id).code: w for w in warn.warning_list(s, SYSTEM)}
        assert set(got) == {"good", "bad"}
        inc = s.get(Incident, got["good"].incident_id)
        assert inc is not None and inc.warning_id == got["good"].id and inc.level == "IV"
        assert got["bad"].incident_id is None and got["bad"].detail["action_error"]
        assert i.value == 250  # the refresh itself went through
        assert s.scalar(select(func.count()).select_from(Incident)) == 1


@pytest.fixture
def harness(engine: Engine) -> Any:
    w = ingest.Writer(engine)
    h = Harness(engine, w)
    yield h
    h.close()
    w.stop()


def test_a_sensing_alert_raises_a_warning_that_registers_a_case(ops_city, harness):
    with ops_city.sessions() as s:
        warn.rule_upsert(s, SYSTEM, {"code": "pm-case", "name": "严重超标转工单", "on": "alert",
                                     "match": {"severity": "critical", "department": "220200-hbj"},
                                     "level": "critical", "action": "case", "case_category": "pollution",
                                     "department": OPS})
        warn.rule_upsert(s, SYSTEM, {"code": "police-only", "name": "公安告警", "on": "alert",
                                     "match": {"department": "220200-gaj"}, "department": OPS})
        _, (ds,) = make_thing(s, name="哈达湾站")
        s.commit()
    harness.rule("threshold", ds.id, {"op": ">", "value": 100}, severity="critical")
    harness.write([row(ds.id, T0, 180.0)])
    harness.write([row(ds.id, T0 + 1000, 190.0)])  # the same alert again: no second warning
    (alert,) = harness.alerts()
    with ops_city.sessions() as s:
        (w,) = warn.warning_list(s, SYSTEM)
        assert w.source_key == f"alert:{alert.id}" and w.level == "critical"
        assert w.case_number and w.detail.get("action_error") is None
        r = ops_city.client.get(f"/api/cases/{w.case_number}", headers=ops_city.headers("hotline_admin"))
        assert r.status_code == 200 and r.json()["channel"] == "ops"
        alerts.alert_resolve(s, SYSTEM, alert.id, "处理完毕")
        s.commit()
        assert warn.warning_list(s, SYSTEM) == []


def test_manual_raise_and_close_over_the_api(ops_city):
    c, h = ops_city.client, ops_city.headers
    rule = {"name": "演练", "on": "alert", "match": {"severity": "critical"}, "level": "warning",
            "department": OPS}
    assert c.put("/api/ops/warning-rules/drill", json=rule, headers=h("police_admin")).status_code == 403
    r = c.put("/api/ops/warning-rules/drill", json={**rule, "on": "sometimes"}, headers=h("ops_staff"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "on"
    r = c.put("/api/ops/warning-rules/drill", json={**rule, "action": "incident"}, headers=h("ops_staff"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "incident_type"
    assert c.put("/api/ops/warning-rules/drill", json=rule, headers=h("ops_staff")).status_code == 200
    assert [x["code"] for x in c.get("/api/ops/warning-rules", headers=h("cm_staff")).json()] == ["drill"]
    assert c.post("/api/ops/warning-rules/drill/raise", headers=h("police_admin")).status_code == 403
    r = c.post("/api/ops/warning-rules/drill/raise", json={"note": "演练"}, headers=h("ops_staff"))
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    assert c.post("/api/ops/warning-rules/drill/raise", headers=h("ops_staff")).status_code == 409
    assert c.post("/api/ops/warning-rules/none/raise", headers=h("ops_staff")).status_code == 404
    assert [x["id"] for x in c.get("/api/ops/warnings", headers=h("cm_staff")).json()] == [wid]
    assert c.get("/api/ops/warnings", params={"state": "maybe"}, headers=h("cm_staff")).status_code == 422
    assert c.get("/api/ops/warnings", headers=h("resident")).status_code == 403
    assert c.post(f"/api/ops/warnings/{wid}/close", headers=h("cm_staff")).status_code == 403
    r = c.post(f"/api/ops/warnings/{wid}/close", json={"note": "演练结束"}, headers=h("ops_admin"))
    assert r.status_code == 200 and r.json()["state"] == "closed"
    assert c.post(f"/api/ops/warnings/{wid}/close", headers=h("ops_admin")).status_code == 409
    with ops_city.sessions() as s:
        assert s.scalar(select(func.count()).select_from(EarlyWarning)) == 1


def test_seed_defaults(ops_city):
    with ops_city.sessions() as s:
        ind.seed_defaults(s, OPS)
        made = warn.seed_defaults(s, OPS)
        s.commit()
        assert {r.code for r in made} >= {"aqi-heavy-pollution", "pipe-burst", "hotline-backlog"}
        assert warn.seed_defaults(s, OPS) == []


def test_told_departments_sign_for_a_warning(ops_city):
    """Who is told (通知): the rule's departments see the warning under "sent to my department" and
    sign for it once, with what they will do; others may read it but not sign."""
    oc = ops_city
    with oc.sessions() as s:
        i = _indicator(s)
        warn.rule_upsert(s, SYSTEM, {"code": "aqi-w", "name": "AQI 预警", "on": "indicator", "indicator": "aqi",
                                     "min_level": "warning", "level": "warning", "department": OPS,
                                     "notify": ["220200-hbj", "220200-gaj"]})
        s.commit()
        _refresh(s, i, 170)
        (w,) = warn.warning_list(s, SYSTEM)
        wid = w.id
    env, parks = oc.headers("env_admin"), oc.headers("parks_staff")
    assert [x["id"] for x in oc.client.get("/api/ops/warnings", params={"told": "220200-hbj"},
                                           headers=env).json()] == [wid]
    assert oc.client.get("/api/ops/warnings", params={"told": "220200-ylj"}, headers=env).json() == []

    r = oc.client.post(f"/api/ops/warnings/{wid}/acknowledge", json={"note": "加密监测"}, headers=parks)
    assert r.status_code == 403  # parks was not told
    r = oc.client.post(f"/api/ops/warnings/{wid}/acknowledge", json={"note": "加密监测"}, headers=env)
    assert r.status_code == 200, r.text
    signed = r.json()["acknowledged"]
    assert list(signed) == ["220200-hbj"] and signed["220200-hbj"]["by"] == "env_admin"
    assert signed["220200-hbj"]["note"] == "加密监测"
    assert oc.client.post(f"/api/ops/warnings/{wid}/acknowledge", headers=env).status_code == 409
    assert oc.client.post("/api/ops/warnings/999999/acknowledge", headers=env).status_code == 404

    # The console page: police sees the sign form, signs, and the row shows both departments' state.
    oc.client.cookies.clear()
    signed_in(oc.client, "police_admin")
    page = oc.client.get("/ops/warnings?mine=1")
    assert page.status_code == 200 and f'data-sign="{wid}"' in page.text
    assert 'data-told="220200-hbj" data-signed="1"' in page.text
    assert 'data-told="220200-gaj" data-signed="0"' in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = oc.client.post(f"/ops/warnings/{wid}/acknowledge", data={"csrf_token": csrf, "note": "交通管制准备"},
                       follow_redirects=False)
    assert r.status_code == 303, r.text
    page = oc.client.get("/ops/warnings?mine=1")
    assert 'data-told="220200-gaj" data-signed="1"' in page.text and f'data-sign="{wid}"' not in page.text
    with oc.sessions() as s:
        assert s.scalar(select(func.count()).select_from(AuditRecord)
                        .where(AuditRecord.action == "ops.warning.acknowledge")) == 2
