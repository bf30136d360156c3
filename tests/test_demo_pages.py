"""The demo's devices as a person uses them, in a real browser (Chromium through Playwright):
a demo bill paid at the kiosk's screen and another at the card terminal's page.

Everything behind the pages is real: the demo seed registers the kiosk and the terminal
and hands their keys over in the files `make run` gives its simulators; the kiosk
simulator and the terminal page talk to our service over HTTP; PostgreSQL and Redis are
real. The outcome is read from the database, and from the slip and voucher on screen.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright
from sqlalchemy import select

from billing.models import Bill
from channels.pos import simulator_acquirer
from channels.pos.terminal_page import create_app as create_terminal_page
from gateway.demo import KIOSK_DEVICE, KIOSK_DEVICES_FILE, POS_TERMINALS_FILE, seed
from gateway.procs import free_port
from gateway.settings import Settings
from gateway.state import Resources
from payments.models import Receipt
from tests.servers import ServerThread

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium (`apt-get install chromium`; .ci/run installs it): Playwright drives
it as it is, nothing is downloaded."""
HAVE_CHROMIUM = CHROMIUM.exists()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        # On a developer's machine without it the rest of the suite still runs; CI (which
        # installs it in .ci/run) must never pass these tests by skipping them.
        if os.environ.get("CI"):
            pytest.fail("CI needs /usr/bin/chromium (apt-get install chromium)")
        pytest.skip("needs /usr/bin/chromium")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        await browser.close()


@pytest.fixture
async def demo(
    *,
    res: Resources,
    kiosk_settings: Settings,
    kiosk_gateway: ServerThread,
    kiosk_simulator: ServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Resources, str]]:
    """The demo seeded as `make run` seeds it (the kiosk channel on, our service's URL as
    the public one), its kiosk loaded into the simulator from the seed's file; yields the
    resources and the terminal page's URL, served from the seed's terminals file with the
    terminals' acquirer in the same process (`paygate simulator pos-terminal
    --with-acquirer`, as `make run` starts it)."""
    monkeypatch.chdir(tmp_path)  # the seed's key files land here, not in the checkout
    server = replace(kiosk_settings.server, public_url=kiosk_gateway.url)
    demo_res = replace(res, settings=replace(kiosk_settings, server=server))
    await seed(demo_res)
    await _load_kiosks(kiosk_simulator.url)
    port = free_port()
    terminals = [
        x | {"acquirer_url": f"http://127.0.0.1:{port}"}
        for x in json.loads(POS_TERMINALS_FILE.read_text())
    ]
    acquirer = simulator_acquirer.create_app(b"demo-page-test-acquirer")
    with ServerThread(create_terminal_page(terminals, acquirer), port) as page_server:
        yield demo_res, page_server.url


async def _load_kiosks(simulator_url: str) -> list[dict[str, object]]:
    """Load the seed's kiosks into the simulator, as `paygate simulator kiosk --devices`."""
    devices: list[dict[str, object]] = json.loads(KIOSK_DEVICES_FILE.read_text())
    async with httpx.AsyncClient(timeout=30) as c:
        for device in devices:
            r = await c.post(f"{simulator_url}/control/devices", json=device)
            r.raise_for_status()
    return devices


async def _bill(res: Resources, agency_bill_no: str) -> Bill:
    async with res.sessions() as s:
        bill = await s.scalar(select(Bill).where(Bill.agency_bill_no == agency_bill_no))
        assert bill is not None
        return bill


async def _paid_with(res: Resources, bill: Bill) -> tuple[str, list[tuple[str, str, str, int]]]:
    async with res.sessions() as s:
        status = await s.scalar(select(Bill.status).where(Bill.id == bill.id))
        receipts = (
            await s.execute(
                select(Receipt.kind, Receipt.channel, Receipt.pay_mode, Receipt.amount).where(
                    Receipt.bill_id == bill.id
                )
            )
        ).all()
    return str(status), [tuple(r) for r in receipts]  # type: ignore[misc]


async def _card_sales(terminal_url: str) -> list[tuple[int, str]]:
    """What the terminals' acquirer booked, served by the page's process."""
    async with httpx.AsyncClient() as c:
        sales = (await c.get(f"{terminal_url}/control/state")).json()["sales"]
    return [(x["amount"], x["state"]) for x in sales]


async def _text(page: Page, selector: str) -> str:
    return await page.locator(selector).inner_text()


async def test_demo_bill_paid_at_the_kiosk_screen(
    demo: tuple[Resources, str],
    browser: Browser,
    kiosk_simulator: ServerThread,
) -> None:
    res, _ = demo
    bill = await _bill(res, "DEMO-KS-0001")  # the exam fee: a kiosk takes any agency's bill
    page = await browser.new_page()
    await page.goto(f"{kiosk_simulator.url}/kiosk/{KIOSK_DEVICE}")
    # A scanner types what the notice's QR code holds: the bill's URL with its payment code.
    await page.get_by_label("请输入或扫描缴款码").fill(
        f"{res.settings.server.public_url}/pay/{bill.payment_code}"
    )
    await page.get_by_role("button", name="查询 Look up").click()
    assert await _text(page, "#due") == "¥120.00"

    await page.get_by_role("button", name="银行卡支付 Pay by card").click()
    slip = await _text(page, "#slip")
    assert "缴款码：" + bill.payment_code in slip
    assert "金额：¥120.00" in slip
    assert "状态：已缴款" in slip
    assert "流水号：1" in slip
    assert await page.locator("svg").count() == 1  # the slip's QR code

    await page.get_by_role("button", name="补打 Reprint").click()
    reprint = await _text(page, "#slip")
    assert "（补打）" in reprint
    assert bill.payment_code in reprint

    status, receipts = await _paid_with(res, bill)
    assert status == "PAID"
    assert receipts == [("PAYMENT", "kiosk", "KIOSK", 12_000)]
    async with httpx.AsyncClient() as c:
        charges = (await c.get(f"{kiosk_simulator.url}/control/acquirer")).json()["charges"]
    assert [(x["payment_code"], x["amount"]) for x in charges if x["device_id"] == KIOSK_DEVICE][
        -1
    ] == (bill.payment_code, 12_000)

    # Paid: a second look-up is refused on screen and nothing more is charged.
    await page.get_by_role("link", name="← 首页 Home").click()
    await page.get_by_label("请输入或扫描缴款码").fill(bill.payment_code)
    await page.get_by_role("button", name="查询 Look up").click()
    assert "已缴款" in await _text(page, "[role=alert]")
    await page.close()


async def test_demo_bill_paid_at_the_card_terminal_page(
    demo: tuple[Resources, str], browser: Browser
) -> None:
    res, terminal_url = demo
    bill = await _bill(res, "DEMO-JJ-0001")  # the terminal's agency: the traffic police
    page = await browser.new_page()
    await page.goto(f"{terminal_url}/pos")  # one terminal: straight to its page
    await page.get_by_label("缴款码 Payment code").fill(bill.payment_code)
    await page.get_by_role("button", name="查询 Inquiry").click()
    assert await _text(page, "#due") == "¥200.00"
    assert await page.get_by_label("刷卡金额 Amount (元)").input_value() == "200.00"

    await page.get_by_role("button", name="刷卡消费 Card sale").click()
    voucher = await _text(page, "#voucher")
    assert "交易类型 TXN TYPE: 消费 SALE" in voucher
    assert f"缴款码 PAYMENT CODE: {bill.payment_code}" in voucher
    assert "金额 AMOUNT: RMB 200.00" in voucher
    assert "缴款状态 BILL: PAID" in voucher
    status, receipts = await _paid_with(res, bill)
    assert status == "PAID"
    assert receipts == [("PAYMENT", "pos", "POS", 20_000)]
    assert await _card_sales(terminal_url) == [(20_000, "APPROVED")]

    # Void the last sale from the terminal's home page: the bill is unpaid again.
    await page.get_by_role("link", name="← 首页 Home").click()
    await page.get_by_role("button", name="撤销 Void last sale").click()
    assert "交易类型 TXN TYPE: 撤销 VOID" in await _text(page, "#voucher")
    status, receipts = await _paid_with(res, bill)
    assert status == "ISSUED"
    assert receipts == [("REVERSED", "pos", "POS", 20_000)]
    assert await _card_sales(terminal_url) == [(20_000, "VOIDED")]

    # Pay it again, then settle: the batch balances (one sale voided, one standing).
    await page.get_by_role("link", name="← 首页 Home").click()
    await page.get_by_label("缴款码 Payment code").fill(bill.payment_code)
    await page.get_by_role("button", name="查询 Inquiry").click()
    await page.get_by_role("button", name="刷卡消费 Card sale").click()
    assert "缴款状态 BILL: PAID" in await _text(page, "#voucher")
    await page.get_by_role("link", name="← 首页 Home").click()
    await page.get_by_role("button", name="结算 Settle batch").click()
    assert "结算平 Balanced" in await _text(page, "[role=status]")
    status, _ = await _paid_with(res, bill)
    assert status == "PAID"
    await page.close()


async def test_a_restarted_demo_has_a_working_kiosk_and_a_bill_of_each_kind_to_pay(
    demo: tuple[Resources, str],
    kiosk_simulator: ServerThread,
) -> None:
    """`make run` again: the kiosk gets a new key (the old one is refused) and goes on from
    its last sequence number, and a paid demo bill is followed by a new one to pay."""
    res, _ = demo
    paid = await _bill(res, "DEMO-JJ-0001")
    gateway = res.settings.server.public_url
    async with httpx.AsyncClient(timeout=60) as c:
        control = f"{kiosk_simulator.url}/control/{KIOSK_DEVICE}"
        first = (
            await c.post(
                f"{control}/pay", json={"payment_code": paid.payment_code, "gateway_url": gateway}
            )
        ).json()
        assert first["confirms"][-1]["data"]["disposition"] == "PAID"
        assert first["seq"] == 1
        old_key = json.loads(KIOSK_DEVICES_FILE.read_text())

        lines = await seed(res)
        devices = await _load_kiosks(kiosk_simulator.url)
        assert devices[0]["next_seq"] == 2
        assert devices[0]["secret"] != old_key[0]["secret"]
        again = await _bill(res, "DEMO-JJ-0001-2")
        assert f"demo bill DEMO-JJ-0001-2: payment code {again.payment_code}" in lines
        assert not any(paid.payment_code in line for line in lines)
        unpaid = await _bill(res, "DEMO-JJ-0002")  # not paid: the same bill again
        assert f"demo bill DEMO-JJ-0002: payment code {unpaid.payment_code}" in lines

        second = (
            await c.post(
                f"{control}/pay", json={"payment_code": again.payment_code, "gateway_url": gateway}
            )
        ).json()
        assert second["seq"] == 2
        assert second["confirms"][-1]["code"] == "0000"
        assert second["confirms"][-1]["data"]["disposition"] == "PAID"
        assert (await _paid_with(res, again))[0] == "PAID"

        await c.post(f"{kiosk_simulator.url}/control/devices", json=old_key[0])
        stale = (await c.post(f"{control}/heartbeat", json={"gateway_url": gateway})).json()
        assert stale["code"] == "9001"  # the key of the previous start verifies nothing
