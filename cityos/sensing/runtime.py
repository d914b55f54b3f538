"""The running parts of sensing (运行时): the writer, the rules engine, the MQTT bridge, the
webhook sender and housekeeping, kept per app (one set per process) and started on first use."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cityos.sensing.ingest import Writer, now_ms

log = logging.getLogger("cityos.sensing")
_lock = threading.Lock()


@dataclass
class Runtime:
    writer: Writer
    parts: dict[str, Any] = field(default_factory=dict)  # name -> object with start()/stop()

    def stop(self) -> None:
        for name, part in reversed(list(self.parts.items())):
            try:
                part.stop()
            except Exception:
                log.exception("stopping %s failed", name)
        self.writer.stop()


class Every:
    """Run `job` every `seconds` on a daemon thread (retention, offline checks)."""

    def __init__(self, name: str, seconds: float, job: Callable[[], Any]) -> None:
        self.name, self.seconds, self.job = name, seconds, job
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"cityos-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.job()
            except Exception:
                log.exception("%s failed", self.name)

    def stop(self) -> None:
        self._stop.set()


def _retention(platform: Any) -> Callable[[], None]:
    def job() -> None:
        from cityos.sensing import timeseries

        with platform.sessions() as session:
            timeseries.apply_retention(session, now_ms())
    return job


def build(platform: Any) -> Runtime:
    settings = platform.settings
    rt = Runtime(Writer(platform.engine, max_pending=settings.sensing_max_pending,
                        sqlite_cache_mb=settings.sensing_sqlite_cache_mb))
    rt.writer.start()
    from cityos.sensing import alerts, rules

    rt.parts["rules"] = rules.Engine(platform.engine)
    rt.writer.add_listener(rt.parts["rules"].feed)
    rt.parts["webhooks"] = alerts.Sender(platform.engine)
    rt.parts["retention"] = Every("sensing-retention", 3600, _retention(platform))
    if settings.mqtt_url:
        from cityos.sensing import mqtt

        rt.parts["mqtt"] = mqtt.Bridge(rt.writer, settings.mqtt_url, username=settings.mqtt_username,
                                       password=settings.mqtt_password)
    for part in rt.parts.values():
        part.start()
    return rt


def catch_up(platform: Any) -> int:
    """Roll up readings that were stored but not rolled up when the process last stopped."""
    from cityos.sensing import store

    with platform.engine.begin() as conn:
        done = store.catch_up(conn)
    if done:
        log.warning("rolled up %d readings left over from the last run", done)
    return done


def runtime_of(platform: Any) -> Runtime:
    """The sensing runtime of a `core.web.Platform`, made on first use."""
    rt = getattr(platform, "sensing", None)
    if rt is not None:
        return rt  # type: ignore[no-any-return]
    with _lock:
        rt = getattr(platform, "sensing", None)
        if rt is None:
            rt = build(platform)
            platform.sensing = rt
    return rt
