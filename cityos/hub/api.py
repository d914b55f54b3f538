"""Catalog API (资源目录): resources, their items, versions and quality, the negative list,
and catalog exports (JSON, CSV, XLSX). Thin over `hub.service`."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Response

from cityos.core.service import MAX_OFFSET, MAX_PAGE
from cityos.core.web import SessionDep, SignedInDep
from cityos.hub import service, store
from cityos.hub.models import NegativeEntry, Version
from cityos.hub.schemas import (
    NegativeIn,
    NegativeOut,
    QualityOut,
    ResourceIn,
    ResourceOut,
    ResourcePatch,
    VersionOut,
    Vocabulary,
)

router = APIRouter(prefix="/api/hub", tags=["hub catalog"])
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size (1-500)")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
Filter = Annotated[str | None, Query(max_length=32)]


def page_of(paged: Any, shape: Any) -> dict[str, Any]:
    return {"items": [shape(i) for i in paged.items], "total": paged.total,
            "limit": paged.limit, "offset": paged.offset, "next_offset": paged.next_offset}


def version_out(v: Version) -> dict[str, Any]:
    return {c: getattr(v, c) for c in VersionOut.model_fields}


def negative_out(e: NegativeEntry) -> dict[str, Any]:
    code = e.resource.code if e.resource is not None else None
    return {"id": e.id, "department": e.department.code, "department_name": e.department.name,
            "resource_code": code, "name": e.name, "reason": e.reason, "basis": e.basis}


@router.get("/vocabulary", response_model=Vocabulary, summary="Code lists of the catalog (代码表)")
def vocabulary() -> dict[str, Any]:
    return {
        "categories": {k: {"class_code": v[0], "zh": v[1], "en": v[2]}
                       for k, v in service.CATEGORIES.items()},
        "base_branches": {k: {"item_code": v[0], "zh": v[1], "en": v[2]}
                          for k, v in service.BASE_BRANCHES.items()},
        "share_types": service.SHARE_TYPES, "open_types": service.OPEN_TYPES,
        "share_methods": service.SHARE_METHODS, "formats": service.FORMATS,
        "update_cycles": {k: {"zh": v[0], "days": v[1]} for k, v in service.UPDATE_CYCLES.items()},
        "sensitivities": service.SENSITIVITIES, "item_types": list(store.TYPES),
    }


@router.get("/resources", summary="Search and browse the catalog (资源目录检索)")
def resources_list(
    session: SessionDep, actor: SignedInDep, limit: Limit = 50, offset: Offset = 0,
    q: Annotated[str | None, Query(max_length=100, description="words in name, abstract or code")] = None,
    category: Filter = None, base_branch: Filter = None, department: Filter = None,
    share_type: Filter = None, open_type: Filter = None, update_cycle: Filter = None,
) -> dict[str, Any]:
    paged = service.resource_list(session, actor, q=q, category=category, base_branch=base_branch,
                                  department=department, share_type=share_type, open_type=open_type,
                                  update_cycle=update_cycle, limit=limit, offset=offset)
    return page_of(paged, service.resource_public)


@router.post("/resources", response_model=ResourceOut, status_code=201, summary="Catalog a resource (编目)")
def resources_create(body: ResourceIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    spec = body.model_dump(exclude_none=True)
    spec["items"] = [i.model_dump(exclude_none=True) for i in body.items]
    res = service.resource_create(session, actor, spec)
    session.commit()
    return service.resource_public(res)


@router.get("/resources/export", summary="Export the catalog as JSON, CSV or XLSX (目录导出)")
def resources_export(
    session: SessionDep, actor: SignedInDep,
    format: Annotated[str, Query(pattern="^(json|csv|xlsx)$")] = "json",
    q: Annotated[str | None, Query(max_length=100)] = None, department: Filter = None,
    category: Filter = None,
) -> Response:
    rows = service.catalog_export(session, actor, q=q, department=department, category=category)
    name = "catalog"
    if format == "json":
        return Response(orjson.dumps(rows), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{name}.json"'})
    flat = [service.catalog_row(r) for r in rows]
    if format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(service.CATALOG_COLUMNS_ZH)
        writer.writerows([[r[c] for c in service.CATALOG_COLUMNS] for r in flat])
        return Response(("\ufeff" + buf.getvalue()).encode(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    return Response(service.catalog_xlsx(flat),
                    media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'})


@router.get("/resources/{code}", response_model=ResourceOut)
def resources_get(code: str, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return service.resource_public(service.resource_get(session, actor, code))


@router.patch("/resources/{code}", response_model=ResourceOut)
def resources_update(code: str, body: ResourcePatch, session: SessionDep,
                     actor: SignedInDep) -> dict[str, Any]:
    res = service.resource_update(session, actor, code, body.model_dump(exclude_unset=True))
    session.commit()
    return service.resource_public(res)


@router.get("/resources/{code}/versions", summary="Load history (版本历史)")
def versions_list(code: str, session: SessionDep, actor: SignedInDep, limit: Limit = 50,
                  offset: Offset = 0) -> dict[str, Any]:
    return page_of(service.version_list(session, actor, code, limit=limit, offset=offset), version_out)


@router.get("/resources/{code}/quality", response_model=QualityOut, summary="Quality score (数据质量)")
def resources_quality(code: str, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return service.quality(session, actor, code).as_dict()


@router.get("/negative-list", summary="What is not shared, and why (负面清单)")
def negative_list(session: SessionDep, actor: SignedInDep, department: Filter = None, limit: Limit = 50,
                  offset: Offset = 0) -> dict[str, Any]:
    return page_of(service.negative_list(session, actor, department=department, limit=limit,
                                         offset=offset), negative_out)


@router.post("/negative-list", response_model=NegativeOut, status_code=201)
def negative_add(body: NegativeIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    entry = service.negative_add(session, actor, **body.model_dump())
    session.commit()
    session.refresh(entry, ["department"])
    return negative_out(entry)
