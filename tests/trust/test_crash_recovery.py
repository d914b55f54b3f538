"""Crash and recovery (崩溃恢复): `kill -9` of a real server in the middle of MQTT ingest, a large
dataset import and concurrent case steps; then PostgreSQL itself stopped and started under load.

The killed process's leftovers are checked first, then the app starts again on the same
database, broker session and data dir: every message the broker acknowledged to the device is
stored exactly once and whole, the import left its whole version or nothing (and no file or
staging table behind), its job is not "running", every step answered 2xx is in its case, each
case's status, timeline, open tasks, workflow state and audit records agree, the cases carry on,
and the audit chain verifies. (HTTP ingest under `kill -9` is tests/sensing/test_durability.py.)

With PostgreSQL stopped under load (a private cluster, `pg_ctl stop -m immediate`, then start),
requests fail with a 503 problem document (no hang, no 500), the server reconnects by itself
once the database is back, and nothing acknowledged is lost.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import itertools
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from cityos.app import create_app
from cityos.core import audit, db
from cityos.core.access import SYSTEM
from cityos.core.crypto import Keyring
from cityos.core.identifiers import citizen_id_with_check
from cityos.core.models import AuditRecord
from cityos.core.settings import load_settings
from cityos.hub import service as hub
from cityos.hub import store as hub_store
from cityos.hub.models import Resource, Version
from cityos.sensing import ingest
from cityos.sensing.ingest import MEASUREMENT
from tests.cases.conftest import seed_cases
from tests.conftest import people_spec, seed_small_city, served
from tests.sensing.helpers_ingest import make_device
from tests.sensing.helpers_mqtt import mosquitto, wait_for
from tests.sensing.test_durability import Load, _check_store
from tests.trust.helpers_crash import (
    FLOW,
    PER_MESSAGE,
    CaseLoad,
    IngestLoad,
    Publisher,
    Server,
    advance_cases,
    check_cases,
    copy_database,
    login,
    mqtt_count,
    mqtt_stored,
    open_cases,
    private_postgres,
    private_postgres_possible,
    server_for,
)

# Multi-process tests: one xdist worker runs them one after another, the other the rest.
pytestmark = pytest.mark.xdist_group("trust-crash")

V1_ROWS = 100  # the resource's version before the crash
BIG_ROWS = 60_000  # the import the kill interrupts at 10,000 rows (4 MB of CSV)
CASES = 12


@pytest.fixture
def servers(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(database_url: str, **env: str) -> Server:
        srv = server_for(database_url, data_dir, tmp_path / f"srv{len(made)}", **env)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.kill()


@functools.cache
def people_csv(n: int, start: int = 0) -> bytes:
    """`n` residents with distinct, valid ID numbers (born 1985 on, a thousand a day)."""
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["身份证号", "姓名", "性别", "出生日期", "所属区县", "家庭人口"])
    for k in range(start, start + n):
        born = dt.date(1985, 1, 1) + dt.timedelta(days=k // 1000)
        idn = citizen_id_with_check(f"220202{born:%Y%m%d}{k % 1000:03d}")
        out.writerow([idn, f"居民{k}", "男" if k % 2 else "女", born.isoformat(), "昌邑区", 1 + k % 5])
    return buf.getvalue().encode()


def upload(client: httpx.Client, code: str, data: bytes, headers: dict[str, str], wait: bool) -> httpx.Response:
    return client.post(f"/api/hub/resources/{code}/uploads" + ("?wait=true" if wait else ""),
                       files={"file": ("people.csv", data, "text/csv")}, headers=headers)


def check_resource(session: Session, engine: Engine, resource_id: int) -> int:
    """The resource's current version and row count agree with its version rows and its tables,
    and no version is there in part; returns the current version."""
    res = session.get(Resource, resource_id)
    assert res is not None
    versions = {v.number: v for v in session.scalars(select(Version).where(Version.resource_id == resource_id))}
    assert sorted(versions) == list(range(1, res.current_version + 1))
    table = hub_store.table_name(resource_id)
    with engine.connect() as conn:
        rows = conn.execute(text(f'SELECT count(*), max("_vfrom") FROM "{table}"')).one()
        hist = conn.execute(text(f'SELECT count(*) FROM "{table}_hist"')).scalar_one()
        leftovers = sorted(n for n in inspect(conn).get_table_names() if n.startswith(table))
    assert leftovers == [table, f"{table}_hist"]  # no staging table outlives its load
    assert res.row_count == rows[0] == versions[res.current_version].row_count
    assert (rows[1] or 0) <= res.current_version  # no row of a version that is not there
    assert hist == sum(v.removed + v.changed for v in versions.values())
    return res.current_version


def audit_ok(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        result = audit.verify(s)
    assert result.ok, result.message()


def test_kill_9_during_mqtt_ingest_an_import_and_case_steps(engine, sessions, servers, tmp_path):
    with mosquitto(tmp_path / "mqtt", "allow_anonymous true") as port:
        _crash_and_restart(engine, sessions, servers, port)


def _crash_and_restart(engine: Engine, sessions: sessionmaker[Session], servers: Callable[..., Server],
                       port: int) -> None:
    with sessions() as s:
        seed_small_city(s)
        seed_cases(s)
        device = make_device(s, "220200-hbj", [MEASUREMENT] * 2, credentials=True)
        res = hub.resource_create(s, SYSTEM, people_spec())
        s.commit()
        code, resource_id = res.code, res.id
    numbers = open_cases(engine, CASES)
    mqtt_url = f"mqtt://127.0.0.1:{port}"
    srv = servers(engine.url.render_as_string(hide_password=False), CITYOS_MQTT_URL=mqtt_url)
    srv.start()
    big = people_csv(BIG_ROWS, start=V1_ROWS)  # while the server starts
    srv.ready()
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        police = login(client, "police_staff")
        r = upload(client, code, people_csv(V1_ROWS), police, wait=True)
        assert r.status_code == 201, r.text

        assert device.key is not None
        pub = Publisher(port, device.key, device.streams, (ingest.now_ms() - 2 * 86_400_000) // 1000 * 1000)
        pub.start()
        work = CaseLoad(srv.url, numbers, gate=threading.Event())  # the last two steps wait for the import
        work.start()

        def mqtt_flowing() -> bool:
            with sessions() as s:
                return len(pub.acked) >= 50 and mqtt_count(s, device.streams) > 0

        wait_for(lambda: mqtt_flowing() and work.total >= 8, timeout=120, what="MQTT and case steps under way")
        r = upload(client, code, big, police, wait=False)
        assert r.status_code == 202, r.text
        job = r.json()["url"]
        while True:  # kill the server once the import writes rows, long before it is done
            state = client.get(job, headers=police).json()
            if state["state"] == "running" and state["rows"] >= 10_000:
                break
            assert state["state"] in ("queued", "running"), state
            time.sleep(0.01)
        assert work.gate is not None
        work.gate.set()  # case steps race the import now (on SQLite they queue for its write lock)
        time.sleep(0.3)
        srv.kill()
    acked_at_kill = len(pub.acked)
    time.sleep(0.3)  # the device goes on while CityOS is down: the broker keeps its session's messages
    pub.join()
    work.join()
    assert not work.failures, work.failures  # before the kill every step succeeded
    assert work.transport, "the kill came after every case step was done: nothing was in flight"
    assert state["rows"] < BIG_ROWS

    # What the killed process left, before anything starts again.
    with sessions() as s:
        progress = check_cases(s, work.acked, numbers)
        assert check_resource(s, engine, resource_id) == 1  # killed at 10,000 of the rows: nothing
    audit_ok(sessions)
    assert 0 < sum(progress.values()) < CASES * len(FLOW), progress

    # A restart: a new app on the same database, broker session and data dir (in this process;
    # only the kill needs a process of its own).
    settings = load_settings(database_url=srv.env["CITYOS_DATABASE_URL"], data_dir=srv.env["CITYOS_DATA_DIR"],
                             environment="test", secret_key=srv.env["CITYOS_SECRET_KEY"], mqtt_url=mqtt_url,
                             ops_refresh_seconds=0)
    app = create_app(settings)
    with TestClient(app) as client:
        acked = pub.acked
        assert len(acked) > acked_at_kill

        def all_stored() -> bool:
            with sessions() as s:
                if mqtt_count(s, device.streams) < len(acked) * PER_MESSAGE:
                    return False
                got = mqtt_stored(s, device.streams)
            return all((ds, t) in got for i in acked for ds, t, _ in pub.readings(i))

        wait_for(all_stored, timeout=60, what="every PUBACKed message stored after the restart")

        # The upload the kill interrupted is not "running": the new process does not know it,
        # and its file is gone from data_dir/uploads.
        r = client.get(job, headers=login(client, "police_staff"))
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert not list((Path(settings.data_dir) / "uploads").glob("upload-*")), "the killed upload's file is left"
        r = upload(client, code, people_csv(50, start=500_000), login(client, "police_staff"), wait=True)
        assert r.status_code == 201 and r.json()["version"] == 2 and r.json()["row_count"] == 50, r.text

        # Every acknowledged case step is there, and every open case takes its next step.
        with sessions() as s:
            check_cases(s, work.acked, numbers)
            now = advance_cases(client, s, numbers)
    app.state.platform.engine.dispose()

    with sessions() as s:
        got = mqtt_stored(s, device.streams)
        check_cases(s, now, numbers)
        check_resource(s, engine, resource_id)
    audit_ok(sessions)
    doubled = {k: v for k, v in got.items() if len(v) != 1}
    assert not doubled, f"{len(doubled)} readings stored more than once"
    expected: dict[tuple[int, int], float] = {}
    for i, _ in pub.sent:
        rows = pub.readings(i)
        present = [(ds, t) in got for ds, t, _ in rows]
        assert all(present) or not any(present), f"MQTT message {i} half stored"
        expected.update({(ds, t): v for ds, t, v in rows})
    assert {k: v[0] for k, v in got.items()} == {k: expected.get(k) for k in got}  # nothing else, as sent


def test_kill_9_during_audited_reads(engine, sessions, servers):
    """Shared reads are audited by group commit (one transaction for the records of concurrent
    reads): every read answered before a `kill -9` has its record, holding the request hash the
    answer carried, and the chain verifies."""
    with sessions() as s:
        seed_small_city(s)
        code = hub.resource_create(s, SYSTEM, people_spec()).code
        s.commit()
    srv = servers(engine.url.render_as_string(hide_password=False))
    srv.start()
    srv.ready()
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        police = login(client, "police_staff")
        assert upload(client, code, people_csv(V1_ROWS), police, wait=True).status_code == 201
    answered: list[tuple[str, str]] = []
    failures: list[str] = []

    def reader(k: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for i in itertools.count():
                try:
                    r = c.get(f"/api/hub/resources/{code}/rows", headers=police,
                              params={"purpose": "户籍核查", "limit": 5, "offset": (k + i) % 20})
                except httpx.HTTPError:
                    return  # the kill
                if r.status_code != 200:
                    failures.append(r.text)
                    return
                answered.append((r.headers["X-Audit-Record"], r.headers["X-Request-Hash"]))

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(answered) >= 300 or bool(failures), timeout=120, what="reads under way")
    srv.kill()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    with sessions() as s:
        logged = {r.hash: r.detail["request_hash"] for r in s.scalars(
            select(AuditRecord).where(AuditRecord.action == "hub.data.read"))}
    missing = [h for h, rhash in answered if logged.get(h) != rhash]
    assert not missing, f"{len(missing)} of {len(answered)} answered reads have no audit record"
    audit_ok(sessions)


# -- PostgreSQL stopped and started under load --------------------------------------------------


@dataclass
class Outage:
    """Takes the test's PostgreSQL away (`down`) and brings it back (`up`)."""

    url: str
    down: Callable[[], None]
    up: Callable[[], None]


@pytest.fixture
def outage(engine: Engine) -> Iterator[Outage]:
    """A database on a PostgreSQL of the test's own, stopped like a crash (immediate) and started
    again; where initdb cannot run (not root), a database of the shared server closed to new
    connections with every connection to it cut, which is what a restart looks like from the
    client's side."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL restart")
    if private_postgres_possible() is None:
        with private_postgres() as pg:
            url = pg.url("cityos")
            copy_database(engine, url)
            yield Outage(url, lambda: pg.stop("immediate"), pg.start)
        return
    name = f"cityos_restart_{uuid.uuid4().hex[:10]}"
    url = engine.url.set(database=name).render_as_string(hide_password=False)
    copy_database(engine, url)
    admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def allow(yes: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(yes).lower()}'))
            if not yes:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                             {"n": name})

    try:
        yield Outage(url, lambda: allow(False), lambda: allow(True))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_postgresql_restart_under_load(outage, keyring, tmp_path):
    pg_engine = db.make_engine(outage.url)
    try:
        _restart_under_load(pg_engine, outage, keyring, tmp_path)
    finally:
        pg_engine.dispose()


def _restart_under_load(pg_engine: Engine, outage: Outage, keyring: Keyring, tmp_path: Path) -> None:
    sessions = db.make_sessionmaker(pg_engine)
    with sessions() as s:
        seed_small_city(s)
        seed_cases(s)
        device = make_device(s, "220200-hbj", [MEASUREMENT] * 4, credentials=True)
    numbers = open_cases(pg_engine, CASES)
    # The app builds its own engine from the URL, as `cityos serve` does, and runs behind a real
    # uvicorn (in this process: it is PostgreSQL that goes away here, not the server).
    settings = load_settings(database_url=outage.url, data_dir=tmp_path / "data", environment="test",
                             secret_key="test-secret-key-0123456789", ops_refresh_seconds=0)
    settings.data_dir.mkdir()
    assert keyring.path is not None
    shutil.copy2(keyring.path, settings.data_dir / "keys.json")
    app = create_app(settings)
    with served(app) as server_url:
        readings = IngestLoad(server_url, Load(device, (ingest.now_ms() - 3 * 86_400_000) // 60_000 * 60_000))
        # The case steps wait at the gate before their last two rounds: those meet the outage.
        work = CaseLoad(server_url, numbers, threads=3, retry=True, gate=threading.Event())
        readings.start()
        work.start()
        first = CASES * (len(FLOW) - 2)
        wait_for(lambda: len(readings.load.acked) >= 3 and work.total >= first, timeout=120, what="load under way")

        outage.down()
        assert work.gate is not None
        work.gate.set()
        time.sleep(2.0)  # the database is away: the server answers, and says so
        health = httpx.get(f"{server_url}/healthz", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "degraded", health.text
        assert work.total == first  # no step after the gate could be taken
        outage.up()
        back = time.monotonic()
        before = len(readings.load.acked)
        wait_for(lambda: len(readings.load.acked) > before + 3 and work.total == CASES * len(FLOW),
                 timeout=120, what="the server recovering by itself")
        recovered_in = time.monotonic() - back
        assert httpx.get(f"{server_url}/healthz", timeout=10).status_code == 200
        readings.join()
        work.join()
    app.state.platform.engine.dispose()

    # During the outage every refusal was a clean 503 problem document, soon; no request hung (a
    # request unanswered after 30 s is a transport error).
    assert not readings.transport and not work.transport, (readings.transport, work.transport)
    refusals = readings.failures + work.failures
    assert refusals, "no request met the outage: the test proved nothing"
    assert all(f.clean_503() for f in refusals), [f for f in refusals if not f.clean_503()][:5]
    assert max(f.seconds for f in refusals) < 15, sorted(refusals, key=lambda f: -f.seconds)[:3]
    assert recovered_in < 30

    with sessions() as s:  # every acknowledged write is there, whole
        _check_store(s, readings.load)
        check_cases(s, work.acked, numbers)
        result = audit.verify(s)
        assert result.ok, result.message()
