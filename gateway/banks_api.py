"""Admin API of the registered banks (finance staff): add, list, enable/disable, rotate keys.

Secrets are returned once, by the call that makes them; listing never shows one."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from channels.bank import registry
from gateway.staff_auth import principal, requires_role
from gateway.state import Resources
from kernel.audit import Actor
from kernel.errors import InvalidInput
from kernel.staff import StaffRole

READ = requires_role(StaffRole.FINANCE, StaffRole.AUDITOR)
WRITE = requires_role(StaffRole.FINANCE)
MAX_GRACE_S = 7 * 24 * 3600


class NewBank(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str
    sign_method: str
    """HMAC-SHA256 or SM2-SM3."""
    endpoint: str
    secret: str | None = None
    """HMAC: the shared secret (≥ 32 characters); made for you when absent."""
    bank_public_key: str | None = None
    """SM2: the bank's public key, 04‖x‖y in hex."""


class Rotation(msgspec.Struct, forbid_unknown_fields=True):
    secret: str | None = None
    bank_public_key: str | None = None
    grace_s: int = int(registry.DEFAULT_GRACE.total_seconds())


def _actor(request: Request[Any, Any, Any]) -> Actor:
    return Actor("finance", principal(request).name)


class BanksController(Controller):
    path = "/v1/banks"
    tags = ["banks"]  # noqa: RUF012

    @get("/", guards=[READ], summary="Registered banks (no secrets)")
    async def list_banks(self, db: NamedDependency[AsyncSession]) -> list[dict[str, Any]]:
        return await registry.list_banks(db)

    @post("/", guards=[WRITE], status_code=201, summary="Register a bank")
    async def add(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        data: JSONBody[NewBank],
    ) -> dict[str, Any]:
        made = await registry.add(
            db,
            code=data.code,
            name=data.name,
            sign_method=data.sign_method,
            endpoint=data.endpoint,
            actor=_actor(request),
            secret=data.secret,
            bank_public_key=data.bank_public_key,
        )
        await db.commit()
        await resources.banks.refresh()
        return asdict(made)

    @post("/{code:str}/disable", guards=[WRITE], status_code=200, summary="Refuse its messages")
    async def disable(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        code: FromPath[str],
    ) -> dict[str, Any]:
        return await _set_enabled(request, db, resources, code, enabled=False)

    @post("/{code:str}/enable", guards=[WRITE], status_code=200, summary="Accept it again")
    async def enable(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        code: FromPath[str],
    ) -> dict[str, Any]:
        return await _set_enabled(request, db, resources, code, enabled=True)

    @post("/{code:str}/rotate", guards=[WRITE], status_code=200, summary="New keys")
    async def rotate(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        code: FromPath[str],
        data: JSONBody[Rotation],
    ) -> dict[str, Any]:
        if not 0 <= data.grace_s <= MAX_GRACE_S:
            raise InvalidInput("grace_s is 0 to 7 days", code="bad_grace")
        made = await registry.rotate(
            db,
            code,
            actor=_actor(request),
            secret=data.secret,
            bank_public_key=data.bank_public_key,
            grace=timedelta(seconds=data.grace_s),
        )
        await db.commit()
        await resources.banks.refresh()
        return asdict(made)


async def _set_enabled(
    request: Request[Any, Any, Any],
    db: AsyncSession,
    resources: Resources,
    code: str,
    *,
    enabled: bool,
) -> dict[str, Any]:
    """Disable or enable, commit, and make this process's directory see it at once."""
    bank = await registry.set_enabled(db, code, enabled=enabled, actor=_actor(request))
    out = registry.view(bank)
    await db.commit()
    await resources.banks.refresh()
    return out
