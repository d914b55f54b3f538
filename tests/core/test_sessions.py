"""Request sessions: one per request, closed even when the server is saturated."""

from __future__ import annotations

import asyncio

import anyio.to_thread
import httpx
from fastapi import FastAPI, Response
from sqlalchemy import Engine, text

from cityos.core import db, web
from cityos.core.settings import Settings


def test_sessions_close_when_every_route_thread_waits_for_a_connection(settings: Settings,
                                                                        engine: Engine) -> None:
    """More requests than pooled connections, fewer route threads than either, and routes that end
    without committing (their session still holds its connection until closed). If closing took a
    route thread, the closes would queue behind routes waiting for a connection that only a close
    can free: every request would stall until the pool timed out.

    (Not covered: a sync route with a response model validates its answer in a route thread
    while its session is still open; under the same overload that wait can stall the same way.)"""
    small = db.make_engine(settings.database_url, pool_size=3, max_overflow=0, pool_timeout=5)
    router = web.APIRouter()

    @router.get("/probe")
    def probe(session: web.SessionDep) -> Response:  # no commit: the rollback is left to the close
        return Response(str(session.execute(text("SELECT 1")).scalar()))

    app: FastAPI = web.build_app(settings, [router], [], engine=small)

    async def run() -> list[int]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = await asyncio.wait_for(
                asyncio.gather(*(client.get("/probe") for _ in range(12))), timeout=20)
        return [r.status_code for r in answers]

    try:
        assert asyncio.run(run()) == [200] * 12
    finally:
        small.dispose()
