"""Streaming table readers (表格读取) for loads: CSV in UTF-8 or GBK/GB18030, XLSX, JSON and NDJSON.

Each reader yields `(line_no, values)` row by row and counts the bytes read so far, for a
progress bar. A row that cannot be read as the header's columns (wrong field count, extra JSON
keys, a broken NDJSON line) is yielded as a `RowFault`, for the validator to report; only a
problem with the file as a whole (encoding, no header, unknown columns) raises `ParseError`.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import orjson

from cityos.core.audit import scrub
from cityos.core.errors import BadRequest

FORMATS = ("csv", "xlsx", "json", "ndjson")
_CHUNK = 1 << 18  # what the text layer decodes at a time
_SNIFF = 1 << 20  # what encoding detection looks at before the rows start
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_ENCODING_LABEL = {"utf-8": "UTF-8", "gb18030": "GBK/GB18030"}
XLSX_MAX_RATIO = 100  # inflated / packed size of a workbook's parts, above XLSX_FREE_BYTES
XLSX_FREE_BYTES = 100 << 20  # so many inflated bytes pass whatever the ratio


class ParseError(BadRequest):
    """The file as a whole cannot be read (解析错误): `.line` (or None) and a bilingual `.reason`."""

    def __init__(self, line: int | None, en: str, zh: str) -> None:
        self.line, self._words = line, (en, zh)
        self.reason = f"{en} / {zh}"
        where = f"line {line}: {en} / 第{line}行：{zh}" if line else self.reason
        super().__init__(where)

    def __reduce__(self) -> tuple[Any, ...]:  # raised in a worker process, re-raised in the loader
        return ParseError, (self.line, *self._words)


@dataclass(frozen=True, slots=True)
class RowFault:
    """A row that does not fit the header (ragged, extra keys, broken JSON); reported, not fatal."""

    reason: str


Row = list[Any] | RowFault


@dataclass(frozen=True, slots=True)
class CsvBody:
    """Where the rows of an open CSV file begin, for a loader that splits the file itself."""

    source: BinaryIO
    origin: int  # the source's position when opened (progress counts from here)
    start: int  # the first byte after the header record
    line: int  # the header record's last line
    codec: str
    width: int  # the header's columns


class TableReader:
    """An open table: `.header`, then `(line_no, values)` per row when iterated, once."""

    body: CsvBody | None = None  # a seekable CSV file in an encoding that can be split

    def __init__(
        self,
        header: list[str],
        rows: Iterator[tuple[int, Row]],
        counter: Callable[[], int],
        *,
        total_bytes: int | None,
        encoding: str | None,
        header_line: int = 1,
    ) -> None:
        self.header = header
        self.header_line = header_line
        self.total_bytes = total_bytes
        self.encoding = encoding
        self._rows = rows
        self._counter = counter

    @property
    def bytes_read(self) -> int:
        """Bytes of the source consumed so far (an estimate for XLSX, whose sheet is compressed)."""
        return self._counter()

    def __iter__(self) -> Iterator[tuple[int, Row]]:
        return self._rows

    def close(self) -> None:
        """Stop reading and release the workbook, if any."""
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()


def open_table(
    source: BinaryIO, fmt: str, *, encoding: str | None = None, total_bytes: int | None = None
) -> TableReader:
    """Open a CSV, XLSX, JSON or NDJSON table and read its header; rows stream on iteration."""
    if total_bytes is None:
        total_bytes = _remaining(source)
    if fmt == "csv":
        return _open_csv(source, encoding, total_bytes)
    if fmt == "xlsx":
        return _open_xlsx(source, total_bytes)
    if fmt == "json":
        return _open_json(source, total_bytes)
    if fmt == "ndjson":
        return _open_ndjson(source, total_bytes)
    raise ParseError(None, f"unknown format {fmt!r}, expected one of {', '.join(FORMATS)}",
                     "不支持的文件格式")


def _key(label: str) -> str:
    # NFKC folds full-width letters and brackets, which Chinese input methods produce.
    return unicodedata.normalize("NFKC", label).strip().casefold()


def map_header(header: Sequence[str], items: Iterable[Any], line: int = 1) -> list[str | None]:
    """Match each column to an item by name or Chinese title (列名匹配); None for a blank column."""
    items = list(items)

    def get(item: Any, key: str) -> Any:
        return item.get(key) if isinstance(item, dict) else getattr(item, key, None)

    lookup: dict[str, str] = {}
    for item in items:  # titles first, so that a name always wins over another item's title
        if get(item, "title"):
            lookup.setdefault(_key(get(item, "title")), get(item, "name"))
    lookup.update({_key(get(item, "name")): get(item, "name") for item in items})
    columns: list[str | None] = []
    unknown: list[str] = []
    for label in header:
        text = str(label).strip()
        name = lookup.get(_key(text)) if text else None
        if text and name is None:
            unknown.append(text)
        columns.append(name)
    seen = [c for c in columns if c is not None]
    dupes = sorted({c for c in seen if seen.count(c) > 1})
    missing = [item for item in items
               if (get(item, "required") or get(item, "is_key")) and get(item, "name") not in seen]
    problems_en, problems_zh = [], []
    if unknown:
        # Masked: in a file without a header row, the "columns" are someone's ID and phone number.
        shown = ", ".join(repr(scrub(u)[:40]) for u in unknown)
        problems_en.append(f"unknown columns: {shown}")
        problems_zh.append(f"未知的列：{shown}")
        if not seen:
            problems_en.append("the first row must be the header")
            problems_zh.append("第一行应为表头")
    if dupes:
        problems_en.append(f"columns given twice: {', '.join(dupes)}")
        problems_zh.append(f"重复的列：{', '.join(dupes)}")
    if missing:
        names = ", ".join(f"{get(i, 'name')} ({get(i, 'title') or get(i, 'name')})" for i in missing)
        problems_en.append(f"missing required columns: {names}")
        problems_zh.append(f"缺少必填列：{names}")
    if problems_en:
        raise ParseError(line, "; ".join(problems_en), "；".join(problems_zh))
    return columns


# -- CSV -------------------------------------------------------------------------------------------


class _Counted(io.BufferedIOBase):
    """The source as read so far: bytes and newlines counted, the last chunk kept, so that a
    decoding error can name its line."""

    def __init__(self, raw: BinaryIO, head: bytes, skipped: int) -> None:
        super().__init__()
        self._raw, self._head, self._at = raw, head, 0
        self.count = skipped
        self.lines = 0  # newlines before `last`
        self.last = b""

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        size = size if size > 0 else _CHUNK
        if self._at < len(self._head):
            chunk = self._head[self._at:self._at + size]
            self._at += len(chunk)
        else:
            chunk = self._raw.read(size)
        self.lines += self.last.count(b"\n")
        self.last = chunk
        self.count += len(chunk)
        return chunk

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            return self.read1(size)
        return b"".join(iter(lambda: self.read1(_CHUNK), b""))


def _read_full(source: BinaryIO, size: int) -> bytes:
    parts, got = [], 0
    while got < size and (part := source.read(size - got)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _seekable(source: BinaryIO) -> bool:
    try:
        return bool(source.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _remaining(source: BinaryIO) -> int | None:
    if not _seekable(source):
        return None
    at = source.tell()
    end = source.seek(0, io.SEEK_END)
    source.seek(at)
    return end - at


def _guess(data: bytes) -> str:
    """UTF-8 if the bytes from the first non-ASCII one on decode as UTF-8, else GB18030."""
    found = _NON_ASCII.search(data)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data[found.start() if found else 0:], False)
    except UnicodeDecodeError:
        return "gb18030"  # a superset of GBK and GB2312, which is what Excel in China writes
    return "utf-8"


def _ascii_compatible(codec: str) -> bool:
    """A text encoding that writes ASCII as ASCII, as the csv module needs (not UTF-16 or base64)."""
    probe = ',"\r\n0aZ'
    try:
        return probe.encode(codec) == probe.encode("ascii")
    except (LookupError, UnicodeError):
        return False


def _sniff(source: BinaryIO, encoding: str | None) -> tuple[str, bytes, int]:
    """Return the codec, the bytes read ahead (to replay) and the length of a skipped BOM."""
    head = _read_full(source, _SNIFF)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ParseError(1, "UTF-16 text is not supported — save the file as CSV UTF-8",
                         "不支持UTF-16编码，请另存为“CSV UTF-8”格式")
    skipped = 3 if head.startswith(codecs.BOM_UTF8) else 0
    head = head[skipped:]
    if encoding is not None and not skipped:  # a BOM says UTF-8 whatever the form said
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise ParseError(None, f"unknown encoding {encoding!r}", "未知的编码") from None
        codec = {"utf-8-sig": "utf-8", "gbk": "gb18030", "gb2312": "gb18030"}.get(name, name)
        if not _ascii_compatible(codec):  # UTF-16, base64, rot13 ... would fail deep in the reader
            raise ParseError(None, f"encoding {encoding[:40]!r} cannot read CSV text — use UTF-8 or GBK",
                             "该编码无法读取CSV，请使用UTF-8或GBK编码")
        return codec, head, skipped
    if skipped:
        return "utf-8", head, skipped
    if not head.isascii():
        if len(head) == _SNIFF:  # the first non-ASCII character may be cut at the end: complete it
            head += _read_full(source, 3)
        return _guess(head), head, skipped
    if len(head) == _SNIFF and _seekable(source):
        # All ASCII so far: look further for the first non-ASCII byte, then come back.
        at = source.tell()
        try:
            while chunk := source.read(_SNIFF):
                if not chunk.isascii():
                    return _guess(chunk + _read_full(source, 3)), head, skipped
        finally:
            source.seek(at)
    return "utf-8", head, skipped


def _decode_error(exc: UnicodeDecodeError, counted: _Counted, codec: str, fallback: int) -> ParseError:
    line = fallback
    if isinstance(exc.object, bytes) and exc.object.endswith(counted.last):
        # The failing bytes are the last chunk, maybe after a few pending bytes that hold no newline.
        line = counted.lines + 1 + exc.object[:exc.start].count(b"\n")
    return _not_valid(codec, line)


def _not_valid(codec: str, line: int) -> ParseError:
    label = _ENCODING_LABEL.get(codec, codec)
    return ParseError(line, f"not valid {label} — save the file as UTF-8 or GBK",
                      "编码无法识别，请将文件另存为UTF-8或GBK编码")


def _open_csv(source: BinaryIO, encoding: str | None, total_bytes: int | None) -> TableReader:
    origin = source.tell() if _seekable(source) else None
    codec, head, skipped = _sniff(source, encoding)
    counted = _Counted(source, head, skipped)
    text = io.TextIOWrapper(cast(BinaryIO, counted), encoding=codec, errors="strict", newline="")
    text._CHUNK_SIZE = _CHUNK  # type: ignore[attr-defined]  # fewer, larger decodes
    reader = csv.reader(text)
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    except UnicodeDecodeError as exc:
        raise _decode_error(exc, counted, codec, reader.line_num + 1) from None
    except csv.Error as exc:
        raise ParseError(reader.line_num or 1, f"bad CSV: {exc}", "CSV格式错误") from None
    if header is None:
        raise ParseError(None, "the file is empty: no header row", "文件为空，没有表头")
    header = [cell.strip().lstrip("\ufeff") for cell in header]
    rows = _csv_rows(reader, len(header), counted, codec)
    table = TableReader(header, rows, lambda: counted.count, total_bytes=total_bytes,
                        encoding=codec, header_line=reader.line_num)
    end = _line_end(head, reader.line_num)
    if origin is not None and codec in SPLIT_CODECS and end is not None:
        table.body = CsvBody(source, origin, origin + skipped + end, reader.line_num, codec, len(header))
    return table


def _ragged(width: int, got: int) -> RowFault:
    return RowFault(f"expected {width} fields, got {got} / 应有{width}列，实际{got}列")


def _csv_rows(
    reader: Any, width: int, counted: _Counted | None, codec: str, offset: int = 0,
    end: int | None = None,
) -> Iterator[tuple[int, Row]]:
    """The rows `reader` reads, numbered `offset` lines on; with `end`, the reader reads a chunk
    of `end` lines followed by `_END` (see `chunks.csv_chunk_rows`)."""
    prev = reader.line_num
    last = sys.maxsize if end is None else end
    try:
        for row in reader:
            line = prev + 1 + offset  # where the record starts; a quoted field may span lines
            prev = reader.line_num
            if prev > last:  # the record that reads the sentinel: it must be the sentinel alone
                if row == [_END]:
                    return
                raise CutInQuotes
            if len(row) == width:
                if row[0] or any(row):
                    yield line, row
            elif not any(cell.strip() for cell in row):
                continue  # a blank line
            elif len(row) > width and not any(cell.strip() for cell in row[width:]):
                yield line, row[:width]  # trailing empty cells, as spreadsheets leave them
            else:
                yield line, _ragged(width, len(row))
    except UnicodeDecodeError as exc:
        assert counted is not None  # a chunk is decoded whole before it is read
        raise _decode_error(exc, counted, codec, prev + 1 + offset) from None
    except csv.Error as exc:
        if reader.line_num > last:
            raise CutInQuotes from None
        raise ParseError(reader.line_num + offset, f"bad CSV: {exc}", "CSV格式错误") from None


# -- CSV in chunks: what the reader knows of them (the cutting and the workers are in `chunks`) ----
# A worker reads a chunk of whole records with `_END` after its last line: read alone, the cut was
# right; read as part of a quoted field, it was not (`CutInQuotes`).
SPLIT_CODECS = frozenset({"utf-8", "gb18030", "ascii"})
_END = "\ue000"  # a private-use character after a chunk's last line: read alone, the cut was right
_LINE_END = re.compile(rb"\r\n|\r|\n")


class CutInQuotes(Exception):
    """A chunk ended inside a quoted field: its cut was not the end of a record."""


def _line_end(head: bytes, n: int) -> int | None:
    """Where the `n`th line of `head` ends (None: not within it)."""
    for i, m in enumerate(_LINE_END.finditer(head), start=1):
        if i == n:
            return None if m.end() == len(head) and m.group() == b"\r" else m.end()
    return None


# -- XLSX ------------------------------------------------------------------------------------------


def _refuse_zip_bomb(source: BinaryIO, at: int) -> None:
    """Refuse a workbook whose parts inflate far beyond any spreadsheet's (a zip bomb), by the sizes
    its directory declares: zipfile stops at a member's declared size, so a lie only cuts it short.
    A sheet's XML packs 5-20 to 1; one long run of a single letter packs 1000 to 1 and would become
    one cell of a gigabyte in memory."""
    import zipfile

    size = source.seek(0, io.SEEK_END) - at
    source.seek(at)
    try:
        with zipfile.ZipFile(source) as archive:
            inflated = sum(i.file_size for i in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        inflated = 0  # not a zip at all: openpyxl says so below
    finally:
        source.seek(at)
    if inflated > max(XLSX_FREE_BYTES, XLSX_MAX_RATIO * size):
        ratio = inflated // max(size, 1)
        raise ParseError(None, f"the workbook unpacks to {inflated:,} bytes, {ratio:,} times its size: "
                               "not a spreadsheet (a zip bomb?)", "工作簿解压后异常庞大，疑似压缩炸弹")


def _open_xlsx(source: BinaryIO, total_bytes: int | None) -> TableReader:
    import openpyxl  # type: ignore[import-untyped, unused-ignore]  # imported by XLSX loads only

    if not _seekable(source):
        source = io.BytesIO(source.read())  # a zip is read from its end
    at = source.tell()
    magic = source.read(8)
    source.seek(at)
    if magic.startswith(b"\xd0\xcf\x11\xe0"):
        raise ParseError(None, "old Excel .xls format — save the file as .xlsx or CSV",
                         "不支持旧版.xls格式，请另存为.xlsx或CSV")
    _refuse_zip_bomb(source, at)
    try:
        book = openpyxl.load_workbook(source, read_only=True, data_only=True)
        sheet = book.worksheets[0]
        sheet.reset_dimensions()  # some writers record a wrong size; read every cell there is
        rows = enumerate(sheet.iter_rows(values_only=True), start=1)
        header_line, cells = next(((n, r) for n, r in rows if any(c is not None for c in r)), (0, ()))
    except Exception as exc:  # zipfile, XML and openpyxl's own errors alike
        raise ParseError(None, f"not a readable .xlsx workbook ({type(exc).__name__})",
                         "不是有效的.xlsx工作簿") from None
    header = ["" if c is None else str(c).strip() for c in cells]
    while header and not header[-1]:
        header.pop()
    if not header:
        book.close()
        raise ParseError(None, "the workbook's first sheet is empty: no header row",
                         "第一个工作表为空，没有表头")
    return TableReader(header, _xlsx_rows(book, rows, len(header)), source.tell, total_bytes=total_bytes,
                       encoding=None, header_line=header_line)


def _xlsx_rows(
    book: Any, rows: Iterator[tuple[int, tuple[Any, ...]]], width: int
) -> Iterator[tuple[int, Row]]:
    line = 0
    try:
        for line, cells in rows:
            values = list(cells)
            if len(values) < width:
                values.extend([None] * (width - len(values)))  # a row stops at its last filled cell
            elif len(values) > width:
                extra = values[width:]
                if any(c is not None and str(c).strip() for c in extra):
                    last = max(i for i, c in enumerate(values) if c is not None and str(c).strip())
                    yield line, _ragged(width, last + 1)
                    continue
                del values[width:]
            if any(c is not None and c != "" for c in values):
                yield line, values
    except Exception as exc:  # a damaged sheet shows only when its XML is reached
        raise ParseError(line + 1, f"the workbook is damaged here ({type(exc).__name__})",
                         "工作簿在此处已损坏") from None
    finally:
        book.close()


# -- JSON and NDJSON -------------------------------------------------------------------------------


def _object_rows(
    objects: Iterable[tuple[int, Any]], header: list[str]
) -> Iterator[tuple[int, Row]]:
    keys = frozenset(header)
    for line, obj in objects:
        if obj.__class__ is RowFault:
            yield line, obj
        elif obj.__class__ is not dict:
            yield line, RowFault("not a JSON object / 不是JSON对象")
        elif keys.issuperset(obj):
            yield line, [obj.get(k) for k in header]
        else:
            extra = ", ".join(repr(str(k)[:40]) for k in obj if k not in keys)
            yield line, RowFault(f"keys not in the first row: {extra} / 首行没有的字段：{extra}")


def _header_of(first: Any, line: int | None) -> list[str]:
    if not isinstance(first, dict) or not first:
        raise ParseError(line, "rows must be JSON objects of field: value",
                         "每行应为“字段: 值”形式的JSON对象")
    return [str(k) for k in first]


def _open_json(source: BinaryIO, total_bytes: int | None) -> TableReader:
    data = source.read()
    size = len(data)
    if data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ParseError(getattr(exc, "lineno", None), f"not valid UTF-8 JSON: {exc.msg}",
                         "不是有效的JSON（须为UTF-8编码）") from None
    del data
    rows = doc.get("rows") if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise ParseError(None, 'expected an array of objects, or {"rows": [...]}',
                         '应为对象数组，或 {"rows": [...]}')
    if not rows:
        raise ParseError(None, "no rows: the array is empty", "没有数据行")
    header = _header_of(rows[0], 1)
    return TableReader(header, _object_rows(enumerate(rows, start=1), header), lambda: size,
                       total_bytes=total_bytes, encoding="utf-8", header_line=1)


def _lines(counted: _Counted) -> Iterator[tuple[int, bytes]]:
    tail, line = b"", 0
    while chunk := counted.read1(_CHUNK):
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            line += 1
            yield line, part
    if tail:
        yield line + 1, tail


def _ndjson_objects(lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, Any]]:
    for line, raw in lines:
        if raw.strip():
            try:
                yield line, orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield line, RowFault("not valid JSON (UTF-8) / 不是有效的JSON（须为UTF-8编码）")


def _open_ndjson(source: BinaryIO, total_bytes: int | None) -> TableReader:
    head = _read_full(source, 3)
    skipped = 3 if head == codecs.BOM_UTF8 else 0
    counted = _Counted(source, head[skipped:], skipped)
    lines = _lines(counted)
    first = next(((n, raw) for n, raw in lines if raw.strip()), None)
    if first is None:
        raise ParseError(None, "the file is empty", "文件为空")
    try:
        obj = orjson.loads(first[1])
    except orjson.JSONDecodeError as exc:
        raise ParseError(first[0], f"not valid UTF-8 JSON: {exc.msg}",
                         "不是有效的JSON（须为UTF-8编码）") from None
    header = _header_of(obj, first[0])

    def objects() -> Iterator[tuple[int, Any]]:
        yield first[0], obj
        yield from _ndjson_objects(lines)

    return TableReader(header, _object_rows(objects(), header), lambda: counted.count,
                       total_bytes=total_bytes, encoding="utf-8", header_line=first[0])
