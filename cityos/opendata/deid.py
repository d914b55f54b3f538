"""De-identification (脱敏) of published datasets, and the k-anonymity (k-匿名) check.

A dataset's rules are data, at most one per source item: `[{"field": "id_number", "action":
"mask"}, {"field": "birth_date", "action": "generalize", "to": "year"}]`. `parse_rules` checks
them against the source items once; `compile_rules` turns them into one closure per column, so
the snapshot of a million rows costs a million dict builds and nothing more. `uncovered` keeps
anything sensitive from being published without a rule, and `kanon` checks the output rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import heapq
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as _field  # `field` is also a name of Rule's
from decimal import Decimal
from operator import itemgetter
from typing import Any

from stdnum.cn import ric

from cityos.core.errors import FieldError, Invalid
from cityos.core.workdays import CITY_TZ

Fn = Callable[[Any], Any]

ACTIONS: dict[str, tuple[str, str]] = {
    "mask": ("掩码", "Mask"), "generalize": ("泛化", "Generalize"), "round": ("取整", "Round"),
    "suppress": ("删除", "Suppress"),
}
# Characters kept at the start and the end; the rest become the mask character, length kept.
MASK_KINDS: dict[str, tuple[int, int]] = {
    "id_number": (3, 2), "phone": (3, 4), "name": (1, 0), "plate": (2, 0), "generic": (1, 1),
}
_MASK_DEFAULT = {"citizen_id": "id_number", "phone": "phone"}
_ROUNDABLE = frozenset({"integer", "number"})
# The source types an action applies to (generalize: see GENERALIZE; suppress: all).
_APPLIES = {"mask": frozenset({"string", "integer", "citizen_id", "credit_code", "phone"}),
            "round": _ROUNDABLE}
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")  # as hub.store names items
_MOBILE = re.compile(r"1[3-9]\d{9}")
# An address is cut after its community (社区/村/居委会/嘎查), else its street or town, else its
# district or county (else its city): what is left names an area of thousands, not a door.
_COMMUNITY = (re.compile(r"社区|村|居委会|嘎查"), re.compile(r"街道|镇|乡"), re.compile(r"区|县|旗"),
              re.compile(r"市"))
# Why an item with no rule may not go out, by its type, else its sensitivity: (kind, reason).
_NO_RULE = "with no de-identification rule"
_UNCOVERED = {
    "citizen_id": ("citizen_id", f"holds ID numbers (身份证号) {_NO_RULE} / 身份证号未脱敏"),
    "phone": ("phone", f"holds phone numbers (电话号码) {_NO_RULE} / 电话号码未脱敏"),
    "sensitive": ("sensitive", f"marked sensitive (敏感) {_NO_RULE} / 敏感信息项未脱敏"),
}
_KEYS = ("field", "action")  # of a raw rule; the rest are params
_SHARE = 0.3  # share of sampled values that look like ID or phone numbers to raise a finding


@dataclass(frozen=True)
class Rule:
    """One de-identification rule (脱敏规则) on one source field; `params` is never mutated."""

    field: str
    action: str
    params: dict[str, Any] = _field(default_factory=dict)


@dataclass(frozen=True)
class SourceField:
    """What the publisher knows of a source item (信息项)."""

    name: str
    title: str
    type: str
    sensitivity: str = "public"


@dataclass(frozen=True)
class OutField:
    """A column of the published table: its output type and where it comes from."""

    name: str
    title: str
    type: str
    source: str
    rule: str | None


@dataclass(frozen=True)
class Finding:
    """A field that would publish personal data as it stands (未脱敏), and why."""

    field: str
    kind: str  # sensitive | citizen_id | phone | id_values | phone_values
    reason: str


@dataclass(frozen=True)
class KResult:
    """The outcome of a k-anonymity check: the smallest class and the combinations below k."""

    ok: bool
    k: int
    smallest: int
    classes: int
    offending: list[tuple[dict[str, Any], int]]
    offending_rows: int


def _int(lo: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "not a whole number / 不是整数"
        return f"must be at least {lo} / 不能小于{lo}" if v < lo else None
    return check


def _positive(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "not a positive number / 应为正数"


# Each parameter's check: None when fine, else the bilingual reason.
_PARAMS: dict[str, Callable[[Any], str | None]] = {
    "kind": lambda v: None if v in MASK_KINDS else f"not one of: {', '.join(MASK_KINDS)} / 未知掩码类型",
    "keep_start": _int(0), "keep_end": _int(0),
    "char": lambda v: None if isinstance(v, str) and len(v) == 1 else "not a single character / 应为单个字符",
    "name": lambda v: None if isinstance(v, str) and _NAME_RE.fullmatch(v)
    else "bad column name: use a-z, 0-9 and _ / 字段名称不合法",
    "width": _positive, "top": _int(1), "length": _int(1), "decimals": _int(0), "step": _positive,
}
_ACTION_PARAMS: dict[str, tuple[str, ...]] = {  # generalize: and those of the chosen generalization
    "mask": ("kind", "keep_start", "keep_end", "char", "name"), "generalize": ("to", "name"),
    "round": ("decimals", "step", "name"), "suppress": (),
}


def _local(v: dt.datetime) -> dt.datetime:
    """A stored datetime in the city's time zone; naive ones are UTC, as storage is."""
    return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).astimezone(CITY_TZ)


def _yyyymmdd(s: str) -> dt.date | None:
    try:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def _age_band(type_: str, p: dict[str, Any], today: dt.date) -> Fn:
    width, top, md = p.get("width", 10), p.get("top", 80), (today.month, today.day)

    def band(born: dt.date | None) -> str | None:
        age = -1 if born is None else today.year - born.year - (md < (born.month, born.day))
        if age < 0:
            return None  # no birth date, or one in the future: nothing to say
        if age >= top:
            return f"{top}+"
        lo = age // width * width
        return f"{lo}-{min(lo + width, top) - 1}"
    # A band per birth day, remembered: a city has some 40,000 birth days and millions of people.
    if type_ == "citizen_id":
        by_digits = functools.lru_cache(maxsize=65_536)(lambda d: band(_yyyymmdd(d)))
        return lambda v: by_digits(v[6:14])
    by_day = functools.lru_cache(maxsize=65_536)(band)
    return (lambda v: by_day(_local(v).date())) if type_ == "datetime" else by_day


def _range(type_: str, p: dict[str, Any], today: dt.date) -> Fn:
    # Integer bands are closed (30-39); number bands half-open [30, 40), written 30-40.
    width, top = p["width"], p.get("top")
    places = max(0, -int(Decimal(str(width)).as_tuple().exponent))
    upper = 1 if type_ == "integer" else 0

    def banded(v: Any) -> str:
        if top is not None and v >= top:
            return f"{_num(top)}+"
        lo = round(math.floor(v / width) * width, places)
        return f"{_num(lo)}-{_num(round(lo + width - upper, places))}"
    return banded


def _community(v: str) -> str | None:
    # No admin unit found: None, as any cut of a bare street address could keep the door number.
    for pattern in _COMMUNITY:
        if m := pattern.search(v):
            return v[: m.end()]
    return None


@dataclass(frozen=True)
class Generalization:
    """One way to coarsen a value (泛化方式): the types it reads, the type it gives, its params."""

    zh: str
    en: str
    sources: frozenset[str]
    out: str
    params: tuple[str, ...]
    build: Callable[[str, dict[str, Any], dt.date], Fn]
    required: tuple[str, ...] = ()


_DATES, _TEXT, _ID = frozenset({"date", "datetime"}), frozenset({"string"}), frozenset({"citizen_id"})
GENERALIZE: dict[str, Generalization] = {
    "year": Generalization("年份", "year", _DATES, "integer", (), lambda t, p, d: (
        (lambda v: _local(v).year) if t == "datetime" else (lambda v: v.year))),
    "month": Generalization("年月", "month", _DATES, "string", (), lambda t, p, d: (
        (lambda v: f"{_local(v):%Y-%m}") if t == "datetime" else (lambda v: f"{v.year:04d}-{v.month:02d}"))),
    "age_band": Generalization("年龄段", "age band", _DATES | _ID, "string", ("width", "top"), _age_band),
    "community": Generalization("社区", "community", _TEXT, "string", (), lambda t, p, d: _community),
    "prefix": Generalization("前缀", "prefix", _TEXT, "string", ("length",),
                             lambda t, p, d: lambda v: v[: p["length"]], ("length",)),
    "range": Generalization("区间", "range", _ROUNDABLE, "string", ("width", "top"), _range, ("width",)),
    "region": Generalization("地区码", "region", _ID, "string", (), lambda t, p, d: lambda v: v[:6]),
    "birth_year": Generalization("出生年份", "birth year", _ID, "integer", (), lambda t, p, d: (
        lambda v: int(v[6:10]) if v[6:10].isdigit() else None)),
}


def _check(i: int, raw: dict[str, Any], f: SourceField, action: str) -> list[FieldError]:
    """What is wrong with the params of one rule whose field and action are known."""
    at, allowed = f"rules[{i}]", _ACTION_PARAMS[action]
    errs: list[FieldError] = []
    if action == "generalize":
        to = raw.get("to")
        g = GENERALIZE.get(to) if isinstance(to, str) else None
        if to is None:
            return [FieldError(f"{at}.to", "required / 必填")]
        if g is None:
            return [FieldError(f"{at}.to", f"not one of: {', '.join(GENERALIZE)} / 未知泛化方式")]
        if f.type not in g.sources:
            fits = ", ".join(k for k, x in GENERALIZE.items() if f.type in x.sources) or "none"
            return [FieldError(f"{at}.to", f"a {f.type} field cannot be generalized to {to} "
                                           f"(possible: {fits}) / 该类型不能按此方式泛化")]
        allowed += g.params
        errs += [FieldError(f"{at}.{k}", "required / 必填") for k in g.required if k not in raw]
    elif action in _APPLIES and f.type not in _APPLIES[action]:
        zh = ACTIONS[action][0]
        return [FieldError(f"{at}.action", f"cannot {action} a {f.type} field / 该类型不能{zh}")]
    for key, value in raw.items():
        if key in _KEYS or (key == "to" and action == "generalize"):
            continue
        if key not in allowed:
            errs.append(FieldError(f"{at}.{key}", f"not a parameter of {action} / 不是该脱敏方式的参数"))
        elif reason := _PARAMS[key](value):
            errs.append(FieldError(f"{at}.{key}", reason))
    if errs:
        return errs
    if action == "round" and "decimals" in raw and "step" in raw:
        errs.append(FieldError(f"{at}.step", "give decimals or step, not both / decimals 与 step 二选一"))
    elif action == "round" and f.type == "integer" and "step" not in raw:
        errs.append(FieldError(f"{at}.step", "an integer field rounds by step / 整数字段须指定 step"))
    if f.type == "integer" or raw.get("to") == "age_band":  # whole steps and bands only
        errs += [FieldError(f"{at}.{k}", "not a whole number / 不是整数") for k in ("step", "width")
                 if k in raw and raw[k] != int(raw[k])]
    return errs


def parse_rules(raw: list[dict[str, Any]], fields: list[SourceField]) -> list[Rule]:
    """Check raw rules against the source items and return them as `Rule`s, or raise `Invalid`."""
    if not isinstance(raw, list):
        raise Invalid("rules", "not a list / 应为列表")
    by_name = {f.name: f for f in fields}
    errs: list[FieldError] = []
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        at = f"rules[{i}]"
        if not isinstance(item, dict):
            errs.append(FieldError(at, "not an object / 应为对象"))
            continue
        name, action = item.get("field"), item.get("action")
        f = by_name.get(name) if isinstance(name, str) else None
        if f is None:
            errs.append(FieldError(f"{at}.field", "required / 必填" if name is None
                                   else f"no source field {name!r} / 无此信息项"))
        elif name in seen:
            errs.append(FieldError(f"{at}.field", f"a second rule for {name} / 同一信息项只能有一条规则"))
            f = None
        if action not in ACTIONS:
            errs.append(FieldError(f"{at}.action", "required / 必填" if action is None
                                   else f"unknown action {action!r}, use one of: {', '.join(ACTIONS)} "
                                        "/ 未知脱敏方式"))
        if f is None or action not in ACTIONS:
            continue
        seen.add(f.name)
        bad = _check(i, item, f, action)
        errs += bad
        if not bad:
            rules.append(Rule(f.name, action, {k: v for k, v in item.items() if k not in _KEYS}))
    if not errs:
        names = [o.name for o in output_fields(fields, rules)]
        for i, item in enumerate(raw):
            if "name" in item and names.count(item["name"]) > 1:
                errs.append(FieldError(f"rules[{i}].name", "already a column name / 与其他字段重名"))
    if errs:
        raise Invalid.many(errs)
    return rules


def _mask(f: SourceField, p: dict[str, Any]) -> Fn:
    start, end = MASK_KINDS[p.get("kind") or _MASK_DEFAULT.get(f.type, "generic")]
    start, end = int(p.get("keep_start", start)), int(p.get("keep_end", end))
    char, keep = str(p.get("char", "*")), start + end

    def mask(v: Any) -> str:
        s: str = v if v.__class__ is str else str(v)
        n = len(s)
        if n <= keep:  # keeping all of it would mask nothing
            return char * n
        return s[:start] + char * (n - keep) + s[n - end:]
    return mask


def _round(f: SourceField, p: dict[str, Any]) -> Fn:
    step = p.get("step")
    if step is None:
        decimals = p.get("decimals", 3)
        return lambda v: round(v, decimals)
    if f.type == "integer":
        whole = int(step)

        def to_step(v: int) -> int:  # exact, and half up: 150 → 200
            q, r = divmod(v, whole)
            return (q + (2 * r >= whole)) * whole
        return to_step
    places = max(0, -int(Decimal(str(step)).as_tuple().exponent))
    return lambda v: round(round(v / step) * step, places)  # 0.30000000000000004 → 0.3


def _column(f: SourceField, rule: Rule | None, today: dt.date) -> tuple[OutField, Fn | None] | None:
    """The published column of one source field and its transform (None: copied as is)."""
    if rule is None:
        return OutField(f.name, f.title, f.type, f.name, None), None
    if rule.action == "suppress":
        return None
    p = rule.params
    name = p.get("name", f.name)
    if rule.action == "mask":
        return OutField(name, f.title, "string", f.name, "mask"), _mask(f, p)
    if rule.action == "round":
        return OutField(name, f.title, f.type, f.name, "round"), _round(f, p)
    if rule.action == "generalize":
        g = GENERALIZE[p["to"]]
        out = OutField(name, f"{f.title}（{g.zh}）", g.out, f.name, "generalize")
        return out, g.build(f.type, p, today)
    raise ValueError(f"unknown action {rule.action!r} / 未知脱敏方式")


def _columns(fields: list[SourceField], rules: list[Rule],
             today: dt.date) -> list[tuple[OutField, Fn | None]]:
    by_field = {r.field: r for r in rules}
    unknown = by_field.keys() - {f.name for f in fields}
    if unknown:
        raise ValueError(f"rules on unknown fields: {', '.join(sorted(unknown))} / 无此信息项")
    return [c for f in fields if (c := _column(f, by_field.get(f.name), today)) is not None]


def output_fields(fields: list[SourceField], rules: list[Rule]) -> list[OutField]:
    """The published table's columns, in source order; suppressed fields are left out."""
    return [out for out, _ in _columns(fields, rules, dt.date(2000, 1, 1))]


def compile_rules(fields: list[SourceField], rules: list[Rule],
                  today: dt.date | None = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One row transformer for the whole table: source row → published row, None stays None.

    Ages are counted at `today` (default: today in the city). The row must hold every source
    field that is published."""
    today = today or dt.datetime.now(CITY_TZ).date()
    plan = tuple((out.name, out.source, fn) for out, fn in _columns(fields, rules, today))

    def transform(row: dict[str, Any]) -> dict[str, Any]:
        # `for v in (x,)` is a plain assignment to CPython since 3.9; faster than a walrus here.
        return {name: v if fn is None or v is None else fn(v) for name, src, fn in plan for v in (row[src],)}
    return transform


def looks_like_id(s: str) -> bool:
    """Whether text reads as a PRC ID number (身份证号): 18 characters, check digit, birth date.

    Not stdnum's `is_valid`: it also wants the region code to exist in the birth year, so it
    misses everyone born before their county was re-coded (220202 dates from 1983)."""
    s = s.upper()
    if len(s) != 18 or not s.isascii() or not s[:17].isdigit() or not (s[17].isdigit() or s[17] == "X"):
        return False
    try:
        return ric.calc_check_digit(s) == s[17] and ric.get_birth_date(s).year >= 1900
    except Exception:  # stdnum's InvalidComponent for an impossible date, and whatever else it raises
        return False


def uncovered(fields: list[SourceField], rules: list[Rule],
              sample: Iterable[dict[str, Any]] = ()) -> list[Finding]:
    """Fields that would publish personal data with no rule: nothing sensitive goes out as is.

    Sensitive items, ID and phone items, and string items whose sampled values are mostly
    (≥ 30% of non-empty) ID or mainland mobile numbers. A rule of any action, suppress
    included, covers its field."""
    covered = {r.field for r in rules}
    found: dict[str, Finding] = {}
    for f in fields:
        why = _UNCOVERED.get(f.type) or _UNCOVERED.get(f.sensitivity)
        if why and f.name not in covered:
            found[f.name] = Finding(f.name, *why)
    scan = [f.name for f in fields if f.type == "string" and f.name not in covered and f.name not in found]
    if scan:
        found.update(_sniff(scan, sample))
    return [found[f.name] for f in fields if f.name in found]


def _sniff(names: list[str], sample: Iterable[dict[str, Any]]) -> dict[str, Finding]:
    """Findings for string fields whose sampled values look like ID or mobile numbers."""
    filled, ids, mobiles = Counter[str](), Counter[str](), Counter[str]()
    mobile = _MOBILE.fullmatch
    for row in sample:
        for name in names:
            v = row.get(name)
            if v.__class__ is not str or not (s := v.strip()):
                continue
            filled[name] += 1
            if len(s) == 18:
                ids[name] += looks_like_id(s)
            elif len(s) == 11 and mobile(s):
                mobiles[name] += 1
    found: dict[str, Finding] = {}
    for name in names:
        n = filled[name]
        if n and ids[name] >= _SHARE * n:
            found[name] = Finding(name, "id_values", f"{ids[name]} of {n} sampled values are ID numbers "
                                  "(身份证号) with no de-identification rule / 抽样值含身份证号，未脱敏")
        elif n and mobiles[name] >= _SHARE * n:
            found[name] = Finding(name, "phone_values", f"{mobiles[name]} of {n} sampled values are mobile "
                                  "numbers (手机号) with no de-identification rule / 抽样值含手机号，未脱敏")
    return found


def kanon(rows: Iterable[dict[str, Any]], quasi: list[str], k: int, limit: int = 20) -> KResult:
    """Check k-anonymity (k-匿名): every combination of quasi-identifiers (准标识符) in ≥ k rows.

    `rows` are published rows and `quasi` their column names. Streams: memory grows with the
    number of distinct combinations, not of rows."""
    _check_k(k)
    key: Callable[[dict[str, Any]], Any] = itemgetter(*quasi) if quasi else (lambda r: ())
    counts: Counter[Any] = Counter()
    try:
        counts.update(map(key, rows))
    except KeyError as exc:
        if not exc.args or exc.args[0] not in quasi:
            raise  # from the rows themselves, not a missing column
        raise Invalid("quasi_identifiers", f"{exc.args[0]!r} is not a column of the published table "
                                           "/ 不是发布表的字段") from None
    if len(quasi) == 1:  # itemgetter of one name gives the value, not a 1-tuple
        counts = Counter({(c,): n for c, n in counts.items()})
    return kanon_counts(counts, quasi, k, limit)


def kanon_counts(counts: Mapping[tuple[Any, ...], int], quasi: Sequence[str], k: int,
                 limit: int = 20) -> KResult:
    """k-anonymity from class sizes already counted (keys: tuples of quasi-identifier values).

    `offending` lists up to `limit` combinations below k, smallest first (ties in the order
    of `counts`)."""
    _check_k(k)
    small = [(c, n) for c, n in counts.items() if n < k]
    offending = [(dict(zip(quasi, c, strict=True)), n)
                 for c, n in heapq.nsmallest(limit, small, key=itemgetter(1))]
    return KResult(ok=not small, k=k, smallest=min(counts.values(), default=0), classes=len(counts),
                   offending=offending, offending_rows=sum(n for _, n in small))


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise Invalid("k", "must be a whole number of at least 1 / k 应为不小于1的整数")
