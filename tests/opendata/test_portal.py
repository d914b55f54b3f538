"""The open-data portal at /data: search by partial Chinese words, facets, sorting and paging,
a dataset's page (metadata, preview, chart, map, downloads, API docs), applications for
conditional data, English, and escaping of everything a provider or a row can carry."""

from __future__ import annotations

import datetime as dt
import re
from html import unescape
from typing import Any

import pytest

from cityos.core import i18n
from cityos.hub import loading
from cityos.opendata import applications, pages, search, service
from tests.core.test_pages import hidden, login
from tests.opendata.conftest import actor_of, air_row
from tests.opendata.test_downloads import publish_residents

AIR = "/data/dataset/air-quality-daily"


def names(html: str) -> list[str]:
    """The datasets a result page lists, in order."""
    return re.findall(r'<h3><a href="/data/dataset/([\w-]+)">', html)


def facet_links(html: str, field: str) -> dict[str, str]:
    """{label: href} of one facet's links."""
    found = re.findall(rf'<a href="([^"]+)" data-facet="{field}"[^>]*>\s*<span class="facet-label">([^<]*)</span>',
                       html)
    return {label: href.replace("&amp;", "&") for href, label in found}


@pytest.fixture
def residents(session, open_city) -> tuple[Any, str]:
    return publish_residents(session, open_city.people.code)


# -- search ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", ["空气", "质量日", "空气质量日报", "PM2.5", "环保", "air"])
def test_partial_words_find_the_dataset(client, open_city, q):
    r = client.get("/data", params={"q": q})
    assert r.status_code == 200
    assert names(r.text) == ["air-quality-daily"], q
    assert "共找到 1 个数据集" in r.text


def test_unknown_words_show_the_empty_state(client, open_city):
    r = client.get("/data", params={"q": "火星基地"})
    assert r.status_code == 200 and names(r.text) == []
    assert "没有找到数据集" in r.text and "火星基地" in r.text
    assert "共找到 0 个数据集" in r.text


def test_facets_count_and_filter(client, open_city, residents):
    page = client.get("/data").text
    assert names(page) == ["residents", "air-quality-daily"]  # newest first
    orgs = facet_links(page, "organization")
    assert set(orgs) == {"市环保局", "市公安局"}
    narrowed = client.get(orgs["市公安局"]).text
    assert names(narrowed) == ["residents"]
    # the chosen value is marked, and its link takes the filter off again
    again = facet_links(narrowed, "organization")["市公安局"]
    assert names(client.get(again).text) == ["residents", "air-quality-daily"]

    levels = facet_links(page, "open_level")
    assert set(levels) == {"无条件开放", "有条件开放"}
    assert names(client.get(levels["有条件开放"]).text) == ["residents"]
    topics = facet_links(page, "groups")
    assert names(client.get(topics["生态环境"]).text) == ["air-quality-daily"]
    tags = facet_links(page, "tags")
    assert names(client.get(tags["PM2.5"]).text) == ["air-quality-daily"]
    assert names(client.get(facet_links(page, "res_format")["GeoJSON"]).text) == ["air-quality-daily"]
    assert names(client.get(facet_links(page, "update_cycle")["每日"]).text) == ["residents", "air-quality-daily"]
    # filters combine with each other and with the words
    assert names(client.get("/data", params=[("q", "空气"), ("open_level", "conditional")]).text) == []
    assert names(client.get("/data", params=[("organization", "220200-hbj"), ("tags", "PM2.5")]).text) == [
        "air-quality-daily"]
    assert re.search(r'<span class="count">2</span>', page)  # both are daily


def test_sort_and_pages(client, open_city, residents, monkeypatch):
    by_name = client.get("/data", params={"sort": "name"}).text
    assert names(by_name) == ["air-quality-daily", "residents"]
    assert 'aria-current="true">名称' in by_name
    assert names(client.get("/data", params={"sort": "newest"}).text) == ["residents", "air-quality-daily"]
    assert client.get("/data", params={"sort": "views"}).status_code == 200
    assert client.get("/data", params={"sort": "nonsense", "page": "x"}).status_code == 200

    monkeypatch.setattr(pages, "PAGE", 1)
    first = client.get("/data", params=[("sort", "name"), ("update_cycle", "daily")]).text
    assert names(first) == ["air-quality-daily"] and "共 2 条，第 1/2 页" in first
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert nxt and "update_cycle=daily" in nxt.group(1)  # the filters go along
    second = client.get(nxt.group(1).replace("&amp;", "&")).text
    assert names(second) == ["residents"] and 'rel="next"' not in second


def test_topics_and_departments_pages(client, open_city, residents):
    topics = client.get("/data/topics").text
    assert "生态环境" in topics and "人口" in topics and 'href="/data?groups=environment"' in topics
    assert topics.count("1 个数据集") == 2
    orgs = client.get("/data/organizations").text
    assert "市环保局" in orgs and "市公安局" in orgs and 'href="/data?organization=220200-hbj"' in orgs


def test_the_portal_links_to_open_data(client, open_city):
    home = client.get("/").text
    assert 'href="/data"' in home
    assert client.get("/data/licence").status_code == 200


# -- a dataset's page -----------------------------------------------------------------------------


def test_dataset_page_shows_metadata_preview_chart_and_map(client, open_city):
    r = client.get(AIR)
    assert r.status_code == 200
    html = r.text
    for text in ("环境空气质量日报", "市环保局", "生态环境", "每日", "无条件开放", "吉林市", "2026-11-01",
                 "知识共享署名 4.0", "https://creativecommons.org/licenses/by/4.0/", "记录数"):
        assert text in html, text
    preview = html.split('class="table preview"', 1)[1].split("</table>", 1)[0]
    for title in ("站点编码", "日期", "空气质量指数", "PM2.5浓度"):
        assert title in preview
    assert preview.count("<tr>") == 21  # header + 20 rows
    assert air_row(0)["site_name"] in preview and air_row(19)["site_name"] in preview
    # chart: bars of a number by the first text column; map: points from the GeoJSON feed
    assert 'id="chart"' in html and 'data-src="/data/dataset/air-quality-daily/chart.json"' in html
    assert 'id="map"' in html and "points.geojson" in html
    assert "/static/vendor/echarts/echarts.min.js" in html and "/static/vendor/leaflet/leaflet.js" in html
    for fmt in ("csv", "xlsx", "json", "geojson", "parquet"):
        assert f'href="/data/dataset/air-quality-daily/download.{fmt}"' in html


def test_chart_feed(client, open_city):
    body = client.get(f"{AIR}/chart.json").json()
    assert body["x"]["id"] == "site_code" and body["y"]["id"] == "aqi" and body["agg"] == "avg"
    assert len(body["categories"]) == 8 == body["total_categories"]
    assert body["values"] == sorted(body["values"], reverse=True)
    by_district = client.get(f"{AIR}/chart.json", params={"x": "district", "y": "_count"}).json()
    assert dict(zip(by_district["categories"], by_district["values"], strict=True)) == {
        d: 20 for d in ("昌邑区", "龙潭区", "船营区", "丰满区")}
    by_day = client.get(f"{AIR}/chart.json", params={"x": "day", "y": "pm25", "agg": "max"}).json()
    assert by_day["categories"][0] == "2026-11-01" and by_day["agg"] == "max"
    assert by_day["categories"] == sorted(by_day["categories"])
    # unknown choices fall back to the defaults
    assert client.get(f"{AIR}/chart.json", params={"x": "nope", "y": "lon;drop"}).json()["y"]["id"] == "aqi"
    assert client.get("/data/dataset/nowhere/chart.json").status_code == 404


def test_points_feed_is_capped(client, open_city):
    body = client.get(f"{AIR}/points.geojson", params={"limit": 5}).json()
    assert body["type"] == "FeatureCollection" and len(body["features"]) == 5
    assert len(client.get(f"{AIR}/points.geojson").json()["features"]) == 80


def test_api_tab_documents_this_dataset(client, open_city):
    html = client.get(f"{AIR}/api").text
    for text in ("package_show", "datastore_search", "datastore_search_sql", "curl -G", "from ckanapi import RemoteCKAN",
                 "resource_id=air-quality-daily", "ckan.action.datastore_search(resource_id=&#39;air-quality-daily&#39;",
                 "site_code", "站点编码", "空气质量指数", "numeric", "FROM &#34;air-quality-daily&#34;"):
        assert text in html, text
    assert "filters=" in html and "S00" in html  # a real value from the first row


def test_the_documented_calls_answer(client, open_city):
    page = client.get(f"{AIR}/api").text
    urls = [unescape(u) for u in re.findall(r'<a href="([^"]+)" class="apiurl">', page)]
    assert [u.split("?")[0].rsplit("/", 1)[1] for u in urls] == [
        "package_show", "datastore_search", "datastore_search", "datastore_search_sql"]
    for url in urls:
        assert url.startswith("http://testserver/api/3/action/")
        r = client.get(url.removeprefix("http://testserver"))
        assert r.status_code == 200 and r.json()["success"], url
    filtered = client.get(urls[2].removeprefix("http://testserver")).json()["result"]
    assert filtered["total"] == 10 and {rec["site_code"] for rec in filtered["records"]} == {"S00"}


def test_missing_and_unpublished_datasets_are_404_in_both_languages(client, open_city, session):
    r = client.get("/data/dataset/nowhere")
    assert r.status_code == 404 and "数据集不存在" in r.text
    r = client.get("/data/dataset/nowhere?lang=en")
    assert r.status_code == 404 and "Dataset not found" in r.text
    service.dataset_withdraw(session, actor_of(session, "env_admin"), "air-quality-daily", "数据有误，暂停开放")
    session.commit()
    assert client.get(AIR).status_code == 404
    assert client.get(f"{AIR}/download.csv").status_code == 404
    assert names(client.get("/data").text) == []


def test_conditional_dataset_shows_metadata_and_the_way_to_apply(client, residents):
    ds, key = residents
    html = client.get("/data/dataset/residents").text
    assert "户籍人口分布" in html and "有条件开放" in html
    assert 'class="table preview"' not in html and 'id="chart"' not in html
    assert 'href="/data/dataset/residents/apply"' in html and 'name="key"' in html
    assert 'formaction="/data/dataset/residents/download.xlsx"' in html
    wrong = client.get("/data/dataset/residents", params={"key": "odk_aaaa_bbbb"}).text
    assert "访问密钥无效" in wrong
    with_key = client.get("/data/dataset/residents", params={"key": key}).text
    assert 'class="table preview"' in with_key and "所属区县" in with_key
    assert f"download.csv?key={key}" in with_key  # the key goes along to the downloads
    # the provider's own staff read it signed in, without a key
    login(client, "police_staff", next_path="/data")
    assert 'class="table preview"' in client.get("/data/dataset/residents").text


# -- applications ---------------------------------------------------------------------------------


def test_apply_needs_sign_in_and_a_purpose(client, residents, sessions):
    ds, _ = residents
    r = client.get("/data/dataset/residents/apply", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?next=%2Fdata%2Fdataset%2Fresidents%2Fapply"
    assert client.get("/data/applications", follow_redirects=False).status_code == 303

    assert login(client, "resident", next_path="/data/dataset/residents/apply").headers["location"] == \
        "/data/dataset/residents/apply"
    form = client.get("/data/dataset/residents/apply")
    assert form.status_code == 200 and "申请使用数据" in form.text
    token = hidden(form.text, "csrf_token")
    fields = {"applicant": "吉林市某某数据科技有限公司", "credit_code": "", "contact": "data@example.cn",
              "purpose": "看看"}
    bad = client.post("/data/dataset/residents/apply", data={**fields, "csrf_token": token})
    assert bad.status_code == 422 and "至少10个字" in bad.text and "吉林市某某数据科技有限公司" in bad.text
    no_csrf = client.post("/data/dataset/residents/apply", data={**fields, "purpose": "研究人口结构用于养老设施规划"})
    assert no_csrf.status_code == 403

    ok = client.post("/data/dataset/residents/apply", follow_redirects=False,
                     data={**fields, "purpose": "研究人口结构，用于养老服务设施规划", "csrf_token": token})
    assert ok.status_code == 303 and ok.headers["location"].startswith("/data/applications?created=")
    mine = client.get(ok.headers["location"]).text
    assert "申请已提交" in mine and "户籍人口分布" in mine and "待审核" in mine

    app_id = int(ok.headers["location"].rsplit("=", 1)[1])
    with sessions() as s:
        _, key = applications.application_decide(s, actor_of(s, "police_admin"), app_id, approve=True)
        s.commit()
    assert key
    mine = client.get("/data/applications").text
    assert "已批准" in mine and "访问密钥已发送" in mine
    assert key not in mine and key.split("_")[1] not in mine  # the key is never shown here


def test_open_datasets_take_no_applications(client, open_city):
    login(client, "resident", next_path="/data")
    html = client.get(f"{AIR}/apply").text
    assert "无需申请" in html and "<form class=\"card applyform\"" not in html


# -- language and safety --------------------------------------------------------------------------


def test_every_key_the_portal_uses_is_in_both_catalogs():
    used = set()
    for path in pages.TEMPLATES.joinpath("portal").rglob("*.html"):
        used |= set(re.findall(r"\bt\('([\w.-]+[\w-])'\s*[,)]", path.read_text(encoding="utf-8")))
    used |= {f"data.{kind}.{code}" for kind, codes in (
        ("facet", pages.FACETS), ("sort", pages.SORTS), ("level", service.OPEN_LEVELS),
        ("chart.agg", pages.AGGS), ("applications.state", ("pending", "approved", "refused"))) for code in codes}
    assert len(used) > 100
    for lang in ("zh-CN", "en"):
        assert not used - set(i18n.catalog(lang)), lang


def test_english_chrome(client, open_city):
    html = client.get("/data?lang=en").text
    assert "Open data" in html and "1 datasets found" in html and 'lang="en"' in html
    page = client.get(AIR).text  # the cookie keeps English
    assert "About this dataset" in page and "Daily air quality" in page
    assert "关于" not in page and "基本信息" not in page
    assert "Daily" in page  # the update cycle in English


PAGES = ["/data", "/data?q=空气", "/data?tags=<script>alert(1)</script>", AIR, f"{AIR}/api", "/data/topics",
         "/data/organizations", "/data/licence", "/data/dataset/nowhere", "/data?lang=en", f"{AIR}?lang=en"]


def test_no_inline_script_nothing_from_outside(client, open_city):
    for path in PAGES:
        html = client.get(path).text
        assert "<html" in html, path
        for match in re.finditer(r"<script\b([^>]*)>(.*?)</script>", html, re.S):
            assert 'src="/static/' in match.group(1), path
            assert match.group(2).strip() == "", path
        assert not re.search(r"<style\b|\son[a-z]+\s*=", html, re.I), path
        # links to a licence are fine; nothing the page loads comes from elsewhere
        assert not re.search(r'(src|srcset)="(https?:)?//', html), path
        assert not re.search(r'<link[^>]+href="(https?:)?//', html), path


def test_everything_is_escaped(client, open_city, session):
    evil = "<script>alert('x')</script>"
    staff = actor_of(session, "env_staff")
    ds = service.dataset_update(session, staff, "air-quality-daily", {
        "title": f"空气{evil}", "description": f"描述{evil}", "tags": [f"标签{evil}", "PM2.5"],
        "spatial": f"吉林市{evil}"})
    search.index_dataset(session, ds)
    row = {**air_row(80, dt.date(2026, 12, 31)), "site_name": f"<img src=x onerror=alert(1)>{evil}",
           "district": f"'\"><svg onload=alert(2)>{evil}"}
    loading.rows_write(session, staff, open_city.air.code, [row])  # the copy follows its source
    session.commit()
    tag = f"标签{evil}"
    for path in [*PAGES, f"/data?tags={tag}", f"{AIR}?x=district&y=_count", f"{AIR}?x=site_name&y=_count"]:
        html = client.get(path).text
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html and "<svg onload" not in html, path
    page = client.get(AIR, params={"x": "district", "y": "_count", "lang": "zh-CN"}).text
    assert "空气&lt;script&gt;" in page and "描述&lt;script&gt;" in page
    assert "\\u003csvg onload" in page  # inside the chart's data attribute, JSON-escaped
    listing = client.get("/data").text
    assert "空气&lt;script&gt;" in listing and "标签&lt;script&gt;" in listing
    # the downloads carry the data as it is: escaping is the reader's business there
    assert client.get(f"{AIR}/download.json").json()["records"][-1]["site_name"] == row["site_name"]
