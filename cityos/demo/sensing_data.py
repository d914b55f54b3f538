"""The demo city's sensors described as data (演示物联感知): what is measured, in which units, by
what kind of device, owned by which department, where (places grown from `geography.py`), and the
alert rules; `sensing_seed.py` is the code that reads it.

Definitions name public vocabularies where one exists: the EEA's air pollutant codes, QUDT
quantity kinds and units, LOINC, W3C geo; otherwise a `urn:cityos:def:phenomenon:` name with the
Chinese standard that defines the quantity (GB 3838-2002, HJ 633-2012, GB 15322.2-2019 ...).
Names and places are approximate, for a demo.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import shapely
from shapely.geometry import LineString, Point, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import polylabel

from cityos.demo import data, geography, maps_seed
from cityos.sensing.ingest import ANY, COUNT, MEASUREMENT, TRUTH

CREATOR = "demo"
HISTORY_HOURS = 6
POSITION_RETENTION_DAYS = 30  # a bus's track is kept a month; its rollups (speed) for good
ENV, TRANSPORT, CIVIL, AGRICULTURE, TOURISM = (
    f"{data.CITY_CODE}-{s}" for s in ("hbj", "jtj", "mzj", "nw", "lfw"))
WATER = maps_seed.WATER[0]

# -- what is measured (观测属性) ---------------------------------------------------------------

EEA = "http://dd.eionet.europa.eu/vocabulary/aq/pollutant/"  # the EEA's air pollutant codes
QK = "http://qudt.org/vocab/quantitykind/"
QU = "http://qudt.org/vocab/unit/"
URN = "urn:cityos:def:phenomenon:"  # ours, for what no public vocabulary names; the standard is cited


@dataclass(frozen=True)
class Prop:
    code: str
    name: str
    definition: str
    description: str


PROPERTIES: tuple[Prop, ...] = (
    Prop("pm25", "PM2.5 细颗粒物", EEA + "6001", "细颗粒物（粒径≤2.5 µm）质量浓度，GB 3095-2012 / HJ 653"),
    Prop("pm10", "PM10 可吸入颗粒物", EEA + "5", "可吸入颗粒物（粒径≤10 µm）质量浓度，GB 3095-2012"),
    Prop("no2", "NO2 二氧化氮", EEA + "8", "二氧化氮小时浓度，GB 3095-2012 / HJ 654"),
    Prop("so2", "SO2 二氧化硫", EEA + "1", "二氧化硫小时浓度，GB 3095-2012 / HJ 654"),
    Prop("o3", "O3 臭氧", EEA + "7", "臭氧小时浓度，GB 3095-2012 / HJ 654"),
    Prop("co", "CO 一氧化碳", EEA + "10", "一氧化碳浓度（环境空气 mg/m³；室内报警器 ppm）"),
    Prop("aqi", "AQI 空气质量指数", URN + "HJ633-2012:AQI",
         "空气质量指数，HJ 633-2012《环境空气质量指数（AQI）技术规定（试行）》"),
    Prop("air_temp", "气温 air temperature", QK + "Temperature", "环境空气温度"),
    Prop("humidity", "相对湿度 relative humidity", QK + "RelativeHumidity", "环境空气相对湿度"),
    Prop("ph", "pH 值", QK + "PH", "地表水 pH，GB 3838-2002 基本项目"),
    Prop("do", "溶解氧 dissolved oxygen", URN + "GB3838-2002:DO", "地表水溶解氧，GB 3838-2002 基本项目"),
    Prop("turbidity", "浊度 turbidity", QK + "Turbidity", "水的浊度（散射法）"),
    Prop("cod", "化学需氧量 COD", URN + "GB3838-2002:COD", "化学需氧量（CODcr），GB 3838-2002 基本项目"),
    Prop("nh3n", "氨氮 NH3-N", URN + "GB3838-2002:NH3-N", "氨氮，GB 3838-2002 基本项目"),
    Prop("water_temp", "水温 water temperature", QK + "Temperature", "地表水水温"),
    Prop("pressure", "管网压力 pipe pressure", QK + "Pressure", "供水管网测压点压力（CJJ 207-2013）"),
    Prop("flow", "瞬时流量 flow rate", QK + "VolumeFlowRate", "供水管道瞬时流量"),
    Prop("traffic_volume", "车流量 traffic volume", URN + "traffic-volume", "断面每车道每分钟通过车辆数"),
    Prop("speed", "速度 speed", QK + "Speed", "地点车速或车辆行驶速度"),
    Prop("occupancy", "时间占有率 occupancy", URN + "traffic-occupancy", "检测断面被车辆占用的时间比例"),
    Prop("position", "位置 position", "http://www.w3.org/2003/01/geo/wgs84_pos#location",
         "车载卫星定位终端上报的位置（GeoJSON 点，WGS-84），JT/T 794"),
    Prop("heart_rate", "心率 heart rate", QK + "HeartRate", "佩戴者心率"),
    Prop("spo2", "血氧饱和度 SpO2", "http://loinc.org/59408-5", "脉搏血氧饱和度（LOINC 59408-5）"),
    Prop("fall", "跌倒检测 fall detected", URN + "fall-detected", "可穿戴设备检测到佩戴者跌倒"),
    Prop("smoke", "烟雾报警 smoke detected", URN + "smoke-alarm",
         "独立式感烟火灾探测报警器报警（GB 20517-2006）"),
    Prop("gas", "可燃气体浓度 combustible gas", URN + "combustible-gas",
         "家用可燃气体（甲烷）浓度，以爆炸下限百分比计（GB 15322.2-2019）"),
    Prop("soil_moisture", "土壤含水量 soil moisture", URN + "soil-moisture",
         "土壤体积含水量（墒情），GB/T 28418-2012"),
    Prop("soil_temp", "土壤温度 soil temperature", QK + "Temperature", "耕层（10 cm）土壤温度"),
    Prop("visitors", "入园人数 visitors", URN + "visitor-count", "景区闸机每分钟入园人次"),
)


@dataclass(frozen=True)
class StreamSpec:
    code: str  # the simulator's PROFILES code
    prop: str
    title: str
    unit: tuple[str | None, str | None, str | None]  # name, symbol, definition
    type: str = MEASUREMENT


NONE = (None, None, None)
UG, MG = ("微克每立方米 microgram per cubic metre", "µg/m³", QU + "MicroGM-PER-M3"), \
    ("毫克每立方米 milligram per cubic metre", "mg/m³", QU + "MilliGM-PER-M3")
MGL = ("毫克每升 milligram per litre", "mg/L", QU + "MilliGM-PER-L")
PCT = ("百分比 percent", "%", QU + "PERCENT")
DEGC = ("摄氏度 degree Celsius", "°C", QU + "DEG_C")
STREAMS: dict[str, StreamSpec] = {s.code: s for s in (
    StreamSpec("pm25", "pm25", "PM2.5", UG), StreamSpec("pm10", "pm10", "PM10", UG),
    StreamSpec("no2", "no2", "NO2", UG), StreamSpec("so2", "so2", "SO2", UG),
    StreamSpec("o3", "o3", "O3", UG),
    StreamSpec("co", "co", "CO", MG),
    StreamSpec("aqi", "aqi", "AQI", ("空气质量指数 air quality index", "AQI", QU + "UNITLESS")),
    StreamSpec("air_temp", "air_temp", "气温", DEGC), StreamSpec("humidity", "humidity", "相对湿度", PCT),
    StreamSpec("ph", "ph", "pH", ("pH", "pH", QU + "PH")), StreamSpec("do", "do", "溶解氧", MGL),
    StreamSpec("turbidity", "turbidity", "浊度",
               ("散射浊度单位 nephelometric turbidity unit", "NTU", QU + "NTU")),
    StreamSpec("cod", "cod", "化学需氧量", MGL), StreamSpec("nh3n", "nh3n", "氨氮", MGL),
    StreamSpec("water_temp", "water_temp", "水温", DEGC),
    StreamSpec("pressure", "pressure", "压力", ("兆帕 megapascal", "MPa", QU + "MegaPA")),
    StreamSpec("flow", "flow", "瞬时流量", ("立方米每小时 cubic metre per hour", "m³/h", QU + "M3-PER-HR")),
    StreamSpec("traffic_volume", "traffic_volume", "车流量",
               ("辆每分钟 vehicles per minute", "veh/min", QU + "NUM-PER-MIN"), COUNT),
    StreamSpec("speed", "speed", "平均车速", ("千米每小时 kilometre per hour", "km/h", QU + "KiloM-PER-HR")),
    StreamSpec("occupancy", "occupancy", "时间占有率", PCT),
    StreamSpec("bus_position", "position", "位置", NONE, ANY),
    StreamSpec("bus_speed", "speed", "车速", ("千米每小时 kilometre per hour", "km/h", QU + "KiloM-PER-HR")),
    StreamSpec("heart_rate", "heart_rate", "心率", ("次每分钟 beats per minute", "bpm", QU + "BEAT-PER-MIN")),
    StreamSpec("spo2", "spo2", "血氧饱和度", PCT), StreamSpec("fall", "fall", "跌倒检测", NONE, TRUTH),
    StreamSpec("smoke", "smoke", "烟雾报警", NONE, TRUTH),
    StreamSpec("co_home", "co", "一氧化碳", ("百万分之一 parts per million", "ppm", QU + "PPM")),
    StreamSpec("gas", "gas", "可燃气体", ("爆炸下限百分比 percent of the lower explosive limit", "%LEL",
                                      QU + "PERCENT")),
    StreamSpec("soil_moisture", "soil_moisture", "土壤含水量", ("体积含水量 volumetric water content", "%",
                                                          QU + "PERCENT")),
    StreamSpec("soil_temp", "soil_temp", "土壤温度", DEGC),
    StreamSpec("visitors", "visitors", "入园人次", ("人次每分钟 visitors per minute", "人次/min",
                                                QU + "NUM-PER-MIN"), COUNT),
)}

# -- where things are (点位) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    name: str
    lon: float
    lat: float
    props: dict[str, Any] = field(default_factory=dict)
    route: tuple[tuple[float, float], ...] = ()


def _rng(*key: object) -> random.Random:
    return random.Random(":".join(str(k) for k in (data.SEED, "sensing", *key)))


def _xy(p: Point) -> tuple[float, float]:
    return round(float(p.x), 6), round(float(p.y), 6)


@functools.cache
def _water() -> BaseGeometry:
    water = geography.river()[0][1]
    shapely.prepare(water)
    return water


def _inside(poly: BaseGeometry, rng: random.Random) -> tuple[float, float]:
    """A seeded point in the polygon, off the river."""
    water = _water()
    x0, y0, x1, y1 = poly.bounds
    for _ in range(1000):
        p = Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
        if poly.contains(p) and not water.contains(p):
            return _xy(p)
    return _xy(poly.representative_point())


def _streets() -> dict[str, tuple[BaseGeometry, dict[str, Any]]]:
    return {code: (g, p) for code, g, p in geography.streets()}


AIR_STATIONS = (  # 国控站 (name, the street it stands in)
    ("哈达湾", "220202003"), ("东局子", "220203001"), ("电力学院", "220204003"), ("江北", "220203003"),
    ("丰满", "220211003"), ("北华大学", "220211002"))
WATER_SECTIONS = (  # along the Songhua, upstream first (share of the centreline, from 丰满 down)
    ("丰满坝下", 0.04), ("温德河口", 0.22), ("临江门", 0.38), ("哈达湾", 0.5), ("龙潭山", 0.62),
    ("白旗", 0.9))
SCENIC_GATES = (  # (scenic area, gate, lon, lat): approximate places
    ("北山公园", "南门", 126.5265, 43.8445), ("北山公园", "东门", 126.5318, 43.8482),
    ("龙潭山遗址公园", "正门", 126.5985, 43.8812), ("松花湖风景区", "五虎岛码头", 126.7765, 43.6932),
    ("松花湖风景区", "卧龙潭", 126.7411, 43.7263), ("朱雀山国家森林公园", "正门", 126.6205, 43.7018),
    ("雾凇岛", "韩屯入口", 126.5052, 44.0862), ("阿什哈达摩崖", "入口", 126.6113, 43.7661),
    ("世纪广场", "北入口", 126.5553, 43.8373), ("吉林市陨石博物馆", "正门", 126.5568, 43.8352))
BUS_LINES = ("1路", "3路", "7路", "12路", "16路", "33路")
COUNTIES = ("220221", "220283", "220281", "220284", "220282")


def air_stations(n: int) -> list[Site]:
    streets = _streets()
    out = []
    for name, street in AIR_STATIONS[:n]:
        geom, props = streets[street]
        out.append(Site(f"{name}国控站", *_xy(polylabel(geom, 1e-5)),
                        {"station_type": "国控", "street": street, "street_name": props["name"]}))
    return out


def air_micro(n: int) -> list[Site]:
    streets, rng = list(_streets().items()), _rng("air-micro")
    out = []
    for i in range(n):
        code, (geom, props) = streets[i % len(streets)]
        out.append(Site(f"{props['name']}空气微站{i // len(streets) + 1:02d}", *_inside(geom, rng),
                        {"station_type": "微站", "street": code, "street_name": props["name"]}))
    return out


def water_stations(n: int) -> list[Site]:
    line = geography.river()[1][1]
    if line.coords[0][1] > line.coords[-1][1]:  # walk it from upstream (丰满, the south)
        line = LineString(list(line.coords)[::-1])
    return [Site(f"松花江{name}水质自动站", *_xy(line.interpolate(share, normalized=True)),
                 {"river": "松花江", "section": name, "target_class": "III"})
            for name, share in WATER_SECTIONS[:n]]


def pipe_points(n: int, scale: float) -> list[Site]:
    pipes = maps_seed.network(scale)[0]
    step = max(1, len(pipes) // max(n, 1))
    return [Site(f"管网测压点 {p.id}", *_xy(p.geom.interpolate(0.5, normalized=True)),
                 {"network": maps_seed.NETWORK, "pipe_id": p.id, "diameter_mm": p.diameter_mm})
            for p in pipes[::step][:n]]


def _roads(classes: tuple[str, ...]) -> list[tuple[str, BaseGeometry, dict[str, Any]]]:
    return [r for r in geography.roads() if r[2]["class"] in classes]


def detectors(n: int) -> list[Site]:
    roads = _roads(("主干路", "次干路"))
    step = max(1, len(roads) // max(n, 1))
    picked = (roads[::step] + roads)[:n]
    return [Site(f"{props['name']}车辆检测器{i + 1:02d}", *_xy(geom.interpolate(0.5, normalized=True)),
                 {"road": props["name"], "road_class": props["class"],
                  "lanes": 4 if props["class"] == "主干路" else 2})
            for i, (_fid, geom, props) in enumerate(picked)]


def bus_routes() -> list[tuple[str, str, tuple[tuple[float, float], ...]]]:
    """Six bus lines, each along one of the longest main roads: (line, road, route)."""
    mains = sorted(_roads(("主干路",)), key=lambda r: (-r[2]["length_m"], r[0]))[:len(BUS_LINES)]
    out = []
    for line, (_fid, geom, props) in zip(BUS_LINES, mains, strict=False):
        simple = shapely.simplify(geom, 0.0002)
        out.append((line, props["name"], tuple((round(x, 6), round(y, 6)) for x, y in simple.coords)))
    return out


def buses(n: int) -> list[Site]:
    routes, rng = bus_routes(), _rng("buses")
    out = []
    for i in range(n):
        line, road, route = routes[i % len(routes)]
        plate = f"吉B{rng.randrange(10_000, 100_000)}"
        out.append(Site(f"{line}公交 {plate}", *route[0], {"line": line, "road": road, "plate": plate},
                        route))
    return out


def _community_sites(n: int, what: str, key: str) -> list[Site]:
    comms, rng = geography.communities(), _rng(key)
    out = []
    for i in range(n):
        code, geom, props = comms[i % len(comms)]
        out.append(Site(f"{what} {props['name']}-{i // len(comms) + 1:03d}", *_inside(geom, rng),
                        {"community": code, "community_name": props["name"]}))
    return out


def wearables(n: int) -> list[Site]:
    return [dataclasses.replace(s, props={**s.props, "wearer": "独居老人（演示）"})
            for s in _community_sites(n, "老人智能手环", "wearables")]


def homes(n: int) -> list[Site]:
    return _community_sites(n, "居家烟感燃气报警器", "homes")


def farms(n: int) -> list[Site]:
    counties, rng = {c: (g, p) for c, g, p in geography.districts()}, _rng("farms")
    out = []
    for i in range(n):
        code = COUNTIES[i % len(COUNTIES)]
        geom, props = counties[code]
        out.append(Site(f"{props['name']}农田墒情站{i // len(COUNTIES) + 1:02d}", *_inside(geom, rng),
                        {"county": code, "crop": ("玉米", "水稻", "大豆")[i % 3]}))
    return out


def gates(n: int) -> list[Site]:
    return [Site(f"{area}{gate}闸机", lon, lat, {"scenic_area": area, "gate": gate})
            for area, gate, lon, lat in SCENIC_GATES[:n]]


# -- kinds of things (设备类型) ---------------------------------------------------------------------


@dataclass(frozen=True)
class KindSpec:
    key: str  # the code prefix of its things
    kind: str  # Thing.kind and the simulator's KINDS key
    department: str
    sensor: tuple[str, str]  # the sensor's name and the standard or description it follows
    streams: tuple[str, ...]
    full: int  # how many at scale 1
    sites: Callable[[int, float], list[Site]]
    description: str


KIND_SPECS: tuple[KindSpec, ...] = (
    KindSpec("air-station", "air", ENV, ("环境空气自动监测系统", "HJ 653-2021 / HJ 654-2013"),
             ("pm25", "pm10", "no2", "so2", "o3", "co", "aqi"), 6, lambda n, _s: air_stations(n),
             "环境空气质量国控监测站（六参数与 AQI）"),
    KindSpec("air-micro", "air", ENV, ("空气质量微型监测站", "HJ 1263-2022"),
             ("pm25", "pm10", "air_temp", "humidity"), 24, lambda n, _s: air_micro(n), "街道空气质量微站"),
    KindSpec("water", "water", ENV, ("地表水水质自动监测站", "HJ 915-2017"),
             ("ph", "do", "turbidity", "cod", "nh3n", "water_temp"), 6, lambda n, _s: water_stations(n),
             "松花江水质自动监测站"),
    KindSpec("pipe", "pipe", WATER, ("管网压力变送器与电磁流量计", "CJJ 207-2013"), ("pressure", "flow"), 24,
             pipe_points, "供水管网压力流量监测点"),
    KindSpec("traffic", "traffic", TRANSPORT, ("微波交通流检测器", "GB/T 20609-2006"),
             ("traffic_volume", "speed", "occupancy"), 40, lambda n, _s: detectors(n), "道路断面车辆检测器"),
    KindSpec("bus", "bus", TRANSPORT, ("车载卫星定位终端", "JT/T 794-2019"), ("bus_position", "bus_speed"),
             30, lambda n, _s: buses(n), "公交车辆实时位置"),
    KindSpec("wearable", "wearable", CIVIL, ("老人智能手环", "心率、血氧、跌倒检测"),
             ("heart_rate", "spo2", "fall"), 80, lambda n, _s: wearables(n), "独居老人智能手环（居家养老）"),
    KindSpec("home", "home", CIVIL, ("家用烟感与可燃气体探测器", "GB 20517-2006 / GB 15322.2-2019"),
             ("smoke", "co_home", "gas"), 80, lambda n, _s: homes(n), "居家烟雾、一氧化碳与燃气报警器"),
    KindSpec("soil", "soil", AGRICULTURE, ("土壤墒情监测站", "GB/T 28418-2012"),
             ("soil_moisture", "soil_temp", "air_temp", "humidity"), 20, lambda n, _s: farms(n),
             "农田土壤墒情站"),
    KindSpec("gate", "gate", TOURISM, ("景区闸机客流计数器", "入园人次"), ("visitors",), 10,
             lambda n, _s: gates(n), "景区入口闸机客流"),
)


def how_many(spec: KindSpec, scale: float) -> int:
    """Things of a kind at this scale: the full count times √scale, at least one."""
    return max(1, round(spec.full * math.sqrt(min(max(scale, 0.0), 10.0))))


def _corridor(route: tuple[tuple[float, float], ...], metres: float) -> dict[str, Any]:
    """The area within `metres` of a route, as a GeoJSON polygon (buffered in local metres)."""
    lon0, lat0 = route[0]
    kx, ky = 111_320 * math.cos(math.radians(lat0)), 110_540.0
    line = LineString([((x - lon0) * kx, (y - lat0) * ky) for x, y in route])
    area = line.buffer(metres).simplify(20)
    back = shapely.transform(area, lambda xy: xy / [kx, ky] + [lon0, lat0])
    geo = mapping(shapely.set_precision(back, 1e-6))
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring] for ring in geo["coordinates"]]}


@dataclass(frozen=True)
class RuleSpec:
    department: str
    name: str
    kind: str
    target: tuple[str, str]  # target type and what names it: a property code, a group code, a stream
    params: Callable[[], dict[str, Any]]
    severity: str = "warning"


BUS_GROUP = ("bus-line-1", "1路公交车")
RULES: tuple[RuleSpec, ...] = (
    RuleSpec(ENV, "PM2.5 超过 115 µg/m³（中度污染）", "threshold", ("property", "pm25"),
             lambda: {"op": ">", "value": 115, "clear": 75, "for_seconds": 300}),
    RuleSpec(ENV, "COD 超出 V 类水质限值或量程", "range", ("property", "cod"), lambda: {"min": 2, "max": 40}),
    RuleSpec(ENV, "水质 pH 读数僵直（仪器故障）", "flatline", ("datastream", "water-001:ph"),
             lambda: {"count": 10, "tolerance": 0.001}, "info"),
    RuleSpec(WATER, "管网压力数据中断", "nodata", ("property", "pressure"),
             lambda: {"intervals": 4, "interval_seconds": 30}),
    RuleSpec(WATER, "管网压力骤降（疑似爆管）", "threshold", ("property", "pressure"),
             lambda: {"op": "<", "value": 0.2, "clear": 0.28, "for_seconds": 60}, "critical"),
    RuleSpec(TRANSPORT, "1路公交偏离线路走廊", "geofence", ("group", BUS_GROUP[0]),
             lambda: {"polygon": _corridor(bus_routes()[0][2], 300), "on": "leave"}),
)
