"""Alert rules: params checked as data, and every kind opening and resolving alerts end to end,
from `writer.write_sync(rows)` to an Alert row (both databases)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityos.core import events
from cityos.core.errors import Invalid
from cityos.core.models import AuditRecord
from cityos.sensing import alerts, ingest, rules
from cityos.sensing.models import Group
from tests.sensing.conftest import T0, make_thing, row
from tests.sensing.helpers_rules import POINT, Harness

S = 1000  # one second in ms


@pytest.fixture
def h(engine, writer, city_session):
    harness = Harness(engine, writer)
    yield harness
    harness.close()


# -- params -----------------------------------------------------------------------------------


def test_params_are_normalized_with_defaults():
    assert rules.check_params("threshold", {"op": ">", "value": 10}) == {
        "op": ">", "value": 10.0, "for_seconds": 0, "flap_seconds": 60}
    assert rules.check_params("combo", {"other_datastream": 3, "op": ">", "expr": "a-b", "value": 0.3})[
        "expr"] == "a - b"
    assert rules.check_params("nodata", {})["intervals"] == 3
    fence = rules.check_params("geofence", {"polygon": {"type": "Polygon", "coordinates": [
        [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}, "on": "enter"})
    assert fence["on"] == "enter" and fence["polygon"]["type"] == "Polygon"


@pytest.mark.parametrize("kind, params, field", [
    ("threshold", {"op": "=>", "value": 1}, "params.op"),
    ("threshold", {"op": ">"}, "params.value"),
    ("threshold", {"op": ">", "value": 10, "clear": 12}, "params.clear"),
    ("threshold", {"op": "<", "value": 10, "clear": 8}, "params.clear"),
    ("threshold", {"op": ">", "value": True}, "params.value"),
    ("threshold", {"op": ">", "value": 1, "colour": "red"}, "params.colour"),
    ("rate", {"max_change": 5, "per_seconds": 0}, "params.per_seconds"),
    ("flatline", {"count": 1}, "params.count"),
    ("range", {}, "params.min"),
    ("range", {"min": 5, "max": 5}, "params.max"),
    ("geofence", {"polygon": {"type": "Point", "coordinates": [0, 0]}}, "params.polygon"),
    ("geofence", {"polygon": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}},
     "params.polygon"),
    ("combo", {"other_datastream": 0, "op": ">", "value": 1}, "params.other_datastream"),
    ("combo", {"other_datastream": 2, "op": ">", "value": 1, "expr": "a * b"}, "params.expr"),
    ("flood", {}, "kind"),
])
def test_bad_params_name_the_field(kind, params, field):
    with pytest.raises(Invalid) as err:
        rules.check_params(kind, params)
    assert err.value.errors[0].field == field
    assert "/" in err.value.errors[0].reason  # English and Chinese


# -- kinds, end to end ------------------------------------------------------------------------


def test_threshold_hysteresis_dedup_and_resolve(h, city_session):
    _, (ds,) = make_thing(city_session)
    r = h.rule("threshold", ds.id, {"op": ">", "value": 10, "clear": 8})
    h.write([row(ds.id, T0, 5.0)])
    assert h.alerts() == []
    h.write([row(ds.id, T0 + S, 11.0)])
    (a,) = h.alerts()
    assert a.state == "open" and a.value == 11.0 and a.observed_at == T0 + S and a.rule_id == r.id
    h.write([row(ds.id, T0 + 2 * S, 9.0)])  # between clear and limit: still alerting
    h.write([row(ds.id, T0 + 3 * S, 12.0), row(ds.id, T0 + 4 * S, 13.0)])  # repeats
    (a,) = h.alerts()
    assert a.state == "open" and a.occurrences == 3
    h.write([row(ds.id, T0 + 5 * S, 8.0)])  # crosses back past clear
    (a,) = h.alerts()
    assert a.state == "resolved" and a.resolved_by == "rule"


def test_threshold_minimum_duration_in_phenomenon_time(h, city_session):
    _, (ds,) = make_thing(city_session)
    h.rule("threshold", ds.id, {"op": ">=", "value": 100, "for_seconds": 60})
    h.write([row(ds.id, T0, 120.0), row(ds.id, T0 + 30 * S, 130.0)])
    h.write([row(ds.id, T0 + 40 * S, 50.0)])  # the run breaks
    h.write([row(ds.id, T0 + 50 * S, 120.0), row(ds.id, T0 + 100 * S, 120.0)])
    assert h.alerts() == []
    h.write([row(ds.id, T0 + 110 * S, 101.0)])  # held for 60 s since T0+50 s
    (a,) = h.alerts()
    assert a.observed_at == T0 + 110 * S and a.state == "open"


def test_flap_reopens_the_recent_alert(h, city_session):
    _, (ds,) = make_thing(city_session)
    r = h.rule("threshold", ds.id, {"op": ">", "value": 10})
    h.write([row(ds.id, T0, 11.0)])
    h.write([row(ds.id, T0 + S, 5.0)])
    h.write([row(ds.id, T0 + 2 * S, 12.0)])
    (a,) = h.alerts(r.id)
    assert a.state == "open" and a.occurrences == 2 and a.resolved_at is None and a.value == 12.0
    assert alerts.alert_public(a)["flaps"] == 1 and a.note.startswith("[flap 1]")
    h.write([row(ds.id, T0 + 3 * S, 5.0)])
    h.write([row(ds.id, T0 + 4 * S, 15.0)])
    (a,) = h.alerts(r.id)
    assert alerts.alert_public(a)["flaps"] == 2 and a.occurrences == 3


def test_no_flap_window_opens_a_new_alert(h, city_session):
    _, (ds,) = make_thing(city_session)
    r = h.rule("threshold", ds.id, {"op": ">", "value": 10, "flap_seconds": 0})
    h.write([row(ds.id, T0, 11.0)])
    h.write([row(ds.id, T0 + S, 5.0)])
    h.write([row(ds.id, T0 + 2 * S, 12.0)])
    first, second = h.alerts(r.id)
    assert (first.state, second.state) == ("resolved", "open") and second.occurrences == 1


def test_rate_of_change(h, city_session):
    _, (ds,) = make_thing(city_session)
    h.rule("rate", ds.id, {"max_change": 5, "per_seconds": 60})
    h.write([row(ds.id, T0, 10.0), row(ds.id, T0 + 60 * S, 12.0)])
    assert h.alerts() == []
    h.write([row(ds.id, T0 + 90 * S, 30.0)])  # 18 in 30 s: 36 per minute
    (a,) = h.alerts()
    assert a.state == "open" and a.value == 36.0
    h.write([row(ds.id, T0 + 150 * S, 31.0)])
    assert h.alerts()[0].state == "resolved"


def test_nodata_opens_on_tick_and_resolves_when_data_is_back(h, city_session):
    _, (ds,) = make_thing(city_session)
    with Session(h.engine) as s:
        s.execute(ds.__table__.update().where(ds.__table__.c.id == ds.id).values(interval_seconds=10))
        s.commit()
    h.rule("nodata", ds.id, {"intervals": 2})
    base = ingest.now_ms()
    h.rules.tick(base + 5 * S)
    assert h.alerts() == []
    h.rules.tick(base + 25 * S)  # 2 × 10 s without a reading
    (a,) = h.alerts()
    assert a.state == "open" and a.kind == "nodata" and a.value is None
    h.rules.tick(base + 35 * S)
    assert len(h.alerts()) == 1
    h.write([row(ds.id, base, 1.0)])
    assert h.alerts()[0].state == "resolved"


def test_flatline_is_a_stuck_sensor(h, city_session):
    _, (ds,) = make_thing(city_session)
    h.rule("flatline", ds.id, {"count": 3, "tolerance": 0.01})
    h.write([row(ds.id, T0, 5.0), row(ds.id, T0 + S, 5.004)])
    assert h.alerts() == []
    h.write([row(ds.id, T0 + 2 * S, 5.008)])
    assert h.alerts()[0].state == "open"
    h.write([row(ds.id, T0 + 3 * S, 6.0)])
    assert h.alerts()[0].state == "resolved"


def test_range_flags_implausible_values(h, city_session):
    _, (ds,) = make_thing(city_session)
    h.rule("range", ds.id, {"min": 0, "max": 1000}, severity="critical")
    h.write([row(ds.id, T0, 50.0), row(ds.id, T0 + S, -5.0)])
    (a,) = h.alerts()
    assert a.state == "open" and a.severity == "critical" and a.value == -5.0 and "-5" in a.message
    h.write([row(ds.id, T0 + 2 * S, 60.0)])
    assert h.alerts()[0].state == "resolved"


def test_geofence_on_point_results(h, city_session):
    _, (ds,) = make_thing(city_session, observation_type=ingest.ANY, kind="bus", name="公交 1 路")
    box = {"type": "Polygon", "coordinates": [[[126.5, 43.8], [126.6, 43.8], [126.6, 43.9], [126.5, 43.9],
                                               [126.5, 43.8]]]}
    h.rule("geofence", ds.id, {"polygon": box, "on": "leave"})
    h.write([row(ds.id, T0, js=POINT.format(126.55, 43.85))])
    assert h.alerts() == []
    h.write([row(ds.id, T0 + S, js=POINT.format(126.70, 43.85))])
    (a,) = h.alerts()
    assert a.state == "open" and "126.700000,43.850000" in a.message
    h.write([row(ds.id, T0 + 2 * S, js='{"lon": 126.56, "lat": 43.86}')])
    assert h.alerts()[0].state == "resolved"


def test_combo_over_two_streams(h, city_session):
    _, (inlet, outlet) = make_thing(city_session, streams=2, kind="pressure", name="泵站")
    h.rule("combo", inlet.id, {"other_datastream": outlet.id, "op": ">", "expr": "a - b", "value": 0.3})
    h.write([row(inlet.id, T0, 1.0), row(outlet.id, T0, 0.9)])
    assert h.alerts() == []
    h.write([row(outlet.id, T0 + S, 0.5)])  # the other stream's reading triggers it
    (a,) = h.alerts()
    assert a.state == "open" and a.datastream_id == inlet.id and a.value == pytest.approx(0.5)
    h.write([row(inlet.id, T0 + 2 * S, 0.7)])
    assert h.alerts()[0].state == "resolved"


# -- targets, late readings, restart, consequences -------------------------------------------


def test_property_target_covers_the_department_subtree_only(h, city_session):
    _, (env,) = make_thing(city_session)
    _, (police,) = make_thing(city_session, "220200-gaj", name="警用")
    r = h.rule("threshold", env.observed_property_id, {"op": ">", "value": 10}, target_type="property")
    h.write([row(env.id, T0, 11.0), row(police.id, T0, 11.0)])
    assert [a.datastream_id for a in h.alerts(r.id)] == [env.id]
    _, (later,) = make_thing(city_session, name="新站")  # made after the reload: picked up on sight
    h.write([row(later.id, T0, 20.0)])
    assert [a.datastream_id for a in h.alerts(r.id)] == [env.id, later.id]


def test_thing_and_group_targets(h, city_session):
    thing, (a, b) = make_thing(city_session, streams=2)
    other, (c,) = make_thing(city_session, name="二号站")
    h.rule("threshold", thing.id, {"op": ">", "value": 10}, target_type="thing")
    group = Group(department_id=thing.department_id, code="g-air", name="空气站", things=[other])
    city_session.add(group)
    city_session.commit()
    h.rule("threshold", group.id, {"op": "<", "value": 0}, target_type="group")
    h.write([row(a.id, T0, 11.0), row(b.id, T0, 12.0), row(c.id, T0, 11.0), row(c.id, T0 + S, -1.0)])
    assert sorted((x.datastream_id, x.kind) for x in h.alerts()) == [
        (a.id, "threshold"), (b.id, "threshold"), (c.id, "threshold")]
    assert sorted(x.value for x in h.alerts()) == [-1.0, 11.0, 12.0]


def test_late_readings_do_not_change_the_past(h, city_session):
    _, (ds,) = make_thing(city_session)
    h.rule("threshold", ds.id, {"op": ">", "value": 10})
    h.write([row(ds.id, T0 + 10 * S, 11.0)])
    h.write([row(ds.id, T0, 1.0)])  # older than the alerting reading
    assert h.alerts()[0].state == "open"


def test_state_is_rebuilt_from_open_alerts_after_a_restart(engine, writer, city_session):
    _, (ds,) = make_thing(city_session)
    first = Harness(engine, writer)
    first.rule("threshold", ds.id, {"op": ">", "value": 10, "clear": 8})
    first.write([row(ds.id, T0, 11.0)])
    first.close()
    writer._listeners.clear()
    second = Harness(engine, writer)  # a new process: knows nothing but the database
    try:
        second.write([row(ds.id, T0 + S, 12.0)])
        (a,) = second.alerts()
        assert a.state == "open" and a.occurrences == 2  # de-duplicated, not a second alert
        second.write([row(ds.id, T0 + 2 * S, 7.0)])
        assert second.alerts()[0].state == "resolved"
    finally:
        second.close()


def test_changes_are_audited_and_published(h, city_session):
    seen: list[tuple[str, int, bool | None]] = []

    def opened(session, alert, reopened):
        seen.append(("opened", alert.id, reopened))

    def resolved(session, alert):
        seen.append(("resolved", alert.id, None))

    events.subscribe(alerts.ALERT_OPENED, opened)
    events.subscribe(alerts.ALERT_RESOLVED, resolved)
    try:
        _, (ds,) = make_thing(city_session)
        h.rule("threshold", ds.id, {"op": ">", "value": 10})
        h.write([row(ds.id, T0, 11.0)])
        h.write([row(ds.id, T0 + S, 1.0)])
    finally:
        events._HANDLERS[alerts.ALERT_OPENED].remove(opened)
        events._HANDLERS[alerts.ALERT_RESOLVED].remove(resolved)
    (a,) = h.alerts()
    assert seen == [("opened", a.id, False), ("resolved", a.id, None)]
    with Session(h.engine) as s:
        actions = s.scalars(select(AuditRecord.action).where(AuditRecord.object_type == "sensing.alert")
                            .order_by(AuditRecord.seq)).all()
        assert actions == ["sensing.alert.open", "sensing.alert.resolve"]
        assert s.scalar(select(func.count()).select_from(AuditRecord)) >= 3  # and the rule's creation


def test_streams_without_rules_are_not_queued(h, city_session):
    _, (ds,) = make_thing(city_session)
    h.write([row(ds.id, T0 + i, float(i)) for i in range(1000)])
    assert h.rules.fed >= 1 and not h.rules._queue and h.alerts() == []


def test_readings_waiting_for_evaluation_are_bounded(engine, writer, city_session):
    """Past `max_queued` readings the writer waits for the worker; a worker that stays behind longer
    than `wait_seconds` costs an unevaluated (counted) batch, never unbounded memory."""
    _, (ds,) = make_thing(city_session)
    engine_ = rules.Engine(engine, tick_seconds=3600, max_queued=10, wait_seconds=0.3)
    h = Harness(engine, writer, engine_)
    try:
        h.rule("threshold", ds.id, {"op": ">", "value": 100})

        def batch(k, n):
            return ingest.Written([row(ds.id, T0 + k * 100 + i, 1.0) for i in range(n)], 0)

        with engine_._lock:  # the worker takes the first batch, then waits on evaluating it
            engine_.feed(batch(0, 10))
            assert wait_until(lambda: engine_._busy)
            engine_.feed(batch(1, 5))  # 15 > 10 for longer than 0.3 s: not evaluated, counted
            assert engine_.skipped == 5 and engine_._queued == 10
            held = threading.Thread(target=engine_.feed, args=(batch(2, 5),))
            held.start()  # waits for room ...
            time.sleep(0.1)
            assert held.is_alive() and engine_._queued == 10
        held.join(5)  # ... which the worker makes once it has evaluated the first batch
        assert not held.is_alive() and engine_.drain(10)
        assert engine_.skipped == 5 and engine_._queued == 0
    finally:
        h.close()


def wait_until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
