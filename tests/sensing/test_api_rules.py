"""The rules and alerts API at /api/sensing: rules, groups, webhooks, the alert lifecycle with its
access checks, and the live SSE stream on a real server (both databases)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from cityos.app import create_app
from cityos.sensing import api_rules, rules
from cityos.sensing.runtime import runtime_of
from tests.sensing.conftest import T0, make_thing, row
from tests.sensing.helpers_rules import Harness

API = "/api/sensing"


@pytest.fixture
def app(settings, engine):
    """The app, with the rules router mounted if the app does not mount it yet."""
    built = create_app(settings, engine=engine)
    if not any(getattr(r, "path", None) == f"{API}/rules" for r in built.routes):
        built.include_router(api_rules.router)
    return built


@pytest.fixture
def live(app, city, session) -> Iterator[SimpleNamespace]:
    """The app's sensing runtime with a started rules engine, and two devices."""
    rt = runtime_of(app.state.platform)
    engine = rules.Engine(app.state.platform.engine, tick_seconds=3600)
    rt.parts["rules"] = engine
    h = Harness(app.state.platform.engine, rt.writer, engine)
    env_thing, env = make_thing(session, streams=3)
    police_thing, (police,) = make_thing(session, "220200-gaj", name="警用")
    yield SimpleNamespace(h=h, env=[d.id for d in env], env_thing=env_thing.id, police=police.id,
                          police_thing=police_thing.id, prop=env[0].observed_property_id)
    rt.parts.pop("rules", None)
    h.close()
    rt.writer.stop()


def _rule(client, city, user: str, target: int, **kw: Any):
    body = {"name": "PM2.5 超标", "kind": "threshold", "target_type": "datastream", "target_id": target,
            "params": {"op": ">", "value": 10}} | kw
    return client.post(f"{API}/rules", json=body, headers=city.headers(user))


def test_rules_crud_and_the_engine_follows(client, city, live):
    r = _rule(client, city, "env_staff", live.env[0])
    assert r.status_code == 201, r.text
    rule = r.json()
    assert rule["params"] == {"op": ">", "value": 10.0, "for_seconds": 0, "flap_seconds": 60}
    assert [x["id"] for x in client.get(f"{API}/rules", headers=city.headers("env_staff")).json()["items"]] == [
        rule["id"]]
    assert client.get(f"{API}/rules", headers=city.headers("police_staff")).json()["total"] == 0
    assert client.get(f"{API}/rules/{rule['id']}", headers=city.headers("police_staff")).status_code == 403
    live.h.write([row(live.env[0], T0, 11.0)])
    assert len(live.h.alerts()) == 1

    bad = client.patch(f"{API}/rules/{rule['id']}", json={"params": {"op": "~", "value": 1}},
                       headers=city.headers("env_staff"))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "params.op"
    r = client.patch(f"{API}/rules/{rule['id']}", json={"enabled": False}, headers=city.headers("env_staff"))
    assert r.status_code == 200 and r.json()["enabled"] is False
    live.h.write([row(live.env[1], T0, 50.0)])  # not this rule's stream anyway
    r = client.patch(f"{API}/rules/{rule['id']}", json={"enabled": True, "target_type": "property",
                                                        "target_id": live.prop}, headers=city.headers("env_staff"))
    assert r.status_code == 200, r.text
    live.h.write([row(live.env[1], T0 + 1000, 50.0)])
    assert sorted(a.datastream_id for a in live.h.alerts()) == [live.env[0], live.env[1]]

    assert client.delete(f"{API}/rules/{rule['id']}", headers=city.headers("police_admin")).status_code == 403
    assert client.delete(f"{API}/rules/{rule['id']}", headers=city.headers("env_admin")).status_code == 204
    assert client.get(f"{API}/rules/{rule['id']}", headers=city.headers("env_admin")).status_code == 404


def test_rule_input_is_checked(client, city, live):
    r = _rule(client, city, "env_staff", live.env[0], kind="flood")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "kind"
    r = _rule(client, city, "env_staff", live.env[0], colour="red")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "colour"
    r = _rule(client, city, "env_staff", live.police)  # another department's stream
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target_id"
    r = _rule(client, city, "env_staff", live.env[0], kind="combo",
              params={"other_datastream": live.police, "op": ">", "value": 1})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "params.other_datastream"
    assert _rule(client, city, "police_staff", live.env[0], department="220200-hbj").status_code == 403
    assert _rule(client, city, "resident", live.env[0], department="220200-hbj").status_code == 403
    anonymous = client.post(f"{API}/rules", json={"name": "x", "kind": "range", "target_type": "datastream",
                                                  "target_id": live.env[0], "params": {"min": 0}})
    assert anonymous.status_code == 401


def test_alert_lifecycle_and_access(client, city, live):
    for ds in live.env:
        assert _rule(client, city, "env_staff", ds).status_code == 201
    assert _rule(client, city, "police_staff", live.police).status_code == 201
    live.h.write([row(ds, T0, 11.0) for ds in (*live.env, live.police)])
    env, police = city.headers("env_staff"), city.headers("police_staff")

    page = client.get(f"{API}/alerts", params={"limit": 2}, headers=env).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["limit"] == 2
    rest = client.get(f"{API}/alerts", params={"limit": 2, "offset": 2}, headers=env).json()
    ids = [a["id"] for a in page["items"] + rest["items"]]
    assert len(set(ids)) == 3
    assert client.get(f"{API}/alerts", params={"thing": live.police_thing}, headers=env).json()["total"] == 0
    assert client.get(f"{API}/alerts", headers=police).json()["total"] == 1
    assert client.get(f"{API}/alerts", params={"state": "closed"}, headers=env).status_code == 422

    one = ids[0]
    a = client.get(f"{API}/alerts/{one}", headers=env).json()
    assert a["state"] == "open" and a["severity"] == "warning" and a["observed_at"] == "2026-01-01T00:00:00.000Z"
    assert client.get(f"{API}/alerts/{one}", headers=police).status_code == 403
    assert client.post(f"{API}/alerts/{one}/acknowledge", json={"note": "x"}, headers=police).status_code == 403
    assert client.post(f"{API}/alerts/{one}/acknowledge", headers=city.headers("auditor")).status_code == 403
    r = client.post(f"{API}/alerts/{one}/acknowledge", json={"note": "已派人"}, headers=env)
    assert r.status_code == 200 and r.json()["state"] == "acknowledged" and "已派人" in r.json()["note"]
    again = client.post(f"{API}/alerts/{one}/acknowledge", headers=env)
    assert again.status_code == 409
    r = client.post(f"{API}/alerts/{one}/resolve", json={"note": "已处理"}, headers=env)
    assert r.status_code == 200 and r.json()["state"] == "resolved" and r.json()["resolved_by"] == "env_staff"
    assert client.get(f"{API}/alerts", params={"state": "resolved"}, headers=env).json()["total"] == 1
    assert client.get(f"{API}/alerts/999999", headers=env).status_code == 404
    long = client.post(f"{API}/alerts/{ids[1]}/resolve", json={"note": "x" * 2001}, headers=env)
    assert long.status_code == 422 and long.json()["errors"][0]["field"] == "note"


def test_groups_and_a_rule_on_a_group(client, city, live, session):
    env = city.headers("env_staff")
    r = client.post(f"{API}/groups", json={"code": "air-east", "name": "东部空气站", "things": [live.env_thing]},
                    headers=env)
    assert r.status_code == 201 and r.json()["things"] == [live.env_thing]
    gid = r.json()["id"]
    bad = client.put(f"{API}/groups/{gid}/things", json={"things": [live.police_thing]}, headers=env)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "things[0]"
    assert client.put(f"{API}/groups/{gid}/things", json={"things": []},
                      headers=city.headers("police_staff")).status_code == 403
    assert client.post(f"{API}/groups", json={"code": "air-east", "name": "重复"}, headers=env).status_code == 422
    r = _rule(client, city, "env_staff", gid, target_type="group")
    assert r.status_code == 201, r.text
    other, (ds,) = make_thing(session, name="西部站")
    r = client.put(f"{API}/groups/{gid}/things", json={"things": [other.id]}, headers=env)
    assert r.status_code == 200 and r.json()["things"] == [other.id]
    live.h.write([row(live.env[0], T0, 11.0), row(ds.id, T0, 11.0)])
    assert [a.datastream_id for a in live.h.alerts()] == [ds.id]
    listed = client.get(f"{API}/groups", headers=city.headers("police_staff")).json()["items"]
    assert listed == []


def test_webhooks_api_keeps_the_secret_secret(client, city, live):
    env = city.headers("env_admin")
    r = client.post(f"{API}/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["alert.opened"]},
                    headers=env)
    assert r.status_code == 201 and len(r.json()["secret"]) >= 16
    hook = r.json()["id"]
    listed = client.get(f"{API}/webhooks", headers=env).json()["items"]
    assert [w["id"] for w in listed] == [hook] and "secret" not in listed[0]
    assert client.get(f"{API}/webhooks", headers=city.headers("police_admin")).json()["items"] == []
    bad = client.post(f"{API}/webhooks", json={"url": "ftp://x/y"}, headers=env)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "url"
    bad = client.post(f"{API}/webhooks", json={"url": "http://x/y", "events": ["alert.exploded"]}, headers=env)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"].startswith("events")
    assert client.delete(f"{API}/webhooks/{hook}", headers=city.headers("police_admin")).status_code == 403
    assert client.delete(f"{API}/webhooks/{hook}", headers=env).status_code == 204


def _next_event(lines: Iterator[str]) -> dict[str, str]:
    """The next SSE event (comments skipped)."""
    event: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if not line:
            if event:
                return event
            continue
        key, _, value = line.partition(": ")
        event[key] = value
    raise AssertionError("stream ended")


def test_sse_delivers_alert_events_the_caller_may_read(live_server, client, city, live, monkeypatch):
    import orjson

    monkeypatch.setattr(api_rules, "HEARTBEAT_SECONDS", 0.2)
    assert _rule(client, city, "env_staff", live.env[0]).status_code == 201
    assert _rule(client, city, "police_staff", live.police).status_code == 201
    url = f"{live_server}{API}/alerts/stream"
    with httpx.Client(timeout=10) as http, \
            http.stream("GET", url, headers=city.headers("env_staff")) as env_stream, \
            http.stream("GET", url, headers=city.headers("police_staff")) as police_stream:
        assert env_stream.status_code == 200
        assert env_stream.headers["content-type"].startswith("text/event-stream")
        env_lines, police_lines = env_stream.iter_lines(), police_stream.iter_lines()
        assert next(env_lines) == ": connected"
        live.h.write([row(live.env[0], T0, 11.0)])
        live.h.write([row(live.police, T0, 11.0)])
        got = _next_event(env_lines)
        assert got["event"] == "alert.opened"
        alert = orjson.loads(got["data"])
        assert alert["datastream_id"] == live.env[0] and alert["state"] == "open" and got["id"] == str(alert["id"])
        first_for_police = orjson.loads(_next_event(police_lines)["data"])
        assert first_for_police["datastream_id"] == live.police  # never the other department's
        assert next(line for line in env_lines if line.startswith(":")) == ": heartbeat"
    assert client.get(f"{API}/alerts/stream", headers=city.headers("resident")).status_code == 403
    assert client.get(f"{API}/alerts/stream").status_code == 401

