"""The sensing console's pages on both databases: the registry (counts, filters, paging, the
map's config), a device's page, the rules and their editor, the alerts; sign-in first, each
person sees only their departments' devices, zh-CN first and English on request, no inline
script and nothing from the internet."""

from __future__ import annotations

import html
import importlib
import json
import re

import pytest
import shapely

from cityos.app import create_app
from cityos.core import i18n
from cityos.core.access import SYSTEM
from cityos.maps import service as maps
from cityos.sensing import pages
from cityos.sensing.models import Alert, Rule
from tests.core.test_pages import signed_in
from tests.sensing.conftest import make_thing

HTML = {"Accept": "text/html"}
# The routers the console pages talk to; included here until the app wires them itself.
SENSING_ROUTERS = ("cityos.sensing.pages", "cityos.sensing.api", "cityos.sensing.api_rules",
                   "cityos.sensing.api_ingest")


def included(router):
    """Every router included in `router`, however deep."""
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield inner
            yield from included(inner)


def wire(app):
    """Add sensing's pages, APIs and templates to an app that does not have them yet."""
    have = set(map(id, included(app.router)))
    for name in SENSING_ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if id(module.router) not in have:
            app.include_router(module.router)
    loader = app.state.platform.templates.env.loader
    if str(pages.TEMPLATES) not in loader.searchpath:
        loader.searchpath.append(str(pages.TEMPLATES))
    return app


@pytest.fixture
def app(settings, engine):
    return wire(create_app(settings, engine=engine))


def config_of(page: str, attr: str = "data-config") -> dict:
    match = re.search(rf"{attr}='([^']*)'", page)
    assert match, f"no {attr} on the page"
    return json.loads(html.unescape(match.group(1)))


def clean(page: str) -> None:
    """No inline script or style (the CSP forbids them) and nothing from the internet."""
    for tag in re.findall(r"<script\b[^>]*>", page):
        assert "src=" in tag, tag
    assert all(not body.strip() for body in re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S)), "inline"
    assert not re.search(r"""(src|href)=["']https?://""", page), "a link to the internet"
    assert not re.search(r"<style|\sstyle=", page), "inline style"


def test_pages_need_sign_in(client):
    for path in ("/console/sensing", "/console/sensing/things/1", "/console/sensing/rules",
                 "/console/sensing/alerts"):
        r = client.get(path, headers=HTML, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/console/login?next=")


def test_registry_counts_filters_and_map(client, city, session, writer):
    air, (ds,) = make_thing(session, name="江南空气站", kind="air")
    make_thing(session, name="公安摄像头", department="220200-gaj", kind="camera")
    water, _ = make_thing(session, name="松花江水质站", kind="water", lon=126.56, lat=43.85)
    now = pages.ingest.now_ms()
    writer.write_sync([(ds.id, now - 1000, None, None, 35.5, None, None, None, None, None, None)])
    signed_in(client, "env_staff")

    page = client.get("/console/sensing")
    assert page.status_code == 200
    text = page.text
    clean(text)
    assert "江南空气站" in text and "松花江水质站" in text
    assert "公安摄像头" not in text  # another department's device
    assert 'data-count="all">2<' in text
    assert 'data-count="online">1<' in text and 'data-count="offline">1<' in text
    assert "35.5" in text  # the newest reading
    assert f'href="/console/sensing/things/{air.id}"' in text
    config = config_of(text)
    assert config["things_url"] == "/api/sensing/things"
    assert config["text"]["status"]["online"] == "在线"

    online = client.get("/console/sensing?status=online&q=江南")
    assert "江南空气站" in online.text and "松花江水质站" not in online.text
    assert config_of(online.text)["things_url"] == "/api/sensing/things?status=online&q=%E6%B1%9F%E5%8D%97"
    kind = client.get("/console/sensing?kind=water")
    assert "松花江水质站" in kind.text and "江南空气站" not in kind.text
    assert '<option value="water" selected>' in kind.text
    # Odd filters are ignored rather than refused.
    assert client.get("/console/sensing?status=nonsense&page=x").status_code == 200

    # The map's devices come from the JSON API with the page's filters.
    body = client.get(config["things_url"]).json()
    assert {i["name"] for i in body["items"]} == {"江南空气站", "松花江水质站"}
    assert all(i["lon"] and i["lat"] for i in body["items"])

    assert 'id="f-department"' not in text  # one department only: no such filter

    client.cookies.clear()
    signed_in(client, "admin")
    every = client.get("/console/sensing").text
    assert "公安摄像头" in every and 'data-count="all">3<' in every
    police = client.get("/console/sensing?department=220200-gaj").text
    assert "公安摄像头" in police and "江南空气站" not in police
    assert '<option value="220200-gaj" selected>市公安局</option>' in police
    assert config_of(police)["things_url"] == "/api/sensing/things?department=220200-gaj"

    en = client.get("/console/sensing?lang=en")
    assert "Online" in en.text and "Devices" in en.text


def test_registry_pages_and_base_map(client, city, session):
    for i in range(pages.PAGE_SIZE + 3):
        make_thing(session, name=f"设备{i:03d}")
    # The city's own layers under the devices: the district reference layer and the base map.
    for code, keywords in (("districts", ["行政区划"]), ("rivers", ["水系", "底图"]), ("works", ["施工"])):
        maps.layer_create(session, SYSTEM, {
            "code": code, "title": f"图层{code}", "department": "220200-hbj", "geometry_type": "polygon",
            "attributes": [{"name": "code", "type": "string"}], "keywords": keywords, "public": True,
            "open_type": "open"})
        maps.features_write(session, SYSTEM, code, [("f1", shapely.box(126.4, 43.8, 126.6, 43.9), {"code": "1"})])
    maps.reference_set(session, SYSTEM, "district", "districts", "code")
    session.commit()
    signed_in(client, "env_admin")
    first = client.get("/console/sensing").text
    config = config_of(first)
    assert [(la["code"], la["role"], la["look"]) for la in config["base"]] == [
        ("districts", "district", None), ("rivers", None, "water")]
    assert config["view"] == pytest.approx([126.4, 43.8, 126.6, 43.9])
    assert "设备000" in first and f"设备{pages.PAGE_SIZE:03d}" not in first
    assert 'rel="next"' in first
    second = client.get("/console/sensing?page=2").text
    assert f"设备{pages.PAGE_SIZE:03d}" in second and "设备000" not in second


def test_device_page(client, city, session, writer):
    thing, (ds, other) = make_thing(session, streams=2, name="水压监测点",
                                    properties={"型号": "PX-1", "安装": {"年": 2026}})
    now = pages.ingest.now_ms()
    writer.write_sync([(ds.id, now - 60_000 * i, None, None, 0.3 + i / 100, None, None, None, None, None, None)
                       for i in range(5)])
    signed_in(client, "env_staff")
    r = client.get(f"/console/sensing/things/{thing.id}")
    assert r.status_code == 200
    clean(r.text)
    assert "水压监测点" in r.text and "PX-1" in r.text and "126.550000, 43.840000" in r.text
    assert f'data-stream="{ds.id}"' in r.text and f'data-stream="{other.id}"' in r.text
    assert 'src="/static/sensing/thing.js"' in r.text
    charts = [json.loads(html.unescape(c)) for c in re.findall(r"data-chart\s+data-config='([^']*)'", r.text)]
    assert {c["id"] for c in charts} == {ds.id, other.id}
    first = next(c for c in charts if c["id"] == ds.id)
    assert first["end"] - first["start"] == 4 * 60_000
    assert config_of(r.text)["thing"] == thing.id
    # Staff may write their department's devices: the credentials button is there.
    assert f'data-credentials="/api/sensing/things/{thing.id}/credentials"' in r.text
    # What the chart asks for answers.
    series = client.get(f"/api/sensing/datastreams/{ds.id}/series", params={
        "start": first["start"], "end": first["end"] + 1, "grain": "auto"}).json()
    assert series["grain"] == "raw" and len(series["points"]) == 5
    latest = client.get(f"/api/sensing/latest?thing={thing.id}").json()
    assert {i["datastream_id"] for i in latest["items"]} == {ds.id, other.id}


def test_rules_page_and_editor(client, city, session):
    thing, (ds,) = make_thing(session, name="空气站")
    police, (pds,) = make_thing(session, department="220200-gaj", name="卡口")
    csrf = signed_in(client, "env_staff")
    page = client.get("/console/sensing/rules")
    assert page.status_code == 200
    clean(page.text)
    text = page.text
    # Every kind has its fieldset, built from rules.KINDS; the targets are the readable ones.
    for kind, params in pages.rules.KINDS.items():
        assert f'data-kind="{kind}"' in text
        for p in params:
            assert f'id="p-{kind}-{p.name}" name="params.{p.name}"' in text
    assert f'<option value="{ds.id}">空气站 · 空气站 数据流 0</option>' in text
    assert f'<option value="{pds.id}">' not in text  # another department's stream
    assert 'data-url="/api/sensing/rules" data-method="POST"' in text

    # What the editor posts; the API's errors name fields the form has a place for.
    api = {"X-CSRF-Token": csrf}
    bad = client.post("/api/sensing/rules", headers=api, json={
        "name": "PM2.5", "kind": "threshold", "target_type": "datastream", "target_id": ds.id,
        "params": {"op": ">"}, "severity": "warning", "enabled": True})
    assert bad.status_code == 422
    fields = {e["field"] for e in bad.json()["errors"]}
    assert fields == {"params.value"}
    assert 'data-error-for="params.value"' in text
    made = client.post("/api/sensing/rules", headers=api, json={
        "name": "PM2.5 超标", "kind": "threshold", "target_type": "datastream", "target_id": ds.id,
        "params": {"op": ">", "value": 75}, "severity": "critical", "enabled": True})
    assert made.status_code == 201, made.text
    rule = made.json()["id"]

    listed = client.get(f"/console/sensing/rules?saved={rule}").text
    assert "PM2.5 超标" in listed and "规则已保存" in listed and "空气站 · 空气站 数据流 0" in listed
    edit = client.get(f"/console/sensing/rules?edit={rule}").text
    assert f'data-url="/api/sensing/rules/{rule}" data-method="PATCH"' in edit
    assert re.search(r'id="p-threshold-value" name="params.value" type="number" step="any" '
                     r'data-param="number" value="75(\.0)?"', edit)
    assert f'<option value="{ds.id}" selected>' in edit
    assert config_of(edit)["rule"]["name"] == "PM2.5 超标"
    assert "Save rule" in client.get("/console/sensing/rules?lang=en").text


def add_alert(session, thing, ds, rule_name="PM2.5 超标", state="open", severity="warning"):
    rule = Rule(department_id=thing.department_id, name=rule_name, kind="threshold", target_type="datastream",
                target_id=ds.id, params={"above": 75}, severity=severity, created_by="test")
    session.add(rule)
    session.flush()
    alert = Alert(rule_id=rule.id, datastream_id=ds.id, thing_id=thing.id, department_id=thing.department_id,
                  kind="threshold", severity=severity, state=state, message=f"{rule_name}：80 > 75", value=80.0,
                  observed_at=pages.ingest.now_ms())
    session.add(alert)
    session.commit()
    return alert


def test_alerts_page(client, city, session):
    thing, (ds,) = make_thing(session, name="空气站")
    police, (pds,) = make_thing(session, department="220200-gaj", name="卡口")
    a = add_alert(session, thing, ds)
    add_alert(session, thing, ds, rule_name="夜间噪声", state="resolved", severity="critical")
    add_alert(session, police, pds, rule_name="公安规则")
    signed_in(client, "env_staff")
    r = client.get("/console/sensing/alerts")
    assert r.status_code == 200
    clean(r.text)
    assert "PM2.5 超标" in r.text and "夜间噪声" in r.text and "公安规则" not in r.text
    assert f'data-alert="{a.id}"' in r.text and 'data-alert-action="acknowledge"' in r.text
    config = config_of(r.text)
    assert config["stream"] == "/api/sensing/alerts/stream" and config["may_handle"] is True
    assert config["things"] == {str(thing.id): "空气站"}  # the readable devices only
    only = client.get("/console/sensing/alerts?state=resolved&severity=critical").text
    assert "夜间噪声" in only and "PM2.5 超标" not in only
    assert "Acknowledge" in client.get("/console/sensing/alerts?lang=en").text


def test_each_sees_what_their_role_allows(client, city, session):
    """Another department's device is refused, a missing one is 404; the auditor reads without
    buttons or editor; a resident may not read sensing at all."""
    thing, (ds,) = make_thing(session, name="空气站")
    police, _ = make_thing(session, department="220200-gaj", name="卡口")
    add_alert(session, thing, ds)
    signed_in(client, "env_staff")
    assert client.get(f"/console/sensing/things/{police.id}", headers=HTML).status_code == 403
    assert client.get("/console/sensing/things/999999", headers=HTML).status_code == 404

    client.cookies.clear()
    signed_in(client, "auditor")
    page = client.get(f"/console/sensing/things/{thing.id}")
    assert page.status_code == 200 and "data-credentials" not in page.text
    assert "PM2.5 超标：80 &gt; 75" in page.text  # the device's recent alerts
    assert 'id="rule-form"' not in client.get("/console/sensing/rules").text
    alerts = client.get("/console/sensing/alerts").text
    assert "PM2.5 超标" in alerts and "data-alert-action" not in alerts
    assert client.get(f"/console/sensing/things/{police.id}").status_code == 200  # auditors read all

    client.cookies.clear()
    signed_in(client, "resident")
    for path in ("/console/sensing", "/console/sensing/rules", "/console/sensing/alerts"):
        assert client.get(path, headers=HTML).status_code == 403, path


def test_every_key_has_both_languages():
    used = set()
    for path in pages.TEMPLATES.rglob("*.html"):
        used |= set(re.findall(r"t\('(sense\.[a-z_.]*[a-z_])'", path.read_text(encoding="utf-8")))
    source = (pages.TEMPLATES.parent / "pages.py").read_text(encoding="utf-8")
    used |= {f"sense.js.{k}" for k in pages.JS_TEXT}
    used |= set(re.findall(r'"(sense\.[a-z_.]*[a-z_])"', source))
    for lang in i18n.LANGUAGES:
        missing = sorted(k for k in used if k not in i18n.catalog(lang))
        assert not missing, (lang, missing)
