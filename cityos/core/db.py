"""Storage (存储): one engine per database URL, sessions, and the migration gate.

SQLite runs in WAL mode with foreign keys on; PostgreSQL 15 (with PostGIS) is the server tier.
Nothing here is SQLite- or PostgreSQL-specific beyond the connection set-up below.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every CityOS table (all packages share one metadata)."""

    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware datetimes stored as UTC on both databases (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class NotMigrated(Exception):
    """The database schema is behind the code: run `cityos db upgrade`."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the per-database set-up CityOS relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        if "poolclass" not in kwargs and parsed.database not in (None, "", ":memory:"):
            # A pooled connection per request thread (anyio's 40) and ten more. Past the pool, a
            # connection is opened for one request and closed after it: its pragmas run and SQLite
            # parses the whole schema again, each time. With the default 5 (+10) that churn cost
            # more than the shared read itself (docs/benchmarks.md).
            kwargs.setdefault("pool_size", 40)
            kwargs.setdefault("max_overflow", 10)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        event.listen(engine, "handle_error", _bad_value)
        return engine
    if "poolclass" not in kwargs:
        # Half the request threads: past the pool a connection is opened (a new server process,
        # milliseconds) and closed again on return; within PostgreSQL's 100 for a few processes.
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
    # Custom plans always: psycopg prepares repeated statements, and PostgreSQL's generic plan for
    # a spatial page query ignores its LIMIT (seconds instead of milliseconds). JIT only adds
    # start-up time to the short queries a city platform runs.
    kwargs.setdefault("connect_args", {"options": "-c plan_cache_mode=force_custom_plan -c jit=off"})
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    event.listen(engine, "handle_error", _bad_value)
    return engine


# A pooled connection used less than this long ago is handed out without a ping (as HikariCP's
# aliveBypassWindowMs). SQLAlchemy's pool_pre_ping pinged on every checkout: a round trip per
# request under load, where connections come back within milliseconds. One idle longer is
# pinged, so a server restarted during a pause costs no request an error; one that dies in use
# fails that request (503) and the pool drops every connection older than the failure.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _alive(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")  # None: connected just now
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("the pooled connection is gone") from exc
        if not alive:
            raise DisconnectionError("the pooled connection is gone")


def _bad_value(context: Any) -> Exception | None:
    """A value from a request that the database cannot hold is the client's mistake, not a crash:
    a number out of range (an id of 2**40, an offset past 2**63: SQLite's driver raises
    OverflowError, PostgreSQL numeric_value_out_of_range 22003) or a NUL character in text
    (psycopg refuses it before sending; PostgreSQL refuses \\u0000 in JSON, 22P05). Each becomes
    `Invalid`, which every API answers as bad input in its own format."""
    from cityos.core.errors import Invalid

    exc = context.original_exception
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, OverflowError) or state == "22003":
        return Invalid("request", "a number is out of range / 数值超出范围")
    if state in ("22P05", "22021") or type(exc).__name__ == "DataError" and "NUL (0x00)" in str(exc):
        return Invalid("request", "a NUL character (\\0) is not allowed / 不允许包含空字符")
    return None


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def bound_statements(session: Session, milliseconds: int) -> None:
    """Have PostgreSQL cancel any statement of this session that runs longer than `milliseconds`
    (statement_timeout, set in each of its transactions). API requests are bounded this way; the
    CLI's bulk loads and the app's background jobs use sessions without it. A mark on the session,
    read by one listener for all sessions: a listener of its own per request cost ~50 µs."""
    bind = session.bind
    if milliseconds <= 0 or bind is None or bind.dialect.name != "postgresql":
        return
    session.info["statement_timeout_ms"] = int(milliseconds)


@event.listens_for(Session, "after_begin")
def _statement_timeout(session: Session, _transaction: Any, connection: Any) -> None:
    milliseconds = session.info.get("statement_timeout_ms")
    if milliseconds:
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")


def is_timeout(exc: BaseException) -> bool:
    """The database cancelled the statement (PostgreSQL's query_canceled, SQLSTATE 57014)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == "57014"


# PostgreSQL's SQLSTATEs of a database that is away or out of room, not of a wrong request:
# connection exceptions, admin or crash shutdown, cannot connect now, too many connections.
_AWAY = ("08", "57P01", "57P02", "57P03", "53300")


def is_unavailable(exc: BaseException) -> bool:
    """The database is unreachable or went away mid-request (restarting, failing over), or SQLite
    stayed locked past its busy timeout: worth a retry (503), not a bug (500)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if hasattr(orig, "sqlstate"):  # psycopg; an error without a SQLSTATE had no answer from the server
        state = getattr(orig, "sqlstate", None)
        return isinstance(exc, InterfaceError) or (
            isinstance(exc, OperationalError) and (state is None or str(state).startswith(_AWAY)))
    return getattr(orig, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED")


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database to `revision` (`cityos db upgrade`)."""
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_migrated(engine: Engine) -> None:
    """Refuse to start on a database whose schema is not at the code's head revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise NotMigrated(
            f"database is at revision {current or 'none'}, code expects {head}: "
            "run `cityos db upgrade` / 数据库未迁移，请运行 `cityos db upgrade`"
        )
