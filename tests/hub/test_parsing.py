"""Table readers: CSV encodings (UTF-8, BOM, GBK, GB18030), ragged rows, XLSX, JSON, NDJSON, headers."""

from __future__ import annotations

import datetime as dt
import io

import openpyxl
import pytest

from cityos.hub.parsing import ParseError, RowFault, map_header, open_table

ITEMS = [
    {"name": "name", "title": "姓名", "type": "string", "required": True},
    {"name": "age", "title": "年龄", "type": "integer"},
    {"name": "district", "title": "所属区县", "type": "string"},
]


def naive(*parts: int) -> dt.datetime:
    """A wall-clock time without zone, as openpyxl reads a date cell."""
    return dt.datetime(*parts, tzinfo=dt.UTC).replace(tzinfo=None)


class Unseekable(io.RawIOBase):
    """An upload stream that can only be read forward, like a socket."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        chunk = self._src.read(min(len(buffer), 4096))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def read(data: bytes, fmt: str = "csv", **kw):
    reader = open_table(io.BytesIO(data), fmt, **kw)
    return reader, list(reader)


# -- CSV encodings ---------------------------------------------------------------------------------

TEXT = "姓名,年龄,所属区县\r\n张伟,34,船营区\r\n李娜,28,昌邑区\r\n"


def test_utf8_csv_rows_and_line_numbers():
    data = TEXT.encode("utf-8")
    reader, rows = read(data)
    assert reader.header == ["姓名", "年龄", "所属区县"]
    assert reader.encoding == "utf-8"
    assert rows == [(2, ["张伟", "34", "船营区"]), (3, ["李娜", "28", "昌邑区"])]
    assert reader.bytes_read == reader.total_bytes == len(data)


def test_utf8_bom_stripped():
    reader, rows = read(b"\xef\xbb\xbf" + TEXT.encode("utf-8"))
    assert reader.header[0] == "姓名"
    assert reader.encoding == "utf-8"
    assert rows[0] == (2, ["张伟", "34", "船营区"])


def test_gbk_detected_as_gb18030():
    reader, rows = read(TEXT.encode("gbk"))
    assert reader.encoding == "gb18030"
    assert reader.header == ["姓名", "年龄", "所属区县"]
    assert rows[1] == (3, ["李娜", "28", "昌邑区"])


def test_gb18030_only_characters():
    # 𠮷 (U+20BB7) and € are not in GBK; GB18030 encodes them in four and two bytes.
    text = "姓名,年龄,所属区县\n𠮷祥,40,丰满区€\n"
    with pytest.raises(UnicodeEncodeError):
        text.encode("gbk")
    reader, rows = read(text.encode("gb18030"))
    assert reader.encoding == "gb18030"
    assert rows == [(2, ["𠮷祥", "40", "丰满区€"])]


def test_explicit_encoding_gbk_reads_gb18030():
    reader, rows = read("姓名,年龄,所属区县\n𠮷,1,x\n".encode("gb18030"), encoding="gbk")
    assert reader.encoding == "gb18030"
    assert rows[0][1][0] == "𠮷"


def test_undecodable_byte_names_its_line_far_into_the_file():
    # Past the detection window (1 MiB), some decode chunks (256 KiB) into the file.
    good = "张伟,34,船营区\n".encode()
    lines = 1 + 80_000
    data = "姓名,年龄,所属区县\n".encode() + good * 80_000 + b"bad\xff,1,x\n" + good * 10
    reader = open_table(io.BytesIO(data), "csv")
    assert reader.encoding == "utf-8"
    with pytest.raises(ParseError) as err:
        for _ in reader:
            pass
    assert err.value.line == lines + 1
    assert "not valid UTF-8" in err.value.reason and "编码无法识别" in err.value.reason
    assert f"line {lines + 1}:" in str(err.value) and f"第{lines + 1}行" in str(err.value)


@pytest.mark.parametrize("line", [2, 3, 7])
def test_undecodable_byte_in_a_small_file(line):
    rows = [b"a,1,x\n"] * 8
    rows[line - 2] = b"\xe5\xbc\xa0\xc3(,1,x\n"  # a broken two-byte sequence
    data = b"name,age,district\n" + b"".join(rows)
    with pytest.raises(ParseError) as err:
        read(data, encoding="utf-8")
    assert err.value.line == line


def test_undecodable_byte_in_a_gbk_file():
    data = "姓名,年龄,所属区县\n张伟,1,x\n".encode("gbk") + b"\x80\xff,2,y\n"
    with pytest.raises(ParseError) as err:
        read(data)
    assert err.value.line == 3
    assert "GBK" in err.value.reason


def test_ascii_start_then_gbk_detected_on_seekable_source():
    data = b"name,age,district\n" + b"a,1,x\n" * 200_000 + "张伟,2,船营区\n".encode("gbk")
    reader, rows = read(data)
    assert reader.encoding == "gb18030"
    assert rows[-1][1] == ["张伟", "2", "船营区"]
    assert rows[0] == (2, ["a", "1", "x"])


def test_unseekable_source_streams():
    data = TEXT.encode("gbk")
    reader = open_table(io.BufferedReader(Unseekable(data)), "csv")
    assert reader.total_bytes is None
    assert [r for _, r in reader] == [["张伟", "34", "船营区"], ["李娜", "28", "昌邑区"]]
    assert reader.bytes_read == len(data)


def test_utf16_refused():
    with pytest.raises(ParseError, match="UTF-16"):
        read(TEXT.encode("utf-16"))


def test_progress_counts_bytes_as_rows_stream():
    data = b"name,age,district\n" + b"a,1,x\n" * 100_000
    reader = open_table(io.BytesIO(data), "csv")
    it = iter(reader)
    for _ in range(10):
        next(it)
    assert 0 < reader.bytes_read < reader.total_bytes == len(data)
    for _ in it:
        pass
    assert reader.bytes_read == len(data)


# -- CSV structure ---------------------------------------------------------------------------------


def test_ragged_rows_are_faults_not_fatal():
    data = b"name,age,district\na,1,x\nb,2\nc,3,z,extra\nd,4,w,,\n\n   \ne,5,v\n"
    _, rows = read(data)
    assert rows[0] == (2, ["a", "1", "x"])
    assert rows[1] == (3, RowFault("expected 3 fields, got 2 / 应有3列，实际2列"))
    assert rows[2][0] == 4 and isinstance(rows[2][1], RowFault) and "got 4" in rows[2][1].reason
    assert rows[3] == (5, ["d", "4", "w"])  # trailing empty cells, as Excel leaves them
    assert rows[4] == (8, ["e", "5", "v"])  # blank lines skipped, line numbers kept


def test_quoted_fields_with_commas_quotes_and_newlines():
    data = b'name,age,district\n"Zhang, Wei",1,"line one\nline two"\n"say ""hi""",2,x\nlast,3,y\n'
    _, rows = read(data)
    assert rows == [
        (2, ["Zhang, Wei", "1", "line one\nline two"]),
        (4, ['say "hi"', "2", "x"]),
        (5, ["last", "3", "y"]),
    ]


def test_rows_of_empty_cells_skipped():
    _, rows = read(b"name,age,district\n,,\na,1,\n")
    assert rows == [(3, ["a", "1", ""])]


def test_header_after_blank_lines():
    reader, rows = read(b"\n\nname,age,district\na,1,x\n")
    assert reader.header_line == 3
    assert rows == [(4, ["a", "1", "x"])]


@pytest.mark.parametrize("data", [b"", b"\n\n", b"\xef\xbb\xbf", b" , ,\n"])
def test_empty_file_refused(data):
    with pytest.raises(ParseError, match="empty"):
        read(data)


def test_header_only_has_no_rows():
    reader, rows = read(b"name,age\n")
    assert reader.header == ["name", "age"]
    assert rows == []


def test_unknown_format():
    with pytest.raises(ParseError, match="unknown format"):
        open_table(io.BytesIO(b""), "xls")


# -- header mapping --------------------------------------------------------------------------------


def test_header_by_chinese_title_and_name_any_case():
    assert map_header([" 姓名 ", "AGE", "所属区县"], ITEMS) == ["name", "age", "district"]


def test_header_full_width_and_blank_columns():
    assert map_header(["ＮＡＭＥ", "", "年龄"], ITEMS) == ["name", None, "age"]


def test_header_from_orm_items():
    from cityos.hub.models import Item

    items = [Item(name="name", title="姓名", type="string", required=True)]
    assert map_header(["姓名"], items) == ["name"]


def test_unknown_and_missing_columns_listed_together():
    with pytest.raises(ParseError) as err:
        map_header(["年龄", "colour", "size"], ITEMS, line=1)
    reason = err.value.reason
    assert "'colour'" in reason and "'size'" in reason
    assert "name (姓名)" in reason and "缺少必填列" in reason and "未知的列" in reason
    assert err.value.line == 1


def test_file_without_header_row_masks_the_row_it_shows():
    with pytest.raises(ParseError) as err:
        map_header(["张伟", "220202199003070027", "13812345678"], ITEMS)
    reason = err.value.reason
    assert "220202199003070027" not in reason and "13812345678" not in reason
    assert "'220202********0027'" in reason and "first row must be the header" in reason


def test_key_item_is_a_required_column():
    items = [*ITEMS, {"name": "id_number", "title": "身份证号", "type": "citizen_id", "is_key": True}]
    with pytest.raises(ParseError, match="id_number"):
        map_header(["姓名"], items)


def test_duplicate_columns_refused():
    with pytest.raises(ParseError, match="twice: name"):
        map_header(["name", "姓名", "age"], ITEMS)


# -- XLSX ------------------------------------------------------------------------------------------


def workbook(rows: list[list[object]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_xlsx_values_pass_through_typed():
    data = workbook([
        ["姓名", "年龄", "登记日期", "收入", "备注"],
        ["张伟", 34, naive(2024, 5, 1), 1234.5, None],
        [None, None, None, None, None],
        ["李娜", 28, naive(2023, 1, 2, 8, 30), 0, True],
    ])
    reader, rows = read(data, "xlsx")
    assert reader.header == ["姓名", "年龄", "登记日期", "收入", "备注"]
    assert reader.encoding is None
    assert rows == [
        (2, ["张伟", 34, naive(2024, 5, 1), 1234.5, None]),
        (4, ["李娜", 28, naive(2023, 1, 2, 8, 30), 0, True]),
    ]
    assert 0 < reader.bytes_read <= reader.total_bytes == len(data)


def test_xlsx_short_rows_padded_long_rows_faulted():
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["name", "age", "district"])
    sheet.append(["a"])
    sheet["A3"], sheet["E3"] = "b", "stray"
    out = io.BytesIO()
    book.save(out)
    _, rows = read(out.getvalue(), "xlsx")
    assert rows[0] == (2, ["a", None, None])
    assert rows[1] == (3, RowFault("expected 3 fields, got 5 / 应有3列，实际5列"))


def test_xlsx_from_unseekable_stream():
    data = workbook([["name"], ["a"]])
    reader = open_table(io.BufferedReader(Unseekable(data)), "xlsx")
    assert list(reader) == [(2, ["a"])]


@pytest.mark.parametrize(("data", "needle"), [
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100, ".xls"),
    (b"name,age\n", "xlsx"),
])
def test_xlsx_not_a_workbook(data, needle):
    with pytest.raises(ParseError, match=needle):
        read(data, "xlsx")


def test_xlsx_empty_sheet():
    with pytest.raises(ParseError, match="empty"):
        read(workbook([]), "xlsx")


# -- JSON and NDJSON -------------------------------------------------------------------------------


def test_json_array_in_first_object_key_order():
    data = b'[{"name": "a", "age": 1}, {"age": 2, "name": "b"}, {"name": "c"}]'
    reader, rows = read(data, "json")
    assert reader.header == ["name", "age"]
    assert rows == [(1, ["a", 1]), (2, ["b", 2]), (3, ["c", None])]
    assert reader.bytes_read == len(data)


def test_json_rows_object_and_bom():
    _, rows = read(b'\xef\xbb\xbf{"rows": [{"name": "\xe5\xbc\xa0"}]}', "json")
    assert rows == [(1, ["张"])]


def test_json_extra_keys_and_non_objects_are_row_faults():
    _, rows = read(b'[{"name": "a"}, {"name": "b", "colour": "red"}, 5]', "json")
    assert rows[0] == (1, ["a"])
    assert rows[1][0] == 2 and "'colour'" in rows[1][1].reason
    assert rows[2] == (3, RowFault("not a JSON object / 不是JSON对象"))


@pytest.mark.parametrize(("data", "needle"), [
    (b'[{"name": "a"},\n {"name": }]', "not valid"),
    (b'{"data": []}', "array"),
    (b"[]", "no rows"),
    (b"[1, 2]", "objects"),
    ("[{\"name\": \"张\"}]".encode("gbk"), "UTF-8"),
])
def test_json_refused(data, needle):
    with pytest.raises(ParseError, match=needle):
        read(data, "json")


def test_json_syntax_error_has_line():
    with pytest.raises(ParseError) as err:
        read(b'[{"name": "a"},\n\n {"name": }]', "json")
    assert err.value.line == 3


def test_ndjson_lines():
    data = b'{"name": "a", "age": 1}\n\n{"name": "b", "age": 2}\r\nnot json\n{"name": "c", "x": 1}\n{"age": 4}'
    reader, rows = read(data, "ndjson")
    assert reader.header == ["name", "age"]
    assert rows[0] == (1, ["a", 1])
    assert rows[1] == (3, ["b", 2])
    assert rows[2][0] == 4 and "not valid JSON" in rows[2][1].reason
    assert rows[3][0] == 5 and "'x'" in rows[3][1].reason
    assert rows[4] == (6, [None, 4])
    assert reader.bytes_read == len(data)


def test_ndjson_bad_first_line_is_fatal():
    with pytest.raises(ParseError) as err:
        read(b'\n{"name": \n', "ndjson")
    assert err.value.line == 2


def test_parse_error_is_a_bad_request():
    from cityos.core.errors import BadRequest

    with pytest.raises(BadRequest) as err:
        read(b"", "csv")
    assert err.value.status == 400


def test_damaged_sheet_fails_at_the_row_reached():
    import zipfile

    data = workbook([["name", "age"], *[[f"p{n}", n] for n in range(50)]])
    damaged = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(damaged, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                body = body[: body.index(b'<row r="30"')] + b'<row r="30"><c r="A30" t="inlineStr"><is>'
            dst.writestr(info, body)
    reader = open_table(io.BytesIO(damaged.getvalue()), "xlsx")
    seen = []
    with pytest.raises(ParseError, match="damaged") as err:
        for line, _ in reader:
            seen.append(line)
    assert seen[-1] == 29 and err.value.line == 30


def test_bom_wins_over_a_stated_encoding():
    reader, rows = read(b"\xef\xbb\xbf" + TEXT.encode("utf-8"), encoding="gbk")
    assert reader.encoding == "utf-8"
    assert rows[0] == (2, ["张伟", "34", "船营区"])
