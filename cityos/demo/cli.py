"""`cityos demo`: build the demo city, print its logins, then serve it like `cityos serve`."""

from __future__ import annotations

from typing import Annotated

import typer

from cityos.core import cli as core_cli
from cityos.core.errors import CityOSError
from cityos.demo import seed


def demo(
    build_only: Annotated[bool, typer.Option("--build-only", help="build, then exit")] = False,
    host: Annotated[str | None, typer.Option(help="bind address (default from settings)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default from settings)")] = None,
    no_simulate: Annotated[bool, typer.Option(
        "--no-simulate", help="do not start the device simulator / 不启动设备模拟器")] = False,
    scale: Annotated[float | None, typer.Option(
        min=0.0, max=10.0, help="size of the data hub's generated data: 1.0 is ~2.6 million rows, 0.01 a "
        "quick demo, 0 none (default: CITYOS_DEMO_SCALE, else 1.0)")] = None,
) -> None:
    """Build the demo city, Jilin (吉林市), if not built yet, and serve it."""
    settings = core_cli.settings_or_exit()
    try:
        report = seed.build(settings, console=core_cli.console, scale=scale)
    except CityOSError as exc:
        core_cli.err_console.print(f"[red]{exc.detail}[/red]")
        for e in exc.errors:
            core_cli.err_console.print(f"  {e.field}: {e.reason}")
        raise typer.Exit(1) from None
    seed.print_summary(core_cli.console, report, settings, host, port)
    if build_only:
        return
    # The very code of `cityos serve` (imported here: cityos.cli imports this module).
    from pathlib import Path

    from cityos.cli import serve
    from cityos.sensing import simulator

    # The demo's devices report live: the simulator signs in as each of them and posts over HTTP
    # to this very server once it answers.
    sim = None if no_simulate else simulator.start_background(
        Path(settings.data_dir) / simulator.DEVICES_FILE,
        simulator.local_url(host or settings.host, port or settings.port))
    try:
        serve(host=host, port=port)
    finally:
        if sim is not None:
            sim.stop()


def register(app: typer.Typer) -> None:
    """Mount `demo` on the top-level `cityos` command."""
    app.command("demo")(demo)
