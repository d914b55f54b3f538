"""Request and response shapes of the case API (工单接口). Requests forbid unknown fields; the
rules (which category, which place, who may act) are checked by `service` and `steps`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from cityos.core.schemas import Strict

# -- requests -----------------------------------------------------------------------------------


class CaseIn(Strict):
    """A report (诉求) to register: what, where, and who to call back."""

    category: str | None = Field(None, max_length=32, description="事项类别代码 / category code, e.g. noise "
                                                                  "(GET /api/cases/categories)")
    kind: str | None = Field(None, max_length=16, description="诉求类型 / kind: consultation|help|complaint|"
                                                              "report|suggestion|component|event|approval")
    title: str | None = Field(None, max_length=200,
                              description="标题 / title; the description's start if omitted")
    description: str = Field("", max_length=5000, description="问题描述 / what happened")
    urgent: bool = Field(False, description="紧急 / urgent: handled the same working day")
    lon: float | None = Field(None, ge=-180, le=180, description="经度 / longitude (WGS 84)")
    lat: float | None = Field(None, ge=-90, le=90, description="纬度 / latitude (WGS 84)")
    address: str | None = Field(None, max_length=300, description="地址 / address, if there is no map point")
    reporter_name: str | None = Field(None, max_length=64, description="诉求人姓名 / reporter's name")
    reporter_phone: str | None = Field(None, max_length=20,
                                       description="联系电话 / phone for the callback; stored encrypted, "
                                                   "never shown in full")
    attributes: dict[str, Any] = Field(default_factory=dict, max_length=50,
                                       description="类别附加项 / the category's Open311 attribute values")
    component_id: str | None = Field(None, max_length=16, description="部件标识码 / GB/T 30428 component id")
    channel: Literal["web", "phone", "api"] | None = Field(
        None, description="受理渠道 / channel; staff default phone, residents and anonymous callers web, "
                          "API keys api")


class EvaluateIn(Strict):
    """The reporter's rating of a closed case (评价)."""

    satisfaction: str = Field(max_length=16, description="满意度 / satisfied|basic|unsatisfied")
    note: str = Field("", max_length=2000, description="评价意见 / comment")
    token: str | None = Field(None, max_length=64,
                              description="受理凭证 / the case's token, for a reporter who is not signed in")


class CategoryIn(Strict):
    """A category (事项类别), what Open311 calls a service; PUT replaces it as a whole."""

    name: str = Field(min_length=1, max_length=100, description="名称 / name")
    name_en: str | None = Field(None, max_length=200, description="英文名称 / English name")
    description: str = Field("", max_length=2000, description="说明 / description")
    group: str = Field("", max_length=100, description="分组 / group, e.g. 社会治安")
    line: str = Field("hotline", max_length=16, description="业务线 / line: hotline|citymgmt|approval")
    kind: str | None = Field(None, max_length=16, description="默认诉求类型 / default kind")
    gbt_code: str | None = Field(None, pattern=r"^\d{4}$", description="GB/T 30428 大类+小类 / class code")
    department: str | None = Field(None, max_length=32, description="默认承办部门代码 / default handling "
                                                                    "department; kept if omitted")
    workflow: str | None = Field(None, max_length=64, description="流程代码 / workflow code; the line's if "
                                                                  "omitted")
    keywords: list[str] = Field(default_factory=list, max_length=50, description="关键词 / keywords")
    attributes: list[dict[str, Any]] = Field(default_factory=list, max_length=30,
                                             description="Open311 附加项 / attribute definitions")
    sort: int = Field(0, ge=0, le=100_000, description="排序 / sort order")
    active: bool = Field(True, description="启用 / offered to reporters")


class WorkflowIn(Strict):
    """A new version of a workflow (流程发布): a BPMN 2.0 document."""

    name: str = Field(min_length=1, max_length=200, description="流程名称 / name")
    name_en: str | None = Field(None, max_length=200, description="英文名称 / English name")
    department: str | None = Field(None, max_length=32,
                                   description="受理中心部门代码 / the centre holding its cases; the "
                                               "previous version's if omitted")
    bpmn: str = Field(min_length=1, max_length=1_000_000, description="BPMN 2.0 XML")


# -- responses ----------------------------------------------------------------------------------


class PublicCaseOut(BaseModel):
    """A case as anyone following it sees it (查询进度): nothing about who reported it."""

    number: str | None
    line: str
    kind: str
    kind_name: str
    channel: str
    category: str | None
    category_name: str | None
    title: str
    description: str
    urgent: bool
    status: str
    status_name: str
    step: str
    lon: float | None
    lat: float | None
    address: str
    district: str | None
    street: str | None
    community: str | None
    grid: str | None
    component_id: str | None
    centre: str
    centre_name: str
    department: str | None
    department_name: str | None
    due_at: str | None
    due_note: str
    overdue: bool
    reopens: int
    extended_days: int
    satisfaction: str | None
    evaluation: str | None
    reply: str
    merged_into: str | None
    created_at: str | None
    updated_at: str | None
    dispatched_at: str | None
    replied_at: str | None
    closed_at: str | None


class CaseOut(PublicCaseOut):
    """A case as staff who may read it see it: the public view plus the centre's working fields."""

    escalations: int
    returns: int
    extension_pending: int | None
    attributes: dict[str, Any]
    suggestion: dict[str, Any] | None


class DuplicateOut(BaseModel):
    number: str | None = Field(description="疑似重复工单编号 / possible duplicate")
    distance_m: float = Field(description="距离（米）/ distance in metres")


class IntakeOut(CaseOut):
    """A registered case (受理成功), its possible duplicates, and — for the reporter — its token."""

    duplicates: list[DuplicateOut]
    token: str | None = Field(None, description="受理凭证 / keep it to follow, add photos to and rate "
                                                "the case; given to the reporter only")


class TaskOut(BaseModel):
    id: int
    step: str
    name: str
    lane: str
    department: str
    department_name: str
    role: str | None
    state: str
    outcome: str | None
    note: str
    opened_at: str | None
    accepted_at: str | None
    due_at: str | None
    warn_at: str | None
    done_at: str | None
    overdue: bool


class PublicEventOut(BaseModel):
    """A timeline entry as the reporter sees it: which department, not which person."""

    at: str | None
    action: str
    note: str
    department: str | None
    department_name: str | None
    detail: dict[str, Any]


class EventOut(PublicEventOut):
    actor: str
    public: bool


class AttachmentOut(BaseModel):
    id: int
    name: str
    content_type: str
    size: int
    sha256: str
    stage: str
    uploaded_at: str | None
    href: str | None = Field(description="下载地址 / where to fetch it")


class StaffAttachmentOut(AttachmentOut):
    uploaded_by: str


class ReporterOut(BaseModel):
    name: str
    phone: str = Field(description="脱敏电话 / masked phone, e.g. 139****1111")
    signed_in: bool = Field(description="实名上报 / reported by a signed-in resident")


class CaseDetailOut(CaseOut):
    """A case with its tasks, timeline, attachments and the steps the caller may take now."""

    reporter: ReporterOut
    tasks: list[TaskOut]
    timeline: list[EventOut]
    attachments: list[StaffAttachmentOut]
    actions: list[str] = Field(description="可执行的办理环节 / steps the caller may take now "
                                           "(POST /api/cases/{number}/actions/{action})")


class TrackOut(PublicCaseOut):
    timeline: list[PublicEventOut]
    attachments: list[AttachmentOut]


class QueueItemOut(TaskOut):
    number: str | None
    title: str
    category: str | None
    category_name: str | None
    urgent: bool
    case_status: str


class CategoryOut(BaseModel):
    code: str
    name: str
    name_en: str | None
    description: str
    group: str
    line: str
    kind: str | None
    gbt_code: str | None
    department: str | None
    department_name: str | None
    workflow: str
    keywords: list[str]
    attributes: list[dict[str, Any]]
    sort: int
    active: bool


class WorkflowOut(BaseModel):
    code: str
    version: int
    name: str
    name_en: str | None
    process_id: str
    active: bool
    department: str | None
    created_by: str
    created_at: str | None


class WorkflowStepOut(BaseModel):
    step: str
    name: str
    name_en: str


class WorkflowDetailOut(WorkflowOut):
    steps: list[WorkflowStepOut]


class SweepOut(BaseModel):
    warned: int
    overdue: int
    escalated: list[str]
