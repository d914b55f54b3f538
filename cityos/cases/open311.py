"""Open311 GeoReport v2 at /open311/v2 (市民诉求开放接口): the case engine for existing Open311 apps.

A service is a category (事项类别) of the hotline or city management; a service request is a
case (工单), named by its case number, which exists at once, so a POST answers with the number
and the token alike. Every resource takes the spec's format suffix, `.json` or `.xml`:
`discovery`, `services`, `services/{service_code}`, `requests` (GET lists, POST submits),
`requests/{service_request_id}` and `tokens/{token}`. Errors come in the spec's own format
(`[{"code", "description"}]` or `<errors><error>...`), whatever raised them.

Choices the spec leaves open:
- `api_key` (form field, query parameter or X-API-Key header) is a platform API key of the
  submitting channel: the key's department is the channel (报送渠道), and the key must carry the
  scope `cases.report`. A missing or invalid key is 403, as the spec's example shows.
- POST takes form fields as the spec says, or a JSON object (`attribute` may then be an object).
  Attributes are checked against the service definition (required, list values, numbers,
  datetimes); attributes the definition does not know are ignored. `media_url` is kept as given
  (http or https only) and never fetched. `email`, `device_id` and `account_id` are accepted and
  not stored: the case model has no place for them.
- GET requests: `service_request_id` overrides the other filters; otherwise the last 90 days by
  default, newest first, at most 1000. Case statuses map onto the spec's two: closed, cancelled
  and merged are closed, the rest open. Merged cases are only found by their number. The
  reporter's name, phone and account are never shown. Dates without a time zone are city time.
- The approval line (审批) is not an Open311 service: its categories and cases are not offered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import mimetypes
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cityos.cases import service
from cityos.cases.models import STATUSES, Case, CaseAttachment, CaseCategory, CaseWorkflow
from cityos.cases.open311_xml import FORMATS, Fields, FieldsDep, errors, format_of_path, render
from cityos.core import access, auth, ratelimit, workdays
from cityos.core.access import Actor
from cityos.core.db import utcnow
from cityos.core.errors import CityOSError, FieldError, Forbidden, Invalid, NotFound
from cityos.core.models import ApiKey
from cityos.core.web import (
    SessionDep,
    _audit_denial,
    answer_errors_in,
    answering_errors_with,
    language,
    platform_of,
)

SPEC = "http://wiki.open311.org/GeoReport_v2"
LINES = ("hotline", "citymgmt")  # the lines offered as Open311 services
SCOPE = "cases.report"  # what a channel's API key must allow
MAX_REQUESTS, DEFAULT_DAYS = 1000, 90
CLOSED = ("closed", "cancelled", "merged")
OPEN = tuple(s for s in STATUSES if s not in CLOSED)
DATATYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")
MAX_ATTRIBUTE = {"string": 500, "text": 5000}
ATTRIBUTE_FIELD = re.compile(r"^attribute\[([^\]]+)\](\[\])?$")
# case_intake's field names, as an Open311 client knows them
FIELD_NAMES = {"category": "service_code", "lon": "long", "address": "address_string",
               "reporter_phone": "phone", "reporter_name": "first_name", "location": "lat/long"}
INVALID_KEY = "Invalid api_key received -- can't proceed with create_request. / api_key 无效，无法提交诉求"


# -- errors in the spec's format ------------------------------------------------------------------


async def open311_error(request: Request, exc: CityOSError) -> Response:
    """Any error as the spec's `errors` document: bad input is 400 (one entry per field), a
    missing or bad key 403, an unknown resource 404."""
    if isinstance(exc, access.Denied):
        await run_in_threadpool(_audit_denial, request, exc)
    status = {422: 400, 401: 403}.get(exc.status, exc.status)
    items = [(status, f"{e.field}: {e.reason}") for e in exc.errors] or [(status, exc.detail or exc.title)]
    return errors(format_of_path(request.url.path), status, items)


Open311Route = answering_errors_with(open311_error)
answer_errors_in("/open311/", open311_error)
ratelimit.answer_in("/open311/", lambda request, detail: errors(format_of_path(request.url.path), 429,
                                                                [(429, detail)]))
router = APIRouter(prefix="/open311/v2", tags=["Open311 GeoReport v2"], route_class=Open311Route)


def _format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise NotFound("format", f"{fmt} (json or xml)")
    return fmt


def _w3(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None


def _pick(zh: str | None, en: str | None, lang: str) -> str:
    return (en or zh or "") if lang == "en" else (zh or en or "")


# -- discovery and services -----------------------------------------------------------------------


@router.get("/discovery.{fmt}", summary="GeoReport service discovery document")
def discovery(fmt: str, request: Request, session: SessionDep) -> Response:
    """Where this GeoReport v2 endpoint is and what it speaks (服务发现)."""
    changed = _w3(session.scalar(select(func.max(CaseWorkflow.created_at))) or utcnow())
    body = {
        "changeset": changed,
        "contact": "12345 政务服务便民热线 / 12345 government service hotline",
        "key_service": "API keys are issued to a channel's department in the console (/console/apikeys), "
                       f"with the scope {SCOPE} / 接口密钥由部门管理员在控制台签发，须含 {SCOPE} 权限",
        "endpoints": [{"specification": SPEC, "url": str(request.base_url).rstrip("/") + "/open311/v2",
                       "changeset": changed, "type": "production",
                       "formats": ["text/xml", "application/json"]}],
    }
    return render(_format(fmt), "discovery", body)


def _services(session: Session) -> list[CaseCategory]:
    return [c for line in LINES for c in service.categories(session, line=line)]


def _service(session: Session, code: str) -> CaseCategory:
    cat = session.scalar(select(CaseCategory).where(CaseCategory.code == code, CaseCategory.active,
                                                    CaseCategory.line.in_(LINES)))
    if cat is None:
        raise NotFound("service", code)
    return cat


def _attributes(cat: CaseCategory) -> list[dict[str, Any]]:
    """The category's Open311 attributes that name a code (the rest cannot be answered)."""
    return [a for a in cat.attributes or [] if isinstance(a, dict) and a.get("code")]


def _values(attr: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in attr.get("values") or [] if isinstance(v, dict) and "key" in v]


def _variable(attr: dict[str, Any]) -> bool:
    return bool(attr.get("variable", True))


def _datatype(attr: dict[str, Any]) -> str:
    datatype = attr.get("datatype")
    return datatype if datatype in DATATYPES else "string"


def service_public(cat: CaseCategory, lang: str) -> dict[str, Any]:
    """A category as an Open311 service."""
    return {"service_code": cat.code, "service_name": _pick(cat.name, cat.name_en, lang),
            "description": cat.description or _pick(cat.name, cat.name_en, lang),
            "metadata": bool(_attributes(cat)), "type": "realtime", "keywords": ", ".join(cat.keywords or []),
            "group": cat.group or ""}


def attribute_public(attr: dict[str, Any], order: int) -> dict[str, Any]:
    """One attribute of a service definition, with the spec's defaults filled in."""
    out: dict[str, Any] = {
        "variable": _variable(attr), "code": attr["code"], "datatype": _datatype(attr),
        "required": bool(attr.get("required", False)),
        "datatype_description": attr.get("datatype_description"),
        "order": attr.get("order", order), "description": attr.get("description") or attr["code"],
    }
    if out["datatype"] in ("singlevaluelist", "multivaluelist"):
        out["values"] = [{"key": v["key"], "name": v.get("name", v["key"])} for v in _values(attr)]
    return out


@router.get("/services.{fmt}", summary="GET services: the categories one may report")
def services_list(fmt: str, request: Request, session: SessionDep) -> Response:
    lang = language(request)
    return render(_format(fmt), "services", [service_public(c, lang) for c in _services(session)])


@router.get("/services/{service_code}.{fmt}", summary="GET a service definition (its attributes)")
def service_definition(service_code: str, fmt: str, session: SessionDep) -> Response:
    fmt = _format(fmt)
    cat = _service(session, service_code)
    attrs = [attribute_public(a, i) for i, a in enumerate(_attributes(cat), start=1)]
    return render(fmt, "service_definition", {"service_code": cat.code, "attributes": attrs})


# -- POST requests --------------------------------------------------------------------------------


def channel_actor(session: Session, raw: str) -> Actor:
    """The submitting channel (报送渠道): a platform API key allowed to report; its department is
    the channel, and the key is kept with the case."""
    actor = auth.apikey_actor(session, raw) if raw else None
    if actor is None:
        raise Forbidden(INVALID_KEY)
    if actor.scopes is not None and SCOPE not in actor.scopes:
        raise Forbidden(f"this api_key may not submit requests (scope {SCOPE}) / 该密钥无提交诉求权限")
    if actor.token_id is None:  # core's apikey_actor does not name the key row (yet)
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.prefix == actor.name.removeprefix("apikey:")))
        actor = dataclasses.replace(actor, token_id=key_id)
    return actor


def _w3_parse(text: str, field: str) -> dt.datetime:
    """A W3C datetime (2010-01-01T00:00:00Z, or a date); without a time zone it is city time."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise Invalid(field, f"{text!r} is not a W3C datetime such as 2010-01-01T00:00:00Z / 时间格式错误") \
            from None
    if not 1900 <= value.year <= 9000:  # year 1 or 9999 overflow once moved to UTC or back 90 days
        raise Invalid(field, f"{text!r} is out of range (years 1900 to 9000) / 时间超出范围")
    return value if value.tzinfo else value.replace(tzinfo=workdays.CITY_TZ)


def _check_value(attr: dict[str, Any], value: str, field: str, errors: list[FieldError]) -> Any:
    datatype = _datatype(attr)
    if datatype in ("singlevaluelist", "multivaluelist"):
        keys = {str(v["key"]): v["key"] for v in _values(attr)}
        if value not in keys:
            errors.append(FieldError(field, f"{value!r} is not one of {', '.join(keys)} / 不是可选值"))
        return keys.get(value)
    if datatype == "number":
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            errors.append(FieldError(field, "a number is required / 须为数字"))
            return None
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if datatype == "datetime":
        try:
            return _w3(_w3_parse(value, field))
        except Invalid as exc:
            errors.extend(exc.errors)
            return None
    limit = MAX_ATTRIBUTE.get(datatype, MAX_ATTRIBUTE["text"])
    if len(value) > limit:
        errors.append(FieldError(field, f"at most {limit} characters / 内容过长"))
    return value


def check_attributes(cat: CaseCategory, fields: Fields, errors: list[FieldError]) -> dict[str, Any]:
    """The values of the service's attributes, checked against its definition (属性校验)."""
    given: dict[str, list[str]] = {}
    for name, values in fields.items():
        m = ATTRIBUTE_FIELD.match(name)
        if m:
            given.setdefault(m.group(1), []).extend(v.strip() for v in values if v.strip())
    out: dict[str, Any] = {}
    for attr in _attributes(cat):
        code, field = attr["code"], f"attribute[{attr['code']}]"
        values = given.get(code, [])
        if not _variable(attr):
            continue
        if not values:
            if attr.get("required"):
                errors.append(FieldError(field, "required / 必填"))
            continue
        if _datatype(attr) == "multivaluelist":
            out[code] = [_check_value(attr, v, field, errors) for v in dict.fromkeys(values)]
        elif len(values) > 1:
            errors.append(FieldError(field, "one value only / 只能填一个值"))
        else:
            out[code] = _check_value(attr, values[0], field, errors)
    return out


def _media_url(text: str, errors: list[FieldError]) -> str | None:
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(text) > 500 or \
            any(ch.isspace() for ch in text):
        errors.append(FieldError("media_url", "an http(s) URL of at most 500 characters / 须为 http(s) 网址"))
        return None
    return text


def intake_spec(session: Session, fields: Fields) -> tuple[dict[str, Any], str | None]:
    """The case to register, from the spec's fields, and its media URL; the intake checks the rest
    (the point within the city's range, the text's length)."""
    errors: list[FieldError] = []
    code = fields.one("service_code")
    cat = None
    if not code:
        errors.append(FieldError("service_code", "required / 必填"))
    else:
        try:
            cat = _service(session, code)
        except NotFound:
            errors.append(FieldError("service_code", f"unknown service {code!r} / 未知的服务类别"))
    lat, lon = fields.one("lat"), fields.one("long")
    address, address_id = fields.one("address_string"), fields.one("address_id")
    if bool(lat) != bool(lon):
        errors.append(FieldError("long" if lat else "lat", "lat and long go together / 经纬度须同时提供"))
    elif not (lat or address or address_id):
        errors.append(FieldError("lat/long", "lat and long, address_string or address_id is required / "
                                             "须提供经纬度、地址或地址编号"))
    email = fields.one("email")
    if email and (len(email) > 254 or not re.fullmatch(r"[^@\s]+@[^@\s]+", email)):
        errors.append(FieldError("email", "not an e-mail address / 邮箱格式不正确"))
    media = _media_url(fields.one("media_url"), errors)
    attributes = check_attributes(cat, fields, errors) if cat is not None else {}
    if errors:
        raise Invalid.many(errors)
    assert cat is not None
    description = fields.one("description")
    spec: dict[str, Any] = {
        "category": cat.code, "description": description, "title": "" if description else cat.name,
        "address": address or address_id,
        "reporter_name": f"{fields.one('first_name')} {fields.one('last_name')}".strip(),
        "reporter_phone": re.sub(r"[\s().]", "", fields.one("phone")), "attributes": attributes,
    }
    if lat:
        spec["lat"], spec["lon"] = lat, lon
    return spec, media


def _renamed(exc: Invalid) -> Invalid:
    """The intake's complaints, naming the fields as the client sent them."""
    return Invalid.many([FieldError(FIELD_NAMES.get(e.field, e.field), e.reason) for e in exc.errors])


def attach_media(session: Session, case: Case, url: str, actor: Actor) -> CaseAttachment:
    """Keep an Open311 `media_url` as the case's photo (附件), by reference: it is never fetched."""
    name = urlsplit(url).path.rsplit("/", 1)[-1][:200] or "media"
    row = CaseAttachment(case_id=case.id, name=name,
                         content_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
                         size=0, sha256=hashlib.sha256(url.encode()).hexdigest(), data=None, url=url,
                         stage="report", uploaded_by=actor.name[:64])
    session.add(row)
    return row


@router.post("/requests.{fmt}", status_code=201, summary="POST a service request (submit a case)")
def request_create(fmt: str, request: Request, session: SessionDep, fields: FieldsDep) -> Response:
    """Register a case from an Open311 app (受理): its number is the service_request_id."""
    fmt = _format(fmt)
    raw = fields.one("api_key") or request.query_params.get("api_key", "").strip() or \
        request.headers.get("x-api-key", "").strip()
    actor = channel_actor(session, raw)
    spec, media = intake_spec(session, fields)
    try:
        case = service.case_intake(session, actor, spec, channel="open311",
                                   settings=platform_of(request).settings).case
    except Invalid as exc:
        raise _renamed(exc) from None
    if media:
        attach_media(session, case, media, actor)
    session.commit()
    notice = f"已受理，工单号 {case.number} / received as case {case.number}"
    body = [{"service_request_id": case.number, "token": case.token, "service_notice": notice,
             "account_id": None}]
    return render(fmt, "service_requests", body, 201)


# -- GET requests ---------------------------------------------------------------------------------


def _split(text: str | None) -> list[str]:
    return list(dict.fromkeys(p.strip() for p in (text or "").split(",") if p.strip()))


def _statuses(text: str | None) -> tuple[str, ...] | None:
    """Case statuses for the spec's `status` (open, closed); None: every listed status."""
    asked = {s.lower() for s in _split(text)}
    if asked - {"open", "closed"}:
        raise Invalid("status", "open, closed or both / 状态须为 open 或 closed")
    if not asked or asked == {"open", "closed"}:
        return None
    return OPEN if "open" in asked else tuple(s for s in CLOSED if s != "merged")


def _range(start: str | None, end: str | None) -> tuple[dt.datetime, dt.datetime | None]:
    since = _w3_parse(start, "start_date") if start else None
    until = _w3_parse(end, "end_date") if end else None
    if since and until and until < since:
        raise Invalid("end_date", "before start_date / 结束时间早于开始时间")
    if since is None:
        since = (until or utcnow()) - dt.timedelta(days=DEFAULT_DAYS)
    return since, until


def find_requests(session: Session, codes: list[str], statuses: tuple[str, ...] | None,
                  since: dt.datetime, until: dt.datetime | None) -> list[Case]:
    """Cases for GET requests, newest first, through `public_cases` (one query per service code and
    case status asked for: it takes one of each)."""
    found: dict[int, Case] = {}
    each_code: list[str | None] = [*codes] or [None]
    each_status: list[str | None] = [*(statuses or ())] or [None]
    for code in each_code:
        for status in each_status:
            for case in service.public_cases(session, category=code, status=status, since=since, until=until,
                                             limit=MAX_REQUESTS):
                found[case.id] = case
    cases = sorted(found.values(), key=lambda c: (c.created_at, c.id), reverse=True)
    return [c for c in cases if c.line in LINES][:MAX_REQUESTS]


def by_numbers(session: Session, numbers: list[str]) -> list[Case]:
    """The cases of these service_request_ids (merged ones too), in the order asked."""
    found = {c.number: c for status in (None, "merged")
             for c in service.public_cases(session, numbers=numbers, status=status, limit=len(numbers))}
    return [found[n] for n in numbers if n in found and found[n].line in LINES]


def _media_urls(session: Session, cases: Iterable[Case]) -> dict[int, str]:
    ids = [c.id for c in cases]
    if not ids:
        return {}
    rows = session.execute(select(CaseAttachment.case_id, CaseAttachment.url)
                           .where(CaseAttachment.case_id.in_(ids), CaseAttachment.url.is_not(None),
                                  CaseAttachment.stage == "report").order_by(CaseAttachment.id.desc()))
    return {case_id: url for case_id, url in rows if url}  # newest first: the oldest one is kept


def request_public(case: Case, lang: str, media_url: str | None) -> dict[str, Any]:
    """A case as an Open311 service request: never the reporter's name, phone or account."""
    cat, dept = case.category, case.department or case.dispatch_department
    zh, en = STATUSES[case.status]
    return {
        "service_request_id": case.number, "status": "closed" if case.status in CLOSED else "open",
        "status_notes": case.reply or None,
        "service_name": _pick(cat.name, cat.name_en, lang) if cat else None,
        "service_code": cat.code if cat else None, "description": case.description,
        "agency_responsible": _pick(dept.name, dept.name_en, lang), "service_notice": _pick(zh, en, lang),
        "requested_datetime": _w3(case.created_at), "updated_datetime": _w3(case.updated_at),
        "expected_datetime": _w3(case.due_at), "address": case.address, "address_id": None,
        "zipcode": None, "lat": case.lat, "long": case.lon, "media_url": media_url,
    }


def _answer(session: Session, request: Request, fmt: str, cases: list[Case]) -> Response:
    lang, media = language(request), _media_urls(session, cases)
    return render(fmt, "service_requests", [request_public(c, lang, media.get(c.id)) for c in cases])


@router.get("/requests.{fmt}", summary="GET service requests, filtered")
def requests_list(fmt: str, request: Request, session: SessionDep) -> Response:
    """Public cases (公开工单): by ids, or by service code, status and date, newest first."""
    fmt, q = _format(fmt), request.query_params
    numbers = _split(q.get("service_request_id"))
    if numbers:
        return _answer(session, request, fmt, by_numbers(session, numbers[:MAX_REQUESTS]))
    codes = _split(q.get("service_code"))
    for code in codes:
        try:
            _service(session, code)
        except NotFound:
            raise Invalid("service_code", f"unknown service {code!r} / 未知的服务类别") from None
    since, until = _range(q.get("start_date"), q.get("end_date"))
    return _answer(session, request, fmt, find_requests(session, codes, _statuses(q.get("status")),
                                                        since, until))


@router.get("/requests/{service_request_id}.{fmt}", summary="GET one service request")
def request_get(service_request_id: str, fmt: str, request: Request, session: SessionDep) -> Response:
    fmt = _format(fmt)
    cases = by_numbers(session, [service_request_id])
    if not cases:
        raise NotFound("service request", service_request_id)
    return _answer(session, request, fmt, cases)


@router.get("/tokens/{token}.{fmt}", summary="GET the service_request_id of a token")
def token_get(token: str, fmt: str, session: SessionDep) -> Response:
    fmt = _format(fmt)
    try:
        case = service.case_track(session, token)
    except NotFound:
        case = None
    if case is None or case.token != token or case.line not in LINES:
        raise NotFound("token", token)
    return render(fmt, "service_requests", [{"service_request_id": case.number, "token": case.token}])
