"""Litestar application factory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.types import ControllerRouterHandler
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import __version__
from gateway import logging as app_logging
from gateway.middleware import reject_nul, request_id_middleware
from gateway.problems import exception_handlers
from gateway.procs import freeze_startup_heap
from gateway.routes import ROUTES
from gateway.settings import Settings
from gateway.state import Resources


def resolve_services(settings: Settings) -> Settings:
    """Start embedded servers for whatever URL is unset and export the URLs.

    Exporting lets child processes (uvicorn workers, the worker, tests' subprocesses)
    reach the same servers instead of starting their own.
    """
    from gateway import embedded

    need_pg = settings.database.url is None
    need_redis = settings.redis.url is None
    if not (need_pg or need_redis):
        return settings
    services = embedded.start(
        settings.database.embedded_dir if need_pg else None,
        settings.redis.embedded_dir if need_redis else None,
    )
    database, redis = settings.database, settings.redis
    if services.database_url:
        os.environ["DATABASE_URL"] = services.database_url
        database = replace(database, url=services.database_url)
    if services.redis_url:
        os.environ["REDIS_URL"] = services.redis_url
        redis = replace(redis, url=services.redis_url)
    return replace(settings, database=database, redis=redis)


def create_app(
    settings: Settings | None = None,
    extra_routes: list[ControllerRouterHandler] | None = None,
) -> Litestar:
    settings = settings or Settings.from_env()
    app_logging.configure(settings.log)
    holder: dict[str, Resources] = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        resolved = resolve_services(settings)
        resources = Resources.open(resolved)
        holder["resources"] = resources
        app.state["resources"] = resources  # for guards, which run before DI
        try:
            yield
        finally:
            await resources.close()

    def provide_resources() -> Resources:
        return holder["resources"]

    async def provide_session() -> AsyncIterator[AsyncSession]:
        # Services commit explicitly: a payment call must never run inside a transaction
        # that a "commit on 2xx" hook would close after the channel answered.
        async with holder["resources"].sessions() as session:
            yield session

    app = Litestar(
        route_handlers=[*ROUTES, *(extra_routes or [])],
        lifespan=[lifespan],
        dependencies={
            "resources": Provide(provide_resources, sync_to_thread=False),
            "db": Provide(provide_session),
        },
        exception_handlers=exception_handlers,
        before_request=reject_nul,
        openapi_config=OpenAPIConfig(
            title="paygate",
            version=__version__,
            description="Unified payment gateway for government non-tax revenue.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        logging_config=None,  # structlog is configured above; keep Litestar's hands off
        debug=False,
    )
    # Wrap the whole ASGI handler, not just route handlers, so 404/405 answers produced by
    # the router carry the request id and get an access-log line too.
    app.asgi_handler = request_id_middleware(app.asgi_handler)
    return app


def create_served_app() -> Litestar:
    """`paygate serve`'s factory: the app, and once it has started, the start-up heap frozen
    out of the cyclic collector's way (gateway.procs.freeze_startup_heap): a full
    collection then scans only what requests made, so its pauses — which every request in
    flight waits out — stay short. Not in create_app: tests build many apps per process,
    and frozen objects are never collected."""
    app = create_app()
    app.on_startup.append(freeze_startup_heap)
    return app
