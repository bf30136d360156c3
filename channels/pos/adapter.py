"""The card terminal channel's calls: we ask the terminals' acquirer to refund a card sale
and fetch its daily settlement file (清算文件). A terminal itself cannot be asked: its
messages to us are the inbound half (`channels.pos.inbound`).

The acquirer API is documented in docs/channels/pos.md ("The acquirer"). HTTP failures
map to the three channel errors in the shared `channels.acquirer.AcquirerClient` only.
Without an acquirer configured the channel still exists (the worker's recovery closes a
sale's attempt left open once it expires; the terminal, having had no answer, reverses
that sale anyway), but a refund is refused for finance to settle by hand and there is no
statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import httpx

from channels.acquirer import AcquirerClient, HmacScheme, refund_result
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
    RefundState,
    Rejected,
    StatementKind,
    StatementLine,
    TradeState,
)
from channels.money import fen_to_yuan, yuan_to_fen
from channels.pos import transforms as t
from channels.pos.inbound import NAME

__all__ = [
    "ACQUIRER_CALLER",
    "ACQUIRER_VERSION",
    "FILE_VERSION",
    "PosAdapter",
    "SettlementRow",
    "acquirer_scheme",
    "parse_settlement_file",
    "render_settlement_file",
]

ACQUIRER_VERSION = "POSACQ1"
ACQUIRER_CALLER = "paygate"
FILE_VERSION = "POSSTL1"
NOT_FOUND = "25"
SYSTEM_ERROR = "96"
_FIELDS = 15
_FILE_KINDS = ("SALE", "REFUND", "VOID", "REVERSAL")
_SETTLED = {"SALE": StatementKind.PAYMENT, "REFUND": StatementKind.REFUND}
"""VOID and REVERSAL lines are flagged, not settled: they move no money."""

_REFUND_STATES = {
    "SUCCESS": RefundState.SUCCEEDED,
    "FAILED": RefundState.FAILED,
}


def acquirer_scheme(secret: bytes) -> HmacScheme:
    """Our signature towards the terminals' acquirer, and its answers' (docs/channels/pos.md)."""
    return HmacScheme(
        prefix="X-Acq",
        caller_header="Caller",
        version=ACQUIRER_VERSION,
        caller=ACQUIRER_CALLER,
        secret=secret,
    )


# ------------------------------------------------------------------ the settlement file


@dataclass(frozen=True, slots=True)
class SettlementRow:
    """One line of the acquirer's settlement file, in fen (amounts signed: refunds
    negative; the fee as charged, negative when given back)."""

    merchant_id: str
    terminal_id: str
    batch_no: str
    trace_no: str
    rrn: str
    card: str
    kind: str
    """SALE, REFUND; VOID or REVERSAL flag a sale the acquirer did not settle."""
    amount: int
    fee: int
    time: datetime
    refund_id: str = ""
    """Our refund id, for a refund we asked for through the API."""
    original_batch_no: str = ""
    original_trace_no: str = ""
    """The sale a refund (or a flagged void or reversal) gives back."""


def render_settlement_file(day: date, rows: Iterable[SettlementRow]) -> bytes:
    """The file as the acquirer sends it: a header with the count and totals, then one
    `|`-separated line per transaction (the simulator writes it; tests build odd ones)."""
    rows = list(rows)
    amount = sum(r.amount for r in rows if r.kind in _SETTLED)
    fee = sum(r.fee for r in rows if r.kind in _SETTLED)
    totals = (fen_to_yuan(amount), fen_to_yuan(fee), fen_to_yuan(amount - fee))
    head = "|".join((FILE_VERSION, day.strftime("%Y%m%d"), str(len(rows)), *totals))
    lines = [head]
    for r in rows:
        settled = r.kind in _SETTLED
        net = r.amount - r.fee if settled else 0
        lines.append(
            "|".join(
                (
                    *(r.merchant_id, r.terminal_id, r.batch_no, r.trace_no, r.rrn, r.card),
                    *(r.kind, fen_to_yuan(r.amount), fen_to_yuan(r.fee), fen_to_yuan(net)),
                    *(day.strftime("%Y%m%d"), t.format_time(r.time), r.refund_id),
                    *(r.original_batch_no, r.original_trace_no),
                )
            )
        )
    return ("\n".join(lines) + "\n").encode()


def parse_settlement_file(raw: bytes) -> Iterator[SettlementRow]:
    """Every line of a settlement file; Rejected("statement_malformed") for a line that is
    not one, or a file whose lines do not add up to its header (cut short on the way)."""
    text = raw.decode("utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise Rejected("empty settlement file", code="statement_malformed")
    head = lines[0].split("|")
    if len(head) != 6 or head[0] != FILE_VERSION:
        raise Rejected("not a POS settlement file", code="statement_malformed")
    count, amount, fee = 0, 0, 0
    for n, line in enumerate(lines[1:], start=2):
        f = line.split("|")
        try:
            if len(f) != _FIELDS or f[6] not in _FILE_KINDS:
                raise ValueError("shape")
            row = SettlementRow(
                merchant_id=f[0],
                terminal_id=f[1],
                batch_no=f[2],
                trace_no=f[3],
                rrn=f[4],
                card=f[5],
                kind=f[6],
                amount=yuan_to_fen(f[7]),
                fee=yuan_to_fen(f[8]),
                time=t.parse_time(f[11]),
                refund_id=f[12],
                original_batch_no=f[13],
                original_trace_no=f[14],
            )
            if row.kind in _SETTLED and yuan_to_fen(f[9]) != row.amount - row.fee:
                raise ValueError("net")
        except ValueError as exc:
            raise Rejected(f"settlement file line {n}: {exc}", code="statement_malformed") from exc
        count += 1
        if row.kind in _SETTLED:
            amount, fee = amount + row.amount, fee + row.fee
        yield row
    if (str(count), fen_to_yuan(amount), fen_to_yuan(fee)) != (head[2], head[3], head[4]):
        raise Rejected("settlement file totals differ from its lines", code="statement_malformed")


def statement_line(row: SettlementRow) -> StatementLine | None:
    """A settled row as a statement line; None for a flagged (unsettled) one.

    A sale is keyed by our trade number of it (terminal, batch, trace: what its receipt
    carries); the acquirer knows no order id of ours, so the same string stands in the
    order-id column. A refund we asked for carries our refund id; a terminal's own refund
    (退货) is known to us by its retrieval reference number (recorded as the refund's
    channel number), which is its trade number here."""
    kind = _SETTLED.get(row.kind)
    if kind is None:
        return None
    if kind is StatementKind.PAYMENT:
        trade = t.trade_no(row.terminal_id, row.batch_no, row.trace_no)
    elif row.refund_id:
        trade = t.trade_no(row.terminal_id, row.original_batch_no, row.original_trace_no)
    else:
        trade = row.rrn
    return StatementLine(
        channel_trade_no=trade,
        attempt_id=trade,
        kind=kind,
        amount=row.amount,
        fee=row.fee,
        occurred_at=row.time,
        refund_id=row.refund_id or None,
    )


# ------------------------------------------------------------------ the adapter


class PosAdapter:
    name = NAME
    payer_facing = False
    """A payer cannot start a card payment from the cashier: the clerk's terminal does."""

    def __init__(
        self,
        *,
        acquirer_url: str = "",
        acquirer_secret: bytes = b"",
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._acquirer = (
            AcquirerClient(
                label="pos acquirer",
                base_url=acquirer_url,
                scheme=acquirer_scheme(acquirer_secret),
                timeout_s=timeout_s,
                transport=transport,
            )
            if acquirer_url
            else None
        )

    async def aclose(self) -> None:
        if self._acquirer is not None:
            await self._acquirer.aclose()

    def _client(self, what: str) -> AcquirerClient:
        if self._acquirer is None:
            raise Rejected(f"no POS acquirer is configured ({what})", code="no_acquirer")
        return self._acquirer

    async def _call(self, operation: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return await self._client(operation).call(operation, payload)
        except Rejected as exc:
            if exc.code == SYSTEM_ERROR:  # the acquirer could not decide: ask again later
                raise OutcomeUnknown(f"pos acquirer: {exc}", code=exc.code) from exc
            raise

    # ------------------------------------------------------------------ ChannelAdapter

    async def create_payment(self, req: CreatePayment) -> CreatedPayment:
        return CreatedPayment(
            instructions=(
                f"Pay {fen_to_yuan(req.amount)} yuan by card at the agency's counter with this"
                " payment code."
            )
        )

    async def query_payment(self, attempt_id: str) -> PaymentStatus:
        # Nothing to ask: an open attempt stays open until it expires (then CLOSED); the
        # terminal that had no answer reverses its sale.
        return PaymentStatus(attempt_id=attempt_id, state=TradeState.PENDING)

    async def close_payment(self, attempt_id: str) -> None:
        del attempt_id  # nothing open at a terminal to close

    async def refund(self, req: RefundRequest) -> RefundResult:
        """Give (part of) a card sale back through the acquirer, keyed by our refund id;
        the sale is named by our trade number of it (terminal, batch, trace)."""
        if not req.channel_trade_no:
            raise Rejected("the sale's terminal reference is unknown", code="no_reference")
        data = await self._call(
            "refund",
            {
                "refund_id": req.refund_id,
                "reference": req.channel_trade_no,
                "amount": fen_to_yuan(req.amount),
                "reason": req.reason[:64],
            },
        )
        return refund_result(req.refund_id, data, states=_REFUND_STATES, parse_time=t.parse_time)

    async def query_refund(self, refund_id: str, attempt_id: str) -> RefundResult:
        del attempt_id  # the acquirer finds a refund by its idempotency key
        try:
            data = await self._call("refund_query", {"refund_id": refund_id})
        except Rejected as exc:
            if exc.code == NOT_FOUND:
                return RefundResult(refund_id=refund_id, state=RefundState.NOT_FOUND)
            raise
        return refund_result(refund_id, data, states=_REFUND_STATES, parse_time=t.parse_time)

    def parse_notification(self, body: bytes, content_type: str) -> Notification:
        del body, content_type
        raise InvalidNotification(
            "terminal messages go to /v1/channels/pos/<operation>", code="use_pos_endpoint"
        )

    def ack(self) -> Ack:
        return Ack(body=b'{"code":"00","msg":"approved"}', media_type="application/json")

    @property
    def has_statement(self) -> bool:
        """Only with its acquirer configured is there a settlement file to reconcile (the
        daily reconciliation skips the channel otherwise)."""
        return self._acquirer is not None

    async def fetch_statement(self, day: date) -> bytes:
        resp = await self._client("statement").send("statement", {"date": day.isoformat()})
        if resp.headers.get("content-type", "").startswith("application/json"):
            doc = resp.json()  # a refusal ("no file for that day yet")
            raise Rejected(str(doc.get("msg", "no statement")), code=str(doc.get("code", "")))
        return resp.content

    def parse_statement(self, raw: bytes) -> Iterable[StatementLine]:
        for row in parse_settlement_file(raw):
            line = statement_line(row)
            if line is not None:
                yield line
