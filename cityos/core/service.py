"""Platform-core operations: departments (部门), users (用户), API keys, the audit log.

Plain functions `(session, actor, ...) -> result`. Each checks access once through
`core.access.require` and audits every write. Nothing here knows about HTTP.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, joinedload

from cityos.core import access, audit, auth, crypto
from cityos.core.access import ALL, OWN, ROLES, SELF, SUBTREE, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.core.identifiers import mask_citizen_id, validate_citizen_id, validate_credit_code
from cityos.core.models import ApiKey, AuditRecord, Department, User

DEPARTMENT_KINDS = {
    "city": ("市", "City"),
    "district": ("区县", "District/county"),
    "street": ("街道/乡镇", "Street/township"),
    "community": ("社区/村", "Community/village"),
    "bureau": ("委办局", "Bureau"),
}
# A child may sit under these parent kinds (a bureau hangs off any government level).
_PARENT_KINDS = {
    "city": (),
    "district": ("city",),
    "street": ("district",),
    "community": ("street",),
    "bureau": ("city", "district", "street"),
}
MAX_PAGE = 500
# An OFFSET walks every row it skips, and a larger number overflows the database's integers (500).
MAX_OFFSET = 10_000_000

crypto.register_encrypted(crypto.EncryptedField(User, "id_number_enc", "id_number_idx",
                                                "users.id_number", lambda v: v.strip().upper()))
crypto.register_encrypted(crypto.EncryptedField(User, "phone_enc", "phone_idx", "users.phone"))


@dataclass
class Paged:
    items: list[Any]
    total: int
    limit: int
    offset: int

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None


def paginate(session: Session, stmt: Select[Any], limit: int, offset: int) -> Paged:
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid("limit", f"must be between 1 and {MAX_PAGE} / 应在1到{MAX_PAGE}之间")
    if offset < 0:
        raise Invalid("offset", "must not be negative / 不能为负数")
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    items = list(session.scalars(stmt.limit(limit).offset(offset)).unique())
    return Paged(items, int(total), limit, offset)


def department_target(dept: Department) -> Target:
    return Target("department", dept.code, dept.id, dept.path)


def scope_filter(actor: Actor, action: str, dept_col: Any, path_col: Any, owner_col: Any = None) -> Any:
    """A WHERE clause restricting a list to what `actor` may see for `action` (deny by default).

    An actor with no reach at all is refused outright (401/403) rather than shown an empty list.
    """
    reach = access.reach_of(actor, action)
    if reach is None:
        access.require(actor, action)
    if reach == ALL:
        return True
    if reach == SUBTREE and actor.department_path:
        return path_col.startswith(actor.department_path)
    if reach == OWN:
        return dept_col == actor.department_id
    if reach == SELF and owner_col is not None:
        return owner_col == actor.user_id
    return False


# -- departments ------------------------------------------------------------------------------


def department_by_code(session: Session, code: str) -> Department:
    dept = session.scalar(select(Department).where(Department.code == code))
    if dept is None:
        raise NotFound("department", code)
    return dept


def department_create(
    session: Session, actor: Actor, *, code: str, name: str, kind: str,
    parent_code: str | None = None, admin_code: str | None = None,
    credit_code: str | None = None, name_en: str | None = None,
) -> Department:
    """Add a department under its parent (city → district/county → street → community)."""
    if kind not in DEPARTMENT_KINDS:
        raise Invalid("kind", f"must be one of {', '.join(DEPARTMENT_KINDS)}")
    parent = department_by_code(session, parent_code) if parent_code else None
    if parent is None and kind != "city":
        raise Invalid("parent_code", "only a city may have no parent / 仅市级可无上级")
    if parent is not None and parent.kind not in _PARENT_KINDS[kind]:
        raise Invalid("parent_code", f"a {kind} cannot sit under a {parent.kind}")
    if kind in ("city", "district") and (not admin_code or len(admin_code) != 6):
        raise Invalid("admin_code", "cities and districts need their 6-digit GB/T 2260 code")
    if credit_code:
        credit_code = validate_credit_code(credit_code)
    target = department_target(parent) if parent else Target("department")
    access.require(actor, "department.write", target, session)
    if session.scalar(select(Department.id).where(Department.code == code)):
        raise Conflict(f"department code {code} exists / 部门编码已存在", "code")
    dept = Department(code=code, name=name, name_en=name_en, kind=kind, admin_code=admin_code,
                      credit_code=credit_code, parent_id=parent.id if parent else None)
    session.add(dept)
    session.flush()
    dept.path = f"{parent.path if parent else '/'}{dept.id}/"
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="department.create", object_type="department", object_id=code,
                 detail={"name": name, "kind": kind, "parent": parent_code})
    return dept


def department_list(
    session: Session, actor: Actor, *, q: str | None = None, parent_code: str | None = None,
    kind: str | None = None, limit: int = 50, offset: int = 0,
) -> Paged:
    """Departments visible to the actor, in tree order."""
    access.require(actor, "department.read", None, session)
    stmt = select(Department).options(joinedload(Department.parent)).order_by(Department.path)
    if q:
        like = f"%{q}%"
        stmt = stmt.where(or_(Department.name.like(like), Department.code.like(like),
                              Department.name_en.like(like)))
    if parent_code:
        stmt = stmt.where(Department.parent_id == department_by_code(session, parent_code).id)
    if kind:
        stmt = stmt.where(Department.kind == kind)
    return paginate(session, stmt, limit, offset)


def department_get(session: Session, actor: Actor, code: str) -> Department:
    dept = department_by_code(session, code)
    access.require(actor, "department.read", department_target(dept), session)
    return dept


# -- users ------------------------------------------------------------------------------------


def user_target(user: User) -> Target:
    return Target("user", user.username, user.department_id, user.department.path, user.id)


def _check_role(role: str, field: str = "role") -> None:
    if role not in ROLES:
        raise Invalid(field, f"unknown role; one of {', '.join(ROLES)} / 未知角色")


def user_create(
    session: Session, actor: Actor, *, username: str, password: str, department_code: str,
    role: str, display_name: str = "", id_number: str | None = None, phone: str | None = None,
) -> User:
    """Create a user in a department; ID number and phone are stored encrypted."""
    _check_role(role)
    if len(password) < 8:
        raise Invalid("password", "at least 8 characters / 密码至少8位")
    dept = department_by_code(session, department_code)
    access.require(actor, "user.write", department_target(dept), session)
    if role == access.PLATFORM_ADMIN and actor.role != access.PLATFORM_ADMIN:
        raise Invalid("role", "only a platform admin may create platform admins")
    if session.scalar(select(User.id).where(User.username == username)):
        raise Conflict(f"username {username} is taken / 用户名已存在", "username")
    user = User(username=username, display_name=display_name, department=dept, role=role,
                password_hash=auth.hash_password(password))
    _set_sensitive(session, user, id_number=id_number, phone=phone)
    session.add(user)
    session.flush()
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="user.create", object_type="user", object_id=username,
                 detail={"role": role, "department": department_code})
    return user


def _set_sensitive(session: Session, user: User, *, id_number: str | None, phone: str | None) -> None:
    ring = crypto.keyring()
    if id_number:
        value = validate_citizen_id(id_number)
        idx = ring.blind_index(value, "users.id_number")
        clash = session.scalar(select(User.id).where(
            User.id_number_idx.in_(ring.blind_index_candidates(value, "users.id_number"))))
        if clash and clash != user.id:
            raise Conflict("ID number already belongs to another user / 身份证号已被使用", "id_number")
        user.id_number_enc, user.id_number_idx = ring.encrypt(value, "users.id_number"), idx
    if phone:
        user.phone_enc = ring.encrypt(phone, "users.phone")
        user.phone_idx = ring.blind_index(phone, "users.phone")


def user_by_name(session: Session, username: str) -> User:
    user = session.scalar(
        select(User).options(joinedload(User.department)).where(User.username == username))
    if user is None:
        raise NotFound("user", username)
    return user


def user_get(session: Session, actor: Actor, username: str, purpose: str | None = None) -> User:
    """One user with personal data; reading someone else's record is audited."""
    user = user_by_name(session, username)
    decision = access.require(actor, "user.read", user_target(user), session)
    if user.id != actor.user_id:
        audit.append(session, actor=actor.name, department=actor.department_code,
                     action="user.read", object_type="user", object_id=username, purpose=purpose,
                     detail={"via": "grant" if decision.grant else "role"})
    return user


def user_list(
    session: Session, actor: Actor, *, department_code: str | None = None, q: str | None = None,
    role: str | None = None, id_number: str | None = None, limit: int = 50, offset: int = 0,
) -> Paged:
    """Users the actor may see; `id_number` finds a person through the blind index."""
    stmt = (
        select(User).join(User.department).options(joinedload(User.department))
        .where(scope_filter(actor, "user.read", User.department_id, Department.path, User.id))
        .order_by(Department.path, User.username)
    )
    if department_code:
        stmt = stmt.where(User.department_id == department_by_code(session, department_code).id)
    if role:
        _check_role(role)
        stmt = stmt.where(User.role == role)
    if q:
        stmt = stmt.where(or_(User.username.like(f"%{q}%"), User.display_name.like(f"%{q}%")))
    if id_number:
        value = validate_citizen_id(id_number)
        candidates = crypto.keyring().blind_index_candidates(value, "users.id_number")
        stmt = stmt.where(User.id_number_idx.in_(candidates))
        audit.append(session, actor=actor.name, department=actor.department_code,
                     action="user.lookup", object_type="user", detail={"by": "id_number"})
    return paginate(session, stmt, limit, offset)


def user_update(session: Session, actor: Actor, username: str, changes: dict[str, Any]) -> User:
    """Change a user's name, role, status or password, or unlock the account."""
    user = user_by_name(session, username)
    access.require(actor, "user.write", user_target(user), session)
    if user.id == actor.user_id and (changes.get("is_active") is False or changes.get("role")):
        raise Invalid("username", "you cannot deactivate yourself or change your own role")
    if "role" in changes and changes["role"] is not None:
        _check_role(changes["role"])
        if changes["role"] == access.PLATFORM_ADMIN and actor.role != access.PLATFORM_ADMIN:
            raise Invalid("role", "only a platform admin may grant platform admin")
        user.role = changes["role"]
    if changes.get("display_name") is not None:
        user.display_name = changes["display_name"]
    if changes.get("is_active") is not None:
        user.is_active = changes["is_active"]
    if changes.get("password"):
        user.password_hash = auth.hash_password(changes["password"])
    if changes.get("phone"):
        _set_sensitive(session, user, id_number=None, phone=changes["phone"])
    if changes.get("unlock"):
        user.locked_until, user.failed_logins = None, 0
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="user.update", object_type="user", object_id=username,
                 detail={"fields": sorted(k for k, v in changes.items() if v is not None)})
    return user


def user_public(user: User, *, reveal: bool = False) -> dict[str, Any]:
    """The user as the API shows it; personal data masked unless `reveal`."""
    ring = crypto.keyring()
    idn = ring.decrypt(user.id_number_enc, "users.id_number") if user.id_number_enc else None
    phone = ring.decrypt(user.phone_enc, "users.phone") if user.phone_enc else None
    return {
        "id": user.id, "username": user.username, "display_name": user.display_name,
        "department_code": user.department.code, "department_name": user.department.name,
        "role": user.role, "is_active": user.is_active,
        "locked": bool(user.locked_until and user.locked_until > utcnow()),
        "id_number_masked": (idn if reveal else mask_citizen_id(idn)) if idn else None,
        "phone_masked": (phone if reveal else phone[:3] + "****" + phone[-4:]) if phone else None,
        "created_at": user.created_at,
    }


# -- API keys ---------------------------------------------------------------------------------


def apikey_create(
    session: Session, actor: Actor, *, name: str, department_code: str, scopes: list[str],
    expires_days: int | None = None,
) -> tuple[str, ApiKey]:
    """Issue a department-scoped API key; the raw key is returned once and stored hashed."""
    unknown = [s for s in scopes if s not in access.PERMISSIONS]
    if unknown:
        raise Invalid("scopes", f"unknown permissions: {', '.join(unknown)}")
    dept = department_by_code(session, department_code)
    access.require(actor, "apikey.write", department_target(dept), session)
    expires = utcnow() + dt.timedelta(days=expires_days) if expires_days else None
    raw, key = auth.apikey_issue(session, name=name, department=dept, scopes=scopes,
                                 created_by=actor.name, expires_at=expires)
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="apikey.create", object_type="apikey", object_id=key.prefix,
                 detail={"department": department_code, "scopes": sorted(scopes)})
    return raw, key


def apikey_list(session: Session, actor: Actor, *, limit: int = 50, offset: int = 0) -> Paged:
    stmt = (
        select(ApiKey).join(ApiKey.department).options(joinedload(ApiKey.department))
        .where(scope_filter(actor, "apikey.read", ApiKey.department_id, Department.path))
        .order_by(ApiKey.id.desc())
    )
    return paginate(session, stmt, limit, offset)


def apikey_revoke(session: Session, actor: Actor, prefix: str) -> ApiKey:
    key = session.scalar(select(ApiKey).options(joinedload(ApiKey.department))
                         .where(ApiKey.prefix == prefix))
    if key is None:
        raise NotFound("API key", prefix)
    access.require(actor, "apikey.write", department_target(key.department), session)
    key.revoked_at = key.revoked_at or utcnow()
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="apikey.revoke", object_type="apikey", object_id=prefix)
    return key


def apikey_public(key: ApiKey, raw: str | None = None) -> dict[str, Any]:
    return {
        "id": key.id, "prefix": key.prefix, "name": key.name,
        "department_code": key.department.code, "scopes": key.scopes,
        "created_by": key.created_by, "created_at": key.created_at, "expires_at": key.expires_at,
        "revoked": key.revoked_at is not None, "key": raw,
    }


# -- audit log --------------------------------------------------------------------------------


def audit_list(
    session: Session, actor: Actor, *, actor_name: str | None = None, action: str | None = None,
    outcome: str | None = None, department_code: str | None = None,
    since: dt.datetime | None = None, until: dt.datetime | None = None,
    limit: int = 50, offset: int = 0,
) -> Paged:
    """Browse the audit log, newest first, limited to the auditor's departments."""
    visible = scope_filter(actor, "audit.read", Department.id, Department.path)
    stmt = select(AuditRecord).order_by(AuditRecord.seq.desc())
    if access.reach_of(actor, "audit.read") != ALL:
        stmt = stmt.where(AuditRecord.department.in_(select(Department.code).where(visible)))
    if actor_name:
        stmt = stmt.where(AuditRecord.actor == actor_name)
    if action:
        stmt = stmt.where(AuditRecord.action.startswith(action))
    if outcome:
        if outcome not in audit.OUTCOMES:
            raise Invalid("outcome", f"one of {', '.join(audit.OUTCOMES)}")
        stmt = stmt.where(AuditRecord.outcome == outcome)
    if department_code:
        stmt = stmt.where(AuditRecord.department == department_code)
    if since:
        stmt = stmt.where(AuditRecord.at >= since)
    if until:
        stmt = stmt.where(AuditRecord.at < until)
    return paginate(session, stmt, limit, offset)


def audit_verify(session: Session, actor: Actor) -> audit.VerifyResult:
    access.require(actor, "audit.verify", None, session)
    return audit.verify(session)
