"""Build the demo city (构建演示城市) through the service layer, idempotently.

Every department and user goes through `core.service`, acting as the system, so the demo is
validated, encrypted and audited like real data. What already exists (looked up by department
code or username) is skipped and left as it is: a second build creates, changes and audits
nothing.
"""

from __future__ import annotations

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
from cityos.core.models import Department, User
from cityos.core.settings import Settings
from cityos.demo.data import Plan, plan

Step = Callable[[str], None]


@dataclass
class BuildReport:
    """What one build did: counts of created and skipped departments and users, and its time."""

    departments_created: int = 0
    departments_skipped: int = 0
    users_created: int = 0
    users_skipped: int = 0
    seconds: float = 0.0

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


def build(settings: Settings, console: Console | None = None) -> BuildReport:
    """Migrate the database, load the keyring, and seed the demo city in one transaction."""
    started = time.monotonic()
    db.upgrade(settings.database_url)
    crypto.activate(crypto.Keyring.load(Path(settings.data_dir) / "keys.json"))
    the_plan = plan()
    engine = db.make_engine(settings.database_url)
    try:
        with (_progress(console, the_plan.size) as step,
              db.session_scope(db.make_sessionmaker(engine)) as session):
            report = seed(session, the_plan, settings.demo_password, step)
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
    console.print(logins_table(plan(), settings.demo_password))
    url = console_url(host or settings.host, port or settings.port)
    console.print(f"console / 控制台: [bold]{url}[/bold]")
