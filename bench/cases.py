"""How fast are the case engine's queues and KPIs with a million cases in the store?

Run: .venv/bin/python bench/cases.py [--cases 1000000] [--postgres postgresql+psycopg://user@host/db]
                                     [--classify]

Migrates a throw-away database (a temp SQLite file; with --postgres, a scratch database created
beside the one named, dropped afterwards), seeds a small city — two centres (the 12345 hotline
and city management) with their shipped workflows, 30 handling bureaus, 26 categories — and
bulk-inserts --cases cases (default 1,000,000) spread over the last 12 months, the 30 bureaus
(a few busy, most quiet) and 2,000 grid cells of nine districts. The newest ~2% are open, each
with its task rows in `case_tasks` (as the engine mirrors them) and a real engine state; the
rest are closed, with reply, close and callback figures drawn so that about one in ten is late.
ANALYZE runs once after the load, as on a server that has been up a day.

Then it measures, in-process, each call in a fresh session (as a request has):

  queue   `service.queue(actor, busiest bureau, which, limit=50)` for which = all, new,
          due_soon, overdue, 200 runs each on the first five pages, as that bureau's staff.
          Aim: p99 < 100 ms.
  kpi     `kpi.report(by="department")` for the last full month (~1/12 of the store), as the
          platform admin and as the hotline centre's staff (access filter), and `kpi.ranking`,
          and for scale `by="grid"` (2,000 groups) and the month's `hotspots`; 5 runs each.
          Aim: < 2 s.

Each figure is printed with its ratio to the aim. With --classify, also runs
bench/cases_classify.py (smart dispatch, aim >= 2,000 texts/s) in its own process. It reports;
it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
from common import on_database  # noqa: E402
from sqlalchemy import Engine, func, select, text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from cityos.core import crypto, db  # noqa: E402

AIM_QUEUE_P99_MS = 100.0
AIM_KPI_S = 2.0
BATCH = 20_000
PASSWORD = "bench-pass-word-1"
CITY, HOTLINE, CITYMGMT = "220200", "220200-rx", "220200-szcg"
BUREAUS = 30
GRID_X, GRID_Y = 50, 40  # 2,000 grid cells
LON, LAT = (126.40, 126.70), (43.75, 43.95)
DISTRICTS = ["220202", "220203", "220204", "220211", "220221", "220281", "220282", "220283", "220284"]
HOTLINE_CATEGORIES, CITYMGMT_CATEGORIES = 20, 6
OPEN_SHARE = 0.02
OPEN_MIX = (("new", 0.10), ("dispatched", 0.30), ("handling", 0.45), ("replied", 0.15))
SATISFACTION = (("satisfied", 0.75), ("basic", 0.15), ("unsatisfied", 0.07), (None, 0.03))
LIMIT_HOURS = 7 * 24.0  # five working days, about a calendar week


# -- the city -------------------------------------------------------------------------------------


def seed(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Departments, the two workflows, categories, a staff user per bureau; one real case for the
    engine state the open cases carry. Returns what the load and the measurements need."""
    from cityos.cases import service as cases
    from cityos.cases import steps
    from cityos.core import service
    from cityos.core.access import ANONYMOUS, DEPARTMENT_STAFF, SYSTEM

    with db.session_scope(sessions) as s:
        service.department_create(s, SYSTEM, code=CITY, name="吉林市", kind="city", admin_code=CITY)
        for code, name in ((HOTLINE, "市12345政务服务热线"), (CITYMGMT, "市数字化城市管理监督指挥中心")):
            service.department_create(s, SYSTEM, code=code, name=name, kind="bureau", parent_code=CITY)
        for k in range(BUREAUS):
            service.department_create(s, SYSTEM, code=f"{CITY}-b{k:02d}", name=f"委办局{k:02d}",
                                      kind="bureau", parent_code=CITY)
        for code in (HOTLINE, f"{CITY}-b00"):
            service.user_create(s, SYSTEM, username=f"staff-{code}", password=PASSWORD, department_code=code,
                                role=DEPARTMENT_STAFF)
        wfs = {w.code: w.id for w in cases.workflows_install(s, SYSTEM, {"hotline": HOTLINE,
                                                                        "citymgmt": CITYMGMT})}
        cats = []
        for k in range(HOTLINE_CATEGORIES + CITYMGMT_CATEGORIES):
            line = "hotline" if k < HOTLINE_CATEGORIES else "citymgmt"
            cat = cases.category_upsert(s, SYSTEM, {
                "code": f"c{k:02d}", "name": f"类别{k:02d}", "line": line,
                "kind": "complaint" if line == "hotline" else "event",
                "department": f"{CITY}-b{(k * 7) % BUREAUS:02d}"})
            cats.append((cat.id, line, cat.kind, cat.department_id))
        one = cases.case_intake(s, ANONYMOUS, {"category": "c00", "description": "样例", "lon": 126.55,
                                               "lat": 43.84}).case
        steps.case_act(s, SYSTEM, one.number or "", "dispatch", {"department": f"{CITY}-b00"})
        from cityos.core.models import Department

        depts = {d.code: d.id for d in s.scalars(select(Department))}
        return {"workflows": wfs, "categories": cats, "engine_state": one.engine_state, "depts": depts,
                "first_id": one.id + 1}


# -- the store ------------------------------------------------------------------------------------


def _pick(rng: random.Random, mix: tuple[tuple[Any, float], ...]) -> Any:
    x, acc = rng.random(), 0.0
    for value, share in mix:
        acc += share
        if x < acc:
            return value
    return mix[-1][0]


def load(engine: Engine, city: dict[str, Any], n: int, now: dt.datetime, seed_: int = 7) -> dt.datetime:
    """Bulk-insert n cases over the 12 months before `now` (oldest first) and the open ones'
    tasks; returns the start of the period."""
    from cityos.cases.models import Case, CaseTask
    from cityos.core.workdays import CITY_TZ

    rng = random.Random(seed_)
    local = now.astimezone(CITY_TZ)
    first = dt.datetime(local.year - 1 + (local.month // 12), local.month % 12 + 1, 1, tzinfo=CITY_TZ)
    start, span = first.astimezone(dt.UTC), (now - first).total_seconds()
    d = city["depts"]
    bureaus = [d[f"{CITY}-b{k:02d}"] for k in range(BUREAUS)]
    weights = list(itertools.accumulate(1 / (k + 1) ** 0.8 for k in range(BUREAUS)))  # a few busy, many quiet
    centres = {"hotline": d[HOTLINE], "citymgmt": d[CITYMGMT]}
    prefix = {"hotline": "RX", "citymgmt": "CG"}
    hot = [c for c in city["categories"] if c[1] == "hotline"]
    cm = [c for c in city["categories"] if c[1] == "citymgmt"]
    open_from = int(n * (1 - OPEN_SHARE))
    cases_t, tasks_t = Case.__table__, CaseTask.__table__
    t0 = time.perf_counter()
    for lo in range(0, n, BATCH):
        rows, tasks = [], []
        for i in range(lo, min(n, lo + BATCH)):
            cid = city["first_id"] + i
            created = start + dt.timedelta(seconds=span * (i + rng.random()) / n)
            cat_id, line, kind, cat_dept = rng.choice(hot) if rng.random() < 0.85 else rng.choice(cm)
            lead = cat_dept if rng.random() < 0.6 else rng.choices(bureaus, cum_weights=weights)[0]
            gx, gy = rng.randrange(GRID_X), rng.randrange(GRID_Y)
            lon = LON[0] + (gx + rng.random()) * (LON[1] - LON[0]) / GRID_X
            lat = LAT[0] + (gy + rng.random()) * (LAT[1] - LAT[0]) / GRID_Y
            urgent = rng.random() < 0.03
            dispatched = created + dt.timedelta(hours=rng.uniform(0.2, 8))
            due = dispatched + dt.timedelta(hours=24 if urgent else LIMIT_HOURS)
            took = rng.expovariate(1 / (0.45 * (due - dispatched).total_seconds() / 3600))
            row = {
                "id": cid, "number": f"{prefix[line]}{created.astimezone(CITY_TZ):%Y%m%d}{cid:08d}",
                "token": f"{cid:032x}", "line": line, "kind": kind, "channel": "phone" if i % 3 else "web",
                "category_id": cat_id, "title": "诉求", "description": "", "urgent": urgent,
                "status": "closed", "step": "", "lon": lon, "lat": lat, "address": "",
                "district": DISTRICTS[gx * 9 // GRID_X],
                "grid": f"G{gx:02d}{gy:02d}", "reporter_name": "", "dispatch_department_id": centres[line],
                "department_id": lead, "due_at": due, "warn_at": dispatched + (due - dispatched) * 0.8,
                "due_note": "", "overdue": False, "escalations": 0, "returns": int(rng.random() < 0.04),
                "reopens": 0, "extended_days": 0, "satisfaction": _pick(rng, SATISFACTION), "reply": "已办理",
                "attributes": {}, "workflow_id": city["workflows"][line], "engine_state": None,
                "created_at": created, "updated_at": created, "dispatched_at": dispatched,
                "replied_at": dispatched + dt.timedelta(hours=took), "closed_at": None, "revision": 1,
            }
            row["closed_at"] = row["replied_at"] + dt.timedelta(hours=rng.uniform(1, 24))
            late = row["replied_at"] > due
            row["overdue"], row["escalations"] = late, int(late)
            if i >= open_from:
                _open(rng, row, tasks, centres[line], bureaus, now, city["engine_state"])
            rows.append(row)
        with engine.begin() as conn:
            raw_insert(conn, cases_t.name, rows)
            if tasks:
                raw_insert(conn, tasks_t.name, tasks)
        done = min(n, lo + BATCH)
        if done % 100_000 == 0 or done == n:
            rate = done / (time.perf_counter() - t0)
            print(f"  {done:>9,} cases  ({rate:,.0f} cases/s)", flush=True)
    return start


def raw_insert(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """Rows straight to the driver (SQLite: executemany; PostgreSQL: COPY): SQLAlchemy's per-value
    type processing would cost more than the database's own work. Values are spelt as the
    UTCDateTime and JSON columns store them (SQLite: naive UTC text; PostgreSQL: aware datetimes)."""
    sqlite = conn.dialect.name == "sqlite"
    cols = list(rows[0])
    times = [i for i, c in enumerate(cols) if c.endswith("_at")]
    jsons = [i for i, c in enumerate(cols) if isinstance(rows[0][c], dict)]
    values = []
    for r in rows:
        v = list(r.values())
        if sqlite:
            for i in times:
                if v[i] is not None:  # stored as naive UTC text, always with microseconds
                    v[i] = v[i].astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        for i in jsons:
            v[i] = orjson.dumps(v[i]).decode()
        values.append(tuple(v))
    if sqlite:
        marks = ", ".join("?" for _ in cols)
        conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", values)
        return
    cur = conn.connection.dbapi_connection.cursor()  # psycopg: COPY, as a bulk load on PostgreSQL is done
    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
        for v in values:
            copy.write_row(v)


def _open(rng: random.Random, row: dict[str, Any], tasks: list[dict[str, Any]], centre: int,
          bureaus: list[int], now: dt.datetime, state: bytes) -> None:
    """Make a new case open at a step, with the tasks the engine would have made ready."""
    status = _pick(rng, OPEN_MIX)
    row.update(status=status, closed_at=None, satisfaction=None, engine_state=state,
               overdue=row["due_at"] <= now and status in ("dispatched", "handling"))
    if status != "replied":
        row["replied_at"] = None
    base = {"case_id": row["id"], "lane": "centre", "user_id": None, "role": None, "state": "open",
            "outcome": None, "note": "", "opened_at": row["created_at"], "accepted_at": None, "due_at": None,
            "warn_at": None, "done_at": None, "overdue": False, "warned": False}
    if status == "new":
        row.update(department_id=None, dispatched_at=None, due_at=None, warn_at=None, step="dispatch")
        tasks.append({**base, "engine_task": str(uuid.uuid4()), "step": "dispatch", "name": "派遣",
                      "department_id": centre})
        return
    if status == "replied":
        row["step"] = "verify"
        tasks.append({**base, "engine_task": str(uuid.uuid4()), "step": "verify", "name": "核查",
                      "department_id": centre, "opened_at": row["replied_at"]})
        return
    row["step"] = "handle"
    handlers = [(row["department_id"], "lead")]
    co = rng.choice(bureaus)
    if rng.random() < 0.2 and co != row["department_id"]:
        handlers.append((co, "co"))
    for dept, role in handlers:
        accepted = status == "handling"
        tasks.append({**base, "engine_task": str(uuid.uuid4()), "step": "handle", "name": "办理",
                      "lane": "handler", "department_id": dept,
                      "role": role, "state": "accepted" if accepted else "open",
                      "accepted_at": row["dispatched_at"] if accepted else None,
                      "opened_at": row["dispatched_at"],
                      "due_at": row["due_at"], "warn_at": row["warn_at"], "overdue": row["overdue"],
                      "warned": row["warn_at"] <= now})


# -- measuring ------------------------------------------------------------------------------------


def timed(sessions: sessionmaker[Session], fn: Callable[[Session], Any], runs: int) -> list[float]:
    """Seconds per call, each in a fresh session."""
    out = []
    for _ in range(runs):
        with sessions() as s:
            t0 = time.perf_counter()
            fn(s)
            out.append(time.perf_counter() - t0)
    return out


def pct(xs: list[float], p: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def measure(engine: Engine, city: dict[str, Any], n: int, now: dt.datetime, runs: int) -> None:
    from cityos.cases import kpi
    from cityos.cases import service as cases
    from cityos.cases.models import Case, CaseTask
    from cityos.core.access import SYSTEM
    from cityos.core.auth import user_actor
    from cityos.core.models import Department
    from cityos.core.service import user_by_name

    sessions = db.make_sessionmaker(engine)
    with sessions() as s:
        busiest, open_tasks = s.execute(
            select(Department.code, func.count()).join(CaseTask, CaseTask.department_id == Department.id)
            .where(CaseTask.state.in_(("open", "accepted")), CaseTask.step == "handle")
            .group_by(Department.code).order_by(func.count().desc()).limit(1)).one()
        staff = user_actor(user_by_name(s, f"staff-{CITY}-b00"))
        centre_staff = user_actor(user_by_name(s, f"staff-{HOTLINE}"))
    if busiest != f"{CITY}-b00":
        print(f"  (note: the busiest bureau is {busiest}; its queue is read as the platform admin)")
        staff = SYSTEM
    print(f"\n== queue: {busiest}, {open_tasks:,} open handling tasks; {runs} runs each, pages 1-5 ==")
    print(f"  {'which':10} {'total':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  p99/aim")
    for which in ("all", "new", "due_soon", "overdue"):
        total = [0]

        def page(s: Session, which: str = which, total: list[int] = total) -> None:
            got = cases.queue(s, staff, busiest, which, limit=50, offset=50 * random.randrange(5), now=now)
            total[0] = got.total

        timed(sessions, page, 5)  # warm-up: statement caches, as a serving process has them
        xs = timed(sessions, page, runs)
        p99 = pct(xs, 99) * 1000
        print(f"  {which:10} {total[0]:7,} {pct(xs, 50) * 1000:8.1f} {p99:8.1f} {max(xs) * 1000:8.1f}  "
              f"{p99 / AIM_QUEUE_P99_MS:5.2f} {'PASS' if p99 < AIM_QUEUE_P99_MS else 'MISS'} "
              f"(aim p99 < {AIM_QUEUE_P99_MS:.0f} ms)")

    local = now.astimezone(kpi.CITY_TZ)
    month = f"{local.year - (local.month == 1)}-{(local.month - 2) % 12 + 1:02d}"  # the last full month
    since, until = kpi.month_bounds(month)
    with sessions() as s:
        in_month = s.scalar(select(func.count()).where(Case.created_at >= since, Case.created_at < until))
    print(f"\n== KPIs of {month} ({in_month:,} cases received); 5 runs each ==")
    print(f"  {'what':46} {'rows':>6} {'first s':>8} {'median s':>8} {'max s':>7}  max/aim")
    jobs: list[tuple[str, Callable[[Session], Any]]] = [
        ("report by department (platform admin)",
         lambda s: kpi.report(s, SYSTEM, by="department", since=since, until=until, now=now)),
        ("report by department (hotline centre staff)",
         lambda s: kpi.report(s, centre_staff, by="department", since=since, until=until, now=now)),
        ("ranking (platform admin)", lambda s: kpi.ranking(s, SYSTEM, month, now=now)),
        ("report by grid (2,000 cells)",
         lambda s: kpi.report(s, SYSTEM, by="grid", since=since, until=until, now=now)),
        ("hotspots, a week, 500 m cells",
         lambda s: kpi.hotspots(s, SYSTEM, week=kpi.current_week(since + dt.timedelta(days=8)))["features"]),
        ("hotspots, the month, per cell (dashboard map)",
         lambda s: kpi.hotspots(s, SYSTEM, since=since, until=until, split=False)["features"]),
    ]
    for name, job in jobs:
        size = [0]

        def run(s: Session, job: Callable[[Session], Any] = job, size: list[int] = size) -> None:
            size[0] = len(job(s))

        xs = timed(sessions, run, 5)
        print(f"  {name:46} {size[0]:6,} {xs[0]:8.3f} {statistics.median(xs):8.3f} {max(xs):7.3f}  "
              f"{max(xs) / AIM_KPI_S:5.2f} {'PASS' if max(xs) < AIM_KPI_S else 'MISS'} "
              f"(aim < {AIM_KPI_S:.0f} s)")


# -- the run --------------------------------------------------------------------------------------


def analyze(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


def bench(label: str, url: str, data_dir: Path, args: argparse.Namespace) -> None:
    db.upgrade(url)
    crypto.activate(crypto.Keyring.load(data_dir / "keys.json"))
    engine = db.make_engine(url)
    try:
        t0 = time.perf_counter()
        city = seed(db.make_sessionmaker(engine))
        now = dt.datetime.now(dt.UTC)
        print(f"\n== {label}: building {args.cases:,} cases ==")
        load(engine, city, args.cases, now)
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(text("SELECT setval(pg_get_serial_sequence('cases', 'id'), "
                                  "(SELECT max(id) FROM cases))"))
        t1 = time.perf_counter()
        analyze(engine)
        t2 = time.perf_counter()
        print(f"  built in {t1 - t0:.0f} s ({args.cases / (t1 - t0):,.0f} cases/s), ANALYZE {t2 - t1:.0f} s")
        measure(engine, city, args.cases, now, args.runs)
    finally:
        engine.dispose()



def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000, help="cases in the store (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=200, help="queue pages timed per queue (default 200)")
    parser.add_argument("--postgres", metavar="URL", help="run on PostgreSQL (a scratch database there)")
    parser.add_argument("--classify", action="store_true", help="also run bench/cases_classify.py")
    args = parser.parse_args()
    print(f"CityOS case benchmark, {dt.datetime.now(dt.UTC).date()}, "
          f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    on_database(args.postgres, "cityos_bench_cases", lambda label, url, work: bench(label, url, work, args))
    if args.classify:
        print("\n== classification (bench/cases_classify.py) ==", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "cases_classify.py")], check=False)


if __name__ == "__main__":
    main()
