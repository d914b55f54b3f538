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
    body_timeout_seconds: float = Field(
        30, ge=1, le=3600,
        description="A request body may take this long, plus a second for every KiB received (1 KiB/s "
                    "on average); a client sending slower is answered 408, so a trickle cannot hold a "
                    "request open",
    )
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
    rate_limit_enabled: bool = Field(True, description="Rate limits (限流) on sign-in and the public APIs; "
                                     "false turns every one off")
    rate_limit_login: str = Field("10/minute", description="Sign-in attempts (token, console form) and "
                                  "failed credentials per client address; 'off' for none")
    rate_limit_anonymous: str = Field("600/minute", description="API requests without credentials per client "
                                      "address (/api, CKAN, /ogc, /sta, /open311, /data); 'off' for none")
    rate_limit_key: str = Field("6000/minute", description="API requests per API key, bearer token or "
                                "session; 'off' for none. Device ingest is never limited here")
    rate_limit_storage: str = Field("memory://", description="Where the counts live: memory:// (one worker) "
                                    "or any `limits` storage URI, e.g. redis://127.0.0.1:6379, shared by "
                                    "workers")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks of reverse proxies whose X-Forwarded-For is believed, e.g. "
                    '["127.0.0.1", "10.0.0.0/8"]; from anyone else the socket peer is the client',
    )
    statement_timeout_ms: int = Field(30_000, ge=0, description="PostgreSQL cancels a statement of an API "
                                      "request after this long (answered 503); 0: no limit. Background jobs "
                                      "and the CLI are not limited")
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
    sensing_sqlite_cache_mb: int = Field(
        8, ge=2, le=1024,
        description="SQLite page cache of the ingest writer's own connection, in MB. Its hot pages are the "
                    "newest index page of each stream and the rollups being written: 8 MB holds them for "
                    "~1,000 streams; raise it for many more streams writing at once",
    )
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

    @field_validator("rate_limit_login", "rate_limit_anonymous", "rate_limit_key")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse_many

        value = value.strip()
        if value.lower() == "off":
            return "off"
        try:
            one = len(parse_many(value)) == 1
        except ValueError:
            one = False
        if not one:
            raise ValueError("must be one rate like 10/minute or 600 per hour, or off")
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_storage(cls, value: str) -> str:
        from limits.storage import SCHEMES

        scheme = value.strip().split("://", 1)[0]
        if "://" not in value or (scheme not in SCHEMES and f"async+{scheme}" not in SCHEMES):
            raise ValueError("must be a `limits` storage URI, e.g. memory:// or redis://host:6379")
        return value.strip()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an address or network, e.g. 10.0.0.0/8") from None
        return [item.strip() for item in value]

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
