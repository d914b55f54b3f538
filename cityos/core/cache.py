"""Short-lived caches of what every request looks up (访问缓存): who a token is, a sharing grant,
a resource's read plan. A generation counter keeps them correct.

Any commit that changed a watched table (users, departments, tokens, API keys; engines add theirs,
such as the data hub's grants and resources) bumps this process's generation as it commits. An
entry read under an older generation is a miss, so a sign-out, a deactivated user, a role change
or a revoked key or grant takes effect on the very next request this process serves. A change
made elsewhere (another process, SQL typed by hand) shows once the entry's short life is over.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

K = TypeVar("K")
V = TypeVar("V")

_WATCHED: set[type[Any]] = set()
_CHANGED = "cityos.cache.changed"  # session.info flag: this transaction changed a watched table
_lock = threading.Lock()
_generation = 0


def watch(*entities: type[Any]) -> None:
    """Have committed changes to these ORM classes (rows or bulk updates) invalidate every cache."""
    _WATCHED.update(entities)


def generation() -> int:
    return _generation


def bump() -> None:
    """Invalidate every entry (called after a commit that changed a watched table)."""
    global _generation
    with _lock:
        _generation += 1


def usable(session: Session) -> bool:
    """False while the session holds uncommitted changes to a watched table: its own reads must
    see them, and what it reads must not be kept (it may still roll back)."""
    if session.info.get(_CHANGED):
        return False
    return not any(type(o) in _WATCHED for o in itertools.chain(session.new, session.dirty, session.deleted))


class Cache(Generic[K, V]):
    """A bounded map whose entries die after `ttl` seconds or at the next generation."""

    def __init__(self, ttl: float = 2.0, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._entries: dict[K, tuple[V, int, float]] = {}

    def get(self, key: K) -> V | None:
        hit = self._entries.get(key)
        if hit is None or hit[1] != _generation or time.monotonic() - hit[2] > self.ttl:
            return None
        return hit[0]

    def put(self, key: K, value: V, generation: int) -> None:
        """Keep `value`, read under `generation` (taken *before* the read, so a change committed
        meanwhile makes it a miss)."""
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (value, generation, time.monotonic())

    def clear(self) -> None:
        self._entries.clear()


@event.listens_for(Session, "after_flush")
def _flushed(session: Session, _flush: UOWTransaction) -> None:
    # Still the pre-flush lists here: what this flush wrote.
    if any(type(o) in _WATCHED for o in itertools.chain(session.new, session.dirty, session.deleted)):
        session.info[_CHANGED] = True


@event.listens_for(Session, "do_orm_execute")
def _bulk(state: ORMExecuteState) -> None:
    mapper = state.bind_mapper
    if (state.is_update or state.is_delete) and mapper is not None and mapper.class_ in _WATCHED:
        state.session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        bump()
    # A flag left by a rolled-back transaction only costs a needless bump on a later commit; not
    # clearing it there keeps a rolled-back savepoint from hiding its outer transaction's changes.
