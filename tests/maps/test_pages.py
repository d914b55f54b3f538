"""The map pages, on both databases: the public map at /map without signing in (public layers
only), the console map behind the login (the layers one may read, the network tools for those
who can read a network), their JSON config, no inline script, nothing from the internet, and
the tile setting."""

from __future__ import annotations

import html
import json
import re

import pytest
import shapely

from cityos.app import create_app
from cityos.core.access import SYSTEM
from cityos.maps import pipes, pipes_service, service
from tests.core.test_pages import signed_in

TWO_DISTRICTS = [("220202", "昌邑区", shapely.box(126.40, 43.85, 126.55, 43.95)),
                 ("220204", "船营区", shapely.box(126.40, 43.75, 126.55, 43.85))]


def small_map(session) -> None:
    """Public districts (the district reference), roads and timed road works; 市环保局's water
    network (not public); a closed layer of 市公安局."""
    def layer(code, gtype, dept, attrs, public=True, **kw):
        service.layer_create(session, SYSTEM, {
            "code": code, "title": f"图层{code}", "department": dept, "geometry_type": gtype,
            "attributes": [{"name": n, "type": t} for n, t in attrs], "public": public,
            "open_type": "open" if public else "closed", **kw})

    layer("districts", "polygon", "220200-hbj", [("code", "string"), ("name", "string")],
          keywords=["行政区划", "底图"])
    service.features_write(session, SYSTEM, "districts",
                           [(c, g, {"code": c, "name": n}) for c, n, g in TWO_DISTRICTS])
    service.reference_set(session, SYSTEM, "district", "districts", "code")
    layer("roads", "line", "220200-hbj", [("name", "string")], keywords=["道路", "底图"])
    service.features_write(session, SYSTEM, "roads", [
        ("r1", shapely.LineString([(126.42, 43.80), (126.53, 43.90)]), {"name": "<b>解放大路</b>"})])
    layer("works", "line", "220200-hbj", [("name", "string"), ("start", "date"), ("end", "date")],
          time_field="start", time_end_field="end")
    service.features_write(session, SYSTEM, "works", [
        ("w1", shapely.LineString([(126.45, 43.82), (126.46, 43.83)]),
         {"name": "施工", "start": "2026-03-01", "end": "2026-03-20"})])
    layer("patrols", "point", "220200-gaj", [("name", "string")], public=False)
    service.features_write(session, SYSTEM, "patrols", [("p1", shapely.Point(126.5, 43.9), {"name": "巡逻点"})])
    ps, vs, cs, ss = pipes.generate_network(126.47, 43.88, 600, 200, seed=1)
    pipes_service.network_create(session, SYSTEM, "water-t", "测试管网", department="220200-hbj")
    pipes_service.network_write(session, SYSTEM, "water-t", {"pipes": ps, "valves": vs, "customers": cs,
                                                             "sources": ss})
    session.commit()


def config_of(page: str) -> dict:
    match = re.search(r"data-config='([^']*)'", page)
    assert match, "no map config on the page"
    return json.loads(html.unescape(match.group(1)))


def assert_self_contained(page: str) -> None:
    """No inline script, and nothing loaded from another site."""
    for match in re.finditer(r"<script\b([^>]*)>(.*?)</script>", page, re.S):
        assert 'src="/static/' in match.group(1) and not match.group(2).strip()
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", page)
    assert 'src="/static/vendor/leaflet/leaflet.js"' in page and 'src="/static/maps/map.js"' in page
    assert 'href="/static/vendor/leaflet/leaflet.css"' in page


@pytest.fixture
def mapped(sessions, city):
    with sessions() as s:
        small_map(s)
    return city


def test_the_public_map_needs_no_login_and_shows_public_layers_only(client, mapped):
    r = client.get("/map")
    assert r.status_code == 200 and "content-security-policy" in r.headers
    assert_self_contained(r.text)
    cfg = config_of(r.text)
    by_code = {la["code"]: la for la in cfg["layers"]}
    assert set(by_code) == {"districts", "roads", "works"}
    assert by_code["districts"]["role"] == "district" and by_code["districts"]["on"]
    assert by_code["roads"]["look"] == "road" and by_code["roads"]["on"] and not by_code["works"]["on"]
    assert by_code["works"]["time"][0].startswith("2026-02-28T16:00:00")  # 1 March in the city, in UTC
    assert cfg["reference"] == {"district": {"layer": "districts", "attribute": "code"}}
    assert cfg["networks"] == [] and cfg["tile_url"] is None and not cfg["console"]
    assert cfg["view"] == pytest.approx([126.40, 43.75, 126.55, 43.95])
    assert 'data-tool="burst"' not in r.text and 'data-tool="box"' in r.text
    assert "图层districts" in r.text and 'data-time-range="works"' in r.text
    # What the map fetches is open to the public too.
    assert client.get("/api/maps/layers/districts/features").json()["numberReturned"] == 2
    assert client.get("/api/maps/locate?lon=126.5&lat=43.9").json() == {"district": "220202"}
    assert client.get("/api/maps/layers/water-t-pipes/features").status_code == 401
    en = client.get("/map?lang=en")
    assert "One map" in en.text and config_of(en.text)["text"]["burst_title"] == "Burst analysis"
    # The portal's home page links to it.
    assert 'href="/map"' in client.get("/").text


def test_the_console_map_needs_a_login(client, mapped):
    r = client.get("/console/maps", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=%2Fconsole%2Fmaps")


def test_the_console_map_shows_what_one_may_read_and_the_network_tools(client, mapped):
    signed_in(client, "env_staff")
    r = client.get("/console/maps")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert_self_contained(r.text)
    cfg = config_of(r.text)
    codes = {la["code"]: la for la in cfg["layers"]}
    assert set(codes) == {"districts", "roads", "works", "water-t-pipes", "water-t-valves",
                          "water-t-customers", "water-t-sources"}
    assert codes["water-t-pipes"]["network"] == "water-t" and codes["water-t-pipes"]["part"] == "pipes"
    assert codes["water-t-pipes"]["on"] and not codes["water-t-customers"]["on"]
    assert [n["code"] for n in cfg["networks"]] == ["water-t"] and cfg["console"]
    assert cfg["pipe_kinds"]["water"]["colour"] == "#00bfff"
    assert 'data-tool="burst"' in r.text and 'data-tool="dig"' in r.text
    assert '<option value="water-t">测试管网' in r.text
    assert 'href="/console/maps" aria-current="page"' in r.text  # the console's navigation


def test_a_department_without_a_network_gets_no_network_tools(client, mapped):
    signed_in(client, "police_staff")
    r = client.get("/console/maps")
    cfg = config_of(r.text)
    assert {la["code"] for la in cfg["layers"]} == {"districts", "roads", "works", "patrols"}
    assert cfg["networks"] == [] and 'data-tool="burst"' not in r.text


def test_a_tile_server_is_a_setting(settings, engine, mapped):
    from fastapi.testclient import TestClient

    app = create_app(settings.model_copy(update={"map_tile_url": "/tiles/{z}/{x}/{y}.png"}), engine=engine)
    with TestClient(app) as c:
        r = c.get("/map")
    assert config_of(r.text)["tile_url"] == "/tiles/{z}/{x}/{y}.png" and "data-tiles" in r.text
