"""Fixtures of sensing's tests: devices made with the ORM in the seeded small city."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cityos.core.models import Department
from cityos.sensing import ingest
from cityos.sensing.models import Datastream, Location, ObservedProperty, Sensor, Thing
from tests.conftest import seed_small_city

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms


def make_thing(session: Session, department: str = "220200-hbj", *, streams: int = 1,
               observation_type: str = ingest.MEASUREMENT, name: str = "空气站",
               lon: float = 126.55, lat: float = 43.84, **kw: Any) -> tuple[Thing, list[Datastream]]:
    """A Thing with a Location and `streams` Datastreams, committed."""
    dept = session.scalar(select(Department).where(Department.code == department))
    assert dept is not None, department
    thing = Thing(department_id=dept.id, name=name, kind=kw.pop("kind", "air"), **kw)
    thing.locations.append(Location(department_id=dept.id, name=f"{name}位置", lon=lon, lat=lat,
                                    location={"type": "Point", "coordinates": [lon, lat]}))
    sensor = Sensor(department_id=dept.id, name="传感器", meta="https://example.org/sensor.pdf")
    prop = session.scalar(select(ObservedProperty).where(ObservedProperty.definition == "urn:test:pm25"))
    if prop is None:
        prop = ObservedProperty(name="PM2.5", definition="urn:test:pm25")
    session.add_all([thing, sensor, prop])
    session.flush()
    made = []
    for i in range(streams):
        ds = Datastream(thing_id=thing.id, department_id=dept.id, sensor_id=sensor.id,
                        observed_property_id=prop.id, name=f"{name} 数据流 {i}",
                        observation_type=observation_type,
                        unit_of_measurement={"name": "microgram per cubic metre", "symbol": "µg/m³",
                                             "definition": "http://qudt.org/vocab/unit/MicroGM-PER-M3"})
        session.add(ds)
        made.append(ds)
    session.commit()
    return thing, made


@pytest.fixture
def city_session(session: Session) -> Session:
    seed_small_city(session)
    return session


@pytest.fixture
def thing_factory(city_session: Session) -> Callable[..., tuple[Thing, list[Datastream]]]:
    return lambda *a, **kw: make_thing(city_session, *a, **kw)


@pytest.fixture
def writer(engine: Engine) -> Any:
    w = ingest.Writer(engine)
    yield w
    w.stop()


def row(ds: int, t: int, v: float | None = None, js: str | None = None, foi: int | None = None) -> tuple:
    """A store.Row with only the common fields set."""
    return (ds, t, None, None, v, js, None, None, None, None, foi)
