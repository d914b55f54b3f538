"""OGC API - Features at /ogc (OGC API 要素服务): the map's layers for desktop GIS and OGC clients.

Part 1 Core (landing page, conformance, collections, items with bbox/datetime/limit/offset and
property filters, one item; GeoJSON and HTML), Part 2 CRS by reference (`crs`, `bbox-crs`,
`Content-Crs`) and Part 3 Filtering with CQL2 (`filter`, `filter-lang`, `filter-crs`,
queryables). A collection is a layer; its items are its features. This module maps the standard
onto `maps.service` and nothing else: every read goes through the service, which decides access
(public layer, own department, or a sharing grant) and audits shared reads.

Choices the standard leaves open:
- JSON is the default; HTML only for `f=html` or an Accept header preferring text/html.
- `limit` defaults to 10; above 10,000 it is clamped, as Part 1 asks. Unknown query parameters of
  the items request are refused (400) so a misspelt filter never silently returns everything;
  `f`, `lang` (page language) and `purpose` (recorded with a shared read) are accepted as well.
- `numberMatched` is the layer's stored count when nothing narrows the query, an exact count when
  the box is expected to hold at most `COUNT_BUDGET` features, and otherwise omitted (Part 1
  allows it) unless the page itself shows the total: a count of a million-feature box would cost
  more than the page. The `next` link is exact: one feature beyond the page is fetched to know
  whether another page exists (on a shared read, whose audit counts what was fetched, a full
  page is taken to mean there may be more).
- Errors are RFC 9457 problem documents that also carry OGC's `code` and `description`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cityos.core import access
from cityos.core.access import Actor
from cityos.core.basic_auth import REALM
from cityos.core.basic_auth import BasicActor as OgcActor
from cityos.core.errors import CityOSError, Invalid
from cityos.core.service import MAX_OFFSET
from cityos.core.web import (
    SessionDep,
    _audit_denial,
    answer_errors_in,
    answering_errors_with,
    standard_problem,
)
from cityos.maps import crs as crs_mod
from cityos.maps import ogc_html, service, store
from cityos.maps import ogc_params as params
from cityos.maps.models import Layer
from cityos.maps.ogc_openapi import openapi_document

JSON, GEOJSON, HTML = "application/json", "application/geo+json", "text/html"
SCHEMA_JSON = "application/schema+json"
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
OGC_REL = "http://www.opengis.net/def/rel/ogc/1.0/"
TRS = "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"
COUNT_BUDGET = 5_000  # features an exact numberMatched may count (~20 ms on either database)
STREAM_FROM = 1000  # pages this large are sent in chunks

_F1 = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/"
_F2 = "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/"
_F3 = "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/"
_CQL2 = "http://www.opengis.net/spec/cql2/1.0/conf/"
CONFORMANCE = [
    *(_F1 + c for c in ("core", "geojson", "html", "oas30")),
    _F2 + "crs",
    *(_F3 + c for c in ("queryables", "queryables-query-parameters", "filter", "features-filter")),
    *(_CQL2 + c for c in ("cql2-text", "cql2-json", "basic-cql2", "advanced-comparison-operators",
                          "case-insensitive-comparison", "property-property", "basic-spatial-functions",
                          "basic-spatial-functions-plus", "spatial-functions", "temporal-functions")),
]
ITEMS_PARAMS = {"f", "lang", "limit", "offset", "bbox", "bbox-crs", "datetime", "crs", "filter",
                "filter-lang", "filter-crs", "purpose"}
OGC_CODES = {400: "InvalidParameterValue", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
             406: "NotAcceptable", 423: "Locked"}


# -- errors: problem documents that OGC clients read too -----------------------------------------


async def ogc_error(request: Request, exc: CityOSError) -> Response:
    """An error as RFC 9457 problem document with OGC's `code` and `description` (or a page)."""
    if ogc_html.wants_html(request, strict=False):
        if isinstance(exc, access.Denied):
            await run_in_threadpool(_audit_denial, request, exc)
        status = 400 if exc.status == 422 else exc.status  # OGC API answers bad parameters with 400
        headers = {"WWW-Authenticate": REALM} if status == 401 else {}
        return ogc_html.error_page(request, status, exc.title, exc.detail, headers)
    status = 400 if exc.status == 422 else exc.status
    return await standard_problem(request, exc, {"code": OGC_CODES.get(status, "NoApplicableCode"),
                                                 "description": exc.detail}, REALM)


OgcRoute = answering_errors_with(ogc_error)
answer_errors_in("/ogc/", ogc_error)


router = APIRouter(prefix="/ogc", tags=["OGC API - Features"], route_class=OgcRoute)


# -- links ----------------------------------------------------------------------------------------


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/ogc"


def link(href: str, rel: str, type_: str, title: str | None = None) -> dict[str, str]:
    out = {"href": href, "rel": rel, "type": type_}
    if title:
        out["title"] = title
    return out


def with_query(request: Request, f: str, **changes: Any) -> str:
    """This request's URL with `f` and some parameters replaced (None removes one)."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in changes and k != "f"]
    kept += [(k, str(v)) for k, v in changes.items() if v is not None]
    kept.append(("f", f))
    path = request.url.path.removeprefix("/ogc").rstrip("/")
    return f"{base_url(request)}{path}?{urlencode(kept)}"


def self_links(request: Request, json_type: str, title: str) -> list[dict[str, str]]:
    """self and alternate links of a resource in JSON (json_type) and HTML."""
    html = ogc_html.wants_html(request)
    return [link(with_query(request, "json"), "alternate" if html else "self", json_type, f"{title} (JSON)"),
            link(with_query(request, "html"), "self" if html else "alternate", HTML, f"{title} (HTML)")]


def json_response(doc: Any, media_type: str = JSON, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), media_type=media_type, headers=headers)


def content_crs(target: crs_mod.Crs) -> dict[str, str]:
    return {"Content-Crs": f"<{target.uri}>"}


# -- documents ------------------------------------------------------------------------------------


def landing_document(request: Request) -> dict[str, Any]:
    base = base_url(request)
    return {
        "title": "CityOS 一张图 OGC API - Features",
        "description": "吉林市一张图的图层（要素集合），符合 OGC API - Features 第1、2、3部分 / "
                       "The city's map layers as OGC API - Features (Parts 1, 2 and 3).",
        "links": [
            *self_links(request, JSON, "Landing page"),
            link(f"{base}/api", "service-desc", OPENAPI, "OpenAPI 3.0 definition"),
            link(str(request.base_url) + "docs", "service-doc", HTML, "API documentation"),
            link(f"{base}/conformance", "conformance", JSON, "Conformance classes"),
            link(f"{base}/conformance", OGC_REL + "conformance", JSON, "Conformance classes"),
            link(f"{base}/collections", "data", JSON, "Collections"),
            link(f"{base}/collections", OGC_REL + "data", JSON, "Collections"),
        ],
    }


_time_extents: dict[tuple[Any, ...], list[str | None]] = {}
_time_lock = threading.Lock()


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def time_extent(session: Session, layer: Layer) -> list[str | None] | None:
    """[first, last] time of a timed layer (None for an open end), kept while the layer is
    unchanged: the scan is once per version of the layer, not once per request."""
    if layer.time_field is None:
        return None
    key = (str(session.get_bind().engine.url), layer.id, layer.updated_at, layer.feature_count)
    with _time_lock:
        hit = _time_extents.get(key)
    if hit is not None:
        return hit
    F = store.FEATURES.c
    first, last_end, last_start, timed, ended = session.execute(
        select(func.min(F.t_start), func.max(F.t_end), func.max(F.t_start), func.count(F.t_start),
               func.count(F.t_end)).where(F.layer_id == layer.id)).one()
    open_end = layer.time_end_field is not None and ended < timed
    last = None if open_end else max((t for t in (last_end, last_start) if t is not None), default=None)
    extent = [_iso(first), _iso(last)]
    with _time_lock:
        if len(_time_extents) > 256:
            _time_extents.clear()
        _time_extents[key] = extent
    return extent


def collection_document(request: Request, session: Session, layer: Layer, *, full_crs: bool = True
                        ) -> dict[str, Any]:
    """A layer as an OGC collection: extent in CRS84, the CRSs it can be read in, its links."""
    base = f"{base_url(request)}/collections/{layer.code}"
    lang = ogc_html.language(request)
    doc: dict[str, Any] = {
        "id": layer.code,
        "title": (layer.title_en or layer.title) if lang == "en" else layer.title,
        "description": layer.description or layer.title,
        "itemType": "feature",
        "extent": {"spatial": {"bbox": [layer.bbox or [-180.0, -90.0, 180.0, 90.0]],
                               "crs": params.CRS84.uri}},
        "crs": [c.uri for c in crs_mod.SUPPORTED] if full_crs else ["#/crs"],
        "storageCrs": params.CRS84.uri,
        "links": [
            link(f"{base}?f=json", "self", JSON, layer.title),
            link(f"{base}?f=html", "alternate", HTML, layer.title),
            link(f"{base}/items?f=json", "items", GEOJSON, "Features (GeoJSON)"),
            link(f"{base}/items?f=html", "items", HTML, "Features (HTML)"),
            link(f"{base}/queryables?f=json", OGC_REL + "queryables", SCHEMA_JSON, "Queryables"),
        ],
    }
    interval = time_extent(session, layer)
    if interval is not None:
        doc["extent"]["temporal"] = {"interval": [interval], "trs": TRS}
    return doc


def feature_dict(fid: str, geometry: str, props: dict[str, Any], links: list[dict[str, str]] | None = None
                 ) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "Feature", "id": fid, "geometry": orjson.Fragment(geometry),
                           "properties": props}
    if links:
        out["links"] = links
    return out


# -- routes ---------------------------------------------------------------------------------------


@router.get("", summary="Landing page (OGC API - Features)")
def landing(request: Request) -> Response:
    doc = landing_document(request)
    if ogc_html.wants_html(request):
        return ogc_html.page(request, "landing.html", {"doc": doc})
    return json_response(doc)


@router.get("/", include_in_schema=False)
def landing_slash(request: Request) -> Response:
    """OWSLib asks for the landing page with a trailing slash."""
    return landing(request)


@router.get("/conformance", summary="Conformance classes (Parts 1-3, CQL2)")
def conformance(request: Request) -> Response:
    doc = {"conformsTo": CONFORMANCE}
    if ogc_html.wants_html(request):
        return ogc_html.page(request, "conformance.html", {"doc": doc})
    return json_response(doc)


@router.get("/api", summary="OpenAPI 3.0 definition of the OGC API")
def api_definition(request: Request) -> Response:
    return json_response(openapi_document(base_url(request), CONFORMANCE), OPENAPI)


@router.get("/collections", summary="The layers you may read, as collections")
def collections(request: Request, session: SessionDep, actor: OgcActor) -> Response:
    layers = service.layer_list(session, actor, limit=service.MAX_LIMIT)
    html = ogc_html.wants_html(request)
    doc = {
        "links": self_links(request, JSON, "Collections"),
        "crs": [c.uri for c in crs_mod.SUPPORTED],
        "collections": [collection_document(request, session, la, full_crs=False) for la in layers],
    }
    if html:
        return ogc_html.page(request, "collections.html", {"doc": doc, "layers": layers})
    return json_response(doc)


def _readable_layer(session: Session, actor: Actor, code: str) -> tuple[Layer, service.Reading]:
    layer = service.layer_by_code(session, code)
    return layer, service.reading(session, actor, layer)


@router.get("/collections/{collection_id}", summary="A collection (layer)")
def collection(collection_id: str, request: Request, session: SessionDep, actor: OgcActor) -> Response:
    layer, _ = _readable_layer(session, actor, collection_id)
    doc = collection_document(request, session, layer)
    if ogc_html.wants_html(request):
        return ogc_html.page(request, "collection.html", {"doc": doc, "layer": layer})
    return json_response(doc)


@router.get("/collections/{collection_id}/queryables", summary="What a filter may name (Part 3)")
def collection_queryables(collection_id: str, request: Request, session: SessionDep,
                          actor: OgcActor) -> Response:
    layer, rd = _readable_layer(session, actor, collection_id)
    url = f"{base_url(request)}/collections/{layer.code}/queryables"
    doc = params.queryables_schema(layer, rd.fields, url)
    if ogc_html.wants_html(request):
        return ogc_html.page(request, "queryables.html", {"doc": doc, "layer": layer})
    return json_response(doc, SCHEMA_JSON)


def _single(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise Invalid(name, "given more than once / 参数重复")
    return values[0] if values else None


@router.get("/collections/{collection_id}/items", summary="Features: bbox, datetime, CQL2 filter, crs")
def items(collection_id: str, request: Request, session: SessionDep, actor: OgcActor) -> Response:
    html = ogc_html.wants_html(request)
    layer, rd = _readable_layer(session, actor, collection_id)
    attrs = {a["name"] for a in layer.attributes}
    unknown = sorted(set(request.query_params) - ITEMS_PARAMS - attrs)
    if unknown:
        raise Invalid(unknown[0], "unknown parameter; use " + ", ".join(sorted(ITEMS_PARAMS))
                      + " or a queryable / 未知参数")
    q = {name: _single(request, name) for name in request.query_params}
    limit = params.int_param(q.get("limit"), "limit", params.DEFAULT_LIMIT, 1, service.MAX_LIMIT)
    offset = params.int_param(q.get("offset"), "offset", 0, 0)
    if offset > MAX_OFFSET:  # a larger one overflows the database's integers
        raise Invalid("offset", f"at most {MAX_OFFSET} / 不能大于{MAX_OFFSET}")
    target = params.CRS84 if html else params.crs_param(q.get("crs"))
    box = None
    if q.get("bbox"):
        box = params.bbox_param(q["bbox"] or "", params.crs_param(q.get("bbox-crs"), "bbox-crs"))
    elif q.get("bbox-crs"):
        params.crs_param(q.get("bbox-crs"), "bbox-crs")
    when = params.datetime_param(q["datetime"] or "") if q.get("datetime") else None
    props = {k: v for k, v in q.items() if k in attrs and k not in ITEMS_PARAMS}
    where = []
    if q.get("filter"):
        where.append(params.filter_clause(q["filter"] or "", q.get("filter-lang"), q.get("filter-crs"),
                                          params.queryables(layer, rd.fields), store.adapter(session)))
    narrowed = bool(box or when or props or where or (rd.grant is not None and rd.grant.row_filter))
    known: int | None = None if narrowed else layer.feature_count
    count = known is None and params.estimate_matches(layer, box) <= COUNT_BUDGET
    # One feature past the page tells whether there is a next one; not on a shared read, whose
    # audit record counts what was fetched.
    probe = known is None and not count and rd.grant is None and limit < service.MAX_LIMIT
    feats, matched = service.features_query(
        session, actor, layer.code, bbox=box, datetime=when, props=props, where=where,
        limit=limit + probe, offset=offset, count=count, purpose=q.get("purpose"))
    session.commit()  # a shared read leaves its audit record
    if known is not None:
        matched = known
    if probe:
        more = len(feats) > limit
    else:
        more = offset + len(feats) < matched if matched is not None else len(feats) == limit
    feats = feats[:limit]
    if matched is None and not more and (feats or offset == 0):
        matched = offset + len(feats)
    links = self_links(request, GEOJSON, layer.title)
    fmt = "html" if html else "json"
    if more:
        links.append(link(with_query(request, fmt, offset=offset + limit), "next",
                          HTML if html else GEOJSON, "next page"))
    if offset > 0:
        links.append(link(with_query(request, fmt, offset=max(0, offset - limit)), "prev",
                          HTML if html else GEOJSON, "previous page"))
    coll = f"{base_url(request)}/collections/{layer.code}"
    links.append(link(f"{coll}?f=json", "collection", JSON, layer.title))
    head: dict[str, Any] = {"type": "FeatureCollection", "timeStamp": _iso(dt.datetime.now(dt.UTC))}
    if matched is not None:
        head["numberMatched"] = matched
    head["numberReturned"] = len(feats)
    head["links"] = links
    geoms = params.geometries_geojson([f.geom for f in feats], target)
    if html:
        doc = {**head, "features": [{"type": "Feature", "id": f.fid, "geometry": orjson.loads(g),
                                     "properties": f.props} for f, g in zip(feats, geoms, strict=True)]}
        return ogc_html.page(request, "items.html", {"doc": doc, "layer": layer, "offset": offset},
                             headers=content_crs(target))
    features = [feature_dict(f.fid, g, f.props) for f, g in zip(feats, geoms, strict=True)]
    if len(features) < STREAM_FROM:
        return json_response({**head, "features": features}, GEOJSON, content_crs(target))
    return StreamingResponse(_chunks(head, features), media_type=GEOJSON, headers=content_crs(target))


def _chunks(head: dict[str, Any], features: list[dict[str, Any]], size: int = 500) -> Iterator[bytes]:
    """A large FeatureCollection a few hundred features at a time (orjson for each chunk)."""
    yield orjson.dumps(head)[:-1] + b',"features":['
    for i in range(0, len(features), size):
        part = orjson.dumps(features[i:i + size])[1:-1]
        yield (b"," if i else b"") + part
    yield b"]}"


@router.get("/collections/{collection_id}/items/{feature_id}", summary="One feature")
def item(collection_id: str, feature_id: str, request: Request, session: SessionDep,
         actor: OgcActor) -> Response:
    html = ogc_html.wants_html(request)
    unknown = sorted(set(request.query_params) - {"f", "lang", "crs", "purpose"})
    if unknown:
        raise Invalid(unknown[0], "unknown parameter; use f, crs or purpose / 未知参数")
    target = params.CRS84 if html else params.crs_param(_single(request, "crs"))
    feat = service.feature_get(session, actor, collection_id, feature_id, purpose=_single(request, "purpose"))
    session.commit()
    coll = f"{base_url(request)}/collections/{collection_id}"
    links = [*self_links(request, GEOJSON, feat.fid), link(f"{coll}?f=json", "collection", JSON)]
    geometry = params.geometries_geojson([feat.geom], target)[0]
    if html:
        layer = service.layer_by_code(session, collection_id)
        doc = {"type": "Feature", "id": feat.fid, "geometry": orjson.loads(geometry),
               "properties": feat.props, "links": links}
        return ogc_html.page(request, "item.html", {"doc": doc, "layer": layer}, headers=content_crs(target))
    return json_response(feature_dict(feat.fid, geometry, feat.props, links), GEOJSON, content_crs(target))


__all__ = ["CONFORMANCE", "router"]
