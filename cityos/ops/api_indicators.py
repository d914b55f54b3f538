"""The vital-sign and early-warning API (运行体征与预警接口) at /api/ops: indicators, their history
and refresh, warning rules, warnings. Thin over `indicators` and `warnings`; every rule is checked
there."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from sqlalchemy.orm import Session

from cityos.core import access
from cityos.core.errors import Invalid
from cityos.core.web import SessionDep, SignedInDep
from cityos.ops import indicators as ind
from cityos.ops import warnings as warn
from cityos.ops.models import WarningRule
from cityos.ops.service import target

router = APIRouter(prefix="/api/ops", tags=["ops"])
Code = Annotated[str, Path(max_length=64)]


def _when(value: str | None, field: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        at = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(field, "an ISO 8601 time, e.g. 2026-01-01T08:00:00+08:00 / 时间格式无效") from None
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at


@router.get("/indicators", summary="Vital-sign indicators (运行体征指标)")
def indicators_list(session: SessionDep, actor: SignedInDep,
                    theme: Annotated[str | None, Query(max_length=32)] = None) -> list[dict[str, Any]]:
    return [ind.indicator_public(i) for i in ind.indicator_list(session, actor, theme)]


@router.get("/indicators/{code}", summary="One indicator (指标)")
def indicators_get(code: Code, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return ind.indicator_public(ind.indicator_get(session, actor, code))


@router.put("/indicators/{code}", summary="Create or replace an indicator (指标维护); ops.write")
def indicators_put(code: Code, session: SessionDep, actor: SignedInDep,
                   body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    i = ind.indicator_upsert(session, actor, {**body, "code": code})
    session.commit()
    return ind.indicator_public(i)


@router.get("/indicators/{code}/history", summary="An indicator's recorded values (历史值)")
def indicators_history(code: Code, session: SessionDep, actor: SignedInDep,
                       since: Annotated[str | None, Query(max_length=40)] = None,
                       until: Annotated[str | None, Query(max_length=40)] = None) -> dict[str, Any]:
    rows = ind.history(session, actor, code, _when(since, "since"), _when(until, "until"))
    return {"code": code, "points": [[ind._iso(at), v] for at, v in rows]}


@router.post("/indicators/{code}/refresh", summary="Compute an indicator now (立即刷新); ops.write")
def indicators_refresh(code: Code, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    i = ind.indicator_get(session, actor, code)
    access.require(actor, "ops.write", target("ops.indicator", i.department, code), session)
    ind.refresh(session, i)
    session.commit()
    return ind.indicator_public(i)


@router.get("/warning-rules", summary="Early-warning rules (预警规则)")
def rules_list(session: SessionDep, actor: SignedInDep) -> list[dict[str, Any]]:
    return [warn.rule_public(session, r) for r in warn.rule_list(session, actor)]


@router.put("/warning-rules/{code}", summary="Create or replace a warning rule (预警规则维护); ops.write")
def rules_put(code: Code, session: SessionDep, actor: SignedInDep,
              body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    r = warn.rule_upsert(session, actor, {**body, "code": code})
    session.commit()
    return warn.rule_public(session, r)


@router.post("/warning-rules/{code}/raise", status_code=201,
             summary="Fire a rule now, by hand (手动预警); ops.command")
def rules_raise(code: Code, session: SessionDep, actor: SignedInDep,
                body: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    note = (body or {}).get("note")
    w = warn.warning_raise(session, actor, code, str(note) if note is not None else None)
    session.commit()
    return _warning_out(session, w)


def _warning_out(session: Session, w: Any) -> dict[str, Any]:
    return warn.warning_public(w, session.get(WarningRule, w.rule_id))


@router.get("/warnings", summary="Early warnings (预警信息)")
def warnings_list(session: SessionDep, actor: SignedInDep,
                  state: Annotated[str, Query(max_length=8)] = "open",
                  told: Annotated[str | None, Query(max_length=64, description="a department code: only "
                                                    "warnings sent to it (通知本部门)")] = None,
                  ) -> list[dict[str, Any]]:
    return [_warning_out(session, w) for w in warn.warning_list(session, actor, state, told=told)]


@router.post("/warnings/{warning_id}/acknowledge",
             summary="Sign for a warning sent to your department (预警签收)")
def warnings_acknowledge(warning_id: int, session: SessionDep, actor: SignedInDep,
                         body: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    note = (body or {}).get("note")
    w = warn.warning_acknowledge(session, actor, warning_id, str(note) if note is not None else None)
    session.commit()
    return _warning_out(session, w)


@router.post("/warnings/{warning_id}/close", summary="Close a warning (解除预警); ops.command")
def warnings_close(warning_id: int, session: SessionDep, actor: SignedInDep,
                   body: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    note = (body or {}).get("note")
    w = warn.warning_close(session, actor, warning_id, str(note) if note is not None else None)
    session.commit()
    return _warning_out(session, w)
