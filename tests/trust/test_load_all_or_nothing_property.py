"""All-or-nothing loads (全部成功或全部不导入), property-tested on SQLite and PostgreSQL through the
service functions: a CSV, XLSX or JSON file of generated residents with one bad row of a generated
kind at a generated place is refused naming that row and field, and leaves the resource exactly as
it was (rows, version, counts, audit chain); the same file without the bad row then loads whole."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
from typing import Any

import openpyxl
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityos.core.access import SYSTEM
from cityos.core.identifiers import citizen_id_with_check
from cityos.core.models import AuditRecord
from cityos.hub import loading, service, store
from cityos.hub.models import Resource, Version
from tests.conftest import people_spec, seed_small_city

NAMES = ["id_number", "name", "gender", "birth_date", "district", "household_size"]
TITLES = ["身份证号", "姓名", "性别", "出生日期", "所属区县", "家庭人口"]
# Each kind of bad row: what it does to the row, and the field its error names (None: the row).
BAD = {
    "check digit": ("id_number", lambda r: {**r, "id_number": r["id_number"][:17] + (
        "0" if r["id_number"][17] != "0" else "1")}),
    "above the maximum": ("household_size", lambda r: {**r, "household_size": 31}),
    "no such date": ("birth_date", lambda r: {**r, "birth_date": "2023-02-30"}),
    "not a choice": ("gender", lambda r: {**r, "gender": "未知"}),
    "required and empty": ("name", lambda r: {**r, "name": ""}),
    "an extra field": (None, lambda r: {**r, "extra": "多余"}),
}


def resident(n: int) -> dict[str, Any]:
    """A well-formed resident of 昌邑区 (220202, a code since 1983), born 1985-2004."""
    born = dt.date(1985 + n % 20, 1 + n % 12, 1 + n % 28)
    return {"id_number": citizen_id_with_check(f"220202{born:%Y%m%d}{n % 1000:03d}"), "name": f"居民{n}",
            "gender": "男" if n % 2 else "女", "birth_date": born, "district": "昌邑区",
            "household_size": 1 + n % 5}


def as_file(rows: list[dict[str, Any]], fmt: str) -> bytes:
    """The rows as a file with the Chinese titles as header (JSON: item names as keys)."""
    if fmt == "json":
        return orjson.dumps([{k: v.isoformat() if isinstance(v, dt.date) else v for k, v in r.items()}
                             for r in rows])
    table = [TITLES] + [[r.get(k) for k in NAMES] + ([r["extra"]] if "extra" in r else []) for r in rows]
    if fmt == "xlsx":
        book = openpyxl.Workbook()
        for line in table:
            book.active.append(line)
        buf = io.BytesIO()
        book.save(buf)
        return buf.getvalue()
    out = io.StringIO()
    csv.writer(out).writerows([["" if c is None else str(c) for c in line] for line in table])
    return out.getvalue().encode("gb18030")


@pytest.fixture
def people(session: Session, keyring: Any) -> Resource:
    """户籍人口 with a first version of 12 residents, so that "nothing changed" has something to keep."""
    seed_small_city(session)
    res = service.resource_create(session, SYSTEM, people_spec())
    session.commit()
    loading.load_file(session, SYSTEM, res.code, io.BytesIO(as_file([resident(n) for n in range(12)], "csv")),
                      "csv")
    session.commit()
    return res


def state(session: Session, res: Resource) -> tuple[Any, ...]:
    """Everything a load may change: the rows as stored (decoded), the resource, versions, audit."""
    session.expire_all()
    fresh = session.get(Resource, res.id)
    rows, _, _ = store.select_rows(session.connection(), service.layout_of(fresh), service.keyring(),
                                   fields=NAMES, limit=1000)
    return (sorted(orjson.dumps({str(k): v for k, v in r.items()}, default=str) for r in rows),
            fresh.current_version, fresh.row_count,
            session.scalar(select(func.count()).select_from(Version).where(Version.resource_id == res.id)),
            session.scalar(select(func.max(AuditRecord.seq))))


@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.integers(2, 25).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
       st.integers(0, 500), st.sampled_from(sorted(BAD)), st.sampled_from(["csv", "xlsx", "json"]),
       st.sampled_from(["replace", "upsert"]))
def test_one_bad_row_loads_nothing_and_the_rest_alone_loads_whole(
        session: Session, people: Resource, size: tuple[int, int], first: int, kind: str, fmt: str,
        mode: str) -> None:
    n, at = size
    good = [resident(first + i) for i in range(n)]
    rows = copy.deepcopy(good)
    field, spoil = BAD[kind]
    rows[at] = spoil(rows[at])
    before = state(session, people)
    with pytest.raises(loading.LoadRejected) as err:
        loading.load_file(session, SYSTEM, people.code, io.BytesIO(as_file(rows, fmt)), fmt, mode=mode)
    session.rollback()
    assert state(session, people) == before  # not one row, version, count or audit record
    problem = err.value.extra
    assert err.value.status == 422 and problem["rows_in"] == n and problem["rows_rejected"] == 1
    line = at + (1 if fmt == "json" else 2)  # JSON counts objects; a sheet has its header first
    assert [(e["row"], e["field"]) for e in problem["row_errors"]] == [(line, field)]
    assert good[at]["id_number"][:14] not in problem["row_errors"][0]["reason"]  # no ID echoed

    result = loading.load_file(session, SYSTEM, people.code, io.BytesIO(as_file(good, fmt)), fmt, mode=mode)
    session.commit()
    after = state(session, people)
    assert result.rows_in == n and result.rows_rejected == 0 and after[1] == before[1] + 1
    if mode == "replace":
        assert after[2] == n
