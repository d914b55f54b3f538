"""The time series API at /api/sensing: overview, series, latest and exports over HTTP, with its
problem documents and department scoping, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cityos.app import create_app
from cityos.core.settings import Settings
from cityos.sensing import ingest
from cityos.sensing.api import router
from cityos.sensing.ingest import Writer
from tests.conftest import City
from tests.sensing.helpers_timeseries import HOUR, MIN, T0, make_stream, make_thing, readings

API = "/api/sensing"


@pytest.fixture
def app(settings: Settings, engine: Engine) -> FastAPI:
    app = create_app(settings, engine=engine)
    if not any(getattr(r, "path", "") == f"{API}/datastreams/{{datastream_id}}/series" for r in app.routes):
        app.include_router(router)
    return app


@pytest.fixture
def writer(engine: Engine) -> Iterator[Writer]:
    w = Writer(engine)
    yield w
    w.stop()


@pytest.fixture
def streams(city: City, sessions: sessionmaker[Session], writer: Writer) -> dict[str, Any]:
    """An air station of 市环保局 with a numeric and a text stream, and a police camera."""
    with sessions() as s:
        air = make_thing(s, "江南空气站", lonlat=(126.55, 43.84), last_seen_at=ingest.now_ms())
        pm = make_stream(s, air, interval_seconds=60)
        note = make_stream(s, air, "备注", observation_type=ingest.ANY, symbol="")
        cam = make_stream(s, make_thing(s, "卡口摄像头", "220200-gaj", kind="camera"), "车流量", symbol="辆")
        s.commit()
        ids = {"air": air.id, "pm": pm.id, "note": note.id, "cam": cam.id}
    writer.write_sync(readings(ids["pm"], [(T0 + i * MIN, float(i % 10)) for i in range(180)])
                      + readings(ids["note"], [(T0, {"text": "校准"})])
                      + readings(ids["cam"], [(T0, 12.0)]))
    return ids


def _problem(r: Any, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == field, r.json()


def test_series_over_http(city: City, streams: dict[str, Any]) -> None:
    c, h = city.client, city.headers("env_staff")
    assert c is not None
    url = f"{API}/datastreams/{streams['pm']}/series"
    r = c.get(url, params={"start": "2026-01-01T08:00:00+08:00", "end": "2026-01-01T00:05:00Z", "grain": "raw"},
              headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["start"] == "2026-01-01T00:00:00.000Z" and body["grain"] == "raw"
    assert [p["value"] for p in body["points"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # epoch milliseconds work too; hourly aggregates of three hours
    r = c.get(url, params={"start": T0, "end": T0 + 3 * HOUR, "grain": "1h", "fn": "count,mean,max"}, headers=h)
    assert r.json()["points"] == [{"time": f"2026-01-01T0{i}:00:00.000Z", "count": 60, "mean": 4.5, "max": 9.0}
                                  for i in range(3)]
    r = c.get(url, params={"start": T0, "end": T0 + 3 * HOUR, "every": "90m", "fn": "count"}, headers=h)
    assert [p["count"] for p in r.json()["points"]] == [90, 90]
    r = c.get(url, params={"start": T0, "end": T0 + 3 * HOUR, "max_points": 100}, headers=h)
    assert r.json()["grain"] == "1h" and len(r.json()["points"]) == 3
    r = c.get(url, params={"start": T0, "end": T0 + 3 * HOUR, "grain": "raw", "limit": 50}, headers=h)
    assert len(r.json()["points"]) == 50 and r.json()["next"] == "2026-01-01T00:50:00.000Z"
    r = c.get(f"{API}/datastreams/{streams['note']}/series", params={"start": T0, "end": T0 + HOUR}, headers=h)
    assert r.json()["points"] == [{"time": "2026-01-01T00:00:00.000Z", "result": {"text": "校准"}}]


def test_series_problems_name_the_field(city: City, streams: dict[str, Any]) -> None:
    c, h = city.client, city.headers("env_staff")
    assert c is not None
    url = f"{API}/datastreams/{streams['pm']}/series"
    _problem(c.get(url, params={"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, headers=h),
             422, "start")
    _problem(c.get(url, params={"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00Z"}, headers=h),
             422, "start")
    _problem(c.get(url, params={"start": "yesterday"}, headers=h), 422, "start")
    _problem(c.get(url, params={"grain": "weekly"}, headers=h), 422, "grain")
    _problem(c.get(url, params={"every": "7x"}, headers=h), 422, "every")
    _problem(c.get(url, params={"fn": "median"}, headers=h), 422, "fn")
    _problem(c.get(url, params={"limit": 0}, headers=h), 422, "limit")
    _problem(c.get(f"{API}/latest", params={"datastreams": "1,x"}, headers=h), 422, "datastreams")
    _problem(c.get(f"{API}/latest", params={"datastreams": ",".join(map(str, range(1, 1002)))}, headers=h),
             422, "datastreams")
    _problem(c.get(f"{API}/latest", headers=h), 422, "datastreams")
    _problem(c.get(f"{API}/things", params={"status": "sleeping"}, headers=h), 422, "status")
    _problem(c.get(f"{API}/datastreams/{streams['pm']}/export.csv", params={"grain": "auto"}, headers=h),
             422, "grain")


def test_other_departments_streams_are_not_found(city: City, streams: dict[str, Any]) -> None:
    c = city.client
    assert c is not None
    env, police = city.headers("env_staff"), city.headers("police_staff")
    cam = streams["cam"]
    for url in (f"{API}/datastreams/{cam}/series", f"{API}/datastreams/{cam}/export.csv",
                f"{API}/datastreams/{cam}/export.parquet", f"{API}/latest?datastreams={cam}",
                f"{API}/latest?thing={streams['air'] + 1}"):
        hidden, missing = c.get(url, headers=env), c.get(url.replace(str(cam), "987654"), headers=env)
        assert hidden.status_code == 404, url
        assert hidden.json()["type"] == "/problems/not-found"
        if "thing" not in url:
            assert missing.status_code == 404
    assert c.get(f"{API}/datastreams/{cam}/series", headers=police).status_code == 200
    assert c.get(f"{API}/datastreams/{cam}/series").status_code == 401
    assert c.get(f"{API}/datastreams/{cam}/series", headers=city.headers("resident")).status_code == 403
    assert c.get(f"{API}/things").status_code == 401
    names = {t["name"] for t in c.get(f"{API}/things", headers=env).json()["items"]}
    assert names == {"江南空气站"}
    both = c.get(f"{API}/things", headers=city.headers("auditor")).json()
    assert both["total"] == 2


def test_things_status_and_latest(city: City, streams: dict[str, Any]) -> None:
    c, h = city.client, city.headers("env_admin")
    assert c is not None
    body = c.get(f"{API}/things", params={"limit": 1, "offset": 0, "q": "江南"}, headers=h).json()
    assert body["total"] == 1 and body["limit"] == 1
    item = body["items"][0]
    assert item["status"] == "online" and (item["lon"], item["lat"]) == (126.55, 43.84)
    assert item["department"] == {"code": "220200-hbj", "name": "市环保局"}
    assert [d["name"] for d in item["datastreams"]] == ["江南空气站 PM2.5", "江南空气站 备注"]
    assert item["datastreams"][0]["last_value"] == 9.0
    assert c.get(f"{API}/things/status", headers=h).json() == {"online": 1, "offline": 0, "alerting": 0,
                                                              "total": 1}
    items = c.get(f"{API}/latest", params={"thing": streams["air"]}, headers=h).json()["items"]
    assert items == [
        {"datastream_id": streams["pm"], "time": "2026-01-01T02:59:00.000Z", "value": 9.0, "result": 9.0},
        {"datastream_id": streams["note"], "time": "2026-01-01T00:00:00.000Z", "value": None,
         "result": {"text": "校准"}},
    ]
    one = c.get(f"{API}/latest", params={"datastreams": str(streams["pm"])}, headers=h).json()["items"]
    assert one == items[:1]


def test_exports_download(city: City, streams: dict[str, Any]) -> None:
    c, h = city.client, city.headers("env_staff")
    assert c is not None
    url = f"{API}/datastreams/{streams['pm']}"
    r = c.get(f"{url}/export.csv", params={"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z"},
              headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f'filename="datastream-{streams["pm"]}-raw.csv"' in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert len(rows) == 60 and rows[0]["time"] == "2026-01-01T00:00:00.000Z" and rows[0]["value"] == "0.0"

    r = c.get(f"{url}/export.parquet", params={"grain": "1h", "fn": "count,min,max,mean,last"}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(r.content))
    assert table.column_names == ["time", "count", "min", "max", "mean", "last"]
    assert table.column("count").to_pylist() == [60, 60, 60]
    assert str(table.schema.field("time").type) == "timestamp[ms, tz=UTC]"
    r = c.get(f"{url}/export.parquet", headers=h)  # everything stored, raw
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 180 and table.column("value").to_pylist()[:3] == [0.0, 1.0, 2.0]


def test_retention_and_interval_of_a_stream_are_set_by_its_department(city, client, sessions):
    from tests.sensing.conftest import make_thing as thing_with_streams

    with sessions() as s:
        _, (ds,) = thing_with_streams(s)
    url = f"/api/sensing/datastreams/{ds.id}"
    r = client.patch(url, json={"retention_days": 30, "interval_seconds": 60}, headers=city.headers("env_staff"))
    assert r.status_code == 200, r.text
    assert r.json() == {"id": ds.id, "retention_days": 30, "interval_seconds": 60}
    r = client.patch(url, json={"retention_days": 0}, headers=city.headers("env_staff"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "retention_days"
    r = client.patch(url, json={"retention": 3}, headers=city.headers("env_staff"))
    assert r.status_code == 422
    r = client.patch(url, json={"retention_days": None}, headers=city.headers("env_staff"))
    assert r.status_code == 200 and r.json()["retention_days"] is None
    assert client.patch(url, json={"retention_days": 5}, headers=city.headers("police_staff")).status_code == 404
    assert client.patch(url, json={"retention_days": 5}, headers=city.headers("auditor")).status_code == 403
