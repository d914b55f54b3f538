"""OGC API - Features at /ogc, on both databases: Part 1 (landing, conformance, collections,
items with bbox/datetime/limit/offset/property filters, one item, GeoJSON and HTML), Part 2 (crs,
bbox-crs, Content-Crs and axis order), Part 3 (queryables, CQL2 text and JSON), errors in the
OGC shape, access (public, own department, grants through HTTP Basic, API keys and bearer
tokens), and the request sequence QGIS's OAPIF provider sends."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

import pytest
import shapely
from pyproj import Transformer
from sqlalchemy import func, select

from cityos.core import auth
from cityos.core.models import AuditRecord
from cityos.core.service import department_by_code
from cityos.hub import sharing
from cityos.maps import ogc_features, service
from tests.conftest import PASSWORD
from tests.maps.conftest import actor_of, new_layer

UTC = dt.UTC
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG = "http://www.opengis.net/def/crs/EPSG/0/"
T0 = dt.datetime(2024, 6, 1, tzinfo=UTC)
STATION_ATTRS = [{"name": "name", "title": "名称", "type": "string"},
                 {"name": "aqi", "title": "指数", "type": "integer"},
                 {"name": "kind", "title": "类别", "type": "string"},
                 {"name": "at", "title": "时间", "type": "datetime"}]
GEOJSON = {"Accept": "application/geo+json"}


def station(i):
    """Station i of 30: a 6 × 5 grid at 0.01° from (126.50, 43.80), one an hour from T0."""
    return (f"s{i:02d}", shapely.Point(126.50 + (i % 6) * 0.01, 43.80 + (i // 6) * 0.01),
            {"name": f"站{i}", "aqi": 20 + 3 * i, "kind": "a" if i % 2 else "b",
             "at": (T0 + dt.timedelta(hours=i)).isoformat()})


STATIONS = [station(i) for i in range(30)]


def ids(where):
    return sorted(fid for fid, geom, props in STATIONS if where(geom, props))


def fids(r):
    assert r.status_code == 200, r.text
    return sorted(f["id"] for f in r.json()["features"])


def basic(username, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture
def ogc(city, sessions):
    """The small city with a public station layer and a private polygon layer of 市环保局."""
    with sessions() as s:
        env = actor_of(s, "env_staff")
        new_layer(s, "stations", "point", actor=env, attributes=STATION_ATTRS, time_field="at",
                  open_type="open", public=True, title_en="Stations")
        service.features_write(s, env, "stations", STATIONS)
        new_layer(s, "zones", "polygon", actor=env,
                  attributes=[{"name": "name", "type": "string"}, {"name": "level", "type": "integer"}])
        service.features_write(s, env, "zones", [
            ("z1", shapely.box(126.50, 43.80, 126.53, 43.83), {"name": "一区", "level": 1}),
            ("z2", shapely.box(126.53, 43.80, 126.56, 43.83), {"name": "二区", "level": 2})])
        s.commit()
    return city


def grant_zones(sessions):
    """A sharing grant of the zones layer to 市公安局 (its catalog entry shares unconditionally)."""
    with sessions() as s:
        police = actor_of(s, "police_staff")
        code = service.layer_by_code(s, "zones").resource_code
        req = sharing.request_create(s, police, code, purpose="治安巡查", legal_basis=None,
                                     fields=["name", "level"])
        assert req.state == "granted"
        s.commit()


def police_key(sessions):
    with sessions() as s:
        raw, _ = auth.apikey_issue(s, name="qgis", department=department_by_code(s, "220200-gaj"),
                                   scopes=["hub.data.read"], created_by="test")
        s.commit()
    return raw


def audits(sessions, action):
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.action == action))


def rel(doc, name, type_=None):
    return [lk["href"] for lk in doc["links"] if lk["rel"] == name and (type_ is None or lk["type"] == type_)]


# -- Part 1: landing, conformance, collections ---------------------------------------------------


def test_landing_conformance_and_api_definition(ogc):
    c = ogc.client
    r = c.get("/ogc")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert rel(doc, "service-desc", "application/vnd.oai.openapi+json;version=3.0")[0].endswith("/ogc/api")
    assert rel(doc, "conformance")[0].endswith("/ogc/conformance")
    assert rel(doc, "data", "application/json")[0].endswith("/ogc/collections")
    assert rel(doc, "self", "application/json") and rel(doc, "alternate", "text/html")
    assert c.get("/ogc/").json()["links"] == doc["links"]  # OWSLib asks with a trailing slash
    conf = c.get("/ogc/conformance").json()["conformsTo"]
    assert conf == ogc_features.CONFORMANCE
    for uri in ("ogcapi-features-1/1.0/conf/core", "ogcapi-features-1/1.0/conf/geojson",
                "ogcapi-features-1/1.0/conf/html", "ogcapi-features-1/1.0/conf/oas30",
                "ogcapi-features-2/1.0/conf/crs", "ogcapi-features-3/1.0/conf/filter",
                "ogcapi-features-3/1.0/conf/features-filter", "ogcapi-features-3/1.0/conf/queryables",
                "cql2/1.0/conf/cql2-text", "cql2/1.0/conf/cql2-json", "cql2/1.0/conf/basic-cql2",
                "cql2/1.0/conf/advanced-comparison-operators", "cql2/1.0/conf/basic-spatial-functions",
                "cql2/1.0/conf/temporal-functions"):
        assert f"http://www.opengis.net/spec/{uri}" in conf
    r = c.get("/ogc/api")
    assert r.headers["content-type"] == "application/vnd.oai.openapi+json;version=3.0"
    api = r.json()
    assert api["openapi"] == "3.0.3" and api["servers"][0]["url"].endswith("/ogc")
    limit = api["components"]["parameters"]["limit"]["schema"]
    assert (limit["default"], limit["maximum"]) == (10, 10_000)
    assert "/collections/{collectionId}/items" in api["paths"]
    assert "stations" not in json.dumps(api)  # names no layer


def test_collections_show_what_the_caller_may_read(ogc):
    c = ogc.client
    assert [x["id"] for x in c.get("/ogc/collections").json()["collections"]] == ["stations"]
    env = c.get("/ogc/collections", headers=ogc.headers("env_staff")).json()
    assert [x["id"] for x in env["collections"]] == ["stations", "zones"]
    police = c.get("/ogc/collections", headers=ogc.headers("police_staff")).json()
    assert [x["id"] for x in police["collections"]] == ["stations"]
    assert env["collections"][0]["crs"] == ["#/crs"] and f"{EPSG}4490" in env["crs"]
    doc = c.get("/ogc/collections/stations").json()
    assert doc["id"] == "stations" and doc["title"] == "图层 stations" and doc["itemType"] == "feature"
    assert doc["storageCrs"] == CRS84 and CRS84 in doc["crs"] and f"{EPSG}4326" in doc["crs"]
    assert doc["extent"]["spatial"] == {"bbox": [pytest.approx([126.50, 43.80, 126.55, 43.84])], "crs": CRS84}
    assert doc["extent"]["temporal"]["interval"] == [["2024-06-01T00:00:00Z", "2024-06-02T05:00:00Z"]]
    assert rel(doc, "items", "application/geo+json")[0].endswith("/ogc/collections/stations/items?f=json")
    assert rel(doc, "http://www.opengis.net/def/rel/ogc/1.0/queryables", "application/schema+json")
    assert c.get("/ogc/collections/stations", params={"lang": "en"}).json()["title"] == "Stations"
    zones = c.get("/ogc/collections/zones", headers=ogc.headers("env_staff")).json()
    assert "temporal" not in zones["extent"]


def test_queryables_are_the_readable_attributes_and_the_geometry(ogc, sessions):
    c = ogc.client
    r = c.get("/ogc/collections/stations/queryables")
    assert r.status_code == 200 and r.headers["content-type"] == "application/schema+json"
    doc = r.json()
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"].endswith("/ogc/collections/stations/queryables") and doc["type"] == "object"
    props = doc["properties"]
    assert list(props) == ["name", "aqi", "kind", "at", "geometry"]
    assert props["aqi"] == {"title": "指数", "type": "integer"}
    assert props["at"] == {"title": "时间", "type": "string", "format": "date-time", "x-ogc-role": "primary-instant"}
    assert props["geometry"]["format"] == "geometry-point-or-multipoint"
    assert props["geometry"]["$ref"].startswith("https://geojson.org/schema/")
    # Through a grant: only the granted fields.
    with sessions() as s:
        police = actor_of(s, "police_staff")
        code = service.layer_by_code(s, "zones").resource_code
        sharing.request_create(s, police, code, purpose="巡查", legal_basis=None, fields=["name"])
        s.commit()
    doc = c.get("/ogc/collections/zones/queryables", headers=ogc.headers("police_staff")).json()
    assert list(doc["properties"]) == ["name", "geometry"]
    r = c.get("/ogc/collections/zones/items", headers=ogc.headers("police_staff"),
              params={"filter": "level = 1"})
    assert r.status_code == 400 and "level" in r.json()["detail"]


# -- Part 1: items ---------------------------------------------------------------------------------


def test_items_page_through_next_links(ogc):
    c = ogc.client
    r = c.get("/ogc/collections/stations/items")
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    assert r.headers["content-crs"] == f"<{CRS84}>"
    doc = r.json()
    assert doc["type"] == "FeatureCollection" and doc["numberReturned"] == 10 and doc["numberMatched"] == 30
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", doc["timeStamp"])
    f = doc["features"][0]
    assert set(f) == {"type", "id", "geometry", "properties"} and f["geometry"]["type"] == "Point"
    # Follow next links to the end, as clients do; each page knows the total.
    for params in ({"limit": 7}, {"limit": 7, "bbox": "126.495,43.795,126.535,43.845"}):
        seen, url, pages = [], "/ogc/collections/stations/items", 0
        expected = 30 if "bbox" not in params else len(ids(lambda g, p: g.x < 126.535))
        while url:
            r = c.get(url, params=params if pages == 0 else None, headers=GEOJSON)
            doc = r.json()
            assert doc["numberMatched"] == expected and doc["numberReturned"] <= 7
            seen += [f["id"] for f in doc["features"]]
            assert bool(rel(doc, "prev", "application/geo+json")) == (pages > 0)
            nxt = rel(doc, "next", "application/geo+json")
            url = nxt[0] if nxt else None
            pages += 1
        assert len(seen) == len(set(seen)) == expected and pages == -(-expected // 7)
    # limit above the maximum is clamped; nonsense is refused
    r = c.get("/ogc/collections/stations/items", params={"limit": 50_000})
    assert r.status_code == 200 and r.json()["numberReturned"] == 30 and not rel(r.json(), "next")
    for bad in ({"limit": 0}, {"limit": "ten"}, {"offset": -1}, {"bbox": "1,2,3"}, {"bbox": "3,2,1,0"},
                {"crs": "EPSG:9999"}, {"bogus": "1"}, {"f": "xml"}):
        r = c.get("/ogc/collections/stations/items", params=bad)
        assert r.status_code == 400, (bad, r.text)
        body = r.json()
        assert body["code"] == "InvalidParameterValue" and body["description"] == body["detail"]
        assert body["status"] == 400 and r.headers["content-type"] == "application/problem+json"
    assert "bogus" in c.get("/ogc/collections/stations/items", params={"bogus": 1}).json()["detail"]
    assert "crs" in c.get("/ogc/collections/stations/items", params={"crs": "EPSG:9999"}).json()["detail"]


def test_number_matched_is_omitted_when_counting_would_cost_too_much(ogc, monkeypatch):
    monkeypatch.setattr(ogc_features, "COUNT_BUDGET", 0)
    c = ogc.client
    seen, url, params = [], "/ogc/collections/stations/items", {"limit": 10, "bbox": "126.4,43.7,126.6,43.9"}
    while url:
        doc = c.get(url, params=params).json()
        seen += [f["id"] for f in doc["features"]]
        nxt = rel(doc, "next")
        assert ("numberMatched" in doc) == (not nxt)  # only the last page knows the total for free
        url, params = (nxt[0] if nxt else None), None
    assert len(set(seen)) == 30 and doc["numberMatched"] == 30  # and no empty page at the end


def test_large_pages_are_streamed(ogc, monkeypatch):
    monkeypatch.setattr(ogc_features, "STREAM_FROM", 5)
    r = ogc.client.get("/ogc/collections/stations/items", params={"limit": 30})
    doc = r.json()
    assert doc["numberReturned"] == 30 and len({f["id"] for f in doc["features"]}) == 30
    assert r.headers["content-crs"] == f"<{CRS84}>"


def test_bbox_in_crs84_epsg4326_and_epsg3857(ogc):
    c = ogc.client
    box = (126.515, 43.805, 126.545, 43.825)
    want = ids(lambda g, p: box[0] <= g.x <= box[2] and box[1] <= g.y <= box[3])
    assert len(want) == 6
    url = "/ogc/collections/stations/items"
    assert fids(c.get(url, params={"bbox": ",".join(map(str, box))})) == want
    lat_first = f"{box[1]},{box[0]},{box[3]},{box[2]}"
    assert fids(c.get(url, params={"bbox": lat_first, "bbox-crs": f"{EPSG}4326"})) == want
    assert fids(c.get(url, params={"bbox": lat_first, "bbox-crs": "EPSG:4490"})) == want
    to_merc = Transformer.from_crs("OGC:CRS84", "EPSG:3857", always_xy=True)
    x0, y0 = to_merc.transform(box[0], box[1])
    x1, y1 = to_merc.transform(box[2], box[3])
    assert fids(c.get(url, params={"bbox": f"{x0},{y0},{x1},{y1}", "bbox-crs": f"{EPSG}3857"})) == want
    six = f"{box[0]},{box[1]},0,{box[2]},{box[3]},100"
    assert fids(c.get(url, params={"bbox": six})) == want
    r = c.get(url, params={"bbox": ",".join(map(str, box)), "bbox-crs": "EPSG:1"})
    assert r.status_code == 400 and "bbox-crs" in r.json()["detail"]


def test_crs_output_axis_order_and_content_crs(ogc):
    c = ogc.client
    url = "/ogc/collections/stations/items/s07"  # (126.51, 43.81)
    r = c.get(url)
    assert r.headers["content-crs"] == f"<{CRS84}>" and r.headers["content-type"] == "application/geo+json"
    assert r.json()["geometry"]["coordinates"] == pytest.approx([126.51, 43.81])
    assert r.json()["properties"]["aqi"] == 41 and rel(r.json(), "collection")
    for code in ("4490", "4326"):
        r = c.get(url, params={"crs": f"{EPSG}{code}"})
        assert r.headers["content-crs"] == f"<{EPSG}{code}>"
        assert r.json()["geometry"]["coordinates"] == pytest.approx([43.81, 126.51])  # latitude first
    r = c.get("/ogc/collections/stations/items", params={"crs": f"{EPSG}4490", "bbox": "126.505,43.805,126.515,43.815"})
    assert r.headers["content-crs"] == f"<{EPSG}4490>"
    assert [f["geometry"]["coordinates"] for f in r.json()["features"]] == [pytest.approx([43.81, 126.51])]
    r = c.get(url, params={"crs": "EPSG:3857"})
    assert r.headers["content-crs"] == f"<{EPSG}3857>"
    x, y = Transformer.from_crs("OGC:CRS84", "EPSG:3857", always_xy=True).transform(126.51, 43.81)
    assert r.json()["geometry"]["coordinates"] == pytest.approx([x, y])
    r = c.get(url, params={"crs": "urn:ogc:def:crs:EPSG::4551"})  # CGCS2000 GK CM 126°E: northing first
    n, e = r.json()["geometry"]["coordinates"]
    assert 4_800_000 < n < 4_900_000 and 500_000 < e < 600_000
    r = c.get(url, params={"crs": "http://www.opengis.net/def/crs/EPSG/0/12345"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameterValue"


def test_datetime_instant_interval_and_open_ends(ogc):
    c = ogc.client
    url = "/ogc/collections/stations/items"

    def at(i):
        return (T0 + dt.timedelta(hours=i)).isoformat().replace("+00:00", "Z")

    assert fids(c.get(url, params={"datetime": at(5)})) == ["s05"]
    assert fids(c.get(url, params={"datetime": f"{at(0)}/{at(3)}", "limit": 100})) == ["s00", "s01", "s02", "s03"]
    assert fids(c.get(url, params={"datetime": f"{at(27)}/..", "limit": 100})) == ["s27", "s28", "s29"]
    assert fids(c.get(url, params={"datetime": f"../{at(1)}"})) == ["s00", "s01"]
    assert fids(c.get(url, params={"datetime": "2024-06-01T10:00:00+08:00"})) == ["s02"]
    r = c.get(url, params={"datetime": "2024-06-02", "limit": 100})  # the city's day (UTC+8)
    assert fids(r) == [f"s{i:02d}" for i in range(16, 30)]
    for bad in ("yesterday", "2024-06-01T00:00:00", f"{at(3)}/{at(1)}", "2024-13-01"):
        assert c.get(url, params={"datetime": bad}).status_code == 400, bad
    r = c.get("/ogc/collections/zones/items", headers=ogc.headers("env_staff"), params={"datetime": at(1)})
    assert r.status_code == 400  # the layer has no time


def test_property_filters_use_the_queryables(ogc):
    c = ogc.client
    url = "/ogc/collections/stations/items"
    assert fids(c.get(url, params={"kind": "a", "limit": 100})) == ids(lambda g, p: p["kind"] == "a")
    assert fids(c.get(url, params={"aqi": "23"})) == ["s01"]
    assert fids(c.get(url, params={"kind": "b", "aqi": "26"})) == ["s02"]
    assert c.get(url, params={"kind": "a"}).json()["numberMatched"] == 15
    assert c.get(url, params={"aqi": "many"}).status_code == 400


# -- Part 3: CQL2 ------------------------------------------------------------------------------------


def test_cql2_text_filters(ogc):
    c = ogc.client
    url = "/ogc/collections/stations/items"

    def q(text, **kw):
        return fids(c.get(url, params={"filter": text, "limit": 100, **kw}))

    assert q("aqi > 80 AND kind = 'a'") == ids(lambda g, p: p["aqi"] > 80 and p["kind"] == "a")
    assert q("kind = 'a' OR aqi < 26") == ids(lambda g, p: p["kind"] == "a" or p["aqi"] < 26)
    assert q("NOT (kind = 'a')") == ids(lambda g, p: p["kind"] != "a")
    assert q("name LIKE '站1%' AND aqi BETWEEN 50 AND 60") == ["s10", "s11", "s12", "s13"]
    assert q("aqi IN (20, 23, 999)") == ["s00", "s01"]
    poly = "POLYGON((126.505 43.795, 126.525 43.795, 126.525 43.815, 126.505 43.815, 126.505 43.795))"
    inside = ids(lambda g, p: 126.505 <= g.x <= 126.525 and 43.795 <= g.y <= 43.815)
    assert inside == ["s01", "s02", "s07", "s08"]
    assert q(f"S_INTERSECTS(geometry, {poly})") == inside
    assert q(f"S_WITHIN(geometry, {poly}) AND kind = 'a'") == ["s01", "s07"]
    assert q(f"NOT S_INTERSECTS(geometry, {poly}) AND aqi < 30") == ["s00", "s03"]
    assert q("T_INTERSECTS(at, INTERVAL('2024-06-01T00:00:00Z', '2024-06-01T02:00:00Z'))") == ["s00", "s01", "s02"]
    assert q("T_AFTER(at, TIMESTAMP('2024-06-02T02:00:00Z'))") == ["s27", "s28", "s29"]
    # Literals in another CRS, in its own axis order.
    lat_first = "POLYGON((43.795 126.505, 43.795 126.525, 43.815 126.525, 43.815 126.505, 43.795 126.505))"
    assert q(f"S_INTERSECTS(geometry, {lat_first})", **{"filter-crs": f"{EPSG}4326"}) == inside
    # CQL2 JSON, and a filter together with bbox, datetime and a property filter.
    j = {"op": "and", "args": [{"op": ">=", "args": [{"property": "aqi"}, 50]},
                               {"op": "=", "args": [{"property": "kind"}, "b"]}]}
    assert q(json.dumps(j), **{"filter-lang": "cql2-json"}) == ids(lambda g, p: p["aqi"] >= 50 and p["kind"] == "b")
    assert q("aqi < 60", bbox="126.495,43.795,126.525,43.845", kind="a") == ["s01", "s07", "s13"]


def test_malformed_or_unknown_filters_are_400_naming_the_token(ogc):
    c = ogc.client
    url = "/ogc/collections/stations/items"
    r = c.get(url, params={"filter": "aqi > 50 AN kind = 'a'"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "InvalidParameterValue" and body["token"] == "AN" and body["column"] == 10
    assert "'AN'" in body["description"] and "column 10" in body["detail"]
    r = c.get(url, params={"filter": "height > 3"})
    assert r.status_code == 400 and "height" in r.json()["detail"]
    r = c.get(url, params={"filter": "aqi > 3", "filter-lang": "ecql"})
    assert r.status_code == 400 and "filter-lang" in r.json()["detail"]
    r = c.get(url, params={"filter": "S_INTERSECTS(geometry, POINT(1 2))", "filter-crs": "EPSG:77"})
    assert r.status_code == 400 and "filter-crs" in r.json()["detail"]


def test_unknown_collection_and_item_are_404(ogc):
    c = ogc.client
    for url in ("/ogc/collections/nope", "/ogc/collections/nope/items", "/ogc/collections/nope/queryables",
                "/ogc/collections/stations/items/s99"):
        r = c.get(url)
        assert r.status_code == 404, url
        assert r.json()["code"] == "NotFound" and r.json()["description"]


# -- access ------------------------------------------------------------------------------------------


def test_private_layers_need_own_department_or_a_grant(ogc, sessions):
    c = ogc.client
    url = "/ogc/collections/zones/items"
    r = c.get(url)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="CityOS"'
    assert r.json()["code"] == "Unauthorized"
    assert fids(c.get(url, headers=ogc.headers("env_staff"))) == ["z1", "z2"]
    assert fids(c.get(url, headers=basic("env_staff", PASSWORD))) == ["z1", "z2"]
    r = c.get(url, headers=ogc.headers("police_staff"))
    assert r.status_code == 403 and r.json()["code"] == "Forbidden"
    assert c.get("/ogc/collections/zones", headers=basic("police_staff", PASSWORD)).status_code == 403
    key = police_key(sessions)
    assert c.get(url, headers=basic("qgis", key)).status_code == 403
    grant_zones(sessions)
    before = audits(sessions, "hub.data.read")
    for headers in (basic("police_staff", PASSWORD), basic("anything", key), ogc.headers("police_staff"),
                    {"X-API-Key": key}):
        r = c.get(url, headers=headers, params={"purpose": "巡查核对"})
        assert fids(r) == ["z1", "z2"] and r.json()["numberMatched"] == 2
    assert audits(sessions, "hub.data.read") == before + 4  # one record per shared read, not two
    with sessions() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "hub.data.read")
                       .order_by(AuditRecord.seq.desc()).limit(1))
    assert rec.department == "220200-hbj" and rec.purpose == "巡查核对" and rec.detail["layer"] == "zones"
    r = c.get(f"{url}/z1", headers=basic("police_staff", PASSWORD))
    assert r.status_code == 200 and r.json()["properties"] == {"name": "一区", "level": 1}
    ids_ = [x["id"] for x in c.get("/ogc/collections", headers=basic("qgis", key)).json()["collections"]]
    assert ids_ == ["stations", "zones"]


def test_failed_basic_credentials_are_401_and_count_towards_lockout(ogc, sessions):
    c = ogc.client
    url = "/ogc/collections/stations/items"
    for headers in (basic("env_staff", "wrong"), basic("nobody", "x"), basic("qgis", "cos_abc_def"),
                    {"Authorization": "Basic !!!"}, {"Authorization": "Bearer nope"}):
        r = c.get(url, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == 'Basic realm="CityOS"' and r.json()["code"] == "Unauthorized"
    # A verified password is remembered: QGIS's many requests are not each a login.
    logins = audits(sessions, "auth.login")
    for _ in range(3):
        assert c.get(url, headers=basic("env_admin", PASSWORD)).status_code == 200
    assert audits(sessions, "auth.login") == logins + 1
    for _ in range(5):  # the core's threshold: the account locks
        c.get(url, headers=basic("env_staff", "wrong"))
    r = c.get(url, headers=basic("env_staff", PASSWORD))
    assert r.status_code == 423 and r.json()["code"] == "Locked" and "retry-after" in r.headers


# -- HTML ------------------------------------------------------------------------------------------


def _no_inline_script(html):
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag


def test_html_pages(ogc):
    c = ogc.client
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    for url in ("/ogc", "/ogc/conformance", "/ogc/collections", "/ogc/collections/stations",
                "/ogc/collections/stations/queryables", "/ogc/collections/stations/items",
                "/ogc/collections/stations/items/s03"):
        r = c.get(url, headers=browser)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), url
        _no_inline_script(r.text)
        assert c.get(url, params={"f": "html"}).headers["content-type"].startswith("text/html")
        assert not c.get(url).headers["content-type"].startswith("text/html")  # */* is JSON
    r = c.get("/ogc/collections/stations/items", params={"f": "html", "limit": 5, "offset": 5})
    assert 'id="ogc-map"' in r.text and 'id="ogc-data"' in r.text and "/static/maps/ogc.js" in r.text
    assert "/static/vendor/leaflet/leaflet.js" in r.text
    page = c.get("/ogc/collections/stations/items", params={"limit": 5, "offset": 5}).json()["features"]
    shown = set(re.findall(r"<td>(站\d+)</td>", r.text))
    assert shown == {f["properties"]["name"] for f in page} and len(shown) == 5
    assert 'rel="next"' in r.text and 'rel="prev"' in r.text and "共 30 个要素" in r.text
    data = re.search(r'<script type="application/json" id="ogc-data">(.*?)</script>', r.text, re.S).group(1)
    assert len(json.loads(data)["features"]) == 5
    assert "Features" in c.get("/ogc/collections/stations/items", params={"f": "html", "lang": "en"}).text
    r = c.get("/ogc/collections/zones/items", params={"f": "html"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="CityOS"'
    r = c.get("/ogc/collections/zones/items", params={"f": "html"}, headers=basic("env_staff", PASSWORD))
    assert r.status_code == 200 and "一区" in r.text
    assert c.get("/ogc/collections/nope", headers=browser).status_code == 404
    assert c.get("/static/maps/ogc.js").status_code == 200


# -- QGIS ------------------------------------------------------------------------------------------


def test_qgis_oapif_request_sequence(ogc, sessions):
    """What QGIS's OAPIF provider asks, in its order and with its Accept headers and parameters."""
    grant_zones(sessions)
    c = ogc.client
    qgis = basic("police_staff", PASSWORD)  # QGIS sends Basic from its authentication config

    def get(url, accept, **params):
        r = c.get(url, headers={**qgis, "Accept": accept}, params=params or None)
        assert r.status_code == 200, (url, r.text)
        return r

    landing = get("http://testserver/ogc", "application/json").json()
    api_url = rel(landing, "service-desc", "application/vnd.oai.openapi+json;version=3.0")[0]
    collections_url = rel(landing, "data", "application/json")[0].split("?")[0]
    conformance_url = rel(landing, "conformance")[0]
    api = get(api_url, "application/vnd.oai.openapi+json;version=3.0, application/openapi+json;version=3.0, "
                       "application/json").json()
    page_size = min(max(1000, api["components"]["parameters"]["limit"]["schema"]["default"]),
                    api["components"]["parameters"]["limit"]["schema"]["maximum"])
    # The layer browser lists the collections.
    listed = get(collections_url, "application/json", f="json").json()
    assert {x["id"] for x in listed["collections"]} == {"stations", "zones"}
    for x in listed["collections"]:
        assert rel(x, "items", "application/geo+json")
    for typename in ("zones", "stations"):
        coll = get(f"{collections_url}/{typename}", "application/json").json()
        assert coll["storageCrs"] == CRS84 and coll["extent"]["spatial"]["bbox"]
        conf = get(conformance_url, "application/json").json()["conformsTo"]
        assert "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs" in conf
        assert "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2" in conf
        queryables = get(f"{collections_url}/{typename}/queryables", "application/schema+json").json()
        assert all("type" in v or "$ref" in v for v in queryables["properties"].values())
        items_url = f"{collections_url}/{typename}/items"
        first = get(f"{items_url}?limit=10", "application/geo+json, application/json").json()
        assert first["numberMatched"] == (2 if typename == "zones" else 30)
        assert all("id" in f for f in first["features"])
    # The layer added in EPSG:4326: the map's extent as a lat-first bbox, output in 4326, paged.
    items_url = f"{collections_url}/stations/items"
    url = (f"{items_url}?limit={page_size}&bbox=43.7,126.4,43.9,126.6&bbox-crs={EPSG}4326&crs={EPSG}4326")
    got = []
    while url:
        r = get(url, "application/geo+json, application/json")
        assert r.headers["content-crs"] == f"<{EPSG}4326>"
        doc = r.json()
        got += [f["geometry"]["coordinates"] for f in doc["features"]]
        nxt = rel(doc, "next", "application/geo+json")
        url = nxt[0] if nxt else None
    assert len(got) == 30 and all(43 < lat < 44 and 126 < lon < 127 for lat, lon in got)
    # Smaller pages chain through next links that QGIS follows as given.
    url, seen = f"{items_url}?limit=8&bbox=126.4,43.7,126.6,43.9", []
    while url:
        doc = get(url, "application/geo+json, application/json").json()
        seen += [f["id"] for f in doc["features"]]
        nxt = rel(doc, "next", "application/geo+json")
        url = nxt[0] if nxt else None
    assert sorted(seen) == [s[0] for s in STATIONS]
    # Feature count, and a server-side filter translated from a QGIS expression.
    assert get(f"{items_url}?limit=1", "application/geo+json, application/json").json()["numberMatched"] == 30
    doc = get(f"{items_url}?limit=1000&filter=%22aqi%22%20%3E%2080&filter-lang=cql2-text",
              "application/geo+json, application/json").json()
    assert doc["numberMatched"] == len(ids(lambda g, p: p["aqi"] > 80))
