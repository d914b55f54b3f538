"""How fast do the data hub's parser and row validator go, before storage?

Run: .venv/bin/python bench/hub_parse.py [--rows 1000000] [--xlsx-rows 0]

Generates a person-like table of 8 columns (name, citizen ID with a valid check digit, district,
age, income, registration date, married, note) in memory, writes it as CSV in UTF-8 and in GBK,
and times, for each: parsing alone (`open_table` + iteration) and parsing with validation
(`map_header`, `compile_rows`, `check` per row, errors into an `ErrorReport`). With
`--xlsx-rows N` it also times an XLSX workbook of N rows (openpyxl's read-only mode; no aim).
Prints rows/s by wall clock and by CPU time (the fairer figure on a shared machine, as the work
is single-threaded), against the aim of 200,000 rows/s for CSV parse + validate. It reports; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import io
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cityos.core.identifiers import citizen_id_with_check  # noqa: E402
from cityos.hub.parsing import map_header, open_table  # noqa: E402
from cityos.hub.validate import ErrorReport, ItemRule, compile_rows  # noqa: E402

AIM = 200_000
DISTRICTS = {"220202": "昌邑区", "220203": "龙潭区", "220204": "船营区", "220211": "丰满区",
             "220221": "永吉县", "220281": "蛟河市", "220282": "桦甸市"}
SURNAMES = "王李张刘陈杨赵黄周吴徐孙朱马胡郭林何高梁郑罗宋谢唐韩曹许邓萧冯"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红文辉建国志海燕鹏宇浩"
NOTES = ["", "", "低保户", "退役军人", "独居老人，需每周探访", "租户, 合同至2026年"]
ITEMS = [
    {"name": "name", "title": "姓名", "type": "string", "required": True, "max_length": 50},
    {"name": "id_number", "title": "公民身份号码", "type": "citizen_id", "required": True, "is_key": True,
     "sensitivity": "sensitive"},
    {"name": "district", "title": "所属区县", "type": "string", "choices": sorted(DISTRICTS.values())},
    {"name": "age", "title": "年龄", "type": "integer", "minimum": 0, "maximum": 150},
    {"name": "income", "title": "月收入", "type": "number", "minimum": 0},
    {"name": "registered_on", "title": "登记日期", "type": "date"},
    {"name": "married", "title": "已婚", "type": "boolean"},
    {"name": "note", "title": "备注", "type": "string", "max_length": 200},
]


def people(n: int, seed: int = 2202) -> list[list[Any]]:
    """n fake residents, every ID number valid in form (region, birth date, check digit)."""
    rng = random.Random(seed)
    regions = list(DISTRICTS)
    out = []
    for _ in range(n):
        region = rng.choice(regions)
        born = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(365 * 55))
        first17 = f"{region}{born:%Y%m%d}{rng.randrange(1000):03d}"
        out.append([
            rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.choice((1, 2)))),
            citizen_id_with_check(first17),
            DISTRICTS[region],
            2024 - born.year,
            round(rng.uniform(0, 20000), 2),
            dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(3000)),
            rng.choice(("是", "否", "true", "false")),
            rng.choice(NOTES),
        ])
    return out


def to_csv(rows: list[list[Any]], encoding: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # as Excel writes it
    writer.writerow([i["title"] for i in ITEMS])
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def to_xlsx(rows: list[list[Any]]) -> bytes:
    import openpyxl

    # openpyxl writes strings inline; Excel writes a shared-string table, which reads ~20% faster.
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet()
    sheet.append([i["title"] for i in ITEMS])
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def parse_only(data: bytes, fmt: str) -> int:
    count = 0
    for _ in open_table(io.BytesIO(data), fmt):
        count += 1
    return count


def parse_and_validate(data: bytes, fmt: str) -> int:
    reader = open_table(io.BytesIO(data), fmt)
    rules = [ItemRule.of(i) for i in ITEMS]
    check = compile_rows(rules, map_header(reader.header, ITEMS, reader.header_line)).check
    report, good = ErrorReport(), 0
    for line, values in reader:
        row, errors = check(line, values)
        if row is not None:
            good += 1
        else:
            report.add(errors)
    if report.total:
        print(f"    unexpected errors: {report.total}, first: {report.errors[0]}")
    return good + report.rows


def timed(label: str, work: Callable[[], int], repeat: int, aim: int | None = None) -> None:
    """Best of `repeat` runs, by wall clock and by this process's CPU time."""
    wall = cpu = float("inf")
    count = 0
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        count = work()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    rate = count / cpu
    verdict = "" if aim is None else ("  PASS" if rate >= aim else "  MISS")
    print(f"  {label:<18} {count:>9,} rows: wall {wall:6.2f} s = {count / wall:>9,.0f} rows/s, "
          f"CPU {cpu:6.2f} s = {rate:>9,.0f} rows/s{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--xlsx-rows", type=int, default=0, help="also time an XLSX of this many rows")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best counts")
    args = parser.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}, {args.rows:,} rows of 8 columns")
    t0 = time.perf_counter()
    rows = people(max(args.rows, args.xlsx_rows))
    files = {f"CSV {enc}": ("csv", to_csv(rows[: args.rows], enc)) for enc in ("utf-8", "gbk")}
    if args.xlsx_rows:
        files["XLSX (written by openpyxl)"] = ("xlsx", to_xlsx(rows[: args.xlsx_rows]))
    del rows  # a load's process holds no million rows: keep the collector's work the same
    gc.collect()
    print(f"  generated in {time.perf_counter() - t0:.1f} s")
    for label, (fmt, data) in files.items():
        print(f"{label}: {len(data) / 1e6:.1f} MB")
        repeat = args.repeat if fmt == "csv" else 1
        timed("parse", lambda fmt=fmt, data=data: parse_only(data, fmt), repeat)
        timed("parse + validate", lambda fmt=fmt, data=data: parse_and_validate(data, fmt), repeat,
              AIM if fmt == "csv" else None)


if __name__ == "__main__":
    main()
