"""Downloads (数据下载): a dataset's published rows as CSV, XLSX, JSON, GeoJSON and Parquet.

Each writer takes the fields and an iterator of rows (`rows.iter_rows`) and yields bytes, so
the portal streams a download while the rows are read. XLSX and Parquet end with an index
(zip directory, Parquet footer): they are built in a spooled temporary file (memory first,
disk past a few MB) and then streamed. Framework-free: `pages.py` only adapts.

Headers: CSV and XLSX carry the fields' Chinese titles, since people open them in Excel;
JSON, GeoJSON and Parquet keep the field ids that the API uses.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from tempfile import SpooledTemporaryFile
from typing import Any, BinaryIO
from urllib.parse import quote
from zoneinfo import ZoneInfo

import orjson

CITY_TZ = ZoneInfo("Asia/Shanghai")
CHUNK = 64 * 1024
SPOOL = 8 * 1024 * 1024  # in memory up to 8 MB, then a temporary file
PARQUET_BATCH = 10_000  # rows per row group
BOM = "\ufeff".encode()
# A text cell starting with one of these is run as a formula by spreadsheets (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
TEXT_KINDS = ("string", "citizen_id", "credit_code", "phone")
LOCAL_TIME_NOTE = {"zh-CN": "（北京时间）", "en": " (UTC+8)"}


@dataclass(frozen=True)
class Field:
    """One published column: id (API name), title (中文名) and type (store type)."""

    id: str
    title: str
    type: str


def fields_of(fields: Sequence[dict[str, Any]]) -> list[Field]:
    return [Field(f["id"], f.get("title") or f["id"], f["type"]) for f in fields]


def disposition(name: str, title: str, fmt: str) -> str:
    """`attachment` with an ASCII fallback name and the Chinese title (RFC 6266 / RFC 5987)."""
    safe_title = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", title).strip() or name
    ascii_name = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "dataset"
    return (f'attachment; filename="{ascii_name}.{fmt}"; '
            f"filename*=UTF-8''{quote(safe_title, safe='')}.{fmt}")


def _defuse(text: str) -> str:
    """Keep a spreadsheet from running a text cell as a formula; numbers stay as they are."""
    if text.startswith(FORMULA_START) and not NUMBER.match(text):
        return "'" + text
    return text


def local_naive(value: dt.datetime) -> dt.datetime:
    """A stored UTC time as the city's wall-clock time, without a zone (Excel has none)."""
    return value.astimezone(CITY_TZ).replace(tzinfo=None)


def header_titles(fields: Sequence[Field], lang: str = "zh-CN") -> list[str]:
    """Column titles for CSV and XLSX; time columns say they are in the city's time."""
    note = LOCAL_TIME_NOTE.get(lang, LOCAL_TIME_NOTE["zh-CN"])
    return [f.title + (note if f.type == "datetime" else "") for f in fields]


# -- CSV --------------------------------------------------------------------------------------


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return local_naive(value).isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, str):
        return _defuse(value)
    return value


def csv_chunks(fields: Sequence[Field], rows: Iterable[dict[str, Any]], lang: str = "zh-CN"
               ) -> Iterator[bytes]:
    """UTF-8 with a byte-order mark (so Excel reads the Chinese), titles as the header row."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header_titles(fields, lang))
    ids = [f.id for f in fields]
    first = True
    for row in rows:
        writer.writerow([_csv_cell(row.get(i)) for i in ids])
        if buf.tell() >= CHUNK:
            yield (BOM if first else b"") + buf.getvalue().encode()
            first = False
            buf.seek(0)
            buf.truncate()
    yield (BOM if first else b"") + buf.getvalue().encode()


# -- XLSX -------------------------------------------------------------------------------------


def _sheet_title(title: str) -> str:
    """Excel sheet names: at most 31 characters, none of []:*?/\\."""
    return re.sub(r"[\[\]:*?/\\]", "_", title).strip("'")[:31] or "data"


def _spooled(write: Callable[[BinaryIO], None]) -> Iterator[bytes]:
    with SpooledTemporaryFile(max_size=SPOOL) as tmp:
        write(tmp)  # type: ignore[arg-type]
        tmp.seek(0)
        while chunk := tmp.read(CHUNK):
            yield chunk


def xlsx_chunks(fields: Sequence[Field], rows: Iterable[dict[str, Any]], title: str,
                lang: str = "zh-CN") -> Iterator[bytes]:
    """One sheet: titles, then the rows with real dates and numbers (openpyxl, write-only)."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Font

    def write(tmp: BinaryIO) -> None:
        wb = Workbook(write_only=True)
        ws = wb.create_sheet(_sheet_title(title))
        bold = Font(bold=True)
        header = []
        for caption in header_titles(fields, lang):
            cell = WriteOnlyCell(ws, value=ILLEGAL_CHARACTERS_RE.sub("", caption))
            cell.font = bold
            header.append(cell)
        ws.append(header)
        ids = [f.id for f in fields]
        for row in rows:
            out: list[Any] = []
            for i in ids:
                value = row.get(i)
                if isinstance(value, dt.datetime):
                    value = local_naive(value)
                elif isinstance(value, float) and not math.isfinite(value):
                    value = None
                elif isinstance(value, str):
                    value = ILLEGAL_CHARACTERS_RE.sub("", value)
                    if value.startswith("="):  # text, never a formula
                        cell = WriteOnlyCell(ws, value=value)
                        cell.data_type = "s"
                        value = cell
                out.append(value)
            ws.append(out)
        wb.save(tmp)

    return _spooled(write)


# -- JSON and GeoJSON -------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, float):
        return None
    raise TypeError(type(value).__name__)


def _dumps(value: Any) -> bytes:
    # orjson writes NaN and infinities as null; dates and aware datetimes as ISO 8601 (UTC).
    return orjson.dumps(value, default=_json_default)


def _batched_join(head: bytes, items: Iterable[bytes], tail: bytes) -> Iterator[bytes]:
    """head, items joined by commas, tail: in chunks of about CHUNK bytes."""
    parts, size, first = [head], len(head), True
    for item in items:
        if not first:
            parts.append(b",")
        first = False
        parts.append(item)
        size += len(item) + 1
        if size >= CHUNK:
            yield b"".join(parts)
            parts, size = [], 0
    parts.append(tail)
    yield b"".join(parts)


def json_chunks(fields: Sequence[Field], rows: Iterable[dict[str, Any]], *, name: str, title: str
                ) -> Iterator[bytes]:
    """`{"name", "title", "fields": [{id, title, type}], "records": [{id: value}]}`."""
    meta = {"name": name, "title": title,
            "fields": [{"id": f.id, "title": f.title, "type": f.type} for f in fields]}
    head = _dumps(meta)[:-1] + b',"records":['
    ids = [f.id for f in fields]
    return _batched_join(head, (_dumps({i: row.get(i) for i in ids}) for row in rows), b"]}")


def _point(x: Any, y: Any) -> dict[str, Any] | None:
    if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, int | float) \
            or not isinstance(y, int | float):
        return None
    if not (math.isfinite(x) and math.isfinite(y) and -180 <= x <= 180 and -90 <= y <= 90):
        return None
    return {"type": "Point", "coordinates": [x, y]}


def geojson_chunks(fields: Sequence[Field], rows: Iterable[dict[str, Any]], *, name: str, title: str,
                   lon: str, lat: str, bbox: Sequence[float] | None = None, limit: int | None = None
                   ) -> Iterator[bytes]:
    """A FeatureCollection of Points (WGS-84) from the lon/lat fields; a row without valid
    coordinates keeps its place with a null geometry (RFC 7946 §3.2)."""
    meta: dict[str, Any] = {"type": "FeatureCollection", "name": name, "title": title}
    if bbox:
        meta["bbox"] = list(bbox)
    head = _dumps(meta)[:-1] + b',"features":['
    ids = [f.id for f in fields if f.id not in (lon, lat)]
    if limit is not None:
        rows = islice(rows, limit)

    def features() -> Iterator[bytes]:
        for n, row in enumerate(rows, start=1):
            yield _dumps({"type": "Feature", "id": n, "geometry": _point(row.get(lon), row.get(lat)),
                          "properties": {i: row.get(i) for i in ids}})

    return _batched_join(head, features(), b"]}")


# -- Parquet ----------------------------------------------------------------------------------


def arrow_schema(fields: Sequence[Field], name: str, title: str) -> Any:
    """Typed columns (int64, double, bool, date32, timestamp[us, UTC], string), each with its
    title in the field's metadata."""
    import pyarrow as pa

    types = {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(),
             "date": pa.date32(), "datetime": pa.timestamp("us", tz="UTC")}
    return pa.schema(
        [pa.field(f.id, types.get(f.type, pa.string()), metadata={"title": f.title, "type": f.type})
         for f in fields],
        metadata={"cityos.dataset": name, "cityos.title": title})


def parquet_chunks(fields: Sequence[Field], rows: Iterable[dict[str, Any]], *, name: str, title: str
                   ) -> Iterator[bytes]:
    """Parquet written in row groups of PARQUET_BATCH rows, so memory stays flat."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(fields, name, title)
    ids = [f.id for f in fields]

    def write(tmp: BinaryIO) -> None:
        it = iter(rows)
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            while batch := list(islice(it, PARQUET_BATCH)):
                columns = {i: [r.get(i) for r in batch] for i in ids}
                writer.write_table(pa.Table.from_pydict(columns, schema=schema))

    return _spooled(write)
