"""`paygate` command line: serve, worker, db, demo, bench, version."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from gateway import __version__
from gateway import logging as app_logging
from gateway.procs import exit_with_parent, spawn_child, stop_children
from gateway.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from gateway.state import Resources

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

    # Exported before settings are read: the app factory (uvicorn), the worker and
    # PAYGATE_PUBLIC_URL's default (notify URLs given to channels, bill QR codes) must all
    # see the port actually served, not the 8000 default.
    if host:
        os.environ["PAYGATE_HOST"] = host
    if port:
        os.environ["PAYGATE_PORT"] = str(port)
    settings = _prepare()
    host = host or settings.server.host
    port = port or settings.server.port
    workers = workers or settings.server.workers
    children: list[subprocess.Popen[bytes]] = []
    if demo:
        from gateway.demo import seed

        if not settings.alipay.enabled:
            children.append(_start_alipay_simulator())
            settings = Settings.from_env()  # now pointing at the simulator
        for line in _with_resources(settings, seed):
            click.echo(line)
        # A demo's webhook receiver runs on this machine; production never allows that.
        os.environ.setdefault("PAYGATE_WEBHOOK_ALLOW_PRIVATE", "1")
        # Children inherit DATABASE_URL/REDIS_URL and stop when we stop, even on SIGKILL.
        children.append(spawn_child("worker"))
    click.secho(f"paygate {__version__} serving on http://{host}:{port}", fg="green", bold=True)
    click.echo(f"  API reference: http://{host}:{port}/schema   readiness: /health/ready")
    try:
        uvicorn.run(
            "gateway.app:create_served_app",
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
        stop_children(children)


def _start_alipay_simulator() -> subprocess.Popen[bytes]:
    """Demo mode without an Alipay account: run the simulator and point the adapter at it."""
    from channels.alipay.keys import ensure_keys
    from gateway.procs import free_port

    keys_dir = Path("var/alipay").resolve()
    keys = ensure_keys(keys_dir)
    port = free_port()
    app_id = "2021000000000001"
    os.environ |= {
        "PAYGATE_ALIPAY_APP_ID": app_id,
        "PAYGATE_ALIPAY_GATEWAY_URL": f"http://127.0.0.1:{port}/gateway.do",
        "PAYGATE_ALIPAY_APP_PRIVATE_KEY_PATH": str(keys.app_private),
        "PAYGATE_ALIPAY_PUBLIC_KEY_PATH": str(keys.alipay_public),
    }
    child = spawn_child(
        "simulator", "alipay", "--port", str(port), "--keys-dir", str(keys_dir), "--app-id", app_id
    )
    click.echo(f"  Alipay simulator (demo): http://127.0.0.1:{port}/sim/cashier/<attempt id>")
    return child


@main.command()
@click.option("--once", is_flag=True, help="Run every job once and exit.")
@click.option("--parent", type=int, default=None, help="Exit when this process id exits.")
def worker(once: bool, parent: int | None) -> None:
    """Run the background worker loop."""
    from gateway import worker as w

    if parent is not None:
        exit_with_parent(parent)
    settings = _prepare()
    if once:
        click.echo(_with_resources(settings, w.run_once))
    else:
        _with_resources(settings, w.run_forever)


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


@main.group()
def simulator() -> None:
    """Channel simulators speaking the real wire protocols (for tests and the demo)."""


@simulator.command("alipay")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", type=int, default=8101, show_default=True, help="Port.")
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Multiplier for Alipay's notification retry schedule (0.01: 4 min → 2.4 s).",
)
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/alipay"),
    show_default=True,
    help="Where the generated demo key pairs live (created on first run).",
)
@click.option("--app-id", default=None, help="Merchant app id (PAYGATE_ALIPAY_APP_ID).")
@click.option("--parent", type=int, default=None, help="Exit when this process id exits.")
def simulator_alipay(
    *,
    host: str,
    port: int,
    time_scale: float,
    keys_dir: Path,
    app_id: str | None,
    parent: int | None,
) -> None:
    """Serve the Alipay gateway simulator (uvicorn + httptools, which routes the SDK's
    absolute-form request target correctly)."""
    import uvicorn

    from channels.alipay.keys import ensure_keys
    from channels.alipay.simulator import create_simulator

    if parent is not None:
        exit_with_parent(parent)
    settings = Settings.from_env()
    app_logging.configure(settings.log)
    app_id = app_id or settings.alipay.app_id or "2021000000000001"
    keys = ensure_keys(keys_dir)
    app = create_simulator(
        app_id=app_id,
        app_public_key_pem=keys.app_public.read_text(encoding="ascii"),
        alipay_private_key_pem=keys.alipay_private.read_text(encoding="ascii"),
        time_scale=time_scale,
    )
    click.secho(f"Alipay simulator on http://{host}:{port}/gateway.do", fg="green", bold=True)
    click.echo("Point paygate at it with:")
    click.echo(f"  export PAYGATE_ALIPAY_APP_ID={app_id}")
    click.echo(f"  export PAYGATE_ALIPAY_GATEWAY_URL=http://{host}:{port}/gateway.do")
    click.echo(f"  export PAYGATE_ALIPAY_APP_PRIVATE_KEY_PATH={keys.app_private.resolve()}")
    click.echo(f"  export PAYGATE_ALIPAY_PUBLIC_KEY_PATH={keys.alipay_public.resolve()}")
    click.echo(f"Cashier for a trade: http://{host}:{port}/sim/cashier/<out_trade_no>")
    uvicorn.run(app, host=host, port=port, http="httptools", log_config=None, access_log=False)


@main.command("enote-keys")
def enote_keys() -> None:
    """Print the e-note signing keys' ids, certificate serials and public keys.

    Creates the demo keys under PAYGATE_ENOTE_KEY_DIR on first use when none are configured.
    Needs no database: the public keys are what a verifier elsewhere registers.
    """
    from gateway.enotes import enote_context

    signers = enote_context(Settings.from_env()).signers
    for role, signer in (("issuer", signers.issuer), ("supervisor", signers.supervisor)):
        point = getattr(signer, "point", b"")
        click.echo(f"{role}: key_id={signer.key_id} cert_serial={signer.cert_serial}")
        if point:
            click.echo(f"  public key (SM2, uncompressed): {point.hex()}")


@simulator.command("bank")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8100, show_default=True)
def simulator_bank(host: str, port: int) -> None:
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


def service(fn: Callable[[Resources], Awaitable[T]]) -> T:
    """Run a service call; a DomainError becomes a one-line CLI error, not a traceback."""
    from billing.errors import DomainError

    try:
        return _with_resources(_prepare(), fn)
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


# Command groups that live in their own modules register themselves on `main`.
from gateway import cli_agencies, cli_settlement  # noqa: E402

del cli_agencies, cli_settlement

if __name__ == "__main__":
    # `python -m gateway.cli` runs this file as __main__: go through the package module so
    # the command modules above register on the group that runs.
    from gateway.cli import main as package_main

    package_main()
