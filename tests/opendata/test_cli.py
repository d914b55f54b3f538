"""`cityos opendata ...`: the dataset list, refreshing a copy now, dry-run checks, the open rate
per department and flushing usage counts, against a migrated database."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from cityos.cli import app as cli_app
from cityos.core import db
from cityos.core.access import SYSTEM
from cityos.hub import loading
from cityos.opendata import applications, service
from tests.conftest import person_row
from tests.opendata.conftest import actor_of, publish

runner = CliRunner()
WIDE = {"COLUMNS": "250"}
SUPPRESS_PEOPLE = [{"field": "id_number", "action": "suppress"}, {"field": "name", "action": "suppress"},
                   {"field": "birth_date", "action": "suppress"}]


@pytest.fixture
def cli_env(settings, monkeypatch):
    from cityos.core.cli import console, err_console

    monkeypatch.setenv("CITYOS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setattr(console, "width", 250)  # Rich measured the terminal at import
    monkeypatch.setattr(err_console, "width", 250)
    return settings


def invoke(*args: str):
    return runner.invoke(cli_app, ["opendata", *args], env=WIDE)


def _held_residents(session, open_city) -> None:
    """市公安局's residents published by district with k=10, then a version that breaks it."""
    publish(session, open_city.people.code, {"name": "residents-by-district", "quasi_identifiers": ["district"],
                                             "k": 10, "rules": SUPPRESS_PEOPLE}, "police_staff", "police_admin")
    loading.rows_write(session, actor_of(session, "police_staff"), open_city.people.code,
                       [person_row(900, "丰满区")])
    session.commit()


def test_datasets_lists_state_rows_source_version_and_held_reason(cli_env, session, open_city):
    _held_residents(session, open_city)
    r = invoke("datasets")
    assert r.exit_code == 0, r.output
    lines = {line.split()[1]: line for line in r.output.splitlines() if line.startswith("│")}
    air, residents = lines["air-quality-daily"], lines["residents-by-district"]
    assert "published" in air and "80" in air and "无条件开放" in air
    assert "40" in residents and "source at 2" in residents and "k-anonymity below 10" in residents
    r = invoke("datasets", "--department", "220200-hbj")
    assert r.exit_code == 0 and "air-quality-daily" in r.output and "residents" not in r.output
    r = invoke("datasets", "--state", "nonsense")
    assert r.exit_code == 1 and "state" in r.output


def test_refresh_rebuilds_the_copy_and_reports_k_anonymity(cli_env, session, open_city):
    publish(session, open_city.people.code, {"name": "residents", "quasi_identifiers": ["district"], "k": 5,
                                             "rules": SUPPRESS_PEOPLE}, "police_staff", "police_admin")
    r = invoke("refresh", "residents")
    assert r.exit_code == 0, r.output
    assert "40 rows from source version 1" in r.output
    assert "k-anonymity holds" in r.output and "smallest group 20" in r.output
    r = invoke("refresh", "air-quality-daily")
    assert r.exit_code == 0 and "80 rows" in r.output and "no quasi-identifiers" in r.output


def test_refresh_that_fails_k_anonymity_holds_the_copy_back_and_exits_1(cli_env, session, open_city):
    _held_residents(session, open_city)
    r = invoke("refresh", "residents-by-district")
    assert r.exit_code == 1
    assert "held back" in r.output and "k-anonymity fails" in r.output and "district=丰满区 (1)" in r.output
    session.expire_all()
    ds = service.dataset_by_name(session, "residents-by-district")
    assert ds.row_count == 40 and ds.source_version == 1 and "k-anonymity" in ds.held_reason


def test_refresh_of_an_unpublished_dataset_is_refused(cli_env, session, open_city):
    service.dataset_draft(session, actor_of(session, "police_staff"), resource=open_city.people.code,
                          spec={"name": "residents"})
    session.commit()
    r = invoke("refresh", "residents")
    assert r.exit_code == 1 and "not published" in r.output
    assert invoke("refresh", "no-such-thing").exit_code == 1


def test_check_names_what_fails_and_writes_nothing(cli_env, session, open_city):
    staff = actor_of(session, "police_staff")
    ds = service.dataset_draft(session, staff, resource=open_city.people.code, spec={"name": "residents"})
    session.commit()
    r = invoke("check", "residents")
    assert r.exit_code == 1
    assert "rules.id_number" in r.output and "身份证号" in r.output
    service.dataset_update(session, staff, "residents", {
        "rules": [{"field": "id_number", "action": "mask"}, {"field": "name", "action": "suppress"},
                  {"field": "birth_date", "action": "generalize", "to": "age_band", "width": 50}],
        "quasi_identifiers": ["birth_date", "district"], "k": 2})
    session.commit()
    r = invoke("check", "residents")
    assert r.exit_code == 0, r.output
    assert "passes" in r.output and "40 rows" in r.output and "k-anonymity holds" in r.output
    assert "suppressed / 不开放: name" in r.output and "generalize" in r.output
    session.expire_all()
    assert service.dataset_by_name(session, "residents").state == "draft"
    assert not inspect(session.connection()).has_table(f"od_rows_{ds.id}")


def test_stats_shows_the_open_rate_per_department(cli_env, session, open_city):
    service.plan_add(session, SYSTEM, resource=open_city.people.code, open_level="conditional",
                     planned_on=dt.date(2020, 1, 1))
    session.commit()
    r = invoke("stats")
    assert r.exit_code == 0, r.output
    rows = {line.split()[1]: line for line in r.output.splitlines() if line.startswith("│")}
    assert "100%" in rows["市环保局"] and "0%" in rows["市公安局"]
    assert "50%" in r.output  # the city: one of two openable resources is open
    police = rows["市公安局"].split("│")
    assert police[6].strip() == "0/1" and "1" in police[7]  # planned, and overdue
    r = invoke("stats", "--department", "220200-hbj")
    assert r.exit_code == 0 and "市环保局" in r.output and "市公安局" not in r.output


def test_usage_flush_writes_the_buffered_counts(cli_env, session, open_city):
    applications.USAGE.flush(db.make_sessionmaker(session.get_bind()))  # start from nothing
    ds = open_city.dataset
    applications.USAGE.add(ds.id, "views", 3)
    applications.USAGE.add(ds.id, "downloads")
    r = invoke("usage-flush")
    assert r.exit_code == 0, r.output
    assert "4 of 4 counts written" in r.output
    session.expire_all()
    ds = service.dataset_by_name(session, "air-quality-daily")
    assert (ds.views, ds.downloads) == (3, 1)
    assert "0 of 0" in invoke("usage-flush").output
