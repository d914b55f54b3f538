"""Fixtures of the operations center: the case engine's small city plus the operations center
department (市城市运行管理中心) and its staff."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cityos.core import access, service
from cityos.core.access import SYSTEM
from tests.cases.conftest import CasesCity, cases_city  # noqa: F401  (re-exported fixture)
from tests.conftest import PASSWORD

OPS = "220200-yxzx"
OPS_USERS = [("ops_staff", OPS, access.DEPARTMENT_STAFF), ("ops_admin", OPS, access.DEPARTMENT_ADMIN)]


@dataclass
class OpsCity:
    cc: CasesCity

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.cc.sessions

    @property
    def client(self):  # noqa: ANN201
        return self.cc.city.client

    def headers(self, username: str) -> dict[str, str]:
        return self.cc.headers(username)


@pytest.fixture
def ops_city(cases_city: CasesCity) -> OpsCity:  # noqa: F811
    """Cases' small city (hotline, city management, parks...) plus the operations center."""
    with cases_city.sessions() as s:
        service.department_create(s, SYSTEM, code=OPS, name="市城市运行管理中心",
                                  name_en="City Operations Management Center", kind="bureau",
                                  parent_code="220200")
        for username, dept, role in OPS_USERS:
            service.user_create(s, SYSTEM, username=username, password=PASSWORD, department_code=dept,
                                role=role, display_name=username)
        s.commit()
    return OpsCity(cases_city)
