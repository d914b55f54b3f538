"""Virtual devices (虚拟设备): how the demo city's sensors and buses behave, as data.

`PROFILES` says how each measured quantity moves (a daily cycle around a base, rush hours,
opening hours, smooth noise, bounds), `KINDS` how often a kind of device reports and which rare
episodes it goes through (a pollution episode, a pipe burst, a traffic jam, a fall, a fire, a
stuck sensor, a bus off its route). One `VirtualDevice` per device turns a timestamp into
readings; with the same seed and the same timestamps it gives the same values, so that the demo's
history and a test can be reproduced. The simulator (`simulator.py`) sends what they read.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cityos.core.workdays import CITY_TZ

SEED = 2202
Value = float | int | bool | dict[str, Any]  # a measurement or count, a truth, a GeoJSON point


# -- devices -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """A datastream of a device and the `PROFILES` code saying what it measures."""

    id: int
    code: str


@dataclass(frozen=True)
class Device:
    """A device as the simulator knows it: credentials, kind, streams, place (and a bus's route)."""

    key: str
    secret: str
    thing_id: int
    name: str
    kind: str
    streams: tuple[Stream, ...]
    lon: float | None = None
    lat: float | None = None
    route: tuple[tuple[float, float], ...] = ()
    interval: float | None = None  # seconds between readings; None: the kind's

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "secret": self.secret, "thing_id": self.thing_id, "name": self.name,
                "kind": self.kind, "interval": self.interval, "lon": self.lon, "lat": self.lat,
                "route": [list(p) for p in self.route],
                "streams": [{"id": s.id, "code": s.code} for s in self.streams]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Device:
        return cls(d["key"], d["secret"], int(d["thing_id"]), d.get("name", ""), d["kind"],
                   tuple(Stream(int(s["id"]), s["code"]) for s in d["streams"]), d.get("lon"), d.get("lat"),
                   tuple((float(a), float(b)) for a, b in d.get("route") or ()), d.get("interval"))


# -- how things behave -----------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How one measured quantity moves (see `_level` for the shapes)."""

    base: float
    amp: float = 0.0  # daily swing around base (negative: lowest at `peak`)
    peak: float = 14.0  # local hour of the daily maximum (cycle)
    noise: float = 0.0  # sd of the smooth (AR(1)) noise
    lo: float = 0.0
    hi: float = math.inf
    digits: int = 1
    shape: str = "cycle"  # cycle|rush|open_hours|truth|aqi|position|bus_speed
    integer: bool = False  # a count (OM_CountObservation)
    spread: float = 0.1  # how much devices differ from one another (share of base)


# Breakpoints of HJ 633-2012 (环境空气质量指数 AQI 技术规定): IAQI levels and the concentrations
# (µg/m³; CO mg/m³) where each pollutant reaches them. PM uses its 24-hour scale, the gases their
# 1-hour scale, as real-time AQI publication does.
IAQI = (0, 50, 100, 150, 200, 300, 400, 500)
AQI_BREAKPOINTS: dict[str, tuple[float, ...]] = {
    "so2": (0, 150, 500, 650, 800, 1600, 2100, 2620),
    "no2": (0, 100, 200, 700, 1200, 2340, 3090, 3840),
    "pm10": (0, 50, 150, 250, 350, 420, 500, 600),
    "co": (0, 5, 10, 35, 60, 90, 120, 150),
    "o3": (0, 160, 200, 300, 400, 800, 1000, 1200),
    "pm25": (0, 35, 75, 115, 150, 250, 350, 500),
}

PROFILES: dict[str, Profile] = {
    # air (环境空气, 60 s): heating-season Jilin, worst in the evening, O3 in the afternoon
    "pm25": Profile(38, 12, 21, 4, 1, 600, 0),
    "pm10": Profile(62, 16, 21, 6, 2, 1000, 0),
    "no2": Profile(32, 12, 8.5, 3, 1, 500, 0),
    "so2": Profile(14, 4, 10, 1.5, 1, 300, 0),
    "o3": Profile(62, 38, 15, 5, 2, 400, 0),
    "co": Profile(0.8, 0.25, 20, 0.06, 0.1, 20, 2),
    "aqi": Profile(0, digits=0, shape="aqi", integer=True),
    "air_temp": Profile(-6, 5, 14.5, 0.3, -40, 45, 1),
    "humidity": Profile(58, -14, 14.5, 1.5, 5, 100, 0),
    # surface water (地表水, 120 s): the Songhua, class II-III of GB 3838-2002
    "ph": Profile(7.6, 0.15, 15, 0.03, 6, 9, 2),
    "do": Profile(8.6, 0.7, 15, 0.1, 2, 14, 2),
    "turbidity": Profile(12, 2, 12, 1.2, 0.5, 400, 1),
    "cod": Profile(14, 1.5, 11, 0.6, 2, 120, 1),
    "nh3n": Profile(0.42, 0.08, 9, 0.03, 0.02, 8, 3),
    "water_temp": Profile(4.5, 0.8, 16, 0.05, 0, 30, 1),
    # water pipes (供水管网, 30 s): pressure sags when demand peaks in the morning and evening
    "pressure": Profile(0.38, -0.05, 7.5, 0.004, 0.02, 1.0, 3, spread=0.12),
    "flow": Profile(420, 170, 7.5, 12, 0, 3000, 1, spread=0.4),
    # roads (交通检测器, 60 s): per lane-minute volume, spot speed, time occupancy
    "traffic_volume": Profile(6, 22, 0, 2.0, 0, 60, 0, shape="rush", integer=True),
    "speed": Profile(52, -24, 0, 2.5, 3, 90, 1, shape="rush"),
    "occupancy": Profile(3, 26, 0, 1.5, 0, 100, 1, shape="rush"),
    # buses (公交车, 10 s)
    "bus_position": Profile(0, shape="position", spread=0),
    "bus_speed": Profile(24, 0, 0, 3, 0, 60, 1, shape="bus_speed"),
    # wearables of the elderly (老人智能手环, 60 s): resting heart rate, lower at night
    "heart_rate": Profile(74, 7, 16, 2.5, 35, 200, 0, integer=True),
    "spo2": Profile(96.5, 0.5, 15, 0.4, 80, 100, 0, integer=True, spread=0.01),
    "fall": Profile(0, shape="truth"),
    # homes (家庭烟感燃气, 120 s)
    "smoke": Profile(0, shape="truth"),
    "co_home": Profile(2, 2, 19, 0.5, 0, 1000, 0, integer=True, spread=0.5),
    "gas": Profile(0.5, 0.3, 18.5, 0.2, 0, 100, 1, spread=0.5),
    # farms (农田墒情, 300 s)
    "soil_moisture": Profile(24, -1.5, 15, 0.2, 3, 60, 1, spread=0.2),
    "soil_temp": Profile(3, 3, 16, 0.1, -20, 40, 1),
    # scenic areas (景区闸机, 60 s): entries per minute while open
    "visitors": Profile(18, 0, 13.5, 2, 0, 500, 0, shape="open_hours", integer=True, spread=0.5),
}


@dataclass(frozen=True)
class Event:
    """A rare episode (污染过程, 爆管, 拥堵, 跌倒, 火情...): it starts with probability `chance` at a
    reading and lasts `length` readings; meanwhile values are multiplied by `scale` and shifted by
    `add` (rising and falling back if `ramp`), `truth` codes read true, `stuck` codes freeze (a
    failed sensor), and a bus leaves its route by `detour_m` metres."""

    name: str
    chance: float
    length: tuple[int, int]
    scale: Mapping[str, float] = field(default_factory=dict)
    add: Mapping[str, float] = field(default_factory=dict)
    truth: frozenset[str] = frozenset()
    stuck: frozenset[str] = frozenset()
    detour_m: float = 0.0
    ramp: bool = True


@dataclass(frozen=True)
class Kind:
    """A kind of device: how often it reports (seconds) and what may happen to it."""

    interval: float
    events: tuple[Event, ...] = ()


KINDS: dict[str, Kind] = {
    "air": Kind(60, (Event("haze", 0.004, (20, 45),
                           scale={"pm25": 4.0, "pm10": 3.0, "co": 1.8, "no2": 1.4}),)),
    "water": Kind(120, (
        Event("discharge", 0.003, (5, 15), scale={"do": 0.6}, add={"cod": 30, "nh3n": 1.6, "turbidity": 30}),
        Event("stuck", 0.002, (12, 25), stuck=frozenset({"ph", "do"}), ramp=False))),
    "pipe": Kind(30, (Event("burst", 0.0008, (8, 20), scale={"pressure": 0.35, "flow": 2.2}, ramp=False),)),
    "traffic": Kind(60, (Event("jam", 0.003, (5, 15), scale={"speed": 0.3, "occupancy": 2.5,
                                                             "traffic_volume": 0.6}),)),
    "bus": Kind(10, (Event("detour", 0.001, (8, 18), detour_m=700, ramp=False),)),
    "wearable": Kind(60, (Event("fall", 0.0008, (1, 2), truth=frozenset({"fall"}), scale={"heart_rate": 1.35},
                                ramp=False),)),
    "home": Kind(120, (Event("fire", 0.0002, (3, 6), truth=frozenset({"smoke"}), add={"co_home": 150}),
                       Event("leak", 0.0004, (4, 10), add={"gas": 28}))),
    "soil": Kind(300),
    "gate": Kind(60),
}
FALLBACK = Profile(50, 10, 14, 2, -math.inf)  # a code the simulator does not know
FALLBACK_KIND = Kind(60)


def local_hour(t_ms: int) -> tuple[float, bool]:
    """The city's clock hour (0-24, fractional) at t, and whether that day is a weekend."""
    local = dt.datetime.fromtimestamp(t_ms / 1000, CITY_TZ)
    return local.hour + local.minute / 60 + local.second / 3600, local.weekday() >= 5


def _bump(h: float, centre: float, width: float) -> float:
    return math.exp(-(((h - centre) / width) ** 2))


def _level(p: Profile, h: float, weekend: bool) -> float:
    """The noiseless level at local hour h: a daily cycle, rush hours, or opening hours."""
    if p.shape == "rush":  # morning and evening peaks on workdays, a flat midday bump at weekends
        busy = (0.45 * _bump(h, 11, 4) + 0.45 * _bump(h, 16, 3)) if weekend else (
            _bump(h, 7.75, 1.1) + 0.9 * _bump(h, 17.6, 1.3) + 0.35 * _bump(h, 12.5, 3))
        return p.base + p.amp * busy
    if p.shape == "open_hours":  # 07:00-18:00, busiest early afternoon, twice as busy at weekends
        if not 7 <= h < 18:
            return 0.0
        return p.base * _bump(h, p.peak, 3.2) * (2.0 if weekend else 1.0)
    return p.base + p.amp * math.cos(2 * math.pi * (h - p.peak) / 24)


def aqi(values: Mapping[str, float]) -> tuple[int, str | None]:
    """AQI per HJ 633-2012: the highest IAQI of the pollutants given, and the primary pollutant
    (首要污染物) when AQI is above 50."""
    best, primary = 0.0, None
    for code, c in values.items():
        bp = AQI_BREAKPOINTS.get(code)
        if bp is None or c is None:
            continue
        c = min(c, bp[-1])
        i = next((i for i in range(1, len(bp)) if c <= bp[i]), len(bp) - 1)
        iaqi = (IAQI[i] - IAQI[i - 1]) / (bp[i] - bp[i - 1]) * (c - bp[i - 1]) + IAQI[i - 1]
        if iaqi > best:
            best, primary = iaqi, code
    value = math.ceil(best)
    return value, primary if value > 50 else None


# -- one virtual device ----------------------------------------------------------------------


class Route:
    """A bus route (公交线路) as a polyline, walked back and forth by distance in metres."""

    def __init__(self, points: tuple[tuple[float, float], ...]) -> None:
        self.lon0, self.lat0 = points[0]
        self.kx = 111_320 * math.cos(math.radians(self.lat0))
        self.xy = [((lon - self.lon0) * self.kx, (lat - self.lat0) * 110_540) for lon, lat in points]
        self.cum = [0.0]
        for (x0, y0), (x1, y1) in zip(self.xy, self.xy[1:], strict=False):
            self.cum.append(self.cum[-1] + math.hypot(x1 - x0, y1 - y0))
        self.length = self.cum[-1]

    def at(self, s: float, offset_m: float = 0.0) -> tuple[float, float]:
        """The lon/lat s metres along the route, `offset_m` to its left."""
        s = min(max(s, 0.0), self.length)
        i = max(1, next((i for i, c in enumerate(self.cum) if c >= s), len(self.cum) - 1))
        (x0, y0), (x1, y1) = self.xy[i - 1], self.xy[i]
        seg = (self.cum[i] - self.cum[i - 1]) or 1.0
        f = (s - self.cum[i - 1]) / seg
        x, y = x0 + f * (x1 - x0), y0 + f * (y1 - y0)
        x, y = x - offset_m * (y1 - y0) / seg, y + offset_m * (x1 - x0) / seg
        return round(self.lon0 + x / self.kx, 6), round(self.lat0 + y / 110_540, 6)


class VirtualDevice:
    """One device's state: its random generator, per-quantity offsets and noise, the episode under
    way, and a bus's place on its route. `read(t)` gives {datastream id: value} at time t."""

    def __init__(self, device: Device, seed: int = SEED, copy: int = 0) -> None:
        self.device = device
        self.kind = KINDS.get(device.kind, FALLBACK_KIND)
        self.rng = random.Random(f"{seed}:{device.key}:{device.thing_id}:{copy}")
        self.factor = {s.code: 1 + self.rng.uniform(-1, 1) * PROFILES.get(s.code, FALLBACK).spread
                       for s in device.streams}
        self.noise = dict.fromkeys(self.factor, 0.0)
        self.last: dict[str, Value] = {}
        self.event: Event | None = None
        self.event_left = self.event_len = 0
        self.route = Route(device.route) if len(device.route) >= 2 else None
        self.s = self.rng.uniform(0, self.route.length) if self.route else 0.0
        self.heading = self.rng.choice((1, -1))
        self.last_t: int | None = None

    @property
    def interval(self) -> float:
        return float(self.device.interval or self.kind.interval)

    def _episode(self) -> float:
        """Advance the episode; its weight now (0 when none is under way)."""
        if self.event is None:
            for ev in self.kind.events:
                if self.rng.random() < ev.chance:
                    self.event, self.event_len = ev, self.rng.randint(*ev.length)
                    self.event_left = self.event_len
                    break
        if self.event is None:
            return 0.0
        done = self.event_len - self.event_left
        weight = math.sin(math.pi * (done + 1) / (self.event_len + 1)) if self.event.ramp else 1.0
        self.event_left -= 1
        return weight

    def read(self, t_ms: int) -> dict[int, Value]:
        """The device's readings at t (epoch ms), one per stream."""
        h, weekend = local_hour(t_ms)
        weight = self._episode()
        ev = self.event
        values: dict[str, Value] = {}
        for s in self.device.streams:
            p = PROFILES.get(s.code, FALLBACK)
            if p.shape in ("aqi", "position", "bus_speed"):
                continue
            if p.shape == "truth":
                values[s.code] = bool(ev is not None and s.code in ev.truth)
                continue
            if ev is not None and s.code in ev.stuck and s.code in self.last:
                values[s.code] = self.last[s.code]
                continue
            n = self.noise[s.code] = 0.7 * self.noise[s.code] + self.rng.gauss(0, p.noise)
            level = _level(p, h, weekend)
            v = level * self.factor[s.code] + (n if level or p.shape != "open_hours" else 0.0)
            if ev is not None:
                v = v * (1 + (ev.scale.get(s.code, 1.0) - 1) * weight) + ev.add.get(s.code, 0.0) * weight
            values[s.code] = _shape(p, v)
        self._bus(t_ms, h, weekend, values, ev, weight)
        if any(s.code == "aqi" for s in self.device.streams):
            values["aqi"] = aqi({c: float(v) for c, v in values.items() if c in AQI_BREAKPOINTS})[0]
        if ev is not None and self.event_left <= 0:
            self.event = None
        self.last.update(values)
        self.last_t = t_ms
        return {s.id: values[s.code] for s in self.device.streams if s.code in values}

    def _bus(self, t_ms: int, h: float, weekend: bool, values: dict[str, Value], ev: Event | None,
             weight: float) -> None:
        """Drive along the route since the last reading: slower in rush hour, now and then at a stop."""
        codes = {s.code for s in self.device.streams}
        if not codes & {"bus_position", "bus_speed"}:
            return
        p = PROFILES["bus_speed"]
        busy = 0.0 if weekend else _bump(h, 7.75, 1.1) + _bump(h, 17.6, 1.3)
        speed = 0.0 if self.rng.random() < 0.2 else max(0.0, p.base * self.factor.get("bus_speed", 1.0)
                                                        * (1 - 0.4 * busy) + self.rng.gauss(0, p.noise))
        if self.route is not None:
            elapsed = 0.0 if self.last_t is None else min(max((t_ms - self.last_t) / 1000, 0.0), 120.0)
            self.s += self.heading * speed / 3.6 * elapsed
            if not 0 <= self.s <= self.route.length:  # the terminus: turn back
                self.heading = -self.heading
                self.s = min(max(self.s, 0.0), self.route.length)
            offset = ev.detour_m * weight if ev is not None else 0.0
            lon, lat = self.route.at(self.s, offset)
            values["bus_position"] = {"type": "Point", "coordinates": [lon, lat]}
        elif self.device.lon is not None and self.device.lat is not None:
            values["bus_position"] = {"type": "Point", "coordinates": [self.device.lon, self.device.lat]}
        values["bus_speed"] = round(speed, p.digits)


def _shape(p: Profile, v: float) -> Value:
    v = float(min(max(v, p.lo), p.hi))
    if p.integer:
        return int(round(v))
    return round(v, p.digits)


def iso(t_ms: int) -> str:
    return dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
