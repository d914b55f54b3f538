"""The one access decision point (统一访问控制): may this actor do this action on this object?

Deny by default. Every API route and page reaches a decision through `require`, called once
by the service function it uses. Permissions are declared as data (`define`), so an engine adds
its own actions without touching this module, and a later engine (the data hub) can add
sharing grants through `register_grant_resolver` without the core importing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cityos.core.errors import Forbidden, Unauthorized

PLATFORM_ADMIN = "platform_admin"
DEPARTMENT_ADMIN = "department_admin"
DEPARTMENT_STAFF = "department_staff"
AUDITOR = "auditor"
RESIDENT = "resident"
ROLES: dict[str, tuple[str, str]] = {
    PLATFORM_ADMIN: ("平台管理员", "Platform admin"),
    DEPARTMENT_ADMIN: ("部门管理员", "Department admin"),
    DEPARTMENT_STAFF: ("部门工作人员", "Department staff"),
    AUDITOR: ("审计员", "Auditor"),
    RESIDENT: ("居民", "Resident"),
}

# How far a role reaches from its own department: the department only, its subtree, or anywhere.
OWN, SUBTREE, ALL, SELF = "own", "subtree", "all", "self"


@dataclass(frozen=True)
class Permission:
    """An action and, per role, how far it reaches."""

    action: str
    description: str
    reach: dict[str, str]
    public: bool = False  # anyone may, signed in or not (e.g. the government directory)


PERMISSIONS: dict[str, Permission] = {}


def define(action: str, description: str, public: bool = False, **reach: str) -> Permission:
    """Declare an action and the roles that may take it (e.g. department_admin=SUBTREE)."""
    unknown = set(reach) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {unknown}")
    perm = Permission(action, description, {PLATFORM_ADMIN: ALL, **reach}, public)
    PERMISSIONS[action] = perm
    return perm


@dataclass(frozen=True)
class Actor:
    """Who is asking: a signed-in user, a machine client's API key, the system, or nobody."""

    kind: str  # user|apikey|system|anonymous
    name: str
    role: str | None = None
    user_id: int | None = None
    department_id: int | None = None
    department_code: str | None = None
    department_path: str | None = None
    scopes: frozenset[str] | None = None  # API keys: only these actions
    token_id: int | None = None

    @property
    def authenticated(self) -> bool:
        return self.kind != "anonymous"


ANONYMOUS = Actor(kind="anonymous", name="anonymous")
SYSTEM = Actor(kind="system", name="system", role=PLATFORM_ADMIN)


@dataclass(frozen=True)
class Target:
    """What is acted on: its kind and id, its owning department, and its owner if personal."""

    kind: str
    id: object = None
    department_id: int | None = None
    department_path: str | None = None
    owner_user_id: int | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    grant: Any = None  # set when a sharing grant, not ownership, allowed the read


GrantResolver = Callable[[Any, Actor, str, Target], Any]
_GRANT_RESOLVERS: list[GrantResolver] = []


def register_grant_resolver(resolver: GrantResolver) -> None:
    """Let an engine allow cross-department access by its own grants (the data hub's 共享授权)."""
    if resolver not in _GRANT_RESOLVERS:
        _GRANT_RESOLVERS.append(resolver)


def _within(actor: Actor, target: Target, reach: str) -> bool:
    if reach == ALL:
        return True
    if reach == SELF:
        return target.owner_user_id is not None and target.owner_user_id == actor.user_id
    if target.department_id is None:
        # A target with no department (e.g. "create a department anywhere") needs ALL reach.
        return False
    if reach == OWN:
        return target.department_id == actor.department_id
    if reach == SUBTREE:
        return bool(
            actor.department_path
            and target.department_path
            and target.department_path.startswith(actor.department_path)
        )
    return False


def reach_of(actor: Actor, action: str) -> str | None:
    """How far `actor` reaches for `action` by role alone (None: not at all); lists filter by it."""
    perm = PERMISSIONS.get(action)
    if perm is None:
        return None
    if perm.public:
        return ALL
    if not actor.authenticated:
        return None
    if actor.scopes is not None and action not in actor.scopes:
        return None
    return perm.reach.get(actor.role or "")


def decide(actor: Actor, action: str, target: Target | None = None, session: Any = None) -> Decision:
    """Answer allow or deny, with the reason; never raises."""
    perm = PERMISSIONS.get(action)
    if perm is None:
        return Decision(False, f"undeclared action {action!r}")
    if perm.public:
        return Decision(True, "public")
    if not actor.authenticated:
        return Decision(False, "not signed in")
    if actor.scopes is not None and action not in actor.scopes:
        return Decision(False, f"API key scope does not include {action}")
    reach = perm.reach.get(actor.role or "")
    target = target or Target(kind=action.split(".")[0])
    if reach is not None and _within(actor, target, reach):
        return Decision(True, f"{actor.role} reach {reach}")
    for resolver in _GRANT_RESOLVERS:
        grant = resolver(session, actor, action, target)
        if grant is not None:
            return Decision(True, "sharing grant", grant)
    if reach is None:
        return Decision(False, f"role {actor.role} may not {action}")
    return Decision(False, f"{target.kind} belongs to another department")


class Denied(Forbidden):
    """A refusal that the web shell records in the audit log after the request's rollback."""

    def __init__(self, actor: Actor, action: str, target: Target | None, reason: str) -> None:
        super().__init__(f"{action} denied: {reason} / 无权执行此操作")
        self.actor, self.action, self.target = actor, action, target


def require(actor: Actor, action: str, target: Target | None = None, session: Any = None) -> Decision:
    """Raise Unauthorized or Forbidden unless `decide` allows; return the decision otherwise."""
    decision = decide(actor, action, target, session)
    if decision.allowed:
        return decision
    if not actor.authenticated:
        raise Unauthorized()
    raise Denied(actor, action, target, decision.reason)


# The core's own actions. Engines declare theirs in their service modules.
# The government directory (部门名录) is public: residents need to know who is responsible.
define("department.read", "See the department directory", public=True)
define("department.write", "Create or change departments", department_admin=SUBTREE)
define("user.read", "See users and their personal data", department_admin=SUBTREE,
       department_staff=OWN, auditor=SUBTREE, resident=SELF)
define("user.write", "Create, change, lock or unlock users", department_admin=SUBTREE)
define("apikey.read", "See a department's API keys", department_admin=SUBTREE)
define("apikey.write", "Issue or revoke API keys", department_admin=SUBTREE)
define("audit.read", "Browse the audit log", auditor=SUBTREE)
define("audit.verify", "Verify the whole audit chain", auditor=ALL)
define("profile.read", "See one's own profile", department_admin=SELF, department_staff=SELF,
       auditor=SELF, resident=SELF)
