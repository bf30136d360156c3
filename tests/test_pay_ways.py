"""The notice PDF and the cashier page name only the ways to pay that are configured:
Alipay when enabled, the enabled banks' modes, kiosks when the channel is on and a device
is enabled, the agency's counter when it has an enabled card terminal."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pypdfium2
from litestar.testing import AsyncTestClient

from billing.notice import how_to_pay, render_bill_notice
from channels.alipay.config import AlipayConfig
from channels.bank import registry as bank_registry
from channels.base import PayMode
from gateway.app import create_app
from gateway.settings import KioskSettings, Settings
from gateway.state import Resources
from kernel.audit import Actor
from kiosks import devices
from payments import ways
from payments.pos import terminals
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key

ADMIN = Actor("admin", "test")
EVERY = ways.Configured(
    alipay=True,
    banks=(ways.BankFacts("105", "建设银行", True),),
    kiosk_channel=True,
    kiosk_devices=1,
    pos_terminals=1,
)


def _pdf_text(pdf: bytes) -> str:
    document = pypdfium2.PdfDocument(pdf)
    try:
        return str(document[0].get_textpage().get_text_range())
    finally:
        document.close()


def test_the_decision_offers_only_what_can_take_the_money() -> None:
    assert ways.pay_ways(EVERY).modes == ways.ORDER
    assert ways.pay_ways(EVERY).channels == ("alipay", "bank:105")
    only_alipay = ways.pay_ways(ways.Configured(alipay=True))
    assert only_alipay.modes == (PayMode.ALIPAY,)
    assert only_alipay.channels == ("alipay",)
    # A disabled bank is no way to pay, nor a kiosk channel without a device (or the
    # reverse), nor an agency without a card terminal.
    disabled_bank = replace(EVERY, banks=(ways.BankFacts("105", "建设银行", False),))
    assert not set(ways.BANK_MODES) & set(ways.pay_ways(disabled_bank).modes)
    assert ways.pay_ways(disabled_bank).channels == ("alipay",)
    assert PayMode.KIOSK not in ways.pay_ways(replace(EVERY, kiosk_devices=0)).modes
    assert PayMode.KIOSK not in ways.pay_ways(replace(EVERY, kiosk_channel=False)).modes
    assert PayMode.POS not in ways.pay_ways(replace(EVERY, pos_terminals=0)).modes
    nothing = ways.pay_ways(ways.Configured(alipay=False, kiosk_devices=3))
    assert nothing == ways.PayWays((), (), ())


def test_the_notice_sentence_for_several_one_and_no_ways() -> None:
    assert how_to_pay(("支付宝", "手机银行", "自助终端"), "某局") == (
        "请凭缴款码在缴款期限内通过支付宝、手机银行或自助终端缴款。"
    )
    assert how_to_pay(("支付宝",), "某局") == "请凭缴款码在缴款期限内通过支付宝缴款。"
    assert "请在缴款期限内联系某局" in how_to_pay((), "某局")
    pdf = render_bill_notice(
        agency_name="某市公安局交通警察支队",
        payer_name="张三",
        items=[],
        amount_fen=20_000,
        due_date=date(2026, 12, 6),
        payment_code="33012601000000123457",
        pay_url="http://127.0.0.1:8000/pay/33012601000000123457",
        ways=(),
    )
    assert "联系某市公安局交通警察支队" in _pdf_text(pdf)


def _configured(
    settings: Settings, alipay: AlipayConfig, tmp_path: Path, *, kiosk: bool
) -> Settings:
    """Alipay on, no bank from the environment, the kiosk channel on or off."""
    kiosk_settings = KioskSettings(
        acquirer_url="http://127.0.0.1:9/acquirer" if kiosk else "",
        acquirer_secret=b"k" * 32,
        sm2_key="",
        key_dir=tmp_path,
    )
    payments = replace(settings.payments, banks=(), kiosk=kiosk_settings)
    return replace(settings, alipay=alipay, payments=payments)


async def _notice_and_page(
    settings: Settings, api_key: tuple[str, str], bill: dict[str, Any]
) -> tuple[str, str]:
    async with AsyncTestClient(app=create_app(settings)) as c:
        notice = await AgencyClient(c, *api_key).get(f"/v1/bills/{bill['id']}/notice.pdf")
        assert notice.status_code == 200, notice.text
        page = await c.get(f"/pay/{bill['payment_code']}")
        assert page.status_code == 200, page.text
    return _pdf_text(notice.content), page.text


async def test_notice_and_cashier_follow_what_is_registered(
    res: Resources, settings: Settings, alipay_settings: AlipayConfig, tmp_path: Path
) -> None:
    agency = await make_agency_with_key(res)
    key = (agency.key_id, agency.secret)
    async with AsyncTestClient(app=create_app(settings)) as c:
        created = await AgencyClient(c, *key).post("/v1/bills", json=bill_body("WAYS-1"))
    assert created.status_code == 201, created.text
    bill = created.json()

    # Only Alipay: the kiosk channel is on but has no device; a disabled bank is registered.
    async with res.sessions() as s:
        await bank_registry.add(
            s,
            code="105",
            name="建设银行",
            sign_method="HMAC-SHA256",
            endpoint="http://127.0.0.1:9/banks/105/",
            actor=ADMIN,
            secret="s" * 40,
        )
        await s.flush()
        await bank_registry.set_enabled(s, "105", enabled=False, actor=ADMIN)
        await s.commit()
    alipay_only = _configured(settings, alipay_settings, tmp_path, kiosk=True)
    text, page = await _notice_and_page(alipay_only, key, bill)
    assert "请凭缴款码在缴款期限内通过支付宝缴款。" in text
    for absent in ("自助终端", "柜面", "柜台", "手机银行", "网上银行"):
        assert absent not in text, absent
        assert absent not in page, absent
    assert "支付宝 扫码支付" in page
    assert "bank:105" not in page  # no button for the disabled bank

    # The bank enabled, a kiosk device and a card terminal at this agency's counter.
    async with res.sessions() as s:
        await bank_registry.set_enabled(s, "105", enabled=True, actor=ADMIN)
        await devices.register(
            s,
            device_id="KSK-WAYS-01",
            hall="市民中心一楼大厅",
            region_code="330100",
            acquirer_merchant_id="898330170110001",
            acquirer_terminal_id="K0000001",
            owner_hall="市民中心",
            actor=ADMIN,
        )
        await terminals.register(
            s,
            merchant_id="898330170110002",
            terminal_id="P0000001",
            agency_id=agency.agency_id,
            counter="2号窗口",
            actor=ADMIN,
        )
        await s.commit()
    text, page = await _notice_and_page(alipay_only, key, bill)
    assert (
        "请凭缴款码在缴款期限内通过支付宝、手机银行、网上银行、数字人民币、自助终端、"
        "银行柜面或执收单位柜台刷卡缴款。"
    ) in text.replace("\r", "").replace("\n", "")
    assert 'name="channel" value="bank:105"' in page
    for present in ("建设银行", "柜面", "自助终端", "执收单位柜台"):
        assert present in page, present

    # The same devices with the kiosk channel off: kiosks are not offered.
    text, page = await _notice_and_page(
        _configured(settings, alipay_settings, tmp_path, kiosk=False), key, bill
    )
    assert "自助终端" not in text
    assert "自助终端" not in page
    assert "柜面" in text
