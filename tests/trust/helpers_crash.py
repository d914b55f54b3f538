"""Shared by the crash, database-restart and backup-drill tests: a real server process, an MQTT
publisher that remembers its PUBACKs, case workers that remember their 2xx, checks that a case's
state, timeline, tasks, workflow state and audit records agree, and a private PostgreSQL 15."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from cityos.cases import engine as flow_engine
from cityos.cases import service as cases
from cityos.cases.models import Case, CaseEvent, CaseTask
from cityos.core.access import SYSTEM
from cityos.core.models import AuditRecord
from cityos.sensing.models import Observation
from tests.cases.conftest import POLICE
from tests.conftest import PASSWORD, _free_port
from tests.sensing.test_durability import ROOT, Load, Server

# -- the server process -------------------------------------------------------------------------


def server_app() -> Any:
    """App factory of the server process (`uvicorn --factory`): settings from CITYOS_* and, as in
    the test process, argon2 at test cost (production cost makes every sign-in a CPU second)."""
    from argon2 import PasswordHasher

    from cityos.app import create_app
    from cityos.core import auth

    auth.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    return create_app()


class Slow(Server):
    """The durability test's server process, with test-cost passwords and given longer to start
    (a loaded CI machine takes its time)."""

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "tests.trust.helpers_crash:server_app",
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def ready(self, timeout: float = 180) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:  # one client: each new one costs a TLS context
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"server did not start in {timeout} s: {self.log.read_text()[-3000:]}")


def server_for(database_url: str, keys_from: Path, tmp_path: Path, **env: str) -> Server:
    """A `uvicorn --factory` server on its own data dir (the test's keyring copied in), so what a
    killed upload leaves behind cannot leak into the session's shared data dir."""
    data = tmp_path / "server-data"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy2(keys_from / "keys.json", data / "keys.json")
    srv = Slow(database_url, data, tmp_path / "server.log")
    srv.env["CITYOS_OPS_REFRESH_SECONDS"] = "0"
    srv.env.update(env)
    return srv


def login(client: httpx.Client, username: str) -> dict[str, str]:
    """Bearer headers of a user of the small city (a TestClient is an httpx.Client too)."""
    r = client.post("/api/auth/token", data={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


# -- MQTT: a device that remembers what the broker acknowledged ----------------------------------

PER_MESSAGE = 5  # readings in one MQTT message: stored whole or not at all


@dataclass
class Publisher:
    """QoS 1 messages on a device's topics at a bounded rate; `acked` are those the broker PUBACKed."""

    port: int
    device_key: str
    streams: list[int]
    base: int  # epoch ms of the first reading
    rate: float = 50.0  # messages per second (Mosquitto must never drop from the bridge's queue)
    sent: list[tuple[int, Any]] = field(default_factory=list)  # (message number, MQTTMessageInfo)
    stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def readings(self, i: int) -> list[tuple[int, int, float]]:
        ds = self.streams[i % len(self.streams)]
        return [(ds, self.base + (i * PER_MESSAGE + j) * 1000, float(i * 10 + j)) for j in range(PER_MESSAGE)]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{self.device_key}", protocol=paho.MQTTv5)
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        try:
            started = time.monotonic()
            for i in itertools.count():
                if self.stop.is_set():
                    break
                ahead = i - (time.monotonic() - started) * self.rate
                if ahead > 0:
                    time.sleep(ahead / self.rate)
                rows = self.readings(i)
                payload = orjson.dumps([{"t": t, "v": v} for _, t, v in rows])
                self.sent.append((i, client.publish(f"cityos/devices/{self.device_key}/{rows[0][0]}", payload,
                                                    qos=1)))
            deadline = time.monotonic() + 10  # let the last PUBACKs arrive
            while time.monotonic() < deadline and not all(info.is_published() for _, info in self.sent[-200:]):
                time.sleep(0.01)
        finally:
            client.disconnect()
            client.loop_stop()

    def join(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def acked(self) -> list[int]:
        return [i for i, info in self.sent if info.is_published()]


def mqtt_count(session: Session, streams: list[int]) -> int:
    return int(session.scalar(select(func.count()).select_from(Observation)
                              .where(Observation.datastream_id.in_(streams))) or 0)


def mqtt_stored(session: Session, streams: list[int]) -> dict[tuple[int, int], list[float | None]]:
    """{(stream, time): [value, ...]}: a list, so a reading stored twice would show."""
    got: dict[tuple[int, int], list[float | None]] = defaultdict(list)
    rows = session.execute(select(Observation.datastream_id, Observation.phenomenon_time, Observation.result_number)
                           .where(Observation.datastream_id.in_(streams)))
    for ds, t, v in rows:
        got[(ds, t)].append(v)
    return got


@dataclass
class Refusal:
    """A request answered with an error: what it was, the answer, and how long it took."""

    what: str
    response: httpx.Response
    seconds: float

    def clean_503(self) -> bool:
        """A 503 problem document that tells the client to come back."""
        r = self.response
        return (r.status_code == 503 and r.headers.get("content-type", "").startswith("application/problem+json")
                and r.json().get("status") == 503 and "retry-after" in r.headers)

    def __repr__(self) -> str:
        return f"{self.what}: {self.response.status_code} in {self.seconds:.1f} s {self.response.text[:300]}"


# -- cases: workers that remember every 2xx, and the consistency check -----------------------------

# The hotline flow: (action, who, params), and the case's status once that step is taken.
FLOW = [("dispatch", "hotline_agent", {"department": POLICE}), ("accept", "police_staff", {}),
        ("reply", "police_staff", {"reply": "已处理"}), ("verify", "hotline_agent", {"fixed": True}),
        ("callback", "hotline_agent", {"satisfaction": "satisfied"})]
STATUS_AFTER = {"receive": "new", "dispatch": "dispatched", "accept": "handling", "reply": "replied",
                "verify": "replied", "callback": "closed"}
ACTIONS = ["receive", *(a for a, _, _ in FLOW)]


def open_cases(engine: Engine, n: int, phone: str | None = None) -> list[str]:
    """`n` hotline cases registered through the service layer, far enough apart not to be duplicates
    (with the caller's phone, kept encrypted, when given)."""
    numbers = []
    extra = {"reporter_phone": phone} if phone else {}
    with Session(engine) as s:
        for i in range(n):
            got = cases.case_intake(s, SYSTEM, {"category": "noise", "description": f"夜间噪音扰民 {i}",
                                                "lon": 126.40 + 0.01 * i, "lat": 43.80, **extra}, channel="phone")
            numbers.append(got.case.number)
        s.commit()
    return numbers


@dataclass
class CaseLoad:
    """Threads stepping cases through the hotline flow; `acked[number]` are the steps answered 2xx."""

    url: str
    numbers: list[str]
    threads: int = 4
    acked: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failures: list[Refusal] = field(default_factory=list)
    transport: list[str] = field(default_factory=list)  # requests that got no answer at all
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    retry: bool = False  # keep retrying a refused step (the database comes back) instead of giving up
    gate: threading.Event | None = None  # when given, the last two steps wait for it
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            headers = {user: login(client, user) for user in ("hotline_agent", "police_staff")}
        for k in range(self.threads):
            mine = self.numbers[k::self.threads]
            t = threading.Thread(target=self._run, args=(mine, headers), daemon=True)
            t.start()
            self._workers.append(t)

    def _run(self, numbers: list[str], headers: dict[str, dict[str, str]]) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for k, (action, who, params) in enumerate(FLOW):  # step by step across the cases: many mid-flow
                if self.gate is not None and k == len(FLOW) - 2:
                    while not self.gate.wait(0.05):
                        if self.stop.is_set():
                            return
                for number in numbers:
                    refused = False
                    while not self.stop.is_set():
                        t0 = time.monotonic()
                        try:
                            r = client.post(f"/api/cases/{number}/actions/{action}", json=params,
                                            headers=headers[who])
                        except httpx.HTTPError as exc:
                            with self.lock:
                                self.transport.append(f"{action} {number}: {exc!r}")
                            return
                        with self.lock:
                            # A 409 on retrying a refused step: the refusal came after its COMMIT
                            # (the database went away while answering), so the step is taken.
                            if r.is_success or (r.status_code == 409 and refused):
                                self.acked[number].append(action)
                                break
                            self.failures.append(Refusal(action, r, time.monotonic() - t0))
                        if not self.retry:
                            return
                        refused = True
                        time.sleep(0.05)
                    if self.stop.is_set():
                        return

    def join(self) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(30)

    @property
    def total(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.acked.values())


def check_cases(session: Session, acked: dict[str, list[str]], numbers: list[str],
                in_flight: int | None = 1) -> dict[str, int]:
    """Every acknowledged step is in its case's timeline, and at most `in_flight` more (None: any);
    status, open tasks, workflow state and audit records agree with the timeline, step for step.
    Returns how far each case got."""
    progress = {}
    for number in numbers:
        case = session.scalar(select(Case).where(Case.number == number))
        assert case is not None, number
        events = [a for a in session.scalars(select(CaseEvent.action).where(CaseEvent.case_id == case.id)
                                             .order_by(CaseEvent.id)) if a in ACTIONS]
        assert events == ACTIONS[:len(events)], f"{number}: timeline {events} is not the flow's prefix"
        done = acked.get(number, [])
        assert events[1:len(done) + 1] == done, f"{number}: acknowledged {done} but timeline {events}"
        # At most the one step in flight at the kill may have committed without its answer.
        assert in_flight is None or len(events) - 1 - len(done) <= in_flight, f"{number}: {events} vs {done}"
        assert case.status == STATUS_AFTER[events[-1]], f"{number}: {case.status} after {events}"
        audited = list(session.scalars(select(AuditRecord.action).where(
            AuditRecord.object_type == "case", AuditRecord.object_id == number,
            AuditRecord.outcome == "success").order_by(AuditRecord.seq)))
        assert audited == ["cases.intake", *(f"cases.{a}" for a in events[1:])], f"{number}: audit {audited}"
        open_steps = sorted(t.step for t in session.scalars(select(CaseTask).where(
            CaseTask.case_id == case.id, CaseTask.state.in_(("open", "accepted")))))
        if case.status == "closed":
            assert case.engine_state is None and not open_steps and case.step == ""
        else:
            flow = flow_engine.load(case.engine_state)  # the workflow state loads, and agrees
            ready = sorted(r.step for r in flow_engine.ready(flow))
            assert ready == open_steps, f"{number}: engine ready {ready}, open tasks {open_steps}"
            assert sorted(case.step.split(",")) == sorted(set(ready))
        progress[number] = len(events) - 1
    return progress


def advance_cases(client: httpx.Client, session: Session, numbers: list[str], most: int = 4
                  ) -> dict[str, list[str]]:
    """Take the next step of `most` open cases (on a restarted server: their state carries on);
    return the steps each case has taken now, all acknowledged."""
    headers = {user: login(client, user) for user in ("hotline_agent", "police_staff")}
    now = {}
    for number in numbers:
        case = session.scalar(select(Case).where(Case.number == number))
        assert case is not None
        taken = int(session.scalar(select(func.count()).select_from(CaseEvent).where(
            CaseEvent.case_id == case.id, CaseEvent.action.in_(ACTIONS[1:]))) or 0)
        if taken < len(FLOW) and most > 0:
            most -= 1
            action, who, params = FLOW[taken]
            r = client.post(f"/api/cases/{number}/actions/{action}", json=params, headers=headers[who])
            assert r.status_code == 200, f"{number} {action}: {r.status_code} {r.text[:500]}"
            assert r.json()["status"] == STATUS_AFTER[action]
            taken += 1
        now[number] = [a for a, _, _ in FLOW[:taken]]
    return now


# -- HTTP ingest that goes on through refusals ----------------------------------------------------


@dataclass
class IngestLoad:
    """Batches of readings posted one after another (tests/sensing/test_durability.py's `Load`
    says what each holds and keeps what was acknowledged); refusals are noted and the next batch
    goes out."""

    url: str
    load: Load
    failures: list[Refusal] = field(default_factory=list)
    transport: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        device = self.load.device
        assert device.key and device.secret
        with httpx.Client(base_url=self.url, auth=(device.key, device.secret), timeout=30) as client:
            while not self.stop.is_set():
                batch = next(self.load.numbers)
                t0 = time.monotonic()
                try:
                    r = client.post("/api/sensing/observations", content=self.load.body(batch),
                                    headers={"Content-Type": "application/json"})
                except httpx.HTTPError as exc:
                    self.transport.append(f"batch {batch}: {exc!r}")
                    self.load.unacked.append(batch)
                    return
                if r.is_success:
                    self.load.acked.append((batch, r.json()))
                else:
                    self.load.unacked.append(batch)
                    self.failures.append(Refusal("ingest", r, time.monotonic() - t0))
                    time.sleep(0.05)

    def join(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(30)


# -- a PostgreSQL 15 of the test's own, to restart at will ---------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class PrivatePostgres:
    """A throwaway cluster on a free port, run as the `postgres` OS user (initdb refuses root)."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                        "-l", str(self.root / "postgres.log"), "-o", opts, "-w", "-t", "60", *args],
                       check=True, capture_output=True)

    def stop(self, mode: str = "immediate") -> None:
        self.ctl("-m", mode, "stop")

    def start(self) -> None:
        self.ctl("start")


def private_postgres_possible() -> str | None:
    """Why a private cluster cannot be made here, or None."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return "not root: cannot run initdb as the postgres user"
    if not (PG_BIN / "initdb").exists():
        return f"no {PG_BIN}/initdb"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres OS user"
    return None


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="cityos-pg-"))
    user = pwd.getpwnam("postgres")
    os.chown(root, user.pw_uid, user.pw_gid)
    pg = PrivatePostgres(root, _free_port())
    try:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(pg.data),
                        "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"],
                       check=True, capture_output=True)
        pg.start()
        yield pg
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(pg.data),
                        "-m", "immediate", "-w", "stop"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def copy_database(source: Engine, target_url: str) -> None:
    """Create the target database and fill it with the (migrated, emptied) source: schema and
    migration state in a second, instead of running every migration again."""
    target = make_url(target_url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()
    src = source.url.set(drivername="postgresql").render_as_string(hide_password=False)
    dst = target.set(drivername="postgresql").render_as_string(hide_password=False)
    dump = subprocess.run(["pg_dump", "--format=custom", f"--dbname={src}"], check=True, capture_output=True)
    subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={dst}"], input=dump.stdout,
                   check=True, capture_output=True)
