"""`paygate` command line: serve, worker, db, demo, bench, version."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from channels.base import StatementLine
from channels.money import fen_to_yuan
from gateway import __version__
from gateway import logging as app_logging
from gateway.settings import Settings

if TYPE_CHECKING:
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


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("scenarios", nargs=-1)
@click.option("--quick", is_flag=True, help="Short runs, for a smoke test.")
def bench(scenarios: tuple[str, ...], quick: bool) -> None:
    """Run benchmark scenarios and print one table (never fails the build)."""
    from bench.runner import run

    sys.exit(run(list(scenarios), quick=quick))


# ------------------------------------------------------------------ settlement


def _date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@main.group()
def ledger() -> None:
    """Ledger commands."""


@ledger.command("verify")
def ledger_verify() -> None:
    """Prove every entry balances and every balance equals the sum of its lines."""
    from settlement import ledger as ledger_

    async def run(res: Resources) -> ledger_.VerifyReport:
        async with res.sessions() as session:
            return await ledger_.verify(session)

    report = _with_resources(_prepare(), run)
    click.echo(
        f"{report.entries} entries, {report.lines} lines, {report.accounts} accounts,"
        f" trial balance {report.trial_balance}"
    )
    if report.ok:
        click.secho("ledger OK", fg="green")
        return
    for entry_id in report.unbalanced_entries:
        click.secho(f"unbalanced entry {entry_id}", fg="red")
    for entry_id in report.short_entries:
        click.secho(f"entry {entry_id} has fewer than two lines", fg="red")
    for code, (stored, summed) in report.drifted_accounts.items():
        click.secho(f"account {code}: balance {stored} but lines sum to {summed}", fg="red")
    sys.exit(1)


@main.command()
@click.option("--date", "day", required=True, callback=_date, help="Business day, YYYY-MM-DD.")
@click.option("--channel", "channels", multiple=True, help="Channel(s); default: every one.")
@click.option(
    "--file",
    "file_",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Statement file to load instead of downloading it (needs one --channel).",
)
def reconcile(day: date, channels: tuple[str, ...], file_: Path | None) -> None:
    """Reconcile channels' statements for a business day (re-runnable)."""
    from settlement import reconcile as recon

    if file_ is not None and len(channels) != 1:
        raise click.UsageError("--file needs exactly one --channel")

    raw = file_.read_bytes() if file_ is not None else None

    async def run(res: Resources) -> int:
        names = list(channels) or res.channels.names()
        failed = 0
        for name in names:
            try:
                source = res.channels.get(name)
                lines, digest = await recon.load_statement(source, day, raw)
                with click.progressbar(
                    length=0, label=f"{name} {day.isoformat()}", show_pos=True
                ) as bar:

                    def counted(it: Iterable[StatementLine]) -> Iterator[StatementLine]:
                        for n, line in enumerate(it, start=1):
                            if n % 10_000 == 0:
                                bar.update(10_000)
                            yield line

                    # The exactly-once confirm path is bound here for the auto-heal once
                    # settlement.confirm lands (see reconcile.ConfirmPayment).
                    result = await recon.reconcile(
                        res.sessions,
                        channel=name,
                        day=day,
                        lines=counted(lines),
                        content_hash=digest,
                        hold_days=res.settings.settlement.hold_days,
                        fee_rate_bp=res.settings.settlement.fee_rates_bp.get(name),
                        cutoff=res.settings.settlement.cutoff,
                    )
            except Exception as exc:  # noqa: BLE001 - one bad file must not block the others
                failed += 1
                click.secho(f"{name}: FAILED {type(exc).__name__}: {exc}", fg="red")
                continue
            note = " (file already received)" if result.duplicate_file else ""
            click.echo(f"{name}: run {result.run_id}{note}")
            for key, value in sorted(result.counts.items()):
                click.echo(f"  {key:32} {value}")
        return failed

    if not channels and file_ is None:
        click.echo("reconciling every registered channel")
    sys.exit(1 if _with_resources(_prepare(), run) else 0)


@main.command()
@click.option("--date", "day", required=True, callback=_date, help="Business day, YYYY-MM-DD.")
@click.option("--export", "export_", is_flag=True, help="Also export (freeze) the batches.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write exported CSV/XML files here.",
)
@click.option("--actor", default="cli", help="Who is settling (recorded in the audit log).")
def settle(day: date, export_: bool, out: Path | None, actor: str) -> None:
    """Settle a reconciled business day into treasury deposit batches."""
    from settlement import treasury

    files: dict[str, bytes] = {}

    async def run(res: Resources) -> None:
        async with res.sessions() as session:
            with click.progressbar(length=len(treasury.STAGES), label="settling") as bar:
                result = await treasury.settle(
                    session, day=day, actor=actor, progress=lambda _stage: bar.update(1)
                )
            await session.commit()
        if result.settlement_id is None:
            click.echo(f"nothing ready to settle on {day.isoformat()}")
            return
        click.echo(
            f"settlement {result.settlement_id}: {result.receipts} receipts,"
            f" {fen_to_yuan(result.total)} yuan, {result.refunds} treasury refunds,"
            f" {len(result.batches)} batches"
        )
        if not export_:
            return
        with click.progressbar(result.batches, label="exporting") as batches:
            for batch_id in batches:
                async with res.sessions() as session:
                    exported = await treasury.export_batch(session, batch_id, actor=actor)
                    await session.commit()
                files[f"{batch_id}.csv"] = exported.csv
                files[f"{batch_id}.xml"] = exported.xml
                click.echo(f"  {batch_id} sha256 {exported.content_hash}")

    _with_resources(_prepare(), run)
    if out is not None and files:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (out / name).write_bytes(content)
        click.echo(f"wrote {len(files)} files to {out}")


@main.command()
@click.option("--receipt", "receipt_id", required=True, type=click.UUID, help="Receipt id.")
@click.option("--amount", required=True, type=click.IntRange(min=1), help="Amount in fen.")
@click.option("--reason", required=True, help="Why (kept with the refund and the audit).")
@click.option("--actor", required=True, help="The finance officer requesting it.")
@click.option("--refund-id", type=click.UUID, default=None, help="Idempotency key.")
def refund(
    receipt_id: uuid.UUID, amount: int, reason: str, actor: str, refund_id: uuid.UUID | None
) -> None:
    """Request a refund (退付) of a receipt, never beyond what is still available."""
    from billing.errors import DomainError
    from settlement import refunds

    async def run(res: Resources) -> str:
        async with res.sessions() as session:
            r = await refunds.request_refund(
                session,
                receipt_id=receipt_id,
                amount=amount,
                reason=reason,
                actor=refunds.Actor("finance", actor),
                refund_id=refund_id,
            )
            line = f"refund {r.id}: {fen_to_yuan(r.amount)} yuan via {r.route} ({r.status})"
            await session.commit()
        return line

    try:
        click.echo(_with_resources(_prepare(), run))
    except DomainError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None


@main.group()
def staff() -> None:
    """Finance staff accounts."""


@staff.command("create")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["finance", "auditor", "admin"], case_sensitive=False),
)
@click.argument("name")
def staff_create(role: str, name: str) -> None:
    """Create a staff user and print its API token (shown once, stored only hashed)."""
    from billing.staff import create_staff

    async def run(res: Resources) -> str:
        async with res.sessions() as session:
            _, token = await create_staff(session, name=name, role=role)
            await session.commit()
        return token

    token = _with_resources(_prepare(), run)
    click.echo(f"staff user {name} ({role.upper()}) created; token (shown once):")
    click.echo(token)


if __name__ == "__main__":
    main()
