"""Electronic licences (电子证照): issue, revoke, and a public verification.

Licences are rows of the licence registry (a base resource), so they are versioned and audited
like any data. A department issues licences in its own name and only it revokes them. Anyone
may verify a licence number with the holder's ID number or credit code; the answer is valid or
invalid and nothing more, and an unknown number looks exactly like a wrong holder.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cityos.core import access, audit
from cityos.core.access import ANONYMOUS, OWN, Actor, Target
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.identifiers import mask_citizen_id
from cityos.core.models import Department
from cityos.core.service import department_by_code
from cityos.hub import service
from cityos.hub.models import Resource
from cityos.hub.registries import LICENCE_TYPES, city_today, current_row, registry_resource, typed, write_rows

access.define("hub.licence.issue", "Issue electronic licences in one's department's name",
              platform_admin=OWN, department_admin=OWN, department_staff=OWN)
access.define("hub.licence.revoke", "Revoke licences one's department issued",
              platform_admin=OWN, department_admin=OWN, department_staff=OWN)
access.define("hub.licence.verify", "Verify a licence (valid or invalid, nothing more)", public=True)


def _licence_row(session: Session, res: Resource, licence_no: str) -> dict[str, Any]:
    row = current_row(session, res, {"licence_no": licence_no.strip()})
    if row is None:
        raise NotFound("licence", licence_no)
    return row


def licence_issue(session: Session, actor: Actor, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Issue a licence in the actor's department's name (签发); the holder's ID is checked by type."""
    res = registry_resource(session, "licence")
    dept = session.get(Department, actor.department_id) if actor.department_id else None
    # Issued in a department's name: an actor without one (the system, a stray key) is refused.
    target = Target("hub.licence", None, dept.id if dept else None, dept.path if dept else None)
    access.require(actor, "hub.licence.issue", target, session)
    assert dept is not None
    items = {i.name: i for i in res.items}
    kind = typed(items["type"], spec.get("type"), "type")
    holder_type = spec.get("holder_type") or LICENCE_TYPES[kind]
    if holder_type != LICENCE_TYPES[kind]:
        raise Invalid("holder_type", f"a {kind} is held by a {LICENCE_TYPES[kind]} / 持证主体与证照类型不符")
    today = city_today()
    number = spec.get("licence_no") or f"{dept.code}-{today:%Y}-{secrets.token_hex(4).upper()}"
    holder_item = "holder_citizen_id" if holder_type == "person" else "holder_credit_code"
    if not spec.get("holder_id"):
        raise Invalid("holder_id", "required / 必填")
    row: dict[str, Any] = {i: None for i in items} | {
        "licence_no": typed(items["licence_no"], number, "licence_no"), "type": kind,
        "holder_type": holder_type,
        holder_item: typed(items[holder_item], spec.get("holder_id"), "holder_id"),
        "holder_name": typed(items["holder_name"], spec.get("holder_name"), "holder_name"),
        "issuer": dept.code,
        "valid_from": typed(items["valid_from"], spec.get("valid_from") or today, "valid_from"),
        "valid_to": typed(items["valid_to"], spec.get("valid_to"), "valid_to"), "status": "valid"}
    if row["valid_to"] is not None and row["valid_to"] < row["valid_from"]:
        raise Invalid("valid_to", "ends before it starts / 有效期止早于起")
    if current_row(session, res, {"licence_no": row["licence_no"]}) is not None:
        raise Conflict(f"licence {row['licence_no']} exists / 证照编号已存在", "licence_no")
    write_rows(session, actor, res, [row], f"licence issued / 签发 {row['licence_no']}")
    audit.append(session, actor=actor.name, action="hub.licence.issue", department=dept.code,
                 object_type="hub.licence", object_id=row["licence_no"],
                 detail={"type": kind, "holder_type": holder_type, "valid_to": row["valid_to"]})
    return licence_public(row)


def licence_revoke(session: Session, actor: Actor, licence_no: str, reason: str) -> dict[str, Any]:
    """Revoke a licence (注销); only its issuing department may."""
    res = registry_resource(session, "licence")
    row = _licence_row(session, res, licence_no)
    issuer = department_by_code(session, row["issuer"])
    target = Target("hub.licence", row["licence_no"], issuer.id, issuer.path)
    access.require(actor, "hub.licence.revoke", target, session)
    if not (reason or "").strip():
        raise Invalid("reason", "a reason is required / 须说明注销原因")
    if row["status"] == "revoked":
        raise Conflict(f"licence {licence_no} is already revoked / 证照已注销", "licence_no")
    row |= {"status": "revoked", "revoked_on": city_today(), "revoked_reason": reason.strip()[:500]}
    write_rows(session, actor, res, [row], f"licence revoked / 注销 {row['licence_no']}")
    audit.append(session, actor=actor.name, action="hub.licence.revoke", department=issuer.code,
                 object_type="hub.licence", object_id=row["licence_no"],
                 detail={"reason": row["revoked_reason"]})
    return licence_public(row)


def licence_verify(session: Session, licence_no: str, holder_id: str, *, actor: Actor = ANONYMOUS,
                   today: dt.date | None = None) -> dict[str, Any]:
    """Verify a licence for its holder (证照核验): "valid" only if the number exists, belongs to
    this holder, is not revoked and is in force today; every other case is the same "invalid"."""
    access.require(actor, "hub.licence.verify", None, session)
    res = registry_resource(session, "licence")
    layout, ring = service.layout_of(res), service.keyring()
    t, holder = layout.table, (holder_id or "").strip().upper()
    # One query asks "this number held by this holder": a wrong holder and an unknown number
    # look the same, so the answer cannot be used to probe which numbers exist.
    cands = ring.blind_index_candidates(holder, layout.context("holder_citizen_id"))
    hit = session.execute(select(t.c.status, t.c.valid_from, t.c.valid_to).where(
        t.c._key == (licence_no or "").strip(),
        or_(t.c.holder_citizen_id__bidx.in_(cands), t.c.holder_credit_code == holder))).first()
    day = today or city_today()
    valid = bool(hit and hit.status == "valid" and hit.valid_from <= day
                 and (hit.valid_to is None or day <= hit.valid_to))
    audit.append(session, actor=actor.name, action="hub.licence.verify", department=actor.department_code,
                 object_type="hub.licence", object_id=(licence_no or "")[:128],
                 detail={"result": "valid" if valid else "invalid"})
    return {"valid": valid, "status": "valid" if valid else "invalid"}


def licence_public(row: Mapping[str, Any]) -> dict[str, Any]:
    """A licence as its issuer sees it: the holder's ID masked."""
    pid, org = row.get("holder_citizen_id"), row.get("holder_credit_code")
    return {"licence_no": row["licence_no"], "type": row["type"], "holder_type": row["holder_type"],
            "holder_id": mask_citizen_id(pid) if pid else org, "holder_name": row["holder_name"],
            "issuer": row["issuer"], "valid_from": row["valid_from"], "valid_to": row["valid_to"],
            "status": row["status"], "revoked_on": row.get("revoked_on"),
            "revoked_reason": row.get("revoked_reason")}
