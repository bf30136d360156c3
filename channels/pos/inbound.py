"""The card terminal (MIS-POS) channel on the inbound seam: terminals at agency counters
call `POST /v1/channels/pos/<operation>`.

`parse` finds the terminal the message claims to come from (its key is looked up through
the `lookup` the service gives: terminals live in the database), checks its signature and
decodes the body into a typed request in fen; `render` answers in the protocol's codes,
signed with the terminal's key. The protocol is channels.pos.transforms
(docs/channels/pos.md). We never call a terminal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from channels.base import (
    BadMessage,
    InboundAnswer,
    InboundCall,
    InboundMessage,
    InvalidNotification,
    UnknownSender,
    WireReply,
)
from channels.pos import transforms as t

__all__ = ["NAME", "KnownTerminal", "PosInbound", "sender"]

NAME = "pos"


class KnownTerminal(Protocol):
    """What the lookup answers for a registered terminal."""

    @property
    def key(self) -> bytes: ...

    @property
    def enabled(self) -> bool: ...


Lookup = Callable[[str, str], Awaitable[KnownTerminal | None]]
"""(merchant id, terminal id) → the registered terminal, or None."""


def sender(who: t.Identity) -> str:
    """The sender id a verified message carries: `<merchant id>:<terminal id>`."""
    return f"{who.merchant}:{who.terminal}"


class PosInbound:
    name = NAME
    operations = frozenset(op.value for op in t.Operation)

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup

    async def has_member(self, member: str) -> bool:
        del member  # terminals are named in the signed headers, not in the URL
        return False

    async def parse(self, call: InboundCall) -> InboundMessage:
        who = t.claimed_identity(call.headers)
        known = await self._lookup(who.merchant, who.terminal)
        if known is None:
            raise UnknownSender("no such terminal", code="terminal")
        nonce = t.verify(known.key, "POST", call.path, call.headers, call.body)
        if not known.enabled:
            raise UnknownSender("terminal disabled", code="terminal_disabled")
        try:
            request = t.parse(t.Operation(call.operation), call.body)
        except t.MalformedMessage as exc:
            raise BadMessage(str(exc), code="format") from exc
        return InboundMessage(channel=NAME, request=request, nonce=nonce, sender=sender(who))

    async def render(
        self, call: InboundCall, message: InboundMessage | None, answer: InboundAnswer
    ) -> WireReply:
        body = t.render(answer, message.request if message else None)
        try:
            who = t.claimed_identity(call.headers)
        except InvalidNotification:
            return WireReply(body)
        known = await self._lookup(who.merchant, who.terminal)
        if known is None:  # nothing to sign with: the terminal distrusts the answer
            return WireReply(body)
        # Every answer to a registered terminal is signed, a refusal of a forged message
        # too: signing reveals nothing the forger did not send.
        headers = t.sign(known.key, "RESPONSE", call.path, who.merchant, who.terminal, body)
        return WireReply(body, headers=headers)
