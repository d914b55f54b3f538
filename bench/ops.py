"""How fast is the operations center's big screen with 30 indicators and a month of history?

Run: .venv/bin/python bench/ops.py [--postgres postgresql+psycopg://user@host/db]
                                   [--indicators 30] [--days 30] [--loads 5] [--readings 100]
                                   [--screens 50] [--seconds 60]

Migrates a throw-away database (a temp SQLite file; with --postgres, a scratch database created
beside the one named, dropped afterwards), seeds a city with the operations center, a PM2.5
monitor with device credentials and --indicators indicators over six themes (the first reads the
monitor and refreshes every second; the others read other properties, cases, warnings and
incidents every 5 s), and bulk-inserts --days of 1-minute history for each (30 × 43,200 rows by
default). Then it serves the app with `cityos serve` in a subprocess and measures:

  paint    first paint of /ops/screen in Chromium (Playwright, Debian's chromium), from the
           navigation's start until body[data-ready="1"], over --loads loads. Aim: < 2 s.
  live     a reading posted over HTTP ingest to the monitor → the value seen by a listening SSE
           client of /api/ops/stream, over --readings readings. Aim: p99 < 2 s.
  screens  --screens SSE clients open for --seconds while a reading arrives every 0.5 s: the
           server's CPU seconds / wall seconds. Aim: < 1 core.

Each figure is printed with its ratio to the aim. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from common import cpu_seconds, on_database, serve_cityos, stop  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from cityos.core import access, crypto, db, service  # noqa: E402
from cityos.core.access import SYSTEM  # noqa: E402

AIM_PAINT_S = 2.0
AIM_LIVE_P99_S = 2.0
AIM_CORES = 1.0
OPS, PASSWORD, SECRET = "220200-yxzx", "bench-Passw0rd!", "bench-secret-key-" + "x" * 32
THEMES = ("environment", "traffic", "hotline", "alerts", "sharing", "city")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def line(name: str, value: float, aim: float, unit: str = "s") -> None:
    print(f"  {name:<34} {value:8.3f} {unit}   aim < {aim} {unit}   ratio {value / aim:5.2f}"
          f"  {'OK' if value < aim else 'MISSED'}")


# -- the city ------------------------------------------------------------------------------------


def seed(url: str, data_dir: Path, n: int, days: int) -> dict[str, Any]:
    from cityos.ops import indicators
    from cityos.ops.models import Indicator, IndicatorValue
    from cityos.sensing import ingest
    from cityos.sensing import service as sensing
    from cityos.sensing.models import Datastream, ObservedProperty, Sensor, Thing

    db.upgrade(url)
    crypto.activate(crypto.Keyring.load(data_dir / "keys.json"))
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    with db.session_scope(sessions) as s:
        service.department_create(s, SYSTEM, code="220200", name="吉林市", kind="city", admin_code="220200")
        service.department_create(s, SYSTEM, code=OPS, name="市城市运行管理中心", kind="bureau",
                                  parent_code="220200")
        service.user_create(s, SYSTEM, username="ops_staff", password=PASSWORD, department_code=OPS,
                            role=access.DEPARTMENT_STAFF)
    with db.session_scope(sessions) as s:
        from cityos.core.models import Department

        dept = s.scalar(select(Department).where(Department.code == OPS))
        thing = Thing(department_id=dept.id, name="pm25-monitor", kind="air")
        sensor = Sensor(department_id=dept.id, name="pm25 sensor", meta="")
        prop = ObservedProperty(name="PM2.5", definition="urn:pm25")
        s.add_all([thing, sensor, prop])
        s.flush()
        ds = Datastream(thing_id=thing.id, department_id=dept.id, sensor_id=sensor.id,
                        observed_property_id=prop.id, name="pm25", observation_type=ingest.MEASUREMENT,
                        unit_of_measurement={"name": "ug/m3", "symbol": "ug/m3", "definition": ""})
        s.add(ds)
        s.flush()
        key, secret = sensing.device_issue(s, SYSTEM, thing)
        device = {"key": key, "secret": secret, "ds": ds.id}
        sources = [("cases.backlog", {}), ("cases.created_today", {}), ("ops.incidents_active", {}),
                   ("ops.warnings_open", {}), ("sensing.alerts_open", {}), ("sensing.online_rate", {})]
        for i in range(n):
            if i == 0:
                source, params, refresh = "sensing.latest", {"property": "PM2.5", "max_age_s": 86_400}, 1
            elif i % 3 == 0:
                source, params, refresh = "sensing.latest", {"property": f"P{i}"}, 5  # no data: shown as such
            else:
                (source, params), refresh = sources[i % len(sources)], 5
            indicators.indicator_upsert(s, SYSTEM, {
                "code": f"bench.{i:02d}", "name": f"指标{i:02d}" if i else "PM2.5 浓度",
                "name_en": f"Indicator {i:02d}" if i else "PM2.5", "unit": "μg/m³" if i == 0 else None,
                "theme": THEMES[i % len(THEMES)], "source": source, "params": params,
                "refresh_seconds": refresh, "department": OPS,
                "thresholds": {"direction": "up", "attention": 75, "warning": 115, "critical": 150}})
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    minutes = days * 1440
    with sessions() as s:
        ids = list(s.scalars(select(Indicator.id).order_by(Indicator.id)))
    rng = random.Random(8)
    with engine.begin() as conn:
        for ind in ids:
            value, rows = 50.0, []
            for m in range(minutes):
                value = max(0.0, value + rng.gauss(0, 2))
                at = now - dt.timedelta(minutes=minutes - m)
                rows.append({"indicator_id": ind, "at": at, "value": value})
                if len(rows) == 20_000:
                    conn.execute(insert(IndicatorValue.__table__), rows)
                    rows = []
            if rows:
                conn.execute(insert(IndicatorValue.__table__), rows)
    print(f"  history: {len(ids)} indicators × {minutes:,} minutes in {time.perf_counter() - t0:.0f} s")
    engine.dispose()
    return device


# -- the server ---------------------------------------------------------------------------------


def start_server(url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    return serve_cityos(url, data_dir, SECRET)


def send(client: httpx.Client, base: str, device: dict[str, Any], value: float) -> None:
    r = client.post(f"{base}/api/sensing/devices/{device['key']}/readings",
                    auth=(device["key"], device["secret"]),
                    json=[{"ds": device["ds"], "t": int(time.time() * 1000), "v": value}])
    r.raise_for_status()


class Listener(threading.Thread):
    """An SSE client of /api/ops/stream: when each value of the first indicator arrived."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__(daemon=True)
        self.base, self.token = base, token
        self.seen: dict[float, float] = {}
        self.events = 0
        self.bytes = 0
        self.stopping = False
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(10, read=60)) as client, client.stream(
                    "GET", f"{self.base}/api/ops/stream",
                    headers={"Authorization": f"Bearer {self.token}"}) as r:
                self.ready.set()
                for raw in r.iter_lines():
                    if self.stopping:
                        return
                    self.bytes += len(raw) + 1
                    if not raw.startswith("data: "):
                        continue
                    self.events += 1
                    body = orjson.loads(raw[6:])
                    at = time.time()
                    for tile in body.get("tiles", {}).values():
                        for item in tile.get("indicators", []):
                            if item["code"] == "bench.00" and item.get("value") is not None:
                                self.seen.setdefault(float(item["value"]), at)
        except httpx.HTTPError:
            pass
        finally:
            self.ready.set()


# -- the figures ----------------------------------------------------------------------------------


def paint(base: str, loads: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080}, locale="zh-CN")
            page.goto(f"{base}/console/login?next=/ops/screen")
            page.get_by_label("用户名").fill("ops_staff")
            page.get_by_label("密码").fill(PASSWORD)
            page.get_by_role("button", name="登录").click()
            page.wait_for_selector('body[data-ready="1"]', timeout=30_000)
            times = []
            for _ in range(loads):
                page.goto(f"{base}/ops/screen")
                page.wait_for_selector('body[data-ready="1"]', timeout=30_000)
                times.append(page.evaluate("performance.now()") / 1000)
                cards = page.locator("[data-indicator]").count()
        finally:
            browser.close()
    print(f"  paint: {loads} loads, {cards} indicator cards; median {statistics.median(times):.3f} s")
    line("first paint p99", pct(times, 99), AIM_PAINT_S)


def live(base: str, token: str, device: dict[str, Any], readings: int) -> None:
    listener = Listener(base, token)
    listener.start()
    listener.ready.wait(10)
    time.sleep(1.0)
    latencies, lost = [], 0
    rng = random.Random(1)
    with httpx.Client(timeout=10) as client:
        for i in range(readings):
            value = 40.0 + i + 0.5  # every reading a value not seen before
            t0 = time.time()
            send(client, base, device, value)
            deadline = t0 + 10
            while value not in listener.seen and time.time() < deadline:
                time.sleep(0.005)
            if value in listener.seen:
                latencies.append(listener.seen[value] - t0)
            else:
                lost += 1
            time.sleep(rng.uniform(0.1, 0.6))
    listener.stopping = True
    if not latencies:
        print("  live: no reading reached the screen")
        return
    print(f"  live: {len(latencies)} readings seen, {lost} not within 10 s; "
          f"median {statistics.median(latencies):.3f} s")
    line("reading → screen p99", pct(latencies, 99), AIM_LIVE_P99_S)


def screens(base: str, token: str, device: dict[str, Any], n: int, seconds: float, pid: int) -> None:
    clients = [Listener(base, token) for _ in range(n)]
    for c in clients:
        c.start()
    for c in clients:
        c.ready.wait(10)
    time.sleep(1.0)
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    value = 60.0
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - wall0 < seconds:
            value = 60.0 + (value - 59.0) % 50
            send(client, base, device, value + random.random())
            time.sleep(0.5)
    cores = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    for c in clients:
        c.stopping = True
    events = sum(c.events for c in clients)
    print(f"  screens: {n} open for {seconds:.0f} s, {events:,} events received "
          f"({sum(c.bytes for c in clients) / 1e6:.1f} MB)")
    line(f"server CPU with {n} screens", cores, AIM_CORES, "cores")


def bench(label: str, url: str, data_dir: Path, args: argparse.Namespace) -> None:
    print(f"\n== {label} ==")
    device = seed(url, data_dir, args.indicators, args.days)
    proc, base = start_server(url, data_dir)
    try:
        token = httpx.post(f"{base}/api/auth/token", data={"username": "ops_staff", "password": PASSWORD},
                           timeout=10).json()["access_token"]
        with httpx.Client(timeout=10) as client:
            send(client, base, device, 40.0)
        time.sleep(2)
        paint(base, args.loads)
        live(base, token, device, args.readings)
        screens(base, token, device, args.screens, args.seconds, proc.pid)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--indicators", type=int, default=30, help="indicators on the screen (default 30)")
    parser.add_argument("--days", type=int, default=30, help="days of 1-minute history each (default 30)")
    parser.add_argument("--loads", type=int, default=5, help="page loads timed (default 5)")
    parser.add_argument("--readings", type=int, default=100, help="readings timed (default 100)")
    parser.add_argument("--screens", type=int, default=50, help="SSE clients held open (default 50)")
    parser.add_argument("--seconds", type=float, default=60, help="how long they stay open (default 60)")
    parser.add_argument("--postgres", metavar="URL", help="run on PostgreSQL (a scratch database there)")
    args = parser.parse_args()
    on_database(args.postgres, "cityos_bench_ops", lambda label, url, work: bench(label, url, work, args))


if __name__ == "__main__":
    main()
