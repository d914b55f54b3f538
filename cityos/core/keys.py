"""Key rotation (密钥轮换): move every encrypted column to a fresh data key and index key.

`cityos keys rotate` first adds the new keys to the keyring and saves it (old keys stay, so
everything still under them decrypts), then re-encrypts every column registered in
`crypto.ENCRYPTED_FIELDS` and recomputes its blind index in one database transaction.
Lookups try every index key (`Keyring.blind_index_candidates`), so a crash between the keyring
save and the commit leaves a working system, and a rerun finishes the job under a newer key.

Each row is rewritten with a compare-and-set on its old ciphertext, so a value a server changes
while the rotation runs is never overwritten with its stale plaintext; such rows, and rows a
server writes under an old key meanwhile, are picked up by another sweep. Servers load the
keyring at start-up: restart them after a rotation so they encrypt under the new key.

`--retire` then drops keys that no ciphertext names any more. A backup taken before the
rotation carries its own keys.json, so retiring never makes a backup unreadable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.orm import Session

from cityos.core import access, audit, crypto
from cityos.core import service as _core_service  # noqa: F401  (registers the users' columns)
from cityos.core.access import Actor

access.define("keys.rotate", "Rotate and retire field-encryption keys (密钥轮换)")

# (context, rows done so far, rows to do) — the CLI draws a progress bar from it.
Progress = Callable[[str, int, int], None]
MAX_SWEEPS = 5


class RotationError(Exception):
    """A rotation could not finish; the database transaction was rolled back."""


@dataclass
class RotationReport:
    """What a rotation did: the new key's id, rows re-encrypted per column, keys retired."""

    key_id: str
    rotated: dict[str, int] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.rotated.values())


def _columns(f: crypto.EncryptedField) -> tuple[Any, Any, Any | None]:
    """The table, ciphertext column and index column behind a registered field."""
    mapper = f.model.__mapper__
    table = mapper.local_table
    enc = mapper.attrs[f.enc_attr].columns[0]
    idx = mapper.attrs[f.idx_attr].columns[0] if f.idx_attr else None
    return table, enc, idx


def _primary_key(table: Any) -> Any:
    pk = list(table.primary_key.columns)
    if len(pk) != 1:
        raise RotationError(f"{table.name}: rotation needs a single-column primary key")
    return pk[0]


def _stale(enc: Any, kid: str) -> Any:
    """Rows whose ciphertext is not under `kid` (key ids are [a-z0-9], no LIKE wildcards)."""
    return and_(enc.is_not(None), ~enc.startswith(f"{crypto.PREFIX}.{kid}."))


def _count(session: Session, table: Any, where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(table).where(where)) or 0)


def _rotate_field(
    session: Session, ring: crypto.Keyring, f: crypto.EncryptedField, batch_size: int,
    progress: Progress | None,
) -> int:
    """Re-encrypt one column under the ring's active key; return the rows rewritten."""
    table, enc, idx = _columns(f)
    pk = _primary_key(table)
    kid = ring.active
    current = enc.startswith(f"{crypto.PREFIX}.{kid}.")
    before = _count(session, table, current)
    todo = _count(session, table, _stale(enc, kid))
    values: dict[str, Any] = {enc.key: bindparam("new_enc")}
    if idx is not None:
        values[idx.key] = bindparam("new_idx")
    # Compare-and-set: the row is rewritten only if it still holds the ciphertext we decrypted.
    stmt = update(table).where(pk == bindparam("row_pk"), enc == bindparam("old_enc")).values(values)
    seen = 0
    if progress:
        progress(f.context, 0, todo)
    for _ in range(MAX_SWEEPS):
        last: Any = None
        while True:
            query = select(pk, enc).where(_stale(enc, kid)).order_by(pk).limit(batch_size)
            if last is not None:
                query = query.where(pk > last)
            rows = session.execute(query).all()
            if not rows:
                break
            params = []
            for row_pk, old in rows:
                try:
                    plain = ring.decrypt(old, f.context)
                except crypto.DecryptError as exc:
                    raise RotationError(
                        f"{f.context}: row {row_pk} cannot be decrypted ({exc}); nothing changed"
                    ) from exc
                params.append({
                    "row_pk": row_pk,
                    "old_enc": old,
                    "new_enc": ring.encrypt(plain, f.context),
                    "new_idx": ring.blind_index(f.normalize(plain), f.context),
                })
            session.execute(stmt, params)
            seen += len(rows)
            last = rows[-1][0]
            if progress:
                progress(f.context, seen, max(todo, seen))
        # A row changed under us (compare-and-set missed) or written under an old key meanwhile
        # is still stale: sweep again until none is left.
        if not _count(session, table, _stale(enc, kid)):
            return _count(session, table, current) - before
    raise RotationError(f"{f.context}: rows kept changing under an old key; nothing changed")


def keys_in_use(session: Session) -> dict[str, int]:
    """Scan every registered column: how many ciphertexts name each key id."""
    used: dict[str, int] = {}
    for f in crypto.ENCRYPTED_FIELDS:
        table, enc, _ = _columns(f)
        pk = _primary_key(table)
        last: Any = None
        while True:
            query = select(pk, enc).where(enc.is_not(None)).order_by(pk).limit(5000)
            if last is not None:
                query = query.where(pk > last)
            rows = session.execute(query).all()
            if not rows:
                break
            for _, token in rows:
                kid = token.split(".", 2)[1] if token.count(".") >= 2 else "?"
                used[kid] = used.get(kid, 0) + 1
            last = rows[-1][0]
    return used


def unused_keys(session: Session, ring: crypto.Keyring) -> list[str]:
    """Key ids of `ring` that no ciphertext names and that are not active (found by scanning)."""
    keep = {ring.active, ring.active_index, *keys_in_use(session)}
    return sorted(k for k in set(ring.keys) | set(ring.index_keys) if k not in keep)


def retire(ring: crypto.Keyring, key_ids: list[str]) -> None:
    """Drop these keys from `ring` and save it."""
    for kid in key_ids:
        if kid in (ring.active, ring.active_index):
            raise RotationError(f"refusing to retire the active key {kid}")
        ring.keys.pop(kid, None)
        ring.index_keys.pop(kid, None)
    ring.save()


def keys_rotate(
    session: Session, actor: Actor, *, ring: crypto.Keyring | None = None,
    retire_unused: bool = False, batch_size: int = 1000, progress: Progress | None = None,
) -> RotationReport:
    """Rotate to a new data key and index key, re-encrypt every registered column, and commit.

    Unlike other service functions this one commits `session` itself: the keyring must be saved
    before the transaction and pruned only after the transaction is durable.
    """
    access.require(actor, "keys.rotate", None, session)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    ring = ring or crypto.keyring()
    if ring.path is None:
        raise RotationError("the keyring has no file to save to")
    ring_size = len(ring.keys)
    kid = ring.add_key()
    ring.save()  # durable before any row names the new key
    report = RotationReport(kid)
    try:
        for f in crypto.ENCRYPTED_FIELDS:
            report.rotated[f.context] = _rotate_field(session, ring, f, batch_size, progress)
        # Scanned inside the transaction, after the rewrite: what it still needs is what it keeps.
        report.retired = unused_keys(session, ring) if retire_unused else []
        audit.append(
            session, actor=actor.name, department=actor.department_code, action="keys.rotate",
            object_type="keyring", object_id=kid,
            # Counts only, never key material. The audit scrubber redacts any detail name that
            # contains "key", "phone" or "id_number" and masks any 18-digit run (which a key id
            # can be): hence columns as values, not names, and retired keys as a count.
            detail={"columns": [{"column": c, "rows": n} for c, n in report.rotated.items()],
                    "total": report.total, "retired": len(report.retired),
                    "ring_size_before": ring_size, "algorithm": ring.keys[kid]["alg"]},
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    if report.retired:
        retire(ring, report.retired)
    return report
