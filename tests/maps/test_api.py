"""The map's JSON API end to end, on both databases: create a layer, upload GeoJSON, read it
back (signed in, through a grant, anonymously once public), locate, nearest, within, measure."""

from __future__ import annotations

from cityos.maps import service as maps
from tests.maps.conftest import grid_polygons


def fc(features):
    return {"type": "FeatureCollection", "features": features}


def feature(fid, geometry, **props):
    return {"type": "Feature", "id": fid, "geometry": geometry, "properties": props}


def point(lon, lat):
    return {"type": "Point", "coordinates": [lon, lat]}


def test_layers_features_and_spatial_services(city):
    c, env, police = city.client, city.headers("env_staff"), city.headers("police_staff")
    r = c.post("/api/maps/layers", headers=env, json={
        "code": "stations", "title": "空气监测站", "geometry_type": "point", "open_type": "open",
        "attributes": [{"name": "name", "title": "名称"}, {"name": "aqi", "type": "integer"}]})
    assert r.status_code == 201, r.text
    assert r.json()["resource"] and r.json()["storage_crs"] == "OGC:CRS84"
    body = fc([feature(f"s{i}", point(126.50 + i / 100, 43.80), name=f"站{i}", aqi=40 + i) for i in range(5)])
    r = c.post("/api/maps/layers/stations/features", headers=env, json=body)
    assert r.status_code == 200 and r.json()["written"] == 5
    bad = fc([feature("b1", {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]})])
    r = c.post("/api/maps/layers/stations/features", headers=env, json=bad)
    assert r.status_code == 422 and "b1" in r.json()["errors"][0]["reason"]
    assert r.headers["content-type"].startswith("application/problem+json")
    r = c.get("/api/maps/layers/stations/features", headers=env, params={"bbox": "126.49,43.79,126.525,43.81"})
    assert r.status_code == 200 and r.json()["numberMatched"] == 3
    assert r.json()["features"][0]["geometry"]["type"] == "Point"
    assert c.get("/api/maps/layers/stations/features/s4", headers=env).json()["properties"]["aqi"] == 44
    r = c.get("/api/maps/layers/stations/nearest", headers=env, params={"lon": 126.531, "lat": 43.8, "k": 2})
    assert [f["id"] for f in r.json()["features"]] == ["s3", "s4"]
    assert 0 < r.json()["features"][0]["distance_m"] < 100
    r = c.post("/api/maps/layers/stations/within", headers=env,
               json={"geometry": point(126.5, 43.8), "metres": 500})
    assert [f["id"] for f in r.json()["features"]] == ["s0"]
    # Another department: refused until it holds a grant; the public: refused until the layer is public.
    assert c.get("/api/maps/layers/stations/features", headers=police).status_code == 403
    assert c.get("/api/maps/layers/stations/features").status_code == 401
    r = c.put("/api/maps/layers/stations/public", headers=env, json={"public": True})
    assert r.status_code == 200 and r.json()["public"] is True
    r = c.get("/api/maps/layers/stations/features", params={"datetime": "2024-01-01T00:00:00Z/.."})
    assert r.status_code == 422  # the layer has no time attribute
    assert c.get("/api/maps/layers/stations/features").json()["numberMatched"] == 5
    assert [la["code"] for la in c.get("/api/maps/layers").json()["items"]] == ["stations"]
    r = c.post("/api/maps/measure", json={"geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 0]]}})
    assert round(r.json()["length_m"], 2) == 111319.49 and r.json()["area_m2"] == 0


def test_locate_single_and_batch(city):
    c, admin = city.client, city.headers("admin")
    r = c.post("/api/maps/layers", headers=admin, json={
        "code": "grid", "title": "网格", "geometry_type": "polygon", "open_type": "open", "public": True,
        "department": "220200", "attributes": [{"name": "code"}]})
    assert r.status_code == 201, r.text
    cells = [feature(f"g{i}", maps_geojson(cell), code=f"G{i:03d}") for i, cell in enumerate(grid_polygons(10))]
    assert c.post("/api/maps/layers/grid/features", headers=admin, json=fc(cells)).status_code == 200
    assert c.put("/api/maps/reference/grid", headers=city.headers("env_admin"),
                 json={"layer": "grid", "attribute": "code"}).status_code == 403
    r = c.put("/api/maps/reference/grid", headers=admin, json={"layer": "grid", "attribute": "code"})
    assert r.status_code == 200
    assert c.get("/api/maps/reference").json() == {"grid": {"layer": "grid", "attribute": "code"}}
    assert c.get("/api/maps/locate", params={"lon": 126.41, "lat": 43.71}).json() == {"grid": "G000"}
    r = c.post("/api/maps/locate", json={"points": [[126.41, 43.71], [0, 0], [126.74, 43.99]]})
    assert r.json() == {"count": 3, "roles": {"grid": ["G000", None, "G099"]}}
    assert c.post("/api/maps/locate", json={"points": [[1, 2, 3]]}).status_code == 422


def maps_geojson(geom):
    import shapely.geometry

    return shapely.geometry.mapping(geom)


def test_layer_list_and_get_follow_read_access(city):
    c, env = city.client, city.headers("env_staff")
    assert c.post("/api/maps/layers", headers=env, json={"code": "private", "title": "内部"}).status_code == 201
    assert c.get("/api/maps/layers/private", headers=env).status_code == 200
    assert c.get("/api/maps/layers/private", headers=city.headers("police_staff")).status_code == 403
    assert c.get("/api/maps/layers/nope", headers=env).status_code == 404
    assert c.get("/api/maps/layers", headers=city.headers("police_staff")).json()["items"] == []
    assert maps.MAX_LIMIT == 10_000
