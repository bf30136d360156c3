"""What a kiosk prints for a receipt (缴款凭证): text lines and one QR.

The QR is the fiscal e-note's verification link when the note exists already, else the
payer's page for the bill (/pay/<payment code>), which lists the note once it is issued.
This room sits above `enotes` for exactly this reason.
"""

from __future__ import annotations

import uuid
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.models import Agency, Bill
from billing.payer import mask_name
from billing.personal import open_payer_name
from channels.kiosk.transforms import Slip, format_time
from channels.money import fen_to_yuan
from enotes.models import ENote
from enotes.service import verify_url
from kernel.capitals import rmb_capitals
from payments.models import Receipt

__all__ = [
    "slip",
]

_R = cast(Table, Receipt.__table__)
_B = cast(Table, Bill.__table__)
_AG = cast(Table, Agency.__table__)
_N = cast(Table, ENote.__table__)

_SLIP = (
    select(
        _R.c.id,
        _R.c.kind,
        _R.c.amount,
        _R.c.late_fee_amount,
        _R.c.paid_at,
        _R.c.channel_trade_no,
        _B.c.payment_code,
        _B.c.id.label("bill_id"),
        _B.c.payer_name_enc,
        _AG.c.name.label("agency_name"),
        _N.c.note_code,
        _N.c.note_number,
        _N.c.check_code,
    )
    .select_from(
        _R.join(_B, _B.c.id == _R.c.bill_id)
        .join(_AG, _AG.c.id == _B.c.agency_id)
        .outerjoin(_N, (_N.c.receipt_id == _R.c.id) & _N.c.refund_id.is_(None))
    )
    .where(_R.c.id == bindparam("p_receipt"))
)

_METHODS = {"CARD": "银行卡", "QR": "扫码"}


async def slip(
    conn: AsyncConnection,
    receipt_id: uuid.UUID,
    *,
    public_url: str,
    device_id: str,
    seq: int,
    method: str,
    card: str | None = None,
    reprint: bool = False,
) -> Slip | None:
    row = (await conn.execute(_SLIP, {"p_receipt": receipt_id})).first()
    if row is None:
        return None
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
    if row.note_code is not None:
        qr_kind, qr = (
            "ENOTE",
            verify_url(public_url, row.note_code, row.note_number, row.check_code),
        )
        lines.append(f"电子票据：{row.note_code}-{row.note_number} 校验码 {row.check_code}")
    else:
        qr_kind, qr = "LINK", f"{public_url}/pay/{row.payment_code}"
        lines.append("电子票据开具后扫码查看")
    return Slip(receipt_id=row.id, lines=tuple(lines), qr_kind=qr_kind, qr=qr, reprint=reprint)
