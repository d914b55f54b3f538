"""Front-end assets (前端资源): copy the npm packages' dist files into static/vendor/.

The libraries come from the npm registry at setup (`npm ci`, pinned by package-lock.json) and
CityOS serves them itself: a city's internal network has no internet, and nothing third-party
is committed. Run as `python -m cityos.core.assets` after `npm ci`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Asset:
    """One file of an npm package and where the pages expect it under /static/vendor/."""

    package: str
    source: str  # path inside node_modules/<package>/
    target: str  # path inside static/vendor/


ASSETS = (
    Asset("htmx.org", "dist/htmx.min.js", "htmx/htmx.min.js"),
    Asset("htmx.org", "LICENSE", "htmx/LICENSE"),
    Asset("swagger-ui-dist", "swagger-ui-bundle.js", "swagger-ui/swagger-ui-bundle.js"),
    Asset("swagger-ui-dist", "swagger-ui.css", "swagger-ui/swagger-ui.css"),
    Asset("swagger-ui-dist", "LICENSE", "swagger-ui/LICENSE"),
    Asset("swagger-ui-dist", "NOTICE", "swagger-ui/NOTICE"),
    Asset("echarts", "dist/echarts.min.js", "echarts/echarts.min.js"),
    Asset("echarts", "LICENSE", "echarts/LICENSE"),
    Asset("echarts", "NOTICE", "echarts/NOTICE"),
    Asset("leaflet", "dist/leaflet.js", "leaflet/leaflet.js"),
    Asset("leaflet", "dist/leaflet.css", "leaflet/leaflet.css"),
    *(Asset("leaflet", f"dist/images/{name}", f"leaflet/images/{name}") for name in (
        "layers.png", "layers-2x.png", "marker-icon.png", "marker-icon-2x.png", "marker-shadow.png")),
    Asset("leaflet", "LICENSE", "leaflet/LICENSE"),
    # BPMN diagrams of case workflows (the viewer keeps the bpmn.io mark, as its licence asks)
    Asset("bpmn-js", "dist/bpmn-viewer.production.min.js", "bpmn-js/bpmn-viewer.production.min.js"),
    Asset("bpmn-js", "dist/assets/diagram-js.css", "bpmn-js/diagram-js.css"),
    Asset("bpmn-js", "dist/assets/bpmn-js.css", "bpmn-js/bpmn-js.css"),
    Asset("bpmn-js", "LICENSE", "bpmn-js/LICENSE"),
)


class AssetsMissing(Exception):
    """node_modules, a package or one of its files is not there: run `npm ci` first."""


def package_version(node_modules: Path, package: str) -> str:
    manifest = node_modules / package / "package.json"
    if not manifest.is_file():
        raise AssetsMissing(
            f"{manifest} not found: run `npm ci --no-audit --no-fund` in {node_modules.parent} "
            f"first / 未找到前端依赖，请先运行 npm ci")
    return str(json.loads(manifest.read_text(encoding="utf-8"))["version"])


def copy_assets(node_modules: Path, vendor: Path = VENDOR) -> dict[str, str]:
    """Copy every asset into `vendor`; return {package: version}. Checks all before copying any."""
    if not node_modules.is_dir():
        raise AssetsMissing(
            f"{node_modules} does not exist: run `npm ci --no-audit --no-fund` in "
            f"{node_modules.parent} first / 未找到 node_modules，请先运行 npm ci")
    versions = {a.package: package_version(node_modules, a.package) for a in ASSETS}
    missing = [a for a in ASSETS if not (node_modules / a.package / a.source).is_file()]
    if missing:
        names = ", ".join(f"{a.package}/{a.source}" for a in missing)
        raise AssetsMissing(f"files missing from node_modules: {names} (reinstall with npm ci)")
    for asset in ASSETS:
        target = vendor / asset.target
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(node_modules / asset.package / asset.source, target)
    # The copies are build output: keep them out of git even where the root .gitignore doesn't.
    (vendor / ".gitignore").write_text("*\n", encoding="utf-8")
    (vendor / "versions.json").write_text(json.dumps(versions, indent=2) + "\n", encoding="utf-8")
    return versions


def main(argv: list[str] | None = None) -> int:
    """Command line: copy the assets, print what was copied, exit 1 with a reason if it can't."""
    parser = argparse.ArgumentParser(prog="python -m cityos.core.assets", description=__doc__)
    parser.add_argument("--node-modules", type=Path, default=REPO_ROOT / "node_modules",
                        help="where `npm ci` installed the packages (default: the repo's)")
    args = parser.parse_args(argv)
    try:
        versions = copy_assets(args.node_modules)
    except AssetsMissing as exc:
        print(f"cityos.core.assets: {exc}", file=sys.stderr)
        return 1
    for package, version in sorted(versions.items()):
        print(f"{package} {version} -> {VENDOR.relative_to(STATIC.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
