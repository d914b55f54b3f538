"""The demo city's operations center: its department and users, the shelters, hospitals and
cameras layers, table 1 of the plan with computed values, the 43 projects, the default
indicators and plans of the other parts when present, one incident; a second build adds nothing."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cityos.core.access import SYSTEM
from cityos.core.models import Department, User
from cityos.core.settings import Settings
from cityos.demo import ops_seed, seed
from cityos.maps import service as maps
from cityos.ops import plan
from cityos.ops.models import Incident, PlanIndicator, Project

SCALE = 0.0005  # as tests/demo/test_maps_demo.py


def test_the_demo_builds_the_operations_center(settings: Settings, sessions: sessionmaker[Session]) -> None:
    report = seed.build(settings, scale=SCALE)
    ops = report.ops
    assert ops is not None and not ops.skipped
    assert ops.created["layers"] == 3 and ops.created["projects"] == 43
    assert ops.created["plan"] == len(plan.rows_of())
    with sessions() as s:
        assert s.scalar(select(Department.name).where(Department.code == ops_seed.OPS)) == "市城市运行管理中心"
        assert {u for u in s.scalars(select(User.username).where(User.username.in_(["ops_staff", "ops_admin"])))} \
            == {"ops_staff", "ops_admin"}
        for code in ("shelters", "hospitals", "cameras"):
            layer = maps.layer_by_code(s, code)
            assert layer.public and layer.feature_count == 12
        assert s.scalar(select(func.count()).select_from(Project)) == 43
        rows = {r["code"]: r for r in plan.progress(s, SYSTEM)}
        # the demo holds catalog data, layers and cases: these are computed, not blank
        for code in ("gov_data_sharing", "one_map_usage", "citymgmt_departments"):
            assert rows[code]["value"] is not None and rows[code]["value_source"].startswith("computed")
        assert s.scalar(select(func.count()).select_from(PlanIndicator)) == len(plan.rows_of())
        incidents = s.scalar(select(func.count()).select_from(Incident))
        assert incidents == ops.created["incidents"] <= 1
    again = seed.build(settings, scale=SCALE)
    assert again.ops is not None and again.ops.skipped
