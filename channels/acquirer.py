"""The one HTTP client for an acquirer we call (the kiosks' acquirer, the card terminals'):
signed JSON requests `POST <base>/<operation>`, signed answers `{"code", "msg", "data"}`.

Both acquirers sign with the same HMAC-SHA256 scheme (`HmacScheme`), each under its own
header names and version tag, and both answer "00" for success. HTTP failures map to the
three channel errors here only: nothing reached the acquirer → Unavailable; sent but no
trustworthy answer (read time-out, 5xx, an answer whose signature does not hold) →
OutcomeUnknown; an answer that says no → Rejected with the acquirer's code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog

from channels.base import OutcomeUnknown, RefundResult, RefundState, Rejected, Unavailable
from channels.money import yuan_to_fen

__all__ = ["OK", "AcquirerClient", "HmacScheme", "refund_result"]

log = structlog.get_logger(__name__)

OK = "00"
_NONCE = re.compile(r"^[0-9A-Za-z]{16,64}$")


@dataclass(frozen=True, slots=True)
class HmacScheme:
    """Headers `<prefix>-<Caller|Device>`, `<prefix>-Timestamp` (unix seconds, ±`skew_s`),
    `<prefix>-Nonce` (16–64 letters and digits) and `<prefix>-Signature`: lowercase hex
    HMAC-SHA256 under the shared secret of

        "<version>\\n<operation>\\n<caller>\\n<timestamp>\\n<nonce>\\n<hex sha256 of body>"

    An answer is signed the same way with the operation `RESPONSE:<operation>`."""

    prefix: str
    """E.g. `X-Kiosk`."""
    caller_header: str
    """The last part of the caller's header name (`Device` for the kiosks' acquirer)."""
    version: str
    caller: str
    """Who we are at the acquirer."""
    secret: bytes
    skew_s: int = 300

    def canonical(self, operation: str, caller: str, ts: str, nonce: str, body: bytes) -> bytes:
        digest = hashlib.sha256(body).hexdigest()
        return f"{self.version}\n{operation}\n{caller}\n{ts}\n{nonce}\n{digest}".encode()

    def headers(
        self, operation: str, body: bytes, *, secret: bytes | None = None
    ) -> dict[str, str]:
        """Headers signing `body` for `operation` now, with a fresh nonce (`secret`: another
        key, for a simulator's forged answer)."""
        ts, nonce = str(int(time.time())), secrets.token_hex(12)
        message = self.canonical(operation, self.caller, ts, nonce, body)
        return {
            f"{self.prefix}-{self.caller_header}": self.caller,
            f"{self.prefix}-Timestamp": ts,
            f"{self.prefix}-Nonce": nonce,
            f"{self.prefix}-Signature": hmac.new(
                secret or self.secret, message, hashlib.sha256
            ).hexdigest(),
            "Content-Type": "application/json",
        }

    def verify(
        self, operation: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> bool:
        """Whether `headers` sign `body` for `operation` under the secret, within the window
        (`headers` case-insensitive, or lowercased). The caller named is any (the acquirer
        signs its answers under its own name); a nonce is the receiver's to remember."""
        p = self.prefix.lower()
        caller = headers.get(f"{p}-{self.caller_header.lower()}", "")
        ts = headers.get(f"{p}-timestamp", "")
        nonce = headers.get(f"{p}-nonce", "")
        got = headers.get(f"{p}-signature", "")
        if not (caller and ts.isdigit() and _NONCE.match(nonce) and got):
            return False
        if abs((now if now is not None else time.time()) - int(ts)) > self.skew_s:
            return False
        want = hmac.new(
            self.secret, self.canonical(operation, caller, ts, nonce, body), hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(want, got)


class AcquirerClient:
    """Signed calls to one acquirer; the only place its HTTP failures are interpreted."""

    def __init__(
        self,
        *,
        label: str,
        base_url: str,
        scheme: HmacScheme,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.label = label
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._scheme = scheme
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=2.0),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, operation: str, payload: Mapping[str, Any]) -> httpx.Response:
        """POST the signed payload; the answer only once its signature holds."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = self._scheme.headers(operation, body)
        try:
            resp = await self._client.post(
                self._base.join(operation), content=body, headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Unavailable(f"{self.label} unreachable: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # sent, no answer: it may have taken effect
            raise OutcomeUnknown(f"{self.label}: {type(exc).__name__}") from exc
        if resp.status_code >= 500:
            raise OutcomeUnknown(f"{self.label} answered HTTP {resp.status_code}")
        if not self._scheme.verify(f"RESPONSE:{operation}", resp.headers, resp.content):
            # An answer we cannot trust tells us nothing about the outcome.
            raise OutcomeUnknown(f"{self.label} answer unverifiable")
        return resp

    async def call(self, operation: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """`send`, then the answer's `data` when its code is "00"; Rejected(code) otherwise."""
        resp = await self.send(operation, payload)
        try:
            doc = resp.json()
        except ValueError as exc:
            raise OutcomeUnknown(f"{self.label} answered non-JSON") from exc
        code = str(doc.get("code", ""))
        if code != OK:
            log.info("acquirer refused", acquirer=self.label, operation=operation, code=code)
            raise Rejected(str(doc.get("msg", "refused")), code=code)
        return dict(doc.get("data") or {})


def refund_result(
    refund_id: str,
    data: Mapping[str, Any],
    *,
    states: Mapping[str, RefundState],
    parse_time: Callable[[str], datetime],
) -> RefundResult:
    """An acquirer's refund answer `{state, amount, refunded_at}`: `states` are the words of
    its protocol; any other state is still PROCESSING."""
    at, amount = data.get("refunded_at"), data.get("amount")
    return RefundResult(
        refund_id=refund_id,
        state=states.get(str(data.get("state", "")), RefundState.PROCESSING),
        amount=yuan_to_fen(amount) if amount else None,
        refunded_at=parse_time(at) if at else None,
    )
