"""Build the demo city's open data (构建演示开放数据): topics, the opening plan, published datasets
and applications for conditional data, after the data hub.

Everything goes through `opendata.service` and `opendata.applications` as the demo's people,
so it is checked and audited like real work: the data office (`admin`) defines the topics and
the opening plan; each dataset is drafted and submitted by a staff member of its provider
department, approved by that department's admin, then published by the data office, which
builds its de-identified copy. The description is `opendata_catalog.toml`:

  [[topic]]        name, title, title_en, description, bureaus (their datasets' topic)
  [[open]]         one per resource the hub catalog marks open or conditional: resource (its
                   name; a base registry by its branch), name (CKAN), stage (published,
                   overdue: date passed and still in review, planned: later this year),
                   progress (how far an overdue one got: draft or submitted), topics and tags
                   (added to the department's topic and the resource's keywords), rules,
                   quasi, k (without rules: `default_rules`)
  [[resource]]     a resource of people data (hub_catalog.toml's format) that the demo adds
                   to the hub, so de-identification has something to do: 市民政局's list of
                   senior allowance recipients, from the population registry
  [[application]]  who applies for which conditional dataset, and the outcome

The plan's dates fall in the current year (in the city): published entries before today,
overdue ones a few weeks ago, planned ones between now and the year's end. Publication dates
and review steps are dated to the plan (as `hub_seed` backdates its overdue requests); the
audit log keeps the true time.

Idempotent: a user, topic, plan entry, dataset or application that exists is left as it is.
Each dataset commits on its own, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import tomllib
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import access, auth
from cityos.core import service as core
from cityos.core.access import SYSTEM, Actor
from cityos.core.errors import CityOSError
from cityos.core.identifiers import credit_code_with_check
from cityos.core.models import User
from cityos.core.workdays import CITY_TZ
from cityos.demo import data, hub_seed
from cityos.demo import hub_data as hd
from cityos.demo import hub_rows as hr
from cityos.hub import loading, registries
from cityos.hub import service as hub
from cityos.hub.models import Resource
from cityos.opendata import applications, service
from cityos.opendata.models import Application, Dataset, PlanEntry, Review, Topic

CATALOG = Path(__file__).with_name("opendata_catalog.toml")
OFFICE = "admin"  # the data office (数据局审核): the platform admin
# The demo's company (企业用户): a resident login that applies for conditional data.
COMPANY_USER = ("company_user", "220202001", "吉林市松江数智科技有限公司（经办人）")
COMPANY_ORG_BASE = 70_000_000  # organization codes of the applicants' companies
SENIOR_AGE = 80
# The senior list is drawn from at least this many residents (2,000 seniors), so that a tiny
# demo has classes of five (k-anonymity) too; from scale 0.05 on, from the registry itself.
SENIOR_FLOOR = 50_000
ALLOWANCE = ((100, 500), (90, 300), (80, 100))  # age from, yuan a month
SPATIAL = data.CITY[0] + "（" + "、".join(hd.DISTRICT_NAMES.values()) + "）"
LICENCE = "CC-BY-4.0"
STAGES = ("published", "overdue", "planned")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    title: str
    title_en: str
    description: str = ""
    bureaus: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpenSpec:
    """How one resource opens: its dataset's name, stage, topics, tags and de-identification."""

    resource: str
    name: str
    stage: str = "published"
    progress: str | None = None  # overdue: draft | submitted (how far it got)
    topics: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    rules: tuple[dict[str, Any], ...] | None = None
    quasi: tuple[str, ...] = ()
    k: int = 5


@dataclass(frozen=True)
class AppSpec:
    """An application for a conditional dataset and what becomes of it."""

    dataset: str
    user: str
    applicant: str
    contact: str
    purpose: str
    outcome: str  # pending | approved | refused
    decider: str | None = None
    reason: str | None = None
    credit_org: int | None = None  # the applicant company's number (its credit code)

    @property
    def credit_code(self) -> str | None:
        if self.credit_org is None:
            return None
        organization = data.org_code(COMPANY_ORG_BASE + self.credit_org)
        return credit_code_with_check(f"91{data.DISTRICTS[0][0]}{organization}")  # a company of 昌邑区


@dataclass(frozen=True)
class Catalog:
    topics: tuple[TopicSpec, ...]
    opens: tuple[OpenSpec, ...]
    resources: tuple[hd.Dataset, ...]
    applications: tuple[AppSpec, ...]


def _tuples(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


@cache
def catalog() -> Catalog:
    """The open-data demo of `opendata_catalog.toml`, read once."""
    raw = tomllib.loads(CATALOG.read_text(encoding="utf-8"))
    resources = tuple(
        hd.Dataset(**_tuples({k: v for k, v in d.items() if k != "cols"}),
                   cols=tuple(hd.Col.parse(c) for c in d["cols"]))
        for d in raw.get("resource", []))
    return Catalog(tuple(TopicSpec(**_tuples(t)) for t in raw["topic"]),
                   tuple(OpenSpec(**_tuples(o)) for o in raw["open"]), resources,
                   tuple(AppSpec(**a) for a in raw.get("application", [])))


@dataclass
class OpenReport:
    """What the open-data step did, and its time."""

    users_created: int = 0
    topics_created: int = 0
    plan_created: int = 0
    resources_created: int = 0
    people_rows: int = 0
    published: list[tuple[str, int, float]] = field(default_factory=list)  # name, rows, seconds
    in_review: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # name, reason
    applications_created: int = 0
    key: str | None = None  # the approved application's key (shown once, when issued)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(n for _, n, _ in self.published)

    @property
    def created(self) -> int:
        return (self.users_created + self.topics_created + self.plan_created + self.resources_created
                + len(self.published) + self.in_review + self.applications_created)


# -- de-identification defaults --------------------------------------------------------------------


def _is_name(name: str, title: str) -> bool:
    return (name in ("name", "legal_rep") or name.endswith("_name") or "姓名" in title
            or "代表人" in title)


def default_rules(res: Resource) -> list[dict[str, Any]]:
    """Rules for a resource that the catalog gives none: ID numbers masked, phones suppressed,
    names masked to the surname, birth dates to age bands, addresses to the street, the rest of
    what is sensitive or internal suppressed; in people data, coordinates rounded to ~100 m."""
    people = any(i.type == "citizen_id" for i in res.items)
    rules: list[dict[str, Any]] = []
    for i in res.items:
        rule: dict[str, Any] | None = None
        if i.type == "citizen_id":
            rule = {"action": "mask"}
        elif i.type == "phone":
            rule = {"action": "suppress"}
        elif i.sensitivity in ("sensitive", "internal"):
            if i.type == "date" and ("出生" in i.title or "birth" in i.name):
                rule = {"action": "generalize", "to": "age_band", "width": 10}
            elif i.type == "string" and _is_name(i.name, i.title):
                rule = {"action": "mask", "kind": "name"}
            elif i.type == "string" and ("地址" in i.title or "住所" in i.title):
                rule = {"action": "generalize", "to": "community"}
            else:
                rule = {"action": "suppress"}
        elif people and i.name in ("lon", "lat") and i.type == "number":
            rule = {"action": "round", "decimals": 3}
        if rule is not None:
            rules.append({"field": i.name, **rule})
    return rules


def slug(text: str) -> str:
    """A CKAN name from an English title: "Hourly air quality" → "hourly-air-quality"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:100]


# -- users, topics, the people resource ------------------------------------------------------------


def _bureau_slugs() -> dict[str, str]:
    """Department code → the bureau's username slug (220200-gaj → police)."""
    return {f"{data.CITY_CODE}-{suffix}": s for suffix, _n, _e, s in data.BUREAUS}


def _users(session: Session, password: str, departments: set[str], report: OpenReport) -> None:
    """A staff member and an admin of each provider department that has none yet (the demo's
    plan staffs six bureaus), and the company user that applies for conditional data."""
    have = set(session.scalars(select(User.username)))
    slugs = _bureau_slugs()
    wanted: list[tuple[str, str, str, str]] = []
    for code in sorted(departments):
        dept = core.department_by_code(session, code)
        for role, suffix in data.ROLE_SUFFIX.items():
            wanted.append((f"{slugs[code]}_{suffix}", code, role, f"{dept.name}{access.ROLES[role][0]}"))
    username, home, display = COMPANY_USER
    wanted.append((username, home, access.RESIDENT, display))
    for username, code, role, display in wanted:
        if username in have:
            continue
        core.user_create(session, SYSTEM, username=username, password=password, department_code=code,
                         role=role, display_name=display)
        report.users_created += 1


def _topics(session: Session, office: Actor, report: OpenReport) -> None:
    have = set(session.scalars(select(Topic.name)))
    for t in catalog().topics:
        if t.name not in have:
            service.topic_create(session, office, name=t.name, title=t.title, title_en=t.title_en,
                                 description=t.description)
            report.topics_created += 1


def _senior_cutoff(today: dt.date) -> dt.date:
    try:
        return today.replace(year=today.year - SENIOR_AGE)
    except ValueError:  # 29 February
        return today.replace(year=today.year - SENIOR_AGE, day=28)


def senior_rows(scale: float, today: dt.date) -> Iterator[dict[str, Any]]:
    """The residents aged 80 and over who draw the senior allowance (高龄津贴), alive, in
    registry order: the population registry's own residents once it has 50,000 or more."""
    people = hr.People(max(hub_seed.registry_rows("population", scale), SENIOR_FLOOR))
    cutoff, n = _senior_cutoff(today), 0
    for i in range(people.n):
        if people.birth(i)[1] > cutoff:
            continue
        p = people.person(i)
        if p.death_date is not None:
            continue
        n += 1
        born = p.birth_date
        age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        allowance = next(yuan for since, yuan in ALLOWANCE if age >= since)
        status = "暂停发放" if hr.mix(i ^ 0x5E110) % 40 == 0 else "正常发放"
        yield {"record_no": f"GL{n:07d}", "id_number": p.id_number, "name": p.name, "gender": p.gender,
               "birth_date": born, "district": p.district_name, "address": p.address, "phone": p.phone,
               "allowance": allowance, "status": status}


def _people_resources(session: Session, scale: float, today: dt.date, report: OpenReport) -> None:
    """Catalog the demo's people resource in the hub and load its rows (once)."""
    for ds in catalog().resources:
        dept = core.department_by_code(session, ds.department)
        res = session.scalar(select(Resource).where(Resource.department_id == dept.id,
                                                    Resource.name == ds.name))
        if res is None:
            related = [registries.registry_resource(session, r).code
                       if r in registries.REGISTRIES else _resource(session, r).code
                       for r in ds.related]
            res = hub.resource_create(session, SYSTEM, ds.spec(related))
            report.resources_created += 1
        if res.row_count == 0:
            result = loading.rows_write(session, SYSTEM, res.code, senior_rows(scale, today),
                                        mode="replace", note=hub_seed.NOTE)
            report.people_rows += result.rows_in
        session.commit()


def _resource(session: Session, name: str) -> Resource:
    """A hub resource by name, or a base registry by its branch."""
    if name in registries.REGISTRIES:
        return registries.registry_resource(session, name)
    res = session.scalar(select(Resource).where(Resource.name == name).order_by(Resource.id))
    if res is None:
        raise LookupError(f"no hub resource {name!r} / 无此资源")
    return res


def openable(session: Session) -> list[tuple[Resource, OpenSpec]]:
    """Every resource the hub catalog marks open or conditional (map layers aside), with how it opens: the
    catalog's entries first, in their order, then any other (published under its English name)."""
    # Map layers (format geo) open through the map and OGC API, not as rows: not planned here.
    resources = list(session.scalars(select(Resource).where(
        Resource.open_type.in_(("open", "conditional")), Resource.secret.is_(False),
        Resource.format != "geo").order_by(Resource.id)))
    by_key = {(r.base_branch if r.category == "base" and r.base_branch in registries.REGISTRIES
               else r.name): r for r in resources}
    out: list[tuple[Resource, OpenSpec]] = []
    for spec in catalog().opens:
        res = by_key.pop(spec.resource, None)
        if res is not None:
            out.append((res, spec))
    out += [(r, OpenSpec(r.name, slug(r.name_en or r.code))) for r in by_key.values()]
    return out


# -- the plan ---------------------------------------------------------------------------------------


def plan_dates(stages: list[str], today: dt.date) -> list[dt.date]:
    """Dates for the plan's entries in the current year: published ones spread from January to
    three weeks ago, overdue ones a few weeks back, planned ones from two weeks on to the year's end."""
    start, end = dt.date(today.year, 1, 15), today - dt.timedelta(days=21)
    if (end - start).days < 60:  # early in the year: the plan began last year
        start = end - dt.timedelta(days=300)
    first, last = today + dt.timedelta(days=14), dt.date(today.year, 12, 31)
    if (last - first).days < 14:  # late in December: into next year
        last = first + dt.timedelta(days=60)
    counts = {s: stages.count(s) for s in STAGES}
    seen = dict.fromkeys(STAGES, 0)
    out = []
    for stage in stages:
        i = seen[stage] = seen[stage] + 1
        if stage == "published":
            out.append(start + (end - start) * i / (counts[stage] + 1))
        elif stage == "overdue":
            out.append(today - dt.timedelta(days=20 + 26 * (i - 1)))
        else:
            out.append(first + (last - first) * (i - 1) / max(counts[stage] - 1, 1))
    return out


def _plan(session: Session, office: Actor, items: list[tuple[Resource, OpenSpec]], dates: list[dt.date],
          report: OpenReport) -> None:
    planned = set(session.scalars(select(PlanEntry.resource_id)))
    for (res, spec), day in zip(items, dates, strict=True):
        if res.id in planned:
            continue
        note = "部门数据治理未完成，延期 / delayed: data cleaning" if spec.stage == "overdue" else None
        service.plan_add(session, office, resource=res.code, planned_on=day, note=note,
                         open_level="conditional" if res.open_type == "conditional" else "open")
        report.plan_created += 1
    session.commit()


# -- publication ------------------------------------------------------------------------------------


def _actor(session: Session, username: str) -> Actor:
    user = core.user_by_name(session, username)
    return auth.user_actor(user)


def dataset_spec(res: Resource, spec: OpenSpec, topics: tuple[TopicSpec, ...]) -> dict[str, Any]:
    """The draft of a dataset: names, topics by department, tags, rules, geo fields."""
    suffix = res.department.code.rsplit("-", 1)[-1]
    names = [t.name for t in topics if suffix in t.bureaus] + list(spec.topics)
    items = {i.name: i for i in res.items}
    rules = list(spec.rules) if spec.rules is not None else default_rules(res)
    geo = {n for n in ("lon", "lat") if n in items and items[n].type == "number"
           and not any(r["field"] == n and r["action"] == "suppress" for r in rules)}
    return {
        "name": spec.name, "title": res.name, "title_en": res.name_en, "description": res.abstract,
        "topics": list(dict.fromkeys(names)), "tags": list(dict.fromkeys([*res.keywords, *spec.tags])),
        "licence": LICENCE, "spatial": SPATIAL, "rules": rules, "quasi_identifiers": list(spec.quasi),
        "k": spec.k, "lon_field": "lon" if geo == {"lon", "lat"} else None,
        "lat_field": "lat" if geo == {"lon", "lat"} else None,
    }


def _at(day: dt.date, hour: int) -> dt.datetime:
    """10:00 (or another hour) on a day in the city, as the UTC time storage keeps."""
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=CITY_TZ).astimezone(dt.UTC)


def _backdate(session: Session, ds: Dataset, published_on: dt.date) -> None:
    """Date the review steps to the plan: drafted a week before publication, reviewed since."""
    steps = list(session.scalars(select(Review).where(Review.dataset_id == ds.id).order_by(Review.id)))
    offsets = {"draft": 7, "submit": 6, "provider_approve": 3, "office_approve": 0}
    for r in steps:
        r.at = _at(published_on - dt.timedelta(days=offsets.get(r.step, 0)), 10 + offsets.get(r.step, 0) % 5)
    ds.created_at = _at(published_on - dt.timedelta(days=7), 9)
    if ds.state == "published":
        ds.published_at = _at(published_on, 15)


def publish(session: Session, res: Resource, spec: OpenSpec, day: dt.date, to: str = "published") -> Dataset:
    """Take a resource through the review as its department's people would, as far as `to`
    (draft, submitted, published): staff draft and submit, their admin approves, the data office
    publishes (building the de-identified copy)."""
    who = _bureau_slugs()[res.department.code]
    staff, admin = _actor(session, f"{who}_staff"), _actor(session, f"{who}_admin")
    ds = service.dataset_draft(session, staff, resource=res.code,
                               spec=dataset_spec(res, spec, catalog().topics))
    if to != "draft":
        service.dataset_submit(session, staff, ds.name, note="已按脱敏规则处理，请审核 / please review")
    if to == "published":
        service.dataset_approve(session, admin, ds.name, note="同意开放 / approved by the provider")
        service.dataset_approve(session, _actor(session, OFFICE), ds.name,
                                note="符合公共数据开放要求，予以发布 / published by the data office")
    # Published on the planned day, a few of them late; drafts dated weeks before their due date.
    late = to == "published" and ds.id % 7 == 3
    _backdate(session, ds, day + dt.timedelta(days=5) if late else
              day - dt.timedelta(days=(ds.id % 4) if to == "published" else 40))
    return ds


def _publish_all(session: Session, items: list[tuple[Resource, OpenSpec]], dates: list[dt.date],
                 bars: hub_seed.Bars, report: OpenReport) -> None:
    have = set(session.scalars(select(Dataset.resource_id)))
    work = [(res, spec, day) for (res, spec), day in zip(items, dates, strict=True)
            if spec.stage == "published" or spec.progress]
    with bars.task("开放数据 Open data", len(work)) as advance:
        for res, spec, day in work:
            advance(1)
            if res.id in have:
                report.skipped += 1
                continue
            started = time.monotonic()
            to = "published" if spec.stage == "published" else spec.progress or "draft"
            try:
                ds = publish(session, res, spec, day, to)
                session.commit()
            except CityOSError as exc:  # a check refused it: say why, build the rest
                session.rollback()
                reason = "; ".join(f"{e.field}: {e.reason}" for e in exc.errors) or exc.detail
                report.failed.append((spec.name, reason))
                bars.log(f"  [yellow]{res.name} → {spec.name}: not published / 未发布: {reason}[/yellow]")
                continue
            seconds = time.monotonic() - started
            if to == "published":
                report.published.append((ds.name, ds.row_count, seconds))
                bars.log(f"  {res.name} → {ds.name}: {ds.row_count:,} rows / 行 ({seconds:.1f} s)")
            else:
                report.in_review += 1


# -- applications -----------------------------------------------------------------------------------


def _applications(session: Session, report: OpenReport) -> None:
    for a in catalog().applications:
        ds = session.scalar(select(Dataset).where(Dataset.name == a.dataset))
        if ds is None or ds.state != "published":
            continue
        actor = _actor(session, a.user)
        if session.scalar(select(Application.id).where(
                Application.dataset_id == ds.id, Application.user_id == actor.user_id,
                Application.purpose == a.purpose)) is not None:
            continue
        app = applications.application_create(session, actor, ds, applicant=a.applicant, contact=a.contact,
                                              purpose=a.purpose, credit_code=a.credit_code)
        report.applications_created += 1
        if a.outcome in ("approved", "refused") and a.decider:
            _, key = applications.application_decide(session, _actor(session, a.decider), app.id,
                                                     approve=a.outcome == "approved", reason=a.reason)
            report.key = report.key or key
        session.commit()


# -- the step ---------------------------------------------------------------------------------------


def build_open(session: Session, scale: float, password: str, console: Console | None = None,
               today: dt.date | None = None) -> OpenReport:
    """The open data of the demo city whose data hub was just built at `scale`."""
    started = time.monotonic()
    today = today or hub.city_today()
    report = OpenReport()
    bars = hub_seed.Bars(console)
    with bars.progress or nullcontext():
        _people_resources(session, scale, today, report)
        items = openable(session)
        departments = {res.department.code for res, spec in items if (
            spec.stage == "published" or spec.progress) and res.department.code in _bureau_slugs()}
        departments |= {d.department for d in catalog().resources}
        _users(session, password, departments, report)
        session.commit()
        office = _actor(session, OFFICE)
        _topics(session, office, report)
        dates = plan_dates([spec.stage for _, spec in items], today)
        _plan(session, office, items, dates, report)
        _publish_all(session, items, dates, bars, report)
        _applications(session, report)
    report.seconds = time.monotonic() - started
    return report


def summary_line(report: OpenReport) -> str:
    failed = f", [yellow]{len(report.failed)} refused by the checks[/yellow]" if report.failed else ""
    people = (f"; {report.resources_created} people resource added to the hub ({report.people_rows:,} rows)"
              if report.resources_created else "")
    return (f"open data / 公共数据开放: {len(report.published)} datasets published ({report.rows:,} "
            f"de-identified rows), {report.in_review} in review, {report.plan_created} plan entries, "
            f"{report.topics_created} topics, {report.applications_created} applications{failed} "
            f"({report.skipped} datasets already there{people}; {report.seconds:.1f} s)")


def try_table(password: str, report: OpenReport) -> Table:
    """Who to sign in as to see open data at work (试一试)."""
    table = Table("username / 用户名", "what to try / 试一试", title="Try open data / 体验公共数据开放",
                  caption=f"password / 密码: {password}")
    table.add_row(COMPANY_USER[0], "a company (企业用户): its application for zoning-parcels is pending; "
                  "enterprise-credit-ratings was approved (keys are secrets: never printed; sign in as "
                  "planning_admin and approve the pending one to see a key once)")
    table.add_row("ndrc_admin / planning_admin",
                  "decide applications for 市发改委's / 市规划局's conditional data")
    table.add_row("quality_admin", "a submission awaits your review (metrology-verifications, overdue)")
    table.add_row(OFFICE, "the data office (数据局): the opening plan, publication reviews, topics")
    table.add_row("—", "public: /api/3/action/package_search?q=空气, "
                  "/api/3/action/datastore_search?resource_id=senior-allowance")
    return table
