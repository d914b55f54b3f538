"""Loading (数据归集): CSV in UTF-8 and GBK, XLSX, JSON; all-or-nothing with a per-row report;
keep_valid; duplicate keys; ragged rows; partial columns and one source per item (一数一源);
versions, diff and rollback; push idempotency and deletes."""

from __future__ import annotations

import csv
import datetime as dt
import io

import openpyxl
import orjson
import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from cityos.core import access, auth
from cityos.core.access import SYSTEM
from cityos.core.errors import Invalid
from cityos.core.identifiers import citizen_id_with_check
from cityos.core.service import department_by_code, user_by_name
from cityos.hub import loading, service, store
from cityos.hub.models import Resource, Version
from tests.conftest import people_spec, seed_small_city

HEADER_ZH = ["身份证号", "姓名", "性别", "出生日期", "所属区县", "家庭人口"]
NAMES = ["id_number", "name", "gender", "birth_date", "district", "household_size"]


def person_row(n: int, district: str = "昌邑区") -> dict[str, object]:
    """Like conftest's, but born 1985-2004: stdnum (and so the load) refuses 220202 (昌邑区) as the
    region of anyone born before the district existed in 1983."""
    born = dt.date(1985 + n % 20, 1 + n % 12, 1 + n % 28)
    first17 = f"220202{born:%Y%m%d}{n % 1000:03d}"
    return {"id_number": citizen_id_with_check(first17), "name": f"居民{n}", "gender": "男" if n % 2 else "女",
            "birth_date": born, "district": district, "household_size": 1 + n % 5}


@pytest.fixture
def people(session, keyring):
    seed_small_city(session)
    res = service.resource_create(session, SYSTEM, people_spec())
    session.commit()
    return res


def csv_bytes(rows, encoding="utf-8", header=HEADER_ZH, names=NAMES):
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(header)
    for r in rows:
        out.writerow(["" if r.get(n) is None else str(r[n]) for n in names])
    return buf.getvalue().encode(encoding)


def load(session, code, data, fmt="csv", actor=SYSTEM, **kw):
    result = loading.load_file(session, actor, code, io.BytesIO(data), fmt, **kw)
    session.commit()
    return result


def stored(session, res, fields=("id_number", "name", "household_size")):
    rows, _, _ = store.select_rows(session.connection(), service.layout_of(res), service.keyring(),
                                   fields=list(fields), limit=1000)
    return rows


def count(session, res):
    return session.execute(text(f'SELECT count(*) FROM "{res.table_name}"')).scalar_one()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030"])
def test_csv_loads_in_utf8_and_gbk(session, people, encoding):
    rows = [person_row(n) for n in range(25)]
    result = load(session, people.code, csv_bytes(rows, encoding), filename="people.csv")
    d = result.as_dict()
    assert (d["version"], d["rows_in"], d["rows_rejected"], d["added"], d["row_count"]) == (1, 25, 0, 25, 25)
    got = {r["id_number"]: r["name"] for r in stored(session, people)}
    assert got == {r["id_number"]: r["name"] for r in rows}  # Chinese text survived the encoding
    v = session.scalar(select(Version).where(Version.resource_id == people.id))
    assert (v.source, v.mode, v.filename, v.created_by) == ("upload", "replace", "people.csv", "system")


def test_xlsx_and_json_load(session, people):
    rows = [person_row(n) for n in range(12)]
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER_ZH)
    for r in rows:
        sheet.append([r[n] for n in NAMES])  # dates and integers as Excel cells
    buf = io.BytesIO()
    book.save(buf)
    assert load(session, people.code, buf.getvalue(), "xlsx").as_dict()["row_count"] == 12
    as_json = orjson.dumps([{**r, "household_size": 3} for r in rows[:5]])
    d = load(session, people.code, as_json, "json").as_dict()
    assert (d["version"], d["changed"], d["removed"], d["row_count"]) == (2, 4, 7, 5)


def test_one_bad_row_loads_nothing_and_the_report_names_row_field_reason(session, people):
    rows = [person_row(n) for n in range(20)]
    bad = dict(rows[6])
    bad["id_number"] = bad["id_number"][:17] + ("0" if bad["id_number"][17] != "0" else "1")
    rows[6] = bad
    rows[9] = {**rows[9], "household_size": 99}  # over the maximum of 30
    with pytest.raises(loading.LoadRejected) as err:
        loading.load_file(session, SYSTEM, people.code, io.BytesIO(csv_bytes(rows)), "csv")
    session.rollback()
    errors = err.value.extra["row_errors"]
    assert err.value.status == 422 and err.value.extra["rows_rejected"] == 2
    assert errors[0]["row"] == 8 and errors[0]["field"] == "id_number"  # header is line 1
    assert "check" in errors[0]["reason"] and "校验" in errors[0]["reason"]
    assert bad["id_number"] not in errors[0]["reason"]  # ID numbers never echoed
    assert errors[1] == {"row": 11, "field": "household_size", "reason": errors[1]["reason"]}
    assert "30" in errors[1]["reason"]
    assert count(session, people) == 0
    assert session.scalar(select(func.count()).select_from(Version)) == 0
    session.expire_all()
    assert session.get(Resource, people.id).current_version == 0


def test_a_bad_row_after_many_batches_still_loads_nothing(session, people, monkeypatch):
    monkeypatch.setattr(loading, "BATCH", 7)  # several batches are written before the bad row
    rows = [person_row(n) for n in range(40)]
    rows[35] = {**rows[35], "birth_date": "2023-02-30"}
    with pytest.raises(loading.LoadRejected) as err:
        loading.load_file(session, SYSTEM, people.code, io.BytesIO(csv_bytes(rows)), "csv")
    session.rollback()
    assert err.value.extra["row_errors"][0]["field"] == "birth_date"
    assert count(session, people) == 0


def test_keep_valid_keeps_the_rest(session, people):
    rows = [person_row(n) for n in range(10)]
    rows[3] = {**rows[3], "gender": "未知"}  # not one of the choices
    d = load(session, people.code, csv_bytes(rows), keep_valid=True).as_dict()
    assert (d["rows_in"], d["rows_rejected"], d["added"], d["row_count"]) == (10, 1, 9, 9)
    assert d["row_errors"][0]["row"] == 5 and d["row_errors"][0]["field"] == "gender"
    v = session.scalar(select(Version).where(Version.resource_id == people.id))
    assert v.rows_rejected == 1 and v.errors[0]["field"] == "gender"
    session.refresh(people)
    assert people.validity == pytest.approx(0.9)


def test_duplicate_keys_are_reported_with_both_rows(session, people):
    rows = [person_row(n) for n in range(6)]
    rows.append({**rows[2], "name": "重复"})
    with pytest.raises(loading.LoadRejected) as err:
        loading.load_file(session, SYSTEM, people.code, io.BytesIO(csv_bytes(rows)), "csv")
    session.rollback()
    (e,) = err.value.extra["row_errors"]
    assert e["row"] == 8 and e["field"] == "id_number"
    assert "row 4" in e["reason"] and "第4行" in e["reason"]


def test_ragged_rows_and_wrong_types(session, people):
    data = csv_bytes([person_row(n) for n in range(4)]).decode()
    lines = data.splitlines()
    lines[2] = lines[2].rsplit(",", 2)[0]  # two fields short
    lines[3] = lines[3].replace(",3\r", ",3") + ",extra"
    bad = person_row(9)
    lines.append(",".join([bad["id_number"], "居民9", "男", "not a date", "昌邑区", "多"]))
    with pytest.raises(loading.LoadRejected) as err:
        loading.load_file(session, SYSTEM, people.code, io.BytesIO("\n".join(lines).encode()), "csv")
    session.rollback()
    errors = err.value.extra["row_errors"]
    assert errors[0]["row"] == 3 and errors[0]["field"] is None and "expected 6 fields, got 4" in errors[0]["reason"]
    assert errors[1]["row"] == 4 and "got 7" in errors[1]["reason"]
    assert {(e["row"], e["field"]) for e in errors[2:]} == {(6, "birth_date"), (6, "household_size")}


def test_file_level_problems_are_invalid_not_half_loaded(session, people):
    gbk = csv_bytes([person_row(n) for n in range(3)], "gbk")
    with pytest.raises(Invalid) as err:
        loading.load_file(session, SYSTEM, people.code, io.BytesIO(gbk), "csv", encoding="utf-8")
    assert "UTF-8" in str(err.value)
    session.rollback()
    with pytest.raises(Invalid) as err:
        loading.load_file(session, SYSTEM, people.code, io.BytesIO("姓名,电话\n张三,1\n".encode()), "csv")
    assert "电话" in str(err.value) and "身份证号" in str(err.value)  # unknown and missing columns
    session.rollback()
    with pytest.raises(Invalid):
        loading.load_file(session, SYSTEM, people.code, io.BytesIO(b"\xd0\xcf\x11\xe0xxxx"), "xlsx")
    session.rollback()
    assert count(session, people) == 0


def test_partial_columns_keep_other_items_and_authority_is_enforced(session, people):
    load(session, people.code, csv_bytes([person_row(n) for n in range(5)]))
    target = person_row(2)
    partial = csv_bytes([{"id_number": target["id_number"], "household_size": 7}],
                        header=["id_number", "household_size"], names=["id_number", "household_size"])
    d = load(session, people.code, partial, mode="upsert").as_dict()
    assert (d["changed"], d["added"], d["removed"], d["row_count"]) == (1, 0, 0, 5)
    row = store.find_by_key(session.connection(), service.layout_of(people), service.keyring(),
                            {"id_number": target["id_number"]})
    assert (row["name"], row["household_size"], row["district"]) == ("居民2", 7, "昌邑区")

    # household_size belongs to 市环保局 (一数一源): the police may not write it, but may write the rest
    item = next(i for i in people.items if i.name == "household_size")
    item.authority_department_id = department_by_code(session, "220200-hbj").id
    session.commit()
    police = auth.user_actor(user_by_name(session, "police_staff"))
    with pytest.raises(access.Denied):
        loading.load_file(session, police, people.code, io.BytesIO(partial), "csv", mode="upsert")
    session.rollback()
    names_only = csv_bytes([{"id_number": target["id_number"], "name": "新名"}],
                           header=["身份证号", "姓名"], names=["id_number", "name"])
    assert load(session, people.code, names_only, actor=police, mode="upsert").as_dict()["changed"] == 1
    env = auth.user_actor(user_by_name(session, "env_staff"))
    with pytest.raises(access.Denied):  # nor may the authority load another department's resource
        loading.load_file(session, env, people.code, io.BytesIO(partial), "csv", mode="upsert")
    session.rollback()


def test_replace_diff_rollback_and_rollback_to_zero(session, people):
    rows = [person_row(n) for n in range(10)]
    load(session, people.code, csv_bytes(rows))
    second = [dict(r) for r in rows[2:]] + [person_row(50)]
    second[0]["name"] = "改名"
    d2 = load(session, people.code, csv_bytes(second)).as_dict()
    assert (d2["version"], d2["added"], d2["changed"], d2["removed"], d2["row_count"]) == (2, 1, 1, 2, 9)
    diff = loading.version_diff(session, SYSTEM, people.code, 1, 2)
    assert (diff["added"], diff["changed"], diff["removed"]) == (1, 1, 2)
    assert diff["changed_rows"][0]["fields"] == ["name"]
    v3 = loading.rollback(session, SYSTEM, people.code, 1)
    session.commit()
    assert (v3.number, v3.source, v3.row_count) == (3, "rollback", 10)
    same = loading.version_diff(session, SYSTEM, people.code, 1, 3)
    assert (same["added"], same["changed"], same["removed"]) == (0, 0, 0)
    assert sorted(r["name"] for r in stored(session, people)) == sorted(r["name"] for r in rows)
    v4 = loading.rollback(session, SYSTEM, people.code, 0)
    session.commit()
    assert (v4.number, v4.row_count, v4.removed) == (4, 0, 10)
    assert count(session, people) == 0
    with pytest.raises(Invalid):
        loading.rollback(session, SYSTEM, people.code, 4)
    with pytest.raises(Invalid):
        loading.version_diff(session, SYSTEM, people.code, 2, 9)
    history = [v.number for v in loading.iter_versions(session, people)]
    assert history == [1, 2, 3, 4]


def test_push_is_idempotent_and_deletes_by_key(session, people):
    rows = [{**person_row(n), "birth_date": person_row(n)["birth_date"].isoformat()} for n in range(5)]
    first = loading.push(session, SYSTEM, people.code, rows, request_key="batch-1")
    session.commit()
    again = loading.push(session, SYSTEM, people.code, rows, request_key="batch-1")
    session.commit()
    assert first.as_dict()["version"] == again.as_dict()["version"] == 1
    assert again.replayed and not first.replayed
    assert session.scalar(select(func.count()).select_from(Version)) == 1
    upd = loading.push(session, SYSTEM, people.code, [{"id_number": rows[0]["id_number"], "household_size": 4}],
                       delete=[{"id_number": rows[1]["id_number"]}], request_key="batch-2")
    session.commit()
    d = upd.as_dict()
    assert (d["version"], d["changed"], d["removed"], d["row_count"]) == (2, 1, 1, 4)
    with pytest.raises(Invalid):
        loading.push(session, SYSTEM, people.code, [], delete=[{"name": "x"}])
    session.rollback()


def test_push_invalid_rows_and_replace_needs_whole_rows(session, people):
    rows = [{"id_number": person_row(1)["id_number"], "name": "甲", "household_size": "x"}]
    with pytest.raises(loading.LoadRejected) as err:
        loading.push(session, SYSTEM, people.code, rows)
    session.rollback()
    assert err.value.extra["row_errors"][0] == {
        "row": 1, "field": "household_size", "reason": err.value.extra["row_errors"][0]["reason"]}
    with pytest.raises(loading.LoadRejected) as err:
        loading.push(session, SYSTEM, people.code, [{"id_number": person_row(2)["id_number"]}], mode="replace")
    session.rollback()
    assert {e["field"] for e in err.value.extra["row_errors"]} == {"name"}
    with pytest.raises(Invalid):
        loading.push(session, SYSTEM, people.code, [{"id_number": person_row(2)["id_number"], "bogus": 1}])
    session.rollback()


def test_progress_is_reported(session, people, monkeypatch):
    monkeypatch.setattr(loading, "BATCH", 10)
    seen = []
    data = csv_bytes([person_row(n) for n in range(35)])
    load(session, people.code, data, total_bytes=len(data), progress=lambda b, r: seen.append((b, r)))
    assert [r for _, r in seen] == [10, 20, 30, 35]
    assert seen[-1][0] == len(data)


def test_datetime_items_are_utc(session, keyring):
    seed_small_city(session)
    res = service.resource_create(session, SYSTEM, people_spec(items=[
        {"name": "code", "title": "编号", "type": "string", "is_key": True},
        {"name": "at", "title": "时间", "type": "datetime"},
    ]))
    session.commit()
    load(session, res.code, "编号,时间\nA,2024-05-01 08:30:00\n".encode())
    (row,) = stored(session, res, fields=("code", "at"))
    assert row["at"] == dt.datetime(2024, 5, 1, 0, 30, tzinfo=dt.UTC)


def test_worker_processes_store_dates_and_times_as_a_serial_load_does(session, keyring, monkeypatch):
    """Workers turn dates and datetimes into SQLite's text themselves (off the writing process):
    what is stored, byte for byte, and what reads back are those of a load in one process."""
    seed_small_city(session)
    spec = people_spec(items=[
        {"name": "code", "title": "编号", "type": "string", "is_key": True},
        {"name": "at", "title": "时间", "type": "datetime"},
        {"name": "day", "title": "日期", "type": "date"},
        {"name": "n", "title": "数量", "type": "integer"},
    ])
    serial, parallel = (service.resource_create(session, SYSTEM, dict(spec)) for _ in range(2))
    session.commit()
    data = "编号,时间,日期,数量\n" + "".join(
        f"S{i},2024-05-0{1 + i % 9} 0{i % 10}:30:00{'+00:00' if i % 2 else ''},2023-12-{10 + i % 20},{i}\n"
        for i in range(40)) + "S40,,,\n"
    load(session, serial.code, data.encode())
    monkeypatch.setattr(loading, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(loading, "MAX_WORKERS", 1)
    monkeypatch.setattr(loading, "BATCH", 16)
    load(session, parallel.code, data.encode())
    fields = ("code", "at", "day", "n")
    assert stored(session, parallel, fields) == stored(session, serial, fields)
    assert stored(session, parallel, fields)[1]["at"] == dt.datetime(2024, 5, 2, 1, 30, tzinfo=dt.UTC)
    raw = [session.execute(text(f'SELECT _key, at, day, n FROM "{r.table_name}" ORDER BY _key')).all()
           for r in (serial, parallel)]
    assert raw[0] == raw[1] and len(raw[0]) == 41


def test_large_files_go_through_worker_processes_with_the_same_outcome(session, people, monkeypatch):
    monkeypatch.setattr(loading, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(loading, "MAX_WORKERS", 1)  # one spawned process is enough to prove it
    monkeypatch.setattr(loading, "BATCH", 16)
    monkeypatch.setattr(store, "DEFER_INDEXES", 8)  # the first batch drops the indexes, finish rebuilds
    rows = [person_row(n) for n in range(100)]
    rows[40] = {**rows[40], "household_size": 0}
    rows.append(dict(rows[7]))
    data = csv_bytes(rows)
    with pytest.raises(loading.LoadRejected) as err:
        loading.load_file(session, SYSTEM, people.code, io.BytesIO(data), "csv")
    session.rollback()
    assert [(e["row"], e["field"]) for e in err.value.extra["row_errors"]] == [(42, "household_size"), (102, "id_number")]
    d = load(session, people.code, data, keep_valid=True).as_dict()
    assert (d["rows_in"], d["rows_rejected"], d["row_count"]) == (101, 2, 99)
    assert sorted(r["name"] for r in stored(session, people)) == sorted(r["name"] for i, r in enumerate(rows[:100]) if i != 40)
    indexes = {ix["name"] for ix in inspect(session.connection()).get_indexes(people.table_name)}
    assert f"ux_{people.table_name}_key" in indexes and f"ix_{people.table_name}_district" in indexes
    with pytest.raises(IntegrityError):  # the unique key index is back
        session.execute(text(f'INSERT INTO "{people.table_name}" (_key, _vfrom, _hash) '
                             f"SELECT _key, 9, 'x' FROM \"{people.table_name}\" LIMIT 1"))
    session.rollback()
