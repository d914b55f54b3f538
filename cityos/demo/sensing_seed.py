"""Build the demo city's sensors (构建演示物联感知): observed properties, sensors, things with their
places and datastreams, device credentials, a few alert rules and six hours of history.

Who owns what, as a city would have it:

- 市环保局: air monitoring stations (国控站, all six pollutants and AQI per HJ 633-2012) and air
  micro-stations (微站) in the streets; automatic water-quality stations on the Songhua;
- 市供水公司 (added by the map step): pressure and flow monitoring points on the demo water
  network in 兴华街道, each on a pipe of the network;
- 市交通局: vehicle detectors on the main and secondary roads, and buses running on six lines
  along the main roads;
- 市民政局: wearables of elderly people living alone (heart rate, SpO2, fall) and home smoke and
  gas alarms (居家养老安全), in the communities;
- 市农委: soil moisture stations on farmland in the counties; 市旅发委: visitor gates of the scenic
  areas.

Places are drawn from `geography.py` (streets, communities, roads, river, districts) with seeded
generators; names and places are approximate, for a demo. The number of things grows with the
square root of the scale: 320 at scale 1, about 10 at the tests' 0.0005.

Each Thing gets device credentials (`sensing.service.device_issue`); the secrets go to
`<data_dir>/sensing-devices.json` (0600) for the simulator, which signs in as each device. A
second build creates nothing, keeps the secrets the file still has and issues new ones only for
devices it lacks. History (the last six hours, one reading a minute or the device's interval) is
written through the ingest `Writer`, so rollups exist and the charts are not empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cityos.core import audit
from cityos.core.access import SYSTEM
from cityos.core.models import Department
from cityos.demo import hub_seed, maps_seed
from cityos.demo import sensing_data as sd
from cityos.demo.sensing_data import CREATOR, KIND_SPECS, RULES, KindSpec, Site
from cityos.sensing import ingest, rules, service, simulator, virtual
from cityos.sensing.ingest import ANY
from cityos.sensing.models import (
    Datastream,
    Group,
    Location,
    ObservedProperty,
    Rule,
    Sensor,
    Thing,
)

# -- the build ------------------------------------------------------------------------------------


@dataclass
class SensingReport:
    """What the sensing step did, and its time."""

    properties_created: int = 0
    sensors_created: int = 0
    things_created: int = 0
    things_skipped: int = 0
    datastreams_created: int = 0
    rules_created: int = 0
    credentials_issued: int = 0
    history_readings: int = 0
    devices_file: Path | None = None
    kinds: dict[str, int] = field(default_factory=dict)  # kind key -> things (new and old)
    seconds: float = 0.0

    @property
    def created(self) -> int:
        return (self.properties_created + self.sensors_created + self.things_created
                + self.datastreams_created + self.rules_created + self.credentials_issued
                + self.history_readings)


def _properties(session: Session, report: SensingReport) -> dict[str, ObservedProperty]:
    have = {(p.properties or {}).get("code"): p for p in session.scalars(select(ObservedProperty))}
    for prop in sd.PROPERTIES:
        if prop.code not in have:
            row = ObservedProperty(name=prop.name, definition=prop.definition, description=prop.description,
                                   properties={"code": prop.code})
            session.add(row)
            have[prop.code] = row
            report.properties_created += 1
    session.flush()
    return {k: v for k, v in have.items() if k}


def _sensor(session: Session, dept: Department, spec: KindSpec, report: SensingReport) -> Sensor:
    name, standard = spec.sensor
    row = session.scalar(select(Sensor).where(Sensor.department_id == dept.id, Sensor.name == name))
    if row is None:
        row = Sensor(department_id=dept.id, name=name, description=f"{name}（{standard}）",
                     encoding_type="text/plain", meta=standard, properties={"demo": True})
        session.add(row)
        session.flush()
        report.sensors_created += 1
    return row


def _thing(session: Session, dept: Department, spec: KindSpec, code: str, site: Site, sensor: Sensor,
           props: dict[str, ObservedProperty], report: SensingReport) -> Thing:
    point = {"type": "Point", "coordinates": [site.lon, site.lat]}
    thing = Thing(department_id=dept.id, name=site.name, description=spec.description, kind=spec.kind,
                  properties={"code": code, "demo": True, **site.props}, created_by=CREATOR)
    thing.locations.append(Location(department_id=dept.id, name=site.name,
                                    description=f"{site.name}（示意位置）", location=point,
                                    lon=site.lon, lat=site.lat))
    session.add(thing)
    session.flush()
    interval = int(virtual.KINDS[spec.kind].interval)
    for code_ in spec.streams:
        s = sd.STREAMS[code_]
        name, symbol, definition = s.unit
        session.add(Datastream(
            kind="single", thing_id=thing.id, department_id=dept.id, sensor_id=sensor.id,
            observed_property_id=props[s.prop].id, name=f"{site.name} {s.title}",
            description=f"{site.name}的{s.title}（{props[s.prop].name}）", observation_type=s.type,
            unit_of_measurement={"name": name, "symbol": symbol, "definition": definition},
            properties={"code": s.code}, interval_seconds=interval,
            retention_days=sd.POSITION_RETENTION_DAYS if s.type == ANY else None))
        report.datastreams_created += 1
    session.flush()
    report.things_created += 1
    return thing


def _things(session: Session, scale: float, report: SensingReport, advance: Callable[[int], None]) -> None:
    props = _properties(session, report)
    depts = {d.code: d for d in session.scalars(select(Department).where(Department.code.in_(
        {s.department for s in KIND_SPECS})))}
    have = {(t.properties or {}).get("code") for t in session.scalars(
        select(Thing).where(Thing.created_by == CREATOR))}
    for spec in KIND_SPECS:
        dept = depts.get(spec.department)
        if dept is None:  # 市供水公司 comes with the map; without it, no pipe sensors
            advance(1)
            continue
        sites = spec.sites(sd.how_many(spec, scale), scale)
        sensor = _sensor(session, dept, spec, report)
        made = 0
        for i, site in enumerate(sites, start=1):
            code = f"{spec.key}-{i:03d}"
            if code in have:
                report.things_skipped += 1
                continue
            _thing(session, dept, spec, code, site, sensor, props, report)
            made += 1
        report.kinds[spec.key] = len(sites)
        if made:  # a second build changes nothing, and records nothing
            audit.append(session, actor=SYSTEM.name, action="sensing.demo.things", department=dept.code,
                         object_type="sensing.thing", object_id=spec.key, detail={"things": made})
        session.commit()
        advance(1)


# -- rules (告警规则) -------------------------------------------------------------------------------


def _bus_group(session: Session, depts: dict[str, Department]) -> None:
    """The group of line 1's buses (1路公交车), which the geofence rule watches."""
    if sd.TRANSPORT not in depts:
        return
    line = sd.BUS_LINES[0]
    buses = [t.id for t in _demo_things(session)
             if t.kind == "bus" and (t.properties or {}).get("line") == line]
    group = session.scalar(select(Group).where(Group.code == sd.BUS_GROUP[0]))
    if group is None:
        rules.group_create(session, SYSTEM, sd.BUS_GROUP[0], sd.BUS_GROUP[1], sd.TRANSPORT, buses)
    elif sorted(t.id for t in group.things) != sorted(buses):
        rules.group_set_things(session, SYSTEM, group.id, buses)
    session.flush()


def _target_id(session: Session, target: tuple[str, str], props: dict[str, ObservedProperty]) -> int | None:
    kind, name = target
    if kind == "property":
        return props[name].id if name in props else None
    if kind == "group":
        return session.scalar(select(Group.id).where(Group.code == name))
    thing_code, stream = name.split(":")
    for thing in _demo_things(session):
        if (thing.properties or {}).get("code") == thing_code:
            return next((d.id for d in thing.datastreams if (d.properties or {}).get("code") == stream), None)
    return None


def _rules(session: Session, report: SensingReport) -> None:
    """The demo's alert rules, through `rules.rule_create` (checked and audited like anyone's)."""
    depts = {d.code: d for d in session.scalars(select(Department).where(Department.code.in_(
        {r.department for r in RULES})))}
    _bus_group(session, depts)
    props = {(p.properties or {}).get("code"): p for p in session.scalars(select(ObservedProperty))}
    have = {(d, n) for d, n in session.execute(select(Rule.department_id, Rule.name))}
    for spec in RULES:
        dept = depts.get(spec.department)
        if dept is None or (dept.id, spec.name) in have:
            continue
        target = _target_id(session, spec.target, props)
        if target is None:
            continue
        rules.rule_create(session, SYSTEM, {
            "department": spec.department, "name": spec.name, "kind": spec.kind,
            "target_type": spec.target[0], "target_id": target, "params": spec.params(),
            "severity": spec.severity})
        report.rules_created += 1
    session.commit()


# -- credentials and the devices file (设备凭证) ------------------------------------------------------


def _demo_things(session: Session) -> list[Thing]:
    return list(session.scalars(select(Thing).where(Thing.created_by == CREATOR).order_by(Thing.id)))


def device_of(thing: Thing, secret: str) -> virtual.Device:
    """The simulator's view of a Thing: its key and secret, streams by code, place and route."""
    loc = thing.locations[0] if thing.locations else None
    streams = tuple(virtual.Stream(d.id, (d.properties or {}).get("code", "")) for d in
                    sorted(thing.datastreams, key=lambda d: d.id))
    route = _route_of(thing)
    return virtual.Device(thing.device_key or "", secret, thing.id, thing.name, thing.kind or "", streams,
                            loc.lon if loc else None, loc.lat if loc else None, route)


def _route_of(thing: Thing) -> tuple[tuple[float, float], ...]:
    line = (thing.properties or {}).get("line")
    if thing.kind != "bus" or not line:
        return ()
    return next((route for name, _road, route in sd.bus_routes() if name == line), ())


def _credentials(session: Session, path: Path, report: SensingReport) -> None:
    """Every demo device with a working secret in the devices file: the file's own where its key is
    still the Thing's, else a new one. Other devices the file holds (`cityos sensing credentials
    --save`) stay while their key is still their Thing's."""
    known = {d.thing_id: d for d in (simulator.load_devices(path) if path.exists() else [])}
    devices = []
    for thing in _demo_things(session):
        old = known.pop(thing.id, None)
        if old is not None and thing.device_key and old.key == thing.device_key:
            secret = old.secret
        else:
            _key, secret = service.device_issue(session, SYSTEM, thing)
            report.credentials_issued += 1
        devices.append(device_of(thing, secret))
    session.commit()
    keys = {i: k for i, k in session.execute(select(Thing.id, Thing.device_key)
                                             .where(Thing.id.in_(list(known))))}
    others = [d for d in known.values() if keys.get(d.thing_id) == d.key]
    simulator.save_devices(path, [*devices, *others])
    report.devices_file = path


# -- history (历史数据) -----------------------------------------------------------------------------


def _history_devices(session: Session, per_kind: int) -> Iterator[tuple[virtual.Device, set[str] | None]]:
    """Every stream of the first things of each kind, and PM2.5, PM10 and AQI of every air station."""
    seen: dict[str, int] = {}
    for thing in _demo_things(session):
        key = str((thing.properties or {}).get("code", ""))[:-4]
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= per_kind:
            yield device_of(thing, ""), None
        elif thing.kind == "air":
            yield device_of(thing, ""), {"pm25", "pm10", "aqi"}


def _history(session: Session, engine: Engine, scale: float, report: SensingReport) -> None:
    now = ingest.now_ms()
    start = now - sd.HISTORY_HOURS * 3_600_000
    todo = [(d, codes) for d, codes in _history_devices(session, 2 if scale >= 0.01 else 1)
            if not any(ds.last_time for ds in session.get_one(Thing, d.thing_id).datastreams)]
    session.commit()
    if not todo:
        return
    writer = ingest.Writer(engine)
    try:
        rows: list[ingest.Row] = []
        for device, codes in todo:
            sim = virtual.VirtualDevice(device, seed=virtual.SEED)
            step = int(max(60.0, sim.interval) * 1000)
            wanted = {s.id for s in device.streams if codes is None or s.code in codes}
            infos = writer.streams.many(wanted)
            for t in range(start - start % step + step, now, step):
                for ds, value in sim.read(t).items():
                    if ds in wanted:
                        rows.append(ingest.compact_row(infos[ds], {"t": t, "v": value}, "history", now))
            if len(rows) >= 10_000:
                report.history_readings += len(writer.write_sync(rows).new)
                rows = []
        if rows:
            report.history_readings += len(writer.write_sync(rows).new)
    finally:
        writer.stop()


def build_sensing(session: Session, scale: float, data_dir: Path,
                  console: Console | None = None) -> SensingReport:
    """The demo city's sensors at `scale`: things, credentials (to data_dir/sensing-devices.json),
    rules and six hours of history. Idempotent."""
    started = time.monotonic()
    report = SensingReport()
    bars = hub_seed.Bars(console)
    with bars.progress or nullcontext(), bars.task("物联感知 Sensing", len(KIND_SPECS) + 3) as advance:
        _things(session, scale, report, advance)
        _rules(session, report)
        advance(1)
        _credentials(session, Path(data_dir) / simulator.DEVICES_FILE, report)
        advance(1)
        bind = session.get_bind()
        _history(session, bind if isinstance(bind, Engine) else bind.engine, scale, report)
        advance(1)
    report.seconds = time.monotonic() - started
    return report


def summary_line(report: SensingReport) -> str:
    things = sum(report.kinds.values())
    return (f"sensing / 物联感知: {report.things_created} things created ({things} in all, "
            f"{report.datastreams_created} datastreams), {report.rules_created} rules, "
            f"{report.credentials_issued} device credentials issued to {report.devices_file}, "
            f"{report.history_readings:,} readings of history ({report.things_skipped} things already there; "
            f"{report.seconds:.1f} s)")


def try_table(password: str) -> Table:
    """Who to sign in as to see the sensors at work (试一试)."""
    table = Table("username / 用户名", "what to try / 试一试", title="Try sensing / 体验物联感知",
                  caption=f"password / 密码: {password}")
    table.add_row("env_staff", "市环保局's air and water stations: readings, the PM2.5 rule and its alerts")
    table.add_row(f"{maps_seed.WATER[3]}_staff", "市供水公司's pressure points on the water network; "
                  "a burst trips the pressure rules")
    table.add_row("transport_staff", "buses moving along six lines; 1路 leaving its corridor raises "
                  "a geofence alert")
    table.add_row("—", "cityos simulate --rate 200 --via mqtt: more devices, over MQTT")
    return table
