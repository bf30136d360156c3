"""Finance staff and their API tokens (stored as SHA-256 only; shown once at creation)."""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import audit
from kernel.errors import Conflict, InvalidInput, Unauthorized
from kernel.models import StaffToken, StaffUser

__all__ = ["StaffRole", "authenticate", "create_staff"]


class StaffRole(StrEnum):
    FINANCE = "FINANCE"
    AUDITOR = "AUDITOR"
    """Read-only."""
    ADMIN = "ADMIN"


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_staff(session: AsyncSession, *, name: str, role: str) -> tuple[StaffUser, str]:
    """Create a staff user with one token; the token is returned once and never stored."""
    try:
        role_ = StaffRole(role.upper())
    except ValueError:
        raise InvalidInput(f"unknown role {role!r}", code="unknown_role") from None
    name = name.strip()
    if not name:
        raise InvalidInput("name is required", code="name_required")
    if await session.scalar(select(StaffUser.id).where(StaffUser.name == name)):
        raise Conflict(f"staff user {name!r} exists", code="staff_exists")
    user = StaffUser(name=name, role=str(role_))
    session.add(user)
    await session.flush()
    token = "pgs_" + secrets.token_urlsafe(32)
    session.add(StaffToken(token_hash=_hash(token), staff_id=user.id))
    audit.record(
        session,
        actor_type="system",
        actor_id="cli",
        action="staff.create",
        object_type="staff_user",
        object_id=str(user.id),
        detail={"name": name, "role": user.role},
    )
    await session.flush()
    return user, token


async def authenticate(session: AsyncSession, token: str) -> StaffUser:
    """The active staff user owning this bearer token, or Unauthorized."""
    user = await session.scalar(
        select(StaffUser)
        .join(StaffToken, StaffToken.staff_id == StaffUser.id)
        .where(
            StaffToken.token_hash == _hash(token),
            StaffToken.revoked_at.is_(None),
            StaffUser.active.is_(True),
        )
    )
    if user is None:
        raise Unauthorized("invalid or revoked token", code="invalid_token")
    return user
