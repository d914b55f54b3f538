"""The MQTT bridge (MQTT 接入): readings in from the city's broker, new observations out to it.

CityOS is a client of the broker (Mosquitto; its URL is a setting). It subscribes, at QoS 1, to
- `v1.1/+/Observations`: SensorThings MQTT create, an Observation JSON published to
  `v1.1/Datastreams(<id>)/Observations` or `v1.1/MultiDatastreams(<id>)/Observations`;
- `cityos/devices/+/+`: the compact device topic `cityos/devices/<device_key>/<datastream_id>` with
  `{"t": time, "v": value}`, a JSON array of them, or a bare value (t = now).
The broker's ACL (`broker.py`) lets a device publish only under its own key and to its own
SensorThings topics; the bridge checks that a compact topic's stream belongs to the key in it.

Durability: a QoS 1 message is acknowledged (PUBACK) only after the writer has committed its
readings, and PUBACKs leave in the order the messages came (MQTT 4.6). Messages are coalesced into
one writer job per few milliseconds, so a flood of single readings is group-committed. While the
writer is behind, the bridge stops reading from the socket (the broker then holds the messages)
instead of buffering without limit. Bad messages are counted per device, logged once a minute per
device, and acknowledged, so the broker does not redeliver garbage forever.

Fan-out: every committed observation (from HTTP or MQTT) is published as SensorThings JSON to its
Datastream's topic at QoS 0. The subscription uses MQTT 5 No Local, so CityOS does not read back
its own fan-out.

Speed: paho's stock read path costs one select() and three recv() per packet and builds a
Properties object and a Condition per message, which caps a client near 10,000 messages/s of
CPU. `_IngestClient` reads the socket in 256 KiB chunks, drains all buffered packets per wake-up,
decodes a plain PUBLISH by hand, and queues PUBACKs and fan-out PUBLISHes many to one write.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core.errors import CityOSError, Invalid
from cityos.sensing import ingest
from cityos.sensing.ingest import Busy, StreamInfo, Writer
from cityos.sensing.models import FeatureOfInterest
from cityos.sensing.store import Row, Written

log = logging.getLogger("cityos.sensing.mqtt")

STA_FILTER = "v1.1/+/Observations"
DEVICE_FILTER = "cityos/devices/+/+"
MAX_PAYLOAD = 64 * 1024  # bytes; larger messages are refused
LOG_EVERY = 60.0  # seconds between two log lines about the same device
MAX_INFLIGHT = 4  # writer jobs of the bridge not yet committed and acknowledged
MAX_BUFFER = 50_000  # received messages waiting to be parsed before reading pauses
MAX_FAN_OUT = 100_000  # observations waiting to be published before fan-out drops (QoS 0)
STA_FIELDS = frozenset({"phenomenonTime", "result", "resultTime", "resultQuality", "validTime", "parameters",
                        "FeatureOfInterest", "Datastream", "MultiDatastream"})
GEOJSON = ("application/geo+json", "application/vnd.geo+json")
_STA_TARGET = re.compile(r"(Datastreams|MultiDatastreams)\((\d{1,18})\)")
_PUBACK = 0x40


# -- the paho client, with a faster hot path ----------------------------------------------------


class _Buffered:
    """A socket whose recv() is served from 256 KiB reads; `pending()` tells paho's loop that
    more packets are already here (paho asks SSL sockets the same question)."""

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._sock.recv(max(n, 262_144))
            if not buf:
                return buf  # type: ignore[no-any-return]
            self._buf, pos = buf, 0
        out: bytes = buf[pos:pos + n]
        self._pos = pos + len(out)
        return out

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


Sink = Callable[[bytes, bytes, int, int], None]  # (topic, payload, mid, qos)


class _IngestClient(paho.Client):
    """paho's MQTT 5 client with a hot path for many small messages (see the module docstring).

    Relies on paho 2.x internals (`_packet_read`, `_handle_publish`, `_packet_queue`); anything
    unusual (QoS 2, PUBLISH properties) goes through paho's own code."""

    sink: Sink | None = None

    def _create_socket(self) -> Any:
        return _Buffered(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # Stock paho reads one packet per select(); read all that has arrived (up to 1,000).
        for _ in range(1000):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if qos == 2 or self.sink is None:
            return super()._handle_publish()
        try:
            n = (packet[0] << 8) | packet[1]
            pos = 2 + n
            mid = 0
            if qos:
                mid = (packet[pos] << 8) | packet[pos + 1]
                pos += 2
            if packet[pos] != 0:  # PUBLISH properties: let paho decode them
                return super()._handle_publish()
            topic = bytes(packet[2:2 + n])
            payload = bytes(packet[pos + 1:])
        except IndexError as exc:
            raise MalformedPacket("PUBLISH packet too short") from exc
        self.sink(topic, payload, mid, qos)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK these QoS 1 messages (in this order), queued as one write."""
        if mids:
            self._packet_queue(_PUBACK, b"".join(b"\x40\x02" + m.to_bytes(2, "big") for m in mids), 0, 0)

    def publish_many(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Publish (topic, payload) pairs at QoS 0, queued as one write."""
        parts = []
        for topic, payload in messages:
            parts.append(b"\x30" + _vbi(3 + len(topic) + len(payload)) + len(topic).to_bytes(2, "big")
                         + topic + b"\x00" + payload)
        if parts:
            # Labelled PUBACK so that paho does not look for the message info of a QoS 0 PUBLISH.
            self._packet_queue(_PUBACK, b"".join(parts), 0, 0)


# -- parsing -------------------------------------------------------------------------------------


class Refused(Exception):
    """A message or reading the bridge will not store, with the device it is counted against."""

    def __init__(self, who: str, reason: str) -> None:
        super().__init__(reason)
        self.who = who
        self.reason = reason


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, CityOSError) else f"{type(exc).__name__}"


def sta_target(topic: str) -> tuple[str, int]:
    """("Datastreams" | "MultiDatastreams", id) of a SensorThings Observations topic."""
    middle = topic.removeprefix("v1.1/").removesuffix("/Observations")
    m = _STA_TARGET.fullmatch(middle)
    if m is None:
        raise Invalid("topic", "expected v1.1/Datastreams(<id>)/Observations / 主题应为数据流的观测主题")
    return m.group(1), int(m.group(2))


def sta_row(info: StreamInfo, doc: Any, now: int, feature: Callable[[Any], int | None]) -> Row:
    """A row from a SensorThings Observation (the same checks as HTTP create)."""
    if not isinstance(doc, Mapping):
        raise Invalid("Observation", "an Observation is a JSON object / 观测应为 JSON 对象")
    extra = set(doc) - STA_FIELDS
    if extra:
        raise Invalid(sorted(extra)[0], "unknown field / 未知字段")
    for link in ("Datastream", "MultiDatastream"):
        if link in doc:
            ref = doc[link]
            if not isinstance(ref, Mapping) or ref.get("@iot.id") != info.id:
                raise Invalid(link, "does not match the topic / 与主题中的数据流不一致")
    if "result" not in doc:
        raise Invalid("result", "required / 必填")
    if "phenomenonTime" in doc and doc["phenomenonTime"] is not None:
        start, end = ingest.parse_interval(doc["phenomenonTime"], "phenomenonTime", now)
    else:
        start, end = now, None  # STA: the server assigns the time when none is given
    number, js = ingest.check_result(info, doc["result"], "result")
    result_time = None
    if doc.get("resultTime") is not None:
        result_time = ingest.parse_time(doc["resultTime"], "resultTime", now)
    quality = orjson.dumps(doc["resultQuality"]).decode() if doc.get("resultQuality") is not None else None
    valid_start = valid_end = None
    if doc.get("validTime") is not None:
        valid_start, end_or_none = ingest.parse_interval(doc["validTime"], "validTime", now)
        valid_end = end_or_none if end_or_none is not None else valid_start
    params = None
    if doc.get("parameters") is not None:
        if not isinstance(doc["parameters"], Mapping):
            raise Invalid("parameters", "a JSON object / 应为 JSON 对象")
        params = orjson.dumps(doc["parameters"]).decode()
    foi = feature(doc["FeatureOfInterest"]) if doc.get("FeatureOfInterest") is not None else info.foi_id
    if foi is None:
        raise Invalid("FeatureOfInterest", "required: the Thing of this stream has no Location to derive it "
                                           "from / 必填：该数据流的设备没有位置，无法生成观测对象")
    return (info.id, start, end, result_time, number, js, quality, valid_start, valid_end, params, foi)


def device_rows(info: StreamInfo, doc: Any, now: int) -> tuple[list[Row], list[str]]:
    """Rows of a compact device message, and the reasons of the readings refused in it."""
    items = doc if isinstance(doc, list) else [doc]
    if not isinstance(doc, list | dict):
        items = [{"v": doc}]  # a bare value: t = now
    rows: list[Row] = []
    bad: list[str] = []
    if not items:
        bad.append("reading: an empty array / 空数组")
    for i, item in enumerate(items):
        name = f"[{i}]" if isinstance(doc, list) else "reading"
        try:
            if isinstance(item, Mapping) and item.get("ds", info.id) != info.id:
                raise Invalid(f"{name}.ds", "does not match the topic / 与主题中的数据流不一致")
            rows.append(ingest.compact_row(info, item, name, now))
        except Invalid as exc:
            bad.append(str(exc))
    return rows, bad


class _Features:
    """FeatureOfInterest references of SensorThings payloads: {"@iot.id": n} is checked, an inline
    feature is created once and reused for the same JSON."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._known: dict[str, int] = {}

    def __call__(self, doc: Any) -> int:
        if not isinstance(doc, Mapping):
            raise Invalid("FeatureOfInterest", "a JSON object / 应为 JSON 对象")
        key = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
        hit = self._known.get(key)
        if hit is not None:
            return hit
        if set(doc) == {"@iot.id"}:
            ref = doc["@iot.id"]
            if isinstance(ref, bool) or not isinstance(ref, int):
                raise Invalid("FeatureOfInterest.@iot.id", "an integer id / 应为整数")
            with Session(self.writer.engine) as session:
                found = session.scalar(select(FeatureOfInterest.id).where(FeatureOfInterest.id == ref))
            if found is None:
                raise Invalid("FeatureOfInterest.@iot.id",
                              f"FeatureOfInterest({ref}) does not exist / 观测对象不存在")
        else:
            found = self._create(doc)
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[key] = found
        return found

    def _create(self, doc: Mapping[str, Any]) -> int:
        extra = set(doc) - {"name", "description", "encodingType", "feature", "properties"}
        if extra:
            raise Invalid(f"FeatureOfInterest.{sorted(extra)[0]}", "unknown field / 未知字段")
        name = doc.get("name")
        if not isinstance(name, str) or not name.strip():
            raise Invalid("FeatureOfInterest.name", "required / 必填")
        if doc.get("encodingType") not in GEOJSON:
            raise Invalid("FeatureOfInterest.encodingType", "must be application/geo+json / 应为 GeoJSON")
        feature = doc.get("feature")
        if not isinstance(feature, Mapping) or not isinstance(feature.get("type"), str):
            raise Invalid("FeatureOfInterest.feature", "a GeoJSON geometry / 应为 GeoJSON 几何")
        props = doc.get("properties")
        if props is not None and not isinstance(props, Mapping):
            raise Invalid("FeatureOfInterest.properties", "a JSON object / 应为 JSON 对象")
        with Session(self.writer.engine) as session:
            row = FeatureOfInterest(name=name[:200], description=str(doc.get("description") or "")[:2000],
                                    encoding_type="application/geo+json", feature=dict(feature),
                                    properties=dict(props) if props else None)
            session.add(row)
            session.commit()
            return row.id


# -- the bridge ----------------------------------------------------------------------------------

PENDING, STORED, FAILED, WAITING = "pending", "stored", "failed", "waiting"


@dataclass(slots=True)
class _Batch:
    """Messages handed to the writer as one job, and the QoS 1 message ids to acknowledge after."""

    rows: list[Row]
    acks: list[tuple[int, int]]  # (connection generation, mid)
    messages: int
    state: str = PENDING
    error: BaseException | None = None
    attempts: int = 0
    retry_at: float = 0.0


@dataclass
class _Counters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    acked: int = 0
    failed: int = 0
    skipped: int = 0  # observation notifications (with @iot.id) seen on the create topic
    fanned_out: int = 0
    fan_out_dropped: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def parse_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """(host, port, tls, username, password) of mqtt://[user:pass@]host[:port] or mqtts://..."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise Invalid("mqtt_url", "expected mqtt://host:port or mqtts://host:port / MQTT 地址格式错误")
    tls = parts.scheme in ("mqtts", "ssl")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    return parts.hostname, parts.port or (8883 if tls else 1883), tls, user, password


class Bridge:
    """CityOS's MQTT client: ingests readings from the broker, fans new observations out to it."""

    def __init__(self, writer: Writer, url: str, *, client_id: str = "cityos-ingest",
                 username: str | None = None, password: str | None = None, base_url: str = "",
                 fan_out: bool = True, max_payload: int = MAX_PAYLOAD, session_expiry: int = 3600,
                 keepalive: int = 30) -> None:
        self.writer = writer
        self.host, self.port, self.tls, url_user, url_password = parse_url(url)
        self.client_id = client_id
        self.username = username if username is not None else url_user
        self.password = password if password is not None else url_password
        self.base_url = base_url.rstrip("/")
        self.fan_out = fan_out
        self.max_payload = max_payload
        # A persistent session (MQTT 5 session expiry): the broker keeps the subscription and the
        # messages that arrive while CityOS restarts, and redelivers those not yet acknowledged.
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.counters = _Counters()
        self._features = _Features(writer)
        self._client: _IngestClient | None = None
        self._gen = 0  # connection generation: PUBACKs go only on the connection that got the message
        self._subscribed = threading.Event()
        self._inbox: deque[tuple[int, bytes, bytes, int, int]] = deque()  # (gen, topic, payload, mid, qos)
        self._wake = threading.Event()
        self._room = threading.Event()
        self._room.set()
        self._inflight: deque[_Batch] = deque()
        self._outbox: deque[Written] = deque()
        self._out_pending = 0
        self._out_lock = threading.Lock()
        self._out_wake = threading.Event()
        self._logged: dict[str, float] = {}
        self._running = False
        self._closing = False
        self._threads: list[threading.Thread] = []

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background, retrying) and start the ingest and fan-out threads."""
        if self._running:
            return
        self._running, self._closing = True, False
        client = _IngestClient(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5,
                               manual_ack=True)
        client.sink = self._sink
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set()
        client.reconnect_delay_set(1, 30)
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = 65535  # else Mosquitto sends 20 unacknowledged messages at a time
        if self.session_expiry:
            props.SessionExpiryInterval = self.session_expiry
        client.connect_async(self.host, self.port, self.keepalive, clean_start=not self.session_expiry,
                             properties=props)
        self._client = client
        self._threads = [threading.Thread(target=self._run_ingest, name="cityos-mqtt-ingest", daemon=True)]
        if self.fan_out:
            self._threads.append(threading.Thread(target=self._run_fan_out, name="cityos-mqtt-fanout",
                                                  daemon=True))
            self.writer.add_listener(self._on_written)
        for t in self._threads:
            t.start()
        client.loop_start()

    def wait_ready(self, timeout: float = 10) -> bool:
        """Block until connected and subscribed (for start-up checks and tests)."""
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 10) -> None:
        """Stop reading, let what was read be stored and acknowledged (up to `timeout` s), then
        disconnect. Messages not acknowledged by then are redelivered to the next session."""
        if not self._running:
            return
        self._closing = True  # the sink takes no more messages: the broker keeps them
        self._room.set()
        deadline = time.monotonic() + timeout
        while (self._inbox or self._inflight) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.01)
        self._running = False
        self._wake.set()
        self._out_wake.set()
        for t in self._threads:
            t.join(timeout=5)
        client = self._client
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._subscribed.clear()
        self._inbox.clear()
        self._inflight.clear()
        self._outbox.clear()

    def stats(self) -> dict[str, Any]:
        """Counters for the status page: received, stored, refused, errors per device, connected."""
        c = self.counters
        connected = self._client is not None and self._client.is_connected()
        pending = len(self._inbox) + sum(b.messages for b in list(self._inflight))
        return {"connected": connected, "received": c.received, "stored": c.stored,
                "duplicates": c.duplicates, "refused": c.refused, "acked": c.acked, "failed": c.failed,
                "skipped": c.skipped, "pending": pending,
                "fanned_out": c.fanned_out, "fan_out_dropped": c.fan_out_dropped, "errors": dict(c.errors)}

    @property
    def errors(self) -> dict[str, int]:
        return dict(self.counters.errors)

    # -- paho callbacks (the network thread: hand on, never wait long) ----------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._log_once("broker", f"connection to {self.host}:{self.port} refused: {reason}")
            return
        self._gen += 1
        log.info("MQTT connected to %s:%d as %s (session present: %s)", self.host, self.port, self.client_id,
                 getattr(flags, "session_present", None))
        opts = SubscribeOptions(qos=1, noLocal=True)
        client.subscribe([(STA_FILTER, opts), (DEVICE_FILTER, opts)])

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._log_once("broker", f"cannot reach the MQTT broker at {self.host}:{self.port}; retrying")

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        failed = [str(c) for c in codes if c.is_failure]
        if failed:
            log.error("MQTT subscription refused by the broker (check its ACL): %s", ", ".join(failed))
            return
        self._subscribed.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._gen += 1
        self._subscribed.clear()
        if self._running and not self._closing:
            self._log_once("broker", f"connection to {self.host}:{self.port} lost: {reason}; reconnecting")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        # Messages with PUBLISH properties come this way (paho decodes them); the rest via the sink.
        try:
            topic = msg.topic.encode()
        except UnicodeDecodeError:
            topic = b""
        self._sink(topic, msg.payload, msg.mid, msg.qos)

    def _sink(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        if self._closing:
            return  # not acknowledged: the broker redelivers it to the next session
        if len(self._inbox) >= MAX_BUFFER:
            # The writer is behind: stop reading the socket until the queue is half empty (the
            # broker holds the rest), rather than buffer without limit.
            while len(self._inbox) >= MAX_BUFFER // 2 and not self._closing:
                self._room.clear()
                self._wake.set()
                if len(self._inbox) >= MAX_BUFFER // 2:
                    self._room.wait(0.5)
            if self._closing:
                return
        self._inbox.append((self._gen, topic, payload, mid, qos))
        if not self._wake.is_set():
            self._wake.set()

    # -- the ingest thread -----------------------------------------------------------------------

    def _run_ingest(self) -> None:
        while self._running:
            self._wake.clear()
            try:
                worked = self._tend()
                if self._inbox and len(self._inflight) < MAX_INFLIGHT:
                    self._take()
                    worked = True
            except Exception:  # never let the thread die: log and carry on
                log.exception("MQTT ingest step failed")
                worked = False
            if not worked:
                self._wake.wait(self._next_wait())

    def _next_wait(self) -> float:
        waits = [b.retry_at - time.monotonic() for b in self._inflight if b.state == WAITING]
        return max(0.0, min(waits)) if waits else 1.0

    def _take(self) -> None:
        """Parse up to one writer batch of received messages and submit it as one job."""
        inbox = self._inbox
        rows: list[Row] = []
        acks: list[tuple[int, int]] = []
        limit = self.writer.max_batch
        n = 0
        while inbox and len(rows) < limit and n < limit:
            gen, topic, payload, mid, qos = inbox.popleft()
            n += 1
            self._parse(topic, payload, rows)
            if qos:
                acks.append((gen, mid))
        self.counters.received += n
        if len(inbox) < MAX_BUFFER // 2:
            self._room.set()
        batch = _Batch(rows, acks, n)
        self._inflight.append(batch)
        self._submit(batch)

    def _submit(self, batch: _Batch) -> None:
        if not batch.rows:
            batch.state = STORED
            return
        batch.state = PENDING
        try:
            fut = self.writer.submit(batch.rows, block=True, timeout=0.25)
        except Busy:
            batch.state, batch.retry_at = WAITING, time.monotonic() + 0.2
            return
        fut.add_done_callback(functools.partial(self._written, batch))

    def _written(self, batch: _Batch, fut: Future[Written]) -> None:
        # The writer thread, after COMMIT (or a failure): note it and wake the ingest thread.
        err = fut.exception()
        if err is None:
            w = fut.result()
            self.counters.stored += len(w.new)
            self.counters.duplicates += w.duplicates
            batch.state = STORED
        else:
            batch.error, batch.state = err, FAILED
        self._wake.set()

    def _tend(self) -> bool:
        """Retry failed jobs, and acknowledge stored ones in the order their messages came."""
        worked = False
        now = time.monotonic()
        for batch in list(self._inflight):
            if batch.state == FAILED:
                self._failed(batch)
                worked = True
            elif batch.state == WAITING and batch.retry_at <= now:
                self._submit(batch)
                worked = True
        inflight = self._inflight
        while inflight and inflight[0].state == STORED:
            self._ack(inflight.popleft())
            worked = True
        return worked

    def _failed(self, batch: _Batch) -> None:
        batch.attempts += 1
        err = batch.error
        transient = isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError) or bool(
            getattr(err, "connection_invalidated", False))
        if transient or batch.attempts < 3:
            # The database is away (or locked): keep the messages unacknowledged and try again.
            delay = min(30.0, 0.5 * 2 ** min(batch.attempts, 6))
            self._log_once("database", f"storing {len(batch.rows)} MQTT readings failed ({_reason(err)}); "
                                       f"retrying in {delay:.0f} s")
            batch.state, batch.retry_at = WAITING, time.monotonic() + delay
            return
        # The same job failed three times and not for want of a database: it would block every
        # reading behind it, so it is dropped, loudly.
        log.error("MQTT: %d readings could not be stored and are dropped: %r", len(batch.rows), err)
        self.counters.failed += len(batch.rows)
        batch.state = STORED

    def _ack(self, batch: _Batch) -> None:
        client = self._client
        if client is None or not batch.acks:
            return
        gen = self._gen
        mids = [m for g, m in batch.acks if g == gen]
        if mids and client.is_connected():
            client.ack_many(mids)
            self.counters.acked += len(mids)

    # -- parsing and refusing -------------------------------------------------------------------

    def _parse(self, topic: bytes, payload: bytes, rows: list[Row]) -> None:
        """Append the rows of one message; count and log what is refused."""
        who = "unknown"
        try:
            if topic.startswith(b"cityos/devices/"):
                parts = topic.split(b"/")
                who = parts[2].decode(errors="replace") or "unknown"
                if len(payload) > self.max_payload:
                    raise Refused(who, f"payload over {self.max_payload} bytes / 消息过大")
                try:
                    ds = int(parts[3])
                except ValueError:
                    raise Refused(who, "topic: datastream id not an integer / 数据流编号应为整数") from None
                info = self.writer.streams.get(ds)
                if info is None:
                    raise Refused(who, f"Datastream({ds}) does not exist / 数据流不存在")
                if info.device_key != who:
                    raise Refused(who, f"Datastream({ds}) belongs to another device / 数据流属于其他设备")
                doc = self._json(who, payload)
                good, bad = device_rows(info, doc, ingest.now_ms())
                rows.extend(good)
                for reason in bad:
                    self._refuse(who, reason)
                return
            kind, ds = sta_target(topic.decode(errors="replace"))
            info = self.writer.streams.get(ds)
            if info is None:
                raise Refused(who, f"{kind}({ds}) does not exist / 数据流不存在")
            who = info.device_key or f"Datastream({ds})"
            if len(payload) > self.max_payload:
                raise Refused(who, f"payload over {self.max_payload} bytes / 消息过大")
            if (kind == "MultiDatastreams") != (info.kind == "multi"):
                raise Refused(who, f"{kind}({ds}) is not a {kind[:-1]} / 数据流类型不符")
            doc = self._json(who, payload)
            if isinstance(doc, Mapping) and "@iot.id" in doc:
                self.counters.skipped += 1  # another server's fan-out, not a create
                return
            rows.append(sta_row(info, doc, ingest.now_ms(), self._features))
        except Refused as exc:
            self._refuse(exc.who, exc.reason)
        except Invalid as exc:
            self._refuse(who, str(exc))
        except Exception as exc:  # e.g. the database failed while making a FeatureOfInterest
            log.exception("MQTT message from %s could not be read", who)
            self._refuse(who, f"could not be read ({type(exc).__name__}) / 无法处理")

    def _json(self, who: str, payload: bytes) -> Any:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise Refused(who, "payload is not JSON / 消息不是有效的 JSON") from None

    def _refuse(self, who: str, reason: str) -> None:
        c = self.counters
        c.refused += 1
        if who not in c.errors and len(c.errors) >= 100_000:
            who = "other"  # an open broker: do not grow without bound
        c.errors[who] = c.errors.get(who, 0) + 1
        self.writer.count_error(who)
        self._log_once(who, f"MQTT reading from device {who} refused: {reason} "
                            f"({c.errors[who]} refused so far)")

    def _log_once(self, key: str, message: str) -> None:
        """Log at most one line per key (a device, the broker, the database) a minute."""
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY) >= LOG_EVERY:
            if len(self._logged) > 100_000:
                self._logged.clear()
            self._logged[key] = now
            log.warning("%s", message)

    # -- fan-out ---------------------------------------------------------------------------------

    def _on_written(self, written: Written) -> None:
        # The writer thread, after COMMIT: only queue.
        if not self._running or not written.new:
            return
        with self._out_lock:
            if self._out_pending + len(written.new) > MAX_FAN_OUT:
                self.counters.fan_out_dropped += len(written.new)
                return
            self._out_pending += len(written.new)
        self._outbox.append(written)
        self._out_wake.set()

    def _run_fan_out(self) -> None:
        while self._running:
            self._out_wake.clear()
            if not self._outbox:
                self._out_wake.wait(1.0)
                continue
            written = self._outbox.popleft()
            with self._out_lock:
                self._out_pending -= len(written.new)
            try:
                self._publish(written)
            except Exception:
                log.exception("MQTT fan-out failed")

    def _publish(self, written: Written) -> None:
        client = self._client
        if client is None or not client.is_connected():
            with self._out_lock:
                self.counters.fan_out_dropped += len(written.new)
            return
        streams = self.writer.streams
        messages: list[tuple[bytes, bytes]] = []
        for row, obs_id in zip(written.new, written.ids, strict=False):
            info = streams.get(row[0])
            kind = "MultiDatastreams" if info is not None and info.kind == "multi" else "Datastreams"
            topic = f"v1.1/{kind}({row[0]})/Observations".encode()
            messages.append((topic, orjson.dumps(ingest.observation_json(row, obs_id, self.base_url))))
            if len(messages) >= 1000:
                client.publish_many(messages)
                self.counters.fanned_out += len(messages)
                messages = []
        client.publish_many(messages)
        self.counters.fanned_out += len(messages)
