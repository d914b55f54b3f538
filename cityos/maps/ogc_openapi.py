"""The OpenAPI 3.0 definition of /ogc (OGC API 接口定义), the landing page's `service-desc`.

Part 1's "oas30" class asks for an OpenAPI 3.0 document; the app's own /openapi.json is 3.1
and knows nothing of OGC parameters. QGIS reads `components.parameters.limit` (default and
maximum) from here to choose its page size. The document is the same for everyone: it names no
collection, so it tells nobody which layers exist.
"""

from __future__ import annotations

from typing import Any

from cityos.maps.reads import MAX_LIMIT

_DEFAULT_LIMIT = 10


def _param(name: str, schema: dict[str, Any], description: str, *, required: bool = False,
           explode: bool = False, where: str = "query") -> dict[str, Any]:
    out = {"name": name, "in": where, "description": description, "required": required, "schema": schema}
    if where == "query":
        out |= {"style": "form", "explode": explode}
    return out


PARAMETERS: dict[str, dict[str, Any]] = {
    "f": _param("f", {"type": "string", "enum": ["json", "html"]}, "Response format (JSON or HTML)."),
    "limit": _param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                              "default": _DEFAULT_LIMIT},
                    f"Features per page; above {MAX_LIMIT} the maximum is used."),
    "offset": _param("offset", {"type": "integer", "minimum": 0, "default": 0},
                     "Features to skip (the `next` link carries it)."),
    "bbox": _param("bbox", {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}},
                   "minx,miny,maxx,maxy (or with z), in bbox-crs and its axis order."),
    "bbox-crs": _param("bbox-crs", {"type": "string", "format": "uri"}, "CRS of bbox (default CRS84)."),
    "datetime": _param("datetime", {"type": "string"},
                       "RFC 3339 instant, or interval start/end with '..' for an open end."),
    "crs": _param("crs", {"type": "string", "format": "uri"}, "CRS of the response geometries."),
    "filter": _param("filter", {"type": "string"}, "CQL2 filter (text or JSON, see filter-lang)."),
    "filter-lang": _param("filter-lang", {"type": "string", "enum": ["cql2-text", "cql2-json"],
                                          "default": "cql2-text"}, "Language of filter."),
    "filter-crs": _param("filter-crs", {"type": "string", "format": "uri"},
                         "CRS of the geometry literals of filter (default CRS84)."),
    "purpose": _param("purpose", {"type": "string", "maxLength": 500},
                      "Why a shared layer is read (recorded with the read, 用途)."),
    "collectionId": _param("collectionId", {"type": "string"}, "Layer code.", required=True, where="path"),
    "featureId": _param("featureId", {"type": "string"}, "Feature id within the layer.", required=True,
                        where="path"),
}


def _ref(*names: str) -> list[dict[str, str]]:
    return [{"$ref": f"#/components/parameters/{n}"} for n in names]


def _get(summary: str, op: str, params: list[str], media: dict[str, str]) -> dict[str, Any]:
    content = {m: {"schema": {"$ref": f"#/components/schemas/{s}"}} for m, s in media.items()}
    content["text/html"] = {"schema": {"type": "string"}}
    return {"get": {
        "summary": summary, "operationId": op, "tags": ["OGC API - Features"], "parameters": _ref(*params),
        "responses": {"200": {"description": summary, "content": content},
                      "400": {"$ref": "#/components/responses/Problem"},
                      "401": {"$ref": "#/components/responses/Problem"},
                      "403": {"$ref": "#/components/responses/Problem"},
                      "404": {"$ref": "#/components/responses/Problem"}},
    }}


def openapi_document(base: str, conformance: list[str]) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of the OGC API served at `base` (…/ogc)."""
    items = ["f", "limit", "offset", "bbox", "bbox-crs", "datetime", "crs", "filter", "filter-lang",
             "filter-crs", "purpose"]
    obj = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "CityOS OGC API - Features", "version": "1.0.0",
                 "description": "一张图图层（OGC API - Features 第1、2、3部分）. Conforms to: "
                                + ", ".join(conformance),
                 "contact": {"name": "CityOS"}},
        "servers": [{"url": base}],
        "security": [{}, {"basic": []}, {"bearer": []}],
        "paths": {
            "/": _get("Landing page", "getLandingPage", ["f"], {"application/json": "Object"}),
            "/conformance": _get("Conformance classes", "getConformance", ["f"],
                                 {"application/json": "Object"}),
            "/collections": _get("Collections", "getCollections", ["f"], {"application/json": "Object"}),
            "/collections/{collectionId}": _get("A collection", "describeCollection", ["collectionId", "f"],
                                                {"application/json": "Object"}),
            "/collections/{collectionId}/queryables": _get(
                "Queryables", "getQueryables", ["collectionId", "f"], {"application/schema+json": "Object"}),
            "/collections/{collectionId}/items": _get(
                "Features", "getFeatures", ["collectionId", *items],
                {"application/geo+json": "FeatureCollection"}),
            "/collections/{collectionId}/items/{featureId}": _get(
                "One feature", "getFeature", ["collectionId", "featureId", "f", "crs", "purpose"],
                {"application/geo+json": "Feature"}),
        },
        "components": {
            "parameters": PARAMETERS,
            "schemas": {
                "Object": obj,
                "FeatureCollection": {"type": "object", "required": ["type", "features"], "properties": {
                    "type": {"type": "string", "enum": ["FeatureCollection"]},
                    "features": {"type": "array", "items": {"$ref": "#/components/schemas/Feature"}},
                    "numberMatched": {"type": "integer", "minimum": 0},
                    "numberReturned": {"type": "integer", "minimum": 0},
                    "timeStamp": {"type": "string", "format": "date-time"},
                    "links": {"type": "array", "items": obj}}},
                "Feature": {"type": "object", "required": ["type", "geometry", "properties"], "properties": {
                    "type": {"type": "string", "enum": ["Feature"]}, "id": {"type": "string"},
                    "geometry": obj, "properties": obj}},
                "Problem": {"type": "object", "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "detail": {"type": "string"}, "code": {"type": "string"},
                    "description": {"type": "string"}}},
            },
            "responses": {"Problem": {"description": "RFC 9457 problem document, with OGC's code",
                                      "content": {"application/problem+json": {
                                          "schema": {"$ref": "#/components/schemas/Problem"}}}}},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                "bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
