"""The shared acquirer signature reproduces each acquirer's documented scheme: the kiosks'
acquirer is signed exactly as a kiosk message of the device `kiosk` (checked here by the
kiosk protocol's own, independent verification)."""

from __future__ import annotations

import httpx

from channels.kiosk import transforms as kt
from channels.kiosk.adapter import acquirer_headers, acquirer_verify

SECRET = b"kiosk-acquirer-secret"
BODY = b'{"order_id":"5c2412e3-adfb-4551-9cf2-b75ba7a2755f"}'


def test_the_kiosk_acquirer_is_signed_as_a_kiosk_message() -> None:
    headers = httpx.Headers(acquirer_headers(SECRET, "query", BODY))
    env = kt.envelope(headers)
    assert env.device_id == "kiosk"
    assert kt.within_window(env)
    assert kt.verify(kt.DeviceKey("HMAC", SECRET), "query", env, BODY)
    assert acquirer_verify(SECRET, "query", headers, BODY)
    assert not acquirer_verify(SECRET, "RESPONSE:query", headers, BODY)
    assert not acquirer_verify(b"another secret", "query", headers, BODY)
