"""ID validators (证件号码校验), property-tested: numbers built with correct check characters by
python-stdnum's own calc functions are accepted, any one-character change or adjacent swap is
rejected, and arbitrary text only ever raises the validator's own error. Both the core checks
(`core.identifiers`) and the data hub's cell converters (`hub.validate`, which loads use) are held
to this; the hub's compiled fast path must agree with its converter."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stdnum.cn import ric, uscc

from cityos.core import identifiers
from cityos.core.errors import Invalid
from cityos.hub import validate


def examples(n: int) -> settings:
    """Reproducible in CI (derandomized), no example database in the repo."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# County codes (GB/T 2260) that stdnum knows as assigned from 1985 to today.
REGIONS = ["110101", "110105", "120101", "220202", "220204", "230103", "310104", "320106", "330106",
           "420106", "440106", "440305", "610113"]
# GB 32100: registration authority (1 机构编制, 5 民政, 9 工商) and category; stdnum wants digits
# in the first eight places, so the letter authorities (Y, N, ...) are not generated here.
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"

citizen_ids = st.builds(
    lambda region, born, seq: region + f"{born:%Y%m%d}{seq:03d}",
    st.sampled_from(REGIONS), st.dates(dt.date(1985, 1, 1), dt.date(2020, 12, 31)), st.integers(0, 999),
).map(lambda first17: first17 + ric.calc_check_digit(first17 + "0"))
credit_codes = st.builds(
    lambda authority, category, region, org: authority + category + region + org,
    st.sampled_from("159"), st.sampled_from("123"), st.sampled_from(REGIONS),
    st.text(USCC_ALPHABET, min_size=9, max_size=9),
).map(lambda first17: first17 + uscc.calc_check_digit(first17))

CITIZEN = validate.ItemRule.of({"name": "id_number", "type": "citizen_id", "sensitivity": "sensitive",
                                 "required": True})
CREDIT = validate.ItemRule.of({"name": "credit_code", "type": "credit_code", "required": True})
to_citizen, to_credit = validate.converter(CITIZEN), validate.converter(CREDIT)
rows_citizen = validate.compile_rows([CITIZEN], ["id_number"])  # the compiled fast path of a load
rows_credit = validate.compile_rows([CREDIT], ["credit_code"])


def refused(value: str, kind: str) -> bool:
    """True when every checker refuses the value, each with its own error type only."""
    core = identifiers.validate_citizen_id if kind == "citizen" else identifiers.validate_credit_code
    conv = to_citizen if kind == "citizen" else to_credit
    rows = rows_citizen if kind == "citizen" else rows_credit
    try:
        core(value)
        return False
    except Invalid as exc:
        assert exc.errors[0].field in ("id_number", "credit_code") and " / " in exc.errors[0].reason
    try:
        conv(value)
        return False
    except ValueError as exc:
        assert " / " in str(exc)  # bilingual reason
        assert len(value.strip()) < 8 or value.strip() not in str(exc)  # never echoes the number
    row, errors = rows.check(2, [value])
    return row is None and len(errors) == 1


@examples(100)
@given(citizen_ids)
def test_generated_citizen_ids_are_accepted_everywhere(number: str) -> None:
    assert identifiers.validate_citizen_id(number) == number
    assert identifiers.validate_citizen_id(f" {number.lower()} ") == number  # case and spaces
    assert to_citizen(number) == number
    assert rows_citizen.check(2, [number]) == ({"id_number": number}, [])


@examples(150)
@given(citizen_ids, st.integers(0, 17), st.characters(codec="utf-8"))
def test_any_one_character_change_of_a_citizen_id_is_rejected(number: str, at: int, char: str) -> None:
    assume(char.upper() != number[at])  # 'x' for 'X' is the same number
    assert refused(number[:at] + char + number[at + 1:], "citizen")


@examples(100)
@given(citizen_ids, st.integers(0, 16))
def test_swapping_two_adjacent_digits_of_a_citizen_id_is_rejected(number: str, at: int) -> None:
    assume(number[at] != number[at + 1])
    assert refused(number[:at] + number[at + 1] + number[at] + number[at + 2:], "citizen")


@examples(100)
@given(credit_codes)
def test_generated_credit_codes_are_accepted_everywhere(code: str) -> None:
    assert identifiers.validate_credit_code(code) == code
    assert identifiers.validate_credit_code(f"{code[:9]} {code[9:].lower()}") == code
    assert to_credit(code) == code
    assert rows_credit.check(2, [code]) == ({"credit_code": code}, [])


@examples(250)
@given(credit_codes, st.integers(0, 17), st.characters(codec="utf-8"))
def test_any_one_character_change_of_a_credit_code_is_rejected(code: str, at: int, char: str) -> None:
    assume(char.upper() != code[at])
    assert refused(code[:at] + char + code[at + 1:], "credit")


@examples(100)
@given(credit_codes, st.integers(0, 15))
def test_swapping_two_adjacent_characters_of_a_credit_code_is_rejected(code: str, at: int) -> None:
    assume(code[at] != code[at + 1])
    assert refused(code[:at] + code[at + 1] + code[at] + code[at + 2:], "credit")


digit_like = st.text(st.sampled_from("0123456789Xx -²١１\u00a0\u200b"), max_size=22)


@pytest.mark.parametrize("kind", ["citizen", "credit"])
@examples(200)
@given(st.one_of(st.text(max_size=24), digit_like,
                 citizen_ids.map(lambda n: n[:-1]), citizen_ids.map(lambda n: n + "0")))
def test_arbitrary_text_only_ever_raises_the_validators_error(kind: str, text: str) -> None:
    core = identifiers.validate_citizen_id if kind == "citizen" else identifiers.validate_credit_code
    try:
        normal = core(text)
    except Invalid:
        assert refused(text, kind)
        return
    assert len(normal) == 18 and normal.isascii()  # whatever passes is a clean 18-character number
    rows = rows_citizen if kind == "citizen" else rows_credit
    assert rows.check(2, [normal]) == ({rows.names[0]: normal}, [])  # and loads in its normal form


@examples(100)
@given(st.text(max_size=30))
def test_masking_never_crashes_and_hides_the_middle(text: str) -> None:
    masked = identifiers.mask_citizen_id(text)
    assert len(masked) == len(text)
    if len(text) == 18:
        assert masked[4:16] == "*" * 12
