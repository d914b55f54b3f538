"""Open-data commands (公共数据开放): list the datasets, rebuild a published copy from its source,
dry-run the publication checks, the open rate per department, and write buffered usage counts.

Each command acts as the platform (the CLI's system actor, audited under the OS user's name);
what is audited is audited by the services it calls.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cityos.core import db
from cityos.core.cli import cli_actor, cli_session, console, err_console
from cityos.core.errors import Conflict
from cityos.opendata import applications, service, snapshot, stats

opendata_app = typer.Typer(help="Open data: datasets, refresh, checks, figures / 公共数据开放",
                           no_args_is_help=True)
PAGE = 500


def _state(state: str) -> str:
    label = f"{state} {service.STATES.get(state, '')}".strip()
    return {"published": f"[green]{label}[/green]", "refused": f"[red]{label}[/red]"}.get(state, label)


def _kanon(built: snapshot.Built, quasi: list[str]) -> str:
    """The k-anonymity result in one line (k-匿名检查结果)."""
    r = built.kanon
    if r is None:
        return "k-anonymity: no quasi-identifiers, not checked / 未设准标识符，未做k-匿名检查"
    over = ", ".join(quasi)
    if r.ok:
        return (f"[green]k-anonymity holds / 满足k-匿名[/green]: k={r.k} over {over}; smallest group "
                f"{r.smallest:,} rows, {r.classes:,} groups / 最小组{r.smallest:,}行，共{r.classes:,}组")
    groups = "; ".join(", ".join(f"{k}={v}" for k, v in combo.items()) + f" ({n})"
                       for combo, n in r.offending[:5])
    return (f"[red]k-anonymity fails / 不满足k-匿名[/red]: k={r.k} over {over}; {r.offending_rows:,} rows in "
            f"groups below k, smallest first: {groups}")


@opendata_app.command("datasets")
def datasets(
    state: Annotated[str | None, typer.Option(help=", ".join(service.STATES))] = None,
    department: Annotated[str | None, typer.Option(help="department code, e.g. 220200-hbj")] = None,
) -> None:
    """List the datasets: state, rows, source version, why a copy is held (数据集列表)."""
    with cli_session() as (_, session):
        found: list[Any] = []
        offset: int | None = 0
        while offset is not None:
            page = service.dataset_list(session, cli_actor(), state=state, department=department,
                                        limit=PAGE, offset=offset)
            found += page.items
            offset = page.next_offset
        table = Table("name / 名称", "title / 标题", "department / 部门", "level / 级别", "state / 状态",
                      "rows / 行数", "source version / 源版本", "held / 暂缓原因",
                      caption=f"{len(found)} datasets / 个数据集")
        for ds in sorted(found, key=lambda d: (d.department.code, d.name)):
            current = ds.resource.current_version
            version = str(ds.source_version) if ds.source_version == current or not ds.public else (
                f"[yellow]{ds.source_version} (source at {current} / 源已至{current})[/yellow]")
            table.add_row(ds.name, ds.title, ds.department.name, service.OPEN_LEVELS[ds.open_level][0],
                          _state(ds.state), f"{ds.row_count:,}", version,
                          f"[yellow]{ds.held_reason}[/yellow]" if ds.held_reason else "")
    console.print(table)


@opendata_app.command("refresh")
def refresh(name: Annotated[str, typer.Argument(help="the dataset's name (or id)")]) -> None:
    """Rebuild a published dataset's copy from its source's current version now (立即重建).

    A copy that fails de-identification or k-anonymity is held back: the last good copy stays
    public, the reason is recorded, and the command exits 1."""
    with cli_session() as (_, session):
        ds = service.dataset_by_name(session, name)
        if not ds.public:
            raise Conflict(f"{ds.name} is {ds.state}, not published: nothing to refresh / 未开放，无需重建")
        res = ds.resource
        with console.status(f"rebuilding / 正在重建 {ds.name} from {res.code} version {res.current_version} "
                            f"({res.row_count:,} rows)…"):
            built = service.dataset_refresh(session, ds)
        quasi = list(ds.quasi_identifiers)
        held = None if built.ok else (built.reason or ds.held_reason or "held / 暂缓")
    if held is not None:
        err_console.print(f"[red]{ds.name}: held back / 已暂缓更新: {held}[/red]")
        err_console.print(f"the copy of version {ds.source_version} stays public / 仍开放上一版本副本")
        if built.kanon is not None:
            err_console.print(_kanon(built, quasi))
        raise typer.Exit(1)
    console.print(f"[green]{ds.name}[/green]: {built.rows:,} rows from source version {ds.source_version} "
                  f"/ 已按源版本{ds.source_version}重建，{built.rows:,}行")
    console.print(_kanon(built, quasi))


@opendata_app.command("check")
def check(name: Annotated[str, typer.Argument(help="the dataset's name (or id)")]) -> None:
    """Dry-run the publication checks (发布检查): de-identification rules and k-anonymity;
    writes nothing. Exits 1 naming what fails."""
    with cli_session() as (_, session):
        ds = service.dataset_by_name(session, name)
        with console.status(f"checking / 正在检查 {ds.name} ({ds.resource.row_count:,} source rows)…"):
            built = service.publication_check(session, ds)
        table = Table("column / 字段", "title / 标题", "type / 类型", "from / 来源", "rule / 脱敏",
                      title=f"{ds.name}: would publish / 将开放")
        for f in built.fields:
            table.add_row(f["id"], f["title"], f["type"], f["source"], f["rule"] or "")
        suppressed = sorted({i.name for i in ds.resource.items} - {f["source"] for f in built.fields})
        quasi = list(ds.quasi_identifiers)
    console.print(table)
    if suppressed:
        console.print(f"suppressed / 不开放: {', '.join(suppressed)}")
    console.print(f"[green]passes / 检查通过[/green]: {built.rows:,} rows / 行")
    console.print(_kanon(built, quasi))


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


@opendata_app.command("stats")
def stats_command(
    department: Annotated[str | None, typer.Option(help="one department's code")] = None,
) -> None:
    """The open rate per department (非涉密数据开放率) and the plan's progress (开放计划)."""
    with cli_session() as (_, session):
        figures = stats.figures(session, cli_actor(), department=department)
    table = Table(title=f"Open data as of {figures['as_of']} / 公共数据开放统计")
    table.add_column("department / 部门", no_wrap=True)
    for header in ("resources / 资源", "openable / 可开放", "published / 已开放", "open rate / 开放率",
                   "planned / 计划", "overdue / 逾期", "stale / 更新不及时", "held / 暂缓", "views / 浏览",
                   "downloads / 下载", "API calls / 调用"):
        table.add_column(header, justify="right")
    rows = [(f"{d['department_name']} {d['department']}", d) for d in figures["departments"]]
    if department is None:
        rows.append(("[bold]city / 全市[/bold]", figures["city"]))
    for label, f in rows:
        overdue = f"[red]{f['plan_overdue']}[/red]" if f["plan_overdue"] else "0"
        table.add_row(label, str(f["resources"]), str(f["openable"]), str(f["published"]),
                      _rate(f["open_rate"]), f"{f['plan_published']}/{f['planned']}", overdue,
                      str(f["stale"]), str(f["held"]),
                      f"{f['views']:,}", f"{f['downloads']:,}", f"{f['api_calls']:,}")
    console.print(table)


@opendata_app.command("usage-flush")
def usage_flush() -> None:
    """Write the usage counts (views, downloads, API calls) buffered in this process (访问统计)."""
    with cli_session() as (_, session):
        pending = applications.USAGE.pending()
        written = applications.USAGE.flush(db.make_sessionmaker(session.get_bind()))  # type: ignore[arg-type]
    console.print(f"{written:,} of {pending:,} counts written / 已写入{written:,}次计数")


def register(app: typer.Typer) -> None:
    """Mount `cityos opendata ...` on the top-level command."""
    app.add_typer(opendata_app, name="opendata")
