"""Row checks of a load (数据校验), property-tested: for any information items and any cells a
reader can hand over (text, numbers, dates, JSON values), the compiled check never raises, agrees
with the one-converter-per-cell path it is generated from, types what it accepts as the item says,
and names the field of every error with a specific, bilingual reason."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityos.core.identifiers import citizen_id_with_check
from cityos.hub import validate


def examples(n: int) -> settings:
    """Reproducible in CI (derandomized), no example database in the repo."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


citizen_ids = st.builds(lambda born, n: citizen_id_with_check(f"220202{born:%Y%m%d}{n:03d}"),
                        st.dates(dt.date(1985, 1, 1), dt.date(2020, 1, 1)), st.integers(0, 999))
text_cells = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\s*[+-]?\d{1,4}([.,]\d{1,3})*(e[+-]?\d{1,3})?\s*", fullmatch=True),
    st.sampled_from(["是", "否", "TRUE", "yes", "N", "nan", "inf", "-inf", "1e999999999", "2024-02-30",
                     "2024-02-29", "2024/1/5", "2024年1月5日", "2024-01-01T10:00:00+08:00", "2024-01-01 25:00",
                     "0001-01-01", "9999-12-31T23:59:59-08:00", "13800138000", "+86 138-0013-8000",
                     "0432-12345678", "010 12345678", "91350100M000100Y43", "12.0", "1,234", "", "  ", "²"]),
    citizen_ids, citizen_ids.map(str.lower), citizen_ids.map(lambda s: f" {s} "))
cells = st.one_of(st.none(), text_cells, st.integers(), st.floats(), st.booleans(), st.dates(), st.datetimes(),
                  st.datetimes(timezones=st.just(dt.UTC)), st.decimals(allow_nan=True),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
items = st.fixed_dictionaries({
    "type": st.sampled_from(validate.TYPES), "required": st.booleans(), "is_key": st.booleans(),
    "minimum": st.none() | st.integers(-5, 5) | st.floats(-10, 10),
    "maximum": st.none() | st.integers(0, 100) | st.floats(0, 1e6),
    "max_length": st.none() | st.integers(0, 10),
    "choices": st.none() | st.lists(st.text(max_size=3), min_size=1, max_size=3)})
PYTHON_TYPE = {"string": str, "integer": int, "number": float, "boolean": bool, "date": dt.date,
               "datetime": dt.datetime, "citizen_id": str, "credit_code": str, "phone": str}


def comparable(result: tuple[dict[str, Any] | None, list[validate.RowError]]) -> Any:
    row, errors = result
    if row is not None:  # nan is not equal to itself; keep types, so 1 and 1.0 differ
        row = {k: ("nan" if isinstance(v, float) and math.isnan(v) else (v, type(v))) for k, v in row.items()}
    return row, [e.as_dict() for e in errors]


@examples(200)
@given(st.lists(items, min_size=1, max_size=4), st.data())
def test_the_compiled_check_agrees_with_the_converters_and_never_raises(specs: list[dict[str, Any]],
                                                                         data: st.DataObject) -> None:
    rules = [{**spec, "name": f"c{i}", "title": f"列{i}"} for i, spec in enumerate(specs)]
    check = validate.compile_rows(rules, [r["name"] for r in rules])
    values = data.draw(st.lists(cells, min_size=len(rules), max_size=len(rules)), label="cells")
    fast = check.check(7, values)
    assert comparable(fast) == comparable(check._slow(7, values))
    row, errors = fast
    if row is not None:
        assert not errors and list(row) == [r["name"] for r in rules]
        for rule in rules:
            value = row[rule["name"]]
            if value is None:
                assert not (rule["required"] or rule["is_key"])
            else:
                assert isinstance(value, PYTHON_TYPE[rule["type"]])
                if rule["type"] == "datetime":
                    assert value.utcoffset() == dt.timedelta(0)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    assert math.isfinite(value)
                    assert rule["minimum"] is None or value >= rule["minimum"]
                    assert rule["maximum"] is None or value <= rule["maximum"]
    else:
        assert errors and {e.row for e in errors} == {7}
        for e in errors:
            assert e.field in check.names
            assert " / " in e.reason and "cannot read this value" not in e.reason, e


@examples(100)
@given(st.lists(st.text(max_size=5), max_size=6), st.integers(1, 4))
def test_a_row_of_the_wrong_width_is_one_error_of_the_whole_row(values: list[str], width: int) -> None:
    rules = [{"name": f"c{i}", "type": "string"} for i in range(width)]
    check = validate.compile_rows(rules, [r["name"] for r in rules])
    row, errors = check.check(3, values)
    if len(values) == width:
        assert row is not None and not errors
    else:
        assert row is None and [(e.row, e.field) for e in errors] == [(3, None)]
        assert f"expected {width} fields, got {len(values)}" in errors[0].reason


@examples(60)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=3) | st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_as_excel_shows_them_read_as_their_value(x: decimal.Decimal | float) -> None:
    number = validate.converter(validate.ItemRule.of({"name": "n", "type": "number"}))
    assert number(f"{x:,}") == float(x)
    assert number(f"  {x}  ") == float(x)


# The calendar's ends, as naive wall-clock times: a time of the city there may leave UTC's range.
FIRST_DAYS = dt.datetime(1, 1, 2, tzinfo=dt.UTC).replace(tzinfo=None)
LAST_DAYS = dt.datetime(9999, 12, 31, tzinfo=dt.UTC).replace(tzinfo=None)


@examples(100)
@given(st.one_of(st.datetimes(), st.datetimes(max_value=FIRST_DAYS), st.datetimes(min_value=LAST_DAYS)).flatmap(
    lambda d: st.sampled_from([d, d.date(), str(d), d.isoformat(), str(d.date())])))
def test_any_date_and_time_of_the_calendar_is_typed_or_refused_with_a_reason(value: Any) -> None:
    """From 0001-01-01 to 9999-12-31: a time of the city at either end may leave UTC's range."""
    when = validate.converter(validate.ItemRule.of({"name": "at", "type": "datetime"}))
    try:
        typed = when(value)
    except ValueError as exc:
        assert "outside the years 1-9999" in str(exc)
        return
    assert typed.utcoffset() == dt.timedelta(0)
