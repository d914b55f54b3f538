"""SQL injection in every filter, sort and search parameter (trust, issue 9 item 3).

The parameters are taken from the app itself: every query parameter FastAPI knows for every GET
route, API and page alike (the OpenAPI document's, and the pages' which it leaves out), so a new one
cannot escape. The standards' query languages, which read the query string themselves, are probed
by name: CKAN package_search and datastore_search(_sql), OGC API Features filter/sortby/properties
and attribute filters, SensorThings $filter/$orderby/$select, the hub's shared-row filters, sort
and fields, and Open311's request filters.

A probe is safe when the answer is never a 5xx and either a 4xx in the route's own error format (a
problem document naming the parameter, or the standard's error) or a normal answer that holds no more
than the same question asked harmlessly (the payload with its SQL punctuation taken out). After all
probes every table has as many rows as before and the users table is byte-for-byte intact. Both
databases: the SQL each dialect is sent differs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.trust.helpers_abuse import Refs, build_city, console_login, fill, row_counts, users_rows
from tests.trust.test_permission_matrix import api_routes, is_page

PAYLOADS = [
    "' OR '1'='1",
    "1; DROP TABLE users--",
    '") OR 1=1--',
    "name'||(SELECT password_hash FROM users)||'",
    "x' UNION SELECT username, password_hash FROM users--",
    "x'/**/OR/**/1=1/*",
    "x\x00' OR 1=1--",
    "%' OR 1=1 OR name LIKE '%",
    "A" * 5000 + "' OR '1'='1",
]
# Streams answer forever (the permission matrix checks them); /docs takes no parameters.
SKIP = {"/api/sensing/alerts/stream", "/api/ops/stream", "/docs"}
# Tables a read may add rows to by design: the audit log records reads of shared data and every
# refusal; the open-data usage counters count API calls.
GROWS_ON_READ = {"audit_log", "od_usage"}
PROBLEM = "application/problem+json"
NOTHING = "zqxvj"  # matches no name, code or text in the city


def harmless(payload: str) -> str:
    """The same words with the SQL punctuation taken out: what an honest search for them finds."""
    return re.sub(r"[^0-9A-Za-z]+", " ", payload).strip() or "x"


@dataclass(frozen=True)
class Probe:
    """Parameters of one route, with what to send in them (all at once)."""

    url: str  # path (path parameters filled) and the fixed query, if any
    params: tuple[str, ...]
    payloads: tuple[tuple[str, str], ...]  # (payload, its harmless twin)
    page: bool = False  # an HTML page: signed in by cookie, errors are pages
    standard: bool = False  # answers in its standard's error format
    user: str = "admin"

    @property
    def label(self) -> str:
        return ",".join(self.params)

    def split(self) -> list[Probe]:
        """One probe per parameter, when asking them all at once was refused."""
        return [Probe(self.url, (p,), self.payloads, self.page, self.standard, self.user) for p in self.params]

    def request(self, clients: dict[str, TestClient], value: str, headers: dict[str, dict[str, str]]) -> Any:
        sep = "&" if "?" in self.url else "?"
        client = clients["anonymous" if self.user == "anonymous" else "signed-in"]
        return client.get(f"{self.url}{sep}{urlencode(dict.fromkeys(self.params, value))}",
                          headers={} if self.page else headers.get(self.user, {}))


def _generic(payloads: list[str] = PAYLOADS) -> tuple[tuple[str, str], ...]:
    return tuple((p, harmless(p)) for p in payloads)


# -- the probes, from the app --------------------------------------------------------------------------


# Values for query parameters a route requires, so the probed one is reached.
REQUIRED = {"purpose": "probe", "lon": "126.55", "lat": "43.84", "text": "噪音", "from": "1", "to": "1"}
# Who asks: the admin, except where only the owning department may read.
USER_FOR = {"/api/hub/resources/{code}/rows": "police_staff"}


@dataclass(frozen=True)
class Declared:
    path: str
    param: str
    free_text: bool  # a str with no pattern: the value reaches the service as typed
    params: dict[str, bool]  # the route's query parameters: required or not


def declared_params(app: FastAPI) -> Iterator[Declared]:
    """Every query parameter of every GET route, as FastAPI declares it (OpenAPI and pages)."""
    from fastapi.dependencies.utils import get_flat_params
    from fastapi.params import Query

    for method, path, route in api_routes(app):
        if method != "GET" or path in SKIP:
            continue
        fields = [f for f in get_flat_params(route.dependant) if isinstance(f.field_info, Query)]
        params = {f.alias: f.field_info.is_required() for f in fields}
        for f in fields:
            info = f.field_info
            free = info.annotation in (str, str | None) and not any(
                getattr(m, "pattern", None) for m in info.metadata)
            yield Declared(path, f.alias, free, params)


def generic_probes(app: FastAPI, refs: Refs) -> list[Probe]:
    """Free text of an API gets the classic payload and one of the others in turn; a page's free text
    is probed all at once, with one payload in turn (a page renders in tens of milliseconds; a refusal
    splits it into one probe a parameter). Every payload reaches a few dozen parameters: these values
    are bound, never spliced, so reaching every parameter matters more than trying every payload on
    each. A typed parameter (number, date, choice) gets the classic payload, which its type must
    refuse (if it does not, judging that answer shows it)."""
    probes: list[Probe] = []
    pages: dict[str, list[str]] = {}
    for n, d in enumerate(declared_params(app)):
        missing = [r for r in d.params if d.params[r] and r not in REQUIRED]
        assert not missing, f"GET {d.path} requires {missing}: give them a value in REQUIRED"
        fixed = {r: REQUIRED[r] for r in d.params if r in REQUIRED and r != d.param}
        url = fill(d.path, refs) + (f"?{urlencode(fixed)}" if fixed else "")
        page = is_page(d.path) and not d.path.endswith(".geojson")
        if page and d.free_text and not fixed:
            pages.setdefault(url, []).append(d.param)
            continue
        chosen = [PAYLOADS[0], PAYLOADS[1 + n % (len(PAYLOADS) - 1)]] if d.free_text else PAYLOADS[:1]
        probes.append(Probe(url, (d.param,), _generic(chosen), page=page, user=USER_FOR.get(d.path, "admin")))
    for n, (url, params) in enumerate(pages.items()):
        probes.append(Probe(url, tuple(params), _generic([PAYLOADS[n % len(PAYLOADS)]]), page=True))
    return probes


def standard_probes(refs: Refs) -> list[Probe]:
    """The query languages the standards' routes parse themselves."""
    v = refs.values
    ckan, ogc, sta = "/api/3/action", f"/ogc/collections/{v['collection']}/items", "/sta/v1.1"
    rows = f"/api/hub/resources/{v['people']}/rows?purpose=probe"
    g = _generic([PAYLOADS[0], PAYLOADS[4], PAYLOADS[6]])  # quote, UNION with a comment, NUL
    cql = (("name = 'x'' OR ''1''=''1'", "name = 'x'"), ("name = 'x') OR 1=1--'", "name = 'x'"),
           ("name = 'x' || (SELECT password_hash FROM users)", "name = 'x'"),
           ('"name; DROP TABLE users" = \'x\'', "name = 'x'"), ("n = 1; DROP TABLE users", "n = 1"))
    odata = (("name eq 'x'' or ''1''=''1'", "name eq 'x'"), ("name eq 'x'') or 1=1--'", "name eq 'x'"),
             ("substringof('x'' OR 1=1--', name)", "substringof('x', name)"),
             ("name eq 'x' or (SELECT 1 FROM users) eq 1", "name eq 'x'"))
    sort = (("name; DROP TABLE users", "name"), ("(SELECT password_hash FROM users)", "name"),
            ("name desc, (CASE WHEN 1=1 THEN name END)", "name desc"), ("name--", "name"))
    sql = tuple((s, 'SELECT * FROM "air-quality-daily" WHERE 1 = 0') for s in (
        "SELECT username, password_hash FROM users",
        'SELECT * FROM "air-quality-daily"; DROP TABLE users',
        'SELECT site_code FROM "air-quality-daily" UNION SELECT password_hash FROM users',
        "SELECT * FROM sqlite_master", "SELECT * FROM pg_catalog.pg_user",
        'SELECT * FROM "air-quality-daily" WHERE site_code = \'\' OR 1=1; DELETE FROM users',
        "SELECT * FROM \"residents\"",  # conditional: needs its key, as any other read
    ))
    return [
        *(Probe(f"{ckan}/package_search", (p,), g + extra, standard=True)
          for p, extra in (("q", ()), ("fq", (("organization:x' OR '1'='1", "organization:x"),
                                               ("name:(x OR 1=1)--", "name:x"))), ("sort", sort))),
        *(Probe(f"{ckan}/datastore_search?resource_id={v['dataset']}", (p,), g + extra, standard=True)
          for p, extra in (("q", ()), ("sort", sort), ("fields", sort),
                           ("filters", (('{"district": "\' OR \'1\'=\'1"}', '{"district": "x"}'),
                                        ('{"district\' OR 1=1--": "x"}', '{"district": "x"}'))))),
        Probe(f"{ckan}/datastore_search_sql", ("sql",), sql, standard=True, user="anonymous"),
        *(Probe(ogc, (p,), g + extra, standard=True) for p, extra in (
            ("filter", cql), ("sortby", sort), ("properties", sort), ("name", ()), ("datetime", ()),
            ("bbox", ()), ("limit", ()), ("filter-lang", ()), ("crs", ()))),
        *(Probe(f"{sta}/{entity}", (p,), g + extra, standard=True) for entity in ("Things", "Datastreams")
          for p, extra in (("$filter", odata), ("$orderby", sort), ("$select", sort), ("$expand", sort),
                           ("$top", ()), ("$skip", ()))),
        *(Probe(rows, (p,), g + extra, user="police_staff") for p, extra in (
            ("district__eq", ()), ("name__contains", ()), ("household_size__lt", ()), ("sort", sort),
            ("fields", sort), ("district' OR '1'='1__eq", (("x", "x"),)))),
        *(Probe("/open311/v2/requests.json", (p,), g, standard=True)
          for p in ("service_code", "status", "start_date", "end_date", "service_request_id")),
    ]


# -- judging an answer ---------------------------------------------------------------------------------


def size(r: Any) -> int:
    """How much an answer holds: JSON values, HTML elements or text lines. The payload echoed back is
    one value or one text, whatever it says; rows it let through would add to the count."""
    kind = r.headers.get("content-type", "")
    if "json" in kind:
        def count(node: Any) -> int:
            if isinstance(node, dict):
                return 1 + sum(count(x) for x in node.values())
            if isinstance(node, list):
                return 1 + sum(count(x) for x in node)
            return 1
        return count(r.json())
    if "html" in kind:
        return len(re.findall(r"<[a-zA-Z]", r.text))
    if kind.startswith("text/") or "csv" in kind or "xml" in kind:
        return r.text.count("\n") + r.text.count("<")
    return len(r.content)


def refusal_problem(probe: Probe, r: Any) -> str | None:
    """What is wrong with a 4xx, if anything: it must be in the route's own error format."""
    kind = r.headers.get("content-type", "")
    if r.status_code == 400 and kind.startswith(PROBLEM) and "NUL" in r.text:  # core.web.RefuseNul
        return None if r.json()["errors"][0]["field"] in probe.params else f"NUL refused, not naming it: {r.text}"
    if probe.page:
        return None if "text/html" in kind or r.status_code in (303, 404) else f"a page answered {kind}"
    if probe.standard:
        return None if "json" in kind or "xml" in kind else f"a standard's API answered {kind}"
    if not kind.startswith(PROBLEM):
        return f"not a problem document ({kind})"
    body = r.json()
    named = [e.get("field", "") for e in body.get("errors", [])]
    stem = probe.label.split("__")[0]
    if r.status_code in (400, 422) and not any(stem in str(f) or str(f) in probe.label for f in named):
        return f"the problem does not name {probe.label!r}: {body}"
    return None


@dataclass
class Prober:
    clients: dict[str, TestClient]  # "signed-in": the admin's console session; "anonymous": no cookie
    headers: dict[str, dict[str, str]]
    baselines: dict[tuple[str, str, str], Any]

    def judge(self, probe: Probe, payload: str, twin: str) -> str | None:
        """What is wrong with the answer to `payload`, if anything ("split": ask one at a time)."""
        r = probe.request(self.clients, payload, self.headers)
        if len(probe.params) > 1 and 400 <= r.status_code < 500:
            return "split"
        if r.status_code >= 500:
            return f"{r.status_code}: {r.text[:200]}"
        if 300 <= r.status_code < 400:
            location = r.headers.get("location", "")
            return None if location.startswith("/") and not location.startswith("//") else f"to {location}"
        if r.status_code >= 400:
            return refusal_problem(probe, r)
        # Most crafted values find nothing: compare with a value that matches nothing first, and ask
        # the harmless twin only when the answer holds more than that.
        nothing = self.baseline(probe, NOTHING)
        if nothing.status_code < 300 and size(r) <= size(nothing):
            return None
        base = self.baseline(probe, twin)
        if base.status_code >= 400:
            # The honest question was refused; the crafted one may only be answered if it holds nothing.
            return None if size(r) <= size_of_empty(r) else f"2xx where the harmless twin got {base.status_code}"
        if size(r) > size(base):
            return f"holds more than the harmless query: {size(r)} > {size(base)}"
        return None

    def baseline(self, probe: Probe, value: str) -> Any:
        key = (probe.url, probe.label, value)
        if key not in self.baselines:
            self.baselines[key] = probe.request(self.clients, value, self.headers)
        return self.baselines[key]


def size_of_empty(r: Any) -> int:
    """An upper bound of an empty answer's size, for the rare 2xx to a refused twin."""
    return 12 if "json" in r.headers.get("content-type", "") else 10 ** 9


def run(probes: list[Probe], prober: Prober) -> tuple[int, list[str]]:
    sent, surprises, queue = 0, [], list(probes)
    while queue:
        probe = queue.pop()
        for payload, twin in probe.payloads:
            sent += 1
            what = prober.judge(probe, payload, twin)
            if what == "split":
                queue.extend(probe.split())
                break
            if what:
                surprises.append(f"GET {probe.url} {probe.label}={payload[:50]!r}: {what}")
    return sent, surprises


@pytest.fixture
def refs(city: Any, sessions: Any) -> Refs:
    return build_city(city, sessions)


@pytest.fixture
def prober(refs: Refs, client: TestClient, app: FastAPI) -> Prober:
    console_login(client, "admin")  # pages by the session cookie, APIs by the bearer token
    return Prober({"signed-in": client, "anonymous": TestClient(app)},
                  {u: refs.headers(u) for u in ("admin", "police_staff")}, {})


def _unchanged(engine: Engine, probe_all: Callable[[], tuple[int, list[str]]]) -> tuple[int, list[str]]:
    counts, users = row_counts(engine), users_rows(engine)
    sent, surprises = probe_all()
    after = row_counts(engine)
    for table in sorted(set(counts) | set(after)):
        if table not in GROWS_ON_READ and counts.get(table) != after.get(table):
            surprises.append(f"table {table}: {counts.get(table)} rows before, {after.get(table)} after")
    assert users_rows(engine) == users, "the users table changed"
    return sent, surprises


# -- the tests -----------------------------------------------------------------------------------------


def test_every_declared_query_parameter_resists_injection(app: FastAPI, refs: Refs, prober: Prober,
                                                           engine: Engine) -> None:
    probes = generic_probes(app, refs)
    assert sum(len(p.params) for p in probes) > 250, "the app's GET routes declare fewer query parameters"
    sent, surprises = _unchanged(engine, lambda: run(probes, prober))
    assert not surprises, f"{len(surprises)} of {sent} probes:\n" + "\n".join(surprises)


def test_standard_query_languages_resist_injection(refs: Refs, prober: Prober, engine: Engine) -> None:
    sent, surprises = _unchanged(engine, lambda: run(standard_probes(refs), prober))
    assert not surprises, f"{len(surprises)} of {sent} probes:\n" + "\n".join(surprises)


def test_probes_reach_real_data(refs: Refs, prober: Prober) -> None:
    """The harmless questions find rows, so an injection that widened them would show."""
    v, h = refs.values, prober.headers
    c = prober.clients["signed-in"]
    assert c.get("/api/3/action/package_search", params={"q": "空气"}).json()["result"]["count"] == 1
    ogc = c.get(f"/ogc/collections/{v['collection']}/items", params={"f": "json"}).json()
    assert ogc["numberReturned"] == 4
    assert len(c.get("/sta/v1.1/Things", headers=h["admin"]).json()["value"]) == 1
    rows = c.get(f"/api/hub/resources/{v['people']}/rows", params={"purpose": "probe"}, headers=h["police_staff"])
    assert rows.status_code == 200 and len(rows.json()["rows"]) == 12, rows.text
    found = c.get("/api/3/action/datastore_search_sql",
                  params={"sql": 'SELECT count(*) AS n FROM "air-quality-daily"'}).json()
    assert found["result"]["records"] == [{"n": 16}], found
    assert json.dumps(c.get("/api/hub/resources", headers=h["admin"]).json()).count('"code"') >= 2


