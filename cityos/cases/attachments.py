"""Photos of a case (工单附件): the reporter's (上报), the handling department's (处置) and the
inspector's (核查).

A file is judged by its content, never by its name or the type the client claims: Pillow must
recognise it as a JPEG, PNG, WebP or GIF image of sane dimensions, and the sniffed type is what
is stored and served. Report photos are public, as Open311's media_url is; handling and
verification photos are for staff who may read the case.
"""

from __future__ import annotations

import hashlib
import re
from io import BytesIO
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from cityos.cases import service as svc
from cityos.cases.models import OPEN_STATUSES, Case, CaseAttachment
from cityos.core import access, audit, crypto
from cityos.core.access import Actor, Target
from cityos.core.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthorized

MAX_BYTES = 5 * 1024 * 1024  # per file
MAX_PER_CASE = 9  # photos per case, all stages together
MAX_PIXELS = 50_000_000  # a 50-megapixel phone photo; anything larger is refused unopened
MAX_SIDE = 20_000  # pixels on either side: a 1 x 40,000,000 strip is no photo
STAGES = {"report": ("上报", "Report"), "handle": ("处置", "Handling"), "verify": ("核查", "Verification")}
PUBLIC_STAGES = ("report",)
TYPES = {"JPEG": ("image/jpeg", ".jpg"), "PNG": ("image/png", ".png"), "WEBP": ("image/webp", ".webp"),
         "GIF": ("image/gif", ".gif")}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|;]+')


def sniff(data: bytes) -> tuple[str, str]:
    """The content type and file suffix of an image, from its bytes (内容识别), or Invalid."""
    if not data:
        raise Invalid("file", "the file is empty / 文件为空")
    try:
        # Opening reads the header only, with no parsers but these four; Pillow itself refuses
        # anything past 2 x MAX_IMAGE_PIXELS (a decompression bomb) before our own limit applies.
        with Image.open(BytesIO(data), formats=list(TYPES)) as img:
            fmt, (width, height) = img.format or "", img.size
            if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
                raise Invalid("file", f"image of {width}x{height} pixels is too large (at most "
                                      f"{MAX_PIXELS} pixels) / 图片像素过大")
            if fmt not in TYPES:
                raise Invalid("file", f"{fmt or 'this'} images are not accepted: JPEG, PNG, WebP or GIF / "
                                      "仅接受 JPEG、PNG、WebP 或 GIF 图片")
            img.verify()
    except Image.DecompressionBombError:
        raise Invalid("file", "image dimensions are too large (decompression bomb) / 图片像素过大") from None
    except UnidentifiedImageError:
        raise Invalid("file", "not an image: JPEG, PNG, WebP or GIF / 不是可识别的图片文件") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt image data
        raise Invalid("file", f"damaged image: {exc} / 图片文件已损坏") from None
    return TYPES[fmt]


def clean_name(name: str | None, suffix: str) -> str:
    """The file's own name without any path, control or shell-special characters, ending in the
    suffix of what it really is (so `photo.jpg` holding a PNG is served as `photo.png`)."""
    base = re.split(r"[\\/]", name or "")[-1]
    stem = _UNSAFE.sub("_", base.rsplit(".", 1)[0] if "." in base else base).strip(" ._")[:120]
    return f"{stem or 'photo'}{suffix}"


def _is_centre(session: Session, actor: Actor, case: Case) -> bool:
    centre = case.dispatch_department
    return access.decide(actor, "cases.dispatch", Target("case", case.number, centre.id, centre.path),
                         session).allowed


def _holds(session: Session, actor: Actor, case: Case) -> bool:
    """The actor's department holds an open handling task on the case (承办部门)."""
    return any(access.decide(actor, "cases.handle",
                             Target("case_task", t.id, t.department_id, t.department.path), session).allowed
               for t in svc.open_tasks(session, case, step="handle"))


def may_attach(session: Session, actor: Actor, case: Case, stage: str, token: str | None = None) -> None:
    """Who may add a photo: the reporter (signed in, or holding the case's token) and the centre at
    report; the holding department and the centre at handling; the centre alone at verification."""
    own = actor.user_id is not None and actor.user_id == case.reporter_user_id
    by_token = bool(token) and crypto.constant_time_equal(str(token), case.token)
    if stage == "report" and (own or by_token):
        return
    if stage in ("report", "handle", "verify") and _is_centre(session, actor, case):
        return
    if stage == "handle" and _holds(session, actor, case):
        return
    if not actor.authenticated and stage != "report":
        raise Unauthorized()
    raise Forbidden(f"you may not add {stage} photos to case {case.number} / 无权为该工单上传此类附件")


def strip_metadata(data: bytes, content_type: str) -> bytes:
    """The photo without its EXIF and XMP (去除元数据): a phone's photo carries the GPS position
    it was taken at (often the reporter's home), the camera's serial and the time; report photos
    are public. The EXIF orientation is applied first, so the picture stays upright. JPEG keeps
    its quantisation tables (`quality="keep"`), so re-encoding costs next to nothing; GIFs carry
    no EXIF and are kept as sent."""
    if content_type == "image/gif":
        return data
    with Image.open(BytesIO(data)) as img:
        if not img.getexif() and "xmp" not in img.info and "XML:com.adobe.xmp" not in img.info:
            return data
        upright = ImageOps.exif_transpose(img)
        out = BytesIO()
        if content_type == "image/jpeg":
            keep = upright is img  # no rotation: the original tables still fit
            upright.save(out, "JPEG", quality="keep" if keep else 90, exif=b"",
                         icc_profile=img.info.get("icc_profile"))
        elif content_type == "image/webp":
            upright.save(out, "WEBP", lossless=False, quality=90, exif=b"", xmp=b"",
                         icc_profile=img.info.get("icc_profile"))
        else:
            upright.save(out, "PNG", icc_profile=img.info.get("icc_profile"))
        return out.getvalue()


def attach(session: Session, actor: Actor, case: Case, name: str | None, data: bytes, *,
           stage: str = "report", token: str | None = None) -> CaseAttachment:
    """Add a photo to an open case (上传附件), after checking who sends it and what it really is."""
    if stage not in STAGES:
        raise Invalid("stage", f"one of {', '.join(STAGES)} / 附件环节须为上报、处置或核查")
    may_attach(session, actor, case, stage, token)
    if case.status not in OPEN_STATUSES:
        raise Conflict(f"case {case.number} is {case.status}: photos can no longer be added / "
                       "工单已办结，不能再上传附件", "file")
    if len(data) > MAX_BYTES:
        raise TooLarge(MAX_BYTES)
    count = session.scalar(select(func.count()).select_from(CaseAttachment)
                           .where(CaseAttachment.case_id == case.id)) or 0
    if count >= MAX_PER_CASE:
        raise Invalid("file", f"at most {MAX_PER_CASE} files per case / 每件工单最多 {MAX_PER_CASE} 个附件")
    content_type, suffix = sniff(data)
    data = strip_metadata(data, content_type)
    att = CaseAttachment(case_id=case.id, name=clean_name(name, suffix), content_type=content_type,
                         size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data, stage=stage,
                         uploaded_by=actor.name[:64])
    session.add(att)
    session.flush()
    svc.event_add(session, case, actor, "attach", att.name,
                  detail={"attachment": att.id, "stage": stage, "content_type": content_type},
                  public=stage in PUBLIC_STAGES)
    audit.append(session, actor=actor.name, department=actor.department_code, action="cases.attach",
                 object_type="case", object_id=case.number,
                 detail={"attachment": att.id, "stage": stage, "size": att.size, "sha256": att.sha256})
    return att


def attachments_of(session: Session, case: Case, *, public_only: bool = False) -> list[CaseAttachment]:
    """A case's attachments without their bytes, oldest first."""
    stmt = (select(CaseAttachment).options(defer(CaseAttachment.data))
            .where(CaseAttachment.case_id == case.id).order_by(CaseAttachment.id))
    if public_only:
        stmt = stmt.where(CaseAttachment.stage.in_(PUBLIC_STAGES))
    return list(session.scalars(stmt))


def attachment_get(session: Session, actor: Actor, number: str, attachment_id: int) -> CaseAttachment:
    """One attachment with its bytes: report photos for anyone, the others for readers of the case
    (deny by default: 404 for a case the actor may not see)."""
    case = svc.case_by_number(session, number)
    att = session.scalar(select(CaseAttachment).where(CaseAttachment.id == attachment_id,
                                                      CaseAttachment.case_id == case.id))
    if att is None:
        raise NotFound("attachment", attachment_id)
    if att.stage not in PUBLIC_STAGES:
        svc.case_get(session, actor, number)
    if att.data is None:
        raise NotFound("attachment", attachment_id)  # an Open311 media_url: kept as a link only
    return att


def attachment_public(att: CaseAttachment, number: str | None, *, staff: bool = False) -> dict[str, Any]:
    """The shape the API returns for an attachment (never its bytes)."""
    href = att.url if att.url else f"/api/cases/{number}/attachments/{att.id}"  # `data` stays unloaded
    out: dict[str, Any] = {"id": att.id, "name": att.name, "content_type": att.content_type, "size": att.size,
                           "sha256": att.sha256, "stage": att.stage, "uploaded_at": svc._iso(att.uploaded_at),
                           "href": href}
    if staff:
        out["uploaded_by"] = att.uploaded_by
    return out
