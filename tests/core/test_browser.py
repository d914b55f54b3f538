"""The console in a real Chromium: sign in, audit log, verify the chain, live search, the
English switch, sign out, and no CSP violations along the way."""

from __future__ import annotations

import re

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

def test_admin_signs_in_reads_the_audit_log_and_verifies_it(page, city, live_server):
    from playwright.sync_api import expect

    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(f"{live_server}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("吉林市")
    page.get_by_role("link", name="登录工作台").click()

    page.get_by_label("用户名").fill("admin")
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(r"/console$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("admin")
    expect(page.locator(".facts")).to_contain_text("平台管理员")

    page.get_by_role("link", name="审计日志").first.click()
    expect(page).to_have_url(re.compile(r"/console/audit$"))
    expect(page.get_by_role("link", name="审计日志")).to_have_attribute("aria-current", "page")
    first_row = page.locator("table.audit tbody tr").first
    expect(first_row).to_contain_text("auth.login")
    expect(first_row).to_contain_text("admin")

    page.get_by_role("button", name="校验审计链").click()  # htmx, with the CSRF header
    expect(page.locator("#verify-result .verify-ok")).to_contain_text("审计链完整")
    expect(page).to_have_url(re.compile(r"/console/audit$"))  # swapped in place, no reload

    page.get_by_role("link", name="部门管理").first.click()  # htmx live search
    page.get_by_label("搜索部门").fill("公安")
    expect(page.locator("#dept-results tbody tr")).to_have_count(1)
    expect(page.locator("#dept-results")).to_contain_text("市公安局")
    expect(page).to_have_url(re.compile(r"/console/departments\?q="))

    page.get_by_role("link", name="English").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Departments")
    page.get_by_role("link", name="Audit log").first.click()
    expect(page.get_by_role("button", name="Verify the chain")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.goto(f"{live_server}/console/audit")
    expect(page).to_have_url(re.compile(r"/console/login\?next=%2Fconsole%2Faudit$"))

    assert errors == [], f"browser console errors (CSP violations?): {errors}"
