"""The one protocol every payment channel implements, in our own types.

No SDK object crosses this boundary: adapters take and return the dataclasses below, with
amounts in integer fen and times timezone-aware. Failures are split three ways so callers
know what is safe (see ChannelError).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = [
    "Ack",
    "ChannelAdapter",
    "ChannelError",
    "ChannelRegistry",
    "CreatePayment",
    "CreatedPayment",
    "InvalidNotification",
    "Notification",
    "OutcomeUnknown",
    "PayMode",
    "PaymentStatus",
    "RefundRequest",
    "RefundResult",
    "RefundState",
    "Rejected",
    "StatementKind",
    "StatementLine",
    "TradeState",
    "Unavailable",
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
