"""Ingest (数据接入): check readings, queue them, write them in batches, acknowledge when durable.

Every path in — SensorThings POSTs, `CreateObservations`, the compact bulk API, MQTT — turns its
payload into `store.Row` tuples with `reading_row` and hands them to the one `Writer` of the
process. The writer thread drains its queue into one transaction per batch (group commit), and
only after COMMIT resolves each submitter's future: an HTTP 2xx or an MQTT PUBACK is sent only
for readings that are on disk. A full queue refuses new work (`Busy` → 429 with Retry-After;
MQTT waits, which holds back PUBACKs and so the publishers) instead of buffering without limit.

After each commit the new readings go to the listeners (rules, MQTT fan-out, live views), which
must only hand them on: they run on the writer thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from cityos.core.errors import CityOSError, Invalid, NotFound
from cityos.core.models import Department
from cityos.sensing import store
from cityos.sensing.models import Datastream, FeatureOfInterest, Location, Thing, thing_locations
from cityos.sensing.store import Row, Written

log = logging.getLogger("cityos.sensing.ingest")

MAX_FUTURE_MS = 10 * 60 * 1000  # readings stamped later than now + 10 minutes are refused
MIN_TIME_MS = 0  # and anything before 1970
OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
MEASUREMENT = OM + "OM_Measurement"
COUNT = OM + "OM_CountObservation"
TRUTH = OM + "OM_TruthObservation"
CATEGORY = OM + "OM_CategoryObservation"
ANY = OM + "OM_Observation"
COMPLEX = OM + "OM_ComplexObservation"  # a MultiDatastream's type


class Busy(CityOSError):
    """The store is behind (写入繁忙): retry after a moment (429 with Retry-After)."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(detail="ingest queue is full, retry later / 写入队列已满，请稍后重试", status=429,
                         title="Too many requests", type_slug="busy", extra={"retry_after": retry_after})


def now_ms() -> int:
    return int(time.time() * 1000)


def to_ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def ms_to_iso(ms: int | None) -> str | None:
    """Epoch ms as ISO 8601 UTC with milliseconds ("2026-11-21T02:00:00.000Z")."""
    if ms is None:
        return None
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: Any, field_name: str, now: int | None = None) -> int:
    """A reading's time as epoch ms: ISO 8601 with a time zone, or epoch milliseconds.

    Naive times are refused (whose clock?), and so are times far in the future."""
    if isinstance(value, bool) or value is None:
        raise Invalid(field_name, "a time is required / 缺少时间")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):  # isfinite() overflows on a huge int
            raise Invalid(field_name, "not a time / 不是有效时间")
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise Invalid(field_name, f"not an ISO 8601 time: {value[:40]!r} / 时间格式错误") from None
        if parsed.tzinfo is None:
            raise Invalid(field_name, "time without time zone; add Z or +08:00 / 时间缺少时区") from None
        ms = int(parsed.timestamp() * 1000)
    else:
        raise Invalid(field_name, "a time must be an ISO 8601 string or epoch milliseconds / 时间格式错误")
    if ms < MIN_TIME_MS:
        raise Invalid(field_name, "time before 1970 / 时间早于 1970 年")
    if ms > (now if now is not None else now_ms()) + MAX_FUTURE_MS:
        raise Invalid(field_name, "time is in the future / 时间晚于当前时间")
    return ms


def parse_interval(value: Any, field_name: str, now: int | None = None) -> tuple[int, int | None]:
    """A phenomenonTime: an instant, or an ISO 8601 interval "start/end"."""
    if isinstance(value, str) and "/" in value:
        start, _, end = value.partition("/")
        a, b = parse_time(start, field_name, now), parse_time(end, field_name, now)
        if b < a:
            raise Invalid(field_name, "interval ends before it starts / 时间区间结束早于开始")
        return a, b
    return parse_time(value, field_name, now), None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What ingest must know of a stream to accept a reading, cached in memory."""

    id: int
    kind: str  # single|multi
    department_id: int
    department_path: str
    thing_id: int
    device_key: str | None
    observation_type: str
    members: int  # a MultiDatastream's number of observed properties; 0 for a single stream
    member_types: tuple[str, ...]
    foi_id: int | None  # the FeatureOfInterest made from the Thing's Location


def check_result(info: StreamInfo, value: Any, field_name: str) -> tuple[float | None, str | None]:
    """(result_number, result_json) of a result, checked against the stream's observation type."""
    if info.kind == "multi":
        if not isinstance(value, list) or len(value) != info.members:
            raise Invalid(field_name, f"a MultiDatastream result is an array of {info.members} values / "
                                      f"多数据流结果应为 {info.members} 个值的数组")
        for i, (item, typ) in enumerate(zip(value, info.member_types, strict=False)):
            _typed(typ, item, f"{field_name}[{i}]")
        return None, orjson.dumps(value).decode()
    return _typed(info.observation_type, value, field_name)


def _typed(typ: str, value: Any, field_name: str) -> tuple[float | None, str | None]:
    if typ == MEASUREMENT:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Invalid(field_name, "a measurement must be a finite number / 测量值应为有限数字")
        return float(value), None
    if typ == COUNT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(field_name, "a count must be an integer / 计数应为整数")
        return float(value), None
    if typ == TRUTH:
        if not isinstance(value, bool):
            raise Invalid(field_name, "a truth observation must be true or false / 应为 true 或 false")
        return None, "true" if value else "false"
    if typ == CATEGORY:
        if not isinstance(value, str):
            raise Invalid(field_name, "a category must be a string / 分类值应为字符串")
        return None, orjson.dumps(value).decode()
    if value is None:
        raise Invalid(field_name, "result is required / 缺少结果")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise Invalid(field_name, "not a finite number / 不是有限数字")
        return float(value), None
    return None, orjson.dumps(value).decode()


def observation_json(row: Row, obs_id: int, base_url: str = "") -> dict[str, Any]:
    """A stored reading as a SensorThings Observation entity (as sent to MQTT subscribers)."""
    result: Any = row[4] if row[5] is None else orjson.loads(row[5])
    if row[4] is not None and float(row[4]).is_integer() and row[5] is None:
        result = row[4]
    t = ms_to_iso(row[1])
    if row[2] is not None:
        t = f"{t}/{ms_to_iso(row[2])}"
    out: dict[str, Any] = {
        "@iot.id": obs_id,
        "@iot.selfLink": f"{base_url}/sta/v1.1/Observations({obs_id})",
        "phenomenonTime": t,
        "resultTime": ms_to_iso(row[3]),
        "result": result,
    }
    if row[6] is not None:
        out["resultQuality"] = orjson.loads(row[6])
    if row[7] is not None:
        out["validTime"] = f"{ms_to_iso(row[7])}/{ms_to_iso(row[8])}"
    if row[9] is not None:
        out["parameters"] = orjson.loads(row[9])
    link = f"{base_url}/sta/v1.1/Observations({obs_id})"
    out["Datastream@iot.navigationLink"] = f"{link}/Datastream"
    out["FeatureOfInterest@iot.navigationLink"] = f"{link}/FeatureOfInterest"
    return out


def compact_row(info: StreamInfo, item: Any, field_name: str, now: int) -> Row:
    """A row from a device's compact reading {"t": time, "v": value} (t defaults to now)."""
    if not isinstance(item, Mapping):
        raise Invalid(field_name, 'a reading is an object {"t": ..., "v": ...} / 读数应为对象')
    extra = set(item) - {"t", "v", "ds"}
    if extra:
        raise Invalid(f"{field_name}.{sorted(extra)[0]}", "unknown field / 未知字段")
    t = parse_time(item["t"], f"{field_name}.t", now) if "t" in item else now
    if "v" not in item:
        raise Invalid(f"{field_name}.v", "required / 必填")
    number, js = check_result(info, item["v"], f"{field_name}.v")
    return (info.id, t, None, None, number, js, None, None, None, None, info.foi_id)


class Streams:
    """Stream facts by id, loaded on first use, dropped by `forget` when a stream changes here, and
    reloaded after `ttl` seconds anyway: another process (the CLI re-keying a device, a second
    worker) may have changed them."""

    def __init__(self, engine: Engine, ttl: float = 60.0, max_entries: int = 200_000) -> None:
        self.engine = engine
        self.ttl = ttl
        # Ids that do not exist are remembered too (as None), so a sender of made-up ids could
        # otherwise grow the cache without end: past `max_entries` the stale ones go, or all.
        self.max_entries = max_entries
        self._cache: dict[int, tuple[StreamInfo | None, float]] = {}
        self._lock = threading.Lock()

    def forget(self, datastream_id: int | None = None) -> None:
        with self._lock:
            if datastream_id is None:
                self._cache.clear()
            else:
                self._cache.pop(datastream_id, None)

    def _fresh(self, datastream_id: int, now: float) -> tuple[bool, StreamInfo | None]:
        hit = self._cache.get(datastream_id)
        if hit is None or hit[1] < now:
            return False, None
        return True, hit[0]

    def get(self, datastream_id: int) -> StreamInfo | None:
        known, info = self._fresh(datastream_id, time.monotonic())
        if known:
            return info
        return self.load([datastream_id]).get(datastream_id)

    def many(self, ids: Iterable[int]) -> dict[int, StreamInfo]:
        now = time.monotonic()
        out: dict[int, StreamInfo] = {}
        missing = []
        for i in set(ids):
            known, info = self._fresh(i, now)
            if not known:
                missing.append(i)
            elif info is not None:
                out[i] = info
        if missing:
            out.update(self.load(missing))
        return out

    def load(self, ids: Sequence[int]) -> dict[int, StreamInfo]:
        found: dict[int, StreamInfo] = {}
        fois: dict[int, int | None] = {}
        with Session(self.engine) as session:
            for i in range(0, len(ids), 500):
                rows = session.execute(
                    select(Datastream, Thing.device_key, Department.path)
                    .join(Thing, Thing.id == Datastream.thing_id)
                    .join(Department, Department.id == Datastream.department_id)
                    .where(Datastream.id.in_(list(ids[i:i + 500])))
                ).all()
                for ds, device_key, path in rows:
                    if ds.thing_id not in fois:
                        fois[ds.thing_id] = auto_feature(session, ds.thing_id)
                    members = len(ds.unit_of_measurement) if ds.kind == "multi" else 0
                    found[ds.id] = StreamInfo(
                        ds.id, ds.kind, ds.department_id, path, ds.thing_id, device_key, ds.observation_type,
                        members, tuple(ds.multi_observation_types or ()), fois[ds.thing_id])
            session.commit()
        now = time.monotonic()
        until = now + self.ttl
        with self._lock:
            if len(self._cache) + len(ids) > self.max_entries:
                self._cache = {k: v for k, v in self._cache.items() if v[1] >= now}
                if len(self._cache) + len(ids) > self.max_entries:
                    self._cache.clear()
            for i in ids:
                self._cache[i] = (found.get(i), until)
        return found

    def require(self, datastream_id: int, field_name: str = "datastream") -> StreamInfo:
        info = self.get(datastream_id)
        if info is None:
            raise NotFound("Datastream / 数据流", datastream_id)
        return info


def auto_feature(session: Session, thing_id: int) -> int | None:
    """The FeatureOfInterest of a Thing's (first) Location, made on first need, as STA asks."""
    loc = session.execute(
        select(Location).join(thing_locations, thing_locations.c.location_id == Location.id)
        .where(thing_locations.c.thing_id == thing_id).order_by(Location.id).limit(1)
    ).scalar_one_or_none()
    if loc is None:
        return None
    foi = session.execute(select(FeatureOfInterest.id).where(FeatureOfInterest.location_id == loc.id)
                          .limit(1)).scalar_one_or_none()
    if foi is not None:
        return foi
    row = FeatureOfInterest(name=loc.name, description=loc.description or loc.name,
                            encoding_type=loc.encoding_type, feature=loc.location, location_id=loc.id)
    session.add(row)
    session.flush()
    return row.id


Listener = Callable[[Written], None]  # gets the committed new rows and their Observation ids


@dataclass
class _Job:
    rows: list[Row]
    future: Future[Written]


@dataclass
class Stats:
    accepted: int = 0  # rows handed to the writer
    stored: int = 0
    duplicates: int = 0
    batches: int = 0
    failed_batches: int = 0
    refused_busy: int = 0
    caught_up: int = 0  # readings rolled up at start after a crash
    device_errors: dict[str, int] = field(default_factory=dict)  # per device key (or "user")


class Writer:
    """The process's one writer of readings: a bounded queue and a thread doing group commits."""

    def __init__(self, engine: Engine, *, max_pending: int = 200_000, max_batch: int = 20_000,
                 sqlite_cache_mb: int = 8, flush_seconds: float = 1.0) -> None:
        self.engine = engine
        # Readings of many streams land all over the (stream, time) index: a larger page cache than
        # SQLite's 2 MB default keeps those pages in memory. It is set on the writer's own connection
        # only (see `_connection`), so the process holds one such cache, not one per pooled connection.
        sqlite = engine.dialect.name == "sqlite"
        self._pragmas = [f"PRAGMA cache_size=-{sqlite_cache_mb * 1024}",
                         # An acknowledged reading must survive a power cut, not only a crash: the
                         # writer fsyncs each batch's commit (one per batch, not per reading).
                         "PRAGMA synchronous=FULL"] if sqlite else []
        self._conn: Connection | None = None
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.streams = Streams(engine)
        self.owed = store.Pending()  # rollups and summaries of committed readings, not yet written
        self.flush_seconds = flush_seconds
        self._flushed_at = time.monotonic()
        self._caught_up = False
        self.stats = Stats()
        self._listeners: list[Listener] = []
        self._queue: deque[_Job] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- submitting ------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def submit(self, rows: list[Row], block: bool = False, timeout: float | None = None) -> Future[Written]:
        """Queue rows; the future resolves after their COMMIT. Busy when the queue is full
        (or, with block=True, after waiting `timeout` seconds for room)."""
        fut: Future[Written] = Future()
        if not rows:
            fut.set_result(Written([], 0))
            return fut
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending + len(rows) > self.max_pending and self._pending > 0:
                if not block:
                    self.stats.refused_busy += 1
                    raise Busy()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self.stats.refused_busy += 1
                    raise Busy()
                self._cond.wait(remaining if remaining is not None else 0.5)
            self._queue.append(_Job(rows, fut))
            self._pending += len(rows)
            self.stats.accepted += len(rows)
            self._cond.notify_all()
        return fut

    async def write(self, rows: list[Row]) -> Written:
        """Submit and wait without blocking the event loop (HTTP handlers)."""
        return await asyncio.wrap_future(self.submit(rows))

    def write_sync(self, rows: list[Row], timeout: float = 60) -> Written:
        return self.submit(rows, block=True, timeout=timeout).result(timeout)

    @property
    def pending(self) -> int:
        return self._pending

    # -- the writer thread ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="cityos-ingest-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def _take(self) -> list[_Job]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait(0.5)
            jobs: list[_Job] = []
            n = 0
            while self._queue and (not jobs or n + len(self._queue[0].rows) <= self.max_batch):
                job = self._queue.popleft()
                jobs.append(job)
                n += len(job.rows)
            return jobs

    def _release(self, n: int) -> None:
        with self._cond:
            self._pending -= n
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                jobs = self._take()
                if not jobs:
                    if self.owed:
                        try:
                            self.settle()
                        except Exception:  # retried on the next batch or idle turn; catch_up covers a crash
                            log.exception("writing rollups failed")
                    if self._stopping:
                        return
                    continue
                self._flush(jobs)
        finally:
            self._close_connection()

    def _connection(self) -> Connection:
        """The writer thread's own connection, kept from batch to batch (opened again after a failure).

        Taking a pooled connection per batch would hand the writer a different one each time: each
        of them would get the writer's large page cache and fill it, and each would find its cache
        stale (another connection wrote since) and start it over."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            conn = self.engine.connect()
            with conn.begin():
                for pragma in self._pragmas:
                    conn.exec_driver_sql(pragma)
            self._conn = conn
        return self._conn

    def _close_connection(self) -> None:
        """Close the writer's connection for good rather than hand it back to the pool with the
        writer's settings (its page cache size, synchronous=FULL)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.invalidate()
            conn.close()
        except Exception:  # a connection that is already broken: nothing left to close
            log.debug("closing the writer's connection failed", exc_info=True)

    def _flush(self, jobs: list[_Job], again: bool = False) -> None:
        rows = [r for job in jobs for r in job.rows]
        thing_of = {info.id: info.thing_id for info in self.streams.many({r[0] for r in rows}).values()}
        batch = store.Pending()
        settle = False
        try:
            conn = self._connection()
            with conn.begin():
                if not self._caught_up:
                    self.stats.caught_up += store.catch_up(conn)
                written = store.write(conn, rows, thing_of, now_ms(), owed=batch)
                # Rollups and summaries go with this batch when nothing else waits (at low load a
                # query never sees a reading without its rollup), else at most a second later.
                settle = not self._queue or time.monotonic() - self._flushed_at >= self.flush_seconds
                if settle:
                    store.flush(conn, self.owed.merged(batch))
        except Exception as exc:  # nothing of the batch is stored: fail each submitter, keep running
            self._close_connection()
            if getattr(exc, "connection_invalidated", False) and not again:
                # The database dropped the kept connection (a restart, a failover): the pool would
                # have found that out before handing it over; retry once on a fresh one.
                log.warning("the writer's database connection was lost; retrying the batch")
                self._flush(jobs, again=True)
                return
            log.exception("ingest batch of %d readings failed", len(rows))
            self.stats.failed_batches += 1
            self._release(len(rows))
            if len(jobs) > 1:  # one bad job must not sink its neighbours: retry each on its own
                for job in jobs:
                    self._flush_one(job)
                return
            for job in jobs:
                job.future.set_exception(exc)
            return
        self._caught_up = True
        if settle:
            self.owed = store.Pending()
            self._flushed_at = time.monotonic()
        else:
            self.owed.absorb(batch)
        self.stats.batches += 1
        self.stats.stored += len(written.new)
        self.stats.duplicates += written.duplicates
        self._release(len(rows))
        self._notify(written)  # listeners only enqueue; then the submitters learn it is stored
        self._resolve(jobs, written)

    def settle(self) -> None:
        """Write what committed readings still owe the rollups (at shutdown, and when idle)."""
        if not self.owed:
            return
        conn = self._connection()
        try:
            with conn.begin():
                store.flush(conn, self.owed)
        except Exception:
            self._close_connection()
            raise
        self.owed = store.Pending()
        self._flushed_at = time.monotonic()

    def _flush_one(self, job: _Job) -> None:
        with self._cond:
            self._pending += len(job.rows)
        self._flush([job])

    def _resolve(self, jobs: list[_Job], written: Written) -> None:
        if len(jobs) == 1:
            jobs[0].future.set_result(written)
            return
        id_of = {(r[0], r[1]): i for r, i in zip(written.new, written.ids, strict=True)}
        for job in jobs:
            mine = [r for r in job.rows if (r[0], r[1]) in id_of]
            ids = [id_of.pop((r[0], r[1])) for r in mine]
            job.future.set_result(Written(mine, len(job.rows) - len(mine), ids))

    def _notify(self, written: Written) -> None:
        if not written.new:
            return
        for listener in list(self._listeners):
            try:
                listener(written)
            except Exception:  # a listener's failure never undoes a stored reading
                log.exception("ingest listener %r failed", listener)

    def count_error(self, who: str | None) -> None:
        key = who or "unknown"
        self.stats.device_errors[key] = self.stats.device_errors.get(key, 0) + 1
