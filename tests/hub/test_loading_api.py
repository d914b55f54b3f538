"""Loading over HTTP: uploads (waited and as polled jobs), the 413 limit, row error problems and
errors.csv, the push schema, idempotent pushes, who may see what, diff and rollback, scheduled
pulls from a real local HTTP server, and `cityos hub load` on the command line."""

from __future__ import annotations

import csv
import functools
import http.server
import importlib.util
import io
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cityos.app import create_app
from cityos.cli import app as cli_app
from cityos.core.access import SYSTEM
from cityos.hub import pulls, service
from tests.conftest import people_spec
from tests.hub.test_loading import HEADER_ZH, NAMES, csv_bytes, person_row

UPLOADS = "/api/hub/resources/{code}/uploads"


@pytest.fixture
def app(settings, engine):
    return create_app(settings, engine=engine)


@pytest.fixture
def people(city, sessions):
    with sessions() as s:
        res = service.resource_create(s, SYSTEM, people_spec())
        s.commit()
        return res.code


def upload(client, city, code, data, user="police_staff", name="people.csv", wait=True, **fields):
    url = UPLOADS.format(code=code) + ("?wait=true" if wait else "")
    return client.post(url, files={"file": (name, data, "text/csv")},
                       data={k: str(v) for k, v in fields.items()}, headers=city.headers(user))


def poll(client, city, url, user="police_staff", timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url, headers=city.headers(user))
        assert r.status_code == 200, r.text
        if r.json()["state"] in ("done", "failed") or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.05)


def test_upload_and_wait_gbk(client, city, people, settings):
    rows = [person_row(n) for n in range(30)]
    r = upload(client, city, people, csv_bytes(rows, "gbk"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["version"], body["rows_in"], body["added"], body["row_count"]) == (1, 30, 30, 30)
    assert body["job"].startswith("/api/hub/uploads/")
    assert not list((Path(settings.data_dir) / "uploads").glob("upload-*"))  # temp file removed
    versions = client.get(f"/api/hub/resources/{people}/versions", headers=city.headers("police_staff"))
    assert versions.json()["items"][0]["filename"] == "people.csv"


def test_async_upload_job_reports_progress_then_the_result(client, city, people):
    data = csv_bytes([person_row(n) for n in range(50)])
    r = upload(client, city, people, data, wait=False, mode="replace")
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == job["url"]
    for key in ("state", "bytes_read", "total_bytes", "percent", "rows", "rows_per_second"):
        assert key in job
    assert job["state"] in ("queued", "running", "done") and job["total_bytes"] == len(data)
    done = poll(client, city, job["url"])
    assert done["state"] == "done", done
    assert (done["rows"], done["bytes_read"], done["percent"]) == (50, len(data), 100.0)
    assert done["result"]["version"] == 1 and done["result"]["row_count"] == 50
    assert done["problem"] is None
    # the department's admin may watch it; another department's staff may not
    assert client.get(job["url"], headers=city.headers("police_admin")).status_code == 200
    assert client.get(job["url"], headers=city.headers("env_staff")).status_code == 403
    assert client.get("/api/hub/uploads/nope", headers=city.headers("police_staff")).status_code == 404


def test_invalid_rows_give_a_422_problem_and_an_errors_csv(client, city, people):
    rows = [person_row(n) for n in range(8)]
    rows[4] = {**rows[4], "household_size": 0}
    r = upload(client, city, people, csv_bytes(rows))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    p = r.json()
    assert p["type"] == "/problems/invalid-rows" and p["rows_rejected"] == 1
    assert p["row_errors"] == [{"row": 6, "field": "household_size", "reason": p["row_errors"][0]["reason"]}]
    report = client.get(p["errors_csv"], headers=city.headers("police_staff"))
    assert report.status_code == 200 and report.content.startswith(b"\xef\xbb\xbf")
    lines = list(csv.reader(io.StringIO(report.content.decode("utf-8-sig"))))
    assert lines[1][:2] == ["6", "家庭人口 (household_size)"]
    # nothing was loaded; and an async job fails the same way, with its problem document
    resource = client.get(f"/api/hub/resources/{people}", headers=city.headers("police_staff")).json()
    assert resource["current_version"] == 0
    job = poll(client, city, upload(client, city, people, csv_bytes(rows), wait=False).json()["url"])
    assert job["state"] == "failed" and job["problem"]["status"] == 422
    assert job["problem"]["row_errors"][0]["row"] == 6 and job["errors_csv"]
    bad_file = upload(client, city, people, "姓名\n张三\n".encode())
    assert bad_file.status_code == 422 and "身份证号" in bad_file.json()["detail"]


def test_keep_valid_and_upsert_form_fields(client, city, people):
    rows = [person_row(n) for n in range(6)]
    rows[2] = {**rows[2], "gender": "X"}
    r = upload(client, city, people, csv_bytes(rows), keep_valid="true")
    assert r.status_code == 201 and (r.json()["row_count"], r.json()["rows_rejected"]) == (5, 1)
    r = upload(client, city, people, csv_bytes([person_row(9)]), mode="upsert")
    assert r.status_code == 201 and r.json()["row_count"] == 6
    assert upload(client, city, people, b"x", mode="merge").status_code == 422
    assert upload(client, city, people, b"a,b\n", name="people.doc").status_code == 422  # format


def test_upload_limit_is_413_and_applies_to_uploads_only(settings, engine, city, people):
    small = settings.model_copy(update={"hub_max_upload_bytes": 2048})
    with TestClient(create_app(small, engine=engine)) as c:
        headers = city.headers("police_staff")
        big = csv_bytes([person_row(n) for n in range(100)])
        assert len(big) > 2048
        r = c.post(UPLOADS.format(code=people) + "?wait=true", files={"file": ("p.csv", big)},
                   headers=headers)
        assert r.status_code == 413 and r.json()["type"] == "/problems/too-large"
        # without a Content-Length (chunked), the limit is enforced while the body streams in
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.csv\"\r\n"
                f"Content-Type: text/csv\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
        chunks = (body[i:i + 512] for i in range(0, len(body), 512))
        r = c.post(UPLOADS.format(code=people) + "?wait=true", content=chunks,
                   headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413, r.text
        ok = c.post(UPLOADS.format(code=people) + "?wait=true",
                    files={"file": ("p.csv", csv_bytes([person_row(1)]))}, headers=headers)
        assert ok.status_code == 201
        rows = [{**person_row(n), "birth_date": person_row(n)["birth_date"].isoformat()} for n in range(40)]
        pushed = c.post(f"/api/hub/resources/{people}/rows", json={"rows": rows}, headers=headers)
        assert pushed.status_code == 200, pushed.text  # a body over 2 KB elsewhere is fine
    assert not list((Path(settings.data_dir) / "uploads").glob("upload-*"))


def test_other_departments_cannot_upload(client, city, people):
    r = upload(client, city, people, csv_bytes([person_row(1)]), user="env_staff")
    assert r.status_code == 403
    assert upload(client, city, "301001-999999", b"x").status_code == 404


def _rows_json(n0, n1):
    return [{**person_row(n), "birth_date": person_row(n)["birth_date"].isoformat()} for n in range(n0, n1)]


def test_push_with_idempotency_key(client, city, people):
    url, h = f"/api/hub/resources/{people}/rows", city.headers("police_staff")
    body = {"rows": _rows_json(0, 5)}
    first = client.post(url, json=body, headers={**h, "Idempotency-Key": "k-1"})
    assert first.status_code == 200, first.text
    again = client.post(url, json=body, headers={**h, "Idempotency-Key": "k-1"})
    assert again.status_code == 200
    assert again.json()["replayed"] is True and first.json()["replayed"] is False
    assert again.json()["version"] == first.json()["version"] == 1
    d = client.post(url, json={"rows": [], "delete": [{"id_number": body["rows"][0]["id_number"]}],
                               "request_key": "k-2"}, headers=h).json()
    assert (d["version"], d["removed"], d["row_count"]) == (2, 1, 4)
    bad = client.post(url, json={"rows": [{"id_number": "110101199003070000", "name": "甲"}]}, headers=h)
    assert bad.status_code == 422 and bad.json()["row_errors"][0]["field"] == "id_number"
    assert client.post(url, json={"rows": [], "nope": 1}, headers=h).status_code == 422
    assert client.post(url, json=body, headers=city.headers("env_staff")).status_code == 403


def test_schema_describes_the_push_body(client, city, people):
    r = client.get(f"/api/hub/resources/{people}/schema", headers=city.headers("env_staff"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/schema+json")
    s = r.json()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["x-key-fields"] == ["id_number"] and s["required"] == ["rows"]
    row = s["$defs"]["row"]
    assert row["required"] == ["id_number"] and row["additionalProperties"] is False
    props = row["properties"]
    assert props["id_number"]["type"] == "string" and props["id_number"]["pattern"]
    assert props["birth_date"] == {"title": "出生日期", "type": ["string", "null"], "format": "date"}
    assert props["household_size"]["minimum"] == 1 and props["household_size"]["maximum"] == 30
    assert props["gender"]["enum"] == ["男", "女", None]
    assert s["then"]["properties"]["rows"]["items"]["required"] == ["id_number", "name"]
    sample = {"rows": _rows_json(0, 2), "mode": "upsert"}
    if importlib.util.find_spec("jsonschema"):
        import jsonschema

        jsonschema.Draft202012Validator(s).validate(sample)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(s).validate({"rows": [{"name": "no key"}]})
    else:  # without jsonschema: check the sample against the schema's own structure
        assert set(sample) <= set(s["properties"])
        for r_ in sample["rows"]:
            assert set(row["required"]) <= set(r_) and set(r_) <= set(props)


def test_diff_and_rollback_over_http(client, city, people):
    h = city.headers("police_staff")
    upload(client, city, people, csv_bytes([person_row(n) for n in range(5)]))
    upload(client, city, people, csv_bytes([person_row(n) for n in range(3)]))
    d = client.get(f"/api/hub/resources/{people}/versions/diff?from=1&to=2", headers=h)
    assert d.status_code == 200 and (d.json()["removed"], d.json()["added"]) == (2, 0)
    assert {r["name"] for r in d.json()["removed_rows"]} == {"居民3", "居民4"}
    r = client.post(f"/api/hub/resources/{people}/rollback", json={"to_version": 1}, headers=h)
    assert r.status_code == 201 and (r.json()["number"], r.json()["row_count"]) == (3, 5)
    assert r.json()["source"] == "rollback"
    assert client.post(f"/api/hub/resources/{people}/rollback", json={"to_version": 7},
                       headers=h).status_code == 422
    assert client.get(f"/api/hub/resources/{people}/versions/diff?from=1&to=2",
                      headers=city.headers("env_staff")).status_code == 403


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on a free loopback port serving tmp_path."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_scheduled_pull_from_a_local_http_server(client, city, people, sessions, file_server):
    folder, base = file_server
    (folder / "people.csv").write_bytes(csv_bytes([person_row(n) for n in range(7)], "gbk"))
    h = city.headers("police_staff")
    url = f"/api/hub/resources/{people}/pulls"
    r = client.post(url, json={"url": f"{base}/people.csv", "format": "csv", "every_minutes": 60}, headers=h)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    missing = client.post(url, json={"url": f"{base}/gone.csv", "format": "csv", "every_minutes": 5},
                          headers=h).json()["id"]
    assert client.post(url, json={"url": "file:///etc/passwd", "format": "csv", "every_minutes": 5},
                       headers=h).status_code == 422
    assert client.post(url, json={"url": f"{base}/x.csv", "every_minutes": 5},
                       headers=city.headers("env_staff")).status_code == 403
    with httpx.Client() as http_client:
        outcomes = pulls.pull_run_due(sessions, client=http_client)
    by_id = {o.pull_id: o for o in outcomes}
    assert by_id[pid].ok and by_id[pid].version == 1
    assert not by_id[missing].ok and "404" in by_id[missing].status  # recorded, not raised
    listed = {p["id"]: p for p in client.get(url, headers=h).json()["items"]}
    assert listed[pid]["last_status"].startswith("ok: version 1, 7 rows")
    assert listed[missing]["last_status"].startswith("failed")
    assert listed[pid]["next_run_at"] > listed[pid]["last_run_at"]
    with httpx.Client() as http_client:
        assert pulls.pull_run_due(sessions, client=http_client) == []  # nothing due again yet
    versions = client.get(f"/api/hub/resources/{people}/versions", headers=h).json()["items"]
    assert versions[0]["source"] == "pull" and versions[0]["created_by"] == "police_staff"
    assert client.delete(f"/api/hub/pulls/{pid}", headers=city.headers("env_staff")).status_code == 403
    assert client.delete(f"/api/hub/pulls/{pid}", headers=h).status_code == 204
    assert [p["id"] for p in client.get(url, headers=h).json()["items"]] == [missing]


def test_pull_size_limit(sessions, city, people, file_server):
    folder, base = file_server
    (folder / "big.csv").write_bytes(csv_bytes([person_row(n) for n in range(200)]))
    with sessions() as s:
        from cityos.core import auth
        from cityos.core.service import user_by_name

        pulls.pull_create(s, auth.user_actor(user_by_name(s, "police_staff")), people,
                          url=f"{base}/big.csv", format="csv", every_minutes=5)
        s.commit()
    with httpx.Client() as c:
        (o,) = pulls.pull_run_due(sessions, client=c, max_bytes=1024)
    assert not o.ok and "larger than 1024 bytes" in o.status


runner = CliRunner()


@pytest.fixture
def cli_env(settings, monkeypatch):
    monkeypatch.setenv("CITYOS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(settings.data_dir))
    return settings


def test_cli_hub_load_versions_rollback(cli_env, people, tmp_path, monkeypatch):
    from cityos.core.cli import console

    monkeypatch.setattr(console, "width", 200)  # Rich measured the terminal at import
    good = tmp_path / "people.csv"
    good.write_bytes(csv_bytes([person_row(n) for n in range(40)], "gbk"))
    r = runner.invoke(cli_app, ["hub", "load", str(good), "--resource", people, "--as", "police_staff"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "40" in r.output and "rows/s" in r.output
    rows = [person_row(n) for n in range(5)]
    rows[1] = {**rows[1], "household_size": "很多"}
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_bytes(rows))
    r = runner.invoke(cli_app, ["hub", "load", str(bad), "--resource", people], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    report = (tmp_path / "bad.errors.csv").read_bytes()
    assert report.startswith(b"\xef\xbb\xbf") and "家庭人口".encode() in report
    r = runner.invoke(cli_app, ["hub", "load", str(good), "--resource", people, "--as", "env_staff"])
    assert r.exit_code == 1 and "denied" in r.output
    r = runner.invoke(cli_app, ["hub", "versions", people], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "people.csv" in r.output
    r = runner.invoke(cli_app, ["hub", "rollback", people, "--to", "0"])
    assert r.exit_code == 0 and "version 2" in r.output
    r = runner.invoke(cli_app, ["hub", "pull", "--due"])
    assert r.exit_code == 0 and "no pulls due" in r.output


def test_header_titles_match_item_titles():
    assert len(HEADER_ZH) == len(NAMES)


def test_console_form_upload_with_the_csrf_field(client, city, people):
    from tests.core.test_pages import signed_in

    csrf = signed_in(client, "police_staff")  # a cookie session: the CSRF check reads the form first
    r = client.post(UPLOADS.format(code=people) + "?wait=true",
                    files={"file": ("p.csv", csv_bytes([person_row(n) for n in range(3)], "gbk"))},
                    data={"csrf_token": csrf, "mode": "upsert"})
    assert r.status_code == 201, r.text
    assert r.json()["row_count"] == 3
    forged = client.post(UPLOADS.format(code=people) + "?wait=true", files={"file": ("p.csv", b"x")},
                         data={"csrf_token": "0" * 64})
    assert forged.status_code == 403
