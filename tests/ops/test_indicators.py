"""Vital-sign indicators: thresholds and levels, checked specs, sources over the engines, a
failing or slow source shown as "no data" with its reason while the others refresh, the history
grain, and who may read and write them (both databases)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
import shapely
from sqlalchemy import func, select, text

import cityos.cases.service as cases
import cityos.maps.service as maps
from cityos.core.access import SYSTEM
from cityos.core.errors import Invalid
from cityos.ops import indicators as ind
from cityos.ops.models import Indicator, IndicatorValue
from cityos.sensing import ingest
from cityos.sensing.models import Datastream, Thing
from tests.cases.conftest import POINT
from tests.ops.conftest import OPS
from tests.sensing.conftest import make_thing

T0 = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
VALUES: dict[str, float | None] = {}


def _value(session: Any, params: Any, district: Any) -> float | None:
    return VALUES.get(params.get("key", "x"))


def _fail(session: Any, params: Any, district: Any) -> float | None:
    raise RuntimeError("sensor hub unreachable")


def _slow_sql(session: Any, params: Any, district: Any) -> float | None:
    # A recursive count to a hundred million: seconds on either database, unless interrupted.
    return float(session.execute(text(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) "
        "SELECT count(*) FROM c")).scalar())


def _slow_python(session: Any, params: Any, district: Any) -> float | None:
    time.sleep(0.4)
    return 1.0


@pytest.fixture(autouse=True)
def test_sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Sources for the tests (the app's indicator clock is off in tests: only the test steps them)."""
    extra = {"test.value": ind.Source("test.value", _value, "a value set by the test", {"key": ind.Param("str")}),
             "test.fail": ind.Source("test.fail", _fail, "always fails"),
             "test.slow_sql": ind.Source("test.slow_sql", _slow_sql, "a slow query"),
             "test.slow_python": ind.Source("test.slow_python", _slow_python, "slow in Python")}
    monkeypatch.setattr(ind, "SOURCES", {**ind.SOURCES, **extra})
    VALUES.clear()
    yield


def spec(code: str, source: str = "test.value", **kw: Any) -> dict[str, Any]:
    return {"code": code, "name": f"指标 {code}", "name_en": code, "unit": "µg/m³", "theme": "environment",
            "department": OPS, "source": source, "params": kw.pop("params", {}), "refresh_seconds": 60,
            "thresholds": kw.pop("thresholds", {"direction": "up", "attention": 50, "warning": 100,
                                                "critical": 150}), **kw}


# -- levels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "level"), [(None, None), (10, "normal"), (50, "attention"), (99.9, "attention"),
                                              (100, "warning"), (150, "critical"), (1e6, "critical")])
def test_levels_rising_is_worse(value, level):
    assert ind.level_of({"direction": "up", "attention": 50, "warning": 100, "critical": 150}, value) == level


@pytest.mark.parametrize(("value", "level"), [(99, "normal"), (95, "attention"), (80.5, "attention"),
                                              (80, "warning"), (50, "critical"), (0, "critical")])
def test_levels_falling_is_worse(value, level):
    assert ind.level_of({"direction": "down", "attention": 95, "warning": 80, "critical": 50}, value) == level


def test_levels_with_some_thresholds_only():
    assert ind.level_of({"direction": "up", "critical": 10}, 9) == "normal"
    assert ind.level_of({"direction": "up", "critical": 10}, 10) == "critical"
    assert ind.level_of({}, 3) == "normal"


# -- specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"source": "nope"}, "source"),
    ({"source": "sensing.latest", "params": {}}, "params"),  # property is required
    ({"source": "sensing.latest", "params": {"property": "pm25", "fn": "median"}}, "params"),
    ({"source": "sensing.latest", "params": {"property": "pm25", "colour": "red"}}, "params"),
    ({"params": {"timeout_s": -1}}, "params"),
    ({"thresholds": {"direction": "up", "attention": 100, "warning": 50}}, "thresholds"),
    ({"thresholds": {"direction": "down", "attention": 50, "warning": 80}}, "thresholds"),
    ({"thresholds": {"direction": "sideways", "warning": 1}}, "thresholds"),
    ({"thresholds": {"direction": "up", "warning": "high"}}, "thresholds"),
    ({"refresh_seconds": 0}, "refresh_seconds"),
    ({"refresh_seconds": 86_401}, "refresh_seconds"),
    ({"district": "999999"}, "district"),
    ({"department": "no-such-dept"}, "department"),
    ({"name": ""}, "name"),
])
def test_bad_specs_are_refused_naming_the_field(ops_city, change, field):
    r = ops_city.client.put("/api/ops/indicators/bad", json={**spec("bad"), **change},
                            headers=ops_city.headers("ops_staff"))
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    with ops_city.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Indicator)) == 0


def test_a_known_district_is_kept_by_its_code(ops_city):
    with ops_city.sessions() as s:
        i = ind.indicator_upsert(s, SYSTEM, spec("d1", district="220202"))
        j = ind.indicator_upsert(s, SYSTEM, spec("d2", district="220204"))
        s.commit()
        assert (i.district_code, j.district_code) == ("220202", "220204")
        with pytest.raises(Invalid) as exc:
            ind.indicator_upsert(s, SYSTEM, spec("d3", district="220200-gaj"))  # a bureau, not a district
        assert exc.value.errors[0].field == "district"


# -- computing -----------------------------------------------------------------------------------


def test_failing_and_slow_sources_show_no_data_while_the_others_refresh(ops_city):
    VALUES["x"] = 120.0
    with ops_city.sessions() as s:
        for code, source, params in [("a.ok", "test.value", {}), ("b.fail", "test.fail", {}),
                                     ("c.slow_sql", "test.slow_sql", {"timeout_s": 0.3}),
                                     ("d.slow_py", "test.slow_python", {"timeout_s": 0.1}),
                                     ("e.ok", "test.value", {})]:
            ind.indicator_upsert(s, SYSTEM, spec(code, source, params=params))
        s.commit()
        started = time.monotonic()
        done = ind.refresh_due(s, T0)
        s.commit()
        assert time.monotonic() - started < 5  # the slow query was stopped, not waited for
        assert [i.code for i in done] == ["a.ok", "b.fail", "c.slow_sql", "d.slow_py", "e.ok"]
    r = ops_city.client.get("/api/ops/indicators", headers=ops_city.headers("police_staff"))
    got = {i["code"]: i for i in r.json()}
    for code in ("a.ok", "e.ok"):
        assert (got[code]["value"], got[code]["level"], got[code]["error"]) == (120.0, "warning", None)
    assert got["b.fail"]["value"] is None and got["b.fail"]["level"] is None
    assert "sensor hub unreachable" in got["b.fail"]["error"]
    assert got["c.slow_sql"]["value"] is None
    assert got["c.slow_sql"]["error"] == "查询超时 / query timed out after 0.3 s"
    assert got["d.slow_py"]["error"] == "查询超时 / query timed out after 0.1 s"
    # The session is still usable after the cancelled query, and nothing is due until the interval.
    with ops_city.sessions() as s:
        assert ind.refresh_due(s, T0 + dt.timedelta(seconds=30)) == []
        assert len(ind.refresh_due(s, T0 + dt.timedelta(seconds=60))) == 5
        s.commit()


def test_history_keeps_one_value_per_grain_but_the_live_value_always(ops_city):
    VALUES["x"] = 1.0
    with ops_city.sessions() as s:
        i = ind.indicator_upsert(s, SYSTEM, spec("fast", refresh_seconds=1))
        s.commit()
        for second in range(0, 181):
            VALUES["x"] = float(second)
            ind.refresh(s, i, T0 + dt.timedelta(seconds=second))
        s.commit()
        assert i.value == 180.0 and i.computed_at == T0 + dt.timedelta(seconds=180)
        rows = s.execute(select(IndicatorValue.at, IndicatorValue.value).where(IndicatorValue.indicator_id == i.id)
                         .order_by(IndicatorValue.at)).all()
        assert [v for _, v in rows] == [0.0, 60.0, 120.0, 180.0]
        coarse = ind.indicator_upsert(s, SYSTEM, spec("coarse", params={"history_s": 120}))
        for second in range(0, 300, 30):
            ind.refresh(s, coarse, T0 + dt.timedelta(seconds=second))
        s.commit()
        assert s.scalar(select(func.count()).select_from(IndicatorValue)
                        .where(IndicatorValue.indicator_id == coarse.id)) == 3  # 0, 120, 240
    r = ops_city.client.get("/api/ops/indicators/fast/history",
                            params={"since": "2026-01-05T08:00:30Z", "until": "2026-01-05T08:02:00Z"},
                            headers=ops_city.headers("cm_staff"))
    assert r.status_code == 200
    assert r.json()["points"] == [["2026-01-05T08:01:00Z", 60.0], ["2026-01-05T08:02:00Z", 120.0]]
    r = ops_city.client.get("/api/ops/indicators/fast/history", params={"since": "yesterday"},
                            headers=ops_city.headers("cm_staff"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "since"


def test_the_forecast_is_made_quarter_hourly_not_on_every_refresh(ops_city):
    """A forecast reads a week of history: made on every one-second refresh it held up the live
    tiles (the PostgreSQL p99 of bench/ops.py), so it is made again only every 15 minutes."""
    with ops_city.sessions() as s:
        i = ind.indicator_upsert(s, SYSTEM, spec("quick", refresh_seconds=1, params={"history_s": 1}))
        s.commit()
        made: list[str] = []
        for second in range(0, 1900, 10):
            VALUES["x"] = float(second % 60)
            ind.refresh(s, i, T0 + dt.timedelta(seconds=second))
            assert i.forecast is not None
            if not made or i.forecast["at"] != made[-1]:
                made.append(i.forecast["at"])
        s.commit()
    horizon = dt.timedelta(seconds=ind.DEFAULT_HORIZON_S)
    assert made == [(T0 + dt.timedelta(seconds=s) + horizon).isoformat().replace("+00:00", "Z")
                    for s in (0, 900, 1800)]


def test_sensing_sources_read_the_latest_values(ops_city):
    now = ingest.now_ms()
    with ops_city.sessions() as s:
        _, (a,) = make_thing(s, name="站 A")
        _, (b,) = make_thing(s, name="站 B")
        _, (c,) = make_thing(s, name="站 C", kind="water")
        _, (old,) = make_thing(s, name="站 D")
        for ds, value, age_s in ((a, 40.0, 5), (b, 80.0, 10), (c, 200.0, 10), (old, 999.0, 3600)):
            row = s.get(Datastream, ds.id)
            row.last_value, row.last_time = value, now - age_s * 1000
            s.get(Thing, row.thing_id).last_seen_at = now - age_s * 1000
        s.commit()
        for code, params in [("mean", {"property": "urn:test:pm25", "kind": "air"}),
                             ("max", {"property": "PM2.5", "fn": "max"}),
                             ("count", {"property": "urn:test:pm25", "fn": "count", "max_age_s": 60}),
                             ("none", {"property": "no-such-property"}),
                             ("online", {"minutes": 5}), ("alerts", {})]:
            source = {"online": "sensing.online_rate", "alerts": "sensing.alerts_open"}.get(code, "sensing.latest")
            i = ind.indicator_upsert(s, SYSTEM, spec(f"s.{code}", source, params=params))
            ind.refresh(s, i)
        s.commit()
        got = {i.code: (i.value, i.error) for i in s.scalars(select(Indicator))}
    assert got["s.mean"] == (60.0, None)  # 40 and 80: the water station and the stale reading do not count
    assert got["s.max"] == (200.0, None)
    assert got["s.count"] == (3.0, None)
    assert got["s.none"][0] is None and "no data" in got["s.none"][1]
    assert got["s.online"] == (75.0, None)  # three of four reported within 5 minutes
    assert got["s.alerts"] == (0.0, None)


def test_sensing_sources_of_a_district_count_only_its_things(ops_city):
    """An indicator's district limits sensing sources to the things located in it (the one map's
    district layer places each thing's first location)."""
    now = ingest.now_ms()
    with ops_city.sessions() as s:
        maps.layer_create(s, SYSTEM, {
            "code": "districts", "title": "区县", "department": OPS, "geometry_type": "polygon",
            "attributes": [{"name": "code", "type": "string"}], "public": True, "open_type": "open"})
        maps.features_write(s, SYSTEM, "districts", [
            ("west", shapely.box(126.40, 43.80, 126.55, 43.90), {"code": "220202"}),
            ("east", shapely.box(126.55, 43.80, 126.70, 43.90), {"code": "220204"})])
        maps.reference_set(s, SYSTEM, "district", "districts", "code")
        s.commit()
        for name, lon, value, seen in (("西站", 126.50, 40.0, True), ("东站", 126.60, 80.0, True),
                                       ("东站二", 126.65, 100.0, False)):
            _, (ds,) = make_thing(s, name=name, lon=lon, lat=43.85)
            row = s.get(Datastream, ds.id)
            row.last_value, row.last_time = value, now - 5_000
            s.get(Thing, row.thing_id).last_seen_at = now - (5_000 if seen else 3_600_000)
        s.commit()
        for code, source, params in (("pm", "sensing.latest", {"property": "PM2.5"}),
                                     ("online", "sensing.online_rate", {"minutes": 5})):
            for district in ("220202", "220204", None):
                i = ind.indicator_upsert(s, SYSTEM, spec(f"{code}.{district}", source, params=params,
                                                         district=district))
                ind.refresh(s, i)
        s.commit()
        got = {i.code: i.value for i in s.scalars(select(Indicator))}
    assert (got["pm.220202"], got["pm.220204"], got["pm.None"]) == (40.0, 90.0, 220.0 / 3)
    assert (got["online.220202"], got["online.220204"]) == (100.0, 50.0)


def test_case_sources_count_the_backlog_and_today(ops_city):
    with ops_city.sessions() as s:
        for n in range(3):
            cases.case_intake(s, SYSTEM, {"category": "noise", "description": f"楼上噪音 {n}", **POINT},
                              channel="phone")
        for code, source, params in [("backlog", "cases.backlog", {}),
                                     ("backlog_cm", "cases.backlog", {"line": "citymgmt"}),
                                     ("today", "cases.created_today", {"line": "hotline"}),
                                     ("on_time", "cases.on_time_rate", {})]:
            i = ind.indicator_upsert(s, SYSTEM, spec(f"c.{code}", source, params=params))
            ind.refresh(s, i)
        s.commit()
        got = {i.code: (i.value, i.error) for i in s.scalars(select(Indicator))}
    assert got["c.backlog"] == (3.0, None) and got["c.backlog_cm"] == (0.0, None)
    assert got["c.today"] == (3.0, None)
    assert got["c.on_time"][0] is None  # nothing closed this month yet: no data, not 0 %


def test_plan_source_without_the_plan_module_is_no_data_with_a_reason(ops_city):
    with ops_city.sessions() as s:
        i = ind.indicator_upsert(s, SYSTEM, spec("p", "plan", params={"code": "no-such-plan-indicator"}))
        ind.refresh(s, i)
        s.commit()
        assert i.value is None and i.error


# -- access --------------------------------------------------------------------------------------


def test_staff_read_only_the_operations_center_writes(ops_city):
    c, h = ops_city.client, ops_city.headers
    body = spec("acc")
    assert c.get("/api/ops/indicators").status_code == 401
    assert c.get("/api/ops/indicators", headers=h("resident")).status_code == 403
    assert c.put("/api/ops/indicators/acc", json=body, headers=h("police_admin")).status_code == 403
    assert c.put("/api/ops/indicators/acc", json=body, headers=h("resident")).status_code == 403
    r = c.put("/api/ops/indicators/acc", json=body, headers=h("ops_staff"))
    assert r.status_code == 200, r.text
    assert r.json()["department"] == OPS and r.json()["value"] is None
    assert c.get("/api/ops/indicators/acc", headers=h("police_staff")).status_code == 200
    assert c.get("/api/ops/indicators/nope", headers=h("police_staff")).status_code == 404
    assert c.post("/api/ops/indicators/acc/refresh", headers=h("police_staff")).status_code == 403
    VALUES["x"] = 151
    r = c.post("/api/ops/indicators/acc/refresh", headers=h("ops_admin"))
    assert r.status_code == 200 and (r.json()["value"], r.json()["level"]) == (151, "critical")
    assert [i["code"] for i in c.get("/api/ops/indicators", params={"theme": "traffic"},
                                     headers=h("cm_staff")).json()] == []


def test_seed_defaults_is_idempotent_and_every_default_is_valid(ops_city):
    with ops_city.sessions() as s:
        made = ind.seed_defaults(s, OPS)
        s.commit()
        assert len(made) >= 30
        assert {i.theme for i in made} >= {"environment", "traffic", "hotline", "alerts", "sharing", "incidents"}
        assert all(i.refresh_seconds == 1 for i in made if i.theme == "environment" and
                   i.source == "sensing.latest")
        assert ind.seed_defaults(s, OPS) == []
        done = ind.refresh_due(s)
        s.commit()
        assert len(done) == len(made)  # none raises, data or not
