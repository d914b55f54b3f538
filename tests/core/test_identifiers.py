"""GB 11643 ID numbers and GB 32100 credit codes, through python-stdnum, with clear reasons."""

from __future__ import annotations

import pytest

from cityos.core.errors import Invalid
from cityos.core.identifiers import (
    citizen_id_with_check,
    credit_code_with_check,
    mask_citizen_id,
    validate_citizen_id,
    validate_credit_code,
)


def test_valid_id_number_normalized():
    good = citizen_id_with_check("22020219900307002")
    assert validate_citizen_id(" " + good.lower() + " ") == good.upper()


@pytest.mark.parametrize(("value", "needle"), [
    ("", "empty"),
    ("2202021990030700", "18 characters"),
    ("22020219900307002A", "check digit"),
    ("2202021990A307002X", "digits"),
    ("220202199002300021", "birth date"),
    ("220202209901010021", "future"),
])
def test_invalid_id_number_reasons(value, needle):
    with pytest.raises(Invalid) as err:
        validate_citizen_id(value)
    assert err.value.errors[0].field == "id_number"
    assert needle in err.value.errors[0].reason


def test_wrong_check_digit_detected():
    good = citizen_id_with_check("22020219900307002")
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    with pytest.raises(Invalid, match="check digit"):
        validate_citizen_id(bad)


def test_credit_codes():
    good = credit_code_with_check("11220200MB0000001")
    assert validate_credit_code(good) == good
    with pytest.raises(Invalid, match="check digit"):
        validate_credit_code(good[:-1] + ("0" if good[-1] != "0" else "1"))
    with pytest.raises(Invalid, match="18 characters"):
        validate_credit_code("1122")


def test_credit_codes_remembered_stay_right():
    """Valid codes are remembered for the next row; a wrong one is refused every time, and the
    field named is the caller's, not that of the call that filled the memory."""
    good = credit_code_with_check("91220200MA0000007")
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    for _ in range(3):
        assert validate_credit_code(good, "employer") == good
        assert validate_credit_code(" " + good.lower() + " ") == good
        with pytest.raises(Invalid, match="check digit") as err:
            validate_credit_code(bad, "operator")
        assert err.value.errors[0].field == "operator"
    with pytest.raises(Invalid, match="18 characters"):
        validate_credit_code("")


def test_mask():
    assert mask_citizen_id("22020219900307002X") == "2202************2X"
