"""Rules, groups, alerts and webhooks of sensing (告警规则与告警) at /api/sensing; thin over
`rules` and `alerts`. `/alerts/stream` is a Server-Sent Events stream of alert changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from cityos.core import access
from cityos.core.access import Target
from cityos.core.service import MAX_OFFSET
from cityos.core.web import ActorDep, SessionDep, SignedInDep, platform_of
from cityos.sensing import alerts, rules
from cityos.sensing.runtime import runtime_of
from cityos.sensing.service import readable_departments

router = APIRouter(prefix="/api/sensing", tags=["sensing"])
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Severity = Literal["info", "warning", "critical"]
TargetType = Literal["property", "thing", "group", "datastream"]
EventName = Literal["alert.opened", "alert.acknowledged", "alert.resolved"]
HEARTBEAT_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing an idle stream


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleIn(_In):
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(description="threshold|rate|nodata|flatline|range|geofence|combo")
    target_type: TargetType
    target_id: int
    params: dict[str, Any] = Field(default_factory=dict)
    severity: Severity = "warning"
    enabled: bool = True
    department: str | None = Field(None, description="department code; default: your own")


class RulePatch(_In):
    name: str | None = Field(None, min_length=1, max_length=200)
    kind: str | None = None
    target_type: TargetType | None = None
    target_id: int | None = None
    params: dict[str, Any] | None = None
    severity: Severity | None = None
    enabled: bool | None = None


class GroupIn(_In):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    department: str | None = None
    things: list[int] = Field(default_factory=list)


class ThingsIn(_In):
    things: list[int]


class NoteIn(_In):
    note: str | None = Field(None, max_length=2000)


class WebhookIn(_In):
    url: str = Field(max_length=500)
    events: list[EventName] | None = None
    secret: str | None = Field(None, min_length=16, max_length=128)
    department: str | None = None


def _reload(request: Request) -> None:
    """Tell the running engine that rules or groups changed."""
    engine = runtime_of(platform_of(request)).parts.get("rules")
    if engine is not None:
        engine.reload()


@router.get("/rules", summary="Alert rules you may read (告警规则)")
def rules_list(session: SessionDep, actor: ActorDep, limit: Limit = 100,
               offset: Offset = 0) -> dict[str, Any]:
    items, total = rules.rule_list(session, actor, limit, offset)
    return _page([rules.rule_public(r) for r in items], total, limit, offset)


def _page(items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.post("/rules", status_code=201, summary="Create an alert rule (新建告警规则)")
def rules_create(body: RuleIn, request: Request, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    r = rules.rule_create(session, actor, body.model_dump())
    session.commit()
    _reload(request)
    return rules.rule_public(r)


@router.get("/rules/{rule_id}", summary="An alert rule")
def rules_get(rule_id: int, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return rules.rule_public(rules.rule_get(session, actor, rule_id))


@router.patch("/rules/{rule_id}", summary="Change an alert rule")
def rules_update(rule_id: int, body: RulePatch, request: Request, session: SessionDep,
                 actor: SignedInDep) -> dict[str, Any]:
    r = rules.rule_update(session, actor, rule_id, body.model_dump(exclude_unset=True))
    session.commit()
    _reload(request)
    return rules.rule_public(r)


@router.delete("/rules/{rule_id}", status_code=204, summary="Delete an alert rule and its alerts")
def rules_delete(rule_id: int, request: Request, session: SessionDep, actor: SignedInDep) -> Response:
    rules.rule_delete(session, actor, rule_id)
    session.commit()
    _reload(request)
    return Response(status_code=204)


@router.get("/groups", summary="Groups of things (设备分组)")
def groups_list(session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return {"items": [rules.group_public(g) for g in rules.group_list(session, actor)]}


@router.post("/groups", status_code=201, summary="Create a group of things")
def groups_create(body: GroupIn, request: Request, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    g = rules.group_create(session, actor, body.code, body.name, body.department, body.things)
    session.commit()
    _reload(request)
    return rules.group_public(g)


@router.put("/groups/{group_id}/things", summary="Replace a group's things")
def groups_things(group_id: int, body: ThingsIn, request: Request, session: SessionDep,
                  actor: SignedInDep) -> dict[str, Any]:
    g = rules.group_set_things(session, actor, group_id, body.things)
    session.commit()
    _reload(request)
    return rules.group_public(g)


@router.get("/alerts", summary="Alerts you may read, newest first (告警)")
def alerts_list(session: SessionDep, actor: ActorDep, state: str | None = None, severity: str | None = None,
                thing: int | None = None, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    items, total = alerts.alert_list(session, actor, state=state, severity=severity, thing=thing,
                                     limit=limit, offset=offset)
    return _page([alerts.alert_public(a) for a in items], total, limit, offset)


def _sse(name: str, body: dict[str, Any]) -> bytes:
    head = f"event: {name}\nid: {body['id']}\ndata: ".encode()
    return head + orjson.dumps(body) + b"\n\n"


async def _stream(request: Request, sub: Any) -> AsyncIterator[bytes]:
    try:
        yield b": connected\n\n"
        while True:
            try:
                name, body = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield b": heartbeat\n\n"
                continue
            yield _sse(name, body)
    finally:
        alerts.hub.unsubscribe(sub)


@router.get("/alerts/stream", summary="Live alert changes as Server-Sent Events (实时告警)",
            response_class=StreamingResponse)
async def alerts_stream(request: Request, session: SessionDep, actor: ActorDep) -> StreamingResponse:
    """Events alert.opened / alert.acknowledged / alert.resolved (data: the alert as JSON), only
    for alerts you may read, with a heartbeat comment every 15 s."""
    own = Target(kind="sensing.alert", department_id=actor.department_id,
                 department_path=actor.department_path)
    access.require(actor, "sensing.read", own)

    def departments() -> list[int] | None:
        try:
            return readable_departments(session, actor)
        finally:
            session.close()  # a stream may stay open for hours: hold no database connection

    sub = alerts.hub.subscribe(await run_in_threadpool(departments))
    return StreamingResponse(_stream(request, sub), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/alerts/{alert_id}", summary="An alert")
def alerts_get(alert_id: int, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return alerts.alert_public(alerts.alert_get(session, actor, alert_id))


@router.post("/alerts/{alert_id}/acknowledge", summary="Acknowledge an open alert (确认告警)")
def alerts_acknowledge(alert_id: int, session: SessionDep, actor: SignedInDep,
                       body: NoteIn | None = None) -> dict[str, Any]:
    a = alerts.alert_acknowledge(session, actor, alert_id, body.note if body else None)
    session.commit()
    return alerts.alert_public(a)


@router.post("/alerts/{alert_id}/resolve", summary="Resolve an alert (解除告警)")
def alerts_resolve(alert_id: int, session: SessionDep, actor: SignedInDep,
                   body: NoteIn | None = None) -> dict[str, Any]:
    a = alerts.alert_resolve(session, actor, alert_id, body.note if body else None)
    session.commit()
    return alerts.alert_public(a)


@router.get("/webhooks", summary="Webhooks of departments whose rules you may write (告警推送)")
def webhooks_list(session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return {"items": [alerts.webhook_public(w) for w in alerts.webhook_list(session, actor)]}


@router.post("/webhooks", status_code=201, summary="Register a webhook; its secret is shown only now")
def webhooks_create(body: WebhookIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    w, secret = alerts.webhook_create(session, actor, body.url, body.events, body.secret, body.department)
    session.commit()
    return alerts.webhook_public(w) | {"secret": secret}


@router.delete("/webhooks/{webhook_id}", status_code=204, summary="Delete a webhook")
def webhooks_delete(webhook_id: int, session: SessionDep, actor: SignedInDep) -> Response:
    alerts.webhook_delete(session, actor, webhook_id)
    session.commit()
    return Response(status_code=204)
