"""Shapefile (as a .zip) and GeoPackage through pyogrio, whose wheels bring GDAL.

A zip is checked before anything is unpacked (entry count, declared size, no absolute or `..`
paths) and unpacked with a byte budget, since declared sizes can lie. A .dbf without .cpg or
language id is sniffed: UTF-8 if its text decodes so, else GBK, which is what Chinese tools write.
"""

from __future__ import annotations

import codecs
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import shapely

from cityos.core.errors import Invalid
from cityos.maps import crs as crs_mod
from cityos.maps.importers.source import Source, Ticker, check_count, parse_crs

ZIP_MAX_BYTES = 2 << 30  # uncompressed, all entries together
ZIP_MAX_ENTRIES = 10_000


def on_disk(source: BinaryIO | Path, fmt: str, layer: str | None, tmp: Path) -> Path:
    """A file GDAL can open: the .shp from the zip (or given), or the GeoPackage itself."""
    if isinstance(source, Path):
        if fmt == "gpkg" or source.suffix.lower() == ".shp":
            return source
        with source.open("rb") as stream:
            return _unzip_shapefile(stream, layer, tmp)
    if fmt == "gpkg" or not source.seekable():  # SQLite needs a file, and zipfile a seekable stream
        path = tmp / ("layer.gpkg" if fmt == "gpkg" else "upload.zip")
        with path.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        if fmt == "gpkg":
            return path
        with path.open("rb") as stream:
            return _unzip_shapefile(stream, layer, tmp)
    return _unzip_shapefile(source, layer, tmp)


def _zip_name(info: zipfile.ZipInfo) -> str:
    # Zips made on Chinese Windows store GBK names without the UTF-8 flag; zipfile reads cp437.
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("gb18030")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _unzip_shapefile(stream: BinaryIO, layer: str | None, tmp: Path) -> Path:
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError):
        raise Invalid("file", "not a zip archive: upload the Shapefile as a .zip of its .shp, .shx, .dbf "
                              "and .prj / 不是zip压缩包") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > ZIP_MAX_ENTRIES:
            raise Invalid("file", f"the archive has {len(infos):,} entries, more than {ZIP_MAX_ENTRIES:,} / "
                                  "压缩包内文件过多")
        for info in infos:
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise Invalid("file", f"unsafe path in the archive: {_zip_name(info)[:80]!r} / "
                                      "压缩包内含不安全的路径")
        if sum(i.file_size for i in infos) > ZIP_MAX_BYTES:
            raise Invalid("file", f"the archive unpacks to more than {ZIP_MAX_BYTES >> 30} GiB / 解压后过大")
        members = {_zip_name(i): i for i in infos
                   if not i.is_dir() and "__MACOSX" not in i.filename and not i.filename.rsplit("/")[-1]
                   .startswith("._")}
        shps = sorted(n[:-4] for n in members if n.lower().endswith(".shp"))
        if not shps:
            raise Invalid("file", "no .shp file in the archive / 压缩包内没有.shp文件")
        if layer is not None:
            chosen = [s for s in shps if s == layer or s.rsplit("/", 1)[-1] == layer]
            if not chosen:
                raise Invalid("layer", f"no layer {layer!r}; the archive has {', '.join(shps)} / 没有该图层")
            stem = chosen[0]
        elif len(shps) > 1:
            raise Invalid("layer", f"the archive holds {len(shps)} layers, choose one: {', '.join(shps)} / "
                                   "压缩包内有多个图层，请选择其一")
        else:
            stem = shps[0]
        files = {name[len(stem):].lower(): info for name, info in members.items()
                 if name[:len(stem)].lower() == stem.lower()}
        missing = [ext for ext in (".shx", ".dbf") if ext not in files]
        if missing:
            raise Invalid("file", f"{stem}.shp comes without {' and '.join(missing)}: zip all the files "
                                  "of the Shapefile / Shapefile文件不完整")
        budget = ZIP_MAX_BYTES
        for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
            if ext in files:
                budget = _extract(archive, files[ext], tmp / f"layer{ext}", budget)
    return tmp / "layer.shp"


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int) -> int:
    # Sizes in the directory can lie; count what actually comes out.
    try:
        with archive.open(info) as src, dest.open("wb") as out:
            while chunk := src.read(1 << 20):
                budget -= len(chunk)
                if budget < 0:
                    raise Invalid("file", f"the archive unpacks to more than {ZIP_MAX_BYTES >> 30} GiB / "
                                          "解压后过大")
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:  # bad CRC, cut short
        raise Invalid("file", f"the archive is damaged: {_zip_name(info)[:80]}: {exc} / "
                              "压缩包已损坏") from None
    return budget


def _dbf_encoding(shp: Path) -> str | None:
    """For a .dbf without .cpg or language id: UTF-8 if its text decodes so, else GB18030 (GBK)."""
    dbf = shp.with_suffix(".dbf")
    if shp.with_suffix(".cpg").exists() or not dbf.exists():
        return None
    with dbf.open("rb") as f:
        data = f.read(4 << 20)
    if len(data) > 29 and data[29] != 0:
        return None  # GDAL maps the language driver id to a code page itself
    if data.isascii():
        return None
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, False)
    except UnicodeDecodeError:
        return "gb18030"  # a superset of GBK, which ArcGIS and most Chinese tools write
    return "utf-8"


def read_ogr(
    path: Path, fmt: str, layer: str | None, given: crs_mod.Crs | None, tick: Ticker, max_features: int
) -> Source:
    """Read one layer of a Shapefile or GeoPackage: WKB geometries and typed columns (Arrow)."""
    # Imported by Shapefile and GeoPackage imports only: it loads GDAL.
    from pyogrio.errors import DataLayerError, DataSourceError  # type: ignore[import-untyped, unused-ignore]

    kind = "GeoPackage" if fmt == "gpkg" else "Shapefile"
    try:
        return _read_layer(path, fmt, layer, given, tick, max_features)
    except (DataSourceError, DataLayerError) as exc:
        raise Invalid("file", f"not a readable {kind}: {str(exc)[:200]} / 无法读取该{kind}文件") from None


def _gpkg_layer(path: Path, layer: str | None) -> str:
    import pyogrio  # type: ignore[import-untyped, unused-ignore]

    layers = {str(n): t for n, t in pyogrio.list_layers(path)}
    spatial = [n for n, t in layers.items() if t is not None]
    if layer is None and len(spatial) == 1:
        return spatial[0]
    if layer is None:
        raise Invalid("layer", f"the GeoPackage holds {len(spatial)} layers, choose one: {', '.join(spatial)}"
                               " / 有多个图层，请选择其一" if spatial else
                               "the GeoPackage has no layer with geometries / 没有空间图层")
    if layer not in layers:
        raise Invalid("layer", f"no layer {layer!r}; the GeoPackage has {', '.join(spatial)} / 没有该图层")
    if layers[layer] is None:
        raise Invalid("layer", f"layer {layer!r} is a table without geometries / 该图层没有几何")
    return layer


def _read_layer(
    path: Path, fmt: str, layer: str | None, given: crs_mod.Crs | None, tick: Ticker, max_features: int
) -> Source:
    import pyogrio  # type: ignore[import-untyped, unused-ignore]

    encoding = _dbf_encoding(path) if fmt == "shapefile" else None
    layer = _gpkg_layer(path, layer) if fmt == "gpkg" else None
    info = pyogrio.read_info(path, layer=layer, encoding=encoding)
    if given is None and not info.get("crs"):
        raise Invalid("crs", "the layer does not say its coordinate system (no .prj): give the CRS / "
                             "图层缺少坐标系信息（无.prj文件），请指定坐标系")
    src = Source(given or parse_crs(info["crs"], "layer CRS"))
    total = int(info.get("features") or 0)
    check_count(total, max_features)
    tick.start(total or None)
    gpkg = fmt == "gpkg"  # a GeoPackage's fids are its own; a Shapefile's are record numbers
    with pyogrio.open_arrow(path, layer=layer, encoding=encoding, use_pyarrow=True, return_fids=gpkg,
                            batch_size=10_000) as (meta, reader):
        geom_col = meta.get("geometry_name") or "wkb_geometry"
        fid_col = meta.get("fid_column") or "OGC_FID"
        names = [n for n in reader.schema.names if n not in (geom_col, fid_col)]
        src.columns = {n: [] for n in names}
        src.kinds = {n: f"arrow:{reader.schema.field(n).type}" for n in names}
        for batch in reader:
            start = len(src.geoms)
            check_count(start + batch.num_rows, max_features)
            wkb = batch.column(geom_col).to_numpy(zero_copy_only=False)
            geoms = shapely.from_wkb(wkb, on_invalid="ignore")
            for k in np.flatnonzero(shapely.is_missing(geoms)).tolist():
                src.bad[start + k] = ("no geometry / 缺少几何" if wkb[k] is None else
                                      "bad geometry / 几何无法解析")
            src.geoms.extend(geoms)
            fids = batch.column(fid_col).to_pylist() if gpkg else [None] * batch.num_rows
            src.fids.extend(None if f is None else str(f) for f in fids)
            for n in names:
                src.columns[n].extend(batch.column(n).to_pylist())
            tick(len(src.geoms))
    return src
