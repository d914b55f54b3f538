"""Time series API of sensing (时序数据接口) at /api/sensing: the devices overview, series, latest
values and exports. Thin over `sensing.timeseries`; times in and out are ISO 8601 with a time
zone (epoch milliseconds are accepted too)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from cityos.core.errors import Invalid
from cityos.core.service import MAX_OFFSET
from cityos.core.web import SessionDep, SignedInDep, platform_of
from cityos.sensing import service, timeseries
from cityos.sensing.ingest import MAX_FUTURE_MS, now_ms, parse_time
from cityos.sensing.runtime import runtime_of

router = APIRouter(prefix="/api/sensing", tags=["sensing"])
DAY_MS = 86_400_000
# A query may end in the future (parse_time refuses future readings): allow up to year 9999.
_LATEST = 253_402_300_799_999 - MAX_FUTURE_MS

Time = Annotated[str | None, Query(max_length=40, description="ISO 8601 with zone, or epoch ms")]
GrainQ = Annotated[str | None, Query(max_length=8, description="raw, 1m, 1h, 1d or auto")]
EveryQ = Annotated[str | None, Query(max_length=12, description="bucket width, e.g. 15m, 6h, 7d")]
FnQ = Annotated[str | None, Query(max_length=64, description="count,min,max,mean,sum,last")]


def time_param(value: str | None, field_name: str) -> int | None:
    """A query time as epoch ms: ISO 8601 with a time zone (naive times are refused), or digits."""
    if value is None or value == "":
        return None
    raw: Any = int(value) if value.strip().isdecimal() and len(value) <= 40 else value.strip()
    return parse_time(raw, field_name, now=_LATEST)


def range_params(start: str | None, end: str | None, span_ms: int = DAY_MS) -> tuple[int, int]:
    """[start, end) with defaults: end now, start one `span_ms` before end."""
    e = time_param(end, "end")
    s = time_param(start, "start")
    e = e if e is not None else now_ms() + 1
    s = s if s is not None else e - span_ms
    timeseries.check_range(s, e)
    return s, e


def ids_param(value: str, field_name: str) -> list[int]:
    try:
        ids = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise Invalid(field_name, "comma-separated datastream ids / 应为逗号分隔的数据流编号") from None
    if len(ids) > timeseries.MAX_IDS:
        raise Invalid(field_name, f"at most {timeseries.MAX_IDS} ids / 最多 {timeseries.MAX_IDS} 个")
    return ids


@router.get("/things", summary="Devices with status and newest values (设备总览)")
def things(session: SessionDep, actor: SignedInDep,
           status: Annotated[str | None, Query(max_length=16)] = None,
           kind: Annotated[str | None, Query(max_length=32)] = None,
           q: Annotated[str | None, Query(max_length=100)] = None,
           department: Annotated[str | None, Query(max_length=32)] = None,
           limit: Annotated[int, Query(ge=1, le=500)] = 50,
           offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict[str, Any]:
    return timeseries.things_overview(session, actor, status=status, kind=kind, q=q, department=department,
                                      limit=limit, offset=offset)


@router.get("/things/status", summary="Devices online, offline and alerting (设备状态统计)")
def things_status(session: SessionDep, actor: SignedInDep) -> dict[str, int]:
    return timeseries.status_counts(session, actor)


@router.get("/datastreams/{datastream_id}/series", summary="Readings or aggregates over time (时序数据)")
def series(datastream_id: int, session: SessionDep, actor: SignedInDep, start: Time = None, end: Time = None,
           grain: GrainQ = "auto", every: EveryQ = None, fn: FnQ = None,
           limit: Annotated[int | None, Query(ge=1, le=timeseries.MAX_ROWS)] = None,
           max_points: Annotated[int, Query(ge=1, le=timeseries.MAX_ROWS)] = timeseries.MAX_POINTS,
           ) -> dict[str, Any]:
    s, e = range_params(start, end)
    return timeseries.series(session, actor, datastream_id, start_ms=s, end_ms=e, grain=grain, every=every,
                             fn=fn, limit=limit, max_points=max_points)


class StreamSettings(BaseModel):
    """A stream's retention and expected interval; omitted fields are left as they are."""

    model_config = ConfigDict(extra="forbid")
    retention_days: int | None = Field(None, description="days of raw readings kept (null: all)")
    interval_seconds: int | None = Field(None, description="expected reporting interval")


@router.patch("/datastreams/{datastream_id}", summary="Retention and interval of a stream (数据流设置)")
def datastream_settings(datastream_id: int, body: StreamSettings, request: Request, session: SessionDep,
                        actor: SignedInDep) -> dict[str, Any]:
    ds = service.datastream_settings(session, actor, datastream_id, body.model_dump(exclude_unset=True))
    session.commit()
    runtime_of(platform_of(request)).writer.streams.forget(ds.id)
    return {"id": ds.id, "retention_days": ds.retention_days, "interval_seconds": ds.interval_seconds}


@router.get("/latest", summary="Newest reading of many streams (最新读数)")
def latest(session: SessionDep, actor: SignedInDep,
           datastreams: Annotated[str | None, Query(max_length=12_000, description="ids, e.g. 1,2,3")] = None,
           thing: int | None = None) -> dict[str, Any]:
    ids = ids_param(datastreams, "datastreams") if datastreams is not None else None
    return {"items": timeseries.latest(session, actor, ids, thing)}


def _stream(export: timeseries.Export) -> StreamingResponse:
    return StreamingResponse(export.chunks, media_type=export.media_type,
                             headers={"Content-Disposition": f'attachment; filename="{export.filename}"'})


def _export_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    s, e = time_param(start, "start"), time_param(end, "end")
    if s is not None and e is not None:
        timeseries.check_range(s, e)
    return s, e


@router.get("/datastreams/{datastream_id}/export.csv", summary="Export as CSV (导出 CSV)")
def export_csv(datastream_id: int, session: SessionDep, actor: SignedInDep, start: Time = None,
               end: Time = None, grain: GrainQ = "raw", every: EveryQ = None,
               fn: FnQ = None) -> StreamingResponse:
    s, e = _export_range(start, end)
    return _stream(timeseries.export_csv(session, actor, datastream_id, start_ms=s, end_ms=e, grain=grain,
                                         every=every, fn=fn))


@router.get("/datastreams/{datastream_id}/export.parquet", summary="Export as Parquet (导出 Parquet)")
def export_parquet(datastream_id: int, session: SessionDep, actor: SignedInDep, start: Time = None,
                   end: Time = None, grain: GrainQ = "raw", every: EveryQ = None,
                   fn: FnQ = None) -> StreamingResponse:
    s, e = _export_range(start, end)
    return _stream(timeseries.export_parquet(session, actor, datastream_id, start_ms=s, end_ms=e, grain=grain,
                                             every=every, fn=fn))
