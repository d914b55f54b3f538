"""Operations center operations (城市运行管理中心): the permissions and lookups its modules share.

The center is an app: it reads the engines only through their `service` modules. Its figures are
city-wide aggregates, so every member of staff may read them (`ops.read`); configuring
indicators, rules and plans (`ops.write`) and commanding incidents (`ops.command`) belong to the
operations center's own department and to platform administrators.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import access
from cityos.core.access import ALL, OWN, SUBTREE, Actor, Target
from cityos.core.errors import FieldError, Invalid, NotFound
from cityos.core.models import Department

access.define("ops.read", "See the city's vital signs, warnings, incidents and plan progress (城市运行态势)",
              department_admin=ALL, department_staff=ALL, auditor=ALL)
access.define("ops.write", "Maintain indicators, warning rules, response plans and projects (运行中心配置)",
              department_admin=SUBTREE, department_staff=OWN)
access.define("ops.command", "Open and command emergency incidents, activate plans (应急指挥)",
              department_admin=SUBTREE, department_staff=OWN)


def target(kind: str, department: Department | None, obj: object = None) -> Target:
    """What an ops permission is checked against: the owning department of the object."""
    return Target(kind, str(obj) if obj is not None else None,
                  department.id if department else None, department.path if department else None)


def department_of(session: Session, code: str | None, field: str = "department") -> Department:
    """A department by code; a missing or unknown one is the caller's mistake (422, naming the field)."""
    if not code:
        raise Invalid(field, "required / 必填")
    dept = session.scalar(select(Department).where(Department.code == code))
    if dept is None:
        raise Invalid(field, f"unknown department {code} / 部门不存在")
    return dept


def require_read(session: Session, actor: Actor) -> None:
    """Anyone on staff may watch the city (the reach of ops.read is ALL)."""
    own = Target("ops", None, actor.department_id, actor.department_path)
    access.require(actor, "ops.read", own, session)


def get_or_404(session: Session, model: type, key: str, value: object) -> object:
    row = session.scalar(select(model).where(getattr(model, key) == value))
    if row is None:
        raise NotFound(model.__tablename__, str(value))
    return row


def text_of(spec: Mapping[str, Any], key: str, errors: list[FieldError], limit: int = 200,
            required: bool = False) -> str | None:
    """A text field of a spec, stripped; a missing, blank, non-text or too long one adds its error."""
    v = spec.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            errors.append(FieldError(key, "required / 必填"))
        return None
    if not isinstance(v, str) or len(v) > limit:
        errors.append(FieldError(key, f"a text of at most {limit} characters / 最长 {limit} 字"))
        return None
    return v.strip()
