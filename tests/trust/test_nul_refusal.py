"""A NUL character in the URL (trust, issue 9 item 3) is refused before routing with 400, in the error
shape of the API it was sent to: a CKAN client reads `{"success": false, "error"}`, an Open311 client
`[{"code", "description"}]` (or XML), an OGC API client `code`/`description`, a SensorThings client
`message`, every other client an RFC 9457 problem document; each names the parameter. The refusal
happens before any route runs, so the database is not involved: once, on SQLite.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.usefixtures("sqlite_only")


def test_ckan_action_refuses_nul_in_its_own_shape(client):
    r = client.get("/api/3/action/package_search", params={"q": "air\x00' OR 1=1--"})
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False and body["error"]["__type"] == "Bad Request"
    assert "q:" in body["error"]["message"] and "NUL" in body["error"]["message"]
    assert body["help"].endswith("/api/3/action/help_show")


def test_open311_refuses_nul_in_json_and_xml(client):
    r = client.get("/open311/v2/requests.json", params={"status": "open\x00"})
    assert r.status_code == 400
    assert r.json() == [{"code": 400, "description": r.json()[0]["description"]}]
    assert r.json()[0]["description"].startswith("status: ")
    x = client.get("/open311/v2/requests.xml", params={"status": "open\x00"})
    assert x.status_code == 400 and "xml" in x.headers["content-type"]
    error = ET.fromstring(x.content).find("error")
    assert error is not None and error.findtext("code") == "400"
    assert (error.findtext("description") or "").startswith("status: ")


def test_ogc_api_refuses_nul_with_ogc_code(client):
    r = client.get("/ogc/collections/stations/items", params={"filter": "name = 'a\x00'"},
                   headers={"Accept": "application/geo+json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "InvalidParameterValue" and body["description"].startswith("filter: ")
    assert body["errors"] == [{"field": "filter", "reason": body["errors"][0]["reason"]}]


def test_sensorthings_refuses_nul_with_a_message(client):
    r = client.get("/sta/v1.1/Things", params={"$filter": "name eq 'a\x00'"})
    assert r.status_code == 400
    body = r.json()
    assert body["message"].startswith("$filter: ") and "NUL" in body["message"]


def test_nul_in_a_path_is_refused_as_a_problem_document(client):
    r = client.get("/sta/v1.1/Things(1%00)")
    assert r.status_code == 400 and r.json()["message"].startswith("path: ")
    r = client.get("/api/hub/resources/a%00b")
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "path" and "NUL" in r.json()["detail"]


def test_other_apis_refuse_nul_as_rfc9457(client):
    r = client.get("/api/hub/resources", params={"q": "x\x00"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 400 and body["errors"][0]["field"] == "q"
    assert "message" not in body and "code" not in body
    # an escaped "%2500" is the text "%00", not a NUL: it goes through
    assert client.get("/api/3/action/package_search", params={"q": "%00"}).status_code == 200
