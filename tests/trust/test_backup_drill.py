"""Backup drill (备份演练): a backup taken while the city works restores into a fresh data dir and
a fresh, empty database, on SQLite and on PostgreSQL.

A thread keeps sending readings and stepping cases through the API while the real backup code
takes the backup. The restored database then matches the backup's manifest table by table (row
count and checksum, every table, the hub's per-resource tables included), holds every write
acknowledged before the backup began and no half of any other, its cases are whole, its audit
chain verifies, and a server started on it reads the encrypted phone numbers with the restored
keyring and carries the cases on. (Corrupt, foreign and newer backups: tests/core/test_backup.py.)
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, func, select, table, text
from sqlalchemy.orm import Session, sessionmaker

from cityos.app import create_app
from cityos.core import audit, backup, db
from cityos.core.access import SYSTEM
from cityos.core.settings import Settings, load_settings
from cityos.hub import loading
from cityos.hub import service as hub
from cityos.sensing import ingest
from cityos.sensing.ingest import MEASUREMENT
from tests.cases.conftest import seed_cases
from tests.conftest import City, people_spec
from tests.hub.test_loading import person_row
from tests.sensing.helpers_ingest import Device, make_device, stored
from tests.trust.helpers_crash import FLOW, advance_cases, check_cases, login, open_cases

PHONE = "13904320001"
PER_BATCH = 25  # readings per stream in a batch
CASES = 8


@pytest.fixture
def fresh(engine: Engine, tmp_path: Path) -> Iterator[Settings]:
    """Settings of a fresh city: an empty data dir and a database that does not exist yet (SQLite)
    or is empty (PostgreSQL: created bare, not migrated)."""
    name = f"cityos_drill_{uuid.uuid4().hex[:10]}"
    admin = None
    if engine.dialect.name == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh' / 'cityos.db'}"
    else:
        admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = engine.url.set(database=name).render_as_string(hide_password=False)
    yield load_settings(database_url=url, data_dir=tmp_path / "fresh-data", environment="test",
                        secret_key="test-secret-key-0123456789", ops_refresh_seconds=0)
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Work:
    """Readings and case steps sent one after another; each acknowledgement with its time."""

    client: TestClient
    device: Device
    base: int  # epoch ms of the first reading
    numbers: list[str]
    headers: dict[str, dict[str, str]]
    batch_at: dict[int, float] = field(default_factory=dict)
    steps: list[tuple[str, str, float]] = field(default_factory=list)  # (number, action, when)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def readings(self, batch: int) -> list[tuple[int, int, float]]:
        return [(ds, self.base + (batch * PER_BATCH + i) * 1000, float(batch * 1000 + i))
                for ds in self.device.streams for i in range(PER_BATCH)]

    def run(self) -> None:
        device = self.device
        assert device.key and device.secret
        todo = [(n, step) for step in FLOW for n in self.numbers]
        for batch in itertools.count():
            if self.stop.wait(0.02):
                return
            body = [{"ds": ds, "t": t, "v": v} for ds, t, v in self.readings(batch)]
            r = self.client.post("/api/sensing/observations", json=body, auth=(device.key, device.secret))
            if r.status_code != 200:
                self.errors.append(f"ingest {r.status_code} {r.text[:200]}")
                return
            self.batch_at[batch] = time.monotonic()
            if todo:
                number, (action, who, params) = todo.pop(0)
                r = self.client.post(f"/api/cases/{number}/actions/{action}", json=params,
                                     headers=self.headers[who])
                if r.status_code != 200:
                    self.errors.append(f"{action} {r.status_code} {r.text[:200]}")
                    return
                self.steps.append((number, action, time.monotonic()))

    def acked_before(self, moment: float) -> tuple[set[int], dict[str, list[str]]]:
        steps: dict[str, list[str]] = {}
        for number, action, when in self.steps:
            if when < moment:
                steps.setdefault(number, []).append(action)
        return {b for b, when in self.batch_at.items() if when < moment}, steps


def seed(sessions: sessionmaker[Session], engine: Engine) -> tuple[Device, list[str]]:
    """Cases with encrypted phones, a device, and a hub resource with rows in its own tables."""
    with sessions() as s:
        seed_cases(s)
        device = make_device(s, "220200-hbj", [MEASUREMENT] * 2, credentials=True)
        res = hub.resource_create(s, SYSTEM, people_spec())
        s.flush()
        loading.rows_write(s, SYSTEM, res.code, [person_row(n) for n in range(200)], source="upload",
                           mode="replace")
        s.commit()
    numbers = open_cases(engine, CASES, phone=PHONE)
    return device, numbers


def test_backup_under_load_restores_into_a_fresh_city(city: City, sessions, engine, settings, fresh, tmp_path):
    device, numbers = seed(sessions, engine)
    assert city.client is not None
    work = Work(city.client, device, (ingest.now_ms() - 3 * 86_400_000) // 60_000 * 60_000, numbers,
                {u: city.headers(u) for u in ("hotline_agent", "police_staff")})
    thread = threading.Thread(target=work.run, daemon=True)
    thread.start()
    archive = tmp_path / "drill.tar.gz"
    try:
        deadline = time.monotonic() + 60
        while len(work.steps) < 6 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        began = time.monotonic()
        steps_then = len(work.steps)
        manifest = backup.backup_create(settings, archive, SYSTEM)
        ended = time.monotonic()
        while len(work.steps) < steps_then + 3 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)  # the city goes on after the backup too
    finally:
        work.stop.set()
        thread.join(30)
    assert not work.errors, work.errors
    overlapping = [w for w in [*work.batch_at.values(), *(w for _, _, w in work.steps)] if began < w < ended]
    assert overlapping, "no write was acknowledged while the backup was taken: the drill proved nothing"
    batches, steps = work.acked_before(began)

    backup.backup_restore(fresh, archive, SYSTEM)

    restored = db.make_engine(fresh.database_url)
    try:
        with restored.connect() as conn:
            names = backup.table_names(conn)
            assert any(n.startswith("hub_data_") for n in names)
            assert sorted(manifest.tables) == names  # every table, the hub's own included
            assert backup.table_stats(conn) == manifest.tables  # row counts and checksums
            for name in names:  # and the counts once more, by plain SQL
                assert conn.execute(select(func.count()).select_from(table(name))).scalar_one() == \
                    manifest.tables[name].rows, name
        with Session(restored) as s:
            result = audit.verify(s)
            assert result.ok, result.message()
            assert result.checked == manifest.tables["audit_log"].rows
            got = stored(s)
            for batch in batches:  # acknowledged before the backup began: in it
                assert all(got.get((ds, t)) == v for ds, t, v in work.readings(batch)), batch
            for batch in work.batch_at:  # anything else: all of a batch or none of it
                present = [(ds, t) in got for ds, t, _ in work.readings(batch)]
                assert all(present) or not any(present), f"batch {batch} half in the backup"
            check_cases(s, steps, numbers, in_flight=None)
    finally:
        restored.dispose()

    # A server on the restored city: the keyring came back with it, and the work goes on.
    app = create_app(fresh)
    with TestClient(app) as client:
        agent = login(client, "hotline_agent")
        r = client.get(f"/api/cases/{numbers[0]}/reporter", headers=agent)
        assert r.status_code == 200 and r.json()["phone"] == PHONE, r.text
        again = db.make_engine(fresh.database_url)
        try:
            with Session(again) as s:
                now = advance_cases(client, s, numbers)
            with Session(again) as s:
                check_cases(s, now, numbers)
                assert audit.verify(s).ok
        finally:
            again.dispose()
    app.state.platform.engine.dispose()
