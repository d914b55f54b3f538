"""Backup and restore (备份与恢复): a snapshot that restores to exactly what it was, taken while
the city keeps writing, and a damaged file that is refused before anything is touched.

Each test works on a private database (a file in tmp_path, or a scratch PostgreSQL database) and
a private keyring, so restoring never disturbs the session-wide test database.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cityos.core import audit, backup, crypto, db, keys, service
from cityos.core.access import SYSTEM
from cityos.core.backup import BackupError
from cityos.core.db import Base
from cityos.core.identifiers import citizen_id_with_check
from cityos.core.models import User
from cityos.core.settings import Settings, load_settings
from cityos.models_registry import import_all_models
from tests.conftest import PASSWORD, seed_small_city

SECRET = "test-secret-key-0123456789"


@dataclass
class Target:
    """A database of the test's backend that this test alone uses, with its own data dir."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def keys_path(self) -> Path:
        return Path(self.settings.data_dir) / "keys.json"


@pytest.fixture
def target(engine: Engine, keyring: crypto.Keyring, tmp_path: Path) -> Iterator[Target]:
    admin: Engine | None = None
    name = ""
    if engine.dialect.name == "sqlite":
        url = f"sqlite:///{tmp_path / 'city' / 'cityos.db'}"
    else:
        name = f"cityos_backup_{uuid.uuid4().hex[:12]}"
        admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = engine.url.set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)
    settings = load_settings(database_url=url, data_dir=tmp_path / "data", environment="test",
                             secret_key=SECRET)
    crypto.activate(crypto.Keyring.load(tmp_path / "data" / "keys.json"))
    own = db.make_engine(url)
    try:
        yield Target(settings, own, db.make_sessionmaker(own))
    finally:
        own.dispose()
        crypto.activate(keyring)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def snapshot(engine: Engine) -> dict[str, Any]:
    """Row count and a checksum of every table, computed independently of cityos.core.backup."""
    import_all_models()
    state: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            body = repr([tuple(r) for r in rows]).encode()
            state[table.name] = (len(rows), hashlib.sha256(body).hexdigest())
        state["alembic_version"] = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    return state


def counts(state: dict[str, Any]) -> dict[str, int]:
    return {k: v[0] for k, v in state.items() if k != "alembic_version"}


def seed(t: Target) -> dict[str, str]:
    """The small city plus people with encrypted ID numbers and a few more writes."""
    people = {}
    with t.sessions() as s:
        seed_small_city(s)
        for i in range(3):
            idn = citizen_id_with_check(f"22020419851231{i:03d}")
            service.user_create(s, SYSTEM, username=f"resident{i}", password=PASSWORD,
                                department_code="220202001", role="resident",
                                id_number=idn, phone=f"1380431{i:04d}")
            people[f"resident{i}"] = idn
        service.user_update(s, SYSTEM, "resident1", {"display_name": "王小明"})
        service.apikey_create(s, SYSTEM, name="sensor gateway", department_code="220200-hbj",
                              scopes=["department.read"])
        s.commit()
    return people


def more_writes(t: Target, tag: str) -> None:
    with t.sessions() as s:
        service.department_create(s, SYSTEM, code=f"220204-{tag}", name=f"街道{tag}",
                                  kind="street", parent_code="220204")
        service.user_create(s, SYSTEM, username=f"late_{tag}", password=PASSWORD,
                            department_code="220204", role="department_staff",
                            id_number=citizen_id_with_check("22020420000229001"))
        service.user_update(s, SYSTEM, "resident0", {"display_name": f"changed {tag}"})
        s.commit()


def audit_ok(t: Target) -> audit.VerifyResult:
    with t.sessions() as s:
        return audit.verify(s)


def test_round_trip_restores_exactly_the_backup(target, tmp_path):
    people = seed(target)
    at_backup = snapshot(target.engine)
    keys_at_backup = target.keys_path.read_bytes()
    archive = tmp_path / "city.tar.gz"
    steps: list[str] = []

    manifest = backup.backup_create(target.settings, archive, SYSTEM, report=steps.append)

    assert steps
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600  # it holds the keys
    assert manifest.backend == target.engine.dialect.name
    assert manifest.alembic_revision == db.head_revision()
    assert manifest.created_at.endswith("Z")
    assert {n: s.rows for n, s in manifest.tables.items() if n != "alembic_version"} == counts(
        at_backup)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        body = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert sorted(names) == sorted(["manifest.json", "keys.json", backup.DB_MEMBER[manifest.backend]])
    assert body["cityos_version"] and set(body["members"]) == set(names) - {"manifest.json"}
    with target.sessions() as s:  # taking a backup is itself audited, after the snapshot
        assert audit.count(s) == at_backup["audit_log"][0] + 1

    more_writes(target, "after")
    with target.sessions() as s:  # and the keys move on too
        keys.keys_rotate(s, SYSTEM, ring=crypto.keyring(), retire_unused=True)
    rotated_keys = target.keys_path.read_bytes()
    assert snapshot(target.engine) != at_backup

    target.engine.dispose()  # as a stopped server would
    backup.backup_restore(target.settings, archive, SYSTEM)

    assert snapshot(target.engine) == at_backup
    assert audit_ok(target).ok
    assert target.keys_path.read_bytes() == keys_at_backup
    assert stat.S_IMODE(target.keys_path.stat().st_mode) == 0o600
    kept = list(target.keys_path.parent.glob("keys.json.bak-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == rotated_keys
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o600
    ring = crypto.activate(crypto.Keyring.load(target.keys_path))
    with target.sessions() as s:
        for name, idn in people.items():
            user = s.scalar(select(User).where(User.username == name))
            assert user is not None and user.id_number_enc is not None
            assert ring.decrypt(user.id_number_enc, "users.id_number") == idn


def test_backup_taken_while_the_city_writes_is_consistent(target, tmp_path):
    seed(target)
    stop, errors, done = threading.Event(), [], [0]

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                with target.sessions() as s:
                    service.department_create(s, SYSTEM, code=f"w{i}", name=f"社区{i}",
                                              kind="bureau", parent_code="220202")
                    service.user_update(s, SYSTEM, "resident2", {"display_name": f"v{i}"})
                    s.commit()
                done[0] += 1
            except Exception as exc:  # reported below: the writer must never fail
                errors.append(exc)
                return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while done[0] < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        started_at = done[0]
        archives = []
        for n in range(3):
            archive = tmp_path / f"busy-{n}.tar.gz"
            backup.backup_create(target.settings, archive, SYSTEM)
            archives.append(archive)
        written_during = done[0] - started_at
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert written_during > 0  # the backups really overlapped writes

    target.engine.dispose()
    manifest = backup.backup_restore(target.settings, archives[-1], SYSTEM)
    result = audit_ok(target)
    assert result.ok, result.message()
    state = snapshot(target.engine)
    assert counts(state) == {n: s.rows for n, s in manifest.tables.items()
                             if n != "alembic_version"}
    with target.sessions() as s:  # the chain's head matches its last record
        head = s.execute(text("SELECT seq FROM audit_head")).scalar_one()
        assert head == audit.count(s) == manifest.tables["audit_log"].rows


def rewrite(archive: Path, out: Path, change: dict[str, Any]) -> None:
    """Copy a backup, replacing members: name -> new bytes, or None to drop, or (new name, bytes)."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            new = change.get(member.name, data)
            if new is None:
                continue
            name = member.name
            if isinstance(new, tuple):
                name, new = new
            info = tarfile.TarInfo(name)
            info.size = len(new)
            dst.addfile(info, io.BytesIO(new))


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_a_corrupted_backup_is_refused_and_nothing_changes(target, tmp_path):
    seed(target)
    archive = tmp_path / "good.tar.gz"
    manifest = backup.backup_create(target.settings, archive, SYSTEM)
    more_writes(target, "x")
    before, keys_before = snapshot(target.engine), target.keys_path.read_bytes()
    db_member = backup.DB_MEMBER[manifest.backend]
    with tarfile.open(archive) as tar:
        members = {m: tar.extractfile(m).read() for m in tar.getnames()}  # type: ignore[union-attr]

    for name in (db_member, "keys.json"):
        bad = tmp_path / f"bad-{name}.tar.gz"
        rewrite(archive, bad, {name: flipped(members[name], len(members[name]) // 2)})
        with pytest.raises(BackupError, match=f"{name} is corrupt"):
            backup.backup_restore(target.settings, bad, SYSTEM)

    # Damage to the compressed file itself, wherever it falls.
    raw = archive.read_bytes()
    for at in (len(raw) // 3, len(raw) - 12):
        bad = tmp_path / f"bad-gz-{at}.tar.gz"
        bad.write_bytes(flipped(raw, at))
        with pytest.raises(BackupError):
            backup.backup_restore(target.settings, bad, SYSTEM)

    missing = tmp_path / "no-keys.tar.gz"
    rewrite(archive, missing, {"keys.json": None})
    with pytest.raises(BackupError, match="do not match"):
        backup.backup_restore(target.settings, missing, SYSTEM)

    assert snapshot(target.engine) == before
    assert target.keys_path.read_bytes() == keys_before
    assert not list(target.keys_path.parent.glob("keys.json.bak-*"))


def test_a_backup_of_the_other_backend_is_refused(target, tmp_path):
    seed(target)
    archive = tmp_path / "city.tar.gz"
    manifest = backup.backup_create(target.settings, archive, SYSTEM)
    other = "postgresql" if manifest.backend == "sqlite" else "sqlite"
    body = json.loads(json.dumps(manifest.__dict__, default=lambda o: o.__dict__))
    with tarfile.open(archive) as tar:
        db_bytes = tar.extractfile(backup.DB_MEMBER[manifest.backend]).read()  # type: ignore[union-attr]
    body["backend"] = other
    body["members"][backup.DB_MEMBER[other]] = body["members"].pop(backup.DB_MEMBER[manifest.backend])
    foreign = tmp_path / "foreign.tar.gz"
    rewrite(archive, foreign, {"manifest.json": json.dumps(body).encode(),
                               backup.DB_MEMBER[manifest.backend]: (backup.DB_MEMBER[other], db_bytes)})
    before = snapshot(target.engine)
    with pytest.raises(BackupError, match=f"of a {other} database but CityOS is configured for "
                                          f"{manifest.backend}"):
        backup.backup_restore(target.settings, foreign, SYSTEM)
    assert snapshot(target.engine) == before


def test_a_backup_from_a_newer_schema_is_refused(target, tmp_path):
    seed(target)
    archive = tmp_path / "city.tar.gz"
    manifest = backup.backup_create(target.settings, archive, SYSTEM)
    body = json.loads(json.dumps(manifest.__dict__, default=lambda o: o.__dict__))
    body["alembic_revision"] = "9999_from_the_future"
    newer = tmp_path / "newer.tar.gz"
    rewrite(archive, newer, {"manifest.json": json.dumps(body).encode()})
    with pytest.raises(BackupError, match="unknown to this CityOS"):
        backup.backup_restore(target.settings, newer, SYSTEM)


def test_restore_refuses_a_sqlite_database_still_in_use(target, tmp_path, backend):
    if backend != "sqlite":
        pytest.skip("PostgreSQL restores in one transaction beside live connections")
    seed(target)
    archive = tmp_path / "city.tar.gz"
    backup.backup_create(target.settings, archive, SYSTEM)
    before = snapshot(target.engine)
    with target.engine.connect() as conn:  # a server holding the database open
        conn.execute(text("SELECT 1"))
        with pytest.raises(BackupError, match="in use"):
            backup.backup_restore(target.settings, archive, SYSTEM)
    assert snapshot(target.engine) == before


def test_cli_backup_and_restore(target, tmp_path, monkeypatch):
    from cityos.cli import app

    seed(target)
    monkeypatch.setenv("CITYOS_DATABASE_URL", target.settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(target.settings.data_dir))
    monkeypatch.setenv("CITYOS_ENVIRONMENT", "test")
    archive = tmp_path / "cli.tar.gz"
    at_backup = snapshot(target.engine)
    runner = CliRunner()

    result = runner.invoke(app, ["backup", str(archive)])
    assert result.exit_code == 0, result.output
    assert "backup written" in result.output and "users" in result.output
    assert runner.invoke(app, ["backup", str(archive)]).exit_code == 2  # no silent overwrite

    more_writes(target, "cli")
    target.engine.dispose()
    result = runner.invoke(app, ["restore", str(archive)], input="n\n")
    assert result.exit_code != 0  # not on a terminal and no --yes: refused
    result = runner.invoke(app, ["restore", str(archive), "--yes"])
    assert result.exit_code == 0, result.output
    assert "restored" in result.output
    assert snapshot(target.engine) == at_backup

    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(flipped(archive.read_bytes(), os.path.getsize(archive) // 2))
    result = runner.invoke(app, ["restore", str(broken), "--yes"])
    assert result.exit_code == 1
