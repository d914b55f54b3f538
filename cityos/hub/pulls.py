"""Scheduled pulls (定时采集): fetch a resource's data from a department's URL every N minutes.

A pull runs with the rights of the user who scheduled it (their department, 一数一源), so a
pull can never write what its creator could not upload by hand; if that user is gone or
deactivated, the pull fails and says so. `pull_run_due` is what `cityos hub pull --due` (cron)
runs: each due pull is claimed by moving its next run forward first, so overlapping runs do
not fetch twice; a download or load failure is recorded on the pull and never raised.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cityos.core import access, audit, auth
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.errors import CityOSError, Invalid, NotFound
from cityos.core.models import User
from cityos.hub import loading
from cityos.hub.models import PullSchedule, Resource
from cityos.hub.service import resource_by_code, resource_target

log = logging.getLogger("cityos.hub.pulls")
FORMATS = ("csv", "xlsx", "json", "ndjson")
MODES = ("replace", "upsert")
TIMEOUT = httpx.Timeout(30.0, read=120.0)
MAX_BYTES = 1024 * 1024 * 1024
CHUNK = 1024 * 1024


class PullFailed(Exception):
    """A download failed: bad status, too large, refused scheme, network error."""


@dataclass
class PullOutcome:
    """What one due pull did: its id, resource, whether it loaded, and the recorded status."""

    pull_id: int
    resource: str
    ok: bool
    status: str
    version: int | None = None


def _check(url: str, fmt: str, every_minutes: int, mode: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url", "only http:// and https:// URLs can be pulled / 仅支持 http/https 地址")
    if len(url) > 1000:
        raise Invalid("url", "URL longer than 1000 characters / 地址过长")
    if fmt not in FORMATS:
        raise Invalid("format", f"must be one of {', '.join(FORMATS)} / 格式须为 {'/'.join(FORMATS)}")
    if mode not in MODES:
        raise Invalid("mode", "mode must be replace or upsert / 模式须为 replace 或 upsert")
    if not 1 <= every_minutes <= 366 * 24 * 60:
        raise Invalid("every_minutes", "between 1 minute and a year / 间隔须在1分钟至1年之间")


def pull_create(session: Session, actor: Actor, code: str, *, url: str, format: str,
                every_minutes: int, mode: str = "replace", first_run_at: dt.datetime | None = None
                ) -> PullSchedule:
    """Schedule a pull of a resource's data from a URL; the first run is due at once."""
    res = resource_by_code(session, code)
    access.require(actor, "hub.data.load", resource_target(res), session)
    _check(url, format, every_minutes, mode)
    if actor.kind != "user":
        raise Invalid("actor", "a pull runs as the user who schedules it: sign in as a user "
                               "/ 定时采集以创建者身份运行，须以用户身份创建")
    pull = PullSchedule(resource_id=res.id, url=url, format=format, mode=mode,
                        every_minutes=every_minutes, next_run_at=first_run_at or utcnow(),
                        created_by=actor.name)
    session.add(pull)
    session.flush()
    audit.append(session, actor=actor.name, action="hub.pull.create", department=res.department.code,
                 object_type="hub.pull", object_id=pull.id,
                 detail={"resource": res.code, "url": _safe_url(url), "every_minutes": every_minutes})
    return pull


def pull_list(session: Session, actor: Actor, code: str) -> list[PullSchedule]:
    """A resource's scheduled pulls (their URLs may name internal systems: loaders only)."""
    res = resource_by_code(session, code)
    access.require(actor, "hub.data.load", resource_target(res), session)
    return list(session.scalars(select(PullSchedule).where(PullSchedule.resource_id == res.id)
                                .order_by(PullSchedule.id)))


def pull_delete(session: Session, actor: Actor, pull_id: int) -> None:
    """Remove a scheduled pull."""
    pull = session.get(PullSchedule, pull_id)
    if pull is None:
        raise NotFound("pull", pull_id)
    res = session.get(Resource, pull.resource_id)
    assert res is not None
    access.require(actor, "hub.data.load", resource_target(res), session)
    session.delete(pull)
    audit.append(session, actor=actor.name, action="hub.pull.delete", department=res.department.code,
                 object_type="hub.pull", object_id=pull_id, detail={"resource": res.code})


def pull_public(pull: PullSchedule, code: str) -> dict[str, Any]:
    """A pull as the API shows it."""
    return {
        "id": pull.id, "resource": code, "url": pull.url, "format": pull.format, "mode": pull.mode,
        "every_minutes": pull.every_minutes, "active": pull.active, "created_by": pull.created_by,
        "next_run_at": pull.next_run_at.isoformat(),
        "last_run_at": pull.last_run_at.isoformat() if pull.last_run_at else None,
        "last_status": pull.last_status,
    }


def _safe_url(url: str) -> str:
    """The URL without credentials or query string, for logs and the audit record."""
    p = urlsplit(url)
    host = p.hostname or ""
    return f"{p.scheme}://{host}{f':{p.port}' if p.port else ''}{p.path}"


def download(client: httpx.Client, url: str, target: Path, max_bytes: int = MAX_BYTES) -> int:
    """Stream `url` into `target` (http/https only, size-limited); return the bytes written."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise PullFailed("only http and https can be pulled / 仅支持 http/https")
    written = 0
    try:
        with client.stream("GET", url, timeout=TIMEOUT) as r, target.open("wb") as out:
            if r.status_code != 200:
                raise PullFailed(f"HTTP {r.status_code} from the source / 数据源返回 {r.status_code}")
            declared = r.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise PullFailed(f"larger than {max_bytes} bytes / 文件过大")
            for chunk in r.iter_bytes(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise PullFailed(f"larger than {max_bytes} bytes / 文件过大")
                out.write(chunk)
    except httpx.HTTPError as exc:
        raise PullFailed(f"download failed: {type(exc).__name__} / 下载失败") from exc
    return written


def _creator(session: Session, username: str) -> Actor:
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.is_active:
        raise PullFailed(f"user {username} who scheduled the pull is no longer active / 创建者已停用")
    return auth.user_actor(user)


def _claim(sessions: sessionmaker[Session], now: dt.datetime) -> list[int]:
    """Take the due pulls: push each one's next run forward before it runs."""
    with sessions() as session, session.begin():
        q = (select(PullSchedule).where(PullSchedule.active.is_(True), PullSchedule.next_run_at <= now)
             .order_by(PullSchedule.next_run_at).with_for_update(skip_locked=True))
        due = list(session.scalars(q))
        for pull in due:
            pull.next_run_at = now + dt.timedelta(minutes=pull.every_minutes)
        return [p.id for p in due]


def _run_one(sessions: sessionmaker[Session], pull_id: int, now: dt.datetime, client: httpx.Client,
             tmp_dir: Path | None, max_bytes: int) -> PullOutcome:
    with sessions() as session:
        pull = session.get(PullSchedule, pull_id)
        assert pull is not None
        res = session.get(Resource, pull.resource_id)
        assert res is not None
        code, url, fmt, mode, creator = res.code, pull.url, pull.format, pull.mode, pull.created_by
    version: int | None = None
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="pull-", suffix=f".{fmt}", dir=tmp_dir)
    os.close(fd)
    path = Path(name)
    try:
        size = download(client, url, path, max_bytes)
        with sessions() as session:
            try:
                actor = _creator(session, creator)
                with path.open("rb") as stream:
                    result = loading.load_file(
                        session, actor, code, stream, fmt, mode=mode, filename=_safe_url(url),
                        total_bytes=size, source="pull")
                session.commit()
            except BaseException:
                session.rollback()
                raise
        d = result.as_dict()
        version = d["version"]
        status = (f"ok: version {version}, {d['rows_in']} rows, +{d['added']} ~{d['changed']} "
                  f"-{d['removed']} / 成功")
        ok = True
    except (PullFailed, CityOSError) as exc:
        status, ok = f"failed: {exc} / 采集失败", False
    except Exception as exc:  # a pull never takes the scheduler down; the cause is logged
        log.exception("pull %s of %s failed", pull_id, code)
        status, ok = f"failed: {type(exc).__name__} / 采集失败", False
    finally:
        path.unlink(missing_ok=True)
    with sessions() as session, session.begin():
        pull = session.get(PullSchedule, pull_id)
        if pull is not None:
            pull.last_run_at, pull.last_status = now, status[:2000]
    log.info("pull %s of %s by %s: %s", pull_id, code, creator, status)
    return PullOutcome(pull_id, code, ok, status, version)


def pull_run_due(sessions: sessionmaker[Session], now: dt.datetime | None = None,
                 client: httpx.Client | None = None, *, tmp_dir: Path | None = None,
                 max_bytes: int = MAX_BYTES) -> list[PullOutcome]:
    """Run every pull that is due (the `cityos hub pull --due` cron job); never raises for a pull."""
    now = now or utcnow()
    own = client is None
    client = client or httpx.Client(follow_redirects=False, timeout=TIMEOUT)
    try:
        return [_run_one(sessions, pid, now, client, tmp_dir, max_bytes) for pid in _claim(sessions, now)]
    finally:
        if own:
            client.close()
