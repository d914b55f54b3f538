"""The case API over HTTP, on both databases: the hotline flow end to end, problem documents,
who sees what, queues, categories and workflows, and that the reporter's phone never leaks."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from cityos.cases import service as cases
from cityos.core.models import AuditRecord
from tests.cases.conftest import ENV, HOTLINE, PARKS, POINT, POLICE, CasesCity

PHONE = "13900001111"
PROBLEM = "application/problem+json"


def api(cc: CasesCity, method: str, url: str, user: str | None = None, **kw: Any) -> Response:
    client: TestClient | None = cc.city.client
    assert client is not None
    headers = cc.headers(user) if user else {}
    return client.request(method, url, headers=headers, **kw)


def report(cc: CasesCity, user: str | None = None, **spec: Any) -> dict[str, Any]:
    body = {"category": "noise", "description": "楼下KTV半夜噪音扰民", **POINT, **spec}
    r = api(cc, "POST", "/api/cases", user, json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def act(cc: CasesCity, user: str, number: str, action: str, params: dict[str, Any] | None = None,
        status: int = 200) -> dict[str, Any]:
    r = api(cc, "POST", f"/api/cases/{number}/actions/{action}", user, json=params)
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


def problem_fields(r: Response, status: int) -> list[str]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return [e["field"] for e in r.json().get("errors", [])]


def test_hotline_flow_over_http(cases_city: CasesCity) -> None:
    cc = cases_city
    got = report(cc, reporter_phone=PHONE, reporter_name="张三")
    number, token = got["number"], got["token"]
    assert number.startswith("RX") and got["status"] == "new" and got["channel"] == "web" and token
    assert got["duplicates"] == []
    assert PHONE not in orjson.dumps(got).decode()

    detail = api(cc, "GET", f"/api/cases/{number}", "hotline_agent")
    assert detail.status_code == 200, detail.text
    d = detail.json()
    assert d["reporter"] == {"name": "张三", "phone": "139****1111", "signed_in": False}
    assert PHONE not in detail.text and token not in detail.text
    assert "dispatch" in d["actions"] and [t["step"] for t in d["tasks"]] == ["dispatch"]

    d = act(cc, "hotline_agent", number, "dispatch", {"department": POLICE, "note": "请公安处理"})
    assert d["status"] == "dispatched" and d["department"] == POLICE and d["due_at"]
    d = api(cc, "GET", f"/api/cases/{number}", "police_staff").json()
    assert {"accept", "reply", "return"} <= set(d["actions"]) and "dispatch" not in d["actions"]
    assert act(cc, "police_staff", number, "accept")["status"] == "handling"
    d = act(cc, "police_staff", number, "reply", {"reply": "已责令KTV整改"})
    assert d["status"] == "replied" and d["reply"] == "已责令KTV整改"
    act(cc, "hotline_agent", number, "verify", {"fixed": True})
    d = act(cc, "hotline_agent", number, "callback", {"satisfaction": "satisfied"})
    assert d["status"] == "closed" and d["satisfaction"] == "satisfied" and "reopen" in d["actions"]

    for key in (number, token):  # the resident follows the case by its number or its token
        r = api(cc, "GET", f"/api/cases/track/{key}")
        assert r.status_code == 200, r.text
        t = r.json()
        assert t["number"] == number and t["status"] == "closed" and t["reply"] == "已责令KTV整改"
        assert [e["action"] for e in t["timeline"]] == ["receive", "dispatch", "accept", "reply", "verify",
                                                       "callback"]
        assert all("actor" not in e and "public" not in e for e in t["timeline"])
        for secret in (PHONE, "139****1111", "张三", token, "police_staff", "hotline_agent"):
            assert secret not in r.text
        assert "suggestion" not in t and "attributes" not in t and "escalations" not in t

    r = api(cc, "POST", f"/api/cases/{number}/evaluate", json={"satisfaction": "satisfied", "token": "0" * 32})
    assert r.status_code == 403
    r = api(cc, "POST", f"/api/cases/{number}/evaluate",
            json={"satisfaction": "basic", "note": "处理及时", "token": token})
    assert r.status_code == 200, r.text
    assert r.json()["evaluation"] == "basic" and r.json()["timeline"][-1]["action"] == "evaluate"
    r = api(cc, "POST", f"/api/cases/{number}/evaluate", json={"satisfaction": "basic", "token": token})
    assert r.status_code == 409

    with cc.sessions() as s:  # the full phone is nowhere in the audit log
        rows = s.scalars(select(AuditRecord)).all()
        assert any(row.object_id == number for row in rows)
        for row in rows:
            text = " ".join(str(v) for v in (row.actor, row.department, row.action, row.object_type,
                                             row.object_id, row.purpose, orjson.dumps(row.detail).decode()))
            assert PHONE not in text
        assert cases.reporter_phone(cases.case_by_number(s, number)) == PHONE  # kept, encrypted


def test_intake_by_staff_and_residents(cases_city: CasesCity) -> None:
    cc = cases_city
    by_agent = report(cc, "hotline_agent", reporter_phone=PHONE)
    assert by_agent["channel"] == "phone" and by_agent["token"] is None
    r = api(cc, "GET", f"/api/cases/{by_agent['number']}", "hotline_agent")
    assert r.json()["reporter"]["phone"] == "139****1111" and PHONE not in r.text
    by_resident = report(cc, "resident", category="policy", description="公积金怎么提取", lon=None, lat=None)
    assert by_resident["channel"] == "web" and by_resident["token"] and by_resident["kind"] == "consultation"
    r = api(cc, "POST", "/api/cases", None, json={"category": "noise", "description": "x", "channel": "phone",
                                                  **POINT})
    assert r.status_code == 401  # only staff register phone calls


def test_intake_location_header_and_duplicates(cases_city: CasesCity) -> None:
    cc = cases_city
    r = api(cc, "POST", "/api/cases", json={"category": "noise", "description": "噪音", **POINT})
    assert r.status_code == 201 and r.headers["location"] == f"/api/cases/{r.json()['number']}"
    first = r.json()["number"]
    second = report(cc, description="又是噪音", lon=POINT["lon"] + 0.0002)
    assert [d["number"] for d in second["duplicates"]] == [first]
    assert 0 < second["duplicates"][0]["distance_m"] < 100
    r = api(cc, "GET", f"/api/cases/{second['number']}/duplicates", "hotline_agent")
    assert r.status_code == 200 and r.json()[0]["number"] == first and r.json()[0]["title"]


def test_problem_documents(cases_city: CasesCity) -> None:
    cc = cases_city
    post = "/api/cases"
    assert problem_fields(api(cc, "POST", post, json={"category": "nope", "description": "x", **POINT}),
                          422) == ["category"]
    assert "location" in problem_fields(api(cc, "POST", post, json={"category": "noise", "description": "x"}),
                                        422)
    assert problem_fields(api(cc, "POST", post, json={"category": "noise", "description": "x", "lon": 200,
                                                      "lat": 43.8}), 422) == ["lon"]
    assert problem_fields(api(cc, "POST", post, json={"category": "noise", "description": "x", "lon": 10.0,
                                                      "lat": 43.8}), 422) == ["lon"]  # not in China
    assert problem_fields(api(cc, "POST", post, json={"category": "noise", "description": "x", **POINT,
                                                      "secret": 1}), 422) == ["secret"]
    assert problem_fields(api(cc, "POST", post, json={"category": "noise", "description": "x", **POINT,
                                                      "reporter_phone": "call me"}), 422) == ["reporter_phone"]

    number = report(cc)["number"]
    r = api(cc, "POST", f"/api/cases/{number}/actions/callback", "hotline_agent",
            json={"satisfaction": "satisfied"})
    assert problem_fields(r, 409) == ["action"]  # a step out of order
    assert problem_fields(api(cc, "POST", f"/api/cases/{number}/actions/teleport", "hotline_agent"),
                          422) == ["action"]
    assert problem_fields(api(cc, "POST", f"/api/cases/{number}/actions/dispatch", "hotline_agent",
                              json={"department": POLICE, "days": 100}), 422) == ["days"]
    assert problem_fields(api(cc, "POST", f"/api/cases/{number}/actions/dispatch", "hotline_agent",
                              json=["not", "an", "object"]), 422)
    assert api(cc, "POST", f"/api/cases/{number}/actions/dispatch", json={"department": POLICE}).status_code == 401
    assert api(cc, "POST", f"/api/cases/{number}/actions/dispatch", "police_staff",
               json={"department": POLICE}).status_code == 403  # not the centre
    act(cc, "hotline_agent", number, "dispatch", {"department": POLICE})
    r = api(cc, "POST", f"/api/cases/{number}/actions/accept", "env_staff")
    assert r.status_code == 403 and r.headers["content-type"].startswith(PROBLEM)  # not held by env
    assert api(cc, "POST", "/api/cases/RX0000/actions/accept", "police_staff").status_code == 404


def test_who_sees_what(cases_city: CasesCity) -> None:
    cc = cases_city
    number = report(cc)["number"]
    act(cc, "hotline_agent", number, "dispatch", {"department": POLICE})
    assert api(cc, "GET", f"/api/cases/{number}", "env_staff").status_code == 404
    assert api(cc, "GET", f"/api/cases/{number}/duplicates", "env_staff").status_code == 404
    assert api(cc, "GET", f"/api/cases/{number}", "police_staff").status_code == 200
    assert api(cc, "GET", f"/api/cases/{number}", "resident").status_code == 403
    assert api(cc, "GET", f"/api/cases/{number}").status_code == 401

    page = api(cc, "GET", "/api/cases", "env_staff").json()
    assert page["items"] == [] and page["total"] == 0
    page = api(cc, "GET", "/api/cases", "police_staff", params={"limit": 1}).json()
    assert [c["number"] for c in page["items"]] == [number]
    assert {"items", "total", "limit", "offset", "next_offset"} <= set(page)
    report(cc, category="tree", description="大树倒在路上", attributes={"blocking": "yes"})
    page = api(cc, "GET", "/api/cases", "hotline_agent", params={"limit": 1}).json()
    assert page["total"] == 2 and page["next_offset"] == 1 and len(page["items"]) == 1
    page = api(cc, "GET", "/api/cases", "hotline_agent", params={"status": "dispatched"}).json()
    assert [c["number"] for c in page["items"]] == [number]
    page = api(cc, "GET", "/api/cases", "hotline_agent", params={"category": "tree"}).json()
    assert page["total"] == 1 and page["items"][0]["attributes"] == {"blocking": "yes"}
    page = api(cc, "GET", "/api/cases", "hotline_agent", params={"q": number}).json()
    assert [c["number"] for c in page["items"]] == [number]
    page = api(cc, "GET", "/api/cases", "hotline_agent", params={"since": "2999-01-01T00:00:00"}).json()
    assert page["total"] == 0
    assert api(cc, "GET", "/api/cases", "hotline_agent", params={"limit": 201}).status_code == 422
    assert api(cc, "GET", "/api/cases").status_code == 401


def test_queues(cases_city: CasesCity) -> None:
    cc = cases_city
    number = report(cc)["number"]
    page = api(cc, "GET", f"/api/cases/queues/{HOTLINE}", "hotline_agent", params={"which": "new"}).json()
    assert [(i["number"], i["step"], i["category"]) for i in page["items"]] == [(number, "dispatch", "noise")]
    act(cc, "hotline_agent", number, "dispatch", {"department": POLICE, "co": [ENV]})
    r = api(cc, "GET", f"/api/cases/queues/{POLICE}", "police_staff")
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["number"] == number and item["role"] == "lead" and item["state"] == "open"
    assert item["due_at"] and item["overdue"] is False and item["title"]
    assert api(cc, "GET", f"/api/cases/queues/{POLICE}", "police_staff",
               params={"which": "overdue"}).json()["total"] == 0
    assert api(cc, "GET", f"/api/cases/queues/{ENV}", "env_staff").json()["items"][0]["role"] == "co"
    assert api(cc, "GET", f"/api/cases/queues/{POLICE}", "env_staff").status_code == 403
    assert problem_fields(api(cc, "GET", f"/api/cases/queues/{POLICE}", "police_staff",
                              params={"which": "later"}), 422) == ["which"]


def test_categories_and_workflows(cases_city: CasesCity) -> None:
    cc = cases_city
    cats = api(cc, "GET", "/api/cases/categories").json()
    assert {"noise", "tree", "manhole"} <= {c["code"] for c in cats}
    tree = next(c for c in cats if c["code"] == "tree")
    assert tree["department"] == PARKS and tree["attributes"][0]["code"] == "blocking"
    assert {c["line"] for c in api(cc, "GET", "/api/cases/categories", params={"line": "citymgmt"}).json()} == \
        {"citymgmt"}

    body = {"name": "占道经营", "name_en": "Street vending", "group": "市容环境", "kind": "complaint",
            "department": PARKS, "keywords": ["摆摊"]}
    assert api(cc, "PUT", "/api/cases/categories/vending", "env_staff", json=body).status_code == 403
    r = api(cc, "PUT", "/api/cases/categories/vending", "admin", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["workflow"] == "hotline" and r.json()["department"] == PARKS
    r = api(cc, "PUT", "/api/cases/categories/vending", "admin", json={**body, "name": "流动摊贩"})
    assert r.json()["name"] == "流动摊贩" and r.json()["department"] == PARKS
    assert problem_fields(api(cc, "PUT", "/api/cases/categories/vending", "admin",
                              json={**body, "line": "moon"}), 422) == ["line"]
    assert report(cc, category="vending", description="路边摆摊")["category"] == "vending"

    flows = api(cc, "GET", "/api/cases/workflows").json()
    assert {f["code"] for f in flows} == {"hotline", "citymgmt", "approval"}
    hot = api(cc, "GET", "/api/cases/workflows/hotline").json()
    assert hot["version"] == 1 and hot["department"] == HOTLINE and hot["active"]
    assert [s["step"] for s in hot["steps"]][:2] == ["dispatch", "handle"]
    r = api(cc, "GET", "/api/cases/workflows/hotline/bpmn")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    assert b"definitions" in r.content
    assert api(cc, "GET", "/api/cases/workflows/nope").status_code == 404

    publish = {"name": "12345 热线工单（修订）", "name_en": "Hotline v2", "bpmn": r.text, "department": HOTLINE}
    assert api(cc, "POST", "/api/cases/workflows/hotline", "env_admin", json=publish).status_code == 403
    r = api(cc, "POST", "/api/cases/workflows/hotline", "hotline_admin", json=publish)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2 and r.json()["department"] == HOTLINE
    assert api(cc, "GET", "/api/cases/workflows/hotline/bpmn", params={"version": 1}).status_code == 200
    r = api(cc, "POST", "/api/cases/workflows/hotline", "hotline_admin", json={**publish, "bpmn": "<x"})
    assert problem_fields(r, 422) == ["bpmn"]


def test_sweep_is_for_platform_admins(cases_city: CasesCity) -> None:
    cc = cases_city
    assert api(cc, "POST", "/api/cases/sweep", "hotline_admin").status_code == 403
    r = api(cc, "POST", "/api/cases/sweep", "admin")
    assert r.status_code == 200 and r.json() == {"warned": 0, "overdue": 0, "escalated": []}


def test_openapi_lists_the_routes(cases_city: CasesCity) -> None:
    paths = api(cases_city, "GET", "/openapi.json").json()["paths"]
    for path in ("/api/cases", "/api/cases/{number}", "/api/cases/{number}/actions/{action}",
                 "/api/cases/track/{key}", "/api/cases/queues/{department}", "/api/cases/categories",
                 "/api/cases/workflows/{code}/bpmn", "/api/cases/{number}/attachments/{attachment_id}"):
        assert path in paths
