"""Open data operations (公共数据开放): the opening plan, publication review, de-identified
copies that follow their source, and the public reads every front door (portal, CKAN API,
DCAT) uses. Plain functions `(session, actor, ...) -> result`; each checks access once.

A dataset goes draft → submitted (by the provider's staff) → provider_approved (by the
provider department's admin) → published (by the data office, i.e. the platform admins who run
the city's data bureau). Each step is audited. Publication refuses a dataset whose sensitive
fields have no de-identification rule or whose rows fail k-anonymity.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, joinedload, selectinload

import cityos.hub.service as hub
from cityos.core import access, audit, crypto, events
from cityos.core.access import ALL, OWN, SUBTREE, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, FieldError, Invalid, NotFound
from cityos.core.models import Department
from cityos.core.service import Paged, paginate
from cityos.opendata import deid, snapshot
from cityos.opendata.models import Dataset, PlanEntry, Review, Topic

# -- vocabularies ---------------------------------------------------------------------------------

OPEN_LEVELS = {"open": ("无条件开放", "Open"), "conditional": ("有条件开放", "Conditional")}
LICENCES = {  # id: (title, url)
    "CC-BY-4.0": ("知识共享署名 4.0 / Creative Commons Attribution 4.0",
                  "https://creativecommons.org/licenses/by/4.0/"),
    "CC0-1.0": ("知识共享零 1.0 / CC0 1.0 Public Domain Dedication",
                "https://creativecommons.org/publicdomain/zero/1.0/"),
    "ODC-BY-1.0": ("开放数据共用署名许可 / Open Data Commons Attribution 1.0",
                   "https://opendatacommons.org/licenses/by/1-0/"),
    "CN-GOV-OPEN": ("吉林市公共数据开放许可协议 / Jilin City Public Data Licence",
                    "http://127.0.0.1:8000/data/licence"),
}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,99}$")
STATES = {"draft": "草稿", "submitted": "待部门审核", "provider_approved": "待数据局审核",
          "published": "已开放", "refused": "已退回", "withdrawn": "已撤回"}
MAX_K = 1000

# -- permissions ----------------------------------------------------------------------------------

access.define("opendata.dataset.read", "Browse published open data (开放数据)", public=True)
access.define("opendata.dataset.prepare", "Prepare a department's resource for publication",
              department_admin=SUBTREE, department_staff=OWN)
access.define("opendata.dataset.provider_review", "Approve publication as the provider (部门审核)",
              department_admin=SUBTREE)
# The data office (数据局) runs the platform: its review is the platform admins'.
access.define("opendata.dataset.office_review", "Approve publication as the data office (数据局审核)")
access.define("opendata.plan.write", "Plan when a department's resources open (开放计划)",
              department_admin=SUBTREE)
access.define("opendata.plan.read", "See the opening plan", department_admin=ALL,
              department_staff=ALL, auditor=ALL)
access.define("opendata.stats.read", "See open-data figures", department_admin=ALL,
              department_staff=ALL, auditor=ALL)
access.define("opendata.topic.write", "Define topics (主题)")


def dataset_target(ds: Dataset) -> Target:
    return Target("opendata.dataset", ds.id, ds.department_id, ds.department.path)


def _ring() -> crypto.Keyring:
    return hub.keyring()


# -- topics ---------------------------------------------------------------------------------------


def topic_create(session: Session, actor: Actor, *, name: str, title: str, title_en: str | None = None,
                 description: str = "") -> Topic:
    access.require(actor, "opendata.topic.write", session=session)
    if not NAME_RE.match(name):
        raise Invalid("name", "lowercase letters, digits, - and _ / 仅限小写字母、数字、-和_")
    if session.scalar(select(Topic.id).where(Topic.name == name)):
        raise Conflict(f"topic {name} exists / 主题已存在", "name")
    topic = Topic(name=name, title=title, title_en=title_en, description=description)
    session.add(topic)
    session.flush()
    audit.append(session, actor=actor.name, action="opendata.topic.create", object_type="opendata.topic",
                 object_id=name)
    return topic


def topics(session: Session) -> list[Topic]:
    return list(session.scalars(select(Topic).order_by(Topic.name)))


def topic_by_name(session: Session, name: str) -> Topic:
    topic = session.scalar(select(Topic).where(Topic.name == name))
    if topic is None:
        raise NotFound("topic", name)
    return topic


# -- the opening plan (开放计划) --------------------------------------------------------------------


def plan_add(session: Session, actor: Actor, *, resource: str, open_level: str, planned_on: dt.date,
             note: str | None = None) -> PlanEntry:
    """Put a resource on the opening plan (or move its date or level)."""
    res = hub.resource_by_code(session, resource)
    access.require(actor, "opendata.plan.write", hub.resource_target(res), session)
    if open_level not in OPEN_LEVELS:
        raise Invalid("open_level", f"one of {', '.join(OPEN_LEVELS)} / 开放级别无效")
    if res.secret or res.open_type == "closed":
        raise Invalid("resource", "the catalog marks this resource 不予开放 (closed) / 目录标记为不予开放")
    entry = session.scalar(select(PlanEntry).where(PlanEntry.resource_id == res.id))
    if entry is None:
        entry = PlanEntry(resource_id=res.id, department_id=res.department_id, created_by=actor.name,
                          open_level=open_level, planned_on=planned_on)
        session.add(entry)
    entry.open_level, entry.planned_on, entry.note = open_level, planned_on, note
    session.flush()
    audit.append(session, actor=actor.name, action="opendata.plan.set", department=res.department.code,
                 object_type="hub.resource", object_id=res.code,
                 detail={"open_level": open_level, "planned_on": planned_on.isoformat()})
    return entry


def plan_list(session: Session, actor: Actor, *, department: str | None = None, limit: int = 50,
              offset: int = 0) -> Paged:
    access.require(actor, "opendata.plan.read", session=session)
    stmt: Select[Any] = (select(PlanEntry).options(selectinload(PlanEntry.resource),
                                                   selectinload(PlanEntry.department))
                         .order_by(PlanEntry.planned_on, PlanEntry.id))
    if department:
        stmt = stmt.join(Department, PlanEntry.department_id == Department.id).where(
            Department.code == department)
    return paginate(session, stmt, limit, offset)


def plan_status(session: Session, entry: PlanEntry, today: dt.date | None = None) -> str:
    """published | due (date passed, not yet open: 逾期) | planned."""
    today = today or hub.city_today()
    published = session.scalar(select(Dataset.id).where(
        Dataset.resource_id == entry.resource_id, Dataset.state == "published"))
    if published:
        return "published"
    return "overdue" if entry.planned_on < today else "planned"


# -- drafting and review --------------------------------------------------------------------------


def sources_of(res: hub.Resource) -> list[deid.SourceField]:
    return [deid.SourceField(i.name, i.title, i.type, i.sensitivity) for i in res.items]


def dataset_by_name(session: Session, name: str) -> Dataset:
    """A dataset by its name or its id (uid), as CKAN accepts either."""
    ds = session.scalar(select(Dataset).where(or_(Dataset.name == name, Dataset.uid == name))
                        # One query: this runs on every public read.
                        .options(joinedload(Dataset.department), joinedload(Dataset.resource)))
    if ds is None:
        raise NotFound("dataset", name)
    return ds


def dataset_get(session: Session, actor: Actor, name: str) -> Dataset:
    """A dataset in any state, for those who prepare or review it (the console and staff API)."""
    ds = dataset_by_name(session, name)
    access.require(actor, "opendata.dataset.prepare", dataset_target(ds), session)
    return ds


def _check_spec(session: Session, res: hub.Resource, spec: dict[str, Any], ds: Dataset | None) -> None:
    errors: list[FieldError] = []

    def bad(name: str, reason: str) -> None:
        errors.append(FieldError(name, reason))

    name = spec.get("name")
    if name is not None:
        if not NAME_RE.match(name):
            bad("name", "2-100 lowercase letters, digits, - and _ / 2到100个小写字母、数字、-或_")
        else:
            other = session.scalar(select(Dataset.id).where(Dataset.name == name))
            if other is not None and (ds is None or other != ds.id):
                bad("name", f"{name} is taken / 名称已被使用")
    if "title" in spec and not (spec["title"] or "").strip():
        bad("title", "required / 必填")
    if spec.get("licence") is not None and spec["licence"] not in LICENCES:
        bad("licence", f"one of {', '.join(LICENCES)} / 许可协议无效")
    if spec.get("open_level") is not None and spec["open_level"] not in OPEN_LEVELS:
        bad("open_level", f"one of {', '.join(OPEN_LEVELS)} / 开放级别无效")
    if spec.get("update_cycle") is not None and spec["update_cycle"] not in hub.UPDATE_CYCLES:
        bad("update_cycle", f"one of {', '.join(hub.UPDATE_CYCLES)} / 更新周期无效")
    k = spec.get("k")
    if k is not None and not (isinstance(k, int) and 1 <= k <= MAX_K):
        bad("k", f"an integer from 1 to {MAX_K} / 应为1到{MAX_K}的整数")
    for t in spec.get("topics") or []:
        if session.scalar(select(Topic.id).where(Topic.name == t)) is None:
            bad("topics", f"no topic {t!r} / 无此主题")
    for tag in spec.get("tags") or []:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > 50:
            bad("tags", "tags are 1-50 characters / 标签长度应为1到50个字符")
    start, end = spec.get("temporal_start"), spec.get("temporal_end")
    if start and end and end < start:
        bad("temporal_end", "before temporal_start / 早于起始日期")
    if errors:
        raise Invalid.many(errors)
    # Quasi-identifiers and coordinates name output columns: check them against the rules in
    # force after this change (a quasi-identifier naming no column would drop out of k-anonymity).
    def now(key: str, default: Any) -> Any:
        return spec[key] if key in spec else (getattr(ds, key) if ds is not None else default)

    if {"rules", "quasi_identifiers", "lon_field", "lat_field"} & set(spec):
        rules = deid.parse_rules(now("rules", []) or [], sources_of(res))
        outs = {o.name for o in deid.output_fields(sources_of(res), rules)}
        for q in now("quasi_identifiers", []) or []:
            if q not in outs:
                bad("quasi_identifiers", f"{q!r} is not a published field / 不是开放字段")
        for key in ("lon_field", "lat_field"):
            if now(key, None) and now(key, None) not in outs:
                bad(key, f"{now(key, None)!r} is not a published field / 不是开放字段")
    if errors:
        raise Invalid.many(errors)


EDITABLE = ("title", "title_en", "description", "topics", "tags", "licence", "update_cycle",
            "open_level", "spatial", "temporal_start", "temporal_end", "lon_field", "lat_field",
            "rules", "quasi_identifiers", "k")


def dataset_draft(session: Session, actor: Actor, *, resource: str, spec: dict[str, Any]) -> Dataset:
    """Start a publication (发布申请) from a catalog resource of the actor's department."""
    res = hub.resource_by_code(session, resource)
    access.require(actor, "opendata.dataset.prepare", hub.resource_target(res), session)
    if res.secret or res.open_type == "closed":
        raise Invalid("resource", "the catalog marks this resource 不予开放 (closed) / 目录标记为不予开放")
    if session.scalar(select(Dataset.id).where(Dataset.resource_id == res.id)):
        raise Conflict("this resource already has a dataset / 该资源已有开放数据集", "resource")
    spec = {"name": spec.get("name") or res.code.lower(), "title": spec.get("title") or res.name,
            "licence": spec.get("licence") or "CC-BY-4.0", "update_cycle": spec.get("update_cycle")
            or res.update_cycle, "open_level": spec.get("open_level")
            or ("conditional" if res.open_type == "conditional" else "open"), **{
                k: v for k, v in spec.items() if v is not None and k not in ("name", "title")}}
    unknown = set(spec) - set(EDITABLE) - {"name"}
    if unknown:
        raise Invalid(sorted(unknown)[0], "unknown field / 未知字段")
    _check_spec(session, res, spec, None)
    ds = Dataset(uid=str(uuid.uuid4()), resource_id=res.id, department_id=res.department_id,
                 created_by=actor.name, description=res.abstract, tags=list(res.keywords), state="draft")
    for key, value in spec.items():
        setattr(ds, key, value)
    session.add(ds)
    session.flush()
    ds.department = res.department
    ds.resource = res
    _review(session, actor, ds, "draft")
    return ds


def dataset_update(session: Session, actor: Actor, name: str, changes: dict[str, Any]) -> Dataset:
    """Change a dataset's description or rules. Rules of a published dataset are re-checked and
    its copy rebuilt; its name never changes once published (links and clients depend on it)."""
    ds = dataset_by_name(session, name)
    access.require(actor, "opendata.dataset.prepare", dataset_target(ds), session)
    unknown = set(changes) - set(EDITABLE) - ({"name"} if ds.state != "published" else set())
    if unknown:
        raise Invalid(sorted(unknown)[0], "unknown or fixed field / 未知或不可修改的字段")
    _check_spec(session, ds.resource, changes, ds)
    for key, value in changes.items():
        setattr(ds, key, value)
    if ds.state in ("submitted", "provider_approved") and (
            {"rules", "quasi_identifiers", "k"} & set(changes)):
        ds.state = "draft"  # what was reviewed changed: review again
    session.flush()
    audit.append(session, actor=actor.name, action="opendata.dataset.update", department=ds.department.code,
                 object_type="opendata.dataset", object_id=ds.name, detail={"fields": sorted(changes)})
    rebuild = {"rules", "quasi_identifiers", "k", "lon_field", "lat_field"}
    if ds.state == "published" and rebuild & set(changes):
        dataset_refresh(session, ds, strict=True)
    if ds.state == "published":  # titles, tags and fields are searched: keep the index in step
        from cityos.opendata import search

        search.index_dataset(session, ds)
    return ds


def _review(session: Session, actor: Actor, ds: Dataset, step: str, note: str | None = None,
            detail: dict[str, Any] | None = None) -> None:
    session.add(Review(dataset_id=ds.id, step=step, by=actor.name, note=note))
    audit.append(session, actor=actor.name, action=f"opendata.dataset.{step}",
                 department=ds.department.code, object_type="opendata.dataset", object_id=ds.name,
                 detail={"note": note, **(detail or {})} if note or detail else None)


def publication_check(session: Session, ds: Dataset) -> snapshot.Built:
    """Would this dataset pass? Every sensitive field needs a rule and the rows k-anonymity.
    Raises Invalid naming the offending fields or combinations; writes nothing."""
    res = ds.resource
    sources = sources_of(res)
    rules = deid.parse_rules(ds.rules, sources)
    conn = session.connection()
    sample = list(_sample(conn, res, 200))
    findings = deid.uncovered(sources, rules, sample)
    if findings:
        raise Invalid.many([FieldError(f"rules.{f.field}", f.reason) for f in findings])
    built = snapshot.build(conn, ds.id, res, sources, rules, quasi=ds.quasi_identifiers,
                           k=ds.k, indexed=_indexed(res), check_only=True)
    if not built.ok:
        assert built.kanon is not None
        combos = "; ".join(", ".join(f"{k}={v}" for k, v in combo.items()) + f" ({n})"
                           for combo, n in built.kanon.offending[:5])
        raise Invalid("quasi_identifiers", f"{built.reason}. Smallest groups / 最小组合: {combos}")
    return built


def _sample(conn: Any, res: hub.Resource, n: int) -> list[dict[str, Any]]:
    out = []
    for row in hub.current_rows(conn, res, [i.name for i in res.items]):
        out.append(row)
        if len(out) >= n:
            break
    return out


def _indexed(res: hub.Resource) -> set[str]:
    """Published columns to index: what the source indexes or keys, and low-width types."""
    return {i.name for i in res.items if i.indexed or i.is_key or i.type in ("date", "integer")}


def dataset_submit(session: Session, actor: Actor, name: str, note: str | None = None) -> Dataset:
    """The provider's staff submit a draft for review, after the checks pass."""
    ds = dataset_by_name(session, name)
    access.require(actor, "opendata.dataset.prepare", dataset_target(ds), session)
    if ds.state not in ("draft", "refused", "withdrawn"):  # a withdrawn one may open again
        raise Conflict(f"a {ds.state} dataset cannot be submitted / 当前状态不能提交", "state")
    built = publication_check(session, ds)
    ds.state = "submitted"
    _review(session, actor, ds, "submit", note, {"rows": built.rows})
    return ds


def dataset_approve(session: Session, actor: Actor, name: str, note: str | None = None) -> Dataset:
    """Approve the next step: the provider department's admin, then the data office publishes."""
    ds = dataset_by_name(session, name)
    if ds.state == "submitted":
        access.require(actor, "opendata.dataset.provider_review", dataset_target(ds), session)
        ds.state = "provider_approved"
        _review(session, actor, ds, "provider_approve", note)
        return ds
    if ds.state == "provider_approved":
        access.require(actor, "opendata.dataset.office_review", dataset_target(ds), session)
        built = dataset_refresh(session, ds, strict=True)
        ds.state, ds.published_at, ds.held_reason = "published", utcnow(), None
        _review(session, actor, ds, "office_approve", note, {"rows": built.rows})
        from cityos.opendata import search

        search.index_dataset(session, ds)
        events.publish(events.OPENDATA_PUBLISHED, session=session, dataset=ds)
        return ds
    raise Conflict(f"a {ds.state} dataset has nothing to approve / 当前状态无需审核", "state")


def dataset_refuse(session: Session, actor: Actor, name: str, reason: str) -> Dataset:
    """Send a submission back (退回) with the reason; the provider may fix it and submit again."""
    ds = dataset_by_name(session, name)
    action = {"submitted": "opendata.dataset.provider_review",
              "provider_approved": "opendata.dataset.office_review"}.get(ds.state)
    if action is None:
        raise Conflict(f"a {ds.state} dataset is not under review / 不在审核中", "state")
    access.require(actor, action, dataset_target(ds), session)
    if not reason.strip():
        raise Invalid("reason", "required / 必填")
    ds.state = "refused"
    _review(session, actor, ds, "refuse", reason)
    return ds


def dataset_withdraw(session: Session, actor: Actor, name: str, reason: str) -> Dataset:
    """Take a published dataset down (撤回): its copy is dropped, its page says it was withdrawn."""
    ds = dataset_by_name(session, name)
    access.require(actor, "opendata.dataset.provider_review", dataset_target(ds), session)
    if ds.state != "published":
        raise Conflict("only a published dataset can be withdrawn / 仅已开放数据集可撤回", "state")
    if not reason.strip():
        raise Invalid("reason", "required / 必填")
    ds.state = "withdrawn"
    snapshot.drop(session.connection(), ds.id)
    from cityos.opendata import search

    search.unindex_dataset(session, ds)
    _review(session, actor, ds, "withdraw", reason)
    return ds


def reviews(session: Session, ds: Dataset) -> list[Review]:
    return list(session.scalars(select(Review).where(Review.dataset_id == ds.id).order_by(Review.id)))


# -- following the source (跟随更新) ---------------------------------------------------------------


def dataset_refresh(session: Session, ds: Dataset, *, strict: bool = False) -> snapshot.Built:
    """Rebuild the published copy from the source's current version. A failed check keeps the
    last good copy and records why (`held_reason`); with `strict` it raises instead."""
    res = ds.resource
    sources = sources_of(res)
    rules = deid.parse_rules(ds.rules, sources)
    conn = session.connection()
    findings = deid.uncovered(sources, rules, _sample(conn, res, 200))
    if findings:
        reason = "; ".join(f"{f.field}: {f.reason}" for f in findings)
        if strict:
            raise Invalid.many([FieldError(f"rules.{f.field}", f.reason) for f in findings])
        ds.held_reason = reason
        return snapshot.Built(False, reason=reason)
    built = snapshot.build(conn, ds.id, res, sources, rules,
                           quasi=ds.quasi_identifiers, k=ds.k, indexed=_indexed(res),
                           lon=ds.lon_field, lat=ds.lat_field)
    if not built.ok:
        if strict:
            raise Invalid("quasi_identifiers", built.reason or "k-anonymity / k-匿名")
        ds.held_reason = built.reason
        audit.append(session, actor="system", action="opendata.dataset.hold", department=ds.department.code,
                     object_type="opendata.dataset", object_id=ds.name, outcome="failure",
                     detail={"source_version": res.current_version, "reason": built.reason})
        return built
    ds.source_version, ds.row_count, ds.fields = res.current_version, built.rows, built.fields
    ds.bbox, ds.data_updated_at, ds.held_reason = built.bbox, utcnow(), None
    ds.modified_at = utcnow()
    return built


def _on_new_version(session: Session, resource: hub.Resource, version: Any) -> None:
    """A published dataset follows its source: rebuild its copy in the same transaction."""
    ds = session.scalar(select(Dataset).where(Dataset.resource_id == resource.id,
                                              Dataset.state == "published")
                        .options(selectinload(Dataset.department)))
    if ds is None:
        return
    ds.resource = resource
    dataset_refresh(session, ds)


events.subscribe(events.HUB_VERSION_CREATED, _on_new_version)


# -- public reads ---------------------------------------------------------------------------------


def published(session: Session, name: str) -> Dataset:
    """A published dataset by name or id; anything else is not found (not 'forbidden')."""
    ds = dataset_by_name(session, name)
    if not ds.public:
        raise NotFound("dataset", name)
    return ds


def dataset_list(session: Session, actor: Actor, *, state: str | None = None, department: str | None = None,
                 limit: int = 50, offset: int = 0) -> Paged:
    """The console's list: datasets of departments the actor may prepare, or all for the office."""
    from cityos.core.service import scope_filter

    if access.reach_of(actor, "opendata.dataset.office_review") == ALL:
        where: Any = True
    else:
        where = scope_filter(actor, "opendata.dataset.prepare", Dataset.department_id, Department.path)
    stmt: Select[Any] = (select(Dataset).join(Department, Dataset.department_id == Department.id)
                         .where(where).options(selectinload(Dataset.department))
                         .order_by(Dataset.modified_at.desc(), Dataset.id.desc()))
    if state:
        if state not in STATES:
            raise Invalid("state", f"one of {', '.join(STATES)} / 状态无效")
        stmt = stmt.where(Dataset.state == state)
    if department:
        stmt = stmt.where(Department.code == department)
    return paginate(session, stmt, limit, offset)


def organizations(session: Session) -> list[tuple[Department, int]]:
    """Departments with published datasets (CKAN organizations), with their counts."""
    rows = session.execute(
        select(Department, func.count(Dataset.id)).join(Dataset, Dataset.department_id == Department.id)
        .where(Dataset.state == "published").group_by(Department.id).order_by(Department.code))
    return [(d, int(n)) for d, n in rows]


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    return value.isoformat() if value else None


FORMATS = {  # download format: (mimetype, label)
    "csv": ("text/csv", "CSV"), "xlsx": (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "XLSX"),
    "json": ("application/json", "JSON"), "geojson": ("application/geo+json", "GeoJSON"),
    "parquet": ("application/vnd.apache.parquet", "Parquet"),
}


def download_formats(ds: Dataset) -> list[str]:
    return [f for f in FORMATS if f != "geojson" or (ds.lon_field and ds.lat_field)]


def org_dict(dept: Department, count: int | None = None) -> dict[str, Any]:
    """A department as a CKAN organization."""
    out: dict[str, Any] = {
        "id": dept.code, "name": dept.code, "title": dept.name, "display_name": dept.name,
        "description": "", "type": "organization", "is_organization": True, "state": "active",
        "image_url": "", "approval_status": "approved", "credit_code": getattr(dept, "credit_code", None),
        "created": _iso(getattr(dept, "created_at", None)),
    }
    if count is not None:
        out["package_count"] = count
    return out


def group_dict(topic: Topic, count: int | None = None) -> dict[str, Any]:
    """A topic as a CKAN group."""
    out: dict[str, Any] = {
        "id": topic.name, "name": topic.name, "title": topic.title, "title_en": topic.title_en,
        "display_name": topic.title, "description": topic.description, "type": "group",
        "is_organization": False, "state": "active", "image_url": "", "approval_status": "approved",
        "created": _iso(topic.created_at),
    }
    if count is not None:
        out["package_count"] = count
    return out


def resources_of(ds: Dataset, base_url: str) -> list[dict[str, Any]]:
    """CKAN resources of a dataset: the DataStore table (its API) and one per download format."""
    base = base_url.rstrip("/")
    common = {"package_id": ds.uid, "created": _iso(ds.published_at), "state": "active",
              "last_modified": _iso(ds.data_updated_at), "url_type": None}
    out = [{**common, "id": ds.name, "name": f"{ds.title}（数据接口 / API）", "format": "API",
            "mimetype": "application/json", "datastore_active": True, "position": 0,
            "description": "CKAN DataStore: datastore_search / datastore_search_sql",
            "url": f"{base}/api/3/action/datastore_search?resource_id={ds.name}"}]
    for pos, fmt in enumerate(download_formats(ds), start=1):
        mimetype, label = FORMATS[fmt]
        out.append({**common, "id": f"{ds.name}.{fmt}", "name": f"{ds.title}（{label}）", "format": label,
                    "mimetype": mimetype, "datastore_active": False, "position": pos,
                    "description": "", "url": f"{base}/data/dataset/{ds.name}/download.{fmt}"})
    return out


def package_dict(ds: Dataset, topics_by_name: dict[str, Topic], base_url: str) -> dict[str, Any]:
    """A dataset as a CKAN package (the one public form: the CKAN API, DCAT and pages use it)."""
    title, url = LICENCES.get(ds.licence, (ds.licence, ""))
    groups = [group_dict(topics_by_name[t]) for t in ds.topics if t in topics_by_name]
    resources = resources_of(ds, base_url)
    dept = ds.department
    return {
        "id": ds.uid, "name": ds.name, "title": ds.title, "title_en": ds.title_en, "notes": ds.description,
        "type": "dataset", "state": "active", "private": False,
        "url": f"{base_url.rstrip('/')}/data/dataset/{ds.name}",
        "license_id": ds.licence, "license_title": title, "license_url": url,
        "organization": org_dict(dept), "owner_org": dept.code,
        "groups": groups, "tags": [{"name": t, "display_name": t, "state": "active"} for t in ds.tags],
        "num_tags": len(ds.tags), "resources": resources, "num_resources": len(resources),
        "metadata_created": _iso(ds.published_at or ds.created_at),
        "metadata_modified": _iso(ds.modified_at), "version": str(ds.source_version),
        "update_cycle": ds.update_cycle, "open_level": ds.open_level, "spatial": ds.spatial,
        "bbox": ds.bbox, "temporal_start": _iso(ds.temporal_start), "temporal_end": _iso(ds.temporal_end),
        "resource_code": ds.resource.code.replace("-", "/"), "row_count": ds.row_count,
        "fields": [{"id": f["id"], "title": f["title"], "type": f["type"]} for f in ds.fields],
        "lon_field": ds.lon_field, "lat_field": ds.lat_field,
        "data_updated": _iso(ds.data_updated_at), "views": ds.views, "downloads": ds.downloads,
        "api_calls": ds.api_calls,
        "extras": [{"key": k, "value": v} for k, v in (
            ("update_cycle", ds.update_cycle), ("open_level", ds.open_level),
            ("resource_code", ds.resource.code.replace("-", "/")), ("spatial", ds.spatial or ""),
            ("temporal_start", _iso(ds.temporal_start) or ""),
            ("temporal_end", _iso(ds.temporal_end) or ""))],
    }


def topic_map(session: Session) -> dict[str, Topic]:
    return {t.name: t for t in topics(session)}


# -- for the operations center (plan) -------------------------------------------------------------


def open_counts(session: Session) -> dict[str, int]:
    """The plan's non-secret public data open rate (非涉密公共数据开放率): of the catalog's
    non-secret resources whose open type is not "closed" (the open-able ones), how many are
    published as an open dataset now."""
    openable = set(session.scalars(select(hub.Resource.id).where(
        hub.Resource.secret.is_(False), hub.Resource.open_type != "closed")))
    published = set(session.scalars(select(Dataset.resource_id).where(Dataset.state == "published")))
    return {"openable": len(openable), "published": len(openable & published),
            "published_all": len(published)}
