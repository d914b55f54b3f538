"""Every package's tables, imported for Alembic and for tests that build the schema."""

from __future__ import annotations

import importlib

# Packages with a models.py, in dependency order. Add each engine here as it lands.
MODEL_MODULES = ["cityos.core.models", "cityos.hub.models", "cityos.opendata.models",
                 "cityos.maps.models", "cityos.sensing.models", "cityos.cases.models",
                 "cityos.ops.models"]


def import_all_models() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)
