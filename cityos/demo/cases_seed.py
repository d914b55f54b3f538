"""Build the demo city's cases (构建演示工单): the centres and handling departments, the three
shipped workflows, the category catalog, a parks layer for the dispatch rule, a generated history
of closed cases for the dispatch model and the KPIs, a few open cases in every queue, and the
trained model.

Who holds what, as a city would have it: the 12345 hotline centre (市12345政务服务热线) takes
residents' calls and reports; the city-management supervision and command centre
(市数字化城市管理监督指挥中心) files and dispatches what inspectors find (GB/T 30428); the
government service office (市政网办) runs parallel approvals. History rows are written directly
(they are closed: no workflow state to keep); open cases go through the real service, so their
workflows, tasks and deadlines are live.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from shapely.geometry import Polygon, box
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

import cityos.maps.service as maps
from cityos.cases import service, steps
from cityos.cases.models import Case, CaseCategory, CaseEvent
from cityos.core import access, workdays
from cityos.core import service as core
from cityos.core.access import SYSTEM
from cityos.core.auth import user_actor
from cityos.core.db import utcnow
from cityos.core.errors import NotFound
from cityos.core.models import Department, User
from cityos.demo import cases_history, data, hub_seed, maps_seed

C = data.CITY_CODE
# The departments the cases need that the other steps do not make: code suffix, name, English, slug.
DEPARTMENTS: list[tuple[str, str, str, str]] = [
    ("rx", "市12345政务服务热线", "12345 Government Service Hotline", "hotline"),
    ("szcg", "市数字化城市管理监督指挥中心", "City Management Supervision and Command Centre", "cm"),
    ("ylj", "市园林局", "Parks and Gardens Bureau", "parks"),
    ("szgy", "市市政公用局", "Municipal Utilities Bureau", "municipal"),
    ("zjw", "市住房和城乡建设局", "Housing and Urban-Rural Development Bureau", "housing"),
    ("scjg", "市市场监督管理局", "Market Regulation Bureau", "market"),
    ("rl", "市供热公司", "Heating Company", "heating"),
    ("rq", "市燃气公司", "Gas Company", "gas"),
]
# The catalog's department slugs -> department codes.
SLUGS: dict[str, str] = {
    **{slug: f"{C}-{suffix}" for suffix, _n, _e, slug in DEPARTMENTS},
    "citymgmt": f"{C}-szcg", "water": maps_seed.WATER[0], "police": f"{C}-gaj", "env": f"{C}-hbj",
    "transport": f"{C}-jtj", "enforcement": f"{C}-xzzfj", "civil": f"{C}-mzj", "health": f"{C}-wjw",
    "education": f"{C}-jyj",
}
CENTRES = {"hotline": f"{C}-rx", "citymgmt": f"{C}-szcg", "approval": f"{C}-zwb"}
PARKS_LAYER = "parks"
# Parks of the demo (a square around each centre point; approximate, for the dispatch rule).
PARKS: list[tuple[str, str, float, float, float]] = [
    ("beishan", "北山公园", 126.5370, 43.8560, 450.0),
    ("jiangnan", "江南公园", 126.5560, 43.8230, 350.0),
    ("century", "世纪广场", 126.5800, 43.8470, 250.0),
]
OPEN_CASES = 24  # live cases spread over the queues


@dataclass
class CasesReport:
    departments_created: int = 0
    users_created: int = 0
    workflows: int = 0
    categories: int = 0
    history: int = 0
    open_cases: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0


def history_size(scale: float) -> int:
    """Closed cases of history: 6,000 at scale 1, at least 400 (enough to train on) in the tests."""
    return max(400, int(6000 * min(scale, 1.0) ** 0.5))


def build_cases(session: Session, scale: float, password: str, console: Console | None = None) -> CasesReport:
    """The demo city's cases at `scale`; idempotent (a second build adds nothing)."""
    started = time.monotonic()
    report = CasesReport()
    bars = hub_seed.Bars(console)
    with bars.progress or nullcontext(), bars.task("工单 Cases", 5) as advance:
        _departments(session, password, report)
        service.workflows_install(session, SYSTEM, CENTRES)
        report.workflows = len(service.workflow_list(session))
        _categories(session, report)
        _parks(session)
        session.commit()
        advance(1)
        if session.scalar(select(func.count()).select_from(Case)):
            report.skipped = True
            advance(4)
        else:
            _history(session, history_size(scale), report)
            advance(2)
            _open_cases(session, report)
            advance(1)
            _train(session, report)
            advance(1)
    report.seconds = time.monotonic() - started
    return report


def _departments(session: Session, password: str, report: CasesReport) -> None:
    have = set(session.scalars(select(Department.code)))
    users = set(session.scalars(select(User.username)))
    for suffix, name, name_en, slug in DEPARTMENTS:
        code = f"{C}-{suffix}"
        if code not in have:
            core.department_create(session, SYSTEM, code=code, name=name, name_en=name_en, kind="bureau",
                                   parent_code=C)
            report.departments_created += 1
        for role, rsuffix in data.ROLE_SUFFIX.items():
            username = f"{slug}_{'agent' if slug == 'hotline' and rsuffix == 'staff' else rsuffix}"
            if username not in users:
                core.user_create(session, SYSTEM, username=username, password=password, department_code=code,
                                 role=role, display_name=f"{name}{access.ROLES[role][0]}")
                report.users_created += 1
    session.flush()


def _categories(session: Session, report: CasesReport) -> None:
    have = set(session.scalars(select(CaseCategory.code)))
    for row in cases_history.category_rows():
        if row["code"] in have:
            continue
        workflow = row.pop("workflow_code", row["line"])
        zones = [r["layer"] for r in cases_history.RULES if r["category"] == row["code"]]
        spec = {**row, "department": SLUGS[row["department"]], "workflow": workflow, "zones": zones}
        service.category_upsert(session, SYSTEM, spec)
        report.categories += 1


def _square(lon: float, lat: float, metres: float) -> Polygon:
    dlat = metres / 111_320.0
    dlon = dlat / math.cos(math.radians(lat))
    return box(lon - dlon, lat - dlat, lon + dlon, lat + dlat)


def _parks(session: Session) -> None:
    """The parks layer (公园) the dispatch rule reads: a point inside a park goes to 园林."""
    try:
        maps.layer_by_code(session, PARKS_LAYER)
        return
    except NotFound:
        pass
    maps.layer_create(session, SYSTEM, {
        "code": PARKS_LAYER, "title": "城市公园", "title_en": "City parks", "department": SLUGS["parks"],
        "geometry_type": "polygon", "keywords": ["公园", "园林"], "public": True, "open_type": "open",
        "attributes": [{"name": "code", "title": "代码", "type": "string"},
                       {"name": "name", "title": "名称", "type": "string"}],
        "update_cycle": "yearly", "description": "城市公园范围（演示数据，按示意生成）"})
    maps.features_write(session, SYSTEM, PARKS_LAYER, [
        (code, _square(lon, lat, m), {"code": code, "name": name}) for code, name, lon, lat, m in PARKS])


def _history(session: Session, n: int, report: CasesReport) -> None:
    """Closed cases of the past year, written as rows: what the model learns and the KPIs count."""
    cats = {c.code: c for c in session.scalars(select(CaseCategory))}
    wfs = {code: service.workflow_active(session, code) for code in CENTRES}
    rng = random.Random(data.SEED)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for i, h in enumerate(cases_history.history(n, seed=data.SEED)):
        cat = cats[h.category]
        wf = wfs[cat.workflow_code]
        created = now - dt.timedelta(days=h.days_ago, hours=rng.uniform(0, 23))
        dispatched = created + dt.timedelta(hours=rng.uniform(0.2, 6))
        limit = dt.timedelta(days=1 if h.urgent else 3 if h.kind == "consultation" else 7)
        due = dispatched + limit
        late = rng.random() < 0.12
        replied = dispatched + (limit * rng.uniform(1.05, 1.6) if late else limit * rng.uniform(0.1, 0.9))
        closed = replied + dt.timedelta(hours=rng.uniform(2, 48))
        if closed > now:
            continue
        day = created.astimezone(workdays.CITY_TZ)
        rows.append({
            "number": f"{service.NUMBER_PREFIX[cat.line]}{day:%Y%m%d}H{i:07d}",
            "token": f"h{i:07d}{rng.getrandbits(64):016x}", "line": cat.line, "kind": h.kind,
            "channel": rng.choice(("phone", "phone", "web", "open311") if cat.line == "hotline"
                                  else ("inspector", "inspector", "camera", "web")),
            "category_id": cat.id, "title": h.title[:200], "description": h.description, "urgent": h.urgent,
            "status": "closed", "step": "", "lon": h.lon, "lat": h.lat, "address": h.address[:300],
            "district": h.district, "street": h.street, "reporter_name": "", "attributes": h.attributes,
            "dispatch_department_id": wf.department_id, "department_id": cat.department_id,
            "due_at": due, "warn_at": dispatched + limit * 0.8, "due_note": "", "overdue": late,
            "escalations": int(late), "returns": int(rng.random() < 0.06), "reopens": 0, "extended_days": 0,
            "satisfaction": h.satisfaction, "reply": "已按规定办理完毕，并向诉求人答复。",
            "workflow_id": wf.id, "created_at": created, "updated_at": closed, "dispatched_at": dispatched,
            "replied_at": replied, "closed_at": closed, "revision": 1})
    for start in range(0, len(rows), 2000):
        session.execute(insert(Case), rows[start:start + 2000])
    report.history = len(rows)
    session.commit()


def _open_cases(session: Session, report: CasesReport) -> None:
    """Live cases in every state: new in the centres' queues, dispatched, handled, to be called back."""
    agent = user_actor(core.user_by_name(session, "hotline_agent"))
    cm = user_actor(core.user_by_name(session, "cm_staff"))
    rng = random.Random(data.SEED + 7)
    for i, h in enumerate(cases_history.history(OPEN_CASES, seed=data.SEED + 1)):
        cat = session.scalar(select(CaseCategory).where(CaseCategory.code == h.category))
        assert cat is not None
        centre = agent if cat.line == "hotline" else cm
        got = service.case_intake(session, centre, {
            "category": cat.code, "title": h.title, "description": h.description, "lon": h.lon, "lat": h.lat,
            "address": h.address, "urgent": h.urgent, "reporter_name": "演示市民",
            "reporter_phone": f"139{rng.randrange(10**8):08d}", "attributes": h.attributes},
            channel="phone" if cat.line == "hotline" else "inspector")
        number = got.case.number or ""
        stage = i % 4
        if stage == 0:
            continue  # waits in the centre's queue
        if cat.line == "citymgmt":
            steps.case_act(session, cm, number, "file", {"valid": True})
        steps.case_act(session, centre, number, "dispatch", {"note": "演示派单"})
        if stage >= 2:
            dept = session.get(Department, got.case.department_id)
            handler = _staff_of(session, dept)
            if handler is not None:
                steps.case_act(session, handler, number, "accept")
                if stage == 3:
                    steps.case_act(session, handler, number, "reply", {"reply": "已安排人员现场处理。"})
        session.add(CaseEvent(case_id=got.case.id, actor="demo", action="note", note="演示数据",
                              public=False))
        report.open_cases += 1
    session.commit()


def _staff_of(session: Session, dept: Department | None) -> Any:
    if dept is None:
        return None
    user = session.scalar(select(User).where(User.department_id == dept.id,
                                             User.role == access.DEPARTMENT_STAFF).limit(1))
    return user_actor(user) if user is not None else None


def _train(session: Session, report: CasesReport) -> None:
    from cityos.cases import dispatching

    model = dispatching.train_from_db(session, SYSTEM)
    report.model = dict(model.metrics)
    session.commit()


def summary_line(report: CasesReport) -> str:
    if report.skipped:
        return f"cases / 工单: already built ({report.seconds:.1f} s)"
    acc = report.model.get("accuracy")
    model = f", dispatch model held-out accuracy {acc:.1%}" if isinstance(acc, float) else ""
    return (f"cases / 工单: {report.workflows} workflows, {report.categories} categories, {report.history:,} "
            f"closed cases of history, {report.open_cases} open cases{model} ({report.seconds:.1f} s)")


def try_table(password: str) -> Table:
    """Who to sign in as to see the cases at work (试一试)."""
    table = Table("username / 用户名", "what to try / 试一试", title="Try the cases / 体验工单",
                  caption=f"password / 密码: {password}")
    table.add_row("—", "/cases/report: report a problem on the map with a photo; /cases/track: follow it")
    table.add_row("hotline_agent", "/console/cases: the 12345 centre's queue; "
                  "/console/cases/agent: take a call")
    table.add_row("cm_staff", "city management (数字城管): file, dispatch, verify and close "
                  "inspectors' reports")
    table.add_row("police_staff", "cases sent to 市公安局: accept, reply, return, ask for more time")
    table.add_row("admin", "/console/cases/kpi: on-time, satisfaction, ranking, hot spots; "
                  "/console/cases/workflows: the BPMN diagrams")
    return table
