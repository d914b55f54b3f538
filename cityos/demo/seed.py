"""Build the demo city (构建演示城市) through the service layer, idempotently.

Every department and user goes through `core.service`, acting as the system, so the demo is
validated, encrypted and audited like real data; then `hub_seed` builds its data hub (catalogs,
registries, millions of generated rows, sharing requests) and `opendata_seed` its open data
(topics, the opening plan, published de-identified datasets, applications) and `maps_seed` its
one map (reference and base layers, a water network). What already
exists (looked up by department code, username, resource or request) is skipped and left as it
is: a second build creates, changes and audits nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import crypto, db, service
from cityos.core.access import SYSTEM
from cityos.core.errors import Invalid
from cityos.core.models import Department, User
from cityos.core.settings import Settings
from cityos.demo import cases_seed, hub_data, hub_seed, maps_seed, opendata_seed, ops_seed, sensing_seed
from cityos.demo.data import Plan, plan

Step = Callable[[str], None]


@dataclass
class BuildReport:
    """What one build did: counts of created and skipped departments and users, what the data
    hub step did, and its time."""

    departments_created: int = 0
    departments_skipped: int = 0
    users_created: int = 0
    users_skipped: int = 0
    seconds: float = 0.0
    hub: hub_seed.HubReport | None = None
    opendata: opendata_seed.OpenReport | None = None
    maps: maps_seed.MapsReport | None = None
    sensing: sensing_seed.SensingReport | None = None
    cases: cases_seed.CasesReport | None = None
    ops: ops_seed.OpsReport | None = None

    @property
    def created(self) -> int:
        return self.departments_created + self.users_created


def seed(session: Session, the_plan: Plan, password: str, step: Step | None = None) -> BuildReport:
    """Create the plan's departments and users that do not exist yet, in the caller's session."""
    report = BuildReport()
    step = step or (lambda _label: None)
    have_depts = set(session.scalars(select(Department.code)))
    for d in the_plan.departments:
        step(d.name)
        if d.code in have_depts:
            report.departments_skipped += 1
            continue
        service.department_create(session, SYSTEM, code=d.code, name=d.name, kind=d.kind,
                                  parent_code=d.parent_code, admin_code=d.admin_code,
                                  credit_code=d.credit_code, name_en=d.name_en)
        report.departments_created += 1
    have_users = set(session.scalars(select(User.username)))
    for u in the_plan.users:
        step(u.username)
        if u.username in have_users:
            report.users_skipped += 1
            continue
        service.user_create(session, SYSTEM, username=u.username, password=password,
                            department_code=u.department_code, role=u.role,
                            display_name=u.display_name, id_number=u.id_number, phone=u.phone)
        report.users_created += 1
    return report


@contextmanager
def _progress(console: Console | None, total: int) -> Iterator[Step]:
    """A Rich progress bar when there is a console to draw on, else a silent step."""
    if console is None:
        yield lambda _label: None
        return
    columns = (TextColumn("[bold]{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task("吉林市 Jilin City", total=total)
        yield lambda label: bar.update(task, advance=1, description=label)


def demo_scale(scale: float | None = None) -> float:
    """The data hub's size: the given scale, else CITYOS_DEMO_SCALE, else 1.0 (~2.6 million rows);
    0 builds the city without its data hub."""
    if scale is None:
        text = os.environ.get("CITYOS_DEMO_SCALE", "1")
        try:
            scale = float(text)
        except ValueError:
            raise Invalid("CITYOS_DEMO_SCALE", f"not a number: {text!r} / 须为数字") from None
    if not 0 <= scale <= 10:
        raise Invalid("scale", "between 0 and 10 / 须在 0 到 10 之间")
    return scale


def build(settings: Settings, console: Console | None = None, scale: float | None = None) -> BuildReport:
    """Migrate the database, load the keyring, seed the demo city in one transaction, then its
    data hub at `demo_scale(scale)`, its open data and its map, one transaction per dataset or layer."""
    scale = demo_scale(scale)
    started = time.monotonic()
    db.upgrade(settings.database_url)
    crypto.activate(crypto.Keyring.load(Path(settings.data_dir) / "keys.json"))
    the_plan = plan()
    engine = db.make_engine(settings.database_url)
    try:
        with (_progress(console, the_plan.size) as step,
              db.session_scope(db.make_sessionmaker(engine)) as session):
            report = seed(session, the_plan, settings.demo_password, step)
        if scale:
            with db.session_scope(db.make_sessionmaker(engine)) as session:
                report.hub = hub_seed.build_hub(session, scale, console)
            with db.session_scope(db.make_sessionmaker(engine)) as session:
                report.opendata = opendata_seed.build_open(session, scale, settings.demo_password, console)
            with db.session_scope(db.make_sessionmaker(engine)) as session:
                report.maps = maps_seed.build_maps(session, scale, settings.demo_password, console)
            with db.session_scope(db.make_sessionmaker(engine)) as session:
                report.sensing = sensing_seed.build_sensing(session, scale, settings.data_dir, console)
            with db.session_scope(db.make_sessionmaker(engine)) as session:
                report.cases = cases_seed.build_cases(session, scale, settings.demo_password, console)
            with db.session_scope(db.make_sessionmaker(engine)) as session:
                report.ops = ops_seed.build_ops(session, settings.demo_password)
    finally:
        engine.dispose()
    report.seconds = time.monotonic() - started
    return report


def console_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/console"


def logins_table(the_plan: Plan, password: str) -> Table:
    """The demo logins (演示账号): username, role, department, password."""
    names = {d.code: d.name for d in the_plan.departments}
    table = Table("username / 用户名", "role / 角色", "department / 部门", "password / 密码",
                  title="Demo logins / 演示账号")
    for u in the_plan.users:
        table.add_row(u.username, u.role, f"{names[u.department_code]} {u.department_code}",
                      password)
    return table


def print_summary(console: Console, report: BuildReport, settings: Settings,
                  host: str | None = None, port: int | None = None) -> None:
    """Say what the build did, where the console is, and who can sign in."""
    console.print(
        f"demo city built / 演示城市已就绪: {report.departments_created} departments and "
        f"{report.users_created} users created, {report.departments_skipped + report.users_skipped}"
        f" already there ({report.seconds:.1f} s)")
    if report.hub is not None:
        hub = report.hub
        console.print(
            f"data hub / 数据共享交换平台: {hub.resources_created} resources cataloged, {hub.rows:,} rows "
            f"loaded into {len(hub.loaded)} of them, {hub.requests_created} sharing requests filed "
            f"({hub.resources_skipped} resources already there; {hub.seconds:.1f} s)")
    if report.opendata is not None:
        console.print(opendata_seed.summary_line(report.opendata))
    if report.maps is not None:
        console.print(maps_seed.summary_line(report.maps))
    if report.sensing is not None:
        console.print(sensing_seed.summary_line(report.sensing))
    if report.cases is not None:
        console.print(cases_seed.summary_line(report.cases))
    if report.ops is not None:
        console.print(ops_seed.summary_line(report.ops))
    console.print(logins_table(plan(), settings.demo_password))
    if report.hub is not None:
        console.print(showcase_table(settings.demo_password, report.hub.showcase))
    if report.opendata is not None:
        console.print(opendata_seed.try_table(settings.demo_password, report.opendata))
    if report.maps is not None:
        console.print(maps_seed.try_table(settings.demo_password))
    if report.sensing is not None:
        console.print(sensing_seed.try_table(settings.demo_password))
    if report.cases is not None:
        console.print(cases_seed.try_table(settings.demo_password))
    if report.ops is not None:
        console.print(ops_seed.try_table(settings.demo_password))
    url = console_url(host or settings.host, port or settings.port)
    console.print(f"console / 控制台: [bold]{url}[/bold]")


def showcase_table(password: str, code: str | None) -> Table:
    """Who to sign in as to see sharing at work (试一试): a grant narrower than the request."""
    ask = hub_data.showcase()
    hidden = [f for f in ask.fields if f not in ask.granted]
    table = Table("username / 用户名", "what to try / 试一试", title="Try the data hub / 体验数据共享",
                  caption=f"password / 密码: {password}")
    table.add_row(ask.requester, f"read 市公安局's {ask.dataset}: GET /api/hub/resources/{code or '{code}'}"
                  f"/rows?purpose=...; granted {', '.join(ask.granted)}; refused (403) {', '.join(hidden)}")
    table.add_row(ask.decider or "", "GET /api/hub/requests?box=incoming: the requests to decide, "
                  "the grant given; POST /api/hub/grants/{id}/revoke")
    table.add_row("police_auditor", "GET /api/audit?action=hub.data.read: every read of 市公安局's data, "
                  "with its purpose")
    return table
