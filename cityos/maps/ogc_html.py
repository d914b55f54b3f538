"""HTML of the OGC API (OGC API 网页): format negotiation and the pages of /ogc.

Pages are server-rendered (Jinja2, templates in `templates/ogc/`) on the core's base layout; the
map is Leaflet from /static/vendor with no tile layer (a city network has no internet), drawn by
/static/maps/ogc.js from a JSON data block on the page (no inline script: the CSP forbids it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from cityos.core.errors import Invalid
from cityos.core.web import language as _language
from cityos.core.web import platform_of

TEMPLATES = Path(__file__).resolve().parent / "templates"
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_F = {"json": False, "geojson": False, "jsonschema": False, "html": True}

# The words of the pages, by language (the core's catalogs stay the core's).
TEXT: dict[str, dict[str, str]] = {
    "zh-CN": {
        "title": "一张图 · OGC API 要素服务", "collections": "图层（要素集合）",
        "conformance": "符合的标准类", "api": "OpenAPI 定义", "items": "要素", "queryables": "可查询属性",
        "id": "标识", "name": "名称", "type": "类型", "extent": "范围", "time": "时间范围",
        "crs": "可用坐标系", "storage_crs": "存储坐标系",
        "matched": "共 {n} 个要素", "returned": "本页 {n} 个", "next": "下一页", "prev": "上一页",
        "geojson": "GeoJSON", "json": "JSON", "properties": "属性", "none": "没有要素", "map": "地图",
        "department": "所属部门", "description": "说明", "geometry": "几何类型",
    },
    "en": {
        "title": "One map · OGC API - Features", "collections": "Layers (collections)",
        "conformance": "Conformance classes", "api": "OpenAPI definition", "items": "Features",
        "queryables": "Queryables", "id": "Id", "name": "Name", "type": "Type", "extent": "Extent",
        "time": "Time span", "crs": "Coordinate reference systems", "storage_crs": "Storage CRS",
        "matched": "{n} features in all", "returned": "{n} on this page", "next": "Next", "prev": "Previous",
        "geojson": "GeoJSON", "json": "JSON", "properties": "Properties", "none": "No features", "map": "Map",
        "department": "Department", "description": "Description", "geometry": "Geometry type",
    },
}


def _accept_q(accept: str) -> dict[str, float]:
    """Media range → q of an Accept header."""
    out: dict[str, float] = {}
    for part in accept.split(","):
        media, *rest = part.strip().split(";")
        q = 1.0
        for p in rest:
            key, _, value = p.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            out[media.strip().lower()] = max(q, out.get(media.strip().lower(), 0.0))
    return out


def wants_html(request: Request, *, strict: bool = True) -> bool:
    """HTML for `f=html`, JSON for `f=json`; without `f`, HTML only when the Accept header
    prefers text/html to JSON and to */* (a browser), so OGC clients and curl get JSON."""
    f = request.query_params.get("f")
    if f:
        if f.lower() in _F:
            return _F[f.lower()]
        if strict:
            raise Invalid("f", "json or html / 须为 json 或 html")
        return False
    q = _accept_q(request.headers.get("accept", ""))
    html = max((q.get(t, 0.0) for t in _HTML_TYPES), default=0.0)
    other = max((v for k, v in q.items() if k not in _HTML_TYPES and k != "text/*"), default=0.0)
    return html > 0 and html > other


def language(request: Request) -> str:
    return _language(request)


def page(request: Request, name: str, context: dict[str, Any], status: int = 200,
         headers: dict[str, str] | None = None) -> Response:
    """One page of /ogc rendered on the core's layout."""
    lang = language(request)
    words = TEXT.get(lang, TEXT["zh-CN"])

    def tr(key: str, **kw: Any) -> str:
        text = words.get(key, key)
        return text.format(**kw) if kw else text

    templates = platform_of(request).templates
    return templates.TemplateResponse(request, f"ogc/{name}", {**context, "lang": lang, "tr": tr},
                                      status_code=status, headers=headers)


def error_page(request: Request, status: int, title: str, detail: str, headers: dict[str, str]) -> Response:
    """An error as the core's error page; a 401 keeps its Basic challenge so the browser asks."""
    templates = platform_of(request).templates
    return templates.TemplateResponse(request, "error.html", {"status": status, "title": title,
                                                              "detail": detail, "lang": language(request)},
                                      status_code=status, headers=headers)
