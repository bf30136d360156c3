"""Append-only audit trail: every privileged action is written in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.models import AuditEntry

__all__ = ["Actor", "record"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs a privileged action (written to the audit log and bill events)."""

    type: str  # agency | finance | auditor | system
    id: str


def record(
    session: AsyncSession,
    *,
    actor_type: str,
    actor_id: str,
    action: str,
    object_type: str,
    object_id: str,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add an audit row to the caller's transaction (committed with the change itself)."""
    ctx = structlog.contextvars.get_contextvars()
    entry = AuditEntry(
        actor_type=actor_type,
        actor_id=actor_id,
        action=action,
        object_type=object_type,
        object_id=object_id,
        detail=detail or {},
        request_id=ctx.get("request_id"),
    )
    session.add(entry)
    return entry
