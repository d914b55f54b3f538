"""The big screen's API (大屏接口) at /api/ops: the whole snapshot, and its changes as Server-Sent
Events. Both need `ops.read` (every member of staff), by bearer token or the console cookie."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from cityos.core.web import ActorDep, SessionDep, SignedInDep, platform_of
from cityos.ops import live
from cityos.ops.service import require_read

router = APIRouter(prefix="/api/ops", tags=["ops"])
HEARTBEAT_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing an idle stream


def screen(request: Request) -> live.Screen:
    return live.screen_of(request.app, platform_of(request).sessions)


@router.get("/screen", summary="The big screen's current state (大屏快照)")
async def screen_get(request: Request, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    """Tiles by theme (environment, traffic, hotline, alerts, sharing, incidents, warnings...),
    each with its indicators or items, its drill-down link and an error when it has no data."""

    def check() -> None:
        try:
            require_read(session, actor)
        finally:
            session.close()

    await run_in_threadpool(check)
    return await screen(request).fresh()


async def _events(request: Request, scr: live.Screen, sub: live.Subscriber) -> AsyncIterator[bytes]:
    try:
        yield b": connected\n\n"
        while True:
            try:
                event = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield b": heartbeat\n\n"
                continue
            yield event
    finally:
        scr.unsubscribe(sub)


@router.get("/stream", summary="The big screen's changes as Server-Sent Events (大屏实时推送)",
            response_class=StreamingResponse)
async def screen_stream(request: Request, session: SessionDep, actor: ActorDep) -> StreamingResponse:
    """First a `snapshot` event (the whole state, as GET /api/ops/screen), then `patch` events
    carrying only the tiles that changed (`{"seq", "clock"?, "tiles"?}`), and a heartbeat comment
    every 15 s. A client that falls behind gets a fresh `snapshot` instead of its backlog."""

    def check() -> None:
        try:
            require_read(session, actor)
        finally:
            session.close()  # a stream may stay open for hours: hold no database connection

    await run_in_threadpool(check)
    scr = screen(request)
    sub = await scr.subscribe()
    return StreamingResponse(_events(request, scr, sub), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
