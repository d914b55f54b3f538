"""Change subscriptions (变更订阅): webhooks on a grant, fed from an outbox with retries.

A load enqueues one delivery per active subscription in its own transaction (`notify_change`),
so a notice exists exactly when the change does; `deliveries_run` posts them later, signed with
the subscription's secret (HMAC-SHA256 of the body), and backs off on failure. Notices carry the
resource, version and counts, never row data: the subscriber reads the rows through its grant.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from cityos.core import access, audit
from cityos.core.access import Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, Invalid, NotFound
from cityos.hub.models import Delivery, Grant, Resource, Subscription, Version
from cityos.hub.service import keyring

SECRET_CONTEXT = "hub.subscription"
SIGNATURE_HEADER = "X-CityOS-Signature"
DELIVERY_HEADER = "X-CityOS-Delivery"
EVENT = "hub.resource.changed"
MAX_ATTEMPTS = 8
BACKOFF = dt.timedelta(minutes=1)  # doubled after each failed attempt: 1, 2, 4 ... 64 minutes
BATCH = 100


def _live(today: dt.date) -> Any:
    return (Grant.revoked_at.is_(None), or_(Grant.valid_until.is_(None), Grant.valid_until >= today))


def subscription_create(session: Session, actor: Actor, grant_id: int, url: str) -> tuple[str, Subscription]:
    """Subscribe a webhook to a grant's resource; the signing secret is returned once only."""
    grant = session.scalar(select(Grant).where(Grant.id == grant_id).options(
        selectinload(Grant.department), selectinload(Grant.resource)))
    if grant is None:
        raise NotFound("grant", grant_id)
    access.require(actor, "hub.request.create",
                   Target("hub.grant", grant.id, grant.department_id, grant.department.path), session)
    today = dt.datetime.now(dt.UTC).date()
    if grant.revoked_at is not None or (grant.valid_until is not None and grant.valid_until < today):
        raise Conflict("the grant is no longer active / 授权已失效", "grant")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url", "an http(s) URL / 须为 http(s) 地址")
    secret = secrets.token_urlsafe(32)
    sub = Subscription(grant_id=grant.id, url=url.strip(), created_by=actor.name,
                       secret_enc=keyring().encrypt(secret, SECRET_CONTEXT))
    session.add(sub)
    session.flush()
    audit.append(session, actor=actor.name, action="hub.subscription.create",
                 department=actor.department_code, object_type="hub.subscription", object_id=sub.id,
                 detail={"grant": grant.id, "resource": grant.resource.code, "url": sub.url})
    return secret, sub


def notify_change(session: Session, resource: Resource, version: Version) -> list[Delivery]:
    """Queue a change notice for every active subscription on the resource's active grants."""
    today = dt.datetime.now(dt.UTC).date()
    subs = session.scalars(select(Subscription).join(Grant, Grant.id == Subscription.grant_id).where(
        Grant.resource_id == resource.id, Subscription.active.is_(True), *_live(today))).all()
    now = utcnow()
    payload = {
        "event": EVENT, "resource": resource.code, "version": version.number,
        "counts": {"added": version.added, "changed": version.changed, "removed": version.removed,
                   "rows": version.row_count},
        "time": now.isoformat(),
    }
    out = []
    for sub in subs:
        d = Delivery(subscription_id=sub.id, payload={**payload, "grant": sub.grant_id}, state="pending",
                     attempts=0, next_try_at=now)
        session.add(d)
        out.append(d)
    session.flush()
    return out


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: "sha256=" and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a subscriber runs on each notice: does the signature match the body?"""
    return bool(header) and hmac.compare_digest(sign(secret, body), header or "")


def _fail(d: Delivery, now: dt.datetime, error: str) -> None:
    d.attempts += 1
    d.last_error = error[:500]
    if d.attempts >= MAX_ATTEMPTS:
        d.state = "failed"
    else:
        d.next_try_at = now + BACKOFF * 2 ** (d.attempts - 1)


def deliveries_run(session: Session, client: httpx.Client, now: dt.datetime | None = None) -> dict[str, int]:
    """Post due notices (for a scheduler); returns how many were delivered, retried and failed."""
    now = now or utcnow()
    today = now.date()
    due = session.execute(
        select(Delivery, Subscription, Grant)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Grant, Grant.id == Subscription.grant_id)
        .where(Delivery.state == "pending", Delivery.next_try_at <= now)
        .order_by(Delivery.id).limit(BATCH)).all()
    counts = {"delivered": 0, "retry": 0, "failed": 0}
    ring = keyring()
    for d, sub, grant in due:
        if not sub.active or grant.revoked_at is not None or (
                grant.valid_until is not None and grant.valid_until < today):
            # A revoked grant stops its notices too: nothing more goes to that department.
            d.state, d.last_error = "failed", "subscription or grant no longer active / 订阅或授权已失效"
            counts["failed"] += 1
            continue
        body = orjson.dumps(d.payload, option=orjson.OPT_SORT_KEYS)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(
            ring.decrypt(sub.secret_enc, SECRET_CONTEXT), body), DELIVERY_HEADER: str(d.id),
            "X-CityOS-Event": EVENT}
        try:
            r = client.post(sub.url, content=body, headers=headers)
            ok, error = r.is_success, f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        if ok:
            d.state, d.last_error = "delivered", None
            d.attempts += 1
            counts["delivered"] += 1
        else:
            _fail(d, now, error)
            counts["failed" if d.state == "failed" else "retry"] += 1
    session.flush()
    return counts
