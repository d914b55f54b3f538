"""Writing readings (观测写入): one batch, one transaction — readings, rollups, stream summary.

The one adapter module of sensing that knows the two databases apart. A batch is a list of
plain tuples (`Row`), written with the DBAPI's executemany on SQLite and SQLAlchemy's
insertmanyvalues (with RETURNING) on PostgreSQL, never as ORM objects.

De-duplication on (datastream, phenomenon time) must be exact, because rollups count what was
stored. On PostgreSQL `ON CONFLICT DO NOTHING RETURNING` says which rows were new. On SQLite the
rowids say it: the writing transaction holds the database's write lock, so the rows past the
largest id before the insert are exactly the new ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

# (datastream_id, phenomenon_time, phenomenon_time_end, result_time, result_number, result_json,
#  result_quality, valid_time_start, valid_time_end, parameters, feature_of_interest_id)
Row = tuple[int, int, int | None, int | None, float | None, str | None, str | None, int | None,
            int | None, str | None, int | None]
COLUMNS = ("datastream_id", "phenomenon_time", "phenomenon_time_end", "result_time", "result_number",
           "result_json", "result_quality", "valid_time_start", "valid_time_end", "parameters",
           "feature_of_interest_id")
DS, T, T_END, RESULT_TIME, NUMBER, JSON_RESULT, QUALITY, VALID_START, VALID_END, PARAMS, FOI = range(11)
GRAINS = (60, 3600, 86400)  # rollup bucket sizes in seconds: minute, hour, day

_INSERT = (f"INSERT INTO sensor_observations ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT DO NOTHING")


@dataclass
class Written:
    """What a batch did: the rows that were new (in input order), their Observation ids (same
    order), and how many readings were repeats."""

    new: list[Row]
    duplicates: int
    ids: list[int] = field(default_factory=list)


def _dialect(conn: Connection) -> str:
    return conn.dialect.name


def _unique_in_batch(rows: Iterable[Row]) -> tuple[list[Row], int]:
    """Drop repeats within the batch itself; the first reading of a (stream, time) wins."""
    seen: set[tuple[int, int]] = set()
    out: list[Row] = []
    for row in rows:
        key = (row[0], row[1])
        if key in seen:
            continue
        seen.add(key)
        out.append(row)
    return out, 0


def _write_sqlite(conn: Connection, rows: list[Row]) -> tuple[list[Row], list[int]]:
    """Insert with ON CONFLICT DO NOTHING and learn what was new from the rowids: the transaction
    holds SQLite's write lock, so every row past the previous largest id is one of ours, and when
    nothing was skipped they are exactly ours, in order."""
    raw = conn.connection.driver_connection
    assert raw is not None
    if not rows:
        return rows, []
    before = raw.execute("SELECT max(id) FROM sensor_observations").fetchone()[0] or 0
    cur = raw.cursor()
    cur.executemany(_INSERT, rows)
    inserted = cur.rowcount
    cur.close()
    if inserted == len(rows):
        return rows, list(range(before + 1, before + 1 + len(rows)))
    found = {(ds, t): i for i, ds, t in raw.execute(
        "SELECT id, datastream_id, phenomenon_time FROM sensor_observations WHERE id > ?", (before,))}
    new = [r for r in rows if (r[0], r[1]) in found]
    return new, [found[(r[0], r[1])] for r in new]


_PG_TYPES = ("int", "bigint", "bigint", "bigint", "float8", "text", "text", "bigint", "bigint", "text", "int")
_PG_INSERT = (
    f"INSERT INTO sensor_observations ({', '.join(COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _PG_TYPES)
    + ") ON CONFLICT DO NOTHING RETURNING datastream_id, phenomenon_time, id"
)


def _columns_of(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _write_postgresql(conn: Connection, rows: list[Row]) -> tuple[list[Row], list[int]]:
    """One INSERT ... SELECT FROM unnest(one array per column) per 20,000 rows: PostgreSQL parses
    one short statement instead of a huge multi-VALUES one, and RETURNING says which were new."""
    created: dict[tuple[int, int], int] = {}
    for i in range(0, len(rows), 20_000):
        chunk = rows[i:i + 20_000]
        result = conn.exec_driver_sql(_PG_INSERT, tuple(_columns_of(chunk, len(COLUMNS))))
        created.update(((a, b), c) for a, b, c in result)
    new = [r for r in rows if (r[0], r[1]) in created]
    return new, [created[(r[0], r[1])] for r in new]


def rollup_rows(rows: Sequence[Row]) -> list[tuple[int, int, int, int, float, float, float, int, float]]:
    """Aggregate numeric readings per (stream, grain, bucket): count, min, max, sum, last.

    numpy does the grouping: a batch of 20,000 readings costs a few milliseconds, not a Python
    loop per reading per grain.
    """
    numeric = [(r[0], r[1], r[4]) for r in rows if r[4] is not None]
    if not numeric:
        return []
    arr = np.array(numeric, dtype=np.float64)
    ds = arr[:, 0].astype(np.int64)
    t = arr[:, 1].astype(np.int64)
    v = arr[:, 2]
    out: list[tuple[int, int, int, int, float, float, float, int, float]] = []
    for grain in GRAINS:
        ms = grain * 1000
        bucket = t - t % ms
        order = np.lexsort((t, bucket, ds))
        d_s, b_s, t_s, v_s = ds[order], bucket[order], t[order], v[order]
        change = np.empty(len(order), dtype=bool)
        change[0] = True
        change[1:] = (d_s[1:] != d_s[:-1]) | (b_s[1:] != b_s[:-1])
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], len(order)) - 1
        counts = np.diff(np.append(starts, len(order)))
        mins = np.minimum.reduceat(v_s, starts)
        maxs = np.maximum.reduceat(v_s, starts)
        sums = np.add.reduceat(v_s, starts)
        out.extend(zip(d_s[starts].tolist(), [grain] * len(starts), b_s[starts].tolist(), counts.tolist(),
                       mins.tolist(), maxs.tolist(), sums.tolist(), t_s[ends].tolist(), v_s[ends].tolist(),
                       strict=True))
    return out


def _least(dialect: str) -> tuple[str, str]:
    return ("min", "max") if dialect == "sqlite" else ("LEAST", "GREATEST")


def _upsert_rollups(conn: Connection, agg: Sequence[Sequence[Any]]) -> None:
    if not agg:
        return
    lo, hi = _least(_dialect(conn))
    r = "sensor_rollups"
    sql = (
        f"INSERT INTO {r} (datastream_id, grain, bucket, count, min, max, sum, last_time, last_value) "
        "VALUES (:d, :g, :b, :c, :mn, :mx, :s, :lt, :lv) "
        "ON CONFLICT (datastream_id, grain, bucket) DO UPDATE SET "
        f"count = {r}.count + excluded.count, min = {lo}({r}.min, excluded.min), "
        f"max = {hi}({r}.max, excluded.max), sum = {r}.sum + excluded.sum, "
        f"last_value = CASE WHEN excluded.last_time >= {r}.last_time THEN excluded.last_value "
        f"ELSE {r}.last_value END, last_time = {hi}({r}.last_time, excluded.last_time)"
    )
    keys = ("d", "g", "b", "c", "mn", "mx", "s", "lt", "lv")
    if _dialect(conn) == "sqlite":
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.executemany(sql, [dict(zip(keys, a, strict=True)) for a in agg])
    else:
        types = ("int", "int", "bigint", "bigint", "float8", "float8", "float8", "bigint", "float8")
        head, _, tail = sql.partition("VALUES (:d, :g, :b, :c, :mn, :mx, :s, :lt, :lv) ")
        pg = head + "SELECT * FROM unnest(" + ", ".join(f"%s::{t}[]" for t in types) + ") " + tail
        conn.exec_driver_sql(pg, tuple(_columns_of(agg, len(types))))


def stream_summaries(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per stream: the batch's phenomenon/result span and its newest reading."""
    by: dict[int, list[Any]] = {}
    for r in rows:
        end = r[2] if r[2] is not None else r[1]
        rt = r[3]
        s = by.get(r[0])
        if s is None:
            by[r[0]] = [r[1], end, rt, rt, r[1], r[4]]
            continue
        if r[1] < s[0]:
            s[0] = r[1]
        if end > s[1]:
            s[1] = end
        if rt is not None:
            s[2] = rt if s[2] is None or rt < s[2] else s[2]
            s[3] = rt if s[3] is None or rt > s[3] else s[3]
        if r[1] >= s[4]:
            s[4], s[5] = r[1], r[4]
    return [{"id": k, "ps": v[0], "pe": v[1], "rs": v[2], "re": v[3], "lt": v[4], "lv": v[5]}
            for k, v in by.items()]


def _update_streams(conn: Connection, params: list[dict[str, Any]]) -> None:
    if not params:
        return
    lo, hi = _least(_dialect(conn))
    d = "sensor_datastreams"
    ps, pe, rs, re_, lt = (f"CAST(:{k} AS BIGINT)" for k in ("ps", "pe", "rs", "re", "lt"))
    sql = (
        f"UPDATE {d} SET phenomenon_start = {lo}(COALESCE(phenomenon_start, {ps}), {ps}), "
        f"phenomenon_end = {hi}(COALESCE(phenomenon_end, {pe}), {pe}), "
        f"result_start = CASE WHEN {rs} IS NULL THEN result_start "
        f"ELSE {lo}(COALESCE(result_start, {rs}), {rs}) END, "
        f"result_end = CASE WHEN {re_} IS NULL THEN result_end "
        f"ELSE {hi}(COALESCE(result_end, {re_}), {re_}) END, "
        f"last_value = CASE WHEN last_time IS NULL OR {lt} >= last_time THEN CAST(:lv AS FLOAT) "
        f"ELSE last_value END, last_time = {hi}(COALESCE(last_time, {lt}), {lt}) WHERE id = :id"
    )
    if _dialect(conn) == "sqlite":
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.executemany(sql, params)
        return
    keys = ("id", "ps", "pe", "rs", "re", "lt", "lv")
    types = ("int", "bigint", "bigint", "bigint", "bigint", "bigint", "float8")
    cols = [[p[k] for p in params] for k in keys]
    pg = (f"UPDATE {d} SET phenomenon_start = LEAST(COALESCE(phenomenon_start, u.ps), u.ps), "
          "phenomenon_end = GREATEST(COALESCE(phenomenon_end, u.pe), u.pe), "
          "result_start = CASE WHEN u.rs IS NULL THEN result_start "
          "ELSE LEAST(COALESCE(result_start, u.rs), u.rs) END, "
          "result_end = CASE WHEN u.re IS NULL THEN result_end "
          "ELSE GREATEST(COALESCE(result_end, u.re), u.re) END, "
          "last_value = CASE WHEN last_time IS NULL OR u.lt >= last_time THEN u.lv ELSE last_value END, "
          f"last_time = GREATEST(COALESCE(last_time, u.lt), u.lt) FROM unnest("
          + ", ".join(f"%s::{t}[]" for t in types) + f") AS u({', '.join(keys)}) WHERE {d}.id = u.id")
    conn.exec_driver_sql(pg, tuple(cols))


def _update_things(conn: Connection, seen: dict[int, int]) -> None:
    """Last contact per Thing (设备最后在线), for the online/offline status."""
    if not seen:
        return
    hi = _least(_dialect(conn))[1]
    t = "CAST(:t AS BIGINT)"
    conn.execute(text(f"UPDATE sensor_things SET last_seen_at = {hi}(COALESCE(last_seen_at, {t}), {t}) "
                      "WHERE id = :id"), [{"id": k, "t": v} for k, v in seen.items()])


@dataclass
class Pending:
    """What stored readings still owe the rollups, the streams' summaries and the devices' last
    contact, merged across batches (汇总待写).

    Under load the writer lets a second's worth of batches share one write of these: a stream
    with a reading per batch then costs one rollup upsert per bucket per second, not per batch.
    `last_id` is the newest Observation id covered; it is stored with the flush, so after a crash
    `catch_up` rebuilds what was owed from the readings themselves."""

    rollups: dict[tuple[int, int, int], list[Any]] = field(default_factory=dict)
    streams: dict[int, list[Any]] = field(default_factory=dict)
    things: dict[int, int] = field(default_factory=dict)
    last_id: int = 0
    readings: int = 0

    def add(self, new: Sequence[Row], ids: Sequence[int], thing_of: dict[int, int] | None = None,
            now_ms: int | None = None) -> None:
        roll = self.rollups
        for a in rollup_rows(new):
            key = (a[0], a[1], a[2])
            cur = roll.get(key)
            if cur is None:
                roll[key] = list(a[3:])
                continue
            cur[0] += a[3]
            if a[4] < cur[1]:
                cur[1] = a[4]
            if a[5] > cur[2]:
                cur[2] = a[5]
            cur[3] += a[6]
            if a[7] >= cur[4]:
                cur[4], cur[5] = a[7], a[8]
        for sm in stream_summaries(new):
            self._add_stream(sm["id"], [sm["ps"], sm["pe"], sm["rs"], sm["re"], sm["lt"], sm["lv"]])
        if thing_of is not None and now_ms is not None:
            for ds in {r[0] for r in new}:
                if ds in thing_of:
                    self.things[thing_of[ds]] = now_ms
        if ids:
            self.last_id = max(self.last_id, max(ids))
        self.readings += len(new)

    def _add_stream(self, ds: int, v: list[Any]) -> None:
        cur = self.streams.get(ds)
        if cur is None:
            self.streams[ds] = v
            return
        cur[0] = min(cur[0], v[0])
        cur[1] = max(cur[1], v[1])
        if v[2] is not None:
            cur[2] = v[2] if cur[2] is None else min(cur[2], v[2])
            cur[3] = v[3] if cur[3] is None else max(cur[3], v[3])
        if v[4] >= cur[4]:
            cur[4], cur[5] = v[4], v[5]

    def merged(self, other: Pending) -> Pending:
        """A new Pending holding both (neither is changed)."""
        out = Pending({k: list(v) for k, v in self.rollups.items()},
                      {k: list(v) for k, v in self.streams.items()}, dict(self.things),
                      self.last_id, self.readings)
        out.absorb(other)
        return out

    def absorb(self, other: Pending) -> None:
        """Add `other` into this one."""
        out = self
        for key, v in other.rollups.items():
            cur = out.rollups.get(key)
            if cur is None:
                out.rollups[key] = list(v)
            else:
                cur[0] += v[0]
                cur[1] = min(cur[1], v[1])
                cur[2] = max(cur[2], v[2])
                cur[3] += v[3]
                if v[4] >= cur[4]:
                    cur[4], cur[5] = v[4], v[5]
        for ds, v in other.streams.items():
            out._add_stream(ds, list(v))
        out.things.update(other.things)
        out.last_id = max(out.last_id, other.last_id)
        out.readings += other.readings

    def __bool__(self) -> bool:
        return bool(self.readings)


STATE = "rollups"


def flush(conn: Connection, pending: Pending) -> None:
    """Write what `pending` owes, and how far it reaches, in the caller's transaction."""
    if pending.readings:
        _upsert_rollups(conn, [(*k, *v) for k, v in pending.rollups.items()])
        _update_streams(conn, [{"id": k, "ps": v[0], "pe": v[1], "rs": v[2], "re": v[3], "lt": v[4],
                                "lv": v[5]} for k, v in pending.streams.items()])
        _update_things(conn, pending.things)
    if pending.last_id:
        conn.execute(text("INSERT INTO sensor_rollup_state (name, last_id) VALUES (:n, :i) "
                          "ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id "
                          "WHERE excluded.last_id > sensor_rollup_state.last_id"),
                     {"n": STATE, "i": pending.last_id})


def catch_up(conn: Connection, chunk: int = 50_000) -> int:
    """Roll up readings stored after the last flush (a crash between the two); returns how many.

    A database that has readings but no state yet was rolled up reading by reading (before the
    state existed): it owes nothing."""
    last = conn.execute(text("SELECT last_id FROM sensor_rollup_state WHERE name = :n"),
                        {"n": STATE}).scalar()
    if last is None:
        top = conn.execute(text("SELECT max(id) FROM sensor_observations")).scalar()
        conn.execute(text("INSERT INTO sensor_rollup_state (name, last_id) VALUES (:n, :i)"),
                     {"n": STATE, "i": int(top or 0)})
        return 0
    done = 0
    cols = ", ".join(COLUMNS)
    while True:
        rows = conn.execute(text(f"SELECT id, {cols} FROM sensor_observations WHERE id > :i ORDER BY id "
                                 f"LIMIT {int(chunk)}"), {"i": last}).all()
        if not rows:
            return done
        pending = Pending()
        pending.add([tuple(r[1:]) for r in rows], [r[0] for r in rows])  # type: ignore[misc]
        flush(conn, pending)
        last = rows[-1][0]
        done += len(rows)


def write(conn: Connection, rows: Sequence[Row], thing_of: dict[int, int] | None = None,
          now_ms: int | None = None, owed: Pending | None = None) -> Written:
    """Store a batch inside the caller's transaction: new readings, and what they owe the rollups,
    the streams' spans and newest values, and each Thing's last contact (`thing_of`: stream →
    thing). With `owed` the latter are added to it for a later `flush`; without, written now."""
    unique, _ = _unique_in_batch(rows)
    if _dialect(conn) == "sqlite":
        new, ids = _write_sqlite(conn, unique)
    else:
        new, ids = _write_postgresql(conn, unique)
    pending = owed if owed is not None else Pending()
    if new:
        pending.add(new, ids, thing_of, now_ms)
    if owed is None:
        flush(conn, pending)
    return Written(new, len(rows) - len(new), ids)
