"""Supervision and ranking (督查督办、考核问责): every figure against a hand count, the ranking
order, hotspots, the Excel export, who sees what, and bad parameters — on both databases.

The city of `cases_city` gets eight hotline cases, taken through the real steps, whose times
are then set by hand so that the figures are known (all received on Monday 2025-03-10, ISO
week 2025-W11, except H, received in February):

  case  category   lead    what happened                                  deadline
  A     noise      police  replied after 10 h, closed, satisfied          met
  B     noise      police  replied after 60 h, closed, basically satisf.  missed
  C     noise      police  returned once, sent again, escalated, open     passed, not answered
  D     pollution  env     replied after 24 h, reopened once, closed,     met
                           unsatisfied
  E     pollution  env     dispatched, open                               not yet come
  F     tree       -       received, not dispatched                       -
  G     noise      -       merged into C (does not count)                 -
  H     noise      police  received in February (outside the month)       -
"""

from __future__ import annotations

import datetime as dt
import io
import math
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import update
from sqlalchemy.orm import Session

from cityos.cases import kpi, steps
from cityos.cases import service as cases
from cityos.cases.models import Case
from cityos.core.access import ANONYMOUS, Actor
from cityos.core.auth import user_actor
from cityos.core.errors import Forbidden, Invalid, Unauthorized
from cityos.core.service import user_by_name
from cityos.core.workdays import CITY_TZ
from tests.cases.conftest import ENV, POINT, POLICE, CasesCity

T0 = dt.datetime(2025, 3, 10, 10, 0, tzinfo=CITY_TZ)  # a Monday, ISO week 2025-W11
MONTH, WEEK = "2025-03", "2025-W11"
SINCE, UNTIL = kpi.month_bounds(MONTH)
H = dt.timedelta(hours=1)
FAR = (126.57, 43.84)  # C's place: another 500 m cell than POINT's


def who(session: Session, username: str) -> Actor:
    return user_actor(user_by_name(session, username))


def _intake(s: Session, category: str) -> str:
    number = cases.case_intake(s, ANONYMOUS, {"category": category, "description": f"{category} 问题",
                                              **POINT}).case.number
    assert number
    return number


def _answer(s: Session, number: str, handler: str, satisfaction: str) -> None:
    agent = who(s, "hotline_agent")
    steps.case_act(s, who(s, handler), number, "reply", {"reply": "已处理"})
    steps.case_act(s, agent, number, "verify", {"fixed": True})
    steps.case_act(s, agent, number, "callback", {"satisfaction": satisfaction})


def _set(s: Session, number: str, **values: Any) -> None:
    s.execute(update(Case.__table__).where(Case.__table__.c.number == number).values(**values))


def build(cc: CasesCity) -> dict[str, str]:
    """The eight cases of the module docstring; returns letter -> case number."""
    n: dict[str, str] = {}
    with cc.sessions() as s:
        agent = who(s, "hotline_agent")
        for letter, category in zip("ABCDEFGH", ["noise", "noise", "noise", "pollution", "pollution", "tree",
                                                  "noise", "noise"], strict=True):
            n[letter] = _intake(s, category)
        for letter in "ABCH":
            steps.case_act(s, agent, n[letter], "dispatch", {"department": POLICE})
        for letter in "DE":
            steps.case_act(s, agent, n[letter], "dispatch", {"department": ENV})
        _answer(s, n["A"], "police_staff", "satisfied")
        _answer(s, n["B"], "police_staff", "basic")
        steps.case_act(s, who(s, "police_staff"), n["C"], "return", {"reason": "需补充地址"})
        steps.case_act(s, agent, n["C"], "dispatch", {"department": POLICE})
        steps.case_act(s, agent, n["G"], "merge", {"into": n["C"]})
        steps.case_act(s, agent, n["C"], "escalate", {"note": "请加快办理"})
        _answer(s, n["D"], "env_staff", "unsatisfied")  # reopens once
        _answer(s, n["D"], "env_staff", "unsatisfied")  # then closes
        s.commit()
    with cc.sessions() as s:
        for letter in "ABCDEFG":
            _set(s, n[letter], created_at=T0)
        _set(s, n["H"], created_at=T0 - dt.timedelta(days=20))
        _set(s, n["A"], dispatched_at=T0, replied_at=T0 + 10 * H, closed_at=T0 + 20 * H, due_at=T0 + 48 * H)
        _set(s, n["B"], dispatched_at=T0, replied_at=T0 + 60 * H, closed_at=T0 + 70 * H, due_at=T0 + 48 * H)
        _set(s, n["C"], dispatched_at=T0, due_at=T0 + 48 * H, lon=FAR[0], lat=FAR[1])
        _set(s, n["D"], dispatched_at=T0, replied_at=T0 + 24 * H, closed_at=T0 + 30 * H, due_at=T0 + 48 * H)
        _set(s, n["E"], dispatched_at=T0, due_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
        for letter, grid, district in (("A", "G1", "220202"), ("B", "G1", "220202"), ("C", "G2", "220202"),
                                       ("D", "G2", "220204")):
            _set(s, n[letter], grid=grid, district=district)
        s.commit()
    return n


@pytest.fixture
def built(cases_city: CasesCity) -> dict[str, str]:
    return build(cases_city)


def _by_key(rows: list[kpi.Row]) -> dict[str | None, kpi.Row]:
    return {r.key: r for r in rows}


def test_department_figures_match_a_hand_count(cases_city: CasesCity, built: dict[str, str]) -> None:
    with cases_city.sessions() as s:
        listed = kpi.report(s, who(s, "auditor"), by="department", since=SINCE, until=UNTIL)
    rows = _by_key(listed)
    assert [r.key for r in listed] == [POLICE, ENV, None]  # most received first
    assert set(rows) == {POLICE, ENV, None}
    police, env, undispatched = rows[POLICE], rows[ENV], rows[None]
    assert police.name == "市公安局" and undispatched.name == "（未派遣）"
    assert (police.received, police.closed, police.due, police.on_time) == (3, 2, 3, 1)  # A in time; B late, C past
    assert (police.rated, police.satisfied, police.dispatched, police.returned) == (2, 2, 3, 1)
    assert (police.overdue_open, police.escalations, police.mean_hours) == (1, 1, 35.0)  # (10 + 60) / 2
    assert police.on_time_rate == pytest.approx(1 / 3) and police.resolution_rate == pytest.approx(2 / 3)
    assert police.satisfaction_rate == 1.0 and police.return_rate == pytest.approx(1 / 3)
    assert (env.received, env.closed, env.due, env.on_time) == (2, 1, 1, 1)  # E's deadline has not come
    assert (env.rated, env.satisfied, env.dispatched, env.returned, env.overdue_open) == (1, 0, 2, 0, 0)
    assert env.mean_hours == 24.0 and env.satisfaction_rate == 0.0 and env.resolution_rate == 0.5
    assert (undispatched.received, undispatched.dispatched, undispatched.due) == (1, 0, 0)
    assert undispatched.on_time_rate is None and undispatched.mean_hours is None


def test_other_groupings(cases_city: CasesCity, built: dict[str, str]) -> None:
    with cases_city.sessions() as s:
        auditor = who(s, "auditor")
        cats = _by_key(kpi.report(s, auditor, by="category", since=SINCE, until=UNTIL))
        grids = _by_key(kpi.report(s, auditor, by="grid", since=SINCE, until=UNTIL))
        districts = _by_key(kpi.report(s, auditor, by="district", since=SINCE, until=UNTIL))
        feb = kpi.report(s, auditor, by="category", since=SINCE - dt.timedelta(days=28), until=SINCE)
        hotline_only = kpi.report(s, auditor, by="category", since=SINCE, until=UNTIL, line="citymgmt")
    assert {k: r.received for k, r in cats.items()} == {"noise": 3, "pollution": 2, "tree": 1}
    assert cats["noise"].name == "噪音扰民" and cats["noise"].name_en == "Noise"
    assert {k: (r.received, r.closed) for k, r in grids.items()} == {"G1": (2, 2), "G2": (2, 1), None: (2, 0)}
    assert grids["G2"].on_time == 1 and grids["G2"].overdue_open == 1  # D met, C past
    assert {k: r.received for k, r in districts.items()} == {"220202": 3, "220204": 1, None: 2}
    assert districts["220202"].name == "昌邑区"
    assert [(r.key, r.received) for r in feb] == [("noise", 1)]  # H
    assert hotline_only == []


def test_ranking_orders_by_the_weighted_score(cases_city: CasesCity, built: dict[str, str]) -> None:
    # police: 40 x 1/3 + 30 x 2/3 + 20 x 1 + 10 x (1 - 1/3) = 60; env: 40 + 15 + 0 + 10 = 65
    with cases_city.sessions() as s:
        ranked = kpi.ranking(s, who(s, "auditor"), MONTH)
        assert [(r.rank, r.row.key, r.score) for r in ranked] == [(1, ENV, 65.0), (2, POLICE, 60.0)]
        assert [r.row.key for r in kpi.ranking(s, who(s, "hotline_agent"), MONTH)] == [ENV, POLICE]
        mine = kpi.ranking(s, who(s, "police_staff"), MONTH)
        assert [(r.rank, r.row.key) for r in mine] == [(2, POLICE)]  # the city's rank, own row only
        assert kpi.ranking(s, who(s, "auditor"), "2025-02")[0].row.received == 1
        assert kpi.ranking(s, who(s, "auditor"), "2025-04") == []


def test_scores_leave_out_what_cannot_be_counted() -> None:
    base = dict(key="x", name="x", name_en="x", received=4, closed=2, due=0, on_time=0, rated=0, satisfied=0,
                dispatched=4, returned=1, overdue_open=0, escalations=0, mean_hours=None)
    row = kpi.Row(**base)  # type: ignore[arg-type]
    # on-time and satisfaction have nothing to count: (30 x 0.5 + 10 x 0.75) / 40
    assert kpi.score(row) == pytest.approx(56.25)
    tie = kpi.Row(**{**base, "key": "y"})  # type: ignore[arg-type]
    assert kpi.score(tie) == kpi.score(row)


def test_hotspots_count_cases_per_cell_category_and_week(cases_city: CasesCity, built: dict[str, str]) -> None:
    with cases_city.sessions() as s:
        auditor = who(s, "auditor")
        week = kpi.hotspots(s, auditor, week=WEEK)
        noise = kpi.hotspots(s, auditor, week=WEEK, category="noise")
        every = kpi.hotspots(s, auditor)
        grids = kpi.hotspots(s, auditor, week=WEEK, by="grid")
        month = kpi.hotspots(s, auditor, since=SINCE, until=UNTIL, split=False)
    assert week["type"] == "FeatureCollection"
    got = sorted((f["properties"]["category"], f["properties"]["count"], f["properties"]["cell"])
                 for f in week["features"])
    step = 500 / kpi.DEGREE_M
    here = f"{math.floor(POINT['lon'] / step)}:{math.floor(POINT['lat'] / step)}"
    there = f"{math.floor(FAR[0] / step)}:{math.floor(FAR[1] / step)}"
    assert got == sorted([("noise", 2, here), ("noise", 1, there), ("pollution", 2, here), ("tree", 1, here)])
    assert {f["properties"]["week"] for f in week["features"]} == {WEEK}
    first = week["features"][0]
    x, y = first["geometry"]["coordinates"]
    assert first["properties"]["count"] == 2 and abs(x - POINT["lon"]) <= step and abs(y - POINT["lat"]) <= step
    assert sorted(f["properties"]["count"] for f in noise["features"]) == [1, 2]
    weeks = {(f["properties"]["week"], f["properties"]["category"], f["properties"]["count"])
             for f in every["features"]}
    assert ("2025-W08", "noise", 1) in weeks and sum(c for _, _, c in weeks) == 7  # G merged does not count
    assert sorted((f["properties"]["cell"], f["properties"]["count"]) for f in month["features"]) == \
        sorted([(here, 5), (there, 1)])  # March only, categories and weeks together
    assert {f["properties"]["week"] for f in month["features"]} == {None}
    assert sorted((f["properties"]["grid"], f["properties"]["category"], f["properties"]["count"])
                  for f in grids["features"]) == [("G1", "noise", 2), ("G2", "noise", 1), ("G2", "pollution", 1)]


def test_excel_has_headers_in_both_languages_and_the_rows(cases_city: CasesCity, built: dict[str, str]) -> None:
    with cases_city.sessions() as s:
        rows = kpi.report(s, who(s, "auditor"), by="department", since=SINCE, until=UNTIL)
        ranked = kpi.ranking(s, who(s, "auditor"), MONTH)
    body = kpi.export_xlsx(rows, sheet="部门考核", more=[("排名", ranked, True)])
    book = load_workbook(io.BytesIO(body))
    assert book.sheetnames == ["部门考核", "排名"]
    sheet = [list(r) for r in book["部门考核"].iter_rows(values_only=True)]
    assert sheet[0][:3] == ["代码", "名称", "受理量"] and sheet[1][:3] == ["Code", "Name", "Received"]
    police = next(r for r in sheet[2:] if r[0] == POLICE)
    col = [c[0] for c in kpi.COLUMNS]
    assert police[col.index("received")] == 3 and police[col.index("on_time_rate")] == pytest.approx(1 / 3)
    assert len(sheet) == 2 + 3
    ranks = [list(r) for r in book["排名"].iter_rows(values_only=True)]
    assert ranks[0][:2] == ["排名", "综合得分"] and [r[:3] for r in ranks[2:]] == [[1, 65.0, ENV],
                                                                                [2, 60.0, POLICE]]


def test_who_sees_what(cases_city: CasesCity, built: dict[str, str]) -> None:
    with cases_city.sessions() as s:
        def keys(username: str) -> set[str | None]:
            return {r.key for r in kpi.report(s, who(s, username), by="department", since=SINCE, until=UNTIL)}

        assert keys("env_staff") == {ENV}
        assert keys("police_admin") == {POLICE}
        assert keys("hotline_agent") == keys("auditor") == keys("admin") == {POLICE, ENV, None}
        assert keys("parks_staff") == set()
        assert {f["properties"]["category"] for f in
                kpi.hotspots(s, who(s, "env_staff"), week=WEEK)["features"]} == {"pollution"}
        with pytest.raises(Forbidden):
            kpi.report(s, who(s, "resident"), by="department", since=SINCE, until=UNTIL)
        with pytest.raises(Unauthorized):
            kpi.ranking(s, ANONYMOUS, MONTH)


@pytest.mark.parametrize("call, field", [
    (lambda s, a: kpi.ranking(s, a, "2025-13"), "month"),
    (lambda s, a: kpi.ranking(s, a, "March"), "month"),
    (lambda s, a: kpi.hotspots(s, a, week="2025-W54"), "week"),
    (lambda s, a: kpi.hotspots(s, a, cell_m=5), "cell_m"),
    (lambda s, a: kpi.hotspots(s, a, category="nope"), "category"),
    (lambda s, a: kpi.report(s, a, by="street", since=SINCE, until=UNTIL), "by"),  # type: ignore[arg-type]
    (lambda s, a: kpi.report(s, a, by="grid", since=UNTIL, until=SINCE), "until"),
    (lambda s, a: kpi.report(s, a, by="grid", since=SINCE, until=UNTIL, line="x"), "line"),
])
def test_bad_parameters_name_the_field(cases_city: CasesCity, call: Any, field: str) -> None:
    with cases_city.sessions() as s, pytest.raises(Invalid) as err:
        call(s, who(s, "auditor"))
    assert err.value.errors[0].field == field


# -- the API ------------------------------------------------------------------------------------


def test_api_report_ranking_hotspots_and_excel(cases_city: CasesCity, built: dict[str, str]) -> None:
    client, auditor = cases_city.city.client, cases_city.headers("auditor")
    assert client is not None
    r = client.get("/api/cases/kpi", params={"by": "department", "since": "2025-03-01", "until": "2025-03-31"},
                   headers=auditor)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["since"], body["until"], body["by"]) == ("2025-03-01", "2025-03-31", "department")
    police = next(x for x in body["rows"] if x["key"] == POLICE)
    assert police["received"] == 3 and police["on_time_rate"] == pytest.approx(1 / 3)
    r = client.get("/api/cases/kpi", params={"by": "category", "since": "2025-03-10", "until": "2025-03-10"},
                   headers=auditor)
    assert {x["key"]: x["received"] for x in r.json()["rows"]} == {"noise": 3, "pollution": 2, "tree": 1}
    r = client.get("/api/cases/kpi", headers=auditor)  # this month: nothing of 2025
    assert r.status_code == 200 and r.json()["since"].endswith("-01") and r.json()["rows"] == []
    r = client.get("/api/cases/kpi", params={"until": "2025-03-15"}, headers=auditor)
    assert (r.json()["since"], r.json()["until"]) == ("2025-03-01", "2025-03-15")
    r = client.get("/api/cases/kpi", params={"since": "2025-02-03"}, headers=auditor)
    assert r.json()["until"] == "2025-02-28" and [x["received"] for x in r.json()["rows"]] == [1]  # H
    r = client.get("/api/cases/kpi/ranking", params={"month": MONTH}, headers=auditor)
    assert [(x["rank"], x["key"], x["score"]) for x in r.json()["rows"]] == [(1, ENV, 65.0), (2, POLICE, 60.0)]
    assert [w["share"] for w in r.json()["weights"]] == [0.4, 0.3, 0.2, -0.1]
    r = client.get("/api/cases/kpi/hotspots", params={"week": WEEK, "category": "noise"}, headers=auditor)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
    assert sorted(f["properties"]["count"] for f in r.json()["features"]) == [1, 2]
    r = client.get("/api/cases/kpi/hotspots", params={"week": "all"}, headers=auditor)
    assert sum(f["properties"]["count"] for f in r.json()["features"]) == 7
    for path, params in (("/api/cases/kpi.xlsx", {"since": "2025-03-01", "until": "2025-03-31"}),
                         ("/api/cases/kpi/ranking.xlsx", {"month": MONTH})):
        r = client.get(path, params=params, headers=auditor)
        assert r.status_code == 200 and "spreadsheetml" in r.headers["content-type"]
        rows = list(load_workbook(io.BytesIO(r.content)).active.iter_rows(values_only=True))
        assert len(rows) == 2 + (3 if path.endswith("kpi.xlsx") else 2)


def test_api_access(cases_city: CasesCity, built: dict[str, str]) -> None:
    client = cases_city.city.client
    assert client is not None
    params = {"since": "2025-03-01", "until": "2025-03-31"}
    r = client.get("/api/cases/kpi", params=params, headers=cases_city.headers("env_staff"))
    assert [x["key"] for x in r.json()["rows"]] == [ENV]
    r = client.get("/api/cases/kpi/ranking", params={"month": MONTH}, headers=cases_city.headers("env_staff"))
    assert [(x["rank"], x["key"]) for x in r.json()["rows"]] == [(1, ENV)]
    assert client.get("/api/cases/kpi", params=params).status_code == 401
    assert client.get("/api/cases/kpi", params=params, headers=cases_city.headers("resident")).status_code == 403
    assert client.get("/api/cases/kpi/hotspots").status_code == 401


@pytest.mark.parametrize("path, params, field", [
    ("/api/cases/kpi", {"by": "street"}, "by"),
    ("/api/cases/kpi", {"since": "2025-02-30"}, "since"),
    ("/api/cases/kpi", {"since": "2025-03-10", "until": "2025-03-01"}, "until"),
    ("/api/cases/kpi", {"line": "bogus"}, "line"),
    ("/api/cases/kpi.xlsx", {"until": "soon"}, "until"),
    ("/api/cases/kpi/ranking", {"month": "2025-3"}, "month"),
    ("/api/cases/kpi/ranking.xlsx", {"month": "2025-00"}, "month"),
    ("/api/cases/kpi/hotspots", {"week": "2025-11"}, "week"),
    ("/api/cases/kpi/hotspots", {"cell_m": "10"}, "cell_m"),
])
def test_api_bad_parameters_are_422_naming_the_field(cases_city: CasesCity, path: str, params: dict[str, str],
                                                     field: str) -> None:
    client = cases_city.city.client
    assert client is not None
    r = client.get(path, params=params, headers=cases_city.headers("auditor"))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in r.json()["errors"]] == [field]
