"""Downloads from the portal: every format parses back with every row and the right types,
file names carry the Chinese title, conditional data needs its key, and downloads are counted."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from cityos.opendata import applications, downloads, service
from cityos.opendata.models import Dataset
from tests.opendata.conftest import DISTRICTS, actor_of, air_row, publish

URL = "/data/dataset/air-quality-daily/download"
TITLES = ["站点编码", "日期", "站点名称", "所属区县", "空气质量指数", "PM2.5浓度", "经度", "纬度"]
IDS = ["site_code", "day", "site_name", "district", "aqi", "pm25", "lon", "lat"]
RESIDENTS = {"name": "residents", "title": "户籍人口分布", "topics": ["population"], "tags": ["人口"],
             "quasi_identifiers": ["district"], "k": 10,
             "rules": [{"field": "id_number", "action": "suppress"}, {"field": "name", "action": "suppress"},
                       {"field": "birth_date", "action": "suppress"}]}


@pytest.fixture
def usage(monkeypatch: pytest.MonkeyPatch) -> applications.UsageCounter:
    """A usage counter of this test's own (the module's one is shared by every app)."""
    counter = applications.UsageCounter()
    monkeypatch.setattr(applications, "USAGE", counter)
    return counter


def publish_residents(session: Any, people_code: str) -> tuple[Dataset, str]:
    """市公安局's residents by district, conditional, with a key issued to a research institute."""
    ds = publish(session, people_code, dict(RESIDENTS), "police_staff", "police_admin")
    app = applications.application_create(
        session, actor_of(session, "resident"), ds, applicant="吉林市某研究所", contact="data@example.cn",
        purpose="研究各区户籍人口分布，用于公共服务设施规划")
    _, key = applications.application_decide(session, actor_of(session, "police_admin"), app.id,
                                              approve=True)
    session.commit()
    assert key is not None
    return ds, key


@pytest.fixture
def residents(session, open_city) -> tuple[Dataset, str]:
    return publish_residents(session, open_city.people.code)


def get(client: Any, fmt: str, **kw: Any) -> Any:
    r = client.get(f"{URL}.{fmt}", **kw)
    assert r.status_code == 200, r.text
    return r


def test_csv_has_a_bom_and_titles_for_excel(client, open_city):
    r = get(client, "csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith(b"\xef\xbb\xbf")
    table = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert table[0] == TITLES
    assert len(table) == 81
    first = dict(zip(IDS, table[1], strict=True))
    expected = air_row(0)
    assert first["site_code"] == expected["site_code"] and first["day"] == "2026-11-01"
    assert int(first["aqi"]) == expected["aqi"] and float(first["pm25"]) == expected["pm25"]
    assert {row[3] for row in table[1:]} == set(DISTRICTS)


def test_xlsx_has_real_numbers_and_dates(client, open_city):
    r = get(client, "xlsx")
    assert r.headers["content-type"] == service.FORMATS["xlsx"][0]
    wb = load_workbook(io.BytesIO(r.content), read_only=True)
    ws = wb.worksheets[0]
    assert ws.title == "环境空气质量日报"
    table = list(ws.iter_rows(values_only=True))
    assert list(table[0]) == TITLES and len(table) == 81
    row = dict(zip(IDS, table[1], strict=True))
    assert row["day"].date() == dt.date(2026, 11, 1)  # Excel keeps dates as (naive) datetimes
    assert isinstance(row["aqi"], int) and row["pm25"] == air_row(0)["pm25"]
    assert [r[5] for r in table[1:]] == [air_row(n)["pm25"] for n in range(80)]  # numbers, not text
    assert row["site_name"] == air_row(0)["site_name"]


def test_json_keeps_ids_and_types(client, open_city):
    body = json.loads(get(client, "json").content)
    assert body["name"] == "air-quality-daily" and body["title"] == "环境空气质量日报"
    assert [f["id"] for f in body["fields"]] == IDS
    assert [f["title"] for f in body["fields"]] == TITLES
    records = body["records"]
    assert len(records) == 80
    assert records[0] == {**air_row(0), "day": "2026-11-01"}
    assert isinstance(records[5]["aqi"], int) and isinstance(records[5]["lon"], float)


def test_geojson_points_follow_lon_lat(client, open_city):
    r = get(client, "geojson")
    assert r.headers["content-type"].startswith("application/geo+json")
    body = json.loads(r.content)
    assert body["type"] == "FeatureCollection" and len(body["features"]) == 80
    west, south, east, north = body["bbox"]
    first = body["features"][0]
    assert first["geometry"] == {"type": "Point", "coordinates": [air_row(0)["lon"], air_row(0)["lat"]]}
    assert "lon" not in first["properties"] and first["properties"]["aqi"] == air_row(0)["aqi"]
    for f in body["features"]:
        x, y = f["geometry"]["coordinates"]
        assert west <= x <= east and south <= y <= north


def test_parquet_columns_are_typed(client, open_city):
    table = pq.read_table(io.BytesIO(get(client, "parquet").content))
    assert table.num_rows == 80 and table.column_names == IDS
    types = {f.name: f.type for f in table.schema}
    assert types["site_code"] == pa.string() and types["day"] == pa.date32()
    assert types["aqi"] == pa.int64() and types["pm25"] == pa.float64()
    assert table.schema.field("aqi").metadata[b"title"] == "空气质量指数".encode()
    assert table.column("day")[0].as_py() == dt.date(2026, 11, 1)
    assert table.to_pylist()[0] == air_row(0)


def test_file_names_carry_the_title_with_an_ascii_fallback(client, open_city):
    for fmt in ("csv", "xlsx", "json", "geojson", "parquet"):
        cd = get(client, fmt).headers["content-disposition"]
        assert cd.startswith("attachment;")
        assert f'filename="air-quality-daily.{fmt}"' in cd
        encoded = cd.split("filename*=UTF-8''", 1)[1]
        assert unquote(encoded) == f"环境空气质量日报.{fmt}"
    assert downloads.disposition("x", '../a/"b"', "csv").endswith("filename*=UTF-8''.._a_b_.csv")


def test_unknown_format_and_dataset_are_not_found(client, open_city):
    r = client.get(f"{URL}.exe")
    assert r.status_code == 404
    r = client.get("/data/dataset/nowhere/download.csv")
    assert r.status_code == 404 and "数据集不存在" in r.text
    r = client.get("/data/dataset/nowhere/download.csv?lang=en")
    assert r.status_code == 404 and "Dataset not found" in r.text


def test_geojson_needs_coordinates(client, open_city, session):
    service.dataset_update(session, actor_of(session, "env_staff"), "air-quality-daily",
                           {"lon_field": None, "lat_field": None})
    session.commit()
    r = client.get(f"{URL}.geojson")
    assert r.status_code == 404 and "没有经纬度" in r.text
    assert client.get("/data/dataset/air-quality-daily/points.geojson").status_code == 404
    assert client.get(f"{URL}.csv").status_code == 200


def test_conditional_data_needs_its_key(client, residents):
    ds, key = residents
    url = "/data/dataset/residents/download.csv"
    r = client.get(url)
    assert r.status_code == 403 and "申请使用" in r.text and "/data/dataset/residents/apply" in r.text
    assert client.get(url, params={"key": "odk_nothing_here"}).status_code == 403
    for kw in ({"params": {"key": key}}, {"headers": {"X-CKAN-API-Key": key}},
               {"headers": {"Authorization": key}}):
        r = client.get(url, **kw)
        assert r.status_code == 200, kw
        table = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
        assert len(table) == 41 and "身份证号" not in table[0]  # suppressed fields are gone
        assert r.headers["cache-control"] == "no-store"
    # the chart and map feeds are guarded the same way
    assert client.get("/data/dataset/residents/chart.json").status_code == 403
    assert client.get("/data/dataset/residents/chart.json", params={"key": key}).status_code == 200


def test_downloads_and_views_are_counted(client, open_city, sessions, usage):
    for fmt in ("csv", "xlsx", "json", "geojson", "parquet"):
        get(client, fmt)
    client.get("/data/dataset/air-quality-daily")
    client.get("/data/dataset/air-quality-daily")
    client.get("/data/dataset/air-quality-daily/points.geojson")  # the map is not a download
    client.get(f"{URL}.exe")  # nor is a refusal
    usage.flush(sessions)
    with sessions() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == "air-quality-daily"))
        assert ds is not None
        assert (ds.downloads, ds.views) == (5, 2)


def test_spreadsheets_never_run_a_cell_as_a_formula():
    fields = [downloads.Field("a", "文本", "string"), downloads.Field("n", "数值", "number")]
    data = [{"a": '=HYPERLINK("http://evil.example","x")', "n": -1.5}, {"a": "-12", "n": None},
            {"a": "@SUM(A1)", "n": 2.0}]
    text = b"".join(downloads.csv_chunks(fields, iter(data))).decode("utf-8-sig")
    table = list(csv.reader(io.StringIO(text)))
    assert table[1] == ["'=HYPERLINK(\"http://evil.example\",\"x\")", "-1.5"]
    assert table[2] == ["-12", ""] and table[3][0] == "'@SUM(A1)"
    wb = load_workbook(io.BytesIO(b"".join(downloads.xlsx_chunks(fields, iter(data), "t"))))
    cell = wb.worksheets[0]["A2"]
    assert cell.data_type == "s" and cell.value == data[0]["a"]
