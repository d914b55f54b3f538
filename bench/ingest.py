"""How fast does sensing take readings in (数据接入), and how fast are rollups read?

Run: .venv/bin/python bench/ingest.py                     every part, SQLite, then PostgreSQL
     .venv/bin/python bench/ingest.py --parts raw,http --seconds 20 --skip-pg   a quick look
     parts: raw, http, mqtt, latency, soak, rollup   (soak takes --soak-seconds, 600 by default)

The figures of issue 6, each printed with its aim and PASS or MISS:

  raw       the baseline: the same rows the HTTP run sends, executemany'd straight into
            sensor_observations of the same kind of database (its unique (stream, time) index
            included; on SQLite with the writer's page cache and synchronous=FULL, one commit
            per 5,000 rows; on PostgreSQL with the store's own INSERT ... SELECT FROM unnest),
            nothing else: no parsing, no rollups, no rules.
  http      `cityos serve` (uvicorn, one process) with the rules engine running, on a fresh
            database of 1,000 streams on 100 devices, and a threshold rule on their observed
            property so that every reading is evaluated. A loader process keeps 2 keep-alive
            connections busy POSTing /api/sensing/observations, 5,000 readings per request as
            [{"ds","t","v"}, ...], for --seconds. Rate = readings acknowledged (2xx) per second;
            afterwards the stored count must equal the acknowledged count. Aim: >= 100,000/s on
            SQLite, and >= 0.6 of the raw rate. The column form {"ds","t":[..],"v":[..]} is
            measured too.
  mqtt      the same server with CITYOS_MQTT_URL set to a Mosquitto of the benchmark's own (no
            queue limit): two plain-socket publishers send --mqtt-messages QoS 1 single-reading
            messages to cityos/devices/<key>/<ds> as fast as the broker takes them, then 5x as
            many readings in batches of 100; rate = readings stored per second, from the first
            publish until the last reading is stored.
            Aims: >= 20,000 single-reading messages/s, >= 100,000 readings/s in batches.
  latency   during an HTTP load at the rate reached above: 200 probe streams each get one
            reading over the rule's threshold; latency = the alert's opened_at minus the
            moment the probe request was sent. Aim: p99 < 1 s.
  soak      HTTP at a paced 20,000 readings/s for --soak-seconds (600 in the issue), sampling
            the server's resident memory every 10 s. Aims: growth < 50 MB, stored == sent.
  rollup    1,000 streams x 30 days at 1 reading/minute (43.2 M readings): their hour and day
            rollups (what ingest keeps) are written directly, as are the minute rollups with
            --full (43.2 M rows, slow to build); raw rows are not (the query reads rollups
            only). Then `timeseries.aggregate_many(..., grain 1h, mean)` over the month for
            all 1,000 streams, best of 3. Aim: < 1 s.

Each database is a throw-away one: a temp SQLite file, a scratch database on --pg (dropped).
It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cpu_seconds, free_port, stop  # noqa: E402

from cityos.core import auth, db  # noqa: E402
from cityos.core.models import Department  # noqa: E402
from cityos.core.settings import Settings  # noqa: E402
from cityos.models_registry import import_all_models  # noqa: E402
from cityos.sensing import ingest, store  # noqa: E402
from cityos.sensing.models import Datastream, Location, ObservedProperty, Rule, Sensor, Thing  # noqa: E402

STREAMS, DEVICES = 1000, 100
CONNECTIONS = 4
PER_REQUEST = 5000
THRESHOLD = 10_000.0  # normal readings stay far below; probes go above
DAY_MS = 86_400_000


INSERT_ROLLUP = ("INSERT INTO sensor_rollups (datastream_id, grain, bucket, count, min, max, sum, last_time, "
                 "last_value) VALUES (:d, :g, :b, :c, :mn, :mx, :s, :lt, :lv)")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def lost(acked: int, stored: int) -> str:
    return "none lost" if stored >= acked else f"LOST {acked - stored:,}"


# -- databases -----------------------------------------------------------------------------------

def fresh_sqlite(work: Path, name: str) -> str:
    path = work / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def fresh_pg(base: str, name: str) -> str:
    url = make_url(base)
    scratch = f"cityos_bench_{name}_{secrets.token_hex(3)}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{scratch}"'))
    admin.dispose()
    return url.set(database=scratch).render_as_string(hide_password=False)


def drop_pg(url: str) -> None:
    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
    admin.dispose()


def seed(url: str, work: Path) -> dict[str, Any]:
    """1,000 streams on 100 devices (plus 200 probe streams), an API key, a threshold rule."""
    import_all_models()
    db.upgrade(url)
    engine = db.make_engine(url)
    with Session(engine) as s:
        dept = Department(code="220200-hbj", name="市环保局", kind="bureau", path="/1/")
        s.add(dept)
        s.flush()
        dept.path = f"/{dept.id}/"
        sensor = Sensor(department_id=dept.id, name="β射线法颗粒物监测仪", meta="https://example.org/bam.pdf")
        prop = ObservedProperty(name="PM2.5", definition="http://vocab.nerc.ac.uk/collection/P01/current/PM25/")
        s.add_all([sensor, prop])
        s.flush()
        ids, probes, devices = [], [], []
        for d in range(DEVICES + 1):
            lon, lat = 126.4 + d * 0.003, 43.8 + (d % 10) * 0.01
            thing = Thing(department_id=dept.id, name=f"空气站 {d}", kind="air",
                          device_key=f"dev_bench{d:04d}", secret_hash=None)
            thing.locations.append(Location(department_id=dept.id, name=f"站点 {d}", lon=lon, lat=lat,
                                            location={"type": "Point", "coordinates": [lon, lat]}))
            s.add(thing)
            s.flush()
            devices.append(thing.device_key)
            n = STREAMS // DEVICES if d < DEVICES else 200
            for i in range(n):
                ds = Datastream(thing_id=thing.id, department_id=dept.id, sensor_id=sensor.id,
                                observed_property_id=prop.id, name=f"PM2.5 {d}-{i}",
                                observation_type=ingest.MEASUREMENT,
                                unit_of_measurement={"name": "µg/m³", "symbol": "µg/m³", "definition": ""})
                s.add(ds)
                s.flush()
                (ids if d < DEVICES else probes).append(ds.id)
        s.add(Rule(department_id=dept.id, name="PM2.5 超标", kind="threshold", target_type="property",
                   target_id=prop.id, params={"op": ">", "value": THRESHOLD, "clear": THRESHOLD * 0.9,
                                              "for_seconds": 0},
                   severity="warning", created_by="bench"))
        raw_key, _ = auth.apikey_issue(s, name="bench", department=dept, created_by="bench",
                                       scopes=["sensing.observation.create", "sensing.read"])
        s.commit()
    engine.dispose()
    return {"ids": ids, "probes": probes, "key": raw_key, "devices": devices}


# -- readings ------------------------------------------------------------------------------------

def body_objects(ids: list[int], k: int, t0: int) -> bytes:
    """Request k: 5 readings for each of the 1,000 streams, one second apart."""
    base = t0 + k * 5 * 1000
    return orjson.dumps([{"ds": ids[j % len(ids)], "t": base + (j // len(ids)) * 1000,
                          "v": float((j * 7 + k) % 300)} for j in range(PER_REQUEST)])


def body_columns(ids: list[int], k: int, t0: int) -> bytes:
    base = t0 + k * 5 * 1000
    per = PER_REQUEST // len(ids)
    return orjson.dumps([{"ds": ds, "t": [base + i * 1000 for i in range(per)],
                          "v": [float((ds + i + k) % 300) for i in range(per)]} for ds in ids])


def raw_rate(url: str, ids: list[int], t0: int, requests: int) -> float:
    """Rows per second executemany'd straight into sensor_observations, in the same batches."""
    engine = db.make_engine(url)
    rows_per = [[(ids[j % len(ids)], t0 + k * 5000 + (j // len(ids)) * 1000, None, None,
                  float((j * 7 + k) % 300), None, None, None, None, None, None) for j in range(PER_REQUEST)]
                for k in range(requests)]
    cols = ", ".join(store.COLUMNS)
    start = time.perf_counter()
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            raw = conn.connection.driver_connection
            mb = Settings.model_fields["sensing_sqlite_cache_mb"].default  # the writer's own settings
            raw.execute(f"PRAGMA cache_size=-{mb * 1024}")
            raw.execute("PRAGMA synchronous=FULL")
            marks = ", ".join("?" * 11)
            sql = f"INSERT INTO sensor_observations ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
            for rows in rows_per:
                raw.executemany(sql, rows)
                raw.commit()
        else:  # the store's own statement: one INSERT ... SELECT FROM unnest(arrays) per batch
            for rows in rows_per:
                with conn.begin():
                    conn.exec_driver_sql(store._PG_INSERT, tuple(store._columns_of(rows, len(store.COLUMNS))))
    elapsed = time.perf_counter() - start
    engine.dispose()
    return requests * PER_REQUEST / elapsed


# -- the server ----------------------------------------------------------------------------------


def serve(url: str, work: Path, port: int, mqtt: str | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CITYOS_DATABASE_URL=url, CITYOS_DATA_DIR=str(work / "data"),
               CITYOS_ENVIRONMENT="test", CITYOS_LOG_LEVEL="WARNING")
    env.pop("CITYOS_MQTT_URL", None)
    if mqtt:
        env["CITYOS_MQTT_URL"] = mqtt
    log = (work / f"serve-{port}.log").open("wb")
    cmd = [str(Path(sys.executable).parent / "cityos"), "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cityos serve exited: see {work}/serve-{port}.log")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status < 500:
                # Start the sensing runtime (writer, rules) before the clock runs.
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("cityos serve did not start within 120 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _post_loop(port: int, key: str, bodies: Any, until: float, out: Any, pace: float | None,
               first_k: int, step: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    k, acked, refused, failed = first_k, 0, 0, 0
    started = time.monotonic()
    while time.monotonic() < until:
        if pace is not None:  # readings/s for this connection
            due = started + (acked + refused + failed) / pace
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
        body = bodies(k)
        conn.request("POST", "/api/sensing/observations", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status < 300:
            acked += PER_REQUEST
        elif resp.status == 429:
            refused += 1
            time.sleep(float(resp.getheader("Retry-After", "1")) / 10)
            continue  # resend the same readings
        else:
            failed += 1
        k += step
    out.put((acked, refused, failed))


def loader(port: int, key: str, ids: list[int], t0: int, seconds: float, form: str, out: Any,
           pace: float | None = None, connections: int = 2) -> None:
    """Runs in its own process: `connections` keep-alive clients POSTing for `seconds`."""
    make = body_objects if form == "objects" else body_columns
    until = time.monotonic() + seconds
    q: Any = __import__("queue").Queue()
    threads = [threading.Thread(target=_post_loop, args=(port, key, lambda k: make(ids, k, t0), until, q,
                                                         None if pace is None else pace / connections,
                                                         c, connections)) for c in range(connections)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    total = [0, 0, 0]
    while not q.empty():
        for i, v in enumerate(q.get()):
            total[i] += v
    out.put(tuple(total))


def count_rows(url: str) -> int:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM sensor_observations")).scalar_one()
    engine.dispose()
    return int(n)


def http_run(url: str, work: Path, seeded: dict[str, Any], seconds: float, form: str, t0: int,
             probes: bool = False, pace: float | None = None) -> dict[str, Any]:
    port = free_port()
    proc = serve(url, work, port)
    try:
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # start the runtime
        warm.request("POST", "/api/sensing/observations", body=b"[]",
                     headers={"Authorization": f"Bearer {seeded['key']}", "Content-Type": "application/json"})
        warm.getresponse().read()
        before = count_rows(url)
        out: Any = mp.Queue()
        p = mp.Process(target=loader, args=(port, seeded["key"], seeded["ids"], t0, seconds, form, out, pace,
                                            CONNECTIONS))
        cpu0 = cpu_seconds(proc.pid)
        rss = [rss_mb(proc.pid)]
        start = time.monotonic()
        p.start()
        sent_probes: list[tuple[int, float]] = []
        if probes:
            sent_probes = _probe(port, seeded, seconds, t0)
        while p.is_alive():
            p.join(10)
            rss.append(rss_mb(proc.pid))
        elapsed = time.monotonic() - start
        acked, refused, failed = out.get()
        cpu = cpu_seconds(proc.pid) - cpu0
        time.sleep(1.0)
        stored = count_rows(url) - before
        latencies = _latencies(url, sent_probes) if probes else []
    finally:
        stop(proc)
    return {"acked": acked, "refused": refused, "failed": failed, "elapsed": elapsed,
            "rate": acked / elapsed, "stored": stored, "cpu": cpu, "rss": rss, "latencies": latencies}


def _probe(port: int, seeded: dict[str, Any], seconds: float, t0: int) -> list[tuple[int, float]]:
    """One over-threshold reading per probe stream, spread over the run; (stream, wall time sent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {seeded['key']}", "Content-Type": "application/json"}
    sent = []
    gap = max(0.05, (seconds - 5) / len(seeded["probes"]))
    time.sleep(2)
    for ds in seeded["probes"]:
        now = int(time.time() * 1000)
        at = time.time()
        conn.request("POST", "/api/sensing/observations", headers=headers,
                     body=orjson.dumps([{"ds": ds, "t": now, "v": THRESHOLD * 2}]))
        resp = conn.getresponse()
        resp.read()
        if resp.status < 300:
            sent.append((ds, at))
        time.sleep(gap)
    return sent


def _latencies(url: str, sent: list[tuple[int, float]]) -> list[float]:
    time.sleep(2)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        opened = {ds: at for ds, at in conn.execute(text(
            "SELECT datastream_id, opened_at FROM sensor_alerts"))}
    engine.dispose()
    out = []
    for ds, at in sent:
        got = opened.get(ds)
        if got is None:
            out.append(float("inf"))
            continue
        if isinstance(got, str):
            import datetime as dt
            got = dt.datetime.fromisoformat(got)
        if got.tzinfo is None:
            import datetime as dt
            got = got.replace(tzinfo=dt.UTC)
        out.append(got.timestamp() - at)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


# -- MQTT ----------------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _mqtt_str(text_: str) -> bytes:
    raw = text_.encode()
    return len(raw).to_bytes(2, "big") + raw


def _publisher(broker: str, devices: list[str], ids: list[int], t0: int, count: int, batch: int,
               offset: int, out: Any) -> None:
    """A plain-socket MQTT 3.1.1 publisher (paho's Python client tops out at a few thousand QoS 1
    messages/s, below what is measured): PUBLISH packets pipelined at QoS 1, at most 20,000 in
    flight, PUBACKs counted by a reader thread."""
    host, port = broker.removeprefix("mqtt://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(_packet(0x10, _mqtt_str("MQTT") + bytes([4, 2]) + (60).to_bytes(2, "big")
                         + _mqtt_str(f"bench-pub-{offset}-{secrets.token_hex(3)}")))
    assert sock.recv(4)[:1] == b"\x20", "CONNACK expected"
    acked = [0]
    done = threading.Event()

    def reader() -> None:
        pending = b""
        while not done.is_set():
            data = sock.recv(65536)
            if not data:
                return
            pending += data
            n = len(pending) // 4  # PUBACK: 0x40 0x02 id id
            acked[0] += n
            pending = pending[n * 4:]

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    per_dev = len(ids) // len(devices)
    topics = [_mqtt_str(f"cityos/devices/{devices[i // per_dev]}/{ds}") for i, ds in enumerate(ids)]
    sent, n = 0, 0
    while sent < count:
        chunk = []
        for _ in range(min(500, count - sent)):
            i = n % len(ids)  # the two publishers send the same streams, half a round apart
            t = t0 + (n // len(ids)) * 1000 * max(1, batch) + offset * 500
            if batch:
                payload = orjson.dumps([{"t": t + k * 1000, "v": float(k % 50)} for k in range(batch)])
            else:
                payload = b'{"t":%d,"v":%d.5}' % (t, n % 50)
            chunk.append(_packet(0x32, topics[i] + (n % 65535 + 1).to_bytes(2, "big") + payload))
            n += 1
        sock.sendall(b"".join(chunk))
        sent += len(chunk)
        while sent - acked[0] > 20_000:
            time.sleep(0.001)
    deadline = time.monotonic() + 60
    while acked[0] < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    sock.sendall(b"\xe0\x00")
    sock.close()
    out.put((sent, acked[0]))


def private_broker(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Mosquitto of the benchmark's own with no queue limit for slow subscribers: the shared
    broker's default (max_queued_messages 1000) drops QoS 1 messages once CityOS lags behind a
    flood, which would measure the broker's limit, not CityOS."""
    port = free_port()
    conf = work / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_queued_bytes 0\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("mosquitto did not start")


def mqtt_run(url: str, work: Path, seeded: dict[str, Any], messages: int, batch: int,
             t0: int) -> dict[str, Any]:
    """Publish `messages` as fast as the broker takes them; the rate is readings stored per second
    from the first publish until the last of them is stored (CityOS's PUBACKs go to the broker,
    after COMMIT; the publishers only see the broker's)."""
    broker_proc, broker = private_broker(work)
    port = free_port()
    proc = serve(url, work, port, mqtt=broker)
    try:
        time.sleep(3)  # the bridge connects and subscribes
        before = count_rows(url)
        out: Any = mp.Queue()
        pubs = [mp.Process(target=_publisher, args=(broker, seeded["devices"][:DEVICES], seeded["ids"], t0,
                                                    messages // 2, batch, i, out)) for i in range(2)]
        start = time.monotonic()
        for p in pubs:
            p.start()
        for p in pubs:
            p.join()
        published = time.monotonic() - start
        sent = acked = 0
        for _ in pubs:
            s, a = out.get()
            sent, acked = sent + s, acked + a
        expected = sent * (batch or 1)
        stored, last_change, last = 0, time.monotonic(), -1
        while time.monotonic() - last_change < 10:
            stored = count_rows(url) - before
            if stored != last:
                last, last_change = stored, time.monotonic()
            if stored >= expected:
                break
            time.sleep(0.2)
        elapsed = last_change - start if stored < expected else time.monotonic() - start
    finally:
        stop(proc)
        broker_proc.terminate()
        broker_proc.wait()
    if stored < expected:
        lines = [ln for ln in (work / f"serve-{port}.log").read_text(errors="replace").splitlines()
                 if "mqtt" in ln.lower() or "error" in ln.lower()]
        print("    server log (MQTT lines):", *lines[-8:], sep="\n      ")
    return {"messages": sent, "readings": expected, "stored": stored, "elapsed": elapsed,
            "published": published, "rate": stored / elapsed, "msg_rate": stored / (batch or 1) / elapsed}


# -- rollup query --------------------------------------------------------------------------------

def rollup_run(url: str, full: bool) -> dict[str, Any]:
    from cityos.core.access import SYSTEM
    from cityos.sensing import timeseries

    seeded = seed(url, Path(tempfile.gettempdir()))
    ids = seeded["ids"]
    engine = db.make_engine(url)
    t0 = (int(time.time() * 1000) // DAY_MS - 31) * DAY_MS
    rng = random.Random(5)
    start_fill = time.perf_counter()
    grains = [(3600, 60), (86400, 1440)] + ([(60, 1)] if full else [])
    for grain, per in grains:
        buckets = 30 * DAY_MS // (grain * 1000)
        with engine.begin() as conn:
            for ds in ids:
                rows = []
                for b in range(buckets):
                    mean = 30 + 20 * rng.random()
                    start_ms = t0 + b * grain * 1000
                    rows.append({"d": ds, "g": grain, "b": start_ms, "c": per, "mn": mean - 10,
                                 "mx": mean + 10, "s": mean * per, "lt": start_ms + grain * 1000 - 60_000,
                                 "lv": mean})
                conn.execute(text(INSERT_ROLLUP), rows)
    fill = time.perf_counter() - start_fill
    best = float("inf")
    points = 0
    for _ in range(3):
        with Session(engine) as s:
            start = time.perf_counter()
            got = timeseries.aggregate_many(s, SYSTEM, ids, t0, t0 + 30 * DAY_MS, "1h", ("mean",))
            best = min(best, time.perf_counter() - start)
            points = sum(len(v) for v in got.values())
    engine.dispose()
    return {"seconds": best, "points": points, "fill": fill}


# -- main ----------------------------------------------------------------------------------------

def run_db(label: str, make_url_: Any, args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    parts = set(args.parts.split(","))
    t0 = (int(time.time() * 1000) // DAY_MS - 20) * DAY_MS
    requests = max(20, int(args.raw_requests))
    if "raw" in parts or "http" in parts:
        url = make_url_("raw")
        seeded = seed(url, work)
        rate = raw_rate(url, seeded["ids"], t0, requests)
        results[f"{label} raw"] = rate
        print(f"  {label}: raw executemany into sensor_observations: {rate:,.0f} rows/s "
              f"({requests * PER_REQUEST:,} rows in batches of {PER_REQUEST:,})", flush=True)
        cleanup(url)
    if "http" in parts:
        for form in ("objects", "columns"):
            url = make_url_(f"http{form[0]}")
            seeded = seed(url, work)
            r = http_run(url, work, seeded, args.seconds, form, t0)
            raw = results.get(f"{label} raw", float("nan"))
            aim = r["rate"] >= 100_000 if label == "SQLite" else True
            print(f"  {label}: HTTP bulk ({form}) {r['rate']:,.0f} readings/s over {r['elapsed']:.0f} s "
                  f"(aim >= 100,000 on SQLite: {verdict(aim) if label == 'SQLite' else 'reported'}); "
                  f"ratio to raw {r['rate'] / raw:.2f} (aim >= 0.6: {verdict(r['rate'] / raw >= 0.6)}); "
                  f"acknowledged {r['acked']:,}, stored {r['stored']:,} "
                  f"({lost(r['acked'], r['stored'])}); 429s {r['refused']}, errors {r['failed']}; "
                  f"server CPU {r['cpu'] / r['elapsed']:.2f} cores",
                  flush=True)
            results[f"{label} http {form}"] = r["rate"]
            cleanup(url)
    if "latency" in parts:
        url = make_url_("lat")
        seeded = seed(url, work)
        pace = args.latency_rate
        r = http_run(url, work, seeded, max(30.0, args.seconds), "objects", t0, probes=True, pace=pace)
        lat = r["latencies"]
        p50, p99 = pct(lat, 50), pct(lat, 99)
        print(f"  {label}: publish-to-alert under {r['rate']:,.0f} readings/s: {len(lat)} probes, "
              f"p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms (aim < 1 s: {verdict(p99 < 1)})",
              flush=True)
        cleanup(url)
    if "mqtt" in parts:
        for batch in (0, 100):
            url = make_url_(f"mqtt{batch}")
            seeded = seed(url, work)
            n = args.mqtt_messages // (batch or 1) * (5 if batch else 1)
            r = mqtt_run(url, work, seeded, n, batch, t0)
            what = f"batches of {batch}" if batch else "single-reading messages"
            aim = 100_000 if batch else 20_000
            print(f"  {label}: MQTT {what}: {r['rate']:,.0f} readings/s stored "
                  f"({r['msg_rate']:,.0f} messages/s; "
                  f"aim >= {aim:,}: {verdict(r['rate'] >= aim)}); {r['messages']:,} messages published in "
                  f"{r['published']:.1f} s, {r['stored']:,} of {r['readings']:,} readings stored in "
                  f"{r['elapsed']:.1f} s ({lost(r['readings'], r['stored'])})", flush=True)
            cleanup(url)
    if "soak" in parts:
        url = make_url_("soak")
        seeded = seed(url, work)
        r = http_run(url, work, seeded, args.soak_seconds, "objects", t0, pace=20_000)
        growth = max(r["rss"]) - r["rss"][0]
        late = r["rss"][-1] - r["rss"][min(len(r["rss"]) - 1, 6)]
        print(f"  {label}: soak {r['elapsed']:.0f} s at {r['rate']:,.0f} readings/s: "
              f"RSS {r['rss'][0]:.0f} -> "
              f"{r['rss'][-1]:.0f} MB (max growth {growth:.0f} MB, aim < 50: {verdict(growth < 50)}; "
              f"after the first minute {late:+.0f} MB); sent {r['acked']:,}, stored {r['stored']:,} "
              f"({verdict(r['stored'] == r['acked'])})", flush=True)
        cleanup(url)
    if "rollup" in parts:
        url = make_url_("rollup")
        r = rollup_run(url, args.full)
        print(f"  {label}: hourly mean, 1,000 streams x 30 days from rollups: {r['seconds'] * 1000:,.0f} ms "
              f"for {r['points']:,} points (aim < 1 s: {verdict(r['seconds'] < 1)}; rollups written in "
              f"{r['fill']:.0f} s)", flush=True)
        cleanup(url)


_made: list[str] = []


def cleanup(url: str) -> None:
    if url.startswith("postgresql"):
        drop_pg(url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="raw,http,latency,mqtt,soak,rollup")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--mqtt-messages", type=int, default=600_000,
                    help="single-reading messages per MQTT run (batches: 5x as many readings)")
    ap.add_argument("--soak-seconds", type=float, default=600)
    ap.add_argument("--latency-rate", type=float, default=None,
                    help="readings/s of the background load during the latency probes (default: flat out)")
    ap.add_argument("--raw-requests", type=int, default=200)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--full", action="store_true", help="also write the 43.2 M minute rollups")
    ap.add_argument("--connections", type=int, default=CONNECTIONS, help="loader connections for HTTP")
    args = ap.parse_args()
    globals()["CONNECTIONS"] = args.connections
    print(f"CityOS ingest benchmark — {platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cityos-bench-ingest-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        if not args.skip_sqlite:
            run_db("SQLite", lambda name: fresh_sqlite(work, name), args, work, results)
        if not args.skip_pg:
            run_db("PostgreSQL", lambda name: fresh_pg(args.pg, name), args, work, results)


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
