"""The one protocol every payment channel implements, in our own types.

No SDK object crosses this boundary: adapters take and return the dataclasses below, with
amounts in integer fen and times timezone-aware. Failures are split three ways so callers
know what is safe (see ChannelError).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from channels.money import fen_to_yuan

__all__ = [
    "BATCH_KINDS",
    "Ack",
    "BadMessage",
    "BadParameter",
    "BatchCheck",
    "BatchLine",
    "BatchSettlement",
    "BillDue",
    "BillQuery",
    "CardInquiry",
    "CardRefund",
    "CardReversal",
    "CardSale",
    "CardVoid",
    "ChannelAdapter",
    "ChannelError",
    "ChannelRegistry",
    "CheckedPayment",
    "ConfirmPayment",
    "ConfirmationReceipt",
    "CountTotal",
    "CreatePayment",
    "CreatedPayment",
    "DayEndCheck",
    "Disposition",
    "DueLine",
    "Finding",
    "FindingKind",
    "InboundAnswer",
    "InboundCall",
    "InboundChannel",
    "InboundMessage",
    "InboundRegistry",
    "InboundRequest",
    "InvalidNotification",
    "Notification",
    "Outcome",
    "OutcomeUnknown",
    "PayMode",
    "PaymentStatus",
    "RefundRequest",
    "RefundResult",
    "RefundState",
    "Rejected",
    "ReverseConfirmation",
    "StatementKind",
    "StatementLine",
    "TradeState",
    "Unavailable",
    "UnknownSender",
    "UnsupportedVersion",
    "UploadConfirmations",
    "WireReply",
]

# ------------------------------------------------------------------ failures


class ChannelError(Exception):
    """Base of channel failures; `code` is the channel's own code (e.g. ACQ.TRADE_NOT_EXIST)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Rejected(ChannelError):
    """The channel answered and said no. Final for this request."""


class Unavailable(ChannelError):
    """Nothing reached the channel (connect failed, pool full): safe to retry as is."""


class OutcomeUnknown(ChannelError):
    """The request may have taken effect (read timeout, 5xx): query before retrying."""


class InvalidNotification(ChannelError):
    """A notification that cannot be verified (signature, app id, shape). Change nothing."""


# ------------------------------------------------------------------ values


class TradeState(StrEnum):
    """A channel trade's state mapped pessimistically: anything unknown is PENDING."""

    NOT_FOUND = "NOT_FOUND"  # the channel has no such trade (e.g. QR not scanned yet)
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    CLOSED = "CLOSED"  # closed unpaid, or fully refunded after success (see refunded)
    FINISHED = "FINISHED"  # succeeded and no longer refundable (Alipay TRADE_FINISHED)


class PayMode(StrEnum):
    """How the payer paid: stored on the receipt, printed on the e-note, totalled for finance.

    One vocabulary for every channel; an adapter maps its wire values onto it. A bank
    carries several (its app, its online bank, its counter, e-CNY through its wallet)."""

    ALIPAY = "ALIPAY"
    MOBILE_BANK = "MOBILE_BANK"  # 手机银行
    ONLINE_BANK = "ONLINE_BANK"  # 网上银行
    COUNTER = "COUNTER"  # 银行柜面
    ECNY = "ECNY"  # 数字人民币, through the bank as operating institution
    BANK = "BANK"  # a bank that did not say which of its modes (older messages)
    KIOSK = "KIOSK"  # 自助终端
    POS = "POS"  # MIS-POS card terminal at the agency's counter
    OTHER = "OTHER"  # a channel without a mode of its own in this list

    @classmethod
    def for_channel(cls, channel: str) -> PayMode:
        """The mode of a confirmation that does not name one: its channel family's
        (`bank:102` → BANK, `alipay` → ALIPAY)."""
        family = channel.partition(":")[0].upper()
        return cls(family) if family in cls.__members__ else cls.OTHER


class RefundState(StrEnum):
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True, slots=True)
class CreatePayment:
    attempt_id: str
    """Our id for the attempt; the channel's out_trade_no / order id."""
    amount: int
    subject: str
    mode: str
    """Channel-specific mode, e.g. Alipay 'qr' (precreate), 'page', 'wap'."""
    expires_at: datetime
    notify_url: str
    return_url: str | None = None


@dataclass(frozen=True, slots=True)
class CreatedPayment:
    channel_trade_no: str | None = None
    qr_content: str | None = None
    redirect_url: str | None = None
    instructions: str | None = None
    """For channels the payer drives themselves (bank counter/app by payment code)."""


@dataclass(frozen=True, slots=True)
class PaymentStatus:
    attempt_id: str
    state: TradeState
    channel_trade_no: str | None = None
    amount: int | None = None
    paid_at: datetime | None = None
    buyer_id: str | None = None
    pay_mode: PayMode | None = None
    """When the channel's answer says how the payer paid."""


@dataclass(frozen=True, slots=True)
class RefundRequest:
    refund_id: str
    """Idempotency key at the channel (Alipay out_request_no)."""
    attempt_id: str
    amount: int
    reason: str
    channel_trade_no: str | None = None


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund_id: str
    state: RefundState
    amount: int | None = None
    refunded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified asynchronous message from the channel."""

    notify_id: str
    attempt_id: str
    state: TradeState
    channel_trade_no: str | None
    amount: int | None
    paid_at: datetime | None
    app_id: str | None = None
    refund_id: str | None = None
    raw: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ack:
    """What the channel must receive to stop retrying (Alipay: the bare text 'success')."""

    body: bytes
    media_type: str = "text/plain"
    status_code: int = 200


class StatementKind(StrEnum):
    PAYMENT = "PAYMENT"
    REFUND = "REFUND"


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One row of a channel's daily statement: amounts signed as the channel gives them, the
    fee signed as a charge to us."""

    channel_trade_no: str
    attempt_id: str
    kind: StatementKind
    amount: int
    """Fen; refunds negative."""
    fee: int
    """Fen the channel charged us for this line; negative when it gives a fee back (a
    refund). Each channel's parser maps its own sign convention to this one."""
    occurred_at: datetime
    refund_id: str | None = None
    payment_code: str | None = None
    """The bill's payment code, when the channel lists it (a bank does): the only key of
    money confirmed without a prior query whose confirmation never reached us."""


# ------------------------------------------------------------------ protocol


@runtime_checkable
class ChannelAdapter(Protocol):
    name: str

    async def create_payment(self, req: CreatePayment) -> CreatedPayment: ...

    async def query_payment(self, attempt_id: str) -> PaymentStatus: ...

    async def close_payment(self, attempt_id: str) -> None: ...

    async def refund(self, req: RefundRequest) -> RefundResult: ...

    async def query_refund(self, refund_id: str, attempt_id: str) -> RefundResult: ...

    def parse_notification(self, body: bytes, content_type: str) -> Notification:
        """Verify and parse; raise InvalidNotification for anything unverifiable."""
        ...

    def ack(self) -> Ack: ...

    async def fetch_statement(self, day: date) -> bytes:
        """The channel's raw statement file for a business day."""
        ...

    def parse_statement(self, raw: bytes) -> Iterable[StatementLine]: ...


class ChannelRegistry:
    """Channel name → adapter, filled once at start-up; no `if channel == ...` elsewhere."""

    def __init__(self) -> None:
        self._adapters: dict[str, ChannelAdapter] = {}

    def register(self, adapter: ChannelAdapter) -> None:
        if adapter.name in self._adapters:
            raise ValueError(f"channel {adapter.name!r} registered twice")
        self._adapters[adapter.name] = adapter

    def get(self, name: str) -> ChannelAdapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise KeyError(f"unknown channel {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._adapters)

    def __contains__(self, name: object) -> bool:
        return name in self._adapters


# ------------------------------------------------------------------ channels that call us
#
# A bank, a kiosk or a card terminal starts the conversation. Its package parses and
# verifies the wire message into one of the typed requests below (amounts in fen, times
# timezone-aware) and renders our typed answer back with its own result codes and
# signature; the channel-agnostic service (payments.inbound) sees nothing of the wire.
# A new operation is a new InboundRequest subclass plus its handler in that service.


class Outcome(StrEnum):
    """Our answer to an inbound request; each channel maps it to its own result code."""

    OK = "OK"
    UNKNOWN_CODE = "UNKNOWN_CODE"
    """No bill has this payment code (or the code is malformed)."""
    CHECK_FAILED = "CHECK_FAILED"
    """The payment code's check digit is wrong: a typo."""
    ALREADY_PAID = "ALREADY_PAID"
    EXPIRED = "EXPIRED"
    """Past the bill's payment deadline."""
    CANCELLED = "CANCELLED"
    AMOUNT_DIFFERS = "AMOUNT_DIFFERS"
    """The amount is not the amount due (or not the order's)."""
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    """The order id named is not one we issued to this channel for this code."""
    DUPLICATE = "DUPLICATE"
    """The channel's reference was used before for another payment: a conflicting repeat."""
    NOT_QUERIED = "NOT_QUERIED"
    """A confirmation naming no prior query, where the channel requires one."""
    NOT_CONFIRMED = "NOT_CONFIRMED"
    """A reversal of a confirmation we never recorded."""
    TOO_LATE = "TOO_LATE"
    """A reversal after the day it could be made (the money must go back as a refund)."""
    TRY_LATER = "TRY_LATER"
    """We could not decide now (a store was unavailable): nothing written; send it again."""
    BAD_REQUEST = "BAD_REQUEST"
    """Verified, but not a well-formed request of this operation."""
    BAD_PARAMETER = "BAD_PARAMETER"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    """A message of a protocol version we do not speak."""
    SENT_TWICE = "SENT_TWICE"
    """A day-end check for a day already checked: refused, nothing changes."""
    CHECK_DIFFERS = "CHECK_DIFFERS"
    """A day-end check that differs from the day's confirmations (see `findings`)."""
    """Verified and well-formed, but a field has a value outside its allowed set."""
    UNKNOWN_SENDER = "UNKNOWN_SENDER"
    """The device or terminal is not registered with the channel, or is disabled."""
    FORGED = "FORGED"
    """Unverifiable: bad or missing signature, wrong sender, stale or replayed. Nothing
    is read from the message and nothing changes."""
    REVERSED = "REVERSED"
    """The payment named was reversed already (its reversal came first): refused."""
    NOT_ALLOWED = "NOT_ALLOWED"
    """Not allowed in the state the named transaction is in (a card void after its batch
    was settled, a card refund before; a bill of another agency)."""


class Disposition(StrEnum):
    """What became of money a channel confirmed."""

    PAID = "PAID"
    """It paid the bill."""
    REFUND = "REFUND"
    """The bill could not take it (paid meanwhile, cancelled, expired): a duplicate receipt
    and an automatic refund through the channel."""
    REVERSED = "REVERSED"
    """The channel reversed it (冲正): taken back as if it had never been paid."""


class BadMessage(ChannelError):
    """A verified message that is not a well-formed request: answered BAD_REQUEST."""


class BadParameter(BadMessage):
    """A well-formed request with a field outside its allowed values (an unknown pay mode):
    answered BAD_PARAMETER."""


class UnsupportedVersion(BadMessage):
    """A message of a protocol version we do not speak: answered UNSUPPORTED_VERSION."""


class UnknownSender(InvalidNotification):
    """The message names a device or terminal the channel does not know, or has disabled:
    answered UNKNOWN_SENDER, nothing changes."""


@dataclass(frozen=True, slots=True)
class InboundCall:
    """One request as it reached us, before anything is trusted."""

    operation: str
    """The last segment of `/v1/channels/{channel}/{operation}`."""
    member: str | None
    """The member of the channel the URL names, if any: `102` of `/v1/channels/bank/102/…`
    (or of `/v1/channels/bank:102/…`)."""
    path: str
    """The request path as received (a channel may sign it)."""
    headers: Mapping[str, str]
    """Case-insensitive."""
    body: bytes


class InboundRequest:
    """Base of the typed requests a channel's message parses into."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class BillQuery(InboundRequest):
    """Which bill has this payment code, and what is due on it today?"""

    payment_code: str


@dataclass(frozen=True, slots=True)
class ConfirmPayment(InboundRequest):
    """The channel took `amount` fen from the payer for this payment code."""

    payment_code: str
    reference: str
    """The channel's own id of this payment (bank serial, device + sequence, terminal
    trace): the idempotency key — a repeat with the same reference is the same payment."""
    amount: int
    paid_at: datetime
    order_id: str | None = None
    """Our order id from a prior BillQuery, when the channel echoes it."""
    pay_mode: PayMode | None = None
    """How the payer paid; None: the channel's own (PayMode.for_channel)."""
    sequence: int | None = None
    """A device's own sequence number, for channels that store and forward."""


@dataclass(frozen=True, slots=True)
class ReverseConfirmation(InboundRequest):
    """The channel undoes a confirmation it sent (冲正): the payment it named did not
    happen after all."""

    payment_code: str
    reference: str
    """The `reference` of the confirmation being reversed."""
    amount: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CheckedPayment:
    """One line of a channel's day-end check: a payment it believes it confirmed."""

    reference: str
    amount: int


@dataclass(frozen=True, slots=True)
class DayEndCheck(InboundRequest):
    """The channel's list of every payment it confirmed on a business day (日终对账),
    compared with the confirmations it sent during the day."""

    business_date: date
    lines: tuple[CheckedPayment, ...]
    raw: bytes = b""
    """The message body, kept with the check as received."""


class FindingKind(StrEnum):
    AMOUNT_DIFFERS = "AMOUNT_DIFFERS"
    """Both sides have the payment, with other amounts."""
    MISSING_AT_DAY_END = "MISSING_AT_DAY_END"
    """Confirmed to us during the day, absent from the day-end list."""
    MISSING_INTRADAY = "MISSING_INTRADAY"
    """On the day-end list, never confirmed to us during the day."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of a day-end check that differs."""

    reference: str
    kind: FindingKind
    ours: int | None
    theirs: int | None


@dataclass(frozen=True, slots=True)
class UploadConfirmations(InboundRequest):
    """Confirmations a channel stored while offline, sent later in one batch; each is
    applied exactly once by the same rules as a single ConfirmPayment."""

    items: tuple[ConfirmPayment, ...]


# Card terminals (MIS-POS): every transaction is keyed as the terminal keys it, by its
# batch and trace (voucher) number.


@dataclass(frozen=True, slots=True)
class CardInquiry(InboundRequest):
    """A counter terminal asks what is due on a bill (no order is opened)."""

    payment_code: str


@dataclass(frozen=True, slots=True)
class CardSale(InboundRequest):
    """The acquirer approved a card payment of `amount` fen for this payment code."""

    payment_code: str
    amount: int
    batch_no: str
    trace_no: str
    rrn: str
    """Retrieval reference number (检索参考号)."""
    card: str
    """Masked: first six and last four digits."""
    card_type: str
    acquirer: str
    issuer: str
    occurred_at: datetime
    settle_date: str
    """The acquirer's settlement date, MMDD."""
    operator: str


@dataclass(frozen=True, slots=True)
class CardReversal(InboundRequest):
    """冲正: cancel the sale with this batch and trace number (the terminal had no answer),
    whether it reached us or not."""

    batch_no: str
    trace_no: str
    amount: int
    payment_code: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class CardVoid(InboundRequest):
    """撤销: cancel a sale of the same, unsettled batch; the void has its own trace number."""

    batch_no: str
    trace_no: str
    original_trace_no: str
    amount: int
    rrn: str
    occurred_at: datetime
    operator: str


@dataclass(frozen=True, slots=True)
class CardRefund(InboundRequest):
    """退货: the acquirer gave (part of) a sale of a settled batch back to the card."""

    batch_no: str
    trace_no: str
    original_batch_no: str
    original_trace_no: str
    amount: int
    rrn: str
    occurred_at: datetime
    operator: str


@dataclass(frozen=True, slots=True)
class CountTotal:
    count: int
    amount: int
    """Fen."""


@dataclass(frozen=True, slots=True)
class BatchLine:
    kind: str
    """SALE, VOID or REFUND."""
    trace_no: str
    amount: int


BATCH_KINDS = ("SALE", "VOID", "REFUND")


@dataclass(frozen=True, slots=True)
class BatchSettlement(InboundRequest):
    """批结算: a terminal's counts and totals per kind (BATCH_KINDS) for a batch, and its
    lines, to compare with ours."""

    batch_no: str
    totals: Mapping[str, CountTotal]
    details: tuple[BatchLine, ...]


@dataclass(frozen=True, slots=True)
class BatchCheck:
    """A settled batch compared: both sides' totals per kind and every transaction only one
    side has, or has with another amount (`terminal_amount` / `our_amount` None where a
    side lacks it)."""

    batch_no: str
    balanced: bool
    ours: Mapping[str, CountTotal]
    theirs: Mapping[str, CountTotal]
    differences: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A verified message: who sent it and what it asks."""

    channel: str
    """The channel the money is recorded under (attempts, receipts), e.g. `bank:102`."""
    request: InboundRequest
    nonce: str | None = None
    """Used once within the channel's window: a reuse is a replay, refused as FORGED."""
    sender: str | None = None
    """Who within the channel sent it (a kiosk's device id, a terminal id), verified."""


@dataclass(frozen=True, slots=True)
class DueLine:
    name: str
    amount: int


@dataclass(frozen=True, slots=True)
class BillDue:
    """A bill as a channel shows it to the payer: what is due today."""

    payment_code: str
    order_id: str
    """Our order for this channel; echoed in its confirmation."""
    agency_name: str
    payer_name: str
    """Masked."""
    amount: int
    """Due today: principal plus late fee."""
    principal: int
    late_fee: int
    due_date: date
    pay_before: datetime
    """When the order lapses."""
    lines: tuple[DueLine, ...] = ()

    def doc(self, format_time: Callable[[datetime], str]) -> dict[str, Any]:
        """The bill in the words of the protocols that show it whole (the bank's and the
        kiosk's): yuan strings, and times as the channel writes them."""
        return {
            "order_id": self.order_id,
            "payment_code": self.payment_code,
            "agency_name": self.agency_name,
            "payer_name": self.payer_name,
            "amount": fen_to_yuan(self.amount),
            "principal": fen_to_yuan(self.principal),
            "late_fee": fen_to_yuan(self.late_fee),
            "due_date": self.due_date.isoformat(),
            "pay_before": format_time(self.pay_before),
            "items": [{"name": li.name, "amount": fen_to_yuan(li.amount)} for li in self.lines],
        }


@dataclass(frozen=True, slots=True)
class ConfirmationReceipt:
    """What became of one confirmation."""

    order_id: str
    reference: str
    receipt_id: str | None
    disposition: Disposition
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class InboundAnswer:
    """Our typed answer; the channel renders it in its own codes and signs it."""

    outcome: Outcome
    detail: str = ""
    """A short English reason, safe to show the channel (no personal data)."""
    bill: BillDue | None = None
    receipt: ConfirmationReceipt | None = None
    items: tuple[InboundAnswer, ...] = ()
    """One answer per item of an upload, in the order sent."""
    batch: BatchCheck | None = None
    """A batch settlement's comparison."""
    findings: tuple[Finding, ...] = ()
    """What differed in a day-end check."""


@dataclass(frozen=True, slots=True)
class WireReply:
    """An answer rendered for the wire."""

    body: bytes
    media_type: str = "application/json"
    status_code: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class InboundChannel(Protocol):
    """A channel that calls us, reached at `POST /v1/channels/{name}/{operation}`, or at
    `POST /v1/channels/{name}/{member}/{operation}` when its members (banks) are named in
    the URL."""

    name: str
    operations: frozenset[str]
    """The wire operation names it accepts; any other is a 404."""

    async def has_member(self, member: str) -> bool:
        """Whether the URL's member (a bank code) is one this channel serves now; a channel
        without members in its URLs answers False (a 404)."""
        ...

    async def parse(self, call: InboundCall) -> InboundMessage:
        """Verify and decode. Raise UnknownSender for an unknown or disabled device,
        InvalidNotification for anything else unverifiable (the answer is FORGED),
        BadMessage for a verified but malformed request. Async so that an adapter may look
        a device's key up."""
        ...

    async def render(
        self, call: InboundCall, message: InboundMessage | None, answer: InboundAnswer
    ) -> WireReply:
        """Our answer in the channel's codes, signed as the channel expects; `message` is
        None when the call did not parse (forged, unknown sender, malformed)."""
        ...


class InboundRegistry:
    """Channel name → inbound adapter, filled once at start-up."""

    def __init__(self) -> None:
        self._channels: dict[str, InboundChannel] = {}

    def register(self, channel: InboundChannel) -> None:
        if channel.name in self._channels:
            raise ValueError(f"inbound channel {channel.name!r} registered twice")
        self._channels[channel.name] = channel

    def find(self, name: str) -> InboundChannel | None:
        return self._channels.get(name)

    def names(self) -> list[str]:
        return sorted(self._channels)

    def __contains__(self, name: object) -> bool:
        return name in self._channels
