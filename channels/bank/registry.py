"""Banks registered in the database: add, list, disable, enable, rotate keys, and the
in-process directory the bank endpoints consult.

A bank's secrets are stored encrypted (kernel.crypto, AES-GCM, bound to the bank's code
and the column) and never logged or listed. For SM2 we make our own key pair per bank at
registration and rotation; its public half is what the bank is given. Banks in
`PAYGATE_BANKS` (HMAC only) are a bootstrap: they count when the database has no row of
their code; a row, enabled or not, always wins.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.bank.adapter import BankAdapter
from channels.bank.models import HMAC_SHA256, SIGN_METHODS, SM2_SM3, Bank
from channels.bank.signing import HmacSigning, Signing, Sm2Signing
from channels.bank.transforms import channel_name
from channels.base import ChannelRegistry
from kernel import audit, crypto
from kernel.audit import Actor
from kernel.db import database_unavailable
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.sm2 import PrivateKey, PublicKey

__all__ = [
    "DEFAULT_GRACE",
    "BankDirectory",
    "BankEntry",
    "Registered",
    "add",
    "entry_of",
    "list_banks",
    "rotate",
    "set_enabled",
    "view",
]

log = structlog.get_logger(__name__)

DEFAULT_GRACE = timedelta(hours=24)
"""How long the bank's previous key still verifies after a rotation."""


def _aad(column: str, code: str) -> bytes:
    return f"banks.{column}:{code}".encode()


def _seal(column: str, code: str, value: bytes) -> bytes:
    return crypto.encrypt(value, aad=_aad(column, code))


def _open(column: str, code: str, token: bytes) -> bytes:
    return crypto.decrypt(token, aad=_aad(column, code))


@dataclass(frozen=True, slots=True)
class BankEntry:
    """A bank as the service uses it: its keys decrypted, ready to sign and verify."""

    code: str
    name: str
    endpoint: str
    enabled: bool
    signing: Signing


@dataclass(frozen=True, slots=True)
class Registered:
    """What `add` and `rotate` hand back once: the secret or our public key to give the bank."""

    code: str
    sign_method: str
    secret: str | None = None
    """HMAC: the shared secret (shown once)."""
    our_public_key: str | None = None
    """SM2: our public key for this bank (04‖x‖y hex); the bank verifies our answers with it."""


def entry_of(bank: Bank, now: datetime | None = None) -> BankEntry:
    now = now or datetime.now(UTC)
    in_grace = bank.previous_until is not None and now < bank.previous_until
    signing: Signing
    if bank.sign_method == SM2_SM3:
        assert bank.our_key_enc is not None
        assert bank.bank_public_key is not None
        previous = bank.previous_public_key if in_grace else None
        signing = Sm2Signing(
            own=PrivateKey(_open("our_key", bank.code, bank.our_key_enc).decode()),
            peer=PublicKey(bank.bank_public_key),
            previous_peer=PublicKey(previous) if previous else None,
        )
    else:
        assert bank.secret_enc is not None
        old = bank.previous_secret_enc if in_grace else None
        signing = HmacSigning(
            _open("secret", bank.code, bank.secret_enc),
            previous=_open("secret", bank.code, old) if old else None,
        )
    return BankEntry(bank.code, bank.name, bank.endpoint, bank.enabled, signing)


def view(bank: Bank) -> dict[str, Any]:
    """What may be listed: never a secret."""
    return {
        "code": bank.code,
        "name": bank.name,
        "sign_method": bank.sign_method,
        "bank_public_key": bank.bank_public_key,
        "our_public_key": (
            PrivateKey(_open("our_key", bank.code, bank.our_key_enc).decode()).public.hex
            if bank.our_key_enc is not None
            else None
        ),
        "endpoint": bank.endpoint,
        "enabled": bank.enabled,
        "key_version": bank.key_version,
        "previous_key_until": bank.previous_until.isoformat() if bank.previous_until else None,
    }


def _check_code(code: str) -> str:
    if not (code.isdigit() and 1 <= len(code) <= 11):
        # the channel name `bank:<code>` must fit the 16-character channel columns
        raise InvalidInput("a bank code is 1-11 digits", code="bad_bank_code")
    return code


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.netloc or len(endpoint) > 255:
        raise InvalidInput("the endpoint is an http(s) URL", code="bad_endpoint")
    return endpoint.rstrip("/")


def _public_key(value: str | None) -> PublicKey:
    try:
        return PublicKey((value or "").strip())
    except ValueError:
        raise InvalidInput(
            "an SM2 bank needs its public key: 130 hex digits starting 04", code="bad_public_key"
        ) from None


def _hmac_secret(value: str | None) -> bytes:
    secret = value if value is not None else secrets.token_hex(32)
    if len(secret) < 32:
        raise InvalidInput("an HMAC secret is at least 32 characters", code="weak_secret")
    return secret.encode()


async def add(
    session: AsyncSession,
    *,
    code: str,
    name: str,
    sign_method: str,
    endpoint: str,
    actor: Actor,
    secret: str | None = None,
    bank_public_key: str | None = None,
) -> Registered:
    """Register a bank (caller commits). HMAC: `secret`, or one made here; SM2: the bank's
    public key, and our key pair for it made here."""
    code = _check_code(code)
    if sign_method not in SIGN_METHODS:
        raise InvalidInput(f"sign_method is one of {list(SIGN_METHODS)}", code="bad_sign_method")
    if not name.strip() or len(name) > 64:
        raise InvalidInput("a bank's name is 1-64 characters", code="bad_name")
    if await session.get(Bank, code) is not None:
        raise Conflict(f"bank {code} is registered already", code="bank_exists")
    bank = Bank(
        code=code,
        name=name.strip(),
        sign_method=sign_method,
        endpoint=_check_endpoint(endpoint),
        enabled=True,
        key_version=1,
    )
    registered = _new_keys(bank, secret=secret, bank_public_key=bank_public_key)
    session.add(bank)
    _audit(session, actor, "bank.added", code, {"sign_method": sign_method})
    return registered


def _new_keys(bank: Bank, *, secret: str | None, bank_public_key: str | None) -> Registered:
    if bank.sign_method == HMAC_SHA256:
        raw = _hmac_secret(secret)
        bank.secret_enc = _seal("secret", bank.code, raw)
        return Registered(bank.code, HMAC_SHA256, secret=raw.decode())
    peer = _public_key(bank_public_key)
    ours = PrivateKey.generate()
    bank.bank_public_key = peer.hex
    bank.our_key_enc = _seal("our_key", bank.code, ours.hex.encode())
    return Registered(bank.code, SM2_SM3, our_public_key=ours.public.hex)


async def rotate(
    session: AsyncSession,
    code: str,
    *,
    actor: Actor,
    secret: str | None = None,
    bank_public_key: str | None = None,
    grace: timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
) -> Registered:
    """New keys for a bank (caller commits). The bank's previous key keeps verifying its
    messages for `grace`; we sign with the new keys at once."""
    bank = await _get(session, code, lock=True)
    now = now or datetime.now(UTC)
    bank.previous_secret_enc = None
    bank.previous_public_key = None
    if bank.sign_method == HMAC_SHA256:
        if bank.secret_enc is not None:  # re-sealed: the same plaintext, under the same aad
            bank.previous_secret_enc = bank.secret_enc
    else:
        bank.previous_public_key = bank.bank_public_key
        if bank_public_key is None:  # only ours changes; the bank keeps its key
            bank_public_key = bank.bank_public_key
    registered = _new_keys(bank, secret=secret, bank_public_key=bank_public_key)
    bank.previous_until = now + grace
    bank.key_version += 1
    _audit(session, actor, "bank.rotated", code, {"key_version": bank.key_version})
    return registered


async def set_enabled(session: AsyncSession, code: str, *, enabled: bool, actor: Actor) -> Bank:
    bank = await _get(session, code, lock=True)
    bank.enabled = enabled
    _audit(session, actor, "bank.enabled" if enabled else "bank.disabled", code, {})
    return bank


async def list_banks(session: AsyncSession) -> list[dict[str, Any]]:
    return [view(b) for b in await session.scalars(select(Bank).order_by(Bank.code))]


async def _get(session: AsyncSession, code: str, *, lock: bool = False) -> Bank:
    bank = await session.get(Bank, code, with_for_update=lock)
    if bank is None:
        raise NotFound(f"no bank {code}", code="unknown_bank")
    return bank


def _audit(
    session: AsyncSession, actor: Actor, action: str, code: str, detail: dict[str, Any]
) -> None:
    audit.record(
        session,
        actor_type=actor.type,
        actor_id=actor.id,
        action=action,
        object_type="bank",
        object_id=code,
        detail=detail,
    )


class BankDirectory:
    """code → BankEntry for the bank endpoints, read from the database at most every
    `ttl_s` seconds (a change made by the CLI in another process is seen within it; the
    admin API refreshes at once). Env-configured banks fill in codes without a row."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bootstrap: Mapping[str, BankEntry] | None = None,
        *,
        ttl_s: float = 5.0,
        channels: ChannelRegistry | None = None,
    ) -> None:
        self._sessions = sessions
        self._bootstrap = dict(bootstrap or {})
        self._channels = channels
        self._ttl_s = ttl_s
        self._entries: dict[str, BankEntry] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, code: str) -> BankEntry | None:
        """The bank if it is registered and enabled, else None."""
        if time.monotonic() - self._loaded_at > self._ttl_s:
            await self.refresh()
        entry = self._entries.get(code)
        return entry if entry is not None and entry.enabled else None

    async def all(self) -> list[BankEntry]:
        if time.monotonic() - self._loaded_at > self._ttl_s:
            await self.refresh()
        return [self._entries[c] for c in sorted(self._entries)]

    async def refresh(self) -> None:
        async with self._lock:
            try:
                async with self._sessions() as s:
                    rows = list(await s.scalars(select(Bank)))
            except Exception as exc:
                if not database_unavailable(exc) or not (self._entries or self._bootstrap):
                    raise
                # PostgreSQL out of reach: keep verifying and signing with the keys we
                # have, so a bank is told to try later in a message it trusts (and read
                # again on the next call rather than after a whole ttl).
                self._entries = self._entries or dict(self._bootstrap)
                return
            entries = dict(self._bootstrap)
            now = datetime.now(UTC)
            for row in rows:
                try:
                    entries[row.code] = entry_of(row, now)
                except (crypto.DecryptError, ValueError):
                    # A key we cannot open (lost data key): the bank is refused, not guessed.
                    log.error("bank keys unreadable; bank refused", bank=row.code)
                    entries.pop(row.code, None)
            self._entries = entries
            self._loaded_at = time.monotonic()
            if self._channels is not None:
                sync_adapters(self._channels, entries.values())


def sync_adapters(channels: ChannelRegistry, entries: Iterable[BankEntry]) -> None:
    """Our calls to each registered bank (query, close, refund, statements) go through a
    `bank:<code>` adapter with its current keys and endpoint; a disabled bank keeps its
    adapter, so refunds and queries already under way can finish."""
    for entry in entries:
        name = channel_name(entry.code)
        if name not in channels:
            channels.register(
                BankAdapter(bank_code=entry.code, secret=entry.signing, base_url=entry.endpoint)
            )
            continue
        adapter = channels.get(name)
        if isinstance(adapter, BankAdapter):
            adapter.rekey(entry.signing, entry.endpoint)
