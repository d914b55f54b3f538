"""SensorThings API 1.1 at /sta/v1.1 on both databases: entities and paths, deep insert and links,
query options, access by department, readings through the ingest writer, Data Array, changes."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cityos.core.access import SYSTEM
from cityos.sensing import ingest, service, sta_write
from cityos.sensing.models import Datastream, Observation, Rollup, Thing
from cityos.sensing.sta_entities import Reader
from tests.conftest import City
from tests.sensing.helpers_sta import UNIT, S, app, basic, datastream_body, thing_body  # noqa: F401

T0 = "2026-01-01T00:00:00Z"
T0_MS = 1_767_225_600_000


def post(client: TestClient, path: str, body: Any, headers: dict[str, str], status: int = 201) -> Any:
    r = client.post(f"{S}/{path}", json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


def get(client: TestClient, path: str, headers: dict[str, str], status: int = 200) -> Any:
    r = client.get(f"{S}/{path}", headers=headers)
    assert r.status_code == status, r.text
    return r.json()


def new_thing(client: TestClient, headers: dict[str, str], **kw: Any) -> tuple[int, int]:
    """(thing id, first datastream id) of a deep-inserted Thing."""
    tid = post(client, "Things", thing_body(**kw), headers)["@iot.id"]
    return tid, get(client, f"Things({tid})/Datastreams", headers)["value"][0]["@iot.id"]


def test_service_root_and_sign_in(client: TestClient, city: City) -> None:
    r = client.get(S)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Basic realm="CityOS"'
    assert r.headers["content-type"] == "application/problem+json"
    assert client.get(f"{S}/Things", headers=basic("env_staff", "wrong-password")).status_code == 401
    root = get(client, "", basic("env_staff"))
    assert [v["name"] for v in root["value"]] == [
        "Things", "Locations", "HistoricalLocations", "Sensors", "ObservedProperties", "Datastreams",
        "MultiDatastreams", "Observations", "FeaturesOfInterest"]
    assert root["value"][0]["url"] == f"http://testserver{S}/Things"
    conformance = root["serverSettings"]["conformance"]
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/data-array/data-array" in conformance
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/create-update-delete" in conformance
    assert get(client, "Things", city.headers("env_staff")) == {"value": []}
    assert client.get(f"{S}/Things", headers=city.headers("resident")).status_code == 403


def test_deep_insert_paths_and_links(client: TestClient, city: City) -> None:
    h = city.headers("env_staff")
    r = client.post(f"{S}/Things", json=thing_body(), headers=h)
    assert r.status_code == 201, r.text
    thing = r.json()
    tid = thing["@iot.id"]
    base = f"http://testserver{S}"
    assert r.headers["location"] == f"{base}/Things({tid})" == thing["@iot.selfLink"]
    assert thing["Locations@iot.navigationLink"] == f"{base}/Things({tid})/Locations"
    assert thing["HistoricalLocations@iot.navigationLink"] == f"{base}/Things({tid})/HistoricalLocations"
    assert thing["Datastreams@iot.navigationLink"] == f"{base}/Things({tid})/Datastreams"
    assert thing["MultiDatastreams@iot.navigationLink"] == f"{base}/Things({tid})/MultiDatastreams"
    assert thing["properties"] == {"owner": "hbj", "floor": 3, "department": "220200-hbj"}

    assert get(client, f"Things({tid})/name", h) == {"name": "空气站-1"}
    text = client.get(f"{S}/Things({tid})/name/$value", headers=h)
    assert text.status_code == 200 and text.text == "空气站-1" and text.headers["content-type"].startswith("text/plain")
    assert get(client, f"Things({tid})/$ref", h) == {"@iot.selfLink": f"{base}/Things({tid})"}

    streams = get(client, f"Things({tid})/Datastreams", h)["value"]
    ds = streams[0]
    assert set(ds) >= {"@iot.id", "@iot.selfLink", "Thing@iot.navigationLink", "Sensor@iot.navigationLink",
                       "ObservedProperty@iot.navigationLink", "Observations@iot.navigationLink",
                       "unitOfMeasurement", "observationType"}
    assert ds["unitOfMeasurement"] == UNIT and "phenomenonTime" not in ds  # no readings yet
    assert get(client, f"Datastreams({ds['@iot.id']})/Thing", h)["@iot.id"] == tid
    assert get(client, f"Datastreams({ds['@iot.id']})/Sensor/name", h) == {"name": "PMS5003"}
    assert get(client, f"Things({tid})/Datastreams({ds['@iot.id']})/ObservedProperty", h)["name"] == "PM2.5"
    refs = get(client, f"Things({tid})/Locations/$ref", h)["value"]
    assert refs == [{"@iot.selfLink": f"{base}/Locations(1)"}]
    assert get(client, "Locations(1)/Things", h)["value"][0]["@iot.id"] == tid
    hist = get(client, f"Things({tid})/HistoricalLocations?$expand=Locations", h)["value"]
    assert len(hist) == 1 and hist[0]["Locations"][0]["@iot.id"] == 1 and hist[0]["time"].endswith("Z")

    # linking existing entities by id; creating under a parent path
    prop_id = get(client, "ObservedProperties", h)["value"][0]["@iot.id"]
    body = datastream_body("第二流", prop={"@iot.id": prop_id})
    body["Sensor"] = {"@iot.id": 1}
    second = post(client, f"Things({tid})/Datastreams", body, h)
    assert get(client, f"Datastreams({second['@iot.id']})/Thing", h)["@iot.id"] == tid
    assert len(get(client, "ObservedProperties", h)["value"]) == 1
    assert len(get(client, "Sensors(1)/Datastreams", h)["value"]) == 2
    moved = post(client, f"Things({tid})/Locations", {
        "name": "新位置", "description": "", "encodingType": "application/geo+json",
        "location": {"type": "Point", "coordinates": [126.6, 43.9]}}, h)
    assert [loc["@iot.id"] for loc in get(client, f"Things({tid})/Locations", h)["value"]] == [moved["@iot.id"]]
    assert get(client, f"Things({tid})/HistoricalLocations?$count=true&$top=0", h)["@iot.count"] == 2

    # 404s and bad paths
    assert client.get(f"{S}/Things(999)", headers=h).status_code == 404
    assert client.get(f"{S}/Widgets", headers=h).status_code == 404
    assert client.get(f"{S}/Things('x')", headers=h).status_code == 404
    assert client.get(f"{S}/Things({tid})/Nonsense", headers=h).status_code == 404
    bad = client.get(f"{S}/Things/Datastreams", headers=h)
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "path"


def test_bad_input_names_the_field(client: TestClient, city: City) -> None:
    h = city.headers("env_staff")
    r = client.post(f"{S}/Things", json={"name": "x", "colour": "red"}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0] == {"field": "colour", "reason": "unknown field / 未知字段"}
    body = thing_body()
    del body["Datastreams"][0]["unitOfMeasurement"]
    r = client.post(f"{S}/Things", json=body, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "Datastreams[0].unitOfMeasurement"
    body = thing_body()
    body["Locations"][0]["location"] = {"type": "Point", "coordinates": [500, 43]}
    r = client.post(f"{S}/Things", json=body, headers=h)
    assert r.json()["errors"][0]["field"] == "Locations[0].location"
    assert get(client, "Things", h) == {"value": []}  # nothing of a refused deep insert is kept
    r = client.post(f"{S}/Things", content=b"{not json", headers={**h, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body"
    r = client.get(f"{S}/Things?$filter=name eq", headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "$filter" and "message" in r.json()
    r = client.get(f"{S}/Things?$filter=colour eq 'red'", headers=h)
    assert r.status_code == 400 and "colour" in r.json()["detail"]
    assert client.get(f"{S}/Things?$top=10001", headers=h).status_code == 400
    assert client.get(f"{S}/Things?$select=colour", headers=h).status_code == 400
    assert client.get(f"{S}/Things?$expand=Colours", headers=h).status_code == 400
    assert client.get(f"{S}/Things?$resultFormat=dataArray", headers=h).status_code == 400


def test_observations_go_through_the_writer(client: TestClient, city: City,
                                            sessions: sessionmaker[Session]) -> None:
    h = city.headers("env_staff")
    tid, ds = new_thing(client, h)
    obs = post(client, f"Datastreams({ds})/Observations",
               {"phenomenonTime": T0, "resultTime": T0, "result": 12.5, "parameters": {"k": 1}}, h)
    assert obs["result"] == 12.5 and obs["phenomenonTime"] == "2026-01-01T00:00:00.000Z"
    assert obs["Datastream@iot.navigationLink"].endswith(f"/Observations({obs['@iot.id']})/Datastream")
    assert "MultiDatastream@iot.navigationLink" not in obs
    foi = get(client, f"Observations({obs['@iot.id']})/FeatureOfInterest", h)
    assert foi["feature"] == {"type": "Point", "coordinates": [126.55, 43.84]}  # made from the Location
    r = client.post(f"{S}/Observations", json={"phenomenonTime": T0, "result": 13, "Datastream": {"@iot.id": ds}},
                    headers=h)
    assert r.status_code == 409 and "phenomenonTime" in r.text and r.json()["errors"][0]["field"] == "phenomenonTime"
    r = client.post(f"{S}/Datastreams({ds})/Observations", json={"result": "high"}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "result"
    r = client.post(f"{S}/Observations", json={"result": 1}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "Datastream"
    post(client, f"Datastreams({ds})/Observations", {"phenomenonTime": "2026-01-01T00:00:30Z", "result": 7.5,
                                                     "FeatureOfInterest": {
                                                         "name": "断面", "description": "", "encodingType":
                                                         "application/geo+json", "feature": {
                                                             "type": "Point", "coordinates": [126.5, 43.8]}}}, h)
    stream = get(client, f"Datastreams({ds})", h)
    assert stream["phenomenonTime"] == "2026-01-01T00:00:00.000Z/2026-01-01T00:00:30.000Z"
    assert stream["resultTime"] == "2026-01-01T00:00:00.000Z/2026-01-01T00:00:00.000Z"
    with sessions() as s:
        minute = s.scalar(select(Rollup).where(Rollup.datastream_id == ds, Rollup.grain == 60))
        assert minute is not None and (minute.count, minute.sum, minute.last_value) == (2, 20.0, 7.5)

    # results of any JSON type, and filters on them
    anything = post(client, f"Things({tid})/Datastreams", datastream_body("状态", prop={"@iot.id": 1},
                                                                        observationType=ingest.ANY), h)
    for i, value in enumerate(("high", {"level": 2}, True)):
        post(client, f"Datastreams({anything['@iot.id']})/Observations",
             {"phenomenonTime": f"2026-01-01T01:0{i}:00Z", "result": value}, h)
    assert [o["result"] for o in get(client, "Observations?$filter=result eq 'high'", h)["value"]] == ["high"]
    assert [o["result"] for o in get(client, "Observations?$filter=result/level eq 2", h)["value"]] == \
        [{"level": 2}]
    assert [o["result"] for o in get(client, "Observations?$filter=result lt 10", h)["value"]] == [7.5]
    assert [o["result"] for o in get(client, "Observations?$filter=result eq true", h)["value"]] == [True]

    # a Thing without a Location has no FeatureOfInterest to give its readings
    bare = _no_location(client, h)
    r = client.post(f"{S}/Datastreams({bare})/Observations", json={"result": 1}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "FeatureOfInterest"


def _no_location(client: TestClient, headers: dict[str, str]) -> int:
    body = thing_body("无位置")
    del body["Locations"]
    tid = post(client, "Things", body, headers)["@iot.id"]
    return int(get(client, f"Things({tid})/Datastreams", headers)["value"][0]["@iot.id"])


def test_multi_datastream(client: TestClient, city: City) -> None:
    h = city.headers("env_staff")
    tid, _ = new_thing(client, h)
    md = post(client, f"Things({tid})/MultiDatastreams", {
        "name": "颗粒物", "description": "", "observationType": ingest.COMPLEX,
        "multiObservationDataTypes": [ingest.MEASUREMENT, ingest.COUNT],
        "unitOfMeasurements": [UNIT, {"name": "count", "symbol": "", "definition": ""}],
        "Sensor": {"@iot.id": 1},
        "ObservedProperties": [{"@iot.id": 1}, {"name": "颗粒数", "definition": "urn:cityos:n", "description": ""}],
    }, h)
    mid = md["@iot.id"]
    assert [p["name"] for p in get(client, f"MultiDatastreams({mid})/ObservedProperties", h)["value"]] == \
        ["PM2.5", "颗粒数"]
    assert get(client, f"Things({tid})/MultiDatastreams", h)["value"][0]["multiObservationDataTypes"] == \
        [ingest.MEASUREMENT, ingest.COUNT]
    assert client.get(f"{S}/Datastreams({mid})", headers=h).status_code == 404  # not a single stream
    obs = post(client, f"MultiDatastreams({mid})/Observations", {"phenomenonTime": T0, "result": [3.5, 12]}, h)
    assert obs["result"] == [3.5, 12] and "MultiDatastream@iot.navigationLink" in obs
    r = client.post(f"{S}/MultiDatastreams({mid})/Observations", json={"result": [3.5]}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "result"
    r = client.post(f"{S}/Observations", json={"result": 1, "Datastream": {"@iot.id": mid}}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "Datastream"
    got = get(client, "ObservedProperties(1)/MultiDatastreams?$expand=Observations", h)["value"]
    assert got[0]["Observations"][0]["result"] == [3.5, 12]


def test_query_options(client: TestClient, city: City) -> None:
    h = city.headers("env_staff")
    ids = [new_thing(client, h, name=f"站{i}", lon=126.5 + i / 100, streams=2) for i in range(3)]
    ds = ids[0][1]
    for minute in range(5):
        post(client, f"Datastreams({ds})/Observations",
             {"phenomenonTime": f"2026-01-01T00:0{minute}:00Z", "result": minute * 10}, h)

    assert [t["name"] for t in get(client, "Things?$orderby=name desc", h)["value"]] == ["站2", "站1", "站0"]
    assert [t["name"] for t in get(client, "Things?$filter=name eq '站1'", h)["value"]] == ["站1"]
    assert len(get(client, "Things?$filter=properties/floor ge 3 and properties/owner eq 'hbj'", h)["value"]) == 3
    assert get(client, "Things?$filter=properties/floor gt 3", h)["value"] == []
    assert len(get(client, "Sensors?$filter=metadata eq 'https://example.org/pms5003.pdf'", h)["value"]) == 6
    assert len(get(client, "Datastreams?$filter=unitOfMeasurement/symbol eq 'µg/m³'", h)["value"]) == 6
    assert [d["name"] for d in get(client, "Datastreams?$filter=Thing/name eq '站2'&$orderby=id", h)["value"]] == \
        ["站2 PM2.5 0", "站2 PM2.5 1"]
    near = get(client, "Locations?$filter=geo.distance(location, geography'POINT(126.5 43.84)') lt 0.015", h)
    assert [loc["name"] for loc in near["value"]] == ["站0位置", "站1位置"]

    page1 = get(client, f"Datastreams({ds})/Observations?$top=2&$orderby=phenomenonTime desc&$count=true", h)
    assert page1["@iot.count"] == 5 and [o["result"] for o in page1["value"]] == [40, 30]
    nxt = page1["@iot.nextLink"]
    assert nxt.startswith(f"http://testserver{S}/Datastreams({ds})/Observations?") and "%24skip=2" in nxt
    page2 = client.get(nxt, headers=h).json()
    assert [o["result"] for o in page2["value"]] == [20, 10]
    assert [o["result"] for o in client.get(page2["@iot.nextLink"], headers=h).json()["value"]] == [0]
    assert get(client, "Observations?$filter=result ge 20 and phenomenonTime lt 2026-01-01T00:04:00Z"
                       "&$count=true&$top=0", h) == {"@iot.count": 2, "value": []}
    assert get(client, "Observations?$filter=Datastream/Thing/name eq '站0'&$count=true&$top=0", h)["@iot.count"] == 5

    sel = get(client, f"Things({ids[0][0]})?$select=id,name", h)
    assert set(sel) == {"@iot.id", "@iot.selfLink", "name"}
    assert set(get(client, "Things?$select=name", h)["value"][0]) == {"name"}

    deep = get(client, f"Things({ids[0][0]})?$expand=Datastreams($orderby=id;$expand=Observations("
                       f"$top=2;$orderby=phenomenonTime desc;$count=true;$select=result),Sensor),Locations", h)
    first = deep["Datastreams"][0]
    assert [o["result"] for o in first["Observations"]] == [40, 30] and first["Observations@iot.count"] == 5
    assert first["Observations"][0] == {"result": 40}
    assert first["Observations@iot.nextLink"].startswith(f"http://testserver{S}/Datastreams({ds})/Observations?")
    assert deep["Datastreams"][1]["Observations"] == [] and deep["Datastreams"][1]["Observations@iot.count"] == 0
    assert first["Sensor"]["name"] == "PMS5003" and deep["Locations"][0]["name"] == "站0位置"
    slash = get(client, "Observations?$expand=Datastream/Thing&$top=1", h)["value"][0]
    assert slash["Datastream"]["Thing"]["name"] == "站0"
    every = get(client, "Things?$expand=Datastreams($top=1)&$top=2&$skip=1", h)
    assert [len(t["Datastreams"]) for t in every["value"]] == [1, 1] and "@iot.nextLink" not in every
    assert all("Datastreams@iot.nextLink" in t for t in every["value"])


def test_data_array(client: TestClient, city: City) -> None:
    h = city.headers("env_staff")
    _, ds = new_thing(client, h)
    body = [{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result", "FeatureOfInterest/id"],
             "dataArray@iot.count": 4,
             "dataArray": [[T0, 1, 1], ["2026-01-01T00:01:00Z", 2, 1], ["2026-01-01T00:02:00Z", "x", 1],
                           [T0, 9, 1]]}]
    r = client.post(f"{S}/CreateObservations", json=body, headers=h)
    assert r.status_code == 201, r.text
    links = r.json()
    assert links[0].startswith(f"http://testserver{S}/Observations(") and links[1].startswith("http")
    assert links[2:] == ["error", "error"]  # a bad result; a repeat of the first reading
    doc = get(client, f"Datastreams({ds})/Observations?$resultFormat=dataArray&$count=true", h)
    assert doc["@iot.count"] == 2
    group = doc["value"][0]
    assert group["Datastream@iot.navigationLink"] == f"http://testserver{S}/Datastreams({ds})"
    assert group["components"] == ["id", "phenomenonTime", "result", "resultTime"]
    assert group["dataArray@iot.count"] == 2
    assert [row[1:3] for row in group["dataArray"]] == [["2026-01-01T00:00:00.000Z", 1],
                                                         ["2026-01-01T00:01:00.000Z", 2]]
    sel = get(client, "Observations?$resultFormat=dataArray&$select=result,FeatureOfInterest", h)["value"][0]
    assert sel["components"] == ["result", "FeatureOfInterest/id"] and sel["dataArray"] == [[1, 1], [2, 1]]
    r = client.post(f"{S}/CreateObservations", json=[{"Datastream": {"@iot.id": 999}, "components": ["result"],
                                                       "dataArray": [[1]]}], headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "[0].Datastream"

    # pages of 100 by default
    rows = [[f"2026-01-02T00:{m // 60:02d}:{m % 60:02d}Z", m] for m in range(120)]
    post(client, "CreateObservations", [{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
                                         "dataArray": rows}], h)
    page = get(client, "Observations", h)
    assert len(page["value"]) == 100 and "%24top=100" in page["@iot.nextLink"]
    assert len(client.get(page["@iot.nextLink"], headers=h).json()["value"]) == 22


def test_access_by_department(client: TestClient, city: City, sessions: sessionmaker[Session]) -> None:
    env = city.headers("env_staff")
    police = city.headers("police_staff")
    tid, ds = new_thing(client, env)
    post(client, f"Datastreams({ds})/Observations", {"phenomenonTime": T0, "result": 1}, env)
    for path in ("Things", "Datastreams", "Observations", "Locations", "Sensors", "HistoricalLocations",
                 "FeaturesOfInterest"):
        assert get(client, path, police)["value"] == [], path
    assert len(get(client, "ObservedProperties", police)["value"]) == 1  # city-wide
    for path in (f"Things({tid})", f"Datastreams({ds})/Observations", "Observations(1)", "Locations(1)/Things"):
        assert client.get(f"{S}/{path}", headers=police).status_code == 404, path
    assert client.patch(f"{S}/Things({tid})", json={"name": "x"}, headers=police).status_code == 404
    r = client.post(f"{S}/Datastreams", json={**datastream_body(), "Thing": {"@iot.id": tid}}, headers=police)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "Thing.@iot.id"
    r = client.post(f"{S}/Observations", json={"result": 2, "Datastream": {"@iot.id": ds}}, headers=police)
    assert r.status_code == 403
    assert client.post(f"{S}/Things({tid})/Datastreams", json=datastream_body(), headers=police).status_code == 404
    # the auditor reads everything and writes nothing; the city admin reads and writes everywhere
    assert len(get(client, "Things", city.headers("auditor"))["value"]) == 1
    assert client.post(f"{S}/Things", json=thing_body(), headers=city.headers("auditor")).status_code == 403
    admin = city.headers("admin")
    made = post(client, "Things", thing_body("公安探头", properties={"department": "220200-gaj"}), admin)
    assert made["properties"]["department"] == "220200-gaj"
    assert [t["name"] for t in get(client, "Things", police)["value"]] == ["公安探头"]
    mine = get(client, "Things?$filter=properties/department eq '220200-gaj'", admin)["value"]
    assert [t["name"] for t in mine] == ["公安探头"]
    r = client.post(f"{S}/Things", json=thing_body(properties={"department": "220200-gaj"}), headers=env)
    assert r.status_code == 403
    r = client.post(f"{S}/Things", json=thing_body(properties={"department": "nowhere"}), headers=admin)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "properties.department"
    assert get(client, "Things", city.headers("env_admin"))["value"][0]["@iot.id"] == tid


def test_a_thing_needs_a_department(sessions: sessionmaker[Session], client: TestClient) -> None:
    from cityos.sensing.runtime import runtime_of

    with sessions() as s:
        writer = runtime_of(client.app.state.platform).writer  # type: ignore[attr-defined]
        ctx = sta_write.Ctx(s, SYSTEM, Reader(s, SYSTEM, "", None, s.get_bind().dialect.name), writer)
        try:
            sta_write.create_thing(ctx, {"name": "无主设备"}, "")
        except sta_write.Invalid as exc:
            assert exc.errors[0].field == "properties.department"
        else:
            raise AssertionError("a Thing without a department was accepted")


def test_devices_send_to_their_own_streams_only(client: TestClient, city: City,
                                                sessions: sessionmaker[Session]) -> None:
    env = city.headers("env_staff")
    tid, ds = new_thing(client, env)
    other_tid, other_ds = new_thing(client, env, name="另一站")
    with sessions() as s:
        key, secret = service.device_issue(s, SYSTEM, s.get(Thing, tid))
        s.commit()
    dev = basic(key, secret)
    obs = post(client, f"Datastreams({ds})/Observations", {"result": 3.5}, dev)
    assert obs["result"] == 3.5
    assert client.post(f"{S}/Datastreams({other_ds})/Observations", json={"result": 1}, headers=dev).status_code == 403
    assert client.get(f"{S}/Things", headers=dev).status_code == 403
    assert client.post(f"{S}/Things", json=thing_body(), headers=dev).status_code == 403
    assert client.get(f"{S}/Things", headers=basic(key, "wrong")).status_code == 401
    r = client.post(f"{S}/CreateObservations", headers=dev, json=[
        {"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"], "dataArray": [[T0, 1]]}])
    assert r.status_code == 201 and r.json()[0].startswith("http")
    assert other_tid


def test_changes_and_deletes(client: TestClient, city: City, sessions: sessionmaker[Session]) -> None:
    h = city.headers("env_staff")
    tid, ds = new_thing(client, h)
    for minute, value in enumerate((10, 20, 30)):
        post(client, f"Datastreams({ds})/Observations",
             {"phenomenonTime": f"2026-01-01T00:0{minute}:00Z", "result": value}, h)

    r = client.patch(f"{S}/Things({tid})", json={"name": "改名", "properties": {"floor": 4}}, headers=h)
    assert r.status_code == 200 and r.json()["name"] == "改名"
    assert r.json()["properties"] == {"floor": 4, "department": "220200-hbj"}
    r = client.patch(f"{S}/Things({tid})", headers={**h, "content-type": "application/json-patch+json"},
                     content=b'[{"op": "replace", "path": "/description", "value": "JSON Patch"}]')
    assert r.status_code == 200 and r.json()["description"] == "JSON Patch"
    r = client.put(f"{S}/Datastreams({ds})", json={"name": "新名字", "@iot.id": ds}, headers=h)
    assert r.status_code == 200 and r.json()["name"] == "新名字"
    r = client.patch(f"{S}/Datastreams({ds})", json={"observationType": ingest.COUNT}, headers=h)
    assert r.status_code == 409  # it has readings of another type

    # a new Location: a HistoricalLocation, and readings without a FeatureOfInterest take the new one
    r = client.patch(f"{S}/Things({tid})", headers=h, json={"Locations": [{
        "name": "新址", "description": "", "encodingType": "application/geo+json",
        "location": {"type": "Point", "coordinates": [126.7, 43.9]}}]})
    assert r.status_code == 200, r.text
    assert get(client, f"Things({tid})/HistoricalLocations?$count=true&$top=0", h)["@iot.count"] == 2
    same = get(client, f"Things({tid})/Locations", h)["value"][0]["@iot.id"]
    assert client.patch(f"{S}/Things({tid})", json={"Locations": [{"@iot.id": same}]}, headers=h).status_code == 200
    assert get(client, f"Things({tid})/HistoricalLocations?$count=true&$top=0", h)["@iot.count"] == 2
    moved = post(client, f"Datastreams({ds})/Observations", {"phenomenonTime": "2026-01-01T00:05:00Z",
                                                              "result": 1}, h)
    foi = get(client, f"Observations({moved['@iot.id']})/FeatureOfInterest", h)
    assert foi["feature"]["coordinates"] == [126.7, 43.9]

    # changing and deleting readings keeps the rollups right
    r = client.patch(f"{S}/Observations(2)", json={"result": 25}, headers=h)
    assert r.status_code == 200 and r.json()["result"] == 25
    r = client.patch(f"{S}/Observations(2)", json={"phenomenonTime": T0}, headers=h)
    assert r.status_code == 409
    assert client.delete(f"{S}/Observations(1)", headers=h).status_code == 200
    assert client.get(f"{S}/Observations(1)", headers=h).status_code == 404
    with sessions() as s:
        hour = s.scalar(select(Rollup).where(Rollup.datastream_id == ds, Rollup.grain == 3600))
        assert hour is not None and (hour.count, hour.sum, hour.min) == (3, 56.0, 1.0)
        assert s.get(Datastream, ds).phenomenon_start == T0_MS + 60_000  # type: ignore[union-attr]

    # shared entities in use are not deleted; a Datastream goes with its readings and rollups
    assert client.delete(f"{S}/ObservedProperties(1)", headers=h).status_code == 409
    assert client.delete(f"{S}/Sensors(1)", headers=h).status_code == 409
    assert client.delete(f"{S}/Datastreams({ds})", headers=h).status_code == 200
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Observation)) == 0
        assert s.scalar(select(func.count()).select_from(Rollup)) == 0
    r = client.post(f"{S}/Observations", json={"result": 1, "Datastream": {"@iot.id": ds}}, headers=h)
    assert r.status_code == 400  # the writer forgot the stream
    assert client.delete(f"{S}/Sensors(1)", headers=h).status_code == 200
    assert client.delete(f"{S}/Things({tid})", headers=h).status_code == 200
    assert get(client, "Things", h) == {"value": []}
    assert get(client, "HistoricalLocations", h) == {"value": []}
    assert len(get(client, "Locations", h)["value"]) == 2  # Locations stay
    assert client.delete(f"{S}/Locations(1)", headers=h).status_code == 200
