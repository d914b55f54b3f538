"""The case engine's pages on both databases: the console's queues, a case's page and its step
forms, the agent screen, the KPI dashboard and the workflow diagrams (sign-in first, residents
refused, other departments see nothing), and the portal's report form and tracking page
(anonymous or signed in, photos, the token link, the rating). A bad form shows its error and
changes nothing; a form without its CSRF token is refused. No inline script, nothing from the
internet."""

from __future__ import annotations

import html
import io
import json
import re
from urllib.parse import parse_qs, urlsplit

from PIL import Image
from sqlalchemy import func, select

from cityos.cases import service as cases
from cityos.cases import steps
from cityos.cases.models import Case, CaseAttachment
from cityos.core.access import ANONYMOUS
from cityos.core.auth import user_actor
from cityos.core.service import user_by_name
from tests.cases.conftest import PARKS, POINT, POLICE, CasesCity
from tests.core.test_pages import signed_in

HTML = {"Accept": "text/html"}
CONSOLE = ("/console/cases", "/console/cases/agent", "/console/cases/kpi", "/console/cases/workflows",
           "/console/cases/workflows/hotline", "/console/cases/RX2025010100000001")


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 60, 40)).save(buf, "PNG")
    return buf.getvalue()


def clean(page: str) -> None:
    """No inline script or style (the CSP forbids them) and nothing from the internet."""
    for tag in re.findall(r"<script\b[^>]*>", page):
        assert "src=" in tag, tag
    assert all(not body.strip() for body in re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S)), "inline"
    assert not re.search(r"""(src|href)=["']https?://""", page), "a link to the internet"
    assert not re.search(r"<style|\sstyle=", page), "inline style"


def config_of(page: str, node_id: str) -> dict:
    match = re.search(rf"id=\"{node_id}\"[^>]*data-config='([^']*)'", page)
    assert match, f"no data-config on #{node_id}"
    return json.loads(html.unescape(match.group(1)))


def report(s, description: str = "楼下KTV半夜噪音扰民", category: str = "noise", **more) -> str:
    number = cases.case_intake(s, ANONYMOUS, {"category": category, "description": description,
                                              "reporter_phone": "13900001111", **POINT, **more}).case.number
    s.commit()
    return number


def status_of(cc: CasesCity, number: str) -> str:
    with cc.sessions() as s:
        return cases.case_by_number(s, number).status


def count_cases(cc: CasesCity) -> int:
    with cc.sessions() as s:
        return s.scalar(select(func.count()).select_from(Case)) or 0


def sign_in(client, username: str) -> str:
    """Sign in as `username`, ending whoever was signed in before; return the CSRF token."""
    client.cookies.clear()
    return signed_in(client, username)


def act(client, csrf: str, number: str, action: str, **fields):
    return client.post(f"/console/cases/{number}/act/{action}", data={"csrf_token": csrf, **fields},
                       headers=HTML, follow_redirects=False)


# -- who may open what --------------------------------------------------------------------------


def test_console_pages_need_sign_in(client, cases_city):
    for path in CONSOLE:
        r = client.get(path, headers=HTML, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/console/login?next=")


def test_residents_are_refused_the_console(client, cases_city):
    with cases_city.sessions() as s:
        number = report(s)
    sign_in(client, "resident")
    for path in ("/console/cases", "/console/cases/agent", "/console/cases/kpi",
                 "/console/cases/agent/suggest?text=噪音扰民很严重"):
        assert client.get(path, headers=HTML).status_code == 403, path
    assert client.get(f"/console/cases/{number}", headers=HTML).status_code == 403


def test_another_department_sees_nothing(client, cases_city):
    with cases_city.sessions() as s:
        number = report(s)
        steps.case_act(s, user_actor(user_by_name(s, "hotline_agent")), number, "dispatch",
                       {"department": POLICE})
        s.commit()
    csrf = sign_in(client, "parks_staff")
    assert client.get(f"/console/cases/{number}", headers=HTML).status_code == 404
    assert act(client, csrf, number, "accept").status_code == 404
    assert status_of(cases_city, number) == "dispatched"
    page = client.get("/console/cases", headers=HTML).text
    assert number not in page


# -- queues and a case through its steps --------------------------------------------------------


def test_queues_and_a_case_from_dispatch_to_close(client, cases_city):
    with cases_city.sessions() as s:
        number = report(s)
        report(s, "另一件噪音投诉", address="昌邑区某路", lon=None, lat=None)
    csrf = sign_in(client, "hotline_agent")
    page = client.get("/console/cases", headers=HTML)
    assert page.status_code == 200
    clean(page.text)
    assert f'href="/console/cases/{number}"' in page.text
    assert 'data-count="new">2<' in page.text
    assert 'data-centre-new="2"' in page.text  # the hotline centre's new cases
    search = client.get("/console/cases?which=cases&q=另一件", headers=HTML).text
    assert "另一件噪音投诉" in search and f'data-case="{number}"' not in search

    page = client.get(f"/console/cases/{number}", headers=HTML)
    assert page.status_code == 200
    clean(page.text)
    assert 'data-step-form="dispatch"' in page.text and 'data-step-form="merge"' in page.text
    assert "139****1111" in page.text and "13900001111" not in page.text  # masked until the callback
    assert config_of(page.text, "case-map")["point"] == [POINT["lon"], POINT["lat"]]
    # The category's department is the default lead.
    assert f'<option value="{POLICE}" selected>' in page.text

    r = act(client, csrf, number, "dispatch", department=POLICE, co=["220200-hbj"], days="3", note="请尽快")
    assert r.status_code == 303 and r.headers["location"] == f"/console/cases/{number}?done=dispatch"
    done = client.get(r.headers["location"], headers=HTML).text
    assert 'data-done="dispatch"' in done and 'data-case-status="dispatched"' in done
    assert 'data-due>' in done and "data-no-actions" not in done  # escalate, reassign, merge

    csrf = sign_in(client, "police_staff")
    queue = client.get("/console/cases?which=new", headers=HTML).text
    assert f'data-case="{number}"' in queue
    page = client.get(f"/console/cases/{number}", headers=HTML).text
    assert 'data-step-form="accept"' in page and 'data-step-form="dispatch"' not in page
    assert act(client, csrf, number, "accept").status_code == 303
    assert status_of(cases_city, number) == "handling"
    assert act(client, csrf, number, "reply", reply="已责令KTV整改").status_code == 303
    csrf = sign_in(client, "env_staff")
    assert act(client, csrf, number, "reply", reply="已配合检测").status_code == 303
    assert status_of(cases_city, number) == "replied"

    csrf = sign_in(client, "hotline_agent")
    page = client.get(f"/console/cases/{number}", headers=HTML).text
    assert 'data-step-form="verify"' in page
    assert act(client, csrf, number, "verify", fixed="true").status_code == 303
    page = client.get(f"/console/cases/{number}", headers=HTML).text
    assert "13900001111" in page  # the callback needs the whole number
    assert act(client, csrf, number, "callback", satisfaction="satisfied").status_code == 303
    assert status_of(cases_city, number) == "closed"
    page = client.get(f"/console/cases/{number}", headers=HTML).text
    assert 'data-step-form="reopen"' in page
    assert [e for e in ("receive", "dispatch", "accept", "reply", "verify", "callback")
            if f'data-event="{e}"' not in page] == []


def test_bad_step_forms_show_the_error_and_change_nothing(client, cases_city):
    with cases_city.sessions() as s:
        number = report(s)
    csrf = sign_in(client, "hotline_agent")
    r = act(client, csrf, number, "dispatch", department="no-such-dept")
    assert r.status_code in (404, 422)
    assert 'data-step-error="dispatch"' in r.text
    r = act(client, csrf, number, "dispatch", department=POLICE, days="many")
    assert r.status_code == 422 and 'data-error-for="days"' in r.text
    assert 'value="many"' in r.text  # what was typed stays in the form
    r = act(client, csrf, number, "verify", fixed="true")  # not at that step
    assert r.status_code == 409 and 'data-step-error="verify"' in r.text
    r = act(client, csrf, number, "teleport")
    assert r.status_code == 422
    assert status_of(cases_city, number) == "new"
    with cases_city.sessions() as s:
        assert [e.action for e in cases.timeline(s, cases.case_by_number(s, number))] == ["receive"]


def test_step_forms_need_the_csrf_token(client, cases_city):
    with cases_city.sessions() as s:
        number = report(s)
    sign_in(client, "hotline_agent")
    r = client.post(f"/console/cases/{number}/act/dispatch", data={"department": POLICE}, headers=HTML,
                    follow_redirects=False)
    assert r.status_code == 403
    r = act(client, "forged", number, "dispatch", department=POLICE)
    assert r.status_code == 403
    assert status_of(cases_city, number) == "new"


# -- the agent screen (坐席受理) -----------------------------------------------------------------


def test_agent_registers_a_call_and_merges_a_duplicate(client, cases_city):
    csrf = sign_in(client, "hotline_agent")
    page = client.get("/console/cases/agent", headers=HTML)
    assert page.status_code == 200
    clean(page.text)
    cfg = config_of(page.text, "pick-map")
    assert cfg["pick"] is True and cfg["suggest_url"] == "/console/cases/agent/suggest"
    assert '<option value="noise">' in page.text
    assert '<option value="manhole">' not in page.text  # another centre's line

    call = {"csrf_token": csrf, "reporter_name": "张先生", "reporter_phone": "13800002222", "category": "noise",
            "description": "小区广场舞音响声音太大", "lon": str(POINT["lon"]), "lat": str(POINT["lat"])}
    bad = client.post("/console/cases/agent", data={**call, "description": "", "lon": "", "lat": ""},
                      headers=HTML, follow_redirects=False)
    assert bad.status_code == 422
    assert "请描述问题" in bad.text and "请在地图上标注位置或填写地址" in bad.text
    assert 'value="张先生"' in bad.text
    no_csrf = client.post("/console/cases/agent", data={**call, "csrf_token": ""}, headers=HTML,
                          follow_redirects=False)
    assert no_csrf.status_code == 403
    assert count_cases(cases_city) == 0

    first = client.post("/console/cases/agent", data=call, headers=HTML, follow_redirects=False)
    assert first.status_code == 303
    one = parse_qs(urlsplit(first.headers["location"]).query)["created"][0]
    second = client.post("/console/cases/agent", data={**call, "reporter_name": "李女士"}, headers=HTML,
                         follow_redirects=False)
    two = parse_qs(urlsplit(second.headers["location"]).query)["created"][0]
    page = client.get(second.headers["location"], headers=HTML).text
    assert f'data-created="{two}"' in page and f'data-duplicate="{one}"' in page
    assert f'name="next" value="/console/cases/{one}"' in page  # the desk goes on to the kept case
    on_case = client.get(f"/console/cases/{two}", headers=HTML).text  # the case page offers it too
    assert f'data-duplicate="{one}"' in on_case and f'action="/console/cases/{two}/act/merge"' in on_case
    with cases_city.sessions() as s:
        case = cases.case_by_number(s, two)
        assert case.channel == "phone" and case.reporter_name == "李女士"
    merged = client.post(f"/console/cases/{two}/act/merge", headers=HTML, follow_redirects=False,
                         data={"csrf_token": csrf, "into": one, "next": f"/console/cases/{one}"})
    assert merged.status_code == 303 and merged.headers["location"] == f"/console/cases/{one}?done=merge"
    assert status_of(cases_city, two) == "merged"


def test_agent_suggestion_endpoint(client, cases_city):
    sign_in(client, "hotline_agent")
    short = client.get("/console/cases/agent/suggest?text=噪")
    assert short.status_code == 200 and short.json()["available"] is False
    r = client.get("/console/cases/agent/suggest", params={"text": "楼下KTV半夜噪音扰民", **POINT})
    assert r.status_code == 200
    body = r.json()
    if body["available"]:  # smart dispatch is there: a hotline category and its department
        assert body["category"] in {c["code"] for c in _categories("hotline")}
        assert 0 <= body["confidence"] <= 1
    else:
        assert body["reason"]


def _categories(line: str) -> list[dict]:
    from tests.cases.conftest import CATEGORIES

    return [c for c in CATEGORIES if c["line"] == line]


# -- the portal: report and follow (市民诉求、进度查询) ---------------------------------------------


def test_report_form_anonymous_with_photo_then_track_and_rate(client, cases_city):
    page = client.get("/cases/report", headers=HTML)
    assert page.status_code == 200
    clean(page.text)
    assert '<option value="noise">' in page.text and '<option value="manhole">' in page.text
    assert '<option value="permit">' not in page.text  # approvals are not reported here
    assert config_of(page.text, "pick-map")["pick"] is True
    assert 'name="csrf_token"' not in page.text  # nobody is signed in

    form = {"category": "noise", "description": "夜间施工噪音", "reporter_phone": "13700003333"}
    bad = client.post("/cases/report", data={**form, "description": ""}, headers=HTML, follow_redirects=False)
    assert bad.status_code == 422 and "请描述问题" in bad.text and "请在地图上标注位置或填写地址" in bad.text
    assert count_cases(cases_city) == 0

    files = [("photos", ("site.png", png(), "image/png"))]
    ok = client.post("/cases/report", data={**form, "lon": str(POINT["lon"]), "lat": str(POINT["lat"])},
                     files=files, headers=HTML, follow_redirects=False)
    assert ok.status_code == 303, ok.text
    query = parse_qs(urlsplit(ok.headers["location"]).query)
    number, token = query["number"][0], query["token"][0]
    with cases_city.sessions() as s:
        case = cases.case_by_number(s, number)
        assert case.token == token and case.channel == "web" and case.reporter_user_id is None
        shots = s.scalar(select(func.count()).select_from(CaseAttachment).where(CaseAttachment.case_id == case.id))
        assert shots == 1
    done = client.get(ok.headers["location"], headers=HTML)
    assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
    clean(done.text)
    assert f'data-reported="{number}"' in done.text and f"token={token}" in done.text
    # By number alone: the progress, but neither the token nor the "reported" banner.
    plain = client.get(f"/cases/track?number={number}&reported=1", headers=HTML).text
    assert "data-reported" not in plain and token not in plain and 'data-event="receive"' in plain
    assert "13700003333" not in plain
    missing = client.get("/cases/track?number=RX000", headers=HTML)
    assert missing.status_code == 404 and "data-not-found" in missing.text

    if files:  # the staff see the photo
        sign_in(client, "hotline_agent")
        staff = client.get(f"/console/cases/{number}", headers=HTML).text
        src = re.search(r'<img src="(/api/cases/[^"]+)"', staff).group(1)
        img = client.get(src)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        client.cookies.clear()

    _close(cases_city, number)
    page = client.get(f"/cases/track?number={number}&token={token}", headers=HTML).text
    assert 'data-case-status="closed"' in page and 'id="rate-form"' in page and "已处理" in page
    assert 'id="rate-form"' not in client.get(f"/cases/track?number={number}", headers=HTML).text
    bad = client.post("/cases/track/rate", data={"number": number, "token": token}, headers=HTML)
    assert bad.status_code == 422
    forged = client.post("/cases/track/rate", data={"number": number, "token": "x" * 32,
                                                    "satisfaction": "satisfied"}, headers=HTML)
    assert forged.status_code == 403
    rated = client.post("/cases/track/rate", data={"number": number, "token": token, "satisfaction": "basic",
                                                   "note": "还行"}, headers=HTML, follow_redirects=False)
    assert rated.status_code == 303
    page = client.get(rated.headers["location"], headers=HTML).text
    assert "data-rated" in page and 'data-evaluation="basic"' in page and 'id="rate-form"' not in page
    again = client.post("/cases/track/rate", data={"number": number, "token": token, "satisfaction": "satisfied"},
                        headers=HTML)
    assert again.status_code == 409


def _close(cc: CasesCity, number: str) -> None:
    with cc.sessions() as s:
        agent = user_actor(user_by_name(s, "hotline_agent"))
        police = user_actor(user_by_name(s, "police_staff"))
        steps.case_act(s, agent, number, "dispatch", {"department": POLICE})
        steps.case_act(s, police, number, "reply", {"reply": "已处理"})
        steps.case_act(s, agent, number, "verify", {"fixed": True})
        steps.case_act(s, agent, number, "callback", {"satisfaction": "satisfied"})
        s.commit()


def test_report_refuses_a_file_that_is_not_an_image(client, cases_city):
    form = {"category": "noise", "description": "噪音", **{k: str(v) for k, v in POINT.items()}}
    r = client.post("/cases/report", data=form, files=[("photos", ("x.png", b"MZ not a picture", "image/png"))],
                    headers=HTML)
    assert r.status_code in (413, 422)
    assert 'id="f-e-photos"' in r.text
    assert count_cases(cases_city) == 0


def test_signed_in_resident_reports_and_rates_without_a_token(client, cases_city):
    csrf = sign_in(client, "resident")
    page = client.get("/cases/report", headers=HTML).text
    assert 'name="csrf_token"' in page
    form = {"category": "tree", "description": "大树倒在路上",
            "lon": str(POINT["lon"]), "lat": str(POINT["lat"])}
    assert client.post("/cases/report", data=form, headers=HTML).status_code == 403  # no CSRF token
    ok = client.post("/cases/report", data={**form, "csrf_token": csrf}, headers=HTML, follow_redirects=False)
    assert ok.status_code == 303
    number = parse_qs(urlsplit(ok.headers["location"]).query)["number"][0]
    with cases_city.sessions() as s:
        assert cases.case_by_number(s, number).reporter_user_id is not None
        agent = user_actor(user_by_name(s, "hotline_agent"))
        steps.case_act(s, agent, number, "dispatch", {"department": PARKS})
        steps.case_act(s, user_actor(user_by_name(s, "parks_staff")), number, "reply", {"reply": "已清理"})
        steps.case_act(s, agent, number, "verify", {"fixed": True})
        steps.case_act(s, agent, number, "callback", {"satisfaction": "satisfied"})
        s.commit()
    page = client.get(f"/cases/track?number={number}", headers=HTML).text
    assert 'id="rate-form"' in page  # the reporter, signed in
    r = client.post("/cases/track/rate", data={"number": number, "satisfaction": "satisfied", "csrf_token": csrf},
                    headers=HTML, follow_redirects=False)
    assert r.status_code == 303


# -- KPIs and workflows ------------------------------------------------------------------------


def test_kpi_dashboard(client, cases_city):
    with cases_city.sessions() as s:
        number = report(s)
    _close(cases_city, number)
    sign_in(client, "hotline_agent")
    page = client.get("/console/cases/kpi", headers=HTML)
    assert page.status_code == 200
    clean(page.text)
    assert "data-kpi-missing" not in page.text
    assert 'data-kpi="closed">1<' in page.text and 'data-kpi="on_time_rate">100.0%<' in page.text
    assert f'data-kpi-row="{POLICE}"' in page.text and f'data-rank="{POLICE}"' in page.text
    cfg = config_of(page.text, "kpi-map")
    assert cfg["hotspots"] and cfg["hotspots"][0]["count"] == 1
    assert config_of(page.text, "kpi-chart")["chart"][0]["on_time"] == 100.0
    assert re.search(r'href="/api/cases/kpi[^"]*"', page.text)
    assert client.get("/console/cases/kpi?month=nonsense&by=nothing", headers=HTML).status_code == 200


def test_workflows_and_their_diagrams(client, cases_city):
    sign_in(client, "hotline_agent")
    page = client.get("/console/cases/workflows", headers=HTML)
    assert page.status_code == 200
    clean(page.text)
    for code in ("hotline", "citymgmt", "approval"):
        assert f'data-workflow="{code}"' in page.text
    one = client.get("/console/cases/workflows/hotline", headers=HTML)
    assert one.status_code == 200
    clean(one.text)
    url = config_of(one.text, "bpmn")["bpmn_url"]
    xml = client.get(url)
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
    assert "bpmndi:BPMNDiagram" in xml.text or "BPMNDiagram" in xml.text
    assert client.get("/console/cases/workflows/nothing", headers=HTML).status_code == 404
    assert client.get("/console/cases/workflows/hotline?version=9", headers=HTML).status_code == 404


def test_english_on_request(client, cases_city):
    with cases_city.sessions() as s:
        number = report(s)
    sign_in(client, "hotline_agent")
    page = client.get(f"/console/cases/{number}?lang=en", headers=HTML).text
    assert "Timeline" in page and "Dispatch" in page and "办理过程" not in page
    track = client.get(f"/cases/track?number={number}&lang=en", headers=HTML).text
    assert "Follow a case" in track and "Received" in track
