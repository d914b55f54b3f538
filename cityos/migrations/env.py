"""Alembic environment: one migration history for every CityOS package."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from cityos.core.db import Base, make_engine
from cityos.models_registry import import_all_models

import_all_models()
config = context.config
target_metadata = Base.metadata


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    """The data hub (hub_data_*) and the open-data portal (od_rows_*) build tables at run time: not ours.
    The map's R*Tree (map_features_rtree and its shadow tables, SQLite) and GiST index (PostgreSQL)
    are created by hand in migration 0005, outside the models."""
    if type_ == "table" and name and name.startswith(("hub_data_", "od_rows_", "map_features_rtree")):
        return False
    return not (type_ == "index" and name == "ix_map_features_geom")


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True, include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata,
                          render_as_batch=True, include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(str(config.get_main_option("sqlalchemy.url")), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
