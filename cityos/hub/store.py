"""Row storage of catalog resources (资源数据存储): one typed table per resource, with history.

Each resource gets two tables built from its information items:
  hub_data_<id>       the current rows: `_row` (id), `_key` (unique), `_vfrom`, `_hash`, items
  hub_data_<id>_hist  rows superseded by a later version, with `_vto` (the version that ended them)
so the state at any version is "current rows from before it, plus history rows alive at it":
diff, history and rollback all come from that one rule. A load writes straight into an empty
table, or into a staging table that is then merged in four set statements; either way inside
the caller's transaction, so a failed load leaves nothing behind.

This is the hub's one database adapter: bulk insert (COPY on PostgreSQL, executemany on
SQLite) is the only dialect-specific code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
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
    String,
    Table,
    Text,
    and_,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from cityos.core.crypto import Keyring
from cityos.core.db import UTCDateTime
from cityos.core.errors import Invalid

# Item types and how each is stored.
TYPES: dict[str, Any] = {
    "string": Text,
    "integer": BigInteger,
    "number": Float,
    "boolean": Boolean,
    "date": Date,
    "datetime": UTCDateTime,
    "citizen_id": lambda: String(18),
    "credit_code": lambda: String(18),
    "phone": lambda: String(20),
}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED = {"_row", "_key", "_vfrom", "_vto", "_hash"}
KEY_SEP = "\x1f"
DEFER_INDEXES = 5000  # a first load whose first batch has this many rows builds its indexes last
OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "startswith", "isnull")
EQUALITY_OPS = ("eq", "ne", "in", "isnull")


@dataclass(frozen=True)
class Field:
    """One stored item: its name, type, and whether it is kept encrypted (sensitive)."""

    name: str
    type: str
    encrypted: bool = False
    indexed: bool = False


@dataclass(frozen=True)
class Cond:
    """A row condition on one item: `field op value` (values already typed)."""

    field: str
    op: str
    value: Any = None


@dataclass
class Layout:
    """A resource's tables and how a row of typed values becomes a stored row."""

    resource_id: int
    fields: list[Field]
    key_fields: list[str]
    table: Table
    hist: Table
    by_name: dict[str, Field] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {f.name: f for f in self.fields}

    def context(self, name: str) -> str:
        """Encryption context (bound as AAD) of an item: a ciphertext cannot move columns."""
        return f"hub.{self.resource_id}.{name}"

    @property
    def item_columns(self) -> list[str]:
        """Stored item columns in order, each sensitive item followed by its blind index."""
        cols: list[str] = []
        for f in self.fields:
            cols.append(f.name)
            if f.encrypted:
                cols.append(f.name + "__bidx")
        return cols


def table_name(resource_id: int) -> str:
    return f"hub_data_{resource_id}"


def _columns(fields: Sequence[Field], history: bool) -> list[Column[Any]]:
    row_type = BigInteger().with_variant(Integer(), "sqlite")
    cols: list[Column[Any]] = [
        Column("_row", row_type, primary_key=True, autoincrement=not history),
        Column("_key", String(255), nullable=False),
        Column("_vfrom", Integer, nullable=False),
    ]
    if history:
        cols.append(Column("_vto", Integer, nullable=False))
    cols.append(Column("_hash", String(32), nullable=False))
    for f in fields:
        if f.encrypted:
            cols.append(Column(f.name, Text))
            cols.append(Column(f.name + "__bidx", String(64)))
        else:
            cols.append(Column(f.name, TYPES[f.type]()))
    return cols


def build_layout(resource_id: int, fields: Sequence[Field], key_fields: Sequence[str]) -> Layout:
    """Describe (not create) a resource's tables from its items."""
    for f in fields:
        if not NAME_RE.match(f.name) or f.name in RESERVED or f.name.endswith("__bidx"):
            raise Invalid("items", f"bad item name {f.name!r}: use a-z, 0-9 and _ / 信息项名称不合法")
        if f.type not in TYPES:
            raise Invalid("items", f"unknown type {f.type!r} of {f.name} / 未知类型")
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise Invalid("items", "duplicate item names / 信息项名称重复")
    for k in key_fields:
        if k not in names:
            raise Invalid("key_fields", f"key field {k!r} is not an item / 主键字段不存在")
    meta = MetaData()
    name = table_name(resource_id)
    # AUTOINCREMENT: SQLite must never reuse a _row that history still holds.
    table = Table(name, meta, *_columns(fields, history=False), sqlite_autoincrement=True)
    Index(f"ux_{name}_key", table.c._key, unique=True)
    Index(f"ix_{name}_vfrom", table.c._vfrom)
    for f in fields:
        if f.encrypted:
            Index(f"ix_{name}_{f.name}__bidx", table.c[f.name + "__bidx"])
        elif f.indexed and f.name not in key_fields:
            Index(f"ix_{name}_{f.name}", table.c[f.name])
    hist = Table(name + "_hist", meta, *_columns(fields, history=True))
    Index(f"ix_{name}_hist_key", hist.c._key)
    Index(f"ix_{name}_hist_v", hist.c._vfrom, hist.c._vto)
    return Layout(resource_id, list(fields), list(key_fields), table, hist)


def create_tables(conn: Connection, layout: Layout) -> None:
    layout.table.create(conn)
    layout.hist.create(conn)


def drop_tables(conn: Connection, layout: Layout) -> None:
    layout.hist.drop(conn, checkfirst=True)
    layout.table.drop(conn, checkfirst=True)


# -- encoding rows --------------------------------------------------------------------------------


def _hash_key(ring: Keyring) -> bytes:
    # Keyed: a plain hash of a row with an ID number in it could be brute-forced from the rest.
    return bytes.fromhex(ring.blind_index("row-hash", "hub"))[:32]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


class Encoder:
    """Turns typed item values into stored rows: encrypt, blind-index, key and hash."""

    def __init__(self, layout: Layout, ring: Keyring) -> None:
        self.layout, self.ring = layout, ring
        self._hkey = _hash_key(ring)
        self._names = [f.name for f in layout.fields]
        self._encrypted = {f.name for f in layout.fields if f.encrypted}
        self._ordinal = 0
        # Bulk loads encrypt and index one value per row: set each context's keys up once.
        self._seal = {n: ring.encryptor(layout.context(n)) for n in self._encrypted}
        self._index = {n: ring.indexer(layout.context(n)) for n in self._encrypted}
        self._plan = [(f.name, self._seal.get(f.name), self._index.get(f.name)) for f in layout.fields]

    def index(self, name: str, value: Any) -> str:
        return self._index[name](str(value))

    def key(self, values: dict[str, Any], indexes: dict[str, str] | None = None) -> str:
        """The row's key: its key items joined (blind-indexed when sensitive), or its ordinal."""
        if not self.layout.key_fields:
            self._ordinal += 1
            return f"#{self._ordinal:010d}"
        parts = []
        for k in self.layout.key_fields:
            v = values.get(k)
            if v is None:
                raise ValueError(f"key item {k} is empty / 主键 {k} 为空")
            if k in self._encrypted:
                parts.append(indexes[k] if indexes else self.index(k, v))
            else:
                parts.append(str(_jsonable(v)))
        key = KEY_SEP.join(parts)
        if len(key) > 255:
            raise ValueError("key longer than 255 characters / 主键过长")
        return key

    def encode(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """(_key, _hash, item columns...) for one row."""
        get = values.get
        plain = [get(n) for n in self._names]
        row: list[Any] = [None, None]
        indexes: dict[str, str] = {}
        for (name, seal, index), v in zip(self._plan, plain, strict=True):
            if seal is None:
                row.append(v)
            elif v is None:
                row += [None, None]
            else:
                text = str(v)
                indexes[name] = idx = index(text)  # type: ignore[misc]
                row += [seal(text), idx]
        row[0] = self.key(values, indexes)
        # orjson writes dates and datetimes as isoformat() would: the hash of a row is stable.
        row[1] = hashlib.blake2b(orjson.dumps(plain), key=self._hkey, digest_size=16).hexdigest()
        return tuple(row)


def decode(layout: Layout, ring: Keyring, row: dict[str, Any]) -> dict[str, Any]:
    """Decrypt the sensitive items of a stored row (in place) and drop the blind indexes."""
    for f in layout.fields:
        if f.encrypted and f.name in row:
            v = row[f.name]
            row[f.name] = None if v is None else ring.decrypt(v, layout.context(f.name))
            row.pop(f.name + "__bidx", None)
    return row


# -- writing --------------------------------------------------------------------------------------


def _raw_value(value: Any) -> Any:
    """SQLite gets what SQLAlchemy's own types would have stored (ISO text, UTC, 0/1)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def bulk_insert(conn: Connection, table: Table, columns: list[str], rows: Sequence[Sequence[Any]],
                prepared: bool = False) -> None:
    """Insert many rows fast: COPY on PostgreSQL, one prepared executemany on SQLite.

    `prepared`: the rows already hold what SQLite stores (see `sqlite_converters`)."""
    if not rows:
        return
    quoted = ", ".join(f'"{c}"' for c in columns)
    if conn.dialect.name == "postgresql":
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        with dbapi.cursor() as cur, cur.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
            write = copy.write_row
            for r in rows:
                write(r)
        return
    marks = ", ".join("?" * len(columns))
    conn.exec_driver_sql(
        f'INSERT INTO "{table.name}" ({quoted}) VALUES ({marks})',
        rows if prepared else [tuple(_raw_value(v) for v in r) for r in rows],
    )


def copy_text(conn: Connection, table: Table, columns: list[str], data: bytes) -> None:
    """Insert rows given as PostgreSQL COPY text (tab-separated, escaped, `\\N` for NULL)."""
    quoted = ", ".join(f'"{c}"' for c in columns)
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    with dbapi.cursor() as cur, cur.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
        copy.write(data)


def sqlite_converters(layout: Layout, columns: Sequence[str]) -> list[tuple[int, Any]]:
    """(position, function) for the columns whose values SQLite stores as text: dates, datetimes."""
    out = []
    for pos, name in enumerate(columns):
        f = layout.by_name.get(name)
        if f is not None and not f.encrypted and f.type in ("date", "datetime"):
            out.append((pos, _raw_value))
    return out


@dataclass
class Counts:
    added: int = 0
    changed: int = 0
    removed: int = 0
    row_count: int = 0


class Writer:
    """Writes one version of a resource: `add` batches of encoded rows, then `finish`.

    Into an empty table (a first load) rows go straight to the current table; otherwise into a
    staging table that `finish` merges (replace: rows missing from the load are removed;
    upsert: only the given keys change).
    """

    def __init__(self, conn: Connection, layout: Layout, version: int, mode: str) -> None:
        if mode not in ("replace", "upsert"):
            raise Invalid("mode", "mode must be replace or upsert / 模式须为 replace 或 upsert")
        self.conn, self.layout, self.version, self.mode = conn, layout, version, mode
        self.rows_in = 0
        empty = conn.execute(select(layout.table.c._row).limit(1)).first() is None
        self.direct = empty
        self.target = layout.table
        if not empty:
            if conn.dialect.name == "sqlite":
                # pysqlite runs DDL outside any transaction until a write has begun one: begin it
                # with a write that changes nothing, or a crash leaves the staging table behind.
                conn.execute(delete(layout.table).where(false()))
            meta = MetaData()
            self.stage = Table(f"{layout.table.name}_stage", meta,
                               *[c for c in _columns(layout.fields, history=False) if c.name != "_row"])
            self.stage.drop(conn, checkfirst=True)
            self.stage.create(conn)
            self.target = self.stage
        self.columns = ["_key", "_hash", *layout.item_columns, "_vfrom"]
        self.sqlite = conn.dialect.name == "sqlite"
        # COPY text made elsewhere is UTF-8: it may go straight to a connection that speaks it.
        info = getattr(conn.connection.driver_connection, "info", None)
        self.copy_utf8 = not self.sqlite and getattr(info, "encoding", None) == "utf-8"
        self.convert = sqlite_converters(layout, self.columns) if self.sqlite else []
        self.deferred: list[Index] = []

    def add(self, rows: list[tuple[Any, ...]], converted: bool = False) -> None:
        """Write a batch of `Encoder.encode` rows (`converted`: already through `sqlite_converters`)."""
        v = self.version
        if self.convert and not converted:
            out: list[Any] = []
            for r in rows:
                row = [*r, v]
                for pos, conv in self.convert:
                    if row[pos] is not None:
                        row[pos] = conv(row[pos])
                out.append(tuple(row))
        else:
            out = [(*r, v) for r in rows]
        bulk_insert(self.conn, self.target, self.columns, out, prepared=self.sqlite)
        self._added(len(rows))

    def add_ready(self, rows: list[tuple[Any, ...]] | bytes, count: int) -> None:
        """Write `count` rows made ready elsewhere: tuples in `columns` order with the version and
        SQLite's text for dates, or (PostgreSQL, `copy_utf8`) COPY text of those columns."""
        if isinstance(rows, bytes):
            copy_text(self.conn, self.target, self.columns, rows)
        else:
            bulk_insert(self.conn, self.target, self.columns, rows, prepared=True)
        self._added(count)

    def _added(self, count: int) -> None:
        if self.direct and not self.rows_in and count >= DEFER_INDEXES:
            # A large first load: building the indexes once at the end is several times faster
            # than keeping them up to date row by row (the key is a random blind index). Dropped
            # after the first insert, so that SQLite has begun the transaction the DDL must be in.
            self.deferred = sorted(self.layout.table.indexes, key=lambda ix: str(ix.name))
            for ix in self.deferred:
                ix.drop(self.conn)
        self.rows_in += count

    def finish(self, delete_keys: Iterable[str] = ()) -> Counts:
        """Merge the staged rows (and deletions) into the current table; return the counts."""
        lay, conn, v = self.layout, self.conn, self.version
        cur, hist = lay.table, lay.hist
        if self.direct:
            counts = Counts(added=self.rows_in)
            if list(delete_keys):
                raise Invalid("delete", "nothing to delete in an empty resource / 资源无数据可删除")
            for ix in self.deferred:
                ix.create(conn)
            self.deferred = []
        else:
            s = self.stage
            Index(f"ix_{s.name}_key", s.c._key).create(conn)
            keys = list(delete_keys)
            if keys:
                dk = Table(f"{cur.name}_del", MetaData(), Column("_key", String(255), primary_key=True))
                dk.drop(conn, checkfirst=True)
                dk.create(conn)
                conn.execute(insert(dk), [{"_key": k} for k in dict.fromkeys(keys)])
            in_stage = exists().where(s.c._key == cur.c._key)
            differs = exists().where(and_(s.c._key == cur.c._key, s.c._hash != cur.c._hash))
            gone: ColumnElement[bool] = differs
            if self.mode == "replace":
                gone = or_(differs, not_(in_stage))
            if keys:
                gone = or_(gone, exists().where(dk.c._key == cur.c._key))
            counts = Counts()
            counts.changed = conn.execute(select(func.count()).select_from(cur).where(differs)).scalar_one()
            counts.removed = conn.execute(select(func.count()).select_from(cur).where(gone)).scalar_one() \
                - counts.changed
            counts.added = conn.execute(
                select(func.count()).select_from(s).where(~exists().where(cur.c._key == s.c._key))
            ).scalar_one()
            item_cols = lay.item_columns
            conn.execute(insert(hist).from_select(
                ["_row", "_key", "_vfrom", "_vto", "_hash", *item_cols],
                select(cur.c._row, cur.c._key, cur.c._vfrom, literal(v), cur.c._hash,
                       *[cur.c[c] for c in item_cols]).where(gone),
            ))
            conn.execute(delete(cur).where(gone))
            conn.execute(insert(cur).from_select(
                ["_key", "_vfrom", "_hash", *item_cols],
                select(s.c._key, literal(v), s.c._hash, *[s.c[c] for c in item_cols])
                .where(~exists().where(cur.c._key == s.c._key)),
            ))
            s.drop(conn)
            if keys:
                dk.drop(conn)
        counts.row_count = conn.execute(select(func.count()).select_from(cur)).scalar_one()
        return counts


# -- versions: state, diff, rollback --------------------------------------------------------------


def state_at(layout: Layout, version: int) -> Any:
    """The rows of `version` as a subquery (_key, _hash, items)."""
    cur, hist = layout.table, layout.hist
    cols = ["_key", "_hash", *layout.item_columns]
    return union_all(
        select(*[cur.c[c] for c in cols]).where(cur.c._vfrom <= version),
        select(*[hist.c[c] for c in cols]).where(and_(hist.c._vfrom <= version, hist.c._vto > version)),
    ).subquery(f"v{version}")


def rows_at(conn: Connection, layout: Layout, ring: Keyring, version: int,
            limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    st = state_at(layout, version)
    cols = [st.c[f.name] for f in layout.fields]
    rows = conn.execute(select(*cols).order_by(st.c._key).limit(limit).offset(offset)).mappings()
    return [decode(layout, ring, dict(r)) for r in rows]


def _changes(layout: Layout, a: int, b: int) -> tuple[Any, Any]:
    """Rows born after `a` and alive at `b`, and rows alive at `a` that died by `b`: both come
    from the indexed version columns, so a diff costs what changed, not the table's size."""
    cur, hist = layout.table, layout.hist
    cols = ["_key", "_hash", *layout.item_columns]
    born = union_all(
        select(*[cur.c[c] for c in cols]).where(and_(cur.c._vfrom > a, cur.c._vfrom <= b)),
        select(*[hist.c[c] for c in cols]).where(
            and_(hist.c._vfrom > a, hist.c._vfrom <= b, hist.c._vto > b)),
    ).subquery("born")
    died = select(*[hist.c[c] for c in cols]).where(
        and_(hist.c._vfrom <= a, hist.c._vto > a, hist.c._vto <= b)).subquery("died")
    return born, died


def diff(conn: Connection, layout: Layout, ring: Keyring, a: int, b: int,
         limit: int = 100) -> dict[str, Any]:
    """What changed from version `a` to version `b` (a < b): counts and the first rows of each."""
    if not a < b:
        raise Invalid("from", "the first version must be older than the second / 起始版本须早于结束版本")
    born, died = _changes(layout, a, b)
    names = [f.name for f in layout.fields]
    added = select(*[born.c[n] for n in names]).where(~exists().where(died.c._key == born.c._key))
    removed = select(*[died.c[n] for n in names]).where(~exists().where(born.c._key == died.c._key))
    changed_pairs = (
        select(*[died.c[n].label(f"old__{n}") for n in names], *[born.c[n] for n in names])
        .select_from(born.join(died, died.c._key == born.c._key))
        .where(died.c._hash != born.c._hash)
    )

    def count(q: Any) -> int:
        return int(conn.execute(select(func.count()).select_from(q.subquery())).scalar_one())

    def fetch(q: Any) -> list[dict[str, Any]]:
        return [decode(layout, ring, dict(r)) for r in conn.execute(q.limit(limit)).mappings()]

    changed_rows = []
    for r in conn.execute(changed_pairs.limit(limit)).mappings():
        old = decode(layout, ring, {n: r[f"old__{n}"] for n in names})
        new = decode(layout, ring, {n: r[n] for n in names})
        changed_rows.append({"old": old, "new": new,
                             "fields": [n for n in names if old[n] != new[n]]})
    return {
        "from": a, "to": b,
        "added": count(added), "removed": count(removed), "changed": count(changed_pairs),
        "added_rows": fetch(added), "removed_rows": fetch(removed), "changed_rows": changed_rows,
    }


def stage_version(writer: Writer, version: int) -> None:
    """Fill a replace-mode writer with the rows of an earlier version (for rollback)."""
    if writer.mode != "replace":
        raise ValueError("rollback needs a replace writer")
    st = state_at(writer.layout, version)
    cols = ["_key", "_hash", *writer.layout.item_columns]
    writer.conn.execute(insert(writer.target).from_select(
        [*cols, "_vfrom"], select(*[st.c[c] for c in cols], literal(writer.version))))
    writer.rows_in = int(writer.conn.execute(select(func.count()).select_from(writer.target)).scalar_one())


def clear(conn: Connection, layout: Layout, version: int) -> Counts:
    """A version with no rows: move every current row to history (rollback to version 0)."""
    cur, hist = layout.table, layout.hist
    item_cols = layout.item_columns
    removed = int(conn.execute(select(func.count()).select_from(cur)).scalar_one())
    conn.execute(insert(hist).from_select(
        ["_row", "_key", "_vfrom", "_vto", "_hash", *item_cols],
        select(cur.c._row, cur.c._key, cur.c._vfrom, literal(version), cur.c._hash,
               *[cur.c[c] for c in item_cols])))
    conn.execute(delete(cur))
    return Counts(removed=removed, row_count=0)


# -- reading --------------------------------------------------------------------------------------


def where(layout: Layout, ring: Keyring, conds: Iterable[Cond]) -> list[ColumnElement[bool]]:
    """Conditions as SQL on real columns with bound values: no text from the caller reaches SQL."""
    t = layout.table
    out: list[ColumnElement[bool]] = []
    for c in conds:
        f = layout.by_name.get(c.field)
        if f is None:
            raise Invalid(c.field, f"no such item {c.field!r} / 无此信息项")
        if c.op not in OPS:
            raise Invalid(c.field, f"unknown operator {c.op!r} / 未知运算符")
        if f.encrypted:
            if c.op not in EQUALITY_OPS:
                raise Invalid(c.field, "a sensitive item is matched exactly only / 敏感信息项仅支持精确匹配")
            col = t.c[f.name + "__bidx"]
            ctx = layout.context(f.name)
            if c.op == "isnull":
                out.append(col.is_(None) if c.value else col.is_not(None))
                continue
            values = c.value if c.op == "in" else [c.value]
            idx = [i for v in values for i in ring.blind_index_candidates(str(v), ctx)]
            out.append(not_(col.in_(idx)) if c.op == "ne" else col.in_(idx))
            continue
        col = t.c[f.name]
        v = c.value
        if c.op == "eq":
            out.append(col == v)
        elif c.op == "ne":
            out.append(col != v)
        elif c.op == "gt":
            out.append(col > v)
        elif c.op == "gte":
            out.append(col >= v)
        elif c.op == "lt":
            out.append(col < v)
        elif c.op == "lte":
            out.append(col <= v)
        elif c.op == "in":
            out.append(col.in_(list(v)))
        elif c.op == "isnull":
            out.append(col.is_(None) if v else col.is_not(None))
        elif f.type not in ("string", "citizen_id", "credit_code", "phone"):
            raise Invalid(c.field, f"{c.op} applies to text items only / 仅文本信息项支持此运算")
        elif c.op == "contains":
            out.append(col.contains(str(v), autoescape=True))
        else:
            out.append(col.startswith(str(v), autoescape=True))
    return out


def select_rows(
    conn: Connection, layout: Layout, ring: Keyring, *, fields: Sequence[str],
    conds: Iterable[Cond] = (), sort: Sequence[tuple[str, bool]] = (), limit: int = 100,
    offset: int = 0, with_total: bool = False,
) -> tuple[list[dict[str, Any]], int | None, bool]:
    """A page of current rows: (rows, total if asked, whether more follow)."""
    t = layout.table
    for name in fields:
        if name not in layout.by_name:
            raise Invalid("fields", f"no such item {name!r} / 无此信息项")
    clauses = where(layout, ring, conds)
    order = []
    for name, desc in sort:
        f = layout.by_name.get(name)
        if f is None:
            raise Invalid("sort", f"no such item {name!r} / 无此信息项")
        if f.encrypted:
            raise Invalid("sort", f"cannot sort by sensitive item {name} / 敏感信息项不能排序")
        order.append(t.c[name].desc() if desc else t.c[name].asc())
    order.append(t.c._row)
    cols = [t.c[n] for n in fields]
    q = select(*cols).where(*clauses).order_by(*order).limit(limit + 1).offset(offset)
    if conn.dialect.name == "sqlite" and all(_stored_kind(layout.by_name[n]) != "number" for n in fields):
        rows = [decode(layout, ring, r) for r in _sqlite_page(conn, q, layout, fields)]
    else:
        rows = [decode(layout, ring, dict(r)) for r in conn.execute(q).mappings()]
    more = len(rows) > limit
    total = None
    if with_total:
        total = int(conn.execute(select(func.count()).select_from(t).where(*clauses)).scalar_one())
    return rows[:limit], total, more


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


# How a value comes out of SQLite's JSON, per item type, into what SQLAlchemy's type would give.
_FROM_JSON: dict[str, Any] = {"boolean": bool, "date": dt.date.fromisoformat, "datetime": _utc}


def _stored_kind(f: Field) -> str:
    return "string" if f.encrypted else f.type  # a sensitive item is stored as a text token


def _sqlite_page(conn: Connection, q: Any, layout: Layout, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of `q` (a select of `fields`) as SQLite builds them into one JSON array.

    Python's sqlite3 releases the GIL around every step, once per row. Under concurrent reads each
    release hands the GIL to another request thread: a context switch per row, which cost more
    than the read itself (a 100-row shared read: 180 against 322 req/s, see docs/benchmarks.md).
    One aggregate is one step. Values come back as the row types would: booleans, dates and
    datetimes are converted. Not for floats (the caller reads those row by row): SQLite's JSON
    keeps 15 digits, and even printf('%!.17g') misprints the largest doubles."""
    sub = q.subquery()
    one_array = func.json_group_array(func.json_array(*(sub.c[n] for n in fields)))
    page = conn.execute(select(one_array)).scalar_one()
    rows = [dict(zip(fields, v, strict=True)) for v in orjson.loads(page)]
    for name in fields:
        convert = _FROM_JSON.get(_stored_kind(layout.by_name[name]))
        if convert is not None:
            for row in rows:
                if row[name] is not None:
                    row[name] = convert(row[name])
    return rows


def rows_by_keys(conn: Connection, layout: Layout, ring: Keyring, keys: Sequence[str]
                 ) -> dict[str, dict[str, Any]]:
    """Current rows by stored key, decrypted (for merging partial rows)."""
    t = layout.table
    names = [f.name for f in layout.fields]
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), 500):
        chunk = list(keys[start:start + 500])
        q = select(t.c._key, *[t.c[n] for n in names]).where(t.c._key.in_(chunk))
        for r in conn.execute(q).mappings():
            row = dict(r)
            out[row.pop("_key")] = decode(layout, ring, row)
    return out


def find_by_key(conn: Connection, layout: Layout, ring: Keyring, key_values: dict[str, Any]
                ) -> dict[str, Any] | None:
    """The current row with this key (key items typed), decrypted; None if absent."""
    key = Encoder(layout, ring)
    candidates = [key.key(key_values)]
    enc_keys = [k for k in layout.key_fields if layout.by_name[k].encrypted]
    if enc_keys and len(layout.key_fields) == 1:
        # Survive an interrupted index-key rotation: try the value under every index key.
        k = enc_keys[0]
        candidates = ring.blind_index_candidates(str(key_values[k]), layout.context(k))
    t = layout.table
    row = conn.execute(select(t).where(t.c._key.in_(candidates)).limit(1)).mappings().first()
    if row is None:
        return None
    return decode(layout, ring, {k: v for k, v in row.items() if not k.startswith("_") or k == "_row"})
