"""The `cityos` command: every package's sub-commands under one Typer app."""

from __future__ import annotations

from typing import Annotated

import typer

from cityos.cases import cli as cases_cli
from cityos.core import cli as core_cli
from cityos.demo import cli as demo_cli
from cityos.hub import cli as hub_cli
from cityos.maps import cli as maps_cli
from cityos.opendata import cli as opendata_cli
from cityos.ops import cli as ops_cli
from cityos.sensing import cli as sensing_cli

app = typer.Typer(help="CityOS smart-city platform / 智慧城市平台", no_args_is_help=True,
                  pretty_exceptions_enable=False)
core_cli.register(app)
demo_cli.register(app)
hub_cli.register(app)
opendata_cli.register(app)
maps_cli.register(app)
sensing_cli.register(app)
cases_cli.register(app)
ops_cli.register(app)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default from settings)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default from settings)")] = None,
) -> None:
    """Serve the platform (API, console, portal) until Ctrl-C."""
    import uvicorn

    from cityos.app import create_app
    from cityos.core import db, logs

    settings = core_cli.settings_or_exit()
    logs.setup(settings.log_level)
    _tune_malloc()
    try:
        application = create_app(settings)
    except db.NotMigrated as exc:
        core_cli.err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    tune_gc()
    uvicorn.run(application, host=host or settings.host, port=port or settings.port,
                log_config=None, proxy_headers=False)


def _tune_malloc(arenas: int = 2, mmap_threshold: int = 128 * 1024) -> None:
    """glibc gives threads their own malloc arenas (up to 8 per core) that each keep freed memory:
    the server's worker, writer and rules threads then grow resident memory for nothing. Two do.

    And glibc raises its mmap threshold to the largest block freed so far, so that after the first
    request body of a few hundred KB such blocks come from the heap, where freeing them leaves holes
    instead of returning them (+12 MB of free heap in the ingest soak; 5 MB with the threshold
    fixed, which also keeps glibc's trim threshold at its default)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def tune_gc(young: int = 10_000) -> None:
    """Called once the app is built. Python's cyclic garbage collector ran ~70 times a second under
    load and its full passes walked the ~370,000 objects of the loaded app (140 ms each): 0.8 ms
    of every shared-data read. Those objects live as long as the process, so they are frozen out of
    its passes, and the youngest generation is collected after 10,000 net allocations instead of
    700 (a request's own objects are freed by reference counting long before): 5 collections in
    15 s instead of 400, CPU per read -18% (docs/benchmarks.md)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(young, 10, 10)


def main() -> None:
    app()
