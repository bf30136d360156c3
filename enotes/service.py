"""Issuing, red-lettering and verifying fiscal e-notes (财政电子票据).

A note is issued by the worker from the outbox (topic `enote.issue`), never in a payment's
request path. One issuing transaction: lock the note code's counter row, skip receipts that
already have a note, take the next numbers, build the data elements, serialise them
canonically, sign (issuer, then the finance department's supervisory countersignature),
insert, enqueue the agency webhook, mark the outbox messages done. A crash anywhere before
the commit rolls all of it back, numbers included; the unique indexes are the last guard.

A payment the channel takes back (payments.reversal) is noted by kind REVERSED on its
receipt: an issuer that reads it so issues nothing; one that read it before (and commits
after) leaves a note that the `enote.red` request queued with the take-back red-letters.

Content is canonical JSON: UTF-8, keys sorted, no insignificant whitespace, integers only
(amounts in fen) — the same bytes on every platform, so a signature can be re-checked by
anyone holding the stored bytes and the public keys.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Table, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.bills import reveal_payer
from billing.models import Agency, Bill
from billing.payment_code import validate as validate_payment_code
from billing.personal import payer_name_matches, payer_name_of
from billing.webhooks import TOPIC as WEBHOOK_TOPIC
from channels.base import PayMode
from enotes.document import NoteView
from enotes.models import ENote, content_aad
from enotes.signing import ALGORITHM, DEFAULT_SIGNER_ID, NoteSigners, Verifier, signed_by_supervisor
from enotes.signing_lines import Signed, SigningLine, line_for
from enotes.states import ENOTE, ENoteStatus
from kernel import outbox
from kernel.capitals import rmb_capitals
from kernel.clock import SHANGHAI
from kernel.crypto import DecryptError, encrypt
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.outbox import Topic
from kernel.pdf import DocItem
from payments.models import PaymentAttempt, Receipt, Refund
from payments.refunds import TOPIC_RED_LETTER as RED_TOPIC

__all__ = [
    "ISSUE_BATCH",
    "ISSUE_LANES",
    "EnoteConfig",
    "EnoteContext",
    "IssuedNote",
    "NotReady",
    "NoteSummary",
    "SignatureCheck",
    "Verification",
    "canonical_json",
    "issue_for_receipts",
    "issue_pending",
    "note_view",
    "notes_for_bill",
    "notes_for_payer",
    "red_letter_for_refund",
    "red_letter_for_reversal",
    "run_issue_job",
    "run_red_job",
    "valid_query",
    "verify",
    "verify_note",
    "verify_url",
]

log = structlog.get_logger(__name__)

SPEC_VERSION = "1.0"
ISSUE_TOPIC = Topic.ENOTE_ISSUE
MAX_NUMBER = 9_999_999_999

KIND_BY_CATEGORY = {"FINE": "03", "EXAM_FEE": "01", "TUITION": "01", "OTHER": "01"}
"""Note kind inside the code: 01 general non-tax receipt, 03 non-tax general payment book."""
NOTE_NAMES = {
    "01": "非税收入统一票据（电子）",
    "02": "非税收入专用票据（电子）",
    "03": "非税收入一般缴款书（电子）",
}
PAY_MODES: dict[str, str] = {
    PayMode.ALIPAY: "支付宝",
    PayMode.MOBILE_BANK: "手机银行",
    PayMode.ONLINE_BANK: "网上银行",
    PayMode.COUNTER: "银行柜面",
    PayMode.ECNY: "数字人民币",
    PayMode.BANK: "银行",
    PayMode.KIOSK: "自助终端",
    PayMode.POS: "POS刷卡",
    PayMode.OTHER: "其他",
}
"""The e-note's 交款方式 for each receipt's pay mode."""
LATE_FEE_ITEM = ("LATE-FEE", "加处罚款", "元")


@dataclass(frozen=True, slots=True)
class EnoteConfig:
    note_class: str = "01"
    handler: str = "paygate"
    checker: str = "财政电子票据系统"
    public_url: str = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class EnoteContext:
    signers: NoteSigners
    config: EnoteConfig = field(default_factory=EnoteConfig)
    line: SigningLine | None = field(default=None, compare=False)
    """Where signatures are computed; by default chosen for the signers on first use."""

    def signing_line(self) -> SigningLine:
        if self.line is None:  # frozen: set once, lazily (processes start only when used)
            object.__setattr__(self, "line", line_for(self.signers))
        assert self.line is not None
        return self.line

    def close(self) -> None:
        """Stop the signing processes or threads (a later batch starts them again)."""
        if self.line is not None:
            self.line.close()


@dataclass(frozen=True, slots=True)
class IssuedNote:
    id: uuid.UUID
    kind: str
    note_code: str
    note_number: str
    check_code: str
    receipt_id: uuid.UUID
    refund_id: uuid.UUID | None
    total_amount: int


class NotReady(Exception):
    """The note a refund red-letters is not issued yet: retry later."""


# ---------------------------------------------------------------- pure helpers


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8. Content is built from str and int only (amounts are
    integer fen from BIGINT columns), which JSON writes one way on every platform."""

    def refuse(obj: Any) -> Any:
        raise TypeError(f"not canonical: {type(obj).__name__}")

    return json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=refuse
    ).encode()


def note_code(region_code: str, note_class: str, kind: str, when: datetime) -> str:
    """Supervising region (2) + class (2) + kind (2) + year (2), year in Asia/Shanghai."""
    year = when.astimezone(SHANGHAI).year % 100
    code = f"{region_code[:2]}{note_class}{kind}{year:02d}"
    if len(code) != 8 or not code.isdigit():
        raise InvalidInput("note code parts must be digits", code="enote_bad_code")
    return code


def check_code() -> str:
    return f"{secrets.randbelow(10**6):06d}"


def _quantity_for(amount: int, standard: int) -> tuple[int, int]:
    """(quantity, standard) that multiply to `amount`, keeping the standard when it divides."""
    if standard > 0 and amount % standard == 0:
        return amount // standard, standard
    return 1, amount


def reduce_items(items: Sequence[dict[str, Any]], by: int) -> list[dict[str, Any]]:
    """The items left after refunding `by` fen, taken from the last line backwards."""
    left = by
    out: list[dict[str, Any]] = []
    for item in reversed(items):
        amount = int(item["amount"])
        take = min(amount, left)
        left -= take
        if amount - take > 0:
            quantity, standard = _quantity_for(amount - take, int(item["standard"]))
            out.append(
                {**item, "amount": amount - take, "quantity": quantity, "standard": standard}
            )
    if left:
        raise InvalidInput("refund exceeds the note's total", code="enote_refund_exceeds_note")
    out.reverse()
    for n, item in enumerate(out, start=1):
        item["line"] = n
    return out


@dataclass(slots=True)
class _Draft:
    kind: str
    agency_id: uuid.UUID
    bill_id: uuid.UUID
    receipt_id: uuid.UUID
    refund_id: uuid.UUID | None
    original_id: uuid.UUID | None
    code: str
    main: dict[str, Any]
    items: list[dict[str, Any]]
    total: int
    issued_at: datetime


def _content(draft: _Draft, number: str, check: str, note_id: uuid.UUID) -> bytes:
    local = draft.issued_at.astimezone(SHANGHAI)
    main = {
        **draft.main,
        "code": draft.code,
        "number": number,
        "check_code": check,
        "total": draft.total,
        "total_capitals": rmb_capitals(draft.total),
        "issue_date": local.strftime("%Y%m%d"),
        "issue_time": local.strftime("%H%M%S"),
        "issued_at": local.isoformat(timespec="seconds"),
    }
    return canonical_json(
        {
            "header": {
                "tag": "EInvoice",
                "version": SPEC_VERSION,
                "id": str(note_id),
                "kind": draft.kind,
                "algorithm": ALGORITHM,
                "signer_id": DEFAULT_SIGNER_ID,
            },
            "main": main,
            "details": draft.items,
        }
    )


def _urls(public_url: str, code: str, number: str, check: str) -> dict[str, str]:
    query = f"code={code}&number={number}&check={check}"
    return {
        "verify_url": f"{public_url}/enotes/verify?{query}",
        "pdf_url": f"{public_url}/v1/enotes/{code}/{number}.pdf?check={check}",
        "png_url": f"{public_url}/v1/enotes/{code}/{number}.png?check={check}",
    }


def verify_url(public_url: str, code: str, number: str, check: str) -> str:
    return _urls(public_url, code, number, check)["verify_url"]


# ---------------------------------------------------------------- numbering


async def _take_numbers(session: AsyncSession, code: str, count: int) -> list[str]:
    """`count` consecutive numbers of a note code; the row lock is held until commit."""
    row = await session.execute(
        text(
            "INSERT INTO enote_counters (note_code, last_number) VALUES (:code, :n)"
            " ON CONFLICT (note_code) DO UPDATE"
            " SET last_number = enote_counters.last_number + EXCLUDED.last_number"
            " RETURNING last_number"
        ),
        {"code": code, "n": count},
    )
    last = int(row.scalar_one())
    if last > MAX_NUMBER:
        raise Conflict(f"note code {code} has run out of numbers", code="enote_numbers_exhausted")
    return [f"{n:010d}" for n in range(last - count + 1, last + 1)]


async def _lock_codes(session: AsyncSession, codes: Iterable[str]) -> None:
    """Lock the counters first (sorted, so two batches never deadlock), creating them."""
    for code in sorted(set(codes)):
        await session.execute(
            text(
                "INSERT INTO enote_counters (note_code, last_number) VALUES (:code, 0)"
                " ON CONFLICT (note_code) DO UPDATE SET last_number = enote_counters.last_number"
            ),
            {"code": code},
        )


# ---------------------------------------------------------------- issuing


_BILL_LINES = text(
    "SELECT l.bill_id, l.line_no, i.code, i.name, i.unit, l.quantity, l.unit_amount, l.amount"
    " FROM bill_lines l JOIN revenue_items i ON i.code = l.item_code"
    " WHERE l.bill_id = ANY(CAST(:bills AS uuid[])) ORDER BY l.bill_id, l.line_no"
)
_ITEM_KEYS = ("line", "code", "name", "unit", "quantity", "standard", "amount")
_ENOTES = cast(Table, ENote.__table__)
"""Core inserts: the ORM's bulk path costs more Python per row than the row itself."""
SIGN_TIMEOUT_S = 30.0
"""A chunk of SIGN_CHUNK notes signs in about 15 ms; one that takes this long never will."""
SIGN_CHUNK = 25
"""Notes signed per hand-off and written per INSERT: small enough that signing overlaps the
writes, large enough that a hand-off (~0.1 ms) and a statement's fixed cost are noise."""


def seal_content(note_id: uuid.UUID, content: bytes) -> bytes:
    """The signed content as stored: encrypted at rest (it names the payer), bound to its
    note (ENote.content reads it)."""
    return encrypt(content, aad=content_aad(note_id))


def _note_row(
    numbered: tuple[_Draft, str, str, uuid.UUID, str, bytes], sig: Signed, ctx: EnoteContext
) -> dict[str, Any]:
    draft, code, number, note_id, check, content = numbered
    issuer_sig, issuer_at, supervisor_sig, supervisor_at = sig
    issuer, supervisor = ctx.signers.issuer, ctx.signers.supervisor
    return {
        "id": note_id,
        "kind": draft.kind,
        "status": ENoteStatus.VALID.value,
        "note_code": code,
        "note_number": number,
        "check_code": check,
        "agency_id": draft.agency_id,
        "bill_id": draft.bill_id,
        "receipt_id": draft.receipt_id,
        "refund_id": draft.refund_id,
        "original_id": draft.original_id,
        "total_amount": draft.total,
        "issued_at": draft.issued_at,
        "content_enc": seal_content(note_id, content),
        "signature_algorithm": ALGORITHM,
        "issuer_signature": issuer_sig,
        "issuer_key_id": issuer.key_id,
        "issuer_cert_serial": issuer.cert_serial,
        "issuer_signed_at": issuer_at,
        "supervisor_signature": supervisor_sig,
        "supervisor_key_id": supervisor.key_id,
        "supervisor_cert_serial": supervisor.cert_serial,
        "supervisor_signed_at": supervisor_at,
    }


def _issued_event(note: IssuedNote, draft: _Draft, ctx: EnoteContext) -> dict[str, Any]:
    return {
        "topic": WEBHOOK_TOPIC,
        "key": f"enote.issued:{note.id}",
        "payload": {
            "event": "enote.issued",
            "agency_id": str(draft.agency_id),
            "bill_id": str(draft.bill_id),
            "data": {
                "note_id": str(note.id),
                "kind": draft.kind,
                "note_code": note.note_code,
                "note_number": note.note_number,
                "check_code": note.check_code,
                "total_amount": draft.total,
                "issued_at": draft.issued_at.astimezone(SHANGHAI).isoformat(),
                "receipt_id": str(draft.receipt_id),
                "refund_id": str(draft.refund_id) if draft.refund_id else None,
                **_urls(ctx.config.public_url, note.note_code, note.note_number, note.check_code),
            },
        },
    }


async def _insert_drafts(
    session: AsyncSession, drafts: list[_Draft], ctx: EnoteContext
) -> list[IssuedNote]:
    by_code: dict[str, list[_Draft]] = defaultdict(list)
    for d in drafts:
        by_code[d.code].append(d)
    # Signing is most of a note's cost: each chunk goes to the signing line as soon as its
    # contents exist, and the webhook events and signed chunks are written while later
    # chunks sign.
    line = ctx.signing_line()
    numbered: list[tuple[_Draft, str, str, uuid.UUID, str, bytes]] = []
    chunks: list[list[tuple[_Draft, str, str, uuid.UUID, str, bytes]]] = []
    signing: list[Future[list[Signed]]] = []
    try:
        for code in sorted(by_code):
            numbers = await _take_numbers(session, code, len(by_code[code]))
            for draft, number in zip(by_code[code], numbers, strict=True):
                note_id, check = uuid.uuid4(), check_code()
                content = _content(draft, number, check, note_id)
                numbered.append((draft, code, number, note_id, check, content))
                if len(numbered) % SIGN_CHUNK == 0:
                    chunks.append(numbered[-SIGN_CHUNK:])
                    signing.append(line.sign([n[5] for n in chunks[-1]]))
        if tail := len(numbered) % SIGN_CHUNK:
            chunks.append(numbered[-tail:])
            signing.append(line.sign([n[5] for n in chunks[-1]]))
        issued = [
            IssuedNote(note_id, d.kind, code, number, check, d.receipt_id, d.refund_id, d.total)
            for d, code, number, note_id, check, _ in numbered
        ]
        events = [_issued_event(n, x[0], ctx) for n, x in zip(issued, numbered, strict=True)]
        await outbox.enqueue_many(session, events)
        # In order: a re-issue follows the red note it references.
        for chunk, future in zip(chunks, signing, strict=True):
            try:
                signatures = await asyncio.wait_for(asyncio.wrap_future(future), SIGN_TIMEOUT_S)
            except TimeoutError:
                # A signer that stopped answering: restart it; the outbox retries the batch.
                log.error("e-note signing timed out; restarting the signers")
                await asyncio.to_thread(line.close)
                raise
            rows = [_note_row(n, sig, ctx) for n, sig in zip(chunk, signatures, strict=True)]
            await session.execute(insert(_ENOTES), rows)
    except BaseException:
        for future in signing:  # don't sign notes that will never be written
            future.cancel()
        raise
    return issued


def _payer(bill: Bill) -> dict[str, Any]:
    # The note only ever holds (and signs) the masked ID number.
    masked_id, _ = reveal_payer(bill, reveal=False)
    return {"type": bill.payer_type, "id_code": masked_id or "", "name": payer_name_of(bill)}


def _main(
    agency: Agency, bill: Bill, receipt: Receipt, kind_code: str, ctx: EnoteContext
) -> dict[str, Any]:
    region = agency.region_code[:2]
    return {
        "name": NOTE_NAMES.get(kind_code, "非税收入票据（电子）"),
        "specimen_code": f"{region}{ctx.config.note_class}{kind_code}0001",
        "region": f"{region}0000",
        "issuer": {"credit_code": agency.credit_code, "name": agency.name},
        "payer": _payer(bill),
        "pay_mode": PAY_MODES.get(receipt.pay_mode, receipt.pay_mode),
        "payment_code": bill.payment_code,
        "currency": "CNY",
        "handler": ctx.config.handler,
        "checker": ctx.config.checker,
        "remark": bill.remark or "",
        "issuer_seal_id": f"SEAL-{agency.credit_code}",
        "supervisor_seal_id": f"SEAL-FIN-{region}0000",
        "bill_no": bill.agency_bill_no,
    }


async def issue_for_receipts(
    session: AsyncSession, receipt_ids: Sequence[uuid.UUID], ctx: EnoteContext
) -> list[IssuedNote]:
    """Issue the original note of each PAYMENT receipt that has none yet (caller commits).

    Receipts that already have a note, and DUPLICATE receipts (refunded, never noted), are
    skipped: calling this twice for the same receipt issues one note.
    """
    if not receipt_ids:
        return []
    found = (
        await session.execute(
            select(Receipt, Bill, Agency)
            .join(Bill, Bill.id == Receipt.bill_id)
            .join(Agency, Agency.id == Bill.agency_id)
            .where(Receipt.id.in_(set(receipt_ids)), Receipt.kind == "PAYMENT")
        )
    ).all()
    if not found:
        return []
    now = datetime.now(UTC)
    codes = {
        r.id: note_code(
            a.region_code, ctx.config.note_class, KIND_BY_CATEGORY.get(b.category, "01"), now
        )
        for r, b, a in found
    }
    # Everything that needs no number is read and built before the counter lock: the lock
    # is held until commit, so only numbering, signing and writing happen under it.
    by_bill: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for bill_id, *item in await session.execute(
        _BILL_LINES, {"bills": list({b.id for _, b, _ in found})}
    ):
        by_bill[bill_id].append(dict(zip(_ITEM_KEYS, item, strict=True)))
    drafts: list[_Draft] = []
    for receipt, bill, agency in found:
        items = [dict(i) for i in by_bill[bill.id]]
        if receipt.late_fee_amount:
            code, name, unit = LATE_FEE_ITEM
            items.append(
                {
                    "line": len(items) + 1,
                    "code": code,
                    "name": name,
                    "unit": unit,
                    "quantity": 1,
                    "standard": receipt.late_fee_amount,
                    "amount": receipt.late_fee_amount,
                }
            )
        total = sum(int(i["amount"]) for i in items)
        if total != receipt.amount:
            # The note must state what was paid; a mismatch is a data error to look at.
            raise Conflict(
                "receipt amount differs from the bill's lines",
                code="enote_amount_mismatch",
                receipt_id=str(receipt.id),
            )
        kind_code = codes[receipt.id][4:6]
        drafts.append(
            _Draft(
                kind="BLUE",
                agency_id=agency.id,
                bill_id=bill.id,
                receipt_id=receipt.id,
                refund_id=None,
                original_id=None,
                code=codes[receipt.id],
                main=_main(agency, bill, receipt, kind_code, ctx),
                items=items,
                total=total,
                issued_at=now,
            )
        )
    await _lock_codes(session, codes.values())
    # Under the counter lock, every note issued before us is visible (READ COMMITTED).
    done = set(
        (
            await session.scalars(
                select(ENote.receipt_id).where(
                    ENote.receipt_id.in_(list(codes)), ENote.refund_id.is_(None)
                )
            )
        ).all()
    )
    todo = [d for d in drafts if d.receipt_id not in done]
    if not todo:
        return []
    issued = await _insert_drafts(session, todo, ctx)
    log.info("enotes issued", count=len(issued))
    return issued


def _red_draft(
    current: ENote,
    original: dict[str, Any],
    *,
    receipt: Receipt,
    refund_id: uuid.UUID | None,
    code: str,
    reason: str,
    now: datetime,
) -> _Draft:
    """The red note cancelling `current` in full (its signed content is `original`)."""
    original_main = original["main"]
    return _Draft(
        kind="RED",
        agency_id=current.agency_id,
        bill_id=current.bill_id,
        receipt_id=receipt.id,
        refund_id=refund_id,
        original_id=current.id,
        code=code,
        main={
            **original_main,
            "name": original_main["name"] + "（红字）",
            "remark": f"冲红 {current.note_code}-{current.note_number}：{reason}",
            "original": {
                "code": current.note_code,
                "number": current.note_number,
                "total": current.total_amount,
            },
        },
        items=[
            {**i, "quantity": -int(i["quantity"]), "amount": -int(i["amount"])}
            for i in original["details"]
        ],
        total=-current.total_amount,
        issued_at=now,
    )


async def red_letter_for_refund(
    session: AsyncSession, refund_id: uuid.UUID, ctx: EnoteContext
) -> list[IssuedNote]:
    """Red-letter the receipt's current note for a succeeded refund; re-issue the remainder.

    Idempotent per refund. Raises NotReady while the original note is not issued yet.
    """
    refund = await session.get(Refund, refund_id)
    if refund is None:
        raise NotFound("refund not found", code="refund_not_found")
    if refund.status != "SUCCEEDED":
        raise InvalidInput("only a succeeded refund is red-lettered", code="refund_not_succeeded")
    receipt = await session.get(Receipt, refund.receipt_id)
    assert receipt is not None  # FK
    if receipt.kind != "PAYMENT":
        return []  # a duplicate payment never had a note
    bill = await session.get(Bill, receipt.bill_id)
    assert bill is not None
    agency = await session.get(Agency, bill.agency_id)
    assert agency is not None
    now = datetime.now(UTC)
    kind_code = KIND_BY_CATEGORY.get(bill.category, "01")
    code = note_code(agency.region_code, ctx.config.note_class, kind_code, now)
    await _lock_codes(session, [code])
    already = await session.scalar(
        select(ENote.id).where(ENote.refund_id == refund.id, ENote.kind == "RED")
    )
    if already is not None:
        return []
    current = await session.scalar(
        select(ENote)
        .where(
            ENote.receipt_id == receipt.id,
            ENote.kind == "BLUE",
            ENote.status.in_(ENOTE.sources(ENoteStatus.RED_LETTERED)),
        )
        .with_for_update()
    )
    if current is None:
        raise NotReady(f"receipt {receipt.id} has no valid note yet")
    original = json.loads(current.content)
    original_main = original["main"]
    drafts = [
        _red_draft(
            current,
            original,
            receipt=receipt,
            refund_id=refund.id,
            code=code,
            reason=refund.reason,
            now=now,
        )
    ]
    remainder = current.total_amount - refund.amount
    if remainder < 0:
        raise InvalidInput("refund exceeds the note's total", code="enote_refund_exceeds_note")
    if remainder:
        drafts.append(
            _Draft(
                kind="BLUE",
                agency_id=agency.id,
                bill_id=bill.id,
                receipt_id=receipt.id,
                refund_id=refund.id,
                original_id=current.id,
                code=code,
                main={
                    **original_main,
                    "remark": f"换开 {current.note_code}-{current.note_number}"
                    f"（部分退付 {refund.amount} 分）",
                    "replaces": {"code": current.note_code, "number": current.note_number},
                },
                items=reduce_items(original["details"], refund.amount),
                total=remainder,
                issued_at=now,
            )
        )
    ENOTE.check(current.status, ENoteStatus.RED_LETTERED)
    await session.execute(
        update(ENote).where(ENote.id == current.id).values(status=ENoteStatus.RED_LETTERED.value)
    )
    issued = await _insert_drafts(session, drafts, ctx)
    log.info("enote red-lettered", refund_id=str(refund.id), reissued=bool(remainder))
    return issued


_ISSUE_PENDING = text("SELECT 1 FROM outbox WHERE key = :key AND processed_at IS NULL")


async def red_letter_for_reversal(
    session: AsyncSession, receipt_id: uuid.UUID, reason: str, ctx: EnoteContext
) -> list[IssuedNote]:
    """Red-letter the note of a payment the channel took back (receipt kind REVERSED): a red
    note cancelling it in full, nothing re-issued (nothing remains paid).

    Idempotent per receipt. Raises NotReady while the note's issue job is still open (a
    worker took it before the payment was taken back and may yet commit the note); once
    that job is closed with no note, there is nothing to red-letter.
    """
    receipt = await session.get(Receipt, receipt_id)
    if receipt is None:
        raise NotFound("receipt not found", code="receipt_not_found")
    if receipt.kind != "REVERSED":
        raise InvalidInput("only a taken-back payment is red-lettered", code="receipt_not_reversed")
    bill = await session.get(Bill, receipt.bill_id)
    assert bill is not None
    agency = await session.get(Agency, bill.agency_id)
    assert agency is not None
    now = datetime.now(UTC)
    code = note_code(
        agency.region_code, ctx.config.note_class, KIND_BY_CATEGORY.get(bill.category, "01"), now
    )
    await _lock_codes(session, [code])
    # The issue job first, the note second: the job is closed in the transaction that
    # writes the note, so a closed job read before the note means the note is visible.
    if (await session.execute(_ISSUE_PENDING, {"key": f"{ISSUE_TOPIC}:{receipt.id}"})).first():
        raise NotReady(f"receipt {receipt.id}'s note may still be issued")
    notes = (
        await session.scalars(
            select(ENote)
            .where(ENote.receipt_id == receipt.id, ENote.refund_id.is_(None))
            .with_for_update()
        )
    ).all()
    current = next((n for n in notes if n.kind == "BLUE"), None)
    if current is None or any(n.kind == "RED" for n in notes):
        return []
    ENOTE.check(current.status, ENoteStatus.RED_LETTERED)
    draft = _red_draft(
        current,
        json.loads(current.content),
        receipt=receipt,
        refund_id=None,
        code=code,
        reason=reason,
        now=now,
    )
    await session.execute(
        update(ENote).where(ENote.id == current.id).values(status=ENoteStatus.RED_LETTERED.value)
    )
    issued = await _insert_drafts(session, [draft], ctx)
    log.info("enote red-lettered for a taken-back payment", receipt_id=str(receipt.id))
    return issued


# ---------------------------------------------------------------- worker jobs


def _uuid_of(payload: dict[str, Any], field_name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(payload[field_name]))
    except (KeyError, ValueError):
        return None


ISSUE_BATCH = 200
"""Notes per issuing transaction: the fixed cost of a batch (claim, reads, lock hand-over,
commit, the first and last chunk signing alone) is spread over more notes."""
ISSUE_LANES = 2
"""Concurrent issuing transactions: one reads and builds its batch while the other, holding
the counter lock, signs; the lock orders their numbering."""


async def issue_pending(
    sessions: async_sessionmaker[AsyncSession],
    ctx: EnoteContext,
    *,
    lanes: int = ISSUE_LANES,
    limit: int = ISSUE_BATCH,
    batches: int = 5,
) -> int:
    """Issue due notes in `lanes` concurrent transactions, up to `batches` batches each."""

    async def lane() -> int:
        handled = 0
        for _ in range(batches):
            n = await run_issue_job(sessions, ctx, limit)
            handled += n
            if n < limit:
                break
        return handled

    async with asyncio.TaskGroup() as group:  # a lane that fails stops the other
        running = [group.create_task(lane()) for _ in range(lanes)]
    return sum(t.result() for t in running)


async def run_issue_job(
    sessions: async_sessionmaker[AsyncSession], ctx: EnoteContext, limit: int = ISSUE_BATCH
) -> int:
    """Claim `enote.issue` messages and issue their notes in one transaction.

    If the batch fails, each message is retried alone so one bad receipt cannot block the
    others; a failing one is pushed back with a growing delay.
    """
    try:
        async with sessions() as session, session.begin():
            messages = await outbox.claim_payloads(session, ISSUE_TOPIC, limit)
            if not messages:
                return 0
            # Closed first, in the same transaction: it commits with the notes or not at all,
            # and the statement runs before signing rather than after it.
            await outbox.mark_done(session, [m for m, _ in messages])
            ids = [i for _, p in messages if (i := _uuid_of(p, "receipt_id")) is not None]
            await issue_for_receipts(session, ids, ctx)
            return len(messages)
    except Exception:
        log.warning("enote batch failed; retrying one by one", exc_info=True)
    handled = 0
    while handled < limit and await _issue_one(sessions, ctx):
        handled += 1
    return handled


async def _issue_one(sessions: async_sessionmaker[AsyncSession], ctx: EnoteContext) -> bool:
    async def issue(session: AsyncSession, payload: dict[str, Any]) -> None:
        if (receipt_id := _uuid_of(payload, "receipt_id")) is not None:
            await issue_for_receipts(session, [receipt_id], ctx)

    return await _one_message(sessions, ISSUE_TOPIC, issue, "issue")


async def run_red_job(
    sessions: async_sessionmaker[AsyncSession], ctx: EnoteContext, limit: int = 20
) -> int:
    """Red-letter notes: a succeeded refund's (`refund_id`), or a taken-back payment's
    (`receipt_id`, queued by payments.reversal)."""

    async def red_letter(session: AsyncSession, payload: dict[str, Any]) -> None:
        if (refund_id := _uuid_of(payload, "refund_id")) is not None:
            await red_letter_for_refund(session, refund_id, ctx)
        elif (receipt_id := _uuid_of(payload, "receipt_id")) is not None:
            reason = str(payload.get("reason") or "渠道冲正")
            await red_letter_for_reversal(session, receipt_id, reason, ctx)

    handled = 0
    while handled < limit and await _one_message(sessions, RED_TOPIC, red_letter, "red-letter"):
        handled += 1
    return handled


async def _one_message(
    sessions: async_sessionmaker[AsyncSession],
    topic: str,
    handle: Callable[[AsyncSession, dict[str, Any]], Awaitable[None]],
    what: str,
) -> bool:
    """Handle the next due message of `topic` alone (False: none is due). A failure that is
    the message's own is recorded on it and retried later with a growing delay; the others
    (a signer down, the database gone) propagate and leave it for the next run."""
    async with sessions() as session, session.begin():
        messages = await outbox.claim(session, topic, 1)
        if not messages:
            return False
        message = messages[0]
        now = datetime.now(UTC)
        try:
            async with session.begin_nested():
                await handle(session, message.payload)
        except NotReady as exc:
            outbox.retry_later(message, now, timedelta(seconds=30), str(exc))
        except (IntegrityError, Conflict, InvalidInput, NotFound) as exc:
            delay = timedelta(seconds=min(3600, 30 * 2**message.attempts))
            outbox.retry_later(message, now, delay, f"{type(exc).__name__}: {exc}")
            log.error("enote message failed", job=what, key=message.key, error=str(exc))
        else:
            outbox.done(message, now)
        return True


# ---------------------------------------------------------------- verification and lookup


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    role: str
    algorithm: str
    key_id: str
    cert_serial: str
    signed_at: datetime
    valid: bool


@dataclass(frozen=True, slots=True)
class Verification:
    status: str
    """valid | invalid | red_lettered"""
    note: ENote
    content: dict[str, Any]
    """The signed data elements (empty when the stored bytes are not even JSON)."""
    signatures: list[SignatureCheck]
    problems: list[str]


def verify_note(note: ENote, keyring: dict[str, Verifier]) -> Verification:
    """Check both signatures and that the row's columns agree with the signed content."""
    problems: list[str] = []

    def check(role: str, key_id: str, message: bytes, signature: bytes) -> bool:
        verifier = keyring.get(key_id)
        if verifier is None:
            problems.append(f"{role}: unknown key {key_id}")
            return False
        ok = verifier.verify(message, signature)
        if not ok:
            problems.append(f"{role}: signature does not verify")
        return ok

    try:
        signed = note.content
    except DecryptError:
        signed = b""
        problems.append("content does not decrypt")
    issuer_ok = bool(signed) and check("issuer", note.issuer_key_id, signed, note.issuer_signature)
    supervisor_ok = bool(signed) and check(
        "supervisor",
        note.supervisor_key_id,
        signed_by_supervisor(signed, note.issuer_signature),
        note.supervisor_signature,
    )
    try:
        content: dict[str, Any] = json.loads(signed)
        main = content["main"]
        expected = {
            "code": note.note_code,
            "number": note.note_number,
            "check_code": note.check_code,
            "total": note.total_amount,
        }
        for key, value in expected.items():
            if main.get(key) != value:
                problems.append(f"content {key} differs from the record")
        if content["header"].get("kind") != note.kind or content["header"].get("id") != str(
            note.id
        ):
            problems.append("content header differs from the record")
        if sum(int(i["amount"]) for i in content["details"]) != note.total_amount:
            problems.append("items do not add up to the total")
    except (ValueError, KeyError, TypeError):
        content = {}
        problems.append("content is not a note")
    checks = [
        SignatureCheck(
            "issuer",
            note.signature_algorithm,
            note.issuer_key_id,
            note.issuer_cert_serial,
            note.issuer_signed_at,
            issuer_ok,
        ),
        SignatureCheck(
            "supervisor",
            note.signature_algorithm,
            note.supervisor_key_id,
            note.supervisor_cert_serial,
            note.supervisor_signed_at,
            supervisor_ok,
        ),
    ]
    if problems:
        status = "invalid"
    elif note.status == ENoteStatus.RED_LETTERED:
        status = "red_lettered"
    else:
        status = "valid"
    return Verification(status, note, content, checks, problems)


def valid_query(code: str, number: str, check: str) -> None:
    if not (len(code) == 8 and code.isdigit() and len(number) == 10 and number.isdigit()):
        raise InvalidInput("note code is 8 digits and note number 10", code="enote_bad_query")
    if not (len(check) == 6 and check.isdigit()):
        raise InvalidInput("check code is 6 digits", code="enote_bad_query")


async def find_note(session: AsyncSession, code: str, number: str, check: str) -> ENote:
    """The note with that code, number and check code; any mismatch is a plain 404."""
    valid_query(code, number, check)
    note = await session.scalar(
        select(ENote).where(ENote.note_code == code, ENote.note_number == number)
    )
    # Same answer for "no such note" and "wrong check code": numbers cannot be probed.
    if note is None or not hmac.compare_digest(note.check_code, check):
        raise NotFound("no note with that code, number and check code", code="enote_not_found")
    return note


async def verify(
    session: AsyncSession, code: str, number: str, check: str, keyring: dict[str, Verifier]
) -> Verification:
    return verify_note(await find_note(session, code, number, check), keyring)


@dataclass(frozen=True, slots=True)
class NoteSummary:
    id: uuid.UUID
    kind: str
    status: str
    note_code: str
    note_number: str
    check_code: str
    total_amount: int
    issued_at: datetime
    receipt_id: uuid.UUID
    refund_id: uuid.UUID | None
    urls: dict[str, str]


def _summary(note: ENote, public_url: str) -> NoteSummary:
    return NoteSummary(
        note.id,
        note.kind,
        note.status,
        note.note_code,
        note.note_number,
        note.check_code,
        note.total_amount,
        note.issued_at,
        note.receipt_id,
        note.refund_id,
        _urls(public_url, note.note_code, note.note_number, note.check_code),
    )


async def notes_for_payer(
    session: AsyncSession,
    payment_code: str,
    public_url: str,
    *,
    payer_name: str | None = None,
    attempt_id: uuid.UUID | None = None,
) -> list[NoteSummary] | None:
    """The notes of a bill for someone who knows its payment code AND a second factor: the
    payer's full name as on the notice, or the id of a succeeded payment attempt of the
    bill (what the payer's own cashier flow holds). A payment code alone is printed on a
    notice and only ~30 bits of it are secret: never enough to show a name or a check code.

    None when there is no such bill or the factor does not match it (one answer for both,
    so neither can be probed). The check digit is verified before any lookup.
    """
    validate_payment_code(payment_code)
    if payer_name is None and attempt_id is None:
        raise InvalidInput(
            "Give the payer's name or a paid attempt's id with the payment code.",
            code="second_factor_required",
        )
    bill = await session.scalar(select(Bill).where(Bill.payment_code == payment_code))
    if bill is None:
        return None
    proven = payer_name is not None and payer_name_matches(bill, payer_name)
    if not proven and attempt_id is not None:
        proven = (
            await session.scalar(
                select(PaymentAttempt.id).where(
                    PaymentAttempt.id == attempt_id,
                    PaymentAttempt.bill_id == bill.id,
                    PaymentAttempt.status == "SUCCEEDED",
                )
            )
        ) is not None
    if not proven:
        return None
    notes = await session.scalars(
        select(ENote).where(ENote.bill_id == bill.id).order_by(ENote.issued_at, ENote.note_number)
    )
    return [_summary(n, public_url) for n in notes]


async def notes_for_bill(
    session: AsyncSession, agency_id: uuid.UUID, bill_id: uuid.UUID, public_url: str
) -> list[NoteSummary]:
    """An agency's notes for one of its bills (for the agency-authenticated API)."""
    notes = await session.scalars(
        select(ENote)
        .where(ENote.bill_id == bill_id, ENote.agency_id == agency_id)
        .order_by(ENote.issued_at, ENote.note_number)
    )
    return [_summary(n, public_url) for n in notes]


def note_view(verification: Verification, public_url: str) -> NoteView:
    """What the printed note shows, taken from the signed content (not from the columns)."""
    note, content = verification.note, verification.content
    main = content["main"]
    items = [
        DocItem(
            code=str(i["code"]),
            name=str(i["name"]),
            unit=str(i["unit"]),
            quantity=int(i["quantity"]),
            standard_fen=int(i["standard"]),
            amount_fen=int(i["amount"]),
        )
        for i in content["details"]
    ]
    return NoteView(
        name=str(main["name"]),
        red=note.kind == "RED",
        red_lettered=verification.status == "red_lettered",
        code=note.note_code,
        number=note.note_number,
        check_code=note.check_code,
        issued_at=str(main["issued_at"]).replace("T", " ")[:19],
        issuer_name=str(main["issuer"]["name"]),
        issuer_credit_code=str(main["issuer"]["credit_code"]),
        payer_name=str(main["payer"]["name"]),
        payer_id_code=str(main["payer"]["id_code"]),
        pay_mode=str(main["pay_mode"]),
        payment_code=str(main["payment_code"]),
        items=items,
        total_fen=int(main["total"]),
        total_capitals=str(main["total_capitals"]),
        handler=str(main["handler"]),
        checker=str(main["checker"]),
        remark=str(main["remark"]),
        issuer_seal_id=str(main["issuer_seal_id"]),
        supervisor_seal_id=str(main["supervisor_seal_id"]),
        verify_url=verify_url(public_url, note.note_code, note.note_number, note.check_code),
    )
