"""Tables of sensing (城市感知): the SensorThings entities, readings, rollups, rules and alerts.

The entity tables follow the OGC SensorThings API v1.1 data model one to one, so that
`sensorthings.py` only maps names. A Thing belongs to a department; its Datastreams carry the
department too, so an access check on a reading needs no join.

Datastreams and MultiDatastreams share one table and one id space (`kind`): an Observation then
always points at one stream id, and de-duplication is one unique index on
(datastream_id, phenomenon_time).

Times on the hot path (observations, rollups) are BIGINT epoch milliseconds (UTC): they are
compared and bucketed as integers, inserted without conversion, and mean the same on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cityos.core.db import Base, UTCDateTime, utcnow
from cityos.core.models import Department

BIGID = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER on SQLite: the rowid itself

thing_locations = Table(
    "sensor_thing_locations", Base.metadata,
    Column("thing_id", ForeignKey("sensor_things.id", ondelete="CASCADE"), primary_key=True),
    Column("location_id", ForeignKey("sensor_locations.id", ondelete="CASCADE"), primary_key=True,
           index=True),
)

historical_location_locations = Table(
    "sensor_hist_location_locations", Base.metadata,
    Column("historical_location_id", ForeignKey("sensor_historical_locations.id", ondelete="CASCADE"),
           primary_key=True),
    Column("location_id", ForeignKey("sensor_locations.id", ondelete="CASCADE"), primary_key=True,
           index=True),
)

multi_datastream_properties = Table(
    "sensor_multi_datastream_properties", Base.metadata,
    Column("datastream_id", ForeignKey("sensor_datastreams.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("observed_property_id", ForeignKey("sensor_observed_properties.id"), index=True),
)

group_things = Table(
    "sensor_group_things", Base.metadata,
    Column("group_id", ForeignKey("sensor_groups.id", ondelete="CASCADE"), primary_key=True),
    Column("thing_id", ForeignKey("sensor_things.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class Thing(Base):
    """A device or a monitored object (物/设备): an air station, a bus, a wearable, a smoke alarm."""

    __tablename__ = "sensor_things"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    kind: Mapped[str | None] = mapped_column(String(32), index=True)  # air|water|pressure|traffic|bus|...
    # Per-device credential (设备凭证): devices sign in as `device_key` with a secret whose
    # SHA-256 is kept (the secret is random and long, so a fast hash suffices, as for API keys).
    device_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    broker_hash: Mapped[str | None] = mapped_column(String(200))  # the same secret, hashed for Mosquitto
    last_seen_at: Mapped[int | None] = mapped_column(BigInteger)  # epoch ms of the newest reading
    created_by: Mapped[str] = mapped_column(String(64), default="system")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    department: Mapped[Department] = relationship()
    locations: Mapped[list[Location]] = relationship(secondary=thing_locations, back_populates="things")
    datastreams: Mapped[list[Datastream]] = relationship(back_populates="thing", passive_deletes=True,
                                                         order_by="Datastream.id")


class Location(Base):
    """Where a Thing is (位置): a GeoJSON geometry, with its point kept as lon/lat for the map."""

    __tablename__ = "sensor_locations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    encoding_type: Mapped[str] = mapped_column(String(64), default="application/geo+json")
    location: Mapped[dict[str, Any]] = mapped_column(JSON)  # GeoJSON geometry in CRS84
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    lon: Mapped[float | None] = mapped_column(Float)  # a representative point, for maps and geofences
    lat: Mapped[float | None] = mapped_column(Float)

    things: Mapped[list[Thing]] = relationship(secondary=thing_locations, back_populates="locations")


class HistoricalLocation(Base):
    """When a Thing was at its Locations (历史位置); written whenever a Thing's Location changes."""

    __tablename__ = "sensor_historical_locations"

    id: Mapped[int] = mapped_column(BIGID, primary_key=True)
    thing_id: Mapped[int] = mapped_column(ForeignKey("sensor_things.id", ondelete="CASCADE"), index=True)
    time: Mapped[int] = mapped_column(BigInteger)  # epoch ms

    thing: Mapped[Thing] = relationship()
    locations: Mapped[list[Location]] = relationship(secondary=historical_location_locations)


class Sensor(Base):
    """The instrument or procedure (传感器) that produces a Datastream's readings."""

    __tablename__ = "sensor_sensors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    encoding_type: Mapped[str] = mapped_column(String(128), default="application/pdf")
    meta: Mapped[Any] = mapped_column(JSON)  # STA "metadata": a URL or a document
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ObservedProperty(Base):
    """What is measured (观测属性): PM2.5, water pressure, heart rate; shared city-wide."""

    __tablename__ = "sensor_observed_properties"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    definition: Mapped[str] = mapped_column(String(500), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Datastream(Base):
    """A series of readings of one Thing by one Sensor (数据流); kind "multi" is a MultiDatastream,
    whose result is an array in the order of its observed properties."""

    __tablename__ = "sensor_datastreams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), default="single")  # single|multi
    thing_id: Mapped[int] = mapped_column(ForeignKey("sensor_things.id", ondelete="CASCADE"), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    sensor_id: Mapped[int] = mapped_column(ForeignKey("sensor_sensors.id"), index=True)
    # Single streams only; a MultiDatastream's properties are in sensor_multi_datastream_properties.
    observed_property_id: Mapped[int | None] = mapped_column(
        ForeignKey("sensor_observed_properties.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    observation_type: Mapped[str] = mapped_column(String(200))
    # Single: {name, symbol, definition}. Multi: a list of them, and the per-member observation types.
    unit_of_measurement: Mapped[Any] = mapped_column(JSON)
    multi_observation_types: Mapped[list[str] | None] = mapped_column(JSON)
    observed_area: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Kept by ingest (epoch ms): the phenomenon/result time span and the newest reading.
    phenomenon_start: Mapped[int | None] = mapped_column(BigInteger)
    phenomenon_end: Mapped[int | None] = mapped_column(BigInteger)
    result_start: Mapped[int | None] = mapped_column(BigInteger)
    result_end: Mapped[int | None] = mapped_column(BigInteger)
    last_time: Mapped[int | None] = mapped_column(BigInteger)
    last_value: Mapped[float | None] = mapped_column(Float)
    # Raw readings older than this many days are deleted (rollups stay); None keeps them all.
    retention_days: Mapped[int | None] = mapped_column(Integer)
    # Expected reporting interval (seconds), for "no data for N intervals" rules and the status.
    interval_seconds: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    thing: Mapped[Thing] = relationship(back_populates="datastreams")
    sensor: Mapped[Sensor] = relationship()
    observed_property: Mapped[ObservedProperty | None] = relationship()


class FeatureOfInterest(Base):
    """What a reading is about (观测对象): a river section, a road segment; made from the
    Thing's Location when a reading names none."""

    __tablename__ = "sensor_features_of_interest"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    encoding_type: Mapped[str] = mapped_column(String(64), default="application/geo+json")
    feature: Mapped[dict[str, Any]] = mapped_column(JSON)
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The Location it was generated from, so every reading of a fixed Thing shares one.
    location_id: Mapped[int | None] = mapped_column(ForeignKey("sensor_locations.id", ondelete="SET NULL"),
                                                    index=True)


class Observation(Base):
    """One reading (观测值). Written by `ingest` in batches with plain DBAPI rows, never one by one.

    `result_number` holds numeric results (what rollups and rules use); any other result
    (text, boolean, object, a MultiDatastream's array) is JSON text in `result_json`.
    """

    __tablename__ = "sensor_observations"
    __table_args__ = (
        # De-duplication key, and the index every per-stream time range query uses.
        UniqueConstraint("datastream_id", "phenomenon_time", name="uq_sensor_obs_stream_time"),
    )

    id: Mapped[int] = mapped_column(BIGID, primary_key=True)
    # No foreign key on the hot path: ingest checks the stream, and deletes cascade in service.
    datastream_id: Mapped[int] = mapped_column(Integer)
    phenomenon_time: Mapped[int] = mapped_column(BigInteger)
    phenomenon_time_end: Mapped[int | None] = mapped_column(BigInteger)
    result_time: Mapped[int | None] = mapped_column(BigInteger)
    result_number: Mapped[float | None] = mapped_column(Float)
    result_json: Mapped[str | None] = mapped_column(Text)
    result_quality: Mapped[str | None] = mapped_column(Text)  # JSON text
    valid_time_start: Mapped[int | None] = mapped_column(BigInteger)
    valid_time_end: Mapped[int | None] = mapped_column(BigInteger)
    parameters: Mapped[str | None] = mapped_column(Text)  # JSON text
    feature_of_interest_id: Mapped[int | None] = mapped_column(Integer, index=True)


class Rollup(Base):
    """Aggregates of a stream per bucket (汇总): grain 60, 3600 or 86400 s; kept up to date by
    ingest in the same transaction as the readings, so a query never sees one without the other."""

    __tablename__ = "sensor_rollups"

    datastream_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grain: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch ms of the bucket start
    count: Mapped[int] = mapped_column(BigInteger)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    sum: Mapped[float] = mapped_column(Float)
    last_time: Mapped[int] = mapped_column(BigInteger)
    last_value: Mapped[float] = mapped_column(Float)


class RollupState(Base):
    """How far the rollups reach (汇总进度): the newest Observation id they include. Ingest writes
    rollups a second behind under load; after a crash it rolls up the readings past this id."""

    __tablename__ = "sensor_rollup_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)


class Group(Base):
    """A named set of Things (设备分组) that rules can be attached to: "all smoke alarms of 船营区"."""

    __tablename__ = "sensor_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))

    things: Mapped[list[Thing]] = relationship(secondary=group_things)


class Rule(Base):
    """An alerting rule as data (告警规则). `kind` and `params` are checked by `rules.check_params`.

    Attached to exactly one of: an observed property (every stream of it in the department), a
    thing, a group, or one datastream. A two-stream rule names its second stream in params.
    """

    __tablename__ = "sensor_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # threshold|rate|nodata|flatline|range|geofence|combo
    kind: Mapped[str] = mapped_column(String(16))
    target_type: Mapped[str] = mapped_column(String(16))  # property|thing|group|datastream
    target_id: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    severity: Mapped[str] = mapped_column(String(8), default="warning")  # info|warning|critical
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Alert(Base):
    """An alert (告警): open → acknowledged → resolved. At most one unresolved alert per
    (rule, datastream); a repeat raises `occurrences` instead of opening another."""

    __tablename__ = "sensor_alerts"
    __table_args__ = (Index("ix_sensor_alerts_open", "rule_id", "datastream_id", "state"),)

    id: Mapped[int] = mapped_column(BIGID, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("sensor_rules.id", ondelete="CASCADE"), index=True)
    datastream_id: Mapped[int] = mapped_column(ForeignKey("sensor_datastreams.id", ondelete="CASCADE"),
                                               index=True)
    thing_id: Mapped[int] = mapped_column(ForeignKey("sensor_things.id", ondelete="CASCADE"), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open|acknowledged|resolved
    message: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Float)
    observed_at: Mapped[int] = mapped_column(BigInteger)  # epoch ms of the reading that raised it
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(64))  # a user, or "rule" when it cleared
    note: Mapped[str | None] = mapped_column(Text)

    rule: Mapped[Rule] = relationship()


class Webhook(Base):
    """Where a department's alerts are pushed (告警推送): signed with HMAC-SHA256 of the body."""

    __tablename__ = "sensor_webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    url: Mapped[str] = mapped_column(String(500))
    secret: Mapped[str] = mapped_column(String(128))  # shared with the receiver to check signatures
    events: Mapped[list[str]] = mapped_column(JSON)  # e.g. ["alert.opened", "alert.resolved"]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event to deliver to one webhook (推送记录): an outbox row, retried with backoff until it
    succeeds or runs out of attempts, so a restart loses no pending delivery."""

    __tablename__ = "sensor_webhook_deliveries"
    __table_args__ = (Index("ix_sensor_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BIGID, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("sensor_webhooks.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON body that is signed and sent
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
