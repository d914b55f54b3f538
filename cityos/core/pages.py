"""Console (工作台) and portal pages: server-rendered Jinja2 + htmx, thin over service."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from cityos.core.web import language, platform_of

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def portal(request: Request) -> HTMLResponse:
    """The residents' portal (市民门户)."""
    return platform_of(request).templates.TemplateResponse(
        request, "portal.html", {"lang": language(request)})
