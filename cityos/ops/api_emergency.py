"""The emergency command API (应急指挥接口) at /api/ops: incident types, response plans, incidents
with their tasks, resources and timeline, and the steps of command (activate a plan, change the
level, add a note, close out). Thin over `cityos.ops.emergency`, which checks every rule.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from cityos.core.access import Actor
from cityos.core.web import SessionDep, SignedInDep
from cityos.ops import emergency
from cityos.ops.models import Incident

router = APIRouter(prefix="/api/ops", tags=["ops"])
Code = Annotated[str, Path(max_length=64)]
Number = Annotated[str, Path(max_length=32, description="事件编号 / incident number, e.g. YJ202406010001")]


class IncidentTypeIn(BaseModel):
    name: str = Field(max_length=200)
    name_en: str | None = Field(None, max_length=200)
    resource_layers: list[str] = Field(default_factory=list, description="map layer codes (资源图层)")


class PlanTaskIn(BaseModel):
    department: str = Field(max_length=32)
    title: str = Field(max_length=200)
    title_en: str | None = Field(None, max_length=200)
    hours: Any = Field(description="hours to do it, 1-720 (处置时限，小时)")


class PlanIn(BaseModel):
    name: str = Field(max_length=200)
    name_en: str | None = Field(None, max_length=200)
    incident_type: str = Field(max_length=64)
    min_level: str = Field("IV", max_length=4, description="applies at this level and graver: I-IV")
    department: str | None = Field(None, max_length=32, description="owning department; default yours")
    tasks: list[PlanTaskIn] = Field(default_factory=list)
    active: bool = True


class IncidentIn(BaseModel):
    type: str = Field(max_length=64, description="incident type code (事件类型)")
    level: str = Field(max_length=4, description="I (gravest) to IV (响应级别)")
    title: str = Field(max_length=300)
    description: str | None = Field(None, max_length=5000)
    lon: float | None = None
    lat: float | None = None
    district: str | None = Field(None, max_length=12, description="district division code (区县代码)")
    department: str | None = Field(None, max_length=32, description="commanding department; default yours")


class ActivateIn(BaseModel):
    plan: str = Field(max_length=64)


class LevelIn(BaseModel):
    level: str = Field(max_length=4)
    note: str | None = Field(None, max_length=2000)


class NoteIn(BaseModel):
    note: str = Field(max_length=2000)


class CloseIn(BaseModel):
    summary: str = Field(max_length=5000)


def _type_out(t: Any) -> dict[str, Any]:
    return {"code": t.code, "name": t.name, "name_en": t.name_en, "resource_layers": list(t.resource_layers)}


def _detail(session: Session, actor: Actor, inc: Incident, *, resources: bool = True) -> dict[str, Any]:
    out = emergency.incident_public(inc)
    out["tasks"] = emergency.incident_tasks(session, actor, inc.number)
    out["timeline"] = [emergency.event_public(e)
                       for e in emergency.incident_timeline(session, actor, inc.number)]
    out["plans"] = [emergency.plan_public(session, p) for p in emergency.plans_for(session, inc)]
    plans = {p.id: p.code for p in emergency.plan_list(session, actor)}
    out["activated"] = [{"plan": plans.get(a.plan_id), "cases": list(a.case_numbers),
                         "by": a.activated_by, "at": emergency._iso(a.activated_at)}
                        for a in emergency.activations(session, inc)]
    out["resources"] = emergency.resources_near(session, actor, inc.number) if resources else []
    return out


@router.get("/incident-types", summary="Kinds of emergency (突发事件类型)")
def types_list(session: SessionDep, actor: SignedInDep) -> list[dict[str, Any]]:
    return [_type_out(t) for t in emergency.incident_types(session, actor)]


@router.put("/incident-types/{code}", summary="Create or change a kind of emergency; platform admins")
def types_put(code: Code, body: IncidentTypeIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    row = emergency.incident_type_upsert(session, actor, {"code": code, **body.model_dump()})
    session.commit()
    return _type_out(row)


@router.get("/plans", summary="Response plans (应急预案)")
def plans_list(session: SessionDep, actor: SignedInDep,
               incident_type: Annotated[str | None, Query(max_length=64)] = None) -> list[dict[str, Any]]:
    return [emergency.plan_public(session, p) for p in emergency.plan_list(session, actor, incident_type)]


@router.put("/plans/{code}", summary="Create or change a response plan (预案维护)")
def plans_put(code: Code, body: PlanIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    spec = body.model_dump()
    spec["tasks"] = [t.model_dump() for t in body.tasks]
    plan = emergency.plan_upsert(session, actor, {"code": code, **spec})
    session.commit()
    return emergency.plan_public(session, plan)


@router.get("/incidents", summary="Incidents, newest first (突发事件)")
def incidents_list(session: SessionDep, actor: SignedInDep,
                   status: Annotated[str | None, Query(max_length=16, description="active | closed")] = None
                   ) -> list[dict[str, Any]]:
    return [emergency.incident_public(i) for i in emergency.incident_list(session, actor, status or None)]


@router.post("/incidents", status_code=201, summary="Open an incident (接报立案)")
def incidents_open(body: IncidentIn, response: Response, session: SessionDep,
                   actor: SignedInDep) -> dict[str, Any]:
    inc = emergency.incident_open(session, actor, type_code=body.type, level=body.level, title=body.title,
                                  description=body.description, lon=body.lon, lat=body.lat,
                                  district=body.district, department=body.department)
    session.commit()
    response.headers["Location"] = f"/api/ops/incidents/{inc.number}"
    return emergency.incident_public(inc)


@router.get("/incidents/{number}", summary="An incident with its tasks, resources near it and its timeline")
def incidents_get(number: Number, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return _detail(session, actor, emergency.incident_get(session, actor, number))


@router.get("/incidents/{number}/resources", summary="Resources near the incident, nearest first (周边资源)")
def incidents_resources(number: Number, session: SessionDep, actor: SignedInDep,
                        radius_m: Annotated[float, Query(description="metres")] = 3000,
                        limit: Annotated[int, Query(ge=1, le=emergency.MAX_RESOURCES)] = 50,
                        ) -> list[dict[str, Any]]:
    return emergency.resources_near(session, actor, number, radius_m, limit)


@router.post("/incidents/{number}/activate", summary="Activate a response plan (启动预案)")
def incidents_activate(number: Number, body: ActivateIn, session: SessionDep,
                       actor: SignedInDep) -> dict[str, Any]:
    emergency.plan_activate(session, actor, number, body.plan)
    session.commit()
    return _detail(session, actor, emergency.incident_get(session, actor, number), resources=False)


@router.post("/incidents/{number}/level", summary="Change the response level (调整响应级别)")
def incidents_level(number: Number, body: LevelIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    inc = emergency.incident_level(session, actor, number, body.level, body.note)
    session.commit()
    return emergency.incident_public(inc)


@router.post("/incidents/{number}/notes", status_code=201, summary="Add to the timeline (处置记录)")
def incidents_note(number: Number, body: NoteIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    ev = emergency.incident_note(session, actor, number, body.note)
    session.commit()
    return emergency.event_public(ev)


@router.post("/incidents/{number}/close", summary="End the response with the close-out report (总结报告)")
def incidents_close(number: Number, body: CloseIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    report = emergency.incident_close(session, actor, number, body.summary)
    session.commit()
    return {**emergency.incident_public(emergency.incident_get(session, actor, number)), "report": report}
