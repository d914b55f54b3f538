"""Slow clients (trust, issue 9 item 3) against a real server: `cityos serve` in its own process, as
an operator runs it (started the way tests/sensing/test_durability.py starts one).

Slowloris connections dribbling their headers a byte at a time and clients that stop reading large
answers must not keep a normal request from being answered within a second. A body sent slower than
the server allows (settings.body_timeout_seconds of grace, then 1 KiB/s on average) is cut off with a
408 problem document, so a trickle cannot hold a request open for ever. HTTP's business, not the
database's: once, on SQLite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from cityos.core import db
from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[2]
GRACE = 2  # settings.body_timeout_seconds of the server under test
ASSET = "/static/vendor/swagger-ui/swagger-ui-bundle.js"  # 1.7 MB, served as a file


@dataclass
class Served:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`cityos serve` on a fresh SQLite database, in its own process."""
    base = tmp_path_factory.mktemp("slow")
    url = f"sqlite:///{base / 'cityos.db'}"
    db.upgrade(url)
    port = _free_port()
    env = {**os.environ, "CITYOS_DATABASE_URL": url, "CITYOS_DATA_DIR": str(base),
           "CITYOS_SECRET_KEY": "test-secret-key-0123456789", "CITYOS_ENVIRONMENT": "test",
           "CITYOS_CONFIG": str(base / "absent.toml"), "CITYOS_LOG_LEVEL": "WARNING",
           "CITYOS_BODY_TIMEOUT_SECONDS": str(GRACE), "CITYOS_RATE_LIMIT_ENABLED": "false"}
    log = base / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "cityos"), "serve", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    served = Served("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 120  # importing every engine takes a while on a busy machine
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"server did not start: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def answered_within(served: Served, seconds: float, n: int = 3) -> list[float]:
    """Times of `n` normal requests, each on a new connection; each must be answered in time."""
    times = []
    for _ in range(n):
        started = time.monotonic()
        r = httpx.get(f"{served.url}/healthz", timeout=seconds)
        times.append(time.monotonic() - started)
        assert r.status_code == 200
        time.sleep(0.2)
    return times


def test_slow_clients_do_not_hold_the_server(served: Served) -> None:
    """One server for the three (starting one takes seconds; xdist_group marks do not keep tests on one
    worker with this pytest-xdist)."""
    slowloris_headers_do_not_block_others(served)
    clients_that_stop_reading_do_not_block_others(served)
    a_trickled_body_is_cut_off(served)


def slowloris_headers_do_not_block_others(served: Served) -> None:
    stop = threading.Event()
    socks = [socket.create_connection((served.host, served.port)) for _ in range(12)]

    def dribble(sock: socket.socket) -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        for byte in request:
            if stop.wait(0.5):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return

    threads = [threading.Thread(target=dribble, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    try:
        time.sleep(1)  # the slow connections are open and trickling
        times = answered_within(served, 1.0)
        assert max(times) < 1.0, times
    finally:
        stop.set()
        for s in socks:
            s.close()


def clients_that_stop_reading_do_not_block_others(served: Served) -> None:
    asset = httpx.get(f"{served.url}{ASSET}")
    path = ASSET if asset.status_code == 200 else "/openapi.json"  # the vendored asset is built by `make assets`
    size = len(httpx.get(f"{served.url}{path}").content)
    pipelined = -(-(32 << 20) // size)  # far more than any socket buffer holds
    socks = []
    for _ in range(4):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((served.host, served.port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * pipelined)
        socks.append(sock)  # and never read
    try:
        time.sleep(0.5)
        times = answered_within(served, 1.0)
        assert max(times) < 1.0, times
    finally:
        for s in socks:
            s.close()


def a_trickled_body_is_cut_off(served: Served) -> None:
    """1 byte every 0.2 s of a 1000-byte JSON body: refused 408 soon after the grace, not held open."""
    with socket.create_connection((served.host, served.port)) as sock:
        sock.sendall(b"POST /api/departments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        sock.settimeout(0.2)
        started, answer = time.monotonic(), b""
        while time.monotonic() - started < GRACE + 5 and b"\r\n\r\n" not in answer:
            try:
                sock.sendall(b" ")
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        took = time.monotonic() - started
        sock.settimeout(2)
        while b"\r\n\r\n" in answer and not answer.endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 408"), f"after {took:.1f} s: {answer[:300]!r}"
    assert took < GRACE + 2, took
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"application/problem+json" in head.lower()
    assert orjson.loads(body)["status"] == 408
    assert max(answered_within(served, 1.0, 1)) < 1.0  # and the server is fine
