"""One settings object (配置), read from CITYOS_* environment variables and cityos.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# A placeholder the settings refuse outside the demo and tests, so a city never runs on it.
DEV_SECRET = "cityos-dev-secret-change-me"


class SettingsError(Exception):
    """Start-up settings are wrong; the message names every bad setting."""


class Settings(BaseSettings):
    """Everything an operator can set. Environment wins over cityos.toml, which wins over defaults."""

    model_config = SettingsConfigDict(
        env_prefix="CITYOS_",
        toml_file=os.environ.get("CITYOS_CONFIG", "cityos.toml"),
        extra="forbid",
    )

    database_url: str = Field(
        "sqlite:///var/cityos.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
    secret_key: str = Field(DEV_SECRET, description="Signs sessions and CSRF tokens (>= 16 chars)")
    data_dir: Path = Field(Path("var"), description="Keyring, uploads, backups")
    host: str = Field("127.0.0.1", description="Bind address of `cityos serve`")
    port: int = Field(8000, ge=1, le=65535, description="Bind port of `cityos serve`")
    environment: str = Field("development", pattern="^(development|demo|test|production)$")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted request body")
    hub_max_upload_bytes: int = Field(
        1024 * 1024 * 1024, ge=1024,
        description="Largest file a data hub upload accepts (POST /api/hub/resources/{code}/uploads); "
                    "streamed to data_dir/uploads, never held in memory",
    )
    token_ttl_seconds: int = Field(3600, ge=60, description="Lifetime of API bearer tokens")
    session_ttl_seconds: int = Field(8 * 3600, ge=300, description="Lifetime of console sessions")
    lockout_threshold: int = Field(5, ge=1, description="Failed logins before an account locks")
    lockout_seconds: int = Field(900, ge=1, description="How long a locked account stays locked")
    cookie_secure: bool = Field(False, description="Send cookies only over HTTPS (set behind TLS)")
    default_language: str = Field("zh-CN", pattern="^(zh-CN|en)$")
    demo_password: str = Field("cityos-demo", min_length=8)
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    map_tile_url: str | None = Field(
        None,
        description="A tile server for the maps' base layer, e.g. /tiles/{z}/{x}/{y}.png (the city's own, "
                    "behind the same reverse proxy: the pages' CSP loads images from this site only). "
                    "Unset (the default): the maps draw the city's own layers and load no tiles",
    )

    mqtt_url: str | None = Field(
        None,
        description="MQTT broker sensing connects to as a client, e.g. mqtt://127.0.0.1:1883 (Mosquitto). "
                    "Unset: no MQTT, readings come in over HTTP only",
    )
    mqtt_username: str | None = Field(None, description="CityOS's own user at the MQTT broker")
    mqtt_password: str | None = Field(None, description="Password of mqtt_username")
    sensing_max_pending: int = Field(
        200_000, ge=100,
        description="Readings that may wait for the database before ingest answers 429 (HTTP) or holds "
                    "back PUBACKs (MQTT)",
    )
    sensing_sqlite_cache_mb: int = Field(32, ge=2, le=1024,
                                         description="SQLite page cache of the ingest writer's connection")
    cases_limit_urgent_days: int = Field(0, ge=0, le=30, description="Time limit of an urgent hotline case "
                                         "in working days (0: the same working day)")
    cases_limit_consultation_days: int = Field(3, ge=0, le=60, description="Time limit of a consultation "
                                               "(咨询), working days")
    cases_limit_default_days: int = Field(5, ge=0, le=60, description="Time limit of other hotline cases "
                                          "and city-management cases, working days")
    cases_extension_max_days: int = Field(10, ge=0, le=60, description="Most working days an extension "
                                          "(延期) may add")
    cases_warn_fraction: float = Field(0.8, gt=0, lt=1, description="A task is due soon (预警) once this "
                                       "share of its time limit has passed")
    cases_dispatch_threshold: float = Field(0.6, ge=0, le=1, description="Below this confidence a "
                                            "person classifies and dispatches; above it the suggestion is "
                                            "pre-filled")
    ops_refresh_seconds: float = Field(1.0, ge=0, le=3600, description="How often the operations "
                                       "center looks for indicators due a refresh (指标刷新); 0: never "
                                       "(the tests step them by hand)")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:// or postgresql+psycopg://")
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @field_validator("map_tile_url")
    @classmethod
    def _tile_template(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("/", "http://", "https://")) or value.startswith("//"):
            raise ValueError("must be a path on this site (/tiles/...) or an http(s) URL")
        if not all(part in value for part in ("{z}", "{x}", "{y}")):
            raise ValueError("must contain {z}, {x} and {y}")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("mqtt://", "tcp://", "mqtts://", "ssl://")):
            raise ValueError("must look like mqtt://host:1883 (or mqtts:// for TLS)")
        return value.strip()

    @field_validator("secret_key")
    @classmethod
    def _strong_secret(cls, value: str) -> str:
        if len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def check_production(self) -> None:
        """Refuse the development secret outside development, demo and test."""
        if self.environment == "production" and self.secret_key == DEV_SECRET:
            raise SettingsError("CITYOS_SECRET_KEY: the development secret is refused in production")


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning pydantic's report into one message that names each bad setting."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "CITYOS_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("bad settings / 配置错误:\n  " + "\n  ".join(lines)) from None
    settings.check_production()
    return settings
