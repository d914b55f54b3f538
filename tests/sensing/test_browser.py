"""The sensing console in a real Chromium: a department's staff member signs in, finds the device
in the registry and on the map, opens it and sees its readings charted (minute rollups zoomed
out, raw readings zoomed in), issues its credentials; writes a rule in the editor (the API's
error lands beside its field), sees the alert it raises arrive live and acknowledges it. Every
request stays on 127.0.0.1 and the console stays free of errors (CSP violations included)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from cityos.sensing import ingest
from cityos.sensing.runtime import runtime_of
from tests.conftest import PASSWORD, seed_small_city
from tests.sensing.conftest import make_thing
from tests.sensing.helpers_rules import Harness
from tests.sensing.test_pages import app, wire  # noqa: F401  (the app with sensing wired)

pytestmark = pytest.mark.browser
READINGS = 3000  # every 10 s: more than a chart's 2,000 points, so zoomed out shows rollups


@pytest.fixture
def device(sessions, engine):
    """The small city and one air station of 市环保局 with a stream of readings up to now."""
    with sessions() as s:
        seed_small_city(s)
        thing, (ds,) = make_thing(s, name="江南公园空气站", lon=126.55, lat=43.84)
        ids = thing.id, ds.id
    now = ingest.now_ms()
    start = now - READINGS * 10_000
    writer = ingest.Writer(engine)
    writer.start()
    try:
        writer.write_sync([(ds.id, start + i * 10_000, None, None, 30.0 + (i % 60) / 3, None, None, None, None,
                            None, None) for i in range(READINGS)])
    finally:
        writer.stop()
    return ids


@pytest.fixture
def running(app, engine):  # noqa: F811
    """The app's own writer and rules engine (as `cityos serve` runs them), to write through."""
    platform = app.state.platform
    rt = runtime_of(platform)
    yield Harness(engine, rt.writer, rt.parts["rules"])
    if getattr(platform, "sensing", None) is rt:  # the server's shutdown stops it otherwise
        rt.stop()
        platform.sensing = None


def watch(page):
    seen: dict[str, list[str]] = {"requests": [], "errors": []}
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    return seen


def sign_in(page, base: str, path: str, username: str = "env_staff") -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}{path}")
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def all_local(seen, base: str, expected: str | None = None) -> None:
    """Nothing was asked of another host, and the console logged no error but the `expected`."""
    local = urlsplit(base).netloc
    assert all(urlsplit(u).netloc == local for u in seen["requests"]), [
        u for u in seen["requests"] if urlsplit(u).netloc != local]
    errors = [e for e in seen["errors"] if not (expected and expected in e)]
    assert errors == [], f"browser console errors (CSP violations?): {errors}"


def test_registry_map_and_device_charts(page, device, live_server):
    from playwright.sync_api import expect

    thing, ds = device
    seen = watch(page)
    page.set_viewport_size({"width": 1400, "height": 950})
    sign_in(page, live_server, "/console/sensing")
    row = page.locator(f'tr[data-thing="{thing}"]')
    expect(row).to_contain_text("江南公园空气站")
    expect(row.locator("[data-status]")).to_have_text("在线")
    expect(page.locator("#sense-map")).to_have_attribute("data-status", "ready")
    marker = page.locator(f'path[data-thing="{thing}"]')
    expect(marker).to_have_count(1)
    expect(marker).to_have_attribute("data-status", "online")

    row.get_by_role("link", name="江南公园空气站").click()
    expect(page).to_have_url(re.compile(rf"/console/sensing/things/{thing}$"))
    chart = page.locator(f'[data-stream="{ds}"] [data-chart]')
    expect(chart.locator("canvas").first).to_be_attached()
    # Zoomed out: minute rollups (a min-max band and the mean); zoomed in: the raw readings.
    expect(chart).to_have_attribute("data-grain", "1m")
    assert 400 <= int(chart.get_attribute("data-points")) <= 510
    chart.evaluate("n => echarts.getInstanceByDom(n).dispatchAction({type: 'dataZoom', start: 95, end: 100})")
    expect(chart).to_have_attribute("data-grain", "raw")
    assert 100 <= int(chart.get_attribute("data-points")) <= 160
    expect(page.locator("[data-live]")).to_have_attribute("data-live", "on", timeout=15_000)

    # Credentials: the secret is shown once, after a confirmation.
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="发放设备凭证").click()
    issued = page.locator("[data-issued]")
    expect(issued).to_be_visible()
    expect(issued.locator("[data-issued-key]")).to_have_text(re.compile(r"^dev_[0-9a-f]{12}$"))
    assert len(issued.locator("[data-issued-secret]").inner_text()) >= 20
    all_local(seen, live_server)


def test_rule_editor_and_live_alert(page, device, running, live_server):
    from playwright.sync_api import expect

    thing, ds = device
    seen = watch(page)
    page.set_viewport_size({"width": 1400, "height": 950})
    sign_in(page, live_server, "/console/sensing/rules")
    form = page.locator("#rule-form")
    form.get_by_label("规则名称").fill("PM2.5 超标")
    form.locator("#r-target-datastream").select_option(str(ds))
    form.locator("#r-severity").select_option("critical")
    form.locator("#p-threshold-op").select_option(">")
    form.get_by_role("button", name="保存规则").click()
    # The API refuses (no limit given): its reason is shown beside the limit's field.
    error = form.locator('fieldset[data-kind="threshold"] [data-error-for="params.value"]')
    expect(error).to_be_visible()
    expect(error).to_contain_text("必填")
    form.locator("#p-threshold-value").fill("75")
    form.get_by_role("button", name="保存规则").click()
    expect(page).to_have_url(re.compile(r"/console/sensing/rules\?saved=\d+$"))
    expect(page.locator("[data-rules]")).to_contain_text("PM2.5 超标")

    page.goto(f"{live_server}/console/sensing/alerts")
    expect(page.locator("[data-live]")).to_have_attribute("data-live", "on")
    running.write([(ds, ingest.now_ms(), None, None, 80.0, None, None, None, None, None, None)])
    row = page.locator("tr[data-alert]").first
    expect(row).to_contain_text("80")  # arrived live, without reloading
    expect(row).to_contain_text("江南公园空气站")
    expect(row).to_contain_text("PM2.5 超标")
    expect(row.locator("[data-state-badge]")).to_have_text("待处理")
    row.get_by_role("button", name="确认").click()
    expect(row.locator("[data-state-badge]")).to_have_text("已确认")
    expect(row).to_have_attribute("data-state", "acknowledged")
    page.reload()
    expect(page.locator("tr[data-alert]").first).to_have_attribute("data-state", "acknowledged")
    all_local(seen, live_server, expected="status of 422")  # the refused first save
    page.goto("about:blank")  # close the event stream, so the server stops at once
