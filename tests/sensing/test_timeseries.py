"""Time series service: rollups agree with raw readings, auto grain, latest, exports, retention,
the devices overview and access, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from cityos.core.access import ANONYMOUS
from cityos.core.errors import CityOSError, Forbidden, Invalid, NotFound, Unauthorized
from cityos.core.models import AuditRecord
from cityos.sensing import ingest, timeseries
from cityos.sensing.ingest import Writer
from cityos.sensing.models import Alert, Observation, Rollup, Rule
from tests.conftest import seed_small_city
from tests.sensing.helpers_timeseries import (
    DAY,
    HOUR,
    MIN,
    T0,
    actor_of,
    make_stream,
    make_thing,
    readings,
)


@pytest.fixture
def writer(engine: Engine) -> Iterator[Writer]:
    w = Writer(engine)
    yield w
    w.stop()


@pytest.fixture
def seeded(session: Session) -> Session:
    seed_small_city(session)
    return session


def _raw_values(session: Session, ds: int) -> list[tuple[int, float]]:
    return [(t, v) for t, v in session.execute(
        select(Observation.phenomenon_time, Observation.result_number)
        .where(Observation.datastream_id == ds).order_by(Observation.phenomenon_time))]


def _expected(raw: list[tuple[int, float]], every: int, start: int, end: int) -> dict[int, dict[str, Any]]:
    """Aggregates computed from raw readings (the reference the rollups must match)."""
    out: dict[int, dict[str, Any]] = {}
    for t, v in raw:
        b = t - t % every
        if b < start - start % every or b >= end:
            continue
        g = out.setdefault(b, {"count": 0, "min": v, "max": v, "sum": 0.0, "lt": t, "last": v})
        g["count"] += 1
        g["min"], g["max"] = min(g["min"], v), max(g["max"], v)
        g["sum"] += v
        if t >= g["lt"]:
            g["lt"], g["last"] = t, v
    return out


def test_rollups_agree_with_raw_readings_written_late_and_out_of_order(seeded: Session, writer: Writer) -> None:
    session = seeded
    ds = make_stream(session, make_thing(session, "一号站"))
    session.commit()
    rng = random.Random(5)
    times = sorted(rng.sample(range(T0, T0 + 3 * DAY, 7_000), 3000))
    points = [(t, round(rng.uniform(-20, 80), 3)) for t in times]
    late = points[::3]  # written after the rest, and shuffled
    rest = [p for p in points if p not in late]
    rng.shuffle(late)
    for i in range(0, len(rest), 700):
        writer.write_sync(readings(ds.id, rest[i:i + 700]))
    for i in range(0, len(late), 150):
        writer.write_sync(readings(ds.id, late[i:i + 150]))
    again = writer.write_sync(readings(ds.id, points[:200]))  # repeats change nothing
    assert again.duplicates == 200 and not again.new
    admin = actor_of(session, "admin")
    raw = _raw_values(session, ds.id)
    assert len(raw) == 3000
    start, end = T0 + 5 * HOUR + 17 * MIN, T0 + 2 * DAY + 3 * HOUR
    for grain, every, width in [("1m", None, MIN), ("1h", None, HOUR), ("1d", None, DAY),
                                ("auto", "15m", 15 * MIN), ("auto", "90m", 90 * MIN), ("1h", "6h", 6 * HOUR)]:
        got = timeseries.series(session, admin, ds.id, start_ms=start, end_ms=end, grain=grain, every=every,
                                fn="count,min,max,sum,mean,last")
        want = _expected(raw, width, start, end)
        assert [p["time"] for p in got["points"]] == [ingest.ms_to_iso(b) for b in sorted(want)], grain
        for p, b in zip(got["points"], sorted(want), strict=True):
            w = want[b]
            assert (grain, every, p["count"]) == (grain, every, w["count"]) and p["min"] == w["min"] and p["max"] == w["max"]
            assert p["sum"] == pytest.approx(w["sum"]) and p["mean"] == pytest.approx(w["sum"] / w["count"])
            assert p["last"] == w["last"]
    many = timeseries.aggregate_many(session, admin, [ds.id], start, end, "1h", "mean")
    want = _expected(raw, HOUR, start, end)
    assert [b for b, _ in many[ds.id]] == sorted(want)
    assert [v for _, v in many[ds.id]] == pytest.approx([want[b]["sum"] / want[b]["count"] for b in sorted(want)])


def test_raw_series_auto_grain_limits_and_non_numeric(seeded: Session, writer: Writer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    session = seeded
    thing = make_thing(session, "二号站")
    ds = make_stream(session, thing)
    door = make_stream(session, thing, "门状态", observation_type=ingest.CATEGORY, symbol="")
    session.commit()
    writer.write_sync(readings(ds.id, [(T0 + i * 30_000, float(i)) for i in range(3 * 24 * 120)]))
    writer.write_sync(readings(door.id, [(T0, "open"), (T0 + MIN, "closed")]))
    admin = actor_of(session, "admin")

    got = timeseries.series(session, admin, ds.id, start_ms=T0, end_ms=T0 + 10 * MIN, grain="raw")
    assert got["grain"] == "raw" and got["datastream"]["unit"] == "μg/m³"
    assert got["points"][:2] == [{"time": "2026-01-01T00:00:00.000Z", "value": 0.0},
                                 {"time": "2026-01-01T00:00:30.000Z", "value": 1.0}]
    assert len(got["points"]) == 20
    # auto: raw when zoomed in, then minute, hour, day rollups as the range grows
    assert timeseries.series(session, admin, ds.id, start_ms=T0, end_ms=T0 + HOUR)["grain"] == "raw"
    assert timeseries.series(session, admin, ds.id, start_ms=T0, end_ms=T0 + 3 * DAY,
                             max_points=2000)["grain"] == "1h"
    assert timeseries.series(session, admin, ds.id, start_ms=T0, end_ms=T0 + 3 * DAY,
                             max_points=5000)["grain"] == "1m"
    assert timeseries.series(session, admin, ds.id, start_ms=T0, end_ms=T0 + 3 * DAY,
                             max_points=50)["grain"] == "1d"
    assert timeseries.series(session, admin, door.id, start_ms=T0, end_ms=T0 + 3 * DAY)["grain"] == "raw"
    # pages with limit and next
    page = timeseries.series(session, admin, ds.id, start_ms=T0, end_ms=T0 + DAY, grain="raw", limit=100)
    assert len(page["points"]) == 100 and page["next"] == "2026-01-01T00:50:00.000Z"
    # a range over the raw cap is refused with a hint, unless paged
    monkeypatch.setattr(timeseries, "MAX_ROWS", 500)
    with pytest.raises(Invalid) as exc:
        timeseries.series(session, admin, ds.id, start_ms=T0, end_ms=T0 + DAY, grain="raw", max_points=100)
    assert exc.value.errors[0].field == "grain" and "1h" in exc.value.detail
    monkeypatch.undo()
    # non-numeric results come back as JSON values, and have no aggregates
    got = timeseries.series(session, admin, door.id, start_ms=T0, end_ms=T0 + HOUR, grain="raw")
    assert [p["result"] for p in got["points"]] == ["open", "closed"]
    with pytest.raises(Invalid):
        timeseries.series(session, admin, door.id, start_ms=T0, end_ms=T0 + HOUR, grain="1h")


BAD_SERIES = [
    ({"start_ms": T0 + HOUR, "end_ms": T0}, "start"),
    ({"grain": "5m"}, "grain"),
    ({"grain": "raw", "every": "15m"}, "every"),
    ({"every": "90s"}, "every"),
    ({"every": "soon"}, "every"),
    ({"grain": "1h", "every": "90m"}, "every"),
    ({"fn": "median"}, "fn"),
    ({"grain": "1m", "start_ms": 0}, "grain"),  # over 100,000 buckets
    ({"limit": 0}, "limit"),
]


def test_series_parameters_are_checked(seeded: Session) -> None:
    ds = make_stream(seeded, make_thing(seeded, "三号站"))
    admin = actor_of(seeded, "admin")
    for kw, field in BAD_SERIES:
        args: dict[str, Any] = {"start_ms": T0, "end_ms": T0 + DAY} | kw
        with pytest.raises(Invalid) as exc:
            timeseries.series(seeded, admin, ds.id, **args)
        assert exc.value.errors[0].field == field, kw


def test_access_follows_departments_and_hides_other_streams(seeded: Session, writer: Writer) -> None:
    session = seeded
    env = make_stream(session, make_thing(session, "环保站"))
    police = make_stream(session, make_thing(session, "治安探头", "220200-gaj", kind="camera"))
    session.commit()
    writer.write_sync(readings(env.id, [(T0, 1.0)]) + readings(police.id, [(T0, 2.0)]))
    env_staff, auditor = actor_of(session, "env_staff"), actor_of(session, "auditor")
    args = {"start_ms": T0, "end_ms": T0 + HOUR}
    assert timeseries.series(session, env_staff, env.id, **args)["points"]
    with pytest.raises(NotFound) as missing:
        timeseries.series(session, env_staff, 99999, **args)
    with pytest.raises(NotFound) as hidden:
        timeseries.series(session, env_staff, police.id, **args)
    assert hidden.value.status == missing.value.status == 404
    with pytest.raises(NotFound):
        timeseries.latest(session, env_staff, [env.id, police.id])
    with pytest.raises(NotFound):
        timeseries.latest(session, env_staff, thing_id=police.thing_id)
    with pytest.raises(NotFound):
        timeseries.aggregate_many(session, env_staff, [env.id, police.id], T0, T0 + DAY, "1h", "mean")
    with pytest.raises(NotFound):
        timeseries.export_csv(session, env_staff, police.id)
    assert len(timeseries.latest(session, auditor, [env.id, police.id])) == 2
    with pytest.raises(Forbidden):
        timeseries.series(session, actor_of(session, "resident"), env.id, **args)
    with pytest.raises(Unauthorized):
        timeseries.things_overview(session, ANONYMOUS)
    assert {t["name"] for t in timeseries.things_overview(session, env_staff)["items"]} == {"环保站"}
    assert timeseries.status_counts(session, env_staff)["total"] == 1
    assert timeseries.status_counts(session, auditor)["total"] == 2
    with pytest.raises(Invalid) as exc:
        timeseries.latest(session, auditor, list(range(1, 1002)))
    assert exc.value.errors[0].field == "datastreams"


def test_latest_of_many_streams_and_of_a_thing(seeded: Session, writer: Writer) -> None:
    session = seeded
    thing = make_thing(session, "四号站")
    a, b = make_stream(session, thing, "PM10"), make_stream(session, thing, "风向", observation_type=ingest.ANY)
    quiet = make_stream(session, thing, "噪声")
    session.commit()
    writer.write_sync(readings(a.id, [(T0 + MIN, 5.0), (T0, 3.0)]) + readings(b.id, [(T0, {"deg": 90})]))
    writer.write_sync(readings(a.id, [(T0 - HOUR, 99.0)]))  # a late reading is not the latest
    admin = actor_of(session, "admin")
    got = timeseries.latest(session, admin, [a.id, b.id, quiet.id])
    assert got == [
        {"datastream_id": a.id, "time": "2026-01-01T00:01:00.000Z", "value": 5.0, "result": 5.0},
        {"datastream_id": b.id, "time": "2026-01-01T00:00:00.000Z", "value": None, "result": {"deg": 90}},
        {"datastream_id": quiet.id, "time": None, "value": None, "result": None},
    ]
    assert timeseries.latest(session, admin, thing_id=thing.id) == got
    with pytest.raises(NotFound):
        timeseries.latest(session, admin, thing_id=424242)


def test_exports_stream_csv_and_parquet(seeded: Session, writer: Writer) -> None:
    session = seeded
    thing = make_thing(session, "五号站")
    ds = make_stream(session, thing)
    door = make_stream(session, thing, "门状态", observation_type=ingest.CATEGORY)
    session.commit()
    points = [(T0 + i * 10 * MIN, float(i % 7)) for i in range(25)]
    writer.write_sync(readings(ds.id, points) + readings(door.id, [(T0, "开")]))
    admin = actor_of(session, "admin")

    exp = timeseries.export_csv(session, admin, ds.id, chunk=4)
    chunks = list(exp.chunks)
    assert len(chunks) > 5 and chunks[0].startswith(b"\xef\xbb\xbftime,")
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode("utf-8-sig"))))
    assert len(rows) == 25 and rows[1] == {"time": "2026-01-01T00:10:00.000Z", "time_end": "", "value": "1.0",
                                           "result": ""}
    text = b"".join(timeseries.export_csv(session, admin, door.id).chunks).decode("utf-8-sig")
    assert list(csv.reader(io.StringIO(text)))[1] == ["2026-01-01T00:00:00.000Z", "", "", '"开"']

    exp = timeseries.export_parquet(session, admin, ds.id, start_ms=T0 + HOUR, end_ms=T0 + 3 * HOUR, chunk=5)
    assert exp.filename.endswith(".parquet")
    table = pq.read_table(io.BytesIO(b"".join(exp.chunks)))
    assert str(table.schema.field("time").type) == "timestamp[ms, tz=UTC]"
    assert str(table.schema.field("value").type) == "double"
    assert table.num_rows == 12 and table.column("value").to_pylist()[:3] == [6.0, 0.0, 1.0]
    assert table.schema.metadata[b"datastream_id"] == str(ds.id).encode()

    exp = timeseries.export_parquet(session, admin, ds.id, grain="1h", fn="count,mean,last", chunk=1)
    table = pq.read_table(io.BytesIO(b"".join(exp.chunks)))
    assert table.column_names == ["time", "count", "mean", "last"]
    assert str(table.schema.field("count").type) == "int64"
    assert table.column("count").to_pylist() == [6, 6, 6, 6, 1]
    assert table.column("mean").to_pylist()[0] == pytest.approx(sum(v for _, v in points[:6]) / 6)
    text = b"".join(timeseries.export_csv(session, admin, ds.id, grain="1h", every="2h", fn="max").chunks)
    assert text.decode("utf-8-sig").splitlines() == ["time,max", "2026-01-01T00:00:00.000Z,6.0",
                                                     "2026-01-01T02:00:00.000Z,6.0", "2026-01-01T04:00:00.000Z,3.0"]
    with pytest.raises(Invalid):
        timeseries.export_csv(session, admin, door.id, grain="1h")


def test_retention_deletes_old_readings_keeps_rollups_and_audits(seeded: Session, writer: Writer) -> None:
    session = seeded
    thing = make_thing(session, "六号站")
    short, forever = make_stream(session, thing, retention_days=2), make_stream(session, thing, "PM10")
    session.commit()
    pts = [(T0 + i * HOUR, float(i)) for i in range(24 * 5)]
    writer.write_sync(readings(short.id, pts) + readings(forever.id, pts))
    rollups_before = session.scalar(select(func.count()).select_from(Rollup))
    now = T0 + 5 * DAY
    assert timeseries.apply_retention(session, now, chunk=7) == {short.id: 72}
    left = _raw_values(session, short.id)
    assert len(left) == 48 and left[0][0] == now - 2 * DAY
    assert len(_raw_values(session, forever.id)) == 120
    assert session.scalar(select(func.count()).select_from(Rollup)) == rollups_before
    day = timeseries.series(session, actor_of(session, "admin"), short.id, start_ms=T0, end_ms=T0 + DAY,
                            grain="1d", fn="count")
    assert day["points"] == [{"time": "2026-01-01T00:00:00.000Z", "count": 24}]
    # "auto" charts a pruned period from the rollups, not from the (deleted) raw readings
    auto = timeseries.series(session, actor_of(session, "admin"), short.id, start_ms=T0, end_ms=T0 + DAY)
    assert auto["grain"] == "1m" and len(auto["points"]) == 24
    rec = session.scalars(select(AuditRecord).where(AuditRecord.action == "sensing.retention")).one()
    assert rec.object_id == str(short.id) and rec.detail["deleted"] == 72
    assert timeseries.apply_retention(session, now) == {}


def test_things_overview_status_filters_and_pages(seeded: Session, writer: Writer) -> None:
    session = seeded
    now = T0 + DAY
    online = make_thing(session, "甲 在线", lonlat=(126.55, 43.84), last_seen_at=now - 2 * MIN)
    slow = make_thing(session, "乙 慢站", last_seen_at=now - 20 * MIN)  # 600 s interval: still online
    offline = make_thing(session, "丙 离线", kind="water", last_seen_at=now - 4 * MIN)
    make_thing(session, "丁 未上线", kind="water")
    alerting = make_thing(session, "戊 告警", "220200-gaj", kind="camera", last_seen_at=now)
    on_ds = make_stream(session, online, interval_seconds=60)
    make_stream(session, online, "PM10", interval_seconds=300)
    make_stream(session, slow, interval_seconds=600)
    make_stream(session, offline)
    cam = make_stream(session, alerting, "人数", symbol="人")
    rule = Rule(department_id=alerting.department_id, name="人数过多", kind="threshold", target_type="datastream",
                target_id=cam.id, params={"above": 10}, created_by="test")
    session.add(rule)
    session.flush()
    session.add(Alert(rule_id=rule.id, datastream_id=cam.id, thing_id=alerting.id,
                      department_id=alerting.department_id, kind="threshold", severity="warning",
                      message="人数过多", observed_at=now))
    session.commit()
    writer.write_sync(readings(on_ds.id, [(now - 2 * MIN, 42.0)]))
    admin = actor_of(session, "admin")

    got = timeseries.things_overview(session, admin, now_ms=now)
    assert got["total"] == 5
    by = {t["name"]: t for t in got["items"]}
    assert {n: t["status"] for n, t in by.items()} == {
        "甲 在线": "online", "乙 慢站": "online", "丙 离线": "offline", "丁 未上线": "offline", "戊 告警": "alerting"}
    first = by["甲 在线"]
    assert (first["lon"], first["lat"]) == (126.55, 43.84) and first["department"] == {
        "code": "220200-hbj", "name": "市环保局"}
    assert first["datastreams"][0] == {"id": on_ds.id, "name": "甲 在线 PM2.5", "unit": "μg/m³",
                                       "observed_property": "PM2.5", "last_time": ingest.ms_to_iso(now - 2 * MIN),
                                       "last_value": 42.0}
    assert by["丁 未上线"]["last_seen_at"] is None and by["丁 未上线"]["datastreams"] == []

    def names(**kw: Any) -> list[str]:
        return [t["name"] for t in timeseries.things_overview(session, admin, now_ms=now, **kw)["items"]]

    assert names(status="offline") == ["丁 未上线", "丙 离线"]
    assert names(kind="water") == ["丁 未上线", "丙 离线"]
    assert names(q="告警") == ["戊 告警"]
    assert names(department="220200-gaj") == ["戊 告警"]
    page = timeseries.things_overview(session, admin, limit=2, offset=4, now_ms=now)
    assert page["total"] == 5 and len(page["items"]) == 1
    past = timeseries.things_overview(session, admin, limit=2, offset=10, now_ms=now)
    assert past["total"] == 5 and past["items"] == []
    assert timeseries.status_counts(session, admin, now_ms=now) == {
        "online": 2, "offline": 2, "alerting": 1, "total": 5}
    for bad, field in [({"status": "asleep"}, "status"), ({"limit": 0}, "limit"),
                       ({"department": "nowhere"}, "department")]:
        with pytest.raises(CityOSError) as exc:
            timeseries.things_overview(session, admin, **bad)
        assert exc.value.errors[0].field == field
