"""The city's sharing figures, checked against numbers worked out by hand."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from cityos.core import audit, auth
from cityos.core import service as core
from cityos.core.access import SYSTEM, Denied
from cityos.core.errors import NotFound
from cityos.core.models import AuditRecord
from cityos.hub import service, stats
from cityos.hub.models import Grant, ShareRequest
from tests.conftest import people_spec, seed_small_city

NOW = dt.datetime.now(dt.UTC)
TODAY = NOW.astimezone(stats.CITY_TZ).date()
HOUR = dt.timedelta(hours=1)


def _resource(session, dept: str, share_type: str, secret: bool = False):
    extra = {} if share_type == "unconditional" else {"share_condition": "依申请", "share_basis": "依据"}
    return service.resource_create(session, SYSTEM, people_spec(
        department=dept, share_type=share_type, secret=secret, **extra))


def _request(session, res, dept_id: int, state: str, due: dt.datetime, decided: dt.datetime | None = None):
    session.add(ShareRequest(resource_id=res.id, department_id=dept_id, requested_by="x", purpose="p",
                             fields=["name"], state=state, due_at=due, decided_at=decided))


def _read(session, res, outcome: str = "success", action: str = "hub.data.read") -> int:
    audit.append(session, actor="x", action=action, object_type="hub.resource", object_id=res.code,
                 outcome=outcome)
    session.flush()
    return session.query(AuditRecord.id).order_by(AuditRecord.id.desc()).limit(1).scalar()


@pytest.fixture
def figures_city(session, keyring):
    """Police: 3 resources (conditional; refused; unconditional but secret); environment: 1 shared."""
    seed_small_city(session)
    gaj, hbj = (core.department_by_code(session, c).id for c in ("220200-gaj", "220200-hbj"))
    r1 = _resource(session, "220200-gaj", "conditional")
    _resource(session, "220200-gaj", "none")
    _resource(session, "220200-gaj", "unconditional", secret=True)
    r4 = _resource(session, "220200-hbj", "unconditional")
    # Requests to the police's r1: on time, late, overdue, pending; to the environment's r4: on time,
    # withdrawn.
    _request(session, r1, hbj, "granted", NOW + HOUR, NOW)
    _request(session, r1, hbj, "refused", NOW - 2 * HOUR, NOW - HOUR)
    _request(session, r1, hbj, "pending", NOW - HOUR)
    _request(session, r1, hbj, "pending", NOW + 48 * HOUR)
    _request(session, r4, gaj, "granted", NOW, NOW - HOUR)
    _request(session, r4, gaj, "withdrawn", NOW + HOUR)
    # Grants: r1 → environment in force, revoked, expired; r4 → police in force until next week.
    for valid_until, revoked in ((None, None), (None, NOW), (TODAY - dt.timedelta(days=1), None),
                                 (TODAY + dt.timedelta(days=7), None)):
        res, dept = (r4, gaj) if valid_until and valid_until > TODAY else (r1, hbj)
        session.add(Grant(resource_id=res.id, department_id=dept, purpose="p", fields=["name"],
                          valid_until=valid_until, granted_by="x", revoked_at=revoked))
    # Reads: r1 three today and one yesterday, r4 two today; a denied read and a load do not count,
    # nor does a read from 31 days ago.
    for _ in range(3):
        _read(session, r1)
    for _ in range(2):
        _read(session, r4)
    yesterday = _read(session, r1)
    old = _read(session, r4)
    _read(session, r1, outcome="denied")
    _read(session, r1, action="hub.data.load")
    session.execute(update(AuditRecord).where(AuditRecord.id == yesterday).values(at=NOW - dt.timedelta(days=1)))
    session.execute(update(AuditRecord).where(AuditRecord.id == old).values(at=NOW - dt.timedelta(days=31)))
    session.commit()
    return session


def test_figures_per_department_and_city(figures_city):
    s = figures_city
    out = stats.figures(s, auth.user_actor(core.user_by_name(s, "auditor")), today=TODAY)
    assert out["as_of"] == TODAY.isoformat() and out["days"] == 30
    city, depts = out["city"], {d["department"]: d for d in out["departments"]}
    assert set(depts) == {"220200-gaj", "220200-hbj"}
    gaj, hbj = depts["220200-gaj"], depts["220200-hbj"]
    assert gaj["department_name"] == "市公安局"
    assert (gaj["resources"], gaj["shared"], gaj["non_secret"], gaj["shared_non_secret"]) == (3, 2, 2, 1)
    assert gaj["sharing_rate"] == 0.5
    assert (hbj["resources"], hbj["shared"], hbj["non_secret"], hbj["shared_non_secret"]) == (1, 1, 1, 1)
    assert hbj["sharing_rate"] == 1.0
    assert (city["resources"], city["shared"], city["non_secret"], city["shared_non_secret"]) == (4, 3, 3, 2)
    assert city["sharing_rate"] == round(2 / 3, 4)
    assert gaj["requests"] == {"total": 4, "answered": 2, "on_time": 1, "pending": 2, "overdue": 1,
                               "on_time_rate": 0.5}
    assert hbj["requests"] == {"total": 2, "answered": 1, "on_time": 1, "pending": 0, "overdue": 0,
                               "on_time_rate": 1.0}
    assert city["requests"] == {"total": 6, "answered": 3, "on_time": 2, "pending": 2, "overdue": 1,
                                "on_time_rate": round(2 / 3, 4)}
    assert (gaj["grants_in_force"], hbj["grants_in_force"], city["grants_in_force"]) == (1, 1, 2)
    for f, today_reads, yesterday_reads in ((gaj, 3, 1), (hbj, 2, 0), (city, 5, 1)):
        days = f["reads_per_day"]
        assert len(days) == 30 and days[-1]["day"] == TODAY.isoformat()
        assert days[-1]["reads"] == today_reads and days[-2]["reads"] == yesterday_reads
        assert f["reads_total"] == today_reads + yesterday_reads


def test_figures_for_one_department(figures_city):
    s = figures_city
    staff = auth.user_actor(core.user_by_name(s, "env_staff"))
    out = stats.figures(s, staff, department="220200-gaj")
    assert [d["department"] for d in out["departments"]] == ["220200-gaj"]
    assert out["city"]["resources"] == 4  # the city-wide figures stay whole
    quiet = stats.figures(s, staff, department="220202")
    assert quiet["departments"][0]["resources"] == 0 and quiet["departments"][0]["sharing_rate"] is None
    with pytest.raises(NotFound):
        stats.figures(s, staff, department="nowhere")


def test_figures_need_hub_stats_read(figures_city):
    s = figures_city
    with pytest.raises(Denied):
        stats.figures(s, auth.user_actor(core.user_by_name(s, "resident")))


def test_figures_of_an_empty_city(session, keyring):
    seed_small_city(session)
    out = stats.figures(session, SYSTEM)
    assert out["departments"] == []
    assert out["city"]["sharing_rate"] is None and out["city"]["reads_total"] == 0
