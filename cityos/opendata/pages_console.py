"""Open-data console (公共数据开放 工作台): datasets by state, publishing a resource with its
metadata and de-identification rules (脱敏规则), a dataset's page with its review history, the
publication check and each reviewer's buttons; the opening plan (开放计划), applications for
conditional data (the key is shown once), and the figures.

Thin over `opendata.service`, `opendata.applications` and `opendata.stats`, like `hub.pages`:
each page calls the service functions (which check access and audit), commits what they wrote,
and renders. The public portal is `opendata.pages`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

import cityos.hub.service as hub
from cityos.core import access
from cityos.core.access import Actor
from cityos.core.errors import Conflict, FieldError, Invalid, NotFound
from cityos.core.pages_base import (
    PAGE_SIZE,
    ConsoleActor,
    ConsoleRoute,
    field_errors,
    is_htmx,
    page_number,
    pager,
    redirect,
    render,
)
from cityos.core.service import MAX_PAGE
from cityos.core.web import SessionDep, language
from cityos.opendata import api, deid, service
from cityos.opendata.models import Dataset
from cityos.opendata.pages_console_plan import router as plan_pages
from cityos.opendata.schemas import DatasetIn, DatasetPatch

TEMPLATES = Path(__file__).resolve().parent / "templates"
console = APIRouter(prefix="/console/opendata", route_class=ConsoleRoute, include_in_schema=False)
FormStr = Annotated[str, Form()]
FORM_ERRORS = (ValidationError, Invalid, Conflict, NotFound)
STEPS = ("submit", "approve", "refuse", "withdraw")
TEXT = ("name", "title", "title_en", "description", "licence", "update_cycle", "open_level", "spatial",
        "temporal_start", "temporal_end", "lon_field", "lat_field", "k", "tags")
_SEP = re.compile(r"[,，、;；\s]+")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class DatasetForm(BaseModel):
    """The dataset form as posted: metadata, and the rules editor's rows as parallel lists (every
    row posts its item, action, method and parameters; ticked quasi-identifiers post their item)."""

    name: str = ""
    title: str = ""
    title_en: str = ""
    description: str = ""
    licence: str = ""
    update_cycle: str = ""
    open_level: str = ""
    spatial: str = ""
    temporal_start: str = ""
    temporal_end: str = ""
    lon_field: str = ""
    lat_field: str = ""
    k: str = ""
    tags: str = ""
    topics: list[str] = []
    quasi: list[str] = []
    rule_field: list[str] = []
    rule_action: list[str] = []
    rule_how: list[str] = []
    rule_params: list[str] = []


PostedForm = Annotated[DatasetForm, Form()]


def status_of(exc: Exception) -> int:
    return 422 if isinstance(exc, ValidationError) else int(getattr(exc, "status", 422))


# -- the rules editor: a row per source item ------------------------------------------------------


def _params_text(rule: dict[str, Any]) -> str:
    skip = {"field", "action", "to", *(("kind",) if rule.get("action") == "mask" else ())}
    return ", ".join(f"{k}={v}" for k, v in rule.items() if k not in skip)


def _value(text: str) -> Any:
    if _NUMBER.match(text):
        return float(text) if "." in text else int(text)
    return text


def rules_from_form(fields: list[str], actions: list[str], hows: list[str], params: list[str]
                    ) -> list[dict[str, Any]]:
    """The editor's rows as rules: action none → no rule; mask takes its kind and generalize
    its target from the second list; parameters are written `name=value, ...`."""
    rules, errors = [], []
    for field, action, how, text in zip(fields, actions, hows, params, strict=False):
        if not action:
            continue
        rule: dict[str, Any] = {"field": field, "action": action}
        if action == "mask" and how in deid.MASK_KINDS:
            rule["kind"] = how
        elif action == "generalize" and how:
            rule["to"] = how
        for part in filter(None, _SEP.split(text.strip())):
            name, eq, value = part.partition("=")
            if not eq or not name.strip() or not value.strip():
                errors.append(FieldError(f"rules.{field}", "write name=value / 参数格式为 名称=值"))
                break
            rule[name.strip()] = _value(value.strip())
        rules.append(rule)
    if errors:
        raise Invalid.many(errors)
    return rules


def rule_rows(rules: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Stored rules as the editor's rows, by source item."""
    return {r["field"]: {"action": r["action"], "how": str(r.get("kind") or r.get("to") or ""),
                         "params": _params_text(r)} for r in rules if "field" in r}


def row_errors(errors: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str]:
    """Errors of `rules[i].x` and `rules.<item>` under the key `rule.<item>` of their row."""
    out = {}
    for key, reason in errors.items():
        m = re.match(r"^rules\[(\d+)\](?:\.(\w+))?$", key)
        if m and int(m.group(1)) < len(rules):
            field = rules[int(m.group(1))]["field"]
            out[f"rule.{field}"] = f"{m.group(2) or ''} {reason}".strip()
        elif key.startswith("rules."):
            out[f"rule.{key[6:]}"] = reason
        else:
            out[key] = reason
    return out


def form_of(ds: Dataset) -> dict[str, Any]:
    """A dataset's values as the form shows them."""
    form: dict[str, Any] = {k: getattr(ds, k) for k in TEXT if k != "tags"}
    form.update(tags="、".join(ds.tags), topics=list(ds.topics), rules=rule_rows(ds.rules),
                quasi=_quasi_sources(ds.rules, ds.quasi_identifiers))
    return {k: ("" if v is None else v) for k, v in form.items()}


def _out_name(rules: list[dict[str, Any]], field: str) -> str:
    return next((str(r.get("name") or field) for r in rules if r.get("field") == field), field)


def _quasi_sources(rules: list[dict[str, Any]], quasi: list[str]) -> list[str]:
    """Quasi-identifiers are output columns; the editor ticks their source items."""
    renamed = {str(r["name"]): r["field"] for r in rules if r.get("name")}
    return [renamed.get(q, q) for q in quasi]


def spec_from_form(raw: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The submitted form as the API's request shape would carry it (blank → null)."""
    spec: dict[str, Any] = {k: (raw.get(k) or "").strip() or None for k in TEXT}
    spec["tags"] = [t for t in _SEP.split(raw.get("tags") or "") if t]
    spec["topics"] = raw.get("topics") or []
    spec["rules"] = rules
    spec["quasi_identifiers"] = [_out_name(rules, q) for q in raw.get("quasi") or []]
    return spec


def _defaults(res: Any) -> dict[str, Any]:
    return {"name": res.code.lower(), "title": res.name, "description": res.abstract,
            "tags": "、".join(res.keywords), "licence": "CC-BY-4.0", "update_cycle": res.update_cycle,
            "open_level": "conditional" if res.open_type == "conditional" else "open", "k": 5,
            "topics": [], "rules": {}, "quasi": []}


def _form_context(session: Session, lang: str) -> dict[str, Any]:
    """The pick lists of the dataset form."""
    return dict(
        topics=[(t.name, t.title if lang == "zh-CN" else (t.title_en or t.title))
                for t in service.topics(session)],
        licences=[(k, v[0]) for k, v in service.LICENCES.items()],
        cycles=[(k, v[0]) for k, v in hub.UPDATE_CYCLES.items()],
        levels=list(service.OPEN_LEVELS.items()), actions=list(deid.ACTIONS.items()),
        mask_kinds=list(deid.MASK_KINDS), generalize={k: (g.zh, g.en) for k, g in deid.GENERALIZE.items()},
    )


# -- datasets -------------------------------------------------------------------------------------


@console.get("", response_class=HTMLResponse)
def datasets(request: Request, session: SessionDep, actor: ConsoleActor, state: str = "",
             page: str = "1") -> Response:
    """Datasets of the departments one prepares for (all for the data office), by state."""
    n = page_number(page)
    state = state if state in service.STATES else ""
    paged = service.dataset_list(session, actor, state=state or None, limit=PAGE_SIZE,
                                 offset=(n - 1) * PAGE_SIZE)
    return render(request, "console/opendata/datasets.html", actor=actor, paged=paged, state=state,
                  states=service.STATES, pager=pager(request, paged.total, n), tab="datasets",
                  current="opendata")


def _new_page(request: Request, session: Session, actor: Actor, code: str, *, status: int = 200,
              form: dict[str, Any] | None = None, errors: dict[str, str] | None = None) -> Response:
    # dataset_list checks that the actor prepares data at all (residents and auditors do not).
    taken = {d.resource_id for d in service.dataset_list(session, actor, limit=MAX_PAGE).items}
    everywhere = access.reach_of(actor, "opendata.dataset.prepare") == access.ALL
    listed = hub.resource_list(session, actor, department=None if everywhere else actor.department_code,
                               limit=MAX_PAGE).items
    choices = [{"res": r, "taken": r.id in taken, "closed": r.secret or r.open_type == "closed"}
               for r in listed]
    res = hub.resource_get(session, actor, code) if code else None
    return render(request, "console/opendata/new.html", actor=actor, status=status, choices=choices,
                  res=res, items=list(res.items) if res else [],
                  form=form if form is not None else (_defaults(res) if res else {}), errors=errors or {},
                  tab="new", current="opendata", **_form_context(session, language(request)))


@console.get("/new", response_class=HTMLResponse)
def new(request: Request, session: SessionDep, actor: ConsoleActor, resource: str = "") -> Response:
    """Publish a resource (发布数据集): pick one of the department's resources, then fill in
    the metadata and the de-identification rules."""
    return _new_page(request, session, actor, resource[:64])


@console.post("/new", response_class=HTMLResponse)
def create(request: Request, session: SessionDep, actor: ConsoleActor, form: PostedForm,
           resource: FormStr = "") -> Response:
    """Save the draft; the check and the review come next, on the dataset's page."""
    code, raw = resource[:64], form.model_dump()
    rules: list[dict[str, Any]] = []
    try:
        rules = rules_from_form(form.rule_field, form.rule_action, form.rule_how, form.rule_params)
        spec = {k: v for k, v in spec_from_form(raw, rules).items() if v not in (None, [])}
        body = DatasetIn.model_validate({"resource": code, **spec})
        ds = service.dataset_draft(session, actor, resource=code, spec=body.spec())
    except FORM_ERRORS as exc:
        session.rollback()
        return _new_page(request, session, actor, code, status=status_of(exc),
                         form={**raw, "rules": _rows_of(form)},
                         errors=row_errors(field_errors(exc, language(request)), rules))
    session.commit()
    return redirect(f"/console/opendata/datasets/{quote(ds.name)}?done=draft")


def _rows_of(form: DatasetForm) -> dict[str, dict[str, str]]:
    """The editor's rows as submitted, to show them again with the errors."""
    return {f: {"action": a, "how": h, "params": p} for f, a, h, p in zip(
        form.rule_field, form.rule_action, form.rule_how, form.rule_params, strict=False)}


# -- a dataset ------------------------------------------------------------------------------------


def dataset_page(request: Request, session: Session, actor: Actor, name: str, *, status: int = 200,
                 **context: Any) -> Response:
    ds = service.dataset_get(session, actor, name)
    ctx: dict[str, Any] = dict(step_errors={}, check=None, check_errors=None, done="")
    ctx.update(context)
    return render(request, "console/opendata/dataset.html", actor=actor, status=status, ds=ds,
                  items=list(ds.resource.items), rules=rule_rows(ds.rules),
                  reviews=service.reviews(session, ds), actions=api.dataset_actions(session, actor, ds),
                  licences=service.LICENCES, topic_titles={t.name: t.title for t in service.topics(session)},
                  quasi=set(_quasi_sources(ds.rules, ds.quasi_identifiers)),
                  titles={i.name: i.title for i in ds.resource.items}, current="opendata", tab="datasets",
                  **ctx)


@console.get("/datasets/{name}", response_class=HTMLResponse)
def dataset(request: Request, session: SessionDep, actor: ConsoleActor, name: str,
            done: str = "") -> Response:
    """A dataset: metadata, rules, review history, the check, and the reviewer's buttons."""
    return dataset_page(request, session, actor, name, done=done if done in (*STEPS, "draft", "edit") else "")


@console.post("/datasets/{name}/check", response_class=HTMLResponse)
def check(request: Request, session: SessionDep, actor: ConsoleActor, name: str) -> Response:
    """Run the publication check (脱敏与k-匿名检查) now; writes nothing."""
    ds = service.dataset_get(session, actor, name)
    result, errors = None, None
    try:
        result = api.check_out(service.publication_check(session, ds))
    except Invalid as exc:
        errors = row_errors(field_errors(exc, language(request)), ds.rules)
    session.rollback()
    titles = {i.name: i.title for i in ds.resource.items}
    if is_htmx(request):
        return render(request, "console/opendata/_check.html", actor=actor, ds=ds, check=result,
                      check_errors=errors, titles=titles)
    return dataset_page(request, session, actor, name, status=200 if result else 422, check=result,
                        check_errors=errors)


def _edit_page(request: Request, session: Session, actor: Actor, ds: Dataset, *, status: int = 200,
               form: dict[str, Any] | None = None, errors: dict[str, str] | None = None) -> Response:
    return render(request, "console/opendata/edit.html", actor=actor, status=status, ds=ds, res=ds.resource,
                  items=list(ds.resource.items), form=form if form is not None else form_of(ds),
                  errors=errors or {}, name_fixed=ds.state == "published", tab="datasets",
                  current="opendata", **_form_context(session, language(request)))


@console.get("/datasets/{name}/edit", response_class=HTMLResponse)
def edit(request: Request, session: SessionDep, actor: ConsoleActor, name: str) -> Response:
    """Change a dataset's metadata or rules (rules changed under review send it back to draft)."""
    return _edit_page(request, session, actor, service.dataset_get(session, actor, name))


@console.post("/datasets/{name}/edit", response_class=HTMLResponse)
def update(request: Request, session: SessionDep, actor: ConsoleActor, name: str,
           form: PostedForm) -> Response:
    """Save what changed (only that: unchanged rules keep a dataset under review where it is)."""
    ds = service.dataset_get(session, actor, name)
    raw = form.model_dump()
    rules: list[dict[str, Any]] = []
    try:
        rules = rules_from_form(form.rule_field, form.rule_action, form.rule_how, form.rule_params)
        spec = spec_from_form(raw, rules)
        if ds.state == "published":
            spec.pop("name")  # fixed once published
        body = DatasetPatch.model_validate(spec).spec()
        changed = {k: v for k, v in body.items() if v != _stored(ds, k)}
        ds = service.dataset_update(session, actor, name, changed)
    except FORM_ERRORS as exc:
        session.rollback()
        ds = service.dataset_get(session, actor, name)
        return _edit_page(request, session, actor, ds, status=status_of(exc),
                          form={**raw, "rules": _rows_of(form)},
                          errors=row_errors(field_errors(exc, language(request)), rules))
    session.commit()
    return redirect(f"/console/opendata/datasets/{quote(ds.name)}?done=edit")


def _stored(ds: Dataset, key: str) -> Any:
    """What the form compares a posted value with (a stored null reads as the form's blank)."""
    value = getattr(ds, key)
    if value is None:
        return [] if key in ("tags", "topics") else "" if key == "description" else None
    return value


@console.post("/datasets/{name}/{step}", response_class=HTMLResponse)
def step(request: Request, session: SessionDep, actor: ConsoleActor, name: str, step: str,
         note: FormStr = "", reason: FormStr = "") -> Response:
    """A review step (审核): submit, approve, refuse (with the reason) or withdraw (with the reason)."""
    if step not in STEPS:
        raise NotFound("page", step)
    try:
        if step == "submit":
            service.dataset_submit(session, actor, name, note.strip() or None)
        elif step == "approve":
            service.dataset_approve(session, actor, name, note.strip() or None)
        elif step == "refuse":
            service.dataset_refuse(session, actor, name, reason[:2000])
        else:
            service.dataset_withdraw(session, actor, name, reason[:2000])
    except (Invalid, Conflict) as exc:
        session.rollback()
        ds = service.dataset_get(session, actor, name)
        return dataset_page(request, session, actor, name, status=status_of(exc),
                            step_errors={step: row_errors(field_errors(exc, language(request)), ds.rules)})
    session.commit()
    return redirect(f"/console/opendata/datasets/{quote(name)}?{urlencode({'done': step})}")


# The app mounts this one router: the pages above and the plan, applications and figures.
router = APIRouter(include_in_schema=False)
router.include_router(console)
router.include_router(plan_pages)
