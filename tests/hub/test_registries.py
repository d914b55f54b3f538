"""Base registries: one source per item (一数一源), person lookup, cross-checks (多元校核), licences."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text

from cityos.core import auth, identifiers
from cityos.core import service as core
from cityos.core.access import SYSTEM, Actor, Denied
from cityos.core.errors import Conflict, Invalid
from cityos.hub import discrepancies, licences, registries, service
from cityos.hub.models import Discrepancy, Grant, Version
from tests.conftest import PASSWORD, seed_small_city

BUREAUS = [("220200-mzj", "市民政局", "civil_staff"), ("220200-jyj", "市教育局", "edu_staff"),
           ("220200-wjw", "市卫生计生委", "health_staff"), ("220200-zjj", "市质监局", "quality_staff"),
           ("220200-zwb", "市政网办", "egov_staff")]
ROLES = {"police": "220200-gaj", "civil": "220200-mzj", "education": "220200-jyj",
         "health": "220200-wjw", "quality": "220200-zjj", "egov": "220200-zwb"}


def seed_registry_city(session) -> None:
    """The small city plus the bureaus that own registry items, and the three registries."""
    seed_small_city(session)
    seed_registries(session)


def seed_registries(session) -> None:
    """Bureaus that own registry items, each with a staff member, and the registries installed."""
    for code, name, user in BUREAUS:
        core.department_create(session, SYSTEM, code=code, name=name, kind="bureau", parent_code="220200")
        core.user_create(session, SYSTEM, username=user, password=PASSWORD, department_code=code,
                         role="department_staff", display_name=user)
    for branch, provider in (("population", "220200-gaj"), ("legal_person", "220200-zjj"),
                             ("licence", "220200-zwb")):
        registries.registry_install(session, SYSTEM, branch, provider=provider, authorities=ROLES)
    session.commit()


def person(n: int) -> dict[str, object]:
    """A fake resident whose ID number passes the GB 11643 check."""
    first17 = f"220202{1960 + n:04d}{1 + n % 12:02d}{1 + n % 28:02d}{n % 1000:03d}"
    return {"id_number": identifiers.citizen_id_with_check(first17), "name": f"居民{n}",
            "gender": "男" if n % 2 else "女", "birth_date": dt.date(1960 + n, 1 + n % 12, 1 + n % 28),
            "district": "220202"}


def seed_people(session, count: int = 3) -> list[dict[str, object]]:
    police = as_user(session, "police_staff")
    people = [person(n) for n in range(1, count + 1)]
    for p in people:
        registries.registry_write(session, police, "population", {"id_number": p["id_number"]},
                                  {k: v for k, v in p.items() if k != "id_number"})
    session.commit()
    return people


def as_user(session, username: str) -> Actor:
    return auth.user_actor(core.user_by_name(session, username))


@pytest.fixture
def city_registries(session, keyring):
    seed_registry_city(session)
    return session


def test_install_builds_catalog_resources_with_authorities(city_registries):
    s = city_registries
    pop = registries.registry_resource(s, "population")
    assert (pop.category, pop.base_branch, pop.key_fields) == ("base", "population", ["id_number"])
    assert pop.code.startswith("101001-")
    items = {i.name: i for i in pop.items}
    assert items["id_number"].encrypted and items["name"].encrypted and items["household_address"].encrypted
    owner = {i: core.department_by_code(s, ROLES[r]).id
             for i, r in (("id_number", "police"), ("marital_status", "civil"),
                          ("education", "education"), ("death_date", "health"))}
    assert {n: items[n].authority_department_id for n in owner} == owner
    again = registries.registry_install(s, SYSTEM, "population", provider="220200-hbj", authorities={})
    assert again.code == pop.code and again.department.code == "220200-gaj"
    lp = registries.registry_resource(s, "legal_person")
    assert lp.department.code == "220200-zjj" and lp.code.startswith("102001-")


def test_install_needs_every_role_and_a_platform_admin(session, keyring):
    seed_small_city(session)
    with pytest.raises(Invalid) as e:
        registries.registry_install(session, SYSTEM, "population", provider="220200-gaj",
                                    authorities={"police": "220200-gaj"})
    assert e.value.errors[0].field == "authorities"
    with pytest.raises(Denied):
        registries.registry_install(session, as_user(session, "police_admin"), "population",
                                    provider="220200-gaj", authorities=ROLES)
    with pytest.raises(Invalid):
        registries.registry_install(session, SYSTEM, "weather", provider="220200-gaj")


def test_each_item_is_written_by_its_authority_alone(city_registries):
    s = city_registries
    p = seed_people(s, 1)[0]
    key = {"id_number": p["id_number"]}
    pop = registries.registry_resource(s, "population")
    assert pop.current_version == 1 and pop.row_count == 1
    civil, police = as_user(s, "civil_staff"), as_user(s, "police_staff")
    r = registries.registry_write(s, civil, "population", key, {"marital_status": "已婚"})
    assert (r.version, r.changed, r.created) == (2, ["marital_status"], False)
    assert registries.current_row(s, pop, key)["marital_status"] == "已婚"
    assert registries.current_row(s, pop, key)["name"] == "居民1"  # the rest of the record stays
    with pytest.raises(Denied):
        registries.registry_write(s, police, "population", key, {"marital_status": "离婚"})
    with pytest.raises(Denied):  # one foreign item refuses the whole write
        registries.registry_write(s, civil, "population", key, {"marital_status": "离婚", "name": "改名"})
    with pytest.raises(Denied):  # nor may a platform admin write another department's item
        registries.registry_write(s, as_user(s, "admin"), "population", key, {"marital_status": "离婚"})
    with pytest.raises(Invalid):
        registries.registry_write(s, civil, "population", key, {"marital_status": "同居"})
    with pytest.raises(Invalid):
        registries.registry_write(s, police, "population", key, {"id_number": person(9)["id_number"]})
    same = registries.registry_write(s, civil, "population", key, {"marital_status": "已婚"})
    assert (same.version, same.changed) == (None, [])
    health = registries.registry_write(s, as_user(s, "health_staff"), "population", key,
                                       {"death_date": "2024-03-01"})
    assert health.version == 3
    assert registries.current_row(s, pop, key)["death_date"] == dt.date(2024, 3, 1)
    versions = s.scalars(select(Version.number).where(Version.resource_id == pop.id)).all()
    assert sorted(versions) == [1, 2, 3]


def test_only_the_key_authority_creates_records(city_registries):
    s = city_registries
    new = person(7)
    with pytest.raises(Denied):
        registries.registry_write(s, as_user(s, "civil_staff"), "population", {"id_number": new["id_number"]},
                                  {"marital_status": "未婚"})
    with pytest.raises(Invalid) as e:  # a new record needs its required items
        registries.registry_write(s, as_user(s, "police_staff"), "population",
                                  {"id_number": new["id_number"]}, {"gender": "男"})
    assert e.value.errors[0].field == "changes.name"
    with pytest.raises(Invalid):
        registries.registry_write(s, as_user(s, "police_staff"), "population", {"id_number": "123"},
                                  {"name": "x"})


def test_legal_person_registry_is_written_by_market_regulation(city_registries):
    s = city_registries
    code = identifiers.credit_code_with_check("91220200MA0Y12345")
    q = as_user(s, "quality_staff")
    r = registries.registry_write(s, q, "legal_person", {"credit_code": code},
                                  {"name": "吉林市某某有限公司", "reg_capital": "100.5", "legal_rep": "张三",
                                   "established": "2019-05-06", "status": "存续", "industry": "C1310"})
    assert r.created
    row = registries.current_row(s, registries.registry_resource(s, "legal_person"), {"credit_code": code})
    assert row["reg_capital"] == 100.5 and row["established"] == dt.date(2019, 5, 6)
    assert row["legal_rep"] == "张三"
    with pytest.raises(Denied):
        registries.registry_write(s, as_user(s, "police_staff"), "legal_person", {"credit_code": code},
                                  {"status": "吊销"})


def _audit_text(s) -> str:
    rows = s.execute(text("SELECT actor, object_id, purpose, detail FROM audit_log")).all()
    return "\n".join(str(tuple(r)) for r in rows)


def test_person_lookup_by_id_number_with_grant_fields_and_masked_audit(city_registries):
    s = city_registries
    people = seed_people(s, 2)
    number = people[0]["id_number"]
    police, env = as_user(s, "police_staff"), as_user(s, "env_staff")
    got = registries.person_lookup(s, police, number, purpose="户籍核验")
    assert got["id_number"] == number and got["name"] == "居民1" and got["district"] == "220202"
    assert registries.person_lookup(s, police, person(30)["id_number"], purpose="户籍核验") is None
    with pytest.raises(Denied):
        registries.person_lookup(s, env, number, purpose="排污许可核验")
    with pytest.raises(Invalid):
        registries.person_lookup(s, police, number, purpose=" ")
    pop = registries.registry_resource(s, "population")
    s.add(Grant(resource_id=pop.id, department_id=core.department_by_code(s, "220200-hbj").id,
                purpose="排污许可核验", fields=["name", "district"], granted_by="police_admin"))
    s.flush()
    assert registries.person_lookup(s, env, number, purpose="排污许可核验") == {
        "name": "居民1", "district": "220202"}
    s.commit()
    reads = s.execute(text("SELECT detail FROM audit_log WHERE action = 'hub.data.read'")).all()
    assert len(reads) == 3
    logged = _audit_text(s)
    assert number not in logged and people[1]["id_number"] not in logged
    assert identifiers.mask_citizen_id(number) in logged
    assert "排污许可核验" in logged


def test_person_lookup_applies_the_grant_row_filter(city_registries):
    s = city_registries
    p = seed_people(s, 1)[0]
    pop = registries.registry_resource(s, "population")
    s.add(Grant(resource_id=pop.id, department_id=core.department_by_code(s, "220200-hbj").id,
                purpose="船营区", fields=["name"], granted_by="police_admin",
                row_filter=[{"field": "district", "op": "eq", "value": "220204"}]))
    s.flush()
    assert registries.person_lookup(s, as_user(s, "env_staff"), p["id_number"], purpose="船营区核验") is None


def test_crosscheck_opens_discrepancies_for_each_authority(city_registries):
    s = city_registries
    p1, p2 = seed_people(s, 2)
    env = as_user(s, "env_staff")
    unknown = person(40)["id_number"]
    records = [{"id_number": p1["id_number"], "name": "居民1", "marital_status": "已婚"},
               {"id_number": p2["id_number"], "name": "别名", "gender": p2["gender"]},
               {"id_number": unknown, "name": "某人"}]
    found = discrepancies.crosscheck(s, env, "population", records)
    s.commit()
    by_field = {d.field: d for d in found}
    assert set(by_field) == {"marital_status", "name", "_record"}
    depts = {c: core.department_by_code(s, c).id for c in ("220200-mzj", "220200-gaj", "220200-hbj")}
    assert by_field["marital_status"].authority_department_id == depts["220200-mzj"]
    assert by_field["name"].authority_department_id == depts["220200-gaj"]
    assert by_field["_record"].authority_department_id == depts["220200-gaj"]
    assert all(d.reported_by_department_id == depts["220200-hbj"] and d.state == "open" for d in found)
    # Sensitive values and keys never sit in the clear.
    raw = s.execute(text("SELECT row_key, key_display, registry_value, reported_value FROM hub_discrepancies "
                         "WHERE field = 'name'")).one()
    assert raw.registry_value.startswith("cx1.") and raw.reported_value.startswith("cx1.")
    assert p2["id_number"] not in raw.row_key and raw.key_display == identifiers.mask_citizen_id(p2["id_number"])
    assert by_field["marital_status"].registry_value is None
    assert by_field["marital_status"].reported_value == "已婚"
    # Reporting the same thing again refreshes the open discrepancy, it does not add one.
    again = discrepancies.crosscheck(s, env, "population", records[:1])
    assert [d.id for d in again] == [by_field["marital_status"].id]
    assert s.scalar(select(Discrepancy.id).where(Discrepancy.id > max(d.id for d in found))) is None
    with pytest.raises(Invalid):
        discrepancies.crosscheck(s, env, "population", [{"id_number": p1["id_number"], "shoe_size": 42}])
    with pytest.raises(Invalid):
        discrepancies.crosscheck(s, env, "population", [{"name": "no key"}])
    logged = _audit_text(s)
    assert p1["id_number"] not in logged and unknown not in logged


def test_discrepancy_inbox_and_resolution(city_registries):
    s = city_registries
    p1, p2 = seed_people(s, 2)
    env, civil, police = as_user(s, "env_staff"), as_user(s, "civil_staff"), as_user(s, "police_staff")
    unknown = person(40)
    found = discrepancies.crosscheck(s, env, "population", [
        {"id_number": p1["id_number"], "marital_status": "已婚"},
        {"id_number": p2["id_number"], "name": "别名"},
        {"id_number": unknown["id_number"]}])
    s.commit()
    ids = {d.field: d.id for d in found}

    def inbox(actor, state="open"):
        paged = discrepancies.discrepancy_list(s, actor, state=state)
        return {d.field: discrepancies.discrepancy_public(s, actor, d) for d in paged.items}

    assert set(inbox(civil)) == {"marital_status"}
    assert set(inbox(police)) == {"name", "_record"}
    assert set(inbox(env)) == {"marital_status", "name", "_record"}
    assert inbox(police)["name"]["registry_value"] == "居民2"
    assert inbox(police)["name"]["reported_value"] == "别名"
    assert inbox(env)["name"]["registry_value"] is None  # the reporter never sees the registry's value
    assert inbox(env)["name"]["reported_value"] == "别名"
    assert set(inbox(as_user(s, "quality_staff"))) == set()
    assert len(discrepancies.discrepancy_list(s, as_user(s, "auditor")).items) == 3
    with pytest.raises(Denied):
        discrepancies.discrepancy_list(s, as_user(s, "resident"))

    pop = registries.registry_resource(s, "population")
    before = pop.current_version
    with pytest.raises(Denied):  # only the authority answers
        discrepancies.discrepancy_resolve(s, env, ids["marital_status"], action="correct")
    d = discrepancies.discrepancy_resolve(s, civil, ids["marital_status"], action="correct", note="民政登记为已婚")
    assert d.state == "corrected" and d.resolved_by == "civil_staff"
    assert pop.current_version == before + 1
    assert registries.current_row(s, pop, {"id_number": p1["id_number"]})["marital_status"] == "已婚"
    with pytest.raises(Conflict):
        discrepancies.discrepancy_resolve(s, civil, ids["marital_status"], action="confirm")
    assert discrepancies.discrepancy_resolve(s, police, ids["name"], action="confirm").state == "confirmed"
    assert registries.current_row(s, pop, {"id_number": p2["id_number"]})["name"] == "居民2"
    with pytest.raises(Invalid):  # a missing record is corrected with the record itself
        discrepancies.discrepancy_resolve(s, police, ids["_record"], action="correct", value="x")
    with pytest.raises(Invalid):
        discrepancies.discrepancy_resolve(s, police, ids["_record"], action="correct",
                                          value={"id_number": p1["id_number"], "name": "x"})
    rec = {k: v for k, v in unknown.items()}
    d = discrepancies.discrepancy_resolve(s, police, ids["_record"], action="correct", value=rec)
    assert d.state == "corrected"
    assert registries.current_row(s, pop, {"id_number": unknown["id_number"]})["name"] == unknown["name"]
    with pytest.raises(Invalid):
        discrepancies.discrepancy_resolve(s, police, ids["name"], action="ignore")
    s.commit()
    assert set(inbox(civil, state="corrected")) == {"marital_status"}
    assert set(inbox(env, state=None)) == {"marital_status", "name", "_record"}
    logged = _audit_text(s)
    assert all(x["id_number"] not in logged for x in (p1, p2, unknown))


def test_discrepancy_reject_leaves_the_registry(city_registries):
    s = city_registries
    p1 = seed_people(s, 1)[0]
    [d] = discrepancies.crosscheck(s, as_user(s, "env_staff"), "population",
                                   [{"id_number": p1["id_number"], "birth_date": "1999-01-01"}])
    pop = registries.registry_resource(s, "population")
    version = pop.current_version
    d = discrepancies.discrepancy_resolve(s, as_user(s, "police_staff"), d.id, action="reject", note="对方数据有误")
    assert (d.state, d.note) == ("rejected", "对方数据有误")
    assert pop.current_version == version


# -- licences ---------------------------------------------------------------------------------


def test_licence_issue_verify_revoke(city_registries):
    s = city_registries
    holder = person(5)["id_number"]
    police = as_user(s, "police_staff")
    lic = licences.licence_issue(s, police, {"type": "机动车驾驶证", "holder_id": holder, "holder_name": "居民5",
                                              "valid_from": "2020-01-01", "valid_to": "2030-01-01"})
    s.commit()
    no = lic["licence_no"]
    assert no.startswith("220200-gaj-") and lic["issuer"] == "220200-gaj" and lic["status"] == "valid"
    assert lic["holder_type"] == "person" and lic["holder_id"] == identifiers.mask_citizen_id(holder)
    day = dt.date(2025, 6, 1)
    assert licences.licence_verify(s, no, holder, today=day) == {"valid": True, "status": "valid"}
    assert licences.licence_verify(s, no, holder.lower(), today=day)["valid"]  # a lowercase x is the same
    wrong_holder = licences.licence_verify(s, no, person(6)["id_number"], today=day)
    unknown_no = licences.licence_verify(s, "220200-gaj-2020-FFFFFFFF", holder, today=day)
    assert wrong_holder == unknown_no == {"valid": False, "status": "invalid"}
    assert not licences.licence_verify(s, no, holder, today=dt.date(2030, 1, 2))["valid"]  # expired
    assert not licences.licence_verify(s, no, holder, today=dt.date(2019, 12, 31))["valid"]  # not yet
    with pytest.raises(Denied):
        licences.licence_revoke(s, as_user(s, "env_staff"), no, "不是签发部门")
    with pytest.raises(Invalid):
        licences.licence_revoke(s, police, no, " ")
    out = licences.licence_revoke(s, police, no, "驾驶证被吊销")
    assert out["status"] == "revoked" and out["revoked_reason"] == "驾驶证被吊销"
    assert not licences.licence_verify(s, no, holder, today=day)["valid"]
    with pytest.raises(Conflict):
        licences.licence_revoke(s, police, no, "again")
    s.commit()
    verifies = s.execute(text("SELECT actor, detail FROM audit_log WHERE action = 'hub.licence.verify'")).all()
    assert len(verifies) == 7 and {v.actor for v in verifies} == {"anonymous"}
    assert holder not in _audit_text(s) and holder.lower() not in _audit_text(s)
    res = registries.registry_resource(s, "licence")
    raw = s.execute(text(f"SELECT holder_citizen_id FROM {res.table_name}")).scalar_one()
    assert raw.startswith("cx1.") and holder not in raw


def test_licence_for_an_org_and_issue_checks(city_registries):
    s = city_registries
    code = identifiers.credit_code_with_check("91220200MA0Y12345")
    env = as_user(s, "env_staff")
    lic = licences.licence_issue(s, env, {"licence_no": "PW-2024-0001", "type": "排污许可证", "holder_id": code,
                                          "holder_name": "吉林市某某有限公司", "valid_from": dt.date(2024, 1, 1)})
    assert (lic["holder_type"], lic["holder_id"], lic["valid_to"]) == ("org", code, None)
    assert licences.licence_verify(s, "PW-2024-0001", code, today=dt.date(2040, 1, 1))["valid"]  # long-term
    assert not licences.licence_verify(s, "PW-2024-0001", person(1)["id_number"])["valid"]
    with pytest.raises(Conflict):
        licences.licence_issue(s, env, {"licence_no": "PW-2024-0001", "type": "排污许可证", "holder_id": code,
                                        "holder_name": "x"})
    with pytest.raises(Invalid):  # a business licence is held by an organisation: a credit code
        licences.licence_issue(s, env, {"type": "营业执照", "holder_id": person(1)["id_number"], "holder_name": "x"})
    with pytest.raises(Invalid):
        licences.licence_issue(s, env, {"type": "营业执照", "holder_type": "person", "holder_id": code,
                                        "holder_name": "x"})
    with pytest.raises(Invalid):
        licences.licence_issue(s, env, {"type": "结婚证书", "holder_id": code, "holder_name": "x"})
    with pytest.raises(Invalid):
        licences.licence_issue(s, env, {"type": "排污许可证", "holder_id": code, "holder_name": "x",
                                        "valid_from": "2024-01-01", "valid_to": "2023-01-01"})
    with pytest.raises(Denied):  # a licence is issued in a department's name, not the system's
        licences.licence_issue(s, SYSTEM, {"type": "排污许可证", "holder_id": code, "holder_name": "x"})
    with pytest.raises(Denied):  # residents issue nothing
        licences.licence_issue(s, as_user(s, "resident"), {"type": "排污许可证", "holder_id": code,
                                                          "holder_name": "x"})
    with pytest.raises(Invalid):  # licences change by issue and revoke only
        registries.registry_write(s, env, "licence", {"licence_no": "PW-2024-0001"}, {"status": "revoked"})


def test_registry_items_are_described_as_data():
    for d in registries.REGISTRIES.values():
        assert d.branch in service.BASE_BRANCHES
        names = [i.name for i in d.items]
        assert len(set(names)) == len(names)
        assert sum(i.is_key for i in d.items) == 1
    assert set(registries.LICENCE_TYPES.values()) == {"person", "org"}
