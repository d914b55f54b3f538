"""The deadline clock (时限监控) while the server runs: every minute, tasks due soon are marked,
overdue ones escalated (`steps.sweep`). Several workers may run it at once: the case's revision
counter lets one win and the other's transaction roll back, to be tried again next minute."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from cityos.cases import steps
from cityos.core import db

log = logging.getLogger("cityos.cases")
SWEEP_SECONDS = 60.0


def sweep_once(sessions: sessionmaker[Session]) -> steps.Sweep:
    with db.session_scope(sessions) as session:
        return steps.sweep(session)


@contextlib.asynccontextmanager
async def running(sessions: sessionmaker[Session], every: float = SWEEP_SECONDS) -> AsyncIterator[None]:
    """Sweep every `every` seconds while the app runs."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await run_in_threadpool(sweep_once, sessions)
            except Exception:  # the clock must never take the server down; it runs again next minute
                log.exception("case deadline sweep failed")

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
