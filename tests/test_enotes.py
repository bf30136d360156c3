"""Fiscal e-notes: exactly one per receipt, gap-free numbers, two SM2 signatures that catch
any change, red-letter notes for refunds — on the real PostgreSQL, via the real outbox."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import gmssl_pyx
import pytest
from sqlalchemy import func, select, text

from enotes import service as enotes
from enotes.models import ENote, ENoteCounter
from enotes.service import EnoteContext, issue_for_receipts, run_issue_job, run_red_job
from enotes.signing import NoteSigners, SM2Signer
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from kernel.models import OutboxMessage
from tests.enote_helpers import add_receipt, agency_with_items, paid_bill, succeeded_refund

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ctx(settings: Settings) -> EnoteContext:
    # The same signers the app and the worker use (demo keys generated under var/ on first use).
    return enote_context(settings)


async def _notes(res: Resources) -> list[ENote]:
    async with res.sessions() as s:
        return list(
            (await s.scalars(select(ENote).order_by(ENote.note_code, ENote.note_number))).all()
        )


async def _pending(res: Resources, topic: str) -> int:
    async with res.sessions() as s:
        return int(
            await s.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.topic == topic, OutboxMessage.processed_at.is_(None))
            )
            or 0
        )


async def test_issue_one_note_per_receipt_despite_duplicate_confirmations(
    res: Resources, ctx: EnoteContext
) -> None:
    async with res.sessions() as s, s.begin():
        agency, fine, _ = await agency_with_items(s)
        bill, receipt = await paid_bill(s, agency, [(fine, 1, 20_000)], late_fee=600)
        # The channel confirmed again: the payment flow records a DUPLICATE receipt (to be
        # refunded, never noted) and enqueues again — same key, and once under another key.
        dup = await add_receipt(s, bill, kind="DUPLICATE")
        from kernel.outbox import enqueue

        payload = {"receipt_id": str(receipt.id)}
        await enqueue(s, "enote.issue", f"enote.issue:{receipt.id}", payload)
        await enqueue(s, "enote.issue", f"enote.issue:{receipt.id}:retry", payload)

    # Two workers race over the same messages.
    handled = await asyncio.gather(
        run_issue_job(res.sessions, ctx), run_issue_job(res.sessions, ctx)
    )
    assert sum(handled) == 3  # the original, the DUPLICATE's and the re-keyed message
    assert await run_issue_job(res.sessions, ctx) == 0

    notes = await _notes(res)
    assert [(n.receipt_id, n.kind, n.note_number) for n in notes] == [
        (receipt.id, "BLUE", "0000000001")
    ]
    note = notes[0]
    assert note.receipt_id != dup.id
    assert note.total_amount == 20_600
    content = json.loads(note.content)
    main = content["main"]
    assert main["total_capitals"] == "贰佰零陆元整"
    assert main["code"] == note.note_code == "33" + "01" + "03" + main["issue_date"][2:4]
    assert main["payment_code"] == bill.payment_code
    assert main["issuer"] == {"credit_code": agency.credit_code, "name": agency.name}
    assert main["pay_mode"] == "支付宝"
    assert main["issued_at"].endswith("+08:00")
    assert [(d["name"], d["amount"]) for d in content["details"]] == [
        ("道路交通违法罚款", 20_000),
        ("加处罚款", 600),
    ]
    assert len(note.check_code) == 6
    assert note.check_code.isdigit()
    assert note.issuer_cert_serial
    assert note.supervisor_cert_serial
    assert note.issuer_key_id != note.supervisor_key_id
    # Canonical: re-serialising the parsed content gives the stored bytes back.
    assert enotes.canonical_json(content) == note.content
    # The agency hears about it once, through the webhook outbox.
    async with res.sessions() as s:
        events = (
            await s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "webhook.event"))
        ).all()
    assert [e.key for e in events] == [f"enote.issued:{note.id}"]
    data = events[0].payload["data"]
    assert events[0].payload["event"] == "enote.issued"
    assert events[0].payload["bill_id"] == str(bill.id)
    assert (data["note_code"], data["note_number"], data["check_code"]) == (
        note.note_code,
        note.note_number,
        note.check_code,
    )
    assert data["pdf_url"].endswith(
        f"/v1/enotes/{note.note_code}/0000000001.pdf?check={note.check_code}"
    )


_CRASH = """
import asyncio, os, sys
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from enotes.service import EnoteContext, run_issue_job
from enotes.signing import NoteSigners

class CrashAfterSign:
    def __init__(self, inner):
        self.inner = inner
        self.key_id, self.cert_serial = inner.key_id, inner.cert_serial
        self.algorithm = inner.algorithm
    def sign(self, message):
        signature = self.inner.sign(message)
        print("signed; crashing before commit", flush=True)
        os._exit(17)  # a hard crash: no rollback, no cleanup, the connection just drops
    def verify(self, message, signature):
        return self.inner.verify(message, signature)

async def main():
    settings = Settings.from_env()
    ctx = enote_context(settings)
    signers = NoteSigners(ctx.signers.issuer, CrashAfterSign(ctx.signers.supervisor))
    crashing = EnoteContext(signers, ctx.config)
    res = Resources.open(settings)
    await run_issue_job(res.sessions, crashing)

asyncio.run(main())
"""


async def test_worker_crash_between_sign_and_commit_leaves_no_note_and_no_gap(
    res: Resources, ctx: EnoteContext
) -> None:
    async with res.sessions() as s, s.begin():
        agency, fine, _ = await agency_with_items(s)
        _, receipt = await paid_bill(s, agency, [(fine, 2, 5_000)])

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CRASH],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 17, proc.stderr
    assert "signed; crashing before commit" in proc.stdout

    # Nothing of the crashed transaction survived; the message waits for the next worker.
    assert await _notes(res) == []
    assert await _pending(res, "enote.issue") == 1
    async with res.sessions() as s:
        assert (await s.scalar(select(func.coalesce(func.max(ENoteCounter.last_number), 0)))) == 0

    assert await run_issue_job(res.sessions, ctx) == 1
    notes = await _notes(res)
    assert [(n.receipt_id, n.note_number) for n in notes] == [(receipt.id, "0000000001")]
    assert await _pending(res, "enote.issue") == 0


async def test_numbers_have_no_gaps_under_200_concurrent_issues(
    res: Resources, ctx: EnoteContext
) -> None:
    async with res.sessions() as s, s.begin():
        agency, fine, _ = await agency_with_items(s)
        receipts = [
            (await paid_bill(s, agency, [(fine, 1, 100 + n)], enqueue=False))[1] for n in range(200)
        ]

    rng = random.Random(6)
    doomed = set(rng.sample(range(200), 25))

    class Boom(Exception):
        pass

    async def issue(n: int, receipt_id: uuid.UUID) -> None:
        if n in doomed:
            # This one issues, then dies before commit: its number must come back.
            try:
                async with res.sessions() as s, s.begin():
                    await issue_for_receipts(s, [receipt_id], ctx)
                    raise Boom
            except Boom:
                pass
        async with res.sessions() as s, s.begin():
            await issue_for_receipts(s, [receipt_id], ctx)

    tasks = [issue(n, r.id) for n, r in enumerate(receipts)]
    # And 30 duplicate issues of random receipts racing with the rest.
    tasks += [issue(-1, receipts[rng.randrange(200)].id) for _ in range(30)]
    rng.shuffle(tasks)
    await asyncio.gather(*tasks)

    notes = await _notes(res)
    assert len({n.note_code for n in notes}) == 1
    assert [n.note_number for n in notes] == [f"{i:010d}" for i in range(1, 201)]
    assert sorted(str(n.receipt_id) for n in notes) == sorted(str(r.id) for r in receipts)
    async with res.sessions() as s:
        assert await s.scalar(select(ENoteCounter.last_number)) == 200


async def test_any_one_byte_change_is_detected(res: Resources, ctx: EnoteContext) -> None:
    async with res.sessions() as s, s.begin():
        agency, fine, fee = await agency_with_items(s)
        await paid_bill(s, agency, [(fine, 1, 12_345), (fee, 3, 8_000)])
    await run_issue_job(res.sessions, ctx)
    (note,) = await _notes(res)
    keyring = ctx.signers.keyring()

    async def status() -> enotes.Verification:
        async with res.sessions() as s:
            return await enotes.verify(
                s, note.note_code, note.note_number, note.check_code, keyring
            )

    ok = await status()
    assert ok.status == "valid"
    assert all(c.valid for c in ok.signatures)

    # An independent SM2 implementation (GmSSL) accepts the signatures: standard SM2 with
    # SM3 and the default signer id, not something only our library understands.
    issuer = ctx.signers.issuer
    assert isinstance(issuer, SM2Signer)
    assert gmssl_pyx.sm2_verify(issuer.point[1:], note.content, note.issuer_signature)

    for column, offset in [
        ("content_enc", 0),
        ("content_enc", len(note.content_enc) // 2),
        ("content_enc", len(note.content_enc) - 1),
        ("issuer_signature", 10),
        ("supervisor_signature", 20),
    ]:
        original = getattr(note, column)
        changed = bytearray(original)
        changed[offset] ^= 0x01
        async with res.sessions() as s, s.begin():
            await s.execute(
                text(f"UPDATE enotes SET {column} = :v WHERE id = :id"),
                {"v": bytes(changed), "id": note.id},
            )
        bad = await status()
        assert bad.status == "invalid", (column, offset)
        assert not all(c.valid for c in bad.signatures)
        async with res.sessions() as s, s.begin():
            await s.execute(
                text(f"UPDATE enotes SET {column} = :v WHERE id = :id"),
                {"v": original, "id": note.id},
            )
        assert (await status()).status == "valid"

    # Columns that disagree with the signed content are caught too.
    async with res.sessions() as s, s.begin():
        await s.execute(text("UPDATE enotes SET total_amount = total_amount + 1"))
    bad = await status()
    assert bad.status == "invalid"
    assert "content total differs from the record" in bad.problems


async def test_refunds_red_letter_and_reissue_the_remainder(
    res: Resources, ctx: EnoteContext
) -> None:
    async with res.sessions() as s, s.begin():
        agency, fine, fee = await agency_with_items(s)
        _, receipt = await paid_bill(s, agency, [(fine, 1, 10_000), (fee, 2, 3_000)])
        # The refund succeeded before the worker issued the original: red waits for it.
        refund = await succeeded_refund(s, receipt, 3_000)
    assert await run_red_job(res.sessions, ctx) == 1
    assert await _pending(res, "enote.red") == 1
    async with res.sessions() as s, s.begin():
        await s.execute(text("UPDATE outbox SET available_at = now() WHERE topic = 'enote.red'"))

    await run_issue_job(res.sessions, ctx)
    assert await run_red_job(res.sessions, ctx) == 1
    assert await _pending(res, "enote.red") == 0
    original, red, reissue = await _notes(res)
    assert (original.kind, original.status, original.total_amount) == (
        "BLUE",
        "RED_LETTERED",
        16_000,
    )
    assert (red.kind, red.total_amount, red.original_id, red.refund_id) == (
        "RED",
        -16_000,
        original.id,
        refund.id,
    )
    assert (reissue.kind, reissue.total_amount, reissue.original_id) == (
        "BLUE",
        13_000,
        original.id,
    )
    assert [n.note_number for n in (original, red, reissue)] == [
        "0000000001",
        "0000000002",
        "0000000003",
    ]
    red_content = json.loads(red.content)
    assert red_content["main"]["total_capitals"] == "负壹佰陆拾元整"
    assert red_content["main"]["original"] == {
        "code": original.note_code,
        "number": original.note_number,
        "total": 16_000,
    }
    assert [d["amount"] for d in red_content["details"]] == [-10_000, -6_000]
    re_items = json.loads(reissue.content)["details"]
    assert [(d["name"], d["quantity"], d["standard"], d["amount"]) for d in re_items] == [
        ("道路交通违法罚款", 1, 10_000, 10_000),
        ("考试报名费", 1, 3_000, 3_000),
    ]

    keyring = ctx.signers.keyring()
    async with res.sessions() as s:
        statuses = [
            (await enotes.verify(s, n.note_code, n.note_number, n.check_code, keyring)).status
            for n in (original, red, reissue)
        ]
    assert statuses == ["red_lettered", "valid", "valid"]

    # Refunding the rest red-letters the re-issue and issues nothing new.
    async with res.sessions() as s, s.begin():
        rest = await succeeded_refund(s, receipt, 13_000)
    assert await run_red_job(res.sessions, ctx) == 1
    notes = await _notes(res)
    assert [(n.kind, n.status, n.total_amount) for n in notes] == [
        ("BLUE", "RED_LETTERED", 16_000),
        ("RED", "VALID", -16_000),
        ("BLUE", "RED_LETTERED", 13_000),
        ("RED", "VALID", -13_000),
    ]
    assert notes[3].refund_id == rest.id
    # Replaying a refund's message changes nothing.
    async with res.sessions() as s, s.begin():
        assert await enotes.red_letter_for_refund(s, rest.id, ctx) == []


def test_other_keys_fail_and_keys_load_from_pem_or_hex(ctx: EnoteContext) -> None:
    signer = SM2Signer.generate("CERT-1")
    again = SM2Signer.from_text(signer.pem().decode(), "CERT-1")
    assert (again.key_id, again.cert_serial) == (signer.key_id, "CERT-1")
    hexed = SM2Signer.from_text("11" * 32)
    assert SM2Signer.from_text("11" * 32).key_id == hexed.key_id
    message = b"note content"
    assert again.verify(message, signer.sign(message))
    assert not hexed.verify(message, signer.sign(message))
    assert not signer.verify(message, b"\x30\x00")
    # The interface is small enough for an HSM to stand in.
    both = NoteSigners(signer, hexed)
    assert set(both.keyring()) == {signer.key_id, hexed.key_id}


def test_demo_keys_are_made_once_and_configured_keys_win(tmp_path: Path) -> None:
    from enotes.signing import load_signer

    demo = tmp_path / "enote" / "issuer.pem"
    first = load_signer("", demo, "")
    assert demo.stat().st_mode & 0o777 == 0o600
    assert load_signer("", demo, "").key_id == first.key_id  # reused, not regenerated
    assert first.cert_serial == f"DEMO-{first.key_id}"
    configured = SM2Signer.generate()
    as_text = load_signer(configured.pem().decode(), demo, "CN-42")
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(configured.pem())
    as_path = load_signer(str(key_file), demo, "CN-42")
    assert as_text.key_id == as_path.key_id == configured.key_id != first.key_id
    assert as_path.cert_serial == "CN-42"


async def test_note_carries_the_masked_payer_id_never_the_clear_one(
    res: Resources, ctx: EnoteContext
) -> None:
    from kernel.crypto import keyring

    async with res.sessions() as s:
        agency, fine, _ = await agency_with_items(s)
        bill, receipt = await paid_bill(s, agency, [(fine, 1, 5000)], enqueue=False)
        # Encrypted as billing.bills stores it: bound to this bill's row and column.
        bill.payer_id_enc = keyring().encrypt(
            b"330102199001011234", aad=f"bills.payer_id:{bill.id}".encode()
        )
        await s.commit()
        await issue_for_receipts(s, [receipt.id], ctx)
        await s.commit()
    (note,) = await _notes(res)
    content = json.loads(note.content)
    assert "330102199001011234" not in note.content.decode()
    assert "3301**********1234" in json.dumps(content, ensure_ascii=False)


async def test_a_bad_receipt_is_retried_later_and_does_not_block_the_batch(
    res: Resources, ctx: EnoteContext
) -> None:
    async with res.sessions() as s, s.begin():
        agency, fine, _ = await agency_with_items(s)
        receipts = [(await paid_bill(s, agency, [(fine, 1, 1_000 + n)]))[1] for n in range(3)]
        # A data error: the receipt no longer matches its bill's lines.
        await s.execute(
            text("UPDATE receipts SET amount = amount + 1 WHERE id = :id"), {"id": receipts[1].id}
        )

    # The batch fails on it; one by one, the other two are issued and it is pushed back.
    assert await run_issue_job(res.sessions, ctx) == 3
    notes = await _notes(res)
    assert sorted(str(n.receipt_id) for n in notes) == sorted(
        str(r.id) for r in (receipts[0], receipts[2])
    )
    async with res.sessions() as s:
        bad = (
            await s.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.topic == "enote.issue", OutboxMessage.processed_at.is_(None)
                )
            )
        ).one()
    assert bad.payload == {"receipt_id": str(receipts[1].id)}
    assert bad.attempts == 1
    assert bad.last_error is not None
    assert "differs" in bad.last_error
    assert bad.available_at > datetime.now(UTC)
    assert await run_issue_job(res.sessions, ctx) == 0  # not due again yet
