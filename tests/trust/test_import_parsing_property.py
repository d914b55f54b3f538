"""Table readers of the data hub (表格读取), property-tested: arbitrary bytes in every format and
with any encoding a form may name either read as rows or fail as `ParseError` (never a
UnicodeError, IndexError or csv.Error); rows written by csv.writer (UTF-8, GB18030), openpyxl and
JSON read back equal; and where the reader cuts its input (encoding sniff, decode chunks) changes
nothing, which the tiny sizes generated here exercise on every character boundary."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import encodings.aliases
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import openpyxl
import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cityos.hub import parsing
from cityos.hub.parsing import ParseError, RowFault, open_table


def examples(n: int) -> settings:
    """Reproducible in CI (derandomized), no example database in the repo."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# Every codec name Python knows, and the text-to-bytes ones that are no text encoding at all.
CODECS = sorted(set(encodings.aliases.aliases.values()) | {"utf-16", "utf-32", "utf-7", "rot13", "base64",
                                                           "idna", "punycode", "undefined", "bogus"})


def outcome(data: bytes, fmt: str, encoding: str | None = None) -> tuple[Any, ...]:
    """What reading gives: ("rows", header, rows, codec) or ("error", message, line)."""
    try:
        reader = open_table(io.BytesIO(data), fmt, encoding=encoding)
        try:
            return "rows", reader.header, list(reader), reader.encoding
        finally:
            reader.close()
    except ParseError as exc:
        assert exc.reason and " / " in exc.reason  # bilingual, for the problem document
        return "error", str(exc), exc.line


@contextmanager
def cut_every(sniff: int, chunk: int) -> Iterator[None]:
    """Read ahead `sniff` bytes to guess the encoding and decode `chunk` bytes at a time."""
    with mock.patch.object(parsing, "_SNIFF", sniff), mock.patch.object(parsing, "_CHUNK", chunk):
        yield


def csv_bytes(header: list[str], rows: list[list[str]], encoding: str) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


# Any character that text may hold (no lone surrogates): quotes, commas, CR/LF, NUL, BOMs.
cell_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)
label = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]),
                min_size=1, max_size=8).filter(lambda s: s == s.strip() and s[0] != "\ufeff")


def table(cell: st.SearchStrategy[Any], width: st.SearchStrategy[int] = st.integers(1, 4)
          ) -> st.SearchStrategy[tuple[list[str], list[list[Any]]]]:
    """A header of distinct labels and up to 6 rows of its width."""
    return width.flatmap(lambda w: st.tuples(
        st.lists(label, min_size=w, max_size=w, unique=True),
        st.lists(st.lists(cell, min_size=w, max_size=w), max_size=6)))


def non_blank(rows: list[list[Any]]) -> list[list[Any]]:
    return [r for r in rows if any(c not in (None, "") for c in r)]


@examples(400)
@given(st.binary(max_size=300), st.sampled_from(parsing.FORMATS),
       st.one_of(st.none(), st.sampled_from(CODECS)))
def test_arbitrary_bytes_read_as_rows_or_fail_as_parse_error(data: bytes, fmt: str, encoding: str | None) -> None:
    result = outcome(data, fmt, encoding)
    if result[0] == "rows":
        _, header, rows, _ = result
        assert header and all(isinstance(h, str) for h in header)
        for line, row in rows:
            assert line >= 1 and (isinstance(row, RowFault) or len(row) == len(header))


# What people type in the form's encoding field (the labels of Excel, Notepad and WPS).
LABELS = ["utf-8", "UTF8", "utf-8-sig", "utf_8_sig", "gbk", "GBK", "gb2312", "GB18030", "cp936", "big5",
          "latin-1", "ascii"]
ascii_cell = st.text(st.characters(max_codepoint=0x7F, exclude_categories=["Cs"]), max_size=12)


@examples(60)
@given(st.lists(ascii_cell, min_size=1, max_size=5), st.sampled_from(LABELS))
def test_every_label_a_form_may_send_reads_ascii_text(cells: list[str], label: str) -> None:
    header, rows = ["a", "b"], [cells[i:i + 2] for i in range(0, len(cells) - 1, 2)]
    result = outcome(csv_bytes(header, rows, "ascii"), "csv", label)
    assert result[0] == "rows", (label, result)
    assert result[1] == header and [r for _, r in result[2]] == non_blank(rows)


@examples(150)
@given(st.text(max_size=120), st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "gbk"]),
       st.sampled_from(["csv", "json", "ndjson"]))
def test_arbitrary_text_in_every_encoding_reads_or_fails_cleanly(text: str, codec: str, fmt: str) -> None:
    try:
        data = text.encode(codec)
    except UnicodeEncodeError:
        assume(False)
    outcome(data, fmt)
    outcome(data, fmt, "gbk")


@examples(200)
@given(table(cell_text), st.integers(4, 12), st.integers(1, 9), st.booleans())
def test_utf8_csv_round_trips_wherever_the_input_is_cut(tab: tuple[list[str], list[list[str]]],
                                                       sniff: int, chunk: int, bom: bool) -> None:
    header, rows = tab
    data = csv_bytes(header, rows, "utf-8-sig" if bom else "utf-8")
    with cut_every(sniff, chunk):
        result = outcome(data, "csv")
    assert result[0] == "rows", result
    assert result[1] == header and [r for _, r in result[2]] == non_blank(rows)
    assert result[3] == "utf-8"


@examples(200)
@given(table(cell_text), st.integers(4, 12), st.integers(1, 9))
def test_gb18030_csv_round_trips_when_the_form_names_it(tab: tuple[list[str], list[list[str]]],
                                                       sniff: int, chunk: int) -> None:
    header, rows = tab
    with cut_every(sniff, chunk):
        result = outcome(csv_bytes(header, rows, "gb18030"), "csv", "gb18030")
    assert result[0] == "rows", result
    assert result[1] == header and [r for _, r in result[2]] == non_blank(rows)


# GBK holds ASCII and every CJK ideograph of U+4E00-U+9FA5.
gbk_char = st.one_of(st.characters(max_codepoint=0x7F), st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5))
ascii_label = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=6)


@examples(150)
@given(st.integers(1, 3).flatmap(lambda w: st.tuples(
           st.lists(ascii_label, min_size=w, max_size=w, unique=True),
           st.lists(st.lists(st.text(gbk_char, max_size=12), min_size=w, max_size=w), max_size=6))),
       st.integers(4, 12), st.integers(1, 9), st.sampled_from(["gbk", "gb18030"]))
def test_gbk_csv_with_a_chinese_header_is_detected_wherever_the_input_is_cut(
        tab: tuple[list[str], list[list[str]]], sniff: int, chunk: int, codec: str) -> None:
    """Excel in China writes GBK without saying so: the first Chinese character (here 姓, whose
    GBK bytes are no UTF-8) decides, even when the sniffed bytes end in the middle of it."""
    header, rows = tab
    header = [*header, "姓名"]
    rows = [[*r, "张伟"] for r in rows]
    with cut_every(sniff, chunk):
        result = outcome(csv_bytes(header, rows, codec), "csv")
    assert result[0] == "rows", result
    assert result[1] == header and [r for _, r in result[2]] == rows and result[3] == "gb18030"


@examples(250)
@given(st.one_of(st.binary(max_size=80), st.text(max_size=40).map(lambda s: s.encode("gb18030"))),
       st.sampled_from(["gb18030", "utf-8", "latin-1"]), st.integers(4, 12), st.integers(1, 9))
def test_where_the_input_is_cut_changes_nothing_for_a_named_encoding(data: bytes, encoding: str,
                                                                   sniff: int, chunk: int) -> None:
    """Rows, or the same error at the same line, with any read-ahead and decode chunk sizes."""
    whole = outcome(data, "csv", encoding)
    with cut_every(sniff, chunk):
        assert outcome(data, "csv", encoding) == whole


@examples(30)
@given(st.integers(1, 300_000), st.sampled_from(["x", "中", '"', "\x00", "\n"]))
def test_very_long_fields_read_or_fail_as_parse_error(length: int, char: str) -> None:
    cell = char * length
    result = outcome(csv_bytes(["a", "b"], [[cell, "1"]], "utf-8"), "csv")
    if result[0] == "rows":
        assert result[2] == [(2, [cell, "1"])]
    else:
        assert "field larger than field limit" in result[1] and length > 100_000


def naive(*parts: int) -> dt.datetime:
    """A wall-clock time without zone, as a spreadsheet cell holds it."""
    return dt.datetime(*parts, tzinfo=dt.UTC).replace(tzinfo=None)


xlsx_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1,
                    max_size=20).filter(lambda s: not s.startswith("="))  # '=...' is a formula
xlsx_cell = st.one_of(
    st.none(), xlsx_text, st.integers(-2**53, 2**53), st.booleans(),
    st.floats(-1e12, 1e12).map(lambda x: float(f"{x:.12g}")),  # Excel keeps 15 significant digits
    st.datetimes(naive(1901, 1, 1), naive(2099, 12, 31)).map(lambda d: d.replace(microsecond=0)))


@examples(60)
@given(table(xlsx_cell, st.integers(1, 5)))
def test_xlsx_written_by_openpyxl_reads_back_equal(tab: tuple[list[str], list[list[Any]]]) -> None:
    header, rows = tab
    assume(all(not h.startswith("=") for h in header))
    book = openpyxl.Workbook()
    sheet = book.active
    for row in (header, *rows):
        sheet.append(row)
    buf = io.BytesIO()
    book.save(buf)
    result = outcome(buf.getvalue(), "xlsx")
    assert result[0] == "rows" and result[1] == header
    kept = non_blank(rows)
    assert [r for _, r in result[2]] == kept
    assert [n for n, _ in result[2]] == [i + 2 for i, r in enumerate(rows) if r in kept]  # sheet rows


json_value = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(max_size=12),
                       st.floats(allow_nan=False, allow_infinity=False))


@examples(100)
@given(st.integers(1, 4).flatmap(lambda w: st.lists(
    st.fixed_dictionaries({f"k{i}": json_value for i in range(w)}), min_size=1, max_size=6)),
    st.booleans(), st.booleans())
def test_json_and_ndjson_rows_read_back_equal(objects: list[dict[str, Any]], wrapped: bool, bom: bool) -> None:
    prefix = codecs.BOM_UTF8 if bom else b""
    doc = {"rows": objects} if wrapped else objects
    as_json = outcome(prefix + orjson.dumps(doc), "json")
    as_ndjson = outcome(prefix + b"\n".join(orjson.dumps(o) for o in objects), "ndjson")
    for result in (as_json, as_ndjson):
        assert result[0] == "rows" and result[1] == list(objects[0])
        assert [r for _, r in result[2]] == [[o[k] for k in objects[0]] for o in objects]


@examples(100)
@given(st.lists(st.one_of(st.binary(max_size=20), json_value.map(orjson.dumps),
                          st.dictionaries(st.text(max_size=3), json_value, max_size=3).map(orjson.dumps)),
                min_size=1, max_size=6))
def test_broken_ndjson_lines_are_row_faults_not_failures(lines: list[bytes]) -> None:
    """After a good first line, a line that is not JSON, not an object or has other keys is a
    `RowFault` of that line (reported with the row), and the load goes on to the next."""
    first = b'{"a": 1, "b": 2}'
    result = outcome(b"\n".join([first, *(ln.replace(b"\n", b" ") for ln in lines)]), "ndjson")
    assert result[0] == "rows" and result[1] == ["a", "b"]
    numbers = [n for n, _ in result[2]]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
