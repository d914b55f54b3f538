"""The numbers the city reports (共享交换统计), per department and city-wide.

Resources cataloged and shared, the sharing rate of the plan (shared non-secret resources over
all non-secret resources: 涉密 resources are outside it), requests answered and answered on
time, grants in force, and reads per day. A department's figures are about what it provides:
its resources, the requests it must answer, the grants it gave, the reads of its data.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from cityos.core import access
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.models import AuditRecord, Department
from cityos.core.service import department_by_code
from cityos.core.workdays import CITY_TZ
from cityos.hub.models import Grant, Resource, ShareRequest

READ_DAYS = 30
ANSWERED = ("granted", "refused")


def _blank() -> dict[str, Any]:
    return {"resources": 0, "shared": 0, "non_secret": 0, "shared_non_secret": 0,
            "requests": {"total": 0, "answered": 0, "on_time": 0, "pending": 0, "overdue": 0},
            "grants_in_force": 0, "reads": Counter()}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _finish(f: dict[str, Any], days: list[dt.date]) -> dict[str, Any]:
    reads: Counter[dt.date] = f.pop("reads")
    f["sharing_rate"] = _rate(f["shared_non_secret"], f["non_secret"])
    req = f["requests"]
    req["on_time_rate"] = _rate(req["on_time"], req["answered"])
    f["reads_per_day"] = [{"day": d.isoformat(), "reads": reads[d]} for d in days]
    f["reads_total"] = sum(reads[d] for d in days)
    return f


def _reads(session: Session, days: list[dt.date]) -> dict[str, Counter[dt.date]]:
    """Successful data reads per object (the resource code) and day of the city's calendar."""
    out: dict[str, Counter[dt.date]] = {}
    # One indexed count per day: the day boundaries are the city's, whatever the database.
    for day in days:
        start = dt.datetime.combine(day, dt.time(), CITY_TZ)
        rows = session.execute(
            select(AuditRecord.object_id, func.count()).where(
                AuditRecord.action == "hub.data.read", AuditRecord.outcome == "success",
                AuditRecord.at >= start, AuditRecord.at < start + dt.timedelta(days=1),
            ).group_by(AuditRecord.object_id))
        for object_id, n in rows:
            out.setdefault(object_id or "", Counter())[day] += int(n)
    return out


def figures(session: Session, actor: Actor, *, department: str | None = None,
            today: dt.date | None = None) -> dict[str, Any]:
    """Sharing figures per department (only `department` when given) and for the whole city."""
    access.require(actor, "hub.stats.read", None, session)
    only = department_by_code(session, department).id if department else None
    now = utcnow()
    today = today or now.astimezone(CITY_TZ).date()
    days = [today - dt.timedelta(days=n) for n in range(READ_DAYS - 1, -1, -1)]
    city, per = _blank(), dict[int, dict[str, Any]]()
    resources = session.execute(select(Resource.id, Resource.code, Resource.department_id,
                                       Resource.share_type, Resource.secret)).all()
    dept_of = {r.id: r.department_id for r in resources}
    for r in resources:
        shared = r.share_type != "none"
        for f in (city, per.setdefault(r.department_id, _blank())):
            f["resources"] += 1
            f["shared"] += shared
            f["non_secret"] += not r.secret
            f["shared_non_secret"] += shared and not r.secret
    requests = session.execute(select(ShareRequest.resource_id, ShareRequest.state, ShareRequest.due_at,
                                      ShareRequest.decided_at)).all()
    for q in requests:
        for f in (city, per.setdefault(dept_of[q.resource_id], _blank())):
            req = f["requests"]
            req["total"] += 1
            if q.state in ANSWERED:
                req["answered"] += 1
                req["on_time"] += q.due_at is None or (q.decided_at is not None and q.decided_at <= q.due_at)
            elif q.state == "pending":
                req["pending"] += 1
                req["overdue"] += q.due_at is not None and q.due_at < now
    grants = session.execute(select(Grant.resource_id).where(
        Grant.revoked_at.is_(None), or_(Grant.valid_until.is_(None), Grant.valid_until >= today))).all()
    for g in grants:
        for f in (city, per.setdefault(dept_of[g.resource_id], _blank())):
            f["grants_in_force"] += 1
    by_code = {r.code: r.department_id for r in resources}
    for code, counts in _reads(session, days).items():
        city["reads"].update(counts)
        if code in by_code:
            per.setdefault(by_code[code], _blank())["reads"].update(counts)
    if only is not None:
        per = {only: per.get(only, _blank())}
    depts = {d.id: d for d in session.scalars(select(Department).where(Department.id.in_(list(per))))}
    rows = [{"department": depts[i].code, "department_name": depts[i].name, **_finish(f, days)}
            for i, f in per.items()]
    return {"as_of": today.isoformat(), "days": READ_DAYS, "city": _finish(city, days),
            "departments": sorted(rows, key=lambda x: x["department"])}
