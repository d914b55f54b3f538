"""GB/T 30428.2 classes of components (部件) and events (事件), and the component identifier
(部件标识码). Pure: no database."""

from __future__ import annotations

import re
import tomllib
from importlib import resources

import pytest

from cityos.cases import gbt30428
from cityos.cases.gbt30428 import ComponentId, component_id, get, parse_component_id
from cityos.core.errors import Invalid

COMPONENT_MAJORS = ["公用设施", "道路交通", "市容环境", "园林绿化", "房屋土地", "其他设施"]
EVENT_MAJORS = ["市容环境", "宣传广告", "施工管理", "突发事件", "街面秩序"]


def reason(exc: pytest.ExceptionInfo[Invalid]) -> str:
    return exc.value.errors[0].reason


def bilingual(text: str) -> bool:
    """The house style of messages: English, " / ", then Chinese."""
    english, sep, chinese = text.partition(" / ")
    return bool(sep and re.search(r"[a-z]", english) and re.search(r"[\u4e00-\u9fff]", chinese))


# -- the table --------------------------------------------------------------------------------


def test_table_loads_once_from_the_package():
    assert gbt30428._table() is gbt30428._table()
    raw = tomllib.loads(resources.files("cityos.cases").joinpath("data", "gbt30428.toml").read_text("utf-8"))
    assert len(gbt30428.classes()) == len(raw["classes"]) > 100


def test_codes_are_four_digits_and_unique_per_kind():
    for kind in ("component", "event"):
        codes = [c.code for c in gbt30428.classes(kind)]
        assert all(re.fullmatch(r"[0-9]{4}", code) for code in codes)
        assert len(codes) == len(set(codes))
        assert codes == sorted(codes)


def test_classes_know_their_major():
    for c in gbt30428.classes():
        assert c.major == c.code[:2] and c.minor == c.code[2:] and c.minor != "00"
        assert (c.major, c.major_name, c.major_name_en) in gbt30428.majors(c.kind)


def test_kinds_and_order():
    every = gbt30428.classes()
    components, events = gbt30428.classes("component"), gbt30428.classes("event")
    assert {c.kind for c in components} == {"component"} and {c.kind for c in events} == {"event"}
    assert every == components + events  # components first
    assert len(components) == 85 and len(events) == 37


def test_majors_are_the_standards_and_each_has_minors():
    assert [name for _code, name, _en in gbt30428.majors("component")] == COMPONENT_MAJORS
    assert [name for _code, name, _en in gbt30428.majors("event")] == EVENT_MAJORS
    for kind in ("component", "event"):
        codes = [code for code, _name, _en in gbt30428.majors(kind)]
        assert codes == [f"{i:02d}" for i in range(1, len(codes) + 1)]
        for code in codes:
            assert any(c.major == code for c in gbt30428.classes(kind)), (kind, code)


@pytest.mark.parametrize("kind, major, count", [
    ("component", "01", 38), ("component", "02", 17), ("component", "03", 11),
    ("component", "04", 10), ("component", "05", 3), ("component", "06", 6),
])
def test_component_majors_are_complete(kind, major, count):
    minors = [c.minor for c in gbt30428.classes(kind) if c.major == major]
    assert minors == [f"{i:02d}" for i in range(1, count + 1)]  # no gaps


@pytest.mark.parametrize("kind, code, name", [
    ("component", "0101", "上水井盖"), ("component", "0102", "污水井盖"), ("component", "0103", "雨水井盖"),
    ("component", "0104", "雨水箅子"), ("component", "0105", "电力井盖"), ("component", "0111", "燃气井盖"),
    ("component", "0114", "无主井盖"), ("component", "0118", "路灯"), ("component", "0136", "监控电子眼"),
    ("component", "0201", "停车场"), ("component", "0205", "过街天桥"), ("component", "0210", "交通信号灯"),
    ("component", "0301", "公共厕所"), ("component", "0305", "垃圾箱"), ("component", "0401", "古树名木"),
    ("component", "0402", "行道树"), ("component", "0502", "人防工事"), ("component", "0602", "工地"),
    ("event", "0101", "私搭乱建"), ("event", "0102", "暴露垃圾"), ("event", "0201", "非法小广告"),
    ("event", "0301", "施工扰民"), ("event", "0401", "路面塌陷"), ("event", "0404", "下水道堵塞或破损"),
    ("event", "0501", "无照经营游商"), ("event", "0505", "机动车乱停放"),
])
def test_well_known_codes_have_the_standards_names(kind, code, name):
    assert get(code, kind).name == name


def test_hints_are_slugs_and_limits_are_positive_working_hours():
    for c in gbt30428.classes():
        assert re.fullmatch(r"[a-z][a-z_]*", c.responsible), c
        assert c.name and c.name_en and c.major_name_en
        assert c.limit_hours is None or (c.kind == "event" and 0 < c.limit_hours <= 200)
    assert get("0101", "component").responsible == "water"
    assert get("0505", "event").responsible == "traffic_police"
    assert get("0102", "event").limit_hours == 4.0
    assert get("0401", "event").limit_hours is None  # no source gives one


def test_classes_returns_a_fresh_list():
    gbt30428.classes().clear()
    assert gbt30428.classes()


def test_broken_table_fails_loudly():
    good = {"majors": [{"kind": "event", "code": "01", "name": "市容环境", "name_en": "x"}],
            "classes": [{"kind": "event", "code": "0101", "name": "私搭乱建", "name_en": "x",
                         "responsible": "enforcement"}]}
    assert len(gbt30428._build(good).classes) == 1
    repeated = {**good, "classes": good["classes"] * 2}
    orphan = {**good, "classes": [{**good["classes"][0], "code": "0201"}]}
    empty = {**good, "majors": [*good["majors"], {**good["majors"][0], "code": "02"}]}
    slug = {**good, "classes": [{**good["classes"][0], "responsible": "City Guards"}]}
    limit = {**good, "classes": [{**good["classes"][0], "limit_hours": 0}]}
    for raw in (repeated, orphan, empty, slug, limit):
        with pytest.raises(ValueError):
            gbt30428._build(raw)


# -- lookups ----------------------------------------------------------------------------------


def test_get_by_kind_and_by_unique_code():
    assert get("0101", "component").name == "上水井盖"
    assert get("0101", "event").name == "私搭乱建"
    assert get("0138").kind == "component"  # no event 0138
    assert get("0513").kind == "event"  # no component 0513


@pytest.mark.parametrize("args, field, says", [
    (("0101",), "gbt_code", "both a component and an event"),
    (("0199",), "gbt_code", "no class 0199"),
    (("0199", "component"), "gbt_code", "no component class 0199"),
    (("0138", "event"), "gbt_code", "no event class 0138"),
    (("101",), "gbt_code", "4 digits"),
    (("01011",), "gbt_code", "4 digits"),
    (("01a1",), "gbt_code", "4 digits"),
    (("０１０１",), "gbt_code", "4 digits"),  # full-width digits
    (("0101", "thing"), "kind", "component or event"),
])
def test_get_errors(args, field, says):
    with pytest.raises(Invalid) as exc:
        get(*args)
    assert exc.value.errors[0].field == field
    assert says in reason(exc) and bilingual(reason(exc))


def test_unknown_kind_is_refused_everywhere():
    for call in (lambda: gbt30428.classes("part"), lambda: gbt30428.majors("part")):
        with pytest.raises(Invalid) as exc:
            call()
        assert exc.value.errors[0].field == "kind"


# -- component identifiers (部件标识码) ---------------------------------------------------------


def test_component_id_round_trip():
    value = component_id("220202", "0101", 1)
    assert value == "2202020101000001" and len(value) == gbt30428.ID_LENGTH == 16
    parsed = parse_component_id(value)
    assert parsed == ComponentId("220202", "01", "01", 1, get("0101", "component"))
    assert str(parsed) == value
    assert parsed.cls.name == "上水井盖"


def test_public_example_and_edges():
    # Suzhou's 姑苏区 (320508), a 上水井盖, serial 1: an identifier published by a city system.
    parsed = parse_component_id("3205080101000001")
    assert (parsed.county, parsed.cls.name, parsed.serial) == ("320508", "上水井盖", 1)
    assert parse_component_id(" 2202000606999999\n").serial == 999_999  # city level, last serial
    assert component_id("820001", "0217", 999_999) == "8200010217999999"  # 澳门 prefix 82
    assert str(parse_component_id("1101010110000042")) == "1101010110000042"


@pytest.mark.parametrize("value, says", [
    ("220202010100000", "16 digits"),  # 15
    ("22020201010000011", "16 digits"),  # 17
    ("", "16 digits"),
    ("22020201O1000001", "digits 0-9"),  # a letter O
    ("２２０２０２０１０１０００００１", "digits 0-9"),  # full-width
    ("-220202010100001", "digits 0-9"),
    ("9902020101000001", "province"),
    ("0002020101000001", "province"),
    ("2202020199000001", "not a GB/T 30428.2 component class"),
    ("2202020701000001", "not a GB/T 30428.2 component class"),  # no major 07
    ("2202020513000001", "event class"),  # 0513 is only an event
    ("2202020101000000", "serial number"),
])
def test_parse_component_id_failures(value, says):
    with pytest.raises(Invalid) as exc:
        parse_component_id(value)
    assert exc.value.errors[0].field == "component_id"
    assert says in reason(exc) and bilingual(reason(exc))


@pytest.mark.parametrize("county, code, serial, says", [
    ("22020", "0101", 1, "6 digits"),
    ("2202021", "0101", 1, "6 digits"),
    ("22020a", "0101", 1, "6 digits"),
    ("990202", "0101", 1, "province"),
    ("220202", "101", 1, "4 digits"),
    ("220202", "0199", 1, "component class"),
    ("220202", "0513", 1, "event class"),
    ("220202", "0101", 0, "serial number"),
    ("220202", "0101", -5, "serial number"),
    ("220202", "0101", 1_000_000, "serial number"),
    ("220202", "0101", True, "serial number"),
    ("220202", "0101", "1", "serial number"),
])
def test_component_id_failures(county, code, serial, says):
    with pytest.raises(Invalid) as exc:
        component_id(county, code, serial)
    assert exc.value.errors[0].field == "component_id"
    assert says in reason(exc) and bilingual(reason(exc))


def test_every_component_class_makes_an_identifier():
    for c in gbt30428.classes("component"):
        assert parse_component_id(component_id("220202", c.code, 7)).cls == c
