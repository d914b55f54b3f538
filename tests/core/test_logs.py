"""Secrets and ID numbers never reach the logs or the audit trail."""

from __future__ import annotations

import logging

from sqlalchemy import select

from cityos.core.logs import RedactingFilter, redact
from cityos.core.models import AuditRecord

ID = "22020219900307006X"
PHONE = "13912345678"
SECRET_PW = "Sup3r-secret-pw"


def test_redact_masks_ids_phones_tokens_and_passwords():
    line = f"id={ID} phone {PHONE} Authorization: Bearer abc.def-123 password={SECRET_PW}"
    out = redact(line)
    for leaked in (ID, PHONE, "abc.def-123", SECRET_PW):
        assert leaked not in out
    assert "220202********006X" in out


def test_nothing_sensitive_in_logs_or_audit(client, city, sessions, caplog):
    handler_filter = RedactingFilter()
    caplog.handler.addFilter(handler_filter)
    caplog.set_level(logging.DEBUG)
    headers = city.headers("admin")
    r = client.post("/api/users", headers=headers, json={
        "username": "wang5", "password": SECRET_PW, "department_code": "220202001",
        "role": "resident", "id_number": ID, "phone": PHONE})
    assert r.status_code == 201
    client.post("/api/users/lookup", headers=headers, json={"id_number": ID})
    client.post("/api/auth/token", data={"username": "wang5", "password": SECRET_PW})
    client.post("/api/auth/token", data={"username": "wang5", "password": "wrong-" + SECRET_PW})
    logging.getLogger("cityos.test").warning("user said id %s and key %s", ID, headers["Authorization"])
    text = caplog.text
    token = headers["Authorization"].split()[1]
    for leaked in (ID, PHONE, SECRET_PW, token):
        assert leaked not in text
    with sessions() as s:
        records = s.scalars(select(AuditRecord)).all()
    dump = " ".join(f"{r.detail} {r.purpose} {r.object_id} {r.actor}" for r in records)
    for leaked in (ID, PHONE, SECRET_PW, token):
        assert leaked not in dump
    caplog.handler.removeFilter(handler_filter)


def test_access_log_never_has_query_strings(client, city, caplog):
    caplog.set_level(logging.INFO, logger="cityos.access")
    client.get("/api/users", params={"q": ID}, headers=city.headers("admin"))
    lines = [r.getMessage() for r in caplog.records if r.name == "cityos.access"]
    assert lines and all(ID not in line and "?" not in line for line in lines)
