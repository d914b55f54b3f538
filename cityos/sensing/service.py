"""Sensing operations (城市感知) for the other engines and the apps: the one module they import.

Plain functions `(session, actor, ...) -> result`. A Thing belongs to a department; its
Datastreams, readings, rules and alerts follow it. Staff read and write their own department's
devices, department admins their subtree, platform admins everything; devices themselves sign
in with a per-device key and may only write readings to their own streams.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import access, audit
from cityos.core.access import ALL, DEPARTMENT_STAFF, OWN, SUBTREE, Actor, Target
from cityos.core.errors import Forbidden, Invalid, NotFound
from cityos.core.models import Department
from cityos.sensing import broker
from cityos.sensing.models import Datastream, Thing

access.define("sensing.read", "Read devices, datastreams and readings (感知数据查看)",
              department_admin=SUBTREE, department_staff=OWN, auditor=ALL)
access.define("sensing.write", "Register and change devices and datastreams (设备管理)",
              department_admin=SUBTREE, department_staff=OWN)
access.define("sensing.observation.create", "Send readings (上报观测数据)",
              department_admin=SUBTREE, department_staff=OWN)
access.define("sensing.rule.write", "Write alert rules and webhooks (告警规则)",
              department_admin=SUBTREE, department_staff=OWN)
access.define("sensing.alert.handle", "Acknowledge and resolve alerts (告警处置)",
              department_admin=SUBTREE, department_staff=OWN)

DEVICE_PREFIX = "dev"  # device keys look like dev_3f9a1c0b2d4e


def thing_target(thing: Thing | Datastream, path: str | None = None) -> Target:
    """The access target of a Thing or a Datastream (both carry their department)."""
    kind = "sensing.thing" if isinstance(thing, Thing) else "sensing.datastream"
    return Target(kind=kind, id=thing.id, department_id=thing.department_id,
                  department_path=path if path is not None else _path(thing))


def _path(row: Thing | Datastream) -> str | None:
    dept = getattr(row, "department", None)
    if dept is not None:
        return dept.path  # type: ignore[no-any-return]
    return None


def department_target(session: Session, department_id: int, kind: str = "sensing.thing") -> Target:
    dept = session.get(Department, department_id)
    return Target(kind=kind, department_id=department_id, department_path=dept.path if dept else None)


def readable_departments(session: Session, actor: Actor) -> list[int] | None:
    """Departments whose devices `actor` may read; None means every department."""
    reach = access.reach_of(actor, "sensing.read")
    if reach is None:
        return []
    if reach == ALL:
        return None
    if actor.department_id is None:
        return []
    if reach == OWN:
        return [actor.department_id]
    prefix = actor.department_path or "/-"
    rows = session.execute(select(Department.id).where(Department.path.startswith(prefix)))
    return [r for (r,) in rows]


# -- device credentials (设备凭证) -----------------------------------------------------------


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def device_issue(session: Session, actor: Actor, thing: Thing) -> tuple[str, str]:
    """Give a Thing a new device key and secret (the secret is shown once; only its hash is kept).
    Issuing again replaces the old secret, which stops working at once."""
    access.require(actor, "sensing.write", thing_target(thing, thing.department.path), session)
    if not thing.device_key:
        thing.device_key = f"{DEVICE_PREFIX}_{secrets.token_hex(6)}"
    secret = secrets.token_urlsafe(24)
    thing.secret_hash = _secret_hash(secret)
    # Mosquitto checks the same secret with its own salted PBKDF2 hash (its password file).
    thing.broker_hash = broker.mosquitto_hash(secret)
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="sensing.device.credential", object_type="sensing.thing", object_id=thing.id,
                 detail={"device": thing.device_key})
    session.flush()
    _device_cache.pop(thing.device_key, None)
    return thing.device_key, secret


_device_cache: dict[str, tuple[str, Actor]] = {}
_device_lock = threading.Lock()


def device_actor(session: Session, device_key: str, secret: str) -> Actor | None:
    """The actor of a device's credentials, or None. Devices may only send readings."""
    with _device_lock:
        hit = _device_cache.get(device_key)
    digest = _secret_hash(secret)
    if hit is not None and hmac.compare_digest(hit[0], digest):
        return hit[1]
    row = session.execute(
        select(Thing.id, Thing.secret_hash, Department)
        .join(Department, Department.id == Thing.department_id).where(Thing.device_key == device_key)
    ).first()
    if row is None or row.secret_hash is None or not hmac.compare_digest(row.secret_hash, digest):
        return None
    dept = row.Department
    actor = Actor(kind="device", name=f"device:{device_key}", role=DEPARTMENT_STAFF, department_id=dept.id,
                  department_code=dept.code, department_path=dept.path,
                  scopes=frozenset({"sensing.observation.create"}))
    with _device_lock:
        if len(_device_cache) > 100_000:
            _device_cache.clear()
        _device_cache[device_key] = (digest, actor)
    return actor


def device_key_of(actor: Actor) -> str | None:
    """The device key of a device actor, else None."""
    return actor.name.removeprefix("device:") if actor.kind == "device" else None


def forget_device(device_key: str | None) -> None:
    if device_key:
        with _device_lock:
            _device_cache.pop(device_key, None)


def check_stream_write(session: Session | None, actor: Actor, info: Any) -> None:
    """May `actor` send readings to the stream `info` (an `ingest.StreamInfo`)? A device only to
    its own streams; anyone else by role within the stream's department."""
    device = device_key_of(actor)
    if device is not None:
        if info.device_key != device:
            raise Forbidden(f"device {device} may not write to Datastream({info.id}) of another device / "
                            "设备无权写入其他设备的数据流")
        return
    target = Target(kind="sensing.datastream", id=info.id, department_id=info.department_id,
                    department_path=info.department_path)
    access.require(actor, "sensing.observation.create", target, session)


def thing_get(session: Session, actor: Actor, thing_id: int) -> Thing:
    thing = session.get(Thing, thing_id)
    if thing is None:
        raise NotFound("Thing / 设备", thing_id)
    access.require(actor, "sensing.read", thing_target(thing, thing.department.path), session)
    return thing


def datastream_settings(session: Session, actor: Actor, datastream_id: int,
                        changes: dict[str, Any]) -> Datastream:
    """Set a stream's retention (保留期, days of raw readings kept; None keeps all) and its expected
    reporting interval (上报周期, seconds; what "offline" and no-data rules count in)."""
    ds = session.get(Datastream, datastream_id)
    if ds is None:
        raise NotFound("Datastream / 数据流", datastream_id)
    dept = session.get(Department, ds.department_id)
    target = thing_target(ds, dept.path if dept else None)
    if not access.decide(actor, "sensing.read", target, session).allowed:
        raise NotFound("Datastream / 数据流", datastream_id)  # another department's: as if absent
    access.require(actor, "sensing.write", target, session)
    unknown = set(changes) - {"retention_days", "interval_seconds"}
    if unknown:
        raise Invalid(sorted(unknown)[0], "unknown field / 未知字段")
    for name, low, high in (("retention_days", 1, 36_500), ("interval_seconds", 1, 86_400 * 7)):
        if name not in changes:
            continue
        value = changes[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not low <= value <= high):
            raise Invalid(name, f"an integer from {low} to {high}, or null / "
                                f"应为 {low} 至 {high} 的整数或 null")
        setattr(ds, name, value)
    audit.append(session, actor=actor.name, department=actor.department_code,
                 action="sensing.datastream.settings", object_type="sensing.datastream", object_id=ds.id,
                 detail=dict(changes))
    session.flush()
    return ds


# -- for the operations center (plan) -------------------------------------------------------------


def things_online(session: Session, kinds: list[str], within_ms: int = 3_600_000,
                  now_ms: int | None = None) -> dict[str, int]:
    """Things of these kinds, and how many reported within `within_ms` of now (在线监测率)."""
    import time

    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    rows = session.execute(select(Thing.last_seen_at).where(Thing.kind.in_(kinds))).all()
    online = sum(1 for (seen,) in rows if seen is not None and seen >= now_ms - within_ms)
    return {"things": len(rows), "online": online}


# -- for the operations center (screen) -----------------------------------------------------------


def alert_counts(session: Session) -> dict[str, Any]:
    """Unresolved sensing alerts across the city (未处置告警): by severity, and how many are still
    open (not yet acknowledged). One grouped query, for the operations center's big screen."""
    from sqlalchemy import func

    from cityos.sensing.models import Alert

    rows = session.execute(select(Alert.severity, Alert.state, func.count())
                           .where(Alert.state.in_(("open", "acknowledged")))
                           .group_by(Alert.severity, Alert.state)).all()
    by_severity = {"critical": 0, "warning": 0, "info": 0}
    states = {"open": 0, "acknowledged": 0}
    for severity, state, n in rows:
        by_severity[severity] = by_severity.get(severity, 0) + int(n)
        states[state] += int(n)
    return {"by_severity": by_severity, **states, "total": states["open"] + states["acknowledged"]}


# -- for the operations center (indicators) --------------------------------------------------
# Cheap city-wide figures for the operations center's vital signs (运行体征): they read the
# streams' own latest-value summary and the things' last contact, never the history of readings.


def _property_ids(session: Session, property_code: str) -> list[int]:
    from cityos.sensing.models import ObservedProperty

    rows = session.execute(select(ObservedProperty.id, ObservedProperty.name, ObservedProperty.definition,
                                  ObservedProperty.properties)).all()
    return [r.id for r in rows if property_code in ((r.properties or {}).get("code"), r.name, r.definition)]


def latest_values(session: Session, property_code: str, kind: str | None = None,
                  max_age_s: float | None = None, now_ms: int | None = None,
                  thing_ids: Collection[int] | None = None) -> list[float]:
    """The newest numeric reading of every stream of an observed property (by its code, name or
    definition), optionally only of things of `kind` or among `thing_ids`; readings older than
    `max_age_s` do not count."""
    from cityos.sensing import ingest
    from cityos.sensing.models import Datastream

    ids = _property_ids(session, property_code)
    if not ids:
        return []
    q = select(Datastream.last_value).where(Datastream.observed_property_id.in_(ids),
                                            Datastream.last_value.is_not(None))
    if max_age_s is not None:
        now = now_ms if now_ms is not None else ingest.now_ms()
        q = q.where(Datastream.last_time >= now - int(max_age_s * 1000))
    if kind:
        q = q.where(Datastream.thing_id.in_(select(Thing.id).where(Thing.kind == kind)))
    if thing_ids is not None:
        q = q.where(Datastream.thing_id.in_(list(thing_ids)))
    return [float(v) for (v,) in session.execute(q)]


def alerts_open_count(session: Session, severity: str | None = None,
                      thing_ids: Collection[int] | None = None) -> int:
    """Unresolved alerts (open or acknowledged) city-wide, optionally of one severity or of `thing_ids`."""
    from sqlalchemy import func

    from cityos.sensing.models import Alert

    q = select(func.count()).select_from(Alert).where(Alert.state != "resolved")
    if severity:
        q = q.where(Alert.severity == severity)
    if thing_ids is not None:
        q = q.where(Alert.thing_id.in_(list(thing_ids)))
    return int(session.scalar(q) or 0)


def online_rate(session: Session, minutes: float = 15, kind: str | None = None,
                now_ms: int | None = None, thing_ids: Collection[int] | None = None) -> float | None:
    """Percent of things (of `kind`) that reported within the last `minutes`; None without things."""
    from sqlalchemy import case, func

    from cityos.sensing import ingest

    now = now_ms if now_ms is not None else ingest.now_ms()
    recent = case((Thing.last_seen_at >= now - int(minutes * 60_000), 1), else_=0)
    q = select(func.count(), func.sum(recent)).select_from(Thing)
    if kind:
        q = q.where(Thing.kind == kind)
    if thing_ids is not None:
        q = q.where(Thing.id.in_(list(thing_ids)))
    total, online = session.execute(q).one()
    return 100.0 * int(online or 0) / int(total) if total else None


def thing_points(session: Session) -> dict[int, tuple[float, float]]:
    """Every located thing's first location as (lon, lat): where it measures (for district figures)."""
    from sqlalchemy import func

    from cityos.sensing.models import Location, thing_locations

    first = (select(thing_locations.c.thing_id, func.min(thing_locations.c.location_id).label("loc"))
             .group_by(thing_locations.c.thing_id).subquery())
    rows = session.execute(select(first.c.thing_id, Location.lon, Location.lat)
                           .join(Location, Location.id == first.c.loc)
                           .where(Location.lon.is_not(None), Location.lat.is_not(None)))
    return {int(r.thing_id): (float(r.lon), float(r.lat)) for r in rows}


def thing_point(session: Session, thing_id: int) -> tuple[float, float] | None:
    """A thing's first location as (lon, lat), if it has one (where an alert happened)."""
    from cityos.sensing.models import Location, thing_locations

    row = session.execute(select(Location.lon, Location.lat)
                          .join(thing_locations, thing_locations.c.location_id == Location.id)
                          .where(thing_locations.c.thing_id == thing_id)
                          .order_by(Location.id).limit(1)).first()
    if row is None or row.lon is None or row.lat is None:
        return None
    return float(row.lon), float(row.lat)


def rule_code_of(session: Session, rule_id: int) -> str | None:
    """The name of an alert rule (sensing rules have no code; the name is what people match on)."""
    from cityos.sensing.models import Rule

    return session.scalar(select(Rule.name).where(Rule.id == rule_id))
