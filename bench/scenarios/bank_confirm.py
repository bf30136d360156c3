"""Bank confirmations/s (signed, each paying a distinct bill) vs. one bare INSERT transaction.

Each confirmation verifies the HMAC, checks the nonce in Redis, opens an attempt, and runs
confirm_payment (bill row lock, receipt, bill event, audit, two outbox messages). The
baseline is a bare Litestar endpoint committing one INSERT (bench.payments_support has the
protocol: baseline before and after, p99 at 8 and 16 connections).
"""

from __future__ import annotations

from bench.payments_support import BANK_CODE, BANK_SECRET, confirm_requests, confirm_scenario
from bench.runner import Row


def run(*, quick: bool) -> list[Row]:
    banks = f"{BANK_CODE}={BANK_SECRET}@http://127.0.0.1:9/banks/{BANK_CODE}"
    return confirm_scenario(
        "bank_confirm",
        quick=quick,
        server_env={"PAYGATE_BANKS": banks},
        make_requests=confirm_requests,
    )
