"""The workflow engine (流程引擎): BPMN 2.0 processes executed by SpiffWorkflow.

A workflow is data — a BPMN file a department admin can read as a diagram — and CityOS gives
meaning to a few task ids: user tasks `file`, `dispatch`, `handle`, `verify`, `callback`,
`close` and `decide`, in lanes `dispatcher` (the centre that holds the case) and `handler`
(the departments it is sent to). `handle` is a parallel multi-instance task over `handlers`
(lead department first, then co-handlers) collecting each one's `result` into `results`;
gateways read `results`, `reopen`, `valid` and `fixed`; a timer on `handle` reads `due_at`.
Anything else in the diagram — more gateways, script tasks, parallel branches — simply runs.

The engine's state is a zlib'd JSON document kept with the case, so a case can be loaded,
stepped and saved in a few milliseconds without the engine holding anything in memory.
"""

from __future__ import annotations

import datetime as dt
import functools
import zlib
from dataclasses import dataclass
from typing import Any

from lxml import etree
from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.parser import BpmnParser
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.exceptions import WorkflowException
from SpiffWorkflow.util.task import TaskState

from cityos.core.errors import Invalid

STEPS = {  # the user tasks CityOS knows, with their names
    "file": ("立案", "File"), "dispatch": ("派遣", "Dispatch"), "handle": ("办理", "Handle"),
    "verify": ("核查", "Verify"), "callback": ("回访", "Call back"), "close": ("结案", "Close"),
    "decide": ("审批决定", "Decide"),
}
LANES = ("dispatcher", "handler")
SCRATCH = ("handler", "result", "results")  # multi-instance items, cleared before `handle` re-runs
_serializer = BpmnWorkflowSerializer()


@dataclass(frozen=True)
class Ready:
    """A user task the engine waits on."""

    id: str  # the engine's task id
    step: str  # one of STEPS
    name: str
    lane: str
    handler: str | None  # the department code a `handle` instance is for


@functools.lru_cache(maxsize=64)
def parse(bpmn: str, process_id: str) -> Any:
    """The executable spec of a BPMN document (cached: specs are immutable)."""
    parser = BpmnParser()
    try:
        parser.add_bpmn_str(bpmn.encode())
        return parser.get_spec(process_id)
    except (ValidationException, etree.XMLSyntaxError, WorkflowException, ValueError) as exc:
        raise Invalid("bpmn", f"not an executable BPMN 2.0 process: {exc} / 不是可执行的 BPMN 流程") from None


def check(bpmn: str, process_id: str) -> list[str]:
    """Validate a workflow before it is stored: it parses, and its user tasks are ones CityOS
    knows in lanes it knows. Returns the user task ids, in document order."""
    spec = parse(bpmn, process_id)
    steps: list[str] = []
    for ts in spec.task_specs.values():
        if not _is_user(ts):
            continue
        step = ts.bpmn_id
        if step not in STEPS:
            raise Invalid("bpmn", f"user task {step!r} is not one of {', '.join(STEPS)} / 未知的用户任务")
        if ts.lane not in LANES:
            raise Invalid("bpmn", f"user task {step!r} is in lane {ts.lane!r}, not one of "
                                  f"{', '.join(LANES)} / 泳道须为 dispatcher 或 handler")
        if step not in steps:
            steps.append(step)
    if "dispatch" not in steps or "handle" not in steps:
        raise Invalid("bpmn", "a case workflow needs user tasks dispatch and handle / 流程须含派遣和办理")
    return steps


def _is_user(ts: Any) -> bool:
    return getattr(ts, "manual", False) and getattr(ts, "bpmn_id", None) is not None


def start(spec: Any) -> BpmnWorkflow:
    wf = BpmnWorkflow(spec)
    wf.do_engine_steps()
    return wf


def load(state: bytes) -> BpmnWorkflow:
    """A stored workflow (its spec travels with it, so a later version never changes it)."""
    return _serializer.deserialize_json(zlib.decompress(state).decode())


def dump(wf: BpmnWorkflow) -> bytes:
    return zlib.compress(_serializer.serialize_json(wf).encode(), 6)


def ready(wf: BpmnWorkflow) -> list[Ready]:
    out = []
    for t in wf.get_tasks(state=TaskState.READY, manual=True):
        ts = t.task_spec
        handler = t.data.get("handler") if ts.bpmn_id == "handle" else None
        out.append(Ready(str(t.id), ts.bpmn_id, ts.bpmn_name or ts.bpmn_id, ts.lane or "", handler))
    return out


def complete(wf: BpmnWorkflow, task_id: str, data: dict[str, Any]) -> None:
    """Complete one ready user task with `data` and run the engine to the next wait."""
    task = next((t for t in wf.get_tasks(state=TaskState.READY, manual=True) if str(t.id) == task_id), None)
    if task is None:
        raise Invalid("task", "the task is no longer waiting / 该环节已不在待办状态")
    if task.task_spec.bpmn_id != "handle":
        for key in SCRATCH:
            task.data.pop(key, None)
    task.data.update(data)
    task.run()
    wf.do_engine_steps()


def fire_timers(wf: BpmnWorkflow) -> bool:
    """Let due timers fire (超期督办); True when an escalation ran."""
    before = _escalations(wf)
    wf.refresh_timers() if hasattr(wf, "refresh_timers") else wf.refresh_waiting_tasks()
    wf.do_engine_steps()
    return _escalations(wf) > before


def _escalations(wf: BpmnWorkflow) -> int:
    return sum(1 for t in wf.get_tasks(state=TaskState.COMPLETED) if t.task_spec.bpmn_id == "escalate")


def set_due(wf: BpmnWorkflow, due_at: str) -> None:
    """Move the deadline the waiting timers read (延期): the timer tasks hold their own copy."""
    for t in wf.get_tasks(state=TaskState.WAITING):
        if t.task_spec.bpmn_id == "overdue" or "due_at" in t.data:
            t.data["due_at"] = due_at


def finished(wf: BpmnWorkflow) -> bool:
    """The process reached an end other than an escalation branch, with nothing left waiting."""
    return not wf.get_tasks(state=TaskState.READY | TaskState.WAITING, manual=True) and wf.is_completed()


def iso(value: dt.datetime) -> str:
    """A time as the timer expression reads it."""
    return value.astimezone(dt.UTC).isoformat()
