"""Dataset search (数据集检索): a term index in the database itself, kept in the same
transaction as the dataset, so it is never stale (CKAN's Solr index can be).

Chinese has no spaces, and people type part of a word ("空气" for "空气质量"), so text is
indexed as character unigrams and bigrams of every run of Chinese characters (the CJK bigram
scheme of Lucene's CJKAnalyzer), and Latin words with their prefixes. A query matches a
dataset that holds all of its terms; titles weigh more than descriptions.
"""

from __future__ import annotations

import json
import re
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any

from sqlalchemy import Select, Text, cast, delete, func, insert, literal, or_, select
from sqlalchemy.orm import Session

from cityos.core.models import Department
from cityos.opendata.models import Dataset, SearchTerm

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
WORD = re.compile(r"[a-z0-9][a-z0-9._+-]*")
MAX_TERM = 32
MAX_QUERY_TERMS = 40
FACETS = ("organization", "groups", "tags", "res_format", "update_cycle", "open_level", "license_id")


def _words(text: str) -> Iterable[tuple[str, bool]]:
    """(term, is_prefix) pairs of a text: CJK unigrams and bigrams, Latin words and prefixes."""
    text = text.lower()
    for run in CJK.findall(text):
        for i, ch in enumerate(run):
            yield ch, False
            if i + 1 < len(run):
                yield run[i:i + 2], False
    for word in WORD.findall(text):
        word = word.strip("._+-")[:MAX_TERM]
        if not word:
            continue
        yield word, False
        for n in range(2, len(word)):
            yield word[:n], True


def terms_of(parts: Iterable[tuple[str | None, int]]) -> dict[str, int]:
    """Index terms of weighted texts: the highest weight of the texts a term appears in."""
    out: dict[str, int] = {}
    for text, weight in parts:
        for term, _ in _words(text or ""):
            if out.get(term, 0) < weight:
                out[term] = weight
    return out


def query_terms(q: str) -> list[str]:
    """What a query must match: bigrams of each Chinese run (a lone character as itself), and
    Latin words (which match indexed prefixes too)."""
    q = q.lower()
    terms: list[str] = []
    for run in CJK.findall(q):
        if len(run) == 1:
            terms.append(run)
        else:
            terms += [run[i:i + 2] for i in range(len(run) - 1)]
    for word in WORD.findall(q):
        word = word.strip("._+-")[:MAX_TERM]
        if word:
            terms.append(word)
    return list(dict.fromkeys(terms))[:MAX_QUERY_TERMS]


def index_dataset(session: Session, ds: Dataset) -> None:
    """(Re)index one dataset: title 3, tags/topics/department 2, description and fields 1."""
    unindex_dataset(session, ds)
    dept = ds.department
    parts: list[tuple[str | None, int]] = [(ds.title, 3), (ds.title_en, 3), (ds.name, 2),
                                           (dept.name if dept else None, 2), (ds.description, 1),
                                           (ds.spatial, 1)]
    parts += [(t, 2) for t in ds.tags]
    parts += [(t, 2) for t in ds.topics]
    parts += [(f.get("title"), 1) for f in ds.fields]
    terms = terms_of(parts)
    if terms:
        session.execute(insert(SearchTerm), [{"term": t, "dataset_id": ds.id, "weight": w}
                                             for t, w in terms.items()])


def unindex_dataset(session: Session, ds: Dataset) -> None:
    session.execute(delete(SearchTerm).where(SearchTerm.dataset_id == ds.id))


@dataclass(frozen=True)
class Filter:
    """One facet filter: field in values (or not in, when negated)."""

    field: str  # organization|groups|tags|res_format|update_cycle|open_level|license_id|name|id
    values: tuple[str, ...]
    negate: bool = False


@dataclass
class Found:
    ids: list[int]
    count: int
    facets: dict[str, dict[str, int]] = field(default_factory=dict)


SORTS = {  # CKAN sort field → column
    "metadata_modified": Dataset.modified_at, "metadata_created": Dataset.published_at,
    "name": Dataset.name, "title_string": Dataset.title, "title": Dataset.title,
    "views_recent": Dataset.views, "views_total": Dataset.views, "downloads": Dataset.downloads,
}


def _json_has(col: Any, value: str) -> Any:
    """A JSON list column holds `value`: its stored text contains the serialized element
    (SQLAlchemy's default serializer, json.dumps, on both databases)."""
    return cast(col, Text).contains(json.dumps(value), autoescape=True)


def _apply(stmt: Select[Any], f: Filter) -> Select[Any]:
    if f.field == "organization":
        cond: Any = Dataset.department_id.in_(select(Department.id).where(Department.code.in_(f.values)))
    elif f.field in ("groups", "tags"):
        col = Dataset.topics if f.field == "groups" else Dataset.tags
        cond = or_(*[_json_has(col, v) for v in f.values])
    elif f.field == "res_format":
        fmts = {v.lower() for v in f.values}
        always = {"api", "csv", "xlsx", "json", "parquet"}
        if fmts & always:
            cond = literal(True)
        elif "geojson" in fmts:
            cond = Dataset.lon_field.is_not(None)
        else:
            cond = literal(False)
    elif f.field in ("update_cycle", "open_level", "name", "license_id", "id"):
        col = {"update_cycle": Dataset.update_cycle, "open_level": Dataset.open_level,
               "name": Dataset.name, "license_id": Dataset.licence, "id": Dataset.uid}[f.field]
        cond = col.in_(f.values)
    else:
        raise ValueError(f.field)
    return stmt.where(~cond if f.negate else cond)


def search(session: Session, *, q: str | None = None, filters: Sequence[Filter] = (),
           sort: Sequence[tuple[str, bool]] = (), rows: int = 10, start: int = 0,
           facet_fields: Sequence[str] = (), facet_limit: int = 50) -> Found:
    """Published datasets matching `q` and `filters`, a page of their ids in order, the count,
    and facet counts over everything matched."""
    base: Select[Any] = select(Dataset.id).where(Dataset.state == "published")
    score = None
    if q and q.strip() and q.strip() != "*:*":
        terms = query_terms(q)
        if not terms:
            return Found([], 0, {f: {} for f in facet_fields})
        hits = (select(SearchTerm.dataset_id, func.sum(SearchTerm.weight).label("score"))
                .where(SearchTerm.term.in_(terms)).group_by(SearchTerm.dataset_id)
                .having(func.count() == len(terms)).subquery("hits"))
        base = base.join(hits, hits.c.dataset_id == Dataset.id)
        score = hits.c.score
    for f in filters:
        base = _apply(base, f)
    order: list[Any] = []
    for name, desc in sort:
        if name == "score":
            if score is not None:
                order.append(score.desc() if desc else score.asc())
            continue
        col = SORTS[name]
        order.append(col.desc() if desc else col.asc())
    if not sort and score is not None:
        order.append(score.desc())
    order += [Dataset.modified_at.desc(), Dataset.id.desc()]
    if facet_fields and score is None and not filters:  # browsing: everything matches
        snap = _cache(session).get(session)
        ids = list(session.scalars(base.order_by(*order).limit(rows).offset(start))) if rows else []
        return Found(ids, len(snap.facts), _facets(session, snap, None, facet_fields, facet_limit))
    if facet_fields:
        # Facets count over every match: fetch all the matched ids once, in order (a few
        # thousand integers), and take the count and the page from them too.
        matched = list(session.scalars(base.order_by(*order)))
        return Found(matched[start:start + rows] if rows else [], len(matched),
                     _facets(session, _cache(session).get(session), matched, facet_fields, facet_limit))
    count = int(session.scalar(select(func.count()).select_from(base.subquery())) or 0)
    ids = list(session.scalars(base.order_by(*order).limit(rows).offset(start))) if rows else []
    return Found(ids, count, {})


# -- facets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What the facets count of one dataset."""

    department_id: int
    topics: tuple[str, ...]
    tags: tuple[str, ...]
    update_cycle: str
    open_level: str
    licence: str
    geo: bool


@dataclass
class _Snapshot:
    """The facet values of every published dataset at one state of the catalog, and the
    whole catalog's counts per field once asked for (browsing matches everything)."""

    key: tuple[Any, ...]
    facts: dict[int, _Facts]
    everything: dict[str, Counter[Any]] = field(default_factory=dict)

    def all_counts(self, name: str) -> Counter[Any]:
        known = self.everything.get(name)
        if known is None:
            known = self.everything[name] = _count(name, list(self.facts.values()))
        return known


class _FactCache:
    """Facet values of every published dataset, kept in memory per database and reloaded when
    the catalog changes: decoding the JSON tag lists of thousands of rows on every search is
    what made faceted search slow. Any change to a dataset moves its `modified_at` (onupdate)
    or the row count, so (count, max modified_at, max id) tells when to reload; each worker
    process checks it on every search, so workers never serve stale counts."""

    def __init__(self) -> None:
        self._snapshot = _Snapshot((), {})

    def get(self, session: Session) -> _Snapshot:
        key = tuple(session.execute(select(func.count(), func.max(Dataset.modified_at),
                                           func.max(Dataset.id))).one())
        snapshot = self._snapshot  # one read: another thread may replace it meanwhile
        if key == snapshot.key:
            return snapshot
        rows = session.execute(
            select(Dataset.id, Dataset.department_id, cast(Dataset.topics, Text), cast(Dataset.tags, Text),
                   Dataset.update_cycle, Dataset.open_level, Dataset.licence, Dataset.lon_field)
            .where(Dataset.state == "published"))
        facts = {i: _Facts(dept, tuple(dict.fromkeys(json.loads(topics or "[]"))),
                           tuple(dict.fromkeys(json.loads(tags or "[]"))), cycle, level, licence,
                           lon is not None)
                 for i, dept, topics, tags, cycle, level, licence, lon in rows}
        snapshot = self._snapshot = _Snapshot(key, facts)
        return snapshot


_CACHES: weakref.WeakKeyDictionary[Any, _FactCache] = weakref.WeakKeyDictionary()
FORMATS = ("API", "CSV", "XLSX", "JSON", "Parquet")  # every dataset has these; GeoJSON if geo


def _cache(session: Session) -> _FactCache:
    bind = session.get_bind()
    engine = getattr(bind, "engine", bind)
    cache = _CACHES.get(engine)
    if cache is None:
        cache = _CACHES.setdefault(engine, _FactCache())
    return cache


def _count(field: str, rows: list[_Facts]) -> Counter[Any]:
    """A field's values over some datasets (organization by department id)."""
    if field in ("groups", "tags"):
        return Counter(chain.from_iterable(map(attrgetter("topics" if field == "groups" else "tags"), rows)))
    if field == "res_format":
        geo = sum(map(attrgetter("geo"), rows))
        c = Counter(dict.fromkeys(FORMATS, len(rows)) if rows else {})
        if geo:
            c["GeoJSON"] = geo
        return c
    attr = {"organization": "department_id", "update_cycle": "update_cycle", "open_level": "open_level",
            "license_id": "licence"}.get(field)
    if attr is None:
        raise ValueError(field)
    return Counter(map(attrgetter(attr), rows))


def _facets(session: Session, snap: _Snapshot, ids: Sequence[int] | None, fields: Sequence[str],
            limit: int) -> dict[str, dict[str, int]]:
    """Counts of each field's values over the datasets `ids` (None: all published)."""
    rows = [snap.facts[i] for i in ids if i in snap.facts] if ids is not None else []
    everything = ids is None or len(rows) == len(snap.facts)
    out: dict[str, dict[str, int]] = {}
    for f in fields:
        c = snap.all_counts(f) if everything else _count(f, rows)
        if f == "organization":
            codes = dict(session.execute(select(Department.id, Department.code)
                                         .where(Department.id.in_(list(c)))).all()) if c else {}
            c = Counter({codes[d]: n for d, n in c.items() if d in codes})
        out[f] = dict(c.most_common(limit))
    return out
