"""Agency bill API (/v1/bills): thin controllers over billing.bills, signed by HMAC.

Request bodies are decoded here with msgspec in strict mode (amounts are integer fen:
a float, a string, zero, a negative or anything above 10¹² fen is a 422).
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import qrcode
import qrcode.image.svg
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery
from litestar.response import Stream
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing import bills as svc
from billing.models import Agency, RevenueItem
from billing.notice import render_bill_notice
from billing.payer import invalidate
from billing.personal import payer_name_of
from enotes.service import NoteSummary, notes_for_bill
from gateway.auth import AgencyPrincipal, provide_principal
from gateway.state import Resources
from kernel.clock import SHANGHAI, shanghai_today
from kernel.errors import Conflict, InvalidInput, MalformedBody
from kernel.pdf import DocItem
from payments import ways
from payments.models import Receipt, Refund
from payments.refunds import Payee, request_refund

Fen = Annotated[int, msgspec.Meta(gt=0, le=svc.MAX_AMOUNT)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=svc.MAX_QUANTITY)]
BillNo = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z._/-]+$")]
T = TypeVar("T")


class PayerIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: Literal["PERSON", "ORG"]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    id_number: Annotated[str, msgspec.Meta(max_length=18)] | None = None
    phone: Annotated[str, msgspec.Meta(max_length=20)] | None = None


class LineIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    item_code: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    quantity: Quantity
    unit_amount: Fen
    """Fen, an integer."""


class BillIn(msgspec.Struct, forbid_unknown_fields=True):
    agency_bill_no: BillNo
    payer: PayerIn
    lines: Annotated[list[LineIn], msgspec.Meta(min_length=1, max_length=svc.MAX_LINES)]
    due_date: date
    expires_at: Annotated[datetime, msgspec.Meta(tz=True)]
    remark: Annotated[str, msgspec.Meta(max_length=500)] | None = None

    def to_domain(self) -> svc.NewBill:
        p = self.payer
        return svc.NewBill(
            agency_bill_no=self.agency_bill_no,
            payer=svc.Payer(p.type, p.name, p.id_number, p.phone),
            lines=tuple(svc.Line(x.item_code, x.quantity, x.unit_amount) for x in self.lines),
            due_date=self.due_date,
            expires_at=self.expires_at,
            remark=self.remark,
        )


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    bills: Annotated[list[BillIn], msgspec.Meta(min_length=1, max_length=svc.MAX_BATCH)]


class CancelIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class SearchIn(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/bills/search: the list filters, in a body because `payer_id` is personal
    data and URLs end up in proxy and browser logs."""

    agency_bill_no: str | None = None
    status: str | None = None
    issued_from: datetime | None = None
    issued_to: datetime | None = None
    payer_id: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    payment_code: str | None = None
    cursor: str | None = None
    limit: int = 50


class PayeeIn(msgspec.Struct, forbid_unknown_fields=True):
    """The payer's bank account, for a refund after settlement (paid by bank transfer)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    account: Annotated[str, msgspec.Meta(min_length=8, max_length=40)]
    bank: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

    def payee(self) -> Payee:
        return Payee(name=self.name, account=self.account, bank=self.bank)


class RefundIn(msgspec.Struct, forbid_unknown_fields=True):
    amount: Fen
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    refund_id: uuid.UUID | None = None
    """Idempotency key: the same id with the same amount answers the same refund."""
    payee: PayeeIn | None = None
    """Required once the payment is settled (422 `payee_required` without it)."""


class RefundOut(msgspec.Struct):
    id: uuid.UUID
    amount: int
    route: str
    status: str
    reason: str
    created_at: datetime


def _refund_out(r: Refund) -> RefundOut:
    return RefundOut(r.id, r.amount, r.route, r.status, r.reason, r.created_at)


class PayerOut(msgspec.Struct):
    type: str
    name: str
    id_number: str | None
    phone: str | None


class LineOut(msgspec.Struct):
    line_no: int
    item_code: str
    quantity: int
    unit_amount: int
    amount: int


class AmountDueOut(msgspec.Struct):
    on: date
    principal: int
    late_fee: int
    overdue_days: int
    total: int


class BillOut(msgspec.Struct):
    id: uuid.UUID
    agency_bill_no: str
    payment_code: str
    status: str
    category: str
    payer: PayerOut
    principal_amount: int
    paid_amount: int
    refunded_amount: int
    amount_due_today: AmountDueOut
    payable: bool
    due_date: date
    expires_at: datetime
    issued_at: datetime
    paid_at: datetime | None
    remark: str | None
    lines: list[LineOut]
    pay_url: str


class BillPage(msgspec.Struct):
    items: list[BillOut]
    next_cursor: str | None


class ErrorOut(msgspec.Struct):
    status: int
    code: str
    detail: str


class BatchResultOut(msgspec.Struct):
    index: int
    agency_bill_no: str
    outcome: str
    bill_id: uuid.UUID | None = None
    payment_code: str | None = None
    error: ErrorOut | None = None


class BatchOut(msgspec.Struct):
    created: int
    existing: int
    failed: int
    results: list[BatchResultOut]


def decode_body(body: bytes, type_: type[T]) -> T:
    """Strict msgspec decoding: amounts must be real integers, not 200.0 or \"200\"."""
    try:
        return msgspec.json.decode(body, type=type_, strict=True)
    except msgspec.ValidationError as exc:
        # Typed decoding stops at the first wrong field, before seeing the rest of the
        # document: a body that is not JSON at all is malformed (400), whatever it began with.
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError as malformed:
            raise MalformedBody(f"Request body is malformed: {malformed}") from exc
        raise InvalidInput(str(exc), code="validation_failed") from exc
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"Request body is malformed: {exc}") from exc


def local_time(value: datetime | None) -> datetime | None:
    """A time without an offset is business time (Asia/Shanghai), not UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=SHANGHAI)


def pay_url(resources: Resources, payment_code: str) -> str:
    return f"{resources.settings.server.public_url}/pay/{payment_code}"


def _config(resources: Resources) -> svc.BillingConfig:
    b = resources.settings.billing
    return svc.BillingConfig(serial_key=b.serial_key)


def _out(view: svc.AgencyBill, resources: Resources) -> BillOut:
    b, due = view.bill, view.due_today
    return BillOut(
        id=b.id,
        agency_bill_no=b.agency_bill_no,
        payment_code=b.payment_code,
        status=b.status,
        category=b.category,
        payer=PayerOut(b.payer_type, payer_name_of(b), view.payer_id_number, view.payer_phone),
        principal_amount=b.principal_amount,
        paid_amount=b.paid_amount,
        refunded_amount=b.refunded_amount,
        amount_due_today=AmountDueOut(
            on=shanghai_today(datetime.now().astimezone()),
            principal=due.principal,
            late_fee=due.late_fee,
            overdue_days=due.overdue_days,
            total=due.total,
        ),
        payable=view.payable,
        due_date=b.due_date,
        expires_at=b.expires_at,
        issued_at=b.issued_at,
        paid_at=b.paid_at,
        remark=b.remark,
        lines=[
            LineOut(x.line_no, x.item_code, x.quantity, x.unit_amount, x.amount) for x in view.lines
        ],
        pay_url=pay_url(resources, b.payment_code),
    )


async def _page(  # noqa: PLR0917 - the handlers' dependencies, passed through
    request: Request[Any, Any, Any],
    principal: AgencyPrincipal,
    db: AsyncSession,
    resources: Resources,
    f: svc.BillFilter,
    cursor: str | None,
    limit: int,
) -> Response[BillPage] | Stream:
    """One page of the agency's bills (cursor-paginated), or all of them as a CSV stream."""
    if not 1 <= limit <= 500:
        raise InvalidInput("limit is 1–500.", code="limit_invalid")
    if "text/csv" in request.headers.get("accept", ""):
        return Stream(
            _csv(resources, principal.agency_id, f),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="bills.csv"'},
        )
    views, next_cursor = await svc.list_bills(
        db, principal.agency_id, f, cursor=cursor, limit=limit, day_count=resources.day_count
    )
    return Response(BillPage([_out(v, resources) for v in views], next_cursor))


class BillsController(Controller):
    path = "/v1"
    tags = ["bills"]  # noqa: RUF012
    dependencies = {"principal": Provide(provide_principal)}  # noqa: RUF012

    @post("/bills", summary="Issue a bill (idempotent per agency_bill_no)", status_code=201)
    async def create(
        self,
        request: Request[Any, Any, Any],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> Response[BillOut]:
        data = decode_body(await request.body(), BillIn)
        bill_id, created = await svc.issue_bill(
            db,
            principal.agency_id,
            data.to_domain(),
            config=_config(resources),
            actor=principal.actor,
        )
        await db.commit()
        view = await svc.get_bill(db, principal.agency_id, bill_id, day_count=resources.day_count)
        return Response(_out(view, resources), status_code=201 if created else 200)

    @post(
        "/bills:batch",
        summary="Issue up to 10,000 bills; one result per bill",
        status_code=200,
        request_max_body_size=64 * 1024 * 1024,
    )
    async def batch(
        self,
        request: Request[Any, Any, Any],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> BatchOut:
        data = decode_body(await request.body(), BatchIn)
        results = await svc.issue_bills(
            db,
            principal.agency_id,
            [b.to_domain() for b in data.bills],
            config=_config(resources),
            actor=principal.actor,
        )
        await db.commit()
        out = [
            BatchResultOut(
                index=i,
                agency_bill_no=r.agency_bill_no,
                outcome=r.outcome,
                bill_id=r.bill_id,
                payment_code=r.payment_code,
                error=ErrorOut(r.error.status, r.error.code, r.error.message) if r.error else None,
            )
            for i, r in enumerate(results)
        ]
        return BatchOut(
            created=sum(r.outcome == "created" for r in results),
            existing=sum(r.outcome == "existing" for r in results),
            failed=sum(r.error is not None for r in results),
            results=out,
        )

    @get("/bills", summary="List bills (cursor-paginated; Accept: text/csv streams a CSV)")
    async def list_(
        self,
        *,
        request: Request[Any, Any, Any],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        agency_bill_no: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        issued_from: FromQuery[datetime | None] = None,
        issued_to: FromQuery[datetime | None] = None,
        payer_id: FromQuery[str | None] = None,
        payment_code: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
    ) -> Response[BillPage] | Stream:
        if payer_id is not None:
            # Refused rather than ignored: ignoring it would answer with every bill.
            raise InvalidInput(
                "An ID number must not travel in a URL; send it in the body of"
                " POST /v1/bills/search.",
                code="payer_id_in_url",
            )
        f = svc.BillFilter(
            agency_bill_no,
            status,
            local_time(issued_from),
            local_time(issued_to),
            None,
            payment_code,
        )
        return await _page(request, principal, db, resources, f, cursor, limit)

    @post("/bills/search", summary="List bills by filters sent in the body (e.g. payer_id)")
    async def search(
        self,
        *,
        request: Request[Any, Any, Any],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> Response[BillPage] | Stream:
        q = decode_body(await request.body(), SearchIn)
        f = svc.BillFilter(
            q.agency_bill_no,
            q.status,
            local_time(q.issued_from),
            local_time(q.issued_to),
            q.payer_id,
            q.payment_code,
        )
        return await _page(request, principal, db, resources, f, q.cursor, q.limit)

    @get("/bills/{bill_id:uuid}", summary="One bill of this agency")
    async def get_one(
        self,
        bill_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> BillOut:
        return _out(
            await svc.get_bill(db, principal.agency_id, bill_id, day_count=resources.day_count),
            resources,
        )

    @post("/bills/{bill_id:uuid}/cancel", summary="Cancel an unpaid bill", status_code=200)
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        bill_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> BillOut:
        body = await request.body()
        data = decode_body(body, CancelIn) if body.strip() else CancelIn()
        await svc.cancel_bill(
            db, principal.agency_id, bill_id, actor=principal.actor, reason=data.reason
        )
        await db.commit()
        view = await svc.get_bill(db, principal.agency_id, bill_id, day_count=resources.day_count)
        await invalidate(resources.redis, view.bill.payment_code)
        return _out(view, resources)

    @get("/bills/{bill_id:uuid}/qr.png", summary="QR code of the citizen pay URL (PNG)")
    async def qr_png(
        self,
        bill_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        view = await svc.get_bill(db, principal.agency_id, bill_id, reveal=False)
        return Response(qr_png(pay_url(resources, view.bill.payment_code)), media_type="image/png")

    @get("/bills/{bill_id:uuid}/notice.pdf", summary="Payment notice (缴款通知书) as a PDF")
    async def notice_pdf(
        self,
        bill_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        # The notice states the amount due today, as GET /v1/bills/{id} and the citizen do.
        view = await svc.get_bill(
            db, principal.agency_id, bill_id, reveal=False, day_count=resources.day_count
        )
        bill = view.bill
        agency = await db.get_one(Agency, bill.agency_id)
        codes = {line.item_code for line in view.lines}
        items = {
            i.code: i
            for i in await db.scalars(select(RevenueItem).where(RevenueItem.code.in_(codes)))
        }
        offered = await resources.pay_ways(db, bill.agency_id)
        pdf = await asyncio.to_thread(  # rendering is CPU work: keep the event loop free
            render_bill_notice,
            agency_name=agency.name,
            payer_name=payer_name_of(bill),
            items=[
                DocItem(
                    code=line.item_code,
                    name=items[line.item_code].name,
                    unit=items[line.item_code].unit,
                    quantity=line.quantity,
                    standard_fen=line.unit_amount,
                    amount_fen=line.amount,
                )
                for line in view.lines
            ],
            amount_fen=view.due_today.total,
            due_date=bill.due_date,
            payment_code=bill.payment_code,
            pay_url=pay_url(resources, bill.payment_code),
            ways=ways.labels(offered.modes),
            bill_no=bill.agency_bill_no,
            issued_on=bill.issued_at.astimezone(SHANGHAI).date(),
            remark=bill.remark or "",
        )
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="notice-{bill.payment_code}.pdf"'},
        )

    @post("/bills/{bill_id:uuid}/refunds", summary="Refund (退付) part or all of a paid bill")
    async def refund(
        self,
        request: Request[Any, Any, Any],
        bill_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
    ) -> Response[RefundOut]:
        data = decode_body(await request.body(), RefundIn)
        await svc.get_bill(db, principal.agency_id, bill_id, reveal=False)  # 404 if not ours
        receipt_id = await db.scalar(
            select(Receipt.id).where(Receipt.bill_id == bill_id, Receipt.kind == "PAYMENT")
        )
        if receipt_id is None:
            raise Conflict("This bill has no payment to refund.", code="bill_not_paid")
        refund = await request_refund(
            db,
            receipt_id=receipt_id,
            amount=data.amount,
            reason=data.reason,
            actor=principal.actor,
            refund_id=data.refund_id,
            agency_id=principal.agency_id,
            payee=data.payee.payee() if data.payee is not None else None,
        )
        await db.commit()
        return Response(_refund_out(refund), status_code=201)

    @get("/bills/{bill_id:uuid}/refunds", summary="Refunds of this bill")
    async def refunds(
        self,
        bill_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
    ) -> list[RefundOut]:
        await svc.get_bill(db, principal.agency_id, bill_id, reveal=False)
        rows = await db.scalars(
            select(Refund).where(Refund.bill_id == bill_id).order_by(Refund.created_at)
        )
        return [_refund_out(r) for r in rows]

    @get("/bills/{bill_id:uuid}/enotes", summary="Fiscal e-notes issued for this bill")
    async def enotes(
        self,
        bill_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> list[NoteSummary]:
        await svc.get_bill(db, principal.agency_id, bill_id, reveal=False)  # 404 if not ours
        return await notes_for_bill(
            db, principal.agency_id, bill_id, resources.settings.server.public_url
        )

    @get("/bills/{bill_id:uuid}/qr.svg", summary="QR code of the citizen pay URL (SVG)")
    async def qr_svg(
        self,
        bill_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        view = await svc.get_bill(db, principal.agency_id, bill_id, reveal=False)
        return Response(
            qr_svg(pay_url(resources, view.bill.payment_code)), media_type="image/svg+xml"
        )


def qr_png(data: str) -> bytes:
    from qrcode.image.pure import PyPNGImage

    buf = io.BytesIO()
    qrcode.make(data, image_factory=PyPNGImage, border=2).save(buf)
    return buf.getvalue()


def qr_svg(data: str) -> bytes:
    img = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    return bytes(img.to_string(encoding="unicode").encode())


async def _csv(resources: Resources, agency_id: uuid.UUID, f: svc.BillFilter) -> AsyncIterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(svc.CSV_COLUMNS)
    async for rows in svc.export_rows(
        resources.sessions, agency_id, f, day_count=resources.day_count
    ):
        writer.writerows(rows)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue()
