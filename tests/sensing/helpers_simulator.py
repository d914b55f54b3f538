"""Shared by the simulator's and the sensing CLI's tests: devices whose streams the simulator
knows (by `properties.code`), with credentials, and the app with the ingest API mounted."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core.access import SYSTEM
from cityos.core.models import Department
from cityos.sensing import ingest, service, simulator
from cityos.sensing.models import Datastream, Location, ObservedProperty, Sensor, Thing
from cityos.sensing.virtual import Device, Stream

ROUTE = ((126.50, 43.80), (126.52, 43.81), (126.55, 43.83))
AIR = ("pm25", "pm10", "no2", "so2", "o3", "co", "aqi")


def mounted(app: FastAPI) -> Iterator[FastAPI]:
    """The app with the ingest API (until cityos.app mounts it); its sensing runtime stopped after."""
    from cityos.sensing import api_ingest

    if not any(getattr(r, "path", "") == simulator.INGEST_PATH for r in app.routes):
        app.include_router(api_ingest.router)
    yield app
    rt = getattr(app.state.platform, "sensing", None)
    if rt is not None:
        rt.stop()


def sim_things(session: Session) -> list[Device]:
    """Three devices of 市环保局 whose streams cover every result type: measurements and a
    derived AQI, a count, a truth, and a bus's GeoJSON positions; with credentials."""
    dept = session.scalar(select(Department).where(Department.code == "220200-hbj"))
    assert dept is not None
    sensor = Sensor(department_id=dept.id, name="模拟传感器", meta="")
    prop = ObservedProperty(name="模拟", definition="urn:test:simulated")
    session.add_all([sensor, prop])
    session.flush()
    specs = [("air", "空气站", AIR, None), ("gate", "闸机", ("visitors",), None),
             ("home", "烟感", ("smoke", "gas"), None), ("bus", "公交", ("bus_position", "bus_speed"), ROUTE)]
    types = {"visitors": ingest.COUNT, "smoke": ingest.TRUTH, "bus_position": ingest.ANY}
    out = []
    for kind, name, codes, route in specs:
        thing = Thing(department_id=dept.id, name=name, kind=kind)
        thing.locations.append(Location(department_id=dept.id, name=name, lon=126.5, lat=43.8,
                                        location={"type": "Point", "coordinates": [126.5, 43.8]}))
        session.add(thing)
        session.flush()
        streams = []
        for code in codes:
            ds = Datastream(thing_id=thing.id, department_id=dept.id, sensor_id=sensor.id,
                            observed_property_id=prop.id, name=f"{name} {code}",
                            observation_type=types.get(code, ingest.MEASUREMENT),
                            unit_of_measurement={"name": None, "symbol": None, "definition": None},
                            properties={"code": code})
            session.add(ds)
            session.flush()
            streams.append(Stream(ds.id, code))
        key, secret = service.device_issue(session, SYSTEM, thing)
        out.append(Device(key, secret, thing.id, name, kind, tuple(streams), route=route or ()))
    session.commit()
    return out
