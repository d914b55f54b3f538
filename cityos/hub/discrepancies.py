"""Cross-checks (多元校核): another department's data against a base registry.

A department sends its records; every item whose value disagrees with the registry (values
compared by type) opens a discrepancy for the item's authoritative department, which confirms
the registry, corrects it (a registry write, so a new version) or rejects the report. Values of
sensitive items are kept encrypted on the discrepancy too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session, selectinload

from cityos.core import access, audit
from cityos.core.access import ALL, OWN, SUBTREE, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.models import Department
from cityos.core.service import Paged, paginate
from cityos.hub import service, store
from cityos.hub.models import Discrepancy, Item, Resource
from cityos.hub.registries import (
    canonical,
    current_row,
    key_display,
    registry_resource,
    registry_write,
    typed,
    typed_key,
)

access.define("hub.discrepancy.report", "Cross-check one's data against a registry (多元校核)",
              department_admin=ALL, department_staff=ALL)
access.define("hub.discrepancy.read", "See discrepancies sent to or reported by one's department",
              department_admin=OWN, department_staff=OWN, auditor=SUBTREE)
access.define("hub.discrepancy.resolve", "Confirm, correct or reject discrepancies of one's items",
              platform_admin=OWN, department_admin=OWN, department_staff=OWN)

RESOLUTIONS = {"confirm": "confirmed", "correct": "corrected", "reject": "rejected"}
STATES = ("open", *RESOLUTIONS.values())
MAX_CHECK = 1000  # records per cross-check call


def _seal(res: Resource, item: Item | None, value: Any) -> str | None:
    text = canonical(item, value) if item is not None else None
    if text is None or item is None or not item.encrypted:
        return text
    return service.keyring().encrypt(text, f"hub.discrepancy.{res.id}.{item.name}")


def unseal(res: Resource, d: Discrepancy, value: str | None) -> str | None:
    """A discrepancy's stored value as text (decrypted when the item is sensitive)."""
    item = next((i for i in res.items if i.name == d.field), None)
    if value is None or item is None or not item.encrypted:
        return value
    return service.keyring().decrypt(value, f"hub.discrepancy.{res.id}.{item.name}")


def _report(session: Session, actor: Actor, res: Resource, row_key: str, shown: str, field_: str,
            registry_value: Any, reported_value: Any) -> Discrepancy:
    """Open a discrepancy, or refresh the reporter's open one on the same record and item."""
    item = next((i for i in res.items if i.name == field_), None)
    owner = item if item is not None else next(i for i in res.items if i.name == res.key_fields[0])
    d = session.scalar(select(Discrepancy).where(
        Discrepancy.resource_id == res.id, Discrepancy.row_key == row_key, Discrepancy.field == field_,
        Discrepancy.reported_by_department_id == actor.department_id, Discrepancy.state == "open"))
    if d is None:
        d = Discrepancy(resource_id=res.id, row_key=row_key, key_display=shown, field=field_,
                        reported_by_department_id=actor.department_id, state="open",
                        authority_department_id=owner.authority_department_id or res.department_id)
        session.add(d)
    d.registry_value, d.reported_value = _seal(res, item, registry_value), _seal(res, item, reported_value)
    d.reported_by = actor.name
    return d


def crosscheck(session: Session, actor: Actor, code: str, records: list[dict[str, Any]]) -> list[Discrepancy]:
    """Compare a department's records with the registry; each disagreement goes to the item's
    authoritative department as an open discrepancy ("_record": the registry lacks the record)."""
    res = registry_resource(session, code)
    access.require(actor, "hub.discrepancy.report", service.resource_target(res), session)
    if actor.department_id is None:
        raise Invalid("department", "a cross-check is reported by a department / 须以部门身份校核")
    if len(records) > MAX_CHECK:
        raise Invalid("records", f"at most {MAX_CHECK} records at a time / 每次最多{MAX_CHECK}条")
    items = {i.name: i for i in res.items}
    enc = store.Encoder(service.layout_of(res), service.keyring())
    found: list[Discrepancy] = []
    for n, rec in enumerate(records):
        key = typed_key(res, rec, f"records[{n}]")
        reported = {}
        for name, value in rec.items():
            if name in key:
                continue
            if name not in items:
                raise Invalid(f"records[{n}].{name}", "no such item / 无此信息项")
            if value not in (None, ""):
                reported[name] = typed(items[name], value, f"records[{n}].{name}")
        row_key, shown = enc.key(key), key_display(res, key)
        current = current_row(session, res, key)
        if current is None:
            found.append(_report(session, actor, res, row_key, shown, "_record", None, None))
            continue
        for name, value in reported.items():
            if canonical(items[name], value) != canonical(items[name], current[name]):
                found.append(_report(session, actor, res, row_key, shown, name, current[name], value))
    session.flush()
    audit.append(session, actor=actor.name, action="hub.discrepancy.report", department=actor.department_code,
                 object_type="hub.resource", object_id=res.code,
                 detail={"records": len(records), "discrepancies": [d.id for d in found],
                         "fields": sorted({d.field for d in found})})
    return found


def _dept_ids(path: str) -> Select[Any]:
    return select(Department.id).where(Department.path.startswith(path))


def discrepancy_list(session: Session, actor: Actor, *, state: str | None = "open", limit: int = 50,
                     offset: int = 0) -> Paged:
    """Discrepancies sent to one's department (its inbox) or reported by it, newest first."""
    reach = access.reach_of(actor, "hub.discrepancy.read")
    if reach is None:
        access.require(actor, "hub.discrepancy.read", None, session)
    auth, rep = Discrepancy.authority_department_id, Discrepancy.reported_by_department_id
    stmt = select(Discrepancy).order_by(Discrepancy.id.desc())
    if reach == SUBTREE and actor.department_path:
        stmt = stmt.where(or_(auth.in_(_dept_ids(actor.department_path)),
                              rep.in_(_dept_ids(actor.department_path))))
    elif reach != ALL:
        stmt = stmt.where(or_(auth == actor.department_id, rep == actor.department_id))
    if state:
        if state not in STATES:
            raise Invalid("state", f"must be one of {', '.join(STATES)} / 状态不合法")
        stmt = stmt.where(Discrepancy.state == state)
    return paginate(session, stmt, limit, offset)


def _resource(session: Session, d: Discrepancy) -> Resource:
    # From the identity map when already loaded: a page of discrepancies costs no query each.
    res = session.get(Resource, d.resource_id, options=[selectinload(Resource.items)])
    assert res is not None
    return res


def _code(dept: Department | None) -> str:
    assert dept is not None
    return dept.code


def discrepancy_public(session: Session, actor: Actor, d: Discrepancy) -> dict[str, Any]:
    """A discrepancy as its viewer may see it: the registry's value to the authority alone."""
    res = _resource(session, d)
    depts = {i: session.get(Department, i) for i in (d.authority_department_id, d.reported_by_department_id)}
    authority = actor.department_id == d.authority_department_id
    reporter = actor.department_id == d.reported_by_department_id
    return {
        "id": d.id, "resource": res.code, "registry": res.base_branch, "record": d.key_display,
        "field": d.field, "state": d.state,
        "registry_value": unseal(res, d, d.registry_value) if authority else None,
        "reported_value": unseal(res, d, d.reported_value) if authority or reporter else None,
        "authority": _code(depts[d.authority_department_id]),
        "reported_by_department": _code(depts[d.reported_by_department_id]),
        "reported_by": d.reported_by, "resolved_by": d.resolved_by, "note": d.note,
        "created_at": d.created_at, "resolved_at": d.resolved_at,
    }


def discrepancy_resolve(session: Session, actor: Actor, id: int, *, action: str, note: str | None = None,
                        value: Any = None) -> Discrepancy:
    """The authority's answer: confirm (the registry stands), correct (write the value, by default
    the reported one) or reject (not a real discrepancy)."""
    d = session.get(Discrepancy, id)
    if d is None:
        raise NotFound("discrepancy", id)
    owner = session.get(Department, d.authority_department_id)
    assert owner is not None
    access.require(actor, "hub.discrepancy.resolve", Target("hub.discrepancy", id, owner.id, owner.path),
                   session)
    if action not in RESOLUTIONS:
        raise Invalid("action", f"must be one of {', '.join(RESOLUTIONS)} / 处理方式不合法")
    if d.state != "open":
        raise Conflict(f"discrepancy {id} is already {d.state} / 该差异已处理", "action")
    res = _resource(session, d)
    version = None
    if action == "correct":
        if d.field == "_record":
            if not isinstance(value, dict):
                raise Invalid("value", "give the record's items, key included / 须给出记录（含主键）")
            key = typed_key(res, value, "value")
            if store.Encoder(service.layout_of(res), service.keyring()).key(key) != d.row_key:
                raise Invalid("value", "the key is not the reported record's / 主键与差异记录不符")
            changes = {k: v for k, v in value.items() if k not in key}
        else:
            t = service.layout_of(res).table
            raw = session.execute(select(t).where(t.c._key == d.row_key)).mappings().first()
            if raw is None:
                raise Conflict("the record is no longer in the registry / 记录已不在基础库中")
            row = store.decode(service.layout_of(res), service.keyring(), dict(raw))
            key = {k: row[k] for k in res.key_fields}
            changes = {d.field: unseal(res, d, d.reported_value) if value is None else value}
        version = registry_write(session, actor, res.code, key, changes, note=f"discrepancy {id}").version
    d.state, d.note, d.resolved_by, d.resolved_at = RESOLUTIONS[action], note, actor.name, utcnow()
    audit.append(session, actor=actor.name, action="hub.discrepancy.resolve",
                 department=actor.department_code, object_type="hub.discrepancy", object_id=id,
                 detail={"action": action, "field": d.field, "record": d.key_display, "version": version})
    return d
