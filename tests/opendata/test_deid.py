"""De-identification rules (脱敏): parsing and its errors, every action, findings, k-anonymity."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from cityos.core.errors import Invalid
from cityos.core.identifiers import citizen_id_with_check
from cityos.opendata.deid import (
    ACTIONS,
    GENERALIZE,
    KResult,
    OutField,
    Rule,
    SourceField,
    compile_rules,
    kanon,
    kanon_counts,
    looks_like_id,
    output_fields,
    parse_rules,
    uncovered,
)

SH = dt.timezone(dt.timedelta(hours=8))
TODAY = dt.date(2024, 6, 1)
ID = "220202199001011234"  # valid check digit; born 1990-01-01
FIELDS = [
    SourceField("id_number", "身份证号", "citizen_id", "sensitive"),
    SourceField("name", "姓名", "string", "sensitive"),
    SourceField("phone", "电话", "phone", "sensitive"),
    SourceField("plate", "车牌", "string"),
    SourceField("address", "地址", "string"),
    SourceField("birth", "出生日期", "date"),
    SourceField("seen_at", "时间", "datetime"),
    SourceField("age", "年龄", "integer"),
    SourceField("income", "收入", "number"),
    SourceField("lon", "经度", "number"),
    SourceField("credit_code", "信用代码", "credit_code"),
    SourceField("insured", "参保", "boolean"),
]
TYPES = {f.name: f.type for f in FIELDS}


def one(field: str, value: Any, action: str = "mask", **params: Any) -> Any:
    """Apply a single parsed rule to a single value."""
    rules = parse_rules([{"field": field, "action": action, **params}], FIELDS)
    row = {f.name: None for f in FIELDS} | {field: value}
    out = compile_rules(FIELDS, rules, today=TODAY)(row)
    return out[params.get("name", field)]


def errors(raw: list[dict[str, Any]]) -> dict[str, str]:
    with pytest.raises(Invalid) as err:
        parse_rules(raw, FIELDS)
    return {e.field: e.reason for e in err.value.errors}


# -- mask ------------------------------------------------------------------------------------------


def test_actions_are_bilingual():
    assert set(ACTIONS) == {"mask", "generalize", "round", "suppress"}
    assert ACTIONS["mask"] == ("掩码", "Mask")


def test_mask_defaults_follow_the_type():
    assert one("id_number", ID) == "220*************34"
    assert len(one("id_number", ID)) == 18
    assert one("phone", "13812345678") == "138****5678"
    assert one("credit_code", "91220200MA0Y123456") == "9****************6"  # generic (1, 1)


def test_mask_kinds():
    assert one("name", "张三丰", kind="name") == "张**"
    assert one("name", "张三", kind="name") == "张*"
    assert one("name", "张", kind="name") == "*"  # keeping all would show it all
    assert one("plate", "吉B12345", kind="plate") == "吉B*****"
    assert one("address", "abcdef", kind="generic") == "a****f"
    assert one("name", ID, kind="id_number") == "220*************34"
    assert one("age", 1234) == "1**4"  # an integer is masked as its digits


def test_mask_overrides_and_short_values():
    assert one("phone", "13812345678", keep_start=0, keep_end=2, char="#") == "#########78"
    assert one("phone", "1381", kind="phone") == "****"  # shorter than 3 + 4
    assert one("address", "ab") == "**"  # generic keeps 1 + 1: nothing would be hidden
    assert one("address", "") == ""
    assert one("phone", None) is None


# -- generalize ------------------------------------------------------------------------------------


def test_generalize_dates():
    assert one("birth", dt.date(1990, 5, 3), "generalize", to="year") == 1990
    assert one("birth", dt.date(1990, 5, 3), "generalize", to="month") == "1990-05"
    # 2023-12-31 17:00 UTC is already 2024-01-01 in the city
    late = dt.datetime(2023, 12, 31, 17, 0, tzinfo=dt.UTC)
    assert one("seen_at", late, "generalize", to="year") == 2024
    assert one("seen_at", late, "generalize", to="month") == "2024-01"
    assert one("seen_at", late.replace(tzinfo=None), "generalize", to="year") == 2024  # naive = UTC
    assert one("seen_at", dt.datetime(2024, 3, 1, 9, tzinfo=SH), "generalize", to="month") == "2024-03"


def band(born: Any, **params: Any) -> Any:
    return one("birth", born, "generalize", to="age_band", **params)


def test_generalize_age_band():
    assert band(dt.date(1990, 6, 1)) == "30-39"  # 34 today
    assert band(dt.date(1994, 6, 1)) == "30-39"  # 30 today, birthday today
    assert band(dt.date(1994, 6, 2)) == "20-29"  # 29 until tomorrow
    assert band(dt.date(1930, 1, 1)) == "80+"
    assert band(dt.date(2020, 1, 1)) == "0-9"
    assert band(dt.date(1990, 6, 1), width=5) == "30-34"
    assert band(dt.date(1950, 1, 1), top=65) == "65+"
    assert band(dt.date(1962, 1, 1), top=65) == "60-64"
    assert band(dt.date(1962, 1, 1), width=10, top=65) == "60-64"  # the band stops at top
    assert band(dt.date(2030, 1, 1)) is None  # not born yet: not a birth date
    assert one("id_number", ID, "generalize", to="age_band") == "30-39"
    # born 1994-06-02 in the city (17:00 UTC the day before): 29 today, not 30
    assert one("seen_at", dt.datetime(1994, 6, 1, 17, tzinfo=dt.UTC), "generalize", to="age_band") == "20-29"
    assert one("id_number", "220202199013011234", "generalize", to="age_band") is None  # month 13


def test_generalize_age_band_defaults_to_today_in_the_city():
    rules = parse_rules([{"field": "birth", "action": "generalize", "to": "age_band"}], FIELDS)
    out = compile_rules(FIELDS, rules)({f.name: None for f in FIELDS} | {"birth": dt.date(1950, 1, 1)})
    assert out["birth"] == "70-79"  # 74 at least until 2030


def test_generalize_citizen_id():
    assert one("id_number", ID, "generalize", to="region") == "220202"
    assert one("id_number", ID, "generalize", to="birth_year") == 1990


@pytest.mark.parametrize(("address", "expected"), [
    ("吉林省吉林市昌邑区延安街道民主社区5栋2单元301", "吉林省吉林市昌邑区延安街道民主社区"),
    ("吉林市船营区北山街道某某社区居委会", "吉林市船营区北山街道某某社区"),
    ("永吉县岔路河镇王家村三组18号", "永吉县岔路河镇王家村"),
    ("科尔沁右翼前旗某某嘎查", "科尔沁右翼前旗某某嘎查"),
    ("吉林市丰满区江南乡88号", "吉林市丰满区江南乡"),
    ("吉林市昌邑区延安路88号", "吉林市昌邑区"),
    ("吉林市延安路88号", "吉林市"),
    ("延安路88号", None),  # no admin unit: any cut might keep the door number
])
def test_generalize_community(address: str, expected: str | None):
    assert one("address", address, "generalize", to="community") == expected


def test_generalize_prefix_and_range():
    assert one("address", "吉林市昌邑区延安路", "generalize", to="prefix", length=3) == "吉林市"
    assert one("age", 37, "generalize", to="range", width=10) == "30-39"
    assert one("age", 40, "generalize", to="range", width=10) == "40-49"
    assert one("age", -3, "generalize", to="range", width=10) == "-10--1"
    assert one("age", 120, "generalize", to="range", width=10, top=100) == "100+"
    assert one("income", 37.5, "generalize", to="range", width=10) == "30-40"  # half-open
    assert one("income", 0.35, "generalize", to="range", width=0.1) == "0.3-0.4"
    assert one("income", 3000.0, "generalize", to="range", width=1000) == "3000-4000"


# -- round, suppress -------------------------------------------------------------------------------


def test_round():
    assert one("lon", 126.5532789, "round") == 126.553  # decimals 3 by default
    assert one("lon", 126.5532789, "round", decimals=1) == 126.6
    assert one("lon", 126.5532789, "round", decimals=0) == 127.0
    assert one("income", 1234.5, "round", step=100) == 1200
    assert one("income", 0.34, "round", step=0.1) == 0.3  # not 0.30000000000000004
    assert one("age", 1249, "round", step=100) == 1200
    assert one("age", 150, "round", step=100) == 200  # integers round half up, exactly
    assert one("age", 10**20 + 51, "round", step=100) == 10**20 + 100
    assert one("lon", None, "round") is None


def test_suppress_and_output_fields():
    rules = parse_rules([
        {"field": "id_number", "action": "generalize", "to": "birth_year", "name": "birth_year"},
        {"field": "name", "action": "suppress"},
        {"field": "phone", "action": "mask"},
        {"field": "birth", "action": "generalize", "to": "month"},
        {"field": "income", "action": "round", "step": 100},
        {"field": "age", "action": "round", "step": 5},
    ], FIELDS)
    outs = output_fields(FIELDS, rules)
    assert [o.name for o in outs] == ["birth_year", "phone", "plate", "address", "birth", "seen_at", "age",
                                      "income", "lon", "credit_code", "insured"]
    by = {o.source: o for o in outs}
    assert "name" not in by
    assert by["id_number"] == OutField("birth_year", "身份证号（出生年份）", "integer", "id_number", "generalize")
    assert by["phone"] == OutField("phone", "电话", "string", "phone", "mask")
    assert by["birth"].type == "string" and by["birth"].title == "出生日期（年月）"
    assert by["income"].type == "number" and by["age"].type == "integer"
    assert by["plate"] == OutField("plate", "车牌", "string", "plate", None)
    assert by["insured"].type == "boolean"
    assert {o.type for o in outs} <= {"string", "integer", "number", "date", "datetime", "boolean",
                                       "credit_code"}


def test_output_types_of_every_generalization():
    for to, g in GENERALIZE.items():
        assert g.out in {"string", "integer"}, to
    year = parse_rules([{"field": "birth", "action": "generalize", "to": "year"}], FIELDS)
    assert output_fields(FIELDS, year)[5].type == "integer"


def test_compiled_row_keeps_output_order_and_none():
    rules = parse_rules([{"field": "name", "action": "suppress"}, {"field": "id_number", "action": "mask"}],
                        FIELDS)
    row = {f.name: None for f in FIELDS} | {"id_number": ID, "insured": True, "lon": 126.5}
    out = compile_rules(FIELDS, rules, TODAY)(row)
    assert list(out) == [o.name for o in output_fields(FIELDS, rules)]
    assert out["id_number"] == "220*************34" and out["insured"] is True and out["lon"] == 126.5
    assert out["phone"] is None and "name" not in out


def test_compile_rules_over_10k_rows():
    rng = random.Random(7)
    rules = parse_rules([
        {"field": "id_number", "action": "generalize", "to": "age_band"},
        {"field": "name", "action": "mask", "kind": "name"},
        {"field": "phone", "action": "suppress"},
        {"field": "address", "action": "generalize", "to": "community"},
        {"field": "lon", "action": "round"},
    ], FIELDS)
    transform = compile_rules(FIELDS, rules, TODAY)
    rows = [{
        "id_number": citizen_id_with_check(f"220202{rng.randint(1940, 2020)}0101{rng.randint(0, 999):03d}"),
        "name": rng.choice(["张三", "李四光", None]), "phone": "13812345678", "plate": None,
        "address": f"昌邑区民主社区{i}号", "birth": None, "seen_at": None, "age": i, "income": None,
        "lon": 126.0 + rng.random(), "credit_code": None, "insured": bool(i % 2),
    } for i in range(10_000)]
    out = [transform(r) for r in rows]
    assert len(out) == 10_000
    assert all(o["address"] == "昌邑区民主社区" for o in out)
    assert all(o["name"] in ("张*", "李**", None) for o in out)
    assert {o["id_number"] for o in out} <= {f"{b}-{b + 9}" for b in range(0, 80, 10)} | {"80+"}
    assert all(len(str(o["lon"]).split(".")[1]) <= 3 for o in out)


# -- parse errors ----------------------------------------------------------------------------------


def test_parse_returns_rules():
    rules = parse_rules([{"field": "phone", "action": "mask", "keep_end": 2}], FIELDS)
    assert rules == [Rule("phone", "mask", {"keep_end": 2})]
    assert parse_rules([], FIELDS) == []


@pytest.mark.parametrize(("rule", "path", "says"), [
    ({"field": "nope", "action": "mask"}, "rules[0].field", "无此信息项"),
    ({"action": "mask"}, "rules[0].field", "必填"),
    ({"field": "phone", "action": "shred"}, "rules[0].action", "未知脱敏方式"),
    ({"field": "phone"}, "rules[0].action", "必填"),
    ({"field": "phone", "action": "mask", "kind": "passport"}, "rules[0].kind", "未知掩码类型"),
    ({"field": "phone", "action": "mask", "keep_start": -1}, "rules[0].keep_start", "不能小于0"),
    ({"field": "phone", "action": "mask", "keep_end": "2"}, "rules[0].keep_end", "不是整数"),
    ({"field": "phone", "action": "mask", "keep_end": True}, "rules[0].keep_end", "不是整数"),
    ({"field": "phone", "action": "mask", "char": "**"}, "rules[0].char", "单个字符"),
    ({"field": "phone", "action": "mask", "to": "year"}, "rules[0].to", "不是该脱敏方式的参数"),
    ({"field": "birth", "action": "mask"}, "rules[0].action", "不能掩码"),
    ({"field": "insured", "action": "mask"}, "rules[0].action", "不能掩码"),
    ({"field": "birth", "action": "generalize"}, "rules[0].to", "必填"),
    ({"field": "birth", "action": "generalize", "to": "decade"}, "rules[0].to", "未知泛化方式"),
    ({"field": "birth", "action": "generalize", "to": "community"}, "rules[0].to", "不能按此方式泛化"),
    ({"field": "address", "action": "generalize", "to": "year"}, "rules[0].to", "不能按此方式泛化"),
    ({"field": "age", "action": "generalize", "to": "region"}, "rules[0].to", "不能按此方式泛化"),
    ({"field": "address", "action": "generalize", "to": "prefix"}, "rules[0].length", "必填"),
    ({"field": "address", "action": "generalize", "to": "prefix", "length": 0}, "rules[0].length", "不能小于1"),
    ({"field": "age", "action": "generalize", "to": "range"}, "rules[0].width", "必填"),
    ({"field": "age", "action": "generalize", "to": "range", "width": 2.5}, "rules[0].width", "不是整数"),
    ({"field": "income", "action": "generalize", "to": "range", "width": -1}, "rules[0].width", "正数"),
    ({"field": "birth", "action": "generalize", "to": "age_band", "width": 2.5}, "rules[0].width", "不是整数"),
    ({"field": "birth", "action": "generalize", "to": "year", "width": 5}, "rules[0].width", "不是该脱敏方式的参数"),
    ({"field": "address", "action": "round"}, "rules[0].action", "该类型不能取整"),
    ({"field": "lon", "action": "round", "decimals": -1}, "rules[0].decimals", "不能小于0"),
    ({"field": "lon", "action": "round", "decimals": 2, "step": 0.5}, "rules[0].step", "二选一"),
    ({"field": "lon", "action": "round", "step": float("nan")}, "rules[0].step", "正数"),
    ({"field": "age", "action": "round"}, "rules[0].step", "整数字段须指定 step"),
    ({"field": "age", "action": "round", "decimals": 1}, "rules[0].step", "整数字段须指定 step"),
    ({"field": "age", "action": "round", "step": 0.5}, "rules[0].step", "不是整数"),
    ({"field": "name", "action": "suppress", "name": "x"}, "rules[0].name", "不是该脱敏方式的参数"),
    ({"field": "phone", "action": "mask", "name": "Phone!"}, "rules[0].name", "名称不合法"),
    ({"field": "phone", "action": "mask", "name": "plate"}, "rules[0].name", "重名"),
])
def test_bad_rules(rule: dict[str, Any], path: str, says: str):
    errs = errors([rule])
    assert path in errs, errs
    assert says in errs[path] and " / " in errs[path]


def test_bad_rules_are_all_reported():
    errs = errors([
        {"field": "phone", "action": "mask"},
        "mask everything",  # type: ignore[list-item]
        {"field": "phone", "action": "suppress"},
        {"field": "birth", "action": "generalize", "to": "decade"},
        {"field": "lon", "action": "round", "decimals": -1, "step": 0},
    ])
    assert set(errs) == {"rules[1]", "rules[2].field", "rules[3].to", "rules[4].decimals", "rules[4].step"}
    assert "同一信息项只能有一条规则" in errs["rules[2].field"]
    with pytest.raises(Invalid) as err:
        parse_rules({"field": "phone"}, FIELDS)  # type: ignore[arg-type]
    assert err.value.errors[0].field == "rules"


def test_error_message_names_the_first_problem():
    with pytest.raises(Invalid, match=r"rules\[0\]\.action: unknown action 'shred'"):
        parse_rules([{"field": "phone", "action": "shred"}], FIELDS)


# -- uncovered -------------------------------------------------------------------------------------


def test_uncovered_finds_typed_and_sensitive_fields():
    fields = [
        SourceField("id_number", "身份证号", "citizen_id"),
        SourceField("mobile", "手机", "phone"),
        SourceField("diagnosis", "诊断", "string", "sensitive"),
        SourceField("street", "街道", "string", "internal"),
    ]
    found = uncovered(fields, [])
    assert [(f.field, f.kind) for f in found] == [("id_number", "citizen_id"), ("mobile", "phone"),
                                                   ("diagnosis", "sensitive")]
    assert found[0].reason == "holds ID numbers (身份证号) with no de-identification rule / 身份证号未脱敏"
    rules = parse_rules([{"field": "id_number", "action": "generalize", "to": "region"},
                         {"field": "mobile", "action": "suppress"},
                         {"field": "diagnosis", "action": "mask"}], fields)
    assert uncovered(fields, rules) == []


def test_uncovered_sniffs_id_and_mobile_numbers_in_string_fields():
    rng = random.Random(1)
    ids = [citizen_id_with_check(f"220202{rng.randint(1950, 2005)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}"
                                 f"{rng.randint(0, 999):03d}") for _ in range(30)]
    fields = [SourceField("note", "备注", "string"), SourceField("contact", "联系方式", "string"),
              SourceField("remark", "说明", "string")]
    sample = [{"note": ids[i] if i < 3 else "无", "contact": "13912345678" if i % 2 else "", "remark": "正常"}
              for i in range(10)]
    found = uncovered(fields, [], sample)
    assert [(f.field, f.kind) for f in found] == [("note", "id_values"), ("contact", "phone_values")]
    assert "3 of 10" in found[0].reason and "身份证号" in found[0].reason
    assert "5 of 5" in found[1].reason  # empty values are not counted
    rules = parse_rules([{"field": "note", "action": "mask", "kind": "id_number"},
                         {"field": "contact", "action": "mask", "kind": "phone"}], fields)
    assert uncovered(fields, rules, sample) == []
    # below 30%, and invalid check digits, raise nothing
    few = [{"note": ids[0] if i == 0 else "无", "contact": "13912345678" if i < 2 else "x", "remark": ""}
           for i in range(10)]
    assert uncovered(fields, [], few) == []
    fake = [{"note": ids[i][:-1] + ("0" if ids[i][-1] != "0" else "1"), "contact": "", "remark": ""}
            for i in range(10)]
    assert uncovered(fields, [], fake) == []


def test_looks_like_id():
    assert looks_like_id("11010519491231002X")
    assert looks_like_id("11010519491231002x")
    assert looks_like_id(ID)
    assert not looks_like_id("110105194912310021")
    assert looks_like_id(citizen_id_with_check("22020219560101002"))  # before 220202 existed: still real
    assert not looks_like_id(citizen_id_with_check("22020219901301002"))  # month 13
    assert not looks_like_id("２２０２０２１９９００１０１１２３４")  # full-width digits
    assert not looks_like_id("ABCDEFGHIJKLMNOPQR")


# -- k-anonymity -----------------------------------------------------------------------------------


def _people() -> list[dict[str, Any]]:
    rows = [{"band": "30-39", "region": "220202", "x": i} for i in range(5)]
    rows += [{"band": "40-49", "region": "220202", "x": i} for i in range(3)]
    rows += [{"band": "80+", "region": "220204", "x": 0}]
    rows += [{"band": "20-29", "region": "220204", "x": i} for i in range(2)]
    return rows


def test_kanon_ok_and_not():
    res = kanon(_people(), ["band", "region"], k=2)
    assert res == KResult(ok=False, k=2, smallest=1, classes=4,
                          offending=[({"band": "80+", "region": "220204"}, 1)], offending_rows=1)
    assert kanon(_people(), ["region"], k=3).ok
    assert kanon(_people(), ["region"], k=3).offending == []
    assert kanon(_people(), ["region"], k=3).smallest == 3
    assert kanon(iter(_people()), ["band"], k=1).ok  # any iterable, read once


def test_kanon_offending_smallest_first_and_limited():
    res = kanon(_people(), ["band", "region"], k=5)
    assert [(c["band"], n) for c, n in res.offending] == [("80+", 1), ("20-29", 2), ("40-49", 3)]
    assert res.offending_rows == 6 and res.classes == 4 and not res.ok
    limited = kanon(_people(), ["band", "region"], k=5, limit=2)
    assert [n for _, n in limited.offending] == [1, 2] and limited.offending_rows == 6
    assert kanon(_people(), ["band"], k=5).offending[0] == ({"band": "80+"}, 1)  # one quasi-identifier


def test_kanon_edge_cases():
    empty = kanon([], ["band"], k=5)
    assert empty.ok and empty.smallest == 0 and empty.classes == 0 and empty.offending_rows == 0
    assert kanon(_people(), [], k=11).ok and not kanon(_people(), [], k=12).ok  # one class of all rows
    nones = kanon([{"band": None}, {"band": None}], ["band"], k=2)
    assert nones.ok and nones.classes == 1
    with pytest.raises(Invalid) as err:
        kanon(_people(), ["age"], k=2)
    assert err.value.errors[0].field == "quasi_identifiers"
    with pytest.raises(Invalid) as err:
        kanon(_people(), ["band"], k=0)
    assert err.value.errors[0].field == "k"


def test_kanon_after_compile():
    rules = parse_rules([{"field": "id_number", "action": "generalize", "to": "age_band"},
                         {"field": "name", "action": "suppress"}], FIELDS)
    transform = compile_rules(FIELDS, rules, TODAY)
    base = {f.name: None for f in FIELDS}
    rows = (transform(base | {"id_number": citizen_id_with_check(f"22020219{y}0101001")})
            for y in (90, 75, 91, 50))
    res = kanon(rows, ["id_number"], k=2)
    assert not res.ok and res.offending == [({"id_number": "40-49"}, 1), ({"id_number": "70-79"}, 1)]


def test_kanon_counts_from_counted_classes():
    from collections import Counter

    counts = Counter({("30-39", "220202"): 5, ("80+", "220204"): 1, ("20-29", "220204"): 2})
    res = kanon_counts(counts, ["band", "region"], k=2)
    assert res == kanon(_people()[:5] + _people()[8:], ["band", "region"], k=2)
    assert res.offending == [({"band": "80+", "region": "220204"}, 1)] and res.classes == 3
    with pytest.raises(Invalid):
        kanon_counts(counts, ["band", "region"], k=True)
