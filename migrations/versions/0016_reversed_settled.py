"""Discrepancies learn REVERSED_SETTLED: a channel settled a payment we recorded as
reversed or voided (a card sale the terminal took back, still in the acquirer's file)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_BEFORE = (
    "'PLATFORM_ONLY', 'CHANNEL_ONLY', 'AMOUNT_MISMATCH', 'STATUS_MISMATCH',"
    " 'DUPLICATE_PAYMENT', 'FEE_MISMATCH'"
)


def upgrade() -> None:
    op.drop_constraint(op.f("ck_discrepancies_klass_known"), "discrepancies", type_="check")
    op.create_check_constraint(
        op.f("ck_discrepancies_klass_known"),
        "discrepancies",
        f"klass IN ({_BEFORE}, 'REVERSED_SETTLED')",
    )


def downgrade() -> None:
    op.execute("DELETE FROM discrepancies WHERE klass = 'REVERSED_SETTLED'")
    op.drop_constraint(op.f("ck_discrepancies_klass_known"), "discrepancies", type_="check")
    op.create_check_constraint(
        op.f("ck_discrepancies_klass_known"), "discrepancies", f"klass IN ({_BEFORE})"
    )
