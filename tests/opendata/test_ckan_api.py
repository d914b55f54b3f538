"""The CKAN Action API: every action's answer and error in CKAN's shapes, Solr-lite `fq`,
DataStore reads with keys for conditional data, and injection probes that must change nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session

from cityos.core import auth
from cityos.core.models import Department, User
from cityos.opendata import applications, ckan_query, service
from cityos.opendata.applications import USAGE
from cityos.opendata.models import Dataset
from cityos.opendata.search import Filter
from tests.conftest import PASSWORD
from tests.opendata.conftest import actor_of, publish

RESIDENTS = {"name": "residents", "title": "户籍人口分布", "topics": ["population"], "tags": ["人口"],
             "quasi_identifiers": ["district"], "k": 10,
             "rules": [{"field": "id_number", "action": "suppress"}, {"field": "name", "action": "suppress"},
                       {"field": "birth_date", "action": "suppress"}]}


def act(client: Any, action: str, method: str = "GET", headers: dict[str, str] | None = None,
        prefix: str = "/api/3/action", **params: Any) -> tuple[int, dict[str, Any]]:
    url = f"{prefix}/{action}"
    if method == "GET":
        r = client.get(url, params=params, headers=headers)
    else:
        r = client.post(url, json=params, headers=headers)
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.status_code, r.json()


def ok(client: Any, action: str, **params: Any) -> Any:
    status, body = act(client, action, **params)
    assert status == 200 and body["success"] is True, body
    assert body["help"].endswith(f"/api/3/action/help_show?name={action}")
    return body["result"]


def error(client: Any, action: str, status: int, kind: str, **params: Any) -> dict[str, Any]:
    got, body = act(client, action, **params)
    assert (got, body["success"]) == (status, False), body
    assert body["error"]["__type"] == kind, body
    assert "type" not in body and "status" not in body  # never a problem document
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture
def residents(session: Session, open_city: Any) -> tuple[Dataset, str]:
    """市公安局's residents by district, published as conditional data, and a key issued for it."""
    ds = publish(session, open_city.people.code, dict(RESIDENTS), "police_staff", "police_admin")
    app = applications.application_create(
        session, actor_of(session, "resident"), ds, applicant="吉林市某研究所", contact="data@example.cn",
        purpose="研究各区户籍人口分布，用于公共服务设施规划")
    _, key = applications.application_decide(session, actor_of(session, "police_admin"), app.id,
                                              approve=True)
    session.commit()
    assert key is not None
    return ds, key


# -- the envelope ---------------------------------------------------------------------------------


def test_actions_answer_get_post_json_form_and_the_unversioned_alias(client, open_city):
    assert ok(client, "package_list") == ["air-quality-daily"]
    assert ok(client, "package_list", method="POST") == ["air-quality-daily"]
    status, body = act(client, "package_show", prefix="/api/action", id="air-quality-daily")
    assert status == 200 and body["result"]["name"] == "air-quality-daily"
    r = client.post("/api/3/action/package_show", data={"id": "air-quality-daily"})
    assert r.json()["result"]["name"] == "air-quality-daily"
    # CKAN's legacy form: the JSON dict as the only form key
    r = client.post("/api/3/action/package_show", content=b'{"id": "air-quality-daily"}=',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.json()["result"]["name"] == "air-quality-daily"
    assert client.get("/api/3").json() == {"version": 3}


def test_unknown_action_and_unreadable_bodies_are_ckan_bad_requests(client, open_city):
    err = error(client, "package_destroy", 400, "Bad Request")
    assert err["message"].startswith("Bad request - Action name not known: package_destroy")
    for body in (b"{not json", b"[1, 2]"):
        r = client.post("/api/3/action/package_show", content=body,
                        headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["__type"] == "Bad Request", r.text
        assert r.json()["success"] is False


def test_status_and_help(client, open_city):
    status = ok(client, "status_show")
    assert status["ckan_version"] == "2.10.4" and "datastore" in status["extensions"]
    assert status["site_url"] == "http://testserver"
    assert "resource_id" in ok(client, "help_show", name="datastore_search")
    assert ok(client, "site_read") is True
    error(client, "help_show", 404, "Not Found Error", name="nope")


# -- packages -------------------------------------------------------------------------------------


def counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Usage counts recorded by the API (the app's flusher may empty USAGE at any moment)."""
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(USAGE, "add", lambda ds_id, kind, n=1: calls.append((ds_id, kind)))
    return calls


def test_package_show_by_name_or_id_and_counts_an_api_call(client, open_city, monkeypatch):
    calls = counted(monkeypatch)
    pkg = ok(client, "package_show", id="air-quality-daily")
    assert calls == [(open_city.dataset.id, "api_calls")]
    assert ok(client, "package_show", id=pkg["id"])["name"] == "air-quality-daily"
    assert pkg["organization"]["name"] == "220200-hbj" and pkg["groups"][0]["name"] == "environment"
    assert {r["format"] for r in pkg["resources"]} >= {"API", "CSV", "GeoJSON"}
    assert pkg["num_resources"] == len(pkg["resources"])
    err = error(client, "package_show", 404, "Not Found Error", id="no-such-dataset")
    assert err["message"].startswith("Not found: ")
    err = error(client, "package_show", 409, "Validation Error")
    assert err["id"] == ["Missing value / 缺少参数"]


def test_unpublished_datasets_are_not_found(client, session, open_city):
    service.dataset_draft(session, actor_of(session, "police_staff"), resource=open_city.people.code,
                          spec={"name": "residents-draft"})
    session.commit()
    error(client, "package_show", 404, "Not Found Error", id="residents-draft")
    error(client, "datastore_search", 404, "Not Found Error", resource_id="residents-draft")
    assert ok(client, "package_list") == ["air-quality-daily"]
    assert ok(client, "package_search", q="户籍")["count"] == 0


def test_package_search_text_facets_and_paging(client, open_city, residents):
    res = ok(client, "package_search", q="空气", fq="organization:220200-hbj",
             **{"facet.field": '["organization", "tags", "groups", "res_format"]'})
    assert res["count"] == 1 and res["results"][0]["name"] == "air-quality-daily"
    assert res["sort"] == "score desc, metadata_modified desc"
    assert res["facets"]["organization"] == {"220200-hbj": 1}
    assert res["facets"]["tags"]["空气质量"] == 1
    items = res["search_facets"]["organization"]["items"]
    assert items == [{"name": "220200-hbj", "display_name": "市环保局", "count": 1}]
    assert res["search_facets"]["groups"]["items"][0]["display_name"] == "生态环境"
    everything = ok(client, "package_search", q="*:*", method="POST",
                    **{"facet.field": ["organization"], "facet.limit": 1})
    assert everything["count"] == 2 and len(everything["facets"]["organization"]) == 1
    assert ok(client, "package_search")["facets"] == {}
    assert ok(client, "package_search", q="交通")["count"] == 0
    page = ok(client, "package_search", rows=1, start=1, sort="name asc")
    assert [p["name"] for p in page["results"]] == ["residents"] and page["count"] == 2
    assert [p["name"] for p in ok(client, "package_search", sort="name desc")["results"]] == [
        "residents", "air-quality-daily"]
    assert ok(client, "package_search", q="name:residents")["results"][0]["name"] == "residents"
    assert len(ok(client, "package_search", rows=5000)["results"]) == 2  # capped, not refused
    assert ckan_query.package_query({"rows": "5000"}).rows == 1000


@pytest.mark.parametrize(("fq", "names"), [
    ("organization:220200-hbj", {"air-quality-daily"}),
    ("-organization:220200-hbj", {"residents"}),
    ("+organization:220200-gaj", {"residents"}),
    ("owner_org:220200-gaj", {"residents"}),
    ("organization:(220200-hbj OR 220200-gaj)", {"air-quality-daily", "residents"}),
    ("tags:空气质量", {"air-quality-daily"}),
    ('tags:"PM2.5"', {"air-quality-daily"}),
    ("tags:(空气质量 AND 人口)", set()),
    ("tags:(空气质量 环境监测)", {"air-quality-daily"}),
    ("tags:(空气质量 OR 人口)", {"air-quality-daily", "residents"}),
    ("groups:environment AND open_level:open", {"air-quality-daily"}),
    ("groups:population +open_level:conditional", {"residents"}),
    ("NOT open_level:conditional", {"air-quality-daily"}),
    ("res_format:GeoJSON", {"air-quality-daily"}),
    ("res_format:CSV update_cycle:daily", {"air-quality-daily", "residents"}),
    ("license_id:CC-BY-4.0", {"air-quality-daily", "residents"}),
    ("dataset_type:dataset", {"air-quality-daily", "residents"}),
    ("dataset_type:harvest", set()),
    ("*:*", {"air-quality-daily", "residents"}),
    ("name:residents", {"residents"}),
    (r"name:air\-quality\-daily", {"air-quality-daily"}),
])
def test_fq(client, open_city, residents, fq, names):
    res = ok(client, "package_search", fq=fq)
    assert {p["name"] for p in res["results"]} == names
    assert res["count"] == len(names)


@pytest.mark.parametrize(("fq", "says"), [
    ("foo:bar", "unknown field 'foo'"),
    ("tags:空*", "wildcards"),
    ("name:[a TO z]", "ranges"),
    ("name:a~2", "fuzzy"),
    ("organization:a OR organization:b", "OR between clauses"),
    ('tags:"unterminated', "unterminated quote"),
    ("tags:(a OR b", "unclosed bracket"),
    ("tags:(a OR b AND c)", "mixing AND and OR"),
    ("tags:(a b OR c)", "mixing AND and OR"),
    ("{!tag=x}tags:a", "local parameters"),
    ("organization:", "missing value"),
    ("(tags:a)", "expected field:value"),
    ("空气质量", "expected field:value"),
    ("name:x' OR '1'='1", "OR between clauses"),
    ("tags:a);DROP TABLE od_datasets;--", "expected field:value"),
])
def test_bad_fq_is_a_search_error_naming_the_part(client, open_city, fq, says):
    err = error(client, "package_search", 409, "Search Error", fq=fq)
    assert err["message"].startswith("Search error: fq: ") and says in err["message"], err


@pytest.mark.parametrize(("params", "kind", "status", "field"), [
    ({"sort": "nope desc"}, "Search Query Error", 400, None),
    ({"sort": "name; DROP TABLE od_datasets"}, "Search Query Error", 400, None),
    ({"sort": "name sideways"}, "Search Query Error", 400, None),
    ({"rows": "-1"}, "Validation Error", 409, "rows"),
    ({"rows": "ten"}, "Validation Error", 409, "rows"),
    ({"start": "2000000"}, "Validation Error", 409, "start"),
    ({"facet.field": '["secret_column"]'}, "Search Error", 409, None),
    ({"facet.field": "[broken"}, "Validation Error", 409, "facet.field"),
])
def test_bad_package_search_parameters(client, open_city, params, kind, status, field):
    err = error(client, "package_search", status, kind, **params)
    if field:
        assert isinstance(err[field], list) and err[field]


def test_q_moves_field_terms_to_filters():
    text_, filters = ckan_query.split_q('空气 name:air-quality-daily AND "PM2.5" title:日报 tags:(a OR b)')
    assert text_ == "空气 PM2.5 日报"
    assert filters == [Filter("name", ("air-quality-daily",)), Filter("tags", ("a", "b"))]


# -- organizations, groups, tags, resources -------------------------------------------------------


def test_organizations(client, open_city, residents):
    assert ok(client, "organization_list") == ["220200-gaj", "220200-hbj"]  # by title: 市公安局, 市环保局
    assert ok(client, "organization_list", sort="name desc") == ["220200-hbj", "220200-gaj"]
    assert ok(client, "organization_list", limit=1, offset=1) == ["220200-hbj"]
    orgs = ok(client, "organization_list", all_fields="true", q="环保")
    assert [(o["name"], o["title"], o["package_count"]) for o in orgs] == [("220200-hbj", "市环保局", 1)]
    org = ok(client, "organization_show", id="220200-gaj", include_datasets="true")
    assert org["package_count"] == 1 and [p["name"] for p in org["packages"]] == ["residents"]
    assert "packages" not in ok(client, "organization_show", id="220200-gaj")
    error(client, "organization_show", 404, "Not Found Error", id="nope")
    err = error(client, "organization_list", 409, "Validation Error", sort="secret asc")
    assert "sort" in err


def test_groups_and_tags(client, open_city, residents):
    assert sorted(ok(client, "group_list")) == ["environment", "population"]
    groups = ok(client, "group_list", all_fields=True, sort="name asc", method="POST")
    assert [(g["name"], g["package_count"]) for g in groups] == [("environment", 1), ("population", 1)]
    group = ok(client, "group_show", id="environment", include_datasets=True, method="POST")
    assert group["title"] == "生态环境" and group["packages"][0]["name"] == "air-quality-daily"
    error(client, "group_show", 404, "Not Found Error", id="nope")
    assert ok(client, "tag_list") == sorted(["PM2.5", "人口", "环境监测", "空气质量"])
    assert ok(client, "tag_list", query="质量") == ["空气质量"]
    assert ok(client, "tag_list", query="pm", all_fields="true") == [
        {"id": "PM2.5", "name": "PM2.5", "display_name": "PM2.5", "vocabulary_id": None}]


def test_resource_show(client, open_city):
    api = ok(client, "resource_show", id="air-quality-daily")
    assert api["datastore_active"] is True and api["format"] == "API"
    csv = ok(client, "resource_show", id="air-quality-daily.csv")
    assert csv["url"].endswith("/data/dataset/air-quality-daily/download.csv")
    error(client, "resource_show", 404, "Not Found Error", id="air-quality-daily.exe")
    error(client, "resource_show", 404, "Not Found Error", id="nope.csv")
    error(client, "datastore_search", 404, "Not Found Error", resource_id="air-quality-daily.csv")


# -- the DataStore --------------------------------------------------------------------------------


def test_datastore_search(client, open_city):
    res = ok(client, "datastore_search", resource_id="air-quality-daily", filters='{"district": "昌邑区"}',
             fields="_id,district,aqi", sort="aqi desc", limit=3)
    assert res["total"] == 20 and len(res["records"]) == 3
    assert [f["id"] for f in res["fields"]] == ["_id", "district", "aqi"]
    assert all(r["district"] == "昌邑区" for r in res["records"])
    assert [r["aqi"] for r in res["records"]] == sorted((r["aqi"] for r in res["records"]), reverse=True)
    assert res["_links"]["start"].startswith("/api/3/action/datastore_search?")
    assert "offset=3" in res["_links"]["next"]
    nxt = client.get(res["_links"]["next"]).json()["result"]
    assert nxt["offset"] == 3 and nxt["records"][0]["_id"] not in {r["_id"] for r in res["records"]}
    posted = ok(client, "datastore_search", method="POST", id="air-quality-daily",
                filters={"district": ["昌邑区", "龙潭区"], "aqi": 37}, include_total=False)
    assert "total" not in posted and all(r["aqi"] == 37 for r in posted["records"])
    capped = ok(client, "datastore_search", resource_id="air-quality-daily", limit=100000)
    assert capped["limit"] == 32000 and len(capped["records"]) == 80
    assert ok(client, "datastore_search", resource_id="air-quality-daily", q="龙潭", limit=0)["total"] == 20
    assert error(client, "datastore_search", 409, "Validation Error")["resource_id"]


@pytest.mark.parametrize(("params", "field"), [
    ({"filters": '{"nope": 1}'}, "filters.nope"),
    ({"filters": '{"aqi": "many"}'}, "filters.aqi"),
    ({"filters": "[1, 2]"}, "filters"),
    ({"filters": "{broken"}, "filters"),
    ({"fields": "district,password"}, "fields"),
    ({"sort": "aqi; DROP TABLE od_datasets"}, "sort"),
    ({"limit": "-5"}, "limit"),
    ({"offset": "x"}, "offset"),
    ({"records_format": "csv"}, "records_format"),
])
def test_datastore_search_refusals(client, open_city, params, field):
    err = error(client, "datastore_search", 409, "Validation Error", resource_id="air-quality-daily", **params)
    assert isinstance(err[field], list), err


def test_conditional_rows_need_the_key(client, session, open_city, residents):
    _, key = residents
    err = error(client, "datastore_search", 403, "Authorization Error", resource_id="residents")
    assert err["message"].startswith("Access denied: ")
    error(client, "datastore_search", 403, "Authorization Error", resource_id="residents",
          headers={"Authorization": key[:-3] + "xyz"})
    error(client, "datastore_search", 403, "Authorization Error", resource_id="air-quality-daily",
          headers={"Authorization": "Bearer not-a-token"})
    for headers in ({"Authorization": key}, {"Authorization": f"Bearer {key}"}, {"X-CKAN-API-Key": key}):
        res = ok(client, "datastore_search", resource_id="residents", headers=headers)
        assert res["total"] == 40 and "id_number" not in res["records"][0]
    # the package itself is public metadata
    assert ok(client, "package_show", id="residents")["open_level"] == "conditional"
    # the provider's staff read it with their own credentials
    token = client.post("/api/auth/token", data={"username": "police_staff", "password": PASSWORD})
    staff = {"Authorization": f"Bearer {token.json()['access_token']}"}
    assert ok(client, "datastore_search", resource_id="residents", headers=staff)["total"] == 40
    # ... or with their department's API key, sent raw as ckanapi sends CKAN keys
    raw, _ = auth.apikey_issue(session, name="ckan", department=session.scalar(
        select(Department).where(Department.code == "220200-gaj")), scopes=[], created_by="test")
    session.commit()
    assert ok(client, "datastore_search", resource_id="residents",
              headers={"Authorization": raw, "X-CKAN-API-Key": raw})["total"] == 40
    error(client, "datastore_search", 403, "Authorization Error", resource_id="residents",
          headers={"Authorization": raw[:-2] + "zz"})
    error(client, "datastore_search_sql", 403, "Authorization Error", sql='SELECT count(*) FROM "residents"')
    res = ok(client, "datastore_search_sql", sql='SELECT district, count(*) AS n FROM "residents" '
             'GROUP BY district ORDER BY district', headers={"X-CKAN-API-Key": key})
    assert sum(r["n"] for r in res["records"]) == 40


def test_datastore_search_sql(client, open_city, monkeypatch):
    calls = counted(monkeypatch)
    res = ok(client, "datastore_search_sql", method="POST",
             sql='SELECT district, count(*) AS n, max(aqi) AS top FROM "air-quality-daily" '
                 "WHERE aqi > 50 GROUP BY district ORDER BY district")
    assert calls == [(open_city.dataset.id, "api_calls")]
    assert [f["id"] for f in res["fields"]] == ["district", "n", "top"]
    assert {r["district"] for r in res["records"]} == {"昌邑区", "龙潭区", "船营区", "丰满区"}
    assert res["sql"].startswith("SELECT district") and "records_truncated" not in res
    one = ok(client, "datastore_search_sql", sql='SELECT a._id FROM "air-quality-daily" a LIMIT 1')
    assert one["records"] == [{"_id": 1}]
    err = error(client, "datastore_search_sql", 409, "Validation Error")
    assert "sql" in err


def _counts(session: Session, open_city: Any) -> dict[str, int]:
    session.rollback()
    conn = session.connection()
    names = inspect(conn).get_table_names()
    out = {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one()
           for t in names if t.startswith(("od_", "hub_data_")) and t != "od_usage" or t in ("users", "departments")}
    out["__tables"] = len(names)
    session.rollback()
    return out


def test_sql_injection_probes_are_refused_and_change_nothing(client, session, open_city, backend):
    draft = service.dataset_draft(session, actor_of(session, "police_staff"), resource=open_city.people.code,
                                  spec={"name": "residents-draft"})
    session.commit()
    ds_id, hub_table = open_city.dataset.id, open_city.people.table_name
    assert hub_table and inspect(session.connection()).has_table(hub_table)
    before = _counts(session, open_city)
    probes = [
        'DELETE FROM "air-quality-daily"',
        'SELECT 1; DELETE FROM "air-quality-daily"',
        'SELECT * FROM "air-quality-daily"; DROP TABLE users',
        'UPDATE "air-quality-daily" SET aqi = 0',
        'INSERT INTO "air-quality-daily" (_id) VALUES (999)',
        'DROP TABLE "air-quality-daily"',
        "SELECT pg_sleep(5)",
        'SELECT district FROM "air-quality-daily" WHERE pg_sleep(5) IS NULL',
        "SELECT * FROM sqlite_master",
        "SELECT * FROM pg_catalog.pg_tables",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM users",
        'SELECT * FROM "residents-draft"',
        f"SELECT * FROM {hub_table}",
        f"SELECT * FROM od_rows_{ds_id}",
        f'SELECT * FROM "air-quality-daily" a JOIN {hub_table} h ON 1 = 1',
        "SELECT load_extension('x')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT current_setting('data_directory')",
        "COPY users TO '/tmp/x'",
        "PRAGMA writable_schema = 1",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        'WITH x AS (DELETE FROM "air-quality-daily" RETURNING *) SELECT * FROM x',
        'SELECT * FROM "air-quality-daily" FOR UPDATE',
        'SELECT * INTO copy FROM "air-quality-daily"',
    ]
    for probe in probes:
        err = error(client, "datastore_search_sql", 409, "Validation Error", method="POST", sql=probe)
        assert err["sql"] and err["message"], probe
    # API parameters that reach SQL elsewhere: fq, filters keys and values, sort, q
    error(client, "package_search", 409, "Search Error", fq="name:x') OR 1=1 --")
    assert ok(client, "package_search", fq='name:"x\') OR (\'1\'=\'1"')["count"] == 0
    assert ok(client, "package_search", q="'; DROP TABLE od_datasets; --")["count"] == 0
    error(client, "package_search", 400, "Search Query Error", sort="name asc; DROP TABLE users")
    error(client, "datastore_search", 409, "Validation Error", resource_id="air-quality-daily",
          filters=json.dumps({'district" = \'\' OR 1=1 --': "x"}))
    res = ok(client, "datastore_search", resource_id="air-quality-daily",
             filters=json.dumps({"district": "' OR '1'='1"}))
    assert res["total"] == 0
    assert ok(client, "datastore_search", resource_id="air-quality-daily", q="%' OR 1=1 --")["total"] == 0
    error(client, "datastore_search", 409, "Validation Error", resource_id="air-quality-daily",
          sort='aqi, (SELECT 1 FROM users)')
    error(client, "datastore_search", 404, "Not Found Error", resource_id=f"od_rows_{ds_id}")
    error(client, "datastore_search", 404, "Not Found Error", resource_id=hub_table)
    assert _counts(session, open_city) == before
    assert session.scalar(select(func.count()).select_from(User)) == before["users"]
    assert session.get(Dataset, draft.id) is not None
