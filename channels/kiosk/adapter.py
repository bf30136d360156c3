"""The kiosk channel's calls: we ask the kiosks' acquirer about a charge and refund one.
(The kiosks' own messages to us are the inbound half, `channels.kiosk.inbound`.)

HTTP failures towards the acquirer map to the three channel errors in the shared
`channels.acquirer.AcquirerClient` only.

The acquirer knows a kiosk charge by our order id (the kiosk passes it as the merchant
order number) and by its own reference; refunds go back through it, keyed by our refund id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date

import httpx

from channels.acquirer import AcquirerClient, HmacScheme, refund_result
from channels.base import (
    Ack,
    CreatedPayment,
    CreatePayment,
    InvalidNotification,
    Notification,
    PaymentStatus,
    RefundRequest,
    RefundResult,
    RefundState,
    Rejected,
    StatementKind,
    StatementLine,
    TradeState,
)
from channels.kiosk import transforms as t
from channels.money import fen_to_yuan, yuan_to_fen

__all__ = [
    "NAME",
    "KioskAdapter",
    "acquirer_headers",
    "acquirer_verify",
]

NAME = "kiosk"
ACQUIRER_NOT_FOUND = "25"


_TRADE_STATES = {
    "SUCCESS": TradeState.SUCCEEDED,
    "NOT_FOUND": TradeState.NOT_FOUND,
    "REVERSED": TradeState.CLOSED,
    "VOIDED": TradeState.CLOSED,
}
_REFUND_STATES = {
    "SUCCESS": RefundState.SUCCEEDED,
    "FAILED": RefundState.FAILED,
    "NOT_FOUND": RefundState.NOT_FOUND,
}


def _scheme(secret: bytes) -> HmacScheme:
    """The kiosk canonical string with the platform as the device `kiosk`."""
    return HmacScheme(
        prefix="X-Kiosk", caller_header="Device", version=t.VERSION, caller=NAME, secret=secret
    )


def acquirer_headers(secret: bytes, operation: str, body: bytes) -> dict[str, str]:
    """Our requests to the acquirer (and its answers, operation "RESPONSE:<op>"), HMAC under
    the acquirer's secret."""
    return _scheme(secret).headers(operation, body)


def acquirer_verify(secret: bytes, operation: str, headers: Mapping[str, str], body: bytes) -> bool:
    return _scheme(secret).verify(operation, headers, body)


class KioskAdapter:
    """All kiosks, one channel: `kiosk`."""

    name = NAME
    payer_facing = False
    """A payer cannot start a kiosk payment from the cashier: the device opens it."""

    def __init__(
        self,
        *,
        acquirer_url: str,
        acquirer_secret: bytes,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._acquirer = AcquirerClient(
            label="kiosk acquirer",
            base_url=acquirer_url,
            scheme=_scheme(acquirer_secret),
            timeout_s=timeout_s,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._acquirer.aclose()

    # ------------------------------------------------------------------ ChannelAdapter

    async def create_payment(self, req: CreatePayment) -> CreatedPayment:
        del req
        raise Rejected("kiosk payments are opened by the device", code="device_only")

    async def query_payment(self, attempt_id: str) -> PaymentStatus:
        try:
            data = await self._acquirer.call("query", {"order_id": attempt_id})
        except Rejected as exc:
            if exc.code == ACQUIRER_NOT_FOUND:
                return PaymentStatus(attempt_id=attempt_id, state=TradeState.NOT_FOUND)
            raise
        amount, paid_at = data.get("amount"), data.get("paid_at")
        return PaymentStatus(
            attempt_id=attempt_id,
            state=_TRADE_STATES.get(str(data.get("state", "")), TradeState.PENDING),
            channel_trade_no=data.get("reference"),
            amount=yuan_to_fen(amount) if amount else None,
            paid_at=t.parse_time(paid_at) if paid_at else None,
        )

    async def close_payment(self, attempt_id: str) -> None:
        """Nothing to close at the acquirer for an order it never charged; a charged one is
        Rejected so the caller queries and confirms it."""
        status = await self.query_payment(attempt_id)
        if status.state in (TradeState.SUCCEEDED, TradeState.PENDING):
            raise Rejected("the acquirer charged this order", code="charged")

    async def refund(self, req: RefundRequest) -> RefundResult:
        data = await self._acquirer.call(
            "refund",
            {
                "refund_id": req.refund_id,
                "order_id": req.attempt_id,
                "reference": req.channel_trade_no,
                "amount": fen_to_yuan(req.amount),
                "reason": req.reason,
            },
        )
        return refund_result(req.refund_id, data, states=_REFUND_STATES, parse_time=t.parse_time)

    async def query_refund(self, refund_id: str, attempt_id: str) -> RefundResult:
        del attempt_id  # the acquirer finds a refund by its idempotency key
        try:
            data = await self._acquirer.call("refund_query", {"refund_id": refund_id})
        except Rejected as exc:
            if exc.code == ACQUIRER_NOT_FOUND:
                return RefundResult(refund_id=refund_id, state=RefundState.NOT_FOUND)
            raise
        return refund_result(refund_id, data, states=_REFUND_STATES, parse_time=t.parse_time)

    def parse_notification(self, body: bytes, content_type: str) -> Notification:
        del body, content_type
        raise InvalidNotification(
            "kiosk messages arrive on the kiosk operations", code="use_kiosk_endpoint"
        )

    def ack(self) -> Ack:
        return Ack(body=b'{"code":"0000","msg":"ok"}', media_type="application/json")

    async def fetch_statement(self, day: date) -> bytes:
        resp = await self._acquirer.send("statement", {"date": day.isoformat()})
        return resp.content

    def parse_statement(self, raw: bytes) -> Iterable[StatementLine]:
        """The acquirer's day file: JSON lines of {reference, order_id, kind, amount, fee,
        time, refund_id}."""
        for line in raw.decode().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            kind = StatementKind.REFUND if row["kind"] == "REFUND" else StatementKind.PAYMENT
            yield StatementLine(
                channel_trade_no=row["reference"],
                attempt_id=row["order_id"],
                kind=kind,
                amount=yuan_to_fen(row["amount"]),
                fee=yuan_to_fen(row.get("fee") or "0.00"),
                occurred_at=t.parse_time(row["time"]),
                refund_id=row.get("refund_id") or None,
            )
