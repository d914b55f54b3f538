"""SensorThings query options (查询参数), property-tested: any text in `$filter`, `$orderby`,
`$expand`, `$select`, `$top`, `$skip` either parses or fails as `StaQueryError` — over HTTP a 400
problem document with FROST's `message` naming the option, never a 5xx — and generated filters on
result, phenomenonTime and resultTime select, on SQLite and PostgreSQL, exactly the Observations a
Python reference selects over generated readings; generated `$orderby` orders them as Python does.

The reference follows the module's choice, which is FROST-Server's: SQL three-valued logic (a
comparison with a missing resultTime is unknown, and so is its negation; `eq null`/`ne null` test
for it), date parts in UTC."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityos.core.errors import Invalid
from cityos.sensing import sta_query
from cityos.sensing.sta_query import StaQueryError
from tests.conftest import City
from tests.sensing.helpers_sta import S, app, thing_body  # noqa: F401  (app: with the STA router)

UTC = dt.UTC
T0 = int(dt.datetime(2025, 3, 1, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000


def examples(n: int) -> settings:
    """Reproducible in CI (derandomized), no example database in the repo."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- any text --------------------------------------------------------------------------------------

WORDS = ["result", "phenomenonTime", "resultTime", "id", "properties/a", "Datastream/name", "Datastream/Thing/id",
         "eq", "ne", "gt", "ge", "lt", "le", "and", "or", "not", "add", "sub", "mul", "div", "mod", "(", ")", ",",
         "-", "'x'", "''", "'", "1", "2.5", "1e308", "1e309", "-0", "true", "null", "2026-11-21T10:00:00Z",
         "2026-11-21", "10:00:00", "duration'P1D'", "duration'P99999999999D'", "geography'POINT(1 2)'",
         "geometry'POLYGON((0 0,1 0,1 1,0 0))'", "year(", "round(", "substringof(", "substring(", "geo.distance(",
         "st_relate(", "now()", "mindatetime()", "/", ";", "=", "$top=1", "$filter=", "$expand=", "Things",
         "Datastreams", "Observations", "Thing", "asc", "desc", "DESC", "$select=id", "$orderby=", " ", "\x00", "中",
         "²", "١", "9223372036854775807", "9223372036854775808", "phenomenonTime add duration'P3650000D'"]
soup = st.lists(st.sampled_from(WORDS), max_size=12)
texts = st.one_of(soup.map(" ".join), soup.map("".join), st.text(max_size=40))
OPTIONS = ["$filter", "$orderby", "$expand", "$select", "$top", "$skip", "$count", "$resultFormat"]


@examples(400)
@given(texts)
def test_any_text_parses_or_fails_as_a_query_error(text: str) -> None:
    for parse in (sta_query.parse_filter, sta_query.parse_orderby, sta_query.parse_select,
                  sta_query.parse_expand):
        try:
            parse(text)
        except StaQueryError as exc:
            assert exc.status == 400 and exc.errors[0].reason
    try:
        sta_query.parse_options({option: text for option in OPTIONS})
    except StaQueryError as exc:
        assert {e.field for e in exc.errors} <= set(OPTIONS)
    try:
        node = sta_query.parse_filter(text)
    except Invalid:
        return
    assert sta_query.parse_filter(sta_query.to_text(node)) == node  # what parses prints back the same


@examples(30)
@given(st.dictionaries(st.sampled_from(OPTIONS), texts, min_size=1, max_size=3),
       st.sampled_from(["Observations", "Things", "Datastreams(1)/Observations", "Things(²)", "Things(١)"]))
def test_any_query_over_http_is_a_page_or_a_400_in_sta_format(client: TestClient, city: City,
                                                               params: dict[str, str], path: str) -> None:
    r = client.get(f"{S}/{path}", params=params, headers=city.headers("env_staff"))
    if r.status_code == 200:
        assert "value" in r.json() or "@iot.id" in r.json()
        return
    assert r.status_code in (400, 404), (params, r.status_code, r.text)
    doc = r.json()
    assert r.headers["content-type"].startswith("application/problem+json") and doc["detail"]
    if r.status_code == 400:
        assert doc["errors"][0]["field"] in [*OPTIONS, "request"], doc
    if "NUL character" not in doc["detail"]:  # core.web.RefuseNul answers before the STA router
        assert doc["message"] == doc["detail"]


# -- generated readings and filters ------------------------------------------------------------------

Reading = dict[str, Any]  # {"t": phenomenonTime ms, "result": number, "rt": resultTime ms or None}

results = st.one_of(st.integers(-20, 20), st.integers(-40, 40).map(lambda n: n / 2))
moments = st.integers(0, 60 * DAY)  # ms after T0: two months, to the millisecond
readings = st.lists(st.fixed_dictionaries({"t": moments, "result": results,
                                           "rt": st.none() | moments}),
                    min_size=1, max_size=8, unique_by=lambda r: r["t"])


def iso(ms: int, east8: bool) -> str:
    at = dt.datetime.fromtimestamp(T0 / 1000, UTC) + dt.timedelta(milliseconds=ms)
    if east8:
        return at.astimezone(dt.timezone(dt.timedelta(hours=8))).isoformat(timespec="milliseconds")
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}
PARTS = {"year": "%Y", "month": "%m", "day": "%d", "hour": "%H", "minute": "%M"}
op = st.sampled_from(sorted(OPS))
# A filter is (text, reference): the reference maps a reading to True, False or None (unknown).
Filter = tuple[str, Callable[[Reading], bool | None]]


def _time_value(name: str, r: Reading) -> int | None:
    return r["t"] if name == "phenomenonTime" else r["rt"]


def compare_time(name: str, o: str, ms: int, east8: bool) -> Filter:
    def ref(r: Reading) -> bool | None:
        v = _time_value(name, r)
        return None if v is None else OPS[o](v, ms)
    return f"{name} {o} {iso(ms, east8)}", ref


def compare_result(arith: tuple[str, int] | None, o: str, x: float) -> Filter:
    if arith is None:
        return f"result {o} {x!r}", lambda r: OPS[o](r["result"], x)
    fn, k = arith
    apply = {"add": lambda v: v + k, "sub": lambda v: v - k, "mul": lambda v: v * k}[fn]
    return f"result {fn} {k} {o} {x!r}", lambda r: OPS[o](apply(r["result"]), x)


def rounded(fn: str, o: str, n: int) -> Filter:
    f = math.floor if fn == "floor" else math.ceil
    return f"{fn}(result) {o} {n}", lambda r: OPS[o](f(r["result"]), n)


def shifted(minutes: int, o: str, ms: int) -> Filter:
    word = "add" if minutes >= 0 else "sub"
    return (f"phenomenonTime {word} duration'PT{abs(minutes)}M' {o} {iso(ms, False)}",
            lambda r: OPS[o](r["t"] + minutes * 60_000, ms))


def part(fn: str, name: str, o: str, n: int) -> Filter:
    def ref(r: Reading) -> bool | None:
        v = _time_value(name, r)
        if v is None:
            return None
        at = dt.datetime.fromtimestamp(T0 / 1000, UTC) + dt.timedelta(milliseconds=v)
        return OPS[o](int(at.strftime(PARTS[fn])), n)
    return f"{fn}({name}) {o} {n}", ref


def is_null(o: str) -> Filter:
    return f"resultTime {o} null", lambda r: (r["rt"] is None) == (o == "eq")


atoms = st.one_of(
    st.builds(compare_time, st.sampled_from(["phenomenonTime", "resultTime"]), op, moments, st.booleans()),
    st.builds(compare_result, st.none() | st.tuples(st.sampled_from(["add", "sub", "mul"]), st.integers(-3, 3)),
              op, results),
    st.builds(rounded, st.sampled_from(["floor", "ceiling"]), op, st.integers(-10, 10)),
    st.builds(shifted, st.integers(-2000, 2000), op, moments),
    st.builds(part, st.sampled_from(sorted(PARTS)), st.sampled_from(["phenomenonTime", "resultTime"]), op,
              st.integers(0, 31)),
    st.builds(is_null, st.sampled_from(["eq", "ne"])))


def _not(f: Filter) -> Filter:
    def ref(r: Reading) -> bool | None:
        v = f[1](r)
        return None if v is None else not v
    return f"not ({f[0]})", ref


def _join(word: str, a: Filter, b: Filter) -> Filter:
    def ref(r: Reading) -> bool | None:
        x, y = a[1](r), b[1](r)
        if word == "and":
            return False if x is False or y is False else (None if x is None or y is None else True)
        return True if x is True or y is True else (None if x is None or y is None else False)
    return f"({a[0]}) {word} ({b[0]})", ref


filters = st.recursive(atoms, lambda inner: st.one_of(
    st.builds(_not, inner), st.builds(_join, st.sampled_from(["and", "or"]), inner, inner)), max_leaves=4)
orderings = st.lists(st.tuples(st.sampled_from(["result", "phenomenonTime", "floor(result)"]),
                               st.sampled_from(["", " asc", " desc", " DESC"])),
                     min_size=1, max_size=2, unique_by=lambda k: k[0])


def _ms(text: str) -> int:
    """A phenomenonTime as answered, in ms after T0 (exactly: no float on the way)."""
    at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (at - dt.datetime.fromtimestamp(T0 / 1000, UTC)) // dt.timedelta(milliseconds=1)


@examples(14)
@given(readings, st.lists(filters, min_size=4, max_size=4), orderings)
def test_generated_filters_select_what_the_reference_selects(
        client: TestClient, city: City, obs: list[Reading], conditions: list[Filter],
        order: list[tuple[str, str]]) -> None:
    h = city.headers("env_staff")
    thing = client.post(f"{S}/Things", json=thing_body(), headers=h)
    assert thing.status_code == 201, thing.text
    ds = client.get(f"{S}/Things({thing.json()['@iot.id']})/Datastreams", headers=h).json()["value"][0]["@iot.id"]
    rows = [[iso(r["t"], False), r["result"], None if r["rt"] is None else iso(r["rt"], False)] for r in obs]
    made = client.post(f"{S}/CreateObservations", headers=h, json=[{
        "Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result", "resultTime"], "dataArray": rows}])
    assert made.status_code == 201 and "error" not in made.json(), made.text
    url = f"{S}/Datastreams({ds})/Observations"

    for text, ref in conditions:
        r = client.get(url, params={"$filter": text, "$top": 100}, headers=h)
        assert r.status_code == 200, (text, r.text)
        got = sorted(_ms(o["phenomenonTime"]) for o in r.json()["value"])
        assert got == sorted(x["t"] for x in obs if ref(x) is True), text

    orderby = ",".join(name + direction for name, direction in order)
    r = client.get(url, params={"$orderby": f"{orderby},phenomenonTime", "$top": 100}, headers=h)
    assert r.status_code == 200, (orderby, r.text)
    key = {"result": lambda x: x["result"], "phenomenonTime": lambda x: x["t"],
           "floor(result)": lambda x: math.floor(x["result"])}
    expected = sorted(obs, key=lambda x: x["t"])  # the last key; stable sorts keep it among ties
    for name, direction in reversed(order):
        expected.sort(key=key[name], reverse="desc" in direction.lower())
    assert [_ms(o["phenomenonTime"]) for o in r.json()["value"]] == [x["t"] for x in expected], orderby
