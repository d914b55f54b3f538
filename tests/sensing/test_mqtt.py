"""The MQTT bridge against a real Mosquitto and both databases: readings in, observations out."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from cityos.core.errors import Invalid
from cityos.sensing import ingest
from cityos.sensing.ingest import Writer
from cityos.sensing.models import Datastream, FeatureOfInterest
from cityos.sensing.mqtt import Bridge, device_rows, parse_url, sta_target
from tests.sensing.conftest import T0
from tests.sensing.helpers_mqtt import Device, mosquitto, wait_for

ISO0 = "2026-01-01T00:00:00Z"  # T0


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with mosquitto(tmp_path_factory.mktemp("mqtt"), "allow_anonymous true") as p:
        yield p


@pytest.fixture
def bridges(writer: Writer, port: int) -> Iterator[Callable[..., Bridge]]:
    """Start bridges on the private broker (unique client ids); all are stopped at the end."""
    made: list[Bridge] = []

    def make(**kw: Any) -> Bridge:
        kw.setdefault("client_id", f"cityos-{uuid.uuid4().hex[:8]}")
        kw.setdefault("session_expiry", 0)
        b = Bridge(writer, f"mqtt://127.0.0.1:{port}", base_url="http://city.test", **kw)
        b.start()
        made.append(b)
        assert b.wait_ready(10)
        return b

    yield make
    for b in made:
        b.stop(timeout=2)


@pytest.fixture
def devices(port: int) -> Iterator[Callable[..., Device]]:
    made: list[Device] = []

    def make(**kw: Any) -> Device:
        d = Device(port, kw.pop("client_id", f"dev-{uuid.uuid4().hex[:8]}"), **kw).ready()
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def _rows(engine: Engine, ds: int | None = None) -> list[tuple[Any, ...]]:
    sql = "SELECT datastream_id, phenomenon_time, result_number, result_json, feature_of_interest_id " \
          "FROM sensor_observations"
    with engine.connect() as conn:
        if ds is None:
            return [tuple(r) for r in conn.execute(text(sql + " ORDER BY id"))]
        return [tuple(r) for r in conn.execute(text(sql + " WHERE datastream_id = :d ORDER BY id"), {"d": ds})]


def _multi(session: Session, thing_id: int, single: Datastream) -> Datastream:
    ds = Datastream(kind="multi", thing_id=thing_id, department_id=single.department_id,
                    sensor_id=single.sensor_id, name="气象多数据流", observation_type=ingest.COMPLEX,
                    unit_of_measurement=[{"name": "degree Celsius", "symbol": "°C", "definition": "x"},
                                         {"name": "percent", "symbol": "%", "definition": "y"}],
                    multi_observation_types=[ingest.MEASUREMENT, ingest.MEASUREMENT])
    session.add(ds)
    session.commit()
    return ds


# -- pure parsing ---------------------------------------------------------------------------------


def test_url_and_topic_parsing():
    assert parse_url("mqtt://127.0.0.1") == ("127.0.0.1", 1883, False, None, None)
    assert parse_url("mqtts://cityos:p%40ss@broker.city:8884") == ("broker.city", 8884, True, "cityos", "p@ss")
    with pytest.raises(Invalid):
        parse_url("http://broker")
    assert sta_target("v1.1/Datastreams(42)/Observations") == ("Datastreams", 42)
    assert sta_target("v1.1/MultiDatastreams(7)/Observations") == ("MultiDatastreams", 7)
    with pytest.raises(Invalid):
        sta_target("v1.1/Things(1)/Observations")


def test_compact_payload_forms():
    info = ingest.StreamInfo(5, "single", 1, "/1/", 1, "dev_a", ingest.MEASUREMENT, 0, (), None)
    rows, bad = device_rows(info, [{"t": T0, "v": 1}, {"t": "2026-01-01T08:00:00", "v": 2}, {"v": "x"}], T0)
    assert [(r[0], r[1], r[4]) for r in rows] == [(5, T0, 1.0)]
    assert "[1].t" in bad[0] and "time zone" in bad[0] and "[2].v" in bad[1]
    rows, bad = device_rows(info, 3.5, T0 + 9)
    assert [(r[1], r[4]) for r in rows] == [(T0 + 9, 3.5)] and not bad
    assert device_rows(info, [], T0)[1]


# -- against the broker ---------------------------------------------------------------------------


def test_device_topic_single_batch_and_bare_readings_are_stored(engine, thing_factory, writer, bridges, devices):
    _, (ds,) = thing_factory(device_key="dev_a1")
    bridge = bridges()
    dev = devices()
    topic = f"cityos/devices/dev_a1/{ds.id}"
    assert not dev.publish(topic, orjson.dumps({"t": ISO0, "v": 12.5})).is_failure
    dev.publish(topic, orjson.dumps([{"t": T0 + 1000, "v": 13}, {"t": "2026-01-01T08:00:02+08:00", "v": 14}]))
    dev.publish(topic, b"15.25")
    props = Properties(PacketTypes.PUBLISH)  # a message with properties takes paho's own path
    props.UserProperty = ("firmware", "2.1")
    props.PayloadFormatIndicator = 1
    dev.publish(topic, orjson.dumps({"t": T0 + 3000, "v": 16}), properties=props)
    dev.publish(topic, orjson.dumps({"t": T0 + 4000, "v": 17}), qos=0)
    wait_for(lambda: bridge.stats()["stored"] == 6, what="6 stored readings")
    rows = _rows(engine, ds.id)
    assert [r[2] for r in rows] == [12.5, 13.0, 14.0, 15.25, 16.0, 17.0]
    assert [r[1] for r in rows[:3]] == [T0, T0 + 1000, T0 + 2000]
    assert rows[3][1] > T0  # a bare value is stamped with the time it arrived
    stats = bridge.stats()
    assert stats["connected"] and stats["received"] == 5 and stats["refused"] == 0
    wait_for(lambda: bridge.stats()["acked"] == 4, what="4 PUBACKs (the QoS 0 message has none)")


def test_sta_topics_create_observations(engine, thing_factory, city_session, writer, bridges, devices):
    thing, (ds,) = thing_factory(device_key="dev_s1")
    multi = _multi(city_session, thing.id, ds)
    foi = FeatureOfInterest(name="松花江断面", feature={"type": "Point", "coordinates": [126.5, 43.8]})
    city_session.add(foi)
    city_session.commit()
    bridge = bridges()
    dev = devices()
    dev.publish(f"v1.1/Datastreams({ds.id})/Observations", orjson.dumps({
        "phenomenonTime": ISO0, "result": 35.5, "resultTime": ISO0, "parameters": {"batch": "A"},
        "FeatureOfInterest": {"@iot.id": foi.id}}))
    dev.publish(f"v1.1/MultiDatastreams({multi.id})/Observations",
                orjson.dumps({"phenomenonTime": "2026-01-01T00:00:00Z/2026-01-01T00:01:00Z", "result": [-3.5, 71]}))
    wait_for(lambda: bridge.stats()["stored"] == 2, what="2 stored observations")
    (single,) = _rows(engine, ds.id)
    assert single[1:3] == (T0, 35.5) and single[4] == foi.id
    (m,) = _rows(engine, multi.id)
    assert orjson.loads(m[3]) == [-3.5, 71] and m[4] is not None  # the FeatureOfInterest of the Thing's Location
    with engine.connect() as conn:
        extra = conn.execute(text("SELECT phenomenon_time_end, result_time, parameters FROM sensor_observations "
                                  "ORDER BY id")).all()
    assert extra[0][1] == T0 and orjson.loads(extra[0][2]) == {"batch": "A"} and extra[1][0] == T0 + 60_000


def test_puback_is_sent_only_after_commit(engine, thing_factory, writer, bridges, devices, port):
    """While the database refuses the write, the bridge holds the PUBACK; a bridge that stops
    then gets the message again from the broker (its session) and stores it once."""
    _, (ds,) = thing_factory(device_key="dev_p1")
    writer.streams.get(ds.id)  # load the stream (and its FeatureOfInterest) before the lock
    client_id = f"cityos-{uuid.uuid4().hex[:8]}"
    first = bridges(client_id=client_id, session_expiry=60)
    dev = devices()
    lock = engine.connect()
    if engine.dialect.name == "sqlite":
        lock.exec_driver_sql("BEGIN IMMEDIATE")  # holds SQLite's one write lock
    else:
        lock.begin()
        lock.exec_driver_sql("LOCK TABLE sensor_observations IN SHARE MODE")
    try:
        dev.publish(f"cityos/devices/dev_p1/{ds.id}", orjson.dumps({"t": T0, "v": 1.5}))
        wait_for(lambda: first.stats()["received"] == 1, what="the bridge to receive")
        assert first.stats()["acked"] == 0 and first.stats()["pending"] == 1
        first.stop(timeout=0.3)  # gives up waiting: the message stays unacknowledged at the broker
    finally:
        lock.rollback()
        lock.close()
    wait_for(lambda: len(_rows(engine, ds.id)) == 1, what="the held write to commit")
    second = bridges(client_id=client_id, session_expiry=60)
    wait_for(lambda: second.stats()["acked"] == 1, what="the redelivered message to be acknowledged")
    assert second.stats()["received"] == 1 and second.stats()["duplicates"] == 1
    assert len(_rows(engine, ds.id)) == 1


def test_bad_messages_are_counted_logged_once_and_not_stored(engine, thing_factory, writer, bridges, devices,
                                                             caplog):
    _, (ds,) = thing_factory(device_key="dev_b1")
    _, (other,) = thing_factory(device_key="dev_b2", name="水质站")
    bridge = bridges(max_payload=1024)
    dev = devices()
    mine = f"cityos/devices/dev_b1/{ds.id}"
    caplog.set_level(logging.WARNING, logger="cityos.sensing.mqtt")
    bad = [
        (f"cityos/devices/dev_b1/{ds.id + 1000}", b'{"t": 1, "v": 1}'),  # unknown datastream
        (mine, b'{"t": "2026-01-01T00:00:00Z", "v": "high"}'),  # wrong type
        (mine, b'{"t": "2026-01-01T00:00:00", "v": 1}'),  # naive time
        (mine, b'{"t": "2099-01-01T00:00:00Z", "v": 1}'),  # future time
        (mine, b'{"t": 1, "v": 1, "secret": "' + b"x" * 2000 + b'"}'),  # over the size limit
        (f"cityos/devices/dev_b1/{other.id}", b'{"t": 1, "v": 1}'),  # another device's stream
        (mine, b"{not json"),
        (f"v1.1/Datastreams({ds.id})/Observations", b'{"phenomenonTime": "2026-01-01T00:00:00Z"}'),
    ]
    for topic, payload in bad:
        assert not dev.publish(topic, payload).is_failure  # the broker accepts; the bridge refuses
    # A batch with one bad reading: the good ones are stored.
    dev.publish(mine, orjson.dumps([{"t": T0, "v": 1}, {"t": T0 + 1, "v": "x"}, {"t": T0 + 2, "v": 3}]))
    wait_for(lambda: bridge.stats()["received"] == len(bad) + 1, what="all messages")
    wait_for(lambda: bridge.stats()["acked"] == len(bad) + 1, what="all acknowledgements")
    assert [r[2] for r in _rows(engine)] == [1.0, 3.0]
    assert bridge.errors == {"dev_b1": len(bad) + 1} and bridge.stats()["refused"] == len(bad) + 1
    assert writer.stats.device_errors["dev_b1"] == len(bad) + 1
    lines = [r.getMessage() for r in caplog.records if "dev_b1" in r.getMessage()]
    assert len(lines) == 1 and "does not exist" in lines[0]  # once a minute per device
    assert "xxxx" not in caplog.text  # a payload is never logged


def test_duplicate_reading_is_stored_once(engine, thing_factory, writer, bridges, devices):
    _, (ds,) = thing_factory(device_key="dev_d1")
    bridge = bridges()
    dev = devices()
    for _ in range(2):
        dev.publish(f"cityos/devices/dev_d1/{ds.id}", orjson.dumps({"t": T0, "v": 4.5}))
    dev.publish(f"v1.1/Datastreams({ds.id})/Observations", orjson.dumps({"phenomenonTime": ISO0, "result": 4.5}))
    wait_for(lambda: bridge.stats()["acked"] == 3, what="3 acknowledgements")
    assert len(_rows(engine, ds.id)) == 1
    assert bridge.stats()["stored"] == 1 and bridge.stats()["duplicates"] == 2


def test_fan_out_publishes_new_observations_from_any_path(engine, thing_factory, writer, bridges, devices):
    _, (ds,) = thing_factory(device_key="dev_f1")
    bridge = bridges()
    sub = devices()
    sub.subscribe("v1.1/#")
    dev = devices()
    topic = f"v1.1/Datastreams({ds.id})/Observations"
    dev.publish(f"cityos/devices/dev_f1/{ds.id}", orjson.dumps({"t": T0, "v": 21.5}))  # MQTT in
    wait_for(lambda: bridge.stats()["stored"] == 1, what="the MQTT reading")
    writer.write_sync([(ds.id, T0 + 60_000, None, None, 22.0, None, None, None, None, None, None)])  # HTTP's path

    def fanned() -> list[Any]:
        return [m for m in sub.messages if m.topic == topic]

    wait_for(lambda: len(fanned()) >= 2, what="2 fan-out messages")
    docs = [orjson.loads(m.payload) for m in fanned()]
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT id FROM sensor_observations ORDER BY id"))]
    assert [d["@iot.id"] for d in docs] == ids
    assert docs[0]["result"] == 21.5 and docs[0]["phenomenonTime"] == "2026-01-01T00:00:00.000Z"
    assert docs[1]["@iot.selfLink"] == f"http://city.test/sta/v1.1/Observations({ids[1]})"
    # No Local: the bridge does not read back its own fan-out. A later device message is the
    # next one it sees (the broker delivers in order).
    dev.publish(f"cityos/devices/dev_f1/{ds.id}", orjson.dumps({"t": T0 + 120_000, "v": 23}))
    wait_for(lambda: bridge.stats()["stored"] == 2, what="the second MQTT reading")
    assert bridge.stats()["received"] == 2 and bridge.stats()["skipped"] == 0


def test_fan_out_can_be_turned_off(engine, thing_factory, writer, bridges, devices):
    _, (ds,) = thing_factory(device_key="dev_f2")
    bridge = bridges(fan_out=False)
    sub = devices()
    sub.subscribe("v1.1/#")
    dev = devices()
    dev.publish(f"cityos/devices/dev_f2/{ds.id}", orjson.dumps({"t": T0, "v": 1}))
    wait_for(lambda: bridge.stats()["stored"] == 1, what="the reading")
    sub.subscribe("cityos/#")  # a round trip through the broker after the reading
    assert [m.topic for m in sub.messages if m.topic.startswith("v1.1/")] == []
    assert bridge.stats()["fanned_out"] == 0


def test_a_full_writer_queue_holds_acks_and_drops_nothing(engine, thing_factory, port, devices):
    """When the writer's queue is full the bridge waits (and holds the PUBACKs), then stores all."""
    _, (ds,) = thing_factory(device_key="dev_q1")
    writer = Writer(engine, max_pending=1)
    entered, gate = threading.Event(), threading.Event()

    def hold(_written: Any) -> None:  # hold the writer thread inside its first commit
        entered.set()
        gate.wait(20)

    writer.add_listener(hold)
    bridge = Bridge(writer, f"mqtt://127.0.0.1:{port}", client_id=f"cityos-{uuid.uuid4().hex[:8]}",
                    session_expiry=0, fan_out=False)
    bridge.start()
    try:
        assert bridge.wait_ready(10)
        dev = devices()
        topic = f"cityos/devices/dev_q1/{ds.id}"
        dev.publish(topic, orjson.dumps({"t": T0, "v": 0}))
        wait_for(entered.is_set, what="the first commit")
        dev.publish(topic, orjson.dumps({"t": T0 + 1, "v": 1}))  # fills the queue (max_pending=1)
        wait_for(lambda: bridge.stats()["received"] == 2, what="the second message")
        for i in range(2, 20):
            dev.publish(topic, orjson.dumps({"t": T0 + i, "v": i}))
        wait_for(lambda: writer.stats.refused_busy >= 1, what="the writer to refuse a job")
        assert bridge.stats()["acked"] == 0 and bridge.stats()["refused"] == 0
        gate.set()
        wait_for(lambda: bridge.stats()["acked"] == 20, what="all PUBACKs")
        assert len(_rows(engine, ds.id)) == 20 and bridge.stats()["stored"] == 20
    finally:
        gate.set()
        bridge.stop(timeout=2)
        writer.stop()
