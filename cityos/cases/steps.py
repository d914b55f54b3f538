"""The steps of a case (办理环节): accept, dispatch, return, reassign, extend, escalate, reply,
verify, close, reopen, evaluate — each checks who may take it and whether the case is at that
step, moves the workflow, and writes the timeline, in one transaction.

A step out of order answers 409 and changes nothing; a department acting on a case it does not
hold answers 403. Deadlines count working days on the official calendar (`core.workdays`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.cases import engine
from cityos.cases import service as svc
from cityos.cases.models import SATISFACTION, Case, CaseTask
from cityos.core import access, audit, crypto, events, workdays
from cityos.core.access import SYSTEM, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, Forbidden, Invalid
from cityos.core.models import Department
from cityos.core.service import department_by_code
from cityos.core.settings import Settings

Params = Mapping[str, Any]
AUDITED = ("department", "co", "days", "valid", "fixed", "satisfaction", "into", "approved")


@dataclass(frozen=True)
class Step:
    """An action on a case: who takes it (the centre or a handling department) and its names."""

    name: str
    by: str  # centre|handler
    zh: str
    en: str
    run: Callable[..., None] = field(compare=False)


STEPS: dict[str, Step] = {}


def _step(name: str, by: str, zh: str, en: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        STEPS[name] = Step(name, by, zh, en, fn)
        return fn
    return register


# -- deadlines (办理时限) ------------------------------------------------------------------------


def limit_days(case: Case, settings: Settings) -> int:
    """The time limit in working days: urgent the same day, consultations 3, others 5 (settings)."""
    if case.urgent:
        return settings.cases_limit_urgent_days
    if case.kind == "consultation":
        return settings.cases_limit_consultation_days
    return settings.cases_limit_default_days


def limit_of(case: Case, settings: Settings) -> tuple[float, str]:
    """The time limit as (amount, "days" | "hours"): a city-management event class with a limit in
    working hours (GB/T 30428 practice, e.g. exposed rubbish 4 h) uses it; otherwise working days."""
    cat = case.category
    if case.line == "citymgmt" and cat is not None and cat.gbt_code and cat.kind and not case.urgent:
        from cityos.cases import gbt30428

        cls = gbt30428.get(cat.gbt_code, cat.kind)
        if cls.limit_hours:
            return float(cls.limit_hours), "hours"
    return float(limit_days(case, settings)), "days"


def set_deadline(session: Session, case: Case, start: dt.datetime, amount: float, settings: Settings,
                 unit: str = "days") -> None:
    """Give the case (and its open handling tasks) a deadline `amount` working days or hours after
    `start` on the official calendar, and the time it becomes due soon (预警)."""
    cal = workdays.current(session)
    due = (workdays.add_working_hours(cal, start, amount) if unit == "hours"
           else workdays.add_working_days(cal, start, int(amount)))
    case.due_at = due.at
    case.warn_at = start + (due.at - start) * settings.cases_warn_fraction
    case.due_note = due.note[:300]
    case.overdue = False
    for task in svc.open_tasks(session, case, step="handle"):
        task.due_at, task.warn_at, task.overdue, task.warned = case.due_at, case.warn_at, False, False


def restart_clock(session: Session, case: Case, settings: Settings) -> None:
    """A new round of handling (reopened, not fixed): the full time limit again, from now."""
    amount, unit = limit_of(case, settings)
    set_deadline(session, case, utcnow(), amount, settings, unit)


# -- mirroring the engine ---------------------------------------------------------------------


def sync(session: Session, case: Case, flow: Any) -> None:
    """Mirror the engine's ready user tasks as task rows, derive the case's status, keep the state."""
    now = utcnow()
    ready = engine.ready(flow)
    ready_ids = {r.id for r in ready}
    rows = svc.open_tasks(session, case)
    known = {r.engine_task for r in rows}
    for row in rows:
        if row.engine_task not in ready_ids:
            row.state, row.done_at = ("done" if row.state in ("open", "accepted") else row.state), now
    for r in ready:
        if r.id in known:
            continue
        dept_id = case.dispatch_department_id
        if r.lane == "handler":
            dept_id = department_by_code(session, r.handler).id if r.handler else (
                case.department_id or case.dispatch_department_id)
        task = CaseTask(case_id=case.id, engine_task=r.id, step=r.step, name=r.name.split(" / ")[0][:100],
                        lane=r.lane, department_id=dept_id, state="open", opened_at=now)
        if r.step == "handle":
            task.role = "lead" if dept_id == case.department_id else "co"
            task.due_at, task.warn_at = case.due_at, case.warn_at
        session.add(task)
    session.flush()
    steps = {r.step for r in ready}
    if not ready:
        if case.status not in ("cancelled", "merged"):
            case.status = "closed"
        case.closed_at = case.closed_at or now
        case.engine_state = None
        case.step = ""
        return
    if steps & {"file", "dispatch"}:
        case.status = "new"
    elif "handle" in steps:
        accepted = any(t.state == "accepted" and t.role == "lead"
                       for t in svc.open_tasks(session, case, step="handle"))
        case.status = "handling" if accepted or case.status == "handling" else "dispatched"
    else:
        case.status = "replied"
        case.replied_at = case.replied_at or now
    case.step = ",".join(s for s in engine.STEPS if s in steps)
    case.engine_state = engine.dump(flow)


def _flow(case: Case) -> Any:
    if case.engine_state is None:
        raise Conflict(f"case {case.number} is {case.status}: no step is open / 工单当前无可办环节", "action")
    return engine.load(case.engine_state)


# -- taking a step ------------------------------------------------------------------------------


def case_act(session: Session, actor: Actor, number: str, action: str, params: Params | None = None, *,
             settings: Settings | None = None) -> Case:
    """Take one step on a case (办理一步)."""
    step = STEPS.get(action)
    if step is None:
        raise Invalid("action", f"unknown step {action!r}: one of {', '.join(STEPS)} / 未知的办理环节")
    case = svc.case_by_number(session, number)
    params = dict(params or {})
    if step.by == "centre":
        centre = case.dispatch_department
        access.require(actor, "cases.dispatch", Target("case", case.number, centre.id, centre.path), session)
    step.run(session, actor, case, params, settings or svc.default_settings())
    audit.append(session, actor=actor.name, department=actor.department_code, action=f"cases.{action}",
                 object_type="case", object_id=case.number,
                 detail={k: v for k, v in params.items() if k in AUDITED})
    session.flush()
    return case


def _centre_task(session: Session, case: Case, step: str) -> CaseTask:
    tasks = svc.open_tasks(session, case, step=step)
    if not tasks:
        raise Conflict(f"case {case.number} is not at step {step} (now: {case.step or case.status}) / "
                       f"工单当前不在该环节", "action")
    return tasks[0]


def _handler_task(session: Session, actor: Actor, case: Case, params: Params,
                  step: str = "handle") -> CaseTask:
    """The open handling task the actor's department holds on this case."""
    tasks = svc.open_tasks(session, case, step=step)
    if not tasks:
        raise Conflict(f"case {case.number} is not being handled (now: {case.step or case.status}) / "
                       "工单当前不在办理环节", "action")
    if params.get("task") is not None:
        tasks = [t for t in tasks if t.id == params["task"]]
        if not tasks:
            raise Invalid("task", "no such open task on this case / 该工单没有这个待办任务")
    mine = [t for t in tasks if access.decide(actor, "cases.handle",
                                              Target("case_task", t.id, t.department_id, t.department.path),
                                              session).allowed]
    if not mine:
        access.require(actor, "cases.handle")  # signed out or no such role: 401/403 as usual
        raise Forbidden(f"your department does not hold case {case.number} / 该工单不由本部门办理")
    audit_target = mine[0]
    return audit_target


def _complete(session: Session, case: Case, flow: Any, task: CaseTask, data: dict[str, Any],
              outcome: str, note: str = "") -> None:
    engine.complete(flow, task.engine_task, data)
    task.state, task.outcome, task.note, task.done_at = "done", outcome, note[:5000], utcnow()
    sync(session, case, flow)


def _text(params: Params, name: str, *, required: bool = True, limit: int = 5000) -> str:
    value = str(params.get(name) or "").strip()
    if required and not value:
        raise Invalid(name, "required / 必填")
    if len(value) > limit:
        raise Invalid(name, f"at most {limit} characters / 内容过长")
    return value


def _bool(params: Params, name: str) -> bool:
    value = params.get(name)
    if not isinstance(value, bool):
        raise Invalid(name, "true or false is required / 须为是或否")
    return value


# -- the centre's steps -------------------------------------------------------------------------


@_step("file", "centre", "立案", "File")
def _file(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Verify a city-management report and class it (案卷建立), or reject it (不予立案)."""
    task = _centre_task(session, case, "file")
    valid = _bool(params, "valid")
    note = _text(params, "note", required=not valid)
    if valid:
        if params.get("category"):
            cat = svc.category_by_code(session, str(params["category"]))
            case.category_id, case.kind = cat.id, cat.kind or case.kind
        if params.get("component_id"):
            from cityos.cases import gbt30428

            parsed = gbt30428.parse_component_id(str(params["component_id"]))
            if case.category and case.category.gbt_code and case.category.kind == "component" and \
                    parsed.cls.code != case.category.gbt_code:
                raise Invalid("component_id", f"the identifier is of class {parsed.cls.code} "
                                              f"{parsed.cls.name}, not {case.category.gbt_code} / "
                                              "部件标识码与案件类别不符")
            case.component_id = str(parsed)
        if case.category_id is None:
            raise Invalid("category", "class the case before filing it / 立案须确定部件或事件类别")
    else:
        case.status = "cancelled"
    flow = _flow(case)
    _complete(session, case, flow, task, {"valid": valid}, "filed" if valid else "rejected", note)
    svc.event_add(session, case, actor, "file" if valid else "reject", note)
    if not valid:
        events.publish(events.CASES_CLOSED, session=session, case=case)


@_step("dispatch", "centre", "派遣", "Dispatch")
def _dispatch(session: Session, actor: Actor, case: Case, params: Params, settings: Settings,
              now: dt.datetime | None = None) -> None:
    """Classify and send the case to a lead department and co-handlers (分类派单), starting the clock."""
    task = _centre_task(session, case, "dispatch")
    if params.get("category"):
        cat = svc.category_by_code(session, str(params["category"]))
        case.category_id = cat.id
    if params.get("kind"):
        from cityos.cases.models import KINDS

        if params["kind"] not in KINDS:
            raise Invalid("kind", f"one of {', '.join(KINDS)} / 诉求类型无效")
        case.kind = str(params["kind"])
    lead_code = params.get("department") or (case.category.department.code
                                              if case.category and case.category.department else None)
    if not lead_code:
        raise Invalid("department", "which department leads? / 请指定主办部门")
    lead = svc.department_of(session, str(lead_code), "department")
    if not isinstance(params.get("co") or [], list):
        raise Invalid("co", "a list of department codes / 协办部门须为部门代码列表")
    co_codes = list(dict.fromkeys(str(c) for c in (params.get("co") or []) if c != lead.code))
    co = [svc.department_of(session, c, "co") for c in co_codes]
    days, hours = params.get("days"), params.get("hours")
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= 60):
        raise Invalid("days", "0-60 working days / 办理时限须为 0-60 个工作日")
    if hours is not None and (not isinstance(hours, int | float) or isinstance(hours, bool)
                              or not 0 < hours <= 480):
        raise Invalid("hours", "more than 0 and at most 480 working hours / 办理时限须为 0-480 个工作小时")
    now = now or utcnow()
    case.department = lead
    case.dispatched_at = case.dispatched_at or now
    amount, unit = ((float(days), "days") if days is not None else (float(hours), "hours")
                    if hours is not None else limit_of(case, settings))
    set_deadline(session, case, now, amount, settings, unit)
    assert case.due_at is not None
    note = _text(params, "note", required=False)
    flow = _flow(case)
    _complete(session, case, flow, task, {"handlers": [lead.code, *co_codes],
                                          "due_at": engine.iso(case.due_at)}, "dispatched", note)
    svc.event_add(session, case, actor, "dispatch", note, detail={
        "department": lead.code, "department_name": lead.name, "co": [d.code for d in co],
        "due_at": svc._iso(case.due_at), "due_note": case.due_note})
    events.publish(events.CASES_DISPATCHED, session=session, case=case)


@_step("reassign", "centre", "改派", "Reassign")
def _reassign(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Send an open handling task to another department (改派) without restarting the clock."""
    tasks = svc.open_tasks(session, case, step="handle")
    if not tasks:
        raise Conflict("no handling task is open to reassign / 没有可改派的办理任务", "action")
    if params.get("task") is not None:
        tasks = [t for t in tasks if t.id == params["task"]]
        if not tasks:
            raise Invalid("task", "no such open task on this case / 该工单没有这个待办任务")
    task = next((t for t in tasks if t.role == "lead"), tasks[0]) if params.get("task") is None else tasks[0]
    to = svc.department_of(session, str(params.get("department") or ""), "department")
    note = _text(params, "note")
    old = task.department
    task.department, task.state, task.accepted_at = to, "open", None
    if task.role == "lead":
        case.department = to
        case.status = "dispatched"
    svc.event_add(session, case, actor, "reassign", note, detail={"from": old.code, "to": to.code,
                                                                   "to_name": to.name})


@_step("decide_extension", "centre", "延期审批", "Decide an extension")
def _decide_extension(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Approve or refuse a handling department's request for more time (延期审批)."""
    days = case.extension_pending
    if not days:
        raise Conflict("no extension was asked for / 没有待审批的延期申请", "action")
    approved = _bool(params, "approved")
    note = _text(params, "note", required=not approved)
    case.extension_pending = None
    if approved:
        assert case.due_at is not None
        start = case.due_at
        set_deadline(session, case, start, days, settings)
        case.extended_days += days
        if case.engine_state is not None and case.due_at is not None:
            flow = _flow(case)
            engine.set_due(flow, engine.iso(case.due_at))
            case.engine_state = engine.dump(flow)
    svc.event_add(session, case, actor, "extension_approved" if approved else "extension_refused", note,
                  detail={"days": days, "due_at": svc._iso(case.due_at)}, public=approved)


@_step("escalate", "centre", "督办", "Escalate")
def _escalate(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Press the handling department (督办)."""
    if case.status not in ("dispatched", "handling"):
        raise Conflict("only a case being handled can be escalated / 仅办理中的工单可督办", "action")
    escalate(session, actor, case, _text(params, "note"))


def escalate(session: Session, actor: Actor, case: Case, note: str, *, auto: bool = False) -> None:
    case.escalations += 1
    svc.event_add(session, case, actor, "escalate", note, detail={"auto": auto}, public=False)
    events.publish(events.CASES_ESCALATED, session=session, case=case)


@_step("verify", "centre", "核查", "Verify")
def _verify(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """The inspector checks on site (核查): fixed goes on to closing, not fixed back to handling."""
    task = _centre_task(session, case, "verify")
    fixed = _bool(params, "fixed")
    note = _text(params, "note", required=not fixed)
    data: dict[str, Any] = {"fixed": fixed}
    if not fixed:
        restart_clock(session, case, settings)
        assert case.due_at is not None
        data["due_at"] = engine.iso(case.due_at)
        case.replied_at = None
    flow = _flow(case)
    _complete(session, case, flow, task, data, "fixed" if fixed else "not_fixed", note)
    svc.event_add(session, case, actor, "verify" if fixed else "verify_failed", note)


@_step("close", "centre", "结案", "Close")
def _close(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    task = _centre_task(session, case, "close")
    note = _text(params, "note", required=False)
    flow = _flow(case)
    _complete(session, case, flow, task, {}, "closed", note)
    svc.event_add(session, case, actor, "close", note)
    closed(session, case)


@_step("callback", "centre", "回访", "Call back")
def _callback(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Call the resident back (回访): unsatisfied reopens the case once, otherwise it closes."""
    task = _centre_task(session, case, "callback")
    satisfaction = params.get("satisfaction")
    if satisfaction not in SATISFACTION:
        raise Invalid("satisfaction", f"one of {', '.join(SATISFACTION)} / 满意度须为满意、基本满意或不满意")
    note = _text(params, "note", required=False)
    reopen = satisfaction == "unsatisfied" and case.reopens < 1
    data: dict[str, Any] = {"reopen": reopen}
    case.satisfaction = str(satisfaction)
    if reopen:
        case.reopens += 1
        case.replied_at = None
        restart_clock(session, case, settings)
        assert case.due_at is not None
        data["due_at"] = engine.iso(case.due_at)
    flow = _flow(case)
    _complete(session, case, flow, task, data, str(satisfaction), note)
    svc.event_add(session, case, actor, "callback", note, detail={"satisfaction": satisfaction,
                                                                   "reopened": reopen})
    if not reopen:
        closed(session, case)


@_step("decide", "centre", "审批决定", "Decide")
def _decide(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    task = _centre_task(session, case, "decide")
    approved = _bool(params, "approved")
    note = _text(params, "note", required=not approved)
    case.reply = note or case.reply
    flow = _flow(case)
    _complete(session, case, flow, task, {"approved": approved}, "approved" if approved else "refused", note)
    svc.event_add(session, case, actor, "approve" if approved else "refuse", note)
    closed(session, case)


@_step("reopen", "centre", "重办", "Reopen")
def _reopen(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Reopen a closed case (重新办理): it starts again at dispatch."""
    if case.status != "closed":
        raise Conflict("only a closed case can be reopened / 仅已办结的工单可重办", "action")
    note = _text(params, "note")
    wf = case.workflow
    flow = engine.start(engine.parse(wf.bpmn, wf.process_id))
    _skip_to_dispatch(flow)
    case.reopens += 1
    case.closed_at = case.replied_at = None
    case.satisfaction = None
    sync(session, case, flow)
    svc.event_add(session, case, actor, "reopen", note)


def _skip_to_dispatch(flow: Any) -> None:
    """A reopened city-management case was filed already: complete `file` as valid."""
    for r in engine.ready(flow):
        if r.step == "file":
            engine.complete(flow, r.id, {"valid": True})


@_step("merge", "centre", "合并", "Merge")
def _merge(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Merge this case into another open one (工单合并): it shares that case's outcome."""
    into = svc.case_by_number(session, str(params.get("into") or ""))
    if into.id == case.id or into.merged_into_id is not None or into.status not in svc.OPEN_STATUSES:
        raise Invalid("into", "merge into another open case / 只能合并到另一件办理中的工单")
    if case.status not in svc.OPEN_STATUSES:
        raise Conflict("only an open case can be merged / 仅办理中的工单可合并", "action")
    if into.dispatch_department_id != case.dispatch_department_id:
        raise Invalid("into", "both cases must be held by the same centre / 两件工单须属同一受理中心")
    for task in svc.open_tasks(session, case):
        task.state, task.done_at = "cancelled", utcnow()
    case.status, case.merged_into_id, case.engine_state, case.step = "merged", into.id, None, ""
    svc.event_add(session, case, actor, "merge", f"merged into {into.number} / 已合并至 {into.number}",
                  detail={"into": into.number})
    svc.event_add(session, into, actor, "merged_in", f"{case.number} merged in / 已并入 {case.number}",
                  detail={"from": case.number}, public=False)


def closed(session: Session, case: Case) -> None:
    """A case closed: the cases merged into it close with the same answer, and each reporter is told."""
    for other in session.scalars(select(Case).where(Case.merged_into_id == case.id,
                                                    Case.closed_at.is_(None))):
        other.reply, other.closed_at = case.reply, utcnow()
        svc.event_add(session, other, SYSTEM, "close",
                      f"closed with {case.number}: {case.reply}"[:2000] + f" / 随 {case.number} 一并办结",
                      detail={"with": case.number})
    events.publish(events.CASES_CLOSED, session=session, case=case)


# -- the handling department's steps ------------------------------------------------------------


@_step("accept", "handler", "签收", "Accept")
def _accept(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    task = _handler_task(session, actor, case, params)
    if task.state != "open":
        raise Conflict("this task was accepted already / 该任务已签收", "action")
    task.state, task.accepted_at = "accepted", utcnow()
    if task.role == "lead":
        case.status = "handling"
    svc.event_add(session, case, actor, "accept", detail={"department": task.department.code,
                                                          "department_name": task.department.name})


@_step("return", "handler", "退单", "Return")
def _return(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Send the case back to the centre (退单) with a reason: not ours, or not enough to act on."""
    task = _handler_task(session, actor, case, params)
    reason = _text(params, "reason", limit=2000)
    flow = _flow(case)
    for other in svc.open_tasks(session, case, step="handle"):
        if other.id != task.id:  # co-handlers stop too: the centre dispatches again
            engine.complete(flow, other.engine_task, {"result": "cancelled"})
            other.state, other.done_at, other.outcome = "cancelled", utcnow(), "cancelled"
    case.returns += 1
    _complete(session, case, flow, task, {"result": "return"}, "returned", reason)
    svc.event_add(session, case, actor, "return", reason, detail={"department": task.department.code},
                  public=False)


@_step("extend", "handler", "申请延期", "Ask for an extension")
def _extend(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    task = _handler_task(session, actor, case, params)
    if task.role != "lead":
        raise Forbidden("only the lead department may ask for more time / 仅主办部门可申请延期")
    if case.extension_pending:
        raise Conflict("an extension is waiting for approval already / 已有待审批的延期申请", "action")
    days = params.get("days")
    room = settings.cases_extension_max_days - case.extended_days
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= room:
        raise Invalid("days", f"1-{room} working days (at most {settings.cases_extension_max_days} in all) / "
                              f"延期须为 1-{room} 个工作日")
    reason = _text(params, "reason", limit=2000)
    case.extension_pending = days
    svc.event_add(session, case, actor, "extend", reason, detail={"days": days}, public=False)


@_step("reply", "handler", "答复", "Reply")
def _reply(session: Session, actor: Actor, case: Case, params: Params, settings: Settings) -> None:
    """Answer the case (办理答复/处置反馈); the lead's answer is what the resident reads."""
    task = _handler_task(session, actor, case, params)
    text = _text(params, "reply")
    if task.role == "lead":
        case.reply = text
    flow = _flow(case)
    _complete(session, case, flow, task, {"result": "done"}, "replied", text)
    svc.event_add(session, case, actor, "reply", text, detail={"department": task.department.code,
                                                               "role": task.role})


# -- the reporter (评价) ------------------------------------------------------------------------


def case_evaluate(session: Session, actor: Actor, number: str, satisfaction: str, *, token: str | None = None,
                  note: str = "") -> Case:
    """The reporter rates a closed case (评价): signed in as the reporter, or with the case's token."""
    case = svc.case_by_number(session, number)
    own = actor.user_id is not None and actor.user_id == case.reporter_user_id
    if not own and not (token and crypto.constant_time_equal(token, case.token)):
        raise Forbidden("only the reporter may rate this case / 仅诉求人可评价")
    if case.status != "closed":
        raise Conflict("a case can be rated once it is closed / 工单办结后方可评价", "action")
    if satisfaction not in SATISFACTION:
        raise Invalid("satisfaction", f"one of {', '.join(SATISFACTION)} / 满意度无效")
    if case.evaluation is not None:
        raise Conflict("this case was rated already / 已评价", "satisfaction")
    case.evaluation = satisfaction
    svc.event_add(session, case, actor, "evaluate", note[:2000], detail={"satisfaction": satisfaction})
    return case


# -- the clock (时限监控) ------------------------------------------------------------------------


@dataclass
class Sweep:
    warned: int = 0
    overdue: int = 0
    escalated: list[str] = field(default_factory=list)


def sweep(session: Session, now: dt.datetime | None = None) -> Sweep:
    """Mark tasks due soon (预警) and overdue (超期), and escalate overdue cases automatically: the
    workflow's timer event fires and the case is pressed (自动督办)."""
    now = now or utcnow()
    out = Sweep()
    for task in session.scalars(select(CaseTask).where(
            CaseTask.state.in_(("open", "accepted")), CaseTask.warn_at <= now, CaseTask.warned.is_(False))):
        task.warned = True
        out.warned += 1
    late = list(session.scalars(select(CaseTask).where(
        CaseTask.state.in_(("open", "accepted")), CaseTask.due_at <= now, CaseTask.overdue.is_(False))))
    for case_id in sorted({t.case_id for t in late}):
        case = session.get(Case, case_id)
        assert case is not None
        for task in late:
            if task.case_id == case_id:
                task.overdue = True
                out.overdue += 1
        case.overdue = True
        if case.engine_state is not None:
            flow = engine.load(case.engine_state)
            engine.fire_timers(flow)
            case.engine_state = engine.dump(flow)
        escalate(session, SYSTEM, case, "overdue: escalated automatically / 已超期，自动督办", auto=True)
        out.escalated.append(case.number or "")
    session.flush()
    return out


def actions_for(session: Session, actor: Actor, case: Case) -> list[str]:
    """The steps this actor may take on this case now (for buttons)."""
    out: list[str] = []
    centre = case.dispatch_department
    is_centre = access.decide(actor, "cases.dispatch", Target("case", case.number, centre.id, centre.path),
                              session).allowed
    open_steps = {t.step for t in svc.open_tasks(session, case)}
    if is_centre:
        out += [s for s in ("file", "dispatch", "verify", "close", "callback", "decide") if s in open_steps]
        if "handle" in open_steps:
            out += ["reassign", "escalate"]
        if case.extension_pending:
            out.append("decide_extension")
        if case.status == "closed":
            out.append("reopen")
        if case.status in svc.OPEN_STATUSES:
            out.append("merge")
    for task in svc.open_tasks(session, case, step="handle"):
        dept: Department = task.department
        if access.decide(actor, "cases.handle", Target("case_task", task.id, dept.id, dept.path),
                         session).allowed:
            out += (["accept"] if task.state == "open" else []) + ["reply", "return"]
            if task.role == "lead" and not case.extension_pending:
                out.append("extend")
            break
    return list(dict.fromkeys(out))
