"""Data hub commands (数据共享交换): load a file with a progress bar, run due pulls, list versions,
roll back. `cityos hub pull --due` is meant for cron, e.g. every minute:

    * * * * *  cd /srv/cityos && .venv/bin/cityos hub pull --due
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from sqlalchemy.orm import Session

from cityos.core import auth, db
from cityos.core.access import Actor
from cityos.core.cli import cli_actor, cli_session, console, err_console
from cityos.core.errors import Invalid
from cityos.core.service import user_by_name
from cityos.hub import loading, pulls, service

hub_app = typer.Typer(help="Data hub: load, pull, versions, rollback / 数据共享交换", no_args_is_help=True)
SUFFIXES = {".csv": "csv", ".txt": "csv", ".xlsx": "xlsx", ".json": "json", ".ndjson": "ndjson",
            ".jsonl": "ndjson"}
SHOWN_ERRORS = 20

As = Annotated[str | None, typer.Option("--as", help="act as this user (their department's rights); "
                                                     "default: the platform")]


def _actor(session: Session, username: str | None) -> Actor:
    """The platform, or a named user, so that access rules and one source per item apply."""
    if username is None:
        return cli_actor()
    user = user_by_name(session, username)
    if not user.is_active:
        raise Invalid("as", f"user {username} is deactivated / 用户已停用")
    return auth.user_actor(user)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TextColumn("{task.fields[rows]:>12,} rows  {task.fields[rate]:>9,.0f} rows/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


@hub_app.command("load")
def load(
    file: Annotated[Path, typer.Argument(help="CSV (UTF-8 or GBK), XLSX, JSON or NDJSON",
                                         exists=True, dir_okay=False)],
    resource: Annotated[str, typer.Option(help="resource code, e.g. 301001-000001")],
    mode: Annotated[str, typer.Option(help="replace: the file is the whole resource; upsert: by key")
                    ] = "replace",
    keep_valid: Annotated[bool, typer.Option(help="load the valid rows, report the rest")] = False,
    encoding: Annotated[str | None, typer.Option(help="CSV encoding (detected when omitted)")] = None,
    format: Annotated[str | None, typer.Option(help="csv|xlsx|json|ndjson (default: from the name)")
                      ] = None,
    as_user: As = None,
) -> None:
    """Load a file into a resource as a new version, with a progress bar (上传导入)."""
    fmt = format or SUFFIXES.get(file.suffix.lower())
    if fmt is None:
        err_console.print(f"[red]{file}: give --format (csv, xlsx, json, ndjson) / 请指定格式[/red]")
        raise typer.Exit(2)
    size = file.stat().st_size
    rejected: loading.LoadRejected | None = None
    titles: dict[str, str] = {}
    start = time.perf_counter()
    with cli_session() as (_, session), _progress() as bar:
        task = bar.add_task(file.name, total=size, rows=0, rate=0.0)

        def progress(bytes_read: int, rows: int) -> None:
            rate = rows / max(time.perf_counter() - start, 1e-6)
            bar.update(task, completed=bytes_read, rows=rows, rate=rate)

        actor = _actor(session, as_user)
        titles = {i.name: i.title for i in service.resource_by_code(session, resource).items}
        try:
            with file.open("rb") as stream:
                result = loading.load_file(session, actor, resource, stream, fmt, encoding=encoding,
                                           mode=mode, keep_valid=keep_valid, filename=file.name,
                                           total_bytes=size, progress=progress)
        except loading.LoadRejected as exc:
            session.rollback()  # the load is all-or-nothing: nothing of it may be committed
            rejected = exc
    elapsed = time.perf_counter() - start
    if rejected is not None:
        report_path = file.with_name(file.stem + ".errors.csv")
        report_path.write_bytes(rejected.report.to_csv(titles))
        err_console.print(f"[red]{rejected.detail}[/red]")
        for e in rejected.report.errors[:SHOWN_ERRORS]:
            err_console.print(f"  row {e.row}  {e.field or '-'}: {e.reason}")
        err_console.print(f"full report / 完整错误报告: [bold]{report_path}[/bold]")
        raise typer.Exit(1)
    d = result.as_dict()
    table = Table("version / 版本", "rows in / 读入", "rejected / 拒绝", "added / 新增", "changed / 变更",
                  "removed / 删除", "rows now / 现有", "rows/s")
    table.add_row(str(d["version"]), f"{d['rows_in']:,}", f"{d['rows_rejected']:,}", f"{d['added']:,}",
                  f"{d['changed']:,}", f"{d['removed']:,}", f"{d['row_count']:,}",
                  f"{d['rows_in'] / elapsed:,.0f}")
    console.print(table)
    if result.report.total:
        report_path = file.with_name(file.stem + ".errors.csv")
        report_path.write_bytes(result.report.to_csv(titles))
        console.print(f"[yellow]{d['rows_rejected']} rows skipped / 已跳过 {d['rows_rejected']} 行: "
                      f"{report_path}[/yellow]")


@hub_app.command("pull")
def pull(
    due: Annotated[bool, typer.Option("--due", help="run every scheduled pull that is due (cron)")] = False,
) -> None:
    """Run the scheduled pulls (定时采集) that are due; exit 1 if any failed."""
    if not due:
        err_console.print("[red]say --due to run the pulls that are due / 请加 --due[/red]")
        raise typer.Exit(2)
    with cli_session() as (settings, session):
        sessions = db.make_sessionmaker(session.get_bind())  # type: ignore[arg-type]
        outcomes = pulls.pull_run_due(sessions, tmp_dir=Path(settings.data_dir) / "uploads",
                                      max_bytes=settings.hub_max_upload_bytes)
    if not outcomes:
        console.print("no pulls due / 没有到期的采集任务")
        return
    table = Table("pull", "resource / 资源", "status / 结果")
    for o in outcomes:
        table.add_row(str(o.pull_id), o.resource, o.status if o.ok else f"[red]{o.status}[/red]")
    console.print(table)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


@hub_app.command("versions")
def versions(code: str) -> None:
    """A resource's load history (版本历史), newest first."""
    with cli_session() as (_, session):
        page = service.version_list(session, cli_actor(), code, limit=500)
        table = Table("version", "source", "mode", "rows in", "rejected", "+", "~", "-", "rows", "by", "at",
                      "file / note")
        for v in page.items:
            table.add_row(str(v.number), v.source, v.mode, f"{v.rows_in:,}", f"{v.rows_rejected:,}",
                          f"{v.added:,}", f"{v.changed:,}", f"{v.removed:,}", f"{v.row_count:,}",
                          v.created_by, v.created_at.strftime("%Y-%m-%d %H:%M"), v.filename or v.note or "")
    console.print(table)


@hub_app.command("rollback")
def rollback(
    code: str,
    to: Annotated[int, typer.Option("--to", min=0, help="the version to restore (0 empties the resource)")],
    note: Annotated[str | None, typer.Option(help="why, for the history")] = None,
    as_user: As = None,
) -> None:
    """Make an earlier version current again, as a new version (回滚)."""
    with cli_session() as (_, session):
        version = loading.rollback(session, _actor(session, as_user), code, to, note=note)
        console.print(f"[green]version {version.number}[/green] restores version {to}: "
                      f"{version.row_count:,} rows (+{version.added} ~{version.changed} -{version.removed})")


def register(app: typer.Typer) -> None:
    """Mount `cityos hub ...` on the top-level command."""
    app.add_typer(hub_app, name="hub")
