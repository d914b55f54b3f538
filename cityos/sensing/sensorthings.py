"""OGC SensorThings API 1.1 at /sta/v1.1 (传感器物联网接口): Sensing core, MultiDatastream, Data Array.

This module maps URLs onto the entity sets of `sta_entities` (reading) and `sta_write` (writing):
resource paths of any depth (`Things(1)/Datastreams(2)/Observations`), a property and its raw
`$value`, `$ref`, the query options of `sta_query`, POST with deep insert and links, PATCH (JSON
merge, or JSON Patch with `application/json-patch+json`), PUT (taken as PATCH), DELETE,
`$resultFormat=dataArray` and `CreateObservations`.

Readings are never inserted here: a POSTed Observation is checked, handed to the process's ingest
writer, and answered after its COMMIT (409 when the stream already has a reading at that
phenomenonTime). Errors are RFC 9457 problem documents (bad input is 400, as in STA, naming the
field) that also carry `message`, which FROST clients print. Everything needs a signed-in caller:
HTTP Basic (a user, an API key as password, or a device key and secret), a bearer token or the
console cookie; anonymous requests get 401 with a Basic challenge.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cityos.core import access
from cityos.core.access import Actor, Target
from cityos.core.basic_auth import REALM, basic_credentials, basic_or_actor
from cityos.core.errors import CityOSError, Conflict, Invalid, NotFound, Unauthorized
from cityos.core.web import SessionDep, answer_errors_in, answering_errors_with, platform_of, standard_problem
from cityos.sensing import service, sta_query
from cityos.sensing import sta_write as write
from cityos.sensing.runtime import runtime_of
from cityos.sensing.sta_entities import (
    MAX_TOP,
    PREFIX,
    SETS,
    EntitySet,
    Nav,
    Reader,
    entity_json,
    link,
    page,
    render_page,
    top_of,
)
from cityos.sensing.sta_query import QueryOptions, StaQueryError

JSON = "application/json"
_C = "http://www.opengis.net/spec/iot_sensing/1.1/req/"
CONFORMANCE = [_C + c for c in ("datamodel", "resource-path/resource-path-to-entities", "request-data",
                                "create-update-delete", "multi-datastream", "data-array/data-array")]
DATA_ARRAY_DEFAULT = ("id", "phenomenonTime", "result", "resultTime")
# POST to `Parent(id)/Nav` creates the entity linked to the parent: the member of the new entity's
# body that names the parent, and whether it is a list.
INVERSE: dict[tuple[str, str], tuple[str, bool]] = {
    ("Things", "Locations"): ("Things", True), ("Things", "Datastreams"): ("Thing", False),
    ("Things", "MultiDatastreams"): ("Thing", False), ("Things", "HistoricalLocations"): ("Thing", False),
    ("Locations", "Things"): ("Locations", True), ("Locations", "HistoricalLocations"): ("Locations", True),
    ("Sensors", "Datastreams"): ("Sensor", False), ("Sensors", "MultiDatastreams"): ("Sensor", False),
    ("ObservedProperties", "Datastreams"): ("ObservedProperty", False),
    ("Datastreams", "Observations"): ("Datastream", False),
    ("MultiDatastreams", "Observations"): ("MultiDatastream", False),
    ("FeaturesOfInterest", "Observations"): ("FeatureOfInterest", False),
}


# -- errors and who is asking ---------------------------------------------------------------------


async def sta_error(request: Request, exc: CityOSError) -> Response:
    """A problem document (400 for bad input, as STA clients expect) with FROST's `message`."""
    return await standard_problem(request, exc, {"message": exc.detail}, REALM)


StaRoute = answering_errors_with(sta_error)
answer_errors_in("/sta/", sta_error)


router = APIRouter(prefix=PREFIX, tags=["SensorThings API"], route_class=StaRoute)


async def sta_actor(request: Request, session: SessionDep) -> Actor:
    """Who is asking: a device by HTTP Basic with its key ("dev_...") and secret, else whatever
    `basic_or_actor` reads; anonymous callers are refused with a Basic challenge."""
    creds = basic_credentials(request.headers.get("authorization", ""))
    if creds is not None and creds[0].startswith(service.DEVICE_PREFIX + "_"):
        actor = await run_in_threadpool(service.device_actor, session, *creds)
        if actor is None:
            raise Unauthorized("wrong device key or secret / 设备密钥或密码错误")
        request.state.actor = actor
    else:
        actor = await basic_or_actor(request, session)
    if not actor.authenticated:
        raise Unauthorized()
    return actor


StaActor = Annotated[Actor, Depends(sta_actor)]


def base_url(request: Request) -> str:
    """The absolute URL of the service root, for selfLinks and nextLinks."""
    return str(request.base_url).rstrip("/") + PREFIX


def reader(request: Request, session: Session, actor: Actor) -> Reader:
    """The request's reader; the SQLite geometry functions of `$filter` are made known on its
    connection (cheap, and idempotent)."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        sta_query.register_sqlite_functions(session.connection().connection.driver_connection)
    return Reader(session, actor, base_url(request), service.readable_departments(session, actor), dialect)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (orjson: readings carry many floats and times)."""
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON, headers=headers)


# -- resource paths -------------------------------------------------------------------------------

_SEGMENT = re.compile(r"([A-Za-z]+)(?:\(([^)]*)\))?")


@dataclass
class Addressed:
    """What a resource path names: a collection or one entity of a set, maybe one property."""

    es: EntitySet
    stmt: Any  # select of the addressed rows, narrowed to what the reader may see
    entity: Any = None  # the entity, when the path names one
    parent: tuple[EntitySet, Any, Nav] | None = None  # where the last navigation started
    prop: str | None = None
    value: bool = False
    ref: bool = False


def _key(es: EntitySet, raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdecimal() or len(raw) > 18:
        raise NotFound(es.singular, f"({raw})")
    return int(raw)


def _one(r: Reader, es: EntitySet, stmt: Any, what: str) -> Any:
    found = r.session.scalars(stmt.limit(1)).first()
    if found is None:
        raise NotFound(es.singular, what)
    return found


def address(path: str, r: Reader) -> Addressed:
    """Resolve `Set(id)/Nav(id)/.../prop/$value` step by step; 404 for anything unseen."""
    segments = path.strip("/").split("/")
    m = _SEGMENT.fullmatch(segments[0])
    es = SETS.get(m.group(1)) if m else None
    if m is None or es is None:
        raise NotFound("resource", f"/{segments[0]}")
    at = Addressed(es, select(es.model).where(*r.where(es)))
    key = _key(es, m.group(2))
    if key is not None:
        at.stmt = at.stmt.where(es.model.id == key)
        at.entity = _one(r, es, at.stmt, f"({key})")
    for i, seg in enumerate(segments[1:], start=2):
        last = i == len(segments)
        if seg == "$ref" and last and at.prop is None:
            at.ref = True
        elif seg == "$value" and last and at.prop is not None:
            at.value = True
        elif at.prop is not None or at.entity is None:
            where = "a property" if at.prop else "a collection; address one entity first, e.g. Things(1)/..."
            raise Invalid("path", f"{'/'.join(segments[:i - 1])} is {where} / 资源路径无效")
        elif (m := _SEGMENT.fullmatch(seg)) is None:
            raise NotFound("resource", seg)
        elif m.group(2) is None and at.es.prop(m.group(1)) is not None:
            at.prop = m.group(1)
        else:
            _navigate(at, m.group(1), m.group(2), r)
    return at


def _navigate(at: Addressed, name: str, raw_key: str | None, r: Reader) -> None:
    nav = at.es.nav(name)
    if nav is None:
        raise NotFound(f"{at.es.singular} property", name)
    target = SETS[nav.target]
    stmt, _ = link(at.es, nav, select(target.model), [at.entity.id])
    at.parent, at.es, at.stmt = (at.es, at.entity, nav), target, stmt.where(*r.where(target))
    key = _key(target, raw_key)
    if key is not None:
        if not nav.many:
            raise NotFound(target.singular, f"({key})")
        at.stmt = at.stmt.where(target.model.id == key)
    at.entity = _one(r, target, at.stmt, f"({key})" if key is not None else f"of {name}") \
        if key is not None or not nav.many else None


# -- reading --------------------------------------------------------------------------------------


_DIRECTION = re.compile(r"(?<=\s)(asc|desc)(?=\s*(?:[,;)]|$))", re.IGNORECASE)
_QUOTED = re.compile(r"('(?:[^']|'')*')")


def _lower_directions(text: str) -> str:
    """`ASC`/`DESC` as `asc`/`desc` outside string literals: FROST's Python client sends
    `$orderby=name ASC`, and FROST-Server reads the direction in any case."""
    parts = _QUOTED.split(text)
    return "".join(p if i % 2 else _DIRECTION.sub(lambda m: m.group(1).lower(), p)
                   for i, p in enumerate(parts))


def options(request: Request) -> QueryOptions:
    """The request's STA query options, parsed by `sta_query`."""
    params = dict(request.query_params)
    for key in ("$orderby", "$expand"):
        if key in params:
            params[key] = _lower_directions(params[key])
    return sta_query.parse_options(params, max_top=MAX_TOP)


def next_link(request: Request, opts: QueryOptions) -> str:
    """This request's URL for the page after this one."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("$top", "$skip")]
    kept += [("$top", str(top_of(opts))), ("$skip", str(opts.skip + top_of(opts)))]
    return f"{base_url(request)}/{request.path_params['path'].strip('/')}?{urlencode(kept)}"


def data_array(rows: list[Any], opts: QueryOptions, r: Reader) -> list[dict[str, Any]]:
    """Observations grouped by stream as `components` and rows of values (Data Array extension)."""
    es = SETS["Observations"]
    names = list(opts.select) or list(DATA_ARRAY_DEFAULT)
    getters: list[Callable[[Any], Any]] = []
    for name in names:
        prop = es.prop(name)
        if name == "id":
            getters.append(lambda o: o.id)
        elif name == "FeatureOfInterest":
            getters.append(lambda o: o.feature_of_interest_id)
        elif prop is not None:
            getters.append(lambda o, p=prop: p.get(o, r))
        else:
            raise StaQueryError("$select", f"{name} is not an Observation property / 不是观测属性")
    components = ["FeatureOfInterest/id" if n == "FeatureOfInterest" else n for n in names]
    r.prefetch_kinds([o.datastream_id for o in rows])
    groups: dict[int, dict[str, Any]] = {}
    for o in rows:
        group = groups.get(o.datastream_id)
        if group is None:
            multi = r.kind_of(o.datastream_id) == "multi"
            nav = "MultiDatastream" if multi else "Datastream"
            group = groups[o.datastream_id] = {
                f"{nav}@iot.navigationLink": f"{r.base}/{nav}s({o.datastream_id})",
                "components": components, "dataArray": []}
        group["dataArray"].append([get(o) for get in getters])
    for group in groups.values():
        group["dataArray@iot.count"] = len(group["dataArray"])
    return list(groups.values())


def read(request: Request, session: Session, actor: Actor, path: str) -> Response:
    """GET of any resource path."""
    if access.reach_of(actor, "sensing.read") is None:
        access.require(actor, "sensing.read", Target("sensing"), session)
    r = reader(request, session, actor)
    at = address(path, r)
    opts = options(request)
    if at.prop is not None:
        value = at.es.prop(at.prop).get(at.entity, r)  # type: ignore[union-attr]
        if not at.value:
            return json_response({at.prop: value})
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        return Response(text, media_type="text/plain; charset=utf-8")
    if at.entity is not None:
        if at.ref:
            return json_response({"@iot.selfLink": r.self_link(at.es, at.entity.id)})
        return json_response(render_page(at.es, [at.entity], opts, r)[0])
    if opts.result_format == "dataArray" and at.es.name != "Observations":
        raise StaQueryError("$resultFormat", "dataArray is for Observations only / dataArray 仅用于观测")
    rows, more, count = page(at.es, at.stmt, opts, r)
    doc: dict[str, Any] = {}
    if count is not None:
        doc["@iot.count"] = count
    if at.ref:
        doc["value"] = [{"@iot.selfLink": r.self_link(at.es, o.id)} for o in rows]
    elif opts.result_format == "dataArray":
        doc["value"] = data_array(rows, opts, r)
    else:
        doc["value"] = render_page(at.es, rows, opts, r)
    if more:
        doc["@iot.nextLink"] = next_link(request, opts)
    session.commit()
    return json_response(doc)


# -- writing --------------------------------------------------------------------------------------


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Invalid("body", "the body is not valid JSON / 请求体不是有效的 JSON") from None


def _context(request: Request, session: Session, actor: Actor) -> write.Ctx:
    return write.Ctx(session, actor, reader(request, session, actor), runtime_of(platform_of(request)).writer)


def _created(r: Reader, es: EntitySet, entity_id: int) -> Response:
    entity = r.session.get(es.model, entity_id)
    link_ = r.self_link(es, entity_id)
    return json_response(entity_json(es, entity, r), 201, {"Location": link_})


def _inject_parent(at: Addressed, body: dict[str, Any]) -> None:
    """A POST to `Parent(id)/Nav` names the parent in the new entity's body."""
    if at.parent is None:
        return
    source, parent, nav = at.parent
    member = INVERSE.get((source.name, nav.name))
    if member is None:
        raise Invalid("path", f"create {nav.name} at /{nav.target} and link them there "
                              f"/ 请在 /{nav.target} 创建并关联")
    key, many = member
    ref = {"@iot.id": parent.id}
    if many and not isinstance(body.get(key) or [], list):
        raise Invalid(key, "must be an array / 应为数组")
    body[key] = [*(body.get(key) or []), ref] if many else ref


def _create(request: Request, session: Session, actor: Actor, path: str,
            body: Any) -> tuple[write.Ctx, Addressed, Any]:
    ctx = _context(request, session, actor)
    # The parent of `Parent(id)/Nav` becomes a link in the body, which the write checks like any
    # other link; a device reads nothing, yet may post to its own stream's Observations.
    device = service.device_key_of(actor) is not None
    at = address(path, dataclasses.replace(ctx.reader, readable=None) if device else ctx.reader)
    if at.entity is not None or at.prop is not None or at.ref:
        raise Invalid("path", "POST to a collection, e.g. /Things / 请向集合发送 POST")
    body = write.obj(body, "")
    _inject_parent(at, body)
    if at.es.name == "Observations":
        row = write.observation_row(ctx, body, "")
        session.commit()
        return ctx, at, row
    made = write.CREATE[at.es.name](ctx, body, "")
    session.commit()
    ctx.after_commit()
    return ctx, at, made.id


@router.get("", summary="Service root: entity sets and conformance classes")
def root(request: Request, actor: StaActor) -> Response:
    """The service root: the entity sets and the conformance classes."""
    base = base_url(request)
    return json_response({"value": [{"name": name, "url": f"{base}/{name}"} for name in SETS],
                          "serverSettings": {"conformance": CONFORMANCE}})


@router.get("/", include_in_schema=False)
def root_slash(request: Request, actor: StaActor) -> Response:
    """The service root, with a trailing slash."""
    return root(request, actor)


@router.post("/CreateObservations", summary="Create many Observations (Data Array extension)")
async def create_observations(request: Request, session: SessionDep, actor: StaActor) -> Response:
    """Data Array `CreateObservations`: 201 with a selfLink, or "error", per reading."""
    body = await _body(request)
    ctx = await run_in_threadpool(_context, request, session, actor)

    def prepare() -> list[Any]:
        rows = write.data_array_rows(ctx, body)
        session.commit()
        return rows

    rows = await run_in_threadpool(prepare)
    written = await ctx.writer.write([row for row in rows if row is not None])
    id_of = {(row[0], row[1]): i for row, i in zip(written.new, written.ids, strict=True)}
    links = []
    for row in rows:
        obs_id = id_of.pop((row[0], row[1]), None) if row is not None else None
        links.append("error" if obs_id is None else ctx.reader.self_link(SETS["Observations"], obs_id))
    return json_response(links, 201)


@router.get("/{path:path}", summary="Read any resource path with the STA query options")
def get_resource(path: str, request: Request, session: SessionDep, actor: StaActor) -> Response:
    """GET any resource path with the STA query options."""
    return read(request, session, actor, path)


@router.post("/{path:path}", summary="Create an entity (deep insert, links by @iot.id)", status_code=201)
async def post_resource(path: str, request: Request, session: SessionDep, actor: StaActor) -> Response:
    """POST an entity to a collection (deep insert; links by @iot.id); readings via ingest."""
    body = await _body(request)
    ctx, at, made = await run_in_threadpool(_create, request, session, actor, path, body)
    if at.es.name != "Observations":
        if ctx.rows:  # readings of a deep insert go the way every reading goes
            await ctx.writer.write(ctx.rows)
        return await run_in_threadpool(_created, ctx.reader, at.es, made)
    written = await ctx.writer.write([made])
    if not written.new:
        info = ctx.writer.streams.get(made[0])
        stream = "MultiDatastream" if info is not None and info.kind == "multi" else "Datastream"
        raise Conflict(f"{stream}({made[0]}) already has an Observation at this phenomenonTime "
                       "/ 该数据流在此时间已有观测", "phenomenonTime")
    return await run_in_threadpool(_created, ctx.reader, at.es, written.ids[0])


def _json_patch(doc: dict[str, Any], ops: Any) -> dict[str, Any]:
    """Apply RFC 6902 add/replace/remove/test to a copy of `doc`; return the changed members."""
    if not isinstance(ops, list):
        raise Invalid("body", "a JSON Patch is an array of operations / JSON Patch 应为操作数组")
    new = copy.deepcopy(doc)
    for i, raw in enumerate(ops):
        op = write.obj(raw, f"[{i}]")
        path = op.get("path")
        if not isinstance(path, str) or not path.startswith("/") or path == "/":
            raise Invalid(f"[{i}].path", "a JSON Pointer to a member, e.g. /name / 应为 JSON 指针")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
        holder: Any = new
        for part in parts[:-1]:
            holder = holder.get(part) if isinstance(holder, dict) else None
            if not isinstance(holder, dict):
                raise Invalid(f"[{i}].path", f"{path} does not exist / 路径不存在")
        kind, last = op.get("op"), parts[-1]
        if kind in ("add", "replace"):
            holder[last] = op.get("value")
        elif kind == "remove":
            holder.pop(last, None)
        elif kind == "test":
            if holder.get(last) != op.get("value"):
                raise Conflict(f"test failed at {path} / 测试操作失败", f"[{i}]")
        else:
            raise Invalid(f"[{i}].op", "one of add, replace, remove, test / 不支持的操作")
    changed = {k: v for k, v in new.items() if doc.get(k) != v}
    changed.update({k: None for k in doc if k not in new})
    return changed


def _change(request: Request, session: Session, actor: Actor, path: str, body: Any,
            remove: bool = False) -> Response:
    ctx = _context(request, session, actor)
    at = address(path, ctx.reader)
    if at.entity is None or at.prop is not None or at.ref:
        raise Invalid("path", "address one entity, e.g. /Things(1) / 请指定一个实体")
    if remove:
        write.remove(ctx, at.es.name, at.entity)
    else:
        if "json-patch" in request.headers.get("content-type", ""):
            current = {k: v for k, v in entity_json(at.es, at.entity, ctx.reader).items() if "@iot." not in k}
            body = _json_patch(current, body)
        write.patch(ctx, at.es.name, at.entity, write.obj(body, ""))
    session.commit()
    ctx.after_commit()
    if remove:
        return Response(status_code=200)
    session.refresh(at.entity)
    return json_response(entity_json(at.es, at.entity, ctx.reader))


@router.patch("/{path:path}", summary="Change an entity (JSON merge or JSON Patch)")
async def patch_resource(path: str, request: Request, session: SessionDep, actor: StaActor) -> Response:
    """PATCH one entity (JSON merge, or JSON Patch by content type)."""
    body = await _body(request)
    return await run_in_threadpool(_change, request, session, actor, path, body)


@router.put("/{path:path}", summary="Change an entity (taken as PATCH)")
async def put_resource(path: str, request: Request, session: SessionDep, actor: StaActor) -> Response:
    """PUT one entity, taken as PATCH (the read-only members of a read entity are ignored)."""
    body = await _body(request)
    if isinstance(body, dict):  # a client's full entity: its read-only members are not changes
        body = {k: v for k, v in body.items() if "@iot." not in k}
    return await run_in_threadpool(_change, request, session, actor, path, body)


@router.delete("/{path:path}", summary="Delete an entity (Datastreams with their readings)")
async def delete_resource(path: str, request: Request, session: SessionDep, actor: StaActor) -> Response:
    """DELETE one entity (a Thing or stream with its readings and rollups)."""
    return await run_in_threadpool(_change, request, session, actor, path, None, True)
