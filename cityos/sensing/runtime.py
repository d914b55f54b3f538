"""The running parts of sensing (运行时): the writer, the rules engine, the MQTT bridge, the
webhook sender, kept per app (one set per process) and started on first use or at start-up."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from cityos.sensing.ingest import Writer

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


def runtime_of(platform: Any) -> Runtime:
    """The sensing runtime of a `core.web.Platform`, made on first use."""
    rt = getattr(platform, "sensing", None)
    if rt is not None:
        return rt  # type: ignore[no-any-return]
    with _lock:
        rt = getattr(platform, "sensing", None)
        if rt is None:
            settings = platform.settings
            rt = Runtime(Writer(platform.engine, max_pending=settings.sensing_max_pending,
                                sqlite_cache_mb=settings.sensing_sqlite_cache_mb))
            rt.writer.start()
            platform.sensing = rt
    return rt
