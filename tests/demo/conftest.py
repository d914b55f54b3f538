"""The demo city's tests build the city without its data hub (CITYOS_DEMO_SCALE=0) unless a test
asks for a scale: the full hub is millions of rows."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _city_without_hub_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOS_DEMO_SCALE", "0")
