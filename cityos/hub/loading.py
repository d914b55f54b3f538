"""Loading data into a resource (数据归集): upload, push through the city standard data
interface (城市标准数据接口), rollback. Every load is one version and all-or-nothing unless the
loader asks to keep the valid rows.

One path for every source: rows are validated against the items, encoded (encrypted, keyed,
hashed), checked for duplicate keys and written in batches by `store.Writer` inside the
caller's transaction; the version, counts and audit record are written in the same
transaction, so a crash or a rejected load leaves the resource as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import access, audit, events
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.errors import CityOSError, Invalid
from cityos.hub import chunks, parsing, store, validate
from cityos.hub.models import Resource, Version
from cityos.hub.service import keyring, layout_of, resource_by_code, resource_target

BATCH = 10_000
ERRORS_KEPT = 100_000  # row errors a file load keeps for its report (all are counted)
Progress = Callable[[int, int], None]  # (bytes read, rows seen)


class LoadRejected(CityOSError):
    """A load with invalid rows: nothing was applied; the report says which row, field and why."""

    def __init__(self, report: validate.ErrorReport, rows_in: int) -> None:
        errors = report.as_dicts()
        super().__init__(
            detail=(f"{report.rows} of {rows_in} rows are invalid; nothing was loaded / "
                    f"{rows_in} 行中有 {report.rows} 行不合格，未导入任何数据"),
            status=422, title="Invalid rows", type_slug="invalid-rows",
            extra={"rows_in": rows_in, "rows_rejected": report.rows, "errors_total": report.total,
                   "row_errors": errors[:200]},
        )
        self.report = report


@dataclass
class LoadResult:
    """What a load did: its version (None when nothing changed hands), counts and row errors."""

    version: Version | None
    rows_in: int = 0
    rows_rejected: int = 0
    report: validate.ErrorReport = field(default_factory=validate.ErrorReport)
    replayed: bool = False  # an idempotent push seen before

    def as_dict(self) -> dict[str, Any]:
        v = self.version
        return {
            "version": v.number if v else None, "rows_in": self.rows_in,
            "rows_rejected": self.rows_rejected,
            "added": v.added if v else 0, "changed": v.changed if v else 0,
            "removed": v.removed if v else 0, "row_count": v.row_count if v else None,
            "replayed": self.replayed, "row_errors": self.report.as_dicts()[:200],
        }


def _begin(session: Session, actor: Actor, code: str) -> Resource:
    res = resource_by_code(session, code)
    access.require(actor, "hub.data.load", resource_target(res), session)
    # One load at a time per resource: the row lock on PostgreSQL; SQLite has one writer anyway.
    session.execute(select(Resource.id).where(Resource.id == res.id).with_for_update())
    session.refresh(res, ["current_version"])
    return res


def load_check(session: Session, actor: Actor, code: str) -> Resource:
    """May `actor` load into this resource? Asked before a large upload is received."""
    res = resource_by_code(session, code)
    access.require(actor, "hub.data.load", resource_target(res), session)
    return res


def _check_authority(actor: Actor, res: Resource, columns: Iterable[str]) -> None:
    """One source per item (一数一源): an item with an authority is written by it alone."""
    if actor.kind == "system":
        return
    cols = set(columns)
    for item in res.items:
        if item.name in cols and item.authority_department_id not in (None, actor.department_id):
            raise access.Denied(actor, "hub.data.load", resource_target(res),
                                f"item {item.name} is written only by its authoritative department")


class _Rows:
    """Encodes validated rows, refuses duplicate keys, merges partial rows, writes in batches."""

    def __init__(self, session: Session, res: Resource, number: int, mode: str, partial: bool,
                 report: validate.ErrorReport, keep_valid: bool = False) -> None:
        self.layout = layout_of(res)
        self.ring = keyring()
        self.enc = store.Encoder(self.layout, self.ring)
        self.conn = session.connection()
        self.writer = store.Writer(self.conn, self.layout, number, mode)
        # Items missing from a keyed row keep their stored values (they may belong to another
        # department, 一数一源); a keyless resource has nothing to merge with. A new row must
        # still bring every required item.
        self.partial = partial and bool(res.key_fields)
        self.merge = self.partial and not self.writer.direct
        self.required = [i.name for i in res.items if i.required and not i.is_key]
        self.report = report
        self.seen: dict[str, int] = {}
        self.batch: list[tuple[int, dict[str, Any]]] = []
        self.keep_valid = keep_valid

    def add(self, line: int, values: dict[str, Any]) -> None:
        self.batch.append((line, values))
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        existing: dict[str, dict[str, Any]] = {}
        if self.merge:
            keys = []
            for _, values in batch:
                try:
                    keys.append(self.enc.key(values))
                except ValueError:
                    continue
            existing = store.rows_by_keys(self.conn, self.layout, self.ring, keys)
        out: list[tuple[int, tuple[Any, ...]]] = []
        for line, values in batch:
            try:
                if self.partial:
                    old = existing.get(self.enc.key(values))
                    if old is None:
                        missing = [n for n in self.required if values.get(n) is None]
                        if missing:
                            self.report.add([validate.RowError(line, n, "required for a new row / 新增行必填")
                                             for n in missing])
                            continue
                    else:
                        values = {**old, **values}
                out.append((line, self.enc.encode(values)))
            except ValueError as exc:
                self.report.add([validate.RowError(line, None, str(exc))])
        self.write(out)

    def add_ready(self, lines: Sequence[int], keys: list[str], ready: list[tuple[Any, ...]] | bytes
                  ) -> None:
        """Refuse duplicate keys among rows a worker made ready for `Writer.add_ready` (one key
        and line each, in order), then write them (unless the load will fail)."""
        seen = self.seen
        fresh = dict(zip(keys, lines, strict=True))
        if len(fresh) == len(keys) and seen.keys().isdisjoint(fresh):
            seen.update(fresh)  # the usual case, at C speed
        else:
            keep = []
            for n, (key, line) in enumerate(zip(keys, lines, strict=True)):
                first = seen.setdefault(key, line)
                if first != line:
                    self._duplicate(line, first)
                else:
                    keep.append(n)
            if isinstance(ready, bytes):  # COPY text: one row a line (a newline in a value is \n)
                split = ready.split(b"\n")
                ready = b"".join(split[n] + b"\n" for n in keep)
            else:
                ready = [ready[n] for n in keep]
            keys = [keys[n] for n in keep]
        if (self.report.rows and not self.keep_valid) or not keys:
            return
        self.writer.add_ready(ready, len(keys))

    def _duplicate(self, line: int, first: int) -> None:
        self.report.add([validate.RowError(
            line, ",".join(self.layout.key_fields),
            f"duplicate key, first seen on row {first} / 主键重复，首次出现于第{first}行")])

    def write(self, encoded: list[tuple[int, tuple[Any, ...]]], converted: bool = False) -> None:
        """Refuse duplicate keys among encoded rows, then write them (unless the load will fail);
        `converted`: the rows' dates are already what SQLite stores (done by a worker)."""
        out = []
        seen = self.seen
        for line, row in encoded:
            first = seen.setdefault(row[0], line)
            if first != line:
                self._duplicate(line, first)
                continue
            out.append(row)
        if self.report.rows and not self.keep_valid:
            return  # the load will be refused; keep validating so the report is complete
        self.writer.add(out, converted)


def _finish(session: Session, actor: Actor, res: Resource, rows: _Rows, *, rows_in: int, source: str,
            mode: str, filename: str | None = None, request_key: str | None = None,
            delete_keys: Iterable[str] = (), note: str | None = None) -> Version:
    rows.flush()
    report = rows.report
    if report.rows and not rows.keep_valid:
        raise LoadRejected(report, rows_in)
    counts = rows.writer.finish(delete_keys)
    number = rows.writer.version
    version = Version(
        resource_id=res.id, number=number, source=source, mode=mode, filename=filename,
        request_key=request_key, rows_in=rows_in, rows_rejected=report.rows, added=counts.added,
        changed=counts.changed, removed=counts.removed, row_count=counts.row_count,
        errors=report.as_dicts()[:1000] or None, note=note, created_by=actor.name,
    )
    session.add(version)
    res.current_version = number
    res.row_count = counts.row_count
    res.last_loaded_at = utcnow()
    if rows_in:
        res.validity = (rows_in - report.rows) / rows_in
    session.flush()
    audit.append(session, actor=actor.name, action="hub.data.load", department=res.department.code,
                 object_type="hub.resource", object_id=res.code,
                 detail={"version": number, "source": source, "mode": mode, "rows_in": rows_in,
                         "rejected": report.rows, "added": counts.added, "changed": counts.changed,
                         "removed": counts.removed})
    _notify(session, res, version)
    return version


def _notify(session: Session, res: Resource, version: Version) -> None:
    """Tell the subscribers of this resource's grants (their webhooks) that it changed, and
    publish the domain event (the open-data portal follows published resources by it)."""
    from cityos.hub import sharing

    sharing.notify_change(session, res, version)
    events.publish(events.HUB_VERSION_CREATED, session=session, resource=res, version=version)


def load_file(
    session: Session, actor: Actor, code: str, stream: BinaryIO, fmt: str, *,
    encoding: str | None = None, mode: str = "replace", keep_valid: bool = False,
    filename: str | None = None, total_bytes: int | None = None, progress: Progress | None = None,
    source: str = "upload",
) -> LoadResult:
    """Load a CSV (UTF-8 or GBK/GB18030), XLSX or JSON file as a new version (上传导入)."""
    res = _begin(session, actor, code)
    try:
        reader = parsing.open_table(stream, fmt, encoding=encoding, total_bytes=total_bytes)
        # An upsert may bring some columns only (the rest keep their values): keys are required.
        items = [{"name": i.name, "title": i.title, "is_key": i.is_key,
                  "required": i.required and (mode == "replace" or not res.key_fields)} for i in res.items]
        columns = parsing.map_header(reader.header, items, reader.header_line)
    except parsing.ParseError as exc:
        raise Invalid("file", str(exc)) from exc
    supplied = [c for c in columns if c]
    _check_authority(actor, res, supplied)
    report = validate.ErrorReport(limit=ERRORS_KEPT)
    rows = _Rows(session, res, res.current_version + 1, mode,
                 partial=set(supplied) != {i.name for i in res.items}, report=report,
                 keep_valid=keep_valid)
    rules = [validate.ItemRule.of(i) for i in res.items]
    workers = _workers(reader.total_bytes, rows)
    try:
        if workers and reader.body is not None:
            rows_in, bytes_read = chunks.chunked(reader.body, rows, rules, columns, workers, progress,
                                                 batch=BATCH, copy_text=COPY_TEXT)
        else:
            if workers:
                rows_in = chunks.parallel(reader, rows, rules, columns, workers, progress, batch=BATCH)
            else:
                rows_in = _serial(reader, rows, validate.compile_rows(rules, columns).check, progress)
            bytes_read = reader.bytes_read
    except parsing.ParseError as exc:
        raise Invalid("file", str(exc)) from exc
    finally:
        reader.close()
    if rows_in == 0:
        raise Invalid("file", "the file has no rows / 文件没有数据行")
    if progress is not None:
        progress(bytes_read, rows_in)
    version = _finish(session, actor, res, rows, rows_in=rows_in, source=source, mode=mode,
                      filename=filename)
    return LoadResult(version, rows_in, report.rows, report)


def _serial(reader: parsing.TableReader, rows: _Rows, check: Any, progress: Progress | None) -> int:
    rows_in = 0
    for line, values in reader:
        rows_in += 1
        if progress is not None and rows_in % BATCH == 0:
            progress(reader.bytes_read, rows_in)
        typed, errors = check(line, values)  # a ragged row (RowFault) comes back as an error
        if errors:
            rows.report.add(errors)
            continue
        rows.add(line, typed)
    return rows_in


# -- large files: reading, validation and encoding in worker processes (see `chunks`) -------------
PARALLEL_MIN_BYTES = 32 << 20
COPY_TEXT = True  # PostgreSQL: workers make the COPY text (False: tuples, written by the loader)
MAX_WORKERS = 8


def _workers(size: int | None, rows: _Rows) -> int:
    """How many worker processes a load gets: none for small files, partial rows or one CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if size is None or size < PARALLEL_MIN_BYTES or rows.partial or cpus < 2:
        return 0
    return min(MAX_WORKERS, cpus)


def push(
    session: Session, actor: Actor, code: str, rows: list[dict[str, Any]], *, mode: str = "upsert",
    request_key: str | None = None, delete: list[dict[str, Any]] | None = None, keep_valid: bool = False,
    source: str = "push", note: str | None = None,
) -> LoadResult:
    """Push rows through the city standard data interface: batch upsert by key, idempotent with
    a request key (a repeated key returns the first result and writes nothing)."""
    res = _begin(session, actor, code)
    if request_key:
        seen = session.scalar(select(Version).where(Version.resource_id == res.id,
                                                    Version.request_key == request_key))
        if seen is not None:
            return LoadResult(seen, seen.rows_in, seen.rows_rejected, replayed=True)
    if mode == "upsert" and not res.key_fields:
        raise Invalid("mode", "upsert needs key items; this resource has none / 无主键资源不支持按键更新")
    names = {i.name for i in res.items}
    rules = [validate.ItemRule.of(i) for i in res.items]
    report = validate.ErrorReport()
    supplied: set[str] = set()
    for n, row in enumerate(rows):
        unknown = set(row) - names
        if unknown:
            raise Invalid(f"rows[{n}].{sorted(unknown)[0]}", "no such item / 无此信息项")
        supplied |= set(row)
    _check_authority(actor, res, supplied)
    writer_rows = _Rows(session, res, res.current_version + 1, mode,
                        partial=mode == "upsert", report=report, keep_valid=keep_valid)
    validators: dict[tuple[str, ...], Any] = {}
    required = {r.name for r in rules if r.required}
    for n, row in enumerate(rows, start=1):
        cols = tuple(row)
        if cols not in validators:
            validators[cols] = validate.compile_rows(rules, list(cols))
        typed, errors = validators[cols].check(n, list(row.values()))
        if mode == "replace":  # whole rows: every required item must be there
            missing = sorted(required - set(cols))
            errors = [*errors, *(validate.RowError(n, f, "required / 必填") for f in missing)]
        report.add(errors)
        if typed is not None and not errors:
            writer_rows.add(n, typed)
    delete_keys = _delete_keys(writer_rows, res, delete or [])
    version = _finish(session, actor, res, writer_rows, rows_in=len(rows), source=source, mode=mode,
                      request_key=request_key, delete_keys=delete_keys, note=note)
    return LoadResult(version, len(rows), report.rows, report)


def _delete_keys(rows: _Rows, res: Resource, delete: list[dict[str, Any]]) -> list[str]:
    keys = []
    convs = {r.name: validate.converter(r) for r in
             (validate.ItemRule.of(i) for i in res.items if i.name in res.key_fields)}
    for n, key in enumerate(delete):
        if set(key) != set(res.key_fields):
            raise Invalid(f"delete[{n}]", f"give exactly the key items {res.key_fields} / 须给出主键")
        try:
            keys.append(rows.enc.key({k: convs[k](v) for k, v in key.items()}))
        except ValueError as exc:
            raise Invalid(f"delete[{n}]", str(exc)) from exc
    return keys


def rows_write(session: Session, actor: Actor, code: str, rows: Iterable[dict[str, Any]], *,
               source: str = "push", mode: str = "upsert", note: str | None = None) -> LoadResult:
    """Write rows whose values are already typed (registries, the demo, other engines)."""
    res = _begin(session, actor, code)
    report = validate.ErrorReport()
    materialized = list(rows)
    supplied = set().union(*(r.keys() for r in materialized)) if materialized else set()
    _check_authority(actor, res, supplied)
    out = _Rows(session, res, res.current_version + 1, mode,
                partial=supplied != {i.name for i in res.items}, report=report)
    for n, r in enumerate(materialized, start=1):
        out.add(n, r)
    version = _finish(session, actor, res, out, rows_in=len(materialized), source=source, mode=mode,
                      note=note)
    return LoadResult(version, len(materialized), 0, report)


def rollback(session: Session, actor: Actor, code: str, to_version: int, *, note: str | None = None
             ) -> Version:
    """Make an earlier version current again, as a new version (回滚): history stays whole."""
    res = _begin(session, actor, code)
    if not 0 <= to_version < res.current_version:
        raise Invalid("to_version", f"must be between 0 and {res.current_version - 1} / 版本号不合法")
    layout = layout_of(res)
    number = res.current_version + 1
    conn = session.connection()
    if to_version == 0:
        counts = store.clear(conn, layout, number)
    else:
        writer = store.Writer(conn, layout, number, "replace")
        store.stage_version(writer, to_version)
        counts = writer.finish()
    version = Version(resource_id=res.id, number=number, source="rollback", mode="replace",
                      added=counts.added, changed=counts.changed, removed=counts.removed,
                      row_count=counts.row_count, note=note or f"rollback to version {to_version}",
                      created_by=actor.name)
    session.add(version)
    res.current_version, res.row_count, res.last_loaded_at = number, counts.row_count, utcnow()
    session.flush()
    audit.append(session, actor=actor.name, action="hub.data.rollback", department=res.department.code,
                 object_type="hub.resource", object_id=res.code,
                 detail={"version": number, "to_version": to_version, "row_count": counts.row_count})
    _notify(session, res, version)
    return version


def version_diff(session: Session, actor: Actor, code: str, a: int, b: int, limit: int = 100
                 ) -> dict[str, Any]:
    """What changed between two versions (the provider department's view: every item)."""
    res = resource_by_code(session, code)
    access.require(actor, "hub.data.load", resource_target(res), session)
    for name, v in (("from", a), ("to", b)):
        if not 0 <= v <= res.current_version:
            raise Invalid(name, f"no version {v} / 无此版本")
    return store.diff(session.connection(), layout_of(res), keyring(), a, b, limit)


def iter_versions(session: Session, res: Resource) -> Iterator[Version]:
    yield from session.scalars(select(Version).where(Version.resource_id == res.id)
                               .order_by(Version.number))
