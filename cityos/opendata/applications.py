"""Applications for conditional data (有条件开放申请) and the keys they earn, plus usage counts.

A company or person applies with a purpose; the provider department decides; an approval
issues a key "odk_<prefix>_<secret>" that reads that one dataset (CKAN clients send it as the
`Authorization` or `X-CKAN-API-Key` header). Only the secret's SHA-256 is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import logging
import secrets
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

import cityos.hub.service as hub
from cityos.core import access, audit
from cityos.core.access import ALL, OWN, Actor
from cityos.core.auth import sha256
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, FieldError, Invalid, NotFound
from cityos.core.identifiers import validate_credit_code
from cityos.core.service import Paged, paginate
from cityos.opendata.models import AccessKey, Application, Dataset, Usage

KEY_TAG = "odk"
log = logging.getLogger("cityos.opendata")
MAX_VALID_DAYS = 3 * 366

access.define("opendata.application.create", "Apply for a conditional dataset (开放申请)",
              resident=ALL, department_staff=ALL, department_admin=ALL)
access.define("opendata.application.decide", "Decide applications for a department's datasets",
              department_admin=OWN)


def _target(ds: Dataset) -> access.Target:
    return access.Target("opendata.dataset", ds.id, ds.department_id, ds.department.path)


def application_create(session: Session, actor: Actor, ds: Dataset, *, applicant: str, contact: str,
                       purpose: str, credit_code: str | None = None) -> Application:
    """Apply for a conditional dataset, saying who and what for."""
    access.require(actor, "opendata.application.create", session=session)
    if ds.open_level != "conditional" or ds.state != "published":
        raise Invalid("dataset",
                      "only published conditional datasets take applications / 仅有条件开放数据需申请")
    errors = []
    if not applicant.strip() or len(applicant) > 200:
        errors.append(FieldError("applicant", "1-200 characters / 应为1到200个字符"))
    if not contact.strip() or len(contact) > 200:
        errors.append(FieldError("contact", "1-200 characters / 应为1到200个字符"))
    if len(purpose.strip()) < 10:
        errors.append(FieldError("purpose",
                                 "say what the data is for (10+ characters) / 请说明用途（至少10个字）"))
    if credit_code:
        try:
            credit_code = validate_credit_code(credit_code)
        except Invalid as exc:
            errors += exc.errors
    if errors:
        raise Invalid.many(errors)
    app = Application(dataset_id=ds.id, user_id=actor.user_id, applicant=applicant.strip(),
                      contact=contact.strip(), purpose=purpose.strip(), credit_code=credit_code)
    session.add(app)
    session.flush()
    audit.append(session, actor=actor.name, action="opendata.application.create",
                 department=ds.department.code, object_type="opendata.application", object_id=app.id,
                 detail={"dataset": ds.name})
    return app


def application_get(session: Session, app_id: int) -> Application:
    app = session.get(Application, app_id)
    if app is None:
        raise NotFound("application", app_id)
    return app


def application_list(session: Session, actor: Actor, *, state: str | None = None, mine: bool = False,
                     limit: int = 50, offset: int = 0) -> Paged:
    """Applications the actor may decide (their department's datasets), or their own."""
    stmt = select(Application).join(Dataset, Application.dataset_id == Dataset.id).order_by(
        Application.created_at.desc())
    if mine:
        if not actor.authenticated:
            access.require(actor, "opendata.application.create")
        stmt = stmt.where(Application.user_id == actor.user_id)
    elif access.reach_of(actor, "opendata.application.decide") != ALL:
        access.require(actor, "opendata.application.decide",
                       access.Target("opendata.dataset", None, actor.department_id, actor.department_path))
        stmt = stmt.where(Dataset.department_id == actor.department_id)
    if state:
        stmt = stmt.where(Application.state == state)
    return paginate(session, stmt, limit, offset)


def application_decide(session: Session, actor: Actor, app_id: int, *, approve: bool,
                       reason: str | None = None, valid_days: int = 366) -> tuple[Application, str | None]:
    """Approve (issuing a key, shown once) or refuse an application."""
    app = application_get(session, app_id)
    ds = session.get(Dataset, app.dataset_id)
    assert ds is not None
    access.require(actor, "opendata.application.decide", _target(ds), session)
    if app.state != "pending":
        raise Conflict(f"already {app.state} / 已处理", "state")
    if not approve and not (reason or "").strip():
        raise Invalid("reason", "a refusal needs a reason / 不予批准须说明理由")
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise Invalid("valid_days", f"1 to {MAX_VALID_DAYS} / 应为1到{MAX_VALID_DAYS}天")
    app.state = "approved" if approve else "refused"
    app.decided_by, app.decided_at, app.reason = actor.name, utcnow(), reason
    raw = None
    if approve:
        app.valid_until = hub.city_today() + dt.timedelta(days=valid_days)
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        raw = f"{KEY_TAG}_{prefix}_{secret}"
        session.add(AccessKey(prefix=prefix, key_hash=sha256(secret), application_id=app.id,
                              dataset_id=ds.id, expires_at=utcnow() + dt.timedelta(days=valid_days)))
    session.flush()
    audit.append(session, actor=actor.name, action="opendata.application." + app.state,
                 department=ds.department.code, object_type="opendata.application", object_id=app.id,
                 detail={"dataset": ds.name, "reason": reason})
    return app, raw


def key_valid(session: Session, raw: str, dataset_id: int) -> bool:
    """Is this key live and issued for this dataset?"""
    try:
        tag, prefix, secret = raw.strip().split("_", 2)
    except ValueError:
        return False
    if tag != KEY_TAG:
        return False
    key = session.scalar(select(AccessKey).where(AccessKey.prefix == prefix))
    if key is None or key.dataset_id != dataset_id or key.revoked_at is not None:
        return False
    if key.expires_at is not None and key.expires_at <= utcnow():
        return False
    return hmac.compare_digest(key.key_hash, sha256(secret))


def key_revoke(session: Session, actor: Actor, app_id: int) -> int:
    app = application_get(session, app_id)
    ds = session.get(Dataset, app.dataset_id)
    assert ds is not None
    access.require(actor, "opendata.application.decide", _target(ds), session)
    n = session.execute(update(AccessKey).where(AccessKey.application_id == app.id,
                                                AccessKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
    audit.append(session, actor=actor.name, action="opendata.key.revoke", department=ds.department.code,
                 object_type="opendata.application", object_id=app.id)
    return int(n.rowcount)  # type: ignore[attr-defined]


# -- usage (访问统计) ------------------------------------------------------------------------------


class UsageCounter:
    """Views, downloads and API calls, counted in memory and flushed in one write every few
    seconds: counting must not put a write on every public read. A crash loses at most the
    last few seconds of counts (they are statistics, not acknowledged writes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[int, dt.date, str]] = Counter()

    def add(self, dataset_id: int, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[(dataset_id, hub.city_today(), kind)] += n

    def pending(self) -> int:
        return sum(self._counts.values())

    def flush(self, sessions: sessionmaker[Session]) -> int:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not counts:
            return 0
        try:
            with sessions.begin() as session:
                _write(session, counts)
        except Exception:
            with self._lock:  # keep them for the next flush
                self._counts.update(counts)
            raise
        return sum(counts.values())


KINDS = ("views", "downloads", "api_calls")


def _write(session: Session, counts: Counter[tuple[int, dt.date, str]]) -> None:
    per: dict[tuple[int, dt.date], dict[str, int]] = {}
    for (ds_id, day, kind), n in counts.items():
        per.setdefault((ds_id, day), dict.fromkeys(KINDS, 0))[kind] += n
    for (ds_id, day), add in per.items():
        row = session.scalar(select(Usage).where(Usage.dataset_id == ds_id, Usage.day == day))
        if row is None:
            session.add(Usage(dataset_id=ds_id, day=day, **add))
        else:
            for kind, n in add.items():
                setattr(row, kind, getattr(row, kind) + n)
        session.execute(update(Dataset).where(Dataset.id == ds_id).values(
            views=Dataset.views + add["views"], downloads=Dataset.downloads + add["downloads"],
            api_calls=Dataset.api_calls + add["api_calls"],
            modified_at=Dataset.modified_at))  # counts are not a metadata change


USAGE = UsageCounter()


def usage_series(session: Session, ds: Dataset, days: int = 30) -> list[dict[str, Any]]:
    since = hub.city_today() - dt.timedelta(days=days - 1)
    rows = session.scalars(select(Usage).where(Usage.dataset_id == ds.id, Usage.day >= since)
                           .order_by(Usage.day))
    return [{"day": u.day.isoformat(), "views": u.views, "downloads": u.downloads, "api_calls": u.api_calls}
            for u in rows]


FLUSH_SECONDS = 5.0


@contextlib.asynccontextmanager
async def usage_flusher(sessions: sessionmaker[Session], every: float = FLUSH_SECONDS
                        ) -> AsyncIterator[None]:
    """Flush usage counts every few seconds while the app runs, and once more at shutdown."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await run_in_threadpool(USAGE.flush, sessions)
            except Exception:  # statistics must never take the server down; retried next time
                log.exception("usage flush failed")

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(Exception):
            await run_in_threadpool(USAGE.flush, sessions)
