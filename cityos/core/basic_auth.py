"""HTTP Basic for standard clients (Basic 认证): the platform's bearer tokens and API keys, plus Basic.

Desktop GIS (QGIS), OWSLib and SensorThings clients authenticate with HTTP Basic, so /ogc and
/sta accept it besides what `core.web.get_actor` reads: a username and password (checked by
`auth.login_check`, with its lockout and audit), or any username with a CityOS API key as the
password.

A verified password is remembered for a few minutes, keyed by an HMAC of the pair (never the
password itself): QGIS sends the same header on every one of its many requests, and each would
otherwise cost an argon2 hash and a login record. The user row is read again on every request,
so deactivating, locking or changing the password takes effect at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, joinedload
from starlette.concurrency import run_in_threadpool

from cityos.core import auth
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.errors import Locked, Unauthorized
from cityos.core.models import User
from cityos.core.web import SessionDep, get_actor, platform_of

REALM = 'Basic realm="CityOS"'
REMEMBER_SECONDS = 300
_MAX_REMEMBERED = 1024


@dataclass(frozen=True)
class _Verified:
    user_id: int
    password_hash: str
    until: float


_verified: dict[bytes, _Verified] = {}
_lock = threading.Lock()


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(username, password) of an `Authorization: Basic ...` header, None for another scheme."""
    if header[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed HTTP Basic credentials / Basic 认证格式错误") from None
    username, sep, password = raw.partition(":")
    if not sep:
        raise Unauthorized("malformed HTTP Basic credentials / Basic 认证格式错误")
    return username, password


def _remembered(session: Session, key: bytes) -> Actor | None:
    with _lock:
        hit = _verified.get(key)
    if hit is None or hit.until < time.monotonic():
        return None
    user = session.get(User, hit.user_id, options=[joinedload(User.department)])
    if (user is None or not user.is_active or user.password_hash != hit.password_hash
            or (user.locked_until is not None and user.locked_until > utcnow())):
        with _lock:
            _verified.pop(key, None)
        return None
    return auth.user_actor(user)


def basic_actor(request: Request, session: Session, username: str, password: str) -> Actor:
    """The actor of HTTP Basic credentials; Unauthorized (401) or Locked (423) when they fail."""
    if password.startswith(auth.API_KEY_PREFIX + "_"):
        found = auth.apikey_actor(session, password)
        if found is None:
            raise Unauthorized("invalid, expired or revoked API key / API 密钥无效、过期或已吊销")
        return found
    settings = platform_of(request).settings
    key = hmac.new(settings.secret_key.encode(), f"{username}\0{password}".encode(), hashlib.sha256).digest()
    actor = _remembered(session, key)
    if actor is not None:
        return actor
    result = auth.login_check(session, username, password, threshold=settings.lockout_threshold,
                              lock_seconds=settings.lockout_seconds, channel="http-basic")
    session.commit()  # the attempt is audited and counted whatever the outcome
    if result.error == "locked":
        raise Locked("account locked after repeated failures / 账户已锁定，请稍后再试", result.retry_after)
    if result.error is not None or result.user is None:
        raise Unauthorized("wrong username or password / 用户名或密码错误")
    with _lock:
        if len(_verified) >= _MAX_REMEMBERED:
            _verified.clear()
        _verified[key] = _Verified(result.user.id, result.user.password_hash,
                                   time.monotonic() + REMEMBER_SECONDS)
    return auth.user_actor(result.user)


async def basic_or_actor(request: Request, session: SessionDep) -> Actor:
    """Who sent this request: HTTP Basic if present, else what the core reads (bearer token,
    API key, console cookie), else anonymous."""
    creds = basic_credentials(request.headers.get("authorization", ""))
    if creds is None:
        return await get_actor(request, session)
    actor = await run_in_threadpool(basic_actor, request, session, *creds)
    request.state.actor = actor
    return actor


BasicActor = Annotated[Actor, Depends(basic_or_actor)]
