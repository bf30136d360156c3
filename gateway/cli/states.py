"""`paygate states`: every state machine, as Mermaid `stateDiagram-v2` text."""

from __future__ import annotations

import click

from billing.states import BILL
from enotes.states import ENOTE
from gateway.cli.base import main
from kernel.states import StateMachine
from payments.states import ATTEMPT, REFUND
from settlement.states import DEPOSIT_BATCH, DISCREPANCY

MACHINES: dict[str, StateMachine] = {
    m.name: m for m in (BILL, ATTEMPT, REFUND, ENOTE, DEPOSIT_BATCH, DISCREPANCY)
}


def render(names: tuple[str, ...], *, markdown: bool) -> str:
    parts = []
    for name in names or tuple(MACHINES):
        diagram = f"---\ntitle: {name}\n---\n{MACHINES[name].mermaid()}"
        parts.append(f"```mermaid\n{diagram}\n```" if markdown else diagram)
    return "\n\n".join(parts)


@main.command()
@click.argument("names", nargs=-1, type=click.Choice(sorted(MACHINES)))
@click.option("--markdown", is_flag=True, help="Wrap each diagram in a ```mermaid fence.")
def states(names: tuple[str, ...], markdown: bool) -> None:
    """Print the state machines (all, or those named) as Mermaid stateDiagram-v2."""
    click.echo(render(names, markdown=markdown))
