"""A 2xx means on disk: readings acknowledged by a real server survive `kill -9` of that server.

A real uvicorn process serves the ingest API on the test's database; two loader threads post
batches as fast as they can and remember every batch that got a 2xx; the server is killed with
SIGKILL mid-stream. Every acknowledged reading must then be in sensor_observations, each
unacknowledged batch must be there entirely or not at all, and the rollups must count exactly
what is stored. Ingest then carries on and recognises the repeats.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cityos.sensing import ingest
from cityos.sensing.ingest import MEASUREMENT
from tests.conftest import _free_port, seed_small_city
from tests.sensing.helpers_ingest import (
    Device,
    make_device,
    raw_counts,
    rollup_counts,
    stored,
    with_ingest,
)

ROOT = Path(__file__).resolve().parents[2]
PER_STREAM = 500  # readings per stream in a batch
KILL_AFTER = 12  # acknowledged batches before the kill
MAX_BATCHES = 400  # a loader stops here even if the kill never came


class Server:
    """`python -m uvicorn --factory` on the test's database, in its own process."""

    def __init__(self, database_url: str, data_dir: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_DATA_DIR": str(data_dir),
                    "CITYOS_SECRET_KEY": "test-secret-key-0123456789", "CITYOS_ENVIRONMENT": "test",
                    "CITYOS_CONFIG": str(log.parent / "absent.toml"), "CITYOS_LOG_LEVEL": "WARNING"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the process; `ready` waits for it to answer."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "tests.sensing.helpers_ingest:server_app",
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def server(engine: Engine, data_dir: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(engine.url.render_as_string(hide_password=False), data_dir, tmp_path / "server.log")
    yield srv
    srv.kill()


@dataclass
class Load:
    """What the loaders sent and what the server acknowledged, batch by batch."""

    device: Device
    base: int
    acked: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # (batch, answer)
    unacked: list[int] = field(default_factory=list)
    numbers: itertools.count[int] = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def readings(self, batch: int) -> list[tuple[int, int, float]]:
        """(stream, time, value) of batch number `batch`: PER_STREAM seconds of every stream."""
        return [(ds, self.base + (batch * PER_STREAM + i) * 1000, float(batch * 10_000 + i + k))
                for k, ds in enumerate(self.device.streams) for i in range(PER_STREAM)]

    def body(self, batch: int) -> bytes:
        """Half the streams as column blocks, half as one object per reading."""
        half = len(self.device.streams) // 2
        out: list[object] = []
        for k, ds in enumerate(self.device.streams):
            rows = [r for r in self.readings(batch) if r[0] == ds]
            if k < half:
                out.append({"ds": ds, "t": [r[1] for r in rows], "v": [r[2] for r in rows]})
            else:
                out.extend({"ds": ds, "t": ingest.ms_to_iso(r[1]), "v": r[2]} for r in rows)
        return orjson.dumps(out)


def _loader(url: str, load: Load, stop: threading.Event) -> None:
    assert load.device.key and load.device.secret
    with httpx.Client(base_url=url, auth=(load.device.key, load.device.secret), timeout=30) as client:
        while not stop.is_set():
            batch = next(load.numbers)
            if batch >= MAX_BATCHES:
                return
            try:
                r = client.post("/api/sensing/observations", content=load.body(batch),
                                headers={"Content-Type": "application/json"})
            except httpx.HTTPError:  # the server is gone: this batch was never acknowledged
                with load.lock:
                    load.unacked.append(batch)
                return
            with load.lock:
                if r.is_success:
                    load.acked.append((batch, r.json()))
                else:
                    load.unacked.append(batch)


def _check_store(session: Session, load: Load) -> dict[tuple[int, int], float | None]:
    got = stored(session)
    acked = {b for b, _ in load.acked}
    for batch in acked:
        for ds, t, v in load.readings(batch):
            assert got.get((ds, t)) == v, f"acknowledged reading of batch {batch} lost: {(ds, t)}"
    for batch in load.unacked:  # one batch is one transaction: all of it or none of it
        present = [(ds, t) in got for ds, t, _ in load.readings(batch)]
        assert all(present) or not any(present), f"batch {batch} half stored"
    expected = sum(len(load.readings(b)) for b in acked)
    assert len(got) >= expected
    return got


def _check_rollups(session: Session) -> None:
    raw = raw_counts(session)
    for grain in (60, 3600, 86400):
        assert rollup_counts(session, grain) == raw


def test_acknowledged_readings_survive_kill_9(server: Server, sessions: sessionmaker[Session],
                                              app: FastAPI) -> None:
    server.start()  # it starts while the city is seeded
    with sessions() as s:
        seed_small_city(s)
        device = make_device(s, "220200-hbj", [MEASUREMENT] * 4, credentials=True)
    load = Load(device, (ingest.now_ms() - 3 * 86_400_000) // 60_000 * 60_000)
    server.ready()
    stop = threading.Event()
    loaders = [threading.Thread(target=_loader, args=(server.url, load, stop)) for _ in range(3)]
    for t in loaders:
        t.start()
    deadline = time.monotonic() + 60
    while len(load.acked) < KILL_AFTER and time.monotonic() < deadline and any(t.is_alive() for t in loaders):
        time.sleep(0.01)
    server.kill()  # mid-stream: the loaders have batches in flight
    stop.set()
    for t in loaders:
        t.join(30)
    assert len(load.acked) >= KILL_AFTER, server.log.read_text()[-3000:]
    assert all(a == {"accepted": 4 * PER_STREAM, "stored": 4 * PER_STREAM, "duplicates": 0}
               for _, a in load.acked)

    with sessions() as s:
        before = _check_store(s, load)

    # back up (in-process this time, with a fresh writer as after a restart): a repeated batch is
    # all duplicates, a late one is stored
    assert device.key and device.secret
    last = max(b for b, _ in load.acked)
    with TestClient(with_ingest(app)) as client:
        # Started again, the app first rolls up what the killed server still owed the rollups.
        with sessions() as s:
            _check_rollups(s)
        client.auth = (device.key, device.secret)
        r = client.post("/api/sensing/observations", content=load.body(last))
        assert r.json() == {"accepted": 4 * PER_STREAM, "stored": 0, "duplicates": 4 * PER_STREAM}
        late = [{"ds": ds, "t": load.base - 60_000, "v": 1.0} for ds in device.streams]
        r = client.post("/api/sensing/observations", content=orjson.dumps(late))
        assert r.json() == {"accepted": 4, "stored": 4, "duplicates": 0}
    rt = getattr(app.state.platform, "sensing", None)  # the app's shutdown stops it; older apps did not
    if rt is not None:
        rt.stop()
    with sessions() as s:
        after = _check_store(s, load)
    assert len(after) == len(before) + 4
