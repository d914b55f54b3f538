"""Things with a place in the demo city (有位置的演示数据): the air quality monitoring network with
hourly readings, and the bus network (stops, routes and the stops each route calls at).

The sensing and transit engines can take these as their starting inventory later; here they
are rows of 市环保局's and 市交通局's catalog. Readings follow the city's seasons (the heating
season's smog, summer ozone), and AQI is computed from HJ 633-2012's breakpoints.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from cityos.demo import hub_data as hd
from cityos.demo.data import SEED
from cityos.demo.hub_rows import mix

CITY_TZ = ZoneInfo("Asia/Shanghai")

# -- air quality (环境空气质量) ----------------------------------------------------------------

# HJ 633-2012: IAQI breakpoints, and each pollutant's concentration limits at those breakpoints
# (hourly SO2, NO2, CO and O3; PM2.5 and PM10 against their 24-hour limits, as real-time AQI does).
IAQI = (0, 50, 100, 150, 200, 300, 400, 500)
BREAKPOINTS: dict[str, tuple[float, ...]] = {
    "so2": (0, 150, 500, 650, 800, 1600, 2100, 2620),
    "no2": (0, 100, 200, 700, 1200, 2340, 3090, 3840),
    "pm10": (0, 50, 150, 250, 350, 420, 500, 600),
    "co": (0, 5, 10, 35, 60, 90, 120, 150),
    "o3": (0, 160, 200, 300, 400, 800, 1000, 1200),
    "pm25": (0, 35, 75, 115, 150, 250, 350, 500),
}
POLLUTANT_NAMES = {"so2": "SO2", "no2": "NO2", "pm10": "PM10", "co": "CO", "o3": "O3", "pm25": "PM2.5"}
LEVELS = ((50, "优"), (100, "良"), (150, "轻度污染"), (200, "中度污染"), (300, "重度污染"),
          (10**9, "严重污染"))
# National (国控) sites of the urban area, as the city reports them; the rest are generated.
NATIONAL_SITES = (("哈达湾", "220204", 126.500, 43.872), ("东局子", "220203", 126.598, 43.874),
                  ("江北", "220202", 126.573, 43.905), ("电力学院", "220202", 126.602, 43.861),
                  ("丰满", "220211", 126.566, 43.800), ("吉化", "220203", 126.621, 43.903))


def iaqi(pollutant: str, value: float) -> int:
    """Individual AQI of one concentration: linear between the two breakpoints around it."""
    bp = BREAKPOINTS[pollutant]
    for k in range(1, len(bp)):
        if value <= bp[k]:
            lo, hi = bp[k - 1], bp[k]
            return math.ceil(IAQI[k - 1] + (IAQI[k] - IAQI[k - 1]) * (value - lo) / (hi - lo))
    return 500


@dataclass(frozen=True)
class Site:
    code: str
    name: str
    level: str
    district: str
    lon: float
    lat: float
    since: dt.date
    factor: float  # how polluted its surroundings are, relative to the city


def air_sites(n: int) -> list[Site]:
    """The monitoring network: national sites, one provincial site per district seat, then town sites."""
    rng = random.Random(f"{SEED}:air-sites")
    out = []
    for name, district, lon, lat in NATIONAL_SITES:
        out.append((name, "国控", district, lon, lat))
    for district, (_s, lon, lat, _spread) in hd.DISTRICT_GEO.items():
        out.append((f"{hd.DISTRICT_NAMES[district]}环境监测站", "省控", district, lon + 0.004, lat - 0.003))
    towns = [(t, d) for d, streets in hd.STREETS.items() for t in streets]
    for town, district in towns:
        _s, lon, lat, spread = hd.DISTRICT_GEO[district]
        level = "市控" if town.endswith("街道") else "乡镇"
        out.append((f"{town}空气站", level, district, lon + rng.gauss(0, spread), lat + rng.gauss(0, spread)))
    sites = []
    for k, (name, level, district, lon, lat) in enumerate(out[:n], start=1):
        since = dt.date(2013 if level == "国控" else 2016 if level == "省控" else 2019, 1 + k % 12, 1)
        factor = {"国控": 1.05, "省控": 1.0, "市控": 1.0, "乡镇": 0.8}[level] * rng.uniform(0.85, 1.15)
        sites.append(Site(f"2202{k:03d}A", name, level, district, round(lon, 6), round(lat, 6), since,
                          factor))
    return sites


def site_rows(sites: list[Site]) -> Iterator[dict[str, Any]]:
    for s in sites:
        district = hd.DISTRICT_NAMES[s.district]
        yield {"site_code": s.code, "name": s.name, "level": s.level, "district": district,
               "address": f"吉林省吉林市{district}{s.name}", "lon": s.lon, "lat": s.lat, "since": s.since}


def _heating(day: dt.date) -> bool:
    """Jilin's heating season (供暖期) runs from mid-October to mid-April."""
    return day.month in (11, 12, 1, 2, 3) or (day.month == 10 and day.day >= 15) or (
        day.month == 4 and day.day <= 15)


def reading(site: Site, at: dt.datetime) -> dict[str, Any]:
    """One hour at one site: smog in the heating season, ozone on summer afternoons, rush-hour NO2."""
    local = at.astimezone(CITY_TZ)
    day, hour = local.date(), local.hour
    d = day.toordinal()
    h = mix(d * 24 + hour + int(site.code[4:7]) * 1_000_003)
    noise = 0.8 + 0.4 * (h & 0xFFFF) / 0xFFFF
    # City-wide episodes over days (the same weather for every site), stronger in the heating
    # season's still air than in the rainy summer, never below a third.
    heating = _heating(day)
    swing = 0.45 * math.sin(d / 5.3 + 1) + 0.3 * math.sin(d / 11.7 + 2) + 0.2 * math.sin(d / 2.9)
    episode = max(0.33, 1 + swing * (1.0 if heating else 0.5))
    night = 1 + 0.25 * math.cos(2 * math.pi * (hour - 22) / 24)
    rush = 1 + 0.35 * (math.exp(-((hour - 8) ** 2) / 3) + math.exp(-((hour - 18) ** 2) / 3))
    summer = 0.5 + 0.5 * math.cos(2 * math.pi * (day.timetuple().tm_yday - 172) / 365)
    sun = max(0.0, math.sin(math.pi * (hour - 8) / 10)) if 8 <= hour <= 18 else 0.0
    pm25 = (55 if heating else 22) * episode * night * site.factor * noise
    spring_dust = 1.3 if day.month in (4, 5) else 1.0
    values = {
        "pm25": round(pm25),
        "pm10": round(pm25 * (1.5 + 0.5 * ((h >> 16) & 0xFF) / 0xFF) * spring_dust),
        "so2": round((26 if heating else 8) * math.sqrt(episode) * noise),
        "no2": round(26 * rush * site.factor * noise),
        "o3": round((30 + 120 * summer * sun) * (0.85 + 0.3 * ((h >> 24) & 0xFF) / 0xFF)),
        "co": round((0.9 if heating else 0.5) * math.sqrt(episode) * noise, 1),
    }
    scores = {p: iaqi(p, v) for p, v in values.items()}
    aqi = max(scores.values())
    primary = max(scores, key=lambda p: scores[p])
    return {"site_code": site.code, "observed_at": at, **{k: float(v) for k, v in values.items()},
            "aqi": aqi, "level": next(name for top, name in LEVELS if aqi <= top),
            "primary": POLLUTANT_NAMES[primary] if aqi > 50 else None}


def air_rows(sites: list[Site], hours: int, start: int, stop: int, now: dt.datetime
             ) -> Iterator[dict[str, Any]]:
    """Readings start..stop of every site, every hour for `hours` up to the last full hour before
    now (row r is hour r // sites of site r % sites)."""
    last = now.replace(minute=0, second=0, microsecond=0)
    for r in range(start, stop):
        k, s = divmod(r, len(sites))
        yield reading(sites[s], last - dt.timedelta(hours=hours - 1 - k))


# -- buses (公交) -------------------------------------------------------------------------------

# The urban area the bus network covers (lon, lat): from 哈达湾 to 龙潭山, 丰满 to 江北.
BUS_AREA = (126.47, 43.78, 126.66, 43.95)


@dataclass(frozen=True)
class Stop:
    code: str
    name: str
    district: str
    lon: float
    lat: float
    shelter: bool


@dataclass(frozen=True)
class Route:
    no: str
    stops: tuple[Stop, ...]
    km: float
    first_bus: str
    last_bus: str
    fare: float
    vehicles: int


@dataclass(frozen=True)
class BusNetwork:
    stops: tuple[Stop, ...]
    routes: tuple[Route, ...]


URBAN = ("220202", "220203", "220204", "220211")


def _nearest_district(lon: float, lat: float) -> str:
    return min(URBAN, key=lambda d: (hd.DISTRICT_GEO[d][1] - lon) ** 2 + (hd.DISTRICT_GEO[d][2] - lat) ** 2)


def bus_network(n_stops: int, n_routes: int) -> BusNetwork:
    """Stops on the crossings of a street grid (a jittered lattice), and routes that walk it:
    mostly straight on, sometimes turning, never calling at a stop twice."""
    rng = random.Random(f"{SEED}:bus")
    rows = max(2, round(math.sqrt(n_stops * 0.6)))
    cols = max(2, math.ceil(n_stops / rows))
    west, south, east, north = BUS_AREA
    words = hd.CITY_WORDS
    grid: dict[tuple[int, int], Stop] = {}
    for k in range(n_stops):
        r, c = divmod(k, cols)
        lon = west + (east - west) * (c + 0.5 + rng.uniform(-0.2, 0.2)) / cols
        lat = south + (north - south) * (r + 0.5 + rng.uniform(-0.2, 0.2)) / rows
        name = f"{words[r % len(words)]}路{words[-1 - c % len(words)]}街"
        if r >= len(words) or c >= len(words):
            name += f"{k}"
        grid[(r, c)] = Stop(f"ZD{k + 1:05d}", name, _nearest_district(lon, lat), round(lon, 6), round(lat, 6),
                            rng.random() < 0.6)
    routes = []
    moves = ((0, 1), (1, 0), (0, -1), (-1, 0))
    for no in range(1, n_routes + 1):
        at = rng.choice(list(grid))
        heading = rng.randrange(4)
        path = [at]
        for _ in range(rng.randint(14, 32)):
            options = [heading] * 6 + [(heading + 1) % 4, (heading + 3) % 4]
            rng.shuffle(options)
            for hd_ in options:
                nxt = (path[-1][0] + moves[hd_][0], path[-1][1] + moves[hd_][1])
                if nxt in grid and nxt not in path:
                    heading = hd_
                    path.append(nxt)
                    break
            else:
                break
        stops = tuple(grid[p] for p in path)
        km = round(sum(math.dist((a.lon * 80, a.lat * 111), (b.lon * 80, b.lat * 111))
                       for a, b in zip(stops, stops[1:], strict=False)), 1)
        routes.append(Route(f"{no}路", stops, km, f"05:{rng.choice((20, 30, 40))}",
                            f"{rng.choice((20, 21, 22))}:{rng.choice(('00', '30'))}",
                            2.0 if rng.random() < 0.3 else 1.0, rng.randint(8, 40)))
    return BusNetwork(tuple(grid.values()), tuple(routes))


def stop_rows(net: BusNetwork) -> Iterator[dict[str, Any]]:
    for s in net.stops:
        yield {"stop_code": s.code, "name": s.name, "district": hd.DISTRICT_NAMES[s.district],
               "lon": s.lon, "lat": s.lat, "shelter": s.shelter}


def route_rows(net: BusNetwork) -> Iterator[dict[str, Any]]:
    for r in net.routes:
        yield {"route_no": r.no, "name": f"{r.stops[0].name}—{r.stops[-1].name}",
               "first_stop": r.stops[0].name, "last_stop": r.stops[-1].name, "stops": len(r.stops),
               "length_km": r.km, "first_bus": r.first_bus, "last_bus": r.last_bus, "fare": r.fare,
               "vehicles": r.vehicles}


def route_stop_rows(net: BusNetwork) -> Iterator[dict[str, Any]]:
    for r in net.routes:
        for seq, s in enumerate(r.stops, start=1):
            yield {"route_no": r.no, "seq": seq, "stop_code": s.code, "stop_name": s.name}
