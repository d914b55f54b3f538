"""Pipe networks over stored layers (管网服务): load, burst analysis (爆管分析), "before you dig"
(开挖前查询) and the topology check (拓扑检查), for the pages, the API and other engines.

A network is a code and up to five ordinary map layers named after it — `<code>-pipes` (required),
`<code>-valves`, `<code>-customers`, `<code>-sources`, `<code>-terminals` — whose attributes follow
`NETWORK_LAYERS`. A naming convention rather than a table: every part stays a plain layer, so
it is cataloged, requested, granted (共享授权), audited and served over OGC API like any other,
and nothing can drift out of step with the layers themselves.

Every read goes through `maps.service` (public layer, own department, or a sharing grant, whose
fields and rows limit what the network is built from). A built network is cached per version of
its layers (and per grant that shaped it); a read served from the cache through a grant is still
audited under the provider, as the service audits its own shared reads. A burst analysis is an
emergency action and is always audited.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import shapely
import shapely.geometry
from shapely.geometry import LineString, Point
from shapely.geometry.base import BaseGeometry
from sqlalchemy.orm import Session

from cityos.core import audit
from cityos.core.access import Actor
from cityos.core.errors import Invalid, NotFound
from cityos.maps import pipes, service
from cityos.maps.models import Layer
from cityos.maps.store import StoredFeature

DIG_MAX_M = 500.0  # the widest "before you dig" search
DIG_LIMIT = 1000  # pipes a layer may answer with
CACHE_SIZE = 16
BURST_BUFFER_M = 50.0
AUDIT_LIST = 100  # ids kept in an audit record's detail


@dataclass(frozen=True)
class LayerRole:
    """One part of a network: its layer's suffix, geometry and attributes, described as data."""

    role: str
    zh: str
    en: str
    geometry_type: str
    attributes: tuple[tuple[str, str, str], ...]  # name, title, type

    def attribute_specs(self) -> list[dict[str, str]]:
        """The attributes as `maps.service.layer_create` takes them."""
        return [{"name": n, "title": t, "type": k} for n, t, k in self.attributes]


_KIND = ("kind", "专业", "string")
NETWORK_LAYERS: dict[str, LayerRole] = {r.role: r for r in (
    LayerRole("pipes", "管线", "pipes", "line", (
        _KIND, ("material", "材质", "string"), ("diameter_mm", "管径（毫米）", "number"),
        ("depth_m", "埋深（米）", "number"), ("year", "敷设年份", "integer"),
        ("owner", "权属单位", "string"))),
    LayerRole("valves", "阀门", "valves", "point", (_KIND, ("status", "状态", "string"))),
    LayerRole("customers", "用户", "customers", "point", (("name", "用户名称", "string"), _KIND)),
    LayerRole("sources", "水源", "sources", "point", (("name", "名称", "string"), _KIND)),
    LayerRole("terminals", "附属物", "terminals", "point", (("kind", "类型", "string"),)),
)}
SUFFIX = "-pipes"
CODE_MAX = 64 - len("-terminals")


@dataclass(frozen=True)
class NetworkSpec:
    """A network found by its code: the layer of each part it has (role → layer code)."""

    code: str
    layers: dict[str, str]


def layer_code(network: str, role: str) -> str:
    """The code of a network's layer for a part, e.g. water-changyi-valves."""
    return f"{network}-{role}"


def is_pipes_layer(code: str) -> bool:
    """Whether a layer code names a network's pipes (`<network>-pipes`)."""
    return code.endswith(SUFFIX) and len(code) > len(SUFFIX)


def network_of(layer_code_: str) -> str | None:
    """The network a layer belongs to by its code, or None."""
    for role in NETWORK_LAYERS:
        if layer_code_.endswith(f"-{role}") and len(layer_code_) > len(role) + 1:
            return layer_code_[: -len(role) - 1]
    return None


def _layers(session: Session, network: str) -> dict[str, Layer]:
    out: dict[str, Layer] = {}
    for role in NETWORK_LAYERS:
        try:
            out[role] = service.layer_by_code(session, layer_code(network, role))
        except NotFound:
            if role == "pipes":
                raise NotFound("network", network) from None
    return out


def network_spec(session: Session, network: str) -> NetworkSpec:
    """Which parts a network has (no access decision: its layers' codes are not secret)."""
    return NetworkSpec(network, {role: la.code for role, la in _layers(session, network).items()})


# -- creating and writing -------------------------------------------------------------------------


def network_create(session: Session, actor: Actor, network: str, title: str, *,
                   department: str | None = None, title_en: str | None = None,
                   roles: Iterable[str] = ("pipes", "valves", "customers", "sources"),
                   description: str = "", **catalog: Any) -> NetworkSpec:
    """Create a network's layers (新建管网), each a catalog resource of the owning department."""
    wanted = ["pipes", *[r for r in roles if r != "pipes"]]
    unknown = [r for r in wanted if r not in NETWORK_LAYERS]
    if unknown:
        raise Invalid("roles", f"unknown part {unknown[0]!r}; one of {', '.join(NETWORK_LAYERS)} "
                               "/ 管网图层类型不合法")
    if len(network) > CODE_MAX:
        raise Invalid("code", f"at most {CODE_MAX} characters / 管网代码过长")
    for role in wanted:
        part = NETWORK_LAYERS[role]
        service.layer_create(session, actor, {
            "code": layer_code(network, role), "title": f"{title}·{part.zh}",
            "title_en": f"{title_en} - {part.en}" if title_en else None, "department": department,
            "geometry_type": part.geometry_type, "attributes": part.attribute_specs(),
            "description": description or f"{title}的{part.zh}（管网 {network}）", **catalog,
        })
    return network_spec(session, network)


def _features_in(role: str, items: Sequence[Any]) -> list[service.FeatureIn]:
    names = [n for n, _t, _k in NETWORK_LAYERS[role].attributes]
    return [(item.id, item.geom, {n: getattr(item, n) for n in names
                                  if getattr(item, n, None) is not None}) for item in items]


def network_write(session: Session, actor: Actor, network: str, parts: Mapping[str, Sequence[Any]]
                  ) -> dict[str, int]:
    """Replace the features of a network's layers (管网入库) with `pipes.Pipe`, `Valve`,
    `Customer`, `Source` and `Terminal` objects by part (role → items); features written per part."""
    spec = network_spec(session, network)
    out: dict[str, int] = {}
    for role, items in parts.items():
        if role not in NETWORK_LAYERS:
            raise Invalid(role, f"one of {', '.join(NETWORK_LAYERS)} / 管网图层类型不合法")
        if role not in spec.layers:
            raise Invalid(role, f"the network has no {role} layer / 该管网没有{NETWORK_LAYERS[role].zh}图层")
        out[role] = service.features_write(session, actor, spec.layers[role],
                                           _features_in(role, items)).written
    return out


# -- loading --------------------------------------------------------------------------------------

_cache: OrderedDict[tuple[Any, ...], pipes.Network] = OrderedDict()
_cache_lock = threading.Lock()


def _read_all(session: Session, actor: Actor, code: str, purpose: str | None) -> list[StoredFeature]:
    out: list[StoredFeature] = []
    while True:
        page, _ = service.features_query(session, actor, code, limit=service.MAX_LIMIT, offset=len(out),
                                         count=False, purpose=purpose)
        out += page
        if len(page) < service.MAX_LIMIT:
            return out


def _text(props: Mapping[str, Any], name: str) -> str | None:
    value = props.get(name)
    return None if value is None or value == "" else str(value)


def _number(props: Mapping[str, Any], name: str) -> float | None:
    value = props.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _lines(f: StoredFeature) -> list[tuple[str, LineString]]:
    """A stored pipe as LineStrings: a multi-line that does not merge into one keeps its parts,
    numbered after the feature id (W12#1, W12#2)."""
    geom = f.geom
    if geom.geom_type == "MultiLineString":
        geom = shapely.line_merge(geom)
    if isinstance(geom, LineString):
        return [(f.fid, geom)]
    parts = [p for p in shapely.get_parts(geom).tolist() if isinstance(p, LineString)]
    return [(f"{f.fid}#{k}", p) for k, p in enumerate(parts, start=1)]


def _point(g: BaseGeometry) -> Point:
    return g if isinstance(g, Point) else g.representative_point()


def build_network(feats: Mapping[str, Sequence[StoredFeature]]) -> pipes.Network:
    """A `pipes.Network` from stored features by part; a part's missing kind is the pipes' own
    when they are all of one kind."""
    pipe_list = [pipes.Pipe(fid, str(f.props.get("kind") or ""), line, _text(f.props, "material"),
                            _number(f.props, "diameter_mm"), _number(f.props, "depth_m"),
                            int(y) if (y := _number(f.props, "year")) is not None else None,
                            _text(f.props, "owner"))
                 for f in feats.get("pipes", ()) for fid, line in _lines(f)]
    kinds = {p.kind for p in pipe_list}
    only = next(iter(kinds)) if len(kinds) == 1 else ""

    def kind(f: StoredFeature) -> str:
        return _text(f.props, "kind") or only

    valves = [pipes.Valve(f.fid, kind(f), _point(f.geom),
                          "closed" if f.props.get("status") == "closed" else "open")
              for f in feats.get("valves", ())]
    customers = [pipes.Customer(f.fid, _point(f.geom), _text(f.props, "name"), _text(f.props, "kind"))
                 for f in feats.get("customers", ())]
    sources = [pipes.Source(f.fid, kind(f), _point(f.geom), _text(f.props, "name"))
               for f in feats.get("sources", ())]
    terminals = [pipes.Terminal(f.fid, str(f.props.get("kind") or ""), _point(f.geom))
                 for f in feats.get("terminals", ())]
    return pipes.Network.build(pipe_list, valves, customers, sources, terminals)


def network_load(session: Session, actor: Actor, network: str, *, purpose: str | None = None
                 ) -> pipes.Network:
    """A stored network as a `pipes.Network` (管网加载), built once per version of its layers.
    Every part must be readable: an analysis without, say, the customers would understate it."""
    layers = _layers(session, network)
    readings = {role: service.reading(session, actor, la) for role, la in layers.items()}
    key = (str(session.get_bind().engine.url), network,
           *((role, la.id, la.updated_at, la.feature_count, readings[role].grant.id
              if readings[role].grant is not None else None) for role, la in layers.items()))
    with _cache_lock:
        net = _cache.get(key)
        if net is not None:
            _cache.move_to_end(key)
    if net is not None:
        for rd in readings.values():
            # Served from the cache: the read is audited as the service audits its own shared reads.
            service.audit_shared(session, actor, rd, "network", rd.layer.feature_count, purpose, cached=True)
        return net
    net = build_network({role: _read_all(session, actor, la.code, purpose) for role, la in layers.items()})
    with _cache_lock:
        _cache[key] = net
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return net


def _summary(network: str, pipes_layer: Layer, parts: dict[str, str]) -> dict[str, Any]:
    return {"code": network, "title": pipes_layer.title.removesuffix("·" + NETWORK_LAYERS["pipes"].zh),
            "department": pipes_layer.department.code, "department_name": pipes_layer.department.name,
            "layers": parts, "pipes": pipes_layer.feature_count, "bbox": pipes_layer.bbox}


def network_get(session: Session, actor: Actor, network: str) -> dict[str, Any]:
    """A network the actor may read (its pipes layer decides), with the codes of its parts."""
    spec = network_spec(session, network)
    return _summary(network, service.layer_get(session, actor, spec.layers["pipes"]), spec.layers)


def network_list(session: Session, actor: Actor) -> list[dict[str, Any]]:
    """The networks whose pipes the actor may read, with the parts the actor may read too."""
    layers = {la.code: la for la in service.layer_list(session, actor, limit=service.MAX_LIMIT)}
    out = []
    for code, la in layers.items():
        if is_pipes_layer(code):
            network = code[: -len(SUFFIX)]
            parts = {role: layer_code(network, role) for role in NETWORK_LAYERS
                     if layer_code(network, role) in layers}
            out.append(_summary(network, la, parts))
    return out


# -- GeoJSON --------------------------------------------------------------------------------------


def _geometry(g: BaseGeometry) -> dict[str, Any]:
    return dict(shapely.geometry.mapping(g))


def _feature(fid: str, geom: BaseGeometry, props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "id": fid, "geometry": _geometry(geom), "properties": props}


def _collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features, "numberReturned": len(features)}


def _pipe_props(p: pipes.Pipe) -> dict[str, Any]:
    kind = pipes.PIPE_KINDS.get(p.kind)
    return {"kind": p.kind, "kind_zh": kind.zh if kind else None, "material": p.material,
            "diameter_mm": p.diameter_mm, "depth_m": p.depth_m, "year": p.year, "owner": p.owner,
            "length_m": round(service.length_m(p.geom), 1)}


def _valve(v: pipes.Valve) -> dict[str, Any]:
    return _feature(v.id, v.geom, {"kind": v.kind, "status": v.status})


def _issue(i: pipes.Issue) -> dict[str, Any]:
    return _feature(i.id, i.geom, {"kind": i.kind, "id": i.id, "message": i.message})


# -- analyses -------------------------------------------------------------------------------------


def _at(at: Sequence[float] | BaseGeometry | None) -> Point | None:
    if at is None:
        return None
    point = at if isinstance(at, BaseGeometry) else Point(*[float(v) for v in at])
    if not isinstance(point, Point) or point.is_empty or not (
            -180 <= point.x <= 180 and -90 <= point.y <= 90):
        raise Invalid("at", "a point [longitude, latitude] / 须为经纬度点")
    return point


def burst(session: Session, actor: Actor, network: str, pipe_id: str,
          at: Sequence[float] | BaseGeometry | None = None, *, purpose: str | None = None) -> dict[str, Any]:
    """Burst analysis (爆管分析): the valves to close, the pipes isolated and cut off, the
    customers without supply and the area affected, as GeoJSON; audited (an emergency action)."""
    point = _at(at)
    net = network_load(session, actor, network, purpose=purpose)
    result = net.burst(str(pipe_id), point, buffer_m=BURST_BUFFER_M)
    by_id = {p.id: p for p in net.pipes}
    isolated = [by_id[i] for i in result.isolated_pipe_ids]
    unsupplied = [by_id[i] for i in result.unsupplied_pipe_ids]
    unsupplied_m = sum(service.length_m(p.geom) for p in unsupplied)
    area_m2 = service.area_m2(result.area) if not result.area.is_empty else 0.0
    summary = {
        "valves_to_close": len(result.valves_to_close),
        "valves_already_closed": len(result.valves_already_closed),
        "isolated_pipes": len(isolated), "isolated_length_m": round(result.isolated_length_m, 1),
        "unsupplied_pipes": len(unsupplied), "unsupplied_length_m": round(unsupplied_m, 1),
        "customers_cut_off": len(result.customers_cut_off),
        "customers_in_zone": len(result.customers_in_zone),
        "customers_downstream": len(result.customers_downstream),
        "area_m2": round(area_m2, 1),
    }
    owner = service.layer_by_code(session, layer_code(network, "pipes")).department
    audit.append(session, actor=actor.name, action="maps.network.burst", department=owner.code,
                 object_type="maps.network", object_id=network, purpose=purpose,
                 detail={"pipe": result.pipe_id, "at": None if point is None else [point.x, point.y],
                         "valves": [v.id for v in result.valves_to_close][:AUDIT_LIST],
                         "reader_department": actor.department_code, **summary})
    customers = ([_feature(c.id, c.geom, {"name": c.name, "where": "zone"}) for c in result.customers_in_zone]
                 + [_feature(c.id, c.geom, {"name": c.name, "where": "downstream"})
                    for c in result.customers_downstream])
    return {
        "network": network, "pipe_id": result.pipe_id,
        "at": None if point is None else [point.x, point.y],
        "segment": _geometry(result.segment),
        "valves_to_close": _collection([_valve(v) for v in result.valves_to_close]),
        "valves_already_closed": _collection([_valve(v) for v in result.valves_already_closed]),
        "isolated_pipes": _collection([_feature(p.id, p.geom, _pipe_props(p)) for p in isolated]),
        "unsupplied_pipes": _collection([_feature(p.id, p.geom, _pipe_props(p)) for p in unsupplied]),
        "customers_cut_off": _collection(customers),
        "area": None if result.area.is_empty else _geometry(result.area),
        "summary": summary,
        "warnings": [_issue(w) for w in result.warnings],
    }


def network_check(session: Session, actor: Actor, network: str, *, purpose: str | None = None
                  ) -> dict[str, Any]:
    """Topology check (拓扑检查) of a stored network: its issues as GeoJSON, counted by kind."""
    net = network_load(session, actor, network, purpose=purpose)
    issues = net.check()
    counts: dict[str, int] = {}
    for i in issues:
        counts[i.kind] = counts.get(i.kind, 0) + 1
    return {**_collection([_issue(i) for i in issues]), "network": network, "counts": counts,
            "pipes": len(net.pipes), "valves": len(net.valves), "customers": len(net.customers),
            "sources": len(net.sources)}


def dig_check(session: Session, actor: Actor, geometry: BaseGeometry, metres: float,
              kinds: Iterable[str] | None = None, *, purpose: str | None = None) -> dict[str, Any]:
    """Before you dig (开挖前查询): the pipes within `metres` of a point or line, nearest first,
    with their depth, across every network's pipes the actor may read."""
    if not 0 < metres <= DIG_MAX_M:
        raise Invalid("metres", f"more than 0 and at most {DIG_MAX_M:g} / 应大于0且不超过{DIG_MAX_M:g}米")
    wanted = None if kinds is None else set(kinds)
    if wanted is not None and wanted - set(pipes.PIPE_KINDS):
        raise Invalid("kinds", f"one of {', '.join(pipes.PIPE_KINDS)} / 管线专业不合法")
    if geometry.is_empty:
        raise Invalid("geometry", "empty / 几何为空")
    searched, hits = [], []
    for la in service.layer_list(session, actor, limit=service.MAX_LIMIT):
        if not is_pipes_layer(la.code):
            continue
        searched.append(la.code)
        for f in service.within_distance(session, actor, la.code, geometry, metres, limit=DIG_LIMIT,
                                         purpose=purpose):
            kind = _text(f.props, "kind")
            if wanted is not None and kind not in wanted:
                continue
            known = pipes.PIPE_KINDS.get(kind or "")
            props = {**f.props, "network": la.code[: -len(SUFFIX)], "layer": la.code,
                     "kind_zh": known.zh if known else None, "colour": known.colour if known else None,
                     "distance_m": round(f.distance or 0.0, 2)}
            hits.append(_feature(f.fid, f.geom, props))
    hits.sort(key=lambda h: h["properties"]["distance_m"])
    by_kind: dict[str, dict[str, Any]] = {}
    for h in hits:
        p = h["properties"]
        row = by_kind.setdefault(p.get("kind") or "", {"count": 0, "min_depth_m": None, "nearest_m": None})
        row["count"] += 1
        depth = p.get("depth_m")
        if isinstance(depth, int | float) and (row["min_depth_m"] is None or depth < row["min_depth_m"]):
            row["min_depth_m"] = depth
        if row["nearest_m"] is None:
            row["nearest_m"] = p["distance_m"]
    return {**_collection(hits), "metres": metres, "layers": searched, "kinds": by_kind}
