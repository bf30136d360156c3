"""`paygate kiosk …`: the self-service kiosk registry and the finance reports."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.cli.base import in_session, main, service

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from gateway.state import Resources
    from kernel.audit import Actor
    from kiosks.devices import DeviceView, Issued


def _actor(actor: str | None) -> Actor:
    from kernel.audit import Actor

    return Actor(type="finance", id=actor or f"cli:{os.environ.get('USER', 'unknown')}")


def _show(d: DeviceView) -> str:
    beat = d.last_heartbeat_at.isoformat(timespec="seconds") if d.last_heartbeat_at else "never"
    state = "enabled" if d.enabled else "DISABLED"
    online = "online" if d.online else "OFFLINE"
    return (
        f"{d.id}  {d.hall}  region {d.region_code}  {d.sign_alg} v{d.key_version}  {state}"
        f"  {online} (last heartbeat {beat}, window {d.heartbeat_window_s}s)  last seq {d.last_seq}"
    )


def _issued(issued: Issued) -> None:
    click.echo(_show(issued.device))
    if issued.secret is not None:
        click.echo(
            f"device secret (load it into the kiosk now, it is not shown again): {issued.secret}"
        )


_ACTOR = click.option("--actor", default=None, help="Who does this (audit log); default cli:$USER.")


@main.group()
def kiosk() -> None:
    """Self-service kiosks: register, disable, enable, rotate keys, list, gaps."""


@kiosk.command("register")
@click.argument("device_id")
@click.option("--hall", required=True, help="Where it stands, e.g. 市民中心一楼大厅.")
@click.option("--location", default="", help="Address or spot in the hall.")
@click.option("--region", "region_code", required=True, help="6-digit region code.")
@click.option("--agency", "agency_id", type=click.UUID, default=None, help="Owning agency.")
@click.option("--owner-hall", default=None, help="Owning service hall (when no agency owns it).")
@click.option("--merchant", "merchant_id", required=True, help="Acquirer merchant id (15).")
@click.option("--terminal", "terminal_id", required=True, help="Acquirer terminal id (8).")
@click.option("--sign", "sign_alg", type=click.Choice(["HMAC", "SM2"]), default="HMAC")
@click.option(
    "--public-key", type=click.Path(exists=True, dir_okay=False), help="SM2: the PEM file."
)
@click.option("--window", "heartbeat_window_s", type=int, default=300, show_default=True)
@_ACTOR
def kiosk_register(
    *,
    device_id: str,
    hall: str,
    location: str,
    region_code: str,
    agency_id: uuid.UUID | None,
    owner_hall: str | None,
    merchant_id: str,
    terminal_id: str,
    sign_alg: str,
    public_key: str | None,
    heartbeat_window_s: int,
    actor: str | None,
) -> None:
    """Register a kiosk; an HMAC device's secret is printed once."""
    from kiosks import devices

    pem = Path(public_key).read_text() if public_key else None

    async def run(s: AsyncSession) -> Issued:
        return await devices.register(
            s,
            device_id=device_id,
            hall=hall,
            location=location,
            region_code=region_code,
            agency_id=agency_id,
            owner_hall=owner_hall,
            acquirer_merchant_id=merchant_id,
            acquirer_terminal_id=terminal_id,
            sign_alg=sign_alg,
            public_key=pem,
            heartbeat_window_s=heartbeat_window_s,
            actor=_actor(actor),
        )

    _issued(in_session(run))


@kiosk.command("disable")
@click.argument("device_id")
@_ACTOR
def kiosk_disable(device_id: str, actor: str | None) -> None:
    """Refuse every message of this kiosk from now on."""
    from kiosks import devices

    async def run(s: AsyncSession) -> DeviceView:
        return await devices.set_enabled(s, device_id, enabled=False, actor=_actor(actor))

    click.echo(_show(in_session(run)))


@kiosk.command("enable")
@click.argument("device_id")
@_ACTOR
def kiosk_enable(device_id: str, actor: str | None) -> None:
    """Accept this kiosk's messages again."""
    from kiosks import devices

    async def run(s: AsyncSession) -> DeviceView:
        return await devices.set_enabled(s, device_id, enabled=True, actor=_actor(actor))

    click.echo(_show(in_session(run)))


@kiosk.command("rotate")
@click.argument("device_id")
@click.option("--sign", "sign_alg", type=click.Choice(["HMAC", "SM2"]), default=None)
@click.option(
    "--public-key", type=click.Path(exists=True, dir_okay=False), help="SM2: the new PEM."
)
@_ACTOR
def kiosk_rotate(
    device_id: str, sign_alg: str | None, public_key: str | None, actor: str | None
) -> None:
    """A new key, effective at once (an HMAC secret is printed once)."""
    from kiosks import devices

    pem = Path(public_key).read_text() if public_key else None

    async def run(s: AsyncSession) -> Issued:
        return await devices.rotate(
            s, device_id, actor=_actor(actor), sign_alg=sign_alg, public_key=pem
        )

    _issued(in_session(run))


@kiosk.command("list")
@click.option("--offline", is_flag=True, help="Only enabled kiosks silent past their window.")
def kiosk_list(offline: bool) -> None:
    """The registered kiosks, with their heartbeat state."""
    from kiosks import devices

    async def run(s: AsyncSession) -> list[DeviceView]:
        return await devices.list_devices(s, offline_only=offline)

    for d in in_session(run):
        click.echo(_show(d))


@kiosk.command("gaps")
@click.option("--device", "device_id", default=None, help="One kiosk only.")
def kiosk_gaps(device_id: str | None) -> None:
    """Sequence numbers not received yet, as ranges per kiosk (for finance)."""
    from kiosks import kiosk as service_kiosk

    async def run(res: Resources) -> list[service_kiosk.GapRange]:
        return await service_kiosk.open_gaps(res.payment_context(), device_id)

    for g in service(run):
        click.echo(
            f"{g.device_id}  {g.first}-{g.last}  ({g.count} missing since {g.since:%Y-%m-%d %H:%M})"
        )
