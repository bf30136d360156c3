"""`paygate agency|item|webhooks …`: agencies, their keys and items, webhook operations."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import click

from gateway.cli.base import in_session, main, service

if TYPE_CHECKING:
    from gateway.state import Resources
    from kernel.audit import Actor


@main.group()
def webhooks() -> None:
    """Agency webhooks: endpoint, events, attempts, resend."""


def _actor(actor: str | None) -> Actor:
    from kernel.audit import Actor

    return Actor(type="finance", id=actor or f"cli:{os.environ.get('USER', 'unknown')}")


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
            return await wh.set_endpoint(
                s, agency_id, url, _actor(actor), allow_private=res.settings.webhooks.allow_private
            )

    secret = service(run)
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

    _echo_json(service(run))


@webhooks.command("attempts")
@_AGENCY
@click.option("--event", "event_id", type=click.UUID, required=True, help="Event id.")
def webhooks_attempts(agency_id: uuid.UUID, event_id: uuid.UUID) -> None:
    """Show every delivery attempt of one event (JSON)."""
    from billing import webhooks as wh

    async def run(res: Resources) -> list[wh.AttemptView]:
        async with res.sessions() as s:
            return await wh.list_attempts(s, agency_id, event_id)

    _echo_json(service(run))


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

    _echo_json(service(run))


@main.group()
def agency() -> None:
    """Collecting agencies and their API keys."""


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

    async def run(res: Resources) -> tuple[Any, Any]:
        async with res.sessions() as session, session.begin():
            a = await agencies.create_agency(
                session,
                credit_code=credit_code,
                name=name,
                region_code=region,
                item_codes=list(items),
                webhook_url=webhook_url,
                allow_private_webhook=res.settings.webhooks.allow_private,
            )
            return a.id, await agencies.create_key(session, a.id)

    agency_id, key = service(run)
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
            keys = (
                ",".join(
                    f"{k.key_id}(last used {k.last_used_at:%Y-%m-%d %H:%M}Z)"
                    if k.last_used_at
                    else f"{k.key_id}(never used)"
                    for k in await agencies.live_keys(session, a.id)
                )
                or "-"
            )
            out.append(f"{a.id}  {a.credit_code}  {a.region_code}  {a.name}  keys={keys}")
        return out

    for line in in_session(run):
        click.echo(line)


@agency.command("add-item")
@click.argument("agency_id", type=click.UUID)
@click.argument("item_code")
def agency_add_item(agency_id: Any, item_code: str) -> None:
    """Allow an agency to bill a revenue item."""
    from billing import agencies

    in_session(lambda s: agencies.add_item(s, agency_id, item_code))
    click.echo("ok")


@agency.group("key")
def agency_key() -> None:
    """API keys: create, rotate (old key stays live for a grace period), revoke."""


@agency_key.command("create")
@click.argument("agency_id", type=click.UUID)
def key_create(agency_id: Any) -> None:
    from billing import agencies

    key = in_session(lambda s: agencies.create_key(s, agency_id))
    click.echo(f"key id {key.key_id}\nsecret {key.secret}   (shown once: store it now)")


@agency_key.command("rotate")
@click.argument("key_id")
@click.option("--grace-hours", type=float, default=24.0, show_default=True)
def key_rotate(key_id: str, grace_hours: float) -> None:
    from datetime import timedelta

    from billing import agencies

    key = in_session(lambda s: agencies.rotate_key(s, key_id, grace=timedelta(hours=grace_hours)))
    click.echo(f"new key id {key.key_id}\nsecret {key.secret}   (shown once: store it now)")
    click.echo(f"{key_id} stays valid for {grace_hours} h")


@agency_key.command("revoke")
@click.argument("key_id")
def key_revoke(key_id: str) -> None:
    from billing import agencies

    in_session(lambda s: agencies.revoke_key(s, key_id))
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

    for line in in_session(run):
        click.echo(line)


@item.command("seed-demo")
def item_seed_demo() -> None:
    """Insert or update the demo catalogue (fines, exam fees, tuition, school fees)."""
    from billing import catalogue

    click.echo(f"{in_session(catalogue.seed_demo_items)} items")


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
    in_session(lambda s: catalogue.upsert_item(s, spec))
    click.echo(f"item {code} saved")
