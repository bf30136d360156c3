"""Bills: issue (one or a batch, idempotent per agency bill number), read, list, cancel,
expire — and the one `transition()` every status change goes through.

Idempotency: a bill's `request_hash` is a keyed hash of a canonical form of its create
request. The same agency bill number with the same body answers with the existing bill;
with a different body it is a conflict. The unique (agency_id, agency_bill_no) constraint
is the final guard against races (ON CONFLICT DO NOTHING, then re-read).

Batch issuance is set-based: validation in Python, one upsert for the serial block, one
SELECT for existing numbers, and ONE statement that inserts bills, lines and their
issuance events from arrays (`unnest`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import msgspec
import structlog
from sqlalchemy import Select, String, cast, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import events
from billing import payer as payer_view
from billing.agencies import validate_credit_code
from billing.events import Sql
from billing.late_fee import AmountDue, DayCount
from billing.models import Agency, AgencyItem, Bill, BillLine, RevenueItem
from billing.payment_code import validate as validate_payment_code
from billing.personal import field_aad as _aad
from billing.personal import payer_name_of
from billing.serials import allocate, payment_codes
from billing.states import BILL, BillStatus
from billing.webhooks import TOPIC as WEBHOOK_TOPIC
from kernel import audit, cursors, outbox
from kernel.audit import Actor
from kernel.clock import SHANGHAI, shanghai_today
from kernel.crypto import keyring, mask_id_number
from kernel.errors import Conflict, DomainError, IllegalTransition, InvalidInput, NotFound

__all__ = [
    "CSV_COLUMNS",
    "MAX_AMOUNT",
    "MAX_BATCH",
    "MAX_LINES",
    "MAX_QUANTITY",
    "AgencyBill",
    "BillFilter",
    "BillingConfig",
    "IssueResult",
    "Line",
    "NewBill",
    "Payer",
    "cancel_bill",
    "expire_due",
    "export_rows",
    "find_by_payment_code",
    "get_bill",
    "issue_bill",
    "issue_bills",
    "list_bills",
    "payer_id_hash",
    "resident_id_check_char",
    "reveal_payer",
    "transition",
]

log = structlog.get_logger(__name__)

MAX_AMOUNT = 10**12
"""Upper bound for any amount in fen (10 billion yuan): larger is a typo or an attack."""
MAX_QUANTITY = 10_000
MAX_LINES = 100
MAX_BATCH = 10_000
MAX_VALIDITY = timedelta(days=10 * 366)
"""How far ahead a bill may expire: a decade covers every fee and instalment plan."""

_BILL_NO = re.compile(r"^[0-9A-Za-z._/-]{1,64}$")
_PERSON_ID = re.compile(r"^[0-9]{17}[0-9X]$")
_PHONE = re.compile(r"^\+?[0-9-]{5,20}$")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


@dataclass(frozen=True, slots=True)
class BillingConfig:
    serial_key: bytes


# Requests are msgspec Structs (not dataclasses): a batch builds 10⁴ of them, and Structs
# are several times cheaper to construct, and encode canonically for the request hash.
class Payer(msgspec.Struct, frozen=True, gc=False):
    type: str
    name: str
    id_number: str | None = None
    phone: str | None = None


class Line(msgspec.Struct, frozen=True, gc=False):
    item_code: str
    quantity: int
    unit_amount: int


class NewBill(msgspec.Struct, frozen=True):
    agency_bill_no: str
    payer: Payer
    lines: tuple[Line, ...]
    due_date: date
    expires_at: datetime
    remark: str | None = None


@dataclass(frozen=True, slots=True)
class IssueResult:
    agency_bill_no: str
    outcome: Literal["created", "existing", "conflict", "invalid"]
    bill_id: uuid.UUID | None = None
    payment_code: str | None = None
    error: DomainError | None = None


def resident_id_check_char(first17: str) -> str:
    """GB 11643-1999: the ISO 7064 MOD 11-2 check character of an ID number's 17 digits."""
    total = sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11]


def resident_id_valid(value: str) -> bool:
    """GB 11643-1999: 17 digits + ISO 7064 MOD 11-2 check character."""
    return bool(_PERSON_ID.match(value)) and resident_id_check_char(value[:17]) == value[17]


def request_hash(bill: NewBill) -> bytes:
    """Keyed hash of the canonical request (sorted keys, normalised types)."""
    # The same instant written in another offset is the same request.
    bill = msgspec.structs.replace(bill, expires_at=bill.expires_at.astimezone(UTC))
    canonical = msgspec.json.encode(bill, order="sorted")
    return _keyed_hash(b"bill_request", canonical)


def payer_id_hash(id_number: str) -> bytes:
    return _keyed_hash(b"payer_id", id_number.strip().upper().encode())


def _keyed_hash(purpose: bytes, value: bytes) -> bytes:
    return keyring().keyed_hash(value, purpose=purpose)


_COLUMNS = (
    "ids",
    "nos",
    "hashes",
    "codes",
    "cats",
    "rules",
    "ptypes",
    "pnames",
    "pids",
    "pidhs",
    "phones",
    "amounts",
    "dues",
    "exps",
    "remarks",
    "l_bill",
    "l_no",
    "l_item",
    "l_qty",
    "l_unit",
)


@dataclass(slots=True)
class _Prepared:
    bill: NewBill
    hash: bytes
    category: str
    late_fee_rule: str
    total: int


def _validate(
    bill: NewBill, items: dict[str, RevenueItem], today: date, now: datetime
) -> _Prepared:
    if not _BILL_NO.match(bill.agency_bill_no):
        raise InvalidInput(
            "Agency bill number: 1–64 letters, digits, '.', '_', '/' or '-'.",
            code="bill_no_invalid",
        )
    _validate_payer(bill.payer)
    if not 1 <= len(bill.lines) <= MAX_LINES:
        raise InvalidInput(f"A bill has 1–{MAX_LINES} lines.", code="lines_count_invalid")
    if bill.expires_at.tzinfo is None:
        raise InvalidInput("expires_at needs a time zone.", code="expires_at_naive")
    if bill.expires_at <= now:
        raise InvalidInput("expires_at is in the past.", code="expires_at_past")
    if bill.expires_at > now + MAX_VALIDITY:
        # Also keeps every date computed from it inside the calendar (9999-12-31 overflowed).
        raise InvalidInput(
            f"expires_at is at most {MAX_VALIDITY.days} days ahead.", code="expires_at_too_far"
        )
    if bill.due_date > bill.expires_at.astimezone(SHANGHAI).date():
        raise InvalidInput("The due date falls after the expiry.", code="due_after_expiry")
    total = 0
    categories: set[str] = set()
    rules: set[str] = set()
    for n, line in enumerate(bill.lines, start=1):
        item = items.get(line.item_code)
        if item is None:
            raise InvalidInput(
                f"Line {n}: item {line.item_code!r} is not billable by this agency.",
                code="item_not_allowed",
            )
        _validate_line(n, line, item, today)
        total += line.quantity * line.unit_amount
        categories.add(item.category)
        rules.add(item.late_fee_rule)
    if total > MAX_AMOUNT:
        raise InvalidInput("The bill total is too large.", code="amount_overflow")
    if len(categories) > 1 or len(rules) > 1:
        raise InvalidInput(
            "All lines of a bill must share one category and late-fee rule.",
            code="mixed_categories",
        )
    return _Prepared(bill, request_hash(bill), categories.pop(), rules.pop(), total)


def _validate_payer(p: Payer) -> None:
    if p.type not in ("PERSON", "ORG"):
        raise InvalidInput("Payer type is PERSON or ORG.", code="payer_type_invalid")
    if not p.name.strip() or len(p.name) > 200:
        raise InvalidInput("Payer name: 1–200 characters.", code="payer_name_invalid")
    if p.id_number is not None:
        if p.type == "PERSON" and not resident_id_valid(p.id_number.upper()):
            raise InvalidInput(
                "The payer's resident ID number is not valid.", code="payer_id_invalid"
            )
        if p.type == "ORG":
            validate_credit_code(p.id_number)
    if p.phone is not None and not _PHONE.match(p.phone):
        raise InvalidInput("Payer phone number is not valid.", code="payer_phone_invalid")


def _validate_line(n: int, line: Line, item: RevenueItem, today: date) -> None:
    if today < item.active_from or (item.active_to is not None and today > item.active_to):
        raise InvalidInput(f"Line {n}: item is not active today.", code="item_inactive")
    if not 1 <= line.quantity <= MAX_QUANTITY:
        raise InvalidInput(f"Line {n}: quantity out of range.", code="quantity_invalid")
    if not 1 <= line.unit_amount <= MAX_AMOUNT:
        raise InvalidInput(f"Line {n}: amount out of range.", code="amount_invalid")
    if item.fixed_amount is not None and line.unit_amount != item.fixed_amount:
        raise InvalidInput(
            f"Line {n}: this item costs exactly {item.fixed_amount} fen.",
            code="amount_not_standard",
        )
    if item.min_amount is not None and not (
        item.min_amount <= line.unit_amount <= (item.max_amount or MAX_AMOUNT)
    ):
        raise InvalidInput(
            f"Line {n}: amount must be within {item.min_amount}–{item.max_amount} fen.",
            code="amount_out_of_item_range",
        )


async def _billable_items(session: AsyncSession, agency_id: uuid.UUID) -> dict[str, RevenueItem]:
    rows = await session.scalars(
        select(RevenueItem)
        .join(AgencyItem, AgencyItem.item_code == RevenueItem.code)
        .where(AgencyItem.agency_id == agency_id)
    )
    return {item.code: item for item in rows}


_ISSUE_EVENTS = events.insert_sql(
    "ins",
    bill_id=Sql("id"),
    src=None,
    dst=BillStatus.ISSUED,
    actor_type=Sql(":actor_type"),
    actor_id=Sql(":actor_id"),
    reason="issued",
)
_INSERT = text(
    f"""
WITH ins AS (
  INSERT INTO bills (id, agency_id, agency_bill_no, request_hash, payment_code, category,
                     late_fee_rule, status, payer_type, payer_name_enc, payer_id_enc, payer_id_hash,
                     payer_phone_enc, principal_amount, due_date, expires_at, remark)
  SELECT b.id, CAST(:agency_id AS uuid), b.no, b.h, b.pc, b.cat, b.lfr, '{BillStatus.ISSUED}',
         b.pt, b.pn, b.pie, b.pih, b.ppe, b.amt, b.due, b.exp, b.rem
  FROM unnest(CAST(:ids AS uuid[]), CAST(:nos AS text[]), CAST(:hashes AS bytea[]),
              CAST(:codes AS text[]), CAST(:cats AS text[]), CAST(:rules AS text[]),
              CAST(:ptypes AS text[]), CAST(:pnames AS bytea[]), CAST(:pids AS bytea[]),
              CAST(:pidhs AS bytea[]), CAST(:phones AS bytea[]), CAST(:amounts AS bigint[]),
              CAST(:dues AS date[]), CAST(:exps AS timestamptz[]), CAST(:remarks AS text[]))
       AS b(id, no, h, pc, cat, lfr, pt, pn, pie, pih, ppe, amt, due, exp, rem)
  ON CONFLICT (agency_id, agency_bill_no) DO NOTHING
  RETURNING id, agency_bill_no
), lines AS (
  INSERT INTO bill_lines (bill_id, line_no, item_code, quantity, unit_amount, amount)
  SELECT l.bill_id, l.line_no, l.item_code, l.qty, l.unit, l.qty * l.unit
  FROM unnest(CAST(:l_bill AS uuid[]), CAST(:l_no AS int[]), CAST(:l_item AS text[]),
              CAST(:l_qty AS int[]), CAST(:l_unit AS bigint[]))
       AS l(bill_id, line_no, item_code, qty, unit)
  JOIN ins ON ins.id = l.bill_id
), events AS (
  {_ISSUE_EVENTS}
)
SELECT id, agency_bill_no FROM ins
"""  # noqa: S608 - machine states and constants only
)


async def _existing(
    session: AsyncSession, agency_id: uuid.UUID, numbers: list[str]
) -> dict[str, tuple[uuid.UUID, bytes, str]]:
    if not numbers:
        return {}
    rows = await session.execute(
        select(Bill.agency_bill_no, Bill.id, Bill.request_hash, Bill.payment_code).where(
            Bill.agency_id == agency_id,
            # One array parameter, not 10⁴ bind parameters.
            Bill.agency_bill_no == func.any(cast(numbers, ARRAY(String))),
        )
    )
    return {no: (bid, h, code) for no, bid, h, code in rows}


def _conflict(no: str) -> DomainError:
    return Conflict(
        f"Bill number {no!r} was already used with a different request.",
        code="bill_no_reused",
        agency_bill_no=no,
    )


async def issue_bills(
    session: AsyncSession,
    agency_id: uuid.UUID,
    bills: Sequence[NewBill],
    *,
    config: BillingConfig,
    actor: Actor,
    now: datetime | None = None,
) -> list[IssueResult]:
    """Issue many bills; one result per input, in order. The caller commits."""
    if len(bills) > MAX_BATCH:
        raise InvalidInput(f"At most {MAX_BATCH} bills per batch.", code="batch_too_large")
    now = now or datetime.now(UTC)
    today = shanghai_today(now)
    agency = await session.get(Agency, agency_id)
    if agency is None or not agency.active:
        raise NotFound("No such agency.", code="agency_not_found")
    items = await _billable_items(session, agency_id)

    results: list[IssueResult | None] = [None] * len(bills)
    first_by_no: dict[str, int] = {}
    prepared: dict[int, _Prepared] = {}
    for i, bill in enumerate(bills):
        try:
            prep = _validate(bill, items, today, now)
        except DomainError as exc:
            results[i] = IssueResult(bill.agency_bill_no, "invalid", error=exc)
            continue
        prepared[i] = prep
        first_by_no.setdefault(bill.agency_bill_no, i)

    existing = await _existing(session, agency_id, list(first_by_no))
    fresh = [i for no, i in first_by_no.items() if no not in existing]
    ids = {i: uuid.uuid4() for i in fresh}
    year = now.astimezone(SHANGHAI).year
    counters = await allocate(session, agency.region_code, year, len(fresh))
    codes = payment_codes(
        config.serial_key, agency.region_code, year, [prepared[i].category for i in fresh], counters
    )
    inserted: dict[str, tuple[uuid.UUID, str]] = {}
    if fresh:
        inserted = await _insert(
            session,
            agency_id=agency_id,
            fresh=fresh,
            prepared=prepared,
            ids=ids,
            codes=codes,
            actor=actor,
        )
        lost = [bills[i].agency_bill_no for i in fresh if bills[i].agency_bill_no not in inserted]
        existing.update(await _existing(session, agency_id, lost))  # raced with another request

    for i, prep in prepared.items():
        no = prep.bill.agency_bill_no
        if no in inserted and first_by_no[no] == i:
            results[i] = IssueResult(no, "created", *inserted[no])
            continue
        if no in inserted:  # repeated within this batch
            same = prepared[first_by_no[no]].hash == prep.hash
            bill_id, code = inserted[no]
        else:
            bill_id, stored_hash, code = existing[no]
            same = stored_hash == prep.hash
        results[i] = (
            IssueResult(no, "existing", bill_id, code)
            if same
            else IssueResult(no, "conflict", error=_conflict(no))
        )
    if inserted:
        audit.record(
            session,
            actor_type=actor.type,
            actor_id=actor.id,
            action="bill.issue",
            object_type="agency",
            object_id=str(agency_id),
            detail={"count": len(inserted)},
        )
    log.info("bills issued", agency_id=str(agency_id), created=len(inserted), total=len(bills))
    return [r for r in results if r is not None]


async def _insert(
    session: AsyncSession,
    *,
    agency_id: uuid.UUID,
    fresh: list[int],
    prepared: dict[int, _Prepared],
    ids: dict[int, uuid.UUID],
    codes: list[str],
    actor: Actor,
) -> dict[str, tuple[uuid.UUID, str]]:
    ring = keyring()
    cols: dict[str, list[Any]] = {k: [] for k in _COLUMNS}
    for i, code in zip(fresh, codes, strict=True):
        prep, bid = prepared[i], ids[i]
        bill, payer = prep.bill, prep.bill.payer
        id_number = payer.id_number.strip().upper() if payer.id_number else None
        cols["ids"].append(bid)
        cols["nos"].append(bill.agency_bill_no)
        cols["hashes"].append(prep.hash)
        cols["codes"].append(code)
        cols["cats"].append(prep.category)
        cols["rules"].append(prep.late_fee_rule)
        cols["ptypes"].append(payer.type)
        cols["pnames"].append(
            ring.encrypt(payer.name.strip().encode(), aad=_aad("payer_name", bid))
        )
        cols["pids"].append(
            ring.encrypt(id_number.encode(), aad=_aad("payer_id", bid)) if id_number else None
        )
        cols["pidhs"].append(payer_id_hash(id_number) if id_number else None)
        cols["phones"].append(
            ring.encrypt(payer.phone.encode(), aad=_aad("payer_phone", bid))
            if payer.phone
            else None
        )
        cols["amounts"].append(prep.total)
        cols["dues"].append(bill.due_date)
        cols["exps"].append(bill.expires_at)
        cols["remarks"].append(bill.remark)
        for n, line in enumerate(bill.lines, start=1):
            cols["l_bill"].append(bid)
            cols["l_no"].append(n)
            cols["l_item"].append(line.item_code)
            cols["l_qty"].append(line.quantity)
            cols["l_unit"].append(line.unit_amount)
    rows = await session.execute(
        _INSERT, {**cols, "agency_id": agency_id, "actor_type": actor.type, "actor_id": actor.id}
    )
    code_of = dict(zip(cols["ids"], cols["codes"], strict=True))
    return {no: (bid, code_of[bid]) for bid, no in rows}


async def issue_bill(
    session: AsyncSession,
    agency_id: uuid.UUID,
    bill: NewBill,
    *,
    config: BillingConfig,
    actor: Actor,
) -> tuple[uuid.UUID, bool]:
    """Issue one bill: (bill id, created?). Raises on invalid input or a reused number."""
    (result,) = await issue_bills(session, agency_id, [bill], config=config, actor=actor)
    if result.error is not None:
        raise result.error
    assert result.bill_id is not None
    return result.bill_id, result.outcome == "created"


# ------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class AgencyBill:
    """A bill as its owning agency sees it; `payer_id_number` is clear only when revealed.

    `due_today` and `payable` are the payer's (billing.payer.due_shown / refusal): the
    agency is told exactly what a payer would be asked for (or, once paid, what was paid),
    and whether it would be taken."""

    bill: Bill
    lines: list[BillLine]
    payer_id_number: str | None
    payer_phone: str | None
    due_today: AmountDue
    payable: bool


def reveal_payer(bill: Bill, *, reveal: bool) -> tuple[str | None, str | None]:
    ring = keyring()
    pid = (
        ring.decrypt(bill.payer_id_enc, aad=_aad("payer_id", bill.id)).decode()
        if bill.payer_id_enc
        else None
    )
    phone = (
        ring.decrypt(bill.payer_phone_enc, aad=_aad("payer_phone", bill.id)).decode()
        if bill.payer_phone_enc
        else None
    )
    if reveal:
        return pid, phone
    return (
        mask_id_number(pid) if pid else None,
        (phone[:3] + "****" + phone[-4:]) if phone and len(phone) >= 7 else None,
    )


async def _lines(
    session: AsyncSession, bill_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[BillLine]]:
    out: dict[uuid.UUID, list[BillLine]] = {b: [] for b in bill_ids}
    if bill_ids:
        rows = await session.scalars(
            select(BillLine)
            .where(BillLine.bill_id.in_(bill_ids))
            .order_by(BillLine.bill_id, BillLine.line_no)
        )
        for line in rows:
            out[line.bill_id].append(line)
    return out


def _view(
    bill: Bill, lines: list[BillLine], *, reveal: bool, now: datetime, day_count: DayCount | None
) -> AgencyBill:
    pid, phone = reveal_payer(bill, reveal=reveal)
    return AgencyBill(
        bill,
        lines,
        pid,
        phone,
        payer_view.due_shown(bill, shanghai_today(now), day_count),
        payer_view.refusal(bill, now) is None,
    )


async def get_bill(
    session: AsyncSession,
    agency_id: uuid.UUID,
    bill_id: uuid.UUID,
    *,
    reveal: bool = True,
    day_count: DayCount | None = None,
) -> AgencyBill:
    """The agency's own bill; another agency's bill is simply not found (404, never 403)."""
    bill = await session.scalar(select(Bill).where(Bill.id == bill_id, Bill.agency_id == agency_id))
    if bill is None:
        raise NotFound("No such bill.", code="bill_not_found")
    lines = (await _lines(session, [bill.id]))[bill.id]
    return _view(bill, lines, reveal=reveal, now=datetime.now(UTC), day_count=day_count)


async def find_by_payment_code(session: AsyncSession, code: str) -> Bill:
    """The bill a payer's code names (for channels and the citizen page, not agencies).

    The check digit is verified first, so a mistyped code never reaches the database
    (InvalidInput `payment_code_check_failed`); an unknown valid code is NotFound.
    """
    validate_payment_code(code)
    bill = await session.scalar(select(Bill).where(Bill.payment_code == code))
    if bill is None:
        raise NotFound("No bill has this payment code.", code="payment_code_unknown")
    return bill


@dataclass(frozen=True, slots=True)
class BillFilter:
    agency_bill_no: str | None = None
    status: str | None = None
    issued_from: datetime | None = None
    issued_to: datetime | None = None
    payer_id: str | None = None
    payment_code: str | None = None


def encode_cursor(bill: Bill) -> str:
    return cursors.encode(bill.issued_at, bill.id)


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        return cursors.decode(cursor)
    except ValueError as exc:
        raise InvalidInput("The cursor is not valid.", code="cursor_invalid") from exc


def _filtered(agency_id: uuid.UUID, f: BillFilter) -> Select[Bill]:
    stmt = select(Bill).where(Bill.agency_id == agency_id)
    if f.agency_bill_no is not None:
        stmt = stmt.where(Bill.agency_bill_no == f.agency_bill_no)
    if f.status is not None:
        if f.status not in BillStatus.__members__:
            raise InvalidInput("Unknown status.", code="status_unknown")
        stmt = stmt.where(Bill.status == f.status)
    if f.issued_from is not None:
        stmt = stmt.where(Bill.issued_at >= f.issued_from)
    if f.issued_to is not None:
        stmt = stmt.where(Bill.issued_at < f.issued_to)
    if f.payer_id is not None:
        stmt = stmt.where(Bill.payer_id_hash == payer_id_hash(f.payer_id))
    if f.payment_code is not None:
        # A mistyped code is refused by its check digit before the database is asked.
        stmt = stmt.where(Bill.payment_code == validate_payment_code(f.payment_code))
    return stmt


async def list_bills(
    session: AsyncSession,
    agency_id: uuid.UUID,
    f: BillFilter,
    *,
    cursor: str | None = None,
    limit: int = 50,
    reveal: bool = True,
    with_lines: bool = True,
    day_count: DayCount | None = None,
) -> tuple[list[AgencyBill], str | None]:
    """Newest first, keyset-paginated on (issued_at, id); returns (page, next cursor)."""
    stmt = _filtered(agency_id, f)
    if cursor:
        ts, bid = _decode_cursor(cursor)
        stmt = stmt.where(tuple_(Bill.issued_at, Bill.id) < tuple_(ts, bid))
    stmt = stmt.order_by(Bill.issued_at.desc(), Bill.id.desc()).limit(limit + 1)
    bills = list(await session.scalars(stmt))
    more = len(bills) > limit
    bills = bills[:limit]
    lines = await _lines(session, [b.id for b in bills]) if with_lines else {}
    now = datetime.now(UTC)
    views = [
        _view(b, lines.get(b.id, []), reveal=reveal, now=now, day_count=day_count) for b in bills
    ]
    return views, (encode_cursor(bills[-1]) if more and bills else None)


CSV_COLUMNS = (
    "id",
    "agency_bill_no",
    "payment_code",
    "status",
    "category",
    "payer_type",
    "payer_name",
    "payer_id_number",
    "principal_amount",
    "amount_due_today",
    "due_date",
    "expires_at",
    "issued_at",
    "paid_at",
)


async def export_rows(
    sessions: async_sessionmaker[AsyncSession],
    agency_id: uuid.UUID,
    f: BillFilter,
    *,
    page: int = 1000,
    day_count: DayCount | None = None,
) -> AsyncIterator[list[list[str]]]:
    """Pages of CSV rows (ID numbers masked), each page read in its own short session."""
    cursor: str | None = None
    while True:
        async with sessions() as session:
            views, cursor = await list_bills(
                session,
                agency_id,
                f,
                cursor=cursor,
                limit=page,
                reveal=False,
                with_lines=False,
                day_count=day_count,
            )
        yield [
            [
                str(v.bill.id),
                v.bill.agency_bill_no,
                v.bill.payment_code,
                v.bill.status,
                v.bill.category,
                v.bill.payer_type,
                payer_name_of(v.bill),
                v.payer_id_number or "",
                str(v.bill.principal_amount),
                str(v.due_today.total),
                v.bill.due_date.isoformat(),
                v.bill.expires_at.isoformat(),
                v.bill.issued_at.isoformat(),
                v.bill.paid_at.isoformat() if v.bill.paid_at else "",
            ]
            for v in views
        ]
        if cursor is None:
            return


# ------------------------------------------------------------------ transitions


async def transition(
    session: AsyncSession,
    bill_id: uuid.UUID,
    *,
    expected: str,
    target: str,
    actor: Actor,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> None:
    """Move one bill from `expected` to `target` (checked against BILL) in the caller's txn.

    The UPDATE is guarded by `status = expected`; if another transaction moved the bill
    first, nothing changes and IllegalTransition is raised. `values` sets further columns
    (e.g. paid_amount, paid_at) in the same statement. Writes a BillEvent and an audit row.
    """
    BILL.check(expected, target)
    stmt = (
        Bill.__table__.update()  # type: ignore[attr-defined]
        .where(Bill.id == bill_id, Bill.status == expected)
        .values(status=target, updated_at=text("now()"), **(values or {}))
        .returning(Bill.id)
    )
    if (await session.execute(stmt)).first() is None:
        current = await session.scalar(select(Bill.status).where(Bill.id == bill_id))
        if current is None:
            raise NotFound("No such bill.", code="bill_not_found")
        raise IllegalTransition(
            f"bill cannot go from {current} to {target}",
            machine="bill",
            current=current,
            target=target,
        )
    events.record(
        session,
        bill_id=bill_id,
        src=expected,
        dst=target,
        actor_type=actor.type,
        actor_id=actor.id,
        reason=reason,
        detail=detail,
    )
    audit.record(
        session,
        actor_type=actor.type,
        actor_id=actor.id,
        action=f"bill.{target.lower()}",
        object_type="bill",
        object_id=str(bill_id),
        detail={"from": expected, "reason": reason} if reason else {"from": expected},
    )
    await session.flush()


async def cancel_bill(
    session: AsyncSession,
    agency_id: uuid.UUID,
    bill_id: uuid.UUID,
    *,
    actor: Actor,
    reason: str | None = None,
) -> None:
    """Cancel an unpaid bill of this agency and queue its `bill.cancelled` webhook."""
    bill = await session.scalar(
        select(Bill).where(Bill.id == bill_id, Bill.agency_id == agency_id).with_for_update()
    )
    if bill is None:
        raise NotFound("No such bill.", code="bill_not_found")
    await transition(
        session,
        bill.id,
        expected=bill.status,
        target=BillStatus.CANCELLED,
        actor=actor,
        reason=reason,
    )
    await outbox.enqueue(
        session,
        WEBHOOK_TOPIC,
        f"bill.cancelled:{bill.id}",
        {
            "event": "bill.cancelled",
            "agency_id": str(agency_id),
            "bill_id": str(bill.id),
            "data": {
                "agency_bill_no": bill.agency_bill_no,
                "payment_code": bill.payment_code,
                "reason": reason,
            },
        },
    )


(_UNEXPIRED,) = BILL.sources(BillStatus.EXPIRED)  # one source: the events name it
_EXPIRY_EVENTS = events.insert_sql(
    "expired",
    bill_id=Sql("id"),
    src=BillStatus(_UNEXPIRED),
    dst=BillStatus.EXPIRED,
    actor_type="system",
    actor_id="expiry",
    reason="expires_at passed",
)
_EXPIRE = text(
    f"""
WITH due AS (
  SELECT id FROM bills
  WHERE status = '{_UNEXPIRED}' AND expires_at <= now()
  ORDER BY expires_at
  LIMIT :limit
  FOR UPDATE SKIP LOCKED
), expired AS (
  UPDATE bills b SET status = '{BillStatus.EXPIRED}', updated_at = now()
  FROM due WHERE b.id = due.id AND b.status = '{_UNEXPIRED}'
  RETURNING b.id, b.agency_id, b.agency_bill_no, b.payment_code, b.expires_at
), events AS (
  {_EXPIRY_EVENTS}
), hooks AS (
  INSERT INTO outbox (topic, key, payload)
  SELECT :topic, 'bill.expired:' || id,
         jsonb_build_object(
           'event', 'bill.expired', 'agency_id', agency_id::text, 'bill_id', id::text,
           'data', jsonb_build_object('agency_bill_no', agency_bill_no,
                                      'payment_code', payment_code,
                                      'expires_at', expires_at))
  FROM expired
  ON CONFLICT (key) DO NOTHING
)
SELECT coalesce(array_agg(payment_code), '{{}}') FROM expired
"""  # noqa: S608 - machine states and constants only
)


async def expire_due(session: AsyncSession, *, limit: int = 5000) -> list[str]:
    """Expire ISSUED bills past their expiry, set-based, with events and webhooks.

    Returns the expired bills' payment codes so the caller can drop cached summaries
    after it commits."""
    params = {"limit": limit, "topic": WEBHOOK_TOPIC}
    codes = list((await session.execute(_EXPIRE, params)).scalar_one())
    if codes:
        log.info("bills expired", count=len(codes))
    return codes
