"""Rate limits: sign-in per address, public APIs per address or per credential, ingest never.

The shared fixtures run with the limits off (tests/conftest.py); these tests build apps with
them on, small enough to reach in a few requests. Each client has its own made-up address, so
counts never leak between tests, not even through a shared Redis.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from cityos.app import create_app
from cityos.core import service
from cityos.core.access import SYSTEM
from cityos.core.models import AuditRecord, User
from cityos.core.settings import Settings, SettingsError, load_settings
from cityos.sensing import service as sensing
from tests.conftest import PASSWORD, City
from tests.sensing.conftest import make_thing

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROBLEM = "application/problem+json"
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.fixture(autouse=True)
def _sqlite_only(request: pytest.FixtureRequest) -> None:
    """The limiter sits in front of the database: once, on SQLite, is enough (skipped before the
    PostgreSQL database is emptied and seeded for nothing)."""
    if request.node.callspec.params.get("db_url") == "postgresql":
        pytest.skip("rate limits do not depend on the database; run on SQLite")


# The limits most tests use: sign-in as configured by default, the others small enough to reach.
SMALL = {"rate_limit_login": "10/minute", "rate_limit_anonymous": "4/minute", "rate_limit_key": "5/minute",
         "trusted_proxies": ["127.0.0.0/8"]}
# Apps by database and limits, kept for the module: FastAPI sets every route up on an app's first
# request (seconds), and the counts cannot leak since every client has an address of its own.
_APPS: dict[str, FastAPI] = {}


@pytest.fixture
def clients(settings: Settings, engine: Engine) -> Iterator[Any]:
    """`make(address, **limits)`: a client from `address` of an app with SMALL limits, changed by
    `limits`."""
    stack = ExitStack()

    def make(address: str, **limits: Any) -> TestClient:
        update = {"rate_limit_enabled": True, "lockout_threshold": 1000, **SMALL, **limits}
        key = repr((settings.database_url, sorted(update.items())))
        if key not in _APPS:
            _APPS[key] = create_app(settings.model_copy(update=update), engine=engine)
        return stack.enter_context(TestClient(_APPS[key], client=(address, 40000)))

    with stack:
        yield make


def address() -> str:
    """A fresh /64 of the documentation range (2001:db8::/32), so no two tests, and no two runs
    within a minute on one Redis, share a count."""
    return str(ipaddress.IPv6Address(0x20010DB8 << 96 | secrets.randbits(32) << 64 | secrets.randbits(64)))


def assert_429(r: Any, limit: str) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == 429 and body["type"] == "/problems/too-many-requests"
    assert body["limit"] == limit
    assert "请求过于频繁" in body["title"] and "Too many requests" in body["title"]
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["ratelimit-remaining"] == "0"
    assert "content-security-policy" in r.headers  # the 429 passes SecurityHeaders like any answer


def counts(sessions: sessionmaker[Session], username: str) -> tuple[int, int]:
    with sessions() as s:
        audit = s.scalar(select(func.count()).select_from(AuditRecord))
        failed = s.scalar(select(User.failed_logins).where(User.username == username))
    return int(audit or 0), int(failed or 0)


def test_the_eleventh_login_from_an_address_is_refused(city: City, clients: Any, sessions: Any) -> None:
    ip = address()
    c = clients(ip)
    for i in range(10):
        r = c.post("/api/auth/token", data={"username": "env_staff", "password": "wrong-password"})
        assert r.status_code == 401, r.text
        assert r.headers["ratelimit-limit"] == "10" and r.headers["ratelimit-remaining"] == str(9 - i)
        assert 0 < int(r.headers["ratelimit-reset"]) <= 60
    before = counts(sessions, "env_staff")
    r = c.post("/api/auth/token", data={"username": "env_staff", "password": PASSWORD})
    assert_429(r, "login")
    assert "sign-in" in r.json()["detail"] and "登录" in r.json()["detail"]
    assert counts(sessions, "env_staff") == before  # refused before the password was even looked at
    assert before[1] == 10
    other = clients(address())  # another address has its own count
    r = other.post("/api/auth/token", data={"username": "env_staff", "password": PASSWORD})
    assert r.status_code == 200, r.text


def test_console_sign_in_over_the_limit_is_a_page(city: City, clients: Any) -> None:
    c = clients(address())
    for _ in range(10):  # no CSRF token: refused by the form, but every attempt counts
        assert c.post("/console/login", data={"username": "admin", "password": "x"}).status_code == 403
    r = c.post("/console/login", data={"username": "admin", "password": PASSWORD})
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("text/html")
    assert "请求过于频繁" in r.text and "登录尝试过多" in r.text and "10/minute" in r.text
    assert "cityos_session" not in r.headers.get("set-cookie", "")
    r = c.post("/console/login?lang=en", data={"username": "admin", "password": PASSWORD})
    assert r.status_code == 429 and "Too many sign-in attempts" in r.text
    assert int(r.headers["retry-after"]) >= 1


def test_failed_credentials_count_against_the_address(city: City, clients: Any) -> None:
    """Wrong HTTP Basic passwords and made-up tokens use up the address's sign-in limit; then
    its unproven credentials are refused, while anonymous reads and proven keys go on."""
    ip = address()
    c = clients(ip, rate_limit_login="4/minute", rate_limit_anonymous="100/minute")  # each also counts as anonymous
    good = city.token("env_staff")
    assert c.get("/api/departments", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    for i in range(4):
        bad = c.get("/ogc/collections", auth=("env_staff", f"wrong-{i}"))
        assert bad.status_code == 401, bad.text
    r = c.get("/api/departments", headers={"Authorization": f"Bearer made-up-{secrets.token_hex(8)}"})
    assert_429(r, "failures")
    assert "failed authentications" in r.json()["detail"]
    r = c.get("/ogc/collections", auth=("env_staff", PASSWORD))  # even the right password: unproven here
    assert r.status_code == 429
    assert c.get("/ogc/collections").status_code == 200  # no credentials: the anonymous limit
    assert c.get("/api/departments", headers={"Authorization": f"Bearer {good}"}).status_code == 200


def test_each_key_and_token_has_its_own_limit(city: City, clients: Any, sessions: Any) -> None:
    with sessions() as s:
        key_a, _ = service.apikey_create(s, SYSTEM, name="a", department_code="220200-hbj",
                                         scopes=["department.read"])
        key_b, _ = service.apikey_create(s, SYSTEM, name="b", department_code="220200-hbj",
                                         scopes=["department.read"])
        s.commit()
    ip = address()
    c = clients(ip)
    for _ in range(5):
        assert c.get("/api/departments", headers={"X-API-Key": key_a}).status_code == 200
    r = c.get("/api/departments", headers={"X-API-Key": key_a})
    assert_429(r, "key")
    assert "this key or token" in r.json()["detail"] and "5/minute" in r.json()["detail"]
    assert c.get("/api/departments", headers={"X-API-Key": key_b}).status_code == 200  # same address
    r = c.get("/api/departments")  # anonymous from the same address: its own count (3 of 4 used)
    assert r.status_code == 200 and r.headers["ratelimit-limit"] == "4"
    token = city.token("env_staff")  # a bearer token is limited the same way
    for _ in range(5):
        assert c.get("/api/departments", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert_429(c.get("/api/departments", headers={"Authorization": f"Bearer {token}"}), "key")


def test_anonymous_public_apis_are_limited_in_their_own_shapes(city: City, clients: Any) -> None:
    c = clients(address())
    for path in ("/api/3/action/package_list", "/ogc/collections", "/open311/v2/services.json",
                 "/data/dataset/none/chart.json"):
        r = c.get(path)
        assert r.status_code != 429 and all(h in r.headers for h in RATE_HEADERS), path
    r = c.get("/api/3/action/package_list")  # CKAN's own error shape
    assert r.status_code == 429 and r.json()["success"] is False
    assert r.json()["error"]["__type"] == "Too Many Requests" and "4/minute" in r.json()["error"]["message"]
    r = c.get("/open311/v2/services.json")  # Open311's [{"code", "description"}]
    assert r.status_code == 429 and r.json()[0]["code"] == 429
    r = c.get("/open311/v2/services.xml")
    assert r.status_code == 429 and "<code>429</code>" in r.text
    assert_429(c.get("/ogc/collections"), "anonymous")
    assert_429(c.get("/api/opendata/datasets"), "anonymous")
    r = c.get("/data", headers={"Accept": "text/html"})  # the portal: a page, not JSON
    assert r.status_code == 429 and r.headers["content-type"].startswith("text/html")
    for path in ("/", "/healthz", "/console/login", "/static/favicon.svg"):  # not limited
        r = c.get(path)
        assert r.status_code == 200 and "ratelimit-limit" not in r.headers, path


def test_device_ingest_is_never_limited(city: City, clients: Any, sessions: Any) -> None:
    with sessions() as s:
        thing, streams = make_thing(s)
        auth = sensing.device_issue(s, SYSTEM, thing)
        s.commit()
        ds = streams[0].id
    c = clients(address())
    for i in range(6):
        r = c.post("/api/sensing/observations", json=[{"ds": ds, "t": 1_767_225_600_000 + i * 1000, "v": i}],
                   auth=auth)
        assert r.status_code == 200, r.text
        assert "ratelimit-limit" not in r.headers
    for i in range(4):
        r = c.post(f"/sta/v1.1/Datastreams({ds})/Observations",
                   json={"phenomenonTime": f"2026-02-01T00:00:0{i}Z", "result": i}, auth=auth)
        assert r.status_code == 201, r.text
    r = c.post("/sta/v1.1/CreateObservations", auth=auth, json=[{
        "Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
        "dataArray": [["2026-03-01T00:00:00Z", 1], ["2026-03-01T00:00:01Z", 2]]}])
    assert r.status_code == 201, r.text
    for _ in range(4):  # an anonymous read of the same service is counted
        assert c.get(f"/sta/v1.1/Datastreams({ds})").status_code == 401
    assert c.get(f"/sta/v1.1/Datastreams({ds})").status_code == 429


def test_forwarded_for_only_from_trusted_proxies(city: City, clients: Any) -> None:
    """SMALL trusts 127.0.0.0/8 as proxies and allows 4 anonymous calls a minute."""
    proxy = clients("127.0.0.1")
    for client_ip in ("198.51.100.7", "198.51.100.8"):  # behind the proxy: each its own count
        for _ in range(4):
            r = proxy.get("/api/departments", headers={"X-Forwarded-For": f"10.9.9.9, {client_ip}"})
            assert r.status_code == 200
        r = proxy.get("/api/departments", headers={"X-Forwarded-For": f"{client_ip}, 127.0.0.5"})  # two proxies
        assert r.status_code == 429
    stranger = clients(address())  # not a proxy: what it claims is ignored
    for i in range(4):
        assert stranger.get("/api/departments", headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code == 200
    assert stranger.get("/api/departments", headers={"X-Forwarded-For": "192.0.2.9"}).status_code == 429
    block = ipaddress.IPv6Network((address(), 64), strict=False)  # IPv6 counts by the subscriber's /64
    for i in range(4):
        assert clients(str(block[1 + i * 2**40])).get("/api/departments").status_code == 200
    assert clients(str(block[2**63])).get("/api/departments").status_code == 429


def test_limits_can_be_turned_off_fail_open_and_bad_ones_are_named(city: City, clients: Any) -> None:
    c = clients(address(), rate_limit_login="off", rate_limit_anonymous="off")
    for _ in range(12):
        r = c.post("/api/auth/token", data={"username": "nobody", "password": "x"})
        assert r.status_code == 401 and "ratelimit-limit" not in r.headers
    broken = clients(address(), rate_limit_login="1/minute", rate_limit_storage="redis://127.0.0.1:1")
    for _ in range(3):  # nothing listens there: the limiter fails open, it does not refuse the city
        r = broken.post("/api/auth/token", data={"username": "nobody", "password": "x"})
        assert r.status_code == 401 and "ratelimit-limit" not in r.headers
    with pytest.raises(SettingsError) as err:
        load_settings(rate_limit_login="lots", rate_limit_storage="carrier-pigeon://x",
                      trusted_proxies=["proxy.example"])
    for name in ("CITYOS_RATE_LIMIT_LOGIN", "CITYOS_RATE_LIMIT_STORAGE", "CITYOS_TRUSTED_PROXIES"):
        assert name in str(err.value)


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def test_redis_storage_shares_counts_between_workers(city: City, clients: Any) -> None:
    """Two app instances (two workers) on one Redis: ten sign-ins spread over both use up one limit."""
    if not _redis_up():
        if IN_CI:
            pytest.fail("Redis is required under CI but unreachable at 127.0.0.1:6379")
        pytest.skip("Redis unreachable at 127.0.0.1:6379")
    ip = address()
    first = clients(ip, rate_limit_storage="redis://127.0.0.1:6379")
    second = clients(ip, rate_limit_storage="redis://127.0.0.1:6379/0")  # another app, same server
    assert first.app is not second.app
    for i in range(10):
        r = (first, second)[i % 2].post("/api/auth/token", data={"username": "nobody", "password": "x"})
        assert r.status_code == 401 and r.headers["ratelimit-remaining"] == str(9 - i)
    assert_429(first.post("/api/auth/token", data={"username": "nobody", "password": "x"}), "login")
    assert_429(second.post("/api/auth/token", data={"username": "nobody", "password": "x"}), "login")
    memory = clients(ip)  # memory:// counts alone
    assert memory.post("/api/auth/token", data={"username": "nobody", "password": "x"}).status_code == 401
