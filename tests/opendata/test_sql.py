"""datastore_search_sql made safe: allow-list, rewrite, read-only run, on SQLite and PostgreSQL.

The module builds its own little database of each kind: two published tables, a big one for
timeouts, and a `users` table as bait that no query may reach.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    Engine,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url

from cityos.opendata.sql import MAX_SQL_CHARS, SqlRefused, TableInfo, compile_sql, run_sql

PG_URL = os.environ.get("CITYOS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/cityos_test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

META = MetaData()
AIR = Table("od_rows_1", META, Column("_id", Integer, primary_key=True), Column("district", Text),
            Column("pm25", Float), Column("day", Date))
DISTRICTS = Table("od_rows_2", META, Column("_id", Integer, primary_key=True),
                  Column("district", Text), Column("population", BigInteger))
BIG = Table("od_rows_3", META, Column("_id", Integer, primary_key=True), Column("n", Integer))
USERS = Table("users", META, Column("id", Integer, primary_key=True), Column("name", Text),
              Column("password", Text))

RESOURCES = {
    "air-quality-daily": TableInfo("od_rows_1", frozenset({"_id", "district", "pm25", "day"})),
    "districts": TableInfo("od_rows_2", frozenset({"_id", "district", "population"})),
    "big": TableInfo("od_rows_3", frozenset({"_id", "n"})),
}
AIR_ROWS = [
    (1, "昌邑区", 80.0, dt.date(2024, 1, 1)), (2, "昌邑区", 60.0, dt.date(2024, 1, 2)),
    (3, "船营区", 40.0, dt.date(2024, 2, 1)), (4, "船营区", 70.5, dt.date(2024, 3, 5)),
    (5, "丰满区", 55.0, dt.date(2024, 3, 6)), (6, "龙潭区", None, dt.date(2023, 12, 31)),
]
DISTRICT_ROWS = [(1, "昌邑区", 600000), (2, "船营区", 450000), (3, "丰满区", 300000)]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database of our own, dropped at the end."""
    url = make_url(PG_URL)
    name = f"cityos_sqltest_{os.getpid()}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI but unreachable at {PG_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {exc}")
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sql_engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqltest') / 'od.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(AIR), [dict(zip(("_id", "district", "pm25", "day"), r, strict=True)) for r in AIR_ROWS])
        conn.execute(insert(DISTRICTS), [dict(zip(("_id", "district", "population"), r, strict=True))
                                         for r in DISTRICT_ROWS])
        conn.execute(insert(BIG), [{"_id": i, "n": i} for i in range(1, 3001)])
        conn.execute(insert(USERS), [{"id": 1, "name": "admin", "password": "s3cret-hash"}])
    yield engine
    engine.dispose()


@pytest.fixture
def conn(sql_engine: Engine) -> Iterator[Connection]:
    with sql_engine.connect() as c:
        yield c


def query(conn: Connection, sql: str, **kw: Any) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    timeout_ms = kw.pop("timeout_ms", 5000)
    compiled = compile_sql(sql, RESOURCES.get, conn.dialect.name, **kw)
    return run_sql(conn, compiled, timeout_ms=timeout_ms)


def records(conn: Connection, sql: str, **kw: Any) -> list[dict[str, Any]]:
    return query(conn, sql, **kw)[1]


def untouched(conn: Connection) -> None:
    """The bait and the published tables are still there, unchanged."""
    assert conn.execute(select(func.count()).select_from(AIR)).scalar() == len(AIR_ROWS)
    assert conn.execute(select(USERS.c.password)).scalars().all() == ["s3cret-hash"]


# ---- allowed queries give the right answer on both databases --------------------------------

def test_ckan_example(conn: Connection) -> None:
    fields, recs = query(conn, 'SELECT district, avg(pm25) FROM "air-quality-daily" WHERE pm25 > 50 '
                               "GROUP BY district ORDER BY 2 DESC LIMIT 10;")
    assert fields == [{"id": "district", "type": "text"}, {"id": "avg", "type": "numeric"}]
    assert recs == [{"district": "船营区", "avg": 70.5}, {"district": "昌邑区", "avg": 70.0},
                    {"district": "丰满区", "avg": 55.0}]


def test_aggregates(conn: Connection) -> None:
    recs = records(conn, 'SELECT count(*) AS n, count(pm25) AS c, sum(pm25) AS s, min(pm25) AS lo, '
                         'max(pm25) AS hi, round(avg(pm25), 1) AS m, abs(-2) AS a, ceil(1.2) AS up, '
                         'floor(1.8) AS down FROM "air-quality-daily"')
    assert recs == [{"n": 6, "c": 5, "s": 305.5, "lo": 40.0, "hi": 80.0, "m": 61.1, "a": 2,
                     "up": 2, "down": 1}]


def test_group_having_order_offset(conn: Connection) -> None:
    recs = records(conn, 'SELECT district, count(*) AS n FROM "air-quality-daily" GROUP BY district '
                         "HAVING count(*) > 1 ORDER BY district DESC LIMIT 5 OFFSET 1")
    assert [r["n"] for r in recs] == [2]
    assert recs[0]["district"] in ("昌邑区", "船营区")


def test_cte_and_join_of_two_resources(conn: Connection) -> None:
    sql = ('WITH d AS (SELECT district, max(pm25) AS worst FROM "air-quality-daily" GROUP BY district) '
           "SELECT d.district, d.worst, p.population FROM d JOIN districts p ON p.district = d.district "
           "ORDER BY p.population DESC")
    assert compile_sql(sql, RESOURCES.get, "sqlite").tables == ["air-quality-daily", "districts"]
    assert records(conn, sql) == [
        {"district": "昌邑区", "worst": 80.0, "population": 600000},
        {"district": "船营区", "worst": 70.5, "population": 450000},
        {"district": "丰满区", "worst": 55.0, "population": 300000},
    ]


def test_resource_id_qualifies_columns_and_subqueries(conn: Connection) -> None:
    recs = records(conn, 'SELECT "air-quality-daily".district FROM "air-quality-daily" '
                         "WHERE pm25 = (SELECT max(pm25) FROM \"air-quality-daily\") "
                         "AND district IN (SELECT district FROM districts) AND EXISTS (SELECT 1 FROM big)")
    assert recs == [{"district": "昌邑区"}]


def test_union_case_window_and_strings(conn: Connection) -> None:
    recs = records(conn, "SELECT district FROM districts UNION SELECT district FROM \"air-quality-daily\" "
                         "ORDER BY district")
    assert len(recs) == 4
    recs = records(conn, 'SELECT _id, row_number() OVER (PARTITION BY district ORDER BY pm25 DESC) AS rn, '
                         "rank() OVER (ORDER BY pm25 DESC) AS r, dense_rank() OVER (ORDER BY district) AS dr, "
                         "CASE WHEN pm25 > 75 THEN 'bad' WHEN pm25 IS NULL THEN 'none' ELSE 'ok' END AS level "
                         'FROM "air-quality-daily" WHERE district = \'昌邑区\' ORDER BY _id')
    assert recs == [{"_id": 1, "rn": 1, "r": 1, "dr": 1, "level": "bad"},
                    {"_id": 2, "rn": 2, "r": 2, "dr": 1, "level": "ok"}]
    recs = records(conn, "SELECT lower('AbC') AS lo, upper('x') AS up, length(district) AS len, "
                         "substr('abcdef', 2, 3) AS sub, substring('abcdef', 1, 2) AS sub2, trim('  a ') AS t, "
                         "replace('a-b', '-', '+') AS rep, coalesce(NULL, 'z') AS co, nullif(1, 1) AS nu, "
                         "concat(district, '-', 7) AS cat, district || '!' AS pipe, CAST(_id AS text) AS id "
                         "FROM districts WHERE district LIKE '%营区' AND district ILIKE '船%'")
    assert recs == [{"lo": "abc", "up": "X", "len": 3, "sub": "bcd", "sub2": "ab", "t": "a", "rep": "a+b",
                     "co": "z", "nu": None, "cat": "船营区-7", "pipe": "船营区!", "id": "2"}]


def test_extract_dates_and_json_values(conn: Connection) -> None:
    fields, recs = query(conn, 'SELECT extract(year FROM day) AS y, extract(month FROM day) AS m, day '
                               'FROM "air-quality-daily" WHERE _id = 6')
    assert recs == [{"y": 2023, "m": 12, "day": "2023-12-31"}]
    assert fields[2]["type"] == ("date" if conn.dialect.name == "postgresql" else "text")


def test_duplicate_output_names_are_kept_apart(conn: Connection) -> None:
    fields, recs = query(conn, 'SELECT a.district, d.district, count(*), count(*) FROM "air-quality-daily" a '
                               "JOIN districts d ON d.district = a.district WHERE a._id = 1 "
                               "GROUP BY a.district, d.district")
    assert [f["id"] for f in fields] == ["district", "district_2", "count", "count_2"]
    assert recs == [{"district": "昌邑区", "district_2": "昌邑区", "count": 1, "count_2": 1}]


def test_row_cap(conn: Connection) -> None:
    assert len(records(conn, "SELECT n FROM big")) == 3000
    assert len(records(conn, "SELECT n FROM big", max_rows=100)) == 100
    assert len(records(conn, "SELECT n FROM big LIMIT 5000", max_rows=100)) == 100
    assert len(records(conn, "SELECT n FROM big LIMIT 7", max_rows=100)) == 7
    assert len(records(conn, "SELECT n FROM big LIMIT ALL", max_rows=10)) == 10
    assert len(records(conn, "SELECT n FROM big UNION ALL SELECT n FROM big", max_rows=4000)) == 4000
    assert compile_sql("SELECT n FROM big", RESOURCES.get, "sqlite", max_rows=9).sql.endswith("LIMIT 9")


def test_cte_names_shadow_only_where_visible(conn: Connection) -> None:
    # A CTE named like the bait table is the CTE, not the table ...
    assert records(conn, "WITH users AS (SELECT 1 AS x) SELECT * FROM users") == [{"x": 1}]
    # ... but a CTE is not visible in the bodies of earlier CTEs, where the DB would find the table.
    for sql in ("WITH a AS (SELECT * FROM users), users AS (SELECT 1 AS x) SELECT * FROM a",
                "WITH users AS (SELECT * FROM users) SELECT * FROM users",
                "SELECT * FROM (WITH users AS (SELECT 1 AS x) SELECT * FROM users) s, users"):
        with pytest.raises(SqlRefused, match="users"):
            compile_sql(sql, RESOURCES.get, conn.dialect.name)
    untouched(conn)


# ---- refused: nothing is executed ----------------------------------------------------------

REFUSED = {
    '"x" UNION SELECT * FROM users': "UNION needs a SELECT",
    'SELECT * FROM "air-quality-daily" UNION SELECT * FROM users': "not a public resource",
    'SELECT * FROM "air-quality-daily" WHERE 1=1; DELETE FROM "air-quality-daily"': "multiple statements",
    "SELECT 1; DROP TABLE x": "multiple statements",
    "SELECT 1 -- harmless\n; DROP TABLE users": "multiple statements",
    "SELECT 1 /* ; */ ; DELETE FROM users /* */": "multiple statements",
    "SELECT 'a\\' ; DROP TABLE users; --'": "multiple statements",
    "SELECT load_extension('x')": "load_extension",
    "SELECT randomblob(1000000000)": "randomblob",
    "SELECT pg_sleep(10)": "pg_sleep",
    "SELECT current_setting('data_directory')": "current_setting",
    "SELECT set_config('statement_timeout', '0', false)": "set_config",
    "SELECT version()": "version",
    "SELECT lo_import('/etc/passwd')": "lo_import",
    "SELECT query_to_xml('select * from users', true, true, '')": "query_to_xml",
    "SELECT * FROM sqlite_master": "sqlite_master",
    "SELECT * FROM pg_catalog.pg_user": "pg_catalog",
    "SELECT * FROM main.od_rows_1": "main",
    "SELECT * FROM information_schema.tables": "information_schema",
    "SELECT * FROM od_rows_1": "not a public resource",
    "SELECT * FROM generate_series(1, 10)": "generate_series",
    "SELECT * FROM pragma_table_info('users')": "pragma_table_info",
    "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)": "dblink",
    "SELECT * FROM read_csv('/etc/passwd')": "read_csv",
    "WITH x AS (DELETE FROM users RETURNING *) SELECT * FROM x": "DELETE",
    'SELECT * FROM "air-quality-daily" INTO OUTFILE \'/tmp/x\'': "parsed",
    'SELECT * INTO stolen FROM "air-quality-daily"': "INTO",
    'SELECT * FROM "air-quality-daily" FOR UPDATE': "FOR UPDATE",
    'SELECT * FROM "t"";DROP TABLE od_rows_1;--"': "not a public resource",
    'SELECT * FROM "air-quality-daily"";DROP TABLE od_rows_1;--"': "not a public resource",
    "INSERT INTO users VALUES (2, 'x', 'y')": "INSERT",
    "UPDATE users SET password = 'x'": "UPDATE",
    "DELETE FROM users": "DELETE",
    "DROP TABLE users": "DROP",
    "CREATE TABLE x (a int)": "CREATE",
    "ALTER TABLE users ADD COLUMN x int": "ALTER",
    "ATTACH DATABASE '/tmp/x.db' AS x": "ATTACH",
    "PRAGMA query_only = OFF": "PRAGMA",
    "COPY users TO '/tmp/x'": "COPY",
    "SET statement_timeout = 0": "SET",
    "GRANT ALL ON users TO public": "GRANT",
    "VACUUM": "",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r": "RECURSIVE",
    "SELECT 'users'::regclass": "system type",
    "SELECT $1": "PARAMETER",
    "SELECT E'\\x41'": "",
    'SELECT * FROM LATERAL (SELECT 1) x': "",
    'SELECT nope FROM "air-quality-daily"': 'column "nope"',
    'SELECT "District" FROM "air-quality-daily"': 'column "District"',
    'SELECT district FROM "air-quality-daily" LIMIT (SELECT 5)': "LIMIT",
    'SELECT CAST(pm25 AS regtype) FROM "air-quality-daily"': "",
    "SELECT session_user": "session_user",
    'WITH od_rows_2 AS (SELECT 1 AS district) SELECT district FROM districts': "reserved",
    "SELECT (SELECT password FROM users) AS p": "not a public resource",
    'SELECT * FROM "air-quality-daily" WHERE district IN (SELECT name FROM users)': "not a public resource",
    'SELECT * FROM "air-quality-daily" a JOIN users u ON true': "not a public resource",
    "SELECT " + "(" * 3000 + "1" + ")" * 3000: "nested too deeply",
    "": "empty",
    " ; ": "empty",
    "SELECT " + "1, " * MAX_SQL_CHARS + "1": "longer than",
}


@pytest.mark.parametrize("sql", list(REFUSED))
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_refused(sql: str, dialect: str) -> None:
    with pytest.raises(SqlRefused) as caught:
        compile_sql(sql, RESOURCES.get, dialect)
    assert REFUSED[sql].lower() in caught.value.message.lower()
    assert caught.value.field == "sql" and " / " in caught.value.message
    assert caught.value.status == 422


@pytest.mark.parametrize("sql", [s for s in REFUSED if len(s) < 500])
def test_refused_sql_never_reaches_the_database(conn: Connection, sql: str) -> None:
    with pytest.raises(SqlRefused):
        query(conn, sql)
    untouched(conn)


def test_only_the_generated_statement_runs() -> None:
    compiled = compile_sql('SELECT district /* x */ FROM "air-quality-daily" -- y\n;',
                           RESOURCES.get, "postgresql")
    assert compiled.sql == 'SELECT "district" FROM "od_rows_1" AS "air-quality-daily" LIMIT 32000'


def test_unknown_dialect() -> None:
    with pytest.raises(ValueError):
        compile_sql("SELECT 1", RESOURCES.get, "mysql")


# ---- running: database errors, timeouts, read-only ------------------------------------------

def test_database_errors_become_refusals(conn: Connection) -> None:
    # `population` is a column of a resource, so it passes the compile-time check; the DB says no.
    with pytest.raises(SqlRefused, match="refused the query") as caught:
        query(conn, 'SELECT a.population FROM "air-quality-daily" a, districts')
    assert "od_rows" not in caught.value.message and "\n" not in caught.value.message
    with pytest.raises(SqlRefused, match="refused the query") as caught:
        query(conn, 'SELECT "air-quality-daily".population FROM "air-quality-daily", districts')
    assert "od_rows" not in caught.value.message
    assert records(conn, "SELECT 1 AS one") == [{"one": 1}]  # the connection is still usable


def test_timeout(conn: Connection) -> None:
    with pytest.raises(SqlRefused, match="took too long"):
        query(conn, "SELECT count(*) FROM big a, big b, big c", timeout_ms=200)
    assert records(conn, "SELECT count(*) AS n FROM big") == [{"n": 3000}]
    if conn.dialect.name == "postgresql":
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "off"
    untouched(conn)


def test_runs_inside_a_callers_transaction_that_wrote(conn: Connection) -> None:
    with conn.begin() as trans:
        conn.execute(insert(DISTRICTS).values(_id=9, district="龙潭区", population=1))
        # The caller's uncommitted row is visible to the query ...
        assert records(conn, "SELECT count(*) AS n FROM districts") == [{"n": 4}]
        with pytest.raises(SqlRefused):
            query(conn, 'SELECT a.population FROM "air-quality-daily" a, districts')
        # ... and afterwards the transaction can still write.
        conn.execute(DISTRICTS.delete().where(DISTRICTS.c._id == 9))
        if conn.dialect.name == "postgresql":
            assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "off"
        else:
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
        trans.commit()
    assert conn.execute(select(func.count()).select_from(DISTRICTS)).scalar() == 3


def test_runs_read_only(conn: Connection) -> None:
    """Defence in depth: even a write that got past compile_sql would fail at run time."""
    from cityos.opendata.sql import Compiled

    with pytest.raises(SqlRefused, match="refused the query"):
        run_sql(conn, Compiled(sql="DELETE FROM users", tables=[]))
    untouched(conn)
