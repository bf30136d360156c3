"""Endpoints channels call: the asynchronous notification of a channel we called, and the
generic inbound route of a channel that calls us (a bank, a kiosk, a card terminal)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from channels.base import InboundCall
from gateway.state import Resources
from kernel.errors import NotFound
from payments import inbound, notify


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


class InboundController(Controller):
    """`POST /v1/channels/{channel}/{operation}`: the channel's adapter (from the inbound
    registry) parses, verifies and answers in its own wire format; payments.inbound decides.

    A channel whose members are named in the URL (one bank of several) is reached as
    `/v1/channels/bank/102/{operation}` or, the same, `/v1/channels/bank:102/{operation}`;
    the path as received is what the sender signs."""

    path = "/v1/channels"
    tags = ["channels"]  # noqa: RUF012

    @post(
        "/{channel:str}/{operation:str}",
        summary="A message from a channel that calls us",
        status_code=200,
    )
    async def message(
        self,
        channel: FromPath[str],
        operation: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        name, _, member = channel.partition(":")
        return await _receive(name, member or None, operation, request, resources)

    @post(
        "/{channel:str}/{member:str}/{operation:str}",
        summary="A message from one member of a channel that calls us (e.g. one bank)",
        status_code=200,
    )
    async def member_message(
        self,
        channel: FromPath[str],
        member: FromPath[str],
        operation: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> Response[bytes]:
        return await _receive(channel, member, operation, request, resources)


async def _receive(
    channel: str,
    member: str | None,
    operation: str,
    request: Request[Any, Any, Any],
    resources: Resources,
) -> Response[bytes]:
    adapter = resources.inbound.find(channel)
    if adapter is None:
        raise NotFound("No such channel calls us.", code="unknown_channel")
    # A member the channel does not know (a bank not registered, or disabled) is refused
    # by its adapter in the channel's own code, not by us in ours: the bank reads its codes.
    if operation not in adapter.operations:
        raise NotFound("This channel has no such operation.", code="unknown_operation")
    call = InboundCall(operation, member, request.url.path, request.headers, await request.body())
    reply = await inbound.receive(resources.payment_context(), adapter, call)
    return Response(
        reply.body,
        media_type=reply.media_type,
        status_code=reply.status_code,
        headers=dict(reply.headers),
    )
