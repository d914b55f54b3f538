"""Field encryption (字段加密): SM4-GCM where OpenSSL has it, else AES-256-GCM, plus blind indexes.

A ciphertext names its key ("cx1.<key id>.<base64>"), so rotation can re-encrypt row by row
and old backups stay readable while their key is kept. The blind index is a keyed HMAC of the
normalized value: equality lookup without storing the plaintext.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "cx1"


def _sm3_available() -> bool:
    try:
        digest = hashes.Hash(hashes.SM3())
        digest.update(b"abc")
        digest.finalize()
        return True
    except (UnsupportedAlgorithm, AttributeError):
        return False


def _sm4_gcm_available() -> bool:
    try:
        enc = Cipher(algorithms.SM4(b"\0" * 16), modes.GCM(b"\0" * 12)).encryptor()
        enc.update(b"x")
        enc.finalize()
        return True
    except (UnsupportedAlgorithm, AttributeError, ValueError):
        return False


SM3 = _sm3_available()
SM4_GCM = _sm4_gcm_available()
HASH_ALGO = "sm3" if SM3 else "sha256"


def digest(data: bytes, algo: str = HASH_ALGO) -> str:
    """Hex digest with SM3 (GB/T 32905) or SHA-256, as recorded by the caller."""
    h = hashes.Hash(hashes.SM3() if algo == "sm3" else hashes.SHA256())
    h.update(data)
    return h.finalize().hex()


def _hmac(key: bytes, data: bytes) -> str:
    from cryptography.hazmat.primitives import hmac as chmac

    mac = chmac.HMAC(key, hashes.SM3() if SM3 else hashes.SHA256())
    mac.update(data)
    return mac.finalize().hex()


def write_private(target: Path, data: bytes) -> None:
    """Write a secret file atomically with mode 0600: a temp file, fsync, then rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)


class DecryptError(Exception):
    """A ciphertext was altered, or its key is missing from the keyring."""


@dataclass
class Keyring:
    """Data keys and blind-index keys, kept in a 0600 file in the data dir."""

    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    active: str = ""
    index_keys: dict[str, str] = field(default_factory=dict)
    active_index: str = ""
    path: Path | None = None

    @staticmethod
    def new_key_id() -> str:
        return dt.datetime.now(dt.UTC).strftime("k%Y%m%d%H%M%S") + secrets.token_hex(2)

    def add_key(self) -> str:
        """Add a fresh data key and a fresh index key, make them active, return the key id."""
        kid = self.new_key_id()
        alg = "sm4-gcm" if SM4_GCM else "aes-256-gcm"
        raw = os.urandom(16 if alg == "sm4-gcm" else 32)
        self.keys[kid] = {
            "alg": alg,
            "key": base64.b64encode(raw).decode(),
            "created": dt.datetime.now(dt.UTC).isoformat(),
        }
        self.index_keys[kid] = base64.b64encode(os.urandom(32)).decode()
        self.active, self.active_index = kid, kid
        return kid

    def save(self, path: Path | None = None) -> None:
        target = path or self.path
        assert target is not None
        body = {
            "version": 1,
            "active": self.active,
            "keys": self.keys,
            "active_index": self.active_index,
            "index_keys": self.index_keys,
        }
        write_private(target, json.dumps(body, indent=1).encode())
        self.path = target

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Load the keyring, creating one with a first key if the data dir has none."""
        if not path.exists():
            ring = cls(path=path)
            ring.add_key()
            ring.save(path)
            return ring
        body = json.loads(path.read_text())
        return cls(
            keys=body["keys"],
            active=body["active"],
            index_keys=body["index_keys"],
            active_index=body["active_index"],
            path=path,
        )

    # -- encryption -------------------------------------------------------------------------

    def encrypt(self, plaintext: str, context: str) -> str:
        """Encrypt with the active key; `context` (e.g. "users.phone") is bound as AAD."""
        kid = self.active
        spec = self.keys[kid]
        key = base64.b64decode(spec["key"])
        nonce = os.urandom(12)
        aad = context.encode()
        if spec["alg"] == "sm4-gcm":
            enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
            enc.authenticate_additional_data(aad)
            body = enc.update(plaintext.encode()) + enc.finalize() + enc.tag
        else:
            body = AESGCM(key).encrypt(nonce, plaintext.encode(), aad)
        return f"{PREFIX}.{kid}.{base64.urlsafe_b64encode(nonce + body).decode()}"

    def decrypt(self, token: str, context: str) -> str:
        try:
            prefix, kid, b64 = token.split(".", 2)
            spec = self.keys[kid]
        except (ValueError, KeyError) as exc:
            raise DecryptError("unknown ciphertext format or key") from exc
        if prefix != PREFIX:
            raise DecryptError("unknown ciphertext format")
        raw = base64.urlsafe_b64decode(b64)
        nonce, body = raw[:12], raw[12:]
        key = base64.b64decode(spec["key"])
        aad = context.encode()
        try:
            if spec["alg"] == "sm4-gcm":
                dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, body[-16:])).decryptor()
                dec.authenticate_additional_data(aad)
                return (dec.update(body[:-16]) + dec.finalize()).decode()
            return AESGCM(key).decrypt(nonce, body, aad).decode()
        except InvalidTag as exc:
            raise DecryptError("ciphertext failed authentication") from exc

    def key_of(self, token: str) -> str:
        return token.split(".", 2)[1]

    def encryptor(self, context: str) -> Callable[[str], str]:
        """`encrypt` for many values of one context, the key set up once (bulk loads).

        The ciphertexts are exactly those of `encrypt`: same key, format and AAD."""
        kid = self.active
        spec = self.keys[kid]
        key = base64.b64decode(spec["key"])
        aad = context.encode()
        head = f"{PREFIX}.{kid}."
        b64, urandom = base64.urlsafe_b64encode, os.urandom
        if spec["alg"] == "sm4-gcm":
            sm4 = algorithms.SM4(key)

            def encrypt_sm4(plaintext: str) -> str:
                nonce = urandom(12)
                enc = Cipher(sm4, modes.GCM(nonce)).encryptor()
                enc.authenticate_additional_data(aad)
                body = enc.update(plaintext.encode()) + enc.finalize() + enc.tag
                return head + b64(nonce + body).decode()

            return encrypt_sm4
        seal = AESGCM(key).encrypt

        def encrypt_aes(plaintext: str) -> str:
            nonce = urandom(12)
            return head + b64(nonce + seal(nonce, plaintext.encode(), aad)).decode()

        return encrypt_aes

    def indexer(self, context: str) -> Callable[[str], str]:
        """`blind_index` for many values of one context: the keyed HMAC state is made once."""
        from cryptography.hazmat.primitives import hmac as chmac

        key = base64.b64decode(self.index_keys[self.active_index])
        base = chmac.HMAC(key, hashes.SM3() if SM3 else hashes.SHA256())
        base.update(f"{context}\x00".encode())

        def index(value: str) -> str:
            mac = base.copy()
            mac.update(value.encode())
            return mac.finalize().hex()

        return index

    # -- blind index ------------------------------------------------------------------------

    def blind_index(self, value: str, context: str) -> str:
        key = base64.b64decode(self.index_keys[self.active_index])
        return _hmac(key, f"{context}\x00{value}".encode())

    def blind_index_candidates(self, value: str, context: str) -> list[str]:
        """The index of `value` under every index key: lookups survive an interrupted rotation."""
        return [
            _hmac(base64.b64decode(k), f"{context}\x00{value}".encode())
            for k in self.index_keys.values()
        ]


@dataclass(frozen=True)
class EncryptedField:
    """A sensitive column pair registered for rotation: model, ciphertext attr, index attr."""

    model: Any
    enc_attr: str
    idx_attr: str | None
    context: str
    normalize: Callable[[str], str] = str.strip


ENCRYPTED_FIELDS: list[EncryptedField] = []


def register_encrypted(field_: EncryptedField) -> None:
    """Engines register their sensitive columns here so `cityos keys rotate` covers them."""
    if all(f.context != field_.context for f in ENCRYPTED_FIELDS):
        ENCRYPTED_FIELDS.append(field_)


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


_current: Keyring | None = None
_current_mtime: float = 0.0


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path else 0.0
    except OSError:
        return 0.0


def activate(ring: Keyring) -> Keyring:
    """Make `ring` the process's keyring (done once by the app factory or the CLI)."""
    global _current, _current_mtime
    _current, _current_mtime = ring, _mtime(ring.path)
    return ring


def keyring() -> Keyring:
    """The process's keyring, reloaded when `cityos keys rotate` (another process) rewrote the
    file, so running servers pick up new keys without a restart."""
    global _current, _current_mtime
    if _current is None:
        raise RuntimeError("no keyring loaded: call crypto.activate() at start-up")
    if _current.path is not None:
        mtime = _mtime(_current.path)
        if mtime and mtime != _current_mtime:
            _current, _current_mtime = Keyring.load(_current.path), mtime
    return _current
