"""What importers share: the result types, a file as read (`Source`), progress and CRS names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import shapely

from cityos.core.errors import Invalid
from cityos.maps import crs as crs_mod

REPORT_LIMIT = 1000  # rejected features kept with their reason; all are counted
Progress = Callable[[int, int | None], None]


@dataclass
class Rejected:
    """A feature left out (被拒要素): its 0-based position in the file, its id if known, why."""

    index: int
    fid: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The rejection as JSON-ready data."""
        return {"index": self.index, "fid": self.fid, "reason": self.reason}


@dataclass
class ImportResult:
    """What a file holds once checked: features in CRS84 with typed properties, and the report."""

    features: list[tuple[str, shapely.Geometry, dict[str, Any]]]  # (fid, geometry, properties)
    rejected: list[Rejected]  # the first REPORT_LIMIT
    repaired: list[tuple[str, str]]  # (fid, what was repaired)
    source_crs: str  # the key of crs.Crs: "OGC:CRS84", "EPSG:4547", "GCJ-02", ...
    geometry_type: str  # point | line | polygon | any
    attributes: list[dict[str, str]]  # {"name", "title", "type"} in file order
    swapped: bool = False  # x and y were exchanged, because the caller said so
    rejected_total: int = 0
    warnings: list[str] = field(default_factory=list)  # said once for the file (Z dropped, ...)


@dataclass
class Source:
    """A file as read, before checks: geometries in the source CRS and raw column values."""

    crs: crs_mod.Crs
    geoms: list[Any] = field(default_factory=list)  # shapely geometry, or None (see `bad`)
    fids: list[str | None] = field(default_factory=list)  # the file's own ids, if it has them
    columns: dict[str, list[Any]] = field(default_factory=dict)  # original name → values
    kinds: dict[str, str] = field(default_factory=dict)  # name → json | text | arrow:<type>
    bad: dict[int, str] = field(default_factory=dict)  # index → reason found while reading
    lines: list[int] | None = None  # CSV line numbers, for reasons


class Ticker:
    """Calls `progress(done, total)` every ~1% of a known total, else every 10,000 features."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.total: int | None = None
        self.step = self.next = 10_000

    def start(self, total: int | None) -> None:
        """The number of features, once known."""
        self.total = total
        self.step = self.next = max(1, min(10_000, total // 100)) if total else 10_000

    def __call__(self, done: int) -> None:
        if self.progress is not None and done >= self.next:
            self.progress(done, self.total)
            self.next = done + self.step

    def finish(self, done: int) -> None:
        """Say that all is read."""
        if self.progress is not None:
            self.progress(done, done)


class opened:  # noqa: N801 - used like open()
    """A path opened for reading, or a stream passed through (and left open)."""

    def __init__(self, source: BinaryIO | Path) -> None:
        self.source = source
        self.file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        if isinstance(self.source, Path):
            self.file = self.source.open("rb")
            return self.file
        return self.source

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def check_count(n: int, max_features: int) -> None:
    """Refuse a file with more features than the caller allows."""
    if n > max_features:
        raise Invalid("file", f"more than {max_features:,} features / 要素数超过上限{max_features:,}")


def fid_text(value: Any) -> str:
    """A feature id as text: 12.0 → "12"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_crs(value: Any, where: str) -> crs_mod.Crs:
    """The CRS named by a user, a .prj or a GeoJSON `crs` member, or Invalid naming it."""
    try:
        return crs_mod.parse(value)
    except Invalid as exc:
        # A .prj comes as WKT when GDAL found no EPSG code for it; pyproj may still identify one.
        code = _identify(value)
        if code is not None:
            try:
                return crs_mod.parse(code)
            except Invalid:
                pass
        reason = exc.errors[0].reason if exc.errors else str(exc)
        raise Invalid("crs", f"{where}: {reason}") from None


def _identify(value: Any) -> str | None:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    text = str(value)
    if len(text) < 20:  # a short name that parse() did not know is no WKT
        return None
    try:
        found = CRS.from_user_input(text).to_epsg(min_confidence=70)
    except CRSError:
        return None
    return None if found is None else f"EPSG:{found}"
