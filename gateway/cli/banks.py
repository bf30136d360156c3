"""`paygate bank add|list|disable|enable|rotate`: the banks on the bank interface."""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from gateway.cli.base import in_session, main

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from kernel.audit import Actor


@main.group()
def bank() -> None:
    """Banks registered for the bank interface (signing method, keys, endpoint)."""


def _actor(actor: str | None) -> Actor:
    from kernel.audit import Actor

    return Actor(type="finance", id=actor or f"cli:{os.environ.get('USER', 'unknown')}")


def _echo_json(value: object) -> None:
    import msgspec

    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


_ACTOR = click.option("--actor", default=None, help="Who does this (audit log); default cli:$USER.")
_METHODS = click.Choice(["HMAC-SHA256", "SM2-SM3"])


@bank.command("add")
@click.argument("code")
@click.option("--name", required=True, help="The bank's name.")
@click.option("--method", "sign_method", type=_METHODS, default="HMAC-SHA256", show_default=True)
@click.option("--endpoint", required=True, help="Base URL where we call the bank.")
@click.option("--secret", default=None, help="HMAC: the shared secret (default: made for you).")
@click.option("--public-key", default=None, help="SM2: the bank's public key (04‖x‖y hex).")
@_ACTOR
def bank_add(  # noqa: PLR0917 - one parameter per option
    code: str,
    name: str,
    sign_method: str,
    endpoint: str,
    secret: str | None,
    public_key: str | None,
    actor: str | None,
) -> None:
    """Register a bank; prints the secret (HMAC) or our public key (SM2) to give the bank."""
    from channels.bank import registry

    async def run(s: AsyncSession) -> dict[str, Any]:
        made = await registry.add(
            s,
            code=code,
            name=name,
            sign_method=sign_method,
            endpoint=endpoint,
            actor=_actor(actor),
            secret=secret,
            bank_public_key=public_key,
        )
        return asdict(made)

    _echo_json(in_session(run))


@bank.command("list")
def bank_list() -> None:
    """Registered banks (no secrets)."""
    from channels.bank import registry

    _echo_json(in_session(registry.list_banks))


@bank.command("disable")
@click.argument("code")
@_ACTOR
def bank_disable(code: str, actor: str | None) -> None:
    """Refuse the bank's messages (within seconds in running services)."""
    _set_enabled(code, enabled=False, actor=actor)


@bank.command("enable")
@click.argument("code")
@_ACTOR
def bank_enable(code: str, actor: str | None) -> None:
    """Accept the bank's messages again."""
    _set_enabled(code, enabled=True, actor=actor)


def _set_enabled(code: str, *, enabled: bool, actor: str | None) -> None:
    from channels.bank import registry

    async def run(s: AsyncSession) -> dict[str, Any]:
        return registry.view(
            await registry.set_enabled(s, code, enabled=enabled, actor=_actor(actor))
        )

    _echo_json(in_session(run))


@bank.command("rotate")
@click.argument("code")
@click.option("--secret", default=None, help="HMAC: the new secret (default: made for you).")
@click.option("--public-key", default=None, help="SM2: the bank's new public key, if it has one.")
@click.option("--grace-hours", type=click.IntRange(0, 168), default=24, show_default=True)
@_ACTOR
def bank_rotate(
    code: str, secret: str | None, public_key: str | None, grace_hours: int, actor: str | None
) -> None:
    """New keys; the bank's previous key still verifies for --grace-hours."""
    from channels.bank import registry

    async def run(s: AsyncSession) -> dict[str, Any]:
        made = await registry.rotate(
            s,
            code,
            actor=_actor(actor),
            secret=secret,
            bank_public_key=public_key,
            grace=timedelta(hours=grace_hours),
        )
        return asdict(made)

    _echo_json(in_session(run))
