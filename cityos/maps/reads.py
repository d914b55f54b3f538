"""Reading a layer's features (要素读取) and the spatial services built on them: nearest, within a
distance, points to polygons, and "which district, street, community and grid is this point in"
(落点定位). `maps.service` re-exports every public function here; other packages use that.

Every read makes one access decision (`reading`): a public layer is open to anyone; otherwise
it is the catalog resource's `hub.data.read` — one's own department, or a sharing grant whose
fields limit the properties and whose row conditions limit the features. A read through a grant
is audited under the providing department, as the data hub's reads are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, selectinload

from cityos.core import access, audit
from cityos.core.access import Actor, Target
from cityos.core.errors import FieldError, Invalid, NotFound
from cityos.maps import store
from cityos.maps.checks import typed_value
from cityos.maps.models import Layer, ReferenceLayer
from cityos.maps.store import BBox, StoredFeature

access.define("maps.reference.write", "Choose the city's reference layers (基准图层)")  # platform admins

ROLES = {"district": "区县", "street": "街道", "community": "社区", "grid": "网格"}
MAX_LIMIT = 10_000
MAX_POINTS = 100_000  # one locate_many / assign call
MAX_NEAREST = 1000


def layer_by_code(session: Session, code: str) -> Layer:
    layer = session.scalar(select(Layer).where(Layer.code == code).options(selectinload(Layer.department)))
    if layer is None:
        raise NotFound("layer", code)
    return layer


def layer_target(layer: Layer) -> Target:
    return Target("maps.layer", layer.id, layer.department_id, layer.department.path)


def data_target(layer: Layer) -> Target:
    """Reading features is reading the catalog resource: the hub's rules and grants apply."""
    return Target("hub.resource", layer.resource_id, layer.department_id, layer.department.path)


@dataclass(frozen=True)
class Reading:
    """What one actor may read of one layer: everything, or what a grant allows."""

    layer: Layer
    grant: Any = None  # the hub's grant row (fields, row_filter, purpose) when shared
    public: bool = False

    @property
    def fields(self) -> list[str] | None:
        return None if self.grant is None else list(self.grant.fields)


def reading(session: Session, actor: Actor, layer: Layer) -> Reading:
    """The one access decision of a read: public layer, own department, or a sharing grant."""
    if layer.public:
        return Reading(layer, public=True)
    decision = access.require(actor, "hub.data.read", data_target(layer), session)
    return Reading(layer, decision.grant)


# -- reading features -----------------------------------------------------------------------------


def _attr_types(layer: Layer) -> dict[str, str]:
    return {a["name"]: a["type"] for a in layer.attributes}


def _refuse(actor: Actor, rd: Reading, name: str) -> access.Denied:
    err = access.Denied(actor, "hub.data.read", data_target(rd.layer), f"{name} is not granted")
    err.errors = [FieldError(name, f"not granted to your department / 未授权给本部门: {name}")]
    return err


_OPS = {"eq": lambda e, v: e == v, "ne": lambda e, v: e != v, "gt": lambda e, v: e > v,
        "gte": lambda e, v: e >= v, "lt": lambda e, v: e < v, "lte": lambda e, v: e <= v,
        "in": lambda e, v: e.in_(list(v)), "contains": lambda e, v: e.contains(str(v), autoescape=True),
        "startswith": lambda e, v: e.startswith(str(v), autoescape=True),
        "isnull": lambda e, v: e.is_(None) if v else e.is_not(None)}


def _grant_rows(actor: Actor, rd: Reading, spatial: store.SpatialAdapter) -> list[ColumnElement[bool]]:
    """A grant's row conditions as SQL on the properties. One we cannot apply refuses the read:
    better no answer than rows the grant does not cover."""
    if rd.grant is None:
        return []
    kinds = _attr_types(rd.layer)
    out: list[ColumnElement[bool]] = []
    for cond in rd.grant.row_filter or []:
        name, op, value = cond.get("field"), cond.get("op"), cond.get("value")
        if op not in _OPS or (name not in kinds and name != "fid"):
            raise _refuse(actor, rd, f"row condition on {name}")
        kind = kinds.get(name, "string")
        expr = store.FEATURES.c.fid if name == "fid" else spatial.prop(name, kind)
        try:
            if op == "isnull":
                typed: Any = bool(value)
            elif op == "in":
                typed = [typed_value(kind, v) for v in value]
            else:
                typed = typed_value(kind, value)
        except (TypeError, ValueError):
            raise _refuse(actor, rd, f"row condition on {name}") from None
        out.append(_OPS[op](expr, typed))
    return out


def _filters(actor: Actor, rd: Reading, spatial: store.SpatialAdapter,
             datetime: tuple[dt.datetime | None, dt.datetime | None] | None,
             props: Mapping[str, Any] | None) -> list[ColumnElement[bool]]:
    layer, allowed = rd.layer, rd.fields
    kinds = _attr_types(layer)
    clauses: list[ColumnElement[bool]] = []
    if datetime is not None:
        if layer.time_field is None:
            raise Invalid("datetime", "this layer has no time attribute / 该图层没有时间属性")
        if allowed is not None and layer.time_field not in allowed:
            raise _refuse(actor, rd, layer.time_field)
        start, end = datetime
        for v in (start, end):
            if v is not None and v.tzinfo is None:
                raise Invalid("datetime", "times need a zone / 时间须带时区")
        clauses.append(store.time_overlaps(start, end))
    for name, value in (props or {}).items():
        if name not in kinds:
            raise Invalid(name, f"no such attribute {name!r} / 无此属性")
        if allowed is not None and name not in allowed:
            raise _refuse(actor, rd, name)
        try:
            clauses.append(spatial.prop(name, kinds[name]) == typed_value(kinds[name], value))
        except (TypeError, ValueError) as exc:
            raise Invalid(name, str(exc)) from None
    return clauses + _grant_rows(actor, rd, spatial)


def _shown(rd: Reading, feats: list[StoredFeature]) -> list[StoredFeature]:
    allowed = rd.fields
    if allowed is not None:
        keep = set(allowed)
        for f in feats:
            f.props = {k: v for k, v in f.props.items() if k in keep}
    return feats


def audit_shared(session: Session, actor: Actor, rd: Reading, operation: str, returned: int,
                  purpose: str | None, **detail: Any) -> None:
    """A read through a grant, filed under the provider (its auditor sees who read what, why)."""
    if rd.grant is None:
        return
    layer = rd.layer
    audit.append(session, actor=actor.name, action="hub.data.read", department=layer.department.code,
                 object_type="hub.resource", object_id=layer.resource_code,
                 purpose=(purpose or "").strip() or rd.grant.purpose,
                 detail={"via": "maps", "layer": layer.code, "operation": operation,
                         "grant": rd.grant.id, "provider": layer.department.code,
                         "reader_department": actor.department_code, "fields": rd.fields,
                         "returned": returned, **detail})


def _page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid("limit", f"between 1 and {MAX_LIMIT} / 应在1到{MAX_LIMIT}之间")
    if offset < 0:
        raise Invalid("offset", "must not be negative / 不能为负数")


def _check_bbox(bbox: Sequence[float] | None) -> BBox | None:
    if bbox is None:
        return None
    if len(bbox) != 4 or not all(np.isfinite(v) for v in bbox):
        raise Invalid("bbox", "minx,miny,maxx,maxy in longitude and latitude "
                              "/ 须为 最小经度,最小纬度,最大经度,最大纬度")
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    if minx > maxx or miny > maxy:
        raise Invalid("bbox", "min after max (a box across the antimeridian is not supported) "
                              "/ 最小值大于最大值")
    return (minx, miny, maxx, maxy)


def features_query(
    session: Session, actor: Actor, code: str, *, bbox: Sequence[float] | None = None,
    datetime: tuple[dt.datetime | None, dt.datetime | None] | None = None,
    props: Mapping[str, Any] | None = None, where: Sequence[ColumnElement[bool]] | None = None,
    limit: int = 100, offset: int = 0, count: bool = True, purpose: str | None = None,
) -> tuple[list[StoredFeature], int | None]:
    """A page of a layer's features (要素查询) and how many match in all (None if count=False).

    `where` is extra SQL built on `store.adapter(session)` (e.g. from CQL2); it must only touch
    properties the caller may read, which the caller checks with `readable_fields`."""
    layer = layer_by_code(session, code)
    rd = reading(session, actor, layer)
    _page(limit, offset)
    box = _check_bbox(bbox)
    spatial = store.adapter(session)
    clauses = _filters(actor, rd, spatial, datetime, props) + list(where or [])
    feats = spatial.bbox_query(layer.id, box, limit=limit, offset=offset, where=clauses)
    matched = spatial.count(layer.id, box, where=clauses) if count else None
    audit_shared(session, actor, rd, "query", len(feats), purpose, bbox=list(box) if box else None,
                  limit=limit, offset=offset)
    return _shown(rd, feats), matched


def readable_fields(session: Session, actor: Actor, code: str) -> list[str] | None:
    """The properties the actor may read of a layer (None: all), for callers that build filters."""
    return reading(session, actor, layer_by_code(session, code)).fields


def feature_get(session: Session, actor: Actor, code: str, fid: str, *,
                purpose: str | None = None) -> StoredFeature:
    """One feature by its id within the layer."""
    layer = layer_by_code(session, code)
    rd = reading(session, actor, layer)
    spatial = store.adapter(session)
    rows = _grant_rows(actor, rd, spatial)
    found = spatial.bbox_query(layer.id, None, limit=1, where=[store.FEATURES.c.fid == str(fid), *rows])
    if not found:
        raise NotFound("feature", fid)
    audit_shared(session, actor, rd, "get", 1, purpose, fid=str(fid))
    return _shown(rd, found)[0]


# -- spatial services -----------------------------------------------------------------------------


def _point(lon: float, lat: float) -> BaseGeometry:
    if not (np.isfinite(lon) and np.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise Invalid("point", "longitude -180..180 and latitude -90..90 / 经纬度超出范围")
    return shapely.Point(float(lon), float(lat))


def nearest(session: Session, actor: Actor, code: str, lon: float, lat: float, k: int = 1, *,
            purpose: str | None = None) -> list[StoredFeature]:
    """The k features nearest to a point (最近要素), geodesic metres in `distance`."""
    layer = layer_by_code(session, code)
    rd = reading(session, actor, layer)
    if not 1 <= k <= MAX_NEAREST:
        raise Invalid("k", f"between 1 and {MAX_NEAREST} / 应在1到{MAX_NEAREST}之间")
    spatial = store.adapter(session)
    feats = spatial.nearest(layer.id, _point(lon, lat), k, where=_grant_rows(actor, rd, spatial))
    audit_shared(session, actor, rd, "nearest", len(feats), purpose, point=[lon, lat], k=k)
    return _shown(rd, feats)


def within_distance(session: Session, actor: Actor, code: str, geom: BaseGeometry, metres: float, *,
                    limit: int = 1000, purpose: str | None = None) -> list[StoredFeature]:
    """Features within `metres` (geodesic) of a geometry (缓冲查询), nearest first."""
    layer = layer_by_code(session, code)
    rd = reading(session, actor, layer)
    _page(limit, 0)
    if not (np.isfinite(metres) and 0 <= metres <= 1_000_000):
        raise Invalid("metres", "0 to 1,000,000 / 应在0到1000000之间")
    if geom.is_empty:
        raise Invalid("geometry", "empty / 几何为空")
    spatial = store.adapter(session)
    feats = spatial.within_distance(layer.id, geom, float(metres), limit=limit,
                                    where=_grant_rows(actor, rd, spatial))
    audit_shared(session, actor, rd, "within", len(feats), purpose, metres=metres)
    return _shown(rd, feats)


def assign(session: Session, actor: Actor, code: str, lons: Any, lats: Any, attribute: str, *,
           purpose: str | None = None) -> NDArray[Any]:
    """For many points, the `attribute` of the polygon each falls in, or None (批量落区)."""
    layer = layer_by_code(session, code)
    rd = reading(session, actor, layer)
    values = _assign(session, actor, rd, lons, lats, attribute)
    audit_shared(session, actor, rd, "assign", len(values), purpose, attribute=attribute)
    return values


def _assign(session: Session, actor: Actor, rd: Reading, lons: Any, lats: Any,
            attribute: str) -> NDArray[Any]:
    layer = rd.layer
    if layer.geometry_type not in ("polygon", "any"):
        raise Invalid("layer", "points are assigned to a polygon layer / 须为面图层")
    if attribute not in _attr_types(layer):
        raise Invalid("attribute", f"no such attribute {attribute!r} / 无此属性")
    if rd.fields is not None and attribute not in rd.fields:
        raise _refuse(actor, rd, attribute)
    if rd.grant is not None and rd.grant.row_filter:
        raise _refuse(actor, rd, "a layer granted with row conditions")
    xs, ys = np.asarray(lons, dtype=np.float64), np.asarray(lats, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise Invalid("points", "as many longitudes as latitudes / 经度与纬度数量须一致")
    if len(xs) > MAX_POINTS:
        raise Invalid("points", f"at most {MAX_POINTS} points a call / 每次最多{MAX_POINTS}个点")
    return store.adapter(session).assign(xs, ys, layer.id, attribute)


def reference_set(session: Session, actor: Actor, role: str, code: str, attribute: str) -> ReferenceLayer:
    """Choose the layer (and its code attribute) that answers "which district/street/... is this"."""
    access.require(actor, "maps.reference.write", None, session)
    if role not in ROLES:
        raise Invalid("role", f"one of {', '.join(ROLES)} / 须为 {', '.join(ROLES)}")
    layer = layer_by_code(session, code)
    if layer.geometry_type != "polygon":
        raise Invalid("layer", "a reference layer holds polygons / 基准图层须为面图层")
    if attribute not in _attr_types(layer):
        raise Invalid("attribute", f"no such attribute {attribute!r} / 无此属性")
    ref = session.get(ReferenceLayer, role)
    if ref is None:
        ref = ReferenceLayer(role=role, layer_id=layer.id, attribute=attribute, updated_by=actor.name)
        session.add(ref)
    else:
        ref.layer_id, ref.attribute, ref.updated_by = layer.id, attribute, actor.name
    session.flush()
    audit.append(session, actor=actor.name, action="maps.reference.set", department=actor.department_code,
                 object_type="maps.reference", object_id=role, detail={"layer": code, "attribute": attribute})
    return ref


def reference_layers(session: Session) -> dict[str, tuple[str, str]]:
    """role → (layer code, attribute) of the reference layers set so far."""
    rows = session.execute(select(ReferenceLayer.role, Layer.code, ReferenceLayer.attribute)
                           .join(Layer, Layer.id == ReferenceLayer.layer_id))
    return {r: (c, a) for r, c, a in rows}


def locate_many(session: Session, actor: Actor, lons: Any, lats: Any, *,
                purpose: str | None = None) -> dict[str, list[Any]]:
    """For many points: the district, street, community and grid codes each falls in (落点定位),
    by role; only the roles whose reference layer is set. Every reference layer must be readable
    by the actor (public, own, or granted)."""
    out: dict[str, list[Any]] = {}
    readings: dict[str, tuple[Reading, str]] = {}
    for role, (code, attribute) in sorted(reference_layers(session).items()):
        layer = layer_by_code(session, code)
        readings[role] = (reading(session, actor, layer), attribute)
    for role, (rd, attribute) in readings.items():
        values = _assign(session, actor, rd, lons, lats, attribute)
        out[role] = [None if v is None else str(v) for v in values]
        audit_shared(session, actor, rd, "locate", len(values), purpose, role=role)
    return out


def locate(session: Session, actor: Actor, lon: float, lat: float, *,
           purpose: str | None = None) -> dict[str, str | None]:
    """Which district, street, community and grid one point falls in (codes; None outside)."""
    _point(lon, lat)
    return {role: values[0] for role, values in
            locate_many(session, actor, [lon], [lat], purpose=purpose).items()}
