"""Data hub operations (数据共享交换平台): the catalog (资源目录), and — re-exported at the end —
loading, sharing and the base registries. Other engines import this module only.

Plain functions `(session, actor, ...) -> result`; each checks access once through
`core.access` and audits every write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, func, or_, select
from sqlalchemy.orm import Session, selectinload

from cityos.core import access, audit, cache, crypto
from cityos.core.access import ALL, OWN, SUBTREE, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.identifiers import validate_credit_code
from cityos.core.models import Department
from cityos.core.service import Paged, department_by_code, paginate
from cityos.core.workdays import CITY_TZ
from cityos.hub import store
from cityos.hub.models import Grant, Item, NegativeEntry, Resource, Version

# -- vocabularies (GB/T 21063 and the 2017 compilation guide) -------------------------------------

CATEGORIES = {"base": ("1", "基础信息资源", "Base"), "theme": ("2", "主题信息资源", "Theme"),
              "department": ("3", "部门信息资源", "Department")}
BASE_BRANCHES = {  # branch: (item code, 中文, English)
    "population": ("01", "人口基础信息库", "Population"),
    "legal_person": ("02", "法人单位基础信息库", "Legal persons"),
    "geo": ("03", "自然资源和空间地理基础信息库", "Natural resources and geography"),
    "credit": ("04", "社会信用信息库", "Social credit"),
    "licence": ("05", "电子证照库", "Electronic licences"),
}
SHARE_TYPES = {"unconditional": "无条件共享", "conditional": "有条件共享", "none": "不予共享"}
OPEN_TYPES = {"open": "无条件开放", "conditional": "有条件开放", "closed": "不予开放"}
SHARE_METHODS = {"api": "接口", "query": "在线查询", "download": "下载"}
FORMATS = {"table": "数据库表", "file": "文件", "api": "接口", "geo": "空间数据"}
UPDATE_CYCLES = {  # cycle: (中文, days; None = no fixed cycle)
    "realtime": ("实时", 1), "daily": ("每日", 1), "weekly": ("每周", 7), "monthly": ("每月", 31),
    "quarterly": ("每季度", 92), "yearly": ("每年", 366), "irregular": ("不定期", None),
}
SENSITIVITIES = {"public": "公开", "internal": "内部", "sensitive": "敏感"}

# -- permissions ----------------------------------------------------------------------------------

access.define("hub.catalog.read", "Browse the data catalog (资源目录)",
              department_admin=ALL, department_staff=ALL, auditor=ALL)
access.define("hub.resource.write", "Catalog and describe a department's resources",
              department_admin=SUBTREE, department_staff=OWN)
access.define("hub.data.load", "Load data into a department's resource",
              department_admin=SUBTREE, department_staff=OWN)
# Data itself: own department only, for every role; anything else needs a sharing grant.
access.define("hub.data.read", "Read a resource's rows", platform_admin=OWN,
              department_admin=OWN, department_staff=OWN)
access.define("hub.request.create", "Ask another department for a resource (共享申请)",
              platform_admin=OWN, department_admin=OWN, department_staff=OWN)
access.define("hub.request.read", "See requests to or from one's department",
              department_admin=OWN, department_staff=OWN, auditor=SUBTREE)
access.define("hub.request.decide", "Approve or refuse requests for one's resources (审核)",
              department_admin=OWN)
access.define("hub.stats.read", "See the sharing figures", department_admin=ALL,
              department_staff=ALL, auditor=ALL)


_GRANT_COLUMNS = Grant.__table__.c
# Built once: this runs on every shared read. It yields a Row with the Grant's columns.
_ACTIVE_GRANT = (
    select(_GRANT_COLUMNS.id, _GRANT_COLUMNS.resource_id, _GRANT_COLUMNS.department_id,
           _GRANT_COLUMNS.fields, _GRANT_COLUMNS.row_filter, _GRANT_COLUMNS.valid_until,
           _GRANT_COLUMNS.purpose)
    .where(_GRANT_COLUMNS.resource_id == bindparam("resource"),
           _GRANT_COLUMNS.department_id == bindparam("department"),
           _GRANT_COLUMNS.revoked_at.is_(None),
           or_(_GRANT_COLUMNS.valid_until.is_(None), _GRANT_COLUMNS.valid_until >= bindparam("today")))
    .order_by(_GRANT_COLUMNS.id.desc()).limit(1)
)


def city_today() -> dt.date:
    """Today in the city's time zone: a grant valid until a day ends at that day's midnight there."""
    return dt.datetime.now(CITY_TZ).date()


# The grant in force per (database, resource, department), for a moment: a granted, revoked or
# changed grant clears it on commit (`core.cache`), so a revocation counts on the next request.
cache.watch(Grant)
_GRANTS: cache.Cache[tuple[Any, int, int], Any] = cache.Cache()


def _grant_resolver(session: Any, actor: Actor, action: str, target: Target) -> Any:
    """A sharing grant lets the grantee department's users and keys read a resource."""
    if action != "hub.data.read" or target.kind != "hub.resource" or session is None:
        return None
    if actor.department_id is None:
        return None
    session.flush()  # a revocation earlier in this unit of work counts (Core skips autoflush)
    today = city_today()
    key = (session.get_bind(), target.id, actor.department_id)
    usable = cache.usable(session)
    grant = _GRANTS.get(key) if usable else None
    if grant is not None and (grant.valid_until is None or grant.valid_until >= today):
        return grant
    generation = cache.generation()
    grant = session.connection().execute(_ACTIVE_GRANT, {
        "resource": target.id, "department": actor.department_id, "today": today}).first()
    if grant is not None and usable:
        _GRANTS.put(key, grant, generation)
    return grant


access.register_grant_resolver(_grant_resolver)


def resource_target(resource: Resource) -> Target:
    return Target("hub.resource", resource.id, resource.department_id, resource.department.path)


# -- catalog --------------------------------------------------------------------------------------


_LAYOUTS: dict[tuple[Any, ...], store.Layout] = {}


def layout_of(resource: Resource) -> store.Layout:
    """The resource's storage layout, built from its items and cached: the same Table objects
    every time also let SQLAlchemy reuse its compiled statements."""
    fields = tuple(store.Field(i.name, i.type, i.encrypted, i.indexed) for i in resource.items)
    key = (resource.id, fields, tuple(resource.key_fields))
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) > 512:
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = store.build_layout(resource.id, fields, resource.key_fields)
    return layout


def resource_get(session: Session, actor: Actor, code: str) -> Resource:
    """A resource by its code (any staff may read the catalog entry, not the data)."""
    access.require(actor, "hub.catalog.read", session=session)
    return resource_by_code(session, code)


def keywords_by_code(session: Session, codes: list[str]) -> dict[str, list[str]]:
    """Resources' keywords by code, in one query: map pages tag many layers at once."""
    if not codes:
        return {}
    rows = session.execute(select(Resource.code, Resource.keywords).where(Resource.code.in_(set(codes))))
    return {code: list(keywords or []) for code, keywords in rows}


def resource_by_code(session: Session, code: str) -> Resource:
    res = session.scalar(
        select(Resource).where(Resource.code == code)
        .options(selectinload(Resource.items), selectinload(Resource.department))
    )
    if res is None:
        raise NotFound("resource", code)
    return res


def _check_choice(field: str, value: Any, choices: dict[str, Any]) -> None:
    if value not in choices:
        raise Invalid(field, f"must be one of {', '.join(choices)} / 取值须为 {', '.join(choices)}")


def _check_items(items: list[dict[str, Any]], key_fields: list[str]) -> None:
    if not items:
        raise Invalid("items", "a resource needs at least one information item / 至少需要一个信息项")
    for n, item in enumerate(items):
        if item.get("type") not in store.TYPES:
            raise Invalid(f"items[{n}].type", f"must be one of {', '.join(store.TYPES)} / 类型不合法")
        _check_choice(f"items[{n}].sensitivity", item.get("sensitivity", "public"), SENSITIVITIES)
        if item.get("type") == "citizen_id" and item.get("sensitivity", "public") != "sensitive":
            raise Invalid(f"items[{n}].sensitivity",
                          "ID numbers are personal data: mark the item sensitive / 身份证号须标为敏感")
    fields = [store.Field(i["name"], i["type"], i.get("sensitivity") == "sensitive") for i in items]
    store.build_layout(0, fields, key_fields)  # names, types and keys, checked in one place


def _check_sharing(spec: dict[str, Any]) -> None:
    _check_choice("share_type", spec.get("share_type"), SHARE_TYPES)
    _check_choice("open_type", spec.get("open_type"), OPEN_TYPES)
    _check_choice("update_cycle", spec.get("update_cycle"), UPDATE_CYCLES)
    _check_choice("format", spec.get("format", "table"), FORMATS)
    for m in spec.get("share_methods") or []:
        _check_choice("share_methods", m, SHARE_METHODS)
    if spec["share_type"] in ("conditional", "none"):
        for f in ("share_condition", "share_basis"):
            if not (spec.get(f) or "").strip():
                raise Invalid(f, "required for conditional or refused sharing / 有条件共享或不予共享时必填")


def _next_sequence(session: Session, class_code: str, item_code: str, entry_code: str) -> int:
    top = session.scalar(select(func.max(Resource.sequence)).where(
        Resource.class_code == class_code, Resource.item_code == item_code,
        Resource.entry_code == entry_code))
    return int(top or 0) + 1


def resource_create(session: Session, actor: Actor, spec: dict[str, Any]) -> Resource:
    """Catalog a resource (编目) with its information items and create its tables."""
    spec = dict(spec)
    dept = department_by_code(session, spec.pop("department")) if spec.get("department") else (
        session.get(Department, actor.department_id) if actor.department_id else None)
    if dept is None:
        raise Invalid("department", "the provider department is required / 须指定提供部门")
    access.require(actor, "hub.resource.write", Target("hub.resource", None, dept.id, dept.path), session)
    _check_choice("category", spec.get("category"), CATEGORIES)
    branch = spec.get("base_branch")
    if branch is not None:
        _check_choice("base_branch", branch, BASE_BRANCHES)
        if spec["category"] != "base":
            raise Invalid("base_branch", "only base resources have a branch / 仅基础信息资源有基础库分类")
    _check_sharing(spec)
    items = [dict(i) for i in spec.pop("items", [])]
    key_fields = list(spec.pop("key_fields", None) or [i["name"] for i in items if i.get("is_key")])
    _check_items(items, key_fields)
    credit = spec.pop("provider_credit_code", None) or dept.credit_code
    if credit:
        credit = validate_credit_code(credit, "provider_credit_code")
    class_code = CATEGORIES[spec["category"]][0]
    item_code = spec.pop("item_code", None) or (BASE_BRANCHES[branch][0] if branch else "01")
    entry_code = spec.pop("entry_code", None) or "001"
    sequence = spec.pop("sequence", None) or _next_sequence(session, class_code, item_code, entry_code)
    # GB/T 21063.4 writes 前段码/后段码; the code joins them with "-" so that it is URL-safe.
    code = f"{class_code}{item_code}{entry_code}-{sequence:06d}"
    if session.scalar(select(Resource.id).where(Resource.code == code)):
        raise Conflict(f"resource code {code} is taken / 资源代码已存在", "sequence")
    res = Resource(
        code=code, class_code=class_code, item_code=item_code, entry_code=entry_code,
        sequence=sequence, department_id=dept.id, provider_credit_code=credit,
        key_fields=key_fields, **spec,
    )
    res.department = dept
    for pos, item in enumerate(items):
        authority = item.pop("authority", None)
        item.pop("encrypted", None)
        it = Item(position=pos, is_key=item.pop("is_key", False) or item["name"] in key_fields, **item)
        if authority:
            it.authority_department_id = department_by_code(session, authority).id
        res.items.append(it)
    session.add(res)
    session.flush()
    res.table_name = store.table_name(res.id)
    store.create_tables(session.connection(), layout_of(res))
    if res.share_type == "none":
        session.add(NegativeEntry(department_id=dept.id, resource_id=res.id, name=res.name,
                                  reason=res.share_condition or "", basis=res.share_basis))
    audit.append(session, actor=actor.name, action="hub.resource.create", department=dept.code,
                 object_type="hub.resource", object_id=code, detail={"name": res.name})
    return res


EDITABLE = {"name", "name_en", "abstract", "format", "share_type", "share_condition", "share_basis",
            "share_methods", "open_type", "update_cycle", "released_on", "related", "keywords", "secret",
            "provider_credit_code"}


def resource_update(session: Session, actor: Actor, code: str, changes: dict[str, Any]) -> Resource:
    """Change a resource's description (not its items or code)."""
    res = resource_by_code(session, code)
    access.require(actor, "hub.resource.write", resource_target(res), session)
    unknown = set(changes) - EDITABLE
    if unknown:
        raise Invalid(sorted(unknown)[0], "cannot be changed here / 此处不可修改")
    merged = {c: getattr(res, c) for c in EDITABLE} | changes
    _check_sharing(merged)
    if changes.get("provider_credit_code"):
        changes["provider_credit_code"] = validate_credit_code(changes["provider_credit_code"],
                                                               "provider_credit_code")
    for k, v in changes.items():
        setattr(res, k, v)
    if changes.get("share_type") == "none" and not session.scalar(
            select(NegativeEntry.id).where(NegativeEntry.resource_id == res.id)):
        session.add(NegativeEntry(department_id=res.department_id, resource_id=res.id, name=res.name,
                                  reason=res.share_condition or "", basis=res.share_basis))
    audit.append(session, actor=actor.name, action="hub.resource.update", department=res.department.code,
                 object_type="hub.resource", object_id=code, detail={"fields": sorted(changes)})
    return res


def resource_list(
    session: Session, actor: Actor, *, q: str | None = None, category: str | None = None,
    base_branch: str | None = None, department: str | None = None, share_type: str | None = None,
    open_type: str | None = None, update_cycle: str | None = None, limit: int = 50, offset: int = 0,
) -> Paged:
    """Search and browse the catalog (资源目录检索)."""
    access.require(actor, "hub.catalog.read", session=session)
    stmt: Select[Any] = select(Resource).options(selectinload(Resource.department),
                                                 selectinload(Resource.items))
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(Resource.name.like(like), Resource.abstract.like(like),
                              Resource.code.like(like), Resource.name_en.like(like)))
    for col, value, vocab in ((Resource.category, category, CATEGORIES),
                              (Resource.base_branch, base_branch, BASE_BRANCHES),
                              (Resource.share_type, share_type, SHARE_TYPES),
                              (Resource.open_type, open_type, OPEN_TYPES),
                              (Resource.update_cycle, update_cycle, UPDATE_CYCLES)):
        if value:
            _check_choice(col.key, value, vocab)
            stmt = stmt.where(col == value)
    if department:
        stmt = stmt.where(Resource.department_id == department_by_code(session, department).id)
    return paginate(session, stmt.order_by(Resource.code), limit, offset)


def resource_public(res: Resource) -> dict[str, Any]:
    """The catalog entry as the API and exports show it."""
    return {
        "code": res.code, "catalog_code": res.code.replace("-", "/"), "name": res.name,
        "name_en": res.name_en, "category": res.category,
        "class_code": res.class_code, "item_code": res.item_code, "entry_code": res.entry_code,
        "sequence": res.sequence, "base_branch": res.base_branch,
        "department": res.department.code, "department_name": res.department.name,
        "provider_credit_code": res.provider_credit_code, "abstract": res.abstract, "format": res.format,
        "share_type": res.share_type, "share_condition": res.share_condition,
        "share_basis": res.share_basis, "share_methods": res.share_methods, "open_type": res.open_type,
        "update_cycle": res.update_cycle,
        "released_on": res.released_on.isoformat() if res.released_on else None,
        "related": res.related, "keywords": res.keywords, "secret": res.secret,
        "key_fields": res.key_fields, "current_version": res.current_version, "row_count": res.row_count,
        "last_loaded_at": res.last_loaded_at.isoformat() if res.last_loaded_at else None,
        "items": [item_public(i) for i in res.items],
    }


CATALOG_COLUMNS = ["catalog_code", "name", "category", "base_branch", "department_name",
                   "provider_credit_code", "abstract", "format", "items", "share_type", "share_condition",
                   "share_basis", "share_methods", "open_type", "update_cycle", "released_on", "related",
                   "row_count", "current_version"]
CATALOG_COLUMNS_ZH = ["信息资源代码", "信息资源名称", "资源分类", "基础库", "信息资源提供方",
                      "提供方代码", "信息资源摘要", "信息资源格式", "信息项", "共享类型", "共享条件",
                      "共享依据", "共享方式", "开放类型", "更新周期", "发布日期", "关联资源",
                      "记录数", "当前版本"]


def catalog_export(session: Session, actor: Actor, *, q: str | None = None, department: str | None = None,
                   category: str | None = None) -> list[dict[str, Any]]:
    """The whole catalog (or a search of it) for export, in pages so memory stays small."""
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = resource_list(session, actor, q=q, department=department, category=category,
                             limit=500, offset=offset)
        out += [resource_public(r) for r in page.items]
        if page.next_offset is None:
            return out
        offset = page.next_offset


def catalog_row(r: dict[str, Any]) -> dict[str, Any]:
    """One catalog entry flattened for CSV and XLSX, with codes shown in Chinese."""
    return {
        **r,
        "category": CATEGORIES[r["category"]][1],
        "base_branch": BASE_BRANCHES[r["base_branch"]][1] if r["base_branch"] else "",
        "format": FORMATS.get(r["format"], r["format"]),
        "items": "；".join(f"{i['title']}({i['name']})" for i in r["items"]),
        "share_type": SHARE_TYPES[r["share_type"]], "open_type": OPEN_TYPES[r["open_type"]],
        "share_methods": "、".join(SHARE_METHODS.get(m, m) for m in r["share_methods"]),
        "update_cycle": UPDATE_CYCLES[r["update_cycle"]][0],
        "related": "、".join(r["related"]), "share_condition": r["share_condition"] or "",
        "share_basis": r["share_basis"] or "", "released_on": r["released_on"] or "",
        "provider_credit_code": r["provider_credit_code"] or "",
    }


def catalog_xlsx(rows: list[dict[str, Any]]) -> bytes:
    """The catalog as an Excel workbook (one sheet, Chinese headers)."""
    import io

    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("资源目录")
    ws.append(CATALOG_COLUMNS_ZH)
    for r in rows:
        ws.append([r[c] for c in CATALOG_COLUMNS])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def item_public(i: Item) -> dict[str, Any]:
    return {
        "name": i.name, "title": i.title, "type": i.type, "unit": i.unit, "sensitivity": i.sensitivity,
        "required": i.required, "is_key": i.is_key, "indexed": i.indexed, "minimum": i.minimum,
        "maximum": i.maximum, "max_length": i.max_length, "pattern": i.pattern, "choices": i.choices,
        "description": i.description, "authority_department_id": i.authority_department_id,
    }


def negative_list(session: Session, actor: Actor, *, department: str | None = None,
                  limit: int = 50, offset: int = 0) -> Paged:
    """The negative list (负面清单): what is not shared, and why."""
    access.require(actor, "hub.catalog.read", session=session)
    stmt: Select[Any] = select(NegativeEntry).options(selectinload(NegativeEntry.department),
                                                      selectinload(NegativeEntry.resource))
    if department:
        stmt = stmt.where(NegativeEntry.department_id == department_by_code(session, department).id)
    return paginate(session, stmt.order_by(NegativeEntry.id), limit, offset)


def negative_add(session: Session, actor: Actor, *, name: str, reason: str, basis: str | None = None,
                 department: str | None = None) -> NegativeEntry:
    """Add an entry to the negative list with its reason."""
    dept = department_by_code(session, department) if department else (
        session.get(Department, actor.department_id) if actor.department_id is not None else None)
    if dept is None:
        raise Invalid("department", "required / 必填")
    access.require(actor, "hub.resource.write", Target("hub.resource", None, dept.id, dept.path), session)
    if not reason.strip():
        raise Invalid("reason", "a reason is required / 须说明理由")
    entry = NegativeEntry(department_id=dept.id, name=name, reason=reason, basis=basis)
    session.add(entry)
    session.flush()
    audit.append(session, actor=actor.name, action="hub.negative.add", department=dept.code,
                 object_type="hub.negative", object_id=entry.id, detail={"name": name})
    return entry


# -- versions and quality -------------------------------------------------------------------------


def version_list(session: Session, actor: Actor, code: str, *, limit: int = 50, offset: int = 0) -> Paged:
    """A resource's load history (版本历史), newest first."""
    res = resource_get(session, actor, code)
    stmt: Select[Any] = select(Version).where(Version.resource_id == res.id).order_by(Version.number.desc())
    return paginate(session, stmt, limit, offset)


@dataclass
class Quality:
    """Quality score (数据质量): completeness, validity, timeliness, each 0..1, and the score."""

    completeness: float | None
    validity: float | None
    timeliness: float | None
    score: float | None

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if v is None else round(v, 4)) for k, v in self.__dict__.items()}


def quality(session: Session, actor: Actor, code: str, now: dt.datetime | None = None) -> Quality:
    """Completeness (non-empty share of items), validity (valid share of the last load) and
    timeliness (age of the data against its update cycle: full marks within one cycle,
    falling to zero at two)."""
    res = resource_get(session, actor, code)
    layout = layout_of(res)
    t = layout.table
    completeness = None
    if res.row_count:
        counts = session.execute(select(func.count(), *[func.count(t.c[f.name]) for f in layout.fields])
                                 ).one()
        total = counts[0]
        completeness = sum(counts[1:]) / (total * len(layout.fields)) if total else None
    timeliness = None
    days = UPDATE_CYCLES[res.update_cycle][1]
    if res.last_loaded_at is not None:
        if days is None:
            timeliness = 1.0
        else:
            age = ((now or utcnow()) - res.last_loaded_at).total_seconds() / 86400
            timeliness = max(0.0, min(1.0, 2 - age / days))
    parts = [p for p in (completeness, res.validity, timeliness) if p is not None]
    score = sum(parts) / len(parts) if parts else None
    return Quality(completeness, res.validity, timeliness, score)


def keyring() -> crypto.Keyring:
    return crypto.keyring()


# -- for other engines (the open-data portal reads current rows through these) ----------------------

bulk_insert = store.bulk_insert
ROW_BATCH = 5000


def _typed(value: Any, kind: str) -> Any:
    """Decrypted values come back as text: give them their item's Python type again."""
    if value is None or not isinstance(value, str):
        return value
    if kind == "date":
        return dt.date.fromisoformat(value)
    if kind == "datetime":
        return dt.datetime.fromisoformat(value)
    if kind == "integer":
        return int(value)
    if kind == "number":
        return float(value)
    if kind == "boolean":
        return value.lower() in ("1", "true")
    return value


def current_rows(conn: Any, res: Resource, names: list[str]) -> Iterator[dict[str, Any]]:
    """Every current row of a resource (only the named items), decrypted and typed, streamed.
    No access check: the caller (e.g. a reviewed publication) has made its own decision."""
    layout = layout_of(res)
    ring = keyring()
    t = layout.table
    enc = {n: layout.by_name[n].type for n in names if layout.by_name[n].encrypted}
    # Per statement: Connection.execution_options would change the connection for good.
    q = select(*[t.c[n] for n in names]).order_by(t.c._row).execution_options(
        stream_results=True, yield_per=ROW_BATCH)
    result = conn.execute(q)
    try:
        for part in result.mappings().partitions(ROW_BATCH):
            for r in part:
                row = dict(r)
                for n, kind in enc.items():
                    v = row[n]
                    if v is not None:
                        row[n] = _typed(ring.decrypt(v, layout.context(n)), kind)
                yield row
    finally:
        result.close()  # a sample stops early: free the server-side cursor


# -- for the operations center (plan) -------------------------------------------------------------


def sharing_counts(session: Session) -> dict[str, int]:
    """The plan's government data sharing rate (政务数据共享率), counted over the catalog: a
    non-secret resource is shared when its share type is not "none" or when at least one sharing
    grant (not revoked) lets another department read it. 涉密 resources are outside the rate."""
    granted = set(session.scalars(select(Grant.resource_id).where(Grant.revoked_at.is_(None))))
    out = {"non_secret": 0, "shared": 0, "by_share_type": 0, "by_grant_only": 0}
    for rid, share_type in session.execute(
            select(Resource.id, Resource.share_type).where(Resource.secret.is_(False))):
        out["non_secret"] += 1
        if share_type != "none":
            out["shared"] += 1
            out["by_share_type"] += 1
        elif rid in granted:
            out["shared"] += 1
            out["by_grant_only"] += 1
    return out


def grantee_departments(session: Session, resource_ids: list[int]) -> set[int]:
    """Departments holding a grant in force (not revoked) on any of these resources."""
    if not resource_ids:
        return set()
    return set(session.scalars(select(Grant.department_id).where(
        Grant.resource_id.in_(resource_ids), Grant.revoked_at.is_(None))))
