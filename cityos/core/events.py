"""Domain events (领域事件): in-process publish/subscribe, so a producer does not know its listeners.

A handler runs synchronously inside the publisher's unit of work (same session, same
transaction): what it writes commits or rolls back with the change that caused it. Handlers
that need slow work should record it and let a job pick it up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cityos.events")

Handler = Callable[..., None]
_HANDLERS: dict[str, list[Handler]] = {}

# Names in use (producer → meaning):
HUB_VERSION_CREATED = "hub.version.created"  # hub: a resource has a new version (session, resource, version)
OPENDATA_PUBLISHED = "opendata.dataset.published"  # opendata: a dataset went public (session, dataset)
SENSING_ALERT_OPENED = "sensing.alert.opened"  # sensing: an alert (re)opened (session, alert, reopened)
SENSING_ALERT_ACKNOWLEDGED = "sensing.alert.acknowledged"  # sensing: someone took it (session, alert)
SENSING_ALERT_RESOLVED = "sensing.alert.resolved"  # sensing: cleared by the rule or a person (session, alert)
CASES_CREATED = "cases.case.created"  # cases: a case was registered (session, case)
CASES_DISPATCHED = "cases.case.dispatched"  # cases: sent to departments (session, case)
CASES_ESCALATED = "cases.case.escalated"  # cases: escalated (督办), by a person or the timer (session, case)
CASES_CLOSED = "cases.case.closed"  # cases: closed, cancelled or merged (session, case)


def subscribe(name: str, handler: Handler) -> None:
    """Call `handler(**payload)` whenever `name` is published; subscribing twice is a no-op."""
    handlers = _HANDLERS.setdefault(name, [])
    if handler not in handlers:
        handlers.append(handler)


def publish(name: str, **payload: Any) -> None:
    """Run every handler of `name` now; a failing handler fails the publisher's transaction."""
    for handler in list(_HANDLERS.get(name, ())):
        handler(**payload)


def handlers(name: str) -> list[Handler]:
    return list(_HANDLERS.get(name, ()))
