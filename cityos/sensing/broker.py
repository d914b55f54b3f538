"""Broker credentials (MQTT 设备接入凭证): Mosquitto's password and ACL files, made from the database.

Devices sign in to the broker with their device key and secret. CityOS keeps only the SHA-256 of a
secret (`service.device_issue`), which Mosquitto cannot check: its password file wants its own
PBKDF2-SHA512 hash (`$7$<iterations>$<salt>$<hash>`, as `mosquitto_passwd` writes). So that hash is
made when the secret is issued (`mosquitto_hash`) and kept with the Thing (`Thing.broker_hash`).

The ACL lets a device publish only to its own topics: the compact `cityos/devices/<key>/<stream>`
and the SensorThings `v1.1/Datastreams(<id>)/Observations` of its own streams. The bridge still
checks a compact topic's stream against its key. Everyone signed in may read `v1.1/#`, the
SensorThings fan-out. Mosquitto reads both files again on SIGHUP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.sensing.models import Datastream, Thing

log = logging.getLogger("cityos.sensing.broker")

ITERATIONS = 101  # mosquitto_passwd's default for sha512-pbkdf2 (Mosquitto 2.0)
SALT_BYTES = 12
PASSWORD_FILE = "cityos.passwd"
ACL_FILE = "cityos.acl"
SERVICE_USER = "cityos-ingest"
_USERNAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # no ':' (password file), no '+#/' (ACL patterns)


def mosquitto_hash(secret: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Mosquitto's PBKDF2-SHA512 password hash of `secret`, "$7$101$<salt b64>$<hash b64>"."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_verify(secret: str, hashed: str) -> bool:
    """Does `secret` match a "$7$" hash (ours or mosquitto_passwd's)?"""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = mosquitto_hash(secret, salt=base64.b64decode(salt), iterations=int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(expected.rsplit("$", 1)[1], digest)


def device_password_line(device_key: str, secret: str) -> str:
    """A password-file line for a device; call at issue time, when the secret is known."""
    if not _USERNAME.fullmatch(device_key):
        raise ValueError(f"device key {device_key!r} cannot be a broker user name")
    return f"{device_key}:{mosquitto_hash(secret)}"


def _topic(kind: str, datastream_id: int) -> str:
    return f"v1.1/{'MultiDatastreams' if kind == 'multi' else 'Datastreams'}({datastream_id})/Observations"


def auth_lines(session: Session, *, service_user: str = SERVICE_USER, service_hash: str | None = None,
               hashes: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(password file lines, ACL file lines) for every Thing with a device key and a broker hash.

    `hashes` (device key → mosquitto hash) overrides the Things' `broker_hash` column."""
    column = getattr(Thing, "broker_hash", None)  # the column the lead adds; until then, `hashes`
    cols = [Thing.device_key] if column is None else [Thing.device_key, column]
    known: dict[str, str] = {}
    for row in session.execute(select(*cols).where(Thing.device_key.is_not(None)).order_by(Thing.device_key)):
        key = row[0]
        hashed = (hashes or {}).get(key) or (row[1] if column is not None else None)
        if not hashed:
            continue  # no broker credential yet: the device cannot sign in until it is issued one
        if not _USERNAME.fullmatch(key):
            log.warning("device key %r cannot be a broker user name; left out", key)
            continue
        known[key] = hashed
    streams: dict[str, list[str]] = {}
    rows = session.execute(select(Thing.device_key, Datastream.id, Datastream.kind)
                           .join(Thing, Thing.id == Datastream.thing_id)
                           .where(Thing.device_key.is_not(None)).order_by(Datastream.id))
    for key, ds_id, kind in rows:
        if key in known:
            streams.setdefault(key, []).append(_topic(kind, ds_id))

    passwords = [f"{key}:{hashed}" for key, hashed in known.items()]
    acl = [
        "# Written by CityOS (cityos.sensing.broker); regenerate rather than edit.",
        "# Everyone signed in may read the SensorThings topics (new observations).",
        "pattern read v1.1/#",
        "# A device publishes compact readings only under its own key.",
        "pattern write cityos/devices/%u/+",
        "",
    ]
    if service_hash:
        passwords.insert(0, f"{service_user}:{service_hash}")
    acl += [f"user {service_user}", "topic readwrite v1.1/#", "topic read cityos/devices/#", ""]
    for key in known:
        acl.append(f"user {key}")
        acl += [f"topic write {t}" for t in streams.get(key, [])]
        acl.append("")
    return passwords, acl


def _write(path: Path, lines: list[str]) -> None:
    # Written beside and renamed over, so Mosquitto never reads half a file on SIGHUP.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def write_auth_files(session: Session, directory: str | os.PathLike[str], *, service_user: str = SERVICE_USER,
                     service_password: str | None = None,
                     hashes: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """Write Mosquitto's password file and ACL file for CityOS's service user and every device
    with broker credentials; returns (password_file, acl_file). Send Mosquitto SIGHUP after."""
    if not _USERNAME.fullmatch(service_user):
        raise ValueError(f"{service_user!r} cannot be a broker user name")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    passwords, acl = auth_lines(session, service_user=service_user, hashes=hashes,
                                service_hash=mosquitto_hash(service_password) if service_password else None)
    password_file, acl_file = out / PASSWORD_FILE, out / ACL_FILE
    _write(password_file, passwords)
    _write(acl_file, acl)
    return password_file, acl_file
