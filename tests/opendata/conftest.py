"""Open-data fixtures: a city with an open air-quality resource published through the whole
review (draft → submit → provider → data office), and a people resource holding ID numbers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import auth
from cityos.core.access import SYSTEM, Actor
from cityos.core.models import User
from cityos.hub import loading
from cityos.hub import service as hub
from cityos.opendata import service
from cityos.opendata.models import Dataset
from tests.conftest import people_spec, person_row, seed_small_city

DISTRICTS = ["昌邑区", "龙潭区", "船营区", "丰满区"]


def actor_of(session: Session, username: str) -> Actor:
    user = session.scalar(select(User).where(User.username == username))
    assert user is not None
    return auth.user_actor(user)


def air_spec(**overrides: Any) -> dict[str, Any]:
    """市环保局's daily air quality by monitoring site: open data (无条件开放), with coordinates."""
    spec: dict[str, Any] = {
        "name": "环境空气质量日报", "name_en": "Daily air quality", "category": "theme",
        "department": "220200-hbj", "abstract": "全市空气质量监测站点每日空气质量指数与PM2.5浓度",
        "share_type": "unconditional", "share_methods": ["api", "download"], "open_type": "open",
        "update_cycle": "daily", "keywords": ["空气质量", "PM2.5"],
        "items": [
            {"name": "site_code", "title": "站点编码", "type": "string", "required": True, "is_key": True},
            {"name": "day", "title": "日期", "type": "date", "required": True, "is_key": True},
            {"name": "site_name", "title": "站点名称", "type": "string"},
            {"name": "district", "title": "所属区县", "type": "string", "indexed": True},
            {"name": "aqi", "title": "空气质量指数", "type": "integer", "minimum": 0, "maximum": 500},
            {"name": "pm25", "title": "PM2.5浓度", "type": "number", "unit": "μg/m³"},
            {"name": "lon", "title": "经度", "type": "number"},
            {"name": "lat", "title": "纬度", "type": "number"},
        ],
    }
    spec.update(overrides)
    return spec


def air_row(n: int, day: dt.date = dt.date(2026, 11, 1)) -> dict[str, Any]:
    site = n % 8
    return {"site_code": f"S{site:02d}", "day": day + dt.timedelta(days=n // 8),
            "site_name": f"{DISTRICTS[site % 4]}监测站{site}", "district": DISTRICTS[site % 4],
            "aqi": 30 + (n * 7) % 120, "pm25": round(10 + (n * 3.7) % 80, 1),
            "lon": 126.55 + site * 0.01, "lat": 43.84 + site * 0.005}


AIR_DATASET = {"name": "air-quality-daily", "title": "环境空气质量日报", "title_en": "Daily air quality",
               "description": "吉林市各空气质量监测站点的每日空气质量指数（AQI）和细颗粒物浓度。",
               "topics": ["environment"], "tags": ["空气质量", "PM2.5", "环境监测"],
               "licence": "CC-BY-4.0", "spatial": "吉林市", "lon_field": "lon", "lat_field": "lat",
               "temporal_start": dt.date(2026, 11, 1)}


def publish(session: Session, resource: str, spec: dict[str, Any], staff: str, admin: str) -> Dataset:
    """Take a resource through the whole review: draft, submit, provider and data office."""
    ds = service.dataset_draft(session, actor_of(session, staff), resource=resource, spec=spec)
    service.dataset_submit(session, actor_of(session, staff), ds.name)
    service.dataset_approve(session, actor_of(session, admin), ds.name)
    service.dataset_approve(session, actor_of(session, "admin"), ds.name)
    session.commit()
    return ds


@dataclass
class OpenCity:
    air: Any  # hub Resource
    people: Any  # hub Resource (ID numbers, names, birth dates)
    dataset: Dataset  # air-quality-daily, published


@pytest.fixture
def open_city(session: Session, keyring: Any) -> OpenCity:
    """The small city with two topics, an air-quality resource of 80 rows published as
    `air-quality-daily`, and a 市公安局 people resource (not published) of 40 rows."""
    seed_small_city(session)
    service.topic_create(session, SYSTEM, name="environment", title="生态环境", title_en="Environment")
    service.topic_create(session, SYSTEM, name="population", title="人口", title_en="Population")
    env = actor_of(session, "env_staff")
    air = hub.resource_create(session, env, air_spec())
    loading.rows_write(session, env, air.code, [air_row(n) for n in range(80)])
    police = actor_of(session, "police_staff")
    people = hub.resource_create(session, police, people_spec(open_type="conditional"))
    loading.rows_write(session, police, people.code,
                       [person_row(n, DISTRICTS[n % 2]) for n in range(40)])
    session.commit()
    ds = publish(session, air.code, dict(AIR_DATASET), "env_staff", "env_admin")
    return OpenCity(air, people, ds)
