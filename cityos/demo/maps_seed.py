"""Build the demo city's one map (构建演示一张图): the reference and base layers grown by
`geography.py`, the road works of the season, and a water network in 昌邑区, after the open data.

Everything goes through `maps.service` and `maps.pipes_service` as the system, so each layer is a
catalog resource of its department, checked and audited like real data:

- 市民政局 (civil affairs, 行政区划) owns the districts, streets and communities; 市规划局
  (planning, 基础地理信息) the roads and the river; 市行政执法局 (数字城管) the unit grid cells;
  市交通局 the road works. All of them are public (无条件开放): borders, roads, river and grid
  codes are what residents' reports are located by;
- districts, streets, communities and grid cells are the reference layers of `locate`;
- the water network (pipes, valves, customers, a plant) is `pipes.generate_network` around the
  middle of 兴华街道, owned by 市供水公司 — a department the plan does not name, which this step
  adds (with a staff member and an admin) so that the network has its operator. Not public.

Idempotent: a layer with features is left as it is, an empty one is filled, a reference already
pointing at its layer is not set again. Each layer commits on its own.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from shapely.geometry.base import BaseGeometry
from shapely.ops import polylabel, substring
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import access
from cityos.core import service as core
from cityos.core.access import SYSTEM
from cityos.core.errors import NotFound
from cityos.core.identifiers import credit_code_with_check
from cityos.core.models import Department, User
from cityos.demo import data, geography, hub_seed
from cityos.hub.service import city_today
from cityos.maps import pipes, pipes_service, service

Feature = geography.Feature
Attr = tuple[str, str, str]  # name, title, type

CIVIL, PLANNING, ENFORCEMENT, TRANSPORT = (f"{data.CITY_CODE}-{s}" for s in ("mzj", "ghj", "xzzfj", "jtj"))
WATER = (f"{data.CITY_CODE}-gsgs", "市供水公司", "Water Supply Company", "water")
WATER_CREDIT = credit_code_with_check(f"91{data.CITY_CODE}{data.org_code(71_000_001)}")
NETWORK = "water-changyi"
NETWORK_STREET = "220202001"  # 兴华街道: the network lies around its middle
GRID_CELL_M = 200.0
ROAD_WORKS = 12




def network_size(scale: float) -> tuple[float, float]:
    """The network's side and street spacing in metres: ~540 pipes; 60 in a tiny demo (tests)."""
    return (2400.0, 150.0) if scale >= 0.01 else (1000.0, 200.0)

@dataclass(frozen=True)
class LayerSpec:
    """One layer of the demo map: who owns it, what it holds and how it is grown."""

    code: str
    title: str
    title_en: str
    department: str
    geometry_type: str
    build: Callable[[], list[Feature]]
    attributes: tuple[Attr, ...]
    keywords: tuple[str, ...]
    reference: str | None = None  # the locate role it answers, by its `code` attribute
    time: tuple[str, str] | None = None  # time_field, time_end_field
    public: bool = True


_NAMES: tuple[Attr, ...] = (("code", "代码", "string"), ("name", "名称", "string"),
                            ("name_en", "英文名称", "string"))


def road_works() -> list[Feature]:
    """Road works this season (道路施工占道): a stretch of every tenth road, a few weeks each,
    dated around today so that the time slider has something to show."""
    today = city_today()
    out: list[Feature] = []
    kinds = ("给水管线维修", "燃气管线改造", "通信管道铺设", "路面大修")
    units = ("市供水公司", "市燃气公司", "吉林联通", "市政工程处")
    for n, (_fid, geom, props) in enumerate(geography.roads()[::10][:ROAD_WORKS]):
        start = today + dt.timedelta(days=-60 + 11 * n)
        end = start + dt.timedelta(days=14 + 3 * n)
        out.append((f"works-{n + 1:03d}", substring(geom, 0.3, 0.6, normalized=True), {
            "name": f"{props['name']}{kinds[n % 4]}", "road": props["name"], "kind": kinds[n % 4],
            "unit": units[n % 4], "start_date": start.isoformat(), "end_date": end.isoformat()}))
    return out


LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec("districts", "区县行政区划", "Districts and counties", CIVIL, "polygon", geography.districts,
              (*_NAMES, ("kind", "类型", "string"), ("kind_zh", "类型（中文）", "string"),
               ("area_km2", "面积（平方公里）", "number")), ("行政区划", "区县", "底图"), "district"),
    LayerSpec("streets", "街道乡镇", "Streets and towns", CIVIL, "polygon", geography.streets,
              (*_NAMES, ("district", "所属区县", "string"), ("kind", "类型", "string"),
               ("kind_zh", "类型（中文）", "string"), ("area_km2", "面积（平方公里）", "number")),
              ("行政区划", "街道"), "street"),
    LayerSpec("communities", "社区", "Communities", CIVIL, "polygon", geography.communities,
              (*_NAMES, ("street", "所属街道", "string"), ("district", "所属区县", "string"),
               ("area_km2", "面积（平方公里）", "number")), ("行政区划", "社区"), "community"),
    LayerSpec("roads", "城市道路", "Roads", PLANNING, "line", geography.roads,
              (("name", "道路名称", "string"), ("class", "道路等级", "string"),
               ("class_en", "等级（英文）", "string"), ("width_m", "红线宽度（米）", "number"),
               ("length_m", "长度（米）", "number"), ("crosses_river", "跨江", "boolean")),
              ("道路", "交通", "底图")),
    LayerSpec("river", "松花江", "Songhua River", PLANNING, "any", geography.river,
              (("name", "名称", "string"), ("name_en", "英文名称", "string"), ("kind", "类型", "string"),
               ("area_km2", "水面面积（平方公里）", "number"), ("length_km", "长度（公里）", "number")),
              ("水系", "河流", "底图")),
    LayerSpec("grid-cells", "单元网格", "Unit grid cells", ENFORCEMENT, "polygon",
              lambda: geography.grid_cells(GRID_CELL_M),
              (("code", "网格编码（GB/T 30428）", "string"), ("community", "所属社区", "string"),
               ("community_name", "社区名称", "string"), ("street", "所属街道", "string"),
               ("district", "所属区县", "string"), ("seq", "顺序码", "integer"),
               ("area_m2", "面积（平方米）", "number")), ("数字城管", "单元网格"), "grid"),
    LayerSpec("road-works", "道路施工占道", "Road works", TRANSPORT, "line", road_works,
              (("name", "名称", "string"), ("road", "道路", "string"), ("kind", "施工类型", "string"),
               ("unit", "施工单位", "string"), ("start_date", "开始日期", "date"),
               ("end_date", "结束日期", "date")), ("道路", "施工", "交通"), time=("start_date", "end_date")),
)


@dataclass
class MapsReport:
    """What the map step did, and its time."""

    layers_created: int = 0
    layers_skipped: int = 0
    features: list[tuple[str, int, float]] = field(default_factory=list)  # layer, features, seconds
    references_set: int = 0
    departments_created: int = 0
    users_created: int = 0
    network: dict[str, int] = field(default_factory=dict)  # part -> features written
    issues: int | None = None  # the network's topology issues, when it was written
    seconds: float = 0.0

    @property
    def created(self) -> int:
        return (self.layers_created + len(self.features) + self.references_set + self.departments_created
                + self.users_created + sum(self.network.values()))


def _layer_exists(session: Session, code: str) -> Any:
    try:
        return service.layer_by_code(session, code)
    except NotFound:
        return None


def _layer(session: Session, spec: LayerSpec, report: MapsReport) -> None:
    layer = _layer_exists(session, spec.code)
    if layer is None:
        layer = service.layer_create(session, SYSTEM, {
            "code": spec.code, "title": spec.title, "title_en": spec.title_en, "department": spec.department,
            "geometry_type": spec.geometry_type, "keywords": list(spec.keywords),
            "attributes": [{"name": n, "title": t, "type": k} for n, t, k in spec.attributes],
            "time_field": spec.time[0] if spec.time else None,
            "time_end_field": spec.time[1] if spec.time else None,
            "open_type": "open" if spec.public else "closed", "public": spec.public,
            "update_cycle": "yearly", "description": f"{spec.title}（演示数据，按示意生成，非测绘成果）",
        })
        report.layers_created += 1
    if layer.feature_count:
        report.layers_skipped += 1
    else:
        started = time.monotonic()
        names = {n for n, _t, _k in spec.attributes}
        feats: list[tuple[str, BaseGeometry, dict[str, Any]]] = [
            (fid, geom, {k: v for k, v in props.items() if k in names}) for fid, geom, props in spec.build()]
        written = service.features_write(session, SYSTEM, spec.code, feats).written
        report.features.append((spec.code, written, time.monotonic() - started))
    if spec.reference and service.reference_layers(session).get(spec.reference) != (spec.code, "code"):
        service.reference_set(session, SYSTEM, spec.reference, spec.code, "code")
        report.references_set += 1
    session.commit()


def _water_company(session: Session, password: str, report: MapsReport) -> None:
    """市供水公司 and its two people (water_admin, water_staff), unless they exist."""
    code, name, name_en, slug = WATER
    if session.scalar(select(Department.id).where(Department.code == code)) is None:
        core.department_create(session, SYSTEM, code=code, name=name, name_en=name_en, kind="bureau",
                               parent_code=data.CITY_CODE, credit_code=WATER_CREDIT)
        report.departments_created += 1
    have = set(session.scalars(select(User.username)))
    for role, suffix in data.ROLE_SUFFIX.items():
        username = f"{slug}_{suffix}"
        if username not in have:
            core.user_create(session, SYSTEM, username=username, password=password, department_code=code,
                             role=role, display_name=f"{name}{access.ROLES[role][0]}")
            report.users_created += 1
    session.commit()


def network_centre() -> tuple[float, float]:
    """The middle of 兴华街道 (its pole of inaccessibility), where the demo network lies."""
    street = next(g for code, g, _p in geography.streets() if code == NETWORK_STREET)
    centre = polylabel(street, 1e-5)
    return float(centre.x), float(centre.y)


def network(scale: float) -> tuple[list[pipes.Pipe], list[pipes.Valve], list[pipes.Customer],
                                    list[pipes.Source]]:
    """The demo water network at this scale, the same on every build."""
    size, spacing = network_size(scale)
    return pipes.generate_network(*network_centre(), size_m=size, spacing_m=spacing, seed=data.SEED)


def _network(session: Session, scale: float, report: MapsReport) -> None:
    if _layer_exists(session, pipes_service.layer_code(NETWORK, "pipes")) is None:
        created = pipes_service.network_create(
            session, SYSTEM, NETWORK, "昌邑区供水管网", title_en="Changyi water network", department=WATER[0],
            keywords=["供水", "地下管线", "管网"], update_cycle="monthly",
            description="昌邑区兴华街道一带的供水管线、阀门、用户接水点和水厂（演示数据，按示意生成）")
        report.layers_created += len(created.layers)
    spec = pipes_service.network_spec(session, NETWORK)
    if service.layer_by_code(session, spec.layers["pipes"]).feature_count:
        report.layers_skipped += len(spec.layers)
        session.commit()
        return
    started = time.monotonic()
    ps, vs, cs, ss = network(scale)
    report.network = pipes_service.network_write(session, SYSTEM, NETWORK, {
        "pipes": ps, "valves": vs, "customers": cs, "sources": ss})
    report.issues = len(pipes.Network.build(ps, vs, cs, ss).check())
    report.features.append((NETWORK, sum(report.network.values()), time.monotonic() - started))
    session.commit()


def build_maps(session: Session, scale: float, password: str, console: Console | None = None) -> MapsReport:
    """The one map of the demo city: base and reference layers, road works, the water network."""
    started = time.monotonic()
    report = MapsReport()
    bars = hub_seed.Bars(console)
    with bars.progress or nullcontext(), bars.task("一张图 Map", len(LAYERS) + 1) as advance:
        for spec in LAYERS:
            _layer(session, spec, report)
            advance(1)
        _water_company(session, password, report)
        _network(session, scale, report)
        advance(1)
    report.seconds = time.monotonic() - started
    return report


def summary_line(report: MapsReport) -> str:
    written = sum(n for _c, n, _s in report.features)
    parts = ", ".join(f"{part} {n:,}" for part, n in report.network.items())
    net = f"; water network / 供水管网: {parts}" if parts else ""
    issues = (f", [yellow]{report.issues} topology issues[/yellow]" if report.issues
              else "" if report.issues is None else ", no topology issues")
    return (f"one map / 一张图: {report.layers_created} layers created, {written:,} features written, "
            f"{report.references_set} reference layers set{net}{issues} "
            f"({report.layers_skipped} layers already there; {report.seconds:.1f} s)")


def try_table(password: str, host_url: str = "") -> Table:
    """Who to sign in as to see the map at work (试一试)."""
    table = Table("username / 用户名", "what to try / 试一试", title="Try the one map / 体验一张图",
                  caption=f"password / 密码: {password}")
    table.add_row("—", f"{host_url}/map: the public map (districts, roads, river, grid cells); click for "
                  "which district, community and grid a place is in")
    table.add_row(f"{WATER[3]}_staff", f"{host_url}/console/maps: 市供水公司's water network in 昌邑区; "
                  "爆管分析 burst analysis (click a pipe), 开挖前查询 before you dig")
    table.add_row("—", "POST /api/maps/networks/water-changyi/burst {\"pipe_id\": \"W000100\"}; "
                  "/ogc/collections for QGIS")
    return table

