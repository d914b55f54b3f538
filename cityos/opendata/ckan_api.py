"""CKAN Action API (CKAN 接口) at /api/3/action/ and /api/action/: the read actions open-data
clients call, answered in CKAN's envelope so that `ckanapi` and CKAN harvesters work unchanged.

Each action is a function `noun_verb(call) -> result` named as in CKAN, whose docstring is
its `help_show`. Errors keep CKAN's shapes (not problem documents): clients switch on
`error.__type`. Everything is public except the rows of conditional datasets (有条件开放),
which need the key issued for them (`Authorization` or `X-CKAN-API-Key` header).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload
from starlette.concurrency import run_in_threadpool

from cityos.core import access, auth, db, ratelimit
from cityos.core.access import ANONYMOUS, Actor
from cityos.core.errors import CityOSError, Forbidden, Invalid, NotFound, Unauthorized
from cityos.core.models import Department
from cityos.core.web import SessionDep, answer_errors_in, get_actor
from cityos.opendata import ckan_query, rows, search, service, snapshot, sql
from cityos.opendata.applications import KEY_TAG, USAGE
from cityos.opendata.ckan_query import as_bool, as_int, as_list, as_str
from cityos.opendata.models import Dataset, Topic
from cityos.opendata.search import Filter

log = logging.getLogger("cityos.opendata.ckan")
router = APIRouter(tags=["open data: CKAN API"])

CKAN_VERSION = "2.10.4"  # the CKAN API level we answer as
SITE_TITLE = "公共数据开放平台 / Open Data Portal"
SITE_DESCRIPTION = "城市公共数据开放（CKAN 兼容接口） / The city's open data (CKAN-compatible API)"
EXTENSIONS = ["datastore", "dcat", "cityos_opendata"]
LIST_MAX = 1000  # CKAN's ckan.group_and_organization_list_max
GROUP_DATASETS = 1000  # packages shown by organization_show/group_show with include_datasets
SQL_TIMEOUT_MS = 5000
JSON = "application/json;charset=utf-8"


@dataclass
class Call:
    """One action call: the request's data dict, who is asking, and where the API lives."""

    session: Session
    data: dict[str, Any]
    actor: Actor
    key: str | None  # an open-data key (odk_...) for conditional datasets
    base_url: str
    path: str


ACTIONS: dict[str, Callable[[Call], Any]] = {}


def _action(fn: Callable[[Call], Any]) -> Callable[[Call], Any]:
    ACTIONS[fn.__name__] = fn
    return fn


# -- the route ------------------------------------------------------------------------------------


@router.api_route("/api/3/action/{name}", methods=["GET", "POST"],
                  summary="CKAN Action API (package_search, datastore_search, ...)")
@router.api_route("/api/action/{name}", methods=["GET", "POST"], include_in_schema=False)
async def ckan_action(name: str, request: Request, session: SessionDep) -> Response:
    """Run one CKAN action: GET parameters or a POSTed JSON/form data dict in, CKAN's
    `{help, success, result | error}` out."""
    base = str(request.base_url).rstrip("/")
    body: dict[str, Any] = {"help": f"{base}/api/3/action/help_show?name={name}"}
    if name not in ACTIONS:
        return _answer(400, {**body, "success": False, "error": {
            "__type": "Bad Request", "message": f"Bad request - Action name not known: {name} / 未知接口"}})
    try:
        raw = await request.body()
        ctype = request.headers.get("content-type", "")
        form = await request.form() if request.method == "POST" and "form" in ctype else None
        data = ckan_query.request_data(request.method, request.query_params.multi_items(), ctype, raw,
                                       form)
        data.pop("callback", None)  # JSONP is not offered (it would defeat the CSP)
        actor, key = await _caller(request, session)
        call = Call(session, data, actor, key, base, request.url.path)
        result = await run_in_threadpool(ACTIONS[name], call)
    except Exception as exc:  # every failure becomes CKAN's error shape, never a problem document
        status, error = _error(exc)
        return _answer(status, {**body, "success": False, "error": error})
    return _answer(200, {**body, "success": True, "result": result})


@router.get("/api/3", include_in_schema=False)
def ckan_api_version() -> Response:
    return _answer(200, {"version": 3})


def _answer(status: int, body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), status_code=status, media_type=JSON)


def _refused(request: Request, status: int, kind: str, message: str) -> Response:
    """A request refused before it reached an action, in CKAN's error shape."""
    base = str(request.base_url).rstrip("/")
    return _answer(status, {"help": f"{base}/api/3/action/help_show", "success": False,
                            "error": {"__type": kind, "message": message}})


def _too_many(request: Request, detail: str) -> Response:
    """A 429 from the rate limiter."""
    return _refused(request, 429, "Too Many Requests", detail)


async def _bad_url(request: Request, exc: CityOSError) -> Response:
    """A URL refused before routing (a NUL character in it)."""
    return _refused(request, 400, "Bad Request", f"Bad request - {exc.detail}")


for _prefix in ("/api/3/action/", "/api/action/"):
    ratelimit.answer_in(_prefix, _too_many)
    answer_errors_in(_prefix, _bad_url)


def _error(exc: Exception) -> tuple[int, dict[str, Any]]:
    """CKAN's status and error dict for an exception (the mapping of ckan/views/api.py)."""
    if isinstance(exc, NotFound):
        return 404, {"__type": "Not Found Error", "message": f"Not found: {exc.detail}"}
    if isinstance(exc, Forbidden | Unauthorized):
        return 403, {"__type": "Authorization Error", "message": f"Access denied: {exc.detail}"}
    if isinstance(exc, ckan_query.SearchError):
        return 409, {"__type": "Search Error", "message": f"Search error: {exc}"}
    if isinstance(exc, ckan_query.SearchQueryError):
        return 400, {"__type": "Search Query Error", "message": f"Search Query is invalid: {exc}"}
    if isinstance(exc, ckan_query.BadRequest):
        return 400, {"__type": "Bad Request", "message": f"Bad request - {exc}"}
    if isinstance(exc, CityOSError) and (exc.errors or exc.status in (409, 422)):
        fields: dict[str, Any] = {}
        for e in exc.errors:
            fields.setdefault(e.field, []).append(e.reason)
        return 409, {"__type": "Validation Error", "message": exc.detail, **fields}
    if isinstance(exc, CityOSError):
        return exc.status, {"__type": exc.title, "message": exc.detail}
    if db.is_timeout(exc):  # the request's statement_timeout
        return 503, {"__type": "Service Unavailable", "message": "the query took too long / 查询超时"}
    log.exception("CKAN action failed")
    return 500, {"__type": "Internal Server Error", "message": "Internal Server Error / 服务器错误"}


def _credentials(request: Request) -> list[str]:
    """What CKAN clients send as the API key: raw in `Authorization` (ckanapi), as a Bearer
    token, or in `X-CKAN-API-Key`."""
    out = []
    for header in ("authorization", "x-ckan-api-key"):
        raw = request.headers.get(header, "").strip()
        out.append(raw[7:].strip() if raw[:7].lower() == "bearer " else raw)
    return out


async def _caller(request: Request, session: Session) -> tuple[Actor, str | None]:
    """Who is asking, and the open-data key they hold. An odk_ key in `Authorization` is ours
    alone: the core would take "Bearer odk_..." for a bad token, so it is not consulted then."""
    creds = _credentials(request)
    key = next((c for c in creds if c.startswith(KEY_TAG + "_")), None)
    if creds[0].startswith(KEY_TAG + "_"):
        return ANONYMOUS, key
    try:
        actor = await get_actor(request, session)
    except access.Denied:  # a console cookie without a CSRF token: these reads have no side effects
        actor = ANONYMOUS
    if not actor.authenticated:
        # ckanapi sends a CityOS API key raw, as CKAN keys are sent; the core reads only Bearer.
        staff_key = next((c for c in creds if c.startswith(auth.API_KEY_PREFIX + "_")), None)
        if staff_key:
            found = await run_in_threadpool(auth.apikey_actor, session, staff_key)
            if found is None:
                raise Unauthorized("invalid, expired or revoked API key / API 密钥无效、过期或已吊销")
            actor = found
    return actor, key


# -- datasets -------------------------------------------------------------------------------------


def _load(session: Session, ids: list[int]) -> list[Dataset]:
    """Datasets by id in the given order, with what package_dict reads, in one query."""
    if not ids:
        return []
    found = {d.id: d for d in session.scalars(
        select(Dataset).where(Dataset.id.in_(ids))
        .options(joinedload(Dataset.department), joinedload(Dataset.resource)))}
    return [found[i] for i in ids if i in found]


@_action
def package_list(call: Call) -> list[str]:
    """Names of all published datasets, by name (`limit`, `offset`)."""
    limit = as_int(call.data, "limit", 1 << 30, cap=1 << 30)  # bounded: larger ones overflow SQL
    offset = as_int(call.data, "offset", 0, maximum=ckan_query.MAX_START)
    stmt = (select(Dataset.name).where(Dataset.state == "published").order_by(Dataset.name)
            .offset(offset).limit(limit))
    return list(call.session.scalars(stmt))


@_action
def package_search(call: Call) -> dict[str, Any]:
    """Search datasets: `q` (text; `field:value` terms act as filters; `*:*` is all), `fq`
    (Solr-style filters on organization, groups, tags, res_format, update_cycle, open_level,
    license_id, name, id), `rows` (≤ 1000), `start`, `sort`, `facet.field`, `facet.limit`."""
    pq = ckan_query.package_query(call.data)
    found = search.search(call.session, q=pq.q, filters=pq.filters, sort=pq.sort, rows=pq.rows,
                          start=pq.start, facet_fields=pq.facet_fields, facet_limit=pq.facet_limit)
    topics = service.topic_map(call.session)
    results = [service.package_dict(d, topics, call.base_url) for d in _load(call.session, found.ids)]
    return {"count": found.count, "sort": pq.sort_text, "results": results, "facets": found.facets,
            "search_facets": _search_facets(call.session, found.facets, topics)}


def _search_facets(session: Session, facets: dict[str, dict[str, int]], topics: dict[str, Topic]
                   ) -> dict[str, Any]:
    """CKAN's `search_facets`: each value with its display name, by count."""
    names: dict[str, str] = {}
    if facets.get("organization"):
        rows_ = session.execute(select(Department.code, Department.name)
                                .where(Department.code.in_(list(facets["organization"]))))
        names = {code: name for code, name in rows_}
    label: dict[str, Callable[[str], str]] = {
        "organization": lambda v: names.get(v, v),
        "groups": lambda v: topics[v].title if v in topics else v,
        "license_id": lambda v: service.LICENCES[v][0] if v in service.LICENCES else v,
        "open_level": lambda v: service.OPEN_LEVELS[v][0] if v in service.OPEN_LEVELS else v,
    }
    out = {}
    for field, counts in facets.items():
        show = label.get(field, lambda v: v)
        items = [{"name": v, "display_name": show(v), "count": n}
                 for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        out[field] = {"title": field, "items": items}
    return out


@_action
def package_show(call: Call) -> dict[str, Any]:
    """One published dataset by name or id (`id`)."""
    ds = service.published(call.session, _required(call, "id"))
    USAGE.add(ds.id, "api_calls")
    return service.package_dict(ds, service.topic_map(call.session), call.base_url)


@_action
def current_package_list_with_resources(call: Call) -> list[dict[str, Any]]:
    """Published datasets with their resources, most recently modified first (`limit`, `offset`)."""
    found = search.search(call.session, sort=[("metadata_modified", True)],
                          rows=as_int(call.data, "limit", ckan_query.ROWS_DEFAULT, cap=ckan_query.ROWS_MAX),
                          start=as_int(call.data, "offset", 0, maximum=ckan_query.MAX_START))
    topics = service.topic_map(call.session)
    return [service.package_dict(d, topics, call.base_url) for d in _load(call.session, found.ids)]


@_action
def resource_show(call: Call) -> dict[str, Any]:
    """One resource (`id`): a dataset's DataStore table (its name) or a download (`<name>.<format>`)."""
    rid = _required(call, "id")
    ds = service.published(call.session, rid.split(".", 1)[0])
    for res in service.resources_of(ds, call.base_url):
        if res["id"] == rid:
            return res
    raise NotFound("resource", rid)


def _required(call: Call, name: str) -> str:
    value = as_str(call.data, name, required=True)
    assert value is not None
    return value


# -- organizations (departments), groups (topics), tags ----------------------------------------


def _facet_counts(session: Session, field: str) -> dict[str, int]:
    return search.search(session, rows=0, facet_fields=[field], facet_limit=1 << 30).facets[field]


def _listing(call: Call, entries: list[tuple[str, str, int]], as_dict: Callable[[str], dict[str, Any]],
             names_key: str) -> list[Any]:
    """organization_list and group_list: filter (`q`, names), `sort`, page, names or dicts."""
    data = call.data
    q = (as_str(data, "q") or "").lower()
    wanted = as_list(data, names_key)
    rows_ = [e for e in entries if (not q or q in e[0].lower() or q in e[1].lower())
             and (wanted is None or e[0] in wanted)]
    sort = (as_str(data, "sort") or "title asc").split()
    keys = {"name": 0, "title": 1, "package_count": 2, "packages": 2}
    direction = sort[1] if len(sort) == 2 else "asc"
    if not sort or sort[0] not in keys or len(sort) > 2 or direction not in ("asc", "desc"):
        raise Invalid("sort", f"Cannot sort by {' '.join(sort)!r}: use name, title or package_count "
                              "[asc|desc] / 排序参数无效")
    rows_.sort(key=lambda e: (e[keys[sort[0]]], e[0]), reverse=direction == "desc")
    offset = as_int(data, "offset", 0)
    rows_ = rows_[offset:offset + as_int(data, "limit", LIST_MAX, cap=LIST_MAX)]
    if as_bool(data, "all_fields", False):
        return [as_dict(e[0]) for e in rows_]
    return [e[0] for e in rows_]


@_action
def organization_list(call: Call) -> list[Any]:
    """Departments that publish data (`all_fields`, `sort`, `limit`, `offset`, `q`, `organizations`)."""
    orgs = {d.code: (d, n) for d, n in service.organizations(call.session)}
    entries = [(code, d.name, n) for code, (d, n) in orgs.items()]
    return _listing(call, entries, lambda code: service.org_dict(*orgs[code]), "organizations")


@_action
def organization_show(call: Call) -> dict[str, Any]:
    """A department (`id`), with its dataset count and, with `include_datasets`, its datasets."""
    code = _required(call, "id")
    dept = call.session.scalar(select(Department).where(Department.code == code))
    if dept is None:
        raise NotFound("organization", code)
    return _group_show(call, service.org_dict(dept), Filter("organization", (code,)))


@_action
def group_list(call: Call) -> list[Any]:
    """Topics (主题) (`all_fields`, `sort`, `limit`, `offset`, `q`, `groups`)."""
    counts = _facet_counts(call.session, "groups")
    topics = service.topic_map(call.session)
    entries = [(t.name, t.title, counts.get(t.name, 0)) for t in topics.values()]
    return _listing(call, entries, lambda name: service.group_dict(topics[name], counts.get(name, 0)),
                    "groups")


@_action
def group_show(call: Call) -> dict[str, Any]:
    """A topic (`id`), with its dataset count and, with `include_datasets`, its datasets."""
    topic = service.topic_by_name(call.session, _required(call, "id"))
    return _group_show(call, service.group_dict(topic), Filter("groups", (topic.name,)))


def _group_show(call: Call, out: dict[str, Any], where: Filter) -> dict[str, Any]:
    datasets = as_bool(call.data, "include_datasets", False)
    found = search.search(call.session, filters=[where], rows=GROUP_DATASETS if datasets else 0,
                          sort=[("metadata_modified", True)])
    if as_bool(call.data, "include_dataset_count", True):
        out["package_count"] = found.count
    if datasets:
        topics = service.topic_map(call.session)
        out["packages"] = [service.package_dict(d, topics, call.base_url)
                           for d in _load(call.session, found.ids)]
    return out


@_action
def tag_list(call: Call) -> list[Any]:
    """Tags of published datasets (`query`: part of the tag; `all_fields`)."""
    query = (as_str(call.data, "query") or as_str(call.data, "q") or "").lower()
    names = sorted(t for t in _facet_counts(call.session, "tags") if query in t.lower())
    if as_bool(call.data, "all_fields", False):
        return [{"id": t, "name": t, "display_name": t, "vocabulary_id": None} for t in names]
    return names


# -- the DataStore --------------------------------------------------------------------------------


def _readable(call: Call, resource_id: str) -> Dataset:
    """The dataset behind a DataStore resource id, if the caller may read its rows."""
    if "." in resource_id:  # a download, not a DataStore table
        raise NotFound("resource", f"{resource_id} (not in the DataStore / 不支持数据查询)")
    ds = service.published(call.session, resource_id)
    rows.require_read(call.session, ds, call.actor, call.key)
    return ds


@_action
def datastore_search(call: Call) -> dict[str, Any]:
    """Rows of a dataset (`resource_id`; `filters` {field: value | [values]}, `q`, `fields`,
    `sort`, `limit` ≤ 32000, `offset`, `include_total`, `distinct`; records as objects)."""
    rid = as_str(call.data, "resource_id") or as_str(call.data, "id")
    if rid is None:
        raise Invalid("resource_id", "Missing value / 缺少参数")
    ds = _readable(call, rid)
    params = ckan_query.datastore_query(call.data, rows.DEFAULT_LIMIT, rows.MAX_LIMIT)
    result = rows.search(call.session, ds, **params)
    USAGE.add(ds.id, "api_calls")
    link = {k: v if isinstance(v, str) else orjson.dumps(v).decode()
            for k, v in call.data.items() if k not in ("offset", "id") and v is not None}
    link["resource_id"] = rid
    after = {**link, "offset": result["offset"] + result["limit"]}
    result["_links"] = {"start": f"{call.path}?{urlencode(link)}", "next": f"{call.path}?{urlencode(after)}"}
    return result


@_action
def datastore_search_sql(call: Call) -> dict[str, Any]:
    """A read-only SELECT over published rows (`sql`), tables named by resource id, e.g.
    SELECT district, avg(aqi) FROM "air-quality-daily" GROUP BY district. The statement is
    parsed, checked against an allow-list and rewritten; it never runs as sent."""
    text = as_str(call.data, "sql", required=True, max_len=sql.MAX_SQL_CHARS)
    assert text is not None
    used: dict[str, Dataset] = {}

    def resolve(name: str) -> sql.TableInfo | None:
        ds = call.session.scalar(select(Dataset).where(Dataset.name == name, Dataset.state == "published")
                                 .options(selectinload(Dataset.department)))
        if ds is None:
            return None
        rows.require_read(call.session, ds, call.actor, call.key)
        used[name] = ds
        return sql.TableInfo(snapshot.table_name(ds.id), frozenset({"_id", *(f["id"] for f in ds.fields)}))

    dialect = call.session.get_bind().dialect.name
    compiled = sql.compile_sql(text, resolve, dialect, max_rows=rows.MAX_LIMIT + 1)
    fields, records = sql.run_sql(call.session.connection(), compiled, timeout_ms=SQL_TIMEOUT_MS)
    for ds in used.values():
        USAGE.add(ds.id, "api_calls")
    result: dict[str, Any] = {"sql": text, "fields": fields, "records": records[:rows.MAX_LIMIT]}
    if len(records) > rows.MAX_LIMIT:
        result["records_truncated"] = True
    return result


# -- the site -------------------------------------------------------------------------------------


@_action
def status_show(call: Call) -> dict[str, Any]:
    """What this site is: title, address, the CKAN API level answered and the extensions."""
    return {"site_title": SITE_TITLE, "site_description": SITE_DESCRIPTION, "site_url": call.base_url,
            "ckan_version": CKAN_VERSION, "error_emails_to": None, "locale_default": "zh_CN",
            "extensions": EXTENSIONS}


@_action
def site_read(call: Call) -> bool:
    """Whether the site can be read (always, as in CKAN)."""
    return True


@_action
def help_show(call: Call) -> str:
    """The documentation of an action (`name`)."""
    name = _required(call, "name")
    if name not in ACTIONS:
        raise NotFound("action", name)
    return " ".join((ACTIONS[name].__doc__ or "").split())
