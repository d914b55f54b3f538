"""The geometry column type (几何字段): WKB bytes on SQLite, PostGIS `geometry(Geometry, 4326)` on
PostgreSQL. Values bound and read are WKB bytes (or a Shapely geometry when binding) on both.

The conversion SQL is a pair of tiny function elements compiled per dialect, so a statement
built once renders `ST_GeomFromWKB(:v, 4326)` / `ST_AsBinary(geom)` on PostgreSQL and the bare
value / column on SQLite.
"""

from __future__ import annotations

from typing import Any

import shapely
from sqlalchemy import LargeBinary
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, UserDefinedType

SRID = 4326  # values are OGC CRS84: EPSG:4326 datum, longitude first


class _PostGISGeometry(UserDefinedType[bytes]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return f"geometry(Geometry,{SRID})"


class geom_from_wkb(FunctionElement[bytes]):  # noqa: N801 - SQL function style
    """WKB bytes to the stored value: PostGIS parses them, SQLite stores them as they are."""

    type = LargeBinary()
    inherit_cache = True


class geom_as_wkb(FunctionElement[bytes]):  # noqa: N801
    """The stored value as WKB bytes."""

    type = LargeBinary()
    inherit_cache = True


@compiles(geom_from_wkb)
@compiles(geom_as_wkb)
def _bare(element: Any, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(geom_from_wkb, "postgresql")
def _pg_from_wkb(element: Any, compiler: Any, **kw: Any) -> str:
    return f"ST_GeomFromWKB({compiler.process(element.clauses, **kw)}, {SRID})"


@compiles(geom_as_wkb, "postgresql")
def _pg_as_wkb(element: Any, compiler: Any, **kw: Any) -> str:
    return f"ST_AsBinary({compiler.process(element.clauses, **kw)})"


class Geometry(TypeDecorator[bytes]):
    """A geometry in the canonical CRS: WKB on SQLite, PostGIS geometry on PostgreSQL."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_PostGISGeometry())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        if value is None or isinstance(value, bytes | bytearray | memoryview):
            return None if value is None else bytes(value)
        return bytes(shapely.to_wkb(value))

    def process_result_value(self, value: Any, dialect: Any) -> bytes | None:
        return None if value is None else bytes(value)

    def bind_expression(self, bindvalue: Any) -> Any:
        return geom_from_wkb(bindvalue)

    def column_expression(self, col: Any) -> Any:
        return geom_as_wkb(col)
