"""The demo city's operations center (城市运行管理中心): its department and users, the resource
layers emergency command draws on (shelters, hospitals, cameras), the default indicators, warning
rules and response plans, table 1 of the plan and its 43 projects, and one incident under way.
Idempotent: a second build adds nothing."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from shapely.geometry import Point
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import cityos.maps.service as maps
from cityos.core import access
from cityos.core import service as core
from cityos.core.access import SYSTEM
from cityos.core.errors import NotFound
from cityos.core.models import Department, User
from cityos.ops import emergency, indicators, plan, projects, warnings
from cityos.ops.models import Incident

C = "220200"
OPS = f"{C}-yxzx"
OPS_NAME = ("市城市运行管理中心", "City Operations Management Center")
USERS = [("ops_staff", access.DEPARTMENT_STAFF), ("ops_admin", access.DEPARTMENT_ADMIN)]
# Plausible points in Jilin City's urban districts (illustrative, not surveyed).
LAYERS: dict[str, tuple[str, str, list[tuple[str, float, float]]]] = {
    "shelters": ("应急避难场所", "Emergency shelters", [
        ("北山公园避难场所", 126.5370, 43.8560), ("世纪广场避难场所", 126.5800, 43.8470),
        ("江南公园避难场所", 126.5560, 43.8230), ("人民广场避难场所", 126.5535, 43.8415),
        ("龙潭山公园避难场所", 126.6010, 43.8870), ("吉林体育中心避难场所", 126.5705, 43.8325),
        ("北华大学操场避难场所", 126.5465, 43.8630), ("丰满区文化广场避难场所", 126.5620, 43.8120),
        ("昌邑区临江广场避难场所", 126.5580, 43.8500), ("船营区中心广场避难场所", 126.5330, 43.8440),
        ("哈达湾避难场所", 126.5100, 43.8700), ("东市场广场避难场所", 126.5720, 43.8590)]),
    "hospitals": ("医院", "Hospitals", [
        ("吉林市中心医院", 126.5540, 43.8470), ("吉林市人民医院", 126.5640, 43.8470),
        ("北华大学附属医院", 126.5450, 43.8600), ("吉林市第二人民医院", 126.5700, 43.8550),
        ("吉林市中西医结合医院", 126.5500, 43.8400), ("吉林市儿童医院", 126.5590, 43.8520),
        ("吉林市化工医院", 126.5950, 43.8800), ("吉林市妇产医院", 126.5410, 43.8480),
        ("吉林市中医院", 126.5605, 43.8425), ("丰满区医院", 126.5660, 43.8150),
        ("龙潭区医院", 126.5900, 43.8920), ("船营区医院", 126.5300, 43.8500)]),
    "cameras": ("视频监控", "Surveillance cameras", [
        ("解放路-重庆路口", 126.5560, 43.8450), ("吉林大街-松江路口", 126.5630, 43.8380),
        ("临江门大桥北", 126.5510, 43.8470), ("江湾大桥南", 126.5720, 43.8300),
        ("火车站广场", 126.5640, 43.8640), ("东市场", 126.5725, 43.8585),
        ("北京路-长春路口", 126.5400, 43.8500), ("世纪广场东", 126.5830, 43.8470),
        ("吉林桥", 126.5600, 43.8360), ("遵义路-龙潭大街", 126.5950, 43.8850),
        ("哈达湾工业区", 126.5120, 43.8680), ("丰满大街", 126.5650, 43.8120)]),
}


@dataclass
class OpsReport:
    created: dict[str, int]
    skipped: bool = False
    notes: list[str] | None = None


def _department(session: Session, password: str, report: OpsReport) -> None:
    if session.scalar(select(Department.id).where(Department.code == OPS)) is None:
        core.department_create(session, SYSTEM, code=OPS, name=OPS_NAME[0], name_en=OPS_NAME[1],
                               kind="bureau", parent_code=C)
        report.created["departments"] += 1
    have = set(session.scalars(select(User.username)))
    for username, role in USERS:
        if username not in have:
            core.user_create(session, SYSTEM, username=username, password=password, department_code=OPS,
                             role=role, display_name=f"{OPS_NAME[0]}{access.ROLES[role][0]}")
            report.created["users"] += 1
    session.flush()


def _layers(session: Session, report: OpsReport) -> None:
    for code, (title, title_en, points) in LAYERS.items():
        try:
            maps.layer_by_code(session, code)
            continue
        except NotFound:
            pass
        maps.layer_create(session, SYSTEM, {
            "code": code, "title": title, "title_en": title_en, "department": OPS, "geometry_type": "point",
            "keywords": [title, "应急资源"], "public": True, "open_type": "open", "update_cycle": "yearly",
            "attributes": [{"name": "name", "title": "名称", "type": "string"}],
            "description": f"{title}（演示数据，位置为示意）"})
        maps.features_write(session, SYSTEM, code, [
            (f"{code}-{i + 1:02d}", Point(lon, lat), {"name": name})
            for i, (name, lon, lat) in enumerate(points)])
        report.created["layers"] += 1


def _incident(session: Session, report: OpsReport) -> None:
    """One incident under way (a water main burst), so the screen and command pages show one."""
    if session.scalar(select(func.count()).select_from(Incident)):
        return
    emergency.incident_open(session, SYSTEM, type_code="pipe-burst", level="IV",
                            title="解放路供水管网爆管（演示）",
                            description="解放路与重庆路交叉口供水主管爆裂，路面积水，周边停水。",
                            lon=126.5565, lat=43.8452, department=OPS)
    report.created["incidents"] += 1


def build_ops(session: Session, password: str) -> OpsReport:
    """The operations center of the demo city; idempotent."""
    report = OpsReport(created={"departments": 0, "users": 0, "layers": 0, "indicators": 0, "plan": 0,
                                "projects": 0, "incidents": 0})
    _department(session, password, report)
    _layers(session, report)
    session.commit()
    report.created["indicators"] = len(indicators.seed_defaults(session, OPS))
    warnings.seed_defaults(session, OPS)
    emergency.seed_defaults(session, OPS)
    session.commit()
    report.created["plan"] = plan.load(session)
    plan.refresh(session)
    report.created["projects"] = projects.project_load(session)
    session.commit()
    _incident(session, report)
    session.commit()
    report.skipped = not any(report.created.values())
    return report


def summary_line(report: OpsReport) -> str:
    c = report.created
    if report.skipped:
        return "Operations center / 运行中心: already there, skipped / 已存在，跳过"
    return (f"Operations center / 运行中心: {c['layers']} resource layers, {c['indicators']} indicators, "
            f"{c['plan']} plan indicators, {c['projects']} projects, {c['incidents']} demo incident")


def try_table(password: str) -> Table:
    """Who to sign in as to see the operations center at work (试一试)."""
    table = Table("username / 用户名", "what to try / 试一试",
                  title="Try the operations center / 体验运行中心", caption=f"password / 密码: {password}")
    table.add_row("ops_staff", "/ops/screen: the big screen, live (大屏); "
                  "/ops/incidents: emergency command — open an incident, activate a plan, "
                  "watch departments' tasks")
    table.add_row("ops_admin", "/ops/plan: the plan's table 1 against its 2021 targets, "
                  "enter manual figures; /ops/projects: the 43 projects, Gantt chart and dependencies")
    table.add_row("police_staff", "/console/cases: the tasks an activated plan sent to 市公安局")
    return table
