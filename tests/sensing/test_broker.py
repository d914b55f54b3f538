"""Broker credentials: our "$7$" hashes are Mosquitto's, and a real Mosquitto run on the files
we write lets each device publish to its own topics only."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import uuid

import orjson
import pytest
from sqlalchemy import text

from cityos.sensing import broker
from cityos.sensing.mqtt import Bridge
from tests.sensing.conftest import T0
from tests.sensing.helpers_mqtt import Device, mosquitto, wait_for

NOT_AUTHORIZED = 135  # MQTT 5 reason code of a PUBACK or CONNACK the broker refused


def test_hash_matches_mosquitto_passwd(tmp_path):
    tool = shutil.which("mosquitto_passwd") or "/usr/sbin/mosquitto_passwd"
    secret = secrets.token_urlsafe(24)
    subprocess.run([tool, "-c", "-b", str(tmp_path / "pw"), "dev_x", secret], check=True, capture_output=True)
    user, theirs = (tmp_path / "pw").read_text().strip().split(":", 1)
    assert user == "dev_x" and theirs.startswith("$7$101$")
    salt = base64.b64decode(theirs.split("$")[3])
    assert broker.mosquitto_hash(secret, salt=salt) == theirs  # the same bytes for the same salt
    assert broker.mosquitto_verify(secret, theirs) and not broker.mosquitto_verify(secret + "x", theirs)
    ours = broker.mosquitto_hash(secret)
    assert ours != broker.mosquitto_hash(secret) and broker.mosquitto_verify(secret, ours)  # salted
    line = broker.device_password_line("dev_x", secret)
    assert line.startswith("dev_x:$7$101$") and broker.mosquitto_verify(secret, line.split(":", 1)[1])
    with pytest.raises(ValueError):
        broker.device_password_line("dev:x", secret)


def test_auth_files_name_each_device_and_its_streams(engine, thing_factory, city_session, tmp_path):
    _, (a1, a2) = thing_factory(device_key="dev_a", streams=2)
    _, (b1,) = thing_factory(device_key="dev_b", name="水质站")
    thing_factory(device_key="dev_none", name="未发凭证")  # no broker hash: left out
    hashes = {"dev_a": broker.mosquitto_hash("sa"), "dev_b": broker.mosquitto_hash("sb")}
    pw, acl = broker.write_auth_files(city_session, tmp_path, service_password="svc", hashes=hashes)
    users = [line.split(":", 1)[0] for line in pw.read_text().splitlines()]
    assert users == ["cityos-ingest", "dev_a", "dev_b"]
    assert (pw.stat().st_mode & 0o777) == 0o640
    text_ = acl.read_text()
    assert "pattern write cityos/devices/%u/+" in text_ and "pattern read v1.1/#" in text_
    assert (f"user dev_a\ntopic write v1.1/Datastreams({a1.id})/Observations\n"
            f"topic write v1.1/Datastreams({a2.id})/Observations\n") in text_
    assert f"user dev_b\ntopic write v1.1/Datastreams({b1.id})/Observations\n" in text_
    assert "user cityos-ingest\ntopic readwrite v1.1/#\ntopic read cityos/devices/#\n" in text_
    assert "dev_none" not in text_


def _count(engine, ds: int) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM sensor_observations WHERE datastream_id = :d"),
                            {"d": ds}).scalar_one()


def test_broker_lets_devices_write_only_their_own_topics(engine, thing_factory, city_session, writer, tmp_path):
    _, (mine,) = thing_factory(device_key="dev_m1")
    _, (theirs,) = thing_factory(device_key="dev_t1", name="他人设备")
    sa, sb, svc = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    # What service.device_issue keeps (Thing.broker_hash), passed as a mapping here.
    hashes = {"dev_m1": broker.mosquitto_hash(sa), "dev_t1": broker.mosquitto_hash(sb)}
    pw, acl = broker.write_auth_files(city_session, tmp_path / "auth", service_password=svc, hashes=hashes)
    with mosquitto(tmp_path / "broker", "allow_anonymous false", f"password_file {pw}", f"acl_file {acl}",
                   "per_listener_settings false") as port:
        bridge = Bridge(writer, f"mqtt://cityos-ingest:{svc}@127.0.0.1:{port}", session_expiry=0,
                        client_id=f"cityos-{uuid.uuid4().hex[:8]}")
        bridge.start()
        devices: list[Device] = []
        try:
            assert bridge.wait_ready(10)
            dev = Device(port, "dev_m1", "dev_m1", sa).ready()
            devices.append(dev)
            assert not dev.connack.is_failure
            # Another device's topics: the broker refuses (PUBACK "not authorized"), nothing arrives.
            assert dev.publish(f"cityos/devices/dev_t1/{theirs.id}", b'{"t": 1, "v": 1}').value == NOT_AUTHORIZED
            assert dev.publish(f"v1.1/Datastreams({theirs.id})/Observations",
                               b'{"phenomenonTime": 1, "result": 1}').value == NOT_AUTHORIZED
            # Its own topics: stored.
            assert not dev.publish(f"cityos/devices/dev_m1/{mine.id}", orjson.dumps({"t": T0, "v": 1})).is_failure
            assert not dev.publish(f"v1.1/Datastreams({mine.id})/Observations",
                                   orjson.dumps({"phenomenonTime": T0 + 1000, "result": 2})).is_failure
            wait_for(lambda: bridge.stats()["stored"] == 2, what="the device's own readings")
            assert bridge.stats()["received"] == 2 and _count(engine, theirs.id) == 0
            # A wrong password or no password cannot connect.
            for user, password in (("dev_m1", "wrong"), ("dev_t1", sa), (None, None)):
                bad = Device(port, f"x-{uuid.uuid4().hex[:6]}", user, password).ready()
                devices.append(bad)
                assert bad.connack.is_failure
        finally:
            for d in devices:
                d.close()
            bridge.stop(timeout=2)
