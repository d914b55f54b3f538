"""Builders for the time series tests: Things and Datastreams made with the ORM, readings as
`store.Row` tuples for the real ingest writer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import auth
from cityos.core.access import Actor
from cityos.core.models import Department, User
from cityos.sensing import ingest
from cityos.sensing.models import Datastream, Location, ObservedProperty, Sensor, Thing
from cityos.sensing.store import Row

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def actor_of(session: Session, username: str) -> Actor:
    user = session.scalar(select(User).where(User.username == username))
    assert user is not None
    return auth.user_actor(user)


def dept_id(session: Session, code: str) -> int:
    found = session.scalar(select(Department.id).where(Department.code == code))
    assert found is not None
    return found


def make_thing(session: Session, name: str, department: str = "220200-hbj", *, kind: str | None = "air",
               lonlat: tuple[float, float] | None = None, last_seen_at: int | None = None) -> Thing:
    thing = Thing(department_id=dept_id(session, department), name=name, kind=kind, last_seen_at=last_seen_at)
    if lonlat is not None:
        thing.locations.append(Location(name=f"{name} 位置", department_id=thing.department_id,
                                        location={"type": "Point", "coordinates": list(lonlat)},
                                        lon=lonlat[0], lat=lonlat[1]))
    session.add(thing)
    session.flush()
    return thing


def make_stream(session: Session, thing: Thing, name: str = "PM2.5", *, observation_type: str = ingest.MEASUREMENT,
                symbol: str = "μg/m³", interval_seconds: int | None = None,
                retention_days: int | None = None) -> Datastream:
    prop = ObservedProperty(name=name, definition=f"urn:test:{name}")
    sensor = Sensor(name=f"{name} sensor", department_id=thing.department_id, meta="")
    ds = Datastream(thing=thing, department_id=thing.department_id, sensor=sensor, observed_property=prop,
                    name=f"{thing.name} {name}", observation_type=observation_type,
                    unit_of_measurement={"name": name, "symbol": symbol, "definition": ""},
                    interval_seconds=interval_seconds, retention_days=retention_days)
    session.add(ds)
    session.flush()
    return ds


def readings(ds: int, points: Iterable[tuple[int, Any]]) -> list[Row]:
    """Rows for (time, value) pairs: numbers go to result_number, anything else to result_json."""
    out: list[Row] = []
    for t, v in points:
        numeric = isinstance(v, int | float) and not isinstance(v, bool)
        out.append((ds, t, None, None, float(v) if numeric else None,
                    None if numeric else orjson.dumps(v).decode(), None, None, None, None, None))
    return out
