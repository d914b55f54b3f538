"""Settings: defaults, environment, cityos.toml, and a clear error naming every bad setting."""

from __future__ import annotations

import pytest

from cityos.core.settings import DEV_SECRET, SettingsError, load_settings


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for var in ("CITYOS_DATABASE_URL", "CITYOS_DATA_DIR", "CITYOS_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.database_url == "sqlite:///var/cityos.db"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.is_sqlite


def test_toml_then_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CITYOS_DATABASE_URL", raising=False)
    (tmp_path / "cityos.toml").write_text('port = 9000\ndatabase_url = "postgresql://u@h/db"\n')
    monkeypatch.setenv("CITYOS_CONFIG", str(tmp_path / "cityos.toml"))
    s = load_settings()
    assert s.port == 9000
    assert s.database_url == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("CITYOS_PORT", "9100")
    assert load_settings().port == 9100


def test_bad_settings_are_all_named(monkeypatch):
    monkeypatch.setenv("CITYOS_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("CITYOS_PORT", "99999")
    monkeypatch.setenv("CITYOS_SECRET_KEY", "short")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    for name in ("CITYOS_DATABASE_URL", "CITYOS_PORT", "CITYOS_SECRET_KEY"):
        assert name in message


def test_production_refuses_the_development_secret(monkeypatch):
    monkeypatch.setenv("CITYOS_ENVIRONMENT", "production")
    monkeypatch.setenv("CITYOS_SECRET_KEY", DEV_SECRET)
    with pytest.raises(SettingsError, match="CITYOS_SECRET_KEY"):
        load_settings()
