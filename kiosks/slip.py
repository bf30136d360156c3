"""What a kiosk prints for a receipt (缴款凭证): text lines and one QR.

The QR is the fiscal e-note's verification link when the note exists already, else the
payer's page for the bill (/pay/<payment code>), which lists the note once it is issued.
This room sits above `enotes` for exactly this reason.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from billing.payer import mask_name
from billing.personal import open_payer_name
from channels.kiosk.transforms import Slip, format_time
from channels.money import fen_to_yuan
from enotes.service import verify_url
from kernel.capitals import rmb_capitals
from payments.confirm import DriverStatement

__all__ = [
    "SlipFacts",
    "slip",
    "slip_of",
]

_SLIP = DriverStatement.of(
    "SELECT r.id, r.kind, r.amount, r.late_fee_amount, r.paid_at, r.channel_trade_no,"
    " b.payment_code, b.id AS bill_id, b.payer_name_enc, a.name AS agency_name,"
    " n.note_code, n.note_number, n.check_code"
    " FROM receipts AS r JOIN bills AS b ON b.id = r.bill_id"
    " JOIN agencies AS a ON a.id = b.agency_id"
    " LEFT JOIN enotes AS n ON n.receipt_id = r.id AND n.refund_id IS NULL"
    " WHERE r.id = :receipt"
)
"""The receipt, its bill and agency, and its e-note if issued: one read on the driver
connection (no BEGIN/ROLLBACK around it)."""

_METHODS = {"CARD": "银行卡", "QR": "扫码"}


@dataclass(frozen=True, slots=True)
class SlipFacts:
    """What a slip prints of a receipt, its bill and its e-note."""

    receipt_id: uuid.UUID
    kind: str
    amount: int
    late_fee_amount: int
    paid_at: datetime
    channel_trade_no: str | None
    payment_code: str
    bill_id: uuid.UUID
    payer_name_enc: bytes
    agency_name: str
    note_code: str | None = None
    note_number: str | None = None
    check_code: str | None = None


async def slip(
    engine: AsyncEngine,
    receipt_id: uuid.UUID,
    *,
    public_url: str,
    device_id: str,
    seq: int,
    method: str,
    card: str | None = None,
    reprint: bool = False,
) -> Slip | None:
    """The slip of a recorded receipt, read afresh (a reprint, a repeat)."""
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        rows = await _SLIP.fetch(driver, {"receipt": receipt_id})
    if not rows:
        return None
    r = rows[0]
    facts = SlipFacts(
        receipt_id=r["id"],
        kind=r["kind"],
        amount=r["amount"],
        late_fee_amount=r["late_fee_amount"],
        paid_at=r["paid_at"],
        channel_trade_no=r["channel_trade_no"],
        payment_code=r["payment_code"],
        bill_id=r["bill_id"],
        payer_name_enc=r["payer_name_enc"],
        agency_name=r["agency_name"],
        note_code=r["note_code"],
        note_number=r["note_number"],
        check_code=r["check_code"],
    )
    return slip_of(
        facts,
        public_url=public_url,
        device_id=device_id,
        seq=seq,
        method=method,
        card=card,
        reprint=reprint,
    )


def slip_of(
    row: SlipFacts,
    *,
    public_url: str,
    device_id: str,
    seq: int,
    method: str,
    card: str | None = None,
    reprint: bool = False,
) -> Slip:
    """The slip of these facts (a live confirmation has them in hand: no read)."""
    lines = [
        "非税收入缴款凭证" + ("（补打）" if reprint else ""),
        f"执收单位：{row.agency_name}",
        f"缴款码：{row.payment_code}",
        f"缴款人：{mask_name(open_payer_name(row.bill_id, row.payer_name_enc))}",
        f"金额：¥{fen_to_yuan(row.amount)}",
        f"大写：{rmb_capitals(row.amount)}",
    ]
    if row.late_fee_amount:
        lines.append(f"其中滞纳金：¥{fen_to_yuan(row.late_fee_amount)}")
    paid_by = _METHODS.get(method, method) + (f" {card}" if card else "")
    lines += [
        f"支付方式：{paid_by}",
        f"收单参考号：{row.channel_trade_no}",
        f"终端：{device_id}  流水号：{seq}",
        f"缴款时间：{format_time(row.paid_at)}",
    ]
    if row.kind == "PAYMENT":
        lines.append("状态：已缴款")
    else:
        lines.append("状态：该缴款书已缴清，本笔款项将原路退回")
    if row.note_code is not None and row.note_number is not None and row.check_code is not None:
        qr_kind, qr = (
            "ENOTE",
            verify_url(public_url, row.note_code, row.note_number, row.check_code),
        )
        lines.append(f"电子票据：{row.note_code}-{row.note_number} 校验码 {row.check_code}")
    else:
        qr_kind, qr = "LINK", f"{public_url}/pay/{row.payment_code}"
        lines.append("电子票据开具后扫码查看")
    return Slip(
        receipt_id=row.receipt_id, lines=tuple(lines), qr_kind=qr_kind, qr=qr, reprint=reprint
    )
