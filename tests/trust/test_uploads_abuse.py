"""Abuse of uploads (trust, issue 9 item 3): file names that climb out of the data dir, a zip bomb
dressed as a workbook, files that are not what they claim, and bodies too large to read.

The uploads the app takes: the data hub's files (CSV, XLSX, JSON, streamed to data_dir/uploads) and
the photos of cases (stored in the database). Open data has no uploads of its own (it publishes hub
resources) and maps import layers from the command line (`cityos maps import`), whose reader is
probed directly.
"""

from __future__ import annotations

import csv
import io
import resource
import select
import socket
import struct
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine

from cityos.app import create_app
from cityos.core.errors import Invalid
from cityos.core.settings import Settings
from cityos.maps import importers
from tests.opendata.conftest import air_row
from tests.trust.helpers_abuse import Refs, build_city, row_counts

MAX_BODY = 1 << 20  # the app's general limit in this module (settings.max_body_bytes)
MAX_UPLOAD = 4 << 20  # the hub's upload limit in this module (settings.hub_max_upload_bytes)
PROBLEM = "application/problem+json"


@pytest.fixture
def app(settings: Settings, engine: Engine) -> FastAPI:
    """The app with small body limits, so bodies over them are cheap to send."""
    settings.max_body_bytes, settings.hub_max_upload_bytes = MAX_BODY, MAX_UPLOAD
    return create_app(settings, engine=engine)


@pytest.fixture
def refs(city: Any, sessions: Any) -> Refs:
    return build_city(city, sessions)


def multipart(filename: bytes, content: bytes, content_type: bytes = b"text/csv",
              **fields: str) -> tuple[bytes, dict[str, str]]:
    """A multipart body built by hand, so a file name can hold anything (a NUL, backslashes)."""
    boundary = uuid.uuid4().hex.encode()
    parts = [b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + k.encode() + b'"\r\n\r\n'
             + v.encode() + b"\r\n" for k, v in fields.items()]
    parts.append(b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename
                 + b'"\r\nContent-Type: ' + content_type + b"\r\n\r\n" + content + b"\r\n")
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


def air_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def files_named(root: Path, marker: str) -> list[Path]:
    return [p for p in root.rglob(f"*{marker}*")]


# -- path traversal -------------------------------------------------------------------------------------


def test_upload_file_names_never_leave_the_data_dir(sqlite_only: None, refs: Refs, client: TestClient,
                                                    data_dir: Path) -> None:
    marker = uuid.uuid4().hex
    names = [f"../../h3-{marker}-up.csv", f"/tmp/h3-{marker}-abs.csv", f"..\\..\\h3-{marker}-win.csv",
             f"uploads/../../../h3-{marker}-mid.csv", f"h3-{marker}\x00.csv", f"%2e%2e%2fh3-{marker}-pct.csv"]
    code = refs.values["resource"]
    before = set((data_dir / "uploads").glob("*")) if (data_dir / "uploads").exists() else set()
    for n, name in enumerate(names):
        body, headers = multipart(name.encode(), air_csv([air_row(n * 8 + i) for i in range(8)]), format="csv",
                                  mode="upsert")
        r = client.post(f"/api/hub/resources/{code}/uploads?wait=true", content=body,
                        headers={**headers, **refs.headers("env_staff")})
        assert r.status_code == 201, (name, r.text)
        job = client.get(r.json()["job"], headers=refs.headers("env_staff")).json()
        shown = job["filename"]
        assert "/" not in shown and marker in shown, (name, shown)  # the name, never a path
    roots = [data_dir.parent.parent, Path("/tmp"), Path.cwd()]
    escaped = [p for root in roots for p in (root.glob(f"*{marker}*") if root == Path("/tmp") else
                                              files_named(root, marker))]
    assert escaped == [], f"files written outside the uploads folder: {escaped}"
    left = set((data_dir / "uploads").glob("*")) - before
    assert all(p.name.startswith("upload-") and marker not in p.name for p in left), left


def test_maps_import_refuses_paths_out_of_the_archive() -> None:
    """`cityos maps import` (the only layer import) checks every member before unpacking any."""
    for name in ("../evil.shp", "/etc/evil.shp", "a/../../evil.shp", "..\\evil.shp"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(name, b"x")
        buf.seek(0)
        with pytest.raises(Invalid) as exc:
            importers.read(buf, "shapefile")
        assert exc.value.errors[0].field == "file" and "unsafe path" in exc.value.detail


# -- a zip bomb dressed as a workbook -----------------------------------------------------------------------


def _deflate(data: bytes, final: bool) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def _zip(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of already deflated members (name, data, crc, inflated size), written by hand."""
    out, central = io.BytesIO(), []
    for name, data, crc, size in members:
        offset, raw = out.tell(), name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(raw), 0)
                  + raw + data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data),
                                   size, len(raw), 0, 0, 0, 0, 0, offset) + raw)
    start, directory = out.tell(), b"".join(central)
    out.write(directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central),
                                      len(directory), start, 0))
    return out.getvalue()


@pytest.fixture(scope="module")
def xlsx_bomb() -> bytes:
    """A real workbook whose first sheet's first cell is 1.1 GB of "A": about 1.1 MB on the wire. Each
    1 MiB of A is deflated once after a full flush, so its compressed block can simply be repeated."""
    book = openpyxl.Workbook()
    book.active.append(["site_code", "day"])
    plain = io.BytesIO()
    book.save(plain)
    members = []
    with zipfile.ZipFile(plain) as z:
        for info in z.infolist():
            if info.filename != "xl/worksheets/sheet1.xml":
                data = z.read(info.filename)
                members.append((info.filename, _deflate(data, True), zlib.crc32(data), len(data)))
    head = (b'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/'
            b'spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>')
    tail, fill, repeats = b"</t></is></c></row></sheetData></worksheet>", b"A" * (1 << 20), 1100
    crc = zlib.crc32(head)
    for _ in range(repeats):
        crc = zlib.crc32(fill, crc)
    body = _deflate(head, False) + _deflate(fill, False) * repeats + _deflate(tail, True)
    members.append(("xl/worksheets/sheet1.xml", body, zlib.crc32(tail, crc), len(head) + len(tail) + len(fill) * repeats))
    return _zip(members)


def test_zip_bomb_workbook_is_refused_quickly(sqlite_only: None, refs: Refs, client: TestClient,
                                             xlsx_bomb: bytes, engine: Engine) -> None:
    with zipfile.ZipFile(io.BytesIO(xlsx_bomb)) as z:
        assert sum(i.file_size for i in z.infolist()) > 1 << 30 and len(xlsx_bomb) < 2 << 20
    body, headers = multipart(b"report.xlsx", xlsx_bomb, b"application/vnd.openxmlformats-officedocument"
                                                         b".spreadsheetml.sheet", format="xlsx")
    headers |= refs.headers("env_staff")  # signed in before counting: a sign-in adds a token
    code, counts = refs.values["resource"], row_counts(engine)
    rss, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    r = client.post(f"/api/hub/resources/{code}/uploads?wait=true", content=body, headers=headers)
    took, grew_mb = time.monotonic() - started, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert r.json()["errors"][0]["field"] == "file" and "zip bomb" in r.text
    assert took < 5, f"took {took:.1f} s"  # inflating it would take tens of seconds
    assert grew_mb < 200, f"memory grew {grew_mb:.0f} MB"  # inflating it would take gigabytes
    after = row_counts(engine)
    assert {t: n for t, n in after.items() if t != "audit_log"} == {t: n for t, n in counts.items() if t != "audit_log"}


# -- content that is not what it claims ---------------------------------------------------------------------


def png(size: tuple[int, int] = (4, 4)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_case_photos_are_judged_by_their_content(refs: Refs, client: TestClient) -> None:
    number, token = refs.values["number"], refs.values["token"]
    url = f"/api/cases/{number}/attachments"
    fakes = [(b"photo.png", b"<html><body><script>alert(1)</script></body></html>"),
             (b"../../etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n"),
             (b"pic.png", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
             (b"pic.png", b"GIF89a<script>alert(1)</script>")]
    for name, content in fakes:
        body, headers = multipart(name, content, b"image/png", stage="report", token=token)
        r = client.post(url, content=body, headers=headers)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "file", (name, r.text)
    body, headers = multipart(b"../../etc/passwd.jpg", png(), b"image/jpeg", stage="report", token=token)
    r = client.post(url, content=body, headers=headers)
    assert r.status_code == 201, r.text
    photo = r.json()
    assert photo["name"] == "passwd.png" and photo["content_type"] == "image/png"  # what it really is
    got = client.get(r.headers["location"], headers=refs.headers("hotline_agent"))
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    disposition = got.headers["content-disposition"]
    assert "passwd.png" in disposition and "/" not in disposition.replace("UTF-8''", "")


def test_hub_error_report_is_served_as_a_download(refs: Refs, client: TestClient) -> None:
    """Cells full of markup come back in the error report as CSV text to download, never a page."""
    rows = [air_row(n) for n in range(4)]
    rows[1] = {**rows[1], "aqi": -1, "site_name": "<script>alert(1)</script>"}
    body, headers = multipart(b"page.html", air_csv(rows), b"text/html", format="csv", keep_valid="true")
    r = client.post(f"/api/hub/resources/{refs.values['resource']}/uploads?wait=true", content=body,
                    headers={**headers, **refs.headers("env_staff")})
    assert r.status_code == 201, r.text
    job = client.get(r.json()["job"], headers=refs.headers("env_staff")).json()
    report = client.get(job["errors_csv"], headers=refs.headers("env_staff"))
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    assert report.headers["x-content-type-options"] == "nosniff"
    assert report.headers["content-disposition"].startswith("attachment")


# -- bodies too large --------------------------------------------------------------------------------------


@pytest.fixture
def server(sqlite_only: None, live_server: str) -> Iterator[tuple[str, int]]:
    host, port = live_server.removeprefix("http://").split(":")
    yield host, int(port)


def _answer(sock: socket.socket, data: bytes = b"", timeout: float = 10.0) -> bytes:
    """The server's whole answer: `data` (what was already read) and the rest of it. Stops at the
    answer's end, not at the connection's: uvicorn keeps it open for its 5 s keep-alive."""
    sock.settimeout(timeout)
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _is_413_problem(answer: bytes) -> None:
    import orjson

    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert PROBLEM.encode() in head.lower()
    assert orjson.loads(body)["status"] == 413


def test_declared_oversized_body_is_refused_before_it_is_sent(server: tuple[str, int]) -> None:
    """A Content-Length over the limit is answered 413 at once: the server never waits for the body
    (the general limit, the hub's upload limit and the case report's)."""
    for path in ("/api/departments", "/api/hub/resources/x/uploads", "/cases/report"):
        with socket.create_connection(server) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {1 << 30}\r\n\r\n".encode() + b"{" * 1024)
            _is_413_problem(_answer(sock))


def test_streamed_oversized_body_is_cut_off_at_the_limit(server: tuple[str, int]) -> None:
    """Without a Content-Length (chunked), the body is counted as it comes and refused once over the
    limit: the server answers 413 while the client is still sending."""
    chunk = b"x" * (64 << 10)
    sent = 0
    with socket.create_connection(server) as sock:
        sock.sendall(b"POST /api/departments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        # Whole chunks only (a send cut short by a timeout would break the chunk framing); between
        # them, a look for the answer that does not wait.
        sock.settimeout(10)
        while sent < 64 * MAX_BODY and not select.select([sock], [], [], 0.05)[0]:
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = _answer(sock)
    _is_413_problem(answer)
    assert sent < 4 * MAX_BODY, f"{sent} bytes went in before the refusal"
