"""A bill's history: every status change writes its `bill_events` row through this module.

Two forms of one rule — the edge must be in the BILL machine:
- `record()` for a change made in Python (one bill, an ORM session);
- `insert_sql()` for set-based statements (bulk issue, expiry, confirmation, settlement):
  the `INSERT INTO bill_events ... SELECT ... FROM <rows>` text, built once at import, so a
  statement stays one round trip. A constant source state is checked against BILL when the
  text is built; a source taken from a column must come from an UPDATE guarded by
  `BILL.sources(target)` (rendered with `kernel.states.sql_in`).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import BillEvent
from billing.states import BILL, BillStatus
from kernel.errors import IllegalTransition

__all__ = ["Sql", "insert_sql", "record"]


def record(
    session: AsyncSession,
    *,
    bill_id: uuid.UUID,
    src: str,
    dst: str,
    actor_type: str,
    actor_id: str,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add the event of one bill's `src → dst` (checked against BILL) to the session."""
    BILL.check(src, dst)
    session.add(
        BillEvent(
            bill_id=bill_id,
            from_status=src,
            to_status=dst,
            actor_type=actor_type,
            actor_id=actor_id,
            reason=reason,
            detail=detail or {},
        )
    )


class Sql(str):
    """A SQL expression (a column of the rows, a bind parameter), not a literal value."""

    __slots__ = ()


def _sql(value: str | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, Sql):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def insert_sql(
    rows: str,
    *,
    bill_id: Sql,
    src: BillStatus | Sql | None,
    dst: BillStatus,
    actor_type: str,
    actor_id: str,
    reason: str,
    detail: Sql | None = None,
) -> str:
    """`INSERT INTO bill_events ... SELECT ... FROM rows`, one event per row of `rows` (a
    CTE or table name). `src` None is a bill's creation (dst must be an initial state);
    plain strings are literals, `Sql` values are expressions over `rows`."""
    if src is None:
        if dst not in BILL.initial:
            raise IllegalTransition(
                f"bill is not created {dst}", machine=BILL.name, current=None, target=dst
            )
    elif not isinstance(src, Sql):
        BILL.check(src, dst)
    columns = [
        bill_id,
        _sql(None if src is None else src if isinstance(src, Sql) else src.value),
        _sql(dst.value),
        _sql(actor_type),
        _sql(actor_id),
        _sql(reason),
        detail if detail is not None else "'{}'::jsonb",
    ]
    return (
        "INSERT INTO bill_events (bill_id, from_status, to_status, actor_type, actor_id,"  # noqa: S608 - built at import from constants
        f" reason, detail) SELECT {', '.join(columns)} FROM {rows}"
    )
