"""The Alipay channel: every gateway call goes through the official, unmodified SDK.

The SDK is blocking (http.client, pure-Python RSA), so calls run on a bounded thread pool
with a deadline. Failures are mapped to Rejected / Unavailable / OutcomeUnknown in exactly
one place, `_run`/`_call`. Notification verification does NOT use the SDK: it is on the hot
path, so it verifies RSA2 with OpenSSL (`cryptography`) against a key parsed once — ~70 µs
for the whole parse+verify vs ~450 µs for the SDK's pure-Python verify alone
(bench/scenarios/alipay_verify.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any, TypeVar

import structlog
from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.request.AlipayDataDataserviceBillDownloadurlQueryRequest import (
    AlipayDataDataserviceBillDownloadurlQueryRequest,
)
from alipay.aop.api.request.AlipayTradeCloseRequest import AlipayTradeCloseRequest
from alipay.aop.api.request.AlipayTradeFastpayRefundQueryRequest import (
    AlipayTradeFastpayRefundQueryRequest,
)
from alipay.aop.api.request.AlipayTradePagePayRequest import AlipayTradePagePayRequest
from alipay.aop.api.request.AlipayTradePrecreateRequest import AlipayTradePrecreateRequest
from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest
from alipay.aop.api.request.AlipayTradeRefundRequest import AlipayTradeRefundRequest
from alipay.aop.api.request.AlipayTradeWapPayRequest import AlipayTradeWapPayRequest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from channels.alipay import transforms
from channels.alipay.config import AlipayConfig
from channels.alipay.sdk_patch import install_port_fix, last_connection, reset_connection
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
    StatementLine,
    TradeState,
    Unavailable,
)

__all__ = [
    "AlipayAdapter",
    "load_public_key",
    "verify_rsa2",
]

log = structlog.get_logger(__name__)
T = TypeVar("T")
R = TypeVar("R")

_FORM = "application/x-www-form-urlencoded"
_GBK_CHARSETS = frozenset({"gbk", "gb2312", "gb18030"})


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("Alipay public key must be RSA (SPKI PEM)")
    return key


def verify_rsa2(key: rsa.RSAPublicKey, content: bytes, sign: str) -> bool:
    """SHA256withRSA over `content`, `sign` in base64: Alipay's RSA2."""
    try:
        key.verify(
            base64.b64decode(sign, validate=True), content, padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


class AlipayAdapter:
    """`ChannelAdapter` for Alipay (当面付 QR, 电脑网站 page, 手机网站 wap)."""

    name = "alipay"
    modes: tuple[str, ...] = tuple(transforms.PRODUCT_CODES)
    """qr first: "default" means a QR code (当面付), which works on any screen."""

    def __init__(self, settings: AlipayConfig) -> None:
        install_port_fix()  # once per process; see channels/alipay/sdk_patch.py
        self._settings = settings
        public_pem = settings.alipay_public_key()
        self._public_key = load_public_key(public_pem)  # parsed once, used per notification
        config = AlipayClientConfig()
        config.app_id = settings.app_id
        config.server_url = settings.gateway_url
        config.app_private_key = settings.app_private_key()
        config.alipay_public_key = public_pem
        config.sign_type = settings.sign_type
        config.charset = "utf-8"
        config.timeout = settings.timeout_s
        self._client = DefaultAlipayClient(config)
        self._pool = ThreadPoolExecutor(
            max_workers=settings.pool_size, thread_name_prefix="alipay-sdk"
        )

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -------------------------------------------------------------- the one failure map

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run blocking `fn` on the pool within the deadline; map every failure once."""
        started = threading.Event()
        outcome: dict[str, bool] = {}

        def job() -> T:
            started.set()
            reset_connection()
            try:
                return fn()
            except Exception:
                conn = last_connection()
                outcome["sent"] = conn is not None and conn.paygate_sent
                raise

        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, job)
        except RuntimeError as exc:  # the pool is shut down: nothing was sent
            raise Unavailable(f"alipay: {exc}") from exc
        # Socket connect and read each get timeout_s; the extra second covers signing.
        deadline = self._settings.timeout_s * 2 + 1.0
        done, _ = await asyncio.wait({future}, timeout=deadline)
        if not done:
            future.cancel()  # drops it if still queued; a running call ends by socket timeout
            if not started.is_set():
                raise Unavailable("alipay: worker pool busy past the deadline")
            raise OutcomeUnknown("alipay: no answer before the deadline")
        try:
            return future.result()
        except (Rejected, Unavailable, OutcomeUnknown):
            raise
        except Exception as exc:  # the SDK raises bare Exceptions and TypeErrors
            # Connect refused/timed out, TLS failure, signing failure: nothing was written.
            if not outcome.get("sent"):
                raise Unavailable(f"alipay: nothing sent ({type(exc).__name__})") from exc
            # Read timeout, non-200 (the SDK then fails with TypeError), bad response sign.
            raise OutcomeUnknown(f"alipay: sent, no usable answer ({type(exc).__name__})") from exc

    async def _call(
        self, request: Any, parse: Callable[[Mapping[str, Any]], R], **context: str
    ) -> R:
        """One SDK `execute`: signed request, verified response, checked code, parsed body.

        A verified 10000 answer whose fields we cannot read is OutcomeUnknown too."""
        method = request.get_params()["method"]

        def execute() -> Mapping[str, Any]:
            text = self._client.execute(request)  # verifies the response signature
            try:
                body = json.loads(text)
            except ValueError:
                raise OutcomeUnknown(f"alipay {method}: unparseable response") from None
            if not isinstance(body, dict):
                raise OutcomeUnknown(f"alipay {method}: response is not an object")
            return body

        body = await self._run(execute)
        try:
            checked = transforms.check_result(body)
        except (Rejected, OutcomeUnknown) as exc:
            log.info("alipay_call_failed", method=method, code=exc.code, **context)
            raise
        try:
            return parse(checked)
        except (KeyError, ValueError, TypeError) as exc:
            detail = f"{type(exc).__name__}"
            raise OutcomeUnknown(f"alipay {method}: unexpected response ({detail})") from exc

    @staticmethod
    def _request(request_cls: Any, biz: Mapping[str, Any]) -> Any:
        request = request_cls()
        request.biz_content = dict(biz)  # the SDK's own model drops unknown keys
        return request

    # -------------------------------------------------------------- payments

    def _notify_url(self, url: str) -> str:
        """Where Alipay must post: our notify path under `notify_base_url` when one is set
        (e.g. a public gateway in front of the service), else the URL as given."""
        base = self._settings.notify_base_url
        if not base:
            return url
        parts = urllib.parse.urlsplit(url)
        return f"{base}{parts.path}" + (f"?{parts.query}" if parts.query else "")

    async def create_payment(self, req: CreatePayment) -> CreatedPayment:
        biz = transforms.create_biz(req)
        if req.mode == "qr":
            request = self._request(AlipayTradePrecreateRequest, biz)
            request.notify_url = self._notify_url(req.notify_url)
            return await self._call(
                request,
                lambda body: CreatedPayment(qr_content=str(body["qr_code"])),
                attempt_id=req.attempt_id,
            )
        cls = AlipayTradePagePayRequest if req.mode == "page" else AlipayTradeWapPayRequest
        request = self._request(cls, biz)
        request.notify_url = self._notify_url(req.notify_url)
        if req.return_url:
            request.return_url = req.return_url
        # page/wap pay is a signed redirect the buyer's browser follows; nothing is sent now.
        url = await self._run(lambda: str(self._client.page_execute(request, http_method="GET")))
        return CreatedPayment(redirect_url=url)

    async def query_payment(self, attempt_id: str) -> PaymentStatus:
        request = self._request(AlipayTradeQueryRequest, transforms.trade_biz(attempt_id))
        try:
            return await self._call(
                request,
                lambda body: transforms.payment_status(attempt_id, body),
                attempt_id=attempt_id,
            )
        except Rejected as exc:
            if exc.code == transforms.TRADE_NOT_EXIST:
                return PaymentStatus(attempt_id=attempt_id, state=TradeState.NOT_FOUND)
            raise

    async def close_payment(self, attempt_id: str) -> None:
        """Close an unpaid trade. Before the QR is scanned Alipay has no trade and answers
        Rejected(ACQ.TRADE_NOT_EXIST) — the code stays payable until its time_expire."""
        request = self._request(AlipayTradeCloseRequest, transforms.trade_biz(attempt_id))
        await self._call(request, lambda _: None, attempt_id=attempt_id)

    # -------------------------------------------------------------- refunds

    async def refund(self, req: RefundRequest) -> RefundResult:
        """Idempotent on req.refund_id (out_request_no): a retry answers fund_change=N."""
        request = self._request(AlipayTradeRefundRequest, transforms.refund_biz(req))
        return await self._call(
            request,
            lambda body: transforms.refund_result(req, body),
            attempt_id=req.attempt_id,
            refund_id=req.refund_id,
        )

    async def query_refund(self, refund_id: str, attempt_id: str) -> RefundResult:
        biz = transforms.refund_query_biz(refund_id, attempt_id)
        request = self._request(AlipayTradeFastpayRefundQueryRequest, biz)
        try:
            return await self._call(
                request,
                lambda body: transforms.refund_query_result(refund_id, body),
                attempt_id=attempt_id,
                refund_id=refund_id,
            )
        except Rejected as exc:
            if exc.code == transforms.TRADE_NOT_EXIST:
                return RefundResult(refund_id=refund_id, state=RefundState.NOT_FOUND)
            raise

    # -------------------------------------------------------------- notifications

    def parse_notification(self, body: bytes, content_type: str) -> Notification:
        """Verify an async notification with Alipay's key (sub-ms), then check app_id.

        Order existence and amount are the payment service's checks (it has the DB)."""
        if content_type.split(";", maxsplit=1)[0].strip().lower() != _FORM:
            raise InvalidNotification("notification is not a form post")
        try:
            text = body.decode("ascii")  # a urlencoded form is ASCII on the wire
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True)
            fields = dict(pairs)
            if fields.get("charset", "utf-8").lower() in _GBK_CHARSETS:
                pairs = urllib.parse.parse_qsl(
                    text, keep_blank_values=True, strict_parsing=True, encoding="gb18030"
                )
                fields = dict(pairs)
        except (UnicodeDecodeError, ValueError):
            raise InvalidNotification("notification body is not a form") from None
        if len(fields) != len(pairs):
            raise InvalidNotification("notification repeats a field")
        sign = fields.get("sign", "")
        if fields.get("sign_type", "RSA2") != "RSA2" or not sign:
            raise InvalidNotification("notification not signed with RSA2")
        content = transforms.sign_content(fields, exclude=transforms.NOTIFY_UNSIGNED)
        charset = "gb18030" if fields.get("charset", "").lower() in _GBK_CHARSETS else "utf-8"
        if not verify_rsa2(self._public_key, content.encode(charset), sign):
            log.warning("alipay_notification_bad_signature", notify_id=fields.get("notify_id"))
            raise InvalidNotification("notification signature does not verify")
        if fields.get("app_id") != self._settings.app_id:
            raise InvalidNotification("notification for another app_id")
        return transforms.notification(fields)

    def ack(self) -> Ack:
        return Ack(body=b"success")

    # -------------------------------------------------------------- statements

    async def fetch_statement(self, day: date) -> bytes:
        """The trade bill zip of a Beijing business day (T+1): ask for the URL, download it."""
        request = self._request(
            AlipayDataDataserviceBillDownloadurlQueryRequest, transforms.bill_biz(day)
        )
        url = await self._call(
            request, lambda body: str(body["bill_download_url"]), bill_date=day.isoformat()
        )
        return await self._run(lambda: _download(url, self._settings.timeout_s))

    def parse_statement(self, raw: bytes) -> list[StatementLine]:
        return transforms.parse_statement(raw)


def _download(url: str, timeout: float) -> bytes:
    """GET the bill through the same tracked connection class, so `_run` maps failures."""
    from channels.alipay.sdk_patch import open_connection

    target, conn = open_connection(url, timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != http.client.OK:
            raise OSError(f"bill download answered HTTP {resp.status}")
        return data
    finally:
        conn.close()
