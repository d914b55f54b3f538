"""The `ckanapi` client (PyPI), unchanged, against a live server: what CKAN users run."""

from __future__ import annotations

from typing import Any

import pytest

ckanapi = pytest.importorskip("ckanapi")

from tests.opendata.test_ckan_api import residents  # noqa: E402,F401  (fixture)


@pytest.fixture
def remote(live_server: str, open_city: Any) -> Any:
    with ckanapi.RemoteCKAN(live_server, user_agent="cityos-tests") as ckan:
        yield ckan


def test_ckanapi_reads_the_catalog(remote):
    assert remote.action.package_list() == ["air-quality-daily"]
    found = remote.action.package_search(q="空气", fq="organization:220200-hbj",
                                         facet_field=["organization", "tags"], rows=5)
    assert found["count"] == 1 and found["results"][0]["name"] == "air-quality-daily"
    assert found["facets"]["organization"] == {"220200-hbj": 1}
    dotted = remote.call_action("package_search", {"q": "*:*", "facet.field": ["groups"]})
    assert dotted["facets"]["groups"] == {"environment": 1}
    pkg = remote.action.package_show(id="air-quality-daily")
    assert pkg["organization"]["title"] == "市环保局"
    assert remote.action.organization_list() == ["220200-hbj"]
    assert remote.action.organization_list(all_fields=True)[0]["package_count"] == 1
    assert remote.action.status_show()["ckan_version"] == "2.10.4"


def test_ckanapi_reads_rows_and_sql(remote):
    res = remote.action.datastore_search(resource_id="air-quality-daily", filters={"district": "船营区"},
                                         sort="aqi desc", limit=5)
    assert res["total"] == 20 and len(res["records"]) == 5
    assert {r["district"] for r in res["records"]} == {"船营区"}
    sql = remote.action.datastore_search_sql(
        sql='SELECT district, count(*) AS n FROM "air-quality-daily" GROUP BY district ORDER BY district')
    assert sum(r["n"] for r in sql["records"]) == 80


def test_ckanapi_raises_its_exceptions(remote):
    with pytest.raises(ckanapi.NotFound):
        remote.action.package_show(id="no-such-dataset")
    with pytest.raises(ckanapi.NotFound):
        remote.action.datastore_search(resource_id="no-such-dataset")
    with pytest.raises(ckanapi.ValidationError) as bad:
        remote.action.datastore_search(resource_id="air-quality-daily", filters={"nope": 1})
    assert "filters.nope" in bad.value.error_dict
    with pytest.raises(ckanapi.ValidationError) as refused:
        remote.action.datastore_search_sql(sql='DELETE FROM "air-quality-daily"')
    assert "sql" in refused.value.error_dict
    with pytest.raises(ckanapi.SearchError):
        remote.action.package_search(fq="secret:1")
    with pytest.raises(ckanapi.SearchQueryError):
        remote.action.package_search(sort="password desc")
    with pytest.raises(ckanapi.CKANAPIError):
        remote.action.package_delete(id="air-quality-daily")


def test_ckanapi_with_a_key_reads_conditional_rows(live_server, open_city, residents):  # noqa: F811
    _, key = residents
    with ckanapi.RemoteCKAN(live_server) as anonymous, pytest.raises(ckanapi.NotAuthorized):
        anonymous.action.datastore_search(resource_id="residents")
    with ckanapi.RemoteCKAN(live_server, apikey=key) as keyed:
        assert keyed.action.datastore_search(resource_id="residents", limit=1)["total"] == 40
        assert keyed.action.package_show(id="residents")["open_level"] == "conditional"
    with ckanapi.RemoteCKAN(live_server, apikey="odk_000000000000_wrong") as wrong, \
            pytest.raises(ckanapi.NotAuthorized):
        wrong.action.datastore_search(resource_id="residents")
    with ckanapi.RemoteCKAN(live_server, get_only=True, apikey=key) as getter:
        res = getter.action.datastore_search(resource_id="residents", filters='{"district": "昌邑区"}')
        assert res["total"] == 20
