"""Load and soak (负载与浸泡): a steady mixed load on the demo city, with no error and flat memory?

Run: make soak                                   10 minutes on SQLite
     .venv/bin/python bench/soak.py [--minutes 10] [--postgres postgresql+psycopg://user@host/db]
                                    [--scale 0.005] [--load 1] [--only portal,api] [--flat 1.0]

Builds the demo city (`cityos demo`'s own seed: departments, users, the data hub with rows and
its sharing grants, open data, the one map, devices with credentials, cases) at --scale in a
throw-away database (a temp SQLite file; with --postgres, a scratch database created beside the
one named, dropped afterwards), serves it with `cityos serve` on a loopback port, and for
--minutes drives it at fixed rates (times --load; --only runs some kinds alone). The load is
open loop: each kind has its own schedule, shared by a few threads, so a slow answer does not
slow the load down. The rates are meant to load the server, not to saturate it:

  portal   20 req/s  public pages: /, /data, /data/topics, /data/dataset/{name}, /map,
                     /cases/report, /cases/track (anonymous)
  api      20 req/s  the hub catalog /api/hub/resources (token), OGC API Features items,
                     SensorThings Observations (token), CKAN package_search (anonymous)
  sharing   5 req/s  市交通局's staff reading the rows of every resource granted to it,
                     /api/hub/resources/{code}/rows with the grant's fields and X-Purpose
  ingest    4 req/s  50 readings each (200 readings/s), POST /api/sensing/observations as the
                     demo's devices (HTTP Basic), values near each stream's last one; every
                     answer must say all 50 were stored
  cases     2 req/s  case work through /api/cases: a resident reports, the 12345 agent
                     dispatches, the bureau accepts and replies, the agent verifies and calls
                     back (closed); each step must leave the case in the state it names

Per route it records count, errors (an exception, or an answer other than the expected one),
p50/p95/p99/max latency (from the moment the request is sent); the server's resident memory
(VmRSS) every 10 s, and the slope of a least-squares line through the second half's samples.
The run fails (exit 1) on any error, a server that died or logged an ERROR, or a slope of
--flat MB/min or more (memory flat; not judged, and said so, when the second half holds fewer
than 6 samples, i.e. a run under 2 minutes). A kind that fell below 90% of its target rate is
flagged: the machine did not keep up and its figures are for a lighter load. The server runs
with its rate limits raised far above this load (CITYOS_RATE_LIMIT_*: the limiter works, and is
soaked, but refuses nothing) since the soak comes from one loopback address. Results go to
bench/results/soak-<time>-<database>.json (not committed)."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("CITYOS_CONFIG", str(ROOT / "bench" / "no-such-cityos.toml"))  # no local toml

import httpx  # noqa: E402
import orjson  # noqa: E402
from common import cpu_seconds, on_database, serve_cityos, stop  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

SECRET = "bench-soak-secret-" + "s" * 32
RESULTS = ROOT / "bench" / "results"
RSS_EVERY_S = 10.0
FLAT_MB_PER_MIN = 1.0
MIN_HALF_SAMPLES = 6  # a slope through fewer RSS samples (a second half under ~50 s) says nothing
BATCH = 50  # readings per ingest request
# Far above the soak's rates: the limiter counts every request but refuses none.
UNLIMITED = {"CITYOS_RATE_LIMIT_ENABLED": "true", "CITYOS_RATE_LIMIT_LOGIN": "100000/minute",
             "CITYOS_RATE_LIMIT_ANONYMOUS": "1000000/minute",
             "CITYOS_RATE_LIMIT_KEY": "1000000/minute"}
# Hotline categories (事项类别) of the demo, the bureau each goes to and that bureau's staff.
CASE_KINDS = (("noise", "220200-hbj", "env_staff", "楼下KTV半夜噪音扰民"),
              ("parking", "220200-gaj", "police_staff", "小区门口车辆乱停堵塞消防通道"),
              ("bus", "220200-jtj", "transport_staff", "3路公交车到站不停"))
HOTLINE_AGENT = "hotline_agent"
SHARING_USER = "transport_staff"
CATALOG_USER, STA_USER = "transport_staff", "env_staff"
CENTRE = (126.574, 43.882)  # 昌邑区
console = Console(width=None if sys.stdout.isatty() else 150)


# -- what is recorded -----------------------------------------------------------------------------


@dataclass
class Route:
    """The answers of one route: latencies in seconds and the errors seen."""

    kind: str
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)


class Record:
    """Every answer of the run, by route; thread-safe."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.lag: dict[str, float] = {}
        self.lock = threading.Lock()

    def add(self, kind: str, name: str, seconds: float, error: str | None = None) -> None:
        with self.lock:
            route = self.routes.setdefault(name, Route(kind, name))
            route.latencies.append(seconds)
            if error is not None:
                route.errors += 1
                if len(route.samples) < 5:
                    route.samples.append(error[:300])

    def late(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.lag[kind] = max(self.lag.get(kind, 0.0), seconds)


def call(client: httpx.Client, record: Record, kind: str, name: str, method: str, url: str,
         expect: int = 200, ctype: str = "application/json", check: Callable[[Any], str | None] | None = None,
         **kw: Any) -> Any:
    """Send one request, time it, and record it as an error unless its status is `expect`, its
    content type `ctype` and, for JSON, `check(body)` finds nothing wrong; returns the JSON body
    (None for other types) when the answer is right, None when it is not."""
    t0 = time.perf_counter()
    try:
        r = client.request(method, url, **kw)
    except httpx.HTTPError as exc:
        record.add(kind, name, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
        return None
    elapsed = time.perf_counter() - t0
    error, body = None, None
    if r.status_code != expect:
        error = f"{r.status_code} {method} {url}: {r.text[:200]}"
    elif not r.headers.get("content-type", "").startswith(ctype):
        error = f"{method} {url}: content type {r.headers.get('content-type')!r}, not {ctype}"
    elif ctype.endswith("json"):
        try:
            body = orjson.loads(r.content)
            error = check(body) if check else None
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
            error = f"{method} {url}: {type(exc).__name__} {exc} in {r.text[:200]}"
    record.add(kind, name, elapsed, error)
    return body if error is None else None


# -- who signs in ---------------------------------------------------------------------------------


class Tokens:
    """Bearer tokens of the demo users, fetched again when half their life has passed."""

    def __init__(self, base: str, password: str) -> None:
        self.base, self.password = base, password
        self.got: dict[str, tuple[float, str, float]] = {}
        self.lock = threading.Lock()

    def headers(self, username: str) -> dict[str, str]:
        with self.lock:
            at, token, ttl = self.got.get(username, (0.0, "", 0.0))
            if time.monotonic() - at > ttl / 2:
                r = httpx.post(f"{self.base}/api/auth/token", timeout=30,
                               data={"username": username, "password": self.password})
                r.raise_for_status()
                token, ttl = r.json()["access_token"], float(r.json().get("expires_in", 3600))
                self.got[username] = (time.monotonic(), token, ttl)
        return {"Authorization": f"Bearer {token}"}


# -- the city ------------------------------------------------------------------------------------


@dataclass
class City:
    """What the load needs to know about the seeded city."""

    password: str
    devices: list[tuple[str, str, list[tuple[int, float]]]]  # key, secret, (stream id, last value)
    datasets: list[str] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)


def seed(url: str, data_dir: Path, scale: float) -> City:
    """The demo city, built by the demo's own seed."""
    from cityos.core.settings import load_settings
    from cityos.demo import seed as demo

    settings = load_settings(database_url=url, data_dir=data_dir, environment="test", secret_key=SECRET)
    t0 = time.perf_counter()
    report = demo.build(settings, scale=scale)
    assert report.sensing is not None and report.hub is not None, "the demo built no data hub"
    city = city_of(url, report.sensing.devices_file, settings.demo_password)
    console.print(f"  demo city at scale {scale}: {report.hub.rows:,} hub rows, "
                  f"{sum(len(s) for _, _, s in city.devices)} measurement streams on {len(city.devices)} "
                  f"devices, built in {time.perf_counter() - t0:.0f} s")
    return city


def city_of(url: str, devices_file: Path, password: str) -> City:
    """The devices' single measurement streams (what ingest sends) with their last values."""
    from sqlalchemy import select

    from cityos.core import db
    from cityos.sensing import ingest
    from cityos.sensing.models import Datastream, Thing

    secrets = {d["key"]: d["secret"] for d in orjson.loads(devices_file.read_bytes())["devices"]}
    engine = db.make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(Thing.device_key, Datastream.id, Datastream.last_value)
                            .join(Thing, Thing.id == Datastream.thing_id)
                            .where(Datastream.observation_type == ingest.MEASUREMENT,
                                   Datastream.kind == "single").order_by(Datastream.id)).all()
    engine.dispose()
    streams: dict[str, list[tuple[int, float]]] = {}
    for key, ds, last in rows:
        if key in secrets:
            streams.setdefault(key, []).append((ds, float(last if last is not None else 20.0)))
    return City(password, [(key, secrets[key], s) for key, s in streams.items()])


def discover(client: httpx.Client, tokens: Tokens, city: City) -> None:
    """Datasets, map collections and the sharing user's grants, as a visitor would find them."""
    city.datasets = client.get("/api/3/action/package_list").raise_for_status().json()["result"]
    collections = client.get("/ogc/collections").raise_for_status().json()["collections"]
    city.collections = [c["id"] for c in collections]
    grants = client.get("/api/hub/grants", headers=tokens.headers(SHARING_USER)).raise_for_status().json()
    city.grants = [g for g in grants["items"] if g["active"]]
    if not (city.datasets and city.collections and city.grants and city.devices):
        raise SystemExit(f"the demo city lacks something the soak needs: {len(city.datasets)} datasets, "
                         f"{len(city.collections)} collections, {len(city.grants)} grants, "
                         f"{len(city.devices)} devices")


# -- the mix --------------------------------------------------------------------------------------


def portal(client: httpx.Client, record: Record, rng: random.Random, city: City, tokens: Tokens) -> None:
    pages = ("/", "/data", "/data/topics", "/data/dataset/{name}", "/map", "/cases/report", "/cases/track")
    page = rng.choice(pages)
    url = page.format(name=rng.choice(city.datasets))
    call(client, record, "portal", f"GET {page}", "GET", url, ctype="text/html")


def api(client: httpx.Client, record: Record, rng: random.Random, city: City, tokens: Tokens) -> None:
    which = rng.randrange(4)
    if which == 0:
        call(client, record, "api", "GET /api/hub/resources", "GET", "/api/hub/resources",
             params={"limit": 20, "offset": rng.randrange(0, 40, 20)}, headers=tokens.headers(CATALOG_USER))
    elif which == 1:
        call(client, record, "api", "GET /ogc/collections/{id}/items", "GET",
             f"/ogc/collections/{rng.choice(city.collections)}/items", params={"limit": 10},
             ctype="application/geo+json", check=lambda body: None if body["type"] == "FeatureCollection"
             else f"not a FeatureCollection: {body['type']}")
    elif which == 2:
        call(client, record, "api", "GET /sta/v1.1/Observations", "GET", "/sta/v1.1/Observations",
             params={"$top": 20, "$orderby": "phenomenonTime desc"}, headers=tokens.headers(STA_USER))
    else:
        call(client, record, "api", "GET /api/3/action/package_search", "GET", "/api/3/action/package_search",
             params={"q": rng.choice(("空气", "公交", "学校", "医疗", "企业", "")), "rows": 10},
             check=lambda body: None if body.get("success") else "CKAN answered success: false")


def sharing(client: httpx.Client, record: Record, rng: random.Random, city: City, tokens: Tokens) -> None:
    grant = rng.choice(city.grants)
    wanted = set(grant["fields"])
    call(client, record, "sharing", "GET /api/hub/resources/{code}/rows", "GET",
         f"/api/hub/resources/{grant['resource']}/rows",
         params={"fields": ",".join(grant["fields"]), "limit": 20, "offset": rng.randrange(0, 60, 20)},
         headers={**tokens.headers(SHARING_USER), "X-Purpose": quote(grant["purpose"])},
         check=lambda body: None if all(set(row) <= wanted for row in body["rows"])
         else f"fields outside the grant: {body['rows'][0]}")


class Readings:
    """Ingest batches: the next device in turn, readings near each stream's last value, times
    one millisecond apart and never repeated (so every reading is new)."""

    def __init__(self, city: City) -> None:
        self.devices = itertools.cycle(city.devices)
        self.clock: dict[int, int] = {}
        self.lock = threading.Lock()

    def next(self, rng: random.Random) -> tuple[str, str, list[dict[str, Any]]]:
        with self.lock:
            key, secret, streams = next(self.devices)
            now = int(time.time() * 1000)
            body = []
            for i in range(BATCH):
                ds, last = streams[i % len(streams)]
                t = max(now - BATCH, self.clock.get(ds, 0) + 1)
                self.clock[ds] = t
                body.append({"ds": ds, "t": t, "v": round(last * rng.uniform(0.98, 1.02), 3)})
        return key, secret, body


def ingest_batch(client: httpx.Client, record: Record, rng: random.Random, readings: Readings) -> None:
    key, secret, body = readings.next(rng)
    call(client, record, "ingest", "POST /api/sensing/observations", "POST", "/api/sensing/observations",
         content=orjson.dumps(body), auth=(key, secret), headers={"Content-Type": "application/json"},
         check=lambda got: None if got.get("stored") == BATCH else f"not all stored: {got}")


@dataclass
class Case:
    number: str
    category: str
    department: str
    handler: str
    step: int = 0


class CaseWork:
    """Cases in flight; each call moves one of them a step on (report, dispatch, accept, reply,
    verify, callback), or reports a new one. No two threads hold the same case."""

    STEPS = ("report", "dispatch", "accept", "reply", "verify", "callback")
    STATUS = {"dispatch": "dispatched", "accept": "handling", "reply": "replied", "callback": "closed"}

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self.open: list[Case] = []
        self.lock = threading.Lock()
        self.closed = 0

    def act(self, client: httpx.Client, record: Record, rng: random.Random) -> None:
        with self.lock:
            case = self.open.pop(0) if len(self.open) >= 3 else None
        if case is None:
            self.report(client, record, rng)
            return
        action = self.STEPS[case.step + 1]
        user = case.handler if action in ("accept", "reply") else HOTLINE_AGENT
        params = {"dispatch": {"department": case.department, "note": "请核实处理"},
                  "reply": {"reply": "已到现场核实并处理完毕"}, "verify": {"fixed": True},
                  "callback": {"satisfaction": "satisfied"}}.get(action)
        want = self.STATUS.get(action)
        body = call(client, record, "cases", f"POST /api/cases/{{number}}/actions/{action}", "POST",
                    f"/api/cases/{case.number}/actions/{action}", json=params,
                    headers=self.tokens.headers(user),
                    check=lambda d: None if want is None or d["status"] == want
                    else f"{case.number} {action}: status {d['status']}, not {want}")
        if body is None:
            return  # recorded as an error; the case is dropped
        case.step += 1
        with self.lock:
            if action == "callback":
                self.closed += 1
            else:
                self.open.append(case)

    def report(self, client: httpx.Client, record: Record, rng: random.Random) -> None:
        category, department, handler, text = rng.choice(CASE_KINDS)
        spot = {"lon": round(CENTRE[0] + rng.uniform(-0.005, 0.005), 6),
                "lat": round(CENTRE[1] + rng.uniform(-0.005, 0.005), 6)}
        body = call(client, record, "cases", "POST /api/cases", "POST", "/api/cases", expect=201,
                    json={"category": category, "description": text, **spot},
                    check=lambda d: None if d["status"] == "new" else f"reported as {d['status']}")
        if body is not None:
            with self.lock:
                self.open.append(Case(body["number"], category, department, handler))


# -- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of load: its target rate, threads and what one request is."""

    name: str
    rate: float
    threads: int
    one: Callable[[httpx.Client, random.Random], None]


def drive(base: str, kinds: list[Kind], seconds: float, record: Record) -> None:
    """Each kind on its own schedule (request i due at start + i / rate), shared by its threads."""
    start = time.monotonic() + 0.5
    end = start + seconds

    def worker(kind: Kind, counter: itertools.count[int], seed_: int) -> None:
        rng = random.Random(seed_)
        with httpx.Client(base_url=base, timeout=httpx.Timeout(30)) as client:
            while True:
                due = start + next(counter) / kind.rate
                if due >= end or time.monotonic() >= end:  # a backlog is not worked off after the end
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    record.late(kind.name, -wait)
                try:
                    kind.one(client, rng)
                except Exception as exc:  # a bug of the soak or a failed sign-in: an error, not a dead thread
                    record.add(kind.name, f"{kind.name}: exception", 0.0, f"{type(exc).__name__}: {exc}")

    threads = []
    for k, kind in enumerate(kinds):
        counter = itertools.count()
        for i in range(kind.threads):
            threads.append(threading.Thread(target=worker, args=(kind, counter, k * 100 + i), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """The server's RSS every RSS_EVERY_S seconds, from the start of the load."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while True:
            try:
                self.samples.append((time.monotonic() - t0, rss_mb(self.pid)))
            except OSError:
                return  # the server is gone; the run reports it
            if self.done.wait(RSS_EVERY_S):
                self.samples.append((time.monotonic() - t0, rss_mb(self.pid)))
                return


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over time, MB per minute."""
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(m for _, m in samples) / n
    sxx = sum((t - mx) ** 2 for t, _ in samples)
    return 60 * sum((t - mx) * (m - my) for t, m in samples) / sxx if sxx else 0.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def run(label: str, url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    console.print(f"\n[bold]== {label} ==[/bold]")
    return load(label, url, work, seed(url, work, args.scale), args)


def load(label: str, url: str, work: Path, city: City, args: argparse.Namespace) -> dict[str, Any]:
    """Serve the city in `work` and run the mix against it."""
    os.environ.update(UNLIMITED)
    proc, base = serve_cityos(url, work, SECRET)
    tokens = Tokens(base, city.password)
    record = Record()
    readings, cases = Readings(city), CaseWork(tokens)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            discover(client, tokens, city)
        kinds = [
            Kind("portal", 20 * args.load, 8, lambda c, r: portal(c, record, r, city, tokens)),
            Kind("api", 20 * args.load, 8, lambda c, r: api(c, record, r, city, tokens)),
            Kind("sharing", 5 * args.load, 3, lambda c, r: sharing(c, record, r, city, tokens)),
            Kind("ingest", 4 * args.load, 2, lambda c, r: ingest_batch(c, record, r, readings)),
            Kind("cases", 2 * args.load, 2, lambda c, r: cases.act(c, record, r)),
        ]
        kinds = [k for k in kinds if not args.only or k.name in args.only.split(",")]
        console.print(f"  load: {', '.join(f'{k.name} {k.rate:g}/s' for k in kinds)} "
                      f"for {args.minutes:g} min against {base} (pid {proc.pid})")
        sampler = Sampler(proc.pid)
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        sampler.start()
        drive(base, kinds, args.minutes * 60, record)
        wall = time.monotonic() - wall0
        cores = (cpu_seconds(proc.pid) - cpu0) / wall
        sampler.done.set()
        sampler.join()
        alive = proc.poll() is None
    finally:
        stop(proc)
    log_errors = [line for line in (work / "serve.log").read_text(errors="replace").splitlines()
                  if " ERROR " in line or line.startswith("Traceback")]
    return report(label, args, kinds, record, sampler.samples, wall, cores, alive, log_errors, cases.closed)


ALL = "（合计 all）"
HEADERS = ("类别 kind", "路由 route", "请求 requests", "错误 errors", "每秒 req/s (目标 target)",
           "p50 ms", "p95 ms", "p99 ms", "最大 max ms")


def table_of(label: str, kinds: list[Kind], record: Record,
             wall: float) -> tuple[Table, list[dict[str, Any]]]:
    """The Rich table (per route, then each kind's total) and the same figures for the JSON."""
    table = Table(title=f"负载与浸泡 Load and soak — {label}")
    for i, name in enumerate(HEADERS):
        table.add_column(name, no_wrap=True, justify="right" if i > 1 else "left")
    out = []
    for kind in kinds:
        mine = sorted((r for r in record.routes.values() if r.kind == kind.name), key=lambda r: r.name)
        total = Route(kind.name, ALL, [x for m in mine for x in m.latencies], sum(m.errors for m in mine))
        for i, r in enumerate([*mine, total]):
            ms = [pct(r.latencies, p) * 1000 for p in (50, 95, 99, 100)]
            rate = f"{len(r.latencies) / wall:.1f}" + (f" ({kind.rate:g})" if r is total else "")
            table.add_row(kind.name if i == 0 else "", r.name, f"{len(r.latencies):,}",
                          f"[red]{r.errors}[/red]" if r.errors else "0", rate, *(f"{v:.0f}" for v in ms),
                          style="bold" if r is total else None)
            out.append({"kind": r.kind, "route": r.name, "count": len(r.latencies), "errors": r.errors,
                        "error_samples": r.samples, "per_s": round(len(r.latencies) / wall, 2),
                        **{f"p{p}_ms": round(v, 1) for p, v in zip((50, 95, 99, 100), ms, strict=True)}})
        table.add_section()
    return table, out


def report(label: str, args: argparse.Namespace, kinds: list[Kind], record: Record,
           samples: list[tuple[float, float]], wall: float, cores: float, alive: bool,
           log_errors: list[str], closed: int) -> dict[str, Any]:
    """Print the table and the verdict; return the JSON result."""
    table, routes = table_of(label, kinds, record, wall)
    console.print(table)
    for r in record.routes.values():
        for sample in r.samples:
            console.print(f"  [red]error[/red] {r.name}: {sample}")
    for line in log_errors[:10]:
        console.print(f"  [red]server log[/red] {line[:300]}")

    half = [s for s in samples if s[0] >= wall / 2]
    judged = len(half) >= MIN_HALF_SAMPLES
    slope = slope_mb_per_min(half) if len(half) >= 2 else float("nan")
    errors = sum(r.errors for r in record.routes.values())
    counts = {k.name: sum(len(r.latencies) for r in record.routes.values() if r.kind == k.name)
              for k in kinds}
    short = [k.name for k in kinds if counts[k.name] < 0.9 * k.rate * wall]
    flat = slope < args.flat or not judged
    rss = [m for _, m in samples]
    console.print(f"  内存 memory (VmRSS): {rss[0]:.0f} MB at the start, {max(rss):.0f} MB peak, "
                  f"{rss[-1]:.0f} MB at the end; slope over the second half {slope:+.2f} MB/min "
                  f"({len(half)} samples; flat means < {args.flat:g} MB/min)")
    if not judged:
        console.print(f"  [yellow]memory not judged: the second half holds {len(half)} samples, fewer than "
                      f"{MIN_HALF_SAMPLES} (run 2 minutes or more)[/yellow]")
    lags = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in record.lag.items()) or "none"
    console.print(f"  服务器 server: {cores:.2f} cores over {wall:.0f} s; {closed} cases closed; "
                  f"worst lag behind the schedule: {lags}")
    if short:
        console.print(f"  [yellow]below 90% of the target rate: {', '.join(short)}: the machine did not keep "
                      "up (busy, or the server is too slow); the figures are for a lighter load[/yellow]")
    reasons = [f"{errors} errors"] if errors else []
    reasons += [] if flat else [f"memory not flat ({slope:+.2f} MB/min)"]
    reasons += [] if alive else ["the server died"]
    reasons += [f"{len(log_errors)} ERROR lines in the server log"] if log_errors else []
    verdict = ("PASS" + ("" if judged else " (memory not judged: too short)")) if not reasons \
        else "FAIL: " + "; ".join(reasons)
    console.print(f"  结论 verdict: [{'red' if reasons else 'green'}]{verdict}[/]")
    return {"database": label, "ok": not reasons, "verdict": verdict, "minutes": args.minutes,
            "scale": args.scale, "load_factor": args.load, "wall_s": round(wall, 1),
            "server_cores": round(cores, 3), "targets_per_s": {k.name: k.rate for k in kinds},
            "below_target": short, "cases_closed": closed,
            "schedule_lag_max_ms": {k: round(v * 1000, 1) for k, v in record.lag.items()},
            "routes": routes, "rss_mb": [[round(t, 1), round(m, 1)] for t, m in samples],
            "rss_slope_second_half_mb_per_min": None if slope != slope else round(slope, 3),
            "memory_judged": judged,
            "flat_threshold_mb_per_min": args.flat, "server_alive": alive,
            "server_log_errors": log_errors[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="how long the load runs (default 10)")
    parser.add_argument("--postgres", metavar="URL", help="run on PostgreSQL (a scratch database there)")
    parser.add_argument("--scale", type=float, default=0.005, help="demo city size (default 0.005)")
    parser.add_argument("--load", type=float, default=1.0, help="multiply every target rate (default 1)")
    parser.add_argument("--only", metavar="KINDS", help="only these kinds, e.g. portal,api (default all)")
    parser.add_argument("--flat", type=float, default=FLAT_MB_PER_MIN,
                        help=f"memory is flat below this many MB/min (default {FLAT_MB_PER_MIN:g})")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    name = "cityos_bench_soak"
    on_database(args.postgres, name, lambda label, url, work: results.append(run(label, url, work, args)))
    RESULTS.mkdir(exist_ok=True)
    db = "postgresql" if args.postgres else "sqlite"
    path = RESULTS / f"soak-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{db}.json"
    path.write_bytes(orjson.dumps({"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                               "platform": platform.platform()},
                                   "git": _git_head(), "results": results}, option=orjson.OPT_INDENT_2))
    console.print(f"  written to {path.relative_to(ROOT)}")
    sys.exit(0 if results and all(r["ok"] for r in results) else 1)


def _git_head() -> str | None:
    """The commit measured, read from .git without running git."""
    try:
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            return (ROOT / ".git" / head[5:]).read_text().strip()
        return head
    except OSError:
        return None


if __name__ == "__main__":
    main()
