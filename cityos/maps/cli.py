"""One map commands (一张图): list layers, import a GeoJSON, CSV, zipped Shapefile or GeoPackage
into a layer with a progress bar. An import is all or nothing: a file with rejected features
loads nothing unless `--keep-valid` says to load the rest, and the report names each one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.orm import Session

from cityos.core import auth
from cityos.core.access import Actor
from cityos.core.cli import cli_actor, cli_session, console, err_console
from cityos.core.errors import Invalid
from cityos.core.service import user_by_name
from cityos.maps import importers, service

maps_app = typer.Typer(help="One map: layers and imports / 一张图：图层与导入", no_args_is_help=True)
SUFFIXES = {".geojson": "geojson", ".json": "geojson", ".csv": "csv", ".zip": "shapefile",
            ".shp": "shapefile", ".gpkg": "gpkg"}
SHOWN = 20

As = Annotated[str | None, typer.Option("--as", help="act as this user (their department's rights); "
                                                     "default: the platform")]


def _actor(session: Session, username: str | None) -> Actor:
    if username is None:
        return cli_actor()
    user = user_by_name(session, username)
    if not user.is_active:
        raise Invalid("as", f"user {username} is deactivated / 用户已停用")
    return auth.user_actor(user)


@maps_app.command("layers")
def layers(as_user: As = None) -> None:
    """List the layers one may read (图层列表)."""
    with cli_session() as (_, session):
        rows = service.layer_list(session, _actor(session, as_user), limit=1000)
        table = Table("code / 代码", "title / 名称", "department / 部门", "type / 类型", "features / 要素",
                      "source CRS / 源坐标系", "public / 公开")
        for layer in rows:
            table.add_row(layer.code, layer.title, layer.department.name, layer.geometry_type,
                          f"{layer.feature_count:,}", layer.source_crs, "✓" if layer.public else "")
        console.print(table)


@maps_app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="GeoJSON, CSV, zipped Shapefile (.zip) or GeoPackage",
                                         exists=True, dir_okay=False)],
    layer: Annotated[str, typer.Option(help="the layer's code")],
    format: Annotated[str | None, typer.Option(help="geojson|csv|shapefile|gpkg (default: from the name)")
                      ] = None,
    crs: Annotated[str | None, typer.Option(help="the file's CRS when it does not say (EPSG:4490, "
                                                 "GCJ-02, ...) / 坐标系")] = None,
    x: Annotated[str | None, typer.Option(help="CSV: longitude/easting column")] = None,
    y: Annotated[str | None, typer.Option(help="CSV: latitude/northing column")] = None,
    source_layer: Annotated[str | None, typer.Option("--source-layer", help="GeoPackage layer")] = None,
    fid_field: Annotated[str | None, typer.Option(help="attribute holding the feature id")] = None,
    swap: Annotated[bool, typer.Option(help="the file has latitude first: exchange x and y")] = False,
    mode: Annotated[str, typer.Option(help="replace the layer, or append")] = "replace",
    keep_valid: Annotated[bool, typer.Option(help="load the valid features, report the rest")] = False,
    as_user: As = None,
) -> None:
    """Import a file into a layer, with a progress bar (导入图层)."""
    fmt = format or SUFFIXES.get(file.suffix.lower())
    if fmt is None:
        err_console.print(f"[red]{file}: give --format (geojson, csv, shapefile, gpkg) / 请指定格式[/red]")
        raise typer.Exit(2)
    with cli_session() as (_, session):
        actor = _actor(session, as_user)
        target = service.layer_by_code(session, layer)  # features_write checks the right to write
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task(f"{file.name} → {layer}", total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            result = importers.read(file, fmt, crs=crs, layer=source_layer, x=x, y=y,
                                    geometry_type=None if target.geometry_type == "any"
                                    else target.geometry_type,
                                    fid_field=fid_field, swap=swap, progress=progress)
        for warning in result.warnings:
            console.print(f"[yellow]{warning}[/yellow]")
        if result.rejected_total:
            for r in result.rejected[:SHOWN]:
                err_console.print(f"  feature {r.index} {r.fid or ''}: {r.reason}")
            more = result.rejected_total - min(SHOWN, len(result.rejected))
            if more > 0:
                err_console.print(f"  … {more} more / 另有 {more} 个")
            if not keep_valid:
                err_console.print(f"[red]{result.rejected_total} features rejected: nothing imported "
                                  f"(--keep-valid loads the rest) / {result.rejected_total} 个要素被拒绝，"
                                  "未导入任何数据[/red]")
                raise typer.Exit(1)
        written = service.features_write(session, actor, layer, result.features, mode=mode)
        session.commit()
    table = Table("read / 读入", "rejected / 拒绝", "repaired / 修复", "written / 写入", "layer now / 现有",
                  "source CRS / 源坐标系")
    table.add_row(f"{len(result.features) + result.rejected_total:,}", f"{result.rejected_total:,}",
                  f"{len(result.repaired) + len(written.repaired):,}", f"{written.written:,}",
                  f"{written.feature_count:,}", result.source_crs)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Mount `cityos maps ...` on the top-level command."""
    app.add_typer(maps_app, name="maps")
