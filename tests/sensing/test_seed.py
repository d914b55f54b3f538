"""The demo city's sensors at the tests' tiny scale, on both databases: every kind of device of
the right department, each with a place, datastreams and working credentials in a 0600 devices
file; rules the rules engine accepts; history with rollups; and a second build creating nothing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cityos.core.settings import Settings
from cityos.demo import maps_seed, seed, sensing_data, sensing_seed
from cityos.sensing import rules, service, simulator
from cityos.sensing.models import Datastream, Group, Observation, ObservedProperty, Rollup, Rule, Thing

SCALE = 0.0005  # as the other demo tests


@pytest.fixture
def demo_city(settings: Settings, sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The demo's departments and users, and 市供水公司 (made by the map step), without the data hub."""
    seed.build(settings, scale=0)
    with sessions() as s:
        maps_seed._water_company(s, settings.demo_password, maps_seed.MapsReport())
    return sessions


def test_the_demo_builds_sensors_credentials_rules_and_history(demo_city: sessionmaker[Session],
                                                               tmp_path: Path) -> None:
    with demo_city() as s:
        report = sensing_seed.build_sensing(s, SCALE, tmp_path)
    specs = {spec.key: spec for spec in sensing_data.KIND_SPECS}
    assert set(report.kinds) == set(specs)
    assert all(1 <= n <= 2 for n in report.kinds.values())
    assert report.things_created == sum(report.kinds.values()) == report.credentials_issued
    assert report.rules_created == len(sensing_data.RULES)
    assert report.history_readings > 5000

    with demo_city() as s:
        things = s.scalars(select(Thing).where(Thing.created_by == sensing_seed.CREATOR)).all()
        assert len(things) == report.things_created
        for thing in things:
            spec = specs[thing.properties["code"][:-4]]
            assert thing.department.code == spec.department and thing.kind == spec.kind
            assert thing.locations and thing.locations[0].lon is not None and thing.locations[0].lat is not None
            assert 125.6 < thing.locations[0].lon < 128.1 and 42.5 < thing.locations[0].lat < 44.7  # 吉林市
            codes = [d.properties["code"] for d in thing.datastreams]
            assert codes == list(spec.streams)
            for d in thing.datastreams:
                assert d.observed_property is not None and d.observed_property.definition
                assert d.observation_type == sensing_data.STREAMS[d.properties["code"]].type
                assert d.interval_seconds and d.department_id == thing.department_id
        assert s.scalar(select(func.count()).select_from(ObservedProperty)) == len(sensing_data.PROPERTIES)

        # The devices file: owner-only, one working secret per Thing.
        path = tmp_path / simulator.DEVICES_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        devices = {d.thing_id: d for d in simulator.load_devices(path)}
        assert set(devices) == {t.id for t in things}
        for thing in things:
            d = devices[thing.id]
            assert d.key == thing.device_key and d.kind == thing.kind
            assert [st.id for st in d.streams] == sorted(ds.id for ds in thing.datastreams)
            assert service.device_actor(s, d.key, d.secret) is not None
            assert service.device_actor(s, d.key, d.secret + "x") is None
        bus = next(d for d in devices.values() if d.kind == "bus")
        assert len(bus.route) >= 2

        # Rules as the rules engine checks them, on targets of their department.
        found = s.scalars(select(Rule).order_by(Rule.id)).all()
        assert {r.kind for r in found} == {"threshold", "range", "flatline", "nodata", "geofence"}
        for r in found:
            assert json.loads(json.dumps(rules.check_params(r.kind, r.params))) == r.params
        fence = next(r for r in found if r.kind == "geofence")
        group = s.get(Group, fence.target_id)
        assert group is not None and [t.properties["line"] for t in group.things] == ["1路"]

        # History: six hours of the first stations, with rollups.
        pm25 = s.scalar(select(Datastream).join(Thing).where(Thing.kind == "air").order_by(Datastream.id))
        assert pm25 is not None and pm25.properties["code"] == "pm25" and pm25.last_time
        n = s.scalar(select(func.count()).select_from(Observation).where(Observation.datastream_id == pm25.id))
        assert 300 <= n <= 361
        minutes = s.scalar(select(func.sum(Rollup.count)).where(Rollup.datastream_id == pm25.id,
                                                                Rollup.grain == 60))
        assert minutes == n
        s.rollback()

    before = path.read_bytes()
    with demo_city() as s:
        again = sensing_seed.build_sensing(s, SCALE, tmp_path)
    assert again.created == 0 and again.things_skipped == report.things_created
    assert path.read_bytes() == before  # secrets kept


def test_a_lost_secret_is_issued_again_and_stale_devices_go(demo_city: sessionmaker[Session],
                                                            tmp_path: Path) -> None:
    with demo_city() as s:
        sensing_seed.build_sensing(s, SCALE, tmp_path)
    path = tmp_path / simulator.DEVICES_FILE
    devices = simulator.load_devices(path)
    stale = simulator.Device("dev_000000000000", "x", 99_999, "gone", "air", ())
    simulator.save_devices(path, [*devices[1:], stale])
    with demo_city() as s:
        again = sensing_seed.build_sensing(s, SCALE, tmp_path)
        assert again.credentials_issued == 1 and again.things_created == 0
        now = {d.thing_id: d for d in simulator.load_devices(path)}
        assert set(now) == {d.thing_id for d in devices}
        assert service.device_actor(s, now[devices[0].thing_id].key, now[devices[0].thing_id].secret)
        assert now[devices[1].thing_id].secret == devices[1].secret
