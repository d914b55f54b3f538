"""Published rows (开放数据副本): the de-identified copy of a dataset's source resource.

Each published dataset has one table `od_rows_<id>` with CKAN DataStore's `_id` column and
one column per output field. It is rebuilt from the source resource's current version: rows
are read, de-identified by the dataset's rules, checked for k-anonymity, written to a
staging table and swapped in only if every check passes. A failed check keeps the last good
copy and says why. Public routes read only these tables, never the hub's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    select,
    text,
)

import cityos.hub.service as hub
from cityos.core.db import UTCDateTime
from cityos.opendata import deid

BATCH = 5000
SQL_TYPES: dict[str, Any] = {
    "string": Text, "integer": BigInteger, "number": Float, "boolean": Boolean, "date": Date,
    "datetime": UTCDateTime, "citizen_id": Text, "credit_code": Text, "phone": Text,
}
# CKAN DataStore's type names, shown in `fields` of datastore_search.
CKAN_TYPES = {"string": "text", "integer": "int", "number": "numeric", "boolean": "bool",
              "date": "date", "datetime": "timestamp", "citizen_id": "text", "credit_code": "text",
              "phone": "text"}


def table_name(dataset_id: int) -> str:
    return f"od_rows_{dataset_id}"


_TABLES: dict[tuple[Any, ...], Table] = {}


def rows_table(dataset_id: int, fields: Sequence[dict[str, Any]], name: str | None = None) -> Table:
    """The SQLAlchemy Table of a dataset's published rows (cached: compiled statements reuse)."""
    name = name or table_name(dataset_id)
    key = (name, tuple((f["id"], f["type"], bool(f.get("indexed"))) for f in fields))
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) > 1024:
            _TABLES.clear()
        cols: list[Any] = [Column("_id", Integer, primary_key=True, autoincrement=False)]  # row ordinal
        cols += [Column(f["id"], SQL_TYPES[f["type"]]()) for f in fields]
        table = Table(name, MetaData(), *cols)
        for f in fields:
            if f.get("indexed"):
                Index(f"ix_{name}_{f['id']}", table.c[f["id"]])
        table = _TABLES[key] = table
    return table


@dataclass
class Built:
    """What a rebuild found: whether it was swapped in, and the checks' results."""

    ok: bool
    rows: int = 0
    fields: list[dict[str, Any]] = field(default_factory=list)
    kanon: deid.KResult | None = None
    reason: str | None = None
    bbox: list[float] | None = None


def out_field_dicts(outs: Sequence[deid.OutField], indexed: set[str]) -> list[dict[str, Any]]:
    return [{"id": o.name, "title": o.title, "type": o.type, "source": o.source, "rule": o.rule,
             "indexed": o.name in indexed} for o in outs]


def build(conn: Connection, dataset_id: int, res: Any,
          sources: Sequence[deid.SourceField], rules: Sequence[deid.Rule], *, quasi: Sequence[str],
          k: int, indexed: set[str], lon: str | None = None, lat: str | None = None,
          check_only: bool = False) -> Built:
    """De-identify the source's current rows into a staging table; swap it in if k-anonymity
    holds. With `check_only`, run the checks and write nothing."""
    outs = deid.output_fields(list(sources), list(rules))
    fields = out_field_dicts(outs, indexed)
    transform = deid.compile_rules(list(sources), list(rules))
    needed = sorted({o.source for o in outs})
    final = table_name(dataset_id)
    # The staging table has no indexes: they are built once, after the rows, under the final name.
    staging = rows_table(dataset_id, [{**f, "indexed": False} for f in fields], f"{final}_next")
    if not check_only:
        staging.drop(conn, checkfirst=True)
        staging.create(conn)
    names = [f["id"] for f in fields]
    columns = ["_id", *names]
    counter: Counter[tuple[Any, ...]] = Counter()
    quasi = list(quasi)
    count = 0
    west = south = float("inf")
    east = north = float("-inf")
    batch: list[tuple[Any, ...]] = []
    for src in hub.current_rows(conn, res, needed):
        row = transform(src)
        if quasi:
            counter[tuple(row.get(q) for q in quasi)] += 1
        if lon and lat:
            x, y = row.get(lon), row.get(lat)
            if isinstance(x, int | float) and isinstance(y, int | float):
                west, east, south, north = min(west, x), max(east, x), min(south, y), max(north, y)
        count += 1
        if not check_only:
            batch.append((count, *[row.get(n) for n in names]))
            if len(batch) >= BATCH:
                hub.bulk_insert(conn, staging, columns, batch)
                batch = []
    if batch:
        hub.bulk_insert(conn, staging, columns, batch)
    result = deid.kanon_counts(counter, quasi, k) if quasi else None
    bbox = [west, south, east, north] if west != float("inf") else None
    if result is not None and not result.ok:
        if not check_only:
            staging.drop(conn)
        reason = (f"k-anonymity below {k} over {', '.join(quasi)}: {result.offending_rows} rows in "
                  f"{len(result.offending)}+ small groups / 准标识符组合低于k={k}")
        return Built(False, count, fields, result, reason, bbox)
    if not check_only:
        rows_table(dataset_id, fields, final).drop(conn, checkfirst=True)
        conn.execute(text(f'ALTER TABLE "{staging.name}" RENAME TO "{final}"'))
        if conn.dialect.name == "postgresql":  # the primary key's index keeps its name otherwise
            conn.execute(text(f'ALTER INDEX "{staging.name}_pkey" RENAME TO "{final}_pkey"'))
        for ix in rows_table(dataset_id, fields, final).indexes:
            ix.create(conn)
    return Built(True, count, fields, result, None, bbox)


def drop(conn: Connection, dataset_id: int) -> None:
    for name in (table_name(dataset_id), f"{table_name(dataset_id)}_next"):
        conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))


def exists(conn: Connection, dataset_id: int) -> bool:
    from sqlalchemy import inspect

    return inspect(conn).has_table(table_name(dataset_id))


def count_rows(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
