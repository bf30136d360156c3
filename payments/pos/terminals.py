"""The terminal registry: which card terminals may talk to us, for which agency, with which key.

A terminal's key is random, shown once when it is registered (or rotated) to be loaded
into the terminal, and stored only encrypted, bound to the terminal's row. A disabled
terminal's messages are refused with the protocol's "unknown terminal" code and change
nothing.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Agency
from channels.pos.transforms import MERCHANT, TERMINAL
from kernel import audit
from kernel.crypto import keyring
from kernel.errors import Conflict, InvalidInput, NotFound
from payments.pos.models import PosTerminal

__all__ = [
    "CACHE_TTL_S",
    "Credentials",
    "Registered",
    "TerminalView",
    "credentials",
    "enabled_count",
    "forget",
    "key_aad",
    "list_terminals",
    "register",
    "rotate_key",
    "set_enabled",
]

log = structlog.get_logger(__name__)

KEY_BYTES = 32


def key_aad(terminal_ref: uuid.UUID) -> bytes:
    return b"pos_terminals.key:" + terminal_ref.bytes


@dataclass(frozen=True, slots=True)
class TerminalView:
    id: uuid.UUID
    merchant_id: str
    terminal_id: str
    agency_id: uuid.UUID
    counter: str
    operator: str | None
    enabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Registered:
    terminal: TerminalView
    key: str
    """Hex; shown once, to be loaded into the terminal."""


def _view(t: PosTerminal) -> TerminalView:
    return TerminalView(
        t.id,
        t.merchant_id,
        t.terminal_id,
        t.agency_id,
        t.counter,
        t.operator,
        t.enabled,
        t.created_at,
    )


async def register(
    session: AsyncSession,
    *,
    merchant_id: str,
    terminal_id: str,
    agency_id: uuid.UUID,
    counter: str,
    operator: str | None = None,
    actor: audit.Actor,
) -> Registered:
    """Add a terminal (enabled) with a fresh key; the caller commits."""
    if not MERCHANT.match(merchant_id):
        raise InvalidInput("A merchant id is 15 digits.", code="merchant_id_malformed")
    if not TERMINAL.match(terminal_id):
        raise InvalidInput(
            "A terminal id is 8 digits or capital letters.", code="terminal_id_malformed"
        )
    counter = counter.strip()
    if not 0 < len(counter) <= 64 or (operator is not None and len(operator) > 64):
        raise InvalidInput("counter is 1..64 characters, operator ≤ 64.", code="counter_malformed")
    if await session.get(Agency, agency_id) is None:
        raise NotFound("No such agency.", code="agency_not_found")
    ref = uuid.uuid4()
    key = secrets.token_hex(KEY_BYTES)
    terminal = PosTerminal(
        id=ref,
        merchant_id=merchant_id,
        terminal_id=terminal_id,
        agency_id=agency_id,
        counter=counter,
        operator=operator,
        key_enc=keyring().encrypt(key.encode(), aad=key_aad(ref)),
        enabled=True,
    )
    session.add(terminal)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(
            "This merchant and terminal id are registered already.", code="terminal_exists"
        ) from None
    await session.refresh(terminal)
    forget(merchant_id, terminal_id)
    audit.record(
        session,
        actor_type=actor.type,
        actor_id=actor.id,
        action="pos.terminal_registered",
        object_type="pos_terminal",
        object_id=str(ref),
        detail={"merchant_id": merchant_id, "terminal_id": terminal_id},
    )
    log.info("pos terminal registered", terminal_id=terminal_id)
    return Registered(_view(terminal), key)


async def _find(session: AsyncSession, merchant_id: str, terminal_id: str) -> PosTerminal:
    found = await session.scalar(
        select(PosTerminal)
        .where(PosTerminal.merchant_id == merchant_id, PosTerminal.terminal_id == terminal_id)
        .with_for_update()
    )
    if found is None:
        raise NotFound("No such terminal.", code="terminal_not_found")
    return found


async def set_enabled(
    session: AsyncSession,
    *,
    merchant_id: str,
    terminal_id: str,
    enabled: bool,
    actor: audit.Actor,
) -> TerminalView:
    """Disable (or re-enable) a terminal; the caller commits. From the commit on, its
    messages are refused."""
    terminal = await _find(session, merchant_id, terminal_id)
    forget(merchant_id, terminal_id)
    if terminal.enabled != enabled:
        terminal.enabled = enabled
        audit.record(
            session,
            actor_type=actor.type,
            actor_id=actor.id,
            action="pos.terminal_enabled" if enabled else "pos.terminal_disabled",
            object_type="pos_terminal",
            object_id=str(terminal.id),
        )
        await session.flush()
        await session.refresh(terminal)
    return _view(terminal)


async def rotate_key(
    session: AsyncSession, *, merchant_id: str, terminal_id: str, actor: audit.Actor
) -> Registered:
    """A fresh key for a terminal (the old one stops working at commit)."""
    terminal = await _find(session, merchant_id, terminal_id)
    forget(merchant_id, terminal_id)
    key = secrets.token_hex(KEY_BYTES)
    terminal.key_enc = keyring().encrypt(key.encode(), aad=key_aad(terminal.id))
    audit.record(
        session,
        actor_type=actor.type,
        actor_id=actor.id,
        action="pos.terminal_key_rotated",
        object_type="pos_terminal",
        object_id=str(terminal.id),
    )
    await session.flush()
    await session.refresh(terminal)
    return Registered(_view(terminal), key)


async def list_terminals(
    session: AsyncSession, *, agency_id: uuid.UUID | None = None
) -> list[TerminalView]:
    stmt = select(PosTerminal).order_by(PosTerminal.merchant_id, PosTerminal.terminal_id)
    if agency_id is not None:
        stmt = stmt.where(PosTerminal.agency_id == agency_id)
    return [_view(t) for t in await session.scalars(stmt)]


async def enabled_count(session: AsyncSession, agency_id: uuid.UUID) -> int:
    """How many enabled terminals stand at the agency's counter (its bills can be paid there)."""
    stmt = (
        select(func.count())
        .select_from(PosTerminal)
        .where(PosTerminal.agency_id == agency_id, PosTerminal.enabled)
    )
    return int(await session.scalar(stmt) or 0)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What checking a terminal's message needs."""

    ref: uuid.UUID
    agency_id: uuid.UUID
    key: bytes
    enabled: bool


_CREDENTIALS = text(
    "SELECT id, agency_id, key_enc, enabled FROM pos_terminals"
    " WHERE merchant_id = :merchant AND terminal_id = :terminal"
)
CACHE_TTL_S = 5.0
"""How long a process reuses a terminal's looked-up key. Writes re-check `enabled` in the
database, so a disabled terminal is refused at once; a rotated key stops working in other
processes within this time (in this one at once)."""
_cache: dict[tuple[str, str], tuple[float, Credentials]] = {}


def forget(merchant_id: str, terminal_id: str) -> None:
    """Drop this process's cached credentials of a terminal (after a change to it)."""
    _cache.pop((merchant_id, terminal_id), None)


async def credentials(
    sessions: async_sessionmaker[AsyncSession], merchant_id: str, terminal_id: str
) -> Credentials | None:
    """The registered terminal's key and state; None when no such terminal exists."""
    now = time.monotonic()
    hit = _cache.get((merchant_id, terminal_id))
    if hit is not None and hit[0] > now:
        return hit[1]
    async with sessions() as session:
        row = (
            await session.execute(_CREDENTIALS, {"merchant": merchant_id, "terminal": terminal_id})
        ).first()
    if row is None:
        return None
    key = keyring().decrypt(bytes(row.key_enc), aad=key_aad(row.id))
    found = Credentials(row.id, row.agency_id, key, bool(row.enabled))
    if len(_cache) > 10_000:  # a bound, not an eviction policy: terminals are few
        _cache.clear()
    _cache[merchant_id, terminal_id] = (now + CACHE_TTL_S, found)
    return found
