"""Sign-in: tokens, wrong passwords, lockout, expiry, revocation, forged tokens, API keys."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from cityos.core import auth
from cityos.core.models import AuditRecord, AuthToken, User
from tests.conftest import PASSWORD


def test_password_flow_answers_oauth2_token(client, city):
    r = client.post("/api/auth/token", data={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] > 0
    me = client.get("/api/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == "admin"


def test_wrong_password_is_401_problem_and_audited(client, city, sessions):
    r = client.post("/api/auth/token", data={"username": "admin", "password": "nope-nope"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 401
    with sessions() as s:
        rec = s.scalars(select(AuditRecord).where(AuditRecord.action == "auth.login")
                        .order_by(AuditRecord.seq.desc())).first()
        assert rec.outcome == "failure" and rec.actor == "admin"


def test_unknown_user_answers_like_wrong_password(client, city):
    r = client.post("/api/auth/token", data={"username": "ghost", "password": "whatever1"})
    assert r.status_code == 401
    assert r.json()["detail"] == client.post(
        "/api/auth/token", data={"username": "admin", "password": "wrong-pass"}).json()["detail"]


def test_lockout_after_repeated_failures(client, city, settings):
    for _ in range(settings.lockout_threshold - 1):
        assert client.post("/api/auth/token",
                           data={"username": "env_staff", "password": "bad-pass1"}).status_code == 401
    r = client.post("/api/auth/token", data={"username": "env_staff", "password": "bad-pass1"})
    assert r.status_code == 423
    assert int(r.headers["Retry-After"]) > 0
    # Even the right password is refused while locked.
    r = client.post("/api/auth/token", data={"username": "env_staff", "password": PASSWORD})
    assert r.status_code == 423


def test_admin_unlocks_a_locked_account(client, city, settings):
    for _ in range(settings.lockout_threshold):
        client.post("/api/auth/token", data={"username": "env_staff", "password": "bad-pass1"})
    r = client.patch("/api/users/env_staff", json={"unlock": True}, headers=city.headers("env_admin"))
    assert r.status_code == 200, r.text
    assert client.post("/api/auth/token",
                       data={"username": "env_staff", "password": PASSWORD}).status_code == 200


def test_missing_form_field_names_it(client, city):
    r = client.post("/api/auth/token", data={"username": "admin"})
    assert r.status_code == 422
    assert {"field": "password", "reason": "required / 必填"} in r.json()["errors"]


def test_forged_token_is_401(client, city):
    r = client.get("/api/me", headers={"Authorization": "Bearer forged-token-abc"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_expired_token_is_401(client, city, sessions):
    headers = city.headers("police_staff")
    with sessions() as s:
        s.execute(update(AuthToken).values(
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
        s.commit()
    assert client.get("/api/me", headers=headers).status_code == 401


def test_revoked_token_stops_working_at_once(client, city):
    headers = city.headers("police_staff")
    assert client.get("/api/me", headers=headers).status_code == 200
    assert client.post("/api/auth/revoke", headers=headers).status_code == 204
    assert client.get("/api/me", headers=headers).status_code == 401


def test_inactive_user_cannot_sign_in(client, city):
    assert client.patch("/api/users/police_staff", json={"is_active": False},
                        headers=city.headers("police_admin")).status_code == 200
    r = client.post("/api/auth/token", data={"username": "police_staff", "password": PASSWORD})
    assert r.status_code == 401


def test_tokens_and_passwords_are_stored_hashed(client, city, sessions):
    token = city.token("admin")
    with sessions() as s:
        stored = s.scalars(select(AuthToken.token_hash)).all()
        assert token not in stored and auth.sha256(token) in stored
        user = s.scalar(select(User).where(User.username == "admin"))
        assert user.password_hash.startswith("$argon2id$")


def test_api_key_is_shown_once_scoped_and_revocable(client, city):
    r = client.post("/api/apikeys", headers=city.headers("police_admin"),
                    json={"name": "feed", "department_code": "220200-gaj",
                          "scopes": ["user.read"]})
    assert r.status_code == 201, r.text
    key, prefix = r.json()["key"], r.json()["prefix"]
    assert key.startswith("cos_")
    listed = client.get("/api/apikeys", headers=city.headers("police_admin")).json()["items"]
    assert all(item["key"] is None for item in listed)
    # In scope, own department: allowed.
    assert client.get("/api/users/police_staff", headers={"X-API-Key": key}).status_code == 200
    # Another department's user: denied.
    assert client.get("/api/users/env_staff", headers={"X-API-Key": key}).status_code == 403
    # Out of scope: denied.
    assert client.get("/api/apikeys", headers={"Authorization": f"Bearer {key}"}).status_code == 403
    # Revoked: no longer accepted.
    assert client.delete(f"/api/apikeys/{prefix}",
                         headers=city.headers("police_admin")).status_code == 204
    assert client.get("/api/users/police_staff", headers={"X-API-Key": key}).status_code == 401


def test_api_key_for_another_department_is_refused(client, city):
    r = client.post("/api/apikeys", headers=city.headers("police_admin"),
                    json={"name": "x", "department_code": "220200-hbj", "scopes": ["user.read"]})
    assert r.status_code == 403


def test_api_key_unknown_scope_names_the_field(client, city):
    r = client.post("/api/apikeys", headers=city.headers("police_admin"),
                    json={"name": "x", "department_code": "220200-gaj", "scopes": ["root.all"]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "scopes"


def test_token_cache_follows_role_change_deactivation_and_sign_out(client, city, engine, sessions):
    """Who a token is comes from a short-lived cache (core.cache); every committed change to the
    user or the token clears it, so each takes effect on the very next request."""
    token = city.token("police_staff")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/audit", headers=headers).status_code == 403  # staff: not the audit log
    assert auth.cached_actor(engine, token, "api").role == "department_staff"
    r = client.patch("/api/users/police_staff", json={"role": "auditor"}, headers=city.headers("police_admin"))
    assert r.status_code == 200, r.text
    assert client.get("/api/audit", headers=headers).status_code == 200  # the new role, at once
    # A change committed outside any request (a service call, a script in this process) counts too.
    with sessions() as s:
        s.scalar(select(User).where(User.username == "police_staff")).is_active = False
        s.commit()
    assert auth.cached_actor(engine, token, "api") is None
    assert client.get("/api/me", headers=headers).status_code == 401
    with sessions() as s:
        s.scalar(select(User).where(User.username == "police_staff")).is_active = True
        s.commit()
    assert client.get("/api/me", headers=headers).status_code == 200
    assert client.post("/api/auth/revoke", headers=headers).status_code == 204
    assert client.get("/api/me", headers=headers).status_code == 401


def test_token_cache_keeps_nothing_a_rolled_back_transaction_saw(client, city, engine, sessions):
    token = city.token("police_staff")
    with sessions() as s:
        s.scalar(select(User).where(User.username == "police_staff")).role = "platform_admin"
        s.flush()
        assert auth.token_actor(s, token, "api").role == "platform_admin"  # its own change, uncommitted
        s.rollback()
    assert auth.cached_actor(engine, token, "api") is None
    with sessions() as s:
        assert auth.token_actor(s, token, "api").role == "department_staff"
    assert auth.cached_actor(engine, token, "api").role == "department_staff"


def test_cache_entry_read_before_a_change_is_a_miss():
    from cityos.core import cache

    c: cache.Cache[str, int] = cache.Cache(ttl=60)
    before = cache.generation()
    cache.bump()  # a change committed while the value was being read
    c.put("k", 1, before)
    assert c.get("k") is None
    c.put("k", 2, cache.generation())
    assert c.get("k") == 2
    cache.bump()
    assert c.get("k") is None
    short: cache.Cache[str, int] = cache.Cache(ttl=0)
    short.put("k", 3, cache.generation())
    assert short.get("k") is None
