"""The CityOS application: the core web shell with every package's routers mounted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from cityos.core.settings import Settings, load_settings


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """App factory (used by `cityos serve`, uvicorn --factory and the tests)."""
    from cityos.cases import api as cases_api
    from cityos.cases import api_kpi as cases_kpi
    from cityos.cases import open311
    from cityos.cases import pages as cases_pages
    from cityos.core import api as core_api
    from cityos.core import pages as core_pages
    from cityos.core.web import build_app
    from cityos.hub import api as hub_api
    from cityos.hub import api_loading, api_registry, api_sharing
    from cityos.hub import pages as hub_pages
    from cityos.maps import api as maps_api
    from cityos.maps import api_pipes, ogc_features, ogc_html
    from cityos.maps import pages as maps_pages
    from cityos.opendata import api as opendata_api
    from cityos.opendata import ckan_api, dcat_api
    from cityos.opendata import pages as opendata_pages
    from cityos.opendata import pages_console as opendata_console
    from cityos.ops import api as ops_api
    from cityos.ops import api_emergency, api_indicators, api_plan, pages_emergency, pages_plan
    from cityos.ops import pages as ops_pages
    from cityos.sensing import api as sensing_api
    from cityos.sensing import api_ingest as sensing_ingest
    from cityos.sensing import api_rules as sensing_rules
    from cityos.sensing import pages as sensing_pages
    from cityos.sensing import sensorthings

    settings = settings or load_settings()
    # Engines add their routers (and template folders) here as they land.
    routers = [core_api.router, core_pages.router, api_sharing.router, api_registry.router,
               api_loading.router, hub_api.router, hub_pages.router]
    routers += [opendata_api.router, ckan_api.router, dcat_api.router, opendata_pages.router]
    routers += [opendata_console.router]
    routers += [maps_api.router, ogc_features.router, api_pipes.router, maps_pages.router]
    routers += [sensing_ingest.router, sensing_api.router, sensing_rules.router, sensorthings.router,
                sensing_pages.router]
    routers += [cases_kpi.router, cases_api.router, open311.router, cases_pages.router]  # kpi before {number}
    routers += [ops_api.router, api_indicators.router, api_emergency.router, api_plan.router,
                ops_pages.router, pages_emergency.router, pages_emergency.warnings_router, pages_plan.router]
    app = build_app(settings, routers, template_dirs=[hub_pages.TEMPLATES, opendata_pages.TEMPLATES,
                                                    ogc_html.TEMPLATES, maps_pages.TEMPLATES,
                                                    sensing_pages.TEMPLATES, cases_pages.TEMPLATES,
                                                    ops_pages.TEMPLATES],
                    engine=engine)
    app.router.lifespan_context = _lifespan
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While serving: open-data usage counts are flushed every few seconds; sensing's writer, rules
    and MQTT bridge run (started at once when a broker is set, else on first use) and are drained
    and stopped at shutdown, so an acknowledged reading is never left in memory."""
    from cityos.cases import clock as cases_clock
    from cityos.opendata import applications as od_applications
    from cityos.ops import clock as ops_clock
    from cityos.sensing import runtime as sensing_runtime

    platform = app.state.platform
    # Readings a crash left without their rollups are rolled up before anything is served.
    await run_in_threadpool(sensing_runtime.catch_up, platform)
    if platform.settings.mqtt_url:
        sensing_runtime.runtime_of(platform)
    async with od_applications.usage_flusher(platform.sessions), cases_clock.running(platform.sessions), \
            ops_clock.running(platform.sessions, platform.settings.ops_refresh_seconds):
        try:
            yield
        finally:
            rt = getattr(platform, "sensing", None)
            if rt is not None:
                await run_in_threadpool(rt.stop)
                platform.sensing = None
