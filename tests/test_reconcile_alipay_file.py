"""Reconciliation of a real-layout Alipay trade bill (GBK zip, TAB-suffixed cells, refund
rows, summary lines) through the production parser, with the auto-heal bound to the real
exactly-once confirmation path."""

from __future__ import annotations

import hashlib
import io
import uuid
import zipfile
from datetime import datetime

import pytest
from sqlalchemy import func, select

import ledger
from channels.alipay.transforms import parse_statement
from channels.money import fen_to_yuan
from gateway.state import Resources
from payments.models import Receipt
from settlement.models import Discrepancy
from settlement.reconcile import exactly_once_confirm, reconcile
from tests.factories import make_agency, make_bill, make_item
from tests.settle_helpers import (
    DAY,
    at,
    ledger_verified,  # noqa: F401 - fixture, used below
    make_attempt,
    paid_bill,
)

pytestmark = pytest.mark.usefixtures("ledger_verified")

HEADER = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,"
    "终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,"
    "商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,"
    "退款批次号/请求号,服务费（元）,分润（元）,备注"
)


def _row(
    trade_no: str,
    order: str,
    kind: str,
    *,
    amount: int,
    fee: int,
    when: datetime,
    refund_no: str = "",
) -> str:
    ts = when.strftime("%Y-%m-%d %H:%M:%S")
    cells = [
        trade_no,
        order,
        kind,
        "非税缴款",
        ts,
        ts,
        "",
        "",
        "",
        "",
        "buyer@example.com",
        fen_to_yuan(amount),
        fen_to_yuan(amount),
        "0.00",
        "0.00",
        "0.00",
        "0.00",
        "0.00",
        "",
        "0.00",
        "0.00",
        refund_no,
        fen_to_yuan(-fee),
        "0.00",
        "",
    ]
    return ",".join(f"{c}\t" for c in cells)  # Alipay pads every cell with a TAB


class _GbkName(zipfile.ZipInfo):
    """Member names as Alipay writes them: plain GBK bytes, no UTF-8 flag."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:
        return self.filename.encode("gbk"), self.flag_bits


def _bill_zip(rows: list[str]) -> bytes:
    text = "\r\n".join(
        [
            "#支付宝业务明细查询",
            "#账号：[20880000000000000156]",
            f"#起始日期：[{DAY:%Y年%m月%d日} 00:00:00]   终止日期：[{DAY:%Y年%m月%d日} 23:59:59]",
            "#-----------------------------------------业务明细列表----------------------------------------",
            HEADER,
            *rows,
            "#-----------------------------------------业务明细列表结束------------------------------------",
            "#交易合计：3笔，商家实收共200.00元，商家优惠共0.00元",
            "#退款合计：1笔，商家实收退款共-10.00元，商家优惠退款共0.00元",
            f"#导出时间：[{DAY:%Y年%m月%d日} 09:00:00]",
        ]
    )
    buf = io.BytesIO()
    stem = f"20880000000000000156_{DAY:%Y%m%d}"
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in (
            (f"{stem}_业务明细.csv", text),
            (f"{stem}_业务明细(汇总).csv", "#支付宝业务汇总查询\r\n合计,3"),
        ):
            zf.writestr(_GbkName(name), body.encode("gbk"))
    return buf.getvalue()


async def test_gbk_alipay_bill_matches_heals_and_parks(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        _, _, paid = await paid_bill(s, agency, item, 10_000)
        lost_bill = await make_bill(s, agency, [(item, 1, 8_000)])
        lost = await make_attempt(s, lost_bill, 8_000)  # the notification never came
        await s.commit()
    assert paid.channel_trade_no
    stranger = uuid.uuid4().hex
    raw = _bill_zip(
        [
            _row(
                paid.channel_trade_no,
                str(paid.attempt_id),
                "交易",
                amount=10_000,
                fee=60,
                when=at(hh=9),
            ),
            _row(
                "2026112022000000000002", str(lost.id), "交易", amount=8_000, fee=48, when=at(hh=11)
            ),
            _row("2026112022000000000003", stranger, "交易", amount=2_000, fee=12, when=at(hh=12)),
            _row(
                paid.channel_trade_no,
                str(paid.attempt_id),
                "退款",
                amount=-1_000,
                fee=0,
                when=at(hh=14),
                refund_no="R-unknown",
            ),
        ]
    )
    lines = parse_statement(raw)
    assert [ln.amount for ln in lines] == [10_000, 8_000, 2_000, -1_000]
    confirm = exactly_once_confirm(res.payment_context())
    digest = hashlib.sha256(raw).digest()
    first = await reconcile(
        res.sessions,
        channel="alipay",
        day=DAY,
        lines=lines,
        content_hash=digest,
        fee_rate_bp=60,
        confirm=confirm,
    )
    assert first.healed == 1
    async with res.sessions() as s:
        # The lost payment was confirmed through the exactly-once path: one PAYMENT receipt.
        healed = (await s.scalars(select(Receipt).where(Receipt.attempt_id == lost.id))).all()
        assert [(r.kind, r.amount) for r in healed] == [("PAYMENT", 8_000)]
        found = {
            (d.klass, d.status, d.action) for d in (await s.scalars(select(Discrepancy))).all()
        }
    assert ("CHANNEL_ONLY", "RESOLVED", "auto_confirmed") in found
    # Money we cannot attribute is parked in suspense, waiting for a person.
    assert any(k == "CHANNEL_ONLY" and st == "OPEN" for k, st, _ in found)
    # The same file sent again is recognised and not counted twice.
    again = await reconcile(
        res.sessions,
        channel="alipay",
        day=DAY,
        lines=parse_statement(raw),
        content_hash=digest,
        fee_rate_bp=60,
        confirm=confirm,
    )
    assert again.duplicate_file
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 2


async def test_alipay_fees_as_the_bill_shows_them_match_the_configured_rate(
    res: Resources,
) -> None:
    """Alipay's bill shows the fee it deducted as a negative 服务费: at the configured rate
    (PAYGATE_FEE_RATES=alipay:60) that is no fee mismatch, and the fee is an expense."""
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        paid = [(await paid_bill(s, agency, item, amount))[2] for amount in (10_000, 12_345)]
        await s.commit()
    rows = []
    for r in paid:
        assert r.channel_trade_no
        fee = (r.amount * 60 + 5000) // 10000
        rows.append(
            _row(r.channel_trade_no, str(r.attempt_id), "交易", amount=r.amount, fee=fee, when=at())
        )
    assert "-0.60\t" in rows[0].split(",")  # as Alipay writes it
    raw = _bill_zip(rows)
    result = await reconcile(
        res.sessions, channel="alipay", day=DAY, lines=parse_statement(raw), fee_rate_bp=60
    )
    assert result.counts["matched"] == 2
    assert result.counts["fees"] == 60 + 74
    async with res.sessions() as s:
        assert (await s.scalars(select(Discrepancy))).all() == []
        assert (await ledger.balances(s))["channel_fees:alipay"] == 60 + 74
