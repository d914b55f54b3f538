"""Open-data figures (开放数据统计), per providing department and for the whole city.

Definitions (also returned as `definitions` by `GET /api/opendata/stats`):

- resources: the department's catalog resources (资源目录).
- non_secret: resources not marked secret (非涉密).
- openable: non-secret resources the catalog does not mark 不予开放 (open_type open or
  conditional): what the plan expects to open, and what may be published at all.
- published: the department's datasets in state published (已开放).
- open_rate: the plan's indicator 非涉密数据开放率 = published datasets whose resource is
  openable ÷ openable resources (null when there are none). Secret and closed resources are
  outside it, as the plan puts them outside opening.
- planned: entries of the opening plan (开放计划); plan_published: of those, opened;
  plan_overdue: planned date passed (before today) and not yet opened (逾期未开放).
- stale: published datasets overdue against their update cycle (更新不及时): the data was last
  refreshed (`data_updated_at`) longer ago than the cycle's days (hub update cycles; irregular has
  none), measured at `now`. held: published datasets whose latest source version failed the
  de-identification or k-anonymity check and was held back (the last good copy stays public).
- views, downloads, api_calls: counted since publication; per dataset also per day over the last
  30 days of the city's calendar (`series`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

import cityos.hub.service as hub
from cityos.core import access
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.models import Department
from cityos.core.service import MAX_PAGE, department_by_code
from cityos.core.workdays import CITY_TZ
from cityos.opendata.models import Dataset, PlanEntry, Usage

DAYS = 30
KINDS = ("views", "downloads", "api_calls")
DEFINITIONS = {
    "non_secret": "catalog resources not marked secret (非涉密)",
    "openable": "non-secret resources whose open type is not closed (非涉密且非不予开放)",
    "open_rate": "published datasets of openable resources / openable resources (非涉密数据开放率)",
    "plan_overdue": "plan entries whose date is before today and whose resource is not published",
    "stale": "published datasets whose data_updated_at + update cycle days is before now (更新不及时)",
    "held": "published datasets whose latest source version was held back by a failed check",
}


def _blank() -> dict[str, Any]:
    return {"resources": 0, "non_secret": 0, "openable": 0, "published": 0, "published_openable": 0,
            "planned": 0, "plan_published": 0, "plan_overdue": 0, "stale": 0, "held": 0,
            "views": 0, "downloads": 0, "api_calls": 0}


def _finish(f: dict[str, Any]) -> dict[str, Any]:
    f["open_rate"] = round(f["published_openable"] / f["openable"], 4) if f["openable"] else None
    return f


def due_at(ds: Dataset) -> dt.datetime | None:
    """When a published dataset's data is next due (更新期限), by its update cycle."""
    days = hub.UPDATE_CYCLES.get(ds.update_cycle, ("", None))[1]
    last = ds.data_updated_at or ds.published_at
    if days is None or last is None:
        return None
    return last + dt.timedelta(days=days)


def _series(session: Session, ids: list[int], days: list[dt.date]) -> dict[int, list[dict[str, Any]]]:
    """Daily usage of these datasets over `days`, zero-filled, in one query."""
    got: dict[int, dict[dt.date, Usage]] = defaultdict(dict)
    if ids:
        for u in session.scalars(select(Usage).where(Usage.dataset_id.in_(ids), Usage.day >= days[0],
                                                     Usage.day <= days[-1])):
            got[u.dataset_id][u.day] = u
    out = {}
    for i in ids:
        rows = got.get(i, {})
        out[i] = [{"day": d.isoformat(), **{k: getattr(rows[d], k) if d in rows else 0 for k in KINDS}}
                  for d in days]
    return out


def _catalog(session: Session, actor: Actor) -> Iterator[Any]:
    """Every catalog resource, a page at a time (the hub's catalog read, as the figures' readers
    may browse the whole catalog)."""
    offset: int | None = 0
    while offset is not None:
        page = hub.resource_list(session, actor, limit=MAX_PAGE, offset=offset)
        yield from page.items
        offset = page.next_offset


def figures(session: Session, actor: Actor, today: dt.date | None = None, *,
            department: str | None = None) -> dict[str, Any]:
    """The open-data figures (see the module's definitions) as of `today` in the city; given a
    `today`, "now" for freshness is the end of that day."""
    access.require(actor, "opendata.stats.read", None, session)
    only = department_by_code(session, department).id if department else None
    if today is None:
        now = utcnow()
        today = now.astimezone(CITY_TZ).date()
    else:
        now = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), CITY_TZ).astimezone(dt.UTC)
    days = [today - dt.timedelta(days=n) for n in range(DAYS - 1, -1, -1)]
    city, per = _blank(), defaultdict[int, dict[str, Any]](_blank)

    def add(dept_id: int, key: str, n: int = 1) -> None:
        city[key] += n
        per[dept_id][key] += n

    openable: set[int] = set()
    for r in _catalog(session, actor):
        add(r.department_id, "resources")
        if not r.secret:
            add(r.department_id, "non_secret")
            if r.open_type != "closed":
                add(r.department_id, "openable")
                openable.add(r.id)
    published = list(session.scalars(select(Dataset).where(Dataset.state == "published")
                                     .options(selectinload(Dataset.department))
                                     .order_by(Dataset.department_id, Dataset.name)))
    opened = {ds.resource_id for ds in published}
    rows = []
    for ds in published:
        add(ds.department_id, "published")
        if ds.resource_id in openable:
            add(ds.department_id, "published_openable")
        due = due_at(ds)
        stale = due is not None and due < now
        if stale:
            add(ds.department_id, "stale")
        if ds.held_reason:
            add(ds.department_id, "held")
        for k in KINDS:
            add(ds.department_id, k, getattr(ds, k))
        rows.append({"name": ds.name, "title": ds.title, "department": ds.department.code,
                     "department_name": ds.department.name, "open_level": ds.open_level,
                     "update_cycle": ds.update_cycle, "data_updated_at": ds.data_updated_at,
                     "due_at": due, "stale": stale,
                     "overdue_days": (now - due).days if stale and due is not None else 0,
                     "held": bool(ds.held_reason), "row_count": ds.row_count,
                     **{k: getattr(ds, k) for k in KINDS}})
    for e in session.execute(select(PlanEntry.department_id, PlanEntry.resource_id, PlanEntry.planned_on)):
        add(e.department_id, "planned")
        if e.resource_id in opened:
            add(e.department_id, "plan_published")
        elif e.planned_on < today:
            add(e.department_id, "plan_overdue")
    series = _series(session, [ds.id for ds in published], days)
    city_series = [{"day": d.isoformat(), **dict.fromkeys(KINDS, 0)} for d in days]
    for ds, r in zip(published, rows, strict=True):
        r["series"] = series[ds.id]
        for total, day in zip(city_series, r["series"], strict=True):
            for k in KINDS:
                total[k] += day[k]
    if only is not None:
        per = defaultdict(_blank, {only: per[only]})
        rows = [r for ds, r in zip(published, rows, strict=True) if ds.department_id == only]
    depts = {d.id: d for d in session.scalars(select(Department).where(Department.id.in_(list(per))))}
    departments = sorted(({"department": depts[i].code, "department_name": depts[i].name, **_finish(f)}
                          for i, f in per.items()), key=lambda x: x["department"])
    return {"as_of": today.isoformat(), "now": now, "days": DAYS, "definitions": DEFINITIONS,
            "city": _finish(city), "departments": departments, "datasets": rows, "series": city_series}
