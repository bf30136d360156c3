"""The payer's view of a bill: the ONE payable rule (`refusal`), the ONE amount due on a
day (`due_on`), and the view's Redis cache.

Every reader asks these two functions — the citizen API and cashier page, payment attempts,
inbound channels (banks), confirmation, and the agency API (`billing.bills`) — with whatever
it holds of the bill: this cached view, an ORM `Bill`, a locked row. So a bill can never be
payable to one of them and not to another, nor owe two amounts.

The cached view holds principal, due date and the late-fee rule the bill was issued under —
never the amount due — so the late fee is always computed at read time for today
(Asia/Shanghai). Every bill state change must call `invalidate(redis, payment_code)` after
its commit.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Protocol

import msgspec
import structlog
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.late_fee import AmountDue, DayCount, amount_due
from billing.models import Agency, Bill, BillLine, RevenueItem
from billing.personal import payer_name_of
from billing.states import BillStatus
from kernel.clock import shanghai_today
from kernel.kv import KV

__all__ = [
    "FIXED_DEADLINE_CATEGORIES",
    "BillView",
    "DueFacts",
    "LineView",
    "PayableFacts",
    "ShownFacts",
    "cache_key",
    "cached_view",
    "decode_cached",
    "due_on",
    "due_shown",
    "invalidate",
    "load_and_cache",
    "load_view",
    "mask_name",
    "refusal",
]

log = structlog.get_logger(__name__)

FIXED_DEADLINE_CATEGORIES = frozenset({"EXAM_FEE", "TUITION"})
"""Past the expiry these can no longer be paid at all (registration forfeited, term over)."""


class LineView(msgspec.Struct, frozen=True):
    item_code: str
    name: str
    quantity: int
    unit_amount: int
    amount: int


class BillView(msgspec.Struct, frozen=True):
    bill_id: uuid.UUID
    agency_id: uuid.UUID
    agency_name: str
    payment_code: str
    category: str
    status: str
    payer_name: str
    """Masked (mask_name): the cache and the payer's pages never hold the name in full."""
    principal_amount: int
    due_date: date
    expires_at: datetime
    late_fee_rule: str
    """The rule the bill was issued under (every line shares it), not today's catalogue."""
    lines: tuple[LineView, ...]
    paid_amount: int = 0
    paid_at: datetime | None = None


class DueFacts(Protocol):
    """What the amount due needs (a view, an ORM bill, a locked row...)."""

    @property
    def principal_amount(self) -> int: ...
    @property
    def due_date(self) -> date: ...
    @property
    def late_fee_rule(self) -> str: ...


def due_on(bill: DueFacts, day: date, day_count: DayCount | None = None) -> AmountDue:
    """The amount due on `day` (Asia/Shanghai): the principal plus the late fee of the rule
    the bill was issued under. The one computation every reader uses."""
    return amount_due(
        bill.principal_amount, bill.due_date, day, rule=bill.late_fee_rule, day_count=day_count
    )


WAS_PAID = frozenset(
    {BillStatus.PAID, BillStatus.PARTIALLY_REFUNDED, BillStatus.SETTLED, BillStatus.REFUNDED}
)
"""States of a bill that was paid: what it shows is what was paid."""


class ShownFacts(DueFacts, Protocol):
    """What the amount a reader is shown needs: DueFacts, and how the bill was paid."""

    @property
    def status(self) -> str: ...
    @property
    def paid_amount(self) -> int: ...
    @property
    def paid_at(self) -> datetime | None: ...


def due_shown(bill: ShownFacts, day: date, day_count: DayCount | None = None) -> AmountDue:
    """The amount a reader (payer, agency, notice, export) is shown on `day`.

    A bill that was paid shows what was paid — the late fee it carried on the day of
    payment — never a fee recomputed for today (an overdue fine paid on day 5 must not show
    day 30's surcharge). Any other bill shows `due_on(day)`.
    """
    if bill.status in WAS_PAID and bill.paid_at is not None:
        on_payment = due_on(bill, shanghai_today(bill.paid_at), day_count)
        return AmountDue(
            bill.principal_amount, on_payment.overdue_days, bill.paid_amount - bill.principal_amount
        )
    return due_on(bill, day, day_count)


class PayableFacts(Protocol):
    """What deciding whether a bill can take a payment needs (a view, a locked row...)."""

    @property
    def status(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def expires_at(self) -> datetime: ...


def refusal(view: PayableFacts, now: datetime) -> tuple[str, str] | None:
    """(code, message) when a payment made at `now` cannot pay this bill, else None (the
    bill is payable): a new attempt is refused, and money that arrives anyway is a
    duplicate, refunded.

    The bill's status decides, except that an exam fee or tuition is also closed by its
    expiry itself. Any other bill (a fine) stays payable until the expiry job has marked it
    EXPIRED: its money is taken, to every reader alike, until that commit."""
    if view.status == BillStatus.CANCELLED:
        return "bill_cancelled", "This bill was cancelled."
    if view.status == BillStatus.EXPIRED:
        return "bill_expired", "This bill has expired."
    if view.status != BillStatus.ISSUED:
        return "bill_not_payable", f"This bill is {view.status.lower()}."
    if view.category in FIXED_DEADLINE_CATEGORIES and now > view.expires_at:
        return "bill_past_deadline", "The payment deadline of this bill has passed."
    return None


async def load_view(
    session: AsyncSession, *, payment_code: str | None = None, bill_id: uuid.UUID | None = None
) -> BillView | None:
    stmt = select(Bill, Agency.name).join(Agency, Agency.id == Bill.agency_id)
    if payment_code is not None:
        stmt = stmt.where(Bill.payment_code == payment_code)
    else:
        stmt = stmt.where(Bill.id == bill_id)
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    bill, agency_name = row
    lines = (
        await session.execute(
            select(BillLine, RevenueItem.name)
            .join(RevenueItem, RevenueItem.code == BillLine.item_code)
            .where(BillLine.bill_id == bill.id)
            .order_by(BillLine.line_no)
        )
    ).all()
    return BillView(
        bill_id=bill.id,
        agency_id=bill.agency_id,
        agency_name=agency_name,
        payment_code=bill.payment_code,
        category=bill.category,
        status=bill.status,
        payer_name=mask_name(payer_name_of(bill)),
        principal_amount=bill.principal_amount,
        due_date=bill.due_date,
        expires_at=bill.expires_at,
        late_fee_rule=bill.late_fee_rule,
        paid_amount=bill.paid_amount,
        paid_at=bill.paid_at,
        lines=tuple(
            LineView(
                item_code=line.item_code,
                name=name,
                quantity=line.quantity,
                unit_amount=line.unit_amount,
                amount=line.amount,
            )
            for line, name in lines
        ),
    )


# ------------------------------------------------------------------ cache

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(BillView)


def cache_key(payment_code: str) -> str:
    # Versioned with BillView's fields: a view cached by an older release is never decoded.
    return f"pay:bill:2:{payment_code}"


def decode_cached(raw: bytes) -> BillView:
    return _DECODER.decode(raw)


async def load_and_cache(
    redis: KV, session: AsyncSession, payment_code: str, ttl_s: int
) -> BillView | None:
    """From PostgreSQL, then into the cache (Redis down: just the database)."""
    view = await load_view(session, payment_code=payment_code)
    if view is not None:
        try:
            await redis.set(cache_key(payment_code), _ENCODER.encode(view), ex=ttl_s)
        except RedisError:
            log.warning("summary cache unavailable")
    return view


async def cached_view(
    redis: KV, session: AsyncSession, payment_code: str, ttl_s: int
) -> BillView | None:
    """The view from Redis, else from PostgreSQL (then cached). Redis down → DB only."""
    key = cache_key(payment_code)
    try:
        raw = await redis.get(key)
    except RedisError:
        log.warning("summary cache unavailable")
        raw = None
    if raw is not None:
        return _DECODER.decode(raw)
    return await load_and_cache(redis, session, payment_code, ttl_s)


async def invalidate(redis: KV, payment_code: str) -> None:
    """Drop the cached view; call after every commit that changes a bill's state."""
    try:
        await redis.delete(cache_key(payment_code))
    except RedisError:
        # The TTL bounds the staleness; the status shown is advisory, payment is guarded
        # by the database.
        log.warning("summary cache invalidation failed", payment_code=payment_code)


def mask_name(name: str) -> str:
    """张三 → 张*, 欧阳娜娜 → 欧***: the payer recognises it, a stranger learns little."""
    name = name.strip()
    if len(name) <= 1:
        return "*"
    return name[0] + "*" * (len(name) - 1)
