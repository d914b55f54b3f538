"""Open data portal (公共数据开放门户) at /data, for the public, no sign-in needed: search with
facets, topics (主题) and departments, a dataset's page (metadata, preview, chart, map,
downloads), its API docs, and applications for conditional data (有条件开放申请).

Thin over `opendata.service`, `search`, `rows`, `applications` and `downloads`. Pages work
without JavaScript; the chart (ECharts) and the map (Leaflet, no tile server: points on a
blank background with a scale) are drawn by /static/opendata/*.js from small JSON feeds.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from sqlalchemy import desc, distinct, func, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from cityos.core import access
from cityos.core.access import Actor
from cityos.core.errors import CityOSError, Forbidden, Invalid, NotFound
from cityos.core.models import Department
from cityos.core.pages_base import Pager, field_errors, page_number, redirect, render, to_login
from cityos.core.web import SESSION_COOKIE, ActorDep, SessionDep, language, platform_of
from cityos.opendata import applications, downloads, rows, search, service
from cityos.opendata.apidocs import api_docs
from cityos.opendata.models import Dataset

TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGE = 20
FACETS = ("organization", "groups", "tags", "res_format", "update_cycle", "open_level")
SORTS: dict[str, tuple[tuple[str, bool], ...]] = {
    "relevance": (("score", True),), "newest": (("metadata_modified", True),),
    "views": (("views_total", True),), "name": (("name", False),),
}
X_KINDS = ("string", "date", "boolean", "integer")  # what a chart can group by
Y_KINDS = ("integer", "number")  # what it can measure
AGGS = ("avg", "sum", "min", "max")
COUNT = "_count"
MAX_BARS = 30
MAP_POINTS = 1000
FormStr = Annotated[str, Form()]
NO_STORE = {"Cache-Control": "no-store"}


class PortalRoute(APIRoute):
    """A portal page: a dataset that is not there, or not open to this visitor, gets the
    portal's own page (404, 403) in the visitor's language, not a problem document."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except NotFound as exc:
                return render(request, "portal/missing.html", status=404, detail=exc.detail)
            except Forbidden as exc:
                if isinstance(exc, access.Denied):  # the shell audits these
                    raise
                return render(request, "portal/forbidden.html", status=403, detail=exc.detail,
                              name=request.path_params.get("name"))

        return route


pages = APIRouter(prefix="/data", route_class=PortalRoute, include_in_schema=False)
feeds = APIRouter(prefix="/data", include_in_schema=False)  # JSON for the page scripts
router = APIRouter()


def viewer(request: Request, actor: Actor) -> Actor | None:
    """The signed-in person of a page (console session cookie), or None for the public."""
    return actor if actor.kind == "user" and request.cookies.get(SESSION_COOKIE) else None


def key_of(request: Request, key: str = "") -> str | None:
    """An access key for conditional data: ?key=, X-CKAN-API-Key, or a raw Authorization
    header (what CKAN clients send)."""
    if key.strip():
        return key.strip()
    if found := request.headers.get("x-ckan-api-key"):
        return found.strip()
    raw = request.headers.get("authorization", "").strip()
    return raw if raw.startswith(applications.KEY_TAG + "_") else None


def _caption(pair: tuple[str, str], lang: str) -> str:
    return pair[0] if lang == "zh-CN" else pair[1]


# -- search (数据目录) --------------------------------------------------------------------------


def _url(path: str, pairs: list[tuple[str, str]]) -> str:
    return path + (f"?{urlencode(pairs)}" if pairs else "")


def _pairs(request: Request, drop: tuple[str, ...] = ("page", "lang")) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k not in drop and v]


def _toggle(request: Request, field: str, value: str) -> str:
    pairs = _pairs(request)
    if (field, value) in pairs:
        pairs.remove((field, value))
    else:
        pairs.append((field, value))
    return _url("/data", pairs)


def _facet_labels(session: Session, lang: str, codes: list[str]) -> dict[str, Callable[[str], str]]:
    from cityos.core import i18n

    depts = {code: name for code, name in session.execute(
        select(Department.code, Department.name).where(Department.code.in_(codes)))}
    topics = {t.name: (t.title, t.title_en or t.title) for t in service.topics(session)}
    return {
        "organization": lambda v: depts.get(v, v),
        "groups": lambda v: _caption(topics[v], lang) if v in topics else v,
        "update_cycle": lambda v: i18n.t(f"hub.update_cycle.{v}", lang),
        "open_level": lambda v: _caption(service.OPEN_LEVELS[v], lang) if v in service.OPEN_LEVELS else v,
    }


def _facet_view(session: Session, request: Request, counts: dict[str, dict[str, int]],
                chosen: dict[str, list[str]], lang: str) -> list[dict[str, Any]]:
    """Each facet's values with counts, whether chosen, and the link that toggles it."""
    labels = _facet_labels(session, lang, [*counts.get("organization", {}), *chosen["organization"]])
    out = []
    for field in FACETS:
        values = dict(counts.get(field, {}))
        for v in chosen[field]:
            values.setdefault(v, 0)
        name = labels.get(field, lambda v: v)
        items = [{"value": v, "label": name(v), "count": n, "active": v in chosen[field],
                  "url": _toggle(request, field, v)} for v, n in values.items()]
        out.append({"field": field, "items": items})
    return out


def _datasets(session: Session, ids: list[int]) -> list[Dataset]:
    """Datasets by id, in the given order, with their departments."""
    found = {d.id: d for d in session.scalars(
        select(Dataset).where(Dataset.id.in_(ids)).options(selectinload(Dataset.department)))}
    return [found[i] for i in ids if i in found]


@pages.get("", response_class=HTMLResponse)
def catalog(request: Request, session: SessionDep, actor: ActorDep, q: str = "", sort: str = "",
            page: str = "1") -> Response:
    """Search published datasets (数据检索): partial Chinese words match, facets narrow."""
    lang = language(request)
    q = q.strip()[:100]
    chosen = {f: [v.strip()[:100] for v in request.query_params.getlist(f) if v.strip()][:10]
              for f in FACETS}
    sort = sort if sort in SORTS else ("relevance" if q else "newest")
    n = page_number(page)
    filters = [search.Filter(f, (v,)) for f, values in chosen.items() for v in values]
    found = search.search(session, q=q or None, filters=filters, sort=SORTS[sort], rows=PAGE,
                          start=(n - 1) * PAGE, facet_fields=FACETS, facet_limit=20)
    pages_n = max(1, -(-found.count // PAGE))
    base = _pairs(request)

    def page_url(k: int) -> str:
        return _url("/data", [*base, ("page", str(k))])

    pager = Pager(n, pages_n, found.count, page_url(n - 1) if n > 1 else None,
                  page_url(n + 1) if n * PAGE < found.count else None)
    sorts = [(s, _url("/data", [*_pairs(request, ("page", "lang", "sort")), ("sort", s)]))
             for s in SORTS if s != "relevance" or q]
    chips = [(f, v, _toggle(request, f, v)) for f, values in chosen.items() for v in values]
    return render(request, "portal/search.html", actor=viewer(request, actor), q=q, sort=sort,
                  sorts=sorts, found=found, datasets=_datasets(session, found.ids), pager=pager,
                  facets=_facet_view(session, request, found.facets, chosen, lang), chips=chips,
                  formats=service.download_formats, current="catalog")


@pages.get("/topics", response_class=HTMLResponse)
def topics(request: Request, session: SessionDep, actor: ActorDep) -> Response:
    """Topics (主题) with their dataset counts."""
    counts = search.search(session, rows=0, facet_fields=("groups",)).facets.get("groups", {})
    items = [(t, counts.get(t.name, 0)) for t in service.topics(session)]
    return render(request, "portal/topics.html", actor=viewer(request, actor), items=items,
                  current="topics")


@pages.get("/organizations", response_class=HTMLResponse)
def organizations(request: Request, session: SessionDep, actor: ActorDep) -> Response:
    """Departments (数据提供部门) with their dataset counts."""
    return render(request, "portal/organizations.html", actor=viewer(request, actor),
                  items=service.organizations(session), current="organizations")


@pages.get("/licence", response_class=HTMLResponse)
def licence(request: Request, actor: ActorDep) -> Response:
    """The city's own open-data licence (吉林市公共数据开放许可协议), in plain words."""
    return render(request, "portal/licence.html", actor=viewer(request, actor), current="")


# -- a dataset --------------------------------------------------------------------------------


def _fields(ds: Dataset) -> list[downloads.Field]:
    return downloads.fields_of(ds.fields)


def chart_axes(ds: Dataset, x: str, y: str, agg: str) -> dict[str, Any] | None:
    """What the chart shows: a numeric column (or a count) by a text column; None when the
    dataset has nothing to group by. Unknown choices fall back to the defaults."""
    geo = {ds.lon_field, ds.lat_field}
    xs = [f for f in _fields(ds) if f.type in X_KINDS and f.id not in geo]
    if not xs:
        return None
    ys = [f for f in _fields(ds) if f.type in Y_KINDS and f.id not in geo]
    texts = [f for f in xs if f.type == "string"]
    x = x if x in {f.id for f in xs} else (texts or xs)[0].id
    y = y if y == COUNT or y in {f.id for f in ys} else (ys[0].id if ys else COUNT)
    return {"x": x, "y": y, "agg": agg if agg in AGGS else "avg", "xs": xs, "ys": ys}


def _number(value: Any) -> Any:
    if isinstance(value, Decimal | float):
        return round(float(value), 2)
    return value


def chart_series(session: Session, ds: Dataset, axes: dict[str, Any]) -> dict[str, Any]:
    """The bars: one value per category, at most MAX_BARS (the largest ones for text, the
    latest ones for dates and numbers)."""
    table = rows.table_of(ds)
    xcol = table.c[axes["x"]]
    y = axes["y"]
    value = func.count() if y == COUNT else getattr(func, axes["agg"])(table.c[y])
    kind = rows.field_types(ds)[axes["x"]]
    stmt = select(xcol, value.label("v")).group_by(xcol)
    if kind in ("string", "boolean"):
        stmt = stmt.order_by(desc("v"), xcol)
    else:
        stmt = stmt.order_by(xcol.desc())
    result = session.execute(stmt.limit(MAX_BARS)).all()
    if kind not in ("string", "boolean"):
        result = list(reversed(result))
    total = int(session.scalar(select(func.count(distinct(xcol)))) or 0)
    titles = {f.id: f.title for f in _fields(ds)}
    return {
        "x": {"id": axes["x"], "title": titles[axes["x"]]},
        "y": {"id": y, "title": titles.get(y, "")}, "agg": axes["agg"] if y != COUNT else "count",
        "categories": [rows._jsonable(r[0]) for r in result], "values": [_number(r[1]) for r in result],
        "total_categories": total,
    }


def _licence(ds: Dataset) -> tuple[str, str]:
    title, url = service.LICENCES.get(ds.licence, (ds.licence, ""))
    if url.endswith("/data/licence"):  # ours: link within this site, whatever its address
        url = "/data/licence"
    return title, url


@pages.get("/dataset/{name}", response_class=HTMLResponse)
def dataset_page(request: Request, session: SessionDep, actor: ActorDep, name: str, key: str = "",
                 x: str = "", y: str = "", agg: str = "") -> Response:
    """A dataset's page: metadata, the first rows, a chart, a map and the downloads."""
    ds = service.published(session, name)
    given = key_of(request, key)
    readable = rows.may_read(session, ds, actor, given)
    preview = rows.search(session, ds, limit=20) if readable else None
    axes = chart_axes(ds, x, y, agg)
    series = chart_series(session, ds, axes) if readable and axes else None
    applications.USAGE.add(ds.id, "views")
    # A key that worked is carried on to the chart, map and download links.
    carried = {"key": given} if readable and given and ds.open_level == "conditional" else {}
    me = viewer(request, actor)
    # A page carrying a key, or shown to someone signed in, stays out of shared caches.
    private = bool(carried) or me is not None or ds.open_level == "conditional"
    return render(request, "portal/dataset.html", actor=me, ds=ds, headers=NO_STORE if private else None,
                  topics=service.topic_map(session), licence=_licence(ds), readable=readable,
                  preview=preview, axes=axes, series=series, carried=carried,
                  query=f"?{urlencode(carried)}" if carried else "", formats=service.download_formats(ds),
                  format_labels=service.FORMATS, tab="overview", key_given=bool(given),
                  field_titles={f["id"]: f["title"] for f in ds.fields},
                  current="catalog")


@pages.get("/dataset/{name}/api", response_class=HTMLResponse)
def dataset_api(request: Request, session: SessionDep, actor: ActorDep, name: str, key: str = ""
                ) -> Response:
    """A dataset's API docs (接口说明): the CKAN calls with this dataset's fields, curl and
    Python examples, and the field table."""
    ds = service.published(session, name)
    readable = rows.may_read(session, ds, actor, key_of(request, key))
    sample = rows.search(session, ds, limit=1)["records"] if readable else []
    base = str(request.base_url).rstrip("/")
    return render(request, "portal/api.html", actor=viewer(request, actor), ds=ds,
                  docs=api_docs(ds, base, sample[0] if sample else None, language(request)),
                  fields=rows.ckan_fields(ds, [f["id"] for f in ds.fields]),
                  formats=service.download_formats(ds), format_labels=service.FORMATS,
                  base=base, tab="api", query="", current="catalog")


# -- downloads --------------------------------------------------------------------------------


Writer = Callable[[list[downloads.Field], Iterator[dict[str, Any]], Dataset], Iterator[bytes]]


def _stream(sessions: sessionmaker[Session], dataset_id: int, write: Writer) -> Iterator[bytes]:
    """Rows read in a session of the download's own: the request's one is closed by the time
    the body streams."""
    with sessions() as session:
        ds = session.get(Dataset, dataset_id)
        assert ds is not None
        yield from write(_fields(ds), rows.iter_rows(session, ds), ds)


def _no_coordinates(name: str) -> CityOSError:
    return CityOSError(detail=f"dataset {name} has no coordinates, so no GeoJSON / 该数据集没有经纬度，"
                       "不提供 GeoJSON", status=404, title="Not found", type_slug="not-found")


@pages.get("/dataset/{name}/download.{fmt}")
def download(request: Request, session: SessionDep, actor: ActorDep, name: str, fmt: str,
             key: str = "") -> Response:
    """Download the whole dataset as CSV (UTF-8 with BOM), XLSX, JSON, GeoJSON or Parquet."""
    if fmt not in service.FORMATS:
        raise NotFound("format", fmt)
    ds = service.published(session, name)
    if fmt not in service.download_formats(ds):
        return render(request, "portal/missing.html", status=404, detail=_no_coordinates(ds.name).detail)
    rows.require_read(session, ds, actor, key_of(request, key))
    applications.USAGE.add(ds.id, "downloads")
    lang, title, ds_name = language(request), ds.title, ds.name
    lon, lat, bbox = ds.lon_field or "", ds.lat_field or "", ds.bbox
    writers: dict[str, Writer] = {
        "csv": lambda f, it, _: downloads.csv_chunks(f, it, lang),
        "xlsx": lambda f, it, _: downloads.xlsx_chunks(f, it, title, lang),
        "json": lambda f, it, _: downloads.json_chunks(f, it, name=ds_name, title=title),
        "geojson": lambda f, it, _: downloads.geojson_chunks(f, it, name=ds_name, title=title,
                                                             lon=lon, lat=lat, bbox=bbox),
        "parquet": lambda f, it, _: downloads.parquet_chunks(f, it, name=ds_name, title=title),
    }
    mimetype = service.FORMATS[fmt][0] + ("; charset=utf-8" if fmt in ("csv", "json", "geojson") else "")
    return StreamingResponse(
        _stream(platform_of(request).sessions, ds.id, writers[fmt]), media_type=mimetype,
        headers={"Content-Disposition": downloads.disposition(ds_name, title, fmt),
                 "Cache-Control": "no-store" if ds.open_level == "conditional" else "public, max-age=300"})


# -- feeds for the page scripts -----------------------------------------------------------------


@feeds.get("/dataset/{name}/chart.json")
def chart_feed(request: Request, session: SessionDep, actor: ActorDep, name: str, x: str = "",
               y: str = "", agg: str = "", key: str = "") -> Response:
    """The chart's bars as JSON: categories and values."""
    ds = service.published(session, name)
    rows.require_read(session, ds, actor, key_of(request, key))
    axes = chart_axes(ds, x, y, agg)
    if axes is None:
        raise Invalid("x", "this dataset has no column to group by / 没有可分组的字段")
    return JSONResponse(chart_series(session, ds, axes))


@feeds.get("/dataset/{name}/points.geojson")
def points_feed(request: Request, session: SessionDep, actor: ActorDep, name: str,
                limit: int = MAP_POINTS, key: str = "") -> Response:
    """The map's points (GeoJSON, the first `limit` rows, at most 5000)."""
    ds = service.published(session, name)
    if not (ds.lon_field and ds.lat_field):
        raise _no_coordinates(ds.name)
    rows.require_read(session, ds, actor, key_of(request, key))
    limit = max(1, min(limit, 5 * MAP_POINTS))
    ds_name, title, lon, lat, bbox = ds.name, ds.title, ds.lon_field, ds.lat_field, ds.bbox

    def write(f: list[downloads.Field], it: Iterator[dict[str, Any]], _: Dataset) -> Iterator[bytes]:
        return downloads.geojson_chunks(f, it, name=ds_name, title=title, lon=lon, lat=lat,
                                        bbox=bbox, limit=limit)

    return StreamingResponse(_stream(platform_of(request).sessions, ds.id, write),
                             media_type="application/geo+json")


# -- applications for conditional data (有条件开放申请) ----------------------------------------------


def _apply_page(request: Request, me: Actor, ds: Dataset, form: dict[str, str],
                errors: dict[str, str], status: int = 200) -> Response:
    return render(request, "portal/apply.html", actor=me, ds=ds, form=form, errors=errors,
                  status=status, current="applications", headers=NO_STORE)


@pages.get("/dataset/{name}/apply", response_class=HTMLResponse)
def apply_form(request: Request, session: SessionDep, actor: ActorDep, name: str) -> Response:
    """The application form (申请表) for a conditional dataset; sign in first."""
    ds = service.published(session, name)
    me = viewer(request, actor)
    if me is None:
        return to_login(request)
    return _apply_page(request, me, ds, {}, {})


@pages.post("/dataset/{name}/apply")
def apply_submit(request: Request, session: SessionDep, actor: ActorDep, name: str,
                 applicant: FormStr = "", credit_code: FormStr = "", contact: FormStr = "",
                 purpose: FormStr = "") -> Response:
    """Send the application: the provider department decides and, if it agrees, sends a key."""
    ds = service.published(session, name)
    me = viewer(request, actor)
    if me is None:
        return to_login(request)
    form = {"applicant": applicant, "credit_code": credit_code, "contact": contact, "purpose": purpose}
    try:
        app = applications.application_create(
            session, me, ds, applicant=applicant, contact=contact, purpose=purpose,
            credit_code=credit_code.strip() or None)
    except Invalid as exc:
        session.rollback()
        return _apply_page(request, me, ds, form, field_errors(exc, language(request)), status=422)
    session.commit()
    return redirect(f"/data/applications?created={app.id}")


@pages.get("/applications", response_class=HTMLResponse)
def my_applications(request: Request, session: SessionDep, actor: ActorDep, created: str = ""
                    ) -> Response:
    """My applications (我的申请) and what became of them."""
    me = viewer(request, actor)
    if me is None:
        return to_login(request)
    paged = applications.application_list(session, me, mine=True, limit=100)
    return render(request, "portal/applications.html", actor=me, paged=paged,
                  created=int(created) if created.isdecimal() and len(created) <= 18 else None,
                  current="applications", headers=NO_STORE)


router.include_router(feeds)
router.include_router(pages)
