"""Open-data figures for the open city, to the unit: open rate against the plan (非涉密数据开放率),
plan entries overdue, freshness against update cycles, held-back versions, and usage."""

from __future__ import annotations

import datetime as dt

import pytest

from cityos.core.access import Denied
from cityos.hub import loading
from cityos.hub import service as hub
from cityos.opendata import applications, service, stats
from cityos.opendata.schemas import StatsOut
from tests.conftest import people_spec, person_row
from tests.opendata.conftest import actor_of, air_spec, publish

BLANK = {"resources": 0, "non_secret": 0, "openable": 0, "published": 0, "published_openable": 0,
         "open_rate": None, "planned": 0, "plan_published": 0, "plan_overdue": 0, "stale": 0,
         "held": 0, "views": 0, "downloads": 0, "api_calls": 0}


@pytest.fixture
def catalog(session, open_city):
    """Beside the open city's two resources: 市公安局 adds a secret one and a closed one, 市环保局
    an open one not yet published; the plan has air (past, published), noise (ahead) and people
    (yesterday: overdue)."""
    police, env = actor_of(session, "police_staff"), actor_of(session, "env_staff")
    hub.resource_create(session, police, people_spec(name="涉密人员名单", secret=True, open_type="conditional"))
    hub.resource_create(session, police, people_spec(name="在逃人员"))  # open_type closed
    noise = hub.resource_create(session, env, air_spec(name="噪声监测日报"))
    today = hub.city_today()
    for who, code, days in (("env_admin", open_city.air.code, -10), ("env_admin", noise.code, 30),
                            ("police_admin", open_city.people.code, -1)):
        service.plan_add(session, actor_of(session, who), resource=code, open_level="open",
                         planned_on=today + dt.timedelta(days=days))
    session.commit()
    return open_city


def dept(figures, code):
    return next(d for d in figures["departments"] if d["department"] == code)


def test_open_rate_and_plan_per_department_and_city(session, catalog):
    f = stats.figures(session, actor_of(session, "auditor"))
    StatsOut.model_validate(f)
    assert f["as_of"] == hub.city_today().isoformat() and f["days"] == 30
    assert {k: v for k, v in dept(f, "220200-hbj").items() if k in BLANK} == {
        **BLANK, "resources": 2, "non_secret": 2, "openable": 2, "published": 1, "published_openable": 1,
        "open_rate": 0.5, "planned": 2, "plan_published": 1}
    assert {k: v for k, v in dept(f, "220200-gaj").items() if k in BLANK} == {
        **BLANK, "resources": 3, "non_secret": 2, "openable": 1, "open_rate": 0.0, "planned": 1,
        "plan_overdue": 1}
    assert f["city"] == {**BLANK, "resources": 5, "non_secret": 4, "openable": 3, "published": 1,
                         "published_openable": 1, "open_rate": 0.3333, "planned": 3, "plan_published": 1,
                         "plan_overdue": 1}
    assert dept(f, "220200-gaj")["department_name"] == "市公安局"
    # Tomorrow the people resource is still overdue; a week before, nothing was.
    earlier = stats.figures(session, actor_of(session, "auditor"), hub.city_today() - dt.timedelta(days=7))
    assert earlier["city"]["plan_overdue"] == 0 and earlier["city"]["plan_published"] == 1
    only = stats.figures(session, actor_of(session, "env_staff"), department="220200-hbj")
    assert [d["department"] for d in only["departments"]] == ["220200-hbj"]
    assert only["city"] == f["city"]  # the city's totals stay the city's


def test_freshness_and_held_versions(session, catalog):
    publish(session, catalog.people.code, {
        "name": "residents-by-district", "quasi_identifiers": ["district"], "k": 10,
        "rules": [{"field": "id_number", "action": "suppress"}, {"field": "name", "action": "suppress"},
                  {"field": "birth_date", "action": "suppress"}]}, "police_staff", "police_admin")
    loading.rows_write(session, actor_of(session, "police_staff"), catalog.people.code,
                       [person_row(900, "丰满区")])  # a group of one: the new version is held back
    air = service.dataset_by_name(session, "air-quality-daily")
    people = service.dataset_by_name(session, "residents-by-district")
    air.data_updated_at = dt.datetime(2026, 11, 1, 8, tzinfo=dt.UTC)  # daily
    people.data_updated_at = dt.datetime(2026, 11, 5, 2, tzinfo=dt.UTC)
    people.update_cycle = "weekly"
    session.commit()
    assert people.held_reason

    f = stats.figures(session, actor_of(session, "auditor"), dt.date(2026, 11, 5))
    # "now" is the end of 5 November in the city: 16:00 UTC.
    assert f["now"] == dt.datetime(2026, 11, 5, 16, tzinfo=dt.UTC)
    by_name = {d["name"]: d for d in f["datasets"]}
    assert by_name["air-quality-daily"]["stale"] and by_name["air-quality-daily"]["overdue_days"] == 3
    assert by_name["air-quality-daily"]["due_at"] == dt.datetime(2026, 11, 2, 8, tzinfo=dt.UTC)
    assert not by_name["residents-by-district"]["stale"] and by_name["residents-by-district"]["held"]
    assert by_name["residents-by-district"]["due_at"] == dt.datetime(2026, 11, 12, 2, tzinfo=dt.UTC)
    assert (dept(f, "220200-hbj")["stale"], dept(f, "220200-hbj")["held"]) == (1, 0)
    assert (dept(f, "220200-gaj")["stale"], dept(f, "220200-gaj")["held"]) == (0, 1)
    assert dept(f, "220200-gaj")["open_rate"] == 1.0 and dept(f, "220200-gaj")["plan_published"] == 1
    assert f["city"]["open_rate"] == round(2 / 3, 4) and f["city"]["plan_overdue"] == 0
    # On 1 November the air data was fresh.
    assert stats.figures(session, actor_of(session, "auditor"), dt.date(2026, 11, 1))["city"]["stale"] == 0
    # Irregular datasets are never overdue.
    air.update_cycle = "irregular"
    session.commit()
    late = stats.figures(session, actor_of(session, "auditor"), dt.date(2027, 1, 1))
    assert {d["name"]: d["stale"] for d in late["datasets"]} == {"air-quality-daily": False,
                                                                 "residents-by-district": True}


def test_usage_per_dataset_and_day(session, sessions, catalog):
    ds = catalog.dataset
    counter = applications.UsageCounter()
    for kind, n in (("views", 7), ("downloads", 2), ("api_calls", 11)):
        counter.add(ds.id, kind, n)
    assert counter.flush(sessions) == 20
    session.expire_all()
    f = stats.figures(session, actor_of(session, "env_staff"))
    (row,) = f["datasets"]
    assert (row["views"], row["downloads"], row["api_calls"]) == (7, 2, 11)
    assert len(row["series"]) == 30 and row["series"][-1] == {
        "day": hub.city_today().isoformat(), "views": 7, "downloads": 2, "api_calls": 11}
    assert sum(d["views"] for d in row["series"][:-1]) == 0
    assert f["series"] == row["series"]
    assert (dept(f, "220200-hbj")["views"], f["city"]["api_calls"]) == (7, 11)


def test_figures_need_the_permission(session, catalog):
    with pytest.raises(Denied):
        stats.figures(session, actor_of(session, "resident"))
