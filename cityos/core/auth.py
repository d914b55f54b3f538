"""Identity (统一身份认证): passwords, lockout, bearer tokens, console sessions, API keys, CSRF.

Only hashes of tokens and keys are stored: a leaked database grants no sessions. Passwords use
argon2id. Tokens are opaque and looked up on each request, through a short-lived cache that every
committed change to users, tokens or keys clears (`core.cache`), so revocation takes effect at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, joinedload

from cityos.core import audit, cache
from cityos.core.access import DEPARTMENT_STAFF, Actor
from cityos.core.db import utcnow
from cityos.core.models import ApiKey, AuthToken, Department, User

_hasher = PasswordHasher()
# Verifying against this keeps unknown usernames as slow as known ones (no user enumeration).
_DUMMY_HASH = _hasher.hash("cityos-dummy-password")


def use_hasher(hasher: PasswordHasher) -> None:
    """Swap the argon2 parameters (the test suite uses cheap ones; production keeps defaults)."""
    global _hasher, _DUMMY_HASH
    _hasher = hasher
    _DUMMY_HASH = hasher.hash("cityos-dummy-password")
API_KEY_PREFIX = "cos"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def user_actor(user: User, token_id: int | None = None) -> Actor:
    dept = user.department
    return Actor(
        kind="user",
        name=user.username,
        role=user.role,
        user_id=user.id,
        department_id=dept.id,
        department_code=dept.code,
        department_path=dept.path,
        token_id=token_id,
    )


@dataclass
class LoginResult:
    """The outcome of one password check; the caller commits, then acts on `error`."""

    user: User | None
    error: str | None = None  # bad_credentials|locked|inactive
    retry_after: int = 0


def login_check(
    session: Session, username: str, password: str, *, threshold: int, lock_seconds: int,
    channel: str,
) -> LoginResult:
    """Check a password, count failures, lock after `threshold`, and audit the attempt."""
    user = session.scalar(
        select(User).options(joinedload(User.department)).where(User.username == username)
    )
    now = utcnow()
    if user is None:
        check_password(_DUMMY_HASH, password)
        audit.append(session, actor=username[:64] or "?", action="auth.login", outcome="failure",
                     detail={"channel": channel, "why": "unknown user"})
        return LoginResult(None, "bad_credentials")
    dept_code = user.department.code
    if user.locked_until and user.locked_until > now:
        wait = int((user.locked_until - now).total_seconds()) + 1
        audit.append(session, actor=user.username, department=dept_code, action="auth.login",
                     outcome="denied", detail={"channel": channel, "why": "locked"})
        return LoginResult(user, "locked", wait)
    if not check_password(user.password_hash, password):
        user.failed_logins += 1
        locked = user.failed_logins >= threshold
        if locked:
            user.locked_until = now + dt.timedelta(seconds=lock_seconds)
            user.failed_logins = 0
        audit.append(session, actor=user.username, department=dept_code, action="auth.login",
                     outcome="failure",
                     detail={"channel": channel, "why": "bad password", "locked": locked})
        return LoginResult(user, "locked" if locked else "bad_credentials",
                           lock_seconds if locked else 0)
    if not user.is_active:
        audit.append(session, actor=user.username, department=dept_code, action="auth.login",
                     outcome="denied", detail={"channel": channel, "why": "inactive"})
        return LoginResult(user, "inactive")
    user.failed_logins = 0
    user.locked_until = None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    audit.append(session, actor=user.username, department=dept_code, action="auth.login",
                 detail={"channel": channel})
    return LoginResult(user)


def token_issue(session: Session, user: User, kind: str, ttl_seconds: int) -> tuple[str, AuthToken]:
    """Create a bearer token or console session; return the raw token (shown once) and its row."""
    raw = secrets.token_urlsafe(32)
    row = AuthToken(
        token_hash=sha256(raw), user_id=user.id, kind=kind,
        expires_at=utcnow() + dt.timedelta(seconds=ttl_seconds),
    )
    session.add(row)
    session.flush()
    return raw, row


# Built once: this runs on every API request that is not answered from the cache.
_TOKEN_QUERY = (
    select(AuthToken.id, AuthToken.expires_at, AuthToken.revoked_at, User.id, User.username,
           User.role, User.is_active, Department.id, Department.code, Department.path)
    .join(User, AuthToken.user_id == User.id)
    .join(Department, User.department_id == Department.id)
    .where(AuthToken.token_hash == bindparam("hash"), AuthToken.kind == bindparam("kind"))
)
# Who a token or key is, for a moment: (database, kind, hash of the secret) -> (actor, expiry).
# Sign-out, revocation, deactivation and role changes invalidate it at once (`core.cache`).
cache.watch(User, Department, AuthToken, ApiKey)
_ACTORS: cache.Cache[tuple[Any, str, str], tuple[Actor, dt.datetime | None]] = cache.Cache()


def cached_actor(bind: Any, raw: str, kind: str) -> Actor | None:
    """The actor of a token or key seen a moment ago, if nothing changed since; no database."""
    hit = _ACTORS.get((bind, kind, sha256(raw)))
    if hit is None or (hit[1] is not None and hit[1] <= utcnow()):
        return None
    return hit[0]


def _remember(session: Session, raw: str, kind: str, generation: int, actor: Actor,
              expires_at: dt.datetime | None) -> None:
    if cache.usable(session):
        _ACTORS.put((session.get_bind(), kind, sha256(raw)), (actor, expires_at), generation)


def token_actor(session: Session, raw: str, kind: str) -> Actor | None:
    """Resolve a raw token to its actor, or None if unknown, expired, revoked or deactivated."""
    found = cached_actor(session.get_bind(), raw, kind) if cache.usable(session) else None
    if found is not None:
        return found
    generation = cache.generation()
    row = session.execute(_TOKEN_QUERY, {"hash": sha256(raw), "kind": kind}).first()
    if row is None:
        return None
    token_id, expires_at, revoked_at, user_id, username, role, active, dept_id, code, path = row
    if revoked_at is not None or expires_at <= utcnow() or not active:
        return None
    actor = Actor(
        kind="user", name=username, role=role, user_id=user_id, department_id=dept_id,
        department_code=code, department_path=path, token_id=token_id,
    )
    _remember(session, raw, kind, generation, actor, expires_at)
    return actor


def token_revoke(session: Session, raw: str | None = None, token_id: int | None = None) -> bool:
    """Revoke one token by its raw value or id; true if a live token was revoked."""
    cond = AuthToken.token_hash == sha256(raw) if raw is not None else AuthToken.id == token_id
    result = session.execute(
        update(AuthToken).where(cond, AuthToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def apikey_issue(
    session: Session, *, name: str, department: Department, scopes: list[str], created_by: str,
    expires_at: dt.datetime | None = None,
) -> tuple[str, ApiKey]:
    """Issue an API key "cos_<prefix>_<secret>"; only the secret's hash is kept."""
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    raw = f"{API_KEY_PREFIX}_{prefix}_{secret}"
    row = ApiKey(
        prefix=prefix, key_hash=sha256(secret), name=name, department_id=department.id,
        scopes=sorted(set(scopes)), created_by=created_by, expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return raw, row


def apikey_actor(session: Session, raw: str) -> Actor | None:
    """Resolve a raw API key to a department-scoped machine actor."""
    try:
        tag, prefix, secret = raw.split("_", 2)
    except ValueError:
        return None
    if tag != API_KEY_PREFIX:
        return None
    found = cached_actor(session.get_bind(), raw, "apikey") if cache.usable(session) else None
    if found is not None:
        return found
    generation = cache.generation()
    row = session.execute(
        select(ApiKey, Department)
        .join(Department, ApiKey.department_id == Department.id)
        .where(ApiKey.prefix == prefix)
    ).first()
    if row is None:
        return None
    key, dept = row
    if not hmac.compare_digest(key.key_hash, sha256(secret)):
        return None
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= utcnow()):
        return None
    actor = Actor(
        kind="apikey", name=f"apikey:{prefix}", role=DEPARTMENT_STAFF, department_id=dept.id,
        department_code=dept.code, department_path=dept.path, scopes=frozenset(key.scopes),
    )
    _remember(session, raw, "apikey", generation, actor, key.expires_at)
    return actor


def csrf_token(secret_key: str, session_token: str) -> str:
    """The CSRF token of a console session: an HMAC of the session, so it needs no storage."""
    return hmac.new(secret_key.encode(), b"csrf:" + session_token.encode(), "sha256").hexdigest()


def csrf_ok(secret_key: str, session_token: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(secret_key, session_token), presented or "")
