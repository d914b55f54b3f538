"""Console and portal pages: sign-in, CSRF, redirects, scoping, language, and CSP-clean HTML."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from cityos.core import audit, i18n, pages_admin, pages_base, service
from cityos.core.access import SYSTEM
from cityos.core.models import AuditRecord, AuthToken, Department, User
from cityos.core.web import LANG_COOKIE, SESSION_COOKIE
from tests.conftest import PASSWORD

HTML = {"Accept": "text/html"}
TEMPLATES = Path(__file__).resolve().parents[2] / "cityos" / "core" / "templates"
CONSOLE_PAGES = ["/console", "/console/departments", "/console/users", "/console/apikeys",
                 "/console/audit"]


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def login(client, username: str, password: str = PASSWORD, next_path: str = "/console"):
    form = client.get("/console/login")
    assert form.status_code == 200
    return client.post("/console/login", follow_redirects=False, data={
        "username": username, "password": password, "next": next_path,
        "csrf_token": hidden(form.text, "csrf_token")})


def signed_in(client, username: str) -> str:
    """Sign in through the form; return the session's CSRF token as the pages carry it."""
    r = login(client, username)
    assert r.status_code == 303, r.text
    return hidden(client.get("/console").text, "csrf_token")


def set_cookies(response) -> str:
    return "\n".join(response.headers.get_list("set-cookie"))


# -- sign-in ----------------------------------------------------------------------------------


def test_login_sets_httponly_cookie_and_redirects(client, city):
    r = login(client, "admin")
    assert r.status_code == 303
    assert r.headers["location"] == "/console"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain http in the test; cookie_secure is off
    page = client.get("/console")
    assert page.status_code == 200
    assert "admin" in page.text
    assert "平台管理员" in page.text  # the role's label
    assert "吉林市" in page.text  # the department
    assert 'aria-current="page"' in page.text


def test_cookies_are_secure_over_https_or_when_configured(client, city, app):
    with TestClient(app, base_url="https://testserver") as https:
        r = login(https, "admin")
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "Secure" in cookie
    app.state.platform.settings.cookie_secure = True  # behind a TLS-terminating proxy
    assert "Secure" in set_cookies(client.get("/console/login"))


def test_wrong_password_shows_error_and_sets_no_cookie(client, city, sessions):
    r = login(client, "admin", "wrong-password")
    assert r.status_code == 400
    assert "用户名或密码错误" in r.text
    assert SESSION_COOKIE not in set_cookies(r)
    assert client.get("/console", follow_redirects=False).status_code == 303
    with sessions() as s:
        rec = s.scalars(select(AuditRecord).where(AuditRecord.action == "auth.login")
                        .order_by(AuditRecord.seq.desc())).first()
        assert rec.outcome == "failure" and rec.detail["channel"] == "web"


def test_locked_account_says_so(client, city, settings):
    for _ in range(settings.lockout_threshold - 1):
        assert login(client, "env_staff", "wrong-password").status_code == 400
    r = login(client, "env_staff", "wrong-password")
    assert r.status_code == 423
    assert "锁定" in r.text
    r = login(client, "env_staff")  # the right password does not open a locked account
    assert r.status_code == 423
    assert SESSION_COOKIE not in set_cookies(r)


def test_login_form_needs_its_double_submit_token(client, city, sessions):
    client.get("/console/login")
    r = client.post("/console/login", follow_redirects=False,
                    data={"username": "admin", "password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 403
    assert SESSION_COOKIE not in set_cookies(r)
    with sessions() as s:  # refused before the password was even checked
        assert s.scalar(select(AuditRecord).where(AuditRecord.action == "auth.login")) is None


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example/x", "/\\evil.example",
                                    "javascript:alert(1)", "//evil.example/%2F.."])
def test_next_cannot_leave_the_site(client, city, target):
    r = login(client, "admin", next_path=target)
    assert r.status_code == 303
    assert r.headers["location"] == "/console"
    r = client.get("/console/login", params={"next": target}, follow_redirects=False)
    assert r.headers["location"] == "/console"  # already signed in: straight on, but not there


def test_next_brings_you_back(client, city):
    r = client.get("/console/users?role=auditor", headers=HTML, follow_redirects=False)
    assert r.status_code == 303
    location = r.headers["location"]
    next_path = parse_qs(urlsplit(location).query)["next"][0]
    assert next_path == "/console/users?role=auditor"
    r = login(client, "admin", next_path=next_path)
    assert r.headers["location"] == "/console/users?role=auditor"


@pytest.mark.parametrize("path", CONSOLE_PAGES)
def test_console_pages_redirect_when_signed_out(client, city, path):
    for headers in ({}, HTML):
        r = client.get(path, headers=headers, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/console/login?next=")
    r = client.get(path, headers={"HX-Request": "true", "HX-Current-URL":
                                  f"http://testserver{path}?page=2"}, follow_redirects=False)
    assert r.headers["HX-Redirect"].startswith("/console/login?next=")


def test_logout_revokes_the_session(client, city, sessions):
    csrf = signed_in(client, "admin")
    raw = client.cookies.get(SESSION_COOKIE)
    assert client.post("/console/logout", follow_redirects=False).status_code == 403  # no token
    r = client.post("/console/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login"
    assert f'{SESSION_COOKIE}=""' in set_cookies(r)
    with sessions() as s:
        assert s.scalar(select(AuthToken.revoked_at).where(AuthToken.kind == "web")) is not None
    client.cookies.set(SESSION_COOKIE, raw)  # the old cookie no longer opens anything
    assert client.get("/console", follow_redirects=False).status_code == 303


# -- CSRF on signed-in forms ------------------------------------------------------------------


def test_form_post_without_csrf_token_is_refused_and_changes_nothing(client, city, sessions):
    csrf = signed_in(client, "admin")
    form = {"code": "220200-jtj", "name": "市交通局", "kind": "bureau", "parent_code": "220200"}
    r = client.post("/console/departments", data=form, headers=HTML, follow_redirects=False)
    assert r.status_code == 403
    r = client.post("/console/departments", data={**form, "csrf_token": "0" * 64},
                    follow_redirects=False)
    assert r.status_code == 403
    with sessions() as s:
        assert s.scalar(select(Department).where(Department.code == "220200-jtj")) is None
        denied = s.scalars(select(AuditRecord).where(AuditRecord.action == "csrf")).all()
        assert len(denied) == 2 and all(d.outcome == "denied" for d in denied)
    r = client.post("/console/departments", data={**form, "csrf_token": csrf},
                    follow_redirects=False)
    assert r.status_code == 303
    assert "created=220200-jtj" in r.headers["location"]
    assert "市交通局" in client.get(r.headers["location"]).text
    with sessions() as s:
        assert s.scalar(select(Department).where(Department.code == "220200-jtj")) is not None


def test_htmx_header_carries_the_csrf_token(client, city):
    csrf = signed_in(client, "auditor")
    page = client.get("/console/audit")
    assert f'hx-headers=\'{{"X-CSRF-Token": "{csrf}"}}\'' in page.text
    r = client.post("/console/audit/verify", headers={"HX-Request": "true", "X-CSRF-Token": csrf})
    assert r.status_code == 200
    assert "审计链完整" in r.text
    assert "<html" not in r.text  # a fragment for htmx to swap in


# -- departments ------------------------------------------------------------------------------


def test_departments_page_search_and_paging(client, city, sessions):
    with sessions() as s:
        for i in range(55):
            service.department_create(s, SYSTEM, code=f"220202001-{i:03d}", name=f"社区{i:03d}",
                                      kind="community", parent_code="220202001")
        s.commit()
    signed_in(client, "street_staff")
    page = client.get("/console/departments")
    assert page.status_code == 200
    assert "共 61 条" in page.text and 'rel="next"' in page.text
    assert "行政区划代码" in page.text and "220202001" in page.text
    assert "新建部门" not in page.text  # staff may not create departments
    second = client.get("/console/departments?page=2")
    assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
    live = client.get("/console/departments?q=社区05", headers={"HX-Request": "true"})
    assert "<html" not in live.text and live.text.count("<tr>") == 1 + 5  # header + 050..054
    assert "昌邑区" not in live.text
    restore = client.get("/console/departments?q=社区05",  # htmx's back button wants a page
                         headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text
    assert restore.headers["cache-control"] == "no-store"


def test_department_form_errors_are_shown_beside_the_form(client, city, sessions):
    csrf = signed_in(client, "admin")
    r = client.post("/console/departments", data={
        "csrf_token": csrf, "code": "x", "name": "", "kind": "district", "parent_code": "220200"})
    assert r.status_code == 422
    assert 'aria-invalid="true"' in r.text and "至少 2 个字符" in r.text
    r = client.post("/console/departments", data={
        "csrf_token": csrf, "code": "220203", "name": "龙潭区", "kind": "district",
        "parent_code": "220200"})
    assert r.status_code == 422  # a district needs its GB/T 2260 code (the service says so)
    assert "GB/T 2260" in r.text and 'value="龙潭区"' in r.text
    r = client.post("/console/departments", data={
        "csrf_token": csrf, "code": "220202", "name": "昌邑区", "kind": "district",
        "parent_code": "220200", "admin_code": "220202"})
    assert r.status_code == 409
    assert "部门编码已存在" in r.text


# -- users ------------------------------------------------------------------------------------


def test_bureau_staff_see_only_their_bureau(client, city):
    signed_in(client, "police_staff")
    page = client.get("/console/users")
    assert page.status_code == 200
    rows = page.text.split("<tbody>")[1].split("</tbody>")[0]
    assert "police_admin" in rows and "police_staff" in rows
    for other in ("env_admin", "env_staff", "district_admin", "street_staff", "auditor"):
        assert f"<code>{other}</code>" not in rows
    assert "新建用户" not in page.text
    searched = client.get("/console/users?q=env_staff").text.split("<tbody>")[1]
    assert "env_staff" not in searched and "没有符合条件的记录" in searched


def test_department_admin_creates_a_user_with_masked_personal_data(client, city, sessions):
    csrf = signed_in(client, "police_admin")
    form = {"csrf_token": csrf, "username": "officer1", "display_name": "王警官",
            "password": "long-enough-1", "department_code": "220200-gaj",
            "role": "department_staff", "id_number": "11010519491231002X",
            "phone": "13912345678"}
    r = client.post("/console/users", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get(r.headers["location"])
    assert "王警官" in page.text
    assert "11010519491231002X" not in page.text and "13912345678" not in page.text
    assert "139****5678" in page.text
    r = client.post("/console/users", data=form)  # again: the name is taken
    assert r.status_code == 409 and "用户名已存在" in r.text
    assert "long-enough-1" not in r.text  # a password is never echoed back
    r = client.post("/console/users", data={**form, "username": "officer2",
                                            "id_number": "110105194912310021"})
    assert r.status_code == 422 and "校验码" in r.text
    r = client.post("/console/users", data={**form, "username": "officer3",
                                            "department_code": "220200-hbj", "id_number": ""})
    assert r.status_code == 403  # another bureau: refused by the access decision point
    with sessions() as s:
        assert s.scalar(select(User).where(User.username.in_(["officer2", "officer3"]))) is None


def test_deactivate_and_unlock(client, city, sessions):
    with sessions() as s:
        s.execute(update(User).where(User.username == "env_staff")
                  .values(locked_until=service.utcnow().replace(year=2100)))
        s.commit()
    csrf = signed_in(client, "env_admin")
    page = client.get("/console/users")
    assert "已锁定" in page.text and "解锁" in page.text
    r = client.post("/console/users/env_staff/status", data={"csrf_token": csrf, "op": "unlock"},
                    follow_redirects=False)
    assert r.status_code == 303
    r = client.post("/console/users/env_staff/status",
                    data={"csrf_token": csrf, "op": "deactivate"}, follow_redirects=False)
    assert r.status_code == 303
    assert "已停用" in client.get(r.headers["location"]).text
    with sessions() as s:
        user = s.scalar(select(User).where(User.username == "env_staff"))
        assert user.locked_until is None and user.is_active is False
    r = client.post("/console/users/police_staff/status",
                    data={"csrf_token": csrf, "op": "deactivate"}, follow_redirects=False)
    assert r.status_code == 403  # not this admin's bureau


# -- API keys ---------------------------------------------------------------------------------


def test_api_key_is_shown_once_and_can_be_revoked(client, city):
    csrf = signed_in(client, "env_admin")
    r = client.post("/console/apikeys", data={"csrf_token": csrf, "name": "监测站",
                                              "department_code": "220200-hbj",
                                              "scopes": ["department.read", "user.read"]})
    assert r.status_code == 201
    assert r.headers["cache-control"] == "no-store"
    raw = re.search(r"cos_[0-9a-f]{12}_[\w-]+", r.text).group(0)
    assert "只显示这一次" in r.text
    assert client.get("/api/departments", headers={"X-API-Key": raw}).status_code == 200
    listing = client.get("/console/apikeys")
    assert raw not in listing.text and "监测站" in listing.text
    prefix = raw.split("_")[1]
    r = client.post(f"/console/apikeys/{prefix}/revoke", data={"csrf_token": csrf},
                    follow_redirects=False)
    assert r.status_code == 303
    assert "已吊销" in client.get(r.headers["location"]).text
    assert client.get("/api/departments", headers={"X-API-Key": raw}).status_code == 401
    r = client.post("/console/apikeys", data={"csrf_token": csrf, "name": "",
                                              "department_code": "220200-hbj"})
    assert r.status_code == 422 and 'aria-invalid="true"' in r.text


# -- audit log --------------------------------------------------------------------------------


def test_audit_page_filters_and_verifies(client, city, sessions):
    login(client, "env_staff", "wrong-password")
    csrf = signed_in(client, "auditor")
    page = client.get("/console/audit")
    assert page.status_code == 200
    assert "auth.login" in page.text and "校验审计链" in page.text
    failed = client.get("/console/audit", params={"outcome": "failure", "actor": "env_staff"})
    assert "env_staff" in failed.text and "失败" in failed.text
    assert "auditor" not in failed.text.split("<tbody>")[1]
    today = service.utcnow().astimezone(pages_base.CITY_TZ).date().isoformat()  # the city's day, not UTC's
    assert "auth.login" in client.get("/console/audit", params={"since": "2020-01-01",
                                                               "until": today}).text
    bad = client.get("/console/audit", params={"since": "yesterday"})
    assert bad.status_code == 200 and "YYYY-MM-DD" in bad.text
    r = client.post("/console/audit/verify", data={"csrf_token": csrf})
    assert "审计链完整" in r.text
    with sessions() as s:  # tamper with a record: the check names it
        s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(actor="mallory"))
        s.commit()
    r = client.post("/console/audit/verify", data={"csrf_token": csrf},
                    headers={"HX-Request": "true"})
    assert "审计链在第 3 条记录处断裂" in r.text and "verify-bad" in r.text
    r = client.get("/console/audit/verify?lang=en", follow_redirects=False)  # the switch's link
    assert r.headers["location"] == "/console/audit?lang=en"


def test_staff_may_not_browse_the_audit_log(client, city):
    signed_in(client, "police_staff")
    assert "/console/audit" not in client.get("/console").text  # not in the navigation
    assert client.get("/console/audit", headers=HTML).status_code == 403


# -- language ---------------------------------------------------------------------------------


def test_english_switch(client, city):
    r = client.get("/?lang=en")
    assert "Jilin City" in r.text and 'lang="en"' in r.text
    assert f"{LANG_COOKIE}=en" in set_cookies(r)
    assert "Sign in to the console" in client.get("/console/login").text  # the cookie holds it
    signed_in(client, "admin")
    page = client.get("/console")
    assert "Platform admin" in page.text and "Plan progress" in page.text
    page = client.get("/console?lang=zh-CN")
    assert "平台管理员" in page.text and "规划进展" in page.text
    assert 'href="/console?lang=en"' in page.text


def test_catalogs_have_identical_keys():
    zh, en = i18n.catalog("zh-CN"), i18n.catalog("en")
    assert set(zh) == set(en)
    assert all(zh.values()) and all(en.values())
    for key in zh:  # the same placeholders in both languages
        assert set(re.findall(r"{(\w+)}", zh[key])) == set(re.findall(r"{(\w+)}", en[key])), key


def test_every_key_the_pages_use_is_in_the_catalog():
    zh = i18n.catalog("zh-CN")
    used = set()
    for path in TEMPLATES.rglob("*.html"):
        used |= set(re.findall(r"\bt\('([\w.-]+)'\s*[,)]", path.read_text(encoding="utf-8")))
    for path in TEMPLATES.parent.glob("pages*.py"):
        used |= set(re.findall(r'"(login\.err\.\w+)"', path.read_text(encoding="utf-8")))
    # keys built from data: sections, engines, outcomes, user actions, languages
    for section in (*pages_base.SECTIONS, *pages_base.ENGINES):
        used |= {f"nav.{section.key}", f"dash.{section.key}"}
    used |= {f"portal.{k}.{part}" for k in ("opendata", "hotline", "maps")
             for part in ("title", "text")}
    used |= {f"audit.outcome.{o}" for o in audit.OUTCOMES}
    used |= {f"user.op.{op}" for op in pages_admin.USER_OPS}
    used |= {f"lang.{code}" for code in i18n.LANGUAGES}
    assert len(used) > 100
    assert not used - set(zh)


# -- the strict CSP: no inline script or style ------------------------------------------------


def test_no_page_has_inline_script_or_style(client, city):
    pages = {p: client.get(p) for p in ("/", "/console/login", "/?lang=en")}
    pages["404"] = client.get("/nowhere", headers=HTML)
    signed_in(client, "admin")
    pages |= {p: client.get(p) for p in CONSOLE_PAGES}
    pages["verify"] = client.post("/console/audit/verify", data={
        "csrf_token": hidden(pages["/console"].text, "csrf_token")})
    for name, r in pages.items():
        html = r.text
        assert "<html" in html, name
        for match in re.finditer(r"<script\b([^>]*)>(.*?)</script>", html, re.S):
            assert 'src="/static/' in match.group(1), name
            assert match.group(2).strip() == "", f"inline script on {name}"
        assert not re.search(r"<style\b", html, re.I), name
        assert not re.search(r"\sstyle\s*=", html, re.I), name
        assert not re.search(r"\son[a-z]+\s*=", html, re.I), name
        assert "http://" not in html.replace("http://testserver", "") and "https://" not in html
        assert '"includeIndicatorStyles": false' in html, name


def test_vendored_assets_are_served(client):
    for path in ("/static/vendor/htmx/htmx.min.js", "/static/cityos.js", "/static/cityos.css",
                 "/static/vendor/swagger-ui/swagger-ui-bundle.js",
                 "/static/vendor/swagger-ui/swagger-ui.css"):
        assert client.get(path).status_code == 200, f"{path}: run `make` (npm ci + assets)"
    versions = json.loads(client.get("/static/vendor/versions.json").text)
    assert versions["htmx.org"].startswith("2.")
