"""Open311 GeoReport v2 at /open311/v2, on both databases: every resource in JSON and XML, the
spec's error format, and a real GeoReport client (the `georeport` package) against a live server."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityos.cases import service as cases
from cityos.cases import steps
from cityos.cases.models import Case, CaseAttachment
from cityos.core import service as core
from cityos.core.access import ANONYMOUS, Actor
from cityos.core.auth import user_actor
from cityos.core.models import ApiKey
from tests.cases.conftest import HOTLINE, POINT, POLICE, CasesCity

V2 = "/open311/v2"
TREE = {"service_code": "tree", "lat": "43.84", "long": "126.55", "attribute[blocking]": "yes",
        "description": "大树倒在路上，挡住了车道", "first_name": "张", "last_name": "三",
        "phone": "139 0000 1111", "email": "zhang@example.org", "device_id": "ios-1",
        "media_url": "https://photos.example.org/tree.jpg"}


def who(session: Session, username: str) -> Actor:
    return user_actor(core.user_by_name(session, username))


def issue_key(cases_city: CasesCity, scopes: list[str]) -> str:
    """A channel's API key, issued by the hotline centre's administrator."""
    with cases_city.sessions() as s:
        raw, _ = core.apikey_create(s, who(s, "hotline_admin"), name="市民App", department_code=HOTLINE,
                                    scopes=scopes)
        s.commit()
    return raw


@pytest.fixture
def api_key(cases_city: CasesCity) -> str:
    return issue_key(cases_city, ["cases.report"])


def xml_of(r: httpx.Response) -> ET.Element:
    assert r.headers["content-type"].startswith("text/xml"), r.text
    assert r.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(r.content)


def children(el: ET.Element) -> dict[str, str | None]:
    return {c.tag: c.text for c in el}


def case_count(cases_city: CasesCity) -> int:
    with cases_city.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Case)) or 0)


# -- discovery and services ----------------------------------------------------------------------


def test_discovery(cases_city: CasesCity, client: TestClient) -> None:
    doc = client.get(f"{V2}/discovery.json").json()
    (endpoint,) = doc["endpoints"]
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert endpoint["url"].endswith("/open311/v2") and "text/xml" in endpoint["formats"]
    root = xml_of(client.get(f"{V2}/discovery.xml"))
    assert root.tag == "discovery"
    assert [f.text for f in root.iterfind("endpoints/endpoint/formats/format")] == ["text/xml",
                                                                                    "application/json"]


def test_services_in_json_and_xml(cases_city: CasesCity, client: TestClient) -> None:
    services = client.get(f"{V2}/services.json").json()
    by_code = {s["service_code"]: s for s in services}
    assert set(by_code) == {"noise", "pollution", "tree", "policy", "manhole"}  # no approvals
    assert by_code["tree"] == {"service_code": "tree", "service_name": "树木倒伏", "description": "树木倒伏",
                               "metadata": True, "type": "realtime", "keywords": "树", "group": "园林绿化"}
    assert by_code["noise"]["metadata"] is False and by_code["noise"]["keywords"] == "噪音, 扰民"
    assert client.get(f"{V2}/services.json?lang=en").json()[0]["service_name"] in {
        "Noise", "Pollution", "Fallen tree", "Policy question", "Broken manhole cover"}

    root = xml_of(client.get(f"{V2}/services.xml"))
    assert root.tag == "services" and {e.tag for e in root} == {"service"}
    tree = next(children(e) for e in root if e.findtext("service_code") == "tree")
    assert tree["metadata"] == "true" and tree["type"] == "realtime" and tree["service_name"] == "树木倒伏"


def test_service_definition_in_json_and_xml(cases_city: CasesCity, client: TestClient) -> None:
    definition = client.get(f"{V2}/services/tree.json").json()
    assert definition == {"service_code": "tree", "attributes": [{
        "variable": True, "code": "blocking", "datatype": "singlevaluelist", "required": True,
        "datatype_description": None, "order": 1, "description": "是否阻断交通",
        "values": [{"key": "yes", "name": "是"}, {"key": "no", "name": "否"}]}]}
    assert client.get(f"{V2}/services/noise.json").json() == {"service_code": "noise", "attributes": []}

    root = xml_of(client.get(f"{V2}/services/tree.xml"))
    assert root.tag == "service_definition" and root.findtext("service_code") == "tree"
    (attr,) = root.iterfind("attributes/attribute")
    assert attr.findtext("datatype") == "singlevaluelist" and attr.findtext("required") == "true"
    assert attr.findtext("variable") == "true" and attr.findtext("order") == "1"
    assert [(v.findtext("key"), v.findtext("name")) for v in attr.iterfind("values/value")] == [
        ("yes", "是"), ("no", "否")]

    for code in ("permit", "nothing"):  # approvals are no Open311 service; unknown codes neither
        r = client.get(f"{V2}/services/{code}.json")
        assert r.status_code == 404 and r.json()[0]["code"] == 404
        err = xml_of(client.get(f"{V2}/services/{code}.xml"))
        assert err.tag == "errors" and err.findtext("error/code") == "404"
    assert client.get(f"{V2}/services.csv").status_code == 404


# -- POST requests --------------------------------------------------------------------------------


def test_post_request_form_encoded_and_read_it_back(cases_city: CasesCity, client: TestClient,
                                                    api_key: str) -> None:
    r = client.post(f"{V2}/requests.json", data={**TREE, "api_key": api_key})
    assert r.status_code == 201, r.text
    (made,) = r.json()
    number, token = made["service_request_id"], made["token"]
    assert number.startswith("RX") and len(token) == 32 and made["account_id"] is None
    assert number in made["service_notice"]
    with cases_city.sessions() as s:
        case = cases.case_by_number(s, number)
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.prefix == api_key.split("_")[1]))
        assert case.channel == "open311" and case.api_key_id == key_id
        assert case.attributes == {"blocking": "yes"} and case.category and case.category.code == "tree"
        assert case.reporter_name == "张 三" and cases.reporter_phone(case) == "13900001111"
        (photo,) = s.scalars(select(CaseAttachment).where(CaseAttachment.case_id == case.id))
        assert photo.url == TREE["media_url"] and photo.data is None and photo.content_type == "image/jpeg"

    got = client.get(f"{V2}/requests/{number}.json")
    assert got.status_code == 200
    (req,) = got.json()
    assert req["service_request_id"] == number and req["status"] == "open"
    assert req["service_code"] == "tree" and req["service_name"] == "树木倒伏"
    assert req["description"] == TREE["description"] and (req["lat"], req["long"]) == (43.84, 126.55)
    assert req["media_url"] == TREE["media_url"] and req["agency_responsible"] == "市12345政务服务热线"
    assert req["requested_datetime"].endswith("Z") and req["status_notes"] is None
    for private in ("13900001111", "张", "zhang@example.org", token):  # never the reporter
        assert private not in got.text

    root = xml_of(client.get(f"{V2}/requests/{number}.xml"))
    assert root.tag == "service_requests"
    req_xml = children(root.find("request"))  # type: ignore[arg-type]
    assert req_xml["service_request_id"] == number and req_xml["status"] == "open"
    assert req_xml["long"] == "126.55" and req_xml["zipcode"] is None

    assert client.get(f"{V2}/tokens/{token}.json").json() == [{"service_request_id": number, "token": token}]
    tok = xml_of(client.get(f"{V2}/tokens/{token}.xml"))
    assert children(tok.find("request")) == {"service_request_id": number, "token": token}  # type: ignore[arg-type]
    assert client.get(f"{V2}/tokens/{number}.json").status_code == 404  # a number is not a token
    assert xml_of(client.get(f"{V2}/requests/RX0.xml")).findtext("error/code") == "404"


def test_post_answers_in_xml_and_takes_json(cases_city: CasesCity, client: TestClient, api_key: str) -> None:
    r = client.post(f"{V2}/requests.xml", data={"service_code": "noise", "address_string": "昌邑区兴华街道1号",
                                                "description": "夜间施工噪音", "api_key": api_key})
    assert r.status_code == 201
    made = children(xml_of(r).find("request"))  # type: ignore[arg-type]
    assert made["service_request_id"] and made["token"] and made["account_id"] is None

    r = client.post(f"{V2}/requests.json", json={"service_code": "tree", "api_key": api_key,
                                                 "attribute": {"blocking": "no"}, "lat": 43.84, "long": 126.55})
    assert r.status_code == 201, r.text
    with cases_city.sessions() as s:
        case = cases.case_by_number(s, r.json()[0]["service_request_id"])
        assert case.attributes == {"blocking": "no"} and case.title == "树木倒伏"  # no description given
    # the API key may also come as X-API-Key or in the query string (as old clients send it)
    for extra in ({"headers": {"X-API-Key": api_key}}, {"params": {"api_key": api_key}}):
        r = client.post(f"{V2}/requests.json", data={"service_code": "policy", "address_id": "A-17",
                                                     "description": "咨询落户政策"}, **extra)  # type: ignore[arg-type]
        assert r.status_code == 201, r.text


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("no api_key", {"api_key": None}, 403, "api_key"),
    ("bad api_key", {"api_key": "cos_000000000000_nope"}, 403, "api_key"),
    ("unknown service", {"service_code": "ufo"}, 400, "service_code"),
    ("approval is no service", {"service_code": "permit"}, 400, "service_code"),
    ("no location", {"lat": None, "long": None}, 400, "lat/long"),
    ("lat without long", {"long": None}, 400, "long"),
    ("bad attribute value", {"attribute[blocking]": "maybe"}, 400, "attribute[blocking]"),
    ("required attribute missing", {"attribute[blocking]": None}, 400, "attribute[blocking]"),
    ("latitude out of range", {"lat": "91"}, 400, "lat"),
    ("longitude outside the country", {"long": "-122.4"}, 400, "long"),
    ("coordinates not numbers", {"lat": "north"}, 400, "lat"),
    ("media_url not http", {"media_url": "file:///etc/passwd"}, 400, "media_url"),
    ("bad e-mail", {"email": "nobody"}, 400, "email"),
]


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_post_errors_in_the_spec_format(cases_city: CasesCity, client: TestClient, api_key: str,
                                        fmt: str) -> None:
    for label, change, status, field in BAD:
        data = {k: v for k, v in ({**TREE, "api_key": api_key} | change).items() if v is not None}
        r = client.post(f"{V2}/requests.{fmt}", data=data)
        assert r.status_code == status, (label, r.text)
        if fmt == "json":
            assert r.headers["content-type"].startswith("application/json")
            items = [(e["code"], e["description"]) for e in r.json()]
        else:
            root = xml_of(r)
            assert root.tag == "errors"
            items = [(int(e.findtext("code") or 0), e.findtext("description") or "") for e in root]
        assert items and all(code == status for code, _ in items), label
        assert any(field in text for _, text in items), (label, items)
    assert case_count(cases_city) == 0  # bad input changes nothing


def test_key_without_the_scope_and_malformed_bodies(cases_city: CasesCity, client: TestClient) -> None:
    other = issue_key(cases_city, ["cases.read"])
    r = client.post(f"{V2}/requests.json", data={**TREE, "api_key": other})
    assert r.status_code == 403 and "cases.report" in r.json()[0]["description"]
    r = client.post(f"{V2}/requests.xml", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and xml_of(r).findtext("error/code") == "400"  # a dependency's error too
    assert case_count(cases_city) == 0


# -- GET requests ---------------------------------------------------------------------------------


def _report(s: Session, category: str, text: str) -> str:
    number = cases.case_intake(s, ANONYMOUS, {"category": category, "description": text, **POINT}).case.number
    assert number
    return number


def test_get_requests_with_filters(cases_city: CasesCity, client: TestClient) -> None:
    with cases_city.sessions() as s:
        noise, pollution, dup = (_report(s, "noise", "KTV噪音"), _report(s, "pollution", "油烟污染"),
                                 _report(s, "noise", "KTV噪音又来了"))
        done, old = _report(s, "noise", "广场舞噪音"), _report(s, "noise", "去年的噪音")
        approval = cases.case_intake(s, ANONYMOUS, {"category": "permit", "description": "广告牌审批"})
        agent, police = who(s, "hotline_agent"), who(s, "police_staff")
        steps.case_act(s, agent, dup, "merge", {"into": noise})
        steps.case_act(s, agent, done, "dispatch", {"department": POLICE})
        steps.case_act(s, police, done, "accept")
        steps.case_act(s, police, done, "reply", {"reply": "已劝导广场舞降低音量"})
        steps.case_act(s, agent, done, "verify", {"fixed": True})
        steps.case_act(s, agent, done, "callback", {"satisfaction": "satisfied"})
        case_old = cases.case_by_number(s, old)
        case_old.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=120)
        s.commit()
        assert cases.case_by_number(s, done).status == "closed"
        assert cases.case_by_number(s, dup).status == "merged"

    def ids(query: str, fmt: str = "json") -> list[str]:
        r = client.get(f"{V2}/requests.{fmt}{query}")
        assert r.status_code == 200, r.text
        if fmt == "xml":
            return [e.findtext("service_request_id") or "" for e in xml_of(r).iterfind("request")]
        return [x["service_request_id"] for x in r.json()]

    assert ids("") == [done, pollution, noise]  # newest first; merged, old and approvals left out
    assert ids("", "xml") == [done, pollution, noise]
    assert approval.case.number not in ids("?status=open,closed")
    assert ids("?status=open") == [pollution, noise]
    assert ids("?status=closed", "xml") == [done]
    assert ids("?service_code=noise") == [done, noise]
    assert ids("?service_code=noise,pollution&status=open") == [pollution, noise]
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=200)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert old in ids(f"?start_date={since}")
    until = (dt.datetime.now(dt.UTC) - dt.timedelta(days=100)).strftime("%Y-%m-%dT%H:%M:%S%%2B00:00")
    assert ids(f"?end_date={until}") == [old]
    assert ids(f"?service_request_id={noise},{dup},{old},RX404&status=closed") == [noise, dup, old]

    closed = client.get(f"{V2}/requests/{done}.json").json()[0]
    assert closed["status"] == "closed" and closed["status_notes"] == "已劝导广场舞降低音量"
    assert closed["agency_responsible"] == "市公安局" and closed["expected_datetime"].endswith("Z")
    assert client.get(f"{V2}/requests/{dup}.json").json()[0]["status"] == "closed"  # merged: closed
    assert client.get(f"{V2}/requests/{approval.case.number}.json").status_code == 404

    for query, field in (("?status=pending", "status"), ("?start_date=yesterday", "start_date"),
                         ("?service_code=ufo", "service_code"),
                         ("?start_date=2024-02-01T00:00:00Z&end_date=2024-01-01T00:00:00Z", "end_date")):
        r = client.get(f"{V2}/requests.json{query}")
        assert r.status_code == 400 and field in r.json()[0]["description"], query
        assert xml_of(client.get(f"{V2}/requests.xml{query}")).findtext("error/code") == "400"


# -- a real Open311 client ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_a_georeport_client_works_unchanged(cases_city: CasesCity, live_server: str, api_key: str,
                                            fmt: str) -> None:
    """The `georeport` package (PyPI) reads services, definitions and requests; it cannot submit,
    so the POST and the token look-up are made as the spec shows them, form-encoded."""
    from georeport import GeoReport

    client = GeoReport(f"{live_server}{V2}", output_format=fmt)
    services = client.get_service_list()
    assert {s["service_code"] for s in services} >= {"tree", "noise"}
    definition = client.get_service_definition("tree")
    attrs = definition["attributes"] if fmt == "json" else definition["attributes"]["attribute"]
    attr = attrs[0] if fmt == "json" else attrs
    assert attr["code"] == "blocking"
    keys = [v["key"] for v in (attr["values"] if fmt == "json" else attr["values"]["value"])]

    form = {"api_key": api_key, "service_code": "tree", "lat": "43.8401", "long": "126.5501",
            "address_string": "船营区北京路", "description": "树倒了", f"attribute[{attr['code']}]": keys[0],
            "media_url": "http://photos.example.org/1.png"}
    r = httpx.post(f"{live_server}{V2}/requests.{fmt}", data=form)
    assert r.status_code == 201, r.text
    if fmt == "json":
        number, token = r.json()[0]["service_request_id"], r.json()[0]["token"]
    else:
        made = children(xml_of(r).find("request"))  # type: ignore[arg-type]
        number, token = made["service_request_id"], made["token"]

    one = client.get_service_request(number)
    assert one["service_request_id"] == number and one["status"] == "open"
    assert one["media_url"] == "http://photos.example.org/1.png"
    listed = client.get_service_requests(service_code="tree", status="open")
    listed = listed if isinstance(listed, list) else [listed]  # xmltodict: one item is no list
    assert number in [x["service_request_id"] for x in listed]
    tok = httpx.get(f"{live_server}{V2}/tokens/{token}.{fmt}")
    found = tok.json()[0] if fmt == "json" else children(xml_of(tok).find("request"))  # type: ignore[arg-type]
    assert found == {"service_request_id": number, "token": token}
