"""Tables of the one map (一张图): layers, their features, and the city's reference layers.

A layer is a catalog resource of the data hub (`resource_id`, format "geo"), so it is found,
requested and granted like any dataset. Features keep their geometry in the canonical CRS
(OGC CRS84) in one column type (`maps.geometry.Geometry`), with their bounding box as plain
columns. On SQLite an R*Tree (`map_features_rtree`, created by the migration and kept in step by
triggers) indexes those boxes; on PostgreSQL a GiST index covers the geometry itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cityos.core.db import Base, UTCDateTime, utcnow
from cityos.core.models import Department
from cityos.maps.geometry import Geometry


class Layer(Base):
    """A vector layer (图层): typed attributes, an optional time attribute, one geometry kind."""

    __tablename__ = "map_layers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # OGC collection id
    resource_id: Mapped[int] = mapped_column(
        ForeignKey("hub_resources.id", ondelete="CASCADE"), unique=True)
    # The catalog code never changes; kept here so a read is audited against it without a join.
    resource_code: Mapped[str] = mapped_column(String(64))
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    title_en: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    geometry_type: Mapped[str] = mapped_column(String(16))  # point|line|polygon|any
    source_crs: Mapped[str] = mapped_column(String(32))  # e.g. EPSG:4490, GCJ-02
    # [{name, title, type}], type one of maps.service.ATTRIBUTE_TYPES
    attributes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    time_field: Mapped[str | None] = mapped_column(String(63))
    time_end_field: Mapped[str | None] = mapped_column(String(63))
    public: Mapped[bool] = mapped_column(Boolean, default=False)  # readable without signing in
    feature_count: Mapped[int] = mapped_column(BigInteger, default=0)
    bbox: Mapped[list[float] | None] = mapped_column(JSON)  # [minx, miny, maxx, maxy]
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    department: Mapped[Department] = relationship()


class Feature(Base):
    """One feature (要素): its id within the layer, properties, time span, box and geometry."""

    __tablename__ = "map_features"
    __table_args__ = (
        UniqueConstraint("layer_id", "fid"),
        Index("ix_map_features_layer_id", "layer_id", "id"),  # a layer's pages in id order
        Index("ix_map_features_layer_time", "layer_id", "t_start", "t_end"),
    )

    # INTEGER on SQLite so that it is the rowid the R*Tree refers to.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("map_layers.id", ondelete="CASCADE"))
    fid: Mapped[str] = mapped_column(String(128))
    props: Mapped[dict[str, Any]] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    t_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    t_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    minx: Mapped[float] = mapped_column(Float)
    miny: Mapped[float] = mapped_column(Float)
    maxx: Mapped[float] = mapped_column(Float)
    maxy: Mapped[float] = mapped_column(Float)
    geom: Mapped[bytes] = mapped_column(Geometry())


class ReferenceLayer(Base):
    """Which layer answers "where is this point" for a role: district, street, community, grid."""

    __tablename__ = "map_reference_layers"

    role: Mapped[str] = mapped_column(String(16), primary_key=True)  # district|street|community|grid
    layer_id: Mapped[int] = mapped_column(ForeignKey("map_layers.id", ondelete="CASCADE"))
    attribute: Mapped[str] = mapped_column(String(63))  # the property holding the code
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    layer: Mapped[Layer] = relationship()
