"""Case commands (工单): `cityos cases train` fits the smart-dispatch model on the closed cases
and reports its held-out accuracy; `sweep` runs the deadline clock once; `workflows` lists the
workflow versions and `publish` adds one from a BPMN file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cityos.cases import service, steps
from cityos.core.cli import cli_actor, cli_session, console

cases_app = typer.Typer(help="Cases: dispatch model, deadlines, workflows / 工单：智能派单、时限、流程",
                        no_args_is_help=True)


@cases_app.command()
def train(min_cases: Annotated[int, typer.Option(min=2, help="refuse with fewer closed cases")] = 50) -> None:
    """Train the dispatch model on closed cases (训练智能派单模型): held-out top-1 and top-3."""
    from cityos.cases import dispatching

    with cli_session() as (_settings, session), console.status("training / 训练中…"):
        model = dispatching.train_from_db(session, cli_actor(), min_cases=min_cases)
    for line in dispatching.report_lines(model.metrics):
        console.print(line)


@cases_app.command()
def sweep() -> None:
    """Mark tasks due soon and overdue, and escalate overdue cases (时限监控), once."""
    with cli_session() as (_settings, session):
        report = steps.sweep(session)
    console.print(f"{report.warned} due soon / 预警, {report.overdue} overdue / 超期, "
                  f"{len(report.escalated)} cases escalated / 自动督办")


@cases_app.command()
def workflows() -> None:
    """List the workflow versions (流程版本)."""
    with cli_session() as (_settings, session):
        table = Table("code / 代码", "version / 版本", "name / 名称", "active / 启用", "process / 流程 id")
        for wf in service.workflow_list(session):
            table.add_row(wf.code, str(wf.version), wf.name, "✓" if wf.active else "", wf.process_id)
    console.print(table)


@cases_app.command()
def publish(
    code: Annotated[str, typer.Argument(help="workflow code, e.g. hotline")],
    bpmn: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="a BPMN 2.0 file")],
    name: Annotated[str, typer.Option(help="the workflow's name")],
    department: Annotated[str | None, typer.Option(help="the centre that holds its cases (department code)")
                          ] = None,
) -> None:
    """Publish a new version of a workflow from a BPMN file (发布流程)."""
    with cli_session() as (_settings, session):
        wf = service.workflow_publish(session, cli_actor(), code, bpmn.read_text(encoding="utf-8"),
                                      name=name, department=department)
        console.print(f"published / 已发布 {wf.code} version {wf.version}")


def register(app: typer.Typer) -> None:
    app.add_typer(cases_app, name="cases")
