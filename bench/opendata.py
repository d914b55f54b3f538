"""How fast are the open-data portal's CKAN API reads, next to Datasette on the same table?

Run: .venv/bin/python bench/opendata.py [--rows 1000000] [--datasets 10000] [--requests 300]
     [--clients 8] [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--keep DIR]
     (Datasette comes with the `bench` extra: .venv/bin/pip install -e '.[bench]')

Builds a throw-away database (a temp SQLite file; with --pg, a scratch database on that server
instead, dropped afterwards unless --keep) holding:

  * one real hub resource of --rows rows: 市环保局's hourly air quality by monitoring site
    (site, name, district, day, hour, AQI, PM2.5, PM10, level, longitude, latitude; keyed by
    site + day + hour), generated as CSV and loaded with `loading.load_file` (validation,
    worker processes), then published through the real review: `dataset_draft` → `submit`
    (publication check over every row) → provider approval → data-office approval, which builds
    the de-identified copy `od_rows_<id>` and its indexes;
  * --datasets - 1 more published datasets for search only ("metadata-only datasets for
    search"): catalog rows and dataset rows inserted through SQLAlchemy with varied Chinese
    titles, descriptions, tags, topics and departments, each indexed by `search.index_dataset`.
    They have no rows table (10,000 real resources would mean 20,000 tables).

Then it serves the database with `cityos serve` (uvicorn, one process) and, on SQLite, with
Datasette (`datasette serve -i <file>`: the same file, immutable, read-only) on free loopback
ports, and sends over one keep-alive httpx client per server, interleaved in rounds:

  package_search      varied partial-Chinese queries (one in ten with no query: browse all),
                      facet.field [organization, groups, tags, res_format, license_id], an fq
                      on most, rows=20
  datastore_search    the 1,000,000-row dataset, `filters` on an indexed column (site_code,
                      values varied), limit=100, with `total` — against Datasette's
                      /<db>/od_rows_<id>.json?site_code=..&_size=100&_shape=objects&_nosuggest=1
                      with its filtered count; again without the count on both (CityOS
                      include_total=false, Datasette _nocount=1); and filtered on district
                      (a ninth of the rows match: a costlier count)

Sequential single-client latency is the main figure: p50/p95/p99, req/s and the server's CPU
per request. With --clients N (default 8; 0 skips it) the same requests are sent again by N
concurrent raw asyncio clients. CityOS answers with its access check (conditional datasets need
a key) and usage counting (in memory, flushed every 5 s) on, as in production; the count of
API calls recorded is checked after the server stops. Prints the ratios CityOS/Datasette and
whether each aim is met (package_search p99 < 100 ms; datastore_search no slower than
Datasette). It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_seconds, free_port, stop  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from cityos.core import crypto, db  # noqa: E402

SEARCH_AIM_MS = 100.0  # package_search p99
RATIO_AIM = 1.0  # CityOS / Datasette latency: no slower
SECRET = "bench-secret-key-0123456789"
PASSWORD = "bench-pass-word-1"
DB_FILE = "opendata.db"  # Datasette names the database after the file: /opendata/...
AIR_NAME = "air-quality-hourly"
SITES = 120

# -- the city -------------------------------------------------------------------------------------

DISTRICTS = ["昌邑区", "龙潭区", "船营区", "丰满区", "永吉县", "蛟河市", "桦甸市", "舒兰市", "磐石市"]
SCOPES = ["吉林市", *DISTRICTS, "吉林高新区", "吉林经开区", "北大湖开发区"]
# (code suffix, name): the demo city's bureaus.
BUREAUS = [("zwb", "市政网办"), ("gaj", "市公安局"), ("hbj", "市环保局"), ("jtj", "市交通局"),
           ("ghj", "市规划局"), ("wjw", "市卫生计生委"), ("mzj", "市民政局"), ("jyj", "市教育局"),
           ("xzzfj", "市行政执法局"), ("zjj", "市质监局"), ("fgw", "市发改委"), ("gxj", "市工信局"),
           ("nw", "市农委"), ("lfw", "市旅发委"), ("dsjj", "市大数据局")]
PLACES = ["哈达湾", "东局子", "丰满", "电力学院", "江北", "北华大学", "吉化", "九站", "龙潭山", "越山路",
          "江南公园", "高新区", "经开区", "松花湖", "世纪广场", "火车站", "青年路", "解放路"]


@dataclass(frozen=True)
class Theme:
    topic: str
    title: str
    title_en: str
    bureaus: tuple[str, ...]
    subjects: tuple[tuple[str, str], ...]  # (中文, slug)
    fields: tuple[str, ...]
    tags: tuple[str, ...]


THEMES = [
    Theme("environment", "生态环境", "Environment", ("hbj",),
          (("空气质量", "air-quality"), ("地表水水质", "surface-water"), ("噪声监测", "noise"),
           ("重点排污单位", "polluters"), ("环境行政处罚", "env-penalties"),
           ("饮用水水源地", "water-sources"),
           ("建设项目环评审批", "eia-approvals"), ("污染源在线监测", "pollution-monitoring"),
           ("危险废物经营许可", "hazardous-waste")),
          ("监测点位", "监测时间", "PM2.5浓度", "PM10浓度", "二氧化硫", "化学需氧量", "氨氮", "等效声级",
           "单位名称", "处罚决定书文号", "经度", "纬度"),
          ("空气质量", "PM2.5", "水质", "环境监测", "污染源", "环保", "噪声")),
    Theme("transport", "交通出行", "Transport", ("jtj",),
          (("公交线路", "bus-routes"), ("公交站点", "bus-stops"), ("公交客流", "bus-ridership"),
           ("出租车运营", "taxi"), ("道路运输企业", "road-transport"), ("公共停车场", "car-parks"),
           ("新能源汽车充电桩", "chargers"), ("道路交通流量", "traffic-flow"),
           ("客运站班次", "coach-timetable"),
           ("共享单车投放", "bike-share")),
          ("线路名称", "站点名称", "上车人数", "下车人数", "车牌号", "泊位数", "收费标准", "经度", "纬度",
           "发车时间", "日期", "路段名称"),
          ("公交", "交通", "停车", "出行", "站点", "客流", "充电")),
    Theme("health", "医疗卫生", "Health", ("wjw",),
          (("医疗机构", "hospitals"), ("零售药店", "pharmacies"), ("医保定点机构", "insured-clinics"),
           ("疫苗接种门诊", "vaccination"), ("卫生监督检查结果", "health-inspections"),
           ("执业医师注册", "doctors"), ("急救站点", "ambulance"), ("无偿献血点", "blood-donation")),
          ("机构名称", "机构等级", "床位数", "地址", "联系电话", "开放时间", "执业范围", "经度", "纬度",
           "检查日期", "检查结果"),
          ("医院", "医疗", "卫生", "药店", "医保", "疫苗", "健康")),
    Theme("education", "教育", "Education", ("jyj",),
          (("中小学校", "schools"), ("幼儿园", "kindergartens"), ("校外培训机构", "tutoring"),
           ("义务教育学区划分", "school-districts"), ("普通高中招生计划", "admissions"),
           ("职业院校", "vocational-schools"), ("高考考点", "exam-sites")),
          ("学校名称", "办学类型", "学段", "在校生数", "教职工数", "招生人数", "划片范围", "地址",
           "经度", "纬度"),
          ("学校", "教育", "招生", "幼儿园", "培训", "学区")),
    Theme("social", "社会保障", "Social security", ("mzj",),
          (("养老机构", "elderly-care"), ("城乡低保统计", "minimum-living"),
           ("社区服务中心", "community-centres"),
           ("社会组织登记", "social-orgs"), ("殡葬服务机构", "funeral"), ("残疾人服务机构", "disability"),
           ("婚姻登记统计", "marriages")),
          ("机构名称", "床位数", "入住人数", "保障人数", "保障金额", "登记日期", "业务范围", "地址",
           "统计月份"),
          ("养老", "民政", "低保", "社会救助", "社区", "社会组织")),
    Theme("economy", "经济发展", "Economy", ("fgw", "zjj", "gxj"),
          (("市场主体登记", "business-registry"), ("企业信用评价", "credit-ratings"),
           ("重要商品价格监测", "prices"), ("重点招商项目", "investment"), ("规模以上工业企业", "industry"),
           ("双随机抽查结果", "inspections"),
           ("行政许可", "licences"), ("行政处罚", "penalties"), ("产品质量抽检", "product-quality")),
          ("企业名称", "统一社会信用代码", "法定代表人", "注册资本", "成立日期", "行业分类", "商品名称",
           "价格", "许可决定日期", "处罚结果"),
          ("企业", "信用", "价格", "市场监管", "许可", "处罚", "工业", "双随机")),
    Theme("urban", "城市建设", "Urban development", ("ghj", "xzzfj"),
          (("城市道路", "roads"), ("公共厕所", "toilets"), ("垃圾分类投放点", "recycling-points"),
           ("城市照明设施", "street-lights"), ("供热单位", "heating"), ("公园绿地", "parks"),
           ("建筑工地", "construction-sites"), ("规划许可公示", "planning-permits"),
           ("老旧小区改造", "renovation")),
          ("名称", "所在街道", "面积", "长度", "建成年份", "管理单位", "开放时间", "经度", "纬度",
           "许可证号"),
          ("城管", "规划", "市政设施", "公园", "供热", "垃圾分类")),
    Theme("agriculture", "农业农村", "Agriculture", ("nw",),
          (("农产品批发价格", "farm-prices"), ("农民专业合作社", "co-ops"), ("高标准农田建设", "farmland"),
           ("农机购置补贴", "machinery-subsidy"), ("种子经营许可", "seed-licences"),
           ("畜禽规模养殖场", "livestock")),
          ("品种", "价格", "产地", "合作社名称", "面积", "补贴金额", "许可证号", "存栏量", "统计日期"),
          ("农业", "农产品", "农村", "补贴", "养殖", "合作社")),
    Theme("tourism", "文化旅游", "Culture and tourism", ("lfw",),
          (("A级旅游景区", "scenic-spots"), ("星级饭店", "hotels"), ("公共图书馆", "libraries"),
           ("文物保护单位", "heritage"), ("体育场馆", "stadiums"), ("旅行社名录", "travel-agencies"),
           ("冰雪旅游线路", "ski-routes")),
          ("名称", "等级", "地址", "开放时间", "门票价格", "联系电话", "接待人数", "经度", "纬度"),
          ("旅游", "景区", "文化", "冰雪", "酒店", "体育")),
    Theme("safety", "公共安全", "Public safety", ("gaj",),
          (("应急避难场所", "shelters"), ("消防救援站", "fire-stations"), ("危险化学品企业", "hazchem"),
           ("交通违法高发路段", "traffic-violations"), ("户籍办理网点", "registration-offices"),
           ("出入境办理指南", "exit-entry")),
          ("名称", "地址", "容纳人数", "面积", "联系电话", "办理时间", "违法类型", "经度", "纬度"),
          ("应急", "消防", "安全", "公安", "避难", "交通违法")),
    Theme("government", "政务服务", "Government services", ("zwb", "dsjj"),
          (("政务服务事项", "services"), ("办事指南", "guides"), ("12345热线诉求统计", "hotline"),
           ("政务服务中心窗口", "service-windows"), ("公共数据开放目录", "open-catalog"),
           ("电子证照目录", "e-licences")),
          ("事项名称", "实施主体", "办理时限", "收费标准", "受理地点", "诉求类型", "办结率", "统计月份"),
          ("政务服务", "办事", "热线", "数据开放", "证照")),
    Theme("population", "人口", "Population", ("gaj", "mzj"),
          (("户籍人口统计", "population"), ("出生人口统计", "births"), ("老年人口统计", "seniors"),
           ("流动人口统计", "migrants")),
          ("统计年份", "区县", "总人口", "男性", "女性", "60岁以上人口", "出生人数", "死亡人数"),
          ("人口", "统计", "户籍", "老龄化")),
]
SUFFIXES = ["信息", "名录", "统计", "月报", "年报", "数据", "分布", "汇总", "清单", "公示", "目录",
            "监测数据"]
CYCLES = ["daily", "weekly", "monthly", "quarterly", "yearly", "irregular", "realtime"]
LICENCE_IDS = ["CC-BY-4.0", "CC-BY-4.0", "CC0-1.0", "ODC-BY-1.0", "CN-GOV-OPEN"]
TYPES = ["string", "string", "string", "integer", "number", "date"]

# What people type into a portal's search box: parts of words, a district, a year, PM2.5.
QUERIES = ["空气", "空气质量", "公交", "公交站点", "医院", "医疗机构", "学校", "幼儿园", "养老", "停车",
           "充电桩", "排污", "水质", "景区", "旅游", "企业信用", "行政处罚", "价格", "农产品", "消防",
           "龙潭区", "船营区 学校", "昌邑 公交", "磐石 医疗", "统计", "名录", "2024年", "pm2.5", "噪声",
           "低保", "图书馆", "热线", "许可", "人口"]
FQS = ["", "", "open_level:open", "groups:transport", "organization:220200-hbj", "res_format:CSV",
       "license_id:CC-BY-4.0", "tags:(统计 OR 名录)", "groups:(environment OR health)"]
FACETS = '["organization", "groups", "tags", "res_format", "license_id"]'


# -- the 1,000,000-row resource -------------------------------------------------------------------

AIR_SPEC: dict[str, Any] = {
    "name": "环境空气质量小时数据", "name_en": "Hourly air quality", "category": "theme",
    "department": "220200-hbj", "abstract": "全市空气质量自动监测站点逐小时空气质量指数、PM2.5和PM10浓度",
    "share_type": "unconditional", "share_methods": ["api", "download"], "open_type": "open",
    "update_cycle": "realtime", "keywords": ["空气质量", "PM2.5", "环境监测"],
    "items": [
        {"name": "site_code", "title": "站点编码", "type": "string", "required": True, "is_key": True},
        {"name": "site_name", "title": "站点名称", "type": "string", "required": True},
        {"name": "district", "title": "所属区县", "type": "string", "indexed": True, "choices": DISTRICTS},
        {"name": "day", "title": "日期", "type": "date", "required": True, "is_key": True},
        {"name": "hour", "title": "小时", "type": "integer", "required": True, "is_key": True,
         "minimum": 0, "maximum": 23},
        {"name": "aqi", "title": "空气质量指数", "type": "integer", "minimum": 0, "maximum": 500},
        {"name": "pm25", "title": "PM2.5浓度", "type": "number", "unit": "μg/m³", "minimum": 0},
        {"name": "pm10", "title": "PM10浓度", "type": "number", "unit": "μg/m³", "minimum": 0},
        {"name": "level", "title": "空气质量级别", "type": "string",
         "choices": ["优", "良", "轻度污染", "中度污染", "重度污染", "严重污染"]},
        {"name": "lon", "title": "经度", "type": "number"},
        {"name": "lat", "title": "纬度", "type": "number"},
    ],
}
AIR_DATASET: dict[str, Any] = {
    "name": AIR_NAME, "title": "环境空气质量小时数据", "title_en": "Hourly air quality",
    "description": "吉林市各空气质量自动监测站点逐小时发布的空气质量指数（AQI）、PM2.5和PM10浓度及级别。",
    "topics": ["environment"], "tags": ["空气质量", "PM2.5", "环境监测", "实时"], "licence": "CC-BY-4.0",
    "spatial": "吉林市", "lon_field": "lon", "lat_field": "lat", "temporal_start": dt.date(2025, 1, 1),
}
LEVELS = [(50, "优"), (100, "良"), (150, "轻度污染"), (200, "中度污染"), (300, "重度污染"), (501, "严重污染")]


def sites() -> list[tuple[str, str, str, float, float]]:
    """(code, name, district, lon, lat) of the monitoring sites."""
    out = []
    for s in range(SITES):
        district = DISTRICTS[s % len(DISTRICTS)]
        out.append((f"JL{s + 1:03d}", f"{district}{PLACES[s % len(PLACES)]}{s // len(PLACES) + 1}号站",
                    district, round(126.35 + (s * 37 % 100) / 200, 5),
                    round(43.60 + (s * 53 % 100) / 250, 5)))
    return out


def write_air_csv(path: Path, n: int) -> None:
    """n hourly readings: hour fastest, then site, then day, from 2025-01-01."""
    table = sites()
    start = dt.date(2025, 1, 1)
    days = {d: (start + dt.timedelta(days=d)).isoformat() for d in range(n // (24 * SITES) + 2)}
    with path.open("w", encoding="utf-8", newline="") as out:
        w = csv.writer(out, lineterminator="\r\n")
        w.writerow([i["title"] for i in AIR_SPEC["items"]])
        for n0 in range(0, n, 24):
            sd = n0 // 24
            code, name, district, lon, lat = table[sd % SITES]
            d = sd // SITES
            day = days[d]
            base = 25 + (d * 7 + sd % SITES * 3) % 140
            rows = []
            for hour in range(min(24, n - n0)):
                aqi = base + (hour * 11 + d) % 40
                level = next(lv for top, lv in LEVELS if aqi <= top)
                rows.append((code, name, district, day, hour, aqi, round(aqi * 0.62 + hour % 5, 1),
                             round(aqi * 1.15 + hour % 7, 1), level, lon, lat))
            w.writerows(rows)


# -- building the database ------------------------------------------------------------------------

def progress_bar() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)


def seed_city(url: str) -> None:
    """The city, its bureaus, three users of 市环保局 and the data office, and the topics."""
    from cityos.core import service
    from cityos.core.access import DEPARTMENT_ADMIN, DEPARTMENT_STAFF, PLATFORM_ADMIN, SYSTEM
    from cityos.opendata import service as od

    engine = db.make_engine(url)
    with db.session_scope(db.make_sessionmaker(engine)) as s:
        service.department_create(s, SYSTEM, code="220200", name="吉林市", kind="city", admin_code="220200")
        for suffix, name in BUREAUS:
            service.department_create(s, SYSTEM, code=f"220200-{suffix}", name=name, kind="bureau",
                                      parent_code="220200")
        for user, dept, role in (("admin", "220200", PLATFORM_ADMIN),
                                 ("env_admin", "220200-hbj", DEPARTMENT_ADMIN),
                                 ("env_staff", "220200-hbj", DEPARTMENT_STAFF)):
            service.user_create(s, SYSTEM, username=user, password=PASSWORD, department_code=dept, role=role)
        for t in THEMES:
            od.topic_create(s, SYSTEM, name=t.topic, title=t.title, title_en=t.title_en)
    engine.dispose()


def load_air(url: str, work: Path, n: int) -> tuple[str, float]:
    """Catalog the air-quality resource and load n rows from CSV with load_file; (code, seconds)."""
    from cityos.core.access import SYSTEM
    from cityos.hub import loading
    from cityos.hub import service as hub

    path = work / "air.csv"
    t0 = time.perf_counter()
    write_air_csv(path, n)
    print(f"  generated {path.stat().st_size / 1e6:.0f} MB of CSV in {time.perf_counter() - t0:.1f} s")
    engine = db.make_engine(url)
    with db.session_scope(db.make_sessionmaker(engine)) as s:
        code = hub.resource_create(s, SYSTEM, dict(AIR_SPEC)).code
    size = path.stat().st_size
    with progress_bar() as bar, db.session_scope(db.make_sessionmaker(engine)) as s, path.open("rb") as f:
        task = bar.add_task(f"load_file {n:,} rows", total=n)
        t0 = time.perf_counter()
        result = loading.load_file(s, SYSTEM, code, f, "csv", filename=path.name, total_bytes=size,
                                   progress=lambda _b, rows: bar.update(task, completed=rows))
        s.commit()
        elapsed = time.perf_counter() - t0
        bar.update(task, completed=n)
    engine.dispose()
    path.unlink()
    if result.rows_rejected:
        raise SystemExit(f"{result.rows_rejected} rows rejected: {result.report.as_dicts()[:3]}")
    return code, elapsed


def publish_air(url: str, code: str) -> dict[str, Any]:
    """Draft, submit, approve twice, each step committed as the console would; the timings."""
    from cityos.core import auth
    from cityos.core.models import User
    from cityos.opendata import service as od

    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)

    def actor(s: Any, name: str) -> Any:
        return auth.user_actor(s.scalar(select(User).where(User.username == name)))

    timings: dict[str, float] = {}
    steps: list[tuple[str, Callable[[Any], Any]]] = [
        ("draft", lambda s: od.dataset_draft(s, actor(s, "env_staff"), resource=code,
                                             spec=dict(AIR_DATASET))),
        ("submit (publication check over every row)",
         lambda s: od.dataset_submit(s, actor(s, "env_staff"), AIR_NAME)),
        ("provider approval", lambda s: od.dataset_approve(s, actor(s, "env_admin"), AIR_NAME)),
        ("data-office approval (builds od_rows_<id> and its indexes)",
         lambda s: od.dataset_approve(s, actor(s, "admin"), AIR_NAME)),
    ]
    with progress_bar() as bar:
        for label, step in steps:
            task = bar.add_task(label, total=None)
            t0 = time.perf_counter()
            with db.session_scope(sessions) as s:
                step(s)
            timings[label] = time.perf_counter() - t0
            bar.update(task, total=1, completed=1)
    with sessions() as s:
        ds = od.published(s, AIR_NAME)
        info = {"dataset_id": ds.id, "table": ds.table_name, "row_count": ds.row_count,
                "indexed": [f["id"] for f in ds.fields if f.get("indexed")]}
    engine.dispose()
    return {**info, "timings": timings}


def meta_dataset(rng: random.Random, i: int, theme: Theme) -> dict[str, Any]:
    """A varied, plausible dataset description of a theme."""
    subject, slug = rng.choice(theme.subjects)
    scope = rng.choice(SCOPES)
    year = f"{rng.randint(2018, 2026)}年" if rng.random() < 0.3 else ""
    suffix = rng.choice(SUFFIXES)
    title = f"{year}{scope}{subject}{suffix}"
    fields = rng.sample(theme.fields, rng.randint(4, min(8, len(theme.fields))))
    cycle = rng.choice(CYCLES)
    desc = (f"{scope}{subject}{suffix}，包括{'、'.join(fields[:-1])}和{fields[-1]}等信息，"
            f"由{{dept}}{rng.choice(['汇总发布', '按期更新', '统一归集', '依法公开'])}。"
            + rng.choice(["", "数据来源于业务系统。", "可通过接口按条件查询。", f"数据范围覆盖{scope}。"]))
    tags = list(dict.fromkeys([subject, *rng.sample(theme.tags, rng.randint(1, 3)),
                               *(["统计"] if "统计" in suffix or "报" in suffix else []),
                               *(["名录"] if suffix in ("名录", "目录", "清单") else [])]))
    topics = [theme.topic] + ([rng.choice(THEMES).topic] if rng.random() < 0.15 else [])
    published = dt.datetime(2019, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=rng.randrange(7 * 525_600))
    return {"title": title, "slug": slug, "description": desc, "tags": tags,
            "topics": list(dict.fromkeys(topics)),
            "fields": fields, "cycle": cycle, "published": published,
            "open_level": "conditional" if rng.random() < 0.15 else "open",
            "licence": rng.choice(LICENCE_IDS), "geo": "经度" in fields and "纬度" in fields,
            "rows": rng.randint(10, 200_000),
            "title_en": slug.replace("-", " ") if rng.random() < 0.5 else None}


def add_datasets(url: str, n: int, seed: int = 4) -> float:
    """n published metadata-only datasets (catalog row + dataset row + search index); seconds."""
    from cityos.core.models import Department
    from cityos.hub.models import Resource
    from cityos.opendata import search
    from cityos.opendata.models import Dataset

    rng = random.Random(seed)
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    t0 = time.perf_counter()
    with progress_bar() as bar, db.session_scope(sessions) as s:
        task = bar.add_task(f"{n:,} metadata-only datasets (insert + search.index_dataset)", total=n)
        depts = {d.code.split("-")[-1]: d for d in s.scalars(select(Department))}
        for start in range(0, n, 500):
            batch = []
            for i in range(start, min(n, start + 500)):
                theme = THEMES[i % len(THEMES)] if rng.random() < 0.8 else rng.choice(THEMES)
                m = meta_dataset(rng, i, theme)
                dept = depts[rng.choice(theme.bureaus)]
                desc = m["description"].replace("{dept}", dept.name)
                res = Resource(code=f"302001-{i + 1:06d}", name=m["title"], category="department",
                               class_code="3", item_code="02", entry_code="001", sequence=i + 1,
                               department=dept, abstract=desc, format="table", share_type="unconditional",
                               share_methods=["api", "download"], open_type=m["open_level"],
                               update_cycle=m["cycle"], keywords=m["tags"], key_fields=[],
                               current_version=1, row_count=m["rows"], last_loaded_at=m["published"])
                fields = [{"id": f"c{k + 1}", "title": t, "type": rng.choice(TYPES), "source": f"c{k + 1}",
                           "rule": None, "indexed": False} for k, t in enumerate(m["fields"])]
                geo = m["geo"]
                ds = Dataset(uid=str(uuid.UUID(int=rng.getrandbits(128))), name=f"{m['slug']}-{i + 1:05d}",
                             resource=res, department=dept, title=m["title"], title_en=m["title_en"],
                             description=desc, topics=m["topics"], tags=m["tags"], licence=m["licence"],
                             update_cycle=m["cycle"], open_level=m["open_level"], spatial=None,
                             lon_field="c_lon" if geo else None, lat_field="c_lat" if geo else None,
                             state="published", source_version=1, row_count=m["rows"], fields=fields,
                             created_by="bench", created_at=m["published"], published_at=m["published"],
                             data_updated_at=m["published"], modified_at=m["published"],
                             views=rng.randrange(5000), downloads=rng.randrange(500))
                s.add(ds)
                batch.append(ds)
            s.flush()
            for ds in batch:
                search.index_dataset(s, ds)
            bar.update(task, advance=len(batch))
    elapsed = time.perf_counter() - t0
    engine.dispose()
    return elapsed


def build(url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Migrate, seed, load and publish the big dataset, add the others; what was built."""
    t_all = time.perf_counter()
    db.upgrade(url)
    crypto.activate(crypto.Keyring.load(work / "keys.json"))
    seed_city(url)
    code, load_s = load_air(url, work, args.rows)
    print(f"  load_file: {args.rows:,} rows in {load_s:.1f} s = {args.rows / load_s:,.0f} rows/s")
    pub = publish_air(url, code)
    for label, secs in pub["timings"].items():
        rate = f" = {args.rows / secs:,.0f} rows/s" if secs > 1 else ""
        print(f"  {label}: {secs:.1f} s{rate}")
    meta_s = add_datasets(url, args.datasets - 1) if args.datasets > 1 else 0.0
    print(f"  {args.datasets - 1:,} metadata-only datasets for search in {meta_s:.1f} s")
    engine = db.make_engine(url)
    with engine.connect() as conn:
        terms = conn.execute(text("SELECT count(*) FROM od_terms")).scalar_one()
        published = conn.execute(
            text("SELECT count(*) FROM od_datasets WHERE state = 'published'")).scalar_one()
    if engine.dialect.name == "postgresql":  # as autovacuum does within a minute of a large insert
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:  # fold the WAL into the file: Datasette opens it immutable
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    print(f"  {published:,} published datasets, {terms:,} search terms; built in "
          f"{time.perf_counter() - t_all:.0f} s")
    return {"rows": args.rows, "datasets": args.datasets, "code": code, **pub, "load_s": load_s,
            "meta_s": meta_s, "sites": [s[0] for s in sites()], "built_s": time.perf_counter() - t_all}


# -- servers --------------------------------------------------------------------------------------


def start(cmd: list[str], env: dict[str, str], port: int, probe: str, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=2).status_code < 500:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"{cmd[0]} did not start within 120 s")


def datasette_cmd() -> list[str] | None:
    exe = Path(sys.executable).parent / "datasette"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("datasette")
    return [found] if found else None


# -- requests -------------------------------------------------------------------------------------

@dataclass
class Series:
    """One kind of request to one server, and what its answers took."""

    label: str
    server: str
    pid: int
    port: int
    requests: list[str]  # path?query, in order
    check: Callable[[bytes], int]  # rows (or results) in an answer; raises if it is wrong
    latencies: list[float] = field(default_factory=list)
    found: list[int] = field(default_factory=list)  # per request: total or count, for breakdowns
    errors: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu / len(self.latencies) * 1000 if self.latencies else 0.0


def ckan_result(body: bytes) -> dict[str, Any]:
    doc = orjson.loads(body)
    if not doc.get("success"):
        raise ValueError(str(doc.get("error"))[:300])
    return doc["result"]  # type: ignore[no-any-return]


def check_search(body: bytes) -> int:
    return int(ckan_result(body)["count"])


def check_rows(body: bytes) -> int:
    result = ckan_result(body)
    if len(result["records"]) != min(100, result.get("total", 100)):
        raise ValueError(f"{len(result['records'])} records")
    return int(result.get("total", -1))


def check_datasette(body: bytes) -> int:
    doc = orjson.loads(body)
    if len(doc["rows"]) != min(100, doc.get("filtered_table_rows_count") or 100):
        raise ValueError(f"{len(doc['rows'])} rows")
    count = doc.get("filtered_table_rows_count")
    return -1 if count is None else int(count)


def search_requests(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        params = {"facet.field": FACETS, "rows": "20"}
        if rng.random() >= 0.1:
            params["q"] = rng.choice(QUERIES)
        fq = rng.choice(FQS)
        if fq:
            params["fq"] = fq
        out.append("/api/3/action/package_search?" + urlencode(params))
    return out


def rows_requests(n: int, rng: random.Random, column: str, values: list[str], resource: str, table: str,
                  total: bool) -> tuple[list[str], list[str]]:
    """The same filter values for CityOS's datastore_search and Datasette's table JSON."""
    ours, theirs = [], []
    for _ in range(n):
        value = rng.choice(values)
        params = {"resource_id": resource, "filters": json.dumps({column: value}, ensure_ascii=False),
                  "limit": "100"}
        if not total:
            params["include_total"] = "false"
        ours.append("/api/3/action/datastore_search?" + urlencode(params))
        ds_params = {column: value, "_size": "100", "_shape": "objects", "_nosuggest": "1"}
        if not total:
            ds_params["_nocount"] = "1"
        theirs.append(f"/{Path(DB_FILE).stem}/{table}.json?" + urlencode(ds_params))
    return ours, theirs


def run_sequential(series: list[Series], rounds: int, warmup: int) -> None:
    """One keep-alive httpx client per server; the series interleaved in `rounds` rounds."""
    clients = {s.port: httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=60) for s in series}
    try:
        for s in series:  # warm-up: connections, caches, compiled statements
            for path in s.requests[:warmup]:
                clients[s.port].get(path)
        for r in range(rounds):
            for s in series:
                chunk = s.requests[r * len(s.requests) // rounds:(r + 1) * len(s.requests) // rounds]
                client = clients[s.port]
                cpu0, t0 = cpu_seconds(s.pid), time.perf_counter()
                for path in chunk:
                    t = time.perf_counter()
                    resp = client.get(path)
                    s.latencies.append(time.perf_counter() - t)
                    try:
                        if resp.status_code != 200:
                            raise ValueError(resp.status_code)
                        s.found.append(s.check(resp.content))
                    except Exception as exc:  # noqa: BLE001 — counted and shown once
                        if not s.errors:
                            print(f"  ! {s.server} {s.label}: {exc!r} {resp.text[:200]}")
                        s.errors += 1
                        s.found.append(-1)
                s.elapsed += time.perf_counter() - t0
                s.cpu += cpu_seconds(s.pid) - cpu0
    finally:
        for c in clients.values():
            c.close()


async def _http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
                    ) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 GET; a raw client, as httpx's own CPU per request would compete
    with the servers for the two cores."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length or 0)
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _concurrent(s: Series, clients: int) -> None:
    queue = iter(s.requests)

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        try:
            for path in queue:
                t = time.perf_counter()
                status, body = await _http_get(reader, writer, path)
                s.latencies.append(time.perf_counter() - t)
                if status != 200:
                    s.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))


def run_concurrent(series: list[Series], clients: int) -> None:
    for s in series:
        cpu0, t0 = cpu_seconds(s.pid), time.perf_counter()
        asyncio.run(_concurrent(s, clients))
        s.elapsed += time.perf_counter() - t0
        s.cpu += cpu_seconds(s.pid) - cpu0


# -- reporting ------------------------------------------------------------------------------------

def table(title: str, series: list[Series], note: str = "") -> None:
    print(f"\n{title}{note}")
    print(f"  {'request':52} {'server':9} {'req/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'CPU ms':>7} {'errors':>6}")
    for s in series:
        print(f"  {s.label:52} {s.server:9} {s.rps:6.0f} {s.pct(50):7.1f} {s.pct(95):7.1f} {s.pct(99):7.1f} "
              f"{s.cpu_ms:7.2f} {s.errors:6d}")


def verdicts(series: list[Series], with_datasette: bool, when: str = "") -> None:
    search = next(s for s in series if s.label.startswith("package_search"))
    p99 = search.pct(99)
    print(f"  package_search p99{when} {p99:.1f} ms -> {'MET' if p99 < SEARCH_AIM_MS else 'MISSED'} "
          f"(aim < {SEARCH_AIM_MS:.0f} ms)")
    if not with_datasette:
        return
    pairs = [(a, b) for a, b in zip(series, series[1:], strict=False)
             if a.server == "CityOS" and b.server == "Datasette"]
    for ours, theirs in pairs:
        r50, r99 = ours.pct(50) / theirs.pct(50), ours.pct(99) / theirs.pct(99)
        met = r50 <= RATIO_AIM and r99 <= RATIO_AIM
        print(f"  {ours.label.strip()}{when}: CityOS/Datasette p50 {r50:.2f}, p99 {r99:.2f}, CPU/req "
              f"{ours.cpu_ms / theirs.cpu_ms if theirs.cpu_ms else 0:.2f} -> "
              f"{'MET' if met else 'MISSED'} (aim <= {RATIO_AIM:.2f})")


def search_breakdown(search: Series) -> None:
    """package_search latency by how many datasets matched: facets are counted over all of them."""
    groups: dict[str, list[float]] = {}
    for path, lat, count in zip(search.requests, search.latencies, search.found, strict=False):
        q = "q=" in path
        bucket = ("no q (browse)" if not q else "q, < 100 matched" if count < 100
                  else "q, 100-999 matched" if count < 1000 else "q, >= 1,000 matched")
        groups.setdefault(bucket, []).append(lat * 1000)
    print("  package_search by matches:", "; ".join(
        f"{k}: n={len(v)}, p50 {sorted(v)[len(v) // 2]:.1f} ms, max {max(v):.1f} ms"
        for k, v in sorted(groups.items())))


# -- the run --------------------------------------------------------------------------------------

def measure(label: str, url: str, work: Path, info: dict[str, Any], args: argparse.Namespace) -> None:
    sqlite = url.startswith("sqlite")
    env = {**os.environ, "CITYOS_DATABASE_URL": url, "CITYOS_DATA_DIR": str(work),
           "CITYOS_SECRET_KEY": SECRET, "CITYOS_ENVIRONMENT": "production", "CITYOS_LOG_LEVEL": "WARNING",
           "CITYOS_CONFIG": str(work / "none.toml")}
    port = free_port()
    cityos = start([sys.executable, "-c", "from cityos.cli import main; main()", "serve", "--host",
                    "127.0.0.1", "--port", str(port)], env, port, "/healthz", work / "cityos.log")
    datasette = None
    dport = 0
    cmd = datasette_cmd() if sqlite and not args.no_datasette else None
    if sqlite and not args.no_datasette and cmd is None:
        print("  (datasette is not installed: .venv/bin/pip install -e '.[bench]'; CityOS figures only)")
    if cmd:
        dport = free_port()
        datasette = start([*cmd, "serve", "-i", str(work / DB_FILE), "--host", "127.0.0.1", "--port",
                           str(dport), "--setting", "sql_time_limit_ms", "5000", "--setting",
                           "default_page_size", "100"], env, dport, "/-/versions.json",
                          work / "datasette.log")
    rng = random.Random(7)
    n = args.requests
    note = "" if sqlite else "\n  (CPU ms: the CityOS process only; PostgreSQL's backends are not counted)"
    table_name, site_codes = info["table"], info["sites"]
    try:
        series: list[Series] = [Series("package_search (q, 5 facets, fq, rows=20)", "CityOS", cityos.pid,
                                       port, search_requests(n, rng), check_search)]
        for what, column, values, total in (
                ("site_code", "site_code", site_codes, True), ("site_code", "site_code", site_codes, False),
                ("district", "district", DISTRICTS, True)):
            ours, theirs = rows_requests(n, rng, column, values, AIR_NAME, table_name, total)
            name = f"datastore_search {what}=.., 100 rows, {'with total' if total else 'no total'}"
            series.append(Series(name, "CityOS", cityos.pid, port, ours, check_rows))
            if datasette:
                series.append(Series(f"  same on Datasette ({'count' if total else '_nocount=1'})",
                                     "Datasette", datasette.pid, dport, theirs, check_datasette))
        if datasette:  # like for like: the same rows and the same count
            a = ckan_result(httpx.get(f"http://127.0.0.1:{port}{series[1].requests[0]}").content)
            b = httpx.get(f"http://127.0.0.1:{dport}{series[2].requests[0]}").json()
            same = ([r["_id"] for r in a["records"]] == [r["_id"] for r in b["rows"]]
                    and a["total"] == b["filtered_table_rows_count"] and a["records"][0] == b["rows"][0])
            print(f"  same 100 rows and count from both servers: {'yes' if same else 'NO'} "
                  f"(total {a['total']:,}, Datasette {b['filtered_table_rows_count']:,})")
        run_sequential(series, args.rounds, args.warmup)
        table(f"== {label}: sequential, one keep-alive client per server, {n} requests per line, "
              f"{args.rounds} interleaved rounds (load average {os.getloadavg()[0]:.1f}) ==", series, note)
        search_breakdown(series[0])
        verdicts(series, datasette is not None)
        if args.clients:
            conc = [Series(s.label, s.server, s.pid, s.port, s.requests, s.check) for s in series]
            run_concurrent(conc, args.clients)
            table(f"== {label}: {args.clients} concurrent clients, {n} requests per line "
                  f"(load average {os.getloadavg()[0]:.1f}) ==", conc, note)
            verdicts(conc, datasette is not None, f" with {args.clients} clients")
    finally:
        stop(cityos)
        if datasette:
            stop(datasette)
    ours = [s for s in series if s.server == "CityOS" and s.label.startswith("datastore")]
    sent = sum(len(s.requests) + min(args.warmup, len(s.requests)) for s in ours)
    sent += (sum(len(s.requests) for s in ours) if args.clients else 0) + (1 if datasette else 0)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        calls = conn.execute(text("SELECT api_calls FROM od_datasets WHERE name = :n"),
                             {"n": AIR_NAME}).scalar()
    engine.dispose()
    print(f"  usage counting: {calls:,} API calls recorded for {AIR_NAME} after {sent:,} datastore_search "
          "requests (counted in memory, flushed every 5 s and at shutdown)")


def scratch_pg(admin_url: str, keep: bool) -> tuple[str, Callable[[], None]]:
    url = make_url(admin_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    name = f"cityos_bench_od_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        if not keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop


def bench(label: str, url: str | None, work: Path, args: argparse.Namespace) -> None:
    """Build (or reuse a kept build in --keep DIR), then measure."""
    marker = work / "bench.json"
    info = json.loads(marker.read_text()) if marker.exists() else None
    if info and (info["rows"], info["datasets"], info["backend"]) == (args.rows, args.datasets, label):
        print(f"  reusing the database built in {work} ({info['url'].split('@')[-1]})")
        crypto.activate(crypto.Keyring.load(work / "keys.json"))
        measure(label, info["url"], work, info, args)
        return
    if url is not None:  # a fresh SQLite file (a kept one of other sizes is replaced)
        for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", "keys.json", "bench.json"):
            (work / name).unlink(missing_ok=True)
    drop: Callable[[], None] = lambda: None  # noqa: E731
    if url is None:
        url, drop = scratch_pg(args.pg, keep=args.keep is not None)
    try:
        info = build(url, work, args)
        info.update(url=url, backend=label)
        if args.keep:
            marker.write_text(json.dumps(info, ensure_ascii=False, indent=1))
        measure(label, url, work, info, args)
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="rows of the big dataset (default 1,000,000)")
    parser.add_argument("--datasets", type=int, default=10_000,
                        help="published datasets in all, the big one included (default 10,000)")
    parser.add_argument("--requests", type=int, default=300, help="requests per line (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per line (default 20)")
    parser.add_argument("--clients", type=int, default=8,
                        help="a second run with this many concurrent clients (default 8; 0: none)")
    parser.add_argument("--pg", metavar="URL",
                        help="run on PostgreSQL instead (a scratch database on this server; no Datasette)")
    parser.add_argument("--keep", metavar="DIR",
                        help="build in DIR and keep it; a later run with the same sizes reuses it")
    parser.add_argument("--no-datasette", action="store_true", help="CityOS figures only")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"CityOS open-data benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d}, "
          f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {args.rows:,} rows, {args.datasets:,} datasets")
    label = "PostgreSQL" if args.pg else "SQLite"
    if args.keep:
        work = Path(args.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
        bench(label, None if args.pg else f"sqlite:///{work / DB_FILE}", work, args)
    else:
        with tempfile.TemporaryDirectory(prefix="cityos-bench-od-") as tmp:
            work = Path(tmp)
            bench(label, None if args.pg else f"sqlite:///{work / DB_FILE}", work, args)
    print(f"\ntook {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
