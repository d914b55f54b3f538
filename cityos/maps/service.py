"""One map operations (一张图): layers as catalog resources, their features, and spatial services
(which district, street, community and grid a point falls in; nearest; within a distance; area
and length in metres) for the other engines. Other packages import this module only.

Plain functions `(session, actor, ...) -> result`; each checks access once through
`core.access` and audits every write. A layer is a data hub resource (format "geo"): its
features are read under `hub.data.read` — one's own department, or a sharing grant (共享授权)
whose fields limit the properties and whose row conditions limit the features — or by anyone
when the layer is public. A read through a grant is audited under the providing department.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from shapely.geometry.base import BaseGeometry
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

import cityos.hub.service as hub
from cityos.core import access, audit
from cityos.core.access import OWN, SUBTREE, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, FieldError, Invalid
from cityos.core.models import Department
from cityos.core.service import department_by_code
from cityos.maps import crs as crs_mod
from cityos.maps import store
from cityos.maps.checks import check_features
from cityos.maps.models import Layer
from cityos.maps.reads import (
    MAX_LIMIT,
    ROLES,
    Reading,
    assign,
    audit_shared,
    data_target,
    feature_get,
    features_query,
    layer_by_code,
    layer_target,
    locate,
    locate_many,
    nearest,
    readable_fields,
    reading,
    reference_layers,
    reference_set,
    within_distance,
)
from cityos.maps.store import StoredFeature

access.define("maps.layer.write", "Create map layers and write their features (图层维护)",
              department_admin=SUBTREE, department_staff=OWN)

GEOMETRY_TYPES = {"point": "点", "line": "线", "polygon": "面", "any": "任意"}
ATTRIBUTE_TYPES = store.PROP_TYPES
CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED = {"fid", "id", "geometry"}
INSERT_BATCH = 50_000
CATALOG_DEFAULTS = {"category": "department", "share_type": "unconditional", "share_methods": ["api"],
                    "open_type": "closed", "update_cycle": "irregular"}
CATALOG_KEYS = {"category", "base_branch", "share_type", "share_condition", "share_basis", "share_methods",
                "open_type", "update_cycle", "keywords", "released_on", "related"}

area_m2 = store.area_m2
length_m = store.length_m


# -- layers ---------------------------------------------------------------------------------------


def _check_attributes(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise Invalid("attributes", "a list of {name, title, type} / 须为属性列表")
    out: list[dict[str, str]] = []
    for n, a in enumerate(raw):
        name = a.get("name") if isinstance(a, dict) else None
        if not isinstance(name, str) or not NAME_RE.match(name) or name in RESERVED:
            raise Invalid(f"attributes[{n}].name",
                          "lower-case letters, digits and _, starting with a letter; not fid, id or geometry"
                          " / 须为小写字母开头的字母、数字、下划线，且不能是 fid、id、geometry")
        if any(o["name"] == name for o in out):
            raise Invalid(f"attributes[{n}].name", f"{name} is listed twice / 属性重复")
        kind = a.get("type", "string")
        if kind not in ATTRIBUTE_TYPES:
            raise Invalid(f"attributes[{n}].type", f"one of {', '.join(ATTRIBUTE_TYPES)} / 类型不合法")
        out.append({"name": name, "title": str(a.get("title") or name)[:100], "type": kind})
    return out


def _check_time_fields(attrs: list[dict[str, str]], start: str | None, end: str | None) -> None:
    kinds = {a["name"]: a["type"] for a in attrs}
    for fname, value in (("time_field", start), ("time_end_field", end)):
        if value is not None and kinds.get(value) not in ("date", "datetime"):
            raise Invalid(fname, "must name a date or datetime attribute / 须为日期或时间属性")
    if end is not None and start is None:
        raise Invalid("time_end_field", "needs a time_field too / 须先指定开始时间属性")


def layer_create(session: Session, actor: Actor, spec: Mapping[str, Any]) -> Layer:
    """Create a layer and its catalog entry (图层编目): the same request and grant rules follow."""
    spec = dict(spec)
    dept = department_by_code(session, spec["department"]) if spec.get("department") else (
        session.get(Department, actor.department_id) if actor.department_id else None)
    if dept is None:
        raise Invalid("department", "the owning department is required / 须指定所属部门")
    access.require(actor, "maps.layer.write", Target("maps.layer", None, dept.id, dept.path), session)
    code = str(spec.get("code") or "")
    if not CODE_RE.match(code):
        raise Invalid("code", "lower-case letters, digits, - and _ (URL-safe) / 须为小写字母、数字、-、_")
    if session.scalar(select(Layer.id).where(Layer.code == code)):
        raise Conflict(f"layer code {code} is taken / 图层代码已存在", "code")
    title = str(spec.get("title") or "").strip()
    if not title:
        raise Invalid("title", "required / 必填")
    gtype = spec.get("geometry_type", "any")
    if gtype not in GEOMETRY_TYPES:
        raise Invalid("geometry_type", f"one of {', '.join(GEOMETRY_TYPES)} / 几何类型不合法")
    try:
        source_crs = crs_mod.parse(spec.get("source_crs") or crs_mod.CANONICAL).key
    except Invalid as exc:
        raise Invalid("source_crs", exc.errors[0].reason) from None
    attrs = _check_attributes(spec.get("attributes", []))
    time_field, time_end = spec.get("time_field"), spec.get("time_end_field")
    _check_time_fields(attrs, time_field, time_end)
    catalog = {k: spec[k] for k in CATALOG_KEYS if spec.get(k) is not None}
    catalog = CATALOG_DEFAULTS | catalog
    public = bool(spec.get("public", False))
    if public and catalog["open_type"] != "open":
        raise Invalid("public", "only a layer whose catalog entry is open (无条件开放) may be public "
                                "/ 仅开放类型为“无条件开放”的图层可公开")
    description = str(spec.get("description") or "")
    # The catalog entry: one item per attribute, led by the feature id; the geometry is the
    # resource's format ("geo").
    items = [{"name": "fid", "title": "要素标识", "type": "string", "is_key": True}]
    items += [{"name": a["name"], "title": a["title"], "type": a["type"]} for a in attrs]
    res = hub.resource_create(session, actor, {
        **catalog, "name": title, "name_en": spec.get("title_en"), "department": dept.code,
        "abstract": description or f"{title}（{GEOMETRY_TYPES[gtype]}图层）", "format": "geo",
        "items": items,
    })
    layer = Layer(code=code, resource_id=res.id, resource_code=res.code, department_id=dept.id,
                  title=title, title_en=spec.get("title_en"), description=description,
                  geometry_type=gtype, source_crs=source_crs, attributes=attrs, time_field=time_field,
                  time_end_field=time_end, public=public, feature_count=0, created_by=actor.name)
    layer.department = dept
    session.add(layer)
    session.flush()
    audit.append(session, actor=actor.name, action="maps.layer.create", department=dept.code,
                 object_type="maps.layer", object_id=code,
                 detail={"resource": res.code, "geometry_type": gtype, "source_crs": source_crs,
                         "public": public})
    return layer


def layer_get(session: Session, actor: Actor, code: str) -> Layer:
    """A layer the actor may read (public, own department, or granted)."""
    layer = layer_by_code(session, code)
    reading(session, actor, layer)
    return layer


def layer_list(session: Session, actor: Actor, *, limit: int = 100, offset: int = 0) -> list[Layer]:
    """The layers whose features the actor may read, by code."""
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise Invalid("limit", f"1 to {MAX_LIMIT}, offset not negative / 分页参数不合法")
    layers = session.scalars(select(Layer).order_by(Layer.code).options(selectinload(Layer.department)))
    seen = [la for la in layers if la.public or (
        actor.authenticated and access.decide(actor, "hub.data.read", data_target(la), session).allowed)]
    return seen[offset:offset + limit]


def layer_set_public(session: Session, actor: Actor, code: str, public: bool) -> Layer:
    """Make a layer readable without signing in, or stop that; only open catalog entries may be."""
    layer = layer_by_code(session, code)
    access.require(actor, "maps.layer.write", layer_target(layer), session)
    if public and hub.resource_by_code(session, layer.resource_code).open_type != "open":
        raise Invalid("public", "only a layer whose catalog entry is open (无条件开放) may be public "
                                "/ 仅开放类型为“无条件开放”的图层可公开")
    before = layer.public
    layer.public = public
    audit.append(session, actor=actor.name, action="maps.layer.public", department=layer.department.code,
                 object_type="maps.layer", object_id=code, detail={"from": before, "to": public})
    return layer


def layer_public(layer: Layer) -> dict[str, Any]:
    """A layer as the API shows it."""
    return {
        "code": layer.code, "title": layer.title, "title_en": layer.title_en,
        "description": layer.description, "department": layer.department.code,
        "resource": layer.resource_code, "geometry_type": layer.geometry_type,
        "source_crs": layer.source_crs, "storage_crs": crs_mod.CANONICAL, "attributes": layer.attributes,
        "time_field": layer.time_field, "time_end_field": layer.time_end_field, "public": layer.public,
        "feature_count": layer.feature_count, "bbox": layer.bbox,
        "created_at": layer.created_at.isoformat() if layer.created_at else None,
        "updated_at": layer.updated_at.isoformat() if layer.updated_at else None,
    }


# -- writing features -----------------------------------------------------------------------------

# A feature as callers hand it in: (fid or None, geometry in CRS84, properties).
FeatureIn = tuple[str | int | None, BaseGeometry | None, Mapping[str, Any] | None]


@dataclass
class WriteResult:
    """What a write did: features written and removed, and the shapes repaired on the way."""

    written: int
    removed: int
    feature_count: int
    repaired: list[tuple[str, str]] = field(default_factory=list)


def features_write(session: Session, actor: Actor, code: str, features: Sequence[FeatureIn],
                   mode: str = "replace") -> WriteResult:
    """Write a layer's features (要素入库), all or nothing: `replace` the layer, or `append`."""
    layer = layer_by_code(session, code)
    access.require(actor, "maps.layer.write", layer_target(layer), session)
    if mode not in ("replace", "append"):
        raise Invalid("mode", "replace or append / 须为 replace 或 append")
    spatial = store.adapter(session)
    checked, repaired = check_features(layer.geometry_type, layer.attributes, layer.time_field,
                                       layer.time_end_field, features, new_fid=lambda: uuid4().hex[:16])
    if mode == "append":
        fids = [f[0] for f in checked]
        taken = _existing_fids(session, layer.id, fids)
        if taken:
            raise Invalid.many([FieldError(f"features[{fids.index(f)}]",
                                           f"fid {f!r}: already in the layer / 要素标识已存在")
                                for f in sorted(taken)[:100]])
    removed = spatial.delete_layer_features(layer.id) if mode == "replace" else 0
    for start in range(0, len(checked), INSERT_BATCH):
        spatial.insert(layer.id, checked[start:start + INSERT_BATCH])
    layer.feature_count, extent = spatial.layer_extent(layer.id)
    layer.bbox = list(extent) if extent else None
    layer.updated_at = utcnow()
    audit.append(session, actor=actor.name, action="maps.features.write", department=layer.department.code,
                 object_type="maps.layer", object_id=code,
                 detail={"mode": mode, "written": len(checked), "removed": removed,
                         "repaired": len(repaired), "feature_count": layer.feature_count})
    return WriteResult(len(checked), removed, layer.feature_count, repaired)


def _existing_fids(session: Session, layer_id: int, fids: Sequence[str]) -> set[str]:
    F = store.FEATURES.c
    out: set[str] = set()
    for i in range(0, len(fids), 500):
        out |= set(session.execute(select(F.fid).where(F.layer_id == layer_id,
                                                       F.fid.in_(list(fids[i:i + 500])))).scalars())
    return out


# Reads and spatial services live in maps.reads; other packages reach them through this module.
__all__ = ["ATTRIBUTE_TYPES", "GEOMETRY_TYPES", "MAX_LIMIT", "ROLES", "Reading", "StoredFeature",
           "WriteResult", "area_m2", "assign", "audit_shared", "feature_get", "features_query",
           "features_write",
           "layer_by_code", "layer_create", "layer_get", "layer_list", "layer_public", "layer_set_public",
           "layer_target", "length_m", "locate", "locate_many", "nearest", "readable_fields", "reading",
           "reference_layers", "reference_set", "within_distance"]


# -- for the operations center (plan) -------------------------------------------------------------


def department_usage(session: Session) -> dict[str, Any]:
    """The plan's one-map department usage (时空信息平台部门使用率): the bureaus (委办局) that own a
    map layer or hold a sharing grant in force on one, over all bureaus."""
    layers = session.execute(select(Layer.resource_id, Layer.department_id)).all()
    owners = {d for _r, d in layers}
    users = owners | hub.grantee_departments(session, [r for r, _d in layers])
    bureaus = set(session.scalars(select(Department.id).where(Department.kind == "bureau")))
    return {"bureaus": len(bureaus), "owners": len(owners & bureaus), "using": len(users & bureaus),
            "layers": len(layers)}


# -- for the operations center (emergency) --------------------------------------------------------


def features_near(session: Session, actor: Actor, layer_codes: Sequence[str], lon: float, lat: float,
                  radius_m: float = 3000.0, limit: int = 50) -> list[dict[str, Any]]:
    """Features of several layers within `radius_m` (geodesic) of a point, nearest first (周边资源):
    layer, fid, name, distance_m, lon, lat, props. A layer that does not exist, or that the actor
    may not read, is skipped rather than refused: the rest still answer."""
    import shapely

    from cityos.core.errors import NotFound

    point = shapely.Point(float(lon), float(lat))
    found: list[dict[str, Any]] = []
    for code in dict.fromkeys(layer_codes):
        try:
            layer = layer_by_code(session, code)
        except NotFound:
            continue
        if not layer.public and not (actor.authenticated and access.decide(
                actor, "hub.data.read", data_target(layer), session).allowed):
            continue
        for f in within_distance(session, actor, code, point, radius_m, limit=limit,
                                 purpose="emergency resources / 应急资源"):
            at = f.geom if f.geom.geom_type == "Point" else f.geom.representative_point()
            found.append({"layer": code, "layer_title": layer.title, "layer_title_en": layer.title_en,
                          "fid": f.fid, "name": str(f.props.get("name") or f.props.get("名称") or f.fid),
                          "distance_m": round(float(f.distance or 0.0), 1), "lon": float(at.x),
                          "lat": float(at.y), "props": f.props})
    found.sort(key=lambda r: (r["distance_m"], r["layer"], r["fid"]))
    return found[:limit]
