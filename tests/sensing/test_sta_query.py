"""SensorThings query options: the grammar, its errors, and filters run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import shapely
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from cityos.core.errors import Invalid
from cityos.sensing.sta_query import (
    BinOp,
    Call,
    Expand,
    Field,
    Literal,
    Neg,
    Not,
    Path,
    QueryOptions,
    StaQueryError,
    compile_expr,
    compile_filter,
    parse_expand,
    parse_filter,
    parse_options,
    parse_orderby,
    parse_select,
    register_sqlite_functions,
    sta_geo,
    sta_geo_distance,
    sta_geo_length,
    to_text,
)

UTC = dt.UTC


def P(*parts: str) -> Path:
    return Path(parts)


def N(value: int | float) -> Literal:
    return Literal(value, "number")


def S(value: str) -> Literal:
    return Literal(value, "string")


# -- parsing -----------------------------------------------------------------------------------------

PARSES = [
    # the examples of OGC 18-088
    ("result le 3.5 and Datastream/id eq 1",
     BinOp("and", BinOp("le", P("result"), N(3.5)), BinOp("eq", P("Datastream", "id"), N(1)))),
    ("substringof('humid', name)", Call("substringof", (S("humid"), P("name")))),
    ("Thing/properties/owner eq 'alice'", BinOp("eq", P("Thing", "properties", "owner"), S("alice"))),
    # precedence: or < and < not < comparison < add < mul < unary
    ("a or b and c", BinOp("or", P("a"), BinOp("and", P("b"), P("c")))),
    ("(a or b) and c", BinOp("and", BinOp("or", P("a"), P("b")), P("c"))),
    ("not a eq 1", Not(BinOp("eq", P("a"), N(1)))),
    ("not not a", Not(Not(P("a")))),
    ("a add b mul c eq d", BinOp("eq", BinOp("add", P("a"), BinOp("mul", P("b"), P("c"))), P("d"))),
    ("a sub b sub c", BinOp("sub", BinOp("sub", P("a"), P("b")), P("c"))),
    ("a div b mod c", BinOp("mod", BinOp("div", P("a"), P("b")), P("c"))),
    ("-a mul -3", BinOp("mul", Neg(P("a")), N(-3))),
    ("- (a add 1)", Neg(BinOp("add", P("a"), N(1)))),
    # literals
    ("x eq 1.5e3", BinOp("eq", P("x"), N(1500.0))),
    ("x eq -2.5E-1", BinOp("eq", P("x"), N(-0.25))),
    ("x eq 007", BinOp("eq", P("x"), N(7))),
    ("x eq 'it''s'", BinOp("eq", P("x"), S("it's"))),
    ("x eq ''", BinOp("eq", P("x"), S(""))),
    ("x eq true or x eq false or x eq null",
     BinOp("or", BinOp("or", BinOp("eq", P("x"), Literal(True, "bool")), BinOp("eq", P("x"), Literal(False, "bool"))),
           BinOp("eq", P("x"), Literal(None, "null")))),
    ("t gt 2026-11-21T10:00:00Z",
     BinOp("gt", P("t"), Literal(dt.datetime(2026, 11, 21, 10, tzinfo=UTC), "datetime"))),
    ("t gt 2026-11-21T10:00:00.123+08:00",
     BinOp("gt", P("t"), Literal(dt.datetime(2026, 11, 21, 2, 0, 0, 123000, tzinfo=UTC), "datetime"))),
    ("t gt 2026-11-21T10:00-05:30",
     BinOp("gt", P("t"), Literal(dt.datetime(2026, 11, 21, 15, 30, tzinfo=UTC), "datetime"))),
    # a "+" the client forgot to encode arrives as a space
    ("t gt 2026-11-21T10:00:00 08:00",
     BinOp("gt", P("t"), Literal(dt.datetime(2026, 11, 21, 2, tzinfo=UTC), "datetime"))),
    ("t ge 2026-11-21", BinOp("ge", P("t"), Literal(dt.date(2026, 11, 21), "date"))),
    ("time(t) lt 10:30", BinOp("lt", Call("time", (P("t"),)), Literal(dt.time(10, 30), "time"))),
    ("t gt now() sub duration'P1DT2H30M'",
     BinOp("gt", P("t"), BinOp("sub", Call("now", ()),
                               Literal(dt.timedelta(days=1, hours=2, minutes=30), "duration")))),
    ("d eq -duration'PT1.5S'", BinOp("eq", P("d"), Literal(-dt.timedelta(seconds=1.5), "duration"))),
    ("st_within(location, geography'POLYGON((30 10, 10 20, 20 40, 40 40, 30 10))')",
     Call("st_within", (P("location"), Literal(shapely.from_wkt("POLYGON((30 10, 10 20, 20 40, 40 40, 30 10))"),
                                                "geometry")))),
    ("geo.intersects(location, geometry'SRID=4326;POINT(1 2)')",
     Call("geo.intersects", (P("location"), Literal(shapely.Point(1, 2), "geometry")))),
    # functions: names case-insensitive, every arity
    ("SubStringOf('a', name)", Call("substringof", (S("a"), P("name")))),
    ("Geo.Distance(location, geography'POINT(1 2)') lt 3",
     BinOp("lt", Call("geo.distance", (P("location"), Literal(shapely.Point(1, 2), "geometry"))), N(3))),
    ("substring(name, 1) eq 'x' and substring(name, 1, 2) eq 'y'",
     BinOp("and", BinOp("eq", Call("substring", (P("name"), N(1))), S("x")),
           BinOp("eq", Call("substring", (P("name"), N(1), N(2))), S("y")))),
    ("st_relate(a, b, 'T*T***FF*')", Call("st_relate", (P("a"), P("b"), S("T*T***FF*")))),
    ("mindatetime() lt maxdatetime()", BinOp("lt", Call("mindatetime", ()), Call("maxdatetime", ()))),
    ("year(concat(tolower(trim(a)), toupper(b)))",
     Call("year", (Call("concat", (Call("tolower", (Call("trim", (P("a"),)),)), Call("toupper", (P("b"),)))),))),
    # paths: unicode names, keywords after a slash are names
    ("properties/名称 eq '空气站'", BinOp("eq", P("properties", "名称"), S("空气站"))),
    ("properties/add eq properties/null", BinOp("eq", P("properties", "add"), P("properties", "null"))),
    ("  a  eq\t1 ", BinOp("eq", P("a"), N(1))),
]


@pytest.mark.parametrize(("text", "tree"), PARSES, ids=[p[0][:40] for p in PARSES])
def test_parse_filter(text: str, tree: object) -> None:
    assert parse_filter(text) == tree


@pytest.mark.parametrize("text", [p[0] for p in PARSES], ids=[p[0][:40] for p in PARSES])
def test_to_text_round_trips(text: str) -> None:
    node = parse_filter(text)
    assert parse_filter(to_text(node)) == node


def test_every_function_of_the_standard_parses() -> None:
    calls = ["substringof(a,b)", "endswith(a,b)", "startswith(a,b)", "length(a)", "indexof(a,b)",
             "substring(a,1)", "tolower(a)", "toupper(a)", "trim(a)", "concat(a,b)", "year(t)", "month(t)",
             "day(t)", "hour(t)", "minute(t)", "second(t)", "fractionalseconds(t)", "date(t)", "time(t)",
             "totaloffsetminutes(t)", "now()", "mindatetime()", "maxdatetime()", "round(r)", "floor(r)",
             "ceiling(r)", "geo.distance(g,h)", "geo.length(g)", "geo.intersects(g,h)", "st_equals(g,h)",
             "st_disjoint(g,h)", "st_touches(g,h)", "st_within(g,h)", "st_overlaps(g,h)", "st_crosses(g,h)",
             "st_intersects(g,h)", "st_contains(g,h)", "st_relate(g,h,'T********')"]
    for call in calls:
        node = parse_filter(call)
        assert isinstance(node, Call) and node.name == call.split("(")[0]


def test_long_or_lists_are_fine() -> None:
    text = " or ".join(f"id eq {i}" for i in range(500))
    node = parse_filter(text)
    assert to_text(node) == text


def test_parse_orderby() -> None:
    assert parse_orderby("phenomenonTime desc") == [(P("phenomenonTime"), True)]
    assert parse_orderby("result desc, year(t) , name asc") == [
        (P("result"), True), (Call("year", (P("t"),)), False), (P("name"), False)]
    assert parse_orderby("result add 1") == [(BinOp("add", P("result"), N(1)), False)]


def test_parse_select() -> None:
    assert parse_select("id,name") == ["id", "name"]
    assert parse_select(" result , phenomenonTime ,result") == ["result", "phenomenonTime"]
    assert parse_select("@iot.id,名称") == ["id", "名称"]
    assert parse_select("*") == []


def test_parse_expand_of_the_standard() -> None:
    got = parse_expand("Datastreams($expand=Observations($top=3;$orderby=phenomenonTime desc);$select=name)")
    obs = Expand(("Observations",), QueryOptions(top=3, orderby=((P("phenomenonTime"), True),)))
    assert got == (Expand(("Datastreams",), QueryOptions(select=("name",), expand=(obs,))),)


def test_parse_expand_nested_paths_and_all_options() -> None:
    got = parse_expand("Datastreams($select=id,name;$expand=Observations($top=5;$orderby=phenomenonTime desc)),"
                       " Locations , Datastreams/Sensor($filter=name eq 'a;b,(c)' and x eq 1;$skip=2;$count=true)")
    assert [e.path for e in got] == [("Datastreams",), ("Locations",), ("Datastreams", "Sensor")]
    assert got[0].options.select == ("id", "name")
    assert got[0].options.expand[0].options.top == 5
    assert got[1].options == QueryOptions()
    sensor = got[2].options
    assert sensor.filter == BinOp("and", BinOp("eq", P("name"), S("a;b,(c)")), BinOp("eq", P("x"), N(1)))
    assert (sensor.skip, sensor.count) == (2, True)


def test_parse_options() -> None:
    got = parse_options({"$filter": "result gt 1", "$orderby": "id", "$select": "id,result", "$top": "20",
                         "$skip": "40", "$count": "true", "$resultFormat": "dataArray",
                         "$expand": "Datastream", "page": "ignored", "f": "json"})
    assert got == QueryOptions(filter=BinOp("gt", P("result"), N(1)), orderby=((P("id"), False),),
                               select=("id", "result"), expand=(Expand(("Datastream",), QueryOptions()),),
                               top=20, skip=40, count=True, result_format="dataArray")
    assert parse_options({}) == QueryOptions()
    assert parse_options({"$top": "0", "$count": "false"}) == QueryOptions(top=0)
    assert parse_options({"$top": "50"}, max_top=50).top == 50


# -- parse errors ------------------------------------------------------------------------------------

DEEP = "(" * 60 + "a" + ")" * 60
BAD_FILTERS = [
    "", "   ", "name eq", "name eq 'abc", "name = 'x'", "name == 'x'", "a EQ 1", "a eq 1 AND b eq 2",
    "foo(1)", "geo.foo(a)", "substringof('a')", "substring(a)", "substring(a, 1, 2, 3)", "now(1)",
    "st_relate(a, b)", "(a eq 1", "a eq 1)", "a eq (", "()", "a eq 1 2", "a b", ",", "a eq ,",
    "t eq 2026-11-21T10:00:00", "t eq 2026-13-01T00:00:00Z", "t eq 2026-02-30", "t eq 2026-11-21T25:00:00Z",
    "t eq 2026-11-21T10:00:60Z", "t eq 2026-11-21T1", "t eq 25:61", "duration'P1Y' eq d",
    "d eq duration'P1M'", "d eq duration'xyz'", "d eq duration'P'", "d eq duration'PT'",
    "d eq duration'P99999999999D'", "st_within(l, geography'POINT(1)')", "st_within(l, geography'')",
    "st_within(l, geography'SRID=3857;POINT(1 2)')", "st_within(l, geography'POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))')",
    "st_within(l, geography'POINT EMPTY')", "st_within(l, geography'POINT(1e400 1)')", "st_within(l, geography'POINT(1 2)", "t eq datetime'2026-01-01'",
    "a/b/", "a/'x' eq 1", "a/1 eq 1", "a.b eq 1", "a/b(1)", "12abc eq 1", "1.2.3 eq 1", "1. eq a",
    "99999999999999999999 eq a", "9223372036854775808 eq a", "1e999 eq a", '"x" eq a', "a eq 'x' & b",
    "a ! b", "a < b", "a ~ b", "a eq 1;", "a-1 eq 0", DEEP, "not " * 60 + "a", "-" * 60 + "a",
    " add ".join(["1"] * 60) + " eq 1", "substringof(" * 50 + "a" + ")" * 50, "a eq 1 or", "and a",
    "a eq -", "a/ eq 1", "/a eq 1", "'a''", "a eq geography'POINT(1 2)'x", "a eq 1e", "a eq .5",
]


@pytest.mark.parametrize("text", BAD_FILTERS)
def test_bad_filter_is_invalid(text: str) -> None:
    with pytest.raises(StaQueryError) as err:
        parse_filter(text)
    assert isinstance(err.value, Invalid) and err.value.status == 400
    assert err.value.errors[0].field == "$filter"
    reason = err.value.errors[0].reason
    assert " / " in reason and "character" in reason and "第" in reason  # bilingual, with the position


def test_error_names_the_position_and_the_cause() -> None:
    with pytest.raises(StaQueryError) as err:
        parse_filter("name eq 'abc")
    assert err.value.extra == {"position": 9}
    assert "unterminated string" in err.value.errors[0].reason
    with pytest.raises(StaQueryError) as err:
        parse_filter("result gt 1 AND name eq 'x'")
    assert err.value.extra == {"position": 13} and "lowercase" in err.value.errors[0].reason
    with pytest.raises(StaQueryError) as err:
        parse_filter("foo(name) eq 1")
    assert "unknown function foo / 未知函数 foo" in err.value.errors[0].reason
    with pytest.raises(StaQueryError) as err:
        parse_filter("substringof('a') eq true")
    assert "takes 2 argument(s), got 1" in err.value.errors[0].reason
    with pytest.raises(StaQueryError) as err:
        parse_filter("t gt 2026-11-21T10:00:00")
    assert "time zone" in err.value.errors[0].reason
    with pytest.raises(StaQueryError) as err:
        parse_filter("d eq duration'P1Y'")
    assert "years and months" in err.value.errors[0].reason


@pytest.mark.parametrize("text", ["", " ", "a desc desc", "a,,b", "a DESC", ",a", "a,", "a eq", "a desc b"])
def test_bad_orderby_is_invalid(text: str) -> None:
    with pytest.raises(StaQueryError) as err:
        parse_orderby(text)
    assert err.value.errors[0].field == "$orderby"


@pytest.mark.parametrize("text", ["", "a,,b", "a b", "1a", "a/b", "a,", "'a'", "a(b)"])
def test_bad_select_is_invalid(text: str) -> None:
    with pytest.raises(StaQueryError) as err:
        parse_select(text)
    assert err.value.errors[0].field == "$select"


BAD_EXPANDS = [
    "", " ", "A(", "A)", "A(()", "A($top=x)", "A($foo=1)", "A(top=1)", "A($top)", "A($top=1;$top=2)",
    "A,A", "A($resultFormat=dataArray)", "A($filter=)", "A($filter=a eq)", "A($top=1)x", "A($top=1) (b)",
    "A/", "A//B", "/A", "A,,B", "A,", "A($expand=B($top=-1))", "'x'", "A(';')", "A B", "1A",
    "A($expand=)", "A($select=a,,b)", "A($orderby=)", "A($top=10001)", "A($skip=-1)", "A($count=yes)",
    "A($expand=" * 12 + "B" + ")" * 12,
]


@pytest.mark.parametrize("text", BAD_EXPANDS)
def test_bad_expand_is_invalid(text: str) -> None:
    with pytest.raises(StaQueryError) as err:
        parse_expand(text)
    assert err.value.errors[0].field == "$expand"


def test_nested_expand_error_points_into_the_whole_text() -> None:
    with pytest.raises(StaQueryError) as err:
        parse_expand("Datastreams($filter=name eq)")
    assert err.value.extra == {"position": 28}
    assert err.value.errors[0].reason.startswith("Datastreams($filter): ")
    with pytest.raises(StaQueryError) as err:
        parse_options({"$expand": "Datastreams($expand=Observations($top=many))"})
    assert "Datastreams($expand): Observations($top): $top must be a whole number" in err.value.errors[0].reason


BAD_OPTIONS = [
    ({"$top": "-1"}, "$top"), ({"$top": "10001"}, "$top"), ({"$top": "abc"}, "$top"), ({"$top": "1.5"}, "$top"),
    ({"$top": ""}, "$top"), ({"$top": "+3"}, "$top"), ({"$top": "9" * 5000}, "$top"), ({"$skip": "-1"}, "$skip"),
    ({"$skip": "99999999999999999999"}, "$skip"), ({"$count": "yes"}, "$count"), ({"$count": "True"}, "$count"),
    ({"$resultFormat": "GeoJSON"}, "$resultFormat"), ({"$foo": "1"}, "$foo"), ({"$Top": "1"}, "$Top"),
    ({"$filter": ""}, "$filter"), ({"$orderby": "a,"}, "$orderby"), ({"$select": ""}, "$select"),
    ({"$expand": ""}, "$expand"),
]


@pytest.mark.parametrize(("params", "field"), BAD_OPTIONS, ids=[str(p[0])[:40] for p in BAD_OPTIONS])
def test_bad_option_is_invalid(params: dict[str, str], field: str) -> None:
    with pytest.raises(StaQueryError) as err:
        parse_options(params)
    assert err.value.errors[0].field == field


def test_option_errors_are_all_reported_and_hint() -> None:
    with pytest.raises(StaQueryError) as err:
        parse_options({"$top": "x", "$skip": "y", "$Count": "true"})
    assert [e.field for e in err.value.errors] == ["$top", "$skip", "$Count"]
    assert "did you mean $count?" in err.value.errors[2].reason
    assert err.value.extra == {} and "character" not in err.value.errors[0].reason  # the whole value
    with pytest.raises(StaQueryError) as err:
        parse_options({"$resultFormat": "GeoJSON"})
    assert "only $resultFormat=dataArray" in err.value.errors[0].reason


GARBAGE = [
    "'", "''", "'''", "(", ")", "((", "))", "/", "//", "-", "--", "---1", "eq", "and", "not", "null", "true eq",
    "geography'", "duration'", "geography''", "geometry'POINT(", "x eq geography'POINT(1 2)''", "$", "\\", "\x00",
    "\n", "😀 eq 1", "a eq '😀'", "1e", "1e+", "2026-", "2026-11-21T", "2026-11-21T10:00:00+", "10:", "a/b/c/",
    "a(", "a()", "a)(", "substringof(,)", "substringof(a,)", "substringof(,a)", "concat(a b)", "f(((", "%", "%27",
    "a eq 1 or or", "not", "not (", "a eq duration'-'", "st_relate(a,b,)", "-(-(-(", "(((((((((((((((((((((a",
]


def test_garbage_only_ever_raises_invalid() -> None:
    rng = random.Random(20261121)
    alphabet = ["a", "b/c", "eq", "ne", "gt", "and", "or", "not", "add", "mod", "(", ")", ",", "-", "'x'", "'",
                "1", "2.5", "1e3", "true", "null", "2026-11-21T10:00:00Z", "2026-11-21", "10:00", "duration'P1D'",
                "geography'POINT(1 2)'", "year(", "substringof(", "geo.distance(", "now()", "/", ";", "=", "$top=1",
                "Things", "$expand=", "$filter=", "desc", " ", "", "@iot.id", "*", "duration'", "geometry'", "é"]
    texts = GARBAGE + ["".join(rng.choice(alphabet) + rng.choice([" ", ""]) for _ in range(rng.randint(1, 12)))
                       for _ in range(1500)]
    for sample in texts:
        for parse in (parse_filter, parse_orderby, parse_select, parse_expand):
            try:
                parse(sample)
            except Invalid:
                pass
        try:
            parse_options({"$filter": sample, "$expand": sample, "$top": sample, "$orderby": sample})
        except Invalid:
            pass
        try:
            node = parse_filter(sample)
        except Invalid:
            continue
        for dialect in ("sqlite", "postgresql"):
            try:
                compile_filter(node, loose_resolver(dialect), dialect)
                compile_expr(node, loose_resolver(dialect), dialect)
            except Invalid:
                pass


# -- compiling and running ---------------------------------------------------------------------------

ROWS = Table(
    "sta_rows", MetaData(),
    Column("id", Integer, primary_key=True), Column("name", Text), Column("result_number", Float),
    Column("t", BigInteger), Column("ts", DateTime(timezone=True)), Column("active", Boolean),
    Column("props", JSON), Column("loc", Text),
)


def _ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


T1, T2, T3, T5 = "2026-11-21T10:00:00+00:00", "2026-11-20T23:59:59.500+00:00", "2025-01-01T00:00:00+00:00", \
    "2026-12-31T23:59:59.999+00:00"
DATA = [
    dict(id=1, name="Humidity sensor", result_number=3.5, t=_ms(T1), active=True,
         props={"owner": "alice", "level": 5, "ok": True, "tag": "a_b"}, loc='{"type":"Point","coordinates":[1,1]}'),
    dict(id=2, name="temperature", result_number=12.25, t=_ms(T2), active=False,
         props={"owner": "bob", "level": "5", "ok": False}, loc='{"type":"Point","coordinates":[5,5]}'),
    dict(id=3, name="humid%room", result_number=-1.5, t=_ms(T3), active=True,
         props={"owner": "O'Neil", "level": 2.5}, loc='{"type":"LineString","coordinates":[[0,0],[3,4]]}'),
    dict(id=4, name=None, result_number=None, t=None, active=None, props={}, loc=None),
    dict(id=5, name="Wind_Speed", result_number=0.0, t=_ms(T5), active=False,
         props={"owner": "张三", "level": -3, "nested": {"a": 1}},
         loc='{"type":"Polygon","coordinates":[[[10,10],[20,10],[20,20],[10,20],[10,10]]]}'),
]
for row in DATA:
    row["ts"] = dt.datetime.fromtimestamp(row["t"] / 1000, UTC) if row["t"] is not None else None

PLAIN = {"id": ("id", "number"), "name": ("name", "string"), "result": ("result_number", "number"),
         "phenomenonTime": ("t", "time_ms"), "resultTime": ("ts", "datetime"), "active": ("active", "bool"),
         "location": ("loc", "geojson")}


def resolver(parts: tuple[str, ...]) -> Field:
    """What the STA layer writes: plain columns, and properties/... into the JSON document."""
    if parts[0] == "properties" and len(parts) > 1:
        return Field(ROWS.c.props[parts[1:]].as_string(), "json")
    if len(parts) == 1 and parts[0] in PLAIN:
        column, kind = PLAIN[parts[0]]
        return Field(ROWS.c[column], kind)
    raise Invalid("$filter", f"unknown property {'/'.join(parts)} / 未知属性")


def loose_resolver(dialect: str) -> Callable[[tuple[str, ...]], Field]:
    """A resolver that accepts every name, with a kind that depends on it, for fuzzing."""
    kinds = ["number", "string", "bool", "time_ms", "datetime", "json", "geojson"]

    def resolve(parts: tuple[str, ...]) -> Field:
        kind = kinds[sum(map(ord, "".join(parts))) % len(kinds)]
        return Field(ROWS.c.props[parts].as_string() if kind == "json" else ROWS.c.name, kind)
    return resolve


@dataclass
class Db:
    engine: Engine
    dialect: str
    postgis: bool

    def ids(self, text: str) -> list[int]:
        where = compile_filter(parse_filter(text), resolver, self.dialect)
        with self.engine.connect() as conn:
            return list(conn.scalars(select(ROWS.c.id).where(where).order_by(ROWS.c.id)))

    def order(self, text: str, where: str = "result ne null") -> list[int]:
        keys = [compile_expr(node, resolver, self.dialect).desc() if desc else
                compile_expr(node, resolver, self.dialect) for node, desc in parse_orderby(text)]
        cond = compile_filter(parse_filter(where), resolver, self.dialect)
        with self.engine.connect() as conn:
            return list(conn.scalars(select(ROWS.c.id).where(cond).order_by(*keys, ROWS.c.id)))


PG_URL = os.environ.get("CITYOS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _sqlite() -> Iterator[Db]:
    engine = create_engine("sqlite://")
    event.listen(engine, "connect", lambda conn, _record: register_sqlite_functions(conn))
    ROWS.create(engine)
    with engine.begin() as conn:
        conn.execute(ROWS.insert(), DATA)
    yield Db(engine, "sqlite", True)
    engine.dispose()


def _postgresql(worker_id: str) -> Iterator[Db]:
    name = "cityos_staq_test" + ("" if worker_id == "master" else f"_{worker_id}")
    admin = create_engine(make_url(PG_URL).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except DBAPIError as exc:
        admin.dispose()
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL is required under CI but unreachable at {PG_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {exc}")
    engine = create_engine(make_url(PG_URL).set(database=name))
    postgis = True
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
    except DBAPIError:
        postgis = False
    ROWS.create(engine)
    with engine.begin() as conn:
        conn.execute(ROWS.insert(), DATA)
    try:
        yield Db(engine, "postgresql", postgis)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, worker_id: str) -> Iterator[Db]:
    yield from (_sqlite() if request.param == "sqlite" else _postgresql(worker_id))


ALL = [1, 2, 3, 4, 5]
CASES = [
    # numbers and arithmetic
    ("result le 3.5", [1, 3, 5]),
    ("result le 3.5 and id eq 1", [1]),
    ("result gt -2 and result lt 1", [3, 5]),
    ("result eq -1.5", [3]),
    ("result add 1 gt 4", [1, 2]),
    ("result sub 0.5 eq 3", [1]),
    ("result mul 2 eq 7", [1]),
    ("result div 0.5 eq 7", [1]),
    ("id div 2 eq 1", [2, 3]),
    ("id mod 2 eq 1", [1, 3, 5]),
    ("result mod 2 eq 1.5", [1]),
    ("result mod 2 eq -1.5", [3]),
    ("id div (id sub 1) eq 2", [2]),
    ("-result gt 0", [3]),
    ("-(result add 1) eq -4.5", [1]),
    ("round(result) eq 4", [1]),
    ("round(result) eq -2", [3]),
    ("floor(result) eq -2", [3]),
    ("floor(result) eq 3", [1]),
    ("ceiling(result) eq -1", [3]),
    ("ceiling(result) eq 13", [2]),
    ("7 div 2 eq 3 and -7 mod 2 eq -1 and round(2.5) eq 3 and round(-2.5) eq -3", ALL),
    ("id eq 2 add 3 mul 1", [5]),
    # strings
    ("name eq 'temperature'", [2]),
    ("name ne 'temperature'", [1, 3, 5]),
    ("name eq null", [4]),
    ("null eq name", [4]),
    ("name ne null", [1, 2, 3, 5]),
    ("not (name eq 'temperature')", [1, 3, 5]),
    ("substringof('humid', name)", [3]),
    ("substringof('%', name)", [3]),
    ("substringof('_', name)", [5]),
    ("substringof('*', name) or substringof('[', name) or substringof('?', name)", []),
    ("startswith(name, 'Hum')", [1]),
    ("startswith(name, 'hum')", [3]),
    ("endswith(name, 'room')", [3]),
    ("endswith(name, '_Speed')", [5]),
    ("endswith(name, '')", [1, 2, 3, 5]),
    ("contains(name, 'mid')", [1, 3]),
    ("substringof(properties/owner, 'alice and bob')", [1, 2]),
    ("startswith('alice-x', properties/owner)", [1]),
    ("endswith('x-bob', properties/owner)", [2]),
    ("endswith('b', properties/owner)", []),
    ("tolower(name) eq 'wind_speed'", [5]),
    ("toupper(name) eq 'TEMPERATURE'", [2]),
    ("length(name) eq 11", [2]),
    ("indexof(name, 'e') eq 1", [2]),
    ("indexof(name, 'zzz') eq -1", [1, 2, 3, 5]),
    ("substring(name, 4) eq '_Speed'", [5]),
    ("substring(name, 0, 4) eq 'temp'", [2]),
    ("concat(name, '!') eq 'temperature!'", [2]),
    ("concat(concat(name, ' '), properties/owner) eq 'temperature bob'", [2]),
    ("trim(concat(' ', name)) eq 'temperature'", [2]),
    ("length(properties/owner) eq 2", [5]),
    # booleans
    ("active", [1, 3]),
    ("active eq false", [2, 5]),
    ("not active", [2, 5]),
    ("active eq true and result gt 0", [1]),
    ("(result gt 0) eq active", [1, 5]),
    ("true", ALL),
    ("false", []),
    ("1 eq 1 and 'a' ne 'b'", ALL),
    ("null eq null", ALL),
    # times stored as epoch milliseconds
    ("phenomenonTime ge 2026-11-21T10:00:00Z", [1, 5]),
    ("phenomenonTime lt 2026-11-21T18:00:00+08:00", [2, 3]),
    ("phenomenonTime eq 2026-11-20T23:59:59.5Z", [2]),
    ("phenomenonTime ge 2026-11-21", [1, 5]),
    ("phenomenonTime gt mindatetime() and phenomenonTime lt maxdatetime()", [1, 2, 3, 5]),
    ("phenomenonTime lt now() add duration'P36500D' and phenomenonTime gt now() sub duration'P36500D'",
     [1, 2, 3, 5]),
    ("phenomenonTime add duration'PT14H' ge 2026-11-22T00:00:00Z", [1, 5]),
    ("duration'PT14H' add phenomenonTime ge 2026-11-22T00:00:00Z", [1, 5]),
    ("phenomenonTime sub 2026-11-21T00:00:00Z gt duration'PT1H'", [1, 5]),
    ("phenomenonTime sub duration'P1D' lt 2025-01-01", [3]),
    ("year(phenomenonTime) eq 2026", [1, 2, 5]),
    ("month(phenomenonTime) eq 11", [1, 2]),
    ("day(phenomenonTime) eq 20", [2]),
    ("hour(phenomenonTime) eq 23", [2, 5]),
    ("minute(phenomenonTime) eq 59 and second(phenomenonTime) eq 59", [2, 5]),
    ("fractionalseconds(phenomenonTime) eq 0.5", [2]),
    ("fractionalseconds(phenomenonTime) gt 0.99", [5]),
    ("date(phenomenonTime) eq 2026-11-20", [2]),
    ("year(date(phenomenonTime)) eq 2025", [3]),
    ("time(phenomenonTime) eq 10:00:00", [1]),
    ("time(phenomenonTime) ge 23:00", [2, 5]),
    ("totaloffsetminutes(phenomenonTime) eq 0", [1, 2, 3, 5]),
    ("year(2026-11-21T10:00:00Z) eq 2026 and hour(2026-11-21T10:00:00+08:00) eq 2", ALL),
    ("2026-01-01 lt 2026-01-02T00:00:00Z", ALL),
    # times stored as timestamps with zone
    ("resultTime ge 2026-11-21T10:00:00Z", [1, 5]),
    ("resultTime lt 2026-11-21", [2, 3]),
    ("resultTime eq phenomenonTime", [1, 2, 3, 5]),
    ("resultTime sub duration'PT10H' eq 2026-11-21T00:00:00Z", [1]),
    ("year(resultTime) eq 2025", [3]),
    ("hour(resultTime) eq 23", [2, 5]),
    ("fractionalseconds(resultTime) eq 0.5", [2]),
    ("date(resultTime) eq 2026-11-20", [2]),
    ("time(resultTime) eq 10:00:00", [1]),
    # JSON properties
    ("properties/owner eq 'alice'", [1]),
    ("properties/owner eq 'O''Neil'", [3]),
    ("properties/owner eq '张三'", [5]),
    ("properties/level eq 5", [1, 2]),
    ("properties/level gt 2", [1, 2, 3]),
    ("properties/level add 1 eq 3.5", [3]),
    ("properties/level lt 0", [5]),
    ("properties/level eq '5'", [1, 2]),
    ("properties/ok eq true", [1]),
    ("properties/ok eq false", [2]),
    ("properties/ok ne true", [2]),
    ("properties/ok", [1]),
    ("not properties/ok", [2]),
    ("properties/nested/a eq 1", [5]),
    ("properties/missing eq null", ALL),
    ("properties/owner ne null", [1, 2, 3, 5]),
    ("substringof('li', properties/owner)", [1]),
    ("substringof('_', properties/tag)", [1]),
    ("properties/owner eq properties/owner", [1, 2, 3, 5]),
    ("properties/owner gt 'a' and properties/owner lt 'c'", [1, 2]),
]
GEO_CASES = [
    ("st_within(location, geography'POLYGON((0 0, 6 0, 6 6, 0 6, 0 0))')", [1, 2, 3]),
    ("st_intersects(location, geography'POINT(15 15)')", [5]),
    ("geo.intersects(location, geometry'LINESTRING(0 4, 4 0)')", [3]),
    ("st_contains(location, geography'POINT(15 15)')", [5]),
    ("st_disjoint(location, geography'POINT(15 15)')", [1, 2, 3]),
    ("st_equals(location, geography'POINT(1 1)')", [1]),
    ("st_touches(location, geography'POINT(10 10)')", [5]),
    ("st_crosses(location, geography'LINESTRING(0 4, 4 0)')", [3]),
    ("st_overlaps(location, geography'POLYGON((15 15, 25 15, 25 25, 15 25, 15 15))')", [5]),
    ("st_within(geography'POINT(15 15)', location)", [5]),
    ("st_relate(location, geography'POINT(15 15)', 'T*****FF*')", [5]),
    ("geo.distance(location, geography'POINT(1 2)') lt 1.5", [1, 3]),
    ("geo.length(location) eq 5", [3]),
    ("not st_intersects(location, geography'POINT(15 15)') and result ne null", [1, 2, 3]),
    ("st_within(geography'POINT(1 1)', geography'POLYGON((0 0, 2 0, 2 2, 0 0))')", []),
    ("geo.distance(geography'POINT(0 0)', geography'POINT(3 4)') eq 5", ALL),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_filter_selects(db: Db, text: str, expected: list[int]) -> None:
    assert db.ids(text) == expected


@pytest.mark.parametrize(("text", "expected"), GEO_CASES, ids=[c[0][:60] for c in GEO_CASES])
def test_geo_filter_selects(db: Db, text: str, expected: list[int]) -> None:
    if not db.postgis:
        pytest.skip("PostGIS is not installed in this PostgreSQL (CREATE EXTENSION postgis failed)")
    assert db.ids(text) == expected


def test_and_or_combinations_agree_with_sets(db: Db) -> None:
    """Random and/or trees of the cases above select the union/intersection of their rows."""
    rng = random.Random(7)
    pool = CASES + (GEO_CASES if db.postgis else [])

    def tree(depth: int) -> tuple[str, set[int]]:
        if depth == 0 or rng.random() < 0.3:
            text, ids = rng.choice(pool)
            return f"({text})", set(ids)
        (a, x), (b, y) = tree(depth - 1), tree(depth - 1)
        return (f"({a} and {b})", x & y) if rng.random() < 0.5 else (f"({a} or {b})", x | y)

    for _ in range(25):
        text, expected = tree(3)
        assert db.ids(text) == sorted(expected), text


def test_orderby(db: Db) -> None:
    assert db.order("result desc") == [2, 1, 5, 3]
    assert db.order("length(name), id") == [3, 5, 2, 1]
    assert db.order("phenomenonTime sub 2026-01-01T00:00:00Z desc") == [5, 1, 2, 3]
    assert db.order("year(resultTime) desc, result") == [5, 1, 2, 3]
    assert db.order("properties/level add 0") == [5, 3, 1, 2]


COMPILE_ERRORS = [
    "name add 'x'", "year('abc') eq 1", "year(name) eq 1", "length(5) eq 1", "name eq 5", "result eq 'x'",
    "result", "name", "phenomenonTime", "st_within(name, geography'POINT(1 2)')", "result div 0 eq 1",
    "result mod 0.0 eq 1", "location eq geography'POINT(1 1)'", "result gt null", "active gt false",
    "nosuch eq 1", "Datastream/id eq 1", "substring(name, -1) eq 'x'", "substring(name, 1.5) eq 'x'",
    "substring(name, 'a') eq 'x'", "st_relate(location, geography'POINT(1 1)', 'XYZ')",
    "st_relate(location, geography'POINT(1 1)', name)", "concat(name, 5) eq 'a'", "phenomenonTime eq 'x'",
    "phenomenonTime add 5 gt 1", "-name eq 'x'", "9223372036854775807 add 1 eq 0", "1e308 mul 10 eq 1",
    "date(phenomenonTime) eq 2026-11-20T00:00:00Z", "time(phenomenonTime) eq 2026-11-20",
    "not result", "result and active", "geo.length(name) eq 1", "geo.distance(location, 1) lt 2",
    "round(name) eq 1", "properties/ok gt true", "properties/a eq geography'POINT(1 1)'",
    "tolower(properties/a) eq 1", "phenomenonTime add phenomenonTime gt 1", "duration'P1D' sub phenomenonTime gt 1",
    "result eq phenomenonTime", "now() add duration'P3650000D' gt phenomenonTime", "'a' gt 1",
    "fractionalseconds(2026-11-20) eq 0", "year(duration'P1D') eq 1", "mindatetime() sub duration'P1D' lt now()",
    "-2026-11-21T10:00:00Z eq phenomenonTime", "st_within(location, location) eq 1", "true gt false",
]


@pytest.mark.parametrize("text", COMPILE_ERRORS)
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_type_errors_are_invalid(text: str, dialect: str) -> None:
    node = parse_filter(text)
    with pytest.raises(Invalid) as err:
        compile_filter(node, resolver, dialect)
    assert err.value.errors[0].field == "$filter"
    assert " / " in err.value.errors[0].reason


def test_orderby_errors_name_orderby() -> None:
    with pytest.raises(StaQueryError) as err:
        compile_expr(parse_orderby("name add 1")[0][0], resolver, "sqlite")
    assert err.value.errors[0].field == "$orderby"


def test_postgresql_geo_sql_uses_postgis() -> None:
    """Checked as text too, so the shape is tested where PostGIS is missing."""
    from sqlalchemy.dialects import postgresql

    where = compile_filter(parse_filter("st_within(location, geography'POINT(1 2)')"), resolver, "postgresql")
    sql = str(where.compile(dialect=postgresql.dialect()))
    assert "ST_Within(ST_SetSRID(ST_GeomFromGeoJSON(CAST(sta_rows.loc AS TEXT)), 4326), " \
           "ST_GeomFromText(CAST(" in sql
    where = compile_filter(parse_filter("geo.distance(location, geography'POINT(1 2)') lt 1"), resolver,
                           "postgresql")
    assert "ST_Distance(" in str(where.compile(dialect=postgresql.dialect()))


def test_sqlite_functions_directly() -> None:
    point, square = '{"type":"Point","coordinates":[1,1]}', "POLYGON((0 0, 2 0, 2 2, 0 2, 0 0))"
    assert sta_geo("within", point, square) == 1
    assert sta_geo("contains", point, square) == 0
    assert sta_geo("within", None, square) is None
    assert sta_geo("within", "not json", square) is None
    assert sta_geo("within", '{"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[1,1]}}',
                   square) == 1
    assert sta_geo("drop table", point, square) is None
    assert sta_geo_distance(point, "POINT(4 5)") == 5.0
    assert sta_geo_length("LINESTRING(0 0, 3 4)") == 5.0
    assert sta_geo_length(square) == 0.0  # as PostGIS's ST_Length


def test_unknown_dialect_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        compile_filter(parse_filter("true"), resolver, "mysql")


def test_now_is_the_compile_time() -> None:
    where = compile_filter(parse_filter("phenomenonTime gt now()"), resolver, "sqlite")
    cutoff = where.compile().params
    (value,) = cutoff.values()
    assert abs(value - dt.datetime.now(UTC).timestamp() * 1000) < 60_000


def test_long_or_list_compiles_and_runs(db: Db) -> None:
    text = " or ".join(f"id eq {i}" for i in range(3, 400))
    assert db.ids(text) == [3, 4, 5]
    assert db.ids(f"not ({text})") == [1, 2]
