"""The big screen's data (大屏): one snapshot for everyone on staff, its changes over Server-Sent
Events from a live server, a failing tile that shows its error while the rest keeps updating, and a
slow screen that is resynchronised instead of holding up the others."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import orjson
import pytest
from sqlalchemy import select

from cityos.core.access import SYSTEM
from cityos.ops import indicators, live
from cityos.ops.models import Indicator
from tests.core.test_pages import login
from tests.ops.conftest import OPS

ENV_SPEC = {"code": "air.pm25", "name": "PM2.5 浓度", "name_en": "PM2.5", "unit": "μg/m³",
            "theme": "environment", "source": "sensing.latest", "params": {"property": "PM2.5"},
            "refresh_seconds": 3600, "thresholds": {"direction": "up", "attention": 75, "warning": 115,
                                                    "critical": 150}, "department": OPS}
HOTLINE_SPEC = {"code": "hotline.backlog", "name": "在办工单", "name_en": "Open cases", "unit": "件",
                "theme": "hotline", "source": "cases.backlog", "params": {}, "refresh_seconds": 3600,
                "department": OPS}


def add_indicators(sessions, *specs) -> None:
    with sessions() as s:
        for spec in specs:
            indicators.indicator_upsert(s, SYSTEM, spec)
        s.commit()


def set_value(sessions, code: str, value: float | None, error: str | None = None) -> None:
    """What the indicator clock does after a computation: the stored latest value changes."""
    with sessions() as s:
        ind = s.scalar(select(Indicator).where(Indicator.code == code))
        ind.value, ind.error = value, error
        ind.level = indicators.level_of(ind.thresholds, value)
        ind.computed_at = live.dt.datetime.now(live.dt.UTC)
        s.commit()


def tile_item(snapshot: dict, theme: str, code: str) -> dict:
    return next(i for i in snapshot["tiles"][theme]["indicators"] if i["code"] == code)


# -- the snapshot --------------------------------------------------------------------------------


def test_snapshot_has_every_tile_with_its_link_and_indicators(ops_city):
    add_indicators(ops_city.sessions, ENV_SPEC, HOTLINE_SPEC)
    set_value(ops_city.sessions, "air.pm25", 120.0)
    r = ops_city.client.get("/api/ops/screen", headers=ops_city.headers("ops_staff"))
    assert r.status_code == 200, r.text
    snap = r.json()
    assert set(snap["tiles"]) >= {"environment", "traffic", "hotline", "alerts", "sharing", "incidents", "warnings"}
    pm = tile_item(snap, "environment", "air.pm25")
    assert pm["value"] == 120.0 and pm["level"] == "warning" and pm["unit"] == "μg/m³"
    assert tile_item(snap, "hotline", "hotline.backlog")["name_en"] == "Open cases"
    assert snap["tiles"]["alerts"]["counts"]["by_severity"] == {"critical": 0, "warning": 0, "info": 0}
    assert snap["tiles"]["incidents"]["items"] == [] and snap["tiles"]["warnings"]["items"] == []
    assert snap["tiles"]["hotline"]["link"] == "/console/cases/kpi"
    assert snap["tiles"]["incidents"]["link"] == "/ops/incidents"
    assert all(t["error"] is None for t in snap["tiles"].values())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", snap["clock"]) and snap["seq"] >= 1


@pytest.mark.parametrize("username", ["ops_staff", "hotline_agent", "parks_staff", "police_admin", "auditor"])
def test_every_member_of_staff_may_watch(ops_city, username):
    r = ops_city.client.get("/api/ops/screen", headers=ops_city.headers(username))
    assert r.status_code == 200, r.text


def test_anonymous_and_residents_may_not(ops_city):
    assert ops_city.client.get("/api/ops/screen").status_code == 401
    assert ops_city.client.get("/api/ops/stream").status_code == 401
    resident = ops_city.headers("resident")
    assert ops_city.client.get("/api/ops/screen", headers=resident).status_code == 403
    assert ops_city.client.get("/api/ops/stream", headers=resident).status_code == 403


def test_page_paints_from_the_embedded_snapshot(ops_city):
    add_indicators(ops_city.sessions, ENV_SPEC)
    set_value(ops_city.sessions, "air.pm25", 42.5)
    client = ops_city.client
    r = client.get("/ops/screen", follow_redirects=False)
    assert r.status_code == 303 and "/console/login" in r.headers["location"]
    assert login(client, "ops_staff").status_code == 303
    page = client.get("/ops/screen")
    assert page.status_code == 200
    assert 'data-ready="0"' in page.text and "/static/ops/screen.js" in page.text
    assert "/static/vendor/echarts/echarts.min.js" in page.text and "/static/vendor/leaflet/leaflet.js" in page.text
    assert "城市运行管理中心" in page.text and "City Operations Center" in page.text
    embedded = re.search(r'<script type="application/json" id="ops-snapshot">(.*?)</script>', page.text, re.S)
    snap = json.loads(embedded.group(1))
    assert tile_item(snap, "environment", "air.pm25")["value"] == 42.5
    for href in ("/ops/incidents", "/ops/plan", "/console/sensing", "/console/cases/kpi", "/console/hub"):
        assert f'href="{href}"' in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "")  # nothing from the internet
    assert client.get("/static/ops/screen.css").status_code == 200
    assert client.get("/ops", follow_redirects=False).headers["location"] == "/ops/screen"
    console = client.get("/console")
    assert 'href="/ops/screen"' in console.text and 'href="/ops/incidents"' in console.text
    assert 'href="/ops/plan"' in console.text


# -- live over SSE ------------------------------------------------------------------------------


class Listener:
    """Reads /api/ops/stream in a thread and keeps every event."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: list[tuple[str, dict]] = []
        self.comments = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(30, read=30)) as client, \
                    client.stream("GET", url, headers=headers) as r:
                self._response = r
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                name = None
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.comments += 1
                    elif line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((name or "message", orjson.loads(line[6:])))
        except BaseException as exc:  # noqa: BLE001 - reported by wait_for
            if not self._stop.is_set():
                self.error = exc

    def wait_for(self, predicate, timeout: float = 10.0) -> tuple[str, dict]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            assert self.error is None, self.error
            for ev in self.events[seen:]:
                if predicate(*ev):
                    return ev
            seen = len(self.events)
            time.sleep(0.05)
        raise AssertionError(f"no matching event in {timeout} s; got {[e[0] for e in self.events]}")

    def close(self) -> None:
        """Hang up, so the server sees the screen go (and the live server can stop at once)."""
        self._stop.set()
        if self._response is not None:
            try:
                self._response.close()
            except Exception:  # noqa: BLE001 - closing from another thread may race the reader
                pass
        self._thread.join(timeout=5)


def patched_value(code: str, theme: str, value: float):
    def match(name: str, body: dict) -> bool:
        tile = body.get("tiles", {}).get(theme)
        if name != "patch" or not tile:
            return False
        return any(i["code"] == code and i["value"] == value for i in tile["indicators"])
    return match


def test_stream_sends_a_snapshot_then_only_what_changed(ops_city, live_server):
    add_indicators(ops_city.sessions, ENV_SPEC, HOTLINE_SPEC)
    set_value(ops_city.sessions, "air.pm25", 30.0)
    set_value(ops_city.sessions, "hotline.backlog", 7.0)
    listener = Listener(f"{live_server}/api/ops/stream", ops_city.headers("ops_staff"))
    try:
        name, snap = listener.wait_for(lambda n, b: n == "snapshot")
        assert tile_item(snap, "environment", "air.pm25")["value"] == 30.0
        set_value(ops_city.sessions, "air.pm25", 160.0)
        started = time.monotonic()
        _, patch = listener.wait_for(patched_value("air.pm25", "environment", 160.0))
        assert time.monotonic() - started < 3
        assert tile_item(patch, "environment", "air.pm25")["level"] == "critical"
        assert "hotline" not in patch["tiles"]  # unchanged tiles are not sent again
        assert patch["seq"] > snap["seq"]
        assert 160.0 in tile_item(patch, "environment", "air.pm25")["spark"]
    finally:
        listener.close()


def test_a_failing_tile_shows_its_error_and_the_rest_still_updates(ops_city, live_server, app):
    add_indicators(ops_city.sessions, ENV_SPEC, HOTLINE_SPEC)
    set_value(ops_city.sessions, "air.pm25", 30.0)
    # One indicator's query timed out (the clock stores why); one tile's own query breaks.
    set_value(ops_city.sessions, "hotline.backlog", None, "查询超时 / query timed out after 2 s")
    screen = live.screen_of(app, ops_city.sessions)

    def broken(session):
        raise RuntimeError("the traffic feed is unreachable")

    screen.builder.extra["traffic"] = broken
    listener = Listener(f"{live_server}/api/ops/stream", ops_city.headers("ops_staff"))
    try:
        _, snap = listener.wait_for(lambda n, b: n == "snapshot")
        assert "the traffic feed is unreachable" in snap["tiles"]["traffic"]["error"]
        backlog = tile_item(snap, "hotline", "hotline.backlog")
        assert backlog["value"] is None and "timed out" in backlog["error"]
        assert snap["tiles"]["environment"]["error"] is None
        set_value(ops_city.sessions, "air.pm25", 88.0)
        _, patch = listener.wait_for(patched_value("air.pm25", "environment", 88.0))
        assert tile_item(patch, "environment", "air.pm25")["level"] == "attention"
        # and the API keeps answering with the error in place
        r = ops_city.client.get("/api/ops/screen", headers=ops_city.headers("ops_staff"))
        assert "unreachable" in r.json()["tiles"]["traffic"]["error"]
    finally:
        listener.close()
        screen.builder.extra.clear()


# -- the broadcaster ---------------------------------------------------------------------------


def test_diff_sends_changed_tiles_only():
    old = {"clock": "a", "tiles": {"x": {"v": 1}, "y": {"v": 2}}}
    assert live.diff(old, {"clock": "a", "tiles": {"x": {"v": 1}, "y": {"v": 2}}}) == {}
    assert live.diff(old, {"clock": "b", "tiles": {"x": {"v": 1}, "y": {"v": 3}}}) == {
        "clock": "b", "tiles": {"y": {"v": 3}}}


def test_a_slow_screen_is_resynchronised_and_does_not_hold_up_the_others(ops_city):
    add_indicators(ops_city.sessions, ENV_SPEC)

    async def scenario() -> None:
        screen = live.Screen(ops_city.sessions, tick=3600)  # no ticking: we drive it
        slow, fast = await screen.subscribe(), await screen.subscribe()
        try:
            for _ in range(live.QUEUE_SIZE + 3):
                fast.queue.get_nowait() if not fast.queue.empty() else None
                screen.publish(live.sse("patch", {"seq": 0}))
            assert slow.resyncs >= 1 and slow.queue.qsize() <= live.QUEUE_SIZE
            events = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
            assert any(e.startswith(b"event: snapshot") for e in events)
            assert fast.resyncs == 0
            assert screen.builds == 1  # both screens were served from one build
        finally:
            screen.unsubscribe(slow)
            screen.unsubscribe(fast)
            await screen.stop()

    asyncio.run(scenario())
