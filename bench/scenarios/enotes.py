"""Fiscal e-notes issued per second through the real path vs. raw SM2 signs per second.

Ours: the worker's `enote.issue` job over real PostgreSQL — claim outbox messages, lock the
note code's counter, build and canonicalise the content, two SM2 signatures (issuer and
supervisor), insert notes and webhook events, mark the messages done, commit.
Baseline: `SM2Signer.sign` of a note-sized message, same library, same process, same run.
A note needs two signatures. The worker's path (`enotes.issue_pending`) signs in
one process per core (`enotes.signing_lines.ProcessLine`) while two issuing transactions
take turns: one reads and builds its batch while the other signs under the counter lock.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from datetime import UTC, date, datetime, timedelta

from bench.runner import Row


async def _setup(resources: object, count: int) -> None:
    from sqlalchemy import insert

    from billing.models import Agency, Bill, BillLine, RevenueItem
    from billing.personal import seal_payer_name
    from kernel.models import OutboxMessage
    from payments.models import PaymentAttempt, Receipt

    sessions = resources.sessions  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    item_code = f"B-{secrets.token_hex(4)}"
    async with sessions() as s, s.begin():
        s.add(
            RevenueItem(
                code=item_code,
                name="考试报名费",
                category="EXAM_FEE",
                budget_subject="103040101001",
                fixed_amount=8_000,
                split_l2_bp=10_000,
                active_from=date(2020, 1, 1),
            )
        )
        agency = Agency(
            credit_code="12" + "".join(secrets.choice("0123456789") for _ in range(16)),
            name="某省人事考试院",
            region_code="330000",
        )
        s.add(agency)
        await s.flush()
        bills, lines, attempts, receipts, messages = [], [], [], [], []
        for n in range(count):
            bill_id, attempt_id, receipt_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            bills.append(
                {
                    "id": bill_id,
                    "agency_id": agency.id,
                    "agency_bill_no": f"BENCH-{bill_id.hex[:16]}",
                    "request_hash": b"x",
                    "payment_code": f"{secrets.randbelow(10**20):020d}",
                    "category": "EXAM_FEE",
                    "status": "PAID",
                    "payer_type": "PERSON",
                    "payer_name_enc": seal_payer_name(bill_id, f"考生{n}"),
                    "principal_amount": 8_000,
                    "due_date": date.today(),  # noqa: DTZ011
                    "expires_at": now + timedelta(days=1),
                }
            )
            lines.append(
                {
                    "bill_id": bill_id,
                    "line_no": 1,
                    "item_code": item_code,
                    "quantity": 1,
                    "unit_amount": 8_000,
                    "amount": 8_000,
                }
            )
            attempts.append(
                {
                    "id": attempt_id,
                    "bill_id": bill_id,
                    "channel": "alipay",
                    "mode": "qr",
                    "status": "SUCCEEDED",
                    "amount": 8_000,
                    "expires_at": now + timedelta(hours=1),
                }
            )
            receipts.append(
                {
                    "id": receipt_id,
                    "bill_id": bill_id,
                    "attempt_id": attempt_id,
                    "channel": "alipay",
                    "channel_trade_no": uuid.uuid4().hex,
                    "kind": "PAYMENT",
                    "amount": 8_000,
                    "paid_at": now,
                    "business_date": date.today(),  # noqa: DTZ011
                }
            )
            messages.append(
                {
                    "topic": "enote.issue",
                    "key": f"enote.issue:{receipt_id}",
                    "payload": {"receipt_id": str(receipt_id)},
                }
            )
        for model, rows in (
            (Bill, bills),
            (BillLine, lines),
            (PaymentAttempt, attempts),
            (Receipt, receipts),
            (OutboxMessage, messages),
        ):
            await s.execute(insert(model), rows)


async def _measure(count: int) -> tuple[float, float, int]:
    from enotes.service import (
        ISSUE_BATCH,
        ISSUE_LANES,
        EnoteConfig,
        EnoteContext,
        issue_pending,
        run_issue_job,
    )
    from enotes.signing import NoteSigners, SM2Signer
    from gateway.procs import freeze_startup_heap
    from gateway.settings import Settings
    from gateway.state import Resources

    resources = Resources.open(Settings.from_env())
    try:
        ctx = EnoteContext(
            NoteSigners(SM2Signer.generate("BENCH-ISSUER"), SM2Signer.generate("BENCH-FIN")),
            EnoteConfig(),
        )
        # Drain anything a previous scenario left, then add our receipts.
        while await issue_pending(resources.sessions, ctx):
            pass
        await _setup(resources, count)
        # Warm-up: connections, caches, and the signing processes started; then the heap
        # frozen as the worker does once it has started (gateway.worker.run_forever).
        await run_issue_job(resources.sessions, ctx, limit=10)
        freeze_startup_heap()
        message = secrets.token_bytes(1_600)  # about the size of a note's content
        signer = ctx.signers.issuer

        # Alternate short rounds of both, so a neighbour's load on this shared machine
        # hits both figures alike.
        issued, issue_time, signs, sign_time = 0, 0.0, 0, 0.0
        rounds = 6
        # The worker's batches, as many as fill a round across the issuing lanes.
        limit = min(ISSUE_BATCH, count // rounds // ISSUE_LANES)
        batches = max(1, count // rounds // (ISSUE_LANES * limit))
        for n in range(rounds):
            started = time.perf_counter()
            for _ in range(count // rounds):
                signer.sign(message)
            sign_time += time.perf_counter() - started
            signs += count // rounds
            target = (count - 10) * (n + 1) // rounds
            started = time.perf_counter()
            while issued < target:
                handled = await issue_pending(resources.sessions, ctx, limit=limit, batches=batches)
                if not handled:
                    break
                issued += handled
            issue_time += time.perf_counter() - started
        notes_per_s, signs_per_s = issued / issue_time, signs / sign_time
        return notes_per_s, signs_per_s, issued
    finally:
        ctx.close()
        await resources.close()


def run(*, quick: bool) -> list[Row]:
    count = 2_400 if quick else 9_600
    notes_per_s, signs_per_s, issued = asyncio.run(_measure(count))
    return [
        Row(
            scenario="enotes",
            ours=notes_per_s,
            baseline=signs_per_s,
            unit="notes/s vs SM2 signs/s",
            goal=">= 0.5",
            notes=f"{issued} notes issued through the worker job (2 SM2 signatures each)",
        )
    ]
