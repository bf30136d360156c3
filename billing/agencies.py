"""Collecting agencies and their API keys.

A key's secret is random, shown exactly once (returned by `create_key` / `rotate_key`),
and stored only encrypted with AAD bound to its key id. Rotation issues a new key and
schedules the old one's revocation after a grace period, so two keys are live while the
agency redeploys; `revoked_at` in the future means "still live until then".
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import Agency, AgencyItem, ApiKey, RevenueItem
from kernel import audit, nonces
from kernel.crypto import keyring
from kernel.errors import Conflict, InvalidInput, NotFound

__all__ = [
    "IssuedKey",
    "KeyLookup",
    "add_item",
    "create_agency",
    "create_key",
    "decrypt_secret",
    "find_live_key",
    "key_use_due",
    "live_keys",
    "make_credit_code",
    "revoke_key",
    "rotate_key",
    "touch_key",
    "validate_credit_code",
]

log = structlog.get_logger(__name__)

MAX_LIVE_KEYS = 2
DEFAULT_ROTATION_GRACE = timedelta(days=1)

# GB 32100-2015: 31 characters (no I, O, S, V, Z) and the weights of positions 1..17.
_CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_CREDIT_SHAPE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}$")
_REGION = re.compile(r"^[0-9]{6}$")


def credit_code_check_char(first17: str) -> str:
    total = sum(_CREDIT_CHARS.index(c) * w for c, w in zip(first17, _CREDIT_WEIGHTS, strict=True))
    return _CREDIT_CHARS[(31 - total % 31) % 31]


def validate_credit_code(code: str) -> str:
    """Return the upper-cased unified social credit code or raise a 422."""
    code = code.strip().upper()
    if not _CREDIT_SHAPE.match(code):
        raise InvalidInput(
            "A unified social credit code is 18 characters (digits and capitals, no I/O/S/V/Z).",
            code="credit_code_malformed",
        )
    if credit_code_check_char(code[:17]) != code[17]:
        raise InvalidInput(
            "The unified social credit code's check character does not match.",
            code="credit_code_check_failed",
        )
    return code


def make_credit_code(first17: str) -> str:
    """Append the check character (for demo data and tests)."""
    return first17 + credit_code_check_char(first17)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key; `secret` exists only in this object and is never stored in clear."""

    agency_id: uuid.UUID
    key_id: str
    secret: str


def secret_aad(key_id: str) -> bytes:
    return b"api_keys:" + key_id.encode()


def decrypt_secret(key: ApiKey) -> str:
    return keyring().decrypt(key.secret_enc, aad=secret_aad(key.key_id)).decode()


async def create_agency(
    session: AsyncSession,
    *,
    credit_code: str,
    name: str,
    region_code: str,
    item_codes: list[str] | None = None,
    webhook_url: str | None = None,
    actor: str = "cli",
    allow_private_webhook: bool = False,
) -> Agency:
    credit_code = validate_credit_code(credit_code)
    if not _REGION.match(region_code):
        raise InvalidInput("Region code must be 6 digits.", code="region_code_invalid")
    if not name.strip():
        raise InvalidInput("Agency name is required.", code="agency_name_required")
    if webhook_url is not None:
        from billing.webhooks import check_url  # webhooks imports this module's models

        check_url(webhook_url, allow_private=allow_private_webhook)
    exists = await session.scalar(select(Agency.id).where(Agency.credit_code == credit_code))
    if exists is not None:
        raise Conflict("An agency with this credit code exists.", code="agency_exists")
    agency = Agency(
        id=uuid.uuid4(),
        credit_code=credit_code,
        name=name.strip(),
        region_code=region_code,
        webhook_url=webhook_url,
    )
    session.add(agency)
    await session.flush()
    for code in item_codes or []:
        await add_item(session, agency.id, code, actor=actor)
    audit.record(
        session,
        actor_type="system",
        actor_id=actor,
        action="agency.create",
        object_type="agency",
        object_id=str(agency.id),
        detail={"credit_code": credit_code, "region_code": region_code},
    )
    return agency


async def get_agency(session: AsyncSession, agency_id: uuid.UUID) -> Agency:
    agency = await session.get(Agency, agency_id)
    if agency is None:
        raise NotFound("No such agency.", code="agency_not_found")
    return agency


async def add_item(
    session: AsyncSession, agency_id: uuid.UUID, item_code: str, *, actor: str = "cli"
) -> None:
    await get_agency(session, agency_id)
    if await session.get(RevenueItem, item_code) is None:
        raise NotFound(f"No revenue item {item_code!r}.", code="item_not_found")
    if await session.get(AgencyItem, (agency_id, item_code)) is None:
        session.add(AgencyItem(agency_id=agency_id, item_code=item_code))
        audit.record(
            session,
            actor_type="system",
            actor_id=actor,
            action="agency.add_item",
            object_type="agency",
            object_id=str(agency_id),
            detail={"item_code": item_code},
        )
        await session.flush()


def _live(now: datetime) -> object:
    return or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > now)


async def live_keys(session: AsyncSession, agency_id: uuid.UUID) -> list[ApiKey]:
    now = datetime.now(UTC)
    rows = await session.scalars(
        select(ApiKey)
        .where(ApiKey.agency_id == agency_id, _live(now))  # type: ignore[arg-type]
        .order_by(ApiKey.created_at)
    )
    return list(rows)


async def _insert_key(
    session: AsyncSession, agency_id: uuid.UUID, *, secret: str | None, key_id: str | None
) -> IssuedKey:
    key_id = key_id or "pk_" + secrets.token_hex(12)
    secret = secret or "sk_" + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            key_id=key_id,
            agency_id=agency_id,
            secret_enc=keyring().encrypt(secret.encode(), aad=secret_aad(key_id)),
        )
    )
    await session.flush()
    return IssuedKey(agency_id, key_id, secret)


async def create_key(
    session: AsyncSession,
    agency_id: uuid.UUID,
    *,
    actor: str = "cli",
    key_id: str | None = None,
    secret: str | None = None,
) -> IssuedKey:
    """A new live key. `key_id`/`secret` are only passed by the demo seeder and tests."""
    await get_agency(session, agency_id)
    # Serialise key changes per agency so two concurrent creations cannot exceed the cap.
    await session.execute(select(Agency.id).where(Agency.id == agency_id).with_for_update())
    if len(await live_keys(session, agency_id)) >= MAX_LIVE_KEYS:
        raise Conflict(
            f"An agency has at most {MAX_LIVE_KEYS} live keys; revoke one first.",
            code="too_many_keys",
        )
    issued = await _insert_key(session, agency_id, secret=secret, key_id=key_id)
    audit.record(
        session,
        actor_type="system",
        actor_id=actor,
        action="api_key.create",
        object_type="api_key",
        object_id=issued.key_id,
        detail={"agency_id": str(agency_id)},
    )
    return issued


async def _key(session: AsyncSession, key_id: str) -> ApiKey:
    key = await session.get(ApiKey, key_id, with_for_update=True)
    if key is None:
        raise NotFound("No such API key.", code="api_key_not_found")
    return key


async def rotate_key(
    session: AsyncSession,
    key_id: str,
    *,
    grace: timedelta = DEFAULT_ROTATION_GRACE,
    actor: str = "cli",
) -> IssuedKey:
    """Issue a successor; the old key stays live for `grace`, then stops working."""
    old = await _key(session, key_id)
    now = datetime.now(UTC)
    if old.revoked_at is not None and old.revoked_at <= now:
        raise Conflict("That key is already revoked.", code="api_key_revoked")
    others = [k for k in await live_keys(session, old.agency_id) if k.key_id != key_id]
    if others:
        raise Conflict(
            "A rotation is already in progress for this agency; revoke the older key first.",
            code="rotation_in_progress",
        )
    issued = await _insert_key(session, old.agency_id, secret=None, key_id=None)
    old.revoked_at = now + grace
    audit.record(
        session,
        actor_type="system",
        actor_id=actor,
        action="api_key.rotate",
        object_type="api_key",
        object_id=key_id,
        detail={"successor": issued.key_id, "old_key_live_until": old.revoked_at.isoformat()},
    )
    await session.flush()
    return issued


async def revoke_key(session: AsyncSession, key_id: str, *, actor: str = "cli") -> None:
    key = await _key(session, key_id)
    key.revoked_at = func.now()  # SQL expression, evaluated by the database on flush
    audit.record(
        session,
        actor_type="system",
        actor_id=actor,
        action="api_key.revoke",
        object_type="api_key",
        object_id=key_id,
        detail={"agency_id": str(key.agency_id)},
    )
    await session.flush()


@dataclass(frozen=True, slots=True)
class KeyLookup:
    agency_id: uuid.UUID
    key_id: str
    secret: str
    nonce_seen: bool
    """The nonce is in the Postgres fallback store (used while Redis was down)."""
    last_used_at: datetime | None = None


KEY_USE_RESOLUTION = timedelta(minutes=1)
"""`api_keys.last_used_at` is kept to this resolution: a write per request would put every
call made with one key on the same row lock."""


def key_use_due(key: KeyLookup, now: datetime) -> bool:
    return key.last_used_at is None or now - key.last_used_at >= KEY_USE_RESOLUTION


async def touch_key(session: AsyncSession, key: KeyLookup, now: datetime) -> None:
    """Record an authenticated use of the key (caller commits). The resolution is repeated
    in SQL, so concurrent requests at the boundary write once."""
    await session.execute(
        update(ApiKey)
        .where(
            ApiKey.key_id == key.key_id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - KEY_USE_RESOLUTION),
        )
        .values(last_used_at=now)
    )


async def find_live_key(session: AsyncSession, key_id: str, nonce: str = "") -> KeyLookup | None:
    """The live key of an active agency, secret decrypted; None when unusable.

    The same round trip tells whether `nonce` was recorded in `auth_nonces` during a Redis
    outage, so a request accepted then cannot be replayed once Redis is back.
    """
    now = datetime.now(UTC)
    seen = nonces.seen_clause(key_id, nonce, now)
    row = (
        await session.execute(
            select(ApiKey, seen)
            .join(Agency, Agency.id == ApiKey.agency_id)
            .where(ApiKey.key_id == key_id, Agency.active.is_(True), _live(now))  # type: ignore[arg-type]
        )
    ).one_or_none()
    if row is None:
        return None
    key, nonce_seen = row
    return KeyLookup(
        key.agency_id, key.key_id, decrypt_secret(key), bool(nonce_seen), key.last_used_at
    )
