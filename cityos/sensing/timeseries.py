"""Time series of readings (时序查询): series, latest values, exports, retention, device overview.

Aggregates always come from `sensor_rollups` (kept by ingest per minute, hour and day) and are
computed by the database (GROUP BY), never by loading readings into Python: a month of hourly
means for a thousand streams is 720,000 rollup rows and one query. Raw readings are read by the
(datastream_id, phenomenon_time) unique index, in keyset pages for exports.

Access: reading needs sensing.read within the stream's department; a stream of a department the
actor may not read answers 404, exactly like one that does not exist, so ids leak nothing.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.orm import Session

from cityos.core import access, audit
from cityos.core.access import Actor, Target
from cityos.core.errors import Invalid, NotFound
from cityos.core.models import Department
from cityos.sensing import ingest
from cityos.sensing.ingest import ms_to_iso
from cityos.sensing.models import (
    Alert,
    Datastream,
    Location,
    Observation,
    ObservedProperty,
    Thing,
    thing_locations,
)
from cityos.sensing.service import readable_departments

GRAINS = {"1m": 60, "1h": 3600, "1d": 86400}  # the rollup grains of store.GRAINS, by name
FNS = ("count", "min", "max", "mean", "sum", "last")
DEFAULT_FNS = ("count", "min", "max", "mean", "last")
MAX_IDS = 1000  # streams per request
MAX_ROWS = 100_000  # points per request (raw readings or buckets)
MAX_POINTS = 2000  # what "auto" aims at: a chart's width, a few times over
CHUNK = 10_000  # rows per query while exporting or deleting
DAY_MS = 86_400_000
STATUSES = ("online", "offline", "alerting")
DEFAULT_INTERVAL_S = 60
_EVERY = re.compile(r"^([1-9]\d{0,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NOT_NUMERIC = {ingest.TRUTH, ingest.CATEGORY}
NOT_NUMERIC = "this stream's results are not numbers: only grain=raw / 非数值数据流仅支持原始数据"


# -- parameters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grain:
    """What a query reads: raw readings (source 0), or rollups of `source` seconds regrouped
    into buckets of `every_ms` (equal to the source for a plain grain)."""

    label: str
    source: int
    every_ms: int

    @property
    def raw(self) -> bool:
        return self.source == 0


RAW = Grain("raw", 0, 0)


def every_of(value: str, field_name: str = "every") -> Grain:
    """A bucket width like 15m, 6h or 7d: any multiple of a rollup grain (aggregated from the
    coarsest rollup that divides it)."""
    m = _EVERY.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise Invalid(field_name, f"not a duration like 15m, 6h or 1d: {str(value)[:20]!r} / "
                                  "时间粒度格式错误")
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds % 60 or seconds > 366 * 86400:
        raise Invalid(field_name, "must be a whole number of minutes, at most 366d / "
                                  "须为整分钟且不超过 366 天")
    source = max(g for g in GRAINS.values() if seconds % g == 0)
    return Grain(value.strip(), source, seconds * 1000)


def grain_of(grain: str | None = "auto", every: str | None = None) -> Grain | None:
    """Check `grain` (raw|1m|1h|1d|auto) and `every`; None means "auto" (chosen per query)."""
    g = (grain or "auto").strip()
    if g not in ("raw", "auto", *GRAINS):
        raise Invalid("grain", f"unknown grain {g[:20]!r}; use raw, 1m, 1h, 1d or auto / 未知粒度")
    if every:
        chosen = every_of(every)
        if g == "raw":
            raise Invalid("every", "every needs aggregates, not grain=raw / every 不能与 raw 同用")
        if g in GRAINS:
            if chosen.every_ms % (GRAINS[g] * 1000):
                raise Invalid("every", f"must be a multiple of grain {g} / 须为粒度 {g} 的整数倍")
            return Grain(chosen.label, GRAINS[g], chosen.every_ms)
        return chosen
    if g == "auto":
        return None
    if g == "raw":
        return RAW
    return Grain(g, GRAINS[g], GRAINS[g] * 1000)


def fns_of(fn: str | Sequence[str] | None) -> tuple[str, ...]:
    """The aggregate functions asked for ("mean,max"), in a fixed order; default all but sum."""
    if fn is None or fn == "" or fn == []:
        return DEFAULT_FNS
    names = [p.strip() for p in (fn.split(",") if isinstance(fn, str) else fn) if p.strip()]
    for name in names:
        if name not in FNS:
            raise Invalid("fn", f"unknown function {name[:20]!r}; use {', '.join(FNS)} / 未知聚合函数")
    return tuple(f for f in FNS if f in names)


def check_range(start_ms: int, end_ms: int) -> None:
    """A half-open range [start, end) of epoch ms that is not empty."""
    if start_ms >= end_ms:
        raise Invalid("start", "start must be before end / 开始时间须早于结束时间")


# -- access --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRow:
    id: int
    thing_id: int
    kind: str
    name: str
    observation_type: str
    unit: Any
    start: int | None  # phenomenon span, for exports of "everything"
    end: int | None
    retention_days: int | None


def _deny_or_hide(session: Session, actor: Actor, target: Target) -> None:
    """Allow, or refuse as if the object did not exist (404) when the actor may read sensing
    at all; a role without sensing.read gets the plain 401/403."""
    if access.decide(actor, "sensing.read", target, session).allowed:
        return
    if not actor.authenticated or access.reach_of(actor, "sensing.read") is None:
        access.require(actor, "sensing.read", target, session)
    raise NotFound(target.kind.removeprefix("sensing.").capitalize(), target.id)


def readable_streams(session: Session, actor: Actor, ids: Sequence[int],
                     field_name: str = "datastreams") -> dict[int, StreamRow]:
    """The streams `ids` (at most 1000), each checked for sensing.read; 404 on the first one
    that is missing or belongs to a department the actor may not read."""
    wanted = list(dict.fromkeys(int(i) for i in ids))
    if not wanted:
        raise Invalid(field_name, "at least one datastream id / 至少一个数据流")
    if len(wanted) > MAX_IDS:
        raise Invalid(field_name, f"at most {MAX_IDS} datastreams per request / 每次最多 {MAX_IDS} 个数据流")
    rows = session.execute(
        select(Datastream.id, Datastream.thing_id, Datastream.kind, Datastream.name,
               Datastream.observation_type, Datastream.unit_of_measurement, Datastream.phenomenon_start,
               Datastream.phenomenon_end, Datastream.retention_days, Datastream.department_id,
               Department.path)
        .join(Department, Department.id == Datastream.department_id).where(Datastream.id.in_(wanted))
    ).all()
    found = {r.id: r for r in rows}
    out: dict[int, StreamRow] = {}
    for i in wanted:
        r = found.get(i)
        if r is None:
            raise NotFound("Datastream", i)
        _deny_or_hide(session, actor, Target(kind="sensing.datastream", id=i, department_id=r.department_id,
                                             department_path=r.path))
        out[i] = StreamRow(r.id, r.thing_id, r.kind, r.name, r.observation_type, r.unit_of_measurement,
                           r.phenomenon_start, r.phenomenon_end, r.retention_days)
    return out


def _numeric(stream: StreamRow) -> bool:
    return stream.kind != "multi" and stream.observation_type not in _NOT_NUMERIC


def _symbol(unit: Any) -> Any:
    if isinstance(unit, dict):
        return unit.get("symbol")
    if isinstance(unit, list):
        return [u.get("symbol") if isinstance(u, dict) else None for u in unit]
    return None


# -- SQL -----------------------------------------------------------------------------------------

# The rollup queries carry only integers (ids, grain, times, bucket width), checked and inlined
# as literals: one text for both databases, no GROUP BY expression that PostgreSQL would not
# match to its SELECT twin because of a different bind parameter, and rows fetched straight
# from the DBAPI cursor (720,000 of them for a month of hours of 1000 streams: SQLAlchemy's
# row objects would cost more than the query).


def _where(ids: Sequence[int], grain: Grain, start_ms: int, end_ms: int) -> str:
    """Source rollups of the whole answer buckets that meet [start, end)."""
    every = grain.every_ms
    lo, hi = int(start_ms) - int(start_ms) % every, int(end_ms) + (-int(end_ms)) % every
    return (f"r.datastream_id IN ({', '.join(str(int(i)) for i in ids)}) AND r.grain = {int(grain.source)} "
            f"AND r.bucket >= {lo} AND r.bucket < {hi}")


def _plain_sql(fns: Sequence[str], where: str) -> str:
    cols = {"count": "r.count", "min": "r.min", "max": "r.max", "sum": "r.sum",
            "mean": "r.sum / r.count", "last": "r.last_value"}
    return (f"SELECT r.datastream_id, r.bucket, {', '.join(cols[f] for f in fns)} FROM sensor_rollups r "
            f"WHERE {where} ORDER BY r.datastream_id, r.bucket")


def _grouped_sql(fns: Sequence[str], where: str, grain: Grain) -> str:
    e = int(grain.every_ms)
    cols = {"count": "CAST(sum(r.count) AS BIGINT)", "min": "min(r.min)", "max": "max(r.max)",
            "sum": "sum(r.sum)", "mean": "sum(r.sum) / CAST(sum(r.count) AS DOUBLE PRECISION)",
            "last": "max(r.last_time)"}
    inner = (f"SELECT r.datastream_id AS ds, r.bucket - r.bucket % {e} AS b, "
             f"{', '.join(f'{cols[f]} AS {f}_' for f in fns)} FROM sensor_rollups r "
             f"WHERE {where} GROUP BY r.datastream_id, r.bucket - r.bucket % {e}")
    if "last" not in fns:
        return f"SELECT ds, b, {', '.join(f'{f}_' for f in fns)} FROM ({inner}) q ORDER BY ds, b"
    # The last value of a group is that of its rollup row with the newest reading (last_time is
    # unique within a stream, so exactly one row matches).
    outs = ", ".join("l.last_value" if f == "last" else f"q.{f}_" for f in fns)
    return (f"SELECT q.ds, q.b, {outs} FROM ({inner}) q JOIN sensor_rollups l ON l.datastream_id = q.ds "
            f"AND l.grain = {int(grain.source)} AND l.bucket >= q.b AND l.bucket < q.b + {e} "
            "AND l.last_time = q.last_ ORDER BY q.ds, q.b")


def _aggregate(conn: Connection, ids: Sequence[int], grain: Grain, fns: Sequence[str], start_ms: int,
               end_ms: int) -> list[tuple[Any, ...]]:
    """Rows (stream, bucket, *fns) over the whole buckets that meet [start, end), ordered."""
    where = _where(ids, grain, start_ms, end_ms)
    plain = grain.every_ms == grain.source * 1000
    sql = _plain_sql(fns, where) if plain else _grouped_sql(fns, where, grain)
    cursor = conn.connection.cursor()  # inside the connection's transaction
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _raw_sql(limit: int) -> Any:
    return (select(Observation.phenomenon_time, Observation.phenomenon_time_end, Observation.result_number,
                   Observation.result_json)
            .where(Observation.datastream_id == bindparam("d"), Observation.phenomenon_time >= bindparam("s"),
                   Observation.phenomenon_time < bindparam("e"))
            .order_by(Observation.phenomenon_time).limit(limit))


def _more_than(session: Session, grain: Grain, ds: int, start_ms: int, end_ms: int, n: int) -> bool:
    """Are there more than n readings (or buckets of `grain`) in the range? Walks at most n+1
    index entries, so it is cheap for the small n that "auto" asks about."""
    if grain.raw:
        q = (select(Observation.phenomenon_time).where(
            Observation.datastream_id == ds, Observation.phenomenon_time >= start_ms,
            Observation.phenomenon_time < end_ms).order_by(Observation.phenomenon_time).offset(n).limit(1))
        return session.execute(q).first() is not None
    if grain.every_ms != grain.source * 1000:
        return (end_ms - (start_ms - start_ms % grain.every_ms)) // grain.every_ms > n
    q = text("SELECT bucket FROM sensor_rollups WHERE datastream_id = :d AND grain = :g AND bucket >= :s "
             "AND bucket < :e ORDER BY bucket LIMIT 1 OFFSET :n")
    return session.execute(q, {"d": ds, "g": grain.source, "s": start_ms - start_ms % grain.every_ms,
                               "e": end_ms, "n": n}).first() is not None


def auto_grain(session: Session, stream: StreamRow, start_ms: int, end_ms: int,
               max_points: int = MAX_POINTS) -> Grain:
    """The finest grain giving at most `max_points` points: raw when zoomed in, minute, hour or
    day rollups as the range grows (day if even that is more). Where retention has deleted the
    raw readings, rollups only (they are kept)."""
    if not _numeric(stream):
        return RAW
    keep = stream.retention_days
    pruned = keep is not None and keep > 0 and start_ms < ingest.now_ms() - keep * DAY_MS
    if not pruned and not _more_than(session, RAW, stream.id, start_ms, end_ms, max_points):
        return RAW
    for label in ("1m", "1h"):
        g = grain_of(label)
        assert g is not None
        if not _more_than(session, g, stream.id, start_ms, end_ms, max_points):
            return g
    return Grain("1d", 86400, DAY_MS)


# -- series ----------------------------------------------------------------------------------------


def _result(number: float | None, js: str | None) -> Any:
    return number if js is None else orjson.loads(js)


def series(session: Session, actor: Actor, datastream_id: int, *, start_ms: int, end_ms: int,
           grain: str | None = "auto", every: str | None = None, fn: str | Sequence[str] | None = None,
           limit: int | None = None, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """One stream's readings in [start, end): raw points, or per-bucket aggregates from the
    rollups (count, min, max, mean = sum/count, sum, last) over whole buckets meeting the range.

    Raw answers stop at `limit` points with `next` (the time to continue from); without a limit
    a range of more than 100,000 readings is refused with a hint to choose a grain."""
    check_range(start_ms, end_ms)
    chosen, fns = grain_of(grain, every), fns_of(fn)
    if not 1 <= max_points <= MAX_ROWS:
        raise Invalid("max_points", f"between 1 and {MAX_ROWS} / 须在 1 到 {MAX_ROWS} 之间")
    if limit is not None and not 1 <= limit <= MAX_ROWS:
        raise Invalid("limit", f"between 1 and {MAX_ROWS} / 须在 1 到 {MAX_ROWS} 之间")
    stream = readable_streams(session, actor, [datastream_id], "datastream")[datastream_id]
    if chosen is None:
        chosen = auto_grain(session, stream, start_ms, end_ms, max_points)
    out: dict[str, Any] = {
        "datastream": {"id": stream.id, "name": stream.name, "unit": _symbol(stream.unit)},
        "start": ms_to_iso(start_ms), "end": ms_to_iso(end_ms), "grain": chosen.label, "next": None,
    }
    if chosen.raw:
        cap = limit if limit is not None else MAX_ROWS
        rows = session.execute(_raw_sql(cap + 1), {"d": stream.id, "s": start_ms, "e": end_ms}).all()
        if len(rows) > cap:
            if limit is None:
                raise Invalid("grain", f"more than {MAX_ROWS} readings in this range; choose grain=1m, "
                                       "1h or 1d, or a shorter range / "
                                       f"区间内读数超过 {MAX_ROWS} 条，请选择聚合粒度或缩短区间")
            out["next"] = ms_to_iso(rows[cap][0])
            rows = rows[:cap]
        out["points"] = [_raw_point(r) for r in rows]
        return out
    if not _numeric(stream):
        raise Invalid("grain", NOT_NUMERIC)
    if (end_ms - (start_ms - start_ms % chosen.every_ms)) // chosen.every_ms > MAX_ROWS:
        raise Invalid("every" if every else "grain", f"more than {MAX_ROWS} buckets; choose a coarser grain "
                                                     f"or a shorter range / 聚合点数超过 {MAX_ROWS}")
    out["fn"] = list(fns)
    rows = _aggregate(session.connection(), [stream.id], chosen, fns, start_ms, end_ms)
    out["points"] = [{"time": ms_to_iso(r[1]), **dict(zip(fns, r[2:], strict=True))} for r in rows]
    return out


def _raw_point(r: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"time": ms_to_iso(r[0])}
    if r[1] is not None:
        p["time_end"] = ms_to_iso(r[1])
    if r[3] is None:
        p["value"] = r[2]
    else:
        p["result"] = orjson.loads(r[3])
    return p


def aggregate_many(session: Session, actor: Actor, datastream_ids: Sequence[int], start_ms: int, end_ms: int,
                   grain: str = "1h", fn: str = "mean") -> dict[int, list[tuple[int, Any]]]:
    """One aggregate of many streams (at most 1000) per bucket, in one query on the rollups:
    {stream: [(bucket epoch ms, value), ...]}. `grain` is 1m, 1h, 1d or any every like 15m."""
    check_range(start_ms, end_ms)
    chosen = grain_of(grain) if grain in GRAINS else every_of(grain, "grain")
    assert chosen is not None
    fns = fns_of(fn)
    if len(fns) != 1:
        raise Invalid("fn", "exactly one function / 只能指定一个聚合函数")
    streams = readable_streams(session, actor, datastream_ids)
    out: dict[int, list[tuple[int, Any]]] = {i: [] for i in streams}
    rows = _aggregate(session.connection(), list(streams), chosen, fns, start_ms, end_ms)
    for ds, group in groupby(rows, key=itemgetter(0)):
        out[ds] = [(b, v) for _, b, v in group]
    return out


# -- latest ------------------------------------------------------------------------------------


def latest(session: Session, actor: Actor, datastream_ids: Sequence[int] | None = None,
           thing_id: int | None = None) -> list[dict[str, Any]]:
    """The newest reading of many streams at once, from the streams' own summary (one query);
    a result that is not a number is read from its Observation in the same query."""
    if (datastream_ids is None) == (thing_id is None):
        raise Invalid("datastreams", "give datastreams or thing, not both / 须指定 datastreams 或 thing 之一")
    if thing_id is not None:
        row = session.execute(select(Thing.department_id, Department.path).join(
            Department, Department.id == Thing.department_id).where(Thing.id == thing_id)).first()
        if row is None:
            raise NotFound("Thing", thing_id)
        _deny_or_hide(session, actor, Target(kind="sensing.thing", id=thing_id,
                                             department_id=row.department_id, department_path=row.path))
        where = Datastream.thing_id == thing_id
    else:
        assert datastream_ids is not None
        where = Datastream.id.in_(list(readable_streams(session, actor, datastream_ids)))
    rows = session.execute(
        select(Datastream.id, Datastream.last_time, Datastream.last_value, Observation.result_json)
        .outerjoin(Observation, and_(Observation.datastream_id == Datastream.id,
                                     Observation.phenomenon_time == Datastream.last_time,
                                     Datastream.last_value.is_(None)))
        .where(where).order_by(Datastream.id)
    ).all()
    return [{"datastream_id": r.id, "time": ms_to_iso(r.last_time), "value": r.last_value,
             "result": _result(r.last_value, r.result_json)} for r in rows]


# -- exports -------------------------------------------------------------------------------------


@dataclass
class Export:
    """A streamed file: its name, media type, and its bytes in chunks (read lazily)."""

    filename: str
    media_type: str
    chunks: Iterator[bytes]


def _raw_pages(engine: Engine, ds: int, start_ms: int, end_ms: int, chunk: int) -> Iterator[Sequence[Any]]:
    """Raw readings in keyset pages, each read on a connection of its own, so a slow download
    holds no transaction open."""
    cursor = start_ms
    stmt = _raw_sql(chunk)
    while cursor < end_ms:
        with engine.connect() as conn:
            rows = conn.execute(stmt, {"d": ds, "s": cursor, "e": end_ms}).all()
        if rows:
            yield rows
        if len(rows) < chunk:
            return
        cursor = rows[-1][0] + 1


def _agg_pages(engine: Engine, ds: int, grain: Grain, fns: Sequence[str], start_ms: int, end_ms: int,
               chunk: int) -> Iterator[Sequence[Any]]:
    """Aggregated buckets, `chunk` buckets wide at a time, skipping stretches without data."""
    every = grain.every_ms
    cursor = start_ms - start_ms % every
    first = text("SELECT min(bucket) FROM sensor_rollups WHERE datastream_id = :d AND grain = :g "
                 "AND bucket >= :s AND bucket < :e")
    while cursor < end_ms:
        with engine.connect() as conn:
            found = conn.execute(first, {"d": ds, "g": grain.source, "s": cursor, "e": end_ms}).scalar()
            if found is None:
                return
            cursor = found - found % every
            stop = min(cursor + chunk * every, end_ms)
            rows = _aggregate(conn, [ds], grain, fns, cursor, stop)
        if rows:
            yield rows
        cursor += chunk * every


def _export_plan(session: Session, actor: Actor, datastream_id: int, start_ms: int | None, end_ms: int | None,
                 grain: str | None, every: str | None,
                 fn: str | Sequence[str] | None) -> tuple[StreamRow, Grain, tuple[str, ...], int, int]:
    chosen, fns = grain_of(grain or "raw", every), fns_of(fn)
    if chosen is None:
        raise Invalid("grain", "exports need raw, 1m, 1h, 1d or every / 导出须指定粒度")
    stream = readable_streams(session, actor, [datastream_id], "datastream")[datastream_id]
    if not chosen.raw and not _numeric(stream):
        raise Invalid("grain", NOT_NUMERIC)
    # An open end means "everything stored": the stream's own span bounds the scan.
    start = start_ms if start_ms is not None else (stream.start or 0)
    end = end_ms if end_ms is not None else (stream.end or 0) + 1
    if start_ms is not None and end_ms is not None:
        check_range(start, end)
    return stream, chosen, fns, start, max(end, start)


def _columns(chosen: Grain, fns: Sequence[str]) -> list[str]:
    return ["time", "time_end", "value", "result"] if chosen.raw else ["time", *fns]


def export_csv(session: Session, actor: Actor, datastream_id: int, *, start_ms: int | None = None,
               end_ms: int | None = None, grain: str | None = "raw", every: str | None = None,
               fn: str | Sequence[str] | None = None, chunk: int = CHUNK) -> Export:
    """CSV of raw readings or aggregates (UTF-8 with BOM so that Excel reads Chinese, a header,
    ISO 8601 UTC times). Access and parameters are checked now; rows are read as it streams."""
    stream, chosen, fns, start, end = _export_plan(session, actor, datastream_id, start_ms, end_ms, grain,
                                                   every, fn)
    engine = session.get_bind()
    assert isinstance(engine, Engine)

    def chunks() -> Iterator[bytes]:
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\r\n")
        out.writerow(_columns(chosen, fns))
        yield b"\xef\xbb\xbf" + buf.getvalue().encode()
        pages = (_raw_pages(engine, stream.id, start, end, chunk) if chosen.raw
                 else _agg_pages(engine, stream.id, chosen, fns, start, end, chunk))
        for rows in pages:
            buf.seek(0)
            buf.truncate()
            if chosen.raw:
                out.writerows((ms_to_iso(r[0]), ms_to_iso(r[1]) or "", "" if r[2] is None else r[2],
                               r[3] or "") for r in rows)
            else:
                out.writerows((ms_to_iso(r[1]), *("" if v is None else v for v in r[2:])) for r in rows)
            yield buf.getvalue().encode()

    return Export(f"datastream-{stream.id}-{chosen.label}.csv", "text/csv; charset=utf-8", chunks())


class _Sink:
    """A write-only file for pyarrow's ParquetWriter whose bytes are taken as they come."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0
        self.closed = False

    def write(self, data: Any) -> int:
        b = bytes(data)
        self.parts.append(b)
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def export_parquet(session: Session, actor: Actor, datastream_id: int, *, start_ms: int | None = None,
                   end_ms: int | None = None, grain: str | None = "raw", every: str | None = None,
                   fn: str | Sequence[str] | None = None, chunk: int = CHUNK) -> Export:
    """Parquet of raw readings or aggregates, typed (time timestamp[ms, UTC], value double,
    count int64, ...), one row group per chunk, streamed as it is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stream, chosen, fns, start, end = _export_plan(session, actor, datastream_id, start_ms, end_ms, grain,
                                                   every, fn)
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    ts = pa.timestamp("ms", tz="UTC")
    if chosen.raw:
        fields = [("time", ts), ("time_end", ts), ("value", pa.float64()), ("result", pa.string())]
    else:
        fields = [("time", ts)] + [(f, pa.int64() if f == "count" else pa.float64()) for f in fns]
    meta = {"datastream_id": str(stream.id), "datastream_name": stream.name,
            "unit": orjson.dumps(stream.unit).decode(), "grain": chosen.label}
    schema = pa.schema(fields, metadata=meta)

    def chunks() -> Iterator[bytes]:
        sink = _Sink()
        writer = pq.ParquetWriter(sink, schema, compression="zstd")
        try:
            pages = (_raw_pages(engine, stream.id, start, end, chunk) if chosen.raw
                     else _agg_pages(engine, stream.id, chosen, fns, start, end, chunk))
            for rows in pages:
                cols = list(zip(*rows, strict=True))
                arrays = cols if chosen.raw else cols[1:]
                writer.write_table(pa.table(
                    [pa.array(a, type=t) for a, (_, t) in zip(arrays, fields, strict=True)], schema=schema))
                yield sink.take()
        finally:
            writer.close()
        yield sink.take()

    name = f"datastream-{stream.id}-{chosen.label}.parquet"
    return Export(name, "application/vnd.apache.parquet", chunks())


# -- retention -----------------------------------------------------------------------------------


def apply_retention(session: Session, now_ms: int, *, chunk: int = CHUNK) -> dict[int, int]:
    """Delete raw readings older than each stream's retention_days (保留期限); rollups stay, so
    charts of old periods still work. Deletes `chunk` rows per transaction (commits as it goes)
    and audits each stream's count with its last chunk. Run periodically by the runtime."""
    streams = session.execute(select(Datastream.id, Datastream.retention_days)
                              .where(Datastream.retention_days > 0).order_by(Datastream.id)).all()
    session.commit()
    delete = text("DELETE FROM sensor_observations WHERE id IN (SELECT id FROM sensor_observations "
                  "WHERE datastream_id = :d AND phenomenon_time < :c LIMIT :n)")
    deleted: dict[int, int] = {}
    for ds, days in streams:
        cutoff = now_ms - days * DAY_MS
        total = 0
        while True:
            n = session.execute(delete, {"d": ds, "c": cutoff, "n": chunk}).rowcount or 0  # type: ignore[attr-defined]
            total += n
            if n < chunk and total:
                audit.append(session, actor="system", action="sensing.retention",
                             object_type="sensing.datastream", object_id=ds,
                             detail={"deleted": total, "before": ms_to_iso(cutoff), "retention_days": days})
            session.commit()
            if n < chunk:
                break
        if total:
            deleted[ds] = total
    return deleted


# -- devices overview (设备总览) ---------------------------------------------------------------


def _scope(session: Session, actor: Actor) -> list[int] | None:
    """Departments whose devices a list may show (None: all); 401/403 if none at all."""
    if access.reach_of(actor, "sensing.read") is None:
        access.require(actor, "sensing.read", Target(kind="sensing.thing"), session)
    return readable_departments(session, actor)


def _status_expr(now_ms: int) -> Any:
    smallest = (select(func.min(Datastream.interval_seconds)).where(Datastream.thing_id == Thing.id)
                .correlate(Thing).scalar_subquery())
    alerting = exists().where(Alert.thing_id == Thing.id, Alert.state != "resolved")
    # BIGINT literals: PostgreSQL would type a bare Python int as INTEGER and overflow.
    stale = Thing.last_seen_at < (literal(now_ms, BigInteger)
                                  - literal(3000, BigInteger) * func.coalesce(smallest, DEFAULT_INTERVAL_S))
    return case((alerting, "alerting"), (Thing.last_seen_at.is_(None) | stale, "offline"), else_="online")


def _filters(session: Session, depts: list[int] | None, kind: str | None, q: str | None,
             department: str | None) -> list[Any]:
    where: list[Any] = []
    if depts is not None:
        where.append(Thing.department_id.in_(depts))
    if kind:
        where.append(Thing.kind == kind)
    if q:
        where.append(Thing.name.icontains(q, autoescape=True)
                     | Thing.device_key.icontains(q, autoescape=True))
    if department:
        path = session.scalar(select(Department.path).where(Department.code == department))
        if path is None:
            raise Invalid("department", f"unknown department {department[:32]!r} / 未知部门")
        where.append(Thing.department_id.in_(select(Department.id).where(Department.path.startswith(path))))
    return where


def things_overview(session: Session, actor: Actor, *, status: str | None = None, kind: str | None = None,
                    q: str | None = None, department: str | None = None, limit: int = 50, offset: int = 0,
                    now_ms: int | None = None) -> dict[str, Any]:
    """Devices for the console (设备列表): place, last contact, status (alerting if it has an
    unresolved alert; offline if silent for 3 × its shortest interval, or never seen; else
    online) and its streams' newest values. Two queries, whatever the page size."""
    if status is not None and status not in STATUSES:
        raise Invalid("status", f"one of {', '.join(STATUSES)} / 状态须为 online、offline 或 alerting")
    if not 1 <= limit <= 500:
        raise Invalid("limit", "between 1 and 500 / 须在 1 到 500 之间")
    if offset < 0:
        raise Invalid("offset", "0 or more / 不能为负数")
    depts = _scope(session, actor)
    now = now_ms if now_ms is not None else ingest.now_ms()
    state = _status_expr(now)
    where = _filters(session, depts, kind, q, department)
    if status:
        where.append(state == status)

    def first_location(col: Any) -> Any:
        return (select(col).join(thing_locations, thing_locations.c.location_id == Location.id)
                .where(thing_locations.c.thing_id == Thing.id).order_by(Location.id).limit(1)
                .correlate(Thing).scalar_subquery())

    page = session.execute(
        select(Thing.id, Thing.name, Thing.kind, Thing.last_seen_at, Department.code,
               Department.name.label("dn"), first_location(Location.lon).label("lon"),
               first_location(Location.lat).label("lat"),
               state.label("status"), func.count().over().label("total"))
        .join(Department, Department.id == Thing.department_id).where(*where)
        .order_by(Thing.name, Thing.id).limit(limit).offset(offset)
    ).all()
    if page:
        total = page[0].total
    else:  # past the end: the window count has no row to ride on
        total = session.scalar(select(func.count()).select_from(Thing).where(*where)) or 0
    streams: dict[int, list[dict[str, Any]]] = {r.id: [] for r in page}
    if page:
        for s in session.execute(
            select(Datastream.id, Datastream.thing_id, Datastream.name, Datastream.unit_of_measurement,
                   ObservedProperty.name.label("op"), Datastream.last_time, Datastream.last_value)
            .outerjoin(ObservedProperty, ObservedProperty.id == Datastream.observed_property_id)
            .where(Datastream.thing_id.in_(list(streams))).order_by(Datastream.thing_id, Datastream.id)
        ):
            streams[s.thing_id].append({"id": s.id, "name": s.name, "unit": _symbol(s.unit_of_measurement),
                                        "observed_property": s.op, "last_time": ms_to_iso(s.last_time),
                                        "last_value": s.last_value})
    items = [{"id": r.id, "name": r.name, "kind": r.kind, "department": {"code": r.code, "name": r.dn},
              "lon": r.lon, "lat": r.lat, "last_seen_at": ms_to_iso(r.last_seen_at), "status": r.status,
              "datastreams": streams[r.id]} for r in page]
    return {"items": items, "total": int(total), "limit": limit, "offset": offset}


def status_counts(session: Session, actor: Actor, *, now_ms: int | None = None) -> dict[str, int]:
    """How many readable devices are online, offline and alerting (one GROUP BY)."""
    depts = _scope(session, actor)
    state = _status_expr(now_ms if now_ms is not None else ingest.now_ms()).label("status")
    q = select(state, func.count()).select_from(Thing)
    if depts is not None:
        q = q.where(Thing.department_id.in_(depts))
    counts = dict.fromkeys(STATUSES, 0)
    for name, n in session.execute(q.group_by(state)).all():
        counts[name] = int(n)
    counts["total"] = sum(counts.values())
    return counts
