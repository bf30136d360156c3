"""money: the payment code a statement line carries (so the day-end file can heal a
confirmation that never reached us), and the payout of a treasury refund (退库): the
payee's account, encrypted, and the confirmation that the payout was made

Revision ID: 0010
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("statement_lines", sa.Column("payment_code", sa.String(20), nullable=True))
    op.add_column("discrepancies", sa.Column("payment_code", sa.String(20), nullable=True))
    op.add_column("refunds", sa.Column("payee_enc", sa.LargeBinary(), nullable=True))
    op.add_column("refunds", sa.Column("payout_ref", sa.String(64), nullable=True))
    op.add_column("refunds", sa.Column("paid_out_by", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("refunds", "paid_out_by")
    op.drop_column("refunds", "payout_ref")
    op.drop_column("refunds", "payee_enc")
    op.drop_column("discrepancies", "payment_code")
    op.drop_column("statement_lines", "payment_code")
