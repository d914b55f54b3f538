"""Identifier checks (证件号码校验) through python-stdnum, with messages that say what is wrong.

- citizen ID numbers, GB 11643-1999 (居民身份证号码)
- unified social credit codes, GB 32100-2015 (统一社会信用代码)
"""

from __future__ import annotations

import datetime as dt
import functools

from stdnum import exceptions as stdnum_exc
from stdnum.cn import ric, uscc

from cityos.core.errors import Invalid


def _reason(exc: Exception, kind: str) -> str:
    """Turn a stdnum exception into a bilingual sentence a clerk can act on."""
    if isinstance(exc, stdnum_exc.InvalidLength):
        return f"{kind}: wrong length / 长度不正确"
    if isinstance(exc, stdnum_exc.InvalidChecksum):
        return f"{kind}: check digit does not match / 校验码错误"
    if isinstance(exc, stdnum_exc.InvalidComponent):
        return f"{kind}: a component is impossible (region, date or code) / 组成部分无效"
    if isinstance(exc, stdnum_exc.InvalidFormat):
        return f"{kind}: characters not allowed here / 格式不正确"
    return f"{kind}: invalid / 无效"


def validate_citizen_id(value: str, field: str = "id_number") -> str:
    """Return the normalized 18-character ID number or raise Invalid naming the fault."""
    compact = ric.compact(value or "").upper()
    if not compact:
        raise Invalid(field, "ID number is empty / 身份证号码为空")
    if len(compact) != 18:
        raise Invalid(field, f"ID number must have 18 characters, got {len(compact)} / 应为18位")
    if not compact[:17].isdigit():
        raise Invalid(field, "the first 17 characters must be digits / 前17位必须为数字")
    try:
        birth = dt.date(int(compact[6:10]), int(compact[10:12]), int(compact[12:14]))
    except ValueError:
        raise Invalid(field, "birth date is not a real date / 出生日期无效") from None
    if birth > dt.datetime.now(dt.UTC).date():
        raise Invalid(field, "birth date is in the future / 出生日期晚于今天")
    try:
        return str(ric.validate(compact))
    except stdnum_exc.ValidationError as exc:
        raise Invalid(field, _reason(exc, "ID number")) from None


@functools.lru_cache(maxsize=1 << 16)
def valid_credit_code(value: str) -> str | None:
    """The normalized code if `value` is a valid credit code, else None. Remembered: a column of
    employers, operators or licence issuers repeats a few thousand codes over millions of rows."""
    try:
        return str(uscc.validate(value))
    except stdnum_exc.ValidationError:
        return None


def validate_credit_code(value: str, field: str = "credit_code") -> str:
    """Return the normalized 18-character unified social credit code or raise Invalid."""
    valid = valid_credit_code(value) if value else None
    if valid is not None:
        return valid
    compact = uscc.compact(value or "")
    if len(compact) != 18:
        raise Invalid(field, f"credit code must have 18 characters, got {len(compact)} / 应为18位")
    try:
        return str(uscc.validate(compact))
    except stdnum_exc.ValidationError as exc:
        raise Invalid(field, _reason(exc, "credit code")) from None


def citizen_id_with_check(first17: str) -> str:
    """Complete 17 digits with the GB 11643 check character (used by the demo generator)."""
    # stdnum's calc_check_digit takes the full 18 characters and ignores the last.
    return first17 + str(ric.calc_check_digit(first17 + "0"))


def credit_code_with_check(first17: str) -> str:
    """Complete 17 characters with the GB 32100 check character."""
    return first17 + str(uscc.calc_check_digit(first17))


def mask_citizen_id(value: str) -> str:
    """Show only region and last digit, e.g. 220202********123X → 2202************3X."""
    return value[:4] + "*" * 12 + value[-2:] if len(value) == 18 else "*" * len(value)
