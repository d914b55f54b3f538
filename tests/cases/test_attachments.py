"""Photos of a case: judged by content, not name; size and count limits; who may add and fetch them."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from cityos.cases import attachments
from cityos.core.errors import Invalid
from tests.cases.conftest import POINT, POLICE, CasesCity


def image(fmt: str = "PNG", size: tuple[int, int] = (32, 24)) -> bytes:
    buf = BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""
    data = bytearray(image("PNG", (1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A tiny GIF whose logical screen claims `width` x `height` pixels."""
    data = bytearray(image("GIF", (1, 1)))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def photo_with_gps(fmt: str = "JPEG", size: tuple[int, int] = (40, 20), orientation: int = 1) -> bytes:
    """A phone photo: EXIF with a GPS position (吉林市), the camera's serial, and an orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0xA431] = "SN-0042-REPORTER"  # BodySerialNumber
    exif[0x8825] = {1: "N", 2: (43.0, 50.0, 30.0), 3: "E", 4: (126.0, 33.0, 10.0)}  # GPSInfo
    buf = BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt, exif=exif)
    return buf.getvalue()


# -- the checks, without a database ----------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "content_type"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                                    ("PNG", "image/png")])
def test_a_photos_gps_position_and_serial_are_removed(fmt: str, content_type: str) -> None:
    sent = photo_with_gps(fmt)
    with Image.open(BytesIO(sent)) as before:
        assert before.getexif().get_ifd(0x8825)  # the fixture really carries a position
    kept = attachments.strip_metadata(sent, content_type)
    assert b"SN-0042-REPORTER" not in kept
    with Image.open(BytesIO(kept)) as after:
        assert not after.getexif() and after.size == (40, 20) and after.format == fmt


def test_a_turned_photo_stays_upright_without_its_exif() -> None:
    kept = attachments.strip_metadata(photo_with_gps("JPEG", (40, 20), orientation=6), "image/jpeg")
    with Image.open(BytesIO(kept)) as after:
        assert after.size == (20, 40) and not after.getexif()  # rotated as the camera meant it


@pytest.mark.parametrize(("fmt", "content_type"), [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                                    ("GIF", "image/gif")])
def test_a_picture_without_metadata_is_kept_as_sent(fmt: str, content_type: str) -> None:
    plain = image(fmt)
    assert attachments.strip_metadata(plain, content_type) == plain


@pytest.mark.parametrize(("fmt", "content_type"), [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                                    ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_images_are_known_by_their_content(fmt: str, content_type: str) -> None:
    assert attachments.sniff(image(fmt))[0] == content_type


@pytest.mark.parametrize("data", [b"", b"GIF89a is what I am, honestly", image("BMP"), image("TIFF"),
                                  image("PNG")[:60], b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"],
                         ids=["empty", "text", "bmp", "tiff", "truncated", "pdf"])
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(Invalid) as err:
        attachments.sniff(data)
    assert err.value.errors[0].field == "file"


@pytest.mark.parametrize("data", [png_claiming(30_000, 30_000), png_claiming(8_000, 8_000),
                                  png_claiming(100_000, 1), gif_claiming(65_535, 65_535)],
                         ids=["png-bomb", "png-50mp", "png-strip", "gif-bomb"])
def test_huge_dimensions_are_refused(data: bytes) -> None:
    with pytest.raises(Invalid, match="too large"):
        attachments.sniff(data)


@pytest.mark.parametrize(("name", "suffix", "clean"), [
    ("../../etc/passwd.png", ".png", "passwd.png"), ("C:\\Users\\me\\照片 1.JPG", ".jpg", "照片 1.jpg"),
    ("photo.jpg", ".png", "photo.png"), (None, ".gif", "photo.gif"), ('a";b\r\n.png', ".png", "a_b.png"),
    ("...", ".webp", "photo.webp"),
])
def test_names_lose_their_paths(name: str | None, suffix: str, clean: str) -> None:
    assert attachments.clean_name(name, suffix) == clean


# -- over HTTP, on both databases ----------------------------------------------------------------------


def api(cc: CasesCity, method: str, url: str, user: str | None = None, **kw: Any) -> Response:
    client: TestClient | None = cc.city.client
    assert client is not None
    return client.request(method, url, headers=cc.headers(user) if user else {}, **kw)


def upload(cc: CasesCity, number: str, data: bytes, name: str = "photo.jpg", user: str | None = None,
           **form: str) -> Response:
    return api(cc, "POST", f"/api/cases/{number}/attachments", user,
               files={"file": (name, data, "image/jpeg")}, data=form)


def new_case(cc: CasesCity) -> tuple[str, str]:
    r = api(cc, "POST", "/api/cases", json={"category": "noise", "description": "噪音扰民", **POINT})
    assert r.status_code == 201, r.text
    return r.json()["number"], r.json()["token"]


def test_the_reporter_adds_a_photo_anyone_may_see(cases_city: CasesCity) -> None:
    cc = cases_city
    number, token = new_case(cc)
    png = image("PNG")
    assert upload(cc, number, png).status_code == 403  # no token: not the reporter
    r = upload(cc, number, png, name="../现场.jpg", token=token)
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["content_type"] == "image/png" and meta["name"] == "现场.png" and meta["size"] == len(png)
    assert meta["stage"] == "report" and "uploaded_by" not in meta
    assert r.headers["location"] == meta["href"] == f"/api/cases/{number}/attachments/{meta['id']}"

    got = api(cc, "GET", meta["href"])  # report photos are public, like Open311's media_url
    assert got.status_code == 200 and got.content == png
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"].startswith("inline; filename=")
    assert "UTF-8''%E7%8E%B0%E5%9C%BA.png" in got.headers["content-disposition"]

    track = api(cc, "GET", f"/api/cases/track/{number}").json()
    assert [a["id"] for a in track["attachments"]] == [meta["id"]]
    assert track["timeline"][-1]["action"] == "attach"
    detail = api(cc, "GET", f"/api/cases/{number}", "hotline_agent").json()
    assert detail["attachments"][0]["uploaded_by"] == "anonymous"
    assert api(cc, "GET", f"/api/cases/{number}/attachments/999999").status_code == 404


def test_bad_files_are_refused(cases_city: CasesCity) -> None:
    cc = cases_city
    number, token = new_case(cc)
    r = upload(cc, number, b"just some text, honestly a jpeg", name="photo.jpg", token=token)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "file"
    r = upload(cc, number, b"\xff" * (attachments.MAX_BYTES + 1), token=token)
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")
    for bomb in (gif_claiming(65_535, 65_535), png_claiming(30_000, 30_000)):
        r = upload(cc, number, bomb, name="bomb.gif", token=token)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "file"
    r = upload(cc, number, image(), token=token, stage="lunch")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "stage"
    r = api(cc, "POST", f"/api/cases/{number}/attachments", data={"token": token})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "file"
    assert api(cc, "GET", f"/api/cases/track/{number}").json()["attachments"] == []


def test_at_most_nine_photos(cases_city: CasesCity) -> None:
    cc = cases_city
    number, token = new_case(cc)
    png = image("PNG", (4, 4))
    for _ in range(attachments.MAX_PER_CASE):
        assert upload(cc, number, png, token=token).status_code == 201
    r = upload(cc, number, png, token=token)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "file"


def test_staff_photos_are_for_staff(cases_city: CasesCity) -> None:
    cc = cases_city
    number, _ = new_case(cc)
    r = api(cc, "POST", f"/api/cases/{number}/actions/dispatch", "hotline_agent", json={"department": POLICE})
    assert r.status_code == 200, r.text
    jpeg = image("JPEG")
    assert upload(cc, number, jpeg, user="env_staff", stage="handle").status_code == 403  # not holding it
    assert upload(cc, number, jpeg, stage="handle").status_code == 401
    assert upload(cc, number, jpeg, user="police_staff", stage="verify").status_code == 403  # the centre's
    handled = upload(cc, number, jpeg, user="police_staff", stage="handle")
    assert handled.status_code == 201, handled.text
    verified = upload(cc, number, image("WEBP"), name="check.webp", user="hotline_agent", stage="verify")
    assert verified.status_code == 201 and verified.json()["content_type"] == "image/webp"

    href = handled.json()["href"]
    assert api(cc, "GET", href).status_code == 401
    assert api(cc, "GET", href, "env_staff").status_code == 404  # deny without telling it exists
    got = api(cc, "GET", href, "police_staff")
    assert got.status_code == 200 and got.content == jpeg and got.headers["content-type"] == "image/jpeg"
    assert got.headers["cache-control"] == "private, no-store"

    assert api(cc, "GET", f"/api/cases/track/{number}").json()["attachments"] == []
    detail = api(cc, "GET", f"/api/cases/{number}", "hotline_agent").json()
    assert [(a["stage"], a["uploaded_by"]) for a in detail["attachments"]] == [
        ("handle", "police_staff"), ("verify", "hotline_agent")]
    attach_events = [e for e in detail["timeline"] if e["action"] == "attach"]
    assert [e["public"] for e in attach_events] == [False, False]


def test_no_photos_once_a_case_is_over(cases_city: CasesCity) -> None:
    cc = cases_city
    number, token = new_case(cc)
    into, _ = new_case(cc)
    r = api(cc, "POST", f"/api/cases/{number}/actions/merge", "hotline_agent", json={"into": into})
    assert r.status_code == 200 and r.json()["status"] == "merged", r.text
    r = upload(cc, number, image(), token=token)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "file"
