"""`paygate ledger|reconcile|settle|refund|staff …`: finance operations."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import click

from channels.base import StatementLine
from channels.money import fen_to_yuan
from gateway.cli.base import in_session, main, prepare, service, with_resources

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from gateway.state import Resources


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
    import ledger as ledger_

    async def run(res: Resources) -> ledger_.VerifyReport:
        async with res.sessions() as session:
            return await ledger_.verify(session)

    report = with_resources(prepare(), run)
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
                        confirm_by_code=recon.channel_confirm(res.payment_context()),
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
    sys.exit(1 if with_resources(prepare(), run) else 0)


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

    with_resources(prepare(), run)
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
@click.option("--payee-name", default=None, help="After settlement: the account holder.")
@click.option("--payee-account", default=None, help="After settlement: the account number.")
@click.option("--payee-bank", default=None, help="After settlement: the account's bank.")
def refund(  # click passes options by name
    *,
    receipt_id: uuid.UUID,
    amount: int,
    reason: str,
    actor: str,
    refund_id: uuid.UUID | None,
    payee_name: str | None,
    payee_account: str | None,
    payee_bank: str | None,
) -> None:
    """Request a refund (退付) of a receipt, never beyond what is still available.

    A settled payment is refunded by bank transfer (退库): give the payee's account."""
    from kernel.audit import Actor
    from payments import refunds

    given = (payee_name, payee_account, payee_bank)
    if any(given) and not all(given):
        raise click.UsageError("--payee-name, --payee-account and --payee-bank go together")

    async def run(session: AsyncSession) -> str:
        payee = (
            refunds.Payee(name=payee_name, account=payee_account, bank=payee_bank)
            if payee_name and payee_account and payee_bank
            else None
        )
        r = await refunds.request_refund(
            session,
            receipt_id=receipt_id,
            amount=amount,
            reason=reason,
            actor=Actor("finance", actor),
            refund_id=refund_id,
            payee=payee,
        )
        return f"refund {r.id}: {fen_to_yuan(r.amount)} yuan via {r.route} ({r.status})"

    click.echo(in_session(run))


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
    from kernel.staff import create_staff

    async def run(res: Resources) -> str:
        async with res.sessions() as session:
            _, token = await create_staff(session, name=name, role=role)
            await session.commit()
        return token

    token = with_resources(prepare(), run)
    click.echo(f"staff user {name} ({role.upper()}) created; token (shown once):")
    click.echo(token)


@main.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the instruction CSV here (default: standard output).",
)
def payouts(out: Path | None) -> None:
    """The payout instruction: treasury refunds (退库) due to be paid by bank transfer."""
    from settlement import payouts as payouts_

    async def run(session: AsyncSession) -> bytes:
        return payouts_.payout_csv(await payouts_.payouts_due(session))

    data = in_session(run)
    if out is None:
        click.echo(data.decode(), nl=False)
    else:
        out.write_bytes(data)
        click.echo(f"wrote {out}")


@main.command("payout-confirm")
@click.option("--refund", "refund_id", required=True, type=click.UUID, help="Refund id.")
@click.option("--reference", required=True, help="The bank's reference of the transfer.")
@click.option("--actor", required=True, help="The finance officer confirming it.")
def payout_confirm(refund_id: uuid.UUID, reference: str, actor: str) -> None:
    """The bank confirmed a treasury refund's transfer: complete the refund (audited)."""
    from billing.payer import invalidate
    from settlement import payouts as payouts_

    async def run(res: Resources) -> str:
        async with res.sessions() as session:
            r, code = await payouts_.confirm_payout(
                session, refund_id, reference=reference, actor=actor
            )
            await session.commit()
        await invalidate(res.redis, code)
        return f"refund {r.id}: {fen_to_yuan(r.amount)} yuan paid out ({r.status})"

    click.echo(service(run))
