"""The import rule of DESIGN.md: core imports no other CityOS package; engines import only core
and other engines' `service` modules; engines never import apps."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "cityos"
ENGINES = {"hub", "opendata", "maps", "sensing", "cases"}
# The demo city seeds every engine and serves the app: it sits with app.py and cli.py above all.
ASSEMBLY = {"migrations", "demo"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return [n for n in names if n.startswith("cityos")]


def test_import_rule():
    problems = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if len(rel.parts) == 1 or rel.parts[0] in ASSEMBLY:
            continue  # app.py, cli.py, Alembic and the demo wire packages together
        package = rel.parts[0]
        for name in _imports(path):
            parts = name.split(".")
            if len(parts) < 2 or parts[1] == package:
                continue
            other = parts[1]
            if package == "core":
                problems.append(f"{rel}: core imports {name}")
            elif package in ENGINES:
                if other == "core":
                    continue
                if other not in ENGINES or parts[-1] != "service":
                    problems.append(f"{rel}: engine imports {name}")
            elif other not in ENGINES | {"core"} or (other in ENGINES and parts[-1] != "service"):
                if other != "core":
                    problems.append(f"{rel}: app imports {name}")
    assert not problems, "\n".join(problems)
