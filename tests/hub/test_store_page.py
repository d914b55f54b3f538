"""A page of rows comes back with every item type's own Python value, on both databases.

On SQLite the page is built by SQLite as one JSON array (`store._sqlite_page`); these tests pin
that it gives what SQLAlchemy's row types give: booleans, dates, UTC datetimes, NULLs, text that
needs JSON escaping, decrypted sensitive items and the requested order; floats keep all 17 digits
(a page with a number item is read row by row)."""

from __future__ import annotations

import datetime as dt

import pytest

from cityos.core.access import SYSTEM
from cityos.hub import service, store
from tests.conftest import seed_small_city

ITEMS = [
    {"name": "code", "title": "编码", "type": "string", "required": True, "is_key": True},
    {"name": "label", "title": "名称", "type": "string"},
    {"name": "count", "title": "数量", "type": "integer"},
    {"name": "reading", "title": "读数", "type": "number"},
    {"name": "active", "title": "在用", "type": "boolean"},
    {"name": "opened", "title": "启用日期", "type": "date"},
    {"name": "checked_at", "title": "检查时间", "type": "datetime"},
    {"name": "contact", "title": "联系电话", "type": "phone", "sensitivity": "sensitive"},
]

ROWS = [
    {"code": "A1", "label": "引号\"和\\反斜杠\n换行\t制表\x01", "count": 2**62, "reading": 0.1 + 0.2,
     "active": True, "opened": dt.date(2024, 2, 29),
     "checked_at": dt.datetime(2026, 11, 22, 3, 4, 5, 678901, tzinfo=dt.UTC), "contact": "13800138000"},
    {"code": "A2", "label": "零点", "count": -7, "reading": 1e300, "active": False,
     "opened": dt.date(1900, 1, 1), "checked_at": dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
     "contact": "13912345678"},
    {"code": "A3", "label": None, "count": None, "reading": None, "active": None, "opened": None,
     "checked_at": None, "contact": None},
    {"code": "A4", "label": "整数读数", "count": 0, "reading": 3.0, "active": True,
     "opened": dt.date(2030, 12, 31), "checked_at": dt.datetime(2026, 1, 1, 23, 59, 59, 1, tzinfo=dt.UTC),
     "contact": "13700001111"},
    {"code": "A5", "label": "😀 emoji", "count": 1, "reading": -2.5e-310, "active": False,
     "opened": dt.date(2001, 5, 6), "checked_at": dt.datetime(2001, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
     "contact": "13600002222"},
]


@pytest.fixture
def stations(session, keyring):
    seed_small_city(session)
    spec = {"name": "监测站点", "category": "department", "department": "220200-hbj", "abstract": "站点",
            "share_type": "unconditional", "share_methods": ["api"], "open_type": "closed",
            "update_cycle": "daily", "items": ITEMS}
    res = service.resource_create(session, SYSTEM, spec)
    session.commit()
    layout = service.layout_of(res)
    enc = store.Encoder(layout, service.keyring())
    w = store.Writer(session.connection(), layout, 1, "replace")
    w.add([enc.encode(r) for r in ROWS])
    w.finish(())
    session.commit()
    return layout


NAMES = [i["name"] for i in ITEMS]


def test_a_page_has_each_types_own_values(session, stations):
    rows, _, more = store.select_rows(session.connection(), stations, service.keyring(), fields=NAMES,
                                      sort=[("code", False)], limit=10)
    assert more is False
    assert rows == ROWS
    for got, want in zip(rows, ROWS, strict=True):
        assert list(got) == NAMES  # items in the order asked for
        for name in NAMES:
            assert type(got[name]) is type(want[name]), name  # noqa: E721 - bool is not int here
    assert rows[0]["reading"] == 0.30000000000000004  # all 17 digits, not SQLite JSON's 15


def test_a_page_without_numbers_has_the_same_values(session, stations):
    names = [n for n in NAMES if n != "reading"]
    rows, _, _ = store.select_rows(session.connection(), stations, service.keyring(), fields=names,
                                   sort=[("code", True)], limit=10)
    assert rows == [{n: r[n] for n in names} for r in reversed(ROWS)]
    for got in rows:
        assert list(got) == names
        assert got["active"] is None or type(got["active"]) is bool


def test_a_page_keeps_the_asked_order_fields_and_paging(session, stations):
    ring = service.keyring()
    rows, _, more = store.select_rows(session.connection(), stations, ring, fields=["reading", "code"],
                                      sort=[("code", True)], limit=2)
    assert more is True
    assert rows == [{"reading": -2.5e-310, "code": "A5"}, {"reading": 3.0, "code": "A4"}]
    rows, _, more = store.select_rows(session.connection(), stations, ring, fields=["opened", "code"],
                                      sort=[("code", True)], limit=2, offset=2)
    assert more is True
    assert rows == [{"opened": None, "code": "A3"}, {"opened": dt.date(1900, 1, 1), "code": "A2"}]
    rows, total, more = store.select_rows(session.connection(), stations, ring, fields=["code", "active"],
                                          conds=[store.Cond("active", "eq", False)], limit=5,
                                          with_total=True)
    assert (total, more) == (2, False)
    assert rows == [{"code": "A2", "active": False}, {"code": "A5", "active": False}]


def test_an_empty_page(session, stations):
    rows, total, more = store.select_rows(session.connection(), stations, service.keyring(), fields=NAMES,
                                          conds=[store.Cond("code", "eq", "none")], with_total=True)
    assert (rows, total, more) == ([], 0, False)
