"""SQL over published rows (开放数据SQL查询): CKAN's `datastore_search_sql`, made safe.

CKAN ran the user's string with a blacklist in front and had injection CVEs. We never run the
user's string: it is parsed with sqlglot, every node of the tree is checked against an
allow-list, table names are resolved to published tables only, and a fresh statement is
generated from the checked tree for the target database. That statement then runs read-only
with a time limit and a row cap.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from cityos.core.errors import Invalid

MAX_SQL_CHARS = 10_000
DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres"}

# Every node type a statement may contain; anything else (DML, DDL, INTO, FOR UPDATE, LATERAL,
# table functions, parameters, byte strings, ...) is refused by its name.
ALLOWED_NODES: frozenset[type[exp.Expression]] = frozenset({
    exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery, exp.With, exp.CTE,
    exp.TableAlias, exp.From, exp.Join, exp.Where, exp.Group, exp.Having, exp.Order,
    exp.Ordered, exp.Limit, exp.Offset, exp.Distinct, exp.Table, exp.Identifier, exp.Column,
    exp.Star, exp.Alias, exp.Paren, exp.Tuple, exp.Window, exp.WindowSpec, exp.Literal,
    exp.Boolean, exp.Null, exp.Case, exp.If, exp.Cast, exp.DataType, exp.DataTypeParam,
    exp.Var, exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
    exp.NullSafeEQ, exp.NullSafeNEQ, exp.Is, exp.In, exp.Between, exp.Like, exp.ILike,
    exp.Exists, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg, exp.DPipe,
})
# Functions, by sqlglot class: each one runs on SQLite and PostgreSQL (after the rewrites below).
ALLOWED_FUNCTIONS: frozenset[type[exp.Expression]] = frozenset({
    exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.Round, exp.Abs, exp.Ceil, exp.Floor,
    exp.Lower, exp.Upper, exp.Length, exp.Substring, exp.Trim, exp.Replace, exp.Coalesce,
    exp.Nullif, exp.Concat, exp.Extract, exp.RowNumber, exp.Rank, exp.DenseRank,
})
_T = exp.DataType.Type
CAST_TYPES = frozenset({_T.TEXT, _T.VARCHAR, _T.CHAR, _T.INT, _T.BIGINT, _T.SMALLINT,
                        _T.DECIMAL, _T.DOUBLE, _T.FLOAT, _T.BOOLEAN, _T.DATE, _T.TIMESTAMP})
# EXTRACT units and the SQLite strftime format that gives the same number as PostgreSQL.
EXTRACT_UNITS = {"YEAR": "%Y", "MONTH": "%m", "DAY": "%d", "HOUR": "%H", "MINUTE": "%M",
                 "SECOND": "%S", "DOW": "%w", "DOY": "%j"}
# PostgreSQL type OIDs → CKAN DataStore type names (fields of the answer).
PG_TYPES = {16: "bool", 20: "int", 21: "int", 23: "int", 700: "numeric", 701: "numeric",
            1700: "numeric", 25: "text", 1042: "text", 1043: "text", 1082: "date",
            1083: "time", 1114: "timestamp", 1184: "timestamp"}
# Readable names of some refused constructs, for the message.
_CONSTRUCTS = {"lock": "FOR UPDATE / FOR SHARE", "into": "SELECT ... INTO",
               "objectidentifier": "a cast to a system type (::regclass ...)",
               "parameter": "a PARAMETER ($1)", "placeholder": "a PARAMETER (?)"}
# CKAN type names by Python type, for SQLite answers; first match wins (bool is an int).
VALUE_TYPES: tuple[tuple[tuple[type, ...], str], ...] = (
    ((bool,), "bool"), ((int,), "int"), ((float, decimal.Decimal), "numeric"),
    ((dt.datetime,), "timestamp"), ((dt.date,), "date"))


class SqlRefused(Invalid):
    """The SQL is not allowed, or the database refused it (422 on field `sql`)."""

    def __init__(self, message: str) -> None:
        super().__init__("sql", message)
        self.message = message
        self.field = "sql"


@dataclass(frozen=True)
class TableInfo:
    """A public resource as the database knows it: its physical table and column names."""

    physical: str
    columns: frozenset[str]


@dataclass(frozen=True)
class Compiled:
    """A checked statement for one dialect, and the resource ids it reads."""

    sql: str
    tables: list[str]
    # (physical, resource id) pairs, to put resource ids back into database error messages.
    names: tuple[tuple[str, str], ...] = ()


def _where(node: exp.Expression) -> str:
    for n in node.walk():
        if n.meta.get("line"):
            return f" at line {n.meta['line']}, column {n.meta['col']}"
    return ""


def _refuse_node(node: exp.Expression) -> SqlRefused:
    if isinstance(node, exp.Func):
        name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
        return SqlRefused(f"function {name.lower()}() is not allowed{_where(node)}"
                          f" / 不允许使用函数 {name.lower()}()")
    what = _CONSTRUCTS.get(node.key, node.key.upper())
    return SqlRefused(f"{what} is not allowed{_where(node)}; only SELECT queries on public "
                      f"resources are / 不允许使用 {what}，只能查询公开资源")


def _check_node(node: exp.Expression) -> None:
    """Refuse a node that is not on the allow-lists (or is allowed only in some places)."""
    kind = type(node)
    if kind not in ALLOWED_NODES and kind not in ALLOWED_FUNCTIONS:
        raise _refuse_node(node)
    if isinstance(node, exp.With) and node.args.get("recursive"):
        raise SqlRefused(f"WITH RECURSIVE is not allowed{_where(node)} / 不允许递归查询")
    if isinstance(node, exp.DataType) and node.this not in CAST_TYPES:
        raise SqlRefused(f"cast to {node.sql('postgres')} is not allowed{_where(node)}"
                         f" / 不允许转换为该类型")
    if isinstance(node, exp.SetOperation) and not (
            isinstance(node.left, exp.Query) and isinstance(node.right, exp.Query)):
        raise SqlRefused(f"{node.key.upper()} needs a SELECT on each side{_where(node)}"
                         f" / {node.key.upper()} 两侧都必须是 SELECT")
    if isinstance(node, exp.Var):
        parent = node.parent
        unit_ok = isinstance(parent, exp.Extract) and node.name.upper() in EXTRACT_UNITS
        if not (unit_ok or isinstance(parent, exp.Limit) and node.name.upper() == "ALL"):
            raise SqlRefused(f"{node.name} is not allowed here{_where(node)} / 此处不允许 {node.name}")
    if isinstance(node, exp.Column) and (node.args.get("db") or node.args.get("catalog")):
        raise SqlRefused(f"column {node.sql('postgres')} may not name a schema{_where(node)}"
                         f" / 列名不能带模式名")
    if isinstance(node, exp.Table):
        extra = [k for k, v in node.args.items() if v and k not in ("this", "alias")]
        if extra or not isinstance(node.this, exp.Identifier):
            target = node.sql("postgres")
            raise SqlRefused(f"table {target}{_where(node)}: only the plain name of a public "
                             f"resource may follow FROM or JOIN / FROM 之后只能是公开资源的名称")


def _visible_cte(table: exp.Table) -> bool:
    """True when a CTE of this name is in scope at `table` (the database's own rule)."""
    name = table.name
    child: exp.Expression = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):  # inside a CTE body: only earlier CTEs are visible
            before = node.expressions[: next((i for i, c in enumerate(node.expressions) if c is child), 0)]
            if any(c.alias == name for c in before):
                return True
            child = node.parent or node  # skip the query that owns this WITH
            node = child.parent
            continue
        for w in node.iter_expressions():
            if isinstance(w, exp.With) and w is not child and any(
                c.alias == name for c in w.expressions
            ):
                return True
        child, node = node, node.parent
    return False


def _figure_name(node: exp.Expression) -> str | None:
    """The column name PostgreSQL gives an unnamed output, given on both databases."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Window):
        node = node.this
    if isinstance(node, exp.Cast):
        node = node.this
    if isinstance(node, exp.Column):
        return None if isinstance(node.this, exp.Star) else node.name
    if isinstance(node, exp.Func):
        return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
    return "case" if isinstance(node, exp.Case) else "?column?"


def _name_outputs(query: exp.Expression) -> None:
    while isinstance(query, exp.Subquery):
        query = query.this
    while isinstance(query, exp.SetOperation):
        query = query.left
    if not isinstance(query, exp.Select):
        return
    for e in list(query.expressions):
        name = None if isinstance(e, exp.Alias | exp.Star | exp.Column) else _figure_name(e)
        if name:
            e.replace(exp.alias_(e.copy(), exp.to_identifier(name, quoted=True)))


def _cap_rows(query: exp.Expression, max_rows: int) -> None:
    limit = query.args.get("limit")
    rows = max_rows
    if limit is not None:
        value = limit.expression
        if isinstance(value, exp.Literal) and value.is_int:
            rows = min(rows, int(value.this))
        elif not (isinstance(value, exp.Var) and value.name.upper() == "ALL"):
            raise SqlRefused(f"LIMIT must be a whole number{_where(limit)} / LIMIT 必须是非负整数")
    query.set("limit", exp.Limit(expression=exp.Literal.number(rows)))


def _for_sqlite(node: exp.Expression) -> exp.Expression:
    """Rewrite what sqlglot leaves PostgreSQL-only: EXTRACT and CONCAT."""
    if isinstance(node, exp.Extract):
        fmt = EXTRACT_UNITS[node.this.name.upper()]
        strftime = exp.Anonymous(this="STRFTIME", expressions=[exp.Literal.string(fmt),
                                                                node.expression])
        return exp.Cast(this=strftime, to=exp.DataType.build("int"))
    if isinstance(node, exp.Concat):  # concat() skips NULLs; || does not
        parts = [exp.Coalesce(this=exp.Cast(this=e, to=exp.DataType.build("text")),
                              expressions=[exp.Literal.string("")]) for e in node.expressions]
        out = parts[0]
        for part in parts[1:]:
            out = exp.DPipe(this=out, expression=part)
        return exp.Paren(this=out)
    return node


def _for_postgres(node: exp.Expression) -> exp.Expression:
    """PostgreSQL has round(numeric, int) but not round(double precision, int)."""
    if isinstance(node, exp.Round) and node.args.get("decimals") is not None:
        node.set("this", exp.Cast(this=node.this, to=exp.DataType.build("decimal")))
    return node


def _parse(sql: str) -> exp.Query:
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused(f"SQL is longer than {MAX_SQL_CHARS} characters / SQL 超过 {MAX_SQL_CHARS} 个字符")
    try:
        parsed = sqlglot.parse(sql, read="postgres")
    except SqlglotError as exc:
        errors = getattr(exc, "errors", None) or [{}]
        first = errors[0]
        where = f" at line {first['line']}, column {first['col']}" if first.get("line") else ""
        reason = first.get("description") or str(exc).splitlines()[0]
        word = re.match(r"\s*(\w+)", sql)
        if word and word[1].upper() not in ("SELECT", "WITH"):
            reason = f"only SELECT queries are allowed, not {word[1].upper()}"
        raise SqlRefused(f"SQL could not be parsed{where}: {reason} / SQL 语法错误") from None
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        raise SqlRefused("SQL is empty / SQL 为空")
    if len(statements) > 1:
        raise SqlRefused("multiple statements are not allowed; send one SELECT / 只能包含一条 SELECT 语句")
    statement = statements[0]
    if not isinstance(statement, exp.Select | exp.SetOperation | exp.Subquery):
        raise _refuse_node(statement)
    return statement


def compile_sql(
    sql: str, resolve: Callable[[str], TableInfo | None], dialect: str, max_rows: int = 32000
) -> Compiled:
    """Check a user's SELECT and rewrite it onto published tables (数据开放SQL查询编译)."""
    target = DIALECTS.get(dialect)
    if target is None:
        raise ValueError(f"unknown dialect {dialect!r}")
    try:
        return _compile(sql, resolve, target, max_rows)
    except RecursionError:  # sqlglot's parser and generator recurse on nesting
        raise SqlRefused("SQL is nested too deeply / SQL 嵌套层级过深") from None


def _compile(sql: str, resolve: Callable[[str], TableInfo | None], target: str, max_rows: int) -> Compiled:
    tree: exp.Expression = _parse(sql)
    tree = normalize_identifiers(tree, dialect="postgres")  # unquoted names fold to lower case
    for node in tree.walk():
        _check_node(node)

    resources: list[tuple[exp.Table, TableInfo]] = []
    seen: dict[str, TableInfo] = {}
    tables = sorted(tree.find_all(exp.Table), key=lambda t: t.this.meta.get("start", 1 << 30))
    for table in tables:
        if _visible_cte(table):
            continue
        name = table.name
        info = seen.get(name) or resolve(name)
        if info is None:
            raise SqlRefused(f'table "{name}"{_where(table)} is not a public resource / '
                             f'数据表 "{name}" 不是公开资源')
        seen[name] = info
        resources.append((table, info))

    physical = {info.physical.lower() for info in seen.values()}
    known = set().union(*(info.columns for info in seen.values()))
    for node in tree.walk():
        if isinstance(node, exp.CTE) and node.alias.lower() in physical:
            raise SqlRefused(f'WITH name "{node.alias}" is reserved / WITH 名称 "{node.alias}" 不可用')
        if isinstance(node, exp.Alias):
            known.add(node.alias)
        if isinstance(node, exp.TableAlias):
            known.update(c.name for c in node.columns)
    for column in tree.find_all(exp.Column):
        if not isinstance(column.this, exp.Star) and column.name not in known:
            where = ", ".join(seen) or "the query"
            raise SqlRefused(f'column "{column.name}"{_where(column)} does not exist in {where}'
                             f' / 列 "{column.name}" 不存在')

    _name_outputs(tree)
    for table, info in resources:
        original = table.this
        table.set("this", exp.to_identifier(info.physical, quoted=True))
        if not table.alias:
            table.set("alias", exp.TableAlias(this=original))
    _cap_rows(tree, max_rows)
    tree = tree.transform(_for_sqlite if target == "sqlite" else _for_postgres)
    try:
        out = tree.sql(dialect=target, identify=True, comments=False,
                       unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as exc:
        raise SqlRefused(f"SQL cannot run on {target}: {exc} / 该 SQL 无法在此数据库执行") from None
    # Belt and braces: what we send must itself be exactly one SELECT.
    again = [s for s in sqlglot.parse(out, read=target) if s is not None]
    if len(again) != 1 or not isinstance(again[0], exp.Query):
        raise SqlRefused("SQL could not be rewritten safely / SQL 无法安全改写")
    return Compiled(sql=out, tables=list(seen), names=tuple((i.physical, n) for n, i in seen.items()))


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def _value_type(values: Iterator[Any]) -> str:
    """SQLite has no result types: name the column after its first non-null value."""
    first = next((v for v in values if v is not None), None)
    return next((name for kinds, name in VALUE_TYPES if isinstance(first, kinds)), "text")


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in out:
            n += 1
            candidate = f"{name}_{n}"
        out.append(candidate)
    return out


def _fetch(conn: Connection, sql: str) -> tuple[list[str], list[Any], list[tuple[Any, ...]]]:
    if conn.dialect.paramstyle in ("pyformat", "format"):
        sql = sql.replace("%", "%%")  # the driver reads % as a placeholder even with no params
    result = conn.exec_driver_sql(sql)
    codes = [d[1] for d in result.cursor.description or []]
    return list(result.keys()), codes, [tuple(r) for r in result.fetchall()]


def _run_postgres(conn: Connection, sql: str, timeout_ms: int) -> Any:
    if getattr(conn.connection.driver_connection, "autocommit", False):
        raise RuntimeError("run_sql needs a connection that is not in autocommit mode")
    # A savepoint when the caller's transaction is open (it may have written); SET LOCAL and
    # READ ONLY end with it. Going read-only is allowed at any point of a transaction.
    trans = conn.begin_nested() if conn.in_transaction() else conn.begin()
    try:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        conn.exec_driver_sql("SET LOCAL standard_conforming_strings = on")  # as sqlglot writes
        return _fetch(conn, sql)
    finally:
        trans.rollback()  # nothing to keep: the query only read


def _run_sqlite(conn: Connection, sql: str, timeout_ms: int) -> Any:
    raw = conn.connection.driver_connection
    if not isinstance(raw, sqlite3.Connection):
        raise RuntimeError("run_sql needs the sqlite3 driver on SQLite")
    deadline = time.monotonic() + timeout_ms / 1000
    trans = None if conn.in_transaction() else conn.begin()  # leave the connection as it was
    was = conn.exec_driver_sql("PRAGMA query_only").scalar()
    conn.exec_driver_sql("PRAGMA query_only = ON")
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        return _fetch(conn, sql)
    finally:
        raw.set_progress_handler(None, 0)
        conn.exec_driver_sql(f"PRAGMA query_only = {1 if was else 0}")
        if trans is not None:
            trans.rollback()


def run_sql(
    conn: Connection, compiled: Compiled, timeout_ms: int = 5000
) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Run a compiled query read-only with a time limit; CKAN's (fields, records)."""
    postgres = conn.dialect.name == "postgresql"
    try:
        if postgres:
            keys, codes, rows = _run_postgres(conn, compiled.sql, timeout_ms)
        else:
            keys, codes, rows = _run_sqlite(conn, compiled.sql, timeout_ms)
    except DBAPIError as exc:
        orig = exc.orig
        message = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        if getattr(orig, "sqlstate", None) == "57014" or message == "interrupted":
            raise SqlRefused(f"query took too long (over {timeout_ms} ms) / 查询超时") from None
        for phys, resource in compiled.names:
            message = re.sub(rf"\b{re.escape(phys)}\b", resource, message)
        raise SqlRefused(f"the database refused the query: {message} / 数据库拒绝执行该查询") from None
    names = _unique(keys)
    fields = []
    for i, name in enumerate(names):
        kind = PG_TYPES.get(codes[i], "text") if postgres else _value_type(r[i] for r in rows)
        fields.append({"id": name, "type": kind})
    records = [{n: _json_value(v) for n, v in zip(names, row, strict=True)} for row in rows]
    return fields, records

