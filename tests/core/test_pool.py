"""Pooled connections. SQLite keeps one per request thread: a connection opened past the pool
re-ran its pragmas and SQLite's schema parse for a single request. PostgreSQL's are pinged on
checkout only after sitting idle (`db._ping_when_idle`): one back in the pool within the last
second goes out unpinged (no round trip per request); one idle longer is pinged, and a dead one
is replaced before anybody uses it."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, exc, text
from sqlalchemy.pool import NullPool

from cityos.core import db


def test_sqlite_keeps_a_connection_for_each_of_many_request_threads(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    opened = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    together = threading.Barrier(20, timeout=10)
    broken = []

    def request() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            try:
                together.wait()  # all 20 hold a connection at once
            except threading.BrokenBarrierError:
                broken.append(1)

    try:
        for _ in range(2):
            threads = [threading.Thread(target=request) for _ in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            together.reset()
    finally:
        engine.dispose()
    assert not broken
    assert len(opened) == 20  # the second round reused them all: none opened for one request


@pytest.fixture
def pg(db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL pool: SQLite has no server connection to lose")
    engine = db.make_engine(db_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(db_url: str, pid: int) -> None:
    other = db.make_engine(db_url, poolclass=NullPool)
    with other.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    other.dispose()


def test_a_connection_idle_past_the_window_is_pinged_and_replaced(pg, db_url, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2)
    first = _backend_pid(pg)
    _kill(db_url, first)
    time.sleep(0.3)
    assert _backend_pid(pg) != first  # the ping found it dead: a new one, and no error


def test_a_connection_back_within_the_window_goes_out_unpinged(pg, db_url, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 60.0)
    first = _backend_pid(pg)
    _kill(db_url, first)
    with pytest.raises(exc.OperationalError), pg.connect() as conn:  # not pinged: its first use fails
        conn.execute(text("SELECT 1"))
    assert _backend_pid(pg) != first  # and the pool has let it go
