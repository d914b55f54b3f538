"""Fuzzing helpers (trust, issue 9): schemathesis cases sent through the test's own client, the
error format each API must answer in (RFC 9457, or a standard's own), and Hypothesis grammars for
the query languages no OpenAPI document describes (SensorThings `$filter`, CQL2, CKAN's `q`/`sql`).

Cases go through the `city` fixture's TestClient, not schemathesis' ASGI transport: that one starts
the app's lifespan on its own event loop and keeps it (clocks and all) running after the test.
Failures are collected, not raised, so Hypothesis never shrinks: every run is bounded, derandomized
(the same cases on every machine) and reports every finding at once.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

PROBLEM = "application/problem+json"
# Routes that never end (Server-Sent Events) or that end the caller's own session.
SKIPPED = {("GET", "/api/ops/stream"), ("GET", "/api/sensing/alerts/stream"), ("POST", "/api/auth/revoke")}
SETTINGS = {"deadline": None, "derandomize": True, "database": None, "print_blob": False,
            "phases": [Phase.explicit, Phase.generate], "suppress_health_check": list(HealthCheck)}


@dataclass(frozen=True)
class Finding:
    """One kind of wrong answer from one operation: where, what, and how to reproduce it."""

    operation: str  # "GET /api/…": with `kind`, the key of a test's KNOWN table
    kind: str  # "server error", "error format", "schema"
    detail: str
    request: str
    status: int
    body: str

    @property
    def key(self) -> str:
        return f"{self.operation}: {self.kind}"

    def __str__(self) -> str:
        return f"{self.key}: {self.detail}\n    {self.request}\n    -> {self.status} {self.body[:300]!r}"


class Findings:
    """Findings of a run, one per operation and kind (the first example found is kept)."""

    def __init__(self) -> None:
        self.found: dict[str, Finding] = {}
        self.calls = 0
        self.statuses: Counter[int] = Counter()  # how deep the fuzz got: 2xx are answers, not refusals

    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def add(self, operation: str, kind: str, detail: str, request: str, status: int, body: str) -> None:
        finding = Finding(operation, kind, detail, request, status, body)
        self.found.setdefault(finding.key, finding)

    def check(self, operation: str, request: str, response: Any, wrong: list[tuple[str, str]]) -> None:
        self.calls += 1
        self.statuses[response.status_code] += 1
        for kind, detail in wrong:
            self.add(operation, kind, detail, request, response.status_code, response.text)

    def call(self, operation: str, request: str | Callable[[], str], send: Callable[[], Any]) -> Any | None:
        """`send()`, or None after recording what the app did not handle (the TestClient re-raises
        it; a server would have answered 500). `request` describes what was sent."""
        try:
            return send()
        except Exception as exc:
            self.calls += 1
            self.add(operation, "server error", f"unhandled {type(exc).__name__}: {exc}"[:400],
                     request if isinstance(request, str) else request(), 500, "")
            return None


def load(document: dict[str, Any]) -> Any:
    """A schemathesis schema for `document`: no generated credentials (the caller brings its own)."""
    config = schemathesis.Config()
    config.projects.default.generation.update(with_security_parameters=False, deterministic=True,
                                              database="none")
    return schemathesis.openapi.from_dict(document, config=config)


def operations(schema: Any, skip: Iterable[tuple[str, str]] = ()) -> list[Any]:
    """Every operation of `schema` that may be fuzzed, in document order."""
    skipped = SKIPPED | set(skip)
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if (op.method.upper(), op.path) not in skipped]


# -- error formats ------------------------------------------------------------------------------------


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def problem_error(status: int, ctype: str, text: str) -> str | None:
    """What is wrong with an RFC 9457 problem document (None: nothing)."""
    if not ctype.startswith(PROBLEM):
        return f"content-type {ctype!r}, not {PROBLEM}"
    doc = _json(text)
    if not isinstance(doc, dict):
        return "not a JSON object"
    for name in ("type", "title"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            return f"no {name!r}"
    if doc.get("status") != status:
        return f"'status' {doc.get('status')!r} is not the HTTP status {status}"
    for e in doc.get("errors", []):
        if not (isinstance(e, dict) and isinstance(e.get("field"), str) and isinstance(e.get("reason"), str)):
            return f"malformed errors entry {e!r}"
    return None


def ckan_error(status: int, ctype: str, text: str) -> str | None:
    """CKAN's Action API error: `{"help", "success": false, "error": {"__type", ...}}` (JSON)."""
    doc = _json(text)
    if not ctype.startswith("application/json") or not isinstance(doc, dict):
        return f"not a CKAN JSON answer ({ctype!r})"
    if doc.get("success") is not False or not isinstance(doc.get("help"), str):
        return "no 'success': false and 'help'"
    error = doc.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("__type"), str):
        return "no 'error' object with '__type'"
    return None


def open311_error(status: int, ctype: str, text: str, fmt: str) -> str | None:
    """GeoReport v2 errors: `[{"code", "description"}]` in JSON, `<errors><error>…` in XML."""
    if fmt == "xml":
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            return "not XML"
        items = [(e.findtext("code") or "", e.findtext("description")) for e in root.findall("error")]
        if root.tag != "errors" or not items:
            return "no <errors><error>"
        if any(not code.isdigit() or not description for code, description in items):
            return "an <error> without a numeric <code> and a <description>"
        return None
    doc = _json(text)
    if not ctype.startswith("application/json") or not isinstance(doc, list) or not doc:
        return f"not a JSON list of errors ({ctype!r})"
    for e in doc:
        if not (isinstance(e, dict) and isinstance(e.get("code"), int) and isinstance(e.get("description"), str)):
            return f"malformed error {e!r}"
    return None


def ogc_error(status: int, ctype: str, text: str) -> str | None:
    """OGC API's exception (`code`, `description`) inside our problem document; never 422."""
    if status == 422:
        return "422: OGC API answers bad parameters with 400"
    wrong = problem_error(status, ctype, text)
    doc = _json(text) or {}
    if wrong is None and not (isinstance(doc.get("code"), str) and isinstance(doc.get("description"), str)):
        wrong = "no OGC 'code' and 'description'"
    return wrong


def sta_error(status: int, ctype: str, text: str) -> str | None:
    """SensorThings (FROST's shape) inside our problem document: a `message`; bad input is 400."""
    if status == 422:
        return "422: SensorThings answers bad input with 400"
    wrong = problem_error(status, ctype, text)
    if wrong is None and not isinstance((_json(text) or {}).get("message"), str):
        wrong = "no STA 'message'"
    return wrong


def error_format(path: str, status: int, ctype: str, text: str) -> str | None:
    """What is wrong with a 4xx answer for the API `path` belongs to (None: nothing)."""
    path = unquote(path)
    if status == 404 and ("\n" in path or "\r" in path):
        # Starlette's `{path:path}` does not match a line break: no route of the standard saw the
        # request, the shell's own 404 answered it (a problem document).
        return problem_error(status, ctype, text)
    if path.startswith(("/api/3/action/", "/api/action/")):
        return ckan_error(status, ctype, text)
    if path.startswith("/open311/"):
        return open311_error(status, ctype, text, "xml" if path.lower().endswith(".xml") else "json")
    if path == "/ogc" or path.startswith("/ogc/"):
        return ogc_error(status, ctype, text)
    if path == "/sta/v1.1" or path.startswith("/sta/v1.1/"):
        return sta_error(status, ctype, text)
    return problem_error(status, ctype, text)


def basic_judgement(path: str, response: Any) -> list[tuple[str, str]]:
    """A 5xx, or a 4xx not in the API's error format: (kind, detail) of each."""
    status = response.status_code
    if status >= 500:
        return [("server error", f"{status}")]
    if 400 <= status < 500:
        what = error_format(path, status, response.headers.get("content-type", ""), response.text)
        if what is not None:
            # core.web.RefuseNul answers a NUL in the URL before routing, always as RFC 9457
            kind = "NUL refusal format" if "NUL character (%00)" in response.text else "error format"
            return [(kind, f"{status}: {what}")]
    return []


# -- schemathesis cases -------------------------------------------------------------------------------


def send(client: Any, case: Any, headers: dict[str, str]) -> Any:
    """Send a schemathesis case through a Starlette TestClient, with the caller's `headers` on top."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    out: dict[str, Any] = {"headers": {**(kwargs.get("headers") or {}), **headers},
                           "params": kwargs.get("params"), "follow_redirects": False}
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    if kwargs.get("files"):  # requests turns a number into text in a form part; httpx needs text
        out["files"] = [(name, part if not isinstance(part, tuple) or isinstance(part[1], str | bytes)
                         else (part[0], json.dumps(part[1]), *part[2:])) for name, part in kwargs["files"]]
    data = kwargs.get("data")
    if isinstance(data, str | bytes):
        out["content"] = data
    elif isinstance(data, dict):  # form fields beside files: httpx takes text only
        out["data"] = {k: v if isinstance(v, str | bytes | list) else json.dumps(v) for k, v in data.items()}
    elif data is not None:
        out["data"] = data
    client.cookies = kwargs.get("cookies") or {}
    try:
        return client.request(kwargs["method"], kwargs["url"], **out)
    finally:
        client.cookies.clear()


def judge_case(case: Any, response: Any) -> list[tuple[str, str]]:
    """Everything wrong with one answer: a 5xx, a 4xx in the wrong format, a 2xx off its schema."""
    wrong = basic_judgement(case.formatted_path, response)
    if not wrong and 200 <= response.status_code < 300:
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except FailureGroup as group:
            wrong += [("schema", _failure(f)) for f in group.exceptions]
        except Failure as failure:
            wrong.append(("schema", _failure(failure)))
    return wrong


def _failure(failure: Failure) -> str:
    return f"{failure.title}: {' '.join(failure.message.split())[:300]}"


def describe(method: str, response: Any) -> str:
    """The request behind `response`, short enough for a report."""
    request = response.request
    try:
        body = request.read()[:200]
    except Exception:  # a streamed multipart body
        body = b"(stream)"
    return f"{method} {request.url} body={body!r}"


def run_strategy(strategy: st.SearchStrategy[Any], test: Callable[[Any], None], max_examples: int,
                 examples: Iterable[Any] = ()) -> None:
    """`examples`, then `max_examples` values of `strategy`, into `test` (bounded, deterministic,
    never shrunk)."""

    @hypothesis.settings(max_examples=max_examples, **SETTINGS)
    @given(value=strategy)
    def run(value: Any) -> None:
        test(value)

    for value in examples:
        run = hypothesis.example(value=value)(run)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # nothing to generate: no parameters, no body
        pass


def fuzz_operation(op: Any, callers: list[tuple[str, dict[str, str], int]], client: Any, findings: Findings,
                   *, max_examples: int, path_parameters: dict[str, Any] | None = None) -> None:
    """Generate cases of `op` (the first, third, … with `path_parameters` pinned to objects that
    exist) and send each to the callers (name, headers, quota) whose quota of cases is not used up.
    Then the first case again, for the first caller, with every integer parameter at an extreme
    (`EXTREME_INTEGERS`): a handful of random draws seldom holds one, and storage overflows there."""
    label = f"{op.method.upper()} {op.path}"
    drawn: list[Any] = []

    def sendall(case: Any, i: int, callers: list[tuple[str, dict[str, str], int]] = callers) -> None:
        for name, headers, quota in callers:
            if i >= quota:
                continue
            response = findings.call(label, lambda name=name: f"as {name}: {_curl(case)}",
                                     lambda headers=headers: send(client, case, headers))
            if response is not None:
                findings.check(label, f"as {name}: {describe(op.method.upper(), response)}", response,
                               judge_case(case, response))

    def test(case: Any) -> None:
        if path_parameters and len(drawn) % 2 == 0:  # every other case names objects that exist
            case.path_parameters = {**(case.path_parameters or {}), **path_parameters}
        drawn.append(case)
        sendall(case, len(drawn) - 1)

    run_strategy(op.as_strategy(), test, max_examples)
    extremes = integer_parameters(op)
    for value in EXTREME_INTEGERS if drawn and extremes else ():
        case = drawn[0]
        for location, names in extremes.items():
            setattr(case, location, {**(getattr(case, location) or {}), **dict.fromkeys(names, value)})
        sendall(case, 0, callers[:1])


EXTREME_INTEGERS = (2**31, 2**64)  # past PostgreSQL's integer, past any 64-bit integer


def integer_parameters(op: Any) -> dict[str, list[str]]:
    """The path and query parameters of `op` that are integers: {"path_parameters"|"query": names}."""
    out: dict[str, list[str]] = {}
    for param in op.definition.raw.get("parameters", []):
        schema = param.get("schema", {})
        kinds = [schema.get("type"), *(s.get("type") for s in schema.get("anyOf", []))]
        where = {"path": "path_parameters", "query": "query"}.get(param.get("in"))
        if "integer" in kinds and where:
            out.setdefault(where, []).append(param["name"])
    return out


def _curl(case: Any) -> str:
    try:
        return str(case.as_curl_command(base_url="http://testserver"))
    except Exception:
        return repr(case)


# -- grammars: SensorThings $filter and friends ---------------------------------------------------------

JUNK = "()',/ $@;=-:*\x00\n\\\"%&#.[]{}"


def mutated(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly well-formed text from `strategy`, sometimes cut short or with a stray character."""

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        text = draw(strategy)
        how = draw(st.sampled_from(["keep", "keep", "keep", "cut", "insert", "double"]))
        if how == "keep" or not text:
            return text
        at = draw(st.integers(0, len(text)))
        if how == "cut":
            return text[:at]
        if how == "double":
            return text[:at] + text[at:] + text[at:]
        return text[:at] + draw(st.sampled_from(JUNK)) + text[at:]

    return mutate()


def numbers() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(["0", "-1", "2147483648",
                     "9223372036854775808", "1e308", "1e999", "-0.0", "0.5", "NaN", "INF", "1.", ".5"]),
                     st.floats(allow_nan=False, allow_infinity=False).map(repr))


def quoted(quote: str = "'") -> st.SearchStrategy[str]:
    return st.text(max_size=8).map(lambda s: quote + s.replace(quote, quote * 2) + quote)


STA_PROPS = ["id", "@iot.id", "name", "description", "properties/owner", "properties/floor", "result",
             "phenomenonTime", "resultTime", "validTime", "location", "observationType", "encodingType",
             "unitOfMeasurement/symbol", "metadata", "definition", "feature", "time", "parameters/x",
             "resultQuality", "observedArea", "result/level", "Datastream/name", "Datastream/Thing/name",
             "Thing/Locations/location", "Observations/result", "Datastreams/Observations/result",
             "Locations/location", "FeatureOfInterest/feature", "nosuchproperty"]
STA_LITERALS = ["null", "true", "false", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123+08:00",
                "2026-01-01", "12:30:00", "duration'P1D'", "duration'PT-1H'", "duration'P999999999D'",
                "geography'POINT(126.5 43.8)'", "geography'POLYGON((126 43,127 43,127 44,126 44,126 43))'",
                "geography'LINESTRING(126 43,127 44)'", "geography'POINT(1000 1000)'", "geography'junk'",
                "2026-13-45T99:00:00Z", "'a''b'", "now()", "mindatetime()", "maxdatetime()"]
STA_FUNCTIONS = {
    "substringof": 2, "endswith": 2, "startswith": 2, "length": 1, "indexof": 2, "substring": 3,
    "tolower": 1, "toupper": 1, "trim": 1, "concat": 2, "year": 1, "month": 1, "day": 1, "hour": 1,
    "minute": 1, "second": 1, "fractionalseconds": 1, "date": 1, "time": 1, "totaloffsetminutes": 1,
    "round": 1, "floor": 1, "ceiling": 1, "geo.distance": 2, "geo.length": 1, "geo.intersects": 2,
    "st_equals": 2, "st_disjoint": 2, "st_touches": 2, "st_within": 2, "st_overlaps": 2, "st_crosses": 2,
    "st_intersects": 2, "st_contains": 2, "st_relate": 3, "nosuchfunction": 1,
}
STA_BINARY = ["eq", "ne", "gt", "ge", "lt", "le", "and", "or", "add", "sub", "mul", "div", "mod", "has"]


def _sta_call(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    name = st.sampled_from(sorted(STA_FUNCTIONS))
    return name.flatmap(lambda n: st.lists(inner, min_size=STA_FUNCTIONS[n], max_size=STA_FUNCTIONS[n])
                        .map(lambda args: f"{n}({','.join(args)})"))


def sta_expression() -> st.SearchStrategy[str]:
    """A `$filter` expression: mostly well-formed OData over SensorThings properties."""
    leaf = st.one_of(st.sampled_from(STA_PROPS), st.sampled_from(STA_LITERALS), numbers(), quoted())
    tree = st.recursive(leaf, lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(STA_BINARY), inner).map(" ".join),
        inner.map(lambda e: f"not {e}"), inner.map(lambda e: f"({e})"), inner.map(lambda e: f"-{e}"),
        _sta_call(inner)), max_leaves=8)
    return mutated(tree)


# Per entity set: (numeric, text, time, geometry) properties, for expressions that type-check and so
# reach the SQL they compile to (division by zero, overflow, casts) rather than stop at the parser.
STA_TYPED: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {
    "Things": (["id", "properties/floor"], ["name", "description", "properties/owner"], [],
               ["Locations/location"]),
    "Locations": (["id"], ["name", "description", "encodingType"], [], ["location"]),
    "Datastreams": (["id", "Observations/result"], ["name", "observationType", "unitOfMeasurement/symbol",
                    "Thing/name"], ["phenomenonTime", "resultTime"], ["observedArea"]),
    "Observations": (["id", "result"], ["Datastream/name", "Datastream/Thing/name"],
                     ["phenomenonTime", "resultTime", "validTime"], ["FeatureOfInterest/feature"]),
    "FeaturesOfInterest": (["id", "Observations/result"], ["name", "encodingType"], [], ["feature"]),
}


def sta_typed(entity_set: str) -> st.SearchStrategy[str]:
    """A boolean `$filter` over `entity_set` that type-checks: numbers, text, times and geometry
    each in the operators and functions that take them."""
    nums, texts, times, geos = STA_TYPED[entity_set]
    num_leaf = st.one_of(st.sampled_from(nums), numbers())
    text_leaf = st.one_of(st.sampled_from(texts), quoted()) if texts else quoted()
    time_leaf = st.sampled_from([*times, "2026-01-01T00:00:00Z", "now()", "mindatetime()", "maxdatetime()"])
    geo_leaf = st.sampled_from([g for g in STA_LITERALS if g.startswith("geography")] + geos)
    text = st.recursive(text_leaf, lambda t: st.one_of(
        st.tuples(st.sampled_from(["tolower", "toupper", "trim"]), t).map(lambda x: f"{x[0]}({x[1]})"),
        st.tuples(t, t).map(lambda x: f"concat({x[0]},{x[1]})"),
        st.tuples(t, num_leaf).map(lambda x: f"substring({x[0]},{x[1]})")), max_leaves=3)
    num = st.recursive(num_leaf, lambda n: st.one_of(
        st.tuples(n, st.sampled_from(["add", "sub", "mul", "div", "mod"]), n).map(lambda x: f"({' '.join(x)})"),
        st.tuples(st.sampled_from(["round", "floor", "ceiling"]), n).map(lambda x: f"{x[0]}({x[1]})"),
        text.map(lambda t: f"length({t})"), st.tuples(text, text).map(lambda x: f"indexof({x[0]},{x[1]})"),
        st.tuples(st.sampled_from(["year", "month", "day", "hour", "minute", "second"]), time_leaf)
        .map(lambda x: f"{x[0]}({x[1]})"),
        st.tuples(geo_leaf, geo_leaf).map(lambda x: f"geo.distance({x[0]},{x[1]})")), max_leaves=4)
    cmp = st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"])
    atom = st.one_of(
        st.tuples(num, cmp, num).map(" ".join), st.tuples(text, cmp, text).map(" ".join),
        st.tuples(time_leaf, cmp, time_leaf).map(" ".join),
        st.tuples(st.sampled_from(["startswith", "endswith", "substringof"]), text, text)
        .map(lambda x: f"{x[0]}({x[1]},{x[2]})"),
        st.tuples(st.sampled_from(["st_intersects", "st_within", "st_contains", "st_disjoint", "geo.intersects"]),
                  geo_leaf, geo_leaf).map(lambda x: f"{x[0]}({x[1]},{x[2]})"))
    return st.recursive(atom, lambda b: st.one_of(
        st.tuples(b, st.sampled_from(["and", "or"]), b).map(lambda x: f"({' '.join(x)})"),
        b.map(lambda e: f"not {e}")), max_leaves=3)


STA_SETS = ["Things", "Locations", "HistoricalLocations", "Datastreams", "MultiDatastreams", "Sensors",
            "ObservedProperties", "Observations", "FeaturesOfInterest"]
STA_NAVS = ["Thing", "Things", "Locations", "Datastream", "Datastreams", "MultiDatastream", "Sensor",
            "ObservedProperty", "Observations", "FeatureOfInterest", "HistoricalLocations", "Nope"]


def sta_expand(depth: int = 2) -> st.SearchStrategy[str]:
    """An `$expand` value: navigation paths, some with nested options."""
    nav = st.lists(st.sampled_from(STA_NAVS), min_size=1, max_size=3).map("/".join)
    if depth == 0:
        return nav
    nested = st.fixed_dictionaries({}, optional={
        "$filter": sta_expression(), "$top": numbers(), "$skip": numbers(),
        "$orderby": sta_orderby(), "$select": sta_select(), "$count": st.sampled_from(["true", "x"]),
        "$expand": st.deferred(lambda: sta_expand(depth - 1))})
    one = st.one_of(nav, st.tuples(nav, nested).map(
        lambda t: f"{t[0]}({';'.join(f'{k}={v}' for k, v in t[1].items())})"))
    return mutated(st.lists(one, min_size=1, max_size=3).map(",".join))


def sta_orderby() -> st.SearchStrategy[str]:
    one = st.tuples(st.one_of(st.sampled_from(STA_PROPS), sta_expression()),
                    st.sampled_from(["", " asc", " desc", " DESC", " sideways"])).map("".join)
    return mutated(st.lists(one, min_size=1, max_size=3).map(",".join))


def sta_select() -> st.SearchStrategy[str]:
    return mutated(st.lists(st.sampled_from([*STA_PROPS, "Datastreams", "Thing", "@iot.selfLink"]),
                            min_size=1, max_size=4).map(",".join))


def sta_request(ids: dict[str, int]) -> st.SearchStrategy[tuple[str, dict[str, str]]]:
    """(resource path, query options) of a SensorThings read: sets, entities that exist (`ids`, by
    set) or not, navigation, properties, `$value` and `$ref`."""
    key = st.one_of(st.sampled_from(sorted(ids.values())), st.sampled_from(["0", "-1", "abc", "'x'",
                    "99999999999999999999", "1.5", ""]))
    entity = st.tuples(st.sampled_from(STA_SETS), key).map(lambda t: f"{t[0]}({t[1]})")
    tail = st.sampled_from(["", "/Datastreams", "/Observations", "/Thing", "/Locations", "/name",
                            "/name/$value", "/$ref", "/Datastreams/$ref", "/properties", "/Nope", "/result"])
    path = st.one_of(st.sampled_from(STA_SETS), st.sampled_from([f"{s}/$ref" for s in STA_SETS]),
                     st.tuples(entity, tail).map("".join))
    options = st.fixed_dictionaries({}, optional={
        "$filter": sta_expression(), "$orderby": sta_orderby(), "$top": numbers(), "$skip": numbers(),
        "$count": st.sampled_from(["true", "false", "TRUE", "1"]), "$select": sta_select(),
        "$expand": sta_expand(), "$resultFormat": st.sampled_from(["dataArray", "GeoJSON", "x"]),
        "$nope": st.just("1")})
    typed = st.sampled_from(sorted(STA_TYPED)).flatmap(lambda es: st.tuples(st.just(es), st.fixed_dictionaries(
        {"$filter": sta_typed(es)}, optional={"$orderby": st.sampled_from(STA_TYPED[es][0]),
                                              "$top": st.sampled_from(["1", "3"]), "$count": st.just("true")})))
    return st.one_of(st.tuples(path, options), typed)


# -- grammars: CQL2 (OGC API - Features Part 3) --------------------------------------------------------

CQL2_PROPS = ["name", "aqi", "kind", "at", "geometry", "id", "nosuch", '"name"']
CQL2_LITERALS = ["'站1'", "'a'", "''", "NULL", "TRUE", "false", "TIMESTAMP('2024-06-01T00:00:00Z')",
                 "DATE('2024-06-01')", "TIMESTAMP('junk')", "DATE('2024-02-30')",
                 "INTERVAL('2024-06-01','..')", "INTERVAL('..','2024-06-02T00:00:00Z')",
                 "POINT(126.5 43.8)", "POINT(1000 1000)", "POINT(126.5)", "BBOX(126.4,43.7,126.6,43.9)",
                 "BBOX(1,2,3)", "POLYGON((126 43,127 43,127 44,126 44,126 43))", "POLYGON((0 0,1 1))",
                 "LINESTRING(126 43,127 44)", "MULTIPOINT((126 43),(127 44))", "ENVELOPE(1,2,3,4)",
                 "GEOMETRYCOLLECTION(POINT(1 2))", "('a','b')", "(1,2,3)"]
CQL2_COMPARE = ["=", "<>", "<", ">", "<=", ">=", "LIKE", "NOT LIKE", "IN", "NOT IN", "+", "-", "*", "/",
                "%", "div", "^", "AND", "OR"]
CQL2_FUNCTIONS = {
    "CASEI": 1, "ACCENTI": 1, "S_INTERSECTS": 2, "S_WITHIN": 2, "S_CONTAINS": 2, "S_DISJOINT": 2,
    "S_EQUALS": 2, "S_TOUCHES": 2, "S_OVERLAPS": 2, "S_CROSSES": 2, "T_BEFORE": 2, "T_AFTER": 2,
    "T_INTERSECTS": 2, "T_DURING": 2, "T_EQUALS": 2, "T_MEETS": 2, "A_CONTAINS": 2, "UPPER": 1, "NOPE": 1,
}


def cql2_text() -> st.SearchStrategy[str]:
    """A CQL2 text filter over the fuzz layer: mostly well-formed, sometimes broken."""
    leaf = st.one_of(st.sampled_from(CQL2_PROPS), st.sampled_from(CQL2_LITERALS), numbers(), quoted())
    call = st.sampled_from(sorted(CQL2_FUNCTIONS))

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, st.sampled_from(CQL2_COMPARE), inner).map(" ".join),
            st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[2]}"),
            inner.map(lambda e: f"{e} IS NULL"), inner.map(lambda e: f"{e} IS NOT NULL"),
            inner.map(lambda e: f"NOT ({e})"), inner.map(lambda e: f"({e})"),
            call.flatmap(lambda n: st.lists(inner, min_size=CQL2_FUNCTIONS[n], max_size=CQL2_FUNCTIONS[n])
                         .map(lambda args: f"{n}({', '.join(args)})")))

    return mutated(st.recursive(leaf, extend, max_leaves=8))


def cql2_typed() -> st.SearchStrategy[str]:
    """A CQL2 text filter over the fuzz layer that type-checks, so it reaches the SQL it compiles to."""
    num = st.recursive(st.one_of(st.just("aqi"), numbers()), lambda n: st.tuples(
        n, st.sampled_from(["+", "-", "*", "/"]), n).map(lambda x: f"({' '.join(x)})"), max_leaves=4)
    text = st.one_of(st.sampled_from(["name", "kind", "CASEI(name)", "ACCENTI(kind)"]), quoted())
    time = st.sampled_from(["at", "TIMESTAMP('2024-06-01T03:00:00Z')", "DATE('2024-06-01')"])
    geo = st.sampled_from(["geometry", "POINT(126.52 43.82)", "BBOX(126.4,43.7,126.6,43.9)",
                           "POLYGON((126 43,127 43,127 44,126 44,126 43))", "LINESTRING(126 43,127 44)"])
    cmp = st.sampled_from(["=", "<>", "<", ">", "<=", ">="])
    atom = st.one_of(
        st.tuples(num, cmp, num).map(" ".join), st.tuples(text, cmp, text).map(" ".join),
        st.tuples(time, cmp, time).map(" ".join), st.tuples(text, quoted()).map(lambda x: f"{x[0]} LIKE {x[1]}"),
        st.tuples(num, num, num).map(lambda x: f"{x[0]} BETWEEN {x[1]} AND {x[2]}"),
        st.tuples(num, st.lists(numbers(), min_size=1, max_size=3)).map(lambda x: f"{x[0]} IN ({','.join(x[1])})"),
        st.sampled_from(["name IS NULL", "aqi IS NOT NULL"]),
        st.tuples(st.sampled_from(["T_BEFORE", "T_AFTER", "T_INTERSECTS"]), time, time)
        .map(lambda x: f"{x[0]}({x[1]}, {x[2]})"),
        st.tuples(st.sampled_from(["S_INTERSECTS", "S_WITHIN", "S_CONTAINS", "S_DISJOINT"]), geo, geo)
        .map(lambda x: f"{x[0]}({x[1]}, {x[2]})"))
    return st.recursive(atom, lambda b: st.one_of(
        st.tuples(b, st.sampled_from(["AND", "OR"]), b).map(lambda x: f"({' '.join(x)})"),
        b.map(lambda e: f"NOT ({e})")), max_leaves=3)


def cql2_json() -> st.SearchStrategy[str]:
    """A CQL2 JSON filter: `{"op", "args"}` trees over properties and literals."""
    leaf = st.one_of(
        st.sampled_from(CQL2_PROPS).map(lambda p: {"property": p}), st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False), st.text(max_size=6), st.booleans(), st.none(),
        st.just({"timestamp": "2024-06-01T00:00:00Z"}), st.just({"date": "2024-06-01"}),
        st.just({"interval": ["2024-06-01", ".."]}), st.just({"bbox": [126.4, 43.7, 126.6, 43.9]}),
        st.just({"type": "Point", "coordinates": [126.5, 43.8]}), st.just({"type": "Point"}))
    ops = ["=", "<>", "<", ">", "<=", ">=", "like", "between", "in", "isNull", "and", "or", "not",
           "casei", "accenti", "s_intersects", "s_within", "t_before", "t_intersects", "+", "/", "nope"]
    tree = st.recursive(leaf, lambda inner: st.one_of(
        st.fixed_dictionaries({"op": st.sampled_from(ops), "args": st.lists(inner, max_size=3)}),
        st.lists(inner, max_size=3)), max_leaves=8)
    return mutated(tree.map(json.dumps))


CRS = ["http://www.opengis.net/def/crs/OGC/1.3/CRS84", "http://www.opengis.net/def/crs/EPSG/0/4326",
       "http://www.opengis.net/def/crs/EPSG/0/4490", "http://www.opengis.net/def/crs/EPSG/0/3857",
       "http://www.opengis.net/def/crs/EPSG/0/999999", "EPSG:4326", "junk", ""]


def ogc_items_query() -> st.SearchStrategy[dict[str, str]]:
    """Query parameters of `/ogc/collections/{id}/items`, the standard's and a few stray ones."""
    number_list = st.lists(numbers(), min_size=0, max_size=7).map(",".join)
    instant = st.sampled_from(["2024-06-01T00:00:00Z", "2024-06-01", "2024-06-01T00:00:00+08:00", "..", "",
                               "2024-13-01", "junk", "2024-06-01T25:00:00Z"])
    typed = st.fixed_dictionaries({"filter": cql2_typed()}, optional={
        "limit": st.sampled_from(["1", "5", "10000"]), "bbox": st.just("126.4,43.7,126.6,43.9"),
        "datetime": st.sampled_from(["2024-06-01T00:00:00Z/..", "../2024-06-01T03:00:00Z"]),
        "crs": st.sampled_from(CRS[:4]), "filter-crs": st.sampled_from(CRS[:3])})
    return typed | st.fixed_dictionaries({}, optional={
        "bbox": mutated(number_list), "bbox-crs": st.sampled_from(CRS),
        "datetime": st.one_of(instant, st.tuples(instant, instant).map("/".join)),
        "limit": numbers(), "offset": numbers(), "crs": st.sampled_from(CRS), "filter-crs": st.sampled_from(CRS),
        "filter": st.one_of(cql2_typed(), cql2_text(), cql2_json()),
        "filter-lang": st.sampled_from(["cql2-text", "cql2-json", "ecql", ""]),
        "f": st.sampled_from(["json", "geojson", "xml"]), "sortby": st.sampled_from(["+name", "-aqi", "x"]),
        "name": st.text(max_size=6), "aqi": numbers(), "kind": st.text(max_size=3),
        "purpose": st.text(max_size=20)})


# -- grammars: CKAN -------------------------------------------------------------------------------------


def ckan_data(resource_id: str, dataset: str) -> st.SearchStrategy[dict[str, Any]]:
    """A CKAN action's data dict: the parameters CKAN's actions read, with values near and far from
    what they expect (`q`/`fq` Solr syntax, `sort`, `filters`, `sql`, paging)."""
    solr = mutated(st.lists(st.one_of(
        st.sampled_from(["*:*", "空气", "name:air*", "tags:PM2.5", "organization:220200-hbj", "-res_format:CSV",
                         "metadata_modified:[2020-01-01T00:00:00Z TO NOW]", "AND", "OR", "NOT", "(", ")",
                         "title:\"空气 质量\"", "num_resources:[1 TO *]", "groups:environment", "x:y:z"]),
        st.text(max_size=5)), max_size=4).map(" ".join))
    sql = mutated(st.tuples(
        st.sampled_from(["SELECT * FROM", "SELECT count(*) FROM", "SELECT aqi, district FROM",
                         "SELECT avg(aqi) FROM", "DELETE FROM", "SELECT 1/0 FROM", "WITH x AS (SELECT 1) SELECT * FROM"]),
        st.sampled_from([f'"{resource_id}"', resource_id, '"nope"', "pg_catalog.pg_tables", "sqlite_master"]),
        st.sampled_from(["", " WHERE aqi > 50", " WHERE district = '昌邑区'", " ORDER BY aqi DESC LIMIT 5",
                         " WHERE aqi > 1e400", " GROUP BY district", " WHERE aqi / 0 > 1", "; DROP TABLE x",
                         " WHERE day > '2026-11-02'", " LIMIT 99999999999999999999"])).map(" ".join))
    anything = st.one_of(st.text(max_size=10), numbers(), st.booleans(), st.none(),
                         st.lists(st.text(max_size=4), max_size=3),
                         st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
    values = {
        "id": st.sampled_from([dataset, resource_id, "nope", "", "../x"]), "name": st.sampled_from([dataset, "x"]),
        "resource_id": st.sampled_from([resource_id, dataset, "nope", ""]), "q": solr, "fq": solr,
        "sort": mutated(st.sampled_from(["aqi desc", "name asc", "score desc, metadata_modified desc",
                                         "aqi", "nope desc", "aqi up"])),
        "rows": numbers(), "start": numbers(), "limit": numbers(), "offset": numbers(),
        "filters": st.one_of(st.just('{"district": "昌邑区"}'), st.just('{"aqi": [30, 37]}'),
                             st.just('{"nope": 1}'), st.text(max_size=8),
                             st.dictionaries(st.sampled_from(["district", "aqi", "nope"]), anything, max_size=2)),
        "fields": st.sampled_from(["aqi,district", "nope", "", "_id"]), "distinct": st.sampled_from(["true", "x"]),
        "include_total": st.sampled_from(["true", "false", "2"]), "plain": st.sampled_from(["true", "false"]),
        "sql": sql, "facet.field": st.sampled_from(['["tags"]', '["nope"]', "tags", "[1]"]),
        "facet.limit": numbers(), "all_fields": st.sampled_from(["true", "1"]), "include_datasets": st.booleans(),
        "records_format": st.sampled_from(["objects", "lists", "csv", "tsv", "nope"]),
        "use_default_schema": st.booleans(), "include_private": st.booleans(), "query": st.text(max_size=6),
    }
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, anything) if k in ("q", "rows", "id") else v
                                               for k, v in values.items()})
