"""`paygate` command line: serve, worker, db, demo, bench, version."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from gateway import __version__
from gateway import logging as app_logging
from gateway.settings import Settings

T = TypeVar("T")


def _prepare(*, migrate: bool = True) -> Settings:
    """Settings from the environment, embedded servers for unset URLs, schema at head."""
    from gateway import migrate as migrations
    from gateway.app import resolve_services

    settings = Settings.from_env()
    app_logging.configure(settings.log)
    settings = resolve_services(settings)
    if migrate:
        assert settings.database.url is not None
        migrations.upgrade(settings.database.url)
    return settings


def _with_resources(settings: Settings, fn: Callable[..., Awaitable[T]]) -> T:
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


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


@main.command()
@click.option("--host", default=None, help="Bind address (PAYGATE_HOST).")
@click.option("--port", type=int, default=None, help="Port (PAYGATE_PORT).")
@click.option("--workers", type=int, default=None, help="Worker processes (PAYGATE_WORKERS).")
@click.option("--demo", is_flag=True, help="Seed demo data and start the background worker.")
def serve(host: str | None, port: int | None, workers: int | None, demo: bool) -> None:
    """Migrate the database and serve the API (uvicorn + httptools + uvloop)."""
    import uvicorn

    settings = _prepare()
    host = host or settings.server.host
    port = port or settings.server.port
    workers = workers or settings.server.workers
    worker_proc: subprocess.Popen[bytes] | None = None
    if demo:
        from gateway.demo import seed

        for line in _with_resources(settings, seed):
            click.echo(line)
        # The child inherits DATABASE_URL/REDIS_URL, so it joins the same servers.
        # --parent: the worker stops when we die, even by SIGKILL, so it never outlives us.
        worker_proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker", "--parent", str(os.getpid())]
        )
    click.secho(f"paygate {__version__} serving on http://{host}:{port}", fg="green", bold=True)
    click.echo(f"  API reference: http://{host}:{port}/schema   readiness: /health/ready")
    try:
        uvicorn.run(
            "gateway.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            http="httptools",
            loop="uvloop",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        if worker_proc is not None:
            worker_proc.terminate()
            worker_proc.wait(timeout=15)


@main.command()
@click.option("--once", is_flag=True, help="Run every job once and exit.")
@click.option("--parent", type=int, default=None, help="Exit when this process id exits.")
def worker(once: bool, parent: int | None) -> None:
    """Run the background worker loop."""
    from gateway import worker as w

    settings = _prepare()
    if once:
        click.echo(_with_resources(settings, w.run_once))
    else:
        _with_resources(settings, lambda res: w.run_forever(res, parent_pid=parent))


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the schema (default: to head)."""
    from gateway import migrate as migrations

    settings = _prepare(migrate=False)
    assert settings.database.url is not None
    migrations.upgrade(settings.database.url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (e.g. base)."""
    from gateway import migrate as migrations

    settings = _prepare(migrate=False)
    assert settings.database.url is not None
    migrations.downgrade(settings.database.url, revision)
    click.echo(f"database at {revision}")


@main.command()
def demo() -> None:
    """Seed demo data (idempotent)."""
    from gateway.demo import seed

    settings = _prepare()
    for line in _with_resources(settings, seed):
        click.echo(line)


@main.command("bank-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8100, show_default=True)
def bank_sim(host: str, port: int) -> None:
    """Run the bank simulator (banks from PAYGATE_BANK_SIM="102=<secret>,103=<secret>")."""
    import uvicorn

    uvicorn.run(
        "channels.bank.simulator:create_app",
        factory=True,
        host=host,
        port=port,
        http="httptools",
        log_config=None,
        access_log=False,
    )


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("scenarios", nargs=-1)
@click.option("--quick", is_flag=True, help="Short runs, for a smoke test.")
def bench(scenarios: tuple[str, ...], quick: bool) -> None:
    """Run benchmark scenarios and print one table (never fails the build)."""
    from bench.runner import run

    sys.exit(run(list(scenarios), quick=quick))


if __name__ == "__main__":
    main()
