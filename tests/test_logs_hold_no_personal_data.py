"""Everything the service and the worker write while a bill is issued, paid, given its
e-note, looked up, verified and refunded — captured at the file-descriptor level, so the
server thread, the worker jobs and the e-note signing processes are all included — holds
none of the ID numbers, names, phone numbers, keys or tokens of the scenario."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from enotes.models import ENote
from gateway import logging as app_logging
from gateway.settings import LogSettings
from kernel.clock import shanghai_today
from kernel.staff import create_staff
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key, resident_id
from tests.alipay_e2e_support import AlipayWorld

NAME = "欧阳测试员"
ID_NUMBER = resident_id("11010519491231002")
PHONE = "13912345678"


def _forms(secret: str) -> set[str]:
    """A secret as it may appear in a log line: itself, and JSON-escaped (ensure_ascii)."""
    return {secret, json.dumps(secret)[1:-1]}


def _pem_body(path: Path) -> list[str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("-----")]
    return ["".join(lines), *(ln for ln in lines if len(ln) >= 16)]


@pytest.fixture
def debug_logs() -> Iterator[None]:
    """Every level the service can write at, as JSON lines (the production format)."""
    app_logging.configure(LogSettings(level="DEBUG", json=True))
    yield
    app_logging.configure(LogSettings(level="INFO", json=True))


async def test_payment_refund_and_enote_logs_hold_no_personal_data_or_secrets(
    alipay_world: AlipayWorld, capfd: pytest.CaptureFixture[str], debug_logs: None
) -> None:
    world = alipay_world
    agency = await make_agency_with_key(world.res)
    async with world.res.sessions() as s:
        _, staff_token = await create_staff(s, name=f"wang-{uuid.uuid4().hex[:6]}", role="finance")
        await s.commit()
    capfd.readouterr()  # only what the scenario makes
    today = shanghai_today(datetime.now(UTC))

    async with httpx.AsyncClient(base_url=world.url, timeout=30) as c:
        api = AgencyClient(c, agency.key_id, agency.secret)  # type: ignore[arg-type]
        hook = await api.request(
            "PUT", "/v1/webhooks/endpoint", json={"url": "http://127.0.0.1:9/hook"}
        )
        assert hook.status_code == 200, hook.text
        webhook_secret = hook.json()["secret"]
        body = bill_body(payer_name=NAME, payer_id=ID_NUMBER)
        body["payer"]["phone"] = PHONE
        r = await api.post("/v1/bills", json=body)
        assert r.status_code == 201, r.text
        bill_id, code = r.json()["id"], r.json()["payment_code"]
        search = await api.post("/v1/bills/search", json={"payer_id": ID_NUMBER})
        assert search.json()["items"][0]["payer"]["name"] == NAME
        assert (await api.get(f"/v1/bills/{bill_id}/notice.pdf")).status_code == 200

        # The citizen pays at the cashier with Alipay.
        assert (await c.get(f"/pay/{code}")).status_code == 200
        started = await c.post(f"/pay/{code}", data={"channel": "alipay", "mode": "qr"})
        attempt_id = started.headers["location"].rsplit("=", 1)[1]
        world.buyer_pays(attempt_id)
        await world.wait_receipts(uuid.UUID(bill_id), 1)
        await world.run_jobs()  # the worker: e-note, webhooks, recovery
        paid = await c.get(f"/pay/{code}", params={"attempt": attempt_id})
        assert "下载 PDF" in paid.text

        # The payer's lookup with the name; verification and the PDF by check code.
        notes = await c.post("/v1/enotes/lookup", json={"payment_code": code, "payer_name": NAME})
        assert notes.status_code == 200, notes.text
        note = notes.json()[0]
        check = note["check_code"]
        verify = await c.get(
            "/v1/enotes/verify",
            params={"code": note["note_code"], "number": note["note_number"], "check": check},
        )
        assert verify.json()["payer"]["name"] == NAME
        assert (await c.get(note["pdf_url"].removeprefix(world.url))).status_code == 200

        # The agency refunds; the worker pays it back and red-letters the note.
        refund = await api.post(
            f"/v1/bills/{bill_id}/refunds", json={"amount": 100, "reason": "多缴退付"}
        )
        assert refund.status_code == 201, refund.text
        await world.run_jobs()
        await world.run_jobs()
        finance = await c.get(
            "/v1/settlement/totals",
            params={"group_by": "channel", "from": str(today), "to": str(today)},
            headers={"authorization": f"Bearer {staff_token}"},
        )
        assert finance.status_code == 200, finance.text

    async with world.res.sessions() as s:
        kinds = sorted((await s.scalars(select(ENote.kind))).all())
    assert "RED" in kinds, kinds  # the refund went through and red-lettered the note

    out, err = capfd.readouterr()
    written = out + err
    assert '"event"' in written, "the scenario should have logged something"

    crypto = world.res.settings.crypto
    enote_dir = world.res.settings.enote.key_dir
    alipay_key = world.settings.alipay.app_private_key_path
    secrets = {
        "payer name": _forms(NAME),
        "ID number": _forms(ID_NUMBER) | {ID_NUMBER[:17]},
        "phone": _forms(PHONE),
        "agency secret": _forms(agency.secret),
        "webhook secret": _forms(webhook_secret),
        "staff token": _forms(staff_token),
        "check code in a URL": {f"check={check}"},
        "data key": {crypto.data_key or crypto.key_file.read_text().strip()},
        "hash key": {crypto.hash_key or crypto.hash_key_file.read_text().strip()},
        "e-note issuer key": set(_pem_body(enote_dir / "issuer.pem")),
        "e-note supervisor key": set(_pem_body(enote_dir / "supervisor.pem")),
        "Alipay app key": set(_pem_body(alipay_key)) if alipay_key else set(),
    }
    leaks = {
        what: sorted(f for f in forms if f and f in written) for what, forms in secrets.items()
    }
    assert {k: v for k, v in leaks.items() if v} == {}, _context(written, leaks)


def _context(written: str, leaks: dict[str, list[str]]) -> str:
    lines = []
    for found in leaks.values():
        for secret in found:
            lines += [ln for ln in written.splitlines() if secret in ln][:3]
    return "\n".join(re.sub(r"\s+", " ", ln)[:400] for ln in lines)
