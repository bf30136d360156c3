"""Property: over any generated day, reconciliation never books the same money twice.

A day mixes Alipay and bank payments; bank payments come with or without a prior query
(without one the bank's file carries its own order id, and we know the payment only by
its bank serial); some confirmations were lost (the statement must heal them — a lost
bank payment without a query by the payment code the bank lists), some bills
were paid twice (a duplicate receipt), some lines are missing from the first file and
arrive in a second, late one, and some money is nobody's we know. After each run:

- no money is both receipted and parked in suspense;
- every payment line of the current file is accounted for exactly once: a receipt, or
  suspense, or an open difference for a person;
- the ledger verifies.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

import ledger
from channels.base import StatementKind, StatementLine
from gateway import migrate
from gateway.state import Resources
from ledger.models import JournalEntry
from payments.models import Receipt
from settlement.models import Discrepancy
from settlement.reconcile import channel_confirm, exactly_once_confirm, reconcile
from tests.factories import make_agency, make_bill, make_item
from tests.payments_support import valid_code
from tests.settle_helpers import DAY, at, make_attempt, record_receipt

CHANNELS = ("alipay", "bank:102")


@dataclass(frozen=True)
class Pay:
    channel: str
    amount: int
    prior_query: bool
    """Bank only: without a query the file carries the bank's order id, not ours."""
    confirmed: bool
    """False: the confirmation never reached us (the attempt exists only after a query)."""
    duplicate: bool
    """The bill was paid again through the same channel: a second line, a DUPLICATE."""
    late: bool
    """Missing from the first file, present in the late second one."""


pays = st.builds(
    Pay,
    channel=st.sampled_from(CHANNELS),
    amount=st.integers(1, 500_000),
    prior_query=st.booleans(),
    confirmed=st.booleans(),
    duplicate=st.booleans(),
    late=st.booleans(),
)
days = st.tuples(st.lists(pays, min_size=1, max_size=8), st.integers(0, 2))


async def _empty(res: Resources) -> None:
    tables = ", ".join(f'"{t.name}"' for t in migrate.target_metadata().sorted_tables)
    async with res.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await res.redis.flushdb()


@dataclass(frozen=True)
class Line:
    channel: str
    late: bool
    line: StatementLine
    stranger: bool = False


async def _build(res: Resources, day: list[Pay], strangers: int) -> list[Line]:
    lines: list[Line] = []
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        for n, p in enumerate(day):
            bank = p.channel.startswith("bank:")
            bill = await make_bill(s, agency, [(item, 1, p.amount)], payment_code=valid_code())
            paid = False
            for k in range(2 if p.duplicate else 1):
                serial = ("102" if bank else "2026") + secrets.token_hex(8).upper()
                queried = p.prior_query or not bank
                paid_at = at(hh=9 + n % 8, mm=k)
                # The original payment may have lost its confirmation; a duplicate is known.
                lost = k == 0 and not p.confirmed
                if lost and not queried:
                    # No query, no confirmation: nothing of it exists on our side.
                    attempt_id = None
                else:
                    attempt = await make_attempt(
                        s, bill, p.amount, channel=p.channel, trade_no=serial if bank else None
                    )
                    attempt_id = attempt.id
                    if not lost:
                        await record_receipt(
                            s,
                            bill,
                            attempt,
                            amount=p.amount,
                            paid_at=paid_at,
                            trade_no=serial,
                            kind="DUPLICATE" if paid else "PAYMENT",
                        )
                        paid = True
                order = str(attempt_id) if queried and attempt_id else f"bank-{serial}"
                line = StatementLine(
                    channel_trade_no=serial,
                    attempt_id=order,
                    kind=StatementKind.PAYMENT,
                    amount=p.amount,
                    fee=0,
                    occurred_at=paid_at,
                    # A bank lists the payment code: what heals a lost unqueried payment.
                    payment_code=bill.payment_code if bank else None,
                )
                lines.append(Line(p.channel, p.late, line))
        for n in range(strangers):
            ch = CHANNELS[n % 2]
            serial = secrets.token_hex(10).upper()
            stranger = StatementLine(
                channel_trade_no=serial,
                attempt_id=f"bank-{serial}" if ch != "alipay" else uuid.uuid4().hex,
                kind=StatementKind.PAYMENT,
                amount=777 + n,
                fee=0,
                occurred_at=at(hh=18),
            )
            lines.append(Line(ch, False, stranger, stranger=True))
        await s.commit()
    return lines


async def _check(
    res: Resources, current: dict[str, list[StatementLine]], strangers: set[str]
) -> None:
    async with res.sessions() as s:
        receipts = {
            (r.channel, r.channel_trade_no): r for r in (await s.scalars(select(Receipt))).all()
        }
        parked = list(
            await s.scalars(select(JournalEntry.ref).where(JournalEntry.kind == "suspense"))
        )
        open_ = {
            (d.channel, d.channel_trade_no)
            for d in (await s.scalars(select(Discrepancy))).all()
            if d.status in ("HELD", "OPEN") and d.action is None
        }
        report = await ledger.verify(s)
    assert report.ok, report
    parked_keys = {tuple(ref.rsplit(":", 1)) for ref in parked}
    assert len(parked_keys) == len(parked), "a trade parked twice"
    both = parked_keys & set(receipts)
    assert not both, f"receipted and parked in suspense: {both}"
    for channel, lines in current.items():
        for line in lines:
            key = (channel, line.channel_trade_no)
            where = [key in receipts, key in parked_keys, key in open_]
            assert sum(where) == 1, (key, where)
            # Ours, lost or not, queried or not: healed into a receipt, never parked.
            assert key in receipts or line.channel_trade_no in strangers, key
            if key in receipts:
                assert receipts[key].amount == line.amount


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(day=days)
async def test_no_money_is_ever_both_receipted_and_parked(
    resources: Resources, day: tuple[list[Pay], int]
) -> None:
    pays_, strangers = day
    await _empty(resources)
    lines = await _build(resources, pays_, strangers)
    confirm = exactly_once_confirm(resources.payment_context())
    by_code = channel_confirm(resources.payment_context())
    for late_file in (False, True):
        current: dict[str, list[StatementLine]] = {}
        for channel in CHANNELS:
            current[channel] = [
                ln.line for ln in lines if ln.channel == channel and (late_file or not ln.late)
            ]
            await reconcile(
                resources.sessions,
                channel=channel,
                day=DAY,
                lines=current[channel],
                confirm=confirm,
                confirm_by_code=by_code,
                today=DAY + timedelta(days=1),
            )
        strangers_ = {ln.line.channel_trade_no for ln in lines if ln.stranger}
        await _check(resources, current, strangers_)
