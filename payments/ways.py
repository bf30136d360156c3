"""Which ways a payer can pay right now, decided from what is configured and registered.

One decision for every place that tells a payer how to pay (the notice PDF, the cashier
page): a way is offered only when something can take the money. The caller gathers the
facts (settings, the bank directory, device and terminal counts) and passes them in as
plain values; nothing here reads a database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from channels.bank.transforms import channel_name
from channels.base import PayMode

__all__ = [
    "BANK_MODES",
    "LABELS",
    "ORDER",
    "BankFacts",
    "Configured",
    "PayWays",
    "labels",
    "pay_ways",
]

BANK_MODES = (PayMode.MOBILE_BANK, PayMode.ONLINE_BANK, PayMode.ECNY, PayMode.COUNTER)
"""What a bank on our bank interface takes: every pay mode its protocol carries."""

ORDER = (
    PayMode.ALIPAY,
    PayMode.MOBILE_BANK,
    PayMode.ONLINE_BANK,
    PayMode.ECNY,
    PayMode.KIOSK,
    PayMode.COUNTER,
    PayMode.POS,
)
"""How the ways are listed to a payer: online first, then the places to go to."""

LABELS: dict[PayMode, str] = {
    PayMode.ALIPAY: "支付宝",
    PayMode.MOBILE_BANK: "手机银行",
    PayMode.ONLINE_BANK: "网上银行",
    PayMode.ECNY: "数字人民币",
    PayMode.KIOSK: "自助终端",
    PayMode.COUNTER: "银行柜面",
    PayMode.POS: "执收单位柜台刷卡",
}
"""A way as the payer reads it (Chinese, as printed on the notice)."""


@dataclass(frozen=True, slots=True)
class BankFacts:
    code: str
    name: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class Configured:
    """The facts the decision needs, gathered by the caller."""

    alipay: bool
    """The Alipay channel is enabled in the settings."""
    banks: tuple[BankFacts, ...] = ()
    """Every bank known to the bank directory, enabled or not."""
    kiosk_channel: bool = False
    """The kiosk channel is enabled in the settings."""
    kiosk_devices: int = 0
    """Enabled kiosk devices."""
    pos_terminals: int = 0
    """Enabled card terminals at the counter of the bill's agency."""


@dataclass(frozen=True, slots=True)
class PayWays:
    modes: tuple[PayMode, ...]
    """The ways to pay, in the order a payer reads them; empty when none is configured."""
    channels: tuple[str, ...]
    """The channels a payer may start a payment on from the cashier page."""
    banks: tuple[BankFacts, ...]
    """The enabled banks, where the payment code is paid by app, online bank or counter."""


def pay_ways(facts: Configured) -> PayWays:
    banks = tuple(sorted((b for b in facts.banks if b.enabled), key=lambda b: b.code))
    offered: set[PayMode] = set()
    channels: list[str] = []
    if facts.alipay:
        offered.add(PayMode.ALIPAY)
        channels.append("alipay")
    if banks:
        offered.update(BANK_MODES)
        channels.extend(channel_name(b.code) for b in banks)
    # A device channel without a device to go to is no way to pay, and the reverse.
    if facts.kiosk_channel and facts.kiosk_devices > 0:
        offered.add(PayMode.KIOSK)
    if facts.pos_terminals > 0:
        offered.add(PayMode.POS)
    return PayWays(tuple(m for m in ORDER if m in offered), tuple(channels), banks)


def labels(modes: Iterable[PayMode]) -> tuple[str, ...]:
    return tuple(LABELS[m] for m in modes)
