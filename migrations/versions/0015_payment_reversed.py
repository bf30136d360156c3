"""A payment taken back after its e-note was issued: the note is red-lettered without a
refund (a RED note with no refund_id), and the agency hears `bill.payment_reversed`

Revision ID: 0015
Revises: 0011a
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0011a"
branch_labels = None
depends_on = None

_EVENTS = "'bill.paid', 'bill.refunded', 'bill.expired', 'bill.cancelled', 'enote.issued'"
_BLUE = "(kind = 'BLUE' AND total_amount > 0 AND (refund_id IS NULL) = (original_id IS NULL))"


def _shape(red: str) -> None:
    op.drop_constraint(op.f("ck_enotes_shape_by_kind"), "enotes", type_="check")
    op.create_check_constraint(op.f("ck_enotes_shape_by_kind"), "enotes", f"{red} OR {_BLUE}")


def _events(events: str) -> None:
    op.drop_constraint(op.f("ck_webhook_events_event_known"), "webhook_events", type_="check")
    op.create_check_constraint(
        op.f("ck_webhook_events_event_known"), "webhook_events", f"event IN ({events})"
    )


def upgrade() -> None:
    _shape("(kind = 'RED' AND total_amount < 0 AND original_id IS NOT NULL)")
    # One original and at most one red note (a reversal's) per receipt without a refund.
    op.drop_index("uq_enotes_receipt_original", table_name="enotes")
    op.create_index(
        "uq_enotes_receipt_original",
        "enotes",
        ["receipt_id", "kind"],
        unique=True,
        postgresql_where=sa.text("refund_id IS NULL"),
    )
    _events(f"{_EVENTS}, 'bill.payment_reversed'")


def downgrade() -> None:
    _events(_EVENTS)
    op.execute("DELETE FROM enotes WHERE kind = 'RED' AND refund_id IS NULL")
    op.drop_index("uq_enotes_receipt_original", table_name="enotes")
    op.create_index(
        "uq_enotes_receipt_original",
        "enotes",
        ["receipt_id"],
        unique=True,
        postgresql_where=sa.text("refund_id IS NULL"),
    )
    _shape(
        "(kind = 'RED' AND total_amount < 0 AND original_id IS NOT NULL AND refund_id IS NOT NULL)"
    )
