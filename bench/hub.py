"""How fast does a file load into a data hub resource, end to end?

Run: .venv/bin/python bench/hub.py [--rows 1000000] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
     [--dataset residents|monitoring] [--profile]

With --dataset residents (the default), generates a residents table of 10 columns (citizen ID
with a valid check digit — the key, kept encrypted with a blind index —, Chinese name, gender,
birth date, district, household size, monthly income, mobile phone, the employer's unified
social credit code, registration time) as CSV in UTF-8 and in GBK in a temp dir, migrates a
throw-away database (a temp SQLite file; with --pg, a scratch database `cityos_bench_<pid>`
created on that server and dropped afterwards), catalogs one resource per encoding and times
`loading.load_file` end to end for each: parse, validate (types, ranges, choices, ID and
credit-code checks), encrypt and blind-index the ID, hash, write, record the version and audit,
commit. Then it loads the UTF-8 file again into the same resource with one row in a hundred
changed (the staged merge of a replace that keeps history). Prints rows/s and the ratio to the
aim of 50,000 rows/s. With --profile, it prints the top of a cProfile of the first load. It
reports; it asserts nothing.

With --dataset monitoring, the file is a department dataset without personal data instead: 市环保局's
hourly air monitoring (13 columns: site code checked against a pattern and hour as the composite
key, site name, district from a list, six pollutant concentrations and the AQI with their ranges,
the quality grade from a list, the monitoring network's credit code), validated the same way; no
column is encrypted. Personal data (an encrypted, blind-indexed ID number) is what makes the
residents table slow; the two figures show each kind of resource.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import datetime as dt
import io
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from cityos.core import crypto, db  # noqa: E402
from cityos.core.identifiers import citizen_id_with_check, credit_code_with_check  # noqa: E402

AIM = 50_000
# The districts of Jilin City; stdnum knows each code from 1992 at the latest.
DISTRICTS = {"220202": "昌邑区", "220203": "龙潭区", "220204": "船营区", "220211": "丰满区",
             "220221": "永吉县", "220281": "蛟河市", "220282": "桦甸市", "220283": "舒兰市",
             "220284": "磐石市"}
SURNAMES = "王李张刘陈杨赵黄周吴徐孙朱马胡郭林何高梁郑罗宋谢唐韩曹许邓萧冯"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红文辉建国志海燕鹏宇浩"
ITEMS: list[dict[str, Any]] = [
    {"name": "id_number", "title": "公民身份号码", "type": "citizen_id", "sensitivity": "sensitive",
     "required": True, "is_key": True},
    {"name": "name", "title": "姓名", "type": "string", "sensitivity": "internal", "required": True,
     "max_length": 50},
    {"name": "gender", "title": "性别", "type": "string", "choices": ["男", "女"]},
    {"name": "birth_date", "title": "出生日期", "type": "date"},
    {"name": "district", "title": "所属区县", "type": "string", "indexed": True,
     "choices": sorted(DISTRICTS.values())},
    {"name": "household_size", "title": "家庭人口", "type": "integer", "minimum": 1, "maximum": 30},
    {"name": "income", "title": "月收入", "type": "number", "minimum": 0},
    {"name": "mobile", "title": "手机号码", "type": "phone"},
    {"name": "employer", "title": "工作单位统一社会信用代码", "type": "credit_code"},
    {"name": "registered_at", "title": "登记时间", "type": "datetime"},
]
ALL_ITEMS = list(ITEMS)
GRADES = ["优", "良", "轻度污染", "中度污染", "重度污染", "严重污染"]
MONITORING_ITEMS: list[dict[str, Any]] = [
    {"name": "site_code", "title": "站点编码", "type": "string", "required": True, "is_key": True,
     "pattern": r"^22\d{4}-\d{3}$", "indexed": True},
    {"name": "observed_at", "title": "监测时间", "type": "datetime", "required": True, "is_key": True},
    {"name": "site_name", "title": "站点名称", "type": "string", "required": True, "max_length": 50},
    {"name": "district", "title": "所属区县", "type": "string", "choices": sorted(DISTRICTS.values())},
    {"name": "pm25", "title": "PM2.5", "type": "number", "unit": "μg/m³", "minimum": 0, "maximum": 1000},
    {"name": "pm10", "title": "PM10", "type": "number", "unit": "μg/m³", "minimum": 0, "maximum": 2000},
    {"name": "so2", "title": "二氧化硫", "type": "number", "unit": "μg/m³", "minimum": 0, "maximum": 2620},
    {"name": "no2", "title": "二氧化氮", "type": "number", "unit": "μg/m³", "minimum": 0, "maximum": 940},
    {"name": "o3", "title": "臭氧", "type": "number", "unit": "μg/m³", "minimum": 0, "maximum": 1200},
    {"name": "co", "title": "一氧化碳", "type": "number", "unit": "mg/m³", "minimum": 0, "maximum": 150},
    {"name": "aqi", "title": "空气质量指数", "type": "integer", "minimum": 0, "maximum": 500},
    {"name": "grade", "title": "空气质量等级", "type": "string", "choices": GRADES},
    {"name": "operator", "title": "运维单位统一社会信用代码", "type": "credit_code"},
]
SPEC: dict[str, Any] = {
    "name": "户籍人口", "category": "department", "department": "220200-gaj", "abstract": "bench",
    "share_type": "conditional", "share_condition": "政务服务身份核验", "share_basis": "共享管理办法",
    "share_methods": ["api"], "open_type": "closed", "update_cycle": "daily", "items": ITEMS,
}


def employers(n: int = 997) -> list[str]:
    """n valid unified social credit codes (GB 32100): a company's, with a valid org code inside."""
    from stdnum.cn import uscc

    out: list[str] = []
    k = 0
    while len(out) < n:
        k += 1
        code = credit_code_with_check(f"91220200{k:09d}")
        try:
            out.append(uscc.validate(code))
        except Exception:  # noqa: BLE001 — the embedded organisation code has its own check
            continue
    return out


def rows(n: int, changed_every: int = 0) -> Any:
    """n residents as CSV rows; every ID number unique and valid (region, birth date, check digit)."""
    regions = list(DISTRICTS)
    firms = employers()
    base = dt.date(1992, 1, 1)
    days = 365 * 20
    registered = dt.datetime(2020, 1, 1, 8, 0, tzinfo=dt.UTC)
    for i in range(n):
        region = regions[i % 9]
        born = base + dt.timedelta(days=(i // 9) % days)
        first17 = f"{region}{born:%Y%m%d}{(i // (9 * days)) % 1000:03d}"
        size = 1 + i % 6
        if changed_every and i % changed_every == 0:
            size = 7 + i % 5
        name = SURNAMES[i % len(SURNAMES)] + GIVEN[(i * 7) % len(GIVEN)] + GIVEN[i % len(GIVEN)][: i % 2]
        yield [citizen_id_with_check(first17), name,
               "男" if i % 2 else "女", born.isoformat(), DISTRICTS[region], size,
               f"{(i * 37) % 20000 + 0.5:.2f}", f"13{i % 10}{i:08d}"[-11:],
               firms[i % len(firms)], (registered + dt.timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S")]


def monitoring_rows(n: int, changed_every: int = 0) -> Any:
    """n hourly readings of 500 monitoring sites, each (site, hour) once."""
    regions = list(DISTRICTS)
    operators = employers(20)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for i in range(n):
        site, hour = i % 500, i // 500
        region = regions[site % 9]
        pm25 = (i * 37) % 300 + 0.5
        aqi = min(500, int(pm25 * 1.4))
        if changed_every and i % changed_every == 0:
            aqi = (aqi + 7) % 500
        yield [f"{region}-{site:03d}", (start + dt.timedelta(hours=hour)).strftime("%Y-%m-%d %H:%M:%S"),
               f"{DISTRICTS[region]}监测站{site}", DISTRICTS[region], f"{pm25:.1f}", f"{pm25 * 1.6:.1f}",
               f"{(i * 13) % 80 + 2:.1f}", f"{(i * 7) % 120 + 5:.1f}", f"{(i * 11) % 200 + 10:.1f}",
               f"{(i % 40) / 10 + 0.2:.1f}", aqi, GRADES[min(5, aqi // 60)], operators[site % len(operators)]]


def write_csv(path: Path, n: int, encoding: str, changed_every: int = 0) -> None:
    keep = [pos for pos, i in enumerate(ALL_ITEMS) if i in ITEMS]
    generate = monitoring_rows if ALL_ITEMS[0]["name"] == "site_code" else rows
    with path.open("w", encoding=encoding, newline="") as out:
        w = csv.writer(out, lineterminator="\r\n")  # as Excel writes it
        w.writerow([i["title"] for i in ITEMS])
        w.writerows([r[p] for p in keep] for r in generate(n, changed_every))


def scratch_pg(admin_url: str) -> tuple[str, str]:
    url = make_url(admin_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    name = f"cityos_bench_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False), name


def drop_pg(admin_url: str, name: str) -> None:
    url = make_url(admin_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def setup(url: str, data_dir: Path, n_resources: int) -> list[str]:
    """Migrate, seed the city and 市公安局, catalog one resource per run; return their codes."""
    from cityos.core import service
    from cityos.core.access import SYSTEM
    from cityos.hub import service as hub

    db.upgrade(url)
    crypto.activate(crypto.Keyring.load(data_dir / "keys.json"))
    engine = db.make_engine(url)
    with db.session_scope(db.make_sessionmaker(engine)) as s:
        service.department_create(s, SYSTEM, code="220200", name="吉林市", kind="city", admin_code="220200")
        service.department_create(s, SYSTEM, code="220200-gaj", name="市公安局", kind="bureau",
                                  parent_code="220200")
        service.department_create(s, SYSTEM, code="220200-hbj", name="市环保局", kind="bureau",
                                  parent_code="220200")
        codes = [hub.resource_create(s, SYSTEM, dict(SPEC)).code for _ in range(n_resources)]
    engine.dispose()
    return codes


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process on this machine has used: for the PostgreSQL backend."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_load(url: str, code: str, path: Path, profile: bool = False
               ) -> tuple[float, dict[str, float], dict[str, Any]]:
    """Load `path` into `code` in one transaction; return wall seconds, CPU seconds by process, result."""
    from cityos.core.access import SYSTEM
    from cityos.hub import loading

    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    prof = cProfile.Profile() if profile else None
    with db.session_scope(sessions) as s, path.open("rb") as stream:
        backend = s.execute(text("SELECT pg_backend_pid()")).scalar_one() if "postgresql" in url else None
        pg0 = proc_cpu(backend) if backend else 0.0
        cpu0, kids0 = time.process_time(), os.times()
        start = time.perf_counter()
        if prof:
            prof.enable()
        result = loading.load_file(s, SYSTEM, code, stream, "csv", filename=path.name,
                                   total_bytes=path.stat().st_size)
        body = result.as_dict()
        s.commit()
        if prof:
            prof.disable()
        elapsed = time.perf_counter() - start
        kids1 = os.times()
        cpu = {"loader": time.process_time() - cpu0,
               "workers": (kids1.children_user + kids1.children_system)
               - (kids0.children_user + kids0.children_system)}
        if backend:
            cpu["postgres"] = proc_cpu(backend) - pg0
    engine.dispose()
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    return elapsed, cpu, body


def report(label: str, n: int, elapsed: float, cpu: dict[str, float], body: dict[str, Any]) -> None:
    rate = n / elapsed
    verdict = "PASS" if rate >= AIM else "MISS"
    spent = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if v)
    print(f"  {label:<34} {n:>10,} rows in {elapsed:7.2f} s = {rate:>9,.0f} rows/s  "
          f"{rate / AIM:5.2f}x aim  {verdict}")
    print(f"  {'':<34} CPU s: {spent}; +{body['added']:,} ~{body['changed']:,} -{body['removed']:,}, "
          f"rejected {body['rows_rejected']}; load average {os.getloadavg()[0]:.1f}")


def run(url: str, backend: str, n: int, work: Path, files: dict[str, Path], profile: bool) -> None:
    print(f"{backend}:")
    codes = setup(url, work, len(files))
    for (encoding, path), code in zip(files.items(), codes, strict=True):
        elapsed, cpu, body = timed_load(url, code, path, profile and encoding == "utf-8")
        report(f"first load, CSV {encoding}", n, elapsed, cpu, body)
    elapsed, cpu, body = timed_load(url, codes[0], work / "changed.csv")
    report("reload, 1% changed (staged merge)", n, elapsed, cpu, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pg", metavar="URL",
                        help="also on PostgreSQL: a server URL to create a scratch db on")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--profile", action="store_true", help="cProfile the first load")
    parser.add_argument("--dataset", choices=("residents", "monitoring"), default="residents",
                        help="residents: personal data, ID number encrypted; monitoring: 环保 hourly data")
    parser.add_argument("--no-credit-code", action="store_true",
                        help="leave out the employer's credit code column (its check is the costliest)")
    parser.add_argument("--serial", action="store_true",
                        help="no worker processes: validate and encode in the loading process")
    parser.add_argument("--no-copy-text", action="store_true",
                        help="PostgreSQL: workers send tuples that the loader COPYs row by row, "
                             "instead of COPY text")
    args = parser.parse_args()
    if args.dataset == "monitoring":
        ITEMS[:] = ALL_ITEMS[:] = MONITORING_ITEMS
        SPEC.update(name="空气质量小时监测数据", department="220200-hbj", share_type="unconditional",
                    share_condition=None, share_basis=None, open_type="open")
    if args.no_credit_code:
        ITEMS[:] = [i for i in ITEMS if i["type"] != "credit_code"]
    from cityos.hub import loading

    if args.serial:
        loading.PARALLEL_MIN_BYTES = 1 << 62
    if args.no_copy_text:
        loading.COPY_TEXT = False
    n = args.rows
    print(f"Python {platform.python_version()} on {platform.machine()} ({os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.1f}), {n:,} rows of {len(ITEMS)} columns; aim {AIM:,} rows/s; "
          f"{'serial' if args.serial else 'worker processes for large files'}")
    with tempfile.TemporaryDirectory(prefix="cityos-bench-hub-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        files = {"utf-8": work / f"{args.dataset}-utf8.csv", "gbk": work / f"{args.dataset}-gbk.csv"}
        for encoding, path in files.items():
            write_csv(path, n, encoding)
        write_csv(work / "changed.csv", n, "utf-8", changed_every=100)
        sizes = ", ".join(f"{e} {p.stat().st_size / 1e6:.0f} MB" for e, p in files.items())
        print(f"  generated CSV ({sizes}) in {time.perf_counter() - t0:.0f} s")
        if not args.no_sqlite:
            run(f"sqlite:///{work / 'bench.db'}", "SQLite", n, work, files, args.profile)
        if args.pg:
            url, name = scratch_pg(args.pg)
            try:
                run(url, "PostgreSQL", n, work, files, args.profile)
            finally:
                drop_pg(args.pg, name)


if __name__ == "__main__":
    main()
