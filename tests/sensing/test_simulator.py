"""The simulator: readings that behave (daily cycles, episodes that trip the demo's rules, AQI per
HJ 633-2012, buses on their routes), reproducible with a seed, in the shapes the ingest API and the
MQTT bridge take; sent over HTTP to a live server and over MQTT to the real broker; and run
beside a server as `cityos demo` does."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cityos.sensing import ingest, simulator, virtual
from cityos.sensing.models import Observation, Thing
from cityos.sensing.virtual import Device, Stream, VirtualDevice
from tests.conftest import IN_CI, seed_small_city
from tests.sensing.helpers_simulator import AIR, ROUTE, mounted, sim_things

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday: 08:00 in 吉林市
MIN = 60_000


def device(kind: str, codes: tuple[str, ...], key: str = "dev_test", **kw: Any) -> Device:
    return Device(key, "secret", 1, f"{kind} 1", kind, tuple(Stream(i + 1, c) for i, c in enumerate(codes)), **kw)


def series(d: Device, n: int, step: int = MIN, seed: int = virtual.SEED, t0: int = T0) -> list[dict[int, Any]]:
    sim = VirtualDevice(d, seed)
    return [sim.read(t0 + i * step) for i in range(n)]


# -- how things behave ------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_readings_and_another_seed_others() -> None:
    air = device("air", AIR)
    assert series(air, 200) == series(air, 200)
    assert series(air, 200) != series(air, 200, seed=7)
    assert series(air, 50) != series(device("air", AIR, key="dev_other"), 50)  # devices differ


def test_values_have_their_streams_types_and_bounds() -> None:
    kinds = {"water": ("ph", "do", "turbidity", "cod", "nh3n", "water_temp"), "pipe": ("pressure", "flow"),
             "traffic": ("traffic_volume", "speed", "occupancy"), "wearable": ("heart_rate", "spo2", "fall"),
             "home": ("smoke", "co_home", "gas"), "soil": ("soil_moisture", "soil_temp"), "gate": ("visitors",)}
    for kind, codes in kinds.items():
        for reading in series(device(kind, codes), 300, step=int(virtual.KINDS[kind].interval * 1000)):
            assert set(reading) == set(range(1, len(codes) + 1))
            for i, code in enumerate(codes, start=1):
                v, p = reading[i], virtual.PROFILES[code]
                if p.shape == "truth":
                    assert isinstance(v, bool)
                elif p.integer:
                    assert type(v) is int and p.lo <= v <= p.hi
                else:
                    assert type(v) is float and p.lo <= v <= p.hi


def test_traffic_has_rush_hours_and_gates_close_at_night() -> None:
    day = series(device("traffic", ("traffic_volume",)), 24 * 60, t0=T0 - 8 * 3600_000)  # local midnight
    by_hour = [sum(r[1] for r in day[h * 60:(h + 1) * 60]) for h in range(24)]
    assert by_hour[8] > 3 * by_hour[3] and by_hour[17] > 3 * by_hour[3]
    gate = series(device("gate", ("visitors",)), 24 * 60, t0=T0 - 8 * 3600_000)
    assert all(r[1] == 0 for r in gate[:7 * 60]) and sum(r[1] for r in gate[12 * 60:15 * 60]) > 100


def test_a_haze_episode_holds_pm25_above_the_demo_rule_long_enough() -> None:
    """The demo's PM2.5 rule fires above 115 µg/m³ held for 300 s: some episode must do that."""
    readings = series(device("air", AIR), 3 * 24 * 60)
    longest = run = 0
    for r in readings:
        run = run + 1 if r[1] > 115 else 0
        longest = max(longest, run)
    assert longest * 60 > 300
    worst = max(readings, key=lambda r: r[1])
    assert worst[7] == virtual.aqi({"pm25": worst[1], "pm10": worst[2], "no2": worst[3], "so2": worst[4],
                                    "o3": worst[5], "co": worst[6]})[0] > 150


def test_a_pipe_burst_drops_the_pressure_and_a_stuck_sensor_flatlines() -> None:
    pipe = series(device("pipe", ("pressure", "flow")), 20_000, step=30_000)
    assert min(r[1] for r in pipe) < 0.2 < max(r[1] for r in pipe)
    water = series(device("water", ("ph", "cod")), 10_000, step=120_000)
    flat = max(sum(1 for _ in g) for g in _runs([r[1] for r in water]))
    assert flat >= 10  # the demo's flatline rule counts 10 equal readings


def _runs(values: list[Any]) -> Iterator[Iterator[Any]]:
    import itertools

    return (g for _k, g in itertools.groupby(values))


def test_aqi_follows_hj_633() -> None:
    assert virtual.aqi({"pm25": 35}) == (50, None)
    assert virtual.aqi({"pm25": 75}) == (100, "pm25")
    assert virtual.aqi({"pm25": 150, "pm10": 50, "co": 1}) == (200, "pm25")
    assert virtual.aqi({"pm25": 20, "o3": 250}) == (125, "o3")
    assert virtual.aqi({"so2": 5000}) == (500, "so2")  # capped at the top of the scale


def test_a_bus_moves_along_its_route_and_reports_geojson_points() -> None:
    bus = device("bus", ("bus_position", "bus_speed"), route=ROUTE)
    readings = series(bus, 500, step=10_000)
    points = [r[1] for r in readings]
    assert all(p["type"] == "Point" and len(p["coordinates"]) == 2 for p in points)
    assert len({tuple(p["coordinates"]) for p in points}) > 100  # it moves
    for p in points:  # near the route (a detour goes 700 m off it, about 0.01°)
        lon, lat = p["coordinates"]
        assert 126.49 <= lon <= 126.56 and 43.79 <= lat <= 43.84
    assert all(0 <= r[2] <= 60 for r in readings)


def test_readings_have_the_shapes_of_the_ingest_api_and_the_device_topic() -> None:
    point = {"type": "Point", "coordinates": [126.5, 43.8]}
    body = simulator.http_body([(1, T0, 35.2), (2, T0 + 1, True), (3, T0 + 2, point)])
    assert body == [{"ds": 1, "t": "2026-01-01T00:00:00.000Z", "v": 35.2},
                    {"ds": 2, "t": "2026-01-01T00:00:00.001Z", "v": True},
                    {"ds": 3, "t": "2026-01-01T00:00:00.002Z", "v": point}]
    assert [ingest.parse_time(b["t"], "t", T0) for b in body] == [T0, T0 + 1, T0 + 2]
    topic, payload = simulator.mqtt_message("dev_0123456789ab", 7, T0, 12)
    assert topic == "cityos/devices/dev_0123456789ab/7"
    assert orjson.loads(payload) == {"t": "2026-01-01T00:00:00.000Z", "v": 12}


def test_selecting_devices_mixes_kinds_and_cycles_as_copies() -> None:
    devs = [device("air", ("pm25",), key=f"a{i}") for i in range(3)] + [device("bus", ("bus_speed",), key="b")]
    chosen = simulator.select(devs, 2)
    assert [(d.key, c) for d, c in chosen] == [("a0", 0), ("b", 0)]
    many = simulator.select(devs, 9)
    assert [c for _d, c in many] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert simulator.natural_rate(simulator.select(devs, None)) == pytest.approx(3 / 60 + 1 / 10)


def test_the_devices_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "d" / simulator.DEVICES_FILE
    bus = device("bus", ("bus_position",), route=ROUTE, lon=126.5, lat=43.8)
    simulator.save_devices(path, [bus])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert simulator.load_devices(path) == [bus]
    air = device("air", ("pm25",), key="dev_air")
    air = Device(air.key, air.secret, 2, air.name, air.kind, air.streams)
    assert simulator.merge_devices(path, [air]) == [bus, air]
    assert json.loads(path.read_text())["version"] == 1


def test_addresses() -> None:
    assert simulator.local_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert simulator.local_url("::", 8000) == "http://127.0.0.1:8000"
    assert simulator.local_url("10.0.0.5", 80) == "http://10.0.0.5:80"
    assert simulator.broker_address("mqtt://broker:1884") == ("broker", 1884)
    assert simulator.broker_address("127.0.0.1") == ("127.0.0.1", 1883)


# -- sending ------------------------------------------------------------------------------------


@pytest.fixture
def ingest_app(app: FastAPI) -> Iterator[FastAPI]:
    yield from mounted(app)


@pytest.fixture
def devices(sessions: sessionmaker[Session]) -> list[Device]:
    with sessions() as s:
        seed_small_city(s)
        return sim_things(s)


def _stored(sessions: sessionmaker[Session]) -> dict[int, list[tuple[float | None, str | None]]]:
    with sessions() as s:
        out: dict[int, list[tuple[float | None, str | None]]] = {}
        for ds, number, js in s.execute(select(Observation.datastream_id, Observation.result_number,
                                               Observation.result_json)):
            out.setdefault(ds, []).append((number, js))
        return out


def test_devices_send_over_http_to_a_live_server(ingest_app: FastAPI, devices: list[Device], live_server: str,
                                                 sessions: sessionmaker[Session]) -> None:
    stats = simulator.run(devices, via="http", url=live_server, rate=40, duration=1.5)
    assert stats.errors == 0, stats.last_error
    assert stats.ok == stats.sent > 0
    stored = _stored(sessions)
    assert sum(len(v) for v in stored.values()) == stats.ok
    codes = {s.id: s.code for d in devices for s in d.streams}
    for ds, rows in stored.items():
        for number, js in rows:
            if codes[ds] == "bus_position":
                point = orjson.loads(js or "null")
                assert point["type"] == "Point" and len(point["coordinates"]) == 2
            elif codes[ds] == "smoke":
                assert js in ("true", "false")
            else:
                assert number is not None
    with sessions() as s:
        assert all(t.last_seen_at for t in s.scalars(select(Thing)))


def test_a_wrong_secret_is_counted_as_errors(ingest_app: FastAPI, devices: list[Device],
                                             live_server: str) -> None:
    bad = [Device(d.key, "wrong", d.thing_id, d.name, d.kind, d.streams) for d in devices[:1]]
    stats = simulator.run(bad, via="http", url=live_server, rate=20, duration=1.0)
    assert stats.ok == 0 and stats.errors == stats.sent > 0
    assert stats.last_error is not None and "401" in stats.last_error


BROKER = "mqtt://127.0.0.1:1883"  # the machine's Mosquitto


def test_devices_publish_over_mqtt_with_qos_1() -> None:
    """What reaches the real broker: one message per reading on the device's own topic, QoS 1,
    acknowledged (PUBACK) for every reading."""
    import paho.mqtt.client as mqtt

    tag = f"{time.monotonic_ns() % 10**9:09d}"
    devices = [Device(f"dev_sim{tag}{i}", "secret", i, f"站{i}", kind, tuple(Stream(10 * i + j, c)
                      for j, c in enumerate(codes)), route=ROUTE if kind == "bus" else ())
               for i, (kind, codes) in enumerate([("air", AIR), ("home", ("smoke", "gas")),
                                                  ("bus", ("bus_position", "bus_speed"))])]
    got: list[tuple[str, bytes, int]] = []
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cityos-test-sub-{tag}")
    sub.on_connect = lambda c, _u, _f, _r, _p: c.subscribe("cityos/devices/+/+", qos=1)
    sub.on_subscribe = lambda *_a: ready.set()
    sub.on_message = lambda _c, _u, m: got.append((m.topic, m.payload, m.qos))
    try:
        sub.connect("127.0.0.1", 1883)
    except OSError as exc:
        if IN_CI:
            pytest.fail(f"an MQTT broker is required under CI at {BROKER}: {exc}")
        pytest.skip(f"no MQTT broker at {BROKER}: {exc}")
    sub.loop_start()
    keys = {d.key for d in devices}

    def mine() -> list[tuple[str, bytes, int]]:
        return [(t, p, q) for t, p, q in list(got) if t.split("/")[2] in keys]

    try:
        assert ready.wait(5)
        stats = simulator.run(devices, via="mqtt", broker=BROKER, rate=40, duration=1.5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(mine()) < stats.ok:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert stats.errors == 0, stats.last_error
    assert stats.ok == stats.sent > 0
    assert len(mine()) == stats.ok
    streams = {(d.key, st.id): st.code for d in devices for st in d.streams}
    for topic, payload, qos in mine():
        _c, _d, key, ds = topic.split("/")
        assert (key, int(ds)) in streams and qos == 1
        body = orjson.loads(payload)
        assert set(body) == {"t", "v"} and ingest.parse_time(body["t"], "t") > 0
        if streams[(key, int(ds))] == "smoke":
            assert isinstance(body["v"], bool)


def test_devices_send_over_mqtt_through_the_bridge(engine: Any, devices: list[Device],
                                                   sessions: sessionmaker[Session]) -> None:
    """Simulator → Mosquitto → CityOS's bridge → the database, as devices do in a city."""
    from cityos.sensing.mqtt import Bridge

    writer = ingest.Writer(engine)
    bridge = Bridge(writer, BROKER, client_id=f"cityos-test-{time.monotonic_ns() % 10**9}", session_expiry=0,
                    fan_out=False)
    bridge.start()
    try:
        if not bridge.wait_ready(10):
            if IN_CI:
                pytest.fail(f"an MQTT broker is required under CI at {BROKER}")
            pytest.skip(f"no MQTT broker at {BROKER}")
        stats = simulator.run(devices, via="mqtt", broker=BROKER, rate=40, duration=1.5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(map(len, _stored(sessions).values())) < stats.ok:
            time.sleep(0.1)
    finally:
        bridge.stop(timeout=5)
        writer.stop()
    assert stats.errors == 0 and stats.ok == stats.sent > 0, stats.last_error
    stored = _stored(sessions)
    assert sum(len(v) for v in stored.values()) == stats.ok
    assert set(stored) == {st.id for d in devices for st in d.streams}


def test_the_demo_runs_the_simulator_beside_its_server(ingest_app: FastAPI, devices: list[Device],
                                                       live_server: str, tmp_path: Path) -> None:
    path = tmp_path / simulator.DEVICES_FILE
    assert simulator.start_background(path, live_server) is None  # no devices file: not started
    simulator.save_devices(path, devices)
    bg = simulator.start_background(path, live_server, rate=40)
    assert bg is not None
    deadline = time.monotonic() + 20
    while bg.stats.ok < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    bg.stop()
    assert not bg.thread.is_alive()
    assert bg.stats.ok >= 10 and bg.stats.errors == 0, bg.stats.last_error
