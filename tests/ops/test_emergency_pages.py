"""Emergency command pages (应急指挥页面): the list with its open form, the command page with its
map, plans, tasks table and timeline, and the forms over TestClient with the console's CSRF."""

from __future__ import annotations

import html
import json
import re

from tests.cases.conftest import PARKS, POINT, POLICE
from tests.core.test_pages import signed_in
from tests.ops.conftest import OpsCity
from tests.ops.test_emergency import seed_command

HTML = {"Accept": "text/html"}


def sign_in(client, username: str) -> str:
    client.cookies.clear()
    return signed_in(client, username)


def post(client, url: str, csrf: str, **fields):
    return client.post(url, data={"csrf_token": csrf, **fields}, headers=HTML, follow_redirects=False)


def test_open_activate_and_close_through_the_pages(ops_city: OpsCity) -> None:
    oc = ops_city
    seed_command(oc)
    client = oc.client
    csrf = sign_in(client, "ops_staff")
    page = client.get("/ops/incidents", headers=HTML)
    assert page.status_code == 200 and 'id="open-incident"' in page.text and "城市内涝" in page.text

    # A bad level is shown beside the form; nothing is opened.
    r = post(client, "/ops/incidents", csrf, type="flood", level="V", title="积水")
    assert r.status_code == 422 and 'data-error-for="level"' in r.text and "data-incident=" not in r.text
    r = post(client, "/ops/incidents", csrf, type="flood", level="III", title="解放大路积水",
             lon=str(POINT["lon"]), lat=str(POINT["lat"]))
    assert r.status_code == 303
    url = r.headers["location"]
    number = url.rsplit("/", 1)[1]
    assert number.startswith("YJ")

    page = client.get(url, headers=HTML).text
    assert 'id="activate"' in page and '<select id="f-plan" name="plan"' in page
    assert 'value="flood-response"' in page and 'value="flood-major"' not in page  # level III
    assert 'id="tasks"' in page and 'data-case=' not in page and 'id="timeline"' in page
    assert f'hx-get="/ops/incidents/{number}/live"' in page and "/static/ops/incident.js" in page
    match = re.search(r"data-config='([^']*)'", page)
    config = json.loads(html.unescape(match.group(1)))
    assert config["point"] == [POINT["lon"], POINT["lat"]]
    assert [r["name"] for r in config["resources"]] == ["近处避难所", "远处避难所"]
    assert 'data-resource="shelters/near"' in page

    r = post(client, f"{url}/activate", csrf, plan="flood-response")
    assert r.status_code == 303
    page = client.get(r.headers["location"], headers=HTML).text
    rows = re.findall(r'<tr data-case="([^"]+)" data-department="([^"]+)"', page)
    assert [d for _n, d in rows] == [PARKS, POLICE]
    assert 'data-done="activate"' in page and 'data-event="activate"' in page
    # The live fragment the page polls shows the same tasks.
    live = client.get(f"{url}/live", headers={**HTML, "HX-Request": "true"})
    assert live.status_code == 200 and all(f'data-case="{n}"' in live.text for n, _d in rows)
    # Twice: refused beside the form (the plan is no longer offered, so post it by hand).
    r = post(client, f"{url}/activate", csrf, plan="flood-response")
    assert r.status_code == 409 and 'data-step-error="activate"' in r.text

    # The parks bureau sees its task in its case queue page.
    parks_csrf = sign_in(client, "parks_staff")
    queue = client.get("/console/cases", headers=HTML).text
    assert rows[0][0] in queue
    # ...may read the incident but has no command forms, and may not post them.
    page = client.get(url, headers=HTML).text
    assert 'id="tasks"' in page and 'id="activate"' not in page
    assert post(client, f"{url}/close", parks_csrf, summary="x").status_code == 403

    csrf = sign_in(client, "ops_staff")
    assert post(client, f"{url}/notes", csrf, note="现场指挥部已设立").status_code == 303
    assert post(client, f"{url}/level", csrf, level="II", note="扩大").status_code == 303
    r = post(client, f"{url}/close", csrf, summary="积水已排除")
    assert r.status_code == 303
    page = client.get(url, headers=HTML).text
    assert 'id="report"' in page and 'data-summary>积水已排除' in page and 'id="activate"' not in page
    assert 'data-tasks-done="0"' in page
    closed = client.get("/ops/incidents?status=closed", headers=HTML).text
    assert f'data-incident="{number}"' in closed
    assert f'data-incident="{number}"' not in client.get("/ops/incidents?status=active", headers=HTML).text


def test_pages_need_a_signed_in_console_user(ops_city: OpsCity) -> None:
    oc = ops_city
    oc.client.cookies.clear()
    r = oc.client.get("/ops/incidents", headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and "/console/login" in r.headers["location"]
    csrf = sign_in(oc.client, "ops_staff")
    assert oc.client.get("/ops/incidents/YJ000000000000", headers=HTML).status_code == 404
    r = oc.client.post("/ops/incidents", data={"type": "x", "level": "I", "title": "t"}, headers=HTML,
                       follow_redirects=False)
    assert r.status_code == 403  # no CSRF token
    assert csrf
