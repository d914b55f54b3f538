"""China's official working-day calendar (工作日历): published holidays and make-up working days,
deadlines in working days and hours, and the yearly import of the State Council's schedule."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cityos.cli import app as cli_app
from cityos.core import workdays
from cityos.core.access import SYSTEM, Actor
from cityos.core.errors import Conflict, Forbidden, Invalid
from cityos.core.models import AuditRecord, CalendarDay, CalendarYear
from cityos.core.workdays import (
    Calendar,
    add_working_days,
    add_working_hours,
    is_workday,
    parse_schedule,
    working_days_between,
)

CST = dt.timezone(dt.timedelta(hours=8))
SHIPPED_2026 = Path(workdays.__file__).parent / "calendar" / "2026.json"
# Made up for the tests: NOT the official 2027 schedule, which is not published here.
TEST_2027 = {
    "year": 2027,
    "source": "test schedule",
    "holidays": [{"name": "元旦", "date": "2027-01-01"},
                 {"name": "春节", "from": "2027-02-06", "to": "2027-02-12"}],
    "workdays": [{"name": "春节调休", "date": "2027-02-13"}],
}
runner = CliRunner()


def cst(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=CST)  # type: ignore[misc]


def d(s: str) -> dt.date:
    return dt.date.fromisoformat(s)


@pytest.fixture
def cal() -> Calendar:
    return Calendar.builtin()


# ---- the published calendar ----

def test_2025_national_day_and_its_make_up_days(cal):
    for day in range(1, 9):
        assert not is_workday(cal, dt.date(2025, 10, day)), day
    assert is_workday(cal, d("2025-09-28"))  # a Sunday, 调休上班
    assert is_workday(cal, d("2025-10-11"))  # a Saturday, 调休上班
    assert is_workday(cal, d("2025-09-30")) and is_workday(cal, d("2025-10-09"))
    assert not is_workday(cal, d("2025-10-12"))  # an ordinary Sunday
    assert cal.overrides[d("2025-10-01")] == (False, "国庆节")
    assert cal.overrides[d("2025-10-11")] == (True, "国庆节调休")


def test_2026_spring_festival(cal):
    assert [day.day for day, w, _ in cal.year_days(2026) if day.month == 2] == [14, 16, 17, 18, 19, 20, 23, 28]
    for day in range(15, 24):
        assert not is_workday(cal, dt.date(2026, 2, day)), day
    assert is_workday(cal, d("2026-02-14")) and is_workday(cal, d("2026-02-28"))


def test_an_unknown_year_follows_monday_to_friday(cal):
    assert cal.knows(d("2026-12-31")) and not cal.knows(d("2027-01-01"))
    assert is_workday(cal, d("2027-01-01"))  # a Friday; its real status is not known yet
    assert not is_workday(cal, d("2027-01-02"))


# ---- deadlines ----

def test_working_days_across_the_2025_national_day(cal):
    deadline = add_working_days(cal, cst(2025, 9, 30, 10, 0), 3)
    # 10-01..08 off; 10-09 (1), 10-10 (2), Saturday 10-11 is a make-up working day (3).
    assert deadline.at == dt.datetime(2025, 10, 11, 9, 30, tzinfo=dt.UTC)
    assert deadline.at.tzinfo == dt.UTC
    assert not deadline.beyond_calendar and deadline.note == ""


def test_friday_evening_before_a_holiday_counts_from_the_next_working_day(cal):
    # Friday 2025-05-30 20:00; 端午 2025-05-31..06-02.
    assert add_working_days(cal, cst(2025, 5, 30, 20, 0), 1).at == cst(2025, 6, 3, 17, 30)
    assert add_working_days(cal, cst(2025, 5, 30, 20, 0), 10).at == cst(2025, 6, 16, 17, 30)
    # The city's date decides: 2025-05-29 20:00 UTC is already Friday 04:00 in Jilin.
    assert add_working_days(cal, dt.datetime(2025, 5, 29, 20, 0, tzinfo=dt.UTC), 1).at == cst(2025, 6, 3, 17, 30)
    assert add_working_days(cal, cst(2025, 5, 29, 20, 0), 1).at == cst(2025, 5, 30, 17, 30)


def test_zero_days_and_a_custom_day_end(cal):
    assert add_working_days(cal, cst(2025, 9, 28, 10, 0), 0).at == cst(2025, 9, 28, 17, 30)
    assert add_working_days(cal, cst(2025, 10, 1, 10, 0), 0).at == cst(2025, 10, 9, 17, 30)
    assert add_working_days(cal, cst(2025, 10, 9, 10, 0), 1, day_end=dt.time(18)).at == cst(2025, 10, 10, 18)
    with pytest.raises(ValueError):
        add_working_days(cal, cst(2025, 10, 9), -1)
    with pytest.raises(ValueError):
        add_working_days(cal, dt.datetime(2025, 10, 9), 1)  # noqa: DTZ001 - naive on purpose


def test_a_deadline_past_the_known_calendar_says_so(cal):
    within = add_working_days(cal, cst(2026, 12, 25, 10, 0), 4)
    assert within.at == cst(2026, 12, 31, 17, 30) and not within.beyond_calendar
    beyond = add_working_days(cal, cst(2026, 12, 25, 10, 0), 10)
    assert beyond.at == cst(2027, 1, 8, 17, 30)  # Monday to Friday assumed for 2027
    assert beyond.beyond_calendar and beyond.unknown_years == (2027,)
    assert "2027" in beyond.note and "尚未导入" in beyond.note


def test_working_hours_across_lunch_a_weekend_and_a_holiday(cal):
    assert add_working_hours(cal, cst(2025, 6, 6, 11, 0), 3).at == cst(2025, 6, 6, 15, 30)
    assert add_working_hours(cal, cst(2025, 6, 6, 10, 0), 2).at == cst(2025, 6, 6, 12, 0)
    assert add_working_hours(cal, cst(2025, 6, 6, 12, 30), 1).at == cst(2025, 6, 6, 14, 30)
    assert add_working_hours(cal, cst(2025, 6, 6, 16, 30), 3).at == cst(2025, 6, 9, 11, 0)
    assert add_working_hours(cal, cst(2025, 9, 27, 10, 0), 1).at == cst(2025, 9, 28, 10, 0)  # 调休 Sunday
    assert add_working_hours(cal, cst(2025, 9, 30, 17, 0), 1).at == cst(2025, 10, 9, 9, 30)
    assert add_working_hours(cal, cst(2025, 6, 6, 20, 0), 1.5).at == cst(2025, 6, 9, 10, 30)
    late = add_working_hours(cal, cst(2026, 12, 31, 17, 0), 1)
    assert late.at == cst(2027, 1, 1, 9, 30) and late.beyond_calendar
    one_period = ((dt.time(8), dt.time(16)),)
    assert add_working_hours(cal, cst(2025, 6, 6, 15, 0), 2, periods=one_period).at == cst(2025, 6, 9, 9, 0)


def test_working_days_between(cal):
    deadline = cst(2025, 9, 30, 17, 30)
    assert working_days_between(cal, deadline, cst(2025, 10, 10, 10, 0)) == 2
    assert working_days_between(cal, cst(2025, 10, 10, 10, 0), deadline) == -2
    assert working_days_between(cal, deadline, cst(2025, 9, 30, 23, 0)) == 0
    start = cst(2025, 5, 30, 20, 0)
    for n in (1, 5, 10, 30):
        assert working_days_between(cal, start, add_working_days(cal, start, n).at) == n


# ---- parsing a schedule ----

def test_the_shipped_2026_file_is_the_built_in_2026(cal):
    schedule = parse_schedule(SHIPPED_2026.read_text(encoding="utf-8"), "json")
    assert schedule.year == 2026 and schedule.source == "国办发明电〔2025〕7号"
    assert schedule.days == cal.year_days(2026)


def test_csv_with_header_chinese_types_and_weekend_holidays():
    text = "date,type,name\n2027-01-01,休,元旦\n2027-01-02,holiday,元旦\n\n# comment\n2027-02-13,班,春节调休\n"
    schedule = parse_schedule(text, "csv")
    assert schedule.year == 2027
    # 2027-01-02 is a Saturday: a rest day anyway, so it is not an exception to keep.
    assert schedule.days == [(d("2027-01-01"), False, "元旦"), (d("2027-02-13"), True, "春节调休")]


def _errors(text: str, fmt: str = "json") -> dict[str, str]:
    with pytest.raises(Invalid) as exc:
        parse_schedule(text, fmt)  # type: ignore[arg-type]
    return {e.field: e.reason for e in exc.value.errors}


def _with(**changes: object) -> str:
    return json.dumps({**TEST_2027, **changes}, ensure_ascii=False)


def test_bad_dates_are_named():
    errors = _errors(_with(holidays=[{"name": "元旦", "from": "2027-02-30", "to": "2027-03-01"},
                                     {"name": "春节", "date": "2027/02/08"}]))
    assert set(errors) == {"holidays[0].from", "holidays[1].date"}
    assert "YYYY-MM-DD" in errors["holidays[0].from"] and "不是有效日期" in errors["holidays[0].from"]


def test_dates_outside_the_year_duplicates_and_pointless_workdays():
    errors = _errors(_with(
        holidays=[{"name": "元旦", "from": "2026-12-31", "to": "2027-01-01"},
                  {"name": "春节", "from": "2027-02-08", "to": "2027-02-09"}],
        workdays=[{"name": "春节调休", "date": "2027-02-09"}, {"name": "调休", "date": "2027-02-10"}]))
    assert "outside year 2027" in errors["holidays[0]"]
    assert "given twice (also at holidays[1])" in errors["workdays[0]"]
    assert "working day already" in errors["workdays[1]"] and "2027-02-10" in errors["workdays[1]"]


def test_structure_errors():
    assert "year" in _errors(_with(year="2027"))
    assert "form" in _errors(_with(form="x"))
    assert "holidays[0]" in _errors(_with(holidays=[{"name": "元旦", "from": "2027-01-01"}]))
    assert "holidays[0]" in _errors(_with(holidays=[{"name": "元旦", "from": "2027-01-01", "to": "2027-03-01"}]))
    assert "file" in _errors("{not json")
    assert set(_errors("2027-01-01,休,元旦\n2027-01-08,off,x\n2027-13-01,休,y\n", "csv")) == {"line 2", "line 3"}
    assert "holidays" in _errors(_with(holidays=[], workdays=[]))


# ---- importing (runs on SQLite and PostgreSQL) ----

def test_importing_the_2026_file_gives_the_built_in_calendar(session, cal):
    schedule = parse_schedule(SHIPPED_2026.read_text(encoding="utf-8"), "json")
    workdays.import_schedule(session, SYSTEM, schedule.year, schedule.days, schedule.source)
    session.commit()
    loaded = Calendar.load(session)
    assert loaded.year_days(2026) == cal.year_days(2026)
    assert loaded.sources[2026].startswith("imported: 国办发明电〔2025〕7号 (system, ")
    day = d("2026-01-01")
    while day.year == 2026:
        assert is_workday(loaded, day) == is_workday(cal, day), day
        day += dt.timedelta(days=1)
    assert session.get(CalendarYear, 2026).imported_by == "system"


def test_importing_2027_ends_the_beyond_calendar_warning(session):
    start = cst(2026, 12, 25, 10, 0)
    before = add_working_days(workdays.current(session), start, 10)
    assert before.beyond_calendar and before.at == cst(2027, 1, 8, 17, 30)
    schedule = parse_schedule(_with(), "json")
    row = workdays.import_schedule(session, SYSTEM, 2027, schedule.days, "test schedule")
    session.commit()
    assert row.year == 2027
    after = add_working_days(workdays.current(session), start, 10)
    assert not after.beyond_calendar and after.note == ""
    assert after.at == cst(2027, 1, 11, 17, 30)  # 元旦 2027-01-01 now a holiday
    assert is_workday(workdays.current(session), d("2027-02-13"))
    stored = session.scalars(select(CalendarDay).order_by(CalendarDay.day)).all()
    assert [(r.day, r.workday, r.year, r.source) for r in stored][:2] == [
        (d("2027-01-01"), False, 2027, "test schedule"), (d("2027-02-08"), False, 2027, "test schedule")]
    assert len(stored) == 7  # 01-01, 02-08..12 and the make-up 02-13
    record = session.scalars(select(AuditRecord).where(AuditRecord.action == "calendar.import")).one()
    assert record.object_id == "2027" and record.detail["workdays"] == 1 and record.detail["holidays"] == 6


def test_a_year_imported_before_is_refused_unless_replaced(session):
    days = parse_schedule(_with(), "json").days
    workdays.import_schedule(session, SYSTEM, 2027, days, "first")
    session.commit()
    with pytest.raises(Conflict) as exc:
        workdays.import_schedule(session, SYSTEM, 2027, days[:1], "second")
    assert "imported before" in exc.value.detail
    session.rollback()
    assert len(Calendar.load(session).year_days(2027)) == 7  # its rows now sit in the session
    workdays.import_schedule(session, SYSTEM, 2027, days[:1], "second", replace=True)
    session.commit()
    cal = workdays.current(session)
    assert cal.year_days(2027) == [(d("2027-01-01"), False, "元旦")]
    assert not is_workday(cal, d("2027-01-01")) and is_workday(cal, d("2027-02-08"))
    assert session.get(CalendarYear, 2027).source == "second"


def test_an_imported_year_replaces_the_built_in_one_and_bad_days_write_nothing(session):
    with pytest.raises(Invalid) as exc:
        workdays.import_schedule(session, SYSTEM, 2025, [(d("2025-10-01"), False, "国庆节"),
                                                         (d("2025-10-09"), True, "x")])
    assert exc.value.errors[0].field == "days[1]"
    assert session.scalars(select(CalendarYear)).all() == []
    workdays.import_schedule(session, SYSTEM, 2025, [(d("2025-10-01"), False, "国庆节")])
    session.commit()
    cal = workdays.current(session)
    assert not is_workday(cal, d("2025-10-01")) and is_workday(cal, d("2025-10-02"))
    assert is_workday(cal, d("2026-10-02")) is False  # other built-in years are untouched


def test_only_a_platform_admin_imports(session):
    clerk = Actor(kind="user", name="clerk", role="department_staff", user_id=1, department_id=1)
    with pytest.raises(Forbidden):
        workdays.import_schedule(session, clerk, 2027, parse_schedule(_with(), "json").days)


# ---- the CLI ----

@pytest.fixture
def cli_env(settings, monkeypatch):
    monkeypatch.setenv("CITYOS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(settings.data_dir))
    return settings


def test_cli_import_and_show(cli_env, tmp_path):
    env = {"COLUMNS": "200"}
    result = runner.invoke(cli_app, ["calendar", "show", "2027"], env=env)
    assert result.exit_code == 0, result.output
    assert "not known" in result.output
    path = tmp_path / "2027.json"
    path.write_text(_with(), encoding="utf-8")
    result = runner.invoke(cli_app, ["calendar", "import", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "imported the 2027 calendar" in result.output and "6 holidays" in result.output
    again = runner.invoke(cli_app, ["calendar", "import", str(path)], env=env)
    assert again.exit_code == 1 and "imported before" in again.output
    replaced = runner.invoke(cli_app, ["calendar", "import", str(path), "--replace", "--source", "国办发明电〔2026〕1号"], env=env)
    assert replaced.exit_code == 0, replaced.output
    shown = runner.invoke(cli_app, ["calendar", "show", "2027"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "imported: 国办发明电〔2026〕1号" in shown.output
    assert "2027-01-01" in shown.output and "2027-02-13" in shown.output and "调休上班" in shown.output
    builtin = runner.invoke(cli_app, ["calendar", "show", "2025"], env=env)
    assert "built in (chinese-calendar" in builtin.output and "2025-10-08" in builtin.output


def test_cli_import_names_the_mistake(cli_env, tmp_path):
    path = tmp_path / "2027.csv"
    path.write_text("date,type,name\n2027-01-01,休,元旦\n2027-01-04,班,x\n", encoding="utf-8")
    result = runner.invoke(cli_app, ["calendar", "import", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "line 3" in result.output and "working day already" in result.output
    wrong = tmp_path / "2027.txt"
    wrong.write_text("x", encoding="utf-8")
    assert runner.invoke(cli_app, ["calendar", "import", str(wrong)]).exit_code == 2


def test_the_cache_sees_an_import_made_by_another_process(session, sessions):
    assert not workdays.current(session).knows(d("2027-01-01"))
    with sessions() as other:  # another process: no invalidate() here
        other.add(CalendarYear(year=2027, source="elsewhere", imported_by="x"))
        other.add(CalendarDay(day=d("2027-01-01"), workday=False, name="元旦", year=2027))
        other.commit()
    session.rollback()  # a new transaction sees the other one's commit
    cal = workdays.current(session)
    assert cal.knows(d("2027-01-01")) and not is_workday(cal, d("2027-01-01"))
    with pytest.raises(TypeError):
        cal.overrides[d("2027-01-04")] = (False, "x")  # type: ignore[index]
