"""Batches of readings: stored once, rolled up exactly, the streams' summaries kept (both databases)."""

from __future__ import annotations

from sqlalchemy import text

from cityos.sensing import store
from tests.sensing.conftest import T0, row


def _write(engine, rows):
    with engine.begin() as conn:
        return store.write(conn, rows)


def _raw_vs_rollup(engine, grain):
    ms = grain * 1000
    with engine.connect() as conn:
        raw = conn.execute(text(
            f"SELECT datastream_id, phenomenon_time - (phenomenon_time % {ms}) AS b, count(*), min(result_number), "
            "max(result_number), sum(result_number) FROM sensor_observations "
            "WHERE result_number IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2")).all()
        rolled = conn.execute(text(
            "SELECT datastream_id, bucket, count, min, max, sum FROM sensor_rollups WHERE grain = :g "
            "ORDER BY 1, 2"), {"g": grain}).all()
    return [tuple(r) for r in raw], [tuple(r) for r in rolled]


def test_batch_is_stored_with_ids_in_order(engine, thing_factory):
    _, (a, b) = thing_factory(streams=2)
    rows = [row(a.id, T0 + i * 1000, float(i)) for i in range(50)] + [row(b.id, T0, 7.5)]
    written = _write(engine, rows)
    assert written.duplicates == 0 and len(written.new) == 51
    with engine.connect() as conn:
        stored = dict(conn.execute(text(
            "SELECT id, result_number FROM sensor_observations WHERE datastream_id = :a"), {"a": a.id}).all())
    assert [stored[i] for i in written.ids[:50]] == [float(i) for i in range(50)]


def test_duplicates_within_and_across_batches_are_stored_once(engine, thing_factory):
    _, (ds,) = thing_factory()
    first = _write(engine, [row(ds.id, T0, 1.0), row(ds.id, T0, 2.0), row(ds.id, T0 + 1000, 3.0)])
    assert (len(first.new), first.duplicates) == (2, 1)
    # A resend of an old reading (a lost PUBACK) and a late reading never seen before.
    again = _write(engine, [row(ds.id, T0, 9.0), row(ds.id, T0 - 5000, 4.0)])
    assert (len(again.new), again.duplicates) == (1, 1)
    third = _write(engine, [row(ds.id, T0 + 1000, 5.0)])
    assert (len(third.new), third.duplicates) == (0, 1)
    with engine.connect() as conn:
        values = conn.execute(text("SELECT result_number FROM sensor_observations ORDER BY phenomenon_time")).all()
    assert [v for (v,) in values] == [4.0, 1.0, 3.0]


def test_rollups_equal_aggregates_of_raw_rows_for_every_grain(engine, thing_factory):
    _, streams = thing_factory(streams=3)
    for batch in range(4):  # in-order, out-of-order and repeated readings across four batches
        rows = []
        for k, ds in enumerate(streams):
            for i in range(0, 400, 7):
                t = T0 + ((i * 37 + batch * 11) % 400) * 15_000 + k
                rows.append(row(ds.id, t, float((i * (batch + 1)) % 23)))
        _write(engine, rows)
    for grain in store.GRAINS:
        raw, rolled = _raw_vs_rollup(engine, grain)
        assert len(raw) == len(rolled) > 0
        for r, s in zip(raw, rolled, strict=True):
            assert r[:5] == s[:5] and abs(r[5] - s[5]) < 1e-6


def test_stream_summary_tracks_span_and_newest_value(engine, thing_factory):
    _, (ds,) = thing_factory()
    _write(engine, [row(ds.id, T0 + 5000, 5.0), row(ds.id, T0 + 1000, 1.0)])
    _write(engine, [row(ds.id, T0 + 3000, 3.0)])  # late: does not replace the newest value
    with engine.connect() as conn:
        got = conn.execute(text("SELECT phenomenon_start, phenomenon_end, last_time, last_value "
                                "FROM sensor_datastreams WHERE id = :i"), {"i": ds.id}).one()
    assert tuple(got) == (T0 + 1000, T0 + 5000, T0 + 5000, 5.0)


def test_non_numeric_results_are_stored_but_not_rolled_up(engine, thing_factory):
    _, (ds,) = thing_factory()
    written = _write(engine, [row(ds.id, T0, None, "true"), row(ds.id, T0 + 1, 2.0)])
    assert len(written.new) == 2
    with engine.connect() as conn:
        counts = conn.execute(text("SELECT grain, count FROM sensor_rollups ORDER BY grain")).all()
    assert [tuple(c) for c in counts] == [(60, 1), (3600, 1), (86400, 1)]


def test_rollups_owed_at_a_crash_are_caught_up_from_the_readings(engine, thing_factory):
    _, (ds,) = thing_factory()
    with engine.begin() as conn:
        store.catch_up(conn)  # the state starts at the newest reading
    owed = store.Pending()
    with engine.begin() as conn:  # readings committed, their rollups only in memory ...
        store.write(conn, [row(ds.id, T0 + i * 1000, float(i)) for i in range(120)], owed=owed)
    # ... and the process dies here: `owed` is lost.
    raw, rolled = _raw_vs_rollup(engine, 60)
    assert rolled == [] and len(raw) == 2
    with engine.begin() as conn:
        assert store.catch_up(conn) == 120
    for grain in store.GRAINS:
        raw, rolled = _raw_vs_rollup(engine, grain)
        assert raw == rolled
    with engine.begin() as conn:
        assert store.catch_up(conn) == 0  # and nothing twice


def test_owed_rollups_of_several_batches_merge_into_one_write(engine, thing_factory):
    _, (ds,) = thing_factory()
    owed = store.Pending()
    for b in range(3):
        with engine.begin() as conn:
            store.write(conn, [row(ds.id, T0 + b * 10_000 + i * 1000, float(b * 10 + i)) for i in range(10)],
                        owed=owed)
    assert len(owed.rollups) == 3 and owed.readings == 30  # one bucket per grain, not per batch
    with engine.begin() as conn:
        store.flush(conn, owed)
    for grain in store.GRAINS:
        raw, rolled = _raw_vs_rollup(engine, grain)
        assert raw == rolled
    with engine.connect() as conn:
        got = conn.execute(text("SELECT last_time, last_value FROM sensor_datastreams WHERE id = :i"),
                           {"i": ds.id}).one()
    assert tuple(got) == (T0 + 29_000, 29.0)
