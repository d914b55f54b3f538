"""A case through each shipped workflow, through the service layer, on both databases."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.orm import Session

from cityos.cases import service as cases
from cityos.cases import steps
from cityos.core.access import ANONYMOUS, Actor
from cityos.core.auth import user_actor
from cityos.core.errors import Conflict, Forbidden, Invalid
from cityos.core.service import user_by_name
from tests.cases.conftest import HOTLINE, PARKS, POINT, POLICE, CasesCity


def who(session: Session, username: str) -> Actor:
    return user_actor(user_by_name(session, username))


def test_hotline_case_runs_from_report_to_close(cases_city: CasesCity) -> None:
    with cases_city.sessions() as s:
        got = cases.case_intake(s, ANONYMOUS, {"category": "noise", "description": "楼下KTV半夜噪音扰民",
                                               "reporter_phone": "13900001111", **POINT}, channel="web")
        number = got.case.number
        assert number and number.startswith("RX") and got.case.status == "new"
        s.commit()
    with cases_city.sessions() as s:
        agent = who(s, "hotline_agent")
        case = steps.case_act(s, agent, number, "dispatch", {"department": POLICE, "co": ["220200-hbj"]})
        assert case.status == "dispatched" and case.due_at is not None
        assert {t.department.code for t in cases.open_tasks(s, case)} == {POLICE, "220200-hbj"}
        s.commit()
    with cases_city.sessions() as s:
        police = who(s, "police_staff")
        with pytest.raises(Forbidden):
            steps.case_act(s, who(s, "parks_staff"), number, "accept")
        with pytest.raises(Conflict):
            steps.case_act(s, agent, number, "callback", {"satisfaction": "satisfied"})
        case = steps.case_act(s, police, number, "accept")
        assert case.status == "handling"
        steps.case_act(s, police, number, "reply", {"reply": "已责令KTV整改"})
        assert case.status == "handling"  # the co-handler has not answered yet
        steps.case_act(s, who(s, "env_staff"), number, "reply", {"reply": "已配合检测噪声"})
        assert case.status == "replied" and case.reply == "已责令KTV整改"
        s.commit()
    with cases_city.sessions() as s:
        agent = who(s, "hotline_agent")
        steps.case_act(s, agent, number, "verify", {"fixed": True})
        case = steps.case_act(s, agent, number, "callback", {"satisfaction": "unsatisfied"})
        assert case.status == "dispatched" and case.reopens == 1  # unsatisfied reopens once
        police = who(s, "police_staff")
        steps.case_act(s, police, number, "reply", {"reply": "再次整改"})
        steps.case_act(s, who(s, "env_staff"), number, "reply", {"reply": "复测达标"})
        steps.case_act(s, agent, number, "verify", {"fixed": True})
        case = steps.case_act(s, agent, number, "callback", {"satisfaction": "unsatisfied"})
        assert case.status == "closed" and case.closed_at is not None  # only once
        actions = [e.action for e in cases.timeline(s, case)]
        assert actions[0] == "receive" and actions.count("callback") == 2
        s.commit()


def test_return_goes_back_to_the_centre(cases_city: CasesCity) -> None:
    with cases_city.sessions() as s:
        number = cases.case_intake(s, ANONYMOUS, {"category": "tree", "description": "大树倒在路上",
                                                  **POINT}).case.number
        agent = who(s, "hotline_agent")
        steps.case_act(s, agent, number, "dispatch", {"department": POLICE, "co": [PARKS]})
        case = steps.case_act(s, who(s, "police_staff"), number, "return", {"reason": "不属于公安职责"})
        assert case.status == "new" and case.returns == 1
        assert [t.step for t in cases.open_tasks(s, case)] == ["dispatch"]
        with pytest.raises(Conflict):  # not theirs any more
            steps.case_act(s, who(s, "police_staff"), number, "return", {"reason": "again"})
        steps.case_act(s, agent, number, "dispatch", {"department": PARKS})
        assert case.status == "dispatched" and case.department.code == PARKS


def test_citymgmt_seven_steps(cases_city: CasesCity) -> None:
    with cases_city.sessions() as s:
        number = cases.case_intake(s, ANONYMOUS, {"category": "manhole", "description": "井盖缺失",
                                                  **POINT}, channel="web").case.number
        assert number.startswith("CG")
        cm = who(s, "cm_staff")
        with pytest.raises(Conflict):
            steps.case_act(s, cm, number, "dispatch", {"department": PARKS})
        steps.case_act(s, cm, number, "file", {"valid": True})
        case = steps.case_act(s, cm, number, "dispatch", {"department": PARKS})
        parks = who(s, "parks_staff")
        steps.case_act(s, parks, number, "reply", {"reply": "已更换井盖"})
        steps.case_act(s, cm, number, "verify", {"fixed": False, "note": "井盖未固定"})
        assert case.status == "dispatched"
        steps.case_act(s, parks, number, "reply", {"reply": "已固定"})
        steps.case_act(s, cm, number, "verify", {"fixed": True})
        case = steps.case_act(s, cm, number, "close")
        assert case.status == "closed"


def test_overdue_cases_escalate(cases_city: CasesCity) -> None:
    with cases_city.sessions() as s:
        number = cases.case_intake(s, ANONYMOUS, {"category": "noise", "description": "噪音",
                                                  **POINT}).case.number
        steps.case_act(s, who(s, "hotline_agent"), number, "dispatch", {"department": POLICE})
        case = cases.case_by_number(s, number)
        assert case.due_at is not None
        report = steps.sweep(s, now=case.due_at + dt.timedelta(minutes=1))
        assert report.escalated == [number] and case.overdue and case.escalations == 1
        assert steps.sweep(s, now=case.due_at + dt.timedelta(minutes=2)).escalated == []


def test_extension_and_reassign(cases_city: CasesCity) -> None:
    with cases_city.sessions() as s:
        number = cases.case_intake(s, ANONYMOUS, {"category": "noise", "description": "噪音",
                                                  **POINT}).case.number
        agent = who(s, "hotline_agent")
        case = steps.case_act(s, agent, number, "dispatch", {"department": POLICE})
        due = case.due_at
        with pytest.raises(Invalid):
            steps.case_act(s, who(s, "police_staff"), number, "extend", {"days": 11, "reason": "x"})
        steps.case_act(s, who(s, "police_staff"), number, "extend", {"days": 3, "reason": "需要调查"})
        steps.case_act(s, agent, number, "decide_extension", {"approved": True})
        assert case.due_at is not None and due is not None and case.due_at > due and case.extended_days == 3
        steps.case_act(s, agent, number, "reassign", {"department": PARKS, "note": "属园林职责"})
        assert case.department.code == PARKS
        steps.case_act(s, who(s, "parks_staff"), number, "accept")
        assert case.status == "handling"


def test_hotline_centre_is_where_the_case_waits(cases_city: CasesCity) -> None:
    with cases_city.sessions() as s:
        cases.case_intake(s, ANONYMOUS, {"category": "noise", "description": "噪音", **POINT})
        page = cases.queue(s, who(s, "hotline_agent"), HOTLINE, "new")
        assert page.total == 1 and page.items[0].step == "dispatch"
