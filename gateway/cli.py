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
from typing import TYPE_CHECKING, Any, TypeVar

import click

from channels.base import StatementLine
from channels.money import fen_to_yuan
from gateway import __version__
from gateway import logging as app_logging
from gateway.procs import exit_with_parent, spawn_child, stop_children
from gateway.settings import Settings

if TYPE_CHECKING:
    from billing.audit import Actor
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
        # Children inherit DATABASE_URL/REDIS_URL and stop when we stop, even on SIGKILL.
        children.append(spawn_child("worker"))
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


@main.group()
def webhooks() -> None:
    """Agency webhooks: endpoint, events, attempts, resend."""


def _actor(actor: str | None) -> Actor:
    from billing.audit import Actor

    return Actor(type="finance", id=actor or f"cli:{os.environ.get('USER', 'unknown')}")


def _service(fn: Callable[[Resources], Awaitable[T]]) -> T:
    """Run a service call; a DomainError becomes a one-line CLI error, not a traceback."""
    from billing.errors import DomainError

    try:
        return _with_resources(_prepare(), fn)
    except DomainError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc


def _echo_json(value: object) -> None:
    import msgspec

    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


_AGENCY = click.option("--agency", "agency_id", type=click.UUID, required=True, help="Agency id.")
_ACTOR = click.option("--actor", default=None, help="Who does this (audit log); default cli:$USER.")


@webhooks.command("set-endpoint")
@_AGENCY
@click.option("--url", required=True, help="The agency's receiver URL.")
@_ACTOR
def webhooks_set_endpoint(agency_id: uuid.UUID, url: str, actor: str | None) -> None:
    """Set the webhook URL with a new signing secret (printed once)."""
    from billing import webhooks as wh

    async def run(res: Resources) -> str:
        async with res.sessions() as s, s.begin():
            return await wh.set_endpoint(s, agency_id, url, _actor(actor))

    secret = _service(run)
    click.echo(f"webhook secret (store it now, it is not shown again): {secret}")


@webhooks.command("list")
@_AGENCY
@click.option("--type", "event_type", default=None, help="bill.paid, enote.issued, ...")
@click.option("--status", type=click.Choice(["PENDING", "DELIVERED", "FAILED"]), default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
def webhooks_list(
    agency_id: uuid.UUID, event_type: str | None, status: str | None, limit: int, cursor: str | None
) -> None:
    """List an agency's webhook events, newest first (JSON)."""
    from billing import webhooks as wh

    async def run(res: Resources) -> wh.EventPage:
        async with res.sessions() as s:
            f = wh.EventFilter(type=event_type, status=status, limit=limit)
            return await wh.list_events(s, agency_id, f, cursor)

    _echo_json(_service(run))


@webhooks.command("attempts")
@_AGENCY
@click.option("--event", "event_id", type=click.UUID, required=True, help="Event id.")
def webhooks_attempts(agency_id: uuid.UUID, event_id: uuid.UUID) -> None:
    """Show every delivery attempt of one event (JSON)."""
    from billing import webhooks as wh

    async def run(res: Resources) -> list[wh.AttemptView]:
        async with res.sessions() as s:
            return await wh.list_attempts(s, agency_id, event_id)

    _echo_json(_service(run))


@webhooks.command("resend")
@_AGENCY
@click.option("--event", "event_id", type=click.UUID, required=True, help="Event id.")
@_ACTOR
def webhooks_resend(agency_id: uuid.UUID, event_id: uuid.UUID, actor: str | None) -> None:
    """Re-queue one event for immediate delivery (audited)."""
    from billing import webhooks as wh

    async def run(res: Resources) -> wh.EventView:
        async with res.sessions() as s, s.begin():
            return await wh.resend(s, agency_id, event_id, _actor(actor))

    _echo_json(_service(run))


@main.group()
def agency() -> None:
    """Collecting agencies and their API keys."""


def _in_session(fn: Callable[..., Awaitable[T]]) -> T:
    """Run fn(session) in one transaction, committed on success; DomainErrors are printed."""
    from billing.errors import DomainError

    settings = _prepare()

    async def body(resources: Any) -> T:
        async with resources.sessions() as session:
            result = await fn(session)
            await session.commit()
            return result

    try:
        return _with_resources(settings, body)
    except DomainError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc


@agency.command("create")
@click.option("--credit-code", required=True, help="Unified social credit code (18 chars).")
@click.option("--name", required=True)
@click.option("--region", required=True, help="6-digit administrative region code.")
@click.option("--item", "items", multiple=True, help="Revenue item code it may bill (repeat).")
@click.option("--webhook-url", default=None)
def agency_create(
    credit_code: str, name: str, region: str, items: tuple[str, ...], webhook_url: str | None
) -> None:
    """Create an agency and its first API key (the secret is shown once)."""
    from billing import agencies

    async def run(session: Any) -> tuple[Any, Any]:
        a = await agencies.create_agency(
            session,
            credit_code=credit_code,
            name=name,
            region_code=region,
            item_codes=list(items),
            webhook_url=webhook_url,
        )
        return a.id, await agencies.create_key(session, a.id)

    agency_id, key = _in_session(run)
    click.echo(f"agency {agency_id}")
    click.echo(f"key id {key.key_id}")
    click.echo(f"secret {key.secret}   (shown once: store it now)")


@agency.command("list")
def agency_list() -> None:
    """List agencies with their live key ids."""
    from sqlalchemy import select

    from billing import agencies
    from billing.models import Agency

    async def run(session: Any) -> list[str]:
        out = []
        for a in await session.scalars(select(Agency).order_by(Agency.created_at)):
            keys = ",".join(k.key_id for k in await agencies.live_keys(session, a.id)) or "-"
            out.append(f"{a.id}  {a.credit_code}  {a.region_code}  {a.name}  keys={keys}")
        return out

    for line in _in_session(run):
        click.echo(line)


@agency.command("add-item")
@click.argument("agency_id", type=click.UUID)
@click.argument("item_code")
def agency_add_item(agency_id: Any, item_code: str) -> None:
    """Allow an agency to bill a revenue item."""
    from billing import agencies

    _in_session(lambda s: agencies.add_item(s, agency_id, item_code))
    click.echo("ok")


@agency.group("key")
def agency_key() -> None:
    """API keys: create, rotate (old key stays live for a grace period), revoke."""


@agency_key.command("create")
@click.argument("agency_id", type=click.UUID)
def key_create(agency_id: Any) -> None:
    from billing import agencies

    key = _in_session(lambda s: agencies.create_key(s, agency_id))
    click.echo(f"key id {key.key_id}\nsecret {key.secret}   (shown once: store it now)")


@agency_key.command("rotate")
@click.argument("key_id")
@click.option("--grace-hours", type=float, default=24.0, show_default=True)
def key_rotate(key_id: str, grace_hours: float) -> None:
    from datetime import timedelta

    from billing import agencies

    key = _in_session(lambda s: agencies.rotate_key(s, key_id, grace=timedelta(hours=grace_hours)))
    click.echo(f"new key id {key.key_id}\nsecret {key.secret}   (shown once: store it now)")
    click.echo(f"{key_id} stays valid for {grace_hours} h")


@agency_key.command("revoke")
@click.argument("key_id")
def key_revoke(key_id: str) -> None:
    from billing import agencies

    _in_session(lambda s: agencies.revoke_key(s, key_id))
    click.echo(f"{key_id} revoked")


@main.group()
def item() -> None:
    """The revenue-item catalogue."""


@item.command("list")
def item_list() -> None:
    """List revenue items."""
    from sqlalchemy import select

    from billing.models import RevenueItem

    async def run(session: Any) -> list[str]:
        rows = await session.scalars(select(RevenueItem).order_by(RevenueItem.code))
        return [
            f"{i.code}  {i.category}  {i.budget_subject}  "
            f"{i.fixed_amount if i.fixed_amount else f'{i.min_amount}-{i.max_amount}'} fen  "
            f"split={i.split()}  {i.name}"
            for i in rows
        ]

    for line in _in_session(run):
        click.echo(line)


@item.command("seed-demo")
def item_seed_demo() -> None:
    """Insert or update the demo catalogue (fines, exam fees, tuition, school fees)."""
    from billing import catalogue

    click.echo(f"{_in_session(catalogue.seed_demo_items)} items")


def _split(raw: str) -> dict[int, int]:
    """'2:5000,3:5000' → {2: 5000, 3: 5000} (level: basis points)."""
    try:
        return {int(k): int(v) for k, v in (p.split(":") for p in raw.split(",") if p)}
    except ValueError as exc:
        raise click.BadParameter("use LEVEL:BASIS_POINTS[,LEVEL:BASIS_POINTS…]") from exc


@item.command("add")
@click.option("--code", required=True)
@click.option("--name", required=True)
@click.option("--category", type=click.Choice(["FINE", "EXAM_FEE", "TUITION", "OTHER"]))
@click.option("--subject", required=True, help="12-digit budget subject code.")
@click.option("--split", "split", required=True, help="LEVEL:BP,… summing to 10000.")
@click.option("--fixed", type=int, default=None, help="Fixed amount in fen.")
@click.option("--min", "min_", type=int, default=None, help="Minimum amount in fen.")
@click.option("--max", "max_", type=int, default=None, help="Maximum amount in fen.")
@click.option("--late-fee", type=click.Choice(["NONE", "FINE_DAILY_3PCT"]), default="NONE")
@click.option("--not-refundable", is_flag=True)
def item_add(
    *,
    code: str,
    name: str,
    category: str,
    subject: str,
    split: str,
    fixed: int | None,
    min_: int | None,
    max_: int | None,
    late_fee: str,
    not_refundable: bool,
) -> None:
    """Add or update one revenue item (validated: split sums to 100%, amounts positive)."""
    from billing import catalogue

    spec = catalogue.ItemSpec(
        code=code,
        name=name,
        category=category,
        budget_subject=subject,
        split_bp=_split(split),
        fixed_amount=fixed,
        min_amount=min_,
        max_amount=max_,
        late_fee_rule=late_fee,
        refundable=not not_refundable,
    )
    _in_session(lambda s: catalogue.upsert_item(s, spec))
    click.echo(f"item {code} saved")


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

                    result = await recon.reconcile(
                        res.sessions,
                        channel=name,
                        day=day,
                        lines=counted(lines),
                        content_hash=digest,
                        hold_days=res.settings.settlement.hold_days,
                        fee_rate_bp=res.settings.settlement.fee_rates_bp.get(name),
                        cutoff=res.settings.settlement.cutoff,
                        confirm=recon.exactly_once_confirm(res.payment_context()),
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
    from billing.audit import Actor
    from billing.errors import DomainError
    from settlement import refunds

    async def run(res: Resources) -> str:
        async with res.sessions() as session:
            r = await refunds.request_refund(
                session,
                receipt_id=receipt_id,
                amount=amount,
                reason=reason,
                actor=Actor("finance", actor),
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
