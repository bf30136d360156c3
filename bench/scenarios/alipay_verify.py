"""Alipay notification verification: our `cryptography` path vs the SDK's own verify.

Ours is the whole `AlipayAdapter.parse_notification` (form parse, sign content, RSA2 verify,
app_id check, mapping). The baseline is only `alipay.aop.api.util.SignatureUtils.
verify_with_rsa` (pure-Python `rsa`) over the already-built content, as an integration that
uses the SDK would call it. Same notification, same keys, same process.
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
import urllib.parse
from pathlib import Path

from alipay.aop.api.util.SignatureUtils import verify_with_rsa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench.runner import Row
from channels.alipay.adapter import AlipayAdapter
from channels.alipay.config import AlipayConfig
from channels.alipay.keys import ensure_keys
from channels.alipay.transforms import NOTIFY_UNSIGNED, sign_content

APP_ID = "2021000000000001"


def _rate(fn: object, seconds: float) -> float:
    assert callable(fn)
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def run(*, quick: bool) -> list[Row]:
    seconds = 1.0 if quick else 4.0
    with tempfile.TemporaryDirectory() as tmp:
        keys = ensure_keys(Path(tmp))
        public_pem = keys.alipay_public.read_text()
        private = serialization.load_pem_private_key(
            keys.alipay_private.read_bytes(), password=None
        )
        assert isinstance(private, rsa.RSAPrivateKey)
        fields = {
            "notify_time": "2026-11-21 10:00:00",
            "notify_type": "trade_status_sync",
            "notify_id": "ac05099524730693a8b330c5ecf72da9786",
            "charset": "utf-8",
            "version": "1.0",
            "app_id": APP_ID,
            "trade_no": "2026112122001400000000000001",
            "out_trade_no": "T0123456789abcdef",
            "trade_status": "TRADE_SUCCESS",
            "total_amount": "88.80",
            "receipt_amount": "88.80",
            "buyer_id": "2088102122524333",
            "buyer_logon_id": "138****8000",
            "gmt_payment": "2026-11-21 09:59:58",
            "subject": "交通违法罚没收入",
        }
        content = sign_content(fields, exclude=NOTIFY_UNSIGNED).encode()
        sign = base64.b64encode(private.sign(content, padding.PKCS1v15(), hashes.SHA256()))
        body = urllib.parse.urlencode({**fields, "sign_type": "RSA2", "sign": sign}).encode()
        adapter = AlipayAdapter(
            AlipayConfig(
                app_id=APP_ID,
                gateway_url="http://127.0.0.1:9/gateway.do",
                app_private_key_path=keys.app_private,
                alipay_public_key_path=keys.alipay_public,
            )
        )
        ctype = "application/x-www-form-urlencoded; charset=utf-8"
        assert adapter.parse_notification(body, ctype).amount == 8880
        assert verify_with_rsa(public_pem, content, sign.decode())
        ours = _rate(lambda: adapter.parse_notification(body, ctype), seconds)
        sdk = _rate(lambda: verify_with_rsa(public_pem, content, sign.decode()), seconds)
        asyncio.run(adapter.aclose())
    return [
        Row(
            scenario="alipay_verify",
            ours=ours,
            baseline=sdk,
            unit="verifications/s",
            goal=">= 3",
            p50_ms=1000 / ours,
            notes=f"per verification: ours {1e6 / ours:.0f} µs, SDK {1e6 / sdk:.0f} µs (RSA-2048)",
        )
    ]
