"""Shared by the ingest API tests: devices with streams, made through the ORM (sensing has no
service function for them yet), and the ingest router on an app that may not mount it yet."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityos.core.access import SYSTEM
from cityos.core.models import Department
from cityos.sensing import ingest, service
from cityos.sensing.models import Datastream, Observation, ObservedProperty, Rollup, Sensor, Thing


@dataclass
class Device:
    thing_id: int
    streams: list[int]
    key: str | None = None
    secret: str | None = None


def make_device(session: Session, department_code: str, types: list[str], name: str = "air-1",
                credentials: bool = False) -> Device:
    """A Thing of `department_code` with one Datastream per observation type (a list of types
    makes a MultiDatastream)."""
    dept = session.execute(select(Department).where(Department.code == department_code)).scalar_one()
    thing = Thing(department_id=dept.id, name=name, kind="air")
    sensor = Sensor(department_id=dept.id, name=f"{name} sensor", meta="")
    prop = ObservedProperty(name="PM2.5", definition="urn:pm25")
    session.add_all([thing, sensor, prop])
    session.flush()
    ids = []
    for i, typ in enumerate(types):
        if isinstance(typ, list):
            ds = Datastream(kind="multi", thing_id=thing.id, department_id=dept.id, sensor_id=sensor.id,
                            name=f"{name} multi {i}", observation_type=ingest.COMPLEX,
                            unit_of_measurement=[{"name": "", "symbol": "", "definition": ""}] * len(typ),
                            multi_observation_types=typ)
        else:
            ds = Datastream(thing_id=thing.id, department_id=dept.id, sensor_id=sensor.id,
                            observed_property_id=prop.id, name=f"{name} {i}", observation_type=typ,
                            unit_of_measurement={"name": "ug/m3", "symbol": "ug/m3", "definition": ""})
        session.add(ds)
        session.flush()
        ids.append(ds.id)
    device = Device(thing.id, ids)
    if credentials:
        thing = session.get(Thing, thing.id)
        assert thing is not None
        device.key, device.secret = service.device_issue(session, SYSTEM, thing)
    session.commit()
    return device


def with_ingest(app: FastAPI) -> FastAPI:
    """The app with the ingest router mounted (until cityos.app mounts it itself)."""
    from cityos.sensing import api_ingest

    if not any(getattr(r, "path", "") == "/api/sensing/observations" for r in app.routes):
        app.include_router(api_ingest.router)
    return app


def stored(session: Session, datastream_id: int | None = None) -> dict[tuple[int, int], float | None]:
    """{(stream, time): number} of what is in sensor_observations."""
    stmt = select(Observation.datastream_id, Observation.phenomenon_time, Observation.result_number)
    if datastream_id is not None:
        stmt = stmt.where(Observation.datastream_id == datastream_id)
    return {(d, t): v for d, t, v in session.execute(stmt)}


def rollup_counts(session: Session, grain: int) -> dict[int, int]:
    rows = session.execute(select(Rollup.datastream_id, func.sum(Rollup.count))
                           .where(Rollup.grain == grain).group_by(Rollup.datastream_id))
    return {d: int(c) for d, c in rows}


def raw_counts(session: Session) -> dict[int, int]:
    rows = session.execute(select(Observation.datastream_id, func.count())
                           .where(Observation.result_number.is_not(None)).group_by(Observation.datastream_id))
    return {d: int(c) for d, c in rows}


def server_app() -> FastAPI:
    """App factory for a real server process (`uvicorn --factory`), settings from CITYOS_* env."""
    from cityos.app import create_app

    return with_ingest(create_app())
