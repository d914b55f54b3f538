"""The map's JSON API (一张图) at /api/maps: layers, GeoJSON features, and the spatial services
(locate, nearest, within a distance, measure). Thin over `maps.service`; the OGC API Features
routes are in their own module."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import numpy as np
import shapely
import shapely.geometry
from fastapi import APIRouter, Query
from shapely.geometry.base import BaseGeometry

from cityos.core.errors import FieldError, Invalid
from cityos.core.service import MAX_OFFSET
from cityos.core.web import ActorDep, SessionDep, SignedInDep
from cityos.maps import service
from cityos.maps.schemas import (
    FeatureCollectionIn,
    LayerIn,
    MeasureIn,
    PointsIn,
    PublicIn,
    ReferenceIn,
    WithinIn,
)
from cityos.maps.store import StoredFeature

router = APIRouter(prefix="/api/maps", tags=["maps"])
Limit = Annotated[int, Query(ge=1, le=service.MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


def feature_out(f: StoredFeature) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "Feature", "id": f.fid, "geometry": shapely.geometry.mapping(f.geom),
                           "properties": f.props}
    if f.distance is not None:
        out["distance_m"] = round(f.distance, 3)
    return out


def collection_out(feats: list[StoredFeature], matched: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "FeatureCollection", "features": [feature_out(f) for f in feats],
                           "numberReturned": len(feats)}
    if matched is not None:
        out["numberMatched"] = matched
    return out


def geometry_in(raw: Any, where: str = "geometry") -> BaseGeometry:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise Invalid(where, 'a GeoJSON geometry object is required, e.g. {"type": "Point", '
                             '"coordinates": [126.55, 43.84]} / 须为 GeoJSON 几何对象')
    try:
        geom = shapely.geometry.shape(raw)
    except Exception as exc:  # shapely raises several kinds for malformed GeoJSON
        raise Invalid(where, f"not a GeoJSON geometry: {exc} / 不是有效的 GeoJSON 几何") from None
    if geom.is_empty:
        raise Invalid(where, "empty geometry / 几何为空")
    return geom


def _features_in(doc: FeatureCollectionIn) -> list[service.FeatureIn]:
    out: list[service.FeatureIn] = []
    errors: list[FieldError] = []
    for i, f in enumerate(doc.features):
        fid = f.get("id")
        raw = f.get("geometry")
        geom = None
        if raw is not None:
            try:
                geom = geometry_in(raw, f"features[{i}]")
            except Invalid:
                errors.append(FieldError(f"features[{i}]", f"fid {fid!r}: not a GeoJSON geometry / 几何无效"))
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            errors.append(FieldError(f"features[{i}]", f"fid {fid!r}: properties must be an object"))
            props = {}
        out.append((fid, geom, props))
    if errors:
        raise Invalid.many(errors[:100])
    return out


def _interval(value: str | None) -> tuple[dt.datetime | None, dt.datetime | None] | None:
    """An RFC 3339 instant or `start/end` interval, `..` (or nothing) for an open end."""
    if not value:
        return None

    def one(text: str) -> dt.datetime | None:
        if text in ("", ".."):
            return None
        try:
            at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise Invalid("datetime", "RFC 3339 time or start/end / 须为 RFC 3339 时间或区间") from None
        if at.tzinfo is None:
            raise Invalid("datetime", "times need a zone (Z or +08:00) / 时间须带时区")
        return at

    if "/" in value:
        start, end = value.split("/", 1)
        return one(start), one(end)
    at = one(value)
    return at, at


@router.get("/layers", summary="Layers you may read (图层)")
def layers_list(session: SessionDep, actor: ActorDep, limit: Limit = 100,
                offset: Offset = 0) -> dict[str, Any]:
    layers = service.layer_list(session, actor, limit=limit, offset=offset)
    return {"items": [service.layer_public(la) for la in layers], "limit": limit, "offset": offset}


@router.post("/layers", status_code=201, summary="Create a layer and its catalog entry (新建图层)")
def layers_create(body: LayerIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    spec = body.model_dump(exclude_none=True)
    spec["attributes"] = [a.model_dump(exclude_none=True) for a in body.attributes]
    layer = service.layer_create(session, actor, spec)
    session.commit()
    return service.layer_public(layer)


@router.get("/layers/{code}", summary="A layer (图层信息)")
def layers_get(code: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return service.layer_public(service.layer_get(session, actor, code))


@router.put("/layers/{code}/public", summary="Open a layer to the public, or close it (公开)")
def layers_public(code: str, body: PublicIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    layer = service.layer_set_public(session, actor, code, body.public)
    session.commit()
    return service.layer_public(layer)


@router.post("/layers/{code}/features", summary="Write features from GeoJSON, all or nothing (要素入库)")
def features_write(code: str, body: FeatureCollectionIn, session: SessionDep, actor: SignedInDep,
                   mode: Annotated[str, Query(pattern="^(replace|append)$")] = "replace") -> dict[str, Any]:
    result = service.features_write(session, actor, code, _features_in(body), mode=mode)
    session.commit()
    return {"written": result.written, "removed": result.removed, "feature_count": result.feature_count,
            "repaired": [{"fid": f, "what": w} for f, w in result.repaired]}


@router.get("/layers/{code}/features", summary="Features as GeoJSON (要素查询)")
def features_query(
    code: str, session: SessionDep, actor: ActorDep, limit: Limit = 100, offset: Offset = 0,
    bbox: Annotated[str | None, Query(description="minx,miny,maxx,maxy (CRS84)")] = None,
    datetime: Annotated[str | None, Query(description="instant or start/end, .. for open")] = None,
    purpose: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    box = None
    if bbox:
        try:
            box = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise Invalid("bbox", "four numbers / 须为四个数") from None
    feats, matched = service.features_query(session, actor, code, bbox=box, datetime=_interval(datetime),
                                            limit=limit, offset=offset, purpose=purpose)
    session.commit()  # a shared read leaves its audit record
    return collection_out(feats, matched)


@router.get("/layers/{code}/features/{fid}", summary="One feature (要素)")
def feature_get(code: str, fid: str, session: SessionDep, actor: ActorDep,
                purpose: Annotated[str | None, Query(max_length=500)] = None) -> dict[str, Any]:
    feat = service.feature_get(session, actor, code, fid, purpose=purpose)
    session.commit()
    return feature_out(feat)


@router.get("/layers/{code}/nearest", summary="Nearest features, geodesic metres (最近要素)")
def nearest(code: str, lon: float, lat: float, session: SessionDep, actor: ActorDep,
            k: Annotated[int, Query(ge=1, le=1000)] = 1,
            purpose: Annotated[str | None, Query(max_length=500)] = None) -> dict[str, Any]:
    feats = service.nearest(session, actor, code, lon, lat, k, purpose=purpose)
    session.commit()
    return collection_out(feats)


@router.post("/layers/{code}/within", summary="Features within a distance, geodesic (缓冲查询)")
def within(code: str, body: WithinIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    feats = service.within_distance(session, actor, code, geometry_in(body.geometry), body.metres,
                                    limit=body.limit, purpose=body.purpose)
    session.commit()
    return collection_out(feats)


@router.get("/locate", summary="District, street, community and grid of a point (落点定位)")
def locate(lon: float, lat: float, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    found = service.locate(session, actor, lon, lat)
    session.commit()
    return found


@router.post("/locate", summary="The same for up to 100,000 points (批量落点)")
def locate_many(body: PointsIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    pts = np.asarray(body.points, dtype=np.float64).reshape(-1, 2)
    found = service.locate_many(session, actor, pts[:, 0], pts[:, 1], purpose=body.purpose)
    session.commit()
    return {"count": len(pts), "roles": found}


@router.post("/measure", summary="Geodesic area and length on WGS-84 (量算)")
def measure(body: MeasureIn) -> dict[str, Any]:
    geom = geometry_in(body.geometry)
    return {"area_m2": service.area_m2(geom), "length_m": service.length_m(geom)}


@router.get("/reference", summary="The reference layers of locate (基准图层)")
def reference_list(session: SessionDep) -> dict[str, Any]:
    return {role: {"layer": code, "attribute": attr}
            for role, (code, attr) in service.reference_layers(session).items()}


@router.put("/reference/{role}", summary="Set a reference layer (platform admins)")
def reference_set(role: str, body: ReferenceIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    service.reference_set(session, actor, role, body.layer, body.attribute)
    session.commit()
    return {"role": role, "layer": body.layer, "attribute": body.attribute}
