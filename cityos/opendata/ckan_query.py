"""Reading CKAN Action API requests (CKAN 请求解析): the request's data dict, typed parameters,
Solr-style `fq` and `q`, and `sort`, turned into `opendata.search` terms. No HTTP here.

CKAN hands `fq` to Solr. We have no Solr, and we must not pass a caller's text to any query
engine, so `fq` is parsed against a small grammar — the part of Solr syntax CKAN clients send —
and becomes `search.Filter` values, which search binds as parameters:

    fq      := clause ( [AND] clause )*
    clause  := [+|-|NOT] field ":" value | "*:*"
    value   := word | "quoted words" | "(" value ( [OR|AND] value )* ")"   (a space is AND)

Anything else (ranges, wildcards, boosts, OR between clauses, unknown fields) is refused with
a message naming the part, as CKAN's `Search Error`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cityos.core.errors import Invalid
from cityos.opendata import search
from cityos.opendata.search import Filter


class SearchError(Exception):
    """CKAN's `Search Error` (409): a filter query Solr would have refused."""


class SearchQueryError(Exception):
    """CKAN's `Search Query Error` (400): an invalid search parameter such as `sort`."""


class BadRequest(Exception):
    """CKAN's plain `Bad request` (400): the request data itself cannot be read."""


MAX_FQ = 2000
MAX_CLAUSES = 50
MAX_VALUES = 100
MAX_VALUE = 200
MAX_Q = 500
ROWS_DEFAULT, ROWS_MAX = 10, 1000  # CKAN's ckan.search.rows_max
FACET_LIMIT = 50  # CKAN's search.facets.limit
MAX_START = 1_000_000

# fq field → search.Filter field. `owner_org` is the organization's id, which is its code here.
FQ_FIELDS = {"organization": "organization", "owner_org": "organization", "groups": "groups",
             "tags": "tags", "res_format": "res_format", "update_cycle": "update_cycle",
             "open_level": "open_level", "license_id": "license_id", "name": "name", "id": "id"}
# Fields whose values are free text for our index (Solr's `text` catch-all and its sources).
TEXT_FIELDS = {"text", "title", "notes", "title_en"}
# Solr syntax we do not emulate, named in the refusal.
SPECIAL = {"*": "wildcards", "?": "wildcards", "[": "ranges", "]": "ranges",
           "{": "ranges and local parameters", "}": "ranges and local parameters",
           "~": "fuzzy/proximity search", "^": "boosts", "!": "operators", "&": "operators",
           "|": "operators"}


# -- the request's data dict ------------------------------------------------------------------------


def request_data(method: str, query: Iterable[tuple[str, str]], content_type: str | None,
                 body: bytes, form: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """CKAN's data dict: the URL parameters, overlaid by a JSON body or form fields (a
    parameter given twice in the URL becomes a list, as in CKAN)."""
    data: dict[str, Any] = {}
    for key, value in query:
        if key in data:
            data[key] = [*data[key], value] if isinstance(data[key], list) else [data[key], value]
        else:
            data[key] = value
    if method != "POST":
        return data
    ctype = (content_type or "").split(";")[0].strip().lower()
    if form is not None and ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        fields = dict(form)
        # CKAN's legacy form: the whole JSON dict sent as the only key, with an empty value.
        if len(fields) == 1 and next(iter(fields.values())) in ("", "1"):
            data.update(_json_dict(next(iter(fields))))
        else:
            data.update(fields)
    elif body.strip():
        data.update(_json_dict(body))
    return data


def _json_dict(raw: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"JSON Error: {exc} / JSON 格式错误") from None
    if not isinstance(value, dict):
        raise BadRequest(f"Request data JSON decoded to {type(value).__name__} but it needs to be "
                         "a dictionary / 请求数据应为 JSON 对象")
    return value


# -- typed parameters -----------------------------------------------------------------------------


def as_int(data: Mapping[str, Any], name: str, default: int, *, minimum: int = 0,
           cap: int | None = None, maximum: int | None = None) -> int:
    """A whole-number parameter; over `cap` it is silently capped (as CKAN does for rows),
    over `maximum` refused."""
    value = data.get(name)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError
        n = int(value)
    except (TypeError, ValueError):
        raise Invalid(name, "Invalid integer / 应为整数") from None
    if n < minimum:
        raise Invalid(name, f"Must be {minimum} or more / 不能小于{minimum}")
    if maximum is not None and n > maximum:
        raise Invalid(name, f"Must be {maximum} or less / 不能大于{maximum}")
    return min(n, cap) if cap is not None else n


def as_bool(data: Mapping[str, Any], name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on", "t", "y"):
        return True
    if text in ("false", "0", "no", "off", "f", "n"):
        return False
    raise Invalid(name, "Value must be one of true, false / 应为 true 或 false")


def as_str(data: Mapping[str, Any], name: str, *, required: bool = False, max_len: int = 500) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise Invalid(name, "Missing value / 缺少参数")
        return None
    if not isinstance(value, str | int):
        raise Invalid(name, "Must be text / 应为文本")
    text = str(value)
    if len(text) > max_len:
        raise Invalid(name, f"At most {max_len} characters / 最多{max_len}个字符")
    return text


def as_list(data: Mapping[str, Any], name: str) -> list[str] | None:
    """A list of strings given as a list, a JSON list, or comma-separated text."""
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise Invalid(name, "Invalid JSON list / 应为 JSON 列表") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(name, "Must be a list of strings / 应为字符串列表")
    return value


def as_json(data: Mapping[str, Any], name: str) -> Any:
    """A parameter that may arrive as JSON text in a URL (`filters={"a": 1}`)."""
    value = data.get(name)
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            raise Invalid(name, "Cannot parse JSON / JSON 格式错误") from None
    return value


# -- package_search: fq, q, sort, facets ----------------------------------------------------------


@dataclass(frozen=True)
class PackageQuery:
    """A package_search request, checked."""

    q: str | None
    filters: tuple[Filter, ...]
    sort: tuple[tuple[str, bool], ...]
    sort_text: str
    rows: int
    start: int
    facet_fields: tuple[str, ...]
    facet_limit: int


def package_query(data: Mapping[str, Any]) -> PackageQuery:
    """Check package_search's parameters (`q`, `fq`, `sort`, `rows`, `start`, `facet.*`)."""
    q = as_str(data, "q", max_len=MAX_Q)
    text, from_q = split_q(q or "")
    filters = [*from_q, *parse_fq(as_str(data, "fq", max_len=MAX_FQ) or "")]
    for extra in as_list(data, "fq_list") or []:  # CKAN 2.9+: a list of fq strings
        filters += parse_fq(extra)
    sort_text = as_str(data, "sort") or "score desc, metadata_modified desc"
    facets = as_list(data, "facet.field") or as_list(data, "facet_field") or []
    unknown = [f for f in facets if f not in search.FACETS]
    if unknown:
        raise SearchError(f"cannot facet on {unknown[0]!r}; facet fields are "
                          f"{', '.join(search.FACETS)} / 不支持的分面字段")
    if not as_bool(data, "facet", True):
        facets = []
    limit = as_int(data, "facet.limit", as_int(data, "facet_limit", FACET_LIMIT, minimum=-1),
                   minimum=-1)
    return PackageQuery(
        q=text or None, filters=tuple(filters), sort=tuple(parse_sort(sort_text)), sort_text=sort_text,
        rows=as_int(data, "rows", ROWS_DEFAULT, cap=ROWS_MAX),
        start=as_int(data, "start", 0, maximum=MAX_START),
        facet_fields=tuple(dict.fromkeys(facets)), facet_limit=1 << 30 if limit < 0 else limit)


def parse_sort(text: str) -> list[tuple[str, bool]]:
    """CKAN's sort: "field [asc|desc], ..." over `score` and search.SORTS."""
    out = []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) > 5:
        raise SearchQueryError('Invalid "sort" parameter: at most 5 fields / 最多5个排序字段')
    for part in parts:
        words = part.split()
        name, direction = words[0], (words[1].lower() if len(words) > 1 else "asc")
        known = name == "score" or name in search.SORTS
        if not known or len(words) > 2 or direction not in ("asc", "desc"):
            raise SearchQueryError(
                f'Invalid "sort" parameter {part!r}: use field asc|desc with a field of score, '
                f'{", ".join(search.SORTS)} / 排序参数无效')
        out.append((name, direction == "desc"))
    return out


Q_TOKEN = re.compile(r'([A-Za-z_]+):("(?:[^"\\]|\\.)*"|\([^)]*\)|\S+)|"((?:[^"\\]|\\.)*)"|(\S+)')


def split_q(q: str) -> tuple[str, list[Filter]]:
    """Split `q` into free text and filters: `name:foo` style terms on fq fields move to the
    filters (CKAN sends them to Solr alike); `*:*` means everything."""
    words: list[str] = []
    filters: list[Filter] = []
    for m in Q_TOKEN.finditer(q.strip()):
        field, value, quoted, word = m.groups()
        if m.group(0) == "*:*":
            continue
        if field is not None and (field in FQ_FIELDS or field == "dataset_type"):
            filters += parse_fq(m.group(0))
        elif field is not None and field in TEXT_FIELDS:
            words.append(value.strip('"()'))
        elif quoted is not None:
            words.append(quoted)
        elif (word or m.group(0)) not in ("AND", "OR", "NOT", "&&", "||"):
            words.append(word or m.group(0))
    return " ".join(words), filters


class _Reader:
    """A cursor over fq text, with errors that quote where they happened."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, what: str, at: int | None = None) -> SearchError:
        at = self.pos if at is None else at
        near = self.text[at:at + 30] or "(end)"
        return SearchError(f"fq: {what} at position {at + 1}, near {near!r} / 过滤条件(fq)无法解析")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def done(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def peek_word(self, *words: str) -> str | None:
        """A keyword (AND, OR, NOT) at the cursor, followed by a space or a bracket."""
        for w in words:
            end = self.pos + len(w)
            if self.text.startswith(w, self.pos) and (end >= len(self.text) or self.text[end] in " \t\n()\""):
                return w
        return None

    def field(self) -> str:
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:").match(self.text, self.pos)
        if not m:
            ch = self.text[self.pos]
            raise self.fail(f"{SPECIAL[ch]} ({ch}) are not supported" if ch in SPECIAL
                            else "expected field:value")
        self.pos = m.end()
        return m.group(0)[:-1]

    def value(self) -> str:
        if self.pos >= len(self.text) or self.text[self.pos].isspace():
            raise self.fail("missing value")
        if self.text[self.pos] == '"':
            return self._quoted()
        start, out = self.pos, []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if ch.isspace() or ch in '()"':
                break
            if ch in SPECIAL:
                raise self.fail(f"{SPECIAL[ch]} ({ch}) are not supported")
            out.append(ch)
            self.pos += 1
        if not out:
            raise self.fail("missing value", start)
        return self._checked("".join(out), start)

    def _quoted(self) -> str:
        start = self.pos
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if ch == '"':
                self.pos += 1
                return self._checked("".join(out), start)
            out.append(ch)
            self.pos += 1
        raise self.fail("unterminated quote", start)

    def _checked(self, value: str, start: int) -> str:
        if len(value) > MAX_VALUE:
            raise self.fail(f"value longer than {MAX_VALUE} characters", start)
        return value

    def values(self) -> tuple[list[str], str]:
        """A value, or a bracketed list joined by OR (any of) or AND (all of)."""
        if self.pos >= len(self.text) or self.text[self.pos] != "(":
            return [self.value()], "OR"
        open_at = self.pos
        self.pos += 1
        out: list[str] = []
        joiner: str | None = None
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                raise self.fail("unclosed bracket", open_at)
            if self.text[self.pos] == ")":
                self.pos += 1
                break
            if out:
                # A space alone means AND: CKAN's Solr schema makes AND the default operator.
                word = self.peek_word("OR", "AND") or "AND"
                if self.peek_word("OR", "AND"):
                    self.pos += len(word)
                    self.skip_space()
                if joiner is not None and word != joiner:
                    raise self.fail("mixing AND and OR inside brackets is not supported")
                joiner = word
            out.append(self.value())
            if len(out) > MAX_VALUES:
                raise self.fail(f"more than {MAX_VALUES} values")
        if not out:
            raise self.fail("empty brackets", open_at)
        return out, joiner or "OR"


def parse_fq(fq: str) -> list[Filter]:
    """Solr-lite `fq` → filters; refused with a SearchError naming the bad part."""
    if len(fq) > MAX_FQ:
        raise SearchError(f"fq: longer than {MAX_FQ} characters / 过滤条件过长")
    r = _Reader(fq)
    out: list[Filter] = []
    clauses = 0
    while not r.done():
        if clauses:
            if r.peek_word("OR") or r.text.startswith("||", r.pos):
                raise r.fail("OR between clauses is not supported; use field:(a OR b)")
            if r.peek_word("AND") or r.text.startswith("&&", r.pos):
                r.pos += 3 if r.peek_word("AND") else 2
                r.skip_space()
        clauses += 1
        if clauses > MAX_CLAUSES:
            raise r.fail(f"more than {MAX_CLAUSES} clauses")
        negate = False
        if r.peek_word("NOT"):
            negate, r.pos = True, r.pos + 3
            r.skip_space()
        elif r.pos < len(r.text) and r.text[r.pos] in "+-":
            negate, r.pos = r.text[r.pos] == "-", r.pos + 1
        if r.text.startswith("*:*", r.pos):
            r.pos += 3
            if negate:
                out.append(Filter("name", ()))  # NOT everything: nothing
            continue
        start = r.pos
        field = r.field()
        values, joiner = r.values()
        out += _clause(r, field, values, joiner, negate, start)
    return out


def _clause(r: _Reader, field: str, values: list[str], joiner: str, negate: bool, start: int) -> list[Filter]:
    if field == "dataset_type":
        # Every package here is a "dataset"; any other type matches nothing.
        hit = "dataset" in values if joiner == "OR" else set(values) == {"dataset"}
        return [] if hit != negate else [Filter("name", ())]
    target = FQ_FIELDS.get(field)
    if target is None:
        raise r.fail(f"unknown field {field!r} (fields: {', '.join(FQ_FIELDS)}, dataset_type)", start)
    if joiner == "AND" and not negate:
        return [Filter(target, (v,)) for v in dict.fromkeys(values)]
    if joiner == "AND":
        raise r.fail("a negated AND list is not supported", start)
    return [Filter(target, tuple(dict.fromkeys(values)), negate)]


# -- datastore_search -----------------------------------------------------------------------------


def datastore_query(data: Mapping[str, Any], default_limit: int, max_limit: int) -> dict[str, Any]:
    """datastore_search's parameters as keyword arguments of `rows.search`."""
    fmt = data.get("records_format") or "objects"
    if fmt != "objects":
        raise Invalid("records_format", f"only 'objects' is supported, not {fmt!r} / 仅支持 objects")
    filters = as_json(data, "filters")
    if filters is not None and not isinstance(filters, dict):
        raise Invalid("filters", "an object of field: value / 应为对象 {字段: 值}")
    q = as_json(data, "q")
    sort = data.get("sort")
    if isinstance(sort, list):
        if not all(isinstance(s, str) for s in sort):
            raise Invalid("sort", "text or a list of text / 应为文本或文本列表")
        sort = ", ".join(sort)
    elif sort is not None and not isinstance(sort, str):
        raise Invalid("sort", "text or a list of text / 应为文本或文本列表")
    total = as_bool(data, "include_total", True) and as_bool(data, "total", True)
    return {"filters": filters, "q": q if q != "" else None, "fields": as_list(data, "fields"),
            "sort": sort or None, "limit": as_int(data, "limit", default_limit, cap=max_limit),
            "offset": as_int(data, "offset", 0), "include_total": total,
            "distinct": as_bool(data, "distinct", False)}
