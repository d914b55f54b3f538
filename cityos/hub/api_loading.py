"""Loading API (数据归集): file uploads with progress, pushes through the city standard data
interface (城市标准数据接口), its JSON Schema, version diff and rollback, scheduled pulls.

An upload streams to a file under `data_dir/uploads` (never into memory; its own size limit,
`hub_max_upload_bytes`), then loads in a worker thread with its own session while the client
polls the job; `?wait=true` loads before answering, for scripts. Jobs live in this process's
memory: a restart forgets them, while the versions they made stay in the database.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import orjson
from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from pydantic import Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from cityos.core import access
from cityos.core.access import OWN, SELF, Actor, Target
from cityos.core.db import utcnow
from cityos.core.errors import CityOSError, Invalid, NotFound, TooLarge
from cityos.core.schemas import Strict
from cityos.core.web import SessionDep, SignedInDep, platform_of
from cityos.hub import interface, loading, pulls, service, validate
from cityos.hub.models import Version
from cityos.hub.schemas import VersionOut

log = logging.getLogger("cityos.hub.uploads")
router = APIRouter(prefix="/api/hub", tags=["hub loading"])

access.define("hub.upload.read", "See an upload's progress and error report",
              department_admin=OWN, department_staff=SELF)

SUFFIXES = {".csv": "csv", ".txt": "csv", ".xlsx": "xlsx", ".json": "json", ".ndjson": "ndjson",
            ".jsonl": "ndjson"}
FIELD_LIMIT = 1024  # bytes of a non-file form field
WRITE_CHUNK = 1 << 20
KEEP_JOBS = 200  # finished jobs remembered per process


# -- upload jobs ----------------------------------------------------------------------------------


@dataclass
class Job:
    """One upload: where its file is, how far the load has got, and how it ended."""

    id: str
    code: str
    actor: Actor
    filename: str
    format: str
    mode: str
    keep_valid: bool
    encoding: str | None
    path: Path
    total_bytes: int
    state: str = "queued"  # queued|running|done|failed
    bytes_read: int = 0
    rows: int = 0
    created_at: dt.datetime = field(default_factory=utcnow)
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    titles: dict[str, str] = field(default_factory=dict)  # item name -> 中文名称, for the report
    result: dict[str, Any] | None = None
    error: CityOSError | None = None
    report: validate.ErrorReport | None = None
    lock: int = -1  # the descriptor holding the file's lock (`claim`), closed when the job ends

    def progress(self, bytes_read: int, rows: int) -> None:
        self.bytes_read, self.rows = bytes_read, rows

    def target(self) -> Target:
        a = self.actor
        return Target("hub.upload", self.id, a.department_id, a.department_path, owner_user_id=a.user_id)

    def public(self) -> dict[str, Any]:
        end = self.finished_at or utcnow()
        secs = (end - self.started_at).total_seconds() if self.started_at else 0.0
        body: dict[str, Any] = {
            "id": self.id, "url": f"/api/hub/uploads/{self.id}", "resource": self.code,
            "state": self.state, "filename": self.filename, "format": self.format, "mode": self.mode,
            "keep_valid": self.keep_valid, "created_by": self.actor.name,
            "bytes_read": self.bytes_read, "total_bytes": self.total_bytes,
            "percent": round(100 * self.bytes_read / self.total_bytes, 1) if self.total_bytes else None,
            "rows": self.rows, "rows_per_second": round(self.rows / secs) if secs > 0 else None,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "result": self.result, "problem": problem_body(self.error) if self.error else None,
        }
        if self.report is not None and self.report.total:
            body["errors_csv"] = f"/api/hub/uploads/{self.id}/errors.csv"
        return body


def problem_body(exc: CityOSError) -> dict[str, Any]:
    """The RFC 9457 problem document of an error, as the web shell would answer it."""
    body: dict[str, Any] = {"type": f"/problems/{exc.type_slug}", "title": exc.title,
                            "status": exc.status, "detail": exc.detail}
    if exc.errors:
        body["errors"] = [e.as_dict() for e in exc.errors]
    for k, v in exc.extra.items():
        body.setdefault(k, v)
    return body


class Jobs:
    """This process's upload jobs and the worker threads that run them (two at a time)."""

    def __init__(self, workers: int = 2) -> None:
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hub-upload")

    def add(self, job: Job) -> None:
        with self.lock:
            self.jobs[job.id] = job
            done = [j.id for j in self.jobs.values() if j.state in ("done", "failed")]
            for old in done[:max(0, len(done) - KEEP_JOBS)]:
                del self.jobs[old]

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)


_jobs_lock = threading.Lock()


def jobs_of(app: FastAPI) -> Jobs:
    """The app's job registry, made on first use."""
    with _jobs_lock:
        if getattr(app.state, "hub_jobs", None) is None:
            app.state.hub_jobs = Jobs()
            sweep(Path(app.state.platform.settings.data_dir) / "uploads")
        return app.state.hub_jobs  # type: ignore[no-any-return]


def claim(path: Path) -> int:
    """Create an upload's file and lock it for as long as this process owns it: the kernel lets
    go when the process dies, even by kill -9, which is how `sweep` tells what was left behind."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # swept between open and lock: take a fresh file


def sweep(folder: Path) -> None:
    """Remove the files of uploads whose process died before loading them (a restart forgets its
    jobs, and nothing else would): no live process, this one or another worker, holds their lock."""
    for path in folder.glob("upload-*"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            log.warning("removed %s, left by an upload whose server stopped before loading it", path.name)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)


def run_job(job: Job, sessions: Any) -> None:
    """Load a job's file in its own session and record the outcome on the job; never raises."""
    job.state, job.started_at = "running", utcnow()
    try:
        with sessions() as session:
            try:
                with job.path.open("rb") as stream:
                    result = loading.load_file(
                        session, job.actor, job.code, stream, job.format, encoding=job.encoding,
                        mode=job.mode, keep_valid=job.keep_valid, filename=job.filename,
                        total_bytes=job.total_bytes, progress=job.progress)
                session.commit()
            except BaseException:
                session.rollback()
                raise
        job.result, job.report = result.as_dict(), result.report
        job.rows = result.rows_in
        job.state = "done"
    except CityOSError as exc:
        job.error, job.state = exc, "failed"
        if isinstance(exc, loading.LoadRejected):
            job.report = exc.report
    except Exception:  # the job says it failed; the cause goes to the log, not to the client
        log.exception("upload %s into %s failed", job.id, job.code)
        job.error = CityOSError(detail="the load failed; nothing was changed / 导入失败，数据未变更",
                                status=500, title="Internal error", type_slug="internal")
        job.state = "failed"
    finally:
        job.bytes_read = max(job.bytes_read, job.total_bytes if job.state == "done" else 0)
        job.finished_at = utcnow()
        job.path.unlink(missing_ok=True)
        if job.lock >= 0:
            os.close(job.lock)
            job.lock = -1


def job_for(request: Request, actor: Actor, job_id: str) -> Job:
    """A job its uploader, their department's admin or a platform admin may see."""
    job = jobs_of(request.app).get(job_id)
    if job is None:
        raise NotFound("upload", job_id)
    if actor.name != job.actor.name or actor.kind != job.actor.kind:
        access.require(actor, "hub.upload.read", job.target())
    return job


# -- receiving a multipart upload -----------------------------------------------------------------


class _Upload:
    """Parses a multipart body as it streams: the one file part goes to disk, fields to memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.pending: list[bytes] = []
        self._header, self._value, self._disposition = b"", b"", b""
        self._name, self._is_file, self._buf = "", False, bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield,
                "on_header_value": self._hvalue, "on_header_end": self._hend,
                "on_headers_finished": self._headers_done, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self._disposition, self._buf, self._is_file = b"", bytearray(), False

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if self.filename is not None:
                raise Invalid("file", "send one file per upload / 每次只能上传一个文件")
            self.filename = Path(options[b"filename"].decode("utf-8", "replace")).name or "upload"
            self._is_file = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.size += end - start
            if self.size > self.limit:
                raise TooLarge(self.limit)
            self.pending.append(data[start:end])
        else:
            self._buf += data[start:end]
            if len(self._buf) > FIELD_LIMIT:
                raise Invalid(self._name or "form", "form field too long / 表单字段过长")

    def _end(self) -> None:
        if not self._is_file:
            self.fields[self._name] = self._buf.decode("utf-8", "replace").strip()


async def _receive(request: Request, target: Path, limit: int) -> _Upload:
    """Stream the request's multipart body into `target`; return the form fields and file name."""
    upload = _Upload(limit)
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not request.headers.get("content-type", "").startswith("multipart/form-data") or not boundary:
        raise Invalid("file", "send the file as multipart/form-data / 须以 multipart/form-data 上传文件")
    parser = MultipartParser(boundary, upload.callbacks())  # type: ignore[arg-type]
    async with await anyio.open_file(target, "wb") as out:
        try:
            stream = request.stream()
            async for chunk in stream:
                parser.write(chunk)
                if sum(len(p) for p in upload.pending) >= WRITE_CHUNK:
                    await out.write(b"".join(upload.pending))
                    upload.pending.clear()
            parser.finalize()
        except FormParserError as exc:
            raise Invalid("file", "malformed multipart body / 上传内容格式错误") from exc
        except RuntimeError as exc:  # the console's CSRF check already read the form: use it
            if "consumed" not in str(exc):
                raise
            form = await request.form()
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    upload.filename = Path(value.filename or "upload").name
                    while chunk := await value.read(WRITE_CHUNK):
                        upload.size += len(chunk)
                        if upload.size > limit:
                            raise TooLarge(limit) from None
                        await out.write(chunk)
                else:
                    upload.fields[name] = value.strip()
        await out.write(b"".join(upload.pending))
    if upload.filename is None:
        raise Invalid("file", "no file in the upload / 未上传文件")
    if upload.size == 0:
        raise Invalid("file", "the file is empty / 文件为空")
    return upload


def _format_of(upload: _Upload) -> str:
    fmt = upload.fields.get("format") or SUFFIXES.get(Path(upload.filename or "").suffix.lower(), "")
    if fmt not in ("csv", "xlsx", "json", "ndjson"):
        raise Invalid("format", "name the format (csv, xlsx, json, ndjson) or use a file name ending in it "
                      "/ 无法识别文件格式，请指定 format")
    return fmt


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "CSV (UTF-8 or GBK), XLSX, JSON"},
        "mode": {"type": "string", "enum": ["replace", "upsert"], "default": "replace"},
        "keep_valid": {"type": "boolean", "default": False,
                       "description": "load the valid rows and report the rest (默认全部或全不)"},
        "encoding": {"type": "string", "description": "CSV encoding; detected when omitted"},
        "format": {"type": "string", "enum": ["csv", "xlsx", "json", "ndjson"]},
    }}}}}}


@router.post("/resources/{code}/uploads", status_code=202, openapi_extra=UPLOAD_BODY,
             summary="Upload a file of rows (上传导入); 202 with the job to poll, or 201 with ?wait=true")
async def upload_create(
    code: str, request: Request, session: SessionDep, actor: SignedInDep,
    wait: Annotated[bool, Query(description="load before answering (201 with the result)")] = False,
) -> Response:
    platform = platform_of(request)
    res = await run_in_threadpool(loading.load_check, session, actor, code)  # refuse before receiving
    titles = {i.name: i.title for i in res.items}
    session.close()
    folder = Path(platform.settings.data_dir) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    job_id = uuid.uuid4().hex
    path = folder / f"upload-{job_id}"
    lock = claim(path)
    try:
        upload = await _receive(request, path, platform.settings.hub_max_upload_bytes)
        mode = upload.fields.get("mode") or "replace"
        if mode not in ("replace", "upsert"):
            raise Invalid("mode", "mode must be replace or upsert / 模式须为 replace 或 upsert")
        job = Job(job_id, code, actor, upload.filename or "upload", _format_of(upload), mode,
                  _flag(upload.fields.get("keep_valid")), upload.fields.get("encoding") or None,
                  path, upload.size, titles=titles, lock=lock)
    except BaseException:
        path.unlink(missing_ok=True)
        os.close(lock)
        raise
    jobs = jobs_of(request.app)
    jobs.add(job)
    if wait:
        await run_in_threadpool(run_job, job, platform.sessions)
        if job.error is not None:
            if job.report is not None and job.report.total:
                job.error.extra.setdefault("errors_csv", f"/api/hub/uploads/{job.id}/errors.csv")
            raise job.error
        return _json({"job": job.public()["url"], **(job.result or {})}, 201)
    jobs.pool.submit(run_job, job, platform.sessions)
    return _json(job.public(), 202, {"Location": f"/api/hub/uploads/{job.id}"})


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None,
          media_type: str = "application/json") -> Response:
    # OPT_NON_STR_KEYS: SQLAlchemy's column names are a str subclass that orjson refuses as keys.
    raw = orjson.dumps(body, default=str, option=orjson.OPT_NON_STR_KEYS)
    return Response(raw, status_code=status, media_type=media_type, headers=headers)


@router.get("/uploads/{job_id}", summary="An upload's progress, and its result or problem")
def upload_get(job_id: str, request: Request, actor: SignedInDep) -> Response:
    return _json(job_for(request, actor, job_id).public())


@router.get("/uploads/{job_id}/errors.csv", summary="The upload's full row error report (CSV)")
def upload_errors(job_id: str, request: Request, actor: SignedInDep) -> Response:
    job = job_for(request, actor, job_id)
    report = job.report or validate.ErrorReport()
    return Response(report.to_csv(job.titles), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{job.id}-errors.csv"'})


# -- push, schema, versions -----------------------------------------------------------------------


class PushIn(Strict):
    """A push through the city standard data interface: rows, and keys to delete."""

    rows: list[dict[str, Any]] = Field(default_factory=list, max_length=100_000)
    mode: Literal["upsert", "replace"] = "upsert"
    delete: list[dict[str, Any]] = Field(default_factory=list, max_length=100_000)
    keep_valid: bool = False
    request_key: str | None = Field(None, min_length=1, max_length=128)


@router.post("/resources/{code}/rows", summary="Push rows: batch upsert by key, idempotent (数据推送)")
def rows_push(
    code: str, body: PushIn, session: SessionDep, actor: SignedInDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=128)] = None,
) -> dict[str, Any]:
    key = idempotency_key or body.request_key
    if idempotency_key and body.request_key and idempotency_key != body.request_key:
        raise Invalid("request_key", "differs from the Idempotency-Key header / 与请求头不一致")
    result = loading.push(session, actor, code, body.rows, mode=body.mode, request_key=key,
                          delete=body.delete, keep_valid=body.keep_valid)
    session.commit()
    return result.as_dict()


@router.get("/resources/{code}/schema", summary="JSON Schema of the push body (城市标准数据接口)")
def resource_schema(code: str, session: SessionDep, actor: SignedInDep) -> Response:
    res = service.resource_get(session, actor, code)
    return _json(interface.push_schema(res), media_type="application/schema+json")


@router.get("/resources/{code}/versions/diff", summary="What changed between two versions (版本比对)")
def versions_diff(
    code: str, session: SessionDep, actor: SignedInDep,
    from_: Annotated[int, Query(alias="from", ge=0)], to: Annotated[int, Query(ge=0)],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Response:
    return _json(loading.version_diff(session, actor, code, from_, to, limit))


class RollbackIn(Strict):
    to_version: int = Field(ge=0, description="the version to restore; 0 empties the resource")
    note: str | None = Field(None, max_length=2000)


def version_out(v: Version) -> dict[str, Any]:
    return {c: getattr(v, c) for c in VersionOut.model_fields}


@router.post("/resources/{code}/rollback", status_code=201, response_model=VersionOut,
             summary="Make an earlier version current again, as a new version (回滚)")
def versions_rollback(code: str, body: RollbackIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    version = loading.rollback(session, actor, code, body.to_version, note=body.note)
    session.commit()
    return version_out(version)


# -- scheduled pulls ------------------------------------------------------------------------------


class PullIn(Strict):
    url: str = Field(min_length=8, max_length=1000, description="http:// or https:// only")
    format: Literal["csv", "xlsx", "json", "ndjson"] = "csv"
    every_minutes: int = Field(ge=1, le=366 * 24 * 60)
    mode: Literal["replace", "upsert"] = "replace"


@router.post("/resources/{code}/pulls", status_code=201, summary="Schedule a pull from a URL (定时采集)")
def pulls_create(code: str, body: PullIn, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    pull = pulls.pull_create(session, actor, code, **body.model_dump())
    session.commit()
    return pulls.pull_public(pull, code)


@router.get("/resources/{code}/pulls", summary="A resource's scheduled pulls")
def pulls_list(code: str, session: SessionDep, actor: SignedInDep) -> dict[str, Any]:
    return {"items": [pulls.pull_public(p, code) for p in pulls.pull_list(session, actor, code)]}


@router.delete("/pulls/{pull_id}", status_code=204, summary="Remove a scheduled pull")
def pulls_delete(pull_id: int, session: SessionDep, actor: SignedInDep) -> Response:
    pulls.pull_delete(session, actor, pull_id)
    session.commit()
    return Response(status_code=204)
