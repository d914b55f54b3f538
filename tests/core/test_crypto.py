"""Field encryption: SM4-GCM/AES-256-GCM at rest, blind index lookup, tamper detection."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cityos.core import crypto
from cityos.core.models import User

ID = "22020219900307006X"  # valid in form (check character X)


def test_round_trip_and_context_binding(tmp_path):
    ring = crypto.Keyring.load(tmp_path / "keys.json")
    token = ring.encrypt("13912345678", "users.phone")
    assert token.startswith("cx1.") and "13912345678" not in token
    assert ring.decrypt(token, "users.phone") == "13912345678"
    with pytest.raises(crypto.DecryptError):
        ring.decrypt(token, "users.id_number")  # moved to another column: refused


def test_tampered_ciphertext_is_refused(tmp_path):
    ring = crypto.Keyring.load(tmp_path / "keys.json")
    token = ring.encrypt("secret", "c")
    body = bytearray(token.encode())
    body[-5] = ord("A") if body[-5] != ord("A") else ord("B")
    with pytest.raises(crypto.DecryptError):
        ring.decrypt(body.decode(), "c")


def test_national_algorithms_used_when_available(tmp_path):
    ring = crypto.Keyring.load(tmp_path / "keys.json")
    assert ring.keys[ring.active]["alg"] == ("sm4-gcm" if crypto.SM4_GCM else "aes-256-gcm")
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


def test_blind_index_is_keyed_and_deterministic(tmp_path):
    a = crypto.Keyring.load(tmp_path / "a.json")
    b = crypto.Keyring.load(tmp_path / "b.json")
    assert a.blind_index(ID, "users.id_number") == a.blind_index(ID, "users.id_number")
    assert a.blind_index(ID, "users.id_number") != b.blind_index(ID, "users.id_number")


def test_id_number_stored_encrypted_and_found_by_blind_index(client, city, sessions):
    r = client.post("/api/users", headers=city.headers("district_admin"), json={
        "username": "li4", "password": "long-enough-1", "department_code": "220202001",
        "role": "resident", "id_number": ID, "phone": "13912345678"})
    assert r.status_code == 201, r.text
    assert r.json()["id_number_masked"] == "2202************6X"
    assert r.json()["phone_masked"] == "139****5678"
    with sessions() as s:
        user = s.scalar(select(User).where(User.username == "li4"))
        assert ID not in (user.id_number_enc or "") and "13912345678" not in (user.phone_enc or "")
    found = client.post("/api/users/lookup", json={"id_number": ID.lower()},
                        headers=city.headers("district_admin")).json()
    assert [u["username"] for u in found["items"]] == ["li4"]
    # Another department's staff finds nothing: the lookup is scoped like any list.
    other = client.post("/api/users/lookup", json={"id_number": ID},
                        headers=city.headers("police_staff")).json()
    assert other["items"] == []


def test_same_id_number_twice_is_a_conflict(client, city):
    body = {"password": "long-enough-1", "department_code": "220202001", "role": "resident",
            "id_number": ID}
    assert client.post("/api/users", headers=city.headers("admin"),
                       json={"username": "a1", **body}).status_code == 201
    r = client.post("/api/users", headers=city.headers("admin"), json={"username": "a2", **body})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "id_number"


def test_running_process_picks_up_a_rotated_keyring(tmp_path, keyring):
    path = tmp_path / "keys.json"
    crypto.activate(crypto.Keyring.load(path))
    try:
        old = crypto.keyring().active
        token = crypto.keyring().encrypt("13912345678", "users.phone")
        import os
        import time

        other = crypto.Keyring.load(path)  # as `cityos keys rotate` in another process would
        time.sleep(0.01)
        new = other.add_key()
        other.save()
        os.utime(path, None)
        assert crypto.keyring().active == new != old
        assert crypto.keyring().decrypt(token, "users.phone") == "13912345678"
    finally:
        crypto.activate(keyring)
