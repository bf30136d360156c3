"""Card terminals (MIS-POS): the staff's terminal registry. (The terminals' own messages
come through the inbound seam, `POST /v1/channels/pos/{operation}`, gateway.channels_api.)

- `/v1/admin/pos/...`: register, disable, enable, rotate and list terminals; settled
  batches (mismatches with the transactions that differ). ADMIN staff only for writes,
  FINANCE and AUDITOR may read.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.staff_auth import principal, requires_role
from kernel.audit import Actor
from kernel.staff import StaffRole
from payments.pos import terminals
from payments.pos.models import PosBatch, PosTerminal

WRITE = requires_role(StaffRole.ADMIN)
READ = requires_role(StaffRole.FINANCE, StaffRole.AUDITOR)


class TerminalBody(msgspec.Struct, forbid_unknown_fields=True):
    merchant_id: str
    terminal_id: str
    agency_id: uuid.UUID
    counter: str
    operator: str | None = None


def _terminal_doc(view: terminals.TerminalView) -> dict[str, Any]:
    doc = asdict(view)
    doc["id"] = str(view.id)
    doc["agency_id"] = str(view.agency_id)
    doc["created_at"] = view.created_at.isoformat()
    return doc


class PosAdminController(Controller):
    path = "/v1/admin/pos"
    tags = ["pos"]  # noqa: RUF012

    @post("/terminals", guards=[WRITE], status_code=201, summary="Register a terminal")
    async def register(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        data: JSONBody[TerminalBody],
    ) -> dict[str, Any]:
        made = await terminals.register(
            db,
            merchant_id=data.merchant_id,
            terminal_id=data.terminal_id,
            agency_id=data.agency_id,
            counter=data.counter,
            operator=data.operator,
            actor=Actor("admin", principal(request).name),
        )
        await db.commit()
        return {**_terminal_doc(made.terminal), "key": made.key}

    @get("/terminals", guards=[READ], summary="Registered terminals")
    async def list_terminals(
        self, db: NamedDependency[AsyncSession], agency_id: FromQuery[uuid.UUID | None] = None
    ) -> list[dict[str, Any]]:
        found = await terminals.list_terminals(db, agency_id=agency_id)
        return [_terminal_doc(v) for v in found]

    @post(
        "/terminals/{merchant_id:str}/{terminal_id:str}/{action:str}",
        guards=[WRITE],
        status_code=200,
        summary="disable, enable or rotate-key",
    )
    async def act(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        merchant_id: FromPath[str],
        terminal_id: FromPath[str],
        action: FromPath[str],
    ) -> dict[str, Any]:
        from kernel.errors import NotFound

        actor = Actor("admin", principal(request).name)
        if action == "rotate-key":
            made = await terminals.rotate_key(
                db, merchant_id=merchant_id, terminal_id=terminal_id, actor=actor
            )
            await db.commit()
            return {**_terminal_doc(made.terminal), "key": made.key}
        if action not in {"disable", "enable"}:
            raise NotFound("No such action.", code="unknown_action")
        view = await terminals.set_enabled(
            db,
            merchant_id=merchant_id,
            terminal_id=terminal_id,
            enabled=action == "enable",
            actor=actor,
        )
        await db.commit()
        return _terminal_doc(view)

    @get("/batches", guards=[READ], summary="Settled batches (status=MISMATCHED: the mismatches)")
    async def batches(
        self, db: NamedDependency[AsyncSession], status: FromQuery[str | None] = None
    ) -> list[dict[str, Any]]:
        stmt = (
            select(PosBatch, PosTerminal.merchant_id, PosTerminal.terminal_id)
            .join(PosTerminal, PosTerminal.id == PosBatch.terminal_ref)
            .order_by(PosBatch.settled_at.desc())
            .limit(500)
        )
        if status:
            stmt = stmt.where(PosBatch.status == status.upper())
        return [
            {
                "merchant_id": merchant,
                "terminal_id": terminal,
                "batch_no": b.batch_no,
                "status": b.status,
                "terminal_totals": b.terminal_totals,
                "host_totals": b.our_totals,
                "differences": b.differences,
                "settled_at": b.settled_at.isoformat(),
            }
            for b, merchant, terminal in (await db.execute(stmt)).all()
        ]
