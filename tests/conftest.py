"""Shared fixtures: every database test runs on SQLite and on PostgreSQL 15 + PostGIS.

PostgreSQL comes from CITYOS_TEST_PG_URL (default: the local server, trust auth). When it is
unreachable the PostgreSQL half is skipped on a developer's machine, but fails under CI=true:
CI must never pass by silently skipping a database.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from cityos.app import create_app
from cityos.core import access, auth, crypto, db, identifiers, service
from cityos.core.access import SYSTEM
from cityos.core.db import Base
from cityos.core.settings import Settings, load_settings
from cityos.models_registry import import_all_models

PG_URL = os.environ.get(
    "CITYOS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/cityos_test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PASSWORD = "pass-word-123"

# argon2id with production parameters costs ~50 ms a hash; the suite hashes thousands.
auth.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def _pg_database(worker: str, run: str) -> str:
    """Create a fresh database for this test run and xdist worker (dropped at the end)."""
    url = make_url(PG_URL)
    name = f"{url.database}_{run}_{worker}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI but unreachable at {PG_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {exc}")
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           worker_id: str, testrun_uid: str) -> Iterator[str]:
    """A migrated database of each kind, once per test session (and xdist worker)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'cityos.db'}"
    else:
        url = _pg_database(worker_id, testrun_uid[:8])
    db.upgrade(url)
    yield url
    if request.param == "postgresql":
        name = make_url(url).database
        admin = create_engine(make_url(PG_URL).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def _engine(db_url: str) -> Iterator[Engine]:
    engine = db.make_engine(db_url)
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    import_all_models()
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        # Per-resource tables (hub_data_*, od_rows_*) are built at run time; a test starts without them.
        for name in inspect(conn).get_table_names():
            if name.startswith(("hub_data_", "od_rows_")):
                conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))
        conn.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)"),
                     {"h": "0" * 64})


@pytest.fixture
def engine(_engine: Engine) -> Engine:
    """The test's database, emptied before the test (only the migration state is kept)."""
    _truncate(_engine)
    return _engine


@pytest.fixture
def sqlite_only(request: pytest.FixtureRequest) -> None:
    """For what is decided before the database is reached (middleware, pages, file checks): once,
    on SQLite. Skips before the PostgreSQL engine is even built."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("db_url", "sqlite") != "sqlite":
        pytest.skip("decided before the database is reached: once, on SQLite")


@pytest.fixture
def backend(engine: Engine) -> str:
    return engine.dialect.name


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def settings(engine: Engine, data_dir: Path) -> Settings:
    return load_settings(
        database_url=engine.url.render_as_string(hide_password=False),
        data_dir=data_dir, environment="test", secret_key="test-secret-key-0123456789",
        ops_refresh_seconds=0,  # the indicator clock would race tests that count rows; tests that need it turn it on
        rate_limit_enabled=False,  # tests log in and call far more than a person would; test_ratelimit turns it on
    )


@pytest.fixture
def keyring(data_dir: Path) -> crypto.Keyring:
    return crypto.activate(crypto.Keyring.load(data_dir / "keys.json"))


@pytest.fixture
def sessions(engine: Engine, keyring: crypto.Keyring) -> sessionmaker[Session]:
    return db.make_sessionmaker(engine)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    s = sessions()
    yield s
    s.rollback()
    s.close()


@pytest.fixture
def app(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(settings, engine=engine)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@dataclass
class City:
    """A small seeded city: a district, two bureaus, and a user of every role."""

    client: TestClient | None
    departments: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # username -> role
    _tokens: dict[str, str] = field(default_factory=dict)

    def token(self, username: str) -> str:
        if username not in self._tokens:
            assert self.client is not None
            r = self.client.post("/api/auth/token",
                                 data={"username": username, "password": PASSWORD})
            assert r.status_code == 200, r.text
            self._tokens[username] = r.json()["access_token"]
        return self._tokens[username]

    def headers(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username)}"}


SMALL_CITY = [
    # code, name, kind, parent, admin_code
    ("220200", "吉林市", "city", None, "220200"),
    ("220202", "昌邑区", "district", "220200", "220202"),
    ("220204", "船营区", "district", "220200", "220204"),
    ("220202001", "兴华街道", "street", "220202", "220202001"),
    ("220200-gaj", "市公安局", "bureau", "220200", None),
    ("220200-hbj", "市环保局", "bureau", "220200", None),
]
SMALL_USERS = [
    ("admin", "220200", access.PLATFORM_ADMIN),
    ("police_admin", "220200-gaj", access.DEPARTMENT_ADMIN),
    ("police_staff", "220200-gaj", access.DEPARTMENT_STAFF),
    ("env_admin", "220200-hbj", access.DEPARTMENT_ADMIN),
    ("env_staff", "220200-hbj", access.DEPARTMENT_STAFF),
    ("district_admin", "220202", access.DEPARTMENT_ADMIN),
    ("street_staff", "220202001", access.DEPARTMENT_STAFF),
    ("auditor", "220200", access.AUDITOR),
    ("resident", "220202001", access.RESIDENT),
]


def seed_small_city(session: Session) -> None:
    for code, name, kind, parent, admin_code in SMALL_CITY:
        service.department_create(session, SYSTEM, code=code, name=name, kind=kind,
                                  parent_code=parent, admin_code=admin_code)
    for username, dept, role in SMALL_USERS:
        service.user_create(session, SYSTEM, username=username, password=PASSWORD,
                            department_code=dept, role=role, display_name=username)
    session.commit()


@pytest.fixture
def city(sessions: sessionmaker[Session], client: TestClient) -> City:
    """The small city, seeded through the service layer, with an API client that logs in."""
    with sessions() as s:
        seed_small_city(s)
    return City(client, {c[0]: c[1] for c in SMALL_CITY}, {u[0]: u[2] for u in SMALL_USERS})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(app: FastAPI, start_seconds: float = 60) -> Iterator[str]:
    """`app` behind a real uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_seconds
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("live server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, for the browser and load tests."""
    with served(app) as url:
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    """Browser tests need Chromium: skipped without it on a developer's machine, and left to
    fail under CI, where .ci/run installs it."""
    if shutil.which("chromium") or IN_CI:
        return
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="chromium not installed"))


# -- data hub -------------------------------------------------------------------------------------

def people_spec(**overrides: object) -> dict[str, object]:
    """A 市公安局 resource keyed by citizen ID number (sensitive), as tests across the hub use it."""
    spec: dict[str, object] = {
        "name": "户籍人口", "name_en": "Registered residents", "category": "department",
        "department": "220200-gaj", "abstract": "户籍人口基本信息", "share_type": "conditional",
        "share_condition": "用于政务服务身份核验", "share_basis": "《吉林市政务信息资源共享管理办法》",
        "share_methods": ["api"], "open_type": "closed", "update_cycle": "daily",
        "items": [
            {"name": "id_number", "title": "身份证号", "type": "citizen_id", "sensitivity": "sensitive",
             "required": True, "is_key": True},
            {"name": "name", "title": "姓名", "type": "string", "sensitivity": "internal", "required": True},
            {"name": "gender", "title": "性别", "type": "string", "choices": ["男", "女"]},
            {"name": "birth_date", "title": "出生日期", "type": "date"},
            {"name": "district", "title": "所属区县", "type": "string", "indexed": True},
            {"name": "household_size", "title": "家庭人口", "type": "integer", "minimum": 1, "maximum": 30},
        ],
    }
    spec.update(overrides)
    return spec


def person_row(n: int, district: str = "昌邑区") -> dict[str, object]:
    """A fake but well-formed resident: ID numbers pass the GB 11643 check."""
    first17 = f"220202{1950 + n % 50:04d}{1 + n % 12:02d}{1 + n % 28:02d}{n % 1000:03d}"
    return {"id_number": identifiers.citizen_id_with_check(first17), "name": f"居民{n}",
            "gender": "男" if n % 2 else "女",
            "birth_date": dt.date(1950 + n % 50, 1 + n % 12, 1 + n % 28), "district": district,
            "household_size": 1 + n % 5}


# -- browser --------------------------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture
def page(backend: str) -> Iterator[Any]:
    """A fresh Chromium page (Debian's chromium: `playwright install` cannot download here);
    browser tests run once, on SQLite."""
    if backend != "sqlite":
        pytest.skip("browser test runs once, on SQLite")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(locale="zh-CN")
        finally:
            browser.close()
