"""`cityos simulate` and `cityos sensing things|credentials|retention`, through Typer's runner on
a Typer app that mounts them as cityos.cli does (`sensing_cli.register`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cityos.core.settings import Settings
from cityos.sensing import cli as sensing_cli
from cityos.sensing import ingest, service, simulator
from cityos.sensing.models import Datastream, Observation, Rollup, Thing
from cityos.sensing.virtual import Device
from tests.conftest import seed_small_city
from tests.sensing.helpers_simulator import mounted, sim_things

runner = CliRunner()
WIDE = {"COLUMNS": "250"}
HOUR = 3_600_000

app = typer.Typer()
sensing_cli.register(app)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    from cityos.core.cli import console, err_console

    monkeypatch.setenv("CITYOS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setattr(console, "width", 250)
    monkeypatch.setattr(err_console, "width", 250)
    return settings


@pytest.fixture
def devices(sessions: sessionmaker[Session]) -> list[Device]:
    with sessions() as s:
        seed_small_city(s)
        return sim_things(s)


@pytest.fixture
def ingest_app(app: FastAPI) -> Iterator[FastAPI]:
    yield from mounted(app)


def test_things_lists_devices_with_their_status(cli_env: Settings, devices: list[Device]) -> None:
    r = runner.invoke(app, ["sensing", "things"], env=WIDE)
    assert r.exit_code == 0, r.output
    for d in devices:
        assert d.name in r.output
    assert "offline" in r.output and "4 devices" in r.output
    r = runner.invoke(app, ["sensing", "things", "--kind", "bus", "--as", "env_staff"], env=WIDE)
    assert r.exit_code == 0, r.output
    assert "公交" in r.output and "空气站" not in r.output
    r = runner.invoke(app, ["sensing", "things", "--as", "police_staff"], env=WIDE)
    assert r.exit_code == 0 and "0 devices" in r.output  # another department's devices are not shown
    r = runner.invoke(app, ["sensing", "things", "--status", "asleep"], env=WIDE)
    assert r.exit_code == 1 and "status" in r.output


def test_credentials_are_issued_shown_once_and_saved_for_the_simulator(
        cli_env: Settings, devices: list[Device], sessions: sessionmaker[Session], tmp_path: Path) -> None:
    path = tmp_path / simulator.DEVICES_FILE
    thing_id = devices[0].thing_id
    r = runner.invoke(app, ["sensing", "credentials", str(thing_id), "--save", "--devices-file", str(path)],
                      env=WIDE)
    assert r.exit_code == 0, r.output
    key = re.search(r"device key / 设备密钥: (dev_\w+)", r.output)
    secret = re.search(r"secret / 口令: (\S+)", r.output)
    assert key and secret
    with sessions() as s:
        assert service.device_actor(s, key[1], secret[1]) is not None
        assert service.device_actor(s, devices[0].key, devices[0].secret) is None  # the old one stops
    saved = simulator.load_devices(path)
    assert [(d.thing_id, d.key, d.secret) for d in saved] == [(thing_id, key[1], secret[1])]
    assert [st.code for st in saved[0].streams] == [st.code for st in devices[0].streams]

    r = runner.invoke(app, ["sensing", "credentials", "999999"], env=WIDE)
    assert r.exit_code == 1 and "not found" in r.output
    r = runner.invoke(app, ["sensing", "credentials", str(thing_id), "--as", "police_staff"], env=WIDE)
    assert r.exit_code == 1  # 市公安局's staff may not issue 市环保局's device keys


def test_retention_deletes_old_raw_readings_and_keeps_rollups(
        cli_env: Settings, devices: list[Device], sessions: sessionmaker[Session], engine) -> None:
    ds = devices[0].streams[0].id
    now = ingest.now_ms()
    writer = ingest.Writer(engine)
    try:
        writer.write_sync([(ds, now - HOUR - k * 6 * HOUR, None, None, 30.0 + k, None, None, None, None, None,
                            None) for k in range(12)])  # the last 3 days, every 6 hours: 4 in the last day
    finally:
        writer.stop()
    with sessions() as s:
        s.get_one(Datastream, ds).retention_days = 1
        s.commit()
    r = runner.invoke(app, ["sensing", "retention"], env=WIDE)
    assert r.exit_code == 0, r.output
    assert re.search(r"空气站 pm25\s*│ 8 ", r.output), r.output
    with sessions() as s:
        left = s.scalar(select(func.count()).select_from(Observation).where(Observation.datastream_id == ds))
        assert left == 4
        hours = s.scalar(select(func.sum(Rollup.count)).where(Rollup.datastream_id == ds, Rollup.grain == 3600))
        assert hours == 12
    r = runner.invoke(app, ["sensing", "retention"], env=WIDE)
    assert r.exit_code == 0 and "nothing to delete" in r.output


def test_simulate_sends_readings_to_a_server(cli_env: Settings, ingest_app: FastAPI, devices: list[Device],
                                             live_server: str, sessions: sessionmaker[Session],
                                             tmp_path: Path) -> None:
    path = tmp_path / simulator.DEVICES_FILE
    simulator.save_devices(path, devices)
    r = runner.invoke(app, ["simulate", "--url", live_server, "--devices-file", str(path), "--rate", "20",
                            "--duration", "1", "--devices", "2"], env=WIDE)
    assert r.exit_code == 0, r.output
    assert "simulating 2 devices" in r.output and "errors 0" in r.output
    with sessions() as s:
        things = {t for (t,) in s.execute(select(Datastream.thing_id).join(
            Observation, Observation.datastream_id == Datastream.id).distinct())}
        assert things and things <= {d.thing_id for d in devices[:2]}  # one of each kind, in file order
        assert s.scalar(select(func.count()).select_from(Thing)) == len(devices)


def test_simulate_refuses_what_it_cannot_do(cli_env: Settings, tmp_path: Path) -> None:
    r = runner.invoke(app, ["simulate", "--via", "pigeon"], env=WIDE)
    assert r.exit_code == 2 and "http or mqtt" in r.output
    r = runner.invoke(app, ["simulate", "--devices-file", str(tmp_path / "none.json")], env=WIDE)
    assert r.exit_code == 1 and "no devices file" in r.output
    bad = tmp_path / "bad.json"
    simulator.save_devices(bad, [Device("dev_nobody", "x", 1, "?", "air", ())])
    r = runner.invoke(app, ["simulate", "--devices-file", str(bad), "--url", "http://127.0.0.1:9",
                            "--duration", "0.5"], env=WIDE)
    assert r.exit_code == 0 and "sent 0" in r.output  # a device without streams sends nothing


def test_broker_auth_lets_devices_in_with_their_own_secrets_only(
        cli_env: Settings, devices: list[Device], tmp_path: Path) -> None:
    """The files it writes, loaded by a private Mosquitto that refuses anonymous clients."""
    from tests.sensing.helpers_mqtt import mosquitto

    path = tmp_path / simulator.DEVICES_FILE
    simulator.save_devices(path, devices)
    out = tmp_path / "broker"
    r = runner.invoke(app, ["sensing", "broker-auth", str(out), "--devices-file", str(path),
                            "--service-password", "svc-pass-123"], env=WIDE)
    assert r.exit_code == 0, r.output
    assert f"{len(devices) + 1} broker users" in r.output
    conf = [f"password_file {out / 'cityos.passwd'}", f"acl_file {out / 'cityos.acl'}", "allow_anonymous false"]
    with mosquitto(tmp_path / "mosquitto", *conf) as port:
        broker = f"mqtt://127.0.0.1:{port}"
        good = simulator.run(devices, via="mqtt", broker=broker, rate=40, duration=1.0)
        assert good.errors == 0 and good.ok == good.sent > 0, good.last_error
        wrong = [Device(d.key, "not-the-secret", d.thing_id, d.name, d.kind, d.streams) for d in devices[:1]]
        bad = simulator.run(wrong, via="mqtt", broker=broker, rate=20, duration=1.0)
        assert bad.ok == 0 and bad.errors == bad.sent > 0
