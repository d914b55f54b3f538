"""Catalog API: create, search, rules for sharing types, exports, negative list, vocabulary."""

from __future__ import annotations

import csv
import io

from openpyxl import load_workbook

from tests.conftest import people_spec


def _create(city, username="police_admin", **overrides):
    return city.client.post("/api/hub/resources", json=people_spec(**overrides), headers=city.headers(username))


def test_create_and_read_a_resource(city):
    r = _create(city)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["code"] == "301001-000001" and body["catalog_code"] == "301001/000001"
    assert body["department"] == "220200-gaj" and body["key_fields"] == ["id_number"]
    assert [i["name"] for i in body["items"]][:2] == ["id_number", "name"]
    got = city.client.get(f"/api/hub/resources/{body['code']}", headers=city.headers("env_staff"))
    assert got.status_code == 200 and got.json()["name"] == "户籍人口"
    second = _create(city, name="流动人口")
    assert second.json()["code"] == "301001-000002"


def test_conditional_sharing_needs_condition_and_basis(city):
    r = _create(city, share_condition=None)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "share_condition"
    r = _create(city, share_type="none", share_basis="  ")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "share_basis"


def test_bad_items_are_refused_with_the_field(city):
    spec = people_spec()
    spec["items"][0]["sensitivity"] = "public"
    r = city.client.post("/api/hub/resources", json=spec, headers=city.headers("police_admin"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "items[0].sensitivity"
    spec = people_spec()
    spec["items"][1]["type"] = "blob"
    r = city.client.post("/api/hub/resources", json=spec, headers=city.headers("police_admin"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "items[1].type"
    spec = people_spec()
    spec["items"][1]["name"] = "Name; DROP TABLE x"
    r = city.client.post("/api/hub/resources", json=spec, headers=city.headers("police_admin"))
    assert r.status_code == 422


def test_only_the_provider_department_catalogs_its_resources(city):
    r = _create(city, username="env_staff")
    assert r.status_code == 403
    assert _create(city, username="resident").status_code == 403


def test_search_filters_and_pages(city):
    _create(city)
    _create(city, name="机动车登记", share_type="unconditional", share_condition=None, share_basis=None)
    h = city.headers("env_staff")
    r = city.client.get("/api/hub/resources", params={"q": "机动车"}, headers=h)
    assert [i["name"] for i in r.json()["items"]] == ["机动车登记"]
    r = city.client.get("/api/hub/resources", params={"share_type": "conditional"}, headers=h)
    assert r.json()["total"] == 1
    r = city.client.get("/api/hub/resources", params={"share_type": "maybe"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "share_type"
    r = city.client.get("/api/hub/resources", params={"limit": 1}, headers=h)
    assert r.json()["total"] == 2 and r.json()["next_offset"] == 1
    assert city.client.get("/api/hub/resources").status_code == 401


def test_exports(city):
    _create(city)
    h = city.headers("env_staff")
    j = city.client.get("/api/hub/resources/export", params={"format": "json"}, headers=h)
    assert j.json()[0]["code"] == "301001-000001"
    c = city.client.get("/api/hub/resources/export", params={"format": "csv"}, headers=h)
    assert c.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(c.content.decode("utf-8-sig"))))
    assert rows[0][0] == "信息资源代码" and rows[1][0] == "301001/000001" and rows[1][9] == "有条件共享"
    x = city.client.get("/api/hub/resources/export", params={"format": "xlsx"}, headers=h)
    ws = load_workbook(io.BytesIO(x.content)).active
    assert ws.cell(1, 2).value == "信息资源名称" and ws.cell(2, 2).value == "户籍人口"


def test_negative_list(city):
    _create(city, share_type="none", share_condition="涉及个人隐私", share_basis="《个人信息保护法》")
    h = city.headers("police_admin")
    r = city.client.post("/api/hub/negative-list", json={"name": "侦查卷宗", "reason": "涉及侦查秘密"}, headers=h)
    assert r.status_code == 201, r.text
    items = city.client.get("/api/hub/negative-list", headers=city.headers("env_staff")).json()["items"]
    assert [(i["name"], i["reason"], i["resource_code"]) for i in items] == [
        ("户籍人口", "涉及个人隐私", "301001-000001"), ("侦查卷宗", "涉及侦查秘密", None)]
    r = city.client.post("/api/hub/negative-list", json={"name": "x", "reason": "y", "department": "220200-gaj"},
                         headers=city.headers("env_admin"))
    assert r.status_code == 403


def test_vocabulary_and_update(city):
    v = city.client.get("/api/hub/vocabulary").json()
    assert v["share_types"]["conditional"] == "有条件共享" and "citizen_id" in v["item_types"]
    code = _create(city).json()["code"]
    r = city.client.patch(f"/api/hub/resources/{code}", json={"share_type": "unconditional"},
                          headers=city.headers("police_admin"))
    assert r.status_code == 200 and r.json()["share_type"] == "unconditional"
    r = city.client.patch(f"/api/hub/resources/{code}", json={"code": "x"}, headers=city.headers("police_admin"))
    assert r.status_code == 422
