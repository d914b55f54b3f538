"""What does authentication, the access decision and the audit write cost per request?

Run: .venv/bin/python bench/auth.py [--postgres postgresql+psycopg://user@host/db]

Migrates a throw-away database (a temp SQLite file; with --postgres, also a scratch database
created beside the one named, dropped afterwards), seeds a small city, starts the real server
(`cityos serve`) in a subprocess on a free loopback port, and drives it with concurrent keep-alive
httpx clients in threads:

  GET /api/departments/220200-gaj   no credentials: the public directory (the baseline)
  GET /api/departments/220200-gaj   the same handler with a bearer token: token lookup + access
                                     decision; the difference is the cost of authentication
  GET /api/users/police_staff        bearer token as a department admin: token lookup, access
                                     decision, decryption of personal data and one audit record

A fixed number of requests per endpoint (after a warm-up), in interleaved rounds; prints req/s,
p50 and p99 latency per endpoint, the ratio authenticated/unauthenticated and the overhead, and
PASS or MISS against the aim (overhead under 25%). It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_seconds, scratch_postgres, serve_cityos  # noqa: E402

from cityos.core import crypto, db, service  # noqa: E402
from cityos.core.access import DEPARTMENT_ADMIN, DEPARTMENT_STAFF, SYSTEM  # noqa: E402
from cityos.core.identifiers import citizen_id_with_check  # noqa: E402

AIM = 25.0  # % extra time per request that authentication + access check + audit may cost
PASSWORD = "bench-pass-word-1"
SECRET = "bench-secret-key-0123456789"


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)  # seconds
    elapsed: float = 0.0
    errors: int = 0
    server_cpu: float = 0.0  # seconds of CPU the server process spent (not the database's)

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu / len(self.latencies) * 1000 if self.latencies else 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def seed(url: str, data_dir: Path) -> None:
    """A city, one bureau, its admin and a staff member with encrypted personal data."""
    db.upgrade(url)
    crypto.activate(crypto.Keyring.load(data_dir / "keys.json"))
    engine = db.make_engine(url)
    with db.session_scope(db.make_sessionmaker(engine)) as s:
        service.department_create(s, SYSTEM, code="220200", name="吉林市", kind="city",
                                  admin_code="220200")
        service.department_create(s, SYSTEM, code="220200-gaj", name="市公安局", kind="bureau",
                                  parent_code="220200")
        service.user_create(s, SYSTEM, username="police_admin", password=PASSWORD,
                            department_code="220200-gaj", role=DEPARTMENT_ADMIN)
        service.user_create(s, SYSTEM, username="police_staff", password=PASSWORD,
                            department_code="220200-gaj", role=DEPARTMENT_STAFF,
                            id_number=citizen_id_with_check("22020219850612003"),
                            phone="13904310001")
    engine.dispose()


def start_server(url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    return serve_cityos(url, data_dir, SECRET)


def drive(base: str, name: str, path: str, headers: dict[str, str], total: int,
          clients: int, pid: int) -> Result:
    """`total` requests over `clients` threads, each with its own keep-alive connection."""
    result = Result(name)
    lock = threading.Lock()
    share = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def worker(n: int) -> None:
        local, errors = [], 0
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            client.get(path)  # open the connection before the clock starts
            barrier.wait()
            for _ in range(n):
                t0 = time.perf_counter()
                r = client.get(path)
                local.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1
        with lock:
            result.latencies.extend(local)
            result.errors += errors

    threads = [threading.Thread(target=worker, args=(n,)) for n in share]
    for t in threads:
        t.start()
    barrier.wait()
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    for t in threads:
        t.join()
    result.elapsed = time.perf_counter() - t0
    result.server_cpu = cpu_seconds(pid) - cpu0
    return result


def merge(parts: list[Result]) -> Result:
    out = Result(parts[0].name)
    for p in parts:
        out.latencies += p.latencies
        out.elapsed += p.elapsed
        out.errors += p.errors
        out.server_cpu += p.server_cpu
    return out


def bench(label: str, url: str, data_dir: Path, args: argparse.Namespace) -> dict[str, Result]:
    seed(url, data_dir)
    proc, base = start_server(url, data_dir)
    try:
        r = httpx.post(f"{base}/api/auth/token",
                       data={"username": "police_admin", "password": PASSWORD})
        r.raise_for_status()
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        endpoints = [
            # The baseline: the same handler as the next line, public, with no credentials.
            ("GET /api/departments/{code} (no auth)", "/api/departments/220200-gaj", {}),
            ("GET /api/departments/{code} (auth, access check)", "/api/departments/220200-gaj",
             auth),
            ("GET /api/users/{username} (auth, access check, audit)", "/api/users/police_staff",
             auth),
        ]
        for name, path, headers in endpoints:  # warm-up: imports, pools, caches
            drive(base, name, path, headers, args.warmup, args.clients, proc.pid)
        parts: dict[str, list[Result]] = {name: [] for name, _, _ in endpoints}
        per_round = args.requests // args.rounds
        for _ in range(args.rounds):  # interleaved, so drift hits every endpoint alike
            for name, path, headers in endpoints:
                parts[name].append(drive(base, name, path, headers, per_round, args.clients,
                                         proc.pid))
        results = {name: merge(p) for name, p in parts.items()}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    report(label, list(results.values()))
    return results


def report(label: str, results: list[Result]) -> None:
    print(f"\n== {label} ==")
    print(f"{'endpoint':56} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms':>7} {'errors':>6}")
    for r in results:
        print(f"{r.name:56} {r.rps:7.0f} {r.pct(50):7.2f} {r.pct(99):7.2f} {r.cpu_ms:7.2f} "
              f"{r.errors:6d}")
    print("  (CPU ms: the server process's CPU time per request, the database server's excluded)")
    base = results[0]
    for r in results[1:]:
        ratio = r.rps / base.rps
        overhead = (base.rps / r.rps - 1) * 100  # extra time per request, vs. the baseline
        verdict = "PASS" if overhead < AIM else "MISS"
        print(f"  {r.name.split(' (')[0]}: ratio auth/unauth {ratio:.2f}, overhead "
              f"{overhead:.0f}% (server CPU {(r.cpu_ms / base.cpu_ms - 1) * 100:+.0f}%) "
              f"-> {verdict} (aim < {AIM:.0f}%)")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per endpoint (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="per endpoint (default 200)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--postgres", metavar="URL",
                        help="also run on PostgreSQL (a scratch database on that server)")
    args = parser.parse_args()
    print(f"CityOS auth benchmark, {dt.datetime.now(dt.UTC).date()}, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs; {args.requests} requests per "
          f"endpoint in {args.rounds} rounds, {args.clients} concurrent clients")
    with tempfile.TemporaryDirectory(prefix="cityos-bench-") as tmp:
        sqlite_dir = Path(tmp) / "sqlite"
        bench("SQLite (WAL)", f"sqlite:///{sqlite_dir / 'cityos.db'}", sqlite_dir, args)
        if args.postgres:
            url = args.postgres
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            scratch, drop = scratch_postgres(url, "cityos_bench")
            try:
                bench("PostgreSQL", scratch, Path(tmp) / "pg", args)
            finally:
                drop()  # type: ignore[operator]


if __name__ == "__main__":
    main()
