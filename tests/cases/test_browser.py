"""Issue 7 done, in a real Chromium: a resident reports a broken manhole cover on the portal —
a pin dropped on the map by clicking, a photo attached — and the case reaches the right
department with a deadline, is handled, verified, called back and closed, the resident sees it
closed and rates it, and the KPI dashboard moves. Then a workflow's BPMN diagram is drawn by
bpmn-js. Every request stays on 127.0.0.1 and the console logs no error (CSP violations
included)."""

from __future__ import annotations

import io
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from cityos.cases import service as cases
from cityos.core import access, service
from cityos.core.access import SYSTEM
from tests.cases.conftest import HOTLINE, CasesCity
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser
WORKS = "220200-szj"  # the department that mends manhole covers in this test city


@pytest.fixture
def works_city(cases_city: CasesCity) -> CasesCity:
    """The case city plus a municipal works bureau and a hotline category for manhole covers
    (the fixture's `manhole` is city management's, GB/T 30428)."""
    with cases_city.sessions() as s:
        service.department_create(s, SYSTEM, code=WORKS, name="市市政设施管理处", name_en="Municipal Works",
                                  kind="bureau", parent_code="220200")
        service.user_create(s, SYSTEM, username="works_staff", password=PASSWORD, department_code=WORKS,
                            role=access.DEPARTMENT_STAFF, display_name="works_staff")
        cases.category_upsert(s, SYSTEM, {"code": "manhole-cover", "name": "井盖缺失破损",
                                          "name_en": "Broken manhole cover", "group": "市政设施",
                                          "line": "hotline", "kind": "help", "department": WORKS,
                                          "keywords": ["井盖"]})
        s.commit()
    return cases_city


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(buf, "PNG")
    return buf.getvalue()


def watch(page):
    seen: dict[str, list[str]] = {"requests": [], "errors": []}
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    return seen


def all_local(seen, base: str) -> None:
    local = urlsplit(base).netloc
    assert all(urlsplit(u).netloc == local for u in seen["requests"] if not u.startswith(("data:", "blob:"))), [
        u for u in seen["requests"] if urlsplit(u).netloc != local]
    assert seen["errors"] == [], f"browser console errors (CSP violations?): {seen['errors']}"


def sign_in(page, base: str, path: str, username: str) -> None:
    """Sign in as `username` (ending anyone else's session) and land on `path`."""
    from playwright.sync_api import expect

    page.context.clear_cookies()
    page.goto(f"{base}/console/login?next={path}")
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def step(page, action: str):
    return page.locator(f'[data-step-form="{action}"]')


def test_a_manhole_cover_from_report_to_kpis(page, works_city, live_server):
    from playwright.sync_api import expect

    seen = watch(page)
    page.set_viewport_size({"width": 1400, "height": 1000})

    # The dashboard before: nothing closed this month.
    sign_in(page, live_server, "/console/cases/kpi", "hotline_agent")
    expect(page.locator('[data-kpi="closed"]')).to_have_text("0")
    expect(page.locator('[data-kpi="on_time_rate"]')).to_have_text("—")

    # A resident, not signed in, reports on the portal: category, text, a pin, a photo, a phone.
    page.context.clear_cookies()
    page.goto(f"{live_server}/cases/report")
    page.locator("#f-category").select_option("manhole-cover")
    page.locator("#f-description").fill("人民大街与解放路路口井盖破损，有行人踩空危险")
    pick = page.locator("#pick-map")
    expect(pick).to_have_attribute("data-status", "ready")
    pick.click(position={"x": 300, "y": 180})
    expect(pick).to_have_attribute("data-picked", re.compile(r"^\d+\.\d{6},\d+\.\d{6}$"))
    expect(page.locator("path[data-pin]")).to_have_count(1)
    lon, lat = float(page.locator("#f-lon").input_value()), float(page.locator("#f-lat").input_value())
    assert 126 < lon < 127 and 43 < lat < 44
    page.locator("#f-photos").set_input_files([{"name": "manhole.png", "mimeType": "image/png", "buffer": png()}])
    page.locator("#f-reporter_phone").fill("13912345678")
    page.get_by_role("button", name="提交诉求").click()
    expect(page).to_have_url(re.compile(r"/cases/track\?number=RX\d+&token=[0-9a-f]+&reported=1$"))
    number = page.locator("[data-number]").inner_text()
    follow = page.locator("[data-follow-link]").get_attribute("href")
    assert parse_qs(urlsplit(follow).query)["token"]
    expect(page.locator('[data-case-status="new"]')).to_be_visible()

    # The hotline's agent finds it in the queue and dispatches it: the category's department
    # is already chosen; a deadline follows.
    sign_in(page, live_server, "/console/cases", "hotline_agent")
    row = page.locator(f'.cases-queue tr[data-case="{number}"]')
    expect(row).to_be_visible()
    row.get_by_role("link", name=number).click()
    expect(page).to_have_url(re.compile(rf"/console/cases/{number}$"))
    expect(page.locator("#case-map")).to_have_attribute("data-status", "ready")
    expect(page.locator("path[data-point]")).to_have_count(1)
    expect(page.locator(".cases-photos img")).to_have_count(1)
    assert page.locator(".cases-photos img").evaluate("img => img.naturalWidth") == 64
    expect(page.locator("#s-dispatch-department")).to_have_value(WORKS)
    step(page, "dispatch").get_by_role("button", name="派遣", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/console/cases/{number}\?done=dispatch$"))
    expect(page.locator(f'[data-department="{WORKS}"]')).to_have_text("市市政设施管理处")
    expect(page.locator('h1 [data-case-status="dispatched"]')).to_be_visible()
    expect(page.locator("[data-due]")).to_have_text(re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"))

    # The works bureau accepts and answers.
    sign_in(page, live_server, "/console/cases", "works_staff")
    page.locator(f'.cases-queue tr[data-case="{number}"]').get_by_role("link", name=number).click()
    step(page, "accept").get_by_role("button", name="签收", exact=True).click()
    expect(page.locator('h1 [data-case-status="handling"]')).to_be_visible()
    step(page, "reply").get_by_label("办理答复").fill("已更换新井盖并加固，现场已恢复通行")
    step(page, "reply").get_by_role("button", name="答复", exact=True).click()
    expect(page.locator('h1 [data-case-status="replied"]')).to_be_visible()
    expect(page.locator("[data-no-actions]")).to_be_visible()

    # The agent verifies on site and calls the resident back: satisfied, so it closes.
    sign_in(page, live_server, f"/console/cases/{number}", "hotline_agent")
    expect(page.locator("[data-phone]")).to_have_text("139****5678")
    step(page, "verify").get_by_label("已解决").check()
    step(page, "verify").get_by_role("button", name="核查", exact=True).click()
    expect(page).to_have_url(re.compile(r"done=verify$"))
    expect(page.locator("[data-phone]")).to_have_text("13912345678")  # the callback needs the number
    step(page, "callback").get_by_label("满意", exact=True).check()
    step(page, "callback").get_by_role("button", name="回访", exact=True).click()
    expect(page.locator('h1 [data-case-status="closed"]')).to_be_visible()
    expect(page.locator('[data-timeline] [data-event="callback"]')).to_be_visible()

    # The resident sees it closed, with the answer, and rates it with the token link.
    page.context.clear_cookies()
    page.goto(f"{live_server}{follow}")
    expect(page.locator('[data-case-status="closed"]')).to_be_visible()
    expect(page.locator("[data-reply]")).to_contain_text("已更换新井盖")
    page.locator("#rate-form").get_by_label("满意", exact=True).check()
    page.get_by_role("button", name="提交评价").click()
    expect(page.locator("[data-rated]")).to_be_visible()
    expect(page.locator('[data-evaluation="satisfied"]')).to_be_visible()

    # The KPIs moved: one closed, on time, satisfied; the works bureau ranks; a hotspot shows.
    sign_in(page, live_server, "/console/cases/kpi", "hotline_agent")
    expect(page.locator('[data-kpi="closed"]')).to_have_text("1")
    expect(page.locator('[data-kpi="on_time_rate"]')).to_have_text("100.0%")
    expect(page.locator('[data-kpi="satisfaction_rate"]')).to_have_text("100.0%")
    expect(page.locator(f'[data-rank="{WORKS}"]')).to_be_visible()
    expect(page.locator("#kpi-chart canvas").first).to_be_attached()
    expect(page.locator("#kpi-map")).to_have_attribute("data-status", "ready")
    expect(page.locator("path[data-hotspot]")).to_have_count(1)
    all_local(seen, live_server)


def test_workflow_diagram_and_agent_pin(page, works_city, live_server):
    from playwright.sync_api import expect

    seen = watch(page)
    page.set_viewport_size({"width": 1400, "height": 1000})
    sign_in(page, live_server, "/console/cases/workflows", "hotline_agent")
    page.locator('tr[data-workflow="hotline"]').get_by_role("link").click()
    diagram = page.locator("#bpmn")
    expect(diagram).to_have_attribute("data-status", "ready")
    expect(diagram.locator('[data-element-id="dispatch"]')).to_be_attached()
    expect(diagram.locator('[data-element-id="callback"]')).to_be_attached()

    # The agent screen: a call registered with a pin on the map.
    page.goto(f"{live_server}/console/cases/agent")
    page.locator("#f-reporter_name").fill("王女士")
    page.locator("#f-description").fill("井盖丢失，路口很危险")
    page.locator("#f-category").select_option("manhole-cover")
    pick = page.locator("#pick-map")
    expect(pick).to_have_attribute("data-status", "ready")
    pick.click(position={"x": 200, "y": 150})
    expect(page.locator("path[data-pin]")).to_have_count(1)
    page.get_by_role("button", name="受理登记").click()
    created = page.locator("[data-created]")
    expect(created).to_be_visible()
    number = created.get_attribute("data-created")
    with works_city.sessions() as s:
        case = cases.case_by_number(s, number)
        assert case.channel == "phone" and case.lon is not None and case.dispatch_department.code == HOTLINE
    all_local(seen, live_server)
