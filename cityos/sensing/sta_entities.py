"""SensorThings entity sets (实体集) as data, and reading them: scope, filter, order, expand, render.

Each entity set names its table, its properties (how each is shown, and which column a `$filter` or
`$orderby` uses) and its navigation properties (which key links it to the other set: a column on
the target, a column on the source, or an association table). One reader walks any of them, so
`Things(1)/Datastreams`, `$expand=Datastreams($expand=Observations)` and
`$filter=Datastream/Thing/name eq 'x'` are the same few functions for every set.

Access: a Thing, Datastream or MultiDatastream is read by the departments that may read it
(`service.readable_departments`); Locations and Sensors likewise, a row without a department being
city-wide; HistoricalLocations and Observations follow their Thing and stream. ObservedProperties
are city-wide, and so are FeaturesOfInterest that were not made from a Location (a river section,
a road); those made from a Location follow that Location. Whatever the caller may not read does not
exist for them (404), so nothing leaks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import JSON, Select, Text, case, cast, func, literal, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from cityos.core.access import Actor
from cityos.core.models import Department
from cityos.sensing.ingest import ms_to_iso
from cityos.sensing.models import (
    Datastream,
    FeatureOfInterest,
    HistoricalLocation,
    Location,
    Observation,
    ObservedProperty,
    Sensor,
    Thing,
    historical_location_locations,
    multi_datastream_properties,
    thing_locations,
)
from cityos.sensing.sta_query import (
    Expand,
    Field,
    QueryOptions,
    StaQueryError,
    compile_expr,
    compile_filter,
    to_text,
)

PREFIX = "/sta/v1.1"
DEFAULT_TOP, MAX_TOP = 100, 10000


# -- descriptions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prop:
    """A property: how it is shown, and the column (and query kind) `$filter`/`$orderby` use."""

    name: str
    get: Callable[[Any, Reader], Any]
    attr: str
    kind: str  # a sta_query Field kind
    json_text: bool = False  # JSON kept as text (Observation columns), not in a JSON column


@dataclass(frozen=True)
class Nav:
    """A navigation property and the key that links source and target."""

    name: str
    target: str  # entity set name
    many: bool
    fk_target: str | None = None  # column of the target holding the source id
    fk_parent: str | None = None  # column of the source holding the target id
    assoc: Any = None  # association table, with the columns naming source and target
    assoc_from: str = ""
    assoc_to: str = ""
    when: Callable[[Any, Reader], bool] | None = None  # shown only for some rows


@dataclass(frozen=True)
class EntitySet:
    name: str
    singular: str
    model: Any
    props: tuple[Prop, ...]
    navs: tuple[Nav, ...]
    scope: Callable[[list[int]], ColumnElement[bool]]  # rows the departments `ids` may read
    kind: str | None = None  # sensor_datastreams.kind of Datastreams / MultiDatastreams

    def prop(self, name: str) -> Prop | None:
        """The property called `name`, if any."""
        return next((p for p in self.props if p.name == name), None)

    def nav(self, name: str) -> Nav | None:
        """The navigation property called `name`, if any."""
        return next((n for n in self.navs if n.name == name), None)

    def base_where(self) -> list[ColumnElement[bool]]:
        """The condition every row of the set meets (the stream kind of Datastreams)."""
        return [self.model.kind == self.kind] if self.kind else []


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _col(name: str, attr: str, kind: str = "string") -> Prop:
    return Prop(name, lambda o, r: getattr(o, attr), attr, kind)


def _text_json(name: str, attr: str) -> Prop:
    return Prop(name, lambda o, r: _loads(getattr(o, attr)), attr, "json", json_text=True)


def _instant_or_interval(start: int | None, end: int | None) -> str | None:
    if start is None:
        return None
    return ms_to_iso(start) if end is None else f"{ms_to_iso(start)}/{ms_to_iso(end)}"


def _period(start: int | None, end: int | None) -> str | None:
    if start is None:
        return None
    return f"{ms_to_iso(start)}/{ms_to_iso(end if end is not None else start)}"


def _span(name: str, a: str, b: str, shape: Callable[[int | None, int | None], str | None]) -> Prop:
    return Prop(name, lambda o, r: shape(getattr(o, a), getattr(o, b)), a, "time_ms")


def result_value(number: float | None, js: str | None) -> Any:
    """An Observation's result from its two columns (whole numbers shown without a fraction)."""
    if js is not None:
        return orjson.loads(js)
    if number is not None and number.is_integer() and abs(number) < 2**53:
        return int(number)
    return number


def _thing_properties(o: Thing, r: Reader) -> dict[str, Any]:
    return {**(o.properties or {}), "department": r.dept_code(o.department_id)}


_NAME_DESC = (_col("name", "name"), _col("description", "description"))
_PROPS = _col("properties", "properties", "json")


def _dept_scope(model: Any, nullable: bool = False) -> Callable[[list[int]], ColumnElement[bool]]:
    if nullable:
        return lambda ids: or_(model.department_id.in_(ids), model.department_id.is_(None))
    return lambda ids: model.department_id.in_(ids)  # type: ignore[no-any-return]


def _via(column: Any, model: Any, nullable: bool = False) -> Callable[[list[int]], ColumnElement[bool]]:
    inner = _dept_scope(model, nullable)
    return lambda ids: column.in_(select(model.id).where(inner(ids)))  # type: ignore[no-any-return]


def _is_kind(kind: str) -> Callable[[Any, Reader], bool]:
    return lambda o, r: r.kind_of(o.datastream_id) == kind


_STREAM_NAVS = (Nav("Thing", "Things", False, fk_parent="thing_id"),
                Nav("Sensor", "Sensors", False, fk_parent="sensor_id"))
_STREAM_TAIL = (_col("observationType", "observation_type"), _col("observedArea", "observed_area", "geojson"),
                _span("phenomenonTime", "phenomenon_start", "phenomenon_end", _period),
                _span("resultTime", "result_start", "result_end", _period), _PROPS)

SETS: dict[str, EntitySet] = {s.name: s for s in (
    EntitySet("Things", "Thing", Thing,
              (*_NAME_DESC, Prop("properties", _thing_properties, "properties", "json")),
              (Nav("Locations", "Locations", True, assoc=thing_locations, assoc_from="thing_id",
                   assoc_to="location_id"),
               Nav("HistoricalLocations", "HistoricalLocations", True, fk_target="thing_id"),
               Nav("Datastreams", "Datastreams", True, fk_target="thing_id"),
               Nav("MultiDatastreams", "MultiDatastreams", True, fk_target="thing_id")),
              _dept_scope(Thing)),
    EntitySet("Locations", "Location", Location,
              (*_NAME_DESC, _col("encodingType", "encoding_type"), _col("location", "location", "geojson"),
               _PROPS),
              (Nav("Things", "Things", True, assoc=thing_locations, assoc_from="location_id",
                   assoc_to="thing_id"),
               Nav("HistoricalLocations", "HistoricalLocations", True, assoc=historical_location_locations,
                   assoc_from="location_id", assoc_to="historical_location_id")),
              _dept_scope(Location, nullable=True)),
    EntitySet("HistoricalLocations", "HistoricalLocation", HistoricalLocation,
              (Prop("time", lambda o, r: ms_to_iso(o.time), "time", "time_ms"),),
              (Nav("Thing", "Things", False, fk_parent="thing_id"),
               Nav("Locations", "Locations", True, assoc=historical_location_locations,
                   assoc_from="historical_location_id", assoc_to="location_id")),
              _via(HistoricalLocation.thing_id, Thing)),
    EntitySet("Sensors", "Sensor", Sensor,
              (*_NAME_DESC, _col("encodingType", "encoding_type"), _col("metadata", "meta", "json"), _PROPS),
              (Nav("Datastreams", "Datastreams", True, fk_target="sensor_id"),
               Nav("MultiDatastreams", "MultiDatastreams", True, fk_target="sensor_id")),
              _dept_scope(Sensor, nullable=True)),
    EntitySet("ObservedProperties", "ObservedProperty", ObservedProperty,
              (_col("name", "name"), _col("definition", "definition"), _col("description", "description"),
               _PROPS),
              (Nav("Datastreams", "Datastreams", True, fk_target="observed_property_id"),
               Nav("MultiDatastreams", "MultiDatastreams", True, assoc=multi_datastream_properties,
                   assoc_from="observed_property_id", assoc_to="datastream_id")),
              lambda ids: literal(True)),
    EntitySet("Datastreams", "Datastream", Datastream,
              (*_NAME_DESC, _col("unitOfMeasurement", "unit_of_measurement", "json"), *_STREAM_TAIL),
              (*_STREAM_NAVS,
               Nav("ObservedProperty", "ObservedProperties", False, fk_parent="observed_property_id"),
               Nav("Observations", "Observations", True, fk_target="datastream_id")),
              _dept_scope(Datastream), kind="single"),
    EntitySet("MultiDatastreams", "MultiDatastream", Datastream,
              (*_NAME_DESC, _col("unitOfMeasurements", "unit_of_measurement", "json"),
               _col("multiObservationDataTypes", "multi_observation_types", "json"), *_STREAM_TAIL),
              (*_STREAM_NAVS,
               Nav("ObservedProperties", "ObservedProperties", True, assoc=multi_datastream_properties,
                   assoc_from="datastream_id", assoc_to="observed_property_id"),
               Nav("Observations", "Observations", True, fk_target="datastream_id")),
              _dept_scope(Datastream), kind="multi"),
    EntitySet("Observations", "Observation", Observation,
              (_span("phenomenonTime", "phenomenon_time", "phenomenon_time_end", _instant_or_interval),
               Prop("resultTime", lambda o, r: ms_to_iso(o.result_time), "result_time", "time_ms"),
               Prop("result", lambda o, r: result_value(o.result_number, o.result_json), "result_number",
                    "json"),
               _text_json("resultQuality", "result_quality"),
               _span("validTime", "valid_time_start", "valid_time_end", _period),
               _text_json("parameters", "parameters")),
              (Nav("Datastream", "Datastreams", False, fk_parent="datastream_id", when=_is_kind("single")),
               Nav("MultiDatastream", "MultiDatastreams", False, fk_parent="datastream_id",
                   when=_is_kind("multi")),
               Nav("FeatureOfInterest", "FeaturesOfInterest", False, fk_parent="feature_of_interest_id")),
              _via(Observation.datastream_id, Datastream)),
    EntitySet("FeaturesOfInterest", "FeatureOfInterest", FeatureOfInterest,
              (*_NAME_DESC, _col("encodingType", "encoding_type"), _col("feature", "feature", "geojson"),
               _PROPS),
              (Nav("Observations", "Observations", True, fk_target="feature_of_interest_id"),),
              lambda ids: or_(FeatureOfInterest.location_id.is_(None),
                              _via(FeatureOfInterest.location_id, Location, nullable=True)(ids))),
)}


# -- the reader -----------------------------------------------------------------------------------


@dataclass
class Reader:
    """One request's reading context: who reads, which departments, where links point."""

    session: Session
    actor: Actor
    base: str  # absolute URL of the service root, ".../sta/v1.1"
    readable: list[int] | None  # None: every department
    dialect: str
    _codes: dict[int, str] | None = None
    _kinds: dict[int, str] = field(default_factory=dict)

    def dept_code(self, dept_id: int | None) -> str | None:
        """The code of a department, shown in a Thing's properties."""
        if self._codes is None:
            self._codes = dict(self.session.execute(select(Department.id, Department.code)).all())
        return None if dept_id is None else self._codes.get(dept_id)

    def prefetch_kinds(self, ids: Sequence[int]) -> None:
        """Load the kind (single/multi) of these streams in one query."""
        missing = list({i for i in ids if i not in self._kinds})
        for i in range(0, len(missing), 1000):
            rows = self.session.execute(select(Datastream.id, Datastream.kind)
                                        .where(Datastream.id.in_(missing[i:i + 1000])))
            self._kinds.update(rows.all())

    def kind_of(self, ds_id: int) -> str | None:
        """single or multi, for an Observation's navigation link."""
        if ds_id not in self._kinds:
            self.prefetch_kinds([ds_id])
        return self._kinds.get(ds_id)

    def where(self, es: EntitySet) -> list[ColumnElement[bool]]:
        """The set's own condition and what this reader may see of it."""
        out = es.base_where()
        if self.readable is not None:
            out.append(es.scope(self.readable))
        return out

    def self_link(self, es: EntitySet, entity_id: int) -> str:
        """The absolute URL of one entity."""
        return f"{self.base}/{es.name}({entity_id})"


def link(source: EntitySet, nav: Nav, stmt: Select[Any], parent_ids: Any) -> tuple[Select[Any], Any]:
    """`stmt` (a select of the target) narrowed to rows linked to `parent_ids` (a list or a
    subquery), and the expression of the source id each row belongs to."""
    target = SETS[nav.target].model
    if nav.fk_target:
        key = getattr(target, nav.fk_target)
        return stmt.where(key.in_(parent_ids)), key
    if nav.fk_parent:
        parent = aliased(source.model)
        stmt = stmt.join(parent, getattr(parent, nav.fk_parent) == target.id)
        return stmt.where(parent.id.in_(parent_ids), *_kind_of(source, parent)), parent.id
    table = nav.assoc
    key = table.c[nav.assoc_from]
    stmt = stmt.join(table, table.c[nav.assoc_to] == target.id).where(key.in_(parent_ids))
    return stmt, key


def _kind_of(es: EntitySet, model: Any) -> list[ColumnElement[bool]]:
    return [model.kind == es.kind] if es.kind else []


# -- $filter and $orderby: property paths to SQL --------------------------------------------------


def json_path(expr: Any, keys: Sequence[str], dialect: str, text_column: bool = False) -> Any:
    """A member of a JSON value as SQL: native values on SQLite, text on PostgreSQL."""
    if dialect == "sqlite":
        return _sqlite_json(expr, "$" + "".join(f'."{k}"' for k in keys))
    src = cast(expr, JSON()) if text_column else expr
    return src.op("#>>")(cast(literal(list(keys), postgresql.ARRAY(Text())), postgresql.ARRAY(Text())))


def _sqlite_json(expr: Any, path: str) -> Any:
    """json_extract, but true/false as the text 'true'/'false', as PostgreSQL's ->> gives them:
    otherwise SQLite would take a boolean for the number 1 or 0 in a comparison."""
    kind = func.json_type(expr, path)
    return case((kind == "true", literal("true")), (kind == "false", literal("false")),
                else_=func.json_extract(expr, path))


def _geometry(expr: Any, dialect: str) -> Any:
    if dialect == "sqlite":
        return expr  # the SQLite functions read a geometry or a Feature alike
    doc = cast(expr, postgresql.JSONB())
    kind = doc.op("->>")(cast(literal("type"), Text()))
    return case((kind == "Feature", doc.op("->")(cast(literal("geometry"), Text()))), else_=doc)


def _result_field(model: Any, dialect: str) -> Field:
    if dialect == "sqlite":
        return Field(func.coalesce(model.result_number, _sqlite_json(model.result_json, "$")), "json")
    js = cast(model.result_json, JSON()).op("#>>")(cast(literal([], postgresql.ARRAY(Text())),
                                                         postgresql.ARRAY(Text())))
    return Field(func.coalesce(cast(model.result_number, Text()), js), "json")


def resolver(es: EntitySet, r: Reader, option: str = "$filter") -> Callable[[tuple[str, ...]], Field]:
    """The sta_query resolver of `es`: property paths, through to-one navigation, to SQL."""
    ordering = option == "$orderby"

    def resolve(parts: tuple[str, ...]) -> Field:
        return _resolve(es, es.model, parts, r, ordering, option, "/".join(parts))

    return resolve


def _resolve(es: EntitySet, model: Any, parts: tuple[str, ...], r: Reader, ordering: bool, option: str,
             whole: str) -> Field:
    head, rest = parts[0], parts[1:]
    if head == "id":
        if rest:
            raise StaQueryError(option, f"{whole}: id has no members / id 没有子属性")
        return Field(model.id, "number")
    prop = es.prop(head)
    if prop is not None:
        col = getattr(model, prop.attr)
        if prop.name == "result" and es.name == "Observations":
            if rest:
                return Field(json_path(model.result_json, rest, r.dialect, True), "json")
            return Field(col, "number") if ordering else _result_field(model, r.dialect)
        if es.name == "Things" and parts == ("properties", "department"):  # shown, not stored, there
            code = select(Department.code).where(Department.id == model.department_id)
            return Field(code.scalar_subquery(), "string")
        if rest and prop.kind != "json":
            raise StaQueryError(option, f"{whole}: {head} has no members / {head} 没有子属性")
        if prop.kind == "json":  # a member, or the whole value unquoted ("metadata eq 'https://...'")
            return Field(json_path(col, rest, r.dialect, prop.json_text), "json")
        if prop.kind == "geojson":
            return Field(_geometry(col, r.dialect), "geojson")
        return Field(col, prop.kind)
    nav = es.nav(head)
    if nav is None:
        known = ", ".join(["id", *(p.name for p in es.props), *(n.name for n in es.navs)])
        raise StaQueryError(option, f"{whole}: {es.singular} has no property {head} (known: {known}) "
                                    f"/ {es.singular} 没有属性 {head}")
    if nav.many or not rest:
        why = "a collection" if nav.many else "an entity; name one of its properties"
        raise StaQueryError(option, f"{whole}: {head} is {why} / {head} 不能直接用于条件或排序")
    target = SETS[nav.target]
    alias = aliased(target.model)
    inner = _resolve(target, alias, rest, r, ordering, option, whole)
    sub = select(inner.expr).where(alias.id == getattr(model, nav.fk_parent or "id"),
                                   *_kind_of(target, alias))
    return Field(sub.scalar_subquery(), inner.kind)


def apply_filter(es: EntitySet, stmt: Select[Any], opts: QueryOptions, r: Reader) -> Select[Any]:
    """`stmt` narrowed by `$filter`."""
    if opts.filter is None:
        return stmt
    return stmt.where(compile_filter(opts.filter, resolver(es, r), r.dialect))


def order_by(es: EntitySet, opts: QueryOptions, r: Reader) -> list[Any]:
    """The `$orderby` terms, then the id, so pages never overlap."""
    res = resolver(es, r, "$orderby")
    out = []
    for node, desc in opts.orderby:
        expr = compile_expr(node, res, r.dialect)
        out.append(expr.desc() if desc else expr.asc())
    out.append(es.model.id.asc())
    return out


# -- reading --------------------------------------------------------------------------------------


def top_of(opts: QueryOptions) -> int:
    """The page size: `$top`, or the default."""
    return DEFAULT_TOP if opts.top is None else opts.top


def page(es: EntitySet, stmt: Select[Any], opts: QueryOptions,
         r: Reader) -> tuple[list[Any], bool, int | None]:
    """One page of `stmt` under the options: the rows, whether more follow, and the count if asked."""
    stmt = apply_filter(es, stmt, opts, r)
    count = None
    if opts.count:
        count = r.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    top = top_of(opts)
    if top == 0:
        return [], False, count
    rows = list(r.session.scalars(stmt.order_by(*order_by(es, opts, r)).offset(opts.skip).limit(top + 1)))
    return rows[:top], len(rows) > top, count


def check_select(es: EntitySet, names: Sequence[str]) -> None:
    """Refuse `$select` names the set does not have."""
    known = {"id", "selfLink", *(p.name for p in es.props), *(n.name for n in es.navs)}
    for name in names:
        if name not in known:
            raise StaQueryError("$select", f"{es.singular} has no property {name} "
                                           f"/ {es.singular} 没有属性 {name}")


def entity_json(es: EntitySet, o: Any, r: Reader, select_: Sequence[str] = ()) -> dict[str, Any]:
    """An entity as STA JSON: id, selfLink, navigation links and properties (or those selected);
    an optional property without a value is left out unless selected."""
    sel = set(select_)
    self_link = r.self_link(es, o.id)
    out: dict[str, Any] = {}
    if not sel or "id" in sel:
        out["@iot.id"] = o.id
    if not sel or "id" in sel or "selfLink" in sel:
        out["@iot.selfLink"] = self_link
    for nav in es.navs:
        if (not sel or nav.name in sel) and (nav.when is None or nav.when(o, r)):
            out[f"{nav.name}@iot.navigationLink"] = f"{self_link}/{nav.name}"
    for p in es.props:
        if not sel or p.name in sel:
            value = p.get(o, r)
            # absent optional properties are left out, as FROST-Server does (and its client expects)
            if value is not None or p.name in sel or p.name == "result":
                out[p.name] = value
    return out


def _merged(items: Sequence[Expand], es: EntitySet) -> list[tuple[Nav, QueryOptions]]:
    """`$expand` items by first segment: "Datastreams/Sensor" is Datastreams($expand=Sensor)."""
    order: list[str] = []
    found: dict[str, QueryOptions] = {}
    for item in items:
        head, rest = item.path[0], item.path[1:]
        if es.nav(head) is None:
            raise StaQueryError("$expand", f"{es.singular} has no navigation property {head} "
                                           f"/ {es.singular} 没有导航属性 {head}")
        opts = found.get(head)
        if opts is None:
            order.append(head)
            opts = QueryOptions()
        if rest:
            opts = _with_expand(opts, (*opts.expand, Expand(rest, item.options)))
        else:  # the item's own options, keeping what "head/..." items added before it
            opts = _with_expand(item.options, (*opts.expand, *item.options.expand))
        found[head] = opts
    return [(es.nav(h), found[h]) for h in order]  # type: ignore[misc]


def _with_expand(opts: QueryOptions, expand: tuple[Expand, ...]) -> QueryOptions:
    return QueryOptions(opts.filter, opts.orderby, opts.select, expand, opts.top, opts.skip, opts.count,
                        opts.result_format)


def render_page(es: EntitySet, rows: Sequence[Any], opts: QueryOptions, r: Reader) -> list[dict[str, Any]]:
    """Rows as STA JSON with `$select` and (nested) `$expand` applied; one query per expanded
    navigation property for the whole page, not one per row."""
    check_select(es, opts.select)
    if es.name == "Observations":
        r.prefetch_kinds([o.datastream_id for o in rows])
    out = [entity_json(es, o, r, opts.select) for o in rows]
    for nav, sub in _merged(opts.expand, es):
        if rows:
            _expand(es, nav, rows, out, sub, r)
    return out


def options_query(opts: QueryOptions, skip: int, top: int) -> str:
    """The query string of a nested collection's next page (its own options, without $expand)."""
    params = {}
    if opts.filter is not None:
        params["$filter"] = to_text(opts.filter)
    if opts.orderby:
        params["$orderby"] = ",".join(to_text(n) + (" desc" if d else "") for n, d in opts.orderby)
    if opts.select:
        params["$select"] = ",".join(opts.select)
    params.update({"$top": str(top), "$skip": str(skip)})
    if opts.count:
        params["$count"] = "true"
    return urlencode(params)


def _expand(es: EntitySet, nav: Nav, rows: Sequence[Any], out: list[dict[str, Any]], opts: QueryOptions,
            r: Reader) -> None:
    target = SETS[nav.target]
    model = target.model
    ids = list({o.id for o in rows})
    stmt, key = link(es, nav, select(model), ids)
    stmt = apply_filter(target, stmt.where(*r.where(target)), opts, r)
    children: dict[int, list[Any]] = {}
    more: set[int] = set()
    counts: dict[int, int] = {}
    if nav.many:
        top = top_of(opts)
        orders = order_by(target, opts, r)
        if target.name == "Observations":
            # one indexed query per parent: a window over every reading of the parents' streams
            # would read millions of rows to keep a few
            got: Any = [(child, pk) for pk in ids for child in r.session.scalars(
                stmt.where(key == pk).order_by(*orders).offset(opts.skip).limit(top + 1))]
        else:
            rn = func.row_number().over(partition_by=key, order_by=orders).label("_rn")
            inner = stmt.add_columns(key.label("_pk"), rn).subquery()
            alias = aliased(model, inner)
            got = r.session.execute(select(alias, inner.c._pk).where(inner.c._rn > opts.skip,
                                                                       inner.c._rn <= opts.skip + top + 1)
                                    .order_by(inner.c._pk, inner.c._rn))
        for child, pk in got:
            kids = children.setdefault(pk, [])
            if len(kids) < top:
                kids.append(child)
            else:
                more.add(pk)
        if opts.count:
            counts = dict(r.session.execute(stmt.with_only_columns(key, func.count()).group_by(key)).all())
    else:
        for child, pk in r.session.execute(stmt.add_columns(key)):
            children.setdefault(pk, []).append(child)
    flat = [c for o in rows for c in children.get(o.id, [])]
    rendered = iter(render_page(target, flat, opts, r))
    for o, doc in zip(rows, out, strict=True):
        kids = [next(rendered) for _ in children.get(o.id, [])]
        if not nav.many:
            doc[nav.name] = kids[0] if kids else None
            continue
        doc[nav.name] = kids
        if opts.count:
            doc[f"{nav.name}@iot.count"] = counts.get(o.id, 0)
        if o.id in more:
            query = options_query(opts, opts.skip + top_of(opts), top_of(opts))
            doc[f"{nav.name}@iot.nextLink"] = f"{r.self_link(es, o.id)}/{nav.name}?{query}"
