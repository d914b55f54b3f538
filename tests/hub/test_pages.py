"""Data hub console pages: catalog, resource page, upload progress, requests and approvals,
registry search and discrepancies — access, CSRF, htmx fragments and both languages."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from cityos.core import i18n
from cityos.core.access import SYSTEM
from cityos.core.models import AuditRecord
from cityos.hub import discrepancies, loading, pages, registries
from cityos.hub.models import Grant, ShareRequest
from tests.conftest import people_spec, person_row
from tests.core.test_pages import HTML
from tests.core.test_pages import signed_in as sign_in

TEMPLATES = Path(pages.__file__).resolve().parent / "templates"
HUB_PAGES = ["/console/hub", "/console/hub/negative", "/console/hub/requests", "/console/hub/registries",
             "/console/hub/discrepancies"]
CODE = "301001-000001"


@pytest.fixture
def hub(city, app, sessions):
    """The small city with the police's residents resource (conditional sharing), loaded once."""
    r = city.client.post("/api/hub/resources", json=people_spec(), headers=city.headers("police_admin"))
    assert r.status_code == 201, r.text
    r = city.client.post("/api/hub/resources", headers=city.headers("police_admin"), json=people_spec(
        name="机动车登记", abstract="机动车登记信息", share_type="unconditional", share_condition=None, share_basis=None))
    assert r.status_code == 201, r.text
    with sessions() as s:
        loading.rows_write(s, SYSTEM, CODE, [person_row(n) for n in range(1, 6)], mode="replace")
        s.commit()
    return city


def signed_in(client, username: str) -> str:
    """Sign in afresh as `username` (the previous user's session left behind); the CSRF token."""
    client.cookies.clear()
    return sign_in(client, username)


def body(html: str) -> str:
    return html.split("<tbody>")[1].split("</tbody>")[0]


def csv_file(rows) -> bytes:
    buf = io.StringIO()
    names = ["id_number", "name", "gender", "birth_date", "district", "household_size"]
    writer = csv.writer(buf)
    writer.writerow(names)
    for r in rows:
        writer.writerow([r[n] for n in names])
    return buf.getvalue().encode()


def upload(client, csrf: str, data: bytes, **fields) -> str:
    r = client.post(f"/api/hub/resources/{CODE}/uploads", headers={"X-CSRF-Token": csrf},
                    files={"file": ("people.csv", data, "text/csv")}, data=fields)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def finished(client, job_id: str):
    """Poll the progress fragment as htmx does until the load ends."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = client.get(f"/console/hub/uploads/{job_id}", headers={"HX-Request": "true"})
        assert r.status_code == 200 and "<html" not in r.text
        if 'hx-trigger="every 1s"' not in r.text:
            return r
        time.sleep(0.1)
    raise AssertionError("the upload did not finish")


# -- access -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*HUB_PAGES, f"/console/hub/resources/{CODE}"])
def test_hub_pages_send_strangers_to_sign_in(client, city, path):
    r = client.get(path, headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=")


def test_every_page_renders_for_staff_and_none_for_residents(hub):
    signed_in(hub.client, "police_staff")
    for path in [*HUB_PAGES, f"/console/hub/resources/{CODE}"]:
        r = hub.client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["cache-control"] == "no-store"
        assert "<script>" not in r.text and "style=" not in r.text  # the CSP allows neither
    home = hub.client.get("/console").text
    assert 'href="/console/hub"' in home and "数据共享" in home
    signed_in(hub.client, "resident")
    for path in ("/console/hub", f"/console/hub/resources/{CODE}", "/console/hub/requests"):
        assert hub.client.get(path, headers=HTML).status_code == 403


# -- the catalog ------------------------------------------------------------------------------


def test_catalog_searches_filters_pages_and_exports(hub):
    signed_in(hub.client, "env_staff")
    page = hub.client.get("/console/hub")
    assert "资源目录" in page.text and "负面清单" in page.text
    rows = body(page.text)
    assert "户籍人口" in rows and "机动车登记" in rows and "有条件共享" in rows and "市公安局" in rows
    assert f'href="/console/hub/resources/{CODE}"' in rows
    only = body(hub.client.get("/console/hub", params={"share_type": "unconditional"}).text)
    assert "机动车登记" in only and "301001-000001" not in only
    found = hub.client.get("/console/hub", params={"q": "户籍", "department": "220200-gaj"})
    assert "户籍人口" in body(found.text) and "机动车登记" not in body(found.text)
    bad = hub.client.get("/console/hub", params={"update_cycle": "hourly"})
    assert bad.status_code == 200 and 'aria-invalid="true"' in bad.text
    assert "没有符合条件的记录" in body(bad.text)
    link = re.search(r'href="(/api/hub/resources/export\?format=csv[^"]*)"', found.text).group(1)
    assert "q=%E6%88%B7%E7%B1%8D" in link and "department=220200-gaj" in link
    export = hub.client.get(link.replace("&amp;", "&"))  # the console cookie opens the API
    assert export.status_code == 200 and "户籍人口" in export.content.decode("utf-8-sig")
    assert "机动车登记" not in export.content.decode("utf-8-sig")
    xlsx = hub.client.get("/api/hub/resources/export?format=xlsx")
    assert xlsx.status_code == 200 and xlsx.content[:2] == b"PK"


def test_negative_list_tab(hub):
    r = hub.client.post("/api/hub/resources", headers=hub.headers("police_admin"), json=people_spec(
        name="在逃人员", share_type="none", share_condition="涉及侦查秘密", share_basis="《刑事诉讼法》"))
    assert r.status_code == 201
    signed_in(hub.client, "env_staff")
    page = hub.client.get("/console/hub/negative")
    assert "在逃人员" in body(page.text) and "涉及侦查秘密" in page.text and "《刑事诉讼法》" in page.text
    assert 'aria-current="page">负面清单' in page.text


# -- a resource -------------------------------------------------------------------------------


def test_resource_page_for_the_provider(hub):
    signed_in(hub.client, "police_staff")
    page = hub.client.get(f"/console/hub/resources/{CODE}").text
    assert "301001/000001" in page and "户籍人口基本信息" in page and "《吉林市政务信息资源共享管理办法》" in page
    assert "身份证号" in page and "公民身份号码" in page and "敏感" in page and "主键" in page
    assert "版本历史" in page and "v1" in page and "+5" in page
    assert page.count("<meter") >= 3 and "完整性" in page and "有效性" in page and "及时性" in page
    assert 'id="quality-score"' in page
    assert "上传数据" in page and f'action="/api/hub/resources/{CODE}/uploads"' in page
    assert 'src="/static/hub/hub.js"' in page
    assert "申请共享" not in page  # one's own department's resource
    assert "调用情况" in page  # reads per day from the audit log
    assert hub.client.get("/static/hub/hub.js").status_code == 200
    assert hub.client.get("/static/hub/hub.css").status_code == 200


def test_resource_page_for_another_department(hub):
    signed_in(hub.client, "env_staff")
    page = hub.client.get(f"/console/hub/resources/{CODE}").text
    assert "申请共享" in page and 'name="fields" value="id_number"' in page
    assert "上传数据" not in page and "hub.js" not in page and "回滚" not in page
    assert "暂无授权" in page
    assert hub.client.get("/console/hub/resources/999999-000001", headers=HTML).status_code == 404


def test_upload_shows_progress_then_the_new_version(hub):
    csrf = signed_in(hub.client, "police_staff")
    job = upload(hub.client, csrf, csv_file([person_row(n) for n in range(1, 9)]), mode="upsert")
    done = finished(hub.client, job)
    assert 'data-state="done"' in done.text and "已完成" in done.text and "<progress" in done.text
    assert "已生成版本 2" in done.text
    assert done.headers["hx-trigger"] == "hub-loaded"  # the page refreshes its versions
    data = hub.client.get(f"/console/hub/resources/{CODE}/data", headers={"HX-Request": "true"})
    assert "<html" not in data.text and "v2" in data.text and "+3" in data.text
    assert 'hx-trigger="hub-loaded from:body"' in data.text
    assert hub.client.get(f"/console/hub/resources/{CODE}/data", follow_redirects=False).status_code == 303


def test_a_rejected_upload_shows_the_row_error_report(hub):
    csrf = signed_in(hub.client, "police_staff")
    rows = [person_row(n) for n in range(1, 4)]
    rows[1] = {**rows[1], "household_size": 99}
    job = upload(hub.client, csrf, csv_file(rows))
    done = finished(hub.client, job)
    assert 'data-state="failed"' in done.text and "导入失败" in done.text
    report = body(done.text)
    assert "<td class=\"num\">3</td>" in report and "household_size" in report
    assert "/errors.csv" in done.text and "hx-trigger" not in done.text.split("<table")[0].lower()
    signed_in(hub.client, "env_staff")  # another department cannot watch the job
    assert hub.client.get(f"/console/hub/uploads/{job}", headers=HTML).status_code == 403


def test_rollback_and_diff_for_the_provider(hub, sessions):
    with sessions() as s:
        loading.rows_write(s, SYSTEM, CODE, [person_row(n) for n in range(3, 8)], mode="replace")
        s.commit()
    csrf = signed_in(hub.client, "police_admin")
    diff = hub.client.get(f"/console/hub/resources/{CODE}/diff", params={"from": 1, "to": 2})
    assert diff.status_code == 200 and "新增 2 条" in diff.text and "删除 2 条" in diff.text
    assert "居民7" in diff.text and "居民1" in diff.text
    bad = hub.client.get(f"/console/hub/resources/{CODE}/diff", params={"from": 2, "to": 1})
    assert bad.status_code == 200 and 'class="alert error"' in bad.text
    r = hub.client.post(f"/console/hub/resources/{CODE}/rollback", data={"to_version": "1"},
                        follow_redirects=False)
    assert r.status_code == 403  # no CSRF token
    r = hub.client.post(f"/console/hub/resources/{CODE}/rollback",
                        data={"to_version": "1", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("?rolled=3")
    page = hub.client.get(r.headers["location"]).text
    assert "已回滚，当前为版本 3" in page
    signed_in(hub.client, "env_staff")  # the diff shows every item: the provider's alone
    assert hub.client.get(f"/console/hub/resources/{CODE}/diff?from=1&to=2", headers=HTML).status_code == 403


# -- requests and approvals -------------------------------------------------------------------


def test_request_approve_narrower_then_revoke(hub, sessions):
    csrf = signed_in(hub.client, "env_staff")
    form = {"purpose": "核验环评公示人员", "legal_basis": "《环境影响评价法》",
            "fields": ["id_number", "name", "district"]}
    r = hub.client.post(f"/console/hub/resources/{CODE}/requests", data=form, headers=HTML)
    assert r.status_code == 403  # no CSRF token
    r = hub.client.post(f"/console/hub/resources/{CODE}/requests", data={**form, "purpose": "",
                                                                         "csrf_token": csrf})
    assert r.status_code == 422 and 'aria-invalid="true"' in r.text and "核验环评" not in r.text
    r = hub.client.post(f"/console/hub/resources/{CODE}/requests", data={**form, "csrf_token": csrf},
                        follow_redirects=False)
    assert r.status_code == 303 and "box=outgoing" in r.headers["location"]
    out = hub.client.get(r.headers["location"]).text
    assert "已提交申请" in out and "待审核" in body(out) and "核验环评公示人员" in body(out)
    assert "同意" not in body(out)  # the requester does not decide
    with sessions() as s:
        req = s.scalar(select(ShareRequest))
        assert req.due_at is not None
    assert req.due_at.astimezone(pages.stats.CITY_TZ).strftime("%Y-%m-%d") in out

    csrf = signed_in(hub.client, "police_staff")  # staff see the inbox but do not decide
    assert "核验环评公示人员" in body(hub.client.get("/console/hub/requests?box=incoming").text)
    assert "审核申请" not in hub.client.get("/console/hub/requests?box=incoming").text
    csrf = signed_in(hub.client, "police_admin")
    inbox = hub.client.get("/console/hub/requests").text  # admins start with what waits for them
    assert f"审核申请 {req.id}" in inbox and 'name="fields" value="district"' in inbox
    r = hub.client.post(f"/console/hub/requests/{req.id}/decision",
                        data={"csrf_token": csrf, "approve": "0", "reason": ""})
    assert r.status_code == 422 and "不予共享须说明理由" in r.text
    r = hub.client.post(f"/console/hub/requests/{req.id}/decision", follow_redirects=False,
                        data={"csrf_token": csrf, "approve": "1", "fields": ["id_number", "name"]})
    assert r.status_code == 303
    assert "已授权" in body(hub.client.get(r.headers["location"]).text)
    with sessions() as s:
        grant = s.scalar(select(Grant))
        assert grant.fields == ["id_number", "name"]
    page = hub.client.get(f"/console/hub/resources/{CODE}").text
    assert "市环保局" in page and "有效" in page and f"/console/hub/grants/{grant.id}/revoke" in page

    signed_in(hub.client, "env_staff")
    mine = hub.client.get(f"/console/hub/resources/{CODE}").text
    assert "本部门获得的此资源授权" in mine and "有效" in mine and "/revoke" not in mine

    csrf = signed_in(hub.client, "police_admin")
    r = hub.client.post(f"/console/hub/grants/{grant.id}/revoke", data={"csrf_token": csrf, "reason": ""})
    assert r.status_code == 422 and "撤销须说明理由" in r.text
    r = hub.client.post(f"/console/hub/grants/{grant.id}/revoke", follow_redirects=False,
                        data={"csrf_token": csrf, "reason": "项目结束"})
    assert r.status_code == 303
    assert "已撤销" in hub.client.get(r.headers["location"]).text


def test_overdue_requests_are_marked(hub, sessions):
    csrf = signed_in(hub.client, "env_staff")
    hub.client.post(f"/console/hub/resources/{CODE}/requests",
                    data={"csrf_token": csrf, "purpose": "统计", "fields": ["district"]})
    with sessions() as s:
        req = s.scalar(select(ShareRequest))
        req.due_at = req.created_at.replace(year=2020)
        s.commit()
    page = hub.client.get("/console/hub/requests?box=outgoing").text
    assert 'class="overdue"' in page and "超期" in body(page)
    assert "统计" in body(hub.client.get("/console/hub/requests?box=outgoing&overdue=yes").text)
    assert "统计" not in body(hub.client.get("/console/hub/requests?box=outgoing&overdue=no").text)


# -- registry search and discrepancies --------------------------------------------------------


@pytest.fixture
def registry(hub, sessions):
    """The population registry, provided by the police; the other items' authority is env."""
    other = {r: "220200-hbj" for r in ("civil", "education", "health")}
    with sessions() as s:
        res = registries.registry_install(s, SYSTEM, "population", provider="220200-gaj",
                                          authorities=other)
        row = {k: v for k, v in person_row(1).items() if k != "household_size"}
        row["district"] = "220202"
        loading.rows_write(s, SYSTEM, res.code, [row], mode="replace", source="registry")
        s.commit()
        return res.code, row


def test_registry_lookup_for_the_entitled_only(registry, hub, sessions):
    code, person = registry
    number = person["id_number"]
    csrf = signed_in(hub.client, "police_staff")
    page = hub.client.get("/console/hub/registries").text
    assert "公民身份号码" in page and 'method="post" action="/console/hub/registries"' in page
    r = hub.client.post("/console/hub/registries",
                        data={"csrf_token": csrf, "id_number": number, "purpose": ""})
    assert r.status_code == 422 and "须说明查询用途" in r.text and number not in r.text
    r = hub.client.post("/console/hub/registries",
                        data={"csrf_token": csrf, "id_number": number[:17] + "0", "purpose": "户籍核查"})
    assert r.status_code == 422 and 'aria-invalid="true"' in r.text
    r = hub.client.post("/console/hub/registries",
                        data={"csrf_token": csrf, "id_number": number, "purpose": "户籍核查"})
    assert r.status_code == 200 and "居民1" in r.text and "已记入审计日志" in r.text
    assert number not in r.text and number[:4] + "*" * 12 + number[-2:] in r.text  # masked
    assert r.headers["cache-control"] == "no-store"
    with sessions() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "hub.data.read"))
        assert (rec.actor, rec.purpose, rec.object_id) == ("police_staff", "户籍核查", code)
        assert number not in str(rec.detail)
    usage = hub.client.get(f"/console/hub/resources/{code}").text  # reads per day, from the audit
    assert "近 30 天共读取 1 次" in usage and "<svg" in usage and "<title>" in usage

    csrf = signed_in(hub.client, "env_staff")
    page = hub.client.get("/console/hub/registries").text
    assert "您所在部门无权查询人口基础库" in page and "市公安局" in page and 'name="id_number"' not in page
    assert f"/console/hub/resources/{code}#ask" in page
    r = hub.client.post("/console/hub/registries", headers=HTML,
                        data={"csrf_token": csrf, "id_number": number, "purpose": "看看"})
    assert r.status_code == 403 and "居民1" not in r.text
    with sessions() as s:
        denied = s.scalars(select(AuditRecord).where(AuditRecord.action == "hub.data.read",
                                                     AuditRecord.outcome == "denied")).all()
        assert [d.actor for d in denied] == ["env_staff"]


def test_discrepancy_inbox(registry, hub, sessions):
    code, person = registry
    with sessions() as s:
        from cityos.core import auth
        from cityos.core import service as core

        env = auth.user_actor(core.user_by_name(s, "env_staff"))
        found = discrepancies.crosscheck(s, env, code, [{"id_number": person["id_number"],
                                                          "name": "张三", "gender": person["gender"]}])
        s.commit()
        assert [d.field for d in found] == ["name"]
    signed_in(hub.client, "env_staff")
    mine = hub.client.get("/console/hub/discrepancies").text
    assert "张三" in body(mine) and "处理差异" not in mine  # the reporter sees its value, does not resolve
    assert person["id_number"] not in mine
    csrf = signed_in(hub.client, "police_staff")
    inbox = hub.client.get("/console/hub/discrepancies").text
    assert "张三" in body(inbox) and "居民1" in body(inbox) and f"处理差异 {found[0].id}" in inbox
    r = hub.client.post(f"/console/hub/discrepancies/{found[0].id}",
                        data={"csrf_token": csrf, "action": "maybe"})
    assert r.status_code == 422 and "处理方式不合法" in r.text
    r = hub.client.post(f"/console/hub/discrepancies/{found[0].id}", follow_redirects=False,
                        data={"csrf_token": csrf, "action": "confirm", "note": "以户籍为准"})
    assert r.status_code == 303
    done = hub.client.get(r.headers["location"]).text
    assert "已处理差异" in done and "已确认" in body(done) and "以户籍为准" in done


# -- language ---------------------------------------------------------------------------------


def test_english_switch(hub):
    signed_in(hub.client, "police_staff")
    page = hub.client.get("/console/hub?lang=en").text
    assert "Data sharing and exchange" in page and "Negative list" in page and "conditional" in page
    assert ">Data hub<" in page
    res = hub.client.get(f"/console/hub/resources/{CODE}").text  # the cookie keeps English
    assert "Information items" in res and "Completeness" in res and "Upload data" in res
    assert "数据共享交换平台" in hub.client.get("/console/hub?lang=zh-CN").text


def test_every_hub_key_is_in_both_catalogs():
    zh, en = i18n.catalog("zh-CN"), i18n.catalog("en")
    used = set()
    for path in TEMPLATES.rglob("*.html"):
        used |= set(re.findall(r"\bt\('([\w.-]+)'\s*[,)]", path.read_text(encoding="utf-8")))
    for kind, codes in pages.VOCABULARIES.items():  # code lists shown as hub.<kind>.<code>
        used |= {f"hub.{kind}.{c}" for c in codes}
    used |= {f"hub.tab.{t}" for t in ("catalog", "negative", "requests", "registries", "discrepancies")}
    used |= {f"hub.state.{s}" for s in (*pages.sharing.STATES, *discrepancies.STATES)}
    used |= {f"hub.disc.action.{a}" for a in discrepancies.RESOLUTIONS}
    used |= {f"hub.upload.state.{s}" for s in ("queued", "running", "done", "failed")}
    used |= {f"hub.quality.{q}" for q in ("completeness", "validity", "timeliness")}
    missing = sorted(k for k in used if k not in zh or k not in en)
    assert not missing, missing
    assert len(used) > 150
