"""The demo city: Jilin's real districts and the named bureaus, users of every role, built
through the service layer, identical on every build, and a second build changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cityos.cli import app as cli_app
from cityos.core import access, auth, crypto, db
from cityos.core.identifiers import validate_citizen_id, validate_credit_code
from cityos.core.models import AuditRecord, Department, User
from cityos.core.settings import Settings, load_settings
from cityos.demo import data, seed

DISTRICTS = {
    "220202": "昌邑区", "220203": "龙潭区", "220204": "船营区", "220211": "丰满区",
    "220221": "永吉县", "220281": "蛟河市", "220282": "桦甸市", "220283": "舒兰市",
    "220284": "磐石市",
}
BUREAUS = ["市政网办", "市公安局", "市环保局", "市交通局", "市规划局", "市卫生计生委", "市民政局",
           "市教育局", "市行政执法局", "市质监局", "市发改委", "市工信局", "市农委", "市旅发委"]


def _counts(s: Session) -> tuple[int, int, int]:
    return (s.scalar(select(func.count()).select_from(Department)) or 0,
            s.scalar(select(func.count()).select_from(User)) or 0,
            s.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def _snapshot(url: str) -> tuple[list[str], list[str], list[str]]:
    """Department codes, usernames and residents' decrypted ID numbers of one database
    (the keyring of that database must be active)."""
    engine = db.make_engine(url)
    try:
        with db.make_sessionmaker(engine)() as s:
            codes = list(s.scalars(select(Department.code).order_by(Department.code)))
            names = list(s.scalars(select(User.username).order_by(User.username)))
            ring = crypto.keyring()
            ids = [ring.decrypt(enc, "users.id_number") for enc in s.scalars(
                select(User.id_number_enc).where(User.role == access.RESIDENT)
                .order_by(User.username))]
    finally:
        engine.dispose()
    return codes, names, ids


@pytest.fixture
def restore_keyring() -> Iterator[None]:
    """Building elsewhere activates another data dir's keyring: put the test's one back."""
    before = crypto._current
    yield
    if before is not None:
        crypto.activate(before)


@pytest.fixture
def production_hasher() -> Iterator[None]:
    """The suite hashes passwords cheaply; time the build with argon2's real parameters."""
    cheap = auth._hasher
    auth.use_hasher(PasswordHasher())
    yield
    auth.use_hasher(cheap)


def test_plan_covers_every_role_with_valid_identifiers() -> None:
    plan = data.plan()
    assert {u.role for u in plan.users} == set(access.ROLES)
    assert 30 <= len(plan.users) <= 40  # each costs an argon2 hash; keep the build fast
    codes = {d.code for d in plan.departments}
    assert len(codes) == len(plan.departments)
    assert all(u.department_code in codes for u in plan.users)
    for d in plan.departments:
        if d.kind in ("street", "community"):
            assert d.code == d.admin_code and d.code.startswith(d.parent_code or "-")
            assert len(d.code) == {"street": 9, "community": 12}[d.kind]
    residents = [u for u in plan.users if u.role == access.RESIDENT]
    assert residents and all(u.phone and len(u.phone) == 11 for u in residents)
    for u in residents:
        assert u.id_number and validate_citizen_id(u.id_number) == u.id_number
        assert u.id_number[:6] == u.department_code[:6]  # born in the district they live in
    assert data.plan() == plan  # the fixed seed: same people every time


def test_build_creates_jilin_and_second_build_changes_nothing(
    settings: Settings, sessions: sessionmaker[Session], client, production_hasher: None
) -> None:
    # No time limit here: speed is measured by bench/, not asserted by a test on a shared machine.
    report = seed.build(settings)
    plan = data.plan()
    assert report.created == plan.size and report.departments_skipped == 0

    with sessions() as s:
        city = s.scalar(select(Department).where(Department.code == "220200"))
        assert city and city.name == "吉林市" and city.kind == "city"
        districts = {d.code: d for d in s.scalars(
            select(Department).where(Department.kind == "district"))}
        assert {c: d.name for c, d in districts.items()} == DISTRICTS
        assert all(d.admin_code == d.code and d.parent_id == city.id and d.name_en
                   for d in districts.values())
        bureaus = {d.name: d for d in s.scalars(
            select(Department).where(Department.kind == "bureau"))}
        assert set(BUREAUS) <= set(bureaus)
        assert bureaus["市公安局"].code == "220200-gaj"
        for b in bureaus.values():
            assert b.credit_code and validate_credit_code(b.credit_code) == b.credit_code
            assert b.credit_code[:8] == "11220200"  # a government organ registered in 220200
        assert len({b.credit_code for b in bureaus.values()}) == len(bureaus)
        roles = set(s.scalars(select(User.role)))
        assert roles == set(access.ROLES)
        ring = crypto.keyring()
        residents = list(s.scalars(select(User).where(User.role == access.RESIDENT)))
        assert residents
        for r in residents:
            assert r.id_number_enc and r.phone_enc  # stored encrypted, not in the clear
            validate_citizen_id(ring.decrypt(r.id_number_enc, "users.id_number"))
        before = _counts(s)

    again = seed.build(settings)
    assert again.created == 0 and again.users_skipped == len(plan.users)
    with sessions() as s:
        assert _counts(s) == before  # the audit log does not grow either

    r = client.post("/api/auth/token",
                    data={"username": "admin", "password": settings.demo_password})
    assert r.status_code == 200, r.text
    assert r.json()["access_token"]


def test_cli_build_only_prints_logins_and_builds_the_same_city_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_keyring: None
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray cityos.toml
    for var in ("CITYOS_DATABASE_URL", "CITYOS_DATA_DIR", "CITYOS_DEMO_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    first_url = f"sqlite:///{tmp_path / 'one' / 'cityos.db'}"
    env = {"CITYOS_DATABASE_URL": first_url, "CITYOS_DATA_DIR": str(tmp_path / "one")}
    result = CliRunner().invoke(cli_app, ["demo", "--build-only"], env=env)
    assert result.exit_code == 0, result.output
    for text in ("admin", "platform_admin", "resident01", "cityos-demo",
                 "http://127.0.0.1:8000/console"):
        assert text in result.output
    first = _snapshot(first_url)  # the CLI left its keyring active

    second_url = f"sqlite:///{tmp_path / 'two' / 'cityos.db'}"
    seed.build(load_settings(database_url=second_url, data_dir=tmp_path / "two"))
    assert _snapshot(second_url) == first
    codes, names, ids = first
    assert set(DISTRICTS) <= set(codes) and "admin" in names and len(ids) == data.RESIDENTS
