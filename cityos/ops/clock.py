"""The indicator clock (指标刷新): refreshes the indicators whose interval has passed, every
`every` seconds, in a worker thread with one session per tick. It publishes nothing: the big
screen reads the Indicator rows. An error is logged and the next tick runs as usual."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from cityos.ops import indicators

log = logging.getLogger("cityos.ops.clock")


def tick(sessions: sessionmaker[Session]) -> int:
    """One pass: refresh what is due and commit; the number refreshed."""
    with sessions() as session:
        try:
            done = indicators.refresh_due(session)
            session.commit()
            return len(done)
        except Exception:
            session.rollback()
            raise


async def _loop(sessions: sessionmaker[Session], every: float) -> None:
    while True:
        try:
            await asyncio.to_thread(tick, sessions)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the clock never stops
            log.exception("indicator refresh failed")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def running(sessions: Any, every: float = 1.0) -> AsyncIterator[None]:
    """Run the clock while the context is open (the app's lifespan); `every` 0 runs nothing."""
    if every <= 0:
        yield
        return
    task = asyncio.create_task(_loop(sessions, every), name="ops-indicator-clock")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
