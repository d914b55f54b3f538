"""Shared by the SensorThings API tests: the app with the /sta/v1.1 router (mounted here when
`create_app` does not mount it yet), HTTP Basic headers, and a Thing body with a deep insert."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from cityos.app import create_app
from cityos.core.settings import Settings
from cityos.sensing import ingest, sensorthings
from tests.conftest import PASSWORD

S = "/sta/v1.1"


@pytest.fixture
def app(settings: Settings, engine: Any) -> Iterator[FastAPI]:
    """The CityOS app with the SensorThings router; its ingest writer is stopped afterwards."""
    app = create_app(settings, engine=engine)
    if not any(getattr(r, "path", "").startswith(S) for r in app.routes):
        app.include_router(sensorthings.router)
    yield app
    rt = getattr(app.state.platform, "sensing", None)
    if rt is not None:
        rt.stop()


def basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


UNIT = {"name": "microgram per cubic metre", "symbol": "µg/m³",
        "definition": "http://qudt.org/vocab/unit/MicroGM-PER-M3"}


def datastream_body(name: str = "PM2.5", prop: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": "细颗粒物", "observationType": ingest.MEASUREMENT,
            "unitOfMeasurement": UNIT,
            "Sensor": {"name": "PMS5003", "description": "激光散射", "encodingType": "application/pdf",
                       "metadata": "https://example.org/pms5003.pdf"},
            "ObservedProperty": prop or {"name": "PM2.5", "definition": "urn:cityos:pm25",
                                         "description": "细颗粒物"},
            **extra}


def thing_body(name: str = "空气站-1", lon: float = 126.55, lat: float = 43.84, streams: int = 1,
               **extra: Any) -> dict[str, Any]:
    """A Thing with one Location and `streams` Datastreams, each with a new Sensor and property."""
    return {
        "name": name, "description": "一号空气站", "properties": {"owner": "hbj", "floor": 3},
        "Locations": [{"name": f"{name}位置", "description": "站点", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [lon, lat]}}],
        "Datastreams": [datastream_body(f"{name} PM2.5 {i}") for i in range(streams)],
        **extra,
    }
