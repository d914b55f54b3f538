"""GeoJSON (RFC 7946): a FeatureCollection, one Feature, a bare geometry, or one feature a line
(GeoJSONSeq, RFC 8142). Files up to ORJSON_LIMIT are parsed whole, which is fast and gives the
line and column of a syntax error; larger ones are streamed feature by feature with ijson."""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import ijson  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import orjson
import shapely

from cityos.core.errors import Invalid
from cityos.maps import crs as crs_mod
from cityos.maps.importers.source import Source, Ticker, check_count, fid_text, parse_crs

ORJSON_LIMIT = 200 << 20
_BATCH = 10_000  # geometries parsed at a time


def read_geojson(stream: BinaryIO, given: crs_mod.Crs | None, tick: Ticker, max_features: int) -> Source:
    """Read a GeoJSON document or sequence; its CRS is CRS84 unless `given` or a legacy `crs` member."""
    head = stream.read(ORJSON_LIMIT + 1)
    if head.startswith(codecs.BOM_UTF8):
        head = head[3:]
    first, _, rest = head.lstrip(b"\x1e \t\r\n").partition(b"\n")
    if rest.strip(b"\x1e \t\r\n"):
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):  # one complete object on the first line, more after: GeoJSONSeq
            lines = _lines(_Replay(head, stream))
            crs = given or parse_crs(crs_mod.CANONICAL, "GeoJSON")
            return _collect(_seq_features(lines), crs, tick, max_features)
    if len(head) > ORJSON_LIMIT:
        return _stream_collection(_Replay(head, stream), given, tick, max_features)
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise Invalid("file", f"not valid JSON at line {exc.lineno}, column {exc.colno} (byte {exc.pos}): "
                              f"{exc.msg} / JSON语法错误：第{exc.lineno}行第{exc.colno}列") from None
    del head
    if not isinstance(doc, dict):
        raise Invalid("file", "expected a GeoJSON object / 应为GeoJSON对象")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise Invalid("file", 'a FeatureCollection needs a "features" array / 缺少features数组')
    elif kind == "Feature":
        features = [doc]
    elif isinstance(kind, str) and "coordinates" in doc or kind == "GeometryCollection":
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise Invalid("file", f"not GeoJSON: type {str(kind)[:40]!r} / 不是GeoJSON")
    tick.start(len(features))
    crs = given or parse_crs(_legacy_crs(doc) or crs_mod.CANONICAL, "GeoJSON crs")
    return _collect(iter(features), crs, tick, max_features)


def _legacy_crs(doc: dict[str, Any]) -> str | None:
    # GeoJSON 2008 named its CRS; RFC 7946 dropped the member, but GDAL and QGIS still write it.
    member = doc.get("crs")
    if isinstance(member, dict) and isinstance(member.get("properties"), dict):
        name = member["properties"].get("name")
        return str(name) if name else None
    return None


class _Replay:
    """Bytes already read, then the rest of the stream; counts what it hands out."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest, self.at, self.count = head, rest, 0, 0

    def read(self, size: int = -1) -> bytes:
        if self.at < len(self.head):
            n = len(self.head) - self.at if size < 0 else size
            chunk = self.head[self.at:self.at + n]
            self.at += len(chunk)
        else:
            chunk = self.rest.read(size)
        self.count += len(chunk)
        return chunk


def _lines(stream: _Replay) -> Iterator[tuple[int, bytes]]:
    tail, line = b"", 0
    while chunk := stream.read(1 << 20):
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            line += 1
            yield line, part
    if tail:
        yield line + 1, tail


def _seq_features(lines: Iterable[tuple[int, bytes]]) -> Iterator[Any]:
    for line, raw in lines:
        raw = raw.strip(b"\x1e \t\r")  # RFC 8142 puts a record separator before each feature
        if raw:
            try:
                yield orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise Invalid("file", f"line {line}, column {exc.colno}: not valid JSON: {exc.msg} / "
                                      f"第{line}行JSON语法错误") from None


def _stream_collection(
    stream: _Replay, given: crs_mod.Crs | None, tick: Ticker, max_features: int
) -> Source:
    """A FeatureCollection too large to hold as JSON: features parsed one by one (ijson)."""
    kind, crs_name = None, None
    try:  # the CRS comes before the features in what GDAL and QGIS write; look in the first MiB
        for prefix, event, value in ijson.parse(io.BytesIO(stream.head[:1 << 20])):
            if prefix == "type" and event == "string":
                kind = value
            elif prefix == "crs.properties.name" and event == "string":
                crs_name = value
            elif prefix == "features" and event == "start_array":
                break
    except ijson.JSONError:
        pass
    if kind not in (None, "FeatureCollection"):
        raise Invalid("file", "a GeoJSON file this large must be a FeatureCollection or one feature a line / "
                              "大文件须为FeatureCollection或每行一个要素")
    crs = given or parse_crs(crs_name or crs_mod.CANONICAL, "GeoJSON crs")
    features = ijson.items(stream, "features.item", use_float=True)

    def checked() -> Iterator[Any]:
        try:
            yield from features
        except ijson.JSONError as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Invalid("file", f"not valid JSON near byte {stream.count:,}: {text} / "
                                  f"JSON语法错误（约第{stream.count:,}字节处）") from None

    return _collect(checked(), crs, tick, max_features)


def _collect(features: Iterator[Any], crs: crs_mod.Crs, tick: Ticker, max_features: int) -> Source:
    """Features as dicts → a Source; geometries go through GEOS's GeoJSON reader in batches."""
    src = Source(crs)
    rows: list[dict[str, Any]] = []
    texts: list[bytes] = []
    where: list[int] = []  # index of each geometry text
    for i, feature in enumerate(features):
        check_count(i + 1, max_features)
        tick(i + 1)
        props: dict[str, Any] = {}
        fid = None
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            src.bad[i] = "not a GeoJSON Feature / 不是GeoJSON要素"
        else:
            fid = None if feature.get("id") is None else fid_text(feature["id"])
            props = feature.get("properties") or {}
            if not isinstance(props, dict):
                src.bad[i], props = "properties is not an object / properties不是对象", {}
            geometry = feature.get("geometry")
            if geometry is None:
                src.bad.setdefault(i, "no geometry / 缺少几何")
            elif not isinstance(geometry, dict):
                src.bad.setdefault(i, "geometry is not an object / geometry不是对象")
            else:
                texts.append(orjson.dumps(geometry))
                where.append(i)
        src.fids.append(fid)
        src.geoms.append(None)
        rows.append(props)
        if len(texts) == _BATCH:  # a streamed file is not held as JSON text either
            _geometries(src, where, texts)
    _geometries(src, where, texts)
    names: dict[str, None] = {}
    for props in rows:
        names.update(dict.fromkeys(props))
    src.columns = {str(k): [row.get(k) for row in rows] for k in names}
    src.kinds = dict.fromkeys(src.columns, "json")
    return src


def _geometries(src: Source, where: list[int], texts: list[bytes]) -> None:
    if texts:
        parsed = shapely.from_geojson(np.array(texts, dtype=object), on_invalid="ignore")
        for i, text, geom in zip(where, texts, parsed, strict=True):
            if geom is None:
                src.bad.setdefault(i, _geojson_reason(text))
            else:
                src.geoms[i] = geom
    where.clear()
    texts.clear()


def _geojson_reason(text: bytes) -> str:
    try:
        shapely.from_geojson(text)
    except Exception as exc:  # GEOS says what is wrong with the coordinates
        return f"bad geometry: {str(exc).removeprefix('ParseException: ')[:120]} / 几何无法解析"
    return "bad geometry / 几何无法解析"
