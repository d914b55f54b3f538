"""The programme office: the 43 projects load once, updates follow their rules (a dependency
cycle or an unknown project is refused), the Gantt and graph have their shapes, pages render."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from cityos.core.access import SYSTEM
from cityos.core.models import AuditRecord
from cityos.ops import projects
from cityos.ops.models import Project
from tests.core.test_pages import signed_in


def _load(ops_city) -> None:
    with ops_city.sessions() as s:
        assert projects.project_load(s) == 43
        assert projects.project_load(s) == 0  # idempotent
        s.commit()


def _patch(ops_city, code, body, user="ops_staff"):
    return ops_city.client.patch(f"/api/ops/projects/{code}", json=body, headers=ops_city.headers(user))


def test_load_43_and_read(ops_city):
    _load(ops_city)
    r = ops_city.client.get("/api/ops/projects", headers=ops_city.headers("parks_staff"))
    assert r.status_code == 200
    rows = {p["code"]: p for p in r.json()}
    assert sorted(rows) == [f"P{i:02d}" for i in range(1, 44)]
    assert rows["P20"]["name"] == "建设城市运行管理中心项目" and rows["P20"]["lead"] == "220200-zwb"
    assert rows["P05"]["predecessors"] == ["P03"] and rows["P04"]["predecessors"] == ["P03"]
    assert rows["P11"]["predecessors"] == ["P04", "P10"]
    assert rows["P01"]["lead"] is None and "市通信办" in rows["P01"]["notes"][0]["text"]
    assert all("2017-01-01" <= p["start"] <= p["end"] <= "2021-12-31" for p in rows.values())
    assert ops_city.client.get("/api/ops/projects/P99", headers=ops_city.headers("ops_staff")).status_code == 404


def test_update_rules(ops_city):
    _load(ops_city)
    r = _patch(ops_city, "P20", {"status": "running", "progress": 40, "start": "2019-03-01"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["progress"] == 40 and r.json()["start"] == "2019-03-01"
    # P03 ← P04 ← P10 ← P11: making P03 need P11 closes a loop
    r = _patch(ops_city, "P03", {"predecessors": ["P11"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "predecessors"
    assert "cycle" in r.json()["errors"][0]["reason"]
    r = _patch(ops_city, "P03", {"predecessors": ["P77"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "predecessors"
    r = _patch(ops_city, "P03", {"predecessors": ["P03"]})
    assert r.status_code == 422
    r = _patch(ops_city, "P20", {"start": "2022-01-01", "end": "2021-01-01"})
    assert r.status_code == 422 and {e["field"] for e in r.json()["errors"]} == {"end"}
    r = _patch(ops_city, "P20", {"progress": 101, "status": "finished"})
    assert r.status_code == 422 and {e["field"] for e in r.json()["errors"]} == {"progress", "status"}
    assert _patch(ops_city, "P20", {"progress": 50}, user="parks_staff").status_code == 403
    assert _patch(ops_city, "P99", {"progress": 50}).status_code == 404
    r = ops_city.client.post("/api/ops/projects/P20/notes", json={"text": "完成招标"},
                             headers=ops_city.headers("ops_admin"))
    assert r.status_code == 201 and r.json()["notes"][-1]["text"] == "完成招标"
    assert ops_city.client.post("/api/ops/projects/P20/notes", json={"text": " "},
                                headers=ops_city.headers("ops_admin")).status_code == 422
    with ops_city.sessions() as s:
        p = s.scalar(select(Project).where(Project.code == "P20"))
        assert p.progress == 40 and str(p.end) == "2021-12-31"  # nothing changed on the errors
        p3 = s.scalar(select(Project).where(Project.code == "P03"))
        assert p3.predecessors == []
        assert s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action.in_(["ops.project.update", "ops.project.note"]))) == 2
    # a legal new dependency is kept
    r = _patch(ops_city, "P43", {"predecessors": "P42, p03"})
    assert r.status_code == 200 and r.json()["predecessors"] == ["P42", "P03"]


def test_gantt_and_graph_shapes(ops_city):
    _load(ops_city)
    h = ops_city.headers("ops_staff")
    g = ops_city.client.get("/api/ops/projects/gantt", headers=h).json()
    assert len(g["rows"]) == 43 and g["from"] == "2017-01-01" and g["to"] == "2021-12-31"
    assert len(g["categories"]) == 10
    graph = ops_city.client.get("/api/ops/projects/graph", headers=h).json()
    assert len(graph["nodes"]) == 43
    ids = {n["id"] for n in graph["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in graph["edges"])
    with ops_city.sessions() as s:
        expected = sum(len(p.predecessors) for p in s.scalars(select(Project)))
    assert len(graph["edges"]) == expected
    path = graph["critical_path"]
    assert len(path) >= 3
    by = {p["code"]: p for p in ops_city.client.get("/api/ops/projects", headers=h).json()}
    for a, b in zip(path, path[1:], strict=False):
        assert a in by[b]["predecessors"]  # a chain of real dependencies
    crit = [r["code"] for r in g["rows"] if r["critical"]]
    assert sorted(crit) == sorted(path)
    with ops_city.sessions() as s:
        rows = list(s.scalars(select(Project)))
        assert projects.critical_path(rows) == path
        assert projects.gantt(s, SYSTEM)["rows"][0]["code"] == "P01"


def test_pages_render(ops_city):
    _load(ops_city)
    client = ops_city.client
    client.cookies.clear()
    signed_in(client, "ops_staff")
    page = client.get("/ops/projects")
    assert page.status_code == 200
    assert page.text.count('<tr data-code="P') == 43
    assert "/static/vendor/echarts/echarts.min.js" in page.text and "/static/ops/plan.js" in page.text
    assert "http://" not in page.text.split("<body")[1] and "https://" not in page.text.split("<body")[1]
    detail = client.get("/ops/projects/P20")
    assert detail.status_code == 200 and 'data-project="P20"' in detail.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', detail.text).group(1)
    r = client.post("/ops/projects/P20", data={"csrf_token": csrf, "status": "running", "progress": "55",
                                               "start": "2019-01-01", "end": "2021-12-31",
                                               "predecessors": "P03, P04"}, follow_redirects=True)
    assert r.status_code == 200 and 'data-progress="55"' in r.text
    bad = client.post("/ops/projects/P03", data={"csrf_token": csrf, "predecessors": "P20"})
    assert bad.status_code == 422 and 'data-error-for="predecessors"' in bad.text
    r = client.post("/ops/projects/P20/notes", data={"csrf_token": csrf, "text": "平台上线"}, follow_redirects=True)
    assert r.status_code == 200 and "平台上线" in r.text
    assert client.get("/ops/projects/P99").status_code == 404
    assert client.get("/static/ops/plan.js").status_code == 200
    client.cookies.clear()
    signed_in(client, "parks_staff")
    detail = client.get("/ops/projects/P20")
    assert detail.status_code == 200 and "data-update" not in detail.text
