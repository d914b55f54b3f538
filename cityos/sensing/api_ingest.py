"""The compact ingest API (批量数据接入) at /api/sensing: many readings in one small request.

The SensorThings routes are the standard way in; this is the fast one, for gateways and devices
that send thousands of readings at a time. A body is one of

    [{"ds": 12, "t": "2026-11-21T10:00:00+08:00", "v": 35.2}, ...]      one object per reading
    {"ds": 12, "t": [1763690400000, ...], "v": [35.2, ...]}              columns of one stream
    [{"ds": 12, "t": [...], "v": [...]}, {"ds": 13, "t": [...], "v": [...]}, ...]

(the two element kinds may be mixed in one array). `ds` is a Datastream id, `t` an ISO 8601
time with a zone or epoch milliseconds (a single reading without `t` is stamped now), `v` a
result of the stream's observation type (an array for a MultiDatastream).

A request is all or nothing: if any reading is bad the answer is 422 listing each bad one by
its place (`[12].t`, `[0].v[3]`) and nothing is stored. The answer 200 {"accepted", "stored",
"duplicates"} is sent only after the readings are committed; a full writer queue answers 429
with Retry-After, a body over `max_body_bytes` or MAX_READINGS 413. The body is parsed with orjson
and checked in one plain loop, never as a pydantic model per reading: this route has to keep up
with a city's sensors (>= 100,000 readings/s on two cores).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cityos.core import access
from cityos.core.access import Actor, Target
from cityos.core.basic_auth import basic_actor, basic_credentials
from cityos.core.errors import CityOSError, FieldError, Forbidden, Invalid, NotFound, Unauthorized
from cityos.core.web import SessionDep, get_actor, platform_of
from cityos.sensing import ingest, service
from cityos.sensing.ingest import StreamInfo, check_result, compact_row, parse_time
from cityos.sensing.models import Datastream, Thing
from cityos.sensing.runtime import runtime_of
from cityos.sensing.store import Row

router = APIRouter(prefix="/api/sensing", tags=["sensing"])

MAX_READINGS = 100_000  # per request; a larger batch gains nothing and holds the writer up
MAX_ERRORS = 100  # bad readings listed in one 422; the rest are only counted
_DEVICE = service.DEVICE_PREFIX + "_"
_ROW_KEYS = frozenset({"ds", "t", "v"})
_DS_REASON = "the id (integer) of a Datastream is required / 需要数据流编号（整数）"
_BODY_DOC = {
    "required": True,
    "content": {"application/json": {"schema": {
        "oneOf": [
            {"type": "array", "items": {"type": "object", "properties": {
                "ds": {"type": "integer"}, "t": {"type": ["string", "integer"]}, "v": {}}}},
            {"type": "object", "properties": {
                "ds": {"type": "integer"}, "t": {"type": "array"}, "v": {"type": "array"}}},
        ]},
        "example": [{"ds": 1, "t": "2026-11-21T10:00:00+08:00", "v": 35.2},
                    {"ds": 1, "t": 1763690460000, "v": 35.4}]}},
}


# -- who is sending -----------------------------------------------------------------------------


async def ingest_actor(request: Request, session: SessionDep) -> Actor:
    """The sender: a device by HTTP Basic (username its device key `dev_...`, password its
    secret), a user or API key by HTTP Basic, or whatever the core reads (bearer token, API key,
    console cookie). Wrong credentials are 401, never anonymous."""
    creds = basic_credentials(request.headers.get("authorization", ""))
    if creds is None:
        return await get_actor(request, session)
    username, secret = creds
    if username.startswith(_DEVICE):
        actor = await run_in_threadpool(service.device_actor, session, username, secret)
        if actor is None:
            raise Unauthorized("wrong device key or secret / 设备密钥或口令错误")
    else:
        actor = await run_in_threadpool(basic_actor, request, session, username, secret)
    request.state.actor = actor
    return actor


IngestActor = Annotated[Actor, Depends(ingest_actor)]


# -- reading the body ---------------------------------------------------------------------------


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CityOSError(detail="the body is not valid JSON / JSON 格式错误", status=400,
                          title="Malformed JSON", type_slug="malformed-json",
                          errors=[FieldError("body", str(exc))]) from None


def _elements(payload: Any) -> tuple[list[Any], bool]:
    """The top-level elements (readings or column blocks), and whether the body was a single
    column object (whose field names then carry no index)."""
    if isinstance(payload, list):
        return payload, False
    if isinstance(payload, dict):
        if not _is_columns(payload):
            raise Invalid("t", "an object body is a column block with arrays t and v; send single readings "
                               "in an array / 对象请求体应为列式（t、v 为数组），单条读数请放在数组中")
        return [payload], True
    raise Invalid("body", "an array of readings or a column object {ds, t, v} / 应为读数数组或列式对象")


def _is_columns(item: Any) -> bool:
    return type(item) is dict and type(item.get("t")) is list


def _count(elements: list[Any]) -> int:
    return sum(len(item["t"]) if _is_columns(item) else 1 for item in elements)


def _stream_ids(elements: list[Any]) -> set[int]:
    return {ds for item in elements if type(item) is dict and type(ds := item.get("ds")) is int}


def _name(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _ds_of(item: Any, prefix: str, infos: dict[int, StreamInfo]) -> StreamInfo:
    if not isinstance(item, dict):
        raise Invalid(prefix, 'a reading is an object {"ds", "t", "v"} / 读数应为对象')
    ds = item.get("ds")
    if type(ds) is not int:
        raise Invalid(_name(prefix, "ds"), _DS_REASON)
    info = infos.get(ds)
    if info is None:
        raise Invalid(_name(prefix, "ds"), f"Datastream({ds}) does not exist / 数据流不存在")
    return info


# The fast path. Almost every reading is an epoch-ms integer or an ISO time with a zone, and a
# number for a measurement or count stream; those are checked here with no field names built.
# Anything else (or anything wrong) goes the slow way, through ingest's own checks, which name
# the field and the reason: the two must accept and refuse exactly the same readings.
_NUMBER_TYPES = frozenset({ingest.MEASUREMENT, ingest.ANY})
_fromisoformat = dt.datetime.fromisoformat


def _fast_time(t: Any, latest: int) -> int | None:
    if type(t) is int:
        return t if ingest.MIN_TIME_MS <= t <= latest else None
    if type(t) is str:
        try:
            parsed = _fromisoformat(t)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        ms = int(parsed.timestamp() * 1000)
        return ms if ingest.MIN_TIME_MS <= ms <= latest else None
    return None


def _fast_kind(info: StreamInfo) -> int:
    """1: any finite number is a result; 2: integers only (counts); 0: the slow way."""
    if info.kind != "single":
        return 0
    if info.observation_type in _NUMBER_TYPES:
        return 1
    return 2 if info.observation_type == ingest.COUNT else 0


def _fast_number(v: Any, kind: int) -> float | None:
    if type(v) is float:  # orjson never yields NaN or infinity
        return v if kind == 1 else None
    if type(v) is int:
        return float(v)
    return None


def _column_rows(prefix: str, item: dict[str, Any], info: StreamInfo, now: int,
                 rows: list[Row], errors: list[FieldError]) -> None:
    """Readings of a column block {"ds", "t": [...], "v": [...]}; one error per bad reading."""
    extra = set(item) - _ROW_KEYS
    if extra:
        errors.append(FieldError(_name(prefix, sorted(extra)[0]), "unknown field / 未知字段"))
        return
    times, values = item["t"], item.get("v")
    if type(values) is not list or len(values) != len(times):
        errors.append(FieldError(_name(prefix, "v"), "an array as long as t / 应为与 t 等长的数组"))
        return
    ds, foi, kind, latest = info.id, info.foi_id, _fast_kind(info), now + ingest.MAX_FUTURE_MS
    append = rows.append
    for j, (t, v) in enumerate(zip(times, values, strict=True)):
        ms = _fast_time(t, latest)
        number = _fast_number(v, kind) if kind else None
        if ms is not None and number is not None:
            append((ds, ms, None, None, number, None, None, None, None, None, foi))
            continue
        try:
            ms = parse_time(t, _name(prefix, f"t[{j}]"), now)
            number, js = check_result(info, v, _name(prefix, f"v[{j}]"))
        except Invalid as exc:
            errors.extend(exc.errors)
            continue
        append((ds, ms, None, None, number, js, None, None, None, None, foi))


def rows_of(elements: list[Any], infos: dict[int, StreamInfo], now: int, single: bool = False) -> list[Row]:
    """Every reading of the body as a `store.Row`; Invalid listing each bad reading if any is bad."""
    rows: list[Row] = []
    errors: list[FieldError] = []
    append = rows.append
    latest = now + ingest.MAX_FUTURE_MS
    kinds = {ds: _fast_kind(info) for ds, info in infos.items()}
    for i, item in enumerate(elements):
        if type(item) is dict and len(item) == 3:  # the fast path: {"ds", "t", "v"}, all well-formed
            ds = item.get("ds")
            if type(ds) is int and (kind := kinds.get(ds)):
                ms = _fast_time(item.get("t"), latest)
                number = _fast_number(item.get("v"), kind)
                if ms is not None and number is not None:
                    append((ds, ms, None, None, number, None, None, None, None, None, infos[ds].foi_id))
                    continue
        prefix = "" if single else f"[{i}]"
        try:
            info = _ds_of(item, prefix, infos)
            if _is_columns(item):
                _column_rows(prefix, item, info, now, rows, errors)
            else:
                append(compact_row(info, item, prefix, now))
        except Invalid as exc:
            errors.extend(exc.errors)
    if errors:
        raise _invalid(errors, _count(elements))
    return rows


def _invalid(errors: list[FieldError], total: int) -> Invalid:
    exc = Invalid.many(errors[:MAX_ERRORS])
    exc.detail = (f"{len(errors)} of {total} readings are invalid; nothing was stored / "
                  f"{total} 条读数中有 {len(errors)} 条无效，均未保存")
    exc.extra = {"invalid_count": len(errors), "not_listed": max(0, len(errors) - MAX_ERRORS)}
    return exc


def prepare(session: Session, actor: Actor, writer: ingest.Writer, body: bytes,
            now: int | None = None) -> list[Row]:
    """Parse and check a compact body for `actor`: the rows to store, or the first refusal
    (401/403 for who may write, 413 for too many readings, 422 listing every bad reading)."""
    if not actor.authenticated:
        raise Unauthorized()
    elements, single = _elements(_loads(body))
    total = _count(elements)
    if total > MAX_READINGS:
        raise CityOSError(detail=f"{total} readings in one request; at most {MAX_READINGS} / 单次读数过多",
                          status=413, title="Payload too large", type_slug="too-large")
    infos = writer.streams.many(_stream_ids(elements))
    for info in sorted(infos.values(), key=lambda s: s.id):  # access once per stream, not per reading
        service.check_stream_write(session, actor, info)
    try:
        return rows_of(elements, infos, now if now is not None else ingest.now_ms(), single)
    except Invalid:
        writer.count_error(service.device_key_of(actor) or "user")
        raise


async def _store(request: Request, session: Session, actor: Actor) -> JSONResponse:
    writer = runtime_of(platform_of(request)).writer
    body = await request.body()
    rows = await run_in_threadpool(prepare, session, actor, writer, body)
    session.close()  # hand the connection back before waiting for the writer
    written = await writer.write(rows)
    return JSONResponse({"accepted": len(rows), "stored": len(written.new), "duplicates": written.duplicates})


# -- routes -------------------------------------------------------------------------------------


@router.post("/observations", summary="Send many readings at once (批量上报读数)", openapi_extra={
    "requestBody": _BODY_DOC})
async def observations_post(request: Request, session: SessionDep, actor: IngestActor) -> JSONResponse:
    """Store a batch of readings, all or nothing; answered after COMMIT with
    {"accepted", "stored", "duplicates"} (a reading already stored for the same stream and time
    is a duplicate: sending a batch again is safe)."""
    return await _store(request, session, actor)


@router.post("/devices/{device_key}/readings", summary="A device sends its readings (设备上报)",
             openapi_extra={"requestBody": _BODY_DOC})
async def device_readings_post(device_key: str, request: Request, session: SessionDep,
                               actor: IngestActor) -> JSONResponse:
    """The bulk format, sent by the device itself (HTTP Basic with its key and secret)."""
    if service.device_key_of(actor) != device_key:
        if not actor.authenticated:
            raise Unauthorized()
        raise Forbidden(f"only device {device_key} may send here / 仅该设备本身可上报")
    return await _store(request, session, actor)


@router.post("/things/{thing_id}/credentials", status_code=201,
             summary="Issue a device key and secret for a Thing (签发设备凭证)")
def credentials_post(thing_id: int, request: Request, session: SessionDep,
                     actor: IngestActor) -> JSONResponse:
    """Issue (or replace) the Thing's device credentials. The secret is shown only in this
    answer; issuing again makes the old secret stop working at once."""
    if not actor.authenticated:  # before the lookup: a stranger learns nothing
        raise Unauthorized()
    thing = session.get(Thing, thing_id)
    if thing is None:
        raise NotFound("Thing", thing_id)
    key, secret = service.device_issue(session, actor, thing)
    streams = session.execute(select(Datastream.id).where(Datastream.thing_id == thing_id)).scalars().all()
    session.commit()
    cache = runtime_of(platform_of(request)).writer.streams
    for ds in streams:  # their cached device key may be the old (or no) one
        cache.forget(ds)
    return JSONResponse({"thing_id": thing_id, "device_key": key, "secret": secret}, status_code=201,
                        headers={"Cache-Control": "no-store"})


@router.get("/ingest/stats", summary="The ingest writer's counters (接入统计)")
def stats_get(request: Request, actor: IngestActor) -> dict[str, Any]:
    """Counters since start, queue depth and the devices with the most refused batches; for
    platform operators (sensing.read across every department)."""
    access.require(actor, "sensing.read", Target(kind="sensing.ingest"))
    writer = runtime_of(platform_of(request)).writer
    counts = {f.name: getattr(writer.stats, f.name) for f in dataclasses.fields(writer.stats)}
    errors = counts.pop("device_errors").copy()  # a dict copy is atomic; the writer keeps counting
    top = sorted(errors.items(), key=lambda kv: -kv[1])[:100]
    return {**counts, "pending": writer.pending, "max_pending": writer.max_pending,
            "max_batch": writer.max_batch, "device_errors": dict(top)}
