"""The life of an alert (open → acknowledged → resolved), who may handle it, and the live hub,
which hears of a change only once it is committed (both databases)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import auth
from cityos.core.access import Denied
from cityos.core.errors import Conflict, Invalid
from cityos.core.models import User
from cityos.sensing import alerts
from cityos.sensing.models import Alert
from tests.sensing.conftest import T0, make_thing, row
from tests.sensing.helpers_rules import Harness

S = 1000


def _actor(session: Session, username: str):
    return auth.user_actor(session.scalar(select(User).where(User.username == username)))


@pytest.fixture
def raised(engine, writer, city_session):
    """Two open alerts: one of 市环保局, one of 市公安局."""
    h = Harness(engine, writer)
    _, (env,) = make_thing(city_session)
    _, (police,) = make_thing(city_session, "220200-gaj", name="警用")
    h.rule("threshold", env.id, {"op": ">", "value": 10})
    h.rule("threshold", police.id, {"op": ">", "value": 10}, department="220200-gaj", severity="critical")
    h.write([row(env.id, T0, 11.0), row(police.id, T0, 11.0)])
    yield h
    h.close()


def test_acknowledge_then_resolve_with_a_journal(raised, sessions):
    env_alert = raised.alerts()[0]
    with sessions() as s:
        staff = _actor(s, "env_staff")
        a = alerts.alert_acknowledge(s, staff, env_alert.id, "派人核查")
        s.commit()
        assert (a.state, a.acknowledged_by) == ("acknowledged", "env_staff")
        with pytest.raises(Conflict):
            alerts.alert_acknowledge(s, staff, env_alert.id)
        s.rollback()
        a = alerts.alert_resolve(s, staff, env_alert.id, "传感器已清洁")
        s.commit()
        assert (a.state, a.resolved_by) == ("resolved", "env_staff")
        assert "派人核查" in a.note and "传感器已清洁" in a.note
        with pytest.raises(Conflict):
            alerts.alert_resolve(s, staff, env_alert.id)


def test_other_departments_can_neither_see_nor_handle(raised, sessions):
    env_alert, police_alert = raised.alerts()
    with sessions() as s:
        police = _actor(s, "police_staff")
        with pytest.raises(Denied):
            alerts.alert_get(s, police, env_alert.id)
        with pytest.raises(Denied):
            alerts.alert_acknowledge(s, police, env_alert.id)
        s.rollback()
        items, total = alerts.alert_list(s, police)
        assert [a.id for a in items] == [police_alert.id] and total == 1
        items, total = alerts.alert_list(s, _actor(s, "auditor"))
        assert total == 2  # reads everything
        with pytest.raises(Denied):  # but handles nothing
            alerts.alert_resolve(s, _actor(s, "auditor"), env_alert.id)
        s.rollback()
        items, total = alerts.alert_list(s, _actor(s, "admin"), severity="critical")
        assert [a.id for a in items] == [police_alert.id]
        with pytest.raises(Invalid):
            alerts.alert_list(s, police, state="closed")


def test_a_person_resolving_while_still_over_the_limit_is_not_overruled(raised, sessions):
    env_alert = raised.alerts()[0]
    with sessions() as s:
        alerts.alert_resolve(s, _actor(s, "env_staff"), env_alert.id)
        s.commit()
    raised.write([row(env_alert.datastream_id, T0 + S, 12.0)])  # same episode: stays resolved
    assert raised.alerts()[0].state == "resolved"
    raised.write([row(env_alert.datastream_id, T0 + 2 * S, 1.0)])
    raised.write([row(env_alert.datastream_id, T0 + 3 * S, 12.0)])  # a new episode, within the flap window
    a = raised.alerts()[0]
    assert a.id == env_alert.id and a.state == "open" and alerts.alert_public(a)["flaps"] == 1


def test_the_hub_hears_only_committed_changes_of_readable_departments(raised, sessions):
    env_alert, police_alert = raised.alerts()
    env_dept = env_alert.department_id

    async def scenario():
        mine = alerts.hub.subscribe([env_dept])
        everyone = alerts.hub.subscribe(None)
        try:
            def work():
                with sessions() as s:
                    alerts.alert_acknowledge(s, _actor(s, "admin"), police_alert.id)
                    s.rollback()  # never happened
                    alerts.alert_acknowledge(s, _actor(s, "admin"), police_alert.id, "ok")
                    alerts.alert_acknowledge(s, _actor(s, "env_staff"), env_alert.id)
                    s.commit()
            await asyncio.to_thread(work)
            got_all = [await asyncio.wait_for(everyone.queue.get(), 5) for _ in range(2)]
            got_mine = await asyncio.wait_for(mine.queue.get(), 5)
            return got_all, got_mine, mine.queue.qsize(), everyone.queue.qsize()
        finally:
            alerts.hub.unsubscribe(mine)
            alerts.hub.unsubscribe(everyone)

    got_all, got_mine, left_mine, left_all = asyncio.run(scenario())
    assert [(n, b["id"]) for n, b in got_all] == [("alert.acknowledged", police_alert.id),
                                                  ("alert.acknowledged", env_alert.id)]
    assert got_mine[0] == "alert.acknowledged" and got_mine[1]["id"] == env_alert.id
    assert got_mine[1]["state"] == "acknowledged" and left_mine == left_all == 0


def test_unresolved_alerts_are_unique_per_rule_and_stream(raised, sessions):
    env_alert = raised.alerts()[0]
    raised.write([row(env_alert.datastream_id, T0 + i * S, 20.0 + i) for i in range(1, 6)])
    with sessions() as s:
        rows = s.scalars(select(Alert).where(Alert.datastream_id == env_alert.datastream_id)).all()
        assert len(rows) == 1 and rows[0].occurrences == 6
