"""The bank channel (docs/channels/bank.md): our calls to the bank.

A citizen pays at the bank by payment code; the bank calls us (query, then confirm) — those
messages are parsed, verified and answered by `channels.bank.inbound.BankInbound` and
handled by the channel-agnostic `payments.inbound`. We call the bank to query a payment,
close an unconfirmed order, refund, and fetch the day-end statement. HTTP failures map to
the three channel errors in `_send` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import httpx
import structlog

from channels.bank import transforms as t
from channels.bank.signing import Signing
from channels.base import (
    Ack,
    CreatedPayment,
    CreatePayment,
    InvalidNotification,
    Notification,
    OutcomeUnknown,
    PaymentStatus,
    RefundRequest,
    RefundResult,
    Rejected,
    StatementLine,
    Unavailable,
)
from channels.money import fen_to_yuan, yuan_to_fen

__all__ = ["BankAdapter"]

log = structlog.get_logger(__name__)


class BankAdapter:
    """One bank; registered as `bank:<code>`."""

    def __init__(
        self,
        *,
        bank_code: str,
        secret: bytes | Signing,
        base_url: str,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.bank_code = bank_code
        self.name = t.channel_name(bank_code)
        self._secret = secret
        self._base = httpx.URL(base_url)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=2.0),
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def rekey(self, key: bytes | Signing, base_url: str) -> None:
        """New keys or endpoint from the bank's registration (channels.bank.registry)."""
        self._secret = key
        self._base = httpx.URL(base_url)

    # ------------------------------------------------------------------ ChannelAdapter

    async def create_payment(self, req: CreatePayment) -> CreatedPayment:
        # Bank-initiated: the payer takes the payment code to their bank; nothing to call.
        return CreatedPayment(
            instructions=(
                f"Pay {fen_to_yuan(req.amount)} yuan with this payment code in bank "
                f"{self.bank_code}'s app, online banking or at its counter."
            )
        )

    async def query_payment(self, attempt_id: str) -> PaymentStatus:
        try:
            data = await self._call("/payments/query", {"order_id": attempt_id})
        except Rejected as exc:
            if exc.code == t.ResultCode.ORDER_NOT_FOUND:
                return PaymentStatus(attempt_id=attempt_id, state=t.trade_state("NOT_FOUND"))
            raise
        paid_at = data.get("paid_at")
        amount = data.get("amount")
        try:
            mode = t.pay_mode(data.get("pay_mode"))
        except ValueError:
            mode = None  # the receipt then takes the bank's own (PayMode.BANK)
        return PaymentStatus(
            attempt_id=attempt_id,
            state=t.trade_state(str(data.get("state", ""))),
            channel_trade_no=data.get("bank_serial"),
            amount=yuan_to_fen(amount) if amount else None,
            paid_at=t.parse_time(paid_at) if paid_at else None,
            pay_mode=mode,
        )

    async def close_payment(self, attempt_id: str) -> None:
        """Tell the bank the order id is void; an already paid order is Rejected (13002)."""
        await self._call("/payments/close", {"order_id": attempt_id})

    async def refund(self, req: RefundRequest) -> RefundResult:
        data = await self._call(
            "/refunds",
            {
                "refund_id": req.refund_id,
                "order_id": req.attempt_id,
                "bank_serial": req.channel_trade_no,
                "amount": fen_to_yuan(req.amount),
                "reason": req.reason,
            },
        )
        return self._refund_result(req.refund_id, data)

    async def query_refund(self, refund_id: str, attempt_id: str) -> RefundResult:
        del attempt_id  # the bank finds a refund by its idempotency key alone
        try:
            data = await self._call("/refunds/query", {"refund_id": refund_id})
        except Rejected as exc:
            if exc.code == t.ResultCode.ORDER_NOT_FOUND:
                return RefundResult(refund_id=refund_id, state=t.refund_state("NOT_FOUND"))
            raise
        return self._refund_result(refund_id, data)

    def parse_notification(self, body: bytes, content_type: str) -> Notification:
        # The bank's signature travels in headers, which this generic entry point does not
        # see; bank confirmations arrive on /v1/channels/bank/{code}/confirm instead. A body
        # posted here is unverifiable by construction: the caller schedules a query.
        del body, content_type
        raise InvalidNotification(
            "bank messages are verified on the bank endpoints", code="use_bank_endpoint"
        )

    def ack(self) -> Ack:
        return Ack(body=b'{"code":"00000","msg":"ok"}', media_type="application/json")

    async def fetch_statement(self, day: date) -> bytes:
        resp = await self._send("/statements", {"date": day.isoformat()})
        if resp.headers.get("content-type", "").startswith("application/json"):
            self._business(resp)  # an error answer; raises
        return resp.content

    def parse_statement(self, raw: bytes) -> Iterable[StatementLine]:
        return t.parse_statement(raw)

    # ------------------------------------------------------------------ the one place for I/O

    async def _send(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        url_path = self._base.path.rstrip("/") + path
        headers = t.sign(self._secret, "POST", url_path, body, self.bank_code)
        try:
            resp = await self._client.post(self._base.join(url_path), content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Unavailable(f"bank {self.bank_code} unreachable: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # sent, no answer: it may have taken effect
            raise OutcomeUnknown(f"bank {self.bank_code}: {type(exc).__name__}") from exc
        if resp.status_code >= 500:
            raise OutcomeUnknown(f"bank {self.bank_code} answered HTTP {resp.status_code}")
        try:
            t.verify(self._secret, self.bank_code, "RESPONSE", url_path, resp.headers, resp.content)
        except InvalidNotification as exc:
            # An answer we cannot trust tells us nothing about the outcome.
            raise OutcomeUnknown(f"bank {self.bank_code} answer unverifiable: {exc}") from exc
        return resp

    async def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._business(await self._send(path, payload))

    def _business(self, resp: httpx.Response) -> dict[str, Any]:
        try:
            doc = resp.json()
        except ValueError as exc:
            raise OutcomeUnknown(f"bank {self.bank_code} answered non-JSON") from exc
        code = str(doc.get("code", ""))
        if code != t.ResultCode.OK:
            log.info("bank rejected", bank=self.bank_code, code=code)
            raise Rejected(str(doc.get("msg", "rejected")), code=code)
        data = doc.get("data") or {}
        return dict(data)

    @staticmethod
    def _refund_result(refund_id: str, data: Mapping[str, Any]) -> RefundResult:
        at = data.get("refunded_at")
        amount = data.get("amount")
        return RefundResult(
            refund_id=refund_id,
            state=t.refund_state(str(data.get("state", ""))),
            amount=yuan_to_fen(amount) if amount else None,
            refunded_at=t.parse_time(at) if at else None,
        )
