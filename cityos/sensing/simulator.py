"""The device simulator (设备模拟器): the demo city's sensors and buses, sending readings like real ones.

Each device signs in with its own device key and secret, read from `<data_dir>/sensing-devices.json`
(written by `cityos demo`, mode 0600), and sends its readings over HTTP (`POST
/api/sensing/observations`, HTTP Basic, a JSON array of {"ds", "t", "v"}) or MQTT (topic
`cityos/devices/<device_key>/<datastream_id>`, payload {"t", "v"}, QoS 1).

What each device reads comes from `virtual.VirtualDevice` (how things behave, as data).

`run` schedules every device at its interval (scaled so that the total is `rate` readings per
second when a rate is given), hands each device's readings to the transport and shows a Rich
live line. Asking for more devices than the file holds cycles over them: the extra virtual copies
sign in as the device they copy and write to its streams with their own variation — a load
test, not a bigger city.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.live import Live
from rich.text import Text

from cityos.sensing.virtual import FALLBACK_KIND, KINDS, SEED, Device, Stream, Value, VirtualDevice, iso

__all__ = ["DEVICES_FILE", "SEED", "Device", "Stream", "VirtualDevice", "load_devices", "run",
           "save_devices", "start_background"]

log = logging.getLogger("cityos.sensing.simulator")

DEVICES_FILE = "sensing-devices.json"
INGEST_PATH = "/api/sensing/observations"
TOPIC = "cityos/devices/{key}/{ds}"
LOG_EVERY = 60.0  # seconds between two status lines in the log when there is no console


# -- the devices file ------------------------------------------------------------------------


def load_devices(path: Path) -> list[Device]:
    """The devices of a devices file (设备清单), in file order."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Device.from_json(d) for d in data["devices"]]


def save_devices(path: Path, devices: Iterable[Device]) -> None:
    """Write the devices file readable by its owner only (0600): it holds the devices' secrets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": 1, "devices": [d.as_json() for d in devices]}, ensure_ascii=False, indent=1)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def merge_devices(path: Path, devices: Iterable[Device]) -> list[Device]:
    """Add or replace devices (by thing id) in the devices file; returns the file's devices."""
    have = {d.thing_id: d for d in (load_devices(path) if Path(path).exists() else [])}
    for d in devices:
        have[d.thing_id] = d
    out = list(have.values())
    save_devices(path, out)
    return out


# -- sending ---------------------------------------------------------------------------------


@dataclass
class Stats:
    """What a run did so far: readings sent, acknowledged (ok) and refused or lost (errors)."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, sent: int = 0, ok: int = 0, errors: int = 0, error: str | None = None) -> None:
        with self._lock:
            self.sent += sent
            self.ok += ok
            self.errors += errors
            if error:
                self.last_error = error

    @property
    def rate(self) -> float:
        """Acknowledged readings per second since the start."""
        return self.ok / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        text = (f"sent {self.sent:,}  ok {self.ok:,}  errors {self.errors:,}  rate {self.rate:,.1f}/s")
        return text + (f"  last error: {self.last_error}" if self.last_error else "")


Readings = list[tuple[int, int, Value]]  # (datastream id, epoch ms, value)


def http_body(readings: Readings) -> list[dict[str, Any]]:
    """The body of POST /api/sensing/observations: [{"ds": id, "t": ISO time, "v": value}, ...]."""
    return [{"ds": ds, "t": iso(t), "v": v} for ds, t, v in readings]


def mqtt_message(device_key: str, datastream_id: int, t: int, value: Value) -> tuple[str, bytes]:
    """(topic, payload) of one reading on the device topic: {"t": ISO time, "v": value}."""
    body = json.dumps({"t": iso(t), "v": value}, separators=(",", ":")).encode()
    return TOPIC.format(key=device_key, ds=datastream_id), body


class HttpTransport:
    """POST each device's readings as that device (HTTP Basic), a few requests at a time."""

    def __init__(self, url: str, stats: Stats, workers: int = 8, timeout: float = 10.0) -> None:
        import httpx

        self.stats = stats
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                   limits=httpx.Limits(max_connections=workers))
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="cityos-sim-http")
        self.room = threading.BoundedSemaphore(workers * 4)  # in flight: backpressure on the scheduler

    def send(self, device: Device, readings: Readings) -> None:
        self.room.acquire()
        self.stats.add(sent=len(readings))
        self.pool.submit(self._post, device, readings)

    def _post(self, device: Device, readings: Readings) -> None:
        try:
            r = self.client.post(INGEST_PATH, json=http_body(readings), auth=(device.key, device.secret))
            if r.is_success:
                self.stats.add(ok=len(readings))
            else:
                self.stats.add(errors=len(readings), error=f"HTTP {r.status_code} {_problem(r)}")
        except Exception as exc:  # the server is down or slow: count it, keep going
            self.stats.add(errors=len(readings), error=f"{type(exc).__name__}: {exc}")
        finally:
            self.room.release()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


def _problem(response: Any) -> str:
    try:
        doc = response.json()
        return str(doc.get("detail") or doc.get("title") or "")[:200]
    except Exception:
        return ""


class MqttTransport:
    """Publish each reading to cityos/devices/<key>/<datastream id> with QoS 1, one connection per
    device signed in with its key and secret; a reading is ok when the broker acknowledges it."""

    def __init__(self, broker: str, stats: Stats) -> None:
        self.host, self.port = broker_address(broker)
        self.stats = stats
        self.clients: dict[str, Any] = {}
        self.answered: dict[str, threading.Event] = {}  # the broker has answered the device's CONNECT

    def _client(self, device: Device) -> Any:
        client = self.clients.get(device.key)
        if client is not None:
            return client
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cityos-sim-{device.key}",
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(device.key, device.secret)
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(10_000)
        stats, answered = self.stats, self.answered.setdefault(device.key, threading.Event())

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            answered.set()
            if reason.is_failure:
                stats.add(error=f"MQTT connect {device.key}: {reason}")

        def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                stats.add(errors=1, error=f"MQTT publish: {reason}")
            else:
                stats.add(ok=1)

        client.on_connect = on_connect
        client.on_publish = on_publish
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        self.clients[device.key] = client
        return client

    def send(self, device: Device, readings: Readings) -> None:
        import paho.mqtt.client as mqtt

        client = self._client(device)
        for ds, t, v in readings:
            info = client.publish(*mqtt_message(device.key, ds, t, v), qos=1)
            self.stats.add(sent=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued
                self.stats.add(errors=1, error=f"MQTT publish: {mqtt.error_string(info.rc)}")

    def close(self, wait: float = 5.0) -> None:
        """Wait (up to `wait` s) for the acknowledgements still due, then disconnect; readings
        never acknowledged (refused sign-in, broker gone) count as errors."""
        deadline = time.monotonic() + wait
        for answered in self.answered.values():
            answered.wait(max(deadline - time.monotonic(), 0))
        while (self.stats.ok + self.stats.errors < self.stats.sent and time.monotonic() < deadline
               and any(c.is_connected() for c in self.clients.values())):
            time.sleep(0.05)
        lost = self.stats.sent - self.stats.ok - self.stats.errors
        if lost > 0:  # never acknowledged: refused at connect, or the broker is gone
            self.stats.add(errors=lost, error=self.stats.last_error or "MQTT: not acknowledged")
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


def broker_address(broker: str) -> tuple[str, int]:
    """(host, port) of "mqtt://host:port", "host:port" or "host" (port 1883)."""
    parts = urlsplit(broker if "//" in broker else f"mqtt://{broker}")
    return parts.hostname or "127.0.0.1", parts.port or 1883


# -- running ---------------------------------------------------------------------------------


def select(devices: list[Device], count: int | None) -> list[tuple[Device, int]]:
    """(device, copy) pairs: the first `count` devices, taking kinds in turn so that a few devices
    still show every kind; beyond the file's devices, virtual copies 1, 2, ... of them."""
    if not devices:
        return []
    by_kind: dict[str, list[Device]] = {}
    for d in devices:
        by_kind.setdefault(d.kind, []).append(d)
    mixed: list[Device] = []
    queues = list(by_kind.values())
    while any(queues):
        for q in queues:
            if q:
                mixed.append(q.pop(0))
    n = len(mixed) if count is None else count
    return [(mixed[i % len(mixed)], i // len(mixed)) for i in range(n)]


def natural_rate(chosen: Iterable[tuple[Device, int]]) -> float:
    """Readings per second when every device reports at its own interval."""
    total = 0.0
    for d, _copy in chosen:
        total += len(d.streams) / float(d.interval or KINDS.get(d.kind, FALLBACK_KIND).interval)
    return total


def run(devices: list[Device], *, via: str = "http", url: str = "http://127.0.0.1:8000",
        broker: str = "mqtt://127.0.0.1:1883", count: int | None = None, rate: float | None = None,
        duration: float | None = None, seed: int = SEED, console: Console | None = None,
        stop: threading.Event | None = None, stats: Stats | None = None) -> Stats:
    """Send readings until `duration` seconds pass, `stop` is set or Ctrl-C: every device at its
    interval, scaled so that all together send `rate` readings per second (default: each device's
    own interval). With a console, a live line shows sent, ok, errors and rate."""
    if via not in ("http", "mqtt"):
        raise ValueError("via must be http or mqtt")
    chosen = select(devices, count)
    stats = stats or Stats()
    stop = stop or threading.Event()
    if not chosen:
        return stats
    natural = natural_rate(chosen)
    speed = rate / natural if rate and natural else 1.0
    transport: HttpTransport | MqttTransport = (
        HttpTransport(url, stats) if via == "http" else MqttTransport(broker, stats))
    sims = [VirtualDevice(d, seed, copy) for d, copy in chosen]
    phase = random.Random(seed)
    start = stats.started = time.monotonic()
    due = [(start + phase.uniform(0, sim.interval / speed), i) for i, sim in enumerate(sims)]
    heapq.heapify(due)
    newest: dict[int, int] = {}  # per stream: copies of a device must not stamp the same millisecond
    live = Live(Text(stats.line()), console=console, refresh_per_second=4) if console else None
    logged = start  # without a console (beside a server) a log line a minute says how it goes
    try:
        if live is not None:
            live.start()
        while not stop.is_set():
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                break
            while due and due[0][0] <= now and not stop.is_set():
                when, i = heapq.heappop(due)
                sim = sims[i]
                t = int(time.time() * 1000)
                readings: Readings = []
                for ds, v in sim.read(t).items():
                    stamp = max(t, newest.get(ds, 0) + 1)
                    newest[ds] = stamp
                    readings.append((ds, stamp, v))
                if readings:
                    transport.send(sim.device, readings)
                period = sim.interval / speed
                heapq.heappush(due, (max(when + period, now), i))  # fallen behind: no catch-up burst
            if live is not None:
                live.update(Text(stats.line()))
            elif now - logged >= LOG_EVERY:
                logged = now
                (log.warning if stats.errors else log.info)("simulator: %s", stats.line())
            wait = (due[0][0] - time.monotonic()) if due else 0.25
            if duration is not None:
                wait = min(wait, start + duration - time.monotonic())
            stop.wait(min(max(wait, 0.0), 0.25))
    except KeyboardInterrupt:
        stop.set()
    finally:
        transport.close()
        if live is not None:
            live.update(Text(stats.line()))
            live.stop()
    return stats


# -- beside the server (make demo) -----------------------------------------------------------


@dataclass
class Background:
    """The simulator running in a thread beside a server; `stop()` ends it."""

    thread: threading.Thread
    halt: threading.Event
    stats: Stats

    def stop(self, timeout: float = 10.0) -> None:
        self.halt.set()
        self.thread.join(timeout)


def local_url(host: str, port: int) -> str:
    """Where a server bound to host:port answers this machine (0.0.0.0 and :: mean loopback)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def wait_until_up(url: str, halt: threading.Event, timeout: float = 120.0) -> bool:
    """Poll <url>/healthz until the server answers (True), the timeout passes or halt is set."""
    import httpx

    deadline = time.monotonic() + timeout
    while not halt.is_set() and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        halt.wait(0.5)
    return False


def start_background(devices_file: Path, url: str, *, rate: float | None = None, seed: int = SEED,
                     via: str = "http", broker: str = "mqtt://127.0.0.1:1883") -> Background | None:
    """Start the demo's devices in a daemon thread once the server at `url` is up (`cityos demo`);
    None when there is no devices file (a demo built without sensors)."""
    if not Path(devices_file).exists():
        log.info("no %s: the simulator is not started", devices_file)
        return None
    devices = load_devices(devices_file)
    halt, stats = threading.Event(), Stats()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per reading batch in the server's log

    def main() -> None:
        if not wait_until_up(url, halt):
            return
        log.info("simulating %d devices against %s via %s", len(devices), url, via)
        try:
            run(devices, via=via, url=url, broker=broker, rate=rate, seed=seed, stop=halt, stats=stats)
        except Exception:
            log.exception("the simulator stopped")

    thread = threading.Thread(target=main, name="cityos-simulator", daemon=True)
    thread.start()
    return Background(thread, halt, stats)
