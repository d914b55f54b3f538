"""GB/T 30428.2 (数字化城市管理信息系统 第2部分：管理部件和事件): the classes of city-management
components (部件) and events (事件), and the component identifier (部件标识码).

The classes are data, shipped as `data/gbt30428.toml` (where it comes from, and which parts are
ours rather than the standard's, is written at its top); this module reads it once and answers
lookups. A class code is the 2-digit major class (大类) followed by the 2-digit minor class (小类).
Components and events are numbered separately, so most codes exist twice (component 0101 is
上水井盖, event 0101 is 私搭乱建): a code means something only together with its kind, which is
why cases store `kind` beside `gbt_code`.

The component identifier. Each surveyed component (a manhole cover, a street light) carries 16
digits:

| digits | part | source |
|---|---|---|
| 1-6   | county-level division (县级及县级以上行政区划代码) | GB/T 2260, e.g. 220202 昌邑区 |
| 7-8   | major class (大类代码)                          | this table, e.g. 01 公用设施 |
| 9-10  | minor class (小类代码)                          | this table, e.g. 01 上水井盖 |
| 11-16 | serial number (流水号)                           | 000001-999999 inside county and class |
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal, cast

from cityos.core.errors import Invalid

Kind = Literal["component", "event"]
KINDS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {"component": ("部件", "component"), "event": ("事件", "event")}
)
DATA_FILE = "gbt30428.toml"

# The parts of a component identifier: (field, width, Chinese name); the widths give the limits.
ID_PARTS: tuple[tuple[str, int, str], ...] = (
    ("county", 6, "行政区划代码"),
    ("major", 2, "大类代码"),
    ("minor", 2, "小类代码"),
    ("serial", 6, "流水号"),
)
ID_LENGTH = sum(width for _f, width, _zh in ID_PARTS)  # 16
MAX_SERIAL = 10 ** ID_PARTS[-1][1] - 1
# GB/T 2260 province-level codes (省级行政区划代码), the first two digits of every division code.
PROVINCES = frozenset({
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65",
    "71", "81", "82",
})
_CODE = re.compile(r"[0-9]{4}")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would let full-width digits through
_SLUG = re.compile(r"[a-z][a-z_]*")


@dataclass(frozen=True)
class CodeClass:
    """One minor class (小类) of GB/T 30428.2 with its major class (大类) and our dispatch hints."""

    code: str  # major + minor, 4 digits
    name: str
    name_en: str
    kind: Kind
    major: str
    major_name: str
    responsible: str  # role slug of the unit that usually handles it (责任单位), a hint, not the standard
    limit_hours: float | None  # default handling limit in working hours (处置时限), where a source gives one
    major_name_en: str = ""

    @property
    def minor(self) -> str:
        """The 2-digit minor class code (小类代码)."""
        return self.code[2:]


@dataclass(frozen=True)
class ComponentId:
    """A parsed component identifier (部件标识码)."""

    county: str
    major: str
    minor: str
    serial: int
    cls: CodeClass

    def __str__(self) -> str:
        return f"{self.county}{self.major}{self.minor}{self.serial:06d}"


@dataclass(frozen=True)
class _Table:
    classes: tuple[CodeClass, ...]
    by_key: Mapping[tuple[str, str], CodeClass]  # (kind, code) -> class
    majors: Mapping[str, tuple[tuple[str, str, str], ...]]  # kind -> ((code, name, name_en), ...)


@functools.cache
def _table() -> _Table:
    """Read and check the shipped table once; a broken file is a bug, so it fails loudly."""
    raw = tomllib.loads(resources.files("cityos.cases").joinpath("data", DATA_FILE).read_text("utf-8"))
    return _build(raw)


def _build(raw: Mapping[str, Any]) -> _Table:
    """Check the raw table (codes, majors, slugs, limits) and index it by (kind, code)."""
    majors: dict[tuple[str, str], tuple[str, str]] = {}
    for m in raw["majors"]:
        key = (m["kind"], m["code"])
        if m["kind"] not in KINDS or not re.fullmatch(r"[0-9]{2}", m["code"]) or key in majors:
            raise ValueError(f"{DATA_FILE}: bad or repeated major {key}")
        majors[key] = (m["name"], m["name_en"])
    by_key: dict[tuple[str, str], CodeClass] = {}
    for c in raw["classes"]:
        kind, code = c["kind"], c["code"]
        major = (kind, code[:2])
        if not _CODE.fullmatch(code) or major not in majors or (kind, code) in by_key:
            raise ValueError(f"{DATA_FILE}: bad, orphan or repeated class {kind} {code}")
        if not _SLUG.fullmatch(c["responsible"]):
            raise ValueError(f"{DATA_FILE}: responsible of {kind} {code} is not a slug")
        limit = c.get("limit_hours")
        if limit is not None and not (isinstance(limit, int | float) and limit > 0):
            raise ValueError(f"{DATA_FILE}: limit_hours of {kind} {code} must be a positive number")
        by_key[(kind, code)] = CodeClass(
            code=code, name=c["name"], name_en=c["name_en"], kind=cast(Kind, kind), major=code[:2],
            major_name=majors[major][0], responsible=c["responsible"],
            limit_hours=None if limit is None else float(limit), major_name_en=majors[major][1],
        )
    empty = [m for m in majors if not any(k[0] == m[0] and k[1][:2] == m[1] for k in by_key)]
    if empty:
        raise ValueError(f"{DATA_FILE}: majors without minor classes: {empty}")
    ordered = tuple(sorted(by_key.values(), key=lambda c: (list(KINDS).index(c.kind), c.code)))
    return _Table(
        classes=ordered,
        by_key=MappingProxyType(by_key),
        majors=MappingProxyType({
            kind: tuple((code, name, name_en) for (k, code), (name, name_en) in sorted(majors.items())
                        if k == kind)
            for kind in KINDS
        }),
    )


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise Invalid("kind", "component or event / 应为部件（component）或事件（event）")
    return cast(Kind, kind)


def classes(kind: str | None = None) -> list[CodeClass]:
    """Every class of the table, components first, each in code order; or those of one kind."""
    wanted = None if kind is None else _kind(kind)
    return [c for c in _table().classes if wanted is None or c.kind == wanted]


def majors(kind: str) -> list[tuple[str, str, str]]:
    """The major classes (大类) of one kind, as (code, name, name_en), in code order."""
    return list(_table().majors[_kind(kind)])


def get(code: str, kind: str | None = None) -> CodeClass:
    """The class of a 4-digit code (大类 + 小类). Components and events share codes, so without a
    kind the code must belong to one of them only."""
    wanted = None if kind is None else _kind(kind)
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise Invalid("gbt_code", "4 digits: major class + minor class "
                                  "/ 应为 4 位数字（大类代码 + 小类代码）")
    table = _table().by_key
    found = [table[(k, code)] for k in KINDS if wanted in (None, k) and (k, code) in table]
    if not found:
        what_en, what_zh = ("class", "") if wanted is None else (f"{wanted} class", KINDS[wanted][0])
        raise Invalid("gbt_code", f"GB/T 30428.2 has no {what_en} {code} "
                                  f"/ GB/T 30428.2 没有编码为 {code} 的{what_zh}小类")
    if len(found) > 1:
        raise Invalid("gbt_code", f"{code} is both a component and an event class: say which kind "
                                  f"/ 部件和事件都有编码 {code}，请指明类别")
    return found[0]


def _check_county(county: object) -> str:
    if not isinstance(county, str) or len(county) != 6 or not _DIGITS.fullmatch(county):
        raise Invalid("component_id", "the division code (digits 1-6) must be 6 digits (GB/T 2260) "
                                      "/ 行政区划代码（第 1-6 位）应为 6 位数字（GB/T 2260）")
    if county[:2] not in PROVINCES:
        raise Invalid("component_id", f"division code {county} does not start with a province code "
                                      f"(GB/T 2260) / 行政区划代码 {county} 的前两位不是省级代码")
    return county


def _check_class(code: str) -> CodeClass:
    """The component class of a code, or an error that says what the code is instead."""
    if not _CODE.fullmatch(code):
        raise Invalid("component_id", "the class code (digits 7-10) must be 4 digits "
                                      "/ 部件类别代码（第 7-10 位）应为 4 位数字")
    table = _table().by_key
    if (cls := table.get(("component", code))) is not None:
        return cls
    if ("event", code) in table:
        raise Invalid("component_id", f"{code} is an event class, not a component class "
                                      f"/ {code} 是事件小类，不是部件小类")
    raise Invalid("component_id", f"{code} is not a GB/T 30428.2 component class "
                                  f"/ {code} 不是 GB/T 30428.2 的部件小类")


def _check_serial(serial: object) -> int:
    if isinstance(serial, bool) or not isinstance(serial, int) or not 1 <= serial <= MAX_SERIAL:
        raise Invalid("component_id", f"the serial number (digits 11-16) must be 1-{MAX_SERIAL} "
                                      f"/ 流水号（第 11-16 位）应为 1-{MAX_SERIAL}")
    return serial


def component_id(county: str, code: str, serial: int) -> str:
    """The 16-digit component identifier (部件标识码): division 6 + class 4 + serial 6 digits."""
    if not isinstance(code, str):
        raise Invalid("component_id", "the class code must be text / 部件类别代码应为字符串")
    cls = _check_class(code)
    return f"{_check_county(county)}{cls.code}{_check_serial(serial):06d}"


def parse_component_id(value: str) -> ComponentId:
    """Split and check a component identifier (部件标识码); surrounding blanks are ignored."""
    text = value.strip() if isinstance(value, str) else ""
    if len(text) != ID_LENGTH:
        raise Invalid("component_id", f"must be {ID_LENGTH} digits / 部件标识码应为 {ID_LENGTH} 位数字")
    if not _DIGITS.fullmatch(text):
        raise Invalid("component_id", f"must be {ID_LENGTH} digits 0-9 / 部件标识码只能包含数字 0-9")
    county = _check_county(text[:6])
    cls = _check_class(text[6:10])
    serial = _check_serial(int(text[10:]))
    return ComponentId(county=county, major=cls.major, minor=cls.minor, serial=serial, cls=cls)
