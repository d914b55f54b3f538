"""Large CSV files read in chunks by worker processes (chunks.chunked): the outcome, the row
report and the file-level errors are those of a load in one process, whatever the chunks' cuts
fall on — quoted fields with line ends, commas and quotes, GBK, CRLF, errors and duplicate keys
in different chunks, a decoding error in a later chunk, a quote inside an unquoted field."""

from __future__ import annotations

import csv
import io

import orjson
import pytest
from sqlalchemy import text

from cityos.core.access import SYSTEM
from cityos.core.errors import Invalid
from cityos.hub import chunks, loading, parsing, service
from tests.conftest import people_spec, seed_small_city
from tests.hub.test_loading import HEADER_ZH, NAMES, person_row, stored


def csv_text(rows, header=HEADER_ZH, names=NAMES) -> str:
    buf = io.StringIO()
    out = csv.writer(buf)  # CRLF line ends, quotes where a value needs them
    out.writerow(header)
    for r in rows:
        out.writerow(["" if r.get(n) is None else str(r[n]) for n in names])
    return buf.getvalue()


def awkward(n: int) -> dict[str, object]:
    """A resident whose name has what a naive split would trip on, every third one."""
    row = person_row(n)
    if n % 3 == 0:
        row["name"] = f'居民{n}\n（曾用名 "小{n}", 住址\r\n昌邑区）'
    return row


@pytest.fixture
def pair(session, keyring):
    """Two empty resources alike: one loaded in one process, one through chunks."""
    seed_small_city(session)
    res = [service.resource_create(session, SYSTEM, people_spec()) for _ in range(2)]
    session.commit()
    return res


@pytest.fixture
def chunked(monkeypatch):
    """Every file is large enough for worker processes, and chunks are small: many cuts."""
    monkeypatch.setattr(chunks, "CSV_CHUNK", 700)

    def use(on: bool) -> None:
        monkeypatch.setattr(loading, "PARALLEL_MIN_BYTES", 0 if on else 1 << 62)
    return use


class Pipe(io.RawIOBase):
    """A stream that cannot seek, as a socket would be."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._data.readinto(b)


def outcome(session, code, data, fmt="csv", pipe=False, **kw):
    """What a load did: ("ok", result) or ("rejected", row errors) or ("invalid", message)."""
    stream = io.BufferedReader(Pipe(data)) if pipe else io.BytesIO(data)
    try:
        result = loading.load_file(session, SYSTEM, code, stream, fmt, **kw)
    except loading.LoadRejected as exc:
        session.rollback()
        return "rejected", exc.extra["row_errors"], exc.extra["rows_in"]
    except Invalid as exc:
        session.rollback()
        return "invalid", str(exc)
    session.commit()
    d = result.as_dict()
    return "ok", d["rows_in"], d["rows_rejected"], d["row_count"], d["row_errors"]


def same_both_ways(session, pair, chunked, data, **kw):
    chunked(False)
    one = outcome(session, pair[0].code, data, **kw)
    chunked(True)
    many = outcome(session, pair[1].code, data, **kw)
    assert many == one
    if one[0] == "ok":
        fields = [i.name for i in pair[0].items]
        assert sorted(stored(session, pair[1], fields), key=str) == sorted(stored(session, pair[0], fields), key=str)
    return one


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_chunks_are_whole_records_and_read_as_the_file_does(encoding):
    rows = [awkward(n) for n in range(60)]
    rows[7]["name"] = ""  # a field that is only quotes
    body = csv_text(rows).replace("\r\n", "\n", 20) + "\n\n,,,,,,\n"  # LF and CRLF, blank lines
    data = body.encode(encoding)
    serial = list(parsing.open_table(io.BytesIO(data), "csv"))
    for size in (1, 64, 333, 4096, 1 << 20):
        table = parsing.open_table(io.BytesIO(data), "csv")
        assert table.body is not None and table.body.codec == ("utf-8" if encoding == "utf-8" else "gb18030")
        pieces = list(chunks.csv_chunks(table.body, size))
        assert b"".join(c.data for c in pieces) == data[table.body.start:]
        assert pieces[-1].end == len(data)
        read = [r for c in pieces for r in chunks.csv_chunk_rows(c.data, table.body.codec, 6, c.line, c.lines)]
        assert read == serial, size


@pytest.mark.parametrize("lead, ends", [
    ("\ufeff", "\r\n"),  # a byte order mark
    ("\n \n,,\r\n", "\n"),  # blank lines before the header
    ('"a ""quoted""\nheader",', "\n"),  # a header over two lines
    ("", "\r"),  # classic Mac line ends: a lone CR
])
def test_rows_start_after_the_header_whatever_comes_before_it(lead, ends):
    rows = [awkward(n) for n in range(30)]
    body = csv_text(rows).replace("\r\n", ends)
    data = (lead + body).encode()
    serial = list(parsing.open_table(io.BytesIO(data), "csv"))
    table = parsing.open_table(io.BytesIO(data), "csv")
    assert table.body is not None
    for size in (50, 4096):
        pieces = list(chunks.csv_chunks(table.body, size))
        read = [r for c in pieces for r in chunks.csv_chunk_rows(c.data, "utf-8", table.body.width, c.line, c.lines)]
        assert read == serial


def test_a_file_without_a_final_line_end_and_one_that_ends_in_quotes():
    for raw in ("a,b\n1,2\n3,4", 'a,b\n1,2\n3,"4\n5"', 'a,b\n1,"2\n'):
        data = raw.encode()
        serial = list(parsing.open_table(io.BytesIO(data), "csv"))
        table = parsing.open_table(io.BytesIO(data), "csv")
        pieces = list(chunks.csv_chunks(table.body, 4))
        try:
            read = [r for c in pieces for r in chunks.csv_chunk_rows(c.data, "utf-8", 2, c.line, c.lines)]
        except parsing.CutInQuotes:  # an unterminated quote: the loader reads it in one process
            assert raw.count('"') % 2
            continue
        assert read == serial


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_errors_and_duplicates_in_different_chunks_are_reported_at_their_lines(
        session, pair, chunked, encoding):
    rows = [awkward(n) for n in range(90)]
    rows[4] = {**rows[4], "household_size": 0}
    rows[50] = {**rows[50], "gender": "未知"}
    rows[88] = {**rows[88], "birth_date": "2023-02-30"}
    rows.append(dict(rows[1]))  # the same key as a row chunks before
    rows.append(dict(rows[85]))
    data = csv_text(rows).encode(encoding)
    kind, errors, rows_in = same_both_ways(session, pair, chunked, data)
    line, at = {}, 2  # a row's number is its first physical line; every third takes three
    for n, r in enumerate(rows):
        line[n], at = at, at + 1 + str(r["name"]).count("\n")
    assert (kind, rows_in) == ("rejected", 92)
    assert [(e["row"], e["field"]) for e in errors] == [
        (line[4], "household_size"), (line[50], "gender"), (line[88], "birth_date"),
        (line[90], "id_number"), (line[91], "id_number")]
    assert f"first seen on row {line[1]}" in errors[3]["reason"]
    d = same_both_ways(session, pair, chunked, data, keep_valid=True)
    assert d[:4] == ("ok", 92, 5, 87)


def test_a_decoding_error_in_a_later_chunk_names_its_line(session, pair, chunked, monkeypatch):
    monkeypatch.setattr(parsing, "_SNIFF", 500)  # the encoding is guessed from the first bytes
    data = csv_text([awkward(n) for n in range(80)]).encode()
    at = data.index("居民70".encode())
    bad = data[:at] + b"\xff" + data[at + 1:]
    kind, message = same_both_ways(session, pair, chunked, bad)
    assert kind == "invalid"
    line = data[:at].count(b"\n") + 1
    assert line > 100 and f"line {line}: not valid UTF-8" in message


def test_a_quote_inside_an_unquoted_field_does_not_mislead_the_cuts(session, pair, chunked, monkeypatch):
    rows = [awkward(n) for n in range(60)]
    body = csv_text(rows)
    # A stray quote flips the parity the cutting counts; the csv module reads it as text.
    body = body.replace("居民10", '居民10身高5\'10"', 1)
    resumed = []
    read_on = chunks.csv_rows_from
    monkeypatch.setattr(chunks, "csv_rows_from", lambda *a: resumed.append(a[1:]) or read_on(*a))
    same_both_ways(session, pair, chunked, body.encode())
    assert resumed  # a chunk ended inside what the csv module reads as a quoted field


def test_keyless_resources_number_their_rows_in_file_order(session, keyring, chunked):
    seed_small_city(session)
    items = [{"name": "note", "title": "备注", "type": "string"}, {"name": "n", "title": "数量", "type": "integer"}]
    res = [service.resource_create(session, SYSTEM, people_spec(items=items)) for _ in range(2)]
    session.commit()
    data = ("备注,数量\n" + "".join(f'"第{i}行\n续",{i}\n' for i in range(200))).encode()
    same_both_ways(session, res, chunked, data)
    stored_keys = [session.execute(text(f'SELECT _key, n FROM "{r.table_name}" ORDER BY _key')).all() for r in res]
    assert stored_keys[0] == stored_keys[1] and stored_keys[0][0] == ("#0000000001", 0)


def test_progress_counts_bytes_and_rows_to_the_end(session, pair, chunked):
    chunked(True)
    data = csv_text([awkward(n) for n in range(50)]).encode()
    seen = []
    loading.load_file(session, SYSTEM, pair[1].code, io.BytesIO(data), "csv",
                      progress=lambda b, r: seen.append((b, r)))
    session.commit()
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == (len(data), 50)


@pytest.mark.parametrize("fmt", ["ndjson", "csv-pipe"])
def test_files_that_are_not_split_go_to_the_workers_as_parsed_rows(session, pair, chunked, fmt, monkeypatch):
    """NDJSON (and XLSX, JSON) and a CSV stream that cannot seek: parsed here, checked there."""
    monkeypatch.setattr(loading, "BATCH", 16)
    monkeypatch.setattr(chunks, "chunked", None)  # never used for these
    rows = [awkward(n) for n in range(60)]
    rows[30] = {**rows[30], "household_size": 99}
    rows.append(dict(rows[2]))
    if fmt == "ndjson":
        data = b"".join(orjson.dumps({k: str(v) for k, v in r.items()}) + b"\n" for r in rows)
        kw = {"fmt": "ndjson"}
    else:
        data = csv_text(rows).encode()
        kw = {"pipe": True, "total_bytes": len(data)}
    kind, errors, rows_in = same_both_ways(session, pair, chunked, data, **kw)
    assert rows_in == 61 and [e["field"] for e in errors] == ["household_size", "id_number"]
    assert same_both_ways(session, pair, chunked, data, keep_valid=True, **kw)[:4] == ("ok", 61, 2, 59)
