"""Key rotation (密钥轮换): every ciphertext moves to the new key, nothing is lost on the way."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cityos.core import audit, backup, crypto, keys, service
from cityos.core.access import SYSTEM
from cityos.core.cli import cli_actor
from cityos.core.identifiers import citizen_id_with_check
from cityos.core.models import AuditRecord, User
from cityos.core.settings import load_settings
from tests.conftest import PASSWORD, City


@pytest.fixture
def ring(city: City, keyring: crypto.Keyring, tmp_path: Path) -> Iterator[crypto.Keyring]:
    """A private keyring in tmp_path, active for this test only: rotating the session-wide one
    would strand other tests' ciphertexts. The shared one is re-activated afterwards."""
    private = crypto.activate(crypto.Keyring.load(tmp_path / "keys.json"))
    try:
        yield private
    finally:
        crypto.activate(keyring)


def add_people(sessions: sessionmaker[Session], n: int) -> dict[str, tuple[str, str]]:
    """Residents with an ID number and a phone; returns username -> (id number, phone)."""
    people = {}
    with sessions() as s:
        for i in range(n):
            idn, phone = citizen_id_with_check(f"22020219900101{i:03d}"), f"1390431{i:04d}"
            service.user_create(s, SYSTEM, username=f"person{i}", password=PASSWORD,
                                department_code="220202001", role="resident",
                                id_number=idn.lower(), phone=phone)
            people[f"person{i}"] = (idn, phone)
        s.commit()
    return people


def stored(sessions: sessionmaker[Session]) -> dict[str, User]:
    with sessions() as s:
        users = s.scalars(select(User).where(User.id_number_enc.is_not(None))).all()
        s.expunge_all()
        return {u.username: u for u in users}


def rotate(sessions: sessionmaker[Session], ring: crypto.Keyring, **kw: object) -> keys.RotationReport:
    with sessions() as s:
        return keys.keys_rotate(s, cli_actor(), ring=ring, **kw)  # type: ignore[arg-type]


def rotated(report: keys.RotationReport) -> dict[str, int]:
    """The columns that held ciphertexts; other engines' registered columns are empty here."""
    return {column: rows for column, rows in report.rotated.items() if rows}


def test_rotation_reencrypts_every_column_under_the_new_key(sessions, ring):
    people = add_people(sessions, 7)
    before = stored(sessions)
    old_kid = ring.active
    calls: list[tuple[str, int, int]] = []

    report = rotate(sessions, ring, batch_size=3, progress=lambda *a: calls.append(a))

    assert report.key_id == ring.active != old_kid
    assert rotated(report) == {"users.id_number": 7, "users.phone": 7}
    assert ("users.id_number", 7, 7) in calls and ("users.phone", 7, 7) in calls
    after = stored(sessions)
    for name, (idn, phone) in people.items():
        u = after[name]
        for token in (u.id_number_enc, u.phone_enc):
            assert ring.key_of(token) == report.key_id
        assert u.id_number_enc != before[name].id_number_enc
        assert ring.decrypt(u.id_number_enc, "users.id_number") == idn
        assert ring.decrypt(u.phone_enc, "users.phone") == phone
        assert u.id_number_idx == ring.blind_index(idn, "users.id_number")
        assert u.phone_idx == ring.blind_index(phone, "users.phone")
    # Old keys stay unless retired.
    assert old_kid in ring.keys and old_kid in ring.index_keys


def test_rotation_is_audited_without_key_material(sessions, ring):
    add_people(sessions, 2)
    report = rotate(sessions, ring)
    with sessions() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "keys.rotate"))
        assert rec is not None
        assert rec.actor == cli_actor().name and rec.object_id == report.key_id
        assert [c for c in rec.detail["columns"] if c["rows"]] == [{"column": "users.id_number", "rows": 2},
                                                                   {"column": "users.phone", "rows": 2}]
        assert rec.detail["total"] == 4
        logged = orjson.dumps(rec.detail).decode() + (rec.purpose or "")
        for material in [*(k["key"] for k in ring.keys.values()), *ring.index_keys.values()]:
            assert material not in logged
        assert audit.verify(s).ok


def test_lookup_by_id_number_finds_the_user_after_rotation(city, sessions, ring, client):
    people = add_people(sessions, 3)
    idn = people["person1"][0]
    headers = city.headers("admin")

    def lookup() -> list[str]:
        r = client.post("/api/users/lookup", json={"id_number": idn}, headers=headers)
        assert r.status_code == 200, r.text
        return [u["username"] for u in r.json()["items"]]

    assert lookup() == ["person1"]
    rotate(sessions, ring)
    assert lookup() == ["person1"]
    r = client.get("/api/users/person1", headers=headers)
    assert r.status_code == 200
    assert r.json()["id_number_masked"] == idn[:4] + "*" * 12 + idn[-2:]


def test_old_keys_still_decrypt_old_backups(sessions, ring, engine, tmp_path):
    people = add_people(sessions, 2)
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False),
                             data_dir=tmp_path, environment="test",
                             secret_key="test-secret-key-0123456789")
    archive = tmp_path / "before-rotation.tar.gz"
    backup.backup_create(settings, archive, SYSTEM)
    old = stored(sessions)  # the ciphertexts as that backup holds them

    rotate(sessions, ring)
    current = crypto.Keyring.load(ring.path)  # the keyring on disk after the rotation
    for name, (idn, _) in people.items():
        assert current.decrypt(old[name].id_number_enc, "users.id_number") == idn

    # Retiring drops the old key from the live keyring; the backup carries its own.
    report = rotate(sessions, ring, retire_unused=True)
    assert report.retired
    with pytest.raises(crypto.DecryptError):
        crypto.Keyring.load(ring.path).decrypt(old["person0"].id_number_enc, "users.id_number")
    workdir = tmp_path / "open"
    workdir.mkdir()
    _, files = backup.backup_open(archive, workdir)
    from_backup = crypto.Keyring.load(files["keys.json"])
    assert from_backup.decrypt(old["person0"].id_number_enc, "users.id_number") == people["person0"][0]


def test_tampered_ciphertext_fails_authentication(ring):
    token = ring.encrypt("220202199001010019", "users.id_number")
    prefix, kid, body = token.split(".", 2)
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[14] ^= 0x01  # one bit of the ciphertext, past the 12-byte nonce
    tampered = f"{prefix}.{kid}.{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(crypto.DecryptError, match="authentication"):
        ring.decrypt(tampered, "users.id_number")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[-1] ^= 0x80  # the tag
    with pytest.raises(crypto.DecryptError):
        ring.decrypt(f"{prefix}.{kid}.{base64.urlsafe_b64encode(bytes(raw)).decode()}",
                     "users.id_number")
    with pytest.raises(crypto.DecryptError):  # moved to another column: the AAD differs
        ring.decrypt(token, "users.phone")
    with pytest.raises(crypto.DecryptError):
        ring.decrypt(f"{prefix}.k00000000000000dead.{body}", "users.id_number")
    assert ring.decrypt(token, "users.id_number") == "220202199001010019"


def test_rotation_refuses_a_tampered_row_and_changes_nothing(sessions, ring):
    add_people(sessions, 4)
    with sessions() as s:
        token = s.scalar(select(User.phone_enc).where(User.username == "person2"))
        assert token is not None
        bad = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
        s.execute(update(User).where(User.username == "person2").values(phone_enc=bad))
        s.commit()
    before = stored(sessions)
    old_kid = ring.active
    with pytest.raises(keys.RotationError, match="person|row"):
        rotate(sessions, ring, batch_size=2)
    after = stored(sessions)
    assert {n: (u.id_number_enc, u.phone_enc, u.id_number_idx) for n, u in after.items()} == {
        n: (u.id_number_enc, u.phone_enc, u.id_number_idx) for n, u in before.items()}
    assert all(ring.key_of(u.id_number_enc) == old_kid for u in after.values())


def test_keyring_file_is_private(sessions, ring):
    add_people(sessions, 1)
    rotate(sessions, ring, retire_unused=True)
    assert ring.path is not None
    assert stat.S_IMODE(os.stat(ring.path).st_mode) == 0o600


def test_new_key_uses_sm4_gcm_when_openssl_has_it(sessions, ring):
    add_people(sessions, 1)
    report = rotate(sessions, ring)
    spec = crypto.Keyring.load(ring.path).keys[report.key_id]
    if crypto.SM4_GCM:
        assert spec["alg"] == "sm4-gcm"
        assert len(base64.b64decode(spec["key"])) == 16
    else:
        assert spec["alg"] == "aes-256-gcm"
        assert len(base64.b64decode(spec["key"])) == 32


def test_interrupted_rotation_leaves_a_working_system_and_a_rerun_finishes(sessions, ring):
    people = add_people(sessions, 5)
    first_kid = ring.active

    def crash(context: str, done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        rotate(sessions, ring, batch_size=2, progress=crash)
    # The keyring was saved with the new key, the database transaction rolled back.
    on_disk = crypto.Keyring.load(ring.path)
    assert on_disk.active != first_kid
    crypto.activate(on_disk)
    after_crash = stored(sessions)
    assert all(on_disk.key_of(u.id_number_enc) == first_kid for u in after_crash.values())
    with sessions() as s:
        found = service.user_list(s, SYSTEM, id_number=people["person3"][0])
        assert [u.username for u in found.items] == ["person3"]
        assert service.user_public(found.items[0], reveal=True)["phone_masked"] == people["person3"][1]
        s.rollback()

    report = rotate(sessions, on_disk, batch_size=2)
    assert rotated(report) == {"users.id_number": 5, "users.phone": 5}
    assert all(on_disk.key_of(u.phone_enc) == report.key_id for u in stored(sessions).values())
    with sessions() as s:
        found = service.user_list(s, SYSTEM, id_number=people["person3"][0])
        assert [u.username for u in found.items] == ["person3"]
        s.rollback()


def test_retire_keeps_keys_still_named_by_a_ciphertext(sessions, ring):
    people = add_people(sessions, 3)
    k1 = ring.active
    rotate(sessions, ring)
    k2 = ring.active
    rotate(sessions, ring)
    k3 = ring.active
    # A server that has not reloaded the keyring writes a row under the first key.
    stale = crypto.Keyring(keys=ring.keys, active=k1, index_keys=ring.index_keys, active_index=k1)
    with sessions() as s:
        s.execute(update(User).where(User.username == "person0").values(
            phone_enc=stale.encrypt(people["person0"][1], "users.phone")))
        s.commit()
        assert keys.keys_in_use(s) == {k3: 5, k1: 1}
        assert keys.unused_keys(s, ring) == [k2]

    report = rotate(sessions, ring, retire_unused=True)
    assert sorted(report.retired) == sorted([k1, k2, k3])
    on_disk = crypto.Keyring.load(ring.path)
    assert set(on_disk.keys) == set(on_disk.index_keys) == {report.key_id}
    for name, (idn, phone) in people.items():
        u = stored(sessions)[name]
        assert on_disk.decrypt(u.id_number_enc, "users.id_number") == idn
        assert on_disk.decrypt(u.phone_enc, "users.phone") == phone


def test_cli_keys_rotate(sessions, ring, engine, tmp_path, monkeypatch):
    from cityos.cli import app

    add_people(sessions, 3)
    monkeypatch.setenv("CITYOS_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("CITYOS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CITYOS_ENVIRONMENT", "test")
    old_kid = ring.active
    result = CliRunner().invoke(app, ["keys", "rotate", "--retire", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "users.id_number" in result.output and "6 ciphertexts rotated" in result.output
    on_disk = crypto.Keyring.load(tmp_path / "keys.json")
    assert on_disk.active != old_kid and old_kid not in on_disk.keys
    assert all(on_disk.key_of(u.id_number_enc) == on_disk.active
               for u in stored(sessions).values())
    with sessions() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "keys.rotate"))
        assert rec is not None and rec.actor.startswith("cli:")
        assert rec.detail["retired"] == 1
