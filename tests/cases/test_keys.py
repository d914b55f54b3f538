"""Key rotation (密钥轮换) covers the reporter's phone on cases as well as the users' columns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cityos.cases import service as cases
from cityos.core import crypto, keys
from cityos.core.access import ANONYMOUS
from cityos.core.cli import cli_actor
from tests.cases.conftest import POINT, CasesCity

PHONE = "13900002222"


@pytest.fixture
def ring(cases_city: CasesCity, keyring: crypto.Keyring, tmp_path: Path) -> Iterator[crypto.Keyring]:
    """A private keyring for this test (as tests/core/test_keys.py); the shared one comes back after."""
    private = crypto.activate(crypto.Keyring.load(tmp_path / "keys.json"))
    try:
        yield private
    finally:
        crypto.activate(keyring)


def test_rotation_reencrypts_the_reporter_phone(cases_city: CasesCity, ring: crypto.Keyring) -> None:
    cc = cases_city
    with cc.sessions() as s:
        number = cases.case_intake(s, ANONYMOUS, {"category": "noise", "description": "夜间施工噪音",
                                             "reporter_phone": PHONE, **POINT}, channel="web").case.number
        s.commit()
        before = cases.case_by_number(s, number).reporter_phone_enc
    assert before is not None and ring.key_of(before) == ring.active

    with cc.sessions() as s:
        report = keys.keys_rotate(s, cli_actor(), ring=ring)
    assert report.rotated["cases.reporter_phone"] == 1

    with cc.sessions() as s:
        case = cases.case_by_number(s, number)
        assert case.reporter_phone_enc != before and ring.key_of(case.reporter_phone_enc) == report.key_id
        assert cases.reporter_phone(case) == PHONE
        assert case.reporter_phone_idx == ring.blind_index(PHONE, "cases.reporter_phone")
