"""Base registries (基础库): population, legal persons and electronic licences (电子证照).

A registry is an ordinary catalog resource (category "base") built from a definition below, so
loading, versions, quality, sharing grants and audit apply to it unchanged. What a registry adds
here: one source per item (一数一源: each item has one authoritative department, and only it
writes the item) and person lookup by ID number through the blind index. Cross-checks (多元校核)
are in `hub.discrepancies`, the licence library's issue, revoke and verify in `hub.licences`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from cityos.core import access, audit, events
from cityos.core.access import OWN, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Invalid, NotFound
from cityos.core.identifiers import mask_citizen_id
from cityos.core.models import Department
from cityos.core.workdays import CITY_TZ
from cityos.hub import filters, service, store, validate, webhooks
from cityos.hub.models import Item, Resource, Version

# -- definitions (described as data) -------------------------------------------------------------


@dataclass(frozen=True)
class ItemDef:
    """One item of a registry; `authority` is a role in the city (None: the provider)."""

    name: str
    title: str
    type: str = "string"
    sensitivity: str = "public"
    required: bool = False
    is_key: bool = False
    indexed: bool = False
    authority: str | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    max_length: int | None = None
    minimum: float | None = None
    unit: str | None = None
    description: str | None = None

    def spec(self) -> dict[str, Any]:
        """The item as `service.resource_create` takes it (authority resolved later)."""
        out = {k: v for k, v in self.__dict__.items() if k != "authority" and v is not None}
        if self.choices:
            out["choices"] = list(self.choices)
        return out


@dataclass(frozen=True)
class RegistryDef:
    """A base registry: its catalog description, its items, and the role that provides it."""

    branch: str
    name: str
    name_en: str
    abstract: str
    provider_role: str
    items: tuple[ItemDef, ...]
    share_type: str = "conditional"
    share_condition: str | None = "用于政务服务和行政管理，依申请共享"
    share_basis: str | None = "《政务信息资源共享管理暂行办法》（国发〔2016〕51号）"
    open_type: str = "closed"
    keywords: tuple[str, ...] = field(default_factory=tuple)


# Roles of the city (the demo city's bureau slugs): police 公安, civil 民政, education 教育,
# health 卫健, quality 市场监管 (质监局 in the plan), egov 政务服务.
MARITAL = ("未婚", "已婚", "丧偶", "离婚")  # GB/T 2261.2
EDUCATION = ("研究生", "大学本科", "大学专科", "中等职业教育", "普通高级中学", "初级中学", "小学", "其他")
LEGAL_STATUS = ("存续", "在业", "吊销", "注销", "迁出")
# Licence types and their holders: org (credit code) or person (ID number).
LICENCE_TYPES: dict[str, str] = {
    "营业执照": "org", "食品经营许可证": "org", "药品经营许可证": "org", "排污许可证": "org",
    "道路运输经营许可证": "org", "建筑业企业资质证书": "org",
    "机动车驾驶证": "person", "医师执业证书": "person", "教师资格证书": "person",
    "残疾人证": "person", "导游证": "person",
}
LICENCE_STATUS = ("valid", "revoked", "expired")
LICENCE_NO = r"[0-9A-Za-z][0-9A-Za-z-]{3,63}"

REGISTRIES: dict[str, RegistryDef] = {r.branch: r for r in (
    RegistryDef(
        "population", "人口基础信息库", "Population registry", "全市户籍人口基础信息，一数一源、多元校核",
        "police", keywords=("人口", "户籍", "身份证"), items=(
            ItemDef("id_number", "公民身份号码", "citizen_id", "sensitive", required=True, is_key=True),
            ItemDef("name", "姓名", sensitivity="sensitive", required=True, max_length=50),
            ItemDef("gender", "性别", choices=("男", "女")),
            ItemDef("birth_date", "出生日期", "date"),
            ItemDef("ethnicity", "民族", max_length=16, description="GB/T 3304"),
            ItemDef("household_address", "户籍地址", sensitivity="sensitive", max_length=200),
            ItemDef("district", "户籍所在区县", pattern=r"\d{6}", indexed=True, description="GB/T 2260"),
            ItemDef("marital_status", "婚姻状况", authority="civil", choices=MARITAL),
            ItemDef("education", "学历", authority="education", choices=EDUCATION),
            ItemDef("death_date", "死亡日期", "date", authority="health"),
        )),
    RegistryDef(
        "legal_person", "法人单位基础信息库", "Legal person registry", "全市法人单位基础信息",
        "quality", share_type="unconditional", share_condition=None, share_basis=None,
        open_type="conditional", keywords=("法人", "企业", "统一社会信用代码"), items=(
            ItemDef("credit_code", "统一社会信用代码", "credit_code", required=True, is_key=True),
            ItemDef("name", "单位名称", required=True, max_length=200),
            ItemDef("legal_rep", "法定代表人", sensitivity="sensitive", max_length=50),
            ItemDef("reg_capital", "注册资本", "number", minimum=0, unit="万元"),
            ItemDef("established", "成立日期", "date"),
            ItemDef("address", "住所", max_length=200),
            ItemDef("status", "登记状态", choices=LEGAL_STATUS, indexed=True),
            ItemDef("industry", "行业代码", pattern=r"[A-T](\d{2,4})?", description="GB/T 4754"),
        )),
    RegistryDef(
        "licence", "电子证照库", "Electronic licences", "各部门签发的电子证照，可在线核验",
        "egov", keywords=("电子证照", "许可证", "核验"), items=(
            ItemDef("licence_no", "证照编号", required=True, is_key=True, pattern=LICENCE_NO),
            ItemDef("type", "证照类型", required=True, choices=tuple(LICENCE_TYPES), indexed=True),
            ItemDef("holder_type", "持证主体类型", required=True, choices=("person", "org")),
            ItemDef("holder_citizen_id", "持证人身份号码", "citizen_id", "sensitive"),
            ItemDef("holder_credit_code", "持证单位信用代码", "credit_code", indexed=True),
            ItemDef("holder_name", "持证主体名称", sensitivity="internal", required=True, max_length=200),
            ItemDef("issuer", "签发部门", required=True, indexed=True, max_length=32),
            ItemDef("valid_from", "有效期起", "date", required=True),
            ItemDef("valid_to", "有效期至", "date", description="空为长期有效"),
            ItemDef("status", "状态", required=True, choices=LICENCE_STATUS),
            ItemDef("revoked_on", "注销日期", "date"),
            ItemDef("revoked_reason", "注销原因", max_length=500),
        )),
)}

# -- permissions ----------------------------------------------------------------------------------

access.define("hub.registry.install", "Set up a base registry (基础库) in the catalog")
# 一数一源: only the item's authoritative department writes it — not even a platform admin.
access.define("hub.registry.write", "Write the registry items one's department is authoritative for",
              platform_admin=OWN, department_admin=OWN, department_staff=OWN)


def city_today() -> dt.date:
    return dt.datetime.now(CITY_TZ).date()


# -- install and find -----------------------------------------------------------------------------


def with_items(stmt: Select[Any]) -> Select[Any]:
    return stmt.options(selectinload(Resource.items), selectinload(Resource.department))


def registry_resource(session: Session, code_or_branch: str) -> Resource:
    """A registry by its resource code or its branch name (population, legal_person, licence)."""
    if code_or_branch in REGISTRIES:
        res: Resource | None = session.scalar(with_items(select(Resource)).where(
            Resource.category == "base", Resource.base_branch == code_or_branch).order_by(Resource.id))
        if res is None:
            raise NotFound("registry", code_or_branch)
        return res
    res = service.resource_by_code(session, code_or_branch)
    if res.category != "base" or res.base_branch not in REGISTRIES:
        raise Invalid("code", "not a base registry / 不是基础库")
    return res


def registry_install(session: Session, actor: Actor, branch: str, *, provider: str,
                     authorities: Mapping[str, str] | None = None) -> Resource:
    """Catalog a registry from its definition (idempotent: an existing one is returned).

    `authorities` maps a role of the definition ("civil") or an item name to a department code.
    """
    access.require(actor, "hub.registry.install", None, session)
    if branch not in REGISTRIES:
        raise Invalid("branch", f"must be one of {', '.join(REGISTRIES)} / 基础库类型不合法")
    existing = session.scalar(select(Resource.code).where(
        Resource.category == "base", Resource.base_branch == branch).order_by(Resource.id))
    if existing is not None:
        return registry_resource(session, existing)
    d, mapping = REGISTRIES[branch], dict(authorities or {})
    items = []
    for item in d.items:
        spec = item.spec()
        role = item.authority
        authority = mapping.get(item.name) or (mapping.get(role) if role else None) or (
            None if role else provider)
        if authority is None:
            raise Invalid("authorities", f"no department for role {role!r} ({item.name}) / "
                                         f"未指定{item.title}的权威部门")
        spec["authority"] = authority
        items.append(spec)
    spec = {"name": d.name, "name_en": d.name_en, "category": "base", "base_branch": branch,
            "department": provider, "abstract": d.abstract, "share_type": d.share_type,
            "share_condition": d.share_condition, "share_basis": d.share_basis,
            "share_methods": ["api", "query"], "open_type": d.open_type, "update_cycle": "daily",
            "keywords": list(d.keywords), "items": items}
    res = service.resource_create(session, actor, spec)
    return registry_resource(session, res.code)


# -- values -------------------------------------------------------------------------------------


def typed(item: Item, value: Any, where: str) -> Any:
    """A value converted and checked by its item's rules, as a load checks it (None when empty)."""
    try:
        return validate.converter(validate.ItemRule.of(item))(value)
    except ValueError as exc:
        raise Invalid(where, str(exc)) from None


def canonical(item: Item, value: Any) -> str | None:
    """A value as text for comparison: sensitive items come back from storage as text."""
    if value is None or value == "":
        return None
    try:
        v = validate.converter(validate.ItemRule.of(item))(value)
    except ValueError:
        return str(value).strip()
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).isoformat()
    if isinstance(v, float):
        return repr(v)
    return v.isoformat() if isinstance(v, dt.date) else None if v is None else str(v)


def _mask(item: Item, value: Any) -> str:
    text = str(value)
    if item.type == "citizen_id":
        return mask_citizen_id(text)
    if item.encrypted:
        return text[:1] + "*" * max(len(text) - 2, 1) + text[-1:] if len(text) > 2 else "**"
    return text


def key_display(res: Resource, key: Mapping[str, Any]) -> str:
    """The record's key for people: sensitive parts masked."""
    items = {i.name: i for i in res.items}
    return " / ".join(_mask(items[k], key[k]) for k in res.key_fields)[:64]


def typed_key(res: Resource, values: Mapping[str, Any], where: str = "key") -> dict[str, Any]:
    items = {i.name: i for i in res.items}
    out = {}
    for k in res.key_fields:
        if values.get(k) in (None, ""):
            raise Invalid(f"{where}.{k}", "the key item is required / 须给出主键")
        out[k] = typed(items[k], values[k], f"{where}.{k}")
    return out


# -- writing ------------------------------------------------------------------------------------


def write_rows(session: Session, actor: Actor, res: Resource, rows: list[dict[str, Any]],
               note: str) -> Version:
    """Upsert full typed rows as one new version.

    A stand-in for `loading.rows_write`, which asks for "hub.data.load" on the resource (the
    provider alone), while registry items are written by their authority wherever it sits.
    """
    session.execute(select(Resource.id).where(Resource.id == res.id).with_for_update())
    session.refresh(res, ["current_version"])
    layout, ring = service.layout_of(res), service.keyring()
    enc = store.Encoder(layout, ring)
    number = res.current_version + 1
    writer = store.Writer(session.connection(), layout, number, "upsert")
    writer.add([enc.encode(r) for r in rows])
    counts = writer.finish()
    version = Version(resource_id=res.id, number=number, source="registry", mode="upsert",
                      rows_in=len(rows), added=counts.added, changed=counts.changed,
                      removed=counts.removed, row_count=counts.row_count, note=note,
                      created_by=actor.name)
    session.add(version)
    res.current_version, res.row_count, res.last_loaded_at = number, counts.row_count, utcnow()
    session.flush()
    webhooks.notify_change(session, res, version)  # grantees' subscriptions hear of the change
    events.publish(events.HUB_VERSION_CREATED, session=session, resource=res, version=version)
    return version


def current_row(session: Session, res: Resource, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The registry's current record with this (typed) key, decrypted."""
    row = store.find_by_key(session.connection(), service.layout_of(res), service.keyring(), dict(key))
    if row is not None:
        row.pop("_row", None)
    return row


@dataclass
class WriteResult:
    """What a registry write did: the new version (None if nothing changed) and the fields."""

    version: int | None
    changed: list[str]
    created: bool = False


def _authority(session: Session, res: Resource, item: Item) -> Department:
    dept_id = item.authority_department_id or res.department_id
    dept = session.get(Department, dept_id)
    assert dept is not None
    return dept


def registry_write(session: Session, actor: Actor, code: str, key_values: Mapping[str, Any],
                   changes: Mapping[str, Any], *, note: str | None = None) -> WriteResult:
    """Write some items of one record; each item only by its authoritative department (一数一源)."""
    res = registry_resource(session, code)
    if res.base_branch == "licence":
        raise Invalid("code", "licences change by issue and revoke only / 证照只能通过签发和注销变更")
    items = {i.name: i for i in res.items}
    if not changes:
        raise Invalid("changes", "nothing to write / 没有要写入的内容")
    for name in changes:
        if name not in items:
            raise Invalid(f"changes.{name}", "no such item / 无此信息项")
        if name in res.key_fields:
            raise Invalid(f"changes.{name}", "the key cannot change / 主键不可修改")
    key = typed_key(res, key_values)
    current = current_row(session, res, key)
    written = list(changes) if current is not None else [*res.key_fields, *changes]
    owners = {name: _authority(session, res, items[name]) for name in written}
    # Name the first item the actor is not the authority for; the decision point refuses it.
    name = next((n for n, d in owners.items() if d.id != actor.department_id), written[0])
    access.require(actor, "hub.registry.write",
                   Target("hub.registry.item", f"{res.code}#{name}", owners[name].id, owners[name].path),
                   session)
    values = {n: typed(items[n], v, f"changes.{n}") for n, v in changes.items()}
    if current is None:
        missing = [i.name for i in res.items if i.required and values.get(i.name, key.get(i.name)) is None]
        if missing:
            raise Invalid(f"changes.{missing[0]}", "required for a new record / 新建记录时必填")
        row: dict[str, Any] = {i.name: None for i in res.items} | values | key
        changed = [n for n in values if values[n] is not None]
    else:
        changed = [n for n in values if canonical(items[n], values[n]) != canonical(items[n], current[n])]
        row = current | values
    result = WriteResult(None, changed, created=current is None)
    if changed or current is None:
        version = write_rows(session, actor, res, [row], note or "registry write / 基础库写入")
        result.version = version.number
    audit.append(session, actor=actor.name, action="hub.registry.write", department=actor.department_code,
                 object_type="hub.resource", object_id=res.code,
                 detail={"record": key_display(res, key), "fields": changed, "created": result.created,
                         "version": result.version})
    return result


# -- reading --------------------------------------------------------------------------------------


def person_lookup(session: Session, actor: Actor, id_number: str, *, purpose: str) -> dict[str, Any] | None:
    """A person from the population registry by ID number (blind index); always audited."""
    res = registry_resource(session, "population")
    decision = access.require(actor, "hub.data.read", service.resource_target(res), session)
    if not (purpose or "").strip():
        raise Invalid("purpose", "say why you look this person up / 须说明查询用途")
    key_item = next(i for i in res.items if i.name == res.key_fields[0])
    number = typed(key_item, id_number or None, "id_number")
    if number is None:
        raise Invalid("id_number", "required / 必填")
    layout, ring = service.layout_of(res), service.keyring()
    fields = [f.name for f in layout.fields]
    conds = [store.Cond(res.key_fields[0], "eq", number)]
    if decision.grant is not None:
        fields = [f for f in fields if f in decision.grant.fields]
        items = {i.name: i for i in res.items}
        conds += [filters.typed(items, store.Cond(c["field"], c["op"], c.get("value")))
                  for c in decision.grant.row_filter]
    rows: list[dict[str, Any]] = []
    if fields:
        rows, _, _ = store.select_rows(session.connection(), layout, ring, fields=fields, conds=conds,
                                       limit=1)
    audit.append(session, actor=actor.name, action="hub.data.read", department=res.department.code,
                 object_type="hub.resource", object_id=res.code, purpose=purpose.strip(),
                 detail={"via": "grant" if decision.grant else "role", "lookup": "person",
                         "reader_department": actor.department_code,
                         "person": mask_citizen_id(number), "found": bool(rows), "fields": fields})
    return rows[0] if rows else None
