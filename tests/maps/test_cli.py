"""`cityos maps ...`: listing layers and importing files all or nothing, with the report."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cityos.cli import app as cli_app
from cityos.maps import service
from tests.maps.conftest import new_layer

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


@pytest.fixture
def cli_env(settings, monkeypatch):
    from cityos.core.cli import console, err_console

    monkeypatch.setenv("CITYOS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setattr(console, "width", 250)
    monkeypatch.setattr(err_console, "width", 250)
    return settings


def _csv(tmp_path, rows):
    path = tmp_path / "sites.csv"
    path.write_text("name,n,经度,纬度\n" + "".join(f"{r}\n" for r in rows), encoding="utf-8")
    return path


def test_import_csv_into_a_layer_and_list_it(cli_env, seeded, tmp_path):
    new_layer(seeded, "sites", "point")
    seeded.commit()
    path = _csv(tmp_path, [f"站点{i},{i},{126.5 + i / 1000},{43.8 + i / 1000}" for i in range(50)])
    r = runner.invoke(cli_app, ["maps", "import", str(path), "--layer", "sites"], env=WIDE)
    assert r.exit_code == 0, r.output
    assert "50" in r.output
    seeded.expire_all()
    assert service.layer_by_code(seeded, "sites").feature_count == 50
    r = runner.invoke(cli_app, ["maps", "layers", "--as", "env_staff"], env=WIDE)
    assert r.exit_code == 0 and "sites" in r.output


def test_a_file_with_rejected_features_imports_nothing_unless_asked(cli_env, seeded, tmp_path):
    new_layer(seeded, "sites", "point")
    seeded.commit()
    rows = [f"站点{i},{i},{126.5 + i / 1000},{43.8 + i / 1000}" for i in range(20)]
    rows.append("巴黎,99,2.35,48.85")  # outside China
    path = _csv(tmp_path, rows)
    r = runner.invoke(cli_app, ["maps", "import", str(path), "--layer", "sites"], env=WIDE)
    assert r.exit_code == 1
    assert "nothing imported" in r.output
    seeded.expire_all()
    assert service.layer_by_code(seeded, "sites").feature_count == 0
    r = runner.invoke(cli_app, ["maps", "import", str(path), "--layer", "sites", "--keep-valid"], env=WIDE)
    assert r.exit_code == 0, r.output
    seeded.expire_all()
    assert service.layer_by_code(seeded, "sites").feature_count == 20
