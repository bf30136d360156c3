"""Endpoints channels call: the generic async notification, and the bank interface."""

from __future__ import annotations

import json
from typing import Any

import structlog
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from channels.bank.adapter import BankAdapter, channel_name
from channels.bank.transforms import ResultCode
from channels.base import InvalidNotification
from gateway.state import Resources
from kernel.errors import NotFound
from payments import bank_inbound, notify

log = structlog.get_logger(__name__)


class NotifyController(Controller):
    path = "/v1/channels"
    tags = ["channels"]  # noqa: RUF012

    @post("/{channel:str}/notify", summary="A channel's asynchronous notification", status_code=200)
    async def notify(
        self,
        channel: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        if channel not in resources.channels:
            raise NotFound("Unknown channel.", code="unknown_channel")
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        result = await notify.handle_notification(
            resources.payment_context(), channel, body, content_type
        )
        if result.ack:
            ack = resources.channels.get(channel).ack()
            return Response(ack.body, media_type=ack.media_type, status_code=ack.status_code)
        # Not acknowledged: the channel retries, and our recovery query settles it meanwhile.
        return Response(b"fail", media_type="text/plain", status_code=400)


class BankController(Controller):
    """DOMAIN §5, bank-initiated: query a bill by payment code, confirm a payment."""

    path = "/v1/channels/bank/{bank_code:str}"
    tags = ["channels"]  # noqa: RUF012

    @post("/query", summary="Bank queries a bill by payment code", status_code=200)
    async def query(
        self,
        bank_code: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        return await self._handle("query", bank_code, request, resources)

    @post("/confirm", summary="Bank confirms a payment it took", status_code=200)
    async def confirm(
        self,
        bank_code: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        return await self._handle("confirm", bank_code, request, resources)

    async def _handle(
        self,
        op: str,
        bank_code: str,
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        channel = channel_name(bank_code)
        adapter = resources.channels.get(channel) if channel in resources.channels else None
        if not isinstance(adapter, BankAdapter):
            raise NotFound("This bank is not connected.", code="unknown_bank")
        body = await request.body()
        path = request.url.path
        bound = log.bind(channel=channel, op=op)
        answer: bank_inbound.BankAnswer
        try:
            nonce = adapter.verify_inbound("POST", path, request.headers, body)
            if not await bank_inbound.nonce_fresh(
                resources.redis, resources.sessions, bank_code, nonce
            ):
                raise InvalidNotification("nonce reused", code="nonce")
        except InvalidNotification as exc:
            bound.warning("bank message rejected", reason=exc.code)
            answer = bank_inbound.BankAnswer(ResultCode.BAD_SIGNATURE, "signature check failed")
        else:
            try:
                msg = json.loads(body)
                if not isinstance(msg, dict):
                    raise TypeError
            except (ValueError, TypeError):
                msg = None
            ctx = resources.payment_context()
            if msg is None:
                answer = bank_inbound.BankAnswer(
                    ResultCode.BAD_REQUEST, "body is not a JSON object"
                )
            elif op == "query":
                answer = await bank_inbound.bank_query(
                    ctx, channel, str(msg.get("payment_code", ""))
                )
            else:
                answer = await bank_inbound.bank_confirm(ctx, channel, msg)
        out = json.dumps(answer.doc(), separators=(",", ":"), ensure_ascii=False).encode()
        headers = adapter.sign_response(path, out)
        headers.pop("Content-Type", None)
        return Response(out, media_type="application/json", status_code=200, headers=headers)
