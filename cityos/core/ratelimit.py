"""Rate limits (限流): sign-in per client address, the public APIs per address or per credential.

One ASGI middleware, so every limited route is limited the same way. Three limits (settings):

- `rate_limit_login`: POST /api/auth/token and the console's sign-in form, per client address.
  The same limit counts answers 401 to requests that carried credentials (a wrong HTTP Basic
  password, a made-up token); once it is used up, that address's unproven credentials get 429.
- `rate_limit_anonymous`: /api, CKAN, /ogc, /sta, /open311 and /data without credentials, per
  client address.
- `rate_limit_key`: the same routes per credential (API key, bearer token, Basic pair, console
  session), keyed by a hash of it, never the secret. A credential is counted as itself once a
  request has proven it (the app resolved it to a signed-in actor); until then its requests
  count as its address's, so made-up credentials cannot buy fresh limits.

Device ingest (/api/sensing/observations, device readings, STA Observations) is not limited
here: it has its own backpressure (429 when the writer's queue is full).

Counts live in `limits` storage with the moving-window strategy: memory:// for one worker, any
other `limits` URI (redis://...) to share counts between workers. If the storage fails, requests
are let through for a few seconds and the failure is logged: a broken limiter must not take the
city offline.
The client address is the socket peer; X-Forwarded-For is believed only from `trusted_proxies`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.core import i18n
from cityos.core.settings import Settings

log = logging.getLogger("cityos.ratelimit")

LOGIN_PATHS = frozenset({"/api/auth/token", "/console/login"})
PUBLIC = re.compile(r"/(api|ogc|sta|open311|data)(/.*)?|/catalog\.[^/]+|/dataset/.+")
# Readings from devices and gateways: never limited here (POST only).
INGEST = re.compile(r"/api/sensing/(observations|devices/[^/]+/readings)"
                    r"|/sta/v1\.1/(.+/)?(Observations|CreateObservations)")
SESSION_COOKIE = "cityos_session"  # core.web's; not imported, web imports this module
_MAX_PROVEN = 10_000
_PROVEN_SECONDS = 300.0
_WARN_EVERY = 60.0
_DOWN_SECONDS = 10

# Standards answer a 429 in their own error format: a path prefix and the answer's maker.
Shape = Callable[[Request, str], Response]
SHAPES: list[tuple[str, Shape]] = []


def answer_in(prefix: str, shape: Shape) -> None:
    """Make 429s under `prefix` with `shape(request, detail)` (CKAN, Open311); others are RFC 9457."""
    SHAPES.append((prefix, shape))


@dataclass(frozen=True)
class Limit:
    """One configured limit: its name (login|anonymous|key|failures) and its rate."""

    name: str
    item: RateLimitItem
    text: str


@dataclass
class Verdict:
    allowed: bool
    limit: Limit
    remaining: int
    reset: int  # seconds until the window has room again


def _limit(name: str, text: str) -> Limit | None:
    return None if text == "off" else Limit(name, parse(text), text)


class _Counter:
    """The moving-window limiter over its storage: memory in-process (no I/O, called directly),
    anything else through `limits`' asyncio storage."""

    def __init__(self, uri: str) -> None:
        scheme = uri.split("://", 1)[0]
        self.sync: MovingWindowRateLimiter | None = None
        self.aio: AsyncMovingWindow | None = None
        if scheme == "memory":
            self.sync = MovingWindowRateLimiter(MemoryStorage())
        else:
            async_uri = uri if scheme.startswith("async+") else f"async+{uri}"
            # A Redis that hangs must not hang requests: give up after a second (then fail open).
            plain = async_uri.split("://", 1)[0] in ("async+redis", "async+rediss", "async+redis+unix")
            options = {"connect_timeout": 1.0, "stream_timeout": 1.0} if plain else {}
            self.aio = AsyncMovingWindow(storage_from_string(async_uri, **options))

    async def hit(self, limit: Limit, *ids: str) -> bool:
        if self.sync is not None:
            return self.sync.hit(limit.item, "cityos", *ids)
        assert self.aio is not None
        return await self.aio.hit(limit.item, "cityos", *ids)

    async def test(self, limit: Limit, *ids: str) -> bool:
        if self.sync is not None:
            return self.sync.test(limit.item, "cityos", *ids)
        assert self.aio is not None
        return await self.aio.test(limit.item, "cityos", *ids)

    async def verdict(self, allowed: bool, limit: Limit, *ids: str) -> Verdict:
        """What is left of `limit` and when it has room again."""
        if self.sync is not None:
            stats = self.sync.get_window_stats(limit.item, "cityos", *ids)
        else:
            assert self.aio is not None
            stats = await self.aio.get_window_stats(limit.item, "cityos", *ids)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return Verdict(allowed, limit, stats.remaining, reset if allowed else max(1, reset))


def _credential(scope: Scope) -> str | None:
    """A short hash naming the credential a request carries (Authorization, X-API-Key or the
    console session), or None. Never the credential itself: it is only ever hashed."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)
    found = headers.get(b"authorization") or headers.get(b"x-api-key")
    if not found and SESSION_COOKIE.encode() in headers.get(b"cookie", b""):
        for part in headers[b"cookie"].split(b";"):
            key, _, cookie = part.strip().partition(b"=")
            if key == SESSION_COOKIE.encode() and cookie:
                found = b"cookie:" + cookie
    return hashlib.sha256(found).hexdigest()[:32] if found else None


def _networks(items: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(i, strict=False) for i in items]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _bucket(address: str) -> str:
    """An IPv4 address as it is; an IPv6 one by its /64, the block a single subscriber is given
    (counting each of its addresses apart would give one client 2**64 limits)."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


class RateLimit:
    """The rate-limiting middleware (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.login = _limit("login", settings.rate_limit_login)
        self.failures = _limit("failures", settings.rate_limit_login)
        self.anonymous = _limit("anonymous", settings.rate_limit_anonymous)
        self.key = _limit("key", settings.rate_limit_key)
        self.counter = _Counter(settings.rate_limit_storage)
        self.proxies = _networks(settings.trusted_proxies)
        self.proven: dict[str, float] = {}  # credential hash -> until when it counts as itself
        self.warned = self.down_until = 0.0

    def client(self, scope: Scope) -> str:
        """Whom a per-address limit counts: the socket peer, or X-Forwarded-For's nearest address
        that is not a trusted proxy when the peer is one."""
        peer = str((scope.get("client") or ("unknown", 0))[0])
        address = _ip(peer)
        if address is None or not any(address in n for n in self.proxies):
            return _bucket(peer)
        forwarded = b",".join(v for k, v in scope["headers"] if k == b"x-forwarded-for").decode("latin-1")
        for hop in reversed([h for h in forwarded.split(",") if h.strip()]):
            hop_ip = _ip(hop)
            if hop_ip is None:
                break
            peer = str(hop_ip)
            if not any(hop_ip in n for n in self.proxies):
                break
        return _bucket(peer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path in LOGIN_PATHS:
            await self._login(scope, receive, send)
        elif PUBLIC.fullmatch(path) and not (method == "POST" and INGEST.fullmatch(path)):
            await self._public(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _hit(self, limit: Limit | None, *ids: str) -> Verdict | None:
        """Count a request against `limit`; None when it is off or the storage failed."""
        if limit is None or time.monotonic() < self.down_until:
            return None
        try:
            return await self.counter.verdict(await self.counter.hit(limit, *ids), limit, *ids)
        except Exception:  # fail open: a broken storage must not refuse the whole city
            self._down()
            return None

    async def _used_up(self, limit: Limit | None, *ids: str) -> Verdict | None:
        """The refusal when `limit` has no room left (this request is not counted), else None."""
        if limit is None or time.monotonic() < self.down_until:
            return None
        try:
            if await self.counter.test(limit, *ids):
                return None
            return await self.counter.verdict(False, limit, *ids)
        except Exception:
            self._down()
            return None

    def _down(self) -> None:
        """The storage failed: let requests through unlimited for a while, and say so (not on
        every request)."""
        self.down_until = time.monotonic() + _DOWN_SECONDS
        if time.monotonic() - self.warned > _WARN_EVERY:
            self.warned = time.monotonic()
            log.exception("rate-limit storage failed; requests are let through for %d s", _DOWN_SECONDS)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        verdict = await self._hit(self.login, "login", self.client(scope))
        if verdict is not None and not verdict.allowed:
            await self._refuse(scope, receive, send, verdict)
            return
        await self.app(scope, receive, _with_headers(send, verdict))

    async def _public(self, scope: Scope, receive: Receive, send: Send) -> None:
        ip, cred = self.client(scope), _credential(scope)
        proven = cred is not None and self.proven.get(cred, 0.0) > time.monotonic()
        verdict = None
        if proven:
            verdict = await self._hit(self.key, "key", cred or "")
        elif cred is not None:  # not proven yet: refused while its address fails too often
            verdict = await self._used_up(self.failures, "failures", ip)
        if verdict is None and not proven:
            verdict = await self._hit(self.anonymous, "anonymous", ip)
        if verdict is not None and not verdict.allowed:
            await self._refuse(scope, receive, send, verdict)
            return
        state = scope.setdefault("state", {})
        status = [0]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _with_headers(watch, verdict))
        finally:
            if cred is not None:
                await self._learn(cred, ip, proven, status[0], state.get("actor"))

    async def _learn(self, cred: str, ip: str, proven: bool, status: int, actor: Any) -> None:
        """After the answer: a 401 counts against the address and unproves the credential; a
        credential the app resolved to someone counts as itself from now on (this request too)."""
        if status == 401:
            self.proven.pop(cred, None)
            await self._hit(self.failures, "failures", ip)
        elif actor is not None and getattr(actor, "authenticated", False) and not proven:
            if len(self.proven) >= _MAX_PROVEN:
                self.proven.clear()
            self.proven[cred] = time.monotonic() + _PROVEN_SECONDS
            await self._hit(self.key, "key", cred)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, verdict: Verdict) -> None:
        request = Request(scope, receive)
        headers = {"Retry-After": str(max(1, verdict.reset)), **_header_values(verdict)}
        response = _answer(request, verdict)
        response.headers.update(headers)
        await response(scope, receive, send)


def _header_values(verdict: Verdict) -> dict[str, str]:
    """draft-ietf-httpapi-ratelimit-headers: the limit, what is left, seconds until it resets."""
    return {"RateLimit-Limit": str(verdict.limit.item.amount),
            "RateLimit-Remaining": str(max(0, verdict.remaining)),
            "RateLimit-Reset": str(verdict.reset)}


def _with_headers(send: Send, verdict: Verdict | None) -> Send:
    if verdict is None:
        return send
    extra = [(k.lower().encode(), v.encode()) for k, v in _header_values(verdict).items()]

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return sender


def _message(verdict: Verdict, lang: str) -> str:
    return i18n.t(f"ratelimit.{verdict.limit.name}", lang, limit=verdict.limit.text,
                  seconds=max(1, verdict.reset))


def _answer(request: Request, verdict: Verdict) -> Response:
    """The 429: a page for the console's sign-in form and browsers, the standard's own shape
    where one registered, else an RFC 9457 problem document in both languages."""
    path = request.url.path
    browser = not path.startswith("/api/") and "text/html" in request.headers.get("accept", "")
    if path == "/console/login" or browser:
        platform = request.app.state.platform
        lang = i18n.pick(request.query_params.get("lang"), request.cookies.get("cityos_lang"),
                         request.headers.get("accept-language"), platform.settings.default_language)
        return platform.templates.TemplateResponse(  # type: ignore[no-any-return]
            request, "error.html",
            {"status": 429, "title": i18n.t("ratelimit.title", lang), "detail": _message(verdict, lang),
             "lang": lang},
            status_code=429, headers={"Cache-Control": "no-store"})
    detail = f"{_message(verdict, 'en')} / {_message(verdict, 'zh-CN')}"
    for prefix, shape in SHAPES:
        if path.startswith(prefix):
            return shape(request, detail)
    body = {"type": "/problems/too-many-requests",
            "title": f"{i18n.t('ratelimit.title', 'zh-CN')} / {i18n.t('ratelimit.title', 'en')}",
            "status": 429, "detail": detail, "instance": path, "limit": verdict.limit.name,
            "retry_after": max(1, verdict.reset)}
    return Response(orjson.dumps(body), status_code=429, media_type="application/problem+json")
