"""The `paygate` command group and the helpers every command module shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from gateway import __version__
from gateway import logging as app_logging
from gateway.settings import Settings
from kernel import crypto
from kernel.crypto import KeyConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from gateway.state import Resources

T = TypeVar("T")


def prepare(*, migrate: bool = True) -> Settings:
    """Settings from the environment, embedded servers for unset URLs, schema at head."""
    from gateway import migrate as migrations
    from gateway.app import resolve_services

    try:
        settings = Settings.from_env()
        # A missing or bad data/hash key fails here, before anything is served.
        crypto.configure(settings.crypto)
    except KeyConfigError as exc:
        raise click.ClickException(f"refusing to start: {exc}") from exc
    app_logging.configure(settings.log)
    settings = resolve_services(settings)
    if migrate:
        assert settings.database.url is not None
        migrations.upgrade(settings.database.url)
    return settings


def with_resources(settings: Settings, fn: Callable[..., Awaitable[T]]) -> T:
    from gateway.state import Resources

    async def main() -> T:
        resources = Resources.open(settings)
        try:
            return await fn(resources)
        finally:
            await resources.close()

    return asyncio.run(main())


@click.group()
@click.version_option(__version__, prog_name="paygate")
def main() -> None:
    """paygate — unified payment gateway for government non-tax revenue."""


def service(fn: Callable[[Resources], Awaitable[T]]) -> T:
    """Run a service call; a DomainError becomes a one-line CLI error, not a traceback."""
    from kernel.errors import DomainError

    try:
        return with_resources(prepare(), fn)
    except DomainError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc


def in_session(fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run fn(session) in one transaction, committed on success; DomainErrors are printed."""

    async def body(resources: Resources) -> T:
        async with resources.sessions() as session:
            result = await fn(session)
            await session.commit()
            return result

    return service(body)


def serve_simulator(app: object, host: str, port: int) -> None:
    """Serve a simulator (an ASGI app, or the "module:factory" that makes one) the way every
    simulator command does: one process, no access log, logging left to the app."""
    import uvicorn

    uvicorn.run(
        app,  # type: ignore[arg-type]
        factory=isinstance(app, str),
        host=host,
        port=port,
        http="httptools",
        log_config=None,
        access_log=False,
    )
