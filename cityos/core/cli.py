"""Core commands: serve, db, department, user, apikey, audit, keys, backup, restore (Typer + Rich)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from sqlalchemy.orm import Session

from cityos.core import access, audit, crypto, db, service
from cityos.core.access import Actor
from cityos.core.errors import CityOSError
from cityos.core.settings import Settings, SettingsError, load_settings

console = Console()
err_console = Console(stderr=True)


def cli_actor() -> Actor:
    """CLI commands act as the platform, recorded in the audit log under the OS user's name."""
    return Actor(kind="system", name=f"cli:{getpass.getuser()}"[:64], role=access.PLATFORM_ADMIN)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@contextmanager
def cli_session(migrated: bool = True) -> Iterator[tuple[Settings, Session]]:
    """Settings, keyring and a unit of work for one command; errors become a message and exit 1."""
    settings = settings_or_exit()
    engine = db.make_engine(settings.database_url)
    try:
        if migrated:
            db.ensure_migrated(engine)
        crypto.activate(crypto.Keyring.load(Path(settings.data_dir) / "keys.json"))
        with db.session_scope(db.make_sessionmaker(engine)) as session:
            yield settings, session
    except db.NotMigrated as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except CityOSError as exc:
        err_console.print(f"[red]{exc.detail}[/red]")
        for e in exc.errors:
            err_console.print(f"  {e.field}: {e.reason}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


db_app = typer.Typer(help="Database schema / 数据库", no_args_is_help=True)
department_app = typer.Typer(help="Departments / 部门", no_args_is_help=True)
user_app = typer.Typer(help="Users / 用户", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for machine clients / 接口密钥", no_args_is_help=True)
audit_app = typer.Typer(help="Audit log / 审计日志", no_args_is_help=True)
keys_app = typer.Typer(help="Field-encryption keys / 字段加密密钥", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database to the code's schema (迁移)."""
    settings = settings_or_exit()
    db.upgrade(settings.database_url, revision)
    engine = db.make_engine(settings.database_url)
    console.print(f"database at revision [bold]{db.current_revision(engine)}[/bold]")
    engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """Show the database's revision and the code's."""
    settings = settings_or_exit()
    engine = db.make_engine(settings.database_url)
    console.print(f"database: {db.current_revision(engine)}  code: {db.head_revision()}")
    engine.dispose()


@department_app.command("list")
def department_list(
    kind: Annotated[str | None, typer.Option(help="city|district|street|community|bureau")] = None,
) -> None:
    """Print each department's code and name."""
    with cli_session() as (_, session):
        table = Table("code", "name", "kind", "admin code", "parent")
        offset = 0
        while True:
            page = service.department_list(session, cli_actor(), kind=kind, limit=500,
                                           offset=offset)
            for d in page.items:
                table.add_row(d.code, d.name, d.kind, d.admin_code or "",
                              d.parent.code if d.parent else "")
            if page.next_offset is None:
                break
            offset = page.next_offset
        console.print(table)


@user_app.command("create")
def user_create(
    name: str,
    department: Annotated[str, typer.Option(help="department code")],
    role: Annotated[str, typer.Option(help=", ".join(access.ROLES))],
    password: Annotated[str | None, typer.Option(help="prompted for when omitted")] = None,
    display_name: str = "",
) -> None:
    """Create a user in a department with a role."""
    if password is None:
        if not sys.stdin.isatty():
            err_console.print("[red]--password is required when not on a terminal[/red]")
            raise typer.Exit(2)
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with cli_session() as (_, session):
        user = service.user_create(session, cli_actor(), username=name, password=password,
                                   department_code=department, role=role,
                                   display_name=display_name)
        console.print(f"created user [bold]{user.username}[/bold] ({role}) in {department}")


@apikey_app.command("create")
def apikey_create(
    department: Annotated[str, typer.Option(help="department code")],
    scope: Annotated[list[str], typer.Option(help="a permission, e.g. department.read; repeat")],
    name: str = "cli",
    expires_days: int | None = None,
) -> None:
    """Issue an API key. It is printed once; only its hash is kept."""
    with cli_session() as (_, session):
        raw, key = service.apikey_create(session, cli_actor(), name=name,
                                         department_code=department, scopes=scope,
                                         expires_days=expires_days)
    console.print(f"API key (shown once / 仅显示一次): [bold]{raw}[/bold]")


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the hash chain; name the first record edited, deleted or reordered."""
    with cli_session() as (_, session):
        result = audit.verify(session)
    if result.ok:
        console.print(f"[green]{result.message()}[/green]")
    else:
        err_console.print(f"[red]{result.message()}[/red]")
        raise typer.Exit(1)


@keys_app.command("rotate")
def keys_rotate(
    retire: Annotated[bool, typer.Option(
        help="then drop keys no ciphertext names any more (restart servers first)")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="rows per batch")] = 1000,
) -> None:
    """Add a new data key and index key, re-encrypt every encrypted column under them (轮换)."""
    from cityos.core import keys

    with cli_session() as (_, session), Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(context: str, done: int, total: int) -> None:
            if context not in tasks:
                tasks[context] = bar.add_task(context, total=total)
            bar.update(tasks[context], completed=done, total=total)

        try:
            report = keys.keys_rotate(session, cli_actor(), retire_unused=retire,
                                      batch_size=batch_size, progress=progress)
        except keys.RotationError as exc:
            err_console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    table = Table("column", "rows re-encrypted")
    for context, count in report.rotated.items():
        table.add_row(context, str(count))
    console.print(table)
    console.print(f"active key [bold]{report.key_id}[/bold]; {report.total} ciphertexts rotated"
                  f"{f'; retired {len(report.retired)} keys' if retire else ''}")
    console.print("restart running servers so they encrypt under the new key / 请重启服务")


def _backup_step(message: str) -> None:
    console.print(f"  [cyan]→[/cyan] {message}")


@contextmanager
def _backup_errors() -> Iterator[None]:
    from cityos.core.backup import BackupError

    try:
        yield
    except (BackupError, CityOSError) as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def backup(
    file: Annotated[Path, typer.Argument(help="the .tar.gz to write")],
    force: Annotated[bool, typer.Option(help="overwrite FILE if it exists")] = False,
) -> None:
    """Back up the database and keyring while the server runs (备份); the file holds the keys."""
    from cityos.core import backup as backups

    settings = settings_or_exit()
    if file.exists() and not force:
        err_console.print(f"[red]{file} exists; use --force to overwrite[/red]")
        raise typer.Exit(2)
    with _backup_errors():
        manifest = backups.backup_create(settings, file, cli_actor(), report=_backup_step)
    table = Table("table", "rows")
    for name, stat in manifest.tables.items():
        table.add_row(name, str(stat.rows))
    console.print(table)
    console.print(f"[green]backup written to {file}[/green] ({manifest.backend}, revision "
                  f"{manifest.alembic_revision}). It contains the encryption keys: store it "
                  "securely / 备份含密钥，请妥善保管")


def restore(
    file: Annotated[Path, typer.Argument(help="a file made by `cityos backup`", exists=True,
                                         dir_okay=False)],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Replace the database and keyring with a backup (恢复). Stop the server first."""
    from cityos.core import backup as backups

    settings = settings_or_exit()
    if not yes:
        if not sys.stdin.isatty():
            err_console.print("[red]--yes is required when not on a terminal[/red]")
            raise typer.Exit(2)
        typer.confirm(f"replace the database and keys.json with {file}?", abort=True)
    with _backup_errors():
        manifest = backups.backup_restore(settings, file, cli_actor(), report=_backup_step)
    console.print(f"[green]restored {file}[/green] (taken {manifest.created_at}, "
                  f"{sum(t.rows for t in manifest.tables.values())} rows, revision "
                  f"{manifest.alembic_revision}); the previous keys.json was kept beside it")
    if manifest.alembic_revision != db.head_revision():
        console.print("run `cityos db upgrade` to bring the schema to this version's "
                      f"({db.head_revision()})")


# ---- calendar: China's official working-day calendar (工作日历) ----
calendar_app = typer.Typer(help="Official working-day calendar / 工作日历", no_args_is_help=True)


@calendar_app.command("import")
def calendar_import(
    file: Annotated[Path, typer.Argument(help="a year's schedule, .json or .csv", exists=True,
                                         dir_okay=False)],
    replace: Annotated[bool, typer.Option(help="replace a year imported before")] = False,
    source: Annotated[str | None, typer.Option(
        help="the notice it comes from, e.g. 国办发明电〔2025〕7号 (default: the file's)")] = None,
) -> None:
    """Import a year's holidays and make-up working days published by the State Council (导入)."""
    from cityos.core import workdays

    fmt = file.suffix.lower().lstrip(".")
    if fmt not in ("json", "csv"):
        err_console.print(f"[red]{file}: expected a .json or .csv file / 应为 .json 或 .csv 文件[/red]")
        raise typer.Exit(2)
    with cli_session() as (_, session):
        schedule = workdays.parse_schedule(file.read_text(encoding="utf-8-sig"),
                                           "json" if fmt == "json" else "csv")
        workdays.import_schedule(session, cli_actor(), schedule.year, schedule.days,
                                 source=source if source is not None else schedule.source,
                                 replace=replace)
    rest = sum(not w for _, w, _ in schedule.days)
    console.print(f"[green]imported the {schedule.year} calendar[/green]: {rest} holidays on weekdays, "
                  f"{len(schedule.days) - rest} make-up working days / 已导入 {schedule.year} 年工作日历")


@calendar_app.command("show")
def calendar_show(year: int) -> None:
    """List a year's holidays on weekdays and make-up working days, and where they come from."""
    from cityos.core import workdays

    with cli_session() as (_, session):
        cal = workdays.Calendar.load(session)
    if year not in cal.years:
        console.print(f"[yellow]{year}: not known / 未知[/yellow]; Monday to Friday assumed until its "
                      "schedule is imported (`cityos calendar import FILE`) / 导入前按周一至周五推算")
        return
    console.print(f"{year}: known / 已知 — {cal.sources[year]}")
    table = Table("date / 日期", "day / 星期", "kind / 类型", "name / 名称")
    for day, workday, name in cal.year_days(year):
        table.add_row(day.isoformat(), "周" + "一二三四五六日"[day.weekday()],
                      "make-up working day / 调休上班" if workday else "holiday / 放假", name)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Mount the core's command groups on the top-level `cityos` command."""
    app.add_typer(db_app, name="db")
    app.add_typer(department_app, name="department")
    app.add_typer(user_app, name="user")
    app.add_typer(apikey_app, name="apikey")
    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")
    app.add_typer(calendar_app, name="calendar")
    app.command("backup")(backup)
    app.command("restore")(restore)
