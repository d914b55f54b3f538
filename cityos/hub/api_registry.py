"""Base registries API (基础库): person lookup, registry writes, cross-checks, licences, figures.

Thin over `hub.registries`, `hub.discrepancies`, `hub.licences` and `hub.stats`. A registry is
named by its resource code or its branch (population, legal_person, licence). ID numbers travel
in request bodies only: URLs end up in logs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from cityos.core.api import Limit, Offset, page_of
from cityos.core.errors import NotFound
from cityos.core.identifiers import mask_citizen_id
from cityos.core.schemas import Page
from cityos.core.web import ActorDep, SessionDep, SignedInDep
from cityos.hub import discrepancies, licences, registries, stats
from cityos.hub.schemas_registry import (
    CrosscheckIn,
    CrosscheckOut,
    DiscrepancyOut,
    FiguresOut,
    LicenceIn,
    LicenceOut,
    PersonLookupIn,
    RecordOut,
    RecordWriteIn,
    RecordWriteOut,
    ResolveIn,
    RevokeIn,
    VerifyIn,
    VerifyOut,
)

router = APIRouter(prefix="/api/hub", tags=["hub registries"])
Code = Annotated[str, Path(description="resource code (e.g. 101001-000001) or branch (population)")]
LicenceNo = Annotated[str, Path(min_length=4, max_length=64, pattern=r"^[0-9A-Za-z][0-9A-Za-z-]*$")]


@router.post("/registries/population/lookup", response_model=RecordOut,
             summary="Find a person by ID number (in the body, never the URL); audited with the purpose")
def person_lookup(body: PersonLookupIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    record = registries.person_lookup(session, actor, body.id_number, purpose=body.purpose)
    session.commit()  # the lookup is audited, found or not
    if record is None:
        raise NotFound("person", mask_citizen_id(body.id_number.strip()))
    res = registries.registry_resource(session, "population")
    return {"resource": res.code, "fields": list(record), "record": record}


@router.patch("/registries/{code}/records", response_model=RecordWriteOut,
              summary="Write items of one record; each item only by its authoritative department")
def registry_write(code: Code, body: RecordWriteIn, session: SessionDep,
                   actor: SignedInDep) -> dict[str, Any]:
    result = registries.registry_write(session, actor, code, body.key, body.changes, note=body.note)
    res = registries.registry_resource(session, code)
    session.commit()
    return {"resource": res.code, "version": result.version, "changed": result.changed,
            "created": result.created}


@router.post("/registries/{code}/crosscheck", response_model=CrosscheckOut,
             summary="Cross-check your records against a registry (多元校核)")
def crosscheck(code: Code, body: CrosscheckIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    found = discrepancies.crosscheck(session, actor, code, body.records)
    out = [discrepancies.discrepancy_public(session, actor, d) for d in found]
    session.commit()
    return {"checked": len(body.records), "discrepancies": out}


@router.get("/discrepancies", response_model=Page[DiscrepancyOut],
            summary="Discrepancies sent to your department (its inbox) or reported by it")
def discrepancy_list(
    session: SessionDep, actor: SignedInDep, limit: Limit = 50, offset: Offset = 0,
    state: Annotated[str | None, Query(pattern="^(open|confirmed|corrected|rejected)$")] = "open",
) -> dict[str, Any]:
    paged = discrepancies.discrepancy_list(session, actor, state=state, limit=limit, offset=offset)
    return page_of(paged, lambda d: discrepancies.discrepancy_public(session, actor, d))


@router.post("/discrepancies/{id}/resolve", response_model=DiscrepancyOut,
             summary="Confirm the registry, correct it, or reject the report")
def discrepancy_resolve(id: int, body: ResolveIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    d = discrepancies.discrepancy_resolve(session, actor, id, action=body.action, note=body.note,
                                          value=body.value)
    out = discrepancies.discrepancy_public(session, actor, d)
    session.commit()
    return out


@router.post("/licences", response_model=LicenceOut, status_code=201,
             summary="Issue an electronic licence (电子证照) in your department's name")
def licence_issue(body: LicenceIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    out = licences.licence_issue(session, actor, body.model_dump())
    session.commit()
    return out


@router.post("/licences/verify", response_model=VerifyOut,
             summary="Verify a licence for its holder: valid or invalid, nothing more (no sign-in)")
def licence_verify(body: VerifyIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    result = licences.licence_verify(session, body.licence_no, body.holder_id, actor=actor)
    session.commit()  # every verification is audited
    return {"valid": result["valid"]}


@router.post("/licences/{licence_no}/revoke", response_model=LicenceOut,
             summary="Revoke a licence your department issued (注销)")
def licence_revoke(licence_no: LicenceNo, body: RevokeIn, session: SessionDep,
                   actor: SignedInDep) -> dict[str, Any]:
    out = licences.licence_revoke(session, actor, licence_no, body.reason)
    session.commit()
    return out


@router.get("/stats", response_model=FiguresOut,
            summary="Sharing figures per department and city-wide (sharing rate, requests, reads)")
def figures(session: SessionDep, actor: SignedInDep,
            department: Annotated[str | None, Query(max_length=32)] = None) -> dict[str, Any]:
    return stats.figures(session, actor, department=department)
