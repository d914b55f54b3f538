"""Audit log (审计日志): append-only and hash-chained, so an edit made in the database shows.

Each record's hash covers its fields and the previous record's hash. The single `audit_head`
row is updated by every append, which makes concurrent appenders take turns on SQLite and
PostgreSQL alike, and lets `verify` notice records cut from the tail.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, func, insert, select, update
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
    update(_HEAD).where(_HEAD.c.id == 1).values(seq=_HEAD.c.seq + 1).returning(_HEAD.c.seq, _HEAD.c.hash)
)
_SET_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(hash=bindparam("hash"))
_INSERT = insert(AuditRecord.__table__)


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
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    # Bumping the head row takes its row lock (PostgreSQL) or the write lock (SQLite): appenders
    # queue here, so no two records ever claim the same predecessor.
    conn = session.connection()
    row = conn.execute(_BUMP_HEAD).one()
    seq, prev = int(row[0]), str(row[1])
    at = utcnow()
    fields: dict[str, Any] = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "department": department,
        "action": action,
        "object_type": object_type,
        "object_id": None if object_id is None else str(object_id),
        "purpose": scrub(purpose) if purpose else None,
        "outcome": outcome,
        "detail": scrub(detail) if detail else None,
        "algo": HASH_ALGO,
        "prev_hash": prev,
    }
    # Round-trip the detail through JSON now, so what we hash is exactly what the column returns.
    if fields["detail"] is not None:
        fields["detail"] = orjson.loads(orjson.dumps(fields["detail"]))
    fields["hash"] = record_hash(fields)
    # Core statements, not ORM objects: this runs on every write and audited read.
    conn.execute(_INSERT, fields)
    conn.execute(_SET_HEAD, {"hash": fields["hash"]})
    return str(fields["hash"])


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
