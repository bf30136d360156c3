"""Finance API: settlement days, discrepancies, batches, totals, refunds, settle.

Every endpoint needs a staff token (gateway.staff_auth): reads admit FINANCE and AUDITOR,
writes FINANCE only (ADMIN passes both). Each write is audited in its own transaction.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, Parameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from billing.payer import invalidate
from gateway.bills_api import PayeeIn
from gateway.staff_auth import principal, requires_role
from gateway.state import Resources
from kernel.audit import Actor
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.staff import StaffRole
from payments import refunds
from settlement import payouts, reports, treasury
from settlement.models import DepositBatch
from settlement.reconcile import act_on

READ = requires_role(StaffRole.FINANCE, StaffRole.AUDITOR)
WRITE = requires_role(StaffRole.FINANCE)


class DiscrepancyAction(msgspec.Struct, forbid_unknown_fields=True):
    decision: str
    """RESOLVED or ACCEPTED."""
    action: str = ""
    """For RESOLVED: confirmed | refunded | returned_to_payer | identified | ..."""
    note: str | None = None


class RefundBody(msgspec.Struct, forbid_unknown_fields=True):
    receipt_id: uuid.UUID
    amount: int
    reason: str
    refund_id: uuid.UUID | None = None
    payee: PayeeIn | None = None
    """The payer's bank account: required for a refund after settlement (退库)."""


class PayoutBody(msgspec.Struct, forbid_unknown_fields=True):
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    """The bank's reference of the transfer (kept on the refund, audited)."""


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"not a date: {value!r}", code="bad_date") from None


class FinanceController(Controller):
    path = "/v1/settlement"
    tags = ["settlement"]  # noqa: RUF012

    @get("/days/{day:str}", guards=[READ], summary="A business day: totals, runs, batches")
    async def day(self, db: NamedDependency[AsyncSession], day: FromPath[str]) -> dict[str, Any]:
        return await reports.day_summary(db, _day(day))

    @get("/discrepancies", guards=[READ], summary="Discrepancies, filtered")
    async def discrepancies(
        self,
        db: NamedDependency[AsyncSession],
        day: Annotated[str | None, QueryParameter(name="date")] = None,
        channel: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
    ) -> list[dict[str, Any]]:
        return await reports.discrepancies(
            db, day=_day(day) if day else None, channel=channel, status=status
        )

    @post("/discrepancies/{discrepancy_id:int}/actions", guards=[WRITE], status_code=200)
    async def act(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        discrepancy_id: FromPath[int],
        data: JSONBody[DiscrepancyAction],
    ) -> dict[str, Any]:
        who = principal(request)
        d = await act_on(
            db,
            discrepancy_id,
            decision=data.decision.upper(),
            action=data.action,
            who=who.name,
            note=data.note,
        )
        view = reports.discrepancy_view(d)
        await db.commit()
        return view

    @post("/days/{day:str}/settle", guards=[WRITE], status_code=200)
    async def settle(
        self, request: Request[Any, Any, Any], db: NamedDependency[AsyncSession], day: FromPath[str]
    ) -> dict[str, Any]:
        who = principal(request)
        result = await treasury.settle(db, day=_day(day), actor=who.name)
        await db.commit()
        return {
            "settlement_id": str(result.settlement_id) if result.settlement_id else None,
            "receipts": result.receipts,
            "total": result.total,
            "refunds": result.refunds,
            "batches": [str(b) for b in result.batches],
        }

    @post("/batches/{batch_id:uuid}/export", guards=[WRITE], status_code=200)
    async def export(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        batch_id: FromPath[uuid.UUID],
    ) -> dict[str, Any]:
        who = principal(request)
        exported = await treasury.export_batch(db, batch_id, actor=who.name)
        await db.commit()
        return {"id": str(batch_id), "content_hash": exported.content_hash}

    @get("/batches/{batch_id:uuid}/download", guards=[READ], summary="CSV or XML of a batch")
    async def download(
        self,
        db: NamedDependency[AsyncSession],
        batch_id: FromPath[uuid.UUID],
        fmt: Annotated[str, QueryParameter(name="format")] = "csv",
    ) -> Response[bytes]:
        if fmt not in {"csv", "xml"}:
            raise InvalidInput("format must be csv or xml", code="bad_format")
        batch = await db.get(DepositBatch, batch_id)
        if batch is None:
            raise NotFound(f"no deposit batch {batch_id}", code="batch_not_found")
        if batch.status != "EXPORTED":
            raise Conflict("export the batch before downloading it", code="batch_not_exported")
        exported = await treasury.export_batch(db, batch_id, actor="download")
        body = exported.csv if fmt == "csv" else exported.xml
        return Response(
            body,
            media_type="text/csv" if fmt == "csv" else "application/xml",
            headers={
                "Content-Disposition": f'attachment; filename="{batch_id}.{fmt}"',
                "X-Content-SHA256": exported.content_hash,
            },
        )

    @get("/batches/{batch_id:uuid}/lines/{line_no:int}/codes", guards=[READ])
    async def codes(
        self,
        db: NamedDependency[AsyncSession],
        batch_id: FromPath[uuid.UUID],
        line_no: Annotated[int, Parameter(ge=1, le=2**31 - 1)],
    ) -> list[str]:
        return await treasury.payment_codes(db, batch_id, line_no)

    @get("/totals", guards=[READ], summary="Paid totals by agency, item, channel, pay mode or date")
    async def totals(
        self,
        db: NamedDependency[AsyncSession],
        group_by: FromQuery[str],
        start: Annotated[str, QueryParameter(name="from")],
        end: Annotated[str, QueryParameter(name="to")],
    ) -> list[dict[str, Any]]:
        return await reports.totals(db, group_by=group_by, start=_day(start), end=_day(end))

    @post("/refunds", guards=[WRITE], status_code=201)
    async def refund(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        data: JSONBody[RefundBody],
    ) -> dict[str, Any]:
        who = principal(request)
        r = await refunds.request_refund(
            db,
            receipt_id=data.receipt_id,
            amount=data.amount,
            reason=data.reason,
            actor=Actor("finance", who.name),
            refund_id=data.refund_id,
            payee=data.payee.payee() if data.payee is not None else None,
        )
        view = {"id": str(r.id), "route": r.route, "status": r.status, "amount": r.amount}
        await db.commit()
        return view

    @get("/payouts", guards=[READ], summary="Treasury refunds due for payout (instruction CSV)")
    async def payouts(self, db: NamedDependency[AsyncSession]) -> Response[bytes]:
        due = await payouts.payouts_due(db)
        return Response(
            payouts.payout_csv(due),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="payouts.csv"'},
        )

    @post(
        "/refunds/{refund_id:uuid}/payout",
        guards=[WRITE],
        status_code=200,
        summary="The bank confirmed a treasury refund's transfer: complete the refund",
    )
    async def payout(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        refund_id: FromPath[uuid.UUID],
        data: JSONBody[PayoutBody],
    ) -> dict[str, Any]:
        who = principal(request)
        r, code = await payouts.confirm_payout(
            db, refund_id, reference=data.reference, actor=who.name
        )
        view = {"id": str(r.id), "status": r.status, "amount": r.amount, "reference": r.payout_ref}
        await db.commit()
        await invalidate(resources.redis, code)
        return view
