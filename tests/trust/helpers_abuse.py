"""Shared by the injection and abuse probes (trust, issue 9 item 3): a small city with something in
every engine (built through the services, so each probe has rows to leak), a count of every table's
rows (to prove a probe changed nothing), console sign-in, and a check for live markup in HTML."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import shapely
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session, sessionmaker

from cityos.cases import service as cases
from cityos.core import access, service
from cityos.core.access import SYSTEM
from cityos.hub import loading
from cityos.hub import service as hub
from cityos.maps import service as maps
from cityos.opendata import applications
from cityos.opendata import service as opendata
from cityos.ops import emergency
from tests.cases.conftest import POINT, seed_cases
from tests.conftest import PASSWORD, City, people_spec, person_row
from tests.opendata.conftest import AIR_DATASET, actor_of, air_row, air_spec, publish
from tests.sensing.conftest import make_thing

OPS = "220200-yxzx"
DEID_RULES = [{"field": "id_number", "action": "mask"}, {"field": "name", "action": "suppress"},
              {"field": "birth_date", "action": "generalize", "to": "year"}]


@dataclass
class Refs:
    """What the seeded city holds, by the names the routes take in their paths."""

    city: City
    sessions: sessionmaker[Session]
    values: dict[str, str] = field(default_factory=dict)

    def headers(self, username: str = "admin") -> dict[str, str]:
        return self.city.headers(username)


def build_city(city: City, sessions: sessionmaker[Session]) -> Refs:
    """The small city plus the case engine's centres, the operations center, an open and a conditional
    dataset with an application, a public map layer, a sensing Thing, a case and an incident."""
    refs = Refs(city, sessions)
    v = refs.values
    with sessions() as s:
        seed_cases(s)
        service.department_create(s, SYSTEM, code=OPS, name="市城市运行管理中心", kind="bureau",
                                  parent_code="220200")
        for username, role in (("ops_staff", access.DEPARTMENT_STAFF), ("ops_admin", access.DEPARTMENT_ADMIN)):
            service.user_create(s, SYSTEM, username=username, password=PASSWORD, department_code=OPS,
                                role=role, display_name=username)
        opendata.topic_create(s, SYSTEM, name="environment", title="生态环境", title_en="Environment")
        opendata.topic_create(s, SYSTEM, name="population", title="人口", title_en="Population")
        env, police = actor_of(s, "env_staff"), actor_of(s, "police_staff")
        air = hub.resource_create(s, env, air_spec())
        loading.rows_write(s, env, air.code, [air_row(n) for n in range(16)])
        people = hub.resource_create(s, police, people_spec(open_type="conditional"))
        loading.rows_write(s, police, people.code, [person_row(n, "昌邑区") for n in range(12)])
        s.commit()
        v.update(resource=air.code, people=people.code)
        ds = publish(s, air.code, dict(AIR_DATASET), "env_staff", "env_admin")
        residents = publish(s, people.code, {"name": "residents", "rules": DEID_RULES}, "police_staff",
                            "police_admin")
        app = applications.application_create(
            s, actor_of(s, "resident"), residents, applicant="某某数据科技有限公司", contact="data@example.cn",
            purpose="研究各区户籍人口结构，用于养老服务设施规划")
        s.commit()
        v.update(dataset=ds.name, conditional=residents.name, app_id=str(app.id))

        maps.layer_create(s, SYSTEM, {
            "code": "shelters", "title": "避难场所", "department": OPS, "geometry_type": "point",
            "attributes": [{"name": "name", "type": "string"}, {"name": "n", "type": "integer"}],
            "public": True, "open_type": "open"})
        maps.features_write(s, SYSTEM, "shelters", [
            (f"s{i}", shapely.Point(POINT["lon"] + i * 0.002, POINT["lat"]), {"name": f"避难所{i}", "n": i})
            for i in range(4)])
        emergency.incident_type_upsert(s, SYSTEM, {"code": "flood", "name": "城市内涝",
                                                   "resource_layers": ["shelters"]})
        emergency.plan_upsert(s, SYSTEM, {
            "code": "flood-response", "name": "城市内涝应急预案", "incident_type": "flood", "min_level": "IV",
            "department": OPS, "tasks": [{"department": "220200-gaj", "title": "积水路段交通管制", "hours": 1}]})
        inc = emergency.incident_open(s, actor_of(s, "ops_staff"), type_code="flood", level="III",
                                      title="解放大路积水", description="暴雨致路面积水", **POINT)
        got = cases.case_intake(s, actor_of(s, "resident"),
                                {"category": "noise", "description": "楼下KTV半夜噪音扰民", **POINT})
        s.commit()
        v.update(layer="shelters", collection="shelters", incident=inc.number or "", number=got.case.number or "",
                 key=got.case.token, token=got.case.token)
        thing, streams = make_thing(s, streams=1)
        v.update(thing_id=str(thing.id), datastream_id=str(streams[0].id))
    return refs


def path_values(refs: Refs) -> list[tuple[str, str, str]]:
    """(path prefix, parameter, value): real objects of the seeded city, so the query is reached."""
    v = refs.values
    return [
        ("/api/hub/resources/", "code", v["people"]), ("/console/hub/resources/", "code", v["resource"]),
        ("/api/maps/layers/", "code", v["layer"]), ("/api/cases/workflows/", "code", "hotline"),
        ("/console/cases/workflows/", "code", "hotline"), ("/api/cases/queues/", "department", "220200-gaj"),
        ("/api/cases/track/", "key", v["token"]), ("/api/cases/", "number", v["number"]),
        ("/console/cases/", "number", v["number"]), ("/api/ops/incidents/", "number", v["incident"]),
        ("/ops/incidents/", "number", v["incident"]), ("", "name", v["dataset"]), ("", "fmt", "json"),
        ("", "thing_id", v["thing_id"]), ("", "datastream_id", v["datastream_id"]),
        ("", "collection_id", v["collection"]), ("", "path", "Things"), ("", "fid", "s0"),
    ]


def fill(path: str, refs: Refs) -> str:
    for name in re.findall(r"{([^}:]+)(?::[^}]*)?}", path):
        value = next((val for prefix, param, val in path_values(refs)
                      if param == name and path.startswith(prefix)), "no-such-code")
        path = re.sub(r"{" + name + r"(?::[^}]*)?}", value, path)
    return path


# -- nothing changed ----------------------------------------------------------------------------------


def row_counts(engine: Engine) -> dict[str, int]:
    """Every table's row count, the run-time ones (hub_data_*, od_rows_*) included: a dropped or
    emptied table shows."""
    with engine.connect() as conn:
        names = sorted(inspect(conn).get_table_names())
        return {n: int(conn.execute(text(f'SELECT count(*) FROM "{n}"')).scalar_one()) for n in names}


def users_rows(engine: Engine) -> list[tuple[Any, ...]]:
    """The users table as stored, password hashes included."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text("SELECT * FROM users ORDER BY id"))]


# -- the console --------------------------------------------------------------------------------------


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def console_login(client: TestClient, username: str) -> str:
    """Sign in through the console form; return the session's CSRF token."""
    form = client.get("/console/login")
    r = client.post("/console/login", follow_redirects=False, data={
        "username": username, "password": PASSWORD, "csrf_token": hidden(form.text, "csrf_token")})
    assert r.status_code == 303, r.text
    return hidden(client.get("/console").text, "csrf_token")


# -- live markup --------------------------------------------------------------------------------------

URL_ATTRS = {"href", "src", "action", "formaction", "xlink:href", "data", "poster", "srcset", "background"}
_CONTROL = re.compile(r"[\x00-\x20]+")


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._script: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=...> (an event handler)")
            if name in URL_ATTRS and _CONTROL.sub("", value or "").lower().startswith(("javascript:", "vbscript:")):
                self.found.append(f"<{tag} {name}={value!r}> (a script URL)")
        if tag == "script":
            kind = dict(attrs).get("type") or ""
            self._script = "" if not dict(attrs).get("src") and kind != "application/json" else None
            if dict(attrs).get("src") and not str(dict(attrs)["src"]).startswith("/static/"):
                self.found.append(f"<script src={dict(attrs)['src']!r}> (a script from elsewhere)")

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.found.append(f"<script>{self._script[:60]}</script> (an inline script)")
            self._script = None


def live_markup(html: str) -> list[str]:
    """Markup that would run script in a browser: event handler attributes, javascript: URLs, inline
    scripts or scripts from another site. The pages have none of their own (a strict CSP), so any
    found is injected."""
    parser = _Markup()
    parser.feed(html)
    parser.close()
    return parser.found

