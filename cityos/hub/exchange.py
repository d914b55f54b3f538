"""Exchange (数据交换): reading shared rows through a grant, or one's own department's rows.

The grant is enforced here on every read: only its fields, only its rows (its row filter is
ANDed with the caller's), and only while it is active, which the access decision point checks
(`hub.service`'s grant resolver), so a revocation takes effect on the next request. Every read
states a purpose and leaves one audit record holding the request hash (as X-Road does): SHA-256
over the method, path, query, caller, purpose, time and the answer's digest, so the caller's
copy of any answer can be proven against the log later.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from cityos.core import access, audit, cache
from cityos.core.access import Actor, Target
from cityos.core.errors import FieldError, Invalid, NotFound
from cityos.core.models import Department
from cityos.hub import filters, store
from cityos.hub.models import Grant, Resource
from cityos.hub.service import keyring, layout_of, resource_by_code

MAX_READ_LIMIT = 1000
FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8"}


@dataclass(frozen=True)
class RequestMeta:
    """What the request hash covers besides the answer: method, path and query as received."""

    method: str = "GET"
    path: str = ""
    query: Sequence[tuple[str, str]] = ()
    base_url: str = ""  # e.g. "http://host:8000"; the next page's link starts with it


@dataclass
class ReadResult:
    """A page of shared rows, rendered, with the request hash and the audit record's hash."""

    resource: str
    version: int
    fields: list[str]
    rows: list[dict[str, Any]]
    limit: int
    offset: int
    total: int | None
    next: str | None
    body: bytes
    media_type: str
    request_hash: str
    audit_hash: str
    time: str
    grant_id: int | None = None
    committed: Future[str] | None = None  # with `group_commit`: the audit record's hash, once durable


def _refuse(actor: Actor, target: Target, name: str, what: str) -> access.Denied:
    err = access.Denied(actor, "hub.data.read", target, f"{what} {name} is not granted")
    err.errors = [FieldError(name, f"not granted to your department / 未授权给本部门: {name}")]
    return err


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v.isoformat() if isinstance(v, dt.date | dt.datetime) else str(v)


def render(fmt: str, payload: dict[str, Any]) -> bytes:
    """The answer's bytes: JSON, or CSV (UTF-8 with BOM, a header row of item names)."""
    if fmt == "json":
        return orjson.dumps(payload)
    buf = io.StringIO()
    buf.write("\ufeff")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(payload["fields"])
    for row in payload["rows"]:
        w.writerow([_csv_value(row[f]) for f in payload["fields"]])
    return buf.getvalue().encode("utf-8")


def request_hash(*, method: str, path: str, query: Sequence[tuple[str, str]], actor: str,
                 department: str | None, purpose: str, time: str, body: bytes) -> str:
    """SHA-256 over the canonical request and the answer's digest: proves an answer later."""
    canonical = {"method": method.upper(), "path": path, "query": sorted([k, v] for k, v in query),
                 "actor": actor, "department": department, "purpose": purpose, "time": time,
                 "body_sha256": hashlib.sha256(body).hexdigest()}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _next_url(meta: RequestMeta, offset: int) -> str:
    query = [(k, v) for k, v in meta.query if k != "offset"] + [("offset", str(offset))]
    return f"{meta.base_url}{meta.path}?{urlencode(query)}"


@dataclass(frozen=True)
class _Plan:
    """What a read needs of its resource: one light query, and the layout from a cache."""

    id: int
    code: str
    version: int
    department_id: int
    department_code: str
    department_path: str
    layout: store.Layout


# Items never change once a resource is cataloged, so its layout (SQLAlchemy tables, built per
# call by `layout_of`) is kept per (id, created_at): a recycled id in a new database misses.
_LAYOUTS: dict[tuple[int, dt.datetime], store.Layout] = {}


_RES, _DEPT = Resource.__table__.c, Department.__table__.c
# Built once and run on the connection, not through the ORM: this runs on every shared read.
_PLAN_QUERY = (
    select(_RES.id, _RES.created_at, _RES.current_version, _RES.department_id, _DEPT.code, _DEPT.path)
    .join_from(Resource.__table__, Department.__table__, _DEPT.id == _RES.department_id)
    .where(_RES.code == bindparam("code"))
)


# A resource's plan per (database, code), for a moment: a load (new version), a change to the
# resource or a move of its department clears it on commit (`core.cache`).
cache.watch(Resource)
_PLANS: cache.Cache[tuple[Any, str], _Plan] = cache.Cache()


def _plan(session: Session, code: str) -> _Plan:
    key = (session.get_bind(), code)
    usable = cache.usable(session)
    plan = _PLANS.get(key) if usable else None
    if plan is not None:
        return plan
    generation = cache.generation()
    plan = _plan_read(session, code)
    if usable:
        _PLANS.put(key, plan, generation)
    return plan


def _plan_read(session: Session, code: str) -> _Plan:
    row = session.connection().execute(_PLAN_QUERY, {"code": code}).first()
    if row is None:
        raise NotFound("resource", code)
    rid, created, version, dept_id, dept_code, dept_path = row
    layout = _LAYOUTS.get((rid, created))
    if layout is None:
        if len(_LAYOUTS) > 1000:
            _LAYOUTS.clear()
        layout = _LAYOUTS[(rid, created)] = layout_of(resource_by_code(session, code))
    return _Plan(rid, code, version, dept_id, dept_code, dept_path, layout)


def rows_read(
    session: Session, actor: Actor, code: str, *, purpose: str | None, fields: Sequence[str] | None = None,
    conds: Sequence[store.Cond] = (), sort: Sequence[tuple[str, bool]] = (), limit: int = 100,
    offset: int = 0, with_total: bool = False, fmt: str = "json",
    request_meta: RequestMeta | None = None, group_commit: bool = False,
) -> ReadResult:
    """Read a resource's rows as the owner or through a grant (授权访问), audited with its purpose.

    The audit record goes into the caller's transaction, or with `group_commit` through the
    engine's `audit.GroupWriter`, committed with those of concurrent reads: `committed` then gives
    its hash once durable, and the caller answers only then. For a caller whose session writes
    nothing else (the API's read), so none holds the head row while it waits."""
    purpose = (purpose or "").strip()
    if not purpose:
        raise Invalid("purpose", "every read states its purpose / 每次读取须说明用途")
    if fmt not in FORMATS:
        raise Invalid("format", "json or csv / 须为 json 或 csv")
    if not 1 <= limit <= MAX_READ_LIMIT:
        raise Invalid("limit", f"between 1 and {MAX_READ_LIMIT} / 应在1到{MAX_READ_LIMIT}之间")
    if offset < 0:
        raise Invalid("offset", "must not be negative / 不能为负数")
    plan = _plan(session, code)
    target = Target("hub.resource", plan.id, plan.department_id, plan.department_path)
    grant: Grant | None = access.require(actor, "hub.data.read", target, session).grant
    items = plan.layout.by_name
    allowed = [n for n in items if grant is None or n in grant.fields]
    wanted = list(dict.fromkeys(fields)) if fields else allowed
    for name in wanted:
        if name not in items:
            raise Invalid("fields", f"no such item {name!r} / 无此信息项")
        if name not in allowed:
            raise _refuse(actor, target, name, "field")
    typed = [filters.typed(items, c) for c in conds]
    for c in typed:
        if c.field not in allowed:
            raise _refuse(actor, target, c.field, "filter on")
    for name, _desc in sort:
        if name not in items:
            raise Invalid("sort", f"no such item {name!r} / 无此信息项")
        if name not in allowed:
            raise _refuse(actor, target, name, "sort on")
    applied = list(typed)
    if grant is not None:
        applied += [filters.typed(items, store.Cond(c["field"], c["op"], c.get("value")))
                    for c in grant.row_filter]
    rows, total, more = store.select_rows(
        session.connection(), plan.layout, keyring(), fields=wanted, conds=applied, sort=sort,
        limit=limit, offset=offset, with_total=with_total)
    rows = [{name: row[name] for name in wanted} for row in rows]  # plain str keys, in field order
    meta = request_meta or RequestMeta(path=f"/api/hub/resources/{code}/rows")
    payload: dict[str, Any] = {
        "resource": plan.code, "version": plan.version, "fields": wanted, "rows": rows,
        "limit": limit, "offset": offset, "next": _next_url(meta, offset + limit) if more else None,
    }
    if with_total:
        payload["total"] = total
    body = render(fmt, payload)
    at = dt.datetime.now(dt.UTC)
    while True:
        time = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        rhash = request_hash(method=meta.method, path=meta.path, query=meta.query, actor=actor.name,
                             department=actor.department_code, purpose=purpose, time=time, body=body)
        # The audit log masks digit runs that look like ID or phone numbers; a hex hash can hold
        # one by chance. The time is ours to pick, so step it until the hash survives intact.
        if audit.scrub(rhash) == rhash:
            break
        at += dt.timedelta(microseconds=1)
    bind = session.get_bind()
    append: Callable[..., Any] = partial(audit.append, session)
    if group_commit and isinstance(bind, Engine):
        session.commit()  # ends the read: its pooled connection is free while the record is written
        append = audit.group_writer(bind).submit
    record = append(
        # Filed under the provider: the data's own department audits who read it (the reader's
        # department is in the detail).
        actor=actor.name, action="hub.data.read", department=plan.department_code,
        object_type="hub.resource", object_id=plan.code, purpose=purpose,
        detail={"grant": grant.id if grant else None, "provider": plan.department_code,
                "reader_department": actor.department_code,
                "version": plan.version, "rows": len(rows), "request_hash": rhash, "time": time,
                "fields": wanted, "filter": filters.summary(items, typed),
                "sort": [f"{'-' if d else ''}{n}" for n, d in sort],
                "limit": limit, "offset": offset, "format": fmt})
    committed = record if isinstance(record, Future) else None
    return ReadResult(plan.code, plan.version, wanted, rows, limit, offset, total, payload["next"],
                      body, FORMATS[fmt], rhash, "" if committed else record, time,
                      grant.id if grant else None, committed)
