"""The ingest writer: acknowledged only after COMMIT, bounded, and strict about what a reading is."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cityos.core.errors import Invalid
from cityos.sensing import ingest
from cityos.sensing.ingest import Busy, StreamInfo, Writer
from tests.sensing.conftest import T0, row


def _count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM sensor_observations")).scalar_one()


def test_future_resolves_after_commit_and_listeners_get_ids(engine, thing_factory, writer):
    _, (ds,) = thing_factory()
    seen = []
    writer.add_listener(lambda w: seen.append((len(w.new), list(w.ids))))
    written = writer.write_sync([row(ds.id, T0 + i, float(i)) for i in range(100)])
    assert _count(engine) == 100  # visible to another connection: committed
    assert written.ids and seen == [(100, written.ids)]


def test_many_small_submissions_are_group_committed(engine, thing_factory, writer):
    _, streams = thing_factory(streams=4)
    futures = [writer.submit([row(streams[i % 4].id, T0 + i, 1.0)]) for i in range(2000)]
    assert sum(len(f.result(30).new) for f in futures) == 2000
    assert writer.stats.batches < 2000 and writer.stats.stored == 2000


def test_full_queue_refuses_instead_of_buffering(engine, thing_factory):
    _, (ds,) = thing_factory()
    w = Writer(engine, max_pending=10)
    gate, held = threading.Event(), threading.Event()

    def hold(_written):  # hold the writer thread after the first batch is committed
        held.set()
        gate.wait(10)

    w.add_listener(hold)
    try:
        first = w.submit([row(ds.id, T0 + i, 1.0) for i in range(10)])
        assert held.wait(30)  # the first batch is committed, the writer waits in the listener
        w.submit([row(ds.id, T0 + 100 + i, 1.0) for i in range(10)])
        with pytest.raises(Busy) as err:
            w.submit([row(ds.id, T0 + 200, 1.0)])
        assert err.value.status == 429 and err.value.extra["retry_after"] >= 1
        gate.set()
        assert len(first.result(10).new) == 10
    finally:
        gate.set()
        w.stop()
    assert _count(engine) == 20


def test_a_failing_job_does_not_sink_its_neighbours(engine, thing_factory, writer):
    _, (ds,) = thing_factory()
    good = [row(ds.id, T0 + i, 1.0) for i in range(5)]
    bad = [(ds.id, "not-a-time", None, None, 1.0, None, None, None, None, None, None)]
    if engine.dialect.name == "sqlite":  # SQLite stores any type; a NULL time breaks the NOT NULL column
        bad = [(ds.id, None, None, None, 1.0, None, None, None, None, None, None)]
    f1, f2 = writer.submit(good), writer.submit(bad)
    assert len(f1.result(10).new) == 5
    with pytest.raises((DBAPIError, sqlite3.Error)):  # NOT NULL, through SQLAlchemy or the raw driver
        f2.result(10)
    assert _count(engine) == 5


@pytest.mark.parametrize("value, reason", [
    ("2026-01-01T08:00:00", "time zone"),
    ("yesterday", "ISO 8601"),
    (True, "required"),
    (-5, "1970"),
])
def test_bad_times_are_refused_with_the_field(value, reason):
    with pytest.raises(Invalid) as err:
        ingest.parse_time(value, "[3].t", now=T0)
    assert err.value.errors[0].field == "[3].t" and reason in err.value.errors[0].reason


def test_times_in_the_future_are_refused_but_a_little_clock_skew_is_not():
    assert ingest.parse_time(T0 + 60_000, "t", now=T0) == T0 + 60_000
    with pytest.raises(Invalid, match="future"):
        ingest.parse_time("2026-01-02T00:00:00+08:00", "t", now=T0)
    assert ingest.parse_time("2026-01-01T08:00:00+08:00", "t", now=T0) == T0


def _info(**kw) -> StreamInfo:
    base = dict(id=1, kind="single", department_id=1, department_path="/1/", thing_id=1, device_key=None,
                observation_type=ingest.MEASUREMENT, members=0, member_types=(), foi_id=None)
    return StreamInfo(**(base | kw))


@pytest.mark.parametrize("typ, good, bad", [
    (ingest.MEASUREMENT, 3.5, "3.5"),
    (ingest.MEASUREMENT, 2, True),
    (ingest.COUNT, 7, 7.5),
    (ingest.TRUTH, False, 0),
    (ingest.CATEGORY, "浑浊", 3),
])
def test_results_must_match_the_observation_type(typ, good, bad):
    ingest.check_result(_info(observation_type=typ), good, "result")
    with pytest.raises(Invalid):
        ingest.check_result(_info(observation_type=typ), bad, "result")


def test_multidatastream_results_are_arrays_of_the_right_length():
    info = _info(kind="multi", members=2, member_types=(ingest.MEASUREMENT, ingest.TRUTH))
    assert ingest.check_result(info, [1.5, True], "result") == (None, "[1.5,true]")
    for bad in ([1.5], [1.5, 2.0], 3):
        with pytest.raises(Invalid):
            ingest.check_result(info, bad, "result")


def test_compact_reading_and_observation_json_round_trip():
    info = _info(foi_id=9)
    r = ingest.compact_row(info, {"t": "2026-01-01T00:00:00Z", "v": 12}, "[0]", T0)
    assert r == (1, T0, None, None, 12.0, None, None, None, None, None, 9)
    with pytest.raises(Invalid, match="unknown field"):
        ingest.compact_row(info, {"t": T0, "v": 1, "x": 2}, "[0]", T0)
    doc = ingest.observation_json(r, 42, "http://h")
    assert doc["@iot.id"] == 42 and doc["phenomenonTime"] == "2026-01-01T00:00:00.000Z" and doc["result"] == 12


def test_stream_cache_knows_the_thing_and_makes_its_feature_of_interest(engine, thing_factory, writer):
    thing, (ds,) = thing_factory()
    info = writer.streams.require(ds.id)
    assert info.thing_id == thing.id and info.foi_id is not None
    assert writer.streams.get(ds.id).foi_id == info.foi_id  # cached, and made only once
    assert writer.streams.get(999_999) is None


def _driver(w: Writer):
    assert w._conn is not None
    return w._conn.connection.driver_connection


def test_the_writer_keeps_one_connection_and_its_page_cache_stays_on_it(engine, thing_factory):
    """Each pooled connection the writer borrowed used to get (and fill) its large page cache: the
    writer now keeps one connection of its own and closes it, rather than pooling it, when it stops."""
    _, (ds,) = thing_factory()
    w = Writer(engine, sqlite_cache_mb=7)  # a size no other connection has
    try:
        used = set()
        for k in range(5):
            w.write_sync([row(ds.id, T0 + k * 10 + i, 1.0) for i in range(10)])
            used.add(id(_driver(w)))
            with engine.connect():  # the pool's connections go round meanwhile
                pass
        assert len(used) == 1
        if engine.dialect.name == "sqlite":
            assert _driver(w).execute("PRAGMA cache_size").fetchone()[0] == -7 * 1024
    finally:
        w.stop()
    assert w._conn is None
    if engine.dialect.name == "sqlite":  # none of the pool's connections carries the writer's settings
        held = [engine.connect() for _ in range(5)]
        try:
            sizes = {c.connection.driver_connection.execute("PRAGMA cache_size").fetchone()[0] for c in held}
            assert -7 * 1024 not in sizes
        finally:
            for c in held:
                c.close()
    assert _count(engine) == 50


def test_the_writer_gets_a_new_connection_when_the_database_dropped_its_own(engine, thing_factory, writer):
    if engine.dialect.name != "postgresql":
        pytest.skip("a server that ends a connection: PostgreSQL")
    _, (ds,) = thing_factory()
    writer.write_sync([row(ds.id, T0 + i, 1.0) for i in range(10)])
    pid = _driver(writer).info.backend_pid
    with engine.connect() as conn:  # what a server restart or failover does to it
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    written = writer.write_sync([row(ds.id, T0 + 100 + i, 1.0) for i in range(10)])
    assert len(written.new) == 10 and writer.stats.failed_batches == 0
    assert _driver(writer).info.backend_pid != pid and _count(engine) == 20


def test_the_stream_cache_is_bounded_even_for_made_up_ids(engine, thing_factory):
    _, (ds,) = thing_factory()
    streams = ingest.Streams(engine, max_entries=10)
    for k in range(5):  # a sender of ids that do not exist: each is remembered as unknown
        assert streams.many(range(10_000 + k * 7, 10_000 + k * 7 + 7)) == {}
        assert len(streams._cache) <= 10
    assert streams.require(ds.id).id == ds.id and len(streams._cache) <= 10
    streams.ttl = -1  # stale entries go first, before fresh ones would
    streams.many(range(20_000, 20_009))
    assert len(streams._cache) <= 10
