"""Webhooks (告警推送): an outbox row per change in the change's transaction, POSTed signed to a
real local HTTP receiver, retried with backoff, given up after the last attempt, and resumed
by a new sender after a restart (both databases)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cityos.core.access import SYSTEM
from cityos.core.db import utcnow
from cityos.sensing import alerts
from cityos.sensing.models import WebhookDelivery
from tests.sensing.conftest import T0, make_thing, row
from tests.sensing.helpers_rules import Harness

SECRET = "receiver-shared-secret-0123"


class Receiver:
    """A tiny HTTP server that answers with `codes` in turn (then 200) and keeps what it got."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.got = list(codes), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers), body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([500])
    yield r
    r.close()


@pytest.fixture
def h(engine, writer, city_session):
    harness = Harness(engine, writer)
    yield harness
    harness.close()


def _hook(engine, url: str, events=None, department: str = "220200-hbj") -> int:
    with Session(engine) as s:
        w, _ = alerts.webhook_create(s, SYSTEM, url, events, SECRET, department)
        s.commit()
        return w.id


def _deliveries(engine) -> list[WebhookDelivery]:
    with Session(engine) as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def _alert(h, city_session) -> int:
    _, (ds,) = make_thing(city_session)
    h.rule("threshold", ds.id, {"op": ">", "value": 10})
    h.write([row(ds.id, T0, 11.0)])
    return ds.id


def test_signed_delivery_is_retried_until_it_succeeds(engine, h, city_session, receiver):
    _hook(engine, receiver.url)
    _hook(engine, receiver.url, ["alert.resolved"])  # does not want openings
    _hook(engine, receiver.url, department="220200-gaj")  # another department's
    _alert(h, city_session)
    (d,) = _deliveries(engine)
    assert (d.status, d.event, d.attempts) == ("pending", "alert.opened", 0)
    sender = alerts.Sender(engine, backoff=(0,))
    with httpx.Client(timeout=5) as client:
        assert sender.run_once(client) == 1  # the receiver answers 500
        (d,) = _deliveries(engine)
        assert (d.status, d.attempts, d.last_error) == ("pending", 1, "HTTP 500")
        assert sender.run_once(client) == 1
    (d,) = _deliveries(engine)
    assert (d.status, d.attempts, d.last_error) == ("delivered", 2, None) and d.delivered_at is not None
    assert len(receiver.got) == 2
    for headers, body in receiver.got:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-CityOS-Signature"], expected)
        assert headers["X-CityOS-Event"] == "alert.opened" and headers["X-CityOS-Delivery"] == str(d.id)
        doc = orjson.loads(body)
        assert doc["event"] == "alert.opened" and doc["alert"]["state"] == "open"
    assert receiver.got[0][1] == receiver.got[1][1] == d.payload.encode()  # the stored body, unchanged


def test_backoff_then_failure_after_the_last_attempt(engine, h, city_session, receiver):
    receiver.codes = [503] * 10
    _hook(engine, receiver.url)
    _alert(h, city_session)
    slow = alerts.Sender(engine, backoff=(3600,), max_attempts=3)
    assert slow.run_once() == 1
    assert slow.run_once() == 0  # not due for an hour
    (d,) = _deliveries(engine)
    assert d.attempts == 1 and d.status == "pending"
    with Session(engine) as s:  # an hour later ...
        s.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))
        s.commit()
    fast = alerts.Sender(engine, backoff=(0,), max_attempts=3)  # ... after a restart: state is in the table
    assert fast.run_once() == 1 and fast.run_once() == 1 and fast.run_once() == 0
    (d,) = _deliveries(engine)
    assert (d.status, d.attempts, d.last_error) == ("failed", 3, "HTTP 503")
    assert len(receiver.got) == 3


def test_the_sender_thread_delivers_soon_after_commit(engine, h, city_session, receiver):
    receiver.codes = []
    _hook(engine, receiver.url)
    sender = alerts.Sender(engine, poll_seconds=30)  # woken by the commit, not by polling
    sender.start()
    try:
        _alert(h, city_session)
        deadline = time.monotonic() + 10
        while _deliveries(engine)[0].status != "delivered" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sender.stop()
    assert _deliveries(engine)[0].status == "delivered" and len(receiver.got) == 1


def test_unreachable_receiver_is_an_error_not_a_crash(engine, h, city_session, receiver):
    url = receiver.url
    receiver.close()
    _hook(engine, url)
    _alert(h, city_session)
    assert alerts.Sender(engine, backoff=(60,), timeout=2).run_once() == 1
    (d,) = _deliveries(engine)
    assert d.status == "pending" and d.attempts == 1 and d.last_error.startswith("ConnectError")
