"""Row validation: every item type's accepted and refused values, masking, compiled rows, error report."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
from typing import Any

import pytest

from cityos.core.errors import Invalid
from cityos.core.identifiers import citizen_id_with_check, credit_code_with_check, validate_citizen_id
from cityos.hub.parsing import RowFault
from cityos.hub.validate import REQUIRED, ErrorReport, ItemRule, RowError, compile_rows, converter

UTC = dt.UTC
GOOD_ID = citizen_id_with_check("22020219900307002")  # 昌邑区, born 1990-03-07
OLD_ID = citizen_id_with_check("22020219560101002")  # born before 220202 existed (1983): still real
BAD_ID = GOOD_ID[:-1] + ("0" if GOOD_ID[-1] != "0" else "1")  # wrong check digit
GOOD_CODE = credit_code_with_check("91220200MA0Y12345")


def naive(*parts: int) -> dt.datetime:
    """A wall-clock time without zone, as openpyxl reads a date cell."""
    return dt.datetime(*parts, tzinfo=dt.UTC).replace(tzinfo=None)


def conv(type_: str, **kw: Any):
    return converter(ItemRule(name="f", title="字段", type=type_, **kw))


def refused(type_: str, value: Any, **kw: Any) -> str:
    with pytest.raises(ValueError) as err:
        conv(type_, **kw)(value)
    return str(err.value)


# -- ItemRule --------------------------------------------------------------------------------------


def test_rule_from_dict_and_orm_item():
    from cityos.hub.models import Item

    item = Item(name="age", title="年龄", type="integer", required=True, minimum=0.0, maximum=150.0,
                sensitivity="public", choices=None)
    rule = ItemRule.of(item)
    assert rule == ItemRule("age", "年龄", "integer", required=True, minimum=0.0, maximum=150.0)
    assert ItemRule.of({"name": "s", "type": "string", "choices": ["a", "b"], "sensitivity": "sensitive"}) == \
        ItemRule("s", "s", "string", choices=("a", "b"), sensitive=True)
    assert ItemRule.of(rule) is rule


def test_rule_unknown_type():
    with pytest.raises(ValueError, match="unknown type"):
        ItemRule.of({"name": "x", "type": "blob"})


# -- every type ------------------------------------------------------------------------------------

ACCEPTED = [
    ("string", " 船营区 ", "船营区"),
    ("string", 12, "12"),
    ("string", 12.0, "12"),
    ("string", 1.5, "1.5"),
    ("string", naive(2024, 5, 1), "2024-05-01"),
    ("integer", "12", 12),
    ("integer", " -7 ", -7),
    ("integer", 12, 12),
    ("integer", 12.0, 12),
    ("integer", "12.0", 12),
    ("integer", "1,234", 1234),
    ("integer", "９", 9),  # full-width digits from a Chinese input method
    ("number", "1.5", 1.5),
    ("number", "-3", -3.0),
    ("number", "1e3", 1000.0),
    ("number", "1,234.5", 1234.5),
    ("number", 7, 7.0),
    ("number", 2.25, 2.25),
    ("boolean", "true", True), ("boolean", "FALSE", False), ("boolean", "1", True), ("boolean", "0", False),
    ("boolean", "yes", True), ("boolean", "No", False), ("boolean", "是", True), ("boolean", "否", False),
    ("boolean", "Y", True), ("boolean", " n ", False), ("boolean", True, True), ("boolean", 0, False),
    ("date", "2024-05-01", dt.date(2024, 5, 1)),
    ("date", "2024/5/1", dt.date(2024, 5, 1)),
    ("date", "2024/05/01", dt.date(2024, 5, 1)),
    ("date", "20240501", dt.date(2024, 5, 1)),
    ("date", "2024年5月1日", dt.date(2024, 5, 1)),
    ("date", " 2024-05-01 ", dt.date(2024, 5, 1)),
    ("date", "2024/5/1 0:00", dt.date(2024, 5, 1)),
    ("date", naive(2024, 5, 1), dt.date(2024, 5, 1)),
    ("date", dt.date(2024, 5, 1), dt.date(2024, 5, 1)),
    ("datetime", "2024-05-01T08:30:00", dt.datetime(2024, 5, 1, 0, 30, tzinfo=UTC)),
    ("datetime", "2024-05-01 08:30", dt.datetime(2024, 5, 1, 0, 30, tzinfo=UTC)),
    ("datetime", "2024-05-01T08:30:00Z", dt.datetime(2024, 5, 1, 8, 30, tzinfo=UTC)),
    ("datetime", "2024-05-01T08:30:00+09:00", dt.datetime(2024, 4, 30, 23, 30, tzinfo=UTC)),
    ("datetime", "2024-05-01T08:30:00.250+08:00", dt.datetime(2024, 5, 1, 0, 30, 0, 250000, tzinfo=UTC)),
    ("datetime", "2024/5/1 8:30", dt.datetime(2024, 5, 1, 0, 30, tzinfo=UTC)),
    ("datetime", "2024/5/1", dt.datetime(2024, 4, 30, 16, 0, tzinfo=UTC)),
    ("datetime", "2024-05-01", dt.datetime(2024, 4, 30, 16, 0, tzinfo=UTC)),
    ("datetime", naive(2024, 5, 1, 8, 30), dt.datetime(2024, 5, 1, 0, 30, tzinfo=UTC)),
    ("datetime", dt.date(2024, 5, 1), dt.datetime(2024, 4, 30, 16, 0, tzinfo=UTC)),
    ("citizen_id", GOOD_ID, GOOD_ID),
    ("citizen_id", f" {GOOD_ID.lower()} ", GOOD_ID),
    ("citizen_id", OLD_ID, OLD_ID),
    ("citizen_id", citizen_id_with_check("11010519491231002"), citizen_id_with_check("11010519491231002")),
    ("credit_code", GOOD_CODE, GOOD_CODE),
    ("credit_code", " " + GOOD_CODE.lower() + " ", GOOD_CODE),
    ("phone", "13812345678", "13812345678"),
    ("phone", "138 1234 5678", "13812345678"),
    ("phone", "+86 138-1234-5678", "13812345678"),
    ("phone", "8613812345678", "13812345678"),
    ("phone", 13812345678, "13812345678"),
    ("phone", "0432-12345678", "0432-12345678"),
    ("phone", "0432-1234567", "0432-1234567"),
    ("phone", "(0432)12345678", "0432-12345678"),
    ("phone", "043212345678", "0432-12345678"),
    ("phone", "01012345678", "010-12345678"),
    ("phone", "010-12345678-123", "010-12345678-123"),
]


@pytest.mark.parametrize(("type_", "value", "expected"), ACCEPTED)
def test_accepted(type_, value, expected):
    got = conv(type_)(value)
    assert got == expected and type(got) is type(expected)
    if type_ == "datetime":
        assert got.tzinfo is UTC


REFUSED = [
    ("string", {"a": 1}, "nested"),
    ("integer", "1.5", "whole number"),
    ("integer", 1.5, "whole number"),
    ("integer", "abc", "不是整数"),
    ("integer", "1e999999999", "whole number"),
    ("integer", True, "whole number"),
    ("integer", "99999999999999999999", "maximum"),
    ("number", "nan", "finite"),
    ("number", "inf", "finite"),
    ("number", "-Infinity", "finite"),
    ("number", "1e400", "finite"),
    ("number", "abc", "不是数字"),
    ("number", True, "not a number"),
    ("boolean", "maybe", "是/否"),
    ("boolean", 2, "yes/no"),
    ("date", "2024-02-30", "not a date"),
    ("date", "01/05/2024", "YYYY-MM-DD"),
    ("date", "2024-05-01 08:30", "not a date"),
    ("date", naive(2024, 5, 1, 8, 30), "date only"),
    ("date", 45413, "number"),
    ("datetime", "2024-05-01 25:00", "ISO 8601"),
    ("datetime", "yesterday", "ISO 8601"),
    ("datetime", 45413.5, "number"),
    ("citizen_id", BAD_ID, "check digit"),
    ("citizen_id", GOOD_ID[:17], "18 characters"),
    ("citizen_id", f"{GOOD_ID[:6]} {GOOD_ID[6:14]} {GOOD_ID[14:]}", "18 characters"),  # as core says
    ("citizen_id", citizen_id_with_check("22029919900101002"), "component"),  # no such county
    ("citizen_id", "220202199002300021", "birth date"),
    ("citizen_id", citizen_id_with_check("22020220990101002"), "future"),
    ("citizen_id", citizen_id_with_check("99999919900101002"), "component"),
    ("citizen_id", "2202021990A307002X", "digits"),
    ("citizen_id", 2.20202199003070e17, "format the column as text"),
    ("credit_code", GOOD_CODE[:-1] + ("0" if GOOD_CODE[-1] != "0" else "1"), "check digit"),
    ("credit_code", GOOD_CODE[:10], "18 characters"),
    ("phone", "12345", "phone number"),
    ("phone", "23812345678", "phone number"),
    ("phone", "1381234567", "phone number"),
    ("phone", "4001234567", "phone number"),
]


@pytest.mark.parametrize(("type_", "value", "needle"), REFUSED)
def test_refused(type_, value, needle):
    reason = refused(type_, value)
    assert needle in reason
    assert " / " in reason  # English, then Chinese


@pytest.mark.parametrize(("type_", "value"), [(t, v) for t, v, _ in ACCEPTED + REFUSED] + [
    ("integer", " "), ("number", " "), ("integer", "5"), ("number", "5"), ("string", "abcdef"),
    ("string", "B12"), ("number", "inf"), ("integer", 5.5), ("date", 20240501), ("boolean", ["x"])])
@pytest.mark.parametrize("kw", [{}, {"required": True, "minimum": 1, "maximum": 100, "max_length": 5,
                                    "pattern": r"[A-Z]\d*", "choices": ("A1", "B12", "abcdef")}])
def test_compiled_row_gives_the_converters_answer(type_, value, kw):
    rule = ItemRule(name="f", title="字段", type=type_, **(kw if type_ != "string" else kw | {"minimum": None}))
    try:
        expected, reasons = {"f": converter(rule)(value)}, []
    except ValueError as exc:
        expected, reasons = None, [str(exc)]
    row, errors = compile_rows([rule], ["f"]).check(9, [value])
    assert (row, [e.reason for e in errors]) == (expected, reasons)
    assert all(e.row == 9 and e.field == "f" for e in errors)


@pytest.mark.parametrize("type_", ["string", "integer", "number", "boolean", "date", "datetime",
                                   "citizen_id", "credit_code", "phone"])
@pytest.mark.parametrize("empty", ["", "   ", None])
def test_empty_is_none_unless_required(type_, empty):
    assert conv(type_)(empty) is None
    assert refused(type_, empty, required=True) == REQUIRED
    assert refused(type_, empty, is_key=True) == REQUIRED


def test_string_constraints():
    assert refused("string", "abcdef", max_length=5).startswith("longer than 5 characters / 超过5个字符")
    assert conv("string", max_length=3)("船营区") == "船营区"  # characters, not bytes
    assert conv("string", pattern=r"[A-Z]\d{2}")("A01") == "A01"
    assert "pattern" in refused("string", "A01x", pattern=r"[A-Z]\d{2}")  # the whole value must match
    assert conv("string", choices=("船营区", "昌邑区"))("昌邑区") == "昌邑区"
    assert "not one of: 船营区, 昌邑区" in refused("string", "丰满区", choices=("船营区", "昌邑区"))
    with pytest.raises(ValueError, match="bad pattern"):
        conv("string", pattern="[")


@pytest.mark.parametrize("type_", ["integer", "number"])
def test_minimum_and_maximum(type_):
    check = conv(type_, minimum=0.0, maximum=150.0)
    assert check("0") == 0 and check("150") == 150
    assert refused(type_, "-1", minimum=0.0, maximum=150.0).startswith("less than the minimum 0 / 小于最小值0")
    assert refused(type_, "151", minimum=0.0, maximum=150.0).startswith("more than the maximum 150 / 大于最大值150")
    assert "0.5" in refused(type_, "0.25", minimum=0.5) if type_ == "number" else True


def test_integer_range_is_that_of_bigint():
    assert conv("integer")(str(2**63 - 1)) == 2**63 - 1
    assert "maximum" in refused("integer", str(2**63))


# -- masking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["citizen_id", "credit_code", "phone"])
def test_identifier_reasons_never_quote_the_value(type_):
    reason = refused(type_, BAD_ID)
    assert BAD_ID not in reason and BAD_ID[6:14] not in reason


def test_id_and_phone_numbers_masked_in_other_reasons():
    reason = refused("string", f"身份证{GOOD_ID}电话13812345678", max_length=10)
    assert GOOD_ID not in reason and "13812345678" not in reason
    assert GOOD_ID[6:14] not in reason  # no birth date
    assert "********" in reason and "****" in reason
    long_value = "x" * 30 + GOOD_ID  # cut at 40 characters: no half number may escape the mask
    assert "1990" not in refused("string", long_value, max_length=10)
    assert GOOD_ID not in refused("integer", "x" + GOOD_ID)


def test_sensitive_values_never_quoted():
    reason = refused("string", "secret diagnosis", max_length=3, sensitive=True)
    assert "secret" not in reason and reason == "longer than 3 characters / 超过3个字符"


# -- citizen ID agrees with core -------------------------------------------------------------------


def test_citizen_id_agrees_with_core_check():
    rng = random.Random(11643)
    check = conv("citizen_id")
    differ = 0
    for _ in range(3000):
        region = rng.choice(["220202", "220204", "220281", "220284", "110105", "999999", "220299"])
        born = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(27000))
        value = citizen_id_with_check(f"{region}{born:%Y%m%d}{rng.randrange(1000):03d}")
        if rng.random() < 0.5:  # corrupt one character
            i = rng.randrange(18)
            value = value[:i] + rng.choice("0123456789X") + value[i + 1:]
        try:
            expected, why = validate_citizen_id(value), ""
        except Invalid as exc:
            expected, why = None, exc.errors[0].reason
        except KeyError:  # stdnum fails on some unknown regions (220299)
            expected, why = None, "component"
        try:
            got = check(value)
        except ValueError:
            got = None
        if got != expected:
            # The one difference: a county coded after the person was born, which core refuses.
            assert expected is None and got == value and "component" in why, value
            validate_citizen_id(citizen_id_with_check(value[:6] + "20100101" + value[14:17]))  # county exists
            differ += 1
    assert differ > 0


# -- compiled rows ---------------------------------------------------------------------------------

RULES = [
    ItemRule("name", "姓名", "string", required=True, max_length=10),
    ItemRule("id_number", "公民身份号码", "citizen_id", required=True, is_key=True),
    ItemRule("age", "年龄", "integer", minimum=0, maximum=150),
    ItemRule("married", "已婚", "boolean"),
]


def test_check_returns_typed_row():
    check = compile_rows(RULES, ["name", "id_number", "age", "married"]).check
    assert check(2, ["张伟", GOOD_ID, "34", "是"]) == (
        {"name": "张伟", "id_number": GOOD_ID, "age": 34, "married": True}, [])


def test_check_reports_every_error_of_a_row():
    check = compile_rows(RULES, ["name", "id_number", "age", "married"]).check
    row, errors = check(7, ["", BAD_ID, "200", "maybe"])
    assert row is None
    assert [(e.row, e.field) for e in errors] == [(7, "name"), (7, "id_number"), (7, "age"), (7, "married")]
    assert errors[0].reason == REQUIRED
    assert all(GOOD_ID[:17] not in e.reason for e in errors)


def test_ignored_columns_and_column_order():
    validator = compile_rows(RULES, [None, "age", "name", None])
    assert validator.names == ("age", "name")
    assert validator.check(2, ["x", "5", "李娜", "y"]) == ({"age": 5, "name": "李娜"}, [])


def test_single_column():
    validator = compile_rows(RULES, ["age"])
    assert validator.check(2, ["5"]) == ({"age": 5}, [])
    assert validator.check(3, ["5", "6"])[1][0].reason.startswith("expected 1 fields, got 2")


def test_ragged_rows_and_row_faults():
    check = compile_rows(RULES, ["name", "age"]).check
    assert check(3, ["a"]) == (None, [RowError(3, None, "expected 2 fields, got 1 / 应有2列，实际1列")])
    assert check(4, RowFault("not a JSON object / 不是JSON对象")) == (
        None, [RowError(4, None, "not a JSON object / 不是JSON对象")])
    assert check(5, ("a", "1")) == ({"name": "a", "age": 1}, [])


def test_columns_must_have_rules():
    with pytest.raises(ValueError, match="without a rule"):
        compile_rows(RULES, ["name", "colour"])


def test_unexpected_failure_is_a_row_error():
    class Odd:
        def __str__(self) -> str:
            raise RuntimeError("no")

    row, errors = compile_rows(RULES, ["name"]).check(2, [Odd()])
    assert row is None and "cannot read this value (RuntimeError)" in errors[0].reason


# -- error report ----------------------------------------------------------------------------------


def test_error_report_keeps_first_errors_and_counts_all():
    report = ErrorReport(limit=3)
    report.add([])
    report.add([RowError(2, "age", "bad / 错"), RowError(2, "name", REQUIRED)])
    report.add([RowError(3, None, "expected 4 fields, got 3 / 应有4列，实际3列")])
    report.add([RowError(4, "age", "=cmd|' /C calc'!A0")])
    assert (report.total, report.rows, len(report.errors), report.truncated) == (4, 3, 3, True)
    assert report.as_dicts()[0] == {"row": 2, "field": "age", "reason": "bad / 错"}
    assert str(report.errors[0]) == "row 2 age: bad / 错"


def test_error_report_csv_opens_in_excel():
    report = ErrorReport(limit=2)
    report.add([RowError(2, "age", "more than the maximum 150 / 大于最大值150: '200'")])
    report.add([RowError(3, None, "=HYPERLINK(\"x\")")])
    report.add([RowError(4, "name", REQUIRED)])
    data = report.to_csv(titles={"age": "年龄"})
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data[3:].decode("utf-8"))))
    assert rows[0] == ["行号/row", "字段/field", "原因/reason"]
    assert rows[1] == ["2", "年龄 (age)", "more than the maximum 150 / 大于最大值150: '200'"]
    assert rows[2] == ["3", "", "'=HYPERLINK(\"x\")"]  # a reason is never a formula
    assert rows[3] == ["", "", "1 more errors not listed / 另有1条错误未列出"]
