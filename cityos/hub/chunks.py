"""Large files in worker processes (并行导入): the CSV file cut into chunks of whole records
(分块) that workers decode, read, check and encode, or other tables' parsed rows sent to them in
batches; the loading process refuses duplicate keys and writes what comes back, in order.

A large load is CPU-bound: reading CSV, checking every cell and encrypting sensitive items
(SM4-GCM costs some 20 µs a value in Python). Worker processes do all that; the loading process
only refuses duplicate keys and writes, in order, inside the caller's transaction. A CSV file goes
to them as raw chunks cut at record ends (`chunked`); XLSX and JSON as parsed rows (`parallel`).
The workers are started by `spawn`: what they run stays module-level, pickled by reference.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from cityos.hub import parsing, store, validate

if TYPE_CHECKING:
    from cityos.hub.loading import Progress, _Rows

# -- cutting a CSV file into chunks ----------------------------------------------------------------
# A record ends at a line end after an even number of quotes: doubled quotes inside a quoted field
# keep the parity, and in UTF-8 and GB18030 the bytes of `"`, CR and LF never occur inside a
# multi-byte character. A quote inside an unquoted field (`5'10"`) is text to the csv module but
# flips the parity here: the worker reading the chunk before such a wrong cut finds itself inside
# a quoted field at its end (`parsing.CutInQuotes`), and the loader reads the rest itself.
CSV_CHUNK = 2 << 20


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole records of a CSV file: their bytes, the lines before them and in them, and where they
    end in the source (bytes from its origin)."""

    data: bytes
    start: int  # position in the source
    line: int
    lines: int
    end: int


def _line_ends(data: bytes) -> int:
    """Line ends as the csv module counts them (LF, CRLF and a lone CR)."""
    cr = data.count(b"\r")
    return data.count(b"\n") + cr - data.count(b"\r\n") if cr else data.count(b"\n")


def _record_end(buf: bytes) -> int:
    """Where the last whole record in `buf` ends (0: none yet): after its last line end with an
    even number of quotes before it."""
    quotes = buf.count(b'"')
    end = len(buf)
    lone_cr = len(buf) - 1  # a CR last in the buffer may be the first half of a CRLF
    while True:
        at = max(buf.rfind(b"\n", 0, end), buf.rfind(b"\r", 0, min(end, lone_cr)))
        if at < 0:
            return 0
        quotes -= buf.count(b'"', at + 1, end)
        if not quotes % 2:
            return at + 1
        end = at - 1 if buf[at] == 0x0A and at and buf[at - 1] == 0x0D else at


def csv_chunks(body: parsing.CsvBody, size: int | None = None) -> Iterator[Chunk]:
    """The rows of a CSV file as chunks of about `size` bytes (`CSV_CHUNK`) cut at record ends
    (C-speed work only: find, count)."""
    size = size or CSV_CHUNK
    source = body.source
    source.seek(body.start)
    at, line, tail = body.start, body.line, b""
    while True:
        block = source.read(size)
        buf = tail + block if tail else block
        if not block:
            if buf:
                yield Chunk(buf, at, line, _line_ends(buf), at + len(buf) - body.origin)
            return
        cut = _record_end(buf)
        if not cut:
            tail = buf  # one record longer than a chunk: read on
            continue
        data, tail = buf[:cut], buf[cut:]
        lines = _line_ends(data)
        yield Chunk(data, at, line, lines, at + cut - body.origin)
        at, line = at + cut, line + lines


def csv_chunk_rows(data: bytes, codec: str, width: int, line: int, lines: int
                   ) -> Iterator[tuple[int, parsing.Row]]:
    """Decode and read one chunk of `csv_chunks` as the file's reader would read those lines;
    `CutInQuotes` if its last record does not end where the chunk does."""
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise parsing._not_valid(codec, line + 1 + _line_ends(data[:exc.start])) from None
    if text and text[-1] not in "\r\n":  # the file's last line, without a line end
        text += "\n"
        lines += 1
    reader = csv.reader(io.StringIO(text + parsing._END, newline=""))
    return parsing._csv_rows(reader, width, None, codec, offset=line, end=lines)


def csv_rows_from(body: parsing.CsvBody, at: int, line: int
                  ) -> tuple[Iterator[tuple[int, parsing.Row]], Callable[[], int]]:
    """The rows from position `at` of the source (a record's start, `line` lines in), read here;
    and a counter of the bytes read from the origin."""
    body.source.seek(at)
    counted = parsing._Counted(body.source, b"", at - body.origin)
    counted.lines = line
    text = io.TextIOWrapper(cast(BinaryIO, counted), encoding=body.codec, errors="strict", newline="")
    text._CHUNK_SIZE = parsing._CHUNK  # type: ignore[attr-defined]
    reader = csv.reader(text)
    return parsing._csv_rows(reader, body.width, counted, body.codec, offset=line), lambda: counted.count


# -- the workers ---------------------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _worker_start(resource_id: int, fields: list[store.Field], key_fields: list[str], ring: Any,
                  rules: list[validate.ItemRule], columns: list[str | None], sqlite: bool,
                  chunks: tuple[str, int, int, bool] | None = None) -> None:
    layout = store.build_layout(resource_id, fields, key_fields)
    _worker["encode"] = store.Encoder(layout, ring).encode
    _worker["check"] = validate.compile_rows(rules, columns).check
    # Dates become SQLite's text here too, off the writing process (positions as in Writer.columns).
    columns_out = ["_key", "_hash", *layout.item_columns]
    _worker["convert"] = store.sqlite_converters(layout, columns_out) if sqlite else []
    # Reading chunks of a CSV file: (codec, header width, version number, whether to make COPY text)
    _worker["chunks"] = chunks


def _copy_formatter() -> Any:
    """psycopg's own COPY text formatter (its C code, which `Copy.write_row` uses), made without a
    connection; None if this psycopg has none where we look."""
    try:
        from psycopg._copy_base import TextFormatter
        from psycopg.adapt import Transformer
    except ImportError:
        return None
    return TextFormatter(Transformer())


def _encoded(rows: Iterable[tuple[int, Any]], check: Any, encode: Any, errors: list[list[validate.RowError]]
             ) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """Each valid row as (line, encoded row); each invalid row's errors go to `errors`."""
    for line, values in rows:
        typed, errs = check(line, values)
        if errs:
            errors.append(errs)
            continue
        try:
            row = encode(typed)
        except ValueError as exc:
            errors.append([validate.RowError(line, None, str(exc))])
            continue
        yield line, row


def _worker_chunk(data: bytes, line: int, lines: int
                  ) -> tuple[int, array[int], list[str], list[tuple[Any, ...]] | bytes,
                             list[list[validate.RowError]]]:
    """Read, check and encode one chunk of a CSV file: (rows read, line and key of each good row,
    the good rows ready for `Writer.add_ready`, the bad rows' errors)."""
    encode, check, convert = _worker["encode"], _worker["check"], _worker["convert"]
    codec, width, version, copy = _worker["chunks"]
    formatter = _copy_formatter() if copy else None
    at: array[int] = array("q")
    keys: list[str] = []
    ready: list[Any] = []
    errors = []
    read = [0]

    def counted() -> Iterator[tuple[int, Any]]:
        for item in csv_chunk_rows(data, codec, width, line, lines):
            read[0] += 1
            yield item

    for ln, row in _encoded(counted(), check, encode, errors):
        at.append(ln)
        keys.append(row[0])
        if formatter is not None:
            if part := formatter.write_row((*row, version)):
                ready.append(part)
            continue
        cells = [*row, version]
        for pos, conv in convert:
            if cells[pos] is not None:
                cells[pos] = conv(cells[pos])
        ready.append(tuple(cells))
    if formatter is not None:
        return read[0], at, keys, b"".join([*ready, formatter.end()]), errors
    return read[0], at, keys, ready, errors


def _worker_batch(batch: list[tuple[int, Any]]
                  ) -> tuple[list[tuple[int, tuple[Any, ...]]], list[list[validate.RowError]]]:
    encode, check, convert = _worker["encode"], _worker["check"], _worker["convert"]
    out: list[tuple[int, tuple[Any, ...]]] = []
    errors: list[list[validate.RowError]] = []
    for line, row in _encoded(batch, check, encode, errors):
        if convert:
            cells = list(row)
            for pos, conv in convert:
                if cells[pos] is not None:
                    cells[pos] = conv(cells[pos])
            row = tuple(cells)
        out.append((line, row))
    return out, errors


def _pool(rows: _Rows, rules: list[validate.ItemRule], columns: list[str | None], workers: int,
          chunks: tuple[str, int, int, bool] | None = None) -> ProcessPoolExecutor:
    lay = rows.layout
    start = (lay.resource_id, lay.fields, lay.key_fields, rows.ring, rules, columns, rows.writer.sqlite,
             chunks)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_start, initargs=start)


def parallel(reader: parsing.TableReader, rows: _Rows, rules: list[validate.ItemRule],
             columns: list[str | None], workers: int, progress: Progress | None, *, batch: int) -> int:
    """A large XLSX, JSON or NDJSON file (or a CSV stream that cannot seek): read here, checked
    and encoded by the workers in batches of `batch` rows. Returns the rows read."""
    pool = _pool(rows, rules, columns, workers)
    try:
        return _feed(pool, iter(reader), lambda: reader.bytes_read, rows, workers, progress, batch)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _feed(pool: ProcessPoolExecutor, source: Iterator[tuple[int, parsing.Row]], bytes_read: Callable[[], int],
          rows: _Rows, workers: int, progress: Progress | None, size: int, rows_in: int = 0) -> int:
    """Send batches of parsed rows to the workers; write what comes back, in order."""
    lay = rows.layout
    sqlite = rows.writer.sqlite
    pending: deque[Future[Any]] = deque()

    def drain() -> None:
        out, errors = pending.popleft().result()
        for errs in errors:
            rows.report.add(errs)
        if not lay.key_fields:  # a keyless row's key is its ordinal in this load, not in a worker's
            out = [(line, (rows.enc.key({}), *row[1:])) for line, row in out]
        rows.write(out, converted=sqlite)

    batch: list[tuple[int, Any]] = []
    for item in source:
        batch.append(item)
        if len(batch) == size:
            rows_in += size
            pending.append(pool.submit(_worker_batch, batch))
            batch = []
            if progress is not None:
                progress(bytes_read(), rows_in)
            while len(pending) > 2 * workers:  # bounded: a 2 GB file never sits in memory
                drain()
    if batch:
        rows_in += len(batch)
        pending.append(pool.submit(_worker_batch, batch))
    while pending:
        drain()
    return rows_in


def chunked(body: parsing.CsvBody, rows: _Rows, rules: list[validate.ItemRule],
            columns: list[str | None], workers: int, progress: Progress | None, *, batch: int,
            copy_text: bool) -> tuple[int, int]:
    """A large CSV file: the workers read chunks of it themselves (decode, parse, check, encode,
    and on PostgreSQL, with `copy_text`, make the COPY text); this process cuts the chunks, refuses
    duplicate keys and writes, in order. After a wrong cut the rest goes to the workers as parsed
    rows, `batch` at a time. Returns the rows read and the bytes."""
    writer = rows.writer
    keyed = bool(rows.layout.key_fields)
    copy = copy_text and writer.copy_utf8 and keyed and _copy_formatter() is not None
    pool = _pool(rows, rules, columns, workers, (body.codec, body.width, writer.version, copy))
    pending: deque[tuple[Chunk, Future[Any]]] = deque()
    rows_in, bytes_read = 0, body.start - body.origin

    def drain() -> None:
        nonlocal rows_in, bytes_read
        chunk, future = pending.popleft()
        try:
            read, lines, keys, ready, errors = future.result()
        except parsing.CutInQuotes:
            raise _Resume(chunk) from None
        rows_in += read
        bytes_read = chunk.end
        for errs in errors:
            rows.report.add(errs)
        if not keyed:  # a keyless row's key is its ordinal in this load, not in a worker's
            keys = [rows.enc.key({}) for _ in keys]
            ready = [(key, *row[1:]) for key, row in zip(keys, ready, strict=True)]
        rows.add_ready(lines, keys, ready)
        if progress is not None:
            progress(bytes_read, rows_in)

    try:
        try:
            for chunk in csv_chunks(body):
                pending.append((chunk, pool.submit(_worker_chunk, chunk.data, chunk.line, chunk.lines)))
                while len(pending) > 2 * workers:  # bounded: a 2 GB file never sits in memory
                    drain()
            while pending:
                drain()
        except _Resume as resume:
            # A quote inside an unquoted field misled the cutting: read the rest here, in order,
            # and let the workers check and encode it in batches.
            for _, future in pending:
                future.cancel()
            rest, counter = csv_rows_from(body, resume.chunk.start, resume.chunk.line)
            rows_in = _feed(pool, rest, counter, rows, workers, progress, batch, rows_in)
            bytes_read = counter()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return rows_in, bytes_read


class _Resume(Exception):
    """Read on from this chunk in the loading process (its end was not a record's end)."""

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
