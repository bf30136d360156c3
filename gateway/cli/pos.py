"""`paygate pos …`: the card terminal registry and settled batches."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway.cli.base import in_session, main, serve_simulator
from gateway.cli.service import simulator

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from kernel.audit import Actor
    from payments.pos.terminals import TerminalView


@main.group()
def pos() -> None:
    """Card terminals (MIS-POS) at agency counters: register, disable, list, batches."""


def _actor(actor: str | None) -> Actor:
    from kernel.audit import Actor

    return Actor(type="admin", id=actor or f"cli:{os.environ.get('USER', 'unknown')}")


def _line(v: TerminalView) -> str:
    state = "enabled" if v.enabled else "DISABLED"
    return (
        f"{v.merchant_id} {v.terminal_id} {state:8} agency={v.agency_id} counter={v.counter}"
        f" operator={v.operator or '-'}"
    )


_MERCHANT = click.option("--merchant", "merchant_id", required=True, help="Merchant id (15).")
_TERMINAL = click.option("--terminal", "terminal_id", required=True, help="Terminal id (8).")
_ACTOR = click.option("--actor", default=None, help="Who does this (audit log); default cli:$USER.")


@pos.command("register")
@_MERCHANT
@_TERMINAL
@click.option("--agency", "agency_id", type=click.UUID, required=True, help="Agency id.")
@click.option("--counter", required=True, help="The counter or hall it stands at.")
@click.option("--operator", default=None, help="The clerk responsible for it.")
@_ACTOR
def pos_register(  # noqa: PLR0917 - click passes the options positionally
    merchant_id: str,
    terminal_id: str,
    agency_id: uuid.UUID,
    counter: str,
    operator: str | None,
    actor: str | None,
) -> None:
    """Register a terminal; prints its key once (load it into the terminal)."""
    from payments.pos import terminals

    async def run(s: AsyncSession) -> terminals.Registered:
        return await terminals.register(
            s,
            merchant_id=merchant_id,
            terminal_id=terminal_id,
            agency_id=agency_id,
            counter=counter,
            operator=operator,
            actor=_actor(actor),
        )

    made = in_session(run)
    click.echo(_line(made.terminal))
    click.echo(f"terminal key (load it now, it is not shown again): {made.key}")


def _set(merchant_id: str, terminal_id: str, enabled: bool, actor: str | None) -> None:
    from payments.pos import terminals

    async def run(s: AsyncSession) -> TerminalView:
        return await terminals.set_enabled(
            s,
            merchant_id=merchant_id,
            terminal_id=terminal_id,
            enabled=enabled,
            actor=_actor(actor),
        )

    click.echo(_line(in_session(run)))


@pos.command("disable")
@_MERCHANT
@_TERMINAL
@_ACTOR
def pos_disable(merchant_id: str, terminal_id: str, actor: str | None) -> None:
    """Disable a terminal: its messages are refused from now on."""
    _set(merchant_id, terminal_id, False, actor)


@pos.command("enable")
@_MERCHANT
@_TERMINAL
@_ACTOR
def pos_enable(merchant_id: str, terminal_id: str, actor: str | None) -> None:
    """Enable a disabled terminal again."""
    _set(merchant_id, terminal_id, True, actor)


@pos.command("rotate-key")
@_MERCHANT
@_TERMINAL
@_ACTOR
def pos_rotate(merchant_id: str, terminal_id: str, actor: str | None) -> None:
    """Give a terminal a new key (printed once); the old one stops working."""
    from payments.pos import terminals

    async def run(s: AsyncSession) -> terminals.Registered:
        return await terminals.rotate_key(
            s, merchant_id=merchant_id, terminal_id=terminal_id, actor=_actor(actor)
        )

    made = in_session(run)
    click.echo(_line(made.terminal))
    click.echo(f"terminal key (load it now, it is not shown again): {made.key}")


@pos.command("list")
@click.option("--agency", "agency_id", type=click.UUID, default=None, help="Only this agency's.")
def pos_list(agency_id: uuid.UUID | None) -> None:
    """List the registered terminals."""
    from payments.pos import terminals

    async def run(s: AsyncSession) -> list[TerminalView]:
        return await terminals.list_terminals(s, agency_id=agency_id)

    for v in in_session(run):
        click.echo(_line(v))


@pos.command("batches")
@click.option("--mismatched", is_flag=True, help="Only batches whose totals differed.")
def pos_batches(mismatched: bool) -> None:
    """Settled batches, newest first, with the transactions that differ (amounts in fen)."""
    import json

    from sqlalchemy import select

    from payments.pos.models import PosBatch, PosTerminal

    async def run(s: AsyncSession) -> list[dict[str, Any]]:
        stmt = (
            select(PosBatch, PosTerminal.terminal_id)
            .join(PosTerminal, PosTerminal.id == PosBatch.terminal_ref)
            .order_by(PosBatch.settled_at.desc())
            .limit(200)
        )
        if mismatched:
            stmt = stmt.where(PosBatch.status == "MISMATCHED")
        return [
            {
                "terminal_id": terminal,
                "batch_no": b.batch_no,
                "status": b.status,
                "terminal_totals": b.terminal_totals,
                "host_totals": b.our_totals,
                "differences": b.differences,
            }
            for b, terminal in (await s.execute(stmt)).all()
        ]

    for doc in in_session(run):
        click.echo(json.dumps(doc, ensure_ascii=False))


@simulator.command("pos")
@click.option("--gateway", "gateway_url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--merchant", "merchant_id", required=True, help="Merchant id (15).")
@click.option("--terminal", "terminal_id", required=True, help="Terminal id (8).")
@click.option("--key", required=True, help="The terminal's key, as `paygate pos register` gave it.")
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The terminal's journal (batch, trace numbers); default var/pos-sim/<terminal>.json.",
)
@click.option("--lose-answer", is_flag=True, help="Sale: lose the answer, then reverse.")
@click.option("--reversal-first", is_flag=True, help="Sale: the reversal overtakes the sale.")
@click.option("--concurrent-reversal", is_flag=True, help="Sale: sale and reversal at once.")
@click.option("--duplicates", type=int, default=0, help="Sale: send it again this many times.")
@click.option("--replay", is_flag=True, help="Sale: replay the identical signed request.")
@click.option("--forge", is_flag=True, help="Sign with a wrong key.")
@click.option(
    "--acquirer",
    "acquirer_url",
    default=None,
    help="The simulated acquirer (`paygate simulator pos-acquirer`) to book each card"
    " transaction with first, e.g. http://127.0.0.1:8103.",
)
@click.argument(
    "operation", type=click.Choice(["inquiry", "sale", "void", "reverse", "refund", "settle"])
)
@click.argument("args", nargs=-1)
def simulator_pos(
    *,
    gateway_url: str,
    merchant_id: str,
    terminal_id: str,
    key: str,
    state_file: Path | None,
    lose_answer: bool,
    reversal_first: bool,
    concurrent_reversal: bool,
    duplicates: int,
    replay: bool,
    forge: bool,
    acquirer_url: str | None,
    operation: str,
    args: tuple[str, ...],
) -> None:
    """Play a card terminal against the gateway and print what was sent and answered.

    \b
    OPERATION ARGS:
      inquiry PAYMENT_CODE
      sale PAYMENT_CODE AMOUNT_FEN
      void TRACE_NO            (a sale of the current batch)
      reverse TRACE_NO
      refund BATCH_NO TRACE_NO AMOUNT_FEN  (退货 of a sale of a settled batch)
      settle [SKIP_TRACE ...]  (skipped lines make a mismatch)
    """
    import asyncio
    import dataclasses
    import json

    from channels.pos.simulator import SimTerminal

    path = state_file or Path("var/pos-sim") / f"{terminal_id}.json"

    async def run() -> Any:
        sim = SimTerminal(
            gateway_url=gateway_url,
            merchant=merchant_id,
            terminal=terminal_id,
            key=key.encode(),
            state=SimTerminal.load(path),
            acquirer_url=acquirer_url,
        )
        try:
            if operation == "inquiry":
                return dataclasses.asdict(await sim.inquiry(args[0], forge=forge))
            if operation == "sale":
                return await sim.sale(
                    args[0],
                    int(args[1]),
                    lose_answer=lose_answer,
                    reversal_first=reversal_first,
                    concurrent_reversal=concurrent_reversal,
                    duplicates=duplicates,
                    replay=replay,
                    forge=forge,
                )
            if operation == "void":
                return dataclasses.asdict(await sim.void(args[0], forge=forge))
            if operation == "reverse":
                return dataclasses.asdict(await sim.reverse(args[0]))
            if operation == "refund":
                return dataclasses.asdict(await sim.refund(args[0], args[1], int(args[2])))
            return dataclasses.asdict(await sim.settle(skip_traces=args, forge=forge))
        finally:
            sim.save(path)
            await sim.aclose()

    if operation in {"inquiry", "void", "reverse"} and len(args) != 1:
        raise click.UsageError(f"{operation} takes one argument")
    if operation == "sale" and len(args) != 2:
        raise click.UsageError("sale takes PAYMENT_CODE AMOUNT_FEN")
    if operation == "refund" and len(args) != 3:
        raise click.UsageError("refund takes BATCH_NO TRACE_NO AMOUNT_FEN")
    click.echo(json.dumps(asyncio.run(run()), ensure_ascii=False, indent=1))


@simulator.command("pos-acquirer")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8103, show_default=True)
def simulator_pos_acquirer(host: str, port: int) -> None:
    """Run the card terminals' simulated acquirer (its HMAC secret from
    PAYGATE_POS_ACQUIRER_SECRET; point paygate's PAYGATE_POS_ACQUIRER_URL at
    http://HOST:PORT/acquirer, and `paygate simulator pos --acquirer http://HOST:PORT`).
    Switches through POST /control/faults and /control/statement (channels/pos/
    simulator_acquirer.py)."""

    click.secho(f"POS acquirer simulator on http://{host}:{port}", fg="green", bold=True)
    click.echo(f"  export PAYGATE_POS_ACQUIRER_URL=http://{host}:{port}/acquirer")
    serve_simulator("channels.pos.simulator_acquirer:create_app", host, port)
