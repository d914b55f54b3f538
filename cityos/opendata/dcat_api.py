"""DCAT-AP 3 endpoints (数据目录元数据): the catalog in pages and each dataset, as JSON-LD,
Turtle and RDF/XML, for harvesters such as the national and provincial open-data portals.
Thin: `service` gives the CKAN package dicts, `dcat` maps them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from cityos.core.errors import NotFound
from cityos.core.web import SessionDep
from cityos.opendata import dcat, service
from cityos.opendata.models import Dataset

router = APIRouter(tags=["opendata-dcat"])
PAGE_SIZE = 100
FORMATS = "jsonld|ttl|rdf"
CATALOG = {
    "title": "吉林市公共数据开放平台", "title_en": "Jilin City Open Data",
    "description": "吉林市各部门依开放计划发布的公共数据（经脱敏处理），可免费获取和再利用。",
    "description_en": "Public data of Jilin City's departments, published by plan and de-identified, "
                      "free to reuse.",
    "publisher": {"name": "吉林市政务服务和数字化建设管理局",
                  "name_en": "Jilin City Government Services and Digital Development Bureau"},
    "language": ["zh", "en"],
    "license_url": service.LICENCES["CC-BY-4.0"][1], "license_title": service.LICENCES["CC-BY-4.0"][0],
}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _answer(graph: object, fmt: str) -> Response:
    body, media_type = dcat.serialize(graph, fmt)  # type: ignore[arg-type]
    return Response(body, media_type=f"{media_type}; charset=utf-8" if media_type != "application/rdf+xml"
                    else media_type)


@router.get("/catalog.{fmt}", summary="DCAT-AP 3 catalog, one page of datasets (目录元数据)")
def catalog(request: Request, session: SessionDep, fmt: str,
            page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> Response:
    if fmt not in FORMATS.split("|"):
        raise NotFound("format", fmt)
    published = Dataset.state == "published"
    total = int(session.scalar(select(func.count()).where(published)) or 0)
    datasets = session.scalars(
        select(Dataset).where(published).order_by(Dataset.id).limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
        .options(selectinload(Dataset.department), selectinload(Dataset.resource))).all()
    topics = service.topic_map(session)
    base = _base(request)
    packages = [service.package_dict(ds, topics, base) for ds in datasets]
    graph = dcat.catalog_graph({**CATALOG, "homepage": f"{base}/data"}, packages, base, page, PAGE_SIZE,
                               total, fmt=fmt)
    return _answer(graph, fmt)


@router.get("/dataset/{name}.{fmt}", summary="One dataset as DCAT-AP 3 (数据集元数据)")
def dataset(request: Request, session: SessionDep, name: str, fmt: str) -> Response:
    if fmt not in FORMATS.split("|"):
        raise NotFound("format", fmt)
    ds = service.published(session, name)
    pkg = service.package_dict(ds, service.topic_map(session), _base(request))
    return _answer(dcat.dataset_graph(pkg, _base(request)), fmt)
