"""A dataset's API docs (接口说明): the CKAN calls that read it, written out with this dataset's
own fields and a real value, as URLs, curl commands and Python (ckanapi) code.

Plain strings; the page template escapes them.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from cityos.opendata.models import Dataset

KEY_PLACEHOLDER = "odk_…"


@dataclass(frozen=True)
class Call:
    """One API call: what it does, its URL, and the same call with curl."""

    action: str
    purpose: tuple[str, str]  # (中文, English)
    url: str
    curl: str


@dataclass(frozen=True)
class Docs:
    calls: list[Call]
    python: str
    example_filter: dict[str, Any]
    sql: str
    conditional: bool


def _example_filter(ds: Dataset, sample: dict[str, Any] | None) -> dict[str, Any]:
    """A filter on a text column (an indexed one if any: filters on it are fast), with the
    value of the first row, or a stand-in when the visitor may not read the rows."""
    geo = {ds.lon_field, ds.lat_field}
    texts = [f for f in ds.fields if f["type"] == "string" and f["id"] not in geo]
    if not texts:
        return {}
    pick = next((f for f in texts if f.get("indexed")), texts[0])
    value = (sample or {}).get(pick["id"])
    return {pick["id"]: value if value is not None else "…"}


def _example_sql(ds: Dataset) -> str:
    geo = {ds.lon_field, ds.lat_field}
    texts = [f["id"] for f in ds.fields if f["type"] == "string" and f["id"] not in geo]
    numbers = [f["id"] for f in ds.fields if f["type"] in ("integer", "number") and f["id"] not in geo]
    table = f'"{ds.name}"'
    if texts and numbers:
        x, y = texts[-1], numbers[0]
        return (f'SELECT "{x}", COUNT(*) AS n, AVG("{y}") AS avg_{y} FROM {table} '
                f'GROUP BY "{x}" ORDER BY n DESC LIMIT 10')
    return f"SELECT * FROM {table} LIMIT 5"


def _curl(base: str, action: str, params: dict[str, str], conditional: bool) -> str:
    lines = [f"curl -G {shlex.quote(f'{base}/api/3/action/{action}')}"]
    lines += [f"  --data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in params.items()]
    if conditional:
        lines.append(f"  -H {shlex.quote('X-CKAN-API-Key: ' + KEY_PLACEHOLDER)}")
    return " \\\n".join(lines)


def api_docs(ds: Dataset, base: str, sample: dict[str, Any] | None, lang: str = "zh-CN") -> Docs:
    """The calls for this dataset: package_show, datastore_search (plain and with a filter),
    datastore_search_sql, with curl and ckanapi examples."""
    conditional = ds.open_level == "conditional"
    flt = _example_filter(ds, sample)
    flt_json = json.dumps(flt, ensure_ascii=False)
    sql = _example_sql(ds)
    specs: list[tuple[str, tuple[str, str], dict[str, str]]] = [
        ("package_show", ("数据集元数据（字段、格式、许可、更新时间）",
                          "The dataset's metadata (fields, formats, licence, updates)"), {"id": ds.name}),
        ("datastore_search", ("分页读取数据行（limit/offset）", "Read rows page by page (limit/offset)"),
         {"resource_id": ds.name, "limit": "5"}),
    ]
    if flt:
        specs.append(("datastore_search", ("按字段过滤（filters）", "Filter by field values (filters)"),
                      {"resource_id": ds.name, "filters": flt_json, "limit": "5"}))
    specs.append(("datastore_search_sql", ("只读 SQL 查询（表名即数据集名称）",
                                           "Read-only SQL (the table is the dataset's name)"),
                  {"sql": sql}))
    calls = [Call(action, purpose, f"{base}/api/3/action/{action}?{urlencode(params)}",
                  _curl(base, action, params, conditional)) for action, purpose, params in specs]
    key = f", apikey={KEY_PLACEHOLDER!r}" if conditional else ""
    comment = ("# 有条件开放：apikey 填写获批后收到的访问密钥\n" if lang == "zh-CN" else
               "# Conditional data: apikey is the access key sent after approval\n") if conditional else ""
    python = (
        "from ckanapi import RemoteCKAN\n\n"
        f"{comment}ckan = RemoteCKAN({base!r}{key})\n"
        f"package = ckan.action.package_show(id={ds.name!r})\n"
        f"result = ckan.action.datastore_search(resource_id={ds.name!r}, "
        f"filters={_py(flt)}, limit=5)\n"
        "for record in result[\"records\"]:\n"
        "    print(record)\n"
        f"rows = ckan.action.datastore_search_sql(sql={sql!r})\n"
    )
    return Docs(calls, python, flt, sql, conditional)


def _py(value: dict[str, Any]) -> str:
    """A dict as Python source, Chinese kept readable."""
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in value.items()) + "}"
