"""Alerts (告警): their life (open → acknowledged → resolved), and everything a change sets off.

Every state change, whether made by the rules engine or by a person, does four things in the
transaction of the change: an audit record, a domain event on `core.events`, a message for the
live hub (sent to SSE subscribers only after COMMIT), and one outbox row per matching webhook,
which the `Sender` thread delivers, signed, retrying with backoff until it succeeds.

De-duplication: at most one unresolved alert per (rule, datastream); a reading that breaks the
rule again while it is unresolved raises `occurrences`. Flap suppression (抖动抑制): when the
rule fires within `flap_seconds` of the pair's last alert being resolved, that alert is
reopened instead of a new one being opened; it also counts as an occurrence, and the reopening
is journalled in `note` as a line starting with "[flap N]" (N counts the reopenings, reported
as `flaps` in the alert's JSON). `note` is the alert's journal: people's notes on acknowledging
and resolving are appended to it too, one line each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from sqlalchemy import Engine, event, func, select, update
from sqlalchemy.orm import Session

from cityos.core import access, audit, events
from cityos.core.access import Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, Invalid, NotFound, Unauthorized
from cityos.core.models import Department
from cityos.sensing.ingest import ms_to_iso
from cityos.sensing.models import Alert, Webhook, WebhookDelivery
from cityos.sensing.service import readable_departments

log = logging.getLogger("cityos.sensing.alerts")

# Domain events (core.events), published with (session=, alert=) inside the change's transaction;
# ALERT_OPENED also with reopened=True|False.
ALERT_OPENED = events.SENSING_ALERT_OPENED
ALERT_ACKNOWLEDGED = events.SENSING_ALERT_ACKNOWLEDGED
ALERT_RESOLVED = events.SENSING_ALERT_RESOLVED
# What the live stream and webhooks call them.
PUBLIC_NAMES = {ALERT_OPENED: "alert.opened", ALERT_ACKNOWLEDGED: "alert.acknowledged",
                ALERT_RESOLVED: "alert.resolved"}
WEBHOOK_EVENTS = tuple(PUBLIC_NAMES.values())
STATES = ("open", "acknowledged", "resolved")
SEVERITIES = ("info", "warning", "critical")
FLAP_TAG = "[flap "
BY_RULE = "rule"  # resolved_by when the rule cleared


def alert_public(a: Alert) -> dict[str, Any]:
    """An alert as the API, the live stream and webhooks show it."""
    note = a.note or ""
    return {
        "id": a.id, "rule_id": a.rule_id, "datastream_id": a.datastream_id, "thing_id": a.thing_id,
        "department_id": a.department_id, "kind": a.kind, "severity": a.severity, "state": a.state,
        "message": a.message, "value": a.value, "observed_at": ms_to_iso(a.observed_at),
        "opened_at": iso(a.opened_at), "occurrences": a.occurrences,
        "flaps": sum(1 for line in note.splitlines() if line.startswith(FLAP_TAG)),
        "acknowledged_at": iso(a.acknowledged_at), "acknowledged_by": a.acknowledged_by,
        "resolved_at": iso(a.resolved_at), "resolved_by": a.resolved_by, "note": a.note,
    }


def iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None


def _journal(a: Alert, line: str) -> None:
    a.note = f"{a.note}\n{line}" if a.note else line


# -- the live hub (实时推送) ------------------------------------------------------------------


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, departments: list[int] | None, size: int) -> None:
        self.loop, self.departments = loop, None if departments is None else set(departments)
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(size)
        self.dropped = 0

    def put(self, item: tuple[str, dict[str, Any]]) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # a stalled client loses messages, never slows the publisher
            self.dropped += 1


class Hub:
    """In-process fan-out of alert changes to live subscribers (the SSE stream), each seeing only
    the departments it may read. Publishing never blocks: any thread may publish."""

    def __init__(self) -> None:
        self._subs: set[_Subscriber] = set()
        self._lock = threading.Lock()

    def subscribe(self, departments: list[int] | None, size: int = 1000) -> _Subscriber:
        """Call on the subscriber's event loop; `departments` None means all."""
        sub = _Subscriber(asyncio.get_running_loop(), departments, size)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def publish(self, name: str, alert: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if sub.departments is not None and alert["department_id"] not in sub.departments:
                continue
            try:
                sub.loop.call_soon_threadsafe(sub.put, (name, alert))
            except RuntimeError:  # its loop is closed: the client is long gone
                self.unsubscribe(sub)


hub = Hub()
_LIVE = "cityos.sensing.live"
_OUTBOX = "cityos.sensing.outbox"
_wakers: set[threading.Event] = set()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    """Live messages go out only once their change is durable; new outbox rows wake the senders."""
    for name, body in session.info.pop(_LIVE, ()):
        hub.publish(name, body)
    if session.info.pop(_OUTBOX, False):
        for waker in list(_wakers):
            waker.set()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_LIVE, None)
    session.info.pop(_OUTBOX, None)


def _announce(session: Session, name: str, a: Alert, actor: str, department: str | None,
              action: str, **payload: Any) -> None:
    """The four consequences of one state change, inside the caller's transaction."""
    session.flush()
    body = alert_public(a)
    audit.append(session, actor=actor, department=department, action=action, object_type="sensing.alert",
                 object_id=a.id, detail={"rule_id": a.rule_id, "datastream_id": a.datastream_id,
                                         "state": a.state, "occurrences": a.occurrences})
    events.publish(name, session=session, alert=a, **payload)
    public = PUBLIC_NAMES[name]
    session.info.setdefault(_LIVE, []).append((public, body))
    _enqueue_deliveries(session, a, public, body)


# -- what the rules engine records -----------------------------------------------------------

FIRE, REPEAT, CLEAR = "fire", "repeat", "clear"


@dataclass(frozen=True, slots=True)
class Change:
    """A rule's verdict on one (rule, datastream) pair, for `record`."""

    verdict: str  # fire|clear (repeats are counted separately)
    rule_id: int
    rule_department_id: int
    kind: str
    severity: str
    flap_seconds: float
    datastream_id: int
    thing_id: int
    department_id: int
    department_code: str | None
    observed_at: int  # epoch ms
    value: float | None
    message: str


def _unresolved(session: Session, rule_id: int, datastream_id: int) -> Alert | None:
    return session.scalars(select(Alert).where(
        Alert.rule_id == rule_id, Alert.datastream_id == datastream_id, Alert.state != "resolved")
        .order_by(Alert.id.desc()).limit(1)).first()


def _fire(session: Session, c: Change) -> None:
    a = _unresolved(session, c.rule_id, c.datastream_id)
    if a is not None:  # de-duplication: still the same alert
        a.occurrences += 1
        return
    last = session.scalars(select(Alert).where(
        Alert.rule_id == c.rule_id, Alert.datastream_id == c.datastream_id, Alert.state == "resolved")
        .order_by(Alert.resolved_at.desc(), Alert.id.desc()).limit(1)).first()
    now = utcnow()
    if (last is not None and last.resolved_at is not None
            and (now - last.resolved_at).total_seconds() < c.flap_seconds):
        flaps = sum(1 for line in (last.note or "").splitlines() if line.startswith(FLAP_TAG)) + 1
        last.state, last.resolved_at, last.resolved_by = "open", None, None
        last.acknowledged_at = last.acknowledged_by = None
        last.occurrences += 1
        last.value, last.observed_at = c.value, c.observed_at
        last.message, last.severity = c.message, c.severity
        _journal(last, f"{FLAP_TAG}{flaps}] {iso(now)} reopened within {c.flap_seconds:g}s of resolving / "
                       "解除后短时间内再次触发，重新打开")
        _announce(session, ALERT_OPENED, last, "system", c.department_code, "sensing.alert.reopen",
                  reopened=True)
        return
    a = Alert(rule_id=c.rule_id, datastream_id=c.datastream_id, thing_id=c.thing_id,
              department_id=c.department_id, kind=c.kind, severity=c.severity, state="open",
              message=c.message, value=c.value, observed_at=c.observed_at, opened_at=now, occurrences=1)
    session.add(a)
    _announce(session, ALERT_OPENED, a, "system", c.department_code, "sensing.alert.open", reopened=False)


def _clear(session: Session, c: Change) -> None:
    a = _unresolved(session, c.rule_id, c.datastream_id)
    if a is None:
        return
    a.state, a.resolved_at, a.resolved_by = "resolved", utcnow(), BY_RULE
    _announce(session, ALERT_RESOLVED, a, "system", c.department_code, "sensing.alert.resolve")


def _apply(session: Session, changes: Sequence[Change], bumps: dict[tuple[int, int], int]) -> None:
    for c in changes:
        (_fire if c.verdict == FIRE else _clear)(session, c)
    session.flush()
    table = Alert.__table__
    for (rule_id, ds), n in bumps.items():
        session.execute(update(table).where(table.c.rule_id == rule_id, table.c.datastream_id == ds,
                                            table.c.state != "resolved")
                        .values(occurrences=table.c.occurrences + n))


def record(engine: Engine, changes: Sequence[Change], bumps: dict[tuple[int, int], int]) -> None:
    """Write the engine's verdicts in one short transaction; if that fails, each on its own, so one
    bad change cannot hold back the others."""
    if not changes and not bumps:
        return
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            _apply(session, changes, bumps)
        return
    except Exception:
        log.exception("recording %d alert changes failed; retrying one by one", len(changes))
    for c in changes:
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                _apply(session, [c], {})
        except Exception:
            log.exception("alert change of rule %s on Datastream(%s) failed", c.rule_id, c.datastream_id)


# -- what people do (告警处置) ---------------------------------------------------------------


def _target(session: Session, a: Alert) -> Target:
    dept = session.get(Department, a.department_id)
    return Target(kind="sensing.alert", id=a.id, department_id=a.department_id,
                  department_path=dept.path if dept else None)


def alert_get(session: Session, actor: Actor, alert_id: int, action: str = "sensing.read") -> Alert:
    """An alert `actor` may `action` (read, by default)."""
    a = session.get(Alert, alert_id)
    if a is None:
        raise NotFound("alert / 告警", alert_id)
    access.require(actor, action, _target(session, a), session)
    return a


def alert_list(session: Session, actor: Actor, *, state: str | None = None, severity: str | None = None,
               thing: int | None = None, limit: int = 100, offset: int = 0) -> tuple[list[Alert], int]:
    """Alerts `actor` may read, newest first, and how many match in all."""
    if state is not None and state not in STATES:
        raise Invalid("state", f"one of {', '.join(STATES)} / 状态取值无效")
    if severity is not None and severity not in SEVERITIES:
        raise Invalid("severity", f"one of {', '.join(SEVERITIES)} / 级别取值无效")
    depts = readable_departments(session, actor)
    if depts == [] and not actor.authenticated:
        access.require(actor, "sensing.read")  # raises Unauthorized
    where = []
    if depts is not None:
        where.append(Alert.department_id.in_(depts))
    if state is not None:
        where.append(Alert.state == state)
    if severity is not None:
        where.append(Alert.severity == severity)
    if thing is not None:
        where.append(Alert.thing_id == thing)
    total = session.scalar(select(func.count()).select_from(Alert).where(*where)) or 0
    items = session.scalars(select(Alert).where(*where).order_by(Alert.opened_at.desc(), Alert.id.desc())
                            .limit(limit).offset(offset)).all()
    return list(items), int(total)


def alert_acknowledge(session: Session, actor: Actor, alert_id: int, note: str | None = None) -> Alert:
    """Someone is on it (确认): only an open alert can be acknowledged."""
    a = alert_get(session, actor, alert_id, "sensing.alert.handle")
    if a.state != "open":
        raise Conflict(f"alert is {a.state}, only an open alert can be acknowledged / 仅未处理的告警可确认",
                       "state")
    a.state, a.acknowledged_at, a.acknowledged_by = "acknowledged", utcnow(), actor.name
    if note:
        _journal(a, f"{iso(a.acknowledged_at)} {actor.name} acknowledged / 确认: {note}")
    _announce(session, ALERT_ACKNOWLEDGED, a, actor.name, actor.department_code, "sensing.alert.acknowledge")
    return a


def alert_resolve(session: Session, actor: Actor, alert_id: int, note: str | None = None) -> Alert:
    """Handled (解除): an open or acknowledged alert is closed by a person."""
    a = alert_get(session, actor, alert_id, "sensing.alert.handle")
    if a.state == "resolved":
        raise Conflict("alert is already resolved / 告警已解除", "state")
    a.state, a.resolved_at, a.resolved_by = "resolved", utcnow(), actor.name
    if note:
        _journal(a, f"{iso(a.resolved_at)} {actor.name} resolved / 解除: {note}")
    _announce(session, ALERT_RESOLVED, a, actor.name, actor.department_code, "sensing.alert.resolve")
    return a


# -- webhooks (告警推送) ---------------------------------------------------------------------


def webhook_public(w: Webhook) -> dict[str, Any]:
    """A webhook without its secret (shown once, when it is made)."""
    return {"id": w.id, "department_id": w.department_id, "url": w.url, "events": list(w.events),
            "enabled": w.enabled, "created_by": w.created_by, "created_at": iso(w.created_at)}


def department_of(session: Session, actor: Actor, code: str | None) -> Department:
    """The department named by `code`, or the actor's own."""
    if not actor.authenticated:
        raise Unauthorized()
    if code is None:
        if actor.department_id is None:
            raise Invalid("department", "required / 必填")
        dept = session.get(Department, actor.department_id)
    else:
        dept = session.scalar(select(Department).where(Department.code == code))
    if dept is None:
        raise Invalid("department", "no such department / 部门不存在")
    return dept


def _dept_target(dept: Department, kind: str, obj: object = None) -> Target:
    return Target(kind=kind, id=obj, department_id=dept.id, department_path=dept.path)


def webhook_create(session: Session, actor: Actor, url: str, events_: Iterable[str] | None = None,
                   secret: str | None = None, department: str | None = None) -> tuple[Webhook, str]:
    """Register where a department's alerts are pushed; returns the webhook and its secret."""
    dept = department_of(session, actor, department)
    access.require(actor, "sensing.rule.write", _dept_target(dept, "sensing.webhook"), session)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url", "an http(s) URL is required / 需要 http(s) 地址")
    chosen = list(dict.fromkeys(events_ if events_ is not None else WEBHOOK_EVENTS))
    for i, name in enumerate(chosen):
        if name not in WEBHOOK_EVENTS:
            raise Invalid(f"events[{i}]", f"one of {', '.join(WEBHOOK_EVENTS)} / 事件名无效")
    if not chosen:
        raise Invalid("events", "at least one event / 至少一个事件")
    if secret is not None and len(secret) < 16:
        raise Invalid("secret", "at least 16 characters / 至少 16 个字符")
    secret = secret or secrets.token_urlsafe(32)
    w = Webhook(department_id=dept.id, url=url, secret=secret, events=chosen, enabled=True,
                created_by=actor.name)
    session.add(w)
    session.flush()
    audit.append(session, actor=actor.name, department=actor.department_code, action="sensing.webhook.create",
                 object_type="sensing.webhook", object_id=w.id, detail={"url": url, "events": chosen})
    return w, secret


def webhook_list(session: Session, actor: Actor) -> list[Webhook]:
    """Webhooks of the departments where `actor` may write rules."""
    rows = session.execute(select(Webhook, Department).order_by(Webhook.id)
                           .join(Department, Department.id == Webhook.department_id)).all()
    return [w for w, d in rows
            if access.decide(actor, "sensing.rule.write", _dept_target(d, "sensing.webhook", w.id)).allowed]


def webhook_delete(session: Session, actor: Actor, webhook_id: int) -> None:
    """Remove a webhook; its undelivered outbox rows go with it."""
    w = session.get(Webhook, webhook_id)
    if w is None:
        raise NotFound("webhook / 推送地址", webhook_id)
    dept = session.get(Department, w.department_id)
    assert dept is not None
    access.require(actor, "sensing.rule.write", _dept_target(dept, "sensing.webhook", w.id), session)
    audit.append(session, actor=actor.name, department=actor.department_code, action="sensing.webhook.delete",
                 object_type="sensing.webhook", object_id=w.id, detail={"url": w.url})
    session.delete(w)


def _enqueue_deliveries(session: Session, a: Alert, public: str, body: dict[str, Any]) -> None:
    """One outbox row per enabled webhook of the alert's department (or the rule's) that wants it."""
    rule_dept = a.rule.department_id if a.rule is not None else a.department_id
    hooks = session.scalars(select(Webhook).where(
        Webhook.enabled.is_(True), Webhook.department_id.in_({a.department_id, rule_dept}))).all()
    payload = orjson.dumps({"event": public, "alert": body}).decode()
    added = False
    for w in hooks:
        if public in (w.events or ()):
            session.add(WebhookDelivery(webhook_id=w.id, event=public, payload=payload, status="pending",
                                        attempts=0, next_attempt_at=utcnow()))
            added = True
    if added:
        session.info[_OUTBOX] = True


def signature(secret: str, body: bytes) -> str:
    """The X-CityOS-Signature header: sha256=<hex HMAC-SHA256 of the body with the shared secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


BACKOFF = (5.0, 25.0, 120.0, 600.0, 3600.0)  # seconds before attempts 2..6
MAX_ATTEMPTS = 6


class Sender:
    """Delivers the webhook outbox (推送发送): due pending rows are claimed (a lease on
    next_attempt_at, so two senders never post the same row at once), POSTed, and marked
    delivered, or retried with backoff, or failed after `max_attempts`. All its state is in the
    table, so a restart resumes where it stopped."""

    def __init__(self, engine: Engine, *, backoff: Sequence[float] = BACKOFF,
                 max_attempts: int = MAX_ATTEMPTS, timeout: float = 5.0, poll_seconds: float = 2.0,
                 lease_seconds: float = 60.0, batch: int = 20) -> None:
        self.engine, self.backoff, self.max_attempts = engine, tuple(backoff), max_attempts
        self.timeout, self.poll_seconds = timeout, poll_seconds
        self.lease_seconds, self.batch = lease_seconds, batch
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the delivery thread; commits that add outbox rows wake it."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        _wakers.add(self._wake)
        self._thread = threading.Thread(target=self._run, name="cityos-webhook-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop after the delivery in flight; pending rows stay in the table."""
        self._stopping = True
        self._wake.set()
        _wakers.discard(self._wake)
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while not self._stopping:
                try:
                    sent = self.run_once(client)
                except Exception:
                    log.exception("webhook sender round failed")
                    sent = 0
                if not sent:
                    self._wake.wait(self.poll_seconds)
                    self._wake.clear()

    def run_once(self, client: httpx.Client | None = None) -> int:
        """Attempt every due delivery once (up to `batch`); return how many were attempted."""
        now = utcnow()
        with Session(self.engine) as session:
            due = session.execute(select(WebhookDelivery.id, WebhookDelivery.attempts)
                                  .where(WebhookDelivery.status == "pending",
                                         WebhookDelivery.next_attempt_at <= now)
                                  .order_by(WebhookDelivery.next_attempt_at).limit(self.batch)).all()
        own = client or httpx.Client(timeout=self.timeout, follow_redirects=False)
        try:
            return sum(self._attempt(own, i, n) for i, n in due)
        finally:
            if client is None:
                own.close()

    def _attempt(self, client: httpx.Client, delivery_id: int, attempts: int) -> int:
        table = WebhookDelivery.__table__
        with Session(self.engine) as session, session.begin():
            claimed = session.execute(
                update(table).where(table.c.id == delivery_id, table.c.status == "pending",
                                    table.c.attempts == attempts, table.c.next_attempt_at <= utcnow())
                .values(next_attempt_at=utcnow() + dt.timedelta(seconds=self.lease_seconds)))
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return 0
            row = session.execute(select(WebhookDelivery, Webhook)
                                  .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                                  .where(WebhookDelivery.id == delivery_id)).first()
            if row is None:
                return 0
            d, w = row
            url, secret, enabled, hook = w.url, w.secret, w.enabled, w.id
            body, name = d.payload.encode(), d.event
        error: str | None = None
        if not enabled:
            error = "webhook disabled / 推送已停用"
        else:
            try:
                r = client.post(url, content=body, headers={
                    "Content-Type": "application/json", "X-CityOS-Event": name,
                    "X-CityOS-Delivery": str(delivery_id), "X-CityOS-Signature": signature(secret, body)})
                if not 200 <= r.status_code < 300:
                    error = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        done = attempts + 1
        values: dict[str, Any] = {"attempts": done, "last_error": error}
        if error is None:
            values.update(status="delivered", delivered_at=utcnow())
        elif done >= self.max_attempts or not enabled:
            values.update(status="failed")
            log.warning("webhook delivery %s to webhook %s failed for good: %s", delivery_id, hook, error)
        else:
            wait = self.backoff[min(done - 1, len(self.backoff) - 1)]
            values.update(next_attempt_at=utcnow() + dt.timedelta(seconds=wait))
        with Session(self.engine) as session, session.begin():
            session.execute(update(table).where(table.c.id == delivery_id).values(**values))
        return 1
