"""Operations center commands (运行中心): `cityos ops refresh` recomputes the vital signs that are
due and the plan's computed indicators; `plan` prints table 1 against its targets; `projects`
lists the 43 key projects."""

from __future__ import annotations

import typer
from rich.table import Table

from cityos.core.cli import cli_actor, cli_session, console
from cityos.ops import plan as plan_mod
from cityos.ops import projects as projects_mod
from cityos.ops.models import PROJECT_STATUSES

ops_app = typer.Typer(help="Operations center: indicators, plan, projects / 运行中心：指标、规划、项目",
                      no_args_is_help=True)
STATUS = {"met": "[green]已达标 met[/]", "gap": "[yellow]未达标 gap[/]", "unknown": "[dim]暂无 no data[/]"}


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}".rstrip("0").rstrip(".")


@ops_app.command()
def refresh() -> None:
    """Refresh the indicators that are due (运行体征) and recompute the plan's indicators (规划指标)."""
    with cli_session() as (_settings, session):
        try:
            from cityos.ops import indicators

            n_ind = len(indicators.refresh_due(session))
        except (ImportError, AttributeError):
            n_ind = 0
            console.print("indicators.refresh_due is not available / 运行体征指标刷新不可用")
        plan_mod.load(session)
        n_plan = plan_mod.refresh(session)
    console.print(f"{n_ind} indicators refreshed / 运行体征已刷新, "
                  f"{n_plan} plan indicators computed / 规划指标已计算")


@ops_app.command()
def plan() -> None:
    """Table 1 of the plan against its 2021 targets (规划主要指标进展)."""
    with cli_session() as (_settings, session):
        rows = plan_mod.progress(session, cli_actor())
    table = Table("code / 代码", "indicator / 指标", "value / 当前值", "target / 目标", "status / 状态",
                  "how known / 来源", title="Plan indicators / 规划指标 (表1)")
    for r in rows:
        how = "computed / 系统计算" if r["computed"] else (r["value_source"] or "manual / 手工填报")
        if r["value_as_of"]:
            how += f" ({r['value_as_of']})"
        value = f"{_num(r['value'])} {r['unit'] if r['value'] is not None else ''}"
        table.add_row(r["code"], r["name"], value, f"{r['comparison']} {_num(r['target'])} {r['unit']}",
                      STATUS[r["status"]], how)
    console.print(table)


@ops_app.command()
def projects() -> None:
    """The 43 key projects (重点工程) with status and progress."""
    with cli_session() as (_settings, session):
        rows = [projects_mod.project_dict(p) for p in projects_mod.project_list(session, cli_actor())]
    table = Table("code / 编号", "project / 项目", "lead / 牵头", "period / 周期", "after / 前向",
                  "status / 状态", "progress / 进度", title="Key projects / 重点工程")
    for p in rows:
        table.add_row(p["code"], p["name"], p["lead_name"] or "—", f"{p['start'][:7]}–{p['end'][:7]}",
                      ", ".join(p["predecessors"]), PROJECT_STATUSES[p["status"]][0], f"{p['progress']}%")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(ops_app, name="ops")
