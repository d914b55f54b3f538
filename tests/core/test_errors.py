"""Bad input gets a 4xx problem document naming the field, and changes nothing."""

from __future__ import annotations

from sqlalchemy import func, select

from cityos.core.models import AuditRecord, Department, User


def _counts(sessions):
    with sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Department, User))


def _is_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("/problems/")
    return body


def test_malformed_json_is_400(client, city, sessions):
    before = _counts(sessions)
    r = client.post("/api/departments", content=b'{"code": "x",', headers={
        **city.headers("admin"), "content-type": "application/json"})
    _is_problem(r, 400)
    assert _counts(sessions) == before


def test_unknown_field_is_named(client, city, sessions):
    before = _counts(sessions)
    r = client.post("/api/departments", headers=city.headers("admin"), json={
        "code": "220200-x", "name": "X", "kind": "bureau", "parent_code": "220200", "colour": "red"})
    body = _is_problem(r, 422)
    assert {"field": "colour", "reason": "unknown field / 未知字段"} in body["errors"]
    assert _counts(sessions) == before


def test_bad_value_names_field_and_reason(client, city):
    r = client.post("/api/users", headers=city.headers("admin"), json={
        "username": "bad user!", "password": "short", "department_code": "220200",
        "role": "department_staff"})
    body = _is_problem(r, 422)
    fields = {e["field"] for e in body["errors"]}
    assert {"username", "password"} <= fields


def test_invalid_id_number_says_what_is_wrong(client, city, sessions):
    before = _counts(sessions)
    r = client.post("/api/users", headers=city.headers("admin"), json={
        "username": "zhang3", "password": "long-enough-1", "department_code": "220200",
        "role": "resident", "id_number": "220202199001011230"})
    body = _is_problem(r, 422)
    assert body["errors"][0]["field"] == "id_number"
    assert "check digit" in body["errors"][0]["reason"]
    assert _counts(sessions) == before


def test_duplicate_is_409(client, city):
    r = client.post("/api/departments", headers=city.headers("admin"), json={
        "code": "220202", "name": "dup", "kind": "district", "parent_code": "220200",
        "admin_code": "220202"})
    body = _is_problem(r, 409)
    assert body["errors"][0]["field"] == "code"


def test_bad_query_parameter_is_named(client, city):
    body = _is_problem(client.get("/api/departments", params={"limit": 100000},
                                  headers=city.headers("admin")), 422)
    assert body["errors"][0]["field"] == "limit"


def test_oversized_body_is_413_and_changes_nothing(client, city, sessions, settings):
    before = _counts(sessions)
    big = b'{"name": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'
    r = client.post("/api/departments", content=big, headers={
        **city.headers("admin"), "content-type": "application/json"})
    _is_problem(r, 413)
    assert _counts(sessions) == before


def test_oversized_chunked_body_is_413(client, city, settings):
    def chunks():
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536

    r = client.post("/api/departments", content=chunks(), headers={
        **city.headers("admin"), "content-type": "application/json"})
    _is_problem(r, 413)


def test_unknown_route_and_wrong_method(client):
    _is_problem(client.get("/api/nothing-here"), 404)
    _is_problem(client.delete("/healthz"), 405)


def test_not_found_object(client, city):
    body = _is_problem(client.get("/api/departments/999999", headers=city.headers("admin")), 404)
    assert "999999" in body["detail"]


def test_failed_write_leaves_no_audit_record(client, city, sessions):
    headers = city.headers("admin")
    with sessions() as s:
        before = s.scalar(select(func.count()).select_from(AuditRecord))
    r = client.post("/api/departments", headers=headers, json={
        "code": "s1", "name": "S", "kind": "street", "parent_code": "220200-gaj"})
    assert r.status_code == 422
    with sessions() as s:
        after = s.scalar(select(func.count()).select_from(AuditRecord))
    assert after == before


def test_openapi_and_docs_are_served_locally(client):
    spec = client.get("/openapi.json").json()
    assert "/api/auth/token" in spec["paths"]
    html = client.get("/docs").text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()


def test_security_headers(client):
    r = client.get("/healthz")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
