"""Sharing API over HTTP: the issue's scenario (环保局 asks 公安局, gets some fields, reads them,
is refused the rest, the auditor sees every read with its purpose and request hash), the query
language of the read, CSV, revocation, and a signed webhook delivered to a real local server."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import select

from cityos.core import auth
from cityos.core.access import SYSTEM
from cityos.core.models import User
from cityos.hub import loading, service, sharing, store
from cityos.hub.schemas_sharing import GrantOut, RequestOut, RowsOut
from tests.conftest import people_spec, person_row

PURPOSE = "环境违法案件当事人身份核验"


@pytest.fixture
def people(city, sessions, keyring):
    """The police's residents resource with 30 rows (two districts)."""
    with sessions() as s:
        res = service.resource_create(s, SYSTEM, people_spec())
        layout = service.layout_of(res)
        enc = store.Encoder(layout, service.keyring())
        w = store.Writer(s.connection(), layout, 1, "replace")
        w.add([enc.encode(person_row(n, "船营区" if n % 3 == 0 else "昌邑区")) for n in range(30)])
        res.row_count, res.current_version = w.finish().row_count, 1
        s.commit()
        return res.code


def post(city, who, path, body):
    return city.client.post(f"/api/hub{path}", json=body, headers=city.headers(who))


def get(city, who, path, **params):
    return city.client.get(f"/api/hub{path}", params=params, headers=city.headers(who))


def audit_log(city, **params):
    r = city.client.get("/api/audit", params={"limit": 100, **params}, headers=city.headers("auditor"))
    assert r.status_code == 200, r.text
    return r.json()["items"]


def granted(city, code, fields=("name", "district")):
    r = post(city, "env_staff", "/requests", {
        "resource": code, "purpose": PURPOSE, "legal_basis": "《环境保护法》",
        "fields": ["name", "district", "household_size"],
        "row_filter": [{"field": "district", "op": "eq", "value": "昌邑区"}]})
    assert r.status_code == 201, r.text
    RequestOut.model_validate(r.json())
    assert r.json()["state"] == "pending" and r.json()["due_at"] and not r.json()["overdue"]
    rid = r.json()["id"]
    inbox = get(city, "police_admin", "/requests", box="incoming", state="pending")
    assert [x["id"] for x in inbox.json()["items"]] == [rid]
    r = post(city, "police_admin", f"/requests/{rid}/decision", {"approve": True, "fields": list(fields)})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "granted" and r.json()["grant_id"]
    return r.json()["grant_id"]


def test_the_done_when_scenario(city, people):
    grant_id = granted(city, people)
    rows_path = f"/resources/{people}/rows"
    r = get(city, "env_staff", rows_path, purpose=PURPOSE, fields="name,district", sort="-name", limit=5,
            count="true")
    assert r.status_code == 200, r.text
    body = RowsOut.model_validate(r.json()).model_dump(exclude_unset=True)
    assert body["fields"] == ["name", "district"] and body["total"] == 20 and len(body["rows"]) == 5
    assert body["resource"] == people and body["version"] == 1
    assert {x["district"] for x in body["rows"]} == {"昌邑区"}
    assert body["next"].startswith("http") and "offset=5" in body["next"]
    request_hash, record = r.headers["X-Request-Hash"], r.headers["X-Audit-Record"]
    nxt = city.client.get(body["next"], headers=city.headers("env_staff"))
    assert nxt.status_code == 200 and nxt.json()["offset"] == 5

    # The rest of the resource is refused, by name, and the refusal is audited.
    for params, field in (({"fields": "name,id_number"}, "id_number"),
                          ({"household_size__gte": "2"}, "household_size")):
        r = get(city, "env_staff", rows_path, purpose=PURPOSE, **params)
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
        assert field in r.json()["detail"]
    r = get(city, "env_staff", rows_path, purpose=PURPOSE)  # no fields: the granted ones
    assert set(r.json()["fields"]) == {"name", "district"}

    # The auditor sees each read with its purpose; the hash in the log is the one answered.
    log = audit_log(city, action="hub.data.read")
    ok = [x for x in log if x["outcome"] == "success"]
    assert len(ok) == 3 and all(x["purpose"] == PURPOSE and x["actor"] == "env_staff" for x in ok)
    mine = next(x for x in ok if x["hash"] == record)
    assert mine["detail"]["request_hash"] == request_hash and mine["detail"]["grant"] == grant_id
    assert mine["detail"]["rows"] == 5 and mine["object_id"] == people
    denied = [x for x in log if x["outcome"] == "denied"]
    assert len(denied) == 2 and all(x["department"] == "220200-hbj" for x in denied)

    # Revocation takes effect on the next request.
    r = post(city, "police_admin", f"/grants/{grant_id}/revoke", {"reason": "案件办结"})
    assert r.status_code == 200 and r.json()["active"] is False
    assert get(city, "env_staff", rows_path, purpose=PURPOSE).status_code == 403
    grants = get(city, "env_staff", "/grants", box="outgoing").json()["items"]
    GrantOut.model_validate(grants[0])
    assert grants[0]["id"] == grant_id and grants[0]["revoke_reason"] == "案件办结"


def test_request_hash_can_be_recomputed_by_the_reader(city, people):
    granted(city, people)
    r = city.client.get(f"/api/hub/resources/{people}/rows?district=%E6%98%8C%E9%82%91%E5%8C%BA&limit=2",
                        headers={**city.headers("env_staff"), "X-Purpose": quote(PURPOSE)})
    assert r.status_code == 200, r.text
    h = sharing.request_hash(method="GET", path=f"/api/hub/resources/{people}/rows",
                             query=[("district", "昌邑区"), ("limit", "2")], actor="env_staff",
                             department="220200-hbj", purpose=PURPOSE, time=r.headers["X-Request-Time"],
                             body=r.content)
    assert h == r.headers["X-Request-Hash"]


def test_concurrent_reads_each_answered_with_its_own_committed_record(city, people, sessions):
    """Reads from many threads at once are audited through the group writer: every answer's
    X-Audit-Record is a committed record holding that answer's X-Request-Hash, and the chain holds."""
    from cityos.core import audit
    from cityos.core.models import AuditRecord

    granted(city, people)
    headers = city.headers("env_staff")
    answers: list[tuple[int, str, str]] = []

    def reader(k: int) -> None:
        for i in range(5):
            r = city.client.get(f"/api/hub/resources/{people}/rows", headers=headers,
                                params={"purpose": PURPOSE, "limit": 2, "offset": (k + i) % 10})
            answers.append((r.status_code, r.headers.get("X-Request-Hash", ""),
                            r.headers.get("X-Audit-Record", "")))

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 40 and all(status == 200 for status, _, _ in answers)
    with sessions() as s:
        assert audit.verify(s).ok
        reads = {r.hash: r.detail["request_hash"] for r in s.scalars(
            select(AuditRecord).where(AuditRecord.action == "hub.data.read"))}
    assert {record: rhash for _, rhash, record in answers} == reads


def test_csv_and_the_owner_reads_everything(city, people):
    r = get(city, "police_staff", f"/resources/{people}/rows", purpose="户籍核查", format="csv",
            household_size__in="1,2", sort="name", limit=1000)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith(b"\xef\xbb\xbf") and r.headers["X-Request-Hash"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert list(rows[0]) == ["id_number", "name", "gender", "birth_date", "district", "household_size"]
    assert len(rows) == 12 and {x["household_size"] for x in rows} == {"1", "2"}


def test_query_language_errors_name_the_field(city, people):
    path = f"/resources/{people}/rows"
    for params, field in (({}, "purpose"), ({"nope": "1"}, "nope"),
                          ({"household_size__gt": "many"}, "household_size"),
                          ({"district__between": "a"}, "district"),
                          ({"birth_date": "1990-13-01"}, "birth_date"),
                          ({"id_number__startswith": "2202"}, "id_number"),
                          ({"limit": "1001"}, "limit"), ({"format": "xml"}, "format")):
        r = get(city, "police_staff", path, **({"purpose": "核查"} if field != "purpose" else {}), **params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["errors"][0]["field"] == field, r.json()


def test_sql_looking_values_are_only_values(city, people):
    path = f"/resources/{people}/rows"
    for params in ({"name": "x' OR '1'='1"}, {"district": "昌邑区; DROP TABLE hub_grants; --"},
                   {"name__contains": "%"}, {"name__in": "a'),('b"}):
        r = get(city, "police_staff", path, purpose="核查", **params)
        assert r.status_code == 200 and r.json()["rows"] == [], params
    assert get(city, "police_staff", path, purpose="核查").json()["rows"]


def test_other_departments_and_keys_are_refused(city, people, sessions):
    granted(city, people)
    path = f"/resources/{people}/rows"
    assert get(city, "district_admin", path, purpose="x").status_code == 403
    with sessions() as s:
        from cityos.core import service as core_service
        env_key, _ = core_service.apikey_create(s, SYSTEM, name="env", department_code="220200-hbj",
                                                scopes=["hub.data.read"])
        other_key, _ = core_service.apikey_create(s, SYSTEM, name="d", department_code="220202",
                                                  scopes=["hub.data.read"])
        s.commit()
    r = city.client.get(f"/api/hub{path}", params={"purpose": "x"}, headers={"X-API-Key": env_key})
    assert r.status_code == 200 and len(r.json()["rows"]) == 20
    r = city.client.get(f"/api/hub{path}", params={"purpose": "x"}, headers={"X-API-Key": other_key})
    assert r.status_code == 403
    log = audit_log(city, action="hub.data.read", outcome="denied")
    assert {x["actor"] for x in log} == {"district_admin", f"apikey:{other_key.split('_')[1]}"}


def test_openapi_documents_the_sharing_routes(city):
    paths = city.client.get("/openapi.json").json()["paths"]
    for p in ("/api/hub/requests", "/api/hub/requests/{request_id}/decision", "/api/hub/grants",
              "/api/hub/grants/{grant_id}/revoke", "/api/hub/grants/{grant_id}/subscriptions",
              "/api/hub/resources/{code}/rows"):
        assert p in paths, p
    params = {x["name"] for x in paths["/api/hub/resources/{code}/rows"]["get"]["parameters"]}
    assert {"purpose", "x-purpose", "fields", "sort", "limit", "offset", "count", "format"} <= params


def test_request_paths_over_http(city, people):
    r = post(city, "env_staff", "/requests", {"resource": people, "purpose": "x", "fields": ["name"],
                                              "extra": 1})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "extra"
    r = post(city, "police_staff", "/requests", {"resource": people, "purpose": "x", "fields": ["name"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "resource"
    r = post(city, "env_staff", "/requests", {"resource": people, "purpose": "x", "fields": ["name"]})
    rid = r.json()["id"]
    assert get(city, "env_staff", f"/requests/{rid}").json()["requester"] == "220200-hbj"
    assert get(city, "district_admin", f"/requests/{rid}").status_code == 403
    r = post(city, "police_admin", f"/requests/{rid}/decision", {"approve": False})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "reason"
    r = post(city, "police_admin", f"/requests/{rid}/decision", {"approve": False, "reason": "依据不足"})
    assert r.json()["state"] == "refused" and r.json()["reason"] == "依据不足"
    assert get(city, "env_staff", "/requests", box="outgoing", state="refused").json()["total"] == 1


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_server():
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    server.shutdown()
    server.server_close()


def test_webhook_is_signed_and_delivered(city, people, sessions, hook_server):
    url, received = hook_server
    grant_id = granted(city, people)
    r = post(city, "env_staff", f"/grants/{grant_id}/subscriptions", {"url": url})
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    assert post(city, "district_admin", f"/grants/{grant_id}/subscriptions", {"url": url}).status_code == 403
    with sessions() as s:  # the police push a change: the load queues the notice in its transaction
        police = auth.user_actor(s.scalar(select(User).where(User.username == "police_staff")))
        loading.rows_write(s, police, people, [person_row(100)])
        s.commit()
    with sessions() as s, httpx.Client(timeout=5) as client:
        assert sharing.deliveries_run(s, client) == {"delivered": 1, "retry": 0, "failed": 0}
        s.commit()
    ((headers, body),) = received
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-CityOS-Signature"] == f"sha256={expected}"
    assert headers["X-CityOS-Delivery"]
    notice = httpx.Response(200, content=body).json()
    assert notice["resource"] == people and notice["version"] == 2 and notice["counts"]["added"] == 1
    assert "rows" not in notice and "居民100" not in body.decode()
