"""Early warning (监测预警): rules on indicators, their forecasts and sensing alerts, and the
warnings they raise.

A rule fires on an indicator reaching `min_level` ("indicator"), on its forecast reaching it
("forecast"), or on a sensing alert opening that matches `match` ("alert": severity, the
sensing rule's name or id, the alert's department). There is at most one open warning per
(rule, cause): `source_key` is indicator:<id>, forecast:<id>, alert:<id> or manual:<rule id>.
An indicator's warning closes itself when the indicator is back under the level; an alert's when
the alert is resolved; any can be closed by hand.

Actions: "notify" (the departments in `notify` are told: recorded on the warning and audited),
"incident" (opens an emergency incident through `cityos.ops.emergency`), "case" (registers a
case through the case engine, channel "ops"). An action that fails leaves the warning recorded
with `detail["action_error"]`, and nothing else breaks: it runs in a savepoint of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import cityos.cases.service as cases
import cityos.sensing.service as sensing
from cityos.core import access, audit, events
from cityos.core.access import SYSTEM, Actor
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, FieldError, Forbidden, Invalid, NotFound
from cityos.core.models import Department
from cityos.ops.indicators import LEVEL_ORDER, _iso, level_rank
from cityos.ops.models import INCIDENT_LEVELS, LEVELS, EarlyWarning, Indicator, WarningRule
from cityos.ops.service import department_of, require_read, target, text_of

log = logging.getLogger("cityos.ops.warnings")

ON = {"indicator": ("指标越限", "Indicator level"), "forecast": ("预测越限", "Forecast level"),
      "alert": ("感知告警", "Sensing alert")}
ACTIONS = {"notify": ("通知", "Notify"), "incident": ("启动应急事件", "Open an incident"),
           "case": ("生成工单", "Register a case")}
STATES = ("open", "closed", "all")
MATCH_KEYS = ("severity", "rule", "department")
ALERT_SEVERITIES = ("info", "warning", "critical")


# -- rules (预警规则) -------------------------------------------------------------------------------


_text = text_of


def rule_upsert(session: Session, actor: Actor, spec: Mapping[str, Any]) -> WarningRule:
    """Create or replace a warning rule by code (ops.write on its department)."""
    errors: list[FieldError] = []
    code = _text(spec, "code", errors, 64, True)
    name = _text(spec, "name", errors, 200, True)
    name_en = _text(spec, "name_en", errors, 200)
    on = spec.get("on")
    if on not in ON:
        errors.append(FieldError("on", f"one of {', '.join(ON)} / 触发方式无效"))
    indicator = None
    if on in ("indicator", "forecast"):
        ind_code = spec.get("indicator")
        if not ind_code:
            errors.append(FieldError("indicator", "required for indicator and forecast rules / 须指定指标"))
        else:
            indicator = session.scalar(select(Indicator).where(Indicator.code == str(ind_code)))
            if indicator is None:
                errors.append(FieldError("indicator", f"unknown indicator {str(ind_code)[:64]} / 指标不存在"))
    min_level = spec.get("min_level") or "warning"
    if min_level not in LEVEL_ORDER[1:]:
        errors.append(FieldError("min_level", "one of attention, warning, critical / 触发等级无效"))
    level = spec.get("level") or "warning"
    if level not in LEVEL_ORDER[1:]:
        errors.append(FieldError("level", "one of attention, warning, critical / 预警级别无效"))
    match = spec.get("match") or {}
    if not isinstance(match, Mapping) or set(match) - set(MATCH_KEYS):
        errors.append(FieldError("match", f"an object with keys among {', '.join(MATCH_KEYS)} / "
                                          "匹配条件无效"))
    elif match.get("severity") is not None and match["severity"] not in ALERT_SEVERITIES:
        errors.append(FieldError("match", "severity is info, warning or critical / 告警级别无效"))
    elif match.get("department") and session.scalar(
            select(Department.id).where(Department.code == str(match["department"]))) is None:
        errors.append(FieldError("match", f"unknown department {str(match['department'])[:32]} / 部门不存在"))
    notify = spec.get("notify") or []
    if not isinstance(notify, list) or not all(isinstance(c, str) for c in notify):
        errors.append(FieldError("notify", "a list of department codes / 应为部门代码列表"))
    else:
        known = set(session.scalars(select(Department.code).where(Department.code.in_(notify))))
        for c in notify:
            if c not in known:
                errors.append(FieldError("notify", f"unknown department {c[:32]} / 部门不存在"))
    action = spec.get("action") or "notify"
    if action not in ACTIONS:
        errors.append(FieldError("action", f"one of {', '.join(ACTIONS)} / 处置动作无效"))
    incident_type = _text(spec, "incident_type", errors, 64, action == "incident")
    incident_level = spec.get("incident_level")
    if incident_level is not None and incident_level not in INCIDENT_LEVELS:
        errors.append(FieldError("incident_level", "one of I, II, III, IV / 事件级别无效"))
    case_category = _text(spec, "case_category", errors, 64, action == "case")
    dept = None
    try:
        dept = department_of(session, spec.get("department") or actor.department_code)
    except Invalid as exc:
        errors.extend(exc.errors)
    if errors:
        raise Invalid.many(errors)
    assert dept is not None
    access.require(actor, "ops.write", target("ops.warning_rule", dept, code), session)
    rule = session.scalar(select(WarningRule).where(WarningRule.code == code))
    if rule is not None and rule.department_id != dept.id:
        old = session.get(Department, rule.department_id)
        access.require(actor, "ops.write", target("ops.warning_rule", old, code), session)
    created = rule is None
    if rule is None:
        rule = WarningRule(code=code)
        session.add(rule)
    rule.name, rule.name_en, rule.on = name, name_en, on
    rule.indicator_id = indicator.id if indicator is not None else None
    rule.min_level, rule.level, rule.match = min_level, level, dict(match)
    rule.notify, rule.action = list(notify), action
    rule.incident_type, rule.incident_level, rule.case_category = incident_type, incident_level, case_category
    rule.active, rule.department_id = bool(spec.get("active", True)), dept.id
    session.flush()
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="ops.warning_rule.create" if created else "ops.warning_rule.update",
                 object_type="ops.warning_rule", object_id=code,
                 detail={"on": on, "action": action, "indicator": spec.get("indicator")})
    return rule


def rule_list(session: Session, actor: Actor) -> list[WarningRule]:
    require_read(session, actor)
    return list(session.scalars(select(WarningRule).order_by(WarningRule.code)))


def rule_public(session: Session, rule: WarningRule) -> dict[str, Any]:
    dept = session.get(Department, rule.department_id)
    ind = session.get(Indicator, rule.indicator_id) if rule.indicator_id else None
    return {"code": rule.code, "name": rule.name, "name_en": rule.name_en, "on": rule.on,
            "indicator": ind.code if ind else None, "min_level": rule.min_level,
            "match": dict(rule.match or {}),
            "level": rule.level, "notify": list(rule.notify or []), "action": rule.action,
            "incident_type": rule.incident_type, "incident_level": rule.incident_level,
            "case_category": rule.case_category, "active": rule.active,
            "department": dept.code if dept else None}


# -- raising and closing (发布与解除) ---------------------------------------------------------------


def _open(session: Session, rule_id: int, source_key: str) -> EarlyWarning | None:
    return session.scalars(select(EarlyWarning).where(
        EarlyWarning.rule_id == rule_id, EarlyWarning.source_key == source_key, EarlyWarning.state == "open")
        .order_by(EarlyWarning.id.desc()).limit(1)).first()


def _act(session: Session, actor: Actor, rule: WarningRule, w: EarlyWarning, lon: float | None,
         lat: float | None) -> None:
    """The rule's action, in a savepoint: a failure is recorded on the warning, nothing else."""
    dept = session.get(Department, rule.department_id)
    detail = dict(w.detail or {})
    try:
        with session.begin_nested():
            if rule.action == "incident":
                from cityos.ops import emergency

                inc = emergency.incident_open(
                    session, actor, type_code=rule.incident_type or "", level=rule.incident_level or "IV",
                    title=w.title[:300], description=detail.get("description"), lon=lon, lat=lat,
                    department=dept.code if dept else None, warning_id=w.id)
                w.incident_id = inc.id
            elif rule.action == "case":
                spec: dict[str, Any] = {"category": rule.case_category, "title": w.title[:200],
                                        "description": detail.get("description") or w.title}
                if lon is not None and lat is not None:
                    spec.update(lon=lon, lat=lat)
                else:
                    spec["address"] = "运行中心预警"
                intake = cases.case_intake(session, SYSTEM, spec, channel="ops")
                w.case_number = intake.case.number
            session.flush()
    except Exception as exc:  # noqa: BLE001 - the warning stands whatever the action did
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        detail["action_error"] = reason
        log.warning("warning %s: action %s of rule %s failed: %s", w.id, rule.action, rule.code, reason)
    if rule.notify:
        detail["notified"] = list(rule.notify)
    w.detail = detail
    audit.append(session, actor=actor.name, department=actor.department_code, action="ops.warning.raise",
                 object_type="ops.warning", object_id=w.id,
                 detail={"rule": rule.code, "level": w.level, "notify": list(rule.notify or []),
                         "action": rule.action, "incident_id": w.incident_id, "case": w.case_number,
                         "action_error": detail.get("action_error")})


def _raise(session: Session, actor: Actor, rule: WarningRule, source_key: str, title: str,
           detail: dict[str, Any], now: dt.datetime, lon: float | None = None,
           lat: float | None = None) -> EarlyWarning:
    w = EarlyWarning(rule_id=rule.id, level=rule.level, state="open", title=title[:300], detail=detail,
                     source_key=source_key, raised_at=now)
    session.add(w)
    session.flush()
    _act(session, actor, rule, w, lon, lat)
    session.flush()
    return w


def _close(session: Session, w: EarlyWarning, by: str, note: str | None, now: dt.datetime) -> None:
    w.state, w.closed_at = "closed", now
    w.detail = {**(w.detail or {}), "closed_by": by, **({"close_note": note} if note else {})}
    session.flush()


def _indicator_cause(rule: WarningRule, ind: Indicator) -> tuple[str, str | None]:
    if rule.on == "forecast":
        return f"forecast:{ind.id}", (ind.forecast or {}).get("level")
    return f"indicator:{ind.id}", ind.level


def _indicator_title(rule: WarningRule, ind: Indicator) -> tuple[str, dict[str, Any]]:
    unit = ind.unit or ""
    if rule.on == "forecast":
        f = ind.forecast or {}
        name = LEVELS.get(f.get("level"), ("",))[0]
        title = (f"{ind.name} 预计 {f.get('at')} 达 {f.get('value')}{unit}（{name}）"
                 f" / {ind.name_en or ind.code} forecast {f.get('value')}{unit} at {f.get('at')}")
        return title, {"indicator": ind.code, "value": ind.value, "forecast": dict(f),
                       "description": title}
    title = (f"{ind.name} 当前 {ind.value}{unit}（{LEVELS.get(ind.level or '', ('',))[0]}） / "
             f"{ind.name_en or ind.code} at {ind.value}{unit} ({ind.level})")
    return title, {"indicator": ind.code, "value": ind.value, "level": ind.level, "description": title}


def evaluate(session: Session, indicator: Indicator, now: dt.datetime | None = None) -> list[EarlyWarning]:
    """Judge the indicator and forecast rules of one indicator: raise a warning when one fires
    and none is open for its cause; close the open one when the level is back under. No data
    neither raises nor closes. Returns the warnings raised."""
    now = now or utcnow()
    raised = []
    for rule in session.scalars(select(WarningRule).where(
            WarningRule.indicator_id == indicator.id, WarningRule.active.is_(True),
            WarningRule.on.in_(("indicator", "forecast"))).order_by(WarningRule.id)):
        key, level = _indicator_cause(rule, indicator)
        if level is None:
            continue
        open_ = _open(session, rule.id, key)
        firing = level_rank(level) >= level_rank(rule.min_level)
        if firing and open_ is None:
            title, detail = _indicator_title(rule, indicator)
            raised.append(_raise(session, SYSTEM, rule, key, title, detail, now))
        elif not firing and open_ is not None:
            _close(session, open_, "rule", f"back to {level} / 已恢复至{LEVELS[level][0]}", now)
    return raised


def _matches(session: Session, rule: WarningRule, alert: Any) -> bool:
    m = rule.match or {}
    if m.get("severity") and getattr(alert, "severity", None) != m["severity"]:
        return False
    if m.get("rule"):
        want = str(m["rule"])
        rule_id = getattr(alert, "rule_id", None)
        if want != str(rule_id) and want != sensing.rule_code_of(session, rule_id):
            return False
    if m.get("department"):
        dept_id = session.scalar(select(Department.id).where(Department.code == str(m["department"])))
        if dept_id is None or getattr(alert, "department_id", None) != dept_id:
            return False
    return True


def on_alert_opened(session: Session, alert: Any, reopened: bool = False, **_: Any) -> None:
    """A sensing alert opened: raise a warning for every alert rule it matches (once per alert).
    Never fails the alert's own transaction."""
    try:
        with session.begin_nested():
            rules = list(session.scalars(select(WarningRule).where(
                WarningRule.on == "alert", WarningRule.active.is_(True)).order_by(WarningRule.id)))
            if not rules:
                return
            key = f"alert:{alert.id}"
            point = None
            for rule in rules:
                if not _matches(session, rule, alert) or _open(session, rule.id, key) is not None:
                    continue
                if point is None and getattr(alert, "thing_id", None) is not None:
                    point = sensing.thing_point(session, alert.thing_id) or ()
                msg = getattr(alert, "message", "") or ""
                title = f"感知告警：{msg} / sensing alert {alert.id} ({getattr(alert, 'severity', '')})"
                detail = {"alert_id": alert.id, "severity": getattr(alert, "severity", None),
                          "value": getattr(alert, "value", None),
                          "thing_id": getattr(alert, "thing_id", None),
                          "description": title}
                lon, lat = point if point else (None, None)
                _raise(session, SYSTEM, rule, key, title, detail, utcnow(), lon, lat)
    except Exception:  # noqa: BLE001
        log.exception("early warning on sensing alert %s failed", getattr(alert, "id", None))


def on_alert_resolved(session: Session, alert: Any, **_: Any) -> None:
    """The alert is resolved: its warnings close."""
    try:
        with session.begin_nested():
            for w in session.scalars(select(EarlyWarning).where(
                    EarlyWarning.source_key == f"alert:{alert.id}", EarlyWarning.state == "open")):
                _close(session, w, "rule", "alert resolved / 告警已解除", utcnow())
    except Exception:  # noqa: BLE001
        log.exception("closing warnings of sensing alert %s failed", getattr(alert, "id", None))


events.subscribe(events.SENSING_ALERT_OPENED, on_alert_opened)
events.subscribe(events.SENSING_ALERT_RESOLVED, on_alert_resolved)


def _rule_by_code(session: Session, code: str) -> WarningRule:
    rule = session.scalar(select(WarningRule).where(WarningRule.code == code))
    if rule is None:
        raise NotFound("warning rule / 预警规则", code)
    return rule


def warning_raise(session: Session, actor: Actor, rule_code: str, note: str | None = None) -> EarlyWarning:
    """Fire a rule now, by hand (手动预警; demos and drills). ops.command on the rule's department.
    One open manual warning per rule: close it before raising it again."""
    rule = _rule_by_code(session, rule_code)
    dept = session.get(Department, rule.department_id)
    access.require(actor, "ops.command", target("ops.warning_rule", dept, rule.code), session)
    key = f"manual:{rule.id}"
    if _open(session, rule.id, key) is not None:
        raise Conflict("this rule already has an open manual warning; close it first / "
                       "该规则已有未关闭的手动预警，请先关闭", "rule")
    ind = session.get(Indicator, rule.indicator_id) if rule.indicator_id else None
    title = f"{rule.name}（手动触发） / {rule.name_en or rule.code} (raised by hand)"
    detail: dict[str, Any] = {"manual": True, "by": actor.name, "description": note or title}
    if note:
        detail["note"] = str(note)[:1000]
    if ind is not None:
        detail.update(indicator=ind.code, value=ind.value, level=ind.level)
    return _raise(session, actor, rule, key, title, detail, utcnow())


def warning_list(session: Session, actor: Actor, state: str = "open", limit: int = 200,
                 told: str | None = None) -> list[EarlyWarning]:
    """The latest warnings; with `told`, only those whose rule told that department (通知本部门)."""
    require_read(session, actor)
    if state not in STATES:
        raise Invalid("state", "one of open, closed, all / 状态无效")
    q = select(EarlyWarning)
    if state != "all":
        q = q.where(EarlyWarning.state == state)
    q = q.order_by(EarlyWarning.raised_at.desc(), EarlyWarning.id.desc()).limit(limit)
    rows = list(session.scalars(q))
    return [w for w in rows if told in told_of(w)] if told else rows


def told_of(w: EarlyWarning) -> list[str]:
    """The department codes the warning's rule told (被通知部门)."""
    return list((w.detail or {}).get("notified") or [])


def warning_acknowledge(session: Session, actor: Actor, warning_id: int,
                        note: str | None = None) -> EarlyWarning:
    """A department that was told signs for the warning (签收): who, when, and what it will do. Only a
    told department may sign, once; the operations center sees who has and who has not."""
    require_read(session, actor)
    w = session.get(EarlyWarning, warning_id)
    if w is None:
        raise NotFound("warning / 预警", warning_id)
    dept = actor.department_code or ""
    if dept not in told_of(w):
        raise Forbidden("only a department the warning was sent to signs for it / 仅被通知部门可签收")
    detail = dict(w.detail or {})
    signed = dict(detail.get("acknowledged") or {})
    if dept in signed:
        raise Conflict("your department has already signed for this warning / 本部门已签收", "warning")
    signed[dept] = {"by": actor.name, "at": _iso(utcnow()), "note": (note or "").strip()[:500] or None}
    w.detail = {**detail, "acknowledged": signed}
    audit.append(session, actor=actor.name, department=dept, action="ops.warning.acknowledge",
                 object_type="ops.warning", object_id=w.id, detail={"note": (note or "")[:200]})
    return w


def warning_close(session: Session, actor: Actor, warning_id: int, note: str | None = None) -> EarlyWarning:
    """Close a warning by hand (解除预警): ops.command on its rule's department."""
    w = session.get(EarlyWarning, warning_id)
    if w is None:
        raise NotFound("warning / 预警", warning_id)
    rule = session.get(WarningRule, w.rule_id)
    dept = session.get(Department, rule.department_id) if rule else None
    access.require(actor, "ops.command", target("ops.warning", dept, w.id), session)
    if w.state != "open":
        raise Conflict("the warning is already closed / 预警已解除", "state")
    _close(session, w, actor.name, (note or "")[:1000] or None, utcnow())
    audit.append(session, actor=actor.name, department=actor.department_code, action="ops.warning.close",
                 object_type="ops.warning", object_id=w.id, detail={"note": (note or "")[:200]})
    return w


def warning_public(w: EarlyWarning, rule: WarningRule | None = None) -> dict[str, Any]:
    detail = dict(w.detail or {})
    return {"id": w.id, "rule": rule.code if rule else None, "rule_name": rule.name if rule else None,
            "level": w.level, "level_name": list(LEVELS.get(w.level, (w.level, w.level))), "state": w.state,
            "title": w.title, "detail": detail, "source_key": w.source_key, "incident_id": w.incident_id,
            "case_number": w.case_number, "notify": detail.get("notified", []),
            "acknowledged": detail.get("acknowledged", {}),
            "action_error": detail.get("action_error"), "raised_at": _iso(w.raised_at),
            "closed_at": _iso(w.closed_at)}


# -- the demo city's rules (演示预警规则) ----------------------------------------------------------

C = "220200"
DEFAULTS: tuple[dict[str, Any], ...] = (
    {"code": "aqi-heavy-pollution", "name": "AQI 达到预警级别，启动重污染天气应急",
     "name_en": "AQI at warning: heavy pollution response", "on": "indicator", "indicator": "env.aqi",
     "min_level": "warning", "level": "warning", "action": "incident", "incident_type": "heavy-pollution",
     "incident_level": "IV", "notify": [f"{C}-hbj"]},
    {"code": "aqi-forecast", "name": "AQI 预测将达预警级别", "name_en": "AQI forecast to reach warning",
     "on": "forecast", "indicator": "env.aqi", "min_level": "warning", "level": "attention",
     "action": "notify", "notify": [f"{C}-hbj"]},
    {"code": "pipe-burst", "name": "管网压力骤降严重告警，启动爆管应急",
     "name_en": "Critical pipe pressure drop: pipe burst response", "on": "alert",
     "match": {"severity": "critical", "rule": "管网压力骤降（疑似爆管）"}, "level": "critical",
     "action": "incident", "incident_type": "pipe-burst", "incident_level": "IV", "notify": [f"{C}-gsgs"]},
    {"code": "pipe-pressure-low", "name": "管网最低压力达预警级别",
     "name_en": "Lowest pipe pressure at warning",
     "on": "indicator", "indicator": "env.pipe_pressure", "min_level": "warning", "level": "warning",
     "action": "notify", "notify": [f"{C}-gsgs"]},
    {"code": "hotline-backlog", "name": "12345 在办工单积压严重", "name_en": "Hotline backlog critical",
     "on": "indicator", "indicator": "hotline.backlog", "min_level": "critical", "level": "critical",
     "action": "notify", "notify": [f"{C}-rx"]},
    {"code": "home-gas", "name": "居家燃气浓度严重超标", "name_en": "Home gas level critical",
     "on": "indicator", "indicator": "alerts.home_gas", "min_level": "critical", "level": "critical",
     "action": "incident", "incident_type": "gas-leak", "incident_level": "IV", "notify": [f"{C}-mzj"]},
)


def seed_defaults(session: Session, department_code: str) -> list[WarningRule]:
    """The demo city's warning rules (after the indicators), owned by `department_code`; departments
    the city lacks are left out of `notify`; rules already there are kept."""
    have = set(session.scalars(select(WarningRule.code)))
    indicators = set(session.scalars(select(Indicator.code)))
    depts = set(session.scalars(select(Department.code)))
    made = []
    for spec in DEFAULTS:
        if spec["code"] in have or (spec.get("indicator") and spec["indicator"] not in indicators):
            continue
        spec = {**spec, "department": department_code, "notify": [c for c in spec["notify"] if c in depts]}
        made.append(rule_upsert(session, SYSTEM, spec))
    return made
