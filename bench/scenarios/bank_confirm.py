"""Bank confirmations/s (signed, each paying a distinct bill) vs. one bare INSERT transaction.

Each confirmation verifies the HMAC, checks the nonce in Redis, opens an attempt, and runs
confirm_payment (bill row lock, receipt, bill event, audit, two outbox messages). The
baseline is a bare Litestar endpoint committing one INSERT. A second, lighter run (4
connections) reports p99 near 80 % of the peak rate (closed-loop load cannot pin a rate).
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
