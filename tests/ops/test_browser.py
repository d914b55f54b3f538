"""Issue 8 done, in a real Chromium: the big screen opens, changes as a device's readings come in
(no reload), a warning opens an incident that appears on the screen, the commander clicks through
to it, activates a response plan and sees the departments' tasks appear. Every request stays on
127.0.0.1 and the console logs no error (CSP violations included)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from cityos.core.access import SYSTEM
from cityos.core.settings import Settings
from cityos.ops import emergency, indicators, warnings
from cityos.sensing import ingest
from tests.cases.conftest import HOTLINE, PARKS
from tests.cases.test_browser import all_local, sign_in, watch
from tests.ops.conftest import OPS
from tests.sensing.helpers_ingest import make_device

pytestmark = pytest.mark.browser


def seed(sessions):
    """A PM2.5 monitor with device credentials, the indicator reading it every second, a kind
    of emergency with its plan (tasks for parks and the hotline centre), and the rule that opens
    an incident of it."""
    with sessions() as s:
        device = make_device(s, OPS, [ingest.MEASUREMENT], name="pm25-monitor", credentials=True)
    with sessions() as s:
        indicators.indicator_upsert(s, SYSTEM, {
            "code": "air.pm25", "name": "PM2.5 浓度", "name_en": "PM2.5", "unit": "μg/m³",
            "theme": "environment", "source": "sensing.latest",
            "params": {"property": "PM2.5", "max_age_s": 86_400}, "refresh_seconds": 1,
            "thresholds": {"direction": "up", "attention": 75, "warning": 115, "critical": 150},
            "department": OPS})
        emergency.incident_type_upsert(s, SYSTEM, {"code": "air-pollution", "name": "重污染天气",
                                                   "name_en": "Heavy pollution"})
        emergency.plan_upsert(s, SYSTEM, {
            "code": "air-plan", "name": "重污染天气应急预案", "name_en": "Heavy pollution plan",
            "incident_type": "air-pollution", "min_level": "IV", "department": OPS,
            "tasks": [{"department": PARKS, "title": "停止园林施工作业", "title_en": "Stop park works", "hours": 4},
                      {"department": HOTLINE, "title": "热线做好群众解释", "title_en": "Brief hotline agents",
                       "hours": 2}]})
        warnings.rule_upsert(s, SYSTEM, {
            "code": "pm25-incident", "name": "PM2.5 重污染", "name_en": "PM2.5 heavy pollution",
            "on": "indicator", "indicator": "air.pm25", "min_level": "critical", "level": "critical",
            "notify": [PARKS], "action": "incident", "incident_type": "air-pollution",
            "incident_level": "IV", "department": OPS})
        s.commit()
    return device


def send(base: str, device, value: float) -> None:
    r = httpx.post(f"{base}/api/sensing/devices/{device.key}/readings", auth=(device.key, device.secret),
                   json=[{"ds": device.streams[0], "t": int(time.time() * 1000), "v": value}], timeout=10)
    assert r.status_code == 200, r.text


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This test watches the screen follow the city: the indicator clock runs, every second."""
    return settings.model_copy(update={"ops_refresh_seconds": 1.0})


def test_screen_follows_the_city_and_a_warning_becomes_an_incident_with_tasks(ops_city, live_server, page):
    from playwright.sync_api import expect

    base = live_server
    device = seed(ops_city.sessions)
    send(base, device, 40.0)
    seen = watch(page)
    sign_in(page, base, "/ops/screen", "ops_admin")
    expect(page.locator("body")).to_have_attribute("data-ready", "1")
    pm = page.locator('#tile-environment [data-indicator="air.pm25"]')
    expect(pm).to_have_attribute("data-value", "40", timeout=10_000)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    page.evaluate("window.__same_page = true")  # a reload would lose it

    # The readings move the screen, live.
    seq = int(page.locator("body").get_attribute("data-seq"))
    send(base, device, 95.0)
    expect(pm).to_have_attribute("data-value", "95", timeout=10_000)
    expect(pm).to_have_attribute("data-level", "attention")
    assert int(page.locator("body").get_attribute("data-seq")) > seq
    send(base, device, 180.0)  # heavy pollution: the rule fires and opens an incident
    expect(pm).to_have_attribute("data-level", "critical", timeout=10_000)
    incident = page.locator("#tile-incidents li[data-incident]")
    expect(incident).to_have_count(1, timeout=10_000)
    expect(page.locator("#tile-warnings li[data-warning]")).to_have_count(1, timeout=10_000)
    assert page.evaluate("window.__same_page") is True

    # Drill down to the incident and activate the plan: the departments' tasks appear.
    number = incident.get_attribute("data-incident")
    incident.locator("a").click()
    expect(page).to_have_url(re.compile(rf"/ops/incidents/{number}$"))
    form = page.locator("form#activate")
    form.locator("select[name=plan]").select_option("air-plan")
    form.locator("[type=submit]").click()
    expect(page.locator("table#tasks tr[data-case]")).to_have_count(2, timeout=10_000)
    all_local(seen, base)
