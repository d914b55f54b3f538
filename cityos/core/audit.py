"""Audit log (审计日志): append-only and hash-chained, so an edit made in the database shows.

Each record's hash covers its fields and the previous record's hash. The single `audit_head`
row is updated by every append, which makes concurrent appenders take turns on SQLite and
PostgreSQL alike, and lets `verify` notice records cut from the tail.

`append` writes inside the caller's transaction. A request that writes nothing but its record
(an audited read) uses `GroupWriter` instead: one thread commits the records of concurrent
requests together, one head bump and one commit for many, and each caller returns only once its
own record is committed.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from cityos.core.crypto import HASH_ALGO, digest
from cityos.core.db import utcnow
from cityos.core.models import AuditHead, AuditRecord

GENESIS = "0" * 64
OUTCOMES = ("success", "denied", "failure")

# 18-character ID numbers and 11-digit mobile numbers are masked wherever they hide in a detail.
_ID_RE = re.compile(r"(?<!\d)(\d{6})\d{8}(\d{3}[\dXx])(?![\dXx])")
_PHONE_RE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")
_SECRET_KEYS = ("password", "secret", "token", "key", "id_number", "phone")


def scrub(value: Any) -> Any:
    """Remove secrets and mask ID/phone numbers before anything is written to the log."""
    if isinstance(value, dict):
        return {
            k: ("[redacted]" if any(s in k.lower() for s in _SECRET_KEYS) else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return _PHONE_RE.sub(r"\1****\2", _ID_RE.sub(r"\1********\2", value))
    return value


def _canonical(rec: AuditRecord | dict[str, Any]) -> bytes:
    get = rec.get if isinstance(rec, dict) else lambda k: getattr(rec, k)
    at = get("at")
    assert isinstance(at, dt.datetime)
    body = {
        "seq": get("seq"),
        "at": at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": get("actor"),
        "department": get("department"),
        "action": get("action"),
        "object_type": get("object_type"),
        "object_id": get("object_id"),
        "purpose": get("purpose"),
        "outcome": get("outcome"),
        "detail": get("detail"),
        "algo": get("algo"),
        "prev_hash": get("prev_hash"),
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def record_hash(rec: AuditRecord | dict[str, Any]) -> str:
    algo = rec["algo"] if isinstance(rec, dict) else rec.algo
    return digest(_canonical(rec), algo)


# Plain Core statements on the tables (not the ORM entities), run on the session's connection:
# no ORM bookkeeping on a path every audited read takes.
_HEAD = AuditHead.__table__
_BUMP_HEAD = (
    update(_HEAD).where(_HEAD.c.id == 1).values(seq=_HEAD.c.seq + bindparam("n"))
    .returning(_HEAD.c.seq, _HEAD.c.hash)
)
_SET_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(hash=bindparam("hash"))
_INSERT = insert(AuditRecord.__table__)
# With RETURNING, SQLAlchemy sends a batch as multi-row INSERTs built from one cached compiled
# statement ("insertmanyvalues"): one statement, not a GIL turn per row as the driver's
# executemany, nor a new compile per batch as insert().values(list).
_INSERT_BATCH = insert(AuditRecord.__table__).returning(AuditRecord.__table__.c.seq)


def _fields(
    *, actor: str, action: str, department: str | None = None, object_type: str | None = None,
    object_id: object = None, purpose: str | None = None, outcome: str = "success",
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A record's own fields, scrubbed; the chain fields (seq, at, prev_hash, hash) come later."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    fields: dict[str, Any] = {
        "actor": actor,
        "department": department,
        "action": action,
        "object_type": object_type,
        "object_id": None if object_id is None else str(object_id),
        "purpose": scrub(purpose) if purpose else None,
        "outcome": outcome,
        # Round-trip the detail through JSON now, so what we hash is exactly what the column returns.
        "detail": orjson.loads(orjson.dumps(scrub(detail))) if detail else None,
        "algo": HASH_ALGO,
    }
    return fields


def _chain(records: list[dict[str, Any]], last_seq: int, prev: str) -> str:
    """Give `records` the seqs up to `last_seq` after `prev`, the time and their hashes; return the
    last hash (the new head)."""
    at = utcnow()
    seq = last_seq - len(records)
    for fields in records:
        seq += 1
        fields.update(seq=seq, at=at, prev_hash=prev)
        prev = fields["hash"] = record_hash(fields)
    return prev


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    department: str | None = None,
    object_type: str | None = None,
    object_id: object = None,
    purpose: str | None = None,
    outcome: str = "success",
    detail: dict[str, Any] | None = None,
) -> str:
    """Add one record to the chain inside the caller's transaction (it commits or rolls back
    with the write it describes); return its hash."""
    fields = _fields(actor=actor, action=action, department=department, object_type=object_type,
                     object_id=object_id, purpose=purpose, outcome=outcome, detail=detail)
    # Bumping the head row takes its row lock (PostgreSQL) or the write lock (SQLite): appenders
    # queue here, so no two records ever claim the same predecessor.
    conn = session.connection()
    row = conn.execute(_BUMP_HEAD, {"n": 1}).one()
    head = _chain([fields], int(row[0]), str(row[1]))
    # Core statements, not ORM objects: this runs on every write and audited read.
    conn.execute(_INSERT, fields)
    conn.execute(_SET_HEAD, {"hash": head})
    return head


class GroupWriter:
    """Group commit (组提交) of audit records that no other write waits on (audited reads).

    Appended one transaction each, concurrent reads queue on the head row's lock, each holding it
    through its own commit. Here callers queue their records instead; one thread takes everything
    queued, writes it in one transaction (one head bump, one commit) and only then releases each
    caller with its record's hash. Nothing waits for a batch to fill: while one commits, the next
    gathers. The thread starts on first use and ends when idle.
    """

    def __init__(self, engine: Engine, max_batch: int = 500, idle_seconds: float = 2.0) -> None:
        self.engine, self.max_batch, self.idle_seconds = engine, max_batch, idle_seconds
        self.batches = 0  # committed so far (the tests and the benchmark read it)
        self._queue: deque[tuple[dict[str, Any], Future[str]]] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._conn: Connection | None = None

    def append(
        self, *, actor: str, action: str, department: str | None = None, object_type: str | None = None,
        object_id: object = None, purpose: str | None = None, outcome: str = "success",
        detail: dict[str, Any] | None = None,
    ) -> str:
        """Add one record in its own transaction; return its hash once it is committed. The caller
        must hold no write of its own that the writer would wait for (the head row, SQLite's lock)."""
        return self.submit(actor=actor, action=action, department=department, object_type=object_type,
                           object_id=object_id, purpose=purpose, outcome=outcome, detail=detail).result()

    def submit(
        self, *, actor: str, action: str, department: str | None = None, object_type: str | None = None,
        object_id: object = None, purpose: str | None = None, outcome: str = "success",
        detail: dict[str, Any] | None = None,
    ) -> Future[str]:
        """Queue one record; the future gives its hash once committed (or the writer's error). An
        async caller awaits it on the event loop instead of holding a worker thread meanwhile."""
        fields = _fields(actor=actor, action=action, department=department, object_type=object_type,
                         object_id=object_id, purpose=purpose, outcome=outcome, detail=detail)
        done: Future[str] = Future()
        with self._cond:
            self._queue.append((fields, done))
            if self._running:
                self._cond.notify()
            else:
                self._running = True
                threading.Thread(target=self._run, name="cityos-audit-writer", daemon=True).start()
        return done

    def _run(self) -> None:
        try:
            while self._write_next():
                pass
        except BaseException:  # the thread itself dies: fail whoever waits rather than hang them
            self._close()
            with self._cond:
                self._running = False
                for _, done in self._queue:
                    done.set_exception(RuntimeError("the audit writer stopped"))
                self._queue.clear()
            raise

    def _write_next(self) -> bool:
        """Commit everything queued (up to max_batch); false once idle, with the thread ending."""
        with self._cond:
            if not self._queue:
                self._cond.wait(self.idle_seconds)
            if not self._queue:
                self._running = False  # under the lock: the next append starts a new thread
                self._close()
                return False
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
        try:
            self._write([fields for fields, _ in batch])
        except BaseException as exc:  # the batch's callers fail (503/500); nothing was acknowledged
            for _, done in batch:
                done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for fields, done in batch:
                done.set_result(fields["hash"])
        return True

    def _write(self, records: list[dict[str, Any]]) -> None:
        # The thread keeps one connection while busy: waiting callers may hold every other one.
        if self._conn is None:
            self._conn = self.engine.connect()
        try:
            with self._conn.begin():
                row = self._conn.execute(_BUMP_HEAD, {"n": len(records)}).one()
                head = _chain(records, int(row[0]), str(row[1]))
                self._conn.execute(_INSERT_BATCH, records).all()
                self._conn.execute(_SET_HEAD, {"hash": head})
        except BaseException:
            self._close()
            raise
        self.batches += 1

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


_WRITERS: weakref.WeakKeyDictionary[Engine, GroupWriter] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def group_writer(engine: Engine) -> GroupWriter:
    """The one group writer of this engine (of this process)."""
    with _WRITERS_LOCK:
        writer = _WRITERS.get(engine)
        if writer is None:
            writer = _WRITERS[engine] = GroupWriter(engine)
        return writer


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    first_bad_id: int | None = None
    reason: str = ""

    def message(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} records / 审计链完整：{self.checked} 条"
        return (
            f"audit chain broken at record seq={self.first_bad_seq} (id={self.first_bad_id}): "
            f"{self.reason} / 审计链在第 {self.first_bad_seq} 条处断裂"
        )


def _walk(session: Session, batch: int = 5000) -> Iterator[AuditRecord]:
    last_id = -1
    while True:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.id > last_id).order_by(AuditRecord.id).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id
        session.expunge_all()


def verify(session: Session) -> VerifyResult:
    """Walk the chain in storage order; name the first record edited, deleted or reordered."""
    prev_hash, expected_seq, count = GENESIS, 1, 0
    for rec in _walk(session):
        count += 1
        if rec.seq != expected_seq:
            what = "missing records before it (deleted)" if rec.seq > expected_seq else "reordered"
            return VerifyResult(False, count, rec.seq, rec.id, f"expected seq {expected_seq}: {what}")
        if rec.prev_hash != prev_hash:
            return VerifyResult(
                False, count, rec.seq, rec.id, "previous-hash link broken (deleted or reordered)"
            )
        if record_hash(rec) != rec.hash:
            return VerifyResult(False, count, rec.seq, rec.id, "content changed (edited)")
        prev_hash, expected_seq = rec.hash, expected_seq + 1
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != expected_seq - 1 or head.hash != prev_hash):
        return VerifyResult(
            False,
            count,
            expected_seq,
            None,
            f"chain ends at seq {expected_seq - 1} but head says {head.seq}: tail deleted",
        )
    return VerifyResult(True, count)


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)
