"""Request shapes of the map's JSON API (一张图). Requests forbid unknown fields; geometries are
GeoJSON in OGC CRS84 (longitude, latitude)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cityos.core.schemas import Strict

NAME = r"^[a-z][a-z0-9_]{0,62}$"


class AttributeIn(Strict):
    """A typed attribute of a layer's features (属性)."""

    name: str = Field(pattern=NAME)
    title: str | None = Field(None, max_length=100)
    type: str = Field("string", description="string|integer|number|boolean|date|datetime")


class LayerIn(Strict):
    """A new layer and the catalog entry it gets (its sharing and opening terms)."""

    code: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="URL-safe collection id")
    title: str = Field(min_length=1, max_length=200)
    title_en: str | None = Field(None, max_length=200)
    description: str = Field("", max_length=4000)
    department: str | None = Field(None, description="owning department's code (default: yours)")
    geometry_type: str = Field("any", description="point|line|polygon|any")
    source_crs: str = Field("OGC:CRS84", description="the CRS the data came in, e.g. EPSG:4490, GCJ-02")
    attributes: list[AttributeIn] = Field(default_factory=list, max_length=500)
    time_field: str | None = None
    time_end_field: str | None = None
    public: bool = Field(False, description="readable without signing in (needs open_type open)")
    category: str | None = None
    base_branch: str | None = None
    share_type: str | None = Field(None, description="unconditional|conditional|none (default unconditional)")
    share_condition: str | None = None
    share_basis: str | None = None
    share_methods: list[str] | None = None
    open_type: str | None = Field(None, description="open|conditional|closed (default closed)")
    update_cycle: str | None = None
    keywords: list[str] | None = None


class PublicIn(Strict):
    public: bool


class FeatureCollectionIn(Strict):
    """GeoJSON FeatureCollection in OGC CRS84 (other CRSs and formats: the importers)."""

    type: str = Field(pattern="^FeatureCollection$")
    features: list[dict[str, Any]] = Field(max_length=200_000)
    name: str | None = None


class PointsIn(Strict):
    """Points as [longitude, latitude] pairs."""

    points: list[tuple[float, float]] = Field(max_length=100_000)
    purpose: str | None = Field(None, max_length=500)


class WithinIn(Strict):
    geometry: dict[str, Any]
    metres: float = Field(ge=0, le=1_000_000)
    limit: int = Field(1000, ge=1, le=10_000)
    purpose: str | None = Field(None, max_length=500)


class MeasureIn(Strict):
    geometry: dict[str, Any]


class ReferenceIn(Strict):
    layer: str
    attribute: str = Field(pattern=NAME)
