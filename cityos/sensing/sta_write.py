"""Writing SensorThings entities (写入): create with deep insert and links, update, delete.

Entities are made inside the caller's session and committed by the caller; readings are not:
`observation_row` only checks one and returns its `store.Row`, which the caller hands to the ingest
writer after COMMIT, so a reading is stored exactly as every other path in stores it (dedupe,
rollups, stream spans, listeners). Changing or deleting a stored reading recomputes the rollup
buckets and stream span it touched in the same transaction.

Choices the standard leaves open:
- A Thing belongs to a department: the creator's, or `properties.department` (a department code)
  when the creator may write there; the code is shown back in `properties.department`, and
  changing it moves the Thing with its Datastreams.
- Linking a new Location to a Thing replaces the Thing's Locations (a Thing is in one place) and
  writes a HistoricalLocation, as does changing a Thing's Locations in any way.
- Deleting a Thing deletes its Datastreams and their readings; deleting a Sensor,
  ObservedProperty or FeatureOfInterest that is still used is refused (409): they are shared, and
  a cascade through a city-wide ObservedProperty would reach other departments' data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import shapely.geometry
from sqlalchemy import delete, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from cityos.core import access, audit
from cityos.core.access import Actor, Target
from cityos.core.errors import Conflict, Invalid
from cityos.core.models import Department
from cityos.sensing import ingest, service
from cityos.sensing.ingest import StreamInfo, Writer, parse_interval, parse_time
from cityos.sensing.models import (
    Datastream,
    FeatureOfInterest,
    HistoricalLocation,
    Location,
    Observation,
    ObservedProperty,
    Rollup,
    Sensor,
    Thing,
    historical_location_locations,
    multi_datastream_properties,
)
from cityos.sensing.sta_entities import SETS, Reader
from cityos.sensing.store import GRAINS, Row

SINGLE_TYPES = (ingest.MEASUREMENT, ingest.COUNT, ingest.TRUTH, ingest.CATEGORY, ingest.ANY)
GEOJSON_TYPES = ("application/geo+json", "application/vnd.geo+json")
MEMBERS_REASON = ("ObservedProperties, unitOfMeasurements and multiObservationDataTypes must be non-empty "
                  "arrays of one length / 三个数组须非空且长度相同")
DATA_ARRAY_COMPONENTS = ("id", "phenomenonTime", "result", "resultTime", "resultQuality", "validTime",
                         "parameters", "FeatureOfInterest/id")


@dataclass
class Ctx:
    """One write request: the session, who writes, and what to do after COMMIT."""

    session: Session
    actor: Actor
    reader: Reader
    writer: Writer
    now: int = field(default_factory=ingest.now_ms)
    rows: list[Row] = field(default_factory=list)  # readings of a deep insert, written after COMMIT
    forget_all: bool = False
    forget: set[int] = field(default_factory=set)
    _depts: dict[int, Department] = field(default_factory=dict)

    def dept(self, dept_id: int) -> Department:
        """A department row, cached for the request."""
        if dept_id not in self._depts:
            found = self.session.get(Department, dept_id)
            assert found is not None
            self._depts[dept_id] = found
        return self._depts[dept_id]

    def require(self, dept_id: int | None, kind: str, entity_id: object = None) -> None:
        """sensing.write on a department's object (None: the actor's own, for city-wide ones)."""
        if dept_id is None:
            dept_id = self.actor.department_id
        path = self.dept(dept_id).path if dept_id is not None else None
        access.require(self.actor, "sensing.write", Target(kind, entity_id, dept_id, path), self.session)

    def audit(self, action: str, kind: str, entity_id: object, detail: dict[str, Any] | None = None) -> None:
        """Record a change in the audit chain, inside the write's transaction."""
        audit.append(self.session, actor=self.actor.name, department=self.actor.department_code,
                     action=f"sensing.{action}", object_type=f"sensing.{kind}", object_id=entity_id,
                     detail=detail)

    def after_commit(self) -> None:
        """Drop cached stream facts the request changed (ingest reads them for every reading)."""
        if self.forget_all:
            self.writer.streams.forget()
        for ds in self.forget:
            self.writer.streams.forget(ds)


# -- input checks ---------------------------------------------------------------------------------


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def obj(value: Any, where: str) -> dict[str, Any]:
    """The value as a JSON object, or Invalid naming where it is."""
    if not isinstance(value, dict):
        raise Invalid(where or "body", "must be a JSON object / 应为 JSON 对象")
    return value


def _keys(body: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    known = set(allowed)
    for key in body:
        if key not in known and "@iot." not in key:  # ids and links of an entity read before
            raise Invalid(_at(where, key), "unknown field / 未知字段")


def _text(body: dict[str, Any], key: str, where: str, required: bool = False, max_len: int = 200,
          default: str = "") -> str:
    value = body.get(key)
    if value is None:
        if required:
            raise Invalid(_at(where, key), "required / 必填")
        return default
    if not isinstance(value, str):
        raise Invalid(_at(where, key), "must be a string / 应为字符串")
    if required and not value.strip():
        raise Invalid(_at(where, key), "must not be empty / 不能为空")
    if len(value) > max_len:
        raise Invalid(_at(where, key), f"longer than {max_len} characters / 超过 {max_len} 个字符")
    return value


def _props(body: dict[str, Any], where: str, key: str = "properties") -> dict[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise Invalid(_at(where, key), "must be a JSON object / 应为 JSON 对象")
    return dict(value) if value is not None else None


def _list(body: dict[str, Any], key: str, where: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(_at(where, key), "must be an array / 应为数组")
    return value


def geojson(value: Any, where: str) -> tuple[dict[str, Any], float, float]:
    """A GeoJSON geometry or Feature, and a representative point (lon, lat) of it."""
    if not isinstance(value, dict):
        raise Invalid(where, "must be a GeoJSON object / 应为 GeoJSON 对象")
    geom = value.get("geometry") if value.get("type") == "Feature" else value
    try:
        shape = shapely.geometry.shape(geom)
    except Exception as exc:  # shapely raises several kinds for malformed GeoJSON
        raise Invalid(where, f"not a GeoJSON geometry: {exc} / 不是有效的 GeoJSON 几何") from None
    if shape.is_empty:
        raise Invalid(where, "empty geometry / 几何为空")
    point = shape if shape.geom_type == "Point" else shape.representative_point()
    lon, lat = point.x, point.y
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise Invalid(where, "coordinates are not longitude/latitude in CRS84 / 坐标应为经纬度")
    return value, lon, lat


def _unit(value: Any, where: str) -> dict[str, Any]:
    unit = obj(value, where)
    _keys(unit, ("name", "symbol", "definition"), where)
    for key in ("name", "symbol", "definition"):
        if unit.get(key) is not None and not isinstance(unit[key], str):
            raise Invalid(_at(where, key), "must be a string / 应为字符串")
    return {k: unit.get(k) for k in ("name", "symbol", "definition")}


def _items(body: dict[str, Any], key: str, where: str) -> list[tuple[Any, str]]:
    """The members of an array with where each one is ("Locations[0]")."""
    return [(v, f"{_at(where, key)}[{i}]") for i, v in enumerate(_list(body, key, where))]


def _set_members(ctx: Ctx, ds: Datastream, props: list[ObservedProperty]) -> None:
    if props:
        rows = [{"datastream_id": ds.id, "position": i, "observed_property_id": p.id}
                for i, p in enumerate(props)]
        ctx.session.execute(insert(multi_datastream_properties), rows)


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# -- links and deep insert ------------------------------------------------------------------------


def _linked(ctx: Ctx, set_name: str, value: dict[str, Any], where: str) -> Any:
    """An existing entity named by {"@iot.id": n} that the actor may see."""
    es = SETS[set_name]
    entity_id = value["@iot.id"]
    if isinstance(entity_id, bool) or not isinstance(entity_id, int):
        raise Invalid(_at(where, "@iot.id"), "must be an integer id / 应为整数 id")
    found = ctx.session.scalar(select(es.model).where(es.model.id == entity_id, *ctx.reader.where(es)))
    if found is None:
        raise Invalid(_at(where, "@iot.id"), f"no {es.singular} with id {entity_id} / {es.singular} 不存在")
    return found


def entity(ctx: Ctx, set_name: str, value: Any, where: str, **parent: Any) -> Any:
    """Link an existing entity or create a new one (deep insert)."""
    body = obj(value, where)
    if "@iot.id" in body:
        return _linked(ctx, set_name, body, where)
    return CREATE[set_name](ctx, body, where, **parent)


def _department(ctx: Ctx, props: dict[str, Any] | None, where: str) -> Department:
    code = props.pop("department", None) if props else None
    if code is not None:
        if not isinstance(code, str):
            raise Invalid(_at(where, "properties.department"), "must be a department code / 应为部门代码")
        dept = ctx.session.scalar(select(Department).where(Department.code == code))
        if dept is None:
            raise Invalid(_at(where, "properties.department"), f"no department {code} / 部门不存在")
        return dept
    if ctx.actor.department_id is None:
        raise Invalid(_at(where, "properties.department"),
                      "required: you belong to no department, name the Thing's one "
                      "/ 必填：请指定设备所属部门代码")
    return ctx.dept(ctx.actor.department_id)


def set_locations(ctx: Ctx, thing: Thing, locations: list[Location]) -> None:
    """Where a Thing is now; a move is kept as a HistoricalLocation (历史位置)."""
    if {loc.id for loc in thing.locations} == {loc.id for loc in locations}:
        return  # e.g. a client PUTting back the entity it read
    thing.locations = locations
    if locations:
        ctx.session.add(HistoricalLocation(thing_id=thing.id, time=ctx.now, locations=list(locations)))
    ctx.forget_all = True  # readings without a FeatureOfInterest take the new Location's


# -- create ---------------------------------------------------------------------------------------


def create_thing(ctx: Ctx, body: dict[str, Any], where: str, **_: Any) -> Thing:
    """A Thing in a department, with its Locations, Datastreams and MultiDatastreams."""
    _keys(body, ("name", "description", "properties", "Locations", "Datastreams", "MultiDatastreams"), where)
    props = _props(body, where)
    dept = _department(ctx, props, where)
    ctx.require(dept.id, "sensing.thing")
    kind = props.get("kind") if props else None
    thing = Thing(department_id=dept.id, name=_text(body, "name", where, True),
                  description=_text(body, "description", where, max_len=10_000), properties=props,
                  kind=kind if isinstance(kind, str) and len(kind) <= 32 else None, created_by=ctx.actor.name)
    ctx.session.add(thing)
    ctx.session.flush()
    locs = [entity(ctx, "Locations", v, at, dept_id=dept.id) for v, at in _items(body, "Locations", where)]
    set_locations(ctx, thing, locs)
    for key, multi in (("Datastreams", False), ("MultiDatastreams", True)):
        for v, at in _items(body, key, where):
            _stream_under(ctx, thing, v, at, multi)
    ctx.audit("thing.create", "thing", thing.id, {"name": thing.name, "department": dept.code})
    return thing


def _stream_under(ctx: Ctx, thing: Thing, value: Any, where: str, multi: bool) -> None:
    body = obj(value, where)
    if "@iot.id" not in body:
        create_datastream(ctx, body, where, thing=thing, multi=multi)
        return
    ds = _linked(ctx, "MultiDatastreams" if multi else "Datastreams", body, where)
    ctx.require(ds.department_id, "sensing.datastream", ds.id)
    ds.thing_id, ds.department_id = thing.id, thing.department_id
    ctx.forget.add(ds.id)


def create_location(ctx: Ctx, body: dict[str, Any], where: str, dept_id: int | None = None,
                    things: list[Thing] | None = None, **_: Any) -> Location:
    """A Location; linked to Things it becomes their current one."""
    _keys(body, ("name", "description", "encodingType", "location", "properties", "Things"), where)
    linked = [*(things or []),
              *(_linked(ctx, "Things", obj(v, at), at) for v, at in _items(body, "Things", where))]
    for t in linked:
        ctx.require(t.department_id, "sensing.thing", t.id)
    if dept_id is None:
        dept_id = linked[0].department_id if linked else ctx.actor.department_id
        ctx.require(dept_id, "sensing.location")
    encoding = _text(body, "encodingType", where, True, 64)
    if encoding not in GEOJSON_TYPES:
        raise Invalid(_at(where, "encodingType"), "only application/geo+json is supported / 仅支持 GeoJSON")
    if body.get("location") is None:
        raise Invalid(_at(where, "location"), "required / 必填")
    geo, lon, lat = geojson(body["location"], _at(where, "location"))
    loc = Location(department_id=dept_id, name=_text(body, "name", where, True),
                   description=_text(body, "description", where, max_len=10_000), encoding_type=encoding,
                   location=geo, properties=_props(body, where), lon=lon, lat=lat)
    ctx.session.add(loc)
    ctx.session.flush()
    for t in linked:
        set_locations(ctx, t, [loc])
    ctx.audit("location.create", "location", loc.id, {"name": loc.name})
    return loc


def create_sensor(ctx: Ctx, body: dict[str, Any], where: str, dept_id: int | None = None, **_: Any) -> Sensor:
    """A Sensor, of the department of the Thing it comes with, or the actor's."""
    _keys(body, ("name", "description", "encodingType", "metadata", "properties"), where)
    if dept_id is None:
        dept_id = ctx.actor.department_id
        ctx.require(dept_id, "sensing.sensor")
    if body.get("metadata") is None:
        raise Invalid(_at(where, "metadata"), "required / 必填")
    sensor = Sensor(department_id=dept_id, name=_text(body, "name", where, True),
                    description=_text(body, "description", where, max_len=10_000),
                    encoding_type=_text(body, "encodingType", where, True, 128), meta=body["metadata"],
                    properties=_props(body, where))
    ctx.session.add(sensor)
    ctx.session.flush()
    ctx.audit("sensor.create", "sensor", sensor.id, {"name": sensor.name})
    return sensor


def create_observed_property(ctx: Ctx, body: dict[str, Any], where: str, **_: Any) -> ObservedProperty:
    """An ObservedProperty (city-wide; anyone with sensing.write may add one)."""
    _keys(body, ("name", "definition", "description", "properties"), where)
    ctx.require(None, "sensing.observed_property")
    prop = ObservedProperty(name=_text(body, "name", where, True),
                            definition=_text(body, "definition", where, True, 500),
                            description=_text(body, "description", where, max_len=10_000),
                            properties=_props(body, where))
    ctx.session.add(prop)
    ctx.session.flush()
    ctx.audit("observed_property.create", "observed_property", prop.id, {"name": prop.name})
    return prop


def create_feature(ctx: Ctx, body: dict[str, Any], where: str, checked: bool = False,
                   **_: Any) -> FeatureOfInterest:
    """A FeatureOfInterest; `checked` when it comes with a reading the actor may send."""
    _keys(body, ("name", "description", "encodingType", "feature", "properties"), where)
    if not checked:
        ctx.require(None, "sensing.feature")
    encoding = _text(body, "encodingType", where, True, 64)
    if encoding not in GEOJSON_TYPES:
        raise Invalid(_at(where, "encodingType"), "only application/geo+json is supported / 仅支持 GeoJSON")
    if body.get("feature") is None:
        raise Invalid(_at(where, "feature"), "required / 必填")
    feature = FeatureOfInterest(name=_text(body, "name", where, True),
                                description=_text(body, "description", where, max_len=10_000),
                                encoding_type=encoding,
                                feature=geojson(body["feature"], _at(where, "feature"))[0],
                                properties=_props(body, where))
    ctx.session.add(feature)
    ctx.session.flush()
    if not checked:
        ctx.audit("feature.create", "feature", feature.id, {"name": feature.name})
    return feature


def _observation_type(body: dict[str, Any], where: str, multi: bool) -> str:
    typ = _text(body, "observationType", where, True, 200)
    allowed = (ingest.COMPLEX,) if multi else SINGLE_TYPES
    if typ not in allowed:
        raise Invalid(_at(where, "observationType"), f"must be one of {', '.join(allowed)} / 观测类型不支持")
    return typ


def _member_types(body: dict[str, Any], where: str) -> list[str]:
    types = _list(body, "multiObservationDataTypes", where)
    for i, t in enumerate(types):
        if t not in SINGLE_TYPES:
            raise Invalid(f"{_at(where, 'multiObservationDataTypes')}[{i}]",
                          f"must be one of {', '.join(SINGLE_TYPES)} / 观测类型不支持")
    return types


def create_datastream(ctx: Ctx, body: dict[str, Any], where: str, thing: Thing | None = None,
                      multi: bool = False, **_: Any) -> Datastream:
    """A Datastream or MultiDatastream of a Thing, with Sensor and properties linked or new."""
    own = ("unitOfMeasurements", "multiObservationDataTypes", "ObservedProperties") if multi else \
        ("unitOfMeasurement", "ObservedProperty")
    _keys(body, ("name", "description", "observationType", "observedArea", "phenomenonTime", "resultTime",
                 "properties", "Thing", "Sensor", "Observations", *own), where)
    if thing is None:
        if body.get("Thing") is None:
            raise Invalid(_at(where, "Thing"), "required / 必填")
        thing = entity(ctx, "Things", body["Thing"], _at(where, "Thing"))
    assert thing is not None
    ctx.require(thing.department_id, "sensing.datastream")
    for key in ("Sensor", *(() if multi else ("ObservedProperty", "unitOfMeasurement"))):
        if body.get(key) is None:
            raise Invalid(_at(where, key), "required / 必填")
    sensor = entity(ctx, "Sensors", body["Sensor"], _at(where, "Sensor"), dept_id=thing.department_id)
    area = geojson(body["observedArea"], _at(where, "observedArea"))[0] if body.get("observedArea") else None
    ds = Datastream(kind="multi" if multi else "single", thing_id=thing.id, department_id=thing.department_id,
                    sensor_id=sensor.id, name=_text(body, "name", where, True),
                    description=_text(body, "description", where, max_len=10_000),
                    observation_type=_observation_type(body, where, multi), observed_area=area,
                    properties=_props(body, where))
    props: list[ObservedProperty] = []
    if multi:
        props = [entity(ctx, "ObservedProperties", v, at)
                 for v, at in _items(body, "ObservedProperties", where)]
        units = [_unit(v, at) for v, at in _items(body, "unitOfMeasurements", where)]
        types = _member_types(body, where)
        if not props or not (len(props) == len(units) == len(types)):
            raise Invalid(_at(where, "ObservedProperties"), MEMBERS_REASON)
        ds.unit_of_measurement, ds.multi_observation_types = units, types
    else:
        ds.observed_property_id = entity(ctx, "ObservedProperties", body["ObservedProperty"],
                                         _at(where, "ObservedProperty")).id
        ds.unit_of_measurement = _unit(body["unitOfMeasurement"], _at(where, "unitOfMeasurement"))
    ctx.session.add(ds)
    ctx.session.flush()
    _set_members(ctx, ds, props)
    ctx.forget.add(ds.id)
    ctx.audit(f"{'multi_datastream' if multi else 'datastream'}.create", "datastream", ds.id,
              {"name": ds.name})
    observations = _list(body, "Observations", where)
    if observations:
        dept = ctx.dept(thing.department_id)
        info = StreamInfo(ds.id, ds.kind, ds.department_id, dept.path, thing.id, thing.device_key,
                          ds.observation_type, len(props), tuple(ds.multi_observation_types or ()),
                          ingest.auto_feature(ctx.session, thing.id))
        for v, at in _items(body, "Observations", where):
            ctx.rows.append(observation_row(ctx, obj(v, at), at, info=info))
    return ds


def create_historical_location(ctx: Ctx, body: dict[str, Any], where: str, **_: Any) -> HistoricalLocation:
    """A HistoricalLocation written by hand (moves write their own)."""
    _keys(body, ("time", "Thing", "Locations"), where)
    if body.get("Thing") is None:
        raise Invalid(_at(where, "Thing"), "required / 必填")
    thing = _linked(ctx, "Things", obj(body["Thing"], _at(where, "Thing")), _at(where, "Thing"))
    ctx.require(thing.department_id, "sensing.thing", thing.id)
    locs = [_linked(ctx, "Locations", obj(v, at), at) for v, at in _items(body, "Locations", where)]
    when = parse_time(body["time"], _at(where, "time"), ctx.now) if body.get("time") is not None else ctx.now
    hist = HistoricalLocation(thing_id=thing.id, time=when, locations=locs)
    ctx.session.add(hist)
    ctx.session.flush()
    ctx.audit("historical_location.create", "historical_location", hist.id)
    return hist


CREATE: dict[str, Any] = {
    "Things": create_thing, "Locations": create_location, "Sensors": create_sensor,
    "ObservedProperties": create_observed_property, "FeaturesOfInterest": create_feature,
    "Datastreams": create_datastream, "HistoricalLocations": create_historical_location,
    "MultiDatastreams": lambda ctx, body, where, **kw: create_datastream(ctx, body, where, multi=True, **kw),
}


# -- readings -------------------------------------------------------------------------------------


def stream_of(ctx: Ctx, body: dict[str, Any], where: str, path_stream: tuple[str, int] | None) -> StreamInfo:
    """The stream a reading goes to (from the URL or its Datastream/MultiDatastream link), checked
    for the actor: a device only to its own streams."""
    if path_stream is not None:
        key, stream_id = path_stream
    else:
        keys = [k for k in ("Datastream", "MultiDatastream") if body.get(k) is not None]
        if len(keys) != 1:
            raise Invalid(_at(where, "Datastream"), "name exactly one Datastream or MultiDatastream by "
                                                    '{"@iot.id": n} / 须指定一个数据流')
        key = keys[0]
        link = obj(body[key], _at(where, key))
        stream_id = link.get("@iot.id")
        if isinstance(stream_id, bool) or not isinstance(stream_id, int):
            raise Invalid(_at(where, f"{key}.@iot.id"), "link an existing stream by its integer id "
                                                        "/ 须用整数 id 关联已有数据流")
    info = ctx.writer.streams.get(stream_id)
    if info is None or info.kind != ("multi" if key == "MultiDatastream" else "single"):
        raise Invalid(_at(where, key), f"no {key} with id {stream_id} / 数据流不存在")
    service.check_stream_write(ctx.session, ctx.actor, info)
    return info


def _feature_id(ctx: Ctx, info: StreamInfo, body: dict[str, Any], where: str) -> int:
    value = body.get("FeatureOfInterest")
    if value is None:
        if info.foi_id is None:
            raise Invalid(_at(where, "FeatureOfInterest"),
                          "required: the Thing of this stream has no Location to derive it from "
                          "/ 必填：该数据流的设备没有位置，无法生成观测对象")
        return info.foi_id
    link = obj(value, _at(where, "FeatureOfInterest"))
    if "@iot.id" not in link:
        return create_feature(ctx, link, _at(where, "FeatureOfInterest"), checked=True).id
    foi_id = link["@iot.id"]
    if isinstance(foi_id, bool) or not isinstance(foi_id, int) or \
            ctx.session.get(FeatureOfInterest, foi_id) is None:
        raise Invalid(_at(where, "FeatureOfInterest.@iot.id"),
                      f"no FeatureOfInterest with id {foi_id} / 观测对象不存在")
    return foi_id


def _valid_time(body: dict[str, Any], where: str, now: int) -> tuple[int | None, int | None]:
    if body.get("validTime") is None:
        return None, None
    start, end = parse_interval(body["validTime"], _at(where, "validTime"), now)
    return start, end if end is not None else start


def observation_row(ctx: Ctx, body: dict[str, Any], where: str, info: StreamInfo | None = None,
                    path_stream: tuple[str, int] | None = None) -> Row:
    """A reading as a `store.Row`, checked against its stream; nothing is stored here."""
    _keys(body, ("phenomenonTime", "resultTime", "result", "resultQuality", "validTime", "parameters",
                 "Datastream", "MultiDatastream", "FeatureOfInterest"), where)
    if info is None:
        info = stream_of(ctx, body, where, path_stream)
    start, end = (ctx.now, None) if body.get("phenomenonTime") is None else \
        parse_interval(body["phenomenonTime"], _at(where, "phenomenonTime"), ctx.now)
    result_time = None if body.get("resultTime") is None else \
        parse_time(body["resultTime"], _at(where, "resultTime"), ctx.now)
    if "result" not in body:
        raise Invalid(_at(where, "result"), "required / 必填")
    number, js = ingest.check_result(info, body["result"], _at(where, "result"))
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise Invalid(_at(where, "parameters"), "must be a JSON object / 应为 JSON 对象")
    valid_start, valid_end = _valid_time(body, where, ctx.now)
    return (info.id, start, end, result_time, number, js, _dumps(body.get("resultQuality")), valid_start,
            valid_end, _dumps(params), _feature_id(ctx, info, body, where))


def data_array_rows(ctx: Ctx, body: Any) -> list[Row | None]:
    """The readings of a CreateObservations body, in order; None for each one that is invalid
    (answered "error"). A group naming no usable stream fails the whole request."""
    if not isinstance(body, list):
        raise Invalid("body", "an array of {Datastream, components, dataArray} / 应为数组")
    out: list[Row | None] = []
    for i, value in enumerate(body):
        where = f"[{i}]"
        group = obj(value, where)
        _keys(group, ("Datastream", "MultiDatastream", "components", "dataArray"), where)
        info = stream_of(ctx, group, where, None)
        comps = group.get("components")
        if not isinstance(comps, list) or "result" not in comps or len(set(comps)) != len(comps) or \
                any(c not in DATA_ARRAY_COMPONENTS for c in comps):
            raise Invalid(f"{where}.components", "an array of distinct names including result, of: "
                                                 f"{', '.join(DATA_ARRAY_COMPONENTS)} / 组件列表无效")
        rows = group.get("dataArray")
        if not isinstance(rows, list):
            raise Invalid(f"{where}.dataArray", "must be an array of arrays / 应为二维数组")
        for j, values in enumerate(rows):
            at = f"{where}.dataArray[{j}]"
            try:
                if not isinstance(values, list) or len(values) != len(comps):
                    raise Invalid(at, f"must be an array of {len(comps)} values / 应为 {len(comps)} 个值")
                item = {c: v for c, v in zip(comps, values, strict=True) if c != "id"}
                if "FeatureOfInterest/id" in item:
                    item["FeatureOfInterest"] = {"@iot.id": item.pop("FeatureOfInterest/id")}
                out.append(observation_row(ctx, item, at, info=info))
            except Invalid:
                out.append(None)
    return out


# -- update ---------------------------------------------------------------------------------------


def _set_text(body: dict[str, Any], target: Any, pairs: Iterable[tuple[str, str, int]], where: str) -> None:
    for key, attr, most in pairs:
        if key in body:
            setattr(target, attr, _text(body, key, where, key == "name" or key == "definition", most))


_BASIC = (("name", "name", 200), ("description", "description", 10_000))


def patch(ctx: Ctx, set_name: str, target: Any, body: dict[str, Any]) -> None:
    """PATCH: change the given properties and links of one entity."""
    if set_name == "Observations":
        _update_observation(ctx, target, body)
        return
    UPDATE[set_name](ctx, target, body)
    if "properties" in body and set_name != "Things":
        target.properties = _props(body, "")
    ctx.session.flush()
    ctx.audit(f"{SETS[set_name].singular.lower()}.update", SETS[set_name].singular.lower(), target.id,
              {"fields": sorted(body)})


def _update_thing(ctx: Ctx, thing: Thing, body: dict[str, Any]) -> None:
    _keys(body, ("name", "description", "properties", "Locations"), "")
    ctx.require(thing.department_id, "sensing.thing", thing.id)
    _set_text(body, thing, _BASIC, "")
    if "properties" in body:
        props = _props(body, "")
        if props and "department" in props:
            dept = _department(ctx, props, "")
            if dept.id != thing.department_id:
                ctx.require(dept.id, "sensing.thing", thing.id)
                ctx.session.execute(update(Datastream).where(Datastream.thing_id == thing.id)
                                    .values(department_id=dept.id))
                thing.department_id = dept.id
                ctx.forget_all = True
        thing.properties = props
    if "Locations" in body:
        set_locations(ctx, thing, [entity(ctx, "Locations", v, at, dept_id=thing.department_id)
                                   for v, at in _items(body, "Locations", "")])


def _update_location(ctx: Ctx, loc: Location, body: dict[str, Any]) -> None:
    _keys(body, ("name", "description", "encodingType", "location", "properties"), "")
    ctx.require(loc.department_id, "sensing.location", loc.id)
    _set_text(body, loc, _BASIC, "")
    if "encodingType" in body and _text(body, "encodingType", "", True, 64) not in GEOJSON_TYPES:
        raise Invalid("encodingType", "only application/geo+json is supported / 仅支持 GeoJSON")
    if "location" in body:
        loc.location, loc.lon, loc.lat = geojson(body["location"], "location")
    ctx.forget_all = True


def _update_sensor(ctx: Ctx, sensor: Sensor, body: dict[str, Any]) -> None:
    _keys(body, ("name", "description", "encodingType", "metadata", "properties"), "")
    ctx.require(sensor.department_id, "sensing.sensor", sensor.id)
    _set_text(body, sensor, (*_BASIC, ("encodingType", "encoding_type", 128)), "")
    if "metadata" in body:
        if body["metadata"] is None:
            raise Invalid("metadata", "required / 必填")
        sensor.meta = body["metadata"]


def _update_observed_property(ctx: Ctx, prop: ObservedProperty, body: dict[str, Any]) -> None:
    _keys(body, ("name", "definition", "description", "properties"), "")
    ctx.require(None, "sensing.observed_property", prop.id)
    _set_text(body, prop, (*_BASIC, ("definition", "definition", 500)), "")


def _update_feature(ctx: Ctx, foi: FeatureOfInterest, body: dict[str, Any]) -> None:
    _keys(body, ("name", "description", "encodingType", "feature", "properties"), "")
    ctx.require(_feature_department(ctx, foi), "sensing.feature", foi.id)
    _set_text(body, foi, _BASIC, "")
    if "feature" in body:
        foi.feature = geojson(body["feature"], "feature")[0]


def _feature_department(ctx: Ctx, foi: FeatureOfInterest) -> int | None:
    if foi.location_id is None:
        return None
    loc = ctx.session.get(Location, foi.location_id)
    return loc.department_id if loc is not None else None


def _has_readings(ctx: Ctx, ds_id: int) -> bool:
    return bool(ctx.session.scalar(select(exists().where(Observation.datastream_id == ds_id))))


def _update_stream(ctx: Ctx, ds: Datastream, body: dict[str, Any]) -> None:
    multi = ds.kind == "multi"
    own = ("unitOfMeasurements", "multiObservationDataTypes", "ObservedProperties") if multi else \
        ("unitOfMeasurement", "ObservedProperty")
    _keys(body, ("name", "description", "observationType", "observedArea", "phenomenonTime", "resultTime",
                 "properties", "Thing", "Sensor", *own), "")
    ctx.require(ds.department_id, "sensing.datastream", ds.id)
    _set_text(body, ds, _BASIC, "")
    shape_keys = {"observationType", "multiObservationDataTypes", "ObservedProperties", "unitOfMeasurements"}
    if shape_keys & set(body) and multi or "observationType" in body and \
            body["observationType"] != ds.observation_type:
        if _has_readings(ctx, ds.id):
            raise Conflict("the stream has readings; its type and members cannot change "
                           "/ 已有观测数据，不能修改类型", sorted(shape_keys & set(body))[0])
    if "observationType" in body:
        ds.observation_type = _observation_type(body, "", multi)
    if "observedArea" in body:
        ds.observed_area = geojson(body["observedArea"], "observedArea")[0] if body["observedArea"] else None
    if body.get("unitOfMeasurement") is not None:
        ds.unit_of_measurement = _unit(body["unitOfMeasurement"], "unitOfMeasurement")
    if body.get("ObservedProperty") is not None:
        ds.observed_property_id = entity(ctx, "ObservedProperties", body["ObservedProperty"],
                                         "ObservedProperty").id
    if body.get("Sensor") is not None:
        ds.sensor_id = entity(ctx, "Sensors", body["Sensor"], "Sensor", dept_id=ds.department_id).id
    if body.get("Thing") is not None:
        thing = entity(ctx, "Things", body["Thing"], "Thing")
        ctx.require(thing.department_id, "sensing.datastream", ds.id)
        ds.thing_id, ds.department_id = thing.id, thing.department_id
    if multi:
        _update_members(ctx, ds, body)
    ctx.forget.add(ds.id)


def _update_members(ctx: Ctx, ds: Datastream, body: dict[str, Any]) -> None:
    units = [_unit(v, at) for v, at in _items(body, "unitOfMeasurements", "")] \
        if "unitOfMeasurements" in body else list(ds.unit_of_measurement or [])
    types = _member_types(body, "") if "multiObservationDataTypes" in body \
        else list(ds.multi_observation_types or [])
    props = None
    if "ObservedProperties" in body:
        props = [entity(ctx, "ObservedProperties", v, at) for v, at in _items(body, "ObservedProperties", "")]
    count = len(props) if props is not None else len(units)
    if not units or not (len(units) == len(types) == count):
        raise Invalid("unitOfMeasurements", MEMBERS_REASON)
    ds.unit_of_measurement, ds.multi_observation_types = units, types
    if props is not None:
        ctx.session.execute(delete(multi_datastream_properties)
                            .where(multi_datastream_properties.c.datastream_id == ds.id))
        _set_members(ctx, ds, props)


def _update_historical(ctx: Ctx, hist: HistoricalLocation, body: dict[str, Any]) -> None:
    _keys(body, ("time",), "")
    thing = ctx.session.get(Thing, hist.thing_id)
    assert thing is not None
    ctx.require(thing.department_id, "sensing.thing", thing.id)
    if body.get("time") is not None:
        hist.time = parse_time(body["time"], "time", ctx.now)


UPDATE: dict[str, Any] = {
    "Things": _update_thing, "Locations": _update_location, "Sensors": _update_sensor,
    "ObservedProperties": _update_observed_property, "FeaturesOfInterest": _update_feature,
    "Datastreams": _update_stream, "MultiDatastreams": _update_stream,
    "HistoricalLocations": _update_historical,
}


def _stream_department(ctx: Ctx, ds_id: int) -> int:
    dept = ctx.session.scalar(select(Datastream.department_id).where(Datastream.id == ds_id))
    assert dept is not None
    return dept


def _update_observation(ctx: Ctx, o: Observation, body: dict[str, Any]) -> None:
    _keys(body, ("phenomenonTime", "resultTime", "result", "resultQuality", "validTime", "parameters",
                 "FeatureOfInterest"), "")
    ctx.require(_stream_department(ctx, o.datastream_id), "sensing.datastream", o.datastream_id)
    info = ctx.writer.streams.get(o.datastream_id)
    assert info is not None
    before = o.phenomenon_time
    if body.get("phenomenonTime") is not None:
        start, end = parse_interval(body["phenomenonTime"], "phenomenonTime", ctx.now)
        clash = ctx.session.scalar(select(Observation.id).where(
            Observation.datastream_id == o.datastream_id, Observation.phenomenon_time == start,
            Observation.id != o.id))
        if clash is not None:
            raise Conflict(f"Observation({clash}) of this stream has that phenomenonTime / 该时间已有观测",
                           "phenomenonTime")
        o.phenomenon_time, o.phenomenon_time_end = start, end
    if "resultTime" in body:
        value = body["resultTime"]
        o.result_time = None if value is None else parse_time(value, "resultTime", ctx.now)
    if "result" in body:
        o.result_number, o.result_json = ingest.check_result(info, body["result"], "result")
    if "resultQuality" in body:
        o.result_quality = _dumps(body["resultQuality"])
    if "validTime" in body:
        o.valid_time_start, o.valid_time_end = _valid_time(body, "", ctx.now)
    if "parameters" in body:
        if body["parameters"] is not None and not isinstance(body["parameters"], dict):
            raise Invalid("parameters", "must be a JSON object / 应为 JSON 对象")
        o.parameters = _dumps(body["parameters"])
    if body.get("FeatureOfInterest") is not None:
        o.feature_of_interest_id = _feature_id(ctx, info, body, "")
    ctx.session.flush()
    recompute(ctx.session, o.datastream_id, {before, o.phenomenon_time})
    ctx.forget.add(o.datastream_id)
    ctx.audit("observation.update", "observation", o.id, {"fields": sorted(body)})


# -- delete ---------------------------------------------------------------------------------------


def recompute(session: Session, ds_id: int, times: Iterable[int]) -> None:
    """Rebuild the rollup buckets holding `times` and the stream's span from the stored readings
    (after a reading was changed or deleted: rollups only ever add up)."""
    o = Observation
    times = set(times)
    for grain in GRAINS:
        ms = grain * 1000
        for bucket in {t - t % ms for t in times}:
            session.execute(delete(Rollup).where(Rollup.datastream_id == ds_id, Rollup.grain == grain,
                                                 Rollup.bucket == bucket))
            inside = (o.datastream_id == ds_id, o.phenomenon_time >= bucket, o.phenomenon_time < bucket + ms,
                      o.result_number.is_not(None))
            n, lo, hi, total, last_time = session.execute(select(
                func.count(), func.min(o.result_number), func.max(o.result_number), func.sum(o.result_number),
                func.max(o.phenomenon_time)).where(*inside)).one()
            if n:
                last = session.scalar(select(o.result_number).where(*inside, o.phenomenon_time == last_time))
                session.execute(insert(Rollup).values(
                    datastream_id=ds_id, grain=grain, bucket=bucket, count=n, min=lo, max=hi, sum=total,
                    last_time=last_time, last_value=last))
    first, end, r0, r1, last_time = session.execute(select(
        func.min(o.phenomenon_time), func.max(func.coalesce(o.phenomenon_time_end, o.phenomenon_time)),
        func.min(o.result_time), func.max(o.result_time), func.max(o.phenomenon_time))
        .where(o.datastream_id == ds_id)).one()
    last_value = None if last_time is None else session.scalar(
        select(o.result_number).where(o.datastream_id == ds_id, o.phenomenon_time == last_time))
    session.execute(update(Datastream).where(Datastream.id == ds_id).values(
        phenomenon_start=first, phenomenon_end=end, result_start=r0, result_end=r1, last_time=last_time,
        last_value=last_value))


def delete_streams(ctx: Ctx, ids: list[int]) -> None:
    """Streams with their readings and rollups, in the caller's transaction."""
    if not ids:
        return
    s = ctx.session
    s.execute(delete(Observation).where(Observation.datastream_id.in_(ids)))
    s.execute(delete(Rollup).where(Rollup.datastream_id.in_(ids)))
    s.execute(delete(multi_datastream_properties).where(multi_datastream_properties.c.datastream_id.in_(ids)))
    s.execute(delete(Datastream).where(Datastream.id.in_(ids)))
    ctx.forget.update(ids)


def _refuse_if(ctx: Ctx, used: Any, what: str) -> None:
    if ctx.session.scalar(select(exists().where(used))):
        raise Conflict(f"{what} is still used; delete or change those first / 仍在使用中，请先删除或修改引用")


def _delete_row(ctx: Ctx, model: Any, entity_id: int) -> None:
    ctx.session.execute(delete(model).where(model.id == entity_id))


def _delete_thing(ctx: Ctx, thing: Thing) -> None:
    ctx.require(thing.department_id, "sensing.thing", thing.id)
    streams = ctx.session.scalars(select(Datastream.id).where(Datastream.thing_id == thing.id))
    delete_streams(ctx, list(streams))
    ctx.session.execute(delete(HistoricalLocation).where(HistoricalLocation.thing_id == thing.id))
    _delete_row(ctx, Thing, thing.id)
    ctx.forget_all = True
    service.forget_device(thing.device_key)


def _delete_stream(ctx: Ctx, ds: Datastream) -> None:
    ctx.require(ds.department_id, "sensing.datastream", ds.id)
    delete_streams(ctx, [ds.id])


def _delete_observation(ctx: Ctx, o: Observation) -> None:
    ctx.require(_stream_department(ctx, o.datastream_id), "sensing.datastream", o.datastream_id)
    _delete_row(ctx, Observation, o.id)
    recompute(ctx.session, o.datastream_id, [o.phenomenon_time])
    ctx.forget.add(o.datastream_id)


def _delete_location(ctx: Ctx, loc: Location) -> None:
    ctx.require(loc.department_id, "sensing.location", loc.id)
    links = historical_location_locations.c
    hist = list(ctx.session.scalars(select(links.historical_location_id).where(links.location_id == loc.id)))
    ctx.session.execute(update(FeatureOfInterest).where(FeatureOfInterest.location_id == loc.id)
                        .values(location_id=None))
    _delete_row(ctx, Location, loc.id)
    if hist:  # a HistoricalLocation left without any Location says nothing any more
        linked = select(links.historical_location_id)
        ctx.session.execute(delete(HistoricalLocation).where(HistoricalLocation.id.in_(hist),
                                                             HistoricalLocation.id.not_in(linked)))
    ctx.forget_all = True


def _delete_historical(ctx: Ctx, hist: HistoricalLocation) -> None:
    _update_historical(ctx, hist, {})  # the same check: sensing.write on its Thing
    _delete_row(ctx, HistoricalLocation, hist.id)


def _delete_sensor(ctx: Ctx, sensor: Sensor) -> None:
    ctx.require(sensor.department_id, "sensing.sensor", sensor.id)
    _refuse_if(ctx, Datastream.sensor_id == sensor.id, f"Sensor({sensor.id})")
    _delete_row(ctx, Sensor, sensor.id)


def _delete_observed_property(ctx: Ctx, prop: ObservedProperty) -> None:
    ctx.require(None, "sensing.observed_property", prop.id)
    _refuse_if(ctx, or_(Datastream.observed_property_id == prop.id,
                        Datastream.id.in_(select(multi_datastream_properties.c.datastream_id).where(
                            multi_datastream_properties.c.observed_property_id == prop.id))),
               f"ObservedProperty({prop.id})")
    _delete_row(ctx, ObservedProperty, prop.id)


def _delete_feature(ctx: Ctx, foi: FeatureOfInterest) -> None:
    ctx.require(_feature_department(ctx, foi), "sensing.feature", foi.id)
    _refuse_if(ctx, Observation.feature_of_interest_id == foi.id, f"FeatureOfInterest({foi.id})")
    _delete_row(ctx, FeatureOfInterest, foi.id)


DELETE: dict[str, Any] = {
    "Things": _delete_thing, "Datastreams": _delete_stream, "MultiDatastreams": _delete_stream,
    "Observations": _delete_observation, "Locations": _delete_location,
    "HistoricalLocations": _delete_historical, "Sensors": _delete_sensor,
    "ObservedProperties": _delete_observed_property, "FeaturesOfInterest": _delete_feature,
}


def remove(ctx: Ctx, set_name: str, target: Any) -> None:
    """DELETE one entity (and what the standard deletes with it), audited."""
    DELETE[set_name](ctx, target)
    singular = SETS[set_name].singular.lower()
    ctx.audit(f"{singular}.delete", singular, target.id)
