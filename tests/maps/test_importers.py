"""Layer importers: every format written here with pyogrio or the standard library, then read back."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyogrio
import pytest
import shapely
from pyproj import Transformer

from cityos.core.errors import Invalid
from cityos.maps import crs as crs_mod
from cityos.maps import importers
from cityos.maps.importers import read

TIANANMEN = (116.3975, 39.9087)
SHANGHAI = (121.4737, 31.2304)


def fc(*features: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"type": "FeatureCollection", **extra, "features": list(features)})


def feature(geometry: dict[str, Any] | None, fid: Any = None, **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "Feature", "geometry": geometry, "properties": props}
    if fid is not None:
        out["id"] = fid
    return out


def point(x: float, y: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [x, y]}


def square(x: float, y: float, d: float = 0.01) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]]}


def geojson(data: bytes, **kw: Any) -> importers.ImportResult:
    return read(io.BytesIO(data), "geojson", **kw)


def invalid(fn: Any, *args: Any, **kw: Any) -> Invalid:
    with pytest.raises(Invalid) as info:
        fn(*args, **kw)
    return info.value


def write_layer(path: Path, geoms: list[Any], columns: dict[str, list[Any]], *, crs: str | None,
                geometry_type: str, layer: str | None = None, encoding: str | None = None) -> None:
    table = pa.table({**columns, "geometry": pa.array(shapely.to_wkb(np.array(geoms, dtype=object)), pa.binary())})
    pyogrio.write_arrow(table, path, layer=layer, geometry_name="geometry", geometry_type=geometry_type,
                        crs=crs, encoding=encoding, append=path.exists() and path.suffix == ".gpkg")


def zip_dir(folder: Path, names: list[str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            if names is None or f.name in names:
                zf.write(f, f"data/{f.name}")
    return buf.getvalue()


# -- GeoJSON ---------------------------------------------------------------------------------------


def test_geojson_round_trip_with_typed_and_renamed_attributes() -> None:
    data = fc(
        feature(point(*TIANANMEN), "a", **{"名称": "天安门", "Pop 2020": 12, "Pop-2020": 1.5, "open": True,
                                          "built": "1420-01-01", "seen": "2024-05-01T08:30:00", "meta": {"k": 1}}),
        feature(square(*SHANGHAI), "b", **{"名称": "外滩", "Pop 2020": 7, "Pop-2020": 2, "open": False,
                                          "built": None, "seen": "2024-05-02 09:00:00Z", "meta": [1, 2]}),
    )
    got: list[tuple[int, int | None]] = []
    result = geojson(data, progress=lambda done, total: got.append((done, total)))
    assert [f[0] for f in result.features] == ["a", "b"]
    assert result.features[0][1].equals(shapely.Point(TIANANMEN))
    assert result.features[1][1].equals(shapely.from_geojson(orjson.dumps(square(*SHANGHAI))))
    assert result.geometry_type == "any" and result.source_crs == "OGC:CRS84"
    assert result.rejected == [] and not result.swapped
    types = {a["title"]: (a["name"], a["type"]) for a in result.attributes}
    assert types == {
        "名称": ("field_1", "string"), "Pop 2020": ("pop_2020", "integer"), "Pop-2020": ("pop_2020_2", "number"),
        "open": ("open", "boolean"), "built": ("built", "date"), "seen": ("seen", "datetime"),
        "meta": ("meta", "string"),
    }
    first, second = result.features[0][2], result.features[1][2]
    assert first["field_1"] == "天安门" and first["pop_2020_2"] == 1.5 and second["pop_2020_2"] == 2.0
    assert first["seen"] == "2024-05-01T08:30:00+08:00" and second["seen"] == "2024-05-02T09:00:00+00:00"
    assert first["meta"] == '{"k":1}' and second["built"] is None
    assert got[-1] == (2, 2)


def test_geojson_single_feature_bare_geometry_and_sequence() -> None:
    one = geojson(orjson.dumps(feature(point(*TIANANMEN), 7, name="x")))
    assert one.features[0][0] == "7" and one.geometry_type == "point"
    bare = geojson(orjson.dumps(square(*SHANGHAI)))
    assert bare.features[0][0] == "1" and bare.geometry_type == "polygon"
    seq = b"".join(b"\x1e" + orjson.dumps(feature(point(116 + i / 10, 40), name=f"p{i}")) + b"\n"
                   for i in range(5))
    result = geojson(seq)
    assert [f[0] for f in result.features] == ["1", "2", "3", "4", "5"]
    assert result.features[4][2] == {"name": "p4"}


def test_geojson_syntax_error_names_the_position() -> None:
    broken = b'{"type": "FeatureCollection",\n "features": [\n  {"type": "Feature" "geometry": null}]}'
    err = invalid(geojson, broken)
    assert err.errors[0].field == "file"
    assert "line 3, column 22" in err.detail and "JSON语法错误" in err.detail
    seq = orjson.dumps(feature(point(*TIANANMEN))) + b"\n" + b'{"type": "Feature",\n'
    assert "line 2" in invalid(geojson, seq).detail


def test_large_geojson_streams_with_ijson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importers.geojson, "ORJSON_LIMIT", 100)
    gk = crs_mod.parse("EPSG:4547")
    e, n = Transformer.from_crs("OGC:CRS84", "EPSG:4547", always_xy=True).transform(*TIANANMEN)
    data = fc(*(feature(point(e + i, n), i, n=i) for i in range(50)),
              crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::4547"}})
    result = geojson(data)
    assert result.source_crs == gk.key and len(result.features) == 50
    assert result.features[0][1].x == pytest.approx(TIANANMEN[0], abs=1e-8)
    err = invalid(geojson, data[:-40] + b"}}}")
    assert "near byte" in err.detail


def test_legacy_crs_member_is_honoured_and_an_argument_overrides_it() -> None:
    e, n = Transformer.from_crs("OGC:CRS84", "EPSG:4547", always_xy=True).transform(*TIANANMEN)
    data = fc(feature(point(e, n)), crs={"type": "name", "properties": {"name": "EPSG:4547"}})
    lon, lat = geojson(data).features[0][1].coords[0]
    assert (lon, lat) == pytest.approx(TIANANMEN, abs=1e-8)
    assert invalid(geojson, data, crs="CRS84").errors[0].field == "crs"  # 500 km east of nowhere


# -- CSV -------------------------------------------------------------------------------------------


def test_csv_gcj02_gbk_with_chinese_columns() -> None:
    wgs = np.array([TIANANMEN, SHANGHAI, (113.2644, 23.1291)])
    gx, gy = crs_mod.wgs84_to_gcj02(wgs[:, 0], wgs[:, 1])
    text = "名称,经度,纬度,开放日期,编号,身份证,备注\n" + "".join(
        f"{name},{x:.9f},{y:.9f},2024/5/{i + 1},00{i},11010119900307123{i},\n" for i, (name, x, y) in enumerate(zip(
            ["天安门", "外滩", "广州塔"], gx, gy, strict=True)))
    result = read(io.BytesIO(text.encode("gbk")), "csv", crs="GCJ-02")
    assert result.source_crs == "GCJ-02"
    for (_, geom, _), (lon, lat) in zip(result.features, wgs, strict=True):
        assert (geom.x, geom.y) == pytest.approx((lon, lat), abs=1e-7)
    assert [f[2]["field_1"] for f in result.features] == ["天安门", "外滩", "广州塔"]
    assert {a["title"]: a["type"] for a in result.attributes} == {
        "名称": "string", "开放日期": "date", "编号": "string", "身份证": "string", "备注": "string"}
    assert result.features[0][2]["field_2"] == "2024-05-01" and result.features[2][2]["field_3"] == "002"


def test_csv_named_columns_bom_and_bad_rows() -> None:
    text = "\ufeffid,E,N,v\n1,116.40,39.90,1.5\n2,116.4,abc,2\n3,,,3\n4,121.47,31.23,x\n"
    result = read(io.BytesIO(text.encode()), "csv", x="e", y="n", fid_field="id")
    assert [f[0] for f in result.features] == ["1", "4"]
    assert result.features[1][1].equals(shapely.Point(121.47, 31.23))
    assert [(r.index, r.fid) for r in result.rejected] == [(1, "2"), (2, "3")]
    assert "line 3" in result.rejected[0].reason and "not numbers" in result.rejected[0].reason
    assert "line 4" in result.rejected[1].reason and "缺少坐标" in result.rejected[1].reason
    assert {a["name"]: a["type"] for a in result.attributes} == {"id": "integer", "v": "string"}
    assert "x" in invalid(read, io.BytesIO(b"a,b\n1,2\n"), "csv").detail


def test_csv_wkt_column() -> None:
    text = 'name,wkt\nroad,"LINESTRING (116.39 39.90, 116.41 39.91)"\nbad,"LINESTRING (1"\n'
    result = read(io.BytesIO(text.encode()), "csv", geometry_type="line")
    assert result.geometry_type == "line" and len(result.features) == 1
    assert "bad WKT" in result.rejected[0].reason


# -- Shapefile -------------------------------------------------------------------------------------


def gk_points(tmp_path: Path, *, cpg: bool = True, prj: bool = True) -> tuple[bytes, np.ndarray]:
    lonlat = np.array([TIANANMEN, (116.30, 39.98), (116.55, 39.75)])
    e, n = Transformer.from_crs("OGC:CRS84", "EPSG:4547", always_xy=True).transform(lonlat[:, 0], lonlat[:, 1])
    folder = tmp_path / "shp"
    folder.mkdir()
    write_layer(folder / "点位.shp", list(shapely.points(e, n)),
                {"名称": ["天安门", "北京大学", "亦庄"], "级别": [1, 2, 3], "面积": [1.5, 2.5, None]},
                crs="EPSG:4547", geometry_type="Point", encoding="GBK")
    if not cpg:
        (folder / "点位.cpg").unlink()
    if not prj:
        (folder / "点位.prj").unlink()
    return zip_dir(folder), lonlat


def test_shapefile_gbk_gauss_kruger_to_crs84(tmp_path: Path) -> None:
    data, lonlat = gk_points(tmp_path)
    got: list[tuple[int, int | None]] = []
    result = read(io.BytesIO(data), "shapefile", progress=lambda d, t: got.append((d, t)))
    assert result.source_crs == "EPSG:4547" and result.geometry_type == "point"
    expect = Transformer.from_crs("EPSG:4547", "OGC:CRS84", always_xy=True)
    for (_, geom, _), (lon, lat) in zip(result.features, lonlat, strict=True):
        assert (geom.x, geom.y) == pytest.approx((lon, lat), abs=1e-8)
        assert (geom.x, geom.y) == pytest.approx(expect.transform(*Transformer.from_crs(
            "OGC:CRS84", "EPSG:4547", always_xy=True).transform(lon, lat)), abs=1e-12)
    assert [f[2]["field_1"] for f in result.features] == ["天安门", "北京大学", "亦庄"]
    assert [(a["title"], a["type"]) for a in result.attributes] == [
        ("名称", "string"), ("级别", "integer"), ("面积", "number")]
    assert got[-1] == (3, 3)


def test_shapefile_gbk_without_cpg_is_detected(tmp_path: Path) -> None:
    data, _ = gk_points(tmp_path, cpg=False)
    result = read(io.BytesIO(data), "shapefile")
    assert [f[2]["field_1"] for f in result.features] == ["天安门", "北京大学", "亦庄"]


def test_shapefile_without_prj_needs_a_crs(tmp_path: Path) -> None:
    data, lonlat = gk_points(tmp_path, prj=False)
    assert "prj" in invalid(read, io.BytesIO(data), "shapefile").detail
    result = read(io.BytesIO(data), "shapefile", crs="EPSG:4547")
    assert result.features[0][1].x == pytest.approx(lonlat[0][0], abs=1e-8)


def test_shapefile_with_unsupported_prj_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "utm"
    folder.mkdir()
    write_layer(folder / "a.shp", [shapely.Point(448_000, 4_418_000)], {"n": [1]}, crs="EPSG:32650",
                geometry_type="Point")
    err = invalid(read, io.BytesIO(zip_dir(folder)), "shapefile")
    assert err.errors[0].field == "crs" and "不支持的坐标系" in err.detail


def test_shapefile_zip_with_several_layers_must_choose(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("roads", "shops"):
        write_layer(folder / f"{name}.shp", [shapely.Point(*TIANANMEN)], {"n": [1]}, crs="EPSG:4326",
                    geometry_type="Point")
    data = zip_dir(folder)
    err = invalid(read, io.BytesIO(data), "shapefile")
    assert err.errors[0].field == "layer" and "data/roads" in err.detail and "data/shops" in err.detail
    assert len(read(io.BytesIO(data), "shapefile", layer="shops").features) == 1


def test_zip_path_traversal_and_bombs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def archive(entries: dict[str, bytes]) -> io.BytesIO:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, content in entries.items():
                zf.writestr(name, content)
        buf.seek(0)
        return buf

    for name in ("../evil.shp", "/etc/evil.shp", "a/../../evil.shp", "C:/evil.shp", "..\\evil.shp"):
        assert "unsafe path" in invalid(read, archive({name: b"x"}), "shapefile").detail
    monkeypatch.setattr(importers.ogr, "ZIP_MAX_BYTES", 1 << 20)
    bomb = archive({"a.shp": bytes(2 << 20)})
    assert len(bomb.getvalue()) < 10_000
    assert "unpacks to more than" in invalid(read, bomb, "shapefile").detail
    monkeypatch.setattr(importers.ogr, "ZIP_MAX_ENTRIES", 3)
    assert "entries" in invalid(read, archive({f"{i}.txt": b"" for i in range(4)}), "shapefile").detail
    assert "not a zip" in invalid(read, io.BytesIO(b"PK not really"), "shapefile").detail
    assert "no .shp" in invalid(read, archive({"readme.txt": b"hi"}), "shapefile").detail
    assert "without .dbf" in invalid(read, archive({"a.SHP": b"", "a.shx": b""}), "shapefile").detail
    damaged = archive({"a.shp": b"nonsense", "a.shx": b"", "a.dbf": b""})
    assert "not a readable Shapefile" in invalid(read, damaged, "shapefile").detail


def test_zip_lying_about_sizes_is_cut_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The directory says 10 bytes; the data inflates to 2 MiB. zipfile stops at the stated size and
    # finds the CRC wrong; extraction also counts what comes out.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.shp", bytes(2 << 20))
        zf.writestr("a.shx", b"")
        zf.writestr("a.dbf", b"")
    raw = bytearray(buf.getvalue())
    size = (2 << 20).to_bytes(4, "little")
    for at in (i for i in range(len(raw) - 3) if raw[i:i + 4] == size):
        raw[at:at + 4] = (10).to_bytes(4, "little")
    monkeypatch.setattr(importers.ogr, "ZIP_MAX_BYTES", 1 << 20)
    assert "archive is damaged" in invalid(read, io.BytesIO(bytes(raw)), "shapefile").detail


# -- GeoPackage ------------------------------------------------------------------------------------


def test_geopackage_layers_fids_and_types(tmp_path: Path) -> None:
    path = tmp_path / "city.gpkg"
    write_layer(path, [shapely.Point(*TIANANMEN), shapely.Point(*SHANGHAI)],
                {"name": ["a", "b"], "ok": [True, False],
                 "day": pa.array([np_date("2024-01-02"), None], pa.date32()),
                 "at": pa.array([np.datetime64("2024-01-02T03:04:05"), None], pa.timestamp("s"))},
                crs="EPSG:4490", geometry_type="Point", layer="poi")
    write_layer(path, [shapely.from_geojson(orjson.dumps(square(*SHANGHAI)))], {"name": ["z"]},
                crs="EPSG:4490", geometry_type="Polygon", layer="zones")
    err = invalid(read, path, "gpkg")
    assert err.errors[0].field == "layer" and "poi" in err.detail and "zones" in err.detail
    assert invalid(read, path, "gpkg", layer="nope").errors[0].field == "layer"
    result = read(io.BytesIO(path.read_bytes()), "gpkg", layer="poi")
    assert result.source_crs == "EPSG:4490" and [f[0] for f in result.features] == ["1", "2"]
    assert result.features[0][1].equals(shapely.Point(*TIANANMEN))
    assert {a["name"]: a["type"] for a in result.attributes} == {
        "name": "string", "ok": "boolean", "day": "date", "at": "datetime"}
    assert result.features[0][2] == {"name": "a", "ok": True, "day": "2024-01-02",
                                     "at": "2024-01-02T03:04:05+00:00"}  # GeoPackage times are UTC
    assert "GeoPackage" in invalid(read, io.BytesIO(b"not sqlite at all" * 100), "gpkg").detail


def np_date(text: str) -> Any:
    return np.datetime64(text, "D").astype(object)


# -- checks ----------------------------------------------------------------------------------------


def test_bow_tie_is_rejected_and_a_small_twist_repaired() -> None:
    x, y = TIANANMEN
    bow_tie = {"type": "Polygon", "coordinates": [[[x, y], [x + .01, y + .01], [x + .01, y], [x, y + .01],
                                                   [x, y]]]}
    # A square whose last corner is crossed over by a tiny loop: make_valid adds 0.02% of area.
    twist = {"type": "Polygon", "coordinates": [[[x, y], [x + .01, y], [x + .01, y + .01], [x + .0001, y + .01],
                                                 [x, y + .0099], [x, y + .0101], [x, y]]]}
    result = geojson(fc(feature(bow_tie, "bow"), feature(twist, "twist"), feature(square(x, y), "ok")))
    assert [f[0] for f in result.features] == ["twist", "ok"]
    (rej,) = result.rejected
    assert rej.fid == "bow" and rej.index == 0
    assert f"self-intersection at ({x + .005:.6f}, {y + .005:.6f})" in rej.reason
    assert "cannot be repaired safely" in rej.reason and "自相交" in rej.reason
    ((fid, what),) = result.repaired
    assert fid == "twist" and "repaired" in what
    assert result.features[0][1].is_valid and result.features[0][1].geom_type in ("Polygon", "MultiPolygon")


def test_outside_china_rejected_and_mostly_outside_refused() -> None:
    inside = [feature(point(116 + i / 100, 40)) for i in range(9)]
    result = geojson(fc(*inside, feature(point(2.35, 48.85), "paris")))
    assert len(result.features) == 9
    (rej,) = result.rejected
    assert rej.fid == "10" and "outside China" in rej.reason and "(2.350000, 48.850000)" in rej.reason
    err = invalid(geojson, fc(*(feature(point(2.35 + i / 100, 48.85)) for i in range(5))))
    assert err.errors[0].field == "crs" and "100% of the features fall outside China" in err.detail


def test_swapped_lat_lon_detected_and_swapped_on_request() -> None:
    data = fc(*(feature(point(39.9 + i / 100, 116.4)) for i in range(5)))
    err = invalid(geojson, data)
    assert err.errors[0].field == "swap" and "swap=true" in err.detail and "经纬度疑似颠倒" in err.detail
    result = geojson(data, swap=True)
    assert result.swapped and result.features[0][1].equals(shapely.Point(116.4, 39.9))
    assert invalid(geojson, fc(feature(point(*TIANANMEN))), swap=True).errors[0].field == "crs"


def test_unknown_crs_refused() -> None:
    data = fc(feature(point(*TIANANMEN)))
    assert invalid(geojson, data, crs="EPSG:2000").errors[0].field == "crs"
    assert invalid(geojson, data, crs="Mars 2000").errors[0].field == "crs"
    legacy = fc(feature(point(*TIANANMEN)), crs={"type": "name", "properties": {"name": "EPSG:27700"}})
    err = invalid(geojson, legacy)
    assert err.errors[0].field == "crs" and "GeoJSON crs" in err.detail


def test_type_mismatch_empty_missing_and_bad_geometries_rejected() -> None:
    result = geojson(fc(
        feature(point(*TIANANMEN), "p"), feature(square(*TIANANMEN), "sq"), feature(None, "none"),
        feature({"type": "Point", "coordinates": []}, "empty"), feature({"type": "Point", "coordinates": [1]}, "bad"),
        {"type": "Nonsense"}), geometry_type="point")
    assert [f[0] for f in result.features] == ["p"]
    reasons = {r.index: r.reason for r in result.rejected}
    assert "expected a point, got a polygon" in reasons[1] and "缺少几何" in reasons[2]
    assert "几何为空" in reasons[3] and "bad geometry" in reasons[4] and "not a GeoJSON Feature" in reasons[5]
    assert result.rejected_total == 5
    assert result.warnings == []  # the feature without an id is broken anyway: ids are kept


def test_z_dropped_once_and_fid_field_duplicates_rejected() -> None:
    result = geojson(fc(*(feature({"type": "Point", "coordinates": [116 + i / 100, 40, 50]}, code=i % 3)
                          for i in range(4))), fid_field="code")
    assert [f[0] for f in result.features] == ["0", "1", "2"] and not result.features[0][1].has_z
    assert len(result.warnings) == 1 and "Z dropped from 3 features" in result.warnings[0]
    assert result.rejected[0].index == 3 and "repeats feature 0" in result.rejected[0].reason
    assert invalid(geojson, fc(feature(point(*TIANANMEN))), fid_field="nope").errors[0].field == "fid_field"


def test_limits_and_arguments() -> None:
    data = fc(*(feature(point(*TIANANMEN)) for _ in range(3)))
    assert "more than 2" in invalid(geojson, data, max_features=2).detail
    assert invalid(read, io.BytesIO(data), "kml").errors[0].field == "format"
    assert invalid(geojson, data, geometry_type="blob").errors[0].field == "geometry_type"


def test_100k_feature_geojson_is_fast(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    xs, ys = rng.uniform(115.5, 117.5, 100_000), rng.uniform(39.4, 41, 100_000)
    path = tmp_path / "big.geojson"
    path.write_bytes(fc(*(feature(square(x, y, 0.001), i, name=f"楼{i}", floors=int(i % 30), h=i / 7)
                          for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist(), strict=True)))))
    calls: list[tuple[int, int | None]] = []
    start = time.perf_counter()
    result = read(path, "geojson", progress=lambda d, t: calls.append((d, t)))
    elapsed = time.perf_counter() - start
    assert len(result.features) == 100_000 and not result.rejected
    assert 100 <= len(calls) <= 102 and calls[-1] == (100_000, 100_000)
    print(f"\n100k polygons, {path.stat().st_size / 1e6:.0f} MB: {elapsed:.2f} s, "
          f"{100_000 / elapsed:,.0f} features/s")
    assert elapsed < 30


def test_csv_gauss_kruger_with_survey_axes_is_caught_as_swapped() -> None:
    # Chinese surveys call northing X and easting Y: read as x/y, the points land nowhere.
    e, n = Transformer.from_crs("OGC:CRS84", "EPSG:4547", always_xy=True).transform(*TIANANMEN)
    text = "X,Y\n" + "".join(f"{n + i:.3f},{e + i:.3f}\n" for i in range(3))
    err = invalid(read, io.BytesIO(text.encode()), "csv", crs="EPSG:4547")
    assert err.errors[0].field == "swap" and "100%" in err.detail
    result = read(io.BytesIO(text.encode()), "csv", crs="EPSG:4547", swap=True)
    assert (result.features[0][1].x, result.features[0][1].y) == pytest.approx(TIANANMEN, abs=1e-8)


def test_crs_given_as_wkt_is_identified(tmp_path: Path) -> None:
    from pyproj import CRS

    e, n = Transformer.from_crs("OGC:CRS84", "EPSG:4547", always_xy=True).transform(*TIANANMEN)
    result = geojson(fc(feature(point(e, n))), crs=CRS("EPSG:4547").to_wkt())
    assert result.source_crs == "EPSG:4547"
    assert result.features[0][1].x == pytest.approx(TIANANMEN[0], abs=1e-8)


def test_paths_to_a_shp_and_a_zip(tmp_path: Path) -> None:
    data, lonlat = gk_points(tmp_path)
    (tmp_path / "layer.zip").write_bytes(data)
    for path in (tmp_path / "shp" / "点位.shp", tmp_path / "layer.zip"):
        result = read(path, "shapefile")
        assert [f[2]["field_1"] for f in result.features] == ["天安门", "北京大学", "亦庄"]

    class Unseekable(io.BytesIO):  # an upload read as it arrives
        def seekable(self) -> bool:
            return False

    assert len(read(Unseekable(data), "shapefile").features) == 3


def test_mixed_json_values_become_text_and_codes_keep_their_zeros() -> None:
    result = geojson(fc(feature(point(*TIANANMEN), a=1, b="0101", c="2024-01-01"),
                        feature(point(*SHANGHAI), a="one", b="0102", c="soon")))
    assert {a["name"]: a["type"] for a in result.attributes} == {"a": "string", "b": "string", "c": "string"}
    assert [f[2]["a"] for f in result.features] == ["1", "one"]


def test_csv_encodings_ragged_rows_and_broken_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importers.tables, "_SNIFF", 16)  # GBK first appears after the sniffed bytes
    text = "lon,lat,name\n116.4,39.9,a\n116.5,39.9,b,extra\n116.6,39.9,北京\n"
    result = read(io.BytesIO(text.encode("gbk")), "csv")
    assert [f[2]["name"] for f in result.features] == ["a", "北京"]
    assert result.rejected[0].reason == "line 3: expected 3 fields, got 4 / 应有3列，实际4列"
    assert "UTF-16" in invalid(read, io.BytesIO(text.encode("utf-16")), "csv").detail
    broken = "lon,lat,name\n116.4,39.9,北京\n".encode() + b"116.5,39.9,\xff\xfe\n"
    assert "line 3: not valid UTF-8" in invalid(read, io.BytesIO(broken), "csv").detail
    far = ("lon,lat,name\n" + "116.4,39.9,北京\n" * 40_000).encode() + b"116.5,39.9,\xff\n"
    assert "line 40002: not valid UTF-8" in invalid(read, io.BytesIO(far), "csv").detail
    assert "empty" in invalid(read, io.BytesIO(b"\n\n"), "csv").detail
