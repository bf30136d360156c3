"""The citizen cashier pages (/pay): render, errors, paying with Alipay and a bank, e-notes.

Served by our service on a real port (Alipay simulator + bank simulator behind it).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from billing import payer as bills
from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import Resources
from kernel.clock import shanghai_today
from payments.models import PaymentAttempt
from tests.alipay_e2e_support import BANK, AlipayWorld
from tests.payments_support import bill_for_test, valid_code


def _client(world: AlipayWorld) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=world.url, timeout=30)


async def test_bill_page_shows_summary_with_late_fee_masked_name_and_buttons(
    alipay_world: AlipayWorld,
) -> None:
    today = shanghai_today(datetime.now(UTC))
    async with alipay_world.res.sessions() as s:
        agency, item, bill = await bill_for_test(
            s, amount=10_000, late_fee_rule="FINE_DAILY_3PCT", due_date=today - timedelta(days=4)
        )
    async with _client(alipay_world) as c:
        r = await c.get(f"/pay/{bill.payment_code}")

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert agency.name in page
    assert item.name in page
    assert "张*" in page
    assert "张三" not in page
    assert "¥100.00" in page  # principal
    assert "滞纳金（逾期 4 天）" in page
    assert "¥12.00" in page  # 3% x 4 days
    assert "¥112.00" in page  # due today
    assert (today - timedelta(days=4)).isoformat() in page
    assert "待缴款" in page
    assert "支付宝 扫码支付" in page
    assert f"银行（{BANK}）" in page


async def test_bad_check_digit_is_a_friendly_error_without_a_lookup(
    alipay_world: AlipayWorld,
) -> None:
    code = valid_code()
    typo = code[:-2] + code[-1] + code[-2] if code[-1] != code[-2] else code[:-1] + "0"
    async with _client(alipay_world) as c:
        bad = await c.get(f"/pay/{typo}")
        unknown = await c.get(f"/pay/{code}")
        short = await c.get("/pay", params={"code": "12a"})
    assert bad.status_code == 422
    assert "缴款码校验未通过" in bad.text
    assert f'value="{typo}"' in bad.text  # the form comes back filled in to correct
    assert not await alipay_world.res.redis.exists(bills.cache_key(typo))
    assert unknown.status_code == 404
    assert "未找到该缴款码" in unknown.text
    assert short.status_code == 422


async def test_code_form_redirects_to_the_bill_page(alipay_world: AlipayWorld) -> None:
    async with _client(alipay_world) as c:
        form = await c.get("/pay")
        go = await c.get("/pay", params={"code": " 3301 0026 "})
    assert form.status_code == 200
    assert '<form method="get" action="/pay"' in form.text
    assert (go.status_code, go.headers["location"]) == (303, "/pay/33010026")


async def test_pay_with_alipay_qr_then_the_enote_link_appears(alipay_world: AlipayWorld) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=8_800)
    code = bill.payment_code
    async with _client(world) as c:
        r = await c.post(f"/pay/{code}", data={"channel": "alipay", "mode": "qr"})
        assert r.status_code == 303
        location = r.headers["location"]
        assert location.startswith(f"/pay/{code}?attempt=")
        attempt_id = location.rsplit("=", 1)[1]
        waiting = await c.get(location)
        assert waiting.status_code == 200
        assert "<svg" in waiting.text
        assert "等待付款" in waiting.text
        assert "可更换支付方式" in waiting.text
        assert f'http-equiv="refresh" content="3;url={location}"' in waiting.text
        assert f"/sim/cashier/{attempt_id}" in waiting.text

        world.buyer_pays(attempt_id)
        await world.wait_receipts(bill.id, 1)
        paid = await c.get(location)
        assert "已缴款" in paid.text
        assert "财政电子票据正在开具" in paid.text
        assert "下载 PDF" not in paid.text

        await world.run_jobs("enote.issue")
        done = await c.get(location)
        assert "下载 PDF" in done.text
        assert "refresh" not in done.text
        pdf_url = re.search(r'href="([^"]+\.pdf\?check=\d+)"', done.text)
        assert pdf_url is not None
        assert pdf_url.group(1).startswith(f"{world.url}/v1/enotes/")
        pdf = await c.get(pdf_url.group(1).removeprefix(world.url))
        assert pdf.status_code == 200
        assert pdf.content.startswith(b"%PDF")


async def test_pay_with_alipay_page_mode_round_trip_through_the_simulator_cashier(
    alipay_world: AlipayWorld,
) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=500)
    code = bill.payment_code
    async with _client(world) as c:
        r = await c.post(f"/pay/{code}", data={"channel": "alipay", "mode": "page"})
        assert r.status_code == 303
        signed = r.headers["location"]
        assert signed.startswith(world.sim.gateway_url)
        # The browser follows the signed request to Alipay, which shows its cashier.
        to_cashier = await c.get(signed)
        assert to_cashier.status_code == 302
        cashier = to_cashier.headers["location"]
        assert "/sim/cashier/" in cashier
        back = await c.post(cashier)  # the buyer confirms
        assert back.status_code == 302
        returned = back.headers["location"]
        assert returned.startswith(f"{world.url}/pay/{code}?")
        await world.wait_receipts(bill.id, 1)
        page = await c.get(returned.removeprefix(world.url))
    assert page.status_code == 200
    assert "已缴款" in page.text


async def test_bank_channel_shows_instructions(alipay_world: AlipayWorld) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=2_000)
    code = bill.payment_code
    async with _client(world) as c:
        r = await c.post(f"/pay/{code}", data={"channel": f"bank:{BANK}", "mode": "default"})
        page = await c.get(r.headers["location"])
    assert f"使用缴款码 <strong>{code}</strong> 缴纳 ¥20.00" in page.text
    assert f"银行（{BANK}）" in page.text


async def test_refused_bill_and_bad_channel_show_messages(alipay_world: AlipayWorld) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, status="CANCELLED")
        _, _, ok = await bill_for_test(s)
    async with _client(world) as c:
        cancelled = await c.get(f"/pay/{bill.payment_code}")
        bad = await c.post(f"/pay/{ok.payment_code}", data={"channel": "nope"})
    assert "已被执收单位撤销" in cancelled.text
    assert "选择支付方式" not in cancelled.text
    assert bad.status_code == 422
    assert "不支持该支付渠道" in bad.text
    async with world.res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(PaymentAttempt)) == 0


async def test_cashier_shares_the_citizen_api_rate_limit(
    res: Resources, bank_settings: Settings
) -> None:
    tight = replace(bank_settings, payments=replace(bank_settings.payments, lookup_rate_limit=3))
    async with AsyncTestClient(app=create_app(tight)) as c:
        code = valid_code()
        assert (await c.get(f"/v1/pay/{code}")).status_code == 404
        assert (await c.get(f"/pay/{code}")).status_code == 404
        assert (await c.get(f"/v1/pay/{code}")).status_code == 404
        limited = await c.get(f"/pay/{code}")
    assert limited.status_code == 429
    assert "查询过于频繁" in limited.text
