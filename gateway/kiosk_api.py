"""The kiosk registry and the finance reports, for staff. (The kiosks' own messages come
through the generic inbound route, `POST /v1/channels/kiosk/{operation}`.)"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.staff_auth import principal, requires_role
from gateway.state import Resources
from kernel.audit import Actor
from kernel.staff import StaffRole
from kiosks import devices, kiosk

READ = requires_role(StaffRole.FINANCE, StaffRole.AUDITOR)
WRITE = requires_role(StaffRole.FINANCE)


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    device_id: str
    hall: str
    region_code: str
    acquirer_merchant_id: str
    acquirer_terminal_id: str
    sign_alg: str = "HMAC"
    public_key: str | None = None
    """SM2 devices: the device's public key (PEM)."""
    location: str = ""
    agency_id: uuid.UUID | None = None
    owner_hall: str | None = None
    heartbeat_window_s: int = 300


class RotateBody(msgspec.Struct, forbid_unknown_fields=True):
    sign_alg: str | None = None
    public_key: str | None = None


def _device(d: devices.DeviceView) -> dict[str, Any]:
    doc = asdict(d)
    doc["agency_id"] = str(d.agency_id) if d.agency_id else None
    doc["last_heartbeat_at"] = d.last_heartbeat_at.isoformat() if d.last_heartbeat_at else None
    return doc


def _issued(issued: devices.Issued) -> dict[str, Any]:
    return {"device": _device(issued.device), "secret": issued.secret}


class KioskAdminController(Controller):
    """The kiosk registry and the finance reports (gaps, offline devices)."""

    path = "/v1/kiosks"
    tags = ["kiosks"]  # noqa: RUF012

    @post("/", guards=[WRITE], status_code=201, summary="Register a kiosk (secret shown once)")
    async def register(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        data: JSONBody[RegisterBody],
    ) -> dict[str, Any]:
        who = principal(request)
        issued = await devices.register(
            db, **msgspec.structs.asdict(data), actor=Actor("finance", who.name)
        )
        await db.commit()
        return _issued(issued)

    @get("/", guards=[READ], summary="Kiosks; ?offline=true for those silent past their window")
    async def devices(
        self, db: NamedDependency[AsyncSession], offline: FromQuery[bool] = False
    ) -> list[dict[str, Any]]:
        return [_device(d) for d in await devices.list_devices(db, offline_only=offline)]

    @get("/gaps", guards=[READ], summary="Sequence numbers not received, per kiosk")
    async def gaps(
        self, resources: NamedDependency[Resources], device: FromQuery[str | None] = None
    ) -> list[dict[str, Any]]:
        found = await kiosk.open_gaps(resources.payment_context(), device)
        return [
            {
                "device_id": g.device_id,
                "first": g.first,
                "last": g.last,
                "count": g.count,
                "since": g.since.isoformat(),
            }
            for g in found
        ]

    @get("/{device_id:str}", guards=[READ], summary="One kiosk")
    async def one(
        self, db: NamedDependency[AsyncSession], device_id: FromPath[str]
    ) -> dict[str, Any]:
        return _device(await devices.get_device(db, device_id))

    @post("/{device_id:str}/disable", guards=[WRITE], status_code=200)
    async def disable(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        device_id: FromPath[str],
    ) -> dict[str, Any]:
        who = principal(request)
        d = await devices.set_enabled(
            db, device_id, enabled=False, actor=Actor("finance", who.name)
        )
        await db.commit()
        return _device(d)

    @post("/{device_id:str}/enable", guards=[WRITE], status_code=200)
    async def enable(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        device_id: FromPath[str],
    ) -> dict[str, Any]:
        who = principal(request)
        d = await devices.set_enabled(db, device_id, enabled=True, actor=Actor("finance", who.name))
        await db.commit()
        return _device(d)

    @post(
        "/{device_id:str}/rotate", guards=[WRITE], status_code=200, summary="New key (shown once)"
    )
    async def rotate(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        device_id: FromPath[str],
        data: JSONBody[RotateBody],
    ) -> dict[str, Any]:
        who = principal(request)
        issued = await devices.rotate(
            db,
            device_id,
            actor=Actor("finance", who.name),
            sign_alg=data.sign_alg,
            public_key=data.public_key,
        )
        await db.commit()
        return _issued(issued)
