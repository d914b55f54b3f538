"""OWSLib's OGC API - Features client against a live CityOS, on both databases: public layers
without signing in, shared ones with HTTP Basic (password or API key) or a bearer token."""

from __future__ import annotations

import datetime as dt

import pytest
import shapely
from owslib import ogcapi
from owslib.ogcapi.features import Features
from owslib.util import Authentication

from cityos.core import auth
from cityos.core.models import User
from cityos.core.service import department_by_code
from cityos.hub import sharing
from cityos.maps import service
from tests.conftest import PASSWORD, seed_small_city
from tests.maps.conftest import actor_of, new_layer

T0 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
ATTRS = [{"name": "name", "type": "string"}, {"name": "aqi", "type": "integer"},
         {"name": "at", "type": "datetime"}]


@pytest.fixture
def owslib_headers(monkeypatch):
    # OWSLib updates one module-level dict with the headers it is given: keep each test's own.
    monkeypatch.setattr(ogcapi, "REQUEST_HEADERS", dict(ogcapi.REQUEST_HEADERS))


@pytest.fixture
def served(sessions, live_server, owslib_headers):
    """A public station layer and a private polygon layer of 市环保局, granted to 市公安局."""
    with sessions() as s:
        seed_small_city(s)
        env = actor_of(s, "env_staff")
        new_layer(s, "stations", "point", actor=env, attributes=ATTRS, time_field="at", open_type="open",
                  public=True)
        service.features_write(s, env, "stations", [
            (f"s{i:02d}", shapely.Point(126.50 + (i % 5) * 0.01, 43.80 + (i // 5) * 0.01),
             {"name": f"站{i}", "aqi": 20 + i, "at": (T0 + dt.timedelta(hours=i)).isoformat()})
            for i in range(25)])
        new_layer(s, "zones", "polygon", actor=env, attributes=[{"name": "name", "type": "string"}])
        service.features_write(s, env, "zones", [
            ("z1", shapely.box(126.50, 43.80, 126.53, 43.83), {"name": "一区"}),
            ("z2", shapely.box(126.53, 43.80, 126.56, 43.83), {"name": "二区"})])
        police = actor_of(s, "police_staff")
        sharing.request_create(s, police, service.layer_by_code(s, "zones").resource_code,
                               purpose="治安巡查", legal_basis=None, fields=["name"])
        key, _ = auth.apikey_issue(s, name="owslib", department=department_by_code(s, "220200-gaj"),
                                   scopes=["hub.data.read"], created_by="test")
        token, _ = auth.token_issue(s, s.get(User, police.user_id), "api", 3600)
        s.commit()
    return live_server + "/ogc", key, token


def test_owslib_reads_public_layers_anonymously(served):
    url, _, _ = served
    api = Features(url)
    assert api.feature_collections() == ["stations"]
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in api.conformance()["conformsTo"]
    coll = api.collection("stations")
    assert coll["id"] == "stations" and coll["itemType"] == "feature"
    assert set(api.collection_queryables("stations")["properties"]) == {"name", "aqi", "at", "geometry"}
    items = api.collection_items("stations", bbox=[126.495, 43.795, 126.525, 43.845], limit=4)
    assert items["numberMatched"] == 15 and items["numberReturned"] == 4
    assert [lk["rel"] for lk in items["links"]].count("next") == 1
    items = api.collection_items("stations", limit=100, filter="aqi >= 40 AND name LIKE '站2%'")
    assert sorted(f["id"] for f in items["features"]) == ["s20", "s21", "s22", "s23", "s24"]
    items = api.collection_items("stations", datetime_="2024-06-01T00:00:00Z/2024-06-01T02:00:00Z")
    assert [f["id"] for f in items["features"]] == ["s00", "s01", "s02"]
    assert api.collection_item("stations", "s07")["properties"]["aqi"] == 27
    with pytest.raises(RuntimeError, match="Unauthorized"):
        api.collection_items("zones")


@pytest.mark.parametrize("how", ["password", "apikey", "bearer"])
def test_owslib_reads_shared_layers_with_credentials(served, how):
    url, key, token = served
    if how == "password":
        api = Features(url, auth=Authentication("police_staff", PASSWORD))
    elif how == "apikey":
        api = Features(url, auth=Authentication("owslib", key))
    else:
        api = Features(url, headers={"Authorization": f"Bearer {token}"})
    assert api.feature_collections() == ["stations", "zones"]
    assert api.collection("zones")["storageCrs"] == "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
    assert set(api.collection_queryables("zones")["properties"]) == {"name", "geometry"}
    items = api.collection_items("zones", bbox=[126.52, 43.81, 126.54, 43.82], limit=10,
                                 filter="S_INTERSECTS(geometry, POINT(126.51 43.81)) OR name = '二区'")
    assert sorted(f["id"] for f in items["features"]) == ["z1", "z2"] and items["numberMatched"] == 2
    items = api.collection_items("zones", filter="name = '一区'", crs="http://www.opengis.net/def/crs/EPSG/0/4490")
    assert items["features"][0]["geometry"]["coordinates"][0][0] == pytest.approx([43.80, 126.53])
    assert api.response_headers["Content-Crs"] == "<http://www.opengis.net/def/crs/EPSG/0/4490>"
    with pytest.raises(RuntimeError, match="token"):
        api.collection_items("zones", filter="name = '一区' AN")
