"""Publishing by review: draft → submit → provider → data office; refusals; de-identification
checks that refuse raw ID numbers; k-anonymity; following the source's versions."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from cityos.core import audit
from cityos.core.access import Denied
from cityos.core.errors import Conflict, Invalid
from cityos.core.models import AuditRecord
from cityos.hub import loading
from cityos.opendata import rows, search, service
from cityos.opendata.models import Review
from tests.opendata.conftest import actor_of, air_row, publish


def test_published_dataset_has_a_deidentified_copy_and_review_trail(session, open_city):
    ds = open_city.dataset
    assert ds.state == "published" and ds.row_count == 80 and ds.source_version == 1
    assert [r.step for r in service.reviews(session, ds)] == ["draft", "submit", "provider_approve",
                                                              "office_approve"]
    assert inspect(session.connection()).has_table(f"od_rows_{ds.id}")
    page = rows.search(session, ds, filters={"district": "昌邑区"}, limit=5)
    assert page["total"] == 20 and len(page["records"]) == 5
    assert {r["district"] for r in page["records"]} == {"昌邑区"}
    actions = set(session.scalars(select(AuditRecord.action)))
    assert {"opendata.dataset.submit", "opendata.dataset.provider_approve",
            "opendata.dataset.office_approve"} <= actions
    assert audit.verify(session).ok


def test_each_step_needs_its_reviewer(session, open_city):
    ds = service.dataset_draft(session, actor_of(session, "police_staff"), resource=open_city.people.code,
                               spec={"name": "residents", "rules": [
                                   {"field": "id_number", "action": "suppress"},
                                   {"field": "name", "action": "suppress"}]})
    with pytest.raises(Denied):  # another department's staff cannot submit it
        service.dataset_submit(session, actor_of(session, "env_staff"), ds.name)
    service.dataset_submit(session, actor_of(session, "police_staff"), ds.name)
    with pytest.raises(Denied):  # staff cannot approve for the provider
        service.dataset_approve(session, actor_of(session, "police_staff"), ds.name)
    service.dataset_approve(session, actor_of(session, "police_admin"), ds.name)
    assert ds.state == "provider_approved"
    with pytest.raises(Denied):  # the provider's admin is not the data office
        service.dataset_approve(session, actor_of(session, "police_admin"), ds.name)
    service.dataset_refuse(session, actor_of(session, "admin"), ds.name, "字段说明不完整")
    assert ds.state == "refused"
    with pytest.raises(Conflict):
        service.dataset_approve(session, actor_of(session, "admin"), ds.name)


def test_raw_id_numbers_are_refused_until_a_rule_masks_them(session, open_city):
    staff = actor_of(session, "police_staff")
    ds = service.dataset_draft(session, staff, resource=open_city.people.code, spec={"name": "residents"})
    with pytest.raises(Invalid) as exc:
        service.dataset_submit(session, staff, ds.name)
    fields = {e.field for e in exc.value.errors}
    assert "rules.id_number" in fields
    service.dataset_update(session, staff, ds.name, {"rules": [
        {"field": "id_number", "action": "mask"}, {"field": "name", "action": "mask", "kind": "name"},
        {"field": "birth_date", "action": "generalize", "to": "year"}]})
    service.dataset_submit(session, staff, ds.name)
    service.dataset_approve(session, actor_of(session, "police_admin"), ds.name)
    service.dataset_approve(session, actor_of(session, "admin"), ds.name)
    session.commit()
    got = rows.search(session, ds, limit=100)["records"]
    assert len(got) == 40
    for r in got:
        assert "*" in r["id_number"] and len(r["id_number"]) == 18
        assert r["name"].endswith("*")
        assert isinstance(r["birth_date"], int)


def test_k_anonymity_refuses_and_names_small_groups(session, open_city):
    staff = actor_of(session, "police_staff")
    ds = service.dataset_draft(session, staff, resource=open_city.people.code, spec={
        "name": "residents", "k": 5, "quasi_identifiers": ["birth_date", "gender"],
        "rules": [{"field": "id_number", "action": "suppress"}, {"field": "name", "action": "suppress"}]})
    with pytest.raises(Invalid) as exc:
        service.dataset_submit(session, staff, ds.name)
    assert exc.value.errors[0].field == "quasi_identifiers"
    assert "birth_date=" in exc.value.errors[0].reason
    service.dataset_update(session, staff, ds.name, {
        "quasi_identifiers": ["district"], "rules": [
            {"field": "id_number", "action": "suppress"}, {"field": "name", "action": "suppress"},
            {"field": "birth_date", "action": "suppress"}]})
    assert service.dataset_submit(session, staff, ds.name).state == "submitted"


def test_published_copy_follows_new_source_versions(session, open_city):
    env = actor_of(session, "env_staff")
    loading.rows_write(session, env, open_city.air.code, [air_row(n) for n in range(80, 96)])
    session.commit()
    ds = service.dataset_by_name(session, "air-quality-daily")
    assert ds.source_version == 2 and ds.row_count == 96
    assert rows.search(session, ds, limit=0)["total"] == 96


def test_a_new_version_failing_k_anonymity_is_held_back(session, open_city):
    staff = actor_of(session, "police_staff")
    publish(session, open_city.people.code, {
        "name": "residents-by-district", "quasi_identifiers": ["district"], "k": 10,
        "rules": [{"field": "id_number", "action": "suppress"}, {"field": "name", "action": "suppress"},
                  {"field": "birth_date", "action": "suppress"}]}, "police_staff", "police_admin")
    from tests.conftest import person_row
    loading.rows_write(session, staff, open_city.people.code, [person_row(900, "丰满区")])
    session.commit()
    ds = service.dataset_by_name(session, "residents-by-district")
    assert ds.source_version == 1 and ds.row_count == 40  # the last good copy stays
    assert ds.held_reason and "k-anonymity" in ds.held_reason


def test_search_finds_partial_chinese_words(session, open_city):
    for q in ("空气", "质量日", "PM2", "环境监测", "aqi"):
        found = search.search(session, q=q)
        assert found.ids == [open_city.dataset.id] or q == "aqi", q
    assert search.search(session, q="交通").count == 0
    facets = search.search(session, facet_fields=["organization", "tags"]).facets
    assert facets["organization"] == {"220200-hbj": 1}
    assert facets["tags"]["PM2.5"] == 1


def test_withdrawn_dataset_is_gone_from_search_and_rows(session, open_city):
    service.dataset_withdraw(session, actor_of(session, "env_admin"), "air-quality-daily", "数据口径调整")
    session.commit()
    assert search.search(session, q="空气").count == 0
    assert not inspect(session.connection()).has_table(f"od_rows_{open_city.dataset.id}")
    assert session.scalars(select(Review.step)).all()[-1] == "withdraw"
