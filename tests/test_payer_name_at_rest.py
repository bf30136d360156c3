"""The payer's name is encrypted at rest like the ID number (bound to its bill), existing rows
are encrypted by the migration, and everyone allowed to see the name still does: the agency
API, its CSV export and notice, the e-note; the citizen only ever sees it masked."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from billing.models import Bill
from billing.personal import payer_name_of
from enotes.models import ENote
from enotes.service import run_issue_job
from gateway import migrate
from gateway.db import create_engine
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from kernel.crypto import DecryptError
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key
from tests.enote_helpers import add_receipt

NAME = "欧阳明月"


async def test_the_name_is_stored_encrypted_and_shown_to_those_allowed(
    res: Resources, settings: Settings, client: AsyncTestClient[Litestar]
) -> None:
    agency = await make_agency_with_key(res)
    api = AgencyClient(client, agency.key_id, agency.secret)
    r = await api.post("/v1/bills", json=bill_body(payer_name=NAME))
    assert r.status_code == 201, r.text
    bill_id, code = r.json()["id"], r.json()["payment_code"]

    async with res.sessions() as s:
        columns = set(
            await s.scalars(
                text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = 'bills' AND column_name LIKE 'payer_name%'"
                )
            )
        )
        stored = await s.scalar(text("SELECT payer_name_enc FROM bills"))
        dump = await s.scalar(text("SELECT string_agg(b::text, '') FROM bills b"))
    assert columns == {"payer_name_enc"}
    assert NAME.encode() not in stored
    assert NAME not in dump

    # The agency: its bill, its CSV export (and the notice, rendered from the same name).
    assert (await api.get(f"/v1/bills/{bill_id}")).json()["payer"]["name"] == NAME
    csv = await api.get("/v1/bills", headers={"accept": "text/csv"})
    assert NAME in csv.text
    assert (await api.get(f"/v1/bills/{bill_id}/notice.pdf")).status_code == 200
    # The citizen, by payment code: masked.
    assert (await client.get(f"/v1/pay/{code}")).json()["payer_name"] == "欧***"

    # The e-note of the payment carries the name in full, for the payer.
    async with res.sessions() as s, s.begin():
        bill = await s.get_one(Bill, uuid.UUID(bill_id))
        bill.status = "PAID"
        await add_receipt(s, bill)
    assert await run_issue_job(res.sessions, enote_context(settings)) == 1
    async with res.sessions() as s:
        note = (await s.scalars(select(ENote))).one()
        note_columns = set(
            await s.scalars(
                text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = 'enotes' AND column_name LIKE 'content%'"
                )
            )
        )
    # The signed note names the payer: it is encrypted at rest too, and still verifies.
    assert note_columns == {"content_enc"}
    assert NAME.encode() not in note.content_enc
    assert NAME in note.content.decode()
    r = await client.get(
        "/v1/enotes/verify",
        params={"code": note.note_code, "number": note.note_number, "check": note.check_code},
    )
    assert r.json()["payer"]["name"] == NAME

    # The ciphertext is bound to its bill: copied onto another bill it does not decrypt.
    async with res.sessions() as s:
        other = await s.get_one(Bill, uuid.UUID(bill_id))
        s.expunge(other)
    other.id = uuid.uuid4()
    with pytest.raises(DecryptError):
        payer_name_of(other)


async def test_the_migration_encrypts_existing_names_and_back(settings: Settings) -> None:
    assert settings.database.url
    name = f"paygate_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(settings.database.url)
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(settings.database.url).set(database=name).render_as_string(hide_password=False)
    scratch = create_engine(url)
    agency_id, bill_ids = uuid.uuid4(), [uuid.uuid4() for _ in range(3)]
    names = ["张三", "欧阳娜娜", "某某科技有限公司"]
    attempt_id, receipt_id, note_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    note_content = json.dumps({"main": {"payer": {"name": names[0]}}}, ensure_ascii=False).encode()
    try:
        await asyncio.to_thread(migrate.upgrade, url, "0013")
        async with scratch.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO agencies (id, credit_code, name, region_code)"
                    " VALUES (:id, '91330100MA0000000X', 'a', '330100')"
                ),
                {"id": agency_id},
            )
            for n, (bid, payer) in enumerate(zip(bill_ids, names, strict=True)):
                await conn.execute(
                    text(
                        "INSERT INTO bills (id, agency_id, agency_bill_no, request_hash,"
                        " payment_code, category, payer_type, payer_name, principal_amount,"
                        " due_date, expires_at) VALUES (:id, :agency, :no, '\\x00', :code,"
                        " 'FINE', 'PERSON', :name, 100, :due, :exp)"
                    ),
                    {
                        "id": bid,
                        "agency": agency_id,
                        "no": f"N{n}",
                        "code": f"{n:020d}",
                        "name": payer,
                        "due": date(2026, 12, 1),
                        "exp": datetime.now(UTC) + timedelta(days=1),
                    },
                )
            # And an e-note of the first bill, whose signed content names the payer.
            await conn.execute(
                text(
                    "INSERT INTO payment_attempts (id, bill_id, channel, mode, amount, expires_at)"
                    " VALUES (:a, :b, 'alipay', 'qr', 100, now())"
                ),
                {"a": attempt_id, "b": bill_ids[0]},
            )
            await conn.execute(
                text(
                    "INSERT INTO receipts (id, bill_id, attempt_id, channel, kind, amount,"
                    " paid_at, business_date, pay_mode) VALUES (:r, :b, :a, 'alipay', 'PAYMENT',"
                    " 100, now(), :day, 'ALIPAY')"
                ),
                {"r": receipt_id, "b": bill_ids[0], "a": attempt_id, "day": date(2026, 12, 1)},
            )
            await conn.execute(
                text(
                    "INSERT INTO enotes (id, kind, note_code, note_number, check_code, agency_id,"
                    " bill_id, receipt_id, total_amount, issued_at, content,"
                    " signature_algorithm, issuer_signature, issuer_key_id, issuer_cert_serial,"
                    " issuer_signed_at, supervisor_signature, supervisor_key_id,"
                    " supervisor_cert_serial, supervisor_signed_at) VALUES (:n, 'BLUE',"
                    " '33010326', '0000000001', '123456', :agency, :b, :r, 100, now(), :content,"
                    " 'SM2-SM3', '\\x01', 'K1', 'C1', now(), '\\x02', 'K2', 'C2', now())"
                ),
                {
                    "n": note_id,
                    "agency": agency_id,
                    "b": bill_ids[0],
                    "r": receipt_id,
                    "content": note_content,
                },
            )
        await asyncio.to_thread(migrate.upgrade, url)
        async with scratch.connect() as conn:
            rows = (
                await conn.execute(text("SELECT id, payer_name_enc FROM bills ORDER BY id"))
            ).all()
            (stored_note,) = (await conn.execute(text("SELECT content_enc FROM enotes"))).all()
        assert names[0].encode() not in stored_note[0]
        assert ENote(id=note_id, content_enc=stored_note[0]).content == note_content
        assert len(rows) == 3
        for bid, enc in rows:
            expected = names[bill_ids.index(bid)]
            assert expected.encode() not in enc
            bill = Bill(id=bid, payer_name_enc=enc)
            assert payer_name_of(bill) == expected

        await asyncio.to_thread(migrate.downgrade, url, "0013")
        async with scratch.connect() as conn:
            back = dict((await conn.execute(text("SELECT id, payer_name FROM bills"))).all())
            note_back = await conn.scalar(text("SELECT content FROM enotes"))
        assert back == dict(zip(bill_ids, names, strict=True))
        assert note_back == note_content
    finally:
        await scratch.dispose()
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()
