"""The pipe networks' JSON API (管网接口) at /api/maps/networks: the networks you may read, burst
analysis, "before you dig" and the topology check. Thin over `maps.pipes_service`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from cityos.core.schemas import Strict
from cityos.core.web import ActorDep, SessionDep, SignedInDep
from cityos.maps import pipes_service
from cityos.maps.api import geometry_in

router = APIRouter(prefix="/api/maps/networks", tags=["maps"])
Purpose = Annotated[str | None, Query(max_length=500)]


class BurstIn(Strict):
    """Where the pipe broke: its feature id and, optionally, the point on it ([lon, lat])."""

    pipe_id: str = Field(min_length=1, max_length=140)
    at: tuple[float, float] | None = Field(None, description="[longitude, latitude] of the break")
    purpose: str | None = Field(None, max_length=500)


class DigIn(Strict):
    """A point or line (GeoJSON, CRS84) and how far around it to look for pipes."""

    geometry: dict[str, Any]
    metres: float = Field(gt=0, le=pipes_service.DIG_MAX_M)
    kinds: list[str] | None = Field(None, description="water|drainage|gas|heat|power|telecom")
    purpose: str | None = Field(None, max_length=500)


@router.get("", summary="Pipe networks you may read (管网)")
def networks_list(session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return {"items": pipes_service.network_list(session, actor)}


@router.post("/dig-check", summary="Pipes within a distance, with depths (开挖前查询)")
def dig_check(body: DigIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    found = pipes_service.dig_check(session, actor, geometry_in(body.geometry), body.metres, body.kinds,
                                    purpose=body.purpose)
    session.commit()  # shared reads leave their audit records
    return found


@router.get("/{code}", summary="A network's layers (管网图层)")
def network_get(code: str, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return pipes_service.network_get(session, actor, code)


@router.post("/{code}/burst", summary="Burst analysis: valves to close, who loses supply (爆管分析)")
def burst(code: str, body: BurstIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    result = pipes_service.burst(session, actor, code, body.pipe_id, body.at, purpose=body.purpose)
    session.commit()  # the analysis is audited
    return result


@router.get("/{code}/check", summary="Topology check (拓扑检查)")
def network_check(code: str, session: SessionDep, actor: SignedInDep,
                  purpose: Purpose = None) -> dict[str, Any]:
    found = pipes_service.network_check(session, actor, code, purpose=purpose)
    session.commit()
    return found
