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
