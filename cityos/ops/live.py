"""The big screen's live state (大屏实时数据): one snapshot builder for the whole process and a
broadcaster that fans its changes out to every open screen.

Every `TICK` seconds the builder reads the city once — indicators by theme, open warnings, active
incidents, unresolved sensing alerts — in a worker thread with its own short session, compares the
result with the previous snapshot tile by tile and, when something changed, encodes ONE `patch`
event (orjson) that every subscriber receives as the same bytes. Fifty screens cost one query
round a tick, not fifty. A subscriber that falls behind (its bounded queue is full) loses its
backlog and gets a full `snapshot` event instead, so one slow screen never holds up the others.

Each tile is built on its own: a tile whose query fails carries `{"error": ...}` and the other
tiles, and the loop, carry on. The loop starts with the first subscriber and stops when the last
one leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from cityos.ops.models import EarlyWarning, Incident, Indicator, IndicatorValue

log = logging.getLogger("cityos.ops.live")
CITY_TZ = ZoneInfo("Asia/Shanghai")
TICK = 0.5  # seconds between two snapshot builds while someone watches
QUEUE_SIZE = 16  # events a subscriber may have waiting before it is resynchronised
SPARK = 30  # recent values kept per indicator for its sparkline
INDICATOR_THEMES = ("environment", "traffic", "hotline", "alerts", "sharing", "incidents", "city")
# Where each tile drills down to (下钻).
LINKS = {
    "environment": "/console/sensing", "traffic": "/console/sensing", "hotline": "/console/cases/kpi",
    "alerts": "/console/sensing", "sharing": "/console/hub", "incidents": "/ops/incidents",
    "warnings": "/ops/incidents", "city": "/ops/plan",
}
TITLES = {
    "environment": ("生态环境", "Environment"), "traffic": ("交通运行", "Traffic"),
    "hotline": ("12345热线", "12345 Hotline"), "alerts": ("感知告警", "Sensing alerts"),
    "sharing": ("数据共享开放", "Data sharing"), "incidents": ("突发事件", "Incidents"),
    "warnings": ("预警信息", "Early warnings"), "city": ("城市运行", "City"),
}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _indicator_dict(ind: Indicator) -> dict[str, Any]:
    """The indicator as the screen shows it: the indicators module's public form when it is
    there, else the stored columns."""
    try:
        from cityos.ops.indicators import indicator_public
    except ImportError:
        indicator_public = None
    if indicator_public is not None:
        out = dict(indicator_public(ind))
    else:
        out = {"code": ind.code, "name": ind.name, "name_en": ind.name_en, "unit": ind.unit,
               "theme": ind.theme, "department": ind.department.code if ind.department else None,
               "value": ind.value, "level": ind.level, "computed_at": _iso(ind.computed_at),
               "error": ind.error, "forecast": ind.forecast, "thresholds": ind.thresholds}
    keep = ("code", "name", "name_en", "unit", "theme", "value", "level", "computed_at", "error",
            "forecast", "thresholds")
    return {k: out.get(k) for k in keep} | {"district_code": ind.district_code}


def _warning_dict(w: EarlyWarning) -> dict[str, Any]:
    return {"id": w.id, "level": w.level, "title": w.title, "raised_at": _iso(w.raised_at),
            "incident_id": w.incident_id, "case_number": w.case_number}


def _incident_dict(inc: Incident) -> dict[str, Any]:
    return {"number": inc.number, "title": inc.title, "level": inc.level,
            "type": inc.type.code if inc.type else None,
            "type_name": inc.type.name if inc.type else None,
            "type_name_en": inc.type.name_en if inc.type else None,
            "lon": inc.lon, "lat": inc.lat, "district_code": inc.district_code,
            "opened_at": _iso(inc.opened_at), "url": f"/ops/incidents/{inc.number}"}


# -- the tiles --------------------------------------------------------------------------------


@dataclass
class Builder:
    """Builds the screen snapshot; keeps each indicator's recent values for its sparkline."""

    sparks: dict[str, deque[float]] = field(default_factory=dict)
    last_at: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    extra: dict[str, Callable[[Session], dict[str, Any]]] = field(default_factory=dict)

    def _spark(self, session: Session, ind: Indicator, item: dict[str, Any]) -> list[float]:
        spark = self.sparks.get(ind.code)
        if spark is None:  # first sight: the stored history
            rows = session.execute(select(IndicatorValue.value).where(IndicatorValue.indicator_id == ind.id)
                                   .order_by(IndicatorValue.at.desc()).limit(SPARK)).scalars().all()
            spark = self.sparks[ind.code] = deque(reversed([float(v) for v in rows]), maxlen=SPARK)
            if not spark and item.get("value") is not None:
                spark.append(float(item["value"]))
            self.last_at[ind.code] = (item.get("computed_at"), item.get("value"))
        elif (item.get("computed_at"), item.get("value")) != self.last_at.get(ind.code):
            self.last_at[ind.code] = (item.get("computed_at"), item.get("value"))
            if item.get("value") is not None:
                spark.append(float(item["value"]))
        return [round(v, 4) for v in spark]

    def indicators(self, session: Session) -> dict[str, dict[str, Any]]:
        rows = session.execute(select(Indicator).where(Indicator.active.is_(True))
                               .order_by(Indicator.theme, Indicator.code)).scalars().all()
        tiles: dict[str, dict[str, Any]] = {}
        for ind in rows:
            try:
                item = _indicator_dict(ind)
                item["spark"] = self._spark(session, ind, item)
            except Exception as exc:  # one indicator's trouble stays on its own card
                log.warning("indicator %s could not be shown: %s", ind.code, exc)
                item = {"code": ind.code, "name": ind.name, "name_en": ind.name_en, "unit": ind.unit,
                        "value": None, "level": None, "error": f"no data: {exc}"[:300], "spark": []}
            theme = ind.theme if ind.theme in INDICATOR_THEMES else "city"
            tiles.setdefault(theme, {"indicators": []})["indicators"].append(item)
        return tiles

    def build(self, sessions: sessionmaker[Session]) -> dict[str, Any]:
        """The whole snapshot; every part in its own try so one failure stays one tile's error."""
        tiles: dict[str, dict[str, Any]] = {t: {"indicators": []} for t in INDICATOR_THEMES}
        with sessions() as session:
            parts: list[tuple[str | None, Callable[[Session], Any]]] = [
                (None, self.indicators), ("alerts", _alerts), ("warnings", _warnings),
                ("incidents", _incidents),
            ] + [(name, fn) for name, fn in self.extra.items()]
            for name, fn in parts:
                try:
                    got = fn(session)
                    if name is None:
                        for theme, tile in got.items():
                            tiles[theme] = tile
                    else:
                        tiles[name] = {**tiles.get(name, {}), **got}
                except Exception as exc:
                    session.rollback()
                    log.warning("screen tile %s failed: %s", name or "indicators", exc)
                    reason = f"no data: {type(exc).__name__}: {exc}"[:300]
                    if name is None:
                        for theme in INDICATOR_THEMES:
                            tiles[theme] = {"indicators": [], "error": reason}
                    else:
                        tiles[name] = {**tiles.get(name, {}), "error": reason}
        for name, tile in tiles.items():
            tile.setdefault("error", None)
            tile["link"] = LINKS.get(name, "/ops/screen")
        now = dt.datetime.now(CITY_TZ)
        return {"clock": now.strftime("%Y-%m-%d %H:%M:%S"), "tiles": tiles}


def _alerts(session: Session) -> dict[str, Any]:
    from cityos.sensing.service import alert_counts

    return {"counts": alert_counts(session)}


def _warnings(session: Session) -> dict[str, Any]:
    rows = session.execute(select(EarlyWarning).where(EarlyWarning.state == "open")
                           .order_by(EarlyWarning.raised_at.desc()).limit(50)).scalars().all()
    return {"items": [_warning_dict(w) for w in rows]}


def _incidents(session: Session) -> dict[str, Any]:
    rows = session.execute(select(Incident).where(Incident.status == "active")
                           .order_by(Incident.opened_at.desc()).limit(100)).scalars().all()
    return {"items": [_incident_dict(i) for i in rows]}


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """What changed, tile by tile ({"clock": ..., "tiles": {name: tile}}); {} when nothing did."""
    if old is None:
        return dict(new)
    out: dict[str, Any] = {}
    changed = {k: v for k, v in new["tiles"].items() if old["tiles"].get(k) != v}
    if changed:
        out["tiles"] = changed
    if old.get("clock") != new.get("clock"):
        out["clock"] = new["clock"]
    return out


def sse(name: str, body: dict[str, Any]) -> bytes:
    return f"event: {name}\nid: {body.get('seq', 0)}\ndata: ".encode() + orjson.dumps(body) + b"\n\n"


# -- the broadcaster --------------------------------------------------------------------------


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    resyncs: int = 0


class Screen:
    """One per app: the latest snapshot, its sequence number and the screens watching it."""

    def __init__(self, sessions: sessionmaker[Session], tick: float = TICK) -> None:
        self.sessions = sessions
        self.tick = tick
        self.builder = Builder()
        self.snapshot: dict[str, Any] | None = None
        self.seq = 0
        self.built_at = 0.0
        self.subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._full: tuple[int, bytes] | None = None
        self.builds = 0
        self._lock = threading.Lock()

    # the snapshot ------------------------------------------------------------------------
    def current(self) -> dict[str, Any]:
        return {"seq": self.seq, **(self.snapshot or {})}

    def full_event(self) -> bytes:
        """The `snapshot` event of the current state, encoded once per sequence number."""
        if self._full is None or self._full[0] != self.seq:
            self._full = (self.seq, sse("snapshot", self.current()))
        return self._full[1]

    def refresh(self) -> dict[str, Any] | None:
        """Build once (in the caller's thread); returns the patch body if anything changed."""
        with self._lock:
            new = self.builder.build(self.sessions)
            self.builds += 1
            self.built_at = time.monotonic()
            changes = diff(self.snapshot, new)
            self.snapshot = new
            if not changes:
                return None
            self.seq += 1
            return {"seq": self.seq, **changes}

    async def fresh(self, max_age: float = 2.0) -> dict[str, Any]:
        """The current snapshot, built now if the loop has not built one recently."""
        if self.snapshot is None or time.monotonic() - self.built_at > max_age:
            patch = await run_in_threadpool(self.refresh)
            if patch is not None:
                self.publish(sse("patch", patch))
        return self.current()

    # fan-out -----------------------------------------------------------------------------
    def publish(self, event: bytes) -> None:
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:  # behind: drop its backlog, send the whole state instead
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                sub.resyncs += 1
                sub.queue.put_nowait(self.full_event())

    async def subscribe(self) -> Subscriber:
        await self.fresh()
        sub = Subscriber()
        sub.queue.put_nowait(self.full_event())
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while self.subscribers:
            started = time.monotonic()
            try:
                patch = await run_in_threadpool(self.refresh)
                if patch is not None:
                    self.publish(sse("patch", patch))
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: try again next tick
                log.exception("screen snapshot failed")
            await asyncio.sleep(max(0.05, self.tick - (time.monotonic() - started)))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def screen_of(app: Any, sessions: sessionmaker[Session]) -> Screen:
    """The app's one screen broadcaster, made on first use."""
    screen = getattr(app.state, "ops_screen", None)
    if screen is None:
        screen = app.state.ops_screen = Screen(sessions)
    return screen  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def running(app: Any, sessions: sessionmaker[Session]) -> AsyncIterator[Screen]:
    """Optional lifespan wiring: the broadcaster exists from start-up and stops at shutdown."""
    screen = screen_of(app, sessions)
    try:
        yield screen
    finally:
        await screen.stop()
