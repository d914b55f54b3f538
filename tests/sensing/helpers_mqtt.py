"""A private Mosquitto per test module, and small MQTT device clients, for the MQTT tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import IN_CI

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mosquitto(directory: Path, *settings: str) -> Iterator[int]:
    """Run a private broker on a free loopback port with these extra config lines; yields the port."""
    if not os.path.exists(MOSQUITTO):
        if IN_CI:
            pytest.fail("mosquitto is required under CI")
        pytest.skip("mosquitto not installed")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [f"listener {port} 127.0.0.1", "persistence false", "max_queued_messages 100000", *settings]
    if os.geteuid() == 0:
        lines.insert(0, "user root")  # else it drops to the mosquitto user, who cannot read tmp files
    conf = directory / f"mosquitto-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    logfile = (directory / f"mosquitto-{port}.log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=logfile, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start: "
                                       + (directory / f"mosquitto-{port}.log").read_text()) from None
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        logfile.close()


def wait_for(cond: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    """Poll until cond() is truthy (MQTT delivery is asynchronous); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Device:
    """An MQTT 5 client acting as a device or a subscriber; records messages and PUBACK codes."""

    def __init__(self, port: int, client_id: str, username: str | None = None,
                 password: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: list[paho.MQTTMessage] = []
        self.acks: dict[int, Any] = {}  # mid -> PUBACK reason code
        self.connack: Any = None
        self._connected = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self._connected.set()

    def ready(self) -> Device:
        wait_for(self._connected.is_set, what="device connection")
        return self

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, properties: Any = None) -> Any:
        """Publish and wait for the broker's PUBACK; returns its reason code (QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        info.wait_for_publish(10)
        return self.acks.get(info.mid) if qos else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
