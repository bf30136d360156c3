"""Alipay confirmations/s through `POST /v1/channels/alipay/notify` vs. one bare INSERT.

Each request is a real Alipay `trade_status_sync` notification (form post, RSA2-signed with
the bench's Alipay key) for an attempt of its own that is PENDING: the production adapter
verifies it, checks app_id, and the payment service checks the order and amount and runs
confirm_payment (bill row lock, receipt, bill event, ledger, outbox), then answers
`success`. Notifications are signed before the load starts, so signing costs the load
generator nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import tempfile
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import text

from bench.payments_support import AMOUNT, confirm_scenario
from bench.runner import Row
from channels.alipay.keys import ensure_keys
from channels.alipay.transforms import NOTIFY_UNSIGNED, TIME_FORMAT, sign_content
from channels.money import fen_to_yuan
from gateway.db import create_engine

APP_ID = "2021000000000002"
BEIJING = timedelta(hours=8)
_FORM = "application/x-www-form-urlencoded; charset=utf-8"

_OPEN_ATTEMPTS = text(
    "INSERT INTO payment_attempts (id, bill_id, channel, mode, status, amount, expires_at)"
    " SELECT gen_random_uuid(), b.id, 'alipay', 'qr', 'PENDING', b.principal_amount,"
    " now() + interval '1 hour' FROM bills b WHERE b.payment_code = ANY(:codes)"
    " RETURNING id"
)


async def _open_attempts(codes: list[str]) -> list[str]:
    engine = create_engine(os.environ["DATABASE_URL"])
    async with engine.begin() as conn:
        ids = (await conn.execute(_OPEN_ATTEMPTS, {"codes": codes})).scalars().all()
    await engine.dispose()
    return [str(i) for i in ids]


def _requests(private: rsa.RSAPrivateKey, codes: list[str], path: Path) -> Path:
    """One signed notification per bill, for an attempt opened on it now."""
    paid = (datetime.now(UTC) + BEIJING).strftime(TIME_FORMAT)
    with path.open("w") as f:
        for attempt_id in asyncio.run(_open_attempts(codes)):
            fields = {
                "notify_time": paid,
                "notify_type": "trade_status_sync",
                "notify_id": secrets.token_hex(16),
                "charset": "utf-8",
                "version": "1.0",
                "app_id": APP_ID,
                "trade_no": "2026" + "".join(secrets.choice("0123456789") for _ in range(24)),
                "out_trade_no": attempt_id,
                "trade_status": "TRADE_SUCCESS",
                "total_amount": fen_to_yuan(AMOUNT),
                "receipt_amount": fen_to_yuan(AMOUNT),
                "buyer_id": "2088102122524333",
                "gmt_payment": paid,
                "subject": "交通违法罚没收入",
            }
            content = sign_content(fields, exclude=NOTIFY_UNSIGNED).encode()
            sign = private.sign(content, padding.PKCS1v15(), hashes.SHA256())
            body = urllib.parse.urlencode(
                {**fields, "sign_type": "RSA2", "sign": base64.b64encode(sign).decode()}
            )
            request = {
                "method": "POST",
                "path": "/v1/channels/alipay/notify",
                "headers": {"Content-Type": _FORM},
                "body": body,
            }
            f.write(json.dumps(request) + "\n")
    return path


def run(*, quick: bool) -> list[Row]:
    with tempfile.TemporaryDirectory() as keydir:
        keys = ensure_keys(Path(keydir))
        private = serialization.load_pem_private_key(
            keys.alipay_private.read_bytes(), password=None
        )
        assert isinstance(private, rsa.RSAPrivateKey)
        server_env = {
            "PAYGATE_ALIPAY_APP_ID": APP_ID,
            # Never called: a confirmed notification needs no round trip to Alipay.
            "PAYGATE_ALIPAY_GATEWAY_URL": "http://127.0.0.1:9/gateway.do",
            "PAYGATE_ALIPAY_APP_PRIVATE_KEY_PATH": str(keys.app_private),
            "PAYGATE_ALIPAY_PUBLIC_KEY_PATH": str(keys.alipay_public),
        }
        return confirm_scenario(
            "alipay_notify",
            quick=quick,
            server_env=server_env,
            make_requests=lambda codes, path: _requests(private, codes, path),
        )
