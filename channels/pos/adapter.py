"""The MIS-POS channel: card terminals at agency counters that call us.

Every conversation starts at the terminal: it asks for a bill (inquiry), reports a card
sale the acquirer approved, voids or refunds one, reverses one it got no answer for, and
settles its batch at the end of the day. This adapter verifies and parses those messages
into typed values in fen and renders our typed answers back with the protocol's result
codes and signature (channels.pos.transforms). We never call a terminal: the ChannelAdapter
calls that would reach out answer "not through this channel" or "still pending".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
from channels.pos import transforms as t

__all__ = [
    "NAME",
    "PosAdapter",
]

NAME = "pos"


class PosAdapter:
    """All registered terminals, as one channel named `pos` (their keys live in the
    database; the caller looks up the claimed terminal's key and passes it in)."""

    name = NAME

    # ------------------------------------------------------------------ inbound (terminal → us)

    def operation(self, name: str) -> t.Operation:
        try:
            return t.Operation(name)
        except ValueError:
            raise InvalidNotification(f"no POS operation {name!r}", code="operation") from None

    def identify(self, headers: Mapping[str, str]) -> t.Identity:
        """The merchant and terminal a message claims to come from (not verified yet)."""
        return t.claimed_identity(headers)

    def verify(self, key: bytes, path: str, headers: Mapping[str, str], body: bytes) -> str:
        """Check the terminal's signature; the nonce it used (reuse is a replay)."""
        return t.verify(key, "POST", path, headers, body)

    def parse(self, operation: t.Operation, body: bytes) -> t.Message:
        return t.parse(operation, body)

    def render(
        self, answer: t.Answer, *, key: bytes | None, path: str, who: t.Identity | None
    ) -> tuple[bytes, dict[str, str]]:
        """The answer's body and headers, signed with the terminal's key when we know it
        (an unknown terminal or a message we could not attribute gets an unsigned answer)."""
        body = t.render(answer)
        if key is None or who is None:
            return body, {}
        return body, t.sign(key, "RESPONSE", path, who.merchant, who.terminal, body)

    # ------------------------------------------------------------------ ChannelAdapter

    async def create_payment(self, req: CreatePayment) -> CreatedPayment:
        return CreatedPayment(
            instructions=(
                f"Pay {fen_to_yuan(req.amount)} yuan by card at the agency's counter with this"
                " payment code."
            )
        )

    async def query_payment(self, attempt_id: str) -> PaymentStatus:
        # A terminal cannot be asked; one that lost our answer reverses (冲正) on its own.
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
