"""Fixtures of the case engine: a small city with its centres, handling departments, the three
shipped workflows and a few categories."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cityos.cases import service as cases
from cityos.core import access, service
from cityos.core.access import SYSTEM
from tests.conftest import PASSWORD, City

HOTLINE, CITYMGMT, HALL, PARKS = "220200-rx", "220200-szcg", "220200-zwb", "220200-ylj"
POLICE, ENV = "220200-gaj", "220200-hbj"
DEPARTMENTS = [
    (HOTLINE, "市12345政务服务热线", "12345 Hotline Centre"),
    (CITYMGMT, "市数字化城市管理监督指挥中心", "City Management Centre"),
    (HALL, "市政网办", "Government Service Hall"),
    (PARKS, "市园林局", "Parks Bureau"),
]
USERS = [
    ("hotline_agent", HOTLINE, access.DEPARTMENT_STAFF),
    ("hotline_admin", HOTLINE, access.DEPARTMENT_ADMIN),
    ("cm_staff", CITYMGMT, access.DEPARTMENT_STAFF),
    ("hall_staff", HALL, access.DEPARTMENT_STAFF),
    ("parks_staff", PARKS, access.DEPARTMENT_STAFF),
]
CATEGORIES = [
    {"code": "noise", "name": "噪音扰民", "name_en": "Noise", "group": "社会治安", "line": "hotline",
     "kind": "complaint", "department": POLICE, "keywords": ["噪音", "扰民"]},
    {"code": "pollution", "name": "环境污染", "name_en": "Pollution", "group": "生态环境", "line": "hotline",
     "kind": "complaint", "department": ENV, "keywords": ["油烟", "污染"]},
    {"code": "tree", "name": "树木倒伏", "name_en": "Fallen tree", "group": "园林绿化", "line": "hotline",
     "kind": "help", "department": PARKS, "keywords": ["树"],
     "attributes": [{"code": "blocking", "datatype": "singlevaluelist", "required": True,
                     "description": "是否阻断交通", "values": [{"key": "yes", "name": "是"},
                                                               {"key": "no", "name": "否"}]}]},
    {"code": "policy", "name": "政策咨询", "name_en": "Policy question", "group": "政务服务",
     "line": "hotline", "kind": "consultation", "department": HALL},
    {"code": "manhole", "name": "井盖破损", "name_en": "Broken manhole cover", "group": "公用设施",
     "line": "citymgmt", "kind": "component", "gbt_code": "0101", "department": PARKS},
    {"code": "permit", "name": "户外广告设置审批", "name_en": "Outdoor advertising permit", "group": "审批",
     "line": "approval", "kind": "approval", "department": HALL},
]
CENTRES = {"hotline": HOTLINE, "citymgmt": CITYMGMT, "approval": HALL}
# A point inside the city (no district layer in this small city, so no boundary check applies).
POINT = {"lon": 126.55, "lat": 43.84}


@dataclass
class CasesCity:
    city: City
    sessions: sessionmaker[Session]
    departments: dict[str, str] = field(default_factory=dict)

    def headers(self, username: str) -> dict[str, str]:
        return self.city.headers(username)


def seed_cases(session: Session) -> None:
    for code, name, name_en in DEPARTMENTS:
        service.department_create(session, SYSTEM, code=code, name=name, name_en=name_en, kind="bureau",
                                  parent_code="220200")
    for username, dept, role in USERS:
        service.user_create(session, SYSTEM, username=username, password=PASSWORD,
                            department_code=dept, role=role, display_name=username)
    cases.workflows_install(session, SYSTEM, CENTRES)
    for spec in CATEGORIES:
        cases.category_upsert(session, SYSTEM, spec)
    session.commit()


@pytest.fixture
def cases_city(city: City, sessions: sessionmaker[Session]) -> CasesCity:
    """The small city plus the case engine's centres, workflows and categories."""
    with sessions() as s:
        seed_cases(s)
    return CasesCity(city, sessions, {c[0]: c[1] for c in DEPARTMENTS})
