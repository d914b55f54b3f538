"""The big screen (城市运行大屏) at /ops/screen: 1920×1080, dark, ECharts and the city's own map,
painted at once from the snapshot embedded in the page, then kept live over Server-Sent Events
(/api/ops/stream) without reloading. Every tile drills down to its module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

import cityos.maps.service as maps
from cityos.core.access import Actor
from cityos.core.errors import CityOSError
from cityos.core.pages_base import ConsoleActor, ConsoleRoute, render
from cityos.core.web import SessionDep, language, platform_of
from cityos.ops import live
from cityos.ops.service import require_read

router = APIRouter(route_class=ConsoleRoute)
TEMPLATES = Path(__file__).parent / "templates"
MAP_ROLES = ("district", "street")
# What screen.js writes, in the visitor's language (zh-CN first, English beside).
TEXT = {
    "no_data": ("暂无数据", "No data"), "forecast": ("预测", "Forecast"), "live": ("实时", "Live"),
    "offline": ("连接中断，正在重连", "Disconnected, reconnecting"), "none": ("无", "None"),
    "open": ("未确认", "Open"), "acknowledged": ("已确认", "Acknowledged"), "total": ("合计", "Total"),
    "critical": ("严重", "Critical"), "warning": ("预警", "Warning"), "info": ("提示", "Info"),
    "attention": ("关注", "Attention"), "normal": ("正常", "Normal"), "mape": ("误差", "Error"),
    "no_incidents": ("当前无处置中的突发事件", "No incident under way"),
    "no_warnings": ("当前无预警", "No open warning"), "level": ("级", "level"),
}


def map_config(session: Session, actor: Actor) -> dict[str, Any]:
    """The city's own reference layers as the base map (no internet tiles unless the city has a
    tile server), and the first view."""
    layers: list[dict[str, Any]] = []
    view = None
    try:
        roles = maps.reference_layers(session)
        for role in MAP_ROLES:
            if role not in roles:
                continue
            code = roles[role][0]
            layer = maps.layer_get(session, actor, code)
            if role == "district" and layer.bbox:
                view = list(layer.bbox)
            layers.append({"code": code, "role": role})
    except CityOSError:  # the incidents still show without the city's layers
        layers, view = [], None
    return {"base": layers, "view": view}


@router.get("/ops", include_in_schema=False)
def ops_home() -> RedirectResponse:
    return RedirectResponse("/ops/screen", status_code=303)


@router.get("/ops/screen", response_class=HTMLResponse, include_in_schema=False)
async def screen_page(request: Request, session: SessionDep, actor: ConsoleActor) -> HTMLResponse:
    lang = language(request)

    def prepare() -> dict[str, Any]:
        try:
            require_read(session, actor)
            return map_config(session, actor)
        finally:
            session.close()

    config = await run_in_threadpool(prepare)
    config["tile_url"] = platform_of(request).settings.map_tile_url
    snapshot = await live.screen_of(request.app, platform_of(request).sessions).fresh()
    pick = 0 if lang == "zh-CN" else 1
    text = {k: v[pick] for k, v in TEXT.items()}
    titles = {k: v[pick] for k, v in live.TITLES.items()}
    return render(request, "ops/screen.html", actor=actor, snapshot=snapshot, config=config,
                  text=text, titles=titles, links=live.LINKS)
