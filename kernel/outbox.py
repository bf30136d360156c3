"""Transactional outbox: side effects that must follow a commit (webhooks, e-notes, refunds).

A message is inserted in the same transaction as the state change that causes it; the
worker claims due messages with `FOR UPDATE SKIP LOCKED`, so several workers never take the
same one, and a crash before `done()` simply leaves it to be claimed again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import Select, Table, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.models import OutboxMessage

__all__ = [
    "KEY_CONSTRAINT",
    "Topic",
    "claim",
    "claim_payloads",
    "done",
    "enqueue",
    "enqueue_many",
    "mark_done",
    "retry_later",
]

_T = TypeVar("_T")  # the row type of a Select


class Topic(StrEnum):
    """Every outbox topic, in one table: who enqueues it and which job consumes it."""

    WEBHOOK = "webhook.event"
    """A bill or e-note event for the agency's webhook (billing.webhook_delivery)."""
    ENOTE_ISSUE = "enote.issue"
    """A PAYMENT receipt awaiting its fiscal e-note (enotes.run_issue_job)."""
    ENOTE_RED = "enote.red"
    """A succeeded refund, or a payment the channel took back (payments.reversal), whose
    e-note is red-lettered (enotes.run_red_job)."""
    REFUND_EXECUTE = "refund.execute"
    """A refund to send to its channel (payments.refunds)."""


KEY_CONSTRAINT = "uq_outbox_key"
"""ON CONFLICT names the constraint, not `index_elements`: SQLAlchemy cannot cache a statement
with `index_elements`, so it would compile the INSERT again on every call."""


async def enqueue(session: AsyncSession, topic: str, key: str, payload: dict[str, Any]) -> None:
    """Add a message in the caller's transaction; a repeated key is silently ignored."""
    stmt = insert(OutboxMessage).values(topic=topic, key=key, payload=payload)
    await session.execute(stmt.on_conflict_do_nothing(constraint=KEY_CONSTRAINT))


async def enqueue_many(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Add many messages (`topic`, `key`, `payload` each) as one cached executemany."""
    if rows:
        await session.execute(_ENQUEUE_MANY, rows)


# On the table, not the entity: the ORM's bulk path builds an insert command per row.
_ENQUEUE_MANY = insert(cast(Table, OutboxMessage.__table__)).on_conflict_do_nothing(
    constraint=KEY_CONSTRAINT
)


def _due(stmt: Select[_T], topic: str, limit: int) -> Select[_T]:
    """The first `limit` due messages of a topic, locked; others' locked ones are skipped."""
    return (
        stmt.where(
            OutboxMessage.topic == topic,
            OutboxMessage.processed_at.is_(None),
            OutboxMessage.available_at <= func.now(),
        )
        .order_by(OutboxMessage.available_at, OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


async def claim(session: AsyncSession, topic: str, limit: int = 50) -> list[OutboxMessage]:
    """Lock up to `limit` due messages of a topic for the caller's transaction."""
    return list((await session.scalars(_due(select(OutboxMessage), topic, limit))).all())


async def claim_payloads(
    session: AsyncSession, topic: str, limit: int
) -> list[tuple[int, dict[str, Any]]]:
    """claim() for batch handlers that need only (id, payload): no ORM objects to build,
    and mark_done() closes them with one UPDATE."""
    stmt = _due(select(OutboxMessage.id, OutboxMessage.payload), topic, limit)
    return [(int(i), dict(p)) for i, p in await session.execute(stmt)]


async def mark_done(session: AsyncSession, ids: list[int]) -> None:
    """Close claimed messages in one statement."""
    await session.execute(_MARK_DONE, {"ids": ids})


_MARK_DONE = text(
    "UPDATE outbox SET processed_at = now(), last_error = NULL"
    " WHERE id = ANY(CAST(:ids AS bigint[]))"
)


def done(message: OutboxMessage, when: datetime) -> None:
    message.processed_at = when
    message.last_error = None


def retry_later(message: OutboxMessage, when: datetime, delay: timedelta, error: str) -> None:
    message.attempts += 1
    message.available_at = when + delay
    message.last_error = error[:2000]
