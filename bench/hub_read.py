"""What do the grant check and the audit record cost on the shared-data read API?

Run: .venv/bin/python bench/hub_read.py [--rows 1000000] [--pg postgresql://postgres@127.0.0.1/postgres]

Builds a throw-away database (a temp SQLite file; with --pg, a scratch database on that server,
dropped afterwards) holding a 市公安局 residents resource of --rows rows (encrypted ID numbers,
nine districts), grants five of its fields to 市环保局, then serves two apps, each a uvicorn
process with one worker on a free loopback port:

  real   `cityos serve`: GET /api/hub/resources/{code}/rows?purpose=..&district=..&limit=100
         with env_staff's bearer token: token lookup, grant check, field and row enforcement,
         the request hash, one audit record and its commit
  bare   a FastAPI app defined below: GET /rows?district=..&limit=100 calling store.select_rows
         directly, no credentials, no grant check, no audit (the same rows, the same JSON)
  shell  for the breakdown only: the real app with the bare route added (middleware and the
         per-request session, still no credentials, grant check or audit), which tells the web
         shell's share of the gap from that of the token, grant check and audit

and drives both with --clients concurrent keep-alive clients (asyncio + httpx) for --seconds per
round, interleaved rounds, 100-row pages at random offsets among the first ten pages of one
district. Prints req/s, p50 and p99 per app, server CPU per request and the ratio real/bare
against the aim (>= 0.7). The load generator is a raw asyncio HTTP/1.1 client: httpx's own CPU
per request would otherwise be the bottleneck on a small machine. With --breakdown, also times
each step of one read in-process. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_seconds, free_port, on_database  # noqa: E402
from sqlalchemy import select, text  # noqa: E402

from cityos.core import crypto, db  # noqa: E402

AIM = 0.7
PASSWORD = "bench-pass-word-1"
SECRET = "bench-secret-key-0123456789"
DISTRICTS = ["昌邑区", "龙潭区", "船营区", "丰满区", "永吉县", "蛟河市", "桦甸市", "舒兰市", "磐石市"]
FILTER = "船营区"
FIELDS = ["name", "gender", "birth_date", "district", "household_size"]
PURPOSE = "bench"
SPEC: dict[str, Any] = {
    "name": "户籍人口", "category": "department", "department": "220200-gaj", "abstract": "bench",
    "share_type": "conditional", "share_condition": "政务服务身份核验", "share_basis": "共享管理办法",
    "share_methods": ["api"], "open_type": "closed", "update_cycle": "daily",
    "items": [
        {"name": "id_number", "title": "身份证号", "type": "citizen_id", "sensitivity": "sensitive",
         "required": True, "is_key": True},
        {"name": "name", "title": "姓名", "type": "string", "sensitivity": "internal", "required": True},
        {"name": "gender", "title": "性别", "type": "string"},
        {"name": "birth_date", "title": "出生日期", "type": "date"},
        {"name": "district", "title": "所属区县", "type": "string", "indexed": True},
        {"name": "household_size", "title": "家庭人口", "type": "integer"},
    ],
}


# -- the database ---------------------------------------------------------------------------------

def person(n: int) -> dict[str, Any]:
    from cityos.core.identifiers import citizen_id_with_check

    born = dt.date(1950, 1, 1) + dt.timedelta(days=n // 1000)
    first17 = f"220202{born:%Y%m%d}{n % 1000:03d}"
    return {"id_number": citizen_id_with_check(first17), "name": f"居民{n}",
            "gender": "男" if n % 2 else "女", "birth_date": born,
            "district": DISTRICTS[n % len(DISTRICTS)], "household_size": 1 + n % 5}


def build(url: str, data_dir: Path, rows: int) -> str:
    """Migrate, seed two bureaus and their users, load the resource, grant it; return its code."""
    from cityos.core import service
    from cityos.core.access import DEPARTMENT_ADMIN, DEPARTMENT_STAFF, SYSTEM
    from cityos.core.auth import user_actor
    from cityos.core.models import User
    from cityos.hub import service as hub
    from cityos.hub import sharing, store

    db.upgrade(url)
    crypto.activate(crypto.Keyring.load(data_dir / "keys.json"))
    engine = db.make_engine(url)
    t0 = time.perf_counter()
    with db.session_scope(db.make_sessionmaker(engine)) as s:
        service.department_create(s, SYSTEM, code="220200", name="吉林市", kind="city", admin_code="220200")
        for code, name in (("220200-gaj", "市公安局"), ("220200-hbj", "市环保局")):
            service.department_create(s, SYSTEM, code=code, name=name, kind="bureau", parent_code="220200")
        for user, dept, role in (("police_admin", "220200-gaj", DEPARTMENT_ADMIN),
                                 ("env_staff", "220200-hbj", DEPARTMENT_STAFF)):
            service.user_create(s, SYSTEM, username=user, password=PASSWORD, department_code=dept, role=role)
        res = hub.resource_create(s, SYSTEM, SPEC)
        layout = hub.layout_of(res)
        enc = store.Encoder(layout, hub.keyring())
        writer = store.Writer(s.connection(), layout, 1, "replace")
        for start in range(0, rows, 20_000):
            writer.add([enc.encode(person(n)) for n in range(start, min(rows, start + 20_000))])
            if (start // 20_000) % 10 == 9:
                print(f"  loaded {start + 20_000:,} rows", flush=True)
        res.row_count, res.current_version = writer.finish().row_count, 1
        code = res.code
        actors = {u.username: user_actor(u) for u in s.scalars(select(User))}
        req = sharing.request_create(s, actors["env_staff"], code, purpose="环境执法", legal_basis="环保法",
                                     fields=FIELDS)
        sharing.request_decide(s, actors["police_admin"], req.id, approve=True)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'ANALYZE "{store.table_name(res.id)}"'))
    engine.dispose()
    print(f"  built {rows:,} rows in {time.perf_counter() - t0:.0f} s")
    return code


# -- the bare app ---------------------------------------------------------------------------------

def bare_app(url: str, data_dir: Path, code: str) -> Any:
    """The same select and JSON as the real read, with no credentials, grant check or audit."""
    from fastapi import FastAPI, Response

    from cityos.hub import service as hub
    from cityos.hub import store

    ring = crypto.activate(crypto.Keyring.load(data_dir / "keys.json"))
    engine = db.make_engine(url)
    with db.make_sessionmaker(engine)() as s:
        res = hub.resource_by_code(s, code)
        layout, version = hub.layout_of(res), res.current_version
    app = FastAPI()

    @app.get("/rows")
    def rows(district: str, limit: int = 100, offset: int = 0) -> Response:
        with engine.connect() as conn:
            got, _, more = store.select_rows(conn, layout, ring, fields=FIELDS, limit=limit, offset=offset,
                                             conds=[store.Cond("district", "eq", district)])
        got = [{f: r[f] for f in FIELDS} for r in got]
        body = {"resource": code, "version": version, "fields": FIELDS, "rows": got, "limit": limit,
                "offset": offset, "next": f"/rows?offset={offset + limit}" if more else None}
        return Response(orjson.dumps(body), media_type="application/json")

    return app


def shell_app(url: str, data_dir: Path, code: str) -> Any:
    """The real app (middleware, per-request session) with one more route: the bare read in it,
    still without credentials, grant check or audit. Tells the web shell's share from ours."""
    from fastapi import Depends, Response

    from cityos.app import create_app
    from cityos.core.settings import load_settings
    from cityos.core.web import get_session
    from cityos.hub import service as hub
    from cityos.hub import store

    app = create_app(load_settings())
    ring = crypto.keyring()
    engine = db.make_engine(url)
    with db.make_sessionmaker(engine)() as s:
        res = hub.resource_by_code(s, code)
        layout, version = hub.layout_of(res), res.current_version
    engine.dispose()

    @app.get("/bench/rows")
    def rows(district: str, limit: int = 100, offset: int = 0,
             session: Any = Depends(get_session)) -> Response:
        got, _, more = store.select_rows(session.connection(), layout, ring, fields=FIELDS, limit=limit,
                                         offset=offset, conds=[store.Cond("district", "eq", district)])
        got = [{f: r[f] for f in FIELDS} for r in got]
        body = {"resource": code, "version": version, "fields": FIELDS, "rows": got, "limit": limit,
                "offset": offset, "next": f"/bench/rows?offset={offset + limit}" if more else None}
        return Response(orjson.dumps(body), media_type="application/json")

    return app


def serve(kind: str, url: str, data_dir: Path, code: str, port: int) -> None:
    import uvicorn

    from cityos.cli import tune_gc

    app = bare_app(url, data_dir, code) if kind == "bare" else shell_app(url, data_dir, code)
    tune_gc()  # as `cityos serve` does: the ratio is to measure grants and audit, not GC settings
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)


# -- servers and load -----------------------------------------------------------------------------


def start(cmd: list[str], env: dict[str, str], port: int, probe: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("server did not start within 60 s")


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    rows: int = 0
    checked: int = 0
    cpu: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000 if ordered else 0.0


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               request: bytes) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 GET on an open connection: (status, body). A raw client, because
    httpx's own CPU per request on these two cores would be the bottleneck, not the servers."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _drive(port: int, path: str, params: dict[str, str], headers: dict[str, str], clients: int,
                 seconds: float, result: Result) -> None:
    stop = time.perf_counter() + seconds
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                query = urlencode({**params, "offset": str(100 * random.randrange(10))})
                request = f"GET {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
                t0 = time.perf_counter()
                status, body = await _get(reader, writer, request)
                result.latencies.append(time.perf_counter() - t0)
                if status != 200:
                    result.errors += 1
                elif len(result.latencies) % 50 == 1:  # check now and then that the work is the same
                    result.rows += len(orjson.loads(body)["rows"])
                    result.checked += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))


def drive(result: Result, pid: int, port: int, path: str, params: dict[str, str], headers: dict[str, str],
          clients: int, seconds: float) -> None:
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    asyncio.run(_drive(port, path, params, headers, clients, seconds, result))
    result.elapsed += time.perf_counter() - t0
    result.cpu += cpu_seconds(pid) - cpu0


def bench(label: str, url: str, data_dir: Path, args: argparse.Namespace) -> None:
    code = build(url, data_dir, args.rows)
    env = {**os.environ, "CITYOS_DATABASE_URL": url, "CITYOS_DATA_DIR": str(data_dir),
           "CITYOS_SECRET_KEY": SECRET, "CITYOS_ENVIRONMENT": "test", "CITYOS_LOG_LEVEL": "WARNING",
           "CITYOS_CONFIG": str(data_dir / "none.toml"),
           # all load comes from one loopback address: measure the work, not the limiter (as common.py)
           "CITYOS_RATE_LIMIT_ENABLED": os.environ.get("CITYOS_RATE_LIMIT_ENABLED", "false")}
    real_port, bare_port, shell_port = free_port(), free_port(), free_port()
    real = start([sys.executable, "-c", "from cityos.cli import main; main()", "serve", "--host", "127.0.0.1",
                  "--port", str(real_port)], env, real_port, "/healthz")
    bare = start([sys.executable, __file__, "--serve", "bare", url, str(data_dir), code, str(bare_port)], env,
                 bare_port, "/docs")
    shell = start([sys.executable, __file__, "--serve", "shell", url, str(data_dir), code, str(shell_port)],
                  env, shell_port, "/healthz")
    try:
        r = httpx.post(f"http://127.0.0.1:{real_port}/api/auth/token",
                       data={"username": "env_staff", "password": PASSWORD})
        r.raise_for_status()
        token = {"Authorization": f"Bearer {r.json()['access_token']}"}
        apps = [
            (Result("real: token, grant check, audit"), real.pid, real_port,
             f"/api/hub/resources/{code}/rows", {"purpose": PURPOSE, "district": FILTER, "limit": "100"},
             token),
            (Result("bare: select_rows only"), bare.pid, bare_port, "/rows",
             {"district": FILTER, "limit": "100"}, {}),
            (Result("(shell: bare read in the real app)"), shell.pid, shell_port, "/bench/rows",
             {"district": FILTER, "limit": "100"}, {}),
        ]
        for _, pid, port, path, params, headers in apps:  # warm-up
            drive(Result("warm-up"), pid, port, path, params, headers, args.clients, args.warmup)
        for _ in range(args.rounds):
            for res, pid, port, path, params, headers in apps:
                drive(res, pid, port, path, params, headers, args.clients, args.seconds)
    finally:
        for proc in (real, bare, shell):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    results = [a[0] for a in apps]
    print(f"\n== {label}: {args.rows:,} rows, {args.clients} clients, "
          f"{args.rounds} x {args.seconds:.0f} s ==")
    print(f"{'app':36} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms':>7} {'rows/req':>8} {'errors':>6}")
    for x in results:
        n = len(x.latencies) or 1
        print(f"{x.name:36} {x.rps:7.0f} {x.pct(50):7.1f} {x.pct(99):7.1f} {x.cpu / n * 1000:7.2f} "
              f"{x.rows / (x.checked or 1):8.1f} {x.errors:6d}")
    ratio = results[0].rps / results[1].rps if results[1].rps else 0.0
    print(f"  ratio real/bare {ratio:.2f} -> {'PASS' if ratio >= AIM else 'MISS'} (aim >= {AIM})")
    if results[2].rps:
        print(f"  (ratio shell/bare {results[2].rps / results[1].rps:.2f}: the web shell alone; "
              f"real/shell {results[0].rps / results[2].rps:.2f}: token, grant check and audit alone)")
    if args.breakdown:
        breakdown(url, data_dir, code)


# -- where the time goes --------------------------------------------------------------------------

def breakdown(url: str, data_dir: Path, code: str, n: int = 300) -> None:
    """Time each step of one real read, in-process and single-threaded."""
    from cityos.core import access, audit, auth
    from cityos.core.models import User
    from cityos.hub import exchange, sharing, store
    from cityos.hub import service as hub

    ring = crypto.activate(crypto.Keyring.load(data_dir / "keys.json"))
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    with sessions() as s:
        user = s.scalar(select(User).where(User.username == "env_staff"))
        raw, _ = auth.token_issue(s, user, "api", 3600)
        s.commit()
    steps: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - t0
        return out

    conds = [store.Cond("district", "eq", FILTER)]
    for _ in range(n):
        with sessions() as s:
            actor = timed("token lookup (cache)", partial(auth.token_actor, s, raw, "api"))
            plan = timed("resource plan (cache)", partial(exchange._plan, s, code))
            target = access.Target("hub.resource", plan.id, plan.department_id, plan.department_path)
            timed("access.require (grant, cache)", partial(access.require, actor, "hub.data.read", target, s))
            rows = timed("select_rows (100 rows)", partial(
                store.select_rows, s.connection(), plan.layout, ring, fields=FIELDS, conds=conds,
                offset=100 * random.randrange(10)))
            page = [{f: r[f] for f in FIELDS} for r in rows[0]]
            body = timed("render JSON", partial(exchange.render, "json", {"rows": page}))
            timed("request hash", partial(exchange.request_hash, method="GET", path="/", query=[],
                                          actor="x", department="y", purpose="z", time="t", body=body))
            timed("audit.append", partial(audit.append, s, actor="x", action="bench", detail={"a": 1}))
            timed("commit", s.commit)
        with sessions() as s:
            timed("= whole sharing.rows_read", partial(sharing.rows_read, s, actor, code, purpose=PURPOSE,
                                                     conds=conds))
            timed("= commit after rows_read", s.commit)
        with sessions() as s:
            timed("= rows_read, group commit (the API's)", partial(
                sharing.rows_read, s, actor, code, purpose=PURPOSE, conds=conds, group_commit=True))
    with sessions() as s:
        res = hub.resource_by_code(s, code)
        for _ in range(n):
            timed("(not used: resource_by_code)", partial(hub.resource_by_code, s, code))
            timed("(not used: layout_of)", partial(hub.layout_of, res))
    engine.dispose()
    print("  in-process, one thread, ms per read:")
    for name, total in steps.items():
        print(f"    {name:34} {total / n * 1000:7.3f}")



def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows (default 1,000,000)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--seconds", type=float, default=15, help="per app per round (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per app (default 3)")
    parser.add_argument("--pg", metavar="URL", help="run on PostgreSQL instead (a scratch database there)")
    parser.add_argument("--breakdown", action="store_true", help="also time each step of a read")
    args = parser.parse_args()
    print(f"CityOS shared-read benchmark, {dt.datetime.now(dt.UTC).date()}, "
          f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    on_database(args.pg, "cityos_bench_hub", lambda label, url, work: bench(label, url, work, args))


if __name__ == "__main__":
    main()
