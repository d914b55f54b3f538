"""CSV layers (表格坐标导入): UTF-8, UTF-8 with BOM or GBK, with coordinate columns (lon/lat,
经度/纬度, x/y, or as named) or a WKT column.

The encoding is found as the data hub's loader finds it (UTF-8 if the bytes decode so, else
GB18030, the superset of GBK that Excel in China writes); engines do not import each other's
internals, so the few lines are repeated here.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import unicodedata
from collections.abc import Iterator
from typing import BinaryIO, cast

import numpy as np
import shapely

from cityos.core.errors import Invalid
from cityos.maps import crs as crs_mod
from cityos.maps.importers.source import Source, Ticker, check_count, parse_crs

# Column names that hold coordinates, most specific first; compared after NFKC and casefold.
X_NAMES = ("lon", "lng", "longitude", "long", "经度", "东经", "point_x", "x坐标", "横坐标", "x")
Y_NAMES = ("lat", "latitude", "纬度", "北纬", "point_y", "y坐标", "纵坐标", "y")
WKT_NAMES = ("wkt", "geometry", "geom", "the_geom", "shape", "几何")
_SNIFF = 1 << 20


class _Chain(io.BufferedIOBase):
    """Bytes read ahead, then the rest of the stream; keeps the last chunk and counts the newlines
    before it, so that a decoding error can name its line."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self.head, self.rest = head, rest
        self.last = b""
        self.lines = 0  # newlines before `last`

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        size = size if size > 0 else 1 << 18
        if self.head:
            chunk, self.head = self.head[:size], self.head[size:]
        else:
            chunk = self.rest.read(size)
        self.lines += self.last.count(b"\n")
        self.last = chunk
        return chunk

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            return self.read1(size)
        return b"".join(iter(lambda: self.read1(1 << 18), b""))

    def line_of(self, exc: UnicodeDecodeError) -> int:
        """The line of the undecodable byte (the decoder may hold a few bytes of the chunk before)."""
        at = len(self.last) - (len(exc.object) - exc.start)
        return self.lines + 1 + (self.last[:at].count(b"\n") if at >= 0 else 0)


def _is_utf8(data: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return False
    return True


def _encoding(head: bytes, stream: BinaryIO) -> str:
    if not head.isascii():
        return "utf-8" if _is_utf8(head) else "gb18030"
    if len(head) == _SNIFF and stream.seekable():  # all ASCII so far: find the first other byte
        at = stream.tell()
        try:
            while chunk := stream.read(_SNIFF):
                if not chunk.isascii():
                    return "utf-8" if _is_utf8(chunk) else "gb18030"
        finally:
            stream.seek(at)
    return "utf-8"


def _rows(stream: BinaryIO) -> tuple[list[str], Iterator[tuple[int, list[str] | str]]]:
    """The header, then (line, cells) per row, or (line, reason) for a row of the wrong width."""
    head = stream.read(_SNIFF)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise Invalid("file", "UTF-16 text is not supported: save the file as CSV UTF-8 / 不支持UTF-16编码")
    bom = head.startswith(codecs.BOM_UTF8)
    encoding = "utf-8" if bom else _encoding(head, stream)
    chain = _Chain(head[3:] if bom else head, stream)
    reader = csv.reader(io.TextIOWrapper(cast(BinaryIO, chain), encoding=encoding, newline=""))

    def fail(exc: Exception) -> Invalid:
        if isinstance(exc, UnicodeDecodeError):
            line = chain.line_of(exc)
            return Invalid("file", f"line {line}: not valid {'UTF-8' if encoding == 'utf-8' else 'GBK'} "
                                   f"text: save the file as UTF-8 or GBK / 第{line}行编码无法识别")
        line = reader.line_num
        return Invalid("file", f"line {line}: bad CSV: {exc} / 第{line}行CSV格式错误")

    try:
        header = next((row for row in reader if any(c.strip() for c in row)), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise fail(exc) from None
    if header is None:
        raise Invalid("file", "the file is empty: no header row / 文件为空，没有表头")
    width = len(header)

    def rows() -> Iterator[tuple[int, list[str] | str]]:
        prev = reader.line_num
        try:
            for row in reader:
                line, prev = prev + 1, reader.line_num  # where it starts: a quoted cell may span lines
                if len(row) == width or (len(row) > width and not any(c.strip() for c in row[width:])):
                    yield line, row[:width]  # spreadsheets leave trailing empty cells
                elif any(c.strip() for c in row):
                    yield line, f"expected {width} fields, got {len(row)} / 应有{width}列，实际{len(row)}列"
        except (UnicodeDecodeError, csv.Error) as exc:
            raise fail(exc) from None

    return [c.strip() for c in header], rows()


def _key(label: str) -> str:
    return unicodedata.normalize("NFKC", label).strip().casefold()


def _column(header: list[str], asked: str | None, candidates: tuple[str, ...], arg: str) -> int | None:
    keys = [_key(h) for h in header]
    if asked is not None:
        if _key(asked) not in keys:
            raise Invalid(arg, f"no column {asked!r}; the columns are {', '.join(header)} / 没有这一列")
        return keys.index(_key(asked))
    return next((keys.index(c) for c in candidates if c in keys), None)


def read_csv(stream: BinaryIO, given: crs_mod.Crs | None, x: str | None, y: str | None, tick: Ticker,
              max_features: int) -> Source:
    """Read a CSV of points (x/y columns, CRS84 unless `given`) or of WKT geometries."""
    header, table = _rows(stream)
    xi, yi = _column(header, x, X_NAMES, "x"), _column(header, y, Y_NAMES, "y")
    wi = None if x or y else _column(header, None, WKT_NAMES, "wkt")
    if wi is None and (xi is None or yi is None):
        raise Invalid("x", "no coordinate columns: name them lon/lat (经度/纬度) or x/y, or give a wkt "
                           f"column; the columns are {', '.join(header)} / 未找到坐标列")
    if wi is not None:
        xi = yi = None
    skip = {i for i in (xi, yi, wi) if i is not None}
    keep = [(i, h) for i, h in enumerate(header) if i not in skip]
    src = Source(given or parse_crs(crs_mod.CANONICAL, "CSV"), lines=[],
                  columns={h: [] for _, h in keep}, kinds={h: "text" for _, h in keep})
    assert src.lines is not None
    cols = [src.columns[h] for _, h in keep]
    xs: list[float] = []
    ys: list[float] = []
    wkts: list[str] = []
    for n, (line, row) in enumerate(table):
        check_count(n + 1, max_features)
        tick(n + 1)
        src.lines.append(line)
        src.fids.append(None)
        if isinstance(row, str):
            src.bad[n] = f"line {line}: {row}"
            row = [""] * len(header)
        for col, (i, _) in zip(cols, keep, strict=True):
            v = row[i]
            col.append(v.strip() or None if isinstance(v, str) else v)
        if wi is not None:
            wkts.append(str(row[wi] or "").strip())
            continue
        sx, sy = str(row[xi] or "").strip(), str(row[yi] or "").strip()  # type: ignore[index]
        try:
            fx, fy = float(sx), float(sy)
        except ValueError:
            fx = fy = math.nan
            reason = "no coordinates / 缺少坐标" if not sx or not sy else \
                f"coordinates are not numbers: {sx[:20]!r}, {sy[:20]!r} / 坐标不是数字"
            src.bad.setdefault(n, f"line {line}: {reason}")
        xs.append(fx)
        ys.append(fy)
    if wi is not None:
        geoms = shapely.from_wkt(np.array(wkts, dtype=object), on_invalid="ignore")
        for n, (text, g) in enumerate(zip(wkts, geoms, strict=True)):
            if g is None:
                src.bad.setdefault(n, f"line {src.lines[n]}: " + (
                    "no geometry / 缺少几何" if not text else f"bad WKT: {text[:40]!r} / WKT无法解析"))
        src.geoms = list(geoms)
    else:
        src.geoms = list(shapely.points(np.array(xs), np.array(ys))) if xs else []
    return src

