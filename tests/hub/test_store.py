"""Row storage: first load, merge with history, diff, rollback, filters, sensitive items."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from cityos.core.access import SYSTEM
from cityos.core.errors import Invalid
from cityos.hub import service, store
from tests.conftest import people_spec, person_row, seed_small_city


@pytest.fixture
def people(session, keyring):
    seed_small_city(session)
    res = service.resource_create(session, SYSTEM, people_spec())
    session.commit()
    return res


def _load(session, res, rows, version, mode="replace", delete=()):
    layout = service.layout_of(res)
    enc = store.Encoder(layout, service.keyring())
    w = store.Writer(session.connection(), layout, version, mode)
    w.add([enc.encode(r) for r in rows])
    return w.finish(delete)


def test_first_load_then_merge_keeps_history(session, people):
    rows = [person_row(n) for n in range(10)]
    c1 = _load(session, people, rows, 1)
    assert (c1.added, c1.changed, c1.removed, c1.row_count) == (10, 0, 0, 10)
    changed = [dict(r) for r in rows[:8]]
    changed[0]["name"] = "改名"
    changed.append(person_row(100))
    c2 = _load(session, people, changed, 2)
    assert (c2.added, c2.changed, c2.removed, c2.row_count) == (1, 1, 2, 9)
    layout = service.layout_of(people)
    d = store.diff(session.connection(), layout, service.keyring(), 1, 2)
    assert (d["added"], d["changed"], d["removed"]) == (1, 1, 2)
    assert d["changed_rows"][0]["old"]["name"] == "居民0"
    assert d["changed_rows"][0]["new"]["name"] == "改名"
    assert d["changed_rows"][0]["fields"] == ["name"]
    assert {r["id_number"] for r in d["removed_rows"]} == {rows[8]["id_number"], rows[9]["id_number"]}
    # version 1, rebuilt from current + history
    v1 = store.rows_at(session.connection(), layout, service.keyring(), 1, limit=100)
    assert sorted(r["name"] for r in v1) == sorted(r["name"] for r in rows)


def test_upsert_and_delete(session, people):
    _load(session, people, [person_row(n) for n in range(5)], 1)
    r = person_row(1)
    r["household_size"] = 9
    c = _load(session, people, [r, person_row(7)], 2, mode="upsert", delete=[])
    assert (c.added, c.changed, c.removed, c.row_count) == (1, 1, 0, 6)


def test_rollback_restores_an_old_version(session, people):
    rows = [person_row(n) for n in range(6)]
    _load(session, people, rows, 1)
    _load(session, people, rows[:2], 2)
    layout = service.layout_of(people)
    w = store.Writer(session.connection(), layout, 3, "replace")
    store.stage_version(w, 1)
    c = w.finish()
    assert (c.added, c.row_count) == (4, 6)
    d = store.diff(session.connection(), layout, service.keyring(), 1, 3)
    assert (d["added"], d["changed"], d["removed"]) == (0, 0, 0)


def test_sensitive_items_are_ciphertext_at_rest_and_found_by_blind_index(session, people):
    rows = [person_row(n) for n in range(3)]
    _load(session, people, rows, 1)
    raw = session.execute(text(f"SELECT id_number, _key FROM {people.table_name}")).all()
    for value, key in raw:
        assert value.startswith("enc") or "." in value
        assert all(r["id_number"] not in value and r["id_number"] not in key for r in rows)
    layout = service.layout_of(people)
    ring = service.keyring()
    got, _, _ = store.select_rows(session.connection(), layout, ring, fields=["id_number", "name"],
                                  conds=[store.Cond("id_number", "eq", rows[1]["id_number"])])
    assert got == [{"id_number": rows[1]["id_number"], "name": "居民1"}]
    assert store.find_by_key(session.connection(), layout, ring, {"id_number": rows[2]["id_number"]})["name"] == "居民2"
    with pytest.raises(Invalid):
        store.select_rows(session.connection(), layout, ring, fields=["name"],
                          conds=[store.Cond("id_number", "gt", "1")])
    with pytest.raises(Invalid):
        store.select_rows(session.connection(), layout, ring, fields=["name"], sort=[("id_number", False)])


def test_filters_sort_page_and_types(session, people):
    _load(session, people, [person_row(n, "船营区" if n % 3 == 0 else "昌邑区") for n in range(30)], 1)
    layout = service.layout_of(people)
    ring = service.keyring()
    conn = session.connection()
    rows, total, more = store.select_rows(
        conn, layout, ring, fields=["name", "household_size", "birth_date"],
        conds=[store.Cond("district", "eq", "船营区"), store.Cond("household_size", "gte", 2)],
        sort=[("household_size", True)], limit=3, with_total=True)
    assert total == sum(1 for n in range(30) if n % 3 == 0 and 1 + n % 5 >= 2)
    assert more and len(rows) == 3
    assert [r["household_size"] for r in rows] == sorted([r["household_size"] for r in rows], reverse=True)
    assert isinstance(rows[0]["birth_date"], dt.date)
    got, _, _ = store.select_rows(conn, layout, ring, fields=["name"],
                                  conds=[store.Cond("name", "contains", "%")])
    assert got == []  # LIKE wildcards in values are escaped
    got, _, _ = store.select_rows(conn, layout, ring, fields=["name"],
                                  conds=[store.Cond("name", "startswith", "居民2")])
    assert len(got) == 11
    with pytest.raises(Invalid) as e:
        store.select_rows(conn, layout, ring, fields=["name"], conds=[store.Cond("nope", "eq", 1)])
    assert e.value.errors[0].field == "nope"
