"""The data hub console in a real Chromium: browse the catalog, open a resource, upload a CSV
and watch the progress bar finish into a new version; ask for access from another bureau, and
approve it as the provider's admin — with no CSP violations along the way."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cityos.core.access import SYSTEM
from cityos.hub import loading, service
from tests.conftest import PASSWORD, people_spec, person_row
from tests.hub.test_pages import csv_file

pytestmark = pytest.mark.browser


@pytest.fixture
def resource(city, app, sessions) -> str:
    """The police's residents resource (conditional sharing) with one version loaded."""
    with sessions() as s:
        code = service.resource_create(s, SYSTEM, people_spec()).code
        loading.rows_write(s, SYSTEM, code, [person_row(n) for n in range(1, 4)], mode="replace")
        s.commit()
    return code


def sign_in(page: Any, base: str, username: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/console/login")
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(r"/console$"))


def test_upload_request_and_approve(page, resource, live_server, tmp_path):
    from playwright.sync_api import expect

    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # The provider's staff: catalog, resource, upload with a progress bar, the new version.
    sign_in(page, live_server, "police_staff")
    page.get_by_role("link", name="数据共享").click()
    expect(page).to_have_url(re.compile(r"/console/hub$"))
    expect(page.locator("table.catalog tbody")).to_contain_text("户籍人口")
    page.get_by_role("link", name="户籍人口").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("户籍人口")
    expect(page.locator("table.versions tbody tr")).to_have_count(1)

    data = tmp_path / "people.csv"
    data.write_bytes(csv_file([person_row(n) for n in range(1, 7)]))
    page.get_by_label("文件").set_input_files(str(data))
    page.get_by_label("导入方式").select_option("upsert")
    page.get_by_role("button", name="上传并导入").click()
    job = page.locator("#upload-job")
    expect(job).to_have_attribute("data-state", "done", timeout=10_000)
    expect(job.locator("progress")).to_have_attribute("value", "100")
    expect(job).to_contain_text("已生成版本 2")
    versions = page.locator("table.versions tbody tr")  # refreshed in place by htmx
    expect(versions).to_have_count(2)
    expect(versions.first).to_contain_text("v2")
    expect(versions.first).to_contain_text("+3")
    page.get_by_role("button", name="退出").click()

    # Another bureau asks for three items.
    sign_in(page, live_server, "env_staff")
    page.goto(f"{live_server}/console/hub/resources/{resource}")
    page.get_by_label("用途").fill("核验环评公示人员身份")
    for item in ("id_number", "name", "district"):
        page.locator(f'input[name="fields"][value="{item}"]').check()
    page.get_by_role("button", name="提交申请").click()
    expect(page).to_have_url(re.compile(r"/console/hub/requests\?box=outgoing"))
    expect(page.locator("table.requests tbody")).to_contain_text("待审核")
    page.get_by_role("button", name="退出").click()

    # The provider's admin approves two of them.
    sign_in(page, live_server, "police_admin")
    page.get_by_role("link", name="数据共享").click()
    page.get_by_role("link", name="共享申请").click()
    expect(page.locator("table.requests tbody")).to_contain_text("核验环评公示人员身份")
    page.locator("summary", has_text="审核申请").click()
    approve = page.locator("form.approve")
    approve.locator('input[name="fields"][value="district"]').uncheck()
    approve.get_by_role("button", name="同意").click()
    expect(page.locator(".alert.ok")).to_contain_text("已处理申请")
    expect(page.locator("table.requests tbody")).to_contain_text("已授权")
    page.get_by_role("link", name="户籍人口").click()
    expect(page.locator("#grants ~ table tbody")).to_contain_text("市环保局")

    assert errors == [], f"browser console errors (CSP violations?): {errors}"
