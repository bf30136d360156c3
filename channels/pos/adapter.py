"""The card terminal channel as a channel we would call — which we never do: a terminal
cannot be asked. Registered so that the worker's recovery job can close a sale's attempt
left open (the process stopped between recording the sale and paying the bill) once it
expires; the terminal, having had no answer, reverses that sale anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from channels.base import (
    Ack,
    CreatedPayment,
    CreatePayment,
    InvalidNotification,
    Notification,
    PaymentStatus,
    RefundRequest,
    RefundResult,
    Rejected,
    StatementLine,
    TradeState,
)
from channels.money import fen_to_yuan
from channels.pos.inbound import NAME

__all__ = ["PosAdapter"]


class PosAdapter:
    name = NAME
    payer_facing = False
    """A payer cannot start a card payment from the cashier: the clerk's terminal does."""

    async def create_payment(self, req: CreatePayment) -> CreatedPayment:
        return CreatedPayment(
            instructions=(
                f"Pay {fen_to_yuan(req.amount)} yuan by card at the agency's counter with this"
                " payment code."
            )
        )

    async def query_payment(self, attempt_id: str) -> PaymentStatus:
        # Nothing to ask: an open attempt stays open until it expires (then CLOSED).
        return PaymentStatus(attempt_id=attempt_id, state=TradeState.PENDING)

    async def close_payment(self, attempt_id: str) -> None:
        del attempt_id  # nothing open at a terminal to close

    async def refund(self, req: RefundRequest) -> RefundResult:
        del req
        raise Rejected(
            "card refunds are made at the terminal (退货) through the acquirer",
            code="refund_at_terminal",
        )

    async def query_refund(self, refund_id: str, attempt_id: str) -> RefundResult:
        del refund_id, attempt_id
        raise Rejected("card refunds are made at the terminal", code="refund_at_terminal")

    def parse_notification(self, body: bytes, content_type: str) -> Notification:
        del body, content_type
        raise InvalidNotification(
            "terminal messages go to /v1/channels/pos/<operation>", code="use_pos_endpoint"
        )

    def ack(self) -> Ack:
        return Ack(body=b'{"code":"00","msg":"approved"}', media_type="application/json")

    async def fetch_statement(self, day: date) -> bytes:
        raise Rejected(f"no acquirer statement is fetched for POS ({day})", code="no_statement")

    def parse_statement(self, raw: bytes) -> Iterable[StatementLine]:
        del raw
        return []
