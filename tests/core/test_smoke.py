"""The app starts on both databases, answers /healthz, and refuses an un-migrated database."""

from __future__ import annotations

import pytest

from cityos.app import create_app
from cityos.core import db
from cityos.core.settings import load_settings


def test_healthz_reports_version_and_database(client, backend):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["version"]
    assert body["database"]["ok"] is True
    assert body["database"]["backend"] == backend
    assert body["database"]["revision"] == db.head_revision()


def test_start_up_refuses_unmigrated_database(tmp_path):
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", data_dir=tmp_path)
    with pytest.raises(db.NotMigrated, match="cityos db upgrade"):
        create_app(settings)


def test_sqlite_runs_in_wal_mode(engine, backend):
    from sqlalchemy import text

    if backend != "sqlite":
        assert engine.dialect.server_version_info >= (15,)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT postgis_version()")).scalar()
        return
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_openapi_offers_password_flow_and_api_keys(client):
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == "/api/auth/token"
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"
