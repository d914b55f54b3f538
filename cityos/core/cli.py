"""Core commands: serve, db, department, user, apikey, audit (Typer + Rich)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
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


def register(app: typer.Typer) -> None:
    """Mount the core's command groups on the top-level `cityos` command."""
    app.add_typer(db_app, name="db")
    app.add_typer(department_app, name="department")
    app.add_typer(user_app, name="user")
    app.add_typer(apikey_app, name="apikey")
    app.add_typer(audit_app, name="audit")
