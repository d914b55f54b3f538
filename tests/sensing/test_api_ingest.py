"""The compact ingest API: formats, all-or-nothing checking, access, credentials, back-pressure."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from cityos.app import create_app
from cityos.core import service as core_service
from cityos.core.access import SYSTEM
from cityos.core.models import AuditRecord
from cityos.core.settings import Settings
from cityos.sensing import api_ingest, ingest
from cityos.sensing.ingest import CATEGORY, COUNT, MEASUREMENT, TRUTH
from cityos.sensing.runtime import Runtime, runtime_of
from tests.conftest import PASSWORD, City, seed_small_city
from tests.sensing.helpers_ingest import Device, make_device, raw_counts, rollup_counts, stored, with_ingest

URL = "/api/sensing/observations"
HOUR = 3600_000


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def iso(ms: int, zone: dt.timezone = dt.timezone(dt.timedelta(hours=8))) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, zone).isoformat(timespec="milliseconds")


def stop_runtime(app: FastAPI) -> None:
    rt = getattr(app.state.platform, "sensing", None)
    if rt is not None:
        rt.stop()


@pytest.fixture
def ing(app: FastAPI, city: City) -> Iterator[City]:
    with_ingest(app)
    yield city
    stop_runtime(app)


@pytest.fixture
def dev(ing: City, sessions: sessionmaker[Session]) -> Device:
    """An 市环保局 station: a measurement, a count, a truth, a category and a multi stream."""
    with sessions() as s:
        return make_device(s, "220200-hbj", [MEASUREMENT, COUNT, TRUTH, CATEGORY, [MEASUREMENT, CATEGORY]],
                           credentials=True)


@pytest.fixture
def base() -> int:
    return (ingest.now_ms() - 5 * HOUR) // HOUR * HOUR


def post(city: City, body: Any, user: str = "env_staff", **kw: Any) -> Any:
    assert city.client is not None
    headers = kw.pop("headers", None) or city.headers(user)
    return city.client.post(kw.pop("url", URL), content=orjson.dumps(body), headers=headers, **kw)


def test_rows_and_columns_are_stored(ing: City, dev: Device, base: int, session: Session) -> None:
    m, c, truth, cat, multi = dev.streams
    body = [
        {"ds": m, "t": iso(base), "v": 12.5},
        {"ds": m, "t": base + 60_000, "v": 13},
        {"ds": c, "t": iso(base, dt.UTC).replace("+00:00", "Z"), "v": 7},
        {"ds": truth, "t": base, "v": True},
        {"ds": cat, "t": base, "v": "良"},
        {"ds": multi, "t": base, "v": [1.5, "N"]},
        {"ds": m, "t": [base + 120_000, iso(base + 180_000)], "v": [14.0, 15.25]},
    ]
    r = post(ing, body)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 8, "stored": 8, "duplicates": 0}
    got = stored(session)
    assert got[(m, base)] == 12.5 and got[(m, base + 180_000)] == 15.25 and got[(c, base)] == 7
    assert got[(truth, base)] is None and got[(multi, base)] is None
    js = dict(session.execute(text("SELECT datastream_id, result_json FROM sensor_observations "
                                   "WHERE result_json IS NOT NULL")).all())
    assert orjson.loads(js[truth]) is True and orjson.loads(js[cat]) == "良"
    assert orjson.loads(js[multi]) == [1.5, "N"]
    assert rollup_counts(session, 60) == raw_counts(session) == {m: 4, c: 1}
    # a single column object is a body too
    r = post(ing, {"ds": c, "t": [base + 1, base + 2], "v": [1, 2]})
    assert r.json() == {"accepted": 2, "stored": 2, "duplicates": 0}


def test_duplicates_are_not_stored_twice(ing: City, dev: Device, base: int, session: Session) -> None:
    m = dev.streams[0]
    body = [{"ds": m, "t": base + i * 1000, "v": i} for i in range(50)]
    assert post(ing, body).json() == {"accepted": 50, "stored": 50, "duplicates": 0}
    again = body[10:20] + [{"ds": m, "t": base + 99_000, "v": 1.0}, {"ds": m, "t": base + 99_000, "v": 2.0}]
    assert post(ing, again).json() == {"accepted": 12, "stored": 1, "duplicates": 11}
    got = stored(session, m)
    assert len(got) == 51 and got[(m, base + 99_000)] == 1.0  # within a batch, the first one wins
    assert rollup_counts(session, 60)[m] == rollup_counts(session, 86400)[m] == 51


def test_late_and_out_of_order_readings_are_accepted(ing: City, dev: Device, base: int,
                                                     session: Session) -> None:
    m = dev.streams[0]
    assert post(ing, [{"ds": m, "t": base + 3 * HOUR, "v": 3}]).json()["stored"] == 1
    late = [{"ds": m, "t": base + 2 * HOUR, "v": 2}, {"ds": m, "t": base, "v": 0},
            {"ds": m, "t": base + HOUR, "v": 1}]
    assert post(ing, late).json() == {"accepted": 3, "stored": 3, "duplicates": 0}
    assert sorted(stored(session, m)) == [(m, base + i * HOUR) for i in range(4)]
    assert rollup_counts(session, 3600)[m] == raw_counts(session)[m] == 4


def test_any_bad_reading_refuses_the_whole_batch(ing: City, dev: Device, base: int, session: Session) -> None:
    m, c, truth, cat, multi = dev.streams
    future = ingest.now_ms() + 3 * HOUR
    body = [
        {"ds": m, "t": base, "v": 1.0},  # fine, but must not be stored either
        {"ds": m, "t": "2026-01-01T10:00:00", "v": 1.0},
        {"ds": m, "t": future, "v": 1.0},
        {"ds": m, "t": base, "v": "high"},
        {"ds": 999_999, "t": base, "v": 1.0},
        {"ds": m, "t": base, "v": 1.0, "unit": "x"},
        {"ds": c, "t": base, "v": 1.5},
        {"ds": m, "t": base},
        "35.2",
        {"ds": str(m), "t": base, "v": 1.0},
        {"ds": multi, "t": base, "v": [1.0]},
        {"ds": truth, "t": "yesterday", "v": True},
        {"ds": m, "t": [base, base + 1], "v": [1.0, "x"]},
        {"ds": m, "t": [base], "v": [1.0, 2.0]},
        {"ds": True, "t": base, "v": 1.0},
    ]
    r = post(ing, body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    fields = [e["field"] for e in doc["errors"]]
    assert fields == ["[1].t", "[2].t", "[3].v", "[4].ds", "[5].unit", "[6].v", "[7].v", "[8]", "[9].ds",
                      "[10].v", "[11].t", "[12].v[1]", "[13].v", "[14].ds"]
    reasons = {e["field"]: e["reason"] for e in doc["errors"]}
    assert "time zone" in reasons["[1].t"] and "future" in reasons["[2].t"]
    assert "Datastream(999999) does not exist" in reasons["[4].ds"]
    assert doc["invalid_count"] == 14 and doc["not_listed"] == 0
    assert "nothing was stored" in doc["detail"]
    assert stored(session) == {}


def test_many_bad_readings_are_capped(ing: City, dev: Device, base: int, session: Session) -> None:
    body = {"ds": dev.streams[0], "t": [base + i for i in range(300)], "v": ["bad"] * 299 + [1.0]}
    doc = post(ing, body).json()
    assert doc["status"] == 422 and len(doc["errors"]) == api_ingest.MAX_ERRORS
    assert doc["errors"][0]["field"] == "v[0]"
    assert doc["invalid_count"] == 299 and doc["not_listed"] == 199
    assert stored(session) == {}


@pytest.mark.parametrize("body, status, field", [
    (b"[{", 400, "body"), (b'"x"', 422, "body"), (b'{"ds": 1, "t": 5, "v": 1}', 422, "t"),
])
def test_malformed_bodies(ing: City, body: bytes, status: int, field: str) -> None:
    assert ing.client is not None
    r = ing.client.post(URL, content=body, headers=ing.headers("env_staff"))
    assert r.status_code == status and r.json()["errors"][0]["field"] == field


def test_too_many_readings_is_413(ing: City, dev: Device, base: int, session: Session,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_ingest, "MAX_READINGS", 10)
    r = post(ing, {"ds": dev.streams[0], "t": [base + i for i in range(11)], "v": [1.0] * 11})
    assert r.status_code == 413 and "at most 10" in r.json()["detail"]
    assert stored(session) == {}


def test_oversize_body_is_413(settings: Settings, engine: Engine, sessions: sessionmaker[Session],
                              base: int) -> None:
    small = create_app(settings.model_copy(update={"max_body_bytes": 4096}), engine=engine)
    with_ingest(small)
    with sessions() as s:
        seed_small_city(s)
        d = make_device(s, "220200-hbj", [MEASUREMENT], credentials=True)
    assert d.key and d.secret
    try:
        with TestClient(small) as client:
            body = orjson.dumps([{"ds": d.streams[0], "t": base + i, "v": 1.0} for i in range(400)])
            r = client.post(URL, content=body, headers=basic(d.key, d.secret))
            assert r.status_code == 413 and r.json()["type"] == "/problems/too-large"
            r = client.post(URL, content=body[:2000].rsplit(b",{", 1)[0] + b"]", headers=basic(d.key, d.secret))
            assert r.status_code == 200, r.text
            with sessions() as s:
                assert len(stored(s)) == r.json()["stored"] > 0
    finally:
        stop_runtime(small)


def test_who_may_send(ing: City, dev: Device, base: int, sessions: sessionmaker[Session]) -> None:
    assert dev.key and dev.secret
    with sessions() as s:
        other = make_device(s, "220200-hbj", [MEASUREMENT], name="air-2", credentials=True)
        police = make_device(s, "220200-gaj", [MEASUREMENT], name="cam-1")
        raw_key, _ = core_service.apikey_create(s, SYSTEM, name="gw", department_code="220200-hbj",
                                                scopes=["sensing.observation.create"])
        s.commit()
    mine = [{"ds": dev.streams[0], "t": base, "v": 1.0}]
    assert post(ing, mine, headers=basic(dev.key, dev.secret)).json()["stored"] == 1
    # a device writes its own streams only; a wrong secret is 401, not anonymous
    r = post(ing, [{"ds": other.streams[0], "t": base, "v": 1.0}], headers=basic(dev.key, dev.secret))
    assert r.status_code == 403 and "another device" in r.json()["detail"]
    assert post(ing, mine, headers=basic(dev.key, "wrong")).status_code == 401
    assert post(ing, mine, headers=basic("dev_nosuchdevice", "x")).status_code == 401
    # users by role within their department, by bearer token or HTTP Basic; API keys by scope
    police_row = [{"ds": police.streams[0], "t": base, "v": 1.0}]
    assert post(ing, police_row, user="env_staff").status_code == 403
    assert post(ing, police_row, user="police_staff").json()["stored"] == 1
    assert post(ing, police_row, user="resident").status_code == 403
    assert post(ing, [{"ds": police.streams[0], "t": base + 1, "v": 1.0}],
                headers=basic("police_admin", PASSWORD)).json()["stored"] == 1
    assert post(ing, police_row, headers=basic("police_admin", "nope")).status_code == 401
    r = post(ing, [{"ds": other.streams[0], "t": base, "v": 2.0}], headers=basic("gateway", raw_key))
    assert r.json()["stored"] == 1
    assert post(ing, police_row, headers={"X-API-Key": raw_key}).status_code == 403
    assert ing.client is not None
    assert ing.client.post(URL, content=orjson.dumps(mine)).status_code == 401


def test_device_route(ing: City, dev: Device, base: int, sessions: sessionmaker[Session]) -> None:
    assert dev.key and dev.secret and ing.client is not None
    with sessions() as s:
        other = make_device(s, "220200-hbj", [MEASUREMENT], name="air-2", credentials=True)
    assert other.key and other.secret
    body = [{"ds": dev.streams[0], "t": base, "v": 1.0}]
    url = f"/api/sensing/devices/{dev.key}/readings"
    assert post(ing, body, url=url, headers=basic(dev.key, dev.secret)).json()["stored"] == 1
    assert post(ing, body, url=url, headers=basic(other.key, other.secret)).status_code == 403
    assert post(ing, body, url=url).status_code == 403  # a user is not the device
    assert ing.client.post(url, content=orjson.dumps(body)).status_code == 401


def test_credentials(ing: City, base: int, sessions: sessionmaker[Session], session: Session) -> None:
    with sessions() as s:
        d = make_device(s, "220200-hbj", [MEASUREMENT])
    url = f"/api/sensing/things/{d.thing_id}/credentials"
    assert ing.client is not None
    row = [{"ds": d.streams[0], "t": base, "v": 1.0}]
    # the writer has seen this stream without a device key; issuing must not leave that cached
    assert post(ing, row).json()["stored"] == 1
    r = ing.client.post(url, headers=ing.headers("env_admin"))
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    first = r.json()
    assert first["device_key"].startswith("dev_") and len(first["secret"]) >= 24
    assert post(ing, [{"ds": d.streams[0], "t": base + 1, "v": 1.0}],
                headers=basic(first["device_key"], first["secret"])).json()["stored"] == 1
    second = ing.client.post(url, headers=ing.headers("env_staff")).json()
    assert second["device_key"] == first["device_key"] and second["secret"] != first["secret"]
    assert post(ing, row, headers=basic(first["device_key"], first["secret"])).status_code == 401
    assert post(ing, row, headers=basic(second["device_key"], second["secret"])).json()["duplicates"] == 1
    assert ing.client.post(url, headers=ing.headers("police_admin")).status_code == 403
    assert ing.client.post(url, headers=basic(second["device_key"], second["secret"])).status_code == 403
    assert ing.client.post("/api/sensing/things/999999/credentials",
                           headers=ing.headers("env_admin")).status_code == 404
    records = session.execute(select(AuditRecord).where(AuditRecord.action == "sensing.device.credential")
                              .order_by(AuditRecord.seq)).scalars().all()
    assert [(a.actor, a.object_id) for a in records] == [("env_admin", str(d.thing_id)),
                                                         ("env_staff", str(d.thing_id))]
    assert not any(first["secret"] in str(a.detail) or second["secret"] in str(a.detail) for a in records)


def test_stats(ing: City, dev: Device, base: int) -> None:
    assert ing.client is not None
    post(ing, [{"ds": dev.streams[0], "t": base, "v": 1.0}])
    post(ing, [{"ds": dev.streams[0], "t": base, "v": "x"}])
    r = ing.client.get("/api/sensing/ingest/stats", headers=ing.headers("admin"))
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["stored"] == 1 and stats["batches"] == 1 and stats["device_errors"] == {"user": 1}
    assert stats["pending"] == 0 and stats["max_pending"] > 0
    assert ing.client.get("/api/sensing/ingest/stats", headers=ing.headers("auditor")).status_code == 200
    assert ing.client.get("/api/sensing/ingest/stats", headers=ing.headers("env_admin")).status_code == 403
    assert ing.client.get("/api/sensing/ingest/stats").status_code == 401


def _lock_observations(engine: Engine) -> Any:
    """Hold the observations table so the writer's next COMMIT has to wait."""
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.execute(text("LOCK TABLE sensor_observations IN EXCLUSIVE MODE"))
    return conn


def test_full_writer_is_429(ing: City, app: FastAPI, dev: Device, base: int, engine: Engine,
                            session: Session) -> None:
    platform = app.state.platform
    stop_runtime(app)
    platform.sensing = Runtime(ingest.Writer(engine, max_pending=1))
    writer = runtime_of(platform).writer
    ing.headers("env_staff")  # sign in first: a login writes the audit log, which the lock would hold up
    held = _lock_observations(engine)
    try:
        waiting = writer.submit([(dev.streams[0], base, None, None, 1.0, None, None, None, None, None, None)])
        r = post(ing, [{"ds": dev.streams[0], "t": base + 1, "v": 2.0}])
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1" and r.json()["type"] == "/problems/busy"
    finally:
        held.rollback()
        held.close()
    assert waiting.result(30).ids
    assert stored(session) == {(dev.streams[0], base): 1.0}
    assert writer.stats.refused_busy == 1
    assert post(ing, [{"ds": dev.streams[0], "t": base + 1, "v": 2.0}]).json()["stored"] == 1


def _info(ds: int, typ: str) -> ingest.StreamInfo:
    return ingest.StreamInfo(ds, "single", 1, "/1/", 1, None, typ, 0, (), 7)


TRICKY_TIMES: list[Any] = [0, -1, 1_700_000_000_000, 10**15, 1.5e12, True, None, "2026-01-01T00:00:00Z",
                           "2026-01-01T08:00:00+08:00", "2026-01-01T00:00:00", "2099-01-01T00:00:00Z",
                           "1969-12-31T23:59:59Z", "soon", {}]  # (a list t makes a column block)
TRICKY_VALUES: list[Any] = [1, 1.5, -0.0, True, False, None, "1", [1], {"a": 1}, 2**62]


@pytest.mark.parametrize("typ", [MEASUREMENT, COUNT, TRUTH, CATEGORY, ingest.ANY])
def test_fast_path_agrees_with_ingest_checks(typ: str) -> None:
    """The route's fast path must accept and refuse exactly what ingest.compact_row does."""
    now = ingest.now_ms()
    infos = {5: _info(5, typ)}
    for t in TRICKY_TIMES:
        for v in TRICKY_VALUES:
            item = {"ds": 5, "t": t, "v": v}
            try:
                want: Any = ingest.compact_row(infos[5], item, "[0]", now)
            except ingest.Invalid as exc:
                want = [e.as_dict() for e in exc.errors]
            for body, single in (([item], False), ({"ds": 5, "t": [t], "v": [v]}, True)):
                elements = body if isinstance(body, list) else [body]
                try:
                    got: Any = api_ingest.rows_of(elements, infos, now, single)[0]
                except ingest.Invalid as exc:
                    got = [e.as_dict() for e in exc.errors]
                if isinstance(want, tuple) or single is False:
                    assert got == want, (t, v)
                else:  # the same reason, named by its place in the columns
                    assert [e["reason"] for e in got] == [e["reason"] for e in want], (t, v)
