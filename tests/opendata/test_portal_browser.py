"""The open-data portal in a real Chromium: a person finds a dataset by part of a Chinese word,
opens it, sees its chart and map, and downloads it as XLSX — with no console errors (a CSP
violation is one) and no request leaving the machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from openpyxl import load_workbook

from tests.opendata.conftest import air_row

pytestmark = pytest.mark.browser


def test_find_by_partial_word_and_download_xlsx(page: Any, open_city: Any, live_server: str,
                                                tmp_path: Path) -> None:
    from playwright.sync_api import expect

    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(f"{live_server}/data")
    page.get_by_label("搜索数据集").fill("空气")
    page.get_by_role("button", name="搜索").click()
    expect(page.locator("#results-h")).to_have_text("共找到 1 个数据集")
    page.get_by_role("link", name="环境空气质量日报").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("环境空气质量日报")
    expect(page.locator("table.preview tbody tr")).to_have_count(20)

    # the chart (ECharts draws on a canvas) and the map (Leaflet draws SVG: 80 points and the extent)
    expect(page.locator("#chart canvas").first).to_be_visible()
    expect(page.locator("#map")).to_have_attribute("data-points", "80")
    expect(page.locator("#map svg path.leaflet-interactive")).to_have_count(80)
    expect(page.locator("#map .leaflet-control-scale")).to_be_visible()
    page.locator("#map svg path.leaflet-interactive").last.click()  # the points of one site overlap
    expect(page.locator(".leaflet-popup-content")).to_contain_text(air_row(79)["site_name"])
    with page.expect_response(lambda r: "/chart.json" in r.url and r.status == 200):
        page.get_by_label("分类字段").select_option("district")
    expect(page.locator("#chart canvas").first).to_be_visible()

    with page.expect_download() as info:
        page.get_by_role("link", name="XLSX").click()
    download = info.value
    assert download.suggested_filename == "环境空气质量日报.xlsx"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    wb = load_workbook(saved, read_only=True)
    table = list(wb.worksheets[0].iter_rows(values_only=True))
    assert len(table) == 81
    assert table[0][:2] == ("站点编码", "日期")
    assert table[1][0] == air_row(0)["site_code"]

    base = urlsplit(live_server)
    outside = [u for u in requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and urlsplit(u).hostname != base.hostname]
    assert outside == [], f"requests left the machine: {outside}"
    assert any(u.endswith("/static/vendor/echarts/echarts.min.js") for u in requests)
    assert any(u.endswith("/static/vendor/leaflet/leaflet.js") for u in requests)
    assert errors == [], f"browser console errors (CSP violations?): {errors}"
