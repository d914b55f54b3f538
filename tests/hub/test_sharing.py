"""Sharing (共享交换), service level: request paths, decisions, grant enforcement on reads,
reminders and overdue marks, change notices with signed, retried deliveries."""

from __future__ import annotations

import datetime as dt

import httpx
import orjson
import pytest
from sqlalchemy import select

from cityos.core import access, audit, auth, workdays
from cityos.core import service as core_service
from cityos.core.access import SYSTEM
from cityos.core.db import utcnow
from cityos.core.errors import Conflict, Invalid
from cityos.core.models import AuditRecord, User
from cityos.hub import service, sharing, store
from cityos.hub.models import Delivery, Grant, Version
from tests.conftest import people_spec, person_row, seed_small_city


def today():
    return dt.datetime.now(dt.UTC).date()


def actor_of(session, username):
    user = session.scalar(select(User).where(User.username == username))
    return auth.user_actor(user)


def load(session, res, rows, version=1):
    layout = service.layout_of(res)
    enc = store.Encoder(layout, service.keyring())
    w = store.Writer(session.connection(), layout, version, "replace")
    w.add([enc.encode(r) for r in rows])
    counts = w.finish()
    res.current_version, res.row_count = version, counts.row_count
    return counts


@pytest.fixture
def people(session, keyring):
    seed_small_city(session)
    res = service.resource_create(session, SYSTEM, people_spec())
    load(session, res, [person_row(n, "船营区" if n % 3 == 0 else "昌邑区") for n in range(30)])
    session.commit()
    return res


@pytest.fixture
def actors(session, people):
    return {u: actor_of(session, u) for u in
            ("police_admin", "police_staff", "env_admin", "env_staff", "district_admin", "auditor")}


def ask(session, actors, people, who="env_staff", **kw):
    spec = {"purpose": "环境执法对象核验", "legal_basis": "《环境保护法》第二十四条",
            "fields": ["name", "district", "household_size"], "row_filter": [], "valid_until": None} | kw
    return sharing.request_create(session, actors[who], people.code, **spec)


def granted(session, actors, people, **kw):
    req = ask(session, actors, people, **kw)
    sharing.request_decide(session, actors["police_admin"], req.id, approve=True)
    return session.scalar(select(Grant).where(Grant.request_id == req.id))


def last_audit(session, action):
    return session.scalar(select(AuditRecord).where(AuditRecord.action == action)
                          .order_by(AuditRecord.seq.desc()).limit(1))


# -- the three paths of a request -----------------------------------------------------------------

def test_conditional_request_waits_ten_working_days(session, actors, people):
    req = ask(session, actors, people)
    assert req.state == "pending" and req.due_at is not None
    cal = workdays.current(session)
    assert req.due_at == workdays.add_working_days(cal, req.created_at, 10).at
    assert workdays.working_days_between(cal, req.created_at, req.due_at) == 10
    rec = last_audit(session, "hub.request.create")
    assert rec.purpose == "环境执法对象核验" and rec.detail["state"] == "pending"
    assert rec.department == "220200-hbj"
    with pytest.raises(Conflict):  # one pending request at a time
        ask(session, actors, people)


def test_unconditional_is_granted_at_once(session, actors, people):
    service.resource_update(session, SYSTEM, people.code, {"share_type": "unconditional"})
    req = ask(session, actors, people, row_filter=[{"field": "district", "op": "eq", "value": "昌邑区"}])
    assert req.state == "granted" and req.decided_by == "system"
    grant = session.scalar(select(Grant).where(Grant.request_id == req.id))
    assert grant.fields == ["name", "district", "household_size"]
    assert grant.row_filter == [{"field": "district", "op": "eq", "value": "昌邑区"}]
    assert last_audit(session, "hub.request.create").detail["grant"] == grant.id


def test_not_shared_is_refused_with_the_catalogs_reason(session, actors, people):
    service.resource_update(session, SYSTEM, people.code, {"share_type": "none",
                                                           "share_condition": "涉及个人隐私，不予共享"})
    req = ask(session, actors, people)
    assert (req.state, req.reason) == ("refused", "涉及个人隐私，不予共享")
    assert session.scalar(select(Grant).where(Grant.request_id == req.id)) is None


@pytest.mark.parametrize(("kw", "field"), [
    ({"purpose": "  "}, "purpose"),
    ({"fields": []}, "fields"),
    ({"fields": ["name", "nope"]}, "fields"),
    ({"row_filter": [{"field": "nope", "op": "eq", "value": 1}]}, "nope"),
    ({"row_filter": [{"field": "household_size", "op": "gt", "value": "many"}]}, "household_size"),
    ({"row_filter": [{"field": "district", "op": "between", "value": "x"}]}, "district"),
    ({"row_filter": [{"field": "household_size", "op": "contains", "value": 1}]}, "household_size"),
    ({"row_filter": [{"field": "id_number", "op": "eq", "value": "x"}]}, "id_number"),
    ({"valid_until": dt.date(2000, 1, 1)}, "valid_until"),
])
def test_request_is_checked(session, actors, people, kw, field):
    with pytest.raises(Invalid) as e:
        ask(session, actors, people, **kw)
    assert e.value.errors[0].field == field


def test_own_department_needs_no_request(session, actors, people):
    with pytest.raises(Invalid) as e:
        ask(session, actors, people, who="police_staff")
    assert e.value.errors[0].field == "resource"


# -- decisions ------------------------------------------------------------------------------------

def test_provider_admin_approves_narrower_never_wider(session, actors, people):
    req = ask(session, actors, people, valid_until=today() + dt.timedelta(days=90))
    for who in ("police_staff", "env_admin"):  # staff may not decide; nor may the asker's admin
        with pytest.raises(access.Denied):
            sharing.request_decide(session, actors[who], req.id, approve=True)
    with pytest.raises(Invalid) as e:
        sharing.request_decide(session, actors["police_admin"], req.id, approve=True,
                               fields=["name", "id_number"])
    assert "id_number" in e.value.errors[0].reason
    with pytest.raises(Invalid):
        sharing.request_decide(session, actors["police_admin"], req.id, approve=True,
                               valid_until=today() + dt.timedelta(days=365))
    sharing.request_decide(session, actors["police_admin"], req.id, approve=True, fields=["name", "district"],
                           row_filter=[{"field": "district", "op": "eq", "value": "昌邑区"}])
    grant = session.scalar(select(Grant).where(Grant.request_id == req.id))
    assert grant.fields == ["name", "district"] and grant.granted_by == "police_admin"
    assert grant.row_filter == [{"field": "district", "op": "eq", "value": "昌邑区"}]
    assert req.state == "granted"
    with pytest.raises(Conflict):
        sharing.request_decide(session, actors["police_admin"], req.id, approve=False, reason="x")


def test_a_narrowed_grant_keeps_the_requests_row_conditions(session, actors, people):
    req = ask(session, actors, people, row_filter=[{"field": "district", "op": "eq", "value": "昌邑区"}])
    with pytest.raises(Invalid) as e:
        sharing.request_decide(session, actors["police_admin"], req.id, approve=True,
                               row_filter=[{"field": "household_size", "op": "gte", "value": 2}])
    assert e.value.errors[0].field == "row_filter"


def test_refusal_needs_a_reason(session, actors, people):
    req = ask(session, actors, people)
    with pytest.raises(Invalid) as e:
        sharing.request_decide(session, actors["police_admin"], req.id, approve=False, reason=" ")
    assert e.value.errors[0].field == "reason"
    sharing.request_decide(session, actors["police_admin"], req.id, approve=False, reason="用途与依据不符")
    assert (req.state, req.reason, req.decided_by) == ("refused", "用途与依据不符", "police_admin")
    rec = last_audit(session, "hub.request.decide")
    assert rec.detail["state"] == "refused" and rec.department == "220200-gaj"


def test_lists_by_box_state_and_overdue(session, actors, people):
    req = ask(session, actors, people)
    out = sharing.request_list(session, actors["env_staff"], box="outgoing")
    inc = sharing.request_list(session, actors["police_staff"], box="incoming")
    assert [r.id for r in out.items] == [req.id] == [r.id for r in inc.items]
    assert sharing.request_list(session, actors["env_staff"], box="incoming").total == 0
    assert sharing.request_list(session, actors["police_staff"], box="incoming", overdue=True).total == 0
    req.due_at = utcnow() - dt.timedelta(hours=1)
    session.flush()
    assert sharing.is_overdue(req)
    assert sharing.request_list(session, actors["police_staff"], box="incoming", overdue=True).total == 1
    assert sharing.request_list(session, actors["police_staff"], box="incoming", overdue=False).total == 0
    assert sharing.request_list(session, actors["env_staff"], state="granted").total == 0
    with pytest.raises(Invalid):
        sharing.request_list(session, actors["env_staff"], box="sideways")
    assert sharing.request_get(session, actors["police_admin"], req.id) is req
    with pytest.raises(access.Denied):
        sharing.request_get(session, actors["district_admin"], req.id)


def test_reminders_two_working_days_before_the_deadline(session, actors, people):
    req = ask(session, actors, people)
    cal = workdays.current(session)
    created = req.created_at
    assert sharing.request_remind(session, created) == []
    near = workdays.add_working_days(cal, created, 8).at  # two working days left
    assert sharing.request_remind(session, near) == [req]
    assert req.reminded_at == near
    assert sharing.request_remind(session, near) == []  # once
    rec = last_audit(session, "hub.request.remind")
    assert rec.department == "220200-gaj" and rec.detail["overdue"] is False


# -- reading through a grant ----------------------------------------------------------------------

def read(session, actor, code, **kw):
    kw.setdefault("purpose", "核验")
    return sharing.rows_read(session, actor, code, **kw)


def test_grant_gives_only_its_fields_and_rows(session, actors, people):
    granted(session, actors, people, fields=["name", "district"],
            row_filter=[{"field": "district", "op": "eq", "value": "昌邑区"}])
    env = actors["env_staff"]
    r = read(session, env, people.code, limit=100, with_total=True)
    assert r.fields == ["name", "district"] and r.total == 20 and len(r.rows) == 20
    assert {row["district"] for row in r.rows} == {"昌邑区"}
    assert all(set(row) == {"name", "district"} for row in r.rows)
    r = read(session, env, people.code, conds=[store.Cond("district", "eq", "船营区")])
    assert r.rows == []  # the grant's rows AND the caller's: nothing outside the grant
    r = read(session, env, people.code, fields=["name"], conds=[store.Cond("name", "startswith", "居民1")],
             sort=[("name", True)], limit=3)
    assert [row["name"] for row in r.rows] == ["居民19", "居民17", "居民16"]
    assert r.next is not None and "offset=3" in r.next
    for kw, name in ((dict(fields=["name", "id_number"]), "id_number"),
                     (dict(conds=[store.Cond("household_size", "gt", "1")]), "household_size"),
                     (dict(sort=[("birth_date", False)]), "birth_date")):
        with pytest.raises(access.Denied) as e:
            read(session, env, people.code, **kw)
        assert e.value.errors[0].field == name and name in e.value.detail


def test_owner_reads_everything_and_the_read_is_audited(session, actors, people):
    police = actors["police_staff"]
    ids = [person_row(n)["id_number"] for n in (1, 2)]
    r = read(session, police, people.code, purpose="户籍核查", conds=[store.Cond("id_number", "in", ids)],
             request_meta=sharing.RequestMeta(path="/p", query=[("id_number__in", ",".join(ids))]))
    assert r.grant_id is None and len(r.rows) == 2 and set(r.rows[0]) == {i.name for i in people.items}
    rec = last_audit(session, "hub.data.read")
    assert rec.hash == r.audit_hash and rec.purpose == "户籍核查" and rec.object_id == people.code
    d = rec.detail
    assert d["request_hash"] == r.request_hash and d["rows"] == 2 and d["grant"] is None
    assert d["filter"] == ["id_number in ***"]
    assert not any(i in orjson.dumps(d).decode() for i in ids)  # no raw sensitive value
    # Anyone with the answer can recompute the hash that the log keeps.
    assert sharing.request_hash(method="GET", path="/p", query=[("id_number__in", ",".join(ids))],
                                actor="police_staff", department="220200-gaj", purpose="户籍核查",
                                time=d["time"], body=r.body) == r.request_hash
    assert audit.verify(session).ok


def test_purpose_format_and_values_are_checked(session, actors, people):
    police = actors["police_staff"]
    with pytest.raises(Invalid) as e:
        read(session, police, people.code, purpose=" ")
    assert e.value.errors[0].field == "purpose"
    for kw, field in ((dict(conds=[store.Cond("birth_date", "gt", "yesterday")]), "birth_date"),
                      (dict(conds=[store.Cond("household_size", "eq", "1; DROP TABLE x")]), "household_size"),
                      (dict(fields=["nope"]), "fields"), (dict(fmt="xml"), "format"),
                      (dict(limit=1001), "limit")):
        with pytest.raises(Invalid) as e:
            read(session, police, people.code, **kw)
        assert e.value.errors[0].field == field
    r = read(session, police, people.code, conds=[store.Cond("name", "eq", "x' OR '1'='1")])
    assert r.rows == []
    r = read(session, police, people.code, fields=["name", "birth_date"], fmt="csv", limit=2,
             conds=[store.Cond("birth_date", "gte", "1970-01-01")])
    text = r.body.decode("utf-8")
    assert text.startswith("\ufeffname,birth_date\r\n") and len(text.strip().splitlines()) == 3


def test_expiry_and_revocation_take_effect_on_the_next_read(session, actors, people):
    grant = granted(session, actors, people)
    env = actors["env_staff"]
    assert read(session, env, people.code).grant_id == grant.id
    grant.valid_until = today() - dt.timedelta(days=2)
    session.flush()
    with pytest.raises(access.Denied):
        read(session, env, people.code)
    grant.valid_until = None
    session.flush()
    with pytest.raises(access.Denied):
        sharing.grant_revoke(session, actors["env_admin"], grant.id, "不再需要")
    with pytest.raises(Invalid):
        sharing.grant_revoke(session, actors["police_admin"], grant.id, "")
    sharing.grant_revoke(session, actors["police_admin"], grant.id, "用途已完成")
    with pytest.raises(access.Denied):
        read(session, env, people.code)
    with pytest.raises(Conflict):
        sharing.grant_revoke(session, actors["police_admin"], grant.id, "again")
    assert sharing.grant_list(session, actors["env_staff"], active=False).total == 1
    assert sharing.grant_list(session, actors["police_staff"], box="incoming", active=True).total == 0


def test_grant_cache_follows_commits_and_forgets_rollbacks(sessions, session, actors, people):
    """The grant in force is cached between reads (core.cache): a revocation committed in another
    session counts on the next read, and a grant only a rolled-back transaction saw is not kept."""
    env = actors["env_staff"]
    with sessions() as s:
        grant = granted(s, actors, people)
        assert read(s, env, people.code).grant_id == grant.id  # its own, uncommitted grant
        s.rollback()
    with sessions() as s, pytest.raises(access.Denied):
        read(s, env, people.code)
    with sessions() as s:
        grant = granted(s, actors, people)
        s.commit()
    for _ in range(2):
        with sessions() as s:
            assert read(s, env, people.code, group_commit=True).grant_id == grant.id
    assert service._GRANTS.get((session.get_bind(), people.id, env.department_id)) is not None
    with sessions() as s:
        sharing.grant_revoke(s, actors["police_admin"], grant.id, "用途已完成")
        s.commit()
    with sessions() as s, pytest.raises(access.Denied):
        read(s, env, people.code)
    assert audit.verify(session).ok


def test_only_the_grantee_departments_users_and_keys(session, actors, people):
    granted(session, actors, people)
    for who in ("district_admin", "auditor"):
        with pytest.raises(access.Denied):
            read(session, actors[who], people.code)
    raw_env, _ = core_service.apikey_create(session, SYSTEM, name="env", department_code="220200-hbj",
                                            scopes=["hub.data.read"])
    raw_other, _ = core_service.apikey_create(session, SYSTEM, name="d", department_code="220202",
                                              scopes=["hub.data.read"])
    raw_noscope, _ = core_service.apikey_create(session, SYSTEM, name="n", department_code="220200-hbj",
                                                scopes=["hub.catalog.read"])
    assert len(read(session, auth.apikey_actor(session, raw_env), people.code).rows) == 30
    for raw in (raw_other, raw_noscope):
        with pytest.raises(access.Denied):
            read(session, auth.apikey_actor(session, raw), people.code)


# -- change notices -------------------------------------------------------------------------------

def test_change_notices_are_signed_and_retried(session, actors, people):
    grant = granted(session, actors, people)
    with pytest.raises(access.Denied):
        sharing.subscription_create(session, actors["district_admin"], grant.id, "http://x.test/hook")
    with pytest.raises(Invalid):
        sharing.subscription_create(session, actors["env_staff"], grant.id, "ftp://x.test/hook")
    secret, sub = sharing.subscription_create(session, actors["env_staff"], grant.id, "http://x.test/hook")
    assert secret not in sub.secret_enc
    v = Version(resource_id=people.id, number=2, source="push", mode="upsert", rows_in=3, added=1,
                changed=2, removed=0, row_count=31, created_by="police_staff")
    session.add(v)
    session.flush()
    (d,) = sharing.notify_change(session, people, v)
    assert d.payload["resource"] == people.code and d.payload["counts"]["added"] == 1
    assert "rows" not in d.payload and d.payload["counts"]["rows"] == 31  # counts, never row data

    seen, status = [], [500, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status.pop(0))

    client = httpx.Client(transport=httpx.MockTransport(handler))
    now = utcnow()
    assert sharing.deliveries_run(session, client, now) == {"delivered": 0, "retry": 1, "failed": 0}
    assert d.attempts == 1 and d.next_try_at == now + dt.timedelta(minutes=1) and d.state == "pending"
    assert sharing.deliveries_run(session, client, now) == {"delivered": 0, "retry": 0, "failed": 0}
    later = now + dt.timedelta(minutes=2)
    assert sharing.deliveries_run(session, client, later)["delivered"] == 1
    assert d.state == "delivered"
    req = seen[-1]
    assert req.headers["X-CityOS-Delivery"] == str(d.id)
    assert sharing.verify_signature(secret, req.content, req.headers["X-CityOS-Signature"])
    assert orjson.loads(req.content)["version"] == 2


def test_deliveries_give_up_and_stop_on_revocation(session, actors, people):
    grant = granted(session, actors, people)
    sharing.subscription_create(session, actors["env_staff"], grant.id, "http://x.test/hook")
    v = Version(resource_id=people.id, number=2, source="push", mode="upsert", created_by="x")
    session.add(v)
    session.flush()
    (d,) = sharing.notify_change(session, people, v)
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    now = utcnow()
    for _ in range(8):
        sharing.deliveries_run(session, client, now)
        now += dt.timedelta(days=1)
    assert (d.state, d.attempts, d.last_error) == ("failed", 8, "HTTP 503")
    (d2,) = sharing.notify_change(session, people, v)
    sharing.grant_revoke(session, actors["police_admin"], grant.id, "到期")
    assert sharing.notify_change(session, people, v) == []
    assert sharing.deliveries_run(session, client, now)["failed"] == 1
    assert session.get(Delivery, d2.id).state == "failed"
