"""Alert rules (告警规则): rules as data, checked by one table, and the engine that runs them.

A rule is a `kind` and its `params` (see `KINDS`), attached to an observed property (every
stream of it in the rule's department subtree), a thing, a group of things, or one datastream.

The `Engine` is a writer listener: `feed` only queues the committed batch, and a worker thread
evaluates the readings of streams that have rules, in phenomenon-time order, keeping each
(rule, datastream) pair's state in memory. A reading older than the newest one a pair has seen
is skipped: a late reading cannot change the past. Only verdicts that change something reach
the database (`alerts.record`), in the engine's own short transactions. After a restart the
state is rebuilt lazily: an unresolved alert in the database means "currently alerting".

Cost: a reading of a stream without rules is one dict lookup in the worker, and nothing at all
on the writer thread.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import shapely
import shapely.geometry
import sqlalchemy
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityos.core import access, audit
from cityos.core.access import Actor, Target
from cityos.core.errors import Invalid, NotFound
from cityos.core.models import Department
from cityos.sensing import alerts
from cityos.sensing.alerts import CLEAR, FIRE, REPEAT, Change
from cityos.sensing.ingest import now_ms
from cityos.sensing.models import Alert, Datastream, Group, ObservedProperty, Rule, Thing, group_things
from cityos.sensing.service import readable_departments
from cityos.sensing.store import Written

log = logging.getLogger("cityos.sensing.rules")

OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt,
                                                  "<=": operator.le}
EXPRS: dict[str, Callable[[float, float], float]] = {
    "a - b": operator.sub, "a + b": operator.add, "a / b": lambda a, b: a / b if b else math.nan}
TARGETS = ("property", "thing", "group", "datastream")
FLAP_SECONDS = 60


# -- rules as data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter of a rule kind: its name, what it must be, and its default if optional."""

    name: str
    type: str  # number|nonneg|positive|count|op|expr|choice|polygon|id
    required: bool = True
    default: Any = None
    choices: tuple[str, ...] = ()


_COMMON = (Param("flap_seconds", "nonneg", False, FLAP_SECONDS),)
KINDS: dict[str, tuple[Param, ...]] = {
    # value crosses a limit; resolves when it no longer satisfies `op clear` (hysteresis), and
    # opens only after holding for `for_seconds` of phenomenon time (minimum duration)
    "threshold": (Param("op", "op"), Param("value", "number"), Param("clear", "number", False),
                  Param("for_seconds", "nonneg", False, 0)),
    # absolute change between consecutive readings, scaled to `per_seconds`, above `max_change`
    "rate": (Param("max_change", "nonneg"), Param("per_seconds", "positive", False, 1)),
    # device offline (离线): no reading for intervals × interval_seconds of wall clock
    "nodata": (Param("intervals", "count", False, 3), Param("interval_seconds", "positive", False)),
    # stuck sensor (数值卡滞): the last `count` readings all within `tolerance` of each other
    "flatline": (Param("count", "count"), Param("tolerance", "nonneg", False, 0)),
    # physically implausible value (数值异常)
    "range": (Param("min", "number", False), Param("max", "number", False)),
    # a moving thing's position (GeoJSON Point results) entering or leaving a polygon (电子围栏)
    "geofence": (Param("polygon", "polygon"), Param("on", "choice", False, "leave", ("enter", "leave"))),
    # two streams: `expr` over the latest a (this stream) and b (other_datastream), compared
    "combo": (Param("other_datastream", "id"), Param("op", "op"), Param("expr", "expr", False, "a - b"),
              Param("value", "number")),
}

MESSAGES = {  # what an opened alert says; formatted with the params and the value `v`
    "threshold": "读数 {v} {op} {value} / reading {v} {op} {value}",
    "rate": "变化速率 {v}/{per_seconds}s 超过 {max_change} / change {v} per {per_seconds}s over {max_change}",
    "nodata": "{intervals} 个周期无数据（设备离线）/ no data for {intervals} intervals (device offline)",
    "flatline": "最近 {count} 个读数不变（传感器卡滞）/ last {count} readings flat (stuck sensor)",
    "range": "读数 {v} 超出合理范围 [{min}, {max}] / reading {v} outside the plausible range",
    "geofence": "位置 {v} 触发电子围栏（{on}）/ position {v} triggered the geofence ({on})",
    "combo": "{expr} = {v} {op} {value}（双数据流）/ {expr} = {v} {op} {value} (two streams)",
}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(where, "a finite number is required / 需要有限数字")
    return float(value)


def _polygon(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or value.get("type") not in ("Polygon", "MultiPolygon"):
        raise Invalid(where, "a GeoJSON Polygon or MultiPolygon is required / 需要 GeoJSON 多边形")
    try:
        geom = shapely.geometry.shape(value)
    except Exception as exc:  # shapely raises several kinds for malformed GeoJSON
        raise Invalid(where, f"not a valid polygon: {exc} / 多边形无效") from None
    if geom.is_empty or not geom.is_valid:
        raise Invalid(where, "empty or self-intersecting polygon / 多边形为空或自相交")
    return dict(shapely.geometry.mapping(geom))


def _convert(p: Param, value: Any, where: str) -> Any:
    if p.type == "number":
        return _number(value, where)
    if p.type in ("nonneg", "positive"):
        x = _number(value, where)
        if x < 0 or (p.type == "positive" and x == 0):
            raise Invalid(where, "must be greater than 0 / 须大于 0" if p.type == "positive"
                          else "must not be negative / 不能为负")
        return x
    if p.type in ("count", "id"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise Invalid(where, "a positive integer is required / 需要正整数")
        return value
    if p.type in ("op", "expr", "choice"):
        allowed = tuple(OPS) if p.type == "op" else tuple(EXPRS) if p.type == "expr" else p.choices
        text = " ".join(value.replace("-", " - ").replace("+", " + ").replace("/", " / ").split()) \
            if p.type == "expr" and isinstance(value, str) else value
        if text not in allowed:
            raise Invalid(where, f"one of {', '.join(allowed)} / 取值无效")
        return text
    return _polygon(value, where)


def check_params(kind: str, params: Any) -> dict[str, Any]:
    """Validate and normalize a rule's params (defaults filled in); Invalid names `params.<field>`."""
    spec = KINDS.get(kind)
    if spec is None:
        raise Invalid("kind", f"one of {', '.join(KINDS)} / 规则类型无效")
    if not isinstance(params, Mapping):
        raise Invalid("params", "an object is required / 需要对象")
    fields = {p.name: p for p in (*spec, *_COMMON)}
    for name in params:
        if name not in fields:
            raise Invalid(f"params.{name}", "unknown field / 未知字段")
    out: dict[str, Any] = {}
    for name, p in fields.items():
        value = params.get(name)
        if value is None:
            if p.required:
                raise Invalid(f"params.{name}", "required / 必填")
            if p.default is not None:
                out[name] = p.default
            continue
        out[name] = _convert(p, value, f"params.{name}")
    _cross_check(kind, out)
    return out


def _cross_check(kind: str, p: dict[str, Any]) -> None:
    if kind == "threshold" and "clear" in p:
        upward = p["op"] in (">", ">=")
        if (p["clear"] > p["value"]) if upward else (p["clear"] < p["value"]):
            raise Invalid("params.clear", "must lie on the safe side of value (hysteresis) / "
                                          "解除值须在阈值的安全一侧")
    if kind == "range":
        if "min" not in p and "max" not in p:
            raise Invalid("params.min", "min or max is required / 至少需要 min 或 max")
        if "min" in p and "max" in p and p["min"] >= p["max"]:
            raise Invalid("params.max", "must be greater than min / 须大于 min")
    if kind == "flatline" and p["count"] < 2:
        raise Invalid("params.count", "at least 2 readings / 至少 2 个读数")


# -- rules and groups: the service ------------------------------------------------------------


def rule_public(r: Rule) -> dict[str, Any]:
    """A rule as the API shows it."""
    return {"id": r.id, "department_id": r.department_id, "name": r.name, "kind": r.kind,
            "target_type": r.target_type, "target_id": r.target_id, "params": r.params,
            "severity": r.severity, "enabled": r.enabled, "created_by": r.created_by,
            "created_at": alerts.iso(r.created_at), "updated_at": alerts.iso(r.updated_at)}


def group_public(g: Group) -> dict[str, Any]:
    """A group with the ids of its things."""
    return {"id": g.id, "department_id": g.department_id, "code": g.code, "name": g.name,
            "things": sorted(t.id for t in g.things)}


def _dept_target(session: Session, department_id: int, kind: str, obj: object = None) -> Target:
    dept = session.get(Department, department_id)
    return Target(kind=kind, id=obj, department_id=department_id, department_path=dept.path if dept else None)


def _within(session: Session, dept: Department, department_id: int, where: str) -> None:
    other = session.get(Department, department_id)
    if other is None or not other.path.startswith(dept.path):
        raise Invalid(where, "belongs to a department outside the rule's / 不属于本部门（或下级部门）")


def _check_target(session: Session, dept: Department, kind: str, target_type: str, target_id: int,
                  params: dict[str, Any]) -> None:
    """The target exists and lies in the rule's department subtree (properties are city-wide)."""
    if target_type not in TARGETS:
        raise Invalid("target_type", f"one of {', '.join(TARGETS)} / 目标类型无效")
    models = {"property": ObservedProperty, "thing": Thing, "group": Group, "datastream": Datastream}
    row = session.get(models[target_type], target_id)
    if row is None:
        raise Invalid("target_id", f"no such {target_type} / 目标不存在")
    if target_type != "property":
        _within(session, dept, row.department_id, "target_id")
    if kind == "combo":
        other = session.get(Datastream, params["other_datastream"])
        if other is None:
            raise Invalid("params.other_datastream", "no such datastream / 数据流不存在")
        if target_type == "datastream" and other.id == target_id:
            raise Invalid("params.other_datastream", "must differ from the target / 须与目标数据流不同")
        _within(session, dept, other.department_id, "params.other_datastream")


def rule_get(session: Session, actor: Actor, rule_id: int, action: str = "sensing.read") -> Rule:
    """A rule `actor` may `action` (read, by default)."""
    r = session.get(Rule, rule_id)
    if r is None:
        raise NotFound("rule / 告警规则", rule_id)
    access.require(actor, action, _dept_target(session, r.department_id, "sensing.rule", r.id), session)
    return r


def rule_list(session: Session, actor: Actor, limit: int = 100, offset: int = 0) -> tuple[list[Rule], int]:
    """Rules of the departments `actor` may read, and how many there are."""
    depts = readable_departments(session, actor)
    where = [] if depts is None else [Rule.department_id.in_(depts)]
    total = session.scalar(select(func.count()).select_from(Rule).where(*where)) or 0
    rows = session.scalars(select(Rule).where(*where).order_by(Rule.id).limit(limit).offset(offset)).all()
    return list(rows), int(total)


def rule_create(session: Session, actor: Actor, spec: Mapping[str, Any]) -> Rule:
    """A new rule in `spec["department"]` (a code; default: the actor's department)."""
    dept = alerts.department_of(session, actor, spec.get("department"))
    access.require(actor, "sensing.rule.write", _dept_target(session, dept.id, "sensing.rule"), session)
    kind = spec.get("kind", "")
    params = check_params(kind, spec.get("params") or {})
    _check_target(session, dept, kind, spec["target_type"], spec["target_id"], params)
    r = Rule(department_id=dept.id, name=spec["name"], kind=kind, target_type=spec["target_type"],
             target_id=spec["target_id"], params=params, severity=spec.get("severity", "warning"),
             enabled=spec.get("enabled", True), created_by=actor.name)
    session.add(r)
    session.flush()
    audit.append(session, actor=actor.name, department=actor.department_code, action="sensing.rule.create",
                 object_type="sensing.rule", object_id=r.id, detail=rule_public(r))
    return r


def rule_update(session: Session, actor: Actor, rule_id: int, changes: Mapping[str, Any]) -> Rule:
    """Change a rule; params are checked again against its (possibly new) kind."""
    r = rule_get(session, actor, rule_id, "sensing.rule.write")
    dept = session.get(Department, r.department_id)
    assert dept is not None
    kind = changes.get("kind", r.kind)
    params = check_params(kind, changes["params"] if "params" in changes else r.params)
    target_type, target_id = changes.get("target_type", r.target_type), changes.get("target_id", r.target_id)
    _check_target(session, dept, kind, target_type, target_id, params)
    r.kind, r.params, r.target_type, r.target_id = kind, params, target_type, target_id
    for key in ("name", "severity", "enabled"):
        if key in changes:
            setattr(r, key, changes[key])
    session.flush()
    audit.append(session, actor=actor.name, department=actor.department_code, action="sensing.rule.update",
                 object_type="sensing.rule", object_id=r.id, detail=dict(changes))
    return r


def rule_delete(session: Session, actor: Actor, rule_id: int) -> None:
    """Delete a rule, and with it its alerts (disable it instead to keep the history)."""
    r = rule_get(session, actor, rule_id, "sensing.rule.write")
    audit.append(session, actor=actor.name, department=actor.department_code, action="sensing.rule.delete",
                 object_type="sensing.rule", object_id=r.id, detail={"name": r.name})
    session.delete(r)


def group_list(session: Session, actor: Actor) -> list[Group]:
    """Groups of the departments `actor` may read."""
    depts = readable_departments(session, actor)
    where = [] if depts is None else [Group.department_id.in_(depts)]
    return list(session.scalars(select(Group).where(*where).order_by(Group.id)).all())


def group_create(session: Session, actor: Actor, code: str, name: str, department: str | None = None,
                 things: Iterable[int] = ()) -> Group:
    """A named set of things (设备分组) of one department subtree, for rules to target."""
    dept = alerts.department_of(session, actor, department)
    access.require(actor, "sensing.rule.write", _dept_target(session, dept.id, "sensing.group"), session)
    if session.scalar(select(Group.id).where(Group.code == code)) is not None:
        raise Invalid("code", "already in use / 编码已存在")
    g = Group(department_id=dept.id, code=code, name=name)
    session.add(g)
    session.flush()
    _set_things(session, dept, g, things)
    audit.append(session, actor=actor.name, department=actor.department_code, action="sensing.group.create",
                 object_type="sensing.group", object_id=g.id, detail=group_public(g))
    return g


def group_set_things(session: Session, actor: Actor, group_id: int, things: Iterable[int]) -> Group:
    """Replace a group's members (things of the group's department subtree)."""
    g = session.get(Group, group_id)
    if g is None:
        raise NotFound("group / 设备分组", group_id)
    access.require(actor, "sensing.rule.write", _dept_target(session, g.department_id, "sensing.group", g.id),
                   session)
    dept = session.get(Department, g.department_id)
    assert dept is not None
    _set_things(session, dept, g, things)
    audit.append(session, actor=actor.name, department=actor.department_code, action="sensing.group.things",
                 object_type="sensing.group", object_id=g.id, detail={"things": group_public(g)["things"]})
    return g


def _set_things(session: Session, dept: Department, g: Group, things: Iterable[int]) -> None:
    ids = list(dict.fromkeys(things))
    found = {t.id: t for t in session.scalars(select(Thing).where(Thing.id.in_(ids)))} if ids else {}
    for i, tid in enumerate(ids):
        if tid not in found:
            raise Invalid(f"things[{i}]", "no such thing / 设备不存在")
        _within(session, dept, found[tid].department_id, f"things[{i}]")
    g.things = [found[t] for t in ids]
    session.flush()


# -- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compiled:
    """A rule ready to run."""

    id: int
    version: str  # changes whenever the rule does: a pair's state is then started afresh
    name: str
    kind: str
    severity: str
    department_id: int
    params: dict[str, Any]
    shape: Any = None  # geofence: the prepared polygon


@dataclass(frozen=True, slots=True)
class Facts:
    """What an alert must know of its stream."""

    id: int
    name: str
    thing_id: int
    department_id: int
    department_code: str | None
    interval_seconds: int | None
    last_time: int | None
    last_value: float | None


@dataclass(slots=True)
class State:
    """One (rule, datastream) pair's memory."""

    version: str
    active: bool  # alerting, as far as the engine knows
    t: int = -(2 ** 62)  # newest phenomenon time evaluated
    since: int | None = None  # threshold: start of the current run over the limit
    last: tuple[int, float] | None = None  # rate: previous reading
    window: deque[float] | None = None  # flatline: the last `count` values
    arrival: int = 0  # nodata: wall-clock ms of the newest reading


def _transition(st: State, hit: bool) -> str | None:
    if hit:
        if st.active:
            return REPEAT
        st.active = True
        return FIRE
    if st.active:
        st.active = False
        return CLEAR
    return None


def _threshold(rule: Compiled, st: State, t: int, v: float) -> str | None:
    p = rule.params
    op = OPS[p["op"]]
    if st.active:
        if op(v, p["value"]):
            return REPEAT
        if op(v, p.get("clear", p["value"])):
            return None  # between the limit and the clear value: still alerting (hysteresis)
        st.active, st.since = False, None
        return CLEAR
    if not op(v, p["value"]):
        st.since = None
        return None
    if st.since is None:
        st.since = t
    if t - st.since < p["for_seconds"] * 1000:
        return None  # not held long enough yet
    st.active = True
    return FIRE


def _rate(rule: Compiled, st: State, t: int, v: float) -> tuple[str | None, float] | None:
    prev, st.last = st.last, (t, v)
    if prev is None:
        return None
    change = abs(v - prev[1]) * rule.params["per_seconds"] * 1000 / (t - prev[0])
    return _transition(st, change > rule.params["max_change"]), round(change, 6)


def _flatline(rule: Compiled, st: State, t: int, v: float) -> str | None:
    n = rule.params["count"]
    if st.window is None:
        st.window = deque(maxlen=n)
    st.window.append(v)
    full = len(st.window) == n
    return _transition(st, full and max(st.window) - min(st.window) <= rule.params["tolerance"])


def _range(rule: Compiled, st: State, t: int, v: float) -> str | None:
    lo, hi = rule.params.get("min"), rule.params.get("max")
    return _transition(st, (lo is not None and v < lo) or (hi is not None and v > hi))


def _geofence(rule: Compiled, st: State, t: int, v: Any) -> str | None:
    inside = rule.shape.covers(shapely.Point(v))
    return _transition(st, inside if rule.params["on"] == "enter" else not inside)


def _combo(rule: Compiled, st: State, t: int, v: float) -> str | None:
    return None if math.isnan(v) else _transition(st, OPS[rule.params["op"]](v, rule.params["value"]))


STEPS: dict[str, Callable[..., Any]] = {"threshold": _threshold, "rate": _rate, "flatline": _flatline,
                                        "range": _range, "geofence": _geofence, "combo": _combo}


def number_of(row: tuple[Any, ...]) -> float | None:
    """A reading as a number: numeric results, and true/false as 1/0 (smoke alarms, switches)."""
    if row[4] is not None:
        return float(row[4])
    return {"true": 1.0, "false": 0.0}.get(row[5]) if row[5] is not None else None


def position_of(row: tuple[Any, ...]) -> tuple[float, float] | None:
    """(lon, lat) of a GeoJSON Point or {"lon", "lat"} result, else None."""
    if row[5] is None or row[5][:1] != "{":
        return None
    try:
        doc = orjson.loads(row[5])
        if doc.get("type") == "Point":
            return float(doc["coordinates"][0]), float(doc["coordinates"][1])
        return float(doc["lon"]), float(doc["lat"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None


def _message(rule: Compiled, facts: Facts, v: Any) -> str:
    shown = ("-" if v is None else f"{v[0]:.6f},{v[1]:.6f}" if isinstance(v, tuple) else f"{v:g}")
    values = {p.name: "-" for p in KINDS[rule.kind]} | rule.params | {"v": shown}
    return f"{rule.name}（{facts.name}）：{MESSAGES[rule.kind].format_map(values)}"


@dataclass
class Index:
    """Which rules watch which streams, built by `Engine.reload`."""

    rules: int = 0
    rows: dict[int, list[tuple[Compiled, int]]] = field(default_factory=dict)  # stream → (rule, target)
    nodata: list[tuple[Compiled, int]] = field(default_factory=list)
    facts: dict[int, Facts] = field(default_factory=dict)
    latest: set[int] = field(default_factory=set)  # streams whose latest value a combo rule needs
    max_stream: int = 0  # a reading of a newer stream means: reload
    built_ms: int = 0


def _targets(session: Session, rules: list[Rule]) -> dict[int, list[int]]:
    """Rule id → the ids of the datastreams it watches."""
    out: dict[int, list[int]] = {r.id: [] for r in rules}
    paths = {i: p for i, p in session.execute(select(Department.id, Department.path))}
    by = {t: [r for r in rules if r.target_type == t] for t in TARGETS}
    if by["property"]:
        props = {r.target_id for r in by["property"]}
        ds_ = Datastream
        rows = session.execute(select(ds_.id, ds_.observed_property_id, ds_.department_id)
                               .where(ds_.observed_property_id.in_(props)))
        for ds, prop, dept in rows:
            for r in by["property"]:
                if r.target_id == prop and paths.get(dept, "").startswith(paths.get(r.department_id, "\0")):
                    out[r.id].append(ds)
    if by["thing"]:
        rows = session.execute(select(Datastream.id, Datastream.thing_id)
                               .where(Datastream.thing_id.in_({r.target_id for r in by["thing"]})))
        of: dict[int, list[int]] = {}
        for ds, thing in rows:
            of.setdefault(thing, []).append(ds)
        for r in by["thing"]:
            out[r.id] = of.get(r.target_id, [])
    if by["group"]:
        rows = session.execute(select(Datastream.id, group_things.c.group_id)
                               .join(group_things, group_things.c.thing_id == Datastream.thing_id)
                               .where(group_things.c.group_id.in_({r.target_id for r in by["group"]})))
        members: dict[int, list[int]] = {}
        for ds, group in rows:
            members.setdefault(group, []).append(ds)
        for r in by["group"]:
            out[r.id] = members.get(r.target_id, [])
    for r in by["datastream"]:
        out[r.id] = [r.target_id]
    return out


def build_index(engine: sqlalchemy.Engine) -> Index:
    """Load the enabled rules, resolve their targets, and the facts of every stream they watch."""
    ix = Index(built_ms=now_ms())
    with Session(engine) as session:
        rules = list(session.scalars(select(Rule).where(Rule.enabled.is_(True)).order_by(Rule.id)))
        targets = _targets(session, rules)
        wanted = {ds for ids in targets.values() for ds in ids}
        wanted |= {r.params["other_datastream"] for r in rules if r.kind == "combo"}
        facts = session.execute(
            select(Datastream.id, Datastream.name, Datastream.thing_id, Datastream.department_id,
                   Department.code, Datastream.interval_seconds, Datastream.last_time, Datastream.last_value)
            .join(Department, Department.id == Datastream.department_id)
            .where(Datastream.id.in_(wanted))).all() if wanted else []
        ix.facts = {f[0]: Facts(*f) for f in facts}
        ix.max_stream = session.scalar(select(func.max(Datastream.id))) or 0
    ix.rules = len(rules)
    for r in rules:
        shape = shapely.geometry.shape(r.params["polygon"]) if r.kind == "geofence" else None
        if shape is not None:
            shapely.prepare(shape)  # fast point-in-polygon
        version = f"{r.updated_at.isoformat()}|{orjson.dumps(r.params, option=orjson.OPT_SORT_KEYS)!r}"
        c = Compiled(r.id, version, r.name, r.kind, r.severity, r.department_id, dict(r.params), shape)
        for ds in targets[r.id]:
            if ds not in ix.facts:
                continue
            ix.rows.setdefault(ds, []).append((c, ds))
            if r.kind == "nodata":
                ix.nodata.append((c, ds))
            elif r.kind == "combo":
                other = r.params["other_datastream"]
                if other in ix.facts and other != ds:
                    ix.rows.setdefault(other, []).append((c, ds))
                    ix.latest |= {ds, other}
    return ix


class Engine:
    """The rules engine (规则引擎): a writer listener and one worker thread."""

    def __init__(self, engine: sqlalchemy.Engine, *, tick_seconds: float = 5.0,
                 reload_seconds: float = 60.0, max_queued: int = 200_000, wait_seconds: float = 30.0) -> None:
        self.engine = engine
        self.tick_seconds, self.reload_seconds = tick_seconds, reload_seconds
        # Readings waiting for evaluation are bounded: past `max_queued` the writer waits for the
        # worker (ingest slows down, and answers 429 when its own queue is full) rather than memory
        # growing; after `wait_seconds` the batch goes unevaluated, counted and logged.
        self.max_queued, self.wait_seconds = max_queued, wait_seconds
        self.fed = 0  # batches received (tests wait on it: listeners run after the writer's ack)
        self.skipped = 0  # readings never evaluated because the worker stayed behind
        self._index = Index()
        self._states: dict[tuple[int, int], State] = {}
        self._latest: dict[int, tuple[int, float]] = {}
        self._queue: deque[Written] = deque()
        self._queued = 0  # readings in _queue
        self._cond = threading.Condition()
        self._lock = threading.RLock()  # held while evaluating: the state has one owner at a time
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._reload_at = 0.0  # monotonic time of the next periodic reload
        self._loaded = False

    # -- outside -----------------------------------------------------------------------------

    def feed(self, written: Written) -> None:
        """Writer listener (on the writer thread, after COMMIT): only queue the batch."""
        self.fed += 1  # only the writer thread calls this
        if not self._index.rules and self._loaded:
            return  # no rule at all: nothing to look at
        n = len(written.new)
        with self._cond:
            deadline = time.monotonic() + self.wait_seconds
            while (self._queued and self._queued + n > self.max_queued and not self._stopping
                   and self._thread is not None):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.skipped += n
                    log.error("rules evaluation is %d readings behind: %d readings were not evaluated "
                              "(alerts may be missing)", self._queued, n)
                    return
                self._cond.wait(left)
            self._queue.append(written)
            self._queued += n
            self._cond.notify_all()

    def reload(self) -> None:
        """Rebuild the index from the rules table (after any rule or group change)."""
        ix = build_index(self.engine)
        with self._lock:
            self._index, self._loaded = ix, True
            self._reload_at = time.monotonic() + self.reload_seconds
            for ds in ix.latest:  # combo rules start from each stream's newest stored value
                f = ix.facts[ds]
                if ds not in self._latest and f.last_time is not None and f.last_value is not None:
                    self._latest[ds] = (f.last_time, f.last_value)
            live = {(c.id, ds) for pairs in ix.rows.values() for c, ds in pairs}
            for key in [k for k in self._states if k not in live]:
                del self._states[key]

    def tick(self, now: int | None = None) -> None:
        """Evaluate the no-data rules against the wall clock (epoch ms `now`, default: now)."""
        with self._lock:
            self._tick(now_ms() if now is None else now)

    def start(self) -> None:
        """Load the rules (first time) and start the worker thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        if not self._loaded:
            self.reload()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cityos-rules", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Evaluate what is queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def drain(self, timeout: float = 10) -> bool:
        """Wait until every queued batch is evaluated and recorded (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_seconds
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    left = min(next_tick, self._reload_at) - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._stopping and not self._queue:
                    return
                batches = list(self._queue)
                self._queue.clear()
                self._busy = True
            taken = sum(len(w.new) for w in batches)
            try:
                if time.monotonic() >= self._reload_at:
                    self._reload_at = time.monotonic() + self.reload_seconds  # even if it fails
                    self.reload()
                if batches:
                    with self._lock:
                        self._evaluate(batches)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_seconds
                    self.tick()
            except Exception:  # the engine outlives any one bad batch
                log.exception("rules evaluation failed")
            finally:
                with self._cond:
                    self._queued -= taken  # only now: the batches were held until evaluated
                    self._busy = False
                    self._cond.notify_all()

    def _ensure_states(self, pairs: Iterable[tuple[Compiled, int]]) -> None:
        """Create missing pair states; one query says which pairs have an unresolved alert."""
        missing = {(c.id, ds): c for c, ds in pairs
                   if (st := self._states.get((c.id, ds))) is None or st.version != c.version}
        if not missing:
            return
        with Session(self.engine) as session:
            open_pairs = {(r, d) for r, d in session.execute(
                select(Alert.rule_id, Alert.datastream_id).where(
                    Alert.state != "resolved", Alert.rule_id.in_({k[0] for k in missing})))}
        base = self._index.built_ms
        for (rule_id, ds), c in missing.items():
            last = self._index.facts[ds].last_time  # no-data rules count from the newest reading
            self._states[(rule_id, ds)] = State(c.version, (rule_id, ds) in open_pairs,
                                                arrival=base if last is None else last)

    def _evaluate(self, batches: list[Written], retry: bool = True) -> None:
        ix = self._index
        rows_of, newest = ix.rows, ix.max_stream
        relevant, unknown = [], False
        for w in batches:
            for r in w.new:
                if r[0] in rows_of:
                    relevant.append(r)
                elif r[0] > newest:
                    unknown = True
        if unknown and retry:
            self.reload()  # a stream made after the last reload: it may be a rule's target
            return self._evaluate(batches, retry=False)
        if not relevant:
            return None
        relevant.sort(key=lambda r: r[1])
        self._ensure_states(pair for ds in {r[0] for r in relevant} for pair in rows_of[ds])
        now = now_ms()
        changes: list[Change] = []
        bumps: dict[tuple[int, int], int] = {}
        latest, n, i = self._latest, len(relevant), 0
        while i < n:
            t, j = relevant[i][1], i
            while j < n and relevant[j][1] == t:  # readings of one instant: a combo sees them all
                r = relevant[j]
                if r[0] in ix.latest and (v := number_of(r)) is not None and t >= latest.get(r[0], (t, 0))[0]:
                    latest[r[0]] = (t, v)
                j += 1
            for r in relevant[i:j]:
                for c, target in rows_of[r[0]]:
                    self._step(c, target, r, now, changes, bumps)
            i = j
        alerts.record(self.engine, changes, bumps)
        return None

    def _step(self, c: Compiled, target: int, r: tuple[Any, ...], now: int, changes: list[Change],
              bumps: dict[tuple[int, int], int]) -> None:
        st, t = self._states[(c.id, target)], r[1]
        if c.kind == "nodata":
            st.arrival = max(st.arrival, now)
            if st.active:  # data is back
                st.active = False
                changes.append(self._change(CLEAR, c, target, t, None))
            return
        if t <= st.t:
            return  # late, or a combo already judged at this instant: the past stays as it was
        x = self._input(c, target, r)
        if x is None:
            return
        st.t = t
        out = STEPS[c.kind](c, st, t, x)
        if isinstance(out, tuple):
            out, x = out
        if out == REPEAT:
            bumps[(c.id, target)] = bumps.get((c.id, target), 0) + 1
        elif out is not None:
            changes.append(self._change(out, c, target, t, x))

    def _input(self, c: Compiled, target: int, r: tuple[Any, ...]) -> Any:
        if c.kind == "geofence":
            return position_of(r) if r[0] == target else None
        if c.kind == "combo":
            a, b = self._latest.get(target), self._latest.get(c.params["other_datastream"])
            if a is None or b is None:
                return None
            return EXPRS[c.params["expr"]](a[1], b[1])
        return number_of(r) if r[0] == target else None

    def _change(self, verdict: str, c: Compiled, ds: int, t: int, v: Any) -> Change:
        f = self._index.facts[ds]
        value = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
        return Change(verdict, c.id, c.department_id, c.kind, c.severity,
                      float(c.params.get("flap_seconds", FLAP_SECONDS)), ds, f.thing_id, f.department_id,
                      f.department_code, t, value, _message(c, f, v))

    def _tick(self, now: int) -> None:
        ix = self._index
        if not ix.nodata:
            return
        self._ensure_states(ix.nodata)
        changes = []
        for c, ds in ix.nodata:
            st = self._states[(c.id, ds)]
            f = ix.facts[ds]
            every = c.params.get("interval_seconds") or f.interval_seconds or 60
            silent = now - st.arrival > c.params["intervals"] * every * 1000
            verdict = _transition(st, silent)
            if verdict in (FIRE, CLEAR):
                changes.append(self._change(verdict, c, ds, st.arrival if verdict == FIRE else now, None))
        alerts.record(self.engine, changes, {})
