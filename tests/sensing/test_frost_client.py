"""The real FROST Python client (frost-sta-client) against CityOS served by uvicorn: every entity
type created and read back through it, with the filters, expands and paging it builds."""

from __future__ import annotations

import datetime as dt

import frost_sta_client as fsc
import pytest
import requests
from frost_sta_client.model.ext.data_array_value import DataArrayValue

from cityos.sensing import ingest
from tests.conftest import PASSWORD, City
from tests.sensing.helpers_sta import S, app  # noqa: F401  (the app fixture with /sta mounted)


class Units(list):  # type: ignore[type-arg]
    """frost-sta-client sends a MultiDatastream's unitOfMeasurements as `list.__getstate__()`,
    which is None on Python 3.11; this list answers with the units, as the client means to."""

    def __getstate__(self) -> list[dict[str, str]]:  # type: ignore[override]
        return [u.__getstate__() for u in self]


def unit(symbol: str = "µg/m³") -> fsc.UnitOfMeasurement:
    return fsc.UnitOfMeasurement(name="microgram per cubic metre", symbol=symbol,
                                 definition="http://qudt.org/vocab/unit/MicroGM-PER-M3")


def test_every_entity_type_through_the_frost_client(live_server: str, city: City) -> None:
    service = fsc.SensorThingsService(f"{live_server}{S}", auth_handler=fsc.AuthHandler("env_staff", PASSWORD))
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    # Thing with a Location (deep insert)
    location = fsc.Location(name="江南公园", description="站点", encoding_type="application/geo+json",
                            location={"type": "Point", "coordinates": [126.55, 43.84]})
    thing = fsc.Thing(name="空气站-FROST", description="用 FROST 客户端创建", properties={"floor": 2},
                      locations=[location])
    service.create(thing)
    assert isinstance(thing.id, int)

    sensor = fsc.Sensor(name="PMS5003", description="激光散射", encoding_type="application/pdf",
                        metadata="https://example.org/pms5003.pdf")
    service.create(sensor)
    pm25 = fsc.ObservedProperty(name="PM2.5", definition="urn:cityos:pm25", description="细颗粒物")
    pm10 = fsc.ObservedProperty(name="PM10", definition="urn:cityos:pm10", description="可吸入颗粒物")
    service.create(pm25)
    service.create(pm10)

    ds = fsc.Datastream(name="PM2.5 数据流", description="每分钟", observation_type=ingest.MEASUREMENT,
                        unit_of_measurement=unit(), thing=thing, sensor=sensor, observed_property=pm25)
    service.create(ds)
    md = fsc.MultiDatastream(name="颗粒物", description="PM2.5 与 PM10", observation_type=ingest.COMPLEX,
                             multi_observation_data_types=[ingest.MEASUREMENT, ingest.MEASUREMENT],
                             thing=thing, sensor=sensor, observed_properties=[pm25, pm10])
    md.unit_of_measurements = Units([unit(), unit()])
    service.create(md)

    # Observations: one with an explicit FeatureOfInterest, the rest with the Location's one
    river = fsc.FeatureOfInterest(name="松花江断面", description="一号断面", encoding_type="application/geo+json",
                                  feature={"type": "Point", "coordinates": [126.56, 43.85]})
    service.create(river)
    first = fsc.Observation(phenomenon_time=t0.isoformat(), result=12.5, datastream=ds, feature_of_interest=river)
    service.create(first)
    for i in range(1, 5):
        service.create(fsc.Observation(phenomenon_time=(t0 + dt.timedelta(minutes=i)).isoformat(),
                                       result=10 + i, datastream=ds))
    service.create(fsc.Observation(phenomenon_time=t0.isoformat(), result=[12.5, 30], multi_datastream=md))
    with pytest.raises(requests.HTTPError) as dup:
        service.create(fsc.Observation(phenomenon_time=t0.isoformat(), result=1, datastream=ds))
    assert dup.value.response.status_code == 409

    # Data Array: CreateObservations as the client builds it
    dav = DataArrayValue()
    dav.datastream = ds
    dav.components = {DataArrayValue.Property.PHENOMENON_TIME, DataArrayValue.Property.RESULT,
                      DataArrayValue.Property.FEATURE_OF_INTEREST}
    for i in range(5, 8):
        dav.add_observation(fsc.Observation(phenomenon_time=(t0 + dt.timedelta(minutes=i)).isoformat(),
                                            result=20 + i, feature_of_interest=river))
    doc = fsc.DataArrayDocument()
    doc.add_data_array_value(dav)
    created = service.observations().create(doc)
    assert all(o.self_link.startswith(f"{live_server}{S}/Observations(") for o in created)

    # read every type back
    got = service.things().find(thing.id)
    assert got.name == "空气站-FROST" and got.properties["department"] == "220200-hbj"
    locs = got.get_locations().query().list()
    assert [loc.name for loc in locs] == ["江南公园"]
    hist = service.historical_locations().query().expand("Locations,Thing").list()
    assert len(hist.entities) == 1 and hist.entities[0].thing.id == thing.id
    assert service.sensors().find(sensor.id).metadata == "https://example.org/pms5003.pdf"
    assert {p.name for p in service.observed_properties().query().list()} == {"PM2.5", "PM10"}
    stream = service.datastreams().find(ds.id)
    assert stream.unit_of_measurement.symbol == "µg/m³"
    multi = service.multi_datastreams().query().expand("ObservedProperties").list().entities[0]
    assert [p.name for p in multi.observed_properties] == ["PM2.5", "PM10"]
    assert multi.multi_observation_data_types == [ingest.MEASUREMENT, ingest.MEASUREMENT]
    assert [o.result for o in multi.get_observations().query().list()] == [[12.5, 30]]
    fois = service.features_of_interest().query().orderby("name", "ASC").list()
    assert {f.name for f in fois} == {"松花江断面", "江南公园"}

    # filters, ordering, expand and paging as the client builds them
    found = service.things().query().filter("name eq '空气站-FROST'").expand("Datastreams,Locations").list()
    assert [t.id for t in found] == [thing.id]
    assert [d.name for d in found.entities[0].datastreams] == ["PM2.5 数据流"]
    obs = stream.get_observations().query().filter("result gt 12").orderby("phenomenonTime", "ASC") \
        .top(2).count().list()
    assert obs.count == 6
    values = [o.result for o in obs]  # iterating follows @iot.nextLink
    assert values == [12.5, 13, 14, 25, 26, 27]
    near = service.observations().query().filter(
        "st_within(FeatureOfInterest/feature, geography'POLYGON((126.5 43.8, 126.6 43.8, 126.6 43.9, "
        "126.5 43.9, 126.5 43.8))')").select("result", "id").list()
    assert len(near.entities) == 9
    with_foi = service.observations().query().filter("FeatureOfInterest/name eq '松花江断面'") \
        .expand("FeatureOfInterest").list()
    assert len(with_foi.entities) == 4 and with_foi.entities[0].feature_of_interest.name == "松花江断面"

    # change and delete through the client
    got.name = "空气站-改名"
    service.patch(got, [{"op": "replace", "path": "/name", "value": "空气站-改名"}])
    assert service.things().find(thing.id).name == "空气站-改名"
    service.delete(fsc.Observation(id=first.id))
    assert stream.get_observations().query().count().top(0).list().count == 7
    moved = fsc.Location(name="新址", description="搬迁", encoding_type="application/geo+json",
                         location={"type": "Point", "coordinates": [126.6, 43.9]}, things=[got])
    service.create(moved)
    assert [loc.id for loc in got.get_locations().query().list()] == [moved.id]
    assert len(got.get_historical_locations().query().list().entities) == 2
