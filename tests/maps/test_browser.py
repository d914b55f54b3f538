"""The demo city on the map in a real Chromium: the demo's map step on the test database, the
water company's staff member signs in, sees the districts drawn, runs a burst analysis by
clicking a pipe and sees the valves to close listed and drawn; a feature's text stays text; the
public map draws without signing in. Every request stays on 127.0.0.1 and the console stays
free of errors (CSP violations included)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import shapely

from cityos.core.access import SYSTEM
from cityos.demo import data, maps_seed, seed
from cityos.maps import pipes, service
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser
SCALE = 0.0005  # the tests' tiny demo: a network of 60 pipes
PIPE = "W000030"
TRAP = '<img src="x" id="xss">'


@pytest.fixture
def demo_map(sessions):
    """The plan's departments and users, the demo map at the tiny scale, and one public note
    whose name is markup (in the middle of a block of the network, away from every pipe)."""
    with sessions() as s:
        seed.seed(s, data.plan(), PASSWORD)
        s.commit()
        maps_seed.build_maps(s, SCALE, PASSWORD)
        service.layer_create(s, SYSTEM, {
            "code": "notes", "title": "备注", "department": maps_seed.PLANNING, "geometry_type": "point",
            "attributes": [{"name": "name", "type": "string"}], "keywords": ["底图"], "open_type": "open",
            "public": True})
        service.features_write(s, SYSTEM, "notes", [("n1", shapely.Point(*maps_seed.network_centre()),
                                                     {"name": TRAP})])
        s.commit()


def watch(page):
    """Record every request and every console error of the page."""
    seen: dict[str, list[str]] = {"requests": [], "errors": []}
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    return seen


def click_centre(page, locator):
    box = locator.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_staff_run_a_burst_analysis_on_the_demo_city(page, demo_map, live_server):
    from playwright.sync_api import expect

    seen = watch(page)
    page.set_viewport_size({"width": 1400, "height": 950})
    page.goto(f"{live_server}/console/maps")
    expect(page).to_have_url(re.compile(r"/console/login\?next=%2Fconsole%2Fmaps$"))
    page.get_by_label("用户名").fill("water_staff")
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(r"/console/maps$"))
    expect(page.locator("#map")).to_have_attribute("data-status", "ready")

    # The nine districts are drawn (SVG paths), and the network is on the map.
    expect(page.locator('path[data-layer="districts"]')).to_have_count(9)
    expect(page.locator('path[data-layer="water-changyi-pipes"]')).to_have_count(60)

    page.locator('[data-zoom-layer="water-changyi-pipes"]').click()
    page.get_by_label("爆管分析").check()
    click_centre(page, page.locator(f'path[data-layer="water-changyi-pipes"][data-fid="{PIPE}"]'))

    want = pipes.Network.build(*maps_seed.network(SCALE)).burst(PIPE)
    valves = sorted(v.id for v in want.valves_to_close)
    assert valves
    panel = page.locator("[data-results]")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text(f"管线 {PIPE}")
    expect(panel.locator("[data-valve]")).to_have_count(len(valves))
    assert sorted(panel.locator("[data-valve]").evaluate_all(
        "items => items.map(li => li.dataset.valve)")) == valves
    expect(panel).to_contain_text(f"需关闭阀门{len(valves)}")
    drawn = page.locator('path[data-result="valve"]')
    expect(drawn).to_have_count(len(valves))
    assert sorted(drawn.evaluate_all("ps => ps.map(p => p.dataset.fid)")) == valves
    expect(page.locator('path[data-result="isolated"]')).to_have_count(len(want.isolated_pipe_ids))

    # Back to the query tool: a feature's text is shown as text, with where it is.
    page.get_by_label("点选查询").check()
    click_centre(page, page.locator('path[data-layer="notes"]'))
    popup = page.locator(".leaflet-popup-content")
    expect(popup).to_contain_text(TRAP)
    expect(popup).to_contain_text("昌邑区（220202）")
    assert page.locator("#xss").count() == 0

    local = urlsplit(live_server).netloc
    assert seen["requests"] and all(urlsplit(u).netloc == local for u in seen["requests"]), [
        u for u in seen["requests"] if urlsplit(u).netloc != local]
    assert any("/api/maps/networks/water-changyi/burst" in u for u in seen["requests"])
    assert seen["errors"] == [], f"browser console errors (CSP violations?): {seen['errors']}"


def test_the_public_map_draws_without_signing_in(page, demo_map, live_server):
    from playwright.sync_api import expect

    seen = watch(page)
    page.goto(f"{live_server}/")
    page.get_by_role("link", name="一张图").first.click()
    expect(page).to_have_url(re.compile(r"/map$"))
    expect(page.locator("#map")).to_have_attribute("data-status", "ready")
    expect(page.locator('path[data-layer="districts"]')).to_have_count(9)
    expect(page.locator('path[data-layer="roads"]').first).to_be_attached()
    assert page.locator('path[data-layer="water-changyi-pipes"]').count() == 0
    assert page.locator('[data-tool="burst"]').count() == 0
    local = urlsplit(live_server).netloc
    assert all(urlsplit(u).netloc == local for u in seen["requests"])
    assert seen["errors"] == []
