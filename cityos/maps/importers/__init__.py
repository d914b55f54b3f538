"""Layer importers (图层导入): GeoJSON, CSV with coordinate columns, zipped Shapefile and GeoPackage.

`read` is pure: it parses a file, moves every geometry to OGC CRS84 (lon/lat), checks and repairs
it, infers attribute types and returns what the service stores, all or nothing. A feature that
cannot be used is listed in `rejected` with a bilingual reason; a problem with the file as a whole
(syntax, unknown CRS, lat/lon swapped, a zip bomb, too many features) raises `Invalid` and
nothing comes back.

| module | what |
|---|---|
| `source` | the result types, the file as read (`Source`), progress, CRS names |
| `geojson` | FeatureCollection, Feature, bare geometry, newline-delimited (RFC 8142); large files streamed |
| `tables` | CSV (UTF-8, BOM, GBK) with lon/lat or x/y columns, or a WKT column |
| `ogr` | zipped Shapefile (safe unzip, .prj, .cpg or sniffed GBK) and GeoPackage, through pyogrio |
| `checks` | ids, Z, lat/lon swap, transform to CRS84, inside China, geometry type, repair |
| `attributes` | column names as identifiers, and their types inferred |
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cityos.core.errors import Invalid
from cityos.maps.importers.checks import GEOMETRY_TYPES, finish
from cityos.maps.importers.geojson import read_geojson
from cityos.maps.importers.ogr import on_disk, read_ogr
from cityos.maps.importers.source import ImportResult, Progress, Rejected, Ticker, opened, parse_crs
from cityos.maps.importers.tables import read_csv

__all__ = ["FORMATS", "GEOMETRY_TYPES", "ImportResult", "Progress", "Rejected", "read"]

FORMATS = ("geojson", "csv", "shapefile", "gpkg")


def read(
    source: BinaryIO | Path, fmt: str, *, crs: str | None = None, layer: str | None = None,
    x: str | None = None, y: str | None = None, geometry_type: str | None = None,
    fid_field: str | None = None, swap: bool = False, progress: Progress | None = None,
    max_features: int = 5_000_000,
) -> ImportResult:
    """Read a GeoJSON, CSV, zipped Shapefile or GeoPackage layer into checked CRS84 features (导入).

    `crs` overrides what the file says (RFC 7946 GeoJSON and CSV default to CRS84; a Shapefile
    without .prj needs it). `layer` picks a GeoPackage layer or a .shp in the zip; `x`/`y` name
    CSV coordinate columns. `geometry_type` (point, line, polygon, any) rejects other features.
    `swap` exchanges x and y, once the import has said they look swapped. `progress(done, total)`
    is called every ~1% (or 10,000 features when the total is not known beforehand).
    """
    if fmt not in FORMATS:
        raise Invalid("format", f"unknown format {fmt!r}, expected one of {', '.join(FORMATS)} / "
                                "不支持的格式")
    if geometry_type is not None and geometry_type not in GEOMETRY_TYPES:
        raise Invalid("geometry_type", f"expected one of {', '.join(GEOMETRY_TYPES)} / 几何类型无效")
    given = parse_crs(crs, "crs") if crs else None
    tick = Ticker(progress)
    with _gc_paused(), tempfile.TemporaryDirectory(prefix="cityos-import-") as tmp:
        if fmt == "geojson":
            with opened(source) as stream:
                src = read_geojson(stream, given, tick, max_features)
        elif fmt == "csv":
            with opened(source) as stream:
                src = read_csv(stream, given, x, y, tick, max_features)
        else:
            path = on_disk(source, fmt, layer, Path(tmp))
            src = read_ogr(path, fmt, layer, given, tick, max_features)
        tick.finish(len(src.geoms))
        return finish(src, geometry_type, fid_field, swap)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Parsing makes millions of lists and floats, none in a cycle, and the collector would scan
    # them again and again as they pile up: pausing it makes a large import five times faster.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
