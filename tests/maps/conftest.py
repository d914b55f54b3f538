"""Fixtures of the one map's tests: a seeded small city, its actors, and layers made through the
service (so each is a catalog resource, as in production)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import shapely
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import auth
from cityos.core.access import SYSTEM, Actor
from cityos.core.models import User
from cityos.maps import service
from tests.conftest import seed_small_city

# A box around Jilin City's urban districts (lon, lat).
CITY_BOX = (126.40, 43.70, 126.75, 44.00)


def actor_of(session: Session, username: str) -> Actor:
    user = session.scalar(select(User).where(User.username == username))
    return auth.user_actor(user)


@pytest.fixture
def seeded(session: Session) -> Session:
    seed_small_city(session)
    return session


@pytest.fixture
def actors(seeded: Session) -> dict[str, Actor]:
    return {u: actor_of(seeded, u) for u in
            ("admin", "police_admin", "police_staff", "env_admin", "env_staff", "district_admin",
             "street_staff", "auditor", "resident")}


def new_layer(session: Session, code: str, geometry_type: str = "any", *, actor: Actor = SYSTEM,
              department: str = "220200-hbj", attributes: list[dict[str, Any]] | None = None,
              **kw: Any) -> Any:
    spec: dict[str, Any] = {
        "code": code, "title": f"图层 {code}", "department": department, "geometry_type": geometry_type,
        "attributes": attributes if attributes is not None else [
            {"name": "name", "title": "名称", "type": "string"},
            {"name": "n", "title": "序号", "type": "integer"}],
    } | kw
    return service.layer_create(session, actor, spec)


def grid_polygons(n: int = 10, box: tuple[float, float, float, float] = CITY_BOX) -> list[Any]:
    """An n × n grid of cells over `box`, row by row from the south-west."""
    xs = np.linspace(box[0], box[2], n + 1)
    ys = np.linspace(box[1], box[3], n + 1)
    return [shapely.box(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(n) for i in range(n)]


def random_points(n: int, seed: int = 7, box: tuple[float, float, float, float] = CITY_BOX,
                  margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(box[0] - margin, box[2] + margin, n), rng.uniform(box[1] - margin, box[3] + margin, n))
